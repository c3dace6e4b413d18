//! The node's clock against UTC, measured once at session start, so that
//! sessions recorded on several machines into one store line up.
//!
//! Every epoch time the agent writes is its `CLOCK_REALTIME` minus the
//! offset measured here (`sessions.utc_offset_ns`, node − UTC), and
//! `sessions.utc_uncertainty_ns` bounds what is left. Two ways to measure:
//!
//! - by default, the kernel's own NTP discipline (`adjtimex`): a clock kept
//!   by chrony/ntpd/systemd-timesyncd is UTC within the kernel's
//!   `maxerror`, offset 0; an undisciplined clock has no known bound
//!   (`clock_sync` says "unsynchronized", the uncertainty is null);
//! - with `--clock-ref HOST[:PORT]`, an SNTP exchange (RFC 4330) with that
//!   server: eight queries, the one with the shortest round trip kept; the
//!   offset is ((t2 − t1) + (t3 − t4)) / 2 and the uncertainty half the
//!   round trip plus the server's own root distance (RFC 5905's λ).
//!
//! Written by hand: one 48-byte UDP packet and four timestamps; the SNTP
//! crates bring their own socket layers (and async runtimes) for it.

use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// The node's host name (its UTS namespace's).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The kernel's boot id: tells two boots (and two machines) apart where
/// host names repeat.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// What was measured: node − UTC, its bound, and how.
#[derive(Clone, Debug, PartialEq)]
pub struct UtcClock {
    /// The node's `CLOCK_REALTIME` minus UTC, ns (subtracted from every
    /// time written).
    pub offset_ns: i64,
    /// |true offset − `offset_ns`| is at most this; `None` when unknown.
    pub uncertainty_ns: Option<i64>,
    /// "kernel NTP", "unsynchronized", or "sntp HOST:PORT".
    pub source: String,
}

impl UtcClock {
    /// By `--clock-ref` when given, else from the kernel.
    pub fn measure(clock_ref: Option<&str>) -> Result<UtcClock> {
        match clock_ref {
            Some(server) => sntp(server),
            None => Ok(kernel()),
        }
    }

    /// One line for people: "node − UTC = −5.000 s ± 0.4 ms (sntp …)".
    pub fn describe(&self) -> String {
        let bound = match self.uncertainty_ns {
            Some(u) => format!(" ± {}", human(u as f64)),
            None => " (bound unknown)".to_string(),
        };
        format!(
            "node clock − UTC = {}{bound}, by {}",
            human(self.offset_ns as f64),
            self.source
        )
    }
}

fn human(ns: f64) -> String {
    let a = ns.abs();
    let sign = if ns < 0.0 { "−" } else { "" };
    if a >= 1e9 {
        format!("{sign}{:.3} s", a / 1e9)
    } else if a >= 1e6 {
        format!("{sign}{:.2} ms", a / 1e6)
    } else {
        format!("{sign}{:.0} µs", a / 1e3)
    }
}

/// The kernel's view: `adjtimex` in read-only mode.
pub fn kernel() -> UtcClock {
    // SAFETY: a zeroed timex with modes 0 only reads the kernel's state.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: adjtimex writes into the live struct it is given.
    let state = unsafe { libc::adjtimex(&mut tx) };
    let unsync = state < 0 || state == libc::TIME_ERROR || tx.status & libc::STA_UNSYNC != 0;
    if unsync {
        UtcClock {
            offset_ns: 0,
            uncertainty_ns: None,
            source: "unsynchronized".to_string(),
        }
    } else {
        UtcClock {
            offset_ns: 0,
            // maxerror is in µs.
            uncertainty_ns: Some(tx.maxerror.max(0) * 1_000),
            source: "kernel NTP".to_string(),
        }
    }
}

/// Seconds between 1900-01-01 (NTP's era 0) and 1970-01-01.
const NTP_UNIX_DELTA: i64 = 2_208_988_800;
const QUERIES: usize = 8;
const REPLY_TIMEOUT: Duration = Duration::from_millis(500);

/// Unix epoch ns → NTP 64-bit timestamp (32.32 fixed point).
fn to_ntp(ns: i64) -> u64 {
    let secs = ns.div_euclid(1_000_000_000) + NTP_UNIX_DELTA;
    let frac = ((ns.rem_euclid(1_000_000_000) as u128) << 32) / 1_000_000_000;
    ((secs as u64) << 32) | frac as u64
}

/// NTP timestamp → Unix epoch ns (era 0, which runs to 2036).
fn from_ntp(t: u64) -> i64 {
    let secs = (t >> 32) as i64 - NTP_UNIX_DELTA;
    let frac = (((t & 0xffff_ffff) as u128 * 1_000_000_000) >> 32) as i64;
    secs * 1_000_000_000 + frac
}

/// NTP short format (16.16 s) → ns.
fn short_ns(v: u32) -> i64 {
    ((v as u64 * 1_000_000_000) >> 16) as i64
}

/// One server reply, checked.
#[derive(Debug, PartialEq)]
struct Reply {
    /// Server − client, ns.
    offset_ns: i64,
    /// Round trip less the server's own time, ns.
    delay_ns: i64,
    /// The server's root delay / 2 + root dispersion, ns.
    root_ns: i64,
}

/// A client request: version 4, mode 3, the transmit timestamp `t1`.
fn request(t1: u64) -> [u8; 48] {
    let mut p = [0u8; 48];
    p[0] = 4 << 3 | 3;
    p[40..48].copy_from_slice(&t1.to_be_bytes());
    p
}

/// Checks a reply to the request sent at `t1` (as sent, NTP format) and
/// received at `t4_ns`.
fn parse_reply(p: &[u8], t1: u64, t1_ns: i64, t4_ns: i64) -> Result<Reply, String> {
    if p.len() < 48 {
        return Err(format!(
            "a reply of {} bytes (an NTP reply has 48)",
            p.len()
        ));
    }
    let leap = p[0] >> 6;
    let mode = p[0] & 7;
    let stratum = p[1];
    let be32 = |i: usize| u32::from_be_bytes(p[i..i + 4].try_into().unwrap());
    let be64 = |i: usize| u64::from_be_bytes(p[i..i + 8].try_into().unwrap());
    if mode != 4 {
        return Err(format!("a reply in mode {mode}, not a server's (4)"));
    }
    if stratum == 0 {
        let code = String::from_utf8_lossy(&p[12..16])
            .trim_end_matches('\0')
            .to_string();
        return Err(format!("the server refused (kiss code {code:?})"));
    }
    if leap == 3 {
        return Err("the server's own clock is not synchronized (leap indicator 3)".into());
    }
    if be64(24) != t1 {
        return Err("a reply to some other request (its origin timestamp is not ours)".into());
    }
    let t2 = from_ntp(be64(32));
    let t3 = from_ntp(be64(40));
    let offset_ns = ((t2 - t1_ns) + (t3 - t4_ns)) / 2;
    let delay_ns = ((t4_ns - t1_ns) - (t3 - t2)).max(0);
    let root_ns = short_ns(be32(4)) / 2 + short_ns(be32(8));
    Ok(Reply {
        offset_ns,
        delay_ns,
        root_ns,
    })
}

/// `--clock-ref HOST[:PORT]` (port 123 by default).
pub fn sntp(server: &str) -> Result<UtcClock> {
    // HOST, HOST:PORT, an IPv6 address alone or as [ADDR]:PORT.
    let with_port = if server.parse::<SocketAddr>().is_ok() {
        server.to_string()
    } else if let Ok(ip) = server.parse::<std::net::IpAddr>() {
        SocketAddr::new(ip, 123).to_string()
    } else if server
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.contains(':') && p.parse::<u16>().is_ok())
    {
        server.to_string()
    } else {
        format!("{server}:123")
    };
    let addr: SocketAddr = with_port
        .to_socket_addrs()
        .with_context(|| format!("--clock-ref {server}: cannot resolve it"))?
        .next()
        .with_context(|| format!("--clock-ref {server}: it resolves to no address"))?;
    let bind = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let sock = UdpSocket::bind(bind).context("--clock-ref: opening a UDP socket")?;
    sock.connect(addr)
        .with_context(|| format!("--clock-ref {server}: cannot reach {addr}"))?;
    sock.set_read_timeout(Some(REPLY_TIMEOUT))?;
    let mut best: Option<Reply> = None;
    let mut last_err = String::from("no answer");
    let mut buf = [0u8; 512];
    for i in 0..QUERIES {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
        let t1_ns = crate::time::realtime_ns();
        let t1 = to_ntp(t1_ns);
        if let Err(e) = sock.send(&request(t1)) {
            last_err = e.to_string();
            continue;
        }
        // Replies to earlier (timed-out) requests are skipped by their
        // origin timestamp.
        let got = loop {
            match sock.recv(&mut buf) {
                Ok(n) => {
                    let t4_ns = crate::time::realtime_ns();
                    match parse_reply(&buf[..n], t1, t1_ns, t4_ns) {
                        Err(e) if e.starts_with("a reply to some other") => continue,
                        r => break r,
                    }
                }
                Err(e) => {
                    break Err(match e.kind() {
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                            format!("no answer within {REPLY_TIMEOUT:?}")
                        }
                        _ => e.to_string(),
                    });
                }
            }
        };
        match got {
            Ok(r) => {
                if best.as_ref().is_none_or(|b| r.delay_ns < b.delay_ns) {
                    best = Some(r);
                }
            }
            // A server that answers but refuses will not change its mind.
            Err(e) if e.starts_with("the server") => {
                bail!("--clock-ref {server}: {e}")
            }
            Err(e) => last_err = e,
        }
    }
    let Some(best) = best else {
        bail!("--clock-ref {server} ({addr}): {last_err} to {QUERIES} SNTP queries");
    };
    Ok(UtcClock {
        // node − UTC = −(server − client).
        offset_ns: -best.offset_ns,
        uncertainty_ns: Some(best.delay_ns / 2 + best.root_ns),
        source: format!("sntp {addr}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ntp_timestamps_round_trip_to_the_nanosecond_or_so() {
        for ns in [0, 1_795_557_012_123_456_789, 1_000_000_000] {
            let back = from_ntp(to_ntp(ns));
            assert!((back - ns).abs() <= 1, "{ns} → {back}");
        }
        // 1970-01-01 is NTP second 2,208,988,800.
        assert_eq!(to_ntp(0) >> 32, NTP_UNIX_DELTA as u64);
    }

    fn reply(t1: u64, t2_ns: i64, t3_ns: i64, stratum: u8, leap: u8) -> [u8; 48] {
        let mut p = [0u8; 48];
        p[0] = leap << 6 | 4 << 3 | 4;
        p[1] = stratum;
        p[4..8].copy_from_slice(&(1u32 << 15).to_be_bytes()); // root delay 0.5 s
        p[8..12].copy_from_slice(&(1u32 << 14).to_be_bytes()); // dispersion 0.25 s
        p[24..32].copy_from_slice(&t1.to_be_bytes());
        p[32..40].copy_from_slice(&to_ntp(t2_ns).to_be_bytes());
        p[40..48].copy_from_slice(&to_ntp(t3_ns).to_be_bytes());
        p
    }

    #[test]
    fn a_server_five_seconds_ahead_gives_its_offset_and_delay() {
        let t1_ns = 1_795_557_012_000_000_000;
        let t1 = to_ntp(t1_ns);
        // 2 ms each way, 1 ms in the server, its clock 5 s ahead.
        let t2 = t1_ns + 2_000_000 + 5_000_000_000;
        let t3 = t2 + 1_000_000;
        let t4 = t1_ns + 5_000_000;
        let r = parse_reply(&reply(t1, t2, t3, 2, 0), t1, t1_ns, t4).unwrap();
        assert!((r.offset_ns - 5_000_000_000).abs() <= 2, "{r:?}");
        assert!((r.delay_ns - 4_000_000).abs() <= 2, "{r:?}");
        assert_eq!(r.root_ns, 250_000_000 + 250_000_000);
    }

    #[test]
    fn refusals_and_strangers_are_errors() {
        let t1 = to_ntp(1_000_000_000_000_000_000);
        let ok = reply(t1, 1, 1, 2, 0);
        assert!(parse_reply(&ok[..40], t1, 0, 0).is_err());
        let kod = reply(t1, 1, 1, 0, 0);
        assert!(parse_reply(&kod, t1, 0, 0).unwrap_err().contains("refused"));
        let unsync = reply(t1, 1, 1, 2, 3);
        assert!(
            parse_reply(&unsync, t1, 0, 0)
                .unwrap_err()
                .contains("not synchronized")
        );
        let other = reply(t1 + 1, 1, 1, 2, 0);
        assert!(
            parse_reply(&other, t1, 0, 0)
                .unwrap_err()
                .starts_with("a reply to some other")
        );
    }

    #[test]
    fn no_server_is_a_clear_error_naming_it() {
        // A loopback port nothing listens on: the kernel refuses at once.
        let port = {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap().port()
        };
        let err = sntp(&format!("127.0.0.1:{port}")).unwrap_err().to_string();
        assert!(
            err.contains(&format!("--clock-ref 127.0.0.1:{port}")),
            "{err}"
        );
    }

    #[test]
    fn the_kernel_says_something() {
        let k = kernel();
        assert_eq!(k.offset_ns, 0);
        assert!(k.source == "kernel NTP" || k.source == "unsynchronized");
    }
}
