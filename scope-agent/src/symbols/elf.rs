//! ELF files: mapping them, their function symbols, executable segments
//! (for uprobe file offsets), build-id, debug link and dynamic section.
//!
//! This is the only place that knows ELF layout. Everything read from a file
//! is untrusted: every access is checked, and a malformed file is reported as
//! [`SymbolError::Corrupt`], never a panic.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use object::read::elf::{ElfFile, FileHeader, ProgramHeader};
use object::{
    Endianness, Object, ObjectSection, ObjectSegment, ObjectSymbol, SectionFlags, SegmentFlags,
    SymbolFlags, SymbolSection, elf,
};

use super::{SkipCounts, SymbolError};

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";

/// Sections that hold PLT stubs: a probe there fires on the call through the
/// stub, not in the function.
const PLT_SECTIONS: &[&[u8]] = &[b".plt", b".plt.sec", b".plt.got", b".iplt", b".plt.bnd"];

/// A read-only memory map of an ELF file, checked for the ELF magic.
pub struct MappedElf {
    map: Mmap,
}

impl MappedElf {
    /// Maps `open_path`; errors name `display_path`.
    pub fn open(open_path: &Path, display_path: &Path) -> Result<Self, SymbolError> {
        let io_error = |source: io::Error| {
            if source.kind() == io::ErrorKind::NotFound {
                SymbolError::NotFound {
                    path: display_path.to_path_buf(),
                }
            } else {
                SymbolError::Io {
                    path: described_path(open_path, display_path),
                    source,
                }
            }
        };
        let file = File::open(open_path).map_err(io_error)?;
        let meta = file.metadata().map_err(io_error)?;
        if !meta.is_file() || meta.len() < ELF_MAGIC.len() as u64 {
            return Err(SymbolError::NotElf {
                path: display_path.to_path_buf(),
            });
        }
        // SAFETY: the map is read-only and private to this process. A file
        // truncated or rewritten while mapped is the one hazard; binaries are
        // replaced by rename, not rewritten in place, by every package
        // manager and linker, and a truncation would raise SIGBUS rather
        // than read wrong data silently.
        let map = unsafe { Mmap::map(&file) }.map_err(io_error)?;
        if map.get(..ELF_MAGIC.len()) != Some(ELF_MAGIC.as_slice()) {
            return Err(SymbolError::NotElf {
                path: display_path.to_path_buf(),
            });
        }
        Ok(Self { map })
    }

    pub fn data(&self) -> &[u8] {
        &self.map
    }

    /// Parses the mapped bytes.
    pub(super) fn parse(&self, display_path: &Path) -> Result<object::File<'_>, SymbolError> {
        let file = object::File::parse(self.data()).map_err(|e| SymbolError::Corrupt {
            path: display_path.to_path_buf(),
            reason: e.to_string(),
        })?;
        if file.format() != object::BinaryFormat::Elf {
            return Err(SymbolError::NotElf {
                path: display_path.to_path_buf(),
            });
        }
        Ok(file)
    }
}

/// `display (opened as open)` when the two differ, so an I/O error on a
/// `/proc/PID/map_files` path still names the file the user knows.
fn described_path(open_path: &Path, display_path: &Path) -> PathBuf {
    if open_path == display_path {
        display_path.to_path_buf()
    } else {
        PathBuf::from(format!(
            "{} (opened as {})",
            display_path.display(),
            open_path.display()
        ))
    }
}

/// Lower-case hex of the NT_GNU_BUILD_ID note, if any.
pub(super) fn build_id(file: &object::File<'_>) -> Option<String> {
    let id = file.build_id().ok().flatten()?;
    if id.is_empty() {
        return None;
    }
    Some(hex(id))
}

pub(super) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The `.gnu_debuglink` file name and CRC, if any.
pub(super) fn debuglink(file: &object::File<'_>) -> Option<(String, u32)> {
    let (name, crc) = file.gnu_debuglink().ok().flatten()?;
    let name = std::str::from_utf8(name).ok()?;
    if name.is_empty() || name.contains('/') {
        return None;
    }
    Some((name.to_string(), crc))
}

/// Whether the file has a `.debug_info` (or `.zdebug_info`) section with
/// contents (a separate debug file's stripped binary keeps none).
pub(super) fn has_dwarf(file: &object::File<'_>) -> bool {
    file.section_by_name(".debug_info")
        .is_some_and(|s| s.kind() != object::SectionKind::UninitializedData && s.size() > 0)
}

/// One executable `PT_LOAD` segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecSegment {
    pub vaddr: u64,
    pub file_offset: u64,
    pub file_size: u64,
}

/// The executable `PT_LOAD` segments of a file: what turns a symbol address
/// into the file offset a uprobe is attached at.
#[derive(Debug, Clone, Default)]
pub struct ExecSegments(Vec<ExecSegment>);

impl ExecSegments {
    pub(super) fn of(file: &object::File<'_>) -> Self {
        let mut segments = Vec::new();
        for segment in file.segments() {
            let executable = matches!(segment.flags(), SegmentFlags::Elf { p_flags } if p_flags & elf::PF_X != 0);
            if !executable {
                continue;
            }
            let (file_offset, file_size) = segment.file_range();
            segments.push(ExecSegment {
                vaddr: segment.address(),
                file_offset,
                file_size,
            });
        }
        Self(segments)
    }

    pub fn segments(&self) -> &[ExecSegment] {
        &self.0
    }

    /// `address - vaddr + file_offset` of the segment holding `address` in
    /// its file-backed part; `None` when no executable segment holds it.
    pub fn file_offset(&self, address: u64) -> Option<u64> {
        self.0.iter().find_map(|s| {
            let delta = address.checked_sub(s.vaddr)?;
            if delta < s.file_size {
                s.file_offset.checked_add(delta)
            } else {
                None
            }
        })
    }
}

/// Which of several symbols at one address names the function: the lowest
/// key wins. Global or weak before local, default symbol versions before
/// compatibility ones (`free@@V` before `cfree@V`), plain names before
/// `_`-prefixed ones (`malloc` before `__libc_malloc`; mangled names count as
/// plain), `.symtab` before `.dynsym`, then the name, so the choice is
/// deterministic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct AliasRank {
    binding: u8,
    /// `cfree@GLIBC_2.2.5`: a non-default (compatibility) version, kept for
    /// old binaries; `free@@GLIBC_2.2.5` is the name new code links to.
    compat_version: bool,
    reserved_name: bool,
    dynamic_table: bool,
}

/// A function symbol that can be probed, before demangling and DWARF.
#[derive(Debug, Clone)]
pub(super) struct RawFunction {
    pub symbol: String,
    pub address: u64,
    pub size: u64,
    pub file_offset: u64,
    /// Other names at the same address (`free` when the name kept is
    /// `cfree`), unversioned, so a pattern may name any of them.
    pub aliases: Vec<String>,
    rank: AliasRank,
}

/// The result of reading a file's symbol tables.
#[derive(Debug, Default)]
pub(super) struct CollectedFunctions {
    /// Sorted by address, one per address.
    pub functions: Vec<RawFunction>,
    pub skipped: SkipCounts,
    /// Defined `STT_FUNC`/`STT_GNU_IFUNC` symbols seen, probeable or not;
    /// zero means the file is stripped.
    pub defined: usize,
    /// How many of them came from `.symtab`; zero means only the exported
    /// functions (`.dynsym`) are known.
    pub defined_in_symtab: usize,
}

#[derive(Debug, Clone, Copy, Default)]
struct SectionInfo {
    executable: bool,
    plt: bool,
}

/// Reads the function symbols of `file` (`.symtab` and `.dynsym`), keeping
/// the probeable ones. `segments` gives file offsets; it comes from the
/// binary itself even when `file` is its separate debug file.
pub(super) fn collect_functions(
    file: &object::File<'_>,
    segments: &ExecSegments,
) -> CollectedFunctions {
    let mut sections: Vec<SectionInfo> = Vec::new();
    for section in file.sections() {
        let index = section.index().0;
        let executable = matches!(section.flags(), SectionFlags::Elf { sh_flags } if sh_flags & u64::from(elf::SHF_EXECINSTR) != 0);
        let plt = section
            .name_bytes()
            .is_ok_and(|name| PLT_SECTIONS.contains(&name));
        if sections.len() <= index {
            sections.resize(index + 1, SectionInfo::default());
        }
        if let Some(slot) = sections.get_mut(index) {
            *slot = SectionInfo { executable, plt };
        }
    }

    let mut out = CollectedFunctions::default();
    // The same symbol is usually in both tables; count it once.
    let mut seen: HashSet<(u64, &[u8])> = HashSet::new();
    let mut imports: HashSet<&[u8]> = HashSet::new();
    let tables = file
        .symbols()
        .map(|s| (s, false))
        .chain(file.dynamic_symbols().map(|s| (s, true)));
    for (sym, dynamic_table) in tables {
        let SymbolFlags::Elf { st_info, .. } = sym.flags() else {
            continue;
        };
        let st_type = st_info & 0xf;
        if st_type != elf::STT_FUNC && st_type != elf::STT_GNU_IFUNC {
            continue;
        }
        let Ok(name) = sym.name_bytes() else {
            continue;
        };
        if name.is_empty() {
            continue;
        }
        let base = unversioned(name);
        if sym.is_undefined() {
            if imports.insert(base) {
                out.skipped.plt_or_import += 1;
            }
            continue;
        }
        let address = sym.address();
        if !seen.insert((address, base)) {
            continue;
        }
        out.defined += 1;
        if !dynamic_table {
            out.defined_in_symtab += 1;
        }
        if name.ends_with(b"@plt") {
            out.skipped.plt_or_import += 1;
            continue;
        }
        // An IFUNC symbol is the resolver, run once by the dynamic linker,
        // not the implementation it picks.
        if st_type == elf::STT_GNU_IFUNC {
            out.skipped.not_executable += 1;
            continue;
        }
        let section = match sym.section() {
            SymbolSection::Section(index) => sections.get(index.0).copied(),
            _ => None,
        };
        let Some(section) = section else {
            out.skipped.not_executable += 1;
            continue;
        };
        if section.plt {
            out.skipped.plt_or_import += 1;
            continue;
        }
        if !section.executable {
            out.skipped.not_executable += 1;
            continue;
        }
        let size = sym.size();
        if size == 0 {
            out.skipped.zero_size += 1;
            continue;
        }
        let Some(file_offset) = segments.file_offset(address) else {
            out.skipped.not_executable += 1;
            continue;
        };
        let binding = match st_info >> 4 {
            // A weak alias (`calloc` for `__libc_calloc`) is as public as
            // a global one: the reserved-name rule decides between them.
            elf::STB_GLOBAL | elf::STB_WEAK => 0,
            _ => 2,
        };
        out.functions.push(RawFunction {
            symbol: String::from_utf8_lossy(name).into_owned(),
            address,
            size,
            file_offset,
            aliases: Vec::new(),
            rank: AliasRank {
                binding,
                compat_version: is_compat_version(name),
                reserved_name: is_reserved_name(name),
                dynamic_table,
            },
        });
    }

    out.functions
        .sort_by(|a, b| (a.address, &a.rank, &a.symbol).cmp(&(b.address, &b.rank, &b.symbol)));
    let before = out.functions.len();
    out.functions.dedup_by(|later, kept| {
        if later.address != kept.address {
            return false;
        }
        // The best-ranked name is kept; the others stay matchable.
        let alias = String::from_utf8_lossy(unversioned(later.symbol.as_bytes())).into_owned();
        if alias != String::from_utf8_lossy(unversioned(kept.symbol.as_bytes()))
            && !kept.aliases.contains(&alias)
        {
            kept.aliases.push(alias);
        }
        true
    });
    out.skipped.duplicate_address += before - out.functions.len();
    out
}

/// `name@VERSION` (one `@`): a symbol version that is not the default.
fn is_compat_version(name: &[u8]) -> bool {
    match name.iter().position(|&b| b == b'@') {
        Some(i) if i > 0 => name.get(i + 1) != Some(&b'@'),
        _ => false,
    }
}

/// `name@VERSION` / `name@@VERSION` → `name`.
pub(super) fn unversioned(name: &[u8]) -> &[u8] {
    match name.iter().position(|&b| b == b'@') {
        Some(i) if i > 0 => name.get(..i).unwrap_or(name),
        _ => name,
    }
}

/// `_foo`, `__libc_malloc`: names reserved for the implementation, which
/// are usually internal aliases. Mangled C++/Rust names are not.
fn is_reserved_name(name: &[u8]) -> bool {
    name.starts_with(b"_") && !name.starts_with(b"_Z") && !name.starts_with(b"_R")
}

/// What the dynamic linker needs to know about an executable or library.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DynamicInfo {
    /// `DT_NEEDED` names, in order.
    pub needed: Vec<String>,
    /// `DT_RPATH` entries (split on `:`), unexpanded.
    pub rpath: Vec<String>,
    /// `DT_RUNPATH` entries (split on `:`), unexpanded.
    pub runpath: Vec<String>,
    /// `PT_INTERP`.
    pub interpreter: Option<PathBuf>,
    pub identity: ElfIdentity,
}

/// Class and machine: a library must match its executable in both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ElfIdentity {
    pub is_64: bool,
    pub machine: u16,
}

/// Reads the dynamic section and interpreter of the ELF file at `path`.
pub fn dynamic_info(path: &Path) -> Result<DynamicInfo, SymbolError> {
    let mapped = MappedElf::open(path, path)?;
    let file = mapped.parse(path)?;
    let corrupt = |e: object::Error| SymbolError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    match &file {
        object::File::Elf32(f) => dynamic_info_of(f).map_err(corrupt),
        object::File::Elf64(f) => dynamic_info_of(f).map_err(corrupt),
        _ => Err(SymbolError::NotElf {
            path: path.to_path_buf(),
        }),
    }
}

fn dynamic_info_of<Elf: FileHeader<Endian = Endianness>>(
    f: &ElfFile<'_, Elf>,
) -> object::Result<DynamicInfo> {
    let endian = f.endian();
    let mut info = DynamicInfo {
        identity: ElfIdentity {
            is_64: f.is_64(),
            machine: f.elf_header().e_machine(endian),
        },
        ..DynamicInfo::default()
    };
    for ph in f.elf_program_headers() {
        if let Some(interp) = ph.interpreter(endian, f.data())? {
            use std::os::unix::ffi::OsStrExt;
            info.interpreter = Some(PathBuf::from(std::ffi::OsStr::from_bytes(interp)));
        }
    }
    let table = f.elf_dynamic_table()?;
    for d in &table {
        let list = match d.tag {
            elf::DT_NEEDED => &mut info.needed,
            elf::DT_RPATH => &mut info.rpath,
            elf::DT_RUNPATH => &mut info.runpath,
            _ => continue,
        };
        let value = String::from_utf8_lossy(table.string(d)?).into_owned();
        if d.tag == elf::DT_NEEDED {
            list.push(value);
        } else {
            list.extend(value.split(':').map(str::to_string));
        }
    }
    Ok(info)
}

/// Class and machine of the ELF file at `path`, from its first 20 bytes;
/// `None` if it is not a readable ELF file.
pub fn identity(path: &Path) -> Option<ElfIdentity> {
    let mut header = [0u8; 20];
    File::open(path).ok()?.read_exact(&mut header).ok()?;
    if header.get(..4)? != ELF_MAGIC.as_slice() {
        return None;
    }
    let is_64 = match header.get(4)? {
        1 => false,
        2 => true,
        _ => return None,
    };
    let machine_bytes = [*header.get(18)?, *header.get(19)?];
    let machine = match header.get(5)? {
        1 => u16::from_le_bytes(machine_bytes),
        2 => u16::from_be_bytes(machine_bytes),
        _ => return None,
    };
    Some(ElfIdentity { is_64, machine })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unversioned_names() {
        assert_eq!(unversioned(b"memcpy@@GLIBC_2.14"), b"memcpy");
        assert_eq!(unversioned(b"memcpy@GLIBC_2.2.5"), b"memcpy");
        assert_eq!(unversioned(b"memcpy"), b"memcpy");
        assert_eq!(unversioned(b"@odd"), b"@odd");
    }

    #[test]
    fn alias_ranking() {
        let global_plain = AliasRank {
            binding: 0,
            compat_version: false,
            reserved_name: false,
            dynamic_table: false,
        };
        let global_reserved = AliasRank {
            reserved_name: true,
            ..global_plain.clone()
        };
        let local_plain = AliasRank {
            binding: 2,
            ..global_plain.clone()
        };
        let dynamic = AliasRank {
            dynamic_table: true,
            ..global_plain.clone()
        };
        assert!(global_plain < global_reserved);
        assert!(global_reserved < local_plain);
        assert!(global_plain < dynamic);
        let compat = AliasRank {
            compat_version: true,
            ..global_plain.clone()
        };
        assert!(
            global_reserved < compat,
            "__libc_free before cfree@GLIBC_2.2.5"
        );
        assert!(is_compat_version(b"cfree@GLIBC_2.2.5"));
        assert!(!is_compat_version(b"free@@GLIBC_2.2.5"));
        assert!(!is_compat_version(b"free"));
        assert!(is_reserved_name(b"__libc_malloc"));
        assert!(!is_reserved_name(b"_ZN3foo3barEv"));
        assert!(!is_reserved_name(b"malloc"));
    }

    #[test]
    fn exec_segment_offsets() {
        let segs = ExecSegments(vec![ExecSegment {
            vaddr: 0x401000,
            file_offset: 0x1000,
            file_size: 0x500,
        }]);
        assert_eq!(segs.file_offset(0x401000), Some(0x1000));
        assert_eq!(segs.file_offset(0x401234), Some(0x1234));
        assert_eq!(segs.file_offset(0x401500), None);
        assert_eq!(segs.file_offset(0x400fff), None);
        assert_eq!(segs.file_offset(u64::MAX), None);
    }

    #[test]
    fn hex_is_lower_case() {
        assert_eq!(hex(&[0xab, 0x01, 0xff]), "ab01ff");
    }
}
