//! Private directories and crash-safe file replacement.
//!
//! A file is written in full under a hidden temporary name in its final
//! directory (`.NAME.tmp`, which no `*.parquet` glob matches), fsynced,
//! renamed to `NAME`, and then the directory is fsynced. A crash at any point
//! leaves either no `NAME` or a complete one.

use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};

/// Mode of every directory the store creates.
pub(crate) const DIR_MODE: u32 = 0o700;
/// Mode of every file the store creates.
pub(crate) const FILE_MODE: u32 = 0o600;

/// Creates `path` (and missing parents) if it does not exist, returning
/// whether it was created. A created `path` gets mode 0700 regardless of the
/// umask; an existing directory is left as it is.
pub(crate) fn ensure_dir(path: &Path) -> io::Result<bool> {
    match fs::metadata(path) {
        Ok(m) if m.is_dir() => return Ok(false),
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
    fs::set_permissions(path, Permissions::from_mode(DIR_MODE))?;
    Ok(true)
}

/// The hidden temporary name `name` is written under before its rename.
pub(crate) fn tmp_name(name: &str) -> String {
    format!(".{name}.tmp")
}

/// Writes `bytes` to `dir/name` durably (see the module docs), with mode
/// 0600. Returns the final path. Every error names the file; on error the
/// temporary file is removed (best effort) and `dir/name` is untouched.
pub(crate) fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf> {
    let path = dir.join(name);
    let tmp = dir.join(tmp_name(name));
    let written = write_tmp(&tmp, bytes).and_then(|()| fs::rename(&tmp, &path));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(anyhow!(e)).with_context(|| format!("writing {}", path.display()));
    }
    sync_dir(dir).with_context(|| format!("syncing directory {}", dir.display()))?;
    Ok(path)
}

fn write_tmp(tmp: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(tmp)?;
    // The umask may have cleared bits of FILE_MODE; make the mode exact.
    file.set_permissions(Permissions::from_mode(FILE_MODE))?;
    write_and_sync(&mut file, bytes)
}

/// Writes all of `bytes` and flushes them to the device: `ENOSPC` and `EIO`
/// (which may only show at the fsync) surface here.
pub(crate) fn write_and_sync(file: &mut File, bytes: &[u8]) -> io::Result<()> {
    file.write_all(bytes)?;
    file.sync_all()
}

/// Fsyncs a directory so a rename in it is durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
