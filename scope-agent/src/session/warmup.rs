//! The governor's start (`--max-overhead`), between loading the programs
//! and attaching the plan: the probe cost measured here, and for `attach`
//! every governable function's calls counted in the kernel for `--warmup`,
//! the first decision taken and printed. What the governor does afterwards
//! is `crate::governor`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Result;
use rustc_hash::FxHashMap;

use super::Target;
use super::attach::{Attaching, recording_cookie};
use super::plan::summary_name;
use super::process_gone;
use crate::capture::AggregateRecord;
use crate::governor::{self, FnLoad, Governor, GovernorSetup};
use crate::probe::attach::{LoadedProbes, ProbePoint, close_links};
use crate::probe::plan::Plan;
use crate::summary::format_duration_ns;

/// The functions the governor may sample: not Go, not inlined instances.
/// (function id, module index, probe point with the recording cookie)
fn governable(plan: &Plan, str_cookies: &HashMap<u32, u64>) -> Vec<(u32, usize, ProbePoint)> {
    let mut out = Vec::new();
    for (i, m) in plan.modules.iter().enumerate() {
        if m.go {
            continue;
        }
        for f in m.functions.iter().filter(|f| f.inline_site.is_none()) {
            out.push((
                f.function_id,
                i,
                ProbePoint {
                    file_offset: f.symbol.file_offset,
                    cookie: recording_cookie(f, str_cookies),
                },
            ));
        }
    }
    out
}

/// Measures the probe cost, and for `attach` counts calls in the kernel for
/// `--warmup` and decides which functions start sampled; prints the
/// prediction.
pub(super) fn prepare_governor(
    a: &Attaching,
    probes: &mut LoadedProbes,
    budget: f64,
) -> Result<Governor> {
    let Attaching {
        cfg,
        plan,
        pid,
        str_cookies,
        stop,
        clock,
        ..
    } = *a;
    let cost = governor::calibrate(probes, true).map_err(|e| {
        anyhow::anyhow!(
            "the overhead governor could not measure the probe cost on this machine: {e} (record without it: --max-overhead off)"
        )
    })?;
    let cands = governable(plan, str_cookies);
    let names: FxHashMap<u32, String> = plan
        .functions()
        .map(|(_, f)| (f.function_id, summary_name(f)))
        .collect();
    let modules: Vec<PathBuf> = plan
        .modules
        .iter()
        .map(|m| m.candidate.attach_path.clone())
        .collect();
    let cost_line = format!(
        "probes cost {:.1} µs per recorded call here ({:.1} µs to count one), measured just now",
        cost.full_ns / 1000.0,
        cost.entry_ns / 1000.0
    );
    // Every governable function gets links of its own when they fit, and
    // recording starts at once (`record` must: its command has not run
    // yet; `attach` can, so a function idle now can be sampled when it
    // heats up). Past that, `attach` counts first to pick the hottest.
    let counts_first =
        matches!(cfg.target, Target::Attach { .. }) && cands.len() > governor::MAX_GOVERNED;
    match counts_first {
        false => {
            let governed: BTreeMap<u32, (usize, ProbePoint)> = if cands.len()
                <= governor::MAX_GOVERNED
            {
                cands.iter().map(|(id, m, p)| (*id, (*m, *p))).collect()
            } else {
                eprintln!(
                    "scope: governor: {} functions probed, more than the {} it can sample one by one: it predicts, but every call is recorded (narrow -f)",
                    cands.len(),
                    governor::MAX_GOVERNED
                );
                BTreeMap::new()
            };
            if !cfg.quiet {
                eprintln!(
                    "scope: governor: {cost_line}; budget {budget}%, decided after the first {}",
                    format_duration_ns(cfg.warmup.as_nanos() as u64)
                );
            }
            let mut g = Governor::new(GovernorSetup {
                budget_pct: budget,
                cost,
                pid,
                modules,
                governed,
                names,
                first_tick: cfg.warmup,
                now_ns: clock.now_epoch_ns(),
                clock_offset_ns: clock.offset_ns,
            });
            g.note(clock.now_epoch_ns(), "calibrate", cost_line, None);
            Ok(g)
        }
        true => {
            // Count every governable function's calls in the kernel.
            let mut by_module: BTreeMap<usize, Vec<ProbePoint>> = BTreeMap::new();
            for (id, m, p) in &cands {
                by_module.entry(*m).or_default().push(ProbePoint {
                    file_offset: p.file_offset,
                    cookie: u64::from(*id),
                });
            }
            let mut count_links = Vec::new();
            for (m, points) in by_module {
                count_links.push(probes.attach_counts(&modules[m], &points, pid)?);
            }
            let start_ns = clock.now_epoch_ns();
            let cpu0 = governor::target_cpu_ns(pid).unwrap_or(0);
            let started = Instant::now();
            while started.elapsed() < cfg.warmup
                && !stop.load(Ordering::Relaxed)
                && !process_gone(pid)
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            let wall = started.elapsed();
            let counts = probes.read_counts();
            let cpu1 = governor::target_cpu_ns(pid).unwrap_or(cpu0);
            let end_ns = clock.now_epoch_ns();
            close_links(count_links);
            let count_of = |id: u32| counts.get(id as usize).copied().unwrap_or(0);
            let total: u64 = cands.iter().map(|(id, _, _)| count_of(*id)).sum();
            let cpu_ns = cpu1.saturating_sub(cpu0) as f64;
            let probe_ns = total as f64 * cost.entry_ns;
            // The hottest functions called in the warm-up get their own links.
            let mut active: Vec<(u32, usize, ProbePoint, u64)> = cands
                .iter()
                .map(|(id, m, p)| (*id, *m, *p, count_of(*id)))
                .filter(|c| c.3 > 0)
                .collect();
            active.sort_by(|a, b| b.3.cmp(&a.3).then(a.0.cmp(&b.0)));
            active.truncate(governor::MAX_GOVERNED);
            let governed: BTreeMap<u32, (usize, ProbePoint)> =
                active.iter().map(|c| (c.0, (c.1, c.2))).collect();
            let loads: Vec<FnLoad> = cands
                .iter()
                .map(|(id, _, _)| FnLoad {
                    id: *id,
                    overhead_pct: governor::overhead_pct(
                        count_of(*id) as f64,
                        cost.full_ns,
                        cpu_ns,
                        wall.as_nanos() as f64,
                        probe_ns,
                    ),
                    governed: governed.contains_key(id),
                })
                .filter(|l| l.overhead_pct > 0.0)
                .collect();
            let decision = governor::decide(&loads, budget);
            let mut g = Governor::new(GovernorSetup {
                budget_pct: budget,
                cost,
                pid,
                modules,
                governed,
                names: names.clone(),
                first_tick: governor::TICK,
                now_ns: end_ns,
                clock_offset_ns: clock.offset_ns,
            });
            for l in &loads {
                let rate = count_of(l.id) as f64 / wall.as_secs_f64().max(1e-3);
                g.set_overhead(l.id, l.overhead_pct, rate);
            }
            g.note(start_ns, "calibrate", cost_line.clone(), None);
            let rate = total as f64 / wall.as_secs_f64().max(1e-3);
            let predict = format!(
                "warm-up {}: {} calls counted ({}/s) in {} function{}; recording every call would slow pid {pid} by {:.1}%",
                format_duration_ns(wall.as_nanos() as u64),
                total,
                crate::status::si(rate),
                active.len(),
                if active.len() == 1 { "" } else { "s" },
                decision.full_pct
            );
            g.note(end_ns, "predict", predict.clone(), Some(decision.full_pct));
            for (id, _, _, count) in &active {
                g.warmup_aggregate(AggregateRecord {
                    function_id: *id,
                    start_ns,
                    end_ns,
                    mode: "warmup",
                    sample_n: 1,
                    observed_ns: wall.as_nanos() as u64,
                    calls_seen: *count,
                    total_ns: None,
                    log2_hist: None,
                });
            }
            g.start_sampled(&decision, end_ns, "warm-up");
            if !cfg.quiet {
                eprintln!("scope: governor: {cost_line}");
            }
            eprintln!("scope: governor: {predict}");
            if decision.sampled.is_empty() {
                eprintln!("scope: governor: within the {budget}% budget: recording every call");
            } else {
                let list: Vec<String> = decision
                    .sampled
                    .iter()
                    .take(5)
                    .map(|id| names.get(id).cloned().unwrap_or_else(|| format!("#{id}")))
                    .collect();
                eprintln!(
                    "scope: governor: budget {budget}%: sampling {} function{} 1 in {} ({}{}), predicted {:.1}%",
                    decision.sampled.len(),
                    if decision.sampled.len() == 1 { "" } else { "s" },
                    decision.n,
                    list.join(", "),
                    if decision.sampled.len() > 5 {
                        ", …"
                    } else {
                        ""
                    },
                    decision.predicted_pct
                );
            }
            Ok(g)
        }
    }
}
