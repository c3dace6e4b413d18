//! The kernel/user boundary of scope: plain `#[repr(C)]` records written by
//! the eBPF programs into the ring buffer and read by the agent, plus the
//! names and limits both sides must agree on.
//!
//! Both `scope-ebpf` and `scope-agent` compile against these definitions, so a
//! layout change cannot drift between them. The `user` feature adds
//! `aya::Pod` impls for the agent.
#![no_std]

/// One uprobe hit: a function entry or a function return. It is also the
/// header of the longer records ([`ArgsEvent`], [`RetEvent`]), so a reader
/// looks at `kind` first and then knows the length.
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
    /// [`EVENT_ENTRY`], [`EVENT_RETURN`], [`EVENT_ENTRY_ARGS`] or
    /// [`EVENT_RETURN_RET`]. The kind says how long the record is.
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
/// An entry with the six integer argument registers: an [`ArgsEvent`].
pub const EVENT_ENTRY_ARGS: u32 = 3;
/// A return with the integer return register: a [`RetEvent`].
pub const EVENT_RETURN_RET: u32 = 4;
/// An entry of a Go function: a [`GoEvent`] with the goroutine (g) pointer.
pub const EVENT_ENTRY_GO: u32 = 5;
/// A RET instruction of a Go function executed: a [`GoEvent`]. Go code gets
/// no return probe (a uretprobe rewrites the return address, which breaks
/// when Go moves the goroutine's stack); a plain uprobe on every RET
/// instruction of the function stands in for it.
pub const EVENT_RETURN_GO: u32 = 6;
/// An entry with the six argument registers and up to two NUL-terminated
/// strings read from user memory (`--arg-strings`): an [`ArgsStrEvent`].
pub const EVENT_ENTRY_ARGS_STR: u32 = 7;

/// `--sched`: a thread of the target leaves its CPU (`sched_switch`, in the
/// thread's own context). A plain [`RawEvent`] whose `function_id` holds the
/// task's state as it leaves ([`SCHED_PREEMPTED`] when it was still
/// runnable, i.e. preempted, not blocked).
pub const EVENT_SWITCH_OUT: u32 = 8;
/// `--sched`: a thread of the target gets a CPU again (`sched_switch`, in
/// the context of the thread it replaces). A plain [`RawEvent`] whose
/// `pid_tgid` is the incoming thread's; `function_id` is 0.
pub const EVENT_SWITCH_IN: u32 = 9;
/// `--sched`: a thread of the target is woken (`sched_waking`, in the
/// waker's context). A plain [`RawEvent`] whose `pid_tgid` is the waker's
/// (any process, or 0 for an interrupt) and `function_id` the woken tid.
pub const EVENT_WAKEUP: u32 = 10;
/// A USDT probe fired (`scope_usdt`): an [`ArgsEvent`] whose
/// `function_id` is the probe's id (its cookie) and whose `args` are the
/// probe's arguments, read as its [`UsdtSpec`] says (0 past its count).
pub const EVENT_MARKER: u32 = 11;
/// A return of a function that filled in a socket address (accept's
/// peer): a [`RetAddrEvent`] (cookie flag [`COOKIE_RET_ADDR_FLAG`]).
pub const EVENT_RETURN_ADDR: u32 = 12;

/// [`EVENT_SWITCH_OUT`]'s state for a task that left its CPU still
/// runnable (preempted; `TASK_RUNNING` is 0, so the state is 0 too).
pub const SCHED_PREEMPTED: u32 = 0;

/// Integer/pointer argument registers of the System V x86-64 ABI, in order:
/// rdi, rsi, rdx, rcx, r8, r9.
pub const MAX_ARGS: usize = 6;

/// Set in a probe's BPF cookie (above the 32-bit function id) when the
/// function's arguments and return value are captured. The programs test
/// the cookie they already read, so functions without it pay no lookup and
/// keep the 24-byte record.
pub const COOKIE_ARGS_FLAG: u64 = 1 << 32;

/// Set in a probe's BPF cookie for functions of a Go module: the entry
/// program then writes a [`GoEvent`] with the goroutine pointer (r14 in
/// Go's register ABI, Go >= 1.17 on amd64), so the agent pairs calls per
/// goroutine rather than per thread. The args flag is ignored with it.
pub const COOKIE_GO_FLAG: u64 = 1 << 33;

/// Cookie bits 40..42 and 43..45 (`--arg-strings`): the register (1 = rdi
/// … 6 = r9; 0 = none) of the first and of the second `char *` parameter,
/// set by the agent from DWARF. With either one set (and
/// [`COOKIE_ARGS_FLAG`]), the entry program reads those strings into an
/// [`ArgsStrEvent`]; no map lookup decides it.
pub const COOKIE_STR0_SHIFT: u32 = 40;
pub const COOKIE_STR1_SHIFT: u32 = 43;
/// Mask of one 3-bit string register field of the cookie (after the shift).
pub const COOKIE_STR_MASK: u64 = 0b111;
/// Cookie bits 46 and 47: the first (second) string field points at a
/// socket address, not a string: the entry program copies
/// [`SOCKADDR_BYTES`] bytes whatever they hold (`--hooks net`: connect's
/// and sendto's peer) and reports `SOCKADDR_BYTES + 1` as their length.
pub const COOKIE_RAW0_FLAG: u64 = 1 << 46;
pub const COOKIE_RAW1_FLAG: u64 = 1 << 47;
/// Bytes of a socket address read: `struct sockaddr_in6` (an IPv4 address
/// takes 16; a Unix socket's path is cut to its first 26 bytes).
pub const SOCKADDR_BYTES: u32 = 28;
/// Cookie bit 48: the function fills in the socket address its second
/// argument (rsi) points to (accept, accept4: the peer). The entry program
/// keeps that pointer per thread (`ADDR_PTRS`), the return program reads
/// [`SOCKADDR_BYTES`] there into a [`RetAddrEvent`].
pub const COOKIE_RET_ADDR_FLAG: u64 = 1 << 48;
/// Threads that can be inside such a function at once (`ADDR_PTRS`).
pub const MAX_ADDR_PTRS: u32 = 4096;
/// String parameters read per call (the first two `char *` parameters).
pub const MAX_STR_ARGS: usize = 2;
/// The largest `--arg-strings` cap: bytes kept per string.
pub const MAX_STR: usize = 256;
/// Bytes reserved per string in an [`ArgsStrEvent`]: the cap, one more byte
/// that tells a string of exactly `cap` bytes from a longer (truncated) one,
/// the NUL, rounded up to 8.
pub const STR_BUF: usize = MAX_STR + 8;

/// An entry with strings: the [`ArgsEvent`] (kind [`EVENT_ENTRY_ARGS_STR`]),
/// then per string field of the cookie the return value of
/// `bpf_probe_read_user_str` (bytes copied including the NUL, negative on a
/// fault such as a NULL pointer, 0 when the field is unused) and the bytes.
/// The kernel reads at most `cap + 2` bytes (cap + 1 characters and the NUL),
/// so `len == cap + 2` means the string is longer than the cap. 608 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArgsStrEvent {
    pub args: ArgsEvent,
    pub str_len: [i32; MAX_STR_ARGS],
    pub strs: [[u8; STR_BUF]; MAX_STR_ARGS],
}

/// An entry or RET-site hit of a Go function: the plain header (kind
/// [`EVENT_ENTRY_GO`] or [`EVENT_RETURN_GO`]) then r14, the current
/// goroutine's `g` pointer. 32 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoEvent {
    pub head: RawEvent,
    /// The `g` pointer: unique among live goroutines of the process (a
    /// finished goroutine's `g` may be reused by a later one).
    pub goid_key: u64,
}

/// An entry of a function whose arguments are captured: the plain header
/// (kind [`EVENT_ENTRY_ARGS`]) then rdi, rsi, rdx, rcx, r8, r9 as they were
/// at the first instruction. 72 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArgsEvent {
    pub head: RawEvent,
    pub args: [u64; MAX_ARGS],
}

/// A return of a function whose arguments are captured: the plain header
/// (kind [`EVENT_RETURN_RET`]) then rax. 32 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetEvent {
    pub head: RawEvent,
    pub ret: u64,
}

/// A return with rax and the socket address the function filled in
/// (kind [`EVENT_RETURN_ADDR`]): `len` is `SOCKADDR_BYTES + 1` when it was
/// read, 0 for a NULL pointer, negative on a fault. 72 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetAddrEvent {
    pub ret: RetEvent,
    pub len: i32,
    pub _pad: u32,
    pub addr: [u8; 32],
}

/// Where one USDT argument is (`UsdtArg::kind`).
pub const USDT_ARG_NONE: u8 = 0;
/// `$N`: `value` is the argument.
pub const USDT_ARG_CONST: u8 = 1;
/// `%reg`: register number `reg` (rax, rbx, rcx, rdx, rsi, rdi, rbp, rsp,
/// r8..r15, rip).
pub const USDT_ARG_REG: u8 = 2;
/// `OFF(%reg)`: user memory at register `reg` plus `value`.
pub const USDT_ARG_DEREF: u8 = 3;

/// One USDT argument's location, as the note's spec gives it. 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsdtArg {
    pub kind: u8,
    pub reg: u8,
    /// 1, 2, 4 or 8 bytes; the value is cut to it (and sign-extended when
    /// `signed`).
    pub size: u8,
    pub signed: u8,
    pub _pad: u32,
    pub value: i64,
}

/// A USDT probe's arguments, by probe id in [`names::USDT_SPECS_MAP`].
/// 104 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsdtSpec {
    pub count: u32,
    pub _pad: u32,
    pub args: [UsdtArg; MAX_ARGS],
}

/// One on-CPU sample of the target (`scope_sample`, a `perf_event` program
/// on a `cpu-clock` event at 99 Hz per CPU): written to its own ring
/// ([`names::SAMPLES_MAP`]), never to the calls' ring, so samples take no
/// room from calls and a lost sample never marks a call lost. 24 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SampleEvent {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds, as [`RawEvent`].
    pub ktime_ns: u64,
    /// tgid in the upper 32 bits, tid in the lower.
    pub pid_tgid: u64,
    /// `bpf_get_stackid(BPF_F_USER_STACK)`: the key of the user stack in
    /// [`names::STACKS_MAP`], or a negative errno when it could not be taken
    /// (`-EEXIST`: another stack holds its bucket; `-EFAULT`: no user
    /// stack).
    pub stack_id: i32,
    /// `bpf_get_smp_processor_id()`.
    pub cpu: u32,
}

/// Slots of [`names::SAMPLE_ERRORS_MAP`], each a per-CPU count.
pub const SAMPLE_ERR_COLLISION: u32 = 0;
/// `bpf_get_stackid` failed otherwise (no user stack, or the map is full).
pub const SAMPLE_ERR_STACK: u32 = 1;
/// The samples ring was full: the sample was not written.
pub const SAMPLE_ERR_LOST: u32 = 2;
pub const SAMPLE_ERR_SLOTS: u32 = 3;
/// Stacks the sampler's stack map holds (each up to 127 frames).
pub const SAMPLE_STACKS: u32 = 16384;
/// Default size of the samples' ring (bytes).
pub const SAMPLE_RING_BYTES: u32 = 256 << 10;

/// Size of one ring-buffer record, as the ring accounts it (8-byte header
/// plus the record rounded up to 8 bytes).
pub const RING_RECORD_BYTES: usize = 8 + core::mem::size_of::<RawEvent>();

/// Map and program names, shared so the agent finds what the object defines.
pub mod names {
    pub const EVENTS_MAP: &str = "EVENTS";
    pub const LOST_MAP: &str = "LOST";
    /// Per-CPU calls per function id, written by [`COUNT_PROGRAM`].
    pub const COUNTS_MAP: &str = "COUNTS";
    /// Entry-only program of the governor's warm-up: counts, records nothing.
    pub const COUNT_PROGRAM: &str = "scope_count";
    pub const ENTRY_PROGRAM: &str = "scope_entry";
    pub const RETURN_PROGRAM: &str = "scope_return";
    /// Plain uprobe on the RET instructions of Go functions.
    pub const RET_SITE_PROGRAM: &str = "scope_ret_site";
    /// Global (`.rodata`) set at load time: only events of this tgid are kept
    /// (0 keeps all).
    pub const TARGET_TGID_GLOBAL: &str = "TARGET_TGID";
    /// Global set at load time: force a wake-up of the reader once this many
    /// bytes wait in the ring; below it, events are submitted without one.
    pub const WAKE_BYTES_GLOBAL: &str = "WAKE_BYTES";
    /// Global set at load time: `--arg-strings` cap, bytes kept per string
    /// (1..=[`super::MAX_STR`]; 0 when strings are off).
    pub const STR_CAP_GLOBAL: &str = "STR_CAP";
    /// `--sched`: raw tracepoint programs on `sched_switch` and
    /// `sched_waking` (the waker's context).
    pub const SCHED_SWITCH_PROGRAM: &str = "scope_sched_switch";
    pub const SCHED_WAKEUP_PROGRAM: &str = "scope_sched_wakeup";
    /// USDT probes (a plain uprobe at each probe's address).
    pub const USDT_PROGRAM: &str = "scope_usdt";
    /// Probe id → [`super::UsdtSpec`].
    pub const USDT_SPECS_MAP: &str = "USDT_SPECS";
    /// Globals set at load time: byte offsets of `pid` and `tgid` in
    /// `struct task_struct` (0: the sched programs record nothing).
    pub const TASK_PID_OFF_GLOBAL: &str = "TASK_PID_OFF";
    pub const TASK_TGID_OFF_GLOBAL: &str = "TASK_TGID_OFF";
    /// The on-CPU sampler (`perf_event`, cpu-clock).
    pub const SAMPLE_PROGRAM: &str = "scope_sample";
    /// The samples' own ring buffer.
    pub const SAMPLES_MAP: &str = "SAMPLES";
    /// User stacks by stack id (`BPF_MAP_TYPE_STACK_TRACE`).
    pub const STACKS_MAP: &str = "STACKS";
    /// Per-CPU counts of samples without a stack or not written, by slot
    /// ([`super::SAMPLE_ERR_COLLISION`] ...).
    pub const SAMPLE_ERRORS_MAP: &str = "SAMPLE_ERRORS";
}

/// Slots of [`names::LOST_MAP`] (per-CPU counts of failed reservations):
/// the probes' events, and the scheduler's (`--sched`).
pub const LOST_CALLS: u32 = 0;
pub const LOST_SCHED: u32 = 1;
pub const LOST_SLOTS: u32 = 2;

/// Default ring-buffer size (bytes, a power of two multiple of the page size).
pub const DEFAULT_RING_BYTES: u32 = 8 << 20;

#[cfg(feature = "user")]
// SAFETY: RawEvent is #[repr(C)], Copy, made only of integers, with no padding
// (8 + 8 + 4 + 4 bytes), so every bit pattern is a valid value.
unsafe impl aya::Pod for RawEvent {}

#[cfg(feature = "user")]
// SAFETY: #[repr(C)], Copy, only u64 fields after a Pod header, no padding.
unsafe impl aya::Pod for ArgsEvent {}

#[cfg(feature = "user")]
// SAFETY: #[repr(C)], Copy, only u64 fields after a Pod header, no padding.
unsafe impl aya::Pod for RetEvent {}

#[cfg(feature = "user")]
// SAFETY: #[repr(C)], Copy, integers only: 8 + 8 + 4 + 4 bytes, no padding.
unsafe impl aya::Pod for SampleEvent {}

#[cfg(feature = "user")]
// SAFETY: #[repr(C)], Copy, a Pod header, two u32 and a byte array: 32 + 8
// + 32 bytes, no padding (asserted below).
unsafe impl aya::Pod for RetAddrEvent {}

#[cfg(feature = "user")]
// SAFETY: #[repr(C)], Copy, integers only, explicit padding (asserted below).
unsafe impl aya::Pod for UsdtArg {}

#[cfg(feature = "user")]
// SAFETY: #[repr(C)], Copy, integers and Pod arrays, explicit padding.
unsafe impl aya::Pod for UsdtSpec {}

#[cfg(feature = "user")]
// SAFETY: #[repr(C)], Copy, only u64 fields after a Pod header, no padding.
unsafe impl aya::Pod for GoEvent {}

#[cfg(feature = "user")]
// SAFETY: #[repr(C)], Copy, integers and byte arrays only; 72 + 8 + 528
// bytes with no padding (asserted below).
unsafe impl aya::Pod for ArgsStrEvent {}

const _: () = assert!(core::mem::size_of::<RawEvent>() == 24);
const _: () = assert!(core::mem::size_of::<GoEvent>() == 32);
const _: () = assert!(core::mem::size_of::<SampleEvent>() == 24);
const _: () = assert!(core::mem::size_of::<ArgsEvent>() == 24 + 8 * MAX_ARGS);
const _: () = assert!(core::mem::size_of::<RetEvent>() == 32);
const _: () = assert!(core::mem::size_of::<RetAddrEvent>() == 72);
const _: () = assert!(core::mem::size_of::<UsdtArg>() == 16);
const _: () = assert!(core::mem::size_of::<UsdtSpec>() == 8 + 16 * MAX_ARGS);
const _: () =
    assert!(core::mem::size_of::<ArgsStrEvent>() == 72 + 4 * MAX_STR_ARGS + STR_BUF * MAX_STR_ARGS);
