//! `record --out s3://bucket/prefix` against a real S3 server (moto on
//! loopback): every file uploaded whole and read back by DuckDB's httpfs
//! (an independent reader) with exact call counts; an endpoint unreachable
//! for the whole session (nothing lost: the spool is kept, said in one
//! line, and `scope-agent upload` sends it later); an endpoint that comes up
//! mid-recording (the retries upload everything); refused credentials and a
//! missing bucket (one line, nothing recorded).
//!
//! DuckDB 1.4.4 with httpfs lives in a venv under the target directory
//! (`cargo xtask test` makes it), apart from the system duckdb the other
//! tests use.

#[path = "../../scope-query/tests/objstore_support/mod.rs"]
mod objstore_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use objstore_support::{KEY_ID, Moto, SECRET, aws_env_for, boto3_list, closed_port};
use scope_tests::*;

/// How long a recording here may take, uploads included.
const AGENT_TIMEOUT: Duration = Duration::from_secs(150);

/// `scope-agent` with the AWS environment, its stderr in a file (read while
/// it runs), killed on drop.
struct Agent {
    guard: ChildGuard,
    stderr_path: PathBuf,
    _logs: tempfile::TempDir,
}

impl Agent {
    fn spawn(args: &[&str], env: &[(String, String)]) -> Agent {
        let logs = tempfile::tempdir().unwrap();
        let stderr_path = logs.path().join("stderr");
        let err = std::fs::File::create(&stderr_path).unwrap();
        let guard = ChildGuard::spawn(
            Command::new(agent_bin())
                .args(args)
                .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .env("HOME", logs.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(err),
        );
        Agent {
            guard,
            stderr_path,
            _logs: logs,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    fn wait_for_stderr(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !complete_lines(&self.stderr()).contains(needle) {
            assert!(
                self.guard.wait_timeout(Duration::ZERO).is_none(),
                "the agent exited before printing {needle:?}:\n{}",
                self.stderr()
            );
            assert!(
                Instant::now() < deadline,
                "the agent did not print {needle:?} within {timeout:?}:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait(mut self) -> (ExitStatus, String) {
        let status = self.guard.wait_timeout(AGENT_TIMEOUT).unwrap_or_else(|| {
            panic!(
                "the agent still runs after {AGENT_TIMEOUT:?}:\n{}",
                self.stderr()
            )
        });
        (status, self.stderr())
    }
}

fn run(args: &[&str], env: &[(String, String)]) -> (ExitStatus, String) {
    Agent::spawn(args, env).wait()
}

/// The Python of the httpfs venv, or a panic saying how to make it.
fn httpfs_python() -> PathBuf {
    let python = target_dir().join("duckdb-httpfs-venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run `cargo xtask test` (it installs duckdb==1.4.4 and duckdb-ext-httpfs in that venv)",
        python.display()
    );
    python
}

const HTTPFS_SCRIPT: &str = r#"
import glob, json, sys
import duckdb, duckdb_ext
port, key, secret, sql = sys.argv[1:5]
ext = glob.glob(duckdb_ext.__path__[0] + "/extensions/v1.4.4/*/httpfs.duckdb_extension")[0]
con = duckdb.connect()
con.execute(f"LOAD '{ext}'")
con.execute(f"CREATE SECRET (TYPE s3, KEY_ID '{key}', SECRET '{secret}', REGION 'us-east-1', "
            f"ENDPOINT '127.0.0.1:{port}', URL_STYLE 'path', USE_SSL false)")
cur = con.execute(sql)
cols = [d[0] for d in cur.description]
print(json.dumps([dict(zip(cols, r)) for r in cur.fetchall()], default=str))
"#;

/// Rows of `sql` run by DuckDB 1.4.4 over `s3://` through httpfs and moto.
fn duckdb_s3(moto: &Moto, sql: &str) -> Vec<serde_json::Map<String, serde_json::Value>> {
    let out = Command::new(httpfs_python())
        .args([
            "-c",
            HTTPFS_SCRIPT,
            &moto.port.to_string(),
            KEY_ID,
            SECRET,
            sql,
        ])
        .output()
        .expect("run the httpfs venv's python");
    assert!(
        out.status.success(),
        "DuckDB httpfs query failed:\n{sql}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON rows")
}

/// Calls per function name under `root` (`s3://…` or a directory), with
/// the data contract's join on the Hive `session_id`.
fn counts_sql(root: &str) -> String {
    format!(
        "SELECT f.name AS name, count(*) AS calls \
         FROM read_parquet('{root}/calls/**/*.parquet', hive_partitioning = true) c \
         JOIN read_parquet('{root}/functions/**/*.parquet', hive_partitioning = true) f \
         USING (session_id, function_id) GROUP BY f.name ORDER BY f.name"
    )
}

fn counts(rows: Vec<serde_json::Map<String, serde_json::Value>>) -> BTreeMap<String, i64> {
    rows.into_iter()
        .map(|r| {
            let calls = match &r["calls"] {
                serde_json::Value::Number(n) => n.as_i64().unwrap(),
                other => other.as_str().unwrap().parse().unwrap(),
            };
            (r["name"].as_str().unwrap().to_string(), calls)
        })
        .collect()
}

fn expect(pairs: &[(&str, i64)]) -> BTreeMap<String, i64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// The one session directory the agent made under the spool root.
fn session_spool(spool: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(spool)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 1, "one session in the spool: {dirs:?}");
    dirs.into_iter().next().unwrap()
}

fn mode_of(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn record_to_s3_then_duckdb_httpfs_reads_exact_counts() {
    require_root();
    let moto = Moto::start();
    moto.create_bucket("scope");
    let spool = tempfile::tempdir().unwrap();
    let bin = fixture(Lang::C, "2");
    let (status, stderr) = run(
        &[
            "record",
            "--out",
            "s3://scope/team/run1",
            "--spool",
            spool.path().to_str().unwrap(),
            "--segment-rows",
            "250",
            "-f",
            "a_fn",
            "-f",
            "b_fn",
            "-f",
            "c_fn",
            "-f",
            "leaf",
            "--",
            bin.to_str().unwrap(),
            "nest",
            "300",
        ],
        &moto.aws_env(),
    );
    assert!(status.success(), "{status}:\n{stderr}");
    assert!(
        stderr.contains("to s3://scope/team/run1 (session"),
        "{stderr}"
    );
    assert!(
        stderr.contains("scope: uploaded ")
            && stderr.contains(" files (")
            && !stderr.contains("warning"),
        "{stderr}"
    );
    // Everything uploaded: the session's spool is gone, the root stays.
    assert_eq!(
        std::fs::read_dir(spool.path()).unwrap().count(),
        0,
        "{stderr}"
    );

    // boto3: 1,200 calls in segments of 250 rows are 5 calls files, and
    // one file per other table; each key once, nothing hidden.
    let keys = boto3_list(&moto.endpoint(), "scope", "team/run1/");
    let per_table = keys
        .iter()
        .fold(BTreeMap::<String, usize>::new(), |mut m, (k, _)| {
            let table = k
                .trim_start_matches("team/run1/")
                .split('/')
                .next()
                .unwrap();
            *m.entry(table.to_string()).or_default() += 1;
            m
        });
    assert_eq!(per_table.get("calls"), Some(&5), "{keys:?}");
    for table in ["functions", "losses", "sessions", "totals"] {
        assert_eq!(per_table.get(table), Some(&1), "{table}: {keys:?}");
    }
    assert!(
        keys.iter()
            .all(|(k, n)| k.ends_with(".parquet") && !k.contains("/.") && *n > 0),
        "{keys:?}"
    );
    let uploaded_line = stderr
        .lines()
        .find(|l| l.starts_with("scope: uploaded "))
        .unwrap();
    assert!(
        uploaded_line.starts_with(&format!("scope: uploaded {} files", keys.len())),
        "{uploaded_line} vs {} keys",
        keys.len()
    );

    // DuckDB's httpfs reads what scope wrote: exact counts.
    let c = counts(duckdb_s3(&moto, &counts_sql("s3://scope/team/run1")));
    assert_eq!(
        c,
        expect(&[("a_fn", 300), ("b_fn", 300), ("c_fn", 300), ("leaf", 300)]),
        "{stderr}"
    );
    let s = duckdb_s3(
        &moto,
        "SELECT count(*) AS n, sum(calls_recorded) AS rec FROM \
         read_parquet('s3://scope/team/run1/sessions/**/*.parquet', hive_partitioning = true)",
    );
    assert_eq!(s[0]["n"], 1);
    assert_eq!(s[0]["rec"], 1200);

    // scope's own reading commands read the same store through --data
    // s3://…, configured by the same environment.
    let (status, out) = run_stdout(
        &[
            "query",
            "--data",
            "s3://scope/team/run1",
            "--format",
            "csv",
            "SELECT f.name, count(*) AS n FROM calls c JOIN functions f USING (session_id, function_id) \
             GROUP BY f.name ORDER BY f.name",
        ],
        &moto.aws_env(),
    );
    assert!(status.success(), "{out}");
    assert_eq!(out, "name,n\na_fn,300\nb_fn,300\nc_fn,300\nleaf,300\n");
    let (status, out) = run_stdout(
        &[
            "report",
            "--data",
            "s3://scope/team/run1",
            "--format",
            "csv",
        ],
        &moto.aws_env(),
    );
    assert!(status.success(), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("\"leaf\",,") && l.contains(",300,true,")),
        "{out}"
    );
    // A bucket that is not there: one line.
    let (status, out) = run_stdout(&["report", "--data", "s3://nosuch/x"], &moto.aws_env());
    assert!(!status.success());
    assert!(out.contains("bucket 'nosuch' does not exist"), "{out}");
}

/// Runs `scope-agent ARGS` with `env`; (status, stdout, or stderr when it
/// failed).
fn run_stdout(args: &[&str], env: &[(String, String)]) -> (ExitStatus, String) {
    let out = Command::new(agent_bin())
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("run scope-agent");
    let text = if out.status.success() {
        &out.stdout
    } else {
        &out.stderr
    };
    (out.status, String::from_utf8_lossy(text).into_owned())
}

#[test]
fn an_unreachable_endpoint_keeps_the_spool_and_upload_sends_it_later() {
    require_root();
    let port = closed_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let env = aws_env_for(&endpoint);
    let spool = tempfile::tempdir().unwrap();
    let bin = fixture(Lang::C, "2");
    let (status, stderr) = run(
        &[
            "record",
            "--out",
            "s3://scope/later",
            "--spool",
            spool.path().to_str().unwrap(),
            "--segment-rows",
            "100",
            "--upload-wait",
            "2s",
            "-f",
            "leaf",
            "--",
            bin.to_str().unwrap(),
            "count",
            "500",
        ],
        &env,
    );
    // The command's status: the recording itself succeeded.
    assert!(status.success(), "{status}:\n{stderr}");
    let unreachable = format!("s3://scope/later: cannot reach {endpoint} (connection refused)");
    assert!(
        stderr.contains(&format!("scope: warning: {unreachable}; recording anyway")),
        "{stderr}"
    );
    let dir = session_spool(spool.path());
    let left = stderr
        .lines()
        .find(|l| l.contains("not uploaded to s3://scope/later"))
        .unwrap_or_else(|| panic!("no line about the files left:\n{stderr}"));
    assert!(
        left.contains(&unreachable)
            && left.contains(&format!(
                "upload them with `scope-agent upload {} s3://scope/later`",
                dir.display()
            )),
        "{left}"
    );
    // Nothing lost: every call is in the spool, which is private.
    assert_eq!(mode_of(&dir), 0o700);
    let local = dir.display().to_string();
    assert_eq!(
        counts(duckdb(&counts_sql(&local))),
        expect(&[("leaf", 500)])
    );

    // The endpoint comes up: `scope-agent upload` sends the spool.
    let moto = Moto::start_on(port, &[]);
    moto.create_bucket("scope");
    let (status, out) = run(&["upload", &local, "s3://scope/later"], &env);
    assert!(status.success(), "{status}:\n{out}");
    assert!(out.contains("scope: uploaded "), "{out}");
    assert!(!dir.exists(), "the uploaded spool is removed: {out}");
    assert_eq!(
        counts(duckdb_s3(&moto, &counts_sql("s3://scope/later"))),
        expect(&[("leaf", 500)])
    );
}

#[test]
fn an_endpoint_that_comes_up_mid_recording_gets_everything() {
    require_root();
    let port = closed_port();
    let env = aws_env_for(&format!("http://127.0.0.1:{port}"));
    let spool = tempfile::tempdir().unwrap();
    let bin = fixture(Lang::C, "2");
    // 80 calls of 100 ms: 8 s of recording, a segment every 300 ms.
    let mut agent = Agent::spawn(
        &[
            "record",
            "--out",
            "s3://scope/mid",
            "--spool",
            spool.path().to_str().unwrap(),
            "--segment-time",
            "300ms",
            "-f",
            "sleeper",
            "--",
            bin.to_str().unwrap(),
            "sleep",
            "100",
            "80",
        ],
        &env,
    );
    agent.wait_for_stderr("recording anyway", Duration::from_secs(60));
    // Let a few segments pile up in the spool.
    std::thread::sleep(Duration::from_secs(1));
    let moto = Moto::start_on(port, &[]);
    moto.create_bucket("scope");
    let (status, stderr) = agent.wait();
    assert!(status.success(), "{status}:\n{stderr}");
    assert!(
        stderr.contains("scope: uploads to s3://scope/mid resumed"),
        "{stderr}"
    );
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("scope: uploaded ") && l.contains("to s3://scope/mid")),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_dir(spool.path()).unwrap().count(),
        0,
        "{stderr}"
    );
    assert_eq!(
        counts(duckdb_s3(&moto, &counts_sql("s3://scope/mid"))),
        expect(&[("sleeper", 80)]),
        "{stderr}"
    );
}

#[test]
fn refused_credentials_and_a_missing_bucket_are_one_line_and_record_nothing() {
    require_root();
    let bin = fixture(Lang::C, "2");
    let spool = tempfile::tempdir().unwrap();
    let record = |url: &str, env: &[(String, String)]| {
        run(
            &[
                "record",
                "--out",
                url,
                "--spool",
                spool.path().to_str().unwrap(),
                "-f",
                "leaf",
                "--",
                bin.to_str().unwrap(),
                "count",
                "10",
            ],
            env,
        )
    };

    let moto = Moto::start_on(closed_port(), &[("INITIAL_NO_AUTH_ACTION_COUNT", "1")]);
    moto.create_bucket("locked");
    let (status, stderr) = record("s3://locked/p", &moto.aws_env());
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.trim_end(),
        "scope-agent: error: s3://locked/p: access denied (InvalidAccessKeyId) (check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)"
    );

    let open = Moto::start();
    let (status, stderr) = record("s3://nosuch/p", &open.aws_env());
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.trim_end(),
        format!(
            "scope-agent: error: s3://nosuch/p: bucket 'nosuch' does not exist at {}",
            open.endpoint()
        )
    );
    // Nothing was recorded, nothing spooled.
    assert_eq!(std::fs::read_dir(spool.path()).unwrap().count(), 0);
}

#[test]
fn compact_then_move_to_s3_keeps_every_call_readable() {
    require_root();
    let moto = Moto::start();
    moto.create_bucket("cold");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let bin = fixture(Lang::C, "2");
    // `record` with --segment-rows 250 (small segments to merge) and -f.
    let (status, stderr) = run(
        &[
            "record",
            "--out",
            &data,
            "--segment-rows",
            "250",
            "-f",
            "a_fn",
            "-f",
            "b_fn",
            "-f",
            "c_fn",
            "-f",
            "leaf",
            "--",
            bin.to_str().unwrap(),
            "nest",
            "300",
        ],
        &[],
    );
    assert!(status.success(), "{stderr}");
    let (status, out) = run_stdout(&["compact", "--data", &data], &[]);
    assert!(status.success(), "{out}");
    assert!(
        out.contains("1200 calls, ") && out.contains("bytes per call"),
        "{out}"
    );
    let calls_dir = std::fs::read_dir(dir.path().join("calls"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let names: Vec<String> = std::fs::read_dir(&calls_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["part-c00000.parquet".to_string()], "{out}");
    // DuckDB over the compacted files: the same counts.
    let rows = duckdb(&format!(
        "SELECT count(*) AS n FROM read_parquet('{}', hive_partitioning = true)",
        calls_glob(dir.path())
    ));
    assert_eq!(rows[0]["n"], 1200);
    // A second run has nothing to do.
    let (status, out) = run_stdout(&["compact", "--data", &data], &[]);
    assert!(status.success(), "{out}");
    assert!(!out.contains("compacted "), "{out}");
    // Move the cold session to S3: local files go, the store reads there.
    let (status, out) = run_stdout(
        &["compact", "--data", &data, "--to", "s3://cold/archive"],
        &moto.aws_env(),
    );
    assert!(status.success(), "{out}");
    assert!(
        out.contains("moved ") && out.contains("s3://cold/archive"),
        "{out}"
    );
    assert!(!calls_dir.exists(), "the local copy stayed: {out}");
    let (status, out) = run_stdout(
        &["report", "--data", "s3://cold/archive", "--format", "csv"],
        &moto.aws_env(),
    );
    assert!(status.success(), "{out}");
    for f in ["a_fn", "b_fn", "c_fn", "leaf"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("\"{f}\",,")) && l.contains(",300,true,")),
            "{f}: {out}"
        );
    }
    // Time travel on the compacted, remote store.
    let (status, out) = run_stdout(
        &[
            "query",
            "--data",
            "s3://cold/archive",
            "--format",
            "csv",
            "SELECT tid, start_ns FROM calls c JOIN functions f USING (session_id, function_id) \
             WHERE f.name = 'leaf' ORDER BY start_ns LIMIT 1",
        ],
        &moto.aws_env(),
    );
    assert!(status.success(), "{out}");
    let row: Vec<&str> = out.lines().nth(1).unwrap().split(',').collect();
    let (status, out) = run_stdout(
        &[
            "stack",
            "--data",
            "s3://cold/archive",
            "--tid",
            row[0],
            "--at",
            row[1],
        ],
        &moto.aws_env(),
    );
    assert!(status.success(), "{out}");
    assert!(
        out.contains("#0  leaf(") && out.contains("#3  a_fn("),
        "{out}"
    );
}
