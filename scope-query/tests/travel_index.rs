//! `stack --at` reads only the `calls` files whose footer statistics allow
//! a call open at the instant, and still finds every frame: outer calls
//! return last, so their rows lie in later segments than the instant's
//! inner calls. DuckDB, reading every file, is the reference, before and
//! after `compact` (which sorts by thread and entry instead).

mod compact_support;

use std::path::Path;

use compact_support::*;
use scope_query::compact::{CompactOptions, compact};
use scope_query::store::{OpenOptions, SessionSel, Store};
use scope_query::time::TimeArg;
use scope_query::travel;

/// Instants spread over the session, for each of its threads.
fn probes(root: &Path) -> Vec<(u32, i64)> {
    let out = duckdb(&format!(
        "r = duckdb.sql(\"select min(start_ns), max(start_ns), min(tid) from read_parquet('{}/calls/**/*.parquet')\").fetchall()[0]\nprint(r[0], r[1], r[2])",
        root.display()
    ));
    let v: Vec<i64> = out.split_whitespace().map(|x| x.parse().unwrap()).collect();
    let (lo, hi, tid0) = (v[0], v[1], v[2] as u32);
    let mut p = Vec::new();
    for i in 0..6 {
        let at = lo + (hi - lo) / 6 * i + 777;
        for tid in tid0..tid0 + 4 {
            p.push((tid, at));
        }
    }
    p
}

/// DuckDB's frames (call ids, innermost first) at each probe, from every
/// file.
fn duck_frames(root: &Path, probes: &[(u32, i64)]) -> Vec<Vec<u64>> {
    let list: Vec<String> = probes.iter().map(|(t, a)| format!("({t},{a})")).collect();
    let out = duckdb(&format!(
        r#"
c = duckdb.sql("select tid, start_ns, duration_ns, depth, call_id from read_parquet('{root}/calls/**/*.parquet')").fetchall()
for tid, at in [{list}]:
    rows = sorted((r for r in c if r[0] == tid and r[1] <= at and r[1] + r[2] > at), key=lambda r: (-r[3], -r[1]))
    print(" ".join(str(r[4]) for r in rows) or "-")
"#,
        root = root.display(),
        list = list.join(",")
    ));
    out.lines()
        .map(|l| {
            if l == "-" {
                Vec::new()
            } else {
                l.split(' ').map(|x| x.parse().unwrap()).collect()
            }
        })
        .collect()
}

/// scope's frames at each probe, and how many files the footers let each
/// point query read.
fn scope_frames(root: &Path, probes: &[(u32, i64)]) -> (Vec<Vec<u64>>, Vec<usize>) {
    let store = Store::open(
        &root.display().to_string(),
        &OpenOptions {
            sessions: SessionSel::Id("S1".into()),
            ..OpenOptions::default()
        },
    )
    .unwrap();
    let mut frames = Vec::new();
    let mut files = Vec::new();
    for &(tid, at) in probes {
        let st = travel::stack(&store, tid, TimeArg::Absolute(at)).unwrap();
        frames.push(st.frames.iter().map(|f| f.call_id as u64).collect());
        files.push(
            store
                .calls_files_near("S1", i64::from(tid), at, at)
                .expect("every file has statistics")
                .len(),
        );
    }
    (frames, files)
}

#[test]
fn a_point_query_reads_few_files_and_finds_every_frame() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut spec = SessionSpec::new("S1", 60_000, 4_000);
    spec.seed = 7;
    write_session(root, &spec);
    let segments = std::fs::read_dir(root.join("calls/session_id=S1"))
        .unwrap()
        .count();
    assert_eq!(segments, 15);
    let probes = probes(root);
    let expected = duck_frames(root, &probes);
    assert!(
        expected.iter().filter(|f| f.len() >= 3).count() >= probes.len() / 4,
        "the probes should mostly land inside nested calls: {expected:?}"
    );

    let (frames, files) = scope_frames(root, &probes);
    assert_eq!(frames, expected, "segments as written");
    // The footers leave out most segments: a root call can span a few,
    // but not the session.
    let read: usize = files.iter().sum();
    assert!(
        read * 3 < segments * probes.len(),
        "point queries read {read} files of {} ({files:?})",
        segments * probes.len()
    );

    // Compacted: sorted by thread, a thread's instant is in a file or
    // two, three where a root call spans a file's end.
    let opts = CompactOptions {
        row_group_rows: 2_000,
        target_file_rows: 10_000,
        ..CompactOptions::default()
    };
    compact(root, &opts, &mut |_| {}).unwrap();
    let (frames, files) = scope_frames(root, &probes);
    assert_eq!(frames, expected, "compacted");
    assert!(files.iter().all(|&n| n <= 3), "{files:?}");
}

#[test]
fn the_footer_index_leaves_nothing_out_at_its_edges() {
    use scope_query::store::CallsRange;
    let r = CallsRange {
        tid: (10, 12),
        start_ns: (1_000, 2_000),
        longest_ns: 500,
        open_calls: false,
    };
    // A call entered at 2,000 lasting 500 ns is open until 2,499.
    assert!(r.may_overlap(11, 2_499, 2_499));
    assert!(!r.may_overlap(11, 2_500, 2_500));
    // Entered at 1,000 at the earliest.
    assert!(r.may_overlap(10, 1_000, 1_000));
    assert!(!r.may_overlap(10, 999, 999));
    assert!(!r.may_overlap(13, 1_500, 1_500));
    assert!(!r.may_overlap(9, 1_500, 1_500));
    // A call that never returned is open to the end.
    let open = CallsRange {
        open_calls: true,
        ..r
    };
    assert!(open.may_overlap(11, 1_000_000, 1_000_000));
    assert!(!open.may_overlap(11, 999, 999));
}
