//! speedscope's file format (https://www.speedscope.app/file-format-schema.json):
//! one evented profile per thread (`"type": "evented"`, unit nanoseconds),
//! whose events open (`"O"`) and close (`"C"`) frames at times counted in
//! ns from the session start; the frames (one per function: name, file,
//! line) are shared by the profiles. Events stream out as calls open and
//! close; the frame table, bounded by the functions, comes last.

use std::io::Write;

use anyhow::Result;
use arrow_array::RecordBatch;
use rustc_hash::FxHashMap;

use super::chrome::json_str;
use super::columns::{CallColumns, CallRow};
use super::stack::{CallSink, Frame, Walked, walk};
use super::{ExportMeta, function_name, thread_name, write_error};

/// Writes the speedscope file of `batches` to `out`.
pub(super) fn write(
    batches: &mut dyn Iterator<Item = Result<RecordBatch>>,
    meta: &ExportMeta,
    out: &mut dyn Write,
) -> Result<Walked> {
    write!(
        out,
        "{{\"$schema\":\"https://www.speedscope.app/file-format-schema.json\",\
         \"exporter\":\"scope\",\"name\":{},\"activeProfileIndex\":0,\"profiles\":[",
        json_str(&format!("{} ({})", meta.command, meta.session_id))
    )
    .map_err(write_error)?;
    let mut sink = SpeedscopeSink {
        meta,
        out,
        profiles: 0,
        first_event: true,
        start: None,
        end: 0,
        frames: FxHashMap::default(),
        functions: Vec::new(),
    };
    let walked = walk(batches, meta, &mut sink)?;
    let SpeedscopeSink { out, functions, .. } = sink;
    out.write_all(b"],\"shared\":{\"frames\":[")
        .map_err(write_error)?;
    for (k, function_id) in functions.iter().enumerate() {
        let sep = if k > 0 { ",\n" } else { "" };
        write!(
            out,
            "{sep}{{\"name\":{}",
            json_str(&function_name(meta, *function_id))
        )
        .map_err(write_error)?;
        if let Some(f) = meta.functions.get(function_id) {
            if let Some(file) = &f.file {
                write!(out, ",\"file\":{}", json_str(file)).map_err(write_error)?;
            }
            if let Some(line) = f.line {
                write!(out, ",\"line\":{line}").map_err(write_error)?;
            }
        }
        out.write_all(b"}").map_err(write_error)?;
    }
    out.write_all(b"]}}\n").map_err(write_error)?;
    Ok(walked)
}

struct SpeedscopeSink<'a, 'm> {
    meta: &'a ExportMeta<'m>,
    out: &'a mut dyn Write,
    /// Profiles (threads) started.
    profiles: u64,
    /// No event written yet in this profile.
    first_event: bool,
    /// The profile's first and last event times, ns from the session start.
    start: Option<i64>,
    end: i64,
    /// Frame index of each function seen.
    frames: FxHashMap<u32, usize>,
    /// The functions in frame index order.
    functions: Vec<u32>,
}

impl SpeedscopeSink<'_, '_> {
    fn event(&mut self, kind: char, function_id: u32, at_ns: i64) -> Result<()> {
        let next = self.functions.len();
        let frame = *self.frames.entry(function_id).or_insert(next);
        if frame == next {
            self.functions.push(function_id);
        }
        let at = at_ns - self.meta.start_ns;
        self.start.get_or_insert(at);
        self.end = self.end.max(at);
        let sep = if self.first_event { "" } else { "," };
        self.first_event = false;
        write!(
            self.out,
            "{sep}{{\"type\":\"{kind}\",\"frame\":{frame},\"at\":{at}}}"
        )
        .map_err(write_error)
    }
}

impl CallSink for SpeedscopeSink<'_, '_> {
    fn thread_start(&mut self, pid: u32, tid: u32) -> Result<()> {
        let sep = if self.profiles > 0 { ",\n" } else { "" };
        self.profiles += 1;
        let name = format!("{} (pid {pid}, tid {tid})", thread_name(self.meta, tid));
        writeln!(
            self.out,
            "{sep}{{\"type\":\"evented\",\"name\":{},\"unit\":\"nanoseconds\",\"events\":[",
            json_str(&name)
        )
        .map_err(write_error)?;
        self.first_event = true;
        self.start = None;
        self.end = i64::MIN;
        Ok(())
    }

    fn open(
        &mut self,
        frame: &Frame,
        _parent: Option<&Frame>,
        _columns: &CallColumns,
        _i: usize,
        _row: &CallRow,
    ) -> Result<()> {
        self.event('O', frame.function_id, frame.start_ns)
    }

    fn close(&mut self, frame: &Frame) -> Result<()> {
        self.event('C', frame.function_id, frame.end_ns)
    }

    fn thread_end(&mut self) -> Result<()> {
        let start = self.start.unwrap_or(0);
        write!(
            self.out,
            "\n],\"startValue\":{start},\"endValue\":{}}}",
            self.end.max(start)
        )
        .map_err(write_error)
    }
}
