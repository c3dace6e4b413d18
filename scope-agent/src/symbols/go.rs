//! Go executables: telling them apart from C, C++ and Rust ones, and
//! naming their functions when the symbol table is gone.
//!
//! A Go module changes how it is probed (no return probes: see
//! `probe::go`), so the planner must know. The Go linker always writes
//! `.go.buildinfo` (Go >= 1.13) and `.gopclntab`, and `.note.go.buildid`;
//! any one of them is enough. They survive `-ldflags=-s -w`, which strips
//! `.symtab` and DWARF; then [`pclntab_functions`] reads the runtime's own
//! function table for names and addresses (no file:line).

use object::{Object, ObjectSection};

/// Sections only the Go linker writes.
const GO_SECTIONS: &[&str] = &[".go.buildinfo", ".gopclntab", ".note.go.buildid"];

/// Whether `file` was linked by the Go toolchain.
pub(super) fn is_go(file: &object::File<'_>) -> bool {
    GO_SECTIONS
        .iter()
        .any(|name| file.section_by_name(name).is_some())
}

/// A function named by `.gopclntab`: name, address and size (up to the
/// next function, so it includes the padding after it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PclnFunction {
    pub name: String,
    pub address: u64,
    pub size: u64,
}

/// `pcHeader.magic` of Go 1.18–1.19 and of Go 1.20 and later; both have
/// the layout read here.
const PCLN_MAGIC_118: u32 = 0xffff_fff0;
const PCLN_MAGIC_120: u32 = 0xffff_fff1;
/// Functions are counted from the file: cap them so a corrupt count
/// cannot make the agent allocate without bound.
const MAX_PCLN_FUNCTIONS: u64 = 4 << 20;

/// The functions of a Go binary from its `.gopclntab` (the runtime's own
/// function table, which `-ldflags=-s -w` keeps): the names Go prints in
/// stack traces, with entry addresses. Only the 64-bit layout of Go 1.18
/// and later is read; everything is bounds-checked, and a table that does
/// not parse is an error naming why, never a panic.
pub(super) fn pclntab_functions(file: &object::File<'_>) -> Result<Vec<PclnFunction>, String> {
    let section = file
        .section_by_name(".gopclntab")
        .ok_or("no .gopclntab section")?;
    let data = section
        .data()
        .map_err(|e| format!(".gopclntab unreadable: {e}"))?;
    let u32_at = |off: u64| -> Result<u32, String> {
        let off = usize::try_from(off).map_err(|_| ".gopclntab offset out of range")?;
        data.get(off..off.checked_add(4).ok_or(".gopclntab offset overflow")?)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| format!(".gopclntab truncated at {off:#x}"))
    };
    let word = |i: usize| -> Result<u64, String> {
        let off = 8 + i * 8;
        data.get(off..off + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
            .ok_or_else(|| ".gopclntab header truncated".to_string())
    };
    // Every offset below comes from the file: added with overflow checks.
    let add = |a: u64, b: u64| a.checked_add(b).ok_or(".gopclntab offset overflow");
    let magic = u32_at(0)?;
    if magic != PCLN_MAGIC_118 && magic != PCLN_MAGIC_120 {
        return Err(format!(
            ".gopclntab magic {magic:#x}: only the layout of Go 1.18 and later is read"
        ));
    }
    if data.get(7) != Some(&8) {
        return Err(".gopclntab is not from a 64-bit build".into());
    }
    let nfunc = word(0)?;
    if nfunc > MAX_PCLN_FUNCTIONS {
        return Err(format!(".gopclntab claims {nfunc} functions"));
    }
    let mut text_start = word(2)?;
    if text_start == 0 {
        // A PIE leaves the field to a dynamic relocation.
        text_start = file
            .section_by_name(".text")
            .map(|s| s.address())
            .ok_or("no .text section")?;
    }
    let funcname_off = word(3)?;
    let pcln_off = word(7)?;
    // `i` is at most MAX_PCLN_FUNCTIONS, so `i * 8 + 4` cannot overflow.
    let entry = |i: u64| -> Result<u64, String> {
        let e = u32_at(add(pcln_off, i * 8)?)?;
        Ok(add(text_start, u64::from(e))?)
    };
    let mut out = Vec::with_capacity((nfunc as usize).min(data.len() / 8));
    for i in 0..nfunc {
        let address = entry(i)?;
        let next = entry(i + 1)?;
        let funcoff = u32_at(add(pcln_off, i * 8 + 4)?)?;
        // _func: entryOff u32, nameOff i32, ...
        let name_off = u32_at(add(pcln_off, u64::from(funcoff) + 4)?)?;
        let start = usize::try_from(add(funcname_off, u64::from(name_off))?)
            .map_err(|_| "name offset out of range")?;
        let name = data
            .get(start..)
            .and_then(|rest| rest.split(|&b| b == 0).next())
            .ok_or_else(|| format!(".gopclntab name of function {i} out of bounds"))?;
        out.push(PclnFunction {
            name: String::from_utf8_lossy(name).into_owned(),
            address,
            size: next.saturating_sub(address),
        });
    }
    Ok(out)
}
