//! `scope-agent serve`: the viewer, a local web page over a store.
//!
//! Bound to 127.0.0.1 only, on the port asked for (a free one by default),
//! with a random token in the URL it prints: every request must carry it
//! (`?token=` for the page and its two files, the `X-Scope-Token` header
//! for the API), or gets 401. The page (assets/: index.html, app.js,
//! style.css) is compiled into the binary: no CDN, works offline. The API
//! (api.rs, documented in the README's "serve" section) answers from the
//! store by querying, never by loading it: each view asks for what is on
//! screen (the timeline at the level of detail of its pixels).
//!
//! Requests are served by a few threads; each session's store is opened
//! once (its footers read once) and shared. SQL from the page runs
//! read-only (no DDL, DML or SET), under the store's memory limit and a
//! time limit.

mod api;

use std::collections::HashMap;
use std::io::Read as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use scope_query::{OpenOptions, SessionSel, Store};

pub use api::QUERY_TIMEOUT;

/// The page and its files, compiled in.
const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

/// Threads answering requests.
const WORKERS: usize = 4;
/// The largest request body read (the SQL box).
const MAX_BODY: u64 = 1 << 20;

/// What `serve` was asked.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// The store (a directory or URL).
    pub data: String,
    /// 0: any free port.
    pub port: u16,
    /// The query engine's memory limit per session, bytes.
    pub memory: u64,
}

/// The server's shared state.
pub(crate) struct State {
    config: ServeConfig,
    token: String,
    /// The store with every session (the session list, SQL over all).
    all: Arc<Store>,
    /// Per session id: the store narrowed to it, opened on first use.
    sessions: Mutex<HashMap<String, Arc<Store>>>,
    /// Per session: answers that need a scan of every call (threads, the
    /// flame graph of the whole session), kept once computed.
    cache: Mutex<HashMap<(String, String), Arc<serde_json::Value>>>,
}

impl State {
    /// The store narrowed to `id` (a session of the store).
    pub(crate) fn session(&self, id: &str) -> Result<Arc<Store>> {
        if let Some(s) = self.sessions.lock().unwrap().get(id) {
            return Ok(Arc::clone(s));
        }
        if !self.all.sessions().iter().any(|s| s == id) {
            bail!("no session {id:?} in {}", self.config.data);
        }
        let store = Arc::new(Store::open(
            &self.config.data,
            &OpenOptions {
                sessions: SessionSel::Id(id.to_string()),
                memory_limit: Some(self.config.memory as usize),
            },
        )?);
        self.sessions
            .lock()
            .unwrap()
            .insert(id.to_string(), Arc::clone(&store));
        Ok(store)
    }

    pub(crate) fn all(&self) -> &Store {
        &self.all
    }

    /// `compute`'s answer for (`session`, `what`), kept after the first.
    pub(crate) fn cached(
        &self,
        session: &str,
        what: &str,
        compute: impl FnOnce() -> Result<serde_json::Value>,
    ) -> Result<Arc<serde_json::Value>> {
        let key = (session.to_string(), what.to_string());
        if let Some(v) = self.cache.lock().unwrap().get(&key) {
            return Ok(Arc::clone(v));
        }
        let v = Arc::new(compute()?);
        self.cache.lock().unwrap().insert(key, Arc::clone(&v));
        Ok(v)
    }
}

/// A fresh token: 128 bits from the kernel's generator, as hex.
fn token() -> Result<String> {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("cannot read /dev/urandom for the token")?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Runs the server until Ctrl-C or SIGTERM.
pub fn run(config: ServeConfig) -> Result<()> {
    let all = Arc::new(Store::open(
        &config.data,
        &OpenOptions {
            sessions: SessionSel::All,
            memory_limit: Some(config.memory as usize),
        },
    )?);
    if all.sessions().is_empty() {
        bail!(
            "{}: no sessions to show (record one first: scope-agent record -- CMD)",
            config.data
        );
    }
    let server = tiny_http::Server::http(("127.0.0.1", config.port))
        .map_err(|e| anyhow::anyhow!("cannot listen on 127.0.0.1:{}: {e}", config.port))?;
    let port = server
        .server_addr()
        .to_ip()
        .map_or(config.port, |a| a.port());
    let state = Arc::new(State {
        token: token()?,
        all,
        sessions: Mutex::new(HashMap::new()),
        cache: Mutex::new(HashMap::new()),
        config,
    });
    let server = Arc::new(server);
    println!(
        "scope-agent: serving {} ({} session{}) at http://127.0.0.1:{port}/?token={}",
        state.config.data,
        state.all.sessions().len(),
        if state.all.sessions().len() == 1 {
            ""
        } else {
            "s"
        },
        state.token
    );
    eprintln!("scope-agent: only this machine can connect, and only with the token; Ctrl-C stops");
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("cannot install the signal handler")?;
    }
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let server = Arc::clone(&server);
            let state = Arc::clone(&state);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match server.recv_timeout(Duration::from_millis(200)) {
                        Ok(Some(rq)) => handle(&state, rq),
                        Ok(None) => {}
                        Err(_) => break,
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    eprintln!("scope-agent: serve stopped");
    Ok(())
}

/// An answer: status, content type, body.
pub(crate) struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Reply {
    pub(crate) fn json(status: u16, v: &serde_json::Value) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            body: serde_json::to_vec(v).unwrap_or_default(),
        }
    }

    pub(crate) fn error(status: u16, msg: impl std::fmt::Display) -> Reply {
        Reply::json(status, &serde_json::json!({ "error": msg.to_string() }))
    }
}

/// Whether `a` and `b` are equal, in time independent of where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The value of `name` in a query string.
pub(crate) fn param(query: &str, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn handle(state: &State, mut rq: tiny_http::Request) {
    let url = rq.url().to_string();
    let (path, query) = url.split_once('?').unwrap_or((url.as_str(), ""));
    let header_token = rq
        .headers()
        .iter()
        .find(|h| h.field.equiv("X-Scope-Token"))
        .map(|h| h.value.as_str().to_string());
    let given = header_token.or_else(|| param(query, "token"));
    let reply = if !given.is_some_and(|t| same(&t, &state.token)) {
        if path.starts_with("/api/") {
            Reply::error(
                401,
                "missing or wrong token: use the URL scope-agent serve printed",
            )
        } else {
            Reply {
                status: 401,
                content_type: "text/plain; charset=utf-8",
                body: b"401: missing or wrong token. Open the URL that scope-agent serve printed (it ends with ?token=...).\n".to_vec(),
            }
        }
    } else {
        let method = rq.method().clone();
        match (&method, path) {
            (tiny_http::Method::Get, "/" | "/index.html") => Reply {
                status: 200,
                content_type: "text/html; charset=utf-8",
                // The page's own files carry the token too.
                body: INDEX_HTML
                    .replace(
                        "/style.css\"",
                        &format!("/style.css?token={}\"", state.token),
                    )
                    .replace("/app.js\"", &format!("/app.js?token={}\"", state.token))
                    .into_bytes(),
            },
            (tiny_http::Method::Get, "/app.js") => Reply {
                status: 200,
                content_type: "text/javascript; charset=utf-8",
                body: APP_JS.as_bytes().to_vec(),
            },
            (tiny_http::Method::Get, "/style.css") => Reply {
                status: 200,
                content_type: "text/css; charset=utf-8",
                body: STYLE_CSS.as_bytes().to_vec(),
            },
            (method, p) if p.starts_with("/api/") => {
                let mut body = String::new();
                if *method == tiny_http::Method::Post {
                    let _ = rq.as_reader().take(MAX_BODY).read_to_string(&mut body);
                }
                let is_get = *method == tiny_http::Method::Get;
                let is_post = *method == tiny_http::Method::Post;
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    api::answer(state, p, query, is_get, is_post, &body)
                })) {
                    Ok(r) => r,
                    Err(_) => Reply::error(500, format!("{p}: internal error")),
                }
            }
            _ => Reply::error(404, format!("no such page: {path}")),
        }
    };
    let mut response = tiny_http::Response::from_data(reply.body).with_status_code(reply.status);
    for (k, v) in [
        ("Content-Type", reply.content_type),
        ("Cache-Control", "no-store"),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "no-referrer"),
        (
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'",
        ),
    ] {
        if let Ok(h) = tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()) {
            response.add_header(h);
        }
    }
    let _ = rq.respond(response);
}
