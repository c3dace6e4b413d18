//! `--hooks` end to end (needs root), against real servers on loopback:
//! PostgreSQL (Debian's postgresql 15, started here as the unprivileged
//! `postgres` user on a temporary directory and a free port) queried by
//! psql, and an HTTPS-style exchange between `openssl s_server` and
//! `s_client`. What is recorded must equal what was sent: the queries'
//! text, the bytes and (with --hook-payload) the plaintext.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use scope_tests::{
    ChildGuard, assert_success, calls_glob, duckdb, functions_glob, record_with, require_root,
};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A PostgreSQL server for one test, stopped on drop.
struct Postgres {
    _dir: tempfile::TempDir,
    data: PathBuf,
    port: u16,
}

impl Postgres {
    fn start() -> Postgres {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::os::unix::fs::chown(dir.path(), Some(postgres_uid()), None).unwrap();
        let as_postgres = |args: &[&str]| {
            let out = Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .args(args)
                .output()
                .expect("runuser");
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let initdb = format!("{PG_BIN}/initdb");
        as_postgres(&[
            &initdb,
            "-D",
            data.to_str().unwrap(),
            "-A",
            "trust",
            "-U",
            "postgres",
        ]);
        let port = free_port();
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1",
            dir.path().display()
        );
        let pg_ctl = format!("{PG_BIN}/pg_ctl");
        let log = dir.path().join("log");
        as_postgres(&[
            &pg_ctl,
            "-D",
            data.to_str().unwrap(),
            "-o",
            &opts,
            "-l",
            log.to_str().unwrap(),
            "-w",
            "start",
        ]);
        Postgres {
            _dir: dir,
            data,
            port,
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--", &format!("{PG_BIN}/pg_ctl"), "-D"])
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

fn postgres_uid() -> u32 {
    let out = Command::new("id")
        .args(["-u", "postgres"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// The hooked calls of a session: (function, arg_strings, args, ret).
fn hooked(out: &Path) -> Vec<serde_json::Map<String, serde_json::Value>> {
    duckdb(&format!(
        "SELECT f.name AS name, f.param_names AS params, c.arg_strings AS strings, \
         c.args AS args, c.ret AS ret \
         FROM read_parquet('{}', hive_partitioning=true) c \
         JOIN read_parquet('{}', hive_partitioning=true) f USING (session_id, function_id) \
         ORDER BY c.start_ns",
        calls_glob(out),
        functions_glob(out)
    ))
}

#[test]
fn the_queries_recorded_are_the_queries_psql_sent() {
    require_root();
    assert!(
        Path::new(PG_BIN).join("initdb").exists(),
        "PostgreSQL 15 is needed (cargo xtask test installs it)"
    );
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let sent = [
        "SELECT 1",
        "SELECT 'scope' || 2",
        "SELECT count(*) FROM pg_class",
    ];
    let psql = format!("{PG_BIN}/psql");
    let port = pg.port.to_string();
    let mut cmd = vec![
        psql.as_str(),
        "-X",
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-U",
        "postgres",
        "-d",
        "postgres",
    ];
    for q in &sent {
        cmd.extend(["-c", q]);
    }
    // --hooks pg is what this test is about.
    let run = record_with(&out, &[], &["--hooks", "pg"], &cmd);
    assert_success(&run);
    let rows = hooked(&out);
    let queries: Vec<&str> = rows
        .iter()
        .filter_map(|r| r["strings"].as_array())
        .filter_map(|s| s.get(1).and_then(|q| q.as_str()))
        .collect();
    assert_eq!(queries, sent, "{rows:?}\n{}", run.stderr);
    // Named parameters from scope's own signature (libpq has no DWARF).
    let first = rows.iter().find(|r| r["strings"].is_array()).unwrap();
    assert_eq!(first["params"][1], "query", "{first:?}");
}

/// Waits until `child`'s stdout prints a line containing `needle`; returns
/// the reader for the rest.
fn wait_line(
    reader: &mut BufReader<std::process::ChildStdout>,
    needle: &str,
    what: &str,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut all = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || Instant::now() > deadline {
            panic!("{what} ended without printing {needle:?}:\n{all}");
        }
        all.push_str(&line);
        if line.contains(needle) {
            return all;
        }
    }
}

/// `openssl s_server` for one connection on a free loopback port, with a
/// certificate made in `dir`, listening: the server, its stdout, its port.
fn tls_server(dir: &Path) -> (ChildGuard, BufReader<std::process::ChildStdout>, u16) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let port = free_port();
    let mut server = ChildGuard::spawn(
        Command::new("openssl")
            .args(["s_server", "-naccept", "1", "-accept"])
            .arg(port.to_string())
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let mut server_out = BufReader::new(server.child().stdout.take().unwrap());
    // s_server says ACCEPT once it listens (a probe connection would be
    // its one accept).
    wait_line(&mut server_out, "ACCEPT", "s_server");
    (server, server_out, port)
}

#[test]
fn tls_bytes_and_plaintext_equal_what_was_sent() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let (server, mut server_out, port) = tls_server(dir.path());
    let message = "hello scope over TLS\n";
    let input = dir.path().join("input");
    std::fs::File::create(&input)
        .unwrap()
        .write_all(message.as_bytes())
        .unwrap();
    let out = dir.path().join("out");
    // s_client reads the message from stdin (a file: the agent passes its
    // stdin on), writes it with SSL_write, and exits at the file's end.
    let connect = format!("127.0.0.1:{port}");
    let agent = scope_tests::agent_bin();
    let run = Command::new(agent)
        .args(["record", "--out"])
        .arg(&out)
        // The flags this test is about.
        .args([
            "--hooks",
            "tls",
            "--hook-payload",
            "64",
            "--",
            "openssl",
            "s_client",
        ])
        .args(["-connect", &connect, "-quiet", "-no_ign_eof"])
        .stdin(std::fs::File::open(&input).unwrap())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let got = wait_line(&mut server_out, "hello scope", "s_server");
    assert!(got.contains(message.trim_end()), "{got}");
    let rows = hooked(&out);
    let writes: Vec<_> = rows
        .iter()
        .filter(|r| {
            r["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("SSL_write"))
        })
        .collect();
    // s_client may write 0 bytes first: its payload is empty, not whatever
    // the buffer held.
    for w in writes.iter().filter(|w| w["args"][2] == 0) {
        assert_eq!(w["strings"][1].as_str(), Some(""), "{w:?}");
    }
    let writes: Vec<_> = writes.into_iter().filter(|w| w["args"][2] != 0).collect();
    assert_eq!(writes.len(), 1, "{rows:?}\n{stderr}");
    let w = writes[0];
    assert_eq!(w["strings"][1].as_str(), Some(message), "{w:?}");
    // SSL_write returns the bytes written; SSL_write_ex returns 1 and
    // writes the count through its 4th argument (not read).
    if w["name"] == "SSL_write" {
        assert_eq!(w["ret"].as_i64(), Some(message.len() as i64), "{w:?}");
    }
    assert_eq!(w["args"][2].as_i64(), Some(message.len() as i64), "{w:?}");
    drop(server);
}

/// A hooked library loaded after the start: Python links no libssl, and
/// `import ssl` dlopens it. Its hooks wait for it, and once it is mapped
/// its calls carry their payload as at the start (the layouts scope knows
/// for SSL_write_ex, not six registers blindly). Python waits for the
/// agent to say it attached libssl before it connects. Flags: `--hooks
/// tls --hook-payload 64` (the subject).
#[test]
fn a_hooked_library_loaded_later_gets_its_payloads() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let (server, mut server_out, port) = tls_server(dir.path());
    let go = dir.path().join("go");
    let message = "hello scope over a late libssl\n";
    let script = format!(
        "import os, socket, ssl, time\n\
         while not os.path.exists({go:?}): time.sleep(0.01)\n\
         ctx = ssl.create_default_context()\n\
         ctx.check_hostname = False\n\
         ctx.verify_mode = ssl.CERT_NONE\n\
         s = ctx.wrap_socket(socket.create_connection(('127.0.0.1', {port})), server_hostname='localhost')\n\
         s.sendall({message:?}.encode())\n\
         s.close()\n",
        go = go.display().to_string(),
    );
    let out = dir.path().join("out");
    let out_arg = out.display().to_string();
    let mut agent = scope_tests::spawn_agent(&[
        "record",
        "--out",
        &out_arg,
        "--hooks",
        "tls",
        "--hook-payload",
        "64",
        "--",
        "python3",
        "-c",
        &script,
    ]);
    agent.wait_for_stderr(
        "in /usr/lib/x86_64-linux-gnu/libssl.so",
        Duration::from_secs(60),
    );
    std::fs::File::create(&go).unwrap();
    let run = agent.wait(Duration::from_secs(60));
    assert!(run.status.success(), "{}", run.stderr);
    let got = wait_line(&mut server_out, "hello scope", "s_server");
    assert!(got.contains(message.trim_end()), "{got}");
    let writes: Vec<_> = hooked(&out)
        .into_iter()
        .filter(|r| {
            r["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("SSL_write"))
                && r["args"][2] != 0
        })
        .collect();
    assert_eq!(writes.len(), 1, "{writes:?}\n{}", run.stderr);
    let w = &writes[0];
    assert_eq!(w["strings"][1].as_str(), Some(message), "{w:?}");
    assert_eq!(w["args"][2].as_i64(), Some(message.len() as i64), "{w:?}");
    assert_eq!(w["params"][1], "buf", "{w:?}");
    drop(server);
}

/// A request that crosses threads (tests/fixtures/c/request.c): the reader
/// thread's recv starts it, the worker it wakes handles it and sends the
/// answer. Every call of the worker's is tied to the read that started its
/// request (`request_id`), and connect's peer is the address connected to.
/// Flags: `--hooks net` (the subject) and `-f handle_request`.
#[test]
fn a_request_is_followed_from_its_read_to_the_worker_that_answers_it() {
    require_root();
    const N: usize = 5;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (run, port) = scope_tests::record_request_fixture(&out, "net", N);
    let rows = duckdb(&format!(
        "SELECT f.name AS name, c.tid AS tid, c.call_id AS id, c.request_id AS req, \
         c.ret AS ret, c.arg_strings AS strings \
         FROM read_parquet('{}', hive_partitioning=true) c \
         JOIN read_parquet('{}', hive_partitioning=true) f USING (session_id, function_id) \
         ORDER BY c.start_ns",
        calls_glob(&out),
        functions_glob(&out)
    ));
    let by = |name: &str| -> Vec<&serde_json::Map<String, serde_json::Value>> {
        rows.iter().filter(|r| r["name"] == name).collect()
    };
    let num = |r: &serde_json::Map<String, serde_json::Value>, k: &str| r[k].as_i64();

    // connect's peer: the loopback port the fixture listened on.
    let connects = by("connect");
    assert_eq!(connects.len(), 1, "{rows:?}");
    assert_eq!(
        connects[0]["strings"][1].as_str(),
        Some(format!("127.0.0.1:{port}").as_str()),
        "{:?}",
        connects[0]
    );

    // accept's peer, read at its return: the client's own address.
    let client = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("client "))
        .unwrap_or_else(|| panic!("the fixture printed no client address: {}", run.stdout));
    let accepts = by("accept");
    assert_eq!(accepts.len(), 1, "{rows:?}");
    assert_eq!(
        accepts[0]["strings"][1].as_str(),
        Some(client.trim()),
        "{:?}",
        accepts[0]
    );

    let handles = by("handle_request");
    assert_eq!(handles.len(), N, "{rows:?}");
    let worker = num(handles[0], "tid");
    // The reads that started a request: the reader thread's recv of 16
    // bytes (not the client's, on the main thread, nor the worker's).
    let mut starts: Vec<&serde_json::Map<String, serde_json::Value>> = by("recv")
        .into_iter()
        .filter(|r| num(r, "ret") == Some(16) && num(r, "tid") != worker)
        .collect();
    let connect_tid = num(connects[0], "tid");
    starts.retain(|r| num(r, "tid") != connect_tid);
    assert_eq!(starts.len(), N, "the reader's reads: {rows:?}");
    assert_ne!(num(starts[0], "tid"), worker, "the request crosses threads");
    for (i, (h, s)) in handles.iter().zip(&starts).enumerate() {
        assert_eq!(num(h, "tid"), worker);
        assert_eq!(
            num(h, "req"),
            num(s, "id"),
            "request {i}: handle_request is tied to the read that started it\n{rows:?}"
        );
        assert_eq!(num(s, "req"), num(s, "id"), "a read starts its own request");
    }
    // The worker's answers (send on the worker thread) belong to the same
    // requests, in order.
    let answers: Vec<Option<i64>> = by("send")
        .into_iter()
        .filter(|r| num(r, "tid") == worker)
        .map(|r| num(r, "req"))
        .collect();
    let want: Vec<Option<i64>> = starts.iter().map(|s| num(s, "id")).collect();
    assert_eq!(answers, want, "{rows:?}");
}

/// A hooked library the program never loads (libpq here; a static OpenSSL
/// looks the same): the recording goes on with the other hooks, and the
/// end says which hooks were not placed. Flags: `--hooks pg,net` (the
/// subject) and `-f handle_request`.
#[test]
fn a_hooked_library_the_program_lacks_is_named_at_the_end() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (run, _) = scope_tests::record_request_fixture(&out, "pg,net", 2);
    assert!(
        run.stderr.contains(
            "no module matched 'libpq.so*' while recording: PQexec, PQsendQuery, PQexecParams"
        ),
        "{}",
        run.stderr
    );
    let rows = duckdb(&format!(
        "SELECT count(*) AS n FROM read_parquet('{}', hive_partitioning=true) c \
         JOIN read_parquet('{}', hive_partitioning=true) f USING (session_id, function_id) \
         WHERE f.name = 'handle_request'",
        calls_glob(&out),
        functions_glob(&out)
    ));
    assert_eq!(rows[0]["n"], 2, "the net hooks and -f were recorded");
}
