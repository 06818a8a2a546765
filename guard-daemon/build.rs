//! Builds the eBPF programs (guard-ebpf) with the nightly pinned in
//! guard-ebpf/rust-toolchain.toml and bpf-linker, into OUT_DIR, from where
//! the daemon embeds the object. `cargo xtask setup` installs both.

use std::path::Path;

fn main() -> anyhow::Result<()> {
    // A lint or check (`cargo xtask test` runs clippy with AYA_BUILD_SKIP=1)
    // needs the object's path, not the object: an empty file stands in, and
    // the eBPF programs are built once, for the binaries. A guardd built
    // this way refuses to start (its programs do not load).
    if std::env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1") {
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        let out =
            std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
        std::fs::write(out.join("guard"), [])?;
        return Ok(());
    }
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
