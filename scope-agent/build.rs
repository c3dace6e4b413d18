//! Builds the eBPF programs of `scope-ebpf` (for `bpfel-unknown-none`, with the
//! nightly toolchain and bpf-linker) so that a plain `cargo build` builds both
//! sides. The object lands in OUT_DIR and is embedded with `include_bytes_aligned!`.
//! Without the `agent` feature (the fuzz build) there is nothing to embed.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    // Without the `agent` feature (the fuzz targets) only the symbol layer
    // is built: no eBPF object to embed.
    if std::env::var_os("CARGO_FEATURE_AGENT").is_none() {
        return Ok(());
    }
    // Worktrees sharing one target directory share this script's output
    // directory too: a path that never exists makes cargo run it on every
    // build (a no-op eBPF build takes seconds), so each embeds its own object.
    println!("cargo:rerun-if-changed=.always-rerun");
    // LEAD-HACK (temporary): the nested build's fingerprints name the other
    // worktree's sources; forget ours so scope-ebpf is rebuilt from these.
    if let Some(out) = std::env::var_os("OUT_DIR") {
        let fp = std::path::Path::new(&out)
            .join("aya-build/target/scope-ebpf/bpfel-unknown-none/release/.fingerprint");
        if let Ok(rd) = std::fs::read_dir(&fp) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with("scope-") {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "scope-ebpf")
        .ok_or_else(|| anyhow!("scope-ebpf package not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("scope-ebpf manifest has no parent directory"))?
        .as_str()
        .to_owned();
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: &root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
