//! Builds the eBPF programs with the pinned nightly (see scripts/setup).
use anyhow::{anyhow, Context as _};

/// Toolchain for the eBPF crate: must use LLVM <= bpf-linker's (22). Installed by scripts/setup.
const EBPF_TOOLCHAIN: &str = "nightly-2026-06-25";

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let pkg = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "agent-ebpf")
        .ok_or_else(|| anyhow!("agent-ebpf package not found"))?;
    let root = pkg
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("agent-ebpf has no directory"))?;
    println!(
        "cargo:rerun-if-changed={}",
        root.join("../agent-common/src")
    );
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "agent-ebpf",
            root_dir: root.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(EBPF_TOOLCHAIN),
    )
    .context("building the eBPF programs: run scripts/setup first (installs bpf-linker, LLVM 22 and the eBPF toolchain)")
}
