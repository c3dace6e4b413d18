//! The hot tier: the last seconds of a running recording, kept in the agent
//! as Arrow batches and queryable while it records.
//!
//! The writer thread hands every batch of finished calls to [`HotTier`]
//! (a clone of the rows; they become an Arrow batch every 64 K rows or
//! when a query comes). A server thread listens on a Unix socket,
//! `/run/scope/live-<target pid>.sock` (directory 0700, socket 0600: only
//! root, who runs the agent, can ask), and answers SQL over two tables:
//! `calls` (the hot rows, with `session_id`) and `functions` (the probed
//! functions), as `scope-agent query --live [--pid P]` sends it.
//!
//! Protocol, one request per connection: the client writes the SQL's length
//! (u32, little-endian) and its UTF-8 bytes; the server answers one status
//! byte (0: an Arrow IPC stream of the result follows; 1: an error message
//! in UTF-8 follows) and closes. Queries run in the agent's process on a
//! thread of their own with a 30 s limit, so a slow query never stalls the
//! recording's writer.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use arrow_array::{ArrayRef, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};

use crate::capture::CallRecord;
use crate::storage::FunctionRow;

/// Where live sockets are.
pub const LIVE_DIR: &str = "/run/scope";

/// Rows kept at most, whatever the window (about 60 bytes each as Arrow).
const MAX_ROWS: usize = 4_000_000;

/// Rows gathered before they become one Arrow batch.
const BATCH_ROWS: usize = 65_536;

/// The longest a live query may run.
const QUERY_LIMIT: Duration = Duration::from_secs(30);

/// The socket of the agent recording `pid`.
pub fn socket_path(pid: u32) -> PathBuf {
    Path::new(LIVE_DIR).join(format!("live-{pid}.sock"))
}

/// The last `window` of calls, as Arrow batches.
pub struct HotTier {
    inner: Mutex<Inner>,
    window_ns: i64,
    session_id: String,
    functions: RecordBatch,
}

struct Inner {
    /// Converted batches, oldest first, with their newest start.
    batches: VecDeque<(i64, RecordBatch)>,
    rows: usize,
    /// Rows not yet converted.
    pending: Vec<CallRecord>,
    newest_ns: i64,
}

impl HotTier {
    /// A tier keeping `window` of calls of session `session_id`, whose
    /// probed functions are `functions`.
    pub fn new(window: Duration, session_id: &str, functions: &[FunctionRow]) -> Result<Self> {
        Ok(HotTier {
            inner: Mutex::new(Inner {
                batches: VecDeque::new(),
                rows: 0,
                pending: Vec::new(),
                newest_ns: i64::MIN,
            }),
            window_ns: window.as_nanos().min(i64::MAX as u128) as i64,
            session_id: session_id.to_string(),
            functions: crate::storage::schema::functions_batch(functions)?,
        })
    }

    /// Adds finished calls (the writer thread, after each batch).
    pub fn push(&self, calls: &[CallRecord]) {
        if calls.is_empty() {
            return;
        }
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.pending.extend_from_slice(calls);
        if let Some(max) = calls.iter().map(|c| c.start_ns).max() {
            g.newest_ns = g.newest_ns.max(max);
        }
        if g.pending.len() >= BATCH_ROWS {
            self.convert(&mut g);
        }
    }

    fn convert(&self, g: &mut Inner) {
        if g.pending.is_empty() {
            return;
        }
        let rows = std::mem::take(&mut g.pending);
        let newest = rows.iter().map(|c| c.start_ns).max().unwrap_or(i64::MIN);
        if let Ok(b) = crate::storage::schema::calls_batch(&rows) {
            g.rows += b.num_rows();
            g.batches.push_back((newest, b));
        }
        // Out of the window, or over the cap: the oldest go.
        let horizon = g.newest_ns.saturating_sub(self.window_ns);
        while let Some((newest, b)) = g.batches.front() {
            if *newest < horizon || g.rows > MAX_ROWS {
                g.rows -= b.num_rows();
                g.batches.pop_front();
            } else {
                break;
            }
        }
    }

    /// The hot calls (with `session_id`) and the functions, for a query.
    fn snapshot(&self) -> Result<(Vec<RecordBatch>, RecordBatch)> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        self.convert(&mut g);
        let batches = g
            .batches
            .iter()
            .map(|(_, b)| with_session(b, &self.session_id))
            .collect::<Result<Vec<_>>>()?;
        Ok((batches, with_session(&self.functions, &self.session_id)?))
    }
}

/// `batch` with a `session_id` column appended, as the store's readers see
/// every table.
fn with_session(batch: &RecordBatch, id: &str) -> Result<RecordBatch> {
    let mut fields: Vec<Arc<Field>> = batch.schema().fields().iter().cloned().collect();
    fields.push(Arc::new(Field::new("session_id", DataType::Utf8, false)));
    let mut cols: Vec<ArrayRef> = batch.columns().to_vec();
    cols.push(Arc::new(StringArray::from(vec![id; batch.num_rows()])));
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?)
}

/// The listening socket and its thread; the socket file goes when this is
/// dropped.
pub struct LiveServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LiveServer {
    /// Listens on the socket for `pid` (replacing a stale one of an agent
    /// that is gone; refusing when another agent is live on it).
    pub fn start(pid: u32, tier: Arc<HotTier>) -> Result<LiveServer> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(LIVE_DIR)
            .with_context(|| format!("cannot create {LIVE_DIR}"))?;
        let path = socket_path(pid);
        if path.exists() {
            if UnixStream::connect(&path).is_ok() {
                bail!(
                    "{}: another agent is recording pid {pid} and answering live queries",
                    path.display()
                );
            }
            let _ = std::fs::remove_file(&path);
        }
        // Created under a umask that leaves no access to others, then set
        // 0600 before anyone could connect through the 0700 directory.
        let listener = UnixListener::bind(&path)
            .with_context(|| format!("cannot listen on {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("scope-live".into())
            .spawn(move || serve(listener, tier, stop2))?;
        Ok(LiveServer {
            path,
            stop,
            thread: Some(thread),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for LiveServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(listener: UnixListener, tier: Arc<HotTier>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let tier = Arc::clone(&tier);
                // One thread per query: a slow one never blocks the next.
                let _ = std::thread::Builder::new()
                    .name("scope-live-q".into())
                    .spawn(move || answer(stream, &tier));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn answer(mut stream: UnixStream, tier: &HotTier) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let result = read_request(&mut stream).and_then(|sql| run_query(tier, &sql));
    match result {
        Ok(batches) => {
            let _ = stream.write_all(&[0]);
            let schema = batches
                .first()
                .map(|b| b.schema())
                .unwrap_or_else(|| Arc::new(Schema::empty()));
            if let Ok(mut w) =
                datafusion::arrow::ipc::writer::StreamWriter::try_new(&mut stream, &schema)
            {
                for b in &batches {
                    if w.write(b).is_err() {
                        return;
                    }
                }
                let _ = w.finish();
            }
        }
        Err(e) => {
            let _ = stream.write_all(&[1]);
            let _ = stream.write_all(format!("{e:#}").as_bytes());
        }
    }
}

fn read_request(stream: &mut UnixStream) -> Result<String> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > 1 << 20 {
        bail!("a live query is at most 1 MiB of SQL");
    }
    let mut sql = vec![0u8; len];
    stream.read_exact(&mut sql)?;
    String::from_utf8(sql).map_err(|_| anyhow!("the SQL is not UTF-8"))
}

fn run_query(tier: &HotTier, sql: &str) -> Result<Vec<RecordBatch>> {
    use datafusion::datasource::MemTable;
    use datafusion::prelude::SessionContext;
    let (calls, functions) = tier.snapshot()?;
    let ctx = SessionContext::new();
    let calls_schema = match calls.first() {
        Some(b) => b.schema(),
        None => with_session(
            &RecordBatch::new_empty(crate::storage::schema::CALLS.clone()),
            "",
        )?
        .schema(),
    };
    ctx.register_table(
        "calls",
        Arc::new(MemTable::try_new(calls_schema, vec![calls])?),
    )?;
    ctx.register_table(
        "functions",
        Arc::new(MemTable::try_new(
            functions.schema(),
            vec![vec![functions]],
        )?),
    )?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let run = async {
            let df = ctx.sql(sql).await?;
            df.collect().await
        };
        match tokio::time::timeout(QUERY_LIMIT, run).await {
            Ok(r) => r.map_err(|e| anyhow!("{e}")),
            Err(_) => bail!("the live query ran past {QUERY_LIMIT:?} and was stopped"),
        }
    })
}

/// `query --live`: sends `sql` to the agent recording `pid` (or the only
/// live agent) and returns the result's batches.
pub fn query(pid: Option<u32>, sql: &str) -> Result<(Arc<Schema>, Vec<RecordBatch>)> {
    let path = match pid {
        Some(p) => {
            let path = socket_path(p);
            if !path.exists() {
                bail!(
                    "no live agent for pid {p} ({} does not exist): record or attach must be running; \
                     without --live, query reads the files written so far",
                    path.display()
                );
            }
            path
        }
        None => {
            let mut found: Vec<PathBuf> = std::fs::read_dir(LIVE_DIR)
                .map(|d| {
                    d.flatten()
                        .map(|e| e.path())
                        .filter(|p| {
                            p.file_name()
                                .and_then(|n| n.to_str())
                                .is_some_and(|n| n.starts_with("live-") && n.ends_with(".sock"))
                        })
                        .filter(|p| UnixStream::connect(p).is_ok())
                        .collect()
                })
                .unwrap_or_default();
            found.sort();
            match found.len() {
                0 => bail!(
                    "no live agent: no socket answers in {LIVE_DIR} (record or attach must be running; \
                     without --live, query reads the files written so far)"
                ),
                1 => found.pop().expect("one"),
                _ => bail!(
                    "several live agents ({}): choose one with --pid",
                    found
                        .iter()
                        .filter_map(|p| p.file_name()?.to_str())
                        .map(|n| n.trim_start_matches("live-").trim_end_matches(".sock"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
    };
    let mut stream = UnixStream::connect(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            anyhow!(
                "{}: permission denied (live queries need root, like the agent)",
                path.display()
            )
        } else {
            anyhow!("{}: no live agent answers ({e})", path.display())
        }
    })?;
    stream.set_read_timeout(Some(QUERY_LIMIT + Duration::from_secs(5)))?;
    stream.write_all(&(sql.len() as u32).to_le_bytes())?;
    stream.write_all(sql.as_bytes())?;
    let mut status = [0u8; 1];
    stream
        .read_exact(&mut status)
        .context("the live agent closed the connection")?;
    if status[0] != 0 {
        let mut msg = String::new();
        stream.read_to_string(&mut msg)?;
        bail!(
            "live query: {msg}\n(live tables: calls (the last seconds of the recording) and functions)"
        );
    }
    let reader = datafusion::arrow::ipc::reader::StreamReader::try_new(stream, None)?;
    let schema = reader.schema();
    let batches = reader.collect::<Result<Vec<_>, _>>()?;
    Ok((schema, batches))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(id: u64, start_ns: i64) -> CallRecord {
        CallRecord {
            pid: 1,
            tid: 1,
            call_id: id,
            parent_call_id: 0,
            parent_function_id: 0,
            function_id: 1,
            depth: 0,
            start_ns,
            duration_ns: 10,
            self_ns: 10,
            flags: 0,
            args: None,
            ret: None,
            arg_strings: None,
            offcpu_ns: None,
            request_id: None,
        }
    }

    #[test]
    fn the_tier_keeps_the_window_and_answers_sql() {
        let f = FunctionRow {
            function_id: 1,
            name: "leaf".into(),
            ..FunctionRow::default()
        };
        let tier = HotTier::new(Duration::from_secs(1), "s1", &[f]).unwrap();
        // 300 K calls over 6 s, converted once 65,536 are pending (1.3 s):
        // the three batches wholly older than the last second go.
        let calls: Vec<CallRecord> = (0..300_000).map(|i| call(i, i as i64 * 20_000)).collect();
        for chunk in calls.chunks(1000) {
            tier.push(chunk);
        }
        let out = run_query(
            &tier,
            "SELECT count(*) AS n, min(start_ns) AS lo FROM calls c JOIN functions f USING (session_id, function_id) WHERE f.name = 'leaf'",
        )
        .unwrap();
        let n = out[0]
            .column(0)
            .as_any()
            .downcast_ref::<arrow_array::Int64Array>()
            .unwrap()
            .value(0);
        // Pushed 1,000 at a time, a batch holds 66,000 rows.
        assert_eq!(n, 300_000 - 3 * 66_000);
        assert!(run_query(&tier, "SELECT nosuch FROM calls").is_err());
    }
}
