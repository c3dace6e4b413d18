//! The cost of following the scheduler (`--sched`, on by default): a
//! context-switch-heavy fixture (tests/fixtures/c/switches.c: two threads
//! handing a token over pipes, each blocking once per round) run bare,
//! under `record` as it comes (the scheduler followed) and under `record
//! --no-sched`, trial by trial in rotating order. Only `main` is probed, so
//! the difference between the two recorded runs is the sched programs'.
//! The fixture times its own loop (CLOCK_MONOTONIC), so the agent's
//! start-up and attach are not in the figures. Then the cost per call of
//! `--hooks` against bpftrace on the same libc functions, and the OTLP
//! export's throughput.

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
    // The slowdown: the median of each trial's own pair (recorded and
    // --no-sched run back to back), which a VM's drift between trials
    // moves less than the ratio of the two arms' medians.
    let pairs: Vec<f64> = rows.iter().map(|t| t.sched / t.no_sched - 1.0).collect();
    let slowdown = median(pairs.clone());
    let per_switch_ns = slowdown * no_sched / switches.max(1.0);
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
        "| `record` (scheduler followed) | {:.0} ms | {:+.1}% (median of the trials' pairs) |",
        sched / 1e6,
        slowdown * 100.0
    );
    // The spread of the pairs says what the VM can resolve.
    let (lo, hi) = (
        pairs.iter().copied().fold(f64::INFINITY, f64::min),
        pairs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    );
    let cost = if per_switch_ns > 0.0 {
        format!(
            "about {:.2} µs per switch of the target's",
            per_switch_ns / 1e3
        )
    } else {
        "less than this VM can resolve".to_string()
    };
    let _ = writeln!(
        s,
        "\nThe target's threads left their CPUs {:.0} times a run ({:.0} a second); \
         following them cost {cost} (per trial, recorded vs --no-sched: {:+.1}%..{:+.1}%). \
         Target: under 3% at 10,000 switches a second: **{}**.\n",
        switches,
        rate,
        lo * 100.0,
        hi * 100.0,
        if slowdown < 0.03 { "met" } else { "not met" }
    );
    s.push_str(&hook_cost(agent, root, trials, work)?);
    s.push_str(&otlp_throughput(agent, trials, work)?);
    s.push_str(END);
    Ok(s)
}

/// Rounds of the hooks' fixture (a send and a recv each).
const HOOK_ROUNDS: &str = "100000";

/// One trial of the hooks' cost: ns per hooked call of each arm.
#[derive(Clone, Copy, Default)]
struct HookTrial {
    bare: f64,
    scope: f64,
    bt_count: f64,
    bt_printf: f64,
}

/// The cost per hooked call: tests/fixtures/c/hookloop.c (send then recv
/// on a socket pair, one thread, nothing blocks) bare, under `record
/// --hooks net` (every call recorded with its arguments and return value),
/// and under bpftrace probing the same two libc functions: once keeping
/// fd and length per call in a map with `count()` and the return value in
/// a `sum()` (the least bpftrace can do with them), once with a `printf`
/// of each entry and return (each call out to user space, as scope does).
fn hook_cost(agent: &Path, root: &Path, trials: usize, work: &Path) -> Result<String> {
    let fixture = step("hookloop fixture", || {
        let source = std::fs::read_to_string(root.join("tests/fixtures/c/hookloop.c"))?;
        scope_tests::build_generated_c("hookloop-bench", &source, "2", &[])
            .map_err(anyhow::Error::msg)
    })?;
    let libc = [
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/usr/lib/x86_64-linux-gnu/libc.so.6",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .context("no libc.so.6 under /lib/x86_64-linux-gnu")?;
    let fx = fixture.display().to_string();
    let target = format!("{fx} {HOOK_ROUNDS}");
    let count_prog: String = ["send", "recv"]
        .iter()
        .map(|f| {
            format!(
                "uprobe:{libc}:{f} /pid == cpid/ {{ @c[arg0, arg2] = count(); }} \
                 uretprobe:{libc}:{f} /pid == cpid/ {{ @r = sum(retval); }} "
            )
        })
        .collect();
    let printf_prog: String = ["send", "recv"]
        .iter()
        .map(|f| {
            format!(
                "uprobe:{libc}:{f} /pid == cpid/ {{ printf(\"E %d %d %d %d\\n\", tid, nsecs, arg0, arg2); }} \
                 uretprobe:{libc}:{f} /pid == cpid/ {{ printf(\"R %d %d %d\\n\", tid, nsecs, retval); }} "
            )
        })
        .collect();
    let out = work.join("hooks");
    let printf_file = work.join("hooks-bpftrace.txt");
    let per_call = |o: &std::process::Output| -> Result<f64> {
        let stdout = String::from_utf8_lossy(&o.stdout);
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("ns_per_call "))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("no ns_per_call in:\n{stdout}"))
    };
    let mut rows = Vec::new();
    step("the cost per hooked call vs bpftrace", || {
        for t in 0..trials.max(1) {
            let mut tr = HookTrial::default();
            for arm in (0..4).map(|k| (k + t) % 4) {
                let _ = std::fs::remove_dir_all(&out);
                let o = match arm {
                    0 => output(command(&fixture).arg(HOOK_ROUNDS))?,
                    // Every call recorded (no sampling), as bpftrace sees them all.
                    1 => output(
                        command(agent)
                            .args([
                                "record",
                                "-q",
                                "--max-overhead",
                                "off",
                                "--hooks",
                                "net",
                                "--out",
                            ])
                            .arg(&out)
                            .arg("--")
                            .arg(&fixture)
                            .arg(HOOK_ROUNDS),
                    )?,
                    2 => {
                        output(command("bpftrace").args(["-q", "-e", &count_prog, "-c", &target]))?
                    }
                    _ => output(
                        command("bpftrace")
                            .args(["-q", "-o"])
                            .arg(&printf_file)
                            .args(["-e", &printf_prog, "-c", &target]),
                    )?,
                };
                let ns = per_call(&o)?;
                match arm {
                    0 => tr.bare = ns,
                    1 => tr.scope = ns,
                    2 => tr.bt_count = ns,
                    _ => tr.bt_printf = ns,
                }
            }
            println!(
                "    trial {}/{}: bare {:.0} ns, scope {:.0} ns, bpftrace count {:.0} ns, bpftrace printf {:.0} ns per call",
                t + 1,
                trials.max(1),
                tr.bare,
                tr.scope,
                tr.bt_count,
                tr.bt_printf
            );
            rows.push(tr);
        }
        Ok(())
    })?;
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_file(&printf_file);
    let med = |f: fn(&HookTrial) -> f64| median(rows.iter().map(f).collect());
    let bare = med(|t| t.bare);
    let cost = |v: f64| v - bare;
    let (scope, count, printf) = (
        cost(med(|t| t.scope)),
        cost(med(|t| t.bt_count)),
        cost(med(|t| t.bt_printf)),
    );
    let ratio = scope / count;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### Library hooks (`--hooks net`)\n\n\
         tests/fixtures/c/hookloop.c: {HOOK_ROUNDS} rounds of libc `send` then `recv` of 16 \
         bytes over a Unix socket pair on one thread, timed by the fixture; the cost per hooked \
         call is its time per call less the bare run's ({bare:.0} ns). Median of {} trials in \
         rotating order.\n",
        rows.len()
    );
    let _ = writeln!(s, "| tool | cost per hooked call | scope vs it |");
    let _ = writeln!(s, "| --- | ---: | ---: |");
    let _ = writeln!(
        s,
        "| scope `record --hooks net --max-overhead off` (each call with fd, length and bytes returned, to Parquet) | {:.2} µs | |",
        scope / 1e3
    );
    let _ = writeln!(
        s,
        "| bpftrace: `count()` by (fd, length), `sum(retval)` | {:.2} µs | {ratio:.2}x |",
        count / 1e3
    );
    let _ = writeln!(
        s,
        "| bpftrace: `printf` of each entry and return | {:.2} µs | {:.2}x |",
        printf / 1e3,
        scope / printf
    );
    let _ = writeln!(
        s,
        "\nTarget: within 1.10x of bpftrace's cheapest: **{}**. Most of it is the kernel's: a \
         uprobe and a uretprobe on a libc function cost microseconds here whoever attaches them.\n",
        if ratio <= 1.10 { "met" } else { "not met" }
    );
    Ok(s)
}

/// Calls of the OTLP export's session (fixture.c `nest N`: three a call).
const OTLP_NEST: &str = "100000";

/// `export --format otlp` into a sink on loopback that reads each request
/// and answers 200 without decoding: what the exporter itself sustains
/// (reading the store, building and encoding spans, HTTP).
fn otlp_throughput(agent: &Path, trials: usize, work: &Path) -> Result<String> {
    let fixture =
        scope_tests::build_fixture(scope_tests::Lang::C, "2").map_err(anyhow::Error::msg)?;
    let out = work.join("otlp-store");
    let _ = std::fs::remove_dir_all(&out);
    let mut rates = Vec::new();
    let mut spans = 0.0;
    step("OTLP export throughput", || {
        output(
            command(agent)
                .args(["record", "-q", "--out"])
                .arg(&out)
                .args(["-f", "a_fn", "-f", "b_fn", "-f", "c_fn", "--"])
                .arg(&fixture)
                .args(["nest", OTLP_NEST]),
        )?;
        let (port, requests) = sink()?;
        for t in 0..trials.max(1) {
            let o = output(command(agent).args([
                "export",
                "--data",
                &out.display().to_string(),
                "--format",
                "otlp",
                "--endpoint",
                &format!("http://127.0.0.1:{port}"),
            ]))?;
            let stderr = String::from_utf8_lossy(&o.stderr);
            let line = stderr
                .lines()
                .find(|l| l.contains("spans/s"))
                .with_context(|| format!("no spans/s in:\n{stderr}"))?;
            let rate: f64 = line
                .split(", ")
                .find_map(|p| {
                    p.strip_suffix(" spans/s")
                        .or_else(|| p.strip_suffix(" spans/s)"))
                })
                .and_then(|v| v.trim().parse().ok())
                .with_context(|| format!("no rate in {line}"))?;
            spans = line
                .split_whitespace()
                .nth(2)
                .and_then(|n| n.parse().ok())
                .unwrap_or(0.0);
            println!("    trial {}/{}: {rate:.0} spans/s", t + 1, trials.max(1));
            rates.push(rate);
        }
        println!(
            "    the sink took {} requests",
            requests.load(std::sync::atomic::Ordering::Relaxed)
        );
        Ok(())
    })?;
    let _ = std::fs::remove_dir_all(&out);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### OTLP export\n\n`scope-agent export --format otlp` of a session of {spans:.0} calls \
         (fixture.c `nest {OTLP_NEST}`) to a sink on loopback that reads each request and \
         answers 200: **{:.0} spans/s** (median of {}; per trial {:.0}..{:.0}), 4,096 spans a request.\n",
        median(rates.clone()),
        rates.len(),
        rates.iter().copied().fold(f64::INFINITY, f64::min),
        rates.iter().copied().fold(0.0, f64::max),
    );
    Ok(s)
}

/// An HTTP sink on 127.0.0.1: reads each request's body (keep-alive) and
/// answers 200 with an empty body. Returns its port and a request count.
fn sink() -> Result<(u16, std::sync::Arc<std::sync::atomic::AtomicU64>)> {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let seen = seen.clone();
            std::thread::spawn(move || {
                let Ok(mut w) = conn.try_clone() else {
                    return;
                };
                let mut r = BufReader::new(conn);
                loop {
                    let mut len = 0usize;
                    let mut line = String::new();
                    // Request line and headers.
                    loop {
                        line.clear();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let l = line.trim_end();
                        if l.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = l.split_once(':')
                            && k.eq_ignore_ascii_case("content-length")
                        {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; len];
                    if r.read_exact(&mut body).is_err() {
                        return;
                    }
                    seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if w
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n")
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    Ok((port, count))
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
