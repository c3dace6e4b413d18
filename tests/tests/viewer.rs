//! `scope-agent serve` in a real browser: Debian's headless Chromium driven
//! over the DevTools protocol (scope_tests::cdp) loads each view of the
//! viewer against a recording of the demo program (examples/demo/demo.c,
//! recorded with `record` and no flags but `--out`, then `analyze`), and
//! the DOM is checked against the command line and DuckDB:
//!
//! - the function table's rows are `report`'s (names, counts, totals);
//! - the timeline of the demo's thread draws exactly the calls DuckDB finds
//!   at least one pixel long in the range the page shows;
//! - a click in a lane gives the stack `stack --at` gives at that instant;
//! - the flame graph, source, SQL and findings views show what the store
//!   holds; no view raises a JavaScript error.
//!
//! A screenshot of each view goes to `<target>/artifacts/viewer/` (the CI
//! log's artifacts folder; docs/screenshots/ has copies for the README).
//! `serve` itself runs with its defaults (a free port on 127.0.0.1).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use scope_tests::cdp::Browser;
use scope_tests::*;
use serde_json::Value;

/// examples/demo/demo.c compiled as `cargo xtask demo` compiles it (its
/// DWARF names the real source file, for the source view).
fn demo_binary() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(build_demo).clone()
}

fn build_demo() -> PathBuf {
    let src = workspace_root().join("examples/demo/demo.c");
    let dir = target_dir().join("fixtures/viewer");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("demo");
    let tmp = dir.join(format!(".demo.{}", std::process::id()));
    let status = Command::new("cc")
        .args(["-g", "-O1", "-fno-omit-frame-pointer", "-o"])
        .arg(&tmp)
        .arg(&src)
        .status()
        .expect("cannot run cc");
    assert!(status.success(), "cc {} failed", src.display());
    std::fs::rename(&tmp, &out).unwrap();
    out
}

/// Where screenshots go.
fn artifacts() -> PathBuf {
    std::env::var_os("SCOPE_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("artifacts"))
        .join("viewer")
}

/// A recording of the demo, analyzed, and `serve` running over it.
struct Served {
    _dir: tempfile::TempDir,
    data: PathBuf,
    session: String,
    tid: i64,
    /// Threads that made calls.
    threads: usize,
    url: String,
    _serve: RunningAgent,
}

fn served() -> Served {
    require_root();
    let demo = demo_binary();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let run = record_with(&data, &[], &[], &[&demo.display().to_string()]);
    assert_success(&run);
    let d = data.display().to_string();
    assert_success(&run_agent(&["analyze", "--data", &d]));
    let sessions = duckdb(&format!(
        "SELECT DISTINCT session_id FROM read_parquet('{}', hive_partitioning = true)",
        calls_glob(&data)
    ));
    let session = sessions[0]["session_id"].as_str().unwrap().to_string();
    let tids = duckdb(&format!(
        "SELECT tid, count(*) AS n FROM read_parquet('{}') GROUP BY tid ORDER BY n DESC",
        calls_glob(&data)
    ));
    let tid = tids[0]["tid"].as_i64().unwrap();
    let threads = tids.len();
    let serve = spawn_agent(&["serve", "--data", &d]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let url = loop {
        let out = serve.stdout_so_far();
        if let Some(at) = out.find("http://127.0.0.1:") {
            let url = out[at..].split_whitespace().next().unwrap().to_string();
            break url;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "serve printed no URL: {}\n{}",
            out,
            serve.stderr_so_far()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    Served {
        _dir: dir,
        data,
        session,
        tid,
        threads,
        url,
        _serve: serve,
    }
}

/// Opens `view` (a hash route) and waits until the page says it is ready.
fn open(b: &mut Browser, s: &Served, route: &str) {
    b.goto(&format!("{}#/{route}", s.url)).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    b.wait_for("document.body && document.body.dataset.ready === '1'", 60)
        .unwrap_or_else(|e| panic!("{route}: {e}; errors: {:?}", b.errors));
}

fn shot(b: &mut Browser, name: &str) {
    let path = artifacts().join(format!("{name}.png"));
    b.screenshot(&path).unwrap();
    eprintln!("screenshot: {}", path.display());
}

fn js(b: &mut Browser, expr: &str) -> Value {
    b.eval(expr).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn every_view_shows_what_the_command_line_shows() {
    let s = served();
    let mut b = Browser::launch(1400, 900).unwrap_or_else(|e| panic!("{e}"));
    let d = s.data.display().to_string();

    // Functions: report's rows, in its order, with its counts and totals.
    open(&mut b, &s, &format!("functions?session={}", s.session));
    let rows = js(
        &mut b,
        "JSON.stringify([...document.querySelectorAll('#functions tbody tr[data-function-id]')].map(r => ({
            name: r.querySelector('td[data-col=name]').textContent.trim(),
            calls: Number(r.querySelector('td[data-col=calls]').dataset.value),
            total: Number(r.querySelector('td[data-col=total_ns]').dataset.value)})))",
    );
    let rows: Vec<Value> = serde_json::from_str(rows.as_str().unwrap()).unwrap();
    let report = run_agent(&["report", "--data", &d, "--format", "json", "--limit", "0"]);
    assert_success(&report);
    let report: Value = serde_json::from_str(&report.stdout).unwrap();
    let expected = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), expected.len(), "{rows:?}");
    for (got, want) in rows.iter().zip(expected) {
        assert!(
            got["name"]
                .as_str()
                .unwrap()
                .starts_with(want["key"].as_str().unwrap()),
            "{got} vs {want}"
        );
        assert_eq!(
            got["calls"].as_f64(),
            want["calls"].as_f64(),
            "{got} vs {want}"
        );
        assert_eq!(
            got["total"].as_f64(),
            want["total_ns"].as_f64(),
            "{got} vs {want}"
        );
    }
    // A row's histogram.
    b.eval("document.querySelector('#functions tbody tr[data-function-id]').click()")
        .unwrap();
    b.wait_for(
        "document.body.dataset.ready === '1' && document.querySelectorAll('#histogram rect.hbar').length > 0",
        30,
    )
    .unwrap();
    shot(&mut b, "functions");

    // Timeline: exactly the calls DuckDB finds at least a pixel long.
    open(
        &mut b,
        &s,
        &format!("timeline?session={}&tid={}", s.session, s.tid),
    );
    let drawn = js(
        &mut b,
        "JSON.stringify({bars: document.querySelectorAll('#timeline-svg rect.bar').length,
            d: document.querySelector('#timeline-svg').dataset})",
    );
    let drawn: Value = serde_json::from_str(drawn.as_str().unwrap()).unwrap();
    let (from, to, min) = (
        drawn["d"]["fromNs"].as_str().unwrap(),
        drawn["d"]["toNs"].as_str().unwrap(),
        drawn["d"]["minNs"].as_str().unwrap(),
    );
    let n = duckdb(&format!(
        "SELECT count(*) AS n FROM read_parquet('{}') WHERE tid = {} AND start_ns <= {to} \
         AND (duration_ns IS NULL OR start_ns + duration_ns >= {from}) \
         AND (duration_ns IS NULL OR duration_ns >= {min})",
        calls_glob(&s.data),
        s.tid
    ));
    let want = n[0]["n"].as_i64().unwrap();
    assert!(want > 0, "nothing to draw: {drawn}");
    assert_eq!(drawn["bars"].as_i64(), Some(want), "{drawn}");
    // A click on the deepest bar drawn gives `stack --at`'s frames.
    let target = js(
        &mut b,
        "(() => { const bars = [...document.querySelectorAll('#timeline-svg rect.bar')];
            bars.sort((a, b) => b.dataset.depth - a.dataset.depth || b.getBoundingClientRect().width - a.getBoundingClientRect().width);
            const r = bars[0].getBoundingClientRect(); return [r.left + r.width / 2, r.top + r.height / 2]; })()",
    );
    let (x, y) = (target[0].as_f64().unwrap(), target[1].as_f64().unwrap());
    b.click(x, y).unwrap();
    b.wait_for(
        "document.body.dataset.ready === '1' && document.querySelectorAll('#stack li').length > 0",
        30,
    )
    .unwrap_or_else(|e| panic!("{e}; errors: {:?}", b.errors));
    let clicked = js(
        &mut b,
        "JSON.stringify({at: document.querySelector('#stack').dataset.atNs,
            names: [...document.querySelectorAll('#stack li .frame-name')].map(e => e.textContent.trim())})",
    );
    let clicked: Value = serde_json::from_str(clicked.as_str().unwrap()).unwrap();
    let at = clicked["at"].as_str().unwrap();
    let st = run_agent(&[
        "stack",
        "--data",
        &d,
        "--tid",
        &s.tid.to_string(),
        "--at",
        at,
    ]);
    assert_success(&st);
    // `stack` prints `#k  name(args)  at file:line`, innermost first.
    let mut cli: Vec<String> = st
        .stdout
        .lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let rest = l.strip_prefix('#')?;
            let name = rest.split_once(char::is_whitespace)?.1.trim_start();
            Some(name[..name.find('(')?].to_string())
        })
        .collect();
    cli.reverse();
    let page: Vec<String> = clicked["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert!(cli.len() >= 2, "{}", st.stdout);
    assert_eq!(
        page, cli,
        "stack at {at}: page vs `stack --at`:\n{}",
        st.stdout
    );
    shot(&mut b, "timeline");

    // Flame graph: main at the top of the tree, every frame a function.
    open(&mut b, &s, &format!("flame?session={}", s.session));
    let names = js(
        &mut b,
        "JSON.stringify([...new Set([...document.querySelectorAll('#flame-svg rect.frame')].map(r => r.dataset.name))])",
    );
    let names: Vec<String> = serde_json::from_str(names.as_str().unwrap()).unwrap();
    assert!(names.iter().any(|n| n == "main"), "{names:?}");
    assert!(names.len() >= 5, "{names:?}");
    // The call tree beside it: main's total is report's (self times
    // summed down the tree give the inclusive time back, to the ns).
    let main_total = js(
        &mut b,
        "Number(document.querySelector('#call-tree tr.tree-row[data-path=\"main\"] td[data-col=total]').dataset.value)",
    );
    let report_main = expected
        .iter()
        .find(|r| r["key"] == "main")
        .and_then(|r| r["total_ns"].as_f64());
    assert_eq!(main_total.as_f64(), report_main);
    shot(&mut b, "flame");

    // Source: the demo's file, line for line, the function's line marked,
    // findings located in it pinned.
    let f = duckdb(&format!(
        "SELECT function_id, line FROM read_parquet('{}') WHERE name = 'parse_record'",
        functions_glob(&s.data)
    ));
    let (fid, line) = (
        f[0]["function_id"].as_i64().unwrap(),
        f[0]["line"].as_i64().unwrap(),
    );
    open(
        &mut b,
        &s,
        &format!("source?session={}&function_id={fid}", s.session),
    );
    let src = std::fs::read_to_string(workspace_root().join("examples/demo/demo.c")).unwrap();
    let shown = js(
        &mut b,
        "document.querySelectorAll('#source tr.src-line').length",
    );
    assert_eq!(shown.as_u64(), Some(src.lines().count() as u64));
    let marked = js(
        &mut b,
        &format!("!!document.querySelector('#source tr.src-line[data-line=\"{line}\"].fn-line')"),
    );
    assert_eq!(marked, Value::Bool(true), "line {line} not marked");
    let located = duckdb(&format!(
        "SELECT id FROM read_parquet('{}/findings/**/*.parquet') WHERE location LIKE '%demo.c:%'",
        s.data.display()
    ));
    let pinned = js(
        &mut b,
        "document.querySelectorAll('#source a.finding').length",
    );
    assert_eq!(pinned.as_u64(), Some(located.len() as u64), "{located:?}");
    shot(&mut b, "source");

    // SQL: typed and run with a real click; the rows DuckDB gives.
    open(&mut b, &s, "sql");
    b.eval(
        "(() => { const t = document.querySelector('#sql');
            t.value = 'SELECT name FROM functions ORDER BY name'; t.dispatchEvent(new Event('input')); })()",
    )
    .unwrap();
    let run_at = js(
        &mut b,
        "(() => { const r = document.querySelector('#sql-run').getBoundingClientRect(); return [r.left + r.width / 2, r.top + r.height / 2]; })()",
    );
    b.click(run_at[0].as_f64().unwrap(), run_at[1].as_f64().unwrap())
        .unwrap();
    b.wait_for(
        "document.body.dataset.ready === '1' && document.querySelectorAll('#sql-result tbody tr').length > 0",
        30,
    )
    .unwrap_or_else(|e| panic!("{e}; errors: {:?}", b.errors));
    let got = js(
        &mut b,
        "JSON.stringify([...document.querySelectorAll('#sql-result tbody tr')].map(r => r.cells[0].textContent.trim()))",
    );
    let got: Vec<String> = serde_json::from_str(got.as_str().unwrap()).unwrap();
    let want: Vec<String> = duckdb(&format!(
        "SELECT name FROM read_parquet('{}') ORDER BY name",
        functions_glob(&s.data)
    ))
    .iter()
    .map(|r| r["name"].as_str().unwrap().to_string())
    .collect();
    assert_eq!(got, want);
    shot(&mut b, "sql");

    // Findings: every row of the findings table.
    open(&mut b, &s, &format!("findings?session={}", s.session));
    let n = js(
        &mut b,
        "document.querySelectorAll('#findings li.finding-item').length",
    );
    let want = duckdb(&format!(
        "SELECT count(*) AS n FROM read_parquet('{}/findings/**/*.parquet')",
        s.data.display()
    ));
    assert_eq!(n.as_i64(), want[0]["n"].as_i64());
    shot(&mut b, "findings");

    assert!(b.errors.is_empty(), "JavaScript errors: {:?}", b.errors);
}

/// A request to the server without a browser: (status, body).
fn get(url: &str, token: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "--path-as-is", "-o", "-", "-w", "\n%{http_code}", url]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("X-Scope-Token: {t}")]);
    }
    let out = cmd.output().expect("cannot run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn post(url: &str, token: &str, body: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "-X",
            "POST",
            "-d",
            body,
        ])
        .args(["-H", &format!("X-Scope-Token: {token}"), url])
        .output()
        .expect("cannot run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn the_server_answers_only_with_the_token_and_only_reads() {
    let s = served();
    let (base, token) = s.url.split_once("/?token=").unwrap();
    // Loopback only.
    assert!(base.starts_with("http://127.0.0.1:"), "{}", s.url);
    // No token, a wrong token: 401, for the page and the API alike.
    assert_eq!(get(&format!("{base}/"), None).0, 401);
    assert_eq!(get(&format!("{base}/app.js"), None).0, 401);
    let (code, body) = get(&format!("{base}/api/sessions"), Some("0123"));
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("token"), "{body}");
    // With it: the page (its files carry the token) and the API.
    let (code, page) = get(&s.url, None);
    assert_eq!(code, 200);
    assert!(page.contains(&format!("/app.js?token={token}")), "{page}");
    let (code, body) = get(&format!("{base}/api/sessions"), Some(token));
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(&s.session), "{body}");
    // Each session's calls and threads, counted from the files' footers.
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    let ours = list["sessions"]
        .as_array()
        .and_then(|l| l.iter().find(|v| v["session_id"] == s.session.as_str()))
        .unwrap_or_else(|| panic!("{body}"));
    assert_eq!(ours["threads"], s.threads, "{ours}");
    assert!(ours["calls"].as_u64().is_some_and(|n| n > 0), "{ours}");
    // Read-only SQL: no DDL, no DML, no SET; one statement.
    for sql in [
        "CREATE TABLE x AS SELECT 1",
        "DROP TABLE calls",
        "INSERT INTO calls SELECT * FROM calls",
        "SET datafusion.execution.batch_size = 1",
        "SELECT 1; SELECT 2",
    ] {
        let (code, body) = post(
            &format!("{base}/api/query"),
            token,
            &serde_json::json!({ "sql": sql }).to_string(),
        );
        assert_eq!(code, 400, "{sql}: {body}");
        assert!(body.contains("\"error\""), "{sql}: {body}");
    }
    // No file but those `functions` names: an unknown function id, a path.
    let (code, body) = get(
        &format!("{base}/api/source?function_id=999999"),
        Some(token),
    );
    assert!(code == 404 || code == 400, "{code} {body}");
    let (code, _) = get(&format!("{base}/../../etc/passwd"), Some(token));
    assert_eq!(code, 404);
    let (code, body) = get(
        &format!("{base}/api/sessions/../../etc/passwd"),
        Some(token),
    );
    assert_eq!(code, 404, "{body}");
    // Bad input gets a message naming it.
    let (code, body) = get(
        &format!("{base}/api/timeline?session={}&tid=abc", s.session),
        Some(token),
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("tid"), "{body}");
    let (code, body) = get(&format!("{base}/api/functions?session=nope"), Some(token));
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("nope"), "{body}");
    let _ = Path::new(&s.data);
}
