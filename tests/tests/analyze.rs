//! `scope-agent analyze` against planted problems: tests/fixtures/c/planted.c
//! and tests/fixtures/rust/planted.rs run one scenario per finding kind, each
//! with ONE function whose problem is unmistakable and decoys that must not
//! be named first (see the fixtures' header comments for the numbers).
//!
//! Every recording is `record` with no flags but `--out` (every call): the C
//! fixture with no pattern (every function of its executable), the Rust one
//! with `-f 'planted::*'` (its own functions, not std's). Before asking
//! analyze, each test checks the recording's exact call counts, so a failure
//! says whether the fixture or the analysis went wrong.
//!
//! The JSON contract read here (`analyze --data DIR --format json`):
//!
//! ```text
//! {"session": "...",
//!  "findings": [{"id": "F1", "kind": "bottleneck", "function": "slow_checksum",
//!                "related": null, "severity": 0.6, "confidence": 0.9,
//!                "evidence": {"self_share": 0.61, ...},
//!                "location": "planted.c:42", "message": "..."}, ...],
//!  "notes": ["..."]}
//! ```
//!
//! `findings` ranked by severity, highest first, ids `F1`, `F2`, … in that
//! order. For `repeated_work`, `function` is the repeated child and
//! `related` its parent. Rust names are demangled (`planted::fetch_one`):
//! names are compared by their last `::` segment.

use std::path::Path;
use std::process::Command;

use scope_tests::*;
use serde_json::Value;

/// One planted problem: the scenario that plants it, the finding that must
/// name it first, and the functions that must not be.
struct Planted {
    scenario: &'static str,
    kind: &'static str,
    function: &'static str,
    /// For `repeated_work`: the parent the finding must name as `related`.
    related: Option<&'static str>,
    decoys: &'static [&'static str],
    /// Exact call counts the recording must hold (the fixture is deterministic).
    counts: &'static [(&'static str, i64)],
}

const PLANTED: [Planted; 7] = [
    Planted {
        scenario: "bottleneck",
        kind: "bottleneck",
        function: "slow_checksum",
        related: None,
        decoys: &[
            "parse_input",
            "validate_input",
            "transform",
            "encode_output",
            "log_progress",
            "handle_item",
            "run_bottleneck",
            "main",
        ],
        counts: &[
            ("slow_checksum", 300),
            ("parse_input", 300),
            ("handle_item", 300),
        ],
    },
    Planted {
        scenario: "repeated",
        kind: "repeated_work",
        function: "fetch_one",
        related: Some("load_orders"),
        // load_orders is itself called 20 times per run_repeated call.
        decoys: &["fetch_many", "load_batch", "load_orders"],
        counts: &[
            ("fetch_one", 4000),
            ("load_orders", 20),
            ("fetch_many", 20),
            ("load_batch", 20),
        ],
    },
    Planted {
        scenario: "recursion",
        kind: "recursion",
        function: "fib_naive",
        related: None,
        // Deeper (50 levels against 19), but one call per level.
        decoys: &["walk_list"],
        // sum over n = 5..19 of 2·F(n+1) − 1; walk_list 5 + 10 + … + 50.
        counts: &[("fib_naive", 35381), ("walk_list", 275)],
    },
    Planted {
        scenario: "outlier",
        kind: "latency_outlier",
        function: "lookup_cache",
        related: None,
        decoys: &["compute_hash", "store_result", "run_outlier"],
        counts: &[
            ("lookup_cache", 3200),
            ("compute_hash", 3200),
            ("store_result", 3200),
        ],
    },
    Planted {
        scenario: "bimodal",
        kind: "bimodal",
        function: "parse_record",
        related: None,
        decoys: &["read_line", "emit_record"],
        counts: &[
            ("parse_record", 300),
            ("read_line", 300),
            ("emit_record", 300),
        ],
    },
    Planted {
        scenario: "waiting",
        kind: "waiting",
        function: "wait_for_reply",
        related: None,
        decoys: &["crunch", "handle_request"],
        counts: &[
            ("wait_for_reply", 20),
            ("crunch", 20),
            ("handle_request", 20),
        ],
    },
    Planted {
        scenario: "polling",
        kind: "polling",
        function: "poll_status",
        related: None,
        decoys: &["do_work"],
        counts: &[("poll_status", 200), ("wait_ready", 1), ("do_work", 30)],
    },
];

/// The scenarios record one at a time: durations are the planted evidence,
/// and two recordings sharing the machine's two CPUs would blur them.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The planted fixture for `lang`, built at -O1.
fn planted_bin(lang: Lang) -> String {
    let bin = match lang {
        Lang::C => c_fixture_file("planted", "1"),
        Lang::Rust => rust_fixture_file("planted", "1"),
    };
    bin.display().to_string()
}

/// `record` of one scenario into `out`, with the default flags.
fn record_scenario(lang: Lang, scenario: &str, out: &Path) {
    let bin = planted_bin(lang);
    let patterns: &[&str] = match lang {
        Lang::C => &[],
        Lang::Rust => &["planted::*"],
    };
    let _serial = one_at_a_time();
    let started = std::time::Instant::now();
    let run = record_with(out, patterns, &[], &[&bin, scenario]);
    assert_success(&run);
    eprintln!(
        "{lang:?} {scenario}: recorded in {:.2} s",
        started.elapsed().as_secs_f64()
    );
}

/// Whether the demangled `name` is `want`, or ends in `::want`.
fn name_is(name: &str, want: &str) -> bool {
    name == want || name.rsplit("::").next() == Some(want)
}

/// The exact call counts of `planted` hold in the recording in `out`.
fn check_counts(out: &Path, lang: Lang, planted: &Planted) {
    let rows = duckdb(&format!(
        "SELECT f.name AS name, count(*) AS calls \
         FROM read_parquet('{}', hive_partitioning = true) c \
         JOIN read_parquet('{}', hive_partitioning = true) f USING (session_id, function_id) \
         GROUP BY f.name",
        calls_glob(out),
        functions_glob(out)
    ));
    for (function, want) in planted.counts {
        let got = rows
            .iter()
            .find(|r| r["name"].as_str().is_some_and(|n| name_is(n, function)))
            .and_then(|r| r["calls"].as_i64());
        assert_eq!(
            got,
            Some(*want),
            "{lang:?} {}: calls of {function} in the recording (the fixture's truth): {rows:?}",
            planted.scenario
        );
    }
}

/// `scope-agent ARGS` to completion: (exit success, stdout, stderr).
fn agent(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(agent_bin())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run scope-agent {}: {e}", args.join(" ")));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `analyze --data OUT --format json`, parsed; panics unless it is the
/// contract's shape (see the module's doc).
fn analyze_json(out: &Path) -> Value {
    let data = out.display().to_string();
    let (ok, stdout, stderr) = agent(&["analyze", "--data", &data, "--format", "json"]);
    assert!(ok, "analyze --data {data} --format json failed:\n{stderr}");
    let json: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!("analyze --format json printed something other than JSON ({e}):\n{stdout}")
    });
    assert!(
        json["session"].as_str().is_some_and(|s| !s.is_empty()),
        "no session id: {json}"
    );
    assert!(json["notes"].is_array(), "notes is not an array: {json}");
    let findings = json["findings"]
        .as_array()
        .unwrap_or_else(|| panic!("findings is not an array: {json}"));
    let mut previous = f64::INFINITY;
    for (i, f) in findings.iter().enumerate() {
        assert_eq!(f["id"], format!("F{}", i + 1), "ids in rank order: {f}");
        for key in ["kind", "function", "message"] {
            assert!(f[key].is_string(), "{key} is not a string: {f}");
        }
        assert!(
            f["related"].is_null() || f["related"].is_string(),
            "related: {f}"
        );
        assert!(
            f["location"].is_null() || f["location"].is_string(),
            "location: {f}"
        );
        for key in ["severity", "confidence"] {
            let v = f[key]
                .as_f64()
                .unwrap_or_else(|| panic!("{key} is not a number: {f}"));
            assert!((0.0..=1.0).contains(&v), "{key} outside 0..=1: {f}");
        }
        let evidence = f["evidence"]
            .as_object()
            .unwrap_or_else(|| panic!("evidence is not an object: {f}"));
        assert!(
            evidence.values().any(Value::is_number),
            "evidence without a number: {f}"
        );
        let severity = f["severity"].as_f64().unwrap_or_default();
        assert!(
            severity <= previous,
            "findings not ranked by severity (highest first): {f} after severity {previous}"
        );
        previous = severity;
    }
    json
}

/// Prints every finding (CI logs then show the evidence behind a failure).
fn print_findings(lang: Lang, scenario: &str, json: &Value) {
    eprintln!("{lang:?} {scenario}: session {}", json["session"]);
    for f in json["findings"].as_array().into_iter().flatten() {
        eprintln!(
            "  {} {} {} related={} severity={} confidence={} location={} evidence={}\n    {}",
            f["id"].as_str().unwrap_or("?"),
            f["kind"].as_str().unwrap_or("?"),
            f["function"].as_str().unwrap_or("?"),
            f["related"],
            f["severity"],
            f["confidence"],
            f["location"],
            f["evidence"],
            f["message"].as_str().unwrap_or("")
        );
    }
    for note in json["notes"].as_array().into_iter().flatten() {
        eprintln!("  note: {}", note.as_str().unwrap_or(""));
    }
}

/// Records `scenario` of the `lang` fixture, runs analyze, and checks that
/// the first finding of the planted kind names the planted function.
fn check_planted(lang: Lang, scenario: &str) {
    require_root();
    let planted = PLANTED
        .iter()
        .find(|p| p.scenario == scenario)
        .unwrap_or_else(|| panic!("no planted scenario {scenario}"));
    let dir = tempfile::tempdir().expect("tempdir");
    record_scenario(lang, scenario, dir.path());
    check_counts(dir.path(), lang, planted);

    let json = analyze_json(dir.path());
    print_findings(lang, scenario, &json);
    let findings = json["findings"]
        .as_array()
        .expect("checked by analyze_json");
    let first = findings
        .iter()
        .find(|f| f["kind"] == planted.kind)
        .unwrap_or_else(|| {
            panic!(
                "{lang:?} {scenario}: no {} finding (planted in {}); findings: {findings:#?}",
                planted.kind, planted.function
            )
        });
    let function = first["function"].as_str().unwrap_or_default();
    assert!(
        !planted.decoys.iter().any(|d| name_is(function, d)),
        "{lang:?} {scenario}: the first {} finding names the decoy {function}, not {}: {first:#}",
        planted.kind,
        planted.function
    );
    assert!(
        name_is(function, planted.function),
        "{lang:?} {scenario}: the first {} finding names {function}, not {}: {first:#}",
        planted.kind,
        planted.function
    );
    if let Some(related) = planted.related {
        let got = first["related"].as_str().unwrap_or_default();
        assert!(
            name_is(got, related),
            "{lang:?} {scenario}: the first {} finding's related is {got:?}, not {related}: {first:#}",
            planted.kind
        );
    }
}

macro_rules! planted_tests {
    ($($name:ident: $lang:expr, $scenario:literal;)*) => {
        $(
            #[test]
            fn $name() {
                check_planted($lang, $scenario);
            }
        )*
    };
}

planted_tests! {
    bottleneck_c: Lang::C, "bottleneck";
    bottleneck_rust: Lang::Rust, "bottleneck";
    repeated_work_c: Lang::C, "repeated";
    repeated_work_rust: Lang::Rust, "repeated";
    recursion_c: Lang::C, "recursion";
    recursion_rust: Lang::Rust, "recursion";
    latency_outlier_c: Lang::C, "outlier";
    latency_outlier_rust: Lang::Rust, "outlier";
    bimodal_c: Lang::C, "bimodal";
    bimodal_rust: Lang::Rust, "bimodal";
    waiting_c: Lang::C, "waiting";
    waiting_rust: Lang::Rust, "waiting";
    polling_c: Lang::C, "polling";
    polling_rust: Lang::Rust, "polling";
}

/// The default output (text) names the planted function.
#[test]
fn text_output_names_the_bottleneck() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    record_scenario(Lang::C, "bottleneck", dir.path());
    let data = dir.path().display().to_string();
    let (ok, stdout, stderr) = agent(&["analyze", "--data", &data]);
    eprintln!("{stdout}");
    assert!(ok, "analyze --data {data} failed:\n{stderr}");
    assert!(
        stdout.contains("slow_checksum"),
        "the text output does not name the bottleneck slow_checksum:\n{stdout}"
    );
    assert!(
        !stdout.trim_start().starts_with('{'),
        "the default output is text, not JSON:\n{stdout}"
    );
}

/// Panics unless `stderr` is one line that names `path`, not a panic.
fn assert_one_line_naming(stderr: &str, path: &str) {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line on stderr: {stderr}");
    assert!(
        lines[0].contains(path),
        "the message names {path}: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_missing_directory_is_one_line_naming_it() {
    let (ok, stdout, stderr) = agent(&["analyze", "--data", "/nonexistent/scope-analyze"]);
    assert!(!ok, "analyze of a missing directory succeeded:\n{stdout}");
    assert_one_line_naming(&stderr, "/nonexistent/scope-analyze");
}

#[test]
fn an_empty_directory_says_there_is_nothing_to_analyze() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().display().to_string();
    for format in [&[][..], &["--format", "json"][..]] {
        let mut args = vec!["analyze", "--data", &data];
        args.extend_from_slice(format);
        let (ok, stdout, stderr) = agent(&args);
        assert!(!ok, "analyze of an empty directory succeeded:\n{stdout}");
        assert_one_line_naming(&stderr, &data);
    }
}

/// One recording of the C bottleneck scenario, shared by the `explain`
/// tests (they only read it).
fn bottleneck_store() -> &'static Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        record_scenario(Lang::C, "bottleneck", dir.path());
        dir
    })
    .path()
}

/// `scope-agent ARGS` with the LLM settings of the environment removed.
fn agent_without_llm_env(args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(agent_bin());
    cmd.args(args);
    for v in [
        "SCOPE_LLM_PROVIDER",
        "SCOPE_LLM_MODEL",
        "SCOPE_LLM_CONFIG",
        "GEMINI_API_KEY",
        "GOOGLE_API_KEY",
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "GOOGLE_APPLICATION_CREDENTIALS",
        "VERTEX_ACCESS_TOKEN",
    ] {
        cmd.env_remove(v);
    }
    cmd.env("HOME", "/nonexistent-home-for-explain");
    let out = cmd.output().expect("run scope-agent");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `explain --provider mock` (a non-default flag: the provider): the
/// deterministic provider's answer cites the findings by id and names the
/// planted bottleneck; nothing is flagged.
#[test]
fn explain_with_the_mock_provider_cites_the_findings() {
    require_root();
    let data = bottleneck_store().display().to_string();
    let (ok, stdout, stderr) =
        agent_without_llm_env(&["explain", "--data", &data, "--provider", "mock"]);
    assert!(ok, "explain --provider mock failed:\n{stderr}\n{stdout}");
    assert!(stdout.contains("[F1]"), "no [F1] citation:\n{stdout}");
    assert!(stdout.contains("slow_checksum"), "{stdout}");
    assert!(
        !stdout.contains("not in the findings"),
        "the mock's answer was flagged:\n{stdout}"
    );
}

/// `explain` with no provider configured: one line saying how to pick one,
/// a non-zero exit, and analyze's findings still printed.
#[test]
fn explain_without_a_provider_says_so_and_prints_the_findings() {
    require_root();
    let data = bottleneck_store().display().to_string();
    let (ok, stdout, stderr) = agent_without_llm_env(&["explain", "--data", &data]);
    assert!(!ok, "explain without a provider succeeded:\n{stdout}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "not one line:\n{stderr}");
    assert!(lines[0].contains("--provider"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stdout.contains("slow_checksum"),
        "the findings were not printed:\n{stdout}"
    );
}

/// `explain --provider openai --endpoint http://127.0.0.1:PORT/v1` (two
/// non-default flags) against a server on loopback that checks the
/// request's shape and answers like the chat completions API, naming a
/// function that is in no finding: the answer is printed and that name is
/// flagged.
#[test]
fn explain_against_an_openai_compatible_server_flags_invented_names() {
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    require_root();
    let data = bottleneck_store().display().to_string();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || -> String {
        let (stream, _) = listener.accept().expect("accept");
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut request_line = String::new();
        reader.read_line(&mut request_line).unwrap();
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).unwrap();
            if h.trim().is_empty() {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let body = String::from_utf8(body).unwrap();
        let answer = serde_json::json!({
            "id": "chatcmpl-1", "object": "chat.completion", "model": "local",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant",
              "content": "`slow_checksum` takes most of the self time [F1]. `mystery_fn()` is slow too."}}]
        })
        .to_string();
        let mut stream = stream;
        write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
            answer.len()
        )
        .unwrap();
        format!("{request_line}\n{body}")
    });
    let endpoint = format!("http://127.0.0.1:{port}/v1");
    let (ok, stdout, stderr) = agent_without_llm_env(&[
        "explain",
        "--data",
        &data,
        "--provider",
        "openai",
        "--model",
        "local",
        "--endpoint",
        &endpoint,
    ]);
    let request = server.join().expect("server thread");
    assert!(
        ok,
        "explain against the loopback server failed:\n{stderr}\n{stdout}"
    );
    assert!(
        request.starts_with("POST /v1/chat/completions "),
        "{request}"
    );
    let body: Value = serde_json::from_str(request.split_once('\n').unwrap().1).unwrap();
    assert_eq!(body["model"], "local", "{body}");
    let messages = body["messages"].as_array().expect("messages");
    assert!(
        messages.iter().any(|m| m["content"]
            .as_str()
            .is_some_and(|c| c.contains("slow_checksum") && c.contains("F1"))),
        "the findings were not sent: {body}"
    );
    assert!(stdout.contains("[F1]"), "{stdout}");
    let flagged = stdout
        .split_once("not in the findings")
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("nothing flagged:\n{stdout}"));
    assert!(flagged.contains("mystery_fn"), "{stdout}");
}
