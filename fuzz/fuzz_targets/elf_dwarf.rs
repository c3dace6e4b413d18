//! The ELF + DWARF loader over arbitrary bytes: symbols, segments, DWARF
//! functions, parameters, types and inlined instances. Any panic is a bug.
//! Seed the corpus with real binaries (`fuzz/corpus/elf_dwarf/`).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = scope_agent::symbols::load_module_bytes(data, Path::new("fuzz-input")) {
        let _ = (m.functions.len(), m.inlined.len());
    }
});
