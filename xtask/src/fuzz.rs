//! `cargo xtask fuzz`: the ELF + DWARF loader under libFuzzer for a bounded
//! time (`fuzz/fuzz_targets/elf_dwarf.rs`), seeded with the test fixtures;
//! `--target demangle` fuzzes the demangler instead, seeded with mangled
//! names. `cargo xtask test` runs elf_dwarf for 20 s and demangle for
//! 10 s, so every CI run fuzzes both a little.
//! Installs cargo-fuzz when missing; the instrumented build uses the nightly
//! toolchain and its own target directory (`target/fuzz`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::process::{cargo, command, run, succeeds, target_dir, workspace_root};

/// A fuzz target of `fuzz/Cargo.toml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// `symbols::load_module_bytes` over ELF files.
    ElfDwarf,
    /// `symbols::demangle::demangle` over symbol names.
    Demangle,
}

impl Target {
    /// The target's name in `fuzz/Cargo.toml`.
    pub fn name(self) -> &'static str {
        match self {
            Target::ElfDwarf => "elf_dwarf",
            Target::Demangle => "demangle",
        }
    }
}

/// Fuzzes `target` for `seconds`; a crash fails with the input's path
/// (libFuzzer writes it under fuzz/artifacts/) and the replayed panic.
pub fn run_fuzz(target: Target, seconds: u64) -> Result<()> {
    ensure_cargo_fuzz()?;
    let root = workspace_root();
    let corpus = match target {
        Target::ElfDwarf => seed_corpus()?,
        Target::Demangle => demangle_corpus()?,
    };
    let name = target.name();
    let fuzz_target_dir = target_dir()?.join("fuzz");
    let mut cmd = command("rustup");
    cmd.args(["run", "nightly", "cargo", "fuzz", "run"])
        .arg("--fuzz-dir")
        .arg(root.join("fuzz"))
        .arg("--target-dir")
        .arg(&fuzz_target_dir)
        .arg(name)
        .arg(&corpus)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        // The ELF seeds are whole files with DWARF (about 30 KiB).
        .arg(match target {
            Target::ElfDwarf => "-max_len=65536",
            Target::Demangle => "-max_len=4096",
        })
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
    let artifacts = root.join("fuzz/artifacts").join(name);
    let Some(crash) = newest_since(&artifacts, started) else {
        bail!(
            "the fuzzer failed without leaving a crash input in {}",
            artifacts.display()
        );
    };
    let binary = fuzz_target_dir
        .join("x86_64-unknown-linux-gnu/release")
        .join(name);
    let replay = command(&binary)
        .arg(&crash)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
        .unwrap_or_default();
    // A panic's place and message; else what the sanitizer or libFuzzer
    // said (an allocation too big, a deadly signal).
    let mut panic: Vec<&str> = replay
        .lines()
        .skip_while(|l| !l.contains("panicked at"))
        .take(2)
        .collect();
    if panic.is_empty() {
        panic = replay
            .lines()
            .filter(|l| l.contains("ERROR: ") || l.starts_with("SUMMARY: "))
            .collect();
    }
    bail!(
        "the fuzzer found an input that crashes {name} ({}): {}",
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
        if opt == "2" {
            go_like_seed(&bin, &corpus.join("seed-go-stripped"))?;
        }
    }
    Ok(corpus)
}

/// The C fixture stripped, with a small `.gopclntab` naming one function:
/// the path a stripped Go binary takes (`symbols/go.rs`), which mutations
/// of the other seeds rarely reach.
fn go_like_seed(fixture: &Path, seed: &Path) -> Result<()> {
    if seed.exists() {
        return Ok(());
    }
    // Go 1.20's header (magic, pad, quantum 1, pointer size 8), then its
    // words: 1 function, text start 0x1000, names at 96, function table at
    // 72; the table (entry, `_func` offset) twice; one `_func`; the names.
    let mut table = vec![0xf1, 0xff, 0xff, 0xff, 0, 0, 1, 8];
    for w in [1u64, 0, 0x1000, 96, 0, 0, 0, 72] {
        table.extend_from_slice(&w.to_le_bytes());
    }
    for v in [0x10u32, 16, 0x20, 16, 0x10, 5] {
        table.extend_from_slice(&v.to_le_bytes());
    }
    table.extend_from_slice(b"\0\0\0\0\0main.f\0");
    let table_path = seed.with_extension("pclntab");
    std::fs::write(&table_path, &table)
        .with_context(|| format!("cannot write {}", table_path.display()))?;
    let result = run(command("objcopy")
        .arg("--strip-all")
        .arg(format!("--add-section=.gopclntab={}", table_path.display()))
        .arg(fixture)
        .arg(seed));
    let _ = std::fs::remove_file(&table_path);
    result
}

/// `target/fuzz-corpus/demangle`: Rust legacy and v0, C++ and plain names.
fn demangle_corpus() -> Result<PathBuf> {
    let corpus = target_dir()?.join("fuzz-corpus/demangle");
    std::fs::create_dir_all(&corpus)
        .with_context(|| format!("cannot create {}", corpus.display()))?;
    let seeds = [
        "_ZN3foo3bar17h0123456789abcdefE",
        "_RNvCs1234_7mycrate3foo",
        "_ZNSt6vectorIiSaIiEE9push_backERKi",
        "_ZZN1a1bEvE1c",
        "_ZN9__gnu_cxx13new_allocatorIcE8allocateEmPKv",
        "compute_sum",
    ];
    for (i, seed) in seeds.iter().enumerate() {
        let path = corpus.join(format!("seed-{i}"));
        if !path.exists() {
            std::fs::write(&path, seed)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
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
