//! Every export format of the demo's recording (tests/fixtures/demo-store,
//! a copy of what `cargo xtask demo` wrote: 47,708 calls of one thread),
//! read with the `parquet` crate and sorted here by (tid, start_ns, depth),
//! checked by the independent readers against DuckDB SQL over the same
//! Parquet files (paths from parent_call_id, self time from self_ns).

mod export_support;

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::{Array, Int64Array, ListArray, RecordBatch, StringArray, UInt32Array};
use datafusion::arrow::compute::{
    SortColumn, concat_batches, lexsort_to_indices, take_record_batch,
};
use export_support::*;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rustc_hash::FxHashMap;
use scope_query::export::{ExportMeta, FunctionInfo};

fn store() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/demo-store")
}

/// All rows of `table`'s Parquet files, one batch.
fn read(table: &str) -> RecordBatch {
    let mut batches = Vec::new();
    for session in std::fs::read_dir(store().join(table)).unwrap() {
        for file in std::fs::read_dir(session.unwrap().path()).unwrap() {
            let file = File::open(file.unwrap().path()).unwrap();
            let reader = ParquetRecordBatchReaderBuilder::try_new(file)
                .unwrap()
                .build()
                .unwrap();
            batches.extend(reader.map(Result::unwrap));
        }
    }
    concat_batches(&batches[0].schema(), &batches).unwrap()
}

fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> &'a T {
    batch
        .column_by_name(name)
        .unwrap()
        .as_any()
        .downcast_ref::<T>()
        .unwrap()
}

fn functions() -> FxHashMap<u32, FunctionInfo> {
    let b = read("functions");
    let ids = column::<UInt32Array>(&b, "function_id");
    let names = column::<StringArray>(&b, "name");
    let modules = column::<StringArray>(&b, "module");
    let files = column::<StringArray>(&b, "file");
    let lines = column::<UInt32Array>(&b, "line");
    let params = column::<ListArray>(&b, "param_names");
    (0..b.num_rows())
        .map(|i| {
            let p = params.value(i);
            let p = p.as_any().downcast_ref::<StringArray>().unwrap();
            let info = FunctionInfo {
                name: names.value(i).to_owned(),
                module: modules.value(i).to_owned(),
                file: files.is_valid(i).then(|| files.value(i).to_owned()),
                line: lines.is_valid(i).then(|| lines.value(i)),
                param_names: p.iter().map(|s| s.unwrap_or_default().to_owned()).collect(),
            };
            (ids.value(i), info)
        })
        .collect()
}

/// The calls sorted by (tid, start_ns, depth), in batches of 4096 rows.
fn sorted_calls() -> Vec<RecordBatch> {
    let calls = read("calls");
    let keys: Vec<SortColumn> = ["tid", "start_ns", "depth"]
        .iter()
        .map(|c| SortColumn {
            values: calls.column_by_name(c).unwrap().clone(),
            options: None,
        })
        .collect();
    let sorted = take_record_batch(&calls, &lexsort_to_indices(&keys, None).unwrap()).unwrap();
    (0..sorted.num_rows())
        .step_by(4096)
        .map(|o| sorted.slice(o, 4096.min(sorted.num_rows() - o)))
        .collect()
}

#[test]
fn every_format_of_the_demo_agrees_with_duckdb() {
    let dir = tempfile::tempdir().unwrap();
    require("python3", "Debian's python3");
    let expect = check(&["expect-duckdb", store().to_str().unwrap()]);
    let expect_json: serde_json::Value = serde_json::from_str(&expect).unwrap();
    assert_eq!(expect_json["calls"], 47_708);
    let expect = write_expectation(dir.path(), &expect_json);

    let sessions = read("sessions");
    let command = column::<StringArray>(&sessions, "command")
        .value(0)
        .to_owned();
    let functions = functions();
    let meta = ExportMeta {
        session_id: "20261126T164522Z-20034",
        pid: column::<UInt32Array>(&sessions, "pid").value(0),
        command: &command,
        start_ns: column::<Int64Array>(&sessions, "start_ns").value(0),
        end_ns: column::<Int64Array>(&sessions, "end_ns").value(0),
        functions: &functions,
        thread_names: None,
    };
    let batches = sorted_calls();
    let stats = check_all_formats(dir.path(), &batches, &meta, &expect);
    for (format, s) in stats {
        assert_eq!(
            (s.calls, s.threads, s.open_calls),
            (47_708, 1, 0),
            "{format}"
        );
    }
}
