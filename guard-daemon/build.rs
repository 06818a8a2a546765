//! Builds the eBPF programs (guard-ebpf) with the nightly pinned in
//! guard-ebpf/rust-toolchain.toml and bpf-linker, into OUT_DIR, from where
//! the daemon embeds the object. `cargo xtask setup` installs both.

use std::path::Path;

fn main() -> anyhow::Result<()> {
    let ebpf_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guard-ebpf");
    let toolchain_file = ebpf_dir.join("rust-toolchain.toml");
    println!("cargo:rerun-if-changed={}", toolchain_file.display());
    let toolchain = std::fs::read_to_string(&toolchain_file)?
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("channel = ")
                .map(|v| v.trim_matches('"').to_string())
        })
        .ok_or_else(|| anyhow::anyhow!("no channel in {}", toolchain_file.display()))?;
    let root_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "guard-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&toolchain),
    )
}
