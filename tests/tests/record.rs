//! `scope-agent record` against the C and Rust fixtures, with the real eBPF
//! programs: exact call counts, nesting, recursion, threads, durations, the
//! command's exit status, and the data contract read back with DuckDB.
//! Every recording here takes `record`'s default path (no flag: every call
//! is recorded), so every count is exact.

use scope_tests::*;

fn record(out: &std::path::Path, patterns: &[&str], cmd: &[&str]) -> AgentRun {
    record_with(out, patterns, &[], cmd)
}

/// calls per function name, with the design doc's join.
fn counts(out: &std::path::Path) -> std::collections::BTreeMap<String, i64> {
    let sql = format!(
        "SELECT f.name AS name, count(*) AS calls, sum(c.duration_ns) AS total_ns \
         FROM read_parquet('{}', hive_partitioning = true) c \
         JOIN read_parquet('{}', hive_partitioning = true) f USING (session_id, function_id) \
         GROUP BY f.name ORDER BY total_ns DESC",
        calls_glob(out),
        functions_glob(out)
    );
    duckdb(&sql)
        .into_iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_string(),
                r["calls"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn scalar(sql: &str) -> i64 {
    let rows = duckdb(sql);
    let row = rows.first().expect("one row");
    row.values()
        .next()
        .and_then(|v| v.as_i64())
        .expect("an integer")
}

fn ok(run: &AgentRun) {
    assert_success(run);
}

#[test]
fn exact_counts_c_at_o0_and_o2() {
    require_root();
    for opt in ["0", "2"] {
        let bin = fixture(Lang::C, opt);
        let dir = tempfile::tempdir().unwrap();
        let run = record(
            dir.path(),
            &["leaf"],
            &[bin.to_str().unwrap(), "count", "1000"],
        );
        ok(&run);
        let c = counts(dir.path());
        assert_eq!(c.get("leaf"), Some(&1000), "-O{opt}: {c:?}\n{}", run.stderr);
        assert_eq!(c.len(), 1, "only leaf was probed: {c:?}");
        assert!(run.stderr.contains("1000 calls"), "summary: {}", run.stderr);
    }
}

#[test]
fn nesting_depth_and_parents() {
    require_root();
    let bin = fixture(Lang::C, "2");
    let dir = tempfile::tempdir().unwrap();
    let run = record(
        dir.path(),
        &["a_fn", "b_fn", "c_fn", "leaf"],
        &[bin.to_str().unwrap(), "nest", "200"],
    );
    ok(&run);
    let c = counts(dir.path());
    for f in ["a_fn", "b_fn", "c_fn", "leaf"] {
        assert_eq!(c.get(f), Some(&200), "{f}: {c:?}");
    }
    let calls = calls_glob(dir.path());
    let funcs = functions_glob(dir.path());
    // Every function sits at exactly one depth: a 0, b 1, c 2, leaf 3.
    let rows = duckdb(&format!(
        "SELECT f.name AS name, min(depth) AS lo, max(depth) AS hi \
         FROM read_parquet('{calls}', hive_partitioning=true) c \
         JOIN read_parquet('{funcs}', hive_partitioning=true) f USING (session_id, function_id) \
         GROUP BY f.name ORDER BY lo"
    ));
    let got: Vec<(String, i64, i64)> = rows
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_string(),
                r["lo"].as_i64().unwrap(),
                r["hi"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("a_fn".into(), 0, 0),
            ("b_fn".into(), 1, 1),
            ("c_fn".into(), 2, 2),
            ("leaf".into(), 3, 3)
        ]
    );
    // Each child's parent is a call of the function one level up, and
    // contains it in time.
    let bad = scalar(&format!(
        "WITH c AS (SELECT c.*, f.name FROM read_parquet('{calls}', hive_partitioning=true) c \
           JOIN read_parquet('{funcs}', hive_partitioning=true) f USING (session_id, function_id)) \
         SELECT count(*) FROM c child LEFT JOIN c parent ON child.parent_call_id = parent.call_id \
         WHERE child.depth > 0 AND (parent.call_id IS NULL \
           OR (child.name, parent.name) NOT IN (('b_fn','a_fn'),('c_fn','b_fn'),('leaf','c_fn')) \
           OR child.start_ns < parent.start_ns \
           OR child.start_ns + child.duration_ns > parent.start_ns + parent.duration_ns)"
    ));
    assert_eq!(bad, 0, "children must nest inside their parents");
    let roots = scalar(&format!(
        "SELECT count(*) FROM read_parquet('{calls}', hive_partitioning=true) WHERE parent_call_id IS NULL"
    ));
    assert_eq!(roots, 200);
    // self time = duration - children's durations, never negative.
    let bad_self = scalar(&format!(
        "SELECT count(*) FROM read_parquet('{calls}', hive_partitioning=true) \
         WHERE self_ns < 0 OR self_ns > duration_ns OR flags <> 0"
    ));
    assert_eq!(bad_self, 0);
}

#[test]
fn recursion_to_a_known_depth() {
    require_root();
    let bin = fixture(Lang::C, "2");
    let dir = tempfile::tempdir().unwrap();
    let run = record(
        dir.path(),
        &["recurse"],
        &[bin.to_str().unwrap(), "recurse", "20"],
    );
    ok(&run);
    let calls = calls_glob(dir.path());
    let rows = duckdb(&format!(
        "SELECT count(*) AS n, count(DISTINCT depth) AS depths, min(depth) AS lo, max(depth) AS hi, \
           sum(CASE WHEN flags = 0 THEN 1 ELSE 0 END) AS complete \
         FROM read_parquet('{calls}', hive_partitioning=true)"
    ));
    let r = &rows[0];
    assert_eq!(r["n"].as_i64(), Some(21));
    assert_eq!(r["depths"].as_i64(), Some(21));
    assert_eq!(r["lo"].as_i64(), Some(0));
    assert_eq!(r["hi"].as_i64(), Some(20));
    assert_eq!(r["complete"].as_i64(), Some(21));
    // Each level's parent is the level above.
    let bad = scalar(&format!(
        "WITH c AS (SELECT * FROM read_parquet('{calls}', hive_partitioning=true)) \
         SELECT count(*) FROM c child JOIN c parent ON child.parent_call_id = parent.call_id \
         WHERE parent.depth <> child.depth - 1"
    ));
    assert_eq!(bad, 0);
}

#[test]
fn recursion_past_the_kernel_return_probe_limit_is_marked_not_misnested() {
    require_root();
    let bin = fixture(Lang::C, "0");
    let dir = tempfile::tempdir().unwrap();
    let run = record(
        dir.path(),
        &["recurse"],
        &[bin.to_str().unwrap(), "recurse", "99"],
    );
    ok(&run);
    let calls = calls_glob(dir.path());
    let rows = duckdb(&format!(
        "SELECT flags, count(*) AS n, min(depth) AS lo, max(depth) AS hi \
         FROM read_parquet('{calls}', hive_partitioning=true) GROUP BY flags ORDER BY flags"
    ));
    // 100 entries: the kernel gives the outer 64 a return probe; the rest are
    // marked (flag 8) with a null duration, at their true depths.
    let got: Vec<(i64, i64, i64, i64)> = rows
        .iter()
        .map(|r| {
            (
                r["flags"].as_i64().unwrap(),
                r["n"].as_i64().unwrap(),
                r["lo"].as_i64().unwrap(),
                r["hi"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, vec![(0, 64, 0, 63), (8, 36, 64, 99)], "{}", run.stderr);
}

#[test]
fn threads_are_counted_per_thread() {
    require_root();
    let bin = fixture(Lang::C, "2");
    let dir = tempfile::tempdir().unwrap();
    let run = record(
        dir.path(),
        &["tleaf"],
        &[bin.to_str().unwrap(), "threads", "4", "500"],
    );
    ok(&run);
    let calls = calls_glob(dir.path());
    let rows = duckdb(&format!(
        "SELECT tid, count(*) AS n FROM read_parquet('{calls}', hive_partitioning=true) GROUP BY tid ORDER BY tid"
    ));
    assert_eq!(rows.len(), 4, "{rows:?}");
    for r in &rows {
        assert_eq!(r["n"].as_i64(), Some(500), "{rows:?}");
    }
    let pids = scalar(&format!(
        "SELECT count(DISTINCT pid) FROM read_parquet('{calls}', hive_partitioning=true)"
    ));
    assert_eq!(pids, 1);
}

#[test]
fn sleeping_function_duration_is_plausible() {
    require_root();
    let bin = fixture(Lang::C, "2");
    let dir = tempfile::tempdir().unwrap();
    let run = record(
        dir.path(),
        &["sleeper"],
        &[bin.to_str().unwrap(), "sleep", "50", "3"],
    );
    ok(&run);
    let calls = calls_glob(dir.path());
    let rows = duckdb(&format!(
        "SELECT duration_ns, self_ns FROM read_parquet('{calls}', hive_partitioning=true)"
    ));
    assert_eq!(rows.len(), 3);
    for r in &rows {
        let d = r["duration_ns"].as_i64().unwrap();
        assert!(
            (50_000_000..450_000_000).contains(&d),
            "a 50 ms sleep took {d} ns"
        );
        assert_eq!(r["self_ns"].as_i64(), Some(d));
    }
}

/// The calls' clock is the session's, and the session's is the wall
/// clock: the session lies between two wall-clock reads of this test
/// (before the agent starts, after it exits), every call starts inside
/// `[sessions.start_ns, sessions.end_ns]` and every completed call ends
/// inside it. A recording with threads, nesting, recursion and sleeps,
/// every call counted.
#[test]
fn call_times_lie_within_their_session() {
    require_root();
    let bin = fixture(Lang::C, "2");
    let dir = tempfile::tempdir().unwrap();
    let before = wall_clock_ns();
    let run = record(
        dir.path(),
        &["leaf", "a_fn", "recurse", "sleeper", "tleaf"],
        &[bin.to_str().unwrap(), "all"],
    );
    let after = wall_clock_ns();
    ok(&run);
    // `all`: leaf 100 + 50 (under a_fn), a_fn 50, recurse 11 (depth 10),
    // sleeper 2, tleaf 2 threads x 100.
    assert_eq!(
        assert_calls_within_session(dir.path(), before, after),
        150 + 50 + 11 + 2 + 200,
        "{}",
        run.stderr
    );
}

#[test]
fn record_exits_with_the_command_status() {
    require_root();
    let bin = fixture(Lang::C, "0");
    let dir = tempfile::tempdir().unwrap();
    let run = record(dir.path(), &["leaf"], &[bin.to_str().unwrap(), "exit", "3"]);
    assert_eq!(run.status.code(), Some(3), "{}", run.stderr);
    assert_eq!(counts(dir.path()).get("leaf"), Some(&1));
}

#[test]
fn rust_fixture_demangled_names() {
    require_root();
    for opt in ["0", "2"] {
        let bin = fixture(Lang::Rust, opt);
        let dir = tempfile::tempdir().unwrap();
        let run = record(
            dir.path(),
            &["*rfix::a_fn", "*rfix::b_fn", "*rfix::c_fn", "*rfix::leaf"],
            &[bin.to_str().unwrap(), "nest", "300"],
        );
        ok(&run);
        let c = counts(dir.path());
        for f in ["a_fn", "b_fn", "c_fn", "leaf"] {
            let hits: Vec<(&String, &i64)> = c
                .iter()
                .filter(|(k, _)| k.ends_with(&format!("rfix::{f}")))
                .collect();
            assert_eq!(hits.len(), 1, "-O{opt} {f}: {c:?}");
            assert_eq!(*hits[0].1, 300, "-O{opt} {f}: {c:?}");
            assert!(
                !hits[0].0.contains("::h"),
                "hash suffix kept: {}",
                hits[0].0
            );
        }
    }
}

#[test]
fn default_probes_the_main_executable() {
    require_root();
    let bin = fixture(Lang::C, "2");
    let dir = tempfile::tempdir().unwrap();
    let run = record(dir.path(), &[], &[bin.to_str().unwrap(), "nest", "10"]);
    ok(&run);
    let c = counts(dir.path());
    assert_eq!(c.get("main"), Some(&1), "{c:?}");
    assert_eq!(c.get("a_fn"), Some(&10), "{c:?}");
    assert_eq!(c.get("leaf"), Some(&10), "{c:?}");
    assert!(
        !c.contains_key("_start"),
        "C runtime start-up is left out: {c:?}"
    );
    assert!(run.stderr.contains("attached"), "{}", run.stderr);
}

#[test]
fn files_follow_the_data_contract() {
    require_root();
    let bin = fixture(Lang::C, "0");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("data");
    let run = record(&out, &["leaf"], &[bin.to_str().unwrap(), "count", "10"]);
    ok(&run);
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&out), 0o700);
    let mut files = 0;
    for table in ["calls", "functions", "losses", "sessions"] {
        let t = out.join(table);
        assert_eq!(mode(&t), 0o700, "{}", t.display());
        for part in std::fs::read_dir(&t).unwrap() {
            let part = part.unwrap().path();
            assert!(
                part.file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .starts_with("session_id=")
            );
            assert_eq!(mode(&part), 0o700);
            for f in std::fs::read_dir(&part).unwrap() {
                let f = f.unwrap().path();
                assert!(
                    f.extension().is_some_and(|e| e == "parquet"),
                    "stray file {}",
                    f.display()
                );
                assert_eq!(mode(&f), 0o600, "{}", f.display());
                files += 1;
            }
        }
    }
    assert!(files >= 3, "calls, functions and sessions files");
    // Columns every version has.
    let cols = |table: &str| -> Vec<String> {
        duckdb(&format!(
            "SELECT column_name FROM (DESCRIBE SELECT * FROM read_parquet('{}/{table}/**/*.parquet', hive_partitioning=true))",
            out.display()
        ))
        .into_iter()
        .map(|r| r["column_name"].as_str().unwrap().to_string())
        .collect()
    };
    for (table, want) in [
        (
            "calls",
            &[
                "session_id",
                "pid",
                "tid",
                "call_id",
                "parent_call_id",
                "function_id",
                "depth",
                "start_ns",
                "duration_ns",
                "self_ns",
            ][..],
        ),
        (
            "functions",
            &[
                "session_id",
                "function_id",
                "name",
                "symbol",
                "module",
                "build_id",
                "address",
                "size",
                "file",
                "line",
            ][..],
        ),
        (
            "sessions",
            &[
                "session_id",
                "host",
                "pid",
                "command",
                "start_ns",
                "end_ns",
                "version",
            ][..],
        ),
    ] {
        let have = cols(table);
        for w in want {
            assert!(have.iter().any(|h| h == w), "{table} lacks {w}: {have:?}");
        }
    }
    // start_ns is Unix epoch time: within a day of now.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    let start = scalar(&format!(
        "SELECT min(start_ns) FROM read_parquet('{}', hive_partitioning=true)",
        calls_glob(&out)
    ));
    assert!(
        (now - start).abs() < 86_400_000_000_000,
        "start_ns {start} vs now {now}"
    );
    let leaf_line = scalar(&format!(
        "SELECT line FROM read_parquet('{}', hive_partitioning=true) WHERE name = 'leaf'",
        functions_glob(&out)
    ));
    assert_eq!(leaf_line as u32, c_source_line("leaf("));
}
