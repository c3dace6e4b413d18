//! pprof's `profile.proto` (github.com/google/pprof, proto/profile.proto),
//! gzip-compressed, as `go tool pprof` reads it.
//!
//! One sample per distinct stack path, with two values: `calls/count`, the
//! calls whose path it is, and `wall/nanoseconds` (the default), their self
//! time. pprof sums samples up the stacks, so a function's flat wall time
//! is its self time and its cum time its total (inclusive) time; flat calls
//! are its calls. One location per function, with the function's source
//! file and line, and one mapping per module (marked as symbolized, so
//! pprof does not look for the binaries).

use std::io::Write;

use anyhow::{Context, Result};
use arrow_array::RecordBatch;
use flate2::Compression;
use flate2::write::GzEncoder;
use prost::Message;
use rustc_hash::FxHashMap;

use super::paths::Paths;
use super::stack::Walked;
use super::{ExportMeta, function_name};

/// `perftools.profiles.Profile`, the fields scope writes.
#[derive(Clone, PartialEq, Message)]
struct Profile {
    #[prost(message, repeated, tag = "1")]
    sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    sample: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    mapping: Vec<Mapping>,
    #[prost(message, repeated, tag = "4")]
    location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    function: Vec<Function>,
    #[prost(string, repeated, tag = "6")]
    string_table: Vec<String>,
    #[prost(int64, tag = "9")]
    time_nanos: i64,
    #[prost(int64, tag = "10")]
    duration_nanos: i64,
    #[prost(message, optional, tag = "11")]
    period_type: Option<ValueType>,
    #[prost(int64, tag = "12")]
    period: i64,
    #[prost(int64, repeated, tag = "13")]
    comment: Vec<i64>,
    #[prost(int64, tag = "14")]
    default_sample_type: i64,
}

/// `perftools.profiles.ValueType`: string table indexes.
#[derive(Clone, PartialEq, Message)]
struct ValueType {
    #[prost(int64, tag = "1")]
    r#type: i64,
    #[prost(int64, tag = "2")]
    unit: i64,
}

/// `perftools.profiles.Sample`: locations leaf first.
#[derive(Clone, PartialEq, Message)]
struct Sample {
    #[prost(uint64, repeated, tag = "1")]
    location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    value: Vec<i64>,
}

/// `perftools.profiles.Mapping`.
#[derive(Clone, PartialEq, Message)]
struct Mapping {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(int64, tag = "5")]
    filename: i64,
    #[prost(bool, tag = "7")]
    has_functions: bool,
    #[prost(bool, tag = "8")]
    has_filenames: bool,
    #[prost(bool, tag = "9")]
    has_line_numbers: bool,
}

/// `perftools.profiles.Location`.
#[derive(Clone, PartialEq, Message)]
struct Location {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(uint64, tag = "2")]
    mapping_id: u64,
    #[prost(message, repeated, tag = "4")]
    line: Vec<Line>,
}

/// `perftools.profiles.Line`.
#[derive(Clone, PartialEq, Message)]
struct Line {
    #[prost(uint64, tag = "1")]
    function_id: u64,
    #[prost(int64, tag = "2")]
    line: i64,
}

/// `perftools.profiles.Function`.
#[derive(Clone, PartialEq, Message)]
struct Function {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(int64, tag = "2")]
    name: i64,
    #[prost(int64, tag = "3")]
    system_name: i64,
    #[prost(int64, tag = "4")]
    filename: i64,
    #[prost(int64, tag = "5")]
    start_line: i64,
}

/// The string table: index 0 is "".
#[derive(Default)]
struct Strings {
    table: Vec<String>,
    index: FxHashMap<String, i64>,
}

impl Strings {
    fn new() -> Self {
        let mut s = Strings::default();
        s.get("");
        s
    }

    fn get(&mut self, s: &str) -> i64 {
        if let Some(i) = self.index.get(s) {
            return *i;
        }
        let i = self.table.len() as i64;
        self.table.push(s.to_owned());
        self.index.insert(s.to_owned(), i);
        i
    }
}

/// Writes the pprof profile of `batches` to `out`.
pub(super) fn write(
    batches: &mut dyn Iterator<Item = Result<RecordBatch>>,
    meta: &ExportMeta,
    out: &mut dyn Write,
) -> Result<Walked> {
    let (paths, walked) = Paths::collect(batches, meta)?;
    let mut strings = Strings::new();
    let calls = ValueType {
        r#type: strings.get("calls"),
        unit: strings.get("count"),
    };
    let wall = ValueType {
        r#type: strings.get("wall"),
        unit: strings.get("nanoseconds"),
    };
    let mut profile = Profile {
        sample_type: vec![calls, wall.clone()],
        time_nanos: meta.start_ns,
        duration_nanos: (meta.end_ns - meta.start_ns).max(0),
        period_type: Some(wall.clone()),
        period: 1,
        default_sample_type: wall.r#type,
        ..Profile::default()
    };
    profile.comment.push(strings.get(&format!(
        "scope session {} of {}: wall is self time, calls the calls of the leaf",
        meta.session_id, meta.command
    )));
    // One function and one location per function id (same id), one
    // mapping per module.
    let mut locations: FxHashMap<u32, u64> = FxHashMap::default();
    let mut mappings: FxHashMap<String, u64> = FxHashMap::default();
    let mut location_of = |function_id: u32, profile: &mut Profile, strings: &mut Strings| {
        if let Some(id) = locations.get(&function_id) {
            return *id;
        }
        let id = locations.len() as u64 + 1;
        locations.insert(function_id, id);
        let info = meta.functions.get(&function_id);
        let name = strings.get(&function_name(meta, function_id));
        let module = info.map_or("", |f| f.module.as_str());
        let mapping_id = match mappings.get(module) {
            Some(m) => *m,
            None => {
                let m = mappings.len() as u64 + 1;
                mappings.insert(module.to_owned(), m);
                profile.mapping.push(Mapping {
                    id: m,
                    filename: strings.get(module),
                    has_functions: true,
                    has_filenames: true,
                    has_line_numbers: true,
                });
                m
            }
        };
        let line = info.and_then(|f| f.line).map_or(0, i64::from);
        profile.function.push(Function {
            id,
            name,
            system_name: name,
            filename: strings.get(info.and_then(|f| f.file.as_deref()).unwrap_or("")),
            start_line: line,
        });
        profile.location.push(Location {
            id,
            mapping_id,
            line: vec![Line {
                function_id: id,
                line,
            }],
        });
        id
    };
    let mut stack = Vec::new();
    for (i, node) in paths.nodes.iter().enumerate() {
        if node.calls == 0 && node.self_ns == 0 {
            continue;
        }
        paths.stack(i as u32, &mut stack);
        let location_id = stack
            .iter()
            .rev()
            .map(|f| location_of(*f, &mut profile, &mut strings))
            .collect();
        profile.sample.push(Sample {
            location_id,
            value: vec![node.calls as i64, node.self_ns as i64],
        });
    }
    profile.string_table = strings.table;
    let mut gz = GzEncoder::new(out, Compression::default());
    gz.write_all(&profile.encode_to_vec())
        .and_then(|()| gz.try_finish())
        .context("cannot write the pprof profile")?;
    Ok(walked)
}
