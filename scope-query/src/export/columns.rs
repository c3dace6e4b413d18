//! The columns of a `calls` batch that the exports read, looked up by name.
//!
//! Required: tid (UInt32), function_id (UInt32), depth (Int32), start_ns
//! (Int64, Unix epoch ns), duration_ns (Int64, null when unknown). Optional:
//! pid (UInt32; else the session's pid), flags (UInt8; else 0), args
//! (List<Int64>), ret (Int64), arg_strings (List<Utf8>, or of Utf8View or
//! LargeUtf8 as DataFusion may read it). Other columns
//! (call_id, parent_call_id, self_ns...) are not needed: nesting and self
//! time come from depth and the intervals (see the [module docs](super)).

use anyhow::{Result, anyhow, bail};
use arrow_array::{
    Array, Int32Array, Int64Array, LargeStringArray, ListArray, RecordBatch, StringArray,
    StringViewArray, UInt8Array, UInt32Array,
};

use super::FunctionInfo;

/// The `flags` bits of a call, named as `scope-agent`'s `capture::flags`
/// names them (lower case), for the annotations.
const FLAG_NAMES: [(u8, &str); 7] = [
    (1, "entry_missing"),
    (2, "return_missing"),
    (4, "unwound"),
    (8, "no_return_probe"),
    (16, "loss_while_open"),
    (32, "inlined"),
    (64, "window_closed"),
];

/// One row's scalar fields.
#[derive(Clone, Copy, Debug)]
pub(super) struct CallRow {
    pub pid: u32,
    pub tid: u32,
    pub function_id: u32,
    pub depth: i32,
    pub start_ns: i64,
    /// None when unknown (null).
    pub duration_ns: Option<i64>,
}

/// A captured argument or return value of a call, as the formats annotate it.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Annotation {
    /// The parameter's name (`arg<i>` when unnamed), `ret` or `flags`.
    pub name: String,
    pub value: AnnotationValue,
}

/// The value of an [`Annotation`].
#[derive(Clone, Debug, PartialEq)]
pub(super) enum AnnotationValue {
    Int(i64),
    Str(String),
}

/// A list column's offsets and values.
struct ListColumn<'a, T: ?Sized> {
    list: &'a ListArray,
    values: &'a T,
}

/// The columns of one batch.
pub(super) struct CallColumns<'a> {
    pid: Option<&'a UInt32Array>,
    tid: &'a UInt32Array,
    function_id: &'a UInt32Array,
    depth: &'a Int32Array,
    start_ns: &'a Int64Array,
    duration_ns: &'a Int64Array,
    flags: Option<&'a UInt8Array>,
    args: Option<ListColumn<'a, Int64Array>>,
    ret: Option<&'a Int64Array>,
    arg_strings: Option<ListColumn<'a, dyn StrValues + 'a>>,
    /// `weight_ns`: what the aggregated formats sum instead of the
    /// intervals (`export --offcpu` selects `offcpu_ns AS weight_ns`).
    weight: Option<&'a Int64Array>,
    default_pid: u32,
}

impl<'a> CallColumns<'a> {
    /// Looks the columns up in `batch`; an error names a required column
    /// that is missing, or any column of the wrong type.
    pub fn new(batch: &'a RecordBatch, default_pid: u32) -> Result<Self> {
        Ok(CallColumns {
            pid: optional(batch, "pid", "UInt32")?,
            tid: required(batch, "tid", "UInt32")?,
            function_id: required(batch, "function_id", "UInt32")?,
            depth: required(batch, "depth", "Int32")?,
            start_ns: required(batch, "start_ns", "Int64")?,
            duration_ns: required(batch, "duration_ns", "Int64")?,
            flags: optional(batch, "flags", "UInt8")?,
            args: list(batch, "args", "List<Int64>")?,
            ret: optional(batch, "ret", "Int64")?,
            arg_strings: string_list(batch, "arg_strings")?,
            weight: optional(batch, "weight_ns", "Int64")?,
            default_pid,
        })
    }

    /// Row `i`'s weight (`weight_ns`; a null counts 0); `None` when the
    /// batch has no weight column.
    pub fn weight(&self, i: usize) -> Option<i64> {
        self.weight
            .map(|w| if w.is_valid(i) { w.value(i).max(0) } else { 0 })
    }

    /// Rows in the batch.
    pub fn len(&self) -> usize {
        self.tid.len()
    }

    /// Row `i`'s scalar fields.
    pub fn row(&self, i: usize) -> CallRow {
        CallRow {
            pid: self.pid.map_or(self.default_pid, |c| c.value(i)),
            tid: self.tid.value(i),
            function_id: self.function_id.value(i),
            depth: self.depth.value(i),
            start_ns: self.start_ns.value(i),
            duration_ns: self
                .duration_ns
                .is_valid(i)
                .then(|| self.duration_ns.value(i)),
        }
    }

    /// Row `i`'s captured arguments (a string where `arg_strings` has one,
    /// else the integer), its return value and its flags when non-zero, in
    /// that order; empty when nothing was captured and the flags are 0.
    pub fn annotations(&self, i: usize, function: Option<&FunctionInfo>) -> Vec<Annotation> {
        let mut out = Vec::new();
        let ints = self.args.as_ref().and_then(|c| c.range(i));
        let strs = self.arg_strings.as_ref().and_then(|c| c.range(i));
        let n = ints
            .clone()
            .map_or(0, |r| r.len())
            .max(strs.clone().map_or(0, |r| r.len()));
        for k in 0..n {
            let string = strs.clone().and_then(|r| {
                let j = r.start + k;
                let values = self.arg_strings.as_ref()?.values;
                if j < r.end {
                    values.str_at(j).map(str::to_owned)
                } else {
                    None
                }
            });
            let value = match string {
                Some(s) => Some(AnnotationValue::Str(s)),
                None => ints.clone().and_then(|r| {
                    let j = r.start + k;
                    let values = self.args.as_ref()?.values;
                    (j < r.end && values.is_valid(j)).then(|| AnnotationValue::Int(values.value(j)))
                }),
            };
            if let Some(value) = value {
                let name = function
                    .and_then(|f| f.param_names.get(k))
                    .filter(|n| !n.is_empty())
                    .cloned()
                    .unwrap_or_else(|| format!("arg{k}"));
                out.push(Annotation { name, value });
            }
        }
        if let Some(ret) = self.ret.filter(|c| c.is_valid(i)) {
            out.push(Annotation {
                name: "ret".to_owned(),
                value: AnnotationValue::Int(ret.value(i)),
            });
        }
        let flags = self.flags.map_or(0, |c| c.value(i));
        if flags != 0 {
            out.push(Annotation {
                name: "flags".to_owned(),
                value: AnnotationValue::Str(flag_names(flags)),
            });
        }
        out
    }
}

impl<T: ?Sized> ListColumn<'_, T> {
    /// The range of row `i`'s elements in `values`, None when the list is null.
    fn range(&self, i: usize) -> Option<std::ops::Range<usize>> {
        if self.list.is_null(i) {
            return None;
        }
        let offsets = self.list.value_offsets();
        Some(offsets[i] as usize..offsets[i + 1] as usize)
    }
}

/// `return_missing|loss_while_open` for the bits of `flags` (`bit<n>` for
/// an unknown one).
fn flag_names(flags: u8) -> String {
    let mut names: Vec<String> = FLAG_NAMES
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, name)| (*name).to_owned())
        .collect();
    if flags & 0x80 != 0 {
        names.push("bit7".to_owned());
    }
    names.join("|")
}

/// The column `name` of type `T`; an error when missing or of another type.
fn required<'a, T: Array + 'static>(
    batch: &'a RecordBatch,
    name: &str,
    type_name: &str,
) -> Result<&'a T> {
    optional(batch, name, type_name)?
        .ok_or_else(|| anyhow!("the calls batch has no column `{name}` ({type_name})"))
}

/// The column `name` of type `T` if there is one; an error when it has
/// another type.
fn optional<'a, T: Array + 'static>(
    batch: &'a RecordBatch,
    name: &str,
    type_name: &str,
) -> Result<Option<&'a T>> {
    let Some(column) = batch.column_by_name(name) else {
        return Ok(None);
    };
    column
        .as_any()
        .downcast_ref::<T>()
        .map(Some)
        .ok_or_else(|| {
            anyhow!(
                "column `{name}` of the calls batch is {}, expected {type_name}",
                column.data_type()
            )
        })
}

/// The list column `name` whose elements are `T`, if there is one.
fn list<'a, T: Array + 'static>(
    batch: &'a RecordBatch,
    name: &str,
    type_name: &str,
) -> Result<Option<ListColumn<'a, T>>> {
    let Some(list) = optional::<ListArray>(batch, name, type_name)? else {
        return Ok(None);
    };
    let values = list.values().as_any().downcast_ref::<T>().ok_or_else(|| {
        anyhow!(
            "column `{name}` of the calls batch is {}, expected {type_name}",
            list.data_type()
        )
    })?;
    Ok(Some(ListColumn { list, values }))
}

/// The elements of a list of strings, whichever string type they have.
trait StrValues {
    /// Element `j`, None when null.
    fn str_at(&self, j: usize) -> Option<&str>;
}

impl StrValues for StringArray {
    fn str_at(&self, j: usize) -> Option<&str> {
        self.is_valid(j).then(|| self.value(j))
    }
}

impl StrValues for StringViewArray {
    fn str_at(&self, j: usize) -> Option<&str> {
        self.is_valid(j).then(|| self.value(j))
    }
}

impl StrValues for LargeStringArray {
    fn str_at(&self, j: usize) -> Option<&str> {
        self.is_valid(j).then(|| self.value(j))
    }
}

/// The list column `name` whose elements are strings (Utf8, Utf8View or
/// LargeUtf8), if there is one.
fn string_list<'a>(
    batch: &'a RecordBatch,
    name: &str,
) -> Result<Option<ListColumn<'a, dyn StrValues + 'a>>> {
    let type_name = "List<Utf8>";
    let Some(list) = optional::<ListArray>(batch, name, type_name)? else {
        return Ok(None);
    };
    let any = list.values().as_any();
    let values: &dyn StrValues = if let Some(v) = any.downcast_ref::<StringArray>() {
        v
    } else if let Some(v) = any.downcast_ref::<StringViewArray>() {
        v
    } else if let Some(v) = any.downcast_ref::<LargeStringArray>() {
        v
    } else {
        bail!(
            "column `{name}` of the calls batch is {}, expected {type_name}",
            list.data_type()
        )
    };
    Ok(Some(ListColumn { list, values }))
}
