//! Builds the eBPF programs (guard-ebpf) with the pinned nightly toolchain and
//! bpf-linker, into OUT_DIR, from where the daemon embeds the object.

/// The nightly that builds the eBPF object. bpf-linker is linked against this
/// toolchain's LLVM (`cargo xtask setup` installs both), so the two move together.
const EBPF_TOOLCHAIN: &str = "nightly-2026-05-20";

fn main() -> anyhow::Result<()> {
    let metadata = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../guard-ebpf");
    let root_dir = metadata.to_str().ok_or_else(|| anyhow::anyhow!("non-UTF-8 path"))?;
    aya_build::build_ebpf(
        [aya_build::Package { name: "guard-ebpf", root_dir, ..Default::default() }],
        aya_build::Toolchain::Custom(EBPF_TOOLCHAIN),
    )
}
