//! Installs what building and testing need, idempotently: Debian packages,
//! the pinned eBPF nightly with rust-src, and bpf-linker linked against that
//! nightly's own libLLVM.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::repo::{Repo, capture, run};

/// Debian packages: QEMU for the kernel VMs, a static busybox, cpio and xz
/// for their initramfs (xz unpacks kernel modules), PostgreSQL for the
/// collector's shared-store tests and the statement guard's tests (on the
/// host and in the VMs), openssl for their test certificates, libclang for
/// the bindings of PostgreSQL's parser (guard-sql's pg_query), and
/// util-linux's runuser with PAM's modules for the login tests in the VMs.
const PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "xz-utils",
    "openssl",
    "postgresql",
    "postgresql-client",
    "libclang-dev",
    "util-linux",
    "libpam-modules",
    // The Debian packages: dpkg-shlibdeps, strip, and systemd-analyze to
    // verify their units.
    "dpkg-dev",
    "binutils",
    "systemd",
];

/// Python packages: grpcio for the test client generated from the proto
/// (and grpcio-reflection for a client that knows only what reflection
/// tells it), psycopg 3 (with its own libpq) for the statement guard's
/// tests, the OCSF schema and a JSON Schema validator for the OCSF output.
const PYTHON_PACKAGES: &[&str] = &[
    "grpcio==1.85.1",
    "grpcio-tools==1.85.1",
    "grpcio-reflection==1.85.1",
    "ocsf-json-schema==1.2.0",
    "jsonschema==4.26.0",
    "psycopg[binary]==3.3.9",
];

/// bpf-linker release, and the LLVM feature matching the pinned nightly.
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn setup(repo: &Repo) -> Result<()> {
    install_packages(PACKAGES)?;
    install_python_packages()?;
    let toolchain = repo.ebpf_toolchain()?;
    install_toolchain(&toolchain)?;
    install_bpf_linker(&toolchain)?;
    Ok(())
}

fn installed(package: &str) -> bool {
    capture(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .map(|s| s.contains("install ok installed"))
        .unwrap_or(false)
}

/// Installs the Debian packages that are missing.
pub fn install_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<_> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    run(Command::new("apt-get").arg("update").arg("-qq"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn install_python_packages() -> Result<()> {
    let present = Command::new("python3")
        .args([
            "-c",
            "import grpc, grpc_tools, grpc_reflection, psycopg, ocsf_json_schema, jsonschema",
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    if present {
        return Ok(());
    }
    eprintln!(
        "xtask: installing Python packages: {}",
        PYTHON_PACKAGES.join(" ")
    );
    run(Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--root-user-action=ignore",
        ])
        .args(PYTHON_PACKAGES))
}

fn install_toolchain(toolchain: &str) -> Result<()> {
    let has_rust_src = capture(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        toolchain,
    ]))
    .map(|s| s.lines().any(|l| l.starts_with("rust-src")))
    .unwrap_or(false);
    if has_rust_src {
        return Ok(());
    }
    eprintln!("xtask: installing toolchain {toolchain} with rust-src");
    run(Command::new("rustup").args([
        "toolchain",
        "install",
        toolchain,
        "--profile",
        "minimal",
        "--component",
        "rust-src",
    ]))
}

/// bpf-linker must use the same LLVM as the nightly that emits the bitcode.
/// Building it against the toolchain's own libLLVM avoids needing a system
/// LLVM of that exact version.
fn install_bpf_linker(toolchain: &str) -> Result<()> {
    let version = capture(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if version.contains(BPF_LINKER_VERSION) {
        return Ok(());
    }
    let sysroot = capture(
        Command::new("rustc")
            .arg(format!("+{toolchain}"))
            .args(["--print", "sysroot"]),
    )?;
    let lib = Path::new(sysroot.trim()).join("lib");
    let libllvm = std::fs::read_dir(&lib)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so"))
        .with_context(|| format!("no libLLVM in {}", lib.display()))?;
    let rustc_info = capture(
        Command::new("rustc")
            .arg(format!("+{toolchain}"))
            .arg("-vV"),
    )?;
    let major = rustc_info
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("rustc -vV shows no LLVM version")?;
    eprintln!("xtask: building bpf-linker {BPF_LINKER_VERSION} against {libllvm} (LLVM {major})");
    let lib = lib.display();
    let rustflags =
        format!("-C link-arg=-L{lib} -C link-arg=-l:{libllvm} -C link-arg=-Wl,-rpath,{lib}");
    let status = Command::new("cargo")
        .args([
            "install",
            "--locked",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--no-default-features",
        ])
        .args(["--features", &format!("llvm-{major},no-llvm-linking")])
        .env("RUSTFLAGS", rustflags)
        .status()?;
    if !status.success() {
        bail!("installing bpf-linker failed");
    }
    Ok(())
}
