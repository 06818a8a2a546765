//! `cargo xtask`: set-up, tests in kernel VMs, and the demo.

mod bench;
mod fuzz;
mod guest;
mod layout;
mod package;
mod repo;
mod setup;
mod vm;

use std::{path::Path, process::Command, time::Instant};

use anyhow::Result;
use clap::{Parser, Subcommand};

use guest::{boot, build, initramfs};
use repo::{Repo, cargo, run};
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
    /// What the statement guard costs, on this host (no VM): pgbench -S
    /// directly and through the guard against PostgreSQL on loopback, and
    /// the cost of classifying a statement. Writes bench/databases.md.
    DbBench,
    /// The record pipeline's throughput, on this host (no VM, no root):
    /// synthetic records through guardd's writer and shipper into a real
    /// guard-collector with SQLite and with PostgreSQL, then query and
    /// verify streaming, against a JSON + SHA-256 baseline measured in the
    /// same run. Writes bench/pipeline.md.
    PipelineBench,
    /// Debian packages of the release binaries with their systemd units:
    /// guard (guardd, guardctl, guard-pg) and guard-collector, in
    /// target/debian/.
    Package,
    /// Fuzz the policy parser and compiler, the record decoder, the
    /// collector's ingest step, the SQL classifier and the statement guard's
    /// protocol decoder (cargo-fuzz, installed
    /// on first use), each for a bounded time. Crashes are saved in
    /// tests/fuzz/artifacts/.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only this target (policy, record_decode, collector_ingest,
        /// sql_classify, pg_protocol).
        target: Option<String>,
    },
}

fn vm_tests(repo: &Repo, series: &[Series]) -> Result<()> {
    let artifacts = build(repo)?;
    let kernels = series
        .iter()
        .map(|&s| vm::kernel(repo, s))
        .collect::<Result<Vec<_>>>()?;
    let image = initramfs(repo, &artifacts, &kernels)?;
    // Each VM runs on one host thread (see vm::boot), so the kernels run side
    // by side, one per core: the suite takes as long as its slowest kernel.
    // With fewer cores than kernels, as many at a time as there are cores.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut runs: Vec<Result<(Vec<String>, u32)>> = Vec::new();
    for at_once in kernels.chunks(cores) {
        std::thread::scope(|s| {
            let handles: Vec<_> = at_once
                .iter()
                .map(|kernel| s.spawn(|| kernel_tests(repo, kernel, &image)))
                .collect();
            runs.extend(
                handles
                    .into_iter()
                    .map(|handle| handle.join().expect("a VM thread panicked")),
            );
        });
    }
    let mut report = Vec::new();
    let mut failures = Vec::new();
    let mut passed = 0;
    for run in runs {
        match run {
            Ok((lines, count)) => {
                report.extend(lines);
                passed += count;
            }
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    eprintln!("\nxtask: VM report");
    for line in report.iter().chain(&failures) {
        eprintln!("  {line}");
    }
    if !failures.is_empty() {
        anyhow::bail!(
            "kernel tests failed on {} of {} kernels (see the VM report above)",
            failures.len(),
            kernels.len()
        );
    }
    println!("vm-tests: {passed} passed, 0 failed");
    Ok(())
}

/// One kernel's tests, then the same kernel without BPF LSM in `lsm=`, where
/// guardd must refuse. Returns the report lines and the tests passed.
fn kernel_tests(repo: &Repo, kernel: &vm::Kernel, image: &Path) -> Result<(Vec<String>, u32)> {
    let tests = boot(repo, kernel, image, "test", true)?;
    let refused = boot(repo, kernel, image, "no-lsm", false)?;
    Ok((
        vec![
            format!(
                "{}: {} kernel tests passed ({:.0}s)",
                kernel.package,
                tests.passed,
                tests.elapsed.as_secs_f64()
            ),
            format!(
                "{}: without bpf in lsm=, guardd refused ({:.0}s)",
                kernel.package,
                refused.elapsed.as_secs_f64()
            ),
        ],
        tests.passed + refused.passed,
    ))
}

fn test(repo: &Repo) -> Result<()> {
    let start = Instant::now();
    setup::setup(repo)?;
    // Formatting and lints first: cheap, and they fail fast.
    run(cargo(repo).args(["fmt", "--all", "--check"]))?;
    layout::check(repo)?;
    // A lint needs no eBPF object (guard-daemon's build.rs).
    run(cargo(repo)
        .args([
            "clippy",
            "--locked",
            "--release",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])
        .env("AYA_BUILD_SKIP", "1"))?;
    // The kernel tests are not a default test target (they run in VMs).
    run(cargo(repo)
        .args([
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
        ])
        .env("AYA_BUILD_SKIP", "1"))?;
    // Unit tests: no root, no kernel.
    // The default members: everything but the eBPF crate, which only builds for BPF.
    run(cargo(repo).args(["test", "--locked", "--release"]))?;
    // Host tests: guardd must tell the truth about this host; the packages
    // install; the collector and the statement guard against real servers
    // and clients.
    let debs = package::package(repo)?;
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
            "--test",
            "databases",
            "--",
            "--ignored",
            // The collector tests each start servers; one at a time keeps
            // two cores responsive.
            "--test-threads=1",
        ])
        .env("GUARD_BIN_DIR", repo.release_dir())
        .env("GUARD_DEBS", std::env::join_paths(&debs)?))?;
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
    let kernel = vm::kernel(repo, Series::V6_12)?;
    let image = initramfs(repo, &artifacts, std::slice::from_ref(&kernel))?;
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
        Cmd::DbBench => bench::databases(&repo),
        Cmd::PipelineBench => bench::pipeline(&repo),
        Cmd::Fuzz { seconds, target } => fuzz::fuzz(&repo, seconds, target),
        Cmd::Package => package::package(&repo).map(drop),
    }
}
