//! Object storage: where a store lives (a local directory or an
//! `s3://bucket/prefix` URL), an [`ObjectStore`] for it configured the way
//! AWS tools are, a one-line account of why it cannot be reached, and whole
//! file uploads (the agent's `--out s3://…` and `scope-agent upload`).
//!
//! # Configuration (the AWS CLI's, so one environment serves scope and DuckDB)
//!
//! | setting | taken from, first wins |
//! | --- | --- |
//! | credentials | `AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY` (+ `AWS_SESSION_TOKEN`); the profile's `aws_access_key_id`/`aws_secret_access_key`/`aws_session_token` in `~/.aws/credentials`, then `~/.aws/config`; else object_store's chain (web identity, ECS container, EC2 instance metadata) |
//! | region | `AWS_REGION`, `AWS_DEFAULT_REGION`, the profile's `region`, `us-east-1` |
//! | endpoint | `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`, the profile's `endpoint_url`; none: AWS |
//! | profile | `AWS_PROFILE` (`AWS_DEFAULT_PROFILE`), else `default`; files moved by `AWS_SHARED_CREDENTIALS_FILE` / `AWS_CONFIG_FILE` |
//! | plain http | `AWS_ALLOW_HTTP=true` (an `http://` endpoint is refused without it) |
//!
//! Any other `AWS_*` variable object_store knows (`AWS_SKIP_SIGNATURE`,
//! `AWS_WEB_IDENTITY_TOKEN_FILE`, ...) applies too. With an endpoint,
//! requests are path-style (`ENDPOINT/bucket/key`, what MinIO, moto, Ceph and
//! DuckDB's `URL_STYLE 'path'` use) unless
//! `AWS_VIRTUAL_HOSTED_STYLE_REQUEST=true`.
//!
//! # Whole files only
//!
//! [`upload_file`] sends a file in one PUT (or, above
//! [`SINGLE_PUT_MAX`], a multipart upload completed only after its last
//! part): S3 makes an object visible only when its PUT or its
//! CompleteMultipartUpload succeeds, so a reader never sees half a segment.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjPath;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt as _, PutPayload, RetryConfig};
use url::Url;

/// A file larger than this (bytes) is sent as a multipart upload in parts of
/// [`PART_SIZE`]; smaller ones in a single PUT (S3 allows 5 GiB in one).
pub const SINGLE_PUT_MAX: usize = 64 * 1024 * 1024;
/// Size of one multipart part, bytes (S3's minimum is 5 MiB).
const PART_SIZE: usize = 16 * 1024 * 1024;

/// How long one connection attempt may take before the endpoint counts as
/// unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one request may take in all (a 64 MiB PUT on a slow link).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// object_store's own retries of one request (connection errors, 5xx):
/// few and short, since the agent's uploader retries with its own backoff
/// and `check_access` should answer in seconds.
const RETRIES: usize = 2;
const RETRY_TIMEOUT: Duration = Duration::from_secs(15);

/// Where a store lives.
#[derive(Clone, Debug)]
pub enum Location {
    /// A directory on this machine (a plain path or `file://`).
    Local(PathBuf),
    /// A prefix in an S3 bucket (`s3://bucket/prefix`).
    Remote(RemoteStore),
}

/// An `s3://bucket/prefix` location with its configured client.
#[derive(Clone)]
pub struct RemoteStore {
    /// The location as given, normalised: `s3://bucket/prefix` (no trailing
    /// slash; `s3a://` becomes `s3://`).
    pub url: Url,
    /// The bucket's client (keys are relative to the bucket, not the prefix).
    pub store: Arc<dyn ObjectStore>,
    /// The key prefix inside the bucket (empty for the bucket's root).
    pub prefix: ObjPath,
    /// The endpoint requests go to (`None`: AWS's own, from the region).
    pub endpoint: Option<String>,
    /// Where the credentials came from, for messages.
    pub credentials: CredentialSource,
}

impl fmt::Debug for RemoteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteStore")
            .field("url", &self.url.as_str())
            .field("prefix", &self.prefix.as_ref())
            .field("endpoint", &self.endpoint)
            .field("credentials", &self.credentials)
            .finish()
    }
}

impl fmt::Display for RemoteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.url.as_str())
    }
}

/// Where a [`RemoteStore`]'s credentials came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialSource {
    /// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`.
    Environment,
    /// A profile of `~/.aws/credentials` or `~/.aws/config`.
    Profile(String),
    /// None found: object_store's chain (web identity, container, instance
    /// metadata), or unsigned requests with `AWS_SKIP_SIGNATURE`.
    Default,
}

impl RemoteStore {
    /// The URL that names the bucket (`s3://bucket/`), the key DataFusion's
    /// `SessionContext::register_object_store` wants for this store.
    pub fn bucket_url(&self) -> Url {
        let mut u = self.url.clone();
        u.set_path("/");
        u
    }

    /// The key of `rel` (a `/`-separated path relative to the prefix, like
    /// `calls/session_id=X/part-00000.parquet`).
    pub fn key(&self, rel: &str) -> ObjPath {
        let rel = rel.trim_start_matches('/');
        if self.prefix.as_ref().is_empty() {
            ObjPath::from(rel)
        } else {
            ObjPath::from(format!("{}/{rel}", self.prefix.as_ref()))
        }
    }

    /// `s3://bucket/prefix/rel`, for messages and for table paths given to
    /// DataFusion or DuckDB.
    pub fn url_of(&self, rel: &str) -> String {
        format!(
            "s3://{}/{}",
            self.url.host_str().unwrap_or_default(),
            self.key(rel).as_ref()
        )
    }

    /// `unreachable` etc.: what to say about the credentials in a message.
    fn credential_hint(&self) -> String {
        match &self.credentials {
            CredentialSource::Environment => {
                "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY".to_string()
            }
            CredentialSource::Profile(p) => {
                format!("check the keys of profile '{p}' in ~/.aws/credentials")
            }
            CredentialSource::Default => {
                "no credentials were found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
                    .to_string()
            }
        }
    }
}

/// Parses a store location: `s3://bucket[/prefix]` (or `s3a://`), a plain
/// path, or `file:///path`; an `s3://` location gets its configured client
/// (no request is sent: see [`check_access`]).
///
/// Fails with one line naming `s` on an unsupported scheme, a missing
/// bucket, a profile that does not exist, or half a key pair.
pub fn open_location(s: &str) -> Result<Location> {
    open_location_with(s, &|k| std::env::var(k).ok())
}

/// [`open_location`] with the environment given as a lookup (tests).
pub fn open_location_with(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Location> {
    let Some((scheme, _)) = s.split_once("://") else {
        return Ok(Location::Local(PathBuf::from(s)));
    };
    match scheme.to_ascii_lowercase().as_str() {
        "file" => {
            let url = Url::parse(s).with_context(|| format!("{s}: not a valid file:// URL"))?;
            let path = url
                .to_file_path()
                .map_err(|()| anyhow!("{s}: not a local path (file:///absolute/path)"))?;
            Ok(Location::Local(path))
        }
        "s3" | "s3a" => Ok(Location::Remote(open_s3(s, env)?)),
        other => {
            bail!("{s}: unsupported scheme '{other}://' (use a directory or s3://bucket/prefix)")
        }
    }
}

/// The settings the client is built from, resolved with the AWS CLI's
/// precedence (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AwsSettings {
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub allow_http: bool,
    pub credentials: Option<CredentialSource>,
}

/// Resolves [`AwsSettings`] from the environment and the profile files.
///
/// Fails naming the profile when `AWS_PROFILE` names one that neither file
/// has, or when only one of the key pair is set.
pub fn aws_settings(env: &dyn Fn(&str) -> Option<String>) -> Result<AwsSettings> {
    let var = |k: &str| env(k).filter(|v| !v.is_empty());
    let explicit_profile = var("AWS_PROFILE").or_else(|| var("AWS_DEFAULT_PROFILE"));
    let profile_name = explicit_profile
        .clone()
        .unwrap_or_else(|| "default".to_string());
    let home = var("HOME").map(PathBuf::from);
    let file_of = |env_key: &str, default: &str| {
        var(env_key)
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".aws").join(default)))
    };
    let creds_file = file_of("AWS_SHARED_CREDENTIALS_FILE", "credentials");
    let config_file = file_of("AWS_CONFIG_FILE", "config");
    let read = |p: &Option<PathBuf>| {
        p.as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .map(|text| parse_ini(&text))
            .unwrap_or_default()
    };
    let creds = read(&creds_file);
    let config = read(&config_file);
    // ~/.aws/credentials names a section `[name]`; ~/.aws/config
    // `[profile name]`, except `[default]`.
    let from_creds = creds.get(&profile_name);
    let from_config = config.get(&format!("profile {profile_name}")).or_else(|| {
        (profile_name == "default")
            .then(|| config.get("default"))
            .flatten()
    });
    if explicit_profile.is_some() && from_creds.is_none() && from_config.is_none() {
        bail!(
            "AWS profile '{profile_name}' not found in {} or {}",
            show(&creds_file),
            show(&config_file)
        );
    }
    let profile = |key: &str| {
        from_creds
            .and_then(|s| s.get(key))
            .or_else(|| from_config.and_then(|s| s.get(key)))
            .filter(|v| !v.is_empty())
            .cloned()
    };

    let mut s = AwsSettings::default();
    match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
        (Some(id), Some(secret)) => {
            s.access_key_id = Some(id);
            s.secret_access_key = Some(secret);
            s.session_token = var("AWS_SESSION_TOKEN");
            s.credentials = Some(CredentialSource::Environment);
        }
        (Some(_), None) => bail!("AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not"),
        (None, Some(_)) => bail!("AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not"),
        (None, None) => {
            match (
                profile("aws_access_key_id"),
                profile("aws_secret_access_key"),
            ) {
                (Some(id), Some(secret)) => {
                    s.access_key_id = Some(id);
                    s.secret_access_key = Some(secret);
                    s.session_token = profile("aws_session_token");
                    s.credentials = Some(CredentialSource::Profile(profile_name.clone()));
                }
                (None, None) => s.credentials = Some(CredentialSource::Default),
                _ => bail!(
                    "AWS profile '{profile_name}' has only one of aws_access_key_id and aws_secret_access_key"
                ),
            }
        }
    }
    s.region = var("AWS_REGION")
        .or_else(|| var("AWS_DEFAULT_REGION"))
        .or_else(|| profile("region"));
    s.endpoint = var("AWS_ENDPOINT_URL_S3")
        .or_else(|| var("AWS_ENDPOINT_URL"))
        .or_else(|| profile("endpoint_url"));
    s.allow_http = var("AWS_ALLOW_HTTP").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    Ok(s)
}

fn show(p: &Option<PathBuf>) -> String {
    p.as_ref()
        .map_or_else(|| "(no HOME)".to_string(), |p| p.display().to_string())
}

/// `[section]` → key → value, the subset of INI the AWS files use (`#` and
/// `;` comments, `key = value`; nested `s3 =` blocks are skipped).
fn parse_ini(text: &str) -> HashMap<String, HashMap<String, String>> {
    let mut out: HashMap<String, HashMap<String, String>> = HashMap::new();
    let mut section: Option<String> = None;
    for line in text.lines() {
        // An indented line continues a nested block (`s3 =\n  key = v`).
        if line.starts_with([' ', '\t']) {
            continue;
        }
        let line = line.trim();
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.split_whitespace().collect::<Vec<_>>().join(" ");
            out.entry(name.clone()).or_default();
            section = Some(name);
        } else if let (Some(sec), Some((k, v))) = (&section, line.split_once('=')) {
            out.entry(sec.clone())
                .or_default()
                .insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    out
}

fn open_s3(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<RemoteStore> {
    let parsed = Url::parse(s).with_context(|| format!("{s}: not a valid URL"))?;
    let bucket = parsed
        .host_str()
        .filter(|b| !b.is_empty())
        .ok_or_else(|| anyhow!("{s}: no bucket (s3://bucket/prefix)"))?
        .to_string();
    let prefix_str = parsed.path().trim_matches('/').to_string();
    let prefix = ObjPath::parse(&prefix_str).map_err(|e| anyhow!("{s}: bad prefix: {e}"))?;
    let url = Url::parse(&format!(
        "s3://{bucket}{}",
        if prefix_str.is_empty() {
            String::new()
        } else {
            format!("/{prefix_str}")
        }
    ))
    .with_context(|| format!("{s}: not a valid URL"))?;
    let settings = aws_settings(env).with_context(|| s.to_string())?;

    let mut builder = AmazonS3Builder::from_env().with_bucket_name(&bucket);
    if let (Some(id), Some(secret)) = (&settings.access_key_id, &settings.secret_access_key) {
        builder = builder
            .with_access_key_id(id)
            .with_secret_access_key(secret);
        if let Some(t) = &settings.session_token {
            builder = builder.with_token(t);
        }
    }
    builder = builder.with_region(settings.region.as_deref().unwrap_or("us-east-1"));
    if let Some(e) = &settings.endpoint {
        builder = builder.with_endpoint(e);
        let virtual_hosted =
            env("AWS_VIRTUAL_HOSTED_STYLE_REQUEST").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        builder = builder.with_virtual_hosted_style_request(virtual_hosted);
    }
    builder = builder
        .with_client_options(
            ClientOptions::new()
                .with_allow_http(settings.allow_http)
                .with_connect_timeout(CONNECT_TIMEOUT)
                .with_timeout(REQUEST_TIMEOUT),
        )
        .with_retry(RetryConfig {
            max_retries: RETRIES,
            retry_timeout: RETRY_TIMEOUT,
            ..RetryConfig::default()
        });
    if settings
        .endpoint
        .as_deref()
        .is_some_and(|e| e.starts_with("http://"))
        && !settings.allow_http
    {
        bail!(
            "{s}: the endpoint {} is plain http: set AWS_ALLOW_HTTP=true to use it",
            settings.endpoint.as_deref().unwrap_or_default()
        );
    }
    let store = builder
        .build()
        .map_err(|e| anyhow!("{s}: {}", one_line(&e)))?;
    Ok(RemoteStore {
        url,
        store: Arc::new(store),
        prefix,
        endpoint: settings.endpoint,
        credentials: settings.credentials.unwrap_or(CredentialSource::Default),
    })
}

/// Why a request to a [`RemoteStore`] failed, told apart so that a caller
/// can retry what may pass later (the endpoint unreachable) and stop at
/// what will not (wrong credentials, no such bucket). Its `Display` is one
/// line that starts with the store's URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessError {
    pub kind: AccessErrorKind,
    /// The whole line.
    pub message: String,
}

/// See [`AccessError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessErrorKind {
    /// Connection refused, DNS failure, timeout, TLS failure.
    Unreachable,
    /// 401/403: wrong or missing credentials, or no permission.
    Denied,
    /// The bucket does not exist.
    NoSuchBucket,
    /// Anything else (5xx, a local file that cannot be read...).
    Other,
}

impl AccessError {
    /// Whether retrying later may succeed (an unreachable endpoint or a
    /// server error), as opposed to a refusal that needs the user.
    pub fn is_transient(&self) -> bool {
        matches!(
            self.kind,
            AccessErrorKind::Unreachable | AccessErrorKind::Other
        )
    }
}

impl fmt::Display for AccessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for AccessError {}

/// The error's chain as one line (object_store nests the HTTP error, the
/// S3 error document, the I/O error).
fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let text = err.to_string().replace('\n', " ");
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = err.source();
    }
    parts.join(": ")
}

/// The text between `<tag>` and `</tag>` in an S3 error document.
fn xml_field<'a>(text: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = text.find(&open)? + open.len();
    let end = text[start..].find(&format!("</{tag}>"))? + start;
    Some(&text[start..end])
}

/// Turns an object_store error into one line naming the store and what to
/// do about it.
pub fn classify(remote: &RemoteStore, e: &object_store::Error) -> AccessError {
    let chain = one_line(e);
    let lower = chain.to_ascii_lowercase();
    let endpoint = remote
        .endpoint
        .clone()
        .unwrap_or_else(|| "the S3 endpoint".to_string());
    let code = xml_field(&chain, "Code");
    let (kind, what) = if code == Some("NoSuchBucket") {
        (
            AccessErrorKind::NoSuchBucket,
            format!(
                "bucket '{}' does not exist at {endpoint}",
                remote.url.host_str().unwrap_or_default()
            ),
        )
    } else if matches!(
        code,
        Some(
            "InvalidAccessKeyId"
                | "SignatureDoesNotMatch"
                | "AccessDenied"
                | "ExpiredToken"
                | "InvalidToken"
                | "AllAccessDisabled"
        )
    ) || matches!(
        e,
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. }
    ) || lower.contains("403 forbidden")
        || lower.contains("401 unauthorized")
    {
        let detail = code.map(|c| format!(" ({c})")).unwrap_or_default();
        (
            AccessErrorKind::Denied,
            format!("access denied{detail} ({})", remote.credential_hint()),
        )
    } else if lower.contains("169.254.169.254") || lower.contains("instance metadata") {
        (
            AccessErrorKind::Denied,
            format!("no credentials ({})", remote.credential_hint()),
        )
    } else if let Some(reason) = unreachable_reason(&lower) {
        (
            AccessErrorKind::Unreachable,
            format!("cannot reach {endpoint} ({reason})"),
        )
    } else {
        (AccessErrorKind::Other, chain.clone())
    };
    AccessError {
        kind,
        message: format!("{}: {what}", remote.url),
    }
}

/// The short reason of a connection failure, if the error is one.
fn unreachable_reason(lower: &str) -> Option<&'static str> {
    const REASONS: [(&str, &str); 8] = [
        ("connection refused", "connection refused"),
        ("dns error", "name not resolved"),
        ("failed to lookup address", "name not resolved"),
        ("timed out", "timed out"),
        ("timeout", "timed out"),
        ("connection reset", "connection reset"),
        ("network is unreachable", "network unreachable"),
        ("certificate", "TLS certificate rejected"),
    ];
    REASONS
        .iter()
        .find(|(needle, _)| lower.contains(needle))
        .map(|(_, reason)| *reason)
        .or_else(|| {
            (lower.contains("error sending request") || lower.contains("connect"))
                .then_some("connection failed")
        })
}

/// A single-threaded tokio runtime (I/O and timers), for callers that have
/// none: the agent's uploader thread and its check at the start of a
/// session, `scope-agent upload`.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a tokio runtime")
}

/// Sends one listing request under the prefix: `Ok` when the store answers
/// and the credentials are accepted; else one line saying why (see
/// [`AccessError`]), e.g. `s3://bkt/x: access denied (InvalidAccessKeyId)
/// (check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)` or `s3://bkt/x: cannot
/// reach http://127.0.0.1:1 (connection refused)`.
pub async fn check_access(remote: &RemoteStore) -> std::result::Result<(), AccessError> {
    let prefix = (!remote.prefix.as_ref().is_empty()).then_some(&remote.prefix);
    remote
        .store
        .list_with_delimiter(prefix)
        .await
        .map(|_| ())
        .map_err(|e| classify(remote, &e))
}

/// Uploads the local file `local` whole to `rel` under the prefix (see the
/// module docs); returns its size in bytes. The local file is left alone.
pub async fn upload_file(
    remote: &RemoteStore,
    local: &Path,
    rel: &str,
) -> std::result::Result<u64, AccessError> {
    let bytes = std::fs::read(local).map_err(|e| AccessError {
        kind: AccessErrorKind::Other,
        message: format!("cannot read {}: {e}", local.display()),
    })?;
    let size = bytes.len() as u64;
    let key = remote.key(rel);
    let result = if bytes.len() <= SINGLE_PUT_MAX {
        remote
            .store
            .put(&key, PutPayload::from(bytes))
            .await
            .map(|_| ())
    } else {
        put_multipart(remote.store.as_ref(), &key, bytes).await
    };
    result.map_err(|e| classify(remote, &e))?;
    Ok(size)
}

/// A multipart upload that becomes visible only when completed; aborted
/// (best effort) when a part fails.
async fn put_multipart(
    store: &dyn ObjectStore,
    key: &ObjPath,
    bytes: Vec<u8>,
) -> object_store::Result<()> {
    let mut upload = store.put_multipart(key).await?;
    let mut offset = 0;
    while offset < bytes.len() {
        let end = (offset + PART_SIZE).min(bytes.len());
        if let Err(e) = upload
            .put_part(PutPayload::from(bytes[offset..end].to_vec()))
            .await
        {
            let _ = upload.abort().await;
            return Err(e);
        }
        offset = end;
    }
    match upload.complete().await {
        Ok(_) => Ok(()),
        Err(e) => {
            let _ = upload.abort().await;
            Err(e)
        }
    }
}

/// The finished Parquet files under `dir` (`*.parquet`, not the hidden
/// `.part-N.parquet.tmp` of a write in progress), as paths relative to it,
/// in upload order: `sessions/` last, since a session row says the
/// session's files are complete.
pub fn finished_files(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort_by_key(|rel| (rel.starts_with("sessions/"), rel.clone()));
    Ok(out)
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        let ty = entry
            .file_type()
            .with_context(|| format!("cannot read {}", path.display()))?;
        if ty.is_dir() {
            walk(root, &path, out)?;
        } else if ty.is_file() && name.ends_with(".parquet") {
            let rel = path
                .strip_prefix(root)
                .map_err(|_| anyhow!("{} is not under {}", path.display(), root.display()))?;
            out.push(rel.to_string_lossy().into_owned());
        }
    }
    Ok(())
}

/// What [`upload_dir`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UploadDirReport {
    /// Files uploaded (and removed locally).
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
}

/// Uploads every finished file under `dir` to the same relative key under
/// the prefix (`sessions/` last), removing each local copy once it is
/// uploaded and then the directories left empty; stops at the first failure
/// (what was uploaded is gone locally, the rest stays).
pub async fn upload_dir(
    remote: &RemoteStore,
    dir: &Path,
) -> std::result::Result<UploadDirReport, (UploadDirReport, anyhow::Error)> {
    let mut report = UploadDirReport::default();
    let files = match finished_files(dir) {
        Ok(f) => f,
        Err(e) => return Err((report, e)),
    };
    for rel in files {
        let local = dir.join(&rel);
        match upload_file(remote, &local, &rel).await {
            Ok(n) => {
                report.files += 1;
                report.bytes += n;
                if let Err(e) = std::fs::remove_file(&local) {
                    return Err((
                        report,
                        anyhow!("uploaded but cannot remove {}: {e}", local.display()),
                    ));
                }
            }
            Err(e) => return Err((report, anyhow!(e))),
        }
    }
    remove_empty_dirs(dir);
    Ok(report)
}

/// Removes the directories under `dir` (and `dir`) that are empty, bottom
/// up; best effort.
pub fn remove_empty_dirs(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_empty_dirs(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn locations_parse() {
        let env = env_of(&[("AWS_ACCESS_KEY_ID", "a"), ("AWS_SECRET_ACCESS_KEY", "b")]);
        match open_location_with("/tmp/x", &env).unwrap() {
            Location::Local(p) => assert_eq!(p, PathBuf::from("/tmp/x")),
            other => panic!("{other:?}"),
        }
        match open_location_with("file:///tmp/y", &env).unwrap() {
            Location::Local(p) => assert_eq!(p, PathBuf::from("/tmp/y")),
            other => panic!("{other:?}"),
        }
        match open_location_with("s3a://bkt/a/b/", &env).unwrap() {
            Location::Remote(r) => {
                assert_eq!(r.url.as_str(), "s3://bkt/a/b");
                assert_eq!(r.prefix.as_ref(), "a/b");
                assert_eq!(r.bucket_url().as_str(), "s3://bkt/");
                assert_eq!(r.key("calls/x.parquet").as_ref(), "a/b/calls/x.parquet");
                assert_eq!(r.url_of("calls/x.parquet"), "s3://bkt/a/b/calls/x.parquet");
                assert_eq!(r.credentials, CredentialSource::Environment);
            }
            other => panic!("{other:?}"),
        }
        match open_location_with("s3://bkt", &env).unwrap() {
            Location::Remote(r) => assert_eq!(r.key("t/f").as_ref(), "t/f"),
            other => panic!("{other:?}"),
        }
        let err = open_location_with("gs://bkt/x", &env)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("gs://bkt/x") && err.contains("unsupported"),
            "{err}"
        );
        let err = open_location_with("s3:///x", &env).unwrap_err().to_string();
        assert!(err.contains("no bucket"), "{err}");
    }

    #[test]
    fn plain_http_needs_allow_http() {
        let env = env_of(&[("AWS_ENDPOINT_URL", "http://127.0.0.1:9")]);
        let err = open_location_with("s3://b/p", &env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("AWS_ALLOW_HTTP=true"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn environment_beats_profile_and_profile_fills_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("credentials");
        let config = dir.path().join("config");
        std::fs::write(
            &creds,
            "[default]\naws_access_key_id = DK\naws_secret_access_key = DS\n\n[team]\naws_access_key_id=TK\naws_secret_access_key = TS\naws_session_token = TT\n",
        )
        .unwrap();
        std::fs::write(
            &config,
            "# comment\n[default]\nregion = eu-west-1\n[profile team]\nregion = eu-north-1\nendpoint_url = http://127.0.0.1:9000\ns3 =\n  addressing_style = path\n",
        )
        .unwrap();
        let c = creds.to_str().unwrap();
        let f = config.to_str().unwrap();
        let s = aws_settings(&env_of(&[
            ("AWS_SHARED_CREDENTIALS_FILE", c),
            ("AWS_CONFIG_FILE", f),
            ("AWS_PROFILE", "team"),
        ]))
        .unwrap();
        assert_eq!(s.access_key_id.as_deref(), Some("TK"));
        assert_eq!(s.secret_access_key.as_deref(), Some("TS"));
        assert_eq!(s.session_token.as_deref(), Some("TT"));
        assert_eq!(s.region.as_deref(), Some("eu-north-1"));
        assert_eq!(s.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(
            s.credentials,
            Some(CredentialSource::Profile("team".into()))
        );

        // The default profile when none is named; the environment first.
        let s = aws_settings(&env_of(&[
            ("AWS_SHARED_CREDENTIALS_FILE", c),
            ("AWS_CONFIG_FILE", f),
            ("AWS_ACCESS_KEY_ID", "EK"),
            ("AWS_SECRET_ACCESS_KEY", "ES"),
            ("AWS_DEFAULT_REGION", "ap-south-1"),
            ("AWS_ENDPOINT_URL", "http://e"),
            ("AWS_ENDPOINT_URL_S3", "http://s3e"),
            ("AWS_ALLOW_HTTP", "true"),
        ]))
        .unwrap();
        assert_eq!(s.access_key_id.as_deref(), Some("EK"));
        assert_eq!(s.region.as_deref(), Some("ap-south-1"));
        assert_eq!(s.endpoint.as_deref(), Some("http://s3e"));
        assert!(s.allow_http);
        assert_eq!(s.credentials, Some(CredentialSource::Environment));
        let s = aws_settings(&env_of(&[
            ("AWS_SHARED_CREDENTIALS_FILE", c),
            ("AWS_CONFIG_FILE", f),
            ("AWS_REGION", "us-west-2"),
            ("AWS_DEFAULT_REGION", "ap-south-1"),
        ]))
        .unwrap();
        assert_eq!(s.access_key_id.as_deref(), Some("DK"));
        assert_eq!(s.region.as_deref(), Some("us-west-2"));

        let err = aws_settings(&env_of(&[
            ("AWS_SHARED_CREDENTIALS_FILE", c),
            ("AWS_CONFIG_FILE", f),
            ("AWS_PROFILE", "nope"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(err.contains("'nope' not found") && err.contains(c), "{err}");
        let err = aws_settings(&env_of(&[("AWS_ACCESS_KEY_ID", "x")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("AWS_SECRET_ACCESS_KEY"), "{err}");
    }

    #[test]
    fn finished_files_skip_temporaries_and_put_sessions_last() {
        let dir = tempfile::tempdir().unwrap();
        for rel in [
            "sessions/session_id=a/part-0.parquet",
            "calls/session_id=a/part-00000.parquet",
            "calls/session_id=a/.part-00001.parquet.tmp",
            "totals/session_id=a/part-0.parquet",
            "calls/session_id=a/notes.txt",
        ] {
            let p = dir.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"x").unwrap();
        }
        assert_eq!(
            finished_files(dir.path()).unwrap(),
            vec![
                "calls/session_id=a/part-00000.parquet",
                "totals/session_id=a/part-0.parquet",
                "sessions/session_id=a/part-0.parquet",
            ]
        );
    }
}
