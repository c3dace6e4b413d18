//! What recording every call costs, said early: `record` without
//! `--max-overhead` records every call (exact counts), and when that slows
//! the command a lot the user should know while it runs, with the way out
//! (`--max-overhead 5` samples instead).
//!
//! Measured on the command itself, not modelled: the kernel charges uprobe
//! handling to the target's kernel-mode (system) time, so its system time
//! is what the probes took and its user time is its own work, plus the
//! part of the probe handling that runs in user mode (the return
//! trampoline, the instruction stepped out of line: [`USER_SHARE`] of it,
//! measured here). `/proc/PID/stat` while it runs, `wait4`'s figures when
//! it has exited. The command's own system calls count as probe time too,
//! so for a command that spends much time in the kernel by itself this
//! overstates the cost; it is said as a slowdown only from
//! [`WORTH_SAYING_PCT`] on.

use std::time::{Duration, Instant};

use crate::governor::ledger::read_user_sys;
use crate::governor::predicted_text;

/// Said only from this slowdown on (percent).
const WORTH_SAYING_PCT: f64 = 50.0;
/// The share of the probes' handling that the kernel accounts as user time
/// of the target: 3.7% and 4.1% measured here (a 1-ns function probed
/// 200,000 times: 24 ms of user time over 0.6 s of system time; the rates
/// fixture: 53 ms over 1.3 s). The interval takes 0 to twice that.
const USER_SHARE: f64 = 0.04;
/// Below this share of its user time left to its own work (after taking
/// the probes' user part out at twice [`USER_SHARE`]), there is no upper
/// bound.
const MIN_OWN_SHARE: f64 = 0.02;

/// The slowdown of recording every call, as far as it is known.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FullCost {
    /// Percent: the central figure (the lower bound when `at_least`).
    pub pct: f64,
    /// 95%-ish range from the user share of the probe handling.
    pub low_pct: f64,
    pub high_pct: Option<f64>,
    pub at_least: bool,
}

impl FullCost {
    /// `about 40x (3900%)` / `at least 12x (1100%)`.
    pub fn text(&self) -> String {
        predicted_text(self.pct, self.at_least)
    }
}

/// The kernel splits CPU time into user and system time by sampling at
/// its tick (`CONFIG_HZ`): the figures are counted in ticks, with a Poisson
/// allowance, so a short run claims nothing its few samples cannot carry.
/// The tick is read from the kernel's config when it is there; otherwise
/// 10 ms (HZ 100, the coarsest) is assumed.
fn grain_ns() -> f64 {
    static GRAIN: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *GRAIN.get_or_init(|| kernel_hz().map_or(10e6, |hz| 1e9 / hz as f64))
}

/// `CONFIG_HZ` from `/proc/config.gz` or `/boot/config-<release>`.
fn kernel_hz() -> Option<u64> {
    let config = std::fs::read("/proc/config.gz")
        .ok()
        .and_then(|gz| {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gz[..]), &mut text)
                .ok()
                .map(|_| text)
        })
        .or_else(|| {
            let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
            std::fs::read_to_string(format!("/boot/config-{}", release.trim())).ok()
        })?;
    config
        .lines()
        .find_map(|l| l.strip_prefix("CONFIG_HZ="))
        .and_then(|v| v.trim().parse().ok())
        .filter(|hz| (24..=10_000).contains(hz))
}

/// The slowdown from a command's `user_ns` and `sys_ns` of CPU time with
/// every call probed.
pub fn full_cost(user_ns: f64, sys_ns: f64) -> FullCost {
    full_cost_at(user_ns, sys_ns, grain_ns())
}

/// [`full_cost`] for a kernel tick of `grain` ns.
fn full_cost_at(user_ns: f64, sys_ns: f64, grain: f64) -> FullCost {
    let (u, s) = (user_ns / grain, sys_ns / grain);
    // Two standard deviations either way, and one grain of rounding.
    let user_hi = (u + 2.0 * u.sqrt() + 1.0) * grain;
    let user_lo = (u - 2.0 * u.sqrt() - 1.0).max(0.0) * grain;
    let sys_lo = (s - 2.0 * s.sqrt() - 1.0).max(0.0) * grain;
    let sys_hi = (s + 2.0 * s.sqrt() + 1.0) * grain;
    // Its user time is at most its own work: a lower bound.
    let low_pct = 100.0 * sys_lo / user_hi;
    let mid = user_ns - USER_SHARE * sys_ns;
    let own_lo = user_lo - 2.0 * USER_SHARE * sys_hi;
    // Where the probes took more than the command's own work, that work ran
    // slower than it does bare (caches and TLB refilled after every trap):
    // its user time overstates it, and only the lower bound holds.
    if own_lo >= MIN_OWN_SHARE * user_ns && mid > 0.0 && sys_ns <= mid {
        FullCost {
            pct: 100.0 * (1.0 - USER_SHARE) * sys_ns / mid,
            low_pct,
            high_pct: Some(100.0 * sys_hi / own_lo),
            at_least: false,
        }
    } else {
        FullCost {
            pct: low_pct,
            low_pct,
            high_pct: None,
            at_least: true,
        }
    }
}

/// Watches what the probes cost the target over a session: measured for
/// every session (the `sessions` table's `measured_pct`), said early only
/// for `record` without a budget.
pub struct CostWatch {
    pid: u32,
    started: Instant,
    after: Duration,
    at_start: (u64, u64),
    /// The reading when recording stopped (the command still running).
    stopped: Option<(u64, u64)>,
    said: bool,
}

impl CostWatch {
    /// `after`: when to say what recording every call costs (`--warmup`),
    /// if `say` (a `record` without a budget).
    pub fn start(pid: u32, after: Duration, say: bool) -> Self {
        CostWatch {
            pid,
            started: Instant::now(),
            after,
            at_start: read_user_sys(pid).unwrap_or_default(),
            stopped: None,
            said: !say,
        }
    }

    /// The line to print now, once: after `after`, if recording every call
    /// costs at least [`WORTH_SAYING_PCT`] so far.
    pub fn check(&mut self, calls: u64) -> Option<String> {
        // No call yet: the probes have cost nothing; whatever system time
        // the command took so far is its own.
        if self.said || self.started.elapsed() < self.after || calls == 0 {
            return None;
        }
        let (user, sys) = read_user_sys(self.pid)?;
        self.said = true;
        let c = full_cost(
            user.saturating_sub(self.at_start.0) as f64,
            sys.saturating_sub(self.at_start.1) as f64,
        );
        let rate = calls as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
        (c.pct >= WORTH_SAYING_PCT).then(|| {
            format!(
                "recording every call slows this command by {} so far ({} calls/s; measured: its time in the kernel's probe handling over its own); --max-overhead 5 samples hot functions instead, with estimated counts",
                c.text(),
                crate::status::si(rate),
            )
        })
    }

    /// Recording stopped now (before detaching).
    pub fn stop(&mut self) {
        self.stopped = read_user_sys(self.pid);
    }

    /// What the probes cost the target over the session: its kernel time
    /// in their handling over its own; `exited` is the command's (user,
    /// system) time when it has exited (from `wait4`). With no probe event
    /// (`events`), nothing: the command's own system time is not theirs
    /// (Python importing its modules spends half its time in the kernel).
    pub fn measured(&self, exited: Option<(u64, u64)>, events: u64) -> Option<FullCost> {
        let (user, sys) = exited.or(self.stopped)?;
        if events == 0 {
            return Some(FullCost {
                pct: 0.0,
                low_pct: 0.0,
                high_pct: Some(0.0),
                at_least: false,
            });
        }
        Some(full_cost(
            user.saturating_sub(self.at_start.0) as f64,
            sys.saturating_sub(self.at_start.1) as f64,
        ))
    }

    /// At the end of a `record` without a budget: what recording every call
    /// cost over the whole run, if worth saying.
    pub fn final_line(&self, exited: Option<(u64, u64)>, events: u64) -> Option<String> {
        let c = self.measured(exited, events)?;
        (c.pct >= WORTH_SAYING_PCT).then(|| {
            let range = match c.high_pct {
                Some(h) if !c.at_least => format!(", {:.0}–{h:.0}%", c.low_pct),
                _ => String::new(),
            };
            format!(
                "recording every call slowed this command by {}{range} (its time in the kernel's probe handling over its own; --max-overhead 5 samples instead)",
                c.text()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slowdown_is_the_probes_kernel_time_over_the_commands_own() {
        // 1.3 s in the kernel's probe handling, 73 ms of user time of which
        // 52 ms are the probes' user part: 21 ms of its own, about 60x,
        // but 7 samples of user time cannot tell it from 25x or 500x.
        let c = full_cost_at(73e6, 1.3e9, 10e6);
        assert!(c.at_least, "{c:?}");
        assert!(c.pct > 700.0 && c.pct < 800.0, "{c:?}");
        // A light load: 100 ms of probes over 3 s of its own work.
        let c = full_cost_at(3e9, 1e8, 10e6);
        assert!(!c.at_least, "{c:?}");
        assert!(
            (c.pct - 100.0 * 0.96 * 1e8 / (3e9 - 4e6)).abs() < 0.01,
            "{c:?}"
        );
        assert!(
            c.low_pct < c.pct && c.high_pct.is_some_and(|h| h > c.pct),
            "{c:?}"
        );
        // A little less in the probes than its own work: about 83%.
        let c = full_cost_at(1.2e9, 1e9, 10e6);
        assert!(!c.at_least && (c.pct - 82.8).abs() < 1.0, "{c:?}");
        // More in the probes than its own work: only the lower bound.
        let c = full_cost_at(1e9, 1.5e9, 10e6);
        assert!(c.at_least && c.pct < 150.0, "{c:?}");
        // Too few samples to claim anything.
        let c = full_cost_at(0.6e6, 7.6e6, 10e6);
        assert!(c.at_least && c.pct == 0.0, "{c:?}");
    }
}
