//! Capture: ring buffer → correlator → [`EventSink`].
//!
//! `capture` produces [`CallRecord`]s and [`LossRecord`]s and hands them to an
//! [`EventSink`]; it never knows where they go (Parquet, a summary, a test).

pub mod args;
pub mod correlator;
pub mod pipeline;
pub mod ring;

/// Flags on a [`CallRecord`] for calls whose edges were not both seen.
pub mod flags {
    /// The entry was not seen: the call was already running when probes went
    /// live (or its entry was lost). `start_ns` is the session start, a lower
    /// bound, and `duration_ns` is measured from there.
    pub const ENTRY_MISSING: u8 = 1;
    /// The return was not seen before recording ended: `duration_ns` and
    /// `self_ns` are null.
    pub const RETURN_MISSING: u8 = 2;
    /// The call was left without a return because an outer frame returned
    /// first (longjmp, exceptions, or a lost event): `duration_ns` is the time
    /// until that outer return was seen.
    pub const UNWOUND: u8 = 4;
    /// The call was deeper than the kernel's limit of nested return probes
    /// per thread (64), so no return event exists: duration and self time are
    /// null.
    pub const NO_RETURN_PROBE: u8 = 8;
    /// The kernel lost events while this call was open (on any CPU: a loss
    /// is counted per CPU, not per thread), so its return may have been
    /// lost and a later return paired with it: duration and nesting are
    /// uncertain. Combined with the flags above.
    pub const LOSS_WHILE_OPEN: u8 = 16;
    /// An inlined instance (`--inlined`): only its entry is probed (an
    /// inlined body has no return instruction), so the row is one event:
    /// `start_ns` is exact, `duration_ns` and `self_ns` are null, and its
    /// parent is the innermost probed call open on the thread at the time.
    pub const INLINED: u8 = 32;
    /// The overhead governor samples this function in windows, and its
    /// window closed (its probes detached) while the call was open: the
    /// return was never probed (with [`RETURN_MISSING`]; not a loss).
    pub const WINDOW_CLOSED: u8 = 64;
}

/// One completed (or cut-off) function call. Plain data; only
/// `arg_strings` (present only with `--arg-strings`) allocates.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct CallRecord {
    pub pid: u32,
    pub tid: u32,
    /// Unique within the session; assigned at entry, so a child knows its parent.
    pub call_id: u64,
    /// 0 at a root (stored as null).
    pub parent_call_id: u64,
    /// The function of the parent call (0 at a root). Not stored: the
    /// parent's row has it; the governor uses it to find a function's
    /// callers without waiting for their rows.
    pub parent_function_id: u32,
    pub function_id: u32,
    /// 0 at a root.
    pub depth: u32,
    /// Unix epoch nanoseconds.
    pub start_ns: i64,
    /// -1 when unknown (stored as null): the call had not returned.
    pub duration_ns: i64,
    /// Duration minus the children's durations; -1 when unknown.
    pub self_ns: i64,
    /// See [`flags`].
    pub flags: u8,
    /// Integer/pointer arguments at entry, when captured (`--args`); `None`
    /// (stored as null) when not asked for or the entry was not seen.
    pub args: Option<CallArgs>,
    /// The integer return value (rax), when captured and meaningful; `None`
    /// (stored as null) otherwise.
    pub ret: Option<i64>,
    /// `--arg-strings`: one element per `args` slot, the string a `char *`
    /// parameter pointed to at entry (see [`args::decode_str`]), `None` for
    /// other slots and unreadable pointers. `None` as a whole (stored as
    /// null) unless strings were captured for this call.
    pub arg_strings: Option<ArgStrings>,
    /// `--sched` (the default): of `duration_ns`, the time its thread was
    /// off its CPU (blocked, or runnable and waiting for one); `oncpu_ns` is
    /// the rest. `None` (stored as null) without the scheduler's events,
    /// for Go calls (a goroutine moves between threads) and when the
    /// duration is unknown.
    pub offcpu_ns: Option<i64>,
    /// `--hooks`: the call id of the accept or read that started the
    /// request this call served, on its thread or on the thread that woke
    /// it (see the correlator's `Requests`); `None` (null) when none, or
    /// without `--hooks`.
    pub request_id: Option<u64>,
}

/// The strings of one call's `char *` parameters, one element per slot.
pub type ArgStrings = Box<[Option<String>]>;

/// The argument values of one call: `len` slots of `values`, each the
/// register's bits as an `i64` (sign- or zero-extended from the DWARF type's
/// width when it is known); a slot whose bit is set in `null_mask` could not
/// be read from an integer register (a float, a struct by value, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CallArgs {
    pub values: [i64; scope_common::MAX_ARGS],
    pub len: u8,
    pub null_mask: u8,
}

impl CallArgs {
    /// Slot `i` as stored: `None` for a null slot.
    pub fn get(&self, i: usize) -> Option<i64> {
        (i < usize::from(self.len) && self.null_mask & (1 << i) == 0).then(|| self.values[i])
    }
}

/// One interval a thread of the target spent off its CPU (`--sched`): a
/// row of `offcpu`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct OffcpuRecord {
    pub pid: u32,
    pub tid: u32,
    /// Unix epoch nanoseconds: when it left its CPU.
    pub start_ns: i64,
    pub duration_ns: i64,
    /// It left its CPU still runnable (preempted: it waited for a CPU, not
    /// for an event), so nothing woke it.
    pub preempted: bool,
    /// The innermost recorded call open on the thread when it left (its
    /// call id and function), if any.
    pub call_id: Option<u64>,
    pub function_id: Option<u32>,
    /// Who woke it (`sched_waking`, in the waker's context): its pid and
    /// tid (0 and 0 for an interrupt on an idle CPU; a wake-up from an
    /// interrupt names whatever thread was running), and, for a thread of
    /// the target, the innermost recorded call it was in. `None` when it
    /// was preempted or the wake-up was not seen.
    pub waker_pid: Option<u32>,
    pub waker_tid: Option<u32>,
    pub waker_call_id: Option<u64>,
    pub waker_function_id: Option<u32>,
}

/// A USDT probe fired (`-u`): a row of `markers`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct MarkerRecord {
    pub pid: u32,
    pub tid: u32,
    /// Unix epoch nanoseconds.
    pub time_ns: i64,
    /// The probe (`usdt_probes.probe_id`).
    pub probe_id: u32,
    /// Its arguments as the note's specs give them (the first six; `None`
    /// for a form scope cannot read).
    pub args: Vec<Option<i64>>,
    /// The innermost recorded call open on the thread (call id, function).
    pub call_id: Option<u64>,
    pub function_id: Option<u32>,
}

/// Events the kernel could not write on one CPU during one interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LossRecord {
    pub cpu: u32,
    /// Unix epoch nanoseconds.
    pub start_ns: i64,
    pub end_ns: i64,
    pub lost: u64,
}

/// The agent's own figures at one status tick: a row of `agent_metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct MetricsRecord {
    /// Unix epoch nanoseconds.
    pub ts_ns: i64,
    /// Kernel events read so far.
    pub events: u64,
    /// Call rows produced so far (the calls recorded; with the governor
    /// sampling, not every call).
    pub call_rows: u64,
    /// Kernel events lost so far.
    pub lost: u64,
    /// Events read per second since the previous tick.
    pub events_per_s: f64,
    /// Highest ring-buffer fill seen since the previous tick, percent of the
    /// ring; `None` when the ring's positions could not be read.
    pub ring_fill_pct: Option<f64>,
    /// CPU time of the whole agent (all threads) since the previous tick,
    /// percent of one CPU.
    pub agent_cpu_pct: f64,
    /// Parquet files finished so far.
    pub files_written: u64,
    /// Call rows waiting in memory for their segment file.
    pub rows_buffered: u64,
}

/// One decision of the overhead governor: a row of `governor`.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct GovernorRecord {
    /// Unix epoch nanoseconds.
    pub ts_ns: i64,
    /// The function the decision is about; `None` for a session-wide row
    /// (the calibration, the prediction after the warm-up, backpressure).
    pub function_id: Option<u32>,
    /// "calibrate", "predict", "demote", "promote", "resample", "backpressure", "unmanaged"
    pub action: &'static str,
    /// Why, in words (shown to users as is).
    pub reason: String,
    /// The function's (or the target's, for session rows) calls per second of target CPU time, when known.
    pub calls_per_s: Option<f64>,
    /// Predicted slowdown of the target in percent after this decision, when known.
    pub predicted_pct: Option<f64>,
    /// 1-in-N sampling in force for the function after the decision (1: every call recorded); None for session rows.
    pub sample_n: Option<u32>,
    /// The --max-overhead budget in percent.
    pub budget_pct: f64,
}

/// What the governor knows of one function over one interval where it was
/// not recorded call by call: a row of `aggregates`.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct AggregateRecord {
    pub function_id: u32,
    /// Unix epoch ns: the interval.
    pub start_ns: i64,
    pub end_ns: i64,
    /// "warmup" (counted in the kernel before recording began; no durations) or "sampled".
    pub mode: &'static str,
    /// 1-in-N: the function was probed N-th of the time.
    pub sample_n: u32,
    /// Nanoseconds within the interval during which the function was probed.
    pub observed_ns: u64,
    /// Calls seen (counted, or recorded during the sampling windows). Not
    /// the function's calls in the interval: those are estimated over the
    /// whole session, with an interval, in `totals`.
    pub calls_seen: u64,
    /// Sum of the durations of the seen calls that completed; None for "warmup".
    pub total_ns: Option<u64>,
    /// log2 histogram of those durations: element i counts durations in [2^i, 2^(i+1)) ns (element 0 also holds 0 and 1 ns); 64 elements; None for "warmup".
    pub log2_hist: Option<Vec<u64>>,
}

/// How many times one function ran over the session: a row of `totals`.
/// Exact, or an estimate marked as one with its 95% interval; never a
/// sampled count in a column that reads as the total.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct TotalRecord {
    pub function_id: u32,
    /// The count: exact when `exact`, else the estimate; `None` when no
    /// honest estimate exists (`method` says why).
    pub calls: Option<u64>,
    /// Every call was recorded (and no event was lost).
    pub exact: bool,
    /// The 95% interval; `calls_high` is `None` when there is no upper
    /// bound. Both equal `calls` when exact.
    pub calls_low: u64,
    pub calls_high: Option<u64>,
    /// Rows of the function in `calls`.
    pub calls_recorded: u64,
    /// `recorded`, `sampled: ratio to a related function`, `sampled: cpu time`,
    /// `sampled: lower bound only` or `sampled: unknown`.
    pub method: &'static str,
    /// For `sampled: ratio to a related function`: the function (a caller or a callee) whose calls the
    /// estimate is scaled by.
    pub basis_function_id: Option<u32>,
    /// Sum of the durations of the calls (those recorded, scaled like the
    /// count when sampled); `None` when the count is unknown.
    pub total_ns: Option<u64>,
    /// Likewise for the self times.
    pub self_ns: Option<u64>,
}

/// Where the capture pipeline delivers its output.
pub trait EventSink {
    fn write_calls(&mut self, calls: &[CallRecord]) -> anyhow::Result<()>;
    fn write_losses(&mut self, losses: &[LossRecord]) -> anyhow::Result<()>;
    /// The agent's self-metrics; ignored unless the sink keeps them.
    fn write_metrics(&mut self, _metrics: &[MetricsRecord]) -> anyhow::Result<()> {
        Ok(())
    }
    /// The overhead governor's decisions; ignored unless the sink keeps them.
    fn write_governor(&mut self, _rows: &[GovernorRecord]) -> anyhow::Result<()> {
        Ok(())
    }
    /// What the governor knows of functions over intervals where they were
    /// not recorded call by call; ignored unless the sink keeps them.
    fn write_aggregates(&mut self, _rows: &[AggregateRecord]) -> anyhow::Result<()> {
        Ok(())
    }
    /// USDT probes that fired (`-u`); ignored unless the sink keeps them.
    fn write_markers(&mut self, _rows: &[MarkerRecord]) -> anyhow::Result<()> {
        Ok(())
    }
    /// The target's threads' intervals off their CPUs (`--sched`); ignored
    /// unless the sink keeps them.
    fn write_offcpu(&mut self, _rows: &[OffcpuRecord]) -> anyhow::Result<()> {
        Ok(())
    }
    /// Called about once a second while recording, so time-based work
    /// (closing an old segment) happens even when no events arrive.
    fn tick(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
}
