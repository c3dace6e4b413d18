//! Faults around a recording: a target that exits while the agent attaches,
//! a target that forks and execs, two agents on one process, and an output
//! disk that fills up.
//!
//! What each case does, decided here and documented in README.md:
//! - a process that is gone before the probes are attached: exit 1 with a
//!   message naming the pid; gone after: a clean stop ("pid N exited"), exit 0;
//! - fork + exec: only the probed process (its tgid) is recorded; a child is a
//!   different process and is not followed;
//! - two agents: each has its own links and ring, and each records every call;
//! - a full disk: the agent stops recording, names the file it could not
//!   write, keeps every finished file readable, and exits 1.
//!
//! `record` runs its default path (every call recorded); `attach` keeps its
//! default (a 5% budget) where nothing is counted, and says
//! `--max-overhead off` where every call is counted.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use scope_tests::*;

fn count_rows(glob: &str) -> i64 {
    let rows = duckdb(&format!(
        "SELECT count(*) AS n FROM read_parquet('{glob}', hive_partitioning=true)"
    ));
    rows[0]["n"].as_i64().unwrap()
}

#[test]
fn a_target_that_exits_while_the_agent_attaches() {
    require_root();
    let bin = fixture(Lang::C, "2");
    // The fixture lives about 300 ms and attaching takes 100-250 ms here;
    // the agent is started at several delays so that the exit falls after,
    // during and before the attach (the test's unreaped child is a zombie,
    // the hardest case: its /proc entry stays, with no maps).
    for delay_ms in [0u64, 100, 200, 280, 400] {
        let mut target = ChildGuard::spawn(
            Command::new(&bin)
                .args(["sleep", "100", "3"])
                .stdout(std::process::Stdio::null()),
        );
        std::thread::sleep(Duration::from_millis(delay_ms));
        let pid = target.pid().to_string();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().display().to_string();
        let run = run_agent(&["attach", "--pid", &pid, "-f", "sleeper", "--out", &out]);
        let _ = target.wait_timeout(Duration::from_secs(10));
        assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
        match run.status.code() {
            Some(0) => assert!(
                run.stderr.contains(&format!("pid {pid} exited")),
                "delay {delay_ms} ms: {}",
                run.stderr
            ),
            Some(1) => assert!(
                run.stderr.contains(&pid),
                "delay {delay_ms} ms: the error names the pid: {}",
                run.stderr
            ),
            other => panic!("delay {delay_ms} ms: exit {other:?}: {}", run.stderr),
        }
    }
}

#[test]
fn a_target_that_forks_and_execs_records_only_itself() {
    require_root();
    let bin = fixture(Lang::C, "2");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().display().to_string();
    let bin_s = bin.display().to_string();
    // The fixture forks a child that execs `fixture count 250` and calls
    // leaf 250 times itself: 500 calls, of which the agent sees its own 250.
    let run = run_agent(&[
        "record", "-q", "-f", "leaf", "--out", &out, "--", &bin_s, "fork", "250",
    ]);
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(run.stdout.matches("ok").count(), 2, "{}", run.stdout);
    let rows = duckdb(&format!(
        "SELECT c.pid AS pid, count(*) AS n, count(*) FILTER (WHERE flags <> 0) AS marked, \
                any_value(s.pid) AS session_pid \
         FROM read_parquet('{}', hive_partitioning=true) c \
         JOIN read_parquet('{}/sessions/**/*.parquet', hive_partitioning=true) s USING (session_id) \
         GROUP BY c.pid",
        calls_glob(dir.path()),
        dir.path().display()
    ));
    assert_eq!(rows.len(), 1, "one process recorded: {rows:?}");
    assert_eq!(rows[0]["n"].as_i64(), Some(250), "{rows:?}");
    assert_eq!(rows[0]["marked"].as_i64(), Some(0), "{rows:?}");
    assert_eq!(rows[0]["pid"], rows[0]["session_pid"], "{rows:?}");
}

#[test]
fn two_agents_on_one_process_each_record_every_call() {
    require_root();
    let bin = fixture(Lang::C, "2");
    let mut target = ServeFixture::spawn(&bin);
    let pid = target.pid.to_string();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let outs: Vec<String> = dirs
        .iter()
        .map(|d| d.path().display().to_string())
        .collect();
    let mut agents: Vec<RunningAgent> = outs
        .iter()
        .map(|out| {
            spawn_agent(&[
                "attach",
                "--pid",
                &pid,
                // Exact counts: record every call (attach samples hot
                // functions at 5% by default).
                "--max-overhead",
                "off",
                "-f",
                "leaf",
                "-f",
                "a_fn",
                "--out",
                out,
            ])
        })
        .collect();
    for a in &mut agents {
        a.wait_for_stderr("attached", Duration::from_secs(60));
    }
    target.run("count 300");
    target.run("nest 40");
    target.close_stdin();
    assert!(target.wait().success());
    for (a, d) in agents.iter_mut().zip(&dirs) {
        let run = a.wait(Duration::from_secs(60));
        assert!(run.status.success(), "{}", run.stderr);
        let rows = duckdb(&format!(
            "SELECT f.name AS name, count(*) AS n FROM read_parquet('{}', hive_partitioning=true) c \
             JOIN read_parquet('{}', hive_partitioning=true) f USING (session_id, function_id) \
             WHERE c.flags = 0 GROUP BY 1 ORDER BY 1",
            calls_glob(d.path()),
            functions_glob(d.path())
        ));
        let got: Vec<(String, i64)> = rows
            .iter()
            .map(|r| (r["name"].as_str().unwrap().into(), r["n"].as_i64().unwrap()))
            .collect();
        assert_eq!(got, vec![("a_fn".into(), 40), ("leaf".into(), 340)]);
    }
}

/// A tmpfs mounted on a temporary directory, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .expect("mount(8) runs");
        assert!(
            st.success(),
            "mounting a {size} tmpfs on {}",
            dir.path().display()
        );
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn a_full_disk_stops_the_recording_cleanly() {
    require_root();
    let bin = fixture(Lang::C, "2");
    let disk = SmallDisk::mount("256k");
    let out = disk.path().join("out");
    let out_s = out.display().to_string();
    let bin_s = bin.display().to_string();
    // About 9 bytes a call: 200,000 calls in segments of 2,000 rows need far
    // more than 256 KiB.
    let run = run_agent(&[
        "record",
        "-q",
        // record's default records every call, so the disk fills.
        "-f",
        "leaf",
        "--segment-rows",
        "2000",
        "--out",
        &out_s,
        "--",
        &bin_s,
        "count",
        "200000",
    ]);
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    assert!(
        run.stderr.contains("No space left on device") && run.stderr.contains(&out_s),
        "says why and names the file: {}",
        run.stderr
    );
    let files = files_under(&out);
    // No temporary file is left behind, and every finished file reads.
    assert!(
        files
            .iter()
            .all(|f| f.extension().is_some_and(|e| e == "parquet")),
        "{files:?}"
    );
    let calls = files
        .iter()
        .filter(|f| f.to_string_lossy().contains("/calls/"))
        .count();
    assert!(
        calls >= 2,
        "segments were finished before the disk filled: {files:?}"
    );
    let n = count_rows(&calls_glob(&out));
    assert!((2 * 2000..200_000).contains(&n), "{n}");
    assert_eq!(n % 2000, 0, "only whole segments: {n}");
}
