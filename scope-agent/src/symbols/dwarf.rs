//! DWARF: where each function is defined. One pass over the compile units
//! builds a map from a function's entry address (`DW_AT_low_pc`, or each
//! range start) to its source file and line; symbols are joined to it by
//! address, so no lookup ever scans the DWARF again.
//!
//! The line is `DW_AT_decl_line` (of the subprogram, or of the declaration
//! or abstract instance it points to); without one, the line-table row at
//! the entry address. DWARF 4 and 5, and compressed sections (zlib, zstd),
//! are handled by `gimli` and `object`.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use gimli::{AttributeValue, EndianSlice, RunTimeEndian, UnitOffset};
use object::{Object, ObjectSection};

/// Where a function is defined.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceLocation {
    /// `comp_dir` joined with the file's directory and name.
    pub file: Option<Arc<str>>,
    pub line: Option<u32>,
}

/// Entry address → source location, for every function DWARF describes.
#[derive(Debug, Clone, Default)]
pub struct FunctionLocations {
    by_address: HashMap<u64, SourceLocation>,
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
        if adds_line || adds_file {
            *slot = location;
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DwarfError {
    #[error("cannot read DWARF section: {0}")]
    Section(#[from] object::Error),
    #[error("malformed DWARF: {0}")]
    Parse(#[from] gimli::Error),
}

type Reader<'a> = EndianSlice<'a, RunTimeEndian>;
type Dwarf<'a> = gimli::Dwarf<Reader<'a>>;
type Unit<'a> = gimli::Unit<Reader<'a>>;

/// How many `DW_AT_specification` / `DW_AT_abstract_origin` links to follow
/// looking for a declaration line; bounds a malicious cycle.
const MAX_ORIGIN_HOPS: usize = 4;

/// Reads the function locations of `file`. A compile unit that fails to
/// parse is skipped; an error is returned only when nothing can be read.
pub(super) fn function_locations(file: &object::File<'_>) -> Result<FunctionLocations, DwarfError> {
    let load = |id: gimli::SectionId| -> Result<Cow<'_, [u8]>, object::Error> {
        match file.section_by_name(id.name()) {
            Some(section) if section.kind() != object::SectionKind::UninitializedData => {
                section.uncompressed_data()
            }
            _ => Ok(Cow::Borrowed(&[])),
        }
    };
    let sections = gimli::DwarfSections::load(load)?;
    let endian = if file.is_little_endian() {
        RunTimeEndian::Little
    } else {
        RunTimeEndian::Big
    };
    let dwarf: Dwarf<'_> = sections.borrow(|data| EndianSlice::new(data, endian));

    let mut out = FunctionLocations::default();
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
        if let Err(e) = read_unit(&dwarf, &unit, &mut out) {
            log::debug!("DWARF unit read partially: {e}");
        }
    }
    Ok(out)
}

/// Adds the subprograms of one unit to `out`.
fn read_unit(dwarf: &Dwarf<'_>, unit: &Unit<'_>, out: &mut FunctionLocations) -> gimli::Result<()> {
    let mut files = FileNames::default();
    let mut without_line: HashSet<u64> = HashSet::new();
    let mut attrs = Vec::new();
    let mut entries = unit.entries_raw(None)?;
    while !entries.is_empty() {
        let Some(abbrev) = entries.read_abbreviation()? else {
            continue;
        };
        if abbrev.tag() != gimli::DW_TAG_subprogram {
            entries.skip_attributes(abbrev.attributes())?;
            continue;
        }
        entries.read_attributes(abbrev.attributes(), &mut attrs)?;
        let addresses = entry_addresses(dwarf, unit, &attrs);
        if addresses.is_empty() {
            // A declaration or an abstract (inlined-only) instance.
            continue;
        }
        let (file_index, line) = declaration(unit, &attrs);
        let file = file_index.and_then(|i| files.get(dwarf, unit, i));
        for address in addresses {
            if line.is_none() {
                without_line.insert(address);
            }
            out.insert(
                address,
                SourceLocation {
                    file: file.clone(),
                    line,
                },
            );
        }
    }
    if !without_line.is_empty() {
        lines_at(dwarf, unit, &without_line, &mut files, out)?;
    }
    Ok(())
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
        out.insert(
            address,
            SourceLocation {
                file,
                line: Some(line),
            },
        );
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
