//! The end-of-run summary: per-function call counts, total and self time,
//! and duration percentiles, kept in memory while recording.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use rustc_hash::FxHashMap;

use crate::capture::{CallRecord, EventSink, LossRecord};
use crate::governor::estimate::{CountEstimate, Method};

/// Significant figures kept by the duration histograms.
const SIGFIGS: u8 = 3;

/// Longest function name shown by [`render_top`]; longer names are cut.
const MAX_NAME_CHARS: usize = 60;

/// What [`CallStats::top`] ranks by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortBy {
    /// Sum of call durations (children included).
    Total,
    /// Sum of self times (children excluded).
    SelfTime,
}

/// Aggregates of one function, as [`CallStats::top`] reports them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionStats {
    /// The function, as in the `functions` table.
    pub function_id: u32,
    /// Calls recorded, including those of unknown duration.
    pub calls: u64,
    /// Sum of the known durations.
    pub total_ns: u64,
    /// Sum of the known self times.
    pub self_ns: u64,
    /// Median of the known durations (0 if none).
    pub p50_ns: u64,
    /// 99th percentile of the known durations (0 if none).
    pub p99_ns: u64,
}

/// Running aggregates of one function.
struct Entry {
    calls: u64,
    total_ns: u64,
    self_ns: u64,
    durations: Histogram<u64>,
}

impl Entry {
    fn new() -> Self {
        Entry {
            calls: 0,
            total_ns: 0,
            self_ns: 0,
            // Auto-resizing, so no duration is ever out of range.
            durations: Histogram::new(SIGFIGS).expect("3 significant figures are valid"),
        }
    }
}

/// Per-function call statistics, fed call by call.
///
/// Calls of unknown duration (`duration_ns < 0`) count as calls but add
/// nothing to the times or the percentiles; likewise a negative `self_ns`.
#[derive(Default)]
pub struct CallStats {
    by_function: FxHashMap<u32, Entry>,
    total_calls: u64,
}

impl CallStats {
    /// Empty statistics.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one call.
    pub fn record(&mut self, c: &CallRecord) {
        self.total_calls += 1;
        let e = self
            .by_function
            .entry(c.function_id)
            .or_insert_with(Entry::new);
        e.calls += 1;
        if let Ok(d) = u64::try_from(c.duration_ns) {
            e.total_ns = e.total_ns.saturating_add(d);
            // `record` resizes as needed (`saturating_record` would clamp to
            // the current range instead); it fails only beyond the largest
            // trackable value (2^63), which is then clamped.
            if e.durations.record(d).is_err() {
                e.durations.saturating_record(d);
            }
        }
        if let Ok(s) = u64::try_from(c.self_ns) {
            e.self_ns = e.self_ns.saturating_add(s);
        }
    }

    /// The `n` functions with the largest total (or self) time, largest
    /// first; ties go to the lower function id.
    pub fn top(&self, n: usize, by: SortBy) -> Vec<FunctionStats> {
        self.top_scaled(n, by, &|_| 1.0)
    }

    /// Like [`top`](Self::top), ranking each function's times multiplied
    /// by `scale(function_id)` (its estimated calls per recorded call, for
    /// sampled functions); the rows keep the recorded figures.
    pub fn top_scaled(
        &self,
        n: usize,
        by: SortBy,
        scale: &dyn Fn(u32) -> f64,
    ) -> Vec<FunctionStats> {
        let key = |s: &FunctionStats| {
            let t = match by {
                SortBy::Total => s.total_ns,
                SortBy::SelfTime => s.self_ns,
            };
            (t as f64 * scale(s.function_id)) as u64
        };
        let mut rows: Vec<FunctionStats> = self
            .by_function
            .iter()
            .map(|(&function_id, e)| {
                let quantile = |q: f64| {
                    if e.durations.is_empty() {
                        0
                    } else {
                        e.durations.value_at_quantile(q)
                    }
                };
                FunctionStats {
                    function_id,
                    calls: e.calls,
                    total_ns: e.total_ns,
                    self_ns: e.self_ns,
                    p50_ns: quantile(0.5),
                    p99_ns: quantile(0.99),
                }
            })
            .collect();
        rows.sort_unstable_by(|a, b| key(b).cmp(&key(a)).then(a.function_id.cmp(&b.function_id)));
        rows.truncate(n);
        rows
    }

    /// Calls recorded, over all functions.
    pub fn total_calls(&self) -> u64 {
        self.total_calls
    }

    /// One function's recorded calls and the sums of their known
    /// durations and self times: (calls, total ns, self ns).
    pub fn function(&self, function_id: u32) -> (u64, u64, u64) {
        self.by_function
            .get(&function_id)
            .map_or((0, 0, 0), |e| (e.calls, e.total_ns, e.self_ns))
    }
}

impl EventSink for CallStats {
    fn write_calls(&mut self, calls: &[CallRecord]) -> anyhow::Result<()> {
        for c in calls {
            self.record(c);
        }
        Ok(())
    }

    fn write_losses(&mut self, _losses: &[LossRecord]) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Two sinks fed the same events: `A` first, then `B`.
///
/// Both always see every batch; if either fails, the first error (`A`'s
/// before `B`'s) is returned.
pub struct Tee<A, B>(pub A, pub B);

impl<A: EventSink, B: EventSink> EventSink for Tee<A, B> {
    fn write_calls(&mut self, calls: &[CallRecord]) -> anyhow::Result<()> {
        let a = self.0.write_calls(calls);
        let b = self.1.write_calls(calls);
        a.and(b)
    }

    fn write_losses(&mut self, losses: &[LossRecord]) -> anyhow::Result<()> {
        let a = self.0.write_losses(losses);
        let b = self.1.write_losses(losses);
        a.and(b)
    }

    fn tick(&mut self) -> anyhow::Result<()> {
        let a = self.0.tick();
        let b = self.1.tick();
        a.and(b)
    }
}

/// Renders `rows` as an aligned table with a header line
/// (`FUNCTION  CALLS  TOTAL  SELF  P50  P99`), names from `name_of` (cut to
/// 60 characters), durations via [`format_duration_ns`]. Every line ends with
/// `\n`; no rows renders as `""`.
///
/// `count_of` gives a function's count when it is not simply its recorded
/// calls (a sampled function, or events were lost): then CALLS shows it as
/// [`format_count`] does, and TOTAL and SELF are scaled like the count and
/// marked the same way (`≈`; `≥` with the recorded sums when only a lower
/// bound is known). Percentiles are those of the recorded calls.
pub fn render_top(
    rows: &[FunctionStats],
    name_of: &dyn Fn(u32) -> String,
    count_of: &dyn Fn(u32) -> Option<CountEstimate>,
) -> String {
    if rows.is_empty() {
        return String::new();
    }
    const HEADER: [&str; 6] = ["FUNCTION", "CALLS", "TOTAL", "SELF", "P50", "P99"];
    let table: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            let (calls, total, self_) = match count_of(r.function_id) {
                Some(e) if !e.exact => {
                    let times = |ns: u64| match e.calls {
                        Some(c) if e.method != Method::Recorded => {
                            format!("≈{}", format_duration_ns(scaled(ns, c, e.recorded)))
                        }
                        _ => format!("≥{}", format_duration_ns(ns)),
                    };
                    (format_count(&e), times(r.total_ns), times(r.self_ns))
                }
                _ => (
                    r.calls.to_string(),
                    format_duration_ns(r.total_ns),
                    format_duration_ns(r.self_ns),
                ),
            };
            [
                shorten(&name_of(r.function_id), MAX_NAME_CHARS),
                calls,
                total,
                self_,
                format_duration_ns(r.p50_ns),
                format_duration_ns(r.p99_ns),
            ]
        })
        .collect();
    let mut widths = HEADER.map(|h| h.chars().count());
    for row in &table {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header = HEADER.map(String::from);
    for row in std::iter::once(&header).chain(&table) {
        // The name is left-aligned, the numbers right-aligned; no trailing
        // spaces since the last column is right-aligned.
        let _ = write!(out, "{:<w$}", row[0], w = widths[0]);
        for (cell, w) in row.iter().zip(widths).skip(1) {
            let _ = write!(out, "  {cell:>w$}");
        }
        out.push('\n');
    }
    out
}

/// `ns` of `recorded` calls scaled to `calls` calls.
fn scaled(ns: u64, calls: u64, recorded: u64) -> u64 {
    if recorded == 0 {
        return 0;
    }
    (ns as f64 * calls as f64 / recorded as f64).round() as u64
}

/// A function's count for people: `54000` when exact, `≈54.0K` when
/// estimated (sampled), `≥4.32K` when only a lower bound is known (or
/// events were lost), `unknown` when nothing bounds it but what was
/// recorded and nothing was (see [`explain_count`]).
pub fn format_count(e: &CountEstimate) -> String {
    if e.exact {
        return e.calls.unwrap_or(e.recorded).to_string();
    }
    match (e.method, e.calls) {
        (Method::Recorded, _) => format!("≥{}", e.low),
        (_, Some(c)) => format!("≈{}", three_figures_count(c)),
        (Method::Unknown, None) if e.low == 0 => "unknown".to_string(),
        (_, None) => format!("≥{}", three_figures_count(e.low)),
    }
}

/// Why a count is not exact, in words, with its interval: `None` when it
/// is exact.
pub fn explain_count(e: &CountEstimate, name_of: &dyn Fn(u32) -> String) -> Option<String> {
    if e.exact {
        return None;
    }
    let interval = match e.high {
        Some(h) => format!("95% interval {}–{}", e.low, h),
        None => format!("at least {}", e.low),
    };
    Some(match e.method {
        Method::Recorded => format!(
            "{} calls recorded; the kernel lost events, so up to {} more ({interval})",
            e.recorded,
            e.high.map_or(0, |h| h.saturating_sub(e.recorded))
        ),
        Method::Caller(c) => format!(
            "sampled: {} calls recorded in its windows; the rest estimated from its calls per call of {} ({interval})",
            e.recorded,
            name_of(c)
        ),
        Method::CpuTime => format!(
            "sampled: {} calls recorded in its windows; the rest estimated from the target's CPU time outside the probes ({interval})",
            e.recorded
        ),
        Method::LowerBound => format!(
            "sampled: {} calls recorded; its probes cost so much more than the function itself that the CPU time left over cannot bound the rest ({interval})",
            e.recorded
        ),
        Method::Unknown => format!(
            "sampled: {} calls recorded; nothing measured relates the unprobed time to them (no caller counted there, no CPU time read of it), so the rest is unknown",
            e.recorded
        ),
    })
}

/// `950`, `12.3K`, `4.56M`, `1.23G`: three significant figures.
fn three_figures_count(n: u64) -> String {
    let v = n as f64;
    for (unit, suffix) in [(1e9, "G"), (1e6, "M"), (1e3, "K")] {
        if v >= unit * 0.9995 {
            let x = v / unit;
            return if x >= 99.95 {
                format!("{x:.0}{suffix}")
            } else if x >= 9.995 {
                format!("{x:.1}{suffix}")
            } else {
                format!("{x:.2}{suffix}")
            };
        }
    }
    n.to_string()
}

/// Cuts `s` to at most `max` characters, marking the cut with `…`.
fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut cut: String = s.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// A duration for people: `0 ns`, `850 ns`, `12.3 µs`, `4.56 ms`, `1.23 s`
/// (three significant figures), then `2m 05s` from a minute and `1h 02m 05s`
/// from an hour.
pub fn format_duration_ns(ns: u64) -> String {
    const S: u64 = 1_000_000_000;
    if ns < 1_000 {
        return format!("{ns} ns");
    }
    // Below this, three figures of seconds stay under "60.0 s".
    if ns < 59_950_000_000 {
        for (unit, name) in [(1e3, "µs"), (1e6, "ms"), (1e9, "s")] {
            // Moves to the next unit when rounding reaches 1000.
            if let Some(v) = three_figures(ns as f64 / unit) {
                return format!("{v} {name}");
            }
        }
    }
    // Whole seconds, rounded.
    let secs = ns / S + u64::from(ns % S >= S / 2);
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 {
        format!("{h}h {m:02}m {s:02}s")
    } else {
        format!("{m}m {s:02}s")
    }
}

/// `x` (≥ 1) with three significant figures, or `None` if that rounds to
/// 1000 or more.
fn three_figures(x: f64) -> Option<String> {
    if x < 9.995 {
        Some(format!("{x:.2}"))
    } else if x < 99.95 {
        Some(format!("{x:.1}"))
    } else if x < 999.5 {
        Some(format!("{x:.0}"))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(function_id: u32, duration_ns: i64, self_ns: i64) -> CallRecord {
        CallRecord {
            function_id,
            duration_ns,
            self_ns,
            ..CallRecord::default()
        }
    }

    #[test]
    fn top_orders_by_total_or_self() {
        let mut s = CallStats::new();
        // f1: long total, little self; f2: the reverse; f3: unknown only.
        for _ in 0..3 {
            s.record(&call(1, 1_000, 10));
        }
        s.record(&call(2, 500, 500));
        s.record(&call(2, 600, 600));
        s.record(&call(3, -1, -1));
        assert_eq!(s.total_calls(), 6);

        let total = s.top(10, SortBy::Total);
        let ids: Vec<u32> = total.iter().map(|r| r.function_id).collect();
        assert_eq!(ids, [1, 2, 3]);
        assert_eq!(total[0].calls, 3);
        assert_eq!(total[0].total_ns, 3_000);
        assert_eq!(total[0].self_ns, 30);
        assert_eq!(
            total[2],
            FunctionStats {
                function_id: 3,
                calls: 1,
                total_ns: 0,
                self_ns: 0,
                p50_ns: 0,
                p99_ns: 0
            }
        );

        let by_self = s.top(2, SortBy::SelfTime);
        let ids: Vec<u32> = by_self.iter().map(|r| r.function_id).collect();
        assert_eq!(ids, [2, 1]);
        assert!(s.top(0, SortBy::Total).is_empty());
    }

    #[test]
    fn ties_go_to_the_lower_id() {
        let mut s = CallStats::new();
        for id in [9, 4, 7] {
            s.record(&call(id, 100, 100));
        }
        let ids: Vec<u32> = s
            .top(3, SortBy::Total)
            .iter()
            .map(|r| r.function_id)
            .collect();
        assert_eq!(ids, [4, 7, 9]);
    }

    #[test]
    fn unknown_durations_count_as_calls_only() {
        let mut s = CallStats::new();
        s.record(&call(1, 100, -1));
        s.record(&call(1, -1, -1));
        let r = &s.top(1, SortBy::Total)[0];
        assert_eq!((r.calls, r.total_ns, r.self_ns), (2, 100, 0));
        assert_eq!((r.p50_ns, r.p99_ns), (100, 100));
    }

    #[test]
    fn percentiles() {
        let mut s = CallStats::new();
        // 1..=1000 µs: p50 ≈ 500 µs, p99 ≈ 990 µs, within 3 significant figures.
        for i in 1..=1000 {
            s.record(&call(1, i * 1_000, 0));
        }
        // A huge outlier must not be out of range (auto-resize).
        s.record(&call(1, 3_600_000_000_000, 0));
        let r = &s.top(1, SortBy::Total)[0];
        let close = |got: u64, want: u64| got.abs_diff(want) * 1000 <= want;
        assert!(close(r.p50_ns, 501_000), "p50 {}", r.p50_ns);
        assert!(close(r.p99_ns, 991_000), "p99 {}", r.p99_ns);
        assert_eq!(r.calls, 1001);
        // The largest duration a CallRecord can hold is recorded too.
        s.record(&call(2, i64::MAX, 0));
        let r = s.top(2, SortBy::Total).remove(0);
        assert_eq!(r.function_id, 2);
        assert!(close(r.p99_ns, i64::MAX as u64), "p99 {}", r.p99_ns);
    }

    #[test]
    fn durations_format() {
        let cases = [
            (0, "0 ns"),
            (850, "850 ns"),
            (999, "999 ns"),
            (1_000, "1.00 µs"),
            (12_345, "12.3 µs"),
            (999_499, "999 µs"),
            (999_500, "1.00 ms"),
            (999_999, "1.00 ms"),
            (4_560_000, "4.56 ms"),
            (123_456_789, "123 ms"),
            (1_234_000_000, "1.23 s"),
            (59_900_000_000, "59.9 s"),
            (59_950_000_000, "1m 00s"),
            (60_000_000_000, "1m 00s"),
            (125_000_000_000, "2m 05s"),
            (125_600_000_000, "2m 06s"),
            (3_725_000_000_000, "1h 02m 05s"),
            (u64::MAX, "5124095h 34m 34s"),
        ];
        for (ns, want) in cases {
            assert_eq!(format_duration_ns(ns), want, "{ns}");
        }
    }

    #[test]
    fn render_top_aligns_columns() {
        let rows = vec![
            FunctionStats {
                function_id: 1,
                calls: 12_345,
                total_ns: 4_560_000,
                self_ns: 850,
                p50_ns: 12_300,
                p99_ns: 125_000_000_000,
            },
            FunctionStats {
                function_id: 2,
                calls: 7,
                total_ns: 0,
                self_ns: 0,
                p50_ns: 0,
                p99_ns: 0,
            },
        ];
        let name_of = |id: u32| {
            if id == 1 {
                "main".to_string()
            } else {
                "a_longer_name".to_string()
            }
        };
        let text = render_top(&rows, &name_of, &|_| None);
        let want = "\
FUNCTION       CALLS    TOTAL    SELF      P50     P99
main           12345  4.56 ms  850 ns  12.3 µs  2m 05s
a_longer_name      7     0 ns    0 ns     0 ns    0 ns
";
        assert_eq!(text, want);
        // Same width in characters on every line.
        let widths: Vec<usize> = text.lines().map(|l| l.chars().count()).collect();
        assert!(widths.windows(2).all(|w| w[0] == w[1]), "{widths:?}");
        assert_eq!(render_top(&[], &name_of, &|_| None), "");
    }

    fn est(
        calls: Option<u64>,
        recorded: u64,
        low: u64,
        high: Option<u64>,
        method: Method,
    ) -> CountEstimate {
        CountEstimate {
            function_id: 1,
            recorded,
            calls,
            exact: method == Method::Recorded && calls == high,
            low,
            high,
            method,
        }
    }

    #[test]
    fn counts_are_exact_or_marked() {
        let exact = est(Some(54_000), 54_000, 54_000, Some(54_000), Method::Recorded);
        assert_eq!(format_count(&exact), "54000");
        assert_eq!(explain_count(&exact, &|_| String::new()), None);
        let sampled = est(Some(53_870), 3_915, 50_000, Some(58_000), Method::Caller(2));
        assert_eq!(format_count(&sampled), "≈53.9K");
        let why = explain_count(&sampled, &|id| format!("f{id}")).expect("explained");
        assert!(
            why.contains("per call of f2") && why.contains("50000–58000"),
            "{why}"
        );
        let cpu = est(Some(999_700), 10, 0, Some(2_000_000), Method::CpuTime);
        assert_eq!(format_count(&cpu), "≈1.00M");
        let bound = est(None, 4_215, 43_210, None, Method::LowerBound);
        assert_eq!(format_count(&bound), "≥43.2K");
        assert!(
            explain_count(&bound, &|_| String::new())
                .expect("why")
                .contains("at least 43210")
        );
        let unknown = est(None, 0, 0, None, Method::Unknown);
        assert_eq!(format_count(&unknown), "unknown");
        // Events lost: the recorded calls, and at most the lost events more.
        let lossy = est(Some(700), 700, 700, Some(750), Method::Recorded);
        assert_eq!(format_count(&lossy), "≥700");
        assert!(
            explain_count(&lossy, &|_| String::new())
                .expect("why")
                .contains("up to 50 more")
        );
    }

    #[test]
    fn render_top_marks_estimated_rows_and_scales_their_times() {
        let rows = vec![FunctionStats {
            function_id: 1,
            calls: 100,
            total_ns: 1_000_000,
            self_ns: 500_000,
            p50_ns: 10_000,
            p99_ns: 20_000,
        }];
        let count = |_| Some(est(Some(1000), 100, 900, Some(1100), Method::CpuTime));
        let text = render_top(&rows, &|_| "hot".to_string(), &count);
        let line = text.lines().nth(1).expect("row");
        assert_eq!(
            line,
            "hot       ≈1.00K  ≈10.0 ms  ≈5.00 ms  10.0 µs  20.0 µs"
        );
        let count = |_| Some(est(None, 100, 4000, None, Method::LowerBound));
        let text = render_top(&rows, &|_| "hot".to_string(), &count);
        let line = text.lines().nth(1).expect("row");
        assert_eq!(
            line,
            "hot       ≥4.00K  ≥1.00 ms  ≥500 µs  10.0 µs  20.0 µs"
        );
    }

    #[test]
    fn render_top_cuts_long_names() {
        let rows = [FunctionStats {
            function_id: 1,
            calls: 1,
            total_ns: 1,
            self_ns: 1,
            p50_ns: 1,
            p99_ns: 1,
        }];
        let text = render_top(&rows, &|_| "x".repeat(200), &|_| None);
        let line = text.lines().nth(1).expect("row");
        assert!(
            line.starts_with(&format!("{}…  ", "x".repeat(MAX_NAME_CHARS - 1))),
            "{line}"
        );
    }

    /// Records what it sees, and fails on demand.
    #[derive(Default)]
    struct Probe {
        calls: usize,
        losses: usize,
        ticks: usize,
        fail: bool,
    }

    impl EventSink for Probe {
        fn write_calls(&mut self, calls: &[CallRecord]) -> anyhow::Result<()> {
            self.calls += calls.len();
            if self.fail {
                anyhow::bail!("probe failed");
            }
            Ok(())
        }
        fn write_losses(&mut self, losses: &[LossRecord]) -> anyhow::Result<()> {
            self.losses += losses.len();
            Ok(())
        }
        fn tick(&mut self) -> anyhow::Result<()> {
            self.ticks += 1;
            Ok(())
        }
    }

    #[test]
    fn tee_forwards_to_both() {
        let mut tee = Tee(Probe::default(), CallStats::new());
        tee.write_calls(&[call(1, 5, 5), call(2, 5, 5)])
            .expect("calls");
        tee.write_losses(&[LossRecord::default()]).expect("losses");
        tee.tick().expect("tick");
        let Tee(probe, stats) = tee;
        assert_eq!((probe.calls, probe.losses, probe.ticks), (2, 1, 1));
        assert_eq!(stats.total_calls(), 2);

        // A failing first sink does not starve the second.
        let mut tee = Tee(
            Probe {
                fail: true,
                ..Probe::default()
            },
            Probe::default(),
        );
        let err = tee.write_calls(&[call(1, 5, 5)]).expect_err("fails");
        assert_eq!(err.to_string(), "probe failed");
        assert_eq!(tee.1.calls, 1);
    }

    #[test]
    fn sinks_are_send() {
        fn check<T: Send + 'static>() {}
        check::<CallStats>();
        check::<Tee<CallStats, CallStats>>();
    }
}
