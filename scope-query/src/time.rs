//! Times and durations as users type and read them.
//!
//! A point in time (`--at`, `--from`, `--to`) is either relative to the
//! session's start (`+1.5s`, `+250ms`, `+2m`, `+1500000ns`) or absolute:
//! an RFC 3339 timestamp (`2026-11-26T16:45:22.5Z`, an offset or `Z`
//! required) or Unix-epoch nanoseconds (`1795000000000000000`), the unit
//! of every `*_ns` column.

use anyhow::{Result, anyhow, bail};

/// A point in time as given, before it is tied to a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeArg {
    /// Nanoseconds after the session's start.
    Relative(i64),
    /// Unix-epoch nanoseconds.
    Absolute(i64),
}

impl TimeArg {
    /// Epoch nanoseconds, given the session's start.
    pub fn resolve(self, session_start_ns: i64) -> i64 {
        match self {
            TimeArg::Relative(d) => session_start_ns.saturating_add(d),
            TimeArg::Absolute(t) => t,
        }
    }
}

impl std::str::FromStr for TimeArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_time(s).map_err(|e| e.to_string())
    }
}

/// Parses `+1.5s`, an RFC 3339 timestamp or epoch nanoseconds.
pub fn parse_time(s: &str) -> Result<TimeArg> {
    let t = s.trim();
    if let Some(rel) = t.strip_prefix('+') {
        return Ok(TimeArg::Relative(parse_span_ns(rel).map_err(|e| {
            anyhow!("{s:?}: {e} (a time is +1.5s from the session start, an RFC 3339 timestamp, or epoch ns)")
        })?));
    }
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        let v: i64 = t
            .parse()
            .map_err(|_| anyhow!("{s:?}: too large for epoch nanoseconds"))?;
        return Ok(TimeArg::Absolute(v));
    }
    match chrono::DateTime::parse_from_rfc3339(t) {
        Ok(dt) => dt
            .timestamp_nanos_opt()
            .map(TimeArg::Absolute)
            .ok_or_else(|| anyhow!("{s:?}: out of range")),
        Err(_) => bail!(
            "{s:?} is not a time: give +1.5s (from the session start), an RFC 3339 timestamp such as 2026-11-26T16:45:22.5Z, or epoch nanoseconds"
        ),
    }
}

/// `1.5s`, `250ms`, `40us`, `1500ns`, `2m`, `1h` as nanoseconds; a bare
/// number is seconds.
pub fn parse_span_ns(s: &str) -> Result<i64> {
    let s = s.trim();
    let i = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(i);
    let v: f64 = num
        .parse()
        .map_err(|_| anyhow!("{s:?} is not a number with a unit"))?;
    let mult = match unit {
        "" | "s" => 1e9,
        "ms" => 1e6,
        "us" | "µs" => 1e3,
        "ns" => 1.0,
        "m" => 60e9,
        "h" => 3600e9,
        _ => bail!("unknown unit {unit:?} (ns, us, ms, s, m or h)"),
    };
    let ns = v * mult;
    if !ns.is_finite() || ns > i64::MAX as f64 {
        bail!("{s:?} is out of range");
    }
    Ok(ns.round() as i64)
}

/// A duration for people: `812 ns`, `3.40 µs`, `12.3 ms`, `1.52 s`.
pub fn fmt_ns(ns: f64) -> String {
    let a = ns.abs();
    if a < 1e3 {
        format!("{ns:.0} ns")
    } else if a < 1e6 {
        format!("{:.2} µs", ns / 1e3)
    } else if a < 1e9 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

/// An instant as UTC RFC 3339 with nanoseconds.
pub fn fmt_epoch(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns)
        .format("%Y-%m-%dT%H:%M:%S%.9fZ")
        .to_string()
}

/// An offset from the session start: `+1.234567s`.
pub fn fmt_offset(ns: i64) -> String {
    format!("+{:.6}s", ns as f64 / 1e9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_in_every_form() {
        assert_eq!(
            parse_time("+1.5s").unwrap(),
            TimeArg::Relative(1_500_000_000)
        );
        assert_eq!(
            parse_time("+250ms").unwrap(),
            TimeArg::Relative(250_000_000)
        );
        assert_eq!(parse_time("+40us").unwrap(), TimeArg::Relative(40_000));
        assert_eq!(parse_time("123").unwrap(), TimeArg::Absolute(123));
        assert_eq!(
            parse_time("1970-01-01T00:00:01.5Z").unwrap(),
            TimeArg::Absolute(1_500_000_000)
        );
        assert_eq!(
            parse_time("1970-01-01T01:00:01+01:00").unwrap(),
            TimeArg::Absolute(1_000_000_000)
        );
        assert!(parse_time("+1.5 parsecs").is_err());
        assert!(parse_time("yesterday").is_err());
        assert_eq!(TimeArg::Relative(5).resolve(10), 15);
    }

    #[test]
    fn durations_read_in_their_unit() {
        assert_eq!(fmt_ns(812.0), "812 ns");
        assert_eq!(fmt_ns(3_400.0), "3.40 µs");
        assert_eq!(fmt_ns(12_300_000.0), "12.30 ms");
        assert_eq!(fmt_ns(1_520_000_000.0), "1.52 s");
        assert_eq!(fmt_epoch(1_500_000_000), "1970-01-01T00:00:01.500000000Z");
    }
}
