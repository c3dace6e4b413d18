//! The user-space pipeline alone, on one core: synthetic ring records →
//! `Correlator` → `ParquetStore` (through `EventSink`), timed in-process.
//! No eBPF, no root: it measures what the agent can absorb per second.
//!
//! Usage: `pipeline_bench [EVENTS] [OUT_DIR]` (default 20,000,000 events,
//! a temporary directory). Prints `events_per_s`, `calls`, `bytes` and
//! `cpu_s` lines for `cargo xtask bench`.
//!
//! The events mimic a traced program: 4 threads, each running call trees
//! three deep (`a → b → leaf`) and flat leaf calls, 1,000 distinct
//! functions, durations of tens to thousands of nanoseconds. They are
//! generated once (1 Mi events) and replayed with shifted timestamps, the
//! way the session loop batches them: calls go to the store 16 Ki at a time.

use std::time::{Duration, Instant};

use scope_agent::capture::EventSink;
use scope_agent::capture::correlator::Correlator;
use scope_agent::storage::{ParquetStore, SessionRow, StoreConfig};
use scope_common::{EVENT_ENTRY, EVENT_RETURN, RawEvent};

const BLOCK: usize = 1 << 20;
const BATCH: usize = 16 * 1024;
const THREADS: u64 = 4;
const PID: u64 = 4242;

/// A small deterministic generator (no dependency needed).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

/// One block of events in per-thread order, ending with every stack empty;
/// returns the events and the time span they cover.
fn synthetic_block() -> (Vec<RawEvent>, u64) {
    let mut rng = Lcg(0x5c09e);
    let mut out = Vec::with_capacity(BLOCK);
    let mut now: u64 = 1_000_000;
    let ev = |out: &mut Vec<RawEvent>, now: u64, tid: u64, function_id: u32, kind: u32| {
        out.push(RawEvent {
            ktime_ns: now,
            pid_tgid: (PID << 32) | (PID + tid),
            function_id,
            kind,
        });
    };
    let mut tid = 0;
    while out.len() + 6 <= BLOCK {
        // A few call trees on one thread, then switch (as CPUs interleave).
        if rng.next().is_multiple_of(8) {
            tid = (tid + 1) % THREADS;
        }
        let base = 1 + (rng.next() % 330) as u32 * 3;
        if rng.next().is_multiple_of(2) {
            let (a, b, leaf) = (base, base + 1, base + 2);
            ev(&mut out, now, tid, a, EVENT_ENTRY);
            now += 20 + rng.next() % 200;
            ev(&mut out, now, tid, b, EVENT_ENTRY);
            now += 20 + rng.next() % 200;
            ev(&mut out, now, tid, leaf, EVENT_ENTRY);
            now += 10 + rng.next() % 2000;
            ev(&mut out, now, tid, leaf, EVENT_RETURN);
            now += 20 + rng.next() % 100;
            ev(&mut out, now, tid, b, EVENT_RETURN);
            now += 20 + rng.next() % 100;
            ev(&mut out, now, tid, a, EVENT_RETURN);
        } else {
            for _ in 0..3 {
                ev(&mut out, now, tid, base, EVENT_ENTRY);
                now += 10 + rng.next() % 500;
                ev(&mut out, now, tid, base, EVENT_RETURN);
                now += 5 + rng.next() % 50;
            }
        }
    }
    (out, now)
}

/// CPU time (user + system) of the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer for clock_gettime.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let total: u64 = match args.next() {
        Some(n) => n
            .parse()
            .map_err(|_| anyhow::anyhow!("'{n}' is not a number of events"))?,
        None => 20_000_000,
    };
    let tmp;
    let out_dir = match args.next() {
        Some(d) => d.into(),
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };

    let (block, span) = synthetic_block();
    let mut store = ParquetStore::create(StoreConfig {
        out_dir: out_dir.clone(),
        session_id: "pipeline-bench".into(),
        segment_max_rows: 1_000_000,
        segment_max_age: Duration::from_secs(10),
    })?;
    let mut correlator = Correlator::new(1_700_000_000_000_000_000, 0);

    let cpu0 = thread_cpu();
    let start = Instant::now();
    let mut fed: u64 = 0;
    let mut round: u64 = 0;
    'outer: loop {
        let shift = round * (span + 1000);
        for raw in &block {
            if fed == total {
                break 'outer;
            }
            let mut ev = *raw;
            ev.ktime_ns += shift;
            correlator.on_event(&ev);
            fed += 1;
            if correlator.pending() >= BATCH {
                store.write_calls(&correlator.take_calls())?;
            }
        }
        round += 1;
    }
    correlator.finish();
    store.write_calls(&correlator.take_calls())?;
    let counts = correlator.counts();
    let summary = store.finish(
        &SessionRow {
            host: String::new(),
            boot_id: "b00t".into(),
            pid: PID as u32,
            command: "pipeline_bench".into(),
            start_ns: 0,
            end_ns: 0,
            version: env!("CARGO_PKG_VERSION").into(),
            clock_offset_ns: 0,
            utc_offset_ns: 0,
            utc_uncertainty_ns: None,
            clock_sync: "unsynchronized".into(),
            events: counts.events,
            calls: Some(counts.calls),
            calls_exact: true,
            calls_recorded: counts.calls,
            lost: 0,
            max_overhead_pct: None,
            predicted_full_pct: None,
            predicted_full_at_least: false,
            predicted_pct: None,
            measured_pct: None,
            measured_low_pct: None,
            measured_high_pct: None,
        },
        &[],
    )?;
    let wall = start.elapsed();
    let cpu = thread_cpu() - cpu0;

    println!("events {fed}");
    println!("calls {}", counts.calls);
    println!("wall_s {:.3}", wall.as_secs_f64());
    println!("cpu_s {:.3}", cpu.as_secs_f64());
    println!("events_per_s {:.0}", fed as f64 / wall.as_secs_f64());
    println!("events_per_cpu_s {:.0}", fed as f64 / cpu.as_secs_f64());
    println!("bytes {}", summary.bytes);
    Ok(())
}
