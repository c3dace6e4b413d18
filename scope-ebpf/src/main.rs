//! scope's kernel side: one uprobe program for function entry and one for
//! function return. Each hit does the least it can: read the clock, the
//! pid/tid and the probe's cookie (the agent's function id), reserve one
//! 24-byte record in the ring buffer and submit it without waking the reader.
//! A failed reservation is counted per CPU, never dropped silently.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_attach_cookie, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, uprobe, uretprobe},
    maps::{PerCpuArray, RingBuf},
    programs::{ProbeContext, RetProbeContext},
};
use scope_common::{DEFAULT_RING_BYTES, EVENT_ENTRY, EVENT_RETURN, RawEvent};

/// Events to user space. The agent sets the real size at load time.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

/// Per-CPU count of events that could not be reserved (ring full).
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Keep only events of this tgid (0: keep all). Set by the agent at load time.
#[unsafe(no_mangle)]
static TARGET_TGID: u32 = 0;

/// Wake the reader once this many bytes wait in the ring. Set at load time.
#[unsafe(no_mangle)]
static WAKE_BYTES: u64 = 256 * 1024;

#[uprobe]
pub fn scope_entry(ctx: ProbeContext) -> u32 {
    record(ctx.as_ptr(), EVENT_ENTRY);
    0
}

#[uretprobe]
pub fn scope_return(ctx: RetProbeContext) -> u32 {
    record(ctx.as_ptr(), EVENT_RETURN);
    0
}

#[inline(always)]
fn record(ctx: *mut core::ffi::c_void, kind: u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: a read of a load-time constant; volatile so the compiler does not
    // fold the default value in.
    let target = unsafe { core::ptr::read_volatile(&TARGET_TGID) };
    if target != 0 && (pid_tgid >> 32) as u32 != target {
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<RawEvent>(0) else {
        count_loss();
        return;
    };
    // SAFETY: the helper only reads the attach cookie of the running program.
    let cookie = unsafe { bpf_get_attach_cookie(ctx) };
    entry.write(RawEvent {
        // SAFETY: a plain helper call without arguments.
        ktime_ns: unsafe { bpf_ktime_get_ns() },
        pid_tgid,
        function_id: cookie as u32,
        kind,
    });
    // SAFETY: as above, a load-time constant.
    let wake_bytes = unsafe { core::ptr::read_volatile(&WAKE_BYTES) };
    let flags = if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= wake_bytes {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(flags as u64);
}

#[inline(always)]
fn count_loss() {
    if let Some(counter) = LOST.get_ptr_mut(0) {
        // SAFETY: the pointer is this CPU's slot of a per-CPU array; nothing
        // else writes it while this program runs on this CPU.
        unsafe { *counter += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
