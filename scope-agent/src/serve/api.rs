//! The JSON API under `/api/` that the page uses (documented for scripts in
//! the README's "serve" section). Every `*_ns` that is a point in time
//! (epoch ns, past 2^53) is a string; durations and ids are numbers.
//! Errors are `{"error": "..."}` with a 4xx/5xx status.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use futures::StreamExt as _;
use rustc_hash::FxHashMap;
use scope_query::report::ReportOptions;
use scope_query::time::TimeArg;
use scope_query::{Store, cols};
use serde_json::{Value, json};

use super::{Reply, State, param};

/// How long one SQL query from the page may run.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Rows of a SQL result sent to the page.
const QUERY_ROWS: usize = 5000;
/// Calls drawn one by one in a timeline answer.
const TIMELINE_BARS: usize = 5000;
/// Calls a flame graph of a time range may read.
const FLAME_RANGE_CALLS: usize = 2_000_000;
/// The largest source file shown.
const MAX_SOURCE: u64 = 4 << 20;

/// An epoch time as JSON: a string (it does not fit a double exactly).
fn at(ns: i64) -> Value {
    Value::String(ns.to_string())
}

/// Routes one API request.
pub(super) fn answer(
    state: &State,
    path: &str,
    query: &str,
    get: bool,
    post: bool,
    body: &str,
) -> Reply {
    let result = match (path, get, post) {
        ("/api/sessions", true, _) => sessions(state),
        ("/api/query", _, true) => sql(state, body),
        ("/api/query", _, _) => return Reply::error(405, "POST {\"sql\": \"...\"} to /api/query"),
        (p, true, _) => {
            let session = match param(query, "session") {
                Some(s) => s,
                None => state
                    .all()
                    .sessions()
                    .iter()
                    .max()
                    .cloned()
                    .unwrap_or_default(),
            };
            match state.session(&session) {
                Err(e) => return Reply::error(404, format!("{e:#}")),
                Ok(store) => match p {
                    "/api/functions" => functions(&store),
                    "/api/histogram" => histogram(&store, query),
                    "/api/threads" => state
                        .cached(&session, "threads", || threads(&store))
                        .map(|v| (*v).clone()),
                    "/api/timeline" => timeline(&store, query),
                    "/api/stack" => stack(&store, query),
                    "/api/flame" => flame(state, &session, &store, query),
                    "/api/source" => source(&store, query),
                    "/api/findings" => findings(&store),
                    _ => return Reply::error(404, format!("no such API: {p}")),
                },
            }
        }
        (p, _, _) => return Reply::error(405, format!("{p}: use GET")),
    };
    match result {
        Ok(v) => Reply::json(200, &v),
        Err(e) => {
            let msg = format!("{e:#}");
            let status = if msg.contains("not on this machine") || msg.starts_with("no ") {
                404
            } else {
                400
            };
            Reply::error(status, msg)
        }
    }
}

/// A required integer parameter.
fn int(query: &str, name: &str) -> Result<i64> {
    let v = param(query, name).ok_or_else(|| anyhow!("missing parameter {name}"))?;
    v.trim()
        .parse()
        .map_err(|_| anyhow!("parameter {name}={v:?} is not an integer"))
}

fn opt_int(query: &str, name: &str) -> Result<Option<i64>> {
    match param(query, name) {
        None => Ok(None),
        Some(v) if v.is_empty() => Ok(None),
        Some(_) => int(query, name).map(Some),
    }
}

fn sessions(state: &State) -> Result<Value> {
    let store = state.all();
    let mut rows: FxHashMap<String, Value> = FxHashMap::default();
    if store.has_table("sessions") {
        for b in store.sql("SELECT session_id, command, pid, start_ns, end_ns FROM sessions")? {
            let id = cols::strs(&b, "session_id")?;
            let cmd = cols::strs(&b, "command")?;
            let pid = cols::i64s(&b, "pid")?;
            let s = cols::i64s(&b, "start_ns")?;
            let e = cols::i64s(&b, "end_ns")?;
            for i in 0..b.num_rows() {
                let Some(id) = id[i].clone() else { continue };
                rows.insert(
                    id.clone(),
                    json!({
                        "session_id": id,
                        "command": cmd[i],
                        "pid": pid[i],
                        "start_ns": s[i].map(at),
                        "end_ns": e[i].map(at),
                    }),
                );
            }
        }
    }
    // From the files' footers, no scan: `threads` holds a row per thread
    // (written at the session's end: none for a session still recording).
    let rows_of = |table: &str, id: &str| -> Option<u64> {
        store
            .tables()
            .get(table)
            .and_then(|t| t.files.get(id))
            .map(|f| f.iter().map(|x| x.rows).sum())
    };
    let mut ids: Vec<&String> = store.sessions().iter().collect();
    ids.sort_by(|a, b| b.cmp(a));
    let list: Vec<Value> = ids
        .into_iter()
        .map(|id| {
            let mut v = rows
                .remove(id)
                .unwrap_or_else(|| json!({ "session_id": id, "command": null }));
            v["calls"] = json!(rows_of("calls", id).unwrap_or(0));
            v["threads"] = json!(rows_of("threads", id));
            v
        })
        .collect();
    Ok(json!({ "sessions": list }))
}

/// A function's source file and line, when DWARF had them.
type Location = (Option<String>, Option<i64>);

/// function id → its [`Location`].
fn locations(store: &Store) -> Result<FxHashMap<i64, Location>> {
    let mut out = FxHashMap::default();
    for b in store.sql("SELECT function_id, file, line FROM functions")? {
        let id = cols::i64s(&b, "function_id")?;
        let file = cols::strs(&b, "file")?;
        let line = cols::i64s(&b, "line")?;
        for i in 0..b.num_rows() {
            if let Some(id) = id[i] {
                out.insert(id, (file[i].clone(), line[i]));
            }
        }
    }
    Ok(out)
}

fn functions(store: &Store) -> Result<Value> {
    let r = scope_query::report::report(store, &ReportOptions::every_function())?;
    let loc = locations(store)?;
    let rows: Vec<Value> = r
        .rows
        .iter()
        .map(|row| {
            let (file, line) = row
                .function_id
                .and_then(|id| loc.get(&id).cloned())
                .unwrap_or((None, None));
            json!({
                "function_id": row.function_id,
                "name": row.key,
                "module": row.module,
                "file": file,
                "line": line,
                "calls": row.calls,
                "estimated": !row.exact,
                "calls_low": row.calls_low,
                "calls_high": row.calls_high,
                "recorded": row.recorded,
                "total_ns": row.total_ns,
                "self_ns": row.self_ns,
                "p50_ns": row.p50_ns,
                "p99_ns": row.p99_ns,
                "max_ns": row.max_ns,
            })
        })
        .collect();
    Ok(json!({ "rows": rows, "notes": r.notes }))
}

fn histogram(store: &Store, query: &str) -> Result<Value> {
    let f = int(query, "function_id")?;
    let mut buckets = Vec::new();
    for b in store.sql(&format!(
        "SELECT CAST(floor(log2(CAST(duration_ns AS DOUBLE))) AS BIGINT) AS k, count(*) AS n \
         FROM calls WHERE function_id = {f} AND duration_ns > 0 GROUP BY 1 ORDER BY 1"
    ))? {
        let k = cols::i64s(&b, "k")?;
        let n = cols::i64s(&b, "n")?;
        for i in 0..b.num_rows() {
            if let (Some(k), Some(n)) = (k[i], n[i]) {
                let k = k.clamp(0, 62) as u32;
                buckets.push(json!({ "lo_ns": 1u64 << k, "hi_ns": 1u64 << (k + 1), "count": n }));
            }
        }
    }
    Ok(json!({ "function_id": f, "buckets": buckets }))
}

fn threads(store: &Store) -> Result<Value> {
    let list: Vec<Value> = scope_query::travel::threads(store)?
        .into_iter()
        .map(|(tid, n, s, e)| json!({ "tid": tid, "calls": n, "start_ns": at(s), "end_ns": at(e) }))
        .collect();
    Ok(json!({ "threads": list }))
}

fn frame_json(f: &scope_query::travel::Frame) -> Value {
    let (file, line) = match &f.location {
        Some(l) => match l.rsplit_once(':') {
            Some((file, line)) if line.parse::<i64>().is_ok() => {
                (Some(file.to_string()), line.parse::<i64>().ok())
            }
            _ => (Some(l.clone()), None),
        },
        None => (None, None),
    };
    json!({
        "call_id": f.call_id,
        "depth": f.depth,
        "name": f.name,
        "start_ns": at(f.start_ns),
        "duration_ns": f.duration_ns,
        "self_ns": f.self_ns,
        "file": file,
        "line": line,
        "args": f.args,
        "ret": f.ret,
    })
}

fn timeline(store: &Store, query: &str) -> Result<Value> {
    let tid = int(query, "tid")?;
    let span = scope_query::travel::session_span(store)?;
    let from = opt_int(query, "from")?.unwrap_or(span.start_ns);
    let to = opt_int(query, "to")?.unwrap_or(span.end_ns).max(from + 1);
    let width = opt_int(query, "width")?.unwrap_or(1000).clamp(50, 10_000);
    let min_ns = ((to - from) / width).max(1);
    let tid = u32::try_from(tid).map_err(|_| anyhow!("tid {tid} is not a thread id"))?;
    let d = scope_query::travel::detail(store, tid, from, to, min_ns, TIMELINE_BARS)?;
    let names = function_ids(store)?;
    let bars: Vec<Value> = d
        .calls
        .iter()
        .map(|f| {
            let mut v = frame_json(f);
            v["function_id"] = json!(names.get(&f.name));
            v
        })
        .collect();
    let hidden: Vec<Value> = d
        .hidden
        .iter()
        .map(|(depth, s, e, n)| json!({ "depth": depth, "start_ns": at(*s), "end_ns": at(*e), "calls": n }))
        .collect();
    let mut losses = Vec::new();
    if store.has_table("losses") {
        for b in store.sql(&format!(
            "SELECT start_ns, end_ns, lost FROM losses WHERE end_ns >= {from} AND start_ns <= {to} ORDER BY start_ns LIMIT 10000"
        ))? {
            let s = cols::i64s(&b, "start_ns")?;
            let e = cols::i64s(&b, "end_ns")?;
            let n = cols::i64s(&b, "lost")?;
            for i in 0..b.num_rows() {
                losses.push(json!({ "start_ns": s[i].map(at), "end_ns": e[i].map(at), "lost": n[i] }));
            }
        }
    }
    // Where the governor sampled (a function's calls there are 1 in N, not
    // all): its `aggregates` intervals of mode `sampled`.
    let mut windows = Vec::new();
    if store.has_table("aggregates") {
        for b in store.sql(&format!(
            "SELECT function_id, start_ns, end_ns, sample_n FROM aggregates \
             WHERE mode = 'sampled' AND end_ns >= {from} AND start_ns <= {to} ORDER BY start_ns LIMIT 10000"
        ))? {
            let f = cols::i64s(&b, "function_id")?;
            let s = cols::i64s(&b, "start_ns")?;
            let e = cols::i64s(&b, "end_ns")?;
            let n = cols::i64s(&b, "sample_n")?;
            for i in 0..b.num_rows() {
                windows.push(json!({
                    "function_id": f[i], "start_ns": s[i].map(at), "end_ns": e[i].map(at), "sample_n": n[i],
                }));
            }
        }
    }
    Ok(json!({
        "tid": tid,
        "from_ns": at(d.from_ns),
        "to_ns": at(to),
        "session_start_ns": at(span.start_ns),
        "session_end_ns": at(span.end_ns),
        "min_ns": d.min_ns,
        "bars": bars,
        "more": d.more,
        "hidden": hidden,
        "losses": losses,
        "windows": windows,
    }))
}

/// Function name → id (the first id of a name).
fn function_ids(store: &Store) -> Result<FxHashMap<String, i64>> {
    let mut out = FxHashMap::default();
    for b in store.sql("SELECT function_id, name FROM functions ORDER BY function_id")? {
        let id = cols::i64s(&b, "function_id")?;
        let name = cols::strs(&b, "name")?;
        for i in 0..b.num_rows() {
            if let (Some(id), Some(n)) = (id[i], name[i].clone()) {
                out.entry(n).or_insert(id);
            }
        }
    }
    Ok(out)
}

fn stack(store: &Store, query: &str) -> Result<Value> {
    let tid = int(query, "tid")?;
    let at_ns = int(query, "at")?;
    let tid = u32::try_from(tid).map_err(|_| anyhow!("tid {tid} is not a thread id"))?;
    let st = scope_query::travel::stack(store, tid, TimeArg::Absolute(at_ns))?;
    let names = function_ids(store)?;
    // Outermost first.
    let frames: Vec<Value> = st
        .frames
        .iter()
        .rev()
        .map(|f| {
            let mut v = frame_json(f);
            v["function_id"] = json!(names.get(&f.name));
            v
        })
        .collect();
    Ok(json!({ "tid": tid, "at_ns": at(at_ns), "frames": frames }))
}

/// A flame graph node being built.
#[derive(Default)]
struct Node {
    name: String,
    value: u64,
    children: FxHashMap<String, usize>,
}

fn node_json(nodes: &[Node], i: usize) -> Value {
    let n = &nodes[i];
    let mut kids: Vec<usize> = n.children.values().copied().collect();
    kids.sort_by(|a, b| nodes[*b].value.cmp(&nodes[*a].value));
    let child_sum: u64 = kids.iter().map(|k| nodes[*k].value).sum();
    json!({
        "name": n.name,
        "value": n.value,
        "self": n.value.saturating_sub(child_sum),
        "children": kids.into_iter().map(|k| node_json(nodes, k)).collect::<Vec<_>>(),
    })
}

fn child(nodes: &mut Vec<Node>, parent: usize, name: &str) -> usize {
    if let Some(&i) = nodes[parent].children.get(name) {
        return i;
    }
    nodes.push(Node {
        name: name.to_string(),
        ..Node::default()
    });
    let i = nodes.len() - 1;
    nodes[parent].children.insert(name.to_string(), i);
    i
}

fn flame(state: &State, session: &str, store: &Arc<Store>, query: &str) -> Result<Value> {
    let tid = opt_int(query, "tid")?;
    let from = opt_int(query, "from")?;
    let to = opt_int(query, "to")?;
    if from.is_none() && to.is_none() {
        // The whole session: the folded export's paths (self time per
        // path), summed up the tree; kept once computed.
        let key = format!("flame:{tid:?}");
        let v = state.cached(session, &key, || {
            let mut buf = Vec::new();
            let t = tid.and_then(|t| u32::try_from(t).ok());
            scope_query::export::export_session(
                store,
                scope_query::export::Format::Folded,
                t,
                &mut buf,
            )?;
            let mut nodes = vec![Node {
                name: "all".into(),
                ..Node::default()
            }];
            for line in String::from_utf8_lossy(&buf).lines() {
                let Some((path, n)) = line.rsplit_once(' ') else {
                    continue;
                };
                let Ok(n) = n.parse::<u64>() else { continue };
                let mut at = 0;
                nodes[0].value += n;
                for name in path.split(';') {
                    at = child(&mut nodes, at, name);
                    nodes[at].value += n;
                }
            }
            Ok(node_json(&nodes, 0))
        })?;
        return Ok((*v).clone());
    }
    // A range: the calls overlapping it, each clipped to it.
    let span = scope_query::travel::session_span(store)?;
    let from = from.unwrap_or(span.start_ns);
    let to = to.unwrap_or(span.end_ns).max(from + 1);
    let names: FxHashMap<i64, String> = function_ids(store)?
        .into_iter()
        .map(|(n, id)| (id, n))
        .collect();
    let tid_filter = tid.map_or(String::new(), |t| format!(" AND tid = {t}"));
    let mut calls: Vec<(i64, i64, i64, Option<i64>, i64, i64)> = Vec::new();
    for b in store.stream(&format!(
        "SELECT call_id, parent_call_id, function_id, start_ns, duration_ns, depth FROM calls \
         WHERE start_ns <= {to} AND (duration_ns IS NULL OR start_ns + duration_ns >= {from}){tid_filter}"
    ))? {
        let b = b?;
        let id = cols::i64s(&b, "call_id")?;
        let parent = cols::i64s(&b, "parent_call_id")?;
        let f = cols::i64s(&b, "function_id")?;
        let s = cols::i64s(&b, "start_ns")?;
        let d = cols::i64s(&b, "duration_ns")?;
        let depth = cols::i64s(&b, "depth")?;
        for i in 0..b.num_rows() {
            calls.push((
                s[i].unwrap_or(0),
                depth[i].unwrap_or(0),
                id[i].unwrap_or(0),
                parent[i],
                f[i].unwrap_or(0),
                d[i].map_or(to, |d| s[i].unwrap_or(0) + d),
            ));
        }
        if calls.len() > FLAME_RANGE_CALLS {
            bail!(
                "the range holds more than {FLAME_RANGE_CALLS} calls: narrow it (or draw the whole session)"
            );
        }
    }
    calls.sort_unstable();
    let mut nodes = vec![Node {
        name: "all".into(),
        ..Node::default()
    }];
    let mut node_of: FxHashMap<i64, usize> = FxHashMap::default();
    for (s, _, id, parent, f, e) in calls {
        let v = (e.min(to) - s.max(from)).max(0) as u64;
        let up = parent.and_then(|p| node_of.get(&p).copied()).unwrap_or(0);
        let name = names
            .get(&f)
            .cloned()
            .unwrap_or_else(|| format!("function#{f}"));
        let n = child(&mut nodes, up, &name);
        nodes[n].value += v;
        if up == 0 {
            nodes[0].value += v;
        }
        node_of.insert(id, n);
    }
    Ok(node_json(&nodes, 0))
}

fn source(store: &Store, query: &str) -> Result<Value> {
    let f = int(query, "function_id")?;
    let loc = locations(store)?;
    let Some((Some(file), line)) = loc.get(&f).cloned() else {
        bail!("no source file for function {f}: its DWARF names none (built without -g?)");
    };
    let path = std::path::Path::new(&file);
    if !path.is_absolute() {
        bail!(
            "source {file} is not on this machine (DWARF names it relative to the build directory)"
        );
    }
    // The file DWARF names, read only when it is a regular file (no
    // symbolic link is followed) of a reasonable size.
    let text = {
        use std::io::Read as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut fh = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| anyhow!("source {file} is not on this machine: {e}"))?;
        let meta = fh.metadata()?;
        if !meta.is_file() || meta.len() > MAX_SOURCE {
            bail!("source {file} is not a regular file under 4 MiB");
        }
        let mut bytes = Vec::new();
        fh.read_to_end(&mut bytes)?;
        String::from_utf8_lossy(&bytes).into_owned()
    };
    // Per line: the functions defined there, with their figures.
    let r = scope_query::report::report(store, &ReportOptions::every_function())?;
    let mut per_line: FxHashMap<i64, (f64, f64, f64, Vec<String>)> = FxHashMap::default();
    for row in &r.rows {
        if let Some(id) = row.function_id
            && let Some((Some(fl), Some(l))) = loc.get(&id)
            && fl == &file
        {
            let e = per_line.entry(*l).or_default();
            e.0 += row.calls.unwrap_or(0.0);
            e.1 += row.total_ns.unwrap_or(0.0);
            e.2 += row.self_ns.unwrap_or(0.0);
            e.3.push(row.key.clone());
        }
    }
    let lines: Vec<Value> = text
        .lines()
        .enumerate()
        .map(|(i, t)| {
            let n = i as i64 + 1;
            match per_line.get(&n) {
                Some((c, tot, s, fns)) => json!({
                    "line": n, "text": t, "calls": c, "total_ns": tot, "self_ns": s, "functions": fns,
                }),
                None => json!({ "line": n, "text": t }),
            }
        })
        .collect();
    // Loops and call sites from the `ast` table (written by analyze).
    let mut loops = Vec::new();
    let mut sites = Vec::new();
    if store.has_table("ast") {
        let rows = json_rows(
            store,
            &format!(
                "SELECT loops, calls FROM ast WHERE file = {}",
                scope_query::store::sql_str(&file)
            ),
            10_000,
        )?;
        for row in rows.0 {
            for l in row["loops"].as_array().into_iter().flatten() {
                loops.push(
                    json!({ "line": l["line"], "end_line": l["end_line"], "depth": l["depth"] }),
                );
            }
            for c in row["calls"].as_array().into_iter().flatten() {
                sites.push(json!({ "line": c["line"], "callee": c["callee"], "in_loop_line": c["loop_line"] }));
            }
        }
    }
    let base = path
        .file_name()
        .map(|b| b.to_string_lossy().into_owned())
        .unwrap_or_default();
    let pinned: Vec<Value> = findings_rows(store)?
        .into_iter()
        .filter_map(|f| {
            let loc = f["location"].as_str()?;
            let (lf, ll) = loc.rsplit_once(':')?;
            (lf == file || lf == base || file.ends_with(&format!("/{lf}")))
                .then(|| json!({ "id": f["id"], "kind": f["kind"], "severity": severity_label(&f["severity"]), "score": f["severity"], "title": f["message"], "line": ll.parse::<i64>().ok() }))
        })
        .collect();
    Ok(json!({
        "function_id": f,
        "file": file,
        "line": line,
        "lines": lines,
        "loops": loops,
        "call_sites": sites,
        "findings": pinned,
    }))
}

/// A finding's severity (0–1, as analyze ranks) as the page's word for it;
/// the number stays in `score`.
fn severity_label(v: &Value) -> &'static str {
    match v.as_f64().unwrap_or(0.0) {
        x if x >= 0.5 => "high",
        x if x >= 0.2 => "medium",
        _ => "low",
    }
}

fn findings_rows(store: &Store) -> Result<Vec<Value>> {
    if !store.has_table("findings") {
        return Ok(Vec::new());
    }
    Ok(json_rows(
        store,
        "SELECT id, kind, function, related, severity, confidence, location, message FROM findings",
        10_000,
    )?
    .0)
}

fn findings(store: &Store) -> Result<Value> {
    let ids = function_ids(store)?;
    let mut rows = findings_rows(store)?;
    for r in &mut rows {
        let name = r["function"].as_str().unwrap_or("").to_string();
        r["function_id"] = json!(ids.get(&name));
        r["title"] = r["message"].clone();
        r["score"] = r["severity"].clone();
        r["severity"] = json!(severity_label(&r["score"]));
        if let Some((file, line)) = r["location"].as_str().and_then(|l| l.rsplit_once(':')) {
            let (file, line) = (file.to_string(), line.parse::<i64>().ok());
            r["file"] = json!(file);
            r["line"] = json!(line);
        }
    }
    rows.sort_by(|a, b| {
        let n = |v: &Value| {
            v["id"]
                .as_str()
                .and_then(|s| s.trim_start_matches('F').parse::<u32>().ok())
                .unwrap_or(u32::MAX)
        };
        n(a).cmp(&n(b))
    });
    let note = (!store.has_table("findings"))
        .then_some("no findings yet: run scope-agent analyze on this store");
    Ok(json!({ "findings": rows, "note": note }))
}

/// A query's rows as JSON objects (arrow's JSON writer: nested values
/// kept), at most `limit`; and whether there were more.
fn json_rows(store: &Store, sql: &str, limit: usize) -> Result<(Vec<Value>, bool)> {
    let mut out = Vec::new();
    let mut more = false;
    for b in store.stream(sql)? {
        let b = b?;
        let mut buf = Vec::new();
        {
            let mut w = datafusion::arrow::json::ArrayWriter::new(&mut buf);
            w.write(&b)?;
            w.finish()?;
        }
        if let Ok(Value::Array(rows)) = serde_json::from_slice::<Value>(&buf) {
            for r in rows {
                if out.len() >= limit {
                    more = true;
                    break;
                }
                out.push(r);
            }
        }
        if more {
            break;
        }
    }
    Ok((out, more))
}

/// Integers past 2^53 as strings (a browser's numbers are doubles).
fn safe_numbers(v: &mut Value) {
    match v {
        Value::Number(n) => {
            if let Some(i) = n.as_i64()
                && i.unsigned_abs() > (1u64 << 53)
            {
                *v = Value::String(i.to_string());
            } else if let Some(u) = n.as_u64()
                && u > (1u64 << 53)
            {
                *v = Value::String(u.to_string());
            }
        }
        Value::Array(a) => a.iter_mut().for_each(safe_numbers),
        Value::Object(o) => o.values_mut().for_each(safe_numbers),
        _ => {}
    }
}

/// `POST /api/query {"sql": ...}`: read-only SQL over every session (the
/// tables `query` sees), at most [`QUERY_ROWS`] rows, within
/// [`QUERY_TIMEOUT`] and the store's memory limit.
fn sql(state: &State, body: &str) -> Result<Value> {
    let req: Value = serde_json::from_str(body)
        .map_err(|e| anyhow!("the body is not JSON {{\"sql\": ...}}: {e}"))?;
    let Some(text) = req["sql"].as_str() else {
        bail!("the body has no \"sql\" string");
    };
    let statements =
        datafusion::sql::sqlparser::parser::Parser::parse_sql(&GenericDialect {}, text)
            .map_err(|e| anyhow!("{e}"))?;
    if statements.len() != 1 {
        bail!("one statement at a time ({} given)", statements.len());
    }
    let store = state.all();
    let started = std::time::Instant::now();
    let options = datafusion::execution::context::SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let ctx = store.context().clone();
    let run = async {
        let df = ctx
            .sql_with_options(text, options)
            .await
            .map_err(|e| store.sql_error(text, e))?;
        let schema = df.schema().inner().clone();
        let mut stream: SendableRecordBatchStream = df
            .execute_stream()
            .await
            .map_err(|e| store.sql_error(text, e))?;
        let mut batches = Vec::new();
        let mut rows = 0;
        let mut truncated = false;
        while let Some(b) = stream.next().await {
            let b = b.map_err(|e| store.sql_error(text, e))?;
            rows += b.num_rows();
            batches.push(b);
            if rows >= QUERY_ROWS {
                truncated = true;
                break;
            }
        }
        Ok::<_, anyhow::Error>((schema, batches, truncated))
    };
    let (schema, batches, truncated) = store
        .block_on(async { tokio::time::timeout(QUERY_TIMEOUT, run).await })
        .map_err(|_| {
            anyhow!(
                "the query ran past {} s and was stopped",
                QUERY_TIMEOUT.as_secs()
            )
        })??;
    let columns: Vec<Value> = schema
        .fields()
        .iter()
        .map(|f| json!({ "name": f.name(), "type": f.data_type().to_string() }))
        .collect();
    let mut rows = Vec::new();
    for b in &batches {
        let mut buf = Vec::new();
        {
            let mut w = datafusion::arrow::json::writer::ArrayWriter::new(&mut buf);
            w.write(b)?;
            w.finish()?;
        }
        if let Ok(Value::Array(objs)) = serde_json::from_slice::<Value>(&buf) {
            for o in objs {
                if rows.len() >= QUERY_ROWS {
                    break;
                }
                rows.push(Value::Array(
                    schema
                        .fields()
                        .iter()
                        .map(|f| o.get(f.name()).cloned().unwrap_or(Value::Null))
                        .collect(),
                ));
            }
        }
    }
    let mut v = json!({
        "columns": columns,
        "rows": rows,
        "truncated": truncated,
        "elapsed_ms": started.elapsed().as_secs_f64() * 1000.0,
    });
    safe_numbers(&mut v["rows"]);
    Ok(v)
}
