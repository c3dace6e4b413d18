//! A recording session, `record` or `attach`, from start to summary:
//! plan the probes, load and attach them, run the ring reader and the writer
//! thread until a stop condition, then detach, drain, finish the files and
//! print what was recorded.
//!
//! Order matters for "no surprises": everything that can fail on bad input
//! (permissions, output directory, command, symbols, patterns) is checked
//! before a child is started or a probe is attached.
//!
//! [`run`] is those phases in order, one file each: `plan.rs` (the target's
//! modules, the plan, the output directory), `attach.rs` (the command held
//! at its gate, probes loaded and attached, with the governor's start in
//! `warmup.rs`), `capture.rs` (the loop, until a stop condition), `drain.rs`
//! (detach, then the last events and rows), `finish.rs` (the files
//! finished, the end-of-run messages and tables, the command waited for).
//! `sink.rs` is the writer thread's side.

mod attach;
mod capture;
mod drain;
mod finish;
mod plan;
mod sink;
mod warmup;
mod watch;

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use crate::probe::attach::AttachModeChoice;
use crate::symbols::pattern::Pattern;

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
    /// The store's directory; with `upload`, the spool root (the session
    /// writes to `out_dir/<session id>` and uploads from there).
    pub out_dir: PathBuf,
    /// `--out s3://…`.
    pub upload: Option<UploadConfig>,
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
    /// Sample the target's on-CPU stacks (`samples` table); off with
    /// `--no-samples`.
    pub samples: bool,
    /// Follow the target's threads on and off their CPUs (calls'
    /// `oncpu_ns`/`offcpu_ns`, the `offcpu` table); off with `--no-sched`.
    pub sched: bool,
    /// `--hook-payload`: SSL_write's plaintext is read too.
    pub hook_payload: bool,
    /// `--hooks`: calls get the request they served (`request_id`).
    pub hooks: bool,
    /// `-u`: USDT probes to record into `markers`.
    pub usdt: Vec<crate::probe::usdt::UsdtPattern>,
    /// `--clock-ref HOST[:PORT]`: measure the clock's offset to UTC with
    /// this SNTP server (else the kernel's NTP state).
    pub clock_ref: Option<String>,
}

/// `--out s3://bucket/prefix`: where the files go once written.
#[derive(Debug, Clone)]
pub struct UploadConfig {
    /// `s3://bucket/prefix`, as given.
    pub url: String,
    /// How long to keep retrying at the end before leaving the spool.
    pub wait: Duration,
}

/// How a session ended.
#[derive(Debug)]
pub struct SessionOutcome {
    /// For `record`: the command's exit code (128 + signal if killed).
    pub exit_code: Option<i32>,
}

pub fn run(cfg: SessionConfig) -> Result<SessionOutcome> {
    require_root()?;

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("installing signal handlers")?;
    }

    let mut planned = plan::prepare(&cfg)?;
    let output = plan::open_output(&cfg, &planned)?;
    let mut live = attach::load_and_attach(&cfg, &mut planned, output, &stop)?;
    let mut ended = capture::run_loop(&cfg, &mut planned, &mut live, &stop);
    let drained = drain::detach_and_drain(&mut live, &mut ended);
    finish::write_and_report(&cfg, &planned, live, ended, drained, &stop)
}

/// Whether `pid` has exited: no such process, or a zombie (its maps are
/// empty until its parent reaps it).
fn process_gone(pid: u32) -> bool {
    process_state(pid).is_none_or(|s| matches!(s.as_str(), "Z" | "X" | "x"))
}

/// [`process_gone`] for the rest of the crate.
pub(crate) fn process_gone_pub(pid: u32) -> bool {
    process_gone(pid)
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
