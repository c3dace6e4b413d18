//! Argument capture, planned once per session: which probed functions get
//! their arguments and return value recorded (`--args`, `--args-for`), and
//! for each, how its registers map to parameters ([`ArgLayout`]), read from
//! the DWARF formal parameters and types of the function.
//!
//! The System V x86-64 ABI passes integer and pointer parameters in rdi,
//! rsi, rdx, rcx, r8, r9, in order; floating-point parameters go to xmm
//! registers and take no integer register. A struct or union by value is
//! stored as null; in C its registers are still accounted for (more than 16
//! bytes: on the stack; up to 16 bytes of integer fields only: one register
//! per eightbyte; of float fields only: xmm registers), so later parameters
//! keep their values. Any other parameter (a struct mixing integer and
//! float fields, a 128-bit integer, a member-function pointer, any class
//! by value in C++) follows rules not reproduced here, so it and every
//! later parameter are stored as null rather than as a guess. A struct
//! returned by value through memory (larger than 16 bytes) takes rdi for
//! its hidden pointer; a C++ class returned by value may too, so then every
//! slot is null. Without DWARF for a function, the six registers are stored
//! raw and rax as it is.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use gimli::{AttributeValue, EndianSlice, RunTimeEndian, UnitOffset};
use object::{Object, ObjectSection};
use rustc_hash::FxHashMap;
use scope_common::MAX_ARGS;

use super::plan::Plan;
use crate::capture::args::{ArgLayout, ArgSlot, RegValue};
use crate::symbols::dwarf::{DwarfError, section_data};
use crate::symbols::pattern::Pattern;

/// Marks the functions whose arguments are captured: every probed function
/// with `all`, else those matching one of `patterns`. Returns how many were
/// marked. A pattern that selects no probed function is an error naming it.
pub fn select(plan: &mut Plan, all: bool, patterns: &[Pattern]) -> Result<usize, String> {
    let (marked, matched) = mark(plan, all, patterns);
    if let Some(i) = matched.iter().position(|m| !m) {
        return Err(format!(
            "--args-for '{}' matches none of the probed functions (probe it with -f too)",
            patterns[i].raw
        ));
    }
    Ok(marked)
}

/// [`select`] without the error: how many functions were marked, and per
/// pattern whether it selected one (a module loaded later is planned with
/// every pattern, most of which name other modules).
pub fn mark(plan: &mut Plan, all: bool, patterns: &[Pattern]) -> (usize, Vec<bool>) {
    let mut matched = vec![false; patterns.len()];
    let mut marked = 0;
    for m in &mut plan.modules {
        let path = m.candidate.display_path.clone();
        let is_main = m.candidate.is_main;
        for f in &mut m.functions {
            for (i, p) in patterns.iter().enumerate() {
                if p.matches_module(&path, is_main) && p.matches_function(&f.symbol) {
                    matched[i] = true;
                    f.args = true;
                }
            }
            if all {
                f.args = true;
            }
            if f.args {
                marked += 1;
            }
        }
    }
    (marked, matched)
}

/// The layouts of every function marked for argument capture, from the
/// DWARF of its module. Functions DWARF does not describe are left out
/// (they get [`ArgLayout::default`]).
pub fn layouts(plan: &Plan) -> Vec<(u32, ArgLayout)> {
    let mut out = Vec::new();
    for m in &plan.modules {
        let wanted: HashMap<u64, u32> = m
            .functions
            .iter()
            .filter(|f| f.args)
            .map(|f| (f.symbol.address, f.function_id))
            .collect();
        if wanted.is_empty() {
            continue;
        }
        // The module's own DWARF, else its separate debug file (found again
        // the way the planner found it: only when --args needs it).
        let found = module_layouts(&m.candidate.open_path, &wanted).and_then(|found| {
            if !found.is_empty() || !m.has_debug_info {
                return Ok(found);
            }
            match crate::symbols::load_module(&m.candidate.open_path, &m.candidate.display_path)
                .ok()
                .and_then(|s| s.debug_file)
            {
                Some(debug) => module_layouts(&debug, &wanted),
                None => Ok(found),
            }
        });
        match found {
            Ok(found) => out.extend(found),
            Err(e) => log::debug!(
                "{}: no parameter types ({e}); arguments stored as raw registers",
                m.candidate.display_path.display()
            ),
        }
    }
    out
}

type Reader<'a> = EndianSlice<'a, RunTimeEndian>;
type Dwarf<'a> = gimli::Dwarf<Reader<'a>>;
type Unit<'a> = gimli::Unit<Reader<'a>>;

/// Bounds the typedef/qualifier/origin chains followed (a malformed file
/// could make a cycle).
const MAX_HOPS: usize = 16;

fn module_layouts(
    path: &Path,
    wanted: &HashMap<u64, u32>,
) -> Result<Vec<(u32, ArgLayout)>, Box<dyn std::error::Error>> {
    let file = std::fs::File::open(path)?;
    // SAFETY: a read-only private mapping; the planner reads the same file
    // the same way, and a concurrent truncation is the caller's risk as there.
    let map = unsafe { memmap2::Mmap::map(&file)? };
    let obj = object::File::parse(&*map)?;
    let load = |id: gimli::SectionId| -> Result<Cow<'_, [u8]>, DwarfError> {
        match obj.section_by_name(id.name()) {
            Some(s) if s.kind() != object::SectionKind::UninitializedData => section_data(&s),
            _ => Ok(Cow::Borrowed(&[])),
        }
    };
    let sections = gimli::DwarfSections::load(load)?;
    let endian = if obj.is_little_endian() {
        RunTimeEndian::Little
    } else {
        RunTimeEndian::Big
    };
    let dwarf: Dwarf<'_> = sections.borrow(|data| EndianSlice::new(data, endian));
    let mut found: FxHashMap<u32, ArgLayout> = FxHashMap::default();
    let mut headers = dwarf.units();
    while let Some(header) = headers.next()? {
        let Ok(unit) = dwarf.unit(header) else {
            continue;
        };
        if let Err(e) = unit_layouts(&dwarf, &unit, wanted, &mut found) {
            log::debug!("DWARF unit read partially for parameters: {e}");
        }
        if found.len() == wanted.len() {
            break;
        }
    }
    Ok(found.into_iter().collect())
}

/// A subprogram being read: its id, depth, return type and parameter types.
struct Sub<'a> {
    function_id: u32,
    depth: isize,
    ret: Option<AttributeValue<Reader<'a>>>,
    params: Vec<Option<AttributeValue<Reader<'a>>>>,
}

fn unit_layouts<'a>(
    dwarf: &Dwarf<'a>,
    unit: &Unit<'a>,
    wanted: &HashMap<u64, u32>,
    found: &mut FxHashMap<u32, ArgLayout>,
) -> gimli::Result<()> {
    let cplusplus = matches!(
        unit.entry(unit.root_offset())?.attr_value(gimli::DW_AT_language),
        Some(AttributeValue::Language(l)) if is_cplusplus(l)
    );
    let mut cursor = unit.entries();
    let mut open: Option<Sub<'a>> = None;
    while let Some(die) = cursor.next_dfs()? {
        let depth = die.depth();
        if let Some(sub) = &mut open {
            if depth <= sub.depth {
                let sub = open.take().expect("open subprogram");
                found.insert(sub.function_id, layout(unit, &sub, cplusplus));
            } else if depth == sub.depth + 1 && die.tag() == gimli::DW_TAG_formal_parameter {
                sub.params
                    .push(typed(unit, die.attr_value(gimli::DW_AT_type), die));
                continue;
            } else {
                continue;
            }
        }
        if die.tag() != gimli::DW_TAG_subprogram {
            continue;
        }
        let Some(low_pc) = die.attr_value(gimli::DW_AT_low_pc) else {
            continue;
        };
        let Ok(Some(address)) = dwarf.attr_address(unit, low_pc) else {
            continue;
        };
        let Some(&function_id) = wanted.get(&address) else {
            continue;
        };
        if found.contains_key(&function_id) {
            continue;
        }
        open = Some(Sub {
            function_id,
            depth,
            ret: typed(unit, die.attr_value(gimli::DW_AT_type), die),
            params: Vec::new(),
        });
    }
    if let Some(sub) = open {
        found.insert(sub.function_id, layout(unit, &sub, cplusplus));
    }
    Ok(())
}

/// A DIE's `DW_AT_type`, or that of its specification / abstract origin
/// (out-of-line definitions and concrete instances carry none of their own).
fn typed<'a>(
    unit: &Unit<'a>,
    own: Option<AttributeValue<Reader<'a>>>,
    die: &gimli::DebuggingInformationEntry<Reader<'a>>,
) -> Option<AttributeValue<Reader<'a>>> {
    if own.is_some() {
        return own;
    }
    let mut next = die
        .attr_value(gimli::DW_AT_abstract_origin)
        .or_else(|| die.attr_value(gimli::DW_AT_specification));
    for _ in 0..MAX_HOPS {
        let Some(AttributeValue::UnitRef(offset)) = next else {
            return None;
        };
        let origin = unit.entry(offset).ok()?;
        if let Some(t) = origin.attr_value(gimli::DW_AT_type) {
            return Some(t);
        }
        next = origin
            .attr_value(gimli::DW_AT_abstract_origin)
            .or_else(|| origin.attr_value(gimli::DW_AT_specification));
    }
    None
}

fn is_cplusplus(l: gimli::DwLang) -> bool {
    matches!(
        l,
        gimli::DW_LANG_C_plus_plus
            | gimli::DW_LANG_C_plus_plus_03
            | gimli::DW_LANG_C_plus_plus_11
            | gimli::DW_LANG_C_plus_plus_14
            | gimli::DW_LANG_C_plus_plus_17
            | gimli::DW_LANG_C_plus_plus_20
    )
}

/// What a type means for register assignment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// In the next integer register, read this way.
    Integer(RegValue),
    /// In an xmm register (float, double): no integer register taken.
    Float,
    /// A struct, union or class by value: its size and its DIE.
    Aggregate(u64, UnitOffset),
    /// Anything else, or a type that could not be read.
    Unknown,
}

fn layout(unit: &Unit<'_>, sub: &Sub<'_>, cplusplus: bool) -> ArgLayout {
    let mut out = ArgLayout {
        len: sub.params.len().min(MAX_ARGS) as u8,
        slots: [ArgSlot::default(); MAX_ARGS],
        ret: RegValue::Null,
        strings: 0,
        lengths: [0; MAX_ARGS],
        addrs: 0,
        ret_addr: 0,
    };
    // No DW_AT_type on the subprogram: void.
    let ret_class = sub.ret.as_ref().map(|t| classify(unit, t));
    let mut next_reg = 0usize;
    match ret_class {
        None | Some(Class::Float) => {}
        Some(Class::Integer(v)) => out.ret = v,
        Some(Class::Aggregate(size, _)) if !cplusplus && size > 16 => next_reg = 1,
        // A small C struct comes back in registers, not as a hidden pointer;
        // its value is not an integer, so ret stays null.
        Some(Class::Aggregate(..)) if !cplusplus => {}
        // A C++ class may be returned through a hidden pointer whatever its
        // size: the registers cannot be told apart, so every slot is null.
        Some(Class::Aggregate(..) | Class::Unknown) => return out,
    }
    for (i, t) in sub.params.iter().enumerate().take(MAX_ARGS) {
        let class = t.as_ref().map_or(Class::Unknown, |t| classify(unit, t));
        match class {
            Class::Integer(value) if next_reg < MAX_ARGS => {
                if t.as_ref().is_some_and(|t| char_pointer(unit, t)) {
                    out.strings |= 1 << i;
                }
                out.slots[i] = ArgSlot {
                    reg: next_reg as u8,
                    value,
                };
                next_reg += 1;
            }
            // Past rdi..r9 the parameter is on the stack.
            Class::Integer(_) => next_reg += 1,
            Class::Float => {}
            // C: more than 16 bytes go on the stack, no register taken.
            Class::Aggregate(size, _) if !cplusplus && size > 16 => {}
            Class::Aggregate(size, offset) if !cplusplus => {
                match fields(unit, offset, 0) {
                    Some(Fields::Integer) => {
                        let regs = size.div_ceil(8) as usize;
                        // All in registers, or all on the stack.
                        if next_reg + regs <= MAX_ARGS {
                            next_reg += regs;
                        }
                    }
                    Some(Fields::Float) => {}
                    None => break,
                }
            }
            // Later registers cannot be told without the full ABI
            // classification: this and every later slot stay null.
            Class::Aggregate(..) | Class::Unknown => break,
        }
    }
    out
}

/// The fields of a small aggregate, when they are all of one register class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fields {
    Integer,
    Float,
}

/// Whether every field of the struct or union at `offset` (nested
/// aggregates and arrays included) is an integer, or every one a float;
/// `None` for a mix, no fields, or anything unreadable.
fn fields(unit: &Unit<'_>, offset: UnitOffset, depth: usize) -> Option<Fields> {
    if depth > 4 {
        return None;
    }
    let mut tree = unit.entries_tree(Some(offset)).ok()?;
    let root = tree.root().ok()?;
    let mut children = root.children();
    let mut kind: Option<Fields> = None;
    while let Some(child) = children.next().ok()? {
        let die = child.entry();
        if die.tag() != gimli::DW_TAG_member {
            continue;
        }
        // A bit-field is an integer; DW_AT_data_bit_offset etc. do not matter
        // for the class.
        let mut t = die.attr_value(gimli::DW_AT_type)?;
        // Arrays: the element type decides.
        for _ in 0..MAX_HOPS {
            let AttributeValue::UnitRef(o) = t else {
                return None;
            };
            let d = unit.entry(o).ok()?;
            if d.tag() != gimli::DW_TAG_array_type {
                break;
            }
            t = d.attr_value(gimli::DW_AT_type)?;
        }
        let this = match classify(unit, &t) {
            Class::Integer(_) => Fields::Integer,
            Class::Float => Fields::Float,
            Class::Aggregate(_, o) => fields(unit, o, depth + 1)?,
            Class::Unknown => return None,
        };
        if kind.is_some_and(|k| k != this) {
            return None;
        }
        kind = Some(this);
    }
    kind
}

/// Whether `t` is a pointer to a 1-byte character type (`char *`, `const
/// char *`, `unsigned char *`, through typedefs and qualifiers): a
/// parameter `--arg-strings` reads as a NUL-terminated string.
fn char_pointer(unit: &Unit<'_>, t: &AttributeValue<Reader<'_>>) -> bool {
    let Some(pointer) = strip(unit, t) else {
        return false;
    };
    let Ok(die) = unit.entry(pointer) else {
        return false;
    };
    if die.tag() != gimli::DW_TAG_pointer_type {
        return false;
    }
    let Some(pointee) = die
        .attr_value(gimli::DW_AT_type)
        .and_then(|t| strip(unit, &t))
    else {
        return false;
    };
    let Ok(die) = unit.entry(pointee) else {
        return false;
    };
    die.tag() == gimli::DW_TAG_base_type
        && matches!(
            die.attr_value(gimli::DW_AT_byte_size)
                .and_then(|v| v.udata_value()),
            Some(1)
        )
        && matches!(
            die.attr_value(gimli::DW_AT_encoding),
            Some(AttributeValue::Encoding(
                gimli::DW_ATE_signed_char | gimli::DW_ATE_unsigned_char
            ))
        )
}

/// The type `t` names after typedefs and qualifiers.
fn strip(unit: &Unit<'_>, t: &AttributeValue<Reader<'_>>) -> Option<UnitOffset> {
    let AttributeValue::UnitRef(mut offset) = *t else {
        return None;
    };
    for _ in 0..MAX_HOPS {
        let die = unit.entry(offset).ok()?;
        match die.tag() {
            gimli::DW_TAG_typedef
            | gimli::DW_TAG_const_type
            | gimli::DW_TAG_volatile_type
            | gimli::DW_TAG_restrict_type
            | gimli::DW_TAG_atomic_type => match die.attr_value(gimli::DW_AT_type) {
                Some(AttributeValue::UnitRef(o)) => offset = o,
                _ => return None,
            },
            _ => return Some(offset),
        }
    }
    None
}

fn classify(unit: &Unit<'_>, t: &AttributeValue<Reader<'_>>) -> Class {
    let mut offset: UnitOffset = match t {
        AttributeValue::UnitRef(o) => *o,
        _ => return Class::Unknown,
    };
    for _ in 0..MAX_HOPS {
        let Ok(die) = unit.entry(offset) else {
            return Class::Unknown;
        };
        let size = match die.attr_value(gimli::DW_AT_byte_size) {
            Some(v) => v.udata_value(),
            None => None,
        };
        match die.tag() {
            gimli::DW_TAG_typedef
            | gimli::DW_TAG_const_type
            | gimli::DW_TAG_volatile_type
            | gimli::DW_TAG_restrict_type
            | gimli::DW_TAG_atomic_type => match die.attr_value(gimli::DW_AT_type) {
                Some(AttributeValue::UnitRef(o)) => offset = o,
                _ => return Class::Unknown,
            },
            gimli::DW_TAG_pointer_type
            | gimli::DW_TAG_reference_type
            | gimli::DW_TAG_rvalue_reference_type => return Class::Integer(RegValue::Raw),
            gimli::DW_TAG_base_type => {
                let Some(AttributeValue::Encoding(enc)) = die.attr_value(gimli::DW_AT_encoding)
                else {
                    return Class::Unknown;
                };
                let size = size.unwrap_or(0);
                return match enc {
                    gimli::DW_ATE_float | gimli::DW_ATE_decimal_float if size <= 8 => Class::Float,
                    _ if size == 0 || size > 8 => Class::Unknown,
                    gimli::DW_ATE_signed | gimli::DW_ATE_signed_char => {
                        Class::Integer(RegValue::Signed((size * 8) as u8))
                    }
                    gimli::DW_ATE_unsigned
                    | gimli::DW_ATE_unsigned_char
                    | gimli::DW_ATE_boolean
                    | gimli::DW_ATE_UTF => Class::Integer(RegValue::Unsigned((size * 8) as u8)),
                    _ => Class::Unknown,
                };
            }
            gimli::DW_TAG_enumeration_type => {
                // The underlying type when given (it has the signedness).
                if let Some(AttributeValue::UnitRef(o)) = die.attr_value(gimli::DW_AT_type) {
                    offset = o;
                    continue;
                }
                return match size {
                    Some(s) if (1..=8).contains(&s) => {
                        Class::Integer(RegValue::Unsigned((s * 8) as u8))
                    }
                    _ => Class::Unknown,
                };
            }
            gimli::DW_TAG_structure_type | gimli::DW_TAG_union_type | gimli::DW_TAG_class_type => {
                return size.map_or(Class::Unknown, |s| Class::Aggregate(s, offset));
            }
            _ => return Class::Unknown,
        }
    }
    Class::Unknown
}
