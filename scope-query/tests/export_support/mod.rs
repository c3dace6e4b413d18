//! Shared by the export_* tests: synthetic calls with a known call tree,
//! the expectations computed from that tree (not from the exporter's
//! stack), and the independent readers of `export_check.py`.

#![allow(dead_code, reason = "each test file uses part of it")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use arrow_array::builder::{Int64Builder, ListBuilder, StringBuilder};
use arrow_array::{
    ArrayRef, Int32Array, Int64Array, RecordBatch, UInt8Array, UInt32Array, UInt64Array,
};
use rustc_hash::FxHashMap;
use scope_query::export::{ExportMeta, ExportStats, Format, FunctionInfo, export};

/// One call of a synthetic tree: interval given, children inside it.
#[derive(Clone, Debug, Default)]
pub struct Node {
    pub function_id: u32,
    pub start_ns: i64,
    /// None: unknown (open until the session end or the parent's end).
    pub duration_ns: Option<i64>,
    pub flags: u8,
    pub args: Option<Vec<Option<i64>>>,
    pub ret: Option<i64>,
    pub arg_strings: Option<Vec<Option<String>>>,
    pub children: Vec<Node>,
}

/// A call at `start_ns` lasting `duration_ns` with `children`.
pub fn call(function_id: u32, start_ns: i64, duration_ns: i64, children: Vec<Node>) -> Node {
    Node {
        function_id,
        start_ns,
        duration_ns: Some(duration_ns),
        children,
        ..Node::default()
    }
}

/// A thread's calls: (pid, tid, root calls in start order).
pub type Thread = (u32, u32, Vec<Node>);

/// One row of `calls`, flattened from a tree.
#[derive(Clone, Debug)]
pub struct Row {
    pub pid: u32,
    pub tid: u32,
    pub call_id: u64,
    pub parent_call_id: Option<u64>,
    pub node: Node,
    pub depth: i32,
}

/// The rows of `threads`, in (tid, start_ns, depth) order (a tree's
/// preorder, as each child starts within its parent after its elder
/// siblings).
pub fn rows(threads: &[Thread]) -> Vec<Row> {
    fn visit(
        pid: u32,
        tid: u32,
        n: &Node,
        parent: Option<u64>,
        depth: i32,
        next: &mut u64,
        out: &mut Vec<Row>,
    ) {
        *next += 1;
        let id = *next;
        out.push(Row {
            pid,
            tid,
            call_id: id,
            parent_call_id: parent,
            node: Node {
                children: Vec::new(),
                ..n.clone()
            },
            depth,
        });
        for c in &n.children {
            visit(pid, tid, c, Some(id), depth + 1, next, out);
        }
    }
    let mut out = Vec::new();
    let mut next = 0;
    let mut sorted: Vec<&Thread> = threads.iter().collect();
    sorted.sort_by_key(|t| t.1);
    for (pid, tid, roots) in sorted {
        for r in roots {
            visit(*pid, *tid, r, None, 0, &mut next, &mut out);
        }
    }
    out
}

/// `rows` as batches of at most `batch_rows` rows with the `calls` columns;
/// `with_args` adds args, ret and arg_strings (else they are missing).
pub fn batches(rows: &[Row], batch_rows: usize, with_args: bool) -> Vec<RecordBatch> {
    rows.chunks(batch_rows.max(1))
        .map(|chunk| {
            let mut columns: Vec<(&str, ArrayRef)> = vec![
                (
                    "pid",
                    Arc::new(UInt32Array::from_iter_values(chunk.iter().map(|r| r.pid))),
                ),
                (
                    "tid",
                    Arc::new(UInt32Array::from_iter_values(chunk.iter().map(|r| r.tid))),
                ),
                (
                    "call_id",
                    Arc::new(UInt64Array::from_iter_values(
                        chunk.iter().map(|r| r.call_id),
                    )),
                ),
                (
                    "parent_call_id",
                    Arc::new(
                        chunk
                            .iter()
                            .map(|r| r.parent_call_id)
                            .collect::<UInt64Array>(),
                    ),
                ),
                (
                    "function_id",
                    Arc::new(UInt32Array::from_iter_values(
                        chunk.iter().map(|r| r.node.function_id),
                    )),
                ),
                (
                    "depth",
                    Arc::new(Int32Array::from_iter_values(chunk.iter().map(|r| r.depth))),
                ),
                (
                    "start_ns",
                    Arc::new(Int64Array::from_iter_values(
                        chunk.iter().map(|r| r.node.start_ns),
                    )),
                ),
                (
                    "duration_ns",
                    Arc::new(
                        chunk
                            .iter()
                            .map(|r| r.node.duration_ns)
                            .collect::<Int64Array>(),
                    ),
                ),
                (
                    "self_ns",
                    Arc::new(chunk.iter().map(|_| None::<i64>).collect::<Int64Array>()),
                ),
                (
                    "flags",
                    Arc::new(UInt8Array::from_iter_values(
                        chunk.iter().map(|r| r.node.flags),
                    )),
                ),
            ];
            if with_args {
                let mut args = ListBuilder::new(Int64Builder::new());
                let mut strs = ListBuilder::new(StringBuilder::new());
                for r in chunk {
                    match &r.node.args {
                        Some(a) => {
                            for v in a {
                                args.values().append_option(*v);
                            }
                            args.append(true);
                        }
                        None => args.append(false),
                    }
                    match &r.node.arg_strings {
                        Some(a) => {
                            for v in a {
                                strs.values().append_option(v.as_deref());
                            }
                            strs.append(true);
                        }
                        None => strs.append(false),
                    }
                }
                columns.push(("args", Arc::new(args.finish())));
                columns.push((
                    "ret",
                    Arc::new(chunk.iter().map(|r| r.node.ret).collect::<Int64Array>()),
                ));
                columns.push(("arg_strings", Arc::new(strs.finish())));
            }
            RecordBatch::try_from_iter(columns).expect("a calls batch")
        })
        .collect()
}

/// What an export of `threads` must show, from the trees: calls per
/// function name, self time per path (an unknown duration ends at
/// `end_ns` or the parent's end), threads. The JSON `export_check.py` reads.
pub fn expectation(
    threads: &[Thread],
    names: &dyn Fn(u32) -> String,
    end_ns: i64,
) -> serde_json::Value {
    fn visit(
        n: &Node,
        parent_end: i64,
        prefix: &str,
        names: &dyn Fn(u32) -> String,
        counts: &mut BTreeMap<String, u64>,
        paths: &mut BTreeMap<String, i64>,
    ) -> i64 {
        let name = names(n.function_id);
        *counts.entry(name.clone()).or_default() += 1;
        let path = if prefix.is_empty() {
            name
        } else {
            format!("{prefix};{name}")
        };
        let end = n
            .duration_ns
            .map_or(parent_end, |d| n.start_ns + d)
            .min(parent_end);
        let mut children = 0;
        for c in &n.children {
            children += visit(c, end, &path, names, counts, paths);
        }
        *paths.entry(path).or_default() += end - n.start_ns - children;
        end - n.start_ns
    }
    let mut counts = BTreeMap::new();
    let mut paths = BTreeMap::new();
    let mut calls = 0;
    for (_, _, roots) in threads {
        for r in roots {
            visit(r, end_ns, "", names, &mut counts, &mut paths);
        }
    }
    for n in counts.values() {
        calls += n;
    }
    serde_json::json!({
        "calls": calls,
        "threads": threads.len(),
        "counts": counts,
        "self_by_path": paths,
    })
}

/// The session the synthetic exports describe.
pub fn meta<'a>(
    functions: &'a FxHashMap<u32, FunctionInfo>,
    start_ns: i64,
    end_ns: i64,
) -> ExportMeta<'a> {
    ExportMeta {
        session_id: "20260101T000000Z-100",
        pid: 100,
        command: "./synthetic --flag",
        start_ns,
        end_ns,
        functions,
        thread_names: None,
    }
}

/// Exports `batches` in `format` into a file under `dir`; returns its path.
pub fn export_to(
    dir: &Path,
    format: Format,
    batches: &[RecordBatch],
    meta: &ExportMeta,
) -> (PathBuf, ExportStats) {
    let path = dir.join(format!("export.{}", format.extension()));
    let mut file = std::fs::File::create(&path).expect("create the export file");
    let mut it = batches.iter().cloned().map(Ok);
    let stats = export(format, &mut it, meta, &mut file)
        .unwrap_or_else(|e| panic!("export --format {format}: {e:#}"));
    assert_eq!(
        stats.bytes,
        std::fs::metadata(&path).unwrap().len(),
        "{format}: bytes written"
    );
    (path, stats)
}

/// Fails with the way to install `program` unless it is on PATH.
pub fn require(program: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{program} is missing ({package}): run `cargo xtask test`, which installs the tests' tools"
    );
}

/// `python3 tests/export_check.py ARGS`; panics with its message on failure.
pub fn check(args: &[&str]) -> String {
    require("python3", "Debian's python3");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/export_check.py");
    let out = Command::new("python3")
        .arg(&script)
        .args(args)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "export_check.py {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes `value` as JSON to `dir/expect.json`.
pub fn write_expectation(dir: &Path, value: &serde_json::Value) -> PathBuf {
    let path = dir.join("expect.json");
    std::fs::write(&path, serde_json::to_vec(value).unwrap()).unwrap();
    path
}

/// speedscope's published JSON schema, from the npm package `speedscope`
/// (installed globally by `cargo xtask test`).
pub fn speedscope_schema() -> PathBuf {
    require("npm", "Debian's npm");
    let out = Command::new("npm")
        .args(["root", "-g"])
        .output()
        .expect("npm root -g");
    let root = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let schema = root.join("speedscope/dist/release/file-format-schema.json");
    assert!(
        schema.is_file(),
        "{} is missing (the npm package speedscope): run `cargo xtask test`, which installs it",
        schema.display()
    );
    schema
}

/// Decodes a Perfetto trace with protoc and the published trace proto (from
/// the PyPI package `perfetto`); returns the text file's path.
pub fn protoc_decode(dir: &Path, trace: &Path) -> PathBuf {
    require("protoc", "Debian's protobuf-compiler");
    let desc = dir.join("perfetto_trace.desc");
    check(&["perfetto-descriptor", desc.to_str().unwrap()]);
    let input = std::fs::File::open(trace).unwrap();
    let out = Command::new("protoc")
        .arg(format!("--descriptor_set_in={}", desc.display()))
        .arg("--decode=perfetto.protos.Trace")
        .arg("protos/perfetto/trace/perfetto_trace.proto")
        .stdin(input)
        .output()
        .expect("run protoc");
    assert!(
        out.status.success(),
        "protoc --decode=perfetto.protos.Trace failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = dir.join("trace.textproto");
    std::fs::write(&text, &out.stdout).unwrap();
    text
}

/// Runs every independent reader over every format of `batches`.
pub fn check_all_formats(
    dir: &Path,
    batches: &[RecordBatch],
    meta: &ExportMeta,
    expect: &Path,
) -> FxHashMap<Format, ExportStats> {
    let expect = expect.to_str().unwrap();
    let mut stats = FxHashMap::default();
    for format in Format::ALL {
        let (path, s) = export_to(dir, format, batches, meta);
        let p = path.to_str().unwrap();
        match format {
            Format::Chrome => check(&["chrome", p, expect]),
            Format::Perfetto => {
                let text = protoc_decode(dir, &path);
                check(&["perfetto", text.to_str().unwrap(), expect])
            }
            Format::Speedscope => {
                let schema = speedscope_schema();
                check(&["speedscope", p, expect, schema.to_str().unwrap()])
            }
            Format::Folded => check(&["folded", p, expect]),
            Format::Flamegraph => check(&["flamegraph", p, expect]),
            Format::Pprof => {
                require("go", "Debian's golang-go");
                check(&["pprof", p, expect])
            }
        };
        stats.insert(format, s);
    }
    stats
}
