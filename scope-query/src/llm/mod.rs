//! The LLM client behind `scope-agent explain`: it sends computed findings
//! (never raw calls) to a model and checks that the answer cites them.
//!
//! - [`LlmConfig::resolve`]: provider, model, endpoint and key from the
//!   arguments, the environment and a 0600 config file, once.
//! - [`build_prompt`]: the findings as a compact JSON list with ids `F1`…,
//!   argument values dropped unless asked for, names hashed with `redact`.
//! - [`complete`]: one [`Provider`] per API (Gemini, Vertex AI, OpenAI-style
//!   chat completions, Mock) over one reqwest client, with the timeout and
//!   the retries on 429 and 5xx here, not in each provider.
//! - [`check_answer`] / [`render_checked`]: the ids each sentence cites, and
//!   what the answer names that the findings do not.
//!
//! Keys live in [`Secret`]s: no `Display`, a redacted `Debug`, marked
//! sensitive in headers, and scrubbed from any error body an API echoes.

mod gemini;
mod mock;
mod openai;
mod vertex;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
use serde_json::{Value, json};

use crate::analysis::Finding;

/// The APIs scope can ask.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    /// Google AI Studio's `generateContent` with an API key.
    Gemini,
    /// The same models on Vertex AI, with an OAuth access token.
    Vertex,
    /// OpenAI-compatible `chat/completions`: OpenAI, llama.cpp, vLLM, Ollama…
    OpenAi,
    /// Deterministic answers built from the findings, without a network.
    Mock,
}

impl ProviderKind {
    pub const ALL: [ProviderKind; 4] = [
        ProviderKind::Gemini,
        ProviderKind::Vertex,
        ProviderKind::OpenAi,
        ProviderKind::Mock,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Gemini => "gemini",
            ProviderKind::Vertex => "vertex",
            ProviderKind::OpenAi => "openai",
            ProviderKind::Mock => "mock",
        }
    }

    /// The model asked when none is given.
    pub fn default_model(self) -> &'static str {
        match self {
            ProviderKind::Gemini | ProviderKind::Vertex => "gemini-2.5-flash",
            ProviderKind::OpenAi => "gpt-4o-mini",
            ProviderKind::Mock => "mock",
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ProviderKind {
    type Err = LlmError;
    fn from_str(s: &str) -> Result<Self, LlmError> {
        let l = s.trim().to_ascii_lowercase();
        match l.as_str() {
            "gemini" => Ok(ProviderKind::Gemini),
            "vertex" | "vertexai" | "vertex-ai" => Ok(ProviderKind::Vertex),
            "openai" => Ok(ProviderKind::OpenAi),
            "mock" => Ok(ProviderKind::Mock),
            _ => Err(LlmError::UnknownProvider(s.to_string())),
        }
    }
}

/// A key, token or private key: never printed. `Debug` shows only that it is
/// there; there is no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// How a provider proves who it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    /// Nothing (Mock; a local OpenAI-compatible server).
    None,
    /// An API key (Gemini: `x-goog-api-key`; OpenAI: `Authorization: Bearer`).
    ApiKey { key: Secret, from: String },
    /// A ready OAuth access token (Vertex).
    AccessToken { token: Secret, from: String },
    /// A Google service account: a JWT signed with its key (RS256) buys an
    /// access token at `token_uri`.
    ServiceAccount(ServiceAccount),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceAccount {
    pub client_email: String,
    pub key_id: Option<String>,
    /// PKCS#8 DER of the RSA key (checked when read).
    pub(crate) key_der: SecretBytes,
    pub token_uri: String,
    /// The JSON file it came from.
    pub path: PathBuf,
}

#[derive(Clone, PartialEq, Eq)]
pub(crate) struct SecretBytes(Vec<u8>);

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretBytes(<redacted>)")
    }
}

/// Everything one `explain` needs to reach a model, resolved once.
#[derive(Clone, Debug)]
pub struct LlmConfig {
    pub provider: ProviderKind,
    /// The model; `None` = [`ProviderKind::default_model`].
    pub model: Option<String>,
    /// The API's base URL (`https://generativelanguage.googleapis.com`,
    /// `https://us-central1-aiplatform.googleapis.com`, an OpenAI-style `…/v1`);
    /// `None` = the provider's public one.
    pub endpoint: Option<String>,
    /// For one HTTP request, body included.
    pub timeout: Duration,
    /// Retries after a 429 or 5xx (so at most `max_retries + 1` requests).
    pub max_retries: u32,
    /// The first wait before a retry; it doubles each time unless the server
    /// says `Retry-After`.
    pub backoff: Duration,
    /// Vertex: the Google Cloud project and region.
    pub project: Option<String>,
    pub location: Option<String>,
    pub credential: Credential,
}

/// The most a run sleeps between retries in total, and per wait.
const RETRY_BUDGET: Duration = Duration::from_secs(60);
const MAX_WAIT: Duration = Duration::from_secs(30);

/// The config file's keys (`key = "value"` lines).
const FILE_KEYS: &[&str] = &[
    "provider",
    "model",
    "endpoint",
    "timeout",
    "max_retries",
    "gemini_api_key",
    "gemini_endpoint",
    "openai_api_key",
    "openai_base_url",
    "vertex_access_token",
    "vertex_endpoint",
    "vertex_token_uri",
    "google_application_credentials",
    "project",
    "location",
];

impl LlmConfig {
    /// A config with defaults and no key (tests, Mock); resolve() for users.
    pub fn new(provider: ProviderKind) -> LlmConfig {
        LlmConfig {
            provider,
            model: None,
            endpoint: None,
            timeout: Duration::from_secs(60),
            max_retries: 3,
            backoff: Duration::from_millis(500),
            project: None,
            location: None,
            credential: Credential::None,
        }
    }

    /// The model asked.
    pub fn model_name(&self) -> &str {
        self.model
            .as_deref()
            .unwrap_or(self.provider.default_model())
    }

    /// Provider and model, as errors name them.
    pub fn target(&self) -> Target {
        Target {
            provider: self.provider,
            model: self.model_name().to_string(),
        }
    }

    /// Arguments first (`--provider`, `--model`, `--endpoint`), then the
    /// environment, then `$SCOPE_LLM_CONFIG` or `~/.config/scope/llm.toml`.
    pub fn resolve(
        provider: Option<&str>,
        model: Option<&str>,
        endpoint: Option<&str>,
    ) -> Result<LlmConfig, LlmError> {
        LlmConfig::resolve_with(provider, model, endpoint, &|k| {
            std::env::var(k).ok().filter(|v| !v.is_empty())
        })
    }

    /// [`resolve`](Self::resolve) with `env` in place of the process
    /// environment (tests; the config file's path comes from it too).
    pub fn resolve_with(
        provider: Option<&str>,
        model: Option<&str>,
        endpoint: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<LlmConfig, LlmError> {
        let (file, file_path) = read_config_file(env)?;
        let file_name = file_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "~/.config/scope/llm.toml".to_string());
        let get = |envs: &[&str], key: &str| -> Option<(String, String)> {
            for e in envs {
                if let Some(v) = env(e) {
                    return Some((v, format!("${e}")));
                }
            }
            file.get(key)
                .map(|v| (v.clone(), format!("{key} in {file_name}")))
        };
        let provider = match provider
            .map(str::to_string)
            .or_else(|| get(&["SCOPE_LLM_PROVIDER"], "provider").map(|v| v.0))
        {
            Some(p) => p.parse::<ProviderKind>()?,
            None => return Err(LlmError::NoProvider { config: file_name }),
        };
        let mut cfg = LlmConfig::new(provider);
        cfg.model = model
            .map(str::to_string)
            .or_else(|| get(&["SCOPE_LLM_MODEL"], "model").map(|v| v.0));
        if let Some(m) = &cfg.model {
            let m = m.strip_prefix("models/").unwrap_or(m);
            if m.is_empty() || m.chars().any(|c| c.is_whitespace() || "?#/".contains(c)) {
                return Err(LlmError::BadModel {
                    provider,
                    model: m.to_string(),
                });
            }
            cfg.model = Some(m.to_string());
        }
        if let Some((t, from)) = get(&["SCOPE_LLM_TIMEOUT"], "timeout") {
            let secs: f64 = t.trim().trim_end_matches('s').parse().unwrap_or(-1.0);
            if !(secs > 0.0 && secs < 1e6) {
                return Err(LlmError::Config {
                    path: from,
                    reason: format!("timeout {t:?} is not a number of seconds"),
                });
            }
            cfg.timeout = Duration::from_secs_f64(secs);
        }
        if let Some((r, from)) = get(&["SCOPE_LLM_RETRIES"], "max_retries") {
            cfg.max_retries = r.trim().parse().map_err(|_| LlmError::Config {
                path: from,
                reason: format!("max_retries {r:?} is not a whole number"),
            })?;
        }
        let endpoint_env: &[&str] = match provider {
            ProviderKind::Gemini => &["SCOPE_GEMINI_ENDPOINT"],
            ProviderKind::Vertex => &["SCOPE_VERTEX_ENDPOINT"],
            ProviderKind::OpenAi => &["OPENAI_BASE_URL"],
            ProviderKind::Mock => &[],
        };
        let endpoint_key = match provider {
            ProviderKind::Gemini => "gemini_endpoint",
            ProviderKind::Vertex => "vertex_endpoint",
            ProviderKind::OpenAi => "openai_base_url",
            ProviderKind::Mock => "endpoint",
        };
        cfg.endpoint = endpoint
            .map(str::to_string)
            .or_else(|| get(endpoint_env, endpoint_key).map(|v| v.0))
            .or_else(|| file.get("endpoint").cloned())
            .map(|e| e.trim_end_matches('/').to_string());
        if let Some(e) = &cfg.endpoint
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            return Err(LlmError::Config {
                path: "the endpoint".to_string(),
                reason: format!("{e:?} is not an http:// or https:// URL"),
            });
        }
        match provider {
            ProviderKind::Mock => {}
            ProviderKind::Gemini => {
                let Some((key, from)) =
                    get(&["GEMINI_API_KEY", "GOOGLE_API_KEY"], "gemini_api_key")
                else {
                    return Err(LlmError::MissingKey {
                        provider,
                        hint: format!(
                            "no API key: set GEMINI_API_KEY (or GOOGLE_API_KEY), or gemini_api_key in {file_name}"
                        ),
                    });
                };
                cfg.credential = Credential::ApiKey {
                    key: Secret(key.trim().to_string()),
                    from,
                };
            }
            ProviderKind::OpenAi => {
                if let Some((key, from)) = get(&["OPENAI_API_KEY"], "openai_api_key") {
                    cfg.credential = Credential::ApiKey {
                        key: Secret(key.trim().to_string()),
                        from,
                    };
                } else if cfg.endpoint.is_none()
                    || cfg
                        .endpoint
                        .as_deref()
                        .is_some_and(|e| e.contains("api.openai.com"))
                {
                    // Local servers (llama.cpp, vLLM, Ollama) need none.
                    return Err(LlmError::MissingKey {
                        provider,
                        hint: format!(
                            "no API key: set OPENAI_API_KEY or openai_api_key in {file_name} (or OPENAI_BASE_URL to a local server, which needs none)"
                        ),
                    });
                }
            }
            ProviderKind::Vertex => {
                let sa = if let Some((token, from)) =
                    get(&["VERTEX_ACCESS_TOKEN"], "vertex_access_token")
                {
                    cfg.credential = Credential::AccessToken {
                        token: Secret(token.trim().to_string()),
                        from,
                    };
                    None
                } else if let Some((path, _)) = get(
                    &["GOOGLE_APPLICATION_CREDENTIALS"],
                    "google_application_credentials",
                ) {
                    let token_uri =
                        get(&["SCOPE_VERTEX_TOKEN_URI"], "vertex_token_uri").map(|v| v.0);
                    let (sa, project) = vertex::read_service_account(
                        Path::new(&expand_home(&path, env)),
                        token_uri,
                    )?;
                    cfg.credential = Credential::ServiceAccount(sa);
                    project
                } else {
                    return Err(LlmError::MissingKey {
                        provider,
                        hint: format!(
                            "no credentials: set VERTEX_ACCESS_TOKEN (e.g. $(gcloud auth print-access-token)) or GOOGLE_APPLICATION_CREDENTIALS to a service-account JSON, or vertex_access_token / google_application_credentials in {file_name}"
                        ),
                    });
                };
                cfg.project = get(&["GOOGLE_CLOUD_PROJECT"], "project")
                    .map(|v| v.0)
                    .or(sa);
                if cfg.project.is_none() {
                    return Err(LlmError::MissingKey {
                        provider,
                        hint: format!(
                            "no Google Cloud project: set GOOGLE_CLOUD_PROJECT or project in {file_name} (or use a service-account JSON with project_id)"
                        ),
                    });
                }
                cfg.location = Some(
                    get(&["VERTEX_LOCATION", "GOOGLE_CLOUD_LOCATION"], "location")
                        .map(|v| v.0)
                        .unwrap_or_else(|| "us-central1".to_string()),
                );
            }
        }
        Ok(cfg)
    }

    /// The secrets to scrub from anything printed.
    fn secrets(&self) -> Vec<&str> {
        match &self.credential {
            Credential::ApiKey { key, .. } => vec![key.expose()],
            Credential::AccessToken { token, .. } => vec![token.expose()],
            Credential::None | Credential::ServiceAccount(_) => vec![],
        }
    }
}

fn expand_home(p: &str, env: &dyn Fn(&str) -> Option<String>) -> String {
    match (p.strip_prefix("~/"), env("HOME")) {
        (Some(rest), Some(home)) => format!("{home}/{rest}"),
        _ => p.to_string(),
    }
}

/// `$SCOPE_LLM_CONFIG` (must exist) or `$XDG_CONFIG_HOME/scope/llm.toml` /
/// `~/.config/scope/llm.toml` (may be absent); refused when group or others
/// may read it.
fn read_config_file(
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(HashMap<String, String>, Option<PathBuf>), LlmError> {
    let (path, must_exist) = if let Some(p) = env("SCOPE_LLM_CONFIG") {
        (PathBuf::from(expand_home(&p, env)), true)
    } else if let Some(x) = env("XDG_CONFIG_HOME") {
        (PathBuf::from(x).join("scope/llm.toml"), false)
    } else if let Some(h) = env("HOME") {
        (PathBuf::from(h).join(".config/scope/llm.toml"), false)
    } else {
        return Ok((HashMap::new(), None));
    };
    let err = |reason: String| LlmError::Config {
        path: path.display().to_string(),
        reason,
    };
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => {
            return Ok((HashMap::new(), Some(path)));
        }
        Err(e) => return Err(err(format!("cannot read it: {e}"))),
    };
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(err(format!(
                "holds keys but group or others may read it (mode {mode:04o}); run chmod 600 {}",
                path.display()
            )));
        }
    }
    let text = std::fs::read_to_string(&path).map_err(|e| err(format!("cannot read it: {e}")))?;
    let mut map = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(err(format!("line {}: expected key = \"value\"", n + 1)));
        };
        let k = k.trim();
        let v = v.trim();
        let v = if let Some(q) = v.strip_prefix('"') {
            match q.find('"') {
                Some(end) => &q[..end],
                None => {
                    return Err(err(format!("line {}: unterminated string", n + 1)));
                }
            }
        } else {
            v.split('#').next().unwrap_or("").trim()
        };
        if !FILE_KEYS.contains(&k) {
            return Err(err(format!(
                "line {}: unknown key {k:?} (known: {})",
                n + 1,
                FILE_KEYS.join(", ")
            )));
        }
        map.insert(k.to_string(), v.to_string());
    }
    Ok((map, Some(path)))
}

/// The provider and model a request went to, as errors name them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub provider: ProviderKind,
    pub model: String,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} model {}", self.provider, self.model)
    }
}

/// Why no answer came: each one line naming the provider and model.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error("unknown LLM provider {0:?}: choose gemini, vertex, openai or mock")]
    UnknownProvider(String),
    #[error(
        "no LLM provider chosen: pass --provider gemini|vertex|openai|mock, set SCOPE_LLM_PROVIDER, or put provider = \"…\" in {config}"
    )]
    NoProvider { config: String },
    #[error("{provider}: model name {model:?} is not valid")]
    BadModel {
        provider: ProviderKind,
        model: String,
    },
    #[error("{provider}: {hint}")]
    MissingKey {
        provider: ProviderKind,
        hint: String,
    },
    #[error("LLM config {path}: {reason}")]
    Config { path: String, reason: String },
    #[error("{provider}: credentials {origin}: {reason}")]
    Credentials {
        provider: ProviderKind,
        origin: String,
        reason: String,
    },
    #[error("{target}: {what} rejected (HTTP {status}): {detail}")]
    Rejected {
        target: Target,
        status: u16,
        what: String,
        detail: String,
    },
    #[error("{target}: model {model:?} not found, or no such endpoint (HTTP 404 from {url}): {detail}", model = target.model)]
    NotFound {
        target: Target,
        url: String,
        detail: String,
    },
    #[error("{target}: quota exhausted (HTTP 429{after}): {detail}", after = attempts_note(*attempts))]
    Quota {
        target: Target,
        attempts: u32,
        detail: String,
    },
    #[error("{target}: rate limited (HTTP 429{after}): {detail}", after = attempts_note(*attempts))]
    RateLimited {
        target: Target,
        attempts: u32,
        detail: String,
    },
    #[error("{target}: server error (HTTP {status}{after}): {detail}", after = attempts_note(*attempts))]
    Server {
        target: Target,
        status: u16,
        attempts: u32,
        detail: String,
    },
    #[error("{target}: request refused (HTTP {status}): {detail}")]
    Http {
        target: Target,
        status: u16,
        detail: String,
    },
    #[error("{target}: no answer from {url} within {secs} s (set SCOPE_LLM_TIMEOUT to wait longer)", secs = timeout.as_secs_f64())]
    Timeout {
        target: Target,
        url: String,
        timeout: Duration,
    },
    #[error("{target}: cannot reach {url}: {reason}")]
    Network {
        target: Target,
        url: String,
        reason: String,
    },
    #[error("{target}: the answer is not {expected} (HTTP {status}), it starts {head:?}")]
    Garbage {
        target: Target,
        status: u16,
        expected: &'static str,
        head: String,
    },
    #[error("{target}: empty answer ({reason})")]
    Empty { target: Target, reason: String },
}

fn attempts_note(attempts: u32) -> String {
    if attempts > 1 {
        format!(", {attempts} attempts")
    } else {
        String::new()
    }
}

/// One API behind `complete`: builds and sends one request; the retries,
/// timeouts and error classes are shared.
pub trait Provider {
    fn target(&self) -> &Target;
    /// One attempt. `Err(Failure::Retry)` when another may succeed.
    fn send(
        &self,
        http: &Http,
        prompt: &Prompt,
    ) -> impl std::future::Future<Output = Result<String, Failure>> + Send;
}

/// Why one attempt failed.
#[derive(Debug)]
pub enum Failure {
    /// 429 or 5xx: worth another try after `retry_after` (or the backoff).
    Retry {
        status: u16,
        retry_after: Option<Duration>,
        /// The body said the quota is exhausted (Google RESOURCE_EXHAUSTED).
        quota: bool,
        detail: String,
    },
    Fatal(LlmError),
}

impl From<LlmError> for Failure {
    fn from(e: LlmError) -> Failure {
        Failure::Fatal(e)
    }
}

/// The HTTP client of one `complete` (timeout set), and what to scrub.
pub struct Http {
    client: reqwest::Client,
    timeout: Duration,
    secrets: Vec<String>,
}

impl Http {
    fn new(cfg: &LlmConfig) -> Result<Http, LlmError> {
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .user_agent(concat!("scope/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| LlmError::Network {
                target: cfg.target(),
                url: String::new(),
                reason: format!("cannot set up HTTP: {e}"),
            })?;
        Ok(Http {
            client,
            timeout: cfg.timeout,
            secrets: cfg.secrets().into_iter().map(str::to_string).collect(),
        })
    }

    /// The same client, also scrubbing `secret` (a token bought at run time).
    pub(crate) fn with_secret(&self, secret: &str) -> Http {
        let mut secrets = self.secrets.clone();
        secrets.push(secret.to_string());
        Http {
            client: self.client.clone(),
            timeout: self.timeout,
            secrets,
        }
    }

    /// `text` without any secret in it.
    fn scrub(&self, text: &str) -> String {
        let mut t = text.to_string();
        for s in &self.secrets {
            if s.len() >= 4 {
                t = t.replace(s.as_str(), "<redacted>");
            }
        }
        t
    }

    /// POSTs `body` (form or JSON) to `url` and returns the parsed JSON
    /// answer of a 2xx; every other outcome becomes a [`Failure`].
    pub(crate) async fn post(
        &self,
        target: &Target,
        url: &str,
        headers: HeaderMap,
        body: PostBody<'_>,
    ) -> Result<Value, Failure> {
        log::debug!("llm: POST {url} ({target})");
        let req = self.client.post(url).headers(headers);
        let req = match body {
            PostBody::Json(v) => req
                .header("content-type", "application/json")
                .body(serde_json::to_vec(v).unwrap_or_default()),
            PostBody::Form(f) => req
                .header("content-type", "application/x-www-form-urlencoded")
                .body(f),
        };
        let net = |e: reqwest::Error| -> Failure {
            if e.is_timeout() {
                LlmError::Timeout {
                    target: target.clone(),
                    url: url.to_string(),
                    timeout: self.timeout,
                }
                .into()
            } else {
                LlmError::Network {
                    target: target.clone(),
                    url: url.to_string(),
                    reason: self.scrub(&error_chain(&e)),
                }
                .into()
            }
        };
        let resp = req.send().await.map_err(net)?;
        let status = resp.status();
        let retry_after = retry_after_header(resp.headers());
        let bytes = resp.bytes().await.map_err(net)?;
        let text = String::from_utf8_lossy(&bytes);
        if status.is_success() {
            return serde_json::from_slice::<Value>(&bytes).map_err(|_| {
                Failure::Fatal(LlmError::Garbage {
                    target: target.clone(),
                    status: status.as_u16(),
                    expected: "JSON",
                    head: self.head(&text),
                })
            });
        }
        let body: Option<Value> = serde_json::from_slice(&bytes).ok();
        let detail = self.scrub(&error_detail(body.as_ref(), &text));
        let code = status.as_u16();
        let t = target.clone();
        let says = |needle: &str| text.contains(needle);
        Err(match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => LlmError::Rejected {
                target: t,
                status: code,
                what: "key or token".to_string(),
                detail,
            }
            .into(),
            // Google answers a bad API key with 400 API_KEY_INVALID.
            StatusCode::BAD_REQUEST if says("API_KEY_INVALID") || says("API key not valid") => {
                LlmError::Rejected {
                    target: t,
                    status: code,
                    what: "API key".to_string(),
                    detail,
                }
                .into()
            }
            StatusCode::NOT_FOUND => LlmError::NotFound {
                target: t,
                url: url.to_string(),
                detail,
            }
            .into(),
            // OpenAI: no credit left; waiting does not help.
            StatusCode::TOO_MANY_REQUESTS if says("insufficient_quota") => LlmError::Quota {
                target: t,
                attempts: 1,
                detail,
            }
            .into(),
            StatusCode::TOO_MANY_REQUESTS => Failure::Retry {
                status: code,
                retry_after: retry_after.or_else(|| body.as_ref().and_then(google_retry_delay)),
                quota: says("RESOURCE_EXHAUSTED") || says("quota"),
                detail,
            },
            s if s.is_server_error() => Failure::Retry {
                status: code,
                retry_after,
                quota: false,
                detail,
            },
            _ => LlmError::Http {
                target: t,
                status: code,
                detail,
            }
            .into(),
        })
    }

    /// The first 80 characters of a body, secrets scrubbed.
    pub(crate) fn head(&self, text: &str) -> String {
        let t = self.scrub(text);
        let t: String = t.chars().take(80).collect();
        t.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    pub(crate) fn garbage(&self, target: &Target, expected: &'static str, body: &Value) -> Failure {
        Failure::Fatal(LlmError::Garbage {
            target: target.clone(),
            status: 200,
            expected,
            head: self.head(&body.to_string()),
        })
    }
}

pub(crate) enum PostBody<'a> {
    Json(&'a Value),
    Form(String),
}

/// A header value marked sensitive (hyper then never prints it).
pub(crate) fn secret_header(v: &str) -> Result<HeaderValue, String> {
    let mut h =
        HeaderValue::from_str(v).map_err(|_| "contains characters a header cannot carry")?;
    h.set_sensitive(true);
    Ok(h)
}

pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let cs = c.to_string();
        if !s.contains(&cs) {
            s.push_str(": ");
            s.push_str(&cs);
        }
        src = c.source();
    }
    s
}

fn retry_after_header(h: &HeaderMap) -> Option<Duration> {
    let v = h
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<f64>()
        .ok()?;
    (0.0..1e6).contains(&v).then(|| Duration::from_secs_f64(v))
}

/// Google's `RetryInfo` detail: `"retryDelay": "23s"`.
fn google_retry_delay(body: &Value) -> Option<Duration> {
    body.pointer("/error/details")?
        .as_array()?
        .iter()
        .find_map(|d| d.get("retryDelay")?.as_str())
        .and_then(|s| s.trim_end_matches('s').parse::<f64>().ok())
        .filter(|v| (0.0..1e6).contains(v))
        .map(Duration::from_secs_f64)
}

/// One line saying what an error body says: Google's `error.status` and
/// `error.message`, OpenAI's `error.code` / `error.message`, Ollama's
/// `error` string, or the body's start.
fn error_detail(body: Option<&Value>, text: &str) -> String {
    let e = body.and_then(|b| b.get("error"));
    let s = match e {
        // OAuth: {"error": "invalid_grant", "error_description": "…"}.
        Some(Value::String(s)) => match body
            .and_then(|b| b.get("error_description"))
            .and_then(Value::as_str)
        {
            Some(d) => format!("{s}: {d}"),
            None => s.clone(),
        },
        Some(e) => {
            let msg = e.get("message").and_then(Value::as_str).unwrap_or("");
            let code = e
                .get("status")
                .or_else(|| e.get("code"))
                .or_else(|| e.get("type"))
                .and_then(|c| c.as_str().map(str::to_string))
                .unwrap_or_default();
            match (code.is_empty(), msg.is_empty()) {
                (false, false) => format!("{code}: {msg}"),
                (true, false) => msg.to_string(),
                (false, true) => code,
                (true, true) => e.to_string(),
            }
        }
        None => body
            .and_then(|b| b.get("message").or_else(|| b.get("detail")))
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| text.to_string()),
    };
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.is_empty() {
        return "(empty body)".to_string();
    }
    let mut out: String = s.chars().take(160).collect();
    if s.chars().count() > 160 {
        out.push('…');
    }
    out
}

/// Asks the configured model; retries 429 and 5xx with backoff (0.5 s
/// doubling, or the server's `Retry-After`; 60 s of waiting at most).
pub async fn complete(cfg: &LlmConfig, prompt: &Prompt) -> Result<String, LlmError> {
    match cfg.provider {
        ProviderKind::Mock => run(&mock::Mock::new(cfg), cfg, prompt).await,
        ProviderKind::Gemini => run(&gemini::Gemini::new(cfg)?, cfg, prompt).await,
        ProviderKind::Vertex => run(&vertex::Vertex::new(cfg)?, cfg, prompt).await,
        ProviderKind::OpenAi => run(&openai::OpenAi::new(cfg)?, cfg, prompt).await,
    }
}

async fn run<P: Provider>(p: &P, cfg: &LlmConfig, prompt: &Prompt) -> Result<String, LlmError> {
    let http = Http::new(cfg)?;
    let mut slept = Duration::ZERO;
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        let (status, retry_after, quota, detail) = match p.send(&http, prompt).await {
            Ok(text) if text.trim().is_empty() => {
                return Err(LlmError::Empty {
                    target: p.target().clone(),
                    reason: "the model returned no text".to_string(),
                });
            }
            Ok(text) => return Ok(text),
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Retry {
                status,
                retry_after,
                quota,
                detail,
            }) => (status, retry_after, quota, detail),
        };
        let wait = retry_after
            .unwrap_or_else(|| cfg.backoff.saturating_mul(1 << (attempt - 1).min(16)))
            .min(MAX_WAIT);
        // A server asking for a longer wait than we would give is not retried.
        let too_long = retry_after.filter(|w| *w > MAX_WAIT);
        if attempt > cfg.max_retries || slept + wait > RETRY_BUDGET || too_long.is_some() {
            let target = p.target().clone();
            let detail = match too_long {
                Some(w) => format!("{detail} (the server asks to wait {} s)", w.as_secs()),
                None => detail,
            };
            return Err(match status {
                429 if quota => LlmError::Quota {
                    target,
                    attempts: attempt,
                    detail,
                },
                429 => LlmError::RateLimited {
                    target,
                    attempts: attempt,
                    detail,
                },
                _ => LlmError::Server {
                    target,
                    status,
                    attempts: attempt,
                    detail,
                },
            });
        }
        log::info!(
            "{}: HTTP {status}, retry {attempt}/{} in {:.1} s",
            p.target(),
            cfg.max_retries,
            wait.as_secs_f64()
        );
        tokio::time::sleep(wait).await;
        slept += wait;
    }
}

/// What the model is asked: a system text and a user text. With `redact`
/// it also knows how to map the hashed names back.
#[derive(Clone, Debug)]
pub struct Prompt {
    pub system: String,
    pub user: String,
    /// The findings as sent (names hashed when redacted), for Mock.
    facts: Vec<Value>,
    /// (tag, original), longest tag first.
    redactions: Vec<(String, String)>,
}

impl Prompt {
    /// `answer` with every hashed name replaced by the original.
    pub fn restore(&self, answer: &str) -> String {
        let mut out = answer.to_string();
        for (tag, orig) in &self.redactions {
            out = out.replace(tag.as_str(), orig);
        }
        out
    }

    /// How many names were hashed.
    pub fn redacted_names(&self) -> usize {
        self.redactions.len()
    }
}

/// What leaves the machine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PromptOptions {
    /// Keep argument evidence and quoted strings (`--include-args`).
    pub include_args: bool,
    /// Hash function names, file paths and module names (`--redact`).
    pub redact: bool,
}

const SYSTEM_PROMPT: &str = "You explain performance findings from scope, a profiler that measured every call of a native program. \
The findings below were computed from the measured data; with the summary they are the only facts you may use. Rules:
1. Every sentence that makes a claim cites the finding it rests on as [F<n>], e.g. [F2], in that sentence.
2. Name only functions, files and numbers that appear in the findings or the summary; if something cannot be explained from them, say so instead of guessing.
3. Write function names in backticks, exactly as given. Names like fn_1a2b3c or path_1a2b3c are anonymised: use them unchanged.
4. Be brief: most important finding first, a few sentences each, then what to look at next.";

/// The prompt for `findings` (ids `F1`…) and an aggregate `summary`.
pub fn build_prompt(findings: &[Finding], summary: &str, opts: &PromptOptions) -> Prompt {
    let mut r = Redactor::new(opts.redact);
    // Names the findings give exactly first, so their occurrences in
    // messages and the summary hash the same way.
    for f in findings {
        r.tag_function(&f.function);
        if let Some(rel) = &f.related {
            r.tag_function(rel);
        }
        if let Some(loc) = &f.location {
            r.tag_location(loc);
        }
    }
    let text = |s: &str, r: &mut Redactor| {
        let s = if opts.include_args {
            s.to_string()
        } else {
            drop_strings(s)
        };
        r.text(&s)
    };
    // Each finding as one JSON line with its keys in reading order (a
    // serde_json map would sort them); `facts` keeps them as values for Mock.
    let mut facts = Vec::with_capacity(findings.len());
    let mut lines = Vec::with_capacity(findings.len());
    for f in findings {
        let mut o: Vec<(&str, Value)> = vec![
            ("id", json!(f.id)),
            ("kind", json!(f.kind.as_str())),
            ("function", json!(r.tag_function(&f.function))),
        ];
        if let Some(rel) = &f.related {
            o.push(("related", json!(r.tag_function(rel))));
        }
        if let Some(loc) = &f.location {
            o.push(("location", json!(r.tag_location(loc))));
        }
        o.push(("severity", json!(round3(f.severity))));
        o.push(("confidence", json!(round3(f.confidence))));
        let mut ev: Vec<(&str, Value)> = Vec::new();
        for e in &f.evidence {
            if !opts.include_args && e.name.starts_with("arg") {
                continue;
            }
            let mut v = format!("{} {}", fmt_num(e.value), e.unit);
            if e.estimated {
                v.push_str(" (estimated)");
            }
            ev.push((&e.name, json!(v.trim())));
        }
        o.push(("message", json!(text(&f.message, &mut r))));
        let mut line = ordered_json(&o);
        line.pop();
        line.push_str(&format!(",\"evidence\":{}}}", ordered_json(&ev)));
        let mut map: serde_json::Map<String, Value> =
            o.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        map.insert(
            "evidence".into(),
            Value::Object(ev.into_iter().map(|(k, v)| (k.to_string(), v)).collect()),
        );
        facts.push(Value::Object(map));
        lines.push(line);
    }
    let summary = text(summary.trim(), &mut r);
    let mut user = String::new();
    if !summary.is_empty() {
        user.push_str("Summary of the session:\n");
        user.push_str(&summary);
        user.push_str("\n\n");
    }
    user.push_str(&format!(
        "Findings ({}, most important first):\n",
        lines.len()
    ));
    for l in &lines {
        user.push_str(l);
        user.push('\n');
    }
    user.push_str(
        "\nExplain these findings to the program's developer: what each means, the likely cause, and what to try. Cite [F<n>] in every sentence that makes a claim.",
    );
    let mut redactions: Vec<(String, String)> = r.map.into_iter().map(|(o, t)| (t, o)).collect();
    redactions.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
    Prompt {
        system: SYSTEM_PROMPT.to_string(),
        user,
        facts,
        redactions,
    }
}

/// `{"k":v,…}` with the keys in the given order.
fn ordered_json(pairs: &[(&str, Value)]) -> String {
    let body: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{}:{v}", Value::from(*k)))
        .collect();
    format!("{{{}}}", body.join(","))
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// A number as people read it: integers whole, others to 4 significant digits.
fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    if v.fract() == 0.0 && v.abs() < 1e15 {
        return format!("{}", v as i64);
    }
    let digits = (4 - (v.abs().log10().floor() as i32) - 1).clamp(0, 12) as usize;
    let s = format!("{v:.digits$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// `s` with the contents of double-quoted strings dropped (argument values).
fn drop_strings(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find('"') {
        out.push_str(&rest[..start]);
        match rest[start + 1..].find('"') {
            Some(end) => {
                out.push_str("\"<string>\"");
                rest = &rest[start + 1 + end + 1..];
            }
            None => {
                out.push_str("\"<string>");
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// Stable short hashes for names (`fn_3fa2c1`), one per original.
struct Redactor {
    enabled: bool,
    /// original → tag
    map: HashMap<String, String>,
    tags: HashSet<String>,
}

impl Redactor {
    fn new(enabled: bool) -> Redactor {
        Redactor {
            enabled,
            map: HashMap::new(),
            tags: HashSet::new(),
        }
    }

    fn tag(&mut self, prefix: &str, original: &str) -> String {
        if !self.enabled || original.is_empty() {
            return original.to_string();
        }
        if let Some(t) = self.map.get(original) {
            return t.clone();
        }
        let d = ring::digest::digest(&ring::digest::SHA256, original.as_bytes());
        let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        // 6 hex digits, longer on the rare collision.
        let mut n = 6;
        let mut t = format!("{prefix}{}", &hex[..n]);
        while self.tags.contains(&t) && n < hex.len() {
            n += 2;
            t = format!("{prefix}{}", &hex[..n]);
        }
        self.tags.insert(t.clone());
        self.map.insert(original.to_string(), t.clone());
        t
    }

    fn tag_function(&mut self, f: &str) -> String {
        self.tag("fn_", f)
    }

    /// `path:line` → `path_xxxxxx:line`.
    fn tag_location(&mut self, loc: &str) -> String {
        if !self.enabled {
            return loc.to_string();
        }
        match loc.rsplit_once(':') {
            Some((p, line)) if !line.is_empty() && line.bytes().all(|b| b.is_ascii_digit()) => {
                format!("{}:{line}", self.tag("path_", p))
            }
            _ => self.tag("path_", loc),
        }
    }

    /// Free text: known names replaced, then any token that looks like a
    /// path (`a/b.c`) or a module path (`a::b`) hashed too.
    fn text(&mut self, s: &str) -> String {
        if !self.enabled {
            return s.to_string();
        }
        let mut extra = Vec::new();
        for tok in s.split(|c: char| c.is_whitespace() || "\"'`,;()[]{}".contains(c)) {
            let tok = tok.trim_end_matches(['.', ':']);
            if tok.is_empty() || self.map.contains_key(tok) {
                continue;
            }
            let pathish = tok.contains('/')
                && tok.len() > 2
                && (tok.starts_with('/') || tok.starts_with("./") || tok.contains('.'));
            if pathish {
                let p = match tok.rsplit_once(':') {
                    Some((p, l)) if l.bytes().all(|b| b.is_ascii_digit()) => p,
                    _ => tok,
                };
                extra.push(("path_", p.to_string()));
            } else if tok.contains("::") {
                extra.push(("fn_", tok.to_string()));
            }
        }
        for (prefix, t) in extra {
            self.tag(prefix, &t);
        }
        let mut pairs: Vec<(&String, &String)> = self.map.iter().collect();
        pairs.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(b.0)));
        // One pass over placeholders so a tag never gets rewritten by a
        // later, shorter name that it happens to contain.
        let mut out = s.to_string();
        let mut holes = Vec::new();
        for (i, (orig, tag)) in pairs.iter().enumerate() {
            if out.contains(orig.as_str()) {
                let hole = format!("\u{1}{i}\u{1}");
                out = out.replace(orig.as_str(), &hole);
                holes.push((hole, (*tag).clone()));
            }
        }
        for (hole, tag) in holes {
            out = out.replace(&hole, &tag);
        }
        out
    }
}

/// An answer with what it cites and what it names that the findings do not.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Checked {
    pub text: String,
    /// Finding ids the answer cites, in first-cited order.
    pub cited: Vec<String>,
    /// Sentences (three words or more) that cite no finding.
    pub uncited_sentences: usize,
    /// Cited ids that are no finding.
    pub unknown_ids: Vec<String>,
    /// Function-like names in the answer that neither the findings nor
    /// `known_functions` have.
    pub unknown_functions: Vec<String>,
}

impl Checked {
    /// Nothing to flag.
    pub fn is_clean(&self) -> bool {
        self.uncited_sentences == 0
            && self.unknown_ids.is_empty()
            && self.unknown_functions.is_empty()
    }
}

/// Checks an answer (already [`Prompt::restore`]d) against the findings.
pub fn check_answer(answer: &str, findings: &[Finding], known_functions: &[String]) -> Checked {
    let ids: HashSet<&str> = findings.iter().map(|f| f.id.as_str()).collect();
    let mut cited: Vec<String> = Vec::new();
    let mut unknown_ids: Vec<String> = Vec::new();
    let mut uncited = 0;
    for line in answer.lines() {
        let mut prev_open = false; // the previous sentence has no citation yet
        for seg in split_sentences(line) {
            let cites = citations(seg);
            for c in &cites {
                if !cited.contains(c) {
                    cited.push(c.clone());
                }
                if !ids.contains(c.as_str()) && !unknown_ids.contains(c) {
                    unknown_ids.push(c.clone());
                }
            }
            // "… is slow. [F1]": a leading citation also covers the sentence
            // before when that one has none ("[F1] X is slow." covers its own).
            let body = strip_leading_citations(seg);
            if body.len() < seg.trim_start().len() && prev_open {
                uncited -= 1;
            }
            let words = body
                .split_whitespace()
                .filter(|w| w.chars().any(char::is_alphanumeric))
                .count();
            let heading = body.trim_start().starts_with('#') || body.trim_end().ends_with(':');
            if words >= 3 && !heading && cites.is_empty() {
                uncited += 1;
                prev_open = true;
            } else {
                prev_open = false;
            }
        }
    }
    let mut allowed: HashSet<String> = HashSet::new();
    let mut known: Vec<String> = Vec::new();
    for f in findings {
        known.push(norm_name(&f.function));
        if let Some(r) = &f.related {
            known.push(norm_name(r));
        }
        for e in &f.evidence {
            allowed.insert(e.name.clone());
            allowed.insert(e.unit.to_string());
        }
        allowed.insert(f.kind.as_str().to_string());
        allowed.insert(f.id.clone());
    }
    known.extend(known_functions.iter().map(|k| norm_name(k)));
    let mut unknown_functions: Vec<String> = Vec::new();
    for cand in function_candidates(answer) {
        let n = norm_name(&cand);
        if n.is_empty() || allowed.contains(&n) || allowed.contains(&cand) {
            continue;
        }
        if !known.iter().any(|k| same_function(&n, k)) && !unknown_functions.contains(&cand) {
            unknown_functions.push(cand);
        }
    }
    Checked {
        text: answer.to_string(),
        cited,
        uncited_sentences: uncited,
        unknown_ids,
        unknown_functions,
    }
}

/// Sentences of one line: split after `.`, `!` or `?` followed by a space.
fn split_sentences(line: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let b = line.as_bytes();
    let mut start = 0;
    let mut in_tick = false;
    for i in 0..b.len() {
        if b[i] == b'`' {
            in_tick = !in_tick;
        }
        if !in_tick
            && matches!(b[i], b'.' | b'!' | b'?')
            && b.get(i + 1).is_some_and(|c| *c == b' ')
            // Not a decimal point or "e.g. ".
            && !(i >= 1 && b[i - 1].is_ascii_digit() && b.get(i + 1).is_some_and(u8::is_ascii_digit))
            && !line[..=i].ends_with("e.g.")
            && !line[..=i].ends_with("i.e.")
        {
            out.push(&line[start..=i]);
            start = i + 1;
        }
    }
    if start < line.len() {
        out.push(&line[start..]);
    }
    out.into_iter().filter(|s| !s.trim().is_empty()).collect()
}

/// `[F1]`, `[F1, F3]`, `[F2][F4]` → the ids.
fn citations(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        let Some(close) = after.find(']') else { break };
        let inner = &after[..close];
        let toks: Vec<&str> = inner
            .split(|c: char| c == ',' || c == ';' || c.is_whitespace())
            .filter(|t| !t.is_empty())
            .collect();
        if !toks.is_empty() && toks.iter().all(|t| is_finding_id(t)) {
            out.extend(toks.iter().map(|t| t.to_string()));
        }
        rest = &after[close + 1..];
    }
    out
}

fn is_finding_id(t: &str) -> bool {
    t.len() > 1 && t.starts_with('F') && t[1..].bytes().all(|b| b.is_ascii_digit())
}

fn strip_leading_citations(seg: &str) -> &str {
    let mut s = seg.trim_start();
    while s.starts_with('[') {
        match s.find(']') {
            Some(end) if !citations(&s[..=end]).is_empty() => {
                s = s[end + 1..].trim_start_matches([' ', '.', ',']);
            }
            _ => break,
        }
    }
    s
}

/// Names in the answer that look like functions: backticked identifiers and
/// `name(`/`a::b(` written as calls.
fn function_candidates(answer: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut outside = String::new();
    for (i, part) in answer.split('`').enumerate() {
        if i % 2 == 0 {
            outside.push_str(part);
            outside.push(' ');
            continue;
        }
        let p = part.trim();
        let name = p.split('(').next().unwrap_or("").trim();
        if is_identifier_path(name) {
            out.push(name.to_string());
        }
    }
    let b = outside.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_alphabetic() || b[i] == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
                i += 1;
            }
            let name = outside[start..i].trim_end_matches(':');
            let call = b.get(i) == Some(&b'(');
            let empty_args = outside[i..].starts_with("()");
            let plural = outside[i..].starts_with("(s)") || outside[i..].starts_with("(es)");
            if call
                && !plural
                && (empty_args || name.contains('_') || name.contains("::"))
                && is_identifier_path(name)
            {
                out.push(name.to_string());
            }
        } else {
            i += 1;
        }
    }
    out
}

fn is_identifier_path(s: &str) -> bool {
    // Generic arguments may hold anything; the name before them may not.
    let head = s.split('<').next().unwrap_or("");
    head.chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_' || c == '~')
        && head
            .chars()
            .all(|c| c.is_alphanumeric() || "_:.~".contains(c))
        && !head.ends_with('.')
        && (head.len() == s.len() || s.ends_with('>'))
}

/// A function name as compared: generics, arguments, a Rust hash suffix
/// and a leading `&` dropped; `.` as `::`.
fn norm_name(s: &str) -> String {
    let s = s.trim().trim_start_matches('&');
    let s = s.split('(').next().unwrap_or("");
    let mut out = String::with_capacity(s.len());
    let mut depth = 0;
    for c in s.chars() {
        match c {
            '<' => depth += 1,
            '>' => depth = (depth - 1).max(0),
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    let mut out = out.replace('.', "::");
    if let Some((head, h)) = out.rsplit_once("::h")
        && h.len() == 16
        && h.bytes().all(|b| b.is_ascii_hexdigit())
    {
        out = head.to_string();
    }
    out.trim().trim_matches(':').to_string()
}

/// `cand` names `known`: the same, or one a `::`-suffix of the other.
fn same_function(cand: &str, known: &str) -> bool {
    cand == known || known.ends_with(&format!("::{cand}")) || cand.ends_with(&format!("::{known}"))
}

/// The answer, then what it names that the findings do not.
pub fn render_checked(c: &Checked) -> String {
    let mut out = c.text.trim_end().to_string();
    out.push('\n');
    if c.is_clean() {
        return out;
    }
    out.push_str("\nnot in the findings:\n");
    for f in &c.unknown_functions {
        out.push_str(&format!(
            "  function `{f}`: named by the answer, not a function of the findings or of the session\n"
        ));
    }
    for id in &c.unknown_ids {
        out.push_str(&format!("  [{id}]: cited, but there is no such finding\n"));
    }
    if c.uncited_sentences > 0 {
        out.push_str(&format!(
            "  {} sentence{} cite{} no finding\n",
            c.uncited_sentences,
            if c.uncited_sentences == 1 { "" } else { "s" },
            if c.uncited_sentences == 1 { "s" } else { "" },
        ));
    }
    out
}

/// The whole `explain`: prompt, answer, names mapped back, answer checked.
pub async fn explain(
    cfg: &LlmConfig,
    findings: &[Finding],
    summary: &str,
    opts: &PromptOptions,
    known_functions: &[String],
) -> Result<Checked, LlmError> {
    let prompt = build_prompt(findings, summary, opts);
    let answer = complete(cfg, &prompt).await?;
    Ok(check_answer(
        &prompt.restore(&answer),
        findings,
        known_functions,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(fmt_num(1200.0), "1200");
        assert_eq!(fmt_num(0.6234), "0.6234");
        assert_eq!(fmt_num(12.345678), "12.35");
        assert_eq!(fmt_num(0.000123456), "0.0001235");
    }

    #[test]
    fn strings_dropped() {
        assert_eq!(
            drop_strings(r#"open("/etc/x") slow"#),
            r#"open("<string>") slow"#
        );
        assert_eq!(drop_strings("no strings"), "no strings");
    }

    #[test]
    fn sentences_and_citations() {
        let s = split_sentences("A is slow at 1.5 ms [F1]. B waits, e.g. on locks. [F2] C");
        assert_eq!(s.len(), 3, "{s:?}");
        assert_eq!(
            citations("x [F1, F3] y [F2][note] [F10]"),
            vec!["F1", "F3", "F2", "F10"]
        );
    }

    #[test]
    fn names_normalised() {
        assert_eq!(norm_name("&Vec<T>::push(x)"), "Vec::push");
        assert_eq!(norm_name("app::run::h0123456789abcdef"), "app::run");
        assert!(same_function("query", "app::db::query"));
        assert!(!same_function("xquery", "app::db::query"));
    }
}
