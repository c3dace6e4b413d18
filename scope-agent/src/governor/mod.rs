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
//!
//! The code: `model.rs` (probe costs, the target's CPU time, the slowdown
//! model), `policy.rs` (what to sample: [`decide`], and what a tick changes),
//! `windows.rs` (the mechanism: sampling windows, demotion and promotion of
//! a function's own links), `messages.rs` (the lines printed); this file is
//! the [`Governor`] the session drives, its estimates and its rows.

mod messages;
mod model;
mod policy;
mod windows;

pub mod estimate;
pub mod ledger;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rustc_hash::{FxHashMap, FxHashSet};

use std::sync::Arc;

use crate::capture::correlator::Correlator;
use crate::capture::{AggregateRecord, CallRecord, GovernorRecord};
use crate::probe::attach::{LoadedProbes, ProbeLink, ProbePoint};
use estimate::{CostBand, CountEstimate, estimate_since};
use ledger::{Ledger, SLOT, read_thread_cpu, read_user_sys};
use messages::grouped_message;
pub use model::{
    Cost, MAX_N, ProbeCosts, calibrate, measure_costs, overhead_pct, sampling_n, target_cpu_ns,
    windowed_overhead,
};
use policy::Standing;
pub use policy::{Decision, FnLoad, decide, decide_with};
pub use windows::WINDOW;
use windows::{Closing, Window};

/// The most functions with links of their own (each costs two links):
/// `--max-functions`' default fits, so every function of a default plan can
/// be sampled whenever it heats up.
pub const MAX_GOVERNED: usize = 1024;
/// How far back a tick looks at most for a sampled function's rate.
const HISTORY_NS: i64 = 10_000_000_000;
/// What an early tick judges: the last this long.
const RECENT: Duration = Duration::from_millis(100);
/// No function's modelled cost of full recording is taken above this
/// (percent): a function whose probes may take all the time it runs.
const MAX_LOAD_PCT: f64 = 1e6;
/// A CPU reading of every slot when one costs less than this; otherwise
/// only when what is probed changes, and at ticks.
const CHEAP_READ: Duration = Duration::from_micros(500);
/// The shortest interval before an early tick (see
/// `Governor::far_over_budget`), and so the shortest warm-up of `record`.
const EARLY_MIN: Duration = Duration::from_millis(30);
/// How far the probes' real cost per event may be from the one measured
/// when the session started: its cost in the target depends on the probed
/// instruction and moves with the VM's load. Measured on this VM: 0.75x to
/// 1.5x of the calibration; the band is wider. Shared with the predictor
/// (`scope_query::analysis::predict`), so a plan's predicted overhead uses
/// the same band.
const BAND_LOW: f64 = scope_query::analysis::predict::COST_BAND_LOW;
const BAND_HIGH: f64 = scope_query::analysis::predict::COST_BAND_HIGH;
/// How often the governor re-estimates.
pub const TICK: Duration = Duration::from_secs(1);
/// Ring fill at which the governor samples more (the kernel drops at 100%).
pub const BACKPRESSURE_FILL_PCT: f64 = 50.0;

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
    /// When it was last demoted: it is not promoted again for
    /// [`COOLDOWN`](policy::COOLDOWN).
    demoted_at: Option<Instant>,
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
    /// The target's system time at the tick's start (`/proc/PID/stat`).
    tick_sys_ns: u64,
    /// Its system time when the governor started and when recording ended.
    sys_at_start: Option<u64>,
    sys_at_end: Option<u64>,
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
    /// When the last "unmanaged" warning was given.
    last_unmanaged: Option<Instant>,
    rows: Vec<GovernorRecord>,
    agg_rows: Vec<AggregateRecord>,
    messages: Vec<String>,
    /// Epoch minus monotonic clock, ns (the correlator's window edges are
    /// monotonic times; the ledger's slots epoch times).
    clock_offset_ns: i64,
    /// Every call counted by slot, with what was probed and the target's
    /// CPU time: what the counts are estimated from.
    ledger: Ledger,
    /// What one probe event costs, and how sure that is.
    band: CostBand,
    /// When the current slot began, and what the last CPU reading cost.
    slot_started: Instant,
    read_cost: Duration,
    /// Calls over the whole session so far, from the last tick.
    calls_so_far: Option<CallsSoFar>,
    /// The slowdown the probes caused in the last tick, percent.
    measured_pct: Option<f64>,
    /// Whether the last prediction of recording every call was only a
    /// lower bound.
    full_at_least: bool,
    /// State of the pauses' jitter (see `windows::jitter`).
    rng: u64,
    /// How much more the sampling windows cost than their model says
    /// (measured each tick, smoothed; see `policy::window_factor`).
    window_factor: f64,
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
    /// Epoch minus monotonic clock, ns.
    pub clock_offset_ns: i64,
}

/// See [`Governor::final_prediction`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SessionPrediction {
    pub full_pct: Option<f64>,
    pub full_at_least: bool,
    pub done_pct: Option<f64>,
}

/// The session's calls so far, for the status line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CallsSoFar {
    /// Exact, or the estimate (the lower bound where there is none).
    pub calls: u64,
    /// Every call was recorded.
    pub exact: bool,
    /// Some function's count has only a lower bound: `calls` is one too.
    pub at_least: bool,
    /// Calls recorded.
    pub recorded: u64,
}

/// What the status line shows of the governor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GovernorStatus {
    pub sampled: usize,
    pub n: u32,
    /// Predicted slowdown with the current decision, percent.
    pub predicted_pct: f64,
    /// Measured over the last second (probe events × their cost ÷ the
    /// target's own time), percent.
    pub measured_pct: Option<f64>,
    pub calls: Option<CallsSoFar>,
}

impl Governor {
    pub fn new(setup: GovernorSetup) -> Self {
        let now = Instant::now();
        let return_ns = (setup.cost.full_ns - setup.cost.entry_ns).max(0.1 * setup.cost.full_ns);
        let band = CostBand {
            entry_ns: setup.cost.full_ns - return_ns,
            return_ns,
            low: BAND_LOW,
            high: BAND_HIGH,
        };
        Self {
            clock_offset_ns: setup.clock_offset_ns,
            ledger: Ledger::new(setup.now_ns, read_thread_cpu(setup.pid)),
            band,
            slot_started: now,
            read_cost: Duration::ZERO,
            calls_so_far: None,
            measured_pct: None,
            full_at_least: false,
            window_factor: 1.0,
            rng: 0x9e37_79b9_7f4a_7c15 ^ u64::from(setup.pid),
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
            tick_sys_ns: read_user_sys(setup.pid).map_or(0, |u| u.1),
            sys_at_start: read_user_sys(setup.pid).map(|u| u.1),
            sys_at_end: None,
            tick_len: setup.first_tick,
            seen: FxHashMap::default(),
            seen_governed_full: 0,
            seen_ungoverned: 0,
            window_on: Duration::ZERO,
            aggs: BTreeMap::new(),
            last_backpressure: None,
            predicted_once: false,
            last_early: None,
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
        self.ledger.observe(calls);
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

    /// For the status line, once the first decision is made.
    pub fn status(&self) -> Option<GovernorStatus> {
        self.predicted_pct.map(|p| GovernorStatus {
            sampled: self.sampled_count(),
            n: self.n,
            predicted_pct: p,
            measured_pct: self.measured_pct,
            calls: self.calls_so_far,
        })
    }

    /// Ends the current slot at monotonic time `mono_ns` (as the
    /// correlator's window edges are taken), reading the target's CPU time
    /// when `read` (what is probed changes, or a tick) or when a reading is
    /// cheap. Returns the cut's epoch time.
    fn cut(&mut self, mono_ns: u64, read: bool) -> i64 {
        let at = mono_ns as i64 + self.clock_offset_ns;
        let mut sampled: Vec<u32> = self.sampled_ids().into_iter().collect();
        sampled.sort_unstable();
        let windowed = match &self.window {
            Window::On { ids, .. } => Arc::clone(ids),
            Window::Off { .. } => Arc::from([]),
        };
        let reading = (read || self.read_cost < CHEAP_READ).then(|| {
            let started = Instant::now();
            let r = read_thread_cpu(self.pid);
            self.read_cost = started.elapsed();
            r
        });
        self.ledger.cut(at, sampled.into(), windowed, reading);
        self.slot_started = Instant::now();
        at
    }

    /// The count of every function in `ids` over the session (call after
    /// [`finish`](Self::finish)); `lost` events make none exact.
    pub fn estimates(&self, ids: &[u32], lost: u64) -> Vec<CountEstimate> {
        estimate::estimate(&self.ledger, ids, self.session_band(), lost)
    }

    /// The cost band for the session's estimates: the calibrated cost, but
    /// never more per event than the target's system time over the session
    /// allows (the kernel charges the probes' handling there; a calibration
    /// taken on a loaded machine reads high).
    fn session_band(&self) -> CostBand {
        let (Some(sys_end), Some(sys_start)) = (self.sys_at_end, self.sys_at_start) else {
            return self.band;
        };
        let slots = self.ledger.slots();
        let modelled: f64 = slots
            .iter()
            .map(|s| s.entries as f64 * self.band.entry_ns + s.returns as f64 * self.band.return_ns)
            .sum();
        let cap = ledger::sys_cap_ns(sys_end.saturating_sub(sys_start));
        if modelled <= cap || modelled <= 0.0 {
            return self.band;
        }
        let scale = cap / modelled;
        CostBand {
            entry_ns: self.band.entry_ns * scale,
            return_ns: self.band.return_ns * scale,
            ..self.band
        }
    }

    /// What the session's model says at its end, from `estimates` (the
    /// counts of every function, [`estimates`](Self::estimates)): the
    /// slowdown recording every call would have caused (percent; only a
    /// lower bound when `.1`, because a count or the target's own time is
    /// known only from below), and the slowdown the probes did cause, warm-up
    /// and windows included (their events × their cost, over the target's
    /// own time), both against the target's own CPU time over the session.
    pub fn final_prediction(&self, estimates: &[CountEstimate]) -> SessionPrediction {
        let band = self.session_band();
        let slots = self.ledger.slots();
        let cpu: f64 = slots.iter().filter_map(|s| s.cpu_ns).sum::<u64>() as f64;
        let probe: f64 = slots
            .iter()
            .map(|s| s.entries as f64 * band.entry_ns + s.returns as f64 * band.return_ns)
            .sum();
        let cost_scale = band.entry_ns / self.band.entry_ns.max(1e-9);
        let calls: f64 = estimates
            .iter()
            .map(|e| e.calls.unwrap_or(e.low) as f64)
            .sum();
        let mut at_least = estimates.iter().any(|e| e.calls.is_none());
        let mut own = cpu - probe;
        if own < probe {
            // Where the probes took more than the target's own work, that
            // work itself ran slower than bare (caches and TLB refilled
            // after every trap, part of the handling in user mode), and the
            // calibrated cost may be off by its band: the least the probes
            // can have taken leaves the most the target can have done, and
            // the figure is a lower bound.
            own = cpu - band.low * probe;
            at_least = true;
        }
        let own = own.max(0.01 * cpu).max(1.0);
        SessionPrediction {
            full_pct: (cpu > 0.0).then(|| 100.0 * calls * self.cost.full_ns * cost_scale / own),
            full_at_least: at_least,
            done_pct: (cpu > 0.0).then(|| 100.0 * probe / own),
        }
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
        // Window-edge events cost the target too.
        let offset = self.clock_offset_ns;
        self.ledger.add_events(
            correlator
                .take_edges()
                .into_iter()
                .map(|k| k as i64 + offset),
        );
        self.finish_closings(correlator);
        self.run_window(probes, correlator, now);
        if now.duration_since(self.slot_started) >= SLOT {
            self.cut(crate::time::monotonic_ns(), false);
        }
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
            && self.far_over_budget(due, factor);
        if urgent {
            // Demotions need no quiet moment (promotions wait for one).
            self.tick_len = due;
            self.last_early = Some(now);
        }
        if urgent
            || (due >= self.tick_len
                && (self.quiet() || due >= self.tick_len + Duration::from_millis(500)))
        {
            self.tick(probes, correlator, now, now_ns, urgent);
        }
    }

    /// Whether the calls of functions recorded in full over the last
    /// [`RECENT`] (from the ledger's slots, at least [`EARLY_MIN`] into the
    /// tick) already cost more than `factor` times the budget: then the
    /// tick comes now. Judged on the recent slots, not the whole interval:
    /// a target idle for most of it and hot since must not look cool.
    fn far_over_budget(&self, due: Duration, factor: f64) -> bool {
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
        if (calls as f64) * self.cost.full_ns < 1e6 {
            return false;
        }
        let end = self.ledger.current().start_ns;
        let first = self.recent_from();
        let mut recent_calls = 0u64;
        let mut cpu_ns = 0u64;
        let mut wait_ns = 0u64;
        for s in self.ledger.slots().iter().rev().skip(1) {
            if s.start_ns < first {
                break;
            }
            cpu_ns += s.cpu_ns.unwrap_or(0);
            wait_ns += s.wait_ns.unwrap_or(0);
            recent_calls += s
                .counts
                .iter()
                .filter(|(id, _)| match self.governed.get(id) {
                    Some(g) => !g.sampled,
                    None => !self.predicted_once,
                })
                .map(|(_, n)| *n)
                .sum::<u64>();
        }
        let wall_ns = (end - first).max(1) as f64;
        if wall_ns < EARLY_MIN.as_nanos() as f64 {
            return false;
        }
        let probe_ns = recent_calls as f64 * self.cost.full_ns;
        // The wall time the target could run (see `tick_figures`).
        let pct = overhead_pct(
            recent_calls as f64,
            self.cost.full_ns,
            cpu_ns as f64,
            wall_ns - wait_ns as f64,
            probe_ns,
        );
        pct > factor * self.budget_pct
    }

    /// Where the recent slots start that an early tick judges: the start of
    /// the earliest closed slot ending within [`RECENT`] of the current
    /// slot's start (the current slot's start when there is none). Shared
    /// by [`far_over_budget`](Self::far_over_budget) and the tick it calls,
    /// so the tick judges the very calls that made it urgent: a slot may be
    /// far longer than [`SLOT`] (the first one spans the attach), and a tick
    /// that left it out for starting too early saw no call at all.
    fn recent_from(&self) -> i64 {
        let end = self.ledger.current().start_ns;
        let from = end - RECENT.as_nanos() as i64;
        self.ledger
            .slots()
            .iter()
            .rev()
            .skip(1)
            .take_while(|s| s.end_ns > from)
            .last()
            .map_or(end, |s| s.start_ns)
    }

    /// The functions sampled now.
    pub fn sampled_ids(&self) -> FxHashSet<u32> {
        self.governed
            .iter()
            .filter(|(_, g)| g.sampled)
            .map(|(id, _)| *id)
            .collect()
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

    /// Re-estimates from the tick's calls and the target's CPU time, writes
    /// the sampled functions' aggregates, and applies a new decision when
    /// the budget is exceeded or sampled functions fit again.
    fn tick(
        &mut self,
        probes: &mut LoadedProbes,
        correlator: &mut Correlator,
        now: Instant,
        now_ns: i64,
        urgent: bool,
    ) {
        let wall = now.duration_since(self.tick_started);
        // Count the open window's time so far in this tick.
        let mut on = self.window_on;
        if let Window::On { since, .. } = &self.window {
            on += now.duration_since((*since).max(self.tick_started));
        }
        // A CPU reading ends the tick's last slot.
        let tick_end_ns = self.cut(crate::time::monotonic_ns(), true);
        let cpu = target_cpu_ns(self.pid).unwrap_or(self.tick_cpu_ns);
        // An early tick judges the last moments only: the target may have
        // been idle for most of the interval and hot since (an average
        // over the interval would hide how hot).
        let from_ns = if urgent {
            self.tick_started_ns.max(self.recent_from())
        } else {
            self.tick_started_ns
        };
        let wall_ns = (tick_end_ns - from_ns).max(1) as f64;
        // The probes cannot have taken more than the target's whole system
        // time (the kernel charges their handling there): a cap on what the
        // calibration says, when the machine's load made it read high.
        let sys_now = read_user_sys(self.pid).map(|u| u.1);
        let sys_cap = sys_now.map(|now| ledger::sys_cap_ns(now.saturating_sub(self.tick_sys_ns)));
        let tick = self.tick_figures(from_ns, tick_end_ns, wall_ns, sys_cap);
        self.measured_pct = Some(100.0 * tick.probe_ns / tick.own_ns);
        let cost_of = |calls: f64| {
            (100.0 * calls * self.cost.full_ns * tick.cost_scale / tick.own_ns).min(MAX_LOAD_PCT)
        };
        let mut loads = Vec::new();
        let mut total_calls = 0.0;
        let mut lower_bound_only = false;
        // A sampled function's decision uses the upper end of its
        // interval: a few calls in rare, slowed windows say little, and a
        // function seen 0 times must not look free (it would flap between
        // sampled and recorded).
        let mut upper: FxHashMap<u32, f64> = FxHashMap::default();
        let ids: BTreeSet<u32> = tick
            .calls
            .keys()
            .copied()
            .chain(self.governed.keys().copied())
            .collect();
        for id in ids {
            let governed = self.governed.contains_key(&id);
            let (calls, pct) = match tick.sampled.get(&id) {
                Some(e) => {
                    let calls = e.calls.unwrap_or(e.low);
                    lower_bound_only |= e.calls.is_none();
                    upper.insert(id, e.high.map_or(MAX_LOAD_PCT, cost_of));
                    (calls, cost_of(calls))
                }
                None => {
                    let calls = tick.calls.get(&id).copied().unwrap_or(0.0);
                    (calls, cost_of(calls))
                }
            };
            total_calls += calls;
            if let Some(g) = self.governed.get_mut(&id) {
                // Sampled: the upper end is what the next decisions use.
                g.overhead_pct = upper.get(&id).copied().unwrap_or(pct);
                g.rate = calls * 1e9 / wall_ns;
            }
            loads.push(FnLoad {
                id,
                overhead_pct: pct,
                governed,
            });
        }
        let decide_loads: Vec<FnLoad> = loads
            .iter()
            .map(|l| FnLoad {
                overhead_pct: upper.get(&l.id).copied().unwrap_or(l.overhead_pct),
                ..*l
            })
            .collect();
        self.push_aggregates(now_ns, on);
        let sampled = self.sampled_ids();
        self.full_at_least = lower_bound_only;
        self.calls_so_far = Some(self.calls_so_far_now());

        // The windows' real cost against their model, from this tick.
        let full_part: f64 = loads
            .iter()
            .filter(|l| !sampled.contains(&l.id))
            .map(|l| l.overhead_pct)
            .sum();
        let modelled = policy::current_pct(&loads, &sampled, self.n, 1.0) - full_part;
        if let Some(f) =
            policy::window_factor(self.measured_pct.unwrap_or(0.0), full_part, modelled)
        {
            self.window_factor = 0.5 * self.window_factor + 0.5 * f;
        }
        let current = policy::current_pct(&loads, &sampled, self.n, self.window_factor);
        let decision = decide_with(&decide_loads, self.budget_pct, self.window_factor);
        if !self.predicted_once {
            self.predicted_once = true;
            // The calls judged (the recent slots, for an early tick) over
            // the time they span.
            let rate = total_calls * 1e9 / wall_ns.max(1e6);
            let msg = format!(
                "first {:.2}s: {}{} calls/s; recording every call would slow the target by {} (per call {:.1} µs, measured); budget {}%",
                wall.as_secs_f64(),
                if lower_bound_only { "at least " } else { "" },
                crate::status::si(rate),
                predicted_text(decision.full_pct, lower_bound_only),
                self.cost.full_ns / 1000.0,
                self.budget_pct
            );
            self.messages.push(msg.clone());
            self.note(now_ns, "predict", msg, Some(decision.full_pct));
        }
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
        let quiet = self.quiet();
        let changes = policy::changes(
            &decision,
            &Standing {
                budget_pct: self.budget_pct,
                sampled: &sampled,
                n: self.n,
                current_pct: current,
                quiet,
                now,
            },
            |id| self.governed.get(&id).and_then(|g| g.demoted_at),
        );
        if changes.apply {
            let old_n = self.n;
            self.n = changes.n;
            self.predicted_pct = Some(decision.predicted_pct);
            let mut demoted = Vec::new();
            for id in changes.to_demote {
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
            for id in changes.to_promote {
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
        self.tick_started_ns = tick_end_ns;
        self.tick_cpu_ns = cpu;
        if let Some(sys) = sys_now {
            self.tick_sys_ns = sys;
        }
        self.tick_len = TICK;
        self.seen.clear();
        self.seen_governed_full = 0;
        self.seen_ungoverned = 0;
        // An open window's time before now was counted in this tick; the
        // rest counts from `tick_started` on.
        self.window_on = Duration::ZERO;
    }

    /// What the ledger says of the tick from `from_ns` to `to_ns`: the
    /// target's own time and what the probes took of it, the calls of the
    /// functions recorded in full, and the recent counts of those sampled.
    fn tick_figures(
        &self,
        from_ns: i64,
        to_ns: i64,
        wall_ns: f64,
        sys_cap_ns: Option<f64>,
    ) -> TickFigures {
        let slots: Vec<&ledger::Slot> = self
            .ledger
            .slots()
            .iter()
            .filter(|s| s.start_ns >= from_ns && s.end_ns <= to_ns)
            .collect();
        let cpu_ns: f64 = slots.iter().filter_map(|s| s.cpu_ns).sum::<u64>() as f64;
        let wait_ns: f64 = slots.iter().filter_map(|s| s.wait_ns).sum::<u64>() as f64;
        let modelled: f64 = slots
            .iter()
            .map(|s| s.entries as f64 * self.band.entry_ns + s.returns as f64 * self.band.return_ns)
            .sum();
        let probe_ns = modelled.min(sys_cap_ns.unwrap_or(f64::INFINITY));
        let cost_scale = if modelled > 0.0 {
            probe_ns / modelled
        } else {
            1.0
        };
        // The target's own time: its CPU time when it is busy (several
        // threads may use more than the wall time), the wall time when it
        // mostly waits, less the time it was ready to run but waited for a
        // CPU (on a loaded machine a busy target would otherwise look idle,
        // and its calls cheap); never below a hundredth of it, so the
        // calibration's error cannot make the loads explode.
        let seen = cpu_ns.max(wall_ns - wait_ns);
        let own_ns = (seen - probe_ns).max(0.01 * seen).max(1.0);
        let mut calls: FxHashMap<u32, f64> = FxHashMap::default();
        let mut sampled_ids: BTreeSet<u32> = BTreeSet::new();
        for s in &slots {
            for (id, n) in &s.counts {
                *calls.entry(*id).or_default() += *n as f64;
            }
            sampled_ids.extend(s.sampled.iter().filter(|id| !s.probed(**id)));
        }
        // Sampled functions: their calls per ns over the recent history,
        // for the tick's length.
        let mut sampled = FxHashMap::default();
        if !sampled_ids.is_empty() {
            // The tick, reaching back to take in two windows (sampled
            // functions are seen only there), but no further than
            // HISTORY_NS: a function that cooled down must show it.
            let slots = self.ledger.slots();
            let mut windows = slots
                .iter()
                .rev()
                .filter(|s| !s.windowed.is_empty() && s.end_ns <= to_ns)
                .map(|s| s.start_ns);
            let second = windows.nth(1).unwrap_or(i64::MIN);
            let since = from_ns.min(second).max(to_ns.saturating_sub(HISTORY_NS));
            let first = self
                .ledger
                .slots()
                .iter()
                .find(|s| s.end_ns > since)
                .map_or(to_ns, |s| s.start_ns.max(since));
            let span = (to_ns - first).max(1) as f64;
            let ids: Vec<u32> = sampled_ids.into_iter().collect();
            for e in estimate_since(&self.ledger, since, &ids, self.band, 0) {
                let scale = wall_ns / span;
                let calls = e.calls.map(|c| c as f64 * scale);
                sampled.insert(
                    e.function_id,
                    TickCount {
                        calls,
                        low: e.low as f64 * scale,
                        high: e.high.map(|h| h as f64 * scale),
                    },
                );
            }
        }
        TickFigures {
            own_ns,
            probe_ns,
            cost_scale,
            calls,
            sampled,
        }
    }

    /// The session's calls so far, over every function seen or sampled.
    fn calls_so_far_now(&self) -> CallsSoFar {
        let ids: BTreeSet<u32> = self
            .ledger
            .totals()
            .keys()
            .copied()
            .chain(self.governed.keys().copied())
            .collect();
        let ids: Vec<u32> = ids.into_iter().collect();
        let mut out = CallsSoFar {
            calls: 0,
            exact: true,
            at_least: false,
            recorded: 0,
        };
        for e in estimate::estimate(&self.ledger, &ids, self.band, 0) {
            out.calls += e.calls.unwrap_or(e.low);
            out.exact &= e.exact;
            out.at_least |= e.calls.is_none();
            out.recorded += e.recorded;
        }
        out
    }

    /// One `aggregates` row per sampled function for the interval from the
    /// tick's start to `now_ns` (`on` of it observed, `wall_ns` long).
    fn push_aggregates(&mut self, now_ns: i64, on: Duration) {
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

    /// Recording ends at monotonic time `mono_ns` (when the correlator's
    /// window closes, before the links are detached): the ledger's last
    /// slot ends there, with a CPU reading.
    pub fn end_recording(&mut self, mono_ns: u64) {
        self.cut(mono_ns, true);
        self.sys_at_end = read_user_sys(self.pid).map(|u| u.1);
    }

    /// Final rows (the last partial tick's aggregates), and the ledger
    /// closed; `exited` is the target's (user, system) time when known (a
    /// `record`ed command that exited).
    pub fn finish(&mut self, now_ns: i64, exited: Option<(u64, u64)>) {
        self.ledger.finish(exited.map(|(u, s)| u + s));
        if let Some((_, sys)) = exited {
            self.sys_at_end = Some(sys);
        }
        let now = Instant::now();
        let mut on = self.window_on;
        if let Window::On { since, .. } = &self.window {
            on += now.duration_since((*since).max(self.tick_started));
        }
        self.push_aggregates(now_ns, on);
    }
}

/// A tick's figures (see [`Governor::tick_figures`]).
struct TickFigures {
    /// The target's own time in the tick, and the probes' part of its CPU
    /// time, ns.
    own_ns: f64,
    probe_ns: f64,
    /// The probe cost this tick, against the calibrated one (below 1 when
    /// the target's system time says the calibration read high).
    cost_scale: f64,
    /// Calls counted in the tick, by function (all probed calls).
    calls: FxHashMap<u32, f64>,
    /// Functions sampled during the tick: their calls in a tick's length.
    sampled: FxHashMap<u32, TickCount>,
}

/// A sampled function's calls in one tick's length, from its recent rate.
struct TickCount {
    /// `None` when no honest estimate exists.
    calls: Option<f64>,
    low: f64,
    high: Option<f64>,
}

/// `about 40x (3900%)`-style text for a predicted slowdown in percent, or
/// `at least …` when only a lower bound is known.
pub fn predicted_text(pct: f64, at_least: bool) -> String {
    let body = if pct >= 200.0 {
        format!("{:.0}x ({pct:.0}%)", 1.0 + pct / 100.0)
    } else {
        format!("{pct:.1}%")
    };
    if at_least {
        format!("at least {body}")
    } else {
        format!("about {body}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            clock_offset_ns: 0,
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

    /// The CI failure of `attach_records_from_the_start…`: the first slot
    /// spans the attach (130 ms, every call in it), the poll loop cuts it,
    /// finds the recent calls far over budget and ticks at once, cutting a
    /// slot of a few µs. The tick must judge the calls that made it urgent,
    /// not the empty last slot alone.
    #[test]
    fn an_early_tick_judges_the_slots_that_made_it_early() {
        let ms = 1_000_000i64;
        let mut g = governor_of(&[1]);
        let mut hot = calls(1, 13_000);
        for (i, c) in hot.iter_mut().enumerate() {
            c.start_ns = i as i64 * 10_000;
        }
        g.observe(&hot);
        g.ledger.cut(130 * ms, Arc::from([]), Arc::from([]), None);
        assert!(g.far_over_budget(Duration::from_millis(130), 10.0));
        let end = 130 * ms + 5_000;
        g.ledger.cut(end, Arc::from([]), Arc::from([]), None);
        let from = g.tick_started_ns.max(g.recent_from());
        assert_eq!(from, 0, "the long first slot is judged");
        let tick = g.tick_figures(from, end, (end - from) as f64, None);
        assert_eq!(tick.calls.get(&1), Some(&13_000.0));
        // Later slots of 10 ms: only those within the last 100 ms count.
        for k in 1..=20 {
            g.ledger
                .cut(end + k * 10 * ms, Arc::from([]), Arc::from([]), None);
        }
        assert_eq!(g.recent_from(), end + 10 * 10 * ms);
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
        g.finish(5, None);
        let (_, aggs, _) = g.take_rows();
        assert_eq!(aggs.len(), 1);
        let a = &aggs[0];
        assert_eq!((a.function_id, a.mode, a.calls_seen), (7, "sampled", 3));
        assert_eq!(a.total_ns, Some(1500));
        let hist = a.log2_hist.as_ref().unwrap();
        assert_eq!(hist.len(), 64);
        assert_eq!((hist[0], hist[10], hist.iter().sum::<u64>()), (1, 1, 2));
    }
}
