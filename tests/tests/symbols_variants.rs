//! Symbols wherever they live: the fixtures compiled in many variants
//! (DWARF 4/5, compressed, split, separate debug file, build-id
//! directories, stripped, PIE and not, C++, Rust v0), each checked through
//! `scope-agent functions` for names, file:line and parameters, and two of
//! them recorded for real to prove the probe offsets (`record`'s default
//! path; the one `attach` says `--max-overhead off`, as it counts exactly).

use std::path::{Path, PathBuf};
use std::process::Command;

use scope_tests::{
    AgentRun, agent_bin, calls_glob, duckdb, functions_glob, require_root, run_agent,
};

/// This checkout's root (from this file's crate, not the harness library,
/// which a shared target directory may have built from another checkout).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn c_source() -> PathBuf {
    root().join("tests/fixtures/c/fixture.c")
}

fn cpp_source() -> PathBuf {
    root().join("tests/fixtures/cpp/fixture.cpp")
}

/// 1-based line of `needle` in the C fixture.
fn c_source_line(needle: &str) -> u32 {
    u32::try_from(c_line_of(&c_source(), needle)).expect("line fits")
}

/// Runs `cmd` (in `dir`) and panics with its stderr if it fails.
fn run_in(dir: &Path, program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Compiles the C fixture into `dir/name` with `flags` (in `dir`, so
/// split-DWARF `.dwo` files land there).
fn cc(dir: &Path, name: &str, flags: &[&str]) -> PathBuf {
    let src = c_source();
    let mut args = vec!["-g", "-O2", "-pthread"];
    args.extend_from_slice(flags);
    args.extend(["-o", name, src.to_str().unwrap()]);
    run_in(dir, "cc", &args);
    dir.join(name)
}

fn functions(args: &[&str]) -> AgentRun {
    let mut all = vec!["functions"];
    all.extend_from_slice(args);
    run_agent(&all)
}

/// The `functions -l` row of `name` (its first column).
fn long_row(bin: &Path, name: &str, extra: &[&str]) -> (String, AgentRun) {
    let mut args: Vec<&str> = extra.to_vec();
    args.extend(["-l", bin.to_str().unwrap(), name]);
    let run = functions(&args);
    assert!(run.status.success(), "{}: {}", bin.display(), run.stderr);
    let row = run
        .stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("{name} missing for {}:\n{}", bin.display(), run.stdout))
        .to_string();
    (row, run)
}

/// `leaf` resolved with the right file:line, parameters and language.
fn assert_leaf_resolved(bin: &Path, extra: &[&str]) -> AgentRun {
    let (row, run) = long_row(bin, "leaf", extra);
    let want = format!("fixture.c:{}", c_source_line("int leaf(int x)"));
    assert!(
        row.contains(&want),
        "{}: want {want} in {row:?}",
        bin.display()
    );
    assert!(row.contains("int (int x)"), "{}: {row:?}", bin.display());
    assert!(
        row.contains("  C  "),
        "{}: language C in {row:?}",
        bin.display()
    );
    run
}

#[test]
fn dwarf_versions_compression_and_pie() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (name, flags) in [
        ("dwarf4", &["-gdwarf-4"][..]),
        ("dwarf5", &["-gdwarf-5"]),
        ("zlib", &["-gz=zlib"]),
        ("nopie", &["-no-pie", "-fno-pie"]),
    ] {
        let bin = cc(d, name, flags);
        assert_leaf_resolved(&bin, &[]);
    }
    // gcc 12 has no -gz=zstd: compress an existing binary's sections.
    let zstd = cc(d, "zstd", &["-gdwarf-5"]);
    run_in(
        d,
        "objcopy",
        &["--compress-debug-sections=zstd", "zstd", "zstd"],
    );
    let sections = Command::new("readelf")
        .args(["-SW", "zstd"])
        .current_dir(d)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&sections.stdout);
    let info = text
        .lines()
        .find(|l| l.contains(" .debug_info "))
        .expect("zstd: .debug_info");
    assert!(info.contains(" C "), "not compressed: {info}");
    assert_leaf_resolved(&zstd, &[]);
    // The non-PIE address is the absolute link-time one.
    let (row, _) = long_row(&d.join("nopie"), "leaf", &[]);
    assert!(row.contains(" 0x40"), "{row}");
}

#[test]
fn split_dwarf_dwo_and_dwp() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let split5 = cc(d, "split5", &["-gsplit-dwarf", "-gdwarf-5"]);
    assert!(d.join("split5-fixture.dwo").is_file());
    assert_leaf_resolved(&split5, &[]);

    // DWARF 4 split into a package with dwp (binutils' dwp reads DWARF 4 only),
    // the .dwo removed: only the .dwp can answer.
    let split4 = cc(d, "split4", &["-gsplit-dwarf", "-gdwarf-4"]);
    run_in(d, "dwp", &["-e", "split4", "-o", "split4.dwp"]);
    std::fs::remove_file(d.join("split4-fixture.dwo")).unwrap();
    assert_leaf_resolved(&split4, &[]);

    // Without the package: symbols, no file:line, a warning naming the .dwo.
    std::fs::remove_file(d.join("split4.dwp")).unwrap();
    let (row, run) = long_row(&split4, "leaf", &[]);
    assert!(!row.contains("fixture.c:"), "{row}");
    assert!(
        run.stderr.contains("split4-fixture.dwo not found"),
        "{}",
        run.stderr
    );
}

/// `objcopy --only-keep-debug` + strip: the debug file is found by
/// `.gnu_debuglink` next to the binary, by build-id under `--debug-dir`
/// (both layouts) and under `$DEBUGINFOD_CACHE_PATH`.
#[test]
fn separate_debug_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bin = cc(d, "sep", &[]);
    run_in(d, "objcopy", &["--only-keep-debug", "sep", "sep.debug"]);
    run_in(d, "strip", &["--strip-all", "sep"]);
    run_in(d, "objcopy", &["--add-gnu-debuglink=sep.debug", "sep"]);
    assert_leaf_resolved(&bin, &[]);

    // By build-id only: no debug link, the debug file elsewhere.
    let bin2 = cc(d, "byid", &[]);
    let id = build_id(&bin2);
    let cache = d.join("cache");
    let tree = d.join("tree");
    std::fs::create_dir_all(cache.join(&id)).unwrap();
    std::fs::create_dir_all(tree.join(".build-id").join(&id[..2])).unwrap();
    run_in(
        d,
        "objcopy",
        &[
            "--only-keep-debug",
            "byid",
            cache.join(&id).join("debuginfo").to_str().unwrap(),
        ],
    );
    std::fs::copy(
        cache.join(&id).join("debuginfo"),
        tree.join(".build-id")
            .join(&id[..2])
            .join(format!("{}.debug", &id[2..])),
    )
    .unwrap();
    run_in(d, "strip", &["--strip-all", "byid"]);
    // Stripped and nowhere to look: a clear error.
    let run = functions(&[bin2.to_str().unwrap(), "leaf"]);
    assert!(!run.status.success());
    assert!(run.stderr.contains("no symbols"), "{}", run.stderr);
    // A debuginfod cache, a .build-id tree, and the environment variable.
    assert_leaf_resolved(&bin2, &["--debug-dir", cache.to_str().unwrap()]);
    assert_leaf_resolved(&bin2, &["--debug-dir", tree.to_str().unwrap()]);
    let out = Command::new(agent_bin())
        .args(["functions", "-l", bin2.to_str().unwrap(), "leaf"])
        .env("DEBUGINFOD_CACHE_PATH", &cache)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("int (int x)"), "{stdout}");
}

/// A debug file that belongs to another build is named in a warning and
/// ignored: never wrong lines.
#[test]
fn debug_files_of_another_build_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // By build-id: the right path, the wrong build.
    let bin = cc(d, "prog", &[]);
    let other = cc(d, "other", &["-DOTHER_BUILD=1", "-O0"]);
    let id = build_id(&bin);
    assert_ne!(id, build_id(&other));
    let cache = d.join("cache");
    std::fs::create_dir_all(cache.join(&id)).unwrap();
    run_in(
        d,
        "objcopy",
        &[
            "--only-keep-debug",
            "other",
            cache.join(&id).join("debuginfo").to_str().unwrap(),
        ],
    );
    run_in(d, "strip", &["--strip-debug", "prog"]);
    let (row, run) = long_row(&bin, "leaf", &["--debug-dir", cache.to_str().unwrap()]);
    assert!(!row.contains("fixture.c:"), "wrong lines used: {row}");
    assert!(
        run.stderr.contains("differs from the binary's"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("debuginfo"), "{}", run.stderr);
    assert!(run.stderr.contains("prog"), "{}", run.stderr);
    assert!(run.stderr.contains("no DWARF debug info"), "{}", run.stderr);

    // By debug link without build-ids: the CRC decides.
    let bin = cc(d, "crc", &["-Wl,--build-id=none"]);
    cc(d, "crc_other", &["-Wl,--build-id=none", "-O0"]);
    run_in(d, "objcopy", &["--only-keep-debug", "crc", "crc.debug"]);
    run_in(d, "strip", &["--strip-debug", "crc"]);
    run_in(d, "objcopy", &["--add-gnu-debuglink=crc.debug", "crc"]);
    assert_leaf_resolved(&bin, &[]);
    run_in(
        d,
        "objcopy",
        &["--only-keep-debug", "crc_other", "crc.debug"],
    );
    let (row, run) = long_row(&bin, "leaf", &[]);
    assert!(!row.contains("fixture.c:"), "wrong lines used: {row}");
    assert!(run.stderr.contains("CRC-32"), "{}", run.stderr);
    assert!(run.stderr.contains("crc.debug"), "{}", run.stderr);
}

/// Symbols without DWARF: listed and said once; fully stripped: an error.
#[test]
fn symbols_only_and_stripped() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bin = cc(d, "nodebug", &[]);
    run_in(d, "strip", &["--strip-debug", "nodebug"]);
    let run = functions(&[bin.to_str().unwrap(), "*_fn"]);
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(run.stdout.lines().count(), 4, "{}", run.stdout);
    assert_eq!(
        run.stderr.matches("no DWARF debug info").count(),
        1,
        "{}",
        run.stderr
    );
    let bin = cc(d, "stripped", &[]);
    run_in(d, "strip", &["--strip-all", "stripped"]);
    let run = functions(&[bin.to_str().unwrap()]);
    assert!(!run.status.success());
    assert!(run.stderr.contains("stripped"), "{}", run.stderr);
}

#[test]
fn inlined_instances_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    let bin = cc(dir.path(), "o2", &[]);
    let run = functions(&["--inlined", bin.to_str().unwrap(), "do_count"]);
    assert!(run.status.success(), "{}", run.stderr);
    // `main` calls do_count (static, inlined at -O2) from two places.
    let calls: Vec<u32> = ["do_count(arg_num", "do_count(100)"]
        .iter()
        .map(|n| c_source_line(n))
        .collect();
    for line in &calls {
        let want = format!("fixture.c:{line}");
        let row = run
            .stdout
            .lines()
            .find(|l| l.contains(&want))
            .unwrap_or_else(|| panic!("no inlined do_count at {want}:\n{}", run.stdout));
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols[0], "do_count", "{row}");
        assert_eq!(cols[1], "main", "{row}");
        assert!(cols[3].starts_with("0x"), "{row}");
    }
    // --long counts them on the out-of-line function that has inlined copies.
    let (row, _) = long_row(&bin, "arg_num", &[]);
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert!(cols.contains(&"C"), "{row}");
    let inlined: u32 = cols[6].parse().unwrap_or_else(|_| panic!("{row}"));
    assert!(inlined >= 1, "{row}");
}

#[test]
fn cpp_namespaces_templates_and_anonymous_namespaces() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = cpp_source();
    run_in(d, "g++", &["-g", "-O0", "-o", "cpp", src.to_str().unwrap()]);
    let bin = d.join("cpp");
    let names = |pattern: &str| -> Vec<String> {
        let run = functions(&[bin.to_str().unwrap(), pattern]);
        assert!(run.status.success(), "{pattern}: {}", run.stderr);
        run.stdout
            .lines()
            .skip(1)
            .map(|l| {
                // Names contain spaces: cut before the module column.
                l.split("  cpp ").next().unwrap_or(l).trim().to_string()
            })
            .collect()
    };
    assert_eq!(
        names("geo::*"),
        vec!["geo::area(long, long)", "geo::Box<int>::grow(int)"]
    );
    assert_eq!(
        names("std::vector<*>::push_back"),
        vec!["std::vector<int, std::allocator<int> >::push_back(int&&)"]
    );
    assert_eq!(
        names("*hidden_helper"),
        vec!["(anonymous namespace)::hidden_helper(int)"]
    );
    let run = functions(&["-l", bin.to_str().unwrap(), "geo::Box<int>::grow"]);
    let line = c_line_of(&src, "PROBED T grow(T by)");
    assert!(
        run.stdout.contains(&format!("fixture.cpp:{line}")),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("C++"), "{}", run.stdout);
    assert!(run.stdout.contains("this, int by)"), "{}", run.stdout);
}

#[test]
fn rust_v0_and_legacy_mangling() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = root().join("tests/fixtures/rust/fixture.rs");
    // Legacy is stable rustc's default (`=legacy` itself needs -Z).
    for (name, mangling) in [("v0", "v0"), ("legacy", "legacy")] {
        let mut args = vec![
            "-g",
            "--edition",
            "2021",
            "--crate-name",
            "fixture",
            "-o",
            name,
        ];
        let flag = format!("symbol-mangling-version={mangling}");
        if mangling == "v0" {
            args.extend(["-C", &flag]);
        }
        args.push(src.to_str().unwrap());
        run_in(d, "rustc", &args);
        let bin = d.join(name);
        let nm = Command::new("nm").arg(&bin).output().unwrap();
        let symbols = String::from_utf8_lossy(&nm.stdout);
        let leaf = symbols
            .lines()
            .find(|l| l.contains("4rfix") && l.contains("4leaf"))
            .unwrap_or_else(|| panic!("{name}: no leaf symbol"));
        assert_eq!(
            leaf.split_whitespace().last().unwrap().starts_with("_R"),
            mangling == "v0",
            "{leaf}"
        );
        let (row, _) = long_row(&bin, "fixture::rfix::leaf", &[]);
        assert!(row.contains("fixture.rs:"), "{row}");
        assert!(row.contains("Rust"), "{row}");
        assert!(row.contains("u64 (u64 x)"), "{row}");
        assert!(!row.contains("::h"), "{row}");
    }
}

/// Non-PIE and a fully stripped binary with its separate debug file,
/// recorded for real: exactly 100 calls of leaf, and the functions table
/// carries the DWARF facts.
#[test]
fn recorded_non_pie_and_separate_debug_file() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let nopie = cc(d, "nopie", &["-no-pie", "-fno-pie"]);
    let sep = cc(d, "sep", &[]);
    run_in(d, "objcopy", &["--only-keep-debug", "sep", "sep.debug"]);
    run_in(d, "strip", &["--strip-all", "sep"]);
    run_in(d, "objcopy", &["--add-gnu-debuglink=sep.debug", "sep"]);
    for bin in [nopie, sep] {
        let out = d.join(format!(
            "out-{}",
            bin.file_name().unwrap().to_string_lossy()
        ));
        let run = run_agent(&[
            "record",
            "-q",
            "--out",
            out.to_str().unwrap(),
            "-f",
            "leaf",
            "--",
            bin.to_str().unwrap(),
            "count",
            "100",
        ]);
        assert!(run.status.success(), "{}: {}", bin.display(), run.stderr);
        let rows = duckdb(&format!(
            "SELECT f.name AS name, count(*) AS n, any_value(f.param_names) AS params, \
             any_value(f.param_types) AS types, any_value(f.language) AS lang, \
             any_value(f.return_type) AS ret, any_value(f.line) AS line \
             FROM read_parquet('{}', hive_partitioning = true) c \
             JOIN read_parquet('{}', hive_partitioning = true) f USING (session_id, function_id) \
             GROUP BY f.name",
            calls_glob(&out),
            functions_glob(&out)
        ));
        assert_eq!(rows.len(), 1, "{}: {rows:?}", bin.display());
        let r = &rows[0];
        assert_eq!(r["name"], "leaf");
        assert_eq!(r["n"].as_i64(), Some(100), "{}: {r:?}", bin.display());
        assert_eq!(r["params"], serde_json::json!(["x"]), "{r:?}");
        assert_eq!(r["types"], serde_json::json!(["int"]), "{r:?}");
        assert_eq!(r["lang"], "C", "{r:?}");
        assert_eq!(r["ret"], "int", "{r:?}");
        assert_eq!(
            r["line"].as_i64(),
            Some(i64::from(c_source_line("int leaf(int x)"))),
            "{r:?}"
        );
    }
}

/// The binary's GNU build-id, from `readelf -n`.
fn build_id(bin: &Path) -> String {
    let out = Command::new("readelf").arg("-n").arg(bin).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .unwrap_or_else(|| panic!("{}: no build-id", bin.display()))
        .trim()
        .to_string()
}

/// 1-based line of the first line of `src` containing `needle`.
fn c_line_of(src: &Path, needle: &str) -> usize {
    std::fs::read_to_string(src)
        .unwrap()
        .lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle} not in {}", src.display()))
        + 1
}

/// A binary replaced on disk (renamed over, as installers do) after the
/// process started: `attach` reads the mapped inode through
/// `/proc/PID/map_files`, so the probe lands in the running code, not at
/// the new file's address. The new build puts `leaf` elsewhere (-O0).
#[test]
fn attach_to_a_process_whose_binary_was_replaced() {
    use scope_tests::ServeFixture;
    use std::time::Duration;
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bin = cc(d, "prog", &[]);
    cc(d, "prog.new", &["-O0", "-DREPLACED=1"]);
    let address = |path: &Path| -> String {
        let (row, _) = long_row(path, "leaf", &[]);
        row.split_whitespace().nth(2).unwrap().to_string()
    };
    let old = address(&bin);
    assert_ne!(old, address(&d.join("prog.new")), "the builds must differ");
    let mut target = ServeFixture::spawn(&bin);
    std::fs::rename(d.join("prog.new"), &bin).unwrap();
    let pid = target.pid.to_string();
    let listed = functions(&["--pid", &pid, "leaf"]);
    assert!(listed.status.success(), "{}", listed.stderr);
    assert!(listed.stdout.contains(&old), "{}", listed.stdout);
    let out = d.join("out");
    let mut agent = scope_tests::spawn_agent(&[
        "attach",
        "--pid",
        &pid,
        // Exact counts: record every call (attach samples hot functions at
        // 5% by default).
        "--max-overhead",
        "off",
        "-f",
        "leaf",
        "--out",
        out.to_str().unwrap(),
    ]);
    agent.wait_for_stderr("attached", Duration::from_secs(60));
    target.run("count 100");
    target.close_stdin();
    assert!(target.wait().success());
    let run = agent.wait(Duration::from_secs(60));
    assert!(run.status.success(), "{}", run.stderr);
    let rows = duckdb(&format!(
        "SELECT count(*) AS n FROM read_parquet('{}', hive_partitioning=true)",
        calls_glob(&out)
    ));
    assert_eq!(rows[0]["n"].as_i64(), Some(100));
}
