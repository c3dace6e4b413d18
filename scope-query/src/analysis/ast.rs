//! The AST map: for each recorded function, its loops (line, nesting
//! depth), its call sites (callee, line, the loop around them) and its
//! branches, read from the source files DWARF names when they are on disk,
//! and from the machine code otherwise ([`super::cfg`]). This is what lets a
//! finding say "fetch_one is called inside the loop at loader.c:42".
//!
//! The input is the `functions` table ([`function_sites`]); [`build`] groups
//! the functions by source file, parses each file once with tree-sitter (C,
//! C++, Rust, Go; one parser per worker thread, files spread over the
//! cores) and finds each function's definition by its DWARF line and name.
//! A source file that is missing, newer than the module built from it, in
//! a language without a grammar here, or without the function's definition
//! gets one warning, and its functions are read from the binary. The result
//! is stored as the `ast` table ([`write_table`]).
//!
//! What counts, in the source:
//! - loops: C/C++ `for`/`while`/`do` and range-`for`, Rust `for`/`while`/
//!   `loop`, Go `for`; depth 1 is a loop directly in the function.
//! - call sites: every call expression; the callee is the last segment of
//!   what is called (`fetch_one` for `loader::fetch_one(x)` or
//!   `self.fetch_one()`), `expr` the expression as written. A call in a
//!   loop's once-evaluated part (a `for` initializer, the iterable of a
//!   range loop) is not inside that loop. Macro bodies (Rust `foo!(…)`) are
//!   not parsed.
//! - branches: `if` (an `else if` is its own `if`), `case` labels but not
//!   `default`, `match` arms but one, `&&`/`||`, `?:`; cyclomatic complexity
//!   is `1 + branches + loops`.
//! - closures, lambdas and Go function literals count in the function that
//!   holds them (they often are a loop's body, as in `for_each`); nested
//!   named functions do not. Each of them that is a recorded function of its
//!   own (`run::{{closure}}`, `main.run.func1`) gets its own entry too,
//!   found by its line.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use anyhow::Result;
use tree_sitter::{Node, Parser};

use super::cfg;

mod table;
#[cfg(test)]
mod tests;

pub use table::{TABLE, schema, write_table};

/// One row of the `functions` table, as the AST map needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionSite {
    pub function_id: u32,
    /// Demangled (`app::loader::fetch_one`, `ns::Loader::fetch(int)`).
    pub name: String,
    /// The ELF file the function's code is in.
    pub module: String,
    /// Link-time address and size of the symbol.
    pub address: u64,
    pub size: u64,
    /// Source file and line from DWARF (the line is the declaration's).
    pub file: Option<String>,
    pub line: Option<u32>,
}

/// Where a function's facts were read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Origin {
    Source,
    Binary,
}

impl Origin {
    /// The value stored in `ast.origin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Source => "source",
            Origin::Binary => "binary",
        }
    }
}

/// A loop. From the binary, `line`/`end_line` are the smallest and largest
/// lines of the loop's code in the function's file (0 when the module has
/// no line table), and `address` is the loop head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loop {
    pub line: u32,
    pub end_line: u32,
    /// 1 for a loop directly in the function, 2 inside one loop, …
    pub depth: u32,
    pub address: Option<u64>,
}

/// A call site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallSite {
    /// Source: the last segment of what is called (`fetch_one`). Binary:
    /// the demangled symbol (`app::loader::fetch_one`, `malloc@plt`).
    pub callee: String,
    /// Source: the called expression as written (`self.loader.fetch_one`,
    /// at most 120 bytes). Binary: the target address (`0x401136`).
    pub expr: String,
    /// 0 when unknown (binary without a line for the call).
    pub line: u32,
    /// Line of the innermost loop holding the call (0 when that loop's line
    /// is unknown); `None` outside loops.
    pub loop_line: Option<u32>,
    /// Loops around the call; 0 outside loops.
    pub loop_depth: u32,
    /// Binary: the call instruction's address.
    pub address: Option<u64>,
}

/// What the AST map knows of one function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionAst {
    pub function_id: u32,
    pub name: String,
    pub origin: Origin,
    pub file: Option<String>,
    /// Source: the definition's first and last lines. Binary: the DWARF
    /// line, and the largest line of its code in its file (0: unknown).
    pub start_line: u32,
    pub end_line: u32,
    /// In source order (binary: by address), outer before inner.
    pub loops: Vec<Loop>,
    /// In source order (binary: by address).
    pub calls: Vec<CallSite>,
    /// Decision points: see the module docs (binary: conditional jumps).
    pub branches: u32,
    /// Source: `1 + branches + loops`; binary: `E − N + 2` of the CFG.
    pub cyclomatic: u32,
    /// Basic blocks (binary only).
    pub blocks: Option<u32>,
}

/// How [`build`] works.
#[derive(Clone, Debug)]
pub struct AstOptions {
    /// Worker threads; 0: one per core.
    pub threads: usize,
    /// Read functions without usable source from the binary (else they are
    /// left out, and the warnings say so).
    pub binary_fallback: bool,
}

impl Default for AstOptions {
    fn default() -> Self {
        AstOptions {
            threads: 0,
            binary_fallback: true,
        }
    }
}

/// The AST map of a session's functions.
#[derive(Clone, Debug, Default)]
pub struct AstMap {
    /// By function id.
    pub functions: Vec<FunctionAst>,
    /// One line per source file that could not be used, per module that
    /// could not be read, …, sorted.
    pub warnings: Vec<String>,
}

impl AstMap {
    /// The function with this id.
    pub fn get(&self, function_id: u32) -> Option<&FunctionAst> {
        self.functions
            .binary_search_by_key(&function_id, |f| f.function_id)
            .ok()
            .map(|i| &self.functions[i])
    }

    /// Where `caller` calls `callee`. Names are matched exactly, else by
    /// their last segment without parameters (`app::loader::fetch_one`,
    /// `fetch_one`, `Loader::fetch(int)` and `fetch_one@plt` all match the
    /// source's `fetch_one`). Of several sites, the one in the deepest loop
    /// wins, then the first.
    pub fn call_site(&self, caller: &str, callee: &str) -> Option<&CallSite> {
        let exact: Vec<&FunctionAst> = self.functions.iter().filter(|f| f.name == caller).collect();
        let callers = if exact.is_empty() {
            let short = short_name(caller);
            self.functions
                .iter()
                .filter(|f| short_name(&f.name) == short)
                .collect()
        } else {
            exact
        };
        let wanted = short_name(callee);
        callers
            .into_iter()
            .flat_map(|f| f.calls.iter())
            .filter(|c| c.callee == callee || short_name(&c.callee) == wanted)
            .min_by_key(|c| (std::cmp::Reverse(c.loop_depth), c.line, c.address))
    }
}

/// The last segment of a function name, without parameters, generics,
/// qualifiers or a `@plt` suffix: `ns::Loader::fetch(int) const` → `fetch`,
/// `<app::A as app::B>::run` → `run`, `main.(*Loader).Fetch` → `Fetch`,
/// `p->next` → `next`.
pub fn short_name(name: &str) -> &str {
    let name = name.strip_suffix("@plt").unwrap_or(name);
    let bytes = name.as_bytes();
    // The last top-level segment: scan once, remembering where the last
    // separator outside brackets ended and where a top-level bracket opened
    // after it.
    let mut depth = 0usize;
    let mut seg_start = 0;
    let mut seg_end: Option<usize> = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'(' | b'[' | b'<' => {
                if depth == 0 && seg_end.is_none() && i > seg_start {
                    seg_end = Some(i);
                }
                depth += 1;
            }
            b')' | b']' | b'>' if depth > 0 => depth -= 1,
            b'.' if depth == 0 => {
                seg_start = i + 1;
                seg_end = None;
            }
            b':' if depth == 0 && bytes.get(i + 1) == Some(&b':') => {
                seg_start = i + 2;
                seg_end = None;
                i += 1;
            }
            b'-' if depth == 0 && bytes.get(i + 1) == Some(&b'>') => {
                seg_start = i + 2;
                seg_end = None;
                i += 1;
            }
            _ => {}
        }
        i += 1;
    }
    let seg = &name[seg_start.min(name.len())..seg_end.unwrap_or(name.len())];
    let seg = seg.split_whitespace().next().unwrap_or("");
    if seg.is_empty() { name } else { seg }
}

/// The functions of the store's `functions` table. The store must show one
/// session (open it with a session selection): function ids are per session.
pub fn function_sites(store: &crate::Store) -> Result<Vec<FunctionSite>> {
    if !store.has_table("functions") {
        anyhow::bail!("no functions table in the store (nothing was recorded here)");
    }
    let batches = store.sql(
        "SELECT session_id, function_id, name, module, address, size, file, line FROM functions",
    )?;
    let mut sessions: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for b in &batches {
        let sid = crate::cols::strs(b, "session_id")?;
        let fid = crate::cols::i64s(b, "function_id")?;
        let name = crate::cols::strs(b, "name")?;
        let module = crate::cols::strs(b, "module")?;
        let address = crate::cols::i64s(b, "address")?;
        let size = crate::cols::i64s(b, "size")?;
        let file = crate::cols::strs(b, "file")?;
        let line = crate::cols::i64s(b, "line")?;
        for i in 0..b.num_rows() {
            if let Some(s) = &sid[i]
                && !sessions.contains(s)
            {
                sessions.push(s.clone());
            }
            let (Some(id), Some(name), Some(module)) = (fid[i], name[i].clone(), module[i].clone())
            else {
                continue;
            };
            out.push(FunctionSite {
                function_id: u32::try_from(id).unwrap_or(u32::MAX),
                name,
                module,
                address: address[i].unwrap_or(0) as u64,
                size: size[i].unwrap_or(0) as u64,
                file: file[i].clone().filter(|f| !f.is_empty()),
                line: line[i]
                    .and_then(|l| u32::try_from(l).ok())
                    .filter(|&l| l > 0),
            });
        }
    }
    if sessions.len() > 1 {
        anyhow::bail!(
            "the functions table shows {} sessions ({}, …): choose one with --session",
            sessions.len(),
            sessions[0]
        );
    }
    out.sort_by_key(|s| s.function_id);
    Ok(out)
}

/// Builds the AST map of `sites` (see the module docs).
pub fn build(sites: &[FunctionSite], opts: &AstOptions) -> AstMap {
    let threads = if opts.threads == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        opts.threads
    };
    let mut module_times: HashMap<&str, Option<SystemTime>> = HashMap::new();
    let mut by_file: BTreeMap<&str, Vec<&FunctionSite>> = BTreeMap::new();
    let mut binary: Vec<&FunctionSite> = Vec::new();
    for site in sites {
        module_times.entry(&site.module).or_insert_with(|| {
            std::fs::metadata(&site.module)
                .and_then(|m| m.modified())
                .ok()
        });
        match &site.file {
            Some(f) => by_file.entry(f).or_default().push(site),
            None => binary.push(site),
        }
    }
    let groups: Vec<(&str, Vec<&FunctionSite>)> = by_file.into_iter().collect();
    let results = parallel(&groups, threads, Parser::new, |parser, (file, sites)| {
        source_file(parser, file, sites, &module_times)
    });
    let mut map = AstMap::default();
    for r in results {
        map.functions.extend(r.functions);
        map.warnings.extend(r.warnings);
        binary.extend(r.fallback);
    }
    if opts.binary_fallback && !binary.is_empty() {
        let mut by_module: BTreeMap<&str, Vec<&FunctionSite>> = BTreeMap::new();
        for site in binary {
            by_module.entry(&site.module).or_default().push(site);
        }
        let groups: Vec<(&str, Vec<&FunctionSite>)> = by_module.into_iter().collect();
        let results = parallel(
            &groups,
            threads,
            || (),
            |(), (module, sites)| binary_module(module, sites),
        );
        for (functions, warnings) in results {
            map.functions.extend(functions);
            map.warnings.extend(warnings);
        }
    }
    if !opts.binary_fallback {
        for w in &mut map.warnings {
            if let Some(head) = w.strip_suffix(", using the binary") {
                *w = format!("{head}, left out");
            }
        }
    }
    map.functions.sort_by_key(|f| f.function_id);
    map.warnings.sort();
    map.warnings.dedup();
    map
}

/// `f` over `items` on `threads` threads, each with its own `init()` state;
/// results in the order of `items`.
fn parallel<T: Sync, S, R: Send>(
    items: &[T],
    threads: usize,
    init: impl Fn() -> S + Sync,
    f: impl Fn(&mut S, &T) -> R + Sync,
) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let threads = threads.clamp(1, items.len().max(1));
    let work = || {
        let mut state = init();
        let mut out = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(item) = items.get(i) else {
                return out;
            };
            out.push((i, f(&mut state, item)));
        }
    };
    let mut all: Vec<(usize, R)> = if threads == 1 {
        work()
    } else {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads).map(|_| s.spawn(work)).collect();
            handles
                .into_iter()
                .flat_map(|h| match h.join() {
                    Ok(v) => v,
                    Err(panic) => std::panic::resume_unwind(panic),
                })
                .collect()
        })
    };
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, r)| r).collect()
}

/// What one source file gave.
struct FileResult<'s> {
    functions: Vec<FunctionAst>,
    warnings: Vec<String>,
    /// Functions to read from the binary instead.
    fallback: Vec<&'s FunctionSite>,
}

fn source_file<'s>(
    parser: &mut Parser,
    file: &str,
    sites: &[&'s FunctionSite],
    module_times: &HashMap<&str, Option<SystemTime>>,
) -> FileResult<'s> {
    let mut out = FileResult {
        functions: Vec::new(),
        warnings: Vec::new(),
        fallback: Vec::new(),
    };
    let give_up = |out: &mut FileResult<'s>, why: String| {
        out.warnings
            .push(format!("{file}: {why}, using the binary"));
        out.fallback.extend_from_slice(sites);
    };
    // A `.h` file of C++ functions (their names have scopes or
    // parameters) is C++.
    let cpp_names = sites
        .iter()
        .any(|s| s.name.contains("::") || s.name.contains('('));
    let lang = match Lang::of(file) {
        Some(Lang::C) if cpp_names && file.ends_with(".h") => Some(Lang::Cpp),
        other => other,
    };
    let Some(lang) = lang else {
        give_up(&mut out, "no grammar for its language here".into());
        return out;
    };
    let modified = match std::fs::metadata(file).and_then(|m| m.modified()) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            give_up(&mut out, "not found".into());
            return out;
        }
        Err(e) => {
            give_up(&mut out, format!("cannot read it ({e})"));
            return out;
        }
    };
    // Functions of modules built before the file last changed: the file no
    // longer says what their code does.
    let mut fresh: Vec<&'s FunctionSite> = Vec::new();
    let mut stale_modules: Vec<&str> = Vec::new();
    for &site in sites {
        match module_times.get(site.module.as_str()).copied().flatten() {
            Some(built) if modified > built => {
                if !stale_modules.contains(&site.module.as_str()) {
                    stale_modules.push(&site.module);
                }
                out.fallback.push(site);
            }
            _ => fresh.push(site),
        }
    }
    for module in stale_modules {
        out.warnings.push(format!(
            "{file}: changed since the build (newer than {module}), using the binary"
        ));
    }
    if fresh.is_empty() {
        return out;
    }
    let source = match std::fs::read(file) {
        Ok(s) => s,
        Err(e) => {
            out.warnings
                .push(format!("{file}: cannot read it ({e}), using the binary"));
            out.fallback.extend(fresh);
            return out;
        }
    };
    let parsed = parser
        .set_language(&lang.language())
        .ok()
        .and_then(|()| parser.parse(&source, None));
    let Some(tree) = parsed else {
        out.warnings
            .push(format!("{file}: could not be parsed, using the binary"));
        out.fallback.extend(fresh);
        return out;
    };
    let src = Source {
        lang,
        text: &source,
    };
    let defs = src.definitions(tree.root_node());
    let mut done: HashMap<usize, FunctionFacts> = HashMap::new();
    let mut missing: Vec<&FunctionSite> = Vec::new();
    for site in fresh {
        let Some(def) = match_definition(&defs, site) else {
            missing.push(site);
            continue;
        };
        let facts = done
            .entry(def.node.id())
            .or_insert_with(|| src.facts(def.node));
        out.functions.push(FunctionAst {
            function_id: site.function_id,
            name: site.name.clone(),
            origin: Origin::Source,
            file: Some(file.to_string()),
            start_line: def.lines.start,
            end_line: def.lines.end,
            loops: facts.loops.clone(),
            calls: facts.calls.clone(),
            branches: facts.branches,
            cyclomatic: 1 + facts.branches + facts.loops.len() as u32,
            blocks: None,
        });
    }
    if let Some(first) = missing.first() {
        out.warnings.push(format!(
            "{file}: no definition of {} function(s) (first: {} at line {}), using the binary",
            missing.len(),
            first.name,
            first.line.map_or("?".to_string(), |l| l.to_string())
        ));
        out.fallback.extend(missing);
    }
    out
}

/// A function-like node of a file.
struct Definition<'t> {
    node: Node<'t>,
    /// First and last line (1-based, inclusive).
    lines: Range<u32>,
    /// The short name of a named definition; `None` for closures, lambdas
    /// and function literals.
    name: Option<String>,
}

/// The definition of `site`: a named one whose lines hold the DWARF line
/// and whose name matches, else any (a closure too) starting at that line;
/// the innermost in either case. Without a DWARF line, the one definition
/// of that name.
fn match_definition<'d, 't>(
    defs: &'d [Definition<'t>],
    site: &FunctionSite,
) -> Option<&'d Definition<'t>> {
    let short = short_name(&site.name);
    let innermost = |it: &mut dyn Iterator<Item = &'d Definition<'t>>| {
        it.min_by_key(|d| (d.node.end_byte() - d.node.start_byte(), d.node.start_byte()))
    };
    let Some(line) = site.line else {
        let mut named = defs.iter().filter(|d| d.name.as_deref() == Some(short));
        let first = named.next()?;
        return named.next().is_none().then_some(first);
    };
    let holds = |d: &&Definition<'t>| d.lines.start <= line && line <= d.lines.end;
    innermost(
        &mut defs
            .iter()
            .filter(holds)
            .filter(|d| d.name.as_deref() == Some(short)),
    )
    .or_else(|| innermost(&mut defs.iter().filter(|d| d.lines.start == line)))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lang {
    C,
    Cpp,
    Rust,
    Go,
}

/// What kind of function-like node a node is.
#[derive(PartialEq, Eq)]
enum FnKind {
    Named,
    Anonymous,
    No,
}

impl Lang {
    fn of(file: &str) -> Option<Lang> {
        let ext = Path::new(file).extension()?.to_str()?;
        Some(match ext {
            "c" | "h" => Lang::C,
            "cc" | "cpp" | "cxx" | "c++" | "C" | "hh" | "hpp" | "hxx" | "h++" | "H" | "ipp"
            | "tcc" | "inl" => Lang::Cpp,
            "rs" => Lang::Rust,
            "go" => Lang::Go,
            _ => return None,
        })
    }

    fn language(self) -> tree_sitter::Language {
        match self {
            Lang::C => tree_sitter_c::LANGUAGE.into(),
            Lang::Cpp => tree_sitter_cpp::LANGUAGE.into(),
            Lang::Rust => tree_sitter_rust::LANGUAGE.into(),
            Lang::Go => tree_sitter_go::LANGUAGE.into(),
        }
    }

    fn fn_kind(self, kind: &str) -> FnKind {
        match (self, kind) {
            (Lang::C | Lang::Cpp, "function_definition")
            | (Lang::Rust, "function_item")
            | (Lang::Go, "function_declaration" | "method_declaration") => FnKind::Named,
            (Lang::Cpp, "lambda_expression")
            | (Lang::Rust, "closure_expression")
            | (Lang::Go, "func_literal") => FnKind::Anonymous,
            _ => FnKind::No,
        }
    }
}

/// A parsed file's text and language.
struct Source<'a> {
    lang: Lang,
    text: &'a [u8],
}

/// The facts of one definition.
struct FunctionFacts {
    loops: Vec<Loop>,
    calls: Vec<CallSite>,
    branches: u32,
}

/// A loop being walked: its line, and the byte ranges of its parts that run
/// once (a `for` initializer, a range loop's iterable).
struct OpenLoop {
    id: usize,
    line: u32,
    once: Vec<Range<usize>>,
}

/// Visits `root`'s subtree in order without recursion (trees of long
/// expression chains are deep): `enter` says whether to go into a node's
/// children; `leave` runs after them.
fn walk<'t>(
    root: Node<'t>,
    mut enter: impl FnMut(Node<'t>) -> bool,
    mut leave: impl FnMut(Node<'t>),
) {
    let mut cursor = root.walk();
    loop {
        let node = cursor.node();
        if enter(node) && cursor.goto_first_child() {
            continue;
        }
        leave(node);
        loop {
            if cursor.depth() == 0 {
                return;
            }
            if cursor.goto_next_sibling() {
                break;
            }
            if !cursor.goto_parent() {
                return;
            }
            leave(cursor.node());
        }
    }
}

fn line_of(row: usize) -> u32 {
    u32::try_from(row + 1).unwrap_or(u32::MAX)
}

impl<'a> Source<'a> {
    fn text(&self, node: Node<'_>) -> &'a str {
        std::str::from_utf8(&self.text[node.byte_range()]).unwrap_or("")
    }

    /// Every function-like node of the tree.
    fn definitions<'t>(&self, root: Node<'t>) -> Vec<Definition<'t>> {
        let mut defs = Vec::new();
        walk(
            root,
            |node| {
                let kind = self.lang.fn_kind(node.kind());
                if kind != FnKind::No {
                    defs.push(Definition {
                        node,
                        lines: line_of(node.start_position().row)..line_of(node.end_position().row),
                        name: (kind == FnKind::Named)
                            .then(|| self.definition_name(node))
                            .flatten(),
                    });
                }
                // Leaves and comments hold no definitions.
                node.child_count() > 0
            },
            |_| {},
        );
        defs
    }

    fn definition_name(&self, def: Node<'_>) -> Option<String> {
        let name = match self.lang {
            Lang::C | Lang::Cpp => {
                // int *(*f)(…), Foo &Bar::get() …: down the declarators to
                // the function declarator, whose declarator is the name.
                let mut d = def.child_by_field_name("declarator")?;
                for _ in 0..16 {
                    if d.kind() == "function_declarator" {
                        break;
                    }
                    d = d
                        .child_by_field_name("declarator")
                        .or_else(|| d.named_child(d.named_child_count().checked_sub(1)? as u32))?;
                }
                d.child_by_field_name("declarator")?
            }
            Lang::Rust | Lang::Go => def.child_by_field_name("name")?,
        };
        Some(short_name(self.text(name)).to_string())
    }

    /// Loops, calls and branches of the definition `def`.
    fn facts(&self, def: Node<'_>) -> FunctionFacts {
        let mut facts = FunctionFacts {
            loops: Vec::new(),
            calls: Vec::new(),
            branches: 0,
        };
        // Loops being walked; a RefCell because both closures of `walk`
        // touch it.
        let open: std::cell::RefCell<Vec<OpenLoop>> = std::cell::RefCell::new(Vec::new());
        // The loops around a byte: those whose once-run parts do not hold it.
        let around = |at: usize| -> (u32, Option<u32>) {
            let mut depth = 0;
            let mut line = None;
            for l in open.borrow().iter() {
                if !l.once.iter().any(|r| r.contains(&at)) {
                    depth += 1;
                    line = Some(l.line);
                }
            }
            (depth, line)
        };
        walk(
            def,
            |node| {
                if node.id() != def.id() && self.lang.fn_kind(node.kind()) == FnKind::Named {
                    return false;
                }
                let kind = node.kind();
                if let Some(once) = self.loop_once_parts(node) {
                    let line = line_of(node.start_position().row);
                    let (depth, _) = around(node.start_byte());
                    facts.loops.push(Loop {
                        line,
                        end_line: line_of(node.end_position().row),
                        depth: depth + 1,
                        address: None,
                    });
                    open.borrow_mut().push(OpenLoop {
                        id: node.id(),
                        line,
                        once,
                    });
                } else if kind == "call_expression" {
                    if let Some(f) = node.child_by_field_name("function") {
                        let (loop_depth, loop_line) = around(node.start_byte());
                        facts.calls.push(CallSite {
                            callee: self.callee_name(f),
                            expr: truncate(self.text(f), 120).to_string(),
                            line: line_of(node.start_position().row),
                            loop_line,
                            loop_depth,
                            address: None,
                        });
                    }
                } else {
                    facts.branches += self.branch_weight(node);
                }
                node.child_count() > 0
            },
            |node| {
                let mut open = open.borrow_mut();
                if open.last().is_some_and(|l| l.id == node.id()) {
                    open.pop();
                }
            },
        );
        facts
    }

    /// For a loop node, the byte ranges of its parts evaluated once.
    fn loop_once_parts(&self, node: Node<'_>) -> Option<Vec<Range<usize>>> {
        let fields: &[&str] = match (self.lang, node.kind()) {
            (Lang::C | Lang::Cpp, "for_statement") => &["initializer"],
            (Lang::Cpp, "for_range_loop") => &["initializer", "right"],
            (Lang::C | Lang::Cpp, "while_statement" | "do_statement") => &[],
            (Lang::Rust, "for_expression") => &["value"],
            (Lang::Rust, "while_expression" | "loop_expression") => &[],
            (Lang::Go, "for_statement") => {
                let mut once = Vec::new();
                let mut cursor = node.walk();
                for child in node.named_children(&mut cursor) {
                    let field = match child.kind() {
                        "for_clause" => "initializer",
                        "range_clause" => "right",
                        _ => continue,
                    };
                    once.extend(child.child_by_field_name(field).map(|n| n.byte_range()));
                }
                return Some(once);
            }
            _ => return None,
        };
        Some(
            fields
                .iter()
                .filter_map(|f| node.child_by_field_name(f))
                .map(|n| n.byte_range())
                .collect(),
        )
    }

    /// Decision points a node adds.
    fn branch_weight(&self, node: Node<'_>) -> u32 {
        match (self.lang, node.kind()) {
            (_, "binary_expression") => {
                let op = node.child_by_field_name("operator").map(|o| o.kind());
                u32::from(matches!(op, Some("&&" | "||")))
            }
            (Lang::C | Lang::Cpp, "if_statement" | "conditional_expression") => 1,
            (Lang::C | Lang::Cpp, "case_statement") => {
                u32::from(node.child_by_field_name("value").is_some())
            }
            (Lang::Rust, "if_expression") => 1,
            (Lang::Rust, "match_block") => {
                let mut cursor = node.walk();
                let arms = node
                    .named_children(&mut cursor)
                    .filter(|c| c.kind() == "match_arm")
                    .count() as u32;
                arms.saturating_sub(1)
            }
            (Lang::Go, "if_statement" | "expression_case" | "type_case" | "communication_case") => {
                1
            }
            _ => 0,
        }
    }

    /// The name a call's function expression ends in.
    fn callee_name(&self, mut f: Node<'_>) -> String {
        for _ in 0..16 {
            let next = match f.kind() {
                "identifier" | "field_identifier" => break,
                "field_expression" | "selector_expression" => f.child_by_field_name("field"),
                "qualified_identifier"
                | "scoped_identifier"
                | "template_function"
                | "template_method" => f.child_by_field_name("name"),
                "generic_function" => f.child_by_field_name("function"),
                "parenthesized_expression" => f.named_child(0),
                kind if self.lang.fn_kind(kind) == FnKind::Anonymous => {
                    return "<anonymous>".to_string();
                }
                _ => None,
            };
            match next {
                Some(n) => f = n,
                None => break,
            }
        }
        short_name(self.text(f)).to_string()
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The functions of one module read from its machine code, and what went
/// wrong.
fn binary_module(module: &str, sites: &[&FunctionSite]) -> (Vec<FunctionAst>, Vec<String>) {
    let requests: Vec<cfg::CfgRequest> = sites
        .iter()
        .map(|s| cfg::CfgRequest {
            address: s.address,
            size: s.size,
            file: s.file.clone(),
            line: s.line,
        })
        .collect();
    let results = match cfg::analyze_module(&PathBuf::from(module), &requests) {
        Ok(r) => r,
        Err(e) => {
            return (
                Vec::new(),
                vec![format!("{e:#}; no AST for {} function(s)", sites.len())],
            );
        }
    };
    let mut functions = Vec::new();
    let mut failed: Vec<(&FunctionSite, String)> = Vec::new();
    for (site, result) in sites.iter().zip(results) {
        match result {
            Ok(g) => functions.push(from_cfg(site, g)),
            Err(e) => failed.push((site, e)),
        }
    }
    let mut warnings = Vec::new();
    if let Some((site, why)) = failed.first() {
        warnings.push(format!(
            "{module}: no CFG for {} function(s) (first: {}: {why})",
            failed.len(),
            site.name
        ));
    }
    (functions, warnings)
}

fn from_cfg(site: &FunctionSite, g: cfg::FunctionCfg) -> FunctionAst {
    let loop_line = |head: u64| {
        g.loops
            .iter()
            .find(|l| l.head == head)
            .map_or(0, |l| l.line.unwrap_or(0))
    };
    let start_line = site.line.unwrap_or(0);
    FunctionAst {
        function_id: site.function_id,
        name: site.name.clone(),
        origin: Origin::Binary,
        file: site.file.clone(),
        start_line,
        end_line: g.end_line.unwrap_or(0).max(start_line),
        loops: g
            .loops
            .iter()
            .map(|l| Loop {
                line: l.line.unwrap_or(0),
                end_line: l.end_line.unwrap_or(0),
                depth: l.depth,
                address: Some(l.head),
            })
            .collect(),
        calls: g
            .calls
            .iter()
            .map(|c| CallSite {
                callee: c.callee.clone(),
                expr: if c.target == 0 {
                    String::new()
                } else {
                    format!("0x{:x}", c.target)
                },
                line: c.line.unwrap_or(0),
                loop_line: c.loop_head.map(loop_line),
                loop_depth: c.loop_depth,
                address: Some(c.address),
            })
            .collect(),
        branches: g.branches,
        cyclomatic: g.cyclomatic,
        blocks: Some(g.blocks),
    }
}
