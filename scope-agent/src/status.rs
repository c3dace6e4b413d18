//! The agent watching itself while it records: a live status line on a
//! terminal (rewritten in place about four times a second), plain periodic
//! lines when stderr is not a terminal, and one [`MetricsRecord`] a second
//! for the `agent_metrics` table.
//!
//! Every figure comes from counters the pipeline keeps anyway (events read,
//! calls produced, kernel losses, the ring's positions, the writer's gauges)
//! and `getrusage` for the agent's CPU time, so watching costs nothing per
//! event.

use std::io::{IsTerminal as _, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::capture::MetricsRecord;
use crate::governor::GovernorStatus;

/// How often the live line is rewritten on a terminal.
const LIVE_EVERY: Duration = Duration::from_millis(250);
/// How often an `agent_metrics` row is taken.
pub const METRICS_EVERY: Duration = Duration::from_secs(1);
/// Ring fill (percent) from which the status line warns.
const RING_HIGH_PCT: f64 = 50.0;

/// Figures the writer thread publishes for the status line.
#[derive(Debug, Default)]
pub struct WriterGauges {
    pub files_written: AtomicU64,
    pub rows_buffered: AtomicU64,
    /// `--out s3://…`: files uploaded, and finished files not uploaded yet.
    pub uploaded: AtomicU64,
    pub uploads_pending: AtomicU64,
}

/// Everything the capture loop knows at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub struct Snapshot {
    pub events: u64,
    pub calls: u64,
    pub lost: u64,
    pub ring_fill_pct: Option<f64>,
    /// Batches waiting for the writer, and the channel's capacity.
    pub backlog: (usize, usize),
    /// The governor's state, once it has decided.
    pub governor: Option<GovernorStatus>,
}

/// Where the status goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusMode {
    /// Rewrite one line in place (stderr is a terminal).
    Live,
    /// A plain line every interval (stderr is a file or a pipe).
    Periodic(Duration),
    /// Nothing (`-q`).
    Off,
}

impl StatusMode {
    pub fn choose(quiet: bool, interval: Duration) -> Self {
        if quiet {
            StatusMode::Off
        } else if std::io::stderr().is_terminal() {
            StatusMode::Live
        } else {
            StatusMode::Periodic(interval)
        }
    }
}

/// Rates over the time since the previous sample.
struct Meter {
    at: Instant,
    events: u64,
    cpu_ns: u64,
    /// Highest ring fill seen since the previous sample.
    fill_max: Option<f64>,
}

impl Meter {
    fn new(now: Instant, cpu_ns: u64) -> Self {
        Self {
            at: now,
            events: 0,
            cpu_ns,
            fill_max: None,
        }
    }

    fn see_fill(&mut self, fill: Option<f64>) {
        if let Some(f) = fill {
            self.fill_max = Some(self.fill_max.map_or(f, |m| m.max(f)));
        }
    }

    /// (events per second, agent CPU percent, highest fill) since the last
    /// call; starts the next interval.
    fn sample(&mut self, now: Instant, events: u64, cpu_ns: u64) -> (f64, f64, Option<f64>) {
        let secs = now.duration_since(self.at).as_secs_f64().max(1e-3);
        let eps = events.saturating_sub(self.events) as f64 / secs;
        let cpu = cpu_ns.saturating_sub(self.cpu_ns) as f64 / 1e9 / secs * 100.0;
        let fill = self.fill_max.take();
        self.at = now;
        self.events = events;
        self.cpu_ns = cpu_ns;
        (eps, cpu, fill)
    }
}

/// The status line and the metrics rows of one session.
pub struct StatusReporter {
    mode: StatusMode,
    started: Instant,
    gauges: Arc<WriterGauges>,
    display: Meter,
    metrics: Meter,
    /// Something is on the live line that must be cleared before other output.
    line_shown: bool,
    /// The agent's CPU time when recording started.
    start_cpu_ns: u64,
}

impl StatusReporter {
    pub fn new(mode: StatusMode, gauges: Arc<WriterGauges>) -> Self {
        let now = Instant::now();
        let cpu = agent_cpu_ns();
        Self {
            mode,
            started: now,
            gauges,
            display: Meter::new(now, cpu),
            metrics: Meter::new(now, cpu),
            line_shown: false,
            start_cpu_ns: cpu,
        }
    }

    /// Records the ring fill seen by one drain.
    pub fn see_fill(&mut self, fill: Option<f64>) {
        self.display.see_fill(fill);
        self.metrics.see_fill(fill);
    }

    /// Prints the status line if it is due.
    pub fn maybe_print(&mut self, snap: &Snapshot) {
        let every = match self.mode {
            StatusMode::Off => return,
            StatusMode::Live => LIVE_EVERY,
            StatusMode::Periodic(d) => d,
        };
        let now = Instant::now();
        if now.duration_since(self.display.at) < every {
            return;
        }
        let (eps, cpu, fill) = self.display.sample(now, snap.events, agent_cpu_ns());
        let line = self.render(snap, eps, cpu, fill, now);
        let mut err = std::io::stderr().lock();
        if self.mode == StatusMode::Live {
            let _ = write!(err, "\r\x1b[2K{line}");
            self.line_shown = true;
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }

    /// A metrics row if one is due (every [`METRICS_EVERY`]), or `force`.
    pub fn metrics_due(
        &mut self,
        snap: &Snapshot,
        now_epoch_ns: i64,
        force: bool,
    ) -> Option<MetricsRecord> {
        let now = Instant::now();
        if !force && now.duration_since(self.metrics.at) < METRICS_EVERY {
            return None;
        }
        let (events_per_s, agent_cpu_pct, ring_fill_pct) =
            self.metrics.sample(now, snap.events, agent_cpu_ns());
        Some(MetricsRecord {
            ts_ns: now_epoch_ns,
            events: snap.events,
            call_rows: snap.calls,
            lost: snap.lost,
            events_per_s,
            ring_fill_pct,
            agent_cpu_pct,
            files_written: self.gauges.files_written.load(Ordering::Relaxed),
            rows_buffered: self.gauges.rows_buffered.load(Ordering::Relaxed),
        })
    }

    /// The agent's mean CPU use since the session started, percent of one CPU.
    pub fn mean_cpu_pct(&self) -> f64 {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        agent_cpu_ns().saturating_sub(self.start_cpu_ns) as f64 / 1e9 / secs * 100.0
    }

    /// Clears the live line so the next message starts on a clean line.
    pub fn clear(&mut self) {
        if self.line_shown {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
            self.line_shown = false;
        }
    }

    fn render(
        &self,
        snap: &Snapshot,
        eps: f64,
        cpu: f64,
        fill: Option<f64>,
        now: Instant,
    ) -> String {
        let elapsed = now.duration_since(self.started);
        let mut line = format!(
            "scope: {:.1}s, {} events/s, {}, {} lost{}, ring {}, agent cpu {:.0}%, {} files",
            elapsed.as_secs_f64(),
            si(eps),
            calls_text(snap),
            snap.lost,
            if snap.lost > 0 {
                format!(" ({:.2}%)", loss_pct(snap.events, snap.lost))
            } else {
                String::new()
            },
            fill.map_or_else(|| "?".to_string(), |f| format!("{f:.0}%")),
            cpu,
            self.gauges.files_written.load(Ordering::Relaxed),
        );
        if let Some(g) = snap.governor {
            if g.sampled > 0 {
                line.push_str(&format!(", {} fn sampled 1/{}", g.sampled, g.n));
            }
            line.push_str(&format!(", predicted slowdown {:.1}%", g.predicted_pct));
            if let Some(m) = g.measured_pct {
                line.push_str(&format!(" (last second {m:.1}%)"));
            }
        }
        let pending = self.gauges.uploads_pending.load(Ordering::Relaxed);
        if pending > 0 {
            line.push_str(&format!(
                ", {} uploaded, {pending} waiting to upload",
                self.gauges.uploaded.load(Ordering::Relaxed)
            ));
        }
        if let Some(why) = behind(snap, fill) {
            line.push_str("; ");
            line.push_str(&why);
        }
        line
    }
}

/// The session's calls for the status line: the calls recorded while every
/// call is; `≈1.23M calls (12.3K recorded)` while some function is sampled
/// (`≥…` where only a lower bound is known).
fn calls_text(snap: &Snapshot) -> String {
    match snap.governor.and_then(|g| g.calls) {
        Some(c) if !c.exact => format!(
            "{}{} calls ({} recorded)",
            if c.at_least { "≥" } else { "≈" },
            si(c.calls as f64),
            si(c.recorded as f64)
        ),
        _ => format!("{} calls", snap.calls),
    }
}

/// Why the agent may be falling behind, if it is: the writer's queue is at
/// least half full (the reader will block on it next), or the ring is at
/// least half full (the kernel will drop events next).
pub fn behind(snap: &Snapshot, fill: Option<f64>) -> Option<String> {
    let (queued, cap) = snap.backlog;
    let mut why = Vec::new();
    if cap > 0 && queued * 2 >= cap {
        why.push(format!("writer behind ({queued}/{cap} batches queued)"));
    }
    if let Some(f) = fill
        && f >= RING_HIGH_PCT
    {
        why.push(format!(
            "ring {f:.0}% full: events are dropped when it fills"
        ));
    }
    (!why.is_empty()).then(|| why.join(", "))
}

/// Lost events as a percent of all events the kernel tried to write.
pub fn loss_pct(events: u64, lost: u64) -> f64 {
    100.0 * lost as f64 / (events + lost).max(1) as f64
}

/// CPU time (user + system) of the whole agent process, all threads.
pub fn agent_cpu_ns() -> u64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one rusage into the buffer we own.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) };
    if rc != 0 {
        return 0;
    }
    // SAFETY: getrusage succeeded, so the struct is initialised.
    let ru = unsafe { ru.assume_init() };
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// `950`, `12.3K`, `4.56M`.
pub fn si(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}K", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// The status line of a long read command (`analyze` on a large store):
/// the step being run, rewritten in place while stderr is a terminal and
/// cleared at the end. With `SCOPE_STEP_TIMES` set, each finished step's
/// seconds are printed on a line of their own instead (what BENCHMARKS.md
/// breaks `analyze` down by).
pub struct Steps {
    command: &'static str,
    live: bool,
    times: bool,
    current: std::cell::RefCell<Option<(String, Instant)>>,
}

impl Steps {
    pub fn new(command: &'static str) -> Self {
        let times = std::env::var_os("SCOPE_STEP_TIMES").is_some_and(|v| !v.is_empty());
        Steps {
            command,
            live: !times && std::io::stderr().is_terminal(),
            times,
            current: std::cell::RefCell::new(None),
        }
    }

    /// Step `name` starts (the previous one has ended).
    pub fn step(&self, name: &str) {
        self.finish_current();
        if self.live {
            let mut e = std::io::stderr().lock();
            let _ = write!(e, "\r\x1b[K{}: {name}…", self.command);
            let _ = e.flush();
        }
        *self.current.borrow_mut() = Some((name.to_string(), Instant::now()));
    }

    fn finish_current(&self) {
        if let Some((name, at)) = self.current.borrow_mut().take()
            && self.times
        {
            eprintln!(
                "{}: {name}: {:.2} s",
                self.command,
                at.elapsed().as_secs_f64()
            );
        }
    }

    /// The last step has ended: the line is cleared.
    pub fn done(&self) {
        self.finish_current();
        if self.live {
            let mut e = std::io::stderr().lock();
            let _ = write!(e, "\r\x1b[K");
            let _ = e.flush();
        }
    }
}

impl Drop for Steps {
    fn drop(&mut self) {
        self.done();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behind_names_the_writer_and_the_ring() {
        let mut snap = Snapshot {
            backlog: (3, 64),
            ..Snapshot::default()
        };
        assert_eq!(behind(&snap, Some(10.0)), None);
        assert_eq!(behind(&snap, None), None);
        snap.backlog = (32, 64);
        assert_eq!(
            behind(&snap, Some(10.0)).as_deref(),
            Some("writer behind (32/64 batches queued)")
        );
        snap.backlog = (0, 64);
        assert_eq!(
            behind(&snap, Some(75.0)).as_deref(),
            Some("ring 75% full: events are dropped when it fills")
        );
    }

    #[test]
    fn loss_rate_counts_lost_against_everything_the_kernel_tried() {
        assert_eq!(loss_pct(0, 0), 0.0);
        assert_eq!(loss_pct(75, 25), 25.0);
        assert_eq!(loss_pct(0, 10), 100.0);
    }

    #[test]
    fn rates_are_per_second_of_the_interval() {
        let t0 = Instant::now();
        let mut m = Meter::new(t0, 0);
        m.see_fill(Some(10.0));
        m.see_fill(None);
        m.see_fill(Some(30.0));
        let (eps, cpu, fill) = m.sample(t0 + Duration::from_secs(2), 1000, 500_000_000);
        assert_eq!(eps, 500.0);
        assert_eq!(cpu, 25.0);
        assert_eq!(fill, Some(30.0));
        // The maximum starts over with the next interval.
        let (_, _, fill) = m.sample(t0 + Duration::from_secs(3), 1000, 500_000_000);
        assert_eq!(fill, None);
    }

    #[test]
    fn si_units() {
        assert_eq!(si(950.0), "950");
        assert_eq!(si(12_340.0), "12.3K");
        assert_eq!(si(4_560_000.0), "4.56M");
    }
}
