//! Bad input gets one clear line naming the input and a non-zero exit:
//! never a panic, never a hang. The agent gets the bad input and nothing
//! else: `record` and `attach` on their default paths.

use scope_tests::*;

fn assert_clean_failure(run: &AgentRun, needle: &str) {
    assert!(!run.status.success(), "should fail: {}", run.stderr);
    assert_ne!(run.status.code(), Some(101), "panicked: {}", run.stderr);
    assert!(!run.stderr.contains("panicked"), "panicked: {}", run.stderr);
    assert!(
        run.stderr.contains(needle),
        "stderr should mention {needle:?}:\n{}",
        run.stderr
    );
}

#[test]
fn not_root() {
    let bin = fixture(Lang::C, "0");
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_bin();
    // Run as nobody (setpriv is in util-linux).
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&agent)
        .args(["record", "-f", "leaf", "--out"])
        .arg(dir.path().join("x"))
        .arg("--")
        .arg(&bin)
        .args(["count", "1"])
        .output()
        .expect("setpriv runs");
    let run = AgentRun {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
        out_dir: dir.path().to_path_buf(),
    };
    assert_clean_failure(&run, "needs root");
}

#[test]
fn no_such_pid() {
    require_root();
    let run = run_agent(&["attach", "--pid", "999999999", "-f", "x"]);
    assert_clean_failure(&run, "no such process: 999999999");
}

#[test]
fn pattern_that_matches_nothing_names_pattern_and_module() {
    require_root();
    let bin = fixture(Lang::C, "0");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().display().to_string();
    let run = run_agent(&[
        "record",
        "--out",
        &out,
        "-f",
        "leaf",
        "-f",
        "no_such_fn*",
        "--",
        bin.to_str().unwrap(),
        "count",
        "1",
    ]);
    assert_clean_failure(&run, "no functions matched 'no_such_fn*'");
    assert!(
        run.stderr.contains(bin.to_str().unwrap()),
        "names the module: {}",
        run.stderr
    );
    let run = run_agent(&[
        "record",
        "--out",
        &out,
        "-f",
        "libnothere*:foo",
        "--",
        bin.to_str().unwrap(),
        "count",
        "1",
    ]);
    assert_clean_failure(&run, "no module matched 'libnothere*'");
}

#[test]
fn stripped_binary() {
    require_root();
    let bin = fixture(Lang::C, "0");
    let dir = tempfile::tempdir().unwrap();
    let stripped = dir.path().join("stripped");
    std::fs::copy(&bin, &stripped).unwrap();
    let st = std::process::Command::new("strip")
        .args(["--strip-all"])
        .arg(&stripped)
        .status()
        .unwrap();
    assert!(st.success());
    let out = dir.path().join("o").display().to_string();
    let run = run_agent(&[
        "record",
        "--out",
        &out,
        "-f",
        "leaf",
        "--",
        stripped.to_str().unwrap(),
        "count",
        "1",
    ]);
    // A fully stripped PIE still has .dynsym, but not leaf.
    assert!(!run.status.success());
    assert!(
        run.stderr.contains("no symbols") || run.stderr.contains("no functions matched 'leaf'"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(stripped.to_str().unwrap()),
        "{}",
        run.stderr
    );
}

#[test]
fn not_an_elf_file() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("script.sh");
    std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = dir.path().join("o").display().to_string();
    let run = run_agent(&["record", "--out", &out, "--", script.to_str().unwrap()]);
    assert_clean_failure(&run, "not an ELF file");
    let run = run_agent(&["functions", script.to_str().unwrap()]);
    assert_clean_failure(&run, "not an ELF file");
}

#[test]
fn command_not_found() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o").display().to_string();
    let run = run_agent(&["record", "--out", &out, "--", "no-such-command-xyz"]);
    assert_clean_failure(&run, "no-such-command-xyz: command not found");
}

#[test]
fn unwritable_output_directory() {
    require_root();
    let bin = fixture(Lang::C, "0");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let out = file.join("out");
    let run = run_agent(&[
        "record",
        "--out",
        out.to_str().unwrap(),
        "-f",
        "leaf",
        "--",
        bin.to_str().unwrap(),
        "count",
        "1",
    ]);
    assert_clean_failure(&run, out.to_str().unwrap());
    // The command never ran: the output directory is checked first.
    assert!(!run.stdout.contains("ok"), "{}", run.stdout);
}

#[test]
fn bad_flags() {
    let run = run_agent(&["attach", "--pid", "1", "--duration", "soon"]);
    assert_clean_failure(&run, "soon");
    let run = run_agent(&["record"]);
    assert!(!run.status.success());
}
