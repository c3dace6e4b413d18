//! The findings computed from one session's calls (and its on-CPU samples
//! where it has them): bottlenecks, repeated work, recursion, latency
//! outliers and bimodal durations, waiting, polling loops.
//!
//! Every figure comes from the store by SQL or one streamed pass over
//! `calls`; a finding carries the numbers it was decided on. Thresholds are
//! constants here, each with the reason for its value.

use anyhow::Result;
use rustc_hash::FxHashMap;

use super::finding::{Evidence, Finding, Kind};
use crate::report::{self, By, ReportOptions, SortKey};
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

/// Computes every finding of the store's selected session (one session;
/// the caller narrows the store).
pub fn compute(store: &Store) -> Result<Computed> {
    let mut out = Computed::default();
    let mut fns = function_stats(store)?;
    out.functions = fns.len();
    out.calls = fns.values().map(|f| f.recorded).sum();
    let map = CallFunctions::load(store)?;
    let edges = edges(store, map.as_ref())?;
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
    repeated_work(
        store,
        map.as_ref(),
        &fns,
        &edges,
        out.root_ns,
        &mut out.findings,
    )?;
    drop(map);
    recursion(store, &fns, out.root_ns, &mut out.findings)?;
    outliers(store, &fns, total_self, &mut out.findings)?;
    bimodal(&fns, total_self, &mut out.findings);
    waiting(store, &fns, out.root_ns, &mut out.findings, &mut out.notes)?;
    polling(store, &fns, out.root_ns, &mut out.findings)?;
    Ok(out)
}

/// Per function: the report's figures (estimates for sampled functions)
/// and a histogram of recorded durations.
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
    let rep = report::report(
        store,
        &ReportOptions {
            by: By::Function,
            sort: SortKey::SelfTime,
            limit: 0,
        },
    )?;
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
    for b in store.stream(
        "SELECT function_id, duration_ns, parent_call_id IS NULL AS root FROM calls \
         WHERE duration_ns IS NOT NULL",
    )? {
        let b = b?;
        let id = cols::i64s(&b, "function_id")?;
        let d = cols::i64s(&b, "duration_ns")?;
        let root = cols::bools(&b, "root")?;
        for i in 0..b.num_rows() {
            let (Some(id), Some(d)) = (id[i], d[i]) else {
                continue;
            };
            if let Some(f) = fns.get_mut(&(id as u32)) {
                f.hist.add(d);
                if root[i] == Some(true) {
                    f.root_ns += d as f64;
                }
            }
        }
    }
    fns.retain(|_, f| f.recorded > 0 || f.calls > 0.0);
    Ok(fns)
}

/// Each call's function, indexed by call id (ids are assigned at entry,
/// counting up from the session's first call): what turns a child's
/// `parent_call_id` into its caller's function without joining `calls`
/// with itself (a hash join of every call, which does not spill).
pub struct CallFunctions {
    base: u64,
    /// function id + 1; 0: no such call recorded.
    f: Vec<u32>,
}

impl CallFunctions {
    /// Ids spread over more than this many slots per call fall back to SQL.
    const MAX_SLOTS_PER_CALL: u64 = 4;

    /// `None` when the ids are too sparse for a dense table.
    pub fn load(store: &Store) -> Result<Option<CallFunctions>> {
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
        let mut f = vec![0u32; slots as usize];
        for b in store.stream("SELECT call_id, function_id FROM calls")? {
            let b = b?;
            let id = cols::i64s(&b, "call_id")?;
            let func = cols::i64s(&b, "function_id")?;
            for (id, func) in id.into_iter().zip(func) {
                if let (Some(id), Some(func)) = (id, func) {
                    f[(id as u64 - lo) as usize] = func as u32 + 1;
                }
            }
        }
        Ok(Some(CallFunctions { base: lo, f }))
    }

    /// The function of call `id`, if it was recorded.
    pub fn get(&self, id: u64) -> Option<u32> {
        let i = id.checked_sub(self.base)? as usize;
        match self.f.get(i) {
            Some(&v) if v > 0 => Some(v - 1),
            _ => None,
        }
    }
}

/// Parent function → child function: calls, distinct parent calls, the
/// children's time.
fn edges(store: &Store, map: Option<&CallFunctions>) -> Result<FxHashMap<(u32, u32), Edge>> {
    let mut out: FxHashMap<(u32, u32), Edge> = FxHashMap::default();
    let Some(map) = map else {
        return edges_sql(store);
    };
    // Distinct parents per edge: children of one parent call are counted
    // once by remembering the last parent seen per edge (rows of one
    // parent are not always adjacent, so this is an upper bound fixed by
    // the exact per-parent query of the candidates).
    let mut last: FxHashMap<(u32, u32), u64> = FxHashMap::default();
    for b in store.stream(
        "SELECT parent_call_id, function_id, duration_ns FROM calls WHERE parent_call_id IS NOT NULL",
    )? {
        let b = b?;
        let parent = cols::i64s(&b, "parent_call_id")?;
        let func = cols::i64s(&b, "function_id")?;
        let d = cols::i64s(&b, "duration_ns")?;
        for i in 0..b.num_rows() {
            let (Some(p), Some(cf)) = (parent[i], func[i]) else {
                continue;
            };
            let Some(pf) = map.get(p as u64) else {
                continue;
            };
            let key = (pf, cf as u32);
            let e = out.entry(key).or_default();
            e.calls += 1;
            e.child_ns += d[i].unwrap_or(0).max(0) as f64;
            let l = last.entry(key).or_insert(u64::MAX);
            if *l != p as u64 {
                *l = p as u64;
                e.parents += 1;
            }
        }
    }
    Ok(out)
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

/// Calls of `child` per call of `parent` (only parent calls that make at
/// least one).
fn per_parent(
    store: &Store,
    map: Option<&CallFunctions>,
    parent: u32,
    child: u32,
) -> Result<Vec<i64>> {
    let mut per: Vec<i64> = Vec::new();
    match map {
        Some(map) => {
            let mut counts: FxHashMap<u64, i64> = FxHashMap::default();
            for b in store.stream(&format!(
                "SELECT parent_call_id FROM calls WHERE function_id = {child} AND parent_call_id IS NOT NULL"
            ))? {
                let b = b?;
                for p in cols::i64s(&b, "parent_call_id")?.into_iter().flatten() {
                    if map.get(p as u64) == Some(parent) {
                        *counts.entry(p as u64).or_default() += 1;
                    }
                }
            }
            per.extend(counts.into_values());
        }
        None => {
            for b in store.sql(&format!(
                "SELECT count(*) AS n FROM calls c JOIN calls p \
                   ON p.call_id = c.parent_call_id AND p.session_id = c.session_id \
                 WHERE p.function_id = {parent} AND c.function_id = {child} GROUP BY c.parent_call_id"
            ))? {
                per.extend(cols::i64s(&b, "n")?.into_iter().flatten());
            }
        }
    }
    per.sort_unstable();
    Ok(per)
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

/// The same child called many times per parent call.
fn repeated_work(
    store: &Store,
    map: Option<&CallFunctions>,
    fns: &FxHashMap<u32, FnStats>,
    edges: &FxHashMap<(u32, u32), Edge>,
    root_ns: f64,
    out: &mut Vec<Finding>,
) -> Result<()> {
    for (&(pf, cf), e) in edges {
        if pf == cf || e.parents < REPEAT_MIN_PARENTS {
            continue;
        }
        if (e.calls as f64) / (e.parents as f64) < REPEAT_MIN_PER_PARENT / 2.0 {
            continue;
        }
        let (Some(parent), Some(child)) = (fns.get(&pf), fns.get(&cf)) else {
            continue;
        };
        // Counts per parent call, for their distribution.
        let per = per_parent(store, map, pf, cf)?;
        if per.is_empty() {
            continue;
        }
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
    store: &Store,
    fns: &FxHashMap<u32, FnStats>,
    root_ns: f64,
    out: &mut Vec<Finding>,
) -> Result<()> {
    for f in fns.values().filter(|f| f.recursive) {
        // call → (parent, depth): roots are calls whose parent is not f.
        let mut rows: Vec<(u64, u64, i64, i64)> = Vec::new();
        for b in store.stream(&format!(
            "SELECT call_id, parent_call_id, depth, duration_ns FROM calls \
             WHERE function_id = {} ORDER BY depth",
            f.id
        ))? {
            let b = b?;
            let id = cols::i64s(&b, "call_id")?;
            let parent = cols::i64s(&b, "parent_call_id")?;
            let depth = cols::i64s(&b, "depth")?;
            let d = cols::i64s(&b, "duration_ns")?;
            for i in 0..b.num_rows() {
                rows.push((
                    id[i].unwrap_or(0) as u64,
                    parent[i].unwrap_or(0) as u64,
                    depth[i].unwrap_or(0),
                    d[i].unwrap_or(0),
                ));
            }
        }
        // Per call: its root's index and its depth below the root.
        let mut at: FxHashMap<u64, (usize, u32)> = FxHashMap::default();
        let mut roots: Vec<(u64, u32, i64)> = Vec::new(); // calls, max depth, root duration
        for &(id, parent, _, d) in &rows {
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
    Ok(())
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
    store: &Store,
    fns: &FxHashMap<u32, FnStats>,
    total_self: f64,
    out: &mut Vec<Finding>,
) -> Result<()> {
    for f in fns.values() {
        if f.recursive || f.recorded < OUTLIER_MIN_CALLS || f.hist.is_empty() {
            continue;
        }
        let p50 = f.hist.quantile(0.5);
        let p99 = f.hist.quantile(0.99);
        if p50 <= 0.0 || p99 < OUTLIER_MIN_RATIO * p50 {
            continue;
        }
        // Two modes are the bimodal finding's, not a tail.
        if f.hist.two_modes().is_some_and(|m| m.is_bimodal()) {
            continue;
        }
        // The calls above 10 × p50: how many, how much time.
        let cut = (OUTLIER_MIN_RATIO * p50) as i64;
        let mut slow = 0i64;
        let mut slow_ns = 0f64;
        let mut examples = Vec::new();
        for b in store.sql(&format!(
            "SELECT count(*) OVER () AS n, sum(duration_ns) OVER () AS ns, call_id, tid, start_ns, duration_ns \
             FROM calls WHERE function_id = {} AND duration_ns > {cut} ORDER BY duration_ns DESC LIMIT 3",
            f.id
        ))? {
            let n = cols::i64s(&b, "n")?;
            let ns = cols::f64s(&b, "ns")?;
            let id = cols::i64s(&b, "call_id")?;
            let tid = cols::i64s(&b, "tid")?;
            let d = cols::i64s(&b, "duration_ns")?;
            for i in 0..b.num_rows() {
                slow = n[i].unwrap_or(0);
                slow_ns = ns[i].unwrap_or(0.0);
                examples.push(format!(
                    "call {} (tid {}, {})",
                    id[i].unwrap_or(0),
                    tid[i].unwrap_or(0),
                    fmt_ns(d[i].unwrap_or(0) as f64)
                ));
            }
        }
        if slow == 0 || slow as f64 > OUTLIER_MAX_SLOW_SHARE * f.recorded as f64 {
            continue;
        }
        // On-CPU samples inside the slow calls: a tail the thread spent
        // off the CPU (preempted, blocked) is not the function's own work.
        let on_cpu = slow_calls_on_cpu(store, f.id, cut, slow_ns)?;
        let tail_share = if f.total_ns > 0.0 {
            slow_ns / f.total_ns
        } else {
            0.0
        };
        let share = if total_self > 0.0 {
            (slow_ns / total_self).min(1.0)
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
            Evidence::new("slow_calls", slow as f64, "calls"),
            Evidence::new("slow_share_of_function", tail_share, "ratio"),
            count_evidence(f),
        ];
        if let Some(c) = on_cpu {
            x.evidence
                .push(Evidence::new("slow_calls_on_cpu_share", c, "ratio"));
        }
        x.message = format!(
            "{}: p99 {} is {:.0}× p50 {}; {} calls over {} take {} of its time{}; slowest: {}",
            f.name,
            fmt_ns(p99),
            p99 / p50,
            fmt_ns(p50),
            slow,
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
    Ok(())
}

/// The share of the slow calls' time (`duration_ns > cut`, `slow_ns` in
/// all) the thread was on the CPU, from on-CPU samples; `None` without
/// samples or when too few would be expected to say.
fn slow_calls_on_cpu(store: &Store, id: u32, cut: i64, slow_ns: f64) -> Result<Option<f64>> {
    let expected = slow_ns * SAMPLE_HZ / 1e9;
    if !store.has_table("samples") || expected < 3.0 {
        return Ok(None);
    }
    let mut n = 0;
    for b in store.sql(&format!(
        "SELECT count(*) AS n FROM calls c JOIN samples s \
           ON s.session_id = c.session_id AND s.tid = c.tid \
           AND s.time_ns >= c.start_ns AND s.time_ns < c.start_ns + c.duration_ns \
         WHERE c.function_id = {id} AND c.duration_ns > {cut}"
    ))? {
        n += cols::i64s(&b, "n")?.into_iter().flatten().sum::<i64>();
    }
    Ok(Some((n as f64 / expected).min(1.0)))
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
/// calls against the number a busy thread would have given.
fn waiting(
    store: &Store,
    fns: &FxHashMap<u32, FnStats>,
    root_ns: f64,
    out: &mut Vec<Finding>,
    notes: &mut Vec<String>,
) -> Result<()> {
    if !store.has_table("samples") {
        notes.push(
            "waiting: this session has no on-CPU samples (`samples`), so wall time cannot be compared with CPU time; record without --no-samples".to_string(),
        );
        return Ok(());
    }
    let mut cands: Vec<&FnStats> = fns
        .values()
        .filter(|f| !f.recursive && f.inclusive_ns >= WAITING_MIN_WALL_NS)
        .collect();
    cands.sort_by(|a, b| b.inclusive_ns.total_cmp(&a.inclusive_ns));
    cands.truncate(64);
    if cands.is_empty() {
        return Ok(());
    }
    let ids: Vec<String> = cands.iter().map(|f| f.id.to_string()).collect();
    let mut got: FxHashMap<u32, (f64, i64)> = FxHashMap::default();
    // Calls of at least one sample period (shorter ones would not be
    // seen even when busy), each with the samples inside it.
    let min_ns = (1e9 / SAMPLE_HZ) as i64;
    for b in store.sql(&format!(
        "WITH c AS (SELECT session_id, call_id, function_id, tid, start_ns, duration_ns FROM calls \
           WHERE function_id IN ({}) AND duration_ns >= {min_ns}), \
         per AS (SELECT c.call_id, c.function_id, c.duration_ns, count(s.time_ns) AS n \
           FROM c LEFT JOIN samples s ON s.session_id = c.session_id AND s.tid = c.tid \
             AND s.time_ns >= c.start_ns AND s.time_ns < c.start_ns + c.duration_ns \
           GROUP BY c.call_id, c.function_id, c.duration_ns) \
         SELECT function_id, sum(duration_ns) AS wall, sum(n) AS samples FROM per GROUP BY function_id",
        ids.join(",")
    ))? {
        let id = cols::i64s(&b, "function_id")?;
        let wall = cols::f64s(&b, "wall")?;
        let n = cols::i64s(&b, "samples")?;
        for i in 0..b.num_rows() {
            got.insert(
                id[i].unwrap_or(0) as u32,
                (wall[i].unwrap_or(0.0), n[i].unwrap_or(0)),
            );
        }
    }
    for f in cands {
        let Some(&(wall, n)) = got.get(&f.id) else {
            continue;
        };
        if wall < WAITING_MIN_WALL_NS {
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
    Ok(())
}

/// The same short call repeated at regular intervals on one thread.
fn polling(
    store: &Store,
    fns: &FxHashMap<u32, FnStats>,
    root_ns: f64,
    out: &mut Vec<Finding>,
) -> Result<()> {
    for f in fns.values() {
        if f.recursive || f.recorded < POLL_MIN_CALLS as i64 || f.recorded > 1_000_000 {
            continue;
        }
        let mut per_tid: FxHashMap<i64, Vec<(i64, i64)>> = FxHashMap::default();
        for b in store.stream(&format!(
            "SELECT tid, start_ns, duration_ns FROM calls WHERE function_id = {} AND duration_ns IS NOT NULL",
            f.id
        ))? {
            let b = b?;
            let tid = cols::i64s(&b, "tid")?;
            let s = cols::i64s(&b, "start_ns")?;
            let d = cols::i64s(&b, "duration_ns")?;
            for i in 0..b.num_rows() {
                per_tid
                    .entry(tid[i].unwrap_or(0))
                    .or_default()
                    .push((s[i].unwrap_or(0), d[i].unwrap_or(0)));
            }
        }
        // The thread with the most calls.
        let Some((tid, mut calls)) = per_tid.into_iter().max_by_key(|(_, v)| v.len()) else {
            continue;
        };
        if calls.len() < POLL_MIN_CALLS {
            continue;
        }
        calls.sort_unstable();
        let mut gaps: Vec<f64> = calls.windows(2).map(|w| (w[1].0 - w[0].0) as f64).collect();
        let mut durs: Vec<f64> = calls.iter().map(|c| c.1 as f64).collect();
        gaps.sort_by(f64::total_cmp);
        durs.sort_by(f64::total_cmp);
        let q =
            |v: &[f64], p: f64| v[((p * (v.len() - 1) as f64).round() as usize).min(v.len() - 1)];
        let gap = q(&gaps, 0.5);
        let spread = (q(&gaps, 0.75) - q(&gaps, 0.25)) / gap.max(1.0);
        let dur = q(&durs, 0.5);
        let duty = dur / gap.max(1.0);
        if gap < POLL_MIN_GAP_NS
            || spread > POLL_MAX_SPREAD
            || duty > POLL_MAX_DUTY
            || dur > POLL_MAX_CALL_NS
        {
            continue;
        }
        let span = (calls.last().unwrap().0 - calls[0].0) as f64;
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
    Ok(())
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
