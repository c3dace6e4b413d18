//! Exports stream: the peak memory of an export does not grow with the
//! number of calls. Each format exports a generated session of N calls
//! (4 threads of main → 250k-call runs → leaves, batches of 65,536 rows
//! made on the fly, so the input holds one batch at a time) and then 10 N,
//! and the process's peak resident set (VmHWM, reset between runs through
//! /proc/self/clear_refs) must grow by less than 16 MiB. N is 200,000; set
//! SCOPE_EXPORT_MEMORY_CALLS to run the large size with another count (the
//! figures for 10,000,000 are in the report of the change). The figures are
//! printed (`cargo test -- --nocapture`).

use std::sync::Arc;

use anyhow::Result;
use arrow_array::{
    ArrayRef, Int32Array, Int64Array, RecordBatch, UInt8Array, UInt32Array, UInt64Array,
};
use rustc_hash::FxHashMap;
use scope_query::export::{ExportMeta, Format, FunctionInfo, export};

const THREADS: u64 = 4;
const LEAVES: u64 = 9;
const BATCH_ROWS: u64 = 65_536;

/// Row `i` of `n` calls: (tid, function_id, depth, start_ns, duration_ns).
/// Per thread: one `main`, then runs each with `LEAVES` leaves (function
/// 3 + leaf index % 5, so 5 distinct leaf paths); every 1000th leaf has an
/// unknown duration.
fn row(i: u64, n: u64) -> (u32, u32, i32, i64, Option<i64>) {
    let per_thread = n.div_ceil(THREADS);
    let tid = (i / per_thread) as u32 + 1000;
    let k = i % per_thread;
    if k == 0 {
        return (tid, 1, 0, 0, Some(per_thread as i64 * 100 + 10));
    }
    let run = (k - 1) / (LEAVES + 1);
    let j = (k - 1) % (LEAVES + 1);
    let run_start = 10 + run as i64 * (LEAVES as i64 + 1) * 100;
    if j == 0 {
        (tid, 2, 1, run_start, Some((LEAVES as i64 + 1) * 100 - 1))
    } else {
        let dur = if k.is_multiple_of(1000) {
            None
        } else {
            Some(50)
        };
        (tid, 3 + (j % 5) as u32, 2, run_start + j as i64 * 100, dur)
    }
}

/// `n` generated calls in batches, made as they are read.
fn generated(n: u64) -> impl Iterator<Item = Result<RecordBatch>> {
    (0..n.div_ceil(BATCH_ROWS)).map(move |b| {
        let rows: Vec<_> = (b * BATCH_ROWS..((b + 1) * BATCH_ROWS).min(n))
            .map(|i| row(i, n))
            .collect();
        let len = rows.len();
        let columns: Vec<(&str, ArrayRef)> = vec![
            ("pid", Arc::new(UInt32Array::from(vec![1000u32; len]))),
            (
                "tid",
                Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.0))),
            ),
            (
                "call_id",
                Arc::new(UInt64Array::from_iter_values(0..len as u64)),
            ),
            (
                "function_id",
                Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.1))),
            ),
            (
                "depth",
                Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.2))),
            ),
            (
                "start_ns",
                Arc::new(Int64Array::from_iter_values(
                    rows.iter().map(|r| 1_000_000 + r.3),
                )),
            ),
            (
                "duration_ns",
                Arc::new(rows.iter().map(|r| r.4).collect::<Int64Array>()),
            ),
            ("flags", Arc::new(UInt8Array::from(vec![0u8; len]))),
        ];
        Ok(RecordBatch::try_from_iter(columns)?)
    })
}

/// VmHWM of this process, KiB.
fn peak_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status")
}

/// Exports `n` calls to a file; returns the peak KiB during the export and
/// the bytes written.
fn measure(format: Format, n: u64, meta: &ExportMeta, dir: &std::path::Path) -> (u64, u64) {
    // "5" resets the peak resident set to the current one.
    std::fs::write("/proc/self/clear_refs", "5").expect("reset VmHWM");
    let mut file = std::fs::File::create(dir.join(format.name())).unwrap();
    let stats = export(format, &mut generated(n), meta, &mut file).unwrap();
    assert_eq!(stats.calls, n);
    assert_eq!(stats.threads, THREADS);
    (peak_kib(), stats.bytes)
}

#[test]
fn export_memory_stays_flat_as_the_calls_grow() {
    let large: u64 = std::env::var("SCOPE_EXPORT_MEMORY_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000);
    let small = large / 10;
    let dir = tempfile::tempdir().unwrap();
    let mut functions = FxHashMap::default();
    for (id, name) in [
        (1, "main"),
        (2, "run"),
        (3, "leaf0"),
        (4, "leaf1"),
        (5, "leaf2"),
        (6, "leaf3"),
        (7, "leaf4"),
    ] {
        functions.insert(
            id,
            FunctionInfo {
                name: name.to_owned(),
                ..FunctionInfo::default()
            },
        );
    }
    let meta = ExportMeta {
        session_id: "memory",
        pid: 1000,
        command: "generated",
        start_ns: 1_000_000,
        end_ns: 1_000_000 + large as i64 * 100,
        functions: &functions,
        thread_names: None,
    };
    let mut failures = Vec::new();
    for format in Format::ALL {
        let (small_kib, _) = measure(format, small, &meta, dir.path());
        let (large_kib, bytes) = measure(format, large, &meta, dir.path());
        println!(
            "export {format:<10} {small:>10} calls: peak {:>6.1} MiB; {large:>10} calls: peak {:>6.1} MiB, {:>8.1} MiB written",
            small_kib as f64 / 1024.0,
            large_kib as f64 / 1024.0,
            bytes as f64 / (1024.0 * 1024.0)
        );
        if large_kib > small_kib + 16 * 1024 {
            failures.push(format!(
                "{format}: {small_kib} KiB for {small} calls, {large_kib} KiB for {large}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "the peak memory grew with the calls: {failures:?}"
    );
}
