//! `analyze` over a store written here the way the agent writes one, with
//! a planted N+1 (each `load` calls `fetch` 20 times), a deep recursion and
//! a latency tail, twice: once with dense call ids (the call-id table the
//! scans fill) and once with ids spread ten apart (too sparse for the
//! table: the self-join fallback). Both must name the same findings with
//! the same evidence.

mod compact_support;

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow_array::{
    ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray, UInt8Array, new_null_array,
};
use arrow_array::{UInt32Array, UInt64Array};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;

use scope_query::analysis::{Kind, analyze};
use scope_query::{OpenOptions, Store};

const FUNCS: [&str; 5] = ["main", "load", "fetch", "walk", "tail"];

fn write(path: &Path, batch: &RecordBatch) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut w = ArrowWriter::try_new(File::create(path).unwrap(), batch.schema(), None).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

/// One call: id, parent, function, depth, start, duration.
#[derive(Clone, Copy)]
struct Call {
    id: u64,
    parent: Option<u64>,
    f: u32,
    depth: i32,
    start: i64,
    ns: i64,
}

/// The planted calls, ids counting up at entry (times in ns).
fn calls() -> Vec<Call> {
    let mut out = Vec::new();
    let mut next = 1u64;
    let mut t = 1_000_000i64;
    let mut call = |out: &mut Vec<Call>, parent, f, depth, start, ns| {
        let id = next;
        next += 1;
        out.push(Call {
            id,
            parent,
            f,
            depth,
            start,
            ns,
        });
        id
    };
    let main = call(&mut out, None, 0, 0, t, 0);
    // 5 × load, each calling fetch 20 times (50 µs each).
    for _ in 0..5 {
        let load = call(&mut out, Some(main), 1, 1, t, 0);
        let from = t;
        for _ in 0..20 {
            call(&mut out, Some(load), 2, 2, t, 50_000);
            t += 60_000;
        }
        out.iter_mut().find(|c| c.id == load).unwrap().ns = t - from;
    }
    // walk recursing 1,200 levels deep, 1 µs a level.
    let mut parent = main;
    let from = t;
    let mut chain = Vec::new();
    for d in 0..1200 {
        parent = call(&mut out, Some(parent), 3, 1 + d, t + d as i64, 0);
        chain.push(parent);
    }
    for (i, id) in chain.iter().enumerate() {
        out.iter_mut().find(|c| c.id == *id).unwrap().ns = (1200 - i) as i64 * 1_000;
    }
    t = from + 1_300_000;
    // tail: 295 calls of 2 µs and 5 of 5 ms.
    for i in 0..300 {
        let ns = if i % 60 == 30 { 5_000_000 } else { 2_000 };
        call(&mut out, Some(main), 4, 1, t, ns);
        t += ns + 1_000;
    }
    out[0].ns = t - out[0].start;
    out
}

/// The store of `calls` with every id multiplied by `spread`.
fn write_store(root: &Path, spread: u64) {
    let funcs = Arc::new(Schema::new(vec![
        Field::new("function_id", DataType::UInt32, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("module", DataType::Utf8, false),
        Field::new("address", DataType::UInt64, false),
        Field::new("size", DataType::UInt64, false),
        Field::new("file", DataType::Utf8, true),
        Field::new("line", DataType::UInt32, true),
    ]));
    let fcols: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from_iter_values(0..FUNCS.len() as u32)),
        Arc::new(StringArray::from_iter_values(FUNCS)),
        Arc::new(StringArray::from_iter_values(FUNCS.iter().map(|_| "app"))),
        Arc::new(UInt64Array::from_iter_values(
            (0..FUNCS.len() as u64).map(|i| 0x1000 + 0x100 * i),
        )),
        Arc::new(UInt64Array::from(vec![0x80u64; FUNCS.len()])),
        Arc::new(StringArray::from(vec![Some("app.c"); FUNCS.len()])),
        Arc::new(UInt32Array::from_iter_values(
            (0..FUNCS.len() as u32).map(|i| 10 * i + 1),
        )),
    ];
    write(
        &root.join("functions/session_id=s1/part-0.parquet"),
        &RecordBatch::try_new(funcs, fcols).unwrap(),
    );
    let calls = calls();
    // Self time: the duration less the children's.
    let mut child_ns = vec![0i64; calls.len() + 2];
    for c in &calls {
        if let Some(p) = c.parent {
            child_ns[p as usize] += c.ns;
        }
    }
    // The agent's schema (args, ret and arg_strings left null).
    let schema = compact_support::calls_schema();
    let n = calls.len();
    let cols: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from(vec![7u32; n])),
        Arc::new(UInt32Array::from(vec![7u32; n])),
        Arc::new(UInt64Array::from_iter_values(
            calls.iter().map(|c| c.id * spread),
        )),
        Arc::new(UInt64Array::from_iter(
            calls.iter().map(|c| c.parent.map(|p| p * spread)),
        )),
        Arc::new(UInt32Array::from_iter_values(calls.iter().map(|c| c.f))),
        Arc::new(Int32Array::from_iter_values(calls.iter().map(|c| c.depth))),
        Arc::new(Int64Array::from_iter_values(calls.iter().map(|c| c.start))),
        Arc::new(Int64Array::from_iter_values(calls.iter().map(|c| c.ns))),
        Arc::new(Int64Array::from_iter_values(
            calls.iter().map(|c| c.ns - child_ns[c.id as usize]),
        )),
        Arc::new(UInt8Array::from(vec![0u8; n])),
    ];
    let written = cols.len();
    let cols: Vec<ArrayRef> = cols
        .into_iter()
        .chain(
            schema.fields()[written..]
                .iter()
                .map(|f| new_null_array(f.data_type(), n)),
        )
        .collect();
    write(
        &root.join("calls/session_id=s1/part-00000.parquet"),
        &RecordBatch::try_new(schema, cols).unwrap(),
    );
}

/// A finding's kind, function, related function and evidence.
type Summary = (Kind, String, Option<String>, Vec<(String, f64)>);

/// Every finding, in rank order.
fn findings(spread: u64) -> Vec<Summary> {
    let dir = tempfile::tempdir().unwrap();
    write_store(dir.path(), spread);
    let store = Store::open(dir.path().to_str().unwrap(), &OpenOptions::default()).unwrap();
    analyze(&store)
        .unwrap()
        .findings
        .into_iter()
        .map(|f| {
            let ev = f
                .evidence
                .iter()
                .map(|e| (e.name.clone(), e.value))
                .collect();
            (f.kind, f.function, f.related, ev)
        })
        .collect()
}

#[test]
fn dense_and_sparse_call_ids_give_the_same_findings() {
    let dense = findings(1);
    let kinds: Vec<(Kind, &str)> = dense.iter().map(|f| (f.0, f.1.as_str())).collect();
    let repeated = dense
        .iter()
        .find(|f| f.0 == Kind::RepeatedWork)
        .unwrap_or_else(|| panic!("no repeated work in {kinds:?}"));
    assert_eq!(repeated.1, "fetch");
    assert_eq!(repeated.2.as_deref(), Some("load"));
    let ev = |f: &Summary, name: &str| f.3.iter().find(|e| e.0 == name).map(|e| e.1);
    assert_eq!(ev(repeated, "per_parent_median"), Some(20.0));
    assert_eq!(ev(repeated, "parent_calls"), Some(5.0));
    assert_eq!(ev(repeated, "child_calls"), Some(100.0));
    let rec = dense
        .iter()
        .find(|f| f.0 == Kind::Recursion)
        .unwrap_or_else(|| panic!("no recursion in {kinds:?}"));
    assert_eq!(rec.1, "walk");
    assert_eq!(ev(rec, "max_depth"), Some(1199.0));
    assert_eq!(ev(rec, "roots"), Some(1.0));
    let tail = dense
        .iter()
        .find(|f| f.0 == Kind::LatencyOutlier)
        .unwrap_or_else(|| panic!("no latency outlier in {kinds:?}"));
    assert_eq!(tail.1, "tail");
    assert_eq!(ev(tail, "slow_calls"), Some(5.0));

    let sparse = findings(10);
    assert_eq!(dense, sparse);
}
