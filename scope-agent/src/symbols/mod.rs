//! The symbol map: which functions a file has, where each one is in the
//! file (the offset a uprobe needs) and in the source (DWARF file and line).
//!
//! Built once per module per session from the ELF symbol tables, DWARF, and
//! the process's memory map; nothing here knows about eBPF. Callers see only
//! the types below, never `object` or `gimli` ones.
//!
//! - [`elf`]: ELF symbol tables, segments, build-id, file offsets
//! - [`dwarf`]: DWARF subprograms → file:line
//! - [`debuglink`]: separate debug files (build-id, `.gnu_debuglink`)
//! - [`maps`]: `/proc/PID/maps` → mapped modules; `DT_NEEDED` library search
//! - [`demangle`]: Rust and C++ names
//! - [`pattern`]: user patterns `[MODULE:]GLOB`
//! - [`go`]: telling Go executables apart

pub mod debuglink;
pub mod demangle;
pub mod dwarf;
pub mod elf;
pub mod go;
pub mod maps;
pub mod pattern;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use elf::{ExecSegments, MappedElf};

#[derive(Debug, thiserror::Error)]
pub enum SymbolError {
    #[error("{path}: no such file")]
    NotFound { path: PathBuf },
    #[error("{path}: not an ELF file")]
    NotElf { path: PathBuf },
    #[error("{path}: corrupt ELF: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "{path}: no symbols (the binary is stripped); rebuild with symbols or install its debug package"
    )]
    NoSymbols { path: PathBuf },
    #[error(
        "{path}: Go binary without symbols (built with -ldflags=-s or stripped), and its .gopclntab could not be read ({reason}): rebuild it without -s"
    )]
    GoNoSymbols { path: PathBuf, reason: String },
    #[error("no such process: {pid}")]
    NoSuchProcess { pid: u32 },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One probeable function.
#[derive(Debug, Clone)]
pub struct FunctionSymbol {
    /// Demangled, without the Rust hash suffix or an ELF symbol version
    /// (`@GLIBC_2.2.5`); equal to `symbol` for C.
    pub name: String,
    /// The linkage name exactly as in the symbol table.
    pub symbol: String,
    /// `st_value`: the ELF virtual address.
    pub address: u64,
    pub size: u64,
    /// Where a uprobe goes: `address - vaddr + offset` of the executable
    /// `PT_LOAD` segment that holds `address`.
    pub file_offset: u64,
    /// Source file from DWARF: `comp_dir` joined with the file name.
    pub file: Option<String>,
    /// `DW_AT_decl_line`, else the line of the entry address.
    pub line: Option<u32>,
}

/// Function symbols left out, by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SkipCounts {
    pub zero_size: usize,
    /// Aliases: another symbol at the same address was kept.
    pub duplicate_address: usize,
    /// PLT stubs and undefined (imported) functions.
    pub plt_or_import: usize,
    /// Outside executable code, and `STT_GNU_IFUNC` resolvers.
    pub not_executable: usize,
}

/// The functions of one ELF file.
#[derive(Debug, Clone)]
pub struct ModuleSymbols {
    /// Display path: as in `/proc/PID/maps`, or as the user gave it.
    pub path: PathBuf,
    /// Lower-case hex of `NT_GNU_BUILD_ID`.
    pub build_id: Option<String>,
    /// DWARF was found (in the file or its separate debug file) and read.
    pub has_debug_info: bool,
    /// Sorted by address, one per address.
    pub functions: Vec<FunctionSymbol>,
    pub skipped: SkipCounts,
    /// The separate debug file used for symbols or DWARF, if any.
    pub debug_file: Option<PathBuf>,
    /// Linked by the Go toolchain: probed without return probes.
    pub go: bool,
}

/// Reads one ELF file. `open_path` is what to open (may be
/// `/proc/PID/map_files/...` or `/proc/PID/root/...`); `display_path` is
/// what errors and results name, and where a `.gnu_debuglink` is looked
/// for.
pub fn load_module(open_path: &Path, display_path: &Path) -> Result<ModuleSymbols, SymbolError> {
    let mapped = MappedElf::open(open_path, display_path)?;
    let file = mapped.parse(display_path)?;
    let build_id = elf::build_id(&file);
    let segments = ExecSegments::of(&file);
    let mut collected = elf::collect_functions(&file, &segments);
    let has_own_dwarf = elf::has_dwarf(&file);

    // A stripped binary (perhaps with exported functions in `.dynsym`
    // only), or one whose DWARF was split off: look for the separate debug
    // file. Addresses in it are the binary's; file offsets still come from
    // the binary's own segments.
    let debug = if collected.defined_in_symtab == 0 || !has_own_dwarf {
        let link = elf::debuglink(&file);
        debuglink::find(build_id.as_deref(), link.as_ref(), display_path)
    } else {
        None
    };
    let debug_file = debug
        .as_ref()
        .and_then(|(path, mapped)| Some((path, mapped.parse(path).ok()?)));

    let mut used_debug_file = false;
    if collected.defined_in_symtab == 0
        && let Some((_, debug_elf)) = &debug_file
    {
        // The debug file's `.symtab` also has the local functions.
        let from_debug = elf::collect_functions(debug_elf, &segments);
        if from_debug.defined_in_symtab > 0 {
            collected = from_debug;
            used_debug_file = true;
        }
    }
    let go = go::is_go(&file);
    if collected.defined == 0 && go {
        // `-ldflags=-s` drops .symtab and DWARF; the runtime's own
        // function table stays, and names every function.
        let pcln = go::pclntab_functions(&file).map_err(|reason| SymbolError::GoNoSymbols {
            path: display_path.to_path_buf(),
            reason,
        })?;
        let functions = pcln
            .into_iter()
            .filter(|f| f.size > 0)
            .filter_map(|f| {
                Some(FunctionSymbol {
                    file_offset: segments.file_offset(f.address)?,
                    symbol: f.name.clone(),
                    name: f.name,
                    address: f.address,
                    size: f.size,
                    file: None,
                    line: None,
                })
            })
            .collect();
        return Ok(ModuleSymbols {
            path: display_path.to_path_buf(),
            build_id,
            has_debug_info: false,
            functions,
            skipped: SkipCounts::default(),
            debug_file: None,
            go,
        });
    }
    if collected.defined == 0 {
        return Err(SymbolError::NoSymbols {
            path: display_path.to_path_buf(),
        });
    }

    let dwarf_source = if has_own_dwarf {
        Some(&file)
    } else {
        debug_file
            .as_ref()
            .map(|(_, f)| f)
            .filter(|f| elf::has_dwarf(f))
    };
    let locations = dwarf_source.and_then(|f| match dwarf::function_locations(f) {
        Ok(l) => Some(l),
        Err(e) => {
            log::warn!("{}: DWARF ignored: {e}", display_path.display());
            None
        }
    });
    if locations.is_some() && !has_own_dwarf {
        used_debug_file = true;
    }

    let functions = collected
        .functions
        .into_iter()
        .map(|raw| {
            let location = locations.as_ref().and_then(|l| l.get(raw.address));
            FunctionSymbol {
                // `memcpy@GLIBC_2.2.5` is `memcpy` to users.
                name: demangle::demangle(
                    std::str::from_utf8(elf::unversioned(raw.symbol.as_bytes()))
                        .unwrap_or(&raw.symbol),
                ),
                file: location.and_then(|l| l.file.as_deref().map(str::to_string)),
                line: location.and_then(|l| l.line),
                symbol: raw.symbol,
                address: raw.address,
                size: raw.size,
                file_offset: raw.file_offset,
            }
        })
        .collect();

    Ok(ModuleSymbols {
        path: display_path.to_path_buf(),
        build_id,
        has_debug_info: locations.is_some(),
        functions,
        skipped: collected.skipped,
        debug_file: if used_debug_file {
            debug_file.map(|(path, _)| path.clone())
        } else {
            None
        },
        go,
    })
}
