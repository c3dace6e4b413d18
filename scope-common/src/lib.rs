//! The kernel/user boundary of scope: plain `#[repr(C)]` records written by
//! the eBPF programs into the ring buffer and read by the agent, plus the
//! names and limits both sides must agree on.
//!
//! Both `scope-ebpf` and `scope-agent` compile against these definitions, so a
//! layout change cannot drift between them. The `user` feature adds
//! `aya::Pod` impls for the agent.
#![no_std]

/// One uprobe hit: a function entry or a function return.
///
/// 24 bytes, so a ring-buffer reservation (with its 8-byte header) stays at
/// 32 bytes. The function id is the BPF cookie of the probe, so the kernel
/// never looks anything up.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawEvent {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds.
    pub ktime_ns: u64,
    /// `bpf_get_current_pid_tgid()`: tgid in the upper 32 bits, tid in the lower.
    pub pid_tgid: u64,
    /// The probe's BPF cookie: the agent's function id.
    pub function_id: u32,
    /// [`EVENT_ENTRY`] or [`EVENT_RETURN`].
    pub kind: u32,
}

impl RawEvent {
    #[inline]
    pub const fn tgid(&self) -> u32 {
        (self.pid_tgid >> 32) as u32
    }
    #[inline]
    pub const fn tid(&self) -> u32 {
        self.pid_tgid as u32
    }
}

pub const EVENT_ENTRY: u32 = 1;
pub const EVENT_RETURN: u32 = 2;

/// Size of one ring-buffer record, as the ring accounts it (8-byte header
/// plus the record rounded up to 8 bytes).
pub const RING_RECORD_BYTES: usize = 8 + core::mem::size_of::<RawEvent>();

/// Map and program names, shared so the agent finds what the object defines.
pub mod names {
    pub const EVENTS_MAP: &str = "EVENTS";
    pub const LOST_MAP: &str = "LOST";
    pub const ENTRY_PROGRAM: &str = "scope_entry";
    pub const RETURN_PROGRAM: &str = "scope_return";
    /// Global (`.rodata`) set at load time: only events of this tgid are kept
    /// (0 keeps all).
    pub const TARGET_TGID_GLOBAL: &str = "TARGET_TGID";
    /// Global set at load time: force a wake-up of the reader once this many
    /// bytes wait in the ring; below it, events are submitted without one.
    pub const WAKE_BYTES_GLOBAL: &str = "WAKE_BYTES";
}

/// Default ring-buffer size (bytes, a power of two multiple of the page size).
pub const DEFAULT_RING_BYTES: u32 = 8 << 20;

#[cfg(feature = "user")]
// SAFETY: RawEvent is #[repr(C)], Copy, made only of integers, with no padding
// (8 + 8 + 4 + 4 bytes), so every bit pattern is a valid value.
unsafe impl aya::Pod for RawEvent {}

const _: () = assert!(core::mem::size_of::<RawEvent>() == 24);
