//! Analysis over the store: findings computed from the data (never
//! invented), the AST map of the sources (or the binary's control-flow
//! graph), empirical complexity fits and predictions.
//!
//! - [`finding`]: the [`Finding`] every part produces.
//! - [`findings`]: bottlenecks, repeated work, recursion, latency outliers,
//!   bimodal durations, waiting and polling, from one session's calls and
//!   on-CPU samples.
//! - [`table`]: the `findings` table (Parquet, beside the session's other
//!   tables).
//! - [`render`]: the ranked report as text, Markdown or JSON.
//! - [`complexity`]: duration fitted against an argument (O(1)..O(2^n), by
//!   BIC in log space over grouped calls; n must span 100×).
//! - [`predict`]: the time of a call at a given n with a 95% interval; the
//!   probe-overhead arithmetic the governor shares.
//! - [`ast`]: the AST map: loops, call sites and branches per function, from
//!   the sources (tree-sitter) or, without them, from the binary ([`cfg`]).
//!
//! [`analyze`] runs them all on the selected session and ranks the result:
//! `F1` is the most severe finding.

pub mod ast;
pub mod cfg;
pub mod complexity;
pub mod finding;
pub mod findings;
pub mod predict;
pub mod render;
pub mod table;

use anyhow::{Result, bail};

pub use finding::{Evidence, Finding, Kind};

use crate::Store;

/// What `analyze` found in one session.
#[derive(Debug, Default)]
pub struct Analysis {
    pub session: String,
    /// What the session was (the report's header lines).
    pub header: Vec<String>,
    /// Ranked: most severe first, ids `F1`, `F2`, … in that order.
    pub findings: Vec<Finding>,
    /// What could not be computed, and why; losses.
    pub notes: Vec<String>,
    /// Calls and functions recorded, top-level time: the summary an LLM
    /// gets with the findings.
    pub calls: i64,
    pub functions: usize,
    pub root_ns: f64,
    /// The complexity fits (also behind the `complexity` findings), for
    /// `--predict`.
    pub fits: Vec<complexity::ComplexityFit>,
    /// `--predict` answers, one line each.
    pub predictions: Vec<String>,
    /// The AST map of the session's functions (sources, or the binary),
    /// for the `ast` table.
    pub ast: Option<ast::AstMap>,
}

impl Analysis {
    /// Every function named by a finding.
    pub fn functions_named(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .findings
            .iter()
            .flat_map(|f| std::iter::once(f.function.clone()).chain(f.related.clone()))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// The aggregate summary sent with the findings (no arguments, no
    /// strings).
    pub fn summary(&self) -> String {
        format!(
            "{} calls of {} functions; top-level calls took {} in all; {} findings",
            self.calls,
            self.functions,
            crate::time::fmt_ns(self.root_ns),
            self.findings.len()
        )
    }
}

/// Analyzes the store's selected session (exactly one: `--session all` is
/// refused, findings compare functions within a run).
pub fn analyze(store: &Store) -> Result<Analysis> {
    analyze_with_status(store, &|_| {})
}

/// [`analyze`], telling `status` the name of each step as it starts (for
/// a status line: a large store takes seconds per step).
pub fn analyze_with_status(store: &Store, status: &dyn Fn(&str)) -> Result<Analysis> {
    if !store.has_table("calls") || !store.has_table("functions") {
        bail!(
            "{}: no calls or functions table (nothing was recorded here)",
            store.location().display
        );
    }
    let sessions = store.selected_sessions();
    let session = match sessions.as_slice() {
        [one] => one.clone(),
        [] => bail!("{}: no session to analyze", store.location().display),
        many => bail!(
            "analyze looks at one session at a time, and {} are selected: pick one with --session (e.g. --session {})",
            many.len(),
            many[many.len() - 1]
        ),
    };
    let computed = findings::compute(store, status)?;
    status("complexity fits");
    let cx = complexity::complexity_findings(store)?;
    status("the session's header and losses");
    let mut a = Analysis {
        session,
        header: crate::report::session_header(store)?,
        findings: computed.findings,
        notes: computed.notes,
        calls: computed.calls,
        functions: computed.functions,
        root_ns: computed.root_ns,
        fits: cx.fits,
        predictions: Vec::new(),
        ast: None,
    };
    a.findings.extend(cx.findings);
    a.notes.extend(cx.note);
    // The AST map: where a repeated call is made, and inside which loop.
    status("the AST map");
    let sites = ast::function_sites(store)?;
    let map = ast::build(&sites, &ast::AstOptions::default());
    locate_call_sites(&mut a.findings, &map);
    const SHOWN: usize = 5;
    for w in map.warnings.iter().take(SHOWN) {
        a.notes.push(format!("ast: {w}"));
    }
    if map.warnings.len() > SHOWN {
        a.notes.push(format!(
            "ast: {} more warnings (the `ast` table has what could be read)",
            map.warnings.len() - SHOWN
        ));
    }
    a.ast = Some(map);
    status("the session's header and losses");
    a.notes.extend(crate::report::loss_notes(store)?);
    rank(&mut a.findings);
    Ok(a)
}

/// Repeated work: the call site of the child in the parent, from the AST
/// map ("fetch_one is called inside the loop at loader.c:42").
fn locate_call_sites(findings: &mut [Finding], map: &ast::AstMap) {
    for f in findings.iter_mut().filter(|f| f.kind == Kind::RepeatedWork) {
        let Some(parent) = f.related.clone() else {
            continue;
        };
        let Some(site) = map.call_site(&parent, &f.function) else {
            continue;
        };
        let file = map
            .functions
            .iter()
            .find(|a| a.name == parent || ast::short_name(&a.name) == ast::short_name(&parent))
            .and_then(|a| a.file.clone())
            .map(|p| p.rsplit('/').next().unwrap_or(&p).to_string());
        let Some(file) = file else {
            continue;
        };
        if site.line > 0 {
            f.location = Some(format!("{file}:{}", site.line));
        }
        let where_ = match (site.loop_line, site.loop_depth) {
            (Some(l), d) if l > 0 => format!(
                "; it is called inside the {}loop at {file}:{l}",
                if d > 1 { "nested " } else { "" }
            ),
            (Some(_), _) => "; it is called inside a loop".to_string(),
            (None, _) if site.line > 0 => format!("; called at {file}:{}", site.line),
            _ => String::new(),
        };
        f.message.push_str(&where_);
        f.evidence.push(Evidence::new(
            "call_site_loop_depth",
            site.loop_depth as f64,
            "loops",
        ));
    }
}

/// `--predict 'sort_items n=1e6'`: the time of one call from the
/// function's complexity fit, with its 95% interval, as one line.
pub fn predict_line(a: &Analysis, query: &str) -> Result<String> {
    let (function, args) = predict::parse_query(query).map_err(anyhow::Error::msg)?;
    if a.fits.is_empty() {
        bail!(
            "--predict {query:?}: no complexity fit in this session ({})",
            complexity::NEEDS_ARGS
        );
    }
    let (cf, n, p) =
        predict::predict_query(&a.fits, &function, &args).map_err(anyhow::Error::msg)?;
    Ok(format!(
        "predicted: {}({} = {n}) takes {} (95% interval {} .. {}), from its {} fit over n = {}..{} (r² {:.3}){}",
        cf.function,
        cf.param,
        crate::time::fmt_ns(p.ns),
        crate::time::fmt_ns(p.lo),
        crate::time::fmt_ns(p.hi),
        cf.fit.model,
        cf.fit.n_min,
        cf.fit.n_max,
        cf.fit.r2,
        if n > cf.fit.n_max * 10.0 {
            "; n is far beyond the measured range: the interval assumes the model holds there"
        } else {
            ""
        }
    ))
}

/// Every function name of the selected session: an LLM's answer may name
/// these without being flagged.
pub fn function_names(store: &Store) -> Result<Vec<String>> {
    let mut v = Vec::new();
    for b in store.sql("SELECT DISTINCT name FROM functions")? {
        v.extend(crate::cols::strs(&b, "name")?.into_iter().flatten());
    }
    Ok(v)
}

/// Most severe first (ties: more confident, then kind and name, so the
/// order is stable); ids follow the order.
pub fn rank(findings: &mut [Finding]) {
    findings.sort_by(|a, b| {
        b.severity
            .total_cmp(&a.severity)
            .then(b.confidence.total_cmp(&a.confidence))
            .then(a.kind.cmp(&b.kind))
            .then(a.function.cmp(&b.function))
    });
    for (i, f) in findings.iter_mut().enumerate() {
        f.id = format!("F{}", i + 1);
    }
}
