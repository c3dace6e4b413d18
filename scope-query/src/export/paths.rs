//! Calls aggregated by stack path (the functions from the thread's root
//! call down to the call), for the formats that show totals rather than
//! events: folded stacks, the flame graph and pprof. Memory is one node per
//! distinct path, whatever the number of calls.

use anyhow::Result;
use rustc_hash::FxHashMap;

use super::ExportMeta;
use super::columns::{CallColumns, CallRow};
use super::stack::{CallSink, Frame, Walked, walk};

/// No parent: a root call's path node has this parent.
pub(super) const ROOT: u32 = u32::MAX;

/// One distinct stack path.
#[derive(Clone, Copy, Debug)]
pub(super) struct PathNode {
    /// The caller's path, or [`ROOT`].
    pub parent: u32,
    pub function_id: u32,
    /// Calls whose path this is.
    pub calls: u64,
    /// Sum of their self times, ns.
    pub self_ns: u64,
}

/// The paths of a walk, as a tree: `nodes[i].parent` indexes `nodes`.
#[derive(Debug, Default)]
pub(super) struct Paths {
    pub nodes: Vec<PathNode>,
    index: FxHashMap<(u32, u32), u32>,
    /// The open calls' path nodes (the walk's stack).
    open: Vec<u32>,
    /// With a weight column: per open call, its weight and its closed
    /// children's (a path's self weight is the difference).
    open_weight: Vec<(i64, i64)>,
    /// The calls had a weight column (`weight_ns`): `self_ns` holds self
    /// weights, not self times.
    pub weighted: bool,
}

impl Paths {
    /// Walks `batches` and aggregates them by path.
    pub fn collect(
        batches: &mut dyn Iterator<Item = Result<arrow_array::RecordBatch>>,
        meta: &ExportMeta,
    ) -> Result<(Paths, Walked)> {
        let mut paths = Paths::default();
        let walked = walk(batches, meta, &mut paths)?;
        Ok((paths, walked))
    }

    /// The path from the root down to `node`, root first, as function ids.
    pub fn stack(&self, mut node: u32, out: &mut Vec<u32>) {
        out.clear();
        while node != ROOT {
            let n = &self.nodes[node as usize];
            out.push(n.function_id);
            node = n.parent;
        }
        out.reverse();
    }
}

impl CallSink for Paths {
    fn thread_start(&mut self, _pid: u32, _tid: u32) -> Result<()> {
        Ok(())
    }

    fn open(
        &mut self,
        frame: &Frame,
        _parent: Option<&Frame>,
        columns: &CallColumns,
        i: usize,
        _row: &CallRow,
    ) -> Result<()> {
        if let Some(w) = columns.weight(i) {
            self.weighted = true;
            self.open_weight.push((w, 0));
        }
        let parent = self.open.last().copied().unwrap_or(ROOT);
        let next = self.nodes.len() as u32;
        let node = *self
            .index
            .entry((parent, frame.function_id))
            .or_insert(next);
        if node == next {
            self.nodes.push(PathNode {
                parent,
                function_id: frame.function_id,
                calls: 0,
                self_ns: 0,
            });
        }
        self.nodes[node as usize].calls += 1;
        self.open.push(node);
        Ok(())
    }

    fn close(&mut self, frame: &Frame) -> Result<()> {
        let own = if self.weighted {
            let (w, children) = self.open_weight.pop().unwrap_or_default();
            if let Some(parent) = self.open_weight.last_mut() {
                parent.1 += w;
            }
            (w - children).max(0)
        } else {
            frame.self_ns()
        };
        if let Some(node) = self.open.pop() {
            self.nodes[node as usize].self_ns += own as u64;
        }
        Ok(())
    }

    fn thread_end(&mut self) -> Result<()> {
        self.open.clear();
        self.open_weight.clear();
        Ok(())
    }
}
