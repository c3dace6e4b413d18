//! The reading commands (`query`, `report`, `tree`, `stack`, `timeline`):
//! flags to [`scope_query`] calls and their output. None needs root: they
//! read files.

use std::io::{IsTerminal as _, Write};
use std::os::unix::fs::OpenOptionsExt as _;

use anyhow::{Context as _, Result};
use scope_query::output::{OutputFormat, check_binary_target, write_result};
use scope_query::report::{By, ReportOptions, SortKey};
use scope_query::time::parse_time;
use scope_query::tree::TreeOptions;
use scope_query::{OpenOptions, SessionSel, Store};

use crate::cli::{
    AnalyzeArgs, CompactArgs, DEFAULT_EXPORT_MEMORY, DEFAULT_QUERY_MEMORY, DataArgs, DiffArgs,
    ExplainArgs, ExportArgs, QueryArgs, ReportArgs, StackArgs, TimelineArgs, TreeArgs,
};

/// Opens the store `args` names; `default` is the session selection when
/// `--session` is not given.
fn open(args: &DataArgs, default: SessionSel) -> Result<Store> {
    open_with(args, default, DEFAULT_QUERY_MEMORY)
}

/// [`open`] with `memory` as the engine's limit unless `--memory` is given.
fn open_with(args: &DataArgs, default: SessionSel, memory: u64) -> Result<Store> {
    let sessions = args.session.as_deref().map_or(default, SessionSel::parse);
    Store::open(
        &args.store.data,
        &OpenOptions {
            sessions,
            memory_limit: Some(args.memory.unwrap_or(memory) as usize),
        },
    )
}

/// A file created 0600 (the agent may run as root), or standard output.
fn output(path: Option<&std::path::Path>) -> Result<Box<dyn Write + Send>> {
    match path {
        Some(p) => {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(p)
                .with_context(|| format!("cannot create {}", p.display()))?;
            Ok(Box::new(std::io::BufWriter::new(f)))
        }
        None => Ok(Box::new(std::io::BufWriter::new(std::io::stdout()))),
    }
}

/// `scope-agent export`: one session, streamed (the calls' sort spills to
/// disk under `--memory`; the writers keep one thread's open calls).
pub fn export(args: ExportArgs) -> Result<()> {
    if args.format == "otlp" {
        return export_otlp(&args);
    }
    if args.endpoint.is_some() {
        anyhow::bail!("--endpoint is for --format otlp; other formats are written to a file");
    }
    let format: scope_query::export::Format = args.format.parse()?;
    let store = open_with(&args.data, SessionSel::Latest, DEFAULT_EXPORT_MEMORY)?;
    let from_samples = match args.from.as_str() {
        "samples" => true,
        "calls" => false,
        _ => store.has_table("samples") && !has_calls(&store)?,
    };
    if args.offcpu && (args.from == "samples" || args.diff.is_some()) {
        anyhow::bail!("--offcpu draws the calls' time off CPU: not with --from samples or --diff");
    }
    if let Some(base) = &args.diff {
        if from_samples || args.from == "samples" {
            anyhow::bail!("--diff compares the calls of two sessions, not their samples");
        }
        let base = open_side(base, &args.data.store.data, "--diff", DEFAULT_EXPORT_MEMORY)?;
        let session = scope_query::travel::session_span(&store)?;
        let path = export_path(&args, &format!("{}-diff", session.id), format);
        let mut out = output(path.as_deref())?;
        let stats = scope_query::export::export_diff(&base, &store, format, args.tid, &mut out)?;
        out.flush()?;
        eprintln!(
            "scope-agent: exported the difference of session {} from {} as {format}: {} bytes{}",
            session.id,
            base.selected_sessions().join(", "),
            stats.bytes,
            path.map_or(String::new(), |p| format!(" to {}", p.display())),
        );
        return Ok(());
    }
    if from_samples && !args.offcpu {
        return export_samples(&args, format, &store);
    }
    let session = scope_query::travel::session_span(&store)?;
    let path = export_path(&args, &session.id, format);
    let mut out = output(path.as_deref())?;
    let stats =
        scope_query::export::export_session_with(&store, format, args.tid, args.offcpu, &mut out)?;
    out.flush()?;
    let open = if stats.open_calls > 0 {
        format!(
            ", {} without a return (shown to the session's end)",
            stats.open_calls
        )
    } else {
        String::new()
    };
    eprintln!(
        "scope-agent: exported {} calls on {} thread{} of session {} as {format}: {} bytes{open}{}",
        stats.calls,
        stats.threads,
        if stats.threads == 1 { "" } else { "s" },
        session.id,
        stats.bytes,
        path.map_or(String::new(), |p| format!(" to {}", p.display())),
    );
    Ok(())
}

/// `export --format otlp --endpoint URL`: the session's calls as spans,
/// with a status line while they go.
fn export_otlp(args: &ExportArgs) -> Result<()> {
    let Some(endpoint) = &args.endpoint else {
        anyhow::bail!("--format otlp sends spans to a collector: give --endpoint http://HOST:4318");
    };
    if args.offcpu || args.diff.is_some() || args.from == "samples" || args.output.is_some() {
        anyhow::bail!(
            "--format otlp sends the calls to --endpoint: no -o, --offcpu, --diff or --from samples"
        );
    }
    let store = open_with(&args.data, SessionSel::Latest, DEFAULT_EXPORT_MEMORY)?;
    let status = crate::status::Steps::new("export");
    let stats = scope_query::export::otlp::export_otlp(
        &store,
        &scope_query::export::otlp::OtlpOptions {
            endpoint: endpoint.clone(),
            timeout: std::time::Duration::from_secs(30),
            tid: args.tid,
        },
        &|n| status.step(&format!("{n} spans sent")),
    )?;
    status.done();
    let session = scope_query::travel::session_span(&store)?;
    eprintln!(
        "scope-agent: sent {} spans of session {} to {} in {} requests ({} bytes, {:.1} s, {:.0} spans/s{})",
        stats.spans,
        session.id,
        scope_query::export::otlp::traces_url(endpoint)?,
        stats.requests,
        stats.bytes,
        stats.secs,
        stats.spans as f64 / stats.secs.max(1e-9),
        if stats.retries > 0 {
            format!("; {} requests retried", stats.retries)
        } else {
            String::new()
        }
    );
    Ok(())
}

/// Where `export` writes: `-o FILE`, standard output for `-o -` (`None`),
/// or scope-`<name>`.`<extension>` in the current directory.
fn export_path(
    args: &ExportArgs,
    name: &str,
    format: scope_query::export::Format,
) -> Option<std::path::PathBuf> {
    match &args.output {
        Some(p) if p.as_os_str() == "-" => None,
        Some(p) => Some(p.clone()),
        None => Some(std::path::PathBuf::from(format!(
            "scope-{name}.{}",
            format.extension()
        ))),
    }
}

/// Whether the selected session recorded any call.
fn has_calls(store: &Store) -> Result<bool> {
    if !store.has_table("calls") {
        return Ok(false);
    }
    let batches = store.sql("SELECT count(*) AS n FROM calls")?;
    Ok(batches.iter().any(|b| {
        b.column(0)
            .as_any()
            .downcast_ref::<arrow_array::Int64Array>()
            .is_some_and(|a| a.iter().flatten().any(|n| n > 0))
    }))
}

/// `export --from samples`: the on-CPU samples as folded stacks or a
/// flame graph.
fn export_samples(
    args: &ExportArgs,
    format: scope_query::export::Format,
    store: &Store,
) -> Result<()> {
    let sel = store.selected_sessions();
    let [id] = sel.as_slice() else {
        anyhow::bail!(
            "export reads one session: give --session ID (sessions: {})",
            store.session_list()
        );
    };
    let path = export_path(args, &format!("{id}-samples"), format);
    let mut out = output(path.as_deref())?;
    let title = format!("on-CPU samples ({id})");
    let stats = scope_query::export::export_samples(store, format, args.tid, &title, &mut out)?;
    out.flush()?;
    eprintln!(
        "scope-agent: exported {} samples on {} thread{} of session {id} as {format}: {} bytes{}",
        stats.calls,
        stats.threads,
        if stats.threads == 1 { "" } else { "s" },
        stats.bytes,
        path.map_or(String::new(), |p| format!(" to {}", p.display())),
    );
    Ok(())
}

/// `scope-agent query`.
pub fn query(args: QueryArgs) -> Result<()> {
    let format: OutputFormat = args.format.parse().map_err(anyhow::Error::msg)?;
    check_binary_target(
        format,
        args.output.is_none() && std::io::stdout().is_terminal(),
    )?;
    if args.live {
        let (schema, batches) = crate::live::query(args.pid, &args.sql)?;
        let mut out = output(args.output.as_deref())?;
        let mut it = batches.into_iter().map(Ok);
        write_result(schema, &mut it, format, &mut out, args.max_rows)?;
        return Ok(());
    }
    let store = open(&args.data, SessionSel::All)?;
    let mut rows = store.stream(&args.sql)?;
    let schema = rows.schema();
    let mut out = output(args.output.as_deref())?;
    write_result(schema, &mut rows, format, &mut out, args.max_rows)?;
    Ok(())
}

/// `scope-agent report`.
pub fn report(args: ReportArgs) -> Result<()> {
    let by: By = args.by.parse().map_err(anyhow::Error::msg)?;
    let sort: SortKey = args.sort.parse().map_err(anyhow::Error::msg)?;
    let store = open(&args.data, SessionSel::Latest)?;
    let r = scope_query::report::report(
        &store,
        &ReportOptions {
            by,
            sort,
            limit: args.limit,
        },
    )?;
    let mut out = output(None)?;
    match args.format.as_str() {
        "text" | "table" => write!(out, "{}", scope_query::report::render(&r, by))?,
        "json" => writeln!(out, "{}", scope_query::report::to_json(&r))?,
        "csv" => write!(out, "{}", scope_query::report::to_csv(&r))?,
        other => anyhow::bail!("unknown format {other:?}: text, csv or json"),
    }
    out.flush()?;
    Ok(())
}

/// `scope-agent analyze`: the findings of one session, ranked; the
/// `findings` table written beside the session's tables (local stores).
pub fn analyze(args: AnalyzeArgs) -> Result<()> {
    use scope_query::analysis::{self, render};
    let format: render::Format = args.format.parse().map_err(anyhow::Error::msg)?;
    let store = open(&args.data, SessionSel::Latest)?;
    let steps = crate::status::Steps::new("analyze");
    let mut a = analysis::analyze_with_status(&store, &|s| steps.step(s))?;
    if !args.no_write {
        steps.step("writing the findings and ast tables");
        match &store.location().local {
            Some(root) => {
                if let Err(e) = analysis::table::write(root, &a.session, &a.findings) {
                    a.notes
                        .push(format!("the findings table was not written: {e:#}"));
                }
                if let Some(map) = &a.ast
                    && let Err(e) = analysis::ast::write_table(map, root, &a.session)
                {
                    a.notes
                        .push(format!("the ast table was not written: {e:#}"));
                }
            }
            None => a.notes.push(format!(
                "the findings table is written only into local stores; {} is not one",
                store.location().display
            )),
        }
    }
    steps.done();
    for q in &args.predict {
        let line = analysis::predict_line(&a, q)?;
        a.predictions.push(line);
    }
    let mut out = output(None)?;
    write!(out, "{}", render::render(&a, format))?;
    out.flush()?;
    Ok(())
}

/// `scope-agent explain`: analyze's findings (computed now, never taken
/// from the model) sent with an aggregate summary to the configured LLM;
/// its answer printed with every claim tied to a finding id. When the
/// provider fails, the findings are printed and the error is the one line.
pub fn explain(args: ExplainArgs) -> Result<()> {
    use scope_query::analysis::{self, render};
    use scope_query::llm::{LlmConfig, PromptOptions, render_checked};
    let store = open(&args.data, SessionSel::Latest)?;
    let steps = crate::status::Steps::new("explain");
    let a = analysis::analyze_with_status(&store, &|s| steps.step(s))?;
    steps.done();
    let known = analysis::function_names(&store)?;
    let mut out = output(None)?;
    let cfg = match LlmConfig::resolve(
        args.provider.as_deref(),
        args.model.as_deref(),
        args.endpoint.as_deref(),
    ) {
        Ok(c) => c,
        Err(e) => {
            // What analyze computed is worth having without the model.
            write!(out, "{}", render::render(&a, render::Format::Text))?;
            out.flush()?;
            return Err(anyhow::anyhow!("{e}"));
        }
    };
    if a.findings.is_empty() {
        write!(out, "{}", render::render(&a, render::Format::Text))?;
        writeln!(out, "nothing to explain: analyze found nothing")?;
        out.flush()?;
        return Ok(());
    }
    let opts = PromptOptions {
        include_args: args.include_args,
        redact: args.redact,
    };
    let target = cfg.target();
    eprintln!(
        "explain: sending {} findings and a summary to {target}",
        a.findings.len()
    );
    let answer = store.block_on(scope_query::llm::explain(
        &cfg,
        &a.findings,
        &a.summary(),
        &opts,
        &known,
    ));
    match answer {
        Ok(c) => {
            for h in &a.header {
                writeln!(out, "{h}")?;
            }
            writeln!(out, "{} explains {} findings:\n", target, a.findings.len())?;
            write!(out, "{}", render_checked(&c))?;
            writeln!(out, "\nfindings (computed by analyze):")?;
            for f in &a.findings {
                writeln!(out, "  {} {} {}: {}", f.id, f.kind, f.function, f.message)?;
            }
            out.flush()?;
            Ok(())
        }
        Err(e) => {
            write!(out, "{}", render::render(&a, render::Format::Text))?;
            out.flush()?;
            Err(anyhow::anyhow!("{e}"))
        }
    }
}

/// `scope-agent tree`.
pub fn tree(args: TreeArgs) -> Result<()> {
    let store = open(&args.data, SessionSel::Latest)?;
    let opts = TreeOptions {
        tid: args.tid,
        max_depth: args.depth,
        min_pct: args.min_pct,
        focus: args.focus,
    };
    let t = scope_query::tree::build(&store, &opts)?;
    let mut out = output(None)?;
    for h in scope_query::report::session_header(&store)? {
        writeln!(out, "{h}")?;
    }
    writeln!(out)?;
    write!(out, "{}", scope_query::tree::render(&t, &opts))?;
    out.flush()?;
    Ok(())
}

/// `scope-agent stack`.
pub fn stack(args: StackArgs) -> Result<()> {
    let at = parse_time(&args.at)?;
    let store = open(&args.data, SessionSel::Latest)?;
    let st = scope_query::travel::stack(&store, args.tid, at)?;
    print!("{}", scope_query::travel::render_stack(&st));
    Ok(())
}

/// `scope-agent timeline`.
pub fn timeline(args: TimelineArgs) -> Result<()> {
    let from = args.from.as_deref().map(parse_time).transpose()?;
    let to = args.to.as_deref().map(parse_time).transpose()?;
    let store = open(&args.data, SessionSel::Latest)?;
    let text = match args.tid {
        Some(tid) if store.selected_sessions().len() == 1 => {
            let tl = scope_query::travel::timeline(&store, tid, from, to, args.limit)?;
            scope_query::travel::render_timeline(&tl, tid)
        }
        tid => {
            let tl = scope_query::travel::merged_timeline(&store, tid, from, to, args.limit)?;
            scope_query::travel::render_merged_timeline(&tl)
        }
    };
    let mut out = output(None)?;
    write!(out, "{text}")?;
    out.flush()?;
    Ok(())
}

/// `scope-agent compact`: progress on stderr, one line per session with its
/// bytes per call before and after, and what retention removed.
pub fn compact(args: CompactArgs) -> Result<()> {
    use scope_query::compact::{CompactOptions, compact};
    let opts = CompactOptions {
        session: args.session,
        row_group_rows: args.row_group_rows.max(1024),
        keep: args.keep,
        max_size: args.max_size,
        memory_limit: args.memory as usize,
        ..CompactOptions::default()
    };
    let report = compact(&args.data, &opts, &mut |msg: &str| {
        eprintln!("scope-agent: {msg}");
    })?;
    for s in &report.sessions {
        let per = |v: Option<f64>| v.map_or("-".to_string(), |b| format!("{b:.2}"));
        println!(
            "compacted {}: {} calls, {} files → {}, {} → {} bytes ({} → {} bytes per call){}",
            s.session_id,
            s.calls,
            s.files_before,
            s.files_after,
            s.bytes_before,
            s.bytes_after,
            per(s.bytes_per_call_before()),
            per(s.bytes_per_call_after()),
            if s.spilled_bytes > 0 {
                format!("; the sort spilled {} bytes", s.spilled_bytes)
            } else {
                String::new()
            }
        );
    }
    for (id, bytes, why) in &report.removed {
        println!(
            "removed {id} ({bytes} bytes): {}",
            if *why == "age" {
                "older than --keep"
            } else {
                "over --max-size"
            }
        );
    }
    for (id, why) in &report.skipped {
        println!("left {id} as it is: {why}");
    }
    if report.sessions.is_empty() && report.removed.is_empty() {
        println!("nothing to compact in {}", args.data.display());
    }
    if let Some(url) = &args.to {
        move_to(&args.data, url, opts.session.as_deref())?;
    }
    Ok(())
}

/// `compact --to URL`: uploads every compacted, finished session (or the
/// one `--session` names) and removes its local files once all are there.
fn move_to(root: &std::path::Path, url: &str, only: Option<&str>) -> Result<()> {
    use scope_query::objstore::{Location, check_access, open_location, runtime, upload_file};
    let Location::Remote(remote) = open_location(url)? else {
        anyhow::bail!("--to {url}: give an object-store URL (s3://BUCKET/PREFIX)");
    };
    let rt = runtime()?;
    rt.block_on(check_access(&remote))
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    // Sessions whose calls are compacted (part-c files) and finished (a
    // sessions row).
    let mut sessions: Vec<String> = Vec::new();
    if let Ok(dirs) = std::fs::read_dir(root.join("sessions")) {
        for d in dirs.flatten() {
            let name = d.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_prefix("session_id=") else {
                continue;
            };
            if only.is_some_and(|o| o != id) {
                continue;
            }
            let calls = root.join("calls").join(&name);
            let compacted = std::fs::read_dir(&calls).is_ok_and(|files| {
                files.flatten().any(|f| {
                    f.file_name()
                        .to_string_lossy()
                        .starts_with(scope_query::compact::COMPACTED_PREFIX)
                })
            });
            if compacted || !calls.exists() {
                sessions.push(id.to_string());
            }
        }
    }
    sessions.sort();
    if sessions.is_empty() {
        println!("no compacted session to move to {url}");
        return Ok(());
    }
    for id in sessions {
        let part = format!("session_id={id}");
        let mut files: Vec<(std::path::PathBuf, String)> = Vec::new();
        for t in std::fs::read_dir(root)?.flatten() {
            let table = t.file_name().to_string_lossy().into_owned();
            if table.starts_with('.') {
                continue;
            }
            let dir = t.path().join(&part);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for f in entries.flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                if name.ends_with(".parquet") && !name.starts_with('.') {
                    files.push((f.path(), format!("{table}/{part}/{name}")));
                }
            }
        }
        // The sessions row last: it says the session's files are complete.
        files.sort_by_key(|(_, rel)| (rel.starts_with("sessions/"), rel.clone()));
        let mut bytes = 0u64;
        for (path, rel) in &files {
            bytes += rt.block_on(upload_file(&remote, path, rel)).map_err(|e| {
                anyhow::anyhow!(
                    "{} (session {id} stays local; run compact --to again)",
                    e.message
                )
            })?;
        }
        for (path, _) in &files {
            std::fs::remove_file(path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
        }
        for t in std::fs::read_dir(root)?.flatten() {
            let _ = std::fs::remove_dir(t.path().join(&part));
        }
        println!(
            "moved {id} to {}: {} files, {bytes} bytes",
            remote.url_of(""),
            files.len()
        );
    }
    Ok(())
}

/// One side of `diff` or `export --diff`: a store (a directory or URL; its
/// latest session), or a session of the `data` store.
fn open_side(arg: &str, data: &str, what: &str, memory: u64) -> Result<Store> {
    let opts = |sessions| OpenOptions {
        sessions,
        memory_limit: Some(memory as usize),
    };
    if arg.contains("://") || std::path::Path::new(arg).is_dir() {
        return Store::open(arg, &opts(SessionSel::Latest))
            .map_err(|e| anyhow::anyhow!("{what} {arg}: {e:#}"));
    }
    Store::open(data, &opts(SessionSel::Id(arg.to_string()))).map_err(|e| {
        anyhow::anyhow!(
            "{what} {arg:?} is neither a store (a directory or URL) nor a session of {data}: {e:#}"
        )
    })
}

/// `scope-agent diff`: whether every `--fail-if` gate held.
pub fn diff(args: DiffArgs) -> Result<bool> {
    use scope_query::diff::{self, DiffOptions, Gate};
    let gates: Vec<Gate> = args
        .fail_if
        .iter()
        .map(|g| g.parse::<Gate>().map_err(anyhow::Error::msg))
        .collect::<Result<_>>()?;
    if !matches!(args.format.as_str(), "text" | "markdown" | "md" | "json") {
        anyhow::bail!("unknown format {:?}: text, markdown or json", args.format);
    }
    let memory = args.memory.unwrap_or(DEFAULT_QUERY_MEMORY);
    let base = open_side(&args.base, &args.store.data, "BASE", memory)?;
    let new = open_side(&args.new, &args.store.data, "NEW", memory)?;
    if base.location().display == new.location().display
        && base.selected_sessions() == new.selected_sessions()
    {
        anyhow::bail!(
            "BASE and NEW are the same session ({}): name two",
            base.selected_sessions().join(", ")
        );
    }
    let opts = DiffOptions {
        min_change: args.min_change,
        ..DiffOptions::default()
    };
    let d = diff::diff(&base, &new, &opts, &gates)?;
    let mut out = output(None)?;
    match args.format.as_str() {
        "json" => write!(out, "{}", diff::render_json(&d))?,
        "markdown" | "md" => write!(out, "{}", diff::render_markdown(&d, args.limit))?,
        _ => write!(out, "{}", diff::render_text(&d, args.limit))?,
    }
    out.flush()?;
    if !d.breaches.is_empty() {
        eprintln!(
            "scope-agent: diff: {} gate{} failed ({})",
            d.breaches.len(),
            if d.breaches.len() == 1 { "" } else { "s" },
            d.breaches
                .iter()
                .map(|b| format!("{}: {}", b.gate, b.function))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    Ok(d.breaches.is_empty())
}
