//! Time travel: what was on a thread's stack at an instant (`stack`), and
//! its calls in order over an interval (`timeline`, like `uftrace
//! replay`).
//!
//! Both read one session. A point query asks for the calls of one thread
//! that began at or before the instant and had not returned by then; with
//! files sorted by (tid, start_ns) (what `compact` writes) the row-group
//! statistics of `tid` and `start_ns` leave out every row group of other
//! threads and every later one.

use std::fmt::Write as _;

use anyhow::{Result, bail};
use rustc_hash::FxHashMap;

use crate::cols;
use crate::report::group_digits;
use crate::store::{Store, sql_str};
use crate::time::{TimeArg, fmt_epoch, fmt_ns, fmt_offset};

/// The session a time-travel command looks at: its id and time range.
#[derive(Clone, Debug)]
pub struct SessionSpan {
    /// Session id.
    pub id: String,
    /// Its start, epoch ns (from `sessions`, else its first call).
    pub start_ns: i64,
    /// Its end, epoch ns (from `sessions`, else its last call's end).
    pub end_ns: i64,
    /// Whether the session sampled (frames outside windows are missing).
    pub sampled: bool,
}

/// The one session the store shows (time travel needs exactly one).
pub fn session_span(store: &Store) -> Result<SessionSpan> {
    let sel = store.selected_sessions();
    let [id] = sel.as_slice() else {
        bail!(
            "time travel reads one session: give --session ID (sessions: {})",
            store.session_list()
        );
    };
    let mut span = SessionSpan {
        id: id.clone(),
        start_ns: 0,
        end_ns: 0,
        sampled: !crate::report::sampled_sessions(store)?.is_empty(),
    };
    let mut found = false;
    if store.has_table("sessions") {
        for b in store.sql("SELECT start_ns, end_ns FROM sessions")? {
            if b.num_rows() > 0 {
                span.start_ns = cols::i64s(&b, "start_ns")?[0].unwrap_or(0);
                span.end_ns = cols::i64s(&b, "end_ns")?[0].unwrap_or(0);
                found = true;
            }
        }
    }
    if !found {
        for b in store.sql(
            "SELECT min(start_ns) AS s, max(start_ns + coalesce(duration_ns, 0)) AS e FROM calls",
        )? {
            span.start_ns = cols::i64s(&b, "s")?[0].unwrap_or(0);
            span.end_ns = cols::i64s(&b, "e")?[0].unwrap_or(0);
        }
    }
    Ok(span)
}

/// Whether every selected session has its file of `table` (a summary
/// the agent writes when the session ends; a crashed one has none).
fn summarized(store: &Store, table: &str) -> bool {
    let Some(info) = store.tables().get(table) else {
        return false;
    };
    let sessions = store.selected_sessions();
    !sessions.is_empty() && sessions.iter().all(|s| info.files.contains_key(s))
}

/// Every thread of the session that recorded calls: (tid, calls, first
/// entry, last return), by tid: from the `threads` summary, else one scan
/// of the session's calls.
pub fn threads(store: &Store) -> Result<Vec<(i64, i64, i64, i64)>> {
    let mut v = Vec::new();
    let sql = if summarized(store, "threads") {
        "SELECT tid, sum(calls) AS n, min(first_ns) AS s, max(last_ns) AS e \
         FROM threads GROUP BY tid ORDER BY tid"
    } else {
        "SELECT tid, count(*) AS n, min(start_ns) AS s, max(start_ns + coalesce(duration_ns, 0)) AS e \
         FROM calls GROUP BY tid ORDER BY tid"
    };
    for b in store.sql(sql)? {
        let t = cols::i64s(&b, "tid")?;
        let n = cols::i64s(&b, "n")?;
        let s = cols::i64s(&b, "s")?;
        let e = cols::i64s(&b, "e")?;
        for i in 0..b.num_rows() {
            v.push((
                t[i].unwrap_or(0),
                n[i].unwrap_or(0),
                s[i].unwrap_or(0),
                e[i].unwrap_or(0),
            ));
        }
    }
    Ok(v)
}

/// Checks that `tid` recorded calls in the session; the error lists the
/// threads that did.
fn check_thread(store: &Store, span: &SessionSpan, tid: u32) -> Result<()> {
    // A known thread is the usual case: `LIMIT 1` stops at its first row,
    // where the listing below reads every row of the session.
    let found = store.sql(&format!("SELECT tid FROM calls WHERE tid = {tid} LIMIT 1"))?;
    if found.iter().any(|b| b.num_rows() > 0) {
        return Ok(());
    }
    let all = threads(store)?;
    if all.iter().any(|t| t.0 == tid as i64) {
        return Ok(());
    }
    let mut msg = format!(
        "thread {tid} recorded no calls in session {}; threads that did:",
        span.id
    );
    for (t, n, s, e) in all.iter().take(20) {
        let _ = write!(
            msg,
            "\n  tid {t}: {} calls, {} to {}",
            group_digits(*n as u64),
            fmt_offset(s - span.start_ns),
            fmt_offset(e - span.start_ns)
        );
    }
    if all.len() > 20 {
        let _ = write!(msg, "\n  … {} more", all.len() - 20);
    }
    bail!(msg)
}

/// `AND (c.duration_ns IS NULL OR c.start_ns >= …)`: a bound no call that
/// was still running at `at_ns` can miss (it began at most the longest
/// duration earlier), which, unlike `start_ns + duration_ns`, row-group and
/// page statistics can prune on: a point query then reads the files around
/// the instant instead of every earlier one. The longest duration comes
/// from the files' statistics (DataFusion answers a bare `max` from the
/// footers without a scan); empty when there is none.
fn start_bound(store: &Store, span: &SessionSpan, at_ns: i64) -> Result<String> {
    let mut longest = store.longest_call(&span.id);
    if longest.is_none() {
        for b in store.sql("SELECT max(duration_ns) AS m FROM calls")? {
            if b.num_rows() > 0 {
                longest = cols::i64s(&b, "m")?[0];
            }
        }
    }
    Ok(match longest {
        Some(m) => format!(
            " AND (c.duration_ns IS NULL OR c.start_ns >= {})",
            at_ns.saturating_sub(m.max(0))
        ),
        None => String::new(),
    })
}

/// The table a query of thread `tid`'s calls running during
/// `from_ns..=to_ns` reads: only the `calls` files whose footers allow such
/// a call (one or two of a session's segments for an instant), registered
/// as a table of their own; `calls` itself when the footers cannot tell.
fn calls_near(
    store: &Store,
    span: &SessionSpan,
    tid: u32,
    from_ns: i64,
    to_ns: i64,
) -> Result<String> {
    match store.calls_files_near(&span.id, i64::from(tid), from_ns, to_ns) {
        Some(files) => store.register_calls_subset(&span.id, &files),
        None => Ok("calls".to_string()),
    }
}

/// `--from`/`--to` in the session (its whole span by default), in order.
fn interval(span: &SessionSpan, from: Option<TimeArg>, to: Option<TimeArg>) -> Result<(i64, i64)> {
    let from_ns = match from {
        Some(t) => instant(span, t, "--from")?,
        None => span.start_ns,
    };
    let to_ns = match to {
        Some(t) => instant(span, t, "--to")?,
        None => span.end_ns,
    };
    if to_ns < from_ns {
        bail!("--to is before --from");
    }
    Ok((from_ns, to_ns))
}

/// Resolves a time argument and checks it lies in the session.
fn instant(span: &SessionSpan, t: TimeArg, what: &str) -> Result<i64> {
    let ns = t.resolve(span.start_ns);
    if ns < span.start_ns || ns > span.end_ns {
        bail!(
            "{what} {} ({}) is outside session {}: it ran from +0s to {} ({} to {})",
            fmt_offset(ns - span.start_ns).replace("+-", "-"),
            fmt_epoch(ns),
            span.id,
            fmt_offset(span.end_ns - span.start_ns),
            fmt_epoch(span.start_ns),
            fmt_epoch(span.end_ns)
        );
    }
    Ok(ns)
}

/// One frame of a stack, or one call of a timeline.
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    /// The session it was recorded in.
    pub session: String,
    /// Its thread.
    pub tid: u32,
    /// `calls.call_id`.
    pub call_id: i64,
    /// Depth (0 at the thread's outermost probed call).
    pub depth: i64,
    /// Function name.
    pub name: String,
    /// Source file and line, when DWARF had them.
    pub location: Option<String>,
    /// Entry, epoch ns.
    pub start_ns: i64,
    /// Duration, ns; `None` when it never returned in the recording.
    pub duration_ns: Option<i64>,
    /// Self time, ns.
    pub self_ns: Option<i64>,
    /// `name=value` of the captured arguments (strings quoted).
    pub args: Vec<String>,
    /// Return value, when captured.
    pub ret: Option<i64>,
}

const FRAME_COLUMNS: &str = "CAST(c.session_id AS VARCHAR) AS sid, c.tid, c.call_id, c.depth, \
    c.start_ns, c.duration_ns, c.self_ns, f.name, f.file, f.line";

/// Reads frames from a query over `calls c JOIN functions f` (with the
/// optional argument columns when the store has them).
fn frames_of(
    store: &Store,
    table: &str,
    filter: &str,
    order: &str,
    limit: Option<usize>,
) -> Result<(Vec<Frame>, bool)> {
    let calls = &store.tables()["calls"].schema;
    let funcs = &store.tables()["functions"].schema;
    let mut extra = String::new();
    let has_args = calls.field_with_name("args").is_ok();
    let has_ret = calls.field_with_name("ret").is_ok();
    let has_strs = calls.field_with_name("arg_strings").is_ok();
    let has_names = funcs.field_with_name("param_names").is_ok();
    if has_args {
        extra.push_str(", c.args");
    }
    if has_ret {
        extra.push_str(", c.ret");
    }
    if has_strs {
        extra.push_str(", c.arg_strings");
    }
    if has_names {
        extra.push_str(", f.param_names");
    }
    let lim = limit.map_or(String::new(), |n| format!(" LIMIT {}", n + 1));
    let sql = format!(
        "SELECT {FRAME_COLUMNS}{extra} FROM {table} c JOIN functions f \
           ON f.session_id = c.session_id AND f.function_id = c.function_id \
         WHERE {filter} ORDER BY {order}{lim}"
    );
    let mut out = Vec::new();
    for b in store.stream(&sql)? {
        let b = b?;
        let sid = cols::strs(&b, "sid")?;
        let tids = cols::i64s(&b, "tid")?;
        let id = cols::i64s(&b, "call_id")?;
        let depth = cols::i64s(&b, "depth")?;
        let start = cols::i64s(&b, "start_ns")?;
        let dur = cols::i64s(&b, "duration_ns")?;
        let selfs = cols::i64s(&b, "self_ns")?;
        let name = cols::strs(&b, "name")?;
        let file = cols::strs(&b, "file")?;
        let line = cols::i64s(&b, "line")?;
        let args = if has_args {
            cols::i64_lists(&b, "args")?
        } else {
            vec![None; b.num_rows()]
        };
        let rets = if has_ret {
            cols::i64s(&b, "ret")?
        } else {
            vec![None; b.num_rows()]
        };
        let strs = if has_strs {
            cols::str_lists(&b, "arg_strings")?
        } else {
            vec![None; b.num_rows()]
        };
        let pnames = if has_names {
            cols::str_lists(&b, "param_names")?
        } else {
            vec![None; b.num_rows()]
        };
        for i in 0..b.num_rows() {
            let mut shown = Vec::new();
            if let Some(vals) = &args[i] {
                for (j, v) in vals.iter().enumerate() {
                    let pname = pnames[i]
                        .as_ref()
                        .and_then(|p| p.get(j).cloned().flatten())
                        .unwrap_or_else(|| format!("arg{j}"));
                    let s = strs[i].as_ref().and_then(|s| s.get(j).cloned().flatten());
                    shown.push(match (s, v) {
                        (Some(s), _) => format!("{pname}={s:?}"),
                        (None, Some(v)) => format!("{pname}={v}"),
                        (None, None) => format!("{pname}=?"),
                    });
                }
            }
            out.push(Frame {
                session: sid[i].clone().unwrap_or_default(),
                tid: tids[i].unwrap_or(0) as u32,
                call_id: id[i].unwrap_or(0),
                depth: depth[i].unwrap_or(0),
                name: name[i].clone().unwrap_or_default(),
                location: match (&file[i], line[i]) {
                    (Some(f), Some(l)) => Some(format!("{f}:{l}")),
                    (Some(f), None) => Some(f.clone()),
                    _ => None,
                },
                start_ns: start[i].unwrap_or(0),
                duration_ns: dur[i],
                self_ns: selfs[i],
                args: shown,
                ret: rets[i],
            });
        }
    }
    let more = limit.is_some_and(|n| out.len() > n);
    if let Some(n) = limit {
        out.truncate(n);
    }
    Ok((out, more))
}

/// What was on a thread's stack at an instant, innermost frame first.
#[derive(Clone, Debug)]
pub struct Stack {
    /// The session.
    pub span: SessionSpan,
    /// The thread.
    pub tid: u32,
    /// The instant, epoch ns.
    pub at_ns: i64,
    /// Frames, innermost first.
    pub frames: Vec<Frame>,
    /// When no frame was open: the call that ended last before the instant
    /// and the one that began first after it.
    pub around: (Option<Frame>, Option<Frame>),
}

/// `stack --tid T --at TIME`.
pub fn stack(store: &Store, tid: u32, at: TimeArg) -> Result<Stack> {
    let span = session_span(store)?;
    let at_ns = instant(&span, at, "--at")?;
    let filter = format!(
        "c.tid = {tid} AND c.start_ns <= {at_ns} AND (c.duration_ns IS NULL OR c.start_ns + c.duration_ns > {at_ns}) \
         AND c.session_id = {}{}",
        sql_str(&span.id),
        start_bound(store, &span, at_ns)?
    );
    // A call without a return (the program exited inside it, or the
    // recording ended) is open from its entry to the session's end.
    let near = calls_near(store, &span, tid, at_ns, at_ns)?;
    let (frames, _) = frames_of(store, &near, &filter, "c.depth DESC, c.start_ns DESC", None)?;
    let mut around = (None, None);
    if frames.is_empty() {
        // Nothing open then: is the thread known at all (else the error
        // lists the threads), and what ran before and after?
        check_thread(store, &span, tid)?;
        let before = format!(
            "c.tid = {tid} AND c.start_ns + c.duration_ns <= {at_ns} AND c.start_ns >= {}",
            span.start_ns
        );
        around.0 = frames_of(
            store,
            "calls",
            &before,
            "c.start_ns + c.duration_ns DESC",
            Some(1),
        )?
        .0
        .pop();
        let after = format!("c.tid = {tid} AND c.start_ns > {at_ns}");
        around.1 = frames_of(store, "calls", &after, "c.start_ns, c.depth", Some(1))?
            .0
            .pop();
    }
    Ok(Stack {
        span,
        tid,
        at_ns,
        frames,
        around,
    })
}

fn call_text(f: &Frame) -> String {
    let mut s = format!("{}({})", f.name, f.args.join(", "));
    if let Some(r) = f.ret {
        let _ = write!(s, " = {r}");
    }
    s
}

/// The stack as text.
pub fn render_stack(st: &Stack) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "thread {} at {} ({}), session {}:",
        st.tid,
        fmt_offset(st.at_ns - st.span.start_ns),
        fmt_epoch(st.at_ns),
        st.span.id
    );
    if st.frames.is_empty() {
        let _ = writeln!(s, "  no probed function was running");
        if let Some(b) = &st.around.0 {
            let _ = writeln!(
                s,
                "  before: {} returned at {}",
                b.name,
                fmt_offset(b.start_ns + b.duration_ns.unwrap_or(0) - st.span.start_ns)
            );
        }
        if let Some(a) = &st.around.1 {
            let _ = writeln!(
                s,
                "  after:  {} entered at {}",
                a.name,
                fmt_offset(a.start_ns - st.span.start_ns)
            );
        }
    }
    for (i, f) in st.frames.iter().enumerate() {
        let _ = writeln!(
            s,
            "  #{i:<2} {}{}",
            call_text(f),
            f.location
                .as_ref()
                .map_or(String::new(), |l| format!("  at {l}"))
        );
        let so_far = st.at_ns - f.start_ns;
        let _ = writeln!(
            s,
            "       entered {}, {} so far{}",
            fmt_offset(f.start_ns - st.span.start_ns),
            fmt_ns(so_far as f64),
            match f.duration_ns {
                Some(d) => format!(" of {}", fmt_ns(d as f64)),
                None => ", never returned in the recording".to_string(),
            }
        );
    }
    if st.span.sampled {
        let _ = writeln!(
            s,
            "  (a sampled session: calls outside the sampling windows are not recorded, so frames may be missing)"
        );
    }
    s
}

/// `timeline --tid T --from A --to B`: the thread's calls that overlap
/// the interval, in order of entry.
pub struct Timeline {
    /// The session.
    pub span: SessionSpan,
    /// The interval, epoch ns.
    pub from_ns: i64,
    /// End of the interval.
    pub to_ns: i64,
    /// The calls, by entry.
    pub calls: Vec<Frame>,
    /// Whether `limit` cut the list.
    pub more: bool,
}

/// Builds a timeline.
pub fn timeline(
    store: &Store,
    tid: u32,
    from: Option<TimeArg>,
    to: Option<TimeArg>,
    limit: usize,
) -> Result<Timeline> {
    let span = session_span(store)?;
    let (from_ns, to_ns) = interval(&span, from, to)?;
    let filter = format!(
        "c.tid = {tid} AND c.start_ns <= {to_ns} AND (c.duration_ns IS NULL OR c.start_ns + c.duration_ns >= {from_ns}) \
         AND c.session_id = {}{}",
        sql_str(&span.id),
        start_bound(store, &span, from_ns)?
    );
    let near = calls_near(store, &span, tid, from_ns.saturating_sub(1), to_ns)?;
    let (calls, more) = frames_of(
        store,
        &near,
        &filter,
        "c.start_ns, c.depth",
        Some(limit.max(1)),
    )?;
    if calls.is_empty() {
        check_thread(store, &span, tid)?;
    }
    Ok(Timeline {
        span,
        from_ns,
        to_ns,
        calls,
        more,
    })
}

/// The timeline as text: entry offset, duration, and the call indented by
/// its depth.
pub fn render_timeline(tl: &Timeline, tid: u32) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "thread {tid}, {} to {}, session {}:",
        fmt_offset(tl.from_ns - tl.span.start_ns),
        fmt_offset(tl.to_ns - tl.span.start_ns),
        tl.span.id
    );
    let base = tl.calls.iter().map(|c| c.depth).min().unwrap_or(0);
    let mut by_depth: FxHashMap<i64, usize> = FxHashMap::default();
    for c in &tl.calls {
        *by_depth.entry(c.depth).or_default() += 1;
        let dur = match c.duration_ns {
            Some(d) => fmt_ns(d as f64),
            None => "open".to_string(),
        };
        let _ = writeln!(
            s,
            "{:>14}  {:>10}  {}{}",
            fmt_offset(c.start_ns - tl.span.start_ns),
            dur,
            "  ".repeat((c.depth - base).max(0) as usize),
            call_text(c)
        );
    }
    if tl.calls.is_empty() {
        let _ = writeln!(s, "  (no probed call in this interval)");
    }
    if tl.more {
        let _ = writeln!(
            s,
            "… more calls (--limit N shows more, or narrow --from/--to)"
        );
    }
    if tl.span.sampled {
        let _ = writeln!(
            s,
            "(a sampled session: calls outside the sampling windows are not recorded)"
        );
    }
    s
}

/// One session of a merged timeline: the node that recorded it and how
/// its clock was lined up with UTC (`sessions` columns; `None` in a store
/// written before they existed).
#[derive(Clone, Debug, PartialEq)]
pub struct NodeSpan {
    /// Session id.
    pub id: String,
    /// Host name.
    pub host: String,
    /// Recording's start and end, epoch ns (UTC as measured).
    pub start_ns: i64,
    pub end_ns: i64,
    /// The node's clock minus UTC, taken out of its times.
    pub utc_offset_ns: Option<i64>,
    /// What remains of it, at most; `None` when unknown.
    pub utc_uncertainty_ns: Option<i64>,
    /// How it was measured.
    pub clock_sync: Option<String>,
}

/// `timeline` over every thread, or over several sessions (agents on
/// several machines writing one store): the calls of each that overlap the
/// interval, merged by entry time. The agents stored UTC as each measured
/// it, so calls on different nodes line up to within the sum of their
/// clocks' bounds.
pub struct MergedTimeline {
    /// The sessions, by start.
    pub nodes: Vec<NodeSpan>,
    /// The interval, epoch ns.
    pub from_ns: i64,
    pub to_ns: i64,
    /// Calls, by entry (then session, thread, depth).
    pub calls: Vec<Frame>,
    /// Whether `limit` cut the list.
    pub more: bool,
}

/// The selected sessions as nodes, from `sessions` (a session without its
/// row, still recording or crashed, spans its calls).
pub fn node_spans(store: &Store) -> Result<Vec<NodeSpan>> {
    let selected = store.selected_sessions();
    if selected.is_empty() {
        bail!("no sessions in this store");
    }
    let mut nodes: Vec<NodeSpan> = Vec::new();
    if store.has_table("sessions") {
        let schema = &store.tables()["sessions"].schema;
        let col = |c: &str, alias: &str| {
            if schema.field_with_name(c).is_ok() {
                format!("{c} AS {alias}")
            } else {
                format!("NULL AS {alias}")
            }
        };
        let sql = format!(
            "SELECT CAST(session_id AS VARCHAR) AS sid, host, start_ns, end_ns, {}, {}, {} FROM sessions",
            col("utc_offset_ns", "uo"),
            col("utc_uncertainty_ns", "uu"),
            col("clock_sync", "cs")
        );
        for b in store.sql(&sql)? {
            let sid = cols::strs(&b, "sid")?;
            let host = cols::strs(&b, "host")?;
            let s = cols::i64s(&b, "start_ns")?;
            let e = cols::i64s(&b, "end_ns")?;
            let uo = cols::i64s(&b, "uo")?;
            let uu = cols::i64s(&b, "uu")?;
            let cs = cols::strs(&b, "cs")?;
            for i in 0..b.num_rows() {
                nodes.push(NodeSpan {
                    id: sid[i].clone().unwrap_or_default(),
                    host: host[i].clone().unwrap_or_default(),
                    start_ns: s[i].unwrap_or(0),
                    end_ns: e[i].unwrap_or(0),
                    utc_offset_ns: uo[i],
                    utc_uncertainty_ns: uu[i],
                    clock_sync: cs[i].clone(),
                });
            }
        }
    }
    for id in &selected {
        if nodes.iter().any(|n| &n.id == id) {
            continue;
        }
        for b in store.sql(&format!(
            "SELECT min(start_ns) AS s, max(start_ns + coalesce(duration_ns, 0)) AS e \
             FROM calls WHERE session_id = {}",
            sql_str(id)
        ))? {
            nodes.push(NodeSpan {
                id: id.clone(),
                host: String::new(),
                start_ns: cols::i64s(&b, "s")?[0].unwrap_or(0),
                end_ns: cols::i64s(&b, "e")?[0].unwrap_or(0),
                utc_offset_ns: None,
                utc_uncertainty_ns: None,
                clock_sync: None,
            });
        }
    }
    nodes.sort_by(|a, b| (a.start_ns, &a.id).cmp(&(b.start_ns, &b.id)));
    Ok(nodes)
}

/// Builds a merged timeline: every selected session, every thread (or
/// only `tid` in each).
pub fn merged_timeline(
    store: &Store,
    tid: Option<u32>,
    from: Option<TimeArg>,
    to: Option<TimeArg>,
    limit: usize,
) -> Result<MergedTimeline> {
    let nodes = node_spans(store)?;
    let span = SessionSpan {
        id: nodes
            .iter()
            .map(|n| n.id.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        start_ns: nodes.iter().map(|n| n.start_ns).min().unwrap_or(0),
        end_ns: nodes.iter().map(|n| n.end_ns).max().unwrap_or(0),
        sampled: false,
    };
    let (from_ns, to_ns) = interval(&span, from, to)?;
    let ids = nodes
        .iter()
        .map(|n| sql_str(&n.id))
        .collect::<Vec<_>>()
        .join(", ");
    let thread = tid.map_or(String::new(), |t| format!("c.tid = {t} AND "));
    let filter = format!(
        "{thread}c.start_ns <= {to_ns} AND (c.duration_ns IS NULL OR c.start_ns + c.duration_ns >= {from_ns}) \
         AND c.session_id IN ({ids})"
    );
    let (calls, more) = frames_of(
        store,
        "calls",
        &filter,
        "c.start_ns, c.session_id, c.tid, c.depth",
        Some(limit.max(1)),
    )?;
    Ok(MergedTimeline {
        nodes,
        from_ns,
        to_ns,
        calls,
        more,
    })
}

/// The merged timeline as text: the nodes and their clocks, then each call
/// with its offset from the earliest start, its node and thread.
pub fn render_merged_timeline(tl: &MergedTimeline) -> String {
    let mut s = String::new();
    let base = tl.nodes.iter().map(|n| n.start_ns).min().unwrap_or(0);
    let hosts: std::collections::BTreeSet<&str> =
        tl.nodes.iter().map(|n| n.host.as_str()).collect();
    // A node's label: its host where hosts tell the sessions apart, else
    // the session id.
    let by_host = hosts.len() == tl.nodes.len() && !hosts.contains("");
    let label = |id: &str| -> String {
        match tl.nodes.iter().find(|n| n.id == id) {
            Some(n) if by_host => n.host.clone(),
            _ => id.to_string(),
        }
    };
    let _ = writeln!(
        s,
        "{} session{} on {} host{}, merged on UTC, {} to {} (+0s = {}):",
        tl.nodes.len(),
        if tl.nodes.len() == 1 { "" } else { "s" },
        hosts.len(),
        if hosts.len() == 1 { "" } else { "s" },
        fmt_offset(tl.from_ns - base),
        fmt_offset(tl.to_ns - base),
        fmt_epoch(base)
    );
    for n in &tl.nodes {
        let clock = match (&n.clock_sync, n.utc_offset_ns) {
            (Some(how), Some(off)) => {
                let bound = match n.utc_uncertainty_ns {
                    Some(u) => format!("± {}", fmt_ns(u as f64)),
                    None => "bound unknown".to_string(),
                };
                format!(
                    "clock {}, {bound} ({how})",
                    if off == 0 {
                        "taken as UTC".to_string()
                    } else {
                        format!("corrected by {}", fmt_ns(-off as f64))
                    }
                )
            }
            _ => "clock not measured (an older agent)".to_string(),
        };
        let _ = writeln!(
            s,
            "  {:<16} {}  {} to {}  {clock}",
            if by_host { &n.host } else { &n.id },
            if by_host { n.id.as_str() } else { "" },
            fmt_offset(n.start_ns - base),
            fmt_offset(n.end_ns - base)
        );
    }
    let width = tl
        .calls
        .iter()
        .map(|c| label(&c.session).chars().count())
        .max()
        .unwrap_or(4);
    for c in &tl.calls {
        let dur = match c.duration_ns {
            Some(d) => fmt_ns(d as f64),
            None => "open".to_string(),
        };
        let _ = writeln!(
            s,
            "{:>14}  {:>10}  {:<width$}  {:>7}  {}{}",
            fmt_offset(c.start_ns - base),
            dur,
            label(&c.session),
            c.tid,
            "  ".repeat(c.depth.max(0) as usize),
            call_text(c)
        );
    }
    if tl.calls.is_empty() {
        let _ = writeln!(s, "  (no probed call in this interval)");
    }
    if tl.more {
        let _ = writeln!(
            s,
            "… more calls (--limit N shows more, or narrow --from/--to, or --tid)"
        );
    }
    if tl.nodes.len() > 1 {
        let bounds: Option<i64> = tl.nodes.iter().map(|n| n.utc_uncertainty_ns).sum();
        let _ = match bounds {
            Some(b) => writeln!(
                s,
                "(calls on different hosts are ordered to within {}: the sum of the clocks' bounds)",
                fmt_ns(b as f64)
            ),
            None => writeln!(
                s,
                "(a clock's bound is unknown: calls on different hosts closer than its error may be out of order; record with --clock-ref)"
            ),
        };
    }
    s
}

/// Calls of one thread over an interval at a level of detail: those at
/// least `min_ns` long drawn one by one, the shorter ones merged per depth
/// into runs (a viewer's pixel: nothing narrower is visible).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Detail {
    /// Calls at least `min_ns` long (or never returned), by entry.
    pub calls: Vec<Frame>,
    /// Whether `limit` cut `calls`.
    pub more: bool,
    /// Runs of shorter calls: (depth, first entry, last return, calls).
    pub hidden: Vec<(i64, i64, i64, i64)>,
    /// What the runs are aligned to and the shortest call drawn: the
    /// request's, or (from the `overview` summary) the bucket width at or
    /// under it and the start of its bucket.
    pub from_ns: i64,
    pub min_ns: i64,
    /// Whether the `overview` summary answered (not a scan of `calls`).
    pub summary: bool,
}

/// [`Detail`] of thread `tid` over `from_ns..to_ns` (epoch ns): one scan
/// of the files near the interval (see `calls_near`); calls at least
/// `min_ns` long become frames, the shorter ones are counted per depth and
/// `min_ns` bucket, adjacent buckets merged into runs. At one depth of one
/// thread calls do not overlap, so at most about `(to − from) / min_ns`
/// frames per depth come back whatever the number of calls.
///
/// A request for the whole thread at a pixel no narrower than the
/// `overview` summary's buckets is answered from the summary instead (a
/// few thousand rows): exactly what [`detail_from_calls`] gives for the
/// answer's `from_ns` and `min_ns`.
pub fn detail(
    store: &Store,
    tid: u32,
    from_ns: i64,
    to_ns: i64,
    min_ns: i64,
    limit: usize,
) -> Result<Detail> {
    detail_at(store, tid, from_ns, to_ns, min_ns, limit, true)
}

/// [`detail`] always from a scan of `calls` (never the summary).
pub fn detail_from_calls(
    store: &Store,
    tid: u32,
    from_ns: i64,
    to_ns: i64,
    min_ns: i64,
    limit: usize,
) -> Result<Detail> {
    detail_at(store, tid, from_ns, to_ns, min_ns, limit, false)
}

fn detail_at(
    store: &Store,
    tid: u32,
    from_ns: i64,
    to_ns: i64,
    min_ns: i64,
    limit: usize,
    summary: bool,
) -> Result<Detail> {
    let span = session_span(store)?;
    let (from_ns, to_ns) = (from_ns.min(to_ns), from_ns.max(to_ns));
    let min_ns = min_ns.max(1);
    // Names and source lines, once (a session has few functions).
    let mut names: FxHashMap<i64, (String, Option<String>)> = Default::default();
    for b in store.sql(&format!(
        "SELECT function_id, name, file, line FROM functions WHERE session_id = {}",
        sql_str(&span.id)
    ))? {
        let id = cols::i64s(&b, "function_id")?;
        let name = cols::strs(&b, "name")?;
        let file = cols::strs(&b, "file")?;
        let line = cols::i64s(&b, "line")?;
        for i in 0..b.num_rows() {
            let location = match (&file[i], line[i]) {
                (Some(f), Some(l)) => Some(format!("{f}:{l}")),
                (Some(f), None) => Some(f.clone()),
                _ => None,
            };
            names.insert(
                id[i].unwrap_or(0),
                (name[i].clone().unwrap_or_default(), location),
            );
        }
    }
    let mut calls = Vec::new();
    let mut buckets: FxHashMap<(i64, i64), (i64, i64, i64)> = Default::default();
    let frame = |id: i64, d: i64, s: i64, dur: Option<i64>, selfs: Option<i64>, f: i64| {
        let (name, location) = names
            .get(&f)
            .cloned()
            .unwrap_or_else(|| (format!("function#{f}"), None));
        Frame {
            session: span.id.clone(),
            tid,
            call_id: id,
            depth: d,
            name,
            location,
            start_ns: s,
            duration_ns: dur,
            self_ns: selfs,
            args: Vec::new(),
            ret: None,
        }
    };
    let fit = match summary {
        true => overview_fit(store, tid, from_ns, to_ns, min_ns)?,
        false => None,
    };
    if let Some((from, width)) = fit {
        // The whole thread at a pixel no narrower than the summary's
        // buckets: the same answer from a few thousand rows.
        for b in store.sql(&format!(
            "SELECT depth, start_ns, end_ns, calls, call_id, function_id, duration_ns, self_ns \
             FROM overview WHERE tid = {tid}"
        ))? {
            let depth = cols::i64s(&b, "depth")?;
            let start = cols::i64s(&b, "start_ns")?;
            let end = cols::i64s(&b, "end_ns")?;
            let n = cols::i64s(&b, "calls")?;
            let id = cols::i64s(&b, "call_id")?;
            let f = cols::i64s(&b, "function_id")?;
            let dur = cols::i64s(&b, "duration_ns")?;
            let selfs = cols::i64s(&b, "self_ns")?;
            for i in 0..b.num_rows() {
                let (d, s) = (depth[i].unwrap_or(0), start[i].unwrap_or(0));
                let long = id[i].is_some() && dur[i].is_none_or(|len| len >= width);
                if long {
                    calls.push(frame(
                        id[i].unwrap_or(0),
                        d,
                        s,
                        dur[i],
                        selfs[i],
                        f[i].unwrap_or(0),
                    ));
                    continue;
                }
                let k = (s - from).div_euclid(width);
                let e = buckets.entry((d, k)).or_insert((0, s, end[i].unwrap_or(s)));
                e.0 += n[i].unwrap_or(0);
                e.1 = e.1.min(s);
                e.2 = e.2.max(end[i].unwrap_or(s));
            }
        }
        let mut d = finish_detail(calls, buckets, limit, from, width);
        d.summary = true;
        return Ok(d);
    }
    let near = calls_near(store, &span, tid, from_ns.saturating_sub(1), to_ns)?;
    let overlap = format!(
        "c.tid = {tid} AND c.start_ns <= {to_ns} AND (c.duration_ns IS NULL OR c.start_ns + c.duration_ns >= {from_ns}) \
         AND c.session_id = {}{}",
        sql_str(&span.id),
        start_bound(store, &span, from_ns)?
    );
    for b in store.stream(&format!(
        "SELECT c.call_id, c.depth, c.start_ns, c.duration_ns, c.self_ns, c.function_id \
         FROM {near} c WHERE {overlap}"
    ))? {
        let b = b?;
        let id = cols::i64s(&b, "call_id")?;
        let depth = cols::i64s(&b, "depth")?;
        let start = cols::i64s(&b, "start_ns")?;
        let dur = cols::i64s(&b, "duration_ns")?;
        let selfs = cols::i64s(&b, "self_ns")?;
        let f = cols::i64s(&b, "function_id")?;
        for i in 0..b.num_rows() {
            let (d, s) = (depth[i].unwrap_or(0), start[i].unwrap_or(0));
            match dur[i] {
                Some(len) if len < min_ns => {
                    let k = (s - from_ns).div_euclid(min_ns);
                    let e = buckets.entry((d, k)).or_insert((0, s, s + len));
                    e.0 += 1;
                    e.1 = e.1.min(s);
                    e.2 = e.2.max(s + len);
                }
                _ => calls.push(frame(
                    id[i].unwrap_or(0),
                    d,
                    s,
                    dur[i],
                    selfs[i],
                    f[i].unwrap_or(0),
                )),
            }
        }
    }
    Ok(finish_detail(calls, buckets, limit, from_ns, min_ns))
}

/// The `overview` summary's (aligned start, bucket width) for a request
/// of thread `tid` over `from_ns..to_ns` at `min_ns`, when it can answer
/// it exactly: the request covers the whole thread and its pixel is at
/// least the summary's bucket. The width is the largest power-of-two
/// multiple of the bucket not over `min_ns`, the start that of its bucket.
fn overview_fit(
    store: &Store,
    tid: u32,
    from_ns: i64,
    to_ns: i64,
    min_ns: i64,
) -> Result<Option<(i64, i64)>> {
    if !summarized(store, "overview") || !summarized(store, "threads") {
        return Ok(None);
    }
    let one = |sql: &str, col: &str| -> Result<Option<i64>> {
        let mut v = None;
        for b in store.sql(sql)? {
            v = v.or(cols::i64s(&b, col)?.first().copied().flatten());
        }
        Ok(v)
    };
    let first = one(
        &format!("SELECT min(first_ns) AS v FROM threads WHERE tid = {tid}"),
        "v",
    )?;
    let last = one(
        &format!("SELECT max(last_ns) AS v FROM threads WHERE tid = {tid}"),
        "v",
    )?;
    let bucket = one(
        &format!("SELECT max(bucket_ns) AS v FROM overview WHERE tid = {tid}"),
        "v",
    )?;
    let got = match (first, last, bucket) {
        (Some(f), Some(l), Some(w)) => Some((f, l, w)),
        _ => None,
    };
    let Some((first, last, bucket)) = got else {
        return Ok(None);
    };
    if from_ns > first || to_ns < last || bucket <= 0 || min_ns < bucket {
        return Ok(None);
    }
    let mut width = bucket;
    while width.saturating_mul(2) <= min_ns {
        width *= 2;
    }
    Ok(Some((from_ns.div_euclid(width) * width, width)))
}

/// A [`Detail`] from its frames and its buckets of `min_ns` from `from_ns`:
/// frames by entry (at most `limit`), adjacent buckets of a depth merged.
fn finish_detail(
    mut calls: Vec<Frame>,
    buckets: FxHashMap<(i64, i64), (i64, i64, i64)>,
    limit: usize,
    from_ns: i64,
    min_ns: i64,
) -> Detail {
    calls.sort_by_key(|c| (c.start_ns, c.depth));
    let more = calls.len() > limit.max(1);
    calls.truncate(limit.max(1));
    let mut buckets: Vec<_> = buckets.into_iter().collect();
    buckets.sort_unstable();
    let mut hidden: Vec<(i64, i64, i64, i64)> = Vec::new();
    let mut last_k = i64::MIN;
    for ((depth, k), (n, s, e)) in buckets {
        match hidden.last_mut() {
            Some(h) if h.0 == depth && k <= last_k + 1 => {
                h.2 = h.2.max(e);
                h.3 += n;
            }
            _ => hidden.push((depth, s, e, n)),
        }
        last_k = k;
    }
    Detail {
        calls,
        more,
        hidden,
        from_ns,
        min_ns,
        summary: false,
    }
}
