//! What `demo` and `test` need from the machine, installed when missing
//! (idempotent: a second run installs nothing and prints nothing):
//! the nightly's rust-src and bpf-linker (to build the eBPF programs),
//! bpftrace, bpftool and Python's duckdb (for the tests' cross-checks), Go
//! (for the Go fixture), tracefs mounted at /sys/kernel/tracing (bpftrace
//! reads it);
//! and what cannot be installed, checked with a clear message: root, BTF
//! and uprobe support in the kernel.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::process::{cargo, cargo_bin_dir, command, home_dir, on_path, output, run, succeeds};

/// Tells the user an install is about to happen (only then).
fn announce(what: &str) {
    println!("scope: installing {what} (one time, about a minute)...");
}

/// Installs the nightly's rust-src and bpf-linker when missing.
pub fn ensure_toolchain() -> Result<()> {
    let sysroot = nightly_sysroot()?;
    ensure_rust_src(&sysroot)?;
    ensure_bpf_linker(&sysroot)
}

/// The nightly toolchain's sysroot; a clear error if there is no nightly.
fn nightly_sysroot() -> Result<PathBuf> {
    let mut cmd = command("rustup");
    cmd.args(["run", "nightly", "rustc", "--print", "sysroot"]);
    match output(&mut cmd) {
        Ok(out) => Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())),
        Err(e) => {
            let list = output(command("rustup").args(["toolchain", "list"])).context(
                "scope needs rustup with a nightly toolchain, and `rustup toolchain list` failed",
            )?;
            let list = String::from_utf8_lossy(&list.stdout);
            if !list.lines().any(|l| l.starts_with("nightly")) {
                bail!(
                    "no nightly Rust toolchain is installed (`rustup toolchain list`: {}); scope's eBPF \
                     programs are built with nightly: rustup toolchain install nightly --component rust-src",
                    list.trim().replace('\n', ", ")
                );
            }
            Err(e)
        }
    }
}

/// `rustup component add rust-src` for nightly, unless its sources are there.
fn ensure_rust_src(sysroot: &Path) -> Result<()> {
    let library = sysroot.join("lib/rustlib/src/rust/library");
    if library.is_dir() {
        return Ok(());
    }
    announce("the nightly rust-src component");
    run(command("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    if !library.is_dir() {
        bail!(
            "rust-src was installed but {} is still missing",
            library.display()
        );
    }
    Ok(())
}

/// Builds bpf-linker against the nightly's own LLVM unless it already runs.
fn ensure_bpf_linker(sysroot: &Path) -> Result<()> {
    if succeeds(command("bpf-linker").arg("--version")) {
        return Ok(());
    }
    announce("bpf-linker");
    let (prefix, major) = link_nightly_llvm(sysroot)?;
    run(cargo()
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--no-default-features",
            "--features",
        ])
        .arg(format!("llvm-{major}"))
        .env("LLVM_PREFIX", &prefix))?;
    let mut check = command("bpf-linker");
    check.arg("--version");
    output(&mut check).with_context(|| {
        format!(
            "bpf-linker was installed into {} but does not run",
            cargo_bin_dir().display()
        )
    })?;
    Ok(())
}

/// Makes `~/.local/llvm-rust-nightly/lib` hold the nightly's libLLVM, as
/// bpf-linker's build expects an LLVM prefix; returns the prefix and the
/// LLVM major version.
fn link_nightly_llvm(sysroot: &Path) -> Result<(PathBuf, u32)> {
    let lib_dir = sysroot.join("lib");
    let lib = std::fs::read_dir(&lib_dir)
        .with_context(|| format!("cannot list {}", lib_dir.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find(|name| name.starts_with("libLLVM.so."))
        .with_context(|| {
            format!(
                "no libLLVM.so.* in {}: the nightly toolchain has no shared LLVM",
                lib_dir.display()
            )
        })?;
    // libLLVM.so.22.1-rust-1.97.0-nightly → 22
    let major: u32 = lib["libLLVM.so.".len()..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("cannot read the LLVM version from {lib}"))?;
    let prefix = home_dir().join(".local/llvm-rust-nightly");
    let dest = prefix.join("lib");
    std::fs::create_dir_all(&dest).with_context(|| format!("cannot create {}", dest.display()))?;
    for name in ["libLLVM.so", lib.as_str()] {
        let link = dest.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(lib_dir.join(&lib), &link)
            .with_context(|| format!("cannot create the symlink {}", link.display()))?;
    }
    Ok((prefix, major))
}

/// Checks that we run as root on a kernel with BTF and uprobes; `task` is
/// the xtask subcommand, for the message.
pub fn ensure_root_and_bpf(task: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "cargo xtask {task} needs root: it loads eBPF programs (run it with sudo, e.g. \
             sudo -E env \"PATH=$PATH\" cargo xtask {task})"
        );
    }
    let requirements = [
        (
            "/sys/kernel/btf/vmlinux",
            "kernel BTF (CONFIG_DEBUG_INFO_BTF=y)",
        ),
        (
            "/sys/bus/event_source/devices/uprobe",
            "uprobe support (CONFIG_UPROBE_EVENTS=y)",
        ),
    ];
    for (path, what) in requirements {
        if !Path::new(path).exists() {
            bail!("{path} does not exist: scope needs a kernel with {what}");
        }
    }
    Ok(())
}

/// Installs the tests' reference tools when missing: bpftrace, bpftool,
/// chromium, curl, golang-go and protobuf-compiler (Debian packages), Python's duckdb,
/// perfetto and jsonschema (PyPI) and speedscope (npm); mounts tracefs
/// for bpftrace when it is not mounted.
pub fn ensure_test_tools() -> Result<()> {
    if !on_path("bpftrace") || !on_path("bpftool") {
        announce("bpftrace and bpftool");
        apt_install(&["bpftrace", "bpftool"])?;
    }
    ensure_tracefs()?;
    // The viewer's browser tests (tests/tests/viewer.rs) drive Debian's
    // Chromium headless; curl asks the server directly.
    if !on_path("chromium") || !on_path("curl") {
        announce("chromium and curl (the viewer's browser tests)");
        apt_install(&["chromium", "curl"])?;
    }
    // The Go fixture is built at test time (tests/fixtures/go).
    if !on_path("go") {
        announce("the Go toolchain (golang-go)");
        apt_install(&["golang-go"])?;
    }
    // The export tests' independent readers (scope-query/tests/export_check.py):
    // protoc with Perfetto's published trace proto (the PyPI package
    // perfetto ships it), jsonschema with speedscope's published schema (the
    // npm package speedscope ships it).
    if !on_path("protoc") {
        announce("protoc (protobuf-compiler)");
        apt_install(&["protobuf-compiler"])?;
    }
    for (module, package) in [("perfetto", "perfetto"), ("jsonschema", "jsonschema")] {
        if !succeeds(command("python3").args([
            "-c",
            &format!(
                "import importlib.util, sys; sys.exit(importlib.util.find_spec('{module}') is None)"
            ),
        ])) {
            announce(&format!("Python's {package}"));
            pip_install(&[package])?;
        }
    }
    if !speedscope_schema_installed() {
        announce("speedscope's file format schema (npm package speedscope)");
        if !on_path("npm") {
            apt_install(&["npm"])?;
        }
        run(command("npm").args(["install", "-g", "--no-fund", "--no-audit", "speedscope@1"]))?;
        if !speedscope_schema_installed() {
            bail!(
                "`npm install -g speedscope` succeeded but its file-format-schema.json is still missing"
            );
        }
    }
    if !python_has_duckdb() {
        announce("Python's duckdb");
        pip_install_duckdb()?;
        if !python_has_duckdb() {
            bail!(
                "`python3 -m pip install duckdb` succeeded but `python3 -c 'import duckdb'` still fails"
            );
        }
    }
    ensure_object_store_tools()?;
    // The hooks test's servers: PostgreSQL 15 (Debian's) and openssl.
    if !Path::new("/usr/lib/postgresql/15/bin/initdb").exists() {
        announce("postgresql (the hooks test runs a server on loopback)");
        apt_install(&["postgresql"])?;
    }
    if !on_path("openssl") {
        apt_install(&["openssl"])?;
    }
    // The many-nodes test: a real NTP server (chronyd, run with control of
    // the system clock off), a clock set wrong for one node (libfaketime),
    // namespaces and a bridge (iproute2), hosts (util-linux's unshare).
    if !Path::new("/usr/sbin/chronyd").exists() {
        announce("chrony (the nodes test measures clocks against its NTP server)");
        apt_install(&["chrony"])?;
    }
    if !Path::new("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1").exists() {
        announce("libfaketime (the nodes test sets one node's clock wrong)");
        apt_install(&["libfaketime"])?;
    }
    if !on_path("ip") {
        apt_install(&["iproute2"])?;
    }
    // The OTLP test's receiver decodes with the published definitions.
    if !succeeds(command("python3").args([
        "-c",
        "from opentelemetry.proto.collector.trace.v1 import trace_service_pb2",
    ])) {
        announce("opentelemetry-proto (the OTLP test's receiver decodes with it)");
        pip_install(&["opentelemetry-proto"])?;
    }
    Ok(())
}

/// The object-storage tests' tools: an S3 server (`moto_server` from
/// `moto[server]`, with boto3) and, in a venv of its own so it does not
/// replace the duckdb the other tests use, DuckDB 1.4.4 with the httpfs
/// extension from PyPI (DuckDB cannot download extensions here).
fn ensure_object_store_tools() -> Result<()> {
    if !on_path("moto_server") {
        announce("moto[server] (an S3 server for the tests)");
        pip_install(&["moto[server]"])?;
    }
    let venv = crate::process::target_dir()?.join(HTTPFS_VENV);
    let python = venv.join("bin/python");
    let ready = || {
        succeeds(command(&python).args([
            "-c",
            "import duckdb, duckdb_ext; assert duckdb.__version__ == '1.4.4'",
        ]))
    };
    if !ready() {
        announce("DuckDB 1.4.4 with httpfs in a venv");
        if !succeeds(command("python3").args(["-m", "venv", "--help"])) {
            apt_install(&["python3-venv"])?;
        }
        run(command("python3").arg("-m").arg("venv").arg(&venv))?;
        run(command(&python).args([
            "-m",
            "pip",
            "install",
            "-q",
            "duckdb==1.4.4",
            "duckdb-ext-httpfs==1.4.4.20260205",
        ]))?;
        if !ready() {
            bail!(
                "{} has no duckdb 1.4.4 with httpfs after pip install",
                venv.display()
            );
        }
    }
    Ok(())
}

/// The venv under the target directory (tests/tests/objstore.rs runs its
/// Python).
pub const HTTPFS_VENV: &str = "duckdb-httpfs-venv";

/// `python3 -m pip install PACKAGES`, with `--break-system-packages` when
/// the system Python refuses (PEP 668).
fn pip_install(packages: &[&str]) -> Result<()> {
    if !succeeds(command("python3").args(["-m", "pip", "--version"])) {
        apt_install(&["python3-pip"])?;
    }
    let pip = || {
        let mut cmd = command("python3");
        cmd.args(["-m", "pip", "install", "-q"]).args(packages);
        cmd
    };
    if output(&mut pip()).is_ok() {
        return Ok(());
    }
    run(pip().arg("--break-system-packages"))
}

/// Where bpftrace looks for tracefs (and `/sys/kernel/debug/tracing` on
/// older kernels points to).
const TRACEFS: &str = "/sys/kernel/tracing";

/// Mounts tracefs on /sys/kernel/tracing unless it is mounted (a fresh
/// container often has the directory but not the mount); bpftrace needs it
/// to attach its uprobes. Idempotent: nothing happens when it is mounted.
fn ensure_tracefs() -> Result<()> {
    let mounted = |dir: &str| Path::new(dir).join("uprobe_events").exists();
    if mounted(TRACEFS) {
        return Ok(());
    }
    println!("scope: mounting tracefs on {TRACEFS} (bpftrace needs it)");
    run(command("mount").args(["-t", "tracefs", "nodev", TRACEFS]))?;
    if !mounted(TRACEFS) {
        bail!(
            "mount -t tracefs nodev {TRACEFS} succeeded but {TRACEFS}/uprobe_events is still missing"
        );
    }
    Ok(())
}

/// `apt-get update` and `apt-get install` of `packages`.
pub fn apt_install(packages: &[&str]) -> Result<()> {
    if !on_path("apt-get") {
        bail!(
            "{} missing and there is no apt-get: install them by hand",
            packages.join(", ")
        );
    }
    run(command("apt-get").args(["update", "-q"]))?;
    run(command("apt-get")
        .args(["install", "-y", "-q"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// Whether `python3 -c 'import duckdb'` works.
pub fn python_has_duckdb() -> bool {
    succeeds(command("python3").args(["-c", "import duckdb"]))
}

/// Whether npm's global packages hold speedscope's file format schema
/// (what the export tests validate speedscope files with).
fn speedscope_schema_installed() -> bool {
    let Ok(out) = output(command("npm").args(["root", "-g"])) else {
        return false;
    };
    Path::new(String::from_utf8_lossy(&out.stdout).trim())
        .join("speedscope/dist/release/file-format-schema.json")
        .is_file()
}

/// `python3 -m pip install duckdb`, with pip itself installed first when
/// missing, and `--break-system-packages` when the system Python refuses
/// (PEP 668).
pub fn pip_install_duckdb() -> Result<()> {
    if !succeeds(command("python3").args(["-m", "pip", "--version"])) {
        apt_install(&["python3-pip"])?;
    }
    let pip = || {
        let mut cmd = command("python3");
        cmd.args(["-m", "pip", "install", "-q", "duckdb"]);
        cmd
    };
    if output(&mut pip()).is_ok() {
        return Ok(());
    }
    run(pip().arg("--break-system-packages"))
}
