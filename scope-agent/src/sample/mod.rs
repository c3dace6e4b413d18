//! On-CPU sampling of the target: a `cpu-clock` perf event per online CPU
//! at 99 Hz, each running `scope_sample` (scope-ebpf), which keeps the
//! target's samples and takes their user stacks (frame-pointer walk) into a
//! stack map. The path reads `perf event → SAMPLES ring → Sampler →
//! Symbolizer → samples table`.
//!
//! The sampler is its own load of the eBPF object, with its own ring: the
//! uprobe programs, the calls' ring and its loss counter are untouched by
//! it, so a session's calls cost exactly what they did, and `plan` (which
//! probes nothing) needs no uprobe machinery. [`SamplerThread`] runs it
//! next to a `record`/`attach` session; `plan` drives a [`Sampler`] itself.
//!
//! Stacks come from frame pointers: a target built without them gives one
//! or two frames per sample (the leaf and whatever its frame register
//! held), so self shares stay right and inclusive shares are missing.

pub mod plan;
pub mod symbolize;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use aya::maps::{MapData, PerCpuArray, RingBuf, StackTraceMap};
use aya::programs::PerfEvent;
use aya::programs::perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent};
use aya::{Ebpf, EbpfLoader};
use scope_common::{
    SAMPLE_ERR_COLLISION, SAMPLE_ERR_LOST, SAMPLE_ERR_STACK, SAMPLE_RING_BYTES, SampleEvent, names,
};

use crate::probe::attach::{EBPF_OBJECT, ring_size};
use crate::storage::{SampleRow, SamplesWriter};
use crate::time::SessionClock;
use symbolize::{Stack, Symbolizer};

/// Samples per second per CPU: not a divisor of common timer rates, so
/// the samples do not lock step with periodic work.
pub const SAMPLE_HZ: u64 = 99;

#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    #[error("loading the sampler: {0}")]
    Load(String),
    #[error("opening the cpu-clock perf event on CPU {cpu}: {reason}")]
    Open { cpu: u32, reason: String },
}

/// Samples the kernel could not take in full, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SampleErrors {
    /// The stack's bucket in the stack map held another stack (stored
    /// without a stack).
    pub collisions: u64,
    /// No user stack could be taken (stored without a stack).
    pub no_stack: u64,
    /// The samples ring was full: not stored at all.
    pub lost: u64,
}

/// The loaded and attached sampler of one process. Dropping it detaches.
pub struct Sampler {
    /// Holds the program and its perf links (dropping detaches).
    _ebpf: Ebpf,
    ring: RingBuf<MapData>,
    stacks: StackTraceMap<MapData>,
    errors: PerCpuArray<MapData, u64>,
    pid: u32,
    /// CPUs sampled.
    pub cpus: usize,
}

impl Sampler {
    /// Loads `scope_sample` for `pid` and attaches it to a cpu-clock event
    /// at `hz` on every online CPU.
    pub fn start(pid: u32, hz: u64) -> Result<Self, SampleError> {
        let load = |e: &dyn std::error::Error| SampleError::Load(error_chain(e));
        let mut ebpf = EbpfLoader::new()
            .override_global(names::TARGET_TGID_GLOBAL, &pid, true)
            .map_max_entries(names::EVENTS_MAP, ring_size(0))
            .map_max_entries(names::SAMPLES_MAP, ring_size(SAMPLE_RING_BYTES))
            .load(EBPF_OBJECT)
            .map_err(|e| load(&e))?;
        let cpus = online_cpus();
        {
            let prog: &mut PerfEvent = ebpf
                .program_mut(names::SAMPLE_PROGRAM)
                .ok_or_else(|| SampleError::Load(format!("no program {}", names::SAMPLE_PROGRAM)))?
                .try_into()
                .map_err(|e: aya::programs::ProgramError| load(&e))?;
            prog.load().map_err(|e| load(&e))?;
            for &cpu in &cpus {
                prog.attach(
                    PerfEventConfig::Software(SoftwareEvent::CpuClock),
                    PerfEventScope::AllProcessesOneCpu { cpu },
                    SamplePolicy::Frequency(hz),
                    false,
                )
                .map_err(|e| SampleError::Open {
                    cpu,
                    reason: error_chain(&e),
                })?;
            }
        }
        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name)
                .ok_or_else(|| SampleError::Load(format!("no map {name}")))
        };
        let ring = RingBuf::try_from(take(&mut ebpf, names::SAMPLES_MAP)?).map_err(|e| load(&e))?;
        let stacks =
            StackTraceMap::try_from(take(&mut ebpf, names::STACKS_MAP)?).map_err(|e| load(&e))?;
        let errors = PerCpuArray::try_from(take(&mut ebpf, names::SAMPLE_ERRORS_MAP)?)
            .map_err(|e| load(&e))?;
        Ok(Self {
            _ebpf: ebpf,
            ring,
            stacks,
            errors,
            pid,
            cpus: cpus.len(),
        })
    }

    /// Reads every sample in the ring into `out`, symbolized, times in Unix
    /// epoch ns by `clock`. Returns how many.
    pub fn drain(
        &mut self,
        sym: &mut Symbolizer,
        clock: &SessionClock,
        out: &mut Vec<SampleRow>,
    ) -> usize {
        let mut n = 0;
        let empty: Arc<[String]> = Arc::from(Vec::new());
        while let Some(item) = self.ring.next() {
            let bytes: &[u8] = &item;
            if bytes.len() < size_of::<SampleEvent>() {
                continue;
            }
            // SAFETY: at least size_of::<SampleEvent>() bytes, read
            // unaligned; SampleEvent is plain integers (aya::Pod).
            let ev: SampleEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
            let stacks = &self.stacks;
            let stack: Option<Arc<Stack>> = (ev.stack_id >= 0)
                .then(|| {
                    sym.stack(ev.stack_id, || {
                        stacks
                            .get(&(ev.stack_id as u32), 0)
                            .ok()
                            .map(|t| t.frames().iter().map(|f| f.ip).collect())
                    })
                })
                .flatten();
            out.push(SampleRow {
                pid: (ev.pid_tgid >> 32) as u32,
                tid: ev.pid_tgid as u32,
                time_ns: clock.epoch_ns(ev.ktime_ns),
                cpu: ev.cpu,
                stack: stack.as_ref().map(|s| s.addrs.clone()).unwrap_or_default(),
                frames: stack
                    .as_ref()
                    .map_or_else(|| Arc::clone(&empty), |s| Arc::clone(&s.frames)),
                stack_id: stack.is_some().then_some(ev.stack_id),
            });
            n += 1;
        }
        n
    }

    /// Waits up to `timeout` for the ring (samples are submitted without a
    /// wake-up: this is a sleep that a signal cuts short).
    pub fn wait(&self, timeout: Duration) {
        use std::os::fd::AsRawFd as _;
        let mut pfd = libc::pollfd {
            fd: self.ring.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, ms) };
    }

    /// The kernel's failure counters, summed over CPUs.
    pub fn errors(&self) -> SampleErrors {
        let slot = |i: u32| -> u64 { self.errors.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0) };
        SampleErrors {
            collisions: slot(SAMPLE_ERR_COLLISION),
            no_stack: slot(SAMPLE_ERR_STACK),
            lost: slot(SAMPLE_ERR_LOST),
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }
}

/// What a [`SamplerThread`] did.
#[derive(Debug, Default)]
pub struct SamplerReport {
    pub samples: u64,
    pub errors: SampleErrors,
    /// Files written (path, size).
    pub files: Vec<(std::path::PathBuf, u64)>,
    /// Stack depths' median (0 without samples).
    pub median_depth: usize,
}

/// Rows kept in memory before a `samples` part is written.
const PART_ROWS: usize = 50_000;

/// The sampler next to a `record`/`attach` session, on a thread of its
/// own: drains and symbolizes every 100 ms (while the process is alive,
/// so its mappings can be read), writes `samples` parts. A sampler that
/// cannot start warns once and the session goes on without samples.
pub struct SamplerThread {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<anyhow::Result<SamplerReport>>,
}

impl SamplerThread {
    pub fn spawn(pid: u32, clock: SessionClock, mut writer: SamplesWriter) -> Option<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread_stop = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("scope-sampler".into())
            .spawn(move || -> anyhow::Result<SamplerReport> {
                let mut sampler = match Sampler::start(pid, SAMPLE_HZ) {
                    Ok(s) => {
                        let _ = ready_tx.send(Ok(()));
                        s
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return Ok(SamplerReport::default());
                    }
                };
                let mut sym = Symbolizer::new(pid);
                let mut rows = Vec::new();
                let mut report = SamplerReport::default();
                let mut depths = DepthCounter::default();
                loop {
                    let stopping = thread_stop.load(Ordering::Relaxed);
                    report.samples += sampler.drain(&mut sym, &clock, &mut rows) as u64;
                    if rows.len() >= PART_ROWS || (stopping && !rows.is_empty()) {
                        depths.add(&rows);
                        report.files.push(writer.write(&rows)?);
                        rows.clear();
                    }
                    if stopping {
                        break;
                    }
                    sampler.wait(Duration::from_millis(100));
                }
                report.errors = sampler.errors();
                report.median_depth = depths.median();
                Ok(report)
            })
            .ok()?;
        match ready_rx.recv() {
            Ok(Ok(())) => Some(Self { stop, handle }),
            Ok(Err(e)) => {
                eprintln!("scope: warning: no CPU samples: {e}");
                let _ = handle.join();
                None
            }
            Err(_) => {
                eprintln!("scope: warning: no CPU samples: the sampler thread ended");
                let _ = handle.join();
                None
            }
        }
    }

    /// Stops sampling, writes what is left, and says what was sampled.
    pub fn finish(self) -> anyhow::Result<SamplerReport> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .join()
            .map_err(|_| anyhow::anyhow!("the sampler thread panicked"))?
    }
}

/// Stack depths seen, for the median (frame pointers or not).
#[derive(Default)]
pub struct DepthCounter(Vec<u64>);

impl DepthCounter {
    pub fn add(&mut self, rows: &[SampleRow]) {
        for r in rows.iter().filter(|r| r.stack_id.is_some()) {
            let d = r.stack.len().min(255);
            if self.0.len() <= d {
                self.0.resize(d + 1, 0);
            }
            self.0[d] += 1;
        }
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    pub fn median(&self) -> usize {
        let total = self.total();
        let mut seen = 0;
        for (d, n) in self.0.iter().enumerate() {
            seen += n;
            if total > 0 && seen * 2 >= total {
                return d;
            }
        }
        0
    }
}

/// The online CPUs (`/sys/devices/system/cpu/online`, e.g. `0-3,5`);
/// every configured CPU if it cannot be read.
fn online_cpus() -> Vec<u32> {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|s| parse_cpu_list(s.trim()))
        .unwrap_or_else(|| {
            // SAFETY: sysconf has no preconditions.
            let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) }.max(1) as u32;
            (0..n).collect()
        })
}

fn parse_cpu_list(s: &str) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => out.extend(a.parse::<u32>().ok()?..=b.parse::<u32>().ok()?),
            None => out.push(part.parse().ok()?),
        }
    }
    (!out.is_empty()).then_some(out)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,5"), Some(vec![0, 1, 2, 3, 5]));
        assert_eq!(parse_cpu_list("0"), Some(vec![0]));
        assert_eq!(parse_cpu_list("x"), None);
    }

    #[test]
    fn median_depth() {
        let row = |d: usize| SampleRow {
            stack: vec![1; d],
            stack_id: Some(1),
            ..Default::default()
        };
        let mut c = DepthCounter::default();
        c.add(&[row(1), row(2), row(2), row(9)]);
        assert_eq!(c.median(), 2);
        c.add(&[SampleRow::default()]);
        assert_eq!(c.total(), 4);
    }
}
