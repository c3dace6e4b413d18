//! Running commands: every child gets `~/.cargo/bin` on its PATH (where
//! `cargo install` puts bpf-linker), inherits our stdio unless asked
//! otherwise, and every failure names the command that failed.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// `$CARGO_HOME/bin`, else `~/.cargo/bin`.
pub fn cargo_bin_dir() -> PathBuf {
    match std::env::var_os("CARGO_HOME") {
        Some(home) => PathBuf::from(home).join("bin"),
        None => home_dir().join(".cargo/bin"),
    }
}

/// `$HOME`, else `/root`.
pub fn home_dir() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from)
}

/// Our PATH with the cargo bin directory appended when it is missing.
fn child_path() -> OsString {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let cargo_bin = cargo_bin_dir();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    if !dirs.contains(&cargo_bin) {
        dirs.push(cargo_bin);
    }
    std::env::join_paths(dirs).unwrap_or(path)
}

/// A command for `program`, looked up on the PATH children get.
pub fn command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("PATH", child_path());
    cmd
}

/// A `cargo` command: the cargo that runs us (`$CARGO`), else `cargo`.
///
/// Without the variables `cargo run` set for xtask itself: build scripts
/// (ring's, through `cc`) rerun when `CARGO_PKG_NAME` or
/// `CARGO_MANIFEST_DIR` change, so a build from here and a plain `cargo
/// build` would otherwise rebuild each other's dependency trees (40
/// minutes of DataFusion in release).
pub fn cargo() -> Command {
    let mut cmd = command(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    for (k, _) in std::env::vars_os() {
        let Some(k) = k.to_str() else { continue };
        if k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_MANIFEST_")
            || matches!(
                k,
                "CARGO_CRATE_NAME" | "CARGO_BIN_NAME" | "CARGO_PRIMARY_PACKAGE" | "OUT_DIR"
            )
        {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// Whether `program` is an executable file on the PATH children get.
pub fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(&child_path()).any(|dir| {
        std::fs::metadata(dir.join(program))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// The command line, for messages.
pub fn describe(cmd: &Command) -> String {
    let env: Vec<String> = cmd
        .get_envs()
        .filter(|(k, _)| *k != "PATH")
        .filter_map(|(k, v)| Some(format!("{}={}", k.to_string_lossy(), v?.to_string_lossy())))
        .collect();
    env.into_iter()
        .chain(std::iter::once(
            cmd.get_program().to_string_lossy().into_owned(),
        ))
        .chain(cmd.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` with inherited stdio; an error unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run `{}`", describe(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", describe(cmd));
    }
    Ok(())
}

/// Runs `cmd` and captures its output; an error (with its stderr) unless it exits 0.
pub fn output(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run `{}`", describe(cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}):\n{}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    Ok(out)
}

/// Whether `cmd` runs and exits 0, with its output discarded.
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.output().is_ok_and(|o| o.status.success())
}

/// Prints `==> name`, runs `f`, then prints how long it took.
pub fn step<T>(name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    println!("==> {name}");
    let start = Instant::now();
    let result = f().with_context(|| format!("step `{name}` failed"));
    let secs = start.elapsed().as_secs_f64();
    match &result {
        Ok(_) => println!("    {name}: ok ({secs:.1} s)"),
        Err(_) => println!("    {name}: FAILED ({secs:.1} s)"),
    }
    result
}

/// The workspace root (the parent of the xtask crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask/ has a parent directory")
        .to_path_buf()
}

/// Cargo's target directory, as `cargo metadata` reports it.
pub fn target_dir() -> Result<PathBuf> {
    let out = output(
        cargo()
            .args(["metadata", "--format-version", "1", "--no-deps"])
            .current_dir(workspace_root()),
    )?;
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)
        .context("`cargo metadata` printed something other than JSON")?;
    meta["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .context("`cargo metadata` has no target_directory")
}
