//! Rewriting one table of one session into large files in a staging
//! directory: `calls` sorted by (tid, start_ns, depth) with DataFusion's
//! external sort (memory bounded by a [`FairSpillPool`], spilling to the
//! staging tree), the other tables concatenated in segment order (their rows'
//! order is the order they were decided in: nothing to gain from sorting).
//!
//! Every file is written with the Arrow schema of the segments it replaces
//! (the writer's schema: same names, types, nullability), zstd, page-level
//! statistics (column and offset index) and, for `calls`, the writer's delta
//! encodings plus a `sorting_columns` declaration in each row group.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use arrow_array::RecordBatch;
use arrow_schema::{DataType, SchemaRef};
use datafusion::common::config::SpillCompression;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::physical_plan::{ExecutionPlan, execute_stream};
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext, col};
use futures::StreamExt;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::SortingColumn;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use super::CompactOptions;
use super::staging::{crash_point, create_file, sync_dir};

/// Zstd level of the compacted files: the writer's. Measured on the demo
/// store's calls and on 200,000 generated calls of 4 threads (the
/// `compact_store exp` example): level 9 saves under 1%, 20,000-row pages
/// under 1% (for a coarser page index), BYTE_STREAM_SPLIT durations 0-4%
/// (an encoding older readers lack), delta or plain durations cost 1-18%:
/// the dictionary and level 3 stay.
const ZSTD_LEVEL: i32 = 3;
/// Rows per data page: the unit the page index lets a point query skip to
/// (a `stack --at` reads one page per column of a row group, not the whole
/// group). Smaller pages index finer but cost a header and statistics each.
const PAGE_ROWS: usize = 8192;
/// Rows per Arrow batch read and sorted.
const BATCH_ROWS: usize = 8192;
/// `calls` columns that grow almost monotonically within a thread once
/// sorted: delta encoding stores them in a few bits, a dictionary would only
/// cost (the writer's choice too).
const DELTA_COLUMNS: [&str; 3] = ["call_id", "parent_call_id", "start_ns"];
/// The sort key of `calls`: a thread's calls in time order, a parent before
/// the child that starts at the same nanosecond.
pub(crate) const CALLS_SORT: [&str; 3] = ["tid", "start_ns", "depth"];

/// The files one table became.
pub(crate) struct Written {
    /// Final paths in the staging directory, with sizes in bytes.
    pub files: Vec<(PathBuf, u64)>,
    /// Rows over all files.
    pub rows: u64,
    /// Bytes the sort spilled to disk (0 when it fit in memory).
    pub spilled_bytes: u64,
}

/// Writer properties of a compacted file of `table`.
fn properties(table: &str, schema: &SchemaRef, opts: &CompactOptions) -> Result<WriterProperties> {
    let level = ZstdLevel::try_new(ZSTD_LEVEL).context("zstd level")?;
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_max_row_group_row_count(Some(opts.row_group_rows.max(1)))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_data_page_row_count_limit(PAGE_ROWS)
        .set_dictionary_enabled(true);
    if table == "calls" {
        for column in DELTA_COLUMNS {
            if schema.index_of(column).is_ok() {
                b = b
                    .set_column_dictionary_enabled(ColumnPath::from(column), false)
                    .set_column_encoding(ColumnPath::from(column), Encoding::DELTA_BINARY_PACKED);
            }
        }
        let sorting: Option<Vec<SortingColumn>> = CALLS_SORT
            .iter()
            .map(|c| {
                leaf_index(schema, c).map(|i| SortingColumn {
                    column_idx: i,
                    descending: false,
                    nulls_first: false,
                })
            })
            .collect();
        b = b.set_sorting_columns(sorting);
    }
    Ok(b.build())
}

/// Parquet leaf-column index of top-level field `name` (fields before it may
/// be lists or structs, which take more than one leaf).
fn leaf_index(schema: &SchemaRef, name: &str) -> Option<i32> {
    fn leaves(t: &DataType) -> usize {
        match t {
            DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
                leaves(f.data_type())
            }
            DataType::Struct(fields) => fields.iter().map(|f| leaves(f.data_type())).sum(),
            DataType::Map(f, _) => leaves(f.data_type()),
            _ => 1,
        }
    }
    let idx = schema.index_of(name).ok()?;
    let before: usize = schema.fields()[..idx]
        .iter()
        .map(|f| leaves(f.data_type()))
        .sum();
    i32::try_from(before).ok()
}

/// Writes batches into `part-c00000.parquet`, `part-c00001.parquet`, ... of
/// one directory, a new file every `target_rows` rows.
struct FileRoller {
    dir: PathBuf,
    schema: SchemaRef,
    props: WriterProperties,
    target_rows: usize,
    writer: Option<(PathBuf, ArrowWriter<BufWriter<File>>)>,
    rows_in_file: usize,
    files: Vec<(PathBuf, u64)>,
    rows: u64,
}

impl FileRoller {
    fn new(dir: &Path, schema: SchemaRef, props: WriterProperties, target_rows: usize) -> Self {
        FileRoller {
            dir: dir.to_path_buf(),
            schema,
            props,
            target_rows: target_rows.max(1),
            writer: None,
            rows_in_file: 0,
            files: Vec::new(),
            rows: 0,
        }
    }

    fn open(&mut self) -> Result<()> {
        let path = self.dir.join(format!(
            "{}{:05}.parquet",
            super::COMPACTED_PREFIX,
            self.files.len()
        ));
        let file = create_file(&path)?;
        let writer = ArrowWriter::try_new(
            BufWriter::with_capacity(1 << 20, file),
            self.schema.clone(),
            Some(self.props.clone()),
        )
        .with_context(|| format!("cannot start {}", path.display()))?;
        self.writer = Some((path, writer));
        self.rows_in_file = 0;
        Ok(())
    }

    /// Writes `batch` (read with the segments' schema: it is re-labelled with
    /// it exactly, and fails if a column's type differs).
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let batch = RecordBatch::try_new(self.schema.clone(), batch.columns().to_vec())
            .context("a batch does not match the segments' schema")?;
        let mut offset = 0;
        while offset < batch.num_rows() {
            if self.writer.is_none() {
                self.open()?;
            }
            let take = (self.target_rows - self.rows_in_file).min(batch.num_rows() - offset);
            let (path, writer) = self
                .writer
                .as_mut()
                .ok_or_else(|| anyhow!("no open file"))?;
            writer
                .write(&batch.slice(offset, take))
                .with_context(|| format!("cannot write {}", path.display()))?;
            offset += take;
            self.rows_in_file += take;
            self.rows += take as u64;
            if self.rows_in_file >= self.target_rows {
                self.close()?;
            }
        }
        Ok(())
    }

    /// Writes the footer, fsyncs the file, records its size.
    fn close(&mut self) -> Result<()> {
        let Some((path, writer)) = self.writer.take() else {
            return Ok(());
        };
        let file = writer
            .into_inner()
            .with_context(|| format!("cannot finish {}", path.display()))?
            .into_inner()
            .map_err(|e| anyhow!("cannot write {}: {}", path.display(), e.error()))?;
        file.sync_all()
            .map_err(|e| anyhow!("cannot sync {}: {e}", path.display()))?;
        let size = file
            .metadata()
            .map_err(|e| anyhow!("cannot stat {}: {e}", path.display()))?
            .len();
        self.files.push((path, size));
        crash_point("write");
        Ok(())
    }

    /// Closes the last file; a table without rows still gets one (empty)
    /// file, as the writer does, so globs over every table match.
    fn finish(mut self, spilled_bytes: u64) -> Result<Written> {
        if self.files.is_empty() && self.writer.is_none() {
            self.open()?;
        }
        self.close()?;
        sync_dir(&self.dir)?;
        Ok(Written {
            files: self.files,
            rows: self.rows,
            spilled_bytes,
        })
    }
}

/// Concatenates `segments` (in the given order) into large files in `dir`.
pub(crate) fn concat(
    table: &str,
    segments: &[PathBuf],
    schema: SchemaRef,
    dir: &Path,
    opts: &CompactOptions,
) -> Result<Written> {
    let props = properties(table, &schema, opts)?;
    let mut roller = FileRoller::new(dir, schema, props, opts.target_file_rows);
    for path in segments {
        let file = File::open(path).map_err(|e| anyhow!("cannot open {}: {e}", path.display()))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .and_then(|b| b.with_batch_size(BATCH_ROWS).build())
            .with_context(|| format!("cannot read {}", path.display()))?;
        for batch in reader {
            let batch = batch.with_context(|| format!("cannot read {}", path.display()))?;
            roller.write(&batch)?;
        }
    }
    roller.finish(0)
}

/// Sorts the `calls` segments by [`CALLS_SORT`] into large files in `dir`,
/// with at most `opts.memory_limit` bytes for the sort (the rest spills to
/// `spill_dir`).
pub(crate) fn sort_calls(
    segments: &[PathBuf],
    schema: SchemaRef,
    dir: &Path,
    spill_dir: &Path,
    opts: &CompactOptions,
) -> Result<Written> {
    let props = properties("calls", &schema, opts)?;
    let roller = FileRoller::new(dir, schema.clone(), props, opts.target_file_rows);
    let paths: Vec<String> = segments
        .iter()
        .map(|p| {
            p.to_str()
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("path {} is not UTF-8", p.display()))
        })
        .collect::<Result<_>>()?;
    let memory_limit = opts.memory_limit;
    let spill_dir = spill_dir.to_path_buf();
    block_on(async move {
        let mut roller = roller;
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(FairSpillPool::new(memory_limit)))
            .with_disk_manager_builder(
                DiskManagerBuilder::default()
                    .with_mode(DiskManagerMode::Directories(vec![spill_dir])),
            )
            .build_arc()?;
        // One partition: one sort owns the whole memory limit, with no final
        // merge of partitions competing with it for the pool (DataFusion's
        // merge of two partitions' sorts failed at small limits).
        let mut config = SessionConfig::new()
            .with_batch_size(BATCH_ROWS)
            .with_target_partitions(1);
        let options = config.options_mut();
        // Spilled runs are Arrow IPC, about 70 bytes a call uncompressed
        // (714 MB for 10 M calls): lz4 keeps the temporary disk use and its
        // I/O a few times smaller for little CPU.
        options.execution.spill_compression = SpillCompression::Lz4Frame;
        // Read strings as Utf8 (the writer's type), not Utf8View.
        options.execution.parquet.schema_force_view_types = false;
        // Reserved up front (per partition) for merging the spilled runs: one
        // batch of each run must fit in it.
        options.execution.sort_spill_reservation_bytes = memory_limit / 4;
        let ctx = SessionContext::new_with_config_rt(config, runtime);
        let df = ctx
            .read_parquet(paths, ParquetReadOptions::default().schema(&schema))
            .await?
            .sort(
                CALLS_SORT
                    .iter()
                    .map(|c| col(*c).sort(true, false))
                    .collect(),
            )?;
        let plan = df.create_physical_plan().await?;
        let mut stream = execute_stream(plan.clone(), ctx.task_ctx())?;
        while let Some(batch) = stream.next().await {
            roller.write(&batch?)?;
        }
        drop(stream);
        let spilled = spilled_bytes(plan.as_ref());
        roller.finish(spilled)
    })
}

/// Bytes spilled by `plan` and its children (DataFusion's sort metrics).
fn spilled_bytes(plan: &dyn ExecutionPlan) -> u64 {
    let own = plan.metrics().and_then(|m| m.spilled_bytes()).unwrap_or(0) as u64;
    own + plan
        .children()
        .iter()
        .map(|c| spilled_bytes(c.as_ref()))
        .sum::<u64>()
}

fn parallelism() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4)
}

/// Runs `fut` on a runtime of its own, in a thread of its own, so that the
/// caller may itself be inside an async runtime.
fn block_on<F>(fut: F) -> Result<Written>
where
    F: std::future::Future<Output = Result<Written>> + Send,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(parallelism())
                .thread_name("scope-compact")
                .enable_all()
                .build()
                .context("cannot start the sort's runtime")?;
            rt.block_on(fut)
        })
        .join()
        .unwrap_or_else(|_| bail!("the sort's thread panicked"))
    })
}
