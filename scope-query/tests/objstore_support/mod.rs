//! A real S3-compatible server for tests: moto (`moto_server`, PyPI
//! `moto[server]`, installed by `cargo xtask test`) on a loopback port,
//! killed when dropped. Shared with `tests/tests/objstore.rs` through
//! `#[path]`.

#![allow(dead_code, reason = "each test crate uses a part")]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long moto may take to start listening (it imports a lot of Python).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The keys every test uses; moto accepts any unless told otherwise.
pub const KEY_ID: &str = "testkey";
pub const SECRET: &str = "testsecret";

/// A running `moto_server` on 127.0.0.1 (or another local address).
pub struct Moto {
    pub host: String,
    pub port: u16,
    child: Child,
    pub log: PathBuf,
}

/// A loopback port nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// The path of `moto_server`, or a panic saying how to install it.
pub fn moto_server_bin() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("moto_server"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "moto_server is not on PATH: run `cargo xtask test` (it installs moto[server] with pip)"
        )
    })
}

impl Moto {
    /// Starts moto on a free port.
    pub fn start() -> Moto {
        Moto::start_on(closed_port(), &[])
    }

    /// Starts moto on `port` with extra environment (e.g.
    /// `INITIAL_NO_AUTH_ACTION_COUNT`), and waits until it answers.
    pub fn start_on(port: u16, env: &[(&str, &str)]) -> Moto {
        Moto::start_at("127.0.0.1", port, env)
    }

    /// Starts moto on `host:port` (a local address: a bridge's, for
    /// clients in other network namespaces) and waits until it answers.
    pub fn start_at(host: &str, port: u16, env: &[(&str, &str)]) -> Moto {
        let log =
            std::env::temp_dir().join(format!("scope-moto-{port}-{}.log", std::process::id()));
        let out = std::fs::File::create(&log).expect("create the moto log");
        let err = out.try_clone().expect("clone the moto log");
        let mut cmd = Command::new(moto_server_bin());
        cmd.args(["-H", host, "-p", &port.to_string()])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = cmd.spawn().expect("start moto_server");
        let mut moto = Moto {
            host: host.to_string(),
            port,
            child,
            log,
        };
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!(
                    "moto_server exited ({status}) before listening on {port}: {}",
                    std::fs::read_to_string(&moto.log).unwrap_or_default()
                );
            }
            if moto.http("GET", "/moto-api/", "").is_some() {
                return moto;
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "moto_server did not listen on {host}:{port} within {START_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `http://HOST:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}:{}", self.host, self.port)
    }

    /// One unsigned HTTP/1.0 request; the status code and body, `None` if
    /// the connection fails.
    pub fn http(&self, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
        let mut s = TcpStream::connect((self.host.as_str(), self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
        write!(
            s,
            "{method} {path} HTTP/1.0\r\nHost: {}:{}\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            self.port,
            body.len()
        )
        .ok()?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).ok()?;
        let status = resp.split_whitespace().nth(1)?.parse().ok()?;
        let body = resp.split_once("\r\n\r\n").map(|x| x.1).unwrap_or_default();
        Some((status, body.to_string()))
    }

    /// Creates a bucket (an unsigned PUT, which moto accepts).
    pub fn create_bucket(&self, name: &str) {
        let (status, body) = self
            .http("PUT", &format!("/{name}"), "")
            .unwrap_or_else(|| panic!("cannot reach moto on {}", self.port));
        assert_eq!(status, 200, "creating bucket {name}: {body}");
    }

    /// The environment that points AWS tools (and scope) at this server.
    pub fn aws_env(&self) -> Vec<(String, String)> {
        aws_env_for(&self.endpoint())
    }
}

/// The environment for an endpoint (which need not be listening).
pub fn aws_env_for(endpoint: &str) -> Vec<(String, String)> {
    [
        ("AWS_ENDPOINT_URL", endpoint),
        ("AWS_ACCESS_KEY_ID", KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", SECRET),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ALLOW_HTTP", "true"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The bucket's objects (key, size) under `prefix`, listed by boto3, a
/// reader independent of scope's object_store client.
pub fn boto3_list(endpoint: &str, bucket: &str, prefix: &str) -> Vec<(String, u64)> {
    let script = format!(
        r#"
import boto3
s3 = boto3.client("s3", endpoint_url="{endpoint}", aws_access_key_id="{KEY_ID}",
                  aws_secret_access_key="{SECRET}", region_name="us-east-1")
for page in s3.get_paginator("list_objects_v2").paginate(Bucket="{bucket}", Prefix="{prefix}"):
    for o in page.get("Contents", []):
        print(o["Key"], o["Size"])
"#
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "boto3 listing failed (run `cargo xtask test` to install moto[server] and boto3): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (k, n) = l.rsplit_once(' ')?;
            Some((k.to_string(), n.parse().ok()?))
        })
        .collect()
}
