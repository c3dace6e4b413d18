//! A target in its own pid and mount namespaces, running a binary that exists
//! only inside its mount namespace: the agent resolves it through
//! `/proc/PID/root` and `/proc/PID/map_files`, attaches, and reports pids as
//! seen from the agent's (root) namespace. The agent attaches with
//! `--max-overhead off` (every call; `attach` samples hot functions by
//! default), so the count is exact.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use scope_tests::*;

/// The fixture's `serve` mode inside `unshare --pid --mount --fork`, copied
/// onto a tmpfs that only its mount namespace sees.
struct Contained {
    guard: ChildGuard,
    stdin: Option<std::process::ChildStdin>,
    lines: mpsc::Receiver<String>,
    /// The fixture's pid in the agent's namespace.
    host_pid: u32,
    /// Where the binary lives inside the namespace (empty on the host).
    inner_dir: tempfile::TempDir,
}

impl Contained {
    fn spawn(bin: &std::path::Path) -> Contained {
        let inner_dir = tempfile::tempdir().unwrap();
        let d = inner_dir.path().display().to_string();
        let script = format!(
            "mount -t tmpfs scope-test {d} && cp {} {d}/contained-fixture && exec {d}/contained-fixture serve",
            bin.display()
        );
        let mut guard = ChildGuard::spawn(
            Command::new("unshare")
                .args([
                    "--pid",
                    "--mount",
                    "--fork",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                ])
                .arg(&script)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped()),
        );
        let stdin = guard.child().stdin.take();
        let stdout = guard.child().stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let ready = lines
            .recv_timeout(Duration::from_secs(30))
            .expect("the contained fixture starts");
        // Inside its own pid namespace the fixture is pid 1.
        assert_eq!(ready, "ready 1", "unexpected first line");
        // unshare --fork: the fixture is unshare's only child.
        let children =
            std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", guard.pid())).unwrap();
        let host_pid: u32 = children.split_whitespace().next().unwrap().parse().unwrap();
        Contained {
            guard,
            stdin,
            lines,
            host_pid,
            inner_dir,
        }
    }

    fn run(&mut self, cmd: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{cmd}").unwrap();
        stdin.flush().unwrap();
        let done = self.lines.recv_timeout(Duration::from_secs(60)).unwrap();
        assert_eq!(done, "done");
    }

    fn finish(mut self) {
        drop(self.stdin.take());
        let status = self.guard.wait_timeout(Duration::from_secs(30));
        assert!(status.is_some_and(|s| s.success()), "{status:?}");
    }
}

#[test]
fn attach_to_a_process_in_other_pid_and_mount_namespaces() {
    require_root();
    let bin = fixture(Lang::C, "2");
    let mut target = Contained::spawn(&bin);
    let host_pid = target.host_pid;
    let pid = host_pid.to_string();
    // The binary's path names nothing on the host: only /proc/PID/root has it.
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert!(
        exe.starts_with(target.inner_dir.path()),
        "{}",
        exe.display()
    );
    assert!(
        !exe.exists(),
        "{} should exist only inside the namespace",
        exe.display()
    );

    let listed = run_agent(&["functions", "--pid", &pid, "leaf"]);
    assert!(listed.status.success(), "{}", listed.stderr);
    assert!(
        listed.stdout.lines().any(|l| l.starts_with("leaf ")),
        "{}",
        listed.stdout
    );

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().display().to_string();
    let mut agent = spawn_agent(&[
        "attach",
        "--pid",
        &pid,
        // Exact counts: record every call (attach samples hot functions at
        // 5% by default).
        "--max-overhead",
        "off",
        "-f",
        "leaf",
        "--out",
        &out,
    ]);
    agent.wait_for_stderr("attached", Duration::from_secs(60));
    target.run("count 250");
    target.run("threads 2 100");
    target.finish();
    let run = agent.wait(Duration::from_secs(60));
    assert!(run.status.success(), "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!("pid {pid} exited")),
        "{}",
        run.stderr
    );

    let rows = duckdb(&format!(
        "SELECT pid, count(*) AS n FROM read_parquet('{}', hive_partitioning=true) GROUP BY pid",
        calls_glob(dir.path())
    ));
    assert_eq!(rows.len(), 1, "{rows:?}");
    // Pids as the agent's namespace sees them, not the target's 1.
    assert_eq!(rows[0]["pid"].as_i64(), Some(i64::from(host_pid)));
    // 250 from count, none from threads (they call tleaf, not leaf).
    assert_eq!(rows[0]["n"].as_i64(), Some(250), "{}", run.stderr);
}
