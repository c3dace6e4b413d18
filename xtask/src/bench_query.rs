//! The query benchmark of `cargo xtask bench` (alone:
//! `SCOPE_BENCH_ONLY=query`): scope's reading commands against DuckDB on one
//! generated store, side by side in one run.
//!
//! The store (100 M calls by default; `SCOPE_BENCH_QUERY_CALLS=10M` for a
//! quick run) is written by `scope-agent/examples/gen_store.rs` through the
//! agent's own `ParquetStore`, kept under `target/bench-query/` and reused
//! while its size and the generator's source are unchanged.
//!
//! Four questions: `report`, the top 20 functions by self time, one
//! function's latency histogram (log2 buckets) and `stack --at`. Each is
//! timed three ways against the same SQL in DuckDB (Python's `duckdb`):
//!
//! - query only: scope's engine in process (`examples/query_time.rs`:
//!   the store opened once, then the query run and collected, median of 5)
//!   vs DuckDB's `execute().fetchall()` after its views are made (median
//!   of 5);
//! - process: `scope-agent query --format csv SQL` vs `python3` importing
//!   duckdb, making the views and running the query (wall clock, median of
//!   3, interleaved);
//! - the command as a user runs it (`scope-agent report`, `report --sort
//!   self -n 20`, `stack --tid T --at NS`) vs the DuckDB process of the
//!   command's main SQL (the command also reads the session header,
//!   totals and losses, and `stack` checks the thread).
//!
//! The rows both engines return are compared, every column (report's
//! percentiles come from exact histogram buckets), and `stack` must print the generator's known depth: a bench
//! that answers wrongly fails rather than reports a time. Then bytes per
//! call of the store, and peak RSS (wait4's `ru_maxrss`) of `scope-agent
//! export` as perfetto and folded over the whole session, output counted
//! through a pipe.

use std::fmt::Write as _;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::process::{cargo, command, describe, output, run as run_cmd, step, target_dir};

/// Store size in calls (`10M`, `100000000`, `500K`).
const CALLS_ENV: &str = "SCOPE_BENCH_QUERY_CALLS";
const DEFAULT_CALLS: u64 = 100_000_000;

/// Around the query section of BENCHMARKS.md, so it can be rewritten alone.
pub const BEGIN: &str =
    "<!-- query: `cargo xtask bench` writes this (alone: SCOPE_BENCH_ONLY=query) -->\n";
pub const END: &str = "<!-- end of query -->\n";

/// Repetitions inside one process (query only) and of whole processes.
const REPS_IN_PROCESS: usize = 5;
const REPS_PROCESS: usize = 3;

/// The DuckDB side: `python3 -c SCRIPT STORE REPS MODE SQL...`. MODE
/// `time` prints `open_s` and one `query i rows n best_s median_s` line per
/// SQL (like `query_time`); `csv` runs the first SQL once and prints its
/// rows as CSV with a header.
const DUCK_SCRIPT: &str = r#"
import csv, statistics, sys, time
t0 = time.perf_counter()
import duckdb
store, reps, mode, sqls = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
con = duckdb.connect()
# The progress bar goes to standard output on long queries.
con.execute("SET enable_progress_bar = false")
for t in ("calls", "functions", "totals", "sessions", "losses"):
    con.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet('{store}/{t}/**/*.parquet', hive_partitioning = true)")
if mode == "csv":
    cur = con.execute(sqls[0])
    rows = cur.fetchall()
    w = csv.writer(sys.stdout, lineterminator="\n")
    w.writerow([d[0] for d in cur.description])
    w.writerows(["" if v is None else v for v in r] for r in rows)
    sys.exit(0)
print(f"open_s {time.perf_counter() - t0:.4f}")
for i, sql in enumerate(sqls):
    times = []
    for _ in range(max(reps, 1)):
        t = time.perf_counter()
        rows = con.execute(sql).fetchall()
        times.append(time.perf_counter() - t)
    times.sort()
    print(f"query {i} rows {len(rows)} best_s {times[0]:.4f} median_s {times[len(times) // 2]:.4f}")
"#;

/// What the generator wrote, from its JSON line (kept next to the store).
#[derive(Clone, Debug)]
struct Generated {
    session_id: String,
    calls: u64,
    bytes: u64,
    files: u64,
    seconds: f64,
    stack_tid: u64,
    stack_at_ns: i64,
    stack_depth: u64,
    hist_function_id: u64,
    /// Whether this run reused a store made earlier.
    reused: bool,
}

/// One question, in both engines' dialects.
struct Question {
    name: &'static str,
    scope_sql: String,
    duck_sql: String,
    /// Columns compared between the engines (by position).
    compare: Vec<usize>,
    /// The user's command (arguments after `scope-agent`), if there is one.
    cli: Option<Vec<String>>,
}

/// Times of one question (seconds).
#[derive(Default, Clone, Debug)]
struct Times {
    scope_query: f64,
    duck_query: f64,
    scope_process: f64,
    duck_process: f64,
    cli: Option<f64>,
    rows: usize,
}

/// Runs the query benchmark; returns the BENCHMARKS.md section (between
/// [`BEGIN`] and [`END`]).
pub fn run(root: &Path) -> Result<String> {
    let started = Instant::now();
    let calls = calls_wanted()?;
    step(
        "build scope-agent, gen_store and query_time (release)",
        || {
            run_cmd(
                cargo()
                    .args([
                        "build",
                        "--release",
                        "-p",
                        "scope-agent",
                        "--bin",
                        "scope-agent",
                        "--example",
                        "gen_store",
                        "--example",
                        "query_time",
                    ])
                    .current_dir(root),
            )
        },
    )?;
    if !crate::setup::python_has_duckdb() {
        println!("scope: installing Python's duckdb (one time)...");
        crate::setup::pip_install_duckdb()?;
    }
    let release = target_dir()?.join("release");
    let work = target_dir()?.join("bench-query");
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    // Copies, so a concurrent build cannot swap the binaries mid-run.
    let agent = work.join("scope-agent");
    let gen_store = work.join("gen_store");
    let query_time = work.join("query_time");
    for (from, to) in [
        (release.join("scope-agent"), &agent),
        (release.join("examples/gen_store"), &gen_store),
        (release.join("examples/query_time"), &query_time),
    ] {
        std::fs::copy(&from, to)
            .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    }
    // The generator and the writer it goes through: a change to either
    // makes a new store (the summaries written at a session's end too).
    let mut generator_source = String::new();
    for file in [
        "scope-agent/examples/gen_store.rs",
        "scope-agent/src/storage/mod.rs",
        "scope-agent/src/storage/overview.rs",
        "scope-agent/src/storage/schema.rs",
    ] {
        generator_source.push_str(
            &std::fs::read_to_string(root.join(file))
                .with_context(|| format!("cannot read {file}"))?,
        );
    }
    let store = work.join(format!("store-{}", short_count(calls)));
    let generated = step(&format!("store of {} calls", short_count(calls)), || {
        ensure_store(&gen_store, &store, calls, fnv(&generator_source))
    })?;
    println!(
        "    {}: {} calls, {} files, {:.2} GB, {:.2} bytes per call{}",
        store.display(),
        generated.calls,
        generated.files,
        generated.bytes as f64 / 1e9,
        dir_bytes(&store.join("calls")) as f64 / generated.calls as f64,
        if generated.reused {
            " (reused)".to_string()
        } else {
            format!(" (generated in {:.0} s)", generated.seconds)
        }
    );
    let duck_version = String::from_utf8_lossy(
        &output(command("python3").args(["-c", "import duckdb; print(duckdb.__version__)"]))?
            .stdout,
    )
    .trim()
    .to_string();

    let questions = questions(&generated);
    let data = store.display().to_string();
    let mut times: Vec<Times> = vec![Times::default(); questions.len()];

    step("answers agree (scope vs DuckDB)", || {
        for (q, t) in questions.iter().zip(times.iter_mut()) {
            t.rows = check_answers(&agent, &data, q)?;
            println!("    {}: {} rows, the same in both", q.name, t.rows);
        }
        check_stack_depth(&agent, &data, &generated)
    })?;

    step("query only (in process, median of 5)", || {
        let scope_sql: Vec<&str> = questions.iter().map(|q| q.scope_sql.as_str()).collect();
        let duck_sql: Vec<&str> = questions.iter().map(|q| q.duck_sql.as_str()).collect();
        // A warm-up of each (the page cache), then the measured runs.
        let _ = in_process_scope(&query_time, &data, 1, &scope_sql)?;
        let _ = in_process_duck(&data, 1, &duck_sql)?;
        let s = in_process_scope(&query_time, &data, REPS_IN_PROCESS, &scope_sql)?;
        let d = in_process_duck(&data, REPS_IN_PROCESS, &duck_sql)?;
        for (i, t) in times.iter_mut().enumerate() {
            t.scope_query = s[i];
            t.duck_query = d[i];
            println!(
                "    {}: scope {:.3} s, DuckDB {:.3} s",
                questions[i].name, s[i], d[i]
            );
        }
        Ok(())
    })?;

    step("whole processes (median of 3, interleaved)", || {
        for (q, t) in questions.iter().zip(times.iter_mut()) {
            let mut s = Vec::new();
            let mut d = Vec::new();
            let mut c = Vec::new();
            for _ in 0..REPS_PROCESS {
                s.push(timed(command(&agent).args([
                    "query",
                    "--data",
                    &data,
                    "--format",
                    "csv",
                    &q.scope_sql,
                ]))?);
                d.push(timed(&mut duck_command(&data, "csv", &[&q.duck_sql]))?);
                if let Some(args) = &q.cli {
                    c.push(timed(command(&agent).args(with_data(args, &data)))?);
                }
            }
            t.scope_process = median(&mut s);
            t.duck_process = median(&mut d);
            t.cli = (!c.is_empty()).then(|| median(&mut c));
            println!(
                "    {}: scope query {:.3} s, DuckDB {:.3} s{}",
                q.name,
                t.scope_process,
                t.duck_process,
                t.cli
                    .map_or(String::new(), |c| format!(", the command {c:.3} s"))
            );
        }
        Ok(())
    })?;

    // `scope-agent compact` (when this build has it) on a copy, so the
    // store as the agent wrote it stays for the next run.
    let compacted = if crate::process::succeeds(command(&agent).args(["compact", "--help"])) {
        Some(step("compact a copy, then the questions again", || {
            compact_and_time(&agent, &query_time, &store, &questions, &generated)
        })?)
    } else {
        println!("    (this scope-agent has no `compact` yet: bytes per call before it only)");
        None
    };

    let exports = step("export memory (peak RSS)", || {
        let mut v = Vec::new();
        // export's default --memory (128M), and a smaller pool, under
        // which the sort spills more.
        for (format, memory) in [
            ("perfetto", None),
            ("folded", None),
            ("perfetto", Some("64M")),
        ] {
            let mut cmd = command(&agent);
            cmd.args(["export", "--data", &data, "--format", format, "-o", "-"]);
            if let Some(m) = memory {
                cmd.args(["--memory", m]);
            }
            let m = peak_rss(&mut cmd)?;
            let format = match memory {
                Some(mem) => format!("{format} --memory {mem}"),
                None => format.to_string(),
            };
            println!(
                "    {format}: peak RSS {:.0} MB, {:.2} GB written, {:.0} s",
                m.max_rss_bytes as f64 / 1e6,
                m.out_bytes as f64 / 1e9,
                m.wall.as_secs_f64()
            );
            v.push((format, m));
        }
        Ok(v)
    })?;

    // `scope-agent analyze` as a user runs it (the findings table not
    // written, so the store stays as generated): median of 3.
    let analyze = if crate::process::succeeds(command(&agent).args(["analyze", "--help"])) {
        Some(step("analyze (median of 3, peak RSS)", || {
            let mut walls = Vec::new();
            let mut rss = 0;
            for _ in 0..3 {
                let m = peak_rss(command(&agent).args([
                    "analyze",
                    "--data",
                    &data,
                    "--no-write",
                    "--format",
                    "json",
                ]))?;
                rss = rss.max(m.max_rss_bytes);
                walls.push(m.wall.as_secs_f64());
            }
            let t = median(&mut walls);
            println!("    analyze: {t:.2} s, peak RSS {:.0} MB", rss as f64 / 1e6);
            Ok((t, rss))
        })?)
    } else {
        None
    };

    // `scope-agent serve`'s first view of the store: what the page asks
    // before it draws the timeline, cold (the server just started).
    let first_view = if crate::process::succeeds(command(&agent).args(["serve", "--help"])) {
        Some(step("serve: the first view (cold, then warm)", || {
            let t = serve_first_view(&agent, &data)?;
            println!(
                "    first view: {:.2} s cold, {:.2} s warm ({})",
                t.0,
                t.1,
                t.2.join(", ")
            );
            Ok(t)
        })?)
    } else {
        None
    };

    let section = render(
        &questions,
        &times,
        &generated,
        &store,
        &exports,
        first_view.as_ref(),
        analyze,
        compacted.as_ref(),
        &duck_version,
        started.elapsed(),
    );
    Ok(section)
}

/// The store after `scope-agent compact`, and the questions on it.
struct Compacted {
    seconds: f64,
    files: usize,
    calls_bytes: u64,
    /// Query-only medians, (scope, DuckDB), per question.
    query: Vec<(f64, f64)>,
    /// `scope-agent stack` as the user runs it, median of 3.
    stack_cli: f64,
}

fn compact_and_time(
    agent: &Path,
    query_time: &Path,
    store: &Path,
    questions: &[Question],
    g: &Generated,
) -> Result<Compacted> {
    let copy = store.with_file_name(format!(
        "{}-compacted",
        store
            .file_name()
            .map_or("store".into(), |n| n.to_string_lossy())
    ));
    if copy.exists() {
        std::fs::remove_dir_all(&copy)
            .with_context(|| format!("cannot remove {}", copy.display()))?;
    }
    run_cmd(command("cp").arg("-a").arg(store).arg(&copy))?;
    let data = copy.display().to_string();
    let seconds = timed(command(agent).args(["compact", "--data", &data]))?;
    let calls_dir = copy.join("calls");
    let files = walk_files(&calls_dir)
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .count();
    for q in questions {
        check_answers(agent, &data, q)?;
    }
    check_stack_depth(agent, &data, g)?;
    let scope_sql: Vec<&str> = questions.iter().map(|q| q.scope_sql.as_str()).collect();
    let duck_sql: Vec<&str> = questions.iter().map(|q| q.duck_sql.as_str()).collect();
    let _ = in_process_scope(query_time, &data, 1, &scope_sql)?;
    let _ = in_process_duck(&data, 1, &duck_sql)?;
    let s = in_process_scope(query_time, &data, REPS_IN_PROCESS, &scope_sql)?;
    let d = in_process_duck(&data, REPS_IN_PROCESS, &duck_sql)?;
    let stack_args = questions
        .iter()
        .find(|q| q.name == "stack --at")
        .and_then(|q| q.cli.clone())
        .context("no stack question")?;
    let mut c = Vec::new();
    for _ in 0..REPS_PROCESS {
        c.push(timed(command(agent).args(with_data(&stack_args, &data)))?);
    }
    for (q, (a, b)) in questions.iter().zip(s.iter().zip(&d)) {
        println!(
            "    {} (compacted): scope {a:.3} s, DuckDB {b:.3} s",
            q.name
        );
    }
    Ok(Compacted {
        seconds,
        files,
        calls_bytes: dir_bytes(&calls_dir),
        query: s.into_iter().zip(d).collect(),
        stack_cli: median(&mut c),
    })
}

/// Every file under `dir`.
fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(_) => out.push(e.path()),
                Err(_) => {}
            }
        }
    }
    out
}

/// Replaces the query section of BENCHMARKS.md (or appends it when the
/// file has none yet).
pub fn write_section(path: &Path, section: &str) -> Result<()> {
    write_section_between(path, section, BEGIN, END)
}

/// Replaces the part of `path` from `begin` to `end` (both included) with
/// `section`, or appends it when there is none.
pub fn write_section_between(path: &Path, section: &str, begin: &str, end: &str) -> Result<()> {
    let old =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let text = match (old.find(begin), old.find(end)) {
        (Some(b), Some(e)) if b < e => {
            format!("{}{section}{}", &old[..b], &old[e + end.len()..])
        }
        _ => format!(
            "{}\n{section}",
            old.trim_end_matches('\n').to_string() + "\n"
        ),
    };
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

fn calls_wanted() -> Result<u64> {
    let Ok(v) = std::env::var(CALLS_ENV) else {
        return Ok(DEFAULT_CALLS);
    };
    let t = v.trim().replace('_', "");
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'M' | 'm')) => (&t[..i], 1_000_000),
        Some((i, 'K' | 'k')) => (&t[..i], 1_000),
        _ => (t.as_str(), 1),
    };
    let n: u64 = num
        .parse()
        .ok()
        .filter(|&n: &u64| n > 0)
        .with_context(|| format!("{CALLS_ENV}={v}: a count of calls, like 100000000 or 10M"))?;
    Ok(n * mult)
}

/// `100m`, `10m`, `500k`, `1234`.
fn short_count(n: u64) -> String {
    if n.is_multiple_of(1_000_000) {
        format!("{}m", n / 1_000_000)
    } else if n.is_multiple_of(1_000) {
        format!("{}k", n / 1_000)
    } else {
        n.to_string()
    }
}

/// FNV-1a of the generator's source: a changed generator makes a new store.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The store at `dir`, made by `gen_store` unless a complete one with the
/// same parameters is there (its JSON is written last, so a store whose
/// generation was interrupted is made again).
fn ensure_store(gen_store: &Path, dir: &Path, calls: u64, source_hash: u64) -> Result<Generated> {
    let meta = dir.with_extension("json");
    let params = format!("calls={calls} seed=1 generator={source_hash:016x}");
    if let Ok(text) = std::fs::read_to_string(&meta)
        && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
        && v["params"].as_str() == Some(params.as_str())
        && dir.is_dir()
    {
        let mut g = parse_generated(&v)?;
        g.reused = true;
        return Ok(g);
    }
    let _ = std::fs::remove_file(&meta);
    if dir.exists() {
        std::fs::remove_dir_all(dir)
            .with_context(|| format!("cannot remove the old store {}", dir.display()))?;
    }
    let out = output(command(gen_store).arg(dir).arg(calls.to_string()).arg("1"))?;
    let mut v: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "gen_store printed something other than JSON: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    v["params"] = serde_json::Value::String(params);
    std::fs::write(&meta, v.to_string())
        .with_context(|| format!("cannot write {}", meta.display()))?;
    parse_generated(&v)
}

fn parse_generated(v: &serde_json::Value) -> Result<Generated> {
    let u = |k: &str| {
        v[k].as_u64()
            .with_context(|| format!("gen_store's JSON has no {k}"))
    };
    Ok(Generated {
        session_id: v["session_id"]
            .as_str()
            .context("gen_store's JSON has no session_id")?
            .to_string(),
        calls: u("calls")?,
        bytes: u("bytes")?,
        files: u("files")?,
        seconds: v["seconds"].as_f64().unwrap_or(0.0),
        stack_tid: u("stack_tid")?,
        stack_at_ns: v["stack_at_ns"]
            .as_i64()
            .context("gen_store's JSON has no stack_at_ns")?,
        stack_depth: u("stack_depth")?,
        hist_function_id: u("hist_function_id")?,
        reused: false,
    })
}

/// The four questions, with the SQL the commands run (`scope-query`'s
/// `report.rs` and `travel.rs`) and DuckDB's spelling of it.
fn questions(g: &Generated) -> Vec<Question> {
    // What `report` answers, spelled in SQL (the command fills the same
    // histograms in Rust from one scan, `report.rs`): sums, maximum and a
    // log2 latency histogram of 128 buckets per doubling per function;
    // names are joined afterwards.
    let report = "SELECT c.function_id AS fid, CAST(NULL AS BIGINT) AS k2, \
           CASE WHEN c.duration_ns > 0 THEN CAST(floor(log2(CAST(c.duration_ns AS DOUBLE)) * 128) AS BIGINT) \
           WHEN c.duration_ns = 0 THEN -1 END AS b, count(*) AS n, \
           sum(c.duration_ns) AS total_ns, sum(c.self_ns) AS self_ns, max(c.duration_ns) AS max_ns \
         FROM calls c GROUP BY 1, 2, 3"
        .to_string();
    let top = "SELECT min(f.name) AS name, count(*) AS calls, sum(c.self_ns) AS self_ns \
        FROM calls c JOIN functions f ON f.session_id = c.session_id AND f.function_id = c.function_id \
        GROUP BY c.function_id ORDER BY self_ns DESC LIMIT 20"
        .to_string();
    let hist = format!(
        "SELECT CAST(floor(log2(duration_ns)) AS BIGINT) AS log2_ns, count(*) AS calls \
         FROM calls WHERE function_id = {} \
         GROUP BY CAST(floor(log2(duration_ns)) AS BIGINT) ORDER BY log2_ns",
        g.hist_function_id
    );
    let (tid, at) = (g.stack_tid, g.stack_at_ns);
    let stack = format!(
        "SELECT c.call_id, c.depth, c.start_ns, c.duration_ns, c.self_ns, f.name, f.file, f.line, \
           c.args, c.ret, c.arg_strings, f.param_names \
         FROM calls c JOIN functions f ON f.session_id = c.session_id AND f.function_id = c.function_id \
         WHERE c.tid = {tid} AND c.start_ns <= {at} AND (c.duration_ns IS NULL OR c.start_ns + c.duration_ns > {at}) \
           AND c.session_id = '{}' ORDER BY c.depth DESC, c.start_ns DESC",
        g.session_id
    );
    let data = |args: &[&str]| -> Vec<String> { args.iter().map(|s| s.to_string()).collect() };
    vec![
        Question {
            name: "report",
            scope_sql: report.clone(),
            duck_sql: report,
            compare: vec![0, 1, 2, 3, 4, 5, 6],
            cli: Some(data(&["report"])),
        },
        Question {
            name: "top 20 by self time",
            scope_sql: top.clone(),
            duck_sql: top,
            compare: vec![0, 1, 2],
            cli: Some(data(&["report", "--sort", "self", "-n", "20"])),
        },
        Question {
            name: "latency histogram of one function",
            scope_sql: hist.clone(),
            duck_sql: hist,
            compare: vec![0, 1],
            cli: None,
        },
        Question {
            name: "stack --at",
            scope_sql: stack.clone(),
            duck_sql: stack,
            compare: vec![0, 1, 2, 3, 4, 5, 6, 7],
            cli: Some(vec![
                "stack".to_string(),
                "--tid".to_string(),
                tid.to_string(),
                "--at".to_string(),
                at.to_string(),
            ]),
        },
    ]
}

/// Adds `--data` after the subcommand of a question's command line.
fn with_data(args: &[String], data: &str) -> Vec<String> {
    let mut v = args.to_vec();
    v.splice(1..1, ["--data".to_string(), data.to_string()]);
    v
}

fn duck_command(data: &str, mode: &str, sqls: &[&str]) -> Command {
    let mut cmd = command("python3");
    cmd.args(["-c", DUCK_SCRIPT, data, "1", mode]).args(sqls);
    cmd
}

/// Runs the question in both engines and compares the rows (the compared
/// columns, as numbers where they parse, rows sorted). Returns the count.
fn check_answers(agent: &Path, data: &str, q: &Question) -> Result<usize> {
    let scope =
        output(command(agent).args(["query", "--data", data, "--format", "csv", &q.scope_sql]))?;
    let duck = output(&mut duck_command(data, "csv", &[&q.duck_sql]))?;
    let rows = |text: &[u8]| -> Vec<Vec<String>> {
        let mut v: Vec<Vec<String>> = String::from_utf8_lossy(text)
            .lines()
            .skip(1)
            .map(|l| {
                let cells = split_csv(l);
                q.compare
                    .iter()
                    .map(|&i| normalize(cells.get(i).map_or("", String::as_str)))
                    .collect()
            })
            .collect();
        v.sort();
        v
    };
    let (s, d) = (rows(&scope.stdout), rows(&duck.stdout));
    if s != d {
        let first = s
            .iter()
            .zip(&d)
            .find(|(a, b)| a != b)
            .map_or(String::new(), |(a, b)| {
                format!(": first difference scope {a:?} vs DuckDB {b:?}")
            });
        bail!(
            "{}: scope returned {} rows and DuckDB {}, not the same{first}",
            q.name,
            s.len(),
            d.len()
        );
    }
    if s.is_empty() {
        bail!(
            "{}: no rows in either engine (the question is wrong)",
            q.name
        );
    }
    Ok(s.len())
}

/// `stack` as the user runs it must show the generator's probe call and
/// every caller: depth + 1 frames, `#0` to `#depth`.
fn check_stack_depth(agent: &Path, data: &str, g: &Generated) -> Result<()> {
    let out = output(command(agent).args([
        "stack",
        "--data",
        data,
        "--tid",
        &g.stack_tid.to_string(),
        "--at",
        &g.stack_at_ns.to_string(),
    ]))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let frames = text
        .lines()
        .filter(|l| l.trim_start().starts_with('#'))
        .count() as u64;
    if frames != g.stack_depth + 1 {
        bail!(
            "stack --tid {} --at {} printed {frames} frames, but the generator put a call at depth {} there:\n{text}",
            g.stack_tid,
            g.stack_at_ns,
            g.stack_depth
        );
    }
    println!("    stack: {frames} frames, as generated");
    Ok(())
}

/// Splits one CSV line (quoted cells may hold commas and doubled quotes).
fn split_csv(line: &str) -> Vec<String> {
    let mut cells = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(ch) = chars.next() {
        match (ch, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => cells.push(std::mem::take(&mut cur)),
            _ => cur.push(ch),
        }
    }
    cells.push(cur);
    cells
}

/// A number as a canonical number (`10.0` and `10` agree), anything else as is.
fn normalize(cell: &str) -> String {
    match cell.parse::<f64>() {
        Ok(v) if v.fract() == 0.0 && v.abs() < 9.0e15 => format!("{}", v as i64),
        Ok(v) => format!("{v}"),
        Err(_) => cell.to_string(),
    }
}

/// Parses `query i rows n best_s b median_s m` lines: the medians by index.
fn parse_query_lines(text: &str, n: usize) -> Result<Vec<f64>> {
    let mut v = vec![f64::NAN; n];
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if let ["query", i, "rows", _, "best_s", _, "median_s", m] = f.as_slice() {
            let i: usize = i.parse()?;
            if i < n {
                v[i] = m.parse()?;
            }
        }
    }
    if v.iter().any(|x| x.is_nan()) {
        bail!("a query time is missing from:\n{text}");
    }
    Ok(v)
}

fn in_process_scope(query_time: &Path, data: &str, reps: usize, sqls: &[&str]) -> Result<Vec<f64>> {
    let out = output(
        command(query_time)
            .arg(data)
            .arg(reps.to_string())
            .args(sqls),
    )?;
    parse_query_lines(&String::from_utf8_lossy(&out.stdout), sqls.len())
}

fn in_process_duck(data: &str, reps: usize, sqls: &[&str]) -> Result<Vec<f64>> {
    let mut cmd = command("python3");
    cmd.args(["-c", DUCK_SCRIPT, data, &reps.to_string(), "time"])
        .args(sqls);
    let out = output(&mut cmd)?;
    parse_query_lines(&String::from_utf8_lossy(&out.stdout), sqls.len())
}

/// Wall time of a whole process (its output discarded); an error unless it
/// exits 0.
fn timed(cmd: &mut Command) -> Result<f64> {
    let t = Instant::now();
    let out = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("cannot run `{}`", describe(cmd)))?;
    let secs = t.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "`{}` failed ({}):\n{}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    Ok(secs)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Peak memory of one process and what it wrote.
struct Rss {
    max_rss_bytes: u64,
    out_bytes: u64,
    wall: Duration,
}

/// Runs `cmd` with its standard output counted through a pipe, and reads
/// its peak resident set from `wait4`.
fn peak_rss(cmd: &mut Command) -> Result<Rss> {
    let t = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run `{}`", describe(cmd)))?;
    let mut stdout = child.stdout.take().context("no stdout pipe")?;
    let mut stderr = child.stderr.take().context("no stderr pipe")?;
    let counter = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        while let Ok(k) = stdout.read(&mut buf) {
            if k == 0 {
                break;
            }
            n += k as u64;
        }
        n
    });
    let errs = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our child, not yet waited for; both pointers are
    // valid for the call.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if r != pid {
        bail!(
            "wait4 on `{}`: {}",
            describe(cmd),
            std::io::Error::last_os_error()
        );
    }
    let out_bytes = counter.join().unwrap_or(0);
    let errs = errs.join().unwrap_or_default();
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!(
            "`{}` failed (status {status}):\n{}",
            describe(cmd),
            errs.trim_end()
        );
    }
    Ok(Rss {
        // ru_maxrss is in KiB on Linux.
        max_rss_bytes: usage.ru_maxrss as u64 * 1024,
        out_bytes,
        wall: t.elapsed(),
    })
}

/// Bytes of the files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let mut n = 0;
    let mut stack: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => n += m.len(),
                Err(_) => {}
            }
        }
    }
    n
}

fn ratio(s: f64, d: f64) -> f64 {
    if d > 0.0 { s / d } else { f64::INFINITY }
}

fn yes(ok: bool) -> &'static str {
    if ok { "yes" } else { "**no**" }
}

/// The BENCHMARKS.md section.
#[expect(
    clippy::too_many_arguments,
    reason = "one call site; each argument is one part of the section"
)]
fn render(
    questions: &[Question],
    times: &[Times],
    g: &Generated,
    store: &Path,
    exports: &[(String, Rss)],
    first_view: Option<&(f64, f64, Vec<String>)>,
    analyze: Option<(f64, u64)>,
    compacted: Option<&Compacted>,
    duck_version: &str,
    took: Duration,
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "## Queries: scope vs DuckDB on {} calls ({})\n",
        group_digits(g.calls),
        crate::bench::today()
    );
    let calls_bytes = dir_bytes(&store.join("calls"));
    let _ = writeln!(
        s,
        "The store: {} calls (8 threads, 300 functions, depth up to 9; \
         `scope-agent/examples/gen_store.rs` through the agent's `ParquetStore`, \
         segments of 1,000,000 rows as the agent writes them), {} files, {:.2} GB \
         ({:.2} bytes per call in `calls`). DuckDB {duck_version} (Python), \
         scope's DataFusion with the CLI's settings; both warm (the store is in \
         the page cache), 2 shared cores. The same SQL in both (for `report`, \
         its question spelled in SQL: sums and a latency histogram of 128 buckets \
         per doubling per function, grouped by bucket; the command itself scans \
         `calls` once and fills the histograms in Rust), and both returned the same rows. `query`: the query alone inside one process (median of 5); \
         `process`: `scope-agent query --format csv` vs `python3` importing \
         duckdb and running it (median of 3); `command`: what the user types, \
         against DuckDB's process of its main SQL.\n",
        group_digits(g.calls),
        g.files,
        g.bytes as f64 / 1e9,
        calls_bytes as f64 / g.calls as f64
    );
    s.push_str("| query | scope (s) | DuckDB (s) | ratio | target met |\n");
    s.push_str("| --- | ---: | ---: | ---: | --- |\n");
    for (q, t) in questions.iter().zip(times) {
        let within = |r: f64| r <= 1.5;
        let r = ratio(t.scope_query, t.duck_query);
        let _ = writeln!(
            s,
            "| {}: query | {:.3} | {:.3} | {r:.2} | ≤ 1.5×: {} |",
            q.name,
            t.scope_query,
            t.duck_query,
            yes(within(r))
        );
        let r = ratio(t.scope_process, t.duck_process);
        let _ = writeln!(
            s,
            "| {}: process | {:.3} | {:.3} | {r:.2} | ≤ 1.5×: {} |",
            q.name,
            t.scope_process,
            t.duck_process,
            yes(within(r))
        );
        if let (Some(c), Some(args)) = (t.cli, &q.cli) {
            let r = ratio(c, t.duck_process);
            let extra = match q.name {
                "report" => format!(", < 5 s: {}", yes(c < 5.0)),
                "stack --at" => format!(", < 100 ms: {}", yes(c < 0.1)),
                _ => String::new(),
            };
            let _ = writeln!(
                s,
                "| `scope-agent {}`: command | {c:.3} | {:.3} | {r:.2} | ≤ 1.5×: {}{extra} |",
                args.join(" "),
                t.duck_process,
                yes(within(r))
            );
        }
    }
    s.push_str("\n| export (whole session, to a pipe) | peak RSS (MB) | output (GB) | time (s) | < 500 MB |\n");
    s.push_str("| --- | ---: | ---: | ---: | --- |\n");
    for (format, m) in exports {
        let _ = writeln!(
            s,
            "| `scope-agent export --format {format} -o -` | {:.0} | {:.2} | {:.0} | {} |",
            m.max_rss_bytes as f64 / 1e6,
            m.out_bytes as f64 / 1e9,
            m.wall.as_secs_f64(),
            yes(m.max_rss_bytes < 500_000_000)
        );
    }
    if let Some((cold, warm, parts)) = first_view {
        let _ = writeln!(
            s,
            "\n| `scope-agent serve`: the first view (the requests the page makes before it draws the timeline of the busiest thread) | cold {cold:.2} s | warm {warm:.2} s | < 2 s: {} |\n| --- | ---: | ---: | --- |\n\nCold, per request: {}.",
            yes(*cold < 2.0),
            parts.join(", ")
        );
    }
    if let Some((t, rss)) = analyze {
        let _ = writeln!(
            s,
            "\n| `scope-agent analyze --no-write` (every finding kind) | {t:.2} s | peak RSS {:.0} MB | < 30 s: {} |\n| --- | ---: | ---: | --- |",
            rss as f64 / 1e6,
            yes(t < 30.0)
        );
    }
    if let Some(c) = compacted {
        let _ = writeln!(
            s,
            "\nAfter `scope-agent compact` ({:.0} s, on a copy): {} files of `calls`, \
             {:.2} bytes per call (before: {:.2}). The questions again, query only:\n",
            c.seconds,
            c.files,
            c.calls_bytes as f64 / g.calls as f64,
            calls_bytes as f64 / g.calls as f64
        );
        s.push_str("| query (compacted store) | scope (s) | DuckDB (s) | ratio | target met |\n");
        s.push_str("| --- | ---: | ---: | ---: | --- |\n");
        for (q, (sc, du)) in questions.iter().zip(&c.query) {
            let r = ratio(*sc, *du);
            let _ = writeln!(
                s,
                "| {}: query | {sc:.3} | {du:.3} | {r:.2} | ≤ 1.5×: {} |",
                q.name,
                yes(r <= 1.5)
            );
        }
        let _ = writeln!(
            s,
            "| `scope-agent stack`: command | {:.3} | | | < 100 ms: {} |",
            c.stack_cli,
            yes(c.stack_cli < 0.1)
        );
    }
    let _ = writeln!(
        s,
        "\nBytes per call in `calls`: {:.2} as the agent writes it (before `compact`). \
         Store {}; this section took {:.0} s.\n",
        calls_bytes as f64 / g.calls as f64,
        if g.reused {
            "reused from an earlier run".to_string()
        } else {
            format!("generated in {:.0} s", g.seconds)
        },
        took.as_secs_f64()
    );
    format!("{BEGIN}{s}{END}")
}

/// `100,000,000`.
fn group_digits(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// `scope-agent serve --data DATA` started, then the page's first view
/// asked of it twice with curl: sessions, threads, findings (the tab's
/// count), and the busiest thread's timeline over the session at 1,400 pixels.
/// Returns (cold seconds, warm seconds, the cold requests' times).
fn serve_first_view(agent: &Path, data: &str) -> Result<(f64, f64, Vec<String>)> {
    let mut child = command(agent)
        .args(["serve", "--data", data])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {} serve", agent.display()))?;
    let result = (|| {
        let mut out = child.stdout.take().context("no stdout")?;
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while out.read(&mut byte)? == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        let line = String::from_utf8_lossy(&line).into_owned();
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://127.0.0.1:"))
            .with_context(|| format!("serve printed no URL: {line}"))?
            .to_string();
        let (base, token) = url.split_once("/?token=").context("no token in the URL")?;
        let get = |path: &str| -> Result<(f64, serde_json::Value)> {
            let t = Instant::now();
            let o = output(command("curl").args([
                "-s",
                "-f",
                "-H",
                &format!("X-Scope-Token: {token}"),
                &format!("{base}{path}"),
            ]))?;
            let v =
                serde_json::from_slice(&o.stdout).with_context(|| format!("{path}: not JSON"))?;
            Ok((t.elapsed().as_secs_f64(), v))
        };
        let view = || -> Result<(f64, Vec<String>)> {
            let mut parts = Vec::new();
            let mut total = 0.0;
            let (t, sessions) = get("/api/sessions")?;
            total += t;
            parts.push(format!("sessions {t:.2} s"));
            let session = sessions["sessions"][0]["session_id"]
                .as_str()
                .context("no session")?
                .to_string();
            let (t, threads) = get(&format!("/api/threads?session={session}"))?;
            total += t;
            parts.push(format!("threads {t:.2} s"));
            let busiest = threads["threads"]
                .as_array()
                .and_then(|a| a.iter().max_by_key(|x| x["calls"].as_i64().unwrap_or(0)))
                .context("no thread")?;
            let tid = busiest["tid"].as_i64().unwrap_or(0);
            let (t, _) = get(&format!("/api/findings?session={session}"))?;
            total += t;
            parts.push(format!("findings {t:.2} s"));
            let (t, tl) = get(&format!(
                "/api/timeline?session={session}&tid={tid}&width=1400"
            ))?;
            total += t;
            parts.push(format!(
                "timeline {t:.2} s ({} bars)",
                tl["bars"].as_array().map_or(0, Vec::len)
            ));
            Ok((total, parts))
        };
        let (cold, parts) = view()?;
        let (warm, _) = view()?;
        Ok((cold, warm, parts))
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}
