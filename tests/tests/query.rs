//! The reading commands over a real recording: `query` (against DuckDB on
//! the same files), `report`, `tree`, `stack` and `timeline`, and their
//! answers to bad input.
//!
//! Every recording here is `record` with no flags but `--out` (the default
//! path: every function of the fixture's executable, every call). The
//! fixture's `all` mode makes known counts: leaf 150 (100 direct, 50 under
//! a_fn → b_fn → c_fn), a_fn/b_fn/c_fn 50, recurse 11 (depth 10), sleeper
//! 2 (10 ms each), thread_main 2, tleaf 200 (100 per thread).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use scope_tests::{
    Lang, agent_bin, assert_success, calls_glob, duckdb, fixture, functions_glob, record_with,
    require_root,
};

/// One recording of `fixture all`, shared by the tests that only read it.
fn all_store() -> &'static Path {
    static STORE: OnceLock<PathBuf> = OnceLock::new();
    STORE.get_or_init(|| {
        require_root();
        let dir = tempfile::tempdir().expect("tempdir").keep();
        let bin = fixture(Lang::C, "0");
        let run = record_with(&dir, &[], &[], &[bin.to_str().unwrap(), "all"]);
        assert_success(&run);
        dir
    })
}

/// Runs `scope-agent ARGS`; returns (success, stdout, stderr).
fn agent(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(agent_bin())
        .args(args)
        .output()
        .expect("run scope-agent");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `scope-agent query SQL --format json` as rows.
fn scope_rows(
    data: &Path,
    sql: &str,
    extra: &[&str],
) -> Vec<serde_json::Map<String, serde_json::Value>> {
    let data = data.display().to_string();
    let mut args = vec!["query", sql, "--data", data.as_str(), "--format", "json"];
    args.extend_from_slice(extra);
    let (ok, stdout, stderr) = agent(&args);
    assert!(ok, "scope-agent query failed:\n{sql}\n{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("query output is not JSON ({e}):\n{stdout}"));
    v.as_array()
        .expect("a JSON array")
        .iter()
        .map(|r| r.as_object().expect("an object per row").clone())
        .collect()
}

/// A JSON value as text, numbers as integers where integral, so 150 from
/// one engine equals 150.0 from the other.
fn norm(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Number(n) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 9e15 => format!("{}", f as i64),
            Some(f) => format!("{f:.6}"),
            None => n.to_string(),
        },
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn norm_rows(rows: &[serde_json::Map<String, serde_json::Value>]) -> Vec<Vec<(String, String)>> {
    rows.iter()
        .map(|r| {
            let mut v: Vec<(String, String)> =
                r.iter().map(|(k, v)| (k.clone(), norm(v))).collect();
            v.sort();
            v
        })
        .collect()
}

fn count_of(rows: &[serde_json::Map<String, serde_json::Value>], name: &str) -> i64 {
    rows.iter()
        .find(|r| r["name"] == name)
        .and_then(|r| r["n"].as_i64())
        .unwrap_or_else(|| panic!("no row for {name} in {rows:?}"))
}

#[test]
fn query_gives_the_rows_duckdb_gives_over_the_same_files() {
    let store = all_store();
    // The same SQL text in both engines, with each engine's table names:
    // scope registers the tables; DuckDB reads the files.
    let cases = [
        "SELECT f.name, count(*) AS n, sum(c.duration_ns) AS total FROM calls c \
             JOIN functions f USING (session_id, function_id) GROUP BY f.name ORDER BY f.name",
        "SELECT tid, count(*) AS n, min(depth) AS min_depth, max(depth) AS max_depth FROM calls \
             GROUP BY tid ORDER BY n, tid",
        "SELECT session_id, count(*) AS n, count(parent_call_id) AS with_parent FROM calls GROUP BY session_id",
        "SELECT f.name, c.depth, c.call_id, c.parent_call_id, c.self_ns FROM calls c \
             JOIN functions f USING (session_id, function_id) WHERE f.name = 'recurse' ORDER BY c.depth",
    ];
    for sql in cases {
        let ours = scope_rows(store, sql, &[]);
        let duck_sql = sql
            .replace(
                "FROM calls c",
                &format!(
                    "FROM read_parquet('{}', hive_partitioning = true) c",
                    calls_glob(store)
                ),
            )
            .replace(
                "JOIN functions f",
                &format!(
                    "JOIN read_parquet('{}', hive_partitioning = true) f",
                    functions_glob(store)
                ),
            )
            .replace(
                "FROM calls ",
                &format!(
                    "FROM read_parquet('{}', hive_partitioning = true) ",
                    calls_glob(store)
                ),
            );
        let theirs = duckdb(&duck_sql);
        assert!(!ours.is_empty(), "no rows for {sql}");
        assert_eq!(
            norm_rows(&ours),
            norm_rows(&theirs),
            "scope and DuckDB disagree on\n{sql}"
        );
    }
    let counts = scope_rows(
        store,
        "SELECT f.name, count(*) AS n FROM calls c JOIN functions f USING (session_id, function_id) GROUP BY f.name",
        &[],
    );
    for (name, n) in [
        ("leaf", 150),
        ("a_fn", 50),
        ("c_fn", 50),
        ("recurse", 11),
        ("sleeper", 2),
        ("tleaf", 200),
    ] {
        assert_eq!(count_of(&counts, name), n, "calls of {name}");
    }
    // Every table the store has is registered.
    let tables = scope_rows(
        store,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY table_name",
        &[],
    );
    let names: Vec<String> = tables.iter().map(|r| norm(&r["table_name"])).collect();
    for t in [
        "agent_metrics",
        "calls",
        "functions",
        "losses",
        "sessions",
        "totals",
    ] {
        assert!(
            names.iter().any(|n| n == t),
            "{t} not registered: {names:?}"
        );
    }
}

#[test]
fn query_writes_csv_and_parquet_that_duckdb_reads() {
    let store = all_store();
    let data = store.display().to_string();
    let (ok, csv, err) = agent(&[
        "query",
        "SELECT call_id, args FROM calls ORDER BY call_id LIMIT 3",
        "--data",
        &data,
        "--format",
        "csv",
    ]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "call_id,args", "{csv}");
    assert_eq!(lines.len(), 4, "{csv}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("leaf.parquet");
    let (ok, _, err) = agent(&[
        "query",
        "SELECT c.* FROM calls c JOIN functions f USING (session_id, function_id) WHERE f.name = 'leaf'",
        "--data",
        &data,
        "--format",
        "parquet",
        "--output",
        file.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let rows = duckdb(&format!(
        "SELECT count(*) AS n FROM read_parquet('{}')",
        file.display()
    ));
    assert_eq!(rows[0]["n"], 150);
}

#[test]
fn session_narrows_every_table_and_bad_input_is_named() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let bin = fixture(Lang::C, "0");
    for n in ["7", "9"] {
        assert_success(&record_with(
            dir.path(),
            &["leaf"],
            &[],
            &[bin.to_str().unwrap(), "count", n],
        ));
    }
    let all = scope_rows(
        dir.path(),
        "SELECT session_id, count(*) AS n FROM calls GROUP BY session_id ORDER BY n",
        &[],
    );
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(all[0]["n"], 7);
    assert_eq!(all[1]["n"], 9);
    let second = norm(&all[1]["session_id"]);
    let one = scope_rows(
        dir.path(),
        "SELECT count(*) AS n, count(DISTINCT session_id) AS s FROM calls",
        &["--session", &second],
    );
    assert_eq!(one[0]["n"], 9);
    assert_eq!(one[0]["s"], 1);
    let fns = scope_rows(
        dir.path(),
        "SELECT count(DISTINCT session_id) AS s FROM functions",
        &["--session", &second],
    );
    assert_eq!(fns[0]["s"], 1);

    let data = dir.path().display().to_string();
    // An SQL error names its position and the tables and columns there are.
    let (ok, _, err) = agent(&["query", "SELECT nosuch FROM calls", "--data", &data]);
    assert!(!ok);
    assert!(err.contains("nosuch"), "{err}");
    assert!(err.contains("tables in this store"), "{err}");
    assert!(err.contains("calls(pid, tid, call_id"), "{err}");
    assert!(err.contains("column 8"), "the position of the error: {err}");
    let (ok, _, err) = agent(&["query", "SELEC 1", "--data", &data]);
    assert!(!ok);
    assert!(err.contains("line 1"), "{err}");
    // An unknown session or store.
    let (ok, _, err) = agent(&["report", "--data", &data, "--session", "nosuch"]);
    assert!(!ok);
    assert!(
        err.contains("no session \"nosuch\"") && err.contains(&second),
        "{err}"
    );
    let (ok, _, err) = agent(&["report", "--data", "/nonexistent/scope"]);
    assert!(!ok);
    assert!(
        err.contains("/nonexistent/scope: no such directory"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    // A half-written file is skipped with a warning naming it; the rest
    // still answers.
    let session_dir = dir
        .path()
        .join("calls")
        .join(format!("session_id={second}"));
    let bad = session_dir.join("part-99999.parquet");
    std::fs::write(&bad, b"PAR1 this is not a finished file").unwrap();
    let (ok, stdout, err) = agent(&[
        "query",
        "SELECT count(*) AS n FROM calls",
        "--data",
        &data,
        "--format",
        "csv",
    ]);
    assert!(ok, "{err}");
    assert_eq!(stdout.lines().nth(1), Some("16"), "{stdout}");
    assert!(
        err.contains("warning: skipped") && err.contains("part-99999.parquet"),
        "{err}"
    );
}

#[test]
fn report_gives_exact_counts_and_plausible_times() {
    let store = all_store();
    let data = store.display().to_string();
    let (ok, out, err) = agent(&[
        "report", "--data", &data, "--format", "json", "--limit", "0",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rows = v["rows"].as_array().unwrap();
    let row = |name: &str| {
        rows.iter()
            .find(|r| r["key"] == name)
            .unwrap_or_else(|| panic!("no {name} in {out}"))
    };
    for (name, n) in [
        ("leaf", 150.0),
        ("a_fn", 50.0),
        ("b_fn", 50.0),
        ("recurse", 11.0),
        ("sleeper", 2.0),
        ("tleaf", 200.0),
    ] {
        let r = row(name);
        assert_eq!(r["calls"].as_f64(), Some(n), "{name}: {r}");
        assert_eq!(r["exact"], true, "{name}: {r}");
        let total = r["total_ns"].as_f64().unwrap();
        let selft = r["self_ns"].as_f64().unwrap();
        let (p50, p99, max) = (
            r["p50_ns"].as_f64().unwrap(),
            r["p99_ns"].as_f64().unwrap(),
            r["max_ns"].as_f64().unwrap(),
        );
        assert!(
            selft <= total && p50 <= p99 * 1.01 && p99 <= max * 1.01,
            "{name}: {r}"
        );
        assert!(total >= max, "{name}: {r}");
    }
    // The percentiles against DuckDB's sorted durations (one session in
    // this store): within 0.3% of the nearest-rank value, and the sums and
    // maximum exact.
    let exact = duckdb(&format!(
        "SELECT f.name, list(c.duration_ns ORDER BY c.duration_ns) AS d, sum(c.duration_ns) AS total, \
           sum(c.self_ns) AS self_ns, max(c.duration_ns) AS max_ns \
         FROM read_parquet('{}', hive_partitioning = true) c \
         JOIN read_parquet('{}', hive_partitioning = true) f USING (session_id, function_id) \
         WHERE c.duration_ns IS NOT NULL GROUP BY f.name",
        calls_glob(store),
        functions_glob(store)
    ));
    for e in &exact {
        let name = e["name"].as_str().unwrap();
        let r = row(name);
        let d: Vec<f64> = e["d"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        for (q, key) in [(0.5, "p50_ns"), (0.9, "p90_ns"), (0.99, "p99_ns")] {
            let rank = ((q * d.len() as f64).ceil() as usize).clamp(1, d.len());
            let want = d[rank - 1];
            let got = r[key].as_f64().unwrap();
            assert!(
                (got - want).abs() <= want * 0.003,
                "{name} {key}: {got} vs nearest rank {want}"
            );
        }
        for key in ["total", "self_ns", "max_ns"] {
            let ours = if key == "total" { "total_ns" } else { key };
            assert_eq!(
                r[ours].as_f64(),
                e[key].as_f64(),
                "{name} {key}: {r} vs DuckDB {e:?}"
            );
        }
    }
    assert!(exact.len() >= 6, "{exact:?}");
    // sleeper sleeps 10 ms per call: its median is at least that, and
    // nearly all of it is its own time.
    let s = row("sleeper");
    assert!(s["p50_ns"].as_f64().unwrap() >= 10e6, "{s}");
    assert!(s["p50_ns"].as_f64().unwrap() < 2e9, "{s}");
    // a_fn's total holds b_fn's.
    assert!(row("a_fn")["total_ns"].as_f64() >= row("b_fn")["total_ns"].as_f64());
    // The text form sorts by total time, main first.
    let (ok, text, _) = agent(&["report", "--data", &data]);
    assert!(ok);
    let first = text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("calls"))
        .nth(1)
        .unwrap_or_default();
    assert!(first.ends_with("main"), "{text}");
    assert!(text.contains("every call recorded"), "{text}");
    // By thread: two threads of 100 tleaf calls each.
    let (ok, out, err) = agent(&[
        "report", "--data", &data, "--by", "thread", "--format", "json", "--limit", "0",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let tleaf: Vec<f64> = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["key"] == "tleaf")
        .map(|r| r["calls"].as_f64().unwrap())
        .collect();
    assert_eq!(tleaf, vec![100.0, 100.0], "{out}");
    // By caller: leaf is called 100 times from main's loop (or the static
    // function it was compiled into) and 50 times from c_fn.
    let (ok, out, err) = agent(&[
        "report", "--data", &data, "--by", "caller", "--format", "json", "--limit", "0",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("\"c_fn → leaf\""), "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let from_c = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == "c_fn → leaf")
        .unwrap();
    assert_eq!(from_c["calls"].as_f64(), Some(50.0));
}

#[test]
fn tree_aggregates_calls_by_path() {
    let store = all_store();
    let data = store.display().to_string();
    let (ok, text, err) = agent(&["tree", "--data", &data]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = text.lines().collect();
    // a_fn → b_fn → c_fn → leaf, 50 calls on each step of the path.
    let i = lines
        .iter()
        .position(|l| l.trim_end().ends_with("─ a_fn"))
        .unwrap_or_else(|| panic!("no a_fn path:\n{text}"));
    for (k, name) in ["a_fn", "b_fn", "c_fn", "leaf"].iter().enumerate() {
        let l = lines[i + k];
        assert!(l.trim_end().ends_with(&format!("─ {name}")), "{l}\n{text}");
        assert_eq!(l.split_whitespace().next(), Some("50"), "{l}\n{text}");
    }
    // recurse nests 11 deep, one call per level.
    let rec: Vec<&&str> = lines
        .iter()
        .filter(|l| l.trim_end().ends_with("recurse"))
        .collect();
    assert_eq!(rec.len(), 11, "{text}");
    assert!(
        rec.iter().all(|l| l.split_whitespace().next() == Some("1")),
        "{text}"
    );
    // --focus roots the tree at a function.
    let (ok, text, err) = agent(&["tree", "--data", &data, "--focus", "b_fn"]);
    assert!(ok, "{err}");
    let first = text
        .lines()
        .find(|l| l.trim_end().ends_with("b_fn"))
        .unwrap();
    assert_eq!(first.split_whitespace().next(), Some("50"), "{text}");
    assert!(!text.contains("a_fn"), "{text}");
}

/// The main thread's tid and the start of its `n`-th call of `name`.
fn call_start(store: &Path, name: &str, n: usize) -> (i64, i64, i64) {
    let rows = scope_rows(
        store,
        &format!(
            "SELECT c.tid, c.start_ns, c.duration_ns FROM calls c JOIN functions f USING (session_id, function_id) \
             WHERE f.name = '{name}' ORDER BY c.start_ns"
        ),
        &[],
    );
    let r = &rows[n];
    (
        r["tid"].as_i64().unwrap(),
        r["start_ns"].as_i64().unwrap(),
        r["duration_ns"].as_i64().unwrap(),
    )
}

#[test]
fn stack_shows_what_ran_at_an_instant() {
    let store = all_store();
    let data = store.display().to_string();
    let (tid, start, dur) = call_start(store, "sleeper", 1);
    let at = start + dur / 2;
    let (ok, out, err) = agent(&[
        "stack",
        "--data",
        &data,
        "--tid",
        &tid.to_string(),
        "--at",
        &at.to_string(),
    ]);
    assert!(ok, "{err}");
    let frames: Vec<&str> = out
        .lines()
        .filter(|l| l.trim_start().starts_with('#'))
        .collect();
    assert!(frames[0].contains("#0  sleeper("), "{out}");
    assert!(frames.last().unwrap().contains("main("), "{out}");
    assert!(out.contains("fixture.c:"), "file:line of the frames: {out}");
    // Inside the deepest recursion: 11 recurse frames.
    let (rtid, rstart, _) = call_start(store, "recurse", 10);
    let (ok, out, err) = agent(&[
        "stack",
        "--data",
        &data,
        "--tid",
        &rtid.to_string(),
        "--at",
        &rstart.to_string(),
    ]);
    assert!(ok, "{err}");
    assert_eq!(out.matches("recurse(").count(), 11, "{out}");
    // Bad input: a time outside the session, a thread without calls.
    let (ok, _, err) = agent(&[
        "stack",
        "--data",
        &data,
        "--tid",
        &tid.to_string(),
        "--at",
        "+999s",
    ]);
    assert!(!ok);
    assert!(
        err.contains("outside session") && err.contains("it ran from +0s to"),
        "{err}"
    );
    let (ok, _, err) = agent(&["stack", "--data", &data, "--tid", "1", "--at", "+0s"]);
    assert!(!ok);
    assert!(
        err.contains("thread 1 recorded no calls") && err.contains(&format!("tid {tid}:")),
        "{err}"
    );
    let (ok, _, err) = agent(&["stack", "--data", &data, "--tid", "1", "--at", "soon"]);
    assert!(!ok);
    assert!(err.contains("\"soon\" is not a time"), "{err}");
}

#[test]
fn timeline_prints_nested_calls_in_order() {
    let store = all_store();
    let data = store.display().to_string();
    let (tid, first_a, _) = call_start(store, "a_fn", 0);
    let (_, third_a, _) = call_start(store, "a_fn", 2);
    let (ok, out, err) = agent(&[
        "timeline",
        "--data",
        &data,
        "--tid",
        &tid.to_string(),
        "--from",
        &first_a.to_string(),
        "--to",
        &(third_a - 1).to_string(),
    ]);
    assert!(ok, "{err}");
    // Two a_fn calls, each with b_fn, c_fn and leaf nested one deeper per
    // level, in that order (main, open over the whole interval, first).
    let names: Vec<(usize, String)> = out
        .lines()
        .skip(1)
        .filter_map(|l| {
            // `{offset:>14}  {duration:>10}  {indent}{call}`
            let body: String = l.chars().skip(28).collect();
            let body = body.as_str();
            let trimmed = body.trim_start_matches(' ');
            let indent = body.len() - trimmed.len();
            Some((indent, trimmed.split('(').next()?.to_string()))
        })
        .filter(|(_, n)| ["a_fn", "b_fn", "c_fn", "leaf"].contains(&n.as_str()))
        .collect();
    let seq: Vec<&str> = names.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(
        seq,
        [
            "a_fn", "b_fn", "c_fn", "leaf", "a_fn", "b_fn", "c_fn", "leaf"
        ],
        "{out}"
    );
    assert!(
        names[0].0 < names[1].0 && names[1].0 < names[2].0 && names[2].0 < names[3].0,
        "{out}"
    );
}

#[test]
fn live_queries_read_the_running_recording_and_say_when_none_runs() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let bin = fixture(Lang::C, "0");
    let out = dir.path().display().to_string();
    // `record` with no flags but --out and -f: every call of leaf, for 4 s.
    let mut agent_run = scope_tests::spawn_agent(&[
        "record",
        "--out",
        &out,
        "-f",
        "leaf",
        "--",
        bin.to_str().unwrap(),
        "govern",
        "4000",
        "10",
        "100",
    ]);
    // The end of the live line: the pid before it has arrived too.
    agent_run.wait_for_stderr("s of calls (", std::time::Duration::from_secs(30));
    let said = agent_run.stderr_so_far();
    let pid = said
        .split("--live --pid ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("the live line names the pid")
        .to_string();
    let socket = format!("/run/scope/live-{pid}.sock");
    let mode = std::fs::metadata(&socket).expect("the socket exists");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(mode.permissions().mode() & 0o777, 0o600, "{socket}");
    // Calls arrive within a few ticks of the writer.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let n = loop {
        let (ok, stdout, stderr) = agent(&[
            "query",
            "--live",
            "--pid",
            &pid,
            "--format",
            "csv",
            "SELECT count(*) AS n FROM calls c JOIN functions f USING (session_id, function_id) WHERE f.name = 'leaf'",
        ]);
        assert!(ok, "{stderr}");
        let n: u64 = stdout.lines().nth(1).unwrap_or("0").trim().parse().unwrap();
        if n > 0 || std::time::Instant::now() > deadline {
            break n;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(n > 0, "no live calls");
    let (ok, _, err) = agent(&["query", "--live", "--pid", &pid, "SELECT nosuch FROM calls"]);
    assert!(!ok);
    assert!(err.contains("nosuch"), "{err}");
    let run = agent_run.wait(std::time::Duration::from_secs(120));
    assert_success(&run);
    assert!(
        !std::path::Path::new(&socket).exists(),
        "the socket outlived the session"
    );
    let (ok, _, err) = agent(&["query", "--live", "--pid", &pid, "SELECT 1"]);
    assert!(!ok);
    assert!(
        err.contains(&format!("no live agent for pid {pid}")),
        "{err}"
    );
}

#[test]
fn report_marks_estimated_counts_and_notes_losses() {
    // A copy of the recording whose `totals` says leaf was sampled (an
    // estimate of 1,000 in [900, 1,100] with 150 rows recorded) and whose
    // `losses` says 7 events were lost: what a sampled or lossy session
    // stores, rewritten with DuckDB so the numbers are known.
    let src = all_store();
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("store");
    let status = Command::new("cp")
        .arg("-a")
        .arg(src)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    let totals_dir = std::fs::read_dir(copy.join("totals"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let session = totals_dir
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .trim_start_matches("session_id=")
        .to_string();
    let totals_file = totals_dir.join("part-0.parquet");
    let rewritten = dir.path().join("totals.parquet");
    duckdb(&format!(
        "COPY (SELECT t.function_id, \
           CASE WHEN f.name = 'leaf' THEN 1000::UBIGINT ELSE t.calls END AS calls, \
           CASE WHEN f.name = 'leaf' THEN false ELSE t.exact END AS exact, \
           CASE WHEN f.name = 'leaf' THEN 900::UBIGINT ELSE t.calls_low END AS calls_low, \
           CASE WHEN f.name = 'leaf' THEN 1100::UBIGINT ELSE t.calls_high END AS calls_high, \
           t.calls_recorded, \
           CASE WHEN f.name = 'leaf' THEN 'sampled: ratio to a related function' ELSE t.method END AS method, \
           t.basis_function_id, t.total_ns, t.self_ns \
         FROM read_parquet('{}') t JOIN read_parquet('{}') f USING (function_id)) \
         TO '{}' (FORMAT parquet); SELECT 1 AS ok",
        totals_file.display(),
        copy.join(format!("functions/session_id={session}/part-0.parquet"))
            .display(),
        rewritten.display()
    ));
    std::fs::copy(&rewritten, &totals_file).unwrap();
    let losses_dir = copy.join(format!("losses/session_id={session}"));
    let _ = std::fs::remove_dir_all(&losses_dir);
    std::fs::create_dir_all(&losses_dir).unwrap();
    let start = scope_rows(&copy, "SELECT start_ns FROM sessions", &[])[0]["start_ns"]
        .as_i64()
        .unwrap();
    duckdb(&format!(
        "COPY (SELECT 0::UINTEGER AS cpu, {}::BIGINT AS start_ns, {}::BIGINT AS end_ns, 7::UBIGINT AS lost) \
         TO '{}' (FORMAT parquet); SELECT 1 AS ok",
        start + 1_000_000,
        start + 2_000_000,
        losses_dir.join("part-00000.parquet").display()
    ));
    let data = copy.display().to_string();
    let (ok, text, err) = agent(&["report", "--data", &data, "--limit", "0"]);
    assert!(ok, "{err}");
    let leaf = text
        .lines()
        .find(|l| l.contains(" leaf"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(leaf.trim_start().starts_with("≈1000"), "{leaf}");
    assert!(
        leaf.contains("[900–1100]") && leaf.contains("150 recorded"),
        "{leaf}"
    );
    assert!(
        text.contains("7 events lost between +0.001000s and +0.002000s"),
        "{text}"
    );
    let (ok, out, err) = agent(&[
        "report", "--data", &data, "--format", "json", "--limit", "0",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let row = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == "leaf")
        .unwrap();
    assert_eq!(row["exact"], false);
    assert_eq!(row["calls"].as_f64(), Some(1000.0));
    assert_eq!(row["calls_recorded"], 150);
    // Exact functions stay exact.
    let a = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == "a_fn")
        .unwrap();
    assert_eq!(a["exact"], true);
    // --by thread over a sampled session (its `sessions` row says its
    // counts are not all exact): what was recorded, a lower bound, said
    // with ≥ (counts and times) and an open interval.
    let sessions_file = copy.join(format!("sessions/session_id={session}/part-0.parquet"));
    let rewritten = dir.path().join("sessions.parquet");
    duckdb(&format!(
        "COPY (SELECT * REPLACE (false AS calls_exact) FROM read_parquet('{}', hive_partitioning = false)) \
         TO '{}' (FORMAT parquet); SELECT 1 AS ok",
        sessions_file.display(),
        rewritten.display()
    ));
    std::fs::copy(&rewritten, &sessions_file).unwrap();
    let (ok, text, err) = agent(&["report", "--data", &data, "--by", "thread", "--limit", "0"]);
    assert!(ok, "{err}");
    let leaf = text
        .lines()
        .find(|l| l.ends_with(" leaf"))
        .unwrap_or_else(|| panic!("{text}"));
    let cells: Vec<&str> = leaf.split_whitespace().collect();
    assert!(
        cells[1].starts_with('≥') && cells[2].starts_with('≥') && cells[4].starts_with('≥'),
        "{leaf}"
    );
    assert!(text.contains("so at least the true ones (≥)"), "{text}");
    let (ok, out, err) = agent(&[
        "report", "--data", &data, "--by", "thread", "--format", "json", "--limit", "0",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    for r in v["rows"].as_array().unwrap() {
        assert_eq!(r["exact"], false, "{r}");
        assert_eq!(r["calls_low"], r["calls"], "{r}");
        assert!(r["calls_high"].is_null(), "{r}");
    }
}

/// The default path end to end: `record -- CMD` with no flags at all writes
/// `scope-data/` in the working directory, and every reading command with
/// no flags (no `--data`, no `--session`) reads it there: `report`, `tree`,
/// `query` and `export --format folded` (written beside it as
/// `scope-<session>.folded`).
#[test]
fn defaults_record_then_read_in_the_working_directory() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = fixture(Lang::C, "0");
    let run = |args: &[&str]| {
        let out = Command::new(agent_bin())
            .args(args)
            .current_dir(dir.path())
            .env_remove("SCOPE_DATA")
            .output()
            .expect("run scope-agent");
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(
            out.status.success(),
            "scope-agent {args:?} failed:\n{stdout}\n{stderr}"
        );
        stdout
    };
    run(&["record", "--", bin.to_str().unwrap(), "all"]);
    assert!(
        dir.path().join("scope-data/calls").is_dir(),
        "record with no flags did not write scope-data/ in the working directory"
    );

    let report = run(&["report"]);
    let leaf = report
        .lines()
        .find(|l| l.trim_end().ends_with(" leaf"))
        .unwrap_or_else(|| panic!("no leaf row:\n{report}"));
    assert_eq!(
        leaf.split_whitespace().next(),
        Some("150"),
        "leaf's calls in `report`:\n{report}"
    );
    assert!(
        report.contains("estimates from a latency histogram"),
        "the percentiles are not marked as estimates:\n{report}"
    );

    let tree = run(&["tree"]);
    assert!(
        tree.lines().any(|l| l.contains("a_fn")) && tree.lines().any(|l| l.contains("c_fn")),
        "{tree}"
    );

    let count = run(&[
        "query",
        "SELECT count(*) AS n FROM calls c JOIN functions f USING (session_id, function_id) \
         WHERE f.name = 'tleaf'",
        "--format",
        "csv",
    ]);
    assert_eq!(count.trim(), "n\n200", "{count}");

    // The node and its clock, on the default path (no --clock-ref): this
    // host, this boot, and the kernel's NTP state. The clock is taken as
    // UTC (offset 0); an unsynchronized one says so and has no bound, a
    // synchronized one has the kernel's bound.
    let node = run(&[
        "query",
        "SELECT host, boot_id, utc_offset_ns, utc_uncertainty_ns, clock_sync FROM sessions",
        "--format",
        "json",
    ]);
    let node: Vec<serde_json::Value> = serde_json::from_str(&node).expect("JSON rows");
    assert_eq!(node.len(), 1, "{node:?}");
    let node = &node[0];
    let proc = |f: &str| {
        std::fs::read_to_string(format!("/proc/sys/kernel/{f}"))
            .expect("read /proc/sys/kernel")
            .trim()
            .to_string()
    };
    assert_eq!(node["host"], proc("hostname").as_str(), "{node}");
    assert_eq!(node["boot_id"], proc("random/boot_id").as_str(), "{node}");
    assert_eq!(node["utc_offset_ns"], 0, "{node}");
    match node["clock_sync"].as_str() {
        Some("unsynchronized") => assert!(node["utc_uncertainty_ns"].is_null(), "{node}"),
        Some("kernel NTP") => assert!(
            node["utc_uncertainty_ns"].as_i64().is_some_and(|u| u > 0),
            "{node}"
        ),
        _ => panic!("clock_sync on the default path: {node}"),
    }

    // `timeline` with no flags: the latest session's threads merged in
    // time, each call labelled with its thread, the clock stated.
    let tl = run(&["timeline"]);
    let head = tl.lines().next().unwrap_or_default();
    assert!(
        head.starts_with("1 session on 1 host, merged on UTC"),
        "{tl}"
    );
    let clock = match node["clock_sync"].as_str() {
        Some("unsynchronized") => "clock taken as UTC, bound unknown (unsynchronized)",
        _ => "clock taken as UTC, ± ",
    };
    assert!(tl.contains(clock), "{tl}");
    // Rows: `{offset:>14}  {duration:>10}  {host:<w}  {tid:>7}  {indent}{call}`;
    // the main thread's a_fn and a worker's tleaf both show, by time.
    let rows: Vec<(f64, u32, &str)> = tl
        .lines()
        .filter_map(|l| {
            let off = l.get(..14)?.trim().strip_prefix('+')?.strip_suffix('s')?;
            let mut f = l.get(28..)?.split_whitespace();
            let _host = f.next()?;
            let tid = f.next()?.parse().ok()?;
            Some((off.parse().ok()?, tid, f.next()?))
        })
        .collect();
    assert!(
        rows.windows(2).all(|w| w[0].0 <= w[1].0),
        "not in time order:\n{tl}"
    );
    let tid_of = |name: &str| {
        rows.iter()
            .find(|r| r.2.starts_with(&format!("{name}(")))
            .map(|r| r.1)
            .unwrap_or_else(|| panic!("no {name} call:\n{tl}"))
    };
    assert_ne!(tid_of("a_fn"), tid_of("tleaf"), "{tl}");

    run(&["export", "--format", "folded"]);
    let folded: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .expect("read the working directory")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "folded"))
        .collect();
    assert_eq!(folded.len(), 1, "export wrote {folded:?}");
    let text = std::fs::read_to_string(&folded[0]).expect("read the folded stacks");
    assert!(
        text.lines().any(|l| l.contains("a_fn;b_fn;c_fn;leaf ")),
        "{text}"
    );
}

/// The viewer's first view reads the summaries the agent writes at the end
/// of a session instead of every call: the thread list from `threads`
/// equals DuckDB's `GROUP BY tid` over the calls, and a whole thread's
/// timeline from `overview` equals a scan of the calls at the same start
/// and pixel, frames and grey runs alike.
#[test]
fn the_summaries_answer_like_a_scan_of_the_calls() {
    use scope_query::{OpenOptions, SessionSel, Store, travel};
    let dir = all_store();
    let store = Store::open(
        dir.to_str().unwrap(),
        &OpenOptions {
            sessions: SessionSel::Latest,
            ..OpenOptions::default()
        },
    )
    .unwrap();
    assert!(store.has_table("threads") && store.has_table("overview"));
    let threads = travel::threads(&store).unwrap();
    let want: Vec<(i64, i64, i64, i64)> = duckdb(&format!(
        "SELECT tid, count(*) AS n, min(start_ns) AS s, \
           max(start_ns + coalesce(duration_ns, 0)) AS e \
         FROM read_parquet('{}') GROUP BY tid ORDER BY tid",
        calls_glob(dir)
    ))
    .iter()
    .map(|r| {
        let v = |k: &str| r[k].as_i64().unwrap();
        (v("tid"), v("n"), v("s"), v("e"))
    })
    .collect();
    assert_eq!(threads, want);

    let span = travel::session_span(&store).unwrap();
    let mut from_summary = 0;
    for &(tid, ..) in &threads {
        for width in [20, 300, 1400, 100_000] {
            let min_ns = ((span.end_ns - span.start_ns) / width).max(1);
            let a = travel::detail(
                &store,
                tid as u32,
                span.start_ns,
                span.end_ns,
                min_ns,
                100_000,
            )
            .unwrap();
            let mut b = travel::detail_from_calls(
                &store,
                tid as u32,
                a.from_ns,
                span.end_ns,
                a.min_ns,
                100_000,
            )
            .unwrap();
            if a.summary {
                from_summary += 1;
                assert!(a.min_ns <= min_ns && a.from_ns <= span.start_ns, "{a:?}");
                b.summary = true;
            }
            assert_eq!(a, b, "tid {tid}, {width} pixels");
            let calls: i64 = a.calls.len() as i64 + a.hidden.iter().map(|h| h.3).sum::<i64>();
            let n = threads.iter().find(|t| t.0 == tid).unwrap().1;
            assert_eq!(
                calls, n,
                "tid {tid}, {width} pixels: every call drawn or merged"
            );
        }
    }
    assert!(from_summary > 0, "the summary answered no request");
}
