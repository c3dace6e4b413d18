//! Shared helpers for the integration tests: where the agent binary is,
//! fixture programs compiled on demand, child processes that never leak
//! (killed on drop, every wait bounded), and DuckDB queries over the
//! agent's Parquet output.
//!
//! Every helper panics with a message that names the command or path that
//! failed: a test that fails should say why without a debugger.
//!
//! The harness adds no flag to the agent's command line: a test runs the
//! default path unless its own text asks for something else.

pub mod cdp;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

/// How long a fixture in serve mode may take to answer a command or exit.
const SERVE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `run_agent` lets the agent run before it kills it.
const AGENT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long to wait for an output pipe to close after its process exited
/// (a grandchild may still hold it open).
const PIPE_GRACE: Duration = Duration::from_secs(5);

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent directory")
        .to_path_buf()
}

/// Cargo's target directory: `CARGO_TARGET_DIR`, else the ancestor of the
/// running executable that holds cargo's `CACHEDIR.TAG`, else `<root>/target`.
pub fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        let dir = PathBuf::from(dir);
        return if dir.is_absolute() {
            dir
        } else {
            workspace_root().join(dir)
        };
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            exe.ancestors()
                .find(|d| d.join("CACHEDIR.TAG").is_file())
                .map(Path::to_path_buf)
        })
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// The `scope-agent` binary under test: `SCOPE_AGENT_BIN`, else the debug build.
pub fn agent_bin() -> PathBuf {
    let bin = std::env::var_os("SCOPE_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("debug/scope-agent"));
    assert!(
        bin.is_file(),
        "{} does not exist: build it first: cargo build -p scope-agent (cargo xtask test does this)",
        bin.display()
    );
    bin
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Panics unless the tests run as root (they load eBPF programs).
pub fn require_root() {
    assert!(
        is_root(),
        "this test loads eBPF programs and needs root: run `sudo cargo xtask test`"
    );
}

/// The language of a fixture program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Lang {
    /// tests/fixtures/c/fixture.c, built with `cc`.
    C,
    /// tests/fixtures/rust/fixture.rs, built with plain `rustc`.
    Rust,
}

impl Lang {
    /// Every fixture language.
    pub const ALL: [Lang; 2] = [Lang::C, Lang::Rust];

    /// Short lowercase name, used in directory names.
    pub fn name(self) -> &'static str {
        match self {
            Lang::C => "c",
            Lang::Rust => "rust",
        }
    }

    /// The fixture's source file.
    pub fn source(self) -> PathBuf {
        let root = workspace_root().join("tests/fixtures");
        match self {
            Lang::C => root.join("c/fixture.c"),
            Lang::Rust => root.join("rust/fixture.rs"),
        }
    }

    /// The command that compiles the fixture at `-O<opt>` into `out`.
    pub fn compile_command(self, opt: &str, out: &Path) -> Command {
        let mut cmd;
        match self {
            Lang::C => {
                cmd = Command::new("cc");
                cmd.args([
                    "-g",
                    &format!("-O{opt}"),
                    "-fno-omit-frame-pointer",
                    "-pthread",
                ]);
                cmd.arg("-o").arg(out).arg(self.source());
            }
            Lang::Rust => {
                cmd = Command::new("rustc");
                cmd.args(["-g", "-C", &format!("opt-level={opt}"), "-C", "debuginfo=2"]);
                cmd.args(["--edition", "2021", "--crate-name", "fixture"]);
                cmd.arg("-o").arg(out).arg(self.source());
            }
        }
        cmd
    }
}

/// Where the fixture for `lang` at `-O<opt>` is built.
pub fn fixture_path(lang: Lang, opt: &str) -> PathBuf {
    target_dir()
        .join("fixtures")
        .join(format!("{}-O{opt}", lang.name()))
        .join("fixture")
}

/// Builds the fixture unless it is newer than its source, and returns its
/// path. Safe to call from parallel processes: it compiles to a name of its
/// own and renames the result into place.
pub fn build_fixture(lang: Lang, opt: &str) -> Result<PathBuf, String> {
    let out = fixture_path(lang, opt);
    let source = lang.source();
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let source_time =
        modified(&source).ok_or_else(|| format!("cannot read {}", source.display()))?;
    if modified(&out).is_some_and(|t| t >= source_time) {
        return Ok(out);
    }
    let dir = out.parent().expect("fixture path has a parent");
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let nonce = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = dir.join(format!(".fixture.{}.{nonce}.tmp", std::process::id()));
    let mut cmd = lang.compile_command(opt, &tmp);
    let output = cmd
        .output()
        .map_err(|e| format!("cannot run {}: {e}", describe(&cmd)))?;
    if !output.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!(
            "{} failed ({}):\n{}",
            describe(&cmd),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    std::fs::rename(&tmp, &out)
        .map_err(|e| format!("cannot rename {} to {}: {e}", tmp.display(), out.display()))?;
    Ok(out)
}

/// The fixture for `lang` at `-O<opt>`, compiled at most once per process.
pub fn fixture(lang: Lang, opt: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<(Lang, String), PathBuf>>> = OnceLock::new();
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(path) = built.get(&(lang, opt.to_string())) {
        return path.clone();
    }
    let path =
        build_fixture(lang, opt).unwrap_or_else(|e| panic!("building the {lang:?} fixture: {e}"));
    built.insert((lang, opt.to_string()), path.clone());
    path
}

/// The 1-based number of the first line of tests/fixtures/c/fixture.c that
/// contains `needle`.
pub fn c_source_line(needle: &str) -> u32 {
    let source = Lang::C.source();
    let text = std::fs::read_to_string(&source)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", source.display()));
    let index = text
        .lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} is not in {}", source.display()));
    u32::try_from(index + 1).expect("fixture.c has fewer than 2^32 lines")
}

/// A program and its arguments, for messages.
fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A child process that is killed (and reaped) when the guard is dropped.
pub struct ChildGuard {
    child: Child,
}

impl ChildGuard {
    /// Spawns `cmd`; panics naming the command if it cannot start.
    pub fn spawn(cmd: &mut Command) -> ChildGuard {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", describe(cmd)));
        ChildGuard { child }
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The child itself.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Waits up to `timeout` for the child to exit; `None` if it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                Ok(None) => return None,
                Err(e) => panic!("waiting for pid {}: {e}", self.child.id()),
            }
        }
    }

    /// Sends SIGKILL and reaps the child (no-op if it already exited).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A fixture in `serve` mode: it runs one command per line written to its
/// stdin and answers `done`. Killed on drop.
pub struct ServeFixture {
    /// The fixture's pid (what it printed in its `ready <pid>` line).
    pub pid: u32,
    guard: ChildGuard,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    bin: PathBuf,
}

impl ServeFixture {
    /// Starts `<bin> serve` and waits for its `ready <pid>` line.
    pub fn spawn(bin: &Path) -> ServeFixture {
        let mut guard = ChildGuard::spawn(
            Command::new(bin)
                .arg("serve")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped()),
        );
        let stdin = guard.child().stdin.take();
        let stdout = guard.child().stdout.take().expect("stdout is piped");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut fixture = ServeFixture {
            pid: guard.pid(),
            guard,
            stdin,
            lines,
            bin: bin.to_path_buf(),
        };
        let ready = fixture.next_line("the ready line");
        let printed: Option<u32> = ready
            .strip_prefix("ready ")
            .and_then(|p| p.trim().parse().ok());
        assert_eq!(
            printed,
            Some(fixture.pid),
            "{} serve: expected `ready {}`, got {ready:?}",
            fixture.bin.display(),
            fixture.pid
        );
        fixture
    }

    /// The next stdout line, or a panic after `SERVE_TIMEOUT`.
    fn next_line(&mut self, what: &str) -> String {
        match self.lines.recv_timeout(SERVE_TIMEOUT) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => panic!(
                "{} serve (pid {}): no {what} after {SERVE_TIMEOUT:?}",
                self.bin.display(),
                self.pid
            ),
            Err(RecvTimeoutError::Disconnected) => panic!(
                "{} serve (pid {}) closed its stdout before {what} (status {:?})",
                self.bin.display(),
                self.pid,
                self.guard.wait_timeout(Duration::from_secs(1))
            ),
        }
    }

    /// Runs one command (`count N`, `nest N`, `threads T M`, `recurse D`,
    /// `sleep MS K`) and waits for it to finish.
    pub fn run(&mut self, cmd: &str) {
        let stdin = self
            .stdin
            .as_mut()
            .unwrap_or_else(|| panic!("run({cmd:?}) after close_stdin()"));
        writeln!(stdin, "{cmd}")
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("writing {cmd:?} to pid {}: {e}", self.pid));
        let answer = self.next_line(&format!("answer to {cmd:?}"));
        assert_eq!(
            answer, "done",
            "pid {} answered {cmd:?} with {answer:?}",
            self.pid
        );
    }

    /// Closes the fixture's stdin: it exits 0 once it has read everything.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits up to 60 s for the fixture to exit.
    pub fn wait(&mut self) -> ExitStatus {
        self.guard.wait_timeout(SERVE_TIMEOUT).unwrap_or_else(|| {
            panic!(
                "{} serve (pid {}) still running after {SERVE_TIMEOUT:?}",
                self.bin.display(),
                self.pid
            )
        })
    }
}

/// Collects everything a child writes to one pipe, on a thread of its own.
struct PipeCollector {
    text: Arc<Mutex<Vec<u8>>>,
    closed: Arc<AtomicBool>,
}

impl PipeCollector {
    fn start(mut pipe: impl Read + Send + 'static) -> PipeCollector {
        let text = Arc::new(Mutex::new(Vec::new()));
        let closed = Arc::new(AtomicBool::new(false));
        let (t, c) = (Arc::clone(&text), Arc::clone(&closed));
        thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => t
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend_from_slice(&buf[..n]),
                }
            }
            c.store(true, Ordering::Release);
        });
        PipeCollector { text, closed }
    }

    /// What was read so far.
    fn snapshot(&self) -> String {
        String::from_utf8_lossy(&self.text.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }

    /// Everything, once the pipe closed or `deadline` passed.
    fn finish(&self, deadline: Instant) -> String {
        while !self.closed.load(Ordering::Acquire) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        self.snapshot()
    }
}

/// A finished agent run.
#[derive(Debug)]
pub struct AgentRun {
    /// How the agent exited.
    pub status: ExitStatus,
    /// Everything it (and a recorded command) wrote to stdout.
    pub stdout: String,
    /// Everything it wrote to stderr.
    pub stderr: String,
    /// The value of `--out`, or empty.
    pub out_dir: PathBuf,
}

/// The value after `--out` in `args`, or an empty path.
fn out_dir_of(args: &[&str]) -> PathBuf {
    args.iter()
        .position(|a| *a == "--out")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// A running `scope-agent`, killed on drop.
pub struct RunningAgent {
    guard: ChildGuard,
    stdout: PipeCollector,
    stderr: PipeCollector,
    out_dir: PathBuf,
    args: String,
}

/// Starts `scope-agent <args>` with stdout and stderr collected. The
/// arguments are passed exactly as given: the harness adds no flag, so a
/// test runs the agent's default path unless its own text says otherwise
/// (`record` records every call; `attach` keeps a 5% budget, and a test
/// that counts exactly passes `--max-overhead off` itself).
pub fn spawn_agent(args: &[&str]) -> RunningAgent {
    let mut guard = ChildGuard::spawn(
        Command::new(agent_bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let stdout = PipeCollector::start(guard.child().stdout.take().expect("stdout is piped"));
    let stderr = PipeCollector::start(guard.child().stderr.take().expect("stderr is piped"));
    RunningAgent {
        guard,
        stdout,
        stderr,
        out_dir: out_dir_of(args),
        args: args.join(" "),
    }
}

/// The text of `s` up to and including its last newline.
pub fn complete_lines(s: &str) -> &str {
    s.rfind('\n').map_or("", |i| &s[..=i])
}

impl RunningAgent {
    /// The agent's pid.
    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// What the agent wrote to stdout so far.
    pub fn stdout_so_far(&self) -> String {
        self.stdout.snapshot()
    }

    /// What the agent wrote to stderr so far.
    pub fn stderr_so_far(&self) -> String {
        self.stderr.snapshot()
    }

    /// Waits until a complete line of stderr contains `needle`; panics with
    /// the stderr so far on timeout or if the agent exits first.
    ///
    /// Only whole lines count: `eprintln!` with arguments writes a line in
    /// several pieces, and a test that reads the stderr right after its needle
    /// appeared must see the rest of that line too.
    pub fn wait_for_stderr(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if complete_lines(&self.stderr.snapshot()).contains(needle) {
                return;
            }
            if let Some(status) = self.guard.wait_timeout(Duration::ZERO) {
                let stderr = self.stderr.finish(Instant::now() + PIPE_GRACE);
                if stderr.contains(needle) {
                    return;
                }
                panic!(
                    "scope-agent {} exited ({status}) before printing {needle:?}; stderr:\n{stderr}",
                    self.args
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "scope-agent {} did not print {needle:?} within {timeout:?}; stderr so far:\n{}",
                    self.args,
                    self.stderr.snapshot()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends signal `sig` (e.g. `libc::SIGINT`) to the agent.
    pub fn signal(&self, sig: i32) {
        let pid = libc::pid_t::try_from(self.pid()).expect("pid fits in pid_t");
        // SAFETY: kill(2) takes plain integers; the pid is our own child, not
        // yet reaped (the guard reaps it), so it cannot name another process.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(
            rc,
            0,
            "kill({pid}, {sig}): {}",
            std::io::Error::last_os_error()
        );
    }

    /// Waits up to `timeout` for the agent to exit; kills it and panics with
    /// its stderr if it does not.
    pub fn wait(&mut self, timeout: Duration) -> AgentRun {
        let Some(status) = self.guard.wait_timeout(timeout) else {
            self.guard.kill();
            panic!(
                "scope-agent {} still running after {timeout:?}, killed it; stderr:\n{}",
                self.args,
                self.stderr.finish(Instant::now() + PIPE_GRACE)
            );
        };
        let pipes_closed_by = Instant::now() + PIPE_GRACE;
        AgentRun {
            status,
            stdout: self.stdout.finish(pipes_closed_by),
            stderr: self.stderr.finish(pipes_closed_by),
            out_dir: self.out_dir.clone(),
        }
    }
}

/// Runs `scope-agent <args>` to completion (at most 120 s).
pub fn run_agent(args: &[&str]) -> AgentRun {
    spawn_agent(args).wait(AGENT_TIMEOUT)
}

/// The Python program behind `duckdb()`: rows as JSON objects, integers as
/// JSON integers (DuckDB's HUGEINT sums arrive as Python ints; integral
/// DECIMALs are turned into ints, others into floats).
const DUCKDB_SCRIPT: &str = r#"
import decimal, json, sys
import duckdb

def plain(v):
    if isinstance(v, decimal.Decimal):
        return int(v) if v == v.to_integral_value() else float(v)
    return str(v)

cur = duckdb.connect().execute(sys.argv[1])
cols = [d[0] for d in cur.description]
print(json.dumps([dict(zip(cols, r)) for r in cur.fetchall()], default=plain))
"#;

/// Runs `sql` in an in-memory DuckDB (Python's `duckdb` module) and returns
/// the rows as JSON objects keyed by column name.
pub fn duckdb(sql: &str) -> Vec<serde_json::Map<String, serde_json::Value>> {
    let output = Command::new("python3")
        .args(["-c", DUCKDB_SCRIPT, sql])
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 for DuckDB: {e}"));
    assert!(
        output.status.success(),
        "DuckDB query failed ({}; `cargo xtask test` installs Python's duckdb):\n{sql}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "DuckDB output is not a JSON array of rows ({e}):\n{sql}\n{}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// The glob of every `calls` file under an output directory.
pub fn calls_glob(out: &Path) -> String {
    format!("{}/calls/**/*.parquet", out.display())
}

/// The glob of every `functions` file under an output directory.
pub fn functions_glob(out: &Path) -> String {
    format!("{}/functions/**/*.parquet", out.display())
}

/// The glob of every `sessions` file under an output directory.
pub fn sessions_glob(out: &Path) -> String {
    format!("{}/sessions/**/*.parquet", out.display())
}

/// Now, in Unix epoch nanoseconds (CLOCK_REALTIME, the clock of
/// `sessions.start_ns`).
pub fn wall_clock_ns() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("the clock is after 1970");
    i64::try_from(since_epoch.as_nanos()).expect("epoch ns fit in i64")
}

/// The one session recorded in `out` lies between `before` and `after`
/// (this test's [`wall_clock_ns`] reads before the agent started and after
/// it exited), and every call lies within the session: `start_ns` in
/// `[sessions.start_ns, sessions.end_ns]`, and `start_ns + duration_ns <=
/// end_ns` for every call with a duration. Panics with the figures
/// otherwise; returns the number of calls checked.
///
/// Both checks are needed: `end_ns` and the calls' times are kernel
/// (CLOCK_MONOTONIC) times shifted by the session's offset, so a wrong
/// offset moves them together and only the wall clock catches it late;
/// `start_ns` is a CLOCK_REALTIME read, so an offset that is early puts
/// calls before it. No slack: the session starts before the plan, the load
/// and the attach, milliseconds before the first probe can fire, and ends
/// after the last link is closed, when no probe can fire any more; the
/// offset between the two clocks is measured to well under a microsecond.
pub fn assert_calls_within_session(out: &Path, before: i64, after: i64) -> i64 {
    let sessions = duckdb(&format!(
        "SELECT start_ns, end_ns FROM read_parquet('{}', hive_partitioning=true)",
        sessions_glob(out)
    ));
    assert_eq!(sessions.len(), 1, "one session: {sessions:?}");
    let (start, end) = (
        sessions[0]["start_ns"].as_i64().expect("start_ns"),
        sessions[0]["end_ns"].as_i64().expect("end_ns"),
    );
    assert!(
        before <= start && start < end && end <= after,
        "session [{start}, {end}] is not within this test's wall-clock reads [{before}, {after}]"
    );
    let rows = duckdb(&format!(
        "SELECT count(*) AS n, count(s.session_id) AS with_session, \
           count(*) FILTER (WHERE c.start_ns < s.start_ns OR c.start_ns > s.end_ns) AS start_outside, \
           count(*) FILTER (WHERE c.duration_ns IS NOT NULL \
             AND c.start_ns + c.duration_ns > s.end_ns) AS end_outside, \
           min(c.start_ns - s.start_ns) AS first_start_after_session_start, \
           min(s.end_ns - coalesce(c.start_ns + c.duration_ns, c.start_ns)) AS last_end_before_session_end \
         FROM read_parquet('{}', hive_partitioning=true) c \
         LEFT JOIN read_parquet('{}', hive_partitioning=true) s USING (session_id)",
        calls_glob(out),
        sessions_glob(out)
    ));
    let r = &rows[0];
    let int = |k: &str| {
        r[k].as_i64()
            .unwrap_or_else(|| panic!("{k} is not an integer: {r:?}"))
    };
    let n = int("n");
    assert!(n > 0, "no calls in {}", out.display());
    assert_eq!(int("with_session"), n, "calls without a session row: {r:?}");
    assert_eq!(
        (int("start_outside"), int("end_outside")),
        (0, 0),
        "calls outside their session's [start_ns, end_ns] (figures in ns): {r:?}"
    );
    n
}

/// The argument-capture fixture, tests/fixtures/c/args.c, built at
/// `-O<opt>` (see [`c_fixture_file`]).
pub fn args_fixture(opt: &str) -> PathBuf {
    c_fixture_file("args", opt)
}

/// Whether the Go toolchain is on PATH.
pub fn have_go() -> bool {
    Command::new("go")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Builds tests/fixtures/go/fixture.go into `<target>/fixtures/go-<name>/fixture`
/// with `go build -gcflags=all=-l <extra>` (nothing inlined), unless it is
/// newer than its source. GOCACHE and GOPATH live under the target directory
/// (so it works as root in CI), GOFLAGS=-mod=mod, GOPROXY=off: no network,
/// no external modules.
fn build_go(name: &str, extra: &[&str]) -> PathBuf {
    assert!(
        have_go(),
        "the Go fixture needs `go` on PATH: `cargo xtask test` installs golang-go, or apt-get install golang-go"
    );
    let source = workspace_root().join("tests/fixtures/go/fixture.go");
    let root = target_dir().join("fixtures");
    let out = root.join(format!("go-{name}")).join("fixture");
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let source_time =
        modified(&source).unwrap_or_else(|| panic!("cannot read {}", source.display()));
    if modified(&out).is_some_and(|t| t >= source_time) {
        return out;
    }
    let dir = out.parent().expect("fixture path has a parent");
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let nonce = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = dir.join(format!(".fixture.{}.{nonce}.tmp", std::process::id()));
    let mut cmd = Command::new("go");
    cmd.args(["build", "-gcflags=all=-l"])
        .args(extra)
        .arg("-o")
        .arg(&tmp)
        .arg(&source)
        .current_dir(source.parent().expect("fixture has a directory"))
        .env("GOCACHE", root.join("go-cache"))
        .env("GOPATH", root.join("go-path"))
        .env("GOFLAGS", "-mod=mod")
        .env("GO111MODULE", "off")
        .env("GOPROXY", "off")
        .env("CGO_ENABLED", "0");
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", describe(&cmd)));
    assert!(
        output.status.success(),
        "{} failed ({}):\n{}",
        describe(&cmd),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::rename(&tmp, &out)
        .unwrap_or_else(|e| panic!("cannot rename {} to {}: {e}", tmp.display(), out.display()));
    out
}

/// The Go fixture, tests/fixtures/go/fixture.go, with symbols and DWARF
/// (`go build` defaults), built at most once per process.
pub fn go_fixture() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| build_go("plain", &[])).clone()
}

/// The Go fixture linked with `-ldflags=-s -w`: no `.symtab`, no DWARF.
pub fn go_stripped_fixture() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| build_go("stripped", &["-ldflags=-s -w"]))
        .clone()
}

/// The C source of a generated program with `n` tiny functions `f0` ..
/// `f<n-1>` plus one more, `fhot`, for attach-at-scale tests and benchmarks.
/// Every function is `noipa` (never inlined, cloned or merged) and adds its
/// own number to a volatile, so each is a distinct probeable function.
///
/// Modes: `run K` calls every `f<i>` K times (in order, through a table)
/// and `fhot` 3 times, then prints `ok`; `serve` prints `ready <pid>` and
/// then, per stdin line `run K`, does the same and answers `done`.
pub fn many_functions_source(n: usize) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(64 * n + 2048);
    s.push_str(
        "/* Generated by scope_tests::many_functions_source. */\n\
         #include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n#include <unistd.h>\n\
         #if defined(__clang__)\n#define PROBED __attribute__((noinline))\n\
         #else\n#define PROBED __attribute__((noipa, noinline))\n#endif\n\
         volatile long sink;\n",
    );
    for i in 0..n {
        let _ = writeln!(s, "PROBED void f{i}(void) {{ sink += {i}; }}");
    }
    s.push_str("PROBED void fhot(void) { sink += -1; }\n");
    s.push_str("static void (*const table[])(void) = {\n");
    for i in 0..n {
        let _ = writeln!(s, "    f{i},");
    }
    s.push_str(
        "};\n\
         static void run(long k) {\n\
         \x20   for (long r = 0; r < k; r++)\n\
         \x20       for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)\n\
         \x20           table[i]();\n\
         \x20   fhot(); fhot(); fhot();\n\
         }\n\
         int main(int argc, char **argv) {\n\
         \x20   char line[256];\n\
         \x20   long k;\n\
         \x20   if (argc > 2 && strcmp(argv[1], \"run\") == 0) {\n\
         \x20       run(strtol(argv[2], NULL, 10));\n\
         \x20       printf(\"ok\\n\");\n\
         \x20       return 0;\n\
         \x20   }\n\
         \x20   if (argc > 1 && strcmp(argv[1], \"serve\") == 0) {\n\
         \x20       printf(\"ready %d\\n\", (int)getpid());\n\
         \x20       fflush(stdout);\n\
         \x20       while (fgets(line, sizeof line, stdin)) {\n\
         \x20           if (sscanf(line, \"run %ld\", &k) == 1) {\n\
         \x20               run(k);\n\
         \x20               printf(\"done\\n\");\n\
         \x20           } else {\n\
         \x20               printf(\"error: unknown command: %s\", line);\n\
         \x20           }\n\
         \x20           fflush(stdout);\n\
         \x20       }\n\
         \x20       return 0;\n\
         \x20   }\n\
         \x20   fprintf(stderr, \"usage: many run K | serve\\n\");\n\
         \x20   return 2;\n\
         }\n",
    );
    s
}

/// Compiles generated C `source` (with `cc -g -O<opt> <extra>`) into
/// `<target>/fixtures/generated/<name>/<name>` unless the source there is
/// already identical, and returns the binary's path. Safe to call from
/// parallel processes (compiles to a name of its own, then renames).
pub fn build_generated_c(
    name: &str,
    source: &str,
    opt: &str,
    extra: &[&str],
) -> Result<PathBuf, String> {
    let dir = target_dir().join("fixtures/generated").join(name);
    let src = dir.join(format!("{name}.c"));
    let out = dir.join(name);
    let flags_file = dir.join("flags");
    let flags = format!("-O{opt} {}", extra.join(" "));
    if out.is_file()
        && std::fs::read_to_string(&src).is_ok_and(|s| s == source)
        && std::fs::read_to_string(&flags_file).is_ok_and(|f| f == flags)
    {
        return Ok(out);
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let nonce = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tag = format!("{}.{nonce}", std::process::id());
    let tmp_src = dir.join(format!(".{name}.{tag}.c"));
    let tmp_out = dir.join(format!(".{name}.{tag}.tmp"));
    std::fs::write(&tmp_src, source)
        .map_err(|e| format!("cannot write {}: {e}", tmp_src.display()))?;
    let mut cmd = Command::new("cc");
    cmd.args(["-g", &format!("-O{opt}"), "-fno-omit-frame-pointer"])
        .args(extra)
        .arg("-o")
        .arg(&tmp_out)
        .arg(&tmp_src);
    let output = cmd
        .output()
        .map_err(|e| format!("cannot run {}: {e}", describe(&cmd)))?;
    if !output.status.success() {
        let _ = std::fs::remove_file(&tmp_out);
        let _ = std::fs::remove_file(&tmp_src);
        return Err(format!(
            "{} failed ({}):\n{}",
            describe(&cmd),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let renamed = std::fs::rename(&tmp_out, &out)
        .and_then(|()| std::fs::rename(&tmp_src, &src))
        .and_then(|()| std::fs::write(&flags_file, &flags));
    renamed.map_err(|e| format!("cannot move {} into place: {e}", out.display()))?;
    Ok(out)
}

/// The generated program with `n` functions (see [`many_functions_source`]),
/// built at `-O2`.
pub fn many_functions_fixture(n: usize) -> PathBuf {
    build_generated_c(&format!("many{n}"), &many_functions_source(n), "2", &[])
        .unwrap_or_else(|e| panic!("building the generated {n}-function program: {e}"))
}

/// The BPF links process `pid` holds open, as (link id, link type) from
/// `/proc/PID/fdinfo` (`link_type: uprobe_multi`, `perf`, ...).
pub fn bpf_links_held_by(pid: u32) -> Vec<(u32, String)> {
    let dir = format!("/proc/{pid}/fdinfo");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut links = Vec::new();
    for entry in entries.flatten() {
        let Ok(info) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
        };
        if let (Some(id), Some(kind)) = (field("link_id:"), field("link_type:"))
            && let Ok(id) = id.parse()
        {
            links.push((id, kind));
        }
    }
    links.sort();
    links
}

/// The ids of every BPF link in the system (`bpftool -j link show`).
pub fn bpf_link_ids() -> Vec<u32> {
    let out = Command::new("bpftool")
        .args(["-j", "link", "show"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run bpftool -j link show: {e}"));
    assert!(
        out.status.success(),
        "bpftool -j link show failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let links: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bpftool -j link show printed something other than JSON: {e}"));
    links
        .iter()
        .filter_map(|l| l["id"].as_u64().and_then(|id| u32::try_from(id).ok()))
        .collect()
}

/// The inlined-functions fixture, tests/fixtures/c/inlined.c (`sq` inlined
/// into `f1` and `f2`), built at `-O<opt>` (see [`c_fixture_file`]).
pub fn inlined_fixture(opt: &str) -> PathBuf {
    c_fixture_file("inlined", opt)
}

/// The string-argument fixture, tests/fixtures/c/strings.c, built at
/// `-O<opt>` (see [`c_fixture_file`]).
pub fn strings_fixture(opt: &str) -> PathBuf {
    c_fixture_file("strings", opt)
}

/// tests/fixtures/c/`<name>`.c built at `-O<opt>` with [`build_generated_c`]
/// (rebuilt when the source changes; safe from parallel test processes).
pub fn c_fixture_file(name: &str, opt: &str) -> PathBuf {
    let path = workspace_root().join(format!("tests/fixtures/c/{name}.c"));
    let source = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    build_generated_c(&format!("{name}-O{opt}"), &source, opt, &[])
        .unwrap_or_else(|e| panic!("building {}: {e}", path.display()))
}

/// tests/fixtures/c/request.c (a request read on one thread, handled on
/// another) recorded with `-f handle_request --hooks HOOKS` (the hooks are
/// what the tests using it are about), `n` requests; the run, asserted
/// successful, and the port the fixture listened on.
pub fn record_request_fixture(out: &Path, hooks: &str, n: usize) -> (AgentRun, u16) {
    let bin = c_fixture_file("request", "1");
    let n = n.to_string();
    let run = record_with(
        out,
        &["handle_request"],
        &["--hooks", hooks],
        &[bin.to_str().unwrap(), &n],
    );
    assert_success(&run);
    let port = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("port "))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("the fixture printed no port: {}", run.stdout));
    (run, port)
}

/// Runs `scope-agent record --out OUT [-f PATTERN]... EXTRA... -- CMD...` to
/// completion.
pub fn record_with(out: &Path, patterns: &[&str], extra: &[&str], cmd: &[&str]) -> AgentRun {
    let out = out.display().to_string();
    let mut argv = vec!["record", "--out", out.as_str()];
    for p in patterns {
        argv.extend(["-f", p]);
    }
    argv.extend_from_slice(extra);
    argv.push("--");
    argv.extend_from_slice(cmd);
    run_agent(&argv)
}

/// Panics with the agent's status and stderr unless it exited successfully.
pub fn assert_success(run: &AgentRun) {
    assert!(
        run.status.success(),
        "agent failed: {:?}\nstderr:\n{}",
        run.status,
        run.stderr
    );
}

/// tests/fixtures/rust/`<name>`.rs built with plain `rustc -g -C
/// opt-level=<opt>` and crate name `<name>` (its functions demangle as
/// `<name>::f`) into `<target>/fixtures/generated/<name>-rust-O<opt>/<name>`,
/// rebuilt when the source differs from the copy kept next to it. Compiles
/// the file in place (DWARF names it) to a name of its own, then renames:
/// safe from parallel test processes.
pub fn rust_fixture_file(name: &str, opt: &str) -> PathBuf {
    let path = workspace_root().join(format!("tests/fixtures/rust/{name}.rs"));
    let source = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let dir = target_dir()
        .join("fixtures/generated")
        .join(format!("{name}-rust-O{opt}"));
    let (copy, out) = (dir.join(format!("{name}.rs")), dir.join(name));
    if out.is_file() && std::fs::read_to_string(&copy).is_ok_and(|s| s == source) {
        return out;
    }
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let nonce = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = dir.join(format!(".{name}.{}.{nonce}.tmp", std::process::id()));
    let mut cmd = Command::new("rustc");
    cmd.args(["-g", "-C", &format!("opt-level={opt}"), "-C", "debuginfo=2"])
        .args(["--edition", "2021", "--crate-name", name, "-o"])
        .arg(&tmp)
        .arg(&path);
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", describe(&cmd)));
    if !output.status.success() {
        let _ = std::fs::remove_file(&tmp);
        panic!(
            "{} failed ({}):\n{}",
            describe(&cmd),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    std::fs::rename(&tmp, &out)
        .and_then(|()| std::fs::write(&copy, &source))
        .unwrap_or_else(|e| panic!("cannot move {} into place: {e}", out.display()));
    out
}
