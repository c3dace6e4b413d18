//! The LLM client against local HTTP servers on loopback that check each
//! request's shape and answer like the real APIs; no test leaves 127.0.0.1.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use scope_query::analysis::{Evidence, Finding, Kind};
use scope_query::llm::{
    Credential, LlmConfig, LlmError, PromptOptions, ProviderKind, Secret, build_prompt,
    check_answer, complete, explain, render_checked,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

// ---------------------------------------------------------------- server

#[derive(Clone, Debug)]
struct Req {
    method: String,
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Req {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

enum Reply {
    Json(u16, Value),
    Raw(u16, Vec<(&'static str, String)>, String),
    /// Accept and read the request, never answer.
    Hang,
}

struct Server {
    base: String,
    requests: Arc<Mutex<Vec<Req>>>,
}

impl Server {
    fn requests(&self) -> Vec<Req> {
        self.requests.lock().unwrap().clone()
    }
}

/// A one-request-per-connection HTTP/1.1 server on 127.0.0.1:0; `handler`
/// gets each request and its index.
async fn serve<H>(handler: H) -> Server
where
    H: Fn(&Req, usize) -> Reply + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(Mutex::new(Vec::new()));
    let reqs = requests.clone();
    let handler = Arc::new(handler);
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let reqs = reqs.clone();
            let handler = handler.clone();
            tokio::spawn(async move {
                let Some(req) = read_request(&mut sock).await else {
                    return;
                };
                let n = {
                    let mut r = reqs.lock().unwrap();
                    r.push(req.clone());
                    r.len() - 1
                };
                let (status, headers, body) = match handler(&req, n) {
                    Reply::Json(s, v) => (s, vec![], v.to_string()),
                    Reply::Raw(s, h, b) => (s, h, b),
                    Reply::Hang => {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        return;
                    }
                };
                let mut out = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
                    body.len()
                );
                for (k, v) in headers {
                    out.push_str(&format!("{k}: {v}\r\n"));
                }
                out.push_str("\r\n");
                out.push_str(&body);
                let _ = sock.write_all(out.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    Server { base, requests }
}

async fn read_request(sock: &mut tokio::net::TcpStream) -> Option<Req> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let path = first.next()?.to_string();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(Req {
        method,
        path,
        headers,
        body,
    })
}

// ---------------------------------------------------------------- fixtures

const KEY: &str = "test-key-0123456789abcdef";

fn findings() -> Vec<Finding> {
    vec![
        Finding {
            id: "F1".into(),
            kind: Kind::Bottleneck,
            function: "app::db::run_query".into(),
            related: None,
            severity: 0.62,
            confidence: 0.9,
            evidence: vec![
                Evidence::new("self_share", 0.62, "ratio"),
                Evidence::new("calls", 1200.0, "calls"),
                Evidence::new("arg0_max", 4096.0, "bytes"),
            ],
            location: Some("/home/dev/app/src/db.rs:42".into()),
            message: "app::db::run_query takes 62% of self time, slowest on \"SELECT secret\"."
                .into(),
        },
        Finding {
            id: "F2".into(),
            kind: Kind::RepeatedWork,
            function: "app::handler".into(),
            related: Some("app::db::run_query".into()),
            severity: 0.3,
            confidence: 0.8,
            evidence: vec![Evidence::new("calls_per_parent", 40.0, "calls")],
            location: None,
            message: "app::handler calls app::db::run_query 40 times per call.".into(),
        },
    ]
}

const SUMMARY: &str = "12000 calls of 8 functions in 3.2 s; top module app::db (src/db.rs).";

fn config(kind: ProviderKind, base: &str, key: Option<&str>) -> LlmConfig {
    let mut c = LlmConfig::new(kind);
    c.model = Some(match kind {
        ProviderKind::OpenAi => "local-model".into(),
        _ => "gemini-test".into(),
    });
    c.endpoint = Some(base.to_string());
    c.timeout = Duration::from_secs(10);
    c.backoff = Duration::from_millis(10);
    if let Some(k) = key {
        c.credential = Credential::ApiKey {
            key: Secret::new(k),
            from: "test".into(),
        };
    }
    c
}

fn prompt() -> scope_query::llm::Prompt {
    build_prompt(&findings(), SUMMARY, &PromptOptions::default())
}

fn gemini_answer(text: &str) -> Value {
    json!({
        "candidates": [{
            "content": { "parts": [ { "text": text } ], "role": "model" },
            "finishReason": "STOP",
            "index": 0
        }],
        "usageMetadata": { "promptTokenCount": 10, "candidatesTokenCount": 5, "totalTokenCount": 15 },
        "modelVersion": "gemini-test"
    })
}

fn openai_answer(text: &str) -> Value {
    json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "local-model",
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": text },
            "finish_reason": "stop"
        }],
        "usage": { "prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15 }
    })
}

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let m: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| m.get(k).cloned()
}

fn one_line(e: &LlmError) -> String {
    let s = e.to_string();
    assert!(!s.contains('\n'), "error is not one line: {s}");
    assert!(!s.contains(KEY), "error shows the key: {s}");
    s
}

// ---------------------------------------------------------------- providers

#[tokio::test]
async fn gemini_request_and_answer() {
    let srv =
        serve(|_, _| Reply::Json(200, gemini_answer("[F1] `app::db::run_query` is slow."))).await;
    let cfg = config(ProviderKind::Gemini, &srv.base, Some(KEY));
    let answer = complete(&cfg, &prompt()).await.unwrap();
    assert_eq!(answer, "[F1] `app::db::run_query` is slow.");

    let reqs = srv.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/v1beta/models/gemini-test:generateContent");
    assert_eq!(r.header("x-goog-api-key"), Some(KEY));
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("application/json")
    );
    let b = r.json();
    let user = b["contents"][0]["parts"][0]["text"].as_str().unwrap();
    assert_eq!(b["contents"][0]["role"], "user");
    assert!(
        user.contains("\"id\":\"F1\"") && user.contains("\"id\":\"F2\""),
        "{user}"
    );
    assert!(user.contains("12000 calls of 8 functions"), "{user}");
    let system = b["systemInstruction"]["parts"][0]["text"].as_str().unwrap();
    assert!(system.contains("[F<n>]"), "{system}");
}

#[tokio::test]
async fn openai_request_and_answer_with_and_without_key() {
    let srv =
        serve(|_, _| Reply::Json(200, openai_answer("[F2] `app::handler` repeats work."))).await;
    let base = format!("{}/v1", srv.base);

    let cfg = config(ProviderKind::OpenAi, &base, Some(KEY));
    assert_eq!(
        complete(&cfg, &prompt()).await.unwrap(),
        "[F2] `app::handler` repeats work."
    );
    // A local server needs no key: resolved from OPENAI_BASE_URL alone.
    let env = env_of(&[("OPENAI_BASE_URL", &base)]);
    let mut local =
        LlmConfig::resolve_with(Some("openai"), Some("local-model"), None, &env).unwrap();
    local.backoff = Duration::from_millis(10);
    assert_eq!(local.credential, Credential::None);
    complete(&local, &prompt()).await.unwrap();

    let reqs = srv.requests();
    assert_eq!(reqs.len(), 2);
    for r in &reqs {
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/v1/chat/completions");
        let b = r.json();
        assert_eq!(b["model"], "local-model");
        assert_eq!(b["messages"][0]["role"], "system");
        assert_eq!(b["messages"][1]["role"], "user");
        assert!(
            b["messages"][1]["content"]
                .as_str()
                .unwrap()
                .contains("\"id\":\"F1\"")
        );
    }
    assert_eq!(
        reqs[0].header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert_eq!(reqs[1].header("authorization"), None);
}

/// A throwaway RSA key for the test, made by openssl now (none is committed).
fn test_rsa_key(dir: &std::path::Path) -> String {
    let path = dir.join("test-only-key.pem");
    let out = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&path)
        .output()
        .expect("openssl is needed to make the test's throwaway RSA key");
    assert!(
        out.status.success(),
        "openssl genpkey: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(&path).unwrap()
}

fn pem_der(pem: &str) -> Vec<u8> {
    let b64: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .join("");
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

#[tokio::test]
async fn vertex_service_account_jwt_flow() {
    let dir = tempfile::tempdir().unwrap();
    let pem = test_rsa_key(dir.path());
    let srv = serve(|r, _| {
        if r.path == "/token" {
            Reply::Json(
                200,
                json!({ "access_token": "ya29.test-access-token", "expires_in": 3599, "token_type": "Bearer" }),
            )
        } else {
            Reply::Json(200, gemini_answer("[F1] `app::db::run_query` dominates."))
        }
    })
    .await;
    let token_uri = format!("{}/token", srv.base);
    let sa = json!({
        "type": "service_account",
        "project_id": "proj-1",
        "private_key_id": "kid-123",
        "private_key": pem,
        "client_email": "scope-test@proj-1.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": token_uri,
    });
    let sa_path = dir.path().join("sa.json");
    std::fs::write(&sa_path, sa.to_string()).unwrap();
    let env = env_of(&[
        ("GOOGLE_APPLICATION_CREDENTIALS", sa_path.to_str().unwrap()),
        ("VERTEX_LOCATION", "europe-west4"),
        ("SCOPE_VERTEX_ENDPOINT", &srv.base),
    ]);
    let cfg = LlmConfig::resolve_with(Some("vertex"), Some("gemini-test"), None, &env).unwrap();
    assert_eq!(cfg.project.as_deref(), Some("proj-1"));
    let dbg = format!("{cfg:?}");
    assert!(
        !dbg.contains("PRIVATE KEY") && !dbg.contains(&pem[40..80]),
        "{dbg}"
    );
    let answer = complete(&cfg, &prompt()).await.unwrap();
    assert_eq!(answer, "[F1] `app::db::run_query` dominates.");

    let reqs = srv.requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    // The token request: an RFC 7523 form with a JWT signed by the key.
    let t = &reqs[0];
    assert_eq!((t.method.as_str(), t.path.as_str()), ("POST", "/token"));
    assert_eq!(
        t.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    let form: HashMap<String, String> = url::form_urlencoded::parse(&t.body).into_owned().collect();
    assert_eq!(
        form["grant_type"],
        "urn:ietf:params:oauth:grant-type:jwt-bearer"
    );
    let jwt: Vec<&str> = form["assertion"].split('.').collect();
    assert_eq!(jwt.len(), 3);
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(jwt[0]).unwrap()).unwrap();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(jwt[1]).unwrap()).unwrap();
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["typ"], "JWT");
    assert_eq!(header["kid"], "kid-123");
    assert_eq!(claims["iss"], "scope-test@proj-1.iam.gserviceaccount.com");
    assert_eq!(claims["aud"], token_uri.as_str());
    assert_eq!(
        claims["scope"],
        "https://www.googleapis.com/auth/cloud-platform"
    );
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        3600
    );
    let key = ring::signature::RsaKeyPair::from_pkcs8(&pem_der(&pem)).unwrap();
    use ring::signature::KeyPair;
    let public = ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        key.public_key().as_ref().to_vec(),
    );
    public
        .verify(
            format!("{}.{}", jwt[0], jwt[1]).as_bytes(),
            &URL_SAFE_NO_PAD.decode(jwt[2]).unwrap(),
        )
        .expect("the JWT's signature verifies with the service account's key");
    // The model request: the bought token as Bearer.
    let g = &reqs[1];
    assert_eq!(
        g.path,
        "/v1/projects/proj-1/locations/europe-west4/publishers/google/models/gemini-test:generateContent"
    );
    assert_eq!(
        g.header("authorization"),
        Some("Bearer ya29.test-access-token")
    );
    let b = g.json();
    assert!(
        b["contents"][0]["parts"][0]["text"]
            .as_str()
            .unwrap()
            .contains("F2")
    );
    assert!(b["systemInstruction"]["parts"][0]["text"].is_string());
}

#[tokio::test]
async fn vertex_given_access_token() {
    let srv = serve(|_, _| Reply::Json(200, gemini_answer("[F1] ok."))).await;
    let env = env_of(&[
        ("VERTEX_ACCESS_TOKEN", KEY),
        ("GOOGLE_CLOUD_PROJECT", "p2"),
        ("SCOPE_VERTEX_ENDPOINT", &srv.base),
    ]);
    let cfg = LlmConfig::resolve_with(Some("vertex"), Some("gemini-test"), None, &env).unwrap();
    assert!(!format!("{cfg:?}").contains(KEY));
    complete(&cfg, &prompt()).await.unwrap();
    let reqs = srv.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        reqs[0].path,
        "/v1/projects/p2/locations/us-central1/publishers/google/models/gemini-test:generateContent"
    );
    assert_eq!(
        reqs[0].header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
}

#[tokio::test]
async fn vertex_refused_grant_names_the_service_account() {
    let dir = tempfile::tempdir().unwrap();
    let pem = test_rsa_key(dir.path());
    let srv = serve(|_, _| {
        Reply::Json(
            400,
            json!({ "error": "invalid_grant", "error_description": "Invalid JWT Signature." }),
        )
    })
    .await;
    let sa = json!({
        "type": "service_account", "project_id": "p", "private_key": pem,
        "client_email": "sa@p.iam.gserviceaccount.com",
    });
    let sa_path = dir.path().join("sa.json");
    std::fs::write(&sa_path, sa.to_string()).unwrap();
    let token_uri = format!("{}/token", srv.base);
    let env = env_of(&[
        ("GOOGLE_APPLICATION_CREDENTIALS", sa_path.to_str().unwrap()),
        ("SCOPE_VERTEX_TOKEN_URI", &token_uri),
        ("SCOPE_VERTEX_ENDPOINT", &srv.base),
    ]);
    let cfg = LlmConfig::resolve_with(Some("vertex"), None, None, &env).unwrap();
    let e = one_line(&complete(&cfg, &prompt()).await.unwrap_err());
    assert!(
        e.contains("sa@p.iam.gserviceaccount.com")
            && e.contains("invalid_grant: Invalid JWT Signature"),
        "{e}"
    );
    assert_eq!(srv.requests().len(), 1);
}

#[tokio::test]
async fn mock_cites_every_finding_in_order() {
    let cfg = LlmConfig::resolve_with(Some("mock"), None, None, &env_of(&[])).unwrap();
    let f = findings();
    let checked = explain(&cfg, &f, SUMMARY, &PromptOptions::default(), &[])
        .await
        .unwrap();
    assert_eq!(checked.cited, vec!["F1", "F2"]);
    assert!(checked.is_clean(), "{checked:?}");
    assert!(
        checked
            .text
            .starts_with("[F1] `app::db::run_query` is a bottleneck finding")
    );
    assert!(checked.text.contains("self_share = 0.62 ratio"));
    // Deterministic.
    let again = explain(&cfg, &f, SUMMARY, &PromptOptions::default(), &[])
        .await
        .unwrap();
    assert_eq!(checked, again);
    assert_eq!(
        render_checked(&checked),
        format!("{}\n", checked.text.trim_end())
    );
}

// ---------------------------------------------------------------- prompt

#[tokio::test]
async fn redaction_hashes_names_and_maps_them_back() {
    let f = findings();
    let opts = PromptOptions {
        include_args: false,
        redact: true,
    };
    let p = build_prompt(&f, SUMMARY, &opts);
    let all = format!("{}\n{}", p.system, p.user);
    for name in ["run_query", "app::handler", "app::db", "/home/dev", "db.rs"] {
        assert!(!all.contains(name), "{name} leaked into the prompt:\n{all}");
    }
    assert!(all.contains("fn_"), "{all}");
    assert!(all.contains("path_") && all.contains(":42"), "{all}");
    // Stable: the same names hash the same way.
    assert_eq!(build_prompt(&f, SUMMARY, &opts).user, p.user);

    let cfg = LlmConfig::new(ProviderKind::Mock);
    let raw = complete(&cfg, &p).await.unwrap();
    assert!(!raw.contains("run_query"));
    let restored = p.restore(&raw);
    assert!(restored.contains("`app::db::run_query`"), "{restored}");
    let c = check_answer(&restored, &f, &[]);
    assert!(c.is_clean(), "{c:?}");
}

#[test]
fn arguments_only_with_include_args() {
    let f = findings();
    let without = build_prompt(&f, SUMMARY, &PromptOptions::default());
    // One JSON line per finding, keys in reading order.
    assert!(
        without.user.contains(
            "\n{\"id\":\"F1\",\"kind\":\"bottleneck\",\"function\":\"app::db::run_query\","
        ),
        "{}",
        without.user
    );
    assert!(
        without
            .user
            .contains("\"evidence\":{\"self_share\":\"0.62 ratio\",\"calls\":\"1200 calls\"}}\n"),
        "{}",
        without.user
    );
    assert!(!without.user.contains("arg0_max"), "{}", without.user);
    assert!(!without.user.contains("SELECT secret"), "{}", without.user);
    let with = build_prompt(
        &f,
        SUMMARY,
        &PromptOptions {
            include_args: true,
            redact: false,
        },
    );
    assert!(with.user.contains("arg0_max"));
    assert!(with.user.contains("SELECT secret"));
}

// ---------------------------------------------------------------- answer check

#[test]
fn answer_check_flags_what_the_findings_lack() {
    let f = findings();
    let answer = "`run_query` takes most of the time [F1]. \
                  The handler loops over it. [F2]\n\
                  It probably calls `parse_rows` and serde_json::from_str() too [F1].\n\
                  This is a claim without any citation at all.\n\
                  See also [F9].";
    let known = vec!["app::main".to_string()];
    let c = check_answer(answer, &f, &known);
    assert_eq!(c.cited, vec!["F1", "F2", "F9"]);
    assert_eq!(c.unknown_ids, vec!["F9"]);
    assert_eq!(
        c.unknown_functions,
        vec!["parse_rows", "serde_json::from_str"]
    );
    assert_eq!(c.uncited_sentences, 1, "{c:?}");
    let r = render_checked(&c);
    assert!(r.starts_with(answer));
    assert!(r.contains("not in the findings:"));
    assert!(
        r.contains("`parse_rows`")
            && r.contains("[F9]")
            && r.contains("1 sentence cites no finding"),
        "{r}"
    );

    // A name among the session's functions is not flagged.
    let c = check_answer("`app::main` calls it [F1].", &f, &known);
    assert!(c.is_clean(), "{c:?}");
}

// ---------------------------------------------------------------- errors

#[tokio::test]
async fn rejected_key_401_and_403() {
    // The server echoes the key: the error must not.
    let srv = serve(|_, n| {
        let status = if n == 0 { 401 } else { 403 };
        Reply::Json(
            status,
            json!({ "error": { "message": format!("Incorrect API key provided: {KEY}"), "type": "invalid_request_error", "code": "invalid_api_key" } }),
        )
    })
    .await;
    let cfg = config(ProviderKind::OpenAi, &srv.base, Some(KEY));
    for status in ["401", "403"] {
        let e = complete(&cfg, &prompt()).await.unwrap_err();
        assert!(matches!(e, LlmError::Rejected { .. }), "{e:?}");
        let s = one_line(&e);
        assert!(
            s.starts_with("openai model local-model: key or token rejected"),
            "{s}"
        );
        assert!(s.contains(status) && s.contains("<redacted>"), "{s}");
    }
    assert_eq!(srv.requests().len(), 2, "401/403 are not retried");
}

#[tokio::test]
async fn gemini_invalid_key_400() {
    let srv = serve(|_, _| {
        Reply::Json(400, json!({ "error": { "code": 400, "message": "API key not valid. Please pass a valid API key.", "status": "INVALID_ARGUMENT",
            "details": [ { "@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID" } ] } }))
    })
    .await;
    let cfg = config(ProviderKind::Gemini, &srv.base, Some(KEY));
    let e = complete(&cfg, &prompt()).await.unwrap_err();
    let s = one_line(&e);
    assert!(
        s.contains("gemini model gemini-test: API key rejected (HTTP 400)"),
        "{s}"
    );
}

#[tokio::test]
async fn unknown_model_404() {
    let srv = serve(|_, _| {
        Reply::Json(404, json!({ "error": { "code": 404, "message": "models/gemini-nope is not found for API version v1beta, or is not supported for generateContent.", "status": "NOT_FOUND" } }))
    })
    .await;
    let mut cfg = config(ProviderKind::Gemini, &srv.base, Some(KEY));
    cfg.model = Some("gemini-nope".into());
    let e = complete(&cfg, &prompt()).await.unwrap_err();
    assert!(matches!(e, LlmError::NotFound { .. }), "{e:?}");
    let s = one_line(&e);
    assert!(
        s.contains("model \"gemini-nope\" not found") && s.contains("HTTP 404"),
        "{s}"
    );
    assert_eq!(srv.requests().len(), 1);
}

#[tokio::test]
async fn rate_limit_429_then_success_is_retried() {
    let srv = serve(|_, n| {
        if n == 0 {
            Reply::Raw(
                429,
                vec![("retry-after", "0".into())],
                json!({ "error": { "message": "Rate limit reached", "type": "requests" } })
                    .to_string(),
            )
        } else {
            Reply::Json(200, openai_answer("[F1] fine."))
        }
    })
    .await;
    let cfg = config(ProviderKind::OpenAi, &srv.base, Some(KEY));
    assert_eq!(complete(&cfg, &prompt()).await.unwrap(), "[F1] fine.");
    assert_eq!(srv.requests().len(), 2, "one retry");
}

#[tokio::test]
async fn rate_limit_with_a_long_retry_after_is_not_waited_for() {
    let srv = serve(|_, _| {
        Reply::Raw(
            429,
            vec![("retry-after", "3600".into())],
            json!({ "error": { "message": "Rate limit reached", "type": "requests" } }).to_string(),
        )
    })
    .await;
    let cfg = config(ProviderKind::OpenAi, &srv.base, Some(KEY));
    let e = complete(&cfg, &prompt()).await.unwrap_err();
    assert!(
        matches!(e, LlmError::RateLimited { attempts: 1, .. }),
        "{e:?}"
    );
    let s = one_line(&e);
    assert!(
        s.contains("rate limited (HTTP 429)") && s.contains("asks to wait 3600 s"),
        "{s}"
    );
    assert_eq!(srv.requests().len(), 1);
}

#[tokio::test]
async fn quota_429_insufficient_quota_is_not_retried() {
    let srv = serve(|_, _| {
        Reply::Json(429, json!({ "error": { "message": "You exceeded your current quota, please check your plan and billing details.", "type": "insufficient_quota", "code": "insufficient_quota" } }))
    })
    .await;
    let cfg = config(ProviderKind::OpenAi, &srv.base, Some(KEY));
    let e = complete(&cfg, &prompt()).await.unwrap_err();
    assert!(matches!(e, LlmError::Quota { .. }), "{e:?}");
    let s = one_line(&e);
    assert!(
        s.contains("quota exhausted") && s.contains("insufficient_quota"),
        "{s}"
    );
    assert_eq!(srv.requests().len(), 1);
}

#[tokio::test]
async fn quota_429_resource_exhausted_after_retries() {
    let srv = serve(|_, _| {
        Reply::Json(429, json!({ "error": { "code": 429, "message": "You exceeded your current quota.", "status": "RESOURCE_EXHAUSTED",
            "details": [ { "@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0s" } ] } }))
    })
    .await;
    let mut cfg = config(ProviderKind::Gemini, &srv.base, Some(KEY));
    cfg.max_retries = 1;
    let e = complete(&cfg, &prompt()).await.unwrap_err();
    assert!(matches!(e, LlmError::Quota { attempts: 2, .. }), "{e:?}");
    let s = one_line(&e);
    assert!(
        s.contains("quota exhausted (HTTP 429, 2 attempts)") && s.contains("RESOURCE_EXHAUSTED"),
        "{s}"
    );
    assert_eq!(srv.requests().len(), 2);
}

#[tokio::test]
async fn server_errors_after_retries() {
    let srv = serve(|_, _| Reply::Raw(503, vec![], "upstream overloaded".into())).await;
    let mut cfg = config(ProviderKind::Gemini, &srv.base, Some(KEY));
    cfg.max_retries = 2;
    let e = complete(&cfg, &prompt()).await.unwrap_err();
    let s = one_line(&e);
    assert!(
        s.contains(
            "gemini model gemini-test: server error (HTTP 503, 3 attempts): upstream overloaded"
        ),
        "{s}"
    );
    assert_eq!(srv.requests().len(), 3);
}

#[tokio::test]
async fn garbage_answers() {
    let srv = serve(|_, n| match n {
        0 => Reply::Raw(
            200,
            vec![],
            "<html><body>captive portal login</body></html>".into(),
        ),
        1 => Reply::Json(200, json!({ "unexpected": true })),
        _ => Reply::Json(
            200,
            json!({ "candidates": [ { "finishReason": "SAFETY" } ] }),
        ),
    })
    .await;
    let cfg = config(ProviderKind::Gemini, &srv.base, Some(KEY));
    let e = one_line(&complete(&cfg, &prompt()).await.unwrap_err());
    assert!(
        e.contains("not JSON") && e.contains("<html><body>captive portal"),
        "{e}"
    );
    let e = one_line(&complete(&cfg, &prompt()).await.unwrap_err());
    assert!(
        e.contains("not a generateContent response") && e.contains("unexpected"),
        "{e}"
    );
    let e = one_line(&complete(&cfg, &prompt()).await.unwrap_err());
    assert!(e.contains("empty answer (finish reason SAFETY)"), "{e}");
}

#[tokio::test]
async fn timeout_is_one_line() {
    let srv = serve(|_, _| Reply::Hang).await;
    let mut cfg = config(ProviderKind::OpenAi, &srv.base, None);
    cfg.timeout = Duration::from_secs(1);
    let e = complete(&cfg, &prompt()).await.unwrap_err();
    assert!(matches!(e, LlmError::Timeout { .. }), "{e:?}");
    let s = one_line(&e);
    assert!(
        s.contains("no answer from") && s.contains("within 1 s"),
        "{s}"
    );
    assert_eq!(srv.requests().len(), 1, "a timeout is not retried");
}

#[tokio::test]
async fn unreachable_server_is_one_line() {
    // Bind and drop: the port is then most likely closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = config(
        ProviderKind::OpenAi,
        &format!("http://127.0.0.1:{port}/v1"),
        None,
    );
    let e = complete(&cfg, &prompt()).await.unwrap_err();
    let s = one_line(&e);
    assert!(s.contains("cannot reach http://127.0.0.1:"), "{s}");
}

// ---------------------------------------------------------------- config

#[test]
fn missing_keys_name_the_variable() {
    let e = LlmConfig::resolve_with(Some("gemini"), None, None, &env_of(&[])).unwrap_err();
    let s = one_line(&e);
    assert!(
        s.starts_with("gemini: no API key: set GEMINI_API_KEY"),
        "{s}"
    );
    let e = LlmConfig::resolve_with(Some("openai"), None, None, &env_of(&[])).unwrap_err();
    assert!(one_line(&e).starts_with("openai: no API key: set OPENAI_API_KEY"));
    let e = LlmConfig::resolve_with(Some("vertex"), None, None, &env_of(&[])).unwrap_err();
    let s = one_line(&e);
    assert!(
        s.starts_with("vertex: no credentials: set VERTEX_ACCESS_TOKEN")
            && s.contains("GOOGLE_APPLICATION_CREDENTIALS"),
        "{s}"
    );
    let env = env_of(&[("VERTEX_ACCESS_TOKEN", KEY)]);
    let e = LlmConfig::resolve_with(Some("vertex"), None, None, &env).unwrap_err();
    let s = one_line(&e);
    assert!(
        s.starts_with("vertex: no Google Cloud project: set GOOGLE_CLOUD_PROJECT"),
        "{s}"
    );
    let e = LlmConfig::resolve_with(Some("gemini"), Some("bad model"), None, &env).unwrap_err();
    assert!(one_line(&e).contains("model name \"bad model\" is not valid"));
    let e = LlmConfig::resolve_with(None, None, None, &env_of(&[])).unwrap_err();
    assert!(one_line(&e).contains("--provider"));
    let e = LlmConfig::resolve_with(Some("claude"), None, None, &env_of(&[])).unwrap_err();
    assert!(one_line(&e).contains("unknown LLM provider \"claude\""));
}

#[test]
fn config_file_must_be_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("llm.toml");
    std::fs::write(
        &path,
        format!("# scope LLM settings\nprovider = \"gemini\"\nmodel = \"gemini-x\"\ngemini_api_key = \"{KEY}\"\ntimeout = 5\n"),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let env = env_of(&[("SCOPE_LLM_CONFIG", path.to_str().unwrap())]);
    let e = LlmConfig::resolve_with(None, None, None, &env).unwrap_err();
    let s = one_line(&e);
    assert!(s.contains("mode 0644") && s.contains("chmod 600"), "{s}");

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = LlmConfig::resolve_with(None, None, None, &env).unwrap();
    assert_eq!(cfg.provider, ProviderKind::Gemini);
    assert_eq!(cfg.model_name(), "gemini-x");
    assert_eq!(cfg.timeout, Duration::from_secs(5));
    match &cfg.credential {
        Credential::ApiKey { key, from } => {
            assert_eq!(key.expose(), KEY);
            assert!(from.contains("llm.toml"), "{from}");
        }
        other => panic!("{other:?}"),
    }
    // The environment wins over the file.
    let env = env_of(&[
        ("SCOPE_LLM_CONFIG", path.to_str().unwrap()),
        ("GEMINI_API_KEY", "from-env-key"),
    ]);
    let cfg = LlmConfig::resolve_with(None, None, None, &env).unwrap();
    assert!(
        matches!(&cfg.credential, Credential::ApiKey { key, .. } if key.expose() == "from-env-key")
    );

    std::fs::write(&path, "gemini_key = \"x\"\n").unwrap();
    let e = LlmConfig::resolve_with(Some("mock"), None, None, &env).unwrap_err();
    assert!(one_line(&e).contains("unknown key \"gemini_key\""));
}

#[test]
fn key_never_in_debug() {
    let env = env_of(&[("GEMINI_API_KEY", KEY)]);
    let cfg = LlmConfig::resolve_with(Some("gemini"), None, None, &env).unwrap();
    let dbg = format!("{cfg:?}");
    assert!(!dbg.contains(KEY), "{dbg}");
    assert!(
        dbg.contains("<redacted>") && dbg.contains("$GEMINI_API_KEY"),
        "{dbg}"
    );
    assert!(!format!("{:#?}", cfg.credential).contains(KEY));
}
