//! The cold tier: `scope-agent compact` merges a finished session's small
//! segments into large files sorted for time travel, and applies retention.
//!
//! # What a compacted session looks like
//!
//! ```text
//! <root>/calls/session_id=<id>/part-c00000.parquet, part-c00001.parquet, ...
//! <root>/{losses,agent_metrics,governor,aggregates,functions}/session_id=<id>/part-c00000.parquet
//! <root>/{sessions,totals}/session_id=<id>/part-0.parquet          (one file already: left alone)
//! ```
//!
//! The `c` in `part-cNNNNN.parquet` is the mark: a table directory holding
//! such a file is compacted and is not compacted again; the writer's own
//! names are `part-NNNNN.parquet` (`part-N.parquet` for `functions`), so the
//! usual `*.parquet` globs match both. Files keep the segments' Arrow schema
//! exactly, so one `read_parquet('calls/**/*.parquet', hive_partitioning =
//! true)` reads compacted and uncompacted sessions together.
//!
//! `calls` is sorted by (tid, start_ns, depth): a thread's calls lie together
//! in time order, so the row groups' and pages' min/max statistics let a
//! `stack --tid T --at TIME` read a few pages. Row groups are
//! [`CompactOptions::row_group_rows`] rows (122,880 by default: DuckDB's own
//! row-group size, the unit it parallelises over; at about 4 bytes per call
//! that is about 0.5 MB compressed, small enough that a point query reads
//! little, large enough that the per-group metadata stays negligible), pages
//! 8,192 rows with a column and offset index (page-level statistics), zstd,
//! dictionaries where values repeat (tid, function_id, depth, flags,
//! durations) and delta encoding where they grow (call_id, parent_call_id,
//! start_ns). The other tables are concatenated in segment order.
//!
//! # Crash safety
//!
//! New files are written into a staging tree outside every table directory
//! (`<root>/.scope-compact/`, see [`staging`]), fsynced, their rows counted
//! back from their footers against the segments', and then each table's
//! session directory is exchanged with the staging one in one
//! `renameat2(RENAME_EXCHANGE)`. A query at any moment sees either every old
//! segment or every new file of a table, never neither and never both; the
//! next run deletes whatever the staging tree holds. A session is compacted
//! table by table: after a crash some of its tables may be compacted and
//! others not, each complete, and the next run finishes the rest.
//!
//! # What is never compacted or removed
//!
//! A session without a `sessions` row is still being recorded (the writer
//! writes that row last): compacting it would lose the segments written
//! meanwhile. Retention skips it too, unless its newest file is older than
//! `keep` (a recording killed long ago), and says so. A session with an
//! unreadable segment is left as it is, named in
//! [`CompactReport::skipped`]: compaction never loses rows.

mod merge;
pub mod staging;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use arrow_array::{Array, Int64Array};
use arrow_schema::SchemaRef;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ParquetRecordBatchReaderBuilder};

use staging::{Staging, crash_point, exchange, remove_tree};

/// Every table of the store, in the writer's layout.
pub const TABLES: [&str; 16] = [
    "calls",
    "functions",
    "losses",
    "sessions",
    "totals",
    "agent_metrics",
    "governor",
    "aggregates",
    // On-CPU samples: kept as written (one or a few files per session),
    // counted and removed with their session by retention.
    "samples",
    // The viewer's summaries (one file per session, written at its end):
    // kept as written, like the samples.
    "threads",
    "overview",
    // The scheduler's intervals off CPU (--sched) and USDT probes with
    // their hits (-u): kept as written.
    "offcpu",
    "usdt_probes",
    "markers",
    // What `analyze` wrote about the session: kept, and removed with it.
    "findings",
    "ast",
];
/// The tables compaction rewrites: those the writer may split into several
/// files (`sessions` and `totals` are always one file).
const MERGED: [&str; 6] = [
    "calls",
    "losses",
    "agent_metrics",
    "governor",
    "aggregates",
    "functions",
];
/// File name prefix of a compacted file (`part-c00000.parquet`).
pub const COMPACTED_PREFIX: &str = "part-c";

/// What `compact` does.
#[derive(Clone, Debug)]
pub struct CompactOptions {
    /// The one session to compact; `None`: every finished session not
    /// compacted yet.
    pub session: Option<String>,
    /// Rows per row group of the compacted files.
    pub row_group_rows: usize,
    /// Rows per compacted file; a larger table is split into several files,
    /// each holding the next range of the sort order.
    pub target_file_rows: usize,
    /// Retention by age: remove whole sessions that ended longer ago.
    pub keep: Option<Duration>,
    /// Retention by size: remove the oldest finished sessions until the
    /// store's files take at most this many bytes (checked after
    /// compaction).
    pub max_size: Option<u64>,
    /// Bytes of memory the sort of `calls` may hold before it spills to disk
    /// (the process's peak is higher: readers, writers and the runtime).
    pub memory_limit: usize,
}

impl Default for CompactOptions {
    /// 122,880-row groups, files of 128 groups (15.7 M rows, about 60 MB of
    /// calls), no retention, 256 MiB for the sort.
    fn default() -> Self {
        CompactOptions {
            session: None,
            row_group_rows: 122_880,
            target_file_rows: 122_880 * 128,
            keep: None,
            max_size: None,
            memory_limit: 256 << 20,
        }
    }
}

/// What compaction did to one session. Bytes are every file of the session
/// over all tables (what the session costs on disk).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionCompaction {
    pub session_id: String,
    /// Files of the session (all tables) before and after.
    pub files_before: usize,
    pub files_after: usize,
    /// Bytes of the session (all tables) before and after.
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Bytes of its `calls` files alone, before and after.
    pub calls_bytes_before: u64,
    pub calls_bytes_after: u64,
    /// Rows in `calls`.
    pub calls: u64,
    /// Bytes the sort spilled to disk (0 when it fit in memory).
    pub spilled_bytes: u64,
}

impl SessionCompaction {
    /// Bytes of the session per call row before compaction (`None` without
    /// calls).
    pub fn bytes_per_call_before(&self) -> Option<f64> {
        per_call(self.bytes_before, self.calls)
    }

    /// Bytes of the session per call row after compaction.
    pub fn bytes_per_call_after(&self) -> Option<f64> {
        per_call(self.bytes_after, self.calls)
    }
}

fn per_call(bytes: u64, calls: u64) -> Option<f64> {
    (calls > 0).then(|| bytes as f64 / calls as f64)
}

/// What one `compact` run did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CompactReport {
    /// Sessions compacted by this run.
    pub sessions: Vec<SessionCompaction>,
    /// Sessions removed by retention: id, bytes freed, why (`age` or
    /// `size`).
    pub removed: Vec<(String, u64, &'static str)>,
    /// Sessions left as they were, with the reason (still being recorded,
    /// already compacted, an unreadable segment, ...).
    pub skipped: Vec<(String, String)>,
}

/// One file of the live store.
#[derive(Clone, Debug)]
struct StoreFile {
    path: PathBuf,
    bytes: u64,
    modified: SystemTime,
}

/// Every file of one session, per table.
#[derive(Clone, Debug, Default)]
struct SessionFiles {
    tables: BTreeMap<&'static str, Vec<StoreFile>>,
}

impl SessionFiles {
    fn finished(&self) -> bool {
        self.tables.get("sessions").is_some_and(|f| !f.is_empty())
    }

    fn all(&self) -> impl Iterator<Item = &StoreFile> {
        self.tables.values().flatten()
    }

    fn bytes(&self) -> u64 {
        self.all().map(|f| f.bytes).sum()
    }

    fn newest(&self) -> Option<SystemTime> {
        self.all().map(|f| f.modified).max()
    }

    /// Tables of [`MERGED`] with files, none compacted yet.
    fn to_compact(&self) -> Vec<&'static str> {
        MERGED
            .iter()
            .copied()
            .filter(|t| {
                self.tables
                    .get(t)
                    .is_some_and(|files| !files.is_empty() && !files.iter().any(is_compacted))
            })
            .collect()
    }
}

fn is_compacted(f: &StoreFile) -> bool {
    f.path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(COMPACTED_PREFIX))
}

/// Compacts the store at `root` and applies retention (see the module
/// docs): retention by age first, then compaction, then retention by size
/// (over the compacted sizes). `progress` gets one line per step worth
/// telling, warnings included (`warning: ...`).
///
/// Fails with one line for a root that does not exist or is not a store, a
/// named session that does not exist or is still being recorded, another
/// compaction running on the same store, or an I/O error on the store's own
/// directories. A session that cannot be compacted (an unreadable segment)
/// is skipped, named in [`CompactReport::skipped`], and left intact.
pub fn compact(
    root: &Path,
    opts: &CompactOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<CompactReport> {
    check_store(root)?;
    let staging = Staging::open(root)?;
    staging.recover(progress)?;
    let mut report = CompactReport::default();

    if let Some(keep) = opts.keep {
        retain_by_age(root, &staging, keep, &mut report, progress)?;
    }

    let sessions = scan(root)?;
    let chosen: Vec<&String> = match &opts.session {
        Some(id) => {
            let Some(files) = sessions.get(id) else {
                let known: Vec<&str> = sessions.keys().map(String::as_str).collect();
                bail!(
                    "no session {id} in {} (sessions there: {})",
                    root.display(),
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                );
            };
            if !files.finished() {
                bail!(
                    "session {id} is still being recorded (it has no sessions row yet): compact it once it ends"
                );
            }
            vec![id]
        }
        None => sessions.keys().collect(),
    };
    for id in chosen {
        let files = &sessions[id];
        if !files.finished() {
            let why = "still being recorded (no sessions row yet)".to_owned();
            progress(&format!("session {id}: {why}; not compacted"));
            report.skipped.push((id.clone(), why));
            continue;
        }
        let tables = files.to_compact();
        if tables.is_empty() {
            report
                .skipped
                .push((id.clone(), "already compacted".to_owned()));
            continue;
        }
        match compact_session(root, &staging, id, files, &tables, opts, progress) {
            Ok(done) => report.sessions.push(done),
            Err(e) => {
                let why = format!("{e:#}");
                progress(&format!(
                    "warning: session {id} left uncompacted (nothing lost): {why}"
                ));
                report.skipped.push((id.clone(), why));
            }
        }
    }

    if let Some(max) = opts.max_size {
        retain_by_size(root, &staging, max, &mut report, progress)?;
    }
    staging.tidy(progress)?;
    Ok(report)
}

/// A root that exists, is a directory and holds at least one table.
fn check_store(root: &Path) -> Result<()> {
    let meta = fs::metadata(root).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow!("store {} does not exist", root.display()),
        _ => anyhow!("cannot read store {}: {e}", root.display()),
    })?;
    if !meta.is_dir() {
        bail!("store {} is not a directory", root.display());
    }
    if !TABLES.iter().any(|t| root.join(t).is_dir()) {
        bail!(
            "{} is not a scope store: it has none of the table directories {}",
            root.display(),
            TABLES.join(", ")
        );
    }
    Ok(())
}

/// Every session of the live store (the staging tree is not looked at).
fn scan(root: &Path) -> Result<BTreeMap<String, SessionFiles>> {
    let mut sessions: BTreeMap<String, SessionFiles> = BTreeMap::new();
    for table in TABLES {
        let dir = root.join(table);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => bail!("cannot read {}: {e}", dir.display()),
        };
        for entry in entries {
            let entry = entry.map_err(|e| anyhow!("cannot read {}: {e}", dir.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_prefix("session_id=") else {
                continue;
            };
            if !entry.path().is_dir() {
                continue;
            }
            let files = list_parquet(&entry.path())?;
            sessions
                .entry(id.to_owned())
                .or_default()
                .tables
                .insert(table, files);
        }
    }
    Ok(sessions)
}

/// The visible `*.parquet` files of a partition directory (hidden
/// temporaries excluded), in the writer's order: by segment number.
fn list_parquet(dir: &Path) -> Result<Vec<StoreFile>> {
    let mut files = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| anyhow!("cannot read {}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| anyhow!("cannot read {}: {e}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !name.ends_with(".parquet") {
            continue;
        }
        let meta = entry
            .metadata()
            .map_err(|e| anyhow!("cannot stat {}: {e}", entry.path().display()))?;
        if !meta.is_file() {
            continue;
        }
        files.push(StoreFile {
            path: entry.path(),
            bytes: meta.len(),
            modified: meta.modified().unwrap_or(UNIX_EPOCH),
        });
    }
    files.sort_by_key(|f| segment_order(&f.path));
    Ok(files)
}

/// Sort key of `part-00012.parquet` / `part-3.parquet` / `part-c00001.parquet`:
/// compacted files after segments, each by number.
fn segment_order(path: &Path) -> (u8, u64, String) {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name
        .strip_prefix("part-")
        .and_then(|s| s.strip_suffix(".parquet"));
    match stem {
        Some(s) if s.starts_with('c') => (1, s[1..].parse().unwrap_or(u64::MAX), name),
        Some(s) => (0, s.parse().unwrap_or(u64::MAX), name),
        None => (2, u64::MAX, name),
    }
}

/// The footer of each segment, checked readable, and the one Arrow schema
/// they share.
fn check_segments(table: &str, files: &[StoreFile]) -> Result<(SchemaRef, u64)> {
    let mut schema: Option<SchemaRef> = None;
    let mut rows = 0u64;
    for f in files {
        let file =
            File::open(&f.path).map_err(|e| anyhow!("cannot open {}: {e}", f.path.display()))?;
        let meta = ArrowReaderMetadata::load(&file, Default::default())
            .map_err(|e| anyhow!("corrupt segment {}: {e}", f.path.display()))?;
        rows += u64::try_from(meta.metadata().file_metadata().num_rows()).unwrap_or(0);
        match &schema {
            None => schema = Some(meta.schema().clone()),
            Some(s) if s.fields() == meta.schema().fields() => {}
            Some(_) => bail!(
                "{} has another schema than the other {table} segments of its session",
                f.path.display()
            ),
        }
    }
    let schema = schema.ok_or_else(|| anyhow!("no {table} segments"))?;
    Ok((schema, rows))
}

fn compact_session(
    root: &Path,
    staging: &Staging,
    id: &str,
    files: &SessionFiles,
    tables: &[&'static str],
    opts: &CompactOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<SessionCompaction> {
    // Every segment of every table is checked before anything is swapped,
    // so a corrupt one leaves the whole session as it was.
    let mut checked = Vec::new();
    for table in tables {
        let segs = &files.tables[table];
        checked.push((*table, segs, check_segments(table, segs)?));
    }
    let mut done = SessionCompaction {
        session_id: id.to_owned(),
        files_before: files.all().count(),
        bytes_before: files.bytes(),
        calls_bytes_before: files
            .tables
            .get("calls")
            .map_or(0, |f| f.iter().map(|f| f.bytes).sum()),
        ..Default::default()
    };
    let mut after = files.clone();
    for (table, segs, (schema, rows)) in checked {
        let paths: Vec<PathBuf> = segs.iter().map(|f| f.path.clone()).collect();
        let stage = staging.table_dir(table, id)?;
        let written = if table == "calls" {
            merge::sort_calls(&paths, schema.clone(), &stage, &staging.spill_dir()?, opts)
        } else {
            merge::concat(table, &paths, schema.clone(), &stage, opts)
        };
        let written = match written.and_then(|w| verify(&w, &schema, rows).map(|()| w)) {
            Ok(w) => w,
            Err(e) => {
                remove_tree(&stage)?;
                return Err(e.context(format!("compacting {table}")));
            }
        };
        crash_point("staged");
        let live = root.join(table).join(format!("session_id={id}"));
        exchange(&stage, &live)?;
        crash_point("exchanged");
        remove_tree(&stage)?;
        crash_point("cleaned");
        progress(&format!(
            "session {id}: {table}: {} files → {} ({rows} rows)",
            segs.len(),
            written.files.len()
        ));
        if table == "calls" {
            done.calls = rows;
            done.spilled_bytes = written.spilled_bytes;
        }
        after.tables.insert(table, list_parquet(&live)?);
    }
    if done.calls == 0
        && let Some(calls) = files.tables.get("calls")
        && !calls.is_empty()
    {
        done.calls = count_rows(calls)?;
    }
    done.files_after = after.all().count();
    done.bytes_after = after.bytes();
    done.calls_bytes_after = after
        .tables
        .get("calls")
        .map_or(0, |f| f.iter().map(|f| f.bytes).sum());
    Ok(done)
}

/// The new files, read back from disk: their rows add up to the segments'
/// and their schema is the segments'.
fn verify(written: &merge::Written, schema: &SchemaRef, rows: u64) -> Result<()> {
    let mut back = 0u64;
    for (path, _) in &written.files {
        let file = File::open(path).map_err(|e| anyhow!("cannot open {}: {e}", path.display()))?;
        let meta = ArrowReaderMetadata::load(&file, Default::default())
            .with_context(|| format!("cannot read back {}", path.display()))?;
        if meta.schema().fields() != schema.fields() {
            bail!("{} came out with another schema", path.display());
        }
        back += u64::try_from(meta.metadata().file_metadata().num_rows()).unwrap_or(0);
    }
    if back != rows || written.rows != rows {
        bail!("the new files hold {back} rows, the segments {rows}: not swapped in (nothing lost)");
    }
    Ok(())
}

fn count_rows(files: &[StoreFile]) -> Result<u64> {
    let mut rows = 0;
    for f in files {
        let file =
            File::open(&f.path).map_err(|e| anyhow!("cannot open {}: {e}", f.path.display()))?;
        let meta = ArrowReaderMetadata::load(&file, Default::default())
            .map_err(|e| anyhow!("corrupt segment {}: {e}", f.path.display()))?;
        rows += u64::try_from(meta.metadata().file_metadata().num_rows()).unwrap_or(0);
    }
    Ok(rows)
}

/// `end_ns` of a session's `sessions` row (Unix epoch ns).
fn session_end_ns(files: &SessionFiles) -> Result<i64> {
    let f = files
        .tables
        .get("sessions")
        .and_then(|f| f.first())
        .ok_or_else(|| anyhow!("no sessions row"))?;
    let file = File::open(&f.path).map_err(|e| anyhow!("cannot open {}: {e}", f.path.display()))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .map_err(|e| anyhow!("cannot read {}: {e}", f.path.display()))?;
    for batch in reader {
        let batch = batch.map_err(|e| anyhow!("cannot read {}: {e}", f.path.display()))?;
        let end = batch
            .column_by_name("end_ns")
            .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
            .ok_or_else(|| anyhow!("{} has no Int64 end_ns column", f.path.display()))?;
        if !end.is_empty() && end.is_valid(0) {
            return Ok(end.value(0));
        }
    }
    bail!("{} holds no sessions row", f.path.display())
}

fn system_time_ns(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

fn retain_by_age(
    root: &Path,
    staging: &Staging,
    keep: Duration,
    report: &mut CompactReport,
    progress: &mut dyn FnMut(&str),
) -> Result<()> {
    let now = SystemTime::now();
    let cutoff = system_time_ns(now) - i64::try_from(keep.as_nanos()).unwrap_or(i64::MAX);
    for (id, files) in scan(root)? {
        let end = if files.finished() {
            match session_end_ns(&files) {
                Ok(end) => end,
                Err(e) => {
                    let why = format!("its end is unknown ({e:#}); not removed by --keep");
                    progress(&format!("warning: session {id}: {why}"));
                    report.skipped.push((id, why));
                    continue;
                }
            }
        } else {
            let newest = files.newest().map_or(i64::MAX, system_time_ns);
            if newest >= cutoff {
                continue;
            }
            progress(&format!(
                "session {id} has no sessions row (a recording that never finished) and no file newer than the keep age: removing it"
            ));
            newest
        };
        if end < cutoff {
            let bytes = files.bytes();
            staging.remove_session(&id, "age")?;
            progress(&format!(
                "session {id}: removed (older than the keep age), {bytes} bytes freed"
            ));
            report.removed.push((id, bytes, "age"));
        }
    }
    Ok(())
}

fn retain_by_size(
    root: &Path,
    staging: &Staging,
    max: u64,
    report: &mut CompactReport,
    progress: &mut dyn FnMut(&str),
) -> Result<()> {
    let sessions = scan(root)?;
    let mut total: u64 = sessions.values().map(SessionFiles::bytes).sum();
    if total <= max {
        return Ok(());
    }
    let mut finished: Vec<(i64, String, u64)> = Vec::new();
    for (id, files) in &sessions {
        if !files.finished() {
            continue;
        }
        match session_end_ns(files) {
            Ok(end) => finished.push((end, id.clone(), files.bytes())),
            Err(e) => {
                let why = format!("its end is unknown ({e:#}); not removed by --max-size");
                progress(&format!("warning: session {id}: {why}"));
                report.skipped.push((id.clone(), why));
            }
        }
    }
    finished.sort();
    for (_, id, bytes) in finished {
        if total <= max {
            break;
        }
        staging.remove_session(&id, "size")?;
        total = total.saturating_sub(bytes);
        progress(&format!(
            "session {id}: removed (the store exceeded its maximum size), {bytes} bytes freed"
        ));
        report.removed.push((id, bytes, "size"));
    }
    if total > max {
        progress(&format!(
            "warning: the store still takes {total} bytes (more than {max}): what is left is sessions still being recorded or of unknown age"
        ));
    }
    Ok(())
}
