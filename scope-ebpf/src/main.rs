//! scope's kernel side: one uprobe program for function entry and one for
//! function return. Each hit does the least it can: read the clock, the
//! pid/tid and the probe's cookie (the agent's function id), reserve one
//! 24-byte record in the ring buffer and submit it without waking the reader.
//! A failed reservation is counted per CPU, never dropped silently.
//!
//! When the cookie carries [`COOKIE_ARGS_FLAG`] (the user asked for this
//! function's arguments), the entry record also holds the six integer
//! argument registers (72 bytes) and the return record holds rax (32 bytes).
//! The flag is in the cookie the programs read anyway: no map lookup.
//!
//! Go functions get no return probe (a uretprobe rewrites the return address
//! on the goroutine's stack, which Go may move). Their cookie carries
//! [`COOKIE_GO_FLAG`]: the entry record then holds r14 (the goroutine's `g`
//! pointer in Go's register ABI), and `scope_ret_site`, a plain uprobe on
//! every RET instruction of the function, writes the return with r14 too.
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
use scope_common::{
    ArgsEvent, COOKIE_ARGS_FLAG, COOKIE_GO_FLAG, DEFAULT_RING_BYTES, EVENT_ENTRY, EVENT_ENTRY_ARGS,
    EVENT_ENTRY_GO, EVENT_RETURN, EVENT_RETURN_GO, EVENT_RETURN_RET, GoEvent, RawEvent, RetEvent,
};

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
    let Some((pid_tgid, cookie)) = admit(ctx.as_ptr()) else {
        return 0;
    };
    if cookie & (COOKIE_ARGS_FLAG | COOKIE_GO_FLAG) == 0 {
        record::<RawEvent>(|| head(pid_tgid, cookie, EVENT_ENTRY));
    } else if cookie & COOKIE_GO_FLAG != 0 {
        let g = goroutine(&ctx);
        record::<GoEvent>(|| GoEvent {
            head: head(pid_tgid, cookie, EVENT_ENTRY_GO),
            goid_key: g,
        });
    } else {
        // rdi, rsi, rdx, rcx, r8, r9 (System V x86-64), read from the
        // saved registers: no helper call, no user memory touched.
        let reg = |n: usize| ctx.arg::<u64>(n).unwrap_or(0);
        record::<ArgsEvent>(|| ArgsEvent {
            head: head(pid_tgid, cookie, EVENT_ENTRY_ARGS),
            args: [reg(0), reg(1), reg(2), reg(3), reg(4), reg(5)],
        });
    }
    0
}

#[uretprobe]
pub fn scope_return(ctx: RetProbeContext) -> u32 {
    let Some((pid_tgid, cookie)) = admit(ctx.as_ptr()) else {
        return 0;
    };
    if cookie & COOKIE_ARGS_FLAG == 0 {
        record::<RawEvent>(|| head(pid_tgid, cookie, EVENT_RETURN));
    } else {
        record::<RetEvent>(|| RetEvent {
            head: head(pid_tgid, cookie, EVENT_RETURN_RET),
            ret: ctx.ret::<u64>(),
        });
    }
    0
}

/// A RET instruction of a Go function is about to run: the function returns.
/// Attached (plain uprobe, multi link) to every RET of every probed Go
/// function, with the function id as cookie.
#[uprobe]
pub fn scope_ret_site(ctx: ProbeContext) -> u32 {
    let Some((pid_tgid, cookie)) = admit(ctx.as_ptr()) else {
        return 0;
    };
    let g = goroutine(&ctx);
    record::<GoEvent>(|| GoEvent {
        head: head(pid_tgid, cookie, EVENT_RETURN_GO),
        goid_key: g,
    });
    0
}

/// r14 at the probed instruction: the current goroutine's `g` in Go's
/// amd64 register ABI (Go >= 1.17), at function entry and at every RET.
#[inline(always)]
fn goroutine(ctx: &ProbeContext) -> u64 {
    // SAFETY: `regs` is the probe's pt_regs context, readable by the program.
    unsafe { (*ctx.regs).r14 }
}

/// The tgid filter: `Some((pid_tgid, cookie))` when the event is wanted.
#[inline(always)]
fn admit(ctx: *mut core::ffi::c_void) -> Option<(u64, u64)> {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: a read of a load-time constant; volatile so the compiler does not
    // fold the default value in.
    let target = unsafe { core::ptr::read_volatile(&TARGET_TGID) };
    if target != 0 && (pid_tgid >> 32) as u32 != target {
        return None;
    }
    // SAFETY: the helper only reads the attach cookie of the running program.
    let cookie = unsafe { bpf_get_attach_cookie(ctx) };
    Some((pid_tgid, cookie))
}

#[inline(always)]
fn head(pid_tgid: u64, cookie: u64, kind: u32) -> RawEvent {
    RawEvent {
        // SAFETY: a plain helper call without arguments.
        ktime_ns: unsafe { bpf_ktime_get_ns() },
        pid_tgid,
        function_id: cookie as u32,
        kind,
    }
}

/// Reserves one `T` in the ring, fills it and submits it without a wake-up
/// unless a quarter of the ring is waiting; a failed reserve is counted.
#[inline(always)]
fn record<T: 'static>(fill: impl FnOnce() -> T) {
    let Some(mut entry) = EVENTS.reserve::<T>(0) else {
        count_loss();
        return;
    };
    entry.write(fill());
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
