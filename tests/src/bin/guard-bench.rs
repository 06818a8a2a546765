//! `guard-bench`: what Guard costs, measured in one boot.
//!
//! `guard-bench loops OP N ARG` times N system calls of one kind and prints
//! one JSON line with the median, p99 and mean in nanoseconds:
//!   exec PROGRAM      fork, execv(PROGRAM), wait (the whole launch)
//!   unlink DIR        create DIR/bench-file (untimed), unlink it (timed)
//!   connect ADDR      TCP connect(2) to ADDR (a listener the suite runs)
//!   sendto ADDR       UDP sendto(2) to ADDR
//!
//! `guard-bench suite` (root, `GUARD_BIN_DIR` set, a BPF LSM kernel) runs
//! the loops in every configuration: no programs loaded; loaded and the
//! caller untagged; tagged and allowed without a record; with a record per
//! decision; tagged and denied. It also measures the decision cost with 1,
//! 1,000 and 100,000 rules, each program's average run time from the
//! kernel's BPF statistics, and guardd's start-up time and memory. Every
//! result is one line `GUARD-BENCH {json}` on stdout; `cargo xtask bench`
//! turns them into the report.

use std::{
    ffi::CString,
    fs,
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use guard_tests::{Guardd, bin};
use serde_json::{Value, json};

/// Iterations per loop, before the first 5% are dropped as warm-up.
const ITERATIONS: &[(&str, usize)] = &[
    ("exec", 2_000),
    ("unlink", 20_000),
    ("connect", 10_000),
    ("sendto", 20_000),
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("loops") => {
            let n = args[2].parse().expect("an iteration count");
            println!("{}", loops(&args[1], n, &args[3]));
        }
        Some("suite") => suite(),
        _ => {
            eprintln!("usage: guard-bench loops OP N ARG | guard-bench suite");
            std::process::exit(2);
        }
    }
}

// ---------------------------------------------------------------- loops --

fn loops(op: &str, n: usize, arg: &str) -> Value {
    let mut times = Vec::with_capacity(n);
    let mut errors = 0u64;
    let mut last_errno = 0;
    let mut timed = |result: (Duration, i32)| {
        times.push(result.0.as_nanos() as u64);
        if result.1 != 0 {
            errors += 1;
            last_errno = result.1;
        }
    };
    match op {
        "exec" => {
            let program = CString::new(arg).unwrap();
            for _ in 0..n {
                timed(exec(&program));
            }
        }
        "unlink" => {
            let file = Path::new(arg).join("bench-file");
            let path = CString::new(file.as_os_str().as_bytes()).unwrap();
            for _ in 0..n {
                let _ = fs::File::create(&file);
                let start = Instant::now();
                let rc = unsafe { libc::unlink(path.as_ptr()) };
                timed((start.elapsed(), errno(rc)));
            }
            let _ = fs::remove_file(&file);
        }
        "connect" => {
            let to: SocketAddr = arg.parse().expect("an address");
            for _ in 0..n {
                let start = Instant::now();
                let result = TcpStream::connect(to);
                let elapsed = start.elapsed();
                if let Ok(stream) = &result {
                    reset_on_close(stream);
                }
                timed((
                    elapsed,
                    result.err().and_then(|e| e.raw_os_error()).unwrap_or(0),
                ));
            }
        }
        "sendto" => {
            let to: SocketAddr = arg.parse().expect("an address");
            let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
            for _ in 0..n {
                let start = Instant::now();
                let result = socket.send_to(b"guard-bench", to);
                let elapsed = start.elapsed();
                timed((
                    elapsed,
                    result.err().and_then(|e| e.raw_os_error()).unwrap_or(0),
                ));
            }
        }
        _ => panic!("unknown op {op}"),
    }
    let warm = times.split_off(n / 20);
    summary(op, warm, errors, last_errno)
}

/// Closes with a reset instead of leaving the port in TIME_WAIT, so that
/// thousands of connects do not run out of ephemeral ports.
fn reset_on_close(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a correctly sized option.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            size_of::<libc::linger>() as u32,
        );
    }
}

fn errno(rc: libc::c_int) -> i32 {
    if rc < 0 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    } else {
        0
    }
}

/// fork + execv + wait; the child's execv errno is its exit status.
fn exec(program: &CString) -> (Duration, i32) {
    let argv = [program.as_ptr(), std::ptr::null()];
    let start = Instant::now();
    // SAFETY: the child only calls execv and _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        unsafe {
            libc::execv(program.as_ptr(), argv.as_ptr());
            libc::_exit(*libc::__errno_location());
        }
    }
    let mut status = 0;
    unsafe { libc::waitpid(pid, &mut status, 0) };
    let elapsed = start.elapsed();
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    (elapsed, code)
}

fn summary(op: &str, mut times: Vec<u64>, errors: u64, errno: i32) -> Value {
    times.sort_unstable();
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    json!({
        "op": op,
        "n": times.len(),
        "median_ns": at(0.5),
        "p99_ns": at(0.99),
        "mean_ns": times.iter().sum::<u64>() / times.len() as u64,
        "errors": errors,
        "errno": errno,
    })
}

// ---------------------------------------------------------------- suite --

struct Targets {
    dir: PathBuf,
    /// Allowed and denied targets per op.
    allowed: Vec<(&'static str, String)>,
    denied: Vec<(&'static str, String)>,
}

fn report(kind: &str, mut value: Value) {
    value["kind"] = json!(kind);
    println!("GUARD-BENCH {value}");
}

fn suite() {
    let dir = PathBuf::from("/tmp/guard-bench");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("work")).unwrap();
    fs::create_dir_all(dir.join("protected")).unwrap();
    fs::copy("/bin/true", dir.join("denied-true")).unwrap();
    // Listeners for both TCP targets, so that only Guard can refuse.
    let tcp_allowed = listener();
    let tcp_denied = listener();
    let targets = Targets {
        allowed: vec![
            ("exec", "/bin/true".into()),
            ("unlink", dir.join("work").display().to_string()),
            ("connect", tcp_allowed.to_string()),
            ("sendto", "127.0.0.1:40101".into()),
        ],
        denied: vec![
            ("exec", dir.join("denied-true").display().to_string()),
            ("unlink", dir.join("protected").display().to_string()),
            ("connect", tcp_denied.to_string()),
            ("sendto", "127.0.0.1:40102".into()),
        ],
        dir,
    };
    let policy = |record_allowed: bool, extra_rules: usize| {
        bench_policy(&targets, tcp_denied.port(), record_allowed, extra_rules)
    };

    // Warm-up, not reported: under emulation the first run of any code
    // is slower (translation), which would flatter every later run.
    for (op, target) in &targets.allowed {
        loops_via(None, op, target);
    }
    // 1. No programs loaded.
    for (op, target) in &targets.allowed {
        run_loops("baseline", op, target, None);
    }

    // guardd's start-up time and idle memory.
    let started = Instant::now();
    let guardd = Guardd::start(&targets.dir, &policy(false, 0), "guard-bench");
    report(
        "footprint",
        json!({"daemon": "guardd", "startup_ms": started.elapsed().as_millis(), "rss_kib": rss_kib(guardd.pid())}),
    );
    bpf_stats(true);

    // 2. Loaded, caller untagged.
    for (op, target) in &targets.allowed {
        run_loops("untagged", op, target, None);
    }
    // 3. Tagged, allowed, no record.
    for (op, target) in &targets.allowed {
        run_loops("tagged_allowed", op, target, Some(&guardd));
    }
    program_stats(&guardd, "tagged_allowed");
    // 4. Tagged, allowed, a record per decision.
    guardd.reload(&policy(true, 0)).expect("reload");
    for (op, target) in &targets.allowed {
        run_loops("tagged_recorded", op, target, Some(&guardd));
    }
    report(
        "footprint",
        json!({"daemon": "guardd", "after": "tagged_recorded", "rss_kib": rss_kib(guardd.pid())}),
    );
    // 5. Tagged and denied.
    guardd.reload(&policy(false, 0)).expect("reload");
    for (op, target) in &targets.denied {
        run_loops("tagged_denied", op, target, Some(&guardd));
    }
    // Decision cost against the number of rules.
    for rules in [1, 1_000, 100_000] {
        guardd.reload(&policy(false, rules)).expect("reload");
        let (_, target) = &targets.allowed[2];
        let mut result = loops_via(Some(&guardd), "connect", target);
        result["rules"] = json!(rules);
        report("scale", result);
    }
    bpf_stats(false);
    drop(guardd);
    // The baseline again, to show how much the machine drifted.
    for (op, target) in &targets.allowed {
        run_loops("baseline_again", op, target, None);
    }

    // 6. The peer: Linux auditd recording the same system calls, no Guard.
    match Auditd::start(&targets.dir) {
        Ok(auditd) => {
            for (op, target) in &targets.allowed {
                run_loops("auditd", op, target, None);
            }
            report(
                "footprint",
                json!({"daemon": "auditd", "after": "auditd", "rss_kib": rss_kib(auditd.pid())}),
            );
        }
        Err(why) => report(
            "note",
            json!({"note": format!("auditd not measured: {why}")}),
        ),
    }
}

/// auditd (from `GUARD_AUDITD_DIR`, where the VM image keeps it, or the
/// system's) with rules recording execve, the unlink family, connect and
/// sendto of every process.
struct Auditd {
    child: std::process::Child,
    auditctl: PathBuf,
}

impl Auditd {
    fn start(dir: &Path) -> Result<Self, String> {
        let bin_dir = std::env::var_os("GUARD_AUDITD_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/sbin"));
        let (auditd, auditctl) = (bin_dir.join("auditd"), bin_dir.join("auditctl"));
        if !auditd.exists() {
            return Err(format!("no {}", auditd.display()));
        }
        let conf = dir.join("audit");
        fs::create_dir_all(&conf).map_err(|e| e.to_string())?;
        fs::write(
            conf.join("auditd.conf"),
            format!(
                "log_file = {}\nlog_format = ENRICHED\nflush = INCREMENTAL_ASYNC\nfreq = 50\nmax_log_file = 1000\nmax_log_file_action = ROTATE\nnum_logs = 2\nspace_left = 2\nspace_left_action = IGNORE\nadmin_space_left = 1\nadmin_space_left_action = IGNORE\ndisk_full_action = IGNORE\ndisk_error_action = IGNORE\n",
                conf.join("audit.log").display()
            ),
        )
        .map_err(|e| e.to_string())?;
        let child = Command::new(&auditd)
            .args(["-n", "-c"])
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start auditd: {e}"))?;
        let mut auditd = Auditd { child, auditctl };
        std::thread::sleep(Duration::from_secs(1));
        if let Ok(Some(status)) = auditd.child.try_wait() {
            return Err(format!("auditd exited at start: {status}"));
        }
        auditd.ctl(&["-D"])?;
        auditd.ctl(&[
            "-a",
            "always,exit",
            "-F",
            "arch=b64",
            "-S",
            "execve",
            "-S",
            "unlink",
            "-S",
            "unlinkat",
            "-S",
            "rmdir",
            "-S",
            "rename",
            "-S",
            "renameat",
            "-S",
            "truncate",
            "-S",
            "connect",
            "-S",
            "sendto",
            "-k",
            "guard-bench",
        ])?;
        auditd.ctl(&["-e", "1"])?;
        Ok(auditd)
    }

    fn ctl(&self, args: &[&str]) -> Result<(), String> {
        let out = Command::new(&self.auditctl)
            .args(args)
            .output()
            .map_err(|e| format!("cannot run auditctl: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "auditctl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(())
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Auditd {
    fn drop(&mut self) {
        let _ = self.ctl(&["-D"]);
        let _ = self.ctl(&["-e", "0"]);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn listener() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            drop(stream);
        }
    });
    addr
}

/// A profile allowing everything but the denied targets, plus `extra`
/// network deny rules that never match (for the scale measurement).
fn bench_policy(targets: &Targets, tcp_denied: u16, record_allowed: bool, extra: usize) -> String {
    let mut text = format!(
        "profiles:\n  - name: bench\n    default: allow\n    record_allowed: {record_allowed}\n    exec:\n      deny:\n        - id: no-true\n          path: {}\n    files:\n      protect:\n        - id: keep\n          subtree: {}\n    network:\n      deny:\n        - id: no-tcp\n          cidr: 127.0.0.1/32\n          ports: {tcp_denied}\n          protocol: tcp\n        - id: no-udp\n          cidr: 127.0.0.1/32\n          ports: 40102\n          protocol: udp\n",
        targets.dir.join("denied-true").display(),
        targets.dir.join("protected").display(),
    );
    for i in 0..extra {
        let [a, b, c] = [(i >> 16) as u8, (i >> 8) as u8, i as u8];
        text += &format!("        - id: extra-{i}\n          cidr: 10.{a}.{b}.{c}/32\n");
    }
    text + "agents:\n  - name: bench\n    profile: bench\n"
}

fn run_loops(config: &str, op: &str, target: &str, guardd: Option<&Guardd>) {
    let mut result = loops_via(guardd, op, target);
    result["config"] = json!(config);
    report("loop", result);
}

/// Runs `guard-bench loops` untagged, or tagged in a session of `guardd`.
fn loops_via(guardd: Option<&Guardd>, op: &str, target: &str) -> Value {
    let n = ITERATIONS
        .iter()
        .find(|(o, _)| *o == op)
        .unwrap()
        .1
        .to_string();
    let args = ["loops", op, &n, target];
    let output = match guardd {
        None => Command::new(bin("guard-bench")).args(args).output(),
        Some(guardd) => {
            let mut run = vec!["run", "--agent", "bench", "--"];
            let me = bin("guard-bench");
            run.push(me.to_str().unwrap());
            run.extend(args);
            Ok(guardd.guardctl(&run))
        }
    }
    .expect("run guard-bench loops");
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "guard-bench loops {op}: {e}; stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The name of BPF program `fd` of process `pid` (at most 15 bytes): a
/// copy of the descriptor (pidfd_getfd), then BPF_OBJ_GET_INFO_BY_FD.
fn program_name(pid: u32, fd: i32) -> String {
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    /// Offset of `name` in `struct bpf_prog_info` (stable UAPI).
    const NAME: usize = 64;
    // SAFETY: plain system calls on descriptors this function owns; the
    // kernel writes at most `info.len()` bytes into `info`.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0) as i32;
        let copy = libc::syscall(libc::SYS_pidfd_getfd, pidfd, fd, 0) as i32;
        libc::close(pidfd);
        let mut info = [0u8; 256];
        #[repr(C)]
        struct InfoAttr {
            bpf_fd: u32,
            info_len: u32,
            info: u64,
        }
        let attr = InfoAttr {
            bpf_fd: copy as u32,
            info_len: info.len() as u32,
            info: info.as_mut_ptr() as u64,
        };
        let rc = libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &attr as *const InfoAttr,
            size_of::<InfoAttr>(),
        );
        libc::close(copy);
        if rc < 0 {
            return format!("fd-{fd}");
        }
        let name = &info[NAME..NAME + 16];
        let end = name.iter().position(|&b| b == 0).unwrap_or(16);
        String::from_utf8_lossy(&name[..end]).into_owned()
    }
}

fn bpf_stats(on: bool) {
    fs::write(
        "/proc/sys/kernel/bpf_stats_enabled",
        if on { "1" } else { "0" },
    )
    .expect("enable BPF statistics");
}

/// Each BPF program guardd holds: its average run time so far, from the
/// kernel's statistics (the fdinfo of the program's descriptor).
fn program_stats(guardd: &Guardd, config: &str) {
    let fds = format!("/proc/{}/fd", guardd.pid());
    for entry in fs::read_dir(&fds).unwrap().filter_map(Result::ok) {
        let is_prog = fs::read_link(entry.path())
            .is_ok_and(|l| l.as_os_str().as_bytes() == b"anon_inode:bpf-prog");
        if !is_prog {
            continue;
        }
        let info = fs::read_to_string(format!(
            "/proc/{}/fdinfo/{}",
            guardd.pid(),
            entry.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        let (runs, ns) = (field("run_cnt:"), field("run_time_ns:"));
        let fd: i32 = entry.file_name().to_string_lossy().parse().unwrap_or(-1);
        if runs > 0 {
            report(
                "program",
                json!({"config": config, "program": program_name(guardd.pid(), fd), "runs": runs, "avg_ns": ns / runs}),
            );
        }
    }
}
