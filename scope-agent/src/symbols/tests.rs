//! Tests of `load_module` and the library search on real files: small C and
//! C++ programs compiled at test time, several ways (PIE and not, DWARF 4
//! and 5, compressed, stripped, split debug file, shared library).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use object::{Object, ObjectSection};

use super::*;

const PROG_C: &str = r#"#include <stdio.h>

static int helper(int x)
{
    return x * 2;
}

int compute_sum(int n)
{
    int s = 0;
    for (int i = 0; i < n; i++)
        s += helper(i);
    return s;
}

int public_api(int x) { return x + 1; }
int public_alias(int x) __attribute__((alias("public_api")));
int __internal_alias(int x) __attribute__((alias("public_api")));

static int impl_one(void) { return 1; }
static void *pick_impl(void) { return (void *)impl_one; }
int picked(void) __attribute__((ifunc("pick_impl")));

int main(int argc, char **argv)
{
    (void)argv;
    printf("%d %d %d\n", compute_sum(argc + 10), public_alias(argc), picked());
    return 0;
}
"#;

const LIB_C: &str = r#"static int lib_private(int x)
{
    return x * 3;
}

int lib_exported(int x)
{
    return lib_private(x) + 1;
}
"#;

const PROG_CPP: &str = r#"#include <vector>

namespace geo {
struct Widget {
    int size = 0;
    int grow(int by)
    {
        size += by;
        return size;
    }
};
}

int sum(const std::vector<int> &v)
{
    int s = 0;
    for (int x : v)
        s += x;
    return s;
}

int main()
{
    geo::Widget w;
    std::vector<int> v;
    v.push_back(w.grow(2));
    return sum(v);
}
"#;

/// The 1-based line of the first line of `src` containing `needle`.
fn line_of(src: &str, needle: &str) -> u32 {
    let index = src
        .lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle} not in source"));
    u32::try_from(index + 1).expect("small")
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Compiles `source` (written as `file_name` in `dir`) into `dir/output`.
fn compile(
    dir: &Path,
    compiler: &str,
    file_name: &str,
    source: &str,
    output: &str,
    flags: &[&str],
) -> PathBuf {
    let src = dir.join(file_name);
    fs::write(&src, source).expect("write source");
    let out = dir.join(output);
    run(Command::new(compiler)
        .args(flags)
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .current_dir(dir));
    out
}

fn compile_prog(dir: &Path, output: &str, flags: &[&str]) -> PathBuf {
    compile(dir, "cc", "prog.c", PROG_C, output, flags)
}

fn load(path: &Path) -> ModuleSymbols {
    load_module(path, path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn function<'a>(m: &'a ModuleSymbols, name: &str) -> &'a FunctionSymbol {
    m.functions
        .iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("{name} not in {}", m.path.display()))
}

/// Checks the invariants every loaded module has.
fn check_invariants(m: &ModuleSymbols) {
    assert!(!m.functions.is_empty());
    for pair in m.functions.windows(2) {
        if let [a, b] = pair {
            assert!(a.address < b.address, "sorted, one per address");
        }
    }
    for f in &m.functions {
        assert!(f.size > 0, "{f:?}");
        assert!(!f.symbol.is_empty());
    }
}

/// At -O0 without CET, x86-64 gcc starts a function with `push %rbp`; with
/// CET, with `endbr64`. Reading those bytes at `file_offset` checks the
/// offset against the file itself.
fn assert_function_starts_at_offset(path: &Path, f: &FunctionSymbol) {
    if !cfg!(target_arch = "x86_64") {
        return;
    }
    let data = fs::read(path).expect("read binary");
    let at = usize::try_from(f.file_offset).expect("offset fits");
    let bytes = data.get(at..at + 4).expect("offset inside file");
    assert!(
        bytes.first() == Some(&0x55) || bytes == [0xf3, 0x0f, 0x1e, 0xfa],
        "{}: bytes at offset {:#x} are {bytes:02x?}",
        f.name,
        f.file_offset
    );
}

fn check_prog_dwarf(m: &ModuleSymbols) {
    assert!(m.has_debug_info, "{}", m.path.display());
    for (name, needle) in [
        ("compute_sum", "int compute_sum("),
        ("helper", "static int helper("),
        ("main", "int main("),
    ] {
        let f = function(m, name);
        let file = f
            .file
            .as_deref()
            .unwrap_or_else(|| panic!("{name}: no file"));
        assert!(file.ends_with("prog.c"), "{name}: {file}");
        assert!(Path::new(file).is_absolute(), "{name}: {file}");
        assert_eq!(f.line, Some(line_of(PROG_C, needle)), "{name}");
    }
}

#[test]
fn pie_with_dwarf() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = compile_prog(dir.path(), "prog", &["-g", "-O0", "-pie", "-fPIE"]);
    let m = load(&exe);
    check_invariants(&m);
    assert_eq!(m.path, exe);
    let id = m.build_id.as_deref().expect("gcc links with a build-id");
    assert!(
        id.len() >= 16 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        "{id}"
    );
    for name in ["compute_sum", "helper", "main"] {
        let f = function(&m, name);
        assert_eq!(f.symbol, name);
        // The usual PIE layout maps the text segment at vaddr == offset.
        assert_eq!(f.file_offset, f.address, "{name}");
        assert_function_starts_at_offset(&exe, f);
    }
    check_prog_dwarf(&m);
    assert!(m.debug_file.is_none());
}

#[test]
fn non_pie_dwarf4() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = compile_prog(
        dir.path(),
        "prog",
        &["-g", "-gdwarf-4", "-O0", "-no-pie", "-fno-pie"],
    );
    let m = load(&exe);
    check_invariants(&m);
    for name in ["compute_sum", "helper", "main"] {
        let f = function(&m, name);
        if cfg!(target_arch = "x86_64") {
            assert_eq!(f.file_offset, f.address - 0x40_0000, "{name}");
        }
        assert_function_starts_at_offset(&exe, f);
    }
    check_prog_dwarf(&m);
}

#[test]
fn dwarf_4_and_5_and_compressed() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (out, flags) in [
        ("prog4", &["-g", "-gdwarf-4", "-O0"][..]),
        ("prog5", &["-g", "-gdwarf-5", "-O0"][..]),
        ("prog5z", &["-g", "-gdwarf-5", "-O0", "-gz=zlib"][..]),
        ("prog4z", &["-g", "-gdwarf-4", "-O0", "-gz=zlib-gnu"][..]),
        ("prog2", &["-g", "-gdwarf-5", "-O2"][..]),
    ] {
        let exe = compile_prog(dir.path(), out, flags);
        let m = load(&exe);
        check_invariants(&m);
        let f = function(&m, "compute_sum");
        assert!(
            f.file.as_deref().is_some_and(|f| f.ends_with("prog.c")),
            "{out}: {f:?}"
        );
        assert_eq!(f.line, Some(line_of(PROG_C, "int compute_sum(")), "{out}");
    }

    // zstd needs a binutils built with it; skip quietly otherwise.
    let exe = compile_prog(dir.path(), "progzstd-in", &["-g", "-O0"]);
    let zstd = dir.path().join("progzstd");
    let ok = Command::new("objcopy")
        .arg("--compress-debug-sections=zstd")
        .arg(&exe)
        .arg(&zstd)
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        check_prog_dwarf(&load(&zstd));
    } else {
        eprintln!("objcopy cannot compress with zstd; zstd case skipped");
    }
}

/// A compressed `.debug_info` whose header claims 2^60 bytes: refused
/// before anything is reserved (the fuzzer's allocation of 16 PiB), with
/// a warning naming the section; the symbol table still gives the functions.
#[test]
fn compressed_section_claiming_an_implausible_size_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = compile_prog(dir.path(), "prog", &["-g", "-O0", "-gz=zlib"]);
    let mut data = fs::read(&exe).expect("read");
    let at = {
        let file = object::File::parse(&*data).expect("ELF");
        let section = file.section_by_name(".debug_info").expect(".debug_info");
        let (offset, _) = section.file_range().expect("in the file");
        usize::try_from(offset).expect("fits")
    };
    // Elf64_Chdr: ch_type, ch_reserved, then ch_size.
    let size = data.get_mut(at + 8..at + 16).expect("header");
    size.copy_from_slice(&(1u64 << 60).to_le_bytes());
    let bad = dir.path().join("bad-size");
    fs::write(&bad, &data).expect("write");
    let m = load(&bad);
    assert!(!m.has_debug_info);
    function(&m, "compute_sum");
    assert!(
        m.warnings
            .iter()
            .any(|w| w.contains(".debug_info") && w.contains("1152921504606846976")),
        "{:?}",
        m.warnings
    );
}

#[test]
fn no_debug_info_still_has_symbols() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = compile_prog(dir.path(), "prog", &["-O0"]);
    let m = load(&exe);
    check_invariants(&m);
    assert!(!m.has_debug_info);
    let f = function(&m, "compute_sum");
    assert_eq!((f.file.as_deref(), f.line), (None, None));
}

#[test]
fn aliases_ifunc_and_imports_are_skipped_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = compile_prog(dir.path(), "prog", &["-g", "-O0"]);
    let m = load(&exe);
    let api = m
        .functions
        .iter()
        .filter(|f| ["public_api", "public_alias", "__internal_alias"].contains(&f.symbol.as_str()))
        .collect::<Vec<_>>();
    assert_eq!(api.len(), 1, "one symbol per address: {api:?}");
    let kept = api.first().expect("one");
    assert_ne!(kept.symbol, "__internal_alias", "plain names win");
    assert!(m.skipped.duplicate_address >= 2, "{:?}", m.skipped);
    assert!(
        !m.functions.iter().any(|f| f.symbol == "picked"),
        "IFUNC not probed"
    );
    assert!(m.skipped.not_executable >= 1, "{:?}", m.skipped);
    assert!(!m.functions.iter().any(|f| f.symbol.starts_with("printf")));
    assert!(
        m.skipped.plt_or_import >= 1,
        "printf is an import: {:?}",
        m.skipped
    );

    // Deterministic: the same file gives the same choice.
    let again = load(&exe);
    let names = |m: &ModuleSymbols| {
        m.functions
            .iter()
            .map(|f| f.symbol.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&m), names(&again));
}

#[test]
fn stripped_binary_has_no_symbols() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = compile_prog(dir.path(), "prog", &["-g", "-O0"]);
    run(Command::new("strip").arg(&exe));
    let err = load_module(&exe, &exe).expect_err("stripped");
    assert!(matches!(err, SymbolError::NoSymbols { .. }), "{err}");
    assert!(err.to_string().contains(&*exe.to_string_lossy()), "{err}");
}

#[test]
fn stripped_binary_with_debug_link() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = compile_prog(dir.path(), "prog", &["-g", "-O0"]);
    let debug = dir.path().join("prog.debug");
    run(Command::new("objcopy")
        .arg("--only-keep-debug")
        .arg(&exe)
        .arg(&debug));
    run(Command::new("strip").arg("--strip-all").arg(&exe));
    run(Command::new("objcopy")
        .arg("--add-gnu-debuglink=prog.debug")
        .arg(&exe)
        .current_dir(dir.path()));
    let m = load(&exe);
    check_invariants(&m);
    assert_eq!(m.debug_file.as_deref(), Some(debug.as_path()));
    check_prog_dwarf(&m);
    for name in ["compute_sum", "helper", "main"] {
        let f = function(&m, name);
        assert_eq!(f.file_offset, f.address, "{name}");
        assert_function_starts_at_offset(&exe, f);
    }

    // A debug file from another build (different build-id) is not used.
    let other = compile(
        dir.path(),
        "cc",
        "other.c",
        "int main(void) { return 7; }\n",
        "other",
        &["-g"],
    );
    fs::rename(&other, &debug).expect("replace debug file");
    assert!(matches!(
        load_module(&exe, &exe),
        Err(SymbolError::NoSymbols { .. })
    ));
}

#[test]
fn shared_library() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lib = compile(
        dir.path(),
        "cc",
        "lib.c",
        LIB_C,
        "libfix.so",
        &["-g", "-O0", "-shared", "-fPIC"],
    );
    let m = load(&lib);
    check_invariants(&m);
    for (name, needle) in [
        ("lib_exported", "int lib_exported("),
        ("lib_private", "static int lib_private("),
    ] {
        let f = function(&m, name);
        assert_eq!(f.file_offset, f.address, "{name}");
        assert_function_starts_at_offset(&lib, f);
        assert_eq!(f.line, Some(line_of(LIB_C, needle)));
    }

    // Stripped, a library keeps its exported functions in .dynsym.
    run(Command::new("strip").arg(&lib));
    let m = load(&lib);
    assert!(!m.has_debug_info);
    assert!(m.functions.iter().any(|f| f.name == "lib_exported"));
    assert!(!m.functions.iter().any(|f| f.name == "lib_private"));
}

#[test]
fn cpp_names_and_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = compile(
        dir.path(),
        "c++",
        "prog.cpp",
        PROG_CPP,
        "prog",
        &["-g", "-O0"],
    );
    let m = load(&exe);
    check_invariants(&m);
    let grow = function(&m, "geo::Widget::grow(int)");
    assert!(
        grow.symbol.starts_with("_ZN3geo6Widget4grow"),
        "{}",
        grow.symbol
    );
    assert_eq!(grow.line, Some(line_of(PROG_CPP, "int grow(int by)")));
    let sum = m
        .functions
        .iter()
        .find(|f| f.name.starts_with("sum(std::vector<int"))
        .expect("sum");
    assert_eq!(sum.line, Some(line_of(PROG_CPP, "int sum(")));
    let push_back = m
        .functions
        .iter()
        .find(|f| {
            f.name
                .starts_with("std::vector<int, std::allocator<int> >::push_back(")
        })
        .expect("push_back instantiated");
    assert!(push_back.file.is_some());
    let p: pattern::Pattern = "std::vector<*>::push_back".parse().expect("pattern");
    assert!(p.matches_function(push_back));
}

#[test]
fn not_elf_missing_and_corrupt_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = dir.path().join("notes.txt");
    fs::write(
        &text,
        "just some text, long enough to not be an ELF header at all\n",
    )
    .expect("write");
    assert!(matches!(
        load_module(&text, &text),
        Err(SymbolError::NotElf { .. })
    ));
    let empty = dir.path().join("empty");
    fs::write(&empty, "").expect("write");
    assert!(matches!(
        load_module(&empty, &empty),
        Err(SymbolError::NotElf { .. })
    ));
    assert!(matches!(
        load_module(dir.path(), dir.path()),
        Err(SymbolError::NotElf { .. })
    ));
    let missing = dir.path().join("missing");
    let err = load_module(&missing, &missing).expect_err("missing");
    assert!(matches!(err, SymbolError::NotFound { .. }));
    assert!(err.to_string().contains("missing"), "{err}");

    let exe = compile_prog(dir.path(), "prog", &["-g", "-O0"]);
    let data = fs::read(&exe).expect("read");
    let truncated = dir.path().join("truncated");
    fs::write(&truncated, data.get(..100).expect("long file")).expect("write");
    let err = load_module(&truncated, &truncated).expect_err("truncated");
    assert!(
        matches!(
            err,
            SymbolError::Corrupt { .. } | SymbolError::NoSymbols { .. }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("truncated"), "{err}");
}

/// Prefixes of a real file and bytes overwritten at many places: errors or
/// results, never a panic.
#[test]
fn damaged_files_do_not_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = compile_prog(dir.path(), "prog", &["-g", "-gdwarf-5", "-O0"]);
    let data = fs::read(&exe).expect("read");
    let target = dir.path().join("damaged");
    let len = data.len();
    for cut in (4..len).step_by(len / 97 + 1) {
        fs::write(&target, data.get(..cut).expect("prefix")).expect("write");
        let _ = load_module(&target, &target);
    }
    // A small deterministic generator: no rand dependency.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..200 {
        let mut copy = data.clone();
        for _ in 0..8 {
            let at = usize::try_from(next() % len as u64).expect("fits");
            if let Some(b) = copy.get_mut(at) {
                *b = next() as u8;
            }
        }
        fs::write(&target, &copy).expect("write");
        if let Ok(m) = load_module(&target, &target) {
            let _ = m.functions.len();
        }
    }
}

/// A DIE reference (`DW_AT_abstract_origin`) is an offset the file gives:
/// one outside its unit has no key, where adding it to the unit's offset
/// could overflow (found by fuzzing).
#[test]
fn die_references_outside_their_unit_have_no_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = compile_prog(dir.path(), "prog", &["-g", "-O0"]);
    let data = fs::read(&exe).expect("read");
    let file = object::File::parse(&*data).expect("ELF");
    let sections = dwarf::load_sections(&file, false).expect("sections");
    let endian = dwarf::endian_of(&file);
    let dw = sections.borrow(|d| gimli::EndianSlice::new(d, endian));
    let header = dw.units().next().expect("units").expect("one unit");
    let unit = dw.unit(header).expect("unit");
    let root = unit.header.root_offset();
    assert!(dwarf::global(&unit, root).is_some());
    for bad in [0, usize::MAX, usize::MAX - root.0, data.len()] {
        assert_eq!(dwarf::global(&unit, gimli::UnitOffset(bad)), None, "{bad}");
    }
}

/// A stripped binary whose `.gopclntab` header points its tables at the
/// end of the address space: every offset is added with overflow checks,
/// so the answer is an error naming the table, never a panic (the fuzzer
/// found the unchecked sum).
#[test]
fn go_table_offsets_near_u64_max_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = compile_prog(dir.path(), "prog", &["-O0", "-s"]);
    // The header (8 bytes, then 8 words), the function table at 72 (two
    // entries of entry offset and `_func` offset), one `_func` at 88
    // (entry offset, name offset 5), the names at 96.
    let table = |word: usize, value: u64| {
        let mut words = [1u64, 0, 0x1000, 96, 0, 0, 0, 72];
        words[word] = value;
        let mut t = vec![0xf1, 0xff, 0xff, 0xff, 0, 0, 1, 8];
        for w in words {
            t.extend_from_slice(&w.to_le_bytes());
        }
        for v in [0x10u32, 16, 0x20, 16, 0x10, 5] {
            t.extend_from_slice(&v.to_le_bytes());
        }
        t.extend_from_slice(b"\0\0\0\0\0main.f\0");
        t
    };
    let with_table = |name: &str, bytes: &[u8]| {
        let path = dir.path().join("pclntab");
        fs::write(&path, bytes).expect("write");
        let go = dir.path().join(name);
        let status = Command::new("objcopy")
            .arg(format!("--add-section=.gopclntab={}", path.display()))
            .arg(&exe)
            .arg(&go)
            .status()
            .expect("objcopy");
        assert!(status.success());
        load_module(&go, &go)
    };
    // The sane table reads: the test's layout is right.
    let m = with_table("go-sane", &table(0, 1)).expect("sane table");
    let f = function(&m, "main.f");
    assert_eq!((f.address, f.size), (0x1010, 0x10));
    for (word, value) in [
        (2, u64::MAX - 2), // text start: entry addresses overflow
        (3, u64::MAX),     // function names: the name offset overflows
        (7, u64::MAX - 3), // function table: its offsets overflow
    ] {
        match with_table(&format!("go-{word}"), &table(word, value)) {
            Err(SymbolError::GoNoSymbols { reason, .. }) => {
                assert!(reason.contains(".gopclntab"), "word {word}: {reason}");
            }
            other => panic!("word {word}: {other:?}"),
        }
    }
}

#[test]
fn needed_libraries_of_c_program() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = compile_prog(dir.path(), "prog", &["-O0"]);
    let libs = maps::needed_libraries(&exe);
    assert!(
        libs.iter()
            .any(|l| l.file_name().is_some_and(|n| n == "libc.so.6")),
        "{libs:?}"
    );
    assert!(
        libs.iter()
            .any(|l| l.to_string_lossy().contains("ld-linux")),
        "interpreter: {libs:?}"
    );
    for l in &libs {
        assert!(l.is_absolute() && l.is_file(), "{}", l.display());
        assert_eq!(fs::canonicalize(l).ok().as_ref(), Some(l));
    }
    let mut unique = libs.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), libs.len());
    assert!(maps::needed_libraries(&dir.path().join("missing")).is_empty());
}

#[test]
fn needed_libraries_follow_origin_rpath() {
    let dir = tempfile::tempdir().expect("tempdir");
    let libdir = dir.path().join("lib");
    fs::create_dir(&libdir).expect("mkdir");
    compile(
        &libdir,
        "cc",
        "lib.c",
        LIB_C,
        "libfix.so",
        &["-O0", "-shared", "-fPIC"],
    );
    let main_c = "int lib_exported(int);\nint main(void) { return lib_exported(1); }\n";
    for (out, flag) in [
        ("runpath", "-Wl,--enable-new-dtags"),
        ("rpath", "-Wl,--disable-new-dtags"),
    ] {
        fs::write(dir.path().join("main.c"), main_c).expect("write source");
        let exe = dir.path().join(out);
        run(Command::new("cc")
            .args([
                "-O0",
                "-o",
                out,
                "main.c",
                "-L",
                "lib",
                "-lfix",
                "-Wl,-rpath,$ORIGIN/lib",
                flag,
            ])
            .current_dir(dir.path()));
        let libs = maps::needed_libraries(&exe);
        let expected = fs::canonicalize(libdir.join("libfix.so")).expect("lib");
        assert!(libs.contains(&expected), "{out}: {libs:?}");
        assert!(
            libs.iter()
                .any(|l| l.file_name().is_some_and(|n| n == "libc.so.6"))
        );
    }
}

#[test]
fn loads_libc_of_own_process() {
    let modules = maps::process_modules(std::process::id()).expect("own maps");
    let libc = modules
        .iter()
        .find(|m| {
            m.path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libc.so"))
        })
        .expect("libc mapped");
    let m = load_module(&libc.open_path, &libc.path).expect("libc symbols");
    assert_eq!(m.path, libc.path);
    assert!(m.build_id.is_some());
    let malloc = function(&m, "malloc");
    assert!(malloc.size > 0);
    assert!(!m.functions.iter().any(|f| f.symbol == "__libc_malloc"));

    let main = modules.iter().find(|m| m.is_main).expect("main");
    let own = load_module(&main.open_path, &main.path).expect("test binary symbols");
    assert!(
        own.functions
            .iter()
            .any(|f| f.name.ends_with("loads_libc_of_own_process")),
        "Rust names demangled without hash"
    );

    // The code at `file_offset` in the file is the code this process runs
    // for that function: checks the offset formula on a layout (Rust's)
    // where the text segment's vaddr and file offset differ.
    let target = own
        .functions
        .iter()
        .find(|f| f.name.ends_with("tests::offset_witness"))
        .expect("offset_witness symbol");
    assert!(target.size >= 8);
    let runtime = offset_witness as *const () as u64;
    let mut in_memory = [0u8; 8];
    let mem = fs::File::open("/proc/self/mem").expect("open /proc/self/mem");
    std::os::unix::fs::FileExt::read_exact_at(&mem, &mut in_memory, runtime)
        .expect("read own code");
    let file = fs::read(&main.open_path).expect("read test binary");
    let at = usize::try_from(target.file_offset).expect("fits");
    assert_eq!(file.get(at..at + 8), Some(&in_memory[..]), "{target:?}");
}

#[inline(never)]
fn offset_witness(x: u64) -> u64 {
    std::hint::black_box(x.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(17) ^ 0x55aa)
}

/// The in-memory loader (the fuzz target's entry point) over damaged
/// copies of optimised C++ with DWARF 5: prefixes at many lengths, and
/// bytes overwritten inside the DWARF sections, where the parser works
/// hardest. Every result is an error or a module, never a panic.
#[test]
fn damaged_dwarf_in_memory_does_not_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = compile(
        dir.path(),
        "c++",
        "prog.cpp",
        PROG_CPP,
        "cpp",
        &["-g", "-gdwarf-5", "-O2"],
    );
    let data = fs::read(&exe).expect("read");
    let name = Path::new("damaged");
    let whole = load_module_bytes(&data, name).expect("the undamaged file loads");
    assert!(whole.has_debug_info);
    assert!(
        whole.functions.iter().any(|f| !f.params.is_empty()),
        "parameters read"
    );
    let len = data.len();
    for cut in (0..len).step_by(len / 211 + 1) {
        let _ = load_module_bytes(data.get(..cut).expect("prefix"), name);
    }
    let file = object::File::parse(data.as_slice()).expect("parse");
    let ranges: Vec<(usize, usize)> = {
        use object::{Object, ObjectSection};
        file.sections()
            .filter(|s| s.name().is_ok_and(|n| n.starts_with(".debug_")))
            .filter_map(|s| {
                let (start, size) = s.file_range()?;
                Some((usize::try_from(start).ok()?, usize::try_from(size).ok()?))
            })
            .filter(|&(_, size)| size > 0)
            .collect()
    };
    assert!(!ranges.is_empty(), "DWARF sections found");
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..300 {
        let mut copy = data.clone();
        let (start, size) = ranges[round % ranges.len()];
        for _ in 0..4 {
            let at = start + usize::try_from(next() % size as u64).expect("fits");
            if let Some(b) = copy.get_mut(at) {
                *b = next() as u8;
            }
        }
        if let Ok(m) = load_module_bytes(&copy, name) {
            let _ = m.inlined.len();
        }
    }
}
