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
//! Kernels without multi-uprobe links (before 6.6) get the fallback: aya's
//! own per-function perf-event uprobes, one per function and direction,
//! with the function id as the BPF cookie. [`AttachModeChoice::Auto`] picks
//! it by a feature probe: load the multi-uprobe program copy and create a
//! one-offset link on a function of the agent itself, bound to the agent's
//! pid (never called, so it never fires).
//!
//! All `unsafe` here is the `bpf(2)` syscall boundary.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use std::num::NonZeroU32;

use aya::maps::{Map, MapData, PerCpuArray, RingBuf};
use aya::programs::raw_trace_point::RawTracePointLinkId;
use aya::programs::uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLink, UProbeScope};
use aya::programs::{RawTracePoint, UProbe};
use aya::{Ebpf, EbpfLoader};
use scope_common::names;

/// The compiled eBPF object, built by `build.rs`.
pub(crate) static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/scope-ebpf"));

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_KPROBE: u32 = 2;
const BPF_TRACE_UPROBE_MULTI: u32 = 48;
/// One program run at entry and (when it returns 0) at return, one link
/// (kernel 6.13+). Used only to measure its cost (`scope-agent calibrate`).
const BPF_TRACE_UPROBE_SESSION: u32 = 57;
const BPF_F_UPROBE_MULTI_RETURN: u32 = 1;

/// The most functions scope probes in one module. The kernel allows up to
/// 2^20 offsets in one multi-uprobe link (`MAX_UPROBE_MULTI_CNT`), but each
/// costs kernel memory and attach time; past this a pattern is almost
/// certainly too broad.
pub const MAX_FUNCTIONS_PER_MODULE: usize = 100_000;

/// How probes are attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    /// One `BPF_TRACE_UPROBE_MULTI` link per module and direction.
    Multi,
    /// One perf-event uprobe per function and direction (kernels before 6.6).
    Single,
}

/// What the user asked for: a mode, or a feature probe to choose one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttachModeChoice {
    #[default]
    Auto,
    Multi,
    Single,
}

impl AttachMode {
    pub fn name(self) -> &'static str {
        match self {
            AttachMode::Multi => "multi-uprobe links",
            AttachMode::Single => "one perf uprobe per function",
        }
    }
}

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
    #[error(
        "{count} functions matched in {module}, more than scope probes in one module \
         ({MAX_FUNCTIONS_PER_MODULE}): choose fewer with a narrower -f pattern"
    )]
    TooMany { count: usize, module: String },
    #[error(
        "attaching {direction} probe of function id {cookie} (offset {offset:#x}) in {module} failed: {reason}"
    )]
    Single {
        direction: &'static str,
        cookie: u64,
        offset: u64,
        module: String,
        reason: String,
    },
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
    /// `--arg-strings` cap in bytes (0: strings off).
    pub str_cap: u32,
    /// Slots of the warm-up call counters: the highest function id + 1.
    pub count_slots: u32,
    /// `--sched`: where `task_struct` keeps pid and tgid (from the kernel's
    /// BTF); the sched programs record nothing without it.
    pub task_offsets: Option<super::sched::TaskOffsets>,
    /// `-u`: how many USDT probes may be attached (the specs map's size).
    pub usdt_slots: u32,
}

/// The loaded programs and the maps user space reads.
pub struct LoadedProbes {
    mode: AttachMode,
    /// Multi mode: the program copies loaded with the multi-uprobe attach type.
    entry_prog: Option<OwnedFd>,
    return_prog: Option<OwnedFd>,
    /// Keeps aya's maps alive as long as the programs; in single mode its
    /// programs are the ones attached.
    ebpf: Ebpf,
    /// Multi mode: the RET-site program (a plain uprobe on the RET
    /// instructions of Go functions) with the multi-uprobe attach type.
    ret_site_prog: Option<OwnedFd>,
    /// Multi mode: the governor's warm-up program (entry only, counts).
    count_prog: Option<OwnedFd>,
    /// The warm-up's per-CPU call counters, by function id.
    counts: PerCpuArray<MapData, u64>,
    /// Multi mode, kernels with `uprobe.session`: the counting program
    /// loaded as a session program (for `scope-agent calibrate`).
    session_prog: Option<OwnedFd>,
    /// `None` once taken by [`LoadedProbes::take_maps`].
    maps: Option<(RingBuf<MapData>, PerCpuArray<MapData, u64>)>,
    /// `--sched`: the attached raw tracepoints (program name, link).
    sched_links: Vec<(&'static str, RawTracePointLinkId)>,
    /// Multi mode: the USDT program with the multi-uprobe attach type.
    usdt_prog: Option<OwnedFd>,
}

/// The probes of one module and direction; dropping it detaches them all.
#[derive(Debug)]
pub struct ProbeLink {
    _inner: LinkInner,
    /// Functions covered.
    pub count: usize,
}

#[derive(Debug)]
#[expect(dead_code, reason = "held only to be dropped: dropping detaches")]
enum LinkInner {
    /// One multi-uprobe link: closing the fd detaches every probe in it.
    Multi(OwnedFd),
    /// One perf-event link per function (each detaches on drop).
    Single(Vec<UProbeLink>),
}

/// Checks a module's function count against [`MAX_FUNCTIONS_PER_MODULE`].
pub fn check_function_count(module: &Path, count: usize) -> Result<(), AttachError> {
    if count > MAX_FUNCTIONS_PER_MODULE {
        return Err(AttachError::TooMany {
            count,
            module: module.display().to_string(),
        });
    }
    Ok(())
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
    /// Loads the programs for the attach mode `choice` asks for
    /// (`Auto`: multi-uprobe links if the kernel has them).
    pub fn load(opts: LoadOptions, choice: AttachModeChoice) -> Result<Self, AttachError> {
        let ring_bytes = ring_size(opts.ring_bytes);
        let mut ebpf = EbpfLoader::new()
            .override_global(names::TARGET_TGID_GLOBAL, &opts.target_tgid, true)
            .override_global(names::WAKE_BYTES_GLOBAL, &opts.wake_bytes, true)
            .override_global(names::STR_CAP_GLOBAL, &opts.str_cap, true)
            .override_global(
                names::TASK_PID_OFF_GLOBAL,
                &opts.task_offsets.map_or(0, |o| o.pid),
                true,
            )
            .override_global(
                names::TASK_TGID_OFF_GLOBAL,
                &opts.task_offsets.map_or(0, |o| o.tgid),
                true,
            )
            .map_max_entries(names::EVENTS_MAP, ring_bytes)
            .map_max_entries(names::COUNTS_MAP, opts.count_slots.max(1))
            .map_max_entries(names::USDT_SPECS_MAP, opts.usdt_slots.max(1))
            // The sampler's maps are the sampler's own load (`crate::sample`).
            .map_max_entries(names::STACKS_MAP, 1)
            .map_max_entries(names::SAMPLES_MAP, ring_size(0))
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

        let multi = match choice {
            AttachModeChoice::Single => None,
            AttachModeChoice::Multi => Some(load_multi_programs(&obj)?),
            AttachModeChoice::Auto => match load_multi_programs(&obj) {
                Ok(progs) if multi_link_works(&progs.0) => Some(progs),
                Ok(_) => None,
                Err(AttachError::ProgLoad { source, .. }) if lacks_feature(&source) => None,
                Err(e) => return Err(e),
            },
        };
        let (mode, entry_prog, return_prog, ret_site_prog, count_prog) = match multi {
            Some((entry, ret)) => (
                AttachMode::Multi,
                Some(entry),
                Some(ret),
                Some(load_program(&obj, names::RET_SITE_PROGRAM)?),
                Some(load_program(&obj, names::COUNT_PROGRAM)?),
            ),
            None => {
                for name in [
                    names::ENTRY_PROGRAM,
                    names::RETURN_PROGRAM,
                    names::RET_SITE_PROGRAM,
                    names::COUNT_PROGRAM,
                ] {
                    aya_uprobe(&mut ebpf, name)?
                        .load()
                        .map_err(|e| AttachError::Load(error_chain(&e)))?;
                }
                (AttachMode::Single, None, None, None, None)
            }
        };
        let usdt_prog = match mode {
            AttachMode::Multi if opts.usdt_slots > 0 => {
                Some(load_program(&obj, names::USDT_PROGRAM)?)
            }
            _ => None,
        };
        let session_prog = match mode {
            AttachMode::Multi => {
                load_program_as(&obj, names::COUNT_PROGRAM, BPF_TRACE_UPROBE_SESSION).ok()
            }
            AttachMode::Single => None,
        };
        let counts = ebpf
            .take_map(names::COUNTS_MAP)
            .ok_or(AttachError::MissingMap(names::COUNTS_MAP))?;
        let counts =
            PerCpuArray::try_from(counts).map_err(|e| AttachError::Load(error_chain(&e)))?;

        let events = ebpf
            .take_map(names::EVENTS_MAP)
            .ok_or(AttachError::MissingMap(names::EVENTS_MAP))?;
        let events = RingBuf::try_from(events).map_err(|e| AttachError::Load(error_chain(&e)))?;
        let lost = ebpf
            .take_map(names::LOST_MAP)
            .ok_or(AttachError::MissingMap(names::LOST_MAP))?;
        let lost = PerCpuArray::try_from(lost).map_err(|e| AttachError::Load(error_chain(&e)))?;
        Ok(Self {
            mode,
            entry_prog,
            return_prog,
            ret_site_prog,
            count_prog,
            counts,
            session_prog,
            ebpf,
            maps: Some((events, lost)),
            sched_links: Vec::new(),
            usdt_prog,
        })
    }

    /// `-u`: attaches the USDT program at `points` of the ELF file at `path`
    /// (cookie = probe id), for process `pid`, after storing each probe's
    /// argument spec. `ref_ctrs`: per point, the file offset of its
    /// semaphore (0: none), which the kernel increments while the link
    /// lives (the probe's code is skipped while it is 0). Needs multi-uprobe
    /// links.
    pub fn attach_usdt(
        &mut self,
        path: &Path,
        points: &[ProbePoint],
        ref_ctrs: &[u64],
        specs: &[scope_common::UsdtSpec],
        pid: u32,
    ) -> Result<ProbeLink, AttachError> {
        let err = |source: std::io::Error| AttachError::Link {
            count: points.len(),
            direction: "USDT",
            module: path.display().to_string(),
            source,
            hint: "",
        };
        let map = self
            .ebpf
            .map_mut(names::USDT_SPECS_MAP)
            .ok_or(AttachError::MissingMap(names::USDT_SPECS_MAP))?;
        let mut map: aya::maps::HashMap<_, u32, scope_common::UsdtSpec> =
            aya::maps::HashMap::try_from(map).map_err(|e| AttachError::Load(error_chain(&e)))?;
        for (p, spec) in points.iter().zip(specs) {
            map.insert(p.cookie as u32, *spec, 0)
                .map_err(|e| AttachError::Load(error_chain(&e)))?;
        }
        let prog = self
            .usdt_prog
            .as_ref()
            .ok_or_else(|| err(std::io::Error::from_raw_os_error(libc::EOPNOTSUPP)))?;
        let c_path = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| err(std::io::Error::from_raw_os_error(libc::EINVAL)))?;
        let offsets: Vec<u64> = points.iter().map(|p| p.file_offset).collect();
        let cookies: Vec<u64> = points.iter().map(|p| p.cookie).collect();
        let fd = create_multi_link_with(
            prog,
            &c_path,
            &offsets,
            Some(ref_ctrs),
            &cookies,
            pid,
            false,
            BPF_TRACE_UPROBE_MULTI,
        )
        .map_err(err)?;
        Ok(ProbeLink {
            _inner: LinkInner::Multi(fd),
            count: points.len(),
        })
    }

    /// `--sched`: loads and attaches the raw tracepoint programs on
    /// `sched_switch` and `sched_waking` (no tracefs needed). Their events go
    /// to the calls' ring. The error names the tracepoint that failed; what
    /// was attached before it stays until [`detach_sched`](Self::detach_sched).
    pub fn attach_sched(&mut self) -> Result<(), String> {
        for (program, tracepoint) in [
            (names::SCHED_SWITCH_PROGRAM, "sched_switch"),
            (names::SCHED_WAKEUP_PROGRAM, "sched_waking"),
        ] {
            let prog: &mut RawTracePoint = self
                .ebpf
                .program_mut(program)
                .ok_or_else(|| format!("program {program} missing from the object"))?
                .try_into()
                .map_err(|e| error_chain(&e))?;
            prog.load()
                .map_err(|e| format!("loading {program}: {}", error_chain(&e)))?;
            let link = prog
                .attach(tracepoint)
                .map_err(|e| format!("raw tracepoint {tracepoint}: {}", error_chain(&e)))?;
            self.sched_links.push((program, link));
        }
        Ok(())
    }

    /// Whether the sched programs are attached.
    pub fn sched_attached(&self) -> bool {
        !self.sched_links.is_empty()
    }

    /// Detaches the sched programs (no-op when none are attached).
    pub fn detach_sched(&mut self) {
        for (program, link) in std::mem::take(&mut self.sched_links) {
            if let Some(prog) = self.ebpf.program_mut(program)
                && let Ok(prog) = <&mut RawTracePoint>::try_from(prog)
            {
                let _ = prog.detach(link);
            }
        }
    }

    /// How this load attaches probes.
    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    /// Takes the maps user space reads (the ring and the loss counters),
    /// keeping the programs so that modules loaded later can still be
    /// attached. `None` if already taken.
    pub fn take_maps(&mut self) -> Option<(RingBuf<MapData>, PerCpuArray<MapData, u64>)> {
        self.maps.take()
    }

    /// Attaches the entry program (and the return program, if `returns`) to
    /// `points` of the ELF file at `path`, for process `pid` only (0: every
    /// process that maps the file). Returns the links, the entry link first;
    /// dropping them detaches.
    pub fn attach_module(
        &mut self,
        path: &Path,
        points: &[ProbePoint],
        pid: u32,
        returns: bool,
    ) -> Result<Vec<ProbeLink>, AttachError> {
        check_function_count(path, points.len())?;
        if !returns {
            return Ok(vec![self.link(path, points, pid, Direction::Entry)?]);
        }
        // The return link first: a call entered between the two links then
        // has a return without an entry (marked, or a window edge), never
        // an entry whose return is not probed (a frame that would stay open
        // under every later call of its thread).
        let ret = self.link(path, points, pid, Direction::Return)?;
        let entry = self.link(path, points, pid, Direction::Entry)?;
        Ok(vec![entry, ret])
    }

    /// Attaches the RET-site program (a plain uprobe) to `points`, the RET
    /// instructions of Go functions, each with its function id as cookie.
    pub fn attach_ret_sites(
        &mut self,
        path: &Path,
        points: &[ProbePoint],
        pid: u32,
    ) -> Result<ProbeLink, AttachError> {
        check_function_count(path, points.len())?;
        self.link(path, points, pid, Direction::RetSite)
    }

    /// Attaches the governor's counting program (entry only) to `points`:
    /// calls are counted per function id in the kernel, nothing is recorded.
    pub fn attach_counts(
        &mut self,
        path: &Path,
        points: &[ProbePoint],
        pid: u32,
    ) -> Result<ProbeLink, AttachError> {
        check_function_count(path, points.len())?;
        self.link(path, points, pid, Direction::Count)
    }

    /// Attaches the counting program as a `uprobe.session` program: it
    /// runs at entry and at return from one link. `None` when the kernel
    /// has no session uprobes. For measuring, not for recording.
    pub fn attach_session_counts(
        &mut self,
        path: &Path,
        points: &[ProbePoint],
        pid: u32,
    ) -> Option<Result<ProbeLink, AttachError>> {
        self.session_prog.as_ref()?;
        Some(self.multi_link(path, points, pid, Direction::Session))
    }

    /// The warm-up counters: calls per function id (index), summed over CPUs.
    pub fn read_counts(&self) -> Vec<u64> {
        let slots = self.counts.len();
        (0..slots)
            .map(|i| {
                self.counts
                    .get(&i, 0)
                    .map(|per_cpu| per_cpu.iter().sum())
                    .unwrap_or(0)
            })
            .collect()
    }

    fn link(
        &mut self,
        path: &Path,
        points: &[ProbePoint],
        pid: u32,
        direction: Direction,
    ) -> Result<ProbeLink, AttachError> {
        match self.mode {
            AttachMode::Multi => self.multi_link(path, points, pid, direction),
            AttachMode::Single => self.single_links(path, points, pid, direction),
        }
    }

    /// One perf-event uprobe per point, through aya, cookie = function id.
    fn single_links(
        &mut self,
        path: &Path,
        points: &[ProbePoint],
        pid: u32,
        direction: Direction,
    ) -> Result<ProbeLink, AttachError> {
        let name = direction.program();
        let direction = direction.name();
        let program = aya_uprobe(&mut self.ebpf, name)?;
        let scope = NonZeroU32::new(pid).map_or(UProbeScope::AllProcesses, UProbeScope::OneProcess);
        let mut links = Vec::with_capacity(points.len());
        for p in points {
            let err = |reason: String| AttachError::Single {
                direction,
                cookie: p.cookie,
                offset: p.file_offset,
                module: path.display().to_string(),
                reason,
            };
            let point = UProbeAttachPoint {
                location: UProbeAttachLocation::AbsoluteOffset(p.file_offset),
                cookie: Some(p.cookie),
            };
            let id = program
                .attach(point, path, scope)
                .map_err(|e| err(error_chain(&e)))?;
            links.push(program.take_link(id).map_err(|e| err(error_chain(&e)))?);
        }
        Ok(ProbeLink {
            _inner: LinkInner::Single(links),
            count: points.len(),
        })
    }

    fn multi_link(
        &self,
        path: &Path,
        points: &[ProbePoint],
        pid: u32,
        which: Direction,
    ) -> Result<ProbeLink, AttachError> {
        let ret = which == Direction::Return;
        let direction = which.name();
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
        let prog = match which {
            Direction::Entry => &self.entry_prog,
            Direction::Return => &self.return_prog,
            Direction::RetSite => &self.ret_site_prog,
            Direction::Count => &self.count_prog,
            Direction::Session => &self.session_prog,
        };
        let prog = prog
            .as_ref()
            .ok_or_else(|| err(std::io::Error::from_raw_os_error(libc::EBADF)))?;
        let attach_type = if which == Direction::Session {
            BPF_TRACE_UPROBE_SESSION
        } else {
            BPF_TRACE_UPROBE_MULTI
        };
        let fd = create_multi_link(prog, &c_path, &offsets, &cookies, pid, ret, attach_type)
            .map_err(err)?;
        Ok(ProbeLink {
            _inner: LinkInner::Multi(fd),
            count: points.len(),
        })
    }
}

/// Threads [`close_links`] uses at most. Each close waits for a kernel
/// grace period, and waits in parallel overlap: the governor's links (up to
/// 2,048, two per function) closed in 3.7 s with 32 threads, 1.0 s with 128,
/// 0.35 s with 512 and 0.28 s with 1024 (measured here). Threads waiting in
/// the kernel cost little but their stacks' address space.
const MAX_CLOSE_THREADS: usize = 1024;

/// Closes `links` on parallel threads and waits for all of them. Closing a
/// uprobe link waits for a kernel grace period (tens of milliseconds); the
/// waits of links closed together overlap, so many small links close in
/// about the time of a few.
pub fn close_links(links: Vec<ProbeLink>) {
    if links.len() <= 1 {
        drop(links);
        return;
    }
    let threads = links.len().min(MAX_CLOSE_THREADS);
    let mut shares: Vec<Vec<ProbeLink>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, l) in links.into_iter().enumerate() {
        if let Some(share) = shares.get_mut(i % threads) {
            share.push(l);
        }
    }
    std::thread::scope(|s| {
        for share in shares {
            if std::thread::Builder::new()
                .name("scope-detach".into())
                .spawn_scoped(s, move || drop(share))
                .is_err()
            {
                // No thread: they were dropped with the closure, on this one.
            }
        }
    });
}

/// Which program a link runs, and whether it is a return link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Entry,
    Return,
    /// The RET instructions of Go functions (a plain uprobe, kind RETURN).
    RetSite,
    /// The governor's warm-up: entries counted in the kernel.
    Count,
    /// The counting program as a session program (entry and return).
    Session,
}

impl Direction {
    fn name(self) -> &'static str {
        match self {
            Direction::Entry => "entry",
            Direction::Return => "return",
            Direction::RetSite => "RET-site",
            Direction::Count => "counting",
            Direction::Session => "session",
        }
    }

    fn program(self) -> &'static str {
        match self {
            Direction::Entry => names::ENTRY_PROGRAM,
            Direction::Return => names::RETURN_PROGRAM,
            Direction::RetSite => names::RET_SITE_PROGRAM,
            Direction::Count | Direction::Session => names::COUNT_PROGRAM,
        }
    }
}

/// `bpf(BPF_LINK_CREATE)` of a `BPF_TRACE_UPROBE_MULTI` link.
fn create_multi_link(
    prog: &OwnedFd,
    path: &CString,
    offsets: &[u64],
    cookies: &[u64],
    pid: u32,
    ret: bool,
    attach_type: u32,
) -> Result<OwnedFd, std::io::Error> {
    create_multi_link_with(prog, path, offsets, None, cookies, pid, ret, attach_type)
}

/// [`create_multi_link`] with reference counters (USDT semaphores: per
/// offset, the file offset of a u16 the kernel increments while attached).
#[expect(clippy::too_many_arguments, reason = "the fields of one bpf_attr")]
fn create_multi_link_with(
    prog: &OwnedFd,
    path: &CString,
    offsets: &[u64],
    ref_ctr_offsets: Option<&[u64]>,
    cookies: &[u64],
    pid: u32,
    ret: bool,
    attach_type: u32,
) -> Result<OwnedFd, std::io::Error> {
    if ref_ctr_offsets.is_some_and(|r| r.len() != offsets.len()) {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut attr = Attr::default();
    attr.put_u32(0, prog.as_raw_fd() as u32);
    attr.put_u32(8, attach_type);
    attr.put_u64(16, path.as_ptr() as u64);
    attr.put_u64(24, offsets.as_ptr() as u64);
    attr.put_u64(32, ref_ctr_offsets.map_or(0, |r| r.as_ptr() as u64));
    attr.put_u64(40, cookies.as_ptr() as u64);
    attr.put_u32(48, offsets.len().min(cookies.len()) as u32);
    attr.put_u32(52, if ret { BPF_F_UPROBE_MULTI_RETURN } else { 0 });
    attr.put_u32(56, pid);
    attr.bpf(BPF_LINK_CREATE)
}

/// Both program copies with the multi-uprobe attach type: (entry, return).
fn load_multi_programs(obj: &aya_obj::Object) -> Result<(OwnedFd, OwnedFd), AttachError> {
    Ok((
        load_program(obj, names::ENTRY_PROGRAM)?,
        load_program(obj, names::RETURN_PROGRAM)?,
    ))
}

/// The kernel-internal ENOTSUPP, which some BPF paths return to user space.
const KERNEL_ENOTSUPP: i32 = 524;

/// Errors by which a kernel says it does not know multi-uprobe programs or links.
fn lacks_feature(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | KERNEL_ENOTSUPP | libc::ENOSYS)
    )
}

/// A function of the agent that is never called: the feature probe's target.
#[inline(never)]
extern "C" fn multi_uprobe_feature_probe_target() -> u64 {
    std::hint::black_box(0x5c09e)
}

/// The feature probe: whether a one-offset multi-uprobe link can be created
/// on [`multi_uprobe_feature_probe_target`] in the agent's own executable,
/// bound to the agent's pid. The link is closed at once.
fn multi_link_works(entry_prog: &OwnedFd) -> bool {
    let Some((path, offset)) =
        own_file_offset(multi_uprobe_feature_probe_target as *const () as usize)
    else {
        // Cannot find a target for the probe: assume the modern path, whose
        // errors at attach time are explicit.
        return true;
    };
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return true;
    };
    match create_multi_link(
        entry_prog,
        &c_path,
        &[offset],
        &[0],
        std::process::id(),
        false,
        BPF_TRACE_UPROBE_MULTI,
    ) {
        Ok(_fd) => true,
        Err(e) => !lacks_feature(&e),
    }
}

/// The file and file offset of an address in the agent's own executable
/// mappings, from `/proc/self/maps`.
pub(crate) fn own_file_offset(addr: usize) -> Option<(std::path::PathBuf, u64)> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    for line in maps.lines() {
        let mut parts = line.split_whitespace();
        let range = parts.next()?;
        let perms = parts.next()?;
        let off = parts.next()?;
        let path = parts.nth(2)?;
        let (lo, hi) = range.split_once('-')?;
        let lo = usize::from_str_radix(lo, 16).ok()?;
        let hi = usize::from_str_radix(hi, 16).ok()?;
        if (lo..hi).contains(&addr) && perms.contains('x') && path.starts_with('/') {
            let off = u64::from_str_radix(off, 16).ok()?;
            return Some((path.into(), (addr - lo) as u64 + off));
        }
    }
    None
}

/// One of aya's uprobe programs, by name.
fn aya_uprobe<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut UProbe, AttachError> {
    ebpf.program_mut(name)
        .ok_or_else(|| AttachError::Load(format!("program {name} missing from the object")))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| AttachError::Load(error_chain(&e)))
}

fn load_program(obj: &aya_obj::Object, name: &'static str) -> Result<OwnedFd, AttachError> {
    load_program_as(obj, name, BPF_TRACE_UPROBE_MULTI)
}

fn load_program_as(
    obj: &aya_obj::Object,
    name: &'static str,
    attach_type: u32,
) -> Result<OwnedFd, AttachError> {
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
        attr.put_u32(68, attach_type);
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
        Map::Array(d)
        | Map::PerCpuArray(d)
        | Map::RingBuf(d)
        | Map::HashMap(d)
        | Map::StackTraceMap(d) => Some(d),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_many_functions_in_one_module_is_a_clear_error() {
        let module = Path::new("/usr/lib/libhuge.so");
        assert!(check_function_count(module, MAX_FUNCTIONS_PER_MODULE).is_ok());
        let err = check_function_count(module, MAX_FUNCTIONS_PER_MODULE + 1)
            .expect_err("over the limit")
            .to_string();
        assert!(
            err.contains("100001 functions matched in /usr/lib/libhuge.so"),
            "{err}"
        );
        assert!(err.contains("narrower -f pattern"), "{err}");
    }

    #[test]
    fn the_feature_probe_finds_its_target_in_the_own_executable() {
        let (path, offset) =
            own_file_offset(multi_uprobe_feature_probe_target as *const () as usize)
                .expect("the probe target is in an executable mapping");
        assert!(path.is_absolute(), "{}", path.display());
        assert!(offset > 0);
        // The offset points at the function's bytes in the file.
        let file = std::fs::read(&path).expect("readable");
        let at = offset as usize;
        // SAFETY: reading the first 4 code bytes of a function of this
        // process, which is mapped and executable.
        let code = unsafe {
            std::slice::from_raw_parts(multi_uprobe_feature_probe_target as *const u8, 4)
        };
        assert_eq!(&file[at..at + 4], code);
    }
}
