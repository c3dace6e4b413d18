//! `diff`: what changed between two recordings (two stores, or two sessions
//! of one), per function, with how sure it is.
//!
//! Each side is read as `report` reads it (counts exact, or estimates with
//! their interval from `totals`; total and self time; p50 and p99 from the
//! latency histogram) and matched by function name (with the module's file
//! name when a name is not unique on a side: two builds live at different
//! paths). The per-call durations of each side give a bootstrap interval
//! (percentile bootstrap: resampled with replacement, at most
//! [`DiffOptions::sample`] calls per function, kept by reservoir sampling
//! over one scan) for the change of the mean duration, the mean self time,
//! p50 and p99; the point of each change is the exact figure's, the
//! interval is the bootstrap's scaled to it.
//!
//! A function is *slower* when the whole 95% interval of the change of its
//! self time per call lies above `+min_change`, and the change, over its
//! calls, is at least `min_share` of all the self time recorded: time added in its own code
//! (or in functions it calls that were not probed), so a slower callee does
//! not make its callers slower, only longer in total. The call paths whose
//! self time changed most say where a function's total changed.
//!
//! Gates (`--fail-if 'p99 > +10%'`) hold when no function's change is
//! surely past the threshold: the interval's near end is what is compared.

use std::fmt::Write as _;

use anyhow::{Result, bail};
use rustc_hash::FxHashMap;

use crate::cols;
use crate::report::{ReportOptions, ReportRow, report};
use crate::store::Store;
use crate::time::fmt_ns;

/// How `diff` tests changes.
#[derive(Clone, Debug)]
pub struct DiffOptions {
    /// The smallest change (a fraction: 0.1 is 10%) called slower or
    /// faster: the interval must lie beyond it.
    pub min_change: f64,
    /// Bootstrap resamples.
    pub resamples: usize,
    /// Calls per function and side kept for the bootstrap.
    pub sample: usize,
    /// Functions tested (the ones with the most time on either side); the
    /// others get points without intervals.
    pub max_tested: usize,
    /// The smallest change of a function's self time (over the new
    /// recording's calls), as a fraction of all the self time recorded,
    /// called slower or faster: a function of a few µs whose time doubles
    /// is noise (the probes' own cost moves that much between runs).
    pub min_share: f64,
    /// Call paths listed per changed function.
    pub paths: usize,
    /// Seed of the resampling (the same stores give the same intervals).
    pub seed: u64,
}

impl Default for DiffOptions {
    fn default() -> Self {
        DiffOptions {
            min_change: 0.10,
            min_share: 0.005,
            resamples: 500,
            sample: 2000,
            max_tested: 300,
            paths: 3,
            seed: 0x0005_C09E,
        }
    }
}

/// A figure compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    Calls,
    /// Total (inclusive) time.
    Total,
    /// Total self time.
    SelfTime,
    /// Mean duration per call.
    Mean,
    /// Mean self time per call.
    MeanSelf,
    P50,
    P99,
}

impl Metric {
    pub const ALL: [Metric; 7] = [
        Metric::Calls,
        Metric::Total,
        Metric::SelfTime,
        Metric::Mean,
        Metric::MeanSelf,
        Metric::P50,
        Metric::P99,
    ];

    /// The name in gates and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Calls => "calls",
            Metric::Total => "total",
            Metric::SelfTime => "self",
            Metric::Mean => "mean",
            Metric::MeanSelf => "mean_self",
            Metric::P50 => "p50",
            Metric::P99 => "p99",
        }
    }

    fn parse(s: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.name() == s)
    }
}

/// A relative change (`new / base − 1`) and its 95% interval.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Change {
    pub point: f64,
    pub low: f64,
    pub high: f64,
    /// Whether `low..high` is an interval (false: only a point is known).
    pub tested: bool,
}

impl Change {
    fn untested(point: f64) -> Change {
        Change {
            point,
            low: f64::NEG_INFINITY,
            high: f64::INFINITY,
            tested: false,
        }
    }
}

/// One side's figures of a function.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Figures {
    pub calls: f64,
    pub exact: bool,
    pub calls_low: Option<f64>,
    pub calls_high: Option<f64>,
    pub total_ns: f64,
    pub self_ns: f64,
    pub p50_ns: Option<f64>,
    pub p99_ns: Option<f64>,
    /// Calls recorded one by one (what the percentiles and the bootstrap
    /// see).
    pub recorded: i64,
}

impl Figures {
    fn of(r: &ReportRow) -> Figures {
        Figures {
            calls: r.calls.unwrap_or(r.recorded as f64),
            exact: r.exact,
            calls_low: r.calls_low,
            calls_high: r.calls_high,
            total_ns: r.total_ns.unwrap_or(0.0),
            self_ns: r.self_ns.unwrap_or(0.0),
            p50_ns: r.p50_ns,
            p99_ns: r.p99_ns,
            recorded: r.recorded,
        }
    }

    /// The count's 95% interval (the count itself when exact; unbounded
    /// above when unknown).
    fn calls_interval(&self) -> (f64, f64) {
        if self.exact {
            (self.calls, self.calls)
        } else {
            (
                self.calls_low.unwrap_or(self.calls),
                self.calls_high.unwrap_or(f64::INFINITY),
            )
        }
    }

    fn value(&self, m: Metric) -> Option<f64> {
        let per_call = |v: f64| (self.calls > 0.0).then(|| v / self.calls);
        match m {
            Metric::Calls => Some(self.calls),
            Metric::Total => Some(self.total_ns),
            Metric::SelfTime => Some(self.self_ns),
            Metric::Mean => per_call(self.total_ns),
            Metric::MeanSelf => per_call(self.self_ns),
            Metric::P50 => self.p50_ns,
            Metric::P99 => self.p99_ns,
        }
    }
}

/// What happened to a function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Its self time per call rose past the threshold, surely.
    Slower,
    /// It fell past the threshold, surely.
    Faster,
    /// Neither (within the threshold, or not sure).
    Unchanged,
    /// Only in the new recording.
    New,
    /// Only in the base.
    Vanished,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Slower => "slower",
            Verdict::Faster => "faster",
            Verdict::Unchanged => "unchanged",
            Verdict::New => "new",
            Verdict::Vanished => "vanished",
        }
    }
}

/// A call path and its self time on both sides, ns.
#[derive(Clone, Debug, PartialEq)]
pub struct PathChange {
    /// Function names, root first.
    pub path: Vec<String>,
    pub base_ns: u64,
    pub new_ns: u64,
}

impl PathChange {
    fn delta(&self) -> i128 {
        self.new_ns as i128 - self.base_ns as i128
    }
}

/// One function of a diff.
#[derive(Clone, Debug, PartialEq)]
pub struct FunctionDiff {
    pub name: String,
    /// The module's file name (on the side that has it; the new one when
    /// both).
    pub module: String,
    pub verdict: Verdict,
    pub base: Option<Figures>,
    pub new: Option<Figures>,
    /// Changes by metric (functions on both sides).
    pub changes: Vec<(Metric, Change)>,
    /// The paths through it whose self time changed most, in the direction
    /// of its total's change.
    pub paths: Vec<PathChange>,
}

impl FunctionDiff {
    pub fn change(&self, m: Metric) -> Option<&Change> {
        self.changes.iter().find(|(k, _)| *k == m).map(|(_, c)| c)
    }

    /// Time on the side with more.
    fn weight(&self) -> f64 {
        let t = |f: &Option<Figures>| f.as_ref().map_or(0.0, |f| f.total_ns.max(f.self_ns));
        t(&self.base).max(t(&self.new))
    }

    fn total_delta(&self) -> f64 {
        let t = |f: &Option<Figures>| f.as_ref().map_or(0.0, |f| f.total_ns);
        t(&self.new) - t(&self.base)
    }
}

/// A gate: `METRIC OP ±N%` (`p99 > +10%`).
#[derive(Clone, Debug, PartialEq)]
pub struct Gate {
    pub text: String,
    pub metric: Metric,
    /// `>` (true) or `<`.
    pub above: bool,
    /// A fraction.
    pub threshold: f64,
}

impl std::str::FromStr for Gate {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let bad = || {
            format!(
                "--fail-if {s:?}: expected METRIC > +N% or METRIC < -N%, METRIC one of {}",
                Metric::ALL.map(|m| m.name()).join(", ")
            )
        };
        let (at, above) = match (s.find('>'), s.find('<')) {
            (Some(i), None) => (i, true),
            (None, Some(i)) => (i, false),
            _ => return Err(bad()),
        };
        let metric = Metric::parse(s[..at].trim()).ok_or_else(bad)?;
        let mut v = s[at + 1..].trim_start_matches('=').trim();
        v = v.strip_suffix('%').ok_or_else(bad)?.trim();
        let threshold: f64 = v
            .trim_start_matches('+')
            .parse()
            .map_err(|_| bad())
            .and_then(|x: f64| if x.is_finite() { Ok(x) } else { Err(bad()) })?;
        Ok(Gate {
            text: s.trim().to_string(),
            metric,
            above,
            threshold: threshold / 100.0,
        })
    }
}

/// A gate that a function broke.
#[derive(Clone, Debug, PartialEq)]
pub struct Breach {
    pub gate: String,
    pub function: String,
    pub change: Change,
}

/// A diff of two recordings.
#[derive(Clone, Debug, Default)]
pub struct Diff {
    /// What each side is (session lines as `report` prints them).
    pub base: Vec<String>,
    pub new: Vec<String>,
    pub min_change: f64,
    pub min_share: f64,
    /// Every function, slower first, then faster, new, vanished, and the
    /// rest by the size of their total's change.
    pub functions: Vec<FunctionDiff>,
    pub breaches: Vec<Breach>,
    pub notes: Vec<String>,
}

impl Diff {
    pub fn with(&self, v: Verdict) -> impl Iterator<Item = &FunctionDiff> {
        self.functions.iter().filter(move |f| f.verdict == v)
    }
}

/// A recorded call: (duration, self time), ns.
type Sample = (i64, i64);
/// A function to bootstrap: its index in the diff, base and new samples.
type Job<'a> = (usize, &'a [Sample], &'a [Sample]);

/// One side read: figures by function key, call samples, paths.
struct Side {
    header: Vec<String>,
    figures: FxHashMap<String, (String, String, Figures)>,
    samples: FxHashMap<String, Vec<(i64, i64)>>,
    paths: FxHashMap<Vec<String>, u64>,
    notes: Vec<String>,
}

/// Compares `base` and `new` (each narrowed to one session).
pub fn diff(base: &Store, new: &Store, opts: &DiffOptions, gates: &[Gate]) -> Result<Diff> {
    let b = read_side(base, opts, 1)?;
    let n = read_side(new, opts, 2)?;
    let mut out = Diff {
        base: b.header.clone(),
        new: n.header.clone(),
        min_change: opts.min_change,
        min_share: opts.min_share,
        ..Diff::default()
    };
    for (label, side) in [("base", &b), ("new", &n)] {
        out.notes
            .extend(side.notes.iter().map(|m| format!("{label}: {m}")));
    }
    let mut keys: Vec<&String> = b.figures.keys().chain(n.figures.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut functions: Vec<FunctionDiff> = keys
        .into_iter()
        .map(|k| {
            let bf = b.figures.get(k);
            let nf = n.figures.get(k);
            let (name, module) = nf.or(bf).map(|(n, m, _)| (n.clone(), m.clone())).unwrap();
            FunctionDiff {
                name,
                module,
                verdict: match (bf, nf) {
                    (None, _) => Verdict::New,
                    (_, None) => Verdict::Vanished,
                    _ => Verdict::Unchanged,
                },
                base: bf.map(|x| x.2.clone()),
                new: nf.map(|x| x.2.clone()),
                changes: Vec::new(),
                paths: Vec::new(),
            }
        })
        .collect();
    // Bootstrap the heaviest functions on both sides.
    let mut order: Vec<usize> = (0..functions.len())
        .filter(|&i| functions[i].base.is_some() && functions[i].new.is_some())
        .collect();
    order.sort_by(|&x, &y| functions[y].weight().total_cmp(&functions[x].weight()));
    let skipped = order.len().saturating_sub(opts.max_tested);
    order.truncate(opts.max_tested);
    let key_of = |f: &FunctionDiff| key_for(&b, &n, f);
    let jobs: Vec<Job> = order
        .iter()
        .map(|&i| {
            let k = key_of(&functions[i]);
            (i, samples_of(&b, &k), samples_of(&n, &k))
        })
        .collect();
    let boots = bootstrap_all(&jobs, opts);
    let all_self = |side: &Side| side.figures.values().map(|x| x.2.self_ns).sum::<f64>();
    let floor = opts.min_share * all_self(&b).max(all_self(&n));
    for (i, f) in functions.iter_mut().enumerate() {
        let (Some(bf), Some(nf)) = (&f.base, &f.new) else {
            continue;
        };
        let boot = boots.get(&i);
        f.changes = changes(bf, nf, boot);
        let moved = match (bf.value(Metric::MeanSelf), nf.value(Metric::MeanSelf)) {
            (Some(x), Some(y)) => ((y - x) * nf.calls).abs() >= floor,
            _ => false,
        };
        if let Some(c) = f.change(Metric::MeanSelf)
            && c.tested
            && moved
        {
            f.verdict = if c.low > opts.min_change {
                Verdict::Slower
            } else if c.high < -opts.min_change {
                Verdict::Faster
            } else {
                Verdict::Unchanged
            };
        }
    }
    if skipped > 0 {
        out.notes.push(format!(
            "{skipped} function{} with the least time were not tested (points only; --max-tested)",
            if skipped == 1 { "" } else { "s" }
        ));
    }
    // Paths: per changed function, the paths through it whose self time
    // moved most in the direction of its total.
    let mut all_paths: FxHashMap<&Vec<String>, (u64, u64)> = FxHashMap::default();
    for (p, ns) in &b.paths {
        all_paths.entry(p).or_default().0 += ns;
    }
    for (p, ns) in &n.paths {
        all_paths.entry(p).or_default().1 += ns;
    }
    for f in &mut functions {
        let interesting = matches!(f.verdict, Verdict::Slower | Verdict::Faster)
            || f.change(Metric::Total).is_some_and(|c| {
                c.tested && (c.low > opts.min_change || c.high < -opts.min_change)
            });
        if !interesting {
            continue;
        }
        let up = f.total_delta() >= 0.0;
        let mut through: Vec<PathChange> = all_paths
            .iter()
            .filter(|(p, _)| p.iter().any(|x| x == &f.name))
            .map(|(p, (bn, nn))| PathChange {
                path: (*p).clone(),
                base_ns: *bn,
                new_ns: *nn,
            })
            .filter(|p| if up { p.delta() > 0 } else { p.delta() < 0 })
            .collect();
        through.sort_by(|x, y| {
            y.delta()
                .abs()
                .cmp(&x.delta().abs())
                .then(x.path.cmp(&y.path))
        });
        through.truncate(opts.paths);
        f.paths = through;
    }
    functions.sort_by(|x, y| {
        let rank = |v: Verdict| match v {
            Verdict::Slower => 0,
            Verdict::Faster => 1,
            Verdict::New => 2,
            Verdict::Vanished => 3,
            Verdict::Unchanged => 4,
        };
        rank(x.verdict)
            .cmp(&rank(y.verdict))
            .then(y.total_delta().abs().total_cmp(&x.total_delta().abs()))
            .then(x.name.cmp(&y.name))
    });
    out.breaches = check_gates(&functions, gates);
    out.functions = functions;
    Ok(out)
}

fn samples_of<'a>(side: &'a Side, key: &str) -> &'a [(i64, i64)] {
    side.samples.get(key).map_or(&[][..], |v| v.as_slice())
}

/// The function key a [`FunctionDiff`] came from (its name, or name and
/// module when the name repeats on a side).
fn key_for(b: &Side, n: &Side, f: &FunctionDiff) -> String {
    let plain = f.name.clone();
    if b.figures.contains_key(&plain) || n.figures.contains_key(&plain) {
        plain
    } else {
        format!("{} ({})", f.name, f.module)
    }
}

fn read_side(store: &Store, opts: &DiffOptions, salt: u64) -> Result<Side> {
    if !store.has_table("calls") || !store.has_table("functions") {
        bail!(
            "{}: no calls or functions table (nothing was recorded here)",
            store.location().display
        );
    }
    let selected = store.selected_sessions();
    if selected.len() != 1 {
        bail!(
            "{}: diff compares one session with one; this names {} (give a session id)",
            store.location().display,
            selected.len()
        );
    }
    let rep = report(store, &ReportOptions::every_function())?;
    // Keys: the name, or name and module file when the name repeats.
    let mut seen: FxHashMap<&str, usize> = FxHashMap::default();
    for r in &rep.rows {
        *seen.entry(r.key.as_str()).or_default() += 1;
    }
    let file = |m: &str| m.rsplit('/').next().unwrap_or(m).to_string();
    let key = |name: &str, module: &str| {
        if seen.get(name).copied().unwrap_or(0) > 1 {
            format!("{name} ({})", file(module))
        } else {
            name.to_string()
        }
    };
    let mut figures = FxHashMap::default();
    for r in &rep.rows {
        figures.insert(
            key(&r.key, &r.module),
            (r.key.clone(), file(&r.module), Figures::of(r)),
        );
    }
    // Function ids → keys, then one scan of the calls for the samples.
    let mut id_key: FxHashMap<i64, String> = FxHashMap::default();
    for b in store.sql("SELECT function_id, name, module FROM functions")? {
        let id = cols::i64s(&b, "function_id")?;
        let name = cols::strs(&b, "name")?;
        let module = cols::strs(&b, "module")?;
        for i in 0..b.num_rows() {
            if let (Some(id), Some(n)) = (id[i], name[i].as_deref()) {
                id_key.insert(id, key(n, module[i].as_deref().unwrap_or("")));
            }
        }
    }
    let mut reservoirs: FxHashMap<i64, Reservoir> = FxHashMap::default();
    let mut rng = SplitMix(opts.seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    for batch in store.stream(
        "SELECT function_id, duration_ns, self_ns FROM calls WHERE duration_ns IS NOT NULL",
    )? {
        let batch = batch?;
        let f = cols::i64s(&batch, "function_id")?;
        let d = cols::i64s(&batch, "duration_ns")?;
        let s = cols::i64s(&batch, "self_ns")?;
        for i in 0..batch.num_rows() {
            let (Some(f), Some(d)) = (f[i], d[i]) else {
                continue;
            };
            reservoirs
                .entry(f)
                .or_insert_with(|| Reservoir::new(opts.sample))
                .offer((d, s[i].unwrap_or(d)), &mut rng);
        }
    }
    let mut samples: FxHashMap<String, Vec<(i64, i64)>> = FxHashMap::default();
    for (id, r) in reservoirs {
        if let Some(k) = id_key.get(&id) {
            samples.entry(k.clone()).or_default().extend(r.kept);
        }
    }
    Ok(Side {
        header: rep.header,
        figures,
        samples,
        paths: self_paths(store)?,
        notes: rep.notes,
    })
}

/// Self time per call path (names, root first), from the folded export.
fn self_paths(store: &Store) -> Result<FxHashMap<Vec<String>, u64>> {
    let mut buf = Vec::new();
    crate::export::export_session(store, crate::export::Format::Folded, None, &mut buf)?;
    let mut out = FxHashMap::default();
    for line in String::from_utf8_lossy(&buf).lines() {
        let Some((path, n)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else {
            continue;
        };
        let path: Vec<String> = path.split(';').map(str::to_string).collect();
        *out.entry(path).or_default() += n;
    }
    Ok(out)
}

/// Uniform sample of at most `cap` items of a stream (Algorithm R).
struct Reservoir {
    cap: usize,
    seen: u64,
    kept: Vec<(i64, i64)>,
}

impl Reservoir {
    fn new(cap: usize) -> Self {
        Reservoir {
            cap: cap.max(1),
            seen: 0,
            kept: Vec::new(),
        }
    }

    fn offer(&mut self, v: (i64, i64), rng: &mut SplitMix) {
        self.seen += 1;
        if self.kept.len() < self.cap {
            self.kept.push(v);
        } else {
            let j = rng.below(self.seen);
            if (j as usize) < self.cap {
                self.kept[j as usize] = v;
            }
        }
    }
}

/// SplitMix64: a small, well-mixed generator for resampling (statistical
/// quality is all it needs; the same seed gives the same intervals).
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), by multiply-shift.
    fn below(&mut self, n: u64) -> u64 {
        ((self.next() as u128 * n as u128) >> 64) as u64
    }
}

/// The fewest recorded calls on a side for a percentile's interval: 20,
/// and at least [`TAIL_CALLS`] above the percentile (a p99 of 40 calls is
/// their maximum, which resampling cannot bound: 200 calls for p99).
const MIN_FOR_PERCENTILES: usize = 20;
const TAIL_CALLS: f64 = 2.0;

/// Whether `n` calls on each side give `q`'s interval.
fn enough_for(q: f64, n: usize) -> bool {
    n >= MIN_FOR_PERCENTILES && (n as f64) * (1.0 - q) >= TAIL_CALLS - 1e-9
}

/// Bootstrap ratios (new statistic / base statistic) per metric: the
/// 2.5% and 97.5% quantiles, and the ratio on the samples themselves.
#[derive(Clone, Debug, Default)]
struct Boot {
    ratios: Vec<(Metric, f64, f64, f64)>,
}

/// The bootstrap of every job, over the machine's cores.
fn bootstrap_all(jobs: &[Job], opts: &DiffOptions) -> FxHashMap<usize, Boot> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(jobs.len().max(1));
    let chunk = jobs.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|(i, b, n)| {
                            let seed = opts.seed ^ (*i as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93);
                            (*i, bootstrap(b, n, opts.resamples, seed))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a bootstrap thread panicked"))
            .collect()
    })
}

/// Statistics of one resample: mean duration, mean self, p50, p99.
fn stats(durations: &mut [i64], self_sum: i64, with_percentiles: bool) -> [f64; 4] {
    let n = durations.len() as f64;
    let mean = durations.iter().map(|&d| d as f64).sum::<f64>() / n;
    let mean_self = self_sum as f64 / n;
    if !with_percentiles {
        return [mean, mean_self, f64::NAN, f64::NAN];
    }
    let rank = |p: f64| ((p * n).ceil() as usize).clamp(1, durations.len()) - 1;
    let (i50, i99) = (rank(0.50), rank(0.99));
    let (_, p50, upper) = durations.select_nth_unstable(i50);
    let p50 = *p50 as f64;
    let p99 = if i99 > i50 {
        *upper.select_nth_unstable(i99 - i50 - 1).1 as f64
    } else {
        p50
    };
    [mean, mean_self, p50, p99]
}

fn bootstrap(base: &[(i64, i64)], new: &[(i64, i64)], resamples: usize, seed: u64) -> Boot {
    if base.len() < 2 || new.len() < 2 {
        return Boot::default();
    }
    let n = base.len().min(new.len());
    let pct = enough_for(0.5, n);
    let p99 = enough_for(0.99, n);
    let observed = |v: &[(i64, i64)]| {
        let mut d: Vec<i64> = v.iter().map(|x| x.0).collect();
        stats(&mut d, v.iter().map(|x| x.1).sum(), pct)
    };
    let (ob, on) = (observed(base), observed(new));
    let mut rng = SplitMix(seed);
    let mut scratch = Vec::new();
    let mut draw = |v: &[(i64, i64)], rng: &mut SplitMix| {
        scratch.clear();
        let mut self_sum = 0i64;
        for _ in 0..v.len() {
            let x = v[rng.below(v.len() as u64) as usize];
            scratch.push(x.0);
            self_sum += x.1;
        }
        stats(&mut scratch, self_sum, pct)
    };
    let mut ratios: [Vec<f64>; 4] = Default::default();
    for _ in 0..resamples.max(20) {
        let sb = draw(base, &mut rng);
        let sn = draw(new, &mut rng);
        for k in 0..4 {
            if sb[k] > 0.0 && sn[k].is_finite() {
                ratios[k].push(sn[k] / sb[k]);
            }
        }
    }
    let metrics = [Metric::Mean, Metric::MeanSelf, Metric::P50, Metric::P99];
    let mut out = Boot::default();
    for (k, mut r) in ratios.into_iter().enumerate() {
        // Every resample must give a ratio: a statistic that is 0 in some
        // of them (a function whose self time is mostly 0) has none.
        if r.len() < resamples.max(20) || ob[k].is_nan() || ob[k] <= 0.0 || (k == 3 && !p99) {
            continue;
        }
        r.sort_by(f64::total_cmp);
        let q = |p: f64| r[((p * (r.len() - 1) as f64).round() as usize).min(r.len() - 1)];
        out.ratios
            .push((metrics[k], q(0.025), q(0.975), on[k] / ob[k]));
    }
    out
}

/// The changes of a function on both sides: points from the exact figures,
/// intervals from the bootstrap (scaled to the point) and from the counts'
/// intervals.
fn changes(b: &Figures, n: &Figures, boot: Option<&Boot>) -> Vec<(Metric, Change)> {
    let rel = |m: Metric| match (b.value(m), n.value(m)) {
        (Some(x), Some(y)) if x > 0.0 => Some(y / x - 1.0),
        _ => None,
    };
    // The ratio of the counts and its interval.
    let calls_ratio = {
        let (lo_n, hi_n) = n.calls_interval();
        let (lo_b, hi_b) = b.calls_interval();
        (b.calls > 0.0).then(|| {
            (
                n.calls / b.calls,
                if hi_b > 0.0 { lo_n / hi_b } else { 0.0 },
                if lo_b > 0.0 {
                    hi_n / lo_b
                } else {
                    f64::INFINITY
                },
            )
        })
    };
    let boot_ratio = |m: Metric| {
        boot.and_then(|bt| bt.ratios.iter().find(|r| r.0 == m))
            .map(|&(_, lo, hi, observed)| (lo / observed, hi / observed))
    };
    let mut out = Vec::new();
    for m in Metric::ALL {
        let Some(point) = rel(m) else {
            continue;
        };
        let change = match m {
            Metric::Calls => match calls_ratio {
                Some((_, lo, hi)) => Change {
                    point,
                    low: lo - 1.0,
                    high: hi - 1.0,
                    tested: true,
                },
                None => Change::untested(point),
            },
            Metric::Total | Metric::SelfTime => {
                let per_call = if m == Metric::Total {
                    Metric::Mean
                } else {
                    Metric::MeanSelf
                };
                match (calls_ratio, boot_ratio(per_call), rel(per_call)) {
                    (Some((cr, clo, chi)), Some((lo, hi)), Some(pc)) => {
                        let r = (1.0 + pc) * cr;
                        Change {
                            point,
                            low: r * (clo / cr) * lo - 1.0,
                            high: r * (chi / cr) * hi - 1.0,
                            tested: true,
                        }
                    }
                    _ => Change::untested(point),
                }
            }
            _ => match boot_ratio(m) {
                Some((lo, hi)) => Change {
                    point,
                    low: (1.0 + point) * lo - 1.0,
                    high: (1.0 + point) * hi - 1.0,
                    tested: true,
                },
                None => Change::untested(point),
            },
        };
        out.push((m, change));
    }
    out
}

/// The gates each function breaks: the interval's near end past the
/// threshold.
fn check_gates(functions: &[FunctionDiff], gates: &[Gate]) -> Vec<Breach> {
    let mut out = Vec::new();
    for g in gates {
        for f in functions {
            let Some(c) = f.change(g.metric) else {
                continue;
            };
            if !c.tested {
                continue;
            }
            let broke = if g.above {
                c.low > g.threshold
            } else {
                c.high < g.threshold
            };
            if broke {
                out.push(Breach {
                    gate: g.text.clone(),
                    function: f.name.clone(),
                    change: *c,
                });
            }
        }
    }
    out
}

/// `+12.3%` (or `+∞`; whole numbers without a decimal).
pub fn pct(x: f64) -> String {
    if x.is_infinite() {
        return if x > 0.0 {
            "+∞".into()
        } else {
            "−∞".into()
        };
    }
    let v = 100.0 * x;
    let digits = if v.abs() >= 100.0 { 0 } else { 1 };
    let mut s = format!("{}{:.*}%", if v >= 0.0 { "+" } else { "" }, digits, v);
    if s.ends_with(".0%") {
        s.replace_range(s.len() - 3..s.len() - 1, "");
    }
    s
}

/// `+12.3% [+10.1%, +14.0%]`, or the point alone when untested.
pub fn change_text(c: &Change) -> String {
    if !c.tested {
        return format!("{} (untested)", pct(c.point));
    }
    if c.low == c.high {
        return pct(c.point);
    }
    format!("{} [{}, {}]", pct(c.point), pct(c.low), pct(c.high))
}

fn per_call(f: &Figures, m: Metric) -> String {
    f.value(m).map_or("-".into(), fmt_ns)
}

/// The text report.
pub fn render_text(d: &Diff, limit: usize) -> String {
    let mut s = String::new();
    for l in &d.base {
        let _ = writeln!(s, "base: {l}");
    }
    for l in &d.new {
        let _ = writeln!(s, "new:  {l}");
    }
    let th = pct(d.min_change).trim_start_matches('+').to_string();
    for (v, title) in [
        (
            Verdict::Slower,
            format!("slower (self time per call up by more than {th}, 95% sure)"),
        ),
        (
            Verdict::Faster,
            format!("faster (self time per call down by more than {th}, 95% sure)"),
        ),
    ] {
        let list: Vec<&FunctionDiff> = d.with(v).collect();
        let _ = writeln!(
            s,
            "\n{title}: {}",
            if list.is_empty() { "none" } else { "" }
        );
        for f in list {
            let (b, n) = (f.base.as_ref().unwrap(), f.new.as_ref().unwrap());
            let _ = writeln!(
                s,
                "  {}  self/call {} → {}  {}",
                f.name,
                per_call(b, Metric::MeanSelf),
                per_call(n, Metric::MeanSelf),
                f.change(Metric::MeanSelf)
                    .map_or(String::new(), change_text)
            );
            for m in [Metric::P50, Metric::P99, Metric::Calls, Metric::Total] {
                if let Some(c) = f.change(m) {
                    let _ = writeln!(s, "      {:<5} {}", m.name(), change_text(c));
                }
            }
            paths_text(&mut s, f);
        }
    }
    for (v, title) in [
        (Verdict::New, "new functions"),
        (Verdict::Vanished, "vanished functions"),
    ] {
        let list: Vec<&FunctionDiff> = d.with(v).collect();
        if list.is_empty() {
            continue;
        }
        let _ = writeln!(s, "\n{title}:");
        for f in list {
            let fig = f.new.as_ref().or(f.base.as_ref()).unwrap();
            let _ = writeln!(
                s,
                "  {}  {} calls, {} total",
                f.name,
                crate::report::fmt_count(Some(fig.calls), fig.exact),
                fmt_ns(fig.total_ns)
            );
        }
    }
    // The rest whose total moved surely, with the paths that explain it.
    let moved: Vec<&FunctionDiff> = d
        .with(Verdict::Unchanged)
        .filter(|f| !f.paths.is_empty())
        .collect();
    if !moved.is_empty() {
        let _ = writeln!(
            s,
            "\nlonger or shorter in total (its self time per call did not change):"
        );
        for f in moved {
            let _ = writeln!(
                s,
                "  {}  total {}",
                f.name,
                f.change(Metric::Total).map_or(String::new(), change_text)
            );
            paths_text(&mut s, f);
        }
    }
    let _ = writeln!(s, "\nevery function (by change of total time):");
    let _ = writeln!(
        s,
        "  {:<32} {:>22} {:>24} {:>24} {:>24} {:>24}",
        "function", "calls", "total", "self/call", "p50", "p99"
    );
    let mut rows: Vec<&FunctionDiff> = d.functions.iter().collect();
    rows.sort_by(|x, y| y.total_delta().abs().total_cmp(&x.total_delta().abs()));
    let shown = if limit == 0 {
        rows.len()
    } else {
        limit.min(rows.len())
    };
    for f in &rows[..shown] {
        let cell = |m: Metric| match f.change(m) {
            Some(c) if c.tested && c.low != c.high => {
                format!(
                    "{} ±{}",
                    pct(c.point),
                    pct((c.high - c.low) / 2.0).trim_start_matches('+')
                )
            }
            Some(c) => pct(c.point),
            None => match f.verdict {
                Verdict::New => "new".into(),
                Verdict::Vanished => "gone".into(),
                _ => "-".into(),
            },
        };
        let calls = match (&f.base, &f.new) {
            (Some(b), Some(n)) => format!("{} → {}", si(b.calls), si(n.calls)),
            (None, Some(n)) => format!("→ {}", si(n.calls)),
            (Some(b), None) => format!("{} →", si(b.calls)),
            _ => String::new(),
        };
        let mut name = f.name.clone();
        if name.chars().count() > 32 {
            name = name.chars().take(31).collect::<String>() + "…";
        }
        let _ = writeln!(
            s,
            "  {:<32} {:>22} {:>24} {:>24} {:>24} {:>24}",
            name,
            calls,
            cell(Metric::Total),
            cell(Metric::MeanSelf),
            cell(Metric::P50),
            cell(Metric::P99)
        );
    }
    if shown < rows.len() {
        let _ = writeln!(s, "  … {} more (--limit 0 shows all)", rows.len() - shown);
    }
    notes_text(&mut s, d);
    s
}

fn si(v: f64) -> String {
    crate::report::si(v)
}

fn paths_text(s: &mut String, f: &FunctionDiff) {
    for p in &f.paths {
        let _ = writeln!(
            s,
            "      via {}: self {} → {} ({}{})",
            p.path.join(" → "),
            fmt_ns(p.base_ns as f64),
            fmt_ns(p.new_ns as f64),
            if p.delta() >= 0 { "+" } else { "−" },
            fmt_ns(p.delta().unsigned_abs() as f64)
        );
    }
}

fn notes_text(s: &mut String, d: &Diff) {
    for b in &d.breaches {
        let _ = writeln!(
            s,
            "\nFAILED --fail-if '{}': {} {}",
            b.gate,
            b.function,
            change_text(&b.change)
        );
    }
    if !d.notes.is_empty() {
        let _ = writeln!(s);
        for n in &d.notes {
            let _ = writeln!(s, "note: {n}");
        }
    }
    let _ = writeln!(
        s,
        "\nintervals: 95% percentile bootstrap over per-call durations (± is half the interval's width; a figure without one is exact, or has too few calls: 20, and 200 for p99); a function is named slower or faster only when the whole interval of its self time per call is past ±{}, and the change is at least {} of all the self time recorded",
        pct(d.min_change).trim_start_matches('+'),
        pct(d.min_share).trim_start_matches('+')
    );
}

/// Markdown, for a pull-request comment.
pub fn render_markdown(d: &Diff, limit: usize) -> String {
    let mut s = String::from("## scope diff\n\n");
    for l in &d.base {
        let _ = writeln!(s, "- **base**: {l}");
    }
    for l in &d.new {
        let _ = writeln!(s, "- **new**: {l}");
    }
    if !d.breaches.is_empty() {
        let _ = writeln!(s, "\n**Gates failed:**\n");
        for b in &d.breaches {
            let _ = writeln!(
                s,
                "- `{}`: `{}` {}",
                b.gate,
                md(&b.function),
                change_text(&b.change)
            );
        }
    }
    let th = pct(d.min_change).trim_start_matches('+').to_string();
    for (v, title) in [
        (
            Verdict::Slower,
            format!("Slower (self time per call, > {th}, 95% sure)"),
        ),
        (
            Verdict::Faster,
            format!("Faster (self time per call, > {th}, 95% sure)"),
        ),
        (Verdict::New, "New functions".to_string()),
        (Verdict::Vanished, "Vanished functions".to_string()),
    ] {
        let list: Vec<&FunctionDiff> = d.with(v).collect();
        if list.is_empty() && matches!(v, Verdict::New | Verdict::Vanished) {
            continue;
        }
        let _ = writeln!(s, "\n### {title}\n");
        if list.is_empty() {
            let _ = writeln!(s, "None.");
            continue;
        }
        for f in list {
            match (&f.base, &f.new) {
                (Some(b), Some(n)) => {
                    let _ = writeln!(
                        s,
                        "- `{}`: self/call {} → {}, {}; p99 {}",
                        md(&f.name),
                        per_call(b, Metric::MeanSelf),
                        per_call(n, Metric::MeanSelf),
                        f.change(Metric::MeanSelf)
                            .map_or(String::new(), change_text),
                        f.change(Metric::P99).map_or("-".into(), change_text)
                    );
                    for p in &f.paths {
                        let _ = writeln!(
                            s,
                            "  - via `{}`: {} → {}",
                            md(&p.path.join(" → ")),
                            fmt_ns(p.base_ns as f64),
                            fmt_ns(p.new_ns as f64)
                        );
                    }
                }
                (b, n) => {
                    let fig = n.as_ref().or(b.as_ref()).unwrap();
                    let _ = writeln!(
                        s,
                        "- `{}`: {} calls, {} total",
                        md(&f.name),
                        crate::report::fmt_count(Some(fig.calls), fig.exact),
                        fmt_ns(fig.total_ns)
                    );
                }
            }
        }
    }
    let _ = writeln!(
        s,
        "\n<details><summary>Every function</summary>\n\n| function | calls | total | self/call | p50 | p99 |\n|---|---:|---:|---:|---:|---:|"
    );
    let mut rows: Vec<&FunctionDiff> = d.functions.iter().collect();
    rows.sort_by(|x, y| y.total_delta().abs().total_cmp(&x.total_delta().abs()));
    let shown = if limit == 0 {
        rows.len()
    } else {
        limit.min(rows.len())
    };
    for f in &rows[..shown] {
        let cell = |m: Metric| f.change(m).map_or("-".into(), change_text);
        let calls = match (&f.base, &f.new) {
            (Some(b), Some(n)) => format!("{} → {}", si(b.calls), si(n.calls)),
            (None, Some(n)) => format!("new, {}", si(n.calls)),
            (Some(b), None) => format!("gone, {}", si(b.calls)),
            _ => String::new(),
        };
        let _ = writeln!(
            s,
            "| `{}` | {} | {} | {} | {} | {} |",
            md(&f.name),
            calls,
            cell(Metric::Total),
            cell(Metric::MeanSelf),
            cell(Metric::P50),
            cell(Metric::P99)
        );
    }
    let _ = writeln!(s, "\n</details>");
    for n in &d.notes {
        let _ = writeln!(s, "\n_{}_", md(n));
    }
    let _ = writeln!(
        s,
        "\n_Intervals: 95% percentile bootstrap over per-call durations._"
    );
    s
}

fn md(s: &str) -> String {
    s.replace('|', "\\|").replace('`', "'")
}

/// JSON: every function with both sides' figures and every change.
pub fn render_json(d: &Diff) -> String {
    use serde_json::{Value, json};
    let fig = |f: &Option<Figures>| -> Value {
        match f {
            None => Value::Null,
            Some(f) => json!({
                "calls": f.calls,
                "exact": f.exact,
                "calls_low": f.calls_low,
                "calls_high": f.calls_high,
                "recorded": f.recorded,
                "total_ns": f.total_ns,
                "self_ns": f.self_ns,
                "p50_ns": f.p50_ns,
                "p99_ns": f.p99_ns,
            }),
        }
    };
    let num = |x: f64| if x.is_finite() { json!(x) } else { Value::Null };
    let functions: Vec<Value> = d
        .functions
        .iter()
        .map(|f| {
            let changes: serde_json::Map<String, Value> = f
                .changes
                .iter()
                .map(|(m, c)| {
                    (
                        m.name().to_string(),
                        json!({
                            "change": num(c.point),
                            "low": if c.tested { num(c.low) } else { Value::Null },
                            "high": if c.tested { num(c.high) } else { Value::Null },
                        }),
                    )
                })
                .collect();
            json!({
                "name": f.name,
                "module": f.module,
                "verdict": f.verdict.name(),
                "base": fig(&f.base),
                "new": fig(&f.new),
                "changes": changes,
                "paths": f.paths.iter().map(|p| json!({
                    "path": p.path, "base_self_ns": p.base_ns, "new_self_ns": p.new_ns
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let v = json!({
        "base": d.base,
        "new": d.new,
        "min_change": d.min_change,
        "min_share": d.min_share,
        "functions": functions,
        "failed": d.breaches.iter().map(|b| json!({
            "gate": b.gate, "function": b.function,
            "change": num(b.change.point), "low": num(b.change.low), "high": num(b.change.high),
        })).collect::<Vec<_>>(),
        "notes": d.notes,
    });
    serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gates_parse_and_refuse_by_name() {
        let g: Gate = "p99 > +10%".parse().unwrap();
        assert_eq!((g.metric, g.above), (Metric::P99, true));
        assert!((g.threshold - 0.10).abs() < 1e-12);
        let g: Gate = "self<-5%".parse().unwrap();
        assert_eq!((g.metric, g.above), (Metric::SelfTime, false));
        assert!((g.threshold + 0.05).abs() < 1e-12);
        for bad in ["p98 > 10%", "p99 > 10", "p99 10%", "p99 > x%", "p99 <> 1%"] {
            let e = bad.parse::<Gate>().unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn reservoir_keeps_a_uniform_sample() {
        let mut rng = SplitMix(7);
        let mut r = Reservoir::new(1000);
        for i in 0..100_000 {
            r.offer((i, 0), &mut rng);
        }
        assert_eq!(r.kept.len(), 1000);
        let mean = r.kept.iter().map(|x| x.0 as f64).sum::<f64>() / 1000.0;
        // The mean of 1000 uniform draws from 0..100000: sd ≈ 913.
        assert!((mean - 50_000.0).abs() < 4_000.0, "{mean}");
    }

    fn calls(n: usize, ns: i64, jitter: i64, rng: &mut SplitMix) -> Vec<(i64, i64)> {
        (0..n)
            .map(|_| {
                let d = ns + rng.below(jitter as u64) as i64;
                (d, d / 2)
            })
            .collect()
    }

    #[test]
    fn the_bootstrap_interval_holds_a_planted_change_and_excludes_none() {
        let mut rng = SplitMix(1);
        let base = calls(500, 1_000_000, 200_000, &mut rng);
        let same = calls(500, 1_000_000, 200_000, &mut rng);
        let slow = calls(500, 2_000_000, 400_000, &mut rng);
        let b = bootstrap(&base, &slow, 400, 3);
        let mean = b.ratios.iter().find(|r| r.0 == Metric::Mean).unwrap();
        assert!(mean.1 > 1.9 && mean.2 < 2.1, "{mean:?}");
        let b = bootstrap(&base, &same, 400, 3);
        for r in &b.ratios {
            assert!(r.1 < 1.0 && r.2 > 1.0, "no change, yet {r:?}");
        }
    }

    #[test]
    fn percentages_read_plainly() {
        assert_eq!(pct(0.1), "+10%");
        assert_eq!(pct(-0.123), "-12.3%");
        assert_eq!(pct(2.0), "+200%");
        assert!(!enough_for(0.99, 199) && enough_for(0.99, 200));
    }

    #[test]
    fn a_percentile_is_the_nearest_rank() {
        let mut v: Vec<i64> = (1..=100).rev().collect();
        let s = stats(&mut v, 0, true);
        assert_eq!((s[2], s[3]), (50.0, 99.0));
    }
}
