//! `cargo xtask demo`: build the agent (release) and examples/demo/demo.c,
//! record the demo with every function of its executable probed, then show
//! `scope-agent report`, `tree`, `analyze` and a mock `explain` of it, and
//! the commands that go further (DuckDB's among them).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::process::{cargo, command, describe, run, step, target_dir, workspace_root};
use crate::setup::{ensure_root_and_bpf, ensure_toolchain};

/// Records the demo into `out` and reports on it.
pub fn run_demo(out: &Path) -> Result<()> {
    let root = workspace_root();
    let out = std::env::current_dir()
        .context("cannot read the current directory")?
        .join(out);
    step("root and BPF", || ensure_root_and_bpf("demo"))?;
    step("toolchain", ensure_toolchain)?;
    step("build scope-agent (release)", || {
        run(cargo()
            .args(["build", "--release", "-p", "scope-agent"])
            .current_dir(&root))
    })?;
    let target = target_dir()?;
    let demo = step("build the demo", || build_demo(&root, &target))?;
    step("record", || {
        record(&target.join("release/scope-agent"), &out, &demo)
    })?;
    show_answers(&target.join("release/scope-agent"), &out);
    Ok(())
}

/// Compiles examples/demo/demo.c into `<target>/demo/demo`.
fn build_demo(root: &Path, target: &Path) -> Result<PathBuf> {
    let dir = target.join("demo");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let demo = dir.join("demo");
    run(command("cc")
        .args(["-g", "-O1", "-fno-omit-frame-pointer", "-pthread", "-o"])
        .arg(&demo)
        .arg(root.join("examples/demo/demo.c")))?;
    Ok(demo)
}

/// `scope-agent record --out <out> --hooks net -f '*' -- <demo>`: every
/// function of the demo (what no -f gives) and libc's socket calls with
/// the request each served; the agent prints its report.
fn record(agent: &Path, out: &Path, demo: &Path) -> Result<()> {
    let mut cmd = command(agent);
    cmd.arg("record")
        .arg("--out")
        .arg(out)
        .args(["--hooks", "net", "-f", "*", "--"])
        .arg(demo);
    let status = cmd
        .status()
        .with_context(|| format!("cannot run `{}`", describe(&cmd)))?;
    if !status.success() {
        bail!(
            "`{}` failed ({status}); its messages are above",
            describe(&cmd)
        );
    }
    Ok(())
}

/// Calls and total time per function, from `totals` (exact, or estimates
/// where a session sampled: `exact` says which), as DuckDB reads the same
/// files: a hint for users who query with their own engine.
fn totals_sql(out: &Path) -> String {
    let dir = out.display();
    format!(
        "SELECT f.name, sum(t.calls) AS calls, bool_and(t.exact) AS exact, sum(t.total_ns) AS total_ns \
         FROM read_parquet('{dir}/totals/**/*.parquet', hive_partitioning = true) t \
         JOIN read_parquet('{dir}/functions/**/*.parquet', hive_partitioning = true) f \
         USING (session_id, function_id) \
         GROUP BY f.name ORDER BY total_ns DESC NULLS LAST"
    )
}

/// The upstream's requests: each call that served one, in order.
const REQUESTS_SQL: &str = "SELECT c.request_id, c.tid, f.name, c.ret, c.duration_ns / 1e6 AS ms \
     FROM calls c JOIN functions f USING (session_id, function_id) \
     WHERE c.request_id IS NOT NULL ORDER BY c.start_ns LIMIT 12";

/// Per function: calls, and their time on and off the CPU (a call's
/// includes its callees').
const ON_OFF_CPU_SQL: &str = "SELECT f.name, count(*) AS calls, \
     sum(c.oncpu_ns) / 1e6 AS on_cpu_ms, sum(c.offcpu_ns) / 1e6 AS off_cpu_ms \
     FROM calls c JOIN functions f USING (session_id, function_id) \
     GROUP BY f.name ORDER BY off_cpu_ms DESC, on_cpu_ms DESC LIMIT 8";

/// Prints `scope-agent report` and `scope-agent tree` of the recording
/// (best effort: the recording itself has succeeded), then the commands
/// that go further, DuckDB's among them.
fn show_answers(agent: &Path, out: &Path) {
    let data = out.display().to_string();
    for (title, args) in [
        (
            "report",
            vec!["report", "--data", data.as_str(), "--limit", "15"],
        ),
        (
            "tree",
            vec!["tree", "--data", data.as_str(), "--depth", "4"],
        ),
        (
            "on and off the CPU (oncpu_ns, offcpu_ns: the scheduler, followed by default)",
            // This recording only: a query reads every session by default.
            vec![
                "query",
                "--data",
                data.as_str(),
                "--session",
                "latest",
                ON_OFF_CPU_SQL,
            ],
        ),
        (
            "requests (--hooks net: each call tied to the read that started its request, across threads)",
            vec![
                "query",
                "--data",
                data.as_str(),
                "--session",
                "latest",
                REQUESTS_SQL,
            ],
        ),
        ("analyze", vec!["analyze", "--data", data.as_str()]),
        // The mock provider: deterministic and offline; `--provider gemini`
        // (GEMINI_API_KEY) or `--provider openai --endpoint URL` for a real
        // model.
        (
            "explain (mock provider)",
            vec!["explain", "--data", data.as_str(), "--provider", "mock"],
        ),
    ] {
        println!("==> {title}");
        if let Err(e) = run(command(agent).args(&args)) {
            println!("    {title} failed: {e:#}");
        }
    }
    println!("\nGo further (none of these needs root):");
    println!(
        "  {} serve --data {data}    # the viewer: prints a http://127.0.0.1 URL with its token; open it in a browser",
        agent.display()
    );
    println!(
        "  {} diff OLD-STORE NEW-STORE --fail-if 'p99 > +10%'    # what got slower between two recordings",
        agent.display()
    );
    println!(
        "  {} export --data {data} --format flamegraph --offcpu    # where the threads waited, as a flame graph",
        agent.display()
    );
    println!(
        "  {} query \"SELECT * FROM totals\" --data {data}",
        agent.display()
    );
    println!(
        "  {} stack --data {data} --tid TID --at +0.05s",
        agent.display()
    );
    println!(
        "  {} timeline --data {data} --tid TID --from +0.05s --to +0.06s",
        agent.display()
    );
    println!("or with DuckDB, over the same files:");
    println!("  duckdb -c \"{}\"", totals_sql(out));
}
