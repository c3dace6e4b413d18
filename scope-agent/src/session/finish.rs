//! The end of a session: the writer thread finished, the `sessions` row
//! and the files closed, then what was recorded said (the stop line, what
//! is incomplete and why, the governor's summary, where the files are, the
//! top functions), and for `record` the command waited for.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Result, bail};

use super::attach::Live;
use super::capture::Ended;
use super::drain::Drained;
use super::plan::{Planned, summary_name};
use super::sink::SessionSink;
use super::{SessionConfig, SessionOutcome, human_bytes};
use crate::capture::TotalRecord;
use crate::capture::correlator::CorrelatorCounts;
use crate::capture::ring::RingReader;
use crate::governor::Governor;
use crate::governor::estimate::{CountEstimate, Method};
use crate::probe::plan::Plan;
use crate::status::{loss_pct, si};
use crate::storage::SessionRow;
use crate::storage::upload::Uploader;
use crate::summary::{
    CallStats, SortBy, explain_count, format_count, format_duration_ns, render_top,
};
use crate::target::GatedChild;

/// Finishes the files (the error that stopped the writer, if any, is the
/// session's error), prints the end-of-run messages and tables, and waits
/// for a command still running.
pub(super) fn write_and_report(
    cfg: &SessionConfig,
    planned: &Planned,
    live: Live,
    ended: Ended,
    drained: Drained,
    stop: &AtomicBool,
) -> Result<SessionOutcome> {
    let Drained {
        end_ns,
        detach_time,
        mean_cpu_pct,
        samples,
    } = drained;
    let Live {
        clock,
        session_id,
        pid,
        mut child,
        governor,
        reader,
        correlator,
        writer,
        late_plans,
        late_files,
        cost,
        live: live_server,
        ..
    } = live;
    let stop_reason = ended.reason;

    let (
        SessionSink {
            store,
            uploader,
            stats,
            gauges: _,
            hot: _,
        },
        written,
    ) = writer.finish();
    // Every call is in the files now: live queries end with the socket.
    drop(live_server);
    let counts = correlator.counts();
    let lost = reader.lost_total();
    let estimates = counts_of(planned, &late_plans, governor.as_ref(), &stats, lost);
    // What the probes cost the target, measured; and what was predicted.
    let exited = child.as_ref().and_then(|c| c.user_sys_ns());
    let measured = cost.measured(exited, counts.events);
    let (predicted_full, predicted_full_at_least, predicted) = match &governor {
        Some(g) => {
            let p = g.final_prediction(&estimates);
            (p.full_pct, p.full_at_least, p.done_pct)
        }
        // Every call recorded: the prediction of full recording is what
        // was measured.
        None => (
            measured.map(|m| m.pct),
            measured.is_some_and(|m| m.at_least),
            measured.map(|m| m.pct),
        ),
    };
    let totals: Vec<TotalRecord> = estimates.iter().map(|e| total_row(e, &stats)).collect();
    let all_exact = estimates.iter().all(|e| e.exact);
    let session_calls: Option<u64> = estimates.iter().map(|e| e.calls).sum();
    let session_row = SessionRow {
        host: crate::utc::hostname(),
        boot_id: crate::utc::boot_id(),
        pid,
        command: planned.command_line.clone(),
        start_ns: clock.start_epoch_ns,
        end_ns,
        version: env!("CARGO_PKG_VERSION").to_string(),
        clock_offset_ns: clock.offset_ns,
        utc_offset_ns: planned.utc.offset_ns,
        // The kernel's clock to realtime, then realtime to UTC.
        utc_uncertainty_ns: planned.utc.uncertainty_ns.map(|u| u + clock.bracket_ns),
        clock_sync: planned.utc.source.clone(),
        events: counts.events,
        calls: session_calls,
        calls_exact: all_exact,
        calls_recorded: stats.total_calls(),
        lost,
        max_overhead_pct: cfg.max_overhead,
        predicted_full_pct: predicted_full,
        predicted_full_at_least,
        predicted_pct: predicted,
        measured_pct: measured.filter(|m| !m.at_least).map(|m| m.pct),
        measured_low_pct: measured.map(|m| m.low_pct),
        measured_high_pct: measured.and_then(|m| m.high_pct),
    };
    let out_dir = store.config().out_dir.clone();
    let dest = match &uploader {
        Some(u) => u.remote().url.to_string(),
        None => out_dir.display().to_string(),
    };
    let finished = store.finish(&session_row, &totals);
    // The uploads go on until the files are all sent (or the wait is
    // over), whatever else failed: nothing written is left unsaid.
    let uploads = uploader.map(|u| finish_uploads(u, cfg));
    if let Err(e) = written {
        bail!(
            "recording stopped: {e:#} (every segment finished before this is readable in {dest})"
        );
    }
    let summary = finished?;

    let elapsed = ended.started.elapsed();
    let calls_text = if all_exact {
        format!("{} calls", stats.total_calls())
    } else if session_calls.is_some() && lost == 0 {
        format!(
            "≈{} calls ({} recorded)",
            si(session_calls.unwrap_or(0) as f64),
            stats.total_calls()
        )
    } else {
        let low: u64 = estimates.iter().map(|e| e.low).sum();
        format!(
            "≥{} calls ({} recorded)",
            si(low as f64),
            stats.total_calls()
        )
    };
    eprintln!(
        "scope: stopped: {stop_reason}. {calls_text}, {} events, {} lost{} in {}; agent cpu {:.0}%",
        counts.events,
        lost,
        if lost > 0 {
            format!(
                " ({:.2}% of events; enlarge --ring-size)",
                loss_pct(counts.events, lost)
            )
        } else {
            String::new()
        },
        format_duration_ns(elapsed.as_nanos() as u64),
        mean_cpu_pct
    );
    if governor.is_none()
        && matches!(cfg.target, super::Target::Record { .. })
        && let Some(line) = cost.final_line(exited, counts.events)
    {
        eprintln!("scope: {line}");
    }
    // Per module, the patterns (a hook's functions among them) that never
    // found it: a library never loaded, or linked in statically.
    let mut unplaced: Vec<(String, Vec<String>)> = Vec::new();
    for p in planned.pending.never_matched() {
        let module = p.module.clone().unwrap_or_default();
        let text = p.to_string();
        let function = text
            .strip_prefix(&format!("{module}:"))
            .unwrap_or(&text)
            .to_string();
        match unplaced.iter_mut().find(|(m, _)| *m == module) {
            Some((_, fs)) => fs.push(function),
            None => unplaced.push((module, vec![function])),
        }
    }
    for (module, functions) in unplaced {
        eprintln!(
            "scope: warning: no module matched '{module}' while recording: {} not probed (a library never loaded, or linked in statically)",
            functions.join(", ")
        );
    }
    report_incomplete(&counts, &reader);
    if let Some(g) = &governor {
        report_governor(g);
    }
    if counts.migrated > 0 {
        eprintln!(
            "scope: {} Go calls returned on another thread than they entered on (paired per goroutine)",
            counts.migrated
        );
    }
    let sample_files = samples.as_ref().map_or(&[][..], |s| &s.files[..]);
    if let Some(s) = &samples {
        let e = s.errors;
        let without = e.collisions + e.no_stack;
        eprintln!(
            "scope: samples: {} on-CPU samples of pid {pid} at {} Hz{}{}{}",
            s.samples,
            crate::sample::SAMPLE_HZ,
            if without > 0 {
                format!(
                    ", {without} without a stack ({} stack-map collisions)",
                    e.collisions
                )
            } else {
                String::new()
            },
            if e.lost > 0 {
                format!(", {} lost (ring full)", e.lost)
            } else {
                String::new()
            },
            if s.samples >= 20 && s.median_depth <= 2 {
                "; stacks are shallow: the target seems built without frame pointers"
            } else {
                ""
            }
        );
    }
    eprintln!(
        "scope: wrote {} files ({}) to {dest} (session {session_id}); detached in {}",
        summary.files.len() + late_files.len() + sample_files.len(),
        human_bytes(
            summary.bytes
                + late_files.iter().map(|f| f.1).sum::<u64>()
                + sample_files.iter().map(|f| f.1).sum::<u64>()
        ),
        format_duration_ns(detach_time.as_nanos() as u64)
    );
    if let Some(line) = uploads {
        eprintln!("{line}");
    }
    if !cfg.quiet && stats.total_calls() > 0 {
        print_top(cfg, &planned.plan, &late_plans, &stats, &estimates);
    }

    let exit_code = wait_for_child(child.as_mut(), ended.exit_code, stop);
    Ok(SessionOutcome { exit_code })
}

/// `--out s3://…`: waits for the uploads (retrying for at most the
/// configured wait), and returns the line that says what was uploaded and
/// what is left where.
fn finish_uploads(uploader: Uploader, cfg: &SessionConfig) -> String {
    let wait = cfg.upload.as_ref().map_or(Duration::ZERO, |u| u.wait);
    let url = uploader.remote().url.to_string();
    let spool = uploader.spool().to_path_buf();
    let r = uploader.finish(wait);
    if r.pending.is_empty() {
        return format!(
            "scope: uploaded {} files ({}) to {url}",
            r.uploaded_files,
            human_bytes(r.uploaded_bytes)
        );
    }
    format!(
        "scope: warning: {} of {} files ({}) not uploaded to {url} after retrying for {} ({}); they are kept in {}: upload them with `scope-agent upload {} {url}`",
        r.pending.len(),
        r.pending.len() + r.uploaded_files,
        human_bytes(r.pending_bytes),
        format_duration_ns(wait.as_nanos() as u64),
        r.last_error.as_deref().unwrap_or("no error recorded"),
        spool.display(),
        spool.display()
    )
}

/// Calls marked incomplete or uncertain, and events in no call: counted,
/// never dropped silently.
fn report_incomplete(counts: &CorrelatorCounts, reader: &RingReader) {
    if counts.loss_marked > 0 {
        eprintln!(
            "scope: {} calls were open while the kernel lost events (flags & 16 in calls): their durations and nesting are uncertain",
            counts.loss_marked
        );
    }
    let marked =
        counts.entry_missing + counts.unwound + counts.return_missing + counts.no_return_probe;
    if marked > 0 {
        eprintln!(
            "scope: {marked} calls marked incomplete: {} already running at attach, {} still running at the end, {} unwound, {} beyond the kernel's 64 nested return probes",
            counts.entry_missing, counts.return_missing, counts.unwound, counts.no_return_probe
        );
    }
    // Events read but in no row: say how many, never drop them silently.
    let unused = counts.before_start + counts.after_end + counts.unknown_kind + reader.malformed();
    if unused > 0 {
        eprintln!(
            "scope: {unused} events read but not in any call: {} before recording started (while links attached), {} after recording ended (while links closed), {} of an unknown kind, {} too short for their kind",
            counts.before_start,
            counts.after_end,
            counts.unknown_kind,
            reader.malformed()
        );
    }
    if counts.window_edge > 0 {
        eprintln!(
            "scope: {} events of sampled functions fell on the edges of their sampling windows (while links were attached or detached) and are not in calls",
            counts.window_edge
        );
    }
    if counts.markers > 0 {
        eprintln!(
            "scope: USDT: {} probe hits recorded in `markers` (their probes in `usdt_probes`)",
            counts.markers
        );
    }
    if counts.sched_events > 0 {
        let lost = reader.sched_lost();
        eprintln!(
            "scope: scheduler: the target's threads left their CPUs {} times ({} blocked, {} preempted; {} events{}): rows of `offcpu`, and each call's oncpu_ns/offcpu_ns (--no-sched turns this off)",
            counts.offcpu_blocked + counts.offcpu_preempted,
            counts.offcpu_blocked,
            counts.offcpu_preempted,
            counts.sched_events,
            if lost > 0 {
                format!(
                    ", {lost} lost to a full ring: the intervals they ended or began are missing, so some offcpu_ns are short"
                )
            } else {
                String::new()
            }
        );
    }
    if counts.window_cut > 0 {
        eprintln!(
            "scope: {} calls of sampled functions were open when their sampling window closed (flags & 64 in calls; not a loss)",
            counts.window_cut
        );
    }
}

/// The governor's summary line.
fn report_governor(g: &Governor) {
    let sampled = g.sampled_count();
    eprintln!(
        "scope: governor (budget {}%): {} demoted, {} promoted, {} backpressure step{}; {} function{} sampled at the end{}{}",
        g.budget_pct(),
        g.demotions,
        g.promotions,
        g.backpressure,
        if g.backpressure == 1 { "" } else { "s" },
        sampled,
        if sampled == 1 { "" } else { "s" },
        if g.demotions > 0 {
            "; their counts are estimates (≈ below; intervals in the totals table)"
        } else {
            ""
        },
        g.status()
            .map(|s| format!(
                "; predicted slowdown {:.1}%{}",
                s.predicted_pct,
                s.measured_pct
                    .map(|m| format!(", {m:.1}% in the last second"))
                    .unwrap_or_default()
            ))
            .unwrap_or_default()
    );
}

/// Every probed function's count: from the governor's ledger when it ran
/// (sampled functions estimated), else the calls recorded (exact unless
/// events were lost).
fn counts_of(
    planned: &Planned,
    late_plans: &[Plan],
    governor: Option<&Governor>,
    stats: &CallStats,
    lost: u64,
) -> Vec<CountEstimate> {
    let ids: Vec<u32> = std::iter::once(&planned.plan)
        .chain(late_plans)
        .flat_map(Plan::functions)
        .map(|(_, f)| f.function_id)
        .collect();
    match governor {
        Some(g) => g.estimates(&ids, lost),
        None => ids
            .iter()
            .map(|&id| {
                let (calls, _, _) = stats.function(id);
                CountEstimate {
                    function_id: id,
                    recorded: calls,
                    calls: Some(calls),
                    exact: lost == 0,
                    low: calls,
                    high: Some(calls + lost),
                    method: Method::Recorded,
                }
            })
            .collect(),
    }
}

/// A `totals` row: the count, and the recorded times scaled like it.
fn total_row(e: &CountEstimate, stats: &CallStats) -> TotalRecord {
    let (_, total_ns, self_ns) = stats.function(e.function_id);
    let scale = |ns: u64| match e.calls {
        Some(c) if e.recorded > 0 => {
            Some((ns as f64 * c as f64 / e.recorded as f64).round() as u64)
        }
        Some(_) => Some(0),
        None => None,
    };
    TotalRecord {
        function_id: e.function_id,
        calls: e.calls,
        exact: e.exact,
        calls_low: e.low,
        calls_high: e.high,
        calls_recorded: e.recorded,
        method: e.method.as_str(),
        basis_function_id: match e.method {
            Method::Caller(c) => Some(c),
            _ => None,
        },
        total_ns: scale(total_ns),
        self_ns: scale(self_ns),
    }
}

/// The top functions by total and by self time (sampled functions ranked
/// and shown by their estimates), then why each count shown that is not
/// exact is not.
fn print_top(
    cfg: &SessionConfig,
    plan: &Plan,
    late_plans: &[Plan],
    stats: &CallStats,
    estimates: &[CountEstimate],
) {
    let names: std::collections::HashMap<u32, String> = std::iter::once(plan)
        .chain(late_plans)
        .flat_map(Plan::functions)
        .map(|(_, f)| (f.function_id, summary_name(f)))
        .collect();
    let name_of = |id: u32| names.get(&id).cloned().unwrap_or_else(|| format!("#{id}"));
    let by_id: std::collections::HashMap<u32, &CountEstimate> =
        estimates.iter().map(|e| (e.function_id, e)).collect();
    let count_of = |id: u32| by_id.get(&id).map(|e| (*e).clone());
    let scale = |id: u32| match by_id.get(&id) {
        Some(e) if e.recorded > 0 => e.calls.unwrap_or(e.low) as f64 / e.recorded as f64,
        _ => 1.0,
    };
    let by_total = stats.top_scaled(cfg.top, SortBy::Total, &scale);
    let by_self = stats.top_scaled(cfg.top, SortBy::SelfTime, &scale);
    eprintln!("\ntop functions by total time:");
    eprint!("{}", render_top(&by_total, &name_of, &count_of));
    eprintln!("\ntop functions by self time:");
    eprint!("{}", render_top(&by_self, &name_of, &count_of));
    let mut shown: Vec<u32> = by_total
        .iter()
        .chain(&by_self)
        .map(|r| r.function_id)
        .collect();
    shown.sort_unstable();
    shown.dedup();
    let notes: Vec<String> = shown
        .iter()
        .filter_map(|id| by_id.get(id))
        .filter_map(|e| {
            explain_count(e, &name_of)
                .map(|why| format!("  {} {}: {why}", format_count(e), name_of(e.function_id)))
        })
        .collect();
    if !notes.is_empty() {
        eprintln!(
            "\ncounts that are not exact (≈ estimated, ≥ at least; every count in the totals table):"
        );
        for n in notes {
            eprintln!("{n}");
        }
    }
}

/// `record`, stopped before the command exited: waits for it (a second
/// Ctrl-C leaves it running); its exit code, 130 if it is left running.
fn wait_for_child(
    child: Option<&mut GatedChild>,
    exit_code: Option<i32>,
    stop: &AtomicBool,
) -> Option<i32> {
    let mut exit_code = exit_code;
    if let Some(c) = child
        && exit_code.is_none()
    {
        if c.try_wait().is_none() {
            eprintln!(
                "scope: recording stopped; waiting for pid {} to exit (Ctrl-C again to leave it running)",
                c.pid
            );
            stop.store(false, Ordering::Relaxed);
            while c.try_wait().is_none() && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        exit_code = Some(c.try_wait().unwrap_or(130));
    }
    exit_code
}
