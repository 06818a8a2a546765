//! The environment every kernel test shares: one guardd with two agents
//! (`tagged` and `watcher`) over a directory of files, programs and scripts,
//! started once per VM; and the assertions on outcomes and records.

use std::{
    fs,
    net::{TcpListener, UdpSocket},
    os::unix::fs::{PermissionsExt, symlink},
    path::{Path, PathBuf},
    sync::OnceLock,
};

pub(crate) use guard_tests::{EPERM, Guardd, Outcome, bin, claims_enforcing, probe_untagged};
pub(crate) use serde_json::Value;

pub(crate) const ROOT: &str = "guard-test";
pub(crate) const TAGGED: &str = "tagged";
pub(crate) const WATCHER: &str = "watcher";
/// The agent whose sessions take bob's logins.
pub(crate) const LOGIN_AGENT: &str = "operator";

/// Ports on loopback: denied TCP v4, denied v6, denied UDP, allowed.
pub(crate) const PORT_V4: u16 = 40001;
pub(crate) const PORT_V6: u16 = 40002;
pub(crate) const PORT_UDP: u16 = 40003;
pub(crate) const PORT_OPEN: u16 = 40010;

pub(crate) struct Env {
    pub(crate) guardd: Guardd,
    pub(crate) dir: PathBuf,
}

impl Env {
    pub(crate) fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }
    pub(crate) fn p(&self, rel: &str) -> String {
        self.path(rel).display().to_string()
    }
}

/// The rules both agents share; the watcher's rule ids carry a `w-` prefix.
pub(crate) fn rules(dir: &Path, prefix: &str) -> String {
    let d = dir.display();
    format!(
        r#"    exec:
      deny:
        - id: {prefix}exec-denied-tool
          path: {d}/tools/denied-tool
          message: this tool is off limits
        - id: {prefix}exec-denied-dir
          subtree: {d}/denied-dir
        - id: {prefix}exec-denied-script
          path: {d}/scripts/denied-script.sh
    files:
      protect:
        - id: {prefix}files-protected-dir
          subtree: {d}/protected
          message: production data
        - id: {prefix}files-sqlite
          name: "*.sqlite"
        - id: {prefix}files-env
          name: .env
      read_only:
        - id: {prefix}files-read-only
          subtree: {d}/read-only
          message: configuration agents may read, not change
        - id: {prefix}files-pem
          name: "*.pem"
      writable:
        - id: {prefix}files-writable-inside
          subtree: {d}/read-only/scratch
    network:
      deny:
        - id: {prefix}net-v4
          cidr: 127.0.0.1
          ports: {PORT_V4}
          protocol: tcp
        - id: {prefix}net-v6
          cidr: "::1/128"
          ports: {PORT_V6}
        - id: {prefix}net-udp
          cidr: 127.0.0.0/8
          ports: {PORT_UDP}
          protocol: udp
"#
    )
}

/// A policy of `profiles` (YAML list items) with one agent per name in
/// `agents`, running the profile of the same name.
pub(crate) fn policy_of(profiles: &str, agents: &[&str]) -> String {
    let mut text = format!("profiles:\n{profiles}agents:\n");
    for agent in agents {
        text += &format!("  - name: {agent}\n    profile: {agent}\n");
    }
    text
}

/// A profile that allows everything by default and has no rules.
pub(crate) fn open_profile(name: &str) -> String {
    format!("  - name: {name}\n    default: allow\n")
}

pub(crate) fn copy_executable(from: &Path, to: &Path) {
    fs::copy(from, to)
        .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
    fs::set_permissions(to, fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// The shared fixture: files, links, scripts and one guardd for all tests.
/// If setting it up fails, every test fails at once with the same message
/// instead of each trying again.
pub(crate) fn env() -> &'static Env {
    static ENV: OnceLock<Result<Env, String>> = OnceLock::new();
    let env = ENV.get_or_init(|| {
        std::panic::catch_unwind(set_up).map_err(|panic| {
            panic
                .downcast_ref::<String>()
                .cloned()
                .unwrap_or_else(|| "fixture set-up panicked".into())
        })
    });
    match env {
        Ok(env) => env,
        Err(message) => panic!(
            "fixture set-up failed earlier: {}",
            message.lines().next().unwrap_or_default()
        ),
    }
}

pub(crate) fn set_up() -> Env {
    {
        let dir = PathBuf::from("/tmp/guard-vm");
        let _ = fs::remove_dir_all(&dir);
        for sub in [
            "tools",
            "denied-dir",
            "scripts",
            "links",
            "protected",
            "open",
            "monitored",
            "read-only/scratch",
        ] {
            fs::create_dir_all(dir.join(sub)).expect("create fixture dirs");
        }
        let probe = bin("guard-probe");
        copy_executable(&probe, &dir.join("tools/allowed-tool"));
        copy_executable(&probe, &dir.join("tools/denied-tool"));
        copy_executable(&probe, &dir.join("denied-dir/inner-tool"));
        let write_script = |name: &str, interpreter: &str| {
            let path = dir.join("scripts").join(name);
            fs::write(
                &path,
                format!("#!{} true\n", dir.join(interpreter).display()),
            )
            .expect("write script");
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
        };
        write_script("denied-script.sh", "tools/allowed-tool");
        write_script("interp-script.sh", "tools/denied-tool");
        symlink(
            dir.join("tools/denied-tool"),
            dir.join("links/denied-symlink"),
        )
        .expect("symlink");
        fs::hard_link(
            dir.join("tools/denied-tool"),
            dir.join("links/denied-hardlink"),
        )
        .expect("hard link");

        // Members of `developers` may launch the tagged agent themselves;
        // bob's logins run under its profile as agent `operator`.
        let policy = policy_of(
            &format!(
                "  - name: {TAGGED}\n    mode: enforce\n    default: allow\n    record_allowed: true\n{}  - name: {WATCHER}\n    mode: monitor\n    default: allow\n{}",
                rules(&dir, ""),
                rules(&dir, "w-")
            ),
            &[TAGGED, WATCHER],
        )
        .replace(
            &format!("  - name: {TAGGED}\n    profile: {TAGGED}\n"),
            &format!("  - name: {TAGGED}\n    profile: {TAGGED}\n    launched_by: {{groups: [developers]}}\n"),
        ) + &format!("  - name: {LOGIN_AGENT}\n    profile: {TAGGED}\n    logins: {{users: [bob]}}\n");
        let guardd = Guardd::start(&dir, &policy, ROOT);
        Env { guardd, dir }
    }
}

pub(crate) fn tagged(args: &[&str]) -> Outcome {
    let e = env();
    e.guardd.probe(TAGGED, &e.dir, args)
}

pub(crate) fn untagged(args: &[&str]) -> Outcome {
    probe_untagged(&env().dir, args)
}

/// Asserts a denial: EPERM, and a deny record with these fields.
pub(crate) fn assert_denied(outcome: Outcome, action: &str, target: &str, rule: &str) -> Value {
    assert_eq!(
        outcome.errno,
        Some(EPERM),
        "expected EPERM for {action} {target}"
    );
    let record = env().guardd.record(outcome.pid, |r| {
        r["verdict"] == "deny" && r["action"] == action
    });
    assert_eq!(record["agent"], TAGGED, "{record}");
    assert_eq!(record["profile"], TAGGED, "{record}");
    assert_eq!(record["target"], target, "{record}");
    assert_eq!(record["rule"], rule, "{record}");
    // Who and under which policy: every record names its session, the
    // launching user, the generation and the policy's digest.
    assert!(
        record["session"].as_str().is_some_and(|s| s.len() == 36),
        "{record}"
    );
    assert_eq!(record["user"]["uid"], 0, "{record}");
    assert!(
        record["generation"].as_u64().is_some_and(|g| g >= 1),
        "{record}"
    );
    assert_eq!(
        record["policy_sha256"].as_str().map(str::len),
        Some(64),
        "{record}"
    );
    assert!(
        record["time"].as_str().is_some_and(|t| t.contains('T')),
        "{record}"
    );
    record
}

/// Asserts success and, for the tagged agent (which records allowed
/// decisions), an allow record without a rule.
pub(crate) fn assert_allowed_tagged(outcome: Outcome, action: &str, target: &str) {
    assert_eq!(outcome.errno, None, "expected {action} {target} to succeed");
    let record = env().guardd.record(outcome.pid, |r| {
        r["action"] == action && r["target"] == target
    });
    assert_eq!(record["verdict"], "allow", "{record}");
    assert_eq!(record["rule"], "default", "{record}");
}

pub(crate) fn assert_untagged_ok(outcome: Outcome) {
    assert_eq!(outcome.errno, None, "untagged processes are not confined");
    let records = env().guardd.records_of(outcome.pid);
    assert!(
        records.is_empty(),
        "untagged process produced records: {records:#?}"
    );
}

/// A fresh file with known content; returns its path.
pub(crate) fn file(rel: &str) -> PathBuf {
    let path = env().path(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, format!("content of {rel}")).unwrap();
    path
}

pub(crate) fn assert_intact(path: &Path, rel: &str) {
    let content =
        fs::read_to_string(path).unwrap_or_else(|e| panic!("{} is gone: {e}", path.display()));
    assert_eq!(
        content,
        format!("content of {rel}"),
        "{} was modified",
        path.display()
    );
}

pub(crate) fn assert_no_connection(listener: &TcpListener) {
    listener.set_nonblocking(true).unwrap();
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("a connection reached the listener: {other:?}"),
    }
}

pub(crate) fn assert_no_datagram(socket: &UdpSocket) {
    socket.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    match socket.recv_from(&mut buf) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("a datagram arrived: {other:?}"),
    }
}

/// The errnos `guard-probe each` printed.
pub(crate) fn errnos_of(child: std::process::Child) -> Vec<i64> {
    let output = child.wait_with_output().unwrap();
    let outcome: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stdout)));
    outcome["errnos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_i64().unwrap())
        .collect()
}

/// Waits until the cgroup at `dir` (or one below it) has a process.
pub(crate) fn wait_populated(dir: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !fs::read_to_string(format!("{dir}/cgroup.events"))
        .unwrap_or_default()
        .lines()
        .any(|l| l == "populated 1")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no process ever joined {dir}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Makes `cmd` join the cgroup of `procs` before exec, without guardctl.
/// Makes `command` run as `uid` with primary group `gid` and `groups`.
pub(crate) fn run_as(command: &mut std::process::Command, uid: u32, gid: u32, groups: &[u32]) {
    use std::os::unix::process::CommandExt as _;
    let groups = groups.to_vec();
    // SAFETY: only system calls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

pub(crate) fn join_cgroup_on_exec(cmd: &mut std::process::Command, procs: &Path) {
    use std::os::unix::process::CommandExt;
    let procs = procs.to_path_buf();
    // SAFETY: only a write(2) to a file opened before, between fork and exec.
    let file = fs::OpenOptions::new().write(true).open(&procs).unwrap();
    unsafe {
        cmd.pre_exec(move || {
            use std::io::Write;
            (&file).write_all(b"0")
        });
    }
}

pub(crate) fn sha256_of(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("sha256sum output")
        .to_string()
}

/// Waits until the generation in force is at least `generation`.
pub(crate) fn wait_for_generation(guardd: &Guardd, generation: u64) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let status = guardd.status();
        if status["generation"]
            .as_u64()
            .is_some_and(|g| g >= generation)
        {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "generation {generation} never came: {status:#}\n{}",
            guardd.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Decision records and ring-buffer losses in an events file.
pub(crate) fn tally(events: &Path) -> (u64, u64) {
    let (mut decisions, mut lost) = (0, 0);
    for line in guard_tests::spool_lines(events).lines() {
        // A signed checkpoint is no decision.
        if line.contains(r#""checkpoint":{"#) {
            continue;
        }
        if line.contains(r#""loss":{"#) {
            let loss: Value = serde_json::from_str(line).unwrap();
            assert_eq!(loss["loss"]["stage"], "ring_buffer", "{loss}");
            lost += loss["loss"]["records"].as_u64().unwrap();
        } else {
            decisions += 1;
        }
    }
    (decisions, lost)
}

/// Waits until every record the hooks made is written or counted as lost;
/// returns (made, written, lost).
pub(crate) fn settled(guardd: &Guardd) -> (u64, u64, u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let made = guardd.status()["counters"]["records_made"]
            .as_u64()
            .unwrap();
        let (written, lost) = tally(&guardd.events);
        if made == written + lost {
            return (made, written, lost);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{made} records made, {written} written + {lost} counted lost"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}
