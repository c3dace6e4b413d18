//! The cost of following the scheduler (`--sched`, on by default): a
//! context-switch-heavy fixture (tests/fixtures/c/switches.c: two threads
//! handing a token over pipes, each blocking once per round) run bare,
//! under `record` as it comes (the scheduler followed) and under `record
//! --no-sched`, trial by trial in rotating order. Only `main` is probed, so
//! the difference between the two recorded runs is the sched programs'.
//! The fixture times its own loop (CLOCK_MONOTONIC), so the agent's
//! start-up and attach are not in the figures.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use crate::process::{command, output, step};

/// Around the section of BENCHMARKS.md this writes, so it can be rewritten
/// alone (`SCOPE_BENCH_ONLY=sched`).
pub const BEGIN: &str =
    "<!-- sched: `cargo xtask bench` writes this (alone: SCOPE_BENCH_ONLY=sched) -->\n";
pub const END: &str = "<!-- end of sched -->\n";

/// Rounds per run and work per hand-over: about 10,000 switches of the
/// target's threads a second on this machine kind, about 2 s a run.
const ROUNDS: &str = "10000";
const WORK_ITERS: &str = "60000";

/// One trial: the loop's wall time, ns, of each arm.
#[derive(Clone, Copy, Default)]
struct Trial {
    bare: f64,
    sched: f64,
    no_sched: f64,
}

/// Runs the trials and returns the section (between [`BEGIN`] and [`END`]).
pub fn run(agent: &Path, root: &Path, trials: usize, work: &Path) -> Result<String> {
    let fixture = step("switches fixture", || {
        let source = std::fs::read_to_string(root.join("tests/fixtures/c/switches.c"))?;
        scope_tests::build_generated_c("switches-bench", &source, "2", &["-pthread"])
            .map_err(anyhow::Error::msg)
    })?;
    let out = work.join("sched");
    let mut rows = Vec::new();
    let mut switches = Vec::new();
    step("--sched on a context-switch-heavy workload", || {
        for t in 0..trials.max(1) {
            let mut tr = Trial::default();
            // Rotate the order: a VM's drift favours no arm.
            for arm in (0..3).map(|k| (k + t) % 3) {
                let _ = std::fs::remove_dir_all(&out);
                let o = match arm {
                    0 => output(command(&fixture).args([ROUNDS, WORK_ITERS]))?,
                    // The default path: no flag.
                    1 => output(
                        command(agent)
                            .args(["record", "--out"])
                            .arg(&out)
                            .args(["-f", "main", "--"])
                            .arg(&fixture)
                            .args([ROUNDS, WORK_ITERS]),
                    )?,
                    _ => output(
                        command(agent)
                            .args(["record", "--no-sched", "--out"])
                            .arg(&out)
                            .args(["-f", "main", "--"])
                            .arg(&fixture)
                            .args([ROUNDS, WORK_ITERS]),
                    )?,
                };
                let stdout = String::from_utf8_lossy(&o.stdout);
                let wall = wall_ns(&stdout)?;
                match arm {
                    0 => tr.bare = wall,
                    1 => {
                        tr.sched = wall;
                        switches.push(switch_count(&String::from_utf8_lossy(&o.stderr))?);
                    }
                    _ => tr.no_sched = wall,
                }
            }
            println!(
                "    trial {}/{}: bare {:.0} ms, recorded {:.0} ms, recorded --no-sched {:.0} ms",
                t + 1,
                trials.max(1),
                tr.bare / 1e6,
                tr.sched / 1e6,
                tr.no_sched / 1e6
            );
            rows.push(tr);
        }
        Ok(())
    })?;
    let _ = std::fs::remove_dir_all(&out);
    let med = |f: fn(&Trial) -> f64| median(rows.iter().map(f).collect());
    let (bare, sched, no_sched) = (med(|t| t.bare), med(|t| t.sched), med(|t| t.no_sched));
    let switches = median(switches);
    let rate = switches / (sched / 1e9);
    let slowdown = sched / no_sched - 1.0;
    let per_switch_ns = (sched - no_sched) / switches.max(1.0);
    let mut s = String::new();
    s.push_str(BEGIN);
    let _ = writeln!(
        s,
        "## Following the scheduler (`--sched`, on by default)\n\n\
         tests/fixtures/c/switches.c: two threads hand a token back and forth over pipes \
         ({ROUNDS} rounds, {WORK_ITERS} iterations of work per hand-over); only `main` is \
         probed, so the recorded runs differ by the sched programs alone. Median of {} \
         trials in rotating order; the fixture times its own loop.\n",
        rows.len()
    );
    let _ = writeln!(s, "| run | loop wall time | vs `--no-sched` |");
    let _ = writeln!(s, "| --- | ---: | ---: |");
    let _ = writeln!(s, "| bare | {:.0} ms | |", bare / 1e6);
    let _ = writeln!(s, "| `record --no-sched` | {:.0} ms | |", no_sched / 1e6);
    let _ = writeln!(
        s,
        "| `record` (scheduler followed) | {:.0} ms | {:+.1}% |",
        sched / 1e6,
        slowdown * 100.0
    );
    let _ = writeln!(
        s,
        "\nThe target's threads left their CPUs {:.0} times a run ({:.0} a second); \
         following them cost {:.2} µs per switch of the target's. Target: under 3% at \
         10,000 switches a second: **{}**.\n",
        switches,
        rate,
        per_switch_ns / 1e3,
        if slowdown < 0.03 { "met" } else { "not met" }
    );
    s.push_str(END);
    Ok(s)
}

/// `rounds N wall_ns W` → W.
fn wall_ns(stdout: &str) -> Result<f64> {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("rounds "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|w| w.parse().ok())
        .with_context(|| format!("no `rounds … wall_ns …` line in:\n{stdout}"))
}

/// The agent's `scope: scheduler: the target's threads left their CPUs N
/// times` line → N.
fn switch_count(stderr: &str) -> Result<f64> {
    stderr
        .lines()
        .find_map(|l| l.split("left their CPUs ").nth(1))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no scheduler line in the agent's stderr:\n{stderr}"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}
