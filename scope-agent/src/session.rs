//! A recording session, `record` or `attach`, from start to summary:
//! plan the probes, load and attach them, run the ring reader and the writer
//! thread until a stop condition, then detach, drain, finish the files and
//! print what was recorded.
//!
//! Order matters for "no surprises": everything that can fail on bad input
//! (permissions, output directory, command, symbols, patterns) is checked
//! before a child is started or a probe is attached.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::capture::correlator::{Correlator, CorrelatorCounts};
use crate::capture::pipeline::{SinkMsg, SinkThread};
use crate::capture::ring::RingReader;
use crate::capture::{AggregateRecord, CallRecord, EventSink, LossRecord, MetricsRecord};
use crate::governor::{self, FnLoad, Governor, GovernorSetup};
use crate::probe::attach::{
    AttachMode, AttachModeChoice, LoadOptions, LoadedProbes, ProbeLink, ProbePoint,
    check_function_count, close_links,
};
use crate::probe::plan::{Plan, build_plan_with, short_name, skipped_total};
use crate::probe::watch::{PendingModules, split_pending};
use crate::status::{Snapshot, StatusMode, StatusReporter, WriterGauges, loss_pct};
use crate::storage::{FunctionRow, LateFunctions, ParquetStore, SessionRow, StoreConfig};
use crate::summary::{CallStats, SortBy, format_duration_ns, render_top};
use crate::symbols::pattern::Pattern;
use crate::target::{GatedChild, ProcessWatch, program_modules, resolve_program, running_modules};
use crate::time::{SessionClock, session_id};
use rustc_hash::FxHashMap;

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
    /// Capture arguments and return values of every probed function.
    pub args_all: bool,
    /// Capture them for the probed functions matching these patterns.
    pub args_for: Vec<Pattern>,
    /// `--arg-strings`: read `char *` arguments, at most this many bytes each.
    pub arg_strings: Option<u32>,
    pub out_dir: PathBuf,
    pub duration: Option<Duration>,
    pub ring_bytes: u32,
    pub max_functions: usize,
    pub segment_rows: usize,
    pub segment_age: Duration,
    pub top: usize,
    pub quiet: bool,
    /// Period of the plain status lines when stderr is not a terminal.
    pub status_interval: Duration,
    /// Multi-uprobe links, one perf uprobe per function, or a feature probe.
    pub attach_mode: AttachModeChoice,
    /// Also probe the inlined instances the patterns match (`--inlined`):
    /// entry only, so counts and timestamps without durations.
    pub inlined: bool,
    /// `--max-overhead`: the governor's budget in percent (`None`: off).
    pub max_overhead: Option<f64>,
    /// `--warmup`: how long the governor counts before it decides.
    pub warmup: Duration,
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
/// How often the target's mappings are checked for modules a pending pattern
/// names (libraries loaded with dlopen).
const MODULE_POLL: Duration = Duration::from_millis(200);

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
            // A zombie still has a /proc entry, but no maps: say what it is.
            // (A pid that does not exist at all is reported by running_modules.)
            if process_state(*pid).is_some_and(|s| matches!(s.as_str(), "Z" | "X" | "x")) {
                bail!("pid {pid} has exited; there is nothing to attach to");
            }
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
    // Patterns naming a module that is not mapped yet wait for it (dlopen),
    // as long as something else can be probed from the start.
    let (now, pending) = split_pending(&candidates, &cfg.patterns);
    let planned = if now.is_empty() && !pending.is_empty() {
        build_plan_with(&candidates, &cfg.patterns, cfg.max_functions, cfg.inlined)
    } else {
        build_plan_with(&candidates, &now, cfg.max_functions, cfg.inlined)
    };
    let mut plan = match planned {
        Ok(plan) => plan,
        // A process that exits while its maps are read shows no modules:
        // say that, not that the pattern matched nothing.
        Err(e) => match &cfg.target {
            Target::Attach { pid } if process_gone(*pid) => {
                bail!("pid {pid} exited while scope was attaching to it; nothing was recorded")
            }
            _ => return Err(e.into()),
        },
    };
    let next_id = u32::try_from(plan.function_count()).unwrap_or(u32::MAX - 1) + 1;
    let mut pending = PendingModules::new(pending, &candidates, next_id);
    for w in &plan.warnings {
        eprintln!("scope: warning: {w}");
    }
    let with_args = crate::probe::args::select(&mut plan, cfg.args_all, &cfg.args_for)
        .map_err(anyhow::Error::msg)?;
    let go_args = crate::probe::go::drop_args(&mut plan.modules);
    if go_args > 0 {
        eprintln!(
            "scope: warning: arguments of {go_args} Go functions are not captured (Go passes them in other registers than the System V ABI)"
        );
    }
    // An inlined instance has no call of its own: its arguments sit in
    // whatever registers the caller chose, and it has no return.
    let inline_args = drop_inline_args(&mut plan);
    let with_args = with_args - go_args - inline_args;
    let go_tail_jumps = crate::probe::go::tail_jumps(&plan.modules);
    if go_tail_jumps > 0 {
        eprintln!(
            "scope: note: {go_tail_jumps} tail jumps leave probed Go functions; calls that leave that way are marked unwound or return-missing"
        );
    }
    let arg_layouts = if with_args > 0 {
        crate::probe::args::layouts(&plan)
    } else {
        Vec::new()
    };
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
    let mut late_functions = store.late_functions();
    let mut late_plans: Vec<Plan> = Vec::new();
    let mut late_files: Vec<(PathBuf, u64)> = Vec::new();

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
    // --arg-strings: the registers of each function's string parameters ride
    // in its cookie.
    let str_cookies: HashMap<u32, u64> = if cfg.arg_strings.is_some() {
        arg_layouts
            .iter()
            .map(|(id, l)| (*id, l.string_cookie()))
            .filter(|(_, c)| *c != 0)
            .collect()
    } else {
        HashMap::new()
    };
    let mut attach_time = Duration::ZERO;
    let attached = load_and_attach(
        &cfg,
        &plan,
        pid,
        &str_cookies,
        &stop,
        &clock,
        &mut attach_time,
    );
    let (mut probes, mut links, mut governor) = match attached {
        Ok(x) => x,
        Err(e) => {
            if let Some(c) = child.as_mut() {
                c.abort();
            }
            // A process that exits while probes are being attached makes the
            // kernel refuse the link; say what happened, not only the errno.
            if watch
                .as_ref()
                .is_some_and(|w| w.exited() || process_gone(pid))
            {
                bail!("pid {pid} exited while scope was attaching to it; nothing was recorded");
            }
            return Err(e);
        }
    };
    if attach_time.is_zero() {
        attach_time = attach_started.elapsed();
    }
    let attached_count: usize = links
        .iter()
        .filter(|l| l.0)
        .map(|l| l.1.count)
        .sum::<usize>()
        + governor.as_ref().map_or(0, |g| g.governed_count());

    let live_ktime = crate::time::monotonic_ns();
    let attach_mode = probes.mode();
    let (events, lost) = probes
        .take_maps()
        .context("the loaded eBPF object has no ring buffer")?;
    let mut reader = RingReader::new(events, lost, clock.epoch_ns(live_ktime));
    if let Err(e) = reader.watch_fill(cfg.ring_bytes) {
        eprintln!("scope: warning: cannot map the ring's positions ({e}); ring fill is not shown");
    }
    let mut correlator = Correlator::new(clock.offset_ns, live_ktime);
    for (function_id, layout) in arg_layouts {
        correlator.set_layout(function_id, layout);
    }
    for f in plan.inline_instances() {
        correlator.set_inline(f.function_id);
    }
    correlator.set_str_cap(cfg.arg_strings.unwrap_or(0) as usize);
    if let Some(g) = &governor {
        g.init_correlator(&mut correlator);
    }
    let gauges = Arc::new(WriterGauges::default());
    let writer = SinkThread::spawn(
        SessionSink {
            store,
            stats: CallStats::new(),
            gauges: Arc::clone(&gauges),
        },
        64,
    )
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
    if with_args > 0 {
        eprintln!("scope: recording arguments and return values of {with_args} functions");
    }
    let inline_count = plan.inline_instances().count();
    if inline_count > 0 {
        let of: std::collections::HashSet<&str> = plan
            .inline_instances()
            .map(|f| f.symbol.name.as_str())
            .collect();
        eprintln!(
            "scope: probing {inline_count} inlined instance{} of {} function{} (entry only: counts and timestamps, no durations)",
            if inline_count == 1 { "" } else { "s" },
            of.len(),
            if of.len() == 1 { "" } else { "s" }
        );
    }
    for m in &plan.modules {
        if !m.has_debug_info {
            eprintln!(
                "scope: {}: no DWARF debug info; probing by symbol, without file:line",
                m.candidate.display_path.display()
            );
        }
    }

    for p in pending.patterns() {
        eprintln!(
            "scope: no module matches '{p}' yet; its functions will be probed when the process loads it"
        );
    }
    if cfg.inlined && !pending.is_empty() {
        eprintln!(
            "scope: note: --inlined applies to the modules mapped now; modules loaded later are probed without their inlined instances"
        );
    }

    if let Some(c) = child.as_mut()
        && let Err(e) = c.release()
    {
        drop(links);
        let _ = writer.finish();
        return Err(e.into());
    }

    // The capture loop.
    let mut status = StatusReporter::new(
        StatusMode::choose(cfg.quiet, cfg.status_interval),
        Arc::clone(&gauges),
    );
    let started = Instant::now();
    let deadline = cfg.duration.map(|d| started + d);
    let mut last_flush = Instant::now();
    let mut last_loss = Instant::now();
    let mut last_module_poll = Instant::now();
    let mut writer_failed = false;
    let mut exit_code = None;
    let stop_reason;
    loop {
        reader.wait(POLL);
        let since = correlator.pending();
        reader.drain(&mut correlator);
        if reader.lost_since_check() {
            correlator.note_loss(since);
        }
        // With the governor, every drain is flushed, so it sees the calls
        // when it decides (and can decide early).
        let eager = governor.is_some();
        if correlator.pending() >= BATCH
            || (correlator.pending() > 0
                && (eager || last_flush.elapsed() >= Duration::from_millis(100)))
        {
            last_flush = Instant::now();
            let calls = correlator.take_calls();
            if let Some(g) = governor.as_mut() {
                g.observe(&calls);
            }
            if !writer.send(SinkMsg::Calls(calls)) {
                writer_failed = true;
                stop_reason = "the writer stopped".to_string();
                break;
            }
        }
        // After the flush, so the governor has seen every call read so far.
        if let Some(g) = governor.as_mut() {
            g.step(
                &mut probes,
                &mut correlator,
                reader.fill_pct(),
                clock.now_epoch_ns(),
            );
            let (rows, aggs, messages) = g.take_rows();
            if !messages.is_empty() {
                status.clear();
                for m in messages {
                    eprintln!("scope: governor: {m}");
                }
            }
            if (!rows.is_empty() && !writer.send(SinkMsg::Governor(rows)))
                || (!aggs.is_empty() && !writer.send(SinkMsg::Aggregates(aggs)))
            {
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
        if !pending.is_empty() && last_module_poll.elapsed() >= MODULE_POLL {
            last_module_poll = Instant::now();
            match attach_late_modules(
                &mut pending,
                &mut probes,
                &mut late_functions,
                pid,
                &mut links,
            ) {
                Ok(Some((plan, file))) => {
                    late_plans.push(plan);
                    late_files.push(file);
                }
                Ok(None) => {}
                Err(e) => eprintln!("scope: warning: a module loaded after the start: {e:#}"),
            }
        }
        // After the loss read, so the status and metrics totals include it.
        status.see_fill(reader.fill_pct());
        let mut snap = snapshot(&correlator.counts(), &reader, &writer);
        snap.governor = governor.as_ref().and_then(|g| g.status());
        status.maybe_print(&snap);
        if let Some(m) = status.metrics_due(&snap, clock.now_epoch_ns(), false)
            && !writer.send(SinkMsg::Metrics(m))
        {
            writer_failed = true;
            stop_reason = "the writer stopped".to_string();
            break;
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
    // Events from while the links close one by one are outside the window.
    correlator.close_window(crate::time::monotonic_ns());
    let detach_started = Instant::now();
    let mut all_links: Vec<ProbeLink> = links.into_iter().map(|(_, l)| l).collect();
    if let Some(g) = governor.as_mut() {
        all_links.extend(g.take_links());
    }
    close_links(all_links);
    let detach_time = detach_started.elapsed();
    let end_ns = clock.now_epoch_ns();
    let since = correlator.pending();
    reader.drain(&mut correlator);
    if reader.lost_since_check() {
        correlator.note_loss(since);
    }
    correlator.finish();
    let losses = reader.read_losses(end_ns);
    status.clear();
    let mean_cpu_pct = status.mean_cpu_pct();
    if !writer_failed {
        let calls = correlator.take_calls();
        if let Some(g) = governor.as_mut() {
            g.observe(&calls);
            g.finish(end_ns);
            let (rows, aggs, _) = g.take_rows();
            if !rows.is_empty() {
                writer.send(SinkMsg::Governor(rows));
            }
            if !aggs.is_empty() {
                writer.send(SinkMsg::Aggregates(aggs));
            }
        }
        writer.send(SinkMsg::Calls(calls));
        if !losses.is_empty() {
            writer.send(SinkMsg::Losses(losses));
        }
        let mut snap = snapshot(&correlator.counts(), &reader, &writer);
        snap.governor = governor.as_ref().and_then(|g| g.status());
        if let Some(m) = status.metrics_due(&snap, end_ns, true) {
            writer.send(SinkMsg::Metrics(m));
        }
    }
    let (
        SessionSink {
            store,
            stats,
            gauges: _,
        },
        written,
    ) = writer.finish();
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
        calls: Some(stats.total_calls()),
        calls_exact: governor.is_none() && lost == 0,
        calls_recorded: stats.total_calls(),
        lost,
        max_overhead_pct: cfg.max_overhead,
    };
    let finished = store.finish(&session_row, &[]);
    if let Err(e) = written {
        bail!(
            "recording stopped: {e:#} (every segment finished before this is readable in {})",
            cfg.out_dir.display()
        );
    }
    let summary = finished?;

    let elapsed = started.elapsed();
    eprintln!(
        "scope: stopped: {stop_reason}. {} calls, {} events, {} lost{} in {}; agent cpu {:.0}%",
        stats.total_calls(),
        counts.events,
        lost,
        if lost > 0 {
            format!(
                " ({:.2}% of events; enlarge --ring-size)",
                loss_pct(counts.events, lost)
            )
        } else {
            String::new()
        },
        format_duration_ns(elapsed.as_nanos() as u64),
        mean_cpu_pct
    );
    for p in pending.never_matched() {
        let module = p.module.as_deref().unwrap_or_default();
        eprintln!("scope: warning: no module matched '{module}' (pattern '{p}') while recording");
    }
    if counts.loss_marked > 0 {
        eprintln!(
            "scope: {} calls were open while the kernel lost events (flags & 16 in calls): their durations and nesting are uncertain",
            counts.loss_marked
        );
    }
    let marked =
        counts.entry_missing + counts.unwound + counts.return_missing + counts.no_return_probe;
    if marked > 0 {
        eprintln!(
            "scope: {marked} calls marked incomplete: {} already running at attach, {} still running at the end, {} unwound, {} beyond the kernel's 64 nested return probes",
            counts.entry_missing, counts.return_missing, counts.unwound, counts.no_return_probe
        );
    }
    // Events read but in no row: say how many, never drop them silently.
    let unused = counts.after_end + counts.unknown_kind + reader.malformed();
    if unused > 0 {
        eprintln!(
            "scope: {unused} events read but not in any call: {} after recording ended (while links closed), {} of an unknown kind, {} too short for their kind",
            counts.after_end,
            counts.unknown_kind,
            reader.malformed()
        );
    }
    if counts.window_edge > 0 {
        eprintln!(
            "scope: {} events of sampled functions fell on the edges of their sampling windows (while links were attached or detached) and are not in calls",
            counts.window_edge
        );
    }
    if counts.window_cut > 0 {
        eprintln!(
            "scope: {} calls of sampled functions were open when their sampling window closed (flags & 64 in calls; not a loss)",
            counts.window_cut
        );
    }
    if let Some(g) = &governor {
        let sampled = g.sampled_count();
        eprintln!(
            "scope: governor (budget {}%): {} demoted, {} promoted, {} backpressure step{}; {} function{} sampled at the end{}{}",
            g.budget_pct(),
            g.demotions,
            g.promotions,
            g.backpressure,
            if g.backpressure == 1 { "" } else { "s" },
            sampled,
            if sampled == 1 { "" } else { "s" },
            if g.demotions > 0 {
                "; their estimated counts are in the aggregates table"
            } else {
                ""
            },
            g.status()
                .map(|(_, _, p)| format!("; predicted slowdown {p:.1}%"))
                .unwrap_or_default()
        );
    }
    if counts.migrated > 0 {
        eprintln!(
            "scope: {} Go calls returned on another thread than they entered on (paired per goroutine)",
            counts.migrated
        );
    }
    eprintln!(
        "scope: wrote {} files ({}) to {} (session {session_id}); detached in {}",
        summary.files.len() + late_files.len(),
        human_bytes(summary.bytes + late_files.iter().map(|f| f.1).sum::<u64>()),
        cfg.out_dir.display(),
        format_duration_ns(detach_time.as_nanos() as u64)
    );
    if !cfg.quiet && stats.total_calls() > 0 {
        let names: std::collections::HashMap<u32, String> = std::iter::once(&plan)
            .chain(&late_plans)
            .flat_map(Plan::functions)
            .map(|(_, f)| (f.function_id, summary_name(f)))
            .collect();
        let name_of = |id: u32| names.get(&id).cloned().unwrap_or_else(|| format!("#{id}"));
        eprintln!("\ntop functions by total time:");
        eprint!(
            "{}",
            render_top(&stats.top(cfg.top, SortBy::Total), &name_of, &|_| None)
        );
        eprintln!("\ntop functions by self time:");
        eprint!(
            "{}",
            render_top(&stats.top(cfg.top, SortBy::SelfTime), &name_of, &|_| None)
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

/// The writer thread's sink: the Parquet store and the summary's statistics,
/// publishing the store's gauges for the status line after every write.
struct SessionSink {
    store: ParquetStore,
    stats: CallStats,
    gauges: Arc<WriterGauges>,
}

impl SessionSink {
    fn publish<T>(&self, r: Result<T>) -> Result<T> {
        self.gauges
            .files_written
            .store(self.store.files_written() as u64, Ordering::Relaxed);
        self.gauges
            .rows_buffered
            .store(self.store.rows_buffered() as u64, Ordering::Relaxed);
        r
    }
}

impl EventSink for SessionSink {
    fn write_calls(&mut self, calls: &[CallRecord]) -> Result<()> {
        let a = self.store.write_calls(calls);
        let b = self.stats.write_calls(calls);
        self.publish(a.and(b))
    }

    fn write_losses(&mut self, losses: &[LossRecord]) -> Result<()> {
        let r = self.store.write_losses(losses);
        self.publish(r)
    }

    fn write_metrics(&mut self, metrics: &[MetricsRecord]) -> Result<()> {
        let r = self.store.write_metrics(metrics);
        self.publish(r)
    }

    fn write_governor(&mut self, rows: &[crate::capture::GovernorRecord]) -> Result<()> {
        let r = self.store.write_governor(rows);
        self.publish(r)
    }

    fn write_aggregates(&mut self, rows: &[crate::capture::AggregateRecord]) -> Result<()> {
        let r = self.store.write_aggregates(rows);
        self.publish(r)
    }

    fn tick(&mut self) -> Result<()> {
        let r = self.store.tick();
        self.publish(r)
    }
}

/// The figures the status line and `agent_metrics` need, from the reader side.
fn snapshot<S: EventSink + Send + 'static>(
    counts: &CorrelatorCounts,
    reader: &RingReader,
    writer: &SinkThread<S>,
) -> Snapshot {
    Snapshot {
        events: counts.events,
        calls: counts.calls
            + counts.entry_missing
            + counts.unwound
            + counts.no_return_probe
            + counts.inlined,
        lost: reader.lost_total(),
        ring_fill_pct: reader.fill_pct(),
        backlog: writer.backlog(),
        governor: None,
    }
}

type Links = Vec<(bool, crate::probe::attach::ProbeLink)>;

#[allow(clippy::too_many_arguments)]
fn load_and_attach(
    cfg: &SessionConfig,
    plan: &Plan,
    pid: u32,
    str_cookies: &HashMap<u32, u64>,
    stop: &AtomicBool,
    clock: &SessionClock,
    attach_time: &mut Duration,
) -> Result<(LoadedProbes, Links, Option<Governor>)> {
    let mut probes = LoadedProbes::load(
        LoadOptions {
            target_tgid: pid,
            ring_bytes: cfg.ring_bytes,
            wake_bytes: u64::from(cfg.ring_bytes / 4),
            str_cap: cfg.arg_strings.unwrap_or(0),
            count_slots: u32::try_from(plan.function_count() + 1).unwrap_or(u32::MAX),
        },
        cfg.attach_mode,
    )?;
    let mut governor = match cfg.max_overhead {
        Some(budget) => Some(prepare_governor(
            cfg,
            &mut probes,
            plan,
            pid,
            budget,
            str_cookies,
            stop,
            clock,
        )?),
        None => None,
    };
    let started = Instant::now();
    // Governed functions get links of their own; those sampled from the
    // start are not attached now.
    let (own, skip) = match &governor {
        Some(g) => (g.governed_ids(), g.sampled_ids().into_iter().collect()),
        None => (BTreeSet::new(), BTreeSet::new()),
    };
    let (links, own_links) = attach_plan(&mut probes, plan, pid, str_cookies, &own, &skip)?;
    *attach_time = started.elapsed();
    if let Some(g) = governor.as_mut() {
        for (id, l) in own_links {
            g.adopt_links(id, l);
        }
    }
    Ok((probes, links, governor))
}

/// The functions the governor may sample: not Go, not inlined instances.
/// (function id, module index, probe point with the recording cookie)
fn governable(plan: &Plan, str_cookies: &HashMap<u32, u64>) -> Vec<(u32, usize, ProbePoint)> {
    let mut out = Vec::new();
    for (i, m) in plan.modules.iter().enumerate() {
        if m.go {
            continue;
        }
        for f in m.functions.iter().filter(|f| f.inline_site.is_none()) {
            out.push((
                f.function_id,
                i,
                ProbePoint {
                    file_offset: f.symbol.file_offset,
                    cookie: recording_cookie(f, str_cookies),
                },
            ));
        }
    }
    out
}

/// Measures the probe cost, and for `attach` counts calls in the kernel for
/// `--warmup` and decides which functions start sampled; prints the
/// prediction.
#[allow(clippy::too_many_arguments)]
fn prepare_governor(
    cfg: &SessionConfig,
    probes: &mut LoadedProbes,
    plan: &Plan,
    pid: u32,
    budget: f64,
    str_cookies: &HashMap<u32, u64>,
    stop: &AtomicBool,
    clock: &SessionClock,
) -> Result<Governor> {
    let cost = governor::calibrate(probes).map_err(|e| {
        anyhow::anyhow!(
            "the overhead governor could not measure the probe cost on this machine: {e} (record without it: --max-overhead off)"
        )
    })?;
    let cands = governable(plan, str_cookies);
    let names: FxHashMap<u32, String> = plan
        .functions()
        .map(|(_, f)| (f.function_id, summary_name(f)))
        .collect();
    let modules: Vec<PathBuf> = plan
        .modules
        .iter()
        .map(|m| m.candidate.attach_path.clone())
        .collect();
    let cost_line = format!(
        "probes cost {:.1} µs per recorded call here ({:.1} µs to count one), measured just now",
        cost.full_ns / 1000.0,
        cost.entry_ns / 1000.0
    );
    match &cfg.target {
        Target::Record { .. } => {
            let governed: BTreeMap<u32, (usize, ProbePoint)> = if cands.len()
                <= governor::MAX_GOVERNED
            {
                cands.iter().map(|(id, m, p)| (*id, (*m, *p))).collect()
            } else {
                eprintln!(
                    "scope: governor: {} functions probed, more than the {} it can sample one by one: it predicts, but every call is recorded (narrow -f, or use attach, which counts first)",
                    cands.len(),
                    governor::MAX_GOVERNED
                );
                BTreeMap::new()
            };
            if !cfg.quiet {
                eprintln!(
                    "scope: governor: {cost_line}; budget {budget}%, decided after the first {}",
                    format_duration_ns(cfg.warmup.as_nanos() as u64)
                );
            }
            let mut g = Governor::new(GovernorSetup {
                budget_pct: budget,
                cost,
                pid,
                modules,
                governed,
                names,
                first_tick: cfg.warmup,
                now_ns: clock.now_epoch_ns(),
            });
            g.note(clock.now_epoch_ns(), "calibrate", cost_line, None);
            Ok(g)
        }
        Target::Attach { .. } => {
            // Count every governable function's calls in the kernel.
            let mut by_module: BTreeMap<usize, Vec<ProbePoint>> = BTreeMap::new();
            for (id, m, p) in &cands {
                by_module.entry(*m).or_default().push(ProbePoint {
                    file_offset: p.file_offset,
                    cookie: u64::from(*id),
                });
            }
            let mut count_links = Vec::new();
            for (m, points) in by_module {
                count_links.push(probes.attach_counts(&modules[m], &points, pid)?);
            }
            let start_ns = clock.now_epoch_ns();
            let cpu0 = governor::target_cpu_ns(pid).unwrap_or(0);
            let started = Instant::now();
            while started.elapsed() < cfg.warmup
                && !stop.load(Ordering::Relaxed)
                && !process_gone(pid)
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            let wall = started.elapsed();
            let counts = probes.read_counts();
            let cpu1 = governor::target_cpu_ns(pid).unwrap_or(cpu0);
            let end_ns = clock.now_epoch_ns();
            close_links(count_links);
            let count_of = |id: u32| counts.get(id as usize).copied().unwrap_or(0);
            let total: u64 = cands.iter().map(|(id, _, _)| count_of(*id)).sum();
            let cpu_ns = cpu1.saturating_sub(cpu0) as f64;
            let probe_ns = total as f64 * cost.entry_ns;
            // The hottest functions called in the warm-up get their own links.
            let mut active: Vec<(u32, usize, ProbePoint, u64)> = cands
                .iter()
                .map(|(id, m, p)| (*id, *m, *p, count_of(*id)))
                .filter(|c| c.3 > 0)
                .collect();
            active.sort_by(|a, b| b.3.cmp(&a.3).then(a.0.cmp(&b.0)));
            active.truncate(governor::MAX_GOVERNED);
            let governed: BTreeMap<u32, (usize, ProbePoint)> =
                active.iter().map(|c| (c.0, (c.1, c.2))).collect();
            let loads: Vec<FnLoad> = cands
                .iter()
                .map(|(id, _, _)| FnLoad {
                    id: *id,
                    overhead_pct: governor::overhead_pct(
                        count_of(*id) as f64,
                        cost.full_ns,
                        cpu_ns,
                        wall.as_nanos() as f64,
                        probe_ns,
                    ),
                    governed: governed.contains_key(id),
                })
                .filter(|l| l.overhead_pct > 0.0)
                .collect();
            let decision = governor::decide(&loads, budget);
            let mut g = Governor::new(GovernorSetup {
                budget_pct: budget,
                cost,
                pid,
                modules,
                governed,
                names: names.clone(),
                first_tick: governor::TICK,
                now_ns: end_ns,
            });
            for l in &loads {
                let rate = count_of(l.id) as f64 / wall.as_secs_f64().max(1e-3);
                g.set_overhead(l.id, l.overhead_pct, rate);
            }
            g.note(start_ns, "calibrate", cost_line.clone(), None);
            let rate = total as f64 / wall.as_secs_f64().max(1e-3);
            let predict = format!(
                "warm-up {}: {} calls counted ({}/s) in {} function{}; recording every call would slow pid {pid} by {:.1}%",
                format_duration_ns(wall.as_nanos() as u64),
                total,
                crate::status::si(rate),
                active.len(),
                if active.len() == 1 { "" } else { "s" },
                decision.full_pct
            );
            g.note(end_ns, "predict", predict.clone(), Some(decision.full_pct));
            for (id, _, _, count) in &active {
                g.warmup_aggregate(AggregateRecord {
                    function_id: *id,
                    start_ns,
                    end_ns,
                    mode: "warmup",
                    sample_n: 1,
                    observed_ns: wall.as_nanos() as u64,
                    calls_seen: *count,
                    total_ns: None,
                    log2_hist: None,
                });
            }
            g.start_sampled(&decision, end_ns, "warm-up");
            if !cfg.quiet {
                eprintln!("scope: governor: {cost_line}");
            }
            eprintln!("scope: governor: {predict}");
            if decision.sampled.is_empty() {
                eprintln!("scope: governor: within the {budget}% budget: recording every call");
            } else {
                let list: Vec<String> = decision
                    .sampled
                    .iter()
                    .take(5)
                    .map(|id| names.get(id).cloned().unwrap_or_else(|| format!("#{id}")))
                    .collect();
                eprintln!(
                    "scope: governor: budget {budget}%: sampling {} function{} 1 in {} ({}{}), predicted {:.1}%",
                    decision.sampled.len(),
                    if decision.sampled.len() == 1 { "" } else { "s" },
                    decision.n,
                    list.join(", "),
                    if decision.sampled.len() > 5 {
                        ", …"
                    } else {
                        ""
                    },
                    decision.predicted_pct
                );
            }
            Ok(g)
        }
    }
}

/// A function's cookie when recorded: its id, and the args and string
/// flags when its arguments are captured.
fn recording_cookie(
    f: &crate::probe::plan::PlannedFunction,
    str_cookies: &HashMap<u32, u64>,
) -> u64 {
    // The args flag rides in the cookie: the kernel tests it without a lookup.
    u64::from(f.function_id)
        | if f.args {
            scope_common::COOKIE_ARGS_FLAG | str_cookies.get(&f.function_id).copied().unwrap_or(0)
        } else {
            0
        }
}

/// Links of the governed functions, each its own: (function id, links).
type OwnLinks = Vec<(u32, Vec<ProbeLink>)>;

/// Attaches every module of `plan` (entry and return links per module).
/// Functions in `own` get links of their own (the governor may detach them
/// one by one); those also in `skip` start sampled and are not attached.
fn attach_plan(
    probes: &mut LoadedProbes,
    plan: &Plan,
    pid: u32,
    str_cookies: &HashMap<u32, u64>,
    own: &BTreeSet<u32>,
    skip: &BTreeSet<u32>,
) -> Result<(Links, OwnLinks)> {
    let mut links = Vec::new();
    let mut own_links = Vec::new();
    for m in &plan.modules {
        let points: Vec<ProbePoint> = m
            .functions
            .iter()
            .filter(|f| f.inline_site.is_none() && (m.go || !own.contains(&f.function_id)))
            .map(|f| ProbePoint {
                file_offset: f.symbol.file_offset,
                cookie: recording_cookie(f, str_cookies),
            })
            .collect();
        if m.go {
            // Go: no return probes (see probe::go); entry after the stack
            // check, and a plain probe on every RET.
            let (entries, rets) = go_points(m);
            let entry = probes.attach_module(&m.candidate.attach_path, &entries, pid, false)?;
            links.extend(entry.into_iter().map(|l| (true, l)));
            if !rets.is_empty() {
                let l = probes.attach_ret_sites(&m.candidate.attach_path, &rets, pid)?;
                links.push((false, l));
            }
            continue;
        }
        // Inlined instances: an entry probe on their first instruction and
        // nothing else (there is no return instruction of theirs to probe).
        // Not counted as attached functions; the agent says so separately.
        // Attached before the module's own entry link: the kernel runs the
        // handlers of one address newest first, so an instance at its
        // caller's very first instruction still comes after the caller's
        // entry and nests under it.
        let inline_points: Vec<ProbePoint> = m
            .functions
            .iter()
            .filter(|f| f.inline_site.is_some())
            .map(|f| ProbePoint {
                file_offset: f.symbol.file_offset,
                cookie: u64::from(f.function_id),
            })
            .collect();
        if !inline_points.is_empty() {
            let l = probes.attach_module(&m.candidate.attach_path, &inline_points, pid, false)?;
            links.extend(l.into_iter().map(|l| (false, l)));
        }
        if !points.is_empty() {
            let module_links =
                probes.attach_module(&m.candidate.attach_path, &points, pid, true)?;
            for (i, l) in module_links.into_iter().enumerate() {
                // The first link of a module is the entry link.
                links.push((i == 0, l));
            }
        }
        // Governed functions: an entry and a return link each.
        for f in m
            .functions
            .iter()
            .filter(|f| f.inline_site.is_none() && own.contains(&f.function_id))
            .filter(|f| !skip.contains(&f.function_id))
        {
            let point = ProbePoint {
                file_offset: f.symbol.file_offset,
                cookie: recording_cookie(f, str_cookies),
            };
            let l = probes.attach_module(&m.candidate.attach_path, &[point], pid, true)?;
            own_links.push((f.function_id, l));
        }
    }
    Ok((links, own_links))
}

/// Polls the target's mappings for modules a pending pattern names (loaded
/// with dlopen since the start); writes their `functions` rows first, then
/// attaches them. Returns the new plan, or `None` when nothing new matched.
fn attach_late_modules(
    pending: &mut PendingModules,
    probes: &mut LoadedProbes,
    late_functions: &mut LateFunctions,
    pid: u32,
    links: &mut Links,
) -> Result<Option<(Plan, (PathBuf, u64))>> {
    let Ok(current) = running_modules(pid) else {
        // The process is exiting; the main loop notices.
        return Ok(None);
    };
    let late = pending.poll(&current);
    for w in &late.warnings {
        eprintln!("scope: warning: {w}");
    }
    if late.plan.modules.is_empty() {
        return Ok(None);
    }
    let file = late_functions.write(&function_rows(&late.plan))?;
    let (new_links, _) = attach_plan(
        probes,
        &late.plan,
        pid,
        &HashMap::new(),
        &BTreeSet::new(),
        &BTreeSet::new(),
    )?;
    for m in &late.plan.modules {
        eprintln!(
            "scope: attached {} more function{} in {} (loaded after the start)",
            m.functions.len(),
            if m.functions.len() == 1 { "" } else { "s" },
            m.candidate.display_path.display()
        );
    }
    links.extend(new_links);
    Ok(Some((late.plan, file)))
}

/// Entry and RET-site probe points of a Go module's functions.
fn go_points(m: &crate::probe::plan::ModulePlan) -> (Vec<ProbePoint>, Vec<ProbePoint>) {
    let mut entries = Vec::with_capacity(m.functions.len());
    let mut rets = Vec::new();
    for f in &m.functions {
        let cookie = u64::from(f.function_id) | scope_common::COOKIE_GO_FLAG;
        let Some(sites) = &f.go else { continue };
        entries.push(ProbePoint {
            file_offset: sites.entry_offset,
            cookie,
        });
        rets.extend(sites.ret_offsets.iter().map(|&off| ProbePoint {
            file_offset: off,
            cookie,
        }));
    }
    (entries, rets)
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
            param_names: f.symbol.params.iter().map(|(n, _)| n.clone()).collect(),
            param_types: f.symbol.params.iter().map(|(_, t)| t.clone()).collect(),
            return_type: f.symbol.return_type.clone(),
            language: f.symbol.language.map(str::to_string),
            inlined_count: f.symbol.inlined_count,
            inlined_into: f.inline_site.as_ref().and_then(|s| s.caller.clone()),
            call_file: f.inline_site.as_ref().and_then(|s| s.call_file.clone()),
            call_line: f.inline_site.as_ref().and_then(|s| s.call_line),
        })
        .collect()
}

/// The summary's name of a probed function: an inlined instance says where
/// it sits (`sq [inlined into f1]`).
fn summary_name(f: &crate::probe::plan::PlannedFunction) -> String {
    match &f.inline_site {
        Some(site) => format!(
            "{} [inlined into {}]",
            f.symbol.name,
            site.caller.as_deref().unwrap_or("?")
        ),
        None => f.symbol.name.clone(),
    }
}

/// Clears argument capture on inlined instances; returns how many had it.
fn drop_inline_args(plan: &mut Plan) -> usize {
    let mut n = 0;
    for f in plan.modules.iter_mut().flat_map(|m| m.functions.iter_mut()) {
        if f.inline_site.is_some() && f.args {
            f.args = false;
            n += 1;
        }
    }
    n
}

/// Whether `pid` has exited: no such process, or a zombie (its maps are
/// empty until its parent reaps it).
fn process_gone(pid: u32) -> bool {
    process_state(pid).is_none_or(|s| matches!(s.as_str(), "Z" | "X" | "x"))
}

/// The state letter of `pid` from /proc/PID/stat; `None` if it is gone.
fn process_state(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The state follows the command name, which is in parentheses and may
    // itself contain spaces or parentheses.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().next().map(str::to_string)
}

pub fn require_root() -> Result<()> {
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
