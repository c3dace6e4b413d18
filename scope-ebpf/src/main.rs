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
//! With `--arg-strings`, the cookie also names (bits 40..45, two 3-bit
//! fields) the registers of up to two `char *` parameters; the entry then
//! reserves a fixed-size [`ArgsStrEvent`] and reads each string with
//! `bpf_probe_read_user_str` straight into the ring record, at most
//! `STR_CAP + 2` bytes (a load-time global). Functions without string
//! parameters keep the 72-byte record.
//!
//! Go functions get no return probe (a uretprobe rewrites the return address
//! on the goroutine's stack, which Go may move). Their cookie carries
//! [`COOKIE_GO_FLAG`]: the entry record then holds r14 (the goroutine's `g`
//! pointer in Go's register ABI), and `scope_ret_site`, a plain uprobe on
//! every RET instruction of the function, writes the return with r14 too.
//!
//! `scope_sample` is the on-CPU sampler: a `perf_event` program on a
//! cpu-clock event per CPU (99 Hz). For a sample of the target's tgid it
//! takes the user stack's id (`bpf_get_stackid`, frame-pointer walk) and
//! writes a [`SampleEvent`] to its own ring, `SAMPLES`: the uprobe programs
//! above are untouched by it, samples never take room from calls, and a
//! lost sample never marks a call lost. Failures are counted per CPU.
//!
//! `scope_sched_switch` and `scope_sched_wakeup` (`--sched`) are raw
//! tracepoints (no tracefs needed): for threads of the target they write
//! plain records into `EVENTS`, the calls' own ring, so the agent sees a
//! thread leave and regain its CPU in order with its calls' entries and
//! returns. Which fields of `task_struct` hold the pid and tgid is read
//! by the agent from the kernel's BTF and set as load-time globals.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::bpf_probe_read_kernel,
    helpers::{
        bpf_get_attach_cookie, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        generated::bpf_get_smp_processor_id, generated::bpf_probe_read_user_str,
    },
    macros::{map, perf_event, raw_tracepoint, uprobe, uretprobe},
    maps::{HashMap, PerCpuArray, RingBuf, StackTrace},
    programs::{
        PerfEventContext, ProbeContext, RawTracePointContext, RetProbeContext,
        tracing::StackIdContext,
    },
};
use scope_common::{
    ArgsEvent, ArgsStrEvent, COOKIE_ARGS_FLAG, COOKIE_GO_FLAG, COOKIE_RAW0_FLAG, COOKIE_RAW1_FLAG,
    COOKIE_RET_ADDR_FLAG, COOKIE_STR_MASK, COOKIE_STR0_SHIFT, COOKIE_STR1_SHIFT,
    DEFAULT_RING_BYTES, EVENT_ENTRY, EVENT_ENTRY_ARGS, EVENT_ENTRY_ARGS_STR, EVENT_ENTRY_GO,
    EVENT_MARKER, EVENT_RETURN, EVENT_RETURN_ADDR, EVENT_RETURN_GO, EVENT_RETURN_RET,
    EVENT_SWITCH_IN, EVENT_SWITCH_OUT, EVENT_WAKEUP, GoEvent, LOST_CALLS, LOST_SCHED, LOST_SLOTS,
    MAX_ADDR_PTRS, MAX_ARGS, MAX_STR, RawEvent, RetAddrEvent, RetEvent, SAMPLE_ERR_COLLISION,
    SAMPLE_ERR_LOST, SAMPLE_ERR_SLOTS, SAMPLE_ERR_STACK, SAMPLE_RING_BYTES, SAMPLE_STACKS,
    SOCKADDR_BYTES, SampleEvent, USDT_ARG_CONST, USDT_ARG_DEREF, USDT_ARG_REG, UsdtArg, UsdtSpec,
};

/// `BPF_F_USER_STACK`: the user stack of the interrupted task.
const BPF_F_USER_STACK: u64 = 1 << 8;
/// `EEXIST`: the stack's bucket holds another stack (a hash collision).
const EEXIST: i32 = 17;

/// Both string register fields of the cookie.
const COOKIE_STR_FIELDS: u64 =
    (COOKIE_STR_MASK << COOKIE_STR0_SHIFT) | (COOKIE_STR_MASK << COOKIE_STR1_SHIFT);

/// Events to user space. The agent sets the real size at load time.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

/// Per-CPU count of events that could not be reserved (ring full): slot
/// [`LOST_CALLS`] for the probes' events, [`LOST_SCHED`] for the
/// scheduler's (kept apart so `events + lost` is the probes' own count).
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOST_SLOTS, 0);

/// Calls per function id during the governor's warm-up: `scope_count`
/// adds one per entry, per CPU (no atomics). The agent sets the size at
/// load time (the number of function ids).
#[map]
static COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// On-CPU samples to user space (`scope_sample`); its own ring, so the
/// calls' ring and its loss counter never see a sample.
#[map]
static SAMPLES: RingBuf = RingBuf::with_byte_size(SAMPLE_RING_BYTES, 0);

/// User stacks of the samples by stack id. The agent shrinks it to one slot
/// where it loads the object for uprobes only.
#[map]
static STACKS: StackTrace = StackTrace::with_max_entries(SAMPLE_STACKS, 0);

/// Per-CPU counts of samples without a stack or not written, by
/// `SAMPLE_ERR_*` slot: nothing is lost silently.
#[map]
static SAMPLE_ERRORS: PerCpuArray<u64> = PerCpuArray::with_max_entries(SAMPLE_ERR_SLOTS, 0);

/// Keep only events of this tgid (0: keep all). Set by the agent at load time.
#[unsafe(no_mangle)]
static TARGET_TGID: u32 = 0;

/// Wake the reader once this many bytes wait in the ring. Set at load time.
#[unsafe(no_mangle)]
static WAKE_BYTES: u64 = 256 * 1024;

/// `--arg-strings`: bytes kept per string (0: off). Set at load time.
#[unsafe(no_mangle)]
static STR_CAP: u32 = 0;

/// USDT probes' argument specs by probe id. The agent sets the size at load
/// time and fills it before attaching.
#[map]
static USDT_SPECS: HashMap<u32, UsdtSpec> = HashMap::with_max_entries(1, 0);

/// `--hooks net`: per thread inside accept/accept4, the address its second
/// argument points to, read at the return (the kernel fills it in then).
#[map]
static ADDR_PTRS: HashMap<u64, u64> = HashMap::with_max_entries(MAX_ADDR_PTRS, 0);

/// Byte offsets of `pid` and `tgid` in the kernel's `struct task_struct`,
/// from its BTF. Set at load time when `--sched` is on.
#[unsafe(no_mangle)]
static TASK_PID_OFF: u32 = 0;
#[unsafe(no_mangle)]
static TASK_TGID_OFF: u32 = 0;

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
    } else if cookie & COOKIE_STR_FIELDS != 0 {
        args_with_strings(&ctx, pid_tgid, cookie);
    } else {
        // rdi, rsi, rdx, rcx, r8, r9 (System V x86-64), read from the
        // saved registers: no helper call, no user memory touched.
        let reg = |n: usize| ctx.arg::<u64>(n).unwrap_or(0);
        if cookie & COOKIE_RET_ADDR_FLAG != 0 {
            // A full map only loses the address, never the call.
            let _ = ADDR_PTRS.insert(&pid_tgid, &reg(1), 0);
        }
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
    } else if cookie & COOKIE_RET_ADDR_FLAG != 0 {
        return_with_addr(&ctx, pid_tgid, cookie);
    } else {
        record::<RetEvent>(|| RetEvent {
            head: head(pid_tgid, cookie, EVENT_RETURN_RET),
            ret: ctx.ret::<u64>(),
        });
    }
    0
}

/// accept's return: rax and the peer's address the kernel wrote where the
/// entry's rsi pointed (kept in ADDR_PTRS), copied into the record.
#[inline(always)]
fn return_with_addr(ctx: &RetProbeContext, pid_tgid: u64, cookie: u64) {
    // SAFETY: a lookup of this thread's own entry, removed right after.
    let ptr = unsafe { ADDR_PTRS.get(&pid_tgid) }.copied().unwrap_or(0);
    let _ = ADDR_PTRS.remove(&pid_tgid);
    let Some(mut entry) = EVENTS.reserve::<RetAddrEvent>(0) else {
        count_loss(LOST_CALLS);
        return;
    };
    let p = entry.as_mut_ptr();
    // SAFETY: `p` points at the reserved record; every field is written
    // before the submit.
    unsafe {
        (*p).ret = RetEvent {
            head: head(pid_tgid, cookie, EVENT_RETURN_ADDR),
            ret: ctx.ret::<u64>(),
        };
        (*p)._pad = 0;
        (*p).addr = [0; 32];
        (*p).len = if ptr == 0 {
            0
        } else {
            let r = aya_ebpf::helpers::generated::bpf_probe_read_user(
                (*p).addr.as_mut_ptr().cast(),
                SOCKADDR_BYTES,
                ptr as *const core::ffi::c_void,
            );
            if r == 0 {
                SOCKADDR_BYTES as i32 + 1
            } else {
                r as i32
            }
        };
    }
    submit(entry);
}

/// The governor's warm-up: counts entries per function id in the kernel and
/// writes nothing to the ring. Attached (entry only) before recording
/// starts, to measure how often each function is called.
#[uprobe]
pub fn scope_count(ctx: ProbeContext) -> u32 {
    let Some((_, cookie)) = admit(ctx.as_ptr()) else {
        return 0;
    };
    if let Some(counter) = COUNTS.get_ptr_mut(cookie as u32) {
        // SAFETY: this CPU's slot of a per-CPU array; nothing else writes it
        // while this program runs on this CPU.
        unsafe { *counter += 1 };
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

/// A USDT probe fired: its arguments, read as its spec in `USDT_SPECS`
/// says, into an [`ArgsEvent`] of kind [`EVENT_MARKER`].
#[uprobe]
pub fn scope_usdt(ctx: ProbeContext) -> u32 {
    let Some((pid_tgid, cookie)) = admit(ctx.as_ptr()) else {
        return 0;
    };
    let id = cookie as u32;
    let mut args = [0u64; MAX_ARGS];
    // SAFETY: a lookup of the map's value, read only while this program runs.
    if let Some(spec) = unsafe { USDT_SPECS.get(&id) } {
        let mut i = 0;
        while i < MAX_ARGS {
            if (i as u32) < spec.count {
                args[i] = usdt_arg(&ctx, &spec.args[i]);
            }
            i += 1;
        }
    }
    record::<ArgsEvent>(|| ArgsEvent {
        head: head(pid_tgid, cookie, EVENT_MARKER),
        args,
    });
    0
}

/// One USDT argument's value, cut to its size (sign-extended if signed).
#[inline(always)]
fn usdt_arg(ctx: &ProbeContext, a: &UsdtArg) -> u64 {
    let raw = match a.kind {
        USDT_ARG_CONST => a.value as u64,
        USDT_ARG_REG => register(ctx, a.reg),
        USDT_ARG_DEREF => {
            let at = register(ctx, a.reg).wrapping_add(a.value as u64);
            // SAFETY: the helper reads user memory safely (a bad address is
            // an error, never a fault).
            unsafe { aya_ebpf::helpers::bpf_probe_read_user(at as *const u64) }.unwrap_or(0)
        }
        _ => 0,
    };
    let shift = 64 - 8 * u32::from(a.size.clamp(1, 8));
    if a.signed != 0 {
        (((raw << shift) as i64) >> shift) as u64
    } else {
        (raw << shift) >> shift
    }
}

/// Register `n` of the probed thread (rax, rbx, rcx, rdx, rsi, rdi, rbp,
/// rsp, r8..r15, rip), from the probe's saved registers.
#[inline(always)]
fn register(ctx: &ProbeContext, n: u8) -> u64 {
    // SAFETY: `regs` is the probe's pt_regs context, readable by the program.
    let r = unsafe { &*ctx.regs };
    match n {
        0 => r.rax,
        1 => r.rbx,
        2 => r.rcx,
        3 => r.rdx,
        4 => r.rsi,
        5 => r.rdi,
        6 => r.rbp,
        7 => r.rsp,
        8 => r.r8,
        9 => r.r9,
        10 => r.r10,
        11 => r.r11,
        12 => r.r12,
        13 => r.r13,
        14 => r.r14,
        15 => r.r15,
        16 => r.rip,
        _ => 0,
    }
}

/// `sched_switch(bool preempt, struct task_struct *prev, struct task_struct
/// *next, unsigned int prev_state)`, in `prev`'s context: a thread of the
/// target leaves its CPU, or one gets it. Only with a target tgid.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn scope_sched_switch(ctx: RawTracePointContext) -> i32 {
    // SAFETY: a load-time constant, as in `admit`.
    let target = unsafe { core::ptr::read_volatile(&TARGET_TGID) };
    if target == 0 {
        return 0;
    }
    let prev = bpf_get_current_pid_tgid();
    // SAFETY: a plain helper call without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if (prev >> 32) as u32 == target {
        let state: u64 = ctx.arg(3);
        record_in::<RawEvent>(LOST_SCHED, || RawEvent {
            ktime_ns: now,
            pid_tgid: prev,
            function_id: state as u32,
            kind: EVENT_SWITCH_OUT,
        });
    }
    let next: u64 = ctx.arg(2);
    if let Some(next) = task_ids(next, target) {
        record_in::<RawEvent>(LOST_SCHED, || RawEvent {
            ktime_ns: now,
            pid_tgid: next,
            function_id: 0,
            kind: EVENT_SWITCH_IN,
        });
    }
    0
}

/// `sched_waking(struct task_struct *p)`, at the start of the wake-up, in
/// the waker's context: a thread of the target is being made runnable.
/// (`sched_wakeup` fires later, and on the wakee's CPU when the wake-up is
/// queued there: in whatever task runs on that CPU, often the idle one.)
#[raw_tracepoint(tracepoint = "sched_waking")]
pub fn scope_sched_wakeup(ctx: RawTracePointContext) -> i32 {
    // SAFETY: a load-time constant, as in `admit`.
    let target = unsafe { core::ptr::read_volatile(&TARGET_TGID) };
    if target == 0 {
        return 0;
    }
    let task: u64 = ctx.arg(0);
    if let Some(woken) = task_ids(task, target) {
        let waker = bpf_get_current_pid_tgid();
        record_in::<RawEvent>(LOST_SCHED, || RawEvent {
            // SAFETY: a plain helper call without arguments.
            ktime_ns: unsafe { bpf_ktime_get_ns() },
            pid_tgid: waker,
            function_id: woken as u32,
            kind: EVENT_WAKEUP,
        });
    }
    0
}

/// The task's `tgid << 32 | pid` when it belongs to `target`.
#[inline(always)]
fn task_ids(task: u64, target: u32) -> Option<u64> {
    if task == 0 {
        return None;
    }
    // SAFETY: load-time constants, as in `admit`.
    let (pid_off, tgid_off) = unsafe {
        (
            core::ptr::read_volatile(&TASK_PID_OFF),
            core::ptr::read_volatile(&TASK_TGID_OFF),
        )
    };
    if tgid_off == 0 {
        return None;
    }
    // SAFETY: the helper reads kernel memory safely (a bad address is an
    // error, never a fault); `task` is the tracepoint's task_struct pointer.
    let tgid = unsafe { bpf_probe_read_kernel((task + u64::from(tgid_off)) as *const u32) }.ok()?;
    if tgid != target {
        return None;
    }
    // SAFETY: as above.
    let pid = unsafe { bpf_probe_read_kernel((task + u64::from(pid_off)) as *const u32) }.ok()?;
    Some((u64::from(tgid) << 32) | u64::from(pid))
}

/// One cpu-clock tick on some CPU: if the target was running there, its
/// user stack id and a [`SampleEvent`] into `SAMPLES`. The agent always sets
/// `TARGET_TGID` for this program (a sampler of every process is not a
/// mode scope has).
#[perf_event]
pub fn scope_sample(ctx: PerfEventContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: a load-time constant, as in `admit`.
    let target = unsafe { core::ptr::read_volatile(&TARGET_TGID) };
    if (pid_tgid >> 32) as u32 != target {
        return 0;
    }
    let stack_id = match ctx.get_stackid(&STACKS, BPF_F_USER_STACK) {
        Ok(id) => id as i32,
        Err(e) => {
            count_sample_error(if e == -EEXIST {
                SAMPLE_ERR_COLLISION
            } else {
                SAMPLE_ERR_STACK
            });
            e
        }
    };
    let Some(mut entry) = SAMPLES.reserve::<SampleEvent>(0) else {
        count_sample_error(SAMPLE_ERR_LOST);
        return 0;
    };
    entry.write(SampleEvent {
        // SAFETY: plain helper calls without arguments.
        ktime_ns: unsafe { bpf_ktime_get_ns() },
        pid_tgid,
        stack_id,
        // SAFETY: as above.
        cpu: unsafe { bpf_get_smp_processor_id() },
    });
    // 99 samples a second per CPU: the reader polls, no wake-up needed.
    entry.submit(BPF_RB_NO_WAKEUP as u64);
    0
}

#[inline(always)]
fn count_sample_error(slot: u32) {
    if let Some(counter) = SAMPLE_ERRORS.get_ptr_mut(slot) {
        // SAFETY: this CPU's slot of a per-CPU array, as in `count_loss`.
        unsafe { *counter += 1 };
    }
}

/// An entry with its registers and up to two user strings, written straight
/// into a fixed-size ring record (608 bytes: too big for the BPF stack).
#[inline(always)]
fn args_with_strings(ctx: &ProbeContext, pid_tgid: u64, cookie: u64) {
    let Some(mut entry) = EVENTS.reserve::<ArgsStrEvent>(0) else {
        count_loss(LOST_CALLS);
        return;
    };
    let reg = |n: usize| ctx.arg::<u64>(n).unwrap_or(0);
    let p = entry.as_mut_ptr();
    // SAFETY: a load-time constant, read like TARGET_TGID.
    let cap = unsafe { core::ptr::read_volatile(&STR_CAP) };
    // cap + 1 characters and the NUL: a result of cap + 2 means truncated.
    let size = if cap as usize > MAX_STR {
        MAX_STR as u32
    } else {
        cap
    } + 2;
    // SAFETY: `p` points at the reserved, writable record of this type;
    // every field is written before the submit (the string bytes past each
    // NUL are not read by the agent).
    unsafe {
        (*p).args = ArgsEvent {
            head: head(pid_tgid, cookie, EVENT_ENTRY_ARGS_STR),
            args: [reg(0), reg(1), reg(2), reg(3), reg(4), reg(5)],
        };
        let regs = (*p).args.args.as_ptr();
        (*p).str_len[0] = read_str(
            regs,
            cookie >> COOKIE_STR0_SHIFT,
            (*p).strs[0].as_mut_ptr(),
            size,
            cookie & COOKIE_RAW0_FLAG != 0,
        );
        (*p).str_len[1] = read_str(
            regs,
            cookie >> COOKIE_STR1_SHIFT,
            (*p).strs[1].as_mut_ptr(),
            size,
            cookie & COOKIE_RAW1_FLAG != 0,
        );
    }
    submit(entry);
}

/// Reads the NUL-terminated user string whose address is in the register
/// the 3-bit `field` names (1 = rdi … 6 = r9; taken from the registers
/// already copied into the record, `regs`) into `dst` (`size` <= `STR_BUF`
/// bytes). 0 when the field is unused, negative on a fault. With `raw`, a
/// socket address: [`SOCKADDR_BYTES`] bytes copied as they are, the result
/// `SOCKADDR_BYTES + 1` (the length a string of that many bytes would
/// have).
#[inline(always)]
fn read_str(regs: *const u64, field: u64, dst: *mut u8, size: u32, raw: bool) -> i32 {
    let field = field & COOKIE_STR_MASK;
    if field == 0 || field > MAX_ARGS as u64 {
        return 0;
    }
    // SAFETY: `regs` points at the record's six saved registers and
    // `field - 1` is below six (checked above).
    let src = unsafe { core::ptr::read_volatile(regs.add((field - 1) as usize)) };
    if raw {
        // SAFETY: `dst` has room for STR_BUF >= SOCKADDR_BYTES bytes; the
        // helper reads user memory safely.
        let r = unsafe {
            aya_ebpf::helpers::generated::bpf_probe_read_user(
                dst.cast(),
                SOCKADDR_BYTES,
                src as *const core::ffi::c_void,
            )
        };
        return if r == 0 {
            SOCKADDR_BYTES as i32 + 1
        } else {
            r as i32
        };
    } // SAFETY: `dst` has room for `size` bytes; the helper reads user memory
    // safely (a bad address is an error, never a fault).
    unsafe { bpf_probe_read_user_str(dst.cast(), size, src as *const core::ffi::c_void) as i32 }
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
    record_in(LOST_CALLS, fill)
}

/// [`record`], a failed reserve counted in loss slot `slot`.
#[inline(always)]
fn record_in<T: 'static>(slot: u32, fill: impl FnOnce() -> T) {
    let Some(mut entry) = EVENTS.reserve::<T>(0) else {
        count_loss(slot);
        return;
    };
    entry.write(fill());
    submit(entry);
}

/// Submits a filled record without a wake-up unless a quarter of the ring
/// is waiting.
#[inline(always)]
fn submit<T: 'static>(entry: aya_ebpf::maps::ring_buf::RingBufEntry<T>) {
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
fn count_loss(slot: u32) {
    if let Some(counter) = LOST.get_ptr_mut(slot) {
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
