//! Every export format of a synthetic session with a known call tree (two
//! threads, main→a→b twice, captured arguments and strings, calls whose
//! duration is unknown), read back by independent readers: Python's json
//! (chrome), protoc with Perfetto's published trace proto, jsonschema with
//! speedscope's published schema, `go tool pprof`, an XML parser (the
//! flame graph), and compared with what the tree says.

mod export_support;

use export_support::*;
use rustc_hash::FxHashMap;
use scope_query::export::{ExportStats, Format, FunctionInfo, export};

fn functions() -> FxHashMap<u32, FunctionInfo> {
    let f = |name: &str, file: &str, line: u32, params: &[&str]| FunctionInfo {
        name: name.to_owned(),
        module: "/usr/bin/synthetic".to_owned(),
        file: Some(file.to_owned()),
        line: Some(line),
        param_names: params.iter().map(|p| (*p).to_owned()).collect(),
    };
    let mut m = FxHashMap::default();
    m.insert(1, f("main", "main.c", 10, &["argc", "argv"]));
    m.insert(2, f("a", "a.c", 20, &["n"]));
    m.insert(3, f("b", "b.c", 30, &["s", "len"]));
    // 4 is missing: shown as function#4.
    m
}

fn name(functions: &FxHashMap<u32, FunctionInfo>, id: u32) -> String {
    functions
        .get(&id)
        .map_or(format!("function#{id}"), |f| f.name.clone())
}

const START_NS: i64 = 500;
const END_NS: i64 = 40_000;

/// Thread 100: main → a → b twice, a → (b, function#4); thread 101: main →
/// a → b with an unknown duration (ends with its parent), a root `a` open
/// until the session end with a child.
fn threads() -> Vec<Thread> {
    let mut main = call(
        1,
        1_000,
        10_000,
        vec![
            call(
                2,
                2_000,
                3_000,
                vec![call(3, 2_100, 500, vec![]), call(3, 3_000, 700, vec![])],
            ),
            call(
                2,
                6_000,
                4_000,
                vec![call(3, 6_500, 1_000, vec![]), call(4, 8_000, 100, vec![])],
            ),
        ],
    );
    main.args = Some(vec![Some(2), Some(140_000_000_000_000)]);
    main.arg_strings = Some(vec![None, Some("./synthetic".to_owned())]);
    main.ret = Some(0);
    let b = &mut main.children[0].children[0];
    b.args = Some(vec![Some(0x7fff_0000_1234_5678), Some(5)]);
    b.arg_strings = Some(vec![Some("hello \"quoted\"\nline".to_owned()), None]);
    b.ret = Some(-3);
    let a = &mut main.children[0];
    a.args = Some(vec![Some(0x7fff_0000_1234_5678)]);

    let mut inner_open = call(3, 1_650, 0, vec![]);
    inner_open.duration_ns = None;
    inner_open.flags = 2;
    let mut root_open = call(2, 30_000, 0, vec![call(3, 31_000, 1_000, vec![])]);
    root_open.duration_ns = None;
    root_open.flags = 2 | 16;
    let main2 = call(
        1,
        1_500,
        20_000,
        vec![
            call(2, 1_600, 300, vec![inner_open]),
            call(3, 5_000, 100, vec![]),
        ],
    );
    vec![(100, 100, vec![main]), (100, 101, vec![main2, root_open])]
}

fn check_stats(stats: &FxHashMap<Format, ExportStats>) {
    for (format, s) in stats {
        assert_eq!(
            (s.calls, s.threads, s.open_calls),
            (13, 2, 2),
            "{format}: {s:?}"
        );
        assert!(s.bytes > 0, "{format}: {s:?}");
    }
}

#[test]
fn every_format_reads_back_with_arguments_in_small_batches() {
    let dir = tempfile::tempdir().unwrap();
    let functions = functions();
    let threads = threads();
    let expect = expectation(&threads, &|id| name(&functions, id), END_NS);
    assert_eq!(expect["calls"], 13);
    let expect = write_expectation(dir.path(), &expect);
    let batches = batches(&rows(&threads), 3, true);
    let meta = meta(&functions, START_NS, END_NS);
    check_stats(&check_all_formats(dir.path(), &batches, &meta, &expect));
}

#[test]
fn every_format_reads_back_without_the_optional_columns() {
    let dir = tempfile::tempdir().unwrap();
    let functions = functions();
    let threads = threads();
    let expect = expectation(&threads, &|id| name(&functions, id), END_NS);
    let expect = write_expectation(dir.path(), &expect);
    let batches = batches(&rows(&threads), 1000, false);
    let meta = meta(&functions, START_NS, END_NS);
    check_stats(&check_all_formats(dir.path(), &batches, &meta, &expect));
}

#[test]
fn chrome_names_the_captured_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let functions = functions();
    let batches = batches(&rows(&threads()), 4, true);
    let meta = meta(&functions, START_NS, END_NS);
    let (path, _) = export_to(dir.path(), Format::Chrome, &batches, &meta);
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let events = doc["traceEvents"].as_array().unwrap();
    let x = |name: &str, ts: f64| {
        events
            .iter()
            .find(|e| e["ph"] == "X" && e["name"] == name && e["ts"].as_f64() == Some(ts))
            .unwrap_or_else(|| panic!("no X event {name} at {ts}"))
            .clone()
    };
    let main = x("main", 0.5);
    assert_eq!(main["args"]["argc"], 2);
    assert_eq!(main["args"]["argv"], "./synthetic");
    assert_eq!(main["args"]["ret"], 0);
    assert_eq!(main["dur"].as_f64(), Some(10.0));
    let b = x("b", 1.6);
    assert_eq!(b["args"]["s"], "hello \"quoted\"\nline");
    assert_eq!(b["args"]["ret"], -3);
    assert_eq!(b["args"]["len"], 5);
    // Not exact in a double: a string.
    assert_eq!(x("a", 1.5)["args"]["n"], "9223090562183485048");
    let open = x("a", 29.5);
    assert_eq!(
        open["dur"].as_f64(),
        Some(10.0),
        "open until the session end"
    );
    assert_eq!(open["args"]["flags"], "return_missing|loss_while_open");
    let cut = x("b", 1.15);
    assert_eq!(
        cut["dur"].as_f64(),
        Some(0.25),
        "open, ends with its parent"
    );
    let names: Vec<_> = events
        .iter()
        .filter(|e| e["ph"] == "M")
        .map(|e| {
            (
                e["name"].as_str().unwrap(),
                e["args"]["name"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(
        names.contains(&("process_name", "./synthetic --flag")),
        "{names:?}"
    );
    assert!(names.contains(&("thread_name", "thread 101")), "{names:?}");
    assert_eq!(doc["otherData"]["start_ns"], "500");
}

#[test]
fn perfetto_carries_arguments_as_debug_annotations() {
    let dir = tempfile::tempdir().unwrap();
    let functions = functions();
    let batches = batches(&rows(&threads()), 4, true);
    let meta = meta(&functions, START_NS, END_NS);
    let (path, _) = export_to(dir.path(), Format::Perfetto, &batches, &meta);
    let text = std::fs::read_to_string(protoc_decode(dir.path(), &path)).unwrap();
    let squeezed: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    for expected in [
        r#"debug_annotations { string_value: "./synthetic" name: "argv" }"#,
        r#"debug_annotations { int_value: 2 name: "argc" }"#,
        r#"debug_annotations { string_value: "hello \"quoted\"\nline" name: "s" }"#,
        r#"debug_annotations { int_value: -3 name: "ret" }"#,
        r#"process { pid: 100 cmdline: "./synthetic --flag" process_name: "./synthetic --flag" }"#,
        r#"thread { pid: 100 tid: 101 thread_name: "thread 101" }"#,
        r#"event_names { iid: 5 name: "function#4" }"#,
    ] {
        assert!(squeezed.contains(expected), "no `{expected}` in\n{text}");
    }
}

#[test]
fn thread_names_come_from_the_meta() {
    let functions = functions();
    let mut names = FxHashMap::default();
    names.insert(101, "worker-1".to_owned());
    let mut meta = meta(&functions, START_NS, END_NS);
    meta.thread_names = Some(&names);
    let batches = batches(&rows(&threads()), 100, false);
    let mut out = Vec::new();
    export(
        Format::Speedscope,
        &mut batches.into_iter().map(Ok),
        &meta,
        &mut out,
    )
    .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let names: Vec<_> = doc["profiles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "thread 100 (pid 100, tid 100)",
            "worker-1 (pid 100, tid 101)"
        ]
    );
}

#[test]
fn unordered_calls_are_refused_with_a_reason() {
    let functions = functions();
    let meta = meta(&functions, START_NS, END_NS);
    let mut rows = rows(&threads());
    rows.swap(1, 2);
    for format in Format::ALL {
        let err = export(
            format,
            &mut batches(&rows, 5, false).into_iter().map(Ok),
            &meta,
            &mut Vec::new(),
        )
        .expect_err("out of order");
        assert!(
            err.to_string()
                .contains("not ordered by (tid, start_ns, depth)"),
            "{format}: {err}"
        );
    }
    // A thread that comes back after another.
    let mut rows = export_support::rows(&threads());
    let last = rows.pop().unwrap();
    rows.insert(0, last);
    let err = export(
        Format::Chrome,
        &mut batches(&rows, 5, false).into_iter().map(Ok),
        &meta,
        &mut Vec::new(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("comes again"), "{err}");
}

#[test]
fn a_missing_or_mistyped_column_is_named() {
    let functions = functions();
    let meta = meta(&functions, START_NS, END_NS);
    let batch = batches(&rows(&threads()), 100, false).remove(0);
    let without = batch
        .project(
            &(0..batch.num_columns())
                .filter(|i| batch.schema().field(*i).name() != "depth")
                .collect::<Vec<_>>(),
        )
        .unwrap();
    let err = export(
        Format::Folded,
        &mut std::iter::once(Ok(without)),
        &meta,
        &mut Vec::new(),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the calls batch has no column `depth` (Int32)"
    );
    let schema = batch.schema();
    let mut columns: Vec<(&str, arrow_array::ArrayRef)> = Vec::new();
    for (i, f) in schema.fields().iter().enumerate() {
        let c = if f.name() == "start_ns" {
            std::sync::Arc::new(arrow_array::UInt64Array::from(vec![0u64; batch.num_rows()])) as _
        } else {
            batch.column(i).clone()
        };
        columns.push((f.name().as_str(), c));
    }
    let mistyped =
        arrow_array::RecordBatch::try_from_iter(columns.iter().map(|(n, c)| (*n, c.clone())))
            .unwrap();
    let err = export(
        Format::Pprof,
        &mut std::iter::once(Ok(mistyped)),
        &meta,
        &mut Vec::new(),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "column `start_ns` of the calls batch is UInt64, expected Int64"
    );
    let err = export(
        Format::Chrome,
        &mut std::iter::once(Err(anyhow::anyhow!("part-00003.parquet: corrupt"))),
        &meta,
        &mut Vec::new(),
    )
    .unwrap_err();
    assert_eq!(err.to_string(), "part-00003.parquet: corrupt");
}

#[test]
fn formats_parse_by_name() {
    for format in Format::ALL {
        assert_eq!(format.name().parse::<Format>().unwrap(), format);
    }
    let err = "svg".parse::<Format>().unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown export format 'svg' (expected one of perfetto, chrome, folded, flamegraph, pprof, speedscope)"
    );
}

#[test]
fn an_empty_session_gives_valid_empty_files() {
    let dir = tempfile::tempdir().unwrap();
    let functions = functions();
    let meta = meta(&functions, START_NS, END_NS);
    let expect = write_expectation(
        dir.path(),
        &serde_json::json!({"calls": 0, "threads": 0, "counts": {}, "self_by_path": {}}),
    );
    for format in [Format::Chrome, Format::Speedscope, Format::Folded] {
        let (path, s) = export_to(dir.path(), format, &[], &meta);
        assert_eq!((s.calls, s.threads), (0, 0));
        let args = [
            format.name(),
            path.to_str().unwrap(),
            expect.to_str().unwrap(),
        ];
        if format == Format::Speedscope {
            let schema = speedscope_schema();
            check(&[args[0], args[1], args[2], schema.to_str().unwrap()]);
        } else {
            check(&args);
        }
    }
    let (svg, _) = export_to(dir.path(), Format::Flamegraph, &[], &meta);
    let svg = std::fs::read_to_string(svg).unwrap();
    assert!(svg.contains("no calls"), "{svg}");
}

#[test]
fn arg_strings_read_as_utf8_view_too() {
    use arrow_schema::{DataType, Field};
    use datafusion::arrow::compute::cast;
    let functions = functions();
    let meta = meta(&functions, START_NS, END_NS);
    let batch = batches(&rows(&threads()), 100, true).remove(0);
    let view = DataType::List(std::sync::Arc::new(Field::new(
        "item",
        DataType::Utf8View,
        true,
    )));
    let schema = batch.schema();
    let columns = schema.fields().iter().enumerate().map(|(i, f)| {
        let c = batch.column(i).clone();
        let c = if f.name() == "arg_strings" {
            cast(&c, &view).unwrap()
        } else {
            c
        };
        (f.name().clone(), c)
    });
    let batch = arrow_array::RecordBatch::try_from_iter(columns).unwrap();
    assert_eq!(
        batch.column_by_name("arg_strings").unwrap().data_type(),
        &view
    );
    let mut out = Vec::new();
    export(
        Format::Chrome,
        &mut std::iter::once(Ok(batch)),
        &meta,
        &mut out,
    )
    .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let main = doc["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["ph"] == "X" && e["name"] == "main" && e["tid"] == 100)
        .unwrap();
    assert_eq!(main["args"]["argv"], "./synthetic");
}
