//! `scope-agent attach` to a fixture that is already running: probes go live
//! mid-run, the agent stops on the target's exit, on --duration and on
//! SIGINT, and a SIGKILLed agent leaves readable files and no probes.
//!
//! `attach` samples hot functions by default (a 5% budget), so its counts
//! would be estimates: every test here counts exactly and passes
//! `--max-overhead off` in its own argument list.

use std::time::Duration;

use scope_tests::*;

fn count_calls(out: &std::path::Path) -> i64 {
    let rows = duckdb(&format!(
        "SELECT count(*) AS n FROM read_parquet('{}', hive_partitioning=true)",
        calls_glob(out)
    ));
    rows[0]["n"].as_i64().unwrap()
}

#[test]
fn attach_counts_exactly_and_stops_when_the_target_exits() {
    require_root();
    let bin = fixture(Lang::C, "2");
    let mut target = ServeFixture::spawn(&bin);
    // Calls before the attach are not recorded.
    target.run("count 50");
    let dir = tempfile::tempdir().unwrap();
    let pid = target.pid.to_string();
    let out = dir.path().display().to_string();
    let before = wall_clock_ns();
    let mut agent = spawn_agent(&[
        "attach",
        "--pid",
        &pid,
        // Exact counts: record every call (attach samples hot functions at
        // 5% by default).
        "--max-overhead",
        "off",
        "-f",
        "leaf",
        "-f",
        "a_fn",
        "--out",
        &out,
    ]);
    agent.wait_for_stderr("attached", Duration::from_secs(60));
    target.run("count 300");
    target.run("nest 20");
    target.close_stdin();
    let status = target.wait();
    assert!(status.success());
    let run = agent.wait(Duration::from_secs(60));
    let after = wall_clock_ns();
    assert!(run.status.success(), "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!("pid {pid} exited")),
        "{}",
        run.stderr
    );
    let rows = duckdb(&format!(
        "SELECT f.name AS name, count(*) AS n FROM read_parquet('{}', hive_partitioning=true) c \
         JOIN read_parquet('{}', hive_partitioning=true) f USING (session_id, function_id) GROUP BY 1 ORDER BY 1",
        calls_glob(dir.path()),
        functions_glob(dir.path())
    ));
    let got: Vec<(String, i64)> = rows
        .iter()
        .map(|r| (r["name"].as_str().unwrap().into(), r["n"].as_i64().unwrap()))
        .collect();
    assert_eq!(got, vec![("a_fn".into(), 20), ("leaf".into(), 320)]);
    // The calls' times are the session's, and the session's the wall
    // clock's: attach's clock offset too.
    assert_eq!(assert_calls_within_session(dir.path(), before, after), 340);
}

/// An idle target: the probes are live once the agent says `attached`
/// (exactly the calls made between that and the --duration stop are
/// recorded), and gone after it (the target still answers, and its later
/// calls are not recorded).
#[test]
fn attach_stops_at_duration_and_leaves_the_target_running() {
    require_root();
    let bin = fixture(Lang::C, "0");
    let mut target = ServeFixture::spawn(&bin);
    // Before the attach: not recorded.
    target.run("count 7");
    let dir = tempfile::tempdir().unwrap();
    let pid = target.pid.to_string();
    let out = dir.path().display().to_string();
    let mut agent = spawn_agent(&[
        "attach",
        "--pid",
        &pid,
        // Exact counts: record every call (attach samples hot functions at
        // 5% by default, and its warm-up only counts).
        "--max-overhead",
        "off",
        "-f",
        "leaf",
        "--duration",
        "3s",
        "--out",
        &out,
    ]);
    agent.wait_for_stderr("attached", Duration::from_secs(60));
    // --duration counts from after the `attached` line, which this test
    // sees at most milliseconds late; 123 calls take milliseconds, even on
    // a loaded machine, and well under 2 s they are surely inside the 3 s.
    let seen = std::time::Instant::now();
    target.run("count 123");
    let took = seen.elapsed();
    let run = agent.wait(Duration::from_secs(60));
    assert!(run.status.success(), "{}", run.stderr);
    assert!(run.stderr.contains("--duration"), "{}", run.stderr);
    assert!(
        took < Duration::from_secs(2),
        "`count 123` took {took:?}: too slow to be sure it ran inside the --duration window"
    );
    // The target is still alive and unprobed: it still answers, and these
    // calls are not recorded.
    target.run("count 10");
    assert_eq!(count_calls(dir.path()), 123, "{}", run.stderr);
    target.close_stdin();
    assert!(target.wait().success());
}

#[test]
fn attach_stops_on_sigint_and_multithreaded_counts() {
    require_root();
    let bin = fixture(Lang::C, "2");
    let mut target = ServeFixture::spawn(&bin);
    let dir = tempfile::tempdir().unwrap();
    let pid = target.pid.to_string();
    let out = dir.path().display().to_string();
    let mut agent = spawn_agent(&[
        "attach",
        "--pid",
        &pid,
        // Exact counts: record every call (attach samples hot functions at
        // 5% by default).
        "--max-overhead",
        "off",
        "-f",
        "tleaf",
        "--out",
        &out,
    ]);
    agent.wait_for_stderr("attached", Duration::from_secs(60));
    target.run("threads 3 400");
    agent.signal(libc::SIGINT);
    let run = agent.wait(Duration::from_secs(60));
    assert!(run.status.success(), "{}", run.stderr);
    assert!(run.stderr.contains("interrupted"), "{}", run.stderr);
    let rows = duckdb(&format!(
        "SELECT tid, count(*) AS n FROM read_parquet('{}', hive_partitioning=true) GROUP BY tid",
        calls_glob(dir.path())
    ));
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(
        rows.iter().all(|r| r["n"].as_i64() == Some(400)),
        "{rows:?}"
    );
}

#[test]
fn a_killed_agent_leaves_readable_segments_and_no_probes() {
    require_root();
    let bin = fixture(Lang::C, "2");
    let mut target = ServeFixture::spawn(&bin);
    let dir = tempfile::tempdir().unwrap();
    let pid = target.pid.to_string();
    let out = dir.path().display().to_string();
    let mut agent = spawn_agent(&[
        "attach",
        "--pid",
        &pid,
        // Every call, through the module's two shared links: the governor
        // (on by default for attach) would count first and give a hot
        // function links of its own.
        "--max-overhead",
        "off",
        "-f",
        "leaf",
        "--out",
        &out,
        "--segment-rows",
        "1000",
    ]);
    agent.wait_for_stderr("attached", Duration::from_secs(60));
    target.run("count 5000");
    // Give the writer time to close the full segments.
    std::thread::sleep(Duration::from_secs(2));
    // The agent holds exactly two uprobe_multi links (entry and return of
    // one module), seen through its fds; they must be gone after the kill.
    let held = link_ids_held_by(agent.pid());
    assert_eq!(held.len(), 2, "entry and return links: {held:?}");
    assert!(
        held.iter().all(|id| bpf_link_ids().contains(id)),
        "{held:?}"
    );
    agent.signal(libc::SIGKILL);
    let _ = agent.wait(Duration::from_secs(30));
    // Every file under a .parquet name is complete and readable.
    let n = count_calls(dir.path());

    assert!(n > 4000, "all but the open segment survive a SIGKILL: {n}");
    // The agent's links died with it: the target runs unprobed and fine.
    target.run("count 100");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while held.iter().any(|id| bpf_link_ids().contains(id)) {
        assert!(
            std::time::Instant::now() < deadline,
            "links {held:?} outlived the agent: {:?}",
            bpf_link_ids()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Ids of the uprobe_multi links (entry and return) a process holds open.
fn link_ids_held_by(pid: u32) -> Vec<u32> {
    bpf_links_held_by(pid)
        .into_iter()
        .filter(|(_, kind)| kind.contains("probe_multi"))
        .map(|(id, _)| id)
        .collect()
}
