//! Load and attach: the command started and held at its gate (`record`)
//! or the process watched (`attach`), the eBPF programs loaded, the
//! governor started (`warmup.rs`), the plan's probes attached, the ring
//! reader, correlator and writer thread set up, what was attached said, and
//! the command released. Modules loaded after the start are attached here
//! too, from the capture loop.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use super::plan::{Output, Planned, function_rows};
use super::sink::SessionSink;
use super::warmup::prepare_governor;
use super::watch::CostWatch;
use super::{SessionConfig, Target, process_gone};
use crate::capture::args::ArgLayout;
use crate::capture::correlator::Correlator;
use crate::capture::pipeline::SinkThread;
use crate::capture::ring::RingReader;
use crate::governor::Governor;
use crate::probe::attach::{AttachMode, LoadOptions, LoadedProbes, ProbeLink, ProbePoint};
use crate::probe::plan::{ModulePlan, Plan, PlannedFunction, short_name, skipped_total};
use crate::probe::watch::PendingModules;
use crate::sample::SamplerThread;
use crate::status::WriterGauges;
use crate::storage::LateFunctions;
use crate::summary::{CallStats, format_duration_ns};
use crate::target::{GatedChild, ProcessWatch, running_modules};
use crate::time::SessionClock;

/// The session's links, each with whether it is an entry link (its
/// functions count as attached).
pub(super) type Links = Vec<(bool, ProbeLink)>;

/// What is live while recording: the target, the probes, and the path of
/// an event from the ring to the writer thread.
pub(super) struct Live {
    pub(super) clock: SessionClock,
    pub(super) session_id: String,
    pub(super) pid: u32,
    /// `record`: the command.
    pub(super) child: Option<GatedChild>,
    /// `attach`: tells when the process exits.
    pub(super) watch: Option<ProcessWatch>,
    pub(super) probes: LoadedProbes,
    pub(super) links: Links,
    pub(super) governor: Option<Governor>,
    pub(super) reader: RingReader,
    pub(super) correlator: Correlator,
    pub(super) gauges: Arc<WriterGauges>,
    pub(super) writer: SinkThread<SessionSink>,
    pub(super) late_functions: LateFunctions,
    /// Modules attached after the start: their plans, and their
    /// `functions` files (path, size).
    pub(super) late_plans: Vec<Plan>,
    pub(super) late_files: Vec<(PathBuf, u64)>,
    /// What the probes cost the target (said early for `record` without a
    /// budget).
    pub(super) cost: CostWatch,
    /// The live-query socket; removed when the session ends.
    pub(super) live: Option<crate::live::LiveServer>,
    /// On-CPU samples of the target (`None`: `--no-samples`, or the
    /// perf event could not be opened).
    pub(super) sampler: Option<SamplerThread>,
}

/// Starts the command held at its gate (or watches the process), loads and
/// attaches the probes, sets up the reader, correlator and writer, says
/// what was attached, and releases the command. When this fails, the
/// command never gets past its gate.
pub(super) fn load_and_attach(
    cfg: &SessionConfig,
    planned: &mut Planned,
    output: Output,
    stop: &AtomicBool,
) -> Result<Live> {
    let arg_layouts = std::mem::take(&mut planned.arg_layouts);
    let planned = &*planned;
    let Output {
        clock,
        session_id,
        store,
        late_functions,
        samples,
        uploader,
    } = output;
    let mut child = match (&cfg.target, &planned.program) {
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
    let str_cookies = string_cookies(cfg, &arg_layouts);
    let mut attach_time = Duration::ZERO;
    let attached = attach_probes(
        &Attaching {
            cfg,
            plan: &planned.plan,
            pid,
            str_cookies: &str_cookies,
            usdt: &planned.usdt,
            stop,
            clock: &clock,
        },
        &mut attach_time,
    );
    let (mut probes, links, governor) = match attached {
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
    for f in planned.plan.inline_instances() {
        correlator.set_inline(f.function_id);
    }
    correlator.set_str_cap(cfg.arg_strings.unwrap_or(0) as usize);
    if probes.sched_attached() {
        correlator.follow_sched();
    }
    if cfg.hooks {
        correlator.set_request_starts(planned.request_starts.iter().copied());
    }
    for u in &planned.usdt {
        correlator.set_marker(u.id, u.arg_count);
    }
    if let Some(g) = &governor {
        g.init_correlator(&mut correlator);
    }
    let gauges = Arc::new(WriterGauges::default());
    let (hot, live) = start_live(pid, &session_id, planned);
    let writer = SinkThread::spawn(
        SessionSink {
            store,
            uploader,
            stats: CallStats::new(),
            gauges: Arc::clone(&gauges),
            hot,
        },
        64,
    )
    .context("starting the writer thread")?;

    // Before the command runs, so its first samples are taken; a sampler
    // that cannot start only costs the samples (said once).
    let sampler = if cfg.samples {
        SamplerThread::spawn(pid, clock, samples)
    } else {
        None
    };
    report_attached(cfg, planned, pid, attached_count, attach_time, attach_mode);

    if let Some(c) = child.as_mut()
        && let Err(e) = c.release()
    {
        drop(links);
        let _ = writer.finish();
        return Err(e.into());
    }
    let cost = CostWatch::start(
        pid,
        cfg.warmup,
        matches!(cfg.target, Target::Record { .. }) && governor.is_none(),
    );
    Ok(Live {
        clock,
        session_id,
        pid,
        child,
        watch,
        probes,
        links,
        governor,
        reader,
        correlator,
        gauges,
        writer,
        late_functions,
        late_plans: Vec::new(),
        late_files: Vec::new(),
        cost,
        live,
        sampler,
    })
}

/// How much of the recording live queries see.
const LIVE_WINDOW: Duration = Duration::from_secs(10);

/// The hot tier and its socket; a failure only costs live queries, said
/// once.
fn start_live(
    pid: u32,
    session_id: &str,
    planned: &Planned,
) -> (
    Option<Arc<crate::live::HotTier>>,
    Option<crate::live::LiveServer>,
) {
    let tier = match crate::live::HotTier::new(
        LIVE_WINDOW,
        session_id,
        &super::plan::function_rows(&planned.plan),
    ) {
        Ok(t) => Arc::new(t),
        Err(e) => {
            eprintln!("scope: warning: no live queries ({e:#})");
            return (None, None);
        }
    };
    match crate::live::LiveServer::start(pid, Arc::clone(&tier)) {
        Ok(server) => {
            // One write: stderr is unbuffered, and a reader waiting for
            // this line must not see half of it.
            let line = format!(
                "scope: live: `scope-agent query --live --pid {pid} 'SQL'` reads the last {} s of calls ({})\n",
                LIVE_WINDOW.as_secs(),
                server.path().display()
            );
            let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
            (Some(tier), Some(server))
        }
        Err(e) => {
            eprintln!("scope: warning: no live queries ({e:#})");
            (None, None)
        }
    }
}

/// What attaching the plan needs, borrowed from the session.
pub(super) struct Attaching<'a> {
    pub(super) cfg: &'a SessionConfig,
    pub(super) plan: &'a Plan,
    pub(super) pid: u32,
    pub(super) str_cookies: &'a HashMap<u32, u64>,
    pub(super) usdt: &'a [crate::probe::usdt::PlannedUsdt],
    pub(super) stop: &'a AtomicBool,
    pub(super) clock: &'a SessionClock,
}

/// Loads the programs, starts the governor (when there is a budget) and
/// attaches the plan; `attach_time` is how long attaching the plan took.
fn attach_probes(
    a: &Attaching,
    attach_time: &mut Duration,
) -> Result<(LoadedProbes, Links, Option<Governor>)> {
    let Attaching {
        cfg,
        plan,
        pid,
        str_cookies,
        usdt,
        ..
    } = *a;
    // `--sched`: the kernel's BTF says where a task keeps its ids; without
    // it the session records without on/off-CPU time, and says so.
    let task_offsets = if cfg.sched {
        match crate::probe::sched::task_offsets(Path::new(crate::probe::sched::VMLINUX_BTF)) {
            Ok(o) => Some(o),
            Err(e) => {
                eprintln!(
                    "scope: warning: not following the scheduler ({e}); calls get no on/off-CPU time (--no-sched silences this)"
                );
                None
            }
        }
    } else {
        None
    };
    let mut probes = LoadedProbes::load(
        LoadOptions {
            target_tgid: pid,
            ring_bytes: cfg.ring_bytes,
            wake_bytes: u64::from(cfg.ring_bytes / 4),
            str_cap: cfg.arg_strings.unwrap_or(0),
            count_slots: u32::try_from(plan.function_count() + 1).unwrap_or(u32::MAX),
            task_offsets,
            usdt_slots: u32::try_from(usdt.len()).unwrap_or(u32::MAX),
        },
        cfg.attach_mode,
    )?;
    let mut governor = match cfg.max_overhead {
        Some(budget) => Some(prepare_governor(a, &mut probes, budget)?),
        None => None,
    };
    let started = Instant::now();
    // Governed functions get links of their own; those sampled from the
    // start are not attached now.
    let (own, skip) = match &governor {
        Some(g) => (g.governed_ids(), g.sampled_ids().into_iter().collect()),
        None => (BTreeSet::new(), BTreeSet::new()),
    };
    // Before the plan, so every recorded call has its thread followed from
    // its entry on.
    if task_offsets.is_some()
        && let Err(e) = probes.attach_sched()
    {
        probes.detach_sched();
        eprintln!(
            "scope: warning: not following the scheduler ({e}); calls get no on/off-CPU time (--no-sched silences this)"
        );
    }
    let (mut links, own_links) = attach_plan(&mut probes, plan, pid, str_cookies, &own, &skip)?;
    links.extend(
        attach_usdt(&mut probes, usdt, pid)?
            .into_iter()
            .map(|l| (false, l)),
    );
    *attach_time = started.elapsed();
    if let Some(g) = governor.as_mut() {
        for (id, l) in own_links {
            g.adopt_links(id, l);
        }
    }
    Ok((probes, links, governor))
}

/// Says what was attached, and what was not and why.
fn report_attached(
    cfg: &SessionConfig,
    planned: &Planned,
    pid: u32,
    attached_count: usize,
    attach_time: Duration,
    attach_mode: AttachMode,
) {
    let (plan, pending, with_args, command_line) = (
        &planned.plan,
        &planned.pending,
        planned.with_args,
        &planned.command_line,
    );
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
}

/// `--arg-strings`: the registers of each function's string parameters,
/// which ride in its cookie.
fn string_cookies(cfg: &SessionConfig, layouts: &[(u32, ArgLayout)]) -> HashMap<u32, u64> {
    if cfg.arg_strings.is_none() {
        return HashMap::new();
    }
    layouts
        .iter()
        .map(|(id, l)| (*id, l.string_cookie()))
        .filter(|(_, c)| *c != 0)
        .collect()
}

/// A function's cookie when recorded: its id, and the args and string
/// flags when its arguments are captured.
pub(super) fn recording_cookie(f: &PlannedFunction, str_cookies: &HashMap<u32, u64>) -> u64 {
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
/// `-u`: one link per module of USDT probes (cookie = probe id), with the
/// semaphores as reference counters.
fn attach_usdt(
    probes: &mut LoadedProbes,
    usdt: &[crate::probe::usdt::PlannedUsdt],
    pid: u32,
) -> Result<Vec<ProbeLink>> {
    if usdt.is_empty() {
        return Ok(Vec::new());
    }
    if probes.mode() != AttachMode::Multi {
        bail!("-u needs multi-uprobe links (Linux 6.6 or later), which this kernel lacks");
    }
    let mut by_module: BTreeMap<&Path, Vec<&crate::probe::usdt::PlannedUsdt>> = BTreeMap::new();
    for u in usdt {
        by_module
            .entry(u.attach_path.as_path())
            .or_default()
            .push(u);
    }
    let mut links = Vec::new();
    for (path, list) in by_module {
        let points: Vec<ProbePoint> = list
            .iter()
            .map(|u| ProbePoint {
                file_offset: u.file_offset,
                cookie: u64::from(u.id),
            })
            .collect();
        let ref_ctrs: Vec<u64> = list
            .iter()
            .map(|u| u.semaphore_offset.unwrap_or(0))
            .collect();
        let specs: Vec<scope_common::UsdtSpec> = list.iter().map(|u| u.spec).collect();
        links.push(probes.attach_usdt(path, &points, &ref_ctrs, &specs, pid)?);
    }
    Ok(links)
}

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
/// gives the correlator their argument layouts and attaches them. Returns
/// the new plan, or `None` when nothing new matched.
pub(super) fn attach_late_modules(
    cfg: &SessionConfig,
    pending: &mut PendingModules,
    probes: &mut LoadedProbes,
    late_functions: &mut LateFunctions,
    correlator: &mut Correlator,
    pid: u32,
    links: &mut Links,
) -> Result<Option<(Plan, (PathBuf, u64))>> {
    let Ok(current) = running_modules(pid) else {
        // The process is exiting; the main loop notices.
        return Ok(None);
    };
    let mut late = pending.poll(&current);
    for w in &late.warnings {
        eprintln!("scope: warning: {w}");
    }
    if late.plan.modules.is_empty() {
        return Ok(None);
    }
    // Before the rows: a hook names its parameters.
    let (layouts, starts) = super::plan::late_layouts(cfg, &mut late.plan);
    let file = late_functions.write(&function_rows(&late.plan))?;
    let str_cookies = string_cookies(cfg, &layouts);
    for (function_id, layout) in layouts {
        correlator.set_layout(function_id, layout);
    }
    if cfg.hooks {
        correlator.set_request_starts(starts);
    }
    let (new_links, _) = attach_plan(
        probes,
        &late.plan,
        pid,
        &str_cookies,
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
fn go_points(m: &ModulePlan) -> (Vec<ProbePoint>, Vec<ProbePoint>) {
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
