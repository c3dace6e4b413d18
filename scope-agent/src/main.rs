//! The `scope-agent` binary: parses flags and dispatches. Errors are printed
//! as one line naming the input, with a non-zero exit; never a panic trace.

use std::process::ExitCode;

use clap::Parser as _;
use scope_agent::cli::{Cli, Command, parse_patterns};
use scope_agent::listing::{Source, View, list_functions};
use scope_agent::session::{self, Target};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("scope-agent: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    scope_agent::symbols::debuglink::set_debug_dirs(cli.debug_dirs.clone());
    match cli.command {
        Command::Record(args) => {
            let cfg = args
                .probe
                .into_config(Target::Record { argv: args.command })
                .map_err(anyhow::Error::msg)?;
            let outcome = session::run(cfg)?;
            Ok(ExitCode::from(
                outcome.exit_code.unwrap_or(0).clamp(0, 255) as u8
            ))
        }
        Command::Attach(args) => {
            let cfg = args
                .probe
                .into_config(Target::Attach { pid: args.pid })
                .map_err(anyhow::Error::msg)?;
            session::run(cfg)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Plan(args) => {
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                signal_hook::flag::register(sig, std::sync::Arc::clone(&stop))?;
            }
            scope_agent::sample::plan::run(&args.into_config(), &stop)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Upload(args) => {
            upload(&args.dir, &args.url)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Calibrate(args) => {
            calibrate(args.rounds.max(1))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Query(args) => scope_agent::read::query(args).map(|()| ExitCode::SUCCESS),
        Command::Report(args) => scope_agent::read::report(args).map(|()| ExitCode::SUCCESS),
        Command::Analyze(args) => scope_agent::read::analyze(args).map(|()| ExitCode::SUCCESS),
        Command::Explain(args) => scope_agent::read::explain(args).map(|()| ExitCode::SUCCESS),
        Command::Tree(args) => scope_agent::read::tree(args).map(|()| ExitCode::SUCCESS),
        Command::Stack(args) => scope_agent::read::stack(args).map(|()| ExitCode::SUCCESS),
        Command::Timeline(args) => scope_agent::read::timeline(args).map(|()| ExitCode::SUCCESS),
        Command::Compact(args) => scope_agent::read::compact(args).map(|()| ExitCode::SUCCESS),
        Command::Export(args) => scope_agent::read::export(args).map(|()| ExitCode::SUCCESS),
        Command::Serve(args) => scope_agent::serve::run(scope_agent::serve::ServeConfig {
            data: args.store.data,
            port: args.port,
            memory: args
                .memory
                .unwrap_or(scope_agent::cli::DEFAULT_QUERY_MEMORY),
        })
        .map(|()| ExitCode::SUCCESS),
        Command::Diff(args) => scope_agent::read::diff(args).map(|held| {
            if held {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            }
        }),
        Command::Functions(args) => {
            let (source, pattern) = match (args.pid, args.args.as_slice()) {
                (Some(pid), []) => (Source::Pid(pid), None),
                (Some(pid), [p]) => (Source::Pid(pid), Some(p.clone())),
                (Some(_), _) => anyhow::bail!("with --pid, give at most one PATTERN"),
                (None, [bin]) => (Source::Binary(std::path::Path::new(bin)), None),
                (None, [bin, p]) => (Source::Binary(std::path::Path::new(bin)), Some(p.clone())),
                (None, _) => {
                    anyhow::bail!("give a BINARY (and optionally a PATTERN), or --pid PID")
                }
            };
            if args.usdt {
                let pattern = match pattern {
                    Some(p) => Some(p.parse().map_err(anyhow::Error::msg)?),
                    None => None,
                };
                scope_agent::listing::list_usdt(source, pattern)?;
                return Ok(ExitCode::SUCCESS);
            }
            let pattern = match pattern {
                Some(p) => parse_patterns(&[p]).map_err(anyhow::Error::msg)?.pop(),
                None => None,
            };
            let view = if args.inlined {
                View::Inlined
            } else if args.long {
                View::Long
            } else {
                View::Short
            };
            list_functions(source, pattern, args.limit, view)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `scope-agent upload DIR URL`: every finished file under DIR to the same
/// key under URL, each local copy removed once uploaded.
fn upload(dir: &std::path::Path, url: &str) -> anyhow::Result<()> {
    use scope_query::objstore::{Location, open_location, runtime, upload_dir};
    let remote = match open_location(url)? {
        Location::Remote(r) => r,
        Location::Local(_) => anyhow::bail!("{url}: not an object store URL (s3://bucket/prefix)"),
    };
    if !dir.is_dir() {
        anyhow::bail!("{}: not a directory", dir.display());
    }
    let human = scope_agent::session::human_bytes;
    match runtime()?.block_on(upload_dir(&remote, dir)) {
        Ok(r) => {
            eprintln!(
                "scope: uploaded {} files ({}) from {} to {url}",
                r.files,
                human(r.bytes),
                dir.display()
            );
            Ok(())
        }
        Err((r, e)) => anyhow::bail!(
            "{e:#} ({} files ({}) uploaded before this; the rest stay in {})",
            r.files,
            human(r.bytes),
            dir.display()
        ),
    }
}

/// `scope-agent calibrate`: the probe shapes' per-call costs, each round
/// and the medians.
fn calibrate(rounds: usize) -> anyhow::Result<()> {
    use scope_agent::probe::attach::{AttachModeChoice, LoadOptions, LoadedProbes};
    session::require_root()?;
    let mut probes = LoadedProbes::load(
        LoadOptions {
            // No process has this tgid: every event is dropped by the
            // programs' first test, so only the probe itself is timed.
            target_tgid: u32::MAX,
            ring_bytes: 64 * 1024,
            wake_bytes: 16 * 1024,
            str_cap: 0,
            count_slots: 1,
            task_offsets: None,
            usdt_slots: 0,
        },
        AttachModeChoice::Auto,
    )?;
    let mut all = Vec::with_capacity(rounds);
    for i in 0..rounds {
        let m = scope_agent::governor::measure_costs(&mut probes, true, true)
            .map_err(anyhow::Error::msg)?;
        println!(
            "round {}: bare {:.1} ns, entry+return {:.0} ns, entry {:.0} ns, session {}",
            i + 1,
            m.bare_ns,
            m.entry_return_ns,
            m.entry_ns,
            m.session_ns
                .map_or_else(|| "unsupported".to_string(), |v| format!("{v:.0} ns"))
        );
        all.push(m);
    }
    let median = |f: &dyn Fn(&scope_agent::governor::ProbeCosts) -> Option<f64>| {
        let mut v: Vec<f64> = all.iter().filter_map(f).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    };
    let er = median(&|m| Some(m.entry_return_ns)).unwrap_or(0.0);
    let e = median(&|m| Some(m.entry_ns)).unwrap_or(0.0);
    println!("entry_return_ns {er:.0}");
    println!("entry_ns {e:.0}");
    match median(&|m| m.session_ns) {
        Some(s) => {
            println!("session_ns {s:.0}");
            println!(
                "uprobe.session costs {:.2}x uprobe + uretprobe per call here",
                s / er.max(1.0)
            );
        }
        None => println!("session_ns unsupported"),
    }
    Ok(())
}
