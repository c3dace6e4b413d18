//! A recording session, `record` or `attach`, from start to summary:
//! plan the probes, load and attach them, run the ring reader and the writer
//! thread until a stop condition, then detach, drain, finish the files and
//! print what was recorded.
//!
//! Order matters for "no surprises": everything that can fail on bad input
//! (permissions, output directory, command, symbols, patterns) is checked
//! before a child is started or a probe is attached.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::capture::correlator::Correlator;
use crate::capture::pipeline::{SinkMsg, SinkThread};
use crate::capture::ring::RingReader;
use crate::probe::attach::{
    AttachMode, AttachModeChoice, LoadOptions, LoadedProbes, ProbePoint, check_function_count,
};
use crate::probe::plan::{Plan, build_plan, short_name, skipped_total};
use crate::storage::{FunctionRow, ParquetStore, SessionRow, StoreConfig};
use crate::summary::{CallStats, SortBy, Tee, format_duration_ns, render_top};
use crate::symbols::pattern::Pattern;
use crate::target::{GatedChild, ProcessWatch, program_modules, resolve_program, running_modules};
use crate::time::{SessionClock, session_id};

/// What to profile.
#[derive(Debug, Clone)]
pub enum Target {
    /// A running process (all its threads).
    Attach { pid: u32 },
    /// A command the agent starts.
    Record { argv: Vec<OsString> },
}

/// Everything a session needs, turned from flags once by the CLI.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub target: Target,
    pub patterns: Vec<Pattern>,
    pub out_dir: PathBuf,
    pub duration: Option<Duration>,
    pub ring_bytes: u32,
    pub max_functions: usize,
    pub segment_rows: usize,
    pub segment_age: Duration,
    pub top: usize,
    pub quiet: bool,
    /// Multi-uprobe links, one perf uprobe per function, or a feature probe.
    pub attach_mode: AttachModeChoice,
}

/// How a session ended.
#[derive(Debug)]
pub struct SessionOutcome {
    /// For `record`: the command's exit code (128 + signal if killed).
    pub exit_code: Option<i32>,
}

/// Calls are sent to the writer in batches of this many, or every 100 ms.
const BATCH: usize = 16 * 1024;
const POLL: Duration = Duration::from_millis(10);

pub fn run(cfg: SessionConfig) -> Result<SessionOutcome> {
    require_root()?;

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("installing signal handlers")?;
    }

    // Resolve the target's modules and the plan before touching anything.
    let (candidates, command_line, program) = match &cfg.target {
        Target::Attach { pid } => {
            let modules = running_modules(*pid)?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|b| {
                    b.split(|&c| c == 0)
                        .filter(|s| !s.is_empty())
                        .map(|s| String::from_utf8_lossy(s).into_owned())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            (modules, cmdline, None)
        }
        Target::Record { argv } => {
            let argv0 = argv.first().context("record needs a command after --")?;
            let program = resolve_program(argv0)?;
            let cmdline = argv
                .iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ");
            (program_modules(&program), cmdline, Some(program))
        }
    };
    let plan = build_plan(&candidates, &cfg.patterns, cfg.max_functions)?;
    for w in &plan.warnings {
        eprintln!("scope: warning: {w}");
    }
    for m in &plan.modules {
        check_function_count(&m.candidate.display_path, m.functions.len())?;
    }

    let clock = SessionClock::now();
    let target_pid_for_id = match &cfg.target {
        Target::Attach { pid } => *pid,
        Target::Record { .. } => std::process::id(),
    };
    let session_id = session_id(clock.start_epoch_ns, target_pid_for_id);
    let mut store = ParquetStore::create(StoreConfig {
        out_dir: cfg.out_dir.clone(),
        session_id: session_id.clone(),
        segment_max_rows: cfg.segment_rows,
        segment_max_age: cfg.segment_age,
    })?;
    store.write_functions(&function_rows(&plan))?;

    let mut child = match (&cfg.target, &program) {
        (Target::Record { argv }, Some(program)) => Some(GatedChild::spawn(program, argv)?),
        _ => None,
    };
    let pid = match (&cfg.target, &child) {
        (Target::Attach { pid }, _) => *pid,
        (_, Some(c)) => c.pid,
        _ => bail!("no target process"),
    };
    let watch = match &cfg.target {
        Target::Attach { pid } => Some(ProcessWatch::open(*pid)?),
        Target::Record { .. } => None,
    };

    let attach_started = Instant::now();
    let attached = load_and_attach(&cfg, &plan, pid);
    let attach_time = attach_started.elapsed();
    let (probes, links) = match attached {
        Ok(x) => x,
        Err(e) => {
            if let Some(c) = child.as_mut() {
                c.abort();
            }
            return Err(e);
        }
    };
    let attached_count: usize = links.iter().filter(|l| l.0).map(|l| l.1.count).sum();

    let live_ktime = crate::time::monotonic_ns();
    let attach_mode = probes.mode();
    let (events, lost) = probes.into_maps();
    let mut reader = RingReader::new(events, lost, clock.epoch_ns(live_ktime));
    let mut correlator = Correlator::new(clock.offset_ns, live_ktime);
    let writer = SinkThread::spawn(Tee(store, CallStats::new()), 64)
        .context("starting the writer thread")?;

    let skipped = skipped_total(&plan.skipped);
    let what = match &cfg.target {
        Target::Attach { pid } => format!("pid {pid} ({command_line})"),
        Target::Record { .. } => format!("{command_line} (pid {pid})"),
    };
    eprintln!(
        "scope: attached {attached_count} functions in {} module{} of {what} in {}{}{}{}",
        plan.modules.len(),
        if plan.modules.len() == 1 { "" } else { "s" },
        format_duration_ns(attach_time.as_nanos() as u64),
        match attach_mode {
            AttachMode::Multi => String::new(),
            AttachMode::Single => format!(" ({})", attach_mode.name()),
        },
        if skipped > 0 {
            format!("; {skipped} not probeable (size 0, PLT, aliases)")
        } else {
            String::new()
        },
        match plan.truncated_from {
            Some(total) => format!(
                "; first {attached_count} of {total} functions of {} (choose with -f, or raise --max-functions)",
                short_name(&plan.modules[0].candidate.display_path)
            ),
            None => String::new(),
        }
    );
    for m in &plan.modules {
        if !m.has_debug_info {
            eprintln!(
                "scope: {}: no DWARF debug info; probing by symbol, without file:line",
                m.candidate.display_path.display()
            );
        }
    }

    if let Some(c) = child.as_mut()
        && let Err(e) = c.release()
    {
        drop(links);
        let _ = writer.finish();
        return Err(e.into());
    }

    // The capture loop.
    let started = Instant::now();
    let deadline = cfg.duration.map(|d| started + d);
    let mut last_flush = Instant::now();
    let mut last_loss = Instant::now();
    let mut writer_failed = false;
    let mut exit_code = None;
    let stop_reason;
    loop {
        reader.wait(POLL);
        reader.drain(&mut correlator);
        if correlator.pending() >= BATCH
            || (correlator.pending() > 0 && last_flush.elapsed() >= Duration::from_millis(100))
        {
            last_flush = Instant::now();
            if !writer.send(SinkMsg::Calls(correlator.take_calls())) {
                writer_failed = true;
                stop_reason = "the writer stopped".to_string();
                break;
            }
        }
        if last_loss.elapsed() >= Duration::from_secs(1) {
            last_loss = Instant::now();
            let losses = reader.read_losses(clock.now_epoch_ns());
            if !losses.is_empty() && !writer.send(SinkMsg::Losses(losses)) {
                writer_failed = true;
                stop_reason = "the writer stopped".to_string();
                break;
            }
        }
        if stop.load(Ordering::Relaxed) {
            stop_reason = "interrupted".to_string();
            break;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            stop_reason = format!(
                "--duration {} reached",
                format_duration_ns(cfg.duration.unwrap_or_default().as_nanos() as u64)
            );
            break;
        }
        if let Some(c) = child.as_mut()
            && let Some(code) = c.try_wait()
        {
            exit_code = Some(code);
            stop_reason = format!("the command exited with status {code}");
            break;
        }
        if watch.as_ref().is_some_and(ProcessWatch::exited) {
            stop_reason = format!("pid {pid} exited");
            break;
        }
    }

    // Detach, then drain what the kernel wrote before the links closed.
    let detach_started = Instant::now();
    drop(links);
    let detach_time = detach_started.elapsed();
    let end_ns = clock.now_epoch_ns();
    reader.drain(&mut correlator);
    correlator.finish();
    let losses = reader.read_losses(end_ns);
    if !writer_failed {
        writer.send(SinkMsg::Calls(correlator.take_calls()));
        if !losses.is_empty() {
            writer.send(SinkMsg::Losses(losses));
        }
    }
    let (Tee(store, stats), written) = writer.finish();
    let counts = correlator.counts();
    let lost = reader.lost_total();
    let session_row = SessionRow {
        host: hostname(),
        pid,
        command: command_line.clone(),
        start_ns: clock.start_epoch_ns,
        end_ns,
        version: env!("CARGO_PKG_VERSION").to_string(),
        clock_offset_ns: clock.offset_ns,
        events: counts.events,
        calls: stats.total_calls(),
        lost,
    };
    let finished = store.finish(&session_row);
    if let Err(e) = written {
        bail!(
            "recording stopped: {e:#} (every segment finished before this is readable in {})",
            cfg.out_dir.display()
        );
    }
    let summary = finished?;

    let elapsed = started.elapsed();
    eprintln!(
        "scope: stopped: {stop_reason}. {} calls, {} events, {} lost{} in {}",
        stats.total_calls(),
        counts.events,
        lost,
        if lost > 0 {
            format!(
                " ({:.2}% of events; enlarge --ring-size)",
                100.0 * lost as f64 / (lost + counts.events).max(1) as f64
            )
        } else {
            String::new()
        },
        format_duration_ns(elapsed.as_nanos() as u64)
    );
    let marked =
        counts.entry_missing + counts.unwound + counts.return_missing + counts.no_return_probe;
    if marked > 0 {
        eprintln!(
            "scope: {marked} calls marked incomplete: {} already running at attach, {} still running at the end, {} unwound, {} beyond the kernel's 64 nested return probes",
            counts.entry_missing, counts.return_missing, counts.unwound, counts.no_return_probe
        );
    }
    eprintln!(
        "scope: wrote {} files ({}) to {} (session {session_id}); detached in {}",
        summary.files.len(),
        human_bytes(summary.bytes),
        cfg.out_dir.display(),
        format_duration_ns(detach_time.as_nanos() as u64)
    );
    if !cfg.quiet && stats.total_calls() > 0 {
        let names: std::collections::HashMap<u32, String> = plan
            .functions()
            .map(|(_, f)| (f.function_id, f.symbol.name.clone()))
            .collect();
        let name_of = |id: u32| names.get(&id).cloned().unwrap_or_else(|| format!("#{id}"));
        eprintln!("\ntop functions by total time:");
        eprint!(
            "{}",
            render_top(&stats.top(cfg.top, SortBy::Total), &name_of)
        );
        eprintln!("\ntop functions by self time:");
        eprint!(
            "{}",
            render_top(&stats.top(cfg.top, SortBy::SelfTime), &name_of)
        );
    }

    if let Some(c) = child.as_mut()
        && exit_code.is_none()
    {
        if c.try_wait().is_none() {
            eprintln!(
                "scope: recording stopped; waiting for pid {} to exit (Ctrl-C again to leave it running)",
                c.pid
            );
            stop.store(false, Ordering::Relaxed);
            while c.try_wait().is_none() && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        exit_code = Some(c.try_wait().unwrap_or(130));
    }
    Ok(SessionOutcome { exit_code })
}

type Links = Vec<(bool, crate::probe::attach::ProbeLink)>;

fn load_and_attach(cfg: &SessionConfig, plan: &Plan, pid: u32) -> Result<(LoadedProbes, Links)> {
    let mut probes = LoadedProbes::load(
        LoadOptions {
            target_tgid: pid,
            ring_bytes: cfg.ring_bytes,
            wake_bytes: u64::from(cfg.ring_bytes / 4),
        },
        cfg.attach_mode,
    )?;
    let mut links = Vec::new();
    for m in &plan.modules {
        let points: Vec<ProbePoint> = m
            .functions
            .iter()
            .map(|f| ProbePoint {
                file_offset: f.symbol.file_offset,
                cookie: u64::from(f.function_id),
            })
            .collect();
        let module_links = probes.attach_module(&m.candidate.attach_path, &points, pid, true)?;
        for (i, l) in module_links.into_iter().enumerate() {
            // The first link of a module is the entry link.
            links.push((i == 0, l));
        }
    }
    Ok((probes, links))
}

fn function_rows(plan: &Plan) -> Vec<FunctionRow> {
    plan.functions()
        .map(|(m, f)| FunctionRow {
            function_id: f.function_id,
            name: f.symbol.name.clone(),
            symbol: f.symbol.symbol.clone(),
            module: m.candidate.display_path.display().to_string(),
            build_id: m.build_id.clone(),
            address: f.symbol.address,
            size: f.symbol.size,
            file: f.symbol.file.clone(),
            line: f.symbol.line,
        })
        .collect()
}

fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("scope-agent needs root to load eBPF programs and attach uprobes: run it with sudo");
    }
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
