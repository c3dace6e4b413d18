//! Vertex AI: the Gemini models at POST
//! `{endpoint}/v1/projects/{p}/locations/{l}/publishers/google/models/{m}:generateContent`
//! with `Authorization: Bearer <access token>`. The token is given
//! (`VERTEX_ACCESS_TOKEN`) or bought once per run from a service account:
//! a JWT signed RS256 with its key, POSTed to its `token_uri` as
//! `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer` (RFC 7523).

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use reqwest::header::{AUTHORIZATION, HeaderMap};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use super::{
    Credential, Failure, Http, LlmConfig, LlmError, PostBody, Prompt, Provider, ProviderKind,
    Secret, SecretBytes, ServiceAccount, Target, gemini, secret_header,
};

pub(crate) const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

pub(crate) struct Vertex {
    target: Target,
    url: String,
    credential: Credential,
    /// The access token, fetched on the first attempt and kept for retries.
    token: OnceCell<Secret>,
}

impl Vertex {
    pub(crate) fn new(cfg: &LlmConfig) -> Result<Vertex, LlmError> {
        let target = cfg.target();
        let missing = |what: &str| LlmError::MissingKey {
            provider: ProviderKind::Vertex,
            hint: what.to_string(),
        };
        let project = cfg
            .project
            .as_deref()
            .ok_or_else(|| missing("no Google Cloud project: set GOOGLE_CLOUD_PROJECT"))?;
        let location = cfg.location.as_deref().unwrap_or("us-central1");
        if matches!(cfg.credential, Credential::None | Credential::ApiKey { .. }) {
            return Err(missing(
                "no credentials: set VERTEX_ACCESS_TOKEN or GOOGLE_APPLICATION_CREDENTIALS to a service-account JSON",
            ));
        }
        let base = match &cfg.endpoint {
            Some(e) => e.clone(),
            None if location == "global" => "https://aiplatform.googleapis.com".to_string(),
            None => format!("https://{location}-aiplatform.googleapis.com"),
        };
        let url = format!(
            "{base}/v1/projects/{project}/locations/{location}/publishers/google/models/{}:generateContent",
            target.model
        );
        Ok(Vertex {
            target,
            url,
            credential: cfg.credential.clone(),
            token: OnceCell::new(),
        })
    }

    async fn token(&self, http: &Http) -> Result<&Secret, Failure> {
        self.token
            .get_or_try_init(|| async {
                match &self.credential {
                    Credential::AccessToken { token, .. } => Ok(token.clone()),
                    Credential::ServiceAccount(sa) => fetch_token(http, &self.target, sa).await,
                    Credential::None | Credential::ApiKey { .. } => {
                        Err(Failure::Fatal(LlmError::MissingKey {
                            provider: ProviderKind::Vertex,
                            hint: "no credentials: no access token".to_string(),
                        }))
                    }
                }
            })
            .await
    }
}

impl Provider for Vertex {
    fn target(&self) -> &Target {
        &self.target
    }

    async fn send(&self, http: &Http, prompt: &Prompt) -> Result<String, Failure> {
        let token = self.token(http).await?;
        let mut headers = HeaderMap::new();
        let v = secret_header(&format!("Bearer {}", token.expose())).map_err(|reason| {
            LlmError::Credentials {
                provider: ProviderKind::Vertex,
                origin: "the access token".to_string(),
                reason: reason.to_string(),
            }
        })?;
        headers.insert(AUTHORIZATION, v);
        let body = gemini::request_body(prompt);
        // The bought token is no key of the config: scrub it as well.
        let http = http.with_secret(token.expose());
        let answer = http
            .post(&self.target, &self.url, headers, PostBody::Json(&body))
            .await?;
        gemini::answer_text(&http, &self.target, &answer)
    }
}

/// Reads a service-account JSON: its key checked now, so a bad file is one
/// line before any request. Also returns its `project_id`.
pub(crate) fn read_service_account(
    path: &Path,
    token_uri: Option<String>,
) -> Result<(ServiceAccount, Option<String>), LlmError> {
    let err = |reason: String| LlmError::Credentials {
        provider: ProviderKind::Vertex,
        origin: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read it: {e}")))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| err(format!("not JSON ({e})")))?;
    let field = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    match field("type").as_deref() {
        Some("service_account") => {}
        Some(other) => {
            return Err(err(format!(
                "is a {other} credential; only service_account files are read (or set VERTEX_ACCESS_TOKEN=$(gcloud auth print-access-token))"
            )));
        }
        None => {
            return Err(err(
                "has no \"type\": not a Google credentials file".to_string()
            ));
        }
    }
    let client_email = field("client_email").ok_or_else(|| err("has no client_email".into()))?;
    let pem = field("private_key").ok_or_else(|| err("has no private_key".into()))?;
    let key_der = pem_to_der(&pem).map_err(|r| err(format!("private_key: {r}")))?;
    ring::signature::RsaKeyPair::from_pkcs8(&key_der)
        .map_err(|e| err(format!("private_key is not a usable RSA PKCS#8 key ({e})")))?;
    let sa = ServiceAccount {
        client_email,
        key_id: field("private_key_id"),
        key_der: SecretBytes(key_der),
        token_uri: token_uri
            .or_else(|| field("token_uri"))
            .unwrap_or_else(|| DEFAULT_TOKEN_URI.to_string()),
        path: PathBuf::from(path),
    };
    Ok((sa, field("project_id")))
}

/// The DER inside a `-----BEGIN PRIVATE KEY-----` PEM block.
fn pem_to_der(pem: &str) -> Result<Vec<u8>, String> {
    const BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
    const END: &str = "-----END PRIVATE KEY-----";
    let start = pem
        .find(BEGIN)
        .ok_or("no -----BEGIN PRIVATE KEY----- block (PKCS#8 expected)")?
        + BEGIN.len();
    let end = pem[start..]
        .find(END)
        .ok_or("the PEM block has no END line")?
        + start;
    let b64: String = pem[start..end]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    STANDARD
        .decode(b64)
        .map_err(|e| format!("the PEM block is not base64 ({e})"))
}

/// The signed JWT a service account trades for an access token.
pub(crate) fn signed_jwt(sa: &ServiceAccount, now: u64) -> Result<String, String> {
    let mut header = json!({ "alg": "RS256", "typ": "JWT" });
    if let Some(kid) = &sa.key_id {
        header["kid"] = json!(kid);
    }
    let claims = json!({
        "iss": sa.client_email,
        "scope": SCOPE,
        "aud": sa.token_uri,
        "iat": now,
        "exp": now + 3600,
    });
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let key = ring::signature::RsaKeyPair::from_pkcs8(&sa.key_der.0)
        .map_err(|e| format!("private_key rejected ({e})"))?;
    let mut sig = vec![0u8; key.public().modulus_len()];
    key.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        input.as_bytes(),
        &mut sig,
    )
    .map_err(|_| "signing the JWT failed".to_string())?;
    Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig)))
}

async fn fetch_token(http: &Http, target: &Target, sa: &ServiceAccount) -> Result<Secret, Failure> {
    let cred_err = |reason: String| {
        Failure::Fatal(LlmError::Credentials {
            provider: ProviderKind::Vertex,
            origin: format!(
                "service account {} ({})",
                sa.client_email,
                sa.path.display()
            ),
            reason,
        })
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let jwt = signed_jwt(sa, now).map_err(cred_err)?;
    let form: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer")
        .append_pair("assertion", &jwt)
        .finish();
    let v = match http
        .post(
            target,
            &sa.token_uri,
            HeaderMap::new(),
            PostBody::Form(form),
        )
        .await
    {
        Ok(v) => v,
        // A refused grant names the service account, not the model.
        Err(Failure::Fatal(
            LlmError::Rejected { detail, .. }
            | LlmError::Http { detail, .. }
            | LlmError::NotFound { detail, .. },
        )) => {
            return Err(cred_err(format!(
                "the token endpoint {} refused it: {detail}",
                sa.token_uri
            )));
        }
        Err(e) => return Err(e),
    };
    match v.get("access_token").and_then(Value::as_str) {
        Some(t) if !t.is_empty() => Ok(Secret::new(t)),
        _ => Err(cred_err(format!(
            "the token endpoint {} answered without an access_token: {:?}",
            sa.token_uri,
            http.head(&v.to_string())
        ))),
    }
}
