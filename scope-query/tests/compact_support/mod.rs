//! Test support for compaction: sessions of realistic calls written the way
//! the agent writes them (its schemas, its writer properties, its layout,
//! one segment per `seg_rows` calls, in the order calls return), and DuckDB
//! (Python) as the independent reader.
//!
//! The schemas are copies of `scope-agent/src/storage/schema.rs` (this crate
//! cannot depend on the agent); the tests compare the compacted files'
//! schema with the segments', whatever it is.

#![allow(dead_code)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use arrow_array::builder::{Int64Builder, ListBuilder, StringBuilder};
use arrow_array::{
    ArrayRef, BooleanArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    UInt8Array, UInt32Array, UInt64Array,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;

pub fn calls_schema() -> SchemaRef {
    let list = |t: DataType| DataType::List(Arc::new(Field::new("item", t, true)));
    Arc::new(Schema::new(vec![
        Field::new("pid", DataType::UInt32, false),
        Field::new("tid", DataType::UInt32, false),
        Field::new("call_id", DataType::UInt64, false),
        Field::new("parent_call_id", DataType::UInt64, true),
        Field::new("function_id", DataType::UInt32, false),
        Field::new("depth", DataType::Int32, false),
        Field::new("start_ns", DataType::Int64, false),
        Field::new("duration_ns", DataType::Int64, true),
        Field::new("self_ns", DataType::Int64, true),
        Field::new("flags", DataType::UInt8, false),
        Field::new("args", list(DataType::Int64), true),
        Field::new("ret", DataType::Int64, true),
        Field::new("arg_strings", list(DataType::Utf8), true),
    ]))
}

fn losses_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("cpu", DataType::UInt32, false),
        Field::new("start_ns", DataType::Int64, false),
        Field::new("end_ns", DataType::Int64, false),
        Field::new("lost", DataType::UInt64, false),
    ]))
}

fn metrics_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("ts_ns", DataType::Int64, false),
        Field::new("events", DataType::UInt64, false),
        Field::new("call_rows", DataType::UInt64, false),
        Field::new("lost", DataType::UInt64, false),
        Field::new("events_per_s", DataType::Float64, false),
        Field::new("ring_fill_pct", DataType::Float64, true),
        Field::new("agent_cpu_pct", DataType::Float64, false),
        Field::new("files_written", DataType::UInt64, false),
        Field::new("rows_buffered", DataType::UInt64, false),
    ]))
}

fn functions_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("function_id", DataType::UInt32, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("symbol", DataType::Utf8, false),
        Field::new("module", DataType::Utf8, false),
        Field::new("build_id", DataType::Utf8, true),
        Field::new("address", DataType::UInt64, false),
        Field::new("size", DataType::UInt64, false),
        Field::new("file", DataType::Utf8, true),
        Field::new("line", DataType::UInt32, true),
    ]))
}

fn sessions_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("host", DataType::Utf8, false),
        Field::new("pid", DataType::UInt32, false),
        Field::new("command", DataType::Utf8, false),
        Field::new("start_ns", DataType::Int64, false),
        Field::new("end_ns", DataType::Int64, false),
        Field::new("version", DataType::Utf8, false),
        Field::new("calls_recorded", DataType::UInt64, false),
        Field::new("calls_exact", DataType::Boolean, false),
    ]))
}

/// The agent's writer properties (storage/mod.rs: zstd 3, delta encoding
/// for call ids and start times).
fn writer_props() -> WriterProperties {
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap()));
    for column in ["call_id", "parent_call_id", "start_ns"] {
        b = b
            .set_column_dictionary_enabled(ColumnPath::from(column), false)
            .set_column_encoding(ColumnPath::from(column), Encoding::DELTA_BINARY_PACKED);
    }
    b.build()
}

/// A small deterministic generator (xorshift64*).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One call row, as the correlator makes it.
#[derive(Clone, Debug)]
pub struct Call {
    pub tid: u32,
    pub call_id: u64,
    pub parent: Option<u64>,
    pub function_id: u32,
    pub depth: i32,
    pub start_ns: i64,
    pub duration_ns: i64,
    pub self_ns: i64,
    pub args: Option<[i64; 2]>,
    pub ret: Option<i64>,
}

struct Frame {
    call_id: u64,
    function_id: u32,
    depth: i32,
    start_ns: i64,
    child_ns: i64,
}

/// One thread of the generated program: a call tree walked depth first,
/// its calls produced in the order they return.
struct Thread {
    tid: u32,
    now: i64,
    stack: Vec<Frame>,
    rng: Rng,
}

impl Thread {
    /// Few distinct functions, by depth: 2 roots, then 3, 3, and 4 leaves.
    fn pick_function(&mut self, depth: usize) -> u32 {
        match depth {
            0 => 1 + self.rng.below(2) as u32,
            1 => 3 + self.rng.below(3) as u32,
            2 => 6 + self.rng.below(3) as u32,
            _ => 9 + self.rng.below(4) as u32,
        }
    }

    fn next_call(&mut self, next_id: &mut u64) -> Call {
        loop {
            let depth = self.stack.len();
            let open = depth == 0 || (depth < 9 && self.rng.unit() < 0.62 - 0.06 * depth as f64);
            // Work between two events: tens of ns to a few µs.
            self.now += 20 + (self.rng.below(40) * self.rng.below(60)) as i64;
            if open {
                let function_id = self.pick_function(depth);
                *next_id += 1;
                self.stack.push(Frame {
                    call_id: *next_id,
                    function_id,
                    depth: depth as i32,
                    start_ns: self.now,
                    child_ns: 0,
                });
                continue;
            }
            let f = self.stack.pop().unwrap();
            let duration_ns = self.now - f.start_ns;
            if let Some(parent) = self.stack.last_mut() {
                parent.child_ns += duration_ns;
            }
            let with_args = f.function_id == 7;
            return Call {
                tid: self.tid,
                call_id: f.call_id,
                parent: self.stack.last().map(|p| p.call_id),
                function_id: f.function_id,
                depth: f.depth,
                start_ns: f.start_ns,
                duration_ns,
                self_ns: duration_ns - f.child_ns,
                args: with_args.then(|| {
                    [
                        self.rng.below(4096) as i64,
                        0x7f00_0000_0000 + (self.rng.below(1 << 20) as i64) * 16,
                    ]
                }),
                ret: with_args.then(|| self.rng.below(2) as i64),
            };
        }
    }
}

/// Calls of `threads` threads merged in the order they return, like the
/// agent's ring buffer delivers them.
pub struct CallStream {
    threads: Vec<Thread>,
    heap: BinaryHeap<Reverse<(i64, usize)>>,
    peeked: Vec<Option<Call>>,
    next_id: u64,
}

impl CallStream {
    pub fn new(pid: u32, threads: u32, start_ns: i64, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let mut s = CallStream {
            threads: (0..threads)
                .map(|i| Thread {
                    tid: pid + i,
                    now: start_ns + rng.below(1_000_000) as i64,
                    stack: Vec::new(),
                    rng: Rng::new(seed.wrapping_mul(31).wrapping_add(u64::from(i) + 7)),
                })
                .collect(),
            heap: BinaryHeap::new(),
            peeked: Vec::new(),
            next_id: 0,
        };
        for i in 0..s.threads.len() {
            let call = s.threads[i].next_call(&mut s.next_id);
            s.heap.push(Reverse((call.start_ns + call.duration_ns, i)));
            s.peeked.push(Some(call));
        }
        s
    }
}

impl Iterator for CallStream {
    type Item = Call;
    fn next(&mut self) -> Option<Call> {
        let Reverse((_, i)) = self.heap.pop()?;
        let call = self.peeked[i].take()?;
        let next = self.threads[i].next_call(&mut self.next_id);
        self.heap
            .push(Reverse((next.start_ns + next.duration_ns, i)));
        self.peeked[i] = Some(next);
        Some(call)
    }
}

pub fn calls_batch(pid: u32, rows: &[Call]) -> RecordBatch {
    let mut args = ListBuilder::new(Int64Builder::new());
    for r in rows {
        match r.args {
            Some(a) => {
                args.values().append_slice(&a);
                args.append(true);
            }
            None => args.append_null(),
        }
    }
    let mut strings = ListBuilder::new(StringBuilder::new());
    for _ in rows {
        strings.append_null();
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|_| pid))),
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|c| c.tid))),
        Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|c| c.call_id),
        )),
        Arc::new(UInt64Array::from_iter(rows.iter().map(|c| c.parent))),
        Arc::new(UInt32Array::from_iter_values(
            rows.iter().map(|c| c.function_id),
        )),
        Arc::new(Int32Array::from_iter_values(rows.iter().map(|c| c.depth))),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|c| c.start_ns),
        )),
        Arc::new(Int64Array::from_iter(
            rows.iter().map(|c| Some(c.duration_ns)),
        )),
        Arc::new(Int64Array::from_iter(rows.iter().map(|c| Some(c.self_ns)))),
        Arc::new(UInt8Array::from_iter_values(rows.iter().map(|_| 0u8))),
        Arc::new(args.finish()),
        Arc::new(Int64Array::from_iter(rows.iter().map(|c| c.ret))),
        Arc::new(strings.finish()),
    ];
    RecordBatch::try_new(calls_schema(), columns).unwrap()
}

/// What to generate for one session.
#[derive(Clone, Debug)]
pub struct SessionSpec {
    pub id: String,
    pub calls: usize,
    /// Calls per segment file (the agent's `--segment-rows`, or what its
    /// 10 s age limit cut).
    pub seg_rows: usize,
    pub threads: u32,
    /// Whether the `sessions` row is written (a finished recording).
    pub finished: bool,
    /// Unix epoch ns of the first call.
    pub start_ns: i64,
    pub seed: u64,
}

impl SessionSpec {
    pub fn new(id: &str, calls: usize, seg_rows: usize) -> Self {
        SessionSpec {
            id: id.to_owned(),
            calls,
            seg_rows,
            threads: 4,
            finished: true,
            start_ns: now_ns() - 60_000_000_000,
            seed: 42,
        }
    }
}

pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

pub fn write_parquet(dir: &Path, name: &str, batch: &RecordBatch) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    let path = dir.join(name);
    let mut w = ArrowWriter::try_new(
        File::create(&path).unwrap(),
        batch.schema(),
        Some(writer_props()),
    )
    .unwrap();
    if batch.num_rows() > 0 {
        w.write(batch).unwrap();
    }
    w.close().unwrap();
    path
}

/// Writes a session into `root` in the agent's layout; returns its end
/// (Unix epoch ns).
pub fn write_session(root: &Path, spec: &SessionSpec) -> i64 {
    let part = format!("session_id={}", spec.id);
    let pid = 4000 + (spec.seed % 1000) as u32 * 7;
    let calls_dir = root.join("calls").join(&part);
    let mut stream = CallStream::new(pid, spec.threads, spec.start_ns, spec.seed);
    let mut left = spec.calls;
    let mut seq = 0;
    let mut end = spec.start_ns;
    let mut metrics_ts = Vec::new();
    loop {
        let n = left.min(spec.seg_rows.max(1));
        let rows: Vec<Call> = stream.by_ref().take(n).collect();
        if let Some(last) = rows.last() {
            end = end.max(last.start_ns + last.duration_ns);
        }
        write_parquet(
            &calls_dir,
            &format!("part-{seq:05}.parquet"),
            &calls_batch(pid, &rows),
        );
        metrics_ts.push(end);
        seq += 1;
        left -= n;
        if left == 0 {
            break;
        }
    }
    write_parquet(
        &root.join("losses").join(&part),
        "part-00000.parquet",
        &RecordBatch::new_empty(losses_schema()),
    );
    // agent_metrics: one segment per calls segment, a row each.
    for (i, ts) in metrics_ts.iter().enumerate() {
        let b = RecordBatch::try_new(
            metrics_schema(),
            vec![
                Arc::new(Int64Array::from(vec![*ts])),
                Arc::new(UInt64Array::from(vec![i as u64 * 1000])),
                Arc::new(UInt64Array::from(vec![i as u64 * 500])),
                Arc::new(UInt64Array::from(vec![0u64])),
                Arc::new(Float64Array::from(vec![1000.0])),
                Arc::new(Float64Array::from(vec![Some(1.5)])),
                Arc::new(Float64Array::from(vec![3.0])),
                Arc::new(UInt64Array::from(vec![i as u64])),
                Arc::new(UInt64Array::from(vec![0u64])),
            ],
        )
        .unwrap();
        write_parquet(
            &root.join("agent_metrics").join(&part),
            &format!("part-{i:05}.parquet"),
            &b,
        );
    }
    let ids: Vec<u32> = (1..=12).collect();
    let names: Vec<String> = ids.iter().map(|i| format!("fn_{i}")).collect();
    let functions = RecordBatch::try_new(
        functions_schema(),
        vec![
            Arc::new(UInt32Array::from(ids.clone())),
            Arc::new(StringArray::from(names.clone())),
            Arc::new(StringArray::from(names)),
            Arc::new(StringArray::from(vec!["/usr/bin/demo"; 12])),
            Arc::new(StringArray::from(vec![None::<&str>; 12])),
            Arc::new(UInt64Array::from_iter_values(
                ids.iter().map(|i| u64::from(*i) * 64),
            )),
            Arc::new(UInt64Array::from(vec![64u64; 12])),
            Arc::new(StringArray::from(vec![Some("demo.c"); 12])),
            Arc::new(UInt32Array::from_iter_values(ids.iter().map(|i| i * 10))),
        ],
    )
    .unwrap();
    let fdir = root.join("functions").join(&part);
    write_parquet(&fdir, "part-0.parquet", &functions.slice(0, 10));
    write_parquet(&fdir, "part-1.parquet", &functions.slice(10, 2));
    if spec.finished {
        let s = RecordBatch::try_new(
            sessions_schema(),
            vec![
                Arc::new(StringArray::from(vec!["host"])),
                Arc::new(UInt32Array::from(vec![pid])),
                Arc::new(StringArray::from(vec!["demo"])),
                Arc::new(Int64Array::from(vec![spec.start_ns])),
                Arc::new(Int64Array::from(vec![end])),
                Arc::new(StringArray::from(vec!["0.1.0"])),
                Arc::new(UInt64Array::from(vec![spec.calls as u64])),
                Arc::new(BooleanArray::from(vec![true])),
            ],
        )
        .unwrap();
        write_parquet(&root.join("sessions").join(&part), "part-0.parquet", &s);
    }
    end
}

/// Runs a Python script with duckdb imported; returns its stdout. Panics
/// with what to do when Python's duckdb is missing.
pub fn duckdb(script: &str) -> String {
    let probe = Command::new("python3")
        .args(["-c", "import duckdb"])
        .output();
    match probe {
        Ok(o) if o.status.success() => {}
        _ => panic!(
            "python3 with the duckdb module is needed as the independent reader: run `cargo xtask test` (it installs it)"
        ),
    }
    let out = Command::new("python3")
        .args(["-c", &format!("import duckdb\n{script}")])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "duckdb script failed:\n{script}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Rows per (table, session) over every table, as DuckDB reads the store
/// (`<root>/<table>/**/*.parquet` with Hive partitioning), sorted.
pub fn duckdb_counts(root: &Path) -> Vec<(String, String, u64)> {
    let script = format!(
        r#"
import os
root = {root:?}
for t in sorted(os.listdir(root)):
    if t.startswith('.') or not os.path.isdir(os.path.join(root, t)):
        continue
    q = f"select session_id, count(*) from read_parquet('{{root}}/{{t}}/**/*.parquet', hive_partitioning=true) group by 1 order by 1"
    try:
        rows = duckdb.sql(q).fetchall()
    except duckdb.IOException:
        rows = []
    for s, n in rows:
        print(t, s, n)
"#,
        root = root.to_str().unwrap()
    );
    duckdb(&script)
        .lines()
        .map(|l| {
            let mut it = l.split(' ');
            (
                it.next().unwrap().to_owned(),
                it.next().unwrap().to_owned(),
                it.next().unwrap().parse().unwrap(),
            )
        })
        .collect()
}

/// A content checksum of `calls` per session by DuckDB: rows and a sum of
/// hashes of every column, so a lost, doubled or altered row shows.
pub fn duckdb_calls_digest(root: &Path) -> String {
    duckdb(&format!(
        "print(duckdb.sql(\"select session_id, count(*), sum(hash(pid, tid, call_id, parent_call_id, function_id, depth, start_ns, duration_ns, self_ns, flags, args, ret, arg_strings)::hugeint) from read_parquet('{}/calls/**/*.parquet', hive_partitioning=true) group by 1 order by 1\").fetchall())",
        root.to_str().unwrap()
    ))
}

/// Copies a directory tree.
pub fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &dest);
        } else {
            fs::copy(entry.path(), dest).unwrap();
        }
    }
}
