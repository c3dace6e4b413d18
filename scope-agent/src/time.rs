//! Clocks: the kernel stamps events with CLOCK_MONOTONIC (`bpf_ktime_get_ns`);
//! the data contract stores Unix epoch nanoseconds. The offset between the
//! two is measured once at session start and stored in `sessions`.

fn clock_ns(clock: libc::clockid_t) -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into a live struct.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// CLOCK_MONOTONIC now, in the kernel's `bpf_ktime_get_ns` units.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC) as u64
}

pub fn realtime_ns() -> i64 {
    clock_ns(libc::CLOCK_REALTIME)
}

#[derive(Debug, Clone, Copy)]
pub struct SessionClock {
    /// Add to a CLOCK_MONOTONIC timestamp to get Unix epoch ns.
    pub offset_ns: i64,
    pub start_epoch_ns: i64,
    /// Half the tightest monotonic bracket around the realtime reading:
    /// how far `offset_ns` may be from the truth.
    pub bracket_ns: i64,
}

impl SessionClock {
    /// Measures the offset: the realtime reading bracketed by the tightest of
    /// a few monotonic pairs.
    pub fn now() -> Self {
        let mut best: Option<(i64, i64)> = None;
        for _ in 0..5 {
            let m1 = clock_ns(libc::CLOCK_MONOTONIC);
            let r = clock_ns(libc::CLOCK_REALTIME);
            let m2 = clock_ns(libc::CLOCK_MONOTONIC);
            let width = m2 - m1;
            let offset = r - (m1 + width / 2);
            if best.is_none_or(|(w, _)| width < w) {
                best = Some((width, offset));
            }
        }
        let offset_ns = best.map_or(0, |(_, o)| o);
        Self {
            offset_ns,
            start_epoch_ns: realtime_ns(),
            bracket_ns: best.map_or(0, |(w, _)| (w + 1) / 2),
        }
    }

    /// The same clock with the node's offset to UTC taken out (see
    /// [`crate::utc`]): every time written is then UTC as measured.
    pub fn corrected(self, utc: &crate::utc::UtcClock) -> Self {
        Self {
            offset_ns: self.offset_ns - utc.offset_ns,
            start_epoch_ns: self.start_epoch_ns - utc.offset_ns,
            bracket_ns: self.bracket_ns,
        }
    }

    pub fn epoch_ns(&self, ktime: u64) -> i64 {
        ktime as i64 + self.offset_ns
    }

    pub fn now_epoch_ns(&self) -> i64 {
        self.epoch_ns(monotonic_ns())
    }
}

/// A session id that sorts by time and names the process and the host
/// (so that agents on several machines can share one store):
/// `20261124T215012Z-4242-web1`. The host part is the host name's first
/// label, lowercase letters, digits and `-` only, at most 16 of them
/// (left out when nothing is left).
pub fn session_id(epoch_ns: i64, pid: u32, host: &str) -> String {
    let label: String = host
        .split('.')
        .next()
        .unwrap_or("")
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    let tag: String = label.trim_start_matches('-').chars().take(16).collect();
    let tag = tag.trim_end_matches('-');
    let base = session_id_base(epoch_ns, pid);
    if tag.is_empty() {
        base
    } else {
        format!("{base}-{tag}")
    }
}

fn session_id_base(epoch_ns: i64, pid: u32) -> String {
    let secs = epoch_ns.div_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z-{pid}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian
/// (Howard Hinnant's algorithm; no date crate needed for one format).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_utc_dates() {
        // 2026-11-24 21:50:12 UTC
        assert_eq!(
            session_id(1_795_557_012_000_000_000, 42, ""),
            "20261124T215012Z-42"
        );
        assert_eq!(
            session_id(0, 1, "Web_1.example.com"),
            "19700101T000000Z-1-web1"
        );
        assert_eq!(
            session_id(951_782_400_000_000_000, 7, "-a-very-long-host-name-indeed"),
            "20000229T000000Z-7-a-very-long-host"
        );
        assert_eq!(session_id(0, 1, "._"), "19700101T000000Z-1");
    }

    #[test]
    fn a_correction_moves_every_time_by_the_offset() {
        let c = SessionClock::now();
        let utc = crate::utc::UtcClock {
            offset_ns: -5_000_000_000,
            uncertainty_ns: Some(1),
            source: "test".into(),
        };
        let k = c.corrected(&utc);
        assert_eq!(k.epoch_ns(42) - c.epoch_ns(42), 5_000_000_000);
        assert_eq!(k.start_epoch_ns - c.start_epoch_ns, 5_000_000_000);
    }

    #[test]
    fn offset_maps_monotonic_to_now() {
        let c = SessionClock::now();
        let diff = (c.now_epoch_ns() - realtime_ns()).abs();
        assert!(diff < 1_000_000_000, "offset off by {diff} ns");
    }
}
