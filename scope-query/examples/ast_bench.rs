//! Times the AST map over a generated C project: 200 files of 250 lines
//! (50,000 lines, 2,000 functions with nested loops, calls and branches).
//!
//! ```text
//! cargo run --release -p scope-query --example ast_bench -- [--binary] [--threads N] [--out DIR]
//! ```
//!
//! `--out DIR` writes the source map as DIR/ast/session_id=bench (for a
//! look with DuckDB). `--binary` also compiles the project into a shared library (gcc -O1 -g),
//! removes the sources and times the fallback: every function's CFG read
//! from the library.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use object::{Object as _, ObjectSymbol as _};
use scope_query::analysis::ast::{self, AstOptions, FunctionSite, Origin};

const FILES: usize = 200;
const FUNCTIONS_PER_FILE: usize = 10;
const RUNS: usize = 5;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let binary = args.iter().any(|a| a == "--binary");
    let threads = args
        .iter()
        .position(|a| a == "--threads")
        .and_then(|i| args.get(i + 1))
        .map(|n| n.parse::<usize>())
        .transpose()
        .context("--threads N")?
        .unwrap_or(0);
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1));
    let dir = tempfile::tempdir()?;
    let root = dir.path().canonicalize()?;
    let (mut sites, lines) = generate(&root)?;
    println!(
        "{} files, {} lines, {} functions",
        FILES,
        lines,
        sites.len()
    );
    let opts = AstOptions {
        threads,
        ..AstOptions::default()
    };
    let map = time("source", &sites, &opts)?;
    check(&map, Origin::Source, sites.len())?;
    if let Some(out) = out {
        std::fs::create_dir_all(out)?;
        let path = ast::write_table(&map, Path::new(out), "bench")?;
        println!("wrote {}", path.display());
    }

    if binary {
        let lib = root.join("libbench.so");
        let t = Instant::now();
        let mut gcc = Command::new("gcc");
        gcc.args(["-O1", "-g", "-shared", "-fPIC", "-o"])
            .arg(&lib)
            .current_dir(&root);
        for i in 0..FILES {
            gcc.arg(format!("f{i}.c"));
        }
        let out = gcc.output().context("running gcc")?;
        if !out.status.success() {
            bail!("gcc failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        println!("(compiled in {:.1} s)", t.elapsed().as_secs_f64());
        let data = std::fs::read(&lib)?;
        let elf = object::File::parse(&*data)?;
        for site in &mut sites {
            let sym = elf
                .symbols()
                .find(|s| s.name() == Ok(site.name.as_str()))
                .with_context(|| format!("{} not in the library", site.name))?;
            site.module = lib.to_string_lossy().into_owned();
            site.address = sym.address();
            site.size = sym.size();
        }
        for i in 0..FILES {
            std::fs::remove_file(root.join(format!("f{i}.c")))?;
        }
        let map = time("binary", &sites, &opts)?;
        check(&map, Origin::Binary, sites.len())?;
    }
    Ok(())
}

fn time(what: &str, sites: &[FunctionSite], opts: &AstOptions) -> Result<ast::AstMap> {
    let mut times: Vec<Duration> = Vec::new();
    let mut map = ast::AstMap::default();
    for _ in 0..RUNS {
        let t = Instant::now();
        map = ast::build(sites, opts);
        times.push(t.elapsed());
    }
    times.sort();
    let loops: usize = map.functions.iter().map(|f| f.loops.len()).sum();
    let calls: usize = map.functions.iter().map(|f| f.calls.len()).sum();
    println!(
        "{what}: build() min {:.3} s, median {:.3} s, max {:.3} s over {RUNS} runs ({} functions, {loops} loops, {calls} call sites, {} warnings)",
        times[0].as_secs_f64(),
        times[RUNS / 2].as_secs_f64(),
        times[RUNS - 1].as_secs_f64(),
        map.functions.len(),
        map.warnings.len(),
    );
    Ok(map)
}

fn check(map: &ast::AstMap, origin: Origin, n: usize) -> Result<()> {
    let ok = map
        .functions
        .iter()
        .filter(|f| f.origin == origin && !f.loops.is_empty())
        .count();
    if ok != n {
        bail!("{ok} of {n} functions mapped from the {origin:?} with loops");
    }
    Ok(())
}

/// Writes the project; returns a site per function (as DWARF would give
/// it: the line of the function's name) and the number of lines.
fn generate(root: &Path) -> Result<(Vec<FunctionSite>, usize)> {
    let mut sites = Vec::new();
    let mut total = 0;
    for i in 0..FILES {
        let path = root.join(format!("f{i}.c"));
        let mut text = String::new();
        text.push_str("/* generated for ast_bench */\n");
        text.push_str("int reduce(int); int mix(int, int); void note(int); void log_value(int);\n");
        for j in 0..FUNCTIONS_PER_FILE {
            text.push_str(&format!("int helper_{i}_{j}(int);\n"));
        }
        text.push('\n');
        for j in 0..FUNCTIONS_PER_FILE {
            let line = text.lines().count() as u32 + 1;
            let name = format!("f_{i}_{j}");
            sites.push(FunctionSite {
                function_id: sites.len() as u32,
                name: name.clone(),
                module: root.join("libbench.so").to_string_lossy().into_owned(),
                address: 0,
                size: 0,
                file: Some(path.to_string_lossy().into_owned()),
                line: Some(line),
            });
            text.push_str(&format!(
                "int {name}(int n, int *v)
{{
    int s = 0;
    for (int i = 0; i < n; i++) {{
        s += helper_{i}_{j}(v[i]);
        if (s > 1000 && v[i] < 0) {{
            s = reduce(s);
        }}
        for (int k = 0; k < 4; k++) {{
            s ^= mix(s, k);
            while (s > 1 << 20) {{
                s >>= 1;
                note(s);
            }}
        }}
    }}
    switch (s & 3) {{
    case 0: s += 1; break;
    case 1: s += 2; break;
    default: break;
    }}
    s = s > 0 ? s : -s;
    log_value(s);
    return s;
}}
"
            ));
        }
        total += text.lines().count();
        std::fs::write(&path, text)?;
    }
    Ok((sites, total))
}
