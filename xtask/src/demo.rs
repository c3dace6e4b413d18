//! `cargo xtask demo`: build the agent (release) and examples/demo/demo.c,
//! record the demo with every function of its executable probed, then show
//! the per-function totals with DuckDB and the command to query further.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::process::{cargo, command, describe, on_path, run, step, target_dir, workspace_root};
use crate::setup::{ensure_root_and_bpf, ensure_toolchain, pip_install_duckdb, python_has_duckdb};

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
    show_totals(&out);
    Ok(())
}

/// Compiles examples/demo/demo.c into `<target>/demo/demo`.
fn build_demo(root: &Path, target: &Path) -> Result<PathBuf> {
    let dir = target.join("demo");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let demo = dir.join("demo");
    run(command("cc")
        .args(["-g", "-O1", "-fno-omit-frame-pointer", "-o"])
        .arg(&demo)
        .arg(root.join("examples/demo/demo.c")))?;
    Ok(demo)
}

/// `scope-agent record --out <out> -- <demo>`; the agent prints its report.
fn record(agent: &Path, out: &Path, demo: &Path) -> Result<()> {
    let mut cmd = command(agent);
    cmd.arg("record").arg("--out").arg(out).arg("--").arg(demo);
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
/// where a session sampled: `exact` says which; the design doc's
/// `count(*)` over `calls` counts recorded rows, the calls only when every
/// call was recorded).
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

/// Prints the per-function totals (best effort: the recording itself has
/// succeeded) and the command that reproduces them.
fn show_totals(out: &Path) {
    let sql = totals_sql(out);
    println!("==> query");
    if !python_has_duckdb() {
        println!("scope: installing Python's duckdb (one time, about a minute)...");
        if let Err(e) = pip_install_duckdb() {
            println!("    skipped: Python's duckdb is not available ({e:#})");
        }
    }
    if python_has_duckdb() {
        let script = "import duckdb, sys; duckdb.sql(sys.argv[1]).show(max_rows=20)";
        if let Err(e) = run(command("python3").args(["-c", script, &sql])) {
            println!("    the query failed: {e:#}");
        }
    }
    let sessions = std::fs::read_dir(out.join("sessions")).map_or(0, |d| d.count());
    if sessions > 1 {
        println!(
            "({sessions} sessions in {}: the totals cover them all)",
            out.display()
        );
    }
    println!("\nQuery the recording yourself:");
    println!("  duckdb -c \"{sql}\"");
    if !on_path("duckdb") {
        println!("(no duckdb CLI here: `python3 -m pip install duckdb-cli` installs it, or run");
        println!("  python3 -c 'import duckdb, sys; duckdb.sql(sys.argv[1]).show()' \"{sql}\")");
    }
}
