//! Many nodes, one store (issue 13, part 4), on this one machine.
//!
//! Two agents, each in network and UTS namespaces of its own (hosts
//! `node-a` and `node-b`, joined by a bridge), record the two ends of
//! tests/fixtures/c/ping.c: node-a its client (`send_ping`), node-b its
//! server (`handle_ping`). Both write into one S3 store (moto, listening on
//! the bridge) and measure their clocks with `--clock-ref` against a real
//! NTP server (chronyd on the bridge, with control of the system clock
//! off). node-b's clock runs 5 s slow: libfaketime moves its
//! CLOCK_REALTIME, not CLOCK_MONOTONIC (which the kernel's timestamps use).
//!
//! Then, read from the host: `sessions` has both nodes (host, boot id, the
//! offset taken out and its bound); on the stored times every handle_ping
//! lies inside the send_ping that caused it (to within the clocks' bounds),
//! which the node's own clock would miss by 5 s; `timeline --session all`
//! merges the two in that order and `report --session all` counts both.
//!
//! Flags the test passes, and why: `--out s3://…` and `--clock-ref` are
//! what is tested; `-f` names the fixture's functions.

#[path = "../../scope-query/tests/objstore_support/mod.rs"]
mod objstore_support;

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use objstore_support::Moto;
use scope_tests::*;

/// Pings each client sends.
const PINGS: usize = 20;
/// node-b's clock error, seconds (libfaketime's relative offset).
const SKEW_S: i64 = -5;
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
const AGENT_TIMEOUT: Duration = Duration::from_secs(150);

fn sh(cmd: &[&str]) -> Output {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A bridge on the host (`10.213.K.1/24`) and two namespaces on it, with
/// `.2` and `.3`; all removed on drop.
struct Net {
    bridge: String,
    namespaces: Vec<String>,
    prefix: String,
}

impl Net {
    fn new() -> Net {
        let id = std::process::id();
        let k = 10 + id % 240;
        let net = Net {
            bridge: format!("scbr{id}"),
            namespaces: vec![format!("scope-na-{id}"), format!("scope-nb-{id}")],
            prefix: format!("10.213.{k}"),
        };
        sh(&["ip", "link", "add", &net.bridge, "type", "bridge"]);
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{}.1/24", net.prefix),
            "dev",
            &net.bridge,
        ]);
        sh(&["ip", "link", "set", &net.bridge, "up"]);
        for (i, ns) in net.namespaces.iter().enumerate() {
            let veth = format!("scv{}{id}", ["a", "b"][i]);
            sh(&["ip", "netns", "add", ns]);
            sh(&[
                "ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ]);
            sh(&["ip", "link", "set", &veth, "master", &net.bridge]);
            sh(&["ip", "link", "set", &veth, "up"]);
            sh(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}.{}/24", net.prefix, i + 2),
                "dev",
                "eth0",
            ]);
            sh(&["ip", "-n", ns, "link", "set", "eth0", "up"]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        net
    }

    fn host_ip(&self) -> String {
        format!("{}.1", self.prefix)
    }

    fn node_ip(&self, i: usize) -> String {
        format!("{}.{}", self.prefix, i + 2)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}

/// chronyd serving NTP on `addr:port` from the host's clock (`-x`: it
/// never touches the system clock), killed on drop.
struct Chrony {
    _guard: ChildGuard,
    _dir: tempfile::TempDir,
    log: PathBuf,
}

impl Chrony {
    fn start(addr: &str, port: u16, allow: &str) -> Chrony {
        assert!(
            Path::new("/usr/sbin/chronyd").is_file(),
            "chronyd is missing: run `cargo xtask test` (it installs Debian's chrony)"
        );
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("chrony.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbindaddress {addr}\nlocal stratum 8\nallow {allow}\ncmdport 0\n\
                 pidfile {}\n",
                dir.path().join("chronyd.pid").display()
            ),
        )
        .unwrap();
        let log = dir.path().join("log");
        let guard = ChildGuard::spawn(
            Command::new("/usr/sbin/chronyd")
                .args(["-x", "-d", "-u", "root", "-f"])
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&log).unwrap())
                .stderr(std::fs::File::create(dir.path().join("err")).unwrap()),
        );
        let chrony = Chrony {
            _guard: guard,
            _dir: dir,
            log,
        };
        // Ready once it answers a client request as a synchronized server.
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut req = [0u8; 48];
            req[0] = 4 << 3 | 3;
            let _ = sock.send_to(&req, (addr, port));
            let mut buf = [0u8; 64];
            if let Ok(n) = sock.recv(&mut buf)
                && n >= 48
                && buf[0] >> 6 != 3
                && buf[1] != 0
            {
                return chrony;
            }
            assert!(
                Instant::now() < deadline,
                "chronyd did not answer on {addr}:{port} within 20 s: {}",
                std::fs::read_to_string(&chrony.log).unwrap_or_default()
            );
        }
    }
}

fn free_udp_port(addr: &str) -> u16 {
    UdpSocket::bind((addr, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `scope-agent ARGS` inside namespace `ns`, under host name `host`, with
/// extra environment; stderr to a file.
struct NodeAgent {
    guard: ChildGuard,
    stderr: PathBuf,
}

impl NodeAgent {
    fn spawn(
        ns: &str,
        host: &str,
        env: &[(String, String)],
        args: &[String],
        logs: &Path,
    ) -> NodeAgent {
        let stderr = logs.join(format!("{host}.stderr"));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, "unshare", "--uts", "sh", "-c"])
            .arg("hostname \"$0\" && exec \"$@\"")
            .arg(host)
            .arg(agent_bin())
            .args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("HOME", logs)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap());
        NodeAgent {
            guard: ChildGuard::spawn(&mut cmd),
            stderr,
        }
    }

    fn wait(mut self) -> String {
        let status = self.guard.wait_timeout(AGENT_TIMEOUT);
        let err = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let status =
            status.unwrap_or_else(|| panic!("an agent still runs after {AGENT_TIMEOUT:?}:\n{err}"));
        assert!(status.success(), "the agent failed ({status}):\n{err}");
        err
    }
}

/// `scope-agent ARGS` on the host with `env`: (success, stdout, stderr).
fn agent_on_host(args: &[&str], env: &[(String, String)]) -> (bool, String, String) {
    let out = Command::new(agent_bin())
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("run scope-agent");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn rows(
    data: &str,
    sql: &str,
    env: &[(String, String)],
) -> Vec<serde_json::Map<String, serde_json::Value>> {
    let (ok, stdout, stderr) =
        agent_on_host(&["query", sql, "--data", data, "--format", "json"], env);
    assert!(ok, "query failed:\n{sql}\n{stderr}");
    let v: serde_json::Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}"));
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_object().unwrap().clone())
        .collect()
}

fn int(r: &serde_json::Map<String, serde_json::Value>, k: &str) -> Option<i64> {
    r.get(k).and_then(|v| v.as_i64())
}

fn text(r: &serde_json::Map<String, serde_json::Value>, k: &str) -> String {
    r.get(k)
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string()
}

#[test]
fn two_nodes_share_one_store_and_line_up_on_utc() {
    require_root();
    assert!(
        Path::new(LIBFAKETIME).is_file(),
        "{LIBFAKETIME} is missing: run `cargo xtask test` (it installs Debian's libfaketime)"
    );
    let ping = c_fixture_file("ping", "1");
    let net = Net::new();
    let host_ip = net.host_ip();
    let ntp_port = free_udp_port(&host_ip);
    let _chrony = Chrony::start(&host_ip, ntp_port, &format!("{}.0/24", net.prefix));
    let moto = Moto::start_at(&host_ip, objstore_support::closed_port(), &[]);
    moto.create_bucket("nodes");
    let env = moto.aws_env();
    let data = "s3://nodes/store";
    let logs = tempfile::tempdir().unwrap();
    let clock_ref = format!("{host_ip}:{ntp_port}");
    let server_port = 7000 + std::process::id() % 1000;
    let ping_bin = ping.display().to_string();

    let record = |pattern: &str, cmd: &[String]| -> Vec<String> {
        let mut a: Vec<String> = [
            "record",
            "--out",
            data,
            "--clock-ref",
            clock_ref.as_str(),
            "-f",
            pattern,
            "--",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(cmd.iter().cloned());
        a
    };
    // node-b: the server, its clock 5 s slow.
    let mut env_b = env.clone();
    env_b.extend(
        [
            ("LD_PRELOAD", LIBFAKETIME.to_string()),
            ("FAKETIME", SKEW_S.to_string()),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_string()),
            ("FAKETIME_NO_CACHE", "1".to_string()),
        ]
        .map(|(k, v)| (k.to_string(), v)),
    );
    let b = NodeAgent::spawn(
        &net.namespaces[1],
        "node-b",
        &env_b,
        &record(
            "handle_ping",
            &[
                ping_bin.clone(),
                "server".into(),
                server_port.to_string(),
                PINGS.to_string(),
            ],
        ),
        logs.path(),
    );
    let a = NodeAgent::spawn(
        &net.namespaces[0],
        "node-a",
        &env,
        &record(
            "send_ping",
            &[
                ping_bin.clone(),
                "client".into(),
                net.node_ip(1),
                server_port.to_string(),
                PINGS.to_string(),
            ],
        ),
        logs.path(),
    );
    let err_a = a.wait();
    let err_b = b.wait();
    for (name, err) in [("node-a", &err_a), ("node-b", &err_b)] {
        assert!(
            err.contains(&format!("by sntp {clock_ref}")),
            "{name} did not say how its clock was measured:\n{err}"
        );
    }

    // The nodes, as each agent described itself.
    let sessions = rows(
        data,
        "SELECT host, boot_id, utc_offset_ns, utc_uncertainty_ns, clock_sync FROM sessions ORDER BY host",
        &env,
    );
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let mut bound_sum = 0i64;
    for (r, host, skew_ns) in [
        (&sessions[0], "node-a", 0i64),
        (&sessions[1], "node-b", SKEW_S * 1_000_000_000),
    ] {
        assert_eq!(text(r, "host"), host, "{r:?}");
        assert_eq!(text(r, "boot_id"), boot.trim(), "{r:?}");
        assert_eq!(text(r, "clock_sync"), format!("sntp {clock_ref}"), "{r:?}");
        let off = int(r, "utc_offset_ns").expect("utc_offset_ns");
        let bound = int(r, "utc_uncertainty_ns").expect("a bound from an SNTP exchange");
        assert!(
            (0..50_000_000).contains(&bound),
            "{host}: a bound of {bound} ns on a bridge on one machine"
        );
        // The node's real error is `skew_ns` exactly (one kernel clock);
        // the measurement must find it within its own bound (and 1 ms for
        // libfaketime's own rounding).
        assert!(
            (off - skew_ns).abs() <= bound + 1_000_000,
            "{host}: measured node − UTC {off} ns ± {bound}, the truth is {skew_ns} ns"
        );
        bound_sum += bound;
    }

    // Every handle_ping inside the send_ping that caused it, on the stored
    // (corrected) times; and what the node's own clock would have said.
    let calls = rows(
        data,
        "SELECT s.host, f.name, c.start_ns, c.duration_ns, s.utc_offset_ns \
         FROM calls c JOIN functions f ON f.session_id = c.session_id AND f.function_id = c.function_id \
         JOIN sessions s ON s.session_id = c.session_id ORDER BY c.start_ns",
        &env,
    );
    let pick = |name: &str| -> Vec<(i64, i64, i64)> {
        calls
            .iter()
            .filter(|r| text(r, "name") == name)
            .map(|r| {
                (
                    int(r, "start_ns").unwrap(),
                    int(r, "duration_ns").expect("every call returned"),
                    int(r, "utc_offset_ns").unwrap(),
                )
            })
            .collect()
    };
    let sends = pick("send_ping");
    let handles = pick("handle_ping");
    assert_eq!(sends.len(), PINGS, "send_ping calls on node-a");
    assert_eq!(handles.len(), PINGS, "handle_ping calls on node-b");
    for (i, (s, h)) in sends.iter().zip(&handles).enumerate() {
        let (s_start, s_end) = (s.0, s.0 + s.1);
        let (h_start, h_end) = (h.0, h.0 + h.1);
        assert!(
            h_start >= s_start - bound_sum && h_end <= s_end + bound_sum,
            "ping {i}: handle_ping [{h_start}, {h_end}] is not inside send_ping [{s_start}, {s_end}] \
             (± {bound_sum} ns)"
        );
        assert!(h.1 >= 2_000_000, "handle_ping sleeps 2 ms: {}", h.1);
        // On node-b's own clock the server would answer before being asked.
        let h_raw = h_start + h.2;
        let s_raw = s_start + s.2;
        assert!(
            h_raw < s_raw - 4_000_000_000,
            "ping {i}: the uncorrected times should be 5 s apart ({h_raw} vs {s_raw})"
        );
    }

    // The merged timeline: both hosts, each handle_ping after its send_ping
    // and before the next one.
    let (ok, out, err) = agent_on_host(
        &["timeline", "--data", data, "--session", "all", "-n", "1000"],
        &env,
    );
    assert!(ok, "timeline failed: {err}");
    eprintln!("{out}");
    assert!(
        out.starts_with("2 sessions on 2 hosts, merged on UTC"),
        "{out}"
    );
    assert!(out.contains(&format!("(sntp {clock_ref})")), "{out}");
    let order: Vec<&str> = out
        .lines()
        .filter_map(|l| {
            if l.contains("send_ping(") {
                Some(if l.contains("node-a") { "S" } else { "?" })
            } else if l.contains("handle_ping(") {
                Some(if l.contains("node-b") { "H" } else { "?" })
            } else {
                None
            }
        })
        .collect();
    assert_eq!(order.concat(), "SH".repeat(PINGS), "{out}");

    // `report --session all --format json` with `extra`: its JSON and text.
    let report_json = |extra: &[&str]| -> (serde_json::Value, String) {
        let mut args = vec!["report", "--data", data, "--session", "all"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--format", "json"]);
        let (ok, out, err) = agent_on_host(&args, &env);
        assert!(ok, "report {extra:?} failed: {err}");
        (serde_json::from_str(&out).expect("report JSON"), out)
    };
    // report over both nodes: each function's count.
    let (report, out) = report_json(&[]);
    for name in ["send_ping", "handle_ping"] {
        let row = report["rows"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["key"] == name))
            .unwrap_or_else(|| panic!("report lacks {name}: {out}"));
        assert_eq!(row["calls"].as_f64(), Some(PINGS as f64), "{name}: {row}");
    }
    // --by host: each function's calls on the node that made them.
    let (report, out) = report_json(&["--by", "host"]);
    let mut rows: Vec<(String, String, f64)> = report["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("{out}"))
        .iter()
        .filter(|r| ["send_ping", "handle_ping"].contains(&r["key"].as_str().unwrap_or("")))
        .map(|r| {
            (
                r["host"].as_str().unwrap_or("").to_string(),
                r["key"].as_str().unwrap_or("").to_string(),
                r["calls"].as_f64().unwrap_or(-1.0),
            )
        })
        .collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    let pings = PINGS as f64;
    assert_eq!(
        rows,
        [
            ("node-a".to_string(), "send_ping".to_string(), pings),
            ("node-b".to_string(), "handle_ping".to_string(), pings)
        ],
        "{out}"
    );
}

#[test]
fn a_clock_reference_that_does_not_answer_stops_before_anything_starts() {
    require_root();
    let port = free_udp_port("127.0.0.1");
    let out = tempfile::tempdir().unwrap();
    let data = out.path().join("data");
    let marker = out.path().join("ran");
    let run = run_agent(&[
        "record",
        "--out",
        &data.display().to_string(),
        "--clock-ref",
        &format!("127.0.0.1:{port}"),
        "--",
        "touch",
        &marker.display().to_string(),
    ]);
    assert!(!run.status.success(), "{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("--clock-ref 127.0.0.1:{port}")),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    assert!(!marker.exists(), "the command ran");
    assert!(!data.join("calls").exists(), "something was recorded");
}
