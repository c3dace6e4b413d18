//! Generates a store of realistic calls in the agent's layout, or compacts
//! one, printing bytes per call and the process's peak RSS (for
//! BENCHMARKS.md).
//!
//! ```text
//! cargo run --release -p scope-query --example compact_store -- gen DIR CALLS [SEG_ROWS] [THREADS]
//! cargo run --release -p scope-query --example compact_store -- compact DIR [MEMORY_MIB]
//! ```

#[path = "../tests/compact_support/mod.rs"]
mod compact_support;

use std::path::Path;
use std::time::Instant;

use scope_query::compact::{CompactOptions, compact};

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str);
    match arg(0) {
        Some("gen") => {
            let dir = Path::new(arg(1).unwrap_or("store"));
            let calls: usize = arg(2).unwrap_or("1000000").parse()?;
            let seg: usize = arg(3).unwrap_or("250000").parse()?;
            let threads: u32 = arg(4).unwrap_or("8").parse()?;
            let mut spec = compact_support::SessionSpec::new("20261126T000000Z-4242", calls, seg);
            spec.threads = threads;
            let t = Instant::now();
            compact_support::write_session(dir, &spec);
            println!(
                "generated {calls} calls in {:.1} s",
                t.elapsed().as_secs_f64()
            );
        }
        Some("compact") => {
            let dir = Path::new(arg(1).unwrap_or("store"));
            let mut opts = CompactOptions::default();
            if let Some(m) = arg(2) {
                opts.memory_limit = m.parse::<usize>()? << 20;
            }
            let t = Instant::now();
            let report = compact(dir, &opts, &mut |l: &str| eprintln!("{l}"))?;
            let secs = t.elapsed().as_secs_f64();
            for s in &report.sessions {
                println!(
                    "{}: {} calls; files {} -> {}; bytes {} -> {} ({:.2} -> {:.2} B/call; calls alone {:.2} -> {:.2}); spilled {} B",
                    s.session_id,
                    s.calls,
                    s.files_before,
                    s.files_after,
                    s.bytes_before,
                    s.bytes_after,
                    s.bytes_per_call_before().unwrap_or(0.0),
                    s.bytes_per_call_after().unwrap_or(0.0),
                    s.calls_bytes_before as f64 / s.calls.max(1) as f64,
                    s.calls_bytes_after as f64 / s.calls.max(1) as f64,
                    s.spilled_bytes
                );
            }
            for (id, why) in &report.skipped {
                println!("{id}: skipped: {why}");
            }
            println!(
                "{secs:.1} s, peak RSS {} MiB (memory limit {} MiB)",
                peak_rss_kib() / 1024,
                opts.memory_limit >> 20
            );
        }
        Some("exp") => encoding_experiment(&args[1..])?,
        _ => anyhow::bail!(
            "usage: compact_store gen DIR CALLS [SEG_ROWS] [THREADS] | compact DIR [MEMORY_MIB]"
        ),
    }
    Ok(())
}

/// Rewrites sorted calls files with variants of the writer properties and
/// prints the bytes each takes (how the compacted encodings were chosen).
fn encoding_experiment(files: &[String]) -> anyhow::Result<()> {
    use parquet::arrow::ArrowWriter;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::basic::{Compression, Encoding, ZstdLevel};
    use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterPropertiesBuilder};
    use parquet::schema::types::ColumnPath;
    let mut batches = Vec::new();
    for f in files {
        let r = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(f)?)?.build()?;
        for b in r {
            batches.push(b?);
        }
    }
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let base = |level: i32| -> WriterPropertiesBuilder {
        let mut b = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(level).unwrap()))
            .set_max_row_group_row_count(Some(122_880))
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_data_page_row_count_limit(8192);
        for c in ["call_id", "parent_call_id", "start_ns"] {
            b = b
                .set_column_dictionary_enabled(ColumnPath::from(c), false)
                .set_column_encoding(ColumnPath::from(c), Encoding::DELTA_BINARY_PACKED);
        }
        b
    };
    let with = |mut b: WriterPropertiesBuilder, enc: Encoding| {
        for c in ["duration_ns", "self_ns"] {
            b = b
                .set_column_dictionary_enabled(ColumnPath::from(c), false)
                .set_column_encoding(ColumnPath::from(c), enc);
        }
        b
    };
    let variants: Vec<(&str, WriterProperties)> = vec![
        ("zstd3 (compact)", base(3).build()),
        (
            "zstd3 pages 20000",
            base(3).set_data_page_row_count_limit(20_000).build(),
        ),
        ("zstd9", base(9).build()),
        (
            "zstd3 durations BYTE_STREAM_SPLIT",
            with(base(3), Encoding::BYTE_STREAM_SPLIT).build(),
        ),
        (
            "zstd3 durations DELTA",
            with(base(3), Encoding::DELTA_BINARY_PACKED).build(),
        ),
        (
            "zstd3 durations PLAIN",
            with(base(3), Encoding::PLAIN).build(),
        ),
    ];
    for (name, props) in variants {
        let mut w = ArrowWriter::try_new(Vec::new(), batches[0].schema(), Some(props))?;
        for b in &batches {
            w.write(b)?;
        }
        let bytes = w.into_inner()?.len();
        println!(
            "{name}: {bytes} B, {:.3} B/call",
            bytes as f64 / rows as f64
        );
    }
    Ok(())
}
