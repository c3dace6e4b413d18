//! `scope-agent plan`: which functions are worth probing, from CPU samples.
//!
//! Samples the target for a while ([`super::Sampler`]), stores them (the
//! `samples` table), ranks functions by their share of the samples (self:
//! the leaf frame; inclusive: anywhere on the stack), then counts the calls
//! of the leading candidates in the kernel for a short warm-up (the
//! governor's `scope_count` program) to predict what probing each would
//! cost: calls/s × the per-call cost measured just now (`calibrate`),
//! against the target's own time as the governor does. Functions are taken
//! greedily by sample share per predicted cost until the budget is used,
//! and written as `[[probe]] pattern = "MODULE:func"` to a plan file that
//! `record`/`attach --plan` read.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use super::symbolize::{FnKey, Stack, Symbolizer};
use super::{DepthCounter, SAMPLE_HZ, Sampler};
use crate::probe::attach::{AttachModeChoice, LoadOptions, LoadedProbes, ProbePoint, close_links};
use crate::storage::SamplesWriter;
use crate::symbols::pattern::Pattern;
use crate::time::SessionClock;

/// `scope-agent plan`'s flags, once.
#[derive(Debug, Clone)]
pub struct PlanConfig {
    pub pid: u32,
    pub duration: Duration,
    /// Percent of the target's time the plan's probes may cost.
    pub budget_pct: f64,
    pub out_dir: PathBuf,
    pub plan_out: PathBuf,
    /// How long the candidates' calls are counted.
    pub warmup: Duration,
    /// At most this many candidates are counted and shown.
    pub candidates: usize,
}

/// One function's share of the samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Share {
    pub key: FnKey,
    pub self_samples: u64,
    pub incl_samples: u64,
}

/// Self and inclusive sample counts per function over `stacks` (each
/// stack once per sample it stands for), most inclusive first. A function
/// twice on one stack (recursion) counts once there.
pub fn shares<'a>(stacks: impl IntoIterator<Item = (&'a Stack, u64)>) -> Vec<Share> {
    let mut by_key: HashMap<FnKey, (u64, u64)> = HashMap::new();
    for (stack, n) in stacks {
        if let Some(Some(leaf)) = stack.functions.first() {
            by_key.entry(*leaf).or_default().0 += n;
        }
        let mut seen: Vec<FnKey> = Vec::new();
        for key in stack.functions.iter().flatten() {
            if !seen.contains(key) {
                seen.push(*key);
                by_key.entry(*key).or_default().1 += n;
            }
        }
    }
    let mut out: Vec<Share> = by_key
        .into_iter()
        .map(|(key, (s, i))| Share {
            key,
            self_samples: s,
            incl_samples: i,
        })
        .collect();
    out.sort_by(|a, b| {
        b.incl_samples
            .cmp(&a.incl_samples)
            .then(b.self_samples.cmp(&a.self_samples))
            .then(a.key.cmp(&b.key))
    });
    out
}

/// A function the plan considered.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// `MODULE:func`.
    pub pattern: String,
    pub self_pct: f64,
    pub incl_pct: f64,
    /// From the warm-up count; `None` when it could not be counted.
    pub calls_per_s: Option<f64>,
    /// Predicted slowdown of probing it (percent); `None` when unknown.
    pub overhead_pct: Option<f64>,
    pub chosen: bool,
}

/// Takes candidates greedily by sample share per predicted cost (the
/// inclusive share; the self share when `self_only`) while their summed
/// predicted cost stays within `budget_pct`. A candidate with an unknown
/// cost is never taken, nor one not called while its calls were counted
/// (`main`, an event loop: on the stack, but probing it records nothing
/// new). Returns the predicted total.
pub fn choose(cands: &mut [Candidate], budget_pct: f64, self_only: bool) -> f64 {
    let share = |c: &Candidate| if self_only { c.self_pct } else { c.incl_pct };
    let mut order: Vec<usize> = (0..cands.len())
        .filter(|&i| {
            cands[i].overhead_pct.is_some()
                && cands[i].calls_per_s.is_some_and(|r| r > 0.0)
                && share(&cands[i]) > 0.0
        })
        .collect();
    let value = |c: &Candidate| share(c) / c.overhead_pct.unwrap_or(f64::INFINITY).max(1e-6);
    order.sort_by(|&a, &b| {
        value(&cands[b])
            .partial_cmp(&value(&cands[a]))
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.cmp(&b))
    });
    let mut used = 0.0;
    for i in order {
        let cost = cands[i].overhead_pct.unwrap_or(f64::INFINITY);
        if used + cost <= budget_pct {
            used += cost;
            cands[i].chosen = true;
        }
    }
    used
}

/// The plan file: the chosen patterns, the budget, the evidence as comments.
pub fn plan_toml(
    cands: &[Candidate],
    budget_pct: f64,
    predicted_pct: f64,
    evidence: &str,
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# scope-agent plan: functions worth probing, from on-CPU samples."
    );
    for line in evidence.lines() {
        let _ = writeln!(s, "# {line}");
    }
    let _ = writeln!(
        s,
        "# Use: scope-agent attach --pid PID --plan THIS_FILE (or record --plan THIS_FILE -- CMD)\n"
    );
    let _ = writeln!(s, "budget_pct = {budget_pct}");
    let _ = writeln!(s, "predicted_pct = {:.3}", predicted_pct);
    for c in cands.iter().filter(|c| c.chosen) {
        let _ = writeln!(
            s,
            "\n# self {:.1}%, inclusive {:.1}%, {} calls/s, predicted {:.3}%",
            c.self_pct,
            c.incl_pct,
            c.calls_per_s.map_or("?".into(), crate::status::si),
            c.overhead_pct.unwrap_or(0.0)
        );
        let _ = writeln!(s, "[[probe]]\npattern = {}", toml_string(&c.pattern));
    }
    s
}

/// A TOML basic string.
fn toml_string(v: &str) -> String {
    let mut s = String::with_capacity(v.len() + 2);
    s.push('"');
    for ch in v.chars() {
        match ch {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(s, "\\u{:04X}", c as u32);
            }
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

/// Reads a plan file's patterns (`[[probe]] pattern = "…"`).
pub fn read_plan(path: &Path) -> Result<Vec<Pattern>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("--plan {}: {e}", path.display()))?;
    parse_plan(&text).map_err(|e| format!("--plan {}: {e}", path.display()))
}

fn parse_plan(text: &str) -> Result<Vec<Pattern>, String> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        e.to_string()
            .lines()
            .next()
            .unwrap_or("not TOML")
            .to_string()
    })?;
    let Some(probes) = table.get("probe") else {
        return Ok(Vec::new());
    };
    let probes = probes
        .as_array()
        .ok_or("`probe` must be an array of tables ([[probe]])")?;
    let mut out = Vec::new();
    for (i, p) in probes.iter().enumerate() {
        let pattern = p
            .get("pattern")
            .and_then(|v| v.as_str())
            .ok_or_else(|| format!("probe {}: no `pattern = \"MODULE:func\"`", i + 1))?;
        out.push(
            pattern
                .parse::<Pattern>()
                .map_err(|e| format!("probe {}: {e}", i + 1))?,
        );
    }
    Ok(out)
}

/// Runs `scope-agent plan`.
pub fn run(cfg: &PlanConfig, stop: &AtomicBool) -> Result<()> {
    crate::session::require_root()?;
    let pid = cfg.pid;
    crate::symbols::maps::exec_ranges(pid).map_err(|e| anyhow::anyhow!("{e}"))?;
    let clock = SessionClock::now();
    let session_id = crate::time::session_id(clock.start_epoch_ns, pid, &crate::utc::hostname());
    let mut sampler = Sampler::start(pid, SAMPLE_HZ).with_context(|| {
        format!("cannot sample pid {pid} (perf events: see kernel.perf_event_paranoid)")
    })?;
    let mut sym = Symbolizer::new(pid);
    let mut rows = Vec::new();
    let tty = std::io::stderr().is_terminal();
    let started = Instant::now();
    let cpu0 = crate::governor::target_cpu_ns(pid).unwrap_or(0);
    let mut last_status = Instant::now();
    let mut gone = false;
    while started.elapsed() < cfg.duration && !stop.load(Ordering::Relaxed) {
        sampler.wait(Duration::from_millis(100));
        sampler.drain(&mut sym, &clock, &mut rows);
        if crate::session::process_gone_pub(pid) {
            gone = true;
            break;
        }
        if last_status.elapsed() >= Duration::from_millis(if tty { 250 } else { 5000 }) {
            last_status = Instant::now();
            let line = format!(
                "scope: plan: sampling pid {pid} at {SAMPLE_HZ} Hz on {} CPUs: {:.1} / {:.0} s, {} samples",
                sampler.cpus,
                started.elapsed().as_secs_f64(),
                cfg.duration.as_secs_f64(),
                rows.len()
            );
            if tty {
                eprint!("\r{line}\x1b[K");
            } else {
                eprintln!("{line}");
            }
        }
    }
    sampler.drain(&mut sym, &clock, &mut rows);
    let wall = started.elapsed();
    let cpu_ns = crate::governor::target_cpu_ns(pid)
        .unwrap_or(cpu0)
        .saturating_sub(cpu0);
    if tty {
        eprint!("\r\x1b[K");
    }
    let errors = sampler.errors();
    drop(sampler);
    if gone {
        eprintln!(
            "scope: plan: pid {pid} exited after {:.1} s",
            wall.as_secs_f64()
        );
    }
    let mut writer = SamplesWriter::new(&cfg.out_dir, &session_id)?;
    let (file, _) = writer.write(&rows)?;
    eprintln!(
        "scope: plan: {} samples of pid {pid} in {:.1} s ({:.2} CPU-s by its clock), session {session_id}: {}",
        rows.len(),
        wall.as_secs_f64(),
        cpu_ns as f64 / 1e9,
        file.display()
    );
    if errors.collisions + errors.no_stack + errors.lost > 0 {
        eprintln!(
            "scope: plan: {} samples without a stack ({} stack-map collisions, {} without a user stack), {} lost (ring full)",
            errors.collisions + errors.no_stack,
            errors.collisions,
            errors.no_stack,
            errors.lost
        );
    }
    if rows.is_empty() {
        bail!("pid {pid} was not seen on a CPU while sampling: nothing to plan (is it idle?)");
    }

    // Shares.
    let mut per_id: HashMap<i32, u64> = HashMap::new();
    for r in &rows {
        if let Some(id) = r.stack_id {
            *per_id.entry(id).or_default() += 1;
        }
    }
    let stacks: Vec<(Arc<Stack>, u64)> = per_id
        .iter()
        .filter_map(|(id, n)| Some((sym.stack(*id, || None)?, *n)))
        .collect();
    let ranked = shares(stacks.iter().map(|(s, n)| (&**s, *n)));
    let total = rows.len() as f64;
    let mut depths = DepthCounter::default();
    depths.add(&rows);
    let shallow = depths.total() >= 20 && depths.median() <= 2;
    if shallow {
        eprintln!(
            "scope: plan: stacks are shallow (median {} frames): the target seems built without frame pointers; inclusive shares are missing, self shares are right",
            depths.median()
        );
    }

    // Candidates: the leading functions by the share that is right.
    let mut picked: Vec<&Share> = ranked
        .iter()
        .filter(|s| sym.function(s.key).is_some())
        .filter(|s| {
            let f = sym.function(s.key).map(|(_, f, _, _)| f.name.as_str());
            f != Some("_start")
        })
        .collect();
    if shallow {
        picked.sort_by_key(|s| std::cmp::Reverse(s.self_samples));
    }
    picked.retain(|s| {
        (if shallow {
            s.self_samples
        } else {
            s.incl_samples
        }) as f64
            / total
            >= 0.005
    });
    picked.truncate(cfg.candidates);

    let counted = count_calls(cfg, &sym, &picked);
    let (rates, cost_note) = match counted {
        Ok((rates, note)) => (Some(rates), note),
        Err(e) => {
            eprintln!(
                "scope: plan: warning: the candidates' calls could not be counted ({e:#}): costs unknown, nothing chosen"
            );
            (None, String::new())
        }
    };
    let mut cands: Vec<Candidate> = picked
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let (module, f, _, _) = sym.function(s.key).expect("filtered above");
            // A file replaced while mapped shows as `path (deleted)`.
            let module_name = module.file_name().map_or_else(
                || module.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            let module_name = module_name
                .strip_suffix(" (deleted)")
                .unwrap_or(&module_name)
                .to_string();
            let r = rates.as_ref().map(|r| r[i]);
            Candidate {
                pattern: format!("{module_name}:{}", f.name),
                self_pct: 100.0 * s.self_samples as f64 / total,
                incl_pct: 100.0 * s.incl_samples as f64 / total,
                calls_per_s: r.map(|r| r.0),
                overhead_pct: r.map(|r| r.1),
                chosen: false,
            }
        })
        .collect();
    let predicted = choose(&mut cands, cfg.budget_pct, shallow);

    print_table(&cands);
    let chosen = cands.iter().filter(|c| c.chosen).count();
    let evidence = format!(
        "{} samples of pid {pid} at {SAMPLE_HZ} Hz over {:.1} s (session {session_id}, table samples){}\n{}\
         median stack depth {}{}\n{} of {} candidates chosen within the {}% budget, predicted {:.3}%",
        rows.len(),
        wall.as_secs_f64(),
        if errors.collisions + errors.no_stack > 0 {
            format!(", {} without a stack", errors.collisions + errors.no_stack)
        } else {
            String::new()
        },
        if cost_note.is_empty() {
            String::new()
        } else {
            format!("{cost_note}\n")
        },
        depths.median(),
        if shallow {
            " (shallow: no frame pointers? ranked by self share)"
        } else {
            ""
        },
        chosen,
        cands.len(),
        cfg.budget_pct,
        predicted
    );
    let text = plan_toml(&cands, cfg.budget_pct, predicted, &evidence);
    write_private(&cfg.plan_out, &text)?;
    println!(
        "scope: plan: {chosen} function{} within the {}% budget (predicted {:.3}%): {}",
        if chosen == 1 { "" } else { "s" },
        cfg.budget_pct,
        predicted,
        cfg.plan_out.display()
    );
    println!(
        "scope: plan: next: scope-agent attach --pid {pid} --plan {}",
        cfg.plan_out.display()
    );
    Ok(())
}

/// Counts the candidates' calls in the kernel for `cfg.warmup`: (calls/s,
/// predicted overhead %) per candidate, and a line on the cost used.
fn count_calls(
    cfg: &PlanConfig,
    sym: &Symbolizer,
    picked: &[&Share],
) -> Result<(Vec<(f64, f64)>, String)> {
    if picked.is_empty() {
        return Ok((Vec::new(), String::new()));
    }
    let pid = cfg.pid;
    let mut probes = LoadedProbes::load(
        LoadOptions {
            target_tgid: pid,
            ring_bytes: 0,
            wake_bytes: u64::MAX,
            str_cap: 0,
            count_slots: picked.len() as u32 + 1,
            task_offsets: None,
            usdt_slots: 0,
        },
        AttachModeChoice::Auto,
    )?;
    let cost = crate::governor::calibrate(&mut probes, true).map_err(|e| anyhow::anyhow!(e))?;
    let mut by_module: HashMap<PathBuf, Vec<ProbePoint>> = HashMap::new();
    for (i, s) in picked.iter().enumerate() {
        let (_, f, open, _) = sym.function(s.key).expect("symbolized");
        by_module
            .entry(open.to_path_buf())
            .or_default()
            .push(ProbePoint {
                file_offset: f.file_offset,
                cookie: i as u64 + 1,
            });
    }
    let mut links = Vec::new();
    for (path, points) in &by_module {
        links.push(probes.attach_counts(path, points, pid)?);
    }
    let cpu0 = crate::governor::target_cpu_ns(pid).unwrap_or(0);
    let started = Instant::now();
    std::thread::sleep(cfg.warmup);
    let counts = probes.read_counts();
    let wall = started.elapsed();
    let cpu_ns = crate::governor::target_cpu_ns(pid)
        .unwrap_or(cpu0)
        .saturating_sub(cpu0) as f64;
    close_links(links);
    let count = |i: usize| counts.get(i + 1).copied().unwrap_or(0) as f64;
    let total: f64 = (0..picked.len()).map(count).sum();
    let probe_ns = total * cost.entry_ns;
    let out = (0..picked.len())
        .map(|i| {
            (
                count(i) / wall.as_secs_f64().max(1e-3),
                crate::governor::overhead_pct(
                    count(i),
                    cost.full_ns,
                    cpu_ns,
                    wall.as_nanos() as f64,
                    probe_ns,
                ),
            )
        })
        .collect();
    let note = format!(
        "calls counted in the kernel for {:.2} s; probes cost {:.2} µs per recorded call here (measured just now)",
        wall.as_secs_f64(),
        cost.full_ns / 1000.0
    );
    eprintln!("scope: plan: {note}");
    Ok((out, note))
}

fn print_table(cands: &[Candidate]) {
    let mut out = std::io::stdout().lock();
    let width = cands
        .iter()
        .map(|c| c.pattern.len())
        .max()
        .unwrap_or(8)
        .clamp(8, 60);
    let _ = writeln!(
        out,
        "  {:<width$}  {:>6}  {:>6}  {:>9}  {:>9}",
        "function", "self%", "incl%", "calls/s", "overhead%"
    );
    for c in cands {
        let _ = writeln!(
            out,
            "{} {:<width$}  {:>6.1}  {:>6.1}  {:>9}  {:>9}",
            if c.chosen { "*" } else { " " },
            c.pattern,
            c.self_pct,
            c.incl_pct,
            c.calls_per_s.map_or("?".into(), crate::status::si),
            c.overhead_pct.map_or("?".into(), |o| format!("{o:.3}")),
        );
    }
}

/// Writes a file 0600 (replacing it).
fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(keys: &[Option<FnKey>]) -> Stack {
        Stack {
            addrs: vec![0; keys.len()],
            frames: Arc::from(vec![String::new(); keys.len()]),
            functions: keys.to_vec(),
            complete: true,
        }
    }

    #[test]
    fn self_and_inclusive_shares() {
        let leaf = (0, 1);
        let mid = (0, 2);
        let main = (0, 3);
        let a = stack(&[Some(leaf), Some(mid), Some(main)]);
        let b = stack(&[Some(mid), Some(main)]);
        let rec = stack(&[Some(mid), Some(mid), None, Some(main)]);
        let got = shares([(&a, 6), (&b, 3), (&rec, 1)]);
        let of = |k| got.iter().find(|s| s.key == k).unwrap();
        assert_eq!((of(leaf).self_samples, of(leaf).incl_samples), (6, 6));
        assert_eq!((of(mid).self_samples, of(mid).incl_samples), (4, 10));
        assert_eq!((of(main).self_samples, of(main).incl_samples), (0, 10));
        assert_eq!(got[0].key, mid, "ties broken by self share");
    }

    fn cand(p: &str, incl: f64, cost: Option<f64>) -> Candidate {
        Candidate {
            pattern: p.into(),
            self_pct: incl / 2.0,
            incl_pct: incl,
            calls_per_s: cost.map(|c| c * 1000.0),
            overhead_pct: cost,
            chosen: false,
        }
    }

    #[test]
    fn greedy_by_share_per_cost_within_the_budget() {
        let mut c = vec![
            cand("m:hot_and_cheap", 50.0, Some(0.5)),
            cand("m:hot_and_dear", 60.0, Some(4.8)),
            cand("m:cool_and_free", 5.0, Some(0.0001)),
            cand("m:never_called", 99.0, Some(0.0)),
            cand("m:unknown", 90.0, None),
        ];
        let used = choose(&mut c, 5.0, false);
        let chosen: Vec<&str> = c
            .iter()
            .filter(|c| c.chosen)
            .map(|c| c.pattern.as_str())
            .collect();
        assert_eq!(chosen, ["m:hot_and_cheap", "m:cool_and_free"]);
        assert!((used - 0.5001).abs() < 1e-9);
        let mut c = vec![cand("m:a", 50.0, Some(4.0)), cand("m:b", 40.0, Some(1.0))];
        choose(&mut c, 5.0, false);
        assert!(c.iter().all(|c| c.chosen));
    }

    #[test]
    fn plan_files_round_trip() {
        let mut c = vec![
            cand("burn:hot_leaf", 50.0, Some(0.5)),
            cand("libx.so:ns::f\"q", 40.0, Some(1.0)),
            cand("burn:cold", 1.0, Some(9.0)),
        ];
        let used = choose(&mut c, 5.0, false);
        let text = plan_toml(&c, 5.0, used, "evidence line 1\nline 2");
        let patterns = parse_plan(&text).unwrap();
        let raw: Vec<&str> = patterns.iter().map(|p| p.raw.as_str()).collect();
        assert_eq!(raw, ["burn:hot_leaf", "libx.so:ns::f\"q"]);
        assert!(text.contains("# evidence line 1"));
        assert!(
            parse_plan("[[probe]]\nfoo = 1\n")
                .unwrap_err()
                .contains("probe 1")
        );
        assert!(parse_plan("[[probe]\n").is_err());
        assert!(parse_plan("budget_pct = 5\n").unwrap().is_empty());
    }
}
