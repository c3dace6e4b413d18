//! Go executables: telling them apart from C, C++ and Rust ones.
//!
//! A Go module changes how it is probed (no return probes: see
//! `probe::go`), so the planner must know. The Go linker always writes
//! `.go.buildinfo` (Go >= 1.13) and `.gopclntab`, and `.note.go.buildid`;
//! any one of them is enough. They survive `-ldflags=-s -w`, which strips
//! `.symtab` and DWARF.

use object::Object;

/// Sections only the Go linker writes.
const GO_SECTIONS: &[&str] = &[".go.buildinfo", ".gopclntab", ".note.go.buildid"];

/// Whether `file` was linked by the Go toolchain.
pub(super) fn is_go(file: &object::File<'_>) -> bool {
    GO_SECTIONS
        .iter()
        .any(|name| file.section_by_name(name).is_some())
}
