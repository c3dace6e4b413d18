use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type, UInt8Type, UInt32Type, UInt64Type};
use arrow_array::{Array, RecordBatch};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::*;

const SID: &str = "20261125T114825Z-4242";

fn config(out: &Path, rows: usize) -> StoreConfig {
    StoreConfig {
        out_dir: out.to_path_buf(),
        session_id: SID.to_string(),
        segment_max_rows: rows,
        segment_max_age: Duration::from_secs(3600),
    }
}

fn call(i: u64) -> CallRecord {
    CallRecord {
        pid: 42,
        tid: 43 + (i % 2) as u32,
        call_id: i,
        parent_call_id: if i.is_multiple_of(3) { 0 } else { i - 1 },
        // Not stored.
        parent_function_id: 0,
        function_id: 1 + (i % 4) as u32,
        depth: (i % 3) as u32,
        start_ns: 1_700_000_000_000_000_000 + i as i64,
        duration_ns: if i % 5 == 4 { -1 } else { 100 * i as i64 },
        self_ns: if i % 5 == 4 { -1 } else { 10 * i as i64 },
        flags: (i % 5 == 4) as u8 * 2,
        // Every third call has arguments (one null slot) and a return value.
        args: i.is_multiple_of(3).then(|| crate::capture::CallArgs {
            values: [i as i64, -(i as i64), 0, 0, 0, 0],
            len: 3,
            null_mask: 0b100,
        }),
        ret: i.is_multiple_of(3).then_some(-7 * i as i64),
        // Every sixth call has strings (one null element, one non-ASCII).
        arg_strings: i
            .is_multiple_of(6)
            .then(|| vec![Some(format!("s{i}")), None, Some("é…".to_string())].into_boxed_slice()),
        // Every other call with a duration was followed by `--sched`.
        offcpu_ns: (i % 5 != 4 && i.is_multiple_of(2)).then_some(30 * i as i64),
        // Every third call served a request (--hooks).
        request_id: i.is_multiple_of(3).then_some(i / 3 + 1),
    }
}

fn session_row() -> SessionRow {
    SessionRow {
        host: "box".into(),
        boot_id: "b00t".into(),
        pid: 42,
        command: "./a.out --fast".into(),
        start_ns: 1,
        end_ns: 2,
        version: "0.1.0".into(),
        clock_offset_ns: 3,
        utc_offset_ns: 0,
        utc_uncertainty_ns: None,
        clock_sync: "unsynchronized".into(),
        events: 4,
        calls: Some(5),
        calls_exact: true,
        calls_recorded: 5,
        lost: 6,
        max_overhead_pct: None,
        predicted_full_pct: None,
        predicted_full_at_least: false,
        predicted_pct: None,
        measured_pct: None,
        measured_low_pct: None,
        measured_high_pct: None,
    }
}

/// Totals of two functions: one exact, one estimated without upper bound.
fn total_rows() -> Vec<TotalRecord> {
    vec![
        TotalRecord {
            function_id: 1,
            calls: Some(5),
            exact: true,
            calls_low: 5,
            calls_high: Some(5),
            calls_recorded: 5,
            method: "recorded",
            basis_function_id: None,
            total_ns: Some(500),
            self_ns: Some(400),
        },
        TotalRecord {
            function_id: 2,
            calls: None,
            exact: false,
            calls_low: 4321,
            calls_high: None,
            calls_recorded: 17,
            method: "sampled: lower bound only",
            basis_function_id: None,
            total_ns: None,
            self_ns: None,
        },
    ]
}

fn functions() -> Vec<FunctionRow> {
    (1..=4)
        .map(|id| FunctionRow {
            function_id: id,
            name: format!("ns::f{id}"),
            symbol: format!("_ZN2ns2f{id}E"),
            module: "/usr/bin/a.out".into(),
            build_id: (id % 2 == 0).then(|| "abcd".to_string()),
            address: 0x1000 * u64::from(id),
            size: 16,
            file: (id != 3).then(|| "a.c".to_string()),
            line: (id != 3).then_some(10 * id),
            ..Default::default()
        })
        .collect()
}

fn partition(out: &Path, table: &str) -> PathBuf {
    out.join(table).join(format!("session_id={SID}"))
}

fn read(path: &Path) -> Vec<RecordBatch> {
    let file = File::open(path).expect("open parquet");
    ParquetRecordBatchReaderBuilder::try_new(file)
        .expect("parquet footer")
        .build()
        .expect("reader")
        .collect::<std::result::Result<_, _>>()
        .expect("batches")
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).expect("metadata").permissions().mode() & 0o777
}

/// Reads all call rows back, in file order, as `CallRecord`s (nulls mapped
/// back to the in-memory sentinels).
fn read_calls(out: &Path) -> Vec<CallRecord> {
    let dir = partition(out, "calls");
    let mut rows = Vec::new();
    for name in names(&dir) {
        for b in read(&dir.join(name)) {
            let u32c = |i: usize| b.column(i).as_primitive::<UInt32Type>().clone();
            let u64c = |i: usize| b.column(i).as_primitive::<UInt64Type>().clone();
            let i64c = |i: usize| b.column(i).as_primitive::<Int64Type>().clone();
            let (pid, tid, call_id, parent) = (u32c(0), u32c(1), u64c(2), u64c(3));
            let depth = b.column(5).as_primitive::<Int32Type>().clone();
            let (fid, start, dur, selft) = (u32c(4), i64c(6), i64c(7), i64c(8));
            let flags = b.column(9).as_primitive::<UInt8Type>().clone();
            let args = b.column(10).as_list::<i32>().clone();
            let ret = i64c(11);
            let strings = b.column(12).as_list::<i32>().clone();
            let (oncpu, offcpu) = (i64c(13), i64c(14));
            let request = u64c(15);
            for r in 0..b.num_rows() {
                // oncpu + offcpu = duration, both or neither.
                assert_eq!(oncpu.is_valid(r), offcpu.is_valid(r));
                if offcpu.is_valid(r) {
                    assert_eq!(oncpu.value(r) + offcpu.value(r), dur.value(r));
                }
                let arg_strings = strings.is_valid(r).then(|| {
                    let list = strings.value(r);
                    let list = list.as_string::<i32>();
                    (0..list.len())
                        .map(|k| list.is_valid(k).then(|| list.value(k).to_string()))
                        .collect::<Vec<_>>()
                        .into_boxed_slice()
                });
                let args = args.is_valid(r).then(|| {
                    let list = args.value(r);
                    let list = list.as_primitive::<Int64Type>();
                    let mut out = crate::capture::CallArgs {
                        len: list.len() as u8,
                        ..Default::default()
                    };
                    for k in 0..list.len() {
                        if list.is_null(k) {
                            out.null_mask |= 1 << k;
                        } else {
                            out.values[k] = list.value(k);
                        }
                    }
                    out
                });
                rows.push(CallRecord {
                    pid: pid.value(r),
                    tid: tid.value(r),
                    call_id: call_id.value(r),
                    parent_call_id: if parent.is_null(r) {
                        0
                    } else {
                        parent.value(r)
                    },
                    parent_function_id: 0,
                    function_id: fid.value(r),
                    depth: depth.value(r) as u32,
                    start_ns: start.value(r),
                    duration_ns: if dur.is_null(r) { -1 } else { dur.value(r) },
                    self_ns: if selft.is_null(r) { -1 } else { selft.value(r) },
                    flags: flags.value(r),
                    args,
                    ret: ret.is_valid(r).then(|| ret.value(r)),
                    arg_strings,
                    offcpu_ns: offcpu.is_valid(r).then(|| offcpu.value(r)),
                    request_id: request.is_valid(r).then(|| request.value(r)),
                });
            }
        }
    }
    rows
}

#[test]
fn calls_are_split_into_segments_and_read_back() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("out");
    let mut store = ParquetStore::create(config(&out, 4)).expect("create");
    let calls: Vec<CallRecord> = (1..=10).map(call).collect();
    for chunk in calls.chunks(3) {
        store.write_calls(chunk).expect("write");
    }
    // Two full segments are on disk before finish.
    assert_eq!(
        names(&partition(&out, "calls")),
        ["part-00000.parquet", "part-00001.parquet"]
    );
    let summary = store.finish(&session_row(), &total_rows()).expect("finish");
    assert_eq!(summary.call_rows, 10);
    assert_eq!(summary.loss_rows, 0);
    assert_eq!(
        names(&partition(&out, "calls")),
        [
            "part-00000.parquet",
            "part-00001.parquet",
            "part-00002.parquet"
        ]
    );
    let sizes: Vec<usize> = names(&partition(&out, "calls"))
        .iter()
        .map(|n| {
            read(&partition(&out, "calls").join(n))
                .iter()
                .map(RecordBatch::num_rows)
                .sum()
        })
        .collect();
    assert_eq!(sizes, [4, 4, 2]);
    assert_eq!(read_calls(&out), calls);

    // 3 calls + empty losses + functions + totals + threads + overview +
    // sessions.
    assert_eq!(summary.files.len(), 9);
    let on_disk: u64 = summary
        .files
        .iter()
        .map(|f| fs::metadata(f).expect("file").len())
        .sum();
    assert_eq!(summary.bytes, on_disk);
}

fn col_is_null(b: &RecordBatch, name: &str, row: usize) -> bool {
    b.column_by_name(name).expect("column").is_null(row)
}

#[test]
fn nulls_and_schema() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut store = ParquetStore::create(config(tmp.path(), 100)).expect("create");
    let root = CallRecord {
        call_id: 1,
        parent_call_id: 0,
        duration_ns: -1,
        self_ns: -1,
        ..CallRecord::default()
    };
    let child = CallRecord {
        call_id: 2,
        parent_call_id: 1,
        duration_ns: 0,
        self_ns: 0,
        ..CallRecord::default()
    };
    store.write_calls(&[root, child]).expect("write");
    store.finish(&session_row(), &total_rows()).expect("finish");
    let batches = read(&partition(tmp.path(), "calls").join("part-00000.parquet"));
    assert_eq!(batches.len(), 1);
    let b = &batches[0];
    assert_eq!(b.schema().fields().len(), 16);
    assert!(col_is_null(b, "args", 0) && col_is_null(b, "ret", 1));
    // Not followed by --sched: no on/off-CPU time.
    assert!(col_is_null(b, "oncpu_ns", 1) && col_is_null(b, "offcpu_ns", 1));
    assert!(col_is_null(b, "arg_strings", 0) && col_is_null(b, "arg_strings", 1));
    assert!(b.schema().field_with_name("session_id").is_err());
    let col = |name: &str| b.column_by_name(name).expect("column").clone();
    assert_eq!(col("parent_call_id").null_count(), 1);
    assert!(col("parent_call_id").is_null(0));
    assert!(col("duration_ns").is_null(0));
    assert!(col("self_ns").is_null(0));
    assert!(col("duration_ns").is_valid(1));
    assert_eq!(col("duration_ns").as_primitive::<Int64Type>().value(1), 0);
    assert!(
        !b.schema()
            .field_with_name("pid")
            .expect("pid")
            .is_nullable()
    );
}

#[test]
fn functions_losses_and_session_round_trip() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path();
    let mut store = ParquetStore::create(config(out, 2)).expect("create");
    store.write_functions(&functions()).expect("functions");
    // Durable right away.
    let f = read(&partition(out, "functions").join("part-0.parquet"));
    assert_eq!(f[0].num_rows(), 4);
    let losses: Vec<LossRecord> = (0..5)
        .map(|cpu| LossRecord {
            cpu,
            start_ns: 10,
            end_ns: 20,
            lost: u64::from(cpu) * 7,
        })
        .collect();
    store.write_losses(&losses).expect("losses");
    let summary = store.finish(&session_row(), &total_rows()).expect("finish");
    assert_eq!(summary.loss_rows, 5);
    assert_eq!(
        names(&partition(out, "losses")),
        [
            "part-00000.parquet",
            "part-00001.parquet",
            "part-00002.parquet"
        ]
    );

    let f = &f[0];
    let name = f.column_by_name("name").expect("name").as_string::<i32>();
    assert_eq!(name.value(2), "ns::f3");
    let build_id = f.column_by_name("build_id").expect("build_id");
    assert!(build_id.is_null(0) && build_id.is_valid(1));
    let line = f.column_by_name("line").expect("line");
    assert!(line.is_null(2));
    assert_eq!(line.as_primitive::<UInt32Type>().value(3), 40);

    let s = read(&partition(out, "sessions").join("part-0.parquet"));
    assert_eq!(s[0].num_rows(), 1);
    let col = |n: &str| s[0].column_by_name(n).expect("column").clone();
    assert_eq!(col("command").as_string::<i32>().value(0), "./a.out --fast");
    assert_eq!(col("lost").as_primitive::<UInt64Type>().value(0), 6);
    assert_eq!(col("calls").as_primitive::<UInt64Type>().value(0), 5);
    assert!(col("calls_exact").as_boolean().value(0));
    assert!(col("max_overhead_pct").is_null(0));
    assert_eq!(col("boot_id").as_string::<i32>().value(0), "b00t");
    assert_eq!(
        col("clock_sync").as_string::<i32>().value(0),
        "unsynchronized"
    );
    assert!(col("utc_uncertainty_ns").is_null(0));

    let t = read(&partition(out, "totals").join("part-0.parquet"));
    assert_eq!(t[0].schema(), *schema::TOTALS);
    assert_eq!(t[0].num_rows(), 2);
    let tcol = |n: &str| t[0].column_by_name(n).expect("column").clone();
    assert_eq!(tcol("calls").as_primitive::<UInt64Type>().value(0), 5);
    assert!(tcol("calls").is_null(1), "no honest estimate: null");
    assert!(tcol("exact").as_boolean().value(0) && !tcol("exact").as_boolean().value(1));
    assert_eq!(
        tcol("calls_low").as_primitive::<UInt64Type>().values(),
        &[5, 4321]
    );
    assert!(tcol("calls_high").is_null(1));
    assert_eq!(
        tcol("method").as_string::<i32>().value(1),
        "sampled: lower bound only"
    );
    assert_eq!(
        col("clock_offset_ns").as_primitive::<Int64Type>().value(0),
        3
    );
}

#[test]
fn permissions_are_private() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("new").join("out");
    let mut store = ParquetStore::create(config(&out, 2)).expect("create");
    store
        .write_calls(&[call(1), call(2), call(3)])
        .expect("write");
    let summary = store.finish(&session_row(), &total_rows()).expect("finish");
    assert_eq!(mode(&out), 0o700);
    for table in ["calls", "functions", "losses", "sessions"] {
        assert_eq!(mode(&out.join(table)), 0o700, "{table}");
        assert_eq!(mode(&partition(&out, table)), 0o700, "{table}");
    }
    for f in &summary.files {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
}

#[test]
fn existing_out_dir_mode_is_left_alone() {
    let tmp = tempfile::tempdir().expect("tempdir");
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let store = ParquetStore::create(config(tmp.path(), 2)).expect("create");
    store.finish(&session_row(), &total_rows()).expect("finish");
    assert_eq!(mode(tmp.path()), 0o755);
}

#[test]
fn no_temporary_files_remain_and_leftovers_are_invisible_to_globs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path();
    let mut store = ParquetStore::create(config(out, 3)).expect("create");
    store.write_functions(&functions()).expect("functions");
    store
        .write_calls(&(1..=7).map(call).collect::<Vec<_>>())
        .expect("write");
    store.finish(&session_row(), &total_rows()).expect("finish");
    for table in ["calls", "functions", "losses", "sessions"] {
        for name in names(&partition(out, table)) {
            assert!(
                name.starts_with("part-") && name.ends_with(".parquet"),
                "{table}/{name}"
            );
        }
    }
    // What a crash mid-write leaves behind: hidden, and not `*.parquet`.
    let leftover = durable::tmp_name(&segment_name(3));
    assert_eq!(leftover, ".part-00003.parquet.tmp");
    assert!(leftover.starts_with('.'));
    assert!(!leftover.ends_with(".parquet"));
}

#[test]
fn create_fails_naming_the_path_when_out_dir_is_under_a_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("file");
    fs::write(&file, b"x").expect("write");
    let out = file.join("out");
    let err = ParquetStore::create(config(&out, 2))
        .err()
        .expect("must fail");
    let msg = format!("{err:#}");
    assert_eq!(
        msg,
        format!(
            "cannot create output directory {}: Not a directory (os error 20)",
            out.display()
        )
    );

    // `out_dir` itself a regular file.
    let err = ParquetStore::create(config(&file, 2))
        .err()
        .expect("must fail");
    let msg = format!("{err:#}");
    assert!(msg.contains(&file.display().to_string()), "{msg}");
    assert!(msg.contains("not a directory"), "{msg}");
}

#[test]
fn create_refuses_to_overwrite_a_recorded_session() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = ParquetStore::create(config(tmp.path(), 2)).expect("create");
    store.finish(&session_row(), &total_rows()).expect("finish");
    let err = ParquetStore::create(config(tmp.path(), 2))
        .err()
        .expect("must fail");
    let msg = format!("{err:#}");
    assert!(msg.contains("refusing to overwrite"), "{msg}");
    assert!(msg.contains(SID), "{msg}");

    // Empty session directories (say, from a failed start) are reused.
    let other = tmp.path().join("other");
    fs::create_dir_all(other.join("calls").join(format!("session_id={SID}"))).expect("mkdir");
    ParquetStore::create(config(&other, 2)).expect("empty dir is fine");
}

#[test]
fn invalid_session_ids_are_rejected() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for id in ["", "..", "a/b", ".hidden"] {
        let cfg = StoreConfig {
            session_id: id.to_string(),
            ..config(tmp.path(), 2)
        };
        assert!(ParquetStore::create(cfg).is_err(), "{id:?}");
    }
}

#[test]
fn finish_without_calls_writes_empty_files_with_the_schema() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path();
    let store = ParquetStore::create(config(out, 2)).expect("create");
    let summary = store.finish(&session_row(), &total_rows()).expect("finish");
    assert_eq!(summary.call_rows, 0);
    // calls, losses, functions, totals, threads, overview, sessions.
    assert_eq!(summary.files.len(), 7);
    for (table, name, schema) in [
        ("calls", "part-00000.parquet", &*schema::CALLS),
        ("losses", "part-00000.parquet", &*schema::LOSSES),
        ("functions", "part-0.parquet", &*schema::FUNCTIONS),
    ] {
        let path = partition(out, table).join(name);
        let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(&path).expect("open"))
            .expect("footer");
        assert_eq!(builder.metadata().file_metadata().num_rows(), 0, "{table}");
        assert_eq!(builder.schema().fields(), schema.fields(), "{table}");
    }
}

#[test]
fn tick_rotates_an_old_segment() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path();
    let mut store = ParquetStore::create(config(out, 1000)).expect("create");
    let dir = partition(out, "calls");
    store.tick().expect("tick with nothing buffered");
    store.write_calls(&[call(1), call(2)]).expect("write");
    store.tick().expect("tick");
    assert!(names(&dir).is_empty(), "young segment must stay buffered");

    // Pretend the segment opened long ago.
    store.calls.opened = Some(Instant::now() - Duration::from_secs(7200));
    store.tick().expect("tick");
    assert_eq!(names(&dir), ["part-00000.parquet"]);
    store.tick().expect("tick");
    assert_eq!(names(&dir), ["part-00000.parquet"], "no empty segments");

    // The age check also runs on write, and the clock restarts per segment.
    store.write_calls(&[call(3)]).expect("write");
    assert_eq!(names(&dir).len(), 1);
    store.calls.opened = Some(Instant::now() - Duration::from_secs(7200));
    store.write_calls(&[call(4)]).expect("write");
    assert_eq!(names(&dir), ["part-00000.parquet", "part-00001.parquet"]);

    let summary = store.finish(&session_row(), &total_rows()).expect("finish");
    assert_eq!(summary.call_rows, 4);
    assert_eq!(read_calls(out), (1..=4).map(call).collect::<Vec<_>>());
}

#[test]
fn zero_max_age_writes_every_batch() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = StoreConfig {
        segment_max_age: Duration::ZERO,
        ..config(tmp.path(), 1000)
    };
    let mut store = ParquetStore::create(cfg).expect("create");
    store.write_calls(&[call(1)]).expect("write");
    store.write_calls(&[call(2)]).expect("write");
    assert_eq!(names(&partition(tmp.path(), "calls")).len(), 2);
}

#[test]
fn write_errors_name_the_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("gone");
    let err = durable::write_file(&dir, "part-00000.parquet", b"x").expect_err("must fail");
    let msg = format!("{err:#}");
    assert!(
        msg.starts_with(&format!(
            "writing {}",
            dir.join("part-00000.parquet").display()
        )),
        "{msg}"
    );

    // A full disk is an error, not a panic.
    if let Ok(mut full) = fs::OpenOptions::new().write(true).open("/dev/full") {
        let e = durable::write_and_sync(&mut full, &[0; 64 << 10]).expect_err("ENOSPC");
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
    }
}

#[test]
fn a_failed_segment_stays_buffered_for_retry() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path();
    let mut store = ParquetStore::create(config(out, 2)).expect("create");
    let dir = partition(out, "calls");
    let moved = tmp.path().join("moved");
    fs::rename(&dir, &moved).expect("hide the partition");
    assert!(store.write_calls(&[call(1), call(2), call(3)]).is_err());
    assert!(store.write_calls(&[call(4)]).is_err(), "still failing");
    fs::rename(&moved, &dir).expect("restore");
    store.write_calls(&[call(4)]).expect("write");
    store.finish(&session_row(), &total_rows()).expect("finish");
    // Rows 1 and 2 were kept and retried; 3 was never buffered (its batch
    // failed midway); 4 was buffered once, by the call that succeeded.
    let ids: Vec<u64> = read_calls(out).iter().map(|c| c.call_id).collect();
    assert_eq!(ids, [1, 2, 4]);
}

#[test]
fn store_is_send_and_static() {
    fn check<T: Send + 'static>() {}
    check::<ParquetStore>();
}

/// Runs the documented DuckDB query on a produced directory, if python3
/// with duckdb is available.
#[test]
fn duckdb_reads_the_dataset() {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import duckdb"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("note: skipping duckdb_reads_the_dataset: `python3 -c 'import duckdb'` failed");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path();
    let mut store = ParquetStore::create(config(out, 4)).expect("create");
    store.write_functions(&functions()).expect("functions");
    store
        .write_calls(&(1..=10).map(call).collect::<Vec<_>>())
        .expect("write");
    store.finish(&session_row(), &total_rows()).expect("finish");
    // A second, empty session, and crash debris, must not disturb the query.
    let other = StoreConfig {
        session_id: "20261126T000000Z-7".into(),
        ..config(out, 4)
    };
    ParquetStore::create(other)
        .expect("create")
        .finish(&session_row(), &total_rows())
        .expect("finish");
    fs::write(
        partition(out, "calls").join(".part-00009.parquet.tmp"),
        b"half a file",
    )
    .expect("debris");

    let script = r#"
import duckdb, sys
out = sys.argv[1]
con = duckdb.connect()
d = {r[0]: r[1] for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet('{out}/calls/**/*.parquet', hive_partitioning=true)").fetchall()}
assert d['session_id'] == 'VARCHAR', d
rows = con.execute(f"""
SELECT f.name, count(*) AS calls, sum(c.duration_ns) AS total_ns
FROM read_parquet('{out}/calls/**/*.parquet', hive_partitioning = true) c
JOIN read_parquet('{out}/functions/**/*.parquet', hive_partitioning = true) f
  USING (session_id, function_id)
GROUP BY f.name ORDER BY total_ns DESC;
""").fetchall()
for r in rows:
    print(f"{r[0]}\t{r[1]}\t{r[2]}")
for t in ['losses', 'sessions', 'totals']:
    con.execute(f"SELECT session_id FROM read_parquet('{out}/{t}/**/*.parquet', hive_partitioning=true)").fetchall()
"#;
    let output = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(out)
        .output()
        .expect("python3");
    assert!(
        output.status.success(),
        "duckdb failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    // function_id = 1 + i % 4; durations 100*i except i % 5 == 4 (null).
    let expected = {
        let mut per: Vec<(String, u64, i64)> = (1..=4u32)
            .map(|id| {
                let calls = (1..=10u64).filter(|i| 1 + (i % 4) as u32 == id);
                let total = calls
                    .clone()
                    .filter(|i| i % 5 != 4)
                    .map(|i| 100 * i as i64)
                    .sum();
                (format!("ns::f{id}"), calls.count() as u64, total)
            })
            .collect();
        per.sort_by_key(|p| std::cmp::Reverse(p.2));
        per.iter()
            .map(|(n, c, t)| format!("{n}\t{c}\t{t}\n"))
            .collect::<String>()
    };
    assert_eq!(stdout, expected);
}

#[test]
fn agent_metrics_are_written_only_when_there_are_some() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("out");
    let store = ParquetStore::create(config(&out, 2)).expect("create");
    store.finish(&session_row(), &total_rows()).expect("finish");
    assert!(!out.join("agent_metrics").exists());

    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("out");
    let mut store = ParquetStore::create(config(&out, 2)).expect("create");
    let rows: Vec<MetricsRecord> = (0..3)
        .map(|i| MetricsRecord {
            ts_ns: 1_000 + i,
            events: 10 * i as u64,
            call_rows: 5 * i as u64,
            lost: i as u64,
            events_per_s: 1.5,
            ring_fill_pct: (i != 1).then_some(12.5),
            agent_cpu_pct: 3.0,
            files_written: 1,
            rows_buffered: 7,
        })
        .collect();
    store.write_metrics(&rows).expect("metrics");
    let summary = store.finish(&session_row(), &total_rows()).expect("finish");
    let dir = partition(&out, "agent_metrics");
    assert_eq!(mode(&out.join("agent_metrics")), 0o700);
    assert_eq!(mode(&dir), 0o700);
    let file = dir.join("part-00000.parquet");
    assert!(summary.files.contains(&file), "{:?}", summary.files);
    assert_eq!(mode(&file), 0o600);
    let batches = read(&file);
    assert_eq!(batches[0].schema(), *schema::AGENT_METRICS);
    let b = &batches[0];
    assert_eq!(b.num_rows(), 3);
    let fill = b
        .column_by_name("ring_fill_pct")
        .expect("column")
        .as_primitive::<arrow_array::types::Float64Type>();
    assert_eq!(
        (fill.is_null(0), fill.is_null(1), fill.value(2)),
        (false, true, 12.5)
    );
    let lost = b
        .column_by_name("lost")
        .expect("column")
        .as_primitive::<UInt64Type>();
    assert_eq!(lost.values().to_vec(), vec![0, 1, 2]);
}

#[test]
fn governor_and_aggregates_are_written_only_when_there_are_some() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("out");
    let mut store = ParquetStore::create(config(&out, 2)).expect("create");
    // Empty batches are no rows either.
    store.write_governor(&[]).expect("governor");
    store.write_aggregates(&[]).expect("aggregates");
    store.tick().expect("tick");
    let summary = store.finish(&session_row(), &total_rows()).expect("finish");
    assert!(!out.join("governor").exists());
    assert!(!out.join("aggregates").exists());
    for f in &summary.files {
        let s = f.to_string_lossy();
        assert!(
            !s.contains("/governor/") && !s.contains("/aggregates/"),
            "{s}"
        );
    }
}

fn governor_rows() -> Vec<GovernorRecord> {
    vec![
        GovernorRecord {
            ts_ns: 1_000,
            function_id: None,
            action: "calibrate",
            reason: "probe cost 1.2 µs per call".into(),
            calls_per_s: None,
            predicted_pct: None,
            sample_n: None,
            budget_pct: 5.0,
        },
        GovernorRecord {
            ts_ns: 2_000,
            function_id: Some(7),
            action: "demote",
            reason: "too hot: 2.5M calls/s".into(),
            calls_per_s: Some(2.5e6),
            predicted_pct: Some(4.25),
            sample_n: Some(16),
            budget_pct: 5.0,
        },
    ]
}

fn aggregate_rows() -> Vec<AggregateRecord> {
    let hist: Vec<u64> = (0..64).map(|i| i * 3).collect();
    vec![
        AggregateRecord {
            function_id: 3,
            start_ns: 10,
            end_ns: 20,
            mode: "warmup",
            sample_n: 1,
            observed_ns: 10,
            calls_seen: 1_000,
            total_ns: None,
            log2_hist: None,
        },
        AggregateRecord {
            function_id: 7,
            start_ns: 20,
            end_ns: 120,
            mode: "sampled",
            sample_n: 16,
            observed_ns: 25,
            calls_seen: 40,
            total_ns: Some(u64::MAX - 1),
            log2_hist: Some(hist),
        },
    ]
}

#[test]
fn governor_and_aggregates_round_trip() {
    use arrow_array::types::Float64Type;

    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("out");
    let mut store = ParquetStore::create(config(&out, 2)).expect("create");
    let governor = governor_rows();
    let aggregates = aggregate_rows();
    store.write_governor(&governor[..1]).expect("governor");
    store.write_governor(&governor[1..]).expect("governor");
    store.write_aggregates(&aggregates).expect("aggregates");
    // Buffered until finish (the segment is not old yet).
    assert!(!out.join("governor").exists());
    let summary = store.finish(&session_row(), &total_rows()).expect("finish");

    for table in ["governor", "aggregates"] {
        let dir = partition(&out, table);
        assert_eq!(mode(&out.join(table)), 0o700, "{table}");
        assert_eq!(mode(&dir), 0o700, "{table}");
        assert_eq!(names(&dir), ["part-00000.parquet"], "{table}");
        let file = dir.join("part-00000.parquet");
        assert!(summary.files.contains(&file), "{:?}", summary.files);
        assert_eq!(mode(&file), 0o600, "{table}");
    }

    // governor
    let batches = read(&partition(&out, "governor").join("part-00000.parquet"));
    assert_eq!(batches.len(), 1);
    let b = &batches[0];
    assert_eq!(b.schema(), *schema::GOVERNOR);
    assert_eq!(b.num_rows(), 2);
    let col = |n: &str| b.column_by_name(n).expect("column").clone();
    assert_eq!(
        col("ts_ns").as_primitive::<Int64Type>().values(),
        &[1_000, 2_000]
    );
    let fid = col("function_id");
    assert!(fid.is_null(0));
    assert_eq!(fid.as_primitive::<UInt32Type>().value(1), 7);
    let action = col("action");
    let action = action.as_string::<i32>();
    assert_eq!((action.value(0), action.value(1)), ("calibrate", "demote"));
    let reason = col("reason");
    let reason = reason.as_string::<i32>();
    assert_eq!(reason.value(0), "probe cost 1.2 µs per call");
    assert_eq!(reason.value(1), "too hot: 2.5M calls/s");
    let cps = col("calls_per_s");
    assert!(cps.is_null(0));
    assert_eq!(cps.as_primitive::<Float64Type>().value(1), 2.5e6);
    let pred = col("predicted_pct");
    assert!(pred.is_null(0));
    assert_eq!(pred.as_primitive::<Float64Type>().value(1), 4.25);
    let n = col("sample_n");
    assert!(n.is_null(0));
    assert_eq!(n.as_primitive::<UInt32Type>().value(1), 16);
    assert_eq!(
        col("budget_pct").as_primitive::<Float64Type>().values(),
        &[5.0, 5.0]
    );

    // aggregates
    let batches = read(&partition(&out, "aggregates").join("part-00000.parquet"));
    assert_eq!(batches.len(), 1);
    let b = &batches[0];
    assert_eq!(b.schema(), *schema::AGGREGATES);
    assert_eq!(b.num_rows(), 2);
    let col = |n: &str| b.column_by_name(n).expect("column").clone();
    let u64s = |n: &str| col(n).as_primitive::<UInt64Type>().values().to_vec();
    assert_eq!(
        col("function_id").as_primitive::<UInt32Type>().values(),
        &[3, 7]
    );
    assert_eq!(
        col("start_ns").as_primitive::<Int64Type>().values(),
        &[10, 20]
    );
    assert_eq!(
        col("end_ns").as_primitive::<Int64Type>().values(),
        &[20, 120]
    );
    let m = col("mode");
    let m = m.as_string::<i32>();
    assert_eq!((m.value(0), m.value(1)), ("warmup", "sampled"));
    assert_eq!(
        col("sample_n").as_primitive::<UInt32Type>().values(),
        &[1, 16]
    );
    assert_eq!(u64s("observed_ns"), [10, 25]);
    assert_eq!(u64s("calls_seen"), [1_000, 40]);
    let total = col("total_ns");
    assert!(total.is_null(0));
    assert_eq!(total.as_primitive::<UInt64Type>().value(1), u64::MAX - 1);
    let hist = col("log2_hist");
    let hist = hist.as_list::<i32>();
    assert!(hist.is_null(0));
    assert!(hist.is_valid(1));
    let h = hist.value(1);
    let h = h.as_primitive::<UInt64Type>();
    assert_eq!(h.len(), 64);
    assert_eq!(h.null_count(), 0);
    assert_eq!(
        h.values().to_vec(),
        aggregates[1].log2_hist.clone().expect("hist")
    );
}

#[test]
fn governor_and_aggregates_are_flushed_on_age() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("out");
    let mut store = ParquetStore::create(config(&out, 2)).expect("create");
    store.write_governor(&governor_rows()).expect("governor");
    store
        .write_aggregates(&aggregate_rows())
        .expect("aggregates");
    assert!(!out.join("governor").exists());
    assert!(!out.join("aggregates").exists());
    let old = Some(Instant::now() - Duration::from_secs(7200));
    store.governor.opened = old;
    store.aggregates.opened = old;
    store.tick().expect("tick");
    for table in ["governor", "aggregates"] {
        let file = partition(&out, table).join("part-00000.parquet");
        let rows: usize = read(&file).iter().map(RecordBatch::num_rows).sum();
        assert_eq!(rows, 2, "{table}");
    }
    // The next rows go to the next segment.
    store
        .write_governor(&governor_rows()[..1])
        .expect("governor");
    store.finish(&session_row(), &total_rows()).expect("finish");
    assert_eq!(
        names(&partition(&out, "governor")),
        ["part-00000.parquet", "part-00001.parquet"]
    );
    assert_eq!(
        names(&partition(&out, "aggregates")),
        ["part-00000.parquet"]
    );
}

#[test]
fn samples_are_written_0600_with_their_schema_and_lists() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut w = super::SamplesWriter::new(dir.path(), SID).expect("writer");
    let frames: std::sync::Arc<[String]> = vec!["leaf".to_string(), "main".to_string()].into();
    let rows = vec![
        super::SampleRow {
            pid: 7,
            tid: 8,
            time_ns: 1_000,
            cpu: 1,
            stack: vec![0x10, 0x20],
            frames,
            stack_id: Some(3),
        },
        super::SampleRow {
            pid: 7,
            tid: 9,
            time_ns: 2_000,
            ..Default::default()
        },
    ];
    let (path, size) = w.write(&rows).expect("write");
    assert!(size > 0);
    assert_eq!(
        path,
        partition(dir.path(), "samples").join("part-00000.parquet")
    );
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&partition(dir.path(), "samples")), 0o700);
    let batches = read(&path);
    assert_eq!(batches[0].schema(), super::schema::SAMPLES.clone());
    let stack_id = batches[0]
        .column_by_name("stack_id")
        .expect("stack_id")
        .as_any()
        .downcast_ref::<arrow_array::Int32Array>()
        .expect("Int32")
        .clone();
    assert_eq!(stack_id.iter().collect::<Vec<_>>(), [Some(3), None]);
    let frames = batches[0]
        .column_by_name("frames")
        .expect("frames")
        .as_any()
        .downcast_ref::<arrow_array::ListArray>()
        .expect("List")
        .clone();
    assert_eq!(frames.value_length(0), 2);
    assert_eq!(frames.value_length(1), 0);
    // The next write is the next part.
    let (next, _) = w.write(&rows[..1]).expect("write");
    assert!(next.ends_with("part-00001.parquet"));
}
