//! Plan, before anything is touched: the target's modules (a running
//! process's, or the command's), the functions to probe and the patterns
//! left pending until their module is loaded, whose arguments are captured,
//! the warnings about all that; then the output directory, opened with the
//! plan's `functions` rows.

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};

use scope_query::objstore::{
    AccessErrorKind, Location, RemoteStore, check_access, open_location, runtime,
};

use super::{SessionConfig, Target, UploadConfig, process_gone, process_state};
use crate::capture::args::ArgLayout;
use crate::probe::attach::check_function_count;
use crate::probe::plan::{Plan, PlannedFunction, build_plan_with};
use crate::probe::watch::{PendingModules, split_pending};
use crate::storage::upload::Uploader;
use crate::storage::{FunctionRow, LateFunctions, ParquetStore, SamplesWriter, StoreConfig};
use crate::target::{program_modules, resolve_program, running_modules};
use crate::time::{SessionClock, session_id};
use crate::utc::UtcClock;

/// What the plan is, and what the later phases need of the target.
pub(super) struct Planned {
    pub(super) plan: Plan,
    /// Patterns naming a module not mapped yet (dlopen).
    pub(super) pending: PendingModules,
    /// How many functions have their arguments captured.
    pub(super) with_args: usize,
    /// Their register layouts, for the correlator (taken when it is set up).
    pub(super) arg_layouts: Vec<(u32, ArgLayout)>,
    /// The target's command line, for the messages and the `sessions` row.
    pub(super) command_line: String,
    /// `record`: the program to start.
    pub(super) program: Option<PathBuf>,
    /// `-u`: the USDT probes to attach.
    pub(super) usdt: Vec<crate::probe::usdt::PlannedUsdt>,
    /// The node's clock against UTC (taken out of every time written).
    pub(super) utc: UtcClock,
    /// `--hooks`: the hooked functions that start a request.
    pub(super) request_starts: Vec<u32>,
}

/// The session's clock, id and files, opened once the plan is known.
pub(super) struct Output {
    pub(super) clock: SessionClock,
    pub(super) session_id: String,
    pub(super) store: ParquetStore,
    /// Where the `functions` rows of modules loaded later go.
    pub(super) late_functions: LateFunctions,
    /// Where the sampler's `samples` files go.
    pub(super) samples: SamplesWriter,
    /// `--out s3://…`: the thread that uploads each finished file.
    pub(super) uploader: Option<Uploader>,
}

/// Resolves the target and plans the probes; prints the plan's warnings.
pub(super) fn prepare(cfg: &SessionConfig) -> Result<Planned> {
    // A clock reference that does not answer fails before anything starts.
    let utc = UtcClock::measure(cfg.clock_ref.as_deref())?;
    if cfg.clock_ref.is_some() && !cfg.quiet {
        eprintln!("scope: {}; every time is stored in UTC", utc.describe());
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
    // as long as something else can be probed from the start, or they are
    // all hooks (`--hooks tls` alone on a program that dlopens libssl, as
    // Python's `import ssl` does): a typo in -f stays an error at once.
    let usdt = crate::probe::usdt::plan_usdt(&candidates, &cfg.usdt).map_err(anyhow::Error::msg)?;
    let (now, pending) = split_pending(&candidates, &cfg.patterns);
    let only_hooks_wait = now.is_empty()
        && !pending.is_empty()
        && pending
            .iter()
            .all(|p| crate::probe::hooks::is_hook_pattern(&p.raw));
    // `-u` alone: the probes are the markers, no function.
    let planned = if (cfg.patterns.is_empty() && !cfg.usdt.is_empty()) || only_hooks_wait {
        Ok(Plan::default())
    } else if now.is_empty() && !pending.is_empty() {
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
    let pending = PendingModules::new(pending, &candidates, next_id);
    for w in &plan.warnings {
        eprintln!("scope: warning: {w}");
    }
    // --args-for patterns of a module not mapped yet (a hook's library
    // loaded later, or never) wait with their -f twins.
    let (args_now, _) = split_pending(&candidates, &cfg.args_for);
    let with_args = crate::probe::args::select(&mut plan, cfg.args_all, &args_now)
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
    let (arg_layouts, request_starts) = layouts(cfg, &mut plan, with_args);
    for m in &plan.modules {
        check_function_count(&m.candidate.display_path, m.functions.len())?;
    }
    Ok(Planned {
        plan,
        pending,
        with_args,
        arg_layouts,
        command_line,
        program,
        usdt,
        utc,
        request_starts,
    })
}

/// The register layouts of `plan`'s functions whose arguments are captured
/// (`with_args` of them), and the hooked ones that start a request.
fn layouts(
    cfg: &SessionConfig,
    plan: &mut Plan,
    with_args: usize,
) -> (Vec<(u32, ArgLayout)>, Vec<u32>) {
    let mut layouts = if with_args > 0 {
        crate::probe::args::layouts(plan)
    } else {
        Vec::new()
    };
    let starts = hook_layouts(plan, &mut layouts, cfg.hook_payload);
    (layouts, starts)
}

/// A module loaded after the start (`plan`, planned by
/// [`PendingModules`]): its functions' arguments are captured as at the
/// start (`--args`, `--args-for` and `--hooks`), with their layouts and
/// request starts. Patterns naming other modules select nothing here, and
/// that is no error.
pub(super) fn late_layouts(
    cfg: &SessionConfig,
    plan: &mut Plan,
) -> (Vec<(u32, ArgLayout)>, Vec<u32>) {
    let (marked, _) = crate::probe::args::mark(plan, cfg.args_all, &cfg.args_for);
    let with_args =
        marked - crate::probe::go::drop_args(&mut plan.modules) - drop_inline_args(plan);
    layouts(cfg, plan, with_args)
}

/// `--hooks`: the hooked functions get the layouts and parameter names
/// scope knows, in place of DWARF's where a debug file gave some (their
/// libraries usually ship without it, and glibc's DWARF describes
/// connect's and accept's address as a transparent union passed by value,
/// which reads as no register at all). The ids of those that start a
/// request (accept, recv, SSL_read, …).
fn hook_layouts(plan: &mut Plan, layouts: &mut Vec<(u32, ArgLayout)>, payload: bool) -> Vec<u32> {
    let mut starts = Vec::new();
    for m in &mut plan.modules {
        let module = crate::probe::plan::short_name(&m.candidate.display_path);
        if !["libpq.so", "libssl.so", "libc.so"]
            .iter()
            .any(|l| module.starts_with(l))
        {
            continue;
        }
        for f in m.functions.iter_mut().filter(|f| f.args) {
            let Some(layout) = crate::probe::hooks::layout(&f.symbol.name, payload) else {
                continue;
            };
            layouts.retain(|(id, _)| *id != f.function_id);
            layouts.push((f.function_id, layout));
            if crate::probe::hooks::starts_request(&f.symbol.name) {
                starts.push(f.function_id);
            }
            if f.symbol.params.is_empty()
                && let Some(names) = crate::probe::hooks::param_names(&f.symbol.name)
            {
                f.symbol.params = names.into_iter().map(|n| (n, String::new())).collect();
            }
        }
    }
    starts
}

/// Opens the output directory (the session starts now: its clock and id)
/// and writes the plan's `functions` rows.
pub(super) fn open_output(cfg: &SessionConfig, planned: &Planned) -> Result<Output> {
    let clock = SessionClock::now().corrected(&planned.utc);
    let target_pid_for_id = match &cfg.target {
        Target::Attach { pid } => *pid,
        Target::Record { .. } => std::process::id(),
    };
    let session_id = session_id(
        clock.start_epoch_ns,
        target_pid_for_id,
        &crate::utc::hostname(),
    );
    let remote = cfg.upload.as_ref().map(open_remote).transpose()?;
    let out_dir = match &remote {
        Some(_) => cfg.out_dir.join(&session_id),
        None => cfg.out_dir.clone(),
    };
    let mut store = ParquetStore::create(StoreConfig {
        out_dir: out_dir.clone(),
        session_id: session_id.clone(),
        segment_max_rows: cfg.segment_rows,
        segment_max_age: cfg.segment_age,
    })?;
    let uploader = match remote {
        Some(remote) => {
            let uploader = Uploader::start(remote, out_dir)?;
            store.on_file_finished(uploader.notifier());
            Some(uploader)
        }
        None => None,
    };
    store.write_functions(&function_rows(&planned.plan))?;
    store.write_usdt_probes(&planned.usdt)?;
    let late_functions = store.late_functions();
    let samples = store.samples_writer()?;
    Ok(Output {
        clock,
        session_id,
        store,
        late_functions,
        samples,
        uploader,
    })
}

/// `--out s3://…`: the store's client, checked with one request before
/// anything is recorded. Refused credentials or a missing bucket stop the
/// session here (retrying cannot fix them); an unreachable endpoint does
/// not: the files wait in the spool and the uploads are retried.
fn open_remote(upload: &UploadConfig) -> Result<RemoteStore> {
    let remote = match open_location(&upload.url)? {
        Location::Remote(r) => r,
        Location::Local(p) => bail!("{}: not an object store URL", p.display()),
    };
    let checked = runtime()?.block_on(check_access(&remote));
    match checked {
        Ok(()) => Ok(remote),
        Err(e) if e.kind == AccessErrorKind::Unreachable => {
            eprintln!(
                "scope: warning: {e}; recording anyway: files wait in the spool and uploads are retried"
            );
            Ok(remote)
        }
        Err(e) => Err(anyhow::Error::new(e)),
    }
}

pub(super) fn function_rows(plan: &Plan) -> Vec<FunctionRow> {
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
pub(super) fn summary_name(f: &PlannedFunction) -> String {
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
