//! The governor's model: what probes cost on this machine (measured), how
//! much CPU the target uses, and what a way of recording would slow it by.
//! Pure arithmetic apart from the measurements; it decides nothing (see
//! `policy.rs`).

use std::time::Instant;

use crate::probe::attach::{LoadedProbes, ProbePoint, close_links};

/// The largest sampling N.
pub const MAX_N: u32 = 100_000;

/// Per-call cost of scope's probes on this machine, measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cost {
    /// Entry + return probe, as when a call is recorded (ns).
    pub full_ns: f64,
    /// Entry probe only, as in the warm-up's counting (ns).
    pub entry_ns: f64,
}

/// Functions of the agent's own, called only to time probes on them: one
/// per probe shape, so the shapes are timed side by side and no link has
/// to close between two timings (a close can wait for a kernel grace
/// period for as long as a busy target keeps calling probed functions, see
/// `windows::CLOSE_GRACE`). The constants differ so the linker cannot fold
/// them into one.
macro_rules! calibration_fn {
    ($name:ident, $k:expr) => {
        #[inline(never)]
        extern "C" fn $name(x: u64) -> u64 {
            std::hint::black_box(x).wrapping_mul($k).rotate_left(7)
        }
    };
}
calibration_fn!(calibration_bare, 0x9e37_79b9);
calibration_fn!(calibration_full, 0x85eb_ca6b);
calibration_fn!(calibration_entry, 0xc2b2_ae35);
calibration_fn!(calibration_session, 0x27d4_eb2f);

const CALIBRATION_CALLS: u32 = 1000;

fn time_calls(f: extern "C" fn(u64) -> u64, calls: u32) -> f64 {
    let f: extern "C" fn(u64) -> u64 = std::hint::black_box(f);
    let started = Instant::now();
    let mut acc = 0u64;
    for i in 0..calls {
        acc = acc.wrapping_add(f(u64::from(i)));
    }
    std::hint::black_box(acc);
    started.elapsed().as_nanos() as f64
}

/// The fastest of five timings of `calls` calls of `f`, in ns per call (on
/// a loaded machine most timings include preemption; the fastest the
/// fewest).
fn best_per_call(f: extern "C" fn(u64) -> u64) -> f64 {
    (0..5)
        .map(|_| time_calls(f, CALIBRATION_CALLS))
        .fold(f64::INFINITY, f64::min)
        / f64::from(CALIBRATION_CALLS)
}

/// Where `f` sits in the agent's own file, as a probe point.
fn own_point(
    f: extern "C" fn(u64) -> u64,
) -> Result<(std::path::PathBuf, [ProbePoint; 1]), String> {
    let (path, offset) = crate::probe::attach::own_file_offset(f as *const () as usize)
        .ok_or("cannot find the calibration function in the agent's own mappings")?;
    Ok((
        path,
        [ProbePoint {
            file_offset: offset,
            cookie: 0,
        }],
    ))
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
/// `wait_close`: close the links before returning; otherwise they close on
/// a thread of their own, waited for by nobody (while a target with probes
/// runs, a close can wait for the kernel a long time).
pub fn measure_costs(
    probes: &mut LoadedProbes,
    session: bool,
    wait_close: bool,
) -> Result<ProbeCosts, String> {
    let me = std::process::id();
    let bare = best_per_call(calibration_bare);
    let mut links = Vec::new();
    let (path, point) = own_point(calibration_full)?;
    links.extend(
        probes
            .attach_module(&path, &point, me, true)
            .map_err(|e| e.to_string())?,
    );
    let (path, point) = own_point(calibration_entry)?;
    links.push(
        probes
            .attach_counts(&path, &point, me)
            .map_err(|e| e.to_string())?,
    );
    let mut session_ns = None;
    if session {
        let (path, point) = own_point(calibration_session)?;
        match probes.attach_session_counts(&path, &point, me) {
            Some(Ok(link)) => {
                links.push(link);
                session_ns = Some(best_per_call(calibration_session) - bare);
            }
            Some(Err(e)) => return Err(e.to_string()),
            None => {}
        }
    }
    let full = best_per_call(calibration_full);
    let entry = best_per_call(calibration_entry);
    if wait_close {
        close_links(links);
    } else {
        let _ = std::thread::Builder::new()
            .name("scope-detach".into())
            .spawn(move || close_links(links));
    }
    Ok(ProbeCosts {
        bare_ns: bare,
        entry_return_ns: full - bare,
        entry_ns: entry - bare,
        session_ns,
    })
}

/// Measures [`Cost`] with the loaded programs on the calibration functions
/// (links bound to the agent's pid; the programs' tgid test drops the
/// events, so only the trap and the test are timed, which is the cost).
pub fn calibrate(probes: &mut LoadedProbes, wait_close: bool) -> Result<Cost, String> {
    let m = measure_costs(probes, false, wait_close)?;
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

/// Slowdown (percent) of recording `calls` calls at `cost_ns` each (see
/// the function's own documentation): it lives with the predictor in
/// scope-query, so the governor's prediction and a plan's predicted probe
/// overhead are one model.
pub use scope_query::analysis::predict::overhead_pct;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cost_their_share_of_the_slowdown() {
        // Recorded in full: the whole cost; 1 in n: less, and never more
        // than a window's share of the time (the target runs 1 + o times
        // slower inside one).
        assert_eq!(windowed_overhead(0.3, 1), 0.3);
        for (o, n) in [(0.1, 2), (5.0, 10), (48.0, 21), (300.0, 400)] {
            let m = windowed_overhead(o, n);
            assert!(m < o && m <= 1.0 / (f64::from(n) - 1.0), "{o} {n} {m}");
        }
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

    #[test]
    fn calibration_functions_are_callable_and_distinct() {
        assert_eq!(calibration_bare(0), 0);
        assert!(best_per_call(calibration_full) > 0.0);
        assert_ne!(calibration_full(3), calibration_entry(3));
    }
}
