//! A library loaded with `dlopen` after the agent attached: a pattern naming
//! it waits, and its functions are probed once it is mapped. The agent
//! attaches with `--max-overhead off` (every call; `attach` samples hot
//! functions by default), so the counts are exact.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use scope_tests::*;

/// Builds tests/fixtures/c/dlopen/{host,plugin}.c into `dir`.
fn build(dir: &std::path::Path) -> (PathBuf, PathBuf) {
    let src = workspace_root().join("tests/fixtures/c/dlopen");
    let host = dir.join("host");
    let lib = dir.join("libscopeplugin.so");
    let cc = |args: &[&str]| {
        let st = Command::new("cc").args(args).status().expect("cc runs");
        assert!(st.success(), "cc {args:?}");
    };
    cc(&[
        "-g",
        "-O2",
        "-shared",
        "-fPIC",
        src.join("plugin.c").to_str().unwrap(),
        "-o",
        lib.to_str().unwrap(),
    ]);
    cc(&[
        "-g",
        "-O2",
        src.join("host.c").to_str().unwrap(),
        "-o",
        host.to_str().unwrap(),
        "-ldl",
    ]);
    (host, lib)
}

/// The host fixture in serve mode, and an agent attached to it with
/// `--max-overhead off -f host_tick -f <plugin_pattern>` and `extra` that
/// has said `attached`.
struct Attached {
    _build: tempfile::TempDir,
    lib: PathBuf,
    target: ServeFixture,
    dir: tempfile::TempDir,
    agent: RunningAgent,
}

fn attach_to_host(plugin_pattern: &str, extra: &[&str]) -> Attached {
    let build_dir = tempfile::tempdir().unwrap();
    let (host, lib) = build(build_dir.path());
    let target = ServeFixture::spawn(&host);
    let dir = tempfile::tempdir().unwrap();
    let pid = target.pid.to_string();
    let out = dir.path().display().to_string();
    let mut args = vec![
        "attach",
        "--pid",
        &pid,
        // Exact counts: record every call (attach samples hot functions at
        // 5% by default).
        "--max-overhead",
        "off",
        "-f",
        "host_tick",
        "-f",
        plugin_pattern,
        "--out",
        &out,
    ];
    args.extend_from_slice(extra);
    let mut agent = spawn_agent(&args);
    agent.wait_for_stderr("attached", Duration::from_secs(60));
    Attached {
        _build: build_dir,
        lib,
        target,
        dir,
        agent,
    }
}

/// Loads the plugin, waits for the agent to attach it, calls its
/// plugin_work `n` times and ends the host; the agent's run.
fn load_work_and_stop(
    target: &mut ServeFixture,
    mut agent: RunningAgent,
    lib: &std::path::Path,
    n: u32,
) -> AgentRun {
    target.run(&format!("load {}", lib.display()));
    // The agent notices the new mapping on its next poll and says so.
    agent.wait_for_stderr("libscopeplugin.so", Duration::from_secs(30));
    target.run(&format!("work {n}"));
    target.close_stdin();
    assert!(target.wait().success());
    let run = agent.wait(Duration::from_secs(60));
    assert!(run.status.success(), "{}", run.stderr);
    run
}

#[test]
fn a_library_loaded_after_attach_is_probed() {
    require_root();
    let Attached {
        _build,
        lib,
        mut target,
        dir,
        agent,
    } = attach_to_host("libscopeplugin*:plugin_work", &[]);
    assert!(
        agent.stderr_so_far().contains("libscopeplugin*"),
        "the pending pattern is announced: {}",
        agent.stderr_so_far()
    );
    target.run("tick 10");
    let run = load_work_and_stop(&mut target, agent, &lib, 123);
    let rows = duckdb(&format!(
        "SELECT f.name AS name, f.module AS module, count(*) AS n \
         FROM read_parquet('{}', hive_partitioning=true) c \
         JOIN read_parquet('{}', hive_partitioning=true) f USING (session_id, function_id) \
         GROUP BY 1, 2 ORDER BY 1",
        calls_glob(dir.path()),
        functions_glob(dir.path())
    ));
    let got: Vec<(String, i64)> = rows
        .iter()
        .map(|r| (r["name"].as_str().unwrap().into(), r["n"].as_i64().unwrap()))
        .collect();
    assert_eq!(
        got,
        vec![("host_tick".into(), 10), ("plugin_work".into(), 123)],
        "{}",
        run.stderr
    );
    assert!(
        rows[1]["module"]
            .as_str()
            .unwrap()
            .ends_with("libscopeplugin.so"),
        "{rows:?}"
    );
}

#[test]
fn a_pattern_whose_module_never_appears_is_reported() {
    require_root();
    // Every field bound: the temporary directories live to the end.
    let Attached {
        _build,
        lib: _,
        mut target,
        dir: _dir,
        mut agent,
    } = attach_to_host("libnever*:x", &[]);
    target.run("tick 4");
    target.close_stdin();
    assert!(target.wait().success());
    let run = agent.wait(Duration::from_secs(60));
    assert!(run.status.success(), "{}", run.stderr);
    assert!(
        run.stderr.contains("no module matched 'libnever*'"),
        "{}",
        run.stderr
    );
}

/// `--args-for` naming a library loaded later: its calls get their
/// arguments and return values, in the layout its DWARF gives (one `long`:
/// one argument, not six registers blindly), and its parameter's name.
#[test]
fn arguments_of_a_library_loaded_after_attach_are_captured() {
    require_root();
    let pattern = "libscopeplugin*:plugin_work";
    let Attached {
        _build,
        lib,
        mut target,
        dir,
        agent,
    } = attach_to_host(pattern, &["--args-for", pattern]);
    let run = load_work_and_stop(&mut target, agent, &lib, 50);
    let rows = duckdb(&format!(
        "SELECT c.args AS args, c.ret AS ret, f.param_names AS params \
         FROM read_parquet('{}', hive_partitioning=true) c \
         JOIN read_parquet('{}', hive_partitioning=true) f USING (session_id, function_id) \
         WHERE f.name = 'plugin_work' ORDER BY c.call_id",
        calls_glob(dir.path()),
        functions_glob(dir.path())
    ));
    assert_eq!(rows.len(), 50, "{}", run.stderr);
    for (i, r) in rows.iter().enumerate() {
        let i = i as i64;
        assert_eq!(r["args"], serde_json::json!([i]), "call {i}: {r:?}");
        assert_eq!(r["ret"], serde_json::json!(3 * i + 1), "call {i}: {r:?}");
    }
    assert_eq!(rows[0]["params"], serde_json::json!(["x"]), "{:?}", rows[0]);
}
