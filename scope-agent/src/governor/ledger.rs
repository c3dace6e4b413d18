//! The governor's ledger: the session's timeline cut into slots, each with
//! the calls that started in it (by function), whether a sampling window was
//! open, which functions were sampled, the probe events that fired in it and
//! the target's CPU time. Every count scope reports for a sampled function
//! is computed from it (see [`super::estimate`]), so the ledger records
//! facts only: nothing in it is scaled or modelled.
//!
//! A slot is [`SLOT`] long (the session cuts it there), or shorter when a
//! window opens or closes or a function is sampled or recorded again: within
//! a slot every function is either probed (recorded in full, or sampled and
//! the window open) or not probed at all. Calls are counted in the slot where
//! they started (a call arrives when it returns, so a slot keeps taking calls
//! after it ended).
//!
//! The target's CPU time is read at slot boundaries (`/proc/PID/task/*/
//! schedstat`, all threads): a slot that ends with a reading holds the CPU
//! time since the previous reading. Readings are taken at least whenever
//! what is probed changes, so a run of slots between two readings is
//! probed the same way throughout.
//!
//! Memory stays bounded: past [`MAX_SLOTS`], the oldest slots are merged
//! pairwise where they were probed alike (their sums add; estimates lose
//! only resolution).

use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::capture::{CallRecord, flags};

/// The longest slot.
pub const SLOT: std::time::Duration = std::time::Duration::from_millis(10);
/// The most slots kept before old ones are merged.
pub const MAX_SLOTS: usize = 8192;
/// The newest slots are never merged (their calls may still be arriving).
const KEEP_RECENT: usize = 256;

/// One slice of the session's timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Slot {
    /// Unix epoch ns; `end_ns` is exclusive (`i64::MAX` while open).
    pub start_ns: i64,
    pub end_ns: i64,
    /// The functions sampled during the slot, sorted.
    pub sampled: Arc<[u32]>,
    /// Of those, the ones whose sampling window was open (probed), sorted.
    pub windowed: Arc<[u32]>,
    /// Calls that started in the slot, by function id, sorted by id.
    pub counts: Vec<(u32, u64)>,
    /// Entry and return probe events that fired in the slot.
    pub entries: u64,
    pub returns: u64,
    /// The target's CPU time (all threads) since the previous reading, when
    /// a reading ended this slot; `None` when none did, or it failed.
    pub cpu_ns: Option<u64>,
    /// The time the target's threads (summed) were ready to run but waited
    /// for a CPU, over the same span as `cpu_ns`: on a loaded machine a
    /// busy target is slowed by others, and that time is neither its own
    /// work nor its waiting on something (see `Governor::tick_figures`).
    pub wait_ns: Option<u64>,
    /// A reading ended this slot (`cpu_ns` may still be `None`: the reading
    /// failed, the process had exited).
    pub read: bool,
}

impl Slot {
    /// Whether `function_id` was probed during the slot.
    pub fn probed(&self, function_id: u32) -> bool {
        self.sampled.binary_search(&function_id).is_err()
            || self.windowed.binary_search(&function_id).is_ok()
    }

    /// Calls of `function_id` that started in the slot.
    pub fn count(&self, function_id: u32) -> u64 {
        self.counts
            .binary_search_by_key(&function_id, |c| c.0)
            .map_or(0, |i| self.counts[i].1)
    }

    fn add(&mut self, function_id: u32, n: u64) {
        match self.counts.binary_search_by_key(&function_id, |c| c.0) {
            Ok(i) => self.counts[i].1 += n,
            Err(i) => self.counts.insert(i, (function_id, n)),
        }
    }

    fn alike(&self, other: &Slot) -> bool {
        self.sampled == other.sampled && self.windowed == other.windowed
    }
}

/// What the scheduler says of one thread, in ns (`/proc/PID/task/TID/
/// schedstat`): the CPU time it ran, and the time it was ready to run but
/// waited for a CPU (the run queue).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ThreadTime {
    pub cpu_ns: u64,
    pub wait_ns: u64,
}

impl From<u64> for ThreadTime {
    /// CPU time only (no wait).
    fn from(cpu_ns: u64) -> Self {
        ThreadTime { cpu_ns, wait_ns: 0 }
    }
}

/// [`ThreadTime`] of each thread of the target.
pub type ThreadCpu = FxHashMap<u32, ThreadTime>;

/// See the module docs.
#[derive(Debug)]
pub struct Ledger {
    slots: Vec<Slot>,
    /// Per-thread CPU time at the last reading.
    last_cpu: ThreadCpu,
    /// CPU time summed over readings so far (threads that exited between
    /// two readings lose what they ran since the first).
    cpu_total_ns: u64,
    /// Per function: the functions its calls were made from, with counts.
    callers: FxHashMap<u32, FxHashMap<u32, u64>>,
    /// Per function: the functions it called, with counts.
    callees: FxHashMap<u32, FxHashMap<u32, u64>>,
    /// Calls counted, by function (every slot).
    totals: FxHashMap<u32, u64>,
    /// Every function sampled at some time (the others are exact).
    ever_sampled: rustc_hash::FxHashSet<u32>,
}

impl Ledger {
    /// A ledger whose first slot starts at `start_ns`, nothing sampled,
    /// with the target's CPU time then (`None`: unknown, counted from 0).
    pub fn new(start_ns: i64, cpu: Option<ThreadCpu>) -> Self {
        Ledger {
            slots: vec![Slot {
                start_ns,
                end_ns: i64::MAX,
                sampled: Arc::from([]),
                windowed: Arc::from([]),
                counts: Vec::new(),
                entries: 0,
                returns: 0,
                cpu_ns: None,
                wait_ns: None,
                read: false,
            }],
            last_cpu: cpu.unwrap_or_default(),
            cpu_total_ns: 0,
            callers: FxHashMap::default(),
            callees: FxHashMap::default(),
            totals: FxHashMap::default(),
            ever_sampled: Default::default(),
        }
    }

    /// The slots, oldest first (the last one is open).
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// The current (open) slot.
    pub fn current(&self) -> &Slot {
        self.slots.last().expect("a ledger always has a slot")
    }

    /// Ends the current slot at `at_ns` and starts the next, with
    /// `sampled` the functions sampled from now on and `windowed` those of
    /// them in an open window (both sorted). `cpu` is a reading of the
    /// target's threads taken now (`Some(None)`: tried and failed; `None`:
    /// not read, allowed only when nothing probed changes).
    pub fn cut(
        &mut self,
        at_ns: i64,
        sampled: Arc<[u32]>,
        windowed: Arc<[u32]>,
        cpu: Option<Option<ThreadCpu>>,
    ) {
        self.ever_sampled.extend(sampled.iter().copied());
        let last = self.slots.last_mut().expect("a ledger always has a slot");
        let at_ns = at_ns.max(last.start_ns);
        last.end_ns = at_ns;
        if let Some(reading) = cpu {
            last.read = true;
            // A reading fails once the process has exited: nothing ran
            // since that could be seen (what ran before its threads ended
            // is given to the last slot by `finish`, from the total).
            let (ran, waited) = reading.map_or((0, 0), |now| {
                let (mut ran, mut waited) = (0u64, 0u64);
                for (tid, t) in &now {
                    let before = self.last_cpu.get(tid).copied().unwrap_or_default();
                    ran += t.cpu_ns.saturating_sub(before.cpu_ns);
                    waited += t.wait_ns.saturating_sub(before.wait_ns);
                }
                self.last_cpu = now;
                (ran, waited)
            });
            last.cpu_ns = Some(ran);
            last.wait_ns = Some(waited);
            if let Some(ran) = last.cpu_ns {
                self.cpu_total_ns += ran;
            }
        }
        self.slots.push(Slot {
            start_ns: at_ns,
            end_ns: i64::MAX,
            sampled,
            windowed,
            counts: Vec::new(),
            entries: 0,
            returns: 0,
            cpu_ns: None,
            wait_ns: None,
            read: false,
        });
        if self.slots.len() > MAX_SLOTS {
            self.merge_old();
        }
    }

    /// Ends the ledger: the open slot (begun by the last [`cut`](Self::cut),
    /// taken when recording ended) is dropped, so the last slot ends then.
    /// When the target's whole CPU time is known (`total_cpu_ns`, e.g. from
    /// the exit status of a `record`ed command that exited), what the
    /// readings missed (threads that exited between readings) is given to
    /// that last slot.
    pub fn finish(&mut self, total_cpu_ns: Option<u64>) {
        if self.slots.len() > 1 {
            self.slots.pop();
        }
        if let Some(total) = total_cpu_ns
            && let Some(last) = self.slots.last_mut()
        {
            let missed = total.saturating_sub(self.cpu_total_ns);
            last.cpu_ns = Some(last.cpu_ns.unwrap_or(0) + missed);
            last.read = true;
            self.cpu_total_ns += missed;
        }
    }

    /// Counts calls (by the slot their entry fell in) and their probe
    /// events, and which function each was called from.
    pub fn observe(&mut self, calls: &[CallRecord]) {
        for c in calls {
            let i = self.slot_of(c.start_ns);
            self.slots[i].add(c.function_id, 1);
            *self.totals.entry(c.function_id).or_default() += 1;
            if c.flags & flags::ENTRY_MISSING == 0 {
                self.slots[i].entries += 1;
            }
            if c.duration_ns >= 0 && c.flags & (flags::INLINED | flags::UNWOUND) == 0 {
                let j = self.slot_of(c.start_ns.saturating_add(c.duration_ns));
                self.slots[j].returns += 1;
            }
            if c.parent_function_id != 0 && c.parent_function_id != c.function_id {
                *self
                    .callers
                    .entry(c.function_id)
                    .or_default()
                    .entry(c.parent_function_id)
                    .or_default() += 1;
                *self
                    .callees
                    .entry(c.parent_function_id)
                    .or_default()
                    .entry(c.function_id)
                    .or_default() += 1;
            }
        }
    }

    /// Probe events that belong to no call (window edges), at these epoch
    /// times: counted with their slots, at the entry cost.
    pub fn add_events(&mut self, times_ns: impl IntoIterator<Item = i64>) {
        for t in times_ns {
            let i = self.slot_of(t);
            self.slots[i].entries += 1;
        }
    }

    /// The callers of `function_id`, most frequent first (at most `n`).
    pub fn callers(&self, function_id: u32, n: usize) -> Vec<(u32, u64)> {
        top(self.callers.get(&function_id), n)
    }

    /// The functions `function_id` called, most frequent first (at most `n`).
    pub fn callees(&self, function_id: u32, n: usize) -> Vec<(u32, u64)> {
        top(self.callees.get(&function_id), n)
    }

    /// Forgets who called whom (tests of estimates without a clock).
    #[cfg(test)]
    pub(crate) fn forget_calls_for_tests(&mut self) {
        self.callers.clear();
        self.callees.clear();
    }

    /// Calls counted so far, by function.
    pub fn totals(&self) -> &FxHashMap<u32, u64> {
        &self.totals
    }

    /// Whether `function_id` was ever sampled (if not, its count is exact).
    pub fn ever_sampled(&self, function_id: u32) -> bool {
        self.ever_sampled.contains(&function_id)
    }

    /// The index of the slot holding `ns` (the first slot for earlier
    /// times, the last for later ones).
    fn slot_of(&self, ns: i64) -> usize {
        // Most calls land in the newest slots.
        let n = self.slots.len();
        if self.slots[n - 1].start_ns <= ns {
            return n - 1;
        }
        self.slots
            .partition_point(|s| s.start_ns <= ns)
            .saturating_sub(1)
    }

    /// Merges old slots pairwise where they were probed alike (the merged
    /// slot holds the CPU time of both when both ended with a reading).
    fn merge_old(&mut self) {
        let keep = self.slots.len().saturating_sub(KEEP_RECENT);
        let mut out: Vec<Slot> = Vec::with_capacity(self.slots.len());
        let mut i = 0;
        while i < self.slots.len() {
            // A reading that ends the first half but not the second would
            // move: the CPU time after it would then be counted with slots
            // probed differently.
            let movable = !self.slots[i].read || self.slots.get(i + 1).is_some_and(|b| b.read);
            if i + 1 < keep && self.slots[i].alike(&self.slots[i + 1]) && movable {
                let b = self.slots[i + 1].clone();
                let mut a = self.slots[i].clone();
                a.end_ns = b.end_ns;
                for (id, n) in &b.counts {
                    a.add(*id, *n);
                }
                a.entries += b.entries;
                a.returns += b.returns;
                a.cpu_ns = match (a.read, b.read) {
                    (true, true) => a.cpu_ns.zip(b.cpu_ns).map(|(x, y)| x + y),
                    _ => b.cpu_ns,
                };
                a.wait_ns = match (a.read, b.read) {
                    (true, true) => a.wait_ns.zip(b.wait_ns).map(|(x, y)| x + y),
                    _ => b.wait_ns,
                };
                a.read = a.read || b.read;
                out.push(a);
                i += 2;
            } else {
                out.push(self.slots[i].clone());
                i += 1;
            }
        }
        self.slots = out;
    }
}

/// User and system time of `pid` so far, ns (`/proc/PID/stat`; every
/// thread, those that exited too).
pub fn read_user_sys(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces and parens):
    // state is field 3, utime 14 and stime 15.
    let (_, rest) = stat.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let ticks = |i: usize| f.get(i)?.parse::<u64>().ok();
    Some((
        ticks(11)? * 1_000_000_000 / hz,
        ticks(12)? * 1_000_000_000 / hz,
    ))
}

/// The most time the probes can have taken of a target whose system time
/// grew by `sys_ns` (the kernel charges their handling there): that, plus
/// the tick sampling's error (two standard deviations at a 4 ms tick, and a
/// 10 ms clock tick of rounding).
pub fn sys_cap_ns(sys_ns: u64) -> f64 {
    let d = sys_ns as f64;
    d + 2.0 * (d * 4e6).sqrt() + 10e6
}

/// The `n` largest counts of `m`, largest first (ties by id).
fn top(m: Option<&FxHashMap<u32, u64>>, n: usize) -> Vec<(u32, u64)> {
    let mut v: Vec<(u32, u64)> = m
        .map(|m| m.iter().map(|(k, v)| (*k, *v)).collect())
        .unwrap_or_default();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v.truncate(n);
    v
}

/// The [`ThreadTime`] of every live thread of `pid`, from
/// `/proc/PID/task/*/schedstat` (`None` once the process is gone).
pub fn read_thread_cpu(pid: u32) -> Option<ThreadCpu> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut out = FxHashMap::default();
    for t in dir.flatten() {
        let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let mut p = t.path();
        p.push("schedstat");
        if let Ok(s) = std::fs::read_to_string(&p) {
            let mut f = s.split_whitespace().map(|v| v.parse::<u64>().ok());
            if let (Some(Some(cpu_ns)), Some(Some(wait_ns))) = (f.next(), f.next()) {
                out.insert(tid, ThreadTime { cpu_ns, wait_ns });
            }
        }
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(f: u32, parent: u32, start: i64, dur: i64) -> CallRecord {
        CallRecord {
            function_id: f,
            parent_function_id: parent,
            start_ns: start,
            duration_ns: dur,
            ..Default::default()
        }
    }

    fn cpu(pairs: &[(u32, u64)]) -> Option<Option<ThreadCpu>> {
        Some(Some(pairs.iter().map(|&(t, ns)| (t, ns.into())).collect()))
    }

    #[test]
    fn calls_land_in_the_slot_of_their_entry_and_returns_in_the_slot_of_their_return() {
        let mut l = Ledger::new(0, cpu(&[(1, 100)]).flatten());
        l.cut(50, Arc::from([7u32]), Arc::from([7u32]), cpu(&[(1, 130)]));
        l.cut(
            100,
            Arc::from([7u32]),
            Arc::from([]),
            cpu(&[(1, 140), (2, 5)]),
        );
        // 7 enters in the window and returns after it; 3 in the first slot.
        l.observe(&[call(7, 3, 60, 45), call(3, 0, 10, 80), call(7, 3, 40, 1)]);
        let s = l.slots();
        assert_eq!(s.len(), 3);
        assert_eq!((s[0].count(3), s[0].count(7), s[1].count(7)), (1, 1, 1));
        assert_eq!((s[0].entries, s[1].entries, s[2].entries), (2, 1, 0));
        assert_eq!((s[0].returns, s[1].returns, s[2].returns), (1, 1, 1));
        // Thread 1 ran 30 then 10; thread 2 appeared with 5.
        assert_eq!(
            (s[0].cpu_ns, s[1].cpu_ns, s[2].cpu_ns),
            (Some(30), Some(15), None)
        );
        assert!(s[0].probed(7) && s[0].probed(3));
        assert!(s[1].probed(7) && !s[2].probed(7) && s[2].probed(3));
        assert_eq!(l.callers(7, 3), vec![(3, 2)]);
        assert_eq!(l.totals()[&7], 2);
    }

    #[test]
    fn a_reading_gives_the_run_queue_wait_since_the_last() {
        let t = |cpu_ns, wait_ns| ThreadTime { cpu_ns, wait_ns };
        let mut l = Ledger::new(0, Some([(1, t(100, 1000))].into_iter().collect()));
        let none: Arc<[u32]> = Arc::from([]);
        l.cut(
            50,
            Arc::clone(&none),
            Arc::clone(&none),
            Some(Some(
                [(1, t(110, 1030)), (2, t(5, 7))].into_iter().collect(),
            )),
        );
        l.cut(90, Arc::clone(&none), Arc::clone(&none), None);
        let s = l.slots();
        // Thread 1 waited 30 more, thread 2 appeared having waited 7.
        assert_eq!((s[0].cpu_ns, s[0].wait_ns), (Some(15), Some(37)));
        assert_eq!((s[1].cpu_ns, s[1].wait_ns), (None, None));
    }

    #[test]
    fn finish_gives_the_last_slot_what_the_readings_missed() {
        let mut l = Ledger::new(0, cpu(&[(1, 0)]).flatten());
        l.cut(50, Arc::from([]), Arc::from([]), cpu(&[(1, 40)]));
        // Recording ends at 90; thread 1 had exited: the reading fails, and
        // the command's exit status says 100 in all.
        l.cut(90, Arc::from([]), Arc::from([]), Some(None));
        l.finish(Some(100));
        let s = l.slots();
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].end_ns, 90);
        assert_eq!(s[1].cpu_ns, Some(60));
    }

    #[test]
    fn old_slots_merge_pairwise_when_probed_alike() {
        let mut l = Ledger::new(0, None);
        let none: Arc<[u32]> = Arc::from([]);
        for i in 1..=(MAX_SLOTS as i64 + 10) {
            l.observe(&[call(1, 0, i * 10 - 5, 1)]);
            l.cut(i * 10, Arc::clone(&none), Arc::clone(&none), None);
        }
        assert!(l.slots().len() <= MAX_SLOTS, "{}", l.slots().len());
        let total: u64 = l.slots().iter().map(|s| s.count(1)).sum();
        assert_eq!(total, MAX_SLOTS as u64 + 10);
        // Contiguous and ordered.
        for w in l.slots().windows(2) {
            assert_eq!(w[0].end_ns, w[1].start_ns);
        }
    }
}
