//! `compact`: the merged files hold exactly the segments' rows (DuckDB
//! counts and checksums them), sorted by (tid, start_ns, depth) (DuckDB reads
//! them in file order), with the writer's schema, zstd, row groups of the
//! chosen size and a page index (DuckDB's parquet_metadata); sessions still
//! being recorded, corrupt segments and bad roots; retention by age and size.

mod compact_support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use compact_support::*;
use scope_query::compact::{CompactOptions, compact};

fn run(root: &Path, opts: &CompactOptions) -> (scope_query::compact::CompactReport, Vec<String>) {
    let mut lines = Vec::new();
    let report = compact(root, opts, &mut |l: &str| lines.push(l.to_owned())).unwrap();
    (report, lines)
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn sorts_every_row_into_large_files_with_the_writers_schema() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write_session(root, &SessionSpec::new("S1", 200_000, 30_000));
    let digest = duckdb_calls_digest(root);
    let counts = duckdb_counts(root);
    let schema_before = duckdb(&format!(
        "print(duckdb.sql(\"select name, type, converted_type, logical_type, repetition_type from parquet_schema('{}/calls/session_id=S1/part-00000.parquet')\").fetchall())",
        root.display()
    ));
    let opts = CompactOptions {
        row_group_rows: 10_000,
        target_file_rows: 80_000,
        // Small enough that the sort of 200,000 calls must spill.
        memory_limit: 8 << 20,
        ..CompactOptions::default()
    };
    let (report, lines) = run(root, &opts);
    assert_eq!(report.sessions.len(), 1, "{report:?} {lines:?}");
    let s = &report.sessions[0];
    assert_eq!(s.calls, 200_000);
    assert!(s.spilled_bytes > 0, "the sort did not spill: {s:?}");
    assert!(s.bytes_per_call_after().unwrap() > 0.0);
    // 7 calls segments + 7 metrics + 2 functions + losses + sessions → 3 + 1 + 1 + 1 + 1.
    assert_eq!(s.files_before, 18, "{s:?}");
    assert_eq!(s.files_after, 7, "{s:?}");
    assert_eq!(
        names(&root.join("calls/session_id=S1")),
        [
            "part-c00000.parquet",
            "part-c00001.parquet",
            "part-c00002.parquet"
        ]
    );
    assert_eq!(
        names(&root.join("functions/session_id=S1")),
        ["part-c00000.parquet"]
    );
    // Same rows, same values (DuckDB's own count and hash of every column).
    assert_eq!(duckdb_calls_digest(root), digest);
    assert_eq!(duckdb_counts(root), counts);
    // Sorted by (tid, start_ns, depth) across files, in file order.
    let out = duckdb(&format!(
        r#"
r = duckdb.sql("""
  with t as (select tid, start_ns, depth, filename, file_row_number,
    lag(tid) over w as ptid, lag(start_ns) over w as pstart, lag(depth) over w as pdepth
    from read_parquet('{root}/calls/**/*.parquet', filename=true, file_row_number=true)
    window w as (order by filename, file_row_number))
  select count(*) filter (where ptid is not null and (ptid, pstart, pdepth) > (tid, start_ns, depth)), count(*) from t""").fetchall()
print(r[0][0], r[0][1])
"#,
        root = root.display()
    ));
    assert_eq!(out.trim(), "0 200000", "rows out of order");
    // Row groups, zstd, page index, encodings, as DuckDB reads the footer.
    let meta = duckdb(&format!(
        r#"
m = "parquet_metadata('{root}/calls/session_id=S1/*.parquet')"
print(duckdb.sql(f"select max(row_group_num_rows), min(row_group_num_rows), count(distinct row_group_id) from {{m}}").fetchall()[0])
print(duckdb.sql(f"select distinct compression from {{m}}").fetchall())
print(duckdb.sql(f"select count(*) from {{m}} where column_index_offset is null or offset_index_offset is null").fetchall()[0][0])
print(duckdb.sql(f"select path_in_schema, encodings like '%RLE_DICTIONARY%', encodings like '%DELTA_BINARY_PACKED%' from {{m}} where row_group_id = 0 and file_name like '%c00000%' and path_in_schema in ('tid', 'function_id', 'start_ns') order by 1").fetchall())
"#,
        root = root.display()
    ));
    let lines: Vec<&str> = meta.lines().collect();
    assert_eq!(lines[0], "(10000, 10000, 8)", "{meta}");
    assert_eq!(lines[1], "[('ZSTD',)]", "{meta}");
    assert_eq!(lines[2], "0", "a column chunk without page index: {meta}");
    // Dictionaries for the few distinct functions and threads, delta
    // encoding for the start times.
    assert_eq!(
        lines[3], "[('function_id', True, False), ('start_ns', False, True), ('tid', True, False)]",
        "{meta}"
    );
    let schema_after = duckdb(&format!(
        "print(duckdb.sql(\"select name, type, converted_type, logical_type, repetition_type from parquet_schema('{}/calls/session_id=S1/part-c00001.parquet')\").fetchall())",
        root.display()
    ));
    assert_eq!(schema_after, schema_before);
    // Modes: files 0600, directories 0700; the staging tree holds only the lock.
    for f in names(&root.join("calls/session_id=S1")) {
        let m = fs::metadata(root.join("calls/session_id=S1").join(f)).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
    }
    let m = fs::metadata(root.join("calls/session_id=S1")).unwrap();
    assert_eq!(m.permissions().mode() & 0o777, 0o700);
    assert_eq!(names(&root.join(".scope-compact")), ["lock"]);
}

#[test]
fn a_mix_of_compacted_and_uncompacted_sessions_reads_as_one_table() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write_session(root, &SessionSpec::new("A", 50_000, 12_000));
    let mut b = SessionSpec::new("B", 30_000, 7_000);
    b.seed = 7;
    b.threads = 3;
    write_session(root, &b);
    let digest = duckdb_calls_digest(root);
    let counts = duckdb_counts(root);
    let opts = CompactOptions {
        session: Some("A".into()),
        ..CompactOptions::default()
    };
    let (report, _) = run(root, &opts);
    assert_eq!(report.sessions.len(), 1);
    assert_eq!(report.sessions[0].session_id, "A");
    assert!(names(&root.join("calls/session_id=B"))[0].starts_with("part-0"));
    // One glob over both, with the Hive column: same rows, same values.
    assert_eq!(duckdb_calls_digest(root), digest);
    assert_eq!(duckdb_counts(root), counts);
    // A join across tables still works over the mix.
    let out = duckdb(&format!(
        "print(duckdb.sql(\"select count(*) from read_parquet('{r}/calls/**/*.parquet', hive_partitioning=true) c join read_parquet('{r}/functions/**/*.parquet', hive_partitioning=true) f using (session_id, function_id)\").fetchall()[0][0])",
        r = root.display()
    ));
    assert_eq!(out.trim(), "80000");
    // The rest next time; then nothing is left to do.
    let (report, _) = run(root, &CompactOptions::default());
    assert_eq!(report.sessions.len(), 1);
    assert_eq!(report.sessions[0].session_id, "B");
    assert_eq!(
        report.skipped,
        [("A".to_owned(), "already compacted".to_owned())]
    );
    let (report, _) = run(root, &CompactOptions::default());
    assert!(report.sessions.is_empty());
    assert_eq!(report.skipped.len(), 2);
    assert_eq!(duckdb_calls_digest(root), digest);
}

#[test]
fn a_session_still_being_recorded_is_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut spec = SessionSpec::new("LIVE", 20_000, 5_000);
    spec.finished = false;
    write_session(root, &spec);
    let (report, lines) = run(root, &CompactOptions::default());
    assert!(report.sessions.is_empty());
    assert_eq!(report.skipped.len(), 1);
    assert!(
        report.skipped[0].1.contains("still being recorded"),
        "{lines:?}"
    );
    assert_eq!(names(&root.join("calls/session_id=LIVE")).len(), 4);
    let opts = CompactOptions {
        session: Some("LIVE".into()),
        ..CompactOptions::default()
    };
    let err = compact(root, &opts, &mut |_: &str| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("session LIVE is still being recorded"),
        "{err}"
    );
    let opts = CompactOptions {
        session: Some("NOPE".into()),
        ..CompactOptions::default()
    };
    let err = compact(root, &opts, &mut |_: &str| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no session NOPE in") && err.contains("LIVE"),
        "{err}"
    );
}

#[test]
fn a_corrupt_segment_leaves_its_session_uncompacted_and_named() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write_session(root, &SessionSpec::new("BAD", 20_000, 5_000));
    let mut ok = SessionSpec::new("GOOD", 10_000, 3_000);
    ok.seed = 3;
    write_session(root, &ok);
    let bad = root.join("calls/session_id=BAD/part-00002.parquet");
    let len = fs::metadata(&bad).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&bad)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let before: Vec<(String, Vec<u8>)> = names(&root.join("calls/session_id=BAD"))
        .into_iter()
        .map(|n| {
            let b = fs::read(root.join("calls/session_id=BAD").join(&n)).unwrap();
            (n, b)
        })
        .collect();
    let (report, lines) = run(root, &CompactOptions::default());
    assert_eq!(report.sessions.len(), 1);
    assert_eq!(report.sessions[0].session_id, "GOOD");
    assert_eq!(report.skipped.len(), 1);
    let (id, why) = &report.skipped[0];
    assert_eq!(id, "BAD");
    assert!(why.contains("part-00002.parquet"), "{why}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("warning: session BAD") && !l.contains('\n')),
        "{lines:?}"
    );
    // Untouched, byte for byte, in every table.
    let after: Vec<(String, Vec<u8>)> = names(&root.join("calls/session_id=BAD"))
        .into_iter()
        .map(|n| {
            let b = fs::read(root.join("calls/session_id=BAD").join(&n)).unwrap();
            (n, b)
        })
        .collect();
    assert_eq!(before, after);
    assert_eq!(
        names(&root.join("functions/session_id=BAD")),
        ["part-0.parquet", "part-1.parquet"]
    );
}

#[test]
fn bad_roots_get_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    let err = compact(&missing, &CompactOptions::default(), &mut |_: &str| {}).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("store {} does not exist", missing.display())
    );
    let empty = tmp.path().join("empty");
    fs::create_dir(&empty).unwrap();
    let err = compact(&empty, &CompactOptions::default(), &mut |_: &str| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not a scope store"), "{err}");
    assert!(
        !empty.join(".scope-compact").exists(),
        "nothing created in a non-store"
    );
    let file = tmp.path().join("file");
    fs::write(&file, "x").unwrap();
    let err = compact(&file, &CompactOptions::default(), &mut |_: &str| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not a directory"), "{err}");
}

#[test]
fn a_second_compaction_on_the_same_store_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write_session(root, &SessionSpec::new("S", 1_000, 500));
    // Hold the lock as a running compaction would.
    fs::create_dir_all(root.join(".scope-compact")).unwrap();
    let lock = fs::File::create(root.join(".scope-compact/lock")).unwrap();
    // SAFETY: flock on a descriptor we own.
    assert_eq!(
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) },
        0
    );
    let err = compact(root, &CompactOptions::default(), &mut |_: &str| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("another compaction is running"), "{err}");
}

#[test]
fn retention_by_age_removes_old_sessions_and_keeps_recordings_in_progress() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let day = 86_400_000_000_000i64;
    let mut old = SessionSpec::new("OLD", 5_000, 2_000);
    old.start_ns = now_ns() - 10 * day;
    write_session(root, &old);
    write_session(root, &SessionSpec::new("NEW", 5_000, 2_000));
    let mut live = SessionSpec::new("LIVE", 5_000, 2_000);
    live.finished = false;
    write_session(root, &live);
    let mut dead = SessionSpec::new("DEAD", 5_000, 2_000);
    dead.finished = false;
    write_session(root, &dead);
    // A recording killed long ago: no sessions row, every file old.
    let long_ago = SystemTime::now() - Duration::from_secs(9 * 86_400);
    for t in ["calls", "losses", "agent_metrics", "functions"] {
        for n in names(&root.join(t).join("session_id=DEAD")) {
            fs::File::options()
                .write(true)
                .open(root.join(t).join("session_id=DEAD").join(n))
                .unwrap()
                .set_modified(long_ago)
                .unwrap();
        }
    }
    let old_bytes: u64 = ["calls", "losses", "agent_metrics", "functions", "sessions"]
        .iter()
        .flat_map(|t| {
            let dir = root.join(t).join("session_id=OLD");
            names(&dir)
                .into_iter()
                .map(move |n| fs::metadata(dir.join(n)).unwrap().len())
        })
        .sum();
    let opts = CompactOptions {
        keep: Some(Duration::from_secs(7 * 86_400)),
        ..CompactOptions::default()
    };
    let (report, lines) = run(root, &opts);
    let mut removed = report.removed.clone();
    removed.sort();
    assert_eq!(removed.len(), 2, "{removed:?}");
    assert_eq!(removed[0].0, "DEAD");
    assert_eq!(removed[1], ("OLD".to_owned(), old_bytes, "age"));
    assert!(
        lines
            .iter()
            .any(|l| l.contains("DEAD") && l.contains("no sessions row")),
        "{lines:?}"
    );
    for t in ["calls", "losses", "agent_metrics", "functions", "sessions"] {
        assert!(!root.join(t).join("session_id=OLD").exists(), "{t}");
        assert!(!root.join(t).join("session_id=DEAD").exists(), "{t}");
    }
    // NEW was compacted, LIVE left alone.
    assert_eq!(report.sessions.len(), 1);
    assert_eq!(report.sessions[0].session_id, "NEW");
    assert_eq!(names(&root.join("calls/session_id=LIVE")).len(), 3);
    let counts = duckdb_counts(root);
    assert!(
        counts.iter().all(|(_, s, _)| s == "NEW" || s == "LIVE"),
        "{counts:?}"
    );
    assert_eq!(names(&root.join(".scope-compact")), ["lock"]);
}

#[test]
fn retention_by_size_removes_the_oldest_sessions_until_the_store_fits() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let hour = 3_600_000_000_000i64;
    for (i, id) in ["S1", "S2", "S3"].iter().enumerate() {
        let mut s = SessionSpec::new(id, 20_000, 5_000);
        s.start_ns = now_ns() - (10 - i as i64) * hour;
        s.seed = i as u64 + 1;
        write_session(root, &s);
    }
    let (report, _) = run(root, &CompactOptions::default());
    let sizes: Vec<u64> = report.sessions.iter().map(|s| s.bytes_after).collect();
    let total: u64 = sizes.iter().sum();
    // Room for a bit more than one session: the two oldest go.
    let opts = CompactOptions {
        max_size: Some(total - sizes[0] - sizes[1] + 10),
        ..CompactOptions::default()
    };
    let (report, _) = run(root, &opts);
    assert_eq!(
        report.removed,
        [
            ("S1".to_owned(), sizes[0], "size"),
            ("S2".to_owned(), sizes[1], "size")
        ]
    );
    let counts = duckdb_counts(root);
    assert!(counts.iter().all(|(_, s, _)| s == "S3"), "{counts:?}");
    assert!(counts.iter().any(|(t, _, n)| t == "calls" && *n == 20_000));
}
