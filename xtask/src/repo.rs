//! The repository's paths, and running commands in it.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// Paths of the repository.
pub struct Repo {
    pub root: PathBuf,
    /// Downloads and generated files (kernels, initramfs, logs).
    pub cache: PathBuf,
}

impl Repo {
    pub fn new() -> Result<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask has a parent")?
            .to_path_buf();
        let cache = std::env::var_os("GUARD_CACHE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join(".cache"));
        std::fs::create_dir_all(&cache)?;
        Ok(Self { root, cache })
    }

    /// The eBPF toolchain, from guard-ebpf/rust-toolchain.toml.
    pub fn ebpf_toolchain(&self) -> Result<String> {
        let file = self.root.join("guard-ebpf/rust-toolchain.toml");
        std::fs::read_to_string(&file)?
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("channel = ")
                    .map(|v| v.trim_matches('"').to_string())
            })
            .with_context(|| format!("no channel in {}", file.display()))
    }

    pub fn release_dir(&self) -> PathBuf {
        std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| self.root.join("target"))
            .join("release")
    }
}

/// Runs a command, failing on a non-zero exit.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Runs a command and returns its stdout.
pub fn capture(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn cargo(repo: &Repo) -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(&repo.root);
    cmd
}
