//! `cargo xtask`: the project's own commands. `demo` and `test` work on a
//! fresh machine: they install what is missing (nightly rust-src,
//! bpf-linker, and for `test` bpftrace, bpftool and Python's duckdb), check
//! for root and kernel support, then build and run.

mod bench;
mod bench_query;
mod bench_sched;
mod demo;
mod fuzz;
mod process;
mod setup;
mod suite;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "scope's build, test and demo tasks"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build scope-agent (release) and the demo program, record the demo and
    /// query the result with DuckDB. Needs root.
    Demo {
        /// Where the agent writes its Parquet files.
        #[arg(long, default_value = "scope-data")]
        out: PathBuf,
    },
    /// Format check, clippy, build and the whole test suite, real eBPF
    /// programs included. Needs root.
    Test {
        /// Skip `cargo fmt --check` and `cargo clippy`.
        #[arg(long)]
        no_lint: bool,
        /// Skip the 30 s fuzzing step (and its instrumented build).
        #[arg(long)]
        no_fuzz: bool,
        /// Extra arguments for `cargo test`, after `--`
        /// (e.g. `-- -p scope-tests --test record -- --nocapture`).
        #[arg(last = true)]
        cargo_test_args: Vec<String>,
    },
    /// Build the test fixtures into target/fixtures (the tests build them
    /// on demand too).
    Fixtures,
    /// Fuzz the ELF + DWARF symbol loader (or the demangler) with libFuzzer
    /// for a bounded time (installs cargo-fuzz when missing; builds with the
    /// nightly toolchain).
    Fuzz {
        /// How long to fuzz.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Which fuzz target (`fuzz/fuzz_targets/`).
        #[arg(long, value_enum, default_value_t = fuzz::Target::ElfDwarf)]
        target: fuzz::Target,
    },
    /// Measure scope against bpftrace and uftrace side by side (every
    /// figure a ratio from the same run), print the table and write it into
    /// BENCHMARKS.md. Needs root; takes several minutes.
    Bench {
        /// Overhead trials (each runs every setup once, interleaved).
        #[arg(long, default_value_t = 5)]
        trials: usize,
        /// Calls per overhead trial.
        #[arg(long, default_value_t = 100_000)]
        calls: u64,
        /// Print the table without rewriting BENCHMARKS.md.
        #[arg(long)]
        no_write: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Demo { out } => demo::run_demo(&out),
        Task::Test {
            no_lint,
            no_fuzz,
            cargo_test_args,
        } => suite::run_suite(!no_lint, !no_fuzz, &cargo_test_args),
        Task::Fixtures => build_fixtures(),
        Task::Fuzz { seconds, target } => fuzz::run_fuzz(target, seconds),
        Task::Bench {
            trials,
            calls,
            no_write,
        } => bench::run_bench(&bench::BenchOptions {
            trials: trials.max(1),
            calls: calls.max(1),
            write: !no_write,
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cargo xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Builds every fixture the tests use, with the test harness's own code.
fn build_fixtures() -> anyhow::Result<()> {
    for lang in scope_tests::Lang::ALL {
        for opt in ["0", "2"] {
            let path = scope_tests::build_fixture(lang, opt).map_err(anyhow::Error::msg)?;
            println!("{}", path.display());
        }
    }
    Ok(())
}
