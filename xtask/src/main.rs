//! `cargo xtask`: set-up, tests in kernel VMs, and the demo.

mod bench;
mod fuzz;
mod layout;
mod setup;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

use vm::Series;

/// Guard's project automation.
#[derive(Parser)]
#[command(max_term_width = 100)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the build needs: Debian packages (qemu, busybox, cpio),
    /// the pinned eBPF nightly with rust-src, and bpf-linker. Idempotent.
    Setup,
    /// Everything: set-up, unit tests, host tests, and the kernel tests in
    /// VMs on every supported kernel series.
    Test,
    /// Check that no modules of a crate import each other in a cycle.
    Layout,
    /// Only the kernel tests in VMs.
    VmTest {
        /// Kernel series to test on (default: all).
        #[arg(long, value_enum)]
        kernel: Vec<Series>,
    },
    /// The demonstration: guardd with an example policy and an agent trying
    /// destructive actions. Runs on this host if it can enforce, else in a VM.
    Demo,
    /// What Guard costs: per-hook loops in each configuration against a
    /// baseline measured in the same boot, decision cost against policy
    /// size, BPF program run times and guardd's footprint. Writes
    /// bench/results.md and bench/results.json.
    Bench {
        /// Run on this host (it must be able to enforce) instead of a VM.
        #[arg(long)]
        host: bool,
    },
    /// Fuzz the policy parser and compiler, the record decoder and the
    /// collector's ingest step (cargo-fuzz, installed on first use), each
    /// for a bounded time. Crashes are saved in tests/fuzz/artifacts/.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only this target (policy, record_decode, collector_ingest).
        target: Option<String>,
    },
}

/// Paths of the repository.
pub struct Repo {
    root: PathBuf,
    /// Downloads and generated files (kernels, initramfs, logs).
    cache: PathBuf,
}

impl Repo {
    fn new() -> Result<Self> {
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
    fn ebpf_toolchain(&self) -> Result<String> {
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

    fn release_dir(&self) -> PathBuf {
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

fn cargo(repo: &Repo) -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(&repo.root);
    cmd
}

/// What the VMs and host tests run.
struct Artifacts {
    bin_dir: PathBuf,
    vm_tests: PathBuf,
}

fn build(repo: &Repo) -> Result<Artifacts> {
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

const BINARIES: [&str; 5] = [
    "guardd",
    "guardctl",
    "guard-collector",
    "guard-probe",
    "guard-bench",
];

fn initramfs(repo: &Repo, artifacts: &Artifacts) -> Result<PathBuf> {
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

/// The kernel's default LSM list with `bpf` in it (or removed from it).
fn lsm_list(kernel: &vm::Kernel, with_bpf: bool) -> String {
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
fn boot(
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

fn vm_tests(repo: &Repo, series: &[Series]) -> Result<()> {
    let artifacts = build(repo)?;
    let image = initramfs(repo, &artifacts)?;
    let mut report = Vec::new();
    let mut passed = 0;
    for &s in series {
        let kernel = vm::kernel(repo, s)?;
        let run = boot(repo, &kernel, &image, "test", true)?;
        report.push(format!(
            "{}: {} kernel tests passed ({:.0}s)",
            kernel.package,
            run.passed,
            run.elapsed.as_secs_f64()
        ));
        passed += run.passed;
        // The same kernel with BPF LSM left out of `lsm=`: guardd must refuse.
        let run = boot(repo, &kernel, &image, "no-lsm", false)?;
        report.push(format!(
            "{}: without bpf in lsm=, guardd refused ({:.0}s)",
            kernel.package,
            run.elapsed.as_secs_f64()
        ));
        passed += run.passed;
    }
    eprintln!("\nxtask: VM report");
    for line in report {
        eprintln!("  {line}");
    }
    // Every failure above already stopped the run; this is the closing count.
    println!("vm-tests: {passed} passed, 0 failed");
    Ok(())
}

fn test(repo: &Repo) -> Result<()> {
    let start = Instant::now();
    setup::setup(repo)?;
    // Formatting and lints first: cheap, and they fail fast.
    run(cargo(repo).args(["fmt", "--all", "--check"]))?;
    run(cargo(repo).args([
        "clippy",
        "--locked",
        "--release",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The kernel tests are not a default test target (they run in VMs).
    run(cargo(repo).args([
        "clippy",
        "--locked",
        "--release",
        "--package",
        "guard-tests",
        "--test",
        "vm",
        "--",
        "-D",
        "warnings",
    ]))?;
    // Unit tests: no root, no kernel.
    // The default members: everything but the eBPF crate, which only builds for BPF.
    run(cargo(repo).args(["test", "--locked", "--release"]))?;
    // Host tests: guardd must tell the truth about this host.
    build(repo)?;
    run(cargo(repo)
        .args([
            "test",
            "--locked",
            "--release",
            "-p",
            "guard-tests",
            "--test",
            "host",
            "--test",
            "collector",
            "--",
            "--ignored",
            // The collector tests each start servers; one at a time keeps
            // two cores responsive.
            "--test-threads=1",
        ])
        .env("GUARD_BIN_DIR", repo.release_dir()))?;
    vm_tests(repo, &Series::ALL)?;
    eprintln!(
        "xtask: all tests passed in {:.0}s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Whether guardd can enforce on this host; prints its reason when not.
fn host_can_enforce(repo: &Repo) -> Result<bool> {
    let out = Command::new(repo.release_dir().join("guardd"))
        .arg("--check")
        .output()?;
    if out.status.success() {
        return Ok(true);
    }
    let reason = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "xtask: this host cannot enforce; guardd --check said:\n{}",
        reason.trim_end()
    );
    Ok(false)
}

fn demo(repo: &Repo) -> Result<()> {
    setup::setup(repo)?;
    let artifacts = build(repo)?;
    if host_can_enforce(repo)? {
        return run(Command::new("sh")
            .arg(repo.root.join("examples/demo.sh"))
            .env("GUARD_BIN_DIR", &artifacts.bin_dir));
    }
    eprintln!("xtask: running the demo in a VM with Debian's 6.12 cloud kernel instead\n");
    let image = initramfs(repo, &artifacts)?;
    let kernel = vm::kernel(repo, Series::V6_12)?;
    boot(repo, &kernel, &image, "demo", true).map(drop)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let repo = Repo::new()?;
    match args.command {
        Cmd::Setup => setup::setup(&repo),
        Cmd::Test => test(&repo),
        Cmd::VmTest { kernel } => {
            setup::setup(&repo)?;
            vm_tests(
                &repo,
                if kernel.is_empty() {
                    &Series::ALL
                } else {
                    &kernel
                },
            )
        }
        Cmd::Layout => layout::check(&repo),
        Cmd::Demo => demo(&repo),
        Cmd::Bench { host } => bench::bench(&repo, host),
        Cmd::Fuzz { seconds, target } => fuzz::fuzz(&repo, seconds, target),
    }
}
