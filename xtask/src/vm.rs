//! Test VMs: Debian cloud kernels fetched with apt, an initramfs holding
//! busybox, Guard's binaries and the tests (with the shared libraries they
//! need), and QEMU under software emulation. The guest reports on its serial
//! console; the host turns that into an exit status.

use std::{
    collections::BTreeSet,
    fs,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::repo::{Repo, capture, run};

/// A kernel series the tests run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Series {
    #[value(name = "6.1")]
    V6_1,
    #[value(name = "6.12")]
    V6_12,
}

impl Series {
    pub const ALL: [Series; 2] = [Series::V6_1, Series::V6_12];

    fn name(self) -> &'static str {
        match self {
            Series::V6_1 => "6.1",
            Series::V6_12 => "6.12",
        }
    }

    /// Package-name prefix and suffix of Debian's cloud images of the series.
    fn package_pattern(self) -> (&'static str, &'static str) {
        match self {
            Series::V6_1 => ("linux-image-6.1.0-", "-cloud-amd64"),
            Series::V6_12 => ("linux-image-6.12.", "+deb12-cloud-amd64"),
        }
    }
}

/// A kernel ready to boot.
pub struct Kernel {
    pub series: Series,
    pub package: String,
    pub image: PathBuf,
    /// CONFIG_LSM: the LSMs the kernel enables by default.
    pub default_lsm: String,
    /// The modules the guest loads at boot, in order: (file here, path in
    /// the guest).
    pub modules: Vec<(PathBuf, String)>,
}

/// Modules the guest loads: the kernel's socket diagnostics for TCP
/// (`sock_diag`), with which guardd finds who opened a connection to the
/// statement guard. A host loads them on demand; the guest has no modprobe.
const MODULES: [&str; 2] = ["inet_diag", "tcp_diag"];

/// The newest cloud image of `series` that apt knows, downloaded and unpacked
/// into the cache once.
pub fn kernel(repo: &Repo, series: Series) -> Result<Kernel> {
    let package = newest_package(series)?;
    let dir = repo.cache.join("kernels").join(&package);
    let image = dir.join("vmlinuz");
    let config = dir.join("config");
    let modules = dir.join("modules");
    if !image.exists() || !config.exists() || !modules.exists() {
        eprintln!("xtask: fetching kernel {package}");
        let work = dir.with_extension("tmp");
        let _ = fs::remove_dir_all(&work);
        fs::create_dir_all(&work)?;
        run(Command::new("apt-get")
            .arg("download")
            .arg(&package)
            .current_dir(&work))?;
        let deb = fs::read_dir(&work)?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .context("apt-get download produced no .deb")?;
        run(Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(work.join("root")))?;
        let boot = work.join("root/boot");
        let find = |prefix: &str| -> Result<PathBuf> {
            fs::read_dir(&boot)?
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .find(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
                })
                .with_context(|| format!("no {prefix}* in {package}"))
        };
        fs::create_dir_all(&dir)?;
        fs::copy(find("vmlinuz-")?, &image)?;
        fs::copy(find("config-")?, &config)?;
        unpack_modules(&work.join("root/lib/modules"), &modules)?;
        fs::remove_dir_all(&work)?;
    }
    let default_lsm = fs::read_to_string(&config)?
        .lines()
        .find_map(|l| {
            l.strip_prefix("CONFIG_LSM=")
                .map(|v| v.trim_matches('"').to_string())
        })
        .context("kernel config has no CONFIG_LSM")?;
    let release = fs::read_dir(&modules)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .context("no modules unpacked")?;
    let modules = MODULES
        .iter()
        .map(|m| {
            let file = format!("{release}/{m}.ko");
            (modules.join(&file), format!("/lib/modules/{file}"))
        })
        .collect();
    Ok(Kernel {
        series,
        package,
        image,
        default_lsm,
        modules,
    })
}

/// Copies [`MODULES`] from the package's `lib/modules/RELEASE/` into
/// `to/RELEASE/`, uncompressed.
fn unpack_modules(from: &Path, to: &Path) -> Result<()> {
    let release = fs::read_dir(from)?
        .filter_map(|e| e.ok())
        .next()
        .context("the kernel package has no lib/modules")?
        .file_name();
    let source = from.join(&release).join("kernel/net/ipv4");
    let target = to.join(&release);
    fs::create_dir_all(&target)?;
    for module in MODULES {
        let plain = source.join(format!("{module}.ko"));
        let packed = source.join(format!("{module}.ko.xz"));
        let out = target.join(format!("{module}.ko"));
        if plain.exists() {
            fs::copy(&plain, &out)?;
        } else {
            let unpacked = Command::new("xz")
                .arg("-dc")
                .arg(&packed)
                .output()
                .context("xz is not installed (cargo xtask setup)")?;
            if !unpacked.status.success() {
                bail!("cannot unpack {}", packed.display());
            }
            fs::write(&out, unpacked.stdout)?;
        }
    }
    Ok(())
}

/// Picks the highest version of the series from `apt-cache search`, so a
/// point release that leaves the archive does not break the tests.
fn newest_package(series: Series) -> Result<String> {
    let (prefix, suffix) = series.package_pattern();
    let search = |update: bool| -> Result<Option<String>> {
        if update {
            run(Command::new("apt-get").arg("update").arg("-qq"))?;
        }
        let out = capture(Command::new("apt-cache").args([
            "search",
            "--names-only",
            &format!("^{prefix}.*{suffix}$"),
        ]))?;
        Ok(out
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter_map(|name| {
                let middle = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
                let number: u32 = middle.parse().ok()?;
                Some((number, name.to_string()))
            })
            .max()
            .map(|(_, name)| name))
    };
    match search(false)? {
        Some(p) => Ok(p),
        None => search(true)?.with_context(|| {
            format!(
                "apt knows no {prefix}*{suffix} kernel for series {}",
                series.name()
            )
        }),
    }
}

/// Files for the initramfs: (source, path inside the guest).
pub struct Payload {
    pub files: Vec<(PathBuf, String)>,
}

/// Builds a gzip'd newc initramfs with busybox, `payload`, the shared
/// libraries the payload's executables need, and an init that mounts the
/// kernel file systems and runs `/guard/run-$mode.sh`.
pub fn initramfs(repo: &Repo, payload: &Payload, scripts: &[(&str, String)]) -> Result<PathBuf> {
    let stage = repo.cache.join("initramfs");
    let _ = fs::remove_dir_all(&stage);
    for dir in [
        "bin",
        "sbin",
        "proc",
        "sys",
        "dev",
        "tmp",
        "run",
        "guard/bin",
        "lib64",
        "etc",
    ] {
        fs::create_dir_all(stage.join(dir))?;
    }
    fs::copy("/bin/busybox", stage.join("bin/busybox"))
        .context("busybox-static is not installed (cargo xtask setup)")?;
    let mut libs = BTreeSet::new();
    for (src, dst) in &payload.files {
        let target = stage.join(dst.trim_start_matches('/'));
        fs::create_dir_all(target.parent().expect("payload paths have a directory"))?;
        fs::copy(src, &target).with_context(|| format!("copying {}", src.display()))?;
        if loadable(src)? {
            libs.extend(shared_libraries(src)?);
        }
    }
    for lib in libs {
        let target = stage.join(lib.trim_start_matches('/'));
        fs::create_dir_all(target.parent().expect("library paths are absolute"))?;
        fs::copy(&lib, &target).with_context(|| format!("copying {lib}"))?;
    }
    // PostgreSQL runs as `postgres`, the statement guard as `nobody`;
    // `postgres` has a supplementary group for `guardctl run --user`'s test,
    // `guard` is guardd's read group (the local API's tests), and `alice`
    // (in `developers`) and `bob` launch agents and log in (people.rs).
    fs::write(
        stage.join("etc/passwd"),
        "root:x:0:0:root:/:/bin/sh\npostgres:x:70:70:PostgreSQL:/tmp:/bin/false\nalice:x:1000:1000:Alice:/tmp:/bin/sh\nbob:x:1001:1001:Bob:/tmp:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    fs::write(
        stage.join("etc/group"),
        "root:x:0:\nstaff:x:50:postgres\nguard:x:60:\npostgres:x:70:\ndevelopers:x:100:alice\nalice:x:1000:\nbob:x:1001:\nnogroup:x:65534:\n",
    )?;
    write_executable(&stage.join("init"), INIT)?;
    for (mode, script) in scripts {
        write_executable(&stage.join(format!("guard/run-{mode}.sh")), script)?;
    }

    let image = repo.cache.join("initramfs.cpio.gz");
    let files = capture(Command::new("find").arg(".").current_dir(&stage))?;
    let mut cpio = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cpio --quiet -o -H newc | gzip -1 > {}",
            image.display()
        ))
        .current_dir(&stage)
        .stdin(Stdio::piped())
        .spawn()?;
    cpio.stdin
        .take()
        .expect("piped")
        .write_all(files.as_bytes())?;
    if !cpio.wait()?.success() {
        bail!("building the initramfs failed");
    }
    Ok(image)
}

fn write_executable(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::write(path, text)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// An executable or a shared object (data files need no `ldd`).
fn loadable(path: &Path) -> Result<bool> {
    use std::os::unix::fs::PermissionsExt;
    let executable = fs::metadata(path)?.permissions().mode() & 0o111 != 0;
    Ok(executable || path.extension().is_some_and(|e| e == "so"))
}

/// Shared objects an executable loads, from `ldd` (empty for static ones).
fn shared_libraries(exe: &Path) -> Result<Vec<String>> {
    let out = Command::new("ldd").arg(exe).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with('/'))
                .map(str::to_string)
        })
        .collect())
}

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/guard/bin:/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t securityfs securityfs /sys/kernel/security
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
ip link set lo up
for module in /lib/modules/$(uname -r)/*.ko; do [ -e "$module" ] && insmod "$module"; done
mode=$(sed -n 's/.*guard.mode=\([a-z-]*\).*/\1/p' /proc/cmdline)
echo "GUARD-VM-BOOTED kernel=$(uname -r) lsm=$(cat /sys/kernel/security/lsm) mode=$mode"
cd /guard
sh /guard/run-$mode.sh
echo "GUARD-VM-EXIT $?"
poweroff -f
"#;

/// How a VM run ended.
pub struct Outcome {
    /// Exit status of the guest's script, if it reported one.
    pub exit: Option<i32>,
    pub elapsed: Duration,
    /// Tests passed, from the guest's libtest summary.
    pub passed: u32,
    /// Whether the guest reached userspace (printed its boot marker).
    pub booted: bool,
}

/// Tests passed, from a libtest line `test result: ok. 28 passed; 0 failed; ...`.
fn tests_passed(line: &str) -> Option<u32> {
    let rest = &line[line.find("test result:")?..];
    rest[..rest.find(" passed")?]
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

/// Boots `kernel` with `initramfs` in mode `mode`; streams the console to
/// stderr with a prefix and to `log`.
pub fn boot(
    kernel: &Kernel,
    initramfs: &Path,
    mode: &str,
    lsm: &str,
    log: &Path,
    timeout: Duration,
) -> Result<Outcome> {
    let append = format!("console=ttyS0 panic=-1 quiet loglevel=4 lsm={lsm} guard.mode={mode}");
    // Tests and the demo run both vCPUs on one host thread: with a thread
    // per vCPU, a vCPU may run code another vCPU is patching (the kernel's
    // int3-based text_poke, as when BPF trampolines attach) from a stale
    // translation, and the kernel oopses on a breakpoint it already
    // removed. Seen on 6.12 while one guardd attached its programs and
    // another called bpf(2). The bench needs a host thread per vCPU (its
    // timed loops must not share one with the daemons) and starts one
    // guardd at a time, with no timed loop running while it attaches.
    let accel = if mode == "bench" {
        "tcg,thread=multi"
    } else {
        "tcg,thread=single"
    };
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", accel, "-cpu", "max", "-m", "2048", "-smp", "2"])
        .args([
            "-nographic",
            "-no-reboot",
            "-monitor",
            "none",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(&kernel.image)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", &append])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start qemu-system-x86_64 (cargo xtask setup installs it)")?;
    let start = Instant::now();
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = fs::File::create(log)?;
    let tag = format!("[{} {mode}]", kernel.series.name());
    let mut exit = None;
    let mut passed = 0;
    let mut booted = false;
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let line = line.trim_end_matches('\r');
                writeln!(log, "{line}")?;
                eprintln!("{tag} {line}");
                if let Some(code) = line.strip_prefix("GUARD-VM-EXIT ") {
                    exit = code.trim().parse().ok();
                }
                passed += tests_passed(line).unwrap_or(0);
                booted |= line.contains("GUARD-VM-BOOTED");
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                eprintln!("{tag} timed out after {}s", timeout.as_secs());
                break;
            }
        }
    }
    let _ = child.wait();
    Ok(Outcome {
        exit,
        elapsed: start.elapsed(),
        passed,
        booted,
    })
}
