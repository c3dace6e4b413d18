//! `scope-agent functions`: what a pattern resolves to, without probing.
//! Uses the same planner as `record`/`attach`, so what it lists is exactly
//! what they would probe. `--long` adds what DWARF says about each function;
//! `--inlined` lists inlined instances instead.

use std::io::Write as _;
use std::path::Path;

use anyhow::{Result, bail};

use crate::probe::plan::{ModuleCandidate, build_plan, short_name, skipped_total};
use crate::symbols::load_module;
use crate::symbols::pattern::Pattern;
use crate::target::{program_modules, running_modules};

pub enum Source<'a> {
    Binary(&'a Path),
    Pid(u32),
}

/// Which table to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// FUNCTION MODULE ADDRESS SIZE FILE:LINE
    Short,
    /// The short columns, then LANG INLINED BUILD-ID SIGNATURE.
    Long,
    /// Inlined instances: FUNCTION INLINED-INTO MODULE ADDRESS CALL-SITE.
    Inlined,
}

pub fn list_functions(
    source: Source<'_>,
    pattern: Option<Pattern>,
    limit: usize,
    view: View,
) -> Result<()> {
    let candidates: Vec<ModuleCandidate> = match source {
        Source::Pid(pid) => running_modules(pid)?,
        Source::Binary(path) => {
            if pattern.as_ref().is_some_and(|p| p.module.is_some()) {
                program_modules(path)
            } else {
                program_modules(path).into_iter().take(1).collect()
            }
        }
    };
    let pattern = match pattern {
        Some(p) => p,
        None => "*".parse()?,
    };
    if view == View::Inlined {
        return list_inlined(&candidates, &pattern, limit);
    }
    let plan = build_plan(&candidates, std::slice::from_ref(&pattern), usize::MAX)?;
    for w in &plan.warnings {
        eprintln!("scope: warning: {w}");
    }

    let mut rows: Vec<Vec<String>> = Vec::new();
    for (m, f) in plan.functions() {
        let s = &f.symbol;
        let mut row = vec![
            s.name.clone(),
            short_name(&m.candidate.display_path),
            format!("{:#x}", s.address),
            s.size.to_string(),
            location(s.file.as_deref(), s.line),
        ];
        if view == View::Long {
            row.push(s.language.unwrap_or("-").to_string());
            row.push(s.inlined_count.to_string());
            row.push(m.build_id.clone().unwrap_or_else(|| "-".into()));
            row.push(signature(s));
        }
        rows.push(row);
    }
    let total = rows.len();
    if limit > 0 {
        rows.truncate(limit);
    }
    let mut header = vec!["FUNCTION", "MODULE", "ADDRESS", "SIZE", "FILE:LINE"];
    if view == View::Long {
        header.extend(["LANG", "INLINED", "BUILD-ID", "SIGNATURE"]);
    }
    print_table(&header, &rows, &[2, 3, 6])?;
    let skipped = skipped_total(&plan.skipped);
    eprintln!(
        "{total} function{} matched '{}'{}{}",
        if total == 1 { "" } else { "s" },
        pattern.raw,
        if limit > 0 && total > limit {
            format!(" ({limit} shown)")
        } else {
            String::new()
        },
        if skipped > 0 {
            format!(
                "; {skipped} symbols not probeable ({} size 0, {} aliases, {} PLT/imports, {} not executable)",
                plan.skipped.zero_size,
                plan.skipped.duplicate_address,
                plan.skipped.plt_or_import,
                plan.skipped.not_executable
            )
        } else {
            String::new()
        }
    );
    for m in &plan.modules {
        if !m.has_debug_info {
            eprintln!(
                "{}: no DWARF debug info (file:line unknown)",
                m.candidate.display_path.display()
            );
        }
    }
    Ok(())
}

/// `functions --usdt`: the USDT probes of the target's modules (a BINARY's
/// libraries too), those `pattern` matches when given.
pub fn list_usdt(
    source: Source<'_>,
    pattern: Option<crate::probe::usdt::UsdtPattern>,
) -> Result<()> {
    let candidates: Vec<ModuleCandidate> = match source {
        Source::Pid(pid) => running_modules(pid)?,
        Source::Binary(path) => program_modules(path),
    };
    let pattern = match pattern {
        Some(p) => p,
        None => "*".parse().map_err(anyhow::Error::msg)?,
    };
    let mut rows = Vec::new();
    let mut unreadable = Vec::new();
    for c in &candidates {
        let probes = match crate::symbols::usdt::usdt_probes_of(&c.open_path) {
            Ok(p) => p,
            Err(e) => {
                unreadable.push(e);
                continue;
            }
        };
        for p in probes {
            if !pattern.matches_probe(c, &p) {
                continue;
            }
            rows.push(vec![
                format!("{}:{}", p.provider, p.name),
                short_name(&c.display_path),
                format!("{:#x}", p.address),
                p.semaphore_offset
                    .map_or("-".to_string(), |s| format!("{s:#x}")),
                if p.args_text.is_empty() {
                    "-".to_string()
                } else {
                    p.args_text.clone()
                },
            ]);
        }
    }
    if rows.is_empty() {
        for e in &unreadable {
            eprintln!("scope: warning: {e}");
        }
        bail!(
            "no USDT probe matches '{}' in {} module{} (without a pattern, every probe is listed)",
            pattern.raw,
            candidates.len(),
            if candidates.len() == 1 { "" } else { "s" }
        );
    }
    print_table(
        &["PROBE", "MODULE", "ADDRESS", "SEMAPHORE", "ARGUMENTS"],
        &rows,
        &[2],
    )?;
    eprintln!(
        "{} USDT probe{} matched '{}' (record them with -u PROVIDER:NAME)",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" },
        pattern.raw
    );
    Ok(())
}

/// `file:line`, `file`, or `-`.
fn location(file: Option<&str>, line: Option<u32>) -> String {
    match (file, line) {
        (Some(file), Some(line)) => format!("{file}:{line}"),
        (Some(file), None) => file.to_string(),
        _ => "-".into(),
    }
}

/// `int (int x, const char *s)`: return type and parameters from DWARF;
/// `-` without DWARF.
fn signature(s: &crate::symbols::FunctionSymbol) -> String {
    if s.return_type.is_none() && s.params.is_empty() {
        return "-".into();
    }
    let params: Vec<String> = s
        .params
        .iter()
        .map(|(name, ty)| {
            if name.is_empty() {
                ty.clone()
            } else if ty.ends_with(['*', '&']) {
                format!("{ty}{name}")
            } else {
                format!("{ty} {name}")
            }
        })
        .collect();
    format!(
        "{} ({})",
        s.return_type.as_deref().unwrap_or("?"),
        params.join(", ")
    )
}

/// `functions --inlined`: every inlined instance whose name the pattern
/// matches, in every module the pattern selects.
fn list_inlined(candidates: &[ModuleCandidate], pattern: &Pattern, limit: usize) -> Result<()> {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut searched = Vec::new();
    let mut without_dwarf = Vec::new();
    for c in candidates {
        if !pattern.matches_module(&c.display_path, c.is_main) {
            continue;
        }
        searched.push(c.display_path.display().to_string());
        let symbols = match load_module(&c.open_path, &c.display_path) {
            Ok(s) => s,
            Err(e) if c.is_main || pattern.module.is_some() => return Err(e.into()),
            Err(e) => {
                eprintln!("scope: warning: {e}");
                continue;
            }
        };
        for w in &symbols.warnings {
            eprintln!("scope: warning: {w}");
        }
        if !symbols.has_debug_info {
            without_dwarf.push(c.display_path.display().to_string());
        }
        for i in &symbols.inlined {
            if !pattern.matches_name(&i.name) {
                continue;
            }
            rows.push(vec![
                i.name.clone(),
                i.caller.clone().unwrap_or_else(|| "-".into()),
                short_name(&c.display_path),
                format!("{:#x}", i.address),
                location(i.call_file.as_deref(), i.call_line),
            ]);
        }
    }
    if searched.is_empty() {
        bail!("no module matched '{}'", pattern.raw);
    }
    for m in &without_dwarf {
        eprintln!("{m}: no DWARF debug info: inlined instances unknown");
    }
    if rows.is_empty() {
        bail!(
            "no inlined instances matched '{}' in {}",
            pattern.raw,
            searched.join(", ")
        );
    }
    let total = rows.len();
    if limit > 0 {
        rows.truncate(limit);
    }
    print_table(
        &["FUNCTION", "INLINED-INTO", "MODULE", "ADDRESS", "CALL-SITE"],
        &rows,
        &[3],
    )?;
    eprintln!(
        "{total} inlined instance{} matched '{}'{}",
        if total == 1 { "" } else { "s" },
        pattern.raw,
        if limit > 0 && total > limit {
            format!(" ({limit} shown)")
        } else {
            String::new()
        }
    );
    Ok(())
}

/// Columns separated by two spaces, widths capped at 60; the last column
/// is not padded; `right` columns are right-aligned.
fn print_table(header: &[&str], rows: &[Vec<String>], right: &[usize]) -> Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count()).min(60);
        }
    }
    let last = header.len().saturating_sub(1);
    let mut out = std::io::stdout().lock();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| -> std::io::Result<()> {
        let mut text = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            let w = widths.get(i).copied().unwrap_or(0);
            if i == last {
                text.push_str(cell);
            } else if right.contains(&i) {
                text.push_str(&format!("{cell:>w$}"));
            } else {
                text.push_str(&format!("{cell:<w$}"));
            }
        }
        writeln!(out, "{}", text.trim_end())
    };
    line(&mut header.iter().copied())?;
    for r in rows {
        line(&mut r.iter().map(String::as_str))?;
    }
    out.flush()?;
    Ok(())
}
