//! On-CPU samples end to end (needs root): `plan --pid` on a CPU burner
//! with frame pointers (tests/fixtures/c/burn.c: hot_leaf() called only by
//! hot_mid(), cold() rarely) ranks hot_leaf first by self share and
//! hot_mid by inclusive share, and writes a plan that `attach --plan`
//! records; `record` samples by default into a `samples` table whose
//! samples lie within the session and name hot_leaf under hot_mid;
//! `--no-samples` writes none; `export --from samples` draws them.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use scope_tests::{
    ChildGuard, agent_bin, assert_success, build_generated_c, duckdb, record_with, require_root,
    run_agent, sessions_glob, wall_clock_ns,
};

/// tests/fixtures/c/burn.c at -O1 with frame pointers (as
/// `c_fixture_file` builds it, from this crate's own directory).
fn burn() -> std::path::PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/c/burn.c");
    let source = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    build_generated_c("burn-O1", &source, "1", &[])
        .unwrap_or_else(|e| panic!("building {}: {e}", path.display()))
}

fn samples_glob(out: &Path) -> String {
    format!("{}/samples/**/*.parquet", out.display())
}

/// The plan's table row of `function` (the pattern's function part):
/// (self%, incl%).
fn row_of(stdout: &str, function: &str) -> (f64, f64) {
    let line = stdout
        .lines()
        .find(|l| {
            l.split_whitespace()
                .any(|w| w.ends_with(&format!(":{function}")))
        })
        .unwrap_or_else(|| panic!("no row for {function} in the plan's table:\n{stdout}"));
    let nums: Vec<f64> = line
        .split_whitespace()
        .filter_map(|w| w.parse::<f64>().ok())
        .collect();
    (nums[0], nums[1])
}

#[test]
fn plan_ranks_by_samples_and_attach_plan_records_what_it_chose() {
    require_root();
    let bin = burn();
    let mut target = ChildGuard::spawn(Command::new(&bin).stdout(Stdio::null()));
    std::thread::sleep(Duration::from_millis(200));
    let pid = target.pid().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("data");
    let plan = dir.path().join("plan.toml");
    let run = run_agent(&[
        "plan",
        "--pid",
        &pid,
        "--duration",
        "3s",
        // Room for both hot functions whatever a probe costs here.
        "--budget",
        "200",
        "--out",
        out.to_str().unwrap(),
        "--plan-out",
        plan.to_str().unwrap(),
    ]);
    assert_success(&run);
    let (leaf_self, leaf_incl) = row_of(&run.stdout, "hot_leaf");
    let (mid_self, mid_incl) = row_of(&run.stdout, "hot_mid");
    assert!(
        leaf_self > 80.0 && leaf_self > mid_self,
        "hot_leaf has the top self share: {leaf_self} vs {mid_self}\n{}",
        run.stdout
    );
    assert!(
        mid_incl >= leaf_incl && mid_incl > 90.0,
        "hot_mid's inclusive share holds hot_leaf's: {mid_incl} vs {leaf_incl}\n{}",
        run.stdout
    );
    assert!(
        !run.stderr.contains("stacks are shallow"),
        "frame pointers: {}",
        run.stderr
    );
    let text = std::fs::read_to_string(&plan).unwrap();
    assert!(text.contains("pattern = \"burn-O1:hot_leaf\""), "{text}");
    // main is on every stack but not called: not worth a probe.
    assert!(!text.contains(":main\""), "{text}");
    let mode = std::fs::metadata(&plan).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );

    // The samples are stored and name the hot function.
    let rows = duckdb(&format!(
        "SELECT count(*) AS n, count(*) FILTER (WHERE frames[1] = 'hot_leaf') AS leaf, \
         count(*) FILTER (WHERE list_contains(frames, 'hot_mid')) AS mid, min(pid) AS pid \
         FROM read_parquet('{}', hive_partitioning=true)",
        samples_glob(&out)
    ));
    let n = rows[0]["n"].as_i64().unwrap();
    assert!(n >= 10, "samples: {rows:?}");
    assert!(rows[0]["leaf"].as_i64().unwrap() * 10 >= n * 8, "{rows:?}");
    assert!(rows[0]["mid"].as_i64().unwrap() * 10 >= n * 9, "{rows:?}");
    assert_eq!(rows[0]["pid"].as_i64().unwrap().to_string(), pid);

    // attach --plan records the chosen functions.
    let out2 = dir.path().join("attached");
    let run = run_agent(&[
        "attach",
        "--pid",
        &pid,
        "--plan",
        plan.to_str().unwrap(),
        "--max-overhead",
        "off",
        "--duration",
        "1s",
        "--out",
        out2.to_str().unwrap(),
    ]);
    assert_success(&run);
    let rows = duckdb(&format!(
        "SELECT f.name, count(*) AS n FROM read_parquet('{}/calls/**/*.parquet', hive_partitioning=true) c \
         JOIN read_parquet('{}/functions/**/*.parquet', hive_partitioning=true) f USING (session_id, function_id) \
         GROUP BY f.name ORDER BY f.name",
        out2.display(),
        out2.display()
    ));
    assert!(
        rows.iter()
            .any(|r| r["name"] == "hot_leaf" && r["n"].as_i64().unwrap() > 10),
        "hot_leaf calls recorded: {rows:?}\n{}",
        run.stderr
    );
    target.kill();
}

#[test]
fn record_samples_by_default_within_the_session_and_not_with_no_samples() {
    require_root();
    let bin = burn();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("data");
    let before = wall_clock_ns();
    let run = record_with(&out, &["cold"], &[], &[bin.to_str().unwrap(), "2"]);
    let after = wall_clock_ns();
    assert_success(&run);
    assert!(run.stderr.contains("on-CPU samples"), "{}", run.stderr);
    let s = duckdb(&format!(
        "SELECT start_ns, end_ns, pid FROM read_parquet('{}', hive_partitioning=true)",
        sessions_glob(&out)
    ));
    let (start, end) = (
        s[0]["start_ns"].as_i64().unwrap(),
        s[0]["end_ns"].as_i64().unwrap(),
    );
    assert!(
        before <= start && end <= after,
        "session {start}..{end} in {before}..{after}"
    );
    let rows = duckdb(&format!(
        "SELECT count(*) AS n, min(time_ns) AS t0, max(time_ns) AS t1, \
         count(*) FILTER (WHERE frames[1] = 'hot_leaf' AND frames[2] = 'hot_mid') AS leaf, \
         count(DISTINCT pid) AS pids, min(pid) AS pid, \
         count(*) FILTER (WHERE len(stack) <> len(frames)) AS mismatched \
         FROM read_parquet('{}', hive_partitioning=true)",
        samples_glob(&out)
    ));
    let r = &rows[0];
    let n = r["n"].as_i64().unwrap();
    // 2 s of one busy thread at 99 Hz: up to 200 samples, fewer on a
    // machine it shares (each sample is the thread seen running).
    assert!(n >= 5, "samples: {rows:?}");
    assert!(
        r["t0"].as_i64().unwrap() >= start && r["t1"].as_i64().unwrap() <= end,
        "samples within the session {start}..{end}: {rows:?}"
    );
    assert!(r["leaf"].as_i64().unwrap() * 10 >= n * 7, "{rows:?}");
    assert_eq!(r["pids"].as_i64(), Some(1));
    assert_eq!(r["pid"], s[0]["pid"]);
    assert_eq!(r["mismatched"].as_i64(), Some(0));

    // A flame graph from the samples.
    let svg = dir.path().join("samples.svg");
    let o = Command::new(agent_bin())
        .args(["export", "--data"])
        .arg(&out)
        .args(["--from", "samples", "--format", "flamegraph", "-o"])
        .arg(&svg)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(
        text.contains("hot_leaf") && text.contains("<svg"),
        "{}",
        &text[..text.len().min(500)]
    );
    let o = Command::new(agent_bin())
        .args(["export", "--data"])
        .arg(&out)
        .args(["--from", "samples", "--format", "folded", "-o", "-"])
        .output()
        .unwrap();
    let folded = String::from_utf8_lossy(&o.stdout);
    assert!(
        folded.lines().any(|l| l.contains("main;hot_mid;hot_leaf ")),
        "root-first paths: {folded}"
    );

    // --no-samples: no samples table.
    let out2 = dir.path().join("none");
    let run = record_with(
        &out2,
        &["cold"],
        &["--no-samples"],
        &[bin.to_str().unwrap(), "0.5"],
    );
    assert_success(&run);
    assert!(!out2.join("samples").exists());
    assert!(!run.stderr.contains("on-CPU samples"), "{}", run.stderr);
}

#[test]
fn plan_refuses_bad_input_in_one_line() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[probe]]\nname = 1\n").unwrap();
    let run = run_agent(&["record", "--plan", bad.to_str().unwrap(), "--", "true"]);
    assert!(!run.status.success());
    assert!(
        run.stderr.contains("bad.toml") && run.stderr.contains("probe 1"),
        "{}",
        run.stderr
    );
    let run = run_agent(&["plan", "--pid", "999999999", "--duration", "1s"]);
    assert!(!run.status.success());
    assert!(run.stderr.contains("999999999"), "{}", run.stderr);
    assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
}

#[test]
fn plan_says_when_the_target_has_no_frame_pointers() {
    require_root();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/c/burn.c");
    let source = std::fs::read_to_string(&path).unwrap();
    // The later flag wins: no frame pointers.
    let bin = build_generated_c("burn-nofp", &source, "1", &["-fomit-frame-pointer"])
        .unwrap_or_else(|e| panic!("building {}: {e}", path.display()));
    let mut target = ChildGuard::spawn(Command::new(&bin).stdout(Stdio::null()));
    std::thread::sleep(Duration::from_millis(200));
    let pid = target.pid().to_string();
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.toml");
    let run = run_agent(&[
        "plan",
        "--pid",
        &pid,
        "--duration",
        "2s",
        "--out",
        dir.path().join("data").to_str().unwrap(),
        "--plan-out",
        plan.to_str().unwrap(),
    ]);
    assert_success(&run);
    assert!(
        run.stderr.contains("stacks are shallow") && run.stderr.contains("without frame pointers"),
        "{}",
        run.stderr
    );
    // Self shares are still right: hot_leaf leads.
    let (leaf_self, _) = row_of(&run.stdout, "hot_leaf");
    assert!(leaf_self > 80.0, "{}", run.stdout);
    target.kill();
}
