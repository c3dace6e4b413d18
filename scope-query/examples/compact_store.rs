//! Generates a store of realistic calls in the agent's layout, or compacts
//! one, printing bytes per call and the process's peak RSS (for
//! BENCHMARKS.md).
//!
//! ```text
//! cargo run --release -p scope-query --example compact_store -- gen DIR CALLS [SEG_ROWS] [THREADS]
//! cargo run --release -p scope-query --example compact_store -- compact DIR [MEMORY_MIB]
//! ```

#[path = "../tests/compact_support/mod.rs"]
mod compact_support;

use std::path::Path;
use std::time::Instant;

use scope_query::compact::{CompactOptions, compact};

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str);
    match arg(0) {
        Some("gen") => {
            let dir = Path::new(arg(1).unwrap_or("store"));
            let calls: usize = arg(2).unwrap_or("1000000").parse()?;
            let seg: usize = arg(3).unwrap_or("250000").parse()?;
            let threads: u32 = arg(4).unwrap_or("8").parse()?;
            let mut spec = compact_support::SessionSpec::new("20261126T000000Z-4242", calls, seg);
            spec.threads = threads;
            let t = Instant::now();
            compact_support::write_session(dir, &spec);
            println!(
                "generated {calls} calls in {:.1} s",
                t.elapsed().as_secs_f64()
            );
        }
        Some("compact") => {
            let dir = Path::new(arg(1).unwrap_or("store"));
            let mut opts = CompactOptions::default();
            if let Some(m) = arg(2) {
                opts.memory_limit = m.parse::<usize>()? << 20;
            }
            let t = Instant::now();
            let report = compact(dir, &opts, &mut |l: &str| eprintln!("{l}"))?;
            let secs = t.elapsed().as_secs_f64();
            for s in &report.sessions {
                println!(
                    "{}: {} calls; files {} -> {}; bytes {} -> {} ({:.2} -> {:.2} B/call; calls alone {:.2} -> {:.2}); spilled {} B",
                    s.session_id,
                    s.calls,
                    s.files_before,
                    s.files_after,
                    s.bytes_before,
                    s.bytes_after,
                    s.bytes_per_call_before().unwrap_or(0.0),
                    s.bytes_per_call_after().unwrap_or(0.0),
                    s.calls_bytes_before as f64 / s.calls.max(1) as f64,
                    s.calls_bytes_after as f64 / s.calls.max(1) as f64,
                    s.spilled_bytes
                );
            }
            for (id, why) in &report.skipped {
                println!("{id}: skipped: {why}");
            }
            println!(
                "{secs:.1} s, peak RSS {} MiB (memory limit {} MiB)",
                peak_rss_kib() / 1024,
                opts.memory_limit >> 20
            );
        }
        _ => anyhow::bail!(
            "usage: compact_store gen DIR CALLS [SEG_ROWS] [THREADS] | compact DIR [MEMORY_MIB]"
        ),
    }
    Ok(())
}
