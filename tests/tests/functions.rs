//! `scope-agent functions`: what a pattern resolves to, with file:line.

use scope_tests::*;

#[test]
fn lists_fixture_functions_with_file_and_line() {
    let bin = fixture(Lang::C, "0");
    let run = run_agent(&["functions", bin.to_str().unwrap(), "*_fn"]);
    assert!(run.status.success(), "{}", run.stderr);
    for f in ["a_fn", "b_fn", "c_fn"] {
        let line = run
            .stdout
            .lines()
            .find(|l| l.starts_with(f))
            .unwrap_or_else(|| panic!("{f} missing:\n{}", run.stdout));
        let want = format!("fixture.c:{}", c_source_line(&format!("{f}(")));
        assert!(line.contains(&want), "{f}: want {want} in {line:?}");
    }
    assert!(
        run.stderr.contains("3 functions matched '*_fn'"),
        "{}",
        run.stderr
    );
}

#[test]
fn lists_library_functions_of_a_running_process() {
    require_root();
    let bin = fixture(Lang::C, "0");
    let target = ServeFixture::spawn(&bin);
    let pid = target.pid.to_string();
    let run = run_agent(&["functions", "--pid", &pid, "libc.so*:malloc"]);
    assert!(run.status.success(), "{}", run.stderr);
    assert!(
        run.stdout.lines().any(|l| l.starts_with("malloc ")),
        "{}",
        run.stdout
    );
    let run = run_agent(&["functions", "--pid", &pid, "leaf"]);
    assert!(
        run.stdout.lines().any(|l| l.starts_with("leaf ")),
        "{}",
        run.stdout
    );
}

#[test]
fn rust_names_are_demangled() {
    let bin = fixture(Lang::Rust, "0");
    let run = run_agent(&["functions", bin.to_str().unwrap(), "*rfix::leaf"]);
    assert!(run.status.success(), "{}", run.stderr);
    let line = run.stdout.lines().nth(1).unwrap_or_default();
    assert!(line.contains("rfix::leaf"), "{}", run.stdout);
    assert!(!line.contains("::h"), "{}", run.stdout);
}
