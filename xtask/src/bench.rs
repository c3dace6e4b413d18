//! `cargo xtask bench`: every figure is a ratio against a peer measured in
//! the same run, on the same fixture, trial by trial (the machine is a
//! shared VM whose absolute speed swings). Prints progress, then the table,
//! and writes it into BENCHMARKS.md with the command that reproduces it.
//!
//! Rows: per-call overhead vs bpftrace `count()` and `printf`, and vs
//! uftrace on a `-pg` build; attach/detach of 1,001 and 10,001 functions vs
//! bpftrace; the user-space pipeline alone; bytes per call on disk.

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
use crate::setup::{apt_install, ensure_root_and_bpf, ensure_toolchain};

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

pub fn run_bench(opts: &BenchOptions) -> Result<()> {
    let started = Instant::now();
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
        println!("wrote {}", path.display());
    }
    println!(
        "cargo xtask bench: done ({:.0} s)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// One interleaved pair of runs of the `govern` workload: unprobed, and
/// under `scope-agent record` with the governor at its default 5%.
struct GovTrial {
    /// Mean leaf calls per second after the first second.
    base_rate: f64,
    gov_rate: f64,
    /// Leaf calls over the whole fixed-length run.
    base_total: f64,
    gov_total: f64,
    /// The governor's predicted slowdown after its decision (percent).
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

/// The governor's last predicted slowdown from the agent's stderr: the
/// summary's `predicted slowdown X%`.
fn predicted_pct(stderr: &str) -> Result<f64> {
    stderr
        .lines()
        .filter_map(|l| l.split("predicted slowdown ").nth(1))
        .filter_map(|v| {
            v.split('%')
                .next()
                .and_then(|n| n.trim().parse::<f64>().ok())
        })
        .next_back()
        .with_context(|| format!("no prediction in the agent's output:\n{stderr}"))
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
        let (stdout, stderr) = record(&format!("python-{t}"), &[], "5")?;
        let (gov_rate, gov_total) = workload_figures(&stdout, 2, "iterations ")?;
        let predicted = predicted_pct(&stderr)?;
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
    let (stdout, _) = record("python-full", &["--max-overhead", "off"], "2")?;
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
        let run = output(
            command(agent)
                .args(["record", "-q", "--out"])
                .arg(work.join(format!("governor-{t}")))
                .args(["-f", "leaf", "-f", "tleaf", "--"])
                .arg(fixture)
                .args(args),
        )?;
        let stderr = String::from_utf8_lossy(&run.stderr);
        let (gov_rate, gov_total) = govern_figures(&String::from_utf8_lossy(&run.stdout))?;
        let predicted = predicted_pct(&stderr)?;
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
    s
}

/// Today's date (UTC), YYYY-MM-DD.
fn today() -> String {
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
```sh\ncargo xtask bench            # about 5-10 minutes; --trials N, --calls N, --no-write\n```\n\n\
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
`scope-agent record` with the default `--max-overhead 5`, interleaved.\n  \
The fixture's `govern 5000 1000 200` mode (a 2 M calls/s `leaf`) reports\n  \
its rate every 100 ms (steady state: after the first second); the real\n  \
workload is CPython's `json` in a loop with probes on its exported API\n  \
(whole run). The prediction is the governor's own final figure.\n\
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
target/release/scope-agent record -q -f 'PyObject_*' -f 'PyLong_*' -f 'PyUnicode_*' -- /usr/bin/python3.11 tests/fixtures/python/json_loop.py 5\n\
sudo target/release/scope-agent calibrate\n\
du -sb /tmp/ob/calls\n\
```\n"
    )
}
