//! String arguments (`--arg-strings N`) against tests/fixtures/c/strings.c,
//! with the real eBPF programs: every `char *` argument's string equals what
//! the fixture passed, call by call, cut at the cap with "…" when longer,
//! null for a NULL pointer and for non-string parameters; nothing is read
//! unless asked. Recorded with `record`'s default path (every call) plus
//! the argument flags under test.

use std::path::Path;

use serde_json::{Value, json};

use scope_tests::*;

const N: i64 = 20;
const LONG: &str = "the quick brown fox jumps over the lazy dog, again and again and again";

fn record(out: &Path, extra: &[&str], bin: &Path) -> AgentRun {
    let n = N.to_string();
    record_with(
        out,
        &["greet", "three"],
        extra,
        &[bin.to_str().unwrap(), "calls", &n],
    )
}

fn ok(run: &AgentRun) {
    assert_success(run);
}

/// (args, ret, arg_strings) of every call of `function`, in call order.
fn captured(out: &Path, function: &str) -> Vec<(Value, Value, Value)> {
    let sql = format!(
        "SELECT c.args AS args, c.ret AS ret, c.arg_strings AS s \
         FROM read_parquet('{}', hive_partitioning = true) c \
         JOIN read_parquet('{}', hive_partitioning = true) f USING (session_id, function_id) \
         WHERE f.name = '{function}' ORDER BY c.call_id",
        calls_glob(out),
        functions_glob(out)
    );
    duckdb(&sql)
        .into_iter()
        .map(|r| (r["args"].clone(), r["ret"].clone(), r["s"].clone()))
        .collect()
}

/// What greet gets in iteration `i` (see strings.c) with a cap of `cap`.
fn greet_string(i: i64, cap: usize) -> (Value, i64) {
    let cut = |s: &str| {
        if s.len() > cap {
            format!("{}…", &s[..cap])
        } else {
            s.to_string()
        }
    };
    match i % 5 {
        0 => (json!(cut("alice")), 5),
        1 => (json!(""), 0),
        2 => (json!(cut("exactly16bytes!!")), 16),
        3 => (json!(cut(LONG)), LONG.len() as i64),
        _ => (Value::Null, -1),
    }
}

#[test]
fn strings_match_with_cap_truncation_and_null_at_o0_and_o2() {
    require_root();
    for opt in ["0", "2"] {
        let bin = strings_fixture(opt);
        for cap in [16usize, 256] {
            let dir = tempfile::tempdir().unwrap();
            let run = record(
                dir.path(),
                &["--args", "--arg-strings", &cap.to_string()],
                &bin,
            );
            ok(&run);
            let greet = captured(dir.path(), "greet");
            assert_eq!(greet.len(), N as usize, "-O{opt}\n{}", run.stderr);
            for (i, (args, ret, strings)) in greet.iter().enumerate() {
                let i = i as i64;
                let (s, len) = greet_string(i, cap);
                assert_eq!(
                    strings,
                    &json!([s, null]),
                    "-O{opt} cap {cap} greet call {i}"
                );
                assert_eq!(args[1], json!(i), "-O{opt} greet call {i}");
                assert_eq!(ret, &json!(i + len), "-O{opt} greet call {i}");
                // The pointer itself is still in args: 0 for NULL.
                assert_eq!(args[0] == json!(0), i % 5 == 4, "-O{opt} greet call {i}");
            }
            let three = captured(dir.path(), "three");
            assert_eq!(three.len(), N as usize, "-O{opt}");
            for (i, (args, ret, strings)) in three.iter().enumerate() {
                // Only the first two string parameters are read.
                assert_eq!(
                    strings,
                    &json!(["left", "right", null, null]),
                    "-O{opt} three call {i}"
                );
                assert_eq!(args[3], json!(i), "-O{opt} three call {i}");
                assert_eq!(ret, &json!(14 + i as i64), "-O{opt} three call {i}");
            }
        }
    }
}

#[test]
fn without_arg_strings_the_column_is_null() {
    require_root();
    let bin = strings_fixture("2");
    for extra in [&["--args"][..], &[][..]] {
        let dir = tempfile::tempdir().unwrap();
        let run = record(dir.path(), extra, &bin);
        ok(&run);
        let rows = duckdb(&format!(
            "SELECT count(*) AS calls, count(args) AS args, count(arg_strings) AS strings \
             FROM read_parquet('{}', hive_partitioning = true)",
            calls_glob(dir.path())
        ));
        let args = if extra.is_empty() { 0 } else { 2 * N };
        assert_eq!(
            Value::Object(rows[0].clone()),
            json!({"calls": 2 * N, "args": args, "strings": 0}),
            "{extra:?}"
        );
    }
}

#[test]
fn arg_strings_follow_args_for() {
    require_root();
    let bin = strings_fixture("2");
    let dir = tempfile::tempdir().unwrap();
    let run = record(dir.path(), &["-a", "three", "--arg-strings", "4"], &bin);
    ok(&run);
    for (_, _, s) in captured(dir.path(), "greet") {
        assert_eq!(s, Value::Null);
    }
    for (_, _, s) in captured(dir.path(), "three") {
        assert_eq!(s, json!(["left", "righ…", null, null]));
    }
}

#[test]
fn bad_caps_and_a_missing_args_flag_fail_clearly() {
    let bin = strings_fixture("2");
    let dir = tempfile::tempdir().unwrap();
    for (extra, needle) in [
        (
            &["--args", "--arg-strings", "0"][..],
            "--arg-strings 0: the cap must be 1..=256",
        ),
        (
            &["--args", "--arg-strings", "257"][..],
            "--arg-strings 257: the cap must be 1..=256",
        ),
        (
            &["--arg-strings", "16"][..],
            "--arg-strings 16 needs --args or --args-for",
        ),
    ] {
        let run = record(&dir.path().join("out"), extra, &bin);
        assert!(!run.status.success(), "{extra:?} succeeded");
        assert!(run.stderr.contains(needle), "{extra:?}: {}", run.stderr);
        assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    }
    assert!(!dir.path().join("out").exists());
}
