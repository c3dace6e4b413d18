//! Inlined instances (`--inlined`) against tests/fixtures/c/inlined.c:
//! `sq` exists only inlined, once in each of `f1`, `f2` and `f0` (at
//! -O2, at f0's very first instruction). With
//! `--inlined`, each instance is probed at its entry and counted exactly,
//! with no duration, nested under the f1/f2 call it ran in; without it, a
//! pattern that matches only inlined instances is an error that says what
//! `--inlined` would probe. Recorded with `record`'s default path (every
//! call) plus `--inlined`.

use std::path::Path;

use serde_json::{Value, json};

use scope_tests::*;

const N1: u64 = 30;
const N2: u64 = 50;
const N0: u64 = 20;

/// The line of inlined.c holding `needle`.
fn fixture_line(needle: &str) -> u64 {
    let path = workspace_root().join("tests/fixtures/c/inlined.c");
    let text = std::fs::read_to_string(&path).expect("read inlined.c");
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in inlined.c")) as u64
        + 1
}

#[test]
fn functions_lists_both_instances() {
    for opt in ["0", "2"] {
        let bin = inlined_fixture(opt);
        let run = run_agent(&["functions", "--inlined", &bin.display().to_string(), "sq"]);
        assert!(run.status.success(), "-O{opt}: {}", run.stderr);
        let rows: Vec<Vec<&str>> = run
            .stdout
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect())
            .collect();
        let callers: Vec<&str> = rows.iter().map(|r| r[1]).collect();
        assert_eq!(callers, ["f1", "f2", "f0"], "-O{opt}:\n{}", run.stdout);
        assert!(rows.iter().all(|r| r[0] == "sq"), "{}", run.stdout);
        // sq has no out-of-line copy: only inlined instances exist.
        let plain = run_agent(&["functions", &bin.display().to_string(), "sq"]);
        assert!(
            !plain.status.success(),
            "-O{opt}: sq is out of line:\n{}",
            plain.stdout
        );
    }
}

fn record(out: &Path, bin: &Path, extra: &[&str]) -> AgentRun {
    let out_s = out.display().to_string();
    let bin_s = bin.display().to_string();
    let (n1, n2, n0) = (N1.to_string(), N2.to_string(), N0.to_string());
    let mut args = vec!["record", "--out", &out_s, "-q"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", &bin_s, &n1, &n2, &n0]);
    run_agent(&args)
}

#[test]
fn inlined_instances_are_counted_under_their_caller() {
    require_root();
    for opt in ["0", "2"] {
        let bin = inlined_fixture(opt);
        let tmp = tempfile::tempdir().expect("tempdir");
        let out = tmp.path().join("data");
        let run = record(&out, &bin, &["-f", "sq", "--inlined", "-f", "f?"]);
        assert!(run.status.success(), "-O{opt}: {}", run.stderr);
        assert!(
            run.stderr.contains(
                "scope: probing 3 inlined instances of 1 function (entry only: counts and timestamps, no durations)"
            ),
            "-O{opt}: {}",
            run.stderr
        );

        // One functions row per function id; the instances say where they sit.
        let functions = duckdb(&format!(
            "SELECT name, inlined_into, call_line, call_file LIKE '%.c' AS c_file, size, \
                    count(*) OVER (PARTITION BY function_id) AS rows_per_id \
             FROM read_parquet('{}', hive_partitioning = true) ORDER BY name, inlined_into",
            functions_glob(&out)
        ));
        let got: Vec<Value> = functions
            .iter()
            .map(|r| {
                json!([
                    r["name"],
                    r["inlined_into"],
                    r["call_line"],
                    r["c_file"],
                    r["size"] == 0,
                    r["rows_per_id"]
                ])
            })
            .collect();
        assert_eq!(
            got,
            vec![
                json!(["f0", null, null, null, false, 1]),
                json!(["f1", null, null, null, false, 1]),
                json!(["f2", null, null, null, false, 1]),
                json!(["sq", "f0", fixture_line("return sq(x) + 5"), true, true, 1]),
                json!(["sq", "f1", fixture_line("return sq(x) + 1"), true, true, 1]),
                json!([
                    "sq",
                    "f2",
                    fixture_line("return sq(x + 3) - 2"),
                    true,
                    true,
                    1
                ]),
            ],
            "-O{opt}"
        );

        // Exact counts; no duration; flag 32 alone; parent is a call of the
        // function the instance sits in, one level up.
        let calls = duckdb(&format!(
            "WITH c AS (SELECT * FROM read_parquet('{calls}', hive_partitioning = true)), \
                  f AS (SELECT * FROM read_parquet('{functions}', hive_partitioning = true)) \
             SELECT f.name, f.inlined_into, count(*) AS n, \
                    count(*) FILTER (WHERE c.flags = 32) AS flagged, \
                    count(*) FILTER (WHERE c.duration_ns IS NULL AND c.self_ns IS NULL) AS untimed, \
                    count(*) FILTER (WHERE c.depth = 1 AND pf.name = f.inlined_into \
                                     AND c.start_ns >= p.start_ns \
                                     AND c.start_ns <= p.start_ns + p.duration_ns) AS nested \
             FROM c JOIN f USING (session_id, function_id) \
             LEFT JOIN c p ON p.session_id = c.session_id AND p.call_id = c.parent_call_id \
             LEFT JOIN f pf ON pf.session_id = p.session_id AND pf.function_id = p.function_id \
             GROUP BY ALL ORDER BY f.name, f.inlined_into",
            calls = calls_glob(&out),
            functions = functions_glob(&out)
        ));
        let got: Vec<Value> = calls
            .iter()
            .map(|r| {
                json!([
                    r["name"],
                    r["inlined_into"],
                    r["n"],
                    r["flagged"],
                    r["untimed"],
                    r["nested"]
                ])
            })
            .collect();
        assert_eq!(
            got,
            vec![
                json!(["f0", null, N0, 0, 0, 0]),
                json!(["f1", null, N1, 0, 0, 0]),
                json!(["f2", null, N2, 0, 0, 0]),
                json!(["sq", "f0", N0, N0, N0, N0]),
                json!(["sq", "f1", N1, N1, N1, N1]),
                json!(["sq", "f2", N2, N2, N2, N2]),
            ],
            "-O{opt}"
        );
        if opt == "2" {
            // The instance in f0 shares its probe address with f0's entry:
            // it still nests under f0 (checked above).
            let same = duckdb(&format!(
                "SELECT count(DISTINCT address) AS n FROM read_parquet('{}', hive_partitioning = true) \
                 WHERE name = 'f0' OR inlined_into = 'f0'",
                functions_glob(&out)
            ));
            assert_eq!(
                same[0]["n"],
                json!(1),
                "-O2: sq is not at f0's first instruction"
            );
        }
        let all = N1 + N2 + N0;
        let total = 2 * all + all;
        let session = duckdb(&format!(
            "SELECT calls, events FROM read_parquet('{}/sessions/**/*.parquet', hive_partitioning = true)",
            out.display()
        ));
        assert_eq!(
            (session[0]["calls"].clone(), session[0]["events"].clone()),
            (json!(2 * all), json!(total)),
            "-O{opt}: f1/f2 are two events a call, sq instances one"
        );
    }
}

#[test]
fn without_inlined_a_pattern_of_instances_only_says_what_inlined_would_do() {
    require_root();
    let bin = inlined_fixture("2");
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("data");
    let run = record(&out, &bin, &["-f", "sq", "-f", "f?"]);
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains("no functions matched 'sq' in ")
            && run.stderr.contains(
                "it matches 3 inlined instances (--inlined would probe them, entry only)"
            ),
        "{}",
        run.stderr
    );
    // Nothing was started or written.
    assert!(!run.stdout.contains("total"), "{}", run.stdout);
}
