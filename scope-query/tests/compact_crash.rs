//! A compaction killed at any moment leaves the old files or the new ones,
//! never neither and never both: a child process compacts a store and is
//! aborted at each step (`SCOPE_COMPACT_CRASH_AT`) or killed with SIGKILL
//! after a while; DuckDB then counts every table's rows per session and must
//! find exactly the original numbers (and the same content checksum of
//! `calls`), and the next compaction recovers and finishes the job.

mod compact_support;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use compact_support::*;
use scope_query::compact::staging::CRASH_ENV;
use scope_query::compact::{CompactOptions, compact};

const ROOT_ENV: &str = "SCOPE_COMPACT_TEST_ROOT";
const KEEP_ENV: &str = "SCOPE_COMPACT_TEST_KEEP_DAYS";

fn child_options() -> CompactOptions {
    CompactOptions {
        row_group_rows: 4_096,
        // Several calls files per session, so a crash can fall between two.
        target_file_rows: 15_000,
        memory_limit: 16 << 20,
        keep: std::env::var(KEEP_ENV)
            .ok()
            .map(|d| Duration::from_secs(d.parse::<u64>().unwrap() * 86_400)),
        ..CompactOptions::default()
    }
}

/// Not a test: the child process the tests below start (and kill).
#[test]
#[ignore = "run as a child process by the crash tests"]
fn child_compact() {
    let root = std::env::var(ROOT_ENV).expect(ROOT_ENV);
    compact(Path::new(&root), &child_options(), &mut |l: &str| {
        eprintln!("{l}")
    })
    .unwrap();
}

fn child(root: &Path) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([
        "--ignored",
        "--exact",
        "child_compact",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(ROOT_ENV, root)
    .env_remove(CRASH_ENV)
    .env_remove(KEEP_ENV)
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    c
}

/// Two finished sessions, several segments each, and one ten days old.
fn store(root: &Path) {
    write_session(root, &SessionSpec::new("A", 40_000, 6_000));
    let mut b = SessionSpec::new("B", 20_000, 5_000);
    b.seed = 9;
    b.threads = 2;
    write_session(root, &b);
    let mut old = SessionSpec::new("OLD", 8_000, 3_000);
    old.seed = 5;
    old.start_ns = now_ns() - 10 * 86_400_000_000_000;
    write_session(root, &old);
}

fn without(counts: &[(String, String, u64)], session: &str) -> Vec<(String, String, u64)> {
    counts.iter().filter(|c| c.1 != session).cloned().collect()
}

/// After recovery: every session compacted, the same rows, nothing left in
/// the staging tree but the lock.
fn recover_and_check(root: &Path, counts: &[(String, String, u64)], digest: &str) {
    let mut lines = Vec::new();
    compact(root, &child_options(), &mut |l: &str| {
        lines.push(l.to_owned())
    })
    .unwrap();
    assert_eq!(duckdb_counts(root), counts, "after recovery: {lines:?}");
    assert_eq!(duckdb_calls_digest(root), digest);
    for s in ["A", "B"] {
        for t in ["calls", "losses", "agent_metrics", "functions"] {
            let dir = root.join(t).join(format!("session_id={s}"));
            for e in std::fs::read_dir(&dir).unwrap() {
                let n = e.unwrap().file_name().to_string_lossy().into_owned();
                assert!(
                    n.starts_with("part-c"),
                    "{} not compacted: {n}",
                    dir.display()
                );
            }
        }
    }
    let left: Vec<String> = std::fs::read_dir(root.join(".scope-compact"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["lock"]);
}

#[test]
fn a_compaction_aborted_at_each_step_leaves_old_or_new_files_never_neither_nor_both() {
    for step in ["write", "staged", "exchanged", "cleaned"] {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        store(root);
        let counts = duckdb_counts(root);
        let digest = duckdb_calls_digest(root);
        let out = child(root).env(CRASH_ENV, step).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGABRT),
            "step {step}: the child did not crash: {stderr}"
        );
        assert!(
            stderr.contains(&format!("crashing at step {step}")),
            "{stderr}"
        );
        assert_eq!(duckdb_counts(root), counts, "after a crash at {step}");
        assert_eq!(duckdb_calls_digest(root), digest, "after a crash at {step}");
        recover_and_check(root, &counts, &digest);
    }
}

#[test]
fn a_removal_aborted_midway_is_finished_by_the_next_run() {
    for step in ["remove-intent", "remove-moved"] {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        store(root);
        let counts = duckdb_counts(root);
        let digest = duckdb_calls_digest(root);
        let out = child(root)
            .env(CRASH_ENV, step)
            .env(KEEP_ENV, "7")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.signal(), Some(libc::SIGABRT), "{step}: {stderr}");
        // The other sessions are untouched; the old one still has its
        // sessions row (moved last), so it is still a finished session.
        let after = duckdb_counts(root);
        assert_eq!(without(&after, "OLD"), without(&counts, "OLD"), "{step}");
        assert!(
            after.iter().any(|(t, s, _)| t == "sessions" && s == "OLD"),
            "{step}: {after:?}"
        );
        // The next run (no --keep this time) finishes the removal.
        let mut lines = Vec::new();
        compact(root, &child_options(), &mut |l: &str| {
            lines.push(l.to_owned())
        })
        .unwrap();
        assert!(
            lines
                .iter()
                .any(|l| l.contains("finishing the removal of session OLD")),
            "{lines:?}"
        );
        assert_eq!(duckdb_counts(root), without(&counts, "OLD"));
        let _ = digest;
        for t in ["calls", "sessions", "functions"] {
            assert!(!root.join(t).join("session_id=OLD").exists());
        }
    }
}

#[test]
fn a_compaction_killed_at_any_moment_leaves_old_or_new_files() {
    let tmp = tempfile::tempdir().unwrap();
    let pristine = tmp.path().join("pristine");
    store(&pristine);
    let counts = duckdb_counts(&pristine);
    let digest = duckdb_calls_digest(&pristine);
    // Kill times spread over a run (a whole run of this store takes about a
    // second or more here); where each kill lands does not matter, only that
    // the store is whole after it.
    let mut finished = 0;
    for (i, ms) in [40u64, 200, 450, 800, 1300].iter().enumerate() {
        let root = tmp.path().join(format!("run{i}"));
        copy_tree(&pristine, &root);
        let mut c = child(&root).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(*ms));
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
        let status = c.wait().unwrap();
        if status.success() {
            finished += 1;
        }
        assert_eq!(duckdb_counts(&root), counts, "killed after {ms} ms");
        assert_eq!(duckdb_calls_digest(&root), digest, "killed after {ms} ms");
        recover_and_check(&root, &counts, &digest);
    }
    assert!(finished < 5, "no kill landed during a compaction");
}
