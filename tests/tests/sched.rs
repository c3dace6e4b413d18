//! On-CPU and off-CPU time per call, end to end (needs root), on the
//! default path: `record` with no flag follows the scheduler.
//! tests/fixtures/c/sched.c naps five times (usleep 20 ms), spins, and
//! wakes a thread blocked in wait_for_signal() from send_signal().
//!
//! Ground truth that is not scope's: nanosleep never returns early, so each
//! nap is off its CPU for at least 20 ms; the fixture measures its own
//! thread CPU time around spin() (CLOCK_THREAD_CPUTIME_ID, the kernel's
//! accounting), which spin's oncpu_ns must match; and the waiter can only
//! have been woken by the thread that signalled it.

use std::path::Path;

use scope_tests::{
    assert_success, c_fixture_file, calls_glob, duckdb, functions_glob, record_with, require_root,
    run_agent,
};

/// `export --data OUT --format FORMAT --offcpu -o FILE`.
fn export_offcpu(out: &Path, format: &str, file: &Path) -> scope_tests::AgentRun {
    run_agent(&[
        "export",
        "--data",
        out.to_str().unwrap(),
        "--format",
        format,
        "--offcpu",
        "-o",
        file.to_str().unwrap(),
    ])
}

fn offcpu_glob(out: &Path) -> String {
    format!("{}/offcpu/**/*.parquet", out.display())
}

/// One call: (name, tid, duration, oncpu, offcpu).
type Call = (String, i64, i64, Option<i64>, Option<i64>);

/// Every call of the fixture's functions, in order.
fn calls(out: &Path) -> Vec<Call> {
    duckdb(&format!(
        "SELECT f.name AS name, c.tid AS tid, c.duration_ns AS d, c.oncpu_ns AS oncpu, \
         c.offcpu_ns AS offcpu \
         FROM read_parquet('{}', hive_partitioning=true) c \
         JOIN read_parquet('{}', hive_partitioning=true) f USING (session_id, function_id) \
         ORDER BY c.start_ns",
        calls_glob(out),
        functions_glob(out)
    ))
    .iter()
    .map(|r| {
        (
            r["name"].as_str().unwrap().to_string(),
            r["tid"].as_i64().unwrap(),
            r["d"].as_i64().unwrap(),
            r["oncpu"].as_i64(),
            r["offcpu"].as_i64(),
        )
    })
    .collect()
}

/// Time interrupts and the hypervisor took from the machine's CPUs so far
/// (irq, softirq and steal of /proc/stat's `cpu` line), ns. The counters
/// tick at USER_HZ (100 Hz).
fn time_taken_from_tasks_ns() -> i64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let cpu: Vec<i64> = stat
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap())
        .collect();
    // user nice system idle iowait irq softirq steal …
    (cpu[5] + cpu[6] + cpu[7]) * 10_000_000
}

#[test]
fn every_call_says_how_long_it_was_off_cpu_and_who_woke_it() {
    require_root();
    let bin = c_fixture_file("sched", "1");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let cpu_file = dir.path().join("spin-cpu");
    let taken_before = time_taken_from_tasks_ns();
    let run = record_with(
        &out,
        &["nap", "spin", "wait_for_signal", "send_signal"],
        &[],
        &[bin.to_str().unwrap(), cpu_file.to_str().unwrap()],
    );
    // One tick more per counter: they count whole 10 ms ticks.
    let taken = time_taken_from_tasks_ns() - taken_before + 30_000_000;
    assert_success(&run);
    let rows = calls(&out);
    let count = |name: &str| rows.iter().filter(|r| r.0 == name).count();
    assert_eq!(
        (
            count("nap"),
            count("spin"),
            count("wait_for_signal"),
            count("send_signal")
        ),
        (5, 1, 1, 1),
        "{rows:?}"
    );
    // Every call: on + off = its duration, both known.
    for (name, _, d, on, off) in &rows {
        let (on, off) = (on.expect("oncpu_ns"), off.expect("offcpu_ns"));
        assert!(on >= 0 && off >= 0, "{name}: {on} + {off}");
        assert_eq!(on + off, *d, "{name}");
    }
    // Each nap sleeps at least 20 ms, on CPU only for the syscall.
    for (_, _, d, on, off) in rows.iter().filter(|r| r.0 == "nap") {
        assert!(
            off.unwrap() >= 20_000_000,
            "nap off CPU {off:?} of {d}\n{rows:?}\n{}",
            run.stderr
        );
        assert!(on.unwrap() < 5_000_000, "nap on CPU {on:?} of {d}");
    }
    // spin's time on CPU holds all the CPU time the kernel charged its
    // thread, and more only by what interrupts and the hypervisor (steal)
    // took while it was scheduled: the kernel charges those to no task,
    // and a switch-based view cannot see them.
    let spin = rows.iter().find(|r| r.0 == "spin").unwrap();
    let measured: i64 = std::fs::read_to_string(&cpu_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let on = spin.3.unwrap();
    let slack = measured / 20 + 2_000_000;
    assert!(
        on >= measured - slack && on <= measured + slack + taken,
        "spin on CPU {on} ns, the thread's CPU time {measured} ns, irq and steal on the machine {taken} ns"
    );
    // The waiter: blocked for the main thread's 30 ms pause at least, and
    // woken, in its longest interval, by send_signal on the main thread.
    let wait = rows.iter().find(|r| r.0 == "wait_for_signal").unwrap();
    let main_tid = rows.iter().find(|r| r.0 == "send_signal").unwrap().1;
    assert_ne!(wait.1, main_tid);
    assert!(wait.4.unwrap() >= 30_000_000, "{wait:?}");
    let longest = duckdb(&format!(
        "SELECT o.tid AS tid, o.duration_ns AS d, o.preempted AS preempted, \
         f.name AS blocked_in, o.waker_tid AS waker_tid, w.name AS waker_fn \
         FROM read_parquet('{o}', hive_partitioning=true) o \
         LEFT JOIN read_parquet('{f}', hive_partitioning=true) f \
           ON f.session_id = o.session_id AND f.function_id = o.function_id \
         LEFT JOIN read_parquet('{f}', hive_partitioning=true) w \
           ON w.session_id = o.session_id AND w.function_id = o.waker_function_id \
         WHERE o.tid = {tid} ORDER BY o.duration_ns DESC LIMIT 1",
        o = offcpu_glob(&out),
        f = functions_glob(&out),
        tid = wait.1
    ));
    let l = &longest[0];
    assert_eq!(l["blocked_in"].as_str(), Some("wait_for_signal"), "{l:?}");
    assert_eq!(l["preempted"].as_bool(), Some(false), "{l:?}");
    assert_eq!(l["waker_tid"].as_i64(), Some(main_tid), "{l:?}");
    assert_eq!(l["waker_fn"].as_str(), Some("send_signal"), "{l:?}");
    assert!(l["d"].as_i64().unwrap() >= 30_000_000, "{l:?}");
    // The offcpu rows of a call add up to its offcpu_ns (no interval is
    // counted twice or missed), for every nap.
    let sums = duckdb(&format!(
        "SELECT c.call_id AS id, c.offcpu_ns AS off, sum(o.duration_ns) AS rows_off \
         FROM read_parquet('{c}', hive_partitioning=true) c \
         JOIN read_parquet('{f}', hive_partitioning=true) f USING (session_id, function_id) \
         JOIN read_parquet('{o}', hive_partitioning=true) o \
           ON o.session_id = c.session_id AND o.tid = c.tid \
          AND o.start_ns >= c.start_ns AND o.start_ns + o.duration_ns <= c.start_ns + c.duration_ns \
         WHERE f.name = 'nap' GROUP BY 1, 2",
        c = calls_glob(&out),
        f = functions_glob(&out),
        o = offcpu_glob(&out)
    ));
    assert_eq!(sums.len(), 5, "{sums:?}");
    for s in &sums {
        assert_eq!(
            s["off"].as_i64(),
            s["rows_off"].as_f64().map(|v| v as i64),
            "{s:?}"
        );
    }
    // The off-CPU flame graph's folded lines: each function's width is its
    // calls' offcpu_ns (none of them nests in another here).
    let folded = dir.path().join("off.folded");
    let export = export_offcpu(&out, "folded", &folded);
    assert_success(&export);
    let text = std::fs::read_to_string(&folded).unwrap();
    for name in ["nap", "spin", "wait_for_signal"] {
        let want: i64 = rows
            .iter()
            .filter(|r| r.0 == name)
            .map(|r| r.4.unwrap())
            .sum();
        let line = text.lines().find(|l| l.split(' ').next() == Some(name));
        // A function never off its CPU (spin, when nothing preempted it)
        // weighs nothing: no line.
        if want == 0 {
            assert_eq!(line, None, "{text}");
            continue;
        }
        let line = line.unwrap_or_else(|| panic!("{name} in\n{text}"));
        assert_eq!(line, format!("{name} {want}"), "{text}");
    }
    let svg = dir.path().join("off.svg");
    let export = export_offcpu(&out, "flamegraph", &svg);
    assert_success(&export);
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.contains("off-CPU time") && svg.contains("wait_for_signal"));
    // Only the aggregated formats draw it.
    let chrome = run_agent(&[
        "export",
        "--data",
        out.to_str().unwrap(),
        "--format",
        "chrome",
        "--offcpu",
    ]);
    assert!(!chrome.status.success());
    assert!(
        chrome.stderr.contains("--format flamegraph or folded"),
        "{}",
        chrome.stderr
    );
}

#[test]
fn no_sched_leaves_the_columns_null_and_writes_no_offcpu_table() {
    require_root();
    let bin = c_fixture_file("sched", "1");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // The non-default flag this test is about.
    let run = record_with(&out, &["nap"], &["--no-sched"], &[bin.to_str().unwrap()]);
    assert_success(&run);
    let rows = calls(&out);
    assert_eq!(rows.len(), 5, "{rows:?}");
    assert!(
        rows.iter().all(|r| r.3.is_none() && r.4.is_none()),
        "{rows:?}"
    );
    assert!(!out.join("offcpu").exists());
    // An off-CPU flame graph of it says why there is none.
    let export = export_offcpu(&out, "flamegraph", &dir.path().join("x.svg"));
    assert!(!export.status.success());
    assert!(export.stderr.contains("--no-sched"), "{}", export.stderr);
}
