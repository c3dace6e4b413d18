//! Writing a query's result as a table, CSV, JSON or Parquet, batch by
//! batch: CSV, JSON and Parquet stream (memory flat in the result's size);
//! the table format shows the first rows and counts the rest.

use std::io::Write;
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

/// How `query` prints its result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    /// A boxed text table (the first rows; the rest are counted).
    Table,
    /// CSV with a header line; lists as `[1, 2]`.
    Csv,
    /// A JSON array of objects, one per row.
    Json,
    /// Newline-delimited JSON, one object per line.
    JsonLines,
    /// A Parquet file (to `--output`, or to standard output when it is not
    /// a terminal).
    Parquet,
}

impl std::str::FromStr for OutputFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "table" => OutputFormat::Table,
            "csv" => OutputFormat::Csv,
            "json" => OutputFormat::Json,
            "jsonl" | "ndjson" => OutputFormat::JsonLines,
            "parquet" => OutputFormat::Parquet,
            other => {
                return Err(format!(
                    "unknown format {other:?}: table, csv, json, jsonl or parquet"
                ));
            }
        })
    }
}

/// What was written.
#[derive(Clone, Copy, Debug, Default)]
pub struct Written {
    /// Rows in the result.
    pub rows: u64,
    /// Rows left out of a table (shown only as a count).
    pub not_shown: u64,
}

/// Writes `batches` (of `schema`) to `out` in `format`. `max_table_rows`
/// bounds the rows a table shows.
pub fn write_result(
    schema: SchemaRef,
    batches: &mut dyn Iterator<Item = Result<RecordBatch>>,
    format: OutputFormat,
    out: &mut (dyn Write + Send),
    max_table_rows: usize,
) -> Result<Written> {
    let mut written = Written::default();
    match format {
        OutputFormat::Table => {
            let mut shown: Vec<RecordBatch> = Vec::new();
            let mut kept = 0usize;
            for batch in batches {
                let batch = batch?;
                written.rows += batch.num_rows() as u64;
                if kept < max_table_rows {
                    let take = (max_table_rows - kept).min(batch.num_rows());
                    shown.push(batch.slice(0, take));
                    kept += take;
                }
            }
            written.not_shown = written.rows - kept as u64;
            if shown.is_empty() {
                shown.push(RecordBatch::new_empty(schema.clone()));
            }
            let table = datafusion::arrow::util::pretty::pretty_format_batches(&shown)?;
            writeln!(out, "{table}")?;
            let rows = written.rows;
            if written.not_shown > 0 {
                writeln!(
                    out,
                    "{rows} rows ({} not shown; --format csv, json or parquet writes all)",
                    written.not_shown
                )?;
            } else {
                writeln!(out, "{rows} row{}", if rows == 1 { "" } else { "s" })?;
            }
        }
        OutputFormat::Csv => {
            let mut w = datafusion::arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut *out);
            let mut any = false;
            for batch in batches {
                let batch = flatten_for_text(&batch?)?;
                written.rows += batch.num_rows() as u64;
                w.write(&batch)?;
                any = true;
            }
            if !any {
                // The header alone.
                w.write(&RecordBatch::new_empty(text_schema(&schema)))?;
            }
        }
        OutputFormat::Json => {
            let mut w = datafusion::arrow::json::ArrayWriter::new(&mut *out);
            for batch in batches {
                let batch = batch?;
                written.rows += batch.num_rows() as u64;
                w.write(&batch)?;
            }
            w.finish()?;
            if written.rows == 0 {
                write!(out, "[]")?;
            }
            writeln!(out)?;
        }
        OutputFormat::JsonLines => {
            let mut w = datafusion::arrow::json::LineDelimitedWriter::new(&mut *out);
            for batch in batches {
                let batch = batch?;
                written.rows += batch.num_rows() as u64;
                w.write(&batch)?;
            }
            w.finish()?;
        }
        OutputFormat::Parquet => {
            let props = parquet::file::properties::WriterProperties::builder()
                .set_compression(parquet::basic::Compression::ZSTD(
                    parquet::basic::ZstdLevel::try_new(3)?,
                ))
                .build();
            let mut w = parquet::arrow::ArrowWriter::try_new(&mut *out, schema, Some(props))?;
            for batch in batches {
                let batch = batch?;
                written.rows += batch.num_rows() as u64;
                w.write(&batch)?;
            }
            w.close()?;
        }
    }
    out.flush().context("cannot write the result")?;
    Ok(written)
}

/// Whether a column type has no CSV form and is written as its display text.
fn needs_text(t: &DataType) -> bool {
    matches!(
        t,
        DataType::List(_)
            | DataType::LargeList(_)
            | DataType::FixedSizeList(_, _)
            | DataType::Struct(_)
            | DataType::Map(_, _)
            | DataType::Dictionary(_, _)
    )
}

fn text_schema(schema: &Schema) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| {
                if needs_text(f.data_type()) {
                    Arc::new(Field::new(f.name(), DataType::Utf8, true))
                } else {
                    f.clone()
                }
            })
            .collect::<Vec<_>>(),
    ))
}

/// `batch` with list and struct columns turned into their display text
/// (`[1, 2]`), which CSV can hold.
fn flatten_for_text(batch: &RecordBatch) -> Result<RecordBatch> {
    if !batch
        .schema()
        .fields()
        .iter()
        .any(|f| needs_text(f.data_type()))
    {
        return Ok(batch.clone());
    }
    let opts = FormatOptions::default().with_null("");
    let mut cols: Vec<ArrayRef> = Vec::with_capacity(batch.num_columns());
    for (col, field) in batch.columns().iter().zip(batch.schema().fields()) {
        if !needs_text(field.data_type()) {
            cols.push(col.clone());
            continue;
        }
        let fmt = ArrayFormatter::try_new(col.as_ref(), &opts)?;
        let mut b = arrow_array::builder::StringBuilder::new();
        for i in 0..col.len() {
            if col.is_null(i) {
                b.append_null();
            } else {
                b.append_value(fmt.value(i).to_string());
            }
        }
        cols.push(Arc::new(b.finish()));
    }
    Ok(RecordBatch::try_new(text_schema(&batch.schema()), cols)?)
}

/// Refuses to write Parquet bytes to a terminal.
pub fn check_binary_target(format: OutputFormat, to_terminal: bool) -> Result<()> {
    if format == OutputFormat::Parquet && to_terminal {
        bail!("--format parquet writes binary: give --output FILE or redirect standard output");
    }
    Ok(())
}
