//! Builds the eBPF programs (guard-ebpf) with the nightly pinned in
//! guard-ebpf/rust-toolchain.toml and bpf-linker, into OUT_DIR, from where
//! the daemon embeds the object. `cargo xtask setup` installs both.
//!
//! Also generates the gRPC code from proto/ (protox: no system protoc).

use std::path::Path;

fn main() -> anyhow::Result<()> {
    let proto_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto");
    println!("cargo:rerun-if-changed={}", proto_dir.display());
    let descriptors = protox::compile(
        [
            proto_dir.join("guard/v1/audit.proto"),
            proto_dir.join("guard/v1/ingest.proto"),
            proto_dir.join("guard/v1/policy.proto"),
        ],
        [&proto_dir],
    )?;
    // Kept for gRPC server reflection.
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("guard_descriptors.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure().compile_fds(descriptors)?;

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
