//! Folded stacks (Brendan Gregg's `stackcollapse` output): one line per
//! distinct stack path, `root;caller;callee N`, where N is the paths' self
//! time in ns (so a flame graph's widths are times, and a frame's width
//! is its total time). Function names without module; a `;` in a name
//! becomes `:` and a line break a space, as the format has no escaping.
//! Paths whose self time is 0 are left out (they add nothing to a graph).
//! Lines are sorted, so equal stores give equal files.

use std::io::Write;

use anyhow::Result;
use arrow_array::RecordBatch;

use super::paths::Paths;
use super::stack::Walked;
use super::{ExportMeta, function_name, write_error};

/// Writes the folded lines of `batches` to `out`.
pub(super) fn write(
    batches: &mut dyn Iterator<Item = Result<RecordBatch>>,
    meta: &ExportMeta,
    out: &mut dyn Write,
) -> Result<Walked> {
    let (paths, walked) = Paths::collect(batches, meta)?;
    for line in lines(&paths, meta) {
        writeln!(out, "{line}").map_err(write_error)?;
    }
    Ok(walked)
}

/// The folded lines of `paths`, sorted.
pub(super) fn lines(paths: &Paths, meta: &ExportMeta) -> Vec<String> {
    let mut stack = Vec::new();
    let mut lines = Vec::new();
    for (i, node) in paths.nodes.iter().enumerate() {
        if node.self_ns == 0 {
            continue;
        }
        paths.stack(i as u32, &mut stack);
        let mut line = String::new();
        for (k, function_id) in stack.iter().enumerate() {
            if k > 0 {
                line.push(';');
            }
            line.extend(function_name(meta, *function_id).chars().map(|c| match c {
                ';' => ':',
                '\n' | '\r' => ' ',
                c => c,
            }));
        }
        line.push(' ');
        line.push_str(&node.self_ns.to_string());
        lines.push(line);
    }
    lines.sort_unstable();
    lines
}
