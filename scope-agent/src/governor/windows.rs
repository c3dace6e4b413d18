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
pub const WINDOW: Duration = Duration::from_millis(50);

/// Links being closed on a thread; once closed and the ring drained, the
/// open calls of `ids` are cut.
pub(super) struct Closing {
    handle: Option<JoinHandle<()>>,
    ids: FxHashSet<u32>,
    /// The close finished; cut after the next drain.
    closed: bool,
}

pub(super) enum Window {
    Off {
        next_open: Instant,
    },
    On {
        since: Instant,
        links: Vec<ProbeLink>,
    },
}

impl Governor {
    pub(super) fn finish_closings(&mut self, correlator: &mut Correlator) {
        let mut i = 0;
        while i < self.closings.len() {
            let c = &mut self.closings[i];
            if c.closed {
                // Closed before the last drain: every event of those links
                // has been read.
                correlator.cut_window(&c.ids);
                self.closings.swap_remove(i);
                continue;
            }
            if c.handle.as_ref().is_none_or(JoinHandle::is_finished) {
                if let Some(h) = c.handle.take() {
                    let _ = h.join();
                }
                c.closed = true;
            }
            i += 1;
        }
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
            closed: false,
        });
    }

    /// No sampling window open or closing.
    pub(super) fn quiet(&self) -> bool {
        matches!(self.window, Window::Off { .. }) && self.closings.is_empty()
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
                let Window::On { links, .. } = std::mem::replace(
                    &mut self.window,
                    Window::Off {
                        next_open: since + WINDOW * self.n.max(2),
                    },
                ) else {
                    return;
                };
                // Only the part of the window inside the current tick.
                self.window_on += now.duration_since(since.max(self.tick_started));
                let ids = self.sampled_ids();
                correlator.end_window(&ids, crate::time::monotonic_ns());
                self.close_async(links, ids);
            }
            Window::Off { next_open } if now >= *next_open && self.closings.is_empty() => {
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
                correlator.open_window(&ids, crate::time::monotonic_ns());
                self.window = Window::On {
                    since: Instant::now(),
                    links,
                };
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
        correlator.end_window(&ids, crate::time::monotonic_ns());
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
                correlator.unsample(id);
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

    /// Detaches everything the governor holds (at the end of the session),
    /// returning the links for the caller to close with the rest.
    pub fn take_links(&mut self) -> Vec<ProbeLink> {
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
        for c in &mut self.closings {
            if let Some(h) = c.handle.take() {
                let _ = h.join();
            }
        }
        out
    }
}
