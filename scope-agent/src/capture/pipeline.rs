//! The writer side of the pipeline: a thread that owns an [`EventSink`] and
//! receives batches over a bounded channel, so slow storage never blocks the
//! ring reader for longer than the channel's slack.

use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded};

use super::{
    AggregateRecord, CallRecord, EventSink, GovernorRecord, LossRecord, MarkerRecord,
    MetricsRecord, OffcpuRecord,
};

pub enum SinkMsg {
    Calls(Vec<CallRecord>),
    Losses(Vec<LossRecord>),
    Metrics(MetricsRecord),
    Governor(Vec<GovernorRecord>),
    Aggregates(Vec<AggregateRecord>),
    Offcpu(Vec<OffcpuRecord>),
    Markers(Vec<MarkerRecord>),
}

/// A sink running on its own thread.
pub struct SinkThread<S> {
    tx: Sender<SinkMsg>,
    handle: JoinHandle<(S, anyhow::Result<()>)>,
}

impl<S: EventSink + Send + 'static> SinkThread<S> {
    /// `depth` is how many batches may wait before `send` blocks.
    pub fn spawn(sink: S, depth: usize) -> std::io::Result<Self> {
        let (tx, rx) = bounded(depth);
        let handle = std::thread::Builder::new()
            .name("scope-writer".into())
            .spawn(move || run(sink, rx))?;
        Ok(Self { tx, handle })
    }

    /// Sends a batch; false if the writer has stopped (after an error).
    pub fn send(&self, msg: SinkMsg) -> bool {
        self.tx.send(msg).is_ok()
    }

    /// Batches waiting for the writer, and how many may wait before `send`
    /// blocks (and the reader with it).
    pub fn backlog(&self) -> (usize, usize) {
        (self.tx.len(), self.tx.capacity().unwrap_or(usize::MAX))
    }

    /// Closes the channel, lets the writer finish what it has, and returns
    /// the sink with the first error the writer met.
    pub fn finish(self) -> (S, anyhow::Result<()>) {
        drop(self.tx);
        match self.handle.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

fn run<S: EventSink>(mut sink: S, rx: Receiver<SinkMsg>) -> (S, anyhow::Result<()>) {
    let tick = Duration::from_secs(1);
    loop {
        let r = match rx.recv_timeout(tick) {
            Ok(SinkMsg::Calls(calls)) => sink.write_calls(&calls),
            Ok(SinkMsg::Losses(losses)) => sink.write_losses(&losses),
            Ok(SinkMsg::Metrics(m)) => sink.write_metrics(&[m]),
            Ok(SinkMsg::Governor(rows)) => sink.write_governor(&rows),
            Ok(SinkMsg::Aggregates(rows)) => sink.write_aggregates(&rows),
            Ok(SinkMsg::Offcpu(rows)) => sink.write_offcpu(&rows),
            Ok(SinkMsg::Markers(rows)) => sink.write_markers(&rows),
            Err(RecvTimeoutError::Timeout) => sink.tick(),
            Err(RecvTimeoutError::Disconnected) => return (sink, Ok(())),
        };
        if let Err(e) = r {
            // Dropping the receiver makes the reader's next send fail, so it
            // stops recording and reports this error.
            return (sink, Err(e));
        }
    }
}
