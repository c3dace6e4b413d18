//! Answers without SQL: `report` (per function: calls, total, self and
//! latency percentiles) and `tree` (the call tree aggregated by path, like
//! `uftrace graph`).
//!
//! Counts come from `totals` where the session has it: exact, or an
//! estimate marked `≈` with its interval (sampled functions), so a sampled
//! count never reads as a total. Percentiles are over the recorded calls
//! (every call unless the function was sampled) and come from a log
//! histogram of 128 buckets per doubling, within 0.3% of the exact value;
//! the maximum is exact. One scan of `calls` fills the histograms; names
//! are joined afterwards to its keys (one per function, thread and
//! function, or caller and function), not to every call. Lost events are shown
//! where they touch the numbers.

use std::fmt::Write as _;

use anyhow::{Result, bail};
use rustc_hash::FxHashMap;

use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType;
use datafusion::arrow::compute::cast;

use crate::cols;
use crate::store::{Store, sql_str};
use crate::time::{fmt_ns, fmt_offset};

/// What `report` groups by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum By {
    /// One row per function (the default).
    Function,
    /// One row per thread and function.
    Thread,
    /// One row per module (self time and calls).
    Module,
    /// One row per caller → callee edge.
    Caller,
    /// One row per host (`sessions.host`) and function: a store written by
    /// several nodes.
    Host,
}

impl std::str::FromStr for By {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "function" => By::Function,
            "thread" => By::Thread,
            "module" => By::Module,
            "caller" => By::Caller,
            "host" => By::Host,
            o => {
                return Err(format!(
                    "unknown --by {o:?}: function, thread, module, caller or host"
                ));
            }
        })
    }
}

/// The sort key of `report`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortKey {
    /// Total (inclusive) time.
    Total,
    /// Self (exclusive) time.
    SelfTime,
    /// Calls.
    Calls,
    /// Median duration.
    P50,
    /// 90th percentile duration.
    P90,
    /// 99th percentile duration.
    P99,
    /// Longest call.
    Max,
    /// Name, alphabetically.
    Name,
}

impl std::str::FromStr for SortKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "total" => SortKey::Total,
            "self" => SortKey::SelfTime,
            "calls" => SortKey::Calls,
            "p50" => SortKey::P50,
            "p90" => SortKey::P90,
            "p99" => SortKey::P99,
            "max" => SortKey::Max,
            "name" => SortKey::Name,
            o => {
                return Err(format!(
                    "unknown sort key {o:?}: total, self, calls, p50, p90, p99, max or name"
                ));
            }
        })
    }
}

/// One row of a report.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReportRow {
    /// What the row is about: a function, `tid 42  function`, a module, or
    /// `caller → callee`.
    pub key: String,
    /// Thread id, for `--by thread`.
    pub tid: Option<i64>,
    /// The node's host (`sessions.host`), for `--by host`.
    pub host: Option<String>,
    /// The function's id, for `--by function` over one session.
    pub function_id: Option<i64>,
    /// Module of the function (or the module itself for `--by module`).
    pub module: String,
    /// Calls: exact, or the estimate when `!exact`; `None` when unknown.
    pub calls: Option<f64>,
    /// Whether `calls` (and the times) are exact.
    pub exact: bool,
    /// The 95% interval of an estimate (`high` `None`: unbounded).
    pub calls_low: Option<f64>,
    /// Upper end of the interval.
    pub calls_high: Option<f64>,
    /// Rows in `calls` (recorded one by one).
    pub recorded: i64,
    /// Sum of durations, ns (scaled like the count when estimated).
    pub total_ns: Option<f64>,
    /// Sum of self times, ns.
    pub self_ns: Option<f64>,
    /// Percentiles over the recorded calls, ns.
    pub p50_ns: Option<f64>,
    /// 90th percentile.
    pub p90_ns: Option<f64>,
    /// 99th percentile.
    pub p99_ns: Option<f64>,
    /// Longest recorded call.
    pub max_ns: Option<f64>,
    /// How the count was found, when not simply recorded.
    pub method: Option<String>,
}

/// A report: a header of what it covers, its rows, and notes (losses,
/// estimates).
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// What the report covers.
    pub header: Vec<String>,
    /// The rows, sorted.
    pub rows: Vec<ReportRow>,
    /// Rows left out by `--limit`.
    pub more: usize,
    /// Lines under the table.
    pub notes: Vec<String>,
}

/// Options of `report`.
#[derive(Clone, Debug)]
pub struct ReportOptions {
    /// Grouping.
    pub by: By,
    /// Sort key (descending, but ascending for names).
    pub sort: SortKey,
    /// At most this many rows (0: all).
    pub limit: usize,
}

impl ReportOptions {
    /// Every function, by total time: the rows other views start from
    /// (`diff`, the viewer).
    pub fn every_function() -> Self {
        ReportOptions {
            by: By::Function,
            sort: SortKey::Total,
            limit: 0,
        }
    }
}

/// Whether the registered tables show one session (function ids are then
/// unique) or several (functions are matched by name and module).
fn one_session(store: &Store) -> bool {
    store.selected_sessions().len() == 1
}

/// Builds the report of the store's selected sessions.
pub fn report(store: &Store, opts: &ReportOptions) -> Result<Report> {
    if !store.has_table("calls") || !store.has_table("functions") {
        bail!(
            "{}: no calls or functions table (nothing was recorded here)",
            store.location().display
        );
    }
    let mut out = Report {
        header: session_header(store)?,
        ..Report::default()
    };
    let single = one_session(store);
    let (mut rows, mut by_id) = recorded_rows(store, opts.by, single)?;
    // Sampled sessions: counts and times come from `totals`.
    let sampled = sampled_sessions(store)?;
    if store.has_table("totals") && opts.by == By::Function {
        apply_totals(store, single, &mut rows, &mut by_id)?;
    } else if !sampled.is_empty() {
        out.notes.push(format!(
"sampled session{} ({}): counts and times per {} are of the recorded calls, so at least the true ones (≥); `report` without --by shows estimated totals",
            if sampled.len() == 1 { "" } else { "s" },
            sampled.join(", "),
            match opts.by {
                By::Thread => "thread",
                By::Module => "module",
                By::Caller => "caller",
                By::Host => "host",
                By::Function => "function",
            }
        ));
        // A lower bound: at least the calls recorded, no upper bound.
        for r in &mut rows {
            r.exact = false;
            r.calls_low = r.calls;
            r.calls_high = None;
        }
    }
    if opts.by == By::Module {
        for r in &mut rows {
            // Inclusive times summed over a module count nested calls twice.
            r.total_ns = None;
        }
    }
    sort_rows(&mut rows, opts.sort);
    if opts.limit > 0 && rows.len() > opts.limit {
        out.more = rows.len() - opts.limit;
        rows.truncate(opts.limit);
    }
    out.notes.extend(loss_notes(store)?);
    if rows
        .iter()
        .any(|r| !r.exact && r.calls.is_some() && r.method.is_some())
    {
        out.notes.push(
            "≈: an estimate (a sampled function); its 95% interval is in brackets; times are scaled like the count; percentiles are over the recorded calls".to_string(),
        );
    }
    out.rows = rows;
    Ok(out)
}

/// Buckets per doubling of the latency histograms behind the percentiles:
/// a bucket spans a factor of 2^(1/128), so its geometric middle is within
/// 0.28% of every duration in it.
const BUCKETS_PER_OCTAVE: u32 = 128;

/// Where each bucket of a doubling begins, as a mantissa in [1, 2):
/// `2^(k/128)`; and, per value of a mantissa's top 12 bits, the bucket of
/// the smallest mantissa with them (a bucket is wider than 1/4096 of a
/// doubling, so the true bucket is that one or the next).
struct BucketTables {
    starts: [f64; BUCKETS_PER_OCTAVE as usize + 1],
    by_top_bits: [u8; 4096],
}

static TABLES: std::sync::LazyLock<BucketTables> = std::sync::LazyLock::new(|| {
    let mut starts = [0.0; BUCKETS_PER_OCTAVE as usize + 1];
    for (k, s) in starts.iter_mut().enumerate() {
        *s = (k as f64 / f64::from(BUCKETS_PER_OCTAVE)).exp2();
    }
    starts[BUCKETS_PER_OCTAVE as usize] = 2.0;
    let mut by_top_bits = [0u8; 4096];
    let mut k = 0;
    for (t, b) in by_top_bits.iter_mut().enumerate() {
        let m = 1.0 + t as f64 / 4096.0;
        while m >= starts[k + 1] {
            k += 1;
        }
        *b = k as u8;
    }
    BucketTables {
        starts,
        by_top_bits,
    }
});

/// The histogram bucket of a duration: `floor(log2(d) * 128)` (the
/// largest k with 2^(k/128) <= d), -1 for 0 ns, none for a negative one.
/// Found from the float's exponent and two table lookups rather than a
/// logarithm. In SQL (DataFusion and DuckDB alike, as the bench spells
/// it): `CAST(floor(log2(CAST(d AS DOUBLE)) * 128) AS BIGINT)`, the same
/// but where rounding puts a duration exactly on a bucket's edge.
#[inline]
fn bucket(d: i64) -> Option<i32> {
    if d <= 0 {
        return (d == 0).then_some(-1);
    }
    let bits = (d as f64).to_bits();
    let exponent = ((bits >> 52) & 0x7ff) as i32 - 1023;
    let mantissa = f64::from_bits((bits & ((1 << 52) - 1)) | (1023 << 52));
    let t = &*TABLES;
    let mut k = usize::from(t.by_top_bits[((bits >> 40) & 0xfff) as usize]);
    if mantissa >= t.starts[k + 1] {
        k += 1;
    }
    Some(exponent * BUCKETS_PER_OCTAVE as i32 + k as i32)
}

/// Distinct buckets a histogram keeps as a list before it turns dense.
const SMALL_HIST: usize = 16;

/// A latency histogram: a short list of (bucket, calls) while it has few
/// buckets (most keys of `--by thread` or `--by caller`), then 16-bit
/// counters over the range of buckets seen, so adding a call is an index,
/// not a hash. A function's calls span some doublings: a few thousand
/// counters, and the counters of a few hundred functions should stay in
/// the core's cache (the scan is bound by their misses, not by
/// arithmetic), so they are 16-bit, with what overflows carried into a
/// side list.
#[derive(Clone, Debug, Default)]
enum Hist {
    #[default]
    Empty,
    Small(Vec<(i32, u64)>),
    Dense {
        lo: i32,
        counts: Vec<u16>,
        /// 2^16 calls per entry, for a counter that wrapped.
        carried: Vec<i32>,
    },
}

impl Hist {
    /// Adds one call in bucket `b`.
    #[inline]
    fn add_one(&mut self, b: i32) {
        if let Hist::Dense {
            lo,
            counts,
            carried,
        } = self
            && b >= *lo
            && let Some(c) = counts.get_mut((b - *lo) as usize)
        {
            *c = c.wrapping_add(1);
            if *c == 0 {
                carried.push(b);
            }
            return;
        }
        self.add(b, 1);
    }

    /// Asks the CPU to fetch bucket `b`'s counter into its cache.
    #[inline]
    fn prefetch(&self, b: i32) {
        #[cfg(target_arch = "x86_64")]
        if let Hist::Dense { lo, counts, .. } = self
            && b >= *lo
            && let Some(c) = counts.get((b - *lo) as usize)
        {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            // SAFETY: a prefetch is a hint that never faults, and the
            // pointer is to a live element anyway.
            #[allow(unused_unsafe)]
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(c).cast::<i8>());
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = b;
    }

    fn add(&mut self, b: i32, n: u64) {
        match self {
            Hist::Empty => *self = Hist::Small(vec![(b, n)]),
            Hist::Small(v) => {
                if let Some(e) = v.iter_mut().find(|e| e.0 == b) {
                    e.1 += n;
                } else if v.len() < SMALL_HIST {
                    v.push((b, n));
                } else {
                    let lo = v.iter().map(|e| e.0).min().unwrap_or(b).min(b);
                    let hi = v.iter().map(|e| e.0).max().unwrap_or(b).max(b);
                    let mut dense = Hist::Dense {
                        lo,
                        counts: vec![0; (hi - lo) as usize + 1],
                        carried: Vec::new(),
                    };
                    for &(k, c) in v.iter() {
                        dense.add(k, c);
                    }
                    dense.add(b, n);
                    *self = dense;
                }
            }
            Hist::Dense {
                lo,
                counts,
                carried,
            } => {
                if b < *lo {
                    let grow = (*lo - b) as usize;
                    counts.splice(0..0, std::iter::repeat_n(0, grow));
                    *lo = b;
                } else if (b - *lo) as usize >= counts.len() {
                    counts.resize((b - *lo) as usize + 1, 0);
                }
                let c = &mut counts[(b - *lo) as usize];
                let sum = u64::from(*c) + n;
                *c = sum as u16;
                for _ in 0..(sum >> 16) {
                    carried.push(b);
                }
            }
        }
    }

    fn merge(&mut self, other: &Hist) {
        for (b, n) in other.buckets() {
            self.add(b, n);
        }
    }

    /// (bucket, calls), ascending, empty buckets left out.
    fn buckets(&self) -> Vec<(i32, u64)> {
        match self {
            Hist::Empty => Vec::new(),
            Hist::Small(v) => {
                let mut v = v.clone();
                v.sort_unstable();
                v
            }
            Hist::Dense {
                lo,
                counts,
                carried,
            } => {
                let mut wide: Vec<u64> = counts.iter().map(|&c| u64::from(c)).collect();
                for &b in carried {
                    wide[(b - lo) as usize] += 1 << 16;
                }
                wide.iter()
                    .enumerate()
                    .filter(|(_, c)| **c > 0)
                    .map(|(i, &c)| (lo + i as i32, c))
                    .collect()
            }
        }
    }
}

/// `q` (0..1) of a histogram: the geometric middle of the bucket that holds
/// the nearest-rank quantile (so within 0.28% of it), never above the exact
/// maximum.
fn quantile(hist: &[(i32, u64)], q: f64, max: Option<f64>) -> Option<f64> {
    let n: u64 = hist.iter().map(|e| e.1).sum();
    if n == 0 {
        return None;
    }
    let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
    let mut seen = 0;
    for &(b, c) in hist {
        seen += c;
        if seen >= rank {
            let v = if b < 0 {
                0.0
            } else {
                ((f64::from(b) + 0.5) / f64::from(BUCKETS_PER_OCTAVE)).exp2()
            };
            return Some(max.map_or(v, |m| v.min(m)));
        }
    }
    None
}

/// The calls of one (session, function, thread or caller's function):
/// count, sums, maximum and latency histogram, as SQL's `count(*)`, `sum`
/// and `max` would give them (sums and maximum null when every duration
/// is).
#[derive(Clone, Debug, Default)]
struct Agg {
    calls: i64,
    total: Option<i128>,
    selfs: Option<i128>,
    max: Option<i64>,
    hist: Hist,
}

impl Agg {
    /// Counts one call with duration `d` and self time `s` (none when
    /// unknown); returns the bucket its duration goes in, or `NO_BUCKET`.
    #[inline]
    fn add_call(&mut self, d: Option<i64>, s: Option<i64>) -> i32 {
        self.calls += 1;
        let mut bk = NO_BUCKET;
        if let Some(v) = d {
            self.total = Some(self.total.unwrap_or(0) + i128::from(v));
            self.max = Some(self.max.map_or(v, |m| m.max(v)));
            bk = bucket(v).unwrap_or(NO_BUCKET);
        }
        if let Some(v) = s {
            self.selfs = Some(self.selfs.unwrap_or(0) + i128::from(v));
        }
        bk
    }

    fn merge(&mut self, o: &Agg) {
        self.calls += o.calls;
        if let Some(t) = o.total {
            self.total = Some(self.total.unwrap_or(0) + t);
        }
        if let Some(t) = o.selfs {
            self.selfs = Some(self.selfs.unwrap_or(0) + t);
        }
        if let Some(m) = o.max {
            self.max = Some(self.max.map_or(m, |x| x.max(m)));
        }
        self.hist.merge(&o.hist);
    }
}

/// (session index, function id, thread or caller's function id;
/// `i64::MIN` for none).
type AggKey = (u32, i64, i64);

/// What one partition of the scan summed.
#[derive(Default)]
struct Partial {
    index: FxHashMap<AggKey, usize>,
    keys: Vec<AggKey>,
    aggs: Vec<Agg>,
    /// Per row of the batch at hand: its key's slot and bucket.
    rows: Vec<(u32, i32)>,
    /// Slots of (session 0, function id, no second key) by function id.
    by_function: Vec<u32>,
}

/// A row without a histogram entry (no function, or no duration).
const NO_BUCKET: i32 = i32::MIN;

impl Partial {
    fn slot_index(&mut self, key: AggKey) -> usize {
        // One session by function (the default report): the function id
        // indexes a table instead of the hash map.
        if let (0, f, i64::MIN) = key
            && let Ok(f) = usize::try_from(f)
            && f < 1 << 20
        {
            if let Some(&slot) = self.by_function.get(f)
                && slot != u32::MAX
            {
                return slot as usize;
            }
            let slot = self.slot_index_hashed(key);
            if f >= self.by_function.len() {
                self.by_function.resize(f + 1, u32::MAX);
            }
            self.by_function[f] = slot as u32;
            return slot;
        }
        self.slot_index_hashed(key)
    }

    fn slot_index_hashed(&mut self, key: AggKey) -> usize {
        let next = self.keys.len();
        let i = *self.index.entry(key).or_insert(next);
        if i == next {
            self.keys.push(key);
            self.aggs.push(Agg::default());
        }
        i
    }

    fn slot(&mut self, key: AggKey) -> &mut Agg {
        let i = self.slot_index(key);
        &mut self.aggs[i]
    }

    /// Adds a batch of (`sid`,) `fid`, (`k2`,) `d`, `s` rows.
    ///
    /// In two passes: the keys, counts and sums first, then the histogram
    /// counters in a tight loop of independent increments. The counters
    /// of a few hundred functions outgrow the core's cache, and a loop
    /// that does nothing else lets the CPU wait for many of their misses
    /// at once (at 100 M calls, 8.4 s → 6.1 s before the other changes).
    fn add_batch(&mut self, b: &RecordBatch, sessions: &[String]) -> Result<()> {
        use arrow_array::cast::AsArray as _;
        use arrow_array::types::Int64Type;
        let int = |name: &str| -> Result<Option<ArrayRef>> {
            b.column_by_name(name)
                .map(|c| Ok(cast(c, &DataType::Int64)?))
                .transpose()
        };
        let (Some(fid), Some(d), Some(s)) = (int("fid")?, int("d")?, int("s")?) else {
            bail!("internal: the report scan lacks a column");
        };
        let k2 = int("k2")?;
        let (fid, d, s) = (
            fid.as_primitive::<Int64Type>(),
            d.as_primitive::<Int64Type>(),
            s.as_primitive::<Int64Type>(),
        );
        let k2 = k2.as_ref().map(|k| k.as_primitive::<Int64Type>());
        let sid = match b.column_by_name("sid") {
            Some(c) => Some(session_indexes(c, sessions)?),
            None => None,
        };
        let mut rows = std::mem::take(&mut self.rows);
        rows.clear();
        let mut last: Option<(AggKey, usize)> = None;
        // The default report (one session, by function): a loop over the
        // values with the function id as the slot's index.
        let plain = sid.is_none() && k2.is_none() && fid.null_count() == 0;
        if plain {
            let (dn, sn) = (d.nulls(), s.nulls());
            for (i, &f) in fid.values().iter().enumerate() {
                let slot = match usize::try_from(f)
                    .ok()
                    .and_then(|f| self.by_function.get(f))
                {
                    Some(&slot) if slot != u32::MAX => slot as usize,
                    _ => self.slot_index((0, f, i64::MIN)),
                };
                let bk = self.aggs[slot].add_call(
                    dn.is_none_or(|n| n.is_valid(i)).then(|| d.values()[i]),
                    sn.is_none_or(|n| n.is_valid(i)).then(|| s.values()[i]),
                );
                rows.push((slot as u32, bk));
            }
        }
        for i in 0..if plain { 0 } else { b.num_rows() } {
            if fid.is_null(i) {
                rows.push((0, NO_BUCKET));
                continue;
            }
            let key = (
                sid.as_ref().map_or(0, |v| v[i]),
                fid.value(i),
                k2.filter(|k| k.is_valid(i))
                    .map_or(i64::MIN, |k| k.value(i)),
            );
            let slot = match last {
                Some((k, slot)) if k == key => slot,
                _ => {
                    let slot = self.slot_index(key);
                    last = Some((key, slot));
                    slot
                }
            };
            let bk = self.aggs[slot].add_call(
                d.is_valid(i).then(|| d.value(i)),
                s.is_valid(i).then(|| s.value(i)),
            );
            rows.push((slot as u32, bk));
        }
        // Each counter is asked for a few rows before it is incremented.
        const AHEAD: usize = 8;
        for (i, &(slot, bk)) in rows.iter().enumerate() {
            if let Some(&(s, b)) = rows.get(i + AHEAD)
                && b != NO_BUCKET
            {
                self.aggs[s as usize].hist.prefetch(b);
            }
            if bk != NO_BUCKET {
                self.aggs[slot as usize].hist.add_one(bk);
            }
        }
        self.rows = rows;
        Ok(())
    }

    fn merge(&mut self, o: Partial) {
        for (k, a) in o.keys.into_iter().zip(o.aggs) {
            self.slot(k).merge(&a);
        }
    }
}

/// Per row of a `session_id` column (a dictionary, as the store registers
/// the partition column, or plain strings), its index in `sessions`.
fn session_indexes(col: &ArrayRef, sessions: &[String]) -> Result<Vec<u32>> {
    use arrow_array::cast::AsArray as _;
    use arrow_array::types::Int32Type;
    let index = |s: &str| {
        sessions
            .binary_search_by(|x| x.as_str().cmp(s))
            .map_or(u32::MAX, |i| i as u32)
    };
    let dict = cast(
        col,
        &DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
    )?;
    let dict = dict.as_dictionary::<Int32Type>();
    let values = dict.values().as_string::<i32>();
    let of_value: Vec<u32> = (0..values.len()).map(|i| index(values.value(i))).collect();
    Ok(dict
        .keys()
        .iter()
        .map(|k| k.map_or(u32::MAX, |k| of_value[k as usize]))
        .collect())
}

/// The one scan of `calls` behind a report: per (session when several,
/// function, thread or caller's function) the calls, their sums, maximum
/// and latency histogram, summed in Rust on every partition of the scan
/// at once (a histogram per key, where SQL would have to group by the
/// bucket too: 23–38 s at 100 M calls against 3.3–4.7 s for this scan).
fn scan_calls(store: &Store, by: By, single: bool) -> Result<(Partial, Vec<String>)> {
    let (k2, join) = match by {
        By::Thread => ("c.tid AS k2, ", ""),
        By::Caller => (
            "p.function_id AS k2, ",
            "LEFT JOIN calls p ON p.session_id = c.session_id AND p.tid = c.tid AND p.call_id = c.parent_call_id",
        ),
        By::Function | By::Module | By::Host => ("", ""),
    };
    let sid = if single { "" } else { "c.session_id AS sid, " };
    let sql = format!(
        "SELECT {sid}c.function_id AS fid, {k2}c.duration_ns AS d, c.self_ns AS s FROM calls c {join}"
    );
    let mut sessions = store.selected_sessions();
    sessions.sort();
    let shared = std::sync::Arc::new(sessions.clone());
    let partials =
        store.fold_partitions(&sql, Partial::default, move |p, b| p.add_batch(b, &shared))?;
    let mut all = Partial::default();
    for p in partials {
        all.merge(p);
    }
    Ok((all, sessions))
}

/// Each selected session's host, from `sessions` (none there: an empty
/// map, and the rows say `?`).
fn hosts_of(store: &Store) -> Result<FxHashMap<String, String>> {
    let mut out = FxHashMap::default();
    if !store.has_table("sessions") {
        return Ok(out);
    }
    for b in store.sql("SELECT session_id, host FROM sessions")? {
        let sid = cols::strs(&b, "session_id")?;
        let host = cols::strs(&b, "host")?;
        for i in 0..b.num_rows() {
            if let (Some(s), Some(h)) = (sid[i].clone(), host[i].clone()) {
                out.insert(s, h);
            }
        }
    }
    Ok(out)
}

/// A report row being summed from the scan's keys.
#[derive(Default)]
struct Acc {
    row: ReportRow,
    agg: Agg,
}

/// The rows of the recorded calls, and their index by the id `totals`
/// matches (the function id in one session, name and module across
/// several).
fn recorded_rows(
    store: &Store,
    by: By,
    single: bool,
) -> Result<(Vec<ReportRow>, FxHashMap<String, usize>)> {
    // (session, function id) → (name, module); the session is "" when one.
    let mut names: FxHashMap<(String, i64), (String, String)> = FxHashMap::default();
    for b in store.sql("SELECT session_id, function_id, name, module FROM functions")? {
        let sid = cols::strs(&b, "session_id")?;
        let fid = cols::i64s(&b, "function_id")?;
        let name = cols::strs(&b, "name")?;
        let module = cols::strs(&b, "module")?;
        for i in 0..b.num_rows() {
            let (Some(f), Some(n)) = (fid[i], name[i].clone()) else {
                continue;
            };
            let s = if single {
                String::new()
            } else {
                sid[i].clone().unwrap_or_default()
            };
            names.insert((s, f), (n, module[i].clone().unwrap_or_default()));
        }
    }
    let (scanned, sessions) = scan_calls(store, by, single)?;
    let hosts = if by == By::Host {
        hosts_of(store)?
    } else {
        FxHashMap::default()
    };
    let mut accs: Vec<Acc> = Vec::new();
    let mut by_key: FxHashMap<String, usize> = FxHashMap::default();
    for ((si, f, k2), agg) in scanned.keys.iter().zip(&scanned.aggs) {
        let s = if single {
            String::new()
        } else {
            sessions.get(*si as usize).cloned().unwrap_or_default()
        };
        let k2 = (*k2 != i64::MIN).then_some(*k2);
        let unknown = (format!("function {f}"), String::new());
        let (name, module) = names.get(&(s.clone(), *f)).unwrap_or(&unknown);
        let named = format!("{name}\u{1}{module}");
        let id = if single { f.to_string() } else { named.clone() };
        // One session: the scan has no session column, and every call is
        // the selected session's.
        let host = (by == By::Host).then(|| {
            let sid = if single { sessions.first() } else { Some(&s) };
            sid.and_then(|id| hosts.get(id))
                .cloned()
                .unwrap_or_else(|| "?".to_string())
        });
        let (key, display, tid) = match by {
            By::Function => (id, name.clone(), None),
            By::Thread => (format!("{}\u{2}{id}", k2.unwrap_or(-1)), name.clone(), k2),
            By::Host => (
                format!("{}\u{2}{id}", host.as_deref().unwrap_or_default()),
                name.clone(),
                None,
            ),
            By::Module => (module.clone(), module.clone(), None),
            By::Caller => {
                let caller = k2.and_then(|p| names.get(&(s.clone(), p)));
                let (pk, pname) = match caller {
                    Some((pn, pm)) => (format!("{pn}\u{1}{pm}"), pn.as_str()),
                    None => (String::new(), "(root)"),
                };
                (
                    format!("{pk}\u{2}{named}"),
                    format!("{pname} → {name}"),
                    None,
                )
            }
        };
        let idx = *by_key.entry(key).or_insert_with(|| {
            accs.push(Acc {
                row: ReportRow {
                    key: display,
                    tid,
                    host: host.clone(),
                    function_id: (single && by == By::Function).then_some(*f),
                    module: module.clone(),
                    exact: true,
                    ..ReportRow::default()
                },
                agg: Agg::default(),
            });
            accs.len() - 1
        });
        accs[idx].agg.merge(agg);
    }
    let rows = accs
        .into_iter()
        .map(|a| {
            let mut r = a.row;
            let g = a.agg;
            r.recorded = g.calls;
            r.calls = Some(g.calls as f64);
            r.total_ns = g.total.map(|v| v as f64);
            r.self_ns = g.selfs.map(|v| v as f64);
            r.max_ns = g.max.map(|v| v as f64);
            let hist = g.hist.buckets();
            r.p50_ns = quantile(&hist, 0.5, r.max_ns);
            r.p90_ns = quantile(&hist, 0.9, r.max_ns);
            r.p99_ns = quantile(&hist, 0.99, r.max_ns);
            r
        })
        .collect();
    Ok((rows, by_key))
}

/// Replaces the counts and times of every function `totals` knows with its
/// figures (exact, or estimates marked as such), adding functions that ran
/// but have no recorded call.
fn apply_totals(
    store: &Store,
    single: bool,
    rows: &mut Vec<ReportRow>,
    by_id: &mut FxHashMap<String, usize>,
) -> Result<()> {
    let group = if single {
        "t.function_id"
    } else {
        "f.name, f.module"
    };
    let id_col = if single {
        "t.function_id AS function_id"
    } else {
        "CAST(NULL AS BIGINT) AS function_id"
    };
    let sql = format!(
        "SELECT {id_col}, min(f.name) AS key, min(f.module) AS module, \
           CASE WHEN count(t.calls) = count(*) THEN sum(t.calls) END AS calls, \
           bool_and(t.exact) AS exact, sum(t.calls_low) AS calls_low, \
           CASE WHEN count(t.calls_high) = count(*) THEN sum(t.calls_high) END AS calls_high, \
           sum(t.calls_recorded) AS recorded, \
           CASE WHEN count(t.total_ns) = count(*) THEN sum(t.total_ns) END AS total_ns, \
           CASE WHEN count(t.self_ns) = count(*) THEN sum(t.self_ns) END AS self_ns, \
           CASE WHEN count(DISTINCT t.method) = 1 THEN min(t.method) ELSE 'mixed' END AS method \
         FROM totals t JOIN functions f ON f.session_id = t.session_id AND f.function_id = t.function_id \
         GROUP BY {group}"
    );
    for b in store.sql(&sql)? {
        let fid = cols::i64s(&b, "function_id")?;
        let key = cols::strs(&b, "key")?;
        let module = cols::strs(&b, "module")?;
        let calls = cols::f64s(&b, "calls")?;
        let exact = cols::bools(&b, "exact")?;
        let low = cols::f64s(&b, "calls_low")?;
        let high = cols::f64s(&b, "calls_high")?;
        let rec = cols::i64s(&b, "recorded")?;
        let total = cols::f64s(&b, "total_ns")?;
        let selfs = cols::f64s(&b, "self_ns")?;
        let method = cols::strs(&b, "method")?;
        for i in 0..b.num_rows() {
            let k = key[i].clone().unwrap_or_default();
            let m = module[i].clone().unwrap_or_default();
            let id = match fid[i] {
                Some(id) => id.to_string(),
                None => format!("{k}\u{1}{m}"),
            };
            let exact = exact[i].unwrap_or(false);
            if calls[i] == Some(0.0) && exact {
                continue;
            }
            let idx = match by_id.get(&id) {
                Some(&idx) => idx,
                None => {
                    rows.push(ReportRow {
                        key: k,
                        module: m,
                        ..ReportRow::default()
                    });
                    by_id.insert(id, rows.len() - 1);
                    rows.len() - 1
                }
            };
            let r = &mut rows[idx];
            r.exact = exact;
            r.calls = calls[i];
            if !exact {
                r.calls_low = low[i];
                r.calls_high = high[i];
                r.method = method[i].clone();
                r.total_ns = total[i];
                r.self_ns = selfs[i];
            }
            r.recorded = rec[i].unwrap_or(r.recorded);
        }
    }
    Ok(())
}

/// Sessions among the selected ones whose counts are not all exact.
pub fn sampled_sessions(store: &Store) -> Result<Vec<String>> {
    if !store.has_table("sessions") {
        return Ok(Vec::new());
    }
    let has = store.tables()["sessions"]
        .schema
        .field_with_name("calls_exact")
        .is_ok();
    if !has {
        return Ok(Vec::new());
    }
    let mut v = Vec::new();
    for b in
        store.sql("SELECT session_id FROM sessions WHERE NOT calls_exact ORDER BY session_id")?
    {
        v.extend(cols::strs(&b, "session_id")?.into_iter().flatten());
    }
    Ok(v)
}

fn sort_rows(rows: &mut [ReportRow], key: SortKey) {
    let f = |r: &ReportRow| -> f64 {
        match key {
            SortKey::Total => r.total_ns.or(r.self_ns),
            SortKey::SelfTime => r.self_ns,
            SortKey::Calls => r.calls,
            SortKey::P50 => r.p50_ns,
            SortKey::P90 => r.p90_ns,
            SortKey::P99 => r.p99_ns,
            SortKey::Max => r.max_ns,
            SortKey::Name => None,
        }
        .unwrap_or(-1.0)
    };
    if key == SortKey::Name {
        rows.sort_by(|a, b| {
            a.key
                .cmp(&b.key)
                .then(a.tid.cmp(&b.tid))
                .then(a.host.cmp(&b.host))
        });
    } else {
        rows.sort_by(|a, b| {
            f(b).total_cmp(&f(a))
                .then(a.tid.cmp(&b.tid))
                .then(a.host.cmp(&b.host))
                .then(a.key.cmp(&b.key))
        });
    }
}

/// One line per selected session: id, command, pid, length, how its
/// counts were taken. A session without a `sessions` row is in progress
/// or was cut off.
pub fn session_header(store: &Store) -> Result<Vec<String>> {
    let selected = store.selected_sessions();
    let mut lines = Vec::new();
    let mut known: FxHashMap<String, String> = FxHashMap::default();
    if store.has_table("sessions") {
        let schema = &store.tables()["sessions"].schema;
        let exact_col = if schema.field_with_name("calls_exact").is_ok() {
            "calls_exact"
        } else {
            "CAST(NULL AS BOOLEAN) AS calls_exact"
        };
        let budget = if schema.field_with_name("max_overhead_pct").is_ok() {
            "max_overhead_pct"
        } else {
            "CAST(NULL AS DOUBLE) AS max_overhead_pct"
        };
        for b in store.sql(&format!(
            "SELECT session_id, command, pid, start_ns, end_ns, lost, {exact_col}, {budget} FROM sessions"
        ))? {
            let id = cols::strs(&b, "session_id")?;
            let cmd = cols::strs(&b, "command")?;
            let pid = cols::i64s(&b, "pid")?;
            let s = cols::i64s(&b, "start_ns")?;
            let e = cols::i64s(&b, "end_ns")?;
            let exact = cols::bools(&b, "calls_exact")?;
            let budget = cols::f64s(&b, "max_overhead_pct")?;
            for i in 0..b.num_rows() {
                let len = e[i].unwrap_or(0) - s[i].unwrap_or(0);
                let how = match (exact[i], budget[i]) {
                    (_, Some(pct)) => format!("sampled within a {pct}% budget"),
                    (Some(true), None) => "every call recorded".to_string(),
                    _ => "every call recorded (counts inexact: events lost)".to_string(),
                };
                known.insert(
                    id[i].clone().unwrap_or_default(),
                    format!(
                        "{} (pid {}), {}, {how}",
                        cmd[i].clone().unwrap_or_default(),
                        pid[i].unwrap_or(0),
                        fmt_ns(len as f64)
                    ),
                );
            }
        }
    }
    for id in &selected {
        match known.get(id) {
            Some(desc) => lines.push(format!("session {id}: {desc}")),
            None => lines.push(format!(
                "session {id}: no sessions row (still recording, or the agent was killed): figures cover the files written so far"
            )),
        }
    }
    Ok(lines)
}

/// Where events were lost, per session: how many and when.
pub fn loss_notes(store: &Store) -> Result<Vec<String>> {
    if !store.has_table("losses") || !store.has_table("sessions") {
        return Ok(Vec::new());
    }
    let mut notes = Vec::new();
    for b in store.sql(
        "SELECT l.session_id, sum(l.lost) AS lost, min(l.start_ns) - min(s.start_ns) AS from_ns, \
           max(l.end_ns) - min(s.start_ns) AS to_ns \
         FROM losses l JOIN sessions s ON s.session_id = l.session_id \
         GROUP BY l.session_id HAVING sum(l.lost) > 0 ORDER BY l.session_id",
    )? {
        let id = cols::strs(&b, "session_id")?;
        let lost = cols::i64s(&b, "lost")?;
        let from = cols::i64s(&b, "from_ns")?;
        let to = cols::i64s(&b, "to_ns")?;
        for i in 0..b.num_rows() {
            notes.push(format!(
                "session {}: {} events lost between {} and {} (the ring was full): the counts of functions running then are lower bounds (totals.calls_high allows for them)",
                id[i].clone().unwrap_or_default(),
                lost[i].unwrap_or(0),
                fmt_offset(from[i].unwrap_or(0)),
                fmt_offset(to[i].unwrap_or(0)),
            ));
        }
    }
    Ok(notes)
}

/// A count for people: exact with thousands separators, or `≈54.0K`.
pub fn fmt_count(calls: Option<f64>, exact: bool) -> String {
    match calls {
        None => "unknown".to_string(),
        Some(c) if exact => group_digits(c.round() as u64),
        Some(c) => format!("≈{}", si(c)),
    }
}

/// `12,345`.
pub fn group_digits(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// `54.0K`, `1.34M`.
pub fn si(v: f64) -> String {
    if v >= 1e9 {
        format!("{:.2}G", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.1}K", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// Under every text report: the percentiles are estimates, and how close.
pub const PERCENTILE_NOTE: &str = "p50, p90 and p99 are estimates from a latency histogram, within 0.3% \
     of the exact value; calls, total, self and max are exact unless marked ≈.";

/// The report as text.
pub fn render(report: &Report, by: By) -> String {
    let mut s = String::new();
    for h in &report.header {
        let _ = writeln!(s, "{h}");
    }
    let _ = writeln!(s);
    let mut table: Vec<Vec<String>> = Vec::new();
    let mut head = vec![];
    if by == By::Thread {
        head.push("tid".to_string());
    }
    if by == By::Host {
        head.push("host".to_string());
    }
    head.extend(
        ["calls", "total", "self", "p50", "p90", "p99", "max"]
            .iter()
            .map(|s| s.to_string()),
    );
    head.push(match by {
        By::Module => "module".to_string(),
        By::Caller => "caller → function".to_string(),
        _ => "function".to_string(),
    });
    table.push(head);
    // Not exact and no method: the recorded calls of a sampled session
    // (`--by` other than function), a lower bound.
    let t = |v: Option<f64>, r: &ReportRow| match v {
        None => "-".to_string(),
        Some(v) if r.exact => fmt_ns(v),
        Some(v) if r.method.is_none() => format!("≥{}", fmt_ns(v)),
        Some(v) => format!("≈{}", fmt_ns(v)),
    };
    for r in &report.rows {
        let mut row = vec![];
        if by == By::Thread {
            row.push(r.tid.map_or("-".into(), |t| t.to_string()));
        }
        if by == By::Host {
            row.push(r.host.clone().unwrap_or_else(|| "-".into()));
        }
        row.push(match r.calls {
            Some(c) if !r.exact && r.method.is_none() => format!("≥{}", group_digits(c as u64)),
            c => fmt_count(c, r.exact),
        });
        row.push(t(r.total_ns, r));
        row.push(t(r.self_ns, r));
        for p in [r.p50_ns, r.p90_ns, r.p99_ns, r.max_ns] {
            row.push(p.map_or("-".to_string(), fmt_ns));
        }
        let mut name = r.key.clone();
        if !r.exact
            && let Some(m) = &r.method
        {
            let interval = match (r.calls_low, r.calls_high) {
                (Some(l), Some(h)) => format!("[{}–{}]", si(l), si(h)),
                (Some(l), None) => format!("[≥{}]", si(l)),
                _ => String::new(),
            };
            let _ = write!(
                name,
                "  {interval} {} recorded; {m}",
                group_digits(r.recorded.max(0) as u64)
            );
        }
        row.push(name);
        table.push(row);
    }
    let ncol = table[0].len();
    let widths: Vec<usize> = (0..ncol)
        .map(|c| {
            table
                .iter()
                .map(|r| r[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in &table {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == ncol {
                let _ = write!(line, "{cell}");
            } else {
                let pad = widths[c] - cell.chars().count();
                let _ = write!(line, "{}{}  ", " ".repeat(pad), cell);
            }
        }
        let _ = writeln!(s, "{}", line.trim_end());
    }
    if report.more > 0 {
        let _ = writeln!(s, "… {} more (--limit 0 shows all)", report.more);
    }
    if report.rows.is_empty() {
        let _ = writeln!(s, "(no calls recorded)");
    } else {
        let _ = writeln!(s, "\n{PERCENTILE_NOTE}");
    }
    for n in &report.notes {
        let _ = writeln!(s, "\n{n}");
    }
    s
}

/// Quoted list of session ids for an SQL `IN`.
pub fn sessions_in(ids: &[String]) -> String {
    ids.iter()
        .map(|s| sql_str(s))
        .collect::<Vec<_>>()
        .join(", ")
}

impl ReportRow {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "key": self.key,
            "tid": self.tid,
            "host": self.host,
            "module": self.module,
            "calls": self.calls,
            "exact": self.exact,
            "calls_low": self.calls_low,
            "calls_high": self.calls_high,
            "calls_recorded": self.recorded,
            "method": self.method,
            "total_ns": self.total_ns,
            "self_ns": self.self_ns,
            "p50_ns": self.p50_ns,
            "p90_ns": self.p90_ns,
            "p99_ns": self.p99_ns,
            "max_ns": self.max_ns,
        })
    }
}

/// The report as JSON: `{"sessions": [...], "rows": [...], "notes": [...]}`.
pub fn to_json(r: &Report) -> String {
    serde_json::json!({
        "sessions": r.header,
        "rows": r.rows.iter().map(ReportRow::json).collect::<Vec<_>>(),
        "more": r.more,
        "notes": r.notes,
        "percentiles": PERCENTILE_NOTE,
    })
    .to_string()
}

/// The report's rows as CSV with a header line (numbers unformatted, ns).
pub fn to_csv(r: &Report) -> String {
    let mut s = String::from(
        "key,tid,host,module,calls,exact,calls_low,calls_high,calls_recorded,method,total_ns,self_ns,p50_ns,p90_ns,p99_ns,max_ns\n",
    );
    let q = |v: &str| format!("\"{}\"", v.replace('"', "\"\""));
    let n = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.0}"));
    for row in &r.rows {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            q(&row.key),
            row.tid.map_or(String::new(), |t| t.to_string()),
            row.host.as_deref().map(q).unwrap_or_default(),
            q(&row.module),
            n(row.calls),
            row.exact,
            n(row.calls_low),
            n(row.calls_high),
            row.recorded,
            row.method.as_deref().map(q).unwrap_or_default(),
            n(row.total_ns),
            n(row.self_ns),
            n(row.p50_ns),
            n(row.p90_ns),
            n(row.p99_ns),
            n(row.max_ns),
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(durations: impl IntoIterator<Item = i64>) -> Vec<(i32, u64)> {
        let mut h = Hist::default();
        for d in durations {
            h.add(bucket(d).unwrap(), 1);
        }
        h.buckets()
    }

    #[test]
    fn percentiles_are_within_0_3_percent_of_the_nearest_rank_value() {
        // 1 µs … 1 ms in 1 µs steps: the nearest-rank p50 is 500 µs, p90
        // 900 µs, p99 990 µs.
        let h = hist((1..=1000).map(|i| i * 1000));
        for (q, exact) in [(0.5, 500_000.0), (0.9, 900_000.0), (0.99, 990_000.0)] {
            let v = quantile(&h, q, Some(1e6)).unwrap();
            assert!((v / exact - 1.0).abs() < 0.003, "q {q}: {v} vs {exact}");
        }
        // Never above the maximum; 0 ns stays 0; an empty histogram has none.
        let one = hist([1_000_000]);
        assert_eq!(quantile(&one, 0.99, Some(1e6)), Some(1e6));
        assert_eq!(quantile(&hist([0, 0, 5]), 0.5, Some(5.0)), Some(0.0));
        assert_eq!(quantile(&[], 0.5, None), None);
    }

    #[test]
    fn a_histogram_counts_the_same_as_a_list_and_dense() {
        // Durations that cross from the short list to dense counters,
        // growing the range below and above, in a scrambled order.
        let ds: Vec<i64> = (0..5000).map(|i| (i * 7919 % 5000) * 37 + 1).collect();
        let mut exact: std::collections::BTreeMap<i32, u64> = Default::default();
        for &d in &ds {
            *exact.entry(bucket(d).unwrap()).or_default() += 1;
        }
        let h = hist(ds.iter().copied());
        assert_eq!(h, exact.into_iter().collect::<Vec<_>>());
        // Merging two halves gives the whole.
        let (mut a, mut b) = (Hist::default(), Hist::default());
        for (i, &d) in ds.iter().enumerate() {
            let x = if i % 3 == 0 { &mut a } else { &mut b };
            x.add(bucket(d).unwrap(), 1);
        }
        a.merge(&b);
        assert_eq!(a.buckets(), h);
        assert_eq!(bucket(-1), None);
    }

    #[test]
    fn counters_carry_past_16_bits() {
        let mut h = Hist::default();
        for b in 0..20 {
            h.add(b, 1);
        }
        for _ in 0..200_000 {
            h.add_one(5);
        }
        h.add(7, 3 << 16);
        let got = h.buckets();
        assert_eq!(got[5], (5, 200_001));
        assert_eq!(got[7], (7, (3 << 16) + 1));
        assert_eq!(
            got.iter().map(|e| e.1).sum::<u64>(),
            20 + 200_000 + (3 << 16)
        );
    }

    #[test]
    fn buckets_are_floor_of_log2_times_128() {
        // Every duration up to 100,000 ns and a spread of larger ones: the
        // tables give what the logarithm gives, but where the logarithm
        // is within rounding of a bucket's edge.
        let spread = (0..20_000).map(|i| 100_000 + i * 7_919_191i64 % 1_000_000_007);
        for d in (1..100_000)
            .chain(spread)
            .chain([1 << 40, (1 << 40) - 1, i64::MAX])
        {
            let exact = (d as f64).log2() * 128.0;
            let b = bucket(d).unwrap();
            if (exact - exact.round()).abs() > 1e-9 {
                assert_eq!(b, exact.floor() as i32, "{d}");
            } else {
                assert!((b - exact.round() as i32).abs() <= 1, "{d}");
            }
        }
        assert_eq!(bucket(0), Some(-1));
        assert_eq!(bucket(1), Some(0));
        assert_eq!(bucket(2), Some(128));
    }
}
