//! Argument and return-value capture (`--args`, `--args-for`) against
//! tests/fixtures/c/args.c, with the real eBPF programs: every captured
//! argument list and return value equals what the fixture passed and
//! returned, call by call; nothing is captured unless asked. Recorded with
//! `record`'s default path (every call) plus the argument flags under test.

use std::path::Path;

use serde_json::{Value, json};

use scope_tests::*;

const FUNCTIONS: [&str; 7] = [
    "add3", "pick", "narrow", "scale", "pair_sum", "many", "nothing",
];
const N: i64 = 100;

fn record(out: &Path, extra: &[&str], bin: &Path) -> AgentRun {
    let n = N.to_string();
    record_with(
        out,
        &FUNCTIONS,
        extra,
        &[bin.to_str().unwrap(), "calls", &n],
    )
}

fn ok(run: &AgentRun) {
    assert_success(run);
}

/// The address of the fixture's NAME string, from its `name 0x…` line.
fn name_address(stdout: &str) -> i64 {
    let hex = stdout
        .lines()
        .find_map(|l| l.strip_prefix("name 0x"))
        .unwrap_or_else(|| panic!("no `name 0x…` line in the fixture's output:\n{stdout}"));
    i64::from_str_radix(hex.trim(), 16).unwrap_or_else(|e| panic!("{hex:?}: {e}"))
}

/// (args, ret) of every call of `function`, in call order.
fn captured(out: &Path, function: &str) -> Vec<(Value, Value)> {
    let sql = format!(
        "SELECT c.args AS args, c.ret AS ret \
         FROM read_parquet('{}', hive_partitioning = true) c \
         JOIN read_parquet('{}', hive_partitioning = true) f USING (session_id, function_id) \
         WHERE f.name = '{function}' ORDER BY c.call_id",
        calls_glob(out),
        functions_glob(out)
    );
    duckdb(&sql)
        .into_iter()
        .map(|r| (r["args"].clone(), r["ret"].clone()))
        .collect()
}

/// What the fixture passes and returns in iteration `i` (see args.c).
fn expected(function: &str, i: i64, name: i64) -> (Value, Value) {
    match function {
        "add3" => (json!([i, 2 * i, -3]), json!(3 * i - 3)),
        // `unsigned long` is stored as its bits: below 2^63 here.
        "pick" => (json!([-i, name, i * 1_000_000_007]), json!(-i - 5)),
        "narrow" => {
            let (a, b, c, d) = (-i as i16, (-2 * i) as i8, (i % 200) as u8, i % 2);
            let sum = (i64::from(a) + i64::from(b) + i64::from(c) + d) as i16;
            (json!([a, b, c, d]), json!(sum))
        }
        // The double is in xmm0: null; n is in rdi. A double return: null.
        "scale" => (json!([null, i]), Value::Null),
        // The 16-byte struct takes rdi and rsi (null); k is in rdx.
        "pair_sum" => (json!([null, 7]), json!(7)),
        // Seven parameters: the first six are stored.
        "many" => (json!([i, 1, 2, 3, 4, 5]), json!(i + 21)),
        // No parameters: an empty list; void: null.
        "nothing" => (json!([]), Value::Null),
        _ => unreachable!("{function}"),
    }
}

#[test]
fn every_argument_and_return_value_matches_at_o0_and_o2() {
    require_root();
    for opt in ["0", "2"] {
        let bin = args_fixture(opt);
        let dir = tempfile::tempdir().unwrap();
        let run = record(dir.path(), &["--args"], &bin);
        ok(&run);
        assert!(
            run.stderr
                .contains("recording arguments and return values of 7 functions"),
            "{}",
            run.stderr
        );
        let name = name_address(&run.stdout);
        for function in FUNCTIONS {
            let rows = captured(dir.path(), function);
            assert_eq!(
                rows.len(),
                N as usize,
                "-O{opt} {function}: calls\n{}",
                run.stderr
            );
            for (i, row) in rows.iter().enumerate() {
                let want = expected(function, i as i64, name);
                assert_eq!(row, &want, "-O{opt} {function}, call {i}");
            }
        }
    }
}

#[test]
fn nothing_is_captured_unless_asked() {
    require_root();
    let bin = args_fixture("2");
    let dir = tempfile::tempdir().unwrap();
    let run = record(dir.path(), &[], &bin);
    ok(&run);
    assert!(!run.stderr.contains("arguments"), "{}", run.stderr);
    let rows = duckdb(&format!(
        "SELECT count(*) AS calls, count(args) AS args, count(ret) AS ret \
         FROM read_parquet('{}', hive_partitioning = true)",
        calls_glob(dir.path())
    ));
    assert_eq!(
        rows[0],
        json!({"calls": 7 * N, "args": 0, "ret": 0})
            .as_object()
            .unwrap()
            .clone()
    );
    // Two plain events per call, as without the feature.
    assert!(
        run.stderr.contains(&format!("{} events", 2 * 7 * N)),
        "{}",
        run.stderr
    );
}

#[test]
fn args_for_selects_only_matching_functions() {
    require_root();
    let bin = args_fixture("2");
    let dir = tempfile::tempdir().unwrap();
    let run = record(dir.path(), &["--args-for", "add*", "-a", "many"], &bin);
    ok(&run);
    let rows = duckdb(&format!(
        "SELECT f.name AS name, count(*) AS calls, count(c.args) AS args, count(c.ret) AS ret \
         FROM read_parquet('{}', hive_partitioning = true) c \
         JOIN read_parquet('{}', hive_partitioning = true) f USING (session_id, function_id) \
         GROUP BY f.name ORDER BY f.name",
        calls_glob(dir.path()),
        functions_glob(dir.path())
    ));
    assert_eq!(rows.len(), FUNCTIONS.len(), "{rows:?}");
    for r in &rows {
        let name = r["name"].as_str().unwrap();
        let with = if name == "add3" || name == "many" {
            N
        } else {
            0
        };
        assert_eq!(r["calls"], json!(N), "{name}");
        assert_eq!(
            (r["args"].clone(), r["ret"].clone()),
            (json!(with), json!(with)),
            "{name}"
        );
    }
    let add3 = captured(dir.path(), "add3");
    assert_eq!(add3[7], expected("add3", 7, 0));
}

#[test]
fn args_for_a_function_not_probed_fails_before_recording() {
    require_root();
    let bin = args_fixture("2");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let run = run_agent(&[
        "record",
        "--out",
        out.to_str().unwrap(),
        "-f",
        "add3",
        "--args-for",
        "nope*",
        "--",
        bin.to_str().unwrap(),
        "calls",
        "1",
    ]);
    assert!(!run.status.success(), "should fail:\n{}", run.stderr);
    assert!(
        run.stderr.contains("--args-for 'nope*'"),
        "the message names the pattern: {}",
        run.stderr
    );
    assert!(!out.exists(), "nothing written on bad input");
    assert!(!run.stdout.contains("name 0x"), "the command never ran");
}

#[test]
fn types_come_from_a_separate_debug_file() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("args");
    let debug = dir.path().join("args.debug");
    std::fs::copy(args_fixture("2"), &bin).unwrap();
    let objcopy = |args: &[&std::ffi::OsStr]| {
        let status = std::process::Command::new("objcopy")
            .args(args)
            .status()
            .expect("objcopy (binutils) runs");
        assert!(status.success(), "objcopy {args:?}: {status}");
    };
    objcopy(&[
        "--only-keep-debug".as_ref(),
        bin.as_os_str(),
        debug.as_os_str(),
    ]);
    let link = format!("--add-gnu-debuglink={}", debug.display());
    objcopy(&["--strip-debug".as_ref(), link.as_ref(), bin.as_os_str()]);
    let out = dir.path().join("out");
    let run = run_agent(&[
        "record",
        "--out",
        out.to_str().unwrap(),
        "-f",
        "narrow",
        "-f",
        "scale",
        "--args",
        "--",
        bin.to_str().unwrap(),
        "calls",
        "100",
    ]);
    ok(&run);
    // Only the DWARF types make these exact: the sign of a short, the
    // double that takes no integer register, the double return.
    for function in ["narrow", "scale"] {
        let rows = captured(&out, function);
        assert_eq!(rows.len(), N as usize, "{function}\n{}", run.stderr);
        for (i, row) in rows.iter().enumerate() {
            assert_eq!(
                row,
                &expected(function, i as i64, 0),
                "{function}, call {i}"
            );
        }
    }
}
