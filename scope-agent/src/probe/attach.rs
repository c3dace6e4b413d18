//! Loading scope's eBPF programs and attaching them with multi-uprobe links.
//!
//! aya 0.14 cannot create `BPF_TRACE_UPROBE_MULTI` links: it loads uprobe
//! programs without the `expected_attach_type` the kernel requires for them.
//! So aya creates the maps (ring buffer, loss counter, `.rodata` with the
//! load-time globals), and this module re-parses the same object with
//! `aya_obj`, points its map references at aya's map fds, loads the two
//! programs with a raw `BPF_PROG_LOAD` and creates one link per module and
//! direction with a raw `BPF_LINK_CREATE`. Closing a link's fd detaches it.
//! One link for hundreds of functions attaches in milliseconds and detaches
//! in tens of milliseconds; one perf link per function takes ~110 ms each to
//! detach (see `shared/toolchain.md`).
//!
//! All `unsafe` here is the `bpf(2)` syscall boundary.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use aya::maps::{Map, MapData, PerCpuArray, RingBuf};
use aya::{Ebpf, EbpfLoader};
use scope_common::names;

/// The compiled eBPF object, built by `build.rs`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/scope-ebpf"));

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_KPROBE: u32 = 2;
const BPF_TRACE_UPROBE_MULTI: u32 = 48;
const BPF_F_UPROBE_MULTI_RETURN: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("loading the eBPF object failed: {0}")]
    Load(String),
    #[error("the kernel rejected scope's {program} program: {source}{log}")]
    ProgLoad {
        program: &'static str,
        source: std::io::Error,
        log: String,
    },
    #[error("attaching {count} {direction} probes to {module} failed: {source}{hint}")]
    Link {
        count: usize,
        direction: &'static str,
        module: String,
        source: std::io::Error,
        hint: &'static str,
    },
    #[error("eBPF map {0} missing from the object")]
    MissingMap(&'static str),
}

/// Settings fixed when the programs are loaded.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// Keep only events of this process (0: all).
    pub target_tgid: u32,
    /// Ring-buffer size in bytes (rounded up to a power of two, ≥ 1 page).
    pub ring_bytes: u32,
    /// Force a reader wake-up once this many bytes wait in the ring.
    pub wake_bytes: u64,
}

/// The loaded programs and the maps user space reads.
pub struct LoadedProbes {
    entry_prog: OwnedFd,
    return_prog: OwnedFd,
    /// Plain uprobe for the RET instructions of Go functions.
    ret_site_prog: OwnedFd,
    /// Kept so aya's maps stay alive as long as the programs.
    _ebpf: Ebpf,
    /// `None` once taken by [`LoadedProbes::take_maps`].
    maps: Option<(RingBuf<MapData>, PerCpuArray<MapData, u64>)>,
}

/// One multi-uprobe link; dropping it detaches every probe in it.
#[derive(Debug)]
pub struct MultiLink {
    _fd: OwnedFd,
    pub count: usize,
}

/// One function to probe inside a module: the uprobe file offset and the
/// cookie the programs will report (the function id).
#[derive(Debug, Clone, Copy)]
pub struct ProbePoint {
    pub file_offset: u64,
    pub cookie: u64,
}

/// Rounds a requested ring size to what the kernel accepts: a power of two
/// multiple of the page size.
pub fn ring_size(requested: u32) -> u32 {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u32;
    requested.max(page).next_power_of_two()
}

impl LoadedProbes {
    pub fn load(opts: LoadOptions) -> Result<Self, AttachError> {
        let ring_bytes = ring_size(opts.ring_bytes);
        let mut ebpf = EbpfLoader::new()
            .override_global(names::TARGET_TGID_GLOBAL, &opts.target_tgid, true)
            .override_global(names::WAKE_BYTES_GLOBAL, &opts.wake_bytes, true)
            .map_max_entries(names::EVENTS_MAP, ring_bytes)
            .load(EBPF_OBJECT)
            .map_err(|e| AttachError::Load(error_chain(&e)))?;

        // Re-parse the object and point its map references at aya's maps.
        let mut obj =
            aya_obj::Object::parse(EBPF_OBJECT).map_err(|e| AttachError::Load(error_chain(&e)))?;
        let mut fds: HashMap<String, RawFd> = HashMap::new();
        for (name, map) in ebpf.maps() {
            if let Some(data) = map_data(map) {
                fds.insert(name.to_owned(), data.fd().as_fd().as_raw_fd());
            }
        }
        let text_sections: HashSet<usize> = obj.functions.keys().map(|(s, _)| *s).collect();
        let obj_maps = obj.maps.clone();
        let mut relocations = Vec::new();
        for (name, map) in &obj_maps {
            let fd = *fds
                .get(name)
                .ok_or_else(|| AttachError::Load(format!("aya did not create map {name}")))?;
            relocations.push((name.as_str(), fd, map));
        }
        obj.relocate_maps(relocations.into_iter(), &text_sections)
            .map_err(|e| AttachError::Load(error_chain(&e)))?;
        obj.relocate_calls(&text_sections)
            .map_err(|e| AttachError::Load(error_chain(&e)))?;

        let entry_prog = load_program(&obj, names::ENTRY_PROGRAM)?;
        let return_prog = load_program(&obj, names::RETURN_PROGRAM)?;
        let ret_site_prog = load_program(&obj, names::RET_SITE_PROGRAM)?;

        let events = ebpf
            .take_map(names::EVENTS_MAP)
            .ok_or(AttachError::MissingMap(names::EVENTS_MAP))?;
        let events = RingBuf::try_from(events).map_err(|e| AttachError::Load(error_chain(&e)))?;
        let lost = ebpf
            .take_map(names::LOST_MAP)
            .ok_or(AttachError::MissingMap(names::LOST_MAP))?;
        let lost = PerCpuArray::try_from(lost).map_err(|e| AttachError::Load(error_chain(&e)))?;
        Ok(Self {
            entry_prog,
            return_prog,
            ret_site_prog,
            _ebpf: ebpf,
            maps: Some((events, lost)),
        })
    }

    /// Takes the maps user space reads (the ring and the loss counters),
    /// keeping the programs so that modules loaded later can still be
    /// attached. `None` if already taken.
    pub fn take_maps(&mut self) -> Option<(RingBuf<MapData>, PerCpuArray<MapData, u64>)> {
        self.maps.take()
    }

    /// Attaches the entry program (and the return program, if `returns`) to
    /// `points` of the ELF file at `path`, for process `pid` only (0: every
    /// process that maps the file). Returns the links; dropping them detaches.
    pub fn attach_module(
        &self,
        path: &Path,
        points: &[ProbePoint],
        pid: u32,
        returns: bool,
    ) -> Result<Vec<MultiLink>, AttachError> {
        let mut links = vec![self.link(path, points, pid, Direction::Entry)?];
        if returns {
            links.push(self.link(path, points, pid, Direction::Return)?);
        }
        Ok(links)
    }

    /// Attaches the RET-site program (a plain uprobe) to `points`, the RET
    /// instructions of Go functions, each with its function id as cookie.
    pub fn attach_ret_sites(
        &self,
        path: &Path,
        points: &[ProbePoint],
        pid: u32,
    ) -> Result<MultiLink, AttachError> {
        self.link(path, points, pid, Direction::RetSite)
    }

    fn link(
        &self,
        path: &Path,
        points: &[ProbePoint],
        pid: u32,
        direction: Direction,
    ) -> Result<MultiLink, AttachError> {
        let ret = direction == Direction::Return;
        let (direction, prog) = match direction {
            Direction::Entry => ("entry", &self.entry_prog),
            Direction::Return => ("return", &self.return_prog),
            Direction::RetSite => ("RET-site", &self.ret_site_prog),
        };
        let err = |source: std::io::Error| {
            let hint = match source.raw_os_error() {
                Some(libc::ESRCH) => " (the process is gone)",
                Some(libc::EINVAL) => {
                    " (an offset is not an instruction boundary, or the kernel lacks multi-uprobe links)"
                }
                _ => "",
            };
            AttachError::Link {
                count: points.len(),
                direction,
                module: path.display().to_string(),
                source,
                hint,
            }
        };
        let c_path = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| err(std::io::Error::from_raw_os_error(libc::EINVAL)))?;
        let offsets: Vec<u64> = points.iter().map(|p| p.file_offset).collect();
        let cookies: Vec<u64> = points.iter().map(|p| p.cookie).collect();
        let mut attr = Attr::default();
        attr.put_u32(0, prog.as_raw_fd() as u32);
        attr.put_u32(8, BPF_TRACE_UPROBE_MULTI);
        attr.put_u64(16, c_path.as_ptr() as u64);
        attr.put_u64(24, offsets.as_ptr() as u64);
        attr.put_u64(32, 0);
        attr.put_u64(40, cookies.as_ptr() as u64);
        attr.put_u32(48, points.len() as u32);
        attr.put_u32(52, if ret { BPF_F_UPROBE_MULTI_RETURN } else { 0 });
        attr.put_u32(56, pid);
        let fd = attr.bpf(BPF_LINK_CREATE).map_err(err)?;
        Ok(MultiLink {
            _fd: fd,
            count: points.len(),
        })
    }
}

/// Which program a link runs, and whether it is a return link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Entry,
    Return,
    RetSite,
}

fn load_program(obj: &aya_obj::Object, name: &'static str) -> Result<OwnedFd, AttachError> {
    let program = obj
        .programs
        .get(name)
        .ok_or_else(|| AttachError::Load(format!("program {name} missing from the object")))?;
    let function = obj
        .functions
        .get(&program.function_key())
        .ok_or_else(|| AttachError::Load(format!("program {name} has no instructions")))?;
    let insns = &function.instructions;
    let license = c"GPL";
    let prog_name = {
        let mut buf = [0u8; 16];
        let n = name.len().min(15);
        buf[..n].copy_from_slice(&name.as_bytes()[..n]);
        buf
    };
    let attempt = |log: Option<&mut Vec<u8>>| {
        let mut attr = Attr::default();
        attr.put_u32(0, BPF_PROG_TYPE_KPROBE);
        attr.put_u32(4, insns.len() as u32);
        attr.put_u64(8, insns.as_ptr() as u64);
        attr.put_u64(16, license.as_ptr() as u64);
        if let Some(log) = log {
            attr.put_u32(24, 1);
            attr.put_u32(28, log.len() as u32);
            attr.put_u64(32, log.as_mut_ptr() as u64);
        }
        attr.bytes[48..64].copy_from_slice(&prog_name);
        attr.put_u32(68, BPF_TRACE_UPROBE_MULTI);
        attr.bpf(BPF_PROG_LOAD)
    };
    match attempt(None) {
        Ok(fd) => Ok(fd),
        Err(source) => {
            // Load again with the verifier log, to say why.
            let mut log = vec![0u8; 1 << 20];
            let _ = attempt(Some(&mut log));
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            let log = if tail.is_empty() {
                String::new()
            } else {
                format!(
                    "\nverifier log (last lines):\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            };
            Err(AttachError::ProgLoad {
                program: name,
                source,
                log,
            })
        }
    }
}

/// The maps scope's object defines are of these kinds; others are not needed.
fn map_data(map: &Map) -> Option<&MapData> {
    match map {
        Map::Array(d) | Map::PerCpuArray(d) | Map::RingBuf(d) | Map::HashMap(d) => Some(d),
        _ => None,
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

/// A zeroed `union bpf_attr` large enough for the commands used here; the
/// kernel accepts a shorter attr than its own and zero-fills the rest.
#[repr(C, align(8))]
struct Attr {
    bytes: [u8; 128],
}

impl Default for Attr {
    fn default() -> Self {
        Self { bytes: [0; 128] }
    }
}

impl Attr {
    fn put_u32(&mut self, off: usize, v: u32) {
        self.bytes[off..off + 4].copy_from_slice(&v.to_ne_bytes());
    }
    fn put_u64(&mut self, off: usize, v: u64) {
        self.bytes[off..off + 8].copy_from_slice(&v.to_ne_bytes());
    }
    fn bpf(&mut self, cmd: libc::c_long) -> Result<OwnedFd, std::io::Error> {
        // SAFETY: `self.bytes` is a valid, aligned bpf_attr of the given size;
        // every pointer stored in it (paths, offsets, cookies, instructions,
        // log buffer) outlives this call, and the kernel copies what it keeps.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                self.bytes.as_mut_ptr(),
                self.bytes.len() as u32,
            )
        };
        if ret < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: on success these commands return a new file descriptor that
        // nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(ret as RawFd) })
    }
}
