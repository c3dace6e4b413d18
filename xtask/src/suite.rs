//! `cargo xtask test`: everything CI runs, in order, each step timed:
//! root/BPF check → toolchain → test tools → fmt → clippy → build the agent
//! → `cargo test --no-fail-fast` with `SCOPE_AGENT_BIN` pointing at that
//! build (one run shows every failing test binary, not only the first) →
//! 30 s of fuzzing: 20 s of the symbol loader, 10 s of the demangler.

use std::time::Instant;

use anyhow::Result;

use crate::process::{cargo, run, step, target_dir, workspace_root};
use crate::setup::{ensure_root_and_bpf, ensure_test_tools, ensure_toolchain};

/// Workspace-wide cargo flags. scope-ebpf is left out: it only builds for
/// the BPF target, and scope-agent's build script builds it.
const WORKSPACE: [&str; 3] = ["--workspace", "--exclude", "scope-ebpf"];

/// Seconds of fuzzing per target in every run of the suite (30 s in all).
const FUZZ_SECONDS: [(crate::fuzz::Target, u64); 2] = [
    (crate::fuzz::Target::ElfDwarf, 20),
    (crate::fuzz::Target::Demangle, 10),
];

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
        if !has_cargo_flag(cargo_test_args, "--no-fail-fast") {
            cmd.arg("--no-fail-fast");
        }
        if !selects_packages(cargo_test_args) {
            cmd.args(WORKSPACE);
        }
        let result = run(cmd.args(cargo_test_args));
        // The viewer's browser tests leave a screenshot of each view.
        let shots = target_dir()?.join("artifacts/viewer");
        if shots.is_dir() {
            println!("screenshots of the viewer: {}", shots.display());
        }
        result
    })?;
    if fuzz {
        for (target, seconds) in FUZZ_SECONDS {
            step(&format!("fuzz {}", target.name()), || {
                crate::fuzz::run_fuzz(target, seconds)
            })?;
        }
    }
    println!(
        "cargo xtask test: all steps passed ({:.1} s)",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Whether the user's `cargo test` arguments (before their own `--`) hold
/// `flag` already (cargo refuses a flag given twice).
fn has_cargo_flag(args: &[String], flag: &str) -> bool {
    args.iter().take_while(|a| *a != "--").any(|a| a == flag)
}

/// Whether the user's `cargo test` arguments (before their own `--`) pick
/// packages, in which case `--workspace` must not be added.
fn selects_packages(args: &[String]) -> bool {
    args.iter()
        .take_while(|a| *a != "--")
        .any(|a| a == "-p" || a.starts_with("--package") || (a.starts_with("-p") && a.len() > 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flags_are_found_only_before_the_test_binaries_own_arguments() {
        let given = args(&["-p", "scope-tests", "--no-fail-fast", "--", "--nocapture"]);
        assert!(has_cargo_flag(&given, "--no-fail-fast"));
        assert!(!has_cargo_flag(
            &args(&["-p", "x", "--", "--no-fail-fast"]),
            "--no-fail-fast"
        ));
        assert!(selects_packages(&given));
        assert!(!selects_packages(&args(&["--", "-p"])));
    }
}
