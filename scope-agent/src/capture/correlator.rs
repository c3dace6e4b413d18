//! The correlator: pairs entry and return events per thread into calls.
//!
//! Each thread has a stack of open frames. An entry pushes a frame (and takes
//! the next call id, so its children know their parent); a return pops the
//! matching frame and emits a [`CallRecord`] with depth, parent, duration and
//! self time. Edges that were not both seen are marked, never dropped and
//! never allowed to mis-nest the rest of the stack:
//!
//! - a return with no open frame for its function: the call was running when
//!   probes went live (or its entry was lost): [`flags::ENTRY_MISSING`];
//! - events before the probes went live (while the links were being
//!   attached, one after another) are left out: an entry whose return link
//!   did not exist yet would otherwise stay open forever, under every later
//!   call of its stack (a Go goroutine entering `leaf` between the entry
//!   link and the RET-site link did exactly that);
//! - a return that matches a frame below the top: the frames above it never
//!   returned (longjmp, exceptions, lost events): [`flags::UNWOUND`];
//! - frames deeper than the kernel's limit of nested return probes per thread
//!   (64) never get a return event: [`flags::NO_RETURN_PROBE`] (see
//!   `MAX_URETPROBE_DEPTH` in kernel/events/uprobes.c);
//! - frames still open at the end: [`flags::RETURN_MISSING`];
//! - calls that were open when the kernel lost events (the reader checks the
//!   loss counters after every drain and calls [`Correlator::note_loss`]):
//!   [`flags::LOSS_WHILE_OPEN`], on top of any other flag. A lost return
//!   leaves its frame open, and the thread's next return of the same function
//!   then pairs with it, so such a call's duration may be wrong; nothing in a
//!   24-byte event tells which thread lost what, so every call open at the
//!   time (and every call completed in the same drain) is marked.
//!
//! An inlined instance (`--inlined`) has an entry probe and nothing else:
//! its entry pushes no frame and becomes a call at once, nested under the
//! thread's innermost open call, with no duration ([`flags::INLINED`]).
//!
//! Go functions are paired per goroutine, not per thread: a goroutine that
//! blocks inside a call may resume on another thread, so its return arrives
//! from a different tid than its entry. Their events carry the goroutine's
//! `g` pointer, and their stack is keyed by (tgid, g); `tid` of the call is
//! the thread its entry ran on. Go stacks have no kernel nesting limit
//! (RET sites are plain uprobes).

use rustc_hash::{FxHashMap, FxHashSet};
use scope_common::{
    ArgsEvent, ArgsStrEvent, EVENT_ENTRY, EVENT_ENTRY_ARGS, EVENT_ENTRY_ARGS_STR, EVENT_ENTRY_GO,
    EVENT_RETURN, EVENT_RETURN_GO, EVENT_RETURN_RET, EVENT_SWITCH_IN, EVENT_SWITCH_OUT,
    EVENT_WAKEUP, GoEvent, MAX_ARGS, RawEvent, RetEvent, SCHED_PREEMPTED,
};

use super::args::ArgLayout;
use super::{ArgStrings, CallArgs, CallRecord, MarkerRecord, OffcpuRecord, flags};

/// The kernel installs at most this many return probes per thread at once;
/// deeper calls fire their entry probe but never their return probe.
pub const MAX_URETPROBE_DEPTH: usize = 64;

#[derive(Debug, Clone)]
struct Frame {
    call_id: u64,
    /// The thread the entry ran on (a goroutine may return on another).
    tid: u32,
    function_id: u32,
    start_ktime: u64,
    /// Sum of the durations of this frame's completed children.
    child_ns: u64,
    /// Argument values, for functions whose arguments are captured.
    args: Option<CallArgs>,
    /// `char *` arguments read at entry (`--arg-strings`).
    strings: Option<ArgStrings>,
    /// [`Correlator::loss_gen`] when the frame was pushed.
    loss_gen: u64,
    /// The governor closed this function's sampling window while the call
    /// was open: no return will come. Emitted (flag 64) once it is on top.
    cut: bool,
    /// `--sched`: the thread's time off its CPU so far, at the entry (the
    /// call's own is the difference at its return). `None` without it.
    off_at_entry: Option<u64>,
    /// `--hooks`: how many requests the thread had taken up at the entry
    /// (see [`Requests`]).
    req_seq: u32,
}

/// `--hooks`: which request each thread is serving, so that every call is
/// tied to the accept or read that started it (`calls.request_id`).
///
/// - A hooked function that starts a request (accept, accept4, recv,
///   recvfrom, SSL_read, SSL_read_ex) returning > 0 makes its own call the
///   thread's request (and its own `request_id`).
/// - A thread woken (`sched_waking`) by a thread serving a request takes
///   that request up when it runs again, unless it already serves a newer
///   one (call ids grow with time): a worker woken by the thread that read
///   the request serves it.
/// - A call's `request_id` is its thread's request at its return, if the
///   thread took up at most one request while the call ran (a read inside
///   a handler, or work after it); a call spanning several requests (a
///   worker's main loop) gets none.
///
/// What it cannot see: a hand-off that wakes no thread (a worker that finds
/// the next item queued without sleeping keeps its previous request), and
/// requests in threads without a hooked read.
#[derive(Default)]
struct Requests {
    /// Function ids that start a request.
    starts: FxHashSet<u32>,
    /// Per thread: (request, times the thread took one up).
    threads: FxHashMap<u32, (u64, u32)>,
    /// Per thread woken by a thread serving a request: that request, taken
    /// up at its next switch-in.
    handed: FxHashMap<u32, u64>,
}

impl Requests {
    fn seq(&self, tid: u32) -> u32 {
        self.threads.get(&tid).map_or(0, |t| t.1)
    }

    /// A call returned: maybe a new request; the call's request.
    fn on_return(&mut self, frame: &Frame, ret: Option<i64>) -> Option<u64> {
        let t = self.threads.entry(frame.tid).or_default();
        if self.starts.contains(&frame.function_id) && ret.is_some_and(|r| r > 0) {
            // Whatever the thread took up while it waited in the read.
            *t = (frame.call_id, t.1.wrapping_add(1));
            return Some(frame.call_id);
        }
        (t.0 != 0 && t.1.wrapping_sub(frame.req_seq) <= 1).then_some(t.0)
    }

    fn on_wakeup(&mut self, waker: u32, woken: u32) {
        if let Some(&(r, _)) = self.threads.get(&waker)
            && r != 0
        {
            self.handed.insert(woken, r);
        }
    }

    fn on_switch_in(&mut self, tid: u32) {
        if let Some(r) = self.handed.remove(&tid) {
            let t = self.threads.entry(tid).or_default();
            if r > t.0 {
                *t = (r, t.1.wrapping_add(1));
            }
        }
    }
}

/// [`flags::WINDOW_CLOSED`] for a frame whose sampling window closed.
#[inline]
fn cut_flag(frame: &Frame) -> u8 {
    if frame.cut { flags::WINDOW_CLOSED } else { 0 }
}

/// A frame's time off CPU from its entry (when its thread's total was
/// `at_entry`) to when the total was `now` (see [`Correlator::off_total`]).
#[inline]
fn off_since(at_entry: Option<u64>, now: Option<u64>) -> Option<i64> {
    Some(now?.saturating_sub(at_entry?) as i64)
}

/// Whose call stack an event belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum StackKey {
    /// Native code: the thread (tid).
    Thread(u32),
    /// Go code: the goroutine, by (tgid, `g` pointer).
    Goroutine(u32, u64),
}

#[derive(Debug, Default)]
struct ThreadStack {
    pid: u32,
    frames: Vec<Frame>,
}

/// Counts kept by the correlator, for the summary and the session row.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CorrelatorCounts {
    pub events: u64,
    pub entries: u64,
    pub returns: u64,
    pub calls: u64,
    pub entry_missing: u64,
    pub unwound: u64,
    pub return_missing: u64,
    pub no_return_probe: u64,
    /// Calls taken so far that carry [`flags::LOSS_WHILE_OPEN`].
    pub loss_marked: u64,
    pub unknown_kind: u64,
    /// Entries of inlined instances: calls without a duration.
    pub inlined: u64,
    /// Go calls that returned on another thread than they entered on:
    /// calls a per-thread stack would have mis-paired.
    pub migrated: u64,
    /// Entries, and returns without an open frame, after the window closed
    /// (while the links were being detached): outside the recording.
    pub after_end: u64,
    /// Entries, and returns without an open frame, before the probes went
    /// live (while the links were being attached): outside the recording.
    pub before_start: u64,
    /// Calls of sampled functions still open when their sampling window
    /// closed ([`flags::WINDOW_CLOSED`]).
    pub window_cut: u64,
    /// Events of sampled functions at the edges of their windows, left
    /// out: entries while the window's links were still being attached or
    /// already being detached, and returns of such entries.
    pub window_edge: u64,
    /// `-u`: USDT probes fired inside the recording.
    pub markers: u64,
    /// `--sched`: scheduler events read (switches out and in, wake-ups).
    pub sched_events: u64,
    /// `--sched`: intervals off CPU ended (rows of `offcpu`), blocked and
    /// preempted.
    pub offcpu_blocked: u64,
    pub offcpu_preempted: u64,
}

/// Turns a stream of [`RawEvent`]s (in per-thread order) into [`CallRecord`]s.
pub struct Correlator {
    threads: FxHashMap<StackKey, ThreadStack>,
    next_call_id: u64,
    /// Added to a kernel CLOCK_MONOTONIC timestamp to get Unix epoch ns.
    clock_offset_ns: i64,
    /// Kernel time at which probes went live (every link of the start
    /// attached): the start of the recording window, and of calls whose
    /// entry was not seen.
    live_ktime: u64,
    /// Kernel time at which detaching began (`u64::MAX` until then).
    end_ktime: u64,
    out: Vec<CallRecord>,
    counts: CorrelatorCounts,
    /// Register layouts of the functions whose arguments are captured;
    /// others use [`ArgLayout::default`].
    layouts: FxHashMap<u32, ArgLayout>,
    /// `--arg-strings` cap (bytes kept per string).
    str_cap: usize,
    /// Bumped by every [`Self::note_loss`]: a frame pushed under an older
    /// generation was open when events were lost.
    loss_gen: u64,
    /// Function ids of inlined instances: entry-only probes.
    inline_ids: FxHashSet<u32>,
    /// Some frame is marked [`Frame::cut`] and not yet emitted.
    any_cut: bool,
    /// Kernel times of the window-edge events since [`take_edges`](Self::take_edges):
    /// the probes fired (and cost the target) but made no call.
    edge_times: Vec<u64>,
    /// Sampled functions: the kernel-time interval of their current window
    /// (`[start, end)`; `end` is `u64::MAX` while it is open). Entries
    /// outside it are window edges, not calls.
    windows: FxHashMap<u32, (u64, u64)>,
    /// `--sched`: per thread, its time off CPU so far and the interval it
    /// is in now (`None`: the scheduler is not followed).
    sched: Option<FxHashMap<u32, SchedThread>>,
    /// Completed off-CPU intervals not yet taken.
    offcpu: Vec<OffcpuRecord>,
    /// `-u`: arguments each USDT probe has (by probe id).
    marker_args: FxHashMap<u32, usize>,
    /// USDT probes fired, not yet taken.
    markers: Vec<MarkerRecord>,
    /// `--hooks`: the requests threads serve (`None`: not followed).
    requests: Option<Requests>,
}

/// A thread as the scheduler's events show it (`--sched`).
#[derive(Default)]
struct SchedThread {
    /// Time off CPU so far (blocked or preempted), ns.
    off_total: u64,
    /// Off its CPU now: since when, whether still runnable, and the
    /// innermost recorded call open then.
    out: Option<(u64, bool, Option<OpenCall>)>,
    /// The last wake-up seen: when, waker pid and tid, and the waker's
    /// innermost recorded call.
    waker: Option<(u64, u32, u32, Option<OpenCall>)>,
}

/// A call open on a thread: (call id, function id).
type OpenCall = (u64, u32);

impl Correlator {
    pub fn new(clock_offset_ns: i64, live_ktime: u64) -> Self {
        Self {
            threads: FxHashMap::default(),
            next_call_id: 1,
            clock_offset_ns,
            live_ktime,
            end_ktime: u64::MAX,
            out: Vec::with_capacity(8192),
            counts: CorrelatorCounts::default(),
            layouts: FxHashMap::default(),
            str_cap: 0,
            loss_gen: 0,
            inline_ids: FxHashSet::default(),
            any_cut: false,
            edge_times: Vec::new(),
            windows: FxHashMap::default(),
            sched: None,
            offcpu: Vec::new(),
            marker_args: FxHashMap::default(),
            markers: Vec::new(),
            requests: None,
        }
    }

    /// `--hooks`: these functions start a request (besides those set
    /// before: a hooked library loaded later adds its own); calls get
    /// `request_id`.
    pub fn set_request_starts(&mut self, ids: impl IntoIterator<Item = u32>) {
        let starts: FxHashSet<u32> = ids.into_iter().collect();
        match &mut self.requests {
            Some(r) => r.starts.extend(starts),
            None if !starts.is_empty() => {
                self.requests = Some(Requests {
                    starts,
                    ..Requests::default()
                });
            }
            None => {}
        }
    }

    /// `-u`: USDT probe `id` has `args` arguments.
    pub fn set_marker(&mut self, id: u32, args: usize) {
        self.marker_args.insert(id, args.min(MAX_ARGS));
    }

    /// A USDT probe fired (`EVENT_MARKER`): a marker row, tied to the
    /// innermost recorded call open on its thread. Outside the recording
    /// window (while links attach or close) it is counted, not kept.
    pub fn on_marker(&mut self, ev: &ArgsEvent) {
        self.counts.events += 1;
        let h = &ev.head;
        if h.ktime_ns < self.live_ktime || h.ktime_ns > self.end_ktime {
            self.counts.before_start += u64::from(h.ktime_ns < self.live_ktime);
            self.counts.after_end += u64::from(h.ktime_ns > self.end_ktime);
            return;
        }
        self.counts.markers += 1;
        let n = self.marker_args.get(&h.function_id).copied().unwrap_or(0);
        let top = self.top_call(h.tid());
        self.markers.push(MarkerRecord {
            pid: h.tgid(),
            tid: h.tid(),
            time_ns: h.ktime_ns as i64 + self.clock_offset_ns,
            probe_id: h.function_id,
            args: ev.args[..n].iter().map(|&a| Some(a as i64)).collect(),
            call_id: top.map(|t| t.0),
            function_id: top.map(|t| t.1),
        });
    }

    /// Takes the USDT probes fired so far.
    pub fn take_markers(&mut self) -> Vec<MarkerRecord> {
        std::mem::take(&mut self.markers)
    }

    /// Follow the scheduler's events (`--sched`): calls get `offcpu_ns`.
    pub fn follow_sched(&mut self) {
        self.sched.get_or_insert_with(FxHashMap::default);
    }

    /// Takes the completed off-CPU intervals.
    pub fn take_offcpu(&mut self) -> Vec<OffcpuRecord> {
        std::mem::take(&mut self.offcpu)
    }

    /// The innermost recorded call open on thread `tid`.
    fn top_call(&self, tid: u32) -> Option<(u64, u32)> {
        self.threads
            .get(&StackKey::Thread(tid))
            .and_then(|t| t.frames.last())
            .map(|f| (f.call_id, f.function_id))
    }

    /// A scheduler event (`EVENT_SWITCH_OUT`, `EVENT_SWITCH_IN`,
    /// `EVENT_WAKEUP`); see scope-common for what each carries.
    fn on_sched(&mut self, ev: &RawEvent) {
        if self.sched.is_none() {
            self.counts.unknown_kind += 1;
            return;
        }
        self.counts.sched_events += 1;
        match ev.kind {
            EVENT_SWITCH_OUT => {
                let top = self.top_call(ev.tid());
                let t = self.sched_thread(ev.tid());
                t.out = Some((ev.ktime_ns, ev.function_id == SCHED_PREEMPTED, top));
            }
            EVENT_WAKEUP => {
                let (waker_pid, waker_tid) = (ev.tgid(), ev.tid());
                let top = if waker_tid != 0 {
                    self.top_call(waker_tid)
                } else {
                    None
                };
                let woken = ev.function_id;
                if let Some(r) = &mut self.requests {
                    r.on_wakeup(waker_tid, woken);
                }
                self.sched_thread(woken).waker = Some((ev.ktime_ns, waker_pid, waker_tid, top));
            }
            _ => {
                let offset = self.clock_offset_ns;
                let pid = ev.tgid();
                let tid = ev.tid();
                if let Some(r) = &mut self.requests {
                    r.on_switch_in(tid);
                }
                let t = self.sched_thread(tid);
                // In without an out: off its CPU since before the programs
                // were attached; that interval is unknown.
                let Some((since, preempted, call)) = t.out.take() else {
                    t.waker = None;
                    return;
                };
                let off = ev.ktime_ns.saturating_sub(since);
                t.off_total += off;
                // A wake-up belongs to this interval only if it came in it.
                let waker = t
                    .waker
                    .take()
                    .filter(|w| !preempted && w.0 >= since && w.0 <= ev.ktime_ns);
                if preempted {
                    self.counts.offcpu_preempted += 1;
                } else {
                    self.counts.offcpu_blocked += 1;
                }
                self.offcpu.push(OffcpuRecord {
                    pid,
                    tid,
                    start_ns: since as i64 + offset,
                    duration_ns: off as i64,
                    preempted,
                    call_id: call.map(|c| c.0),
                    function_id: call.map(|c| c.1),
                    waker_pid: waker.map(|w| w.1),
                    waker_tid: waker.map(|w| w.2),
                    waker_call_id: waker.and_then(|w| w.3).map(|c| c.0),
                    waker_function_id: waker.and_then(|w| w.3).map(|c| c.1),
                });
            }
        }
    }

    fn sched_thread(&mut self, tid: u32) -> &mut SchedThread {
        self.sched
            .get_or_insert_with(FxHashMap::default)
            .entry(tid)
            .or_default()
    }

    /// Thread `tid`'s time off CPU so far (`None` without `--sched`).
    #[inline]
    fn off_total(&self, tid: u32) -> Option<u64> {
        self.sched
            .as_ref()
            .map(|s| s.get(&tid).map_or(0, |t| t.off_total))
    }

    /// `ids` are sampled, and their window's links are all attached since
    /// kernel time `start`: their entries count from then on.
    pub fn open_window(&mut self, ids: &FxHashSet<u32>, start: u64) {
        for id in ids {
            self.windows.insert(*id, (start, u64::MAX));
        }
    }

    /// The window of `ids` ends at kernel time `end` (taken before their
    /// links start to close): later entries are edges. Also how a function
    /// recorded in full becomes sampled.
    pub fn end_window(&mut self, ids: &FxHashSet<u32>, end: u64) {
        for id in ids {
            let w = self.windows.entry(*id).or_insert((0, end));
            w.1 = end;
        }
    }

    /// `id` is recorded in full again from kernel time `from` on (when its
    /// links were all attached): earlier entries are window edges.
    pub fn unsample(&mut self, id: u32, from: u64) {
        self.windows.insert(id, (from, u64::MAX));
    }

    /// The governor closed the sampling window of `ids` (their links are
    /// detached and every event they wrote has been read): calls of them
    /// still open will never see their return. Each is emitted with
    /// [`flags::RETURN_MISSING`] | [`flags::WINDOW_CLOSED`] as soon as no
    /// open call sits above it (so depth and parent of the calls above stay
    /// right). Returns how many were marked.
    pub fn cut_window(&mut self, ids: &FxHashSet<u32>) -> usize {
        if ids.is_empty() {
            return 0;
        }
        let mut marked = 0;
        let mut keys = Vec::new();
        for (key, thread) in &mut self.threads {
            for f in thread.frames.iter_mut() {
                if !f.cut && ids.contains(&f.function_id) {
                    f.cut = true;
                    marked += 1;
                    keys.push(*key);
                }
            }
        }
        if marked > 0 {
            self.any_cut = true;
            keys.sort_unstable();
            keys.dedup();
            for key in keys {
                self.pop_cut(key);
            }
        }
        marked
    }

    /// Emits the cut frames on top of `key`'s stack.
    fn pop_cut(&mut self, key: StackKey) {
        let Some(thread) = self.threads.get_mut(&key) else {
            return;
        };
        while thread.frames.last().is_some_and(|f| f.cut) {
            let Some(frame) = thread.frames.pop() else {
                break;
            };
            let loss = if frame.loss_gen == self.loss_gen {
                0
            } else {
                flags::LOSS_WHILE_OPEN
            };
            self.counts.window_cut += 1;
            self.out.push(CallRecord {
                pid: thread.pid,
                tid: frame.tid,
                call_id: frame.call_id,
                parent_call_id: thread.frames.last().map_or(0, |f| f.call_id),
                parent_function_id: thread.frames.last().map_or(0, |f| f.function_id),
                function_id: frame.function_id,
                depth: thread.frames.len() as u32,
                start_ns: frame.start_ktime as i64 + self.clock_offset_ns,
                duration_ns: -1,
                self_ns: -1,
                flags: flags::RETURN_MISSING | flags::WINDOW_CLOSED | loss,
                args: frame.args,
                arg_strings: frame.strings,
                ret: None,
                offcpu_ns: None,
                request_id: None,
            });
        }
    }

    /// A window-edge event at kernel time `ktime`: counted, and its time
    /// kept for [`take_edges`](Self::take_edges).
    fn edge(&mut self, ktime: u64) {
        self.counts.window_edge += 1;
        // Bounded: the governor takes them after every drain.
        if self.edge_times.len() < 1 << 20 {
            self.edge_times.push(ktime);
        }
    }

    /// The kernel times of the window-edge events since the last call (the
    /// governor counts what they cost the target).
    pub fn take_edges(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.edge_times)
    }

    /// Marks `function_id` as an inlined instance: its entry events are
    /// calls of their own, without a return (see [`flags::INLINED`]).
    pub fn set_inline(&mut self, function_id: u32) {
        self.inline_ids.insert(function_id);
    }

    /// Sets how the argument registers of `function_id` become values.
    pub fn set_layout(&mut self, function_id: u32, layout: ArgLayout) {
        self.layouts.insert(function_id, layout);
    }

    fn layout(&self, function_id: u32) -> ArgLayout {
        self.layouts.get(&function_id).copied().unwrap_or_default()
    }

    /// Ends the recording window at kernel time `ktime`, taken just before
    /// the links are closed. Links detach one after another, and each one
    /// takes milliseconds, so for a while entries stop firing while returns
    /// (or Go RET sites) still fire: a return after `ktime` with no open
    /// frame, and any entry after it, belong to no recorded call and are
    /// left out rather than reported as "already running at attach".
    pub fn close_window(&mut self, ktime: u64) {
        self.end_ktime = ktime;
    }

    pub fn counts(&self) -> CorrelatorCounts {
        self.counts
    }

    /// Calls completed so far and not yet taken.
    pub fn pending(&self) -> usize {
        self.out.len()
    }

    /// Takes the completed calls, leaving an empty buffer of the same capacity.
    pub fn take_calls(&mut self) -> Vec<CallRecord> {
        // Counted here, where the marks are final (note_loss marks only
        // calls not yet taken).
        self.counts.loss_marked += self
            .out
            .iter()
            .filter(|c| c.flags & flags::LOSS_WHILE_OPEN != 0)
            .count() as u64;
        let cap = self.out.capacity().max(8192);
        std::mem::replace(&mut self.out, Vec::with_capacity(cap))
    }

    /// The kernel lost events since the last check, somewhere in the stream
    /// at or before the events just read. Marks every call completed since
    /// `since` (an earlier [`Self::pending`]) and every call still open with
    /// [`flags::LOSS_WHILE_OPEN`].
    pub fn note_loss(&mut self, since: usize) {
        self.loss_gen += 1;
        for c in self.out.iter_mut().skip(since) {
            c.flags |= flags::LOSS_WHILE_OPEN;
        }
    }

    /// The loss flag of a frame being closed now.
    #[inline]
    fn loss_flag(&self, frame: &Frame) -> u8 {
        if frame.loss_gen == self.loss_gen {
            0
        } else {
            flags::LOSS_WHILE_OPEN
        }
    }

    /// A plain (24-byte) event. Longer kinds go through
    /// [`on_args_entry`](Self::on_args_entry) and
    /// [`on_ret_return`](Self::on_ret_return); here they count as unknown.
    #[inline]
    pub fn on_event(&mut self, ev: &RawEvent) {
        // The scheduler's events are counted apart (`sched_events`):
        // `events` and `lost` are the probes' own.
        if matches!(ev.kind, EVENT_SWITCH_OUT | EVENT_SWITCH_IN | EVENT_WAKEUP) {
            self.on_sched(ev);
            return;
        }
        self.counts.events += 1;
        match ev.kind {
            EVENT_ENTRY => self.on_entry(ev, None, None, StackKey::Thread(ev.tid())),
            EVENT_RETURN => self.on_return(ev, None, StackKey::Thread(ev.tid())),
            EVENT_SWITCH_OUT | EVENT_SWITCH_IN | EVENT_WAKEUP => self.on_sched(ev),
            _ => self.counts.unknown_kind += 1,
        }
    }

    /// An entry with its argument registers ([`EVENT_ENTRY_ARGS`]).
    pub fn on_args_entry(&mut self, ev: &ArgsEvent) {
        self.counts.events += 1;
        if ev.head.kind != EVENT_ENTRY_ARGS {
            self.counts.unknown_kind += 1;
            return;
        }
        let args = self.layout(ev.head.function_id).args(&ev.args);
        self.on_entry(&ev.head, Some(args), None, StackKey::Thread(ev.head.tid()));
    }

    /// An entry with its argument registers and `char *` strings
    /// ([`EVENT_ENTRY_ARGS_STR`]).
    pub fn on_args_str_entry(&mut self, ev: &ArgsStrEvent) {
        self.counts.events += 1;
        let head = &ev.args.head;
        if head.kind != EVENT_ENTRY_ARGS_STR {
            self.counts.unknown_kind += 1;
            return;
        }
        let layout = self.layout(head.function_id);
        let args = layout.args(&ev.args.args);
        let strings = layout.strings(ev, self.str_cap, &args);
        self.on_entry(
            head,
            Some(args),
            Some(strings),
            StackKey::Thread(head.tid()),
        );
    }

    /// The `--arg-strings` cap the kernel was loaded with.
    pub fn set_str_cap(&mut self, cap: usize) {
        self.str_cap = cap;
    }

    /// A return with its return register ([`EVENT_RETURN_RET`]).
    pub fn on_ret_return(&mut self, ev: &RetEvent) {
        self.counts.events += 1;
        if ev.head.kind != EVENT_RETURN_RET {
            self.counts.unknown_kind += 1;
            return;
        }
        let ret = self.layout(ev.head.function_id).ret.apply(ev.ret);
        self.on_return(&ev.head, ret, StackKey::Thread(ev.head.tid()));
    }

    /// A return with the socket address the function filled in
    /// ([`scope_common::EVENT_RETURN_ADDR`], accept's peer): the address
    /// goes into the call's `arg_strings` at the layout's `ret_addr` slot.
    pub fn on_ret_addr_return(&mut self, ev: &scope_common::RetAddrEvent) {
        let head = &ev.ret.head;
        let layout = self.layout(head.function_id);
        if let Some(slot) = usize::from(layout.ret_addr).checked_sub(1)
            && let Some(t) = self.threads.get_mut(&StackKey::Thread(head.tid()))
            && let Some(f) = t
                .frames
                .iter_mut()
                .rev()
                .find(|f| f.function_id == head.function_id && !f.cut)
        {
            let mut buf = [0u8; scope_common::STR_BUF];
            buf[..ev.addr.len()].copy_from_slice(&ev.addr);
            let len = usize::from(layout.len.min(MAX_ARGS as u8)).max(slot + 1);
            let strings = f
                .strings
                .get_or_insert_with(|| vec![None; len].into_boxed_slice());
            if let Some(s) = strings.get_mut(slot) {
                *s = super::args::decode_sockaddr(ev.len, &buf);
            }
        }
        let ret = RetEvent {
            head: RawEvent {
                kind: EVENT_RETURN_RET,
                ..*head
            },
            ret: ev.ret.ret,
        };
        self.on_ret_return(&ret);
    }

    /// An entry or RET-site hit of a Go function ([`EVENT_ENTRY_GO`],
    /// [`EVENT_RETURN_GO`]): paired on the goroutine's stack. A zero `g`
    /// (r14 was not a goroutine pointer) falls back to the thread's stack.
    pub fn on_go_event(&mut self, ev: &GoEvent) {
        self.counts.events += 1;
        let head = &ev.head;
        let key = if ev.goid_key == 0 {
            StackKey::Thread(head.tid())
        } else {
            StackKey::Goroutine(head.tgid(), ev.goid_key)
        };
        match head.kind {
            EVENT_ENTRY_GO => self.on_entry(head, None, None, key),
            EVENT_RETURN_GO => self.on_return(head, None, key),
            _ => self.counts.unknown_kind += 1,
        }
    }

    fn on_entry(
        &mut self,
        ev: &RawEvent,
        args: Option<CallArgs>,
        strings: Option<ArgStrings>,
        key: StackKey,
    ) {
        if ev.ktime_ns > self.end_ktime {
            self.counts.after_end += 1;
            return;
        }
        // Before every link existed: its return may not be probed (the
        // return link, or a Go function's RET sites, may come after the
        // entry link), and a frame that never closes would sit under every
        // later call of its stack.
        if ev.ktime_ns < self.live_ktime {
            self.counts.before_start += 1;
            return;
        }
        if !self.windows.is_empty()
            && let Some(&(start, end)) = self.windows.get(&ev.function_id)
            && !(start..end).contains(&ev.ktime_ns)
        {
            self.edge(ev.ktime_ns);
            return;
        }
        self.counts.entries += 1;
        let call_id = self.next_call_id;
        self.next_call_id += 1;
        if !self.inline_ids.is_empty() && self.inline_ids.contains(&ev.function_id) {
            self.emit_inline(ev, call_id, key);
            return;
        }
        // Go frames have none: a goroutine moves between threads.
        let off_at_entry = match key {
            StackKey::Thread(tid) => self.off_total(tid),
            _ => None,
        };
        let req_seq = match (&self.requests, key) {
            (Some(r), StackKey::Thread(tid)) => r.seq(tid),
            _ => 0,
        };
        let thread = self.threads.entry(key).or_default();
        thread.pid = ev.tgid();
        thread.frames.push(Frame {
            req_seq,
            off_at_entry,
            call_id,
            tid: ev.tid(),
            function_id: ev.function_id,
            start_ktime: ev.ktime_ns,
            child_ns: 0,
            args,
            strings,
            loss_gen: self.loss_gen,
            cut: false,
        });
    }

    fn on_return(&mut self, ev: &RawEvent, ret: Option<i64>, key: StackKey) {
        self.counts.returns += 1;
        // The thread's time off CPU so far: the return runs on it, so
        // every interval it spent off CPU since the entry has ended.
        let off_now = match key {
            StackKey::Thread(tid) => self.off_total(tid),
            _ => None,
        };
        let after_end = ev.ktime_ns > self.end_ktime;
        let before_start = ev.ktime_ns < self.live_ktime;
        let Some(thread) = self.threads.get_mut(&key) else {
            if after_end {
                self.counts.after_end += 1;
                return;
            }
            if before_start {
                self.counts.before_start += 1;
                return;
            }
            if self.windows.contains_key(&ev.function_id) {
                self.edge(ev.ktime_ns);
                return;
            }
            self.emit_entry_missing(ev, 0, (0, 0), ret);
            return;
        };
        let pid = thread.pid;
        let frames = &mut thread.frames;
        let loss_gen = self.loss_gen;
        let loss_flag = |f: &Frame| {
            if f.loss_gen == loss_gen {
                0
            } else {
                flags::LOSS_WHILE_OPEN
            }
        };
        // Frames past the kernel's nesting limit never get a return event
        // (only return probes have that limit, not Go's RET-site probes).
        let limited = matches!(key, StackKey::Thread(_));
        while limited && frames.len() > MAX_URETPROBE_DEPTH {
            if let Some(frame) = frames.pop() {
                let depth = frames.len() as u32;
                let parent = frames.last().map_or(0, |f| f.call_id);
                self.counts.no_return_probe += 1;
                self.out.push(CallRecord {
                    pid,
                    tid: frame.tid,
                    call_id: frame.call_id,
                    parent_call_id: parent,
                    parent_function_id: frames.last().map_or(0, |f| f.function_id),
                    function_id: frame.function_id,
                    depth,
                    start_ns: frame.start_ktime as i64 + self.clock_offset_ns,
                    duration_ns: -1,
                    self_ns: -1,
                    flags: flags::NO_RETURN_PROBE | loss_flag(&frame),
                    args: frame.args,
                    arg_strings: frame.strings,
                    ret: None,
                    offcpu_ns: None,
                    request_id: None,
                });
            }
        }
        let Some(pos) = frames
            .iter()
            .rposition(|f| f.function_id == ev.function_id && !f.cut)
        else {
            if after_end {
                self.counts.after_end += 1;
                return;
            }
            if before_start {
                self.counts.before_start += 1;
                return;
            }
            if self.windows.contains_key(&ev.function_id) {
                // The return of an entry left out at a window's edge.
                self.edge(ev.ktime_ns);
                return;
            }
            // Not on this thread's stack: its entry was before probes went
            // live (or lost). Whatever is open above it cannot have been
            // called by it after the fact, so the stack is left alone.
            let depth = frames.len() as u32;
            let parent = frames.last().map_or((0, 0), |f| (f.call_id, f.function_id));
            self.emit_entry_missing(ev, depth, parent, ret);
            return;
        };
        // Frames above the match never returned.
        while frames.len() > pos + 1 {
            if let Some(frame) = frames.pop() {
                let duration = ev.ktime_ns.saturating_sub(frame.start_ktime);
                let depth = frames.len() as u32;
                let parent = frames.last_mut();
                let parent_id = parent.as_ref().map_or(0, |f| f.call_id);
                let parent_fn = parent.as_ref().map_or(0, |f| f.function_id);
                if let Some(p) = parent {
                    p.child_ns += duration;
                }
                self.counts.unwound += 1;
                self.out.push(CallRecord {
                    pid,
                    tid: frame.tid,
                    call_id: frame.call_id,
                    parent_call_id: parent_id,
                    parent_function_id: parent_fn,
                    function_id: frame.function_id,
                    depth,
                    start_ns: frame.start_ktime as i64 + self.clock_offset_ns,
                    duration_ns: duration as i64,
                    self_ns: duration.saturating_sub(frame.child_ns) as i64,
                    flags: flags::UNWOUND | loss_flag(&frame) | cut_flag(&frame),
                    args: frame.args,
                    arg_strings: frame.strings,
                    ret: None,
                    offcpu_ns: off_since(frame.off_at_entry, off_now),
                    request_id: None,
                });
            }
        }
        let Some(frame) = frames.pop() else {
            return;
        };
        if frame.tid != ev.tid() {
            self.counts.migrated += 1;
        }
        let request_id = match (&mut self.requests, key) {
            (Some(r), StackKey::Thread(_)) => r.on_return(&frame, ret),
            _ => None,
        };
        let duration = ev.ktime_ns.saturating_sub(frame.start_ktime);
        let depth = frames.len() as u32;
        let parent = frames.last_mut();
        let parent_id = parent.as_ref().map_or(0, |f| f.call_id);
        let parent_fn = parent.as_ref().map_or(0, |f| f.function_id);
        if let Some(p) = parent {
            p.child_ns += duration;
        }
        self.counts.calls += 1;
        self.out.push(CallRecord {
            pid,
            tid: frame.tid,
            call_id: frame.call_id,
            parent_call_id: parent_id,
            parent_function_id: parent_fn,
            function_id: frame.function_id,
            depth,
            start_ns: frame.start_ktime as i64 + self.clock_offset_ns,
            duration_ns: duration as i64,
            self_ns: duration.saturating_sub(frame.child_ns) as i64,
            flags: loss_flag(&frame),
            args: frame.args,
            arg_strings: frame.strings,
            ret,
            offcpu_ns: off_since(frame.off_at_entry, off_now),
            request_id,
        });
        if self.any_cut {
            self.pop_cut(key);
        }
    }

    /// An inlined instance's entry: a call of its own at once, under the
    /// innermost open call of its stack; no frame is pushed (no return
    /// will come).
    fn emit_inline(&mut self, ev: &RawEvent, call_id: u64, key: StackKey) {
        let (depth, parent, parent_fn) = self.threads.get(&key).map_or((0, 0, 0), |t| {
            (
                t.frames.len() as u32,
                t.frames.last().map_or(0, |f| f.call_id),
                t.frames.last().map_or(0, |f| f.function_id),
            )
        });
        self.counts.inlined += 1;
        self.out.push(CallRecord {
            pid: ev.tgid(),
            tid: ev.tid(),
            call_id,
            parent_call_id: parent,
            parent_function_id: parent_fn,
            function_id: ev.function_id,
            depth,
            start_ns: ev.ktime_ns as i64 + self.clock_offset_ns,
            duration_ns: -1,
            self_ns: -1,
            flags: flags::INLINED,
            args: None,
            ret: None,
            arg_strings: None,
            offcpu_ns: None,
            request_id: None,
        });
    }

    /// `parent`: (call id, function id) of the frame it returned into.
    fn emit_entry_missing(
        &mut self,
        ev: &RawEvent,
        depth: u32,
        parent: (u64, u32),
        ret: Option<i64>,
    ) {
        let call_id = self.next_call_id;
        self.next_call_id += 1;
        // Returns before `live_ktime` are left out, so this is `live_ktime`.
        let start = self.live_ktime.min(ev.ktime_ns);
        self.counts.entry_missing += 1;
        self.out.push(CallRecord {
            pid: ev.tgid(),
            tid: ev.tid(),
            call_id,
            parent_call_id: parent.0,
            parent_function_id: parent.1,
            function_id: ev.function_id,
            depth,
            start_ns: start as i64 + self.clock_offset_ns,
            duration_ns: (ev.ktime_ns - start) as i64,
            self_ns: -1,
            flags: flags::ENTRY_MISSING,
            args: None,
            arg_strings: None,
            ret,
            offcpu_ns: None,
            request_id: None,
        });
    }

    /// Ends the session: every frame still open becomes a call marked
    /// [`flags::RETURN_MISSING`], innermost first.
    pub fn finish(&mut self) {
        let mut keys: Vec<StackKey> = self.threads.keys().copied().collect();
        keys.sort_unstable();
        for key in keys {
            let Some(mut thread) = self.threads.remove(&key) else {
                continue;
            };
            while let Some(frame) = thread.frames.pop() {
                let loss = self.loss_flag(&frame);
                let depth = thread.frames.len() as u32;
                let parent = thread.frames.last().map_or(0, |f| f.call_id);
                self.counts.return_missing += 1;
                self.out.push(CallRecord {
                    pid: thread.pid,
                    tid: frame.tid,
                    call_id: frame.call_id,
                    parent_call_id: parent,
                    parent_function_id: thread.frames.last().map_or(0, |f| f.function_id),
                    function_id: frame.function_id,
                    depth,
                    start_ns: frame.start_ktime as i64 + self.clock_offset_ns,
                    duration_ns: -1,
                    self_ns: -1,
                    flags: flags::RETURN_MISSING | loss | cut_flag(&frame),
                    args: frame.args,
                    arg_strings: frame.strings,
                    ret: None,
                    offcpu_ns: None,
                    request_id: None,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(t: u64, tid: u32, f: u32, kind: u32) -> RawEvent {
        RawEvent {
            ktime_ns: t,
            pid_tgid: (100u64 << 32) | u64::from(tid),
            function_id: f,
            kind,
        }
    }
    fn enter(t: u64, tid: u32, f: u32) -> RawEvent {
        ev(t, tid, f, EVENT_ENTRY)
    }
    fn leave(t: u64, tid: u32, f: u32) -> RawEvent {
        ev(t, tid, f, EVENT_RETURN)
    }
    fn run(events: &[RawEvent]) -> Vec<CallRecord> {
        let mut c = Correlator::new(1_000, 0);
        for e in events {
            c.on_event(e);
        }
        c.finish();
        c.take_calls()
    }

    /// `--sched`: a call's off-CPU time is the sum of its thread's
    /// intervals off CPU inside it; each interval is an `offcpu` row with
    /// the call it blocked in and the waker's call.
    #[test]
    fn a_request_follows_its_read_to_the_thread_it_wakes() {
        let mut c = Correlator::new(0, 0);
        c.follow_sched();
        // Function 10 is a read that starts a request (recv).
        c.set_request_starts([10]);
        let ret = |t: u64, tid: u32, f: u32, v: u64| RetEvent {
            head: ev(t, tid, f, EVENT_RETURN_RET),
            ret: v,
        };
        let sched = |t: u64, tid: u32, extra: u32, kind: u32| ev(t, tid, extra, kind);
        // The worker (thread 2) enters its loop (30) and blocks.
        c.on_event(&enter(1, 2, 30));
        c.on_event(&sched(2, 2, 1, EVENT_SWITCH_OUT));
        for (t, n) in [(3, 8), (10, 8)] {
            // The reader (thread 1) reads a request, wakes the worker,
            // which handles it (20) and blocks again.
            c.on_event(&enter(t, 1, 10));
            c.on_ret_return(&ret(t + 1, 1, 10, n));
            c.on_event(&sched(t + 2, 1, 2, EVENT_WAKEUP));
            c.on_event(&sched(t + 3, 2, 0, EVENT_SWITCH_IN));
            c.on_event(&enter(t + 4, 2, 20));
            c.on_event(&leave(t + 5, 2, 20));
            c.on_event(&sched(t + 6, 2, 1, EVENT_SWITCH_OUT));
        }
        // A read of 0 bytes (end of stream) starts nothing.
        c.on_event(&enter(20, 1, 10));
        c.on_ret_return(&ret(21, 1, 10, 0));
        // Thread 1 is woken by the worker, which serves an older request:
        // it keeps its own.
        c.on_event(&sched(22, 1, 1, EVENT_SWITCH_OUT));
        c.on_event(&sched(23, 2, 0, EVENT_SWITCH_IN));
        c.on_event(&sched(24, 2, 1, EVENT_WAKEUP));
        c.on_event(&sched(25, 1, 0, EVENT_SWITCH_IN));
        c.on_event(&enter(26, 1, 40));
        c.on_event(&leave(27, 1, 40));
        c.on_event(&leave(28, 2, 30));
        let calls = c.take_calls();
        let of =
            |f: u32| -> Vec<&CallRecord> { calls.iter().filter(|r| r.function_id == f).collect() };
        let (reads, handles) = (of(10), of(20));
        assert_eq!(reads.len(), 3);
        assert_eq!(reads[0].request_id, Some(reads[0].call_id));
        assert_eq!(reads[1].request_id, Some(reads[1].call_id));
        assert_eq!(
            reads[2].request_id,
            Some(reads[1].call_id),
            "a read of 0 bytes"
        );
        assert_eq!(handles[0].request_id, Some(reads[0].call_id));
        assert_eq!(handles[1].request_id, Some(reads[1].call_id));
        assert_eq!(of(40)[0].request_id, Some(reads[1].call_id));
        // The worker's loop served two requests: none is its own.
        assert_eq!(of(30)[0].request_id, None);
        // Without request starts, no call has one.
        let mut plain = Correlator::new(0, 0);
        plain.on_event(&enter(1, 1, 10));
        plain.on_ret_return(&ret(2, 1, 10, 8));
        assert_eq!(plain.take_calls()[0].request_id, None);
    }

    #[test]
    fn off_cpu_time_is_the_threads_intervals_inside_the_call() {
        let mut c = Correlator::new(1_000, 0);
        c.follow_sched();
        let sched = |t: u64, tid: u32, extra: u32, kind: u32| ev(t, tid, extra, kind);
        for e in [
            // Thread 1 is off CPU before any call: not in any call's time.
            sched(5, 1, 1, EVENT_SWITCH_OUT),
            sched(8, 1, 0, EVENT_SWITCH_IN),
            enter(10, 1, 7),
            // Blocked 20..50 in f7, woken at 45 by thread 2 inside f9.
            sched(20, 1, 1, EVENT_SWITCH_OUT),
            enter(40, 2, 9),
            sched(45, 2, 1, EVENT_WAKEUP),
            leave(47, 2, 9),
            sched(50, 1, 0, EVENT_SWITCH_IN),
            // Preempted 60..70: off CPU, no waker.
            sched(60, 1, SCHED_PREEMPTED, EVENT_SWITCH_OUT),
            sched(70, 1, 0, EVENT_SWITCH_IN),
            leave(100, 1, 7),
            // An in without an out (off CPU since before the programs):
            // no interval, no time.
            sched(110, 3, 0, EVENT_SWITCH_IN),
            enter(120, 3, 7),
            leave(130, 3, 7),
        ] {
            c.on_event(&e);
        }
        let calls = c.take_calls();
        let f7: Vec<_> = calls.iter().filter(|r| r.function_id == 7).collect();
        assert_eq!(f7[0].duration_ns, 90);
        assert_eq!(f7[0].offcpu_ns, Some(40));
        assert_eq!(f7[1].offcpu_ns, Some(0));
        let f9 = calls.iter().find(|r| r.function_id == 9).unwrap();
        assert_eq!(f9.offcpu_ns, Some(0));
        let rows = c.take_offcpu();
        assert_eq!(rows.len(), 3, "{rows:?}");
        assert_eq!((rows[0].start_ns, rows[0].duration_ns), (1_005, 3));
        assert_eq!(rows[0].call_id, None);
        let blocked = &rows[1];
        assert_eq!((blocked.start_ns, blocked.duration_ns), (1_020, 30));
        assert!(!blocked.preempted);
        assert_eq!(blocked.function_id, Some(7));
        assert_eq!(blocked.call_id, Some(f7[0].call_id));
        assert_eq!((blocked.waker_pid, blocked.waker_tid), (Some(100), Some(2)));
        assert_eq!(blocked.waker_call_id, Some(f9.call_id));
        assert_eq!(blocked.waker_function_id, Some(9));
        let preempted = &rows[2];
        assert!(preempted.preempted);
        assert_eq!(preempted.duration_ns, 10);
        assert_eq!(preempted.waker_tid, None);
        // Without --sched: scheduler events are unknown kinds, no time.
        let mut plain = Correlator::new(0, 0);
        plain.on_event(&sched(1, 1, 1, EVENT_SWITCH_OUT));
        plain.on_event(&enter(2, 1, 7));
        plain.on_event(&leave(3, 1, 7));
        assert_eq!(plain.take_calls()[0].offcpu_ns, None);
        assert_eq!(plain.counts().unknown_kind, 1);
        assert!(plain.take_offcpu().is_empty());
    }

    #[test]
    fn nesting_depth_parent_self_time() {
        // a(10..100) { b(20..60) { c(30..40) } }
        let calls = run(&[
            enter(10, 1, 1),
            enter(20, 1, 2),
            enter(30, 1, 3),
            leave(40, 1, 3),
            leave(60, 1, 2),
            leave(100, 1, 1),
        ]);
        assert_eq!(calls.len(), 3);
        let (c, b, a) = (&calls[0], &calls[1], &calls[2]);
        assert_eq!((a.function_id, a.depth, a.parent_call_id), (1, 0, 0));
        assert_eq!(
            (b.function_id, b.depth, b.parent_call_id),
            (2, 1, a.call_id)
        );
        assert_eq!(
            (c.function_id, c.depth, c.parent_call_id),
            (3, 2, b.call_id)
        );
        assert_eq!((a.duration_ns, a.self_ns), (90, 50));
        assert_eq!((b.duration_ns, b.self_ns), (40, 30));
        assert_eq!((c.duration_ns, c.self_ns), (10, 10));
        // The caller's function travels with each call.
        assert_eq!(
            (
                a.parent_function_id,
                b.parent_function_id,
                c.parent_function_id
            ),
            (0, 1, 2)
        );
        assert_eq!(a.start_ns, 1_010);
        assert!(calls.iter().all(|c| c.flags == 0));
    }

    #[test]
    fn recursion_nests_by_depth() {
        let mut events = Vec::new();
        for i in 0..5 {
            events.push(enter(i, 7, 9));
        }
        for i in 0..5 {
            events.push(leave(10 + i, 7, 9));
        }
        let calls = run(&events);
        assert_eq!(calls.len(), 5);
        let depths: Vec<u32> = calls.iter().map(|c| c.depth).collect();
        assert_eq!(depths, vec![4, 3, 2, 1, 0]);
        for w in calls.windows(2) {
            assert_eq!(w[0].parent_call_id, w[1].call_id);
        }
    }

    #[test]
    fn threads_are_independent() {
        let calls = run(&[
            enter(1, 1, 1),
            enter(2, 2, 1),
            leave(3, 1, 1),
            leave(4, 2, 1),
        ]);
        assert_eq!(calls.len(), 2);
        assert!(calls.iter().all(|c| c.depth == 0 && c.flags == 0));
        assert_eq!(calls[0].tid, 1);
        assert_eq!(calls[1].tid, 2);
    }

    #[test]
    fn running_at_attach_and_at_end_are_marked() {
        // f was running before attach; g starts and never returns.
        let calls = run(&[leave(50, 1, 5), enter(60, 1, 6)]);
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].flags, flags::ENTRY_MISSING);
        assert_eq!(calls[0].duration_ns, 50);
        assert_eq!(calls[1].flags, flags::RETURN_MISSING);
        assert_eq!(calls[1].duration_ns, -1);
    }

    #[test]
    fn unwound_frames_do_not_misnest() {
        // a { b { c  -- longjmp --> a returns
        let calls = run(&[
            enter(1, 1, 1),
            enter(2, 1, 2),
            enter(3, 1, 3),
            leave(10, 1, 1),
            enter(11, 1, 4),
            leave(12, 1, 4),
        ]);
        let flags: Vec<u8> = calls.iter().map(|c| c.flags).collect();
        assert_eq!(flags, vec![flags::UNWOUND, flags::UNWOUND, 0, 0]);
        let last = &calls[3];
        assert_eq!(
            (last.function_id, last.depth, last.parent_call_id),
            (4, 0, 0)
        );
    }

    #[test]
    fn calls_open_at_a_loss_are_marked() {
        let mut c = Correlator::new(0, 0);
        // a(1) opens; b(2) completes; then the kernel loses events (here: b's
        // second return), noticed after this drain.
        for e in [enter(1, 1, 1), enter(2, 1, 2), leave(3, 1, 2)] {
            c.on_event(&e);
        }
        let since = c.pending();
        c.on_event(&enter(4, 1, 2));
        c.note_loss(since);
        // Later calls, opened after the loss was noticed, are not marked.
        for e in [enter(5, 1, 3), leave(6, 1, 3), leave(7, 1, 1)] {
            c.on_event(&e);
        }
        c.finish();
        let calls = c.take_calls();
        assert_eq!(c.counts().loss_marked, 2);
        let by_fn = |f: u32| -> Vec<u8> {
            calls
                .iter()
                .filter(|r| r.function_id == f)
                .map(|r| r.flags)
                .collect()
        };
        // b's first call completed in an earlier drain: clean.
        // b's second call was open at the loss and never returned.
        assert_eq!(by_fn(2), vec![0, flags::UNWOUND | flags::LOSS_WHILE_OPEN]);
        assert_eq!(by_fn(3), vec![0]);
        assert_eq!(by_fn(1), vec![flags::LOSS_WHILE_OPEN]);
    }

    #[test]
    fn frames_past_the_kernel_limit_are_marked() {
        let depth = MAX_URETPROBE_DEPTH + 6;
        let mut events = Vec::new();
        for i in 0..depth {
            events.push(enter(i as u64, 1, 9));
        }
        // The kernel only delivers returns for the first 64 frames.
        for i in 0..MAX_URETPROBE_DEPTH {
            events.push(leave(1000 + i as u64, 1, 9));
        }
        let calls = run(&events);
        assert_eq!(calls.len(), depth);
        let missing = calls
            .iter()
            .filter(|c| c.flags == flags::NO_RETURN_PROBE)
            .count();
        assert_eq!(missing, 6);
        let complete: Vec<&CallRecord> = calls.iter().filter(|c| c.flags == 0).collect();
        assert_eq!(complete.len(), MAX_URETPROBE_DEPTH);
        assert!(
            complete
                .iter()
                .all(|c| (c.depth as usize) < MAX_URETPROBE_DEPTH)
        );
    }

    fn go(t: u64, tid: u32, g: u64, f: u32, kind: u32) -> GoEvent {
        GoEvent {
            head: ev(t, tid, f, kind),
            goid_key: g,
        }
    }

    #[test]
    fn goroutines_pair_across_threads() {
        // Goroutine A (g=0xa0) enters worker(1) on thread 1, calls leaf(2),
        // blocks, and returns from worker on thread 2; meanwhile goroutine
        // B (g=0xb0) runs worker on thread 1 and thread 2 in turn.
        let mut c = Correlator::new(0, 0);
        for e in [
            go(1, 1, 0xa0, 1, EVENT_ENTRY_GO),
            go(2, 1, 0xa0, 2, EVENT_ENTRY_GO),
            go(3, 1, 0xa0, 2, EVENT_RETURN_GO),
            go(4, 1, 0xb0, 1, EVENT_ENTRY_GO),
            go(5, 2, 0xa0, 2, EVENT_ENTRY_GO),
            go(6, 2, 0xa0, 2, EVENT_RETURN_GO),
            go(7, 2, 0xa0, 1, EVENT_RETURN_GO),
            go(8, 2, 0xb0, 1, EVENT_RETURN_GO),
        ] {
            c.on_go_event(&e);
        }
        c.finish();
        let calls = c.take_calls();
        assert_eq!(calls.len(), 4);
        assert!(calls.iter().all(|c| c.flags == 0));
        let worker_a = &calls[2];
        assert_eq!((worker_a.function_id, worker_a.depth), (1, 0));
        // Reported on the entry's thread, though it returned on thread 2.
        assert_eq!((worker_a.tid, worker_a.duration_ns), (1, 6));
        assert_eq!(worker_a.self_ns, 4);
        for leaf in [&calls[0], &calls[1]] {
            assert_eq!((leaf.function_id, leaf.depth), (2, 1));
            assert_eq!(leaf.parent_call_id, worker_a.call_id);
        }
        assert_eq!((calls[0].tid, calls[1].tid), (1, 2));
        let worker_b = &calls[3];
        assert_eq!(
            (worker_b.tid, worker_b.depth, worker_b.duration_ns),
            (1, 0, 4)
        );
        // Both workers entered on thread 1 and returned on thread 2.
        assert_eq!(c.counts().migrated, 2);
    }

    #[test]
    fn events_after_the_window_closed_are_left_out() {
        let mut c = Correlator::new(0, 0);
        for e in [enter(10, 1, 1), enter(20, 1, 2)] {
            c.on_event(&e);
        }
        c.close_window(30);
        // The return of an open call still completes it; a return without
        // an entry and a new entry after the end belong to no call.
        for e in [leave(40, 1, 2), leave(41, 1, 7), enter(42, 1, 3)] {
            c.on_event(&e);
        }
        c.on_go_event(&go(43, 1, 0xa0, 4, EVENT_RETURN_GO));
        c.finish();
        let calls = c.take_calls();
        assert_eq!(calls.len(), 2);
        assert_eq!((calls[0].function_id, calls[0].flags), (2, 0));
        assert_eq!(
            (calls[1].function_id, calls[1].flags),
            (1, flags::RETURN_MISSING)
        );
        assert_eq!(c.counts().after_end, 3);
    }

    #[test]
    fn events_before_the_probes_went_live_are_left_out() {
        // Links attach one after another: the entry link of f (1) fired at
        // 10 and 20 before its return link (a Go function's RET sites)
        // existed, and those calls' returns were never probed. Live at 30.
        let mut c = Correlator::new(0, 30);
        for e in [
            enter(10, 1, 1),
            enter(20, 1, 1),
            // A return before the start without a frame: no call.
            leave(25, 1, 2),
            // Entered before the start, returns after it: already running.
            leave(35, 1, 2),
            enter(40, 1, 1),
            leave(50, 1, 1),
        ] {
            c.on_event(&e);
        }
        c.on_go_event(&go(26, 1, 0xa0, 4, EVENT_ENTRY_GO));
        c.on_go_event(&go(45, 2, 0xa0, 4, EVENT_RETURN_GO));
        c.finish();
        let calls = c.take_calls();
        let got: Vec<(u32, u32, u8, i64)> = calls
            .iter()
            .map(|c| (c.function_id, c.depth, c.flags, c.duration_ns))
            .collect();
        // f's call inside the window is whole and at depth 0: nothing open
        // from before the start sits under it, and nothing is left open.
        assert_eq!(
            got,
            vec![
                (2, 0, flags::ENTRY_MISSING, 5),
                (1, 0, 0, 10),
                (4, 0, flags::ENTRY_MISSING, 15),
            ]
        );
        assert_eq!(c.counts().before_start, 4);
        assert_eq!(c.counts().entry_missing, 2);
        assert_eq!(c.counts().return_missing, 0);
    }

    #[test]
    fn goroutine_stacks_have_no_uretprobe_limit() {
        let depth = MAX_URETPROBE_DEPTH + 10;
        let mut c = Correlator::new(0, 0);
        for i in 0..depth {
            c.on_go_event(&go(i as u64, 1, 0x10, 9, EVENT_ENTRY_GO));
        }
        for i in 0..depth {
            c.on_go_event(&go(1000 + i as u64, 1, 0x10, 9, EVENT_RETURN_GO));
        }
        c.finish();
        let calls = c.take_calls();
        assert_eq!(calls.len(), depth);
        assert!(calls.iter().all(|c| c.flags == 0));
        assert_eq!(calls[0].depth as usize, depth - 1);
    }

    #[test]
    fn args_and_ret_travel_with_their_call() {
        use super::super::args::RegValue;
        let mut c = Correlator::new(0, 0);
        let mut layout = ArgLayout {
            len: 2,
            ..ArgLayout::default()
        };
        layout.slots[0].value = RegValue::Signed(32);
        c.set_layout(5, layout);
        let head = |t, kind| RawEvent {
            ktime_ns: t,
            pid_tgid: (100u64 << 32) | 1,
            function_id: 5,
            kind,
        };
        c.on_args_entry(&ArgsEvent {
            head: head(10, EVENT_ENTRY_ARGS),
            args: [0xffff_fffe, 7, 1, 1, 1, 1],
        });
        c.on_event(&enter(11, 1, 6));
        c.on_event(&leave(12, 1, 6));
        c.on_ret_return(&RetEvent {
            head: head(20, EVENT_RETURN_RET),
            ret: u64::MAX,
        });
        // A return with a value but no entry seen: ret kept, args null.
        c.on_ret_return(&RetEvent {
            head: head(30, EVENT_RETURN_RET),
            ret: 3,
        });
        c.finish();
        let calls = c.take_calls();
        assert_eq!(calls.len(), 3);
        assert_eq!((calls[0].args, calls[0].ret), (None, None));
        let args = calls[1].args.expect("args captured");
        assert_eq!((args.len, args.get(0), args.get(1)), (2, Some(-2), Some(7)));
        assert_eq!(calls[1].ret, Some(-1));
        assert_eq!(calls[2].flags, flags::ENTRY_MISSING);
        assert_eq!((calls[2].args, calls[2].ret), (None, Some(3)));
        assert_eq!(c.counts().events, 5);
    }

    #[test]
    fn inlined_instance_is_one_event_nested_under_the_open_call() {
        // f1(10..100) runs inlined sq (id 9) at 50; sq at 200 runs outside
        // any probed call.
        let mut c = Correlator::new(1_000, 0);
        c.set_inline(9);
        for e in [
            enter(10, 1, 1),
            enter(50, 1, 9),
            leave(100, 1, 1),
            enter(200, 1, 9),
        ] {
            c.on_event(&e);
        }
        c.finish();
        let calls = c.take_calls();
        assert_eq!(calls.len(), 3);
        let (sq, f1, sq2) = (&calls[0], &calls[1], &calls[2]);
        assert_eq!(
            (sq.function_id, sq.depth, sq.parent_call_id),
            (9, 1, f1.call_id)
        );
        assert_eq!((sq.start_ns, sq.duration_ns, sq.self_ns), (1_050, -1, -1));
        assert_eq!(sq.flags, flags::INLINED);
        // The instance took no time from its caller and pushed no frame.
        assert_eq!((f1.flags, f1.duration_ns, f1.self_ns), (0, 90, 90));
        assert_eq!(
            (sq2.depth, sq2.parent_call_id, sq2.flags),
            (0, 0, flags::INLINED)
        );
        let counts = c.counts();
        assert_eq!(
            (counts.inlined, counts.calls, counts.return_missing),
            (2, 1, 0)
        );
    }
}
