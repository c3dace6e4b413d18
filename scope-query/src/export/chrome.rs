//! Chrome trace event JSON (the "Trace Event Format"):
//! `{"traceEvents": [...], "displayTimeUnit": "ns", "otherData": {...}}`.
//!
//! Each call is a complete event (`"ph": "X"`) with `ts` and `dur` in µs,
//! written with three decimals so no ns is lost, `ts` counted from the
//! session start (`otherData.start_ns` is that origin, Unix epoch ns: an
//! absolute time in µs would not fit a double's precision in ns); `pid`,
//! `tid`, `name` (the function, no module), `cat` `call`, and `args` with
//! the captured arguments by parameter name, `ret` and `flags` when
//! non-zero. An integer that a double cannot hold exactly (beyond ±2^53)
//! is written as a string. Metadata events (`"ph": "M"`) name the process
//! (the command) and each thread. Events are written as calls close, so
//! they are not in start order; viewers sort them.
//!
//! Viewers rebuild the nesting from the intervals, so a child whose
//! interval equals its parent's (same start and end, possible only when a
//! child was cut to its parent's end) may be shown as the parent; the
//! perfetto and speedscope exports, whose events carry the nesting, do not
//! have that ambiguity.

use std::io::Write;

use anyhow::Result;
use arrow_array::RecordBatch;
use rustc_hash::FxHashSet;

use super::columns::{Annotation, AnnotationValue, CallColumns, CallRow};
use super::stack::{CallSink, Frame, Walked, walk};
use super::{ExportMeta, function_name, thread_name, write_error};

/// Integers up to this magnitude are exact in a double (JSON readers in
/// JavaScript parse numbers into doubles).
const MAX_EXACT_DOUBLE: i64 = 1 << 53;

/// Writes the Chrome trace of `batches` to `out`.
pub(super) fn write(
    batches: &mut dyn Iterator<Item = Result<RecordBatch>>,
    meta: &ExportMeta,
    out: &mut dyn Write,
) -> Result<Walked> {
    out.write_all(b"{\"traceEvents\":[").map_err(write_error)?;
    let mut sink = ChromeSink {
        meta,
        out,
        first: true,
        pid: 0,
        tid: 0,
        pids: FxHashSet::default(),
        args: Vec::new(),
    };
    let walked = walk(batches, meta, &mut sink)?;
    let out = sink.out;
    writeln!(
        out,
        "],\"displayTimeUnit\":\"ns\",\"otherData\":{{\"exporter\":\"scope\",\"session_id\":{},\
         \"command\":{},\"start_ns\":\"{}\",\"end_ns\":\"{}\",\"calls\":{},\"open_calls\":{}}}}}",
        json_str(meta.session_id),
        json_str(meta.command),
        meta.start_ns,
        meta.end_ns,
        walked.calls,
        walked.open_calls
    )
    .map_err(write_error)?;
    Ok(walked)
}

struct ChromeSink<'a, 'm> {
    meta: &'a ExportMeta<'m>,
    out: &'a mut dyn Write,
    /// No event written yet (no comma needed).
    first: bool,
    pid: u32,
    tid: u32,
    /// Processes whose name was written.
    pids: FxHashSet<u32>,
    /// The open calls' annotations, written when they close.
    args: Vec<Vec<Annotation>>,
}

impl ChromeSink<'_, '_> {
    /// Starts an event: the comma before all but the first.
    fn separator(&mut self) -> Result<()> {
        if !self.first {
            self.out.write_all(b",\n").map_err(write_error)?;
        }
        self.first = false;
        Ok(())
    }
}

impl CallSink for ChromeSink<'_, '_> {
    fn thread_start(&mut self, pid: u32, tid: u32) -> Result<()> {
        self.pid = pid;
        self.tid = tid;
        if self.pids.insert(pid) {
            self.separator()?;
            write!(
                self.out,
                "{{\"ph\":\"M\",\"pid\":{pid},\"tid\":{pid},\"name\":\"process_name\",\"args\":{{\"name\":{}}}}}",
                json_str(self.meta.command)
            )
            .map_err(write_error)?;
        }
        self.separator()?;
        write!(
            self.out,
            "{{\"ph\":\"M\",\"pid\":{pid},\"tid\":{tid},\"name\":\"thread_name\",\"args\":{{\"name\":{}}}}}",
            json_str(&thread_name(self.meta, tid))
        )
        .map_err(write_error)
    }

    fn open(
        &mut self,
        _frame: &Frame,
        _parent: Option<&Frame>,
        columns: &CallColumns,
        i: usize,
        row: &CallRow,
    ) -> Result<()> {
        let function = self.meta.functions.get(&row.function_id);
        self.args.push(columns.annotations(i, function));
        Ok(())
    }

    fn close(&mut self, frame: &Frame) -> Result<()> {
        let args = self.args.pop().unwrap_or_default();
        self.separator()?;
        let name = function_name(self.meta, frame.function_id);
        write!(
            self.out,
            "{{\"ph\":\"X\",\"pid\":{},\"tid\":{},\"ts\":{},\"dur\":{},\"name\":{},\"cat\":\"call\"",
            self.pid,
            self.tid,
            micros(frame.start_ns - self.meta.start_ns),
            micros(frame.end_ns - frame.start_ns),
            json_str(&name)
        )
        .map_err(write_error)?;
        if !args.is_empty() {
            self.out.write_all(b",\"args\":{").map_err(write_error)?;
            for (k, a) in args.iter().enumerate() {
                let value = match &a.value {
                    AnnotationValue::Int(v) if v.unsigned_abs() <= MAX_EXACT_DOUBLE as u64 => {
                        v.to_string()
                    }
                    AnnotationValue::Int(v) => json_str(&v.to_string()),
                    AnnotationValue::Str(s) => json_str(s),
                };
                let sep = if k > 0 { "," } else { "" };
                write!(self.out, "{sep}{}:{value}", json_str(&a.name)).map_err(write_error)?;
            }
            self.out.write_all(b"}").map_err(write_error)?;
        }
        self.out.write_all(b"}").map_err(write_error)
    }

    fn thread_end(&mut self) -> Result<()> {
        self.args.clear();
        Ok(())
    }
}

/// `ns` as µs with three decimals (`-1.005`, `12.345`).
fn micros(ns: i64) -> String {
    let sign = if ns < 0 { "-" } else { "" };
    let a = ns.unsigned_abs();
    format!("{sign}{}.{:03}", a / 1000, a % 1000)
}

/// `s` as a JSON string literal.
pub(super) fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micros_keep_every_ns() {
        assert_eq!(micros(0), "0.000");
        assert_eq!(micros(1), "0.001");
        assert_eq!(micros(12_345), "12.345");
        assert_eq!(micros(-1_005), "-1.005");
    }
}
