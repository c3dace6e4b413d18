//! The overhead governor: keeps the target's slowdown within
//! `--max-overhead` (default 5%).
//!
//! On this kind of machine the cost of a probe is the uprobe trap itself
//! (about 20 µs per call in this VM, under 1 µs on bare metal), not what the BPF
//! program does: a function demoted to in-kernel counting would still pay
//! the trap on every call. So the governor's lever is the probe itself:
//!
//! 1. **Calibrate**: time calls of a function of the agent with scope's own
//!    programs attached (filtered out by the tgid test, so nothing is
//!    recorded) and without: the per-call cost of recording (entry + return)
//!    and of counting (entry only) on this machine, now.
//! 2. **Warm up**: `attach` first puts the counting program (entry only, a
//!    per-CPU counter per function id, nothing in the ring) on every
//!    function for `--warmup`, and reads the target's CPU time
//!    (`/proc/PID/task/*/schedstat`). `record` cannot count a program that
//!    has not started yet without losing its first calls, so it records
//!    everything from the first instruction and takes the warm-up figures
//!    from the calls of its first `--warmup` (or decides as soon as, 30 ms
//!    in, what it recorded already costs ten times the budget).
//! 3. **Predict**: calls × cost ÷ the target's own time (its CPU time, or
//!    its wall time when it mostly waits, minus what the probes cost it) is
//!    the slowdown of recording every call; printed, and written to the
//!    `governor` table.
//! 4. **Demote / promote**: the hottest functions whose full recording does
//!    not fit in the budget are *sampled*: their probes are attached for one
//!    50 ms window in every N (N ≥ 2, the same N for all of them, chosen so
//!    the prediction fits, see [`windowed_overhead`]), so at most about 1
//!    call in N is recorded (fewer: the windows run slower), with exact
//!    durations and nesting. Each interval's figures (calls seen, the time
//!    observed, calls scaled to the interval, total duration, log2
//!    histogram) go to the `aggregates` table. Every second the governor
//!    re-estimates from what it recorded and promotes functions back when
//!    they fit again (with hysteresis: demote above the budget, promote only
//!    below 80% of it, judged on an upper bound of a sampled function's
//!    cost, and not within 3 s of its demotion). Between those estimates, a
//!    tick comes early when the functions recorded in full are already far
//!    over budget.
//! 5. **Backpressure**: when the ring is half full (the kernel drops events
//!    when it is full), the hottest recorded function is demoted (or N is
//!    doubled) at once, before anything is lost, and the status says so.
//!
//! Only functions with their own links can be demoted: a multi-uprobe link
//! cannot drop one of its functions. Governed functions (at most
//! [`MAX_GOVERNED`]: in `attach`, those called during the warm-up, hottest
//! first; in `record`, all of them when there are few enough) each get an
//! entry and a return link of their own; the others share their module's
//! links and are counted in the prediction but never demoted (when they
//! alone break the budget, an `unmanaged` row says so). Go functions and
//! inlined instances are never governed.
//!
//! Every decision is a `governor` row; the status line shows the sampled
//! functions and the prediction.

pub mod estimate;
pub mod ledger;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustc_hash::{FxHashMap, FxHashSet};

use crate::capture::correlator::Correlator;
use crate::capture::{AggregateRecord, CallRecord, GovernorRecord};
use crate::probe::attach::{LoadedProbes, ProbeLink, ProbePoint, close_links};

/// The most functions with links of their own (each costs two links).
pub const MAX_GOVERNED: usize = 256;
/// The largest sampling N.
pub const MAX_N: u32 = 100_000;
/// How long a sampling window stays open.
pub const WINDOW: Duration = Duration::from_millis(50);
/// The shortest interval before an early tick (see
/// `Governor::far_over_budget`), and so the shortest warm-up of `record`.
const EARLY_MIN: Duration = Duration::from_millis(30);
/// Calls added to what a sampled function's windows saw, for the upper
/// bound its promotion is decided on (about the 95% Poisson bound of 0).
const PSEUDO_CALLS: f64 = 3.0;
/// A demoted function stays sampled at least this long (no flapping).
const COOLDOWN: Duration = Duration::from_secs(3);
/// How often the governor re-estimates.
pub const TICK: Duration = Duration::from_secs(1);
/// Ring fill at which the governor samples more (the kernel drops at 100%).
pub const BACKPRESSURE_FILL_PCT: f64 = 50.0;
/// Functions kept fully recorded may use this share of the budget; the
/// sampled ones get up to [`SAMPLED_SHARE`] in all. The model leaves out
/// what opening and closing windows costs the target (its code pages are
/// rewritten each time): measured, windows cost about 1.3x the model, so
/// the sampled share is 60%.
const FULL_SHARE: f64 = 0.5;
const SAMPLED_SHARE: f64 = 0.6;
/// A sampled function is promoted only if the prediction stays below this
/// share of the budget.
const PROMOTE_SHARE: f64 = 0.8;

/// Per-call cost of scope's probes on this machine, measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cost {
    /// Entry + return probe, as when a call is recorded (ns).
    pub full_ns: f64,
    /// Entry probe only, as in the warm-up's counting (ns).
    pub entry_ns: f64,
}

/// A function of the agent's own, called only to time probes on it.
#[inline(never)]
extern "C" fn calibration_target(x: u64) -> u64 {
    std::hint::black_box(x)
        .wrapping_mul(0x9e37_79b9)
        .rotate_left(7)
}

const CALIBRATION_CALLS: u32 = 1000;

fn time_calls(calls: u32) -> f64 {
    let f: extern "C" fn(u64) -> u64 = std::hint::black_box(calibration_target);
    let started = Instant::now();
    let mut acc = 0u64;
    for i in 0..calls {
        acc = acc.wrapping_add(f(u64::from(i)));
    }
    std::hint::black_box(acc);
    started.elapsed().as_nanos() as f64
}

/// The fastest of three timings of `calls` calls, in ns per call.
fn best_per_call() -> f64 {
    (0..3)
        .map(|_| time_calls(CALIBRATION_CALLS))
        .fold(f64::INFINITY, f64::min)
        / f64::from(CALIBRATION_CALLS)
}

/// Per-call costs of the probe shapes, measured on this machine now
/// (`scope-agent calibrate`), in ns per call of a tiny function.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbeCosts {
    /// The function's own call, unprobed.
    pub bare_ns: f64,
    /// Entry + return links (uprobe + uretprobe), as when recording.
    pub entry_return_ns: f64,
    /// An entry link only, as in the warm-up.
    pub entry_ns: f64,
    /// One `uprobe.session` link (one program at entry and return); `None`
    /// when the kernel has none.
    pub session_ns: Option<f64>,
}

/// Measures [`ProbeCosts`] (see [`calibrate`]); the session link too when
/// `session` is set.
pub fn measure_costs(probes: &mut LoadedProbes, session: bool) -> Result<ProbeCosts, String> {
    let (path, offset) =
        crate::probe::attach::own_file_offset(calibration_target as *const () as usize)
            .ok_or("cannot find the calibration function in the agent's own mappings")?;
    let point = [ProbePoint {
        file_offset: offset,
        cookie: 0,
    }];
    let me = std::process::id();
    let bare = best_per_call();
    let links = probes
        .attach_module(&path, &point, me, true)
        .map_err(|e| e.to_string())?;
    let full = best_per_call();
    close_links(links);
    let link = probes
        .attach_counts(&path, &point, me)
        .map_err(|e| e.to_string())?;
    let entry = best_per_call();
    drop(link);
    let session_ns = if session {
        match probes.attach_session_counts(&path, &point, me) {
            Some(Ok(link)) => {
                let t = best_per_call();
                drop(link);
                Some(t - bare)
            }
            Some(Err(e)) => return Err(e.to_string()),
            None => None,
        }
    } else {
        None
    };
    Ok(ProbeCosts {
        bare_ns: bare,
        entry_return_ns: full - bare,
        entry_ns: entry - bare,
        session_ns,
    })
}

/// Measures [`Cost`] with the loaded programs on [`calibration_target`]
/// (links bound to the agent's pid; the programs' tgid test drops the
/// events, so only the trap and the test are timed, which is the cost).
pub fn calibrate(probes: &mut LoadedProbes) -> Result<Cost, String> {
    let m = measure_costs(probes, false)?;
    Ok(Cost {
        full_ns: m.entry_return_ns.max(50.0),
        entry_ns: m.entry_ns.max(25.0),
    })
}

/// CPU time of every live thread of `pid`, in ns (`None` if it is gone).
pub fn target_cpu_ns(pid: u32) -> Option<u64> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0u64;
    for t in dir.flatten() {
        let mut p = t.path();
        p.push("schedstat");
        if let Ok(s) = std::fs::read_to_string(&p)
            && let Some(ns) = s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
        {
            total += ns;
        }
    }
    Some(total)
}

/// One function's load: what recording all of its calls would cost, in
/// percent of the target's own CPU time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FnLoad {
    pub id: u32,
    pub overhead_pct: f64,
    /// Has links of its own (can be sampled).
    pub governed: bool,
}

/// Which governed functions to sample, and how sparsely.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub sampled: BTreeSet<u32>,
    /// 1 when nothing is sampled.
    pub n: u32,
    /// Predicted slowdown with this decision, percent.
    pub predicted_pct: f64,
    /// Predicted slowdown if every call were recorded, percent.
    pub full_pct: f64,
}

/// The decision for `loads` under `budget_pct`: everything recorded if it
/// fits; otherwise the coldest governed functions stay recorded within half
/// the budget and the rest are sampled with the N that brings the total
/// under 80% of it (at most [`MAX_N`]).
pub fn decide(loads: &[FnLoad], budget_pct: f64) -> Decision {
    let full_pct: f64 = loads.iter().map(|l| l.overhead_pct).sum();
    if full_pct <= budget_pct {
        return Decision {
            sampled: BTreeSet::new(),
            n: 1,
            predicted_pct: full_pct,
            full_pct,
        };
    }
    let fixed: f64 = loads
        .iter()
        .filter(|l| !l.governed)
        .map(|l| l.overhead_pct)
        .sum();
    let mut governed: Vec<&FnLoad> = loads.iter().filter(|l| l.governed).collect();
    governed.sort_by(|a, b| {
        a.overhead_pct
            .total_cmp(&b.overhead_pct)
            .then(a.id.cmp(&b.id))
    });
    let mut kept = fixed;
    let mut split = governed.len();
    for (i, l) in governed.iter().enumerate() {
        if kept + l.overhead_pct <= FULL_SHARE * budget_pct {
            kept += l.overhead_pct;
        } else {
            split = i;
            break;
        }
    }
    let sampled: BTreeSet<u32> = governed[split..].iter().map(|l| l.id).collect();
    let sampled_pct: f64 = governed[split..].iter().map(|l| l.overhead_pct).sum();
    if sampled.is_empty() {
        return Decision {
            sampled,
            n: 1,
            predicted_pct: full_pct,
            full_pct,
        };
    }
    let room = SAMPLED_SHARE * budget_pct - kept;
    let n = if room <= 0.0 {
        MAX_N
    } else {
        sampling_n(sampled_pct / 100.0, room / 100.0)
    };
    Decision {
        sampled,
        n,
        predicted_pct: kept + 100.0 * windowed_overhead(sampled_pct / 100.0, n),
        full_pct,
    }
}

/// The slowdown (a fraction) of functions whose full recording would cost
/// `o` (a fraction: 1.0 doubles the run time), probed for one window in
/// every `n`. Inside a window the target runs `1 + o` times slower, so it
/// makes fewer calls there than outside: over one period the probes cost
/// `w·o/(1+o)` against `(n−1)·w + w/(1+o)` of the target's own work.
pub fn windowed_overhead(o: f64, n: u32) -> f64 {
    let n = f64::from(n.max(1));
    o / ((n - 1.0) * (1.0 + o) + 1.0)
}

/// The smallest N ≥ 2 whose [`windowed_overhead`] for `o` is within `room`
/// (fractions).
pub fn sampling_n(o: f64, room: f64) -> u32 {
    if room <= 0.0 {
        return MAX_N;
    }
    let n = 1.0 + (o / room - 1.0) / (1.0 + o);
    if !n.is_finite() {
        return MAX_N;
    }
    (n.ceil().max(2.0) as u32).min(MAX_N)
}

/// Calls of a function sampled in windows, scaled from the `seen` ones to
/// the whole interval by the time observed (`on_ns` of `wall_ns`). Inside
/// its windows the probes slow the target, so for a function whose full
/// recording would cost much this is a lower bound: the function runs
/// faster between windows. (Scaling by the modelled slowdown too was tried;
/// on a shared VM the per-call cost moves by 2x from one second to the
/// next, and the estimate with it.)
pub fn scaled_calls(seen: u64, on_ns: f64, wall_ns: f64) -> u64 {
    if on_ns <= 0.0 {
        return seen;
    }
    (seen as f64 * wall_ns.max(on_ns) / on_ns).round() as u64
}

/// The inverse of [`windowed_overhead`]: the full-recording cost `o` of
/// functions sampled 1 in `n` whose windows were measured to cost `m`
/// (fractions). Capped at 1000 (a 1000-fold slowdown) where `m` says the
/// windows are nothing but probes.
pub fn full_from_windowed(m: f64, n: u32) -> f64 {
    let n = f64::from(n.max(1));
    let denom = 1.0 - m * (n - 1.0);
    if denom <= 1e-3 {
        return 1000.0;
    }
    (m * n / denom).clamp(0.0, 1000.0)
}

/// Slowdown (percent) of recording `calls` calls at `cost_ns` each, for a
/// target that used `cpu_ns` of CPU over `wall_ns`, `probe_ns` of it in the
/// probes themselves. The probes' time is set against the target's own
/// time: its CPU time when it is busy (several threads may use more CPU
/// than wall time), the wall time when it mostly waits (a probe on a thread
/// that sleeps between calls delays it only by the probe).
pub fn overhead_pct(calls: f64, cost_ns: f64, cpu_ns: f64, wall_ns: f64, probe_ns: f64) -> f64 {
    let own = cpu_ns.max(wall_ns);
    // Never below a hundredth of it: the calibration's error must not make
    // the prediction explode.
    let work = (own - probe_ns).max(own * 0.01).max(1.0);
    100.0 * calls * cost_ns / work
}

/// A governed function.
struct Governed {
    module: usize,
    point: ProbePoint,
    /// Its own entry and return links while recorded in full.
    links: Vec<ProbeLink>,
    sampled: bool,
    /// Last estimate of its overhead if fully recorded (percent).
    overhead_pct: f64,
    /// Last estimate of its calls per second (0: unknown).
    rate: f64,
    /// When it was last demoted: it is not promoted again for [`COOLDOWN`].
    demoted_at: Option<Instant>,
}

/// Links being closed on a thread; once closed and the ring drained, the
/// open calls of `ids` are cut.
struct Closing {
    handle: Option<JoinHandle<()>>,
    ids: FxHashSet<u32>,
    /// The close finished; cut after the next drain.
    closed: bool,
}

enum Window {
    Off {
        next_open: Instant,
    },
    On {
        since: Instant,
        links: Vec<ProbeLink>,
    },
}

/// Sampled calls of one function within a tick.
#[derive(Default)]
struct Agg {
    seen: u64,
    total_ns: u64,
    hist: Vec<u64>,
}

/// What the session asks of the governor; see the module docs.
pub struct Governor {
    budget_pct: f64,
    cost: Cost,
    pid: u32,
    modules: Vec<PathBuf>,
    governed: BTreeMap<u32, Governed>,
    names: FxHashMap<u32, String>,
    n: u32,
    predicted_pct: Option<f64>,
    window: Window,
    closings: Vec<Closing>,
    // The current tick.
    tick_started: Instant,
    tick_started_ns: i64,
    tick_cpu_ns: u64,
    tick_len: Duration,
    seen: FxHashMap<u32, u64>,
    /// Of `seen`: calls of governed functions recorded in full, and of
    /// functions without links of their own (for `far_over_budget`, which
    /// runs every step).
    seen_governed_full: u64,
    seen_ungoverned: u64,
    window_on: Duration,
    aggs: BTreeMap<u32, Agg>,
    last_backpressure: Option<Instant>,
    /// Whether the first estimate (the prediction) was made.
    predicted_once: bool,
    /// When a tick last came early (see `far_over_budget`).
    last_early: Option<Instant>,
    /// When `far_over_budget` may next read the target's CPU time: reading
    /// `/proc/PID/task/*/schedstat` costs a file per thread, so the check
    /// waits 20 times as long as the last read took (at most 5% of the
    /// agent's time, for targets with hundreds of threads).
    next_cpu_read: Option<Instant>,
    /// When the last "unmanaged" warning was given.
    last_unmanaged: Option<Instant>,
    rows: Vec<GovernorRecord>,
    agg_rows: Vec<AggregateRecord>,
    messages: Vec<String>,
    /// Decisions taken, for the summary.
    pub demotions: u64,
    pub promotions: u64,
    pub backpressure: u64,
}

/// What a session passes to [`Governor::new`].
pub struct GovernorSetup {
    pub budget_pct: f64,
    pub cost: Cost,
    pub pid: u32,
    /// Attach path of every module, by index.
    pub modules: Vec<PathBuf>,
    /// Function id → (module index, probe point) of the governed functions.
    pub governed: BTreeMap<u32, (usize, ProbePoint)>,
    pub names: FxHashMap<u32, String>,
    /// Length of the first interval (the warm-up, for `record`).
    pub first_tick: Duration,
    pub now_ns: i64,
}

impl Governor {
    pub fn new(setup: GovernorSetup) -> Self {
        let now = Instant::now();
        Self {
            budget_pct: setup.budget_pct,
            cost: setup.cost,
            pid: setup.pid,
            modules: setup.modules,
            governed: setup
                .governed
                .into_iter()
                .map(|(id, (module, point))| {
                    (
                        id,
                        Governed {
                            module,
                            point,
                            links: Vec::new(),
                            sampled: false,
                            overhead_pct: 0.0,
                            rate: 0.0,
                            demoted_at: None,
                        },
                    )
                })
                .collect(),
            names: setup.names,
            n: 1,
            predicted_pct: None,
            window: Window::Off { next_open: now },
            closings: Vec::new(),
            tick_started: now,
            tick_started_ns: setup.now_ns,
            tick_cpu_ns: target_cpu_ns(setup.pid).unwrap_or(0),
            tick_len: setup.first_tick,
            seen: FxHashMap::default(),
            seen_governed_full: 0,
            seen_ungoverned: 0,
            window_on: Duration::ZERO,
            aggs: BTreeMap::new(),
            last_backpressure: None,
            predicted_once: false,
            last_early: None,
            next_cpu_read: None,
            last_unmanaged: None,
            rows: Vec::new(),
            agg_rows: Vec::new(),
            messages: Vec::new(),
            demotions: 0,
            promotions: 0,
            backpressure: 0,
        }
    }

    pub fn budget_pct(&self) -> f64 {
        self.budget_pct
    }

    /// How many functions have links of their own.
    pub fn governed_count(&self) -> usize {
        self.governed.len()
    }

    /// The functions with links of their own.
    pub fn governed_ids(&self) -> BTreeSet<u32> {
        self.governed.keys().copied().collect()
    }

    fn name(&self, id: u32) -> String {
        self.names
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("#{id}"))
    }

    /// Hands over a governed function's own links (recorded in full).
    pub fn adopt_links(&mut self, id: u32, links: Vec<ProbeLink>) {
        if let Some(g) = self.governed.get_mut(&id) {
            g.links = links;
        }
    }

    /// Starts with `decision` (from the warm-up): its functions are sampled
    /// from the start, never attached in full.
    pub fn start_sampled(&mut self, decision: &Decision, now_ns: i64, reason: &str) {
        self.predicted_once = true;
        self.n = decision.n;
        self.predicted_pct = Some(decision.predicted_pct);
        for id in &decision.sampled {
            if let Some(g) = self.governed.get_mut(id) {
                g.sampled = true;
            }
        }
        let ids: Vec<u32> = decision.sampled.iter().copied().collect();
        for id in ids {
            let overhead = self.governed.get(&id).map_or(0.0, |g| g.overhead_pct);
            self.demotions += 1;
            self.rows.push(GovernorRecord {
                ts_ns: now_ns,
                function_id: Some(id),
                action: "demote",
                reason: format!(
                    "{reason}: recording every call would cost {overhead:.1}% by itself"
                ),
                calls_per_s: self.rate(id),
                predicted_pct: Some(decision.predicted_pct),
                sample_n: Some(decision.n),
                budget_pct: self.budget_pct,
            });
        }
    }

    /// Tells the correlator which functions start sampled (their entries
    /// count only inside windows).
    pub fn init_correlator(&self, correlator: &mut Correlator) {
        correlator.end_window(&self.sampled_ids(), 0);
    }

    /// Sets a governed function's estimated overhead and calls per second
    /// (from the warm-up).
    pub fn set_overhead(&mut self, id: u32, pct: f64, rate: f64) {
        if let Some(g) = self.governed.get_mut(&id) {
            g.overhead_pct = pct;
            g.rate = rate;
        }
    }

    /// The last estimate of a function's calls per second, if any.
    fn rate(&self, id: u32) -> Option<f64> {
        self.governed.get(&id).map(|g| g.rate).filter(|r| *r > 0.0)
    }

    /// A session-wide row (calibration, prediction).
    pub fn note(
        &mut self,
        now_ns: i64,
        action: &'static str,
        reason: String,
        predicted: Option<f64>,
    ) {
        self.rows.push(GovernorRecord {
            ts_ns: now_ns,
            function_id: None,
            action,
            reason,
            calls_per_s: None,
            predicted_pct: predicted,
            sample_n: None,
            budget_pct: self.budget_pct,
        });
    }

    /// Adds a warm-up `aggregates` row.
    pub fn warmup_aggregate(&mut self, row: AggregateRecord) {
        self.agg_rows.push(row);
    }

    /// Counts the calls just taken from the correlator (before they go to
    /// the writer), and the durations of sampled functions' calls.
    pub fn observe(&mut self, calls: &[CallRecord]) {
        for c in calls {
            *self.seen.entry(c.function_id).or_default() += 1;
            match self.governed.get(&c.function_id) {
                None => self.seen_ungoverned += 1,
                Some(g) if !g.sampled => self.seen_governed_full += 1,
                Some(_) => {
                    let a = self.aggs.entry(c.function_id).or_default();
                    a.seen += 1;
                    if c.duration_ns >= 0 {
                        let d = c.duration_ns as u64;
                        a.total_ns += d;
                        if a.hist.is_empty() {
                            a.hist = vec![0; 64];
                        }
                        a.hist[(63 - d.max(1).leading_zeros()) as usize] += 1;
                    }
                }
            }
        }
    }

    /// Rows and messages produced since the last call.
    pub fn take_rows(&mut self) -> (Vec<GovernorRecord>, Vec<AggregateRecord>, Vec<String>) {
        (
            std::mem::take(&mut self.rows),
            std::mem::take(&mut self.agg_rows),
            std::mem::take(&mut self.messages),
        )
    }

    /// Functions sampled now.
    pub fn sampled_count(&self) -> usize {
        self.governed.values().filter(|g| g.sampled).count()
    }

    /// For the status line: (functions sampled, N, predicted percent).
    pub fn status(&self) -> Option<(usize, u32, f64)> {
        self.predicted_pct
            .map(|p| (self.sampled_count(), self.n, p))
    }

    /// One step of the capture loop, after a drain: cuts calls of windows
    /// closed since the last drain, opens or closes the sampling window,
    /// reacts to a filling ring, and once per tick re-estimates.
    pub fn step(
        &mut self,
        probes: &mut LoadedProbes,
        correlator: &mut Correlator,
        fill_pct: Option<f64>,
        now_ns: i64,
    ) {
        let now = Instant::now();
        self.finish_closings(correlator);
        self.run_window(probes, correlator, now);
        if let Some(fill) = fill_pct
            && fill >= BACKPRESSURE_FILL_PCT
            && self
                .last_backpressure
                .is_none_or(|t| now.duration_since(t) >= Duration::from_millis(500))
        {
            self.last_backpressure = Some(now);
            self.on_backpressure(correlator, fill, now_ns);
        }
        // Ticks wait (up to half a second) for a moment with no window open
        // or closing, when promotions can attach without two links at once.
        let due = now.duration_since(self.tick_started);
        // The warm-up of `record` records every call, and a function cold
        // so far may heat up: when what is recorded in full is already far
        // over budget, decide now rather than at the end of the interval
        // (at most every 90 ms).
        let factor = if self.predicted_once { 3.0 } else { 10.0 };
        let urgent = due < self.tick_len
            && self
                .last_early
                .is_none_or(|t| now.duration_since(t) >= EARLY_MIN * 3)
            && self.far_over_budget(now, due, factor);
        if urgent {
            // Demotions need no quiet moment (promotions wait for one).
            self.tick_len = due;
            self.last_early = Some(now);
        }
        if urgent
            || (due >= self.tick_len
                && (self.quiet() || due >= self.tick_len + Duration::from_millis(500)))
        {
            self.tick(probes, correlator, now, now_ns);
        }
    }

    fn finish_closings(&mut self, correlator: &mut Correlator) {
        let mut i = 0;
        while i < self.closings.len() {
            let c = &mut self.closings[i];
            if c.closed {
                // Closed before the last drain: every event of those links
                // has been read.
                correlator.cut_window(&c.ids);
                self.closings.swap_remove(i);
                continue;
            }
            if c.handle.as_ref().is_none_or(JoinHandle::is_finished) {
                if let Some(h) = c.handle.take() {
                    let _ = h.join();
                }
                c.closed = true;
            }
            i += 1;
        }
    }

    fn close_async(&mut self, links: Vec<ProbeLink>, ids: FxHashSet<u32>) {
        let handle = if links.is_empty() {
            None
        } else {
            // All at once: a link stops firing as its close begins, and the
            // kernel's grace-period waits overlap. Returns whose entry link
            // closed first are window edges to the correlator.
            std::thread::Builder::new()
                .name("scope-detach".into())
                .spawn(move || close_links(links))
                .ok()
        };
        self.closings.push(Closing {
            handle,
            ids,
            closed: false,
        });
    }

    /// Whether the calls of functions recorded in full since the tick
    /// began (at least [`EARLY_MIN`] ago) already cost more than `factor`
    /// times the budget: then the tick comes now.
    fn far_over_budget(&mut self, now: Instant, due: Duration, factor: f64) -> bool {
        if due < EARLY_MIN {
            return false;
        }
        // After the first decision, only calls a tick could act on count:
        // those of governed functions recorded in full.
        let calls = self.seen_governed_full
            + if self.predicted_once {
                0
            } else {
                self.seen_ungoverned
            };
        let probe_ns = calls as f64 * self.cost.full_ns;
        if probe_ns < 1e6 || self.next_cpu_read.is_some_and(|t| now < t) {
            return false;
        }
        let read_started = Instant::now();
        let cpu = target_cpu_ns(self.pid).unwrap_or(self.tick_cpu_ns);
        self.next_cpu_read = Some(now + read_started.elapsed() * 20);
        let cpu_ns = cpu.saturating_sub(self.tick_cpu_ns) as f64;
        let pct = overhead_pct(
            calls as f64,
            self.cost.full_ns,
            cpu_ns,
            due.as_nanos() as f64,
            probe_ns,
        );
        pct > factor * self.budget_pct
    }

    /// No sampling window open or closing.
    fn quiet(&self) -> bool {
        matches!(self.window, Window::Off { .. }) && self.closings.is_empty()
    }

    /// The functions sampled now.
    pub fn sampled_ids(&self) -> FxHashSet<u32> {
        self.governed
            .iter()
            .filter(|(_, g)| g.sampled)
            .map(|(id, _)| *id)
            .collect()
    }

    fn run_window(&mut self, probes: &mut LoadedProbes, correlator: &mut Correlator, now: Instant) {
        match &self.window {
            Window::On { since, .. } if now.duration_since(*since) >= WINDOW => {
                let since = *since;
                let Window::On { links, .. } = std::mem::replace(
                    &mut self.window,
                    Window::Off {
                        next_open: since + WINDOW * self.n.max(2),
                    },
                ) else {
                    return;
                };
                // Only the part of the window inside the current tick.
                self.window_on += now.duration_since(since.max(self.tick_started));
                let ids = self.sampled_ids();
                correlator.end_window(&ids, crate::time::monotonic_ns());
                self.close_async(links, ids);
            }
            Window::Off { next_open } if now >= *next_open && self.closings.is_empty() => {
                let ids = self.sampled_ids();
                if ids.is_empty() {
                    return;
                }
                let mut by_module: BTreeMap<usize, Vec<ProbePoint>> = BTreeMap::new();
                for id in &ids {
                    if let Some(g) = self.governed.get(id) {
                        by_module.entry(g.module).or_default().push(g.point);
                    }
                }
                let mut links = Vec::new();
                for (m, points) in by_module {
                    match probes.attach_module(&self.modules[m], &points, self.pid, true) {
                        Ok(l) => links.extend(l),
                        Err(e) => self
                            .messages
                            .push(format!("a sampling window could not open: {e}")),
                    }
                }
                // Entries count from when every link of the window is in.
                correlator.open_window(&ids, crate::time::monotonic_ns());
                self.window = Window::On {
                    since: Instant::now(),
                    links,
                };
            }
            _ => {}
        }
    }

    /// The ring is filling: sample more before the kernel has to drop.
    fn on_backpressure(&mut self, correlator: &mut Correlator, fill: f64, now_ns: i64) {
        self.backpressure += 1;
        // The hottest function recorded in full, by calls this tick.
        let hottest = self
            .governed
            .iter()
            .filter(|(_, g)| !g.sampled)
            .map(|(id, _)| (*id, self.seen.get(id).copied().unwrap_or(0)))
            .filter(|(_, seen)| *seen > 0)
            .max_by_key(|(id, seen)| (*seen, std::cmp::Reverse(*id)));
        let reason = format!("ring {fill:.0}% full: sampling more before the kernel drops events");
        if let Some((id, _)) = hottest {
            self.n = self.n.max(2);
            self.demote(correlator, id, now_ns, "backpressure", reason.clone());
            self.messages.push(format!(
                "{reason}: {} is now sampled 1 in {}",
                self.name(id),
                self.n
            ));
        } else if self.governed.values().any(|g| g.sampled) && self.n < MAX_N {
            self.n = (self.n * 2).min(MAX_N);
            self.rows.push(GovernorRecord {
                ts_ns: now_ns,
                function_id: None,
                action: "backpressure",
                reason: reason.clone(),
                calls_per_s: None,
                predicted_pct: self.predicted_pct,
                sample_n: Some(self.n),
                budget_pct: self.budget_pct,
            });
            self.messages
                .push(format!("{reason}: sampled functions now 1 in {}", self.n));
        } else {
            self.rows.push(GovernorRecord {
                ts_ns: now_ns,
                function_id: None,
                action: "backpressure",
                reason: format!("{reason}, but no governed function is left to sample"),
                calls_per_s: None,
                predicted_pct: self.predicted_pct,
                sample_n: None,
                budget_pct: self.budget_pct,
            });
        }
    }

    fn demote(
        &mut self,
        correlator: &mut Correlator,
        id: u32,
        now_ns: i64,
        action: &'static str,
        reason: String,
    ) {
        let Some(g) = self.governed.get_mut(&id) else {
            return;
        };
        if g.sampled {
            return;
        }
        g.sampled = true;
        g.demoted_at = Some(Instant::now());
        let links = std::mem::take(&mut g.links);
        self.demotions += 1;
        self.rows.push(GovernorRecord {
            ts_ns: now_ns,
            function_id: Some(id),
            action,
            reason,
            calls_per_s: self.rate(id),
            predicted_pct: self.predicted_pct,
            sample_n: Some(self.n),
            budget_pct: self.budget_pct,
        });
        let ids: FxHashSet<u32> = std::iter::once(id).collect();
        correlator.end_window(&ids, crate::time::monotonic_ns());
        self.close_async(links, ids);
    }

    fn promote(
        &mut self,
        probes: &mut LoadedProbes,
        correlator: &mut Correlator,
        id: u32,
        now_ns: i64,
        reason: String,
    ) -> bool {
        let Some(g) = self.governed.get(&id) else {
            return false;
        };
        let (module, point) = (g.module, g.point);
        match probes.attach_module(&self.modules[module], &[point], self.pid, true) {
            Ok(links) => {
                if let Some(g) = self.governed.get_mut(&id) {
                    g.sampled = false;
                    g.links = links;
                }
                correlator.unsample(id);
                self.promotions += 1;
                self.rows.push(GovernorRecord {
                    ts_ns: now_ns,
                    function_id: Some(id),
                    action: "promote",
                    reason,
                    calls_per_s: self.rate(id),
                    predicted_pct: self.predicted_pct,
                    sample_n: Some(1),
                    budget_pct: self.budget_pct,
                });
                true
            }
            Err(e) => {
                self.messages
                    .push(format!("{} could not be promoted: {e}", self.name(id)));
                false
            }
        }
    }

    /// Re-estimates from the tick's calls and the target's CPU time, writes
    /// the sampled functions' aggregates, and applies a new decision when
    /// the budget is exceeded or sampled functions fit again.
    fn tick(
        &mut self,
        probes: &mut LoadedProbes,
        correlator: &mut Correlator,
        now: Instant,
        now_ns: i64,
    ) {
        let wall = now.duration_since(self.tick_started);
        // Count the open window's time so far in this tick.
        let mut on = self.window_on;
        if let Window::On { since, .. } = &self.window {
            on += now.duration_since((*since).max(self.tick_started));
        }
        let cpu = target_cpu_ns(self.pid).unwrap_or(self.tick_cpu_ns);
        let cpu_ns = cpu.saturating_sub(self.tick_cpu_ns) as f64;
        let recorded: u64 = self.seen.values().sum();
        let probe_ns = recorded as f64 * self.cost.full_ns;
        let wall_ns = wall.as_nanos().max(1) as f64;
        let on_ns = on.as_nanos() as f64;

        // Estimated calls in the tick, per function.
        let mut loads = Vec::new();
        let mut total_calls = 0.0;
        let ids: BTreeSet<u32> = self
            .seen
            .keys()
            .copied()
            .chain(self.governed.keys().copied())
            .collect();
        // The sampled functions share their windows, so the model is
        // inverted for all of them together (what the windows cost → what
        // recording all of them would), and the result shared out by each
        // one's part of the windows' cost.
        let window_cost =
            |seen: f64| overhead_pct(seen, self.cost.full_ns, cpu_ns, wall_ns, probe_ns) / 100.0;
        let sampled_m: f64 = self
            .governed
            .iter()
            .filter(|(_, g)| g.sampled)
            .map(|(id, _)| window_cost(self.seen.get(id).copied().unwrap_or(0) as f64))
            .sum();
        let sampled_full = full_from_windowed(sampled_m, self.n);
        // From a window's cost to the cost of recording in full.
        let amplify = if sampled_m > 1e-9 {
            sampled_full / sampled_m
        } else {
            f64::from(self.n)
        };
        // A sampled function's decision uses an upper bound: a few calls in
        // rare, slowed windows say little, and a function seen 0 times must
        // not look free (it would flap between sampled and recorded).
        let mut upper: FxHashMap<u32, f64> = FxHashMap::default();
        for id in ids {
            let seen = self.seen.get(&id).copied().unwrap_or(0) as f64;
            let governed = self.governed.get(&id).map(|g| (g.sampled, g.overhead_pct));
            let pct = match governed {
                Some((true, previous)) => {
                    if on_ns > 0.0 {
                        total_calls += seen * wall_ns / on_ns;
                        upper.insert(id, 100.0 * amplify * window_cost(seen + PSEUDO_CALLS));
                        100.0 * amplify * window_cost(seen)
                    } else {
                        upper.insert(id, previous);
                        previous
                    }
                }
                _ => {
                    total_calls += seen;
                    overhead_pct(seen, self.cost.full_ns, cpu_ns, wall_ns, probe_ns)
                }
            };
            let est = match governed {
                Some((true, _)) if on_ns > 0.0 => seen * wall_ns / on_ns,
                Some((true, _)) => -1.0,
                _ => seen,
            };
            if let Some(g) = self.governed.get_mut(&id) {
                // Sampled: the upper bound is what the next decisions use,
                // also in ticks without a window.
                g.overhead_pct = upper.get(&id).copied().unwrap_or(pct);
                if est >= 0.0 {
                    g.rate = est * 1e9 / wall_ns;
                }
            }
            loads.push(FnLoad {
                id,
                overhead_pct: pct,
                governed: governed.is_some(),
            });
        }
        let decide_loads: Vec<FnLoad> = loads
            .iter()
            .map(|l| FnLoad {
                overhead_pct: upper.get(&l.id).copied().unwrap_or(l.overhead_pct),
                ..*l
            })
            .collect();
        self.push_aggregates(now_ns, on, wall_ns);
        let sampled = self.sampled_ids();

        let current: f64 = loads
            .iter()
            .map(|l| {
                if sampled.contains(&l.id) {
                    100.0 * windowed_overhead(l.overhead_pct / 100.0, self.n)
                } else {
                    l.overhead_pct
                }
            })
            .sum();
        let decision = decide(&decide_loads, self.budget_pct);
        if !self.predicted_once {
            self.predicted_once = true;
            let rate = total_calls / wall.as_secs_f64().max(1e-3);
            let msg = format!(
                "first {:.2}s: {} calls/s; recording every call would slow the target by {:.1}% (per call {:.1} µs, measured); budget {}%",
                wall.as_secs_f64(),
                crate::status::si(rate),
                decision.full_pct,
                self.cost.full_ns / 1000.0,
                self.budget_pct
            );
            self.messages.push(msg.clone());
            self.note(now_ns, "predict", msg, Some(decision.full_pct));
        }
        let promote_ok = decision.predicted_pct <= PROMOTE_SHARE * self.budget_pct;
        let must_act = current > self.budget_pct;
        // Functions without links of their own cannot be sampled: when they
        // alone break the budget, say so (at most every 10 s).
        let unmanaged: Vec<&FnLoad> = loads
            .iter()
            .filter(|l| !l.governed && l.overhead_pct > 0.0)
            .collect();
        let unmanaged_pct: f64 = unmanaged.iter().map(|l| l.overhead_pct).sum();
        if unmanaged_pct > self.budget_pct
            && self
                .last_unmanaged
                .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10))
        {
            self.last_unmanaged = Some(now);
            let reason = format!(
                "{} function{} without links of their own (not called during the warm-up, or past the {MAX_GOVERNED} the governor can sample) cost {unmanaged_pct:.1}%, over the {}% budget; narrow -f, or attach again to count them",
                unmanaged.len(),
                if unmanaged.len() == 1 { "" } else { "s" },
                self.budget_pct
            );
            self.messages.push(reason.clone());
            self.note(now_ns, "unmanaged", reason, Some(current));
        }
        let to_demote: Vec<u32> = decision
            .sampled
            .iter()
            .filter(|id| !sampled.contains(id))
            .copied()
            .collect();
        let to_promote: Vec<u32> = sampled
            .iter()
            .filter(|id| !decision.sampled.contains(id))
            .filter(|id| {
                self.governed
                    .get(id)
                    .and_then(|g| g.demoted_at)
                    .is_none_or(|t| now.duration_since(t) >= COOLDOWN)
            })
            .copied()
            .collect();
        let quiet = self.quiet();
        let promote = promote_ok && !to_promote.is_empty() && quiet;
        if must_act || promote || (decision.n * 2 < self.n && to_promote.is_empty()) {
            let old_n = self.n;
            // Functions that stay sampled keep a real N (≥ 2) even when the
            // promotions are put off.
            self.n = if promote || to_promote.is_empty() {
                decision.n.max(1)
            } else {
                decision.n.max(self.n).max(2)
            };
            self.predicted_pct = Some(decision.predicted_pct);
            let mut demoted = Vec::new();
            for id in to_demote {
                let pct = loads
                    .iter()
                    .find(|l| l.id == id)
                    .map_or(0.0, |l| l.overhead_pct);
                let reason = format!(
                    "recording every call would cost {pct:.1}% by itself; predicted {current:.1}% > budget {}%",
                    self.budget_pct
                );
                demoted.push((self.name(id), pct));
                self.demote(correlator, id, now_ns, "demote", reason);
            }
            if let Some(msg) = grouped_message(
                &demoted,
                &format!("sampled 1 in {}", self.n),
                "% if every call were recorded",
            ) {
                self.messages
                    .push(format!("{msg}; predicted {:.1}%", decision.predicted_pct));
            }
            let mut promoted = Vec::new();
            // Promote only with no window open or closing, so a function
            // never has two links at once.
            for id in to_promote {
                if !quiet {
                    break;
                }
                let pct = loads
                    .iter()
                    .find(|l| l.id == id)
                    .map_or(0.0, |l| l.overhead_pct);
                let reason = format!("cooled down: recording every call now costs {pct:.1}%");
                if self.promote(probes, correlator, id, now_ns, reason) {
                    promoted.push((self.name(id), pct));
                }
            }
            if let Some(msg) = grouped_message(&promoted, "recorded in full again", "%") {
                self.messages.push(msg);
            }
            if self.n != old_n && self.governed.values().any(|g| g.sampled) {
                self.rows.push(GovernorRecord {
                    ts_ns: now_ns,
                    function_id: None,
                    action: "resample",
                    reason: format!("sampled functions now 1 in {} (was {old_n})", self.n),
                    calls_per_s: None,
                    predicted_pct: Some(decision.predicted_pct),
                    sample_n: Some(self.n),
                    budget_pct: self.budget_pct,
                });
            }
        } else {
            self.predicted_pct = Some(current);
        }
        // Next tick.
        self.tick_started = now;
        self.tick_started_ns = now_ns;
        self.tick_cpu_ns = cpu;
        self.tick_len = TICK;
        self.seen.clear();
        self.seen_governed_full = 0;
        self.seen_ungoverned = 0;
        // An open window's time before now was counted in this tick; the
        // rest counts from `tick_started` on.
        self.window_on = Duration::ZERO;
    }

    /// Detaches everything the governor holds (at the end of the session),
    /// returning the links for the caller to close with the rest.
    pub fn take_links(&mut self) -> Vec<ProbeLink> {
        let mut out = Vec::new();
        for g in self.governed.values_mut() {
            out.append(&mut g.links);
        }
        if let Window::On { links, .. } = std::mem::replace(
            &mut self.window,
            Window::Off {
                next_open: Instant::now(),
            },
        ) {
            out.extend(links);
        }
        for c in &mut self.closings {
            if let Some(h) = c.handle.take() {
                let _ = h.join();
            }
        }
        out
    }

    /// One `aggregates` row per sampled function for the interval from the
    /// tick's start to `now_ns` (`on` of it observed, `wall_ns` long).
    fn push_aggregates(&mut self, now_ns: i64, on: Duration, wall_ns: f64) {
        let ids: BTreeSet<u32> = self.sampled_ids().into_iter().collect();
        for id in ids {
            let a = self.aggs.remove(&id).unwrap_or_default();
            self.agg_rows.push(AggregateRecord {
                function_id: id,
                start_ns: self.tick_started_ns,
                end_ns: now_ns,
                mode: "sampled",
                sample_n: self.n,
                observed_ns: on.as_nanos() as u64,
                calls_seen: a.seen,
                total_ns: Some(a.total_ns),
                log2_hist: Some(if a.hist.is_empty() {
                    vec![0; 64]
                } else {
                    a.hist
                }),
            });
        }
    }

    /// Final rows (the last partial tick's aggregates).
    pub fn finish(&mut self, now_ns: i64) {
        let now = Instant::now();
        let wall = now.duration_since(self.tick_started);
        let mut on = self.window_on;
        if let Window::On { since, .. } = &self.window {
            on += now.duration_since((*since).max(self.tick_started));
        }
        self.push_aggregates(now_ns, on, wall.as_nanos().max(1) as f64);
    }
}

/// Functions named one by one in a message at most; past that, one line
/// names the first of them and counts the rest (the `governor` table has
/// every decision), so one tick that samples 200 functions prints one line.
const NAMED_IN_MESSAGE: usize = 3;

/// `f sampled 1 in 8 (2.1% if ...)`, or `12 functions sampled 1 in 8: f
/// (2.1%), g (1.9%), h (1.2%) and 9 more` for (name, percent) pairs; `None`
/// when there are none.
fn grouped_message(items: &[(String, f64)], what: &str, pct_note: &str) -> Option<String> {
    match items {
        [] => None,
        [(name, pct)] => Some(format!("{name} {what} ({}{pct_note})", short_pct(*pct))),
        _ => {
            let named: Vec<String> = items
                .iter()
                .take(NAMED_IN_MESSAGE)
                .map(|(name, pct)| format!("{name} ({}%)", short_pct(*pct)))
                .collect();
            let rest = items.len().saturating_sub(NAMED_IN_MESSAGE);
            let more = if rest > 0 {
                format!(" and {rest} more")
            } else {
                String::new()
            };
            Some(format!(
                "{} functions {what}: {}{more}",
                items.len(),
                named.join(", ")
            ))
        }
    }
}

/// A percentage with two decimals below 1 (a cooled function's 0.04%),
/// one above.
fn short_pct(pct: f64) -> String {
    if pct < 1.0 {
        format!("{pct:.2}")
    } else {
        format!("{pct:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(id: u32, pct: f64, governed: bool) -> FnLoad {
        FnLoad {
            id,
            overhead_pct: pct,
            governed,
        }
    }

    #[test]
    fn everything_is_recorded_when_it_fits() {
        let d = decide(
            &[load(1, 1.0, true), load(2, 2.5, true), load(3, 1.0, false)],
            5.0,
        );
        assert!(d.sampled.is_empty());
        assert_eq!(d.n, 1);
        assert!((d.predicted_pct - 4.5).abs() < 1e-9);
        assert!((d.full_pct - 4.5).abs() < 1e-9);
    }

    #[test]
    fn the_hottest_functions_are_sampled_within_the_budget() {
        // A leaf at 2000% and a cold function at 0.5%: the cold one stays,
        // the leaf is sampled so its windows cost at most 3 - 0.5 = 2.5%:
        // N = ceil(1 + (20 / 0.025 - 1) / 21) = 40.
        let d = decide(&[load(1, 2000.0, true), load(2, 0.5, true)], 5.0);
        assert_eq!(d.sampled, BTreeSet::from([1]));
        assert_eq!(d.n, 40);
        assert!(d.predicted_pct <= 3.0, "{d:?}");
        assert!(d.predicted_pct > 2.0, "{d:?}");
        assert!((d.full_pct - 2000.5).abs() < 1e-9);
    }

    #[test]
    fn functions_without_own_links_are_never_sampled() {
        // The ungoverned function alone exceeds the budget: everything
        // governed is sampled as sparsely as allowed, and the prediction
        // says the budget is not met.
        let d = decide(&[load(1, 9.0, false), load(2, 3.0, true)], 5.0);
        assert_eq!(d.sampled, BTreeSet::from([2]));
        assert_eq!(d.n, MAX_N);
        assert!(d.predicted_pct > 5.0);
    }

    #[test]
    fn n_is_at_least_two_and_at_most_max() {
        let d = decide(&[load(1, 5.5, true)], 5.0);
        assert_eq!(d.n, 2);
        // However hot, a window costs at most its own length: N stays near
        // 1 / budget.
        let d = decide(&[load(1, 1e9, true)], 5.0);
        assert_eq!(d.n, 35);
        assert_eq!(sampling_n(1.0, 0.0), MAX_N);
    }

    #[test]
    fn sampled_counts_are_scaled_by_the_time_observed() {
        // 100 calls seen in 50 ms of a 1 s interval.
        assert_eq!(scaled_calls(100, 5e7, 1e9), 2000);
        // Never observed: nothing to scale.
        assert_eq!(scaled_calls(7, 0.0, 1e9), 7);
    }

    #[test]
    fn the_window_model_inverts() {
        for (o, n) in [(0.1, 2), (5.0, 10), (48.0, 21), (300.0, 400)] {
            let m = windowed_overhead(o, n);
            let back = full_from_windowed(m, n);
            assert!((back - o).abs() < 1e-6 * o.max(1.0), "{o} {n} {m} {back}");
        }
        assert_eq!(windowed_overhead(0.3, 1), 0.3);
        // Windows that are all probes: the cap.
        assert_eq!(full_from_windowed(0.5, 10), 1000.0);
    }

    #[test]
    fn overhead_is_relative_to_the_targets_own_work() {
        // 1000 calls at 10 µs on a target that used 1 s of CPU in 1 s, 10 ms
        // of it in the probes: 10 ms / 990 ms.
        let pct = overhead_pct(1000.0, 10_000.0, 1e9, 1e9, 1e7);
        assert!((pct - 100.0 * 1e7 / 9.9e8).abs() < 1e-9, "{pct}");
        // A target that sleeps: 5 calls in 1.5 s of wall time, 60 µs of CPU.
        let pct = overhead_pct(5.0, 20_000.0, 6e4, 1.5e9, 1e5);
        assert!(pct < 0.01, "{pct}");
        // Probes costing more than the time seen: clamped, never negative.
        assert!(overhead_pct(10.0, 1e6, 1e6, 1e6, 2e6) > 0.0);
    }

    fn governor_of(ids: &[u32]) -> Governor {
        Governor::new(GovernorSetup {
            budget_pct: 5.0,
            cost: Cost {
                full_ns: 10_000.0,
                entry_ns: 5_000.0,
            },
            pid: std::process::id(),
            modules: vec![PathBuf::from("/bin/true")],
            governed: ids
                .iter()
                .map(|&id| {
                    (
                        id,
                        (
                            0,
                            ProbePoint {
                                file_offset: 0x1000 + u64::from(id),
                                cookie: u64::from(id),
                            },
                        ),
                    )
                })
                .collect(),
            names: ids.iter().map(|&id| (id, format!("f{id}"))).collect(),
            first_tick: TICK,
            now_ns: 0,
        })
    }

    fn calls(id: u32, n: usize) -> Vec<CallRecord> {
        (0..n)
            .map(|i| CallRecord {
                function_id: id,
                call_id: i as u64 + 1,
                duration_ns: 1000,
                ..Default::default()
            })
            .collect()
    }

    #[test]
    fn backpressure_samples_the_hottest_recorded_function_then_samples_more() {
        let mut g = governor_of(&[1, 2, 3]);
        let mut c = Correlator::new(0, 0);
        g.observe(&calls(1, 10));
        g.observe(&calls(2, 500));
        g.observe(&calls(3, 40));
        // The ring is 70% full: the hottest function (2) is sampled at once.
        g.on_backpressure(&mut c, 70.0, 1);
        let (rows, _, messages) = g.take_rows();
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0].action, "backpressure");
        assert_eq!(rows[0].function_id, Some(2));
        assert_eq!(rows[0].sample_n, Some(2));
        assert!(
            messages[0].contains("f2 is now sampled 1 in 2"),
            "{messages:?}"
        );
        assert_eq!(g.sampled_ids(), FxHashSet::from_iter([2]));
        // Again: the next hottest.
        g.on_backpressure(&mut c, 70.0, 2);
        assert_eq!(g.sampled_ids(), FxHashSet::from_iter([2, 3]));
        g.on_backpressure(&mut c, 70.0, 3);
        assert_eq!(g.sampled_ids(), FxHashSet::from_iter([1, 2, 3]));
        g.take_rows();
        // Nothing left recorded in full: N doubles.
        g.on_backpressure(&mut c, 90.0, 4);
        let (rows, _, _) = g.take_rows();
        assert_eq!(rows[0].function_id, None);
        assert_eq!(rows[0].sample_n, Some(4));
        assert_eq!(g.backpressure, 4);
        assert_eq!(g.demotions, 3);
    }

    #[test]
    fn sampled_calls_make_aggregates_with_a_log2_histogram() {
        let mut g = governor_of(&[7]);
        let mut c = Correlator::new(0, 0);
        g.observe(&calls(7, 5));
        g.on_backpressure(&mut c, 60.0, 1);
        let mut sampled = calls(7, 3);
        sampled[0].duration_ns = 0;
        sampled[1].duration_ns = 1500; // [1024, 2048): bucket 10
        sampled[2].duration_ns = -1; // cut: counted, no duration
        g.observe(&sampled);
        g.finish(5);
        let (_, aggs, _) = g.take_rows();
        assert_eq!(aggs.len(), 1);
        let a = &aggs[0];
        assert_eq!((a.function_id, a.mode, a.calls_seen), (7, "sampled", 3));
        assert_eq!(a.total_ns, Some(1500));
        let hist = a.log2_hist.as_ref().unwrap();
        assert_eq!(hist.len(), 64);
        assert_eq!((hist[0], hist[10], hist.iter().sum::<u64>()), (1, 1, 2));
    }

    #[test]
    fn calibration_target_is_callable() {
        assert_eq!(calibration_target(0), 0);
        assert!(best_per_call() > 0.0);
    }

    #[test]
    fn many_decisions_of_one_tick_make_one_line() {
        let items = |n: usize| -> Vec<(String, f64)> {
            (0..n)
                .map(|i| (format!("f{i}"), 2.0 - i as f64 / 10.0))
                .collect()
        };
        assert_eq!(grouped_message(&[], "sampled 1 in 8", "%"), None);
        assert_eq!(
            grouped_message(&items(1), "sampled 1 in 8", "% if every call were recorded"),
            Some("f0 sampled 1 in 8 (2.0% if every call were recorded)".into())
        );
        assert_eq!(
            grouped_message(&items(2), "recorded in full again", "%"),
            Some("2 functions recorded in full again: f0 (2.0%), f1 (1.9%)".into())
        );
        assert_eq!(
            grouped_message(&[("g".into(), 0.043)], "recorded in full again", "%"),
            Some("g recorded in full again (0.04%)".into())
        );
        assert_eq!(
            grouped_message(&items(219), "sampled 1 in 92", "%"),
            Some(
                "219 functions sampled 1 in 92: f0 (2.0%), f1 (1.9%), f2 (1.8%) and 216 more"
                    .into()
            )
        );
    }
}
