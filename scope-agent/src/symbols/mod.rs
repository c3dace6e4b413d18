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
pub mod usdt;

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
#[derive(Debug, Clone, Default)]
pub struct FunctionSymbol {
    /// Demangled, without the Rust hash suffix or an ELF symbol version
    /// (`@GLIBC_2.2.5`); equal to `symbol` for C.
    pub name: String,
    /// The linkage name exactly as in the symbol table.
    pub symbol: String,
    /// Other symbols at the same address (glibc's `free` is also `cfree`
    /// and `__libc_free`); a pattern matching any of them selects the
    /// function, which is probed once under `name`.
    pub aliases: Vec<String>,
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
    /// DWARF formal parameters in order, `(name, type)`: `("x", "int")`.
    /// An unnamed parameter has an empty name. Empty without DWARF.
    pub params: Vec<(String, String)>,
    /// DWARF return type (`void` for a C function returning nothing).
    pub return_type: Option<String>,
    /// Source language of its compile unit (`C`, `C++`, `Rust`, `Go`...).
    pub language: Option<&'static str>,
    /// How many times DWARF says the function was inlined somewhere.
    pub inlined_count: u32,
}

/// One inlined instance of a function: code of `name` placed inside
/// `caller` at `address`, called from `call_file:call_line`.
#[derive(Debug, Clone)]
pub struct InlinedFunction {
    pub name: String,
    /// The out-of-line function the code sits in, if DWARF names one.
    pub caller: Option<String>,
    pub address: u64,
    /// Where a uprobe on the instance's first instruction would go.
    pub file_offset: Option<u64>,
    pub call_file: Option<String>,
    pub call_line: Option<u32>,
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
    /// Inlined instances DWARF describes, sorted by address.
    pub inlined: Vec<InlinedFunction>,
    /// Things the user should know (a debug file of another build, a
    /// missing `.dwo`); each names the files involved.
    pub warnings: Vec<String>,
}

/// Reads one ELF file. `open_path` is what to open (may be
/// `/proc/PID/map_files/...` or `/proc/PID/root/...`); `display_path` is
/// what errors and results name, and where a `.gnu_debuglink` is looked
/// for.
pub fn load_module(open_path: &Path, display_path: &Path) -> Result<ModuleSymbols, SymbolError> {
    let mapped = MappedElf::open(open_path, display_path)?;
    let file = mapped.parse(display_path)?;
    symbols_of(&file, display_path, true)
}

/// Reads ELF bytes already in memory, without looking for separate debug
/// files: the entry point of the fuzz target (`fuzz/`). Never panics.
pub fn load_module_bytes(data: &[u8], display_path: &Path) -> Result<ModuleSymbols, SymbolError> {
    let file = object::File::parse(data).map_err(|e| SymbolError::Corrupt {
        path: display_path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if file.format() != object::BinaryFormat::Elf {
        return Err(SymbolError::NotElf {
            path: display_path.to_path_buf(),
        });
    }
    symbols_of(&file, display_path, false)
}

fn symbols_of(
    file: &object::File<'_>,
    display_path: &Path,
    find_debug_file: bool,
) -> Result<ModuleSymbols, SymbolError> {
    let build_id = elf::build_id(file);
    let segments = ExecSegments::of(file);
    let mut collected = elf::collect_functions(file, &segments);
    let has_own_dwarf = elf::has_dwarf(file);

    // A stripped binary (perhaps with exported functions in `.dynsym`
    // only), or one whose DWARF was split off: look for the separate debug
    // file. Addresses in it are the binary's; file offsets still come from
    // the binary's own segments.
    let mut warnings = Vec::new();
    let debug = if find_debug_file && (collected.defined_in_symtab == 0 || !has_own_dwarf) {
        let link = elf::debuglink(file);
        debuglink::find(
            build_id.as_deref(),
            link.as_ref(),
            display_path,
            &mut warnings,
        )
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
    let go = go::is_go(file);
    if collected.defined == 0 && go {
        // `-ldflags=-s` drops .symtab and DWARF; the runtime's own
        // function table stays, and names every function.
        let pcln = go::pclntab_functions(file).map_err(|reason| SymbolError::GoNoSymbols {
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
                    params: Vec::new(),
                    return_type: None,
                    language: Some("Go"),
                    inlined_count: 0,
                    aliases: Vec::new(),
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
            inlined: Vec::new(),
            warnings: Vec::new(),
        });
    }
    if collected.defined == 0 {
        return Err(SymbolError::NoSymbols {
            path: display_path.to_path_buf(),
        });
    }

    let dwarf_source = if has_own_dwarf {
        Some(file)
    } else {
        debug_file
            .as_ref()
            .map(|(_, f)| f)
            .filter(|f| elf::has_dwarf(f))
    };
    let locations = dwarf_source.and_then(|f| match dwarf::function_locations(f, display_path) {
        Ok(l) => Some(l),
        Err(e) => {
            warnings.push(format!("{}: DWARF ignored: {e}", display_path.display()));
            None
        }
    });
    if let Some(l) = &locations
        && !l.missing_dwo.is_empty()
    {
        warnings.push(format!(
            "{}: split DWARF file{} {} not found (looked under the compilation directory and next to the binary, and for {}.dwp); those functions have no file:line",
            display_path.display(),
            if l.missing_dwo.len() == 1 { "" } else { "s" },
            l.missing_dwo.join(", "),
            display_path.display()
        ));
    }
    if locations.is_some() && !has_own_dwarf {
        used_debug_file = true;
    }

    let functions: Vec<FunctionSymbol> = collected
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
                params: location.map(|l| l.params.clone()).unwrap_or_default(),
                return_type: location.and_then(|l| l.return_type.as_deref().map(str::to_string)),
                language: location.and_then(|l| l.language),
                inlined_count: location.map_or(0, |l| l.inlined),
                symbol: raw.symbol,
                aliases: raw.aliases,
                address: raw.address,
                size: raw.size,
                file_offset: raw.file_offset,
            }
        })
        .collect();

    let inlined = locations
        .as_ref()
        .map(|l| {
            l.inlined
                .iter()
                .map(|i| InlinedFunction {
                    name: i.name.clone(),
                    caller: i.caller_address.and_then(|a| {
                        functions
                            .binary_search_by_key(&a, |f| f.address)
                            .ok()
                            .and_then(|k| functions.get(k))
                            .map(|f| f.name.clone())
                    }),
                    address: i.address,
                    file_offset: segments.file_offset(i.address),
                    call_file: i.call_file.as_deref().map(str::to_string),
                    call_line: i.call_line,
                })
                .collect()
        })
        .unwrap_or_default();

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
        inlined,
        warnings,
    })
}
