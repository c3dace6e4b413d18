//! A synthetic store for the query benchmark, written by the agent's own
//! writer ([`ParquetStore`] through [`EventSink`]), so its files are laid
//! out, encoded and segmented exactly as a recording's.
//!
//! Usage: `gen_store OUT_DIR CALLS [SEED]`. Writes one session of at least
//! CALLS calls (it stops at the end of a root call, so every call tree is
//! whole) and prints one JSON object on standard output: the session id,
//! the calls written, bytes, seconds, and what the benchmark asks about
//! (`stack_tid`/`stack_at_ns`: an instant inside a call at depth 6 or more
//! in the middle of the session, with the depth; `hist_function_id`: a
//! function of middling popularity).
//!
//! The program it mimics: 8 threads, 300 functions on ten levels (each
//! calls a few functions of the next levels, so paths repeat the way a real
//! call graph's do), nested calls up to depth 9. Self times are log-normal
//! around a per-function median between 100 ns and 50 µs (σ = 1, clamped to
//! 100 ns – 5 ms); a call's duration is its self time plus its children's,
//! its self time spread in the gaps before, between and after them, so
//! children lie inside their parent and `self_ns = duration_ns − Σ
//! children`. Threads idle a few µs between root calls. Calls reach the
//! store in return order (children before their parent) 16 Ki at a time,
//! threads interleaved by their clocks, as the agent's correlator hands
//! them over; segments hold 1,000,000 rows (the agent's `--segment-rows`
//! default; the age limit is left out so the store does not depend on how
//! fast this machine writes).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use scope_agent::capture::{CallRecord, EventSink, TotalRecord};
use scope_agent::storage::{FunctionRow, ParquetStore, SessionRow, StoreConfig};

const THREADS: usize = 8;
const FUNCTIONS: usize = 300;
const LEVELS: usize = 10;
const PID: u32 = 4242;
/// 2026-11-26T00:00:00Z, epoch ns.
const SESSION_START_NS: i64 = 1_795_651_200_000_000_000;
/// The agent's `--segment-rows` default.
const SEGMENT_ROWS: usize = 1_000_000;
/// Calls handed to the store at once, as the session loop batches them.
const BATCH: usize = 16 * 1024;

/// SplitMix64: small, fast and deterministic (no dependency needed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Standard normal (Box–Muller).
    fn normal(&mut self) -> f64 {
        let u1 = self.unit().max(1e-300);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// One synthetic function: its level in the call graph, the median of its
/// self time, and the functions it calls.
struct Func {
    level: usize,
    ln_median: f64,
    callees: Vec<u32>,
}

/// Per-function sums for `totals`.
#[derive(Clone, Copy, Default)]
struct Sums {
    calls: u64,
    total_ns: u64,
    self_ns: u64,
}

struct Generator {
    rng: Rng,
    funcs: Vec<Func>,
    next_call_id: u64,
    out: Vec<CallRecord>,
    sums: Vec<Sums>,
    written: u64,
    /// Once set (half the calls written), the first call at depth ≥ 6
    /// becomes the stack probe: (tid, instant, depth).
    want_probe: bool,
    probe: Option<(u32, i64, u32)>,
}

impl Generator {
    /// One call of `f` at `depth` on `tid`, entering at `start`: its
    /// children first (return order), then itself. Returns its duration.
    fn call(&mut self, tid: u32, f: u32, parent: u64, depth: u32, start: i64) -> i64 {
        let call_id = self.next_call_id;
        self.next_call_id += 1;
        let func = &self.funcs[f as usize - 1];
        let self_ns = (func.ln_median + self.rng.normal())
            .exp()
            .clamp(100.0, 5_000_000.0) as i64;
        let n_children = if func.callees.is_empty() {
            0
        } else {
            // Fewer children deeper down: about 2.2 at the top, 0.6 at the
            // bottom, so a root call averages some dozens of calls.
            let max = match func.level {
                0..=2 => 5,
                3..=5 => 3,
                _ => 2,
            };
            self.rng.below(max)
        };
        let gap = self_ns / (n_children as i64 + 1);
        let mut cursor = start + gap;
        let mut children_ns = 0;
        for _ in 0..n_children {
            let callees = &self.funcs[f as usize - 1].callees;
            let g = callees[self.rng.below(callees.len() as u64) as usize];
            let d = self.call(tid, g, call_id, depth + 1, cursor);
            children_ns += d;
            cursor += d + gap;
        }
        let duration = self_ns + children_ns;
        if self.want_probe && self.probe.is_none() && depth >= 6 {
            self.probe = Some((tid, start + duration / 2, depth));
        }
        let s = &mut self.sums[f as usize - 1];
        s.calls += 1;
        s.total_ns += duration as u64;
        s.self_ns += self_ns as u64;
        self.out.push(CallRecord {
            pid: PID,
            tid,
            call_id,
            parent_call_id: parent,
            parent_function_id: 0,
            function_id: f,
            depth,
            start_ns: start,
            duration_ns: duration,
            self_ns,
            flags: 0,
            args: None,
            ret: None,
            arg_strings: None,
            offcpu_ns: None,
            request_id: None,
        });
        duration
    }
}

/// A name for function `i`: `verb_noun`, unique.
fn name_of(i: usize) -> String {
    const VERBS: [&str; 20] = [
        "parse", "read", "write", "hash", "lookup", "insert", "encode", "decode", "sort", "merge",
        "scan", "flush", "alloc", "free", "compress", "render", "match", "load", "send", "poll",
    ];
    const NOUNS: [&str; 15] = [
        "header", "record", "block", "table", "key", "page", "frame", "token", "buffer", "node",
        "entry", "index", "chunk", "packet", "row",
    ];
    format!("{}_{}", VERBS[i % VERBS.len()], NOUNS[i / VERBS.len()])
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, out, calls, rest @ ..] = args.as_slice() else {
        bail!("usage: gen_store OUT_DIR CALLS [SEED]");
    };
    let target: u64 = calls
        .replace('_', "")
        .parse()
        .with_context(|| format!("CALLS {calls:?}: not a number"))?;
    let seed: u64 = match rest {
        [] => 1,
        [s] => s
            .parse()
            .with_context(|| format!("SEED {s:?}: not a number"))?,
        _ => bail!("usage: gen_store OUT_DIR CALLS [SEED]"),
    };
    let started = Instant::now();
    let mut rng = Rng(seed);

    // The call graph: 8 root functions (level 0, one per thread's main
    // loop), then the rest spread over levels 1..9, more of them deeper.
    let mut funcs: Vec<Func> = (0..FUNCTIONS)
        .map(|i| {
            let level = if i < THREADS {
                0
            } else {
                1 + ((i - THREADS) * (LEVELS - 1)) / (FUNCTIONS - THREADS)
            };
            // Medians log-uniform in 100 ns .. 50 µs.
            let ln_median = (100f64).ln() + rng.unit() * (500f64).ln();
            Func {
                level,
                ln_median,
                callees: Vec::new(),
            }
        })
        .collect();
    for i in 0..FUNCTIONS {
        let level = funcs[i].level;
        if level + 1 >= LEVELS {
            continue;
        }
        let deeper: Vec<u32> = (0..FUNCTIONS)
            .filter(|&j| (level + 1..=(level + 3).min(LEVELS - 1)).contains(&funcs[j].level))
            .map(|j| j as u32 + 1)
            .collect();
        let n = 2 + rng.below(4) as usize;
        funcs[i].callees = (0..n)
            .map(|_| deeper[rng.below(deeper.len() as u64) as usize])
            .collect();
    }

    let session_id = format!("20261126T000000Z-{PID}");
    let mut store = ParquetStore::create(StoreConfig {
        out_dir: out.into(),
        session_id: session_id.clone(),
        segment_max_rows: SEGMENT_ROWS,
        segment_max_age: Duration::from_secs(u64::MAX / 4),
    })?;
    store.write_functions(
        &(0..FUNCTIONS)
            .map(|i| FunctionRow {
                function_id: i as u32 + 1,
                name: name_of(i),
                symbol: name_of(i),
                module: "/usr/bin/bench-target".to_string(),
                build_id: Some("5c09e0b1".to_string()),
                address: 0x401000 + 0x100 * i as u64,
                size: 0x80,
                file: Some(format!("src/level{}.c", funcs[i].level)),
                line: Some(10 + 20 * (i as u32 % 50)),
                param_names: Vec::new(),
                param_types: Vec::new(),
                return_type: Some("int".to_string()),
                language: Some("C".to_string()),
                inlined_count: 0,
                inlined_into: None,
                call_file: None,
                call_line: None,
            })
            .collect::<Vec<_>>(),
    )?;

    let mut g = Generator {
        rng,
        funcs,
        next_call_id: 1,
        out: Vec::with_capacity(BATCH + 4096),
        sums: vec![Sums::default(); FUNCTIONS],
        written: 0,
        want_probe: false,
        probe: None,
    };
    let tids: Vec<u32> = (0..THREADS as u32).map(|t| PID + 1 + t).collect();
    let mut clocks: Vec<i64> = (0..THREADS as i64)
        .map(|t| SESSION_START_NS + 1_000 * (t + 1))
        .collect();
    let mut end_ns = SESSION_START_NS;
    while g.written + (g.out.len() as u64) < target {
        // The thread that is furthest behind runs its next root call.
        let t = (0..THREADS).min_by_key(|&t| clocks[t]).unwrap_or(0);
        let root = t as u32 + 1;
        let d = g.call(tids[t], root, 0, 0, clocks[t]);
        clocks[t] += d;
        end_ns = end_ns.max(clocks[t]);
        // Idle between root calls: about 2 µs.
        clocks[t] += ((2000f64).ln() + 0.5 * g.rng.normal()).exp() as i64;
        if g.out.len() >= BATCH {
            store.write_calls(&g.out)?;
            g.written += g.out.len() as u64;
            g.out.clear();
        }
        if !g.want_probe && g.written >= target / 2 {
            g.want_probe = true;
        }
    }
    store.write_calls(&g.out)?;
    g.written += g.out.len() as u64;
    g.out.clear();

    let totals: Vec<TotalRecord> = g
        .sums
        .iter()
        .enumerate()
        .map(|(i, s)| TotalRecord {
            function_id: i as u32 + 1,
            calls: Some(s.calls),
            exact: true,
            calls_low: s.calls,
            calls_high: Some(s.calls),
            calls_recorded: s.calls,
            method: "recorded",
            basis_function_id: None,
            total_ns: Some(s.total_ns),
            self_ns: Some(s.self_ns),
        })
        .collect();
    // A function of middling popularity, for the histogram query.
    let mut by_calls: Vec<(u64, u32)> = totals
        .iter()
        .map(|t| (t.calls.unwrap_or(0), t.function_id))
        .collect();
    by_calls.sort_unstable_by(|a, b| b.cmp(a));
    let (hist_calls, hist_function_id) = by_calls[by_calls.len() / 8];
    let session = SessionRow {
        host: "bench".to_string(),
        boot_id: "b00t".into(),
        pid: PID,
        command: format!("gen_store {target}"),
        start_ns: SESSION_START_NS,
        end_ns: end_ns + 1_000,
        version: env!("CARGO_PKG_VERSION").to_string(),
        clock_offset_ns: 0,
        utc_offset_ns: 0,
        utc_uncertainty_ns: None,
        clock_sync: "unsynchronized".into(),
        events: 2 * g.written,
        calls: Some(g.written),
        calls_exact: true,
        calls_recorded: g.written,
        lost: 0,
        max_overhead_pct: None,
        predicted_full_pct: None,
        predicted_full_at_least: false,
        predicted_pct: None,
        measured_pct: None,
        measured_low_pct: None,
        measured_high_pct: None,
    };
    let summary = store.finish(&session, &totals)?;
    let (stack_tid, stack_at_ns, stack_depth) = g
        .probe
        .context("no call at depth 6 or more after the middle: ask for more calls")?;
    println!(
        "{}",
        serde_json_line(&[
            ("session_id", format!("{session_id:?}")),
            ("calls", g.written.to_string()),
            ("bytes", summary.bytes.to_string()),
            ("files", summary.files.len().to_string()),
            ("seconds", format!("{:.1}", started.elapsed().as_secs_f64())),
            ("start_ns", SESSION_START_NS.to_string()),
            ("end_ns", session.end_ns.to_string()),
            ("stack_tid", stack_tid.to_string()),
            ("stack_at_ns", stack_at_ns.to_string()),
            ("stack_depth", stack_depth.to_string()),
            ("hist_function_id", hist_function_id.to_string()),
            ("hist_calls", hist_calls.to_string()),
        ])
    );
    Ok(())
}

/// `{"k": v, ...}` from already encoded JSON values (scope-agent has no
/// serde_json; these are numbers and a plain string).
fn serde_json_line(fields: &[(&str, String)]) -> String {
    let body: Vec<String> = fields.iter().map(|(k, v)| format!("{k:?}: {v}")).collect();
    format!("{{{}}}", body.join(", "))
}
