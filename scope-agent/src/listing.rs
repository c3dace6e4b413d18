//! `scope-agent functions`: what a pattern resolves to, without probing.
//! Uses the same planner as `record`/`attach`, so what it lists is exactly
//! what they would probe.

use std::io::Write as _;
use std::path::Path;

use anyhow::Result;

use crate::probe::plan::{ModuleCandidate, build_plan, short_name, skipped_total};
use crate::symbols::pattern::Pattern;
use crate::target::{program_modules, running_modules};

pub enum Source<'a> {
    Binary(&'a Path),
    Pid(u32),
}

pub fn list_functions(source: Source<'_>, pattern: Option<Pattern>, limit: usize) -> Result<()> {
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
    let plan = build_plan(&candidates, std::slice::from_ref(&pattern), usize::MAX)?;

    let mut rows: Vec<[String; 5]> = Vec::new();
    for (m, f) in plan.functions() {
        let loc = match (&f.symbol.file, f.symbol.line) {
            (Some(file), Some(line)) => format!("{file}:{line}"),
            (Some(file), None) => file.clone(),
            _ => "-".into(),
        };
        rows.push([
            f.symbol.name.clone(),
            short_name(&m.candidate.display_path),
            format!("{:#x}", f.symbol.address),
            f.symbol.size.to_string(),
            loc,
        ]);
    }
    let total = rows.len();
    if limit > 0 {
        rows.truncate(limit);
    }
    let header = ["FUNCTION", "MODULE", "ADDRESS", "SIZE", "FILE:LINE"];
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count()).min(60);
        }
    }
    let mut out = std::io::stdout().lock();
    let line = |out: &mut std::io::StdoutLock<'_>, cells: [&str; 5]| {
        writeln!(
            out,
            "{:<w0$}  {:<w1$}  {:>w2$}  {:>w3$}  {}",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            cells[4],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3]
        )
    };
    line(&mut out, header)?;
    for r in &rows {
        line(&mut out, [&r[0], &r[1], &r[2], &r[3], &r[4]])?;
    }
    out.flush()?;
    drop(out);
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
