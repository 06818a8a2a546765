//! Generates the gRPC code from proto/ (protox: no system protoc), and
//! keeps the descriptors for server reflection.

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
    // Maps in name order, so that what guardctl prints is stable.
    tonic_prost_build::configure()
        .btree_map(".")
        .compile_fds(descriptors)?;
    Ok(())
}
