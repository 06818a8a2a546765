//! What a kernel VM runs: the release binaries and the kernel tests built,
//! packed into an initramfs, and booted with QEMU.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    repo::{Repo, capture, cargo, run},
    vm,
};

/// What the VMs and host tests run.
pub struct Artifacts {
    pub bin_dir: PathBuf,
    pub vm_tests: PathBuf,
}

pub fn build(repo: &Repo) -> Result<Artifacts> {
    run(cargo(repo).args([
        "build",
        "--locked",
        "--release",
        "-p",
        "guard-daemon",
        "-p",
        "guardctl",
        "-p",
        "guard-collector",
        "-p",
        "guard-pg",
        "-p",
        "guard-tests",
        "--bins",
    ]))?;
    let json = capture(cargo(repo).args([
        "test",
        "--locked",
        "--release",
        "-p",
        "guard-tests",
        "--test",
        "vm",
        "--no-run",
        "--message-format=json",
    ]))?;
    let vm_tests = json
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["target"]["name"] == "vm" && m["profile"]["test"] == true)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .context("cargo did not report the vm test executable")?;
    Ok(Artifacts {
        bin_dir: repo.release_dir(),
        vm_tests,
    })
}

pub const BINARIES: [&str; 6] = [
    "guardd",
    "guardctl",
    "guard-collector",
    "guard-pg",
    "guard-probe",
    "guard-bench",
];

/// The initramfs every VM boots, with the modules of each of `kernels`.
pub fn initramfs(repo: &Repo, artifacts: &Artifacts, kernels: &[vm::Kernel]) -> Result<PathBuf> {
    let mut files: Vec<_> = BINARIES
        .iter()
        .map(|b| (artifacts.bin_dir.join(b), format!("/guard/bin/{b}")))
        .collect();
    files.push((artifacts.vm_tests.clone(), "/guard/tests/vm".into()));
    files.push((repo.root.join("examples/demo.sh"), "/guard/demo.sh".into()));
    // The kernel tests load the example policy.
    files.push((
        repo.root.join("examples/policy.yaml"),
        "/guard/examples/policy.yaml".into(),
    ));
    // The benchmark's peer, auditd, when installed (`cargo xtask bench`
    // installs it); its libraries come along like the binaries'.
    for tool in ["auditd", "auditctl"] {
        let path = Path::new("/sbin").join(tool);
        if path.exists() {
            files.push((path, format!("/guard/audit/{tool}")));
        }
    }
    // PostgreSQL, for the statement guard's kernel tests: the server, initdb
    // and psql, the files initdb needs, and the time zones.
    files.extend(postgresql()?);
    files.extend(pam()?);
    for kernel in kernels {
        files.extend(kernel.modules.iter().cloned());
    }
    // GUARD_TEST_ARGS passes extra libtest arguments (a filter, --nocapture)
    // to the kernel tests; the no-lsm boot always runs its one test.
    let extra = std::env::var("GUARD_TEST_ARGS").unwrap_or_default();
    let tests =
        "GUARD_BIN_DIR=/guard/bin GUARD_EXAMPLES=/guard/examples /guard/tests/vm --test-threads=1";
    vm::initramfs(
        repo,
        &vm::Payload { files },
        &[
            ("test", format!("{tests} --skip without_bpf_lsm {extra}\n")),
            ("no-lsm", format!("{tests} without_bpf_lsm\n")),
            (
                "demo",
                "GUARD_BIN_DIR=/guard/bin sh /guard/demo.sh\n".into(),
            ),
            (
                "bench",
                "GUARD_BIN_DIR=/guard/bin GUARD_AUDITD_DIR=/guard/audit /guard/bin/guard-bench suite\n"
                    .into(),
            ),
        ],
    )
}

/// PostgreSQL's programs and data files, at their own paths (`cargo xtask
/// setup` installs PostgreSQL).
fn postgresql() -> Result<Vec<(PathBuf, String)>> {
    let version = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL is not installed (cargo xtask setup)")?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.join("bin/initdb").exists())
        .context("no initdb in /usr/lib/postgresql/*/bin (cargo xtask setup)")?;
    let number = version.file_name().expect("a version directory");
    let mut files: Vec<(PathBuf, String)> = ["postgres", "initdb", "psql"]
        .iter()
        .map(|program| {
            let path = version.join("bin").join(program);
            let guest = path.display().to_string();
            (path, guest)
        })
        .collect();
    // The server's loadable modules (plpgsql, the snowball dictionaries
    // initdb sets up); not the JIT's bitcode.
    for entry in std::fs::read_dir(version.join("lib"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "so") {
            let guest = path.display().to_string();
            files.push((path, guest));
        }
    }
    for dir in [
        Path::new("/usr/share/postgresql").join(number),
        PathBuf::from("/usr/share/zoneinfo"),
    ] {
        tree(&dir, &mut files)?;
    }
    Ok(files)
}

/// util-linux's runuser and the PAM modules the login tests configure, at
/// their own paths (their libraries come along like the binaries').
fn pam() -> Result<Vec<(PathBuf, String)>> {
    let runuser = PathBuf::from("/usr/sbin/runuser");
    if !runuser.exists() {
        bail!("no /usr/sbin/runuser (cargo xtask setup installs util-linux)");
    }
    // Where Debian's libpam looks for them (/lib, even with a merged /usr).
    let modules = [
        "/lib/x86_64-linux-gnu/security",
        "/usr/lib/x86_64-linux-gnu/security",
    ]
    .iter()
    .map(Path::new)
    .find(|dir| dir.join("pam_exec.so").exists())
    .context("no PAM modules with pam_exec.so (cargo xtask setup installs libpam-modules)")?;
    let mut files = vec![(runuser, "/usr/sbin/runuser".to_string())];
    for module in ["pam_exec.so", "pam_permit.so", "pam_rootok.so"] {
        let path = modules.join(module);
        let guest = path.display().to_string();
        files.push((path, guest));
    }
    Ok(files)
}

/// Every file below `dir`, at its own path.
fn tree(dir: &Path, files: &mut Vec<(PathBuf, String)>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            tree(&path, files)?;
        } else if path.is_file() {
            let guest = path.display().to_string();
            files.push((path, guest));
        }
    }
    Ok(())
}

/// The kernel's default LSM list with `bpf` in it (or removed from it).
pub fn lsm_list(kernel: &vm::Kernel, with_bpf: bool) -> String {
    let mut lsms: Vec<&str> = kernel
        .default_lsm
        .split(',')
        .filter(|l| *l != "bpf")
        .collect();
    if with_bpf {
        lsms.push("bpf");
    }
    lsms.join(",")
}

/// Boots one VM and fails unless the guest's script exited 0.
pub fn boot(
    repo: &Repo,
    kernel: &vm::Kernel,
    initramfs: &Path,
    mode: &str,
    with_bpf: bool,
) -> Result<vm::Outcome> {
    let log = repo.cache.join(format!("vm-{}-{mode}.log", kernel.package));
    let lsm = lsm_list(kernel, with_bpf);
    let boot_once = || {
        vm::boot(
            kernel,
            initramfs,
            mode,
            &lsm,
            &log,
            // The benchmark runs longest: about 13 minutes, then the 60 s
            // load test and the time the collector needs to store it all.
            Duration::from_secs(if mode == "bench" { 40 * 60 } else { 20 * 60 }),
        )
    };
    let mut outcome = boot_once()?;
    // A guest that crashed before reaching userspace ran none of our code:
    // an emulator or firmware flake, so boot it again (at most twice).
    for _ in 0..2 {
        if outcome.booted {
            break;
        }
        eprintln!(
            "xtask: {} crashed before reaching userspace; booting it again",
            kernel.package
        );
        outcome = boot_once()?;
    }
    match outcome.exit {
        Some(0) => Ok(outcome),
        Some(code) => bail!(
            "{mode} in {} failed with exit status {code}; console log: {}",
            kernel.package,
            log.display()
        ),
        None => bail!(
            "{mode} in {} did not finish (no exit status on the console); console log: {}",
            kernel.package,
            log.display()
        ),
    }
}
