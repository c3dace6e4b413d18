//! `--out s3://bucket/prefix`: the store is written as usual into a local
//! spool directory, and an uploader thread sends each finished file whole
//! to the same relative key under the prefix, then removes the local copy.
//!
//! The thread gets each file's path from [`ParquetStore::on_file_finished`]
//! (after the file's rename and fsync) and uploads in that order, one file
//! at a time: the `sessions` row, written last, is uploaded last, so a
//! reader of the bucket who sees a session row sees the session's other
//! files too. A failed upload (endpoint unreachable, a 5xx, even credentials
//! refused mid-session) keeps the file and everything after it in the spool
//! and is retried with a backoff from [`FIRST_BACKOFF`] doubling to
//! [`MAX_BACKOFF`]; nothing is dropped. At the end of the session
//! [`Uploader::finish`] keeps retrying for a bounded time, then leaves what
//! is left in the spool for `scope-agent upload SPOOL s3://…`.
//!
//! [`ParquetStore::on_file_finished`]: super::ParquetStore::on_file_finished

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use scope_query::objstore::{self, RemoteStore};

use super::FileFinished;

/// The first wait after a failed upload.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// The longest wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The default spool root: `/var/tmp` survives a reboot (a tmpfs such as
/// `$XDG_RUNTIME_DIR` would lose what an unreachable endpoint left behind),
/// and the agent runs as root, so the directory is root's, 0700.
pub const DEFAULT_SPOOL_ROOT: &str = "/var/tmp/scope-spool";

enum Msg {
    File(PathBuf),
    /// No more files; retry failures until this instant.
    Finish(Instant),
}

/// Counts the status line shows while recording.
#[derive(Debug, Default)]
pub struct UploadGauges {
    /// Files uploaded so far.
    pub uploaded: AtomicU64,
    /// Files finished locally and not uploaded yet.
    pub pending: AtomicU64,
}

/// What the uploader did over the session.
#[derive(Clone, Debug, Default)]
pub struct UploadReport {
    /// Files uploaded (and removed from the spool), and their bytes.
    pub uploaded_files: usize,
    pub uploaded_bytes: u64,
    /// Files left in the spool, in upload order, and their bytes.
    pub pending: Vec<PathBuf>,
    pub pending_bytes: u64,
    /// Why the last attempt failed, when files are pending.
    pub last_error: Option<String>,
}

/// The uploader thread of one session (see the module docs).
pub struct Uploader {
    tx: Sender<Msg>,
    thread: Option<JoinHandle<UploadReport>>,
    gauges: Arc<UploadGauges>,
    remote: RemoteStore,
    spool: PathBuf,
}

impl Uploader {
    /// Starts the thread that uploads the files under `spool` (the store's
    /// root) to `remote`.
    pub fn start(remote: RemoteStore, spool: PathBuf) -> Result<Uploader> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let gauges = Arc::new(UploadGauges::default());
        let worker = Worker {
            remote: remote.clone(),
            spool: spool.clone(),
            gauges: Arc::clone(&gauges),
        };
        let thread = std::thread::Builder::new()
            .name("scope-upload".into())
            .spawn(move || worker.run(&rx))
            .context("starting the uploader thread")?;
        Ok(Uploader {
            tx,
            thread: Some(thread),
            gauges,
            remote,
            spool,
        })
    }

    /// The store's hook: each finished file is queued for upload.
    pub fn notifier(&self) -> FileFinished {
        let tx = self.tx.clone();
        let gauges = Arc::clone(&self.gauges);
        Arc::new(move |path: &Path| {
            gauges.pending.fetch_add(1, Ordering::Relaxed);
            // The thread outlives every sender (finish joins it after its
            // last message), so a send only fails after a panic there.
            let _ = tx.send(Msg::File(path.to_path_buf()));
        })
    }

    /// Counts for the status line.
    pub fn gauges(&self) -> &UploadGauges {
        &self.gauges
    }

    /// The destination, `s3://bucket/prefix`.
    pub fn remote(&self) -> &RemoteStore {
        &self.remote
    }

    /// The local directory the store is written to.
    pub fn spool(&self) -> &Path {
        &self.spool
    }

    /// Uploads what is queued, retrying failures for at most `wait`, and
    /// says what was uploaded and what is left. The spool directory is
    /// removed when everything was uploaded.
    pub fn finish(mut self, wait: Duration) -> UploadReport {
        let _ = self.tx.send(Msg::Finish(Instant::now() + wait));
        let report = match self.thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            _ => UploadReport {
                last_error: Some("the uploader thread panicked".into()),
                pending: objstore::finished_files(&self.spool)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|rel| self.spool.join(rel))
                    .collect(),
                ..UploadReport::default()
            },
        };
        if report.pending.is_empty() {
            objstore::remove_empty_dirs(&self.spool);
        }
        report
    }
}

/// The thread's side.
struct Worker {
    remote: RemoteStore,
    spool: PathBuf,
    gauges: Arc<UploadGauges>,
}

impl Worker {
    fn run(self, rx: &Receiver<Msg>) -> UploadReport {
        let mut report = UploadReport::default();
        let rt = match objstore::runtime() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("scope: warning: cannot start the uploader: {e:#}");
                return self.leave_all(rx, report, format!("{e:#}"));
            }
        };
        let mut queue: VecDeque<PathBuf> = VecDeque::new();
        let mut finish_at: Option<Instant> = None;
        let mut backoff = FIRST_BACKOFF;
        // The error of the outage in progress (said once, not per attempt).
        let mut failing: Option<String> = None;
        let take = |m: Msg, queue: &mut VecDeque<PathBuf>, finish_at: &mut Option<Instant>| match m
        {
            Msg::File(p) => queue.push_back(p),
            Msg::Finish(at) => *finish_at = Some(at),
        };
        loop {
            while let Ok(m) = rx.try_recv() {
                take(m, &mut queue, &mut finish_at);
            }
            let Some(path) = queue.front().cloned() else {
                if finish_at.is_some() {
                    break;
                }
                match rx.recv() {
                    Ok(m) => take(m, &mut queue, &mut finish_at),
                    Err(_) => break,
                }
                continue;
            };
            let Some(rel) = self.relative(&path) else {
                eprintln!(
                    "scope: warning: {} is not under the spool {}; not uploaded",
                    path.display(),
                    self.spool.display()
                );
                queue.pop_front();
                self.gauges.pending.fetch_sub(1, Ordering::Relaxed);
                continue;
            };
            if !path.exists() {
                // Replaced and already uploaded under its new content (a
                // `functions` part written twice), or removed by hand.
                queue.pop_front();
                self.gauges.pending.fetch_sub(1, Ordering::Relaxed);
                continue;
            }
            match rt.block_on(objstore::upload_file(&self.remote, &path, &rel)) {
                Ok(bytes) => {
                    if let Err(e) = std::fs::remove_file(&path) {
                        eprintln!(
                            "scope: warning: uploaded {} but cannot remove it: {e}",
                            path.display()
                        );
                    }
                    queue.pop_front();
                    report.uploaded_files += 1;
                    report.uploaded_bytes += bytes;
                    self.gauges.uploaded.fetch_add(1, Ordering::Relaxed);
                    self.gauges.pending.fetch_sub(1, Ordering::Relaxed);
                    if failing.take().is_some() {
                        eprintln!(
                            "scope: uploads to {} resumed ({} files waiting)",
                            self.remote,
                            queue.len()
                        );
                    }
                    backoff = FIRST_BACKOFF;
                }
                Err(e) => {
                    let line = e.to_string();
                    if failing.as_deref() != Some(line.as_str()) {
                        eprintln!(
                            "scope: warning: {line}; segments stay in {} and uploads are retried",
                            self.spool.display()
                        );
                    }
                    failing = Some(line);
                    if finish_at.is_some_and(|at| Instant::now() >= at) {
                        break;
                    }
                    // Wait, taking new files meanwhile; never past the end.
                    let mut until = Instant::now() + backoff;
                    if let Some(at) = finish_at {
                        until = until.min(at);
                    }
                    loop {
                        let now = Instant::now();
                        if now >= until {
                            break;
                        }
                        match rx.recv_timeout(until - now) {
                            Ok(Msg::Finish(at)) => {
                                finish_at = Some(at);
                                until = until.min(at);
                            }
                            Ok(m) => take(m, &mut queue, &mut finish_at),
                            Err(RecvTimeoutError::Timeout) => break,
                            Err(RecvTimeoutError::Disconnected) => {
                                // The session is gone without finish():
                                // one more attempt after this wait at most.
                                finish_at.get_or_insert(until);
                                std::thread::sleep(until.saturating_duration_since(now));
                                break;
                            }
                        }
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        while let Ok(m) = rx.try_recv() {
            take(m, &mut queue, &mut finish_at);
        }
        report.pending_bytes = queue
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        report.pending = queue.into_iter().filter(|p| p.exists()).collect();
        if !report.pending.is_empty() {
            report.last_error = failing;
        }
        report
    }

    /// `calls/session_id=X/part-00000.parquet` for a file under the spool.
    fn relative(&self, path: &Path) -> Option<String> {
        let rel = path.strip_prefix(&self.spool).ok()?;
        let parts: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_str().map(str::to_string))
            .collect::<Option<_>>()?;
        Some(parts.join("/"))
    }

    /// Without a runtime nothing can be sent: every file stays.
    fn leave_all(&self, rx: &Receiver<Msg>, mut report: UploadReport, why: String) -> UploadReport {
        for m in rx.iter() {
            match m {
                Msg::File(p) => report.pending.push(p),
                Msg::Finish(_) => break,
            }
        }
        report.last_error = Some(why);
        report
    }
}
