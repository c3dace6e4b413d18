//! Go targets (tests/fixtures/go/fixture.go, built with `go build
//! -gcflags=all=-l`): recorded with entry probes plus RET-site probes, never
//! a return probe, and paired per goroutine. The target must survive stack
//! growth while probed, and every count must be exact. `record` runs its
//! default path (every call); the `attach` test says `--max-overhead off`.

use std::path::Path;

use serde_json::{Map, Value};

use scope_tests::*;

/// Calls of fib(n) with fib(n) = fib(n-1) + fib(n-2) and no call below 2.
fn fib_calls(n: u32) -> i64 {
    if n < 2 {
        1
    } else {
        1 + fib_calls(n - 1) + fib_calls(n - 2)
    }
}

/// Records the Go fixture with `mode_args` and no `-f` (the default plan:
/// the `main` package's functions).
fn record(out: &Path, mode_args: &[&str]) -> AgentRun {
    let bin = go_fixture();
    let mut cmd = vec![bin.to_str().unwrap()];
    cmd.extend_from_slice(mode_args);
    let run = record_with(out, &[], &["-q"], &cmd);
    assert!(
        run.status.success(),
        "the Go fixture or the agent failed ({:?}):\nstdout:\n{}\nstderr:\n{}",
        run.status,
        run.stdout,
        run.stderr
    );
    assert!(
        run.stdout.lines().any(|l| l == "ok"),
        "the fixture did not finish: {}",
        run.stdout
    );
    run
}

/// Every call with its function name and its parent's name and depth.
fn calls(out: &Path) -> Vec<Map<String, Value>> {
    duckdb(&format!(
        "WITH c AS (SELECT c.*, f.name FROM read_parquet('{}', hive_partitioning = true) c \
           JOIN read_parquet('{}', hive_partitioning = true) f USING (session_id, function_id)) \
         SELECT c.name, c.call_id, c.tid, c.depth, c.flags, c.duration_ns, c.self_ns, \
                p.name AS parent, p.depth AS parent_depth, p.tid AS parent_tid \
         FROM c LEFT JOIN c p ON p.call_id = c.parent_call_id ORDER BY c.call_id",
        calls_glob(out),
        functions_glob(out)
    ))
}

fn of<'a>(rows: &'a [Map<String, Value>], name: &str) -> Vec<&'a Map<String, Value>> {
    rows.iter().filter(|r| r["name"] == name).collect()
}

fn int(r: &Map<String, Value>, col: &str) -> i64 {
    r[col]
        .as_i64()
        .unwrap_or_else(|| panic!("{col} is not an integer in {r:?}"))
}

/// Complete, with a duration, and one level below its parent.
fn assert_well_formed(r: &Map<String, Value>) {
    assert_eq!(int(r, "flags"), 0, "{r:?}");
    assert!(int(r, "duration_ns") >= 0, "{r:?}");
    assert!(int(r, "self_ns") >= 0, "{r:?}");
    if r["parent"].is_null() {
        assert_eq!(int(r, "depth"), 0, "{r:?}");
    } else {
        assert_eq!(int(r, "depth"), int(r, "parent_depth") + 1, "{r:?}");
    }
}

#[test]
fn recursion_counts_are_exact() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let run = record(dir.path(), &["fib", "15"]);
    assert!(run.stdout.contains("610"), "{}", run.stdout);
    let rows = calls(dir.path());
    let fib = of(&rows, "main.fib");
    // 1973 calls. A probe at fib's first byte sees more: runtime.morestack
    // jumps back there after growing the stack (bpftrace counted 1976 here).
    assert_eq!(fib.len() as i64, fib_calls(15));
    assert_eq!(fib_calls(15), 1973);
    for r in &fib {
        assert_well_formed(r);
        let parent = r["parent"].as_str().unwrap_or_default();
        assert!(parent == "main.fib" || parent == "main.main", "{r:?}");
    }
    let deepest = fib.iter().map(|r| int(r, "depth")).max().unwrap();
    // main.main at depth 0, fib(15) at 1 ... fib(1) at 15.
    assert_eq!(deepest, 15);
    // The default plan of a Go binary is its main package, not the runtime.
    let names = duckdb(&format!(
        "SELECT count(*) AS n, count(*) FILTER (WHERE name NOT LIKE 'main.%') AS other \
         FROM read_parquet('{}', hive_partitioning = true)",
        functions_glob(dir.path())
    ));
    assert!(int(&names[0], "n") >= 4, "{names:?}");
    assert_eq!(int(&names[0], "other"), 0, "{names:?}");
}

#[test]
fn goroutines_pair_per_goroutine_across_threads() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let run = record(dir.path(), &["goroutines", "8", "200"]);
    let rows = calls(dir.path());
    let leaf = of(&rows, "main.leaf");
    assert_eq!(leaf.len(), 1600);
    let mut other_thread = 0;
    for r in &leaf {
        assert_well_formed(r);
        assert_eq!(r["parent"], "main.worker", "{r:?}");
        if r["tid"] != r["parent_tid"] {
            other_thread += 1;
        }
    }
    let workers = of(&rows, "main.worker");
    assert_eq!(workers.len(), 8);
    workers.iter().for_each(|r| assert_well_formed(r));
    // Worker goroutines sleep and block on channels between leaf calls, so
    // with more than one CPU the scheduler resumes them on other threads:
    // a per-thread stack would have mis-paired those calls.
    if std::thread::available_parallelism().is_ok_and(|n| n.get() > 1) {
        assert!(
            other_thread > 0,
            "no leaf call ran on another thread than its worker's entry"
        );
        assert!(
            run.stderr
                .contains("Go calls returned on another thread than they entered on"),
            "{}",
            run.stderr
        );
    }
}

#[test]
fn stack_growth_under_probes_survives() {
    require_root();
    // The hazard is real: bpftrace's uretprobe on main.grow kills the
    // fixture when Go copies the stack ("unexpected return pc").
    let bin = go_fixture();
    let prog = format!("uretprobe:{}:main.grow {{ @n = count(); }}", bin.display());
    let hazard = std::process::Command::new("bpftrace")
        .args(["-q", "-e", &prog, "-c"])
        .arg(format!("{} grow 2000", bin.display()))
        .output()
        .expect("bpftrace runs (cargo xtask test installs it)");
    let text = String::from_utf8_lossy(&hazard.stdout).into_owned()
        + &String::from_utf8_lossy(&hazard.stderr);
    assert!(
        text.contains("fatal error") && !text.lines().any(|l| l == "ok"),
        "expected a uretprobe to crash the Go fixture; bpftrace said:\n{text}"
    );

    let dir = tempfile::tempdir().unwrap();
    record(dir.path(), &["grow", "2000"]);
    let rows = calls(dir.path());
    let grow = of(&rows, "main.grow");
    // grow(2000) .. grow(0), one frame of ~1 KiB each: a 2 MiB stack, copied
    // each time it doubles.
    assert_eq!(grow.len(), 2001);
    grow.iter().for_each(|r| assert_well_formed(r));
    let deepest = grow.iter().map(|r| int(r, "depth")).max().unwrap();
    assert_eq!(deepest, 2001);
}

#[test]
fn leaf_count_matches_bpftrace() {
    require_root();
    let bin = go_fixture();
    // Other tests run the same binary at the same time: count only the
    // command bpftrace starts.
    let prog = format!(
        "uprobe:{}:main.leaf /pid == cpid/ {{ @calls = count(); }}",
        bin.display()
    );
    let out = std::process::Command::new("bpftrace")
        .args(["-q", "-e", &prog, "-c"])
        .arg(format!("{} goroutines 4 100", bin.display()))
        .output()
        .expect("bpftrace runs (cargo xtask test installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let reference: i64 = text
        .lines()
        .find_map(|l| l.strip_prefix("@calls: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no @calls in bpftrace output:\n{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert_eq!(reference, 400);
    let dir = tempfile::tempdir().unwrap();
    let run = record_with(
        dir.path(),
        &["main.leaf"],
        &["-q"],
        &[bin.to_str().unwrap(), "goroutines", "4", "100"],
    );
    assert_success(&run);
    let rows = calls(dir.path());
    assert_eq!(rows.len() as i64, reference);
    rows.iter()
        .for_each(|r| assert_eq!(int(r, "flags"), 0, "{r:?}"));
}

#[test]
fn stripped_go_binary_is_named_from_gopclntab() {
    require_root();
    let bin = go_stripped_fixture();
    let dir = tempfile::tempdir().unwrap();
    let run = record_with(
        dir.path(),
        &[],
        &["-q"],
        &[bin.to_str().unwrap(), "fib", "15"],
    );
    assert_success(&run);
    let rows = calls(dir.path());
    let fib = of(&rows, "main.fib");
    assert_eq!(fib.len() as i64, fib_calls(15));
    fib.iter().for_each(|r| assert_well_formed(r));
    // Same names and addresses as the symbol table of the unstripped build.
    let names = |bin: &Path| {
        let run = run_agent(&["functions", bin.to_str().unwrap(), "main.*"]);
        assert!(run.status.success(), "{}", run.stderr);
        run.stdout
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
    };
    let stripped = names(&bin);
    assert!(
        stripped.iter().any(|l| l.starts_with("main.fib ")),
        "{stripped:?}"
    );
    assert_eq!(stripped, names(&go_fixture()));
}

#[test]
fn unreadable_gopclntab_is_a_clear_error() {
    require_root();
    // The stripped fixture with its .gopclntab magic overwritten.
    let mut bytes = std::fs::read(go_stripped_fixture()).unwrap();
    let magic: &[u8] = &[0xf0, 0xff, 0xff, 0xff, 0, 0, 1, 8];
    let at = bytes
        .windows(magic.len())
        .position(|w| w == magic)
        .expect("the Go 1.18+ pclntab header is in the stripped fixture");
    bytes[at] = 0x12;
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("corrupt-go");
    std::fs::write(&bad, &bytes).unwrap();
    std::fs::set_permissions(&bad, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let run = record_with(
        &dir.path().join("out"),
        &[],
        &[],
        &[bad.to_str().unwrap(), "fib", "3"],
    );
    assert!(!run.status.success(), "{}", run.stderr);
    assert!(
        run.stderr.contains("Go binary without symbols")
            && run.stderr.contains("magic")
            && run.stderr.contains("corrupt-go"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    // Nothing ran: the error comes before the command starts.
    assert!(!run.stdout.contains("ok"), "{}", run.stdout);
}

#[test]
fn attach_to_running_goroutines_and_detach_cleanly() {
    require_root();
    let bin = go_fixture();
    // 8 goroutines call leaf until stdin ends: the attach comes after every
    // one of them is inside worker, and the detach before any leaves it,
    // however slow this machine is.
    let mut target = ChildGuard::spawn(
        std::process::Command::new(&bin)
            .args(["goroutines", "8", "0"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped()),
    );
    // Its stdout is read to the end on a thread (a closed pipe would kill
    // it with SIGPIPE when it prints its result); every wait is bounded.
    let stdout = target.child().stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let first = lines.recv_timeout(std::time::Duration::from_secs(60));
    assert_eq!(
        first.as_deref(),
        Ok("running"),
        "the Go fixture did not start"
    );
    let pid = target.pid().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().display().to_string();
    let run = run_agent(&[
        "attach",
        "--pid",
        &pid,
        // Every call: the claims below are about the recording window's
        // edges, which the governor (5% by default for attach) would add
        // to with windows of its own (flags 2 | 64).
        "--max-overhead",
        "off",
        "--duration",
        "1s",
        "-q",
        "--out",
        &out,
    ]);
    assert!(run.status.success(), "{}", run.stderr);
    assert!(
        target.wait_timeout(std::time::Duration::ZERO).is_none(),
        "the Go fixture ended before the detach"
    );
    // Unprobed again, it finishes its work and exits cleanly.
    drop(target.child().stdin.take());
    let status = target
        .wait_timeout(std::time::Duration::from_secs(60))
        .expect("the Go fixture finishes once its stdin ends");
    assert!(
        status.success(),
        "the Go fixture died after detach: {status}"
    );
    let rows = calls(dir.path());
    let leaf = of(&rows, "main.leaf");
    assert!(leaf.len() > 100, "only {} leaf calls", leaf.len());
    // Workers were running before the attach and after the detach: no
    // edge of theirs inside the window, so every call is a leaf, at depth
    // 0 with no parent. (Entries from before every link was attached
    // used to stay open: a goroutine that entered leaf between the entry
    // link and the RET-site link left a frame that never closed, and its
    // later leaf calls nested under it.)
    assert_eq!(leaf.len(), rows.len(), "only leaf runs in the window");
    for r in &leaf {
        assert!(
            int(r, "depth") == 0 && r["parent"].is_null(),
            "a leaf nested under another call: {r:?}"
        );
    }
    // A leaf in flight at the attach (at most one per goroutine) has no
    // entry. A leaf in flight at the detach (at most one per goroutine)
    // may have no return: the window ends when detaching starts, and a
    // goroutine whose thread is descheduled inside leaf (a loaded
    // machine) may reach its RET after the RET-site link is gone. Any
    // other edge is a pairing error.
    let no_entry = leaf.iter().filter(|r| int(r, "flags") == 1).count();
    assert!(no_entry <= 8, "{no_entry} leaf calls without entry");
    let cut = leaf.iter().filter(|r| int(r, "flags") == 2).count();
    assert!(cut <= 8, "{cut} leaf calls without return");
    for r in &leaf {
        let flags = int(r, "flags");
        assert!(matches!(flags, 0..=2), "{r:?}");
        assert_eq!(r["duration_ns"].is_null(), flags == 2, "{r:?}");
    }
}

#[test]
fn args_are_refused_for_go_functions_with_a_warning() {
    require_root();
    let bin = go_fixture();
    let dir = tempfile::tempdir().unwrap();
    let run = record_with(
        dir.path(),
        &["main.fib"],
        &["-q", "--args"],
        &[bin.to_str().unwrap(), "fib", "5"],
    );
    assert_success(&run);
    assert!(
        run.stderr
            .contains("arguments of 1 Go functions are not captured"),
        "{}",
        run.stderr
    );
    let rows = duckdb(&format!(
        "SELECT count(*) AS n, count(args) AS args, count(ret) AS ret \
         FROM read_parquet('{}', hive_partitioning = true)",
        calls_glob(dir.path())
    ));
    assert_eq!(
        (
            int(&rows[0], "n"),
            int(&rows[0], "args"),
            int(&rows[0], "ret")
        ),
        (fib_calls(5), 0, 0)
    );
}
