//! The governor's policy: which functions to sample and how sparsely,
//! from their loads and the budget ([`decide`]), and what a tick changes
//! with that decision (hysteresis, cooldown). Pure functions; the
//! [`Governor`](super::Governor) applies them.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rustc_hash::FxHashSet;

use super::model::{MAX_N, sampling_n, windowed_overhead};

/// A demoted function stays sampled at least this long (no flapping).
const COOLDOWN: Duration = Duration::from_secs(3);
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
    decide_with(loads, budget_pct, 1.0)
}

/// [`decide`] for windows that cost `window_factor` times what the window
/// model says (measured: opening and closing a window costs the target
/// too, in edge events and rewritten code pages).
pub fn decide_with(loads: &[FnLoad], budget_pct: f64, window_factor: f64) -> Decision {
    let window_factor = window_factor.max(1.0);
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
        sampling_n(sampled_pct / 100.0, room / 100.0 / window_factor)
    };
    Decision {
        sampled,
        n,
        predicted_pct: kept + 100.0 * window_factor * windowed_overhead(sampled_pct / 100.0, n),
        full_pct,
    }
}

/// The predicted slowdown (percent) as things stand: the functions in
/// `sampled` at 1 in `n`, their windows costing `window_factor` times the
/// model, the others in full.
pub(super) fn current_pct(
    loads: &[FnLoad],
    sampled: &FxHashSet<u32>,
    n: u32,
    window_factor: f64,
) -> f64 {
    loads
        .iter()
        .map(|l| {
            if sampled.contains(&l.id) {
                100.0 * window_factor * windowed_overhead(l.overhead_pct / 100.0, n)
            } else {
                l.overhead_pct
            }
        })
        .sum()
}

/// The factor by which sampling windows cost more than the window model
/// says, from one interval: what the probes took in all (`measured_pct`)
/// less the functions recorded in full (`full_pct`), over what the model
/// gives the sampled ones (`modelled_pct`); `None` when the windows' part
/// is too small to tell.
pub(super) fn window_factor(measured_pct: f64, full_pct: f64, modelled_pct: f64) -> Option<f64> {
    (modelled_pct >= 0.25)
        .then(|| ((measured_pct - full_pct) / modelled_pct).clamp(1.0, MAX_WINDOW_FACTOR))
}

/// The most the window factor is taken to be.
const MAX_WINDOW_FACTOR: f64 = 5.0;

/// Where a tick stands when it weighs its decision.
pub(super) struct Standing<'a> {
    pub(super) budget_pct: f64,
    /// The functions sampled now, 1 in `n`.
    pub(super) sampled: &'a FxHashSet<u32>,
    pub(super) n: u32,
    /// The predicted slowdown as things stand ([`current_pct`]).
    pub(super) current_pct: f64,
    /// No sampling window open or closing: promotions can attach now.
    pub(super) quiet: bool,
    pub(super) now: Instant,
}

/// What a tick does with its decision.
pub(super) struct Changes {
    /// Functions the decision samples that are recorded in full now.
    pub(super) to_demote: Vec<u32>,
    /// Sampled functions the decision records in full, past their
    /// [`COOLDOWN`].
    pub(super) to_promote: Vec<u32>,
    /// Whether the decision is applied (otherwise only the prediction is
    /// updated): the budget is exceeded, promotions fit below
    /// [`PROMOTE_SHARE`] of it and can attach now, or N can halve with
    /// nothing to promote.
    pub(super) apply: bool,
    /// N from now on when the decision is applied.
    pub(super) n: u32,
}

/// The [`Changes`] `decision` makes from where the tick stands;
/// `demoted_at` says when a function was last demoted.
pub(super) fn changes(
    decision: &Decision,
    s: &Standing,
    demoted_at: impl Fn(u32) -> Option<Instant>,
) -> Changes {
    let promote_ok = decision.predicted_pct <= PROMOTE_SHARE * s.budget_pct;
    let must_act = s.current_pct > s.budget_pct;
    let to_demote: Vec<u32> = decision
        .sampled
        .iter()
        .filter(|id| !s.sampled.contains(id))
        .copied()
        .collect();
    let to_promote: Vec<u32> = s
        .sampled
        .iter()
        .filter(|id| !decision.sampled.contains(id))
        .filter(|id| demoted_at(**id).is_none_or(|t| s.now.duration_since(t) >= COOLDOWN))
        .copied()
        .collect();
    let promote = promote_ok && !to_promote.is_empty() && s.quiet;
    let apply = must_act || promote || (decision.n * 2 < s.n && to_promote.is_empty());
    // Functions that stay sampled keep a real N (≥ 2): the decision's N is
    // 1 when it samples nothing, though its promotions may be put off
    // (cooldown, a window open).
    let stay_sampled = s
        .sampled
        .iter()
        .any(|id| !promote || !to_promote.contains(id))
        || !to_demote.is_empty();
    let n = if !apply {
        s.n
    } else if promote || to_promote.is_empty() {
        if stay_sampled {
            decision.n.max(2)
        } else {
            decision.n.max(1)
        }
    } else {
        decision.n.max(s.n).max(2)
    };
    Changes {
        to_demote,
        to_promote,
        apply,
        n,
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
    fn windows_that_cost_more_than_modelled_are_sampled_more_sparsely() {
        let loads = [load(1, 2000.0, true), load(2, 0.5, true)];
        let plain = decide(&loads, 5.0);
        let costly = decide_with(&loads, 5.0, 2.0);
        assert!(costly.n > plain.n, "{plain:?} {costly:?}");
        assert!(costly.predicted_pct <= 3.0, "{costly:?}");
        // Measured 6% with 1% recorded in full, where the model said 2.5%
        // for the windows: they cost twice that.
        assert_eq!(window_factor(6.0, 1.0, 2.5), Some(2.0));
        // Cheaper than the model is not trusted below 1; too little to tell.
        assert_eq!(window_factor(1.0, 0.5, 2.5), Some(1.0));
        assert_eq!(window_factor(9.0, 0.5, 0.1), None);
    }

    #[test]
    fn functions_kept_sampled_by_their_cooldown_keep_n_of_two_or_more() {
        // The target went idle: the decision samples nothing (N 1), but the
        // sampled function was demoted a second ago.
        let decision = decide(&[load(1, 0.0, true)], 5.0);
        assert_eq!(decision.n, 1);
        let now = Instant::now();
        let sampled: FxHashSet<u32> = [1].into_iter().collect();
        let c = changes(
            &decision,
            &Standing {
                budget_pct: 5.0,
                sampled: &sampled,
                n: 19,
                current_pct: 0.0,
                quiet: true,
                now,
            },
            |_| Some(now),
        );
        assert!(c.to_promote.is_empty(), "cooling down");
        assert!(c.apply, "N may come down");
        assert_eq!(c.n, 2);
        // Once promoted, nothing is sampled: N is 1.
        let c = changes(
            &decision,
            &Standing {
                budget_pct: 5.0,
                sampled: &sampled,
                n: 19,
                current_pct: 0.0,
                quiet: true,
                now,
            },
            |_| None,
        );
        assert_eq!((c.to_promote.as_slice(), c.n), (&[1][..], 1));
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
}
