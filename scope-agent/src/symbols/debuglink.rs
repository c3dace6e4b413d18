//! Separate debug files: where distributions put the symbols and DWARF
//! they strip from binaries (`-dbg`/`-debuginfo` packages, `objcopy
//! --only-keep-debug`).
//!
//! Looked up as GDB does: by build-id under `/usr/lib/debug/.build-id/`, then
//! by the `.gnu_debuglink` name next to the binary, in its `.debug/`
//! directory, and under `/usr/lib/debug/` + the binary's directory. A
//! candidate must carry the same build-id (or, without one, match the
//! debug link's CRC-32), so a stale debug file is never used.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::elf::{self, MappedElf};

/// The global debug directory.
const DEBUG_ROOT: &str = "/usr/lib/debug";

/// Directories given with `--debug-dir`, searched before the global one.
static DEBUG_DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Sets the directories given with `--debug-dir` (debuginfod cache layout
/// `<dir>/<build-id>/debuginfo`, or `<dir>/.build-id/xx/yyyy.debug`).
pub fn set_debug_dirs(dirs: Vec<PathBuf>) {
    if let Ok(mut d) = DEBUG_DIRS.lock() {
        *d = dirs;
    }
}

/// `--debug-dir` directories, then `$DEBUGINFOD_CACHE_PATH`.
fn debug_dirs() -> Vec<PathBuf> {
    let mut dirs = DEBUG_DIRS.lock().map(|d| d.clone()).unwrap_or_default();
    if let Some(env) = std::env::var_os("DEBUGINFOD_CACHE_PATH")
        && !env.is_empty()
    {
        dirs.push(PathBuf::from(env));
    }
    dirs
}

/// Where a candidate came from: what it must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    BuildId,
    DebugLink,
}

/// Finds and maps the separate debug file of the binary at `binary_path`
/// (the path the user knows, whose directory the debug link is relative
/// to). `build_id` is the binary's, lower-case hex. A candidate that
/// exists but belongs to another build adds a warning and is skipped.
pub(super) fn find(
    build_id: Option<&str>,
    link: Option<&(String, u32)>,
    binary_path: &Path,
    warnings: &mut Vec<String>,
) -> Option<(PathBuf, MappedElf)> {
    let binary_real = std::fs::canonicalize(binary_path).ok();
    let mut dirs = debug_dirs();
    dirs.push(PathBuf::from(DEBUG_ROOT));
    for (candidate, via) in candidates(
        &dirs,
        build_id,
        link.map(|(name, _)| name.as_str()),
        binary_path,
    ) {
        if !candidate.is_file() {
            continue;
        }
        if let Ok(real) = std::fs::canonicalize(&candidate)
            && Some(&real) == binary_real.as_ref()
        {
            continue;
        }
        let Ok(mapped) = MappedElf::open(&candidate, &candidate) else {
            continue;
        };
        match mismatch(&mapped, &candidate, build_id, link, via) {
            None => return Some((candidate, mapped)),
            Some(why) => warnings.push(format!(
                "{}: {why}; it is not the debug file of {}, ignored",
                candidate.display(),
                binary_path.display()
            )),
        }
    }
    None
}

/// Paths to try, in order.
fn candidates(
    dirs: &[PathBuf],
    build_id: Option<&str>,
    link_name: Option<&str>,
    binary_path: &Path,
) -> Vec<(PathBuf, Via)> {
    let mut out = Vec::new();
    if let Some(id) = build_id
        && id.len() > 2
        && id.bytes().all(|b| b.is_ascii_hexdigit())
        && let (Some(head), Some(tail)) = (id.get(..2), id.get(2..))
    {
        for dir in dirs {
            if dir.as_os_str() != DEBUG_ROOT {
                out.push((dir.join(id).join("debuginfo"), Via::BuildId));
            }
            out.push((
                dir.join(".build-id")
                    .join(head)
                    .join(format!("{tail}.debug")),
                Via::BuildId,
            ));
        }
    }
    if let Some(name) = link_name {
        let dir = binary_path.parent().unwrap_or(Path::new(""));
        out.push((dir.join(name), Via::DebugLink));
        out.push((dir.join(".debug").join(name), Via::DebugLink));
        if dir.is_absolute() {
            let relative = dir.strip_prefix("/").unwrap_or(dir);
            out.push((
                Path::new(DEBUG_ROOT).join(relative).join(name),
                Via::DebugLink,
            ));
        }
    }
    out
}

/// Why the candidate is not the binary's debug file, or `None` if it is:
/// the build-ids must be equal when both have one, and a file found by
/// debug link must have the link's CRC-32.
fn mismatch(
    mapped: &MappedElf,
    path: &Path,
    build_id: Option<&str>,
    link: Option<&(String, u32)>,
    via: Via,
) -> Option<String> {
    let Ok(file) = mapped.parse(path) else {
        return Some("not a readable ELF file".into());
    };
    let theirs = elf::build_id(&file);
    match (build_id, theirs.as_deref()) {
        (Some(ours), Some(theirs)) if ours != theirs => {
            return Some(format!(
                "build-id {theirs} differs from the binary's {ours}"
            ));
        }
        (Some(_), None) if via == Via::BuildId => return Some("no build-id".into()),
        _ => {}
    }
    if via == Via::DebugLink
        && let Some((_, crc)) = link
    {
        let actual = crc32(mapped.data());
        if actual != *crc {
            return Some(format!(
                "CRC-32 {actual:08x} differs from the {crc:08x} in the binary's .gnu_debuglink"
            ));
        }
    }
    if via == Via::DebugLink && link.is_none() {
        return Some("no debug link".into());
    }
    None
}

/// CRC-32 (IEEE, reflected), as `.gnu_debuglink` uses.
fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    let mut crc = !0u32;
    for &b in data {
        crc = TABLE[usize::from((crc as u8) ^ b)] ^ (crc >> 8);
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_known_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn candidate_paths() {
        let dirs = [PathBuf::from("/cache"), PathBuf::from(DEBUG_ROOT)];
        let c: Vec<PathBuf> = candidates(
            &dirs,
            Some("abcdef01"),
            Some("prog.debug"),
            Path::new("/opt/app/prog"),
        )
        .into_iter()
        .map(|(p, _)| p)
        .collect();
        assert_eq!(
            c,
            vec![
                PathBuf::from("/cache/abcdef01/debuginfo"),
                PathBuf::from("/cache/.build-id/ab/cdef01.debug"),
                PathBuf::from("/usr/lib/debug/.build-id/ab/cdef01.debug"),
                PathBuf::from("/opt/app/prog.debug"),
                PathBuf::from("/opt/app/.debug/prog.debug"),
                PathBuf::from("/usr/lib/debug/opt/app/prog.debug"),
            ]
        );
        assert!(candidates(&dirs, None, None, Path::new("/x")).is_empty());
        // A build-id is hex: nothing else becomes a path.
        assert!(candidates(&dirs, Some("../../etc"), None, Path::new("/x")).is_empty());
    }
}
