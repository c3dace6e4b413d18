//! USDT probes end to end (needs root), on Debian's /usr/bin/python3.11,
//! which carries CPython's probes in its executable behind semaphores (the
//! code that fires them runs only while a tracer holds the semaphore).
//! `-u` records them into `markers`; bpftrace counts the same probes in the
//! same run of the same script, as the independent reference, and the
//! script's own gc.collect(0), (1), (2) say what the arguments must be.

use std::collections::BTreeMap;
use std::path::Path;

use scope_tests::{assert_success, duckdb, record_with, require_root, run_agent, workspace_root};

const PYTHON: &str = "/usr/bin/python3.11";

fn script() -> String {
    workspace_root()
        .join("tests/fixtures/python/usdt_gc.py")
        .display()
        .to_string()
}

/// bpftrace's counts: (import__find__load__start hits, gc__start hits by
/// generation).
fn bpftrace_counts() -> (i64, BTreeMap<i64, i64>) {
    let prog = format!(
        "usdt:{PYTHON}:python:import__find__load__start {{ @imports = count(); }} \
         usdt:{PYTHON}:python:gc__start {{ @gc[arg0] = count(); }}"
    );
    let out = std::process::Command::new("bpftrace")
        .args(["-q", "-e", &prog, "-c"])
        .arg(format!("{PYTHON} {}", script()))
        .output()
        .expect("bpftrace runs (cargo xtask test installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bpftrace failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let imports = text
        .lines()
        .find_map(|l| l.strip_prefix("@imports: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no @imports in:\n{text}"));
    let gc = text
        .lines()
        .filter_map(|l| l.strip_prefix("@gc["))
        .filter_map(|l| l.split_once("]: "))
        .map(|(g, n)| (g.parse().unwrap(), n.trim().parse().unwrap()))
        .collect();
    (imports, gc)
}

#[test]
fn cpython_probes_count_as_bpftrace_counts_them_with_their_arguments() {
    require_root();
    assert!(
        Path::new(PYTHON).exists(),
        "{PYTHON} (Debian's python3.11, with its USDT probes) is needed"
    );
    let (bt_imports, bt_gc) = bpftrace_counts();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // -u is what this test is about; with no -f, no function is probed.
    let run = record_with(
        &out,
        &[],
        &[
            "-u",
            "python:import__find__load__start",
            "-u",
            "python3.11:python:gc__start",
        ],
        &[PYTHON, &script()],
    );
    assert_success(&run);
    let d = out.display();
    let probes = duckdb(&format!(
        "SELECT probe_id, provider, name, module, semaphore, args, arg_count \
         FROM read_parquet('{d}/usdt_probes/**/*.parquet') ORDER BY name"
    ));
    assert_eq!(probes.len(), 2, "{probes:?}");
    assert_eq!(probes[0]["name"], "gc__start");
    assert_eq!(probes[0]["args"], "-4@112(%rsp)");
    assert_eq!(probes[1]["name"], "import__find__load__start");
    assert!(
        probes.iter().all(|p| p["semaphore"].is_number()),
        "{probes:?}"
    );
    let markers = duckdb(&format!(
        "SELECT p.name AS name, m.args[1] AS arg, m.tid AS tid \
         FROM read_parquet('{d}/markers/**/*.parquet', hive_partitioning=true) m \
         JOIN read_parquet('{d}/usdt_probes/**/*.parquet', hive_partitioning=true) p \
           USING (session_id, probe_id) ORDER BY m.time_ns"
    ));
    let imports = markers
        .iter()
        .filter(|m| m["name"] == "import__find__load__start")
        .count();
    // The script loads well over a hundred modules (asyncio alone pulls in
    // dozens): a count that saw only the interpreter's start-up would be
    // about 30.
    assert!(imports > 100, "{imports}");
    assert_eq!(imports as i64, bt_imports, "scope vs bpftrace");
    let gens: Vec<i64> = markers
        .iter()
        .filter(|m| m["name"] == "gc__start")
        .map(|m| m["arg"].as_i64().unwrap())
        .collect();
    let mut by_gen: BTreeMap<i64, i64> = BTreeMap::new();
    for g in &gens {
        *by_gen.entry(*g).or_default() += 1;
    }
    assert_eq!(by_gen, bt_gc, "gc__start by generation, scope vs bpftrace");
    // The script's own collections, in order (the interpreter's exit may
    // collect after them).
    assert!(
        gens.windows(3).any(|w| w == [0, 1, 2]),
        "gc.collect(0), (1), (2) in order: {gens:?}"
    );
    // No function was probed.
    let calls = duckdb(&format!(
        "SELECT count(*) AS n FROM read_parquet('{d}/calls/**/*.parquet')"
    ));
    assert_eq!(calls[0]["n"].as_i64(), Some(0));
    assert!(run.stderr.contains("USDT:"), "{}", run.stderr);
}

#[test]
fn usdt_probes_are_listed_and_a_wrong_name_lists_the_right_ones() {
    require_root();
    let list = run_agent(&["functions", "--usdt", PYTHON]);
    assert_success(&list);
    for probe in [
        "python:import__find__load__start",
        "python:gc__start",
        "python:line",
    ] {
        assert!(list.stdout.contains(probe), "{probe}:\n{}", list.stdout);
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let run = record_with(
        &out,
        &[],
        &["-u", "python:no_such_probe"],
        &[PYTHON, "-c", "pass"],
    );
    assert!(!run.status.success());
    assert!(
        run.stderr.contains("python:no_such_probe")
            && run.stderr.contains("python:import__find__load__start"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
}
