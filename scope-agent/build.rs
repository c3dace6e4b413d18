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
