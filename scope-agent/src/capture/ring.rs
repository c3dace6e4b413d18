//! The ring reader: drains the BPF ring buffer in batches on the agent's own
//! schedule and turns the kernel's per-CPU loss counters into [`LossRecord`]s.
//!
//! Events are submitted without a wake-up unless the ring is filling, so the
//! reader polls with a short timeout and drains everything that is there.

use std::os::fd::AsRawFd;
use std::time::Duration;

use aya::maps::{MapData, PerCpuArray, RingBuf};
use scope_common::{
    ArgsEvent, ArgsStrEvent, EVENT_ENTRY_ARGS, EVENT_ENTRY_ARGS_STR, EVENT_ENTRY_GO,
    EVENT_RETURN_GO, EVENT_RETURN_RET, GoEvent, RawEvent, RetEvent,
};

use super::LossRecord;
use super::correlator::Correlator;

pub struct RingReader {
    events: RingBuf<MapData>,
    /// A read-only view of the ring's consumer and producer positions, for
    /// the fill gauge; `None` if it could not be mapped.
    positions: Option<RingPositions>,
    /// Bytes waiting in the ring at the start of the last drain.
    fill_bytes: u64,
    lost: PerCpuArray<MapData, u64>,
    /// Loss counter per CPU at the last read.
    lost_seen: Vec<u64>,
    /// Epoch ns of the last loss read: the start of the next loss window.
    lost_window_start: i64,
    lost_total: u64,
    /// Sum of the loss counters at the last [`Self::lost_since_check`].
    lost_checked: u64,
    malformed: u64,
}

impl RingReader {
    pub fn new(events: RingBuf<MapData>, lost: PerCpuArray<MapData, u64>, now_ns: i64) -> Self {
        Self {
            events,
            positions: None,
            fill_bytes: 0,
            lost,
            lost_seen: Vec::new(),
            lost_window_start: now_ns,
            lost_total: 0,
            lost_checked: 0,
            malformed: 0,
        }
    }

    /// Waits until the kernel forces a wake-up (the ring is filling) or the
    /// timeout passes. Returns early on a signal; either way the caller drains.
    pub fn wait(&self, timeout: Duration) {
        let mut pfd = libc::pollfd {
            fd: self.events.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, ms) };
    }

    /// Maps the ring's position pages read-only so [`Self::fill_pct`] can
    /// report how full the ring was. `ring_bytes` is the ring's data size.
    /// Without it (the mapping failed) the fill is unknown, never guessed.
    pub fn watch_fill(&mut self, ring_bytes: u32) -> std::io::Result<()> {
        self.positions = Some(RingPositions::map(self.events.as_raw_fd(), ring_bytes)?);
        Ok(())
    }

    /// Percent of the ring that was waiting to be read at the start of the
    /// last drain (the fullest it gets between two drains); `None` unknown.
    pub fn fill_pct(&self) -> Option<f64> {
        let p = self.positions.as_ref()?;
        Some(100.0 * self.fill_bytes as f64 / f64::from(p.ring_bytes))
    }

    /// Feeds every event now in the ring to the correlator. Returns how many.
    ///
    /// Records have different lengths: every one starts with a [`RawEvent`]
    /// whose `kind` says whether a longer record ([`ArgsEvent`],
    /// [`RetEvent`], [`GoEvent`]) follows. A record shorter than its kind needs is counted
    /// as malformed and skipped.
    pub fn drain(&mut self, correlator: &mut Correlator) -> usize {
        if let Some(p) = &self.positions {
            self.fill_bytes = p.waiting_bytes();
        }
        let mut n = 0;
        while let Some(item) = self.events.next() {
            let bytes: &[u8] = &item;
            match parse(bytes) {
                Some(Record::Plain(ev)) => correlator.on_event(&ev),
                Some(Record::Args(ev)) => correlator.on_args_entry(&ev),
                Some(Record::ArgsStr(ev)) => correlator.on_args_str_entry(&ev),
                Some(Record::Ret(ev)) => correlator.on_ret_return(&ev),
                Some(Record::RetAddr(ev)) => correlator.on_ret_addr_return(&ev),
                Some(Record::Go(ev)) => correlator.on_go_event(&ev),
                Some(Record::Marker(ev)) => correlator.on_marker(&ev),
                None => {
                    self.malformed += 1;
                    continue;
                }
            }
            n += 1;
        }
        n
    }

    /// Events the kernel could not reserve since the last call, per CPU.
    pub fn read_losses(&mut self, now_ns: i64) -> Vec<LossRecord> {
        let mut out = Vec::new();
        let Ok(values) = self.lost.get(&0, 0) else {
            return out;
        };
        if self.lost_seen.len() < values.len() {
            self.lost_seen.resize(values.len(), 0);
        }
        for (cpu, &count) in values.iter().enumerate() {
            let delta = count.saturating_sub(self.lost_seen[cpu]);
            if delta > 0 {
                out.push(LossRecord {
                    cpu: cpu as u32,
                    start_ns: self.lost_window_start,
                    end_ns: now_ns,
                    lost: delta,
                });
                self.lost_total += delta;
            }
            self.lost_seen[cpu] = count;
        }
        self.lost_window_start = now_ns;
        out
    }

    /// Whether the kernel lost events since the last call (a single map
    /// read: the sum of the per-CPU counters). Independent of
    /// [`Self::read_losses`] and its windows.
    pub fn lost_since_check(&mut self) -> bool {
        let Ok(values) = self.lost.get(&0, 0) else {
            return false;
        };
        let sum: u64 = values.iter().sum();
        let changed = sum != self.lost_checked;
        self.lost_checked = sum;
        changed
    }

    pub fn lost_total(&self) -> u64 {
        self.lost_total
    }

    /// `--sched`: the scheduler's events the kernel could not write (their
    /// own loss slot: they are not in `lost`), all CPUs, so far.
    pub fn sched_lost(&self) -> u64 {
        self.lost
            .get(&scope_common::LOST_SCHED, 0)
            .map_or(0, |v| v.iter().sum())
    }

    /// Ring records too short to be an event (never expected; counted).
    pub fn malformed(&self) -> u64 {
        self.malformed
    }
}

/// The first two pages of a BPF ring buffer map, mapped read-only: the
/// consumer position (page 0, advanced by aya's reader) and the producer
/// position (page 1, advanced by the kernel). aya 0.14 keeps its own mapping
/// private, so this is a second, read-only view of the same pages.
struct RingPositions {
    base: *mut libc::c_void,
    page: usize,
    ring_bytes: u32,
}

impl RingPositions {
    fn map(fd: std::os::fd::RawFd, ring_bytes: u32) -> std::io::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .map_err(|_| std::io::Error::other("page size"))?;
        // SAFETY: a fresh shared read-only mapping of the ring map's first two
        // pages (the kernel allows read-only mappings of any of its pages);
        // the result is checked before use and unmapped in Drop.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * page,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self {
            base,
            page,
            ring_bytes,
        })
    }

    /// Bytes the producer has written that the consumer has not yet read.
    fn waiting_bytes(&self) -> u64 {
        // SAFETY: both positions are naturally aligned u64s at the start of
        // a mapped page, written concurrently by the kernel and the reader,
        // so they are read atomically.
        let (cons, prod) = unsafe {
            let cons = &*self.base.cast::<std::sync::atomic::AtomicU64>();
            let prod = &*self
                .base
                .cast::<u8>()
                .add(self.page)
                .cast::<std::sync::atomic::AtomicU64>();
            (
                cons.load(std::sync::atomic::Ordering::Acquire),
                prod.load(std::sync::atomic::Ordering::Acquire),
            )
        };
        prod.saturating_sub(cons)
    }
}

impl Drop for RingPositions {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`.
        unsafe { libc::munmap(self.base, 2 * self.page) };
    }
}

/// One ring record, by kind.
#[derive(Debug, PartialEq, Eq)]
pub enum Record {
    Plain(RawEvent),
    Args(ArgsEvent),
    /// An entry with `char *` strings (boxed: 608 bytes).
    ArgsStr(Box<ArgsStrEvent>),
    Ret(RetEvent),
    /// A return with the socket address the function filled in (accept).
    RetAddr(scope_common::RetAddrEvent),
    /// A Go entry or RET-site hit, with the goroutine pointer.
    Go(GoEvent),
    /// A USDT probe fired, with its arguments.
    Marker(ArgsEvent),
}

/// Reads one ring record: the [`RawEvent`] header, then by its kind the
/// longer record. `None` when the bytes are too short for the kind.
pub fn parse(bytes: &[u8]) -> Option<Record> {
    let head: RawEvent = read(bytes)?;
    Some(match head.kind {
        EVENT_ENTRY_ARGS => Record::Args(read(bytes)?),
        scope_common::EVENT_MARKER => Record::Marker(read(bytes)?),
        EVENT_ENTRY_ARGS_STR => Record::ArgsStr(Box::new(read(bytes)?)),
        EVENT_RETURN_RET => Record::Ret(read(bytes)?),
        scope_common::EVENT_RETURN_ADDR => Record::RetAddr(read(bytes)?),
        EVENT_ENTRY_GO | EVENT_RETURN_GO => Record::Go(read(bytes)?),
        _ => Record::Plain(head),
    })
}

fn read<T: aya::Pod>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: `bytes` holds at least size_of::<T>() bytes; T is Pod (plain
    // integers, any bit pattern valid) and read_unaligned has no alignment
    // requirement.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T: aya::Pod>(v: &T) -> Vec<u8> {
        // SAFETY: T is Pod, so its bytes are initialised plain data.
        unsafe {
            std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>())
        }
        .to_vec()
    }

    #[test]
    fn records_parse_by_kind() {
        let head = RawEvent {
            ktime_ns: 1,
            pid_tgid: 2,
            function_id: 3,
            kind: scope_common::EVENT_ENTRY,
        };
        assert_eq!(parse(&bytes_of(&head)), Some(Record::Plain(head)));
        let args = ArgsEvent {
            head: RawEvent {
                kind: EVENT_ENTRY_ARGS,
                ..head
            },
            args: [1, 2, 3, 4, 5, 6],
        };
        let b = bytes_of(&args);
        assert_eq!(b.len(), 72);
        assert_eq!(parse(&b), Some(Record::Args(args)));
        // Cut short: the header says 72 bytes, only 24 are there.
        assert_eq!(parse(&b[..24]), None);
        let ret = RetEvent {
            head: RawEvent {
                kind: EVENT_RETURN_RET,
                ..head
            },
            ret: 9,
        };
        assert_eq!(parse(&bytes_of(&ret)), Some(Record::Ret(ret)));
        assert_eq!(parse(&bytes_of(&ret)[..31]), None);
        assert_eq!(parse(&[0u8; 23]), None);
        let go = GoEvent {
            head: RawEvent {
                kind: EVENT_RETURN_GO,
                ..head
            },
            goid_key: 0xc000_0001,
        };
        assert_eq!(parse(&bytes_of(&go)), Some(Record::Go(go)));
        assert_eq!(parse(&bytes_of(&go)[..24]), None);
        let mut strs = ArgsStrEvent {
            args: ArgsEvent {
                head: RawEvent {
                    kind: EVENT_ENTRY_ARGS_STR,
                    ..head
                },
                args: [1, 2, 3, 4, 5, 6],
            },
            str_len: [3, -14],
            strs: [[0; scope_common::STR_BUF]; scope_common::MAX_STR_ARGS],
        };
        strs.strs[0][..3].copy_from_slice(b"ab\0");
        let b = bytes_of(&strs);
        assert_eq!(b.len(), 608);
        assert_eq!(parse(&b), Some(Record::ArgsStr(Box::new(strs))));
        // Only the 72-byte prefix: too short for the kind.
        assert_eq!(parse(&b[..72]), None);
    }
}
