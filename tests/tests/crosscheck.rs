//! scope's call count equals bpftrace's `count()` on the same function in the
//! same kind of run, and both equal the count the fixture's source makes: an
//! independent tool as the reference, and the source as the reference of
//! both (so a bpftrace that saw nothing cannot agree with a scope that saw
//! nothing). scope runs `record`'s default path: no flag, every call
//! recorded.

use scope_tests::*;

fn bpftrace_count(bin: &std::path::Path, func: &str, args: &str) -> i64 {
    let prog = format!("uprobe:{}:{func} {{ @calls = count(); }}", bin.display());
    let out = std::process::Command::new("bpftrace")
        .args(["-q", "-e", &prog, "-c"])
        .arg(format!("{} {args}", bin.display()))
        .output()
        .expect("bpftrace runs (cargo xtask test installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bpftrace failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .find_map(|l| l.strip_prefix("@calls: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no @calls in bpftrace output:\n{text}"))
}

#[test]
fn call_counts_match_bpftrace() {
    require_root();
    let bin = fixture(Lang::C, "2");
    // From tests/fixtures/c/fixture.c: `count N` calls leaf N times
    // (do_count), `nest N` calls a_fn N times and so c_fn once each
    // (do_nest), `threads T M` runs T threads that call tleaf M times each
    // (thread_main).
    for (func, args, known) in [
        ("leaf", "count 3000", 3000),
        ("c_fn", "nest 700", 700),
        ("tleaf", "threads 3 1000", 3 * 1000),
    ] {
        let reference = bpftrace_count(&bin, func, args);
        assert_eq!(
            reference, known,
            "{func} ({args}): bpftrace counted {reference}, the fixture makes {known} calls"
        );
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().display().to_string();
        let mut argv = vec![
            "record",
            "--out",
            &out,
            "-f",
            func,
            "--",
            bin.to_str().unwrap(),
        ];
        argv.extend(args.split(' '));
        let run = run_agent(&argv);
        assert!(run.status.success(), "{}", run.stderr);
        let rows = duckdb(&format!(
            "SELECT count(*) AS n FROM read_parquet('{}', hive_partitioning=true)",
            calls_glob(dir.path())
        ));
        let ours = rows[0]["n"].as_i64().unwrap();
        assert_eq!(
            ours, known,
            "{func} ({args}): scope {ours}, bpftrace {reference}, the fixture makes {known} calls"
        );
    }
}
