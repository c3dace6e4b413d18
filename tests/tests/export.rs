//! `scope-agent export` end to end: a real recording (`record` with no
//! flags but `--out`: every function, every call, three threads) exported
//! in every format by the CLI, each file read back by an independent
//! reader (scope-query/tests/export_check.py: protoc with Perfetto's
//! published trace proto, `go tool pprof -raw`, speedscope's published
//! JSON schema, Python's json and XML parsers) and compared with what
//! DuckDB computes from the same Parquet files.

use std::path::{Path, PathBuf};
use std::process::Command;

use scope_tests::{
    Lang, agent_bin, assert_success, fixture, record_with, require_root, workspace_root,
};

fn checker() -> PathBuf {
    workspace_root().join("scope-query/tests/export_check.py")
}

/// `python3 export_check.py ARGS`; panics with its message on failure.
fn check(args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg(checker())
        .args(args)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "export_check.py {} failed (`cargo xtask test` installs its tools): {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn export(data: &Path, format: &str, out: &Path) -> String {
    let o = Command::new(agent_bin())
        .args(["export", "--data"])
        .arg(data)
        .args(["--format", format, "--output"])
        .arg(out)
        .output()
        .expect("run scope-agent export");
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "export --format {format}: {stderr}");
    stderr
}

fn speedscope_schema() -> PathBuf {
    let out = Command::new("npm")
        .args(["root", "-g"])
        .output()
        .expect("npm root -g (`cargo xtask test` installs npm and speedscope)");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        .join("speedscope/dist/release/file-format-schema.json")
}

#[test]
fn every_export_of_a_recording_reads_back_as_duckdb_computes_it() {
    require_root();
    let store = tempfile::tempdir().unwrap();
    let bin = fixture(Lang::C, "0");
    assert_success(&record_with(
        store.path(),
        &[],
        &[],
        &[bin.to_str().unwrap(), "all"],
    ));
    let dir = tempfile::tempdir().unwrap();
    let expect_text = check(&["expect-duckdb", store.path().to_str().unwrap()]);
    let expect_json: serde_json::Value = serde_json::from_str(&expect_text).unwrap();
    assert_eq!(expect_json["threads"], 3, "{expect_text}");
    assert_eq!(expect_json["counts"]["leaf"], 150, "{expect_text}");
    let expect = dir.path().join("expect.json");
    std::fs::write(&expect, expect_text).unwrap();
    let e = expect.to_str().unwrap();
    for (format, ext) in [
        ("chrome", "json"),
        ("perfetto", "perfetto-trace"),
        ("speedscope", "speedscope.json"),
        ("folded", "folded"),
        ("flamegraph", "svg"),
        ("pprof", "pb.gz"),
    ] {
        let file = dir.path().join(format!("out.{ext}"));
        let said = export(store.path(), format, &file);
        assert!(said.contains("on 3 threads"), "{said}");
        let p = file.to_str().unwrap();
        match format {
            "perfetto" => {
                let desc = dir.path().join("perfetto_trace.desc");
                check(&["perfetto-descriptor", desc.to_str().unwrap()]);
                let decoded = Command::new("protoc")
                    .arg(format!("--descriptor_set_in={}", desc.display()))
                    .arg("--decode=perfetto.protos.Trace")
                    .arg("protos/perfetto/trace/perfetto_trace.proto")
                    .stdin(std::fs::File::open(&file).unwrap())
                    .output()
                    .expect("run protoc (`cargo xtask test` installs protobuf-compiler)");
                assert!(
                    decoded.status.success(),
                    "protoc --decode: {}",
                    String::from_utf8_lossy(&decoded.stderr)
                );
                let text = dir.path().join("trace.textproto");
                std::fs::write(&text, &decoded.stdout).unwrap();
                check(&["perfetto", text.to_str().unwrap(), e]);
            }
            "speedscope" => {
                let schema = speedscope_schema();
                check(&["speedscope", p, e, schema.to_str().unwrap()]);
            }
            other => {
                check(&[other, p, e]);
            }
        }
    }
    // Bad input: an unknown format is named with the ones there are.
    let o = Command::new(agent_bin())
        .args(["export", "--data"])
        .arg(store.path())
        .args(["--format", "svg2"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("'svg2'") && err.contains("perfetto"), "{err}");
}
