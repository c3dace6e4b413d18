//! The capture loop: every [`POLL`], the ring is read into the correlator,
//! calls go to the writer (and to the governor, which then steps), losses
//! are read, modules loaded since the start are attached, and the status
//! line is updated, until a stop condition: the loop returns why it stopped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::SessionConfig;
use super::attach::{Live, attach_late_modules};
use super::plan::Planned;
use crate::capture::EventSink;
use crate::capture::correlator::CorrelatorCounts;
use crate::capture::pipeline::{SinkMsg, SinkThread};
use crate::capture::ring::RingReader;
use crate::status::{Snapshot, StatusMode, StatusReporter};
use crate::summary::format_duration_ns;
use crate::target::ProcessWatch;

/// Calls are sent to the writer in batches of this many, or every 100 ms.
const BATCH: usize = 16 * 1024;
const POLL: Duration = Duration::from_millis(10);
/// How often the target's mappings are checked for modules a pending pattern
/// names (libraries loaded with dlopen).
const MODULE_POLL: Duration = Duration::from_millis(200);

/// How the capture loop ended, and what the end of the session needs of it.
pub(super) struct Ended {
    /// Why it stopped, for the last line.
    pub(super) reason: String,
    /// The writer thread stopped: nothing more is sent to it.
    pub(super) writer_failed: bool,
    /// `record`: the command's exit code, if it exited.
    pub(super) exit_code: Option<i32>,
    /// When the loop started.
    pub(super) started: Instant,
    pub(super) status: StatusReporter,
}

/// The writer thread stopped taking messages.
struct WriterStopped;

/// The loop's own state: its clocks and the status line.
struct Loop {
    status: StatusReporter,
    deadline: Option<Instant>,
    last_flush: Instant,
    last_loss: Instant,
    last_module_poll: Instant,
    exit_code: Option<i32>,
}

/// Runs until a stop condition: interrupted, `--duration` reached, the
/// target exited, or the writer stopped.
pub(super) fn run_loop(
    cfg: &SessionConfig,
    planned: &mut Planned,
    live: &mut Live,
    stop: &AtomicBool,
) -> Ended {
    let status = StatusReporter::new(
        StatusMode::choose(cfg.quiet, cfg.status_interval),
        Arc::clone(&live.gauges),
    );
    let started = Instant::now();
    let mut state = Loop {
        status,
        deadline: cfg.duration.map(|d| started + d),
        last_flush: Instant::now(),
        last_loss: Instant::now(),
        last_module_poll: Instant::now(),
        exit_code: None,
    };
    let (reason, writer_failed) = loop {
        match state.step(cfg, planned, live, stop) {
            Ok(None) => {}
            Ok(Some(reason)) => break (reason, false),
            Err(WriterStopped) => break ("the writer stopped".to_string(), true),
        }
    };
    Ended {
        reason,
        writer_failed,
        exit_code: state.exit_code,
        started,
        status: state.status,
    }
}

impl Loop {
    /// One round of the loop; `Some` reason when it is time to stop.
    fn step(
        &mut self,
        cfg: &SessionConfig,
        planned: &mut Planned,
        live: &mut Live,
        stop: &AtomicBool,
    ) -> Result<Option<String>, WriterStopped> {
        live.reader.wait(POLL);
        drain_ring(live);
        self.flush(live)?;
        // After the flush, so the governor has seen every call read so far.
        self.govern(live)?;
        self.send_losses(live)?;
        if !planned.pending.is_empty() && self.last_module_poll.elapsed() >= MODULE_POLL {
            self.last_module_poll = Instant::now();
            attach_late(cfg, planned, live);
        }
        if let Some(line) = live.cost.check(live.correlator.counts().entries) {
            self.status.clear();
            eprintln!("scope: {line}");
        }
        // After the loss read, so the status and metrics totals include it.
        self.show_status(live)?;
        Ok(self.stop_reason(cfg, live, stop))
    }

    /// Sends the correlator's calls to the writer (and the governor), in
    /// batches.
    fn flush(&mut self, live: &mut Live) -> Result<(), WriterStopped> {
        let Live {
            correlator,
            governor,
            writer,
            ..
        } = live;
        // With the governor, every drain is flushed, so it sees the calls
        // when it decides (and can decide early).
        let eager = governor.is_some();
        if correlator.pending() >= BATCH
            || (correlator.pending() > 0
                && (eager || self.last_flush.elapsed() >= Duration::from_millis(100)))
        {
            self.last_flush = Instant::now();
            let calls = correlator.take_calls();
            if let Some(g) = governor.as_mut() {
                g.observe(&calls);
            }
            if !writer.send(SinkMsg::Calls(calls)) {
                return Err(WriterStopped);
            }
            let offcpu = correlator.take_offcpu();
            if !offcpu.is_empty() && !writer.send(SinkMsg::Offcpu(offcpu)) {
                return Err(WriterStopped);
            }
            let markers = correlator.take_markers();
            if !markers.is_empty() && !writer.send(SinkMsg::Markers(markers)) {
                return Err(WriterStopped);
            }
        }
        Ok(())
    }

    /// One step of the governor; its messages are printed, its rows sent.
    fn govern(&mut self, live: &mut Live) -> Result<(), WriterStopped> {
        let Live {
            clock,
            probes,
            governor,
            reader,
            correlator,
            writer,
            ..
        } = live;
        if let Some(g) = governor.as_mut() {
            g.step(probes, correlator, reader.fill_pct(), clock.now_epoch_ns());
            let (rows, aggs, messages) = g.take_rows();
            if !messages.is_empty() {
                self.status.clear();
                for m in messages {
                    eprintln!("scope: governor: {m}");
                }
            }
            if (!rows.is_empty() && !writer.send(SinkMsg::Governor(rows)))
                || (!aggs.is_empty() && !writer.send(SinkMsg::Aggregates(aggs)))
            {
                return Err(WriterStopped);
            }
        }
        Ok(())
    }

    /// Once a second, the kernel's loss counters to the `losses` table.
    fn send_losses(&mut self, live: &mut Live) -> Result<(), WriterStopped> {
        if self.last_loss.elapsed() >= Duration::from_secs(1) {
            self.last_loss = Instant::now();
            let losses = live.reader.read_losses(live.clock.now_epoch_ns());
            if !losses.is_empty() && !live.writer.send(SinkMsg::Losses(losses)) {
                return Err(WriterStopped);
            }
        }
        Ok(())
    }

    /// The status line, and the `agent_metrics` row when one is due.
    fn show_status(&mut self, live: &mut Live) -> Result<(), WriterStopped> {
        self.status.see_fill(live.reader.fill_pct());
        let mut snap = snapshot(&live.correlator.counts(), &live.reader, &live.writer);
        snap.governor = live.governor.as_ref().and_then(|g| g.status());
        self.status.maybe_print(&snap);
        if let Some(m) = self
            .status
            .metrics_due(&snap, live.clock.now_epoch_ns(), false)
            && !live.writer.send(SinkMsg::Metrics(m))
        {
            return Err(WriterStopped);
        }
        Ok(())
    }

    /// Why to stop now, if it is time: interrupted, `--duration` reached,
    /// or the target exited.
    fn stop_reason(
        &mut self,
        cfg: &SessionConfig,
        live: &mut Live,
        stop: &AtomicBool,
    ) -> Option<String> {
        if stop.load(Ordering::Relaxed) {
            return Some("interrupted".to_string());
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Some(format!(
                "--duration {} reached",
                format_duration_ns(cfg.duration.unwrap_or_default().as_nanos() as u64)
            ));
        }
        if let Some(c) = live.child.as_mut()
            && let Some(code) = c.try_wait()
        {
            self.exit_code = Some(code);
            return Some(format!("the command exited with status {code}"));
        }
        if live.watch.as_ref().is_some_and(ProcessWatch::exited) {
            let pid = live.pid;
            return Some(format!("pid {pid} exited"));
        }
        None
    }
}

/// Modules a pending pattern names, loaded since the start: attached, and
/// their plans and `functions` files kept for the end.
fn attach_late(cfg: &SessionConfig, planned: &mut Planned, live: &mut Live) {
    match attach_late_modules(
        cfg,
        &mut planned.pending,
        &mut live.probes,
        &mut live.late_functions,
        &mut live.correlator,
        live.pid,
        &mut live.links,
    ) {
        Ok(Some((plan, file))) => {
            live.late_plans.push(plan);
            live.late_files.push(file);
        }
        Ok(None) => {}
        Err(e) => eprintln!("scope: warning: a module loaded after the start: {e:#}"),
    }
}

/// Reads what the ring holds into the correlator, marking the calls open
/// when the kernel lost events.
pub(super) fn drain_ring(live: &mut Live) {
    let since = live.correlator.pending();
    live.reader.drain(&mut live.correlator);
    if live.reader.lost_since_check() {
        live.correlator.note_loss(since);
    }
}

/// The figures the status line and `agent_metrics` need, from the reader side.
pub(super) fn snapshot<S: EventSink + Send + 'static>(
    counts: &CorrelatorCounts,
    reader: &RingReader,
    writer: &SinkThread<S>,
) -> Snapshot {
    Snapshot {
        events: counts.events,
        calls: counts.calls
            + counts.entry_missing
            + counts.unwound
            + counts.no_return_probe
            + counts.inlined,
        lost: reader.lost_total(),
        ring_fill_pct: reader.fill_pct(),
        backlog: writer.backlog(),
        governor: None,
    }
}
