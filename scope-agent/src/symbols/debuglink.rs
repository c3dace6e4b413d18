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

use super::elf::{self, MappedElf};

/// The global debug directory.
const DEBUG_ROOT: &str = "/usr/lib/debug";

/// Finds and maps the separate debug file of the binary at `binary_path`
/// (the path the user knows, whose directory the debug link is relative
/// to). `build_id` is the binary's, lower-case hex.
pub(super) fn find(
    build_id: Option<&str>,
    link: Option<&(String, u32)>,
    binary_path: &Path,
) -> Option<(PathBuf, MappedElf)> {
    let binary_real = std::fs::canonicalize(binary_path).ok();
    for candidate in candidates(build_id, link.map(|(name, _)| name.as_str()), binary_path) {
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
        if matches(&mapped, &candidate, build_id, link) {
            return Some((candidate, mapped));
        }
    }
    None
}

/// Paths to try, in order.
fn candidates(build_id: Option<&str>, link_name: Option<&str>, binary_path: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(id) = build_id
        && id.len() > 2
        && let (Some(head), Some(tail)) = (id.get(..2), id.get(2..))
    {
        out.push(
            Path::new(DEBUG_ROOT)
                .join(".build-id")
                .join(head)
                .join(format!("{tail}.debug")),
        );
    }
    if let Some(name) = link_name {
        let dir = binary_path.parent().unwrap_or(Path::new(""));
        out.push(dir.join(name));
        out.push(dir.join(".debug").join(name));
        if dir.is_absolute() {
            let relative = dir.strip_prefix("/").unwrap_or(dir);
            out.push(Path::new(DEBUG_ROOT).join(relative).join(name));
        }
    }
    out
}

fn matches(
    mapped: &MappedElf,
    path: &Path,
    build_id: Option<&str>,
    link: Option<&(String, u32)>,
) -> bool {
    let Ok(file) = mapped.parse(path) else {
        return false;
    };
    match build_id {
        Some(id) => elf::build_id(&file).as_deref() == Some(id),
        None => link.is_some_and(|(_, crc)| crc32(mapped.data()) == *crc),
    }
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
        let c = candidates(
            Some("abcdef01"),
            Some("prog.debug"),
            Path::new("/opt/app/prog"),
        );
        assert_eq!(
            c,
            vec![
                PathBuf::from("/usr/lib/debug/.build-id/ab/cdef01.debug"),
                PathBuf::from("/opt/app/prog.debug"),
                PathBuf::from("/opt/app/.debug/prog.debug"),
                PathBuf::from("/usr/lib/debug/opt/app/prog.debug"),
            ]
        );
        assert!(candidates(None, None, Path::new("/x")).is_empty());
    }
}
