//! `export --format otlp`: a recorded session's calls reach an OTLP/HTTP
//! receiver on loopback (tests/otlp/receiver.py) as spans, decoded there
//! with the published opentelemetry-proto definitions: one span per call,
//! ids and parents from the call tree, one trace per root call, times and
//! names equal to the store's. The receiver refuses the first two requests
//! (503): the exporter retries and loses nothing. An endpoint nobody
//! listens on is a clear error. (Needs root for the recording.)

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use scope_tests::{
    ChildGuard, Lang, assert_success, calls_glob, duckdb, fixture, functions_glob, record_with,
    require_root, run_agent, workspace_root,
};

fn receiver(out: &std::path::Path, fail_first: u32) -> (ChildGuard, u16) {
    let script = workspace_root().join("tests/otlp/receiver.py");
    let mut guard = ChildGuard::spawn(
        Command::new("python3")
            .arg(&script)
            .arg(out)
            .arg(fail_first.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit()),
    );
    let stdout = guard.child().stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let port = line
        .strip_prefix("port ")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("the receiver did not start: {line:?}"));
    (guard, port)
}

/// The spans the receiver wrote, one JSON object a line.
fn spans_in(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `scope-agent export --format otlp` of the store at `out` to `url`.
fn export_otlp(out: &std::path::Path, url: &str) -> scope_tests::AgentRun {
    run_agent(&[
        "export",
        "--data",
        out.to_str().unwrap(),
        "--format",
        "otlp",
        "--endpoint",
        url,
    ])
}

#[test]
fn every_call_arrives_as_a_span_of_its_root_calls_trace() {
    require_root();
    let bin = fixture(Lang::C, "2");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let run = record_with(
        &out,
        &["a_fn", "b_fn", "c_fn"],
        &[],
        &[bin.to_str().unwrap(), "nest", "300"],
    );
    assert_success(&run);
    let spans_file = dir.path().join("spans.jsonl");
    let (_receiver, port) = receiver(&spans_file, 2);
    let export = export_otlp(&out, &format!("http://127.0.0.1:{port}"));
    assert_success(&export);
    assert!(
        export.stderr.contains("sent 900 spans"),
        "{}",
        export.stderr
    );
    assert!(
        export.stderr.contains("2 requests retried"),
        "{}",
        export.stderr
    );
    let spans = spans_in(&spans_file);
    let calls = duckdb(&format!(
        "SELECT c.call_id AS id, c.parent_call_id AS parent, c.tid AS tid, c.start_ns AS s, \
         c.duration_ns AS d, f.name AS name \
         FROM read_parquet('{}', hive_partitioning=true) c \
         JOIN read_parquet('{}', hive_partitioning=true) f USING (session_id, function_id)",
        calls_glob(&out),
        functions_glob(&out)
    ));
    assert_eq!(calls.len(), 900);
    assert_eq!(spans.len(), calls.len(), "one span per call");
    let by_id: HashMap<String, &serde_json::Value> = spans
        .iter()
        .map(|s| (s["span_id"].as_str().unwrap().to_string(), s))
        .collect();
    let hex = |v: i64| format!("{v:016x}");
    for c in &calls {
        let id = c["id"].as_i64().unwrap();
        let s = by_id[&hex(id)];
        assert_eq!(s["name"], c["name"], "{s}");
        let start = c["s"].as_i64().unwrap();
        assert_eq!(s["start"].as_i64(), Some(start));
        assert_eq!(s["end"].as_i64(), Some(start + c["d"].as_i64().unwrap()));
        assert_eq!(s["attributes"]["thread.id"], c["tid"]);
        assert_eq!(s["attributes"]["code.function"], c["name"]);
        match c["parent"].as_i64() {
            // a_fn is a root: no parent, its own trace.
            None => {
                assert_eq!(s["parent_span_id"], "", "{s}");
                assert!(s["trace_id"].as_str().unwrap().ends_with(&hex(id)), "{s}");
            }
            // b_fn under a_fn, c_fn under b_fn: the parent's span, its trace.
            Some(p) => {
                assert_eq!(s["parent_span_id"].as_str(), Some(hex(p).as_str()));
                assert_eq!(s["trace_id"], by_id[&hex(p)]["trace_id"], "{s}");
            }
        }
        assert_eq!(
            s["resource"]["service.name"],
            bin.file_name().unwrap().to_str().unwrap()
        );
        assert_eq!(s["scope"], "scope");
    }
    let traces: std::collections::HashSet<&str> = spans
        .iter()
        .map(|s| s["trace_id"].as_str().unwrap())
        .collect();
    assert_eq!(traces.len(), 300, "one trace per a_fn call");
}

#[test]
fn an_endpoint_nobody_listens_on_is_a_clear_error() {
    require_root();
    let bin = fixture(Lang::C, "2");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let run = record_with(&out, &["a_fn"], &[], &[bin.to_str().unwrap(), "nest", "3"]);
    assert_success(&run);
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let export = export_otlp(&out, &url);
    assert!(!export.status.success());
    assert!(
        export.stderr.contains(&format!("{url}/v1/traces")),
        "{}",
        export.stderr
    );
    assert!(
        export.stderr.contains("0 spans were sent"),
        "{}",
        export.stderr
    );
    assert!(!export.stderr.contains("panicked"), "{}", export.stderr);
    // No endpoint: said before anything is read.
    let none = run_agent(&[
        "export",
        "--data",
        out.to_str().unwrap(),
        "--format",
        "otlp",
    ]);
    assert!(!none.status.success());
    assert!(none.stderr.contains("--endpoint"), "{}", none.stderr);
}

/// Hooked calls carry their payload summary as span attributes: connect's
/// peer, the bytes a recv returned, the request it started. Flags:
/// `--hooks net` (what makes the payloads) and `-f handle_request`.
#[test]
fn hooked_calls_carry_their_payload_summary_as_attributes() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (_, port) = scope_tests::record_request_fixture(&out, "net", 3);
    let spans_file = dir.path().join("spans.jsonl");
    let (_receiver, rport) = receiver(&spans_file, 0);
    let export = export_otlp(&out, &format!("http://127.0.0.1:{rport}"));
    assert_success(&export);
    let spans = spans_in(&spans_file);
    let named =
        |n: &str| -> Vec<&serde_json::Value> { spans.iter().filter(|s| s["name"] == n).collect() };
    let connect = named("connect");
    assert_eq!(connect.len(), 1, "{spans:?}");
    assert_eq!(
        connect[0]["attributes"]["scope.arg.addr"].as_str(),
        Some(format!("127.0.0.1:{port}").as_str()),
        "{}",
        connect[0]
    );
    // Every read of a request: 16 bytes, and the request it started is its
    // own call; the handler's span names the same request.
    let reads: Vec<&serde_json::Value> = named("recv")
        .into_iter()
        .filter(|s| s["attributes"]["scope.ret"] == 16)
        .collect();
    assert!(reads.len() >= 6, "3 requests and 3 answers read: {spans:?}");
    for r in &reads {
        let id = i64::from_str_radix(r["span_id"].as_str().unwrap(), 16).unwrap();
        assert_eq!(
            r["attributes"]["scope.request_id"].as_i64(),
            Some(id),
            "{r}"
        );
        assert!(r["attributes"]["scope.arg.fd"].is_i64(), "{r}");
    }
    let handlers = named("handle_request");
    assert_eq!(handlers.len(), 3);
    for h in handlers {
        let req = h["attributes"]["scope.request_id"]
            .as_i64()
            .expect("a request");
        assert!(
            reads
                .iter()
                .any(|r| i64::from_str_radix(r["span_id"].as_str().unwrap(), 16).unwrap() == req),
            "{h}"
        );
    }
}
