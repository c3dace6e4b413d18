//! Exports: a session's calls written in the formats other tools read
//! (`scope-agent export --format perfetto|chrome|folded|flamegraph|pprof|speedscope`).
//!
//! The input is the `calls` table as a stream of Arrow batches ordered by
//! (tid, start_ns, depth); the output goes to any [`Write`]. Nothing holds
//! the calls: [`stack`] walks them with one stack of open calls (the thread
//! being read), and each format is a [`stack::CallSink`] that writes an
//! event as a call opens or closes (perfetto, chrome, speedscope) or adds
//! its self time to its stack path (folded, flamegraph, pprof: memory grows
//! with the distinct paths, not with the calls).
//!
//! # What the intervals are
//!
//! Every format sees the same intervals, made properly nested so that the
//! viewers, which rebuild nesting from times, agree with the recorded one:
//!
//! - a call with an unknown duration (`duration_ns` null: its return was not
//!   seen, or it is an inlined instance, or deeper than the kernel's return
//!   probe limit) is open until the session end (`ExportMeta::end_ns`), and
//!   is counted in [`ExportStats::open_calls`];
//! - a call ends no later than its parent (a child that outlived its parent,
//!   possible with `UNWOUND` or lost events, is cut at the parent's end),
//!   and no later than the start of the next call at its depth or above;
//! - self time is the call's interval less its children's intervals, so the
//!   self times of a root's subtree add up to the root's duration. For a
//!   complete call this is the recorder's `self_ns`.
//!
//! The nesting comes from `depth` and times, not `parent_call_id`: a call is
//! the child of the innermost open call on its thread with a smaller depth
//! that has not ended, so a row whose parent was not recorded (sampled out)
//! still nests under what was running.

mod chrome;
mod columns;
mod flamegraph;
mod folded;
pub mod otlp;
mod paths;
mod perfetto;
mod pprof;
mod samples;
mod speedscope;
mod stack;

pub use samples::export_samples;

use std::fmt;
use std::io::{self, Write};
use std::str::FromStr;

use anyhow::{Result, bail};
use arrow_array::RecordBatch;
use rustc_hash::FxHashMap;

/// An export format (`--format NAME`, see [`Format::name`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// Perfetto protobuf trace (`perfetto.protos.Trace`): one track per
    /// thread, slices begin/end, arguments as debug annotations; opens in
    /// ui.perfetto.dev.
    Perfetto,
    /// Chrome trace event JSON (`{"traceEvents": [...]}`): one complete
    /// ("X") event per call, times in µs with ns kept as decimals; opens in
    /// ui.perfetto.dev and chrome://tracing.
    Chrome,
    /// Folded stacks (`main;run;leaf 1234`), one line per distinct stack
    /// path, weighted by self time in ns; the input of flamegraph tools.
    Folded,
    /// An SVG flame graph of the folded stacks (inferno), widths by self
    /// time in ns.
    Flamegraph,
    /// pprof `profile.proto`, gzip-compressed, for `go tool pprof`.
    Pprof,
    /// speedscope's file format (JSON): one evented profile per thread.
    Speedscope,
}

impl Format {
    /// Every format, in the order the CLI lists them.
    pub const ALL: [Format; 6] = [
        Format::Perfetto,
        Format::Chrome,
        Format::Folded,
        Format::Flamegraph,
        Format::Pprof,
        Format::Speedscope,
    ];

    /// The name `--format` takes.
    pub fn name(self) -> &'static str {
        match self {
            Format::Perfetto => "perfetto",
            Format::Chrome => "chrome",
            Format::Folded => "folded",
            Format::Flamegraph => "flamegraph",
            Format::Pprof => "pprof",
            Format::Speedscope => "speedscope",
        }
    }

    /// The file name extension the format's readers expect (no dot), for a
    /// default output name.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Perfetto => "perfetto-trace",
            Format::Chrome => "json",
            Format::Folded => "folded",
            Format::Flamegraph => "svg",
            Format::Pprof => "pb.gz",
            Format::Speedscope => "speedscope.json",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match Format::ALL.iter().find(|f| f.name() == s) {
            Some(f) => Ok(*f),
            None => {
                let names: Vec<_> = Format::ALL.iter().map(|f| f.name()).collect();
                bail!(
                    "unknown export format '{s}' (expected one of {})",
                    names.join(", ")
                )
            }
        }
    }
}

/// What an export shows of a probed function (a row of `functions`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FunctionInfo {
    /// Demangled name, shown without the module.
    pub name: String,
    /// Path of the binary or shared library.
    pub module: String,
    /// Source file, from DWARF.
    pub file: Option<String>,
    /// Source line of the function, from DWARF.
    pub line: Option<u32>,
    /// Parameter names, naming the captured arguments (`args[i]` is
    /// `param_names[i]`; `arg<i>` past the end).
    pub param_names: Vec<String>,
}

/// The session an export is made of.
#[derive(Clone, Copy, Debug)]
pub struct ExportMeta<'a> {
    /// The session's id, written where the format has room for a title.
    pub session_id: &'a str,
    /// The traced process (for calls batches without a `pid` column).
    pub pid: u32,
    /// The traced command line, the process name in the trace.
    pub command: &'a str,
    /// Session start, Unix epoch ns: time zero of the formats that count
    /// from an origin (chrome, speedscope).
    pub start_ns: i64,
    /// Session end, Unix epoch ns: where a call with an unknown duration ends.
    pub end_ns: i64,
    /// The session's functions by `function_id`; an id missing here is
    /// shown as `function#<id>`.
    pub functions: &'a FxHashMap<u32, FunctionInfo>,
    /// Thread names by tid, when known; else threads are `thread <tid>`.
    pub thread_names: Option<&'a FxHashMap<u32, String>>,
}

/// What an export wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExportStats {
    /// Calls read (rows of the batches).
    pub calls: u64,
    /// Distinct threads (pid, tid) among them.
    pub threads: u64,
    /// Bytes written to the output.
    pub bytes: u64,
    /// Calls whose duration was unknown (null), exported as open until the
    /// session end (or their parent's end).
    pub open_calls: u64,
}

/// Writes `calls` (batches of the `calls` table ordered by (tid, start_ns,
/// depth), see [`columns`] for the columns read) to `out` in `format`.
/// Memory stays flat in the number of calls: events stream out as the calls
/// are read, and the aggregated formats (folded, flamegraph, pprof) hold one
/// entry per distinct stack path. The output is flushed before returning.
///
/// Errors name the problem: a missing or mistyped column, calls out of
/// order (a thread seen again after another, or a start before the previous
/// one), a failed write, or an error of the input iterator.
pub fn export(
    format: Format,
    calls: &mut dyn Iterator<Item = Result<RecordBatch>>,
    meta: &ExportMeta,
    out: &mut dyn Write,
) -> Result<ExportStats> {
    let mut counted = CountingWriter {
        inner: out,
        bytes: 0,
    };
    let walked = {
        let mut buffered = io::BufWriter::with_capacity(1 << 16, &mut counted);
        let walked = match format {
            Format::Perfetto => perfetto::write(calls, meta, &mut buffered)?,
            Format::Chrome => chrome::write(calls, meta, &mut buffered)?,
            Format::Folded => folded::write(calls, meta, &mut buffered)?,
            Format::Flamegraph => flamegraph::write(calls, meta, &mut buffered)?,
            Format::Pprof => pprof::write(calls, meta, &mut buffered)?,
            Format::Speedscope => speedscope::write(calls, meta, &mut buffered)?,
        };
        buffered.flush().map_err(write_error)?;
        walked
    };
    Ok(ExportStats {
        calls: walked.calls,
        threads: walked.threads,
        bytes: counted.bytes,
        open_calls: walked.open_calls,
    })
}

/// The error of a failed write to the output.
fn write_error(e: io::Error) -> anyhow::Error {
    anyhow::anyhow!("cannot write the export: {e}")
}

/// Counts the bytes that reach the output.
struct CountingWriter<'a> {
    inner: &'a mut dyn Write,
    bytes: u64,
}

impl Write for CountingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The name shown for `function_id`: its demangled name, without module.
fn function_name<'m>(meta: &'m ExportMeta, function_id: u32) -> std::borrow::Cow<'m, str> {
    match meta.functions.get(&function_id) {
        Some(f) => std::borrow::Cow::Borrowed(f.name.as_str()),
        None => std::borrow::Cow::Owned(format!("function#{function_id}")),
    }
}

/// The name shown for a thread: its name when known, else `thread <tid>`.
fn thread_name(meta: &ExportMeta, tid: u32) -> String {
    meta.thread_names
        .and_then(|names| names.get(&tid))
        .cloned()
        .unwrap_or_else(|| format!("thread {tid}"))
}

/// Exports one session of an open store: its calls read in (tid, start_ns,
/// depth) order (the sort spills to disk under the store's memory limit;
/// only the columns the formats use are read), its functions, and its
/// `sessions` row for the process and time range. `tid` narrows the export
/// to one thread.
pub fn export_session(
    store: &crate::Store,
    format: Format,
    tid: Option<u32>,
    out: &mut dyn Write,
) -> Result<ExportStats> {
    export_session_with(store, format, tid, false, out)
}

/// [`export_session`], and with `offcpu` the folded stacks or flame graph
/// of the calls' time off CPU (`calls.offcpu_ns`, recorded by `--sched`):
/// a path's width is its calls' off-CPU time less their children's, so
/// where the threads blocked or waited for a CPU.
pub fn export_session_with(
    store: &crate::Store,
    format: Format,
    tid: Option<u32>,
    offcpu: bool,
    out: &mut dyn Write,
) -> Result<ExportStats> {
    use crate::cols;
    let span = crate::travel::session_span(store)?;
    let mut functions: FxHashMap<u32, FunctionInfo> = FxHashMap::default();
    let fschema = &store.tables()["functions"].schema;
    let pnames = if fschema.field_with_name("param_names").is_ok() {
        "param_names"
    } else {
        "CAST(NULL AS VARCHAR) AS param_names"
    };
    for b in store.sql(&format!(
        "SELECT function_id, name, module, file, line, {pnames} FROM functions"
    ))? {
        let id = cols::i64s(&b, "function_id")?;
        let name = cols::strs(&b, "name")?;
        let module = cols::strs(&b, "module")?;
        let file = cols::strs(&b, "file")?;
        let line = cols::i64s(&b, "line")?;
        let params = cols::str_lists(&b, "param_names")?;
        for i in 0..b.num_rows() {
            functions.insert(
                id[i].unwrap_or(0) as u32,
                FunctionInfo {
                    name: name[i].clone().unwrap_or_default(),
                    module: module[i].clone().unwrap_or_default(),
                    file: file[i].clone(),
                    line: line[i].map(|l| l as u32),
                    param_names: params[i]
                        .clone()
                        .unwrap_or_default()
                        .into_iter()
                        .map(Option::unwrap_or_default)
                        .collect(),
                },
            );
        }
    }
    let (mut pid, mut command) = (0u32, String::new());
    if store.has_table("sessions") {
        for b in store.sql("SELECT pid, command FROM sessions")? {
            if b.num_rows() > 0 {
                pid = cols::i64s(&b, "pid")?[0].unwrap_or(0) as u32;
                command = cols::strs(&b, "command")?[0].clone().unwrap_or_default();
            }
        }
    }
    let cschema = &store.tables()["calls"].schema;
    let mut columns = vec![
        "pid",
        "tid",
        "call_id",
        "parent_call_id",
        "function_id",
        "depth",
        "start_ns",
        "duration_ns",
        "self_ns",
        "flags",
    ];
    for optional in ["args", "ret", "arg_strings"] {
        if cschema.field_with_name(optional).is_ok() {
            columns.push(optional);
        }
    }
    if offcpu {
        if !matches!(format, Format::Folded | Format::Flamegraph) {
            bail!(
                "--offcpu draws time off CPU by stack: use --format flamegraph or folded, not {}",
                format.name()
            );
        }
        let recorded = cschema.field_with_name("offcpu_ns").is_ok()
            && store
                .sql("SELECT count(offcpu_ns) AS n FROM calls")?
                .first()
                .map(|b| cols::i64s(b, "n"))
                .transpose()?
                .and_then(|v| v.first().copied().flatten())
                .unwrap_or(0)
                > 0;
        if !recorded {
            bail!(
                "session {} has no off-CPU time: it was recorded with --no-sched, by an older agent, or on a kernel without BTF",
                span.id
            );
        }
        columns.push("offcpu_ns AS weight_ns");
    }
    let filter = match tid {
        Some(t) => format!("WHERE tid = {t}"),
        None => String::new(),
    };
    let sql = format!(
        "SELECT {} FROM calls {filter} ORDER BY tid, start_ns, depth",
        columns.join(", ")
    );
    let mut batches = store.stream(&sql)?;
    let meta = ExportMeta {
        session_id: &span.id,
        pid,
        command: &command,
        start_ns: span.start_ns,
        end_ns: span.end_ns,
        functions: &functions,
        thread_names: None,
    };
    export(format, &mut batches, &meta, out)
}

/// `export --diff BASE`: the folded stacks of `base` and `new` (one session
/// each) set side by side, as inferno's differential folded lines
/// (`stack base_ns new_ns`) or a differential flame graph: widths are the
/// new session's time, red where it spent more than the base, blue where
/// less. Times are not normalised: they are both in ns of wall time.
pub fn export_diff(
    base: &crate::Store,
    new: &crate::Store,
    format: Format,
    tid: Option<u32>,
    out: &mut dyn Write,
) -> Result<ExportStats> {
    if !matches!(format, Format::Folded | Format::Flamegraph) {
        bail!("--diff draws folded stacks or a flame graph, not {format}");
    }
    let mut before = Vec::new();
    export_session(base, Format::Folded, tid, &mut before)?;
    let mut after = Vec::new();
    let stats = export_session(new, Format::Folded, tid, &mut after)?;
    let mut lines = Vec::new();
    inferno::differential::from_readers(
        inferno::differential::Options::default(),
        &before[..],
        &after[..],
        &mut lines,
    )
    .map_err(|e| anyhow::anyhow!("cannot set the two sessions' stacks side by side: {e}"))?;
    let mut counted = CountingWriter {
        inner: out,
        bytes: 0,
    };
    match format {
        Format::Folded => counted.write_all(&lines).map_err(write_error)?,
        _ => {
            let text = String::from_utf8_lossy(&lines);
            let title = |s: &crate::Store| {
                crate::travel::session_span(s).map_or_else(|_| "?".to_string(), |x| x.id)
            };
            let mut options = inferno::flamegraph::Options::default();
            options.title = format!("{} → {}", title(base), title(new));
            options.subtitle = Some(
                "widths: the new session's wall time in ns; red: more than the base, blue: less"
                    .to_string(),
            );
            options.count_name = "ns".to_owned();
            options.name_type = "Function:".to_owned();
            options.min_width = 0.0;
            if text.trim().is_empty() {
                bail!("neither session has a call to draw");
            }
            inferno::flamegraph::from_lines(&mut options, text.lines(), &mut counted)
                .map_err(|e| anyhow::anyhow!("cannot write the flame graph: {e}"))?;
        }
    }
    counted.flush().map_err(write_error)?;
    Ok(ExportStats {
        bytes: counted.bytes,
        ..stats
    })
}
