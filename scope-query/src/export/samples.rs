//! Folded stacks and flame graphs from the `samples` table (on-CPU stacks
//! at 99 Hz), for sessions recorded by `scope-agent plan` (no calls) or to
//! see where CPU went beside the probed calls. Each sample's `frames` (leaf
//! first) becomes one path, root first; a path's weight is its number of
//! samples. A sample without a stack is counted under `[no stack]`.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::{Context as _, Result, bail};
use inferno::flamegraph::{self, Options};

use super::{ExportStats, Format};

/// Writes the session's samples (`tid`: one thread only) as folded stacks
/// or a flame graph.
pub fn export_samples(
    store: &crate::Store,
    format: Format,
    tid: Option<u32>,
    title: &str,
    out: &mut dyn Write,
) -> Result<ExportStats> {
    if !store.has_table("samples") {
        bail!(
            "the session has no samples (recorded with --no-samples, or by a version without them)"
        );
    }
    let filter = tid.map_or(String::new(), |t| format!(" WHERE tid = {t}"));
    let mut folded: BTreeMap<String, u64> = BTreeMap::new();
    let mut threads = std::collections::BTreeSet::new();
    let mut samples = 0u64;
    for b in store.sql(&format!("SELECT tid, frames FROM samples{filter}"))? {
        let tids = crate::cols::i64s(&b, "tid")?;
        let frames = crate::cols::str_lists(&b, "frames")?;
        for i in 0..b.num_rows() {
            threads.insert(tids[i].unwrap_or(0));
            samples += 1;
            let f = frames[i].clone().unwrap_or_default();
            *folded.entry(fold(&f)).or_default() += 1;
        }
    }
    let lines: Vec<String> = folded.iter().map(|(k, n)| format!("{k} {n}")).collect();
    let mut counted = super::CountingWriter {
        inner: out,
        bytes: 0,
    };
    match format {
        Format::Folded => {
            for l in &lines {
                writeln!(counted, "{l}").map_err(super::write_error)?;
            }
        }
        Format::Flamegraph => {
            let mut options = Options::default();
            options.title = title.to_string();
            options.subtitle = Some(format!(
                "{samples} on-CPU samples on {} threads; widths are samples",
                threads.len()
            ));
            options.count_name = "samples".to_owned();
            options.name_type = "Function:".to_owned();
            options.min_width = 0.0;
            if lines.is_empty() {
                bail!("the session's samples table is empty: no flame graph to draw");
            }
            flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), &mut counted)
                .context("cannot write the flame graph")?;
        }
        other => bail!(
            "--from samples writes folded or flamegraph, not {}",
            other.name()
        ),
    }
    counted.flush().map_err(super::write_error)?;
    Ok(ExportStats {
        calls: samples,
        threads: threads.len() as u64,
        bytes: counted.bytes,
        open_calls: 0,
    })
}

/// One sample's frames (leaf first) as a folded path, root first.
fn fold(frames: &[Option<String>]) -> String {
    if frames.is_empty() {
        return "[no stack]".to_string();
    }
    let mut line = String::new();
    for (k, f) in frames.iter().rev().enumerate() {
        if k > 0 {
            line.push(';');
        }
        line.extend(
            f.as_deref()
                .unwrap_or("[unknown]")
                .chars()
                .map(|c| match c {
                    ';' => ':',
                    '\n' | '\r' => ' ',
                    c => c,
                }),
        );
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_first_paths() {
        let f = |v: &[&str]| v.iter().map(|s| Some(s.to_string())).collect::<Vec<_>>();
        assert_eq!(fold(&f(&["leaf", "mid", "main"])), "main;mid;leaf");
        assert_eq!(fold(&f(&["a;b"])), "a:b");
        assert_eq!(fold(&[]), "[no stack]");
        assert_eq!(fold(&[None, Some("main".into())]), "main;[unknown]");
    }
}
