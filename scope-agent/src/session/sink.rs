//! The writer thread's side of a session: calls go to the Parquet store
//! and to the summary's statistics.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Result;

use crate::capture::{CallRecord, EventSink, LossRecord, MetricsRecord};
use crate::status::WriterGauges;
use crate::storage::ParquetStore;
use crate::storage::upload::Uploader;
use crate::summary::CallStats;

/// The writer thread's sink: the Parquet store and the summary's statistics,
/// publishing the store's gauges for the status line after every write.
pub(super) struct SessionSink {
    pub(super) store: ParquetStore,
    /// `--out s3://…`: uploads each file the store finishes.
    pub(super) uploader: Option<Uploader>,
    pub(super) stats: CallStats,
    pub(super) gauges: Arc<WriterGauges>,
    /// The hot tier that live queries read (`None` when it could not be
    /// set up).
    pub(super) hot: Option<Arc<crate::live::HotTier>>,
}

impl SessionSink {
    fn publish<T>(&self, r: Result<T>) -> Result<T> {
        self.gauges
            .files_written
            .store(self.store.files_written() as u64, Ordering::Relaxed);
        self.gauges
            .rows_buffered
            .store(self.store.rows_buffered() as u64, Ordering::Relaxed);
        if let Some(u) = &self.uploader {
            let g = u.gauges();
            self.gauges
                .uploads_pending
                .store(g.pending.load(Ordering::Relaxed), Ordering::Relaxed);
            self.gauges
                .uploaded
                .store(g.uploaded.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        r
    }
}

impl EventSink for SessionSink {
    fn write_calls(&mut self, calls: &[CallRecord]) -> Result<()> {
        if let Some(hot) = &self.hot {
            hot.push(calls);
        }
        let a = self.store.write_calls(calls);
        let b = self.stats.write_calls(calls);
        self.publish(a.and(b))
    }

    fn write_losses(&mut self, losses: &[LossRecord]) -> Result<()> {
        let r = self.store.write_losses(losses);
        self.publish(r)
    }

    fn write_metrics(&mut self, metrics: &[MetricsRecord]) -> Result<()> {
        let r = self.store.write_metrics(metrics);
        self.publish(r)
    }

    fn write_governor(&mut self, rows: &[crate::capture::GovernorRecord]) -> Result<()> {
        let r = self.store.write_governor(rows);
        self.publish(r)
    }

    fn write_aggregates(&mut self, rows: &[crate::capture::AggregateRecord]) -> Result<()> {
        let r = self.store.write_aggregates(rows);
        self.publish(r)
    }

    fn write_markers(&mut self, rows: &[crate::capture::MarkerRecord]) -> Result<()> {
        let r = self.store.write_markers(rows);
        self.publish(r)
    }

    fn write_offcpu(&mut self, rows: &[crate::capture::OffcpuRecord]) -> Result<()> {
        let r = self.store.write_offcpu(rows);
        self.publish(r)
    }

    fn tick(&mut self) -> Result<()> {
        let r = self.store.tick();
        self.publish(r)
    }
}
