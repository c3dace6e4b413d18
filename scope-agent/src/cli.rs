//! Command-line flags (clap derive), turned into configuration once here;
//! nothing else in the agent reads flags.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::probe::attach::AttachModeChoice;
use crate::session::{SessionConfig, Target, UploadConfig};
use crate::symbols::pattern::Pattern;

#[derive(Debug, Parser)]
#[command(
    name = "scope-agent",
    version,
    about = "Zero-recompile profiler for native programs: eBPF uprobes on ELF/DWARF functions, every call to Parquet",
    long_about = "Zero-recompile profiler for native programs.\n\n\
        Puts eBPF uprobes on functions found in a program's ELF symbols and DWARF debug info \
        (and its shared libraries), pairs every call with its return, and writes the calls as \
        Parquet files that DuckDB reads as they are:\n\n  \
        duckdb -c \"SELECT count(*) FROM read_parquet('scope-data/calls/**/*.parquet', hive_partitioning=true)\"\n\n\
        record and attach need root (CAP_BPF and CAP_PERFMON)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// A directory of separate debug files, searched before /usr/lib/debug:
    /// a debuginfod cache (`DIR/<build-id>/debuginfo`) or a
    /// `DIR/.build-id/xx/yyyy.debug` tree; repeatable. `$DEBUGINFOD_CACHE_PATH`
    /// is searched too.
    #[arg(long = "debug-dir", value_name = "DIR", global = true)]
    pub debug_dirs: Vec<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a command with probes already in place, record until it exits, exit with its status
    Record(RecordArgs),
    /// Record the function calls of a running process until Ctrl-C, --duration or its exit
    Attach(AttachArgs),
    /// List the functions a pattern resolves to (name, module, address, size, file:line)
    Functions(FunctionsArgs),
    /// Upload the finished Parquet files of a store directory (a spool left
    /// by `--out s3://…` when the endpoint stayed unreachable) to
    /// s3://bucket/prefix, each to the same relative key, removing each
    /// local copy once uploaded
    Upload(UploadArgs),
    /// Measure what a probe costs on this machine: a function of the agent
    /// timed bare, with entry + return probes (recording), an entry probe
    /// only (the governor's warm-up) and a uprobe.session probe
    Calibrate(CalibrateArgs),
    /// Run SQL over the store (every table, every session: the rows DuckDB sees)
    Query(QueryArgs),
    /// Per function: calls, total and self time, p50/p90/p99/max (the latest session)
    Report(ReportArgs),
    /// The call tree aggregated by path, with calls and times (the latest session)
    Tree(TreeArgs),
    /// Time travel: what was on a thread's stack at an instant
    Stack(StackArgs),
    /// A thread's calls in order over an interval, indented by depth
    Timeline(TimelineArgs),
    /// Write a session as a trace or profile: perfetto, chrome, folded,
    /// flamegraph (SVG), pprof or speedscope
    Export(ExportArgs),
    /// Choose what to probe from CPU samples: sample on-CPU stacks of a
    /// running process (99 Hz), rank functions by sample share, count the
    /// leading ones' calls to predict their probe cost, and write the
    /// functions that fit the budget to a plan file for `attach --plan`
    Plan(PlanArgs),
    /// The cold tier: merge finished sessions' segments into large files
    /// sorted for time travel (atomically), and remove old sessions
    Compact(CompactArgs),
    /// What is wrong and where: bottlenecks, repeated work (N+1), recursion,
    /// latency outliers, bimodal durations, waiting, polling loops and
    /// complexity, computed from the latest session and ranked
    Analyze(AnalyzeArgs),
    /// Ask an LLM to explain analyze's findings: each claim tied to a
    /// finding id, names not in the findings flagged (gemini, vertex,
    /// openai-compatible, or mock; keys from the environment or a 0600
    /// config file)
    Explain(ExplainArgs),
    /// Compare two recordings per function: calls, total and self time,
    /// p50/p99 with 95% bootstrap intervals; what got slower or faster, new
    /// and vanished functions, and the call paths behind each change;
    /// `--fail-if` gates for CI (exit status 3)
    Diff(DiffArgs),
    /// The viewer: a local web page over a store (timeline per thread,
    /// flame graph, function table, source, SQL, findings), on 127.0.0.1
    /// with a token in the URL it prints; a JSON API under /api/
    Serve(ServeArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub store: StoreArg,

    /// The port on 127.0.0.1 (0: any free one).
    #[arg(long, value_name = "PORT", default_value_t = 0)]
    pub port: u16,

    /// Memory the query engine may use per session before sorts and joins
    /// spill to disk (see `report --memory`).
    #[arg(long, value_name = "SIZE", value_parser = parse_size64)]
    pub memory: Option<u64>,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The base recording: a session of the --data store (an id, a unique
    /// prefix or the pid part), or a store (a directory or URL: its latest
    /// session).
    #[arg(value_name = "BASE")]
    pub base: String,

    /// The new recording, named the same way.
    #[arg(value_name = "NEW")]
    pub new: String,

    /// The store that session ids are looked up in.
    #[command(flatten)]
    pub store: StoreArg,

    /// Exit with status 3 when a function's change is surely past a
    /// threshold (the near end of its 95% interval is): `METRIC > +N%` or
    /// `METRIC < -N%`, METRIC one of calls, total, self, mean, mean_self,
    /// p50, p99. Repeatable: `--fail-if 'p99 > +10%' --fail-if 'calls > +50%'`.
    #[arg(long = "fail-if", value_name = "GATE")]
    pub fail_if: Vec<String>,

    /// The smallest change of self time per call called slower or faster:
    /// its whole 95% interval must lie past it.
    #[arg(long, value_name = "PERCENT", default_value = "10%", value_parser = parse_percent)]
    pub min_change: f64,

    /// text, markdown (for a pull-request comment) or json.
    #[arg(long, value_name = "FORMAT", default_value = "text")]
    pub format: String,

    /// Rows in the table of every function (0: all; json has all).
    #[arg(short = 'n', long, value_name = "N", default_value_t = 30)]
    pub limit: usize,

    /// Memory the query engine may use per side (see `report --memory`).
    #[arg(long, value_name = "SIZE", value_parser = parse_size64)]
    pub memory: Option<u64>,
}

/// `10%` or `10` → 0.10.
fn parse_percent(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .trim_end_matches('%')
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a percentage (like 10%)"))?;
    if !(v.is_finite() && v >= 0.0) {
        return Err(format!("{s:?}: a percentage of 0 or more"));
    }
    Ok(v / 100.0)
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub data: DataArgs,

    /// gemini, vertex, openai (any OpenAI-compatible server: llama.cpp,
    /// vLLM, Ollama, hosted ones) or mock (deterministic, offline).
    /// Default: SCOPE_LLM_PROVIDER or the config file's `provider`.
    #[arg(long, value_name = "PROVIDER")]
    pub provider: Option<String>,

    /// The model (default: the provider's usual one, or SCOPE_LLM_MODEL).
    #[arg(long, value_name = "MODEL")]
    pub model: Option<String>,

    /// The API's base URL, for self-hosted servers and proxies (default:
    /// the provider's; OPENAI_BASE_URL for openai).
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,

    /// Send argument values and strings too (left out by default).
    #[arg(long)]
    pub include_args: bool,

    /// Replace function names and paths by stable hashes before sending;
    /// the answer is mapped back before it is printed.
    #[arg(long)]
    pub redact: bool,
}

#[derive(Debug, Args)]
pub struct AnalyzeArgs {
    #[command(flatten)]
    pub data: DataArgs,

    /// text, markdown or json.
    #[arg(long, value_name = "FORMAT", default_value = "text")]
    pub format: String,

    /// Do not write the `findings` table into the store (it is written by
    /// default, beside the session's other tables, for SQL and `explain`).
    #[arg(long)]
    pub no_write: bool,

    /// Predict one call's time from the function's complexity fit, e.g.
    /// 'sort_items n=1e6' (the key is a parameter name or argN; needs a
    /// session recorded with --args).
    #[arg(long, value_name = "'FUNCTION PARAM=N'")]
    pub predict: Vec<String>,
}

#[derive(Debug, Args)]
pub struct CompactArgs {
    /// The store (a local directory).
    #[arg(
        long,
        value_name = "DIR",
        default_value = "scope-data",
        env = "SCOPE_DATA"
    )]
    pub data: PathBuf,

    /// Only this session (default: every finished session not compacted
    /// yet).
    #[arg(long, value_name = "ID")]
    pub session: Option<String>,

    /// Retention by age: remove whole sessions that ended longer ago than
    /// this (90m, 36h, 7d, 2w).
    #[arg(long, value_name = "AGE", value_parser = parse_age)]
    pub keep: Option<Duration>,

    /// Retention by size: remove the oldest finished sessions until the
    /// store takes at most this much (500M, 10G).
    #[arg(long, value_name = "SIZE", value_parser = parse_size64)]
    pub max_size: Option<u64>,

    /// Rows per row group of the compacted files.
    #[arg(long, value_name = "N", default_value_t = 122_880)]
    pub row_group_rows: usize,

    /// Memory the sort may hold before it spills to disk.
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = parse_size64)]
    pub memory: u64,

    /// Then move the compacted sessions to object storage
    /// (s3://BUCKET/PREFIX, configured like AWS tools): every file
    /// uploaded whole, the `sessions` row last; the local copy of a session
    /// is removed only once all its files are there.
    #[arg(long, value_name = "URL")]
    pub to: Option<String>,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub data: DataArgs,

    /// perfetto (ui.perfetto.dev), chrome (trace event JSON: chrome://tracing
    /// and Perfetto), folded (Brendan Gregg's stacks, weighted by self time
    /// in ns), flamegraph (an SVG), pprof (`go tool pprof`), speedscope
    /// (speedscope.app), or otlp: the calls as OpenTelemetry spans sent to
    /// --endpoint (OTLP over HTTP, protobuf; one trace per root call,
    /// parents from the call tree) for Jaeger, Tempo or any OTLP backend.
    #[arg(long, value_name = "FORMAT")]
    pub format: String,

    /// With --format otlp: the collector, `http://HOST:4318` (`/v1/traces`
    /// is added) or the full URL. Nothing leaves the machine without it.
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,

    /// The file to write (created 0600); `-` for standard output. Default:
    /// scope-<session>.<extension> in the current directory.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Only this thread.
    #[arg(long, value_name = "TID")]
    pub tid: Option<u32>,

    /// What to draw: `calls` (the probed calls, by time), `samples` (the
    /// on-CPU samples' stacks, by count; folded or flamegraph only), or
    /// `auto`: calls, or samples when the session has no calls.
    #[arg(long, value_name = "calls|samples|auto", default_value = "auto", value_parser = ["calls", "samples", "auto"])]
    pub from: String,

    /// Draw the difference from BASE (a session of the --data store, or a
    /// store: its latest session): folded lines with both times
    /// (`stack base_ns new_ns`), or a differential flame graph (widths:
    /// this session's time; red: more than BASE, blue: less).
    #[arg(long, value_name = "BASE")]
    pub diff: Option<String>,

    /// Draw time off CPU instead of wall time (folded or flamegraph): each
    /// stack's width is its calls' `offcpu_ns` (blocked, or waiting for a
    /// CPU) less their children's. Needs a session recorded with the
    /// scheduler followed (the default; not --no-sched).
    #[arg(long)]
    pub offcpu: bool,
}

/// The store a reading command reads (`--data`).
#[derive(Debug, Args)]
pub struct StoreArg {
    /// The store: a directory (as record and attach write it), file://DIR,
    /// or s3://BUCKET/PREFIX.
    #[arg(
        long,
        value_name = "DIR|URL",
        default_value = "scope-data",
        env = "SCOPE_DATA"
    )]
    pub data: String,
}

/// Where the reading commands find the store, and which sessions they read.
#[derive(Debug, Args)]
pub struct DataArgs {
    #[command(flatten)]
    pub store: StoreArg,

    /// Which session: an id (or a unique prefix, or the pid part), `latest`,
    /// or `all`.
    #[arg(long, value_name = "ID|latest|all")]
    pub session: Option<String>,

    /// Memory the query engine may use before sorts and joins spill to
    /// disk: bytes or with a K/M/G suffix. Default: 2G; 128M for `export`,
    /// whose one sort of every call would otherwise fill it.
    #[arg(long, value_name = "SIZE", value_parser = parse_size64)]
    pub memory: Option<u64>,
}

/// `--memory` when not given.
pub const DEFAULT_QUERY_MEMORY: u64 = 2 << 30;
/// `export`'s `--memory` when not given: its peak stays under 500 MB on a
/// 100 M-call session (BENCHMARKS.md).
pub const DEFAULT_EXPORT_MEMORY: u64 = 128 << 20;

#[derive(Debug, Args)]
pub struct QueryArgs {
    /// The SQL (DataFusion's dialect, close to PostgreSQL's). Tables: calls,
    /// functions, losses, sessions, totals, agent_metrics, governor,
    /// aggregates (those the store has), each with a session_id column.
    #[arg(value_name = "SQL")]
    pub sql: String,

    #[command(flatten)]
    pub data: DataArgs,

    /// table, csv, json (an array), jsonl (one object per line) or parquet.
    #[arg(long, value_name = "FORMAT", default_value = "table")]
    pub format: String,

    /// Write the result to this file (created 0600) instead of standard
    /// output.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Rows a table shows (the rest are counted).
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub max_rows: usize,

    /// Ask the running agent instead of the files: the last seconds of its
    /// recording (tables calls and functions), over its Unix socket in
    /// /run/scope (root only, like the agent).
    #[arg(long)]
    pub live: bool,

    /// With --live: the agent recording this process (needed when several
    /// agents run).
    #[arg(long, value_name = "PID", requires = "live")]
    pub pid: Option<u32>,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub data: DataArgs,

    /// Sort key: total, self, calls, p50, p90, p99, max or name.
    #[arg(short, long, value_name = "KEY", default_value = "total")]
    pub sort: String,

    /// One row per function, or per thread (and function), module,
    /// caller → callee edge, or host (and function: a store several nodes
    /// wrote, `--session all`).
    #[arg(
        long,
        value_name = "function|thread|module|caller|host",
        default_value = "function"
    )]
    pub by: String,

    /// At most this many rows (0: all).
    #[arg(short = 'n', long, value_name = "N", default_value_t = 50)]
    pub limit: usize,

    /// text, csv or json.
    #[arg(long, value_name = "FORMAT", default_value = "text")]
    pub format: String,
}

#[derive(Debug, Args)]
pub struct TreeArgs {
    #[command(flatten)]
    pub data: DataArgs,

    /// Only this thread.
    #[arg(long, value_name = "TID")]
    pub tid: Option<u32>,

    /// Show paths down to this depth (0: all).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub depth: usize,

    /// Hide paths below this share of the total time, in percent.
    #[arg(long, value_name = "PCT", default_value_t = 0.0)]
    pub min_pct: f64,

    /// Root the tree at this function (every call of it).
    #[arg(long, value_name = "NAME")]
    pub focus: Option<String>,
}

#[derive(Debug, Args)]
pub struct StackArgs {
    #[command(flatten)]
    pub data: DataArgs,

    /// The thread (a tid; `scope-agent report --by thread` lists them).
    #[arg(long, value_name = "TID")]
    pub tid: u32,

    /// The instant: +1.5s (after the session's start), an RFC 3339
    /// timestamp (2026-11-26T16:45:22.5Z), or epoch nanoseconds.
    #[arg(long, value_name = "TIME")]
    pub at: String,
}

#[derive(Debug, Args)]
pub struct TimelineArgs {
    #[command(flatten)]
    pub data: DataArgs,

    /// The thread. Without it, every thread of the session, merged by
    /// time and labelled by thread. With `--session all` (or a store that
    /// several agents wrote, on several machines), the sessions are merged
    /// too, on UTC as each agent measured it (see `record --clock-ref`),
    /// each call labelled by its host.
    #[arg(long, value_name = "TID")]
    pub tid: Option<u32>,

    /// Start of the interval (default: the session's start); +1.5s, RFC
    /// 3339 or epoch ns.
    #[arg(long, value_name = "TIME")]
    pub from: Option<String>,

    /// End of the interval (default: the session's end).
    #[arg(long, value_name = "TIME")]
    pub to: Option<String>,

    /// At most this many calls.
    #[arg(short = 'n', long, value_name = "N", default_value_t = 1000)]
    pub limit: usize,
}

#[derive(Debug, Args)]
pub struct UploadArgs {
    /// The directory: a spool (SPOOL/<session id>) or any store.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// Where to: s3://bucket/prefix (configured as for --out).
    #[arg(value_name = "URL")]
    pub url: String,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The process to sample (all its threads).
    #[arg(short, long)]
    pub pid: u32,

    /// How long to sample.
    #[arg(short, long, value_name = "D", default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,

    /// What the plan's probes may cost the target, in percent.
    #[arg(long, value_name = "PCT", default_value = "5", value_parser = parse_budget)]
    pub budget: f64,

    /// The store the samples go to (the `samples` table).
    #[arg(short, long, value_name = "DIR", default_value = "scope-data")]
    pub out: PathBuf,

    /// The plan file to write (`[[probe]] pattern = "MODULE:func"`).
    #[arg(long, value_name = "FILE", default_value = "plan.toml")]
    pub plan_out: PathBuf,

    /// How long the candidates' calls are counted in the kernel.
    #[arg(long, value_name = "D", default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,

    /// At most this many candidates are counted and shown.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub candidates: usize,
}

impl PlanArgs {
    pub fn into_config(self) -> crate::sample::plan::PlanConfig {
        crate::sample::plan::PlanConfig {
            pid: self.pid,
            duration: self.duration,
            budget_pct: self.budget,
            out_dir: self.out,
            plan_out: self.plan_out,
            warmup: self.warmup,
            candidates: self.candidates.max(1),
        }
    }
}

/// `--budget`: `5`, `2.5` or `5%`.
fn parse_budget(s: &str) -> Result<f64, String> {
    match parse_overhead(s)? {
        Overhead(Some(v)) => Ok(v),
        Overhead(None) => Err(format!("'{s}': plan needs a budget in percent")),
    }
}

#[derive(Debug, Args)]
pub struct CalibrateArgs {
    /// Measurements to take (each 3 × 1000 calls per probe shape); the
    /// median is reported.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub rounds: usize,
}

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// Functions to probe, as [MODULE:]GLOB; repeatable.
    ///
    /// GLOB (`*` and `?`) matches demangled names (`parse_*`, `grep_searcher::*`,
    /// `std::vector<*>::push_back`) and raw symbols. MODULE is a glob over the
    /// basename of a mapped file (`libc.so*:malloc`); without it, the main
    /// executable. With no -f, every function of the main executable (up to
    /// --max-functions) is probed.
    #[arg(short = 'f', long = "function", value_name = "PATTERN")]
    pub functions: Vec<String>,

    /// Probe the functions of a plan file (`scope-agent plan` writes one:
    /// `[[probe]] pattern = "MODULE:func"`), with those of -f if both.
    #[arg(long, value_name = "FILE")]
    pub plan: Option<PathBuf>,

    /// Take no on-CPU samples. By default the target's on-CPU stacks are
    /// sampled at 99 Hz into the `samples` table (what the analysis joins
    /// to calls to tell waiting from working); a machine where the
    /// cpu-clock perf event cannot be opened records without them.
    #[arg(long)]
    pub no_samples: bool,

    /// Do not follow the scheduler. By default every context switch and
    /// wake-up of the target's threads is recorded (raw tracepoints on
    /// sched_switch and sched_waking, no tracefs needed): each call gets
    /// `oncpu_ns` and `offcpu_ns`, and each time a thread was off its CPU
    /// is an `offcpu` row with who woke it and the call it was in. It
    /// costs about one probe hit per switch of the target's threads; the
    /// summary says how many there were. A kernel without BTF records
    /// without it (and says so).
    #[arg(long)]
    pub no_sched: bool,

    /// Record a USDT probe (SystemTap SDT, `.note.stapsdt`) each time it
    /// fires, with its arguments as the note's specs give them, into the
    /// `markers` table: NAME, PROVIDER:NAME or MODULE:PROVIDER:NAME, each a
    /// glob (`-u 'libpython3*:python:function__entry'`); repeatable.
    /// Probes behind a semaphore are enabled while attached. With -u and no
    /// -f, no function is probed. `functions --usdt` lists the probes.
    #[arg(short = 'u', long = "usdt", value_name = "PROBE")]
    pub usdt: Vec<String>,

    /// Probe well-known library entry points with their arguments, by
    /// signatures scope knows (these libraries have no DWARF): `pg` (libpq's
    /// PQexec, PQsendQuery, PQexecParams, PQsendQueryParams, PQprepare: the
    /// query text, up to 256 bytes, never the parameters), `tls` (OpenSSL's
    /// SSL_read, SSL_write and their _ex forms: the bytes), `net` (libc's
    /// connect, accept, accept4, send, recv, sendto, recvfrom: socket and
    /// bytes). Comma-separated. A library loaded later is probed when it
    /// appears; one that never does is reported. With --hooks and no -f,
    /// only the hooks are probed.
    #[arg(long, value_name = "tls,pg,net")]
    pub hooks: Option<String>,

    /// Measure this node's clock against UTC with an SNTP (NTP) server,
    /// HOST[:PORT] (port 123 by default), before recording: every time is
    /// then stored in UTC as that server keeps it, and `sessions` says the
    /// offset taken out (`utc_offset_ns`), its bound (`utc_uncertainty_ns`:
    /// half the round trip plus the server's root distance) and how
    /// (`clock_sync`). Agents on several machines that share one store
    /// (--out s3://…) line up on it. A server that does not answer is an
    /// error before anything starts. By default the kernel's NTP state is
    /// used: a synchronized clock is taken as UTC within the kernel's
    /// maximum error; an unsynchronized one is stored as it is, its
    /// bound unknown.
    #[arg(long, value_name = "HOST[:PORT]")]
    pub clock_ref: Option<String>,

    /// With --hooks tls: also keep the first N bytes (1..=256) of the
    /// plaintext SSL_write sends (a NUL ends it early); N then caps the
    /// query text too. Off by default: payloads can hold anything.
    #[arg(long, value_name = "N", requires = "hooks")]
    pub hook_payload: Option<u64>,

    /// Record the arguments and return value of every probed function.
    ///
    /// The first six integer/pointer parameters (rdi, rsi, rdx, rcx, r8, r9
    /// at entry, System V x86-64) go to `calls.args`, one list element per
    /// parameter, typed from DWARF (null for a float or a struct by value);
    /// the integer return value (rax) goes to `calls.ret`. Off by default:
    /// nothing but timing is recorded unless asked. Strings are not followed
    /// (see --arg-strings).
    #[arg(long = "args")]
    pub args: bool,

    /// Record arguments and return value only for the probed functions that
    /// match this [MODULE:]GLOB pattern; repeatable. Does not add probes:
    /// the function must be probed (-f) as well.
    #[arg(short = 'a', long = "args-for", value_name = "PATTERN")]
    pub args_for: Vec<String>,

    /// Also probe the inlined instances of the functions -f matches.
    ///
    /// Each place DWARF says a matching function was inlined
    /// (`functions --inlined` lists them) gets an entry probe on its first
    /// instruction and a `functions` row of its own (`inlined_into`,
    /// `call_file`, `call_line`). An inlined body has no return to probe,
    /// so these calls have a count and a timestamp but no duration
    /// (`calls.flags` 32), nested under the probed call they ran in.
    #[arg(long)]
    pub inlined: bool,

    /// With --args/--args-for: also read the NUL-terminated strings that
    /// `char *` parameters (const char *, unsigned char *; from DWARF)
    /// point to at entry, at most N bytes each (1..=256), into
    /// `calls.arg_strings`. Longer strings are cut to N bytes and end with
    /// "…". Only the first two string parameters of a function are read.
    /// Off by default: strings can hold anything the program handles.
    #[arg(long = "arg-strings", value_name = "N")]
    pub arg_strings: Option<u64>,

    /// Directory for the Parquet files (created 0700 if missing), or
    /// `s3://bucket/prefix`: the files are written to a local spool
    /// (--spool) and each is uploaded whole once finished, to the same
    /// relative key under the prefix. S3 is configured the way AWS tools
    /// are: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    /// AWS_SESSION_TOKEN, AWS_REGION, AWS_PROFILE (~/.aws/credentials and
    /// ~/.aws/config), AWS_ALLOW_HTTP=true for a plain-http endpoint.
    #[arg(short, long, value_name = "DIR|URL", default_value = "scope-data")]
    pub out: PathBuf,

    /// With --out s3://…: where the session's files wait for their upload,
    /// as SPOOL/<session id> (created 0700; removed once everything is
    /// uploaded). /var/tmp survives a reboot, so what an unreachable
    /// endpoint left behind is still there to upload.
    #[arg(long, value_name = "DIR", default_value = crate::storage::upload::DEFAULT_SPOOL_ROOT)]
    pub spool: PathBuf,

    /// With --out s3://…: at the end of the session, how long to keep
    /// retrying uploads that fail before leaving the files in the spool
    /// (`scope-agent upload` sends them later).
    #[arg(long, value_name = "D", default_value = "60s", value_parser = parse_duration)]
    pub upload_wait: Duration,

    /// Stop recording after this long: 500ms, 10s, 2m, 1h.
    #[arg(short, long, value_name = "D", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Size of the kernel-to-agent ring buffer: bytes, or with a K/M/G suffix
    /// (rounded up to a power of two). Larger rings lose fewer events in bursts.
    #[arg(long, value_name = "SIZE", default_value = "8M", value_parser = parse_size)]
    pub ring_size: u32,

    /// With no -f: the most functions of the main executable to probe.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub max_functions: usize,

    /// Rows per Parquet file of calls before a new one is started.
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    pub segment_rows: usize,

    /// Age at which a Parquet file of calls is closed even if not full.
    #[arg(long, value_name = "D", default_value = "10s", value_parser = parse_duration)]
    pub segment_time: Duration,

    /// Functions to list in the end-of-run summary.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub top: usize,

    /// No summary tables and no status lines while recording, only the
    /// one-line results.
    #[arg(short, long)]
    pub quiet: bool,

    /// When stderr is not a terminal, print a status line this often (on a
    /// terminal the status line is rewritten in place four times a second).
    #[arg(long, value_name = "D", default_value = "5s", value_parser = parse_duration)]
    pub status_interval: Duration,

    /// Keep the target's slowdown under PCT percent, or `off` to record
    /// every call. Default: `off` for `record` (a command you start is
    /// usually a test or a benchmark: every count is exact, and scope says
    /// early on what recording every call costs), 5 for `attach` (slowing a
    /// running service is the greater harm).
    ///
    /// With a budget, scope measures the per-call cost of its probes on
    /// this machine and predicts the slowdown of recording every call;
    /// functions too hot for the budget are sampled: probed for one short
    /// window in every N. Their counts become estimates with an interval
    /// (`≈54.0K` in text; `totals` table: exact = false, calls_low,
    /// calls_high), never a partial count shown as a total.
    #[arg(long, value_name = "PCT", value_parser = parse_overhead)]
    pub max_overhead: Option<Overhead>,

    /// How long the governor counts before it decides. `attach` counts in
    /// the kernel without recording; `record` records from the first call
    /// and decides after this long (sooner, from 30 ms on, when the calls
    /// recorded so far already cost ten times the budget).
    #[arg(long, value_name = "D", default_value = "250ms", value_parser = parse_duration)]
    pub warmup: Duration,

    /// How probes are attached: `multi` (one multi-uprobe link per module,
    /// kernel 6.6+), `single` (one perf uprobe per function: slow to
    /// detach, for older kernels), `auto` (multi if the kernel has it).
    #[arg(long, value_name = "MODE", default_value = "auto", value_parser = parse_attach_mode, hide = true)]
    pub attach_mode: AttachModeChoice,
}

/// The budget of `attach` when no `--max-overhead` is given, in percent.
pub const DEFAULT_ATTACH_BUDGET: f64 = 5.0;

/// `--max-overhead`: a budget in percent, or `None` for `off`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Overhead(pub Option<f64>);

/// `5`, `2.5`, `5%`, or `off`.
pub fn parse_overhead(s: &str) -> Result<Overhead, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("off") || t.eq_ignore_ascii_case("none") {
        return Ok(Overhead(None));
    }
    let v: f64 = t
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("'{s}' is not a percentage (try 5, 2.5 or off)"))?;
    if !(v > 0.0 && v <= 1000.0) {
        return Err(format!(
            "'{s}': the overhead budget must be above 0 and at most 1000 percent (or off)"
        ));
    }
    Ok(Overhead(Some(v)))
}

/// `auto`, `multi` or `single`.
pub fn parse_attach_mode(s: &str) -> Result<AttachModeChoice, String> {
    match s {
        "auto" => Ok(AttachModeChoice::Auto),
        "multi" => Ok(AttachModeChoice::Multi),
        "single" => Ok(AttachModeChoice::Single),
        _ => Err(format!(
            "'{s}' is not an attach mode (use auto, multi or single)"
        )),
    }
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    #[command(flatten)]
    pub probe: ProbeArgs,

    /// The command to start, after `--`.
    #[arg(required = true, trailing_var_arg = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

#[derive(Debug, Args)]
pub struct AttachArgs {
    /// The process to attach to (all its threads).
    #[arg(short, long)]
    pub pid: u32,

    #[command(flatten)]
    pub probe: ProbeArgs,
}

#[derive(Debug, Args)]
pub struct FunctionsArgs {
    /// A running process whose mapped files to search (instead of BINARY).
    #[arg(short, long)]
    pub pid: Option<u32>,

    /// BINARY then PATTERN, or only PATTERN with --pid. PATTERN is
    /// [MODULE:]GLOB as for -f (default: every function of the main executable).
    #[arg(value_name = "BINARY|PATTERN", num_args = 0..=2)]
    pub args: Vec<String>,

    /// Print at most this many functions (0: all).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub limit: usize,

    /// More columns: language, times inlined, build-id, and the signature
    /// (return type and parameters) from DWARF.
    #[arg(short, long)]
    pub long: bool,

    /// List the inlined instances of the functions PATTERN matches (name,
    /// containing function, address, call site) instead of the functions.
    #[arg(long, conflicts_with = "long")]
    pub inlined: bool,

    /// List the USDT probes (SystemTap SDT notes) instead: PROVIDER:NAME,
    /// module, address, semaphore, argument specs. PATTERN is then a -u
    /// pattern ([MODULE:][PROVIDER:]NAME); a BINARY's shared libraries are
    /// searched too.
    #[arg(long, conflicts_with_all = ["long", "inlined"])]
    pub usdt: bool,
}

impl ProbeArgs {
    pub fn into_config(self, target: Target) -> Result<SessionConfig, String> {
        let mut patterns = parse_patterns(&self.functions)?;
        if let Some(plan) = &self.plan {
            let from_plan = crate::sample::plan::read_plan(plan)?;
            if from_plan.is_empty() {
                return Err(format!(
                    "--plan {}: the plan chose no function (nothing to probe)",
                    plan.display()
                ));
            }
            for p in from_plan {
                if !patterns.contains(&p) {
                    patterns.push(p);
                }
            }
        }
        let mut args_for = parse_patterns(&self.args_for)?;
        let hooks = match &self.hooks {
            Some(h) => crate::probe::hooks::parse_hooks(h)?,
            None => Vec::new(),
        };
        for p in parse_patterns(&crate::probe::hooks::patterns(&hooks))? {
            if !patterns.contains(&p) {
                patterns.push(p.clone());
            }
            if !args_for.contains(&p) {
                args_for.push(p);
            }
        }
        let hook_payload = match self.hook_payload {
            None => None,
            Some(n @ 1..=256) => Some(n),
            Some(n) => {
                return Err(format!(
                    "--hook-payload {n}: keep 1..={} bytes",
                    scope_common::MAX_STR
                ));
            }
        };
        // Query text, payloads and peer addresses come in string records:
        // the cap is --arg-strings if given, else the payload's, else 256.
        let hook_strings = hooks.iter().any(|h| {
            matches!(
                h,
                crate::probe::hooks::Hook::Pg | crate::probe::hooks::Hook::Net
            )
        }) || hook_payload.is_some();
        let arg_strings_flag = match (self.arg_strings, hook_strings) {
            (Some(n), _) => Some(n),
            (None, true) => Some(hook_payload.unwrap_or(256)),
            (None, false) => None,
        };
        let arg_strings = match arg_strings_flag {
            None => None,
            Some(n) if !self.args && args_for.is_empty() => {
                return Err(format!(
                    "--arg-strings {n} needs --args or --args-for: strings are read only for functions whose arguments are captured"
                ));
            }
            Some(n @ 1..=256) => Some(n as u32),
            Some(n) => {
                return Err(format!(
                    "--arg-strings {n}: the cap must be 1..={} bytes per string",
                    scope_common::MAX_STR
                ));
            }
        };
        // `record` records every call unless asked; `attach` keeps a budget.
        let max_overhead = match (self.max_overhead, &target) {
            (Some(o), _) => o.0,
            (None, Target::Record { .. }) => None,
            (None, Target::Attach { .. }) => Some(DEFAULT_ATTACH_BUDGET),
        };
        // `s3://…`: written to the spool, uploaded from there.
        let out_text = self.out.to_string_lossy().into_owned();
        let (out_dir, upload) = match out_text.split_once("://") {
            Some(("file", _)) => match scope_query::objstore::open_location(&out_text) {
                Ok(scope_query::objstore::Location::Local(p)) => (p, None),
                Ok(_) => unreachable!("file:// is local"),
                Err(e) => return Err(format!("{e:#}")),
            },
            Some(_) => (
                // Absolute, so the `scope-agent upload SPOOL …` line printed
                // for files left behind works from any directory.
                std::path::absolute(&self.spool)
                    .map_err(|e| format!("--spool {}: {e}", self.spool.display()))?,
                Some(UploadConfig {
                    url: out_text,
                    wait: self.upload_wait,
                }),
            ),
            None => (self.out, None),
        };
        Ok(SessionConfig {
            upload,
            arg_strings,
            target,
            patterns,
            args_all: self.args,
            args_for,
            out_dir,
            duration: self.duration,
            ring_bytes: self.ring_size,
            max_functions: self.max_functions,
            segment_rows: self.segment_rows.max(1),
            segment_age: self.segment_time,
            top: self.top,
            quiet: self.quiet,
            status_interval: self.status_interval,
            attach_mode: self.attach_mode,
            inlined: self.inlined,
            max_overhead,
            warmup: self.warmup,
            samples: !self.no_samples,
            sched: !self.no_sched,
            hook_payload: hook_payload.is_some(),
            hooks: !hooks.is_empty(),
            clock_ref: self.clock_ref,
            usdt: self
                .usdt
                .iter()
                .map(|u| u.parse())
                .collect::<Result<_, String>>()?,
        })
    }
}

pub fn parse_patterns(raw: &[String]) -> Result<Vec<Pattern>, String> {
    raw.iter()
        .map(|p| p.parse::<Pattern>().map_err(|e| e.to_string()))
        .collect()
}

/// `500ms`, `10s`, `2m`, `1h`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (try 500ms, 10s, 2m, 1h)"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        _ => return Err(format!("'{s}': unknown unit '{unit}' (use ms, s, m or h)")),
    };
    if !secs.is_finite() || secs <= 0.0 {
        return Err(format!("'{s}': a duration must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// An age for retention: `90m`, `36h`, `7d`, `2w` (a bare number is days).
pub fn parse_age(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let i = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(i);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not an age (try 36h, 7d, 2w)"))?;
    let secs = match unit {
        "s" => v,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        "" | "d" => v * 86400.0,
        "w" => v * 7.0 * 86400.0,
        _ => return Err(format!("'{s}': unknown unit '{unit}' (s, m, h, d or w)")),
    };
    if !secs.is_finite() || secs <= 0.0 {
        return Err(format!("'{s}': an age must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `65536`, `64K`, `8M`, `1G`, `10G` as a 64-bit byte count.
pub fn parse_size64(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m' | 'M') => (&t[..t.len() - 1], 1 << 20),
        Some('g' | 'G') => (&t[..t.len() - 1], 1 << 30),
        Some('t' | 'T') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (try 512M, 2G)"))?;
    if !v.is_finite() || v <= 0.0 {
        return Err(format!("'{s}': a size must be positive"));
    }
    Ok((v * mult as f64) as u64)
}

/// `65536`, `64K`, `8M`, `1G`.
pub fn parse_size(s: &str) -> Result<u32, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1u64 << 10),
        Some('m' | 'M') => (&s[..s.len() - 1], 1 << 20),
        Some('g' | 'G') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let v: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (try 65536, 256K, 8M)"))?;
    let bytes = v.saturating_mul(mult);
    if !(4096..=1 << 30).contains(&bytes) {
        return Err(format!("'{s}': the ring size must be between 4K and 1G"));
    }
    Ok(bytes as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_records_every_call_and_attach_keeps_five_percent_by_default() {
        let config = |argv: &[&str]| -> SessionConfig {
            let cli = Cli::try_parse_from(argv).expect("parses");
            match cli.command {
                Command::Record(a) => a
                    .probe
                    .into_config(Target::Record { argv: a.command })
                    .expect("valid"),
                Command::Attach(a) => a
                    .probe
                    .into_config(Target::Attach { pid: a.pid })
                    .expect("valid"),
                _ => panic!("record or attach"),
            }
        };
        let record = config(&["scope-agent", "record", "--", "true"]);
        assert_eq!(record.max_overhead, None);
        assert_eq!(record.warmup, Duration::from_millis(250));
        let attach = config(&["scope-agent", "attach", "--pid", "1"]);
        assert_eq!(attach.max_overhead, Some(5.0));
        // Given explicitly, either way.
        let record = config(&["scope-agent", "record", "--max-overhead", "5", "--", "true"]);
        assert_eq!(record.max_overhead, Some(5.0));
        let attach = config(&["scope-agent", "attach", "--max-overhead", "off", "-p", "1"]);
        assert_eq!(attach.max_overhead, None);
    }

    #[test]
    fn overhead_budgets() {
        assert_eq!(parse_overhead("5"), Ok(Overhead(Some(5.0))));
        assert_eq!(parse_overhead("2.5%"), Ok(Overhead(Some(2.5))));
        assert_eq!(parse_overhead("off"), Ok(Overhead(None)));
        assert!(parse_overhead("0").is_err());
        assert!(parse_overhead("-3").is_err());
        assert!(parse_overhead("lots").unwrap_err().contains("'lots'"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("8M"), Ok(8 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("2G").is_err());
        assert!(parse_size("1K").is_err());
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn the_command_line_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "scope-agent",
            "record",
            "-f",
            "work_*",
            "--out",
            "/tmp/x",
            "--",
            "./prog",
            "-v",
        ])
        .expect("parses");
        let Command::Record(r) = cli.command else {
            panic!("not record")
        };
        assert_eq!(r.probe.functions, vec!["work_*"]);
        assert!(!r.probe.args && r.probe.args_for.is_empty());
        let cli = Cli::try_parse_from([
            "scope-agent",
            "record",
            "-f",
            "parse_*",
            "-a",
            "parse_int",
            "--args-for",
            "lib*.so:f",
            "--",
            "./prog",
        ])
        .expect("parses");
        let Command::Record(a) = cli.command else {
            panic!("not record")
        };
        assert_eq!(a.probe.args_for, vec!["parse_int", "lib*.so:f"]);
        assert_eq!(
            r.command,
            vec![OsString::from("./prog"), OsString::from("-v")]
        );
    }
}
