//! `guard-bench`: what Guard costs, measured in one boot.
//!
//! `guard-bench loops OP N ARG` times N system calls of one kind and prints
//! one JSON line with the median, p99 and mean in nanoseconds:
//!   exec PROGRAM      fork, execv(PROGRAM), wait (the whole launch)
//!   unlink DIR        create DIR/bench-file (untimed), unlink it (timed)
//!   connect ADDR      TCP connect(2) to ADDR (a listener the suite runs)
//!   sendto ADDR       UDP sendto(2) to ADDR
//!
//!   pace RATE SECONDS ADDR  UDP sendto(2) to ADDR at RATE per second
//!
//! `guard-bench suite` (root, `GUARD_BIN_DIR` set, a BPF LSM kernel) runs
//! the loops in every configuration, in [`ROUNDS`] interleaved rounds: no
//! programs loaded; loaded and the caller untagged; tagged and allowed
//! without a record; with a record per decision; tagged and denied; no
//! programs loaded again (the noise floor); auditd. It also measures the
//! decision cost with 1, 1,000 and 100,000 rules, each program's average run
//! time from the kernel's BPF statistics, the pipeline (paced decisions into
//! a gRPC subscriber and the collector, losses accounted), and the start-up
//! time and memory of guardd and guard-collector. Every result is one line
//! `GUARD-BENCH {json}` on stdout; `cargo xtask bench` turns them into the
//! report.
//!
//! With two CPUs or more, the daemons run on the first and the timed loops
//! on the last, so that a loop's time is what the kernel adds to its own
//! system calls, not the daemons' work competing for its CPU.

use std::{
    ffi::CString,
    fs,
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use guard_tests::{
    Guardd, bin,
    collector::{Collector, free_port},
};
use serde_json::{Value, json};

/// Iterations per loop, before the first 5% are dropped as warm-up.
const ITERATIONS: &[(&str, usize)] = &[
    ("exec", 1_000),
    ("unlink", 20_000),
    ("connect", 5_000),
    ("sendto", 20_000),
];

/// Passes over every configuration; the report takes the median of each
/// round's ratio to that round's baseline.
const ROUNDS: u32 = 5;

/// Requested rates for the pipeline, decisions per second, each for
/// [`PACE_SECONDS`]; the steps stop once the generator cannot keep up.
const PACE_RATES: &[u64] = &[
    1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000,
];
const PACE_SECONDS: u64 = 3;
/// How long the load step floods: a tagged agent sending as fast as it can.
const LOAD_SECONDS: u64 = 60;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("loops") => {
            let n = args[2].parse().expect("an iteration count");
            println!("{}", loops(&args[1], n, &args[3]));
        }
        Some("pace") => {
            let rate = args[1].parse().expect("a rate");
            let seconds = args[2].parse().expect("a duration in seconds");
            println!("{}", pace(rate, seconds, &args[3]));
        }
        Some("suite") => suite(),
        _ => {
            eprintln!(
                "usage: guard-bench loops OP N ARG | guard-bench pace RATE SECONDS ADDR | guard-bench suite"
            );
            std::process::exit(2);
        }
    }
}

// ---------------------------------------------------------------- loops --

fn loops(op: &str, n: usize, arg: &str) -> Value {
    pin_to_last_cpu();
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

/// Sends UDP datagrams to `to` at `rate` per second for `seconds` (or as
/// fast as it can, if slower, or if `rate` is 0); reports how many it sent
/// and the rate.
fn pace(rate: u64, seconds: u64, to: &str) -> Value {
    pin_to_last_cpu();
    let to: SocketAddr = to.parse().expect("an address");
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (mut sent, mut errors) = (0u64, 0u64);
    let start = Instant::now();
    if rate == 0 {
        let end = start + Duration::from_secs(seconds);
        while Instant::now() < end {
            for _ in 0..1000 {
                if socket.send_to(b"guard-bench", to).is_err() {
                    errors += 1;
                }
                sent += 1;
            }
        }
    }
    let total = rate * seconds;
    while sent < total {
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
        if sent >= due {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        while sent < due {
            if socket.send_to(b"guard-bench", to).is_err() {
                errors += 1;
            }
            sent += 1;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    json!({"sent": sent, "errors": errors, "seconds": seconds, "rate": sent as f64 / seconds})
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

/// Where the UDP loops send, allowed by the bench policy.
const UDP_ALLOWED: &str = "127.0.0.1:40101";

struct Targets {
    dir: PathBuf,
    /// Allowed and denied targets per op.
    allowed: Vec<(&'static str, String)>,
    denied: Vec<(&'static str, String)>,
    /// The port of the TCP listener the policy denies.
    tcp_denied: u16,
}

fn report(kind: &str, mut value: Value) {
    value["kind"] = json!(kind);
    println!("GUARD-BENCH {value}");
}

fn suite() {
    let pinned = pin_daemons_to_first_cpu();
    report("setup", json!({"rounds": ROUNDS, "pinned": pinned}));
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
            ("sendto", UDP_ALLOWED.into()),
        ],
        denied: vec![
            ("exec", dir.join("denied-true").display().to_string()),
            ("unlink", dir.join("protected").display().to_string()),
            ("connect", tcp_denied.to_string()),
            ("sendto", "127.0.0.1:40102".into()),
        ],
        tcp_denied: tcp_denied.port(),
        dir,
    };

    // Warm-up, not reported: under emulation the first run of any code
    // is slower (translation), which would flatter every later run.
    for (op, target) in &targets.allowed {
        loops_via(None, op, target);
    }
    for round in 1..=ROUNDS {
        per_hook_round(&targets, round);
    }
    let guardd = Guardd::start(&targets.dir, &targets.policy(false, 0), "guard-bench");
    program_stats(&guardd, &targets);
    policy_scale(&guardd, &targets);
    drop(guardd);
    pipeline(&targets);
}

/// One pass over every configuration, each against this round's baseline.
fn per_hook_round(targets: &Targets, round: u32) {
    let run = |config: &str, guardd: Option<&Guardd>, ops: &[(&'static str, String)]| {
        for (op, target) in ops {
            let mut result = loops_via(guardd, op, target);
            result["config"] = json!(config);
            result["round"] = json!(round);
            report("loop", result);
        }
    };
    // 1. No programs loaded.
    run("baseline", None, &targets.allowed);
    let started = Instant::now();
    let guardd = Guardd::start(&targets.dir, &targets.policy(false, 0), "guard-bench");
    report(
        "footprint",
        json!({"daemon": "guardd", "when": "idle", "round": round,
               "startup_ms": started.elapsed().as_millis(), "rss_kib": memory_kib(guardd.pid(), "VmRSS")}),
    );
    // 2. Loaded, caller untagged.
    run("untagged", None, &targets.allowed);
    // 3. Tagged, allowed, no record.
    run("tagged_allowed", Some(&guardd), &targets.allowed);
    // 4. Tagged, allowed, a record per decision.
    guardd.reload(&targets.policy(true, 0)).expect("reload");
    run("tagged_recorded", Some(&guardd), &targets.allowed);
    // 5. Tagged and denied.
    guardd.reload(&targets.policy(false, 0)).expect("reload");
    run("tagged_denied", Some(&guardd), &targets.denied);
    // 6. Tagged, allowed, with an exec rule by content: each exec hashed
    // in full by IMA.
    guardd.reload(&targets.content_policy()).expect("reload");
    run("tagged_content", Some(&guardd), &targets.allowed[..1]);
    drop(guardd);
    // The baseline again: how far two measurements of the same thing
    // differ in this run (the noise floor).
    run("baseline_again", None, &targets.allowed);
    // 7. The peer: Linux auditd recording the same system calls, no Guard.
    match Auditd::start(&targets.dir) {
        Ok(auditd) => {
            run("auditd", None, &targets.allowed);
            if round == 1 {
                report(
                    "footprint",
                    json!({"daemon": "auditd", "when": "recording", "rss_kib": memory_kib(auditd.pid(), "VmRSS")}),
                );
            }
        }
        Err(why) if round == 1 => report(
            "note",
            json!({"note": format!("auditd not measured: {why}")}),
        ),
        Err(_) => {}
    }
}

/// Each program's average run time from the kernel's BPF statistics, over
/// one tagged pass of every loop, and its runs over one untagged pass
/// (statistics cost time themselves, so they are off while the loops above
/// are timed).
fn program_stats(guardd: &Guardd, targets: &Targets) {
    let runs = || -> std::collections::BTreeMap<String, u64> {
        guard_tests::bpf::programs(guardd.pid())
            .into_iter()
            .map(|p| (p.name, p.runs))
            .collect()
    };
    guard_tests::bpf::stats(true);
    let before = runs();
    for (op, target) in &targets.allowed {
        loops_via(None, op, target);
    }
    for (program, runs) in runs() {
        let untagged = runs - before.get(&program).copied().unwrap_or(0);
        report(
            "untagged_runs",
            json!({"program": program, "runs": untagged}),
        );
    }
    // Each operation's time in this pass: the programs' shares are taken
    // against it, measured at the same moment as their run times.
    for (op, target) in &targets.allowed {
        let result = loops_via(Some(guardd), op, target);
        report(
            "stats_loop",
            json!({"op": op, "median_ns": result["median_ns"]}),
        );
    }
    report_program_stats(guardd);
    guard_tests::bpf::stats(false);
}

/// Decision cost against the number of rules (tagged connect).
fn policy_scale(guardd: &Guardd, targets: &Targets) {
    for rules in [1, 1_000, 100_000] {
        guardd
            .reload(&targets.policy(false, rules))
            .expect("reload");
        let (_, target) = &targets.allowed[2];
        let mut result = loops_via(Some(guardd), "connect", target);
        result["rules"] = json!(rules);
        report("scale", result);
    }
}

/// Paced decisions (a recorded UDP sendto each) into guardd, a gRPC
/// subscriber of guardd's live feed, and guard-collector. For each rate:
/// what the kernel made, what the subscriber received, what was counted
/// lost, and how long the collector took to store it all.
fn pipeline(targets: &Targets) {
    let dir = targets.dir.join("pipeline");
    fs::create_dir_all(&dir).unwrap();
    let started = Instant::now();
    let collector = Collector::start(&dir, &format!("sqlite:{}", dir.join("audit.db").display()));
    report(
        "footprint",
        json!({"daemon": "guard-collector", "when": "idle",
               "startup_ms": started.elapsed().as_millis(), "rss_kib": memory_kib(collector.pid(), "VmRSS")}),
    );
    let feed = format!("127.0.0.1:{}", free_port());
    let guardd = Guardd::start_with(
        &dir,
        &targets.policy(true, 0),
        "guard-bench-pipeline",
        &[
            "--grpc-listen",
            &feed,
            "--plaintext",
            "--collector",
            &format!("http://{}", collector.addr),
            "--host-name",
            "bench",
        ],
        &[],
    );
    let subscriber = Subscriber::follow(&feed);
    // The follower subscribes some time after it starts.
    while subscriber.counts().records == 0 {
        paced_via(&guardd, 100, PACE_SECONDS);
    }
    for &rate in PACE_RATES {
        let step = pipeline_step(&guardd, &subscriber, &collector, rate, PACE_SECONDS);
        let achieved = step["achieved_rate"].as_f64().unwrap_or(0.0);
        report("pipeline", step);
        if achieved < rate as f64 * 0.9 {
            break; // the generator is the limit now
        }
    }
    for (daemon, pid) in [
        ("guardd", guardd.pid()),
        ("guard-collector", collector.pid()),
    ] {
        report(
            "footprint",
            json!({"daemon": daemon, "when": "after the pipeline",
                   "rss_kib": memory_kib(pid, "VmRSS"), "peak_rss_kib": memory_kib(pid, "VmHWM")}),
        );
    }
    // The load test: a flood for a minute. Memory must stay bounded (the
    // peaks are reported), nothing may crash, and losses must add up.
    let memory = |pid| (memory_kib(pid, "VmRSS"), memory_kib(pid, "VmHWM"));
    let before = [memory(guardd.pid()), memory(collector.pid())];
    let mut step = pipeline_step(&guardd, &subscriber, &collector, 0, LOAD_SECONDS);
    let after = [memory(guardd.pid()), memory(collector.pid())];
    let alive = running(guardd.pid()) && running(collector.pid());
    step["seconds"] = json!(LOAD_SECONDS);
    step["daemons_alive"] = json!(alive);
    for (i, daemon) in ["guardd", "collector"].iter().enumerate() {
        step[format!("{daemon}_rss_kib_before")] = json!(before[i].0);
        step[format!("{daemon}_rss_kib_after")] = json!(after[i].0);
        step[format!("{daemon}_peak_rss_kib")] = json!(after[i].1);
    }
    step["passed"] = json!(alive && step["exact"] == true);
    report("load", step);
}

/// Runs `guard-bench pace RATE SECONDS` as a tagged agent (0: as fast as
/// it can) and waits until the subscriber has every record the kernel made
/// or its loss, and the collector has stored what guardd wrote.
fn pipeline_step(
    guardd: &Guardd,
    subscriber: &Subscriber,
    collector: &Collector,
    rate: u64,
    seconds: u64,
) -> Value {
    let seen_before = subscriber.settled();
    let made_before = records_made(guardd);
    let step_start = Instant::now();
    let paced = paced_via(guardd, rate, seconds);
    // Everything made must now be received or counted lost.
    let made = records_made(guardd) - made_before;
    let deadline = Instant::now() + Duration::from_secs(120);
    let seen = loop {
        let seen = subscriber.counts().since(&seen_before);
        if seen.records + seen.lost() >= made || Instant::now() > deadline {
            break seen;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let delivered = Instant::now();
    collector.wait_for_seq("bench", last_seq(&guardd.events), Duration::from_secs(600));
    json!({
        "requested_rate": rate,
        "achieved_rate": paced["rate"],
        "sent": paced["sent"],
        "made": made,
        "received": seen.records,
        "lost_ring_buffer": seen.ring_buffer,
        "lost_subscriber_queue": seen.subscriber_queue,
        "lost_decode": seen.decode,
        "exact": seen.records + seen.lost() == made,
        "delivered_s": (delivered - step_start).as_secs_f64(),
        "stored_s": step_start.elapsed().as_secs_f64(),
    })
}

/// `guard-bench pace RATE SECONDS` as a tagged agent.
fn paced_via(guardd: &Guardd, rate: u64, seconds: u64) -> Value {
    let me = bin("guard-bench");
    let (rate, seconds) = (rate.to_string(), seconds.to_string());
    let output = guardd.guardctl(&[
        "run",
        "--agent",
        "bench",
        "--",
        me.to_str().unwrap(),
        "pace",
        &rate,
        &seconds,
        UDP_ALLOWED,
    ]);
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "guard-bench pace: {e}; stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// Whether process `pid` still runs (exists and is not a zombie).
fn running(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| Some(stat[stat.rfind(')')? + 2..].starts_with(|c| c != 'Z')))
        .unwrap_or(false)
}

fn records_made(guardd: &Guardd) -> u64 {
    guardd.status()["counters"]["records_made"]
        .as_u64()
        .expect("records_made in guardctl status")
}

/// The sequence number of the last line of an events file.
fn last_seq(events: &Path) -> u64 {
    let text = fs::read_to_string(events).unwrap_or_default();
    text.lines()
        .last()
        .and_then(|l| serde_json::from_str::<Value>(l).ok())
        .and_then(|v| v["seq"].as_u64())
        .unwrap_or(0)
}

/// What a subscriber of the live feed has received so far.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    records: u64,
    ring_buffer: u64,
    subscriber_queue: u64,
    decode: u64,
}

impl Counts {
    fn lost(&self) -> u64 {
        self.ring_buffer + self.subscriber_queue + self.decode
    }

    fn since(&self, before: &Counts) -> Counts {
        Counts {
            records: self.records - before.records,
            ring_buffer: self.ring_buffer - before.ring_buffer,
            subscriber_queue: self.subscriber_queue - before.subscriber_queue,
            decode: self.decode - before.decode,
        }
    }
}

/// `guardctl events --follow -o json` against guardd's audit API, counted
/// by a thread as its lines arrive.
struct Subscriber {
    child: std::process::Child,
    counts: std::sync::Arc<std::sync::Mutex<Counts>>,
}

impl Subscriber {
    fn follow(server: &str) -> Subscriber {
        let mut child = Command::new(bin("guardctl"))
            .args(["events", "--follow", "-o", "json", "--server", server])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start guardctl events --follow");
        let counts = std::sync::Arc::new(std::sync::Mutex::new(Counts::default()));
        let stdout = child.stdout.take().unwrap();
        let shared = counts.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let entry: Value = serde_json::from_str(&line).unwrap_or_default();
                // A signed checkpoint is no decision.
                if entry.get("checkpoint").is_some() {
                    continue;
                }
                let mut counts = shared.lock().unwrap();
                let loss = &entry["loss"];
                let records = loss["records"].as_u64().unwrap_or(0);
                match loss["stage"].as_str() {
                    Some("ring_buffer") => counts.ring_buffer += records,
                    Some("subscriber_queue") => counts.subscriber_queue += records,
                    Some(_) => counts.decode += records,
                    None => counts.records += 1,
                }
            }
        });
        Subscriber { child, counts }
    }

    fn counts(&self) -> Counts {
        *self.counts.lock().unwrap()
    }

    /// The counts once nothing more has arrived for a second.
    fn settled(&self) -> Counts {
        let mut last = self.counts();
        loop {
            std::thread::sleep(Duration::from_secs(1));
            let now = self.counts();
            if now == last {
                return now;
            }
            last = now;
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the rest of this process, and the daemons it starts, on the first
/// CPU; the timed loops move to the last ([`pin_to_last_cpu`]). Returns
/// whether there were two CPUs to do so.
fn pin_daemons_to_first_cpu() -> bool {
    cpus() >= 2 && pin_to(0)
}

fn pin_to_last_cpu() {
    if cpus() >= 2 {
        pin_to(cpus() - 1);
    }
}

/// CPUs online (not only those this process may use).
fn cpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize
}

fn pin_to(cpu: usize) -> bool {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the kernel reads
    // exactly its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) == 0
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

impl Targets {
    /// A profile allowing everything but the denied targets, plus `extra`
    /// network deny rules that never match (for the scale measurement).
    fn policy(&self, record_allowed: bool, extra: usize) -> String {
        let mut text = format!(
            "profiles:\n  - name: bench\n    default: allow\n    record_allowed: {record_allowed}\n    exec:\n      deny:\n        - id: no-true\n          path: {}\n    files:\n      protect:\n        - id: keep\n          subtree: {}\n    network:\n      deny:\n        - id: no-tcp\n          cidr: 127.0.0.1/32\n          ports: {}\n          protocol: tcp\n        - id: no-udp\n          cidr: 127.0.0.1/32\n          ports: 40102\n          protocol: udp\n",
            self.dir.join("denied-true").display(),
            self.dir.join("protected").display(),
            self.tcp_denied,
        );
        for i in 0..extra {
            let [a, b, c] = [(i >> 16) as u8, (i >> 8) as u8, i as u8];
            text += &format!("        - id: extra-{i}\n          cidr: 10.{a}.{b}.{c}/32\n");
        }
        text + "agents:\n  - name: bench\n    profile: bench\n"
    }

    /// [`Self::policy`] with an exec deny rule by content that matches no
    /// program here: every exec is hashed and looked up.
    fn content_policy(&self) -> String {
        self.policy(false, 0).replacen(
            "    files:\n",
            &format!(
                "        - id: no-content\n          sha256: \"{}\"\n    files:\n",
                "0".repeat(64)
            ),
            1,
        )
    }
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

/// A memory figure of `/proc/PID/status` (VmRSS, VmHWM), in KiB.
fn memory_kib(pid: u32, field: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Each BPF program guardd holds: its average run time so far, from the
/// kernel's statistics.
fn report_program_stats(guardd: &Guardd) {
    for program in guard_tests::bpf::programs(guardd.pid()) {
        if program.runs > 0 {
            report(
                "program",
                json!({"program": program.name, "runs": program.runs, "avg_ns": program.run_ns / program.runs}),
            );
        }
    }
}
