//! The walk every export shares: calls ordered by (tid, start_ns, depth) in,
//! properly nested open/close events out, one thread at a time, holding
//! only the open calls of the thread being read (see the [module
//! docs](super) for how the intervals are made nested).

use anyhow::{Result, bail};
use arrow_array::RecordBatch;
use rustc_hash::FxHashSet;

use super::ExportMeta;
use super::columns::{CallColumns, CallRow};

/// A call between its open and its close.
#[derive(Clone, Copy, Debug)]
pub(super) struct Frame {
    pub function_id: u32,
    pub depth: i32,
    /// Unix epoch ns.
    pub start_ns: i64,
    /// Unix epoch ns; final once the frame closes (it can only shrink).
    pub end_ns: i64,
    /// Sum of the closed children's intervals, ns.
    pub child_ns: i64,
}

impl Frame {
    /// The interval less the children's, ns (final once closed).
    pub fn self_ns(&self) -> i64 {
        (self.end_ns - self.start_ns - self.child_ns).max(0)
    }
}

/// What a format does with the walk. Calls `open` and `close` nest
/// properly per thread, and the times never go backwards within a thread:
/// a close's `end_ns` is at or before the next open's `start_ns`.
pub(super) trait CallSink {
    /// A thread's first call is next (`thread_end` of the previous thread
    /// came first).
    fn thread_start(&mut self, pid: u32, tid: u32) -> Result<()>;

    /// A call opens: `frame.end_ns` is its end as far as known now (it may
    /// be cut later); `parent` is the frame it nests in; `columns.row(i)`
    /// is its row.
    fn open(
        &mut self,
        frame: &Frame,
        parent: Option<&Frame>,
        columns: &CallColumns,
        i: usize,
        row: &CallRow,
    ) -> Result<()>;

    /// The innermost open call closes, its `end_ns` and self time final.
    fn close(&mut self, frame: &Frame) -> Result<()>;

    /// The thread's last call closed.
    fn thread_end(&mut self) -> Result<()>;
}

/// What the walk counted.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Walked {
    pub calls: u64,
    pub threads: u64,
    pub open_calls: u64,
}

/// Feeds `sink` the calls of `batches`, nested. Errors: a batch's columns
/// (see [`CallColumns::new`]), the iterator's own errors, calls out of
/// order, and the sink's errors.
pub(super) fn walk(
    batches: &mut dyn Iterator<Item = Result<RecordBatch>>,
    meta: &ExportMeta,
    sink: &mut dyn CallSink,
) -> Result<Walked> {
    let mut walked = Walked::default();
    let mut stack: Vec<Frame> = Vec::new();
    let mut thread: Option<(u32, u32)> = None;
    let mut seen: FxHashSet<(u32, u32)> = FxHashSet::default();
    let mut last_start = i64::MIN;
    for batch in batches {
        let batch = batch?;
        let columns = CallColumns::new(&batch, meta.pid)?;
        for i in 0..columns.len() {
            let row = columns.row(i);
            let key = (row.pid, row.tid);
            if thread != Some(key) {
                if thread.is_some() {
                    close_all(&mut stack, sink)?;
                    sink.thread_end()?;
                }
                if !seen.insert(key) {
                    bail!(
                        "the calls are not ordered by (tid, start_ns, depth): thread {} (pid {}) \
                         comes again after other threads (call {})",
                        row.tid,
                        row.pid,
                        walked.calls + 1
                    );
                }
                thread = Some(key);
                walked.threads += 1;
                last_start = i64::MIN;
                sink.thread_start(row.pid, row.tid)?;
            }
            if row.start_ns < last_start {
                bail!(
                    "the calls are not ordered by (tid, start_ns, depth): thread {} has a call \
                     starting at {} ns after one starting at {last_start} ns (call {})",
                    row.tid,
                    row.start_ns,
                    walked.calls + 1
                );
            }
            last_start = row.start_ns;
            walked.calls += 1;
            // Close what ended before this call, and what sits at its depth
            // or deeper (cut at this call's start: siblings never overlap).
            while let Some(top) = stack.last() {
                if top.depth >= row.depth {
                    close_top(&mut stack, sink, Some(row.start_ns))?;
                } else if top.end_ns < row.start_ns {
                    close_top(&mut stack, sink, None)?;
                } else {
                    break;
                }
            }
            let end = match row.duration_ns {
                Some(d) => row.start_ns.saturating_add(d.max(0)),
                None => {
                    walked.open_calls += 1;
                    meta.end_ns.max(row.start_ns)
                }
            };
            let parent = stack.last();
            let frame = Frame {
                function_id: row.function_id,
                depth: row.depth,
                start_ns: row.start_ns,
                end_ns: parent.map_or(end, |p| end.min(p.end_ns)),
                child_ns: 0,
            };
            sink.open(&frame, parent, &columns, i, &row)?;
            stack.push(frame);
        }
    }
    if thread.is_some() {
        close_all(&mut stack, sink)?;
        sink.thread_end()?;
    }
    Ok(walked)
}

/// Closes the innermost frame, cut at `cut` (ns) if it ends later, and adds
/// its interval to its parent's children.
fn close_top(stack: &mut Vec<Frame>, sink: &mut dyn CallSink, cut: Option<i64>) -> Result<()> {
    let Some(mut frame) = stack.pop() else {
        return Ok(());
    };
    if let Some(cut) = cut {
        frame.end_ns = frame.end_ns.min(cut).max(frame.start_ns);
    }
    // A cut frame's children closed first, cut at the same time, so they
    // still fit inside it.
    frame.child_ns = frame.child_ns.min(frame.end_ns - frame.start_ns);
    if let Some(parent) = stack.last_mut() {
        parent.child_ns += frame.end_ns - frame.start_ns;
    }
    sink.close(&frame)
}

/// Closes every open frame, innermost first, at its own end.
fn close_all(stack: &mut Vec<Frame>, sink: &mut dyn CallSink) -> Result<()> {
    while !stack.is_empty() {
        close_top(stack, sink, None)?;
    }
    Ok(())
}
