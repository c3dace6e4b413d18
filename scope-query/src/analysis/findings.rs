//! The findings computed from one session's calls (and its on-CPU samples
//! where it has them): bottlenecks, repeated work, recursion, latency
//! outliers and bimodal durations, waiting, polling loops.
//!
//! Every figure comes from a fixed number of scans of `calls`, whatever the
//! number of functions (see [`compute`]), each run on every core at once;
//! a finding carries the numbers it was decided on. Thresholds are
//! constants here, each with the reason for its value.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::Result;
use arrow_array::{Array as _, RecordBatch};
use rustc_hash::{FxHashMap, FxHashSet};

use super::finding::{Evidence, Finding, Kind};
use crate::report::{self, ReportOptions};
use crate::time::fmt_ns;
use crate::{Store, cols};

/// Sampling frequency of the on-CPU sampler (`samples`), Hz.
pub const SAMPLE_HZ: f64 = 99.0;

/// A bottleneck is reported from this share of all self time (below it
/// the time is spread out and no one function is "the" problem).
const BOTTLENECK_MIN_SHARE: f64 = 0.15;
/// Repeated work: a child called at least this many times per parent call
/// (median over the parent calls that call it) ...
const REPEAT_MIN_PER_PARENT: f64 = 10.0;
/// ... by at least this many parent calls (one parent call is a driver
/// loop, not N+1).
const REPEAT_MIN_PARENTS: i64 = 3;
/// Latency outliers: p99 at least this many times p50 ...
const OUTLIER_MIN_RATIO: f64 = 10.0;
/// ... over at least this many calls.
const OUTLIER_MIN_CALLS: i64 = 100;
/// Bimodal durations need this many calls for a two-mode fit.
const BIMODAL_MIN_CALLS: u64 = 50;
/// Waiting: CPU time under this share of wall time ...
const WAITING_MAX_CPU_SHARE: f64 = 0.3;
/// ... over at least this much wall time (fewer than ~5 expected samples
/// at 99 Hz says nothing).
const WAITING_MIN_WALL_NS: f64 = 50e6;
/// Polling: at least this many calls on one thread ...
const POLL_MIN_CALLS: usize = 20;
/// ... spaced regularly (robust spread of the gaps / their median) ...
const POLL_MAX_SPREAD: f64 = 0.25;
/// ... with the function busy at most this share of the time between
/// calls (a tight loop is not polling).
const POLL_MAX_DUTY: f64 = 0.1;
/// ... at least this far apart (a faster regular cadence is a loop
/// doing other work between the calls, not a wait) ...
const POLL_MIN_GAP_NS: f64 = 1e6;
/// ... each call short.
const POLL_MAX_CALL_NS: f64 = 1e6;
/// Latency outliers are a rare tail: at most this share of the calls.
const OUTLIER_MAX_SLOW_SHARE: f64 = 0.1;

/// What one session's analysis found, before ranking.
#[derive(Debug, Default)]
pub struct Computed {
    pub findings: Vec<Finding>,
    pub notes: Vec<String>,
    /// Number of calls and functions in the session, for the summary.
    pub calls: i64,
    pub functions: usize,
    /// Sum of the durations of root calls, ns.
    pub root_ns: f64,
}

/// Per-function figures: the report's (exact or estimated) plus a fine
/// histogram of durations from one pass.
#[derive(Debug, Clone, Default)]
pub struct FnStats {
    pub id: u32,
    pub name: String,
    pub module: String,
    pub location: Option<String>,
    pub calls: f64,
    pub exact: bool,
    pub recorded: i64,
    pub total_ns: f64,
    pub self_ns: f64,
    pub p50_ns: f64,
    pub p99_ns: f64,
    pub max_ns: f64,
    /// Root calls' total duration (the function was a root of its thread).
    pub root_ns: f64,
    /// Duration of calls whose caller is another function (plus roots):
    /// the function's time without double counting its own recursion.
    pub inclusive_ns: f64,
    pub recursive: bool,
    pub hist: LogHist,
}

/// Durations in buckets of 1/16 of a doubling: enough to see two modes and
/// a tail, at 4 KB per function.
#[derive(Debug, Clone)]
pub struct LogHist {
    counts: Vec<u64>,
    n: u64,
}

const HIST_PER_DOUBLING: f64 = 16.0;
const HIST_BUCKETS: usize = 64 * 16;

impl Default for LogHist {
    fn default() -> Self {
        LogHist {
            counts: vec![0; HIST_BUCKETS],
            n: 0,
        }
    }
}

impl LogHist {
    fn bucket(ns: i64) -> usize {
        let v = (ns.max(1) as f64).log2() * HIST_PER_DOUBLING;
        (v as usize).min(HIST_BUCKETS - 1)
    }

    /// The lower edge of bucket `b` in log2(ns), plus half a bucket.
    fn center(b: usize) -> f64 {
        (b as f64 + 0.5) / HIST_PER_DOUBLING
    }

    pub fn add(&mut self, ns: i64) {
        self.counts[Self::bucket(ns)] += 1;
        self.n += 1;
    }

    pub fn len(&self) -> u64 {
        self.n
    }

    pub fn merge(&mut self, o: &LogHist) {
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
        self.n += o.n;
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The `q` quantile, ns (bucket centre; 1/16 doubling ≈ 4.4% wide).
    pub fn quantile(&self, q: f64) -> f64 {
        if self.n == 0 {
            return 0.0;
        }
        let rank = ((q * self.n as f64).ceil() as u64).clamp(1, self.n);
        let mut seen = 0;
        for (b, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::center(b).exp2();
            }
        }
        0.0
    }

    /// A two-component Gaussian mixture on log2(duration), by EM over the
    /// buckets, compared with one Gaussian by BIC.
    pub fn two_modes(&self) -> Option<TwoModes> {
        if self.n < BIMODAL_MIN_CALLS {
            return None;
        }
        let pts: Vec<(f64, f64)> = self
            .counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(b, &c)| (Self::center(b), c as f64))
            .collect();
        let n = self.n as f64;
        let mean = pts.iter().map(|(x, w)| x * w).sum::<f64>() / n;
        // A bucket's own width is the least spread a mode can have.
        let floor = 1.0 / HIST_PER_DOUBLING;
        let var =
            (pts.iter().map(|(x, w)| w * (x - mean).powi(2)).sum::<f64>() / n).max(floor * floor);
        let ll1: f64 = pts.iter().map(|(x, w)| w * ln_normal(*x, mean, var)).sum();
        // Start the two means at the 25th and 75th percentiles.
        let q = |p: f64| self.quantile(p).log2();
        let (mut m, mut v, mut pi) = ([q(0.1), q(0.9)], [var, var], [0.5, 0.5]);
        if (m[1] - m[0]).abs() < floor {
            return None;
        }
        let mut ll2 = f64::NEG_INFINITY;
        for _ in 0..200 {
            let mut r = [[0.0; 2]; 2]; // [component][w, wx]
            let mut s2 = [0.0; 2];
            let mut ll = 0.0;
            let resp: Vec<[f64; 2]> = pts
                .iter()
                .map(|(x, w)| {
                    let a = pi[0] * ln_normal(*x, m[0], v[0]).exp();
                    let b = pi[1] * ln_normal(*x, m[1], v[1]).exp();
                    let t = (a + b).max(1e-300);
                    ll += w * t.ln();
                    [a / t, b / t]
                })
                .collect();
            for ((x, w), g) in pts.iter().zip(&resp) {
                for k in 0..2 {
                    r[k][0] += w * g[k];
                    r[k][1] += w * g[k] * x;
                }
            }
            for k in 0..2 {
                if r[k][0] <= 0.0 {
                    return None;
                }
                m[k] = r[k][1] / r[k][0];
                pi[k] = r[k][0] / n;
            }
            for ((x, w), g) in pts.iter().zip(&resp) {
                for k in 0..2 {
                    s2[k] += w * g[k] * (x - m[k]).powi(2);
                }
            }
            for k in 0..2 {
                v[k] = (s2[k] / r[k][0]).max(floor * floor);
            }
            if (ll - ll2).abs() < 1e-9 * ll.abs().max(1.0) {
                ll2 = ll;
                break;
            }
            ll2 = ll;
        }
        let (lo, hi) = if m[0] <= m[1] { (0, 1) } else { (1, 0) };
        // BIC: 2 parameters for one Gaussian, 5 for the mixture.
        let bic1 = -2.0 * ll1 + 2.0 * n.ln();
        let bic2 = -2.0 * ll2 + 5.0 * n.ln();
        let ashman_d = 2f64.sqrt() * (m[hi] - m[lo]).abs() / (v[0] + v[1]).sqrt();
        Some(TwoModes {
            low_ns: m[lo].exp2(),
            high_ns: m[hi].exp2(),
            low_weight: pi[lo],
            high_weight: pi[hi],
            ashman_d,
            bic_gain: bic1 - bic2,
        })
    }
}

fn ln_normal(x: f64, m: f64, v: f64) -> f64 {
    -0.5 * ((x - m).powi(2) / v + v.ln() + std::f64::consts::TAU.ln())
}

/// A two-mode fit of one function's durations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TwoModes {
    pub low_ns: f64,
    pub high_ns: f64,
    pub low_weight: f64,
    pub high_weight: f64,
    /// Ashman's D: above 2, the modes are cleanly separated.
    pub ashman_d: f64,
    /// BIC of one Gaussian minus BIC of two (positive: two fit better).
    pub bic_gain: f64,
}

impl TwoModes {
    /// Two real modes: separated, both substantial, at least 3× apart,
    /// and the mixture much better than one Gaussian.
    pub fn is_bimodal(&self) -> bool {
        self.ashman_d > 2.0
            && self.low_weight.min(self.high_weight) >= 0.1
            && self.high_ns >= 3.0 * self.low_ns
            && self.bic_gain > 10.0
    }
}

/// One parent function → child function edge: how often, how long.
#[derive(Debug, Clone, Copy, Default)]
struct Edge {
    calls: i64,
    parents: i64,
    child_ns: f64,
}

/// Every finding of the store's selected session (one session; the caller
/// narrows the store), in a fixed number of scans of `calls` whatever the
/// number of functions: the report's; durations and call ids; the
/// caller → callee edges; and one scan of every candidate's calls, where
/// each kind takes the rows of its own candidates. `status` hears the name
/// of each step as it starts.
pub fn compute(store: &Store, status: &dyn Fn(&str)) -> Result<Computed> {
    let mut out = Computed::default();
    status("the report's figures");
    let mut fns = function_stats(store)?;
    status("durations and call ids");
    let map = CallFunctions::sized(store)?.map(Arc::new);
    let threads = durations(store, map.clone(), &mut fns)?;
    out.functions = fns.len();
    out.calls = fns.values().map(|f| f.recorded).sum();
    let samples = Samples::load(store)?.map(Arc::new);
    // The scheduler's own account (`--sched`) of when each thread was off
    // its CPU: exact where samples only estimate.
    let offcpu = OffcpuStats::load(store)?;
    if samples.is_none() && offcpu.is_none() {
        out.notes.push(
            "waiting: this session has no on-CPU samples (`samples`), so wall time cannot be compared with CPU time; record without --no-samples".to_string(),
        );
    }
    let recorded: FxHashMap<u32, i64> = fns.values().map(|f| (f.id, f.recorded)).collect();
    let mut cands = Candidates::early(&fns, &threads, samples.is_some());
    status(&format!(
        "caller → callee edges, and the calls of {} tails and {} polled functions",
        cands.slow_cut.len(),
        cands.poll_thread.len()
    ));
    let (edges, mut got) = edges_and_early(store, map.clone(), samples.clone(), &cands, &recorded)?;
    for ((p, c), e) in &edges {
        if p == c {
            if let Some(f) = fns.get_mut(c) {
                f.recursive = true;
            }
        } else if let Some(f) = fns.get_mut(c) {
            f.inclusive_ns += e.child_ns;
        }
    }
    for f in fns.values_mut() {
        f.inclusive_ns += f.root_ns;
    }
    out.root_ns = fns.values().map(|f| f.root_ns).sum();
    let total_self: f64 = fns.values().map(|f| f.self_ns.max(0.0)).sum();

    bottlenecks(&fns, total_self, out.root_ns, &mut out.findings);
    bimodal(&fns, total_self, &mut out.findings);

    let late = cands.late(&fns, &edges, map.is_some());
    if !late.is_empty() {
        status(&format!(
            "the calls of {} repeated-work edges and {} recursive functions",
            cands.repeated.len(),
            late.values().filter(|w| *w & WANT_RECURSION != 0).count()
        ));
        let ctx = ScanContext {
            want: cands.table(&late),
            repeated: cands.repeated.clone(),
            map: map.clone(),
            samples: None,
        };
        got.merge(gather_scan(store, ctx, &late, &recorded)?);
    }
    drop(map);
    status("repeated work");
    repeated_work(
        store,
        &fns,
        &edges,
        &cands,
        &got,
        out.root_ns,
        &mut out.findings,
    )?;
    status("recursion");
    recursion(&fns, got.recursion, out.root_ns, &mut out.findings);
    outliers(&fns, &cands, &got.slow, total_self, &mut out.findings);
    match &offcpu {
        Some(o) => waiting_off_cpu(&fns, o, out.root_ns, &mut out.findings),
        None => waiting(&fns, &cands, &got.waits, out.root_ns, &mut out.findings),
    }
    status("polling");
    polling(&fns, &cands, got.polls, out.root_ns, &mut out.findings);
    Ok(out)
}

/// Per function: the report's figures (estimates for sampled functions).
fn function_stats(store: &Store) -> Result<FxHashMap<u32, FnStats>> {
    let mut fns: FxHashMap<u32, FnStats> = FxHashMap::default();
    let mut by_name: FxHashMap<(String, String), u32> = FxHashMap::default();
    for b in store.sql("SELECT function_id, name, module, file, line FROM functions")? {
        let id = cols::i64s(&b, "function_id")?;
        let name = cols::strs(&b, "name")?;
        let module = cols::strs(&b, "module")?;
        let file = cols::strs(&b, "file")?;
        let line = cols::i64s(&b, "line")?;
        for i in 0..b.num_rows() {
            let id = id[i].unwrap_or(0) as u32;
            let location = file[i].as_ref().map(|f| {
                let base = f.rsplit('/').next().unwrap_or(f);
                match line[i] {
                    Some(l) if l > 0 => format!("{base}:{l}"),
                    _ => base.to_string(),
                }
            });
            let f = FnStats {
                id,
                name: name[i].clone().unwrap_or_default(),
                module: module[i].clone().unwrap_or_default(),
                location,
                ..FnStats::default()
            };
            by_name.insert((f.name.clone(), f.module.clone()), id);
            fns.insert(id, f);
        }
    }
    let rep = report::report(store, &ReportOptions::every_function())?;
    for r in &rep.rows {
        let Some(id) = by_name.get(&(r.key.clone(), r.module.clone())) else {
            continue;
        };
        let f = fns.get_mut(id).expect("ids come from the same table");
        f.calls = r.calls.unwrap_or(r.recorded as f64);
        f.exact = r.exact;
        f.recorded = r.recorded;
        f.total_ns = r.total_ns.unwrap_or(0.0);
        f.self_ns = r.self_ns.unwrap_or(0.0);
        f.p50_ns = r.p50_ns.unwrap_or(0.0);
        f.p99_ns = r.p99_ns.unwrap_or(0.0);
        f.max_ns = r.max_ns.unwrap_or(0.0);
    }
    Ok(fns)
}

/// Per-function state in a scan, by function id: a table for the small
/// dense ids the agent assigns, a hash map past them.
struct ByFunction<T> {
    slot: Vec<u32>,
    sparse: FxHashMap<u32, u32>,
    items: Vec<(u32, T)>,
}

impl<T: Default> ByFunction<T> {
    const DENSE: u32 = 1 << 20;

    fn get(&mut self, id: u32) -> &mut T {
        let next = self.items.len() as u32;
        let i = if id < Self::DENSE {
            let k = id as usize;
            if k >= self.slot.len() {
                self.slot.resize(k + 1, u32::MAX);
            }
            if self.slot[k] == u32::MAX {
                self.slot[k] = next;
            }
            self.slot[k]
        } else {
            *self.sparse.entry(id).or_insert(next)
        };
        if i == next {
            self.items.push((id, T::default()));
        }
        &mut self.items[i as usize].1
    }
}

impl<T> Default for ByFunction<T> {
    fn default() -> Self {
        ByFunction {
            slot: Vec::new(),
            sparse: FxHashMap::default(),
            items: Vec::new(),
        }
    }
}

/// What the durations scan sums per function.
#[derive(Default)]
struct FnScan {
    hist: LogHist,
    root_ns: f64,
}

/// (function id, thread id) in one key.
fn fn_tid(f: u32, tid: u32) -> u64 {
    (f as u64) << 32 | tid as u64
}

/// The scan of every call's duration: each function's histogram of
/// durations and its root calls' time (into `fns`), the call id → function
/// table (when `map` is given), and the calls with a duration per
/// (function, thread), which is returned.
fn durations(
    store: &Store,
    map: Option<Arc<CallFunctions>>,
    fns: &mut FxHashMap<u32, FnStats>,
) -> Result<FxHashMap<u64, u64>> {
    #[derive(Default)]
    struct Part {
        fns: ByFunction<FnScan>,
        threads: FxHashMap<u64, u64>,
    }
    let parts = store.fold_partitions(
        "SELECT call_id, function_id, tid, duration_ns, parent_call_id FROM calls",
        Part::default,
        move |p: &mut Part, b| {
            let id = cols::u64_array(b, "call_id")?;
            let func = cols::u32_array(b, "function_id")?;
            let tid = cols::u32_array(b, "tid")?;
            let d = cols::i64_array(b, "duration_ns")?;
            let parent = cols::u64_array(b, "parent_call_id")?;
            for i in 0..b.num_rows() {
                if func.is_null(i) {
                    continue;
                }
                let f = func.value(i);
                if let Some(map) = &map
                    && id.is_valid(i)
                {
                    map.set(id.value(i), f);
                }
                if d.is_null(i) {
                    continue;
                }
                let s = p.fns.get(f);
                s.hist.add(d.value(i));
                if parent.is_null(i) {
                    s.root_ns += d.value(i) as f64;
                }
                *p.threads.entry(fn_tid(f, tid.value(i))).or_default() += 1;
            }
            Ok(())
        },
    )?;
    let mut threads: FxHashMap<u64, u64> = FxHashMap::default();
    for p in parts {
        for (id, s) in p.fns.items {
            if let Some(f) = fns.get_mut(&id) {
                f.hist.merge(&s.hist);
                f.root_ns += s.root_ns;
            }
        }
        for (k, n) in p.threads {
            *threads.entry(k).or_default() += n;
        }
    }
    fns.retain(|_, f| f.recorded > 0 || f.calls > 0.0);
    Ok(threads)
}

/// Each call's function, indexed by call id (ids are assigned at entry,
/// counting up from the session's first call): what turns a child's
/// `parent_call_id` into its caller's function without joining `calls`
/// with itself (a hash join of every call, which does not spill). Filled
/// by the durations scan, from every partition at once.
pub struct CallFunctions {
    base: u64,
    /// function id + 1; 0: no such call recorded.
    f: Vec<AtomicU32>,
}

impl CallFunctions {
    /// Ids spread over more than this many slots per call fall back to SQL.
    const MAX_SLOTS_PER_CALL: u64 = 4;

    /// An empty table over the session's range of call ids; `None` when
    /// the ids are too sparse for a dense table.
    pub fn sized(store: &Store) -> Result<Option<CallFunctions>> {
        let mut range = None;
        for b in
            store.sql("SELECT min(call_id) AS lo, max(call_id) AS hi, count(*) AS n FROM calls")?
        {
            let lo = cols::i64s(&b, "lo")?;
            let hi = cols::i64s(&b, "hi")?;
            let n = cols::i64s(&b, "n")?;
            if let (Some(lo), Some(hi), Some(n)) = (lo[0], hi[0], n[0]) {
                range = Some((lo as u64, hi as u64, n as u64));
            }
        }
        let Some((lo, hi, n)) = range else {
            return Ok(Some(CallFunctions {
                base: 0,
                f: Vec::new(),
            }));
        };
        let slots = hi - lo + 1;
        if slots > n.max(1) * Self::MAX_SLOTS_PER_CALL || slots > u32::MAX as u64 {
            return Ok(None);
        }
        Ok(Some(CallFunctions {
            base: lo,
            f: (0..slots).map(|_| AtomicU32::new(0)).collect(),
        }))
    }

    fn set(&self, id: u64, func: u32) {
        if let Some(slot) = id
            .checked_sub(self.base)
            .and_then(|i| self.f.get(i as usize))
        {
            slot.store(func.saturating_add(1), Ordering::Relaxed);
        }
    }

    /// The function of call `id`, if it was recorded.
    pub fn get(&self, id: u64) -> Option<u32> {
        let i = id.checked_sub(self.base)? as usize;
        match self.f.get(i).map(|v| v.load(Ordering::Relaxed)) {
            Some(v) if v > 0 => Some(v - 1),
            _ => None,
        }
    }
}

/// Parent function → child function, as `fn_tid(parent, child)`: the
/// edge, and the last parent call seen (one partition's).
type EdgeParts = FxHashMap<u64, (Edge, u64)>;

/// (parent function, child function) → their edge.
type Edges = FxHashMap<(u32, u32), Edge>;

/// Adds a batch of `parent_call_id, function_id, duration_ns` to the
/// edges: calls, distinct parent calls, the children's time. Children of
/// one parent call are counted once by remembering the last parent seen
/// per edge (rows of one parent are not always adjacent, so this is an
/// upper bound fixed by the exact per-parent counts of the candidates).
fn add_edges(map: &CallFunctions, parts: &mut EdgeParts, b: &RecordBatch) -> Result<()> {
    let parent = cols::u64_array(b, "parent_call_id")?;
    let func = cols::u32_array(b, "function_id")?;
    let d = cols::i64_array(b, "duration_ns")?;
    for i in 0..b.num_rows() {
        if parent.is_null(i) || func.is_null(i) {
            continue;
        }
        let pc = parent.value(i);
        let Some(pf) = map.get(pc) else {
            continue;
        };
        let (e, last) = parts
            .entry(fn_tid(pf, func.value(i)))
            .or_insert((Edge::default(), u64::MAX));
        e.calls += 1;
        if d.is_valid(i) {
            e.child_ns += d.value(i).max(0) as f64;
        }
        if *last != pc {
            *last = pc;
            e.parents += 1;
        }
    }
    Ok(())
}

fn merge_edges(into: &mut EdgeParts, from: EdgeParts) {
    for (k, (e, _)) in from {
        let (o, _) = into.entry(k).or_insert((Edge::default(), u64::MAX));
        o.calls += e.calls;
        o.parents += e.parents;
        o.child_ns += e.child_ns;
    }
}

fn edge_map(parts: EdgeParts) -> FxHashMap<(u32, u32), Edge> {
    parts
        .into_iter()
        .map(|(k, (e, _))| (((k >> 32) as u32, k as u32), e))
        .collect()
}

/// [`edges`] by joining `calls` with itself (sparse call ids).
fn edges_sql(store: &Store) -> Result<FxHashMap<(u32, u32), Edge>> {
    let mut out = FxHashMap::default();
    for b in store.sql(
        "SELECT p.function_id AS pf, c.function_id AS cf, count(*) AS calls, \
           count(DISTINCT c.parent_call_id) AS parents, sum(c.duration_ns) AS child_ns \
         FROM calls c JOIN calls p \
           ON p.call_id = c.parent_call_id AND p.session_id = c.session_id \
         GROUP BY p.function_id, c.function_id",
    )? {
        let pf = cols::i64s(&b, "pf")?;
        let cf = cols::i64s(&b, "cf")?;
        let calls = cols::i64s(&b, "calls")?;
        let parents = cols::i64s(&b, "parents")?;
        let ns = cols::f64s(&b, "child_ns")?;
        for i in 0..b.num_rows() {
            out.insert(
                (pf[i].unwrap_or(0) as u32, cf[i].unwrap_or(0) as u32),
                Edge {
                    calls: calls[i].unwrap_or(0),
                    parents: parents[i].unwrap_or(0),
                    child_ns: ns[i].unwrap_or(0.0),
                },
            );
        }
    }
    Ok(out)
}

/// Calls of `child` per call of `parent` by joining `calls` with itself
/// (sparse call ids; with a dense table the candidates' scan counts them).
fn per_parent_sql(store: &Store, parent: u32, child: u32) -> Result<Vec<i64>> {
    let mut per = Vec::new();
    for b in store.sql(&format!(
        "SELECT count(*) AS n FROM calls c JOIN calls p \
           ON p.call_id = c.parent_call_id AND p.session_id = c.session_id \
         WHERE p.function_id = {parent} AND c.function_id = {child} GROUP BY c.parent_call_id"
    ))? {
        per.extend(cols::i64s(&b, "n")?.into_iter().flatten());
    }
    Ok(per)
}

/// The on-CPU samples of the session, per thread in time order.
struct Samples(FxHashMap<i64, Vec<i64>>);

impl Samples {
    fn load(store: &Store) -> Result<Option<Samples>> {
        if !store.has_table("samples") {
            return Ok(None);
        }
        let mut per: FxHashMap<i64, Vec<i64>> = FxHashMap::default();
        for b in store.stream("SELECT tid, time_ns FROM samples")? {
            let b = b?;
            let tid = cols::i64_array(&b, "tid")?;
            let t = cols::i64_array(&b, "time_ns")?;
            for i in 0..b.num_rows() {
                if tid.is_valid(i) && t.is_valid(i) {
                    per.entry(tid.value(i)).or_default().push(t.value(i));
                }
            }
        }
        for v in per.values_mut() {
            v.sort_unstable();
        }
        Ok(Some(Samples(per)))
    }

    /// Samples of thread `tid` at `from..to`.
    fn count(&self, tid: i64, from: i64, to: i64) -> i64 {
        self.0.get(&tid).map_or(0, |v| {
            (v.partition_point(|&t| t < to) - v.partition_point(|&t| t < from)) as i64
        })
    }
}

/// The functions (and edges) whose calls each kind of finding must look
/// at. The tails, waits and polled calls are chosen from the durations
/// scan and gathered during the edges scan; repeated work and recursion
/// need the edges, and get a scan of their own when there are any.
#[derive(Default)]
struct Candidates {
    /// Per function id, which kinds want its calls (`WANT_*` bits).
    want: FxHashMap<u32, u8>,
    /// Repeated work: (parent, child) edges, as `fn_tid(parent, child)`.
    repeated: FxHashSet<u64>,
    /// Repeated-work edges when call ids are sparse (one join each).
    repeated_sql: Vec<(u32, u32)>,
    /// Latency outliers: the duration above which a call is slow.
    slow_cut: FxHashMap<u32, i64>,
    /// Polling: the thread with most calls, and their number.
    poll_thread: FxHashMap<u32, (i64, u64)>,
    /// Whether the session has on-CPU samples.
    samples: bool,
}

const WANT_REPEATED: u8 = 1;
const WANT_RECURSION: u8 = 2;
const WANT_SLOW: u8 = 4;
const WANT_WAIT: u8 = 8;
const WANT_POLL: u8 = 16;

/// Polling keeps every call of a candidate on its busiest thread; past
/// this many in all, the candidates are read in more than one scan.
const POLL_ROWS_PER_SCAN: u64 = 16 << 20;
/// Waiting looks at the functions with the most time, at most this many.
const WAITING_MAX_CANDIDATES: usize = 64;

impl Candidates {
    /// Tails, waits and polling, from the durations scan (recursive
    /// functions are not known yet: their results are dropped later).
    fn early(fns: &FxHashMap<u32, FnStats>, threads: &FxHashMap<u64, u64>, samples: bool) -> Self {
        let mut c = Candidates {
            samples,
            ..Candidates::default()
        };
        for f in fns.values() {
            if f.recorded >= OUTLIER_MIN_CALLS && !f.hist.is_empty() {
                let p50 = f.hist.quantile(0.5);
                let p99 = f.hist.quantile(0.99);
                // Two modes are the bimodal finding's, not a tail.
                if p50 > 0.0
                    && p99 >= OUTLIER_MIN_RATIO * p50
                    && !f.hist.two_modes().is_some_and(|m| m.is_bimodal())
                {
                    c.slow_cut.insert(f.id, (OUTLIER_MIN_RATIO * p50) as i64);
                    *c.want.entry(f.id).or_default() |= WANT_SLOW;
                }
            }
            if (POLL_MIN_CALLS as i64..=1_000_000).contains(&f.recorded) {
                c.poll_thread.insert(f.id, (0, 0));
            }
            // Which functions wait is decided by their time, known after
            // the edges: every function's long calls are counted.
            if samples && f.recorded > 0 {
                *c.want.entry(f.id).or_default() |= WANT_WAIT;
            }
        }
        // Polling: the thread with the most calls (the lowest tid of a tie).
        for (&k, &n) in threads {
            let (f, tid) = ((k >> 32) as u32, (k as u32) as i64);
            if let Some(t) = c.poll_thread.get_mut(&f)
                && (n > t.1 || (n == t.1 && tid < t.0))
            {
                *t = (tid, n);
            }
        }
        c.poll_thread.retain(|_, t| t.1 >= POLL_MIN_CALLS as u64);
        for &f in c.poll_thread.keys() {
            *c.want.entry(f).or_default() |= WANT_POLL;
        }
        c
    }

    /// Repeated work and recursion, from the edges; the wants of the scan
    /// they need (empty: no scan).
    fn late(
        &mut self,
        fns: &FxHashMap<u32, FnStats>,
        edges: &FxHashMap<(u32, u32), Edge>,
        dense: bool,
    ) -> FxHashMap<u32, u8> {
        let mut want: FxHashMap<u32, u8> = FxHashMap::default();
        for (&(pf, cf), e) in edges {
            if pf == cf || e.parents < REPEAT_MIN_PARENTS {
                continue;
            }
            if (e.calls as f64) / (e.parents as f64) < REPEAT_MIN_PER_PARENT / 2.0 {
                continue;
            }
            if !fns.contains_key(&pf) || !fns.contains_key(&cf) {
                continue;
            }
            if dense {
                self.repeated.insert(fn_tid(pf, cf));
                *want.entry(cf).or_default() |= WANT_REPEATED;
            } else {
                self.repeated_sql.push((pf, cf));
            }
        }
        for f in fns.values().filter(|f| f.recursive) {
            *want.entry(f.id).or_default() |= WANT_RECURSION;
        }
        want
    }

    /// Waiting's candidates: the non-recursive functions with the most
    /// time, from [`WAITING_MIN_WALL_NS`].
    fn waiting(fns: &FxHashMap<u32, FnStats>) -> FxHashSet<u32> {
        let mut by_time: Vec<&FnStats> = fns
            .values()
            .filter(|f| !f.recursive && f.inclusive_ns >= WAITING_MIN_WALL_NS)
            .collect();
        by_time.sort_by(|a, b| {
            b.inclusive_ns
                .total_cmp(&a.inclusive_ns)
                .then(a.id.cmp(&b.id))
        });
        by_time
            .into_iter()
            .take(WAITING_MAX_CANDIDATES)
            .map(|f| f.id)
            .collect()
    }

    /// The early wants in scans: polling's rows split into groups of at
    /// most [`POLL_ROWS_PER_SCAN`]; the first group has every other
    /// kind's wants too.
    fn early_groups(&self) -> Vec<FxHashMap<u32, u8>> {
        let mut polled: Vec<(&u32, &(i64, u64))> = self.poll_thread.iter().collect();
        polled.sort();
        let mut group_of: FxHashMap<u32, usize> = FxHashMap::default();
        let (mut g, mut rows) = (0, 0u64);
        for (&f, &(_, n)) in polled {
            if rows > 0 && rows + n > POLL_ROWS_PER_SCAN {
                g += 1;
                rows = 0;
            }
            rows += n;
            group_of.insert(f, g);
        }
        let mut groups = vec![FxHashMap::default(); g + 1];
        for (&f, &w) in &self.want {
            let pg = group_of.get(&f).copied();
            let first = w & !WANT_POLL | if pg == Some(0) { WANT_POLL } else { 0 };
            if first != 0 {
                groups[0].insert(f, first);
            }
            if let Some(pg) = pg.filter(|&pg| pg > 0) {
                groups[pg].insert(f, WANT_POLL);
            }
        }
        groups
    }

    /// `wants` as the scan's table.
    fn table(&self, wants: &FxHashMap<u32, u8>) -> WantTable {
        WantTable::new(
            wants
                .iter()
                .map(|(&f, &bits)| {
                    let w = Want {
                        bits,
                        slow_cut: self.slow_cut.get(&f).copied().unwrap_or(i64::MAX),
                        poll_tid: self.poll_thread.get(&f).map_or(-1, |t| t.0),
                    };
                    (f, w)
                })
                .collect(),
        )
    }
}

/// A latency outlier's slow calls: how many, their time, the slowest
/// three (duration, call id, tid), the on-CPU samples inside them.
#[derive(Default, Clone)]
struct Slow {
    calls: i64,
    ns: f64,
    slowest: Vec<(i64, i64, i64)>,
    samples: i64,
}

/// What the candidates' scan gathered, per kind.
#[derive(Default)]
struct Gathered {
    /// Repeated work: (edge as `fn_tid(parent, child)`, parent call) →
    /// the child's calls in it.
    per_parent: FxHashMap<(u64, u64), i64>,
    /// Recursion: (depth, call id, parent call id, duration) per function.
    recursion: FxHashMap<u32, Vec<(i64, u64, u64, i64)>>,
    slow: FxHashMap<u32, Slow>,
    /// Waiting: calls of a sample period or longer: (wall ns, samples).
    waits: FxHashMap<u32, (f64, i64)>,
    /// Polling: (start, duration) of the calls on the busiest thread.
    polls: FxHashMap<u32, Vec<(i64, i64)>>,
}

impl Gathered {
    fn merge(&mut self, o: Gathered) {
        for (k, n) in o.per_parent {
            *self.per_parent.entry(k).or_default() += n;
        }
        for (k, v) in o.recursion {
            self.recursion.entry(k).or_default().extend(v);
        }
        for (k, s) in o.slow {
            let t = self.slow.entry(k).or_default();
            t.calls += s.calls;
            t.ns += s.ns;
            t.samples += s.samples;
            t.slowest.extend(s.slowest);
            keep_slowest(&mut t.slowest);
        }
        for (k, (w, n)) in o.waits {
            let t = self.waits.entry(k).or_default();
            t.0 += w;
            t.1 += n;
        }
        for (k, v) in o.polls {
            self.polls.entry(k).or_default().extend(v);
        }
    }
}

/// The three slowest, slowest first (ties: the lower call id).
fn keep_slowest(v: &mut Vec<(i64, i64, i64)>) {
    v.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    v.truncate(3);
}

/// A scan of the calls `wants` names (all of them, when they make more
/// than a tenth of the rows: such a filter costs more than it saves),
/// each row handed to the kinds that asked for its function.
fn gather_scan(
    store: &Store,
    ctx: ScanContext,
    wants: &FxHashMap<u32, u8>,
    recorded: &FxHashMap<u32, i64>,
) -> Result<Gathered> {
    let all_rows: i64 = recorded.values().sum();
    let mut ids: Vec<u32> = wants.keys().copied().collect();
    ids.sort_unstable();
    let rows: i64 = ids.iter().filter_map(|f| recorded.get(f)).sum();
    let filter = if rows * 10 > all_rows {
        String::new()
    } else {
        let list: Vec<String> = ids.iter().map(|f| f.to_string()).collect();
        format!(" WHERE function_id IN ({})", list.join(","))
    };
    let any = |bit: u8| wants.values().any(|w| w & bit != 0);
    let mut columns = "call_id, function_id, tid, start_ns, duration_ns".to_string();
    if any(WANT_REPEATED | WANT_RECURSION) {
        columns.push_str(", parent_call_id");
    }
    if any(WANT_RECURSION) {
        columns.push_str(", depth");
    }
    let ctx = Arc::new(ctx);
    let parts = store.fold_partitions(
        &format!("SELECT {columns} FROM calls{filter}"),
        Gathered::default,
        move |acc, b| ctx.gather(acc, b),
    )?;
    let mut out = Gathered::default();
    for p in parts {
        out.merge(p);
    }
    Ok(out)
}

/// The edges (see [`edges`]) and, in the same scan, the rows of the early
/// candidates' first group; the other groups in scans of their own.
fn edges_and_early(
    store: &Store,
    map: Option<Arc<CallFunctions>>,
    samples: Option<Arc<Samples>>,
    cands: &Candidates,
    recorded: &FxHashMap<u32, i64>,
) -> Result<(Edges, Gathered)> {
    let mut groups = cands.early_groups().into_iter();
    let first = groups.next().unwrap_or_default();
    let context = |wants: &FxHashMap<u32, u8>| ScanContext {
        want: cands.table(wants),
        repeated: FxHashSet::default(),
        map: map.clone(),
        samples: samples.clone(),
    };
    let (edges, mut got) = match &map {
        Some(m) => {
            let ctx = context(&first);
            let m = m.clone();
            let parts = store.fold_partitions(
                "SELECT call_id, parent_call_id, function_id, tid, start_ns, duration_ns FROM calls",
                <(EdgeParts, Gathered)>::default,
                move |acc, b| {
                    add_edges(&m, &mut acc.0, b)?;
                    ctx.gather(&mut acc.1, b)
                },
            )?;
            let mut edges = EdgeParts::default();
            let mut got = Gathered::default();
            for (e, g) in parts {
                merge_edges(&mut edges, e);
                got.merge(g);
            }
            (edge_map(edges), got)
        }
        None => {
            let edges = edges_sql(store)?;
            let got = if first.is_empty() {
                Gathered::default()
            } else {
                gather_scan(store, context(&first), &first, recorded)?
            };
            (edges, got)
        }
    };
    for wants in groups.filter(|g| !g.is_empty()) {
        got.merge(gather_scan(store, context(&wants), &wants, recorded)?);
    }
    Ok((edges, got))
}

/// What the candidates' scan wants of one function's calls.
#[derive(Clone, Copy, Default)]
struct Want {
    /// `WANT_*` bits; 0: nothing.
    bits: u8,
    /// Latency outliers: calls longer than this are slow.
    slow_cut: i64,
    /// Polling: the thread whose calls are kept.
    poll_tid: i64,
}

/// [`Want`] by function id: a table for the small dense ids the agent
/// assigns (one load per row), a hash map past them.
enum WantTable {
    Dense(Vec<Want>),
    Sparse(FxHashMap<u32, Want>),
}

impl WantTable {
    fn new(wants: Vec<(u32, Want)>) -> Self {
        let top = wants.iter().map(|w| w.0).max().unwrap_or(0);
        if top < 1 << 20 {
            let mut v = vec![Want::default(); top as usize + 1];
            for (f, w) in wants {
                v[f as usize] = w;
            }
            WantTable::Dense(v)
        } else {
            WantTable::Sparse(wants.into_iter().collect())
        }
    }

    fn get(&self, f: u32) -> Option<&Want> {
        match self {
            WantTable::Dense(v) => v.get(f as usize).filter(|w| w.bits != 0),
            WantTable::Sparse(m) => m.get(&f),
        }
    }
}

/// What each row of the candidates' scan is checked against.
struct ScanContext {
    want: WantTable,
    repeated: FxHashSet<u64>,
    map: Option<Arc<CallFunctions>>,
    samples: Option<Arc<Samples>>,
}

impl ScanContext {
    fn gather(&self, acc: &mut Gathered, b: &RecordBatch) -> Result<()> {
        let id = cols::u64_array(b, "call_id")?;
        let func = cols::u32_array(b, "function_id")?;
        let tid = cols::u32_array(b, "tid")?;
        let start = cols::i64_array(b, "start_ns")?;
        let dur = cols::i64_array(b, "duration_ns")?;
        // Only the scans of repeated work and recursion read these.
        let parent = match b.column_by_name("parent_call_id") {
            Some(_) => Some(cols::u64_array(b, "parent_call_id")?),
            None => None,
        };
        let depth = match b.column_by_name("depth") {
            Some(_) => Some(cols::i64_array(b, "depth")?),
            None => None,
        };
        let in_cpu = |tid: i64, s: i64, d: i64| {
            self.samples
                .as_ref()
                .map_or(0, |smp| smp.count(tid, s, s.saturating_add(d)))
        };
        let min_wait = (1e9 / SAMPLE_HZ) as i64;
        for i in 0..b.num_rows() {
            if func.is_null(i) {
                continue;
            }
            let f = func.value(i);
            let Some(&Want {
                bits: want,
                slow_cut,
                poll_tid,
            }) = self.want.get(f)
            else {
                continue;
            };
            let d = dur.is_valid(i).then(|| dur.value(i));
            let (t, s) = (tid.value(i) as i64, start.value(i));
            let parent_call = parent
                .as_ref()
                .and_then(|p| p.is_valid(i).then(|| p.value(i)));
            if want & WANT_REPEATED != 0
                && let (Some(pc), Some(map)) = (parent_call, &self.map)
                && let Some(pf) = map.get(pc)
                && self.repeated.contains(&fn_tid(pf, f))
            {
                *acc.per_parent.entry((fn_tid(pf, f), pc)).or_default() += 1;
            }
            if want & WANT_RECURSION != 0
                && let Some(depth) = &depth
            {
                acc.recursion.entry(f).or_default().push((
                    depth.value(i),
                    id.value(i),
                    parent_call.unwrap_or(0),
                    d.unwrap_or(0),
                ));
            }
            let Some(d) = d else {
                continue;
            };
            if want & WANT_SLOW != 0 && d > slow_cut {
                let x = acc.slow.entry(f).or_default();
                x.calls += 1;
                x.ns += d as f64;
                x.samples += in_cpu(t, s, d);
                if x.slowest.len() < 3 || d >= x.slowest[2].0 {
                    x.slowest.push((d, id.value(i) as i64, t));
                    keep_slowest(&mut x.slowest);
                }
            }
            if want & WANT_WAIT != 0 && d >= min_wait {
                let x = acc.waits.entry(f).or_default();
                x.0 += d as f64;
                x.1 += in_cpu(t, s, d);
            }
            if want & WANT_POLL != 0 && poll_tid == t {
                acc.polls.entry(f).or_default().push((s, d));
            }
        }
        Ok(())
    }
}

fn pct(x: f64) -> String {
    format!("{:.0}%", 100.0 * x)
}

fn count_evidence(f: &FnStats) -> Evidence {
    let mut e = Evidence::new("calls", f.calls, "calls");
    e.estimated = !f.exact;
    e
}

fn finding(kind: Kind, f: &FnStats, severity: f64, confidence: f64) -> Finding {
    Finding {
        id: String::new(),
        kind,
        function: f.name.clone(),
        related: None,
        severity: severity.clamp(0.0, 1.0),
        confidence: confidence.clamp(0.0, 1.0),
        evidence: Vec::new(),
        location: f.location.clone(),
        message: String::new(),
    }
}

/// Self time share; the share of top-level time spent inside the function.
fn bottlenecks(
    fns: &FxHashMap<u32, FnStats>,
    total_self: f64,
    root_ns: f64,
    out: &mut Vec<Finding>,
) {
    if total_self <= 0.0 {
        return;
    }
    for f in fns.values() {
        let share = f.self_ns / total_self;
        if share < BOTTLENECK_MIN_SHARE {
            continue;
        }
        let path = if root_ns > 0.0 {
            (f.inclusive_ns / root_ns).min(1.0)
        } else {
            0.0
        };
        let mut x = finding(Kind::Bottleneck, f, share, if f.exact { 0.95 } else { 0.7 });
        x.evidence = vec![
            Evidence::new("self_share", share, "ratio"),
            Evidence::new("self_ns", f.self_ns, "ns"),
            Evidence::new("critical_path_share", path, "ratio"),
            count_evidence(f),
        ];
        if !f.exact {
            x.evidence[1].estimated = true;
        }
        x.message = format!(
            "{} takes {} of all self time ({}{}) and is on {} of the top-level calls' time",
            f.name,
            pct(share),
            fmt_ns(f.self_ns),
            if f.exact { "" } else { ", estimated" },
            pct(path)
        );
        out.push(x);
    }
}

/// The value at rank `round(p × (n − 1))` of `v` (reordered), as a sort
/// would give it.
fn nearest_rank(v: &mut [i64], p: f64) -> i64 {
    let k = ((p * (v.len() - 1) as f64).round() as usize).min(v.len() - 1);
    *v.select_nth_unstable(k).1
}

/// The same child called many times per parent call.
fn repeated_work(
    store: &Store,
    fns: &FxHashMap<u32, FnStats>,
    edges: &FxHashMap<(u32, u32), Edge>,
    cands: &Candidates,
    got: &Gathered,
    root_ns: f64,
    out: &mut Vec<Finding>,
) -> Result<()> {
    // Calls of the child per call of the parent (parent calls that make
    // at least one), per candidate edge.
    let mut per: FxHashMap<(u32, u32), Vec<i64>> = FxHashMap::default();
    for (&(edge, _), &n) in &got.per_parent {
        per.entry(((edge >> 32) as u32, edge as u32))
            .or_default()
            .push(n);
    }
    for &(pf, cf) in &cands.repeated_sql {
        per.insert((pf, cf), per_parent_sql(store, pf, cf)?);
    }
    for ((pf, cf), mut per) in per {
        let (Some(parent), Some(child), Some(e)) =
            (fns.get(&pf), fns.get(&cf), edges.get(&(pf, cf)))
        else {
            continue;
        };
        if per.is_empty() {
            continue;
        }
        per.sort_unstable();
        let q = |p: f64| per[((p * (per.len() - 1) as f64).round() as usize).min(per.len() - 1)];
        let median = q(0.5) as f64;
        if median < REPEAT_MIN_PER_PARENT {
            continue;
        }
        let share = if root_ns > 0.0 {
            (e.child_ns / root_ns).min(1.0)
        } else {
            0.0
        };
        let mut x = finding(Kind::RepeatedWork, child, share, 0.9);
        x.related = Some(parent.name.clone());
        x.location = parent.location.clone();
        x.evidence = vec![
            Evidence::new("per_parent_median", median, "calls"),
            Evidence::new("per_parent_p90", q(0.9) as f64, "calls"),
            Evidence::new("per_parent_max", q(1.0) as f64, "calls"),
            Evidence::new("parent_calls", per.len() as f64, "calls"),
            Evidence::new("child_calls", e.calls as f64, "calls"),
            Evidence::new("child_ns", e.child_ns, "ns"),
            Evidence::new("time_share", share, "ratio"),
        ];
        x.message = format!(
            "{} calls {} {} times per call (median; p90 {}, max {}) over {} calls: {} of top-level time",
            parent.name,
            child.name,
            median,
            q(0.9),
            q(1.0),
            per.len(),
            pct(share)
        );
        out.push(x);
    }
    Ok(())
}

/// Deep recursion, and calls per recursion root growing faster than
/// linearly with its depth.
fn recursion(
    fns: &FxHashMap<u32, FnStats>,
    calls: FxHashMap<u32, Vec<(i64, u64, u64, i64)>>,
    root_ns: f64,
    out: &mut Vec<Finding>,
) {
    for (id, mut rows) in calls {
        let Some(f) = fns.get(&id) else {
            continue;
        };
        // By depth: a parent before its children (then by call id, which
        // counts up at entry, so the order is the same on every run).
        rows.sort_unstable();
        // Per call: its root's index and its depth below the root; roots
        // are calls whose parent is not f.
        let mut at: FxHashMap<u64, (usize, u32)> = FxHashMap::default();
        let mut roots: Vec<(u64, u32, i64)> = Vec::new(); // calls, max depth, root duration
        for &(_, id, parent, d) in &rows {
            let (r, level) = match at.get(&parent) {
                Some(&(r, l)) => (r, l + 1),
                None => {
                    roots.push((0, 0, d));
                    (roots.len() - 1, 0)
                }
            };
            at.insert(id, (r, level));
            roots[r].0 += 1;
            roots[r].1 = roots[r].1.max(level);
        }
        let max_depth = roots.iter().map(|r| r.1).max().unwrap_or(0);
        let max_calls = roots.iter().map(|r| r.0).max().unwrap_or(0);
        // Growth: slope of log(calls per root) over log(depth + 1).
        let pts: Vec<(f64, f64)> = roots
            .iter()
            .filter(|r| r.1 >= 2)
            .map(|r| (((r.1 + 1) as f64).ln(), (r.0 as f64).ln()))
            .collect();
        let slope = ls_slope(&pts);
        let explosive =
            slope.is_some_and(|s| s > 1.5) && max_calls as f64 > 4.0 * (max_depth as f64 + 1.0);
        let deep = max_depth >= 1000;
        if !explosive && !deep {
            continue;
        }
        let rec_ns: f64 = roots.iter().map(|r| r.2.max(0) as f64).sum();
        let share = if root_ns > 0.0 {
            (rec_ns / root_ns).min(1.0)
        } else {
            0.0
        };
        let mut x = finding(
            Kind::Recursion,
            f,
            if explosive { share.max(0.3) } else { share },
            if pts.len() >= 4 { 0.9 } else { 0.6 },
        );
        x.evidence = vec![
            Evidence::new("roots", roots.len() as f64, "calls"),
            Evidence::new("max_depth", max_depth as f64, "levels"),
            Evidence::new("max_calls_per_root", max_calls as f64, "calls"),
            Evidence::new("growth_slope", slope.unwrap_or(0.0), "log-log"),
            Evidence::new("time_share", share, "ratio"),
        ];
        x.message = if explosive {
            format!(
                "{} explodes: up to {} calls per root call at depth {} (calls grow as depth^{:.1}); {} of top-level time",
                f.name,
                max_calls,
                max_depth,
                slope.unwrap_or(0.0),
                pct(share)
            )
        } else {
            format!(
                "{} recurses {} levels deep ({} calls per root at most)",
                f.name, max_depth, max_calls
            )
        };
        out.push(x);
    }
}

/// Least-squares slope of y over x; None with fewer than 3 distinct x.
fn ls_slope(pts: &[(f64, f64)]) -> Option<f64> {
    let n = pts.len() as f64;
    if pts.len() < 3 {
        return None;
    }
    let mx = pts.iter().map(|p| p.0).sum::<f64>() / n;
    let my = pts.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 1e-12).then(|| sxy / sxx)
}

/// p99 far above p50, with the slowest calls named.
fn outliers(
    fns: &FxHashMap<u32, FnStats>,
    cands: &Candidates,
    slow: &FxHashMap<u32, Slow>,
    total_self: f64,
    out: &mut Vec<Finding>,
) {
    for (id, &cut) in &cands.slow_cut {
        let (Some(f), Some(s)) = (fns.get(id), slow.get(id)) else {
            continue;
        };
        if f.recursive {
            continue;
        }
        let (p50, p99) = (f.hist.quantile(0.5), f.hist.quantile(0.99));
        if s.calls == 0 || s.calls as f64 > OUTLIER_MAX_SLOW_SHARE * f.recorded as f64 {
            continue;
        }
        // On-CPU samples inside the slow calls: a tail the thread spent
        // off the CPU (preempted, blocked) is not the function's own work.
        // None without samples or when too few would be expected to say.
        let expected = s.ns * SAMPLE_HZ / 1e9;
        let on_cpu =
            (cands.samples && expected >= 3.0).then(|| (s.samples as f64 / expected).min(1.0));
        let tail_share = if f.total_ns > 0.0 {
            s.ns / f.total_ns
        } else {
            0.0
        };
        let share = if total_self > 0.0 {
            (s.ns / total_self).min(1.0)
        } else {
            0.0
        };
        // A tail of 10× p50 is worth less than one of 1000×; off-CPU
        // tails (preemption, blocking) count a fifth.
        let weight = on_cpu.map_or(1.0, |c| c.max(0.2)) * ((p99 / p50).log10() / 3.0).min(1.0);
        let mut x = finding(
            Kind::LatencyOutlier,
            f,
            share * weight,
            0.9 * on_cpu.map_or(1.0, |c| c.max(0.2)),
        );
        x.evidence = vec![
            Evidence::new("p50_ns", p50, "ns"),
            Evidence::new("p99_ns", p99, "ns"),
            Evidence::new("p99_over_p50", p99 / p50, "ratio"),
            Evidence::new("slow_calls", s.calls as f64, "calls"),
            Evidence::new("slow_share_of_function", tail_share, "ratio"),
            count_evidence(f),
        ];
        if let Some(c) = on_cpu {
            x.evidence
                .push(Evidence::new("slow_calls_on_cpu_share", c, "ratio"));
        }
        let examples: Vec<String> = s
            .slowest
            .iter()
            .map(|&(d, call, tid)| format!("call {call} (tid {tid}, {})", fmt_ns(d as f64)))
            .collect();
        x.message = format!(
            "{}: p99 {} is {:.0}× p50 {}; {} calls over {} take {} of its time{}; slowest: {}",
            f.name,
            fmt_ns(p99),
            p99 / p50,
            fmt_ns(p50),
            s.calls,
            fmt_ns(cut as f64),
            pct(tail_share),
            match on_cpu {
                Some(c) if c < 0.5 => format!(
                    " (on the CPU only {} of that time: mostly preempted or blocked)",
                    pct(c)
                ),
                Some(c) => format!(" (on the CPU {} of that time)", pct(c)),
                None => String::new(),
            },
            examples.join(", ")
        );
        out.push(x);
    }
}

/// Durations in two modes.
fn bimodal(fns: &FxHashMap<u32, FnStats>, total_self: f64, out: &mut Vec<Finding>) {
    for f in fns.values() {
        if f.recursive {
            continue;
        }
        let Some(m) = f.hist.two_modes() else {
            continue;
        };
        if !m.is_bimodal() {
            continue;
        }
        let share = if total_self > 0.0 {
            (f.total_ns / total_self).min(1.0)
        } else {
            0.0
        };
        let mut x = finding(
            Kind::Bimodal,
            f,
            share * m.low_weight.min(m.high_weight) * 2.0,
            (m.ashman_d / 4.0).min(1.0),
        );
        x.evidence = vec![
            Evidence::new("low_mode_ns", m.low_ns, "ns"),
            Evidence::new("high_mode_ns", m.high_ns, "ns"),
            Evidence::new("low_weight", m.low_weight, "ratio"),
            Evidence::new("high_weight", m.high_weight, "ratio"),
            Evidence::new("ashman_d", m.ashman_d, "ratio"),
            Evidence::new("bic_gain", m.bic_gain, "bic"),
            count_evidence(f),
        ];
        x.message = format!(
            "{} has two kinds of call: {} at about {} and {} at about {} ({:.0}× apart)",
            f.name,
            pct(m.low_weight),
            fmt_ns(m.low_ns),
            pct(m.high_weight),
            fmt_ns(m.high_ns),
            m.high_ns / m.low_ns
        );
        out.push(x);
    }
}

/// Wall time far above CPU time: on-CPU samples inside the function's
/// calls (of one sample period or longer: shorter ones would not be seen
/// even when busy) against the number a busy thread would have given.
fn waiting(
    fns: &FxHashMap<u32, FnStats>,
    cands: &Candidates,
    waits: &FxHashMap<u32, (f64, i64)>,
    root_ns: f64,
    out: &mut Vec<Finding>,
) {
    let chosen = Candidates::waiting(fns);
    for (id, &(wall, n)) in waits {
        let Some(f) = fns.get(id).filter(|f| chosen.contains(&f.id)) else {
            continue;
        };
        if !cands.samples || wall < WAITING_MIN_WALL_NS {
            continue;
        }
        let expected = wall * SAMPLE_HZ / 1e9;
        let cpu_ns = n as f64 * 1e9 / SAMPLE_HZ;
        let cpu_share = (cpu_ns / wall).min(1.0);
        if cpu_share > WAITING_MAX_CPU_SHARE {
            continue;
        }
        // What the function itself waits (its children's waits are theirs).
        let waiting_ns = (wall - cpu_ns).max(0.0).min(f.self_ns.max(0.0));
        let share = if root_ns > 0.0 {
            (waiting_ns / root_ns).min(1.0)
        } else {
            0.0
        };
        if share < 0.01 {
            continue;
        }
        let mut x = finding(Kind::Waiting, f, share, (expected / 20.0).clamp(0.2, 0.95));
        x.evidence = vec![
            Evidence::new("wall_ns", wall, "ns"),
            Evidence::new("cpu_ns_from_samples", cpu_ns, "ns"),
            Evidence::new("cpu_share", cpu_share, "ratio"),
            Evidence::new("samples", n as f64, "samples"),
            Evidence::new("expected_samples_if_busy", expected, "samples"),
            Evidence::new("waiting_share", share, "ratio"),
        ];
        x.message = format!(
            "{} is off the CPU {} of its {} (on-CPU samples: {} of {:.0} a busy thread would give): it waits (sleep, lock or I/O)",
            f.name,
            pct(1.0 - cpu_share),
            fmt_ns(wall),
            n,
            expected
        );
        out.push(x);
    }
}

/// Per function, its threads' time off CPU while it was the innermost
/// recorded call (the `offcpu` table of `--sched`: its own waits, not its
/// children's), and who woke it.
struct OffcpuStats {
    /// function → (blocked ns, times blocked, preempted ns).
    by_fn: FxHashMap<u32, (f64, i64, f64)>,
    /// function → its wakers, most blocked time first.
    wakers: FxHashMap<u32, Vec<Waker>>,
}

/// Who woke a function's thread, and how often.
struct Waker {
    /// The waker's innermost recorded call's function (None: in none).
    function: Option<u32>,
    tid: i64,
    /// The waker is a thread of the target.
    ours: bool,
    wakeups: i64,
    /// Blocked time those wake-ups ended, ns.
    ns: f64,
}

impl OffcpuStats {
    /// `None` when the session was recorded without `--sched` (no row of
    /// `offcpu`: a thread that never left its CPU is rare enough).
    fn load(store: &Store) -> Result<Option<Self>> {
        if !store.has_table("offcpu") {
            return Ok(None);
        }
        let rows = store.sql("SELECT count(*) AS n FROM offcpu")?;
        if rows
            .first()
            .map(|b| cols::i64s(b, "n"))
            .transpose()?
            .and_then(|v| v.first().copied().flatten())
            .unwrap_or(0)
            == 0
        {
            return Ok(None);
        }
        let mut by_fn: FxHashMap<u32, (f64, i64, f64)> = FxHashMap::default();
        for b in store.sql(
            "SELECT function_id, \
             CAST(sum(CASE WHEN preempted THEN 0 ELSE duration_ns END) AS DOUBLE) AS blocked, \
             CAST(sum(CASE WHEN preempted THEN 0 ELSE 1 END) AS BIGINT) AS blocks, \
             CAST(sum(CASE WHEN preempted THEN duration_ns ELSE 0 END) AS DOUBLE) AS preempted \
             FROM offcpu WHERE function_id IS NOT NULL GROUP BY function_id",
        )? {
            let (f, blocked, blocks, pre) = (
                cols::i64s(&b, "function_id")?,
                cols::f64s(&b, "blocked")?,
                cols::i64s(&b, "blocks")?,
                cols::f64s(&b, "preempted")?,
            );
            for i in 0..b.num_rows() {
                if let Some(f) = f[i].map(|f| f as u32) {
                    by_fn.insert(
                        f,
                        (
                            blocked[i].unwrap_or(0.0),
                            blocks[i].unwrap_or(0),
                            pre[i].unwrap_or(0.0),
                        ),
                    );
                }
            }
        }
        let mut wakers: FxHashMap<u32, Vec<Waker>> = FxHashMap::default();
        for b in store.sql(
            "SELECT function_id, waker_function_id, CAST(waker_tid AS BIGINT) AS waker_tid, \
             bool_or(waker_pid = pid) AS ours, count(*) AS n, CAST(sum(duration_ns) AS DOUBLE) AS ns \
             FROM offcpu WHERE function_id IS NOT NULL AND NOT preempted AND waker_tid IS NOT NULL \
             GROUP BY 1, 2, 3",
        )? {
            let (f, wf, wt, n, ns) = (
                cols::i64s(&b, "function_id")?,
                cols::i64s(&b, "waker_function_id")?,
                cols::i64s(&b, "waker_tid")?,
                cols::i64s(&b, "n")?,
                cols::f64s(&b, "ns")?,
            );
            let ours = cols::bools(&b, "ours")?;
            for i in 0..b.num_rows() {
                if let Some(f) = f[i].map(|f| f as u32) {
                    wakers.entry(f).or_default().push(Waker {
                        function: wf[i].map(|w| w as u32),
                        tid: wt[i].unwrap_or(0),
                        ours: ours[i].unwrap_or(false),
                        wakeups: n[i].unwrap_or(0),
                        ns: ns[i].unwrap_or(0.0),
                    });
                }
            }
        }
        for w in wakers.values_mut() {
            w.sort_by(|a, b| b.ns.total_cmp(&a.ns).then(a.tid.cmp(&b.tid)));
        }
        Ok(Some(Self { by_fn, wakers }))
    }
}

/// Waiting from the scheduler's account: a function whose own time is
/// mostly spent blocked (off CPU and not runnable), with who woke it.
fn waiting_off_cpu(
    fns: &FxHashMap<u32, FnStats>,
    o: &OffcpuStats,
    root_ns: f64,
    out: &mut Vec<Finding>,
) {
    let mut ids: Vec<&u32> = o.by_fn.keys().collect();
    ids.sort_unstable();
    for id in ids {
        let (blocked, blocks, preempted) = o.by_fn[id];
        let Some(f) = fns.get(id) else {
            continue;
        };
        // Sampled functions' self time is an estimate over all calls; the
        // blocked time is of the recorded ones: compare like with like.
        let own = if f.exact {
            f.self_ns
        } else {
            f.self_ns * f.recorded as f64 / f.calls.max(1.0)
        };
        if own <= 0.0 || blocked < (1.0 - WAITING_MAX_CPU_SHARE) * own {
            continue;
        }
        let blocked = blocked.min(own);
        let share = if root_ns > 0.0 {
            (blocked / root_ns).min(1.0)
        } else {
            0.0
        };
        if share < 0.01 {
            continue;
        }
        let cpu_share = ((own - blocked - preempted) / own).clamp(0.0, 1.0);
        let mut x = finding(Kind::Waiting, f, share, 0.95);
        x.evidence = vec![
            Evidence::new("self_ns", own, "ns"),
            Evidence::new("blocked_ns", blocked, "ns"),
            Evidence::new("times_blocked", blocks as f64, "count"),
            Evidence::new("preempted_ns", preempted, "ns"),
            Evidence::new("cpu_share", cpu_share, "ratio"),
            Evidence::new("waiting_share", share, "ratio"),
        ];
        let woken = match o.wakers.get(id).and_then(|w| w.first()) {
            Some(&Waker {
                function: wf,
                tid,
                ours,
                wakeups: n,
                ns,
            }) => {
                x.evidence
                    .push(Evidence::new("top_waker_wakeups", n as f64, "count"));
                x.evidence.push(Evidence::new(
                    "top_waker_share",
                    ns / blocked.max(1.0),
                    "ratio",
                ));
                // A wake-up from an interrupt (a timer, an I/O completion)
                // names whatever thread it interrupted.
                let who = match wf.and_then(|w| fns.get(&w)) {
                    Some(w) => format!("{} (thread {tid})", w.name),
                    None if ours => format!("thread {tid}, outside the recorded calls"),
                    None if tid == 0 => "an interrupt on an idle CPU".to_string(),
                    None => "another process, or an interrupt (a timer, I/O)".to_string(),
                };
                format!("; woken {n} times by {who}")
            }
            None => String::new(),
        };
        x.message = format!(
            "{} is blocked {} of its own {} ({} times; on CPU {}){woken}: it waits (sleep, lock or I/O)",
            f.name,
            pct(blocked / own),
            fmt_ns(own),
            blocks,
            pct(cpu_share),
        );
        out.push(x);
    }
}

/// The same short call repeated at regular intervals on one thread.
fn polling(
    fns: &FxHashMap<u32, FnStats>,
    cands: &Candidates,
    polls: FxHashMap<u32, Vec<(i64, i64)>>,
    root_ns: f64,
    out: &mut Vec<Finding>,
) {
    for (id, mut calls) in polls {
        let (Some(f), Some(&(tid, _))) = (fns.get(&id), cands.poll_thread.get(&id)) else {
            continue;
        };
        if f.recursive || calls.len() < POLL_MIN_CALLS {
            continue;
        }
        // The median call first: most functions are too long to poll, and
        // need no sort.
        let mut durs: Vec<i64> = calls.iter().map(|c| c.1).collect();
        let dur = nearest_rank(&mut durs, 0.5) as f64;
        if dur > POLL_MAX_CALL_NS {
            continue;
        }
        // The calls of one thread come in runs already in order (one per
        // partition of the scan), which a stable sort merges.
        calls.sort_by_key(|c| c.0);
        let mut gaps: Vec<i64> = calls.windows(2).map(|w| w[1].0 - w[0].0).collect();
        let gap = nearest_rank(&mut gaps, 0.5) as f64;
        let spread =
            (nearest_rank(&mut gaps, 0.75) - nearest_rank(&mut gaps, 0.25)) as f64 / gap.max(1.0);
        let duty = dur / gap.max(1.0);
        if gap < POLL_MIN_GAP_NS
            || spread > POLL_MAX_SPREAD
            || duty > POLL_MAX_DUTY
            || dur > POLL_MAX_CALL_NS
        {
            continue;
        }
        let span = (calls[calls.len() - 1].0 - calls[0].0) as f64;
        let share = if root_ns > 0.0 {
            (span / root_ns).min(1.0)
        } else {
            0.0
        };
        let mut x = finding(
            Kind::Polling,
            f,
            share * 0.5,
            (1.0 - spread).clamp(0.3, 0.95),
        );
        x.evidence = vec![
            Evidence::new("calls_on_thread", calls.len() as f64, "calls"),
            Evidence::new("tid", tid as f64, "tid"),
            Evidence::new("interval_ns", gap, "ns"),
            Evidence::new("interval_spread", spread, "ratio"),
            Evidence::new("call_ns", dur, "ns"),
            Evidence::new("duty", duty, "ratio"),
            Evidence::new("span_ns", span, "ns"),
        ];
        x.message = format!(
            "{} is polled: {} calls on thread {} every {} (spread {}), each {}, over {}",
            f.name,
            calls.len(),
            tid,
            fmt_ns(gap),
            pct(spread),
            fmt_ns(dur),
            fmt_ns(span)
        );
        out.push(x);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(values: &[(i64, usize)]) -> LogHist {
        let mut h = LogHist::default();
        for &(v, n) in values {
            for i in 0..n {
                // ±5% spread around v.
                h.add(v + (v / 20) * ((i % 5) as i64 - 2) / 2);
            }
        }
        h
    }

    #[test]
    fn quantiles_of_the_histogram() {
        let h = hist(&[(1000, 99), (1_000_000, 1)]);
        assert!((h.quantile(0.5) / 1000.0 - 1.0).abs() < 0.1);
        assert!((h.quantile(1.0) / 1e6 - 1.0).abs() < 0.1);
    }

    #[test]
    fn two_modes_are_found() {
        let m = hist(&[(50_000, 210), (2_000_000, 90)]).two_modes().unwrap();
        assert!(m.is_bimodal(), "{m:?}");
        assert!((m.low_ns / 50_000.0 - 1.0).abs() < 0.1, "{m:?}");
        assert!((m.high_ns / 2e6 - 1.0).abs() < 0.1, "{m:?}");
        assert!((m.low_weight - 0.7).abs() < 0.02, "{m:?}");
    }

    #[test]
    fn one_mode_is_not_bimodal() {
        let mut h = LogHist::default();
        // Log-normal: log2(ns) = 13 + 0.5 × (sum of 12 uniforms − 6), an
        // LCG for the uniforms.
        let mut x: u64 = 12345;
        for _ in 0..5000 {
            let mut z = 0.0;
            for _ in 0..12 {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                z += (x >> 11) as f64 / (1u64 << 53) as f64;
            }
            h.add((13.0 + 0.5 * (z - 6.0)).exp2() as i64);
        }
        let m = h.two_modes();
        assert!(!m.is_some_and(|m| m.is_bimodal()), "{m:?}");
        // A rare tail is an outlier, not a second mode.
        let m = hist(&[(2_000, 985), (5_000_000, 15)]).two_modes();
        assert!(!m.is_some_and(|m| m.is_bimodal()), "{m:?}");
    }

    #[test]
    fn slope_of_exploding_and_linear_growth() {
        let fib: Vec<(f64, f64)> = (5..20)
            .map(|n: i32| (((n) as f64).ln(), (1.618f64.powi(n)).ln()))
            .collect();
        assert!(ls_slope(&fib).unwrap() > 1.5);
        let lin: Vec<(f64, f64)> = (5..50)
            .map(|n: i32| ((n as f64).ln(), (n as f64).ln()))
            .collect();
        assert!((ls_slope(&lin).unwrap() - 1.0).abs() < 1e-9);
    }
}
