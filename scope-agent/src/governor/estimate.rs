//! How many times each function ran: exact where every call was recorded,
//! an estimate with a 95% interval where the governor sampled it, and only
//! a lower bound (or nothing) where no honest estimate exists.
//!
//! A sampled function is probed only in windows; between them (its *gaps*)
//! its calls are unseen. The calls seen while it was probed (its windows,
//! and the time before it was first sampled) are related to something that
//! was measured in the gaps too, and the gap calls are estimated from that:
//!
//! - **a related function's calls** ([`Method::Caller`]): the function's
//!   calls per call of a function that calls it (or that it calls),
//!   counted wherever both were probed, times that function's calls in the
//!   gaps (counted exactly when it was recorded in full, else its own
//!   estimate). The probes slow the program down but leave this ratio
//!   alone, so nothing about their cost enters.
//! - **the target's CPU time** ([`Method::CpuTime`]): calls per ns of the
//!   target's own CPU time where the function was probed, times its CPU
//!   time in the gaps. The time the probes took is taken out first (probe
//!   events × their cost per event): the kernel charges it to the target,
//!   and where the probes cost many times what the function does, what is
//!   left is a small difference of large numbers. The cost per event is
//!   known only to a factor ([`CostBand`]), so the interval spans that
//!   factor too; where the probes may have taken all of the time, there is
//!   no upper bound and only a lower bound is reported.
//!
//! Both are ratio estimators over clusters (slots or runs of slots between
//! CPU readings); their interval combines the spread between clusters
//! (Student's t) with a Poisson floor, so a handful of steady clusters
//! cannot claim more precision than their calls carry. The narrower honest
//! interval wins.

use rustc_hash::{FxHashMap, FxHashSet};

use super::ledger::{Ledger, Slot};

/// A caller must have this many calls where both were probed, in at least
/// [`MIN_CALLER_SLOTS`] slots, to serve as a clock.
const MIN_CALLER_CALLS: f64 = 10.0;
const MIN_CALLER_SLOTS: usize = 2;
/// Callers, and callees, tried per function as its clock.
const CLOCKS_TRIED: usize = 3;
/// Fewer clusters than this: the spread between them is not trusted, and
/// the Poisson interval is doubled instead.
const MIN_CLUSTERS: usize = 3;
/// How deep estimates may chain through callers that were sampled too.
const MAX_CHAIN: usize = 4;
/// The CPU-time estimate assumes the target does the same work per call
/// when probed and when not, and that each CPU reading lines up with its
/// slots; neither holds exactly (caches, a thread that exits between two
/// readings, the first milliseconds of a program), so its interval is
/// widened by this share each way. Measured on the rates fixture: central
/// estimates up to 19% off where the caller method was within 1%.
const CPU_MODEL_ALLOWANCE: f64 = 0.2;
/// The ratio to a related function is measured where both were probed and
/// applied where one was not; each window's edges cut calls of the related
/// function in two (its calls started in the window, the function's calls
/// counted in it), and the cuts need not cancel exactly. Measured on the
/// rates fixture: central estimates 0.3% to 2.7% low. The interval is
/// widened by this share each way.
const CALLER_MODEL_ALLOWANCE: f64 = 0.05;
/// Where the probes may have taken more than this share of the CPU time
/// seen while a function was probed, the CPU-time estimate has no upper
/// bound.
const MAX_PROBE_SHARE: f64 = 0.98;

/// What one probe event costs the target, in ns, and how far the truth may
/// be from it: the real cost lies within `[low, high]` times the given one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CostBand {
    pub entry_ns: f64,
    pub return_ns: f64,
    pub low: f64,
    pub high: f64,
}

/// How a count was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Every call was recorded.
    Recorded,
    /// Sampled; the gaps from the ratio to this function's calls (one
    /// that calls it, or that it calls).
    Caller(u32),
    /// Sampled; the gaps from the target's CPU time outside the probes.
    CpuTime,
    /// Sampled, and no estimate holds: only a lower bound.
    LowerBound,
    /// Sampled, and nothing measured relates its gaps to what was seen.
    Unknown,
}

impl Method {
    /// The `totals.method` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Recorded => "recorded",
            Method::Caller(_) => "sampled: ratio to a related function",
            Method::CpuTime => "sampled: cpu time",
            Method::LowerBound => "sampled: lower bound only",
            Method::Unknown => "sampled: unknown",
        }
    }
}

/// One function's count over the session.
#[derive(Debug, Clone, PartialEq)]
pub struct CountEstimate {
    pub function_id: u32,
    /// Calls recorded (rows in `calls`).
    pub recorded: u64,
    /// The count: exact, or the estimate; `None` when no honest one exists.
    pub calls: Option<u64>,
    /// Every call was recorded and no event was lost.
    pub exact: bool,
    /// 95% interval (equal to `calls` when exact); `high` is `None` when
    /// there is no upper bound.
    pub low: u64,
    pub high: Option<u64>,
    pub method: Method,
}

impl CountEstimate {
    /// Whether scope should present this as a number with no qualifier.
    pub fn is_exact(&self) -> bool {
        self.exact
    }
}

/// The unseen calls of one function, and how well they are known.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Gap {
    est: Option<f64>,
    low: f64,
    high: Option<f64>,
    method: Method,
}

/// What an estimate looks at: the ledger's slots from some time on.
struct View<'a> {
    ledger: &'a Ledger,
    slots: &'a [Slot],
}

/// Estimates every function in `ids` from `ledger`. `lost` is the number of
/// events the kernel lost in the session: any of them could have been a call
/// of any function, so with losses no count is exact.
pub fn estimate(ledger: &Ledger, ids: &[u32], cost: CostBand, lost: u64) -> Vec<CountEstimate> {
    estimate_since(ledger, i64::MIN, ids, cost, lost)
}

/// Like [`estimate`], over the slots that end after `from_ns` only (the
/// governor's recent rates).
pub fn estimate_since(
    ledger: &Ledger,
    from_ns: i64,
    ids: &[u32],
    cost: CostBand,
    lost: u64,
) -> Vec<CountEstimate> {
    let all = ledger.slots();
    let first = all.partition_point(|s| s.end_ns <= from_ns);
    let v = View {
        ledger,
        slots: &all[first..],
    };
    let mut memo: FxHashMap<u32, Option<Gap>> = FxHashMap::default();
    ids.iter()
        .map(|&id| {
            let slots = v.slots;
            let sampled = ledger.ever_sampled(id);
            let recorded: u64 = if sampled {
                slots.iter().map(|s| s.count(id)).sum()
            } else if first == 0 {
                ledger.totals().get(&id).copied().unwrap_or(0)
            } else {
                slots.iter().map(|s| s.count(id)).sum()
            };
            let unprobed = sampled && slots.iter().any(|s| !s.probed(id) && s.end_ns > s.start_ns);
            let mut out = if unprobed {
                let mut visiting = FxHashSet::default();
                match gap_of(&v, id, cost, &mut memo, &mut visiting) {
                    Some(g) => CountEstimate {
                        function_id: id,
                        recorded,
                        calls: g.est.map(|e| recorded + e.round().max(0.0) as u64),
                        exact: false,
                        low: recorded + g.low.max(0.0).floor() as u64,
                        high: g.high.map(|h| recorded + h.max(0.0).ceil() as u64),
                        method: g.method,
                    },
                    None => CountEstimate {
                        function_id: id,
                        recorded,
                        calls: None,
                        exact: false,
                        low: recorded,
                        high: None,
                        method: Method::Unknown,
                    },
                }
            } else {
                CountEstimate {
                    function_id: id,
                    recorded,
                    calls: Some(recorded),
                    exact: true,
                    low: recorded,
                    high: Some(recorded),
                    method: Method::Recorded,
                }
            };
            if lost > 0 {
                out.exact = false;
                out.high = out.high.map(|h| h + lost);
            }
            out
        })
        .collect()
}

/// The estimate of `id`'s unseen calls, memoised; `None` when there is none.
fn gap_of(
    v: &View,
    id: u32,
    cost: CostBand,
    memo: &mut FxHashMap<u32, Option<Gap>>,
    visiting: &mut FxHashSet<u32>,
) -> Option<Gap> {
    if let Some(g) = memo.get(&id) {
        return *g;
    }
    if visiting.len() >= MAX_CHAIN || !visiting.insert(id) {
        return None;
    }
    let slots = v.slots;
    let mut candidates: Vec<Gap> = Vec::new();
    let clocks = v
        .ledger
        .callers(id, CLOCKS_TRIED)
        .into_iter()
        .chain(v.ledger.callees(id, CLOCKS_TRIED));
    for (clock, _) in clocks {
        if let Some(g) = by_clock(v, id, clock, cost, memo, visiting) {
            candidates.push(g);
        }
    }
    let cpu = by_cpu_time(slots, id, cost);
    visiting.remove(&id);
    // The narrowest bounded interval wins; a bound beats none.
    let width = |g: &Gap| g.high.map_or(f64::INFINITY, |h| h - g.low);
    let best = candidates
        .into_iter()
        .chain(cpu)
        .min_by(|a, b| width(a).total_cmp(&width(b)));
    memo.insert(id, best);
    best
}

/// The gap estimate from the ratio of `id`'s calls to those of `caller`,
/// a function that calls it or that it calls (its *clock*).
fn by_clock(
    v: &View,
    id: u32,
    caller: u32,
    cost: CostBand,
    memo: &mut FxHashMap<u32, Option<Gap>>,
    visiting: &mut FxHashSet<u32>,
) -> Option<Gap> {
    let slots = v.slots;
    let pairs: Vec<(f64, f64)> = slots
        .iter()
        .filter(|s| s.probed(id) && s.probed(caller))
        .map(|s| (s.count(id) as f64, s.count(caller) as f64))
        .collect();
    let x: f64 = pairs.iter().map(|p| p.1).sum();
    let with_calls = pairs.iter().filter(|p| p.1 > 0.0).count();
    if x < MIN_CALLER_CALLS || with_calls < MIN_CALLER_SLOTS {
        return None;
    }
    let ratio = Ratio::of(&pairs)?;
    // The caller's calls in the function's gaps: counted where the caller
    // was probed, its own estimate where it was sampled too (its share of
    // its unseen calls, by time, when its gaps are not all the function's).
    let counted: f64 = slots
        .iter()
        .filter(|s| !s.probed(id) && s.probed(caller))
        .map(|s| s.count(caller) as f64)
        .sum();
    let span = |f: &dyn Fn(&Slot) -> bool| -> f64 {
        slots
            .iter()
            .filter(|s| f(s))
            .map(|s| (s.end_ns - s.start_ns).max(0) as f64)
            .sum()
    };
    let both = span(&|s| !s.probed(id) && !s.probed(caller));
    let (mid, low, high) = if both > 0.0 {
        let g = gap_of(v, caller, cost, memo, visiting)?;
        let share = both / span(&|s| !s.probed(caller)).max(1.0);
        (
            g.est.map(|e| counted + share * e),
            counted + share * g.low,
            g.high.map(|h| counted + share * h),
        )
    } else {
        (Some(counted), counted, Some(counted))
    };
    let half = ratio.t * ratio.var.sqrt();
    let (r_low, r_high) = ((ratio.r - half).max(0.0), ratio.r + half);
    let est = mid.map(|m| ratio.r * m);
    // The allowance is on the function's whole count in the gaps.
    Some(Gap {
        est,
        low: r_low * low * (1.0 - CALLER_MODEL_ALLOWANCE),
        high: high.map(|h| r_high * h * (1.0 + CALLER_MODEL_ALLOWANCE)),
        method: match est {
            Some(_) => Method::Caller(caller),
            None => Method::LowerBound,
        },
    })
}

/// The gap estimate from the target's CPU time outside the probes.
fn by_cpu_time(slots: &[Slot], id: u32, cost: CostBand) -> Option<Gap> {
    // Runs of slots between CPU readings, each probed alike for `id`.
    struct Run {
        probed: bool,
        calls: f64,
        cpu: f64,
        probe: f64,
    }
    let mut runs: Vec<Run> = Vec::new();
    let mut open: Option<(bool, f64, f64, bool)> = None; // probed, calls, probe ns, mixed
    for s in slots {
        let probe = s.entries as f64 * cost.entry_ns + s.returns as f64 * cost.return_ns;
        let p = s.probed(id);
        let o = open.get_or_insert((p, 0.0, 0.0, false));
        if o.0 != p {
            o.3 = true;
        }
        o.1 += s.count(id) as f64;
        o.2 += probe;
        if s.read {
            let (probed, calls, probe, mixed) = open.take()?;
            if mixed {
                // A change of probing without a reading: nothing to split
                // the CPU time by.
                return None;
            }
            match s.cpu_ns {
                Some(cpu) => runs.push(Run {
                    probed,
                    calls,
                    cpu: cpu as f64,
                    probe,
                }),
                // Unread gap CPU: the gaps cannot be sized.
                None if !probed => return None,
                None => {}
            }
        }
    }
    // A run still open (no reading yet: a live estimate) is left out
    // until it has one.
    let seen: f64 = runs.iter().filter(|r| r.probed).map(|r| r.calls).sum();
    let gap_cpu: f64 = runs.iter().filter(|r| !r.probed).map(|r| r.cpu).sum();
    if gap_cpu <= 0.0 {
        return Some(Gap {
            est: Some(0.0),
            low: 0.0,
            high: Some(0.0),
            method: Method::CpuTime,
        });
    }
    // The gap calls for probe costs scaled by `s`, and the clusters'
    // ratio; `None` where the probes may have taken all the time. Sums
    // are taken before anything is clamped: a run's CPU reading and its
    // events need not line up exactly (a thread that exits between two
    // readings gives its time to a later run).
    let at = |s: f64| -> Option<(f64, Ratio)> {
        let pairs: Vec<(f64, f64)> = runs
            .iter()
            .filter(|r| r.probed)
            .map(|r| (r.calls, r.cpu - s * r.probe))
            .collect();
        let cpu_seen: f64 = runs.iter().filter(|r| r.probed).map(|r| r.cpu).sum();
        let own: f64 = pairs.iter().map(|p| p.1).sum();
        if cpu_seen <= 0.0 || own <= (1.0 - MAX_PROBE_SHARE) * cpu_seen {
            return None;
        }
        let ratio = Ratio::of(&pairs)?;
        let gap_own: f64 = runs
            .iter()
            .filter(|r| !r.probed)
            .map(|r| r.cpu - s * r.probe)
            .sum::<f64>()
            .max(0.0);
        Some((ratio.r * gap_own, ratio))
    };
    if seen == 0.0 && runs.iter().all(|r| !r.probed) {
        return None;
    }
    let (lo_est, lo_ratio) = at(cost.low)?;
    let mid = at(1.0);
    let hi = at(cost.high);
    let spread = |est: f64, r: &Ratio| r.t * est * r.rel_sd();
    let low = ((lo_est - spread(lo_est, &lo_ratio)) * (1.0 - CPU_MODEL_ALLOWANCE)).max(0.0);
    match (mid, hi) {
        (Some((est, _)), Some((hi_est, hi_ratio))) => Some(Gap {
            est: Some(est),
            low: low.min(est),
            high: Some(
                ((hi_est + spread(hi_est, &hi_ratio)) * (1.0 + CPU_MODEL_ALLOWANCE)).max(est),
            ),
            method: Method::CpuTime,
        }),
        _ => Some(Gap {
            est: None,
            low,
            high: None,
            method: Method::LowerBound,
        }),
    }
}

/// A ratio estimate Σy / Σx over clusters, with its variance and the
/// quantile its 95% interval uses.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Ratio {
    r: f64,
    var: f64,
    t: f64,
}

impl Ratio {
    /// Over `(y, x)` clusters; `None` when Σx is 0.
    fn of(pairs: &[(f64, f64)]) -> Option<Ratio> {
        let sy: f64 = pairs.iter().map(|p| p.0).sum();
        let sx: f64 = pairs.iter().map(|p| p.1).sum();
        if sx <= 0.0 {
            return None;
        }
        let r = sy / sx;
        // Poisson: at least the variance of the calls counted (3 when none
        // was seen: the 95% bound of zero events).
        let poisson = sy.max(3.0) / (sx * sx);
        let n = pairs.iter().filter(|p| p.1 > 0.0 || p.0 > 0.0).count();
        if n < MIN_CLUSTERS {
            return Some(Ratio {
                r,
                var: 4.0 * poisson,
                t: 1.96,
            });
        }
        let resid: f64 = pairs.iter().map(|p| (p.0 - r * p.1).powi(2)).sum();
        let cluster = n as f64 / (n as f64 - 1.0) * resid / (sx * sx);
        Some(Ratio {
            r,
            var: cluster.max(poisson),
            t: scope_query::analysis::predict::student_t95(n - 1),
        })
    }

    fn rel_sd(&self) -> f64 {
        if self.r > 0.0 {
            self.var.sqrt() / self.r
        } else {
            0.0
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::capture::CallRecord;
    use crate::governor::ledger::ThreadCpu;

    const COST: CostBand = CostBand {
        entry_ns: 1000.0,
        return_ns: 1000.0,
        low: 0.5,
        high: 1.5,
    };

    fn calls(f: u32, parent: u32, start: i64, n: u64) -> Vec<CallRecord> {
        (0..n)
            .map(|i| CallRecord {
                function_id: f,
                parent_function_id: parent,
                start_ns: start + i as i64,
                duration_ns: 0,
                ..Default::default()
            })
            .collect()
    }

    fn cpu(ns: u64) -> Option<Option<ThreadCpu>> {
        Some(Some([(1u32, ns.into())].into_iter().collect()))
    }

    /// 100 slots of 1000 ns: `hot` (2) is called 10 times per call of
    /// `outer` (1), 3 outers per slot, and sampled in slots 20..100 with a
    /// window every 10th slot. Each slot the target runs `work` ns of its
    /// own plus the probes of what was recorded.
    fn sampled_session(work: u64) -> (Ledger, u64) {
        let mut l = Ledger::new(0, cpu(0).flatten());
        let sampled: Arc<[u32]> = Arc::from([2u32]);
        let none: Arc<[u32]> = Arc::from([]);
        let mut cpu_total = 0;
        let mut truth = 0;
        for slot in 0..100i64 {
            let start = slot * 1000;
            let probed_hot = slot < 20 || slot % 10 == 0;
            l.observe(&calls(1, 0, start, 3));
            if probed_hot {
                l.observe(&calls(2, 1, start + 10, 30));
            }
            truth += 30;
            let events = 2 * (3 + if probed_hot { 30 } else { 0 });
            cpu_total += work + events * 1000;
            let next = slot + 1;
            let (s, w) = if next < 20 {
                (Arc::clone(&none), Arc::clone(&none))
            } else if next % 10 == 0 {
                (Arc::clone(&sampled), Arc::clone(&sampled))
            } else {
                (Arc::clone(&sampled), Arc::clone(&none))
            };
            l.cut(next * 1000, s, w, cpu(cpu_total));
        }
        l.finish(None);
        (l, truth)
    }

    #[test]
    fn functions_never_sampled_are_exact() {
        let (l, _) = sampled_session(10_000);
        let e = estimate(&l, &[1], COST, 0);
        assert_eq!(e[0].calls, Some(300));
        assert!(e[0].exact && e[0].method == Method::Recorded);
        assert_eq!((e[0].low, e[0].high), (300, Some(300)));
        // Losses make no count exact: any lost event could be a call.
        let e = estimate(&l, &[1], COST, 7);
        assert!(!e[0].exact);
        assert_eq!((e[0].calls, e[0].high), (Some(300), Some(307)));
    }

    #[test]
    fn a_sampled_function_is_estimated_from_its_caller() {
        let (l, truth) = sampled_session(10_000);
        let e = &estimate(&l, &[2], COST, 0)[0];
        assert_eq!(e.recorded, 20 * 30 + 8 * 30);
        assert_eq!(e.method, Method::Caller(1));
        assert!(!e.exact);
        assert_eq!(e.calls, Some(truth), "{e:?}");
        assert!(
            e.low <= truth && e.high.is_some_and(|h| h >= truth),
            "{e:?}"
        );
    }

    #[test]
    fn without_a_caller_the_cpu_time_estimates_and_the_interval_holds() {
        // The same session, but hot's calls have no caller.
        let (mut l, truth) = sampled_session(100_000);
        l.forget_calls_for_tests();
        let e = &estimate(&l, &[2], COST, 0)[0];
        assert_eq!(e.method, Method::CpuTime, "{e:?}");
        let calls = e.calls.expect("an estimate");
        let err = (calls as f64 - truth as f64).abs() / truth as f64;
        assert!(err < 0.05, "{e:?} truth {truth}");
        assert!(
            e.low <= truth && e.high.is_some_and(|h| h >= truth),
            "{e:?}"
        );
    }

    #[test]
    fn when_the_probes_may_take_all_the_time_only_a_lower_bound_is_given() {
        // The function does almost nothing next to its probes.
        let (mut l, truth) = sampled_session(10);
        l.forget_calls_for_tests();
        let e = &estimate(&l, &[2], COST, 0)[0];
        assert_eq!(e.method, Method::LowerBound, "{e:?}");
        assert_eq!((e.calls, e.high), (None, None));
        assert!(e.low >= e.recorded && e.low <= truth, "{e:?}");
    }

    #[test]
    fn ratios_carry_a_poisson_floor_and_student_t() {
        // Identical clusters: no spread, but the calls still count.
        let r = Ratio::of(&[(10.0, 1.0); 8]).expect("ratio");
        assert_eq!(r.r, 10.0);
        assert!((r.var - 80.0 / 64.0).abs() < 1e-9, "{r:?}");
        assert_eq!(r.t, scope_query::analysis::predict::student_t95(7));
        // Too few clusters: Poisson, doubled.
        let r = Ratio::of(&[(10.0, 1.0), (0.0, 0.0)]).expect("ratio");
        assert!((r.var - 4.0 * 10.0).abs() < 1e-9, "{r:?}");
        assert_eq!(Ratio::of(&[(3.0, 0.0)]), None);
        assert_eq!(scope_query::analysis::predict::student_t95(1), 12.706);
        assert_eq!(scope_query::analysis::predict::student_t95(500), 1.96);
    }
}
