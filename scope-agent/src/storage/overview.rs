//! The per-session summaries the viewer's first view reads instead of
//! scanning every call, written once when the session ends:
//!
//! - `threads`: per thread, its calls, first entry and last return (what
//!   a `GROUP BY tid` over `calls` gives);
//! - `overview`: per thread, its calls at one level of detail: every call
//!   at least `bucket_ns` long (or never returned) as a row of its own,
//!   the shorter ones summed per depth into buckets of `bucket_ns` aligned
//!   to multiples of it from the epoch (calls, first entry, last return).
//!   `bucket_ns` is a power of two that starts at 1 µs and doubles while
//!   a thread would keep more than [`MAX_ROWS_PER_THREAD`] rows, so the
//!   summary stays small whatever the length of the session. The timeline
//!   of a whole thread at any width whose pixel is at least `bucket_ns` is
//!   computed from it exactly (scope-query's `travel::detail`).
//!
//! A session that crashed has neither: readers scan `calls` instead. Past
//! [`MAX_ROWS`] rows over all threads the overview is given up (the
//! thread list is kept).

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Result;
use arrow_array::{ArrayRef, Int32Array, Int64Array, RecordBatch, UInt32Array, UInt64Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use rustc_hash::FxHashMap;

use crate::capture::CallRecord;

/// Rows one thread's overview keeps before its buckets double.
pub const MAX_ROWS_PER_THREAD: usize = 32 * 1024;
/// Rows of all threads' overviews past which it is given up.
pub const MAX_ROWS: usize = 1 << 20;
/// The first bucket width: 2^10 ns.
const FIRST_SHIFT: u32 = 10;

/// One bucket: calls, first entry, last return.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    calls: u64,
    first: i64,
    last: i64,
}

/// A call drawn on its own.
#[derive(Clone, Copy, Debug)]
struct Long {
    call_id: u64,
    function_id: u32,
    depth: u32,
    start: i64,
    /// `None`: never returned.
    duration: Option<i64>,
    self_ns: Option<i64>,
}

#[derive(Debug)]
struct Thread {
    calls: u64,
    first: i64,
    last: i64,
    /// Bucket width: 2^shift ns.
    shift: u32,
    buckets: FxHashMap<(u32, i64), Bucket>,
    long: Vec<Long>,
}

impl Thread {
    fn new() -> Self {
        Thread {
            calls: 0,
            first: i64::MAX,
            last: i64::MIN,
            shift: FIRST_SHIFT,
            buckets: FxHashMap::default(),
            long: Vec::new(),
        }
    }

    fn rows(&self) -> usize {
        self.buckets.len() + self.long.len()
    }

    fn bucket(&mut self, depth: u32, start: i64, end: i64) {
        self.add_bucket(
            depth,
            start >> self.shift,
            Bucket {
                calls: 1,
                first: start,
                last: end,
            },
        );
    }

    fn add_bucket(&mut self, depth: u32, k: i64, b: Bucket) {
        self.buckets
            .entry((depth, k))
            .and_modify(|x| {
                x.calls += b.calls;
                x.first = x.first.min(b.first);
                x.last = x.last.max(b.last);
            })
            .or_insert(b);
    }

    /// Doubles the bucket width until the thread keeps at most
    /// [`MAX_ROWS_PER_THREAD`] rows.
    fn coarsen(&mut self) {
        while self.rows() > MAX_ROWS_PER_THREAD && self.shift < 62 {
            self.shift += 1;
            let old = std::mem::take(&mut self.buckets);
            for ((depth, k), b) in old {
                self.add_bucket(depth, k >> 1, b);
            }
            let width = 1i64 << self.shift;
            let long = std::mem::take(&mut self.long);
            for c in long {
                match c.duration {
                    Some(d) if d < width => self.bucket(c.depth, c.start, c.start + d),
                    _ => self.long.push(c),
                }
            }
        }
    }
}

/// The summaries of one session, fed every call as it is written.
#[derive(Debug, Default)]
pub struct Overview {
    threads: BTreeMap<u32, Thread>,
    /// Rows over all threads' overviews.
    rows: usize,
    /// Past [`MAX_ROWS`]: only the thread list is kept.
    given_up: bool,
}

impl Overview {
    pub fn add(&mut self, calls: &[CallRecord]) {
        for c in calls {
            let t = self.threads.entry(c.tid).or_insert_with(Thread::new);
            let duration = (c.duration_ns >= 0).then_some(c.duration_ns);
            t.calls += 1;
            t.first = t.first.min(c.start_ns);
            t.last = t.last.max(c.start_ns + duration.unwrap_or(0));
            if self.given_up {
                continue;
            }
            let before = t.rows();
            match duration {
                Some(d) if d < 1i64 << t.shift => t.bucket(c.depth, c.start_ns, c.start_ns + d),
                _ => t.long.push(Long {
                    call_id: c.call_id,
                    function_id: c.function_id,
                    depth: c.depth,
                    start: c.start_ns,
                    duration,
                    self_ns: (c.self_ns >= 0).then_some(c.self_ns),
                }),
            }
            if t.rows() > MAX_ROWS_PER_THREAD {
                t.coarsen();
            }
            self.rows = self.rows + t.rows() - before;
            if self.rows > MAX_ROWS {
                self.given_up = true;
                for t in self.threads.values_mut() {
                    t.buckets = FxHashMap::default();
                    t.long = Vec::new();
                }
            }
        }
    }

    /// The `threads` table's rows.
    pub fn threads_batch(&self) -> Result<RecordBatch> {
        let t = &self.threads;
        let cols: Vec<ArrayRef> = vec![
            Arc::new(UInt32Array::from_iter_values(t.keys().copied())),
            Arc::new(UInt64Array::from_iter_values(t.values().map(|t| t.calls))),
            Arc::new(Int64Array::from_iter_values(t.values().map(|t| t.first))),
            Arc::new(Int64Array::from_iter_values(t.values().map(|t| t.last))),
        ];
        Ok(RecordBatch::try_new(threads_schema(), cols)?)
    }

    /// The `overview` table's rows; `None` when it was given up.
    pub fn overview_batch(&self) -> Result<Option<RecordBatch>> {
        if self.given_up {
            return Ok(None);
        }
        let mut tid = Vec::new();
        let mut width = Vec::new();
        let mut depth = Vec::new();
        let mut start = Vec::new();
        let mut end = Vec::new();
        let mut calls = Vec::new();
        let mut call_id = Vec::new();
        let mut function_id = Vec::new();
        let mut duration = Vec::new();
        let mut self_ns = Vec::new();
        for (&id, t) in &self.threads {
            let mut buckets: Vec<_> = t.buckets.iter().collect();
            buckets.sort_unstable_by_key(|(k, _)| **k);
            for (&(d, _), b) in buckets {
                tid.push(id);
                width.push(1i64 << t.shift);
                depth.push(d as i32);
                start.push(b.first);
                end.push(b.last);
                calls.push(b.calls);
                call_id.push(None);
                function_id.push(None);
                duration.push(None);
                self_ns.push(None);
            }
            for c in &t.long {
                tid.push(id);
                width.push(1i64 << t.shift);
                depth.push(c.depth as i32);
                start.push(c.start);
                end.push(c.start + c.duration.unwrap_or(0));
                calls.push(1);
                call_id.push(Some(c.call_id));
                function_id.push(Some(c.function_id));
                duration.push(c.duration);
                self_ns.push(c.self_ns);
            }
        }
        let cols: Vec<ArrayRef> = vec![
            Arc::new(UInt32Array::from(tid)),
            Arc::new(Int64Array::from(width)),
            Arc::new(Int32Array::from(depth)),
            Arc::new(Int64Array::from(start)),
            Arc::new(Int64Array::from(end)),
            Arc::new(UInt64Array::from(calls)),
            Arc::new(UInt64Array::from(call_id)),
            Arc::new(UInt32Array::from(function_id)),
            Arc::new(Int64Array::from(duration)),
            Arc::new(Int64Array::from(self_ns)),
        ];
        Ok(Some(RecordBatch::try_new(overview_schema(), cols)?))
    }
}

/// `threads`: tid, calls, first entry, last return (epoch ns).
pub fn threads_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("tid", DataType::UInt32, false),
        Field::new("calls", DataType::UInt64, false),
        Field::new("first_ns", DataType::Int64, false),
        Field::new("last_ns", DataType::Int64, false),
    ]))
}

/// `overview`: a bucket (`call_id` null: `calls` calls shorter than
/// `bucket_ns` at `depth`, entered from `start_ns`, the last returning at
/// `end_ns`) or one call at least `bucket_ns` long (or never returned:
/// `duration_ns` null).
pub fn overview_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("tid", DataType::UInt32, false),
        Field::new("bucket_ns", DataType::Int64, false),
        Field::new("depth", DataType::Int32, false),
        Field::new("start_ns", DataType::Int64, false),
        Field::new("end_ns", DataType::Int64, false),
        Field::new("calls", DataType::UInt64, false),
        Field::new("call_id", DataType::UInt64, true),
        Field::new("function_id", DataType::UInt32, true),
        Field::new("duration_ns", DataType::Int64, true),
        Field::new("self_ns", DataType::Int64, true),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(tid: u32, id: u64, depth: u32, start: i64, dur: i64) -> CallRecord {
        CallRecord {
            tid,
            call_id: id,
            depth,
            start_ns: start,
            duration_ns: dur,
            self_ns: dur,
            ..CallRecord::default()
        }
    }

    #[test]
    fn short_calls_are_bucketed_and_long_ones_kept() {
        let mut o = Overview::default();
        o.add(&[
            call(1, 1, 0, 10_000, 500),
            call(1, 2, 0, 10_600, 300),
            call(1, 3, 1, 20_000, 5_000),
            call(1, 4, 0, 30_000, -1),
        ]);
        let t = &o.threads[&1];
        assert_eq!((t.calls, t.first, t.last), (4, 10_000, 30_000));
        // 10,000 >> 10 = 9 and 10,600 >> 10 = 10: two buckets.
        assert_eq!(t.buckets.len(), 2);
        assert_eq!(t.long.len(), 2);
        let b = o.overview_batch().unwrap().unwrap();
        assert_eq!(b.num_rows(), 4);
    }

    #[test]
    fn buckets_double_until_the_thread_fits() {
        let mut o = Overview::default();
        // One call every 2 µs for 200 ms: 100,000 calls of 1 µs.
        let calls: Vec<CallRecord> = (0..100_000)
            .map(|i| call(7, i + 1, 0, 1_000_000 + 2_000 * i as i64, 1_000))
            .collect();
        o.add(&calls);
        let t = &o.threads[&7];
        assert!(t.rows() <= MAX_ROWS_PER_THREAD, "{}", t.rows());
        assert!(t.shift > FIRST_SHIFT);
        let n: u64 = t.buckets.values().map(|b| b.calls).sum::<u64>() + t.long.len() as u64;
        assert_eq!(n, 100_000);
        assert_eq!(
            t.long.len(),
            0,
            "1 µs calls are shorter than the doubled width"
        );
        assert_eq!(o.rows, t.rows());
    }
}
