//! DWARF: what each function is. One pass over the compile units builds a
//! map from a function's entry address (`DW_AT_low_pc`, or each range start)
//! to its source file and line, parameters, return type, language and how
//! often it was inlined, plus the list of inlined instances; symbols are
//! joined to it by address, so no lookup ever scans the DWARF again.
//!
//! The line is `DW_AT_decl_line` (of the subprogram, or of the declaration
//! or abstract instance it points to); without one, the line-table row at
//! the entry address. DWARF 4 and 5, and compressed sections (zlib, zstd),
//! are handled by `gimli` and `object`. Split DWARF: a skeleton unit's
//! `.dwo` is looked for under its `comp_dir` and next to the binary, and a
//! `<binary>.dwp` package next to it.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gimli::{AttributeValue, EndianSlice, RunTimeEndian, UnitOffset};
use object::{Object, ObjectSection};

use super::elf::MappedElf;

/// What DWARF says about one function (its out-of-line copy).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceLocation {
    /// `comp_dir` joined with the file's directory and name.
    pub file: Option<Arc<str>>,
    pub line: Option<u32>,
    /// Formal parameters in order: `(name, type)`; an unnamed one has an
    /// empty name, an unknown type is `?`.
    pub params: Vec<(String, String)>,
    /// `DW_AT_type` of the subprogram; `void` (C, C++) or `()` (Rust)
    /// when it has none.
    pub return_type: Option<Arc<str>>,
    /// `DW_AT_language` of the compile unit: `C`, `C++`, `Rust`, `Go`...
    pub language: Option<&'static str>,
    /// How many inlined instances (`DW_TAG_inlined_subroutine`) of this
    /// function the file has.
    pub inlined: u32,
    /// Global DIE offset of the abstract instance (or of the DIE itself):
    /// what inlined instances point to.
    key: usize,
}

/// One place a function was inlined into another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InlinedInstance {
    /// Demangled linkage name, else `DW_AT_name`.
    pub name: String,
    /// First instruction of the inlined code (`DW_AT_entry_pc`, else
    /// `DW_AT_low_pc`, else the lowest range start).
    pub address: u64,
    /// Entry address of the out-of-line function the code sits in.
    pub caller_address: Option<u64>,
    /// The call site: `DW_AT_call_file` and `DW_AT_call_line`.
    pub call_file: Option<Arc<str>>,
    pub call_line: Option<u32>,
}

/// Entry address → what DWARF says, for every function DWARF describes.
#[derive(Debug, Clone, Default)]
pub struct FunctionLocations {
    by_address: HashMap<u64, SourceLocation>,
    /// Sorted by address.
    pub inlined: Vec<InlinedInstance>,
    /// Split-DWARF units whose `.dwo` was not found.
    pub missing_dwo: Vec<String>,
}

impl FunctionLocations {
    pub fn get(&self, address: u64) -> Option<&SourceLocation> {
        self.by_address.get(&address)
    }

    pub fn len(&self) -> usize {
        self.by_address.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_address.is_empty()
    }

    fn insert(&mut self, address: u64, location: SourceLocation) {
        let slot = self.by_address.entry(address).or_default();
        // Several DIEs may share an entry address; keep the most complete.
        let adds_line = slot.line.is_none() && location.line.is_some();
        let adds_file =
            slot.file.is_none() && location.file.is_some() && slot.line == location.line;
        let adds_params = slot.params.is_empty() && !location.params.is_empty();
        if adds_line || adds_file || (adds_params && slot.line == location.line) {
            *slot = location;
        }
    }

    fn set_line(&mut self, address: u64, file: Option<Arc<str>>, line: u32) {
        let slot = self.by_address.entry(address).or_default();
        if slot.line.is_none() {
            slot.line = Some(line);
            slot.file = file.or(slot.file.take());
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DwarfError {
    #[error("cannot read DWARF section: {0}")]
    Section(#[from] object::Error),
    #[error("malformed DWARF: {0}")]
    Parse(#[from] gimli::Error),
    #[error(
        "compressed section {section} claims {claimed} bytes uncompressed from {compressed} (more than {MAX_COMPRESSION_RATIO} to 1)"
    )]
    Implausible {
        section: String,
        claimed: u64,
        compressed: usize,
    },
}

/// A compressed section's header says how big it will be, and
/// decompression reserves that much first: a corrupt size would make the
/// agent reserve terabytes. Real DWARF compresses about 3 to 10 to 1;
/// claims above this ratio (and above [`ALWAYS_BELIEVED`]) are refused.
pub(crate) const MAX_COMPRESSION_RATIO: u64 = 4096;
/// Uncompressed sizes believed whatever the ratio.
const ALWAYS_BELIEVED: u64 = 64 << 20;

/// The section's bytes, decompressed when the section is compressed and
/// its claimed size is plausible.
pub(crate) fn section_data<'d>(
    section: &impl ObjectSection<'d>,
) -> Result<Cow<'d, [u8]>, DwarfError> {
    let compressed = section.compressed_data()?;
    let limit = (compressed.data.len() as u64)
        .saturating_mul(MAX_COMPRESSION_RATIO)
        .max(ALWAYS_BELIEVED);
    if compressed.format != object::CompressionFormat::None && compressed.uncompressed_size > limit
    {
        return Err(DwarfError::Implausible {
            section: section.name().unwrap_or("?").to_string(),
            claimed: compressed.uncompressed_size,
            compressed: compressed.data.len(),
        });
    }
    Ok(compressed.decompress()?)
}

type Reader<'a> = EndianSlice<'a, RunTimeEndian>;
type Dwarf<'a> = gimli::Dwarf<Reader<'a>>;
type Unit<'a> = gimli::Unit<Reader<'a>>;

/// How many `DW_AT_specification` / `DW_AT_abstract_origin` links to follow
/// looking for a declaration line; bounds a malicious cycle.
const MAX_ORIGIN_HOPS: usize = 4;
/// How deep a type name is rendered (`const char **` is three levels).
const MAX_TYPE_DEPTH: usize = 8;

pub(super) fn endian_of(file: &object::File<'_>) -> RunTimeEndian {
    if file.is_little_endian() {
        RunTimeEndian::Little
    } else {
        RunTimeEndian::Big
    }
}

pub(super) fn load_sections<'f>(
    file: &'f object::File<'_>,
    dwo: bool,
) -> Result<gimli::DwarfSections<Cow<'f, [u8]>>, DwarfError> {
    gimli::DwarfSections::load(
        |id: gimli::SectionId| -> Result<Cow<'f, [u8]>, DwarfError> {
            let name = if dwo { id.dwo_name() } else { Some(id.name()) };
            match name.and_then(|n| file.section_by_name(n)) {
                Some(section) if section.kind() != object::SectionKind::UninitializedData => {
                    section_data(&section)
                }
                _ => Ok(Cow::Borrowed(&[])),
            }
        },
    )
}

/// Reads the functions DWARF describes in `file`. `binary_path` is where
/// split-DWARF `.dwo`/`.dwp` files are looked for. A compile unit that fails
/// to parse is skipped; an error is returned only when nothing can be read.
pub(super) fn function_locations(
    file: &object::File<'_>,
    binary_path: &Path,
) -> Result<FunctionLocations, DwarfError> {
    let sections = load_sections(file, false)?;
    let endian = endian_of(file);
    let dwarf: Dwarf<'_> = sections.borrow(|data| EndianSlice::new(data, endian));
    let mut package = DwpPackage::open(binary_path);

    let mut out = FunctionLocations::default();
    let mut counts = InlineCounts::default();
    let mut headers = dwarf.units();
    let mut first = true;
    loop {
        let header = match headers.next() {
            Ok(Some(h)) => h,
            Ok(None) => break,
            // The first header is the test of whether this is DWARF at all.
            Err(e) if first => return Err(e.into()),
            Err(e) => {
                log::debug!("DWARF unit headers stop early: {e}");
                break;
            }
        };
        first = false;
        let unit = match dwarf.unit(header) {
            Ok(u) => u,
            Err(e) => {
                log::debug!("skipping DWARF unit: {e}");
                continue;
            }
        };
        if let Some(dwo_id) = unit.dwo_id
            && is_skeleton(&unit)
        {
            // DIE offsets of a .dwo are its own: keep its counts apart.
            let mut split_counts = InlineCounts::default();
            if !read_split_unit(
                &dwarf,
                &unit,
                dwo_id,
                binary_path,
                endian,
                &mut package,
                &mut out,
                &mut split_counts,
            ) {
                let name = unit
                    .dwo_name()
                    .ok()
                    .flatten()
                    .and_then(|v| dwarf.attr_string(&unit, v).ok())
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| format!("dwo id {:#x}", dwo_id.0));
                out.missing_dwo.push(name);
            }
            split_counts.apply(&mut out);
            continue;
        }
        if let Err(e) = read_unit(&dwarf, &unit, &mut out, &mut counts) {
            log::debug!("DWARF unit read partially: {e}");
        }
    }
    counts.apply(&mut out);
    out.inlined.sort_by_key(|i| (i.address, i.caller_address));
    Ok(out)
}

/// A skeleton unit has no children of its own worth reading.
fn is_skeleton(unit: &Unit<'_>) -> bool {
    unit.dwo_name().ok().flatten().is_some()
        || matches!(unit.header.type_(), gimli::UnitType::Skeleton(_))
}

/// Inlined-instance counts by abstract-instance key, and which functions
/// carry which key; applied once all units are read.
#[derive(Default)]
struct InlineCounts {
    by_key: HashMap<usize, u32>,
    /// Indexes of `out.inlined` entries from this DWARF (their caller key is
    /// resolved here).
    functions: Vec<(u64, usize)>,
}

impl InlineCounts {
    fn apply(self, out: &mut FunctionLocations) {
        for (address, key) in self.functions {
            if let Some(slot) = out.by_address.get_mut(&address)
                && slot.key == key
            {
                slot.inlined = self.by_key.get(&key).copied().unwrap_or(0);
            }
        }
    }
}

/// An open `.dwp` package next to the binary, if any.
struct DwpPackage {
    mapped: Option<MappedElf>,
}

impl DwpPackage {
    fn open(binary_path: &Path) -> Self {
        let mut path = binary_path.as_os_str().to_owned();
        path.push(".dwp");
        let path = PathBuf::from(path);
        let mapped = if path.is_file() {
            MappedElf::open(&path, &path).ok()
        } else {
            None
        };
        Self { mapped }
    }
}

/// Reads the split unit of `skeleton` from its `.dwo` (or the `.dwp`);
/// false when neither was found.
#[allow(clippy::too_many_arguments)]
fn read_split_unit(
    parent: &Dwarf<'_>,
    skeleton: &Unit<'_>,
    dwo_id: gimli::DwoId,
    binary_path: &Path,
    endian: RunTimeEndian,
    package: &mut DwpPackage,
    out: &mut FunctionLocations,
    counts: &mut InlineCounts,
) -> bool {
    // The .dwo file: named by the skeleton, relative to its comp_dir; or
    // next to the binary (copied along with it).
    let dwo_name = skeleton
        .dwo_name()
        .ok()
        .flatten()
        .and_then(|v| parent.attr_string(skeleton, v).ok())
        .map(|s| PathBuf::from(&*s.to_string_lossy()));
    if let Some(name) = dwo_name {
        let mut candidates = Vec::new();
        if let Some(dir) = &skeleton.comp_dir {
            candidates.push(PathBuf::from(&*dir.to_string_lossy()).join(&name));
        }
        candidates.push(name.clone());
        if let (Some(dir), Some(base)) = (binary_path.parent(), name.file_name()) {
            candidates.push(dir.join(base));
        }
        for path in candidates {
            if !path.is_file() {
                continue;
            }
            let Ok(mapped) = MappedElf::open(&path, &path) else {
                continue;
            };
            let Ok(file) = object::File::parse(mapped.data()) else {
                continue;
            };
            let Ok(sections) = load_sections(&file, true) else {
                continue;
            };
            let mut dwo: Dwarf<'_> = sections.borrow(|data| EndianSlice::new(data, endian));
            relocate(&mut dwo, parent, endian);
            if read_dwo_unit(&dwo, parent, skeleton, dwo_id, endian, out, counts) {
                return true;
            }
        }
    }

    // A .dwp package.
    let Some(mapped) = &package.mapped else {
        return false;
    };
    let Ok(file) = object::File::parse(mapped.data()) else {
        return false;
    };
    let Ok(sections) = gimli::DwarfPackageSections::load(
        |id: gimli::SectionId| -> Result<Cow<'_, [u8]>, gimli::Error> {
            match id.dwo_name().and_then(|n| file.section_by_name(n)) {
                Some(section) => section_data(&section).map_err(|_| gimli::Error::Io),
                None => Ok(Cow::Borrowed(&[])),
            }
        },
    ) else {
        return false;
    };
    let Ok(dwp) = sections.borrow(
        |data| EndianSlice::new(data, endian),
        EndianSlice::new(&[], endian),
    ) else {
        return false;
    };
    let parent_short: Dwarf<'_> = gimli::Dwarf {
        debug_addr: gimli::DebugAddr::from(EndianSlice::new(parent.debug_addr_slice(), endian)),
        ..Default::default()
    };
    match dwp.find_cu(dwo_id, &parent_short) {
        Ok(Some(mut dwo)) => {
            relocate(&mut dwo, parent, endian);
            read_dwo_unit(&dwo, parent, skeleton, dwo_id, endian, out, counts)
        }
        _ => false,
    }
}

/// What `Dwarf::make_dwo` does; done by hand because the parent's sections
/// live longer than the .dwo's.
fn relocate<'d, 'p: 'd>(dwo: &mut Dwarf<'d>, parent: &Dwarf<'p>, endian: RunTimeEndian) {
    dwo.file_type = gimli::DwarfFileType::Dwo;
    dwo.debug_addr = gimli::DebugAddr::from(EndianSlice::new(parent.debug_addr_slice(), endian));
    dwo.ranges
        .set_debug_ranges(gimli::DebugRanges::from(EndianSlice::new(
            parent.ranges.debug_ranges().reader_slice(),
            endian,
        )));
}

/// Reads the unit `dwo_id` of a .dwo or .dwp, with the skeleton's
/// relocated attributes; false if it is not there.
fn read_dwo_unit<'d, 'p: 'd>(
    dwo: &Dwarf<'d>,
    parent: &Dwarf<'p>,
    skeleton: &Unit<'p>,
    dwo_id: gimli::DwoId,
    endian: RunTimeEndian,
    out: &mut FunctionLocations,
    counts: &mut InlineCounts,
) -> bool {
    let mut units = dwo.units();
    while let Ok(Some(header)) = units.next() {
        let Ok(mut unit) = dwo.unit(header) else {
            continue;
        };
        if unit.dwo_id != Some(dwo_id) {
            continue;
        }
        unit.low_pc = skeleton.low_pc;
        unit.addr_base = skeleton.addr_base;
        if unit.header.version() < 5 {
            unit.rnglists_base = skeleton.rnglists_base;
        }
        if unit.comp_dir.is_none() {
            unit.comp_dir = skeleton
                .comp_dir
                .map(|d| EndianSlice::new(d.slice(), endian));
        }
        if unit.line_program.is_none() {
            // A split unit's `DW_AT_decl_file` indexes the file table at the
            // start of `.debug_line.dwo` (it has no `DW_AT_stmt_list`).
            unit.line_program = dwo
                .debug_line
                .program(
                    gimli::DebugLineOffset(0),
                    unit.header.address_size(),
                    unit.comp_dir,
                    unit.name,
                )
                .ok();
        }
        if unit.line_program.is_none() {
            unit.line_program = skeleton.line_program.as_ref().and_then(|p| {
                let line =
                    gimli::DebugLine::from(EndianSlice::new(parent.debug_line_slice(), endian));
                line.program(
                    p.header().offset(),
                    unit.header.address_size(),
                    unit.comp_dir,
                    unit.name,
                )
                .ok()
            });
        }
        if let Err(e) = read_unit(dwo, &unit, out, counts) {
            log::debug!("split DWARF unit read partially: {e}");
        }
        return true;
    }
    false
}

trait SectionSlices<'a> {
    fn debug_addr_slice(&self) -> &'a [u8];
    fn debug_line_slice(&self) -> &'a [u8];
}

impl<'a> SectionSlices<'a> for Dwarf<'a> {
    fn debug_addr_slice(&self) -> &'a [u8] {
        use gimli::Section;
        self.debug_addr.reader().slice()
    }
    fn debug_line_slice(&self) -> &'a [u8] {
        use gimli::Section;
        self.debug_line.reader().slice()
    }
}

trait ReaderSlice<'a> {
    fn reader_slice(&self) -> &'a [u8];
}

impl<'a> ReaderSlice<'a> for gimli::DebugRanges<Reader<'a>> {
    fn reader_slice(&self) -> &'a [u8] {
        use gimli::Section;
        self.reader().slice()
    }
}

/// A subprogram with code, collecting its parameters.
struct OpenFunction {
    addresses: Vec<u64>,
    info: SourceLocation,
    /// Depth of its direct children.
    child_depth: isize,
}

/// Adds the subprograms and inlined instances of one unit to `out`.
fn read_unit(
    dwarf: &Dwarf<'_>,
    unit: &Unit<'_>,
    out: &mut FunctionLocations,
    counts: &mut InlineCounts,
) -> gimli::Result<()> {
    let mut files = FileNames::default();
    let mut types = TypeNames::default();
    let mut without_line: HashSet<u64> = HashSet::new();
    let mut attrs = Vec::new();
    let mut language = None;
    // Open subprograms with code, innermost last.
    let mut open: Vec<OpenFunction> = Vec::new();
    let mut entries = unit.entries_raw(None)?;
    let finish = |f: OpenFunction,
                  out: &mut FunctionLocations,
                  without_line: &mut HashSet<u64>,
                  counts: &mut InlineCounts| {
        for &address in &f.addresses {
            if f.info.line.is_none() {
                without_line.insert(address);
            }
            counts.functions.push((address, f.info.key));
            out.insert(address, f.info.clone());
        }
    };
    while !entries.is_empty() {
        let depth = entries.next_depth();
        while open.last().is_some_and(|f| f.child_depth > depth) {
            if let Some(f) = open.pop() {
                finish(f, out, &mut without_line, counts);
            }
        }
        let offset = entries.next_offset();
        let Some(abbrev) = entries.read_abbreviation()? else {
            continue;
        };
        let tag = abbrev.tag();
        let wanted = matches!(
            tag,
            gimli::DW_TAG_subprogram
                | gimli::DW_TAG_inlined_subroutine
                | gimli::DW_TAG_formal_parameter
                | gimli::DW_TAG_compile_unit
                | gimli::DW_TAG_skeleton_unit
        );
        if !wanted {
            entries.skip_attributes(abbrev.attributes())?;
            continue;
        }
        entries.read_attributes(abbrev.attributes(), &mut attrs)?;
        match tag {
            gimli::DW_TAG_compile_unit | gimli::DW_TAG_skeleton_unit => {
                language = attrs
                    .iter()
                    .find(|a| a.name() == gimli::DW_AT_language)
                    .and_then(|a| match a.value() {
                        AttributeValue::Language(l) => language_name(l),
                        _ => None,
                    });
            }
            gimli::DW_TAG_subprogram => {
                let addresses = entry_addresses(dwarf, unit, &attrs);
                if addresses.is_empty() {
                    // A declaration or an abstract (inlined-only) instance.
                    continue;
                }
                let (file_index, line) = declaration(unit, &attrs);
                let file = file_index.and_then(|i| files.get(dwarf, unit, i));
                let origin = ref_attr(&attrs, gimli::DW_AT_abstract_origin);
                let Some(key) = origin
                    .and_then(|o| global(unit, o))
                    .or_else(|| global(unit, offset))
                else {
                    continue;
                };
                let return_type = match follow_attr(unit, &attrs, gimli::DW_AT_type) {
                    Some(t) => Some(types.get(dwarf, unit, t, language)),
                    None => match language {
                        Some("C" | "C++") => Some(Arc::from("void")),
                        Some("Rust") => Some(Arc::from("()")),
                        _ => None,
                    },
                };
                let f = OpenFunction {
                    addresses,
                    info: SourceLocation {
                        file,
                        line,
                        params: Vec::new(),
                        return_type,
                        language,
                        inlined: 0,
                        key,
                    },
                    child_depth: depth + 1,
                };
                if abbrev.has_children() {
                    open.push(f);
                } else {
                    finish(f, out, &mut without_line, counts);
                }
            }
            gimli::DW_TAG_formal_parameter => {
                let Some(f) = open.last_mut().filter(|f| f.child_depth == depth) else {
                    continue;
                };
                let name = follow_attr_string(dwarf, unit, &attrs, gimli::DW_AT_name);
                let ty = follow_attr(unit, &attrs, gimli::DW_AT_type)
                    .map(|t| types.get(dwarf, unit, t, language).to_string())
                    .unwrap_or_else(|| "?".to_string());
                f.info.params.push((name.unwrap_or_default(), ty));
            }
            gimli::DW_TAG_inlined_subroutine => {
                let Some(origin) = ref_attr(&attrs, gimli::DW_AT_abstract_origin) else {
                    continue;
                };
                let Some(key) = global(unit, origin) else {
                    continue;
                };
                *counts.by_key.entry(key).or_default() += 1;
                let entry_pc = attrs
                    .iter()
                    .find(|a| a.name() == gimli::DW_AT_entry_pc)
                    .and_then(|a| dwarf.attr_address(unit, a.value()).ok().flatten())
                    .filter(|&pc| pc != 0);
                let Some(address) =
                    entry_pc.or_else(|| entry_addresses(dwarf, unit, &attrs).into_iter().min())
                else {
                    continue;
                };
                let mut call_file = None;
                let mut call_line = None;
                for a in &attrs {
                    match a.name() {
                        gimli::DW_AT_call_file => {
                            let index = match a.value() {
                                AttributeValue::FileIndex(i) => Some(i),
                                v => v.udata_value(),
                            };
                            call_file = index.and_then(|i| files.get(dwarf, unit, i));
                        }
                        gimli::DW_AT_call_line => {
                            call_line = a.udata_value().and_then(|l| u32::try_from(l).ok());
                        }
                        _ => {}
                    }
                }
                let name = origin_name(dwarf, unit, origin).unwrap_or_else(|| "?".to_string());
                out.inlined.push(InlinedInstance {
                    name,
                    address,
                    caller_address: open.first().and_then(|f| f.addresses.first().copied()),
                    call_file,
                    call_line,
                });
            }
            _ => {}
        }
    }
    while let Some(f) = open.pop() {
        finish(f, out, &mut without_line, counts);
    }
    if !without_line.is_empty() {
        lines_at(dwarf, unit, &without_line, &mut files, out)?;
    }
    Ok(())
}

/// The section offset of a DIE of `unit`, the key that ties inlined
/// instances to their abstract origin; `None` for a reference outside the
/// unit (a corrupt file: the sum could overflow).
pub(super) fn global(unit: &Unit<'_>, offset: UnitOffset) -> Option<usize> {
    offset
        .is_in_bounds(&unit.header)
        .then(|| offset.to_unit_section_offset(&unit.header).0)
}

fn language_name(l: gimli::DwLang) -> Option<&'static str> {
    Some(match l {
        gimli::DW_LANG_C
        | gimli::DW_LANG_C89
        | gimli::DW_LANG_C99
        | gimli::DW_LANG_C11
        | gimli::DW_LANG_C17 => "C",
        gimli::DW_LANG_C_plus_plus
        | gimli::DW_LANG_C_plus_plus_03
        | gimli::DW_LANG_C_plus_plus_11
        | gimli::DW_LANG_C_plus_plus_14
        | gimli::DW_LANG_C_plus_plus_17
        | gimli::DW_LANG_C_plus_plus_20 => "C++",
        gimli::DW_LANG_Rust => "Rust",
        gimli::DW_LANG_Go => "Go",
        gimli::DW_LANG_Zig => "Zig",
        gimli::DW_LANG_Swift => "Swift",
        gimli::DW_LANG_D => "D",
        gimli::DW_LANG_Fortran77
        | gimli::DW_LANG_Fortran90
        | gimli::DW_LANG_Fortran95
        | gimli::DW_LANG_Fortran03
        | gimli::DW_LANG_Fortran08 => "Fortran",
        gimli::DW_LANG_Mips_Assembler => "Assembly",
        _ => return None,
    })
}

/// A reference to another DIE of the same unit.
fn ref_attr(attrs: &[gimli::Attribute<Reader<'_>>], name: gimli::DwAt) -> Option<UnitOffset> {
    attrs
        .iter()
        .find(|a| a.name() == name)
        .and_then(|a| match a.value() {
            AttributeValue::UnitRef(o) => Some(o),
            _ => None,
        })
}

/// A reference attribute (`DW_AT_type`) of the DIE, or of the DIEs it
/// points to through `DW_AT_abstract_origin` / `DW_AT_specification`.
fn follow_attr(
    unit: &Unit<'_>,
    attrs: &[gimli::Attribute<Reader<'_>>],
    name: gimli::DwAt,
) -> Option<UnitOffset> {
    if let Some(o) = ref_attr(attrs, name) {
        return Some(o);
    }
    let mut origin = ref_attr(attrs, gimli::DW_AT_abstract_origin)
        .or_else(|| ref_attr(attrs, gimli::DW_AT_specification));
    for _ in 0..MAX_ORIGIN_HOPS {
        let entry = unit.entry(origin?).ok()?;
        if let Some(o) = ref_attr(entry.attrs(), name) {
            return Some(o);
        }
        origin = ref_attr(entry.attrs(), gimli::DW_AT_abstract_origin)
            .or_else(|| ref_attr(entry.attrs(), gimli::DW_AT_specification));
    }
    None
}

/// A string attribute of the DIE or of the DIEs it points to.
fn follow_attr_string(
    dwarf: &Dwarf<'_>,
    unit: &Unit<'_>,
    attrs: &[gimli::Attribute<Reader<'_>>],
    name: gimli::DwAt,
) -> Option<String> {
    let string = |attrs: &[gimli::Attribute<Reader<'_>>]| {
        attrs
            .iter()
            .find(|a| a.name() == name)
            .and_then(|a| dwarf.attr_string(unit, a.value()).ok())
            .map(|s| s.to_string_lossy().into_owned())
    };
    if let Some(s) = string(attrs) {
        return Some(s);
    }
    let mut origin = ref_attr(attrs, gimli::DW_AT_abstract_origin)
        .or_else(|| ref_attr(attrs, gimli::DW_AT_specification));
    for _ in 0..MAX_ORIGIN_HOPS {
        let entry = unit.entry(origin?).ok()?;
        if let Some(s) = string(entry.attrs()) {
            return Some(s);
        }
        origin = ref_attr(entry.attrs(), gimli::DW_AT_abstract_origin)
            .or_else(|| ref_attr(entry.attrs(), gimli::DW_AT_specification));
    }
    None
}

/// The name of an abstract instance: its demangled linkage name, else its
/// `DW_AT_name` (through `DW_AT_specification`).
fn origin_name(dwarf: &Dwarf<'_>, unit: &Unit<'_>, origin: UnitOffset) -> Option<String> {
    let entry = unit.entry(origin).ok()?;
    let attrs = entry.attrs();
    if let Some(linkage) = follow_attr_string(dwarf, unit, attrs, gimli::DW_AT_linkage_name)
        .or_else(|| follow_attr_string(dwarf, unit, attrs, gimli::DW_AT_MIPS_linkage_name))
    {
        return Some(super::demangle::demangle(&linkage));
    }
    follow_attr_string(dwarf, unit, attrs, gimli::DW_AT_name)
}

/// Type names of one unit, rendered once each.
#[derive(Default)]
struct TypeNames {
    by_offset: HashMap<UnitOffset, Arc<str>>,
}

impl TypeNames {
    fn get(
        &mut self,
        dwarf: &Dwarf<'_>,
        unit: &Unit<'_>,
        offset: UnitOffset,
        language: Option<&str>,
    ) -> Arc<str> {
        if let Some(name) = self.by_offset.get(&offset) {
            return name.clone();
        }
        let name: Arc<str> = Arc::from(render_type(dwarf, unit, offset, language, 0).as_str());
        self.by_offset.insert(offset, name.clone());
        name
    }
}

/// `const char *`, `struct node *`, `int[]`, `std::string`: the C-like
/// spelling of a type DIE; `?` for what cannot be read.
fn render_type(
    dwarf: &Dwarf<'_>,
    unit: &Unit<'_>,
    offset: UnitOffset,
    language: Option<&str>,
    depth: usize,
) -> String {
    if depth > MAX_TYPE_DEPTH {
        return "?".into();
    }
    let Ok(entry) = unit.entry(offset) else {
        return "?".into();
    };
    let attrs = entry.attrs();
    let name = attrs
        .iter()
        .find(|a| a.name() == gimli::DW_AT_name)
        .and_then(|a| dwarf.attr_string(unit, a.value()).ok())
        .map(|s| s.to_string_lossy().into_owned());
    let target = || match ref_attr(attrs, gimli::DW_AT_type) {
        Some(t) => render_type(dwarf, unit, t, language, depth + 1),
        None => "void".into(),
    };
    let tagged = |keyword: &str, name: Option<String>| {
        let name = name.unwrap_or_else(|| "<anonymous>".into());
        if matches!(language, Some("C")) {
            format!("{keyword} {name}")
        } else {
            name
        }
    };
    match entry.tag() {
        gimli::DW_TAG_base_type
        | gimli::DW_TAG_typedef
        | gimli::DW_TAG_class_type
        | gimli::DW_TAG_unspecified_type => name.unwrap_or_else(|| "?".into()),
        gimli::DW_TAG_structure_type => tagged("struct", name),
        gimli::DW_TAG_union_type => tagged("union", name),
        gimli::DW_TAG_enumeration_type => tagged("enum", name),
        gimli::DW_TAG_pointer_type => match name {
            // Rust names its pointer types (`&str`, `*const u8`).
            Some(n) => n,
            None => {
                let t = target();
                if t.ends_with('*') {
                    format!("{t}*")
                } else {
                    format!("{t} *")
                }
            }
        },
        gimli::DW_TAG_reference_type => name.unwrap_or_else(|| format!("{}&", target())),
        gimli::DW_TAG_rvalue_reference_type => name.unwrap_or_else(|| format!("{}&&", target())),
        gimli::DW_TAG_const_type => format!("const {}", target()),
        gimli::DW_TAG_volatile_type => format!("volatile {}", target()),
        gimli::DW_TAG_restrict_type => target(),
        gimli::DW_TAG_atomic_type => format!("_Atomic {}", target()),
        gimli::DW_TAG_array_type => name.unwrap_or_else(|| format!("{}[]", target())),
        gimli::DW_TAG_subroutine_type => "function".into(),
        _ => name.unwrap_or_else(|| "?".into()),
    }
}

/// Where the function starts: `DW_AT_low_pc`, else the start of each
/// `DW_AT_ranges` range (hot/cold split functions). Address 0 is a function
/// the linker discarded.
fn entry_addresses(
    dwarf: &Dwarf<'_>,
    unit: &Unit<'_>,
    attrs: &[gimli::Attribute<Reader<'_>>],
) -> Vec<u64> {
    let mut addresses = Vec::new();
    for attr in attrs {
        match attr.name() {
            gimli::DW_AT_low_pc => {
                if let Ok(Some(pc)) = dwarf.attr_address(unit, attr.value())
                    && pc != 0
                {
                    return vec![pc];
                }
            }
            gimli::DW_AT_ranges => {
                if let Ok(Some(mut ranges)) = dwarf.attr_ranges(unit, attr.value()) {
                    while let Ok(Some(range)) = ranges.next() {
                        if range.begin != 0 && range.begin < range.end {
                            addresses.push(range.begin);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    addresses
}

/// `(DW_AT_decl_file, DW_AT_decl_line)` of the subprogram, or of the
/// declaration (`DW_AT_specification`) or abstract instance
/// (`DW_AT_abstract_origin`) it refers to within the same unit.
fn declaration(
    unit: &Unit<'_>,
    attrs: &[gimli::Attribute<Reader<'_>>],
) -> (Option<u64>, Option<u32>) {
    let (mut file, mut line, mut origin) = decl_attributes(attrs);
    let mut hops = 0;
    while line.is_none() && hops < MAX_ORIGIN_HOPS {
        let Some(offset) = origin else {
            break;
        };
        let Ok(entry) = unit.entry(offset) else {
            break;
        };
        let (f, l, o) = decl_attributes(entry.attrs());
        if l.is_some() {
            file = f.or(file);
            line = l;
        } else if file.is_none() {
            file = f;
        }
        origin = o;
        hops += 1;
    }
    (file, line)
}

fn decl_attributes(
    attrs: &[gimli::Attribute<Reader<'_>>],
) -> (Option<u64>, Option<u32>, Option<UnitOffset>) {
    let mut file = None;
    let mut line = None;
    let mut origin = None;
    for attr in attrs {
        match attr.name() {
            gimli::DW_AT_decl_file => {
                file = match attr.value() {
                    AttributeValue::FileIndex(i) => Some(i),
                    v => v.udata_value(),
                };
            }
            gimli::DW_AT_decl_line => {
                line = attr
                    .udata_value()
                    .and_then(|l| u32::try_from(l).ok())
                    .filter(|&l| l != 0);
            }
            gimli::DW_AT_specification | gimli::DW_AT_abstract_origin => {
                if let AttributeValue::UnitRef(offset) = attr.value() {
                    origin = Some(offset);
                }
            }
            _ => {}
        }
    }
    (file, line, origin)
}

/// Fills in lines from the line table for entry addresses in `wanted` that
/// had no declaration line: the first row at exactly that address.
fn lines_at(
    dwarf: &Dwarf<'_>,
    unit: &Unit<'_>,
    wanted: &HashSet<u64>,
    files: &mut FileNames,
    out: &mut FunctionLocations,
) -> gimli::Result<()> {
    let Some(program) = unit.line_program.clone() else {
        return Ok(());
    };
    let mut found: HashMap<u64, (u64, u32)> = HashMap::new();
    let mut rows = program.rows();
    while let Some((_, row)) = rows.next_row()? {
        if row.end_sequence() || !wanted.contains(&row.address()) {
            continue;
        }
        let Some(line) = row.line().and_then(|l| u32::try_from(l.get()).ok()) else {
            continue;
        };
        found
            .entry(row.address())
            .or_insert((row.file_index(), line));
    }
    for (address, (file_index, line)) in found {
        let file = files.get(dwarf, unit, file_index);
        out.set_line(address, file, line);
    }
    Ok(())
}

/// File names of one unit's line table, rendered once each.
#[derive(Default)]
struct FileNames {
    by_index: HashMap<u64, Option<Arc<str>>>,
}

impl FileNames {
    fn get(&mut self, dwarf: &Dwarf<'_>, unit: &Unit<'_>, index: u64) -> Option<Arc<str>> {
        self.by_index
            .entry(index)
            .or_insert_with(|| render_file(dwarf, unit, index).map(Arc::from))
            .clone()
    }
}

/// `comp_dir` / directory / name; a later absolute part replaces the
/// earlier ones, as `PathBuf::push` does.
fn render_file(dwarf: &Dwarf<'_>, unit: &Unit<'_>, index: u64) -> Option<String> {
    let header = unit.line_program.as_ref()?.header();
    let file = header.file(index)?;
    let mut path = PathBuf::new();
    if let Some(comp_dir) = &unit.comp_dir {
        path.push(&*comp_dir.to_string_lossy());
    }
    // Directory 0 is the compilation directory itself (DWARF 5 lists it,
    // DWARF 4 implies it): joining it again would double a relative one.
    if file.directory_index() != 0
        && let Some(dir) = file.directory(header)
        && let Ok(dir) = dwarf.attr_string(unit, dir)
    {
        path.push(&*dir.to_string_lossy());
    }
    let name = dwarf.attr_string(unit, file.path_name()).ok()?;
    path.push(&*name.to_string_lossy());
    Some(path.to_string_lossy().into_owned())
}
