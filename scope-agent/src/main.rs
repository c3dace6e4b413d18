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
