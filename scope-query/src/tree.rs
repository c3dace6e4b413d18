//! `tree`: the call tree aggregated by path (every distinct chain of
//! functions from a thread's root), with calls, total and self time per
//! path, like `uftrace graph`.
//!
//! The calls are read in (session, tid, start_ns, depth) order, so each
//! thread's calls arrive as a depth-first walk of its call tree: one stack
//! per thread rebuilds every call's path, and the tree holds one node per
//! distinct path. Memory is bounded by the paths, not the calls (the sort
//! spills to disk under the store's memory limit).

use std::fmt::Write as _;

use anyhow::{Result, bail};
use rustc_hash::FxHashMap;

use crate::cols;
use crate::report::{fmt_count, group_digits};
use crate::store::Store;
use crate::time::fmt_ns;

/// One node: a path from a root.
#[derive(Clone, Debug, Default)]
pub struct Node {
    /// Function name (index into [`Tree::names`]); the root node has none.
    pub name: u32,
    /// Calls on this path.
    pub calls: u64,
    /// Sum of their durations, ns (calls still open at the end count to
    /// the session's end and are counted in `open`).
    pub total_ns: i64,
    /// Sum of their self times, ns.
    pub self_ns: i64,
    /// Calls without a return (open at the end, or cut).
    pub open: u64,
    /// Children by name.
    pub children: FxHashMap<u32, usize>,
}

/// The aggregated call tree.
#[derive(Clone, Debug, Default)]
pub struct Tree {
    /// Node 0 is the root (above every thread's first call).
    pub nodes: Vec<Node>,
    /// Function names.
    pub names: Vec<String>,
    /// Calls read.
    pub calls: u64,
    /// Whether some selected session was sampled (counts are of recorded
    /// calls).
    pub sampled: bool,
}

impl Tree {
    fn child(&mut self, parent: usize, name: u32) -> usize {
        if let Some(&i) = self.nodes[parent].children.get(&name) {
            return i;
        }
        self.nodes.push(Node {
            name,
            ..Node::default()
        });
        let i = self.nodes.len() - 1;
        self.nodes[parent].children.insert(name, i);
        i
    }
}

/// Options of `tree`.
#[derive(Clone, Debug, Default)]
pub struct TreeOptions {
    /// Only this thread.
    pub tid: Option<u32>,
    /// Show paths down to this depth (0: all).
    pub max_depth: usize,
    /// Hide paths under this share of the root's total time, in percent.
    pub min_pct: f64,
    /// Start the tree at functions matching this name (each occurrence is
    /// a root of its own).
    pub focus: Option<String>,
}

/// Builds the tree of the store's selected sessions.
pub fn build(store: &Store, opts: &TreeOptions) -> Result<Tree> {
    if !store.has_table("calls") || !store.has_table("functions") {
        bail!(
            "{}: no calls or functions table (nothing was recorded here)",
            store.location().display
        );
    }
    let mut tree = Tree {
        nodes: vec![Node::default()],
        ..Tree::default()
    };
    // Function names per (session, id), interned.
    let mut intern: FxHashMap<String, u32> = FxHashMap::default();
    let mut fname: FxHashMap<(String, i64), u32> = FxHashMap::default();
    for b in store.sql("SELECT session_id, function_id, name FROM functions")? {
        let s = cols::strs(&b, "session_id")?;
        let id = cols::i64s(&b, "function_id")?;
        let n = cols::strs(&b, "name")?;
        for i in 0..b.num_rows() {
            let name = n[i].clone().unwrap_or_default();
            let next = tree.names.len() as u32;
            let k = *intern.entry(name.clone()).or_insert_with(|| {
                tree.names.push(name);
                next
            });
            fname.insert((s[i].clone().unwrap_or_default(), id[i].unwrap_or(0)), k);
        }
    }
    let ends = session_ends(store)?;
    let filter = match opts.tid {
        Some(t) => format!("WHERE tid = {t}"),
        None => String::new(),
    };
    let sql = format!(
        "SELECT session_id, tid, function_id, depth, start_ns, duration_ns, self_ns FROM calls {filter} \
         ORDER BY session_id, tid, start_ns, depth"
    );
    // The open frames of the current thread: (depth, node, end_ns).
    let mut stack: Vec<(i64, usize, i64)> = Vec::new();
    let mut cur: Option<(String, i64)> = None;
    let focus = opts.focus.as_ref().and_then(|f| intern.get(f).copied());
    if opts.focus.is_some() && focus.is_none() {
        bail!(
            "no function named {:?} in the selected sessions",
            opts.focus.as_deref().unwrap_or_default()
        );
    }
    for b in store.stream(&sql)? {
        let b = b?;
        let s = cols::strs(&b, "session_id")?;
        let tid = cols::i64s(&b, "tid")?;
        let fid = cols::i64s(&b, "function_id")?;
        let depth = cols::i64s(&b, "depth")?;
        let start = cols::i64s(&b, "start_ns")?;
        let dur = cols::i64s(&b, "duration_ns")?;
        let selfs = cols::i64s(&b, "self_ns")?;
        for i in 0..b.num_rows() {
            let session = s[i].clone().unwrap_or_default();
            let t = tid[i].unwrap_or(0);
            if cur
                .as_ref()
                .is_none_or(|(cs, ct)| *cs != session || *ct != t)
            {
                stack.clear();
                cur = Some((session.clone(), t));
            }
            let d = depth[i].unwrap_or(0);
            let st = start[i].unwrap_or(0);
            // Leave the frames this call is not inside.
            while let Some(&(fd, _, fe)) = stack.last() {
                if fd >= d || fe <= st {
                    stack.pop();
                } else {
                    break;
                }
            }
            let name = fname
                .get(&(session.clone(), fid[i].unwrap_or(0)))
                .copied()
                .unwrap_or(u32::MAX);
            let parent = match stack.last() {
                Some(&(_, n, _)) => n,
                None if focus.is_some() && Some(name) != focus => {
                    // Outside every focused call: not part of the tree.
                    continue;
                }
                None => 0,
            };
            let node = tree.child(parent, name);
            let end_of_session = ends.get(&session).copied().unwrap_or(i64::MAX);
            let (dur_ns, open) = match dur[i] {
                Some(v) => (v, false),
                None => ((end_of_session - st).max(0), true),
            };
            let n = &mut tree.nodes[node];
            n.calls += 1;
            n.total_ns += dur_ns;
            n.self_ns += selfs[i].unwrap_or(0);
            n.open += open as u64;
            tree.calls += 1;
            stack.push((d, node, st.saturating_add(dur_ns.max(1))));
        }
    }
    tree.sampled = !crate::report::sampled_sessions(store)?.is_empty();
    Ok(tree)
}

/// The end of each selected session, for calls still open there.
fn session_ends(store: &Store) -> Result<FxHashMap<String, i64>> {
    let mut m = FxHashMap::default();
    if store.has_table("sessions") {
        for b in store.sql("SELECT session_id, end_ns FROM sessions")? {
            let s = cols::strs(&b, "session_id")?;
            let e = cols::i64s(&b, "end_ns")?;
            for i in 0..b.num_rows() {
                if let (Some(s), Some(e)) = (&s[i], e[i]) {
                    m.insert(s.clone(), e);
                }
            }
        }
    }
    Ok(m)
}

/// The tree as text: one line per path, children under their parent by
/// total time.
pub fn render(tree: &Tree, opts: &TreeOptions) -> String {
    let mut s = String::new();
    let root_total: i64 = tree.nodes[0]
        .children
        .values()
        .map(|&c| tree.nodes[c].total_ns)
        .sum();
    let mut lines: Vec<[String; 4]> = vec![[
        "calls".into(),
        "total".into(),
        "self".into(),
        "function".into(),
    ]];
    let mut hidden = 0usize;
    walk(tree, 0, "", 0, root_total, opts, &mut lines, &mut hidden);
    let w: Vec<usize> = (0..3)
        .map(|c| {
            lines
                .iter()
                .map(|l| l[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for l in &lines {
        let _ = writeln!(
            s,
            "{:>w0$}  {:>w1$}  {:>w2$}  {}",
            l[0],
            l[1],
            l[2],
            l[3],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2]
        );
    }
    if tree.calls == 0 {
        let _ = writeln!(s, "(no calls recorded)");
    }
    if hidden > 0 {
        let _ = writeln!(
            s,
            "… {} paths hidden by --depth / --min-pct",
            group_digits(hidden as u64)
        );
    }
    if tree.sampled {
        let _ = writeln!(
            s,
            "\nsampled session: counts and times are of the recorded calls (`report` shows estimated totals)"
        );
    }
    s
}

#[allow(clippy::too_many_arguments)]
fn walk(
    tree: &Tree,
    node: usize,
    prefix: &str,
    depth: usize,
    root_total: i64,
    opts: &TreeOptions,
    lines: &mut Vec<[String; 4]>,
    hidden: &mut usize,
) {
    let mut kids: Vec<usize> = tree.nodes[node].children.values().copied().collect();
    kids.sort_by(|&a, &b| {
        tree.nodes[b]
            .total_ns
            .cmp(&tree.nodes[a].total_ns)
            .then(tree.nodes[a].name.cmp(&tree.nodes[b].name))
    });
    let shown: Vec<usize> = kids
        .iter()
        .copied()
        .filter(|&k| {
            let pct = 100.0 * tree.nodes[k].total_ns as f64 / root_total.max(1) as f64;
            let ok = (opts.max_depth == 0 || depth < opts.max_depth) && pct >= opts.min_pct;
            if !ok {
                *hidden += count_paths(tree, k);
            }
            ok
        })
        .collect();
    for (i, &k) in shown.iter().enumerate() {
        let n = &tree.nodes[k];
        let last = i + 1 == shown.len();
        let (branch, next) = if depth == 0 {
            ("", String::new())
        } else if last {
            ("└─ ", format!("{prefix}   "))
        } else {
            ("├─ ", format!("{prefix}│  "))
        };
        let name = tree.names.get(n.name as usize).map_or("?", |s| s.as_str());
        let open = if n.open > 0 {
            format!("  ({} without a return)", group_digits(n.open))
        } else {
            String::new()
        };
        lines.push([
            fmt_count(Some(n.calls as f64), true),
            fmt_ns(n.total_ns as f64),
            fmt_ns(n.self_ns as f64),
            format!("{prefix}{branch}{name}{open}"),
        ]);
        let child_prefix = if depth == 0 { String::new() } else { next };
        walk(
            tree,
            k,
            &child_prefix,
            depth + 1,
            root_total,
            opts,
            lines,
            hidden,
        );
    }
}

fn count_paths(tree: &Tree, node: usize) -> usize {
    1 + tree.nodes[node]
        .children
        .values()
        .map(|&c| count_paths(tree, c))
        .sum::<usize>()
}
