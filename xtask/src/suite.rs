//! `cargo xtask test`: everything CI runs, in order, each step timed:
//! root/BPF check → toolchain → test tools → fmt → clippy → build the agent
//! → `cargo test` with `SCOPE_AGENT_BIN` pointing at that build → 30 s of
//! fuzzing the symbol loader.

use std::time::Instant;

use anyhow::Result;

use crate::process::{cargo, run, step, target_dir, workspace_root};
use crate::setup::{ensure_root_and_bpf, ensure_test_tools, ensure_toolchain};

/// Workspace-wide cargo flags. scope-ebpf is left out: it only builds for
/// the BPF target, and scope-agent's build script builds it.
const WORKSPACE: [&str; 3] = ["--workspace", "--exclude", "scope-ebpf"];

/// Seconds of fuzzing in every run of the suite.
const FUZZ_SECONDS: u64 = 30;

/// Runs the whole suite; `lint` adds the fmt and clippy steps, `fuzz` the
/// fuzzing step; `cargo_test_args` go to `cargo test` as they are.
pub fn run_suite(lint: bool, fuzz: bool, cargo_test_args: &[String]) -> Result<()> {
    let start = Instant::now();
    let root = workspace_root();
    step("root and BPF", || ensure_root_and_bpf("test"))?;
    step("toolchain", ensure_toolchain)?;
    step("test tools", ensure_test_tools)?;
    if lint {
        step("fmt", || {
            run(cargo()
                .args(["fmt", "--all", "--", "--check"])
                .current_dir(&root))
        })?;
        step("clippy", || {
            run(cargo()
                .arg("clippy")
                .args(WORKSPACE)
                .args(["--all-targets", "--", "-D", "warnings"])
                .current_dir(&root))
        })?;
    }
    step("build scope-agent", || {
        run(cargo()
            .args(["build", "-p", "scope-agent"])
            .current_dir(&root))
    })?;
    let agent = target_dir()?.join("debug/scope-agent");
    step("test", || {
        let mut cmd = cargo();
        cmd.arg("test")
            .current_dir(&root)
            .env("SCOPE_AGENT_BIN", &agent);
        if !selects_packages(cargo_test_args) {
            cmd.args(WORKSPACE);
        }
        run(cmd.args(cargo_test_args))
    })?;
    if fuzz {
        step("fuzz", || {
            crate::fuzz::run_fuzz(crate::fuzz::Target::ElfDwarf, FUZZ_SECONDS)
        })?;
    }
    println!(
        "cargo xtask test: all steps passed ({:.1} s)",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Whether the user's `cargo test` arguments (before their own `--`) pick
/// packages, in which case `--workspace` must not be added.
fn selects_packages(args: &[String]) -> bool {
    args.iter()
        .take_while(|a| *a != "--")
        .any(|a| a == "-p" || a.starts_with("--package") || (a.starts_with("-p") && a.len() > 2))
}
