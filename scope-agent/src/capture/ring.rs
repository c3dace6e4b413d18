//! The ring reader: drains the BPF ring buffer in batches on the agent's own
//! schedule and turns the kernel's per-CPU loss counters into [`LossRecord`]s.
//!
//! Events are submitted without a wake-up unless the ring is filling, so the
//! reader polls with a short timeout and drains everything that is there.

use std::os::fd::AsRawFd;
use std::time::Duration;

use aya::maps::{MapData, PerCpuArray, RingBuf};
use scope_common::RawEvent;

use super::LossRecord;
use super::correlator::Correlator;

pub struct RingReader {
    events: RingBuf<MapData>,
    lost: PerCpuArray<MapData, u64>,
    /// Loss counter per CPU at the last read.
    lost_seen: Vec<u64>,
    /// Epoch ns of the last loss read: the start of the next loss window.
    lost_window_start: i64,
    lost_total: u64,
    malformed: u64,
}

impl RingReader {
    pub fn new(events: RingBuf<MapData>, lost: PerCpuArray<MapData, u64>, now_ns: i64) -> Self {
        Self {
            events,
            lost,
            lost_seen: Vec::new(),
            lost_window_start: now_ns,
            lost_total: 0,
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

    /// Feeds every event now in the ring to the correlator. Returns how many.
    pub fn drain(&mut self, correlator: &mut Correlator) -> usize {
        let mut n = 0;
        while let Some(item) = self.events.next() {
            if item.len() < std::mem::size_of::<RawEvent>() {
                self.malformed += 1;
                continue;
            }
            // SAFETY: the item holds at least size_of::<RawEvent>() bytes written
            // by scope's eBPF program; RawEvent is plain integers (any bit
            // pattern is valid) and read_unaligned has no alignment requirement.
            let ev = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<RawEvent>()) };
            correlator.on_event(&ev);
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

    pub fn lost_total(&self) -> u64 {
        self.lost_total
    }

    /// Ring records too short to be an event (never expected; counted).
    pub fn malformed(&self) -> u64 {
        self.malformed
    }
}
