//! `cargo xtask fuzz`: the ELF + DWARF loader under libFuzzer for a bounded
//! time (`fuzz/fuzz_targets/elf_dwarf.rs`), seeded with the test fixtures.
//! `cargo xtask test` runs it for 30 s, so every CI run fuzzes a little.
//! Installs cargo-fuzz when missing; the instrumented build uses the nightly
//! toolchain and its own target directory (`target/fuzz`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::process::{cargo, command, run, succeeds, target_dir, workspace_root};

/// Fuzzes the symbol loader for `seconds`; a crash fails with the input's
/// path (libFuzzer writes it under fuzz/artifacts/).
pub fn run_fuzz(seconds: u64) -> Result<()> {
    ensure_cargo_fuzz()?;
    let root = workspace_root();
    let corpus = seed_corpus()?;
    let fuzz_target_dir = target_dir()?.join("fuzz");
    let mut cmd = command("rustup");
    cmd.args(["run", "nightly", "cargo", "fuzz", "run"])
        .arg("--fuzz-dir")
        .arg(root.join("fuzz"))
        .arg("--target-dir")
        .arg(&fuzz_target_dir)
        .arg("elf_dwarf")
        .arg(&corpus)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        // The seeds are whole ELF files with DWARF (about 30 KiB).
        .arg("-max_len=65536")
        .arg("-rss_limit_mb=4096")
        .arg("-print_final_stats=1")
        .current_dir(&root);
    let started = std::time::SystemTime::now();
    if run(&mut cmd).is_ok() {
        return Ok(());
    }
    // libFuzzer's report scrolls away above its own statistics and cargo-fuzz's
    // backtrace, and CI keeps only the tail: replay the crash and end with
    // the panic's place and message.
    let artifacts = root.join("fuzz/artifacts/elf_dwarf");
    let Some(crash) = newest_since(&artifacts, started) else {
        bail!(
            "the fuzzer failed without leaving a crash input in {}",
            artifacts.display()
        );
    };
    let binary = fuzz_target_dir.join("x86_64-unknown-linux-gnu/release/elf_dwarf");
    let replay = command(&binary)
        .arg(&crash)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
        .unwrap_or_default();
    let panic: Vec<&str> = replay
        .lines()
        .skip_while(|l| !l.contains("panicked at"))
        .take(2)
        .collect();
    bail!(
        "the fuzzer found an input that crashes the symbol loader ({}): {}",
        crash.display(),
        if panic.is_empty() {
            "no panic message (see above)".to_string()
        } else {
            panic.join(" ")
        }
    )
}

/// The newest file in `dir` written after `since`.
fn newest_since(dir: &Path, since: std::time::SystemTime) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .filter(|(t, _)| *t >= since)
        .max()
        .map(|(_, p)| p)
}

fn ensure_cargo_fuzz() -> Result<()> {
    if succeeds(cargo().args(["fuzz", "--version"])) {
        return Ok(());
    }
    println!("scope: installing cargo-fuzz (one time, about two minutes)...");
    run(cargo().args(["install", "cargo-fuzz", "--locked"]))
}

/// `target/fuzz-corpus/elf_dwarf`, holding the C fixture (at -O0 and -O2,
/// with DWARF, about 30 KiB each; the Rust one is megabytes of std debug
/// info, too big to mutate well) as seeds; libFuzzer adds what it finds.
fn seed_corpus() -> Result<PathBuf> {
    let corpus = target_dir()?.join("fuzz-corpus/elf_dwarf");
    std::fs::create_dir_all(&corpus)
        .with_context(|| format!("cannot create {}", corpus.display()))?;
    for opt in ["0", "2"] {
        let bin =
            scope_tests::build_fixture(scope_tests::Lang::C, opt).map_err(anyhow::Error::msg)?;
        copy_if_missing(&bin, &corpus.join(format!("seed-c-O{opt}")))?;
    }
    Ok(corpus)
}

fn copy_if_missing(from: &Path, to: &Path) -> Result<()> {
    if to.exists() {
        return Ok(());
    }
    let len = std::fs::metadata(from)
        .with_context(|| format!("cannot read {}", from.display()))?
        .len();
    if len == 0 {
        bail!("{} is empty", from.display());
    }
    std::fs::copy(from, to)
        .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    Ok(())
}
