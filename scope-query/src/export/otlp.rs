//! `export --format otlp --endpoint URL`: a session's calls as OpenTelemetry
//! spans, sent over OTLP/HTTP with protobuf bodies (`POST /v1/traces`, an
//! `ExportTraceServiceRequest`), so Jaeger, Tempo or any OTLP backend shows
//! them.
//!
//! One span per call: span id = the call id (unique in the session), parent
//! span id = the parent call's, one trace per root call (its trace id the
//! session's hash and the root's call id), name = the function, times = the
//! call's (a call that never returned ends at the session's end and says
//! so). Attributes: thread.id, code.function, code.filepath, code.lineno,
//! and scope.* (self time, time on and off the CPU, flags). The resource is
//! the process: service.name (the command), process.pid, host.name,
//! scope.session_id.
//!
//! The messages are declared here with the published field numbers of
//! opentelemetry-proto (only the fields written), as perfetto.rs does:
//! prost is already here, and the test decodes what is sent with the
//! published Python package. Batches of [`BATCH`] spans; a failed request
//! (no connection, 429, 5xx) is retried with backoff, and what was sent
//! before a final failure is said.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use prost::Message;
use rustc_hash::FxHashMap;

use crate::Store;
use crate::cols;

/// Spans per request: well under the 4 MiB a collector takes by default.
pub const BATCH: usize = 4096;
/// Attempts per request before giving up, the wait doubling from 0.5 s.
const ATTEMPTS: u32 = 5;

/// Where and how to send.
#[derive(Debug, Clone)]
pub struct OtlpOptions {
    /// `http://host:4318` (then `/v1/traces` is added) or a full URL.
    pub endpoint: String,
    /// Per request.
    pub timeout: Duration,
    /// Only this thread's calls.
    pub tid: Option<u32>,
}

/// What was sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct OtlpStats {
    pub spans: u64,
    pub requests: u64,
    /// Requests that failed and were sent again.
    pub retries: u64,
    pub bytes: u64,
    pub secs: f64,
}

#[derive(Clone, PartialEq, Message)]
struct ExportTraceServiceRequest {
    #[prost(message, repeated, tag = "1")]
    resource_spans: Vec<ResourceSpans>,
}

#[derive(Clone, PartialEq, Message)]
struct ResourceSpans {
    #[prost(message, optional, tag = "1")]
    resource: Option<Resource>,
    #[prost(message, repeated, tag = "2")]
    scope_spans: Vec<ScopeSpans>,
}

#[derive(Clone, PartialEq, Message)]
struct Resource {
    #[prost(message, repeated, tag = "1")]
    attributes: Vec<KeyValue>,
}

#[derive(Clone, PartialEq, Message)]
struct ScopeSpans {
    #[prost(message, optional, tag = "1")]
    scope: Option<InstrumentationScope>,
    #[prost(message, repeated, tag = "2")]
    spans: Vec<Span>,
}

#[derive(Clone, PartialEq, Message)]
struct InstrumentationScope {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    version: String,
}

/// `Span.SpanKind.SPAN_KIND_INTERNAL`.
const SPAN_KIND_INTERNAL: i32 = 1;

#[derive(Clone, PartialEq, Message)]
struct Span {
    #[prost(bytes = "vec", tag = "1")]
    trace_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    span_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    parent_span_id: Vec<u8>,
    #[prost(string, tag = "5")]
    name: String,
    #[prost(int32, tag = "6")]
    kind: i32,
    #[prost(fixed64, tag = "7")]
    start_time_unix_nano: u64,
    #[prost(fixed64, tag = "8")]
    end_time_unix_nano: u64,
    #[prost(message, repeated, tag = "9")]
    attributes: Vec<KeyValue>,
}

#[derive(Clone, PartialEq, Message)]
struct KeyValue {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(message, optional, tag = "2")]
    value: Option<AnyValue>,
}

#[derive(Clone, PartialEq, Message)]
struct AnyValue {
    #[prost(oneof = "Value", tags = "1, 2, 3")]
    value: Option<Value>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum Value {
    #[prost(string, tag = "1")]
    Str(String),
    #[prost(bool, tag = "2")]
    Bool(bool),
    #[prost(int64, tag = "3")]
    Int(i64),
}

fn kv(key: &str, v: Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(v) }),
    }
}

/// The URL spans are POSTed to: the endpoint, with `/v1/traces` when it
/// names no path.
pub fn traces_url(endpoint: &str) -> Result<String> {
    let Some((scheme, rest)) = endpoint.split_once("://") else {
        bail!("--endpoint {endpoint}: not a URL (http://host:4318, or a full /v1/traces URL)");
    };
    if !matches!(scheme, "http" | "https") {
        bail!("--endpoint {endpoint}: OTLP over HTTP needs http:// or https://");
    }
    Ok(match rest.split_once('/') {
        Some((_, path)) if !path.is_empty() => endpoint.to_string(),
        _ => format!("{}/v1/traces", endpoint.trim_end_matches('/')),
    })
}

/// A function's name, source place and parameter names.
struct Func {
    name: String,
    file: Option<String>,
    line: Option<i64>,
    params: Vec<Option<String>>,
}

/// Sends the selected session's calls to `opts.endpoint`; `progress` hears
/// the spans sent so far after each request.
pub fn export_otlp(store: &Store, opts: &OtlpOptions, progress: &dyn Fn(u64)) -> Result<OtlpStats> {
    let url = traces_url(&opts.endpoint)?;
    let span = crate::travel::session_span(store)?;
    let mut funcs: FxHashMap<u32, Func> = FxHashMap::default();
    let with_params = store.tables()["functions"]
        .schema
        .field_with_name("param_names")
        .is_ok();
    let param_col = if with_params { ", param_names" } else { "" };
    for b in store.sql(&format!(
        "SELECT function_id, name, file, line{param_col} FROM functions"
    ))? {
        let (id, name, file, line) = (
            cols::i64s(&b, "function_id")?,
            cols::strs(&b, "name")?,
            cols::strs(&b, "file")?,
            cols::i64s(&b, "line")?,
        );
        let params = if with_params {
            cols::str_lists(&b, "param_names")?
        } else {
            vec![None; b.num_rows()]
        };
        for i in 0..b.num_rows() {
            funcs.insert(
                id[i].unwrap_or(0) as u32,
                Func {
                    name: name[i].clone().unwrap_or_default(),
                    file: file[i].clone(),
                    line: line[i],
                    params: params[i].clone().unwrap_or_default(),
                },
            );
        }
    }
    let mut resource = vec![kv("scope.session_id", Value::Str(span.id.clone()))];
    if store.has_table("sessions") {
        for b in store.sql("SELECT pid, command, host FROM sessions")? {
            if b.num_rows() == 0 {
                continue;
            }
            let command = cols::strs(&b, "command")?[0].clone().unwrap_or_default();
            let service = command
                .split_whitespace()
                .next()
                .map(|c| c.rsplit('/').next().unwrap_or(c).to_string())
                .unwrap_or_else(|| "scope".to_string());
            resource.push(kv("service.name", Value::Str(service)));
            resource.push(kv("process.command_line", Value::Str(command)));
            if let Some(pid) = cols::i64s(&b, "pid")?[0] {
                resource.push(kv("process.pid", Value::Int(pid)));
            }
            if let Some(host) = cols::strs(&b, "host")?[0].clone() {
                resource.push(kv("host.name", Value::Str(host)));
            }
        }
    }
    let session_hash = fnv64(span.id.as_bytes());
    let schema = &store.tables()["calls"].schema;
    let optional = |c: &str| {
        if schema.field_with_name(c).is_ok() {
            c.to_string()
        } else {
            format!("CAST(NULL AS BIGINT) AS {c}")
        }
    };
    let filter = opts
        .tid
        .map_or(String::new(), |t| format!("WHERE tid = {t}"));
    // Arguments, strings and the return value only where they were
    // captured (--args, --hooks): a hook's payload summary (query text,
    // peer, bytes) as attributes.
    let listed = |c: &str| {
        if schema.field_with_name(c).is_ok() {
            format!(", {c}")
        } else {
            String::new()
        }
    };
    let sql = format!(
        "SELECT tid, call_id, parent_call_id, function_id, depth, start_ns, duration_ns, \
         self_ns, flags, {}, {}, {}, {}{}{} FROM calls {filter} ORDER BY tid, start_ns, depth",
        optional("oncpu_ns"),
        optional("offcpu_ns"),
        optional("ret"),
        optional("request_id"),
        listed("args"),
        listed("arg_strings"),
    );
    let client = reqwest::Client::builder()
        .timeout(opts.timeout)
        .user_agent(concat!("scope/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("cannot set up HTTP")?;
    let started = Instant::now();
    let mut stats = OtlpStats::default();
    let mut batch: Vec<Span> = Vec::with_capacity(BATCH);
    // The open ancestors of the thread being read: (depth, call id); the
    // first is the root whose trace the rest belong to.
    let mut stack: Vec<(i32, u64)> = Vec::new();
    let mut current_tid = None;
    let mut rows = store.stream(&sql)?;
    for b in &mut rows {
        let b = b?;
        let tid = cols::i64s(&b, "tid")?;
        let call = cols::i64s(&b, "call_id")?;
        let parent = cols::i64s(&b, "parent_call_id")?;
        let func = cols::i64s(&b, "function_id")?;
        let depth = cols::i64s(&b, "depth")?;
        let start = cols::i64s(&b, "start_ns")?;
        let dur = cols::i64s(&b, "duration_ns")?;
        let selft = cols::i64s(&b, "self_ns")?;
        let flags = cols::i64s(&b, "flags")?;
        let oncpu = cols::i64s(&b, "oncpu_ns")?;
        let offcpu = cols::i64s(&b, "offcpu_ns")?;
        let rets = cols::i64s(&b, "ret")?;
        let requests = cols::i64s(&b, "request_id")?;
        let args = cols::i64_lists(&b, "args")?;
        let strs = cols::str_lists(&b, "arg_strings")?;
        for i in 0..b.num_rows() {
            let t = tid[i].unwrap_or(0);
            if current_tid != Some(t) {
                current_tid = Some(t);
                stack.clear();
            }
            let id = call[i].unwrap_or(0) as u64;
            let d = depth[i].unwrap_or(0) as i32;
            while stack.last().is_some_and(|&(sd, _)| sd >= d) {
                stack.pop();
            }
            let root = stack.first().map_or(id, |&(_, r)| r);
            stack.push((d, id));
            let f = func[i].unwrap_or(0) as u32;
            let info = funcs.get(&f);
            let start_ns = start[i].unwrap_or(0).max(0) as u64;
            let end_ns = match dur[i] {
                Some(d) => start_ns + d.max(0) as u64,
                None => (span.end_ns.max(0) as u64).max(start_ns),
            };
            let mut attributes = vec![
                kv("thread.id", Value::Int(t)),
                kv(
                    "code.function",
                    Value::Str(info.map_or_else(|| format!("function#{f}"), |x| x.name.clone())),
                ),
            ];
            if let Some(x) = info {
                if let Some(file) = &x.file {
                    attributes.push(kv("code.filepath", Value::Str(file.clone())));
                }
                if let Some(line) = x.line {
                    attributes.push(kv("code.lineno", Value::Int(line)));
                }
            }
            // scope.arg.NAME: the string read, else the value.
            let values = args[i].as_deref().unwrap_or_default();
            let texts = strs[i].as_deref().unwrap_or_default();
            for j in 0..values.len().max(texts.len()) {
                let name = info
                    .and_then(|x| x.params.get(j).cloned().flatten())
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| format!("arg{j}"));
                let key = format!("scope.arg.{name}");
                match (
                    texts.get(j).cloned().flatten(),
                    values.get(j).copied().flatten(),
                ) {
                    (Some(s), _) => attributes.push(kv(&key, Value::Str(s))),
                    (None, Some(v)) => attributes.push(kv(&key, Value::Int(v))),
                    _ => {}
                }
            }
            for (key, v) in [
                ("scope.self_ns", selft[i]),
                ("scope.oncpu_ns", oncpu[i]),
                ("scope.offcpu_ns", offcpu[i]),
                ("scope.ret", rets[i]),
                ("scope.request_id", requests[i]),
            ] {
                if let Some(v) = v {
                    attributes.push(kv(key, Value::Int(v)));
                }
            }
            if let Some(fl) = flags[i].filter(|&f| f != 0) {
                attributes.push(kv("scope.flags", Value::Int(fl)));
            }
            if dur[i].is_none() {
                attributes.push(kv("scope.incomplete", Value::Bool(true)));
            }
            batch.push(Span {
                trace_id: [session_hash.to_be_bytes(), root.to_be_bytes()].concat(),
                span_id: id.to_be_bytes().to_vec(),
                parent_span_id: parent[i]
                    .filter(|&p| p > 0)
                    .map_or_else(Vec::new, |p| (p as u64).to_be_bytes().to_vec()),
                name: info.map_or_else(|| format!("function#{f}"), |x| x.name.clone()),
                kind: SPAN_KIND_INTERNAL,
                start_time_unix_nano: start_ns,
                end_time_unix_nano: end_ns,
                attributes,
            });
            if batch.len() >= BATCH {
                send(store, &client, &url, &resource, &mut batch, &mut stats)?;
                progress(stats.spans);
            }
        }
    }
    if !batch.is_empty() {
        send(store, &client, &url, &resource, &mut batch, &mut stats)?;
        progress(stats.spans);
    }
    stats.secs = started.elapsed().as_secs_f64();
    Ok(stats)
}

/// POSTs `batch` (emptied) as one request, retrying what can succeed later.
fn send(
    store: &Store,
    client: &reqwest::Client,
    url: &str,
    resource: &[KeyValue],
    batch: &mut Vec<Span>,
    stats: &mut OtlpStats,
) -> Result<()> {
    let spans = std::mem::take(batch);
    let n = spans.len() as u64;
    let body = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: resource.to_vec(),
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "scope".to_string(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                }),
                spans,
            }],
        }],
    }
    .encode_to_vec();
    let mut wait = Duration::from_millis(500);
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        let sent = store.block_on(async {
            let resp = client
                .post(url)
                .header("content-type", "application/x-protobuf")
                .body(body.clone())
                .send()
                .await?;
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            Ok::<_, reqwest::Error>((status, text))
        });
        let retry = match sent {
            Ok((status, _)) if status.is_success() => {
                stats.spans += n;
                stats.requests += 1;
                stats.bytes += body.len() as u64;
                return Ok(());
            }
            Ok((status, text)) => {
                last = format!(
                    "HTTP {status}: {}",
                    text.chars().take(200).collect::<String>()
                );
                status.as_u16() == 429 || status.is_server_error()
            }
            Err(e) => {
                last = crate::llm::error_chain(&e);
                true
            }
        };
        if !retry || attempt == ATTEMPTS {
            break;
        }
        stats.retries += 1;
        std::thread::sleep(wait);
        wait = (wait * 2).min(Duration::from_secs(8));
    }
    bail!(
        "OTLP endpoint {url}: {last}; {} spans were sent before this request failed (nothing in the store was changed: run the export again)",
        stats.spans
    )
}

/// FNV-1a, 64 bits: the session's half of every trace id.
fn fnv64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            traces_url("http://127.0.0.1:4318").unwrap(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://127.0.0.1:4318/").unwrap(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            traces_url("https://otel.example/custom/path").unwrap(),
            "https://otel.example/custom/path"
        );
        assert!(traces_url("127.0.0.1:4318").is_err());
        assert!(traces_url("grpc://x:4317").is_err());
    }

    #[test]
    fn a_span_encodes_with_the_published_field_numbers() {
        let s = Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            parent_span_id: Vec::new(),
            name: "f".into(),
            kind: SPAN_KIND_INTERNAL,
            start_time_unix_nano: 5,
            end_time_unix_nano: 9,
            attributes: vec![kv("thread.id", Value::Int(7))],
        };
        let b = s.encode_to_vec();
        // trace_id: field 1, length-delimited, 16 bytes.
        assert_eq!(&b[..2], &[0x0a, 16]);
        // start_time_unix_nano: field 7, fixed64.
        assert!(b.windows(9).any(|w| w == [0x39, 5, 0, 0, 0, 0, 0, 0, 0]));
    }
}
