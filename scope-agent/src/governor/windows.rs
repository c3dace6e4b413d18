//! The governor's mechanism: sampling windows of a function's own links
//! (opened for [`WINDOW`] in every N, closed on a thread), demotion and
//! promotion (detaching and attaching a function's own links), and the
//! correlator's window edges and cuts that go with them. What to sample is
//! decided elsewhere (`policy.rs`).

use std::collections::BTreeMap;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustc_hash::FxHashSet;

use super::Governor;
use crate::capture::GovernorRecord;
use crate::capture::correlator::Correlator;
use crate::probe::attach::{LoadedProbes, ProbeLink, ProbePoint, close_links};

/// How long a sampling window stays open.
pub const WINDOW: Duration = Duration::from_millis(20);

/// How long after a close began its links are taken to have stopped
/// firing. Closing a link removes its breakpoints at once, then waits for
/// the kernel's uretprobe SRCU grace period, and that wait can last as long
/// as the target keeps calling probed functions: since 6.12 a pending
/// return probe holds an SRCU lease that a per-thread timer converts after
/// 100 ms, but every new probed call re-arms that timer, so a call that
/// stays open (`main`, a worker's loop) keeps its lease, and the close
/// blocks. Nothing here waits for it: the breakpoints are gone within a few
/// ms (22 ms at worst measured here, with the target on both CPUs), so
/// [`CLOSE_GRACE`] after a close began the open calls of its functions are
/// cut and its functions may be probed again; the close itself finishes
/// whenever the kernel lets it.
pub(super) const CLOSE_GRACE: Duration = Duration::from_millis(100);

/// Links being closed on a thread: [`CLOSE_GRACE`] after `started`, the
/// open calls of `ids` are cut.
pub(super) struct Closing {
    handle: Option<JoinHandle<()>>,
    ids: FxHashSet<u32>,
    started: Instant,
    /// The open calls were cut.
    cut: bool,
}

pub(super) enum Window {
    Off {
        next_open: Instant,
    },
    On {
        since: Instant,
        links: Vec<ProbeLink>,
        /// The functions the window probes, sorted.
        ids: std::sync::Arc<[u32]>,
    },
}

impl Governor {
    /// Cuts the open calls of functions whose links began closing at least
    /// [`CLOSE_GRACE`] ago (every event of theirs has been read by then),
    /// and forgets closes that have finished.
    pub(super) fn finish_closings(&mut self, correlator: &mut Correlator) {
        for c in &mut self.closings {
            if !c.cut && c.started.elapsed() >= CLOSE_GRACE {
                correlator.cut_window(&c.ids);
                c.cut = true;
            }
        }
        self.closings.retain_mut(|c| {
            let finished = c.handle.as_ref().is_none_or(JoinHandle::is_finished);
            if c.cut && finished {
                if let Some(h) = c.handle.take() {
                    let _ = h.join();
                }
                return false;
            }
            true
        });
    }

    /// Links began closing less than [`CLOSE_GRACE`] ago: they may still
    /// fire, so no link of the same functions is made yet.
    fn closing_recently(&self) -> bool {
        self.closings.iter().any(|c| !c.cut)
    }

    fn close_async(&mut self, links: Vec<ProbeLink>, ids: FxHashSet<u32>) {
        let handle = if links.is_empty() {
            None
        } else {
            // All at once: a link stops firing as its close begins, and the
            // kernel's grace-period waits overlap. Returns whose entry link
            // closed first are window edges to the correlator.
            std::thread::Builder::new()
                .name("scope-detach".into())
                .spawn(move || close_links(links))
                .ok()
        };
        self.closings.push(Closing {
            handle,
            ids,
            started: Instant::now(),
            cut: false,
        });
    }

    /// A factor in [0.5, 1.5): the pauses between windows vary around their
    /// mean (xorshift; quality hardly matters here).
    fn jitter(&mut self) -> f64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        0.5 + (x >> 11) as f64 / (1u64 << 53) as f64
    }

    /// No sampling window open, and no links closed too recently to be
    /// sure they stopped firing.
    pub(super) fn quiet(&self) -> bool {
        matches!(self.window, Window::Off { .. }) && !self.closing_recently()
    }

    pub(super) fn run_window(
        &mut self,
        probes: &mut LoadedProbes,
        correlator: &mut Correlator,
        now: Instant,
    ) {
        match &self.window {
            Window::On { since, .. } if now.duration_since(*since) >= WINDOW => {
                let since = *since;
                // The window lasted as long as the loop let it (longer than
                // WINDOW when draining its events took a while): the pause
                // keeps it one in N of the time, at a random phase so a
                // target that works in bursts is not seen in step with them.
                let open_for = now.duration_since(since);
                let pause = open_for.mul_f64(f64::from(self.n.max(2) - 1) * self.jitter());
                let Window::On { links, .. } = std::mem::replace(
                    &mut self.window,
                    Window::Off {
                        next_open: now + pause,
                    },
                ) else {
                    return;
                };
                // Only the part of the window inside the current tick.
                self.window_on += now.duration_since(since.max(self.tick_started));
                let ids = self.sampled_ids();
                let t = crate::time::monotonic_ns();
                correlator.end_window(&ids, t);
                self.cut(t, true);
                self.close_async(links, ids);
            }
            Window::Off { next_open } if now >= *next_open && !self.closing_recently() => {
                let ids = self.sampled_ids();
                if ids.is_empty() {
                    return;
                }
                let mut by_module: BTreeMap<usize, Vec<ProbePoint>> = BTreeMap::new();
                for id in &ids {
                    if let Some(g) = self.governed.get(id) {
                        by_module.entry(g.module).or_default().push(g.point);
                    }
                }
                let mut links = Vec::new();
                for (m, points) in by_module {
                    match probes.attach_module(&self.modules[m], &points, self.pid, true) {
                        Ok(l) => links.extend(l),
                        Err(e) => self
                            .messages
                            .push(format!("a sampling window could not open: {e}")),
                    }
                }
                // Entries count from when every link of the window is in.
                let t = crate::time::monotonic_ns();
                correlator.open_window(&ids, t);
                let mut sorted: Vec<u32> = ids.into_iter().collect();
                sorted.sort_unstable();
                self.window = Window::On {
                    since: Instant::now(),
                    links,
                    ids: sorted.into(),
                };
                self.cut(t, true);
            }
            _ => {}
        }
    }

    pub(super) fn demote(
        &mut self,
        correlator: &mut Correlator,
        id: u32,
        now_ns: i64,
        action: &'static str,
        reason: String,
    ) {
        let Some(g) = self.governed.get_mut(&id) else {
            return;
        };
        if g.sampled {
            return;
        }
        g.sampled = true;
        g.demoted_at = Some(Instant::now());
        let links = std::mem::take(&mut g.links);
        self.demotions += 1;
        self.rows.push(GovernorRecord {
            ts_ns: now_ns,
            function_id: Some(id),
            action,
            reason,
            calls_per_s: self.rate(id),
            predicted_pct: self.predicted_pct,
            sample_n: Some(self.n),
            budget_pct: self.budget_pct,
        });
        let ids: FxHashSet<u32> = std::iter::once(id).collect();
        let t = crate::time::monotonic_ns();
        correlator.end_window(&ids, t);
        self.cut(t, true);
        self.close_async(links, ids);
    }

    pub(super) fn promote(
        &mut self,
        probes: &mut LoadedProbes,
        correlator: &mut Correlator,
        id: u32,
        now_ns: i64,
        reason: String,
    ) -> bool {
        let Some(g) = self.governed.get(&id) else {
            return false;
        };
        let (module, point) = (g.module, g.point);
        match probes.attach_module(&self.modules[module], &[point], self.pid, true) {
            Ok(links) => {
                if let Some(g) = self.governed.get_mut(&id) {
                    g.sampled = false;
                    g.links = links;
                }
                let t = crate::time::monotonic_ns();
                correlator.unsample(id, t);
                self.cut(t, true);
                self.promotions += 1;
                self.rows.push(GovernorRecord {
                    ts_ns: now_ns,
                    function_id: Some(id),
                    action: "promote",
                    reason,
                    calls_per_s: self.rate(id),
                    predicted_pct: self.predicted_pct,
                    sample_n: Some(1),
                    budget_pct: self.budget_pct,
                });
                true
            }
            Err(e) => {
                self.messages
                    .push(format!("{} could not be promoted: {e}", self.name(id)));
                false
            }
        }
    }

    /// Everything the governor holds, at the end of the session: the links
    /// for the caller to close with the rest, and the closes still under
    /// way, to join only after that (they may wait for the kernel until
    /// every probe of the target is gone; see [`CLOSE_GRACE`]).
    pub fn take_links(&mut self) -> (Vec<ProbeLink>, Vec<JoinHandle<()>>) {
        let mut out = Vec::new();
        for g in self.governed.values_mut() {
            out.append(&mut g.links);
        }
        if let Window::On { links, .. } = std::mem::replace(
            &mut self.window,
            Window::Off {
                next_open: Instant::now(),
            },
        ) {
            out.extend(links);
        }
        let pending = self
            .closings
            .drain(..)
            .filter_map(|mut c| c.handle.take())
            .collect();
        (out, pending)
    }
}
