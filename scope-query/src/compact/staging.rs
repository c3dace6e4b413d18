//! The staging tree `<root>/.scope-compact/`: where new files are written
//! before they replace a session's directory, where old directories wait to
//! be deleted, the lock that keeps two compactions apart, and the recovery of
//! whatever an interrupted run left there.
//!
//! ```text
//! <root>/.scope-compact/lock                              flock: one compaction per store
//! <root>/.scope-compact/<table>/session_id=<id>/          new files, then (after the exchange) the old ones
//! <root>/.scope-compact/spill/                            DataFusion's spill files of the sort
//! <root>/.scope-compact/remove-<id>                       intent: session <id> is being removed by retention
//! <root>/.scope-compact/trash/<id>/<table>/               a removed session's directories, until deleted
//! ```
//!
//! The tree sits beside the table directories, never inside one, so no
//! reader's glob over `<root>/<table>/**` (DuckDB) and no listing of
//! `<root>/<table>/` (DataFusion) can reach it. DuckDB's `*` and `**` do
//! match dot-directories (checked with DuckDB 2.0): the staged files sit one
//! level deeper than `<root>/*/session_id=*/*.parquet`, so that glob misses
//! them too, but `<root>/**/*.parquet` over every table would see them.
//!
//! A live session directory is only ever replaced by one atomic
//! `renameat2(RENAME_EXCHANGE)`: before it a query sees the old files, after
//! it the new ones. Everything under the staging tree is therefore garbage
//! at the start of a run (new files never swapped in, or old files swapped
//! out), except the removal intents, which are completed.

use std::ffi::CString;
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};

/// Name of the staging tree under the store's root.
pub const STAGING_DIR: &str = ".scope-compact";
/// Mode of every directory compaction creates.
pub(crate) const DIR_MODE: u32 = 0o700;
/// Mode of every file compaction creates.
pub(crate) const FILE_MODE: u32 = 0o600;
/// Environment variable naming a step at which the process aborts (a test
/// hook: the crash tests kill a compaction at each step this way).
pub const CRASH_ENV: &str = "SCOPE_COMPACT_CRASH_AT";

/// Aborts the process (no unwinding, no destructors: as abrupt as a kill)
/// when [`CRASH_ENV`] names `step`.
pub(crate) fn crash_point(step: &str) {
    if std::env::var_os(CRASH_ENV).is_some_and(|v| v == step) {
        eprintln!("scope compact: crashing at step {step} ({CRASH_ENV})");
        std::process::abort();
    }
}

/// The staging tree of one store, locked for this run.
pub(crate) struct Staging {
    root: PathBuf,
    dir: PathBuf,
    /// Holds the flock until dropped.
    _lock: File,
}

impl Staging {
    /// Creates (0700) and locks `<root>/.scope-compact`. Fails with one
    /// line if another compaction holds the lock or the directory cannot be
    /// created.
    pub(crate) fn open(root: &Path) -> Result<Self> {
        let dir = root.join(STAGING_DIR);
        ensure_dir(&dir).map_err(|e| anyhow!("cannot create {}: {e}", dir.display()))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(FILE_MODE)
            .open(&lock_path)
            .map_err(|e| anyhow!("cannot open {}: {e}", lock_path.display()))?;
        // SAFETY: flock on a file descriptor we own; no memory is passed.
        let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                bail!(
                    "another compaction is running on {} (it holds {})",
                    root.display(),
                    lock_path.display()
                );
            }
            bail!("cannot lock {}: {e}", lock_path.display());
        }
        Ok(Staging {
            root: root.to_path_buf(),
            dir,
            _lock: lock,
        })
    }

    /// Where DataFusion spills: a directory of the staging tree, on the
    /// store's file system (created 0700).
    pub(crate) fn spill_dir(&self) -> Result<PathBuf> {
        let dir = self.dir.join("spill");
        ensure_dir(&dir).map_err(|e| anyhow!("cannot create {}: {e}", dir.display()))?;
        Ok(dir)
    }

    /// A fresh, empty staging directory for `table` of session `id`.
    pub(crate) fn table_dir(&self, table: &str, id: &str) -> Result<PathBuf> {
        let dir = self.dir.join(table).join(format!("session_id={id}"));
        remove_tree(&dir)?;
        ensure_dir(&dir).map_err(|e| anyhow!("cannot create {}: {e}", dir.display()))?;
        Ok(dir)
    }

    /// Completes interrupted removals and deletes every leftover of an
    /// interrupted run; says what it did through `progress`.
    pub(crate) fn recover(&self, progress: &mut dyn FnMut(&str)) -> Result<()> {
        let entries = fs::read_dir(&self.dir)
            .map_err(|e| anyhow!("cannot read {}: {e}", self.dir.display()))?;
        let mut names: Vec<String> = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| anyhow!("cannot read {}: {e}", self.dir.display()))?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        for name in &names {
            if let Some(id) = name.strip_prefix("remove-") {
                progress(&format!(
                    "finishing the removal of session {id}, interrupted by an earlier run"
                ));
                self.finish_removal(id)?;
            }
        }
        self.tidy(progress)
    }

    /// Deletes the staging tree's working directories (staged tables, spill
    /// files, trash), telling `progress` about any that held something.
    pub(crate) fn tidy(&self, progress: &mut dyn FnMut(&str)) -> Result<()> {
        let names = ["spill", "trash"].into_iter().chain(super::TABLES);
        for name in names {
            let path = self.dir.join(name);
            if name != "spill" && dir_has_entries(&path)? {
                progress(&format!(
                    "deleting {}: left by an interrupted compaction (the store's own directories are intact)",
                    path.display()
                ));
            }
            remove_tree(&path)?;
        }
        sync_dir(&self.dir)
    }

    /// Removes every table directory of session `id` (see the module docs):
    /// an intent file first, so an interrupted removal is completed by the
    /// next run; the `sessions` directory last, so a half-removed session
    /// still counts as finished and is picked again.
    pub(crate) fn remove_session(&self, id: &str, why: &str) -> Result<()> {
        let intent = self.dir.join(format!("remove-{id}"));
        write_durably(&intent, why.as_bytes())?;
        sync_dir(&self.dir)?;
        crash_point("remove-intent");
        self.finish_removal(id)
    }

    fn finish_removal(&self, id: &str) -> Result<()> {
        let trash = self.dir.join("trash").join(id);
        ensure_dir(&trash).map_err(|e| anyhow!("cannot create {}: {e}", trash.display()))?;
        let partition = format!("session_id={id}");
        let order = super::TABLES
            .iter()
            .filter(|t| **t != "sessions")
            .chain(std::iter::once(&"sessions"));
        let mut moved = 0;
        for table in order {
            let live = self.root.join(table).join(&partition);
            if fs::symlink_metadata(&live).is_err() {
                continue;
            }
            let to = trash.join(table);
            remove_tree(&to)?;
            fs::rename(&live, &to)
                .map_err(|e| anyhow!("cannot move {} to {}: {e}", live.display(), to.display()))?;
            sync_dir(&self.root.join(table))?;
            moved += 1;
            if moved == 1 {
                crash_point("remove-moved");
            }
        }
        sync_dir(&trash)?;
        remove_tree(&trash)?;
        let intent = self.dir.join(format!("remove-{id}"));
        match fs::remove_file(&intent) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => bail!("cannot delete {}: {e}", intent.display()),
        }
        sync_dir(&self.dir)
    }
}

/// Swaps two directories atomically (`renameat2(RENAME_EXCHANGE)`), then
/// fsyncs both parents so the swap survives a power cut.
pub(crate) fn exchange(a: &Path, b: &Path) -> Result<()> {
    let ca = c_path(a)?;
    let cb = c_path(b)?;
    // SAFETY: both paths are NUL-terminated C strings that outlive the call;
    // AT_FDCWD resolves them like open(2) would.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        let hint = match e.raw_os_error() {
            Some(libc::EINVAL) => " (the file system does not support RENAME_EXCHANGE)",
            Some(libc::EXDEV) => " (they are on different file systems)",
            _ => "",
        };
        bail!("cannot swap {} and {}: {e}{hint}", a.display(), b.display());
    }
    for dir in [a.parent(), b.parent()].into_iter().flatten() {
        sync_dir(dir)?;
    }
    Ok(())
}

fn c_path(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| anyhow!("path {} contains a NUL byte", p.display()))
}

/// Creates `path` and missing parents with mode 0700 (an existing directory
/// is left as it is).
pub(crate) fn ensure_dir(path: &Path) -> io::Result<()> {
    match fs::metadata(path) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "exists and is not a directory",
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)?;
    fs::set_permissions(path, Permissions::from_mode(DIR_MODE))
}

/// Creates `path` for writing with mode 0600 exactly (whatever the umask).
pub(crate) fn create_file(path: &Path) -> Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
        .map_err(|e| anyhow!("cannot create {}: {e}", path.display()))?;
    file.set_permissions(Permissions::from_mode(FILE_MODE))
        .map_err(|e| anyhow!("cannot set the mode of {}: {e}", path.display()))?;
    Ok(file)
}

fn write_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    let _ = fs::remove_file(path);
    let mut file = create_file(path)?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| anyhow!("cannot write {}: {e}", path.display()))
}

/// Fsyncs a directory so renames and creations in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot sync directory {}", dir.display()))
}

/// `rm -rf`, quiet when `path` does not exist.
pub(crate) fn remove_tree(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => bail!("cannot delete {}: {e}", path.display()),
    }
}

fn dir_has_entries(path: &Path) -> Result<bool> {
    match fs::read_dir(path) {
        Ok(mut it) => Ok(it.next().is_some()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => bail!("cannot read {}: {e}", path.display()),
    }
}
