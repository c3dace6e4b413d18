//! `cargo xtask bench`: every figure is a ratio against a peer measured in
//! the same run, on the same fixture, trial by trial (the machine is a
//! shared VM whose absolute speed swings). Prints progress, then the table,
//! and writes it into BENCHMARKS.md with the command that reproduces it.
//!
//! Rows: per-call overhead vs bpftrace `count()` and `printf`, and vs
//! uftrace on a `-pg` build; attach/detach of 1,001 and 10,001 functions vs
//! bpftrace; the user-space pipeline alone; bytes per call on disk; the
//! governor's slowdown and prediction. Then the estimates table: counts,
//! intervals and predicted slowdowns under `--max-overhead 5` against the
//! rates fixture's truth (`SCOPE_BENCH_ONLY=estimates` runs it alone).
//! Then the query table of [`crate::bench_query`] (`SCOPE_BENCH_ONLY=query`
//! runs it alone, without root).

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::process::{
    cargo, command, describe, on_path, output, run, step, target_dir, workspace_root,
};
use crate::setup::{
    apt_install, ensure_root_and_bpf, ensure_toolchain, pip_install_duckdb, python_has_duckdb,
};

/// The longest bpftrace's detach is waited for; beyond it the figure is a
/// lower bound (printed as "> …").
const BPFTRACE_DETACH_CAP: Duration = Duration::from_secs(60);

/// Options of one bench run.
pub struct BenchOptions {
    pub trials: usize,
    pub calls: u64,
    pub write: bool,
}

/// One overhead trial: ns per call of each setup.
#[derive(Default, Clone, Copy)]
struct Trial {
    bare: f64,
    bt_count: f64,
    scope: f64,
    bt_printf: f64,
    uftrace: f64,
}

/// Attach/detach of one function set.
struct AttachFigures {
    functions: usize,
    scope_attach: Duration,
    scope_attach_agent: String,
    scope_detach: Duration,
    scope_detach_agent: String,
    bpftrace: Option<(Duration, Duration)>,
}

/// `SCOPE_BENCH_ONLY=estimates cargo xtask bench`: only the estimates
/// table; BENCHMARKS.md gets that section replaced and keeps the rest.
const ONLY_ENV: &str = "SCOPE_BENCH_ONLY";

/// Around the estimates section of BENCHMARKS.md, so it can be rewritten alone.
const ESTIMATES_BEGIN: &str =
    "<!-- estimates: `cargo xtask bench` writes this (alone: SCOPE_BENCH_ONLY=estimates) -->\n";
const ESTIMATES_END: &str = "<!-- end of estimates -->\n";

pub fn run_bench(opts: &BenchOptions) -> Result<()> {
    let started = Instant::now();
    let (only_estimates, only_sched) = match std::env::var(ONLY_ENV).as_deref() {
        Ok("estimates") => (true, false),
        Ok("sched") => (false, true),
        Ok("query") => return run_query_only(opts, started),
        Ok("") | Err(_) => (false, false),
        Ok(other) => bail!("{ONLY_ENV}={other}: the subsets are `estimates`, `sched` and `query`"),
    };
    let root = workspace_root();
    step("root and BPF", || ensure_root_and_bpf("bench"))?;
    step("toolchain", ensure_toolchain)?;
    step("bench tools", ensure_bench_tools)?;
    step("build scope-agent (release) and pipeline_bench", || {
        run(cargo()
            .args([
                "build",
                "--release",
                "-p",
                "scope-agent",
                "--bins",
                "--examples",
            ])
            .current_dir(&root))
    })?;
    let release = target_dir()?.join("release");
    let work = target_dir()?.join("bench");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    // Copies, so a concurrent build cannot swap the binaries mid-run.
    let agent = work.join("scope-agent");
    let pipeline = work.join("pipeline_bench");
    for (from, to) in [
        (release.join("scope-agent"), &agent),
        (release.join("examples/pipeline_bench"), &pipeline),
    ] {
        std::fs::copy(&from, to)
            .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    }

    if only_sched {
        let section = crate::bench_sched::run(&agent, &root, opts.trials, &work)?;
        println!("\n{section}");
        if opts.write {
            let path = root.join("BENCHMARKS.md");
            crate::bench_query::write_section_between(
                &path,
                &section,
                crate::bench_sched::BEGIN,
                crate::bench_sched::END,
            )?;
            println!("wrote the sched section of {}", path.display());
        }
        println!(
            "cargo xtask bench ({ONLY_ENV}=sched): done ({:.0} s)",
            started.elapsed().as_secs_f64()
        );
        return Ok(());
    }
    let rates = step("rates fixture", || {
        let source = std::fs::read_to_string(root.join("tests/fixtures/c/rates.c"))?;
        scope_tests::build_generated_c("rates-bench", &source, "2", &["-pthread"])
            .map_err(anyhow::Error::msg)
    })?;
    // The 5-s fixtures: an even number of trials, so each order (bare or
    // probed first) comes as often; 6 at most (the whole bench stays within
    // about 15 minutes).
    let est_long_trials = if opts.trials == 1 {
        1
    } else {
        opts.trials.div_ceil(2).min(3) * 2
    };
    let est_trials = opts.trials;
    if only_estimates {
        let results = estimates::run(&agent, &rates, est_trials, est_long_trials, &work)?;
        let section = estimates_section(&results, est_trials, est_long_trials);
        println!("\n{section}");
        if opts.write {
            let path = root.join("BENCHMARKS.md");
            let old = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let (Some(b), Some(e)) = (old.find(ESTIMATES_BEGIN), old.find(ESTIMATES_END)) else {
                bail!(
                    "{} has no estimates section to replace: run the whole bench once",
                    path.display()
                );
            };
            let text = format!("{}{section}{}", &old[..b], &old[e + ESTIMATES_END.len()..]);
            std::fs::write(&path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
            println!("wrote the estimates section of {}", path.display());
        }
        println!(
            "cargo xtask bench ({ONLY_ENV}=estimates): done ({:.0} s)",
            started.elapsed().as_secs_f64()
        );
        return Ok(());
    }

    let (fixture, fixture_pg, many1k, many10k) = step("fixtures", || {
        let fixture =
            scope_tests::build_fixture(scope_tests::Lang::C, "2").map_err(anyhow::Error::msg)?;
        let source = std::fs::read_to_string(scope_tests::Lang::C.source())?;
        let pg = scope_tests::build_generated_c("fixture-pg", &source, "2", &["-pg", "-pthread"])
            .map_err(anyhow::Error::msg)?;
        let n1 = scope_tests::build_generated_c(
            "many1000",
            &scope_tests::many_functions_source(1000),
            "2",
            &[],
        )
        .map_err(anyhow::Error::msg)?;
        let n10 = scope_tests::build_generated_c(
            "many10000",
            &scope_tests::many_functions_source(10_000),
            "2",
            &[],
        )
        .map_err(anyhow::Error::msg)?;
        Ok((fixture, pg, n1, n10))
    })?;

    // Per-call overhead, interleaved trial by trial.
    let n = opts.calls;
    let mut trials = Vec::new();
    let mut scope_out = PathBuf::new();
    let mut lost_lines = Vec::new();
    step("per-call overhead trials", || {
        for t in 0..opts.trials {
            let mut tr = Trial::default();
            let fx = fixture.display().to_string();
            let arg = n.to_string();
            tr.bare = ns_per_call(command(&fixture).args(["time", &arg]))?;
            let count_prog = format!(
                "uprobe:{fx}:leaf {{ @c = count(); }} uretprobe:{fx}:leaf {{ @r = count(); }}"
            );
            tr.bt_count = ns_per_call(command("bpftrace").args([
                "-q",
                "-e",
                &count_prog,
                "-c",
                &format!("{fx} time {n}"),
            ]))?;
            scope_out = work.join(format!("overhead-{t}"));
            let mut cmd = command(&agent);
            // Every call recorded: the governor is off for this row.
            cmd.args(["record", "-q", "--max-overhead", "off", "--out"])
                .arg(&scope_out)
                .args(["-f", "leaf", "--"])
                .arg(&fixture)
                .args(["time", &arg]);
            let (ns, stderr) = ns_per_call_with_stderr(&mut cmd)?;
            tr.scope = ns;
            if let Some(l) = stderr.lines().find(|l| l.contains("stopped:")) {
                lost_lines.push(l.trim().to_string());
            }
            let printf_prog = format!(
                "uprobe:{fx}:leaf {{ printf(\"E %d %d\\n\", tid, nsecs); }} \
                 uretprobe:{fx}:leaf {{ printf(\"R %d %d\\n\", tid, nsecs); }}"
            );
            let printf_file = work.join("bpftrace-printf.txt");
            tr.bt_printf = ns_per_call(
                command("bpftrace")
                    .args(["-q", "-o"])
                    .arg(&printf_file)
                    .args(["-e", &printf_prog, "-c", &format!("{fx} time {n}")]),
            )?;
            let uftrace_dir = work.join("uftrace.data");
            let _ = std::fs::remove_dir_all(&uftrace_dir);
            tr.uftrace = ns_per_call(
                command("uftrace")
                    .args(["record", "-d"])
                    .arg(&uftrace_dir)
                    .arg(&fixture_pg)
                    .args(["time", &arg]),
            )?;
            println!(
                "    trial {}/{}: bare {:.1} ns, bpftrace count {:.0} ns, scope {:.0} ns, bpftrace printf {:.0} ns, uftrace {:.0} ns",
                t + 1,
                opts.trials,
                tr.bare,
                tr.bt_count,
                tr.scope,
                tr.bt_printf,
                tr.uftrace
            );
            trials.push(tr);
        }
        Ok(())
    })?;
    let calls_bytes = dir_bytes(&scope_out.join("calls"));

    let pipeline_out = step("pipeline alone (20 M synthetic events)", || {
        let out = output(
            command(&pipeline)
                .arg("20000000")
                .arg(work.join("pipeline")),
        )?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        print!("{}", indent(&text));
        Ok(text)
    })?;
    let pipe_wall = field(&pipeline_out, "events_per_s")?;
    let pipe_cpu = field(&pipeline_out, "events_per_cpu_s")?;

    let governor = step("governor at 5% on the govern workload", || {
        governor_trials(&agent, &fixture, opts.trials, &work)
    })?;
    let python = step("governor at 5% on CPython (json loop)", || {
        python_trials(&agent, opts.trials, &work)
    })?;

    let estimates = estimates::run(&agent, &rates, est_trials, est_long_trials, &work)?;
    let estimates = estimates_section(&estimates, est_trials, est_long_trials);

    let session = step(
        "uprobe.session vs uprobe + uretprobe (scope-agent calibrate)",
        || {
            let out = output(command(&agent).args(["calibrate", "--rounds", "7"]))?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            print!("{}", indent(&text));
            let er = field(&text, "entry_return_ns")?;
            let e = field(&text, "entry_ns")?;
            let session = field(&text, "session_ns").ok();
            Ok((er, e, session))
        },
    )?;

    let mut attach = Vec::new();
    for (bin, functions, with_bpftrace) in [(&many1k, 1001, true), (&many10k, 10_001, false)] {
        let figures = step(&format!("attach/detach {functions} functions"), || {
            attach_figures(&agent, bin, functions, with_bpftrace, &work)
        })?;
        attach.push(figures);
    }

    let sched = crate::bench_sched::run(&agent, &root, opts.trials, &work)?;
    let query = crate::bench_query::run(&root)?;

    let report = render(
        opts,
        &trials,
        calls_bytes,
        n,
        pipe_wall,
        pipe_cpu,
        &attach,
        &lost_lines,
        &governor,
        python.as_ref(),
        session,
        &estimates,
    );
    println!("\n{report}");
    if opts.write {
        let path = root.join("BENCHMARKS.md");
        // Sections measured by other commands (below the marker) are kept.
        let kept = std::fs::read_to_string(&path)
            .ok()
            .and_then(|old| {
                old.find(GENERATED_END)
                    .map(|i| old[i + GENERATED_END.len()..].to_string())
            })
            .unwrap_or_default();
        let text = format!("{}{GENERATED_END}{kept}", benchmarks_md(&report));
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        crate::bench_query::write_section(&path, &query)?;
        crate::bench_query::write_section_between(
            &path,
            &sched,
            crate::bench_sched::BEGIN,
            crate::bench_sched::END,
        )?;
        println!("wrote {}", path.display());
    }
    println!("\n{sched}");
    println!("\n{query}");
    println!(
        "cargo xtask bench: done ({:.0} s)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `SCOPE_BENCH_ONLY=query cargo xtask bench`: only the query table (no
/// root needed); BENCHMARKS.md gets that section replaced and keeps the rest.
fn run_query_only(opts: &BenchOptions, started: Instant) -> Result<()> {
    let root = workspace_root();
    let section = crate::bench_query::run(&root)?;
    println!("\n{section}");
    if opts.write {
        let path = root.join("BENCHMARKS.md");
        crate::bench_query::write_section(&path, &section)?;
        println!("wrote the query section of {}", path.display());
    }
    println!(
        "cargo xtask bench ({ONLY_ENV}=query): done ({:.0} s)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// One interleaved pair of runs of the `govern` workload: unprobed, and
/// under `scope-agent record --max-overhead 5`.
struct GovTrial {
    /// Mean leaf calls per second after the first second.
    base_rate: f64,
    gov_rate: f64,
    /// Leaf calls over the whole fixed-length run.
    base_total: f64,
    gov_total: f64,
    /// The governor's final predicted slowdown (percent; `sessions.predicted_pct`).
    predicted: f64,
}

/// Medians over `trials` of the slowdown after the first second, the
/// slowdown over the whole run (both percent) and the predicted slowdown.
fn governor_medians(trials: &[GovTrial]) -> (f64, f64, f64) {
    let m = |f: fn(&GovTrial) -> f64| median(trials.iter().map(f).collect());
    (
        m(|t| 100.0 * (t.base_rate / t.gov_rate - 1.0)),
        m(|t| 100.0 * (t.base_total / t.gov_total - 1.0)),
        m(|t| t.predicted),
    )
}

/// (mean rate after the first second, total calls) from `govern` output.
fn govern_figures(stdout: &str) -> Result<(f64, f64)> {
    workload_figures(stdout, 10, "leaf ")
}

/// (mean of the `rate` lines after the first `skip`, the first number after
/// `total`) from a self-timed workload's output.
fn workload_figures(stdout: &str, skip: usize, total: &str) -> Result<(f64, f64)> {
    let rates: Vec<f64> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("rate "))
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let steady = &rates[rates.len().min(skip)..];
    if steady.is_empty() {
        bail!("the govern workload printed too few rates:\n{stdout}");
    }
    let total = stdout
        .lines()
        .find_map(|l| l.strip_prefix(total))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .with_context(|| format!("no `{total}` count in the workload's output:\n{stdout}"))?;
    Ok((steady.iter().sum::<f64>() / steady.len() as f64, total))
}

/// What a session says about its cost (the `sessions` table): predicted
/// slowdowns (percent) and what scope measured.
#[derive(Debug, Clone, Copy, Default)]
struct SessionFigures {
    /// Of recording every call (the governor's prediction; what was
    /// measured when every call was recorded).
    predicted_full: Option<f64>,
    /// `predicted_full` is only a lower bound.
    full_at_least: bool,
    /// Of what was done at the end (the governor's final prediction).
    predicted: Option<f64>,
    /// What the probes cost the target, measured by scope (null when only
    /// a lower bound is known: `measured_low`).
    measured: Option<f64>,
    measured_low: Option<f64>,
    measured_high: Option<f64>,
}

impl SessionFigures {
    /// The governor's final prediction, which a session with a budget has.
    fn predicted_under_budget(&self) -> Result<f64> {
        self.predicted
            .context("the session has no predicted_pct (was --max-overhead given?)")
    }
}

/// The `sessions` row of the one session recorded under `out`.
fn session_figures(out: &Path) -> Result<SessionFigures> {
    let rows = duckdb_rows(&format!(
        "SELECT predicted_full_pct, predicted_full_at_least, predicted_pct, measured_pct, \
         measured_low_pct, measured_high_pct \
         FROM read_parquet('{}/sessions/**/*.parquet', hive_partitioning = true)",
        out.display()
    ))?;
    let [row] = rows.as_slice() else {
        bail!(
            "expected one session under {}, found {}",
            out.display(),
            rows.len()
        );
    };
    let f = |k: &str| row.get(k).and_then(serde_json::Value::as_f64);
    Ok(SessionFigures {
        predicted_full: f("predicted_full_pct"),
        full_at_least: row
            .get("predicted_full_at_least")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false),
        predicted: f("predicted_pct"),
        measured: f("measured_pct"),
        measured_low: f("measured_low_pct"),
        measured_high: f("measured_high_pct"),
    })
}

type Row = serde_json::Map<String, serde_json::Value>;

/// Runs `sql` in an in-memory DuckDB (Python's `duckdb`, as the tests do)
/// and returns the rows as JSON objects keyed by column name (non-finite
/// floats as null).
fn duckdb_rows(sql: &str) -> Result<Vec<Row>> {
    const SCRIPT: &str = r#"
import decimal, json, math, sys
import duckdb

def plain(v):
    if isinstance(v, decimal.Decimal):
        return float(v)
    return str(v)

def finite(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v

cur = duckdb.connect().execute(sys.argv[1])
cols = [d[0] for d in cur.description]
rows = [dict(zip(cols, map(finite, r))) for r in cur.fetchall()]
print(json.dumps(rows, default=plain))
"#;
    let out = output(command("python3").args(["-c", SCRIPT, sql]))
        .with_context(|| format!("DuckDB query failed: {sql}"))?;
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "DuckDB printed something other than rows for {sql}:\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The real workload: CPython's json module in a loop
/// (tests/fixtures/python/json_loop.py), unprobed and under `record` with
/// the governor at 5%, interleaved; plus one run recording every call.
struct PythonFigures {
    trials: Vec<GovTrial>,
    /// How many times slower recording every call makes it.
    full_factor: f64,
    functions: String,
}

const PYTHON: &str = "/usr/bin/python3.11";
const PYTHON_PATTERNS: [&str; 3] = ["PyObject_*", "PyLong_*", "PyUnicode_*"];

fn python_trials(agent: &Path, trials: usize, work: &Path) -> Result<Option<PythonFigures>> {
    if !Path::new(PYTHON).exists() {
        println!("    {PYTHON} not found: the real-workload row is left out");
        return Ok(None);
    }
    let script = workspace_root().join("tests/fixtures/python/json_loop.py");
    let record = |dir: &str, extra: &[&str], secs: &str| -> Result<(String, String)> {
        let mut cmd = command(agent);
        cmd.args(["record", "-q"])
            .args(extra)
            .arg("--out")
            .arg(work.join(dir));
        for p in PYTHON_PATTERNS {
            cmd.args(["-f", p]);
        }
        cmd.args(["--", PYTHON]).arg(&script).arg(secs);
        let out = output(&mut cmd)?;
        Ok((
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    };
    let mut out = Vec::new();
    let mut functions = String::new();
    for t in 0..trials {
        let base = output(command(PYTHON).arg(&script).arg("5"))?;
        let (base_rate, base_total) =
            workload_figures(&String::from_utf8_lossy(&base.stdout), 2, "iterations ")?;
        let dir = format!("python-{t}");
        let (stdout, stderr) = record(&dir, &["--max-overhead", "5"], "5")?;
        let (gov_rate, gov_total) = workload_figures(&stdout, 2, "iterations ")?;
        let predicted = session_figures(&work.join(&dir))?.predicted_under_budget()?;
        if let Some(l) = stderr.lines().find(|l| l.contains("attached ")) {
            functions = l
                .split(" functions")
                .next()
                .unwrap_or("")
                .replace("scope: attached ", "");
        }
        println!(
            "    trial {}/{trials}: unprobed {base_rate:.1} it/s, governed {gov_rate:.1} it/s after the first second, whole run {:+.1}%, predicted {predicted:.1}%",
            t + 1,
            100.0 * (base_total / gov_total - 1.0)
        );
        out.push(GovTrial {
            base_rate,
            gov_rate,
            base_total,
            gov_total,
            predicted,
        });
    }
    // No budget: record's default records every call.
    let (stdout, _) = record("python-full", &[], "2")?;
    let full_rate = stdout
        .lines()
        .find_map(|l| l.split("per_s ").nth(1))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .context("no per_s from the fully recorded python run")?;
    let base = median(out.iter().map(|t| t.base_total / 5.0).collect());
    let full_factor = base / full_rate.max(1e-9);
    println!("    recording every call: {full_rate:.2} it/s ({full_factor:.0}x slower)");
    Ok(Some(PythonFigures {
        trials: out,
        full_factor,
        functions,
    }))
}

fn governor_trials(
    agent: &Path,
    fixture: &Path,
    trials: usize,
    work: &Path,
) -> Result<Vec<GovTrial>> {
    let args = ["govern", "5000", "1000", "200"];
    let mut out = Vec::new();
    for t in 0..trials {
        let base = output(command(fixture).args(args))?;
        let (base_rate, base_total) = govern_figures(&String::from_utf8_lossy(&base.stdout))?;
        let dir = work.join(format!("governor-{t}"));
        let run = output(
            command(agent)
                .args(["record", "-q", "--max-overhead", "5", "--out"])
                .arg(&dir)
                .args(["-f", "leaf", "-f", "tleaf", "--"])
                .arg(fixture)
                .args(args),
        )?;
        let (gov_rate, gov_total) = govern_figures(&String::from_utf8_lossy(&run.stdout))?;
        let predicted = session_figures(&dir)?.predicted_under_budget()?;
        println!(
            "    trial {}/{trials}: unprobed {:.0} calls/s, governed {:.0} calls/s ({:+.1}%), whole run {:+.1}%, predicted {predicted:.1}%",
            t + 1,
            base_rate,
            gov_rate,
            100.0 * (base_rate / gov_rate - 1.0),
            100.0 * (base_total / gov_total - 1.0)
        );
        out.push(GovTrial {
            base_rate,
            gov_rate,
            base_total,
            gov_total,
            predicted,
        });
    }
    Ok(out)
}

/// bpftrace and uftrace, from Debian packages, when missing.
fn ensure_bench_tools() -> Result<()> {
    let missing: Vec<&str> = ["bpftrace", "bpftool", "uftrace"]
        .into_iter()
        .filter(|p| !on_path(p))
        .collect();
    if !missing.is_empty() {
        println!("scope: installing {} (one time)...", missing.join(", "));
        apt_install(&missing)?;
    }
    // The estimates and governor rows read the agent's Parquet with it.
    if !python_has_duckdb() {
        println!("scope: installing Python's duckdb (one time)...");
        pip_install_duckdb()?;
    }
    Ok(())
}

/// Runs a fixture in `time N` mode (possibly under a tracer) and returns
/// the `ns_per_call` it printed.
fn ns_per_call(cmd: &mut Command) -> Result<f64> {
    Ok(ns_per_call_with_stderr(cmd)?.0)
}

fn ns_per_call_with_stderr(cmd: &mut Command) -> Result<(f64, String)> {
    cmd.env("BPFTRACE_MAX_PROBES", "100000");
    let out = output(cmd)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let ns = field(&stdout, "ns_per_call")
        .with_context(|| format!("`{}` printed no ns_per_call", describe(cmd)))?;
    Ok((ns, String::from_utf8_lossy(&out.stderr).into_owned()))
}

/// The number after `name ` on a line of `text`.
fn field(text: &str, name: &str) -> Result<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .with_context(|| format!("no `{name} <number>` line in:\n{text}"))
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}

/// Total size of the files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// A child whose stderr (and stdout) lines arrive on a channel.
struct Watched {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Held open: a serve-mode target exits at end of input.
    _stdin: Option<std::process::ChildStdin>,
}

impl Watched {
    fn spawn(cmd: &mut Command) -> Result<Watched> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run `{}`", describe(cmd)))?;
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::channel();
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(Watched {
            child,
            lines,
            _stdin: stdin,
        })
    }

    /// The first line containing `needle`, within `timeout`.
    fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let mut seen = String::new();
        while Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_millis(20)) {
                Ok(line) if line.contains(needle) => return Ok(line),
                Ok(line) => {
                    seen.push_str(&line);
                    seen.push('\n');
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        bail!("no line containing {needle:?} within {timeout:?}; output:\n{seen}")
    }

    /// SIGINT, then the time until exit and every line printed meanwhile.
    fn interrupt(&mut self, timeout: Duration) -> Result<(Duration, String)> {
        let pid = libc::pid_t::try_from(self.child.id()).context("pid out of range")?;
        let start = Instant::now();
        // SAFETY: kill(2) on our own unreaped child.
        unsafe { libc::kill(pid, libc::SIGINT) };
        loop {
            if self.child.try_wait()?.is_some() {
                break;
            }
            if start.elapsed() > timeout {
                // No wait: a process closing thousands of perf links keeps
                // doing so after SIGKILL; it is reaped when it is done.
                let _ = self.child.kill();
                bail!("still running {timeout:?} after SIGINT");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let took = start.elapsed();
        let mut rest = String::new();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(500)) {
            rest.push_str(&line);
            rest.push('\n');
        }
        Ok((took, rest))
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.try_wait();
    }
}

/// The text after the last " in " of the agent's "attached" line (its own
/// attach time), and after "detached in " of its last line.
fn agent_time(line: &str, marker: &str) -> String {
    let line = match line.split_once("detached in ") {
        Some((_, rest)) => rest,
        None => line.split(';').next().unwrap_or(line),
    };
    let line = line.split(" (one perf").next().unwrap_or(line);
    line.rsplit(marker).next().unwrap_or("?").trim().to_string()
}

/// Scope attaching to (and detaching from) a running generated program,
/// and bpftrace attaching entry probes to the same functions.
fn attach_figures(
    agent: &Path,
    bin: &Path,
    functions: usize,
    with_bpftrace: bool,
    work: &Path,
) -> Result<AttachFigures> {
    let mut target = Watched::spawn(command(bin).arg("serve"))?;
    let ready = target.wait_for("ready", Duration::from_secs(10))?;
    let pid = ready.trim_start_matches("ready ").trim().to_string();

    let start = Instant::now();
    let mut scope = Watched::spawn(
        command(agent)
            // Attach speed alone: no calibration and warm-up before it.
            .args([
                "attach",
                "-q",
                "--max-overhead",
                "off",
                "--pid",
                &pid,
                "-f",
                "f*",
                "--out",
            ])
            .arg(work.join(format!("attach-{functions}"))),
    )?;
    let line = scope.wait_for("attached", Duration::from_secs(60))?;
    let scope_attach = start.elapsed();
    if !line.contains(&format!("attached {functions} functions")) {
        bail!("expected {functions} functions attached: {line}");
    }
    let (scope_detach, rest) = scope.interrupt(Duration::from_secs(120))?;
    let detach_line = rest
        .lines()
        .find(|l| l.contains("detached in"))
        .unwrap_or("");
    let figures_line = format!(
        "    scope: attach {:.0} ms wall (agent: {}), detach {:.0} ms wall (agent: {})",
        scope_attach.as_secs_f64() * 1e3,
        agent_time(&line, " in "),
        scope_detach.as_secs_f64() * 1e3,
        agent_time(detach_line, "detached in ")
    );
    println!("{figures_line}");
    drop(target);

    let bpftrace = if with_bpftrace {
        println!(
            "    bpftrace: attaching {functions} uprobes (its detach takes ~110 ms per probe)..."
        );
        let b = bin.display();
        let mut probes: Vec<String> = (0..functions - 1)
            .map(|i| format!("uprobe:{b}:f{i}"))
            .collect();
        probes.push(format!("uprobe:{b}:fhot"));
        let prog = format!(
            "{} {{ @c = count(); }} BEGIN {{ printf(\"bench-ready\\n\"); }}",
            probes.join(",")
        );
        let start = Instant::now();
        let mut bt = Watched::spawn(
            command("bpftrace")
                .args(["-e", &prog])
                .env("BPFTRACE_MAX_PROBES", "1000000")
                .env("BPFTRACE_MAX_BPF_PROGS", "1000000"),
        )?;
        bt.wait_for("bench-ready", Duration::from_secs(120))?;
        let attach = start.elapsed();
        // Its detach can take many minutes on a loaded VM: a lower bound
        // after BPFTRACE_DETACH_CAP is still a measurement.
        let detach = match bt.interrupt(BPFTRACE_DETACH_CAP) {
            Ok((d, _)) => d,
            Err(_) => BPFTRACE_DETACH_CAP,
        };
        println!(
            "    bpftrace: attach {:.0} ms, detach {:.0} ms{}",
            attach.as_secs_f64() * 1e3,
            detach.as_secs_f64() * 1e3,
            if detach >= BPFTRACE_DETACH_CAP {
                " or more (stopped waiting; it is killed)"
            } else {
                ""
            }
        );
        Some((attach, detach))
    } else {
        None
    };
    Ok(AttachFigures {
        functions,
        scope_attach,
        scope_attach_agent: agent_time(&line, " in "),
        scope_detach,
        scope_detach_agent: agent_time(detach_line, "detached in "),
        bpftrace,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok { "meets" } else { "**misses**" }
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

/// The measured section of BENCHMARKS.md (markdown).
#[expect(
    clippy::too_many_arguments,
    reason = "one call site, each figure named"
)]
fn render(
    opts: &BenchOptions,
    trials: &[Trial],
    calls_bytes: u64,
    n: u64,
    pipe_wall: f64,
    pipe_cpu: f64,
    attach: &[AttachFigures],
    lost_lines: &[String],
    governor: &[GovTrial],
    python: Option<&PythonFigures>,
    session: (f64, f64, Option<f64>),
    estimates: &str,
) -> String {
    let col = |f: fn(&Trial) -> f64| median(trials.iter().map(f).collect());
    let (bare, count, scope, printf, uftrace) = (
        col(|t| t.bare),
        col(|t| t.bt_count),
        col(|t| t.scope),
        col(|t| t.bt_printf),
        col(|t| t.uftrace),
    );
    let ratio_count = median(trials.iter().map(|t| t.scope / t.bt_count).collect());
    let ratio_printf = median(trials.iter().map(|t| t.bt_printf / t.scope).collect());
    let ratio_uftrace = median(trials.iter().map(|t| t.scope / t.uftrace).collect());
    let per_call = calls_bytes as f64 / n as f64;
    let raw = 2.0 * scope_common::RING_RECORD_BYTES as f64;
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());

    let mut s = String::new();
    let _ = writeln!(
        s,
        "Measured by `cargo xtask bench` on {} (kernel {}, {cpus} CPUs): {} trials of {n} calls, interleaved.\n",
        today(),
        kernel.trim(),
        opts.trials
    );
    s.push_str("| what | scope | compared with | ratio | target | |\n| --- | ---: | ---: | ---: | --- | --- |\n");
    let _ = writeln!(
        s,
        "| per-call overhead, every call recorded to Parquet (entry + return) | {scope:.0} ns/call | bpftrace `count()` uprobe + uretprobe: {count:.0} ns/call | {ratio_count:.2}x | ≤ 1.10x | {} |",
        verdict(ratio_count <= 1.10)
    );
    let _ = writeln!(
        s,
        "| same, vs writing every event | {scope:.0} ns/call | bpftrace `printf` per event to a file: {printf:.0} ns/call | {ratio_printf:.2}x faster | ≥ 2x faster | {} |",
        verdict(ratio_printf >= 2.0)
    );
    for a in attach {
        let (bt_a, bt_d, ra, rd) = match a.bpftrace {
            Some((ba, bd)) => (
                format!("bpftrace, {} entry uprobes: {}", a.functions, ms(ba)),
                if bd >= BPFTRACE_DETACH_CAP {
                    format!("bpftrace: > {} (stopped waiting)", ms(bd))
                } else {
                    format!("bpftrace: {}", ms(bd))
                },
                format!(
                    "{:.1}x faster",
                    ba.as_secs_f64() / a.scope_attach.as_secs_f64()
                ),
                format!(
                    "{}{:.0}x faster",
                    if bd >= BPFTRACE_DETACH_CAP { "> " } else { "" },
                    bd.as_secs_f64() / a.scope_detach.as_secs_f64()
                ),
            ),
            None => (
                "bpftrace: not run (≈110 ms per probe to detach)".into(),
                "–".into(),
                "–".into(),
                "–".into(),
            ),
        };
        let faster = a
            .bpftrace
            .is_none_or(|(ba, bd)| ba > a.scope_attach && bd > a.scope_detach);
        let _ = writeln!(
            s,
            "| attach {} functions (entry + return), wall from start to attached | {} (agent: {}) | {bt_a} | {ra} | < 1 s, faster than bpftrace | {} |",
            a.functions,
            ms(a.scope_attach),
            a.scope_attach_agent,
            verdict(a.scope_attach < Duration::from_secs(1) && faster)
        );
        let _ = writeln!(
            s,
            "| detach {} functions, wall from SIGINT to exit (files written) | {} (agent: {}) | {bt_d} | {rd} | < 1 s, faster than bpftrace | {} |",
            a.functions,
            ms(a.scope_detach),
            a.scope_detach_agent,
            verdict(a.scope_detach < Duration::from_secs(1) && faster)
        );
    }
    let _ = writeln!(
        s,
        "| user-space pipeline alone (synthetic ring records → correlator → Parquet), one thread | {:.1} M events/CPU-s ({:.1} M events/s wall, fsync included) | – | – | ≥ 5 M events/s on one core | {} |",
        pipe_cpu / 1e6,
        pipe_wall / 1e6,
        verdict(pipe_cpu >= 5e6)
    );
    let _ = writeln!(
        s,
        "| bytes per call on disk (`calls` Parquet) | {per_call:.1} B/call | raw ring records: {raw:.0} B/call (2 × {} B) | {:.1}x smaller | ≤ 8 B/call | {} |",
        scope_common::RING_RECORD_BYTES,
        raw / per_call,
        verdict(per_call <= 8.0)
    );
    {
        let (steady, whole, predicted) = governor_medians(governor);
        let ratio = predicted / steady.max(0.01);
        let _ = writeln!(
            s,
            "| slowdown of a workload with the governor at 5% (fixture `govern 5000 1000 200`: `leaf` about 2 M calls/s unprobed, about 40x slower if every call were recorded; `tleaf` every 1000th call; `record`) | steady state (after the first second) {steady:.1}%, whole run {whole:.1}% (`record`'s warm-up records every call until the first decision, here after 30 ms) | the same workload unprobed | predicted {predicted:.1}% = {ratio:.2}x the steady state | ≤ 5%, prediction within 2x | {} |",
            verdict(steady <= 5.0 && (0.5..=2.0).contains(&ratio))
        );
    }
    if let Some(py) = python {
        let (steady, whole, predicted) = governor_medians(&py.trials);
        let ratio = predicted / whole.max(0.01);
        let _ = writeln!(
            s,
            "| slowdown of a real workload with the governor at 5%: CPython 3.11 `json` dumps + loads in a loop for 5 s (`tests/fixtures/python/json_loop.py`), probes on `{}` ({} functions of `python3.11`, no DWARF); recording every call makes it {:.0}x slower | whole run {whole:.1}% (after the first second {steady:.1}%) | the same run unprobed | predicted {predicted:.1}% = {ratio:.2}x the whole run | ≤ 5%, prediction within 2x | {} |",
            PYTHON_PATTERNS.join("`, `"),
            py.functions,
            py.full_factor,
            verdict(whole <= 5.0 && (0.5..=2.0).contains(&ratio))
        );
    }
    {
        let (er, e, ses) = session;
        let _ = writeln!(
            s,
            "| `uprobe.session` (one program at entry and return, one link) vs uprobe + uretprobe links, per call of one function (`scope-agent calibrate`, median of 7) | {} | uprobe + uretprobe: {er:.0} ns/call (entry alone: {e:.0} ns) | {} | consider if it measures better | – |",
            ses.map_or_else(
                || "unsupported by this kernel".to_string(),
                |v| format!("{v:.0} ns/call")
            ),
            ses.map_or_else(|| "–".to_string(), |v| format!("{:.2}x", v / er.max(1.0)))
        );
    }
    let _ = writeln!(
        s,
        "| uftrace on the same fixture built with `-pg` (in-process reference) | {scope:.0} ns/call | `uftrace record`: {uftrace:.0} ns/call | scope/uftrace {ratio_uftrace:.2}x | report | – |"
    );
    let _ = writeln!(s, "\nUnprobed, the fixture's call takes {bare:.1} ns.\n");
    s.push_str("Per trial (ns per call):\n\n| trial | bare | bpftrace count | scope | bpftrace printf | uftrace |\n| ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for (i, t) in trials.iter().enumerate() {
        let _ = writeln!(
            s,
            "| {} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} |",
            i + 1,
            t.bare,
            t.bt_count,
            t.scope,
            t.bt_printf,
            t.uftrace
        );
    }
    if !lost_lines.is_empty() {
        s.push_str("\nscope's own account of each overhead run:\n\n```\n");
        for l in lost_lines {
            s.push_str(l);
            s.push('\n');
        }
        s.push_str("```\n");
    }
    s.push('\n');
    s.push_str(estimates);
    s
}

/// The estimates section, between its markers.
fn estimates_section(results: &[estimates::FixtureResult], trials: usize, long: usize) -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{ESTIMATES_BEGIN}{}{ESTIMATES_END}",
        estimates::render(results, trials, long, &today(), kernel.trim())
    )
}

/// Today's date (UTC), YYYY-MM-DD.
pub(crate) fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Ends the part of BENCHMARKS.md this command writes; what follows it
/// (measured by other commands) is kept when the bench rewrites the file.
const GENERATED_END: &str = "\n<!-- end of the part `cargo xtask bench` writes -->\n\n";

/// The part of BENCHMARKS.md this command writes, around the measured section.
fn benchmarks_md(report: &str) -> String {
    format!(
        "# scope: benchmarks\n\n\
This machine is a shared 2-core VM, so absolute times swing from run to run\n\
(the uprobe trap alone measured 9 µs per call one day and 18 µs the next).\n\
Every figure that matters is therefore a **ratio against a peer measured in\n\
the same run, on the same fixture**, interleaved trial by trial. Everything\n\
below was written by the command that reproduces it, as root:\n\n\
```sh\n\
cargo xtask bench            # about 15-20 minutes; --trials N, --calls N, --no-write\n\
SCOPE_BENCH_ONLY=estimates cargo xtask bench   # the estimates table alone (about 5 minutes)\n\
```\n\n\
## What is measured\n\n\
- Overhead: `tests/fixtures/c/fixture.c` at `-O2`, mode `time N`, calls the\n  \
`noipa` function `leaf` N times and prints the mean wall time per call,\n  \
timed by the program itself (start-up and attach costs excluded). Each\n  \
trial runs it bare, under bpftrace `count()` (uprobe + uretprobe), under\n  \
`scope-agent record -f leaf` (every call to Parquet), under bpftrace\n  \
`printf` of every event to a file, and (built with `-pg`) under\n  \
`uftrace record`; the table gives medians and the median of the per-trial\n  \
ratios.\n\
- Attach/detach: a generated C program with N `noipa` functions `f0`..\n  \
(plus `fhot`), running in serve mode. scope runs `attach --pid P -f 'f*'`\n  \
(entry and return probes on every function: multi-uprobe links); the time\n  \
is wall clock from starting the agent until it prints `attached`\n  \
(symbols and DWARF read, programs loaded, links created; the agent's own\n  \
figure in parentheses), and from SIGINT until the agent has exited (links\n  \
closed, ring drained, Parquet written). bpftrace v0.17 (Debian; it has no\n  \
multi-uprobe support) attaches entry probes only to the same functions,\n  \
timed until its `BEGIN` block prints, and from SIGINT to exit; that\n  \
detach (one perf link per probe) is waited for at most 60 s, beyond which\n  \
the figure is a lower bound and bpftrace is killed. At 10,001 functions\n  \
bpftrace is not run.\n\
- Pipeline: `scope-agent/examples/pipeline_bench.rs` feeds 20 M synthetic\n  \
ring records (4 threads, call trees three deep) through the correlator\n  \
into the Parquet store on one thread; events per second of that thread's\n  \
CPU time, and of wall time including the disk.\n\
- Bytes per call: the `calls` Parquet files of the last overhead run\n  \
divided by its call count. Each file has fixed costs (footer,\n  \
dictionaries), so longer runs store fewer bytes per call.\n\
- Governor: a workload timed by itself, run unprobed and under\n  \
`scope-agent record --max-overhead 5` (`record` records every call unless\n  \
given a budget), interleaved. The fixture's `govern 5000 1000 200` mode\n  \
(a 2 M calls/s `leaf`) reports its rate every 100 ms (steady state: after\n  \
the first second); the real workload is CPython's `json` in a loop with\n  \
probes on its exported API (whole run). The prediction is the governor's\n  \
own final figure (`sessions.predicted_pct`).\n\
- Estimates: `tests/fixtures/c/rates.c` (`outer` calls `hot(spin)` 100\n  \
times per call and `cold` once per 1,000 `hot` calls; it prints every\n  \
count, its wall time and its user and system CPU time) in seven\n  \
settings: `hot` from a few ns to ~50 µs per call, one thread to four,\n  \
runs under 0.2 s (`run`: fixed work) and of 5 s (`for`: fixed time),\n  \
steady and bursty. Each trial runs the command bare and under\n  \
`scope-agent record --max-overhead 5 -f hot -f outer -f cold` (the first\n  \
setting: `-f hot` alone), alternately first; then it runs once under\n  \
`record` with no flags (every call recorded). The counts in `totals`\n  \
(estimate, 95% interval, method) are set against the fixture's; the\n  \
predictions in `sessions` (`predicted_full_pct`, `predicted_pct`)\n  \
against the slowdown measured from the fixture's own figures: its wall\n  \
time for `run`, its CPU time per `hot` call for `for` (which runs a fixed\n  \
time, and on a shared VM gets a varying share of the CPUs); scope's own\n  \
measurement (`measured_pct`, from the target's system vs user time) is\n  \
shown beside it.\n\
- `uprobe.session`: `scope-agent calibrate` times a function of the agent\n  \
with each probe shape attached (the programs drop the events by their\n  \
first test, so the probe itself is timed).\n\n\
## Results\n\n{report}\n\
## Reproduce one row by hand\n\n\
```sh\n\
cc -g -O2 -pthread tests/fixtures/c/fixture.c -o /tmp/c2\n\
/tmp/c2 time 300000\n\
bpftrace -q -e 'uprobe:/tmp/c2:leaf {{ @c = count(); }} uretprobe:/tmp/c2:leaf {{ @r = count(); }}' -c '/tmp/c2 time 300000'\n\
target/release/scope-agent record -q --max-overhead off --out /tmp/ob -f leaf -- /tmp/c2 time 300000\n\
/usr/bin/python3.11 tests/fixtures/python/json_loop.py 5\n\
target/release/scope-agent record -q --max-overhead 5 -f 'PyObject_*' -f 'PyLong_*' -f 'PyUnicode_*' -- /usr/bin/python3.11 tests/fixtures/python/json_loop.py 5\n\
cc -g -O2 -fno-omit-frame-pointer -pthread tests/fixtures/c/rates.c -o /tmp/rates\n\
/tmp/rates for 5000 2 5000\n\
target/release/scope-agent record -q --max-overhead 5 --out /tmp/or -f hot -f outer -f cold -- /tmp/rates for 5000 2 5000\n\
python3 -c \"import duckdb; print(duckdb.sql(\\\"SELECT * FROM '/tmp/or/totals/**/*.parquet'\\\"))\"\n\
sudo target/release/scope-agent calibrate\n\
du -sb /tmp/ob/calls\n\
```\n"
    )
}

/// The estimates table (issue 9): what scope says under
/// `record --max-overhead 5` (counts, their 95% intervals, predicted
/// slowdowns) against what the rates fixture (tests/fixtures/c/rates.c)
/// prints and what the bench measures, fixture by fixture.
mod estimates {
    use std::collections::BTreeMap;
    use std::fmt::Write as _;
    use std::path::Path;

    use anyhow::{Context, Result};

    use super::{SessionFigures, command, duckdb_rows, median, output, session_figures, step};

    /// An estimate meets the target within this share of the truth (percent).
    const WITHIN_PCT: f64 = 15.0;
    /// A prediction meets the target within this factor of what was measured…
    const PREDICTION_FACTOR: f64 = 2.0;
    /// …or within this many points of it (the bare runs alone differ by
    /// about this much from trial to trial on this VM).
    const NOISE_POINTS: f64 = 2.0;

    const ALL: &[&str] = &["hot", "outer", "cold"];

    /// One fixture: the rates fixture's arguments and the functions probed.
    pub(super) struct RatesFixture {
        label: &'static str,
        args: &'static [&'static str],
        probed: &'static [&'static str],
        /// For `hot`, only a lower bound is the honest answer.
        lower_bound_expected: bool,
    }

    /// From a few ns to ~50 µs per call, one thread and many, short runs
    /// and 5-s ones, steady and bursty.
    pub(super) const FIXTURES: [RatesFixture; 7] = [
        RatesFixture {
            label: "tiny, alone",
            args: &["run", "1", "2000000", "0"],
            probed: &["hot"],
            lower_bound_expected: true,
        },
        RatesFixture {
            label: "tiny, callers probed",
            args: &["run", "2", "200000", "100"],
            probed: ALL,
            lower_bound_expected: false,
        },
        RatesFixture {
            label: "medium, short",
            args: &["run", "2", "40000", "2000"],
            probed: ALL,
            lower_bound_expected: false,
        },
        RatesFixture {
            label: "steady, long",
            args: &["for", "5000", "2", "5000"],
            probed: ALL,
            lower_bound_expected: false,
        },
        RatesFixture {
            label: "bursty, long",
            args: &["for", "5000", "2", "5000", "bursty:30:100"],
            probed: ALL,
            lower_bound_expected: false,
        },
        RatesFixture {
            label: "slow, four threads",
            args: &["for", "5000", "4", "60000"],
            probed: ALL,
            lower_bound_expected: false,
        },
        RatesFixture {
            label: "steady, one thread",
            args: &["for", "5000", "1", "5000"],
            probed: ALL,
            lower_bound_expected: false,
        },
    ];

    impl RatesFixture {
        /// `for` runs for a fixed time (the slowdown is in work per
        /// CPU-second); `run` does a fixed amount of work (in wall time).
        fn fixed_time(&self) -> bool {
            self.args[0] == "for"
        }

        fn threads(&self) -> &str {
            self.args[if self.fixed_time() { 2 } else { 1 }]
        }

        fn flags(&self) -> String {
            self.probed
                .iter()
                .map(|f| format!("-f {f}"))
                .collect::<Vec<_>>()
                .join(" ")
        }
    }

    /// What the fixture printed: `hot N outer M cold K wall_ns W utime_ns U stime_ns S`.
    #[derive(Debug, Clone, Copy, Default)]
    struct Counts {
        hot: i64,
        outer: i64,
        cold: i64,
        wall_ns: f64,
        /// utime + stime: the probes' handling is charged to the target.
        cpu_ns: f64,
    }

    impl Counts {
        fn parse(stdout: &str) -> Result<Counts> {
            let line = stdout
                .lines()
                .find(|l| l.starts_with("hot "))
                .with_context(|| format!("no counts in the rates fixture's output:\n{stdout}"))?;
            let words: Vec<&str> = line.split_whitespace().collect();
            let at = |key: &str| -> Result<f64> {
                words
                    .iter()
                    .position(|w| *w == key)
                    .and_then(|i| words.get(i + 1))
                    .and_then(|v| v.parse().ok())
                    .with_context(|| format!("no `{key}` in {line:?}"))
            };
            Ok(Counts {
                hot: at("hot")? as i64,
                outer: at("outer")? as i64,
                cold: at("cold")? as i64,
                wall_ns: at("wall_ns")?,
                cpu_ns: at("utime_ns")? + at("stime_ns")?,
            })
        }

        fn of(&self, name: &str) -> i64 {
            match name {
                "hot" => self.hot,
                "outer" => self.outer,
                _ => self.cold,
            }
        }

        /// What a slowdown is the ratio of: the wall time of a fixed amount
        /// of work (`run`), or the CPU time per hot call over a fixed time
        /// (`for`: threads that run for a fixed time do less work, and the
        /// CPU-second corrects for what the VM's other load takes).
        fn cost(&self, fixed_time: bool) -> f64 {
            if fixed_time {
                self.cpu_ns / self.hot.max(1) as f64
            } else {
                self.wall_ns
            }
        }

        /// CPU time per hot call, unprobed (ns).
        fn per_call_ns(&self) -> f64 {
            self.cpu_ns / self.hot.max(1) as f64
        }
    }

    /// One function's row of `totals`.
    #[derive(Debug, Clone)]
    struct Total {
        calls: Option<i64>,
        exact: bool,
        low: i64,
        high: Option<i64>,
        method: String,
        basis: Option<String>,
    }

    impl Total {
        fn error_pct(&self, truth: i64) -> Option<f64> {
            self.calls
                .map(|c| 100.0 * (c - truth) as f64 / truth.max(1) as f64)
        }

        fn holds(&self, truth: i64) -> bool {
            self.low <= truth && self.high.is_none_or(|h| h >= truth)
        }

        /// Exact and right; or an estimate within [`WITHIN_PCT`] whose
        /// interval holds the truth; or, where that is the honest answer, a
        /// lower bound that holds.
        fn meets(&self, truth: i64, lower_bound_ok: bool) -> bool {
            if self.exact {
                return self.calls == Some(truth);
            }
            match self.error_pct(truth) {
                Some(e) => e.abs() <= WITHIN_PCT && self.holds(truth),
                None => lower_bound_ok && self.holds(truth),
            }
        }

        fn method(&self) -> String {
            match self.method.as_str() {
                "sampled: ratio to a related function" => {
                    format!("ratio to `{}`", self.basis.as_deref().unwrap_or("?"))
                }
                m => m.strip_prefix("sampled: ").unwrap_or(m).to_string(),
            }
        }

        fn estimate(&self) -> String {
            match self.calls {
                Some(c) if self.exact => format!("{} (exact)", thousands(c)),
                Some(c) => thousands(c),
                None => "none".into(),
            }
        }

        fn interval(&self) -> String {
            if self.exact {
                return "–".into();
            }
            match self.high {
                Some(h) => format!("{}–{}", thousands(self.low), thousands(h)),
                None => format!("≥ {}", thousands(self.low)),
            }
        }

        /// For the per-trial table: `exact`, or `+1.2% ✓` (✗ when the
        /// interval misses), or `≥ 123 ✓`.
        fn brief(&self, truth: i64) -> String {
            let mark = if self.holds(truth) { "✓" } else { "✗" };
            match (self.exact, self.error_pct(truth)) {
                (true, _) if self.calls == Some(truth) => "exact".into(),
                (true, _) => format!("**exact but {}**", self.estimate()),
                (false, Some(e)) => format!("{e:+.1}% {mark}"),
                (false, None) => format!("≥ {} {mark}", thousands(self.low)),
            }
        }
    }

    /// Every function's row of `totals` under `out`, by name.
    fn totals(out: &Path) -> Result<BTreeMap<String, Total>> {
        let functions = format!("{}/functions/**/*.parquet", out.display());
        let rows = duckdb_rows(&format!(
            "SELECT f.name, t.calls, t.exact, t.calls_low, t.calls_high, t.method, b.name AS basis \
             FROM read_parquet('{}/totals/**/*.parquet', hive_partitioning = true) t \
             JOIN read_parquet('{functions}', hive_partitioning = true) f USING (session_id, function_id) \
             LEFT JOIN read_parquet('{functions}', hive_partitioning = true) b \
               ON b.session_id = t.session_id AND b.function_id = t.basis_function_id",
            out.display()
        ))?;
        let int = |r: &super::Row, k: &str| r.get(k).and_then(serde_json::Value::as_i64);
        let text = |r: &super::Row, k: &str| {
            r.get(k)
                .and_then(serde_json::Value::as_str)
                .map(str::to_string)
        };
        rows.iter()
            .map(|r| {
                Ok((
                    text(r, "name").context("a totals row without a name")?,
                    Total {
                        calls: int(r, "calls"),
                        exact: r
                            .get("exact")
                            .and_then(serde_json::Value::as_bool)
                            .unwrap_or(false),
                        low: int(r, "calls_low").unwrap_or(0),
                        high: int(r, "calls_high"),
                        method: text(r, "method").unwrap_or_default(),
                        basis: text(r, "basis"),
                    },
                ))
            })
            .collect()
    }

    /// One run under the agent.
    struct Probed {
        counts: Counts,
        totals: BTreeMap<String, Total>,
        session: SessionFigures,
    }

    impl Probed {
        fn total(&self, name: &str) -> Result<&Total> {
            self.totals
                .get(name)
                .with_context(|| format!("no `{name}` in totals"))
        }
    }

    /// An interleaved pair: the command bare and under
    /// `record --max-overhead 5` (alternately first).
    struct Trial {
        bare: Counts,
        sampled: Probed,
    }

    impl Trial {
        /// The sampled run's slowdown against this trial's bare run (percent).
        fn measured_pct(&self, fixed_time: bool) -> f64 {
            slowdown_pct(&self.bare, &self.sampled.counts, fixed_time)
        }
    }

    fn slowdown_pct(bare: &Counts, probed: &Counts, fixed_time: bool) -> f64 {
        100.0 * (probed.cost(fixed_time) / bare.cost(fixed_time).max(1e-9) - 1.0)
    }

    pub(super) struct FixtureResult {
        fx: &'static RatesFixture,
        trials: Vec<Trial>,
        /// `record` with no flags: every call recorded.
        full: Probed,
    }

    impl FixtureResult {
        /// The median bare run's cost (see [`Counts::cost`]).
        fn bare_cost(&self) -> f64 {
            let fixed = self.fx.fixed_time();
            median(self.trials.iter().map(|t| t.bare.cost(fixed)).collect())
        }

        /// Measured slowdown of recording every call (percent), against
        /// the median bare run.
        fn full_measured_pct(&self) -> f64 {
            100.0 * (self.full.counts.cost(self.fx.fixed_time()) / self.bare_cost().max(1e-9) - 1.0)
        }

        fn sampled_measured_pct(&self) -> f64 {
            let fixed = self.fx.fixed_time();
            median(self.trials.iter().map(|t| t.measured_pct(fixed)).collect())
        }

        /// Median predicted slowdown of full recording, and whether it is
        /// (in most trials) only a lower bound.
        /// The median trial's predicted slowdown of full recording (the
        /// lower of the two middle ones: a figure scope gave, with its "at
        /// least"), and whether it is only a lower bound.
        fn full_predicted(&self) -> (f64, bool) {
            let mut v: Vec<(f64, bool)> = self
                .trials
                .iter()
                .filter_map(|t| {
                    let s = &t.sampled.session;
                    s.predicted_full.map(|p| (p, s.full_at_least))
                })
                .collect();
            v.sort_by(|a, b| a.0.total_cmp(&b.0));
            v.get(v.len().saturating_sub(1) / 2)
                .copied()
                .unwrap_or((f64::NAN, false))
        }

        fn sampled_predicted(&self) -> f64 {
            median(
                self.trials
                    .iter()
                    .filter_map(|t| t.sampled.session.predicted)
                    .collect(),
            )
        }

        fn estimates_meet(&self) -> bool {
            self.trials.iter().all(|t| {
                self.fx.probed.iter().all(|name| {
                    t.sampled.total(name).is_ok_and(|tot| {
                        tot.meets(
                            t.sampled.counts.of(name),
                            *name == "hot" && self.fx.lower_bound_expected,
                        )
                    })
                })
            })
        }

        /// How far apart the bare runs were: half their range over their
        /// median (percent); a measured slowdown is not resolved below it.
        fn bare_spread_pct(&self) -> f64 {
            let fixed = self.fx.fixed_time();
            let costs: Vec<f64> = self.trials.iter().map(|t| t.bare.cost(fixed)).collect();
            if costs.len() < 2 {
                return 0.0;
            }
            let (lo, hi) = costs.iter().fold((f64::INFINITY, 0.0_f64), |(lo, hi), &c| {
                (lo.min(c), hi.max(c))
            });
            50.0 * (hi - lo) / median(costs).max(1e-9)
        }

        fn full_prediction(&self) -> Check {
            let (pred, at_least) = self.full_predicted();
            let measured = self.full_measured_pct();
            if at_least && pred <= measured {
                return Check::Meets;
            }
            judge(pred, measured, self.bare_spread_pct(), at_least)
        }

        /// The trials' measured slowdowns under the budget: lowest, highest.
        fn sampled_measured_range(&self) -> (f64, f64) {
            let fixed = self.fx.fixed_time();
            self.trials
                .iter()
                .map(|t| t.measured_pct(fixed))
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), m| {
                    (lo.min(m), hi.max(m))
                })
        }

        fn sampled_prediction(&self) -> Check {
            let predicted = self.sampled_predicted();
            let (lo, hi) = self.sampled_measured_range();
            match judge(
                predicted,
                self.sampled_measured_pct(),
                self.bare_spread_pct(),
                false,
            ) {
                // The trials disagree with each other by more than with it.
                Check::Misses if self.trials.len() > 1 && (lo..=hi).contains(&predicted) => {
                    Check::WithinNoise
                }
                check => check,
            }
        }

        fn hot_errors(&self) -> Vec<f64> {
            self.trials
                .iter()
                .filter_map(|t| t.sampled.total("hot").ok()?.error_pct(t.sampled.counts.hot))
                .collect()
        }

        /// The trial whose `hot` error is the median one (by value).
        fn median_trial(&self) -> &Trial {
            let mut order: Vec<(f64, &Trial)> = self
                .trials
                .iter()
                .map(|t| {
                    let e = t
                        .sampled
                        .total("hot")
                        .ok()
                        .and_then(|tot| tot.error_pct(t.sampled.counts.hot))
                        .unwrap_or(0.0);
                    (e, t)
                })
                .collect();
            order.sort_by(|a, b| a.0.total_cmp(&b.0));
            order[order.len() / 2].1
        }
    }

    /// A prediction against what was measured.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Check {
        /// Within [`PREDICTION_FACTOR`] or [`NOISE_POINTS`].
        Meets,
        /// Not, but the bare runs alone were further apart than the two.
        WithinNoise,
        Misses,
    }

    /// `at_least`: `predicted` is a lower bound (that did not hold).
    fn judge(predicted: f64, measured: f64, spread_pct: f64, at_least: bool) -> Check {
        if !predicted.is_finite() || !measured.is_finite() {
            return Check::Misses;
        }
        let diff = (predicted - measured).abs();
        let factor = measured > 0.0
            && (1.0 / PREDICTION_FACTOR..=PREDICTION_FACTOR).contains(&(predicted / measured));
        if !at_least && (diff <= NOISE_POINTS || factor) {
            Check::Meets
        } else if diff <= spread_pct {
            Check::WithinNoise
        } else {
            Check::Misses
        }
    }

    fn record(
        agent: &Path,
        rates: &Path,
        fx: &RatesFixture,
        budget: bool,
        out: &Path,
    ) -> Result<Probed> {
        let mut cmd = command(agent);
        cmd.args(["record", "-q"]);
        if budget {
            cmd.args(["--max-overhead", "5"]);
        }
        for f in fx.probed {
            cmd.args(["-f", f]);
        }
        cmd.arg("--out").arg(out).arg("--").arg(rates).args(fx.args);
        let o = output(&mut cmd)?;
        // Kept beside the Parquet files, to look into a surprising figure.
        let _ = std::fs::write(out.join("agent-stderr.txt"), &o.stderr);
        Ok(Probed {
            counts: Counts::parse(&String::from_utf8_lossy(&o.stdout))?,
            totals: totals(out)?,
            session: session_figures(out)?,
        })
    }

    fn bare(rates: &Path, fx: &RatesFixture) -> Result<Counts> {
        let o = output(command(rates).args(fx.args))?;
        Counts::parse(&String::from_utf8_lossy(&o.stdout))
    }

    /// Every fixture: `trials` interleaved pairs each (`long_trials` for the
    /// 5-s ones), then one run recording every call.
    pub(super) fn run(
        agent: &Path,
        rates: &Path,
        trials: usize,
        long_trials: usize,
        work: &Path,
    ) -> Result<Vec<FixtureResult>> {
        let mut results = Vec::new();
        for (i, fx) in FIXTURES.iter().enumerate() {
            let n = if fx.fixed_time() { long_trials } else { trials };
            let name = format!(
                "estimates {}/{}: rates {} ({}; {n} trials)",
                i + 1,
                FIXTURES.len(),
                fx.args.join(" "),
                fx.flags()
            );
            let result = step(&name, || {
                let fixed = fx.fixed_time();
                let mut out = Vec::new();
                for t in 0..n {
                    // Alternately first, so a drift of the VM's speed
                    // within a trial cancels over the trials.
                    let dir = work.join(format!("estimates-{}-{t}", i + 1));
                    let (bare, sampled) = if t % 2 == 0 {
                        let bare = bare(rates, fx)?;
                        (bare, record(agent, rates, fx, true, &dir)?)
                    } else {
                        let sampled = record(agent, rates, fx, true, &dir)?;
                        (bare(rates, fx)?, sampled)
                    };
                    let trial = Trial { bare, sampled };
                    let c = &trial.sampled.counts;
                    let hot = trial.sampled.total("hot")?;
                    println!(
                        "    trial {}/{n}: hot {} estimated {} [{}] ({}), {}; predicted {} (full {}{}), measured {} (scope: {})",
                        t + 1,
                        thousands(c.hot),
                        hot.estimate(),
                        hot.interval(),
                        hot.brief(c.hot),
                        hot.method(),
                        slow(trial.sampled.session.predicted),
                        if trial.sampled.session.full_at_least {
                            "≥ "
                        } else {
                            ""
                        },
                        slow(trial.sampled.session.predicted_full),
                        slow(Some(trial.measured_pct(fixed))),
                        scope_measured_range(&trial.sampled.session),
                    );
                    out.push(trial);
                }
                let full = record(
                    agent,
                    rates,
                    fx,
                    false,
                    &work.join(format!("estimates-{}-full", i + 1)),
                )?;
                let result = FixtureResult {
                    fx,
                    trials: out,
                    full,
                };
                println!(
                    "    every call recorded: measured {} (scope: {}); predicted under the budget {}{}",
                    slow(Some(result.full_measured_pct())),
                    scope_measured_range(&result.full.session),
                    if result.full_predicted().1 {
                        "≥ "
                    } else {
                        ""
                    },
                    slow(Some(result.full_predicted().0)),
                );
                Ok(result)
            })?;
            results.push(result);
        }
        Ok(results)
    }

    /// The estimates section of the report (markdown).
    pub(super) fn render(
        results: &[FixtureResult],
        trials: usize,
        long_trials: usize,
        date: &str,
        kernel: &str,
    ) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "### Counts and slowdowns under a budget (`record --max-overhead 5`, rates fixture)\n\n\
             Measured on {date} (kernel {kernel}): {trials} trials per short fixture and \
             {long_trials} per 5-s one, each a bare run and a `scope-agent record --max-overhead 5` \
             run of the same command (alternately first); then one `record` with no flags \
             (every call recorded). Truth: the counts the fixture prints. The `hot` columns show \
             the trial with the median error (the worst in parentheses). Predicted: \
             `sessions.predicted_full_pct` (\"≥\": only a lower bound) and `predicted_pct` (the \
             governor's final prediction, for the sampling in force at the end) of the budgeted \
             runs, medians. Measured: of the wall time for `run` (fixed work, warm-up included: \
             `record` records every call until its first decision, at least 30 ms), of the CPU \
             time per `hot` call for `for` (fixed time): the median of the trials, their range \
             in brackets, and half the bare runs' range over their median (what this VM's \
             own swings leave unresolved: the same command differs by that much from run to \
             run). scope's own figure \
             (`sessions.measured_pct`, from the target's kernel vs user time) in parentheses. \
             `Nx`: N times as long.\n\n\
             Targets: a sampled count within ±{WITHIN_PCT:.0}% of the truth and its 95% interval \
             holding it (for a 3-ns function probed alone, a lower bound that holds is the honest \
             answer); predictions within {PREDICTION_FACTOR:.0}x of the measured slowdown, or \
             {NOISE_POINTS:.0} points (a \"≥\" prediction: below it). A prediction further off \
             than that but by less than the bare runs' spread, or inside the trials' range, is \
             not resolved by this VM and not counted as a miss.\n"
        );
        s.push_str(
            "| fixture (`rates …`; `hot` per call and length of the fastest bare run, threads) | `hot`: truth | estimate | 95% interval | error (worst) | interval held | method | `outer`, `cold` | every call recorded: predicted | measured (scope's) | ratio | under the budget: predicted | measured (scope's) | ratio | target | |\n\
             | --- | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |\n",
        );
        for (i, r) in results.iter().enumerate() {
            let t = r.median_trial();
            let truth = t.sampled.counts.hot;
            let hot = t.sampled.total("hot").ok();
            let errors = r.hot_errors();
            let error = match (hot.and_then(|h| h.error_pct(truth)), worst(&errors)) {
                (Some(e), Some(w)) => format!("{e:+.1}% ({w:+.1}%)"),
                _ => "–".into(),
            };
            let held = r
                .trials
                .iter()
                .filter(|t| {
                    t.sampled
                        .total("hot")
                        .is_ok_and(|h| h.holds(t.sampled.counts.hot))
                })
                .count();
            let mut methods: Vec<String> = r
                .trials
                .iter()
                .filter_map(|t| t.sampled.total("hot").ok().map(Total::method))
                .collect();
            methods.sort();
            methods.dedup();
            let others = others_summary(r);
            // The fastest bare run: the least disturbed by the VM's load.
            let fastest = |f: fn(&Counts) -> f64| {
                r.trials
                    .iter()
                    .map(|t| f(&t.bare))
                    .fold(f64::INFINITY, f64::min)
            };
            let bare_per_call = fastest(Counts::per_call_ns);
            let bare_wall = fastest(|c| c.wall_ns);
            let (full_pred, at_least) = r.full_predicted();
            let full_meas = r.full_measured_pct();
            let full_ratio = ratio(full_pred, full_meas);
            let samp_pred = r.sampled_predicted();
            let samp_meas_pct = r.sampled_measured_pct();
            let samp_meas = slow(Some(samp_meas_pct));
            let spread = r.bare_spread_pct();
            let (samp_lo, samp_hi) = r.sampled_measured_range();
            let scope_samp = median(
                r.trials
                    .iter()
                    .filter_map(|t| t.sampled.session.measured)
                    .collect(),
            );
            let mut misses = Vec::new();
            let mut noisy = Vec::new();
            if !r.estimates_meet() {
                misses.push("counts");
            }
            for (what, check) in [
                ("full prediction", r.full_prediction()),
                ("prediction under the budget", r.sampled_prediction()),
            ] {
                match check {
                    Check::Meets => {}
                    Check::WithinNoise => noisy.push(what),
                    Check::Misses => misses.push(what),
                }
            }
            let noisy_text = if noisy.is_empty() {
                String::new()
            } else {
                format!(
                    "; {} off by less than the bare runs' spread",
                    noisy.join(", ")
                )
            };
            let verdict = if misses.is_empty() {
                format!("meets{noisy_text}")
            } else {
                format!("**misses**: {}{noisy_text}", misses.join(", "))
            };
            let _ = writeln!(
                s,
                "| {}. {}: `{}`, `{}`; {}, {}, {} thread{} | {} | {} | {} | {error} | {held}/{} | {} | {others} | {}{} | {} ({}) | {full_ratio} | {} | {samp_meas} [{}, {}], bare ±{spread:.0}% ({}) | {} | {} | {verdict} |",
                i + 1,
                r.fx.label,
                r.fx.args.join(" "),
                r.fx.flags(),
                ns(bare_per_call),
                secs(bare_wall),
                r.fx.threads(),
                if r.fx.threads() == "1" { "" } else { "s" },
                thousands(truth),
                hot.map_or("–".into(), Total::estimate),
                hot.map_or("–".into(), Total::interval),
                r.trials.len(),
                methods.join(", "),
                if at_least { "≥ " } else { "" },
                slow(Some(full_pred)),
                slow(Some(full_meas)),
                scope_measured(&r.full.session),
                slow(Some(samp_pred)),
                pct(samp_lo),
                pct(samp_hi),
                slow(Some(scope_samp)),
                ratio(samp_pred, samp_meas_pct),
                if r.fx.lower_bound_expected {
                    "a lower bound that holds; predictions within 2x"
                } else {
                    "within ±15%, interval holds; predictions within 2x"
                },
            );
        }
        s.push_str(
            "\nPer trial (`hot`; `outer` and `cold`: error of the estimate, ✓ when its interval holds the truth):\n\n\
             | fixture | trial | `hot`: truth | estimate | 95% interval | error | method | `outer` | `cold` | predicted: every call | under the budget | bare → probed (wall; `for`: CPU per `hot` call) | measured | scope's |\n\
             | ---: | --- | ---: | ---: | ---: | ---: | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |\n",
        );
        for (i, r) in results.iter().enumerate() {
            let fixed = r.fx.fixed_time();
            for (k, t) in r.trials.iter().enumerate() {
                let c = &t.sampled.counts;
                let hot = t.sampled.total("hot").ok();
                let other = |name: &str| {
                    if r.fx.probed.contains(&name) {
                        t.sampled
                            .total(name)
                            .map_or("–".into(), |tot| tot.brief(c.of(name)))
                    } else {
                        "not probed".into()
                    }
                };
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {}{} | {} | {} → {} | {} | {} |",
                    i + 1,
                    k + 1,
                    thousands(c.hot),
                    hot.map_or("–".into(), Total::estimate),
                    hot.map_or("–".into(), Total::interval),
                    hot.map_or("–".into(), |h| h.brief(c.hot)),
                    hot.map_or("–".into(), Total::method),
                    other("outer"),
                    other("cold"),
                    if t.sampled.session.full_at_least {
                        "≥ "
                    } else {
                        ""
                    },
                    slow(t.sampled.session.predicted_full),
                    slow(t.sampled.session.predicted),
                    cost_text(fixed, &t.bare),
                    cost_text(fixed, c),
                    slow(Some(t.measured_pct(fixed))),
                    scope_measured_range(&t.sampled.session),
                );
            }
            let c = &r.full.counts;
            let exact = r.fx.probed.iter().all(|name| {
                r.full
                    .total(name)
                    .is_ok_and(|tot| tot.exact && tot.calls == Some(c.of(name)))
            });
            let _ = writeln!(
                s,
                "| {} | every call | {} | {} | – | – | recorded | | | – | – | {} (median) → {} | {} | {} |",
                i + 1,
                thousands(c.hot),
                if exact { "exact" } else { "**not exact**" },
                if fixed {
                    ns(r.bare_cost())
                } else {
                    secs(r.bare_cost())
                },
                cost_text(fixed, c),
                slow(Some(r.full_measured_pct())),
                scope_measured_range(&r.full.session),
            );
        }
        s
    }

    /// What a slowdown is the ratio of (see [`Counts::cost`]).
    fn cost_text(fixed_time: bool, c: &Counts) -> String {
        if fixed_time {
            ns(c.cost(true))
        } else {
            secs(c.cost(false))
        }
    }

    /// `outer` and `cold` over every trial: `exact` when recorded and
    /// right in all of them, else the worst error and how often the
    /// interval held.
    fn others_summary(r: &FixtureResult) -> String {
        let mut parts = Vec::new();
        for name in ["outer", "cold"] {
            if !r.fx.probed.contains(&name) {
                continue;
            }
            let rows: Vec<(Option<&Total>, i64)> = r
                .trials
                .iter()
                .map(|t| (t.sampled.total(name).ok(), t.sampled.counts.of(name)))
                .collect();
            let exact = rows
                .iter()
                .all(|(tot, truth)| tot.is_some_and(|t| t.exact && t.calls == Some(*truth)));
            if exact {
                parts.push(format!("`{name}` exact"));
                continue;
            }
            let errors: Vec<f64> = rows
                .iter()
                .filter_map(|(tot, truth)| tot.and_then(|t| t.error_pct(*truth)))
                .collect();
            let held = rows
                .iter()
                .filter(|(tot, truth)| tot.is_some_and(|t| t.holds(*truth)))
                .count();
            parts.push(format!(
                "`{name}` {}, held {held}/{}",
                worst(&errors).map_or("no estimate".into(), |w| format!("worst {w:+.1}%")),
                rows.len()
            ));
        }
        if parts.is_empty() {
            "not probed".into()
        } else {
            parts.join("; ")
        }
    }

    /// The error furthest from 0.
    fn worst(errors: &[f64]) -> Option<f64> {
        errors
            .iter()
            .copied()
            .max_by(|a, b| a.abs().total_cmp(&b.abs()))
    }

    fn ratio(predicted: f64, measured: f64) -> String {
        if measured > 0.0 && predicted.is_finite() {
            format!("{:.2}x", predicted / measured)
        } else {
            "–".into()
        }
    }

    /// scope's own measured slowdown: `12%`, `≥ 36%` (a lower bound only),
    /// or `–`.
    fn scope_measured(s: &SessionFigures) -> String {
        match (s.measured, s.measured_low) {
            (Some(m), _) => slow(Some(m)),
            (None, Some(low)) => format!("≥ {}", slow(Some(low))),
            (None, None) => "–".into(),
        }
    }

    /// [`scope_measured`] with its range: `12% (7.4–17%)`.
    fn scope_measured_range(s: &SessionFigures) -> String {
        let m = scope_measured(s);
        match (s.measured_low, s.measured_high) {
            (Some(l), Some(h)) => format!("{m} ({}–{})", slow(Some(l)), slow(Some(h))),
            _ => m,
        }
    }

    /// A slowdown in percent, with no `Nx`.
    fn pct(p: f64) -> String {
        if p.abs() < 10.0 {
            format!("{p:.1}%")
        } else {
            format!("{}%", thousands(p.round() as i64))
        }
    }

    /// A slowdown in percent; past 100% also as how many times as long.
    fn slow(pct: Option<f64>) -> String {
        match pct {
            Some(p) if p.is_finite() => {
                if p.abs() < 10.0 {
                    format!("{p:.1}%")
                } else if p < 100.0 {
                    format!("{p:.0}%")
                } else {
                    let times = 1.0 + p / 100.0;
                    let digits = if times < 10.0 { 1 } else { 0 };
                    format!("{}% ({times:.digits$}x)", thousands(p.round() as i64))
                }
            }
            _ => "–".into(),
        }
    }

    fn ns(v: f64) -> String {
        if v < 1_000.0 {
            format!("{v:.1} ns")
        } else {
            format!("{:.1} µs", v / 1e3)
        }
    }

    fn secs(wall_ns: f64) -> String {
        if wall_ns < 1e9 {
            format!("{:.0} ms", wall_ns / 1e6)
        } else {
            format!("{:.1} s", wall_ns / 1e9)
        }
    }

    /// 1234567 → `1,234,567`.
    fn thousands(v: i64) -> String {
        let digits = v.unsigned_abs().to_string();
        let mut out = String::new();
        for (i, ch) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(ch);
        }
        if v < 0 { format!("-{out}") } else { out }
    }
}
