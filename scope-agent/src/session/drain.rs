//! Detach and drain: every link closed (the governor's too), then what the
//! kernel wrote before they closed is read, and the last calls, governor
//! and aggregates rows, losses and metrics go to the writer (unless it
//! stopped).

use std::time::{Duration, Instant};

use super::attach::Live;
use super::capture::{Ended, drain_ring, snapshot};
use crate::capture::pipeline::SinkMsg;
use crate::probe::attach::{ProbeLink, close_links};

/// What the end of the session needs of detaching and draining.
pub(super) struct Drained {
    /// When recording ended (epoch ns).
    pub(super) end_ns: i64,
    pub(super) detach_time: Duration,
    /// The agent's mean CPU use over the session, percent.
    pub(super) mean_cpu_pct: f64,
    /// What the sampler took (`None` without one).
    pub(super) samples: Option<crate::sample::SamplerReport>,
}

pub(super) fn detach_and_drain(live: &mut Live, ended: &mut Ended) -> Drained {
    // Detach, then drain what the kernel wrote before the links closed.
    // Events from while the links close one by one are outside the window.
    let end = crate::time::monotonic_ns();
    live.correlator.close_window(end);
    live.cost.stop();
    if let Some(g) = live.governor.as_mut() {
        g.end_recording(end);
    }
    let detach_started = Instant::now();
    let mut all_links: Vec<ProbeLink> = std::mem::take(&mut live.links)
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    let mut pending = Vec::new();
    if let Some(g) = live.governor.as_mut() {
        let (links, closing) = g.take_links();
        all_links.extend(links);
        pending = closing;
    }
    close_links(all_links);
    live.probes.detach_sched();
    // Closes the governor began earlier finish once no probe is left.
    for h in pending {
        let _ = h.join();
    }
    let detach_time = detach_started.elapsed();
    // Stopped before the session's end is read, so every sample lies
    // within the session; its files before the `sessions` row (a session
    // row means complete).
    let samples = live.sampler.take().and_then(|s| match s.finish() {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("scope: warning: samples: {e:#}");
            None
        }
    });
    let end_ns = live.clock.now_epoch_ns();
    drain_ring(live);
    live.correlator.finish();
    let losses = live.reader.read_losses(end_ns);
    ended.status.clear();
    let mean_cpu_pct = ended.status.mean_cpu_pct();
    if !ended.writer_failed {
        let Live {
            governor,
            reader,
            correlator,
            writer,
            child,
            ..
        } = live;
        let calls = correlator.take_calls();
        if let Some(g) = governor.as_mut() {
            g.observe(&calls);
            // A command that exited: its whole CPU time, from wait4.
            g.finish(end_ns, child.as_ref().and_then(|c| c.user_sys_ns()));
            let (rows, aggs, _) = g.take_rows();
            if !rows.is_empty() {
                writer.send(SinkMsg::Governor(rows));
            }
            if !aggs.is_empty() {
                writer.send(SinkMsg::Aggregates(aggs));
            }
        }
        writer.send(SinkMsg::Calls(calls));
        let offcpu = correlator.take_offcpu();
        if !offcpu.is_empty() {
            writer.send(SinkMsg::Offcpu(offcpu));
        }
        let markers = correlator.take_markers();
        if !markers.is_empty() {
            writer.send(SinkMsg::Markers(markers));
        }
        if !losses.is_empty() {
            writer.send(SinkMsg::Losses(losses));
        }
        let mut snap = snapshot(&correlator.counts(), reader, writer);
        snap.governor = governor.as_ref().and_then(|g| g.status());
        if let Some(m) = ended.status.metrics_due(&snap, end_ns, true) {
            writer.send(SinkMsg::Metrics(m));
        }
    }
    Drained {
        end_ns,
        detach_time,
        mean_cpu_pct,
        samples,
    }
}
