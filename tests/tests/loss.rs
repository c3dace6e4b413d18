//! No silent loss: a flooded ring buffer loses events, and every lost event
//! is accounted for. `events + lost` equals the fixture's exact number of
//! probe hits, the `losses` rows add up to the session's `lost`, and the
//! `calls` rows account for every event that was read.
//!
//! How the loss is made honestly, without a test-only knob in the agent: the
//! ring is the smallest the kernel allows (one 4 KiB page, 128 events), and
//! the test stops the agent with SIGSTOP for 300 ms while the fixture runs,
//! so the ring fills and the kernel counts every event it cannot reserve;
//! SIGCONT lets the agent drain and finish normally.
//!
//! Every recording here takes `record`'s default path (every call).

use std::time::Duration;

use scope_tests::*;

const N: i64 = 200_000;

fn one(sql: &str) -> serde_json::Map<String, serde_json::Value> {
    let mut rows = duckdb(sql);
    assert_eq!(rows.len(), 1, "{sql}: {rows:?}");
    rows.remove(0)
}

fn int(row: &serde_json::Map<String, serde_json::Value>, key: &str) -> i64 {
    row[key]
        .as_i64()
        .unwrap_or_else(|| panic!("{key} is not an integer in {row:?}"))
}

#[test]
fn recorded_plus_lost_is_exactly_every_probe_hit() {
    require_root();
    let bin = fixture(Lang::C, "2");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().display().to_string();
    let n = N.to_string();
    let bin_s = bin.display().to_string();
    let mut agent = spawn_agent(&[
        "record",
        "-q",
        // No --max-overhead: record's default records every call, and the
        // exact count is the point.
        "--ring-size",
        "4K",
        "--status-interval",
        "500ms",
        "-f",
        "leaf",
        "--out",
        &out,
        "--",
        &bin_s,
        "count",
        &n,
    ]);
    agent.wait_for_stderr("attached", Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(300));
    agent.signal(libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(300));
    agent.signal(libc::SIGCONT);
    let run = agent.wait(Duration::from_secs(120));
    assert!(run.status.success(), "{}", run.stderr);

    let d = dir.path().display();
    // With events lost no count is exact: `calls` is what was recorded,
    // `calls_exact` false.
    let session = one(&format!(
        "SELECT events, calls_recorded, calls, calls_exact, lost FROM read_parquet('{d}/sessions/**/*.parquet')"
    ));
    let (events, calls, lost) = (
        int(&session, "events"),
        int(&session, "calls_recorded"),
        int(&session, "lost"),
    );
    assert_eq!(session["calls_exact"], false, "{session:?}");
    assert!(
        lost > 0,
        "the stopped agent should have lost events: {session:?}"
    );
    assert_eq!(events + lost, 2 * N, "entry + return per call: {session:?}");

    // The losses rows add up, each window is well formed, and the windows of
    // one CPU follow each other without overlapping.
    let losses = duckdb(&format!(
        "SELECT cpu, start_ns, end_ns, lost FROM read_parquet('{d}/losses/**/*.parquet') ORDER BY cpu, start_ns"
    ));
    assert_eq!(
        losses.iter().map(|r| int(r, "lost")).sum::<i64>(),
        lost,
        "{losses:?}"
    );
    for w in losses.windows(2) {
        if w[0]["cpu"] == w[1]["cpu"] {
            assert!(int(&w[0], "end_ns") <= int(&w[1], "start_ns"), "{w:?}");
        }
    }
    assert!(
        losses
            .iter()
            .all(|r| int(r, "start_ns") < int(r, "end_ns") && int(r, "lost") > 0),
        "{losses:?}"
    );

    // Every event read is in exactly one calls row: a complete call holds two
    // (flags 0), a call marked incomplete holds one (entry missing: the
    // return; return missing, unwound, beyond the return-probe limit: the
    // entry). Flag 16 (events lost while open) says nothing about edges.
    let rows = one(&format!(
        "SELECT count(*) AS n, \
                sum(CASE WHEN flags & 15 = 0 THEN 2 ELSE 1 END) AS edges, \
                count(*) FILTER (WHERE flags & 15 = 0 AND (duration_ns IS NULL OR self_ns IS NULL)) AS bad_complete, \
                count(*) FILTER (WHERE flags & 15 <> 0) AS marked, \
                count(*) FILTER (WHERE flags & 16 <> 0) AS loss_marked \
         FROM read_parquet('{}')",
        calls_glob(dir.path())
    ));
    assert_eq!(int(&rows, "n"), calls, "{rows:?}");
    assert_eq!(int(&rows, "edges"), events, "{rows:?}");
    assert_eq!(int(&rows, "bad_complete"), 0, "{rows:?}");
    assert!(
        int(&rows, "marked") > 0,
        "lost edges leave marked calls: {rows:?}"
    );

    // Calls open while events were lost are marked, and the summary says
    // how many.
    let loss_marked = int(&rows, "loss_marked");
    assert!(loss_marked > 0, "{rows:?}");
    assert!(
        run.stderr.contains(&format!(
            "{loss_marked} calls were open while the kernel lost events"
        )),
        "{}",
        run.stderr
    );
    // The summary says it too.
    assert!(
        run.stderr.contains(&format!("{lost} lost (")),
        "{}",
        run.stderr
    );
    // And agent_metrics ends with the session's totals.
    let last = one(&format!(
        "SELECT events, lost FROM read_parquet('{d}/agent_metrics/**/*.parquet') ORDER BY ts_ns DESC LIMIT 1"
    ));
    assert_eq!((int(&last, "events"), int(&last, "lost")), (events, lost));
}

#[test]
fn a_ring_below_one_page_is_refused_with_a_clear_message() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().display().to_string();
    let run = run_agent(&[
        "record",
        "--ring-size",
        "1K",
        "-f",
        "leaf",
        "--out",
        &out,
        "--",
        "/bin/true",
    ]);
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("'1K'"), "{}", run.stderr);
}

#[test]
fn status_lines_and_agent_metrics_while_recording() {
    require_root();
    let bin = fixture(Lang::C, "2");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().display().to_string();
    let bin_s = bin.display().to_string();
    let run = run_agent(&[
        "record",
        "--status-interval",
        "200ms",
        "-f",
        "sleeper",
        "--out",
        &out,
        "--",
        &bin_s,
        "sleep",
        "300",
        "5",
    ]);
    assert!(run.status.success(), "{}", run.stderr);
    // Not a terminal: plain lines, one per interval, with every figure.
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("events/s"))
        .collect();
    assert!(lines.len() >= 3, "{}", run.stderr);
    for l in &lines {
        for part in ["calls", "lost", "ring ", "agent cpu", "files"] {
            assert!(l.contains(part), "{part:?} missing in {l:?}");
        }
        assert!(!l.contains('\r'), "{l:?}");
    }
    // One agent_metrics row a second (1.5 s run: at least one, plus the
    // final row), with the final row holding the session's totals.
    let d = dir.path().display();
    let rows = duckdb(&format!(
        "SELECT events, call_rows, lost, ring_fill_pct, agent_cpu_pct, files_written \
         FROM read_parquet('{d}/agent_metrics/**/*.parquet') ORDER BY ts_ns"
    ));
    assert!(rows.len() >= 2, "{rows:?}");
    let last = rows.last().unwrap();
    assert_eq!(int(last, "events"), 10, "{rows:?}");
    assert_eq!(int(last, "call_rows"), 5, "{rows:?}");
    assert_eq!(int(last, "lost"), 0, "{rows:?}");
    assert!(last["ring_fill_pct"].is_number(), "{rows:?}");
    // With -q, no status lines.
    let dir2 = tempfile::tempdir().unwrap();
    let out2 = dir2.path().display().to_string();
    let quiet = run_agent(&[
        "record",
        "-q",
        "--status-interval",
        "100ms",
        "-f",
        "sleeper",
        "--out",
        &out2,
        "--",
        &bin_s,
        "sleep",
        "100",
        "5",
    ]);
    assert!(quiet.status.success(), "{}", quiet.stderr);
    assert!(!quiet.stderr.contains("events/s"), "{}", quiet.stderr);
}
