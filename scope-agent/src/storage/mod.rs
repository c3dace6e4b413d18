//! Storage: Arrow batches → Parquet segments, partitioned by session.
//!
//! # Layout (a data contract: users and DuckDB rely on it exactly)
//!
//! ```text
//! <out_dir>/calls/session_id=<id>/part-<seq>.parquet     (part-00000.parquet, part-00001.parquet, …)
//! <out_dir>/functions/session_id=<id>/part-0.parquet
//! <out_dir>/losses/session_id=<id>/part-<seq>.parquet
//! <out_dir>/sessions/session_id=<id>/part-0.parquet
//! <out_dir>/totals/session_id=<id>/part-0.parquet
//! <out_dir>/agent_metrics/session_id=<id>/part-<seq>.parquet   (only if rows were written)
//! <out_dir>/governor/session_id=<id>/part-<seq>.parquet        (only if rows were written)
//! <out_dir>/aggregates/session_id=<id>/part-<seq>.parquet      (only if rows were written)
//! <out_dir>/samples/session_id=<id>/part-<seq>.parquet         (only when the sampler ran)
//! <out_dir>/offcpu/session_id=<id>/part-<seq>.parquet          (only if rows were written)
//! <out_dir>/usdt_probes/session_id=<id>/part-0.parquet          (only with -u)
//! <out_dir>/markers/session_id=<id>/part-<seq>.parquet         (only if rows were written)
//! ```
//!
//! Columns (see [`schema`](self::schema) for the exact Arrow types):
//!
//! - `calls`: pid, tid, call_id, parent_call_id (null at a root), function_id,
//!   depth (Int32), start_ns (Unix epoch ns), duration_ns (null when unknown),
//!   self_ns (null when unknown), flags, args (List<Int64>, null unless
//!   captured), ret (Int64, null unless captured), arg_strings, oncpu_ns
//!   and offcpu_ns (`--sched`, the default: the call's time on and off its
//!   CPU, summing to duration_ns; null without it, for Go calls and when
//!   the duration is null)
//! - `functions`: function_id, name, symbol, module, build_id, address, size,
//!   file, line
//! - `losses`: cpu, start_ns, end_ns, lost
//! - `sessions`: host, pid, command, start_ns, end_ns, version,
//!   clock_offset_ns, events, calls (over all functions: exact when
//!   calls_exact, else the sum of the estimates; null when one is unknown),
//!   calls_exact, calls_recorded (rows in `calls`), lost, max_overhead_pct
//!   (the governor's budget; null when every call was recorded),
//!   predicted_full_pct and predicted_full_at_least (the slowdown of
//!   recording every call: from the counts and the probes' cost, or what
//!   was measured when every call was), predicted_pct (the slowdown the
//!   session's probes caused by the model, warm-up included), measured_pct, measured_low_pct, measured_high_pct (what the
//!   probes cost the target, measured from its user and system time)
//! - `totals`: one row per probed function: function_id, calls (exact, or
//!   the estimate; null when no honest one exists), exact, calls_low and
//!   calls_high (95% interval; calls_high null when unbounded),
//!   calls_recorded (its rows in `calls`), method (`recorded`, `sampled:
//!   ratio to a related function`, `sampled: cpu time`, `sampled: lower bound only`,
//!   `sampled: unknown`), basis_function_id (the caller a ratio estimate is
//!   scaled by), total_ns and self_ns (sums over its calls, scaled like the
//!   count when sampled; null when the count is unknown)
//! - `agent_metrics`: ts_ns, events, call_rows (calls recorded so far), lost, events_per_s,
//!   ring_fill_pct (null when unknown), agent_cpu_pct, files_written,
//!   rows_buffered
//! - `governor`: one row per decision of the overhead governor: ts_ns,
//!   function_id (null for a session-wide row), action (`calibrate`,
//!   `predict`, `demote`, `promote`, `resample`, `backpressure`,
//!   `unmanaged`), reason (text shown to users), calls_per_s (null when
//!   unknown), predicted_pct (null when unknown), sample_n (1-in-N in force
//!   for the function after the decision; null for a session-wide row),
//!   budget_pct (the `--max-overhead` budget)
//! - `aggregates`: per function and interval where it was not recorded call
//!   by call: function_id, start_ns, end_ns, mode (`warmup` or `sampled`),
//!   sample_n, observed_ns (time within the interval the function was
//!   probed), calls_seen (recorded in its windows: not its calls in the
//!   interval, which `totals` estimates for the session), total_ns (null
//!   for `warmup`), log2_hist (List<UInt64> of 64 elements, element i
//!   counting durations in [2^i, 2^(i+1)) ns, element 0 also 0 and 1 ns;
//!   null for `warmup`)
//! - `samples`: one row per on-CPU sample of the target (cpu-clock, 99 Hz
//!   per CPU): pid, tid, time_ns (Unix epoch ns, the clock of
//!   `calls.start_ns`), cpu, stack (List<UInt64>: user addresses, leaf
//!   first), frames (List<Utf8>: the same frames symbolized, leaf first;
//!   `module+0xoff` or `[unknown]` when no symbol covers one), stack_id
//!   (Int32; null when the kernel could not take the stack)
//! - `offcpu`: one row per interval a thread of the target spent off its CPU
//!   (`--sched`): pid, tid, start_ns, duration_ns, preempted (still
//!   runnable: it waited for a CPU), call_id and function_id (the innermost
//!   recorded call open when it left; null for none), waker_pid, waker_tid,
//!   waker_call_id, waker_function_id (who woke it and the call it was in;
//!   null when preempted or not seen)
//! - `usdt_probes` (`-u`): probe_id, provider, name, module, address,
//!   semaphore (its file offset; null: none), args (the note's specs as
//!   written), arg_count
//! - `markers` (`-u`): one row per USDT probe fired: pid, tid, time_ns,
//!   probe_id, args (List<Int64>: its arguments by the note's specs; an
//!   element null for a form scope cannot read), call_id and function_id
//!   (the innermost recorded call open on the thread; null: none)
//!
//! # `session_id` lives only in the directory name
//!
//! The files hold no `session_id` column; readers get it from the Hive
//! partition key `session_id=<id>`. Checked with DuckDB 1.x/2.0:
//! `read_parquet('out/calls/**/*.parquet', hive_partitioning = true)` yields
//! `session_id` as `VARCHAR` (ids look like `20261125T114825Z-4242`, which
//! DuckDB's partition type detection cannot take for a date or a number), and
//! `calls JOIN functions USING (session_id, function_id)` works. A duplicate
//! column inside the files also worked, but it is redundant (the directory
//! name is the source of truth either way) and costs space in every file.
//! Readers that ignore Hive partitioning see no `session_id`; DuckDB enables
//! it by default for `key=value` paths.
//!
//! # Durability
//!
//! Rows are buffered in memory and written one segment file at a time: when
//! the buffered calls reach [`StoreConfig::segment_max_rows`], or the open
//! segment is older than [`StoreConfig::segment_max_age`]. Each file is
//! written in full under a hidden temporary name (`.part-00003.parquet.tmp`,
//! never matched by `*.parquet`), fsynced, renamed, and its directory fsynced,
//! so a killed agent leaves every earlier segment readable and no partial file
//! under a `.parquet` name. Directories are created 0700 and files 0600.

mod durable;
pub mod overview;
pub mod schema;
pub mod upload;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::basic::Encoding;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{WriterProperties, WriterPropertiesBuilder};
use parquet::schema::types::ColumnPath;

use crate::capture::{
    AggregateRecord, CallRecord, EventSink, GovernorRecord, LossRecord, MarkerRecord,
    MetricsRecord, OffcpuRecord, TotalRecord,
};

/// Zstd level of every column chunk.
const ZSTD_LEVEL: i32 = 3;

/// Where and how a [`ParquetStore`] writes one session.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Root of the dataset; created (0700) if missing.
    pub out_dir: PathBuf,
    /// Partition value, e.g. `20261125T114825Z-4242`.
    pub session_id: String,
    /// A calls (or losses) segment is written once it holds this many rows.
    pub segment_max_rows: usize,
    /// A segment is written once its first row is this old, even if short.
    pub segment_max_age: Duration,
}

/// One row of the `functions` table: a probed function.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FunctionRow {
    /// Dense id, from 1, shared with `calls.function_id`.
    pub function_id: u32,
    /// Demangled name.
    pub name: String,
    /// Symbol as in the ELF symbol table.
    pub symbol: String,
    /// Path of the binary or shared library.
    pub module: String,
    /// GNU build id of the module, hex.
    pub build_id: Option<String>,
    /// Symbol value (link-time virtual address).
    pub address: u64,
    /// Symbol size in bytes.
    pub size: u64,
    /// Source file, from DWARF.
    pub file: Option<String>,
    /// Source line, from DWARF.
    pub line: Option<u32>,
    /// DWARF parameter names, in order (empty string for an unnamed one).
    pub param_names: Vec<String>,
    /// DWARF parameter types, parallel to `param_names` (`int`, `const char *`).
    pub param_types: Vec<String>,
    /// DWARF return type (`void` when none), null without DWARF.
    pub return_type: Option<String>,
    /// Source language from DWARF (`C`, `C++`, `Rust`, `Go`...).
    pub language: Option<String>,
    /// How many inlined instances of the function DWARF lists.
    pub inlined_count: u32,
    /// For an inlined instance (`--inlined`): the function its code sits
    /// in; null for an ordinary function (or when DWARF does not say).
    pub inlined_into: Option<String>,
    /// For an inlined instance: the call site it was inlined at.
    pub call_file: Option<String>,
    pub call_line: Option<u32>,
}

/// The one row of the `sessions` table.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionRow {
    /// Host name of the machine recorded.
    pub host: String,
    /// The kernel's boot id (`/proc/sys/kernel/random/boot_id`).
    pub boot_id: String,
    /// Target process id.
    pub pid: u32,
    /// Target command line.
    pub command: String,
    /// Unix epoch ns when recording started.
    pub start_ns: i64,
    /// Unix epoch ns when recording ended.
    pub end_ns: i64,
    /// scope-agent version.
    pub version: String,
    /// Epoch minus monotonic clock, ns: what turned the kernel's
    /// timestamps into the times stored (UTC correction included).
    pub clock_offset_ns: i64,
    /// The node's realtime clock minus UTC, as measured at start (already
    /// taken out of every time stored; add it back for the node's own
    /// clock).
    pub utc_offset_ns: i64,
    /// The bound on what remains of the node's offset to UTC; `None`
    /// when unknown (an unsynchronized clock).
    pub utc_uncertainty_ns: Option<i64>,
    /// How it was measured: "kernel NTP", "unsynchronized", "sntp ADDR".
    pub clock_sync: String,
    /// Kernel events read.
    pub events: u64,
    /// Calls over all functions: exact when `calls_exact`, else the sum of
    /// the estimates; `None` when some function's count is unknown.
    pub calls: Option<u64>,
    pub calls_exact: bool,
    /// Call rows recorded.
    pub calls_recorded: u64,
    /// Kernel events lost.
    pub lost: u64,
    /// `--max-overhead` (`None`: every call recorded).
    pub max_overhead_pct: Option<f64>,
    /// Predicted slowdown of recording every call, percent (from the
    /// session's counts, estimated where sampled, and the probes' cost; with
    /// every call recorded, what was measured), and whether it is only a
    /// lower bound.
    pub predicted_full_pct: Option<f64>,
    pub predicted_full_at_least: bool,
    /// The slowdown the session's own probes caused by the model (their
    /// events × their cost over the target's own time; warm-up and windows
    /// included), to set against `measured_pct`.
    pub predicted_pct: Option<f64>,
    /// What the probes cost the target, measured: its kernel time in their
    /// handling over its own time, percent, with the range its tick
    /// sampling allows (`measured_pct` null when only a lower bound is
    /// known, `measured_high_pct` null when there is no upper one).
    pub measured_pct: Option<f64>,
    pub measured_low_pct: Option<f64>,
    pub measured_high_pct: Option<f64>,
}

/// What [`ParquetStore::finish`] wrote over the whole session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreSummary {
    /// Every file written, in order.
    pub files: Vec<PathBuf>,
    /// Their total size.
    pub bytes: u64,
    /// Rows in `calls`.
    pub call_rows: u64,
    /// Rows in `losses`.
    pub loss_rows: u64,
}

/// Told the final path of each file once it is durably written (see
/// [`ParquetStore::on_file_finished`]).
pub type FileFinished = std::sync::Arc<dyn Fn(&Path) + Send + Sync>;

/// The files written so far (path, size in bytes), and whom to tell.
#[derive(Default)]
struct Written {
    files: Vec<(PathBuf, u64)>,
    on_file: Option<FileFinished>,
}

/// Rows of one table waiting for their segment to be written.
struct Segment<T> {
    dir: PathBuf,
    schema: SchemaRef,
    to_batch: fn(&[T]) -> std::result::Result<RecordBatch, arrow_schema::ArrowError>,
    rows: Vec<T>,
    /// When the first buffered row arrived.
    opened: Option<Instant>,
    /// Number of the next file.
    seq: u32,
    /// Rows written to files so far.
    written_rows: u64,
    /// Written only if it gets rows (`agent_metrics`, `governor`,
    /// `aggregates`): its directory is created just before its first file.
    optional: bool,
}

impl<T: Clone> Segment<T> {
    fn new(
        dir: PathBuf,
        schema: SchemaRef,
        to_batch: fn(&[T]) -> std::result::Result<RecordBatch, arrow_schema::ArrowError>,
    ) -> Self {
        Segment {
            dir,
            schema,
            to_batch,
            rows: Vec::new(),
            opened: None,
            seq: 0,
            written_rows: 0,
            optional: false,
        }
    }

    /// A table written only if it gets rows (see [`Segment::optional`]).
    fn optional(mut self) -> Self {
        self.optional = true;
        self
    }

    fn is_old(&self, max_age: Duration) -> bool {
        self.opened.is_some_and(|t| t.elapsed() >= max_age)
    }

    /// Buffers `rows` (whatever their number) for the next segment.
    fn buffer(&mut self, rows: &[T]) {
        if rows.is_empty() {
            return;
        }
        if self.rows.is_empty() {
            self.opened = Some(Instant::now());
        }
        self.rows.extend_from_slice(rows);
    }
}

/// Writes one recording session as Parquet files (see the module docs).
///
/// Rows arrive through [`EventSink`]; the function table through
/// [`write_functions`](Self::write_functions); [`finish`](Self::finish)
/// writes the last segments and the session row.
pub struct ParquetStore {
    cfg: StoreConfig,
    props: WriterProperties,
    calls: Segment<CallRecord>,
    losses: Segment<LossRecord>,
    /// Created on its first flush, so a store that never gets metrics
    /// leaves no `agent_metrics` directory.
    metrics: Segment<MetricsRecord>,
    /// Created on its first flush, like `metrics`.
    governor: Segment<GovernorRecord>,
    /// Created on its first flush, like `metrics`.
    aggregates: Segment<AggregateRecord>,
    /// Created on its first flush, like `metrics`.
    offcpu: Segment<OffcpuRecord>,
    /// Created on its first flush, like `metrics`.
    markers: Segment<MarkerRecord>,
    functions_dir: PathBuf,
    sessions_dir: PathBuf,
    totals_dir: PathBuf,
    functions_written: bool,
    /// Files written so far with their sizes.
    files: Written,
    /// The `threads` and `overview` summaries, written at the end.
    overview: overview::Overview,
}

impl ParquetStore {
    /// Creates the partition directories of `cfg.session_id` under
    /// `cfg.out_dir` (0700, `out_dir` too if missing), which also proves the
    /// output directory writable before anything is recorded.
    ///
    /// Fails, naming the path, if a directory cannot be created, or if the
    /// session already has files there (nothing is overwritten).
    pub fn create(cfg: StoreConfig) -> Result<Self> {
        validate_session_id(&cfg.session_id)?;
        let mkdir = |p: &Path| {
            durable::ensure_dir(p)
                .map_err(|e| anyhow!("cannot create output directory {}: {e}", p.display()))
        };
        mkdir(&cfg.out_dir)?;
        let partition = format!("session_id={}", cfg.session_id);
        let dirs: Vec<PathBuf> = ["calls", "functions", "losses", "sessions"]
            .iter()
            .map(|table| cfg.out_dir.join(table).join(&partition))
            .collect();
        for dir in &dirs {
            let mut entries = match std::fs::read_dir(dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => bail!("cannot read {}: {e}", dir.display()),
            };
            if entries.next().is_some() {
                bail!(
                    "{} already exists and is not empty: session {} was recorded before; refusing to overwrite it",
                    dir.display(),
                    cfg.session_id
                );
            }
        }
        for dir in &dirs {
            // The table directory may be shared with earlier sessions: leave
            // its mode alone if it exists. The session directory is ours.
            if let Some(table) = dir.parent() {
                mkdir(table)?;
            }
            mkdir(dir)?;
            std::fs::set_permissions(
                dir,
                std::os::unix::fs::PermissionsExt::from_mode(durable::DIR_MODE),
            )
            .map_err(|e| anyhow!("cannot create output directory {}: {e}", dir.display()))?;
        }
        let level = ZstdLevel::try_new(ZSTD_LEVEL).context("zstd level")?;
        let props = calls_friendly(WriterProperties::builder())
            .set_compression(Compression::ZSTD(level))
            .build();
        let [calls_dir, functions_dir, losses_dir, sessions_dir]: [PathBuf; 4] = dirs
            .try_into()
            .map_err(|_| anyhow!("four partition directories"))?;
        Ok(ParquetStore {
            calls: Segment::new(calls_dir, schema::CALLS.clone(), schema::calls_batch),
            losses: Segment::new(losses_dir, schema::LOSSES.clone(), schema::losses_batch),
            metrics: Segment::new(
                cfg.out_dir.join("agent_metrics").join(&partition),
                schema::AGENT_METRICS.clone(),
                schema::metrics_batch,
            )
            .optional(),
            governor: Segment::new(
                cfg.out_dir.join("governor").join(&partition),
                schema::GOVERNOR.clone(),
                schema::governor_batch,
            )
            .optional(),
            aggregates: Segment::new(
                cfg.out_dir.join("aggregates").join(&partition),
                schema::AGGREGATES.clone(),
                schema::aggregates_batch,
            )
            .optional(),
            offcpu: Segment::new(
                cfg.out_dir.join("offcpu").join(&partition),
                schema::OFFCPU.clone(),
                schema::offcpu_batch,
            )
            .optional(),
            markers: Segment::new(
                cfg.out_dir.join("markers").join(&partition),
                schema::MARKERS.clone(),
                schema::markers_batch,
            )
            .optional(),
            functions_dir,
            sessions_dir,
            totals_dir: cfg.out_dir.join("totals").join(&partition),
            functions_written: false,
            files: Written::default(),
            overview: overview::Overview::default(),
            props,
            cfg,
        })
    }

    /// Writes `functions/session_id=<id>/part-0.parquet` now, durably. A
    /// second call replaces the file atomically.
    pub fn write_functions(&mut self, rows: &[FunctionRow]) -> Result<()> {
        let batch = schema::functions_batch(rows).context("building the functions table")?;
        let dir = self.functions_dir.clone();
        self.write_batch(&dir, "part-0.parquet", &batch)?;
        self.functions_written = true;
        Ok(())
    }

    /// `-u`: writes `usdt_probes/session_id=<id>/part-0.parquet` now (the
    /// probes attached), durably.
    pub fn write_usdt_probes(&mut self, rows: &[crate::probe::usdt::PlannedUsdt]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let batch = schema::usdt_probes_batch(rows).context("building the usdt_probes table")?;
        let dir = self
            .cfg
            .out_dir
            .join("usdt_probes")
            .join(format!("session_id={}", self.cfg.session_id));
        durable::ensure_dir(&dir)
            .map_err(|e| anyhow!("cannot create output directory {}: {e}", dir.display()))?;
        self.write_batch(&dir, "part-0.parquet", &batch)
    }

    /// Writes a segment whose first row is older than
    /// [`StoreConfig::segment_max_age`].
    pub fn tick(&mut self) -> Result<()> {
        let age = self.cfg.segment_max_age;
        let (props, files) = (&self.props, &mut self.files);
        flush_if_old(&mut self.calls, age, props, files)?;
        flush_if_old(&mut self.losses, age, props, files)?;
        flush_if_old(&mut self.metrics, age, props, files)?;
        flush_if_old(&mut self.governor, age, props, files)?;
        flush_if_old(&mut self.aggregates, age, props, files)?;
        flush_if_old(&mut self.offcpu, age, props, files)?;
        flush_if_old(&mut self.markers, age, props, files)
    }

    /// Files finished so far.
    pub fn files_written(&self) -> usize {
        self.files.files.len()
    }

    /// Call rows waiting in memory for their segment file.
    pub fn rows_buffered(&self) -> usize {
        self.calls.rows.len()
    }

    /// Writes the buffered rows, `totals/session_id=<id>/part-0.parquet`
    /// and `sessions/session_id=<id>/part-0.parquet` (last: a session row
    /// means the session's files are complete).
    ///
    /// A table that got no rows at all still gets an empty file
    /// (`part-00000.parquet`, or `part-0.parquet` for `functions`) so that
    /// globs over every table match. Every step is attempted even if an
    /// earlier one failed; the first error is returned.
    pub fn finish(mut self, session: &SessionRow, totals: &[TotalRecord]) -> Result<StoreSummary> {
        let mut first_err: Option<anyhow::Error> = None;
        let mut keep = |r: Result<()>| {
            if let Err(e) = r
                && first_err.is_none()
            {
                first_err = Some(e);
            }
        };
        keep(flush(&mut self.calls, &self.props, &mut self.files));
        if self.calls.seq == 0 && self.calls.rows.is_empty() {
            keep(self.write_empty_calls());
        }
        keep(flush(&mut self.losses, &self.props, &mut self.files));
        if self.losses.seq == 0 && self.losses.rows.is_empty() {
            keep(self.write_empty_losses());
        }
        keep(flush(&mut self.metrics, &self.props, &mut self.files));
        keep(flush(&mut self.governor, &self.props, &mut self.files));
        keep(flush(&mut self.aggregates, &self.props, &mut self.files));
        keep(flush(&mut self.offcpu, &self.props, &mut self.files));
        keep(flush(&mut self.markers, &self.props, &mut self.files));
        if !self.functions_written {
            keep(self.write_functions(&[]));
        }
        keep(
            schema::totals_batch(totals)
                .context("building the totals table")
                .and_then(|batch| {
                    let dir = self.totals_dir.clone();
                    durable::ensure_dir(&dir).map_err(|e| {
                        anyhow!("cannot create output directory {}: {e}", dir.display())
                    })?;
                    self.write_batch(&dir, "part-0.parquet", &batch)
                }),
        );
        // The viewer's summaries: read instead of every call when present.
        let partition = format!("session_id={}", self.cfg.session_id);
        for (table, batch) in [
            ("threads", self.overview.threads_batch().map(Some)),
            ("overview", self.overview.overview_batch()),
        ] {
            keep(
                batch
                    .with_context(|| format!("building the {table} table"))
                    .and_then(|batch| {
                        let Some(batch) = batch else {
                            return Ok(());
                        };
                        let dir = self.cfg.out_dir.join(table).join(&partition);
                        durable::ensure_dir(&dir).map_err(|e| {
                            anyhow!("cannot create output directory {}: {e}", dir.display())
                        })?;
                        self.write_batch(&dir, "part-0.parquet", &batch)
                    }),
            );
        }
        keep(
            schema::session_batch(session)
                .context("building the sessions table")
                .and_then(|batch| {
                    let dir = self.sessions_dir.clone();
                    self.write_batch(&dir, "part-0.parquet", &batch)
                }),
        );
        if let Some(e) = first_err {
            return Err(e);
        }
        Ok(StoreSummary {
            bytes: self.files.files.iter().map(|(_, n)| n).sum(),
            files: self.files.files.into_iter().map(|(p, _)| p).collect(),
            call_rows: self.calls.written_rows,
            loss_rows: self.losses.written_rows,
        })
    }

    /// The configuration this store was created with.
    /// A writer for functions found after recording started (a library
    /// loaded with `dlopen`): each call writes one more
    /// `functions/session_id=<id>/part-<n>.parquet`, n = 1, 2, ..., durably.
    /// Taken before the store moves to the writer thread, so the session
    /// thread can write function rows before it attaches their probes.
    pub fn late_functions(&self) -> LateFunctions {
        LateFunctions {
            dir: self.functions_dir.clone(),
            props: self.props.clone(),
            next_part: 1,
            on_file: self.files.on_file.clone(),
        }
    }

    /// A writer of this session's `samples` files, which hands each file
    /// to the same [`on_file_finished`](Self::on_file_finished) hook.
    pub fn samples_writer(&self) -> Result<SamplesWriter> {
        let mut w = SamplesWriter::new(&self.cfg.out_dir, &self.cfg.session_id)?;
        w.on_file = self.files.on_file.clone();
        Ok(w)
    }

    pub fn config(&self) -> &StoreConfig {
        &self.cfg
    }

    /// Calls `f` with the path of every file from now on, once it is
    /// durably written under its final name (this store's and its
    /// [`late_functions`](Self::late_functions) writer's, if taken after):
    /// the point where `--out s3://…` hands a file to its uploader.
    pub fn on_file_finished(&mut self, f: FileFinished) {
        self.files.on_file = Some(f);
    }

    fn max_rows(&self) -> usize {
        self.cfg.segment_max_rows.max(1)
    }

    fn write_empty_calls(&mut self) -> Result<()> {
        let batch = RecordBatch::new_empty(self.calls.schema.clone());
        let dir = self.calls.dir.clone();
        self.write_batch(&dir, &segment_name(0), &batch)?;
        self.calls.seq = 1;
        Ok(())
    }

    fn write_empty_losses(&mut self) -> Result<()> {
        let batch = RecordBatch::new_empty(self.losses.schema.clone());
        let dir = self.losses.dir.clone();
        self.write_batch(&dir, &segment_name(0), &batch)?;
        self.losses.seq = 1;
        Ok(())
    }

    fn write_batch(&mut self, dir: &Path, name: &str, batch: &RecordBatch) -> Result<()> {
        write_batch(dir, name, batch, &self.props, &mut self.files)
    }
}

impl EventSink for ParquetStore {
    fn write_calls(&mut self, calls: &[CallRecord]) -> Result<()> {
        self.overview.add(calls);
        let max = self.max_rows();
        buffer_capped(&mut self.calls, calls, max, &self.props, &mut self.files)?;
        self.tick()
    }

    fn write_losses(&mut self, losses: &[LossRecord]) -> Result<()> {
        let max = self.max_rows();
        buffer_capped(&mut self.losses, losses, max, &self.props, &mut self.files)?;
        self.tick()
    }

    fn write_metrics(&mut self, metrics: &[MetricsRecord]) -> Result<()> {
        self.metrics.buffer(metrics);
        self.tick()
    }

    fn write_governor(&mut self, rows: &[GovernorRecord]) -> Result<()> {
        self.governor.buffer(rows);
        self.tick()
    }

    fn write_aggregates(&mut self, rows: &[AggregateRecord]) -> Result<()> {
        self.aggregates.buffer(rows);
        self.tick()
    }

    fn write_markers(&mut self, rows: &[MarkerRecord]) -> Result<()> {
        let max = self.max_rows();
        buffer_capped(&mut self.markers, rows, max, &self.props, &mut self.files)?;
        self.tick()
    }

    fn write_offcpu(&mut self, rows: &[OffcpuRecord]) -> Result<()> {
        let max = self.max_rows();
        buffer_capped(&mut self.offcpu, rows, max, &self.props, &mut self.files)?;
        self.tick()
    }

    fn tick(&mut self) -> Result<()> {
        ParquetStore::tick(self)
    }
}

/// `part-00007.parquet`.
fn segment_name(seq: u32) -> String {
    format!("part-{seq:05}.parquet")
}

/// Writes the buffered rows of `seg` as its next file, if it has any (an
/// optional table's directory is created, 0700, before its first file). On
/// failure the rows stay buffered, so a later call retries them.
fn flush<T: Clone>(
    seg: &mut Segment<T>,
    props: &WriterProperties,
    files: &mut Written,
) -> Result<()> {
    if seg.rows.is_empty() {
        return Ok(());
    }
    if seg.optional && seg.seq == 0 {
        durable::ensure_dir(&seg.dir)
            .map_err(|e| anyhow!("cannot create output directory {}: {e}", seg.dir.display()))?;
    }
    let name = segment_name(seg.seq);
    let batch = (seg.to_batch)(&seg.rows)
        .with_context(|| format!("building {}", seg.dir.join(&name).display()))?;
    write_batch(&seg.dir, &name, &batch, props, files)?;
    seg.seq += 1;
    seg.written_rows += seg.rows.len() as u64;
    // Keep the allocation for the next segment.
    seg.rows.clear();
    seg.opened = None;
    Ok(())
}

/// [`flush`] if the segment's first row is older than `max_age`.
fn flush_if_old<T: Clone>(
    seg: &mut Segment<T>,
    max_age: Duration,
    props: &WriterProperties,
    files: &mut Written,
) -> Result<()> {
    if seg.is_old(max_age) {
        flush(seg, props, files)?;
    }
    Ok(())
}

/// Buffers `rows` in segments of at most `max` rows, writing each one that
/// fills up.
fn buffer_capped<T: Clone>(
    seg: &mut Segment<T>,
    mut rows: &[T],
    max: usize,
    props: &WriterProperties,
    files: &mut Written,
) -> Result<()> {
    loop {
        if seg.rows.len() >= max {
            flush(seg, props, files)?;
        }
        if rows.is_empty() {
            return Ok(());
        }
        let take = (max - seg.rows.len()).min(rows.len());
        seg.buffer(&rows[..take]);
        rows = &rows[take..];
    }
}

/// One row of the `samples` table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SampleRow {
    pub pid: u32,
    pub tid: u32,
    /// Unix epoch ns.
    pub time_ns: i64,
    pub cpu: u32,
    /// User addresses, leaf first.
    pub stack: Vec<u64>,
    /// Symbolized frames, leaf first (shared: samples of one stack id
    /// share one list).
    pub frames: std::sync::Arc<[String]>,
    pub stack_id: Option<i32>,
}

/// Writes `samples/session_id=<id>/part-<seq>.parquet` files, durably
/// (0700 directories, 0600 files). Standalone, so `plan` (which records no
/// calls) and the sessions' sampler thread both use it.
pub struct SamplesWriter {
    dir: PathBuf,
    props: WriterProperties,
    next_part: u32,
    on_file: Option<FileFinished>,
}

impl SamplesWriter {
    /// A writer for `out_dir/samples/session_id=<session_id>/`; the
    /// directories are made at the first write.
    pub fn new(out_dir: &Path, session_id: &str) -> Result<Self> {
        validate_session_id(session_id)?;
        let level = ZstdLevel::try_new(ZSTD_LEVEL).context("zstd level")?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(level))
            .set_column_dictionary_enabled(ColumnPath::from("time_ns"), false)
            .set_column_encoding(ColumnPath::from("time_ns"), Encoding::DELTA_BINARY_PACKED)
            .build();
        Ok(Self {
            dir: out_dir
                .join("samples")
                .join(format!("session_id={session_id}")),
            props,
            next_part: 0,
            on_file: None,
        })
    }

    /// Writes `rows` as the next part; returns the file and its size.
    pub fn write(&mut self, rows: &[SampleRow]) -> Result<(PathBuf, u64)> {
        for d in [self.dir.parent(), Some(self.dir.as_path())]
            .into_iter()
            .flatten()
        {
            durable::ensure_dir(d)
                .map_err(|e| anyhow!("cannot create output directory {}: {e}", d.display()))?;
        }
        let batch = schema::samples_batch(rows).context("building the samples table")?;
        let name = segment_name(self.next_part);
        let mut files = Written {
            files: Vec::new(),
            on_file: self.on_file.clone(),
        };
        write_batch(&self.dir, &name, &batch, &self.props, &mut files)?;
        self.next_part += 1;
        files
            .files
            .pop()
            .ok_or_else(|| anyhow::anyhow!("no file written for {name}"))
    }
}

/// See [`ParquetStore::late_functions`].
pub struct LateFunctions {
    dir: PathBuf,
    props: WriterProperties,
    next_part: u32,
    on_file: Option<FileFinished>,
}

impl LateFunctions {
    /// Writes `rows` as the next functions part; returns the file and its size.
    pub fn write(&mut self, rows: &[FunctionRow]) -> Result<(PathBuf, u64)> {
        let batch = schema::functions_batch(rows).context("building the functions table")?;
        let name = format!("part-{}.parquet", self.next_part);
        let mut files = Written {
            files: Vec::new(),
            on_file: self.on_file.clone(),
        };
        write_batch(&self.dir, &name, &batch, &self.props, &mut files)?;
        self.next_part += 1;
        files
            .files
            .pop()
            .ok_or_else(|| anyhow::anyhow!("no file written for {name}"))
    }
}

/// Encodings for the wide, mostly unique columns of `calls`: ids and start
/// times grow almost monotonically, so delta encoding stores them in a few
/// bits each, where a dictionary of unique values only costs. (Durations
/// repeat often enough at µs granularity that the dictionary helps them.)
/// Measured on 300,000 calls of one function: 8.7 → 4.9 bytes per call.
fn calls_friendly(builder: WriterPropertiesBuilder) -> WriterPropertiesBuilder {
    let mut builder = builder;
    for column in ["call_id", "parent_call_id", "start_ns"] {
        builder = builder
            .set_column_dictionary_enabled(ColumnPath::from(column), false)
            .set_column_encoding(ColumnPath::from(column), Encoding::DELTA_BINARY_PACKED);
    }
    builder
}

/// Encodes `batch` as one Parquet file and writes it durably to `dir/name`.
fn write_batch(
    dir: &Path,
    name: &str,
    batch: &RecordBatch,
    props: &WriterProperties,
    files: &mut Written,
) -> Result<()> {
    let bytes =
        encode(batch, props).with_context(|| format!("encoding {}", dir.join(name).display()))?;
    let path = durable::write_file(dir, name, &bytes)?;
    let size = bytes.len() as u64;
    if let Some(on_file) = &files.on_file {
        on_file(&path);
    }
    match files.files.iter_mut().find(|(p, _)| *p == path) {
        Some(entry) => entry.1 = size,
        None => files.files.push((path, size)),
    }
    Ok(())
}

/// Encodes in memory, so that I/O errors come from plain writes with a clean
/// message (and the compressed segment is small next to its rows).
fn encode(batch: &RecordBatch, props: &WriterProperties) -> parquet::errors::Result<Vec<u8>> {
    let mut writer = ArrowWriter::try_new(Vec::new(), batch.schema(), Some(props.clone()))?;
    if batch.num_rows() > 0 {
        writer.write(batch)?;
    }
    writer.into_inner()
}

/// Session ids become directory names: no separators, no `.`/`..`.
fn validate_session_id(id: &str) -> Result<()> {
    if id.is_empty() || id.starts_with('.') || id.contains(['/', '\0']) {
        bail!("invalid session id {id:?}: it must be a plain directory name");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
