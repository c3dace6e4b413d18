use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use object::{Object as _, ObjectSymbol as _};

use super::*;

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write source");
    path.to_string_lossy().into_owned()
}

fn site(id: u32, name: &str, file: &str, line: u32) -> FunctionSite {
    FunctionSite {
        function_id: id,
        name: name.to_string(),
        // No module: staleness cannot be judged, the source is used.
        module: "/nonexistent/module".to_string(),
        address: 0,
        size: 0,
        file: Some(file.to_string()),
        line: Some(line),
    }
}

fn lp(line: u32, end_line: u32, depth: u32) -> Loop {
    Loop {
        line,
        end_line,
        depth,
        address: None,
    }
}

/// (callee, line, loop_line, loop_depth)
fn calls(f: &FunctionAst) -> Vec<(&str, u32, Option<u32>, u32)> {
    f.calls
        .iter()
        .map(|c| (c.callee.as_str(), c.line, c.loop_line, c.loop_depth))
        .collect()
}

const C_SRC: &str = r#"#include <stdio.h>
int fetch_one(int i);
static int
load_all(int n)
{
    int s = 0;
    for (int i = first(); i < n; i++) {
        s += fetch_one(i);
        while (s > 100 && n) {
            s = shrink(s);
        }
    }
    log_done(s);
    return s > 0 ? s : 0;
}

int pick(int k)
{
    switch (k) {
    case 1: return a();
    case 2: return b->next(k);
    default: return 0;
    }
    do { k--; } while (k);
}
"#;

#[test]
fn c_loops_calls_and_branches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(dir.path(), "loader.c", C_SRC);
    let map = build(
        &[site(2, "pick", &file, 17), site(1, "load_all", &file, 4)],
        &AstOptions::default(),
    );
    assert!(map.warnings.is_empty(), "{:?}", map.warnings);
    let f = map.get(1).expect("load_all");
    assert_eq!(f.origin, Origin::Source);
    assert_eq!((f.start_line, f.end_line), (3, 15));
    assert_eq!(f.loops, vec![lp(7, 12, 1), lp(9, 11, 2)]);
    assert_eq!(
        calls(f),
        vec![
            // The initializer runs once: not inside the loop.
            ("first", 7, None, 0),
            ("fetch_one", 8, Some(7), 1),
            ("shrink", 10, Some(9), 2),
            ("log_done", 13, None, 0),
        ]
    );
    // && and ?:; 1 + 2 branches + 2 loops.
    assert_eq!((f.branches, f.cyclomatic, f.blocks), (2, 5, None));
    let call = map.call_site("load_all", "fetch_one").expect("site");
    assert_eq!((call.line, call.loop_line), (8, Some(7)));
    assert_eq!(call.expr, "fetch_one");

    let p = map.get(2).expect("pick");
    assert_eq!(p.loops, vec![lp(24, 24, 1)]);
    assert_eq!(calls(p), vec![("a", 20, None, 0), ("next", 21, None, 0)]);
    assert_eq!(p.calls[1].expr, "b->next");
    // Two case labels (default adds none), one loop.
    assert_eq!((p.branches, p.cyclomatic), (2, 4));
}

const RUST_SRC: &str = r#"mod loader {
    pub fn fetch_all(ids: &[u32]) -> u32 {
        let mut total = 0;
        for id in ids.iter() {
            total += fetch_one(*id);
            loop {
                if self::done() { break; }
            }
        }
        ids.iter().for_each(|x| crate::log::note(*x));
        match total { 0 => 1, 1 => 2, _ => 3 }
    }
    fn fetch_one(id: u32) -> u32 { fn inner() { while true {} } id }
}
"#;

#[test]
fn rust_loops_calls_closures() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(dir.path(), "loader.rs", RUST_SRC);
    let map = build(
        &[
            site(1, "app::loader::fetch_all", &file, 2),
            site(2, "app::loader::fetch_all::{{closure}}", &file, 10),
            site(3, "app::loader::fetch_one", &file, 13),
        ],
        &AstOptions::default(),
    );
    assert!(map.warnings.is_empty(), "{:?}", map.warnings);
    let f = map.get(1).expect("fetch_all");
    assert_eq!((f.start_line, f.end_line), (2, 12));
    assert_eq!(f.loops, vec![lp(4, 9, 1), lp(6, 8, 2)]);
    assert_eq!(
        calls(f),
        vec![
            // The iterable is evaluated once.
            ("iter", 4, None, 0),
            ("fetch_one", 5, Some(4), 1),
            ("done", 7, Some(6), 2),
            ("for_each", 10, None, 0),
            ("iter", 10, None, 0),
            ("note", 10, None, 0),
        ]
    );
    // if, and a match of 3 arms (2); 1 + 3 + 2 loops.
    assert_eq!((f.branches, f.cyclomatic), (3, 6));
    let c = map.get(2).expect("closure");
    assert_eq!((c.start_line, c.end_line), (10, 10));
    assert_eq!(calls(c), vec![("note", 10, None, 0)]);
    // A nested named function is not part of its parent.
    let one = map.get(3).expect("fetch_one");
    assert!(one.loops.is_empty());
    let call = map
        .call_site("app::loader::fetch_all", "app::loader::fetch_one")
        .expect("site");
    assert_eq!(
        (call.line, call.loop_line, call.loop_depth),
        (5, Some(4), 1)
    );
}

const GO_SRC: &str = r#"package main

func fetchAll(ids []int) int {
	total := 0
	for _, id := range load(ids) {
		total += fetchOne(id)
		for i := 0; i < 3; i++ {
			if total > 10 || i == 2 {
				log.Println(total)
			}
		}
	}
	return total
}

func (l *Loader) Fetch() { go func() { for { l.step() } }() }
"#;

#[test]
fn go_loops_and_calls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(dir.path(), "main.go", GO_SRC);
    let map = build(
        &[
            site(1, "main.fetchAll", &file, 3),
            site(2, "main.(*Loader).Fetch", &file, 16),
        ],
        &AstOptions::default(),
    );
    assert!(map.warnings.is_empty(), "{:?}", map.warnings);
    let f = map.get(1).expect("fetchAll");
    assert_eq!(f.loops, vec![lp(5, 12, 1), lp(7, 11, 2)]);
    assert_eq!(
        calls(f),
        vec![
            ("load", 5, None, 0),
            ("fetchOne", 6, Some(5), 1),
            ("Println", 9, Some(7), 2),
        ]
    );
    assert_eq!(f.calls[2].expr, "log.Println");
    assert_eq!((f.branches, f.cyclomatic), (2, 5));
    let m = map.get(2).expect("Fetch");
    // The function literal's loop counts in the method.
    assert_eq!(m.loops, vec![lp(16, 16, 1)]);
    assert_eq!(
        calls(m),
        vec![("<anonymous>", 16, None, 0), ("step", 16, Some(16), 1)]
    );
}

const CPP_SRC: &str = r#"#include <vector>
namespace ns {
struct Loader {
    int fetch(int i);
    int all(const std::vector<int>& v);
};
int Loader::all(const std::vector<int>& v) {
    int s = 0;
    for (int x : make(v)) {
        s += this->fetch(x);
        auto f = [&](int y) { return ns::helper<int>(y); };
        s += f(x);
    }
    return s;
}
}
"#;

#[test]
fn cpp_range_for_lambda_and_qualified_calls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(dir.path(), "loader.cpp", CPP_SRC);
    let map = build(
        &[
            site(
                1,
                "ns::Loader::all(std::vector<int, std::allocator<int> > const&)",
                &file,
                7,
            ),
            site(
                2,
                "ns::Loader::all(std::vector<int, std::allocator<int> > const&)::{lambda(int)#1}::operator()(int) const",
                &file,
                11,
            ),
        ],
        &AstOptions::default(),
    );
    assert!(map.warnings.is_empty(), "{:?}", map.warnings);
    let f = map.get(1).expect("all");
    assert_eq!((f.start_line, f.end_line), (7, 15));
    assert_eq!(f.loops, vec![lp(9, 13, 1)]);
    assert_eq!(
        calls(f),
        vec![
            ("make", 9, None, 0),
            ("fetch", 10, Some(9), 1),
            ("helper", 11, Some(9), 1),
            ("f", 12, Some(9), 1),
        ]
    );
    let lambda = map.get(2).expect("lambda");
    assert_eq!((lambda.start_line, lambda.end_line), (11, 11));
    assert_eq!(calls(lambda), vec![("helper", 11, None, 0)]);
    let call = map
        .call_site(
            "ns::Loader::all(std::vector<int, std::allocator<int> > const&)",
            "ns::Loader::fetch(int)",
        )
        .expect("site");
    assert_eq!(call.line, 10);
}

#[test]
fn short_names() {
    for (name, short) in [
        ("fetch_one", "fetch_one"),
        ("app::loader::fetch_one", "fetch_one"),
        ("ns::Loader::fetch(int) const", "fetch"),
        ("<app::A as app::B>::run", "run"),
        ("main.(*Loader).Fetch", "Fetch"),
        ("main.Map[...]", "Map"),
        ("p->next", "next"),
        ("malloc@plt", "malloc"),
        ("app::run::{{closure}}", "{{closure}}"),
        ("(anonymous namespace)::f(int)", "f"),
        ("ns::helper<int>", "helper"),
    ] {
        assert_eq!(short_name(name), short, "{name}");
    }
}

#[test]
fn a_definition_elsewhere_falls_back_with_a_warning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(dir.path(), "loader.c", C_SRC);
    // Line 6 is inside load_all, but the name is another's and no
    // definition starts there.
    let map = build(&[site(1, "other", &file, 6)], &AstOptions::default());
    assert!(map.functions.is_empty());
    assert!(
        map.warnings.iter().any(
            |w| w.contains("loader.c: no definition of 1 function(s) (first: other at line 6)")
        ),
        "{:?}",
        map.warnings
    );
}

#[test]
fn unknown_language_and_missing_file_warn() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f90 = write(dir.path(), "x.f90", "program x\nend program\n");
    let gone = dir.path().join("gone.c").to_string_lossy().into_owned();
    let map = build(
        &[site(1, "x", &f90, 1), site(2, "y", &gone, 1)],
        &AstOptions {
            binary_fallback: false,
            ..AstOptions::default()
        },
    );
    assert!(map.functions.is_empty());
    assert_eq!(
        map.warnings,
        vec![
            format!("{gone}: not found, left out"),
            format!("{f90}: no grammar for its language here, left out"),
        ]
    );
}

// ---- the binary ------------------------------------------------------------

const PROG: &str = r#"#include <stdio.h>
__attribute__((noipa)) int fetch_one(int i) { return i * 3 + 1; }
__attribute__((noipa)) int load_all(int n) {
    int s = 0;
    for (int i = 0; i < n; i++) {
        s += fetch_one(i);
        if (s == 12345) puts("x");
    }
    return s;
}
int main(int argc, char **argv) { (void)argv; return load_all(argc * 1000) & 0xff; }
"#;

/// Compiles PROG with gcc -O1 -g in a fresh directory; returns the
/// directory, the (canonical) source path and the binary.
fn compile_prog() -> Option<(tempfile::TempDir, String, String)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().canonicalize().expect("canonical tempdir");
    let src = write(&root, "prog.c", PROG);
    let out = Command::new("gcc")
        .args(["-O1", "-g", "-o", "prog", "prog.c"])
        .current_dir(&root)
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!("gcc failed: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => {
            eprintln!("skipped: no gcc ({e})");
            return None;
        }
    }
    let bin = root.join("prog").to_string_lossy().into_owned();
    Some((dir, src, bin))
}

/// The binary's function `name` as the `functions` table would list it.
fn elf_site(id: u32, bin: &str, name: &str, file: &str, line: u32) -> FunctionSite {
    let data = std::fs::read(bin).expect("read binary");
    let elf = object::File::parse(&*data).expect("parse binary");
    let sym = elf
        .symbols()
        .find(|s| s.name() == Ok(name))
        .expect("symbol in binary");
    FunctionSite {
        function_id: id,
        name: name.to_string(),
        module: bin.to_string(),
        address: sym.address(),
        size: sym.size(),
        file: Some(file.to_string()),
        line: Some(line),
    }
}

fn check_binary_load_all(f: &FunctionAst) {
    assert_eq!(f.origin, Origin::Binary);
    assert!(f.blocks.is_some_and(|b| b >= 3), "{f:?}");
    assert!(f.cyclomatic >= 2, "{f:?}");
    assert_eq!(f.loops.len(), 1, "{f:?}");
    let lp = &f.loops[0];
    assert_eq!(lp.depth, 1);
    assert!(lp.address.is_some());
    // The loop's code spans the for line and its body.
    assert!((5..=6).contains(&lp.line), "{lp:?}");
    assert!((6..=8).contains(&lp.end_line), "{lp:?}");
    let call = f
        .calls
        .iter()
        .find(|c| c.callee == "fetch_one")
        .unwrap_or_else(|| panic!("no call to fetch_one in {f:?}"));
    assert_eq!(call.line, 6, "{call:?}");
    assert_eq!(call.loop_depth, 1);
    assert_eq!(call.loop_line, Some(lp.line));
    assert!(call.address.is_some());
    let puts = f
        .calls
        .iter()
        .find(|c| c.callee.starts_with("puts"))
        .unwrap_or_else(|| panic!("no call to puts in {f:?}"));
    assert_eq!(puts.loop_depth, 1, "{puts:?}");
}

#[test]
fn missing_source_uses_the_cfg() {
    let Some((_dir, src, bin)) = compile_prog() else {
        return;
    };
    std::fs::remove_file(&src).expect("remove source");
    let sites = [
        elf_site(1, &bin, "load_all", &src, 3),
        elf_site(2, &bin, "main", &src, 11),
    ];
    let map = build(&sites, &AstOptions::default());
    assert_eq!(
        map.warnings,
        vec![format!("{src}: not found, using the binary")]
    );
    check_binary_load_all(map.get(1).expect("load_all"));
    let m = map.get(2).expect("main");
    assert!(m.loops.is_empty(), "{m:?}");
    assert!(
        m.calls
            .iter()
            .any(|c| c.callee == "load_all" && c.line == 11 && c.loop_line.is_none()),
        "{m:?}"
    );
    // The call site is found by the caller's and callee's names.
    let call = map.call_site("load_all", "fetch_one").expect("site");
    assert_eq!(call.line, 6);
}

#[test]
fn stale_source_uses_the_cfg() {
    let Some((_dir, src, bin)) = compile_prog() else {
        return;
    };
    let sites = [elf_site(1, &bin, "load_all", &src, 3)];
    // Fresh: from the source.
    let map = build(&sites, &AstOptions::default());
    assert!(map.warnings.is_empty(), "{:?}", map.warnings);
    let f = map.get(1).expect("load_all");
    assert_eq!(f.origin, Origin::Source);
    assert_eq!(f.loops, vec![lp(5, 8, 1)]);
    // Edited after the build.
    let later = SystemTime::now() + Duration::from_secs(60);
    std::fs::File::options()
        .write(true)
        .open(&src)
        .and_then(|f| f.set_modified(later))
        .expect("touch source");
    let map = build(&sites, &AstOptions::default());
    assert_eq!(
        map.warnings,
        vec![format!(
            "{src}: changed since the build (newer than {bin}), using the binary"
        )]
    );
    check_binary_load_all(map.get(1).expect("load_all"));
}

#[test]
fn a_module_that_is_not_there_is_one_warning() {
    let map = build(
        &[FunctionSite {
            function_id: 1,
            name: "f".into(),
            module: "/nonexistent/lib.so".into(),
            address: 0x1000,
            size: 16,
            file: None,
            line: None,
        }],
        &AstOptions::default(),
    );
    assert!(map.functions.is_empty());
    assert_eq!(map.warnings.len(), 1);
    assert!(
        map.warnings[0].starts_with("/nonexistent/lib.so: ")
            && map.warnings[0].ends_with("no AST for 1 function(s)"),
        "{:?}",
        map.warnings
    );
}

/// A Go function's stack check jumps back to its entry: not a loop.
#[test]
fn go_stack_check_is_no_loop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().canonicalize().expect("canonical tempdir");
    write(
        &root,
        "main.go",
        "package main\n\nimport \"os\"\n\n//go:noinline\nfunc work(n int) int {\n\ts := 0\n\tfor i := 0; i < n; i++ {\n\t\ts += step(i)\n\t}\n\treturn s\n}\n\n//go:noinline\nfunc step(i int) int { return i * 3 }\n\nfunc main() { os.Exit(work(len(os.Args)) & 1) }\n",
    );
    write(&root, "go.mod", "module m\n\ngo 1.18\n");
    let out = Command::new("go")
        .args(["build", "-o", "prog", "."])
        .current_dir(&root)
        .env("GOCACHE", root.join(".cache"))
        .env("GOFLAGS", "-mod=mod")
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!("go build failed: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => {
            eprintln!("skipped: no go ({e})");
            return;
        }
    }
    let bin = root.join("prog").to_string_lossy().into_owned();
    let src = root.join("main.go").to_string_lossy().into_owned();
    std::fs::remove_file(&src).expect("remove source");
    let map = build(
        &[elf_site(1, &bin, "main.work", &src, 6)],
        &AstOptions::default(),
    );
    let f = map.get(1).expect("main.work");
    assert_eq!(
        map.warnings,
        vec![format!("{src}: not found, using the binary")]
    );
    assert_eq!(f.loops.len(), 1, "{f:?}");
    assert_eq!((f.loops[0].line, f.loops[0].depth), (8, 1), "{f:?}");
    let step = f
        .calls
        .iter()
        .find(|c| c.callee == "main.step")
        .unwrap_or_else(|| panic!("no call to main.step in {f:?}"));
    assert_eq!(
        (step.line, step.loop_line, step.loop_depth),
        (9, Some(8), 1)
    );
    let morestack = f
        .calls
        .iter()
        .find(|c| c.callee.starts_with("runtime.morestack"))
        .unwrap_or_else(|| panic!("no stack check in {f:?}"));
    assert_eq!(morestack.loop_depth, 0);
}

// ---- the table ---------------------------------------------------------------

#[test]
fn the_table_reads_back_through_the_store() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(dir.path(), "loader.c", C_SRC);
    let map = build(
        &[site(1, "load_all", &file, 4), site(2, "pick", &file, 17)],
        &AstOptions::default(),
    );
    let store_dir = dir.path().join("store");
    std::fs::create_dir(&store_dir).expect("store dir");
    let path = write_table(&map, &store_dir, "s1").expect("write");
    assert_eq!(path, store_dir.join("ast/session_id=s1/part-0.parquet"));
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(path.parent().expect("dir")), 0o700);
    // Written again: replaced, no temporary left.
    write_table(&map, &store_dir, "s1").expect("rewrite");
    let names: Vec<_> = std::fs::read_dir(path.parent().expect("dir"))
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, vec!["part-0.parquet"]);

    let store = crate::Store::open(
        store_dir.to_str().expect("utf-8"),
        &crate::OpenOptions::default(),
    )
    .expect("open store");
    let batches = store
        .sql(
            "SELECT session_id, function_id, name, origin, start_line, cardinality(loops) AS loops, \
             calls[2]['callee'] AS callee, calls[2]['loop_line'] AS loop_line, blocks \
             FROM ast ORDER BY function_id",
        )
        .expect("query");
    let b = &batches[0];
    assert_eq!(b.num_rows(), 2);
    assert_eq!(
        crate::cols::strs(b, "session_id").expect("col"),
        vec![Some("s1".into()), Some("s1".into())]
    );
    assert_eq!(
        crate::cols::strs(b, "name").expect("col"),
        vec![Some("load_all".into()), Some("pick".into())]
    );
    assert_eq!(
        crate::cols::strs(b, "origin").expect("col"),
        vec![Some("source".into()), Some("source".into())]
    );
    assert_eq!(
        crate::cols::i64s(b, "loops").expect("col"),
        vec![Some(2), Some(1)]
    );
    assert_eq!(
        crate::cols::strs(b, "callee").expect("col"),
        vec![Some("fetch_one".into()), Some("next".into())]
    );
    assert_eq!(
        crate::cols::i64s(b, "loop_line").expect("col"),
        vec![Some(7), None]
    );
    assert_eq!(
        crate::cols::i64s(b, "blocks").expect("col"),
        vec![None, None]
    );
}

#[test]
fn the_table_is_local_only() {
    let e =
        write_table(&AstMap::default(), Path::new("s3://bucket/traces"), "s1").expect_err("a URL");
    assert_eq!(
        e.to_string(),
        "s3://bucket/traces: the ast table is written to local stores only; not stored"
    );
}
