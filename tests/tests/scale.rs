//! Attach at scale and the attach modes: `-f 'f*'` over a generated
//! program with 10,001 functions counts every call exactly; `-f '*'` on a
//! running process attaches everything, stops on SIGINT in bounded time and
//! leaves no link behind; the per-function fallback (`--attach-mode single`)
//! counts exactly too. `record` runs its default path (every call); the
//! `attach` test says `--max-overhead off` (every call, in the module's two
//! shared links).

use std::collections::BTreeMap;
use std::time::Duration;

use scope_tests::*;

/// Functions in the generated program, besides `fhot`.
const N: usize = 10_000;

/// `calls per function → how many functions` over the calls of `out`,
/// for functions whose name matches the SQL LIKE pattern `like`.
fn histogram(out: &std::path::Path, like: &str) -> BTreeMap<i64, i64> {
    let rows = duckdb(&format!(
        "SELECT n, count(*) AS functions FROM (\
           SELECT f.name, count(*) AS n \
           FROM read_parquet('{}', hive_partitioning=true) c \
           JOIN read_parquet('{}', hive_partitioning=true) f USING (session_id, function_id) \
           WHERE f.name LIKE '{like}' GROUP BY 1) GROUP BY 1 ORDER BY 1",
        calls_glob(out),
        functions_glob(out)
    ));
    rows.iter()
        .map(|r| (r["n"].as_i64().unwrap(), r["functions"].as_i64().unwrap()))
        .collect()
}

#[test]
fn record_f_star_on_ten_thousand_functions_counts_exactly() {
    require_root();
    let bin = many_functions_fixture(N);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().display().to_string();
    let bin_s = bin.display().to_string();
    let run = run_agent(&[
        "record", "-q", "--out", &out, "-f", "f*", "--", &bin_s, "run", "1",
    ]);
    assert!(run.status.success(), "{}", run.stderr);
    // --max-functions (default 1000) only limits the default plan, not -f.
    assert!(
        run.stderr
            .contains(&format!("attached {} functions", N + 1)),
        "{}",
        run.stderr
    );
    let expected: BTreeMap<i64, i64> = [(1, N as i64), (3, 1)].into();
    assert_eq!(histogram(dir.path(), "f%"), expected);
}

#[test]
fn attach_star_to_a_running_process_then_sigint_detaches_every_link() {
    require_root();
    let bin = many_functions_fixture(N);
    let mut target = ServeFixture::spawn(&bin);
    let dir = tempfile::tempdir().unwrap();
    let pid = target.pid.to_string();
    let out = dir.path().display().to_string();
    let mut agent = spawn_agent(&[
        "attach",
        "--pid",
        &pid,
        "-q",
        // Exact counts and two links: record every call through the
        // module's shared links (attach samples hot functions at 5% by
        // default, with links of their own).
        "--max-overhead",
        "off",
        "-f",
        "*",
        "--out",
        &out,
    ]);
    agent.wait_for_stderr("attached", Duration::from_secs(60));
    let held = bpf_links_held_by(agent.pid());
    let multi: Vec<u32> = held
        .iter()
        .filter(|(_, kind)| kind == "uprobe_multi" || kind == "uretprobe_multi")
        .map(|(id, _)| *id)
        .collect();
    // One entry and one return link for the one module.
    assert_eq!(multi.len(), 2, "links held by the agent: {held:?}");

    target.run("run 2");
    let stopped = std::time::Instant::now();
    agent.signal(libc::SIGINT);
    let run = agent.wait(Duration::from_secs(30));
    let took = stopped.elapsed();
    assert!(run.status.success(), "{}", run.stderr);
    assert!(run.stderr.contains("interrupted"), "{}", run.stderr);
    assert!(run.stderr.contains("detached in"), "{}", run.stderr);
    assert!(
        took < Duration::from_secs(30),
        "the agent took {took:?} to stop"
    );
    // Every function of the executable: at least the generated ones, and
    // the count is the one the agent reports.
    let attached: usize = run
        .stderr
        .split("attached ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no 'attached N functions' line:\n{}", run.stderr));
    assert!(attached > N, "{}", run.stderr);
    let rows = duckdb(&format!(
        "SELECT count(*) AS n FROM read_parquet('{}', hive_partitioning=true)",
        functions_glob(dir.path())
    ));
    assert_eq!(rows[0]["n"].as_i64(), Some(attached as i64));

    let expected: BTreeMap<i64, i64> = [(2, N as i64), (3, 1)].into();
    assert_eq!(histogram(dir.path(), "f%"), expected);

    // The target keeps running unprobed, and the links are gone.
    target.run("run 1");
    let remaining: Vec<u32> = bpf_link_ids()
        .into_iter()
        .filter(|id| multi.contains(id))
        .collect();
    assert!(
        remaining.is_empty(),
        "links {remaining:?} outlived the agent"
    );
}

#[test]
fn the_single_attach_mode_counts_exactly() {
    require_root();
    let bin = fixture(Lang::C, "2");
    let bin_s = bin.display().to_string();
    for mode in ["single", "multi"] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().display().to_string();
        let run = run_agent(&[
            "record",
            "-q",
            "--attach-mode",
            mode,
            "--out",
            &out,
            "-f",
            "leaf",
            "-f",
            "a_fn",
            "--",
            &bin_s,
            "all",
        ]);
        assert!(run.status.success(), "{mode}: {}", run.stderr);
        assert_eq!(
            run.stderr.contains("one perf uprobe per function"),
            mode == "single",
            "{mode}: {}",
            run.stderr
        );
        let rows = duckdb(&format!(
            "SELECT f.name AS name, count(*) AS n, count(c.duration_ns) AS returned \
             FROM read_parquet('{}', hive_partitioning=true) c \
             JOIN read_parquet('{}', hive_partitioning=true) f USING (session_id, function_id) \
             GROUP BY 1 ORDER BY 1",
            calls_glob(dir.path()),
            functions_glob(dir.path())
        ));
        let got: Vec<(String, i64, i64)> = rows
            .iter()
            .map(|r| {
                (
                    r["name"].as_str().unwrap().into(),
                    r["n"].as_i64().unwrap(),
                    r["returned"].as_i64().unwrap(),
                )
            })
            .collect();
        // `all`: count 100 calls leaf 100 times, nest 50 calls a_fn 50 times
        // and leaf 50 more.
        assert_eq!(
            got,
            vec![("a_fn".into(), 50, 50), ("leaf".into(), 150, 150)],
            "{mode}"
        );
    }
}

#[test]
fn an_unknown_attach_mode_is_a_clear_error() {
    let run = run_agent(&["record", "--attach-mode", "sideways", "--", "/bin/true"]);
    assert!(!run.status.success());
    assert!(
        run.stderr.contains("'sideways' is not an attach mode"),
        "{}",
        run.stderr
    );
}

#[test]
fn record_star_leaves_the_program_intact_and_reports_skips() {
    require_root();
    let bin = many_functions_fixture(N);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().display().to_string();
    let bin_s = bin.display().to_string();
    // `*` includes the C runtime; a return probe on `_start` would overwrite
    // argc, so the program would print its usage and exit 2.
    let run = run_agent(&[
        "record", "-q", "--out", &out, "-f", "*", "--", &bin_s, "run", "1",
    ]);
    assert!(run.status.success(), "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("ok"), "{}", run.stdout);
    assert!(run.stderr.contains("not probeable"), "{}", run.stderr);
    let expected: BTreeMap<i64, i64> = [(1, N as i64), (3, 1)].into();
    assert_eq!(histogram(dir.path(), "f%"), expected);
}
