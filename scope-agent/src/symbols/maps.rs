//! Which files a process runs code from: the file-backed executable
//! mappings of a running process (`/proc/PID/maps`), or, for a program not
//! started yet, the shared libraries the dynamic linker will load
//! (`DT_NEEDED`, searched the way `ld.so` searches), and commands resolved
//! the way `execvp` resolves them.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use wildmatch::WildMatch;

use super::SymbolError;
use super::elf::{self, DynamicInfo, ElfIdentity};

/// A file a process has mapped with execute permission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedModule {
    /// As shown in `/proc/PID/maps`, e.g. `/usr/lib/x86_64-linux-gnu/libc.so.6`.
    pub path: PathBuf,
    /// `/proc/PID/map_files/<start>-<end>` of one of its mappings: the exact
    /// mapped inode, safe against symlinks, replaced files and containers.
    /// Also the path to give the kernel for a uprobe. When `map_files` is
    /// not readable (it needs CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE), the
    /// same file through `/proc/PID/root` if it is the same inode.
    pub open_path: PathBuf,
    /// The mapping of `/proc/PID/exe`.
    pub is_main: bool,
    pub dev: u64,
    pub inode: u64,
}

/// One line of `/proc/PID/maps` that names a file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MapsLine {
    start: u64,
    end: u64,
    /// File offset of `start`.
    offset: u64,
    executable: bool,
    dev: u64,
    inode: u64,
    path: PathBuf,
}

/// One executable file-backed mapping: addresses `start..end` hold the
/// file's bytes from `file_offset` on. What turns a sampled address into a
/// file offset, and so a function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRange {
    pub start: u64,
    pub end: u64,
    pub file_offset: u64,
    /// As shown in `/proc/PID/maps`.
    pub path: PathBuf,
}

/// The executable file-backed mappings of `pid`, in address order.
pub fn exec_ranges(pid: u32) -> Result<Vec<ExecRange>, SymbolError> {
    let maps_path = PathBuf::from(format!("/proc/{pid}/maps"));
    let text = match fs::read(&maps_path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) => {
            return Err(SymbolError::NoSuchProcess { pid });
        }
        Err(source) => {
            return Err(SymbolError::Io {
                path: maps_path,
                source,
            });
        }
    };
    Ok(text
        .split(|&b| b == b'\n')
        .filter_map(parse_maps_line)
        .filter(|l| l.executable)
        .map(|l| ExecRange {
            start: l.start,
            end: l.end,
            file_offset: l.offset,
            path: l.path,
        })
        .collect())
}

/// File-backed mappings of a process, one entry per file (dev, inode), only
/// files with at least one executable mapping, main executable first, the
/// rest in address order. `[vdso]`, anonymous mappings and memfd files are
/// left out (memfd with a warning in the log); a deleted or replaced file
/// is kept, read through `map_files`, its path ending in ` (deleted)`.
pub fn process_modules(pid: u32) -> Result<Vec<MappedModule>, SymbolError> {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let maps_path = proc_dir.join("maps");
    let text = match fs::read(&maps_path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) => {
            return Err(SymbolError::NoSuchProcess { pid });
        }
        Err(source) => {
            return Err(SymbolError::Io {
                path: maps_path,
                source,
            });
        }
    };
    // A process that exits between the two reads leaves an empty maps file.
    if text.is_empty() && !proc_dir.exists() {
        return Err(SymbolError::NoSuchProcess { pid });
    }
    let exe = proc_dir.join("exe");
    let exe_id = fs::metadata(&exe).ok().map(|m| (m.dev(), m.ino()));
    let exe_link = fs::read_link(&exe).ok();

    let lines: Vec<MapsLine> = text
        .split(|&b| b == b'\n')
        .filter_map(parse_maps_line)
        .collect();
    // Any mapping of a file names the same inode; use the first one,
    // usually the one at file offset 0.
    let mut first_mapping: HashMap<(u64, u64), &MapsLine> = HashMap::new();
    for line in &lines {
        first_mapping.entry((line.dev, line.inode)).or_insert(line);
    }
    let mut modules: Vec<MappedModule> = Vec::new();
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let mut warned: HashSet<&Path> = HashSet::new();
    for line in &lines {
        let name = line.path.as_os_str().as_bytes();
        // A file deleted or replaced on disk since it was mapped (an
        // upgrade renamed a new build over it) is still the running code:
        // read and probe the mapped inode through map_files. Its display
        // path keeps the kernel's " (deleted)" so the user sees why.
        let deleted_but_mapped = name.ends_with(b" (deleted)")
            && line.executable
            && fs::metadata(map_files_path(&proc_dir, line)).is_ok_and(|m| m.ino() == line.inode);
        if !deleted_but_mapped && (name.ends_with(b" (deleted)") || name.starts_with(b"/memfd:")) {
            if line.executable && warned.insert(&line.path) {
                log::warn!(
                    "pid {pid}: {} is mapped but cannot be probed by path (deleted or memfd)",
                    line.path.display()
                );
            }
            continue;
        }
        if !line.executable || !seen.insert((line.dev, line.inode)) {
            continue;
        }
        let first = first_mapping
            .get(&(line.dev, line.inode))
            .copied()
            .unwrap_or(line);
        modules.push(MappedModule {
            open_path: open_path(&proc_dir, first),
            path: line.path.clone(),
            is_main: exe_id == Some((line.dev, line.inode)),
            dev: line.dev,
            inode: line.inode,
        });
    }
    // Overlay file systems report the lower inode in maps but the overlay
    // one to stat: fall back to the path.
    if !modules.iter().any(|m| m.is_main)
        && let Some(link) = &exe_link
        && let Some(m) = modules.iter_mut().find(|m| &m.path == link)
    {
        m.is_main = true;
    }
    modules.sort_by_key(|m| !m.is_main);
    Ok(modules)
}

/// `/proc/PID/map_files/<start>-<end>` when it can be opened, else
/// `/proc/PID/root/<path>` when that is the same inode.
fn open_path(proc_dir: &Path, line: &MapsLine) -> PathBuf {
    let map_file = map_files_path(proc_dir, line);
    if fs::metadata(&map_file).is_ok() {
        return map_file;
    }
    let relative = line.path.strip_prefix("/").unwrap_or(&line.path);
    let rooted = proc_dir.join("root").join(relative);
    match fs::metadata(&rooted) {
        Ok(m) if m.ino() == line.inode => rooted,
        _ => map_file,
    }
}

/// `/proc/PID/map_files/<start>-<end>` of a mapping.
fn map_files_path(proc_dir: &Path, line: &MapsLine) -> PathBuf {
    // map_files names have no zero padding, unlike the maps lines.
    proc_dir
        .join("map_files")
        .join(format!("{:x}-{:x}", line.start, line.end))
}

/// `start-end perms offset major:minor inode   path` → a line naming a file.
fn parse_maps_line(line: &[u8]) -> Option<MapsLine> {
    let mut rest = line;
    let mut field = || {
        let trimmed = trim_start(rest);
        let end = trimmed
            .iter()
            .position(|&b| b == b' ')
            .unwrap_or(trimmed.len());
        let (head, tail) = trimmed.split_at(end);
        rest = tail;
        std::str::from_utf8(head).ok()
    };
    let range = field()?;
    let perms = field()?;
    let offset = field()?;
    let dev = field()?;
    let inode = field()?;
    let path = trim_start(rest);

    let (start, end) = range.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    let (major, minor) = dev.split_once(':')?;
    let major = u32::from_str_radix(major, 16).ok()?;
    let minor = u32::from_str_radix(minor, 16).ok()?;
    let inode: u64 = inode.parse().ok()?;
    if inode == 0 || !path.starts_with(b"/") {
        return None;
    }
    let offset = u64::from_str_radix(offset, 16).ok()?;
    Some(MapsLine {
        start,
        end,
        offset,
        executable: perms.as_bytes().get(2) == Some(&b'x'),
        dev: makedev(major, minor),
        inode,
        path: PathBuf::from(OsStr::from_bytes(path)),
    })
}

fn trim_start(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|&&b| b == b' ' || b == b'\t').count();
    s.get(n..).unwrap_or_default()
}

/// glibc's `makedev`: the `st_dev` encoding of a major:minor pair.
fn makedev(major: u32, minor: u32) -> u64 {
    let (major, minor) = (u64::from(major), u64::from(minor));
    ((major & 0xffff_f000) << 32)
        | ((major & 0x0000_0fff) << 8)
        | ((minor & 0xffff_ff00) << 12)
        | (minor & 0x0000_00ff)
}

/// The multiarch triplet of this build, for library directories.
const MULTIARCH: &str = if cfg!(target_arch = "x86_64") {
    "x86_64-linux-gnu"
} else if cfg!(target_arch = "aarch64") {
    "aarch64-linux-gnu"
} else if cfg!(target_arch = "riscv64") {
    "riscv64-linux-gnu"
} else {
    "unknown-linux-gnu"
};

/// Directories `ld.so` tries last.
fn default_dirs() -> Vec<PathBuf> {
    vec![
        PathBuf::from(format!("/lib/{MULTIARCH}")),
        PathBuf::from(format!("/usr/lib/{MULTIARCH}")),
        PathBuf::from("/lib64"),
        PathBuf::from("/usr/lib64"),
        PathBuf::from("/lib"),
        PathBuf::from("/usr/lib"),
    ]
}

/// The shared libraries a program not yet started will load: its ELF
/// interpreter and its `DT_NEEDED` libraries, recursively, searched in
/// `ld.so` order: `DT_RPATH` (of the object and its loaders, when the object
/// has no `DT_RUNPATH`), `LD_LIBRARY_PATH`, `DT_RUNPATH`, the directories of
/// `/etc/ld.so.conf`, then the default directories. `$ORIGIN` is expanded.
/// Canonical paths, without duplicates; libraries not found are left out
/// (the program will fail to start and say so itself).
pub fn needed_libraries(exe: &Path) -> Vec<PathBuf> {
    let env_dirs: Vec<PathBuf> = std::env::var_os("LD_LIBRARY_PATH")
        .map(|v| {
            v.as_bytes()
                .split(|&b| b == b':' || b == b';')
                .map(|d| {
                    if d.is_empty() {
                        PathBuf::from(".")
                    } else {
                        PathBuf::from(OsStr::from_bytes(d))
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let search = LibrarySearch {
        env_dirs,
        conf_dirs: ld_so_conf_dirs(Path::new("/etc/ld.so.conf")),
        default_dirs: default_dirs(),
    };
    search.resolve_all(exe)
}

struct LibrarySearch {
    env_dirs: Vec<PathBuf>,
    conf_dirs: Vec<PathBuf>,
    default_dirs: Vec<PathBuf>,
}

/// An object whose `DT_NEEDED` entries are still to be resolved.
struct Pending {
    path: PathBuf,
    info: DynamicInfo,
    /// Expanded `DT_RPATH` of the objects that led to this one.
    inherited_rpath: Vec<PathBuf>,
}

impl LibrarySearch {
    fn resolve_all(&self, exe: &Path) -> Vec<PathBuf> {
        let Ok(info) = elf::dynamic_info(exe) else {
            return Vec::new();
        };
        let exe_real = fs::canonicalize(exe).unwrap_or_else(|_| exe.to_path_buf());
        let identity = info.identity;
        let mut out = Vec::new();
        let mut seen_paths: HashSet<PathBuf> = HashSet::new();
        seen_paths.insert(exe_real.clone());
        if let Some(interp) = &info.interpreter
            && let Ok(real) = fs::canonicalize(interp)
            && seen_paths.insert(real.clone())
        {
            out.push(real);
        }
        let mut seen_names: HashSet<String> = HashSet::new();
        let mut queue = VecDeque::from([Pending {
            path: exe_real,
            info,
            inherited_rpath: Vec::new(),
        }]);
        while let Some(object) = queue.pop_front() {
            let origin = object.path.parent().unwrap_or(Path::new("/")).to_path_buf();
            let own_rpath = if object.info.runpath.is_empty() {
                expand_all(&object.info.rpath, &origin)
            } else {
                Vec::new()
            };
            let runpath = expand_all(&object.info.runpath, &origin);
            let mut rpath = own_rpath;
            if object.info.runpath.is_empty() {
                rpath.extend(object.inherited_rpath.iter().cloned());
            }
            for name in &object.info.needed {
                if !seen_names.insert(name.clone()) {
                    continue;
                }
                let Some(found) = self.find(name, &rpath, &runpath, identity) else {
                    log::debug!("{}: needed library {name} not found", object.path.display());
                    continue;
                };
                let real = fs::canonicalize(&found).unwrap_or(found);
                if !seen_paths.insert(real.clone()) {
                    continue;
                }
                out.push(real.clone());
                if let Ok(info) = elf::dynamic_info(&real) {
                    queue.push_back(Pending {
                        path: real,
                        info,
                        inherited_rpath: rpath.clone(),
                    });
                }
            }
        }
        out
    }

    fn find(
        &self,
        name: &str,
        rpath: &[PathBuf],
        runpath: &[PathBuf],
        identity: ElfIdentity,
    ) -> Option<PathBuf> {
        if name.contains('/') {
            let p = PathBuf::from(name);
            return compatible(&p, identity).then_some(p);
        }
        rpath
            .iter()
            .chain(&self.env_dirs)
            .chain(runpath)
            .chain(&self.conf_dirs)
            .chain(&self.default_dirs)
            .map(|dir| dir.join(name))
            .find(|p| compatible(p, identity))
    }
}

/// A regular file of the executable's ELF class and machine.
fn compatible(path: &Path, identity: ElfIdentity) -> bool {
    path.is_file() && elf::identity(path) == Some(identity)
}

fn expand_all(entries: &[String], origin: &Path) -> Vec<PathBuf> {
    entries
        .iter()
        .filter(|e| !e.is_empty())
        .flat_map(|e| expand_tokens(e, origin))
        .collect()
}

/// Expands `$ORIGIN`, `$LIB` and `$PLATFORM` (also in `${...}` form).
/// `$LIB` has two spellings across distributions, so it yields two paths.
fn expand_tokens(entry: &str, origin: &Path) -> Vec<PathBuf> {
    let origin = origin.to_string_lossy();
    let mut s = entry
        .replace("${ORIGIN}", &origin)
        .replace("$ORIGIN", &origin)
        .replace("${PLATFORM}", std::env::consts::ARCH)
        .replace("$PLATFORM", std::env::consts::ARCH);
    if s.contains("$LIB") || s.contains("${LIB}") {
        s = s.replace("${LIB}", "$LIB");
        let multiarch = format!("lib/{MULTIARCH}");
        return vec![
            PathBuf::from(s.replace("$LIB", &multiarch)),
            PathBuf::from(s.replace("$LIB", "lib64")),
        ];
    }
    vec![PathBuf::from(s)]
}

/// Library directories named by `conf` and the files it includes.
fn ld_so_conf_dirs(conf: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let mut visited = HashSet::new();
    read_ld_so_conf(conf, 0, &mut dirs, &mut visited);
    dirs
}

fn read_ld_so_conf(
    conf: &Path,
    depth: usize,
    dirs: &mut Vec<PathBuf>,
    visited: &mut HashSet<PathBuf>,
) {
    let real = fs::canonicalize(conf).unwrap_or_else(|_| conf.to_path_buf());
    if depth > 8 || !visited.insert(real) {
        return;
    }
    let Ok(text) = fs::read_to_string(conf) else {
        return;
    };
    let base = conf.parent().unwrap_or(Path::new("/"));
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() || line.starts_with("hwcap ") {
            continue;
        }
        if let Some(globs) = line
            .strip_prefix("include")
            .filter(|r| r.starts_with([' ', '\t']))
        {
            for glob in globs.split_whitespace() {
                let glob = base.join(glob);
                for file in expand_glob(&glob) {
                    read_ld_so_conf(&file, depth + 1, dirs, visited);
                }
            }
            continue;
        }
        // Old syntax: `dir=TYPE`, and several directories on a line.
        for dir in line.split([' ', '\t', ',', ':']).filter(|d| !d.is_empty()) {
            let dir = dir.split('=').next().unwrap_or(dir);
            let dir = PathBuf::from(dir);
            if dir.is_absolute() && !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
    }
}

/// Files matching `pattern`, whose wildcards may only be in the last
/// component (as in every `ld.so.conf` seen in practice), sorted.
fn expand_glob(pattern: &Path) -> Vec<PathBuf> {
    let Some(name) = pattern
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
    else {
        return Vec::new();
    };
    if !name.contains(['*', '?']) {
        return vec![pattern.to_path_buf()];
    }
    let dir = pattern.parent().unwrap_or(Path::new("/"));
    let matcher = WildMatch::new(&name);
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| matcher.matches(&e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .collect();
    files.sort();
    files
}

/// Finds a command as `execvp` does: a name with `/` is a path (returned if
/// it exists); otherwise the first executable regular file of that name in
/// `$PATH` (default `/usr/local/bin:/usr/bin:/bin`).
pub fn resolve_command(cmd: &str) -> Option<PathBuf> {
    if cmd.is_empty() {
        return None;
    }
    if cmd.contains('/') {
        let p = PathBuf::from(cmd);
        return p.exists().then_some(p);
    }
    let path_var =
        std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    path_var
        .as_bytes()
        .split(|&b| b == b':')
        .map(|dir| {
            let dir = if dir.is_empty() {
                OsStr::new(".")
            } else {
                OsStr::from_bytes(dir)
            };
            Path::new(dir).join(cmd)
        })
        .find(|p| is_executable_file(p))
}

fn is_executable_file(p: &Path) -> bool {
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_maps_lines() {
        let l = parse_maps_line(
            b"7f1c2a428000-7f1c2a5bd000 r-xp 00028000 fd:01 1835019                    /usr/lib/x86_64-linux-gnu/libc.so.6",
        )
        .expect("file line");
        assert_eq!(l.start, 0x7f1c2a428000);
        assert_eq!(l.end, 0x7f1c2a5bd000);
        assert!(l.executable);
        assert_eq!(l.dev, makedev(0xfd, 1));
        assert_eq!(l.inode, 1835019);
        assert_eq!(l.path, PathBuf::from("/usr/lib/x86_64-linux-gnu/libc.so.6"));

        let spaced =
            parse_maps_line(b"00400000-00401000 r--p 00000000 08:01 42 /tmp/my prog (deleted)")
                .expect("file line");
        assert_eq!(spaced.path, PathBuf::from("/tmp/my prog (deleted)"));
        assert_eq!(spaced.start, 0x400000);
        assert!(!spaced.executable);

        assert!(
            parse_maps_line(b"7ffd1b1f2000-7ffd1b1f4000 r-xp 00000000 00:00 0   [vdso]").is_none()
        );
        assert!(
            parse_maps_line(b"55d0c6a00000-55d0c6a21000 rw-p 00000000 00:00 0   [heap]").is_none()
        );
        assert!(parse_maps_line(b"7f00-7f10 rw-p 00000000 00:00 0").is_none());
        assert!(parse_maps_line(b"").is_none());
        assert!(parse_maps_line(b"garbage").is_none());
        assert!(parse_maps_line(b"zz-yy r-xp 0 0:0 1 /x").is_none());
    }

    #[test]
    fn makedev_matches_stat() {
        // The root file system's device, as stat and maps see it.
        let meta = fs::metadata("/proc/self/exe").expect("stat exe");
        let dev = meta.dev();
        let (major, minor) = (libc::major(dev), libc::minor(dev));
        assert_eq!(makedev(major, minor), dev);
    }

    #[test]
    fn own_process_modules() {
        let modules = process_modules(std::process::id()).expect("own maps");
        let main = modules.first().expect("some module");
        assert!(main.is_main, "{modules:?}");
        let exe = fs::canonicalize("/proc/self/exe").expect("exe");
        assert_eq!(main.path, exe);
        assert_eq!(modules.iter().filter(|m| m.is_main).count(), 1);
        assert!(
            modules.iter().any(|m| m
                .path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libc.so"))),
            "{modules:?}"
        );
        let mut ids: Vec<_> = modules.iter().map(|m| (m.dev, m.inode)).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), modules.len());
        for m in &modules {
            let meta = fs::metadata(&m.open_path).expect("open path is readable");
            assert_eq!(meta.ino(), m.inode, "{m:?}");
        }
    }

    #[test]
    fn missing_process() {
        // Above the kernel's pid limit (4194304 at most).
        assert!(matches!(
            process_modules(99_999_999),
            Err(SymbolError::NoSuchProcess { pid: 99_999_999 })
        ));
    }

    #[test]
    fn resolves_commands() {
        let sh = resolve_command("sh").expect("sh in PATH");
        assert!(sh.is_absolute() || sh.starts_with("."));
        assert!(is_executable_file(&sh));
        assert_eq!(resolve_command("/bin/sh"), Some(PathBuf::from("/bin/sh")));
        assert_eq!(resolve_command("no-such-command-scope-test"), None);
        assert_eq!(resolve_command("./no/such/file"), None);
        assert_eq!(resolve_command(""), None);
    }

    #[test]
    fn token_expansion() {
        let origin = Path::new("/opt/app/bin");
        assert_eq!(
            expand_tokens("$ORIGIN/../lib", origin),
            vec![PathBuf::from("/opt/app/bin/../lib")]
        );
        assert_eq!(
            expand_tokens("${ORIGIN}", origin),
            vec![PathBuf::from("/opt/app/bin")]
        );
        assert_eq!(expand_tokens("/usr/$LIB", origin).len(), 2);
    }

    #[test]
    fn ld_so_conf_with_includes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        fs::create_dir(d.join("conf.d")).expect("mkdir");
        fs::write(
            d.join("ld.so.conf"),
            "# comment\ninclude conf.d/*.conf\n/opt/one\n",
        )
        .expect("write");
        fs::write(d.join("conf.d/b.conf"), "/opt/b # trailing\n").expect("write");
        fs::write(d.join("conf.d/a.conf"), "/opt/a\n\ninclude ../ld.so.conf\n").expect("write");
        fs::write(d.join("conf.d/ignored.txt"), "/opt/no\n").expect("write");
        assert_eq!(
            ld_so_conf_dirs(&d.join("ld.so.conf")),
            vec![
                PathBuf::from("/opt/a"),
                PathBuf::from("/opt/b"),
                PathBuf::from("/opt/one")
            ]
        );
    }
}
