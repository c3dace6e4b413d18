//! An SVG flame graph of the folded stacks (see [`super::folded`]), drawn
//! by inferno: widths are self time in ns summed up the stacks, so a
//! frame's width is its total time.

use std::io::Write;

use anyhow::{Context, Result};
use arrow_array::RecordBatch;
use inferno::flamegraph::{self, Options};

use super::paths::Paths;
use super::stack::Walked;
use super::{ExportMeta, folded};

/// Writes the flame graph of `batches` to `out`.
pub(super) fn write(
    batches: &mut dyn Iterator<Item = Result<RecordBatch>>,
    meta: &ExportMeta,
    out: &mut dyn Write,
) -> Result<Walked> {
    let (paths, walked) = Paths::collect(batches, meta)?;
    let lines = folded::lines(&paths, meta);
    let mut options = Options::default();
    options.title = format!("{} ({})", meta.command, meta.session_id);
    options.subtitle = Some(format!(
        "{} calls on {} threads; widths are {} in ns",
        walked.calls,
        walked.threads,
        if paths.weighted {
            "off-CPU time (blocked or waiting for a CPU)"
        } else {
            "wall time"
        }
    ));
    options.count_name = "ns".to_owned();
    options.name_type = "Function:".to_owned();
    // Every path is drawn, however narrow: the graph is lossless (the
    // paths are few; inferno's default leaves out frames under 0.1 px).
    options.min_width = 0.0;
    if lines.is_empty() {
        // inferno refuses an empty graph ("No stack counts found"); an
        // empty session still gets a valid SVG.
        write!(
            out,
            r#"<?xml version="1.0" standalone="no"?><svg version="1.1" width="1200" height="60" xmlns="http://www.w3.org/2000/svg"><text x="600" y="30" text-anchor="middle">{}: no calls</text></svg>"#,
            xml_escape(&options.title)
        )
        .context("cannot write the flame graph")?;
        return Ok(walked);
    }
    flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), out)
        .context("cannot write the flame graph")?;
    Ok(walked)
}

/// `s` with XML's special characters escaped.
fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
