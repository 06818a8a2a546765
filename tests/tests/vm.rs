//! Kernel tests. They need a kernel with BPF LSM and root, and run inside
//! the VMs that `cargo xtask test` boots (one per kernel series). Every test
//! makes the real system call and asserts the errno, the state afterwards,
//! and the record guardd wrote.

use std::{
    fs,
    net::{TcpListener, UdpSocket},
    os::unix::fs::{PermissionsExt, symlink},
    path::{Path, PathBuf},
    sync::OnceLock,
    time::{Duration, Instant},
};

use guard_tests::{EPERM, Guardd, Outcome, bin, claims_enforcing, probe_untagged};
use serde_json::Value;

const ROOT: &str = "guard-test";
const TAGGED: &str = "tagged";
const WATCHER: &str = "watcher";

/// Ports on loopback: denied TCP v4, denied v6, denied UDP, allowed.
const PORT_V4: u16 = 40001;
const PORT_V6: u16 = 40002;
const PORT_UDP: u16 = 40003;
const PORT_OPEN: u16 = 40010;

struct Env {
    guardd: Guardd,
    dir: PathBuf,
}

impl Env {
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }
    fn p(&self, rel: &str) -> String {
        self.path(rel).display().to_string()
    }
}

/// The rules both agents share; the watcher's rule ids carry a `w-` prefix.
fn rules(dir: &Path, prefix: &str) -> String {
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
fn policy_of(profiles: &str, agents: &[&str]) -> String {
    let mut text = format!("profiles:\n{profiles}agents:\n");
    for agent in agents {
        text += &format!("  - name: {agent}\n    profile: {agent}\n");
    }
    text
}

/// A profile that allows everything by default and has no rules.
fn open_profile(name: &str) -> String {
    format!("  - name: {name}\n    default: allow\n")
}

fn copy_executable(from: &Path, to: &Path) {
    fs::copy(from, to)
        .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
    fs::set_permissions(to, fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// The shared fixture: files, links, scripts and one guardd for all tests.
/// If setting it up fails, every test fails at once with the same message
/// instead of each trying again.
fn env() -> &'static Env {
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

fn set_up() -> Env {
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

        let policy = policy_of(
            &format!(
                "  - name: {TAGGED}\n    mode: enforce\n    default: allow\n    record_allowed: true\n{}  - name: {WATCHER}\n    mode: monitor\n    default: allow\n{}",
                rules(&dir, ""),
                rules(&dir, "w-")
            ),
            &[TAGGED, WATCHER],
        );
        let guardd = Guardd::start(&dir, &policy, ROOT);
        Env { guardd, dir }
    }
}

fn tagged(args: &[&str]) -> Outcome {
    let e = env();
    e.guardd.probe(TAGGED, &e.dir, args)
}

fn untagged(args: &[&str]) -> Outcome {
    probe_untagged(&env().dir, args)
}

/// Asserts a denial: EPERM, and a deny record with these fields.
fn assert_denied(outcome: Outcome, action: &str, target: &str, rule: &str) -> Value {
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
fn assert_allowed_tagged(outcome: Outcome, action: &str, target: &str) {
    assert_eq!(outcome.errno, None, "expected {action} {target} to succeed");
    let record = env().guardd.record(outcome.pid, |r| {
        r["action"] == action && r["target"] == target
    });
    assert_eq!(record["verdict"], "allow", "{record}");
    assert_eq!(record["rule"], "default", "{record}");
}

fn assert_untagged_ok(outcome: Outcome) {
    assert_eq!(outcome.errno, None, "untagged processes are not confined");
    let records = env().guardd.records_of(outcome.pid);
    assert!(
        records.is_empty(),
        "untagged process produced records: {records:#?}"
    );
}

/// A fresh file with known content; returns its path.
fn file(rel: &str) -> PathBuf {
    let path = env().path(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, format!("content of {rel}")).unwrap();
    path
}

fn assert_intact(path: &Path, rel: &str) {
    let content =
        fs::read_to_string(path).unwrap_or_else(|e| panic!("{} is gone: {e}", path.display()));
    assert_eq!(
        content,
        format!("content of {rel}"),
        "{} was modified",
        path.display()
    );
}

// ------------------------------------------------------------------ exec --

#[test]
fn exec_denied_directly() {
    let e = env();
    let r = assert_denied(
        tagged(&["exec", &e.p("tools/denied-tool"), "true"]),
        "exec",
        &e.p("tools/denied-tool"),
        "exec-denied-tool",
    );
    assert_eq!(r["message"], "this tool is off limits");
    assert_eq!(r["hook"], "bprm_check_security");
    assert!(r["file"]["ino"].as_u64().is_some_and(|i| i > 0), "{r}");
}

#[test]
fn exec_denied_via_symlink() {
    let e = env();
    // The record names the file actually executed.
    assert_denied(
        tagged(&["exec", &e.p("links/denied-symlink"), "true"]),
        "exec",
        &e.p("tools/denied-tool"),
        "exec-denied-tool",
    );
}

#[test]
fn exec_denied_via_hard_link_by_identity() {
    let e = env();
    assert_denied(
        tagged(&["exec", &e.p("links/denied-hardlink"), "true"]),
        "exec",
        &e.p("links/denied-hardlink"),
        "exec-denied-tool",
    );
}

#[test]
fn exec_denied_via_relative_path() {
    let e = env();
    let outcome = e
        .guardd
        .probe(TAGGED, &e.path("tools"), &["exec", "./denied-tool", "true"]);
    assert_denied(
        outcome,
        "exec",
        &e.p("tools/denied-tool"),
        "exec-denied-tool",
    );
}

#[test]
fn exec_denied_as_script_interpreter() {
    let e = env();
    assert_denied(
        tagged(&["exec", &e.p("scripts/interp-script.sh")]),
        "exec",
        &e.p("tools/denied-tool"),
        "exec-denied-tool",
    );
}

#[test]
fn exec_of_denied_script() {
    let e = env();
    assert_denied(
        tagged(&["exec", &e.p("scripts/denied-script.sh")]),
        "exec",
        &e.p("scripts/denied-script.sh"),
        "exec-denied-script",
    );
}

#[test]
fn exec_denied_in_subtree() {
    let e = env();
    assert_denied(
        tagged(&["exec", &e.p("denied-dir/inner-tool"), "true"]),
        "exec",
        &e.p("denied-dir/inner-tool"),
        "exec-denied-dir",
    );
}

#[test]
fn exec_allowed_elsewhere() {
    let e = env();
    assert_allowed_tagged(
        tagged(&["exec", &e.p("tools/allowed-tool"), "true"]),
        "exec",
        &e.p("tools/allowed-tool"),
    );
}

#[test]
fn exec_untagged_is_not_confined() {
    let e = env();
    for target in [
        "tools/denied-tool",
        "links/denied-hardlink",
        "scripts/denied-script.sh",
        "denied-dir/inner-tool",
    ] {
        assert_untagged_ok(untagged(&["exec", &e.p(target), "true"]));
    }
}

// ----------------------------------------------------------------- files --

#[test]
fn unlink_denied_in_protected_subtree() {
    let e = env();
    let path = file("protected/deep/er/unlink.txt");
    let r = assert_denied(
        tagged(&["unlink", &e.p("protected/deep/er/unlink.txt")]),
        "unlink",
        &e.p("protected/deep/er/unlink.txt"),
        "files-protected-dir",
    );
    assert_eq!(r["message"], "production data");
    assert_intact(&path, "protected/deep/er/unlink.txt");
}

#[test]
fn rmdir_denied_in_protected_subtree() {
    let e = env();
    fs::create_dir_all(e.path("protected/empty-dir")).unwrap();
    assert_denied(
        tagged(&["rmdir", &e.p("protected/empty-dir")]),
        "rmdir",
        &e.p("protected/empty-dir"),
        "files-protected-dir",
    );
    assert!(e.path("protected/empty-dir").is_dir());
    // The protected directory itself.
    assert_denied(
        tagged(&["rmdir", &e.p("protected")]),
        "rmdir",
        &e.p("protected"),
        "files-protected-dir",
    );
}

#[test]
fn rename_away_denied() {
    let e = env();
    let path = file("protected/rename-away.txt");
    assert_denied(
        tagged(&[
            "rename",
            &e.p("protected/rename-away.txt"),
            &e.p("open/stolen.txt"),
        ]),
        "rename",
        &e.p("protected/rename-away.txt"),
        "files-protected-dir",
    );
    assert_intact(&path, "protected/rename-away.txt");
    assert!(!e.path("open/stolen.txt").exists());
}

#[test]
fn rename_over_denied() {
    let e = env();
    let victim = file("protected/rename-over.txt");
    file("open/replacement.txt");
    assert_denied(
        tagged(&[
            "rename",
            &e.p("open/replacement.txt"),
            &e.p("protected/rename-over.txt"),
        ]),
        "rename",
        &e.p("protected/rename-over.txt"),
        "files-protected-dir",
    );
    assert_intact(&victim, "protected/rename-over.txt");
    assert!(e.path("open/replacement.txt").exists());
}

#[test]
fn truncate_denied() {
    let e = env();
    let path = file("protected/truncate.txt");
    assert_denied(
        tagged(&["truncate", &e.p("protected/truncate.txt")]),
        "truncate",
        &e.p("protected/truncate.txt"),
        "files-protected-dir",
    );
    assert_intact(&path, "protected/truncate.txt");
}

#[test]
fn open_with_o_trunc_denied() {
    let e = env();
    let path = file("protected/o-trunc.txt");
    let r = assert_denied(
        tagged(&["open-trunc", &e.p("protected/o-trunc.txt")]),
        "truncate",
        &e.p("protected/o-trunc.txt"),
        "files-protected-dir",
    );
    assert_eq!(r["hook"], "file_open");
    assert_intact(&path, "protected/o-trunc.txt");
}

#[test]
fn ftruncate_denied() {
    let e = env();
    let path = file("protected/ftruncate.txt");
    assert_denied(
        tagged(&["ftruncate", &e.p("protected/ftruncate.txt")]),
        "truncate",
        &e.p("protected/ftruncate.txt"),
        "files-protected-dir",
    );
    assert_intact(&path, "protected/ftruncate.txt");
}

#[test]
fn protected_names_anywhere() {
    let e = env();
    let db = file("open/app.sqlite");
    assert_denied(
        tagged(&["unlink", &e.p("open/app.sqlite")]),
        "unlink",
        &e.p("open/app.sqlite"),
        "files-sqlite",
    );
    assert_intact(&db, "open/app.sqlite");
    let dotenv = file("open/.env");
    assert_denied(
        tagged(&["truncate", &e.p("open/.env")]),
        "truncate",
        &e.p("open/.env"),
        "files-env",
    );
    assert_intact(&dotenv, "open/.env");
    // Only the exact name: `.envrc` is not `.env`.
    file("open/.envrc");
    assert_allowed_tagged(
        tagged(&["unlink", &e.p("open/.envrc")]),
        "unlink",
        &e.p("open/.envrc"),
    );
}

#[test]
fn file_operations_allowed_outside_protection() {
    let e = env();
    file("open/u.txt");
    assert_allowed_tagged(
        tagged(&["unlink", &e.p("open/u.txt")]),
        "unlink",
        &e.p("open/u.txt"),
    );
    assert!(!e.path("open/u.txt").exists());
    fs::create_dir_all(e.path("open/d")).unwrap();
    assert_allowed_tagged(tagged(&["rmdir", &e.p("open/d")]), "rmdir", &e.p("open/d"));
    file("open/r.txt");
    assert_allowed_tagged(
        tagged(&["rename", &e.p("open/r.txt"), &e.p("open/r2.txt")]),
        "rename",
        &e.p("open/r.txt"),
    );
    file("open/t.txt");
    assert_allowed_tagged(
        tagged(&["truncate", &e.p("open/t.txt")]),
        "truncate",
        &e.p("open/t.txt"),
    );
    assert_eq!(fs::metadata(e.path("open/t.txt")).unwrap().len(), 0);
    file("open/o.txt");
    assert_allowed_tagged(
        tagged(&["open-trunc", &e.p("open/o.txt")]),
        "truncate",
        &e.p("open/o.txt"),
    );
    // Creating a new file inside a protected directory destroys nothing.
    file("open/new.txt");
    let outcome = tagged(&["rename", &e.p("open/new.txt"), &e.p("protected/new.txt")]);
    assert_eq!(
        outcome.errno, None,
        "moving a new file into a protected directory is allowed"
    );
}

#[test]
fn file_operations_untagged_are_not_confined() {
    let e = env();
    file("protected/untagged-unlink.txt");
    assert_untagged_ok(untagged(&["unlink", &e.p("protected/untagged-unlink.txt")]));
    assert!(!e.path("protected/untagged-unlink.txt").exists());
    file("protected/untagged-truncate.txt");
    assert_untagged_ok(untagged(&[
        "truncate",
        &e.p("protected/untagged-truncate.txt"),
    ]));
    file("protected/untagged-otrunc.txt");
    assert_untagged_ok(untagged(&[
        "open-trunc",
        &e.p("protected/untagged-otrunc.txt"),
    ]));
    file("protected/untagged-rename.txt");
    assert_untagged_ok(untagged(&[
        "rename",
        &e.p("protected/untagged-rename.txt"),
        &e.p("open/untagged-renamed.txt"),
    ]));
    fs::create_dir_all(e.path("protected/untagged-dir")).unwrap();
    assert_untagged_ok(untagged(&["rmdir", &e.p("protected/untagged-dir")]));
    file("open/untagged.sqlite");
    assert_untagged_ok(untagged(&["unlink", &e.p("open/untagged.sqlite")]));
}

/// The cgroup2 directory of process `pid`.
fn cgroup_of(pid: u32) -> PathBuf {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup2 entry");
    Path::new("/sys/fs/cgroup").join(rel.trim().trim_start_matches('/'))
}

/// The one child process of `pid`, once it has one.
fn child_of(pid: u32) -> u32 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let children = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"));
        if let Some(child) = children
            .ok()
            .and_then(|c| c.split_whitespace().next().and_then(|p| p.parse().ok()))
        {
            return child;
        }
        assert!(std::time::Instant::now() < deadline, "{pid} has no child");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn child_cgroup_of_an_agent_is_still_tagged() {
    let e = env();
    let path = file("protected/child-cgroup.txt");
    // Agents may not make cgroups (self-protection), so the test makes one
    // below a live session and starts a process in it.
    let mut sleeper = e
        .guardd
        .probe_command(&["--agent", TAGGED], &["exec", "/bin/sleep", "60"])
        .spawn()
        .expect("start an agent");
    let agent = child_of(sleeper.id());
    let sessions = Path::new("/sys/fs/cgroup").join(ROOT).join(TAGGED);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let session_dir = loop {
        let cgroup = cgroup_of(agent);
        if cgroup.starts_with(&sessions) {
            break cgroup;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent never joined its session"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let sub = session_dir.join("sub");
    fs::create_dir_all(&sub).unwrap();
    let mut cmd = std::process::Command::new(bin("guard-probe"));
    cmd.args(["unlink", &e.p("protected/child-cgroup.txt")]);
    join_cgroup_on_exec(&mut cmd, &sub.join("cgroup.procs"));
    let outcome = guard_tests::parse_outcome(cmd.output().unwrap(), "probe in a child cgroup");
    let r = assert_denied(
        outcome,
        "unlink",
        &e.p("protected/child-cgroup.txt"),
        "files-protected-dir",
    );
    assert_intact(&path, "protected/child-cgroup.txt");
    // The session's entry applied; the record names the child cgroup the
    // process ran in, and the session it belongs to.
    assert!(r["session"].as_str().is_some(), "{r}");
    let ino = |path: &Path| {
        fs::metadata(path)
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    assert_eq!(r["agent_cgroup"], ino(&session_dir), "{r}");
    assert_eq!(r["cgroup"], ino(&sub), "{r}");
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let _ = fs::remove_dir(&sub);
}

#[test]
fn monitor_mode_allows_and_records_would_deny() {
    let e = env();
    file("protected/monitored.txt");
    let outcome = e.guardd.probe(
        WATCHER,
        &e.dir,
        &["unlink", &e.p("protected/monitored.txt")],
    );
    assert_eq!(outcome.errno, None, "monitor mode does not deny");
    assert!(!e.path("protected/monitored.txt").exists());
    let r = e.guardd.record(outcome.pid, |r| r["action"] == "unlink");
    assert_eq!(r["verdict"], "would_deny", "{r}");
    assert_eq!(r["agent"], WATCHER);
    assert_eq!(r["rule"], "w-files-protected-dir");

    let outcome = e.guardd.probe(
        WATCHER,
        &e.dir,
        &["exec", &e.p("tools/denied-tool"), "true"],
    );
    assert_eq!(outcome.errno, None);
    let r = e.guardd.record(outcome.pid, |r| r["action"] == "exec");
    assert_eq!(
        (r["verdict"].as_str(), r["rule"].as_str()),
        (Some("would_deny"), Some("w-exec-denied-tool"))
    );
}

// --------------------------------------------------------------- network --

fn assert_no_connection(listener: &TcpListener) {
    listener.set_nonblocking(true).unwrap();
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("a connection reached the listener: {other:?}"),
    }
}

fn assert_no_datagram(socket: &UdpSocket) {
    socket.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    match socket.recv_from(&mut buf) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("a datagram arrived: {other:?}"),
    }
}

#[test]
fn connect_v4_denied() {
    let listener = TcpListener::bind(("127.0.0.1", PORT_V4)).unwrap();
    let target = format!("127.0.0.1:{PORT_V4}");
    let r = assert_denied(
        tagged(&["connect-tcp", &target]),
        "connect",
        &target,
        "net-v4",
    );
    assert_eq!(r["protocol"], "tcp");
    assert_no_connection(&listener);
}

#[test]
fn connect_v6_denied() {
    let listener = TcpListener::bind(("::1", PORT_V6)).unwrap();
    let target = format!("[::1]:{PORT_V6}");
    assert_denied(
        tagged(&["connect-tcp", &target]),
        "connect",
        &target,
        "net-v6",
    );
    assert_no_connection(&listener);
}

#[test]
fn connect_v4_mapped_v6_denied() {
    let listener = TcpListener::bind(("127.0.0.1", PORT_V4)).unwrap();
    let target = format!("[::ffff:127.0.0.1]:{PORT_V4}");
    assert_denied(
        tagged(&["connect-tcp", &target]),
        "connect",
        &target,
        "net-v4",
    );
    assert_no_connection(&listener);
}

#[test]
fn udp_sendto_and_connect_denied() {
    let socket = UdpSocket::bind(("127.0.0.1", PORT_UDP)).unwrap();
    let target = format!("127.0.0.1:{PORT_UDP}");
    let r = assert_denied(
        tagged(&["sendto-udp", &target]),
        "sendmsg",
        &target,
        "net-udp",
    );
    assert_eq!(r["protocol"], "udp");
    assert_no_datagram(&socket);
    assert_denied(
        tagged(&["connect-udp", &target]),
        "connect",
        &target,
        "net-udp",
    );
    // TCP to the same port is not covered by the UDP rule.
    let listener = TcpListener::bind(("127.0.0.1", PORT_UDP)).unwrap();
    assert_allowed_tagged(tagged(&["connect-tcp", &target]), "connect", &target);
    listener
        .accept()
        .expect("the allowed TCP connection arrives");
}

#[test]
fn connect_allowed_elsewhere() {
    let listener = TcpListener::bind(("127.0.0.1", PORT_OPEN)).unwrap();
    let target = format!("127.0.0.1:{PORT_OPEN}");
    assert_allowed_tagged(tagged(&["connect-tcp", &target]), "connect", &target);
    listener.accept().expect("the allowed connection arrives");
}

#[test]
fn network_untagged_is_not_confined() {
    let listener = TcpListener::bind(("127.0.0.1", PORT_V4)).unwrap();
    assert_untagged_ok(untagged(&["connect-tcp", &format!("127.0.0.1:{PORT_V4}")]));
    listener.accept().expect("untagged connection arrives");
    let v6 = TcpListener::bind(("::1", PORT_V6)).unwrap();
    assert_untagged_ok(untagged(&["connect-tcp", &format!("[::1]:{PORT_V6}")]));
    v6.accept().expect("untagged v6 connection arrives");
    assert_untagged_ok(untagged(&[
        "connect-tcp",
        &format!("[::ffff:127.0.0.1]:{PORT_V4}"),
    ]));
    listener
        .accept()
        .expect("untagged v4-mapped connection arrives");
    let socket = UdpSocket::bind(("127.0.0.1", PORT_UDP)).unwrap();
    assert_untagged_ok(untagged(&["sendto-udp", &format!("127.0.0.1:{PORT_UDP}")]));
    let mut buf = [0u8; 64];
    socket
        .recv_from(&mut buf)
        .expect("untagged datagram arrives");
    assert_untagged_ok(untagged(&["connect-udp", &format!("127.0.0.1:{PORT_UDP}")]));
}

// -------------------------------------------------------------- guardctl --

#[test]
fn guardctl_run_passes_exit_status_streams_and_signals() {
    let e = env();
    let run = |script: &str| {
        std::process::Command::new(bin("guardctl"))
            .arg("--socket")
            .arg(&e.guardd.socket)
            .args(["run", "--agent", TAGGED, "--", "sh", "-c", script])
            .current_dir(&e.dir)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start guardctl")
    };
    // Exit status and standard streams, both ways.
    let mut child = run("read line; echo \"out:$line\"; echo err >&2; exit 7");
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"hello\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out:hello\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    // A signal sent to guardctl reaches the agent, and guardctl dies of it too.
    let child = run("echo started; exec sleep 30");
    let mut child = child;
    let mut first = [0u8; 8];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut first).unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGTERM),
        "{status:?}"
    );
}

/// A denied agent learns why: `guardctl why` inside its session prints the
/// denial with the rule and its message, from the file GUARD_WHY names,
/// which only the session's user may read and no agent may change.
#[test]
fn a_denied_agent_can_read_why() {
    let e = env();
    let victim = e.path("protected/why.txt");
    fs::write(&victim, "keep").unwrap();
    let script = format!(
        r#"{probe} unlink {victim}
for i in $(seq 100); do {guardctl} why | grep -q files-protected-dir && break; sleep 0.1; done
echo "MODE=$(stat -c %a "$GUARD_WHY")"
{guardctl} why
echo tampered > "$GUARD_WHY" && echo "TAMPERED"
true"#,
        probe = bin("guard-probe").display(),
        victim = victim.display(),
        guardctl = bin("guardctl").display(),
    );
    let output = std::process::Command::new(bin("guardctl"))
        .arg("--socket")
        .arg(&e.guardd.socket)
        .args(["run", "--agent", TAGGED, "--", "sh", "-c", &script])
        .output()
        .expect("run the agent");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.contains("unlink") && l.contains("why.txt"))
        .unwrap_or_else(|| panic!("no reason for the denied unlink:\n{stdout}"));
    assert!(
        line.contains("denied by rule `files-protected-dir`")
            && line.ends_with(": production data"),
        "{line}"
    );
    assert!(
        !stdout.contains("TAMPERED"),
        "the agent changed its reasons file:\n{stdout}"
    );
    assert!(
        stdout.lines().any(|l| l == "MODE=400"),
        "the file is the session user's to read only:\n{stdout}"
    );
    assert!(victim.exists());
}

/// A denial under a rule marked `freeze` stops the whole session through
/// the cgroup freezer; `guardctl session thaw` resumes it and `guardctl
/// session kill` ends it.
#[test]
fn a_freeze_rule_freezes_the_session_until_thawed_or_killed() {
    let e = env();
    let dir = e.path("freeze");
    fs::create_dir_all(dir.join("keep")).unwrap();
    let victim = dir.join("keep/f");
    fs::write(&victim, "keep").unwrap();
    let policy = policy_of(
        &format!(
            "  - name: frz\n    default: allow\n    files:\n      protect:\n        - id: keep\n          subtree: {}\n          message: a bulk delete here stops the agent\n          freeze: true\n",
            dir.join("keep").display()
        ),
        &["frz"],
    );
    let root = "guard-freeze-test";
    let guardd = Guardd::start(&dir, &policy, root);
    let script = format!(
        "sleep 300 & {} unlink {}; echo thawed; wait",
        bin("guard-probe").display(),
        victim.display()
    );
    let mut agent = std::process::Command::new(bin("guardctl"))
        .arg("--socket")
        .arg(&guardd.socket)
        .args(["run", "--agent", "frz", "--", "sh", "-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the agent");
    let sessions = format!("/sys/fs/cgroup/{root}/frz");
    wait_populated(&sessions);
    let session = fs::read_dir(&sessions)
        .unwrap()
        .flatten()
        .find(|e| e.path().is_dir())
        .expect("a session cgroup")
        .path();
    let id = session.file_name().unwrap().to_str().unwrap().to_string();
    let frozen = |want: bool| {
        let line = format!("frozen {}", u8::from(want));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !fs::read_to_string(session.join("cgroup.events"))
            .unwrap()
            .lines()
            .any(|l| l == line)
        {
            assert!(Instant::now() < deadline, "session never `{line}`");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    frozen(true);
    let deadline = Instant::now() + Duration::from_secs(10);
    let denial = loop {
        let found = guardd
            .records()
            .into_iter()
            .find(|r| r["action"] == "unlink" && r["target"] == victim.display().to_string());
        match found {
            Some(record) => break record,
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            None => panic!("no record of the denial"),
        }
    };
    assert_eq!(denial["verdict"], "deny");
    assert_eq!(
        denial["flags"],
        serde_json::json!(["session_frozen"]),
        "{denial}"
    );
    assert!(victim.exists());

    let ctl = |action: &str| {
        let out = guardd.guardctl(&["session", action, &id]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ctl("thaw");
    frozen(false);
    ctl("kill");
    let status = agent.wait().unwrap();
    assert!(
        !status.success(),
        "the killed session's command failed: {status:?}"
    );
    let mut out = String::new();
    std::io::Read::read_to_string(agent.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert!(
        out.contains("thawed"),
        "the agent ran on after the thaw: {out}"
    );
}

/// Starts `guard-probe each STEPS` as agent `agent`, and returns the child
/// (stdout piped) with its session's cgroup once it runs.
fn each_in_session(
    guardd: &Guardd,
    root: &str,
    agent: &str,
    steps: &[String],
) -> (std::process::Child, std::path::PathBuf) {
    let child = std::process::Command::new(bin("guardctl"))
        .arg("--socket")
        .arg(&guardd.socket)
        .args(["run", "--agent", agent, "--"])
        .arg(bin("guard-probe"))
        .arg("each")
        .args(steps)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the agent");
    let sessions = format!("/sys/fs/cgroup/{root}/{agent}");
    wait_populated(&sessions);
    let session = fs::read_dir(&sessions)
        .unwrap()
        .flatten()
        .find(|e| e.path().is_dir())
        .expect("a session cgroup")
        .path();
    (child, session)
}

/// The errnos `guard-probe each` printed.
fn errnos_of(child: std::process::Child) -> Vec<i64> {
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

/// Waits for a record that satisfies `matches`.
fn wait_record(guardd: &Guardd, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(found) = guardd.records().into_iter().find(|r| matches(r)) {
            return found;
        }
        assert!(Instant::now() < deadline, "no record of {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn metadata_link_local_and_private_ranges_are_denied_by_default() {
    let e = env();
    let dir = e.path("egress-defaults");
    fs::create_dir_all(&dir).unwrap();
    let policy = policy_of(
        "  - name: open\n    default: allow\n  - name: lan\n    default: allow\n    network:\n      allow:\n        - id: lan\n          cidr: 10.0.0.0/8\n",
        &["open", "lan"],
    );
    let guardd = Guardd::start(&dir, &policy, "guard-egress-defaults-test");
    for (to, rule) in [
        ("169.254.169.254:80", "default-deny:metadata"),
        ("[fd00:ec2::254]:80", "default-deny:metadata"),
        ("169.254.1.1:80", "default-deny:link-local"),
        ("[fe80::1]:80", "default-deny:link-local"),
        ("10.1.2.3:80", "default-deny:private"),
        ("192.168.1.1:53", "default-deny:private"),
    ] {
        let outcome = guardd.probe("open", &dir, &["connect-udp", to]);
        assert_eq!(outcome.errno, Some(EPERM), "{to}");
        let record = guardd.record(outcome.pid, |r| r["verdict"] == "deny");
        assert_eq!(
            (&record["target"], &record["rule"]),
            (&to.into(), &rule.into()),
            "{record}"
        );
    }
    assert_eq!(
        guardd
            .probe("open", &dir, &["connect-udp", "127.0.0.1:9"])
            .errno,
        None
    );
    assert_ne!(
        guardd
            .probe("lan", &dir, &["connect-udp", "10.1.2.3:80"])
            .errno,
        Some(EPERM),
        "a rule allows a private range (no route in the VM, but not EPERM)"
    );
}

/// A DNS server on `at` (port 53) that answers A queries for `api.test`
/// with the address `answer` holds, with a TTL of 1 s, and every other
/// query with no records.
fn serve_dns(at: &str, answer: std::sync::Arc<std::sync::Mutex<std::net::Ipv4Addr>>) {
    use hickory_proto::{
        op::Message,
        rr::{RData, Record, RecordType, rdata::A},
    };
    let socket = std::net::UdpSocket::bind(at).expect("bind the test's DNS server");
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let Ok(query) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
            reply.metadata.recursion_available = true;
            for q in &query.queries {
                if q.name().to_ascii().eq_ignore_ascii_case("api.test.")
                    && q.query_type() == RecordType::A
                {
                    let ip = *answer.lock().unwrap();
                    reply
                        .answers
                        .push(Record::from_rdata(q.name().clone(), 1, RData::A(A(ip))));
                }
            }
            reply.queries = query.queries;
            if let Ok(bytes) = reply.to_vec() {
                let _ = socket.send_to(&bytes, from);
            }
        }
    });
}

#[test]
fn hostname_rules_follow_dns_answers_and_records_name_the_host() {
    let e = env();
    let dir = e.path("hosts");
    fs::create_dir_all(&dir).unwrap();
    let answer = std::sync::Arc::new(std::sync::Mutex::new(std::net::Ipv4Addr::new(127, 0, 0, 8)));
    serve_dns("127.0.0.2:53", answer.clone());
    let policy = policy_of(
        "  - name: egress\n    record_allowed: true\n    default: {exec: allow, files: allow, network: deny}\n    network:\n      allow:\n        - id: api\n          host: api.test\n          ports: 9\n          protocol: udp\n",
        &["egress"],
    );
    let guardd = Guardd::start_with(
        &dir,
        &policy,
        "guard-hosts-test",
        &["--dns-server", "127.0.0.2"],
        &[],
    );
    let resolved_to = |addr: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !guardd
            .log_text()
            .lines()
            .any(|l| l.contains("hostname resolved") && l.contains(addr))
        {
            assert!(
                Instant::now() < deadline,
                "api.test never resolved to {addr}: {}",
                guardd.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let connect = |to: &str| guardd.probe("egress", &dir, &["connect-udp", to]);
    resolved_to("127.0.0.8");
    let allowed = connect("127.0.0.8:9");
    assert_eq!(allowed.errno, None);
    let record = guardd.record(allowed.pid, |r| r["action"] == "connect");
    assert_eq!(
        (&record["verdict"], &record["rule"], &record["host"]),
        (&"allow".into(), &"api".into(), &"api.test".into()),
        "{record}"
    );
    assert_eq!(connect("127.0.0.8:10").errno, Some(EPERM), "another port");
    let other = connect("127.0.0.9:9");
    assert_eq!(
        other.errno,
        Some(EPERM),
        "an address the name did not resolve to"
    );
    let record = guardd.record(other.pid, |r| r["action"] == "connect");
    assert_eq!(record["rule"], "default", "{record}");

    // The answer changes: within its TTL guardd asks again, and the rule
    // moves to the new address.
    *answer.lock().unwrap() = std::net::Ipv4Addr::new(127, 0, 0, 9);
    resolved_to("127.0.0.9");
    assert_eq!(connect("127.0.0.9:9").errno, None);
    assert_eq!(connect("127.0.0.8:9").errno, Some(EPERM));
}

#[test]
fn budgets_deny_when_spent_and_refill_with_time_or_reset() {
    let e = env();
    let dir = e.path("budget");
    fs::create_dir_all(dir.join("keep")).unwrap();
    for name in ["a", "b", "c", "d", "e", "f", "keep/x"] {
        fs::write(dir.join(name), "x").unwrap();
    }
    let policy = policy_of(
        &format!(
            "  - name: bulk\n    default: allow\n    files:\n      protect:\n        - id: keep\n          subtree: {}\n    budgets:\n      destroy: {{rate: 2/s, burst: 3}}\n      destinations: {{rate: 1/h, burst: 2}}\n",
            dir.join("keep").display()
        ),
        &["bulk"],
    );
    let root = "guard-budget-test";
    let guardd = Guardd::start(&dir, &policy, root);
    let path = |name: &str| dir.join(name).display().to_string();
    // Destroy: three at once, then denied; a protected file stays denied
    // by its rule, spending nothing; 1.2 s later two more have refilled.
    let go = dir.join("go");
    let mut steps: Vec<String> = ["a", "b", "c", "d", "e", "keep/x"]
        .iter()
        .map(|n| format!("unlink:{}", path(n)))
        .collect();
    steps.push("@1200".into());
    steps.push(format!("unlink:{}", path("f")));
    // Destinations: two new ones, a repeat spends nothing, a third is
    // denied until a human refills the budget.
    for to in ["127.0.0.2:9", "127.0.0.3:9", "127.0.0.2:9", "127.0.0.4:9"] {
        steps.push(format!("connect-udp:{to}"));
    }
    steps.push(format!("@wait:{}", go.display()));
    for to in ["127.0.0.4:9", "127.0.0.5:9", "127.0.0.6:9"] {
        steps.push(format!("connect-udp:{to}"));
    }
    let (child, session) = each_in_session(&guardd, root, "bulk", &steps);
    let id = session.file_name().unwrap().to_str().unwrap().to_string();
    let finding = wait_record(&guardd, "the destinations budget denial", |r| {
        r["target"] == "127.0.0.4:9" && r["verdict"] == "deny"
    });
    assert_eq!(finding["rule"], "budget:destinations", "{finding}");
    assert_eq!(finding["budget"]["spent"], 2, "{finding}");
    let out = guardd.guardctl(&["session", "reset", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::write(&go, "").unwrap();
    assert_eq!(
        errnos_of(child),
        vec![0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 1, 0, 0, 1],
        "destroy: 3 allowed, 2 over budget, the protected file, 1 refilled; destinations: 2 new, 1 seen, 1 over budget, then after the reset 2 new and 1 over"
    );
    for name in ["a", "b", "c", "f"] {
        assert!(!dir.join(name).exists(), "{name} was deleted");
    }
    for name in ["d", "e", "keep/x"] {
        assert!(dir.join(name).exists(), "{name} was kept");
    }
    for name in ["d", "e"] {
        let r = wait_record(&guardd, "a destroy budget denial", |r| {
            r["target"] == path(name)
        });
        assert_eq!(
            (
                &r["verdict"],
                &r["rule"],
                &r["budget"]["name"],
                &r["budget"]["spent"]
            ),
            (
                &"deny".into(),
                &"budget:destroy".into(),
                &"destroy".into(),
                &3.into()
            ),
            "{r}"
        );
        assert!(r["message"].as_str().unwrap().contains("budget"), "{r}");
    }
    let kept = wait_record(&guardd, "the protected file", |r| {
        r["target"] == path("keep/x")
    });
    assert_eq!(
        kept["rule"], "keep",
        "protected paths stay protected by their rule: {kept}"
    );
}

#[test]
fn approvable_denials_become_tickets_a_human_approves_once_or_for_a_time() {
    let e = env();
    let dir = e.path("approve");
    fs::create_dir_all(dir.join("keep")).unwrap();
    let file = dir.join("keep/data.db");
    fs::write(&file, "rows").unwrap();
    let policy = policy_of(
        &format!(
            "  - name: appr\n    default: allow\n    files:\n      protect:\n        - id: data\n          subtree: {}\n          message: ask a human\n          approvable: true\n    network:\n      deny:\n        - id: no-7\n          cidr: 127.0.0.7\n          approvable: true\n",
            dir.join("keep").display()
        ),
        &["appr"],
    );
    let root = "guard-approve-test";
    let guardd = Guardd::start(&dir, &policy, root);
    let (go1, go2) = (dir.join("go1"), dir.join("go2"));
    let truncate = format!("truncate:{}", file.display());
    let connect = "connect-udp:127.0.0.7:9".to_string();
    let steps = vec![
        truncate.clone(),
        format!("@wait:{}", go1.display()),
        truncate.clone(),
        truncate.clone(),
        connect.clone(),
        format!("@wait:{}", go2.display()),
        connect.clone(),
        connect.clone(),
        "@3500".into(),
        connect.clone(),
    ];
    let (child, _session) = each_in_session(&guardd, root, "appr", &steps);
    let ticket_for = |target: &str| {
        let r = wait_record(&guardd, "an approvable denial", |r| {
            r["target"] == target && r["verdict"] == "deny"
        });
        assert_eq!(r["ticket"]["state"], "requested", "{r}");
        r["ticket"]["id"].as_str().unwrap().to_string()
    };
    let ctl = |args: &[&str]| {
        let out = guardd.guardctl(args);
        assert!(
            out.status.success(),
            "guardctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    let file_ticket = ticket_for(&file.display().to_string());
    let listed = ctl(&["tickets", "--json"]);
    assert!(
        listed.contains(&file_ticket) && listed.contains("pending"),
        "{listed}"
    );
    // An agent cannot approve its own ticket.
    let agent_approves = std::process::Command::new(bin("guardctl"))
        .arg("--socket")
        .arg(&guardd.socket)
        .args(["run", "--agent", "appr", "--"])
        .arg(bin("guardctl"))
        .arg("--socket")
        .arg(&guardd.socket)
        .args(["approve", &file_ticket])
        .output()
        .unwrap();
    assert!(!agent_approves.status.success());
    assert!(
        String::from_utf8_lossy(&agent_approves.stderr).contains("agents cannot approve"),
        "{}",
        String::from_utf8_lossy(&agent_approves.stderr)
    );
    ctl(&["approve", &file_ticket, "--once"]);
    fs::write(&go1, "").unwrap();

    let net_ticket = ticket_for("127.0.0.7:9");
    ctl(&["approve", &net_ticket, "--ttl", "2s"]);
    fs::write(&go2, "").unwrap();

    assert_eq!(
        errnos_of(child),
        vec![1, 0, 1, 1, 0, 0, 1],
        "file: denied, once approved, denied again; destination: denied, allowed twice within the ttl, denied after it"
    );
    let approval = wait_record(&guardd, "the approval", |r| {
        r["action"] == "ticket_approve" && r["ticket"]["id"] == file_ticket.as_str()
    });
    assert_eq!(approval["ticket"]["once"], true, "{approval}");
    assert_eq!(approval["hook"], "guardctl", "{approval}");
    let used = wait_record(&guardd, "the use", |r| {
        r["ticket"]["state"] == "used" && r["ticket"]["id"] == file_ticket.as_str()
    });
    assert_eq!(used["verdict"], "allow", "{used}");
    assert_eq!(used["action"], "truncate", "{used}");
    assert!(
        used["flags"]
            .as_array()
            .unwrap()
            .contains(&"approved".into()),
        "{used}"
    );
    let uses = guardd
        .records()
        .into_iter()
        .filter(|r| r["ticket"]["state"] == "used" && r["ticket"]["id"] == net_ticket.as_str())
        .count();
    assert_eq!(uses, 2, "two uses of the destination within its ttl");
    wait_record(&guardd, "the expiry", |r| {
        r["action"] == "ticket_expire" && r["ticket"]["id"] == net_ticket.as_str()
    });
    let all = ctl(&["tickets", "--all", "--json"]);
    let states: Vec<(String, String)> = all
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|t| {
            (
                t["id"].as_str().unwrap().into(),
                t["state"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(
        states.contains(&(file_ticket.clone(), "used".into())),
        "{states:?}"
    );
    assert!(
        states.contains(&(net_ticket.clone(), "expired".into())),
        "{states:?}"
    );
    assert!(
        file.exists() && fs::metadata(&file).unwrap().len() == 0,
        "the one approved truncate happened"
    );
}

// ------------------------------------------------------------- lifecycle --

#[test]
fn sigterm_keeps_agents_confined_until_detach() {
    let e = env();
    let dir = e.path("detach");
    fs::create_dir_all(dir.join("keep")).unwrap();
    let victim = dir.join("keep/file.txt");
    fs::write(&victim, "keep").unwrap();
    let policy = policy_of(
        &format!(
            "  - name: short-lived\n    default: allow\n    files:\n      protect:\n        - id: keep\n          subtree: {}\n",
            dir.join("keep").display()
        ),
        &["short-lived"],
    );
    let root = "guard-detach-test";
    let guardd = Guardd::start(&dir, &policy, root);
    let truncate = ["truncate", &victim.display().to_string()];
    let denied = guardd.probe("short-lived", &dir, &truncate);
    assert_eq!(denied.errno, Some(EPERM));
    // A process still running in a session when guardd stops.
    let mut sleeper = guardd
        .probe_command(&["--agent", "short-lived"], &["exec", "/bin/sleep", "60"])
        .spawn()
        .expect("start an agent");
    let sessions = format!("/sys/fs/cgroup/{root}/short-lived");
    wait_populated(&sessions);
    let (code, log) = guardd.stop_keeping_programs();
    assert_eq!(code, Some(0), "guardd exits 0 on SIGTERM:\n{log}");
    assert!(log.contains("the programs stay attached"), "{log}");
    let procs = fs::read_dir(&sessions)
        .unwrap()
        .flatten()
        .find(|e| e.path().is_dir())
        .expect("a session cgroup")
        .path()
        .join("cgroup.procs");
    let in_session = || {
        let mut cmd = std::process::Command::new(bin("guard-probe"));
        cmd.args(truncate);
        join_cgroup_on_exec(&mut cmd, &procs);
        guard_tests::parse_outcome(cmd.output().unwrap(), "probe in the session")
    };
    // No guardd runs, and the session is still confined.
    assert_eq!(
        in_session().errno,
        Some(EPERM),
        "confined while guardd is down"
    );
    guard_tests::detach(root);
    assert_eq!(
        in_session().errno,
        None,
        "after guardd --detach, the operation is no longer denied"
    );
    let _ = sleeper.kill();
    let _ = sleeper.wait();
}

/// A guardd of another build (here: another fault setting, which changes
/// the programs' globals) does not adopt what an earlier guardd left
/// attached: it attaches its own, then removes the old ones.
#[test]
fn a_guardd_of_another_build_replaces_the_pinned_programs() {
    let e = env();
    let dir = e.path("replace");
    fs::create_dir_all(&dir).unwrap();
    // File decisions fail under the fault; network ones do not.
    let port = 40021;
    let policy = policy_of(
        &format!(
            "  - name: replaced\n    default: allow\n    network:\n      deny:\n        - id: no-udp\n          cidr: 127.0.0.1\n          ports: {port}\n          protocol: udp\n"
        ),
        &["replaced"],
    );
    let root = "guard-replace-test";
    let pins = Path::new("/sys/fs/bpf/guard").join(root);
    let builds = || {
        fs::read_dir(&pins)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect::<Vec<_>>()
    };
    let (_, log) = Guardd::start(&dir, &policy, root).stop_keeping_programs();
    let first = builds();
    assert_eq!(first.len(), 1, "one build pinned: {first:?}\n{log}");
    let second = Guardd::start_with_env(&dir, &policy, root, &[("GUARD_FAULT_HOOK_ERRORS", "1")]);
    let log = second.log_text();
    assert!(!log.contains("adopted the programs"), "{log}");
    assert!(
        log.contains("replaced the programs of another build"),
        "{log}"
    );
    let now = builds();
    assert!(
        now.len() == 1 && now != first,
        "{first:?} replaced by {now:?}"
    );
    // The second guardd's programs enforce.
    let target = format!("127.0.0.1:{port}");
    let outcome = second.probe("replaced", &dir, &["connect-udp", &target]);
    assert_eq!(outcome.errno, Some(EPERM));
    second.record(outcome.pid, |r| r["rule"] == "no-udp");
    drop(second);
    assert!(!pins.exists(), "dropping the harness detaches");
}

/// guardd is SIGKILLed while an agent retries a denied connect once a
/// millisecond, and started again: the connect never succeeds, the second
/// guardd adopts the programs the first left attached (with the session),
/// and every denial is written once or counted lost.
#[test]
fn a_restart_leaves_no_gap_in_enforcement_or_records() {
    let e = env();
    let dir = e.path("restart");
    fs::create_dir_all(&dir).unwrap();
    let port = 40020;
    let policy = policy_of(
        &format!(
            "  - name: looper\n    default: allow\n    network:\n      deny:\n        - id: no-udp\n          cidr: 127.0.0.1\n          ports: {port}\n          protocol: udp\n"
        ),
        &["looper"],
    );
    let root = "guard-restart-test";
    let first = Guardd::start(&dir, &policy, root);
    let stop = dir.join("stop");
    let _ = fs::remove_file(&stop);
    let target = format!("127.0.0.1:{port}");
    let looper = first
        .probe_command(
            &["--agent", "looper"],
            &["connect-udp-loop", &target, &stop.display().to_string()],
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the loop");
    std::thread::sleep(Duration::from_secs(1));
    first.kill();
    // No guardd for a while; the loop goes on.
    std::thread::sleep(Duration::from_secs(2));
    let second = Guardd::start(&dir, &policy, root);
    std::thread::sleep(Duration::from_secs(1));
    fs::write(&stop, "").unwrap();
    let output = looper.wait_with_output().unwrap();
    let report: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("the loop: {e}: {}", String::from_utf8_lossy(&output.stdout)));
    let (allowed, denied) = (
        report["allowed"].as_u64().unwrap(),
        report["denied"].as_u64().unwrap(),
    );
    assert_eq!(allowed, 0, "a denied connect succeeded across the restart");
    assert!(denied > 1000, "the loop ran: {denied} denials");
    let log = second.log_text();
    assert!(log.contains("adopted the programs"), "{log}");
    assert!(
        log.contains("session kept from the previous guardd"),
        "{log}"
    );

    // Every denial is in the events file (both guardds append to it), or
    // counted lost; the second guardd may still be writing them.
    let account = || {
        let lines: Vec<Value> = fs::read_to_string(&second.events)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let denials: Vec<Value> = lines
            .iter()
            .filter(|r| r["pid"] == report["pid"] && r["verdict"] == "deny")
            .cloned()
            .collect();
        let lost: u64 = lines
            .iter()
            .filter_map(|l| l["loss"]["records"].as_u64())
            .sum();
        let recorded = denials.len() as u64;
        (denials, recorded, lost)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let (denials, recorded, lost) = loop {
        let (denials, recorded, lost) = account();
        if recorded + lost >= denied || Instant::now() > deadline {
            break (denials, recorded, lost);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!("across the restart: {denied} denials, {recorded} recorded, {lost} counted lost");
    // SIGKILL may land after a record is written and before the ring buffer
    // releases it: then the next guardd writes it once more (documented).
    assert!(
        (denied..=denied + 1).contains(&(recorded + lost)),
        "{denied} denials: {recorded} recorded, {lost} counted lost"
    );
    // The records the programs made while no guardd ran name the session.
    assert!(
        denials
            .iter()
            .all(|r| r["agent"] == "looper" && r["session"].is_string() && r["rule"] == "no-udp"),
        "{:?}",
        denials
            .iter()
            .find(|r| r["agent"] != "looper" || r["rule"] != "no-udp")
    );
}

#[test]
fn cgroups_guard_does_not_know_are_locked() {
    let e = env();
    let root = "guard-stale-test";
    let (first, second) = (e.path("stale/first"), e.path("stale/second"));
    fs::create_dir_all(&first).unwrap();
    fs::create_dir_all(&second).unwrap();
    let guardd = Guardd::start(&first, &policy_of(&open_profile("old"), &["old"]), root);
    let mut sleeper = guardd
        .probe_command(&["--agent", "old"], &["exec", "/bin/sleep", "60"])
        .spawn()
        .expect("start an agent");
    wait_populated(&format!("/sys/fs/cgroup/{root}/old"));
    guardd.stop();
    // A new guardd whose policy no longer has the agent: its session is
    // reported, and what runs there may do nothing.
    let guardd = Guardd::start(&second, &policy_of(&open_profile("new"), &["new"]), root);
    let log = guardd.log_text();
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert!(
        log.contains(&format!("{root}/old")) && log.contains("every action of theirs is denied"),
        "{log}"
    );
    // A cgroup made next to the sessions (the way out of a profile an agent
    // with root might try) is locked too.
    let escape = format!("/sys/fs/cgroup/{root}/new/escape");
    fs::create_dir_all(&escape).unwrap();
    let mut cmd = std::process::Command::new(bin("guard-probe"));
    cmd.arg("true");
    join_cgroup_on_exec(&mut cmd, &Path::new(&escape).join("cgroup.procs"));
    let error = cmd.output().expect_err("the exec is denied");
    assert_eq!(error.raw_os_error(), Some(EPERM), "{error}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let record = loop {
        if let Some(r) = guardd
            .records()
            .into_iter()
            .find(|r| r["profile"] == "locked" && r["action"] == "exec")
        {
            break r;
        }
        assert!(std::time::Instant::now() < deadline, "no locked record");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(
        (record["verdict"].as_str(), record["rule"].as_str()),
        (Some("deny"), Some("default")),
        "{record}"
    );
    let _ = fs::remove_dir(&escape);
}

// --------------------------------------------------------------- readiness --

#[test]
fn readiness_canary_was_denied_before_enforcing() {
    let e = env();
    let records = e.guardd.records();
    for action in ["connect", "unlink", "exec"] {
        assert!(
            records.iter().any(|r| r["agent"] == ".canary"
                && r["action"] == action
                && r["verdict"] == "deny"),
            "no canary {action} denial in the records"
        );
    }
}

#[test]
fn readiness_canary_catches_a_hook_that_is_not_attached() {
    let e = env();
    let dir = e.path("canary-fault");
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join("policy.yaml"),
        policy_of(&open_profile("a"), &["a"]),
    )
    .unwrap();
    for hook in ["socket_connect", "path_unlink", "bprm_check_security"] {
        let out = std::process::Command::new(bin("guardd"))
            .arg("--policy")
            .arg(dir.join("policy.yaml"))
            .args(["--cgroup-root", "guard-canary-test"])
            .env("GUARD_FAULT_SKIP_HOOK", hook)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(3),
            "{hook}: guardd must refuse to enforce:\n{stderr}"
        );
        assert!(
            stderr.contains("readiness canary") && stderr.contains(&format!("hook `{hook}`")),
            "{stderr}"
        );
        assert!(!claims_enforcing(&stderr), "{stderr}");
        assert!(
            !Path::new("/sys/fs/cgroup/guard-canary-test").exists(),
            "cgroups are removed again"
        );
    }
}

/// Runs alone in a VM booted without `bpf` in `lsm=` (mode `no-lsm`).
#[test]
fn guardd_refuses_a_kernel_without_bpf_lsm() {
    let lsm = fs::read_to_string("/sys/kernel/security/lsm").expect("securityfs mounted");
    assert!(
        !lsm.split(',').any(|l| l.trim() == "bpf"),
        "this test needs a kernel booted without bpf in lsm= (got {lsm})"
    );
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("policy.yaml"),
        policy_of(&open_profile("a"), &["a"]),
    )
    .unwrap();
    let out = std::process::Command::new(bin("guardd"))
        .arg("--policy")
        .arg(dir.path().join("policy.yaml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(3),
        "guardd must exit 3 when it cannot enforce:\n{stderr}"
    );
    assert!(stderr.contains("BPF LSM is not active"), "{stderr}");
    assert!(
        stderr.contains("lsm="),
        "the message says what to do:\n{stderr}"
    );
    assert!(
        !claims_enforcing(&stderr),
        "guardd must not claim to enforce:\n{stderr}"
    );
    assert!(out.stdout.is_empty(), "no records");
}

/// Waits until the cgroup at `dir` (or one below it) has a process.
fn wait_populated(dir: &str) {
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
fn join_cgroup_on_exec(cmd: &mut std::process::Command, procs: &Path) {
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

// ------------------------------------------------------- ways around rules --

/// The same program reached through a descriptor: denied by its identity.
#[test]
fn exec_denied_through_a_descriptor() {
    let e = env();
    for op in ["exec-fd", "exec-proc-fd"] {
        assert_denied(
            tagged(&[op, &e.p("tools/denied-tool")]),
            "exec",
            &e.p("tools/denied-tool"),
            "exec-denied-tool",
        );
    }
}

/// `ld.so PROGRAM` executes the loader, which maps the program: the mapping
/// is denied.
#[test]
fn exec_denied_through_the_dynamic_loader() {
    let e = env();
    let tool = e.p("tools/denied-tool");
    let output = e.guardd.guardctl(&[
        "run",
        "--agent",
        TAGGED,
        "--",
        "/lib64/ld-linux-x86-64.so.2",
        &tool,
        "true",
    ]);
    assert!(!output.status.success(), "the loader ran the denied tool");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("\"ok\":true"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let record = loop {
        if let Some(r) = e
            .guardd
            .records()
            .into_iter()
            .find(|r| r["action"] == "exec_map" && r["target"] == tool.as_str())
        {
            break r;
        }
        assert!(std::time::Instant::now() < deadline, "no exec_map record");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(
        (
            record["verdict"].as_str(),
            record["rule"].as_str(),
            record["hook"].as_str()
        ),
        (Some("deny"), Some("exec-denied-tool"), Some("mmap_file")),
        "{record}"
    );
}

/// Other routes to destroying a protected file.
#[test]
fn protected_files_survive_other_routes() {
    let e = env();
    // Exchanging a protected file with another destroys it at its name.
    let path = file("protected/exchange.txt");
    file("open/exchange-other.txt");
    assert_denied(
        tagged(&[
            "rename-exchange",
            &e.p("protected/exchange.txt"),
            &e.p("open/exchange-other.txt"),
        ]),
        "rename",
        &e.p("protected/exchange.txt"),
        "files-protected-dir",
    );
    assert_intact(&path, "protected/exchange.txt");
    // A hard link elsewhere, then unlinking the link: the protected name
    // and its content survive whatever the outcome.
    let path = file("protected/linked.txt");
    let link = e.p("open/linked-copy.txt");
    let _ = fs::remove_file(&link);
    let _ = tagged(&["link", &e.p("protected/linked.txt"), &link]);
    let _ = tagged(&["unlink", &link]);
    assert_intact(&path, "protected/linked.txt");
    // Moving a directory of protected files out of the protected subtree.
    let deep = file("protected/deep/keep.txt");
    assert_denied(
        tagged(&["rename", &e.p("protected/deep"), &e.p("open/deep-moved")]),
        "rename",
        &e.p("protected/deep"),
        "files-protected-dir",
    );
    assert_intact(&deep, "protected/deep/keep.txt");
}

/// io_uring requests reach the same kernel functions, and the same hooks,
/// as the system calls (some run on the process's io-wq worker threads).
#[test]
fn io_uring_requests_are_decided_like_system_calls() {
    let e = env();
    let path = file("protected/uring.txt");
    assert_denied(
        tagged(&["uring-unlink", &e.p("protected/uring.txt")]),
        "unlink",
        &e.p("protected/uring.txt"),
        "files-protected-dir",
    );
    assert_denied(
        tagged(&[
            "uring-rename",
            &e.p("protected/uring.txt"),
            &e.p("open/uring-moved.txt"),
        ]),
        "rename",
        &e.p("protected/uring.txt"),
        "files-protected-dir",
    );
    assert_intact(&path, "protected/uring.txt");
    let config = file("read-only/uring.conf");
    assert_denied(
        tagged(&["uring-open-write", &e.p("read-only/uring.conf")]),
        "open_write",
        &e.p("read-only/uring.conf"),
        "files-read-only",
    );
    assert_intact(&config, "read-only/uring.conf");
    let listener = TcpListener::bind(("127.0.0.1", PORT_V4)).unwrap();
    let target = format!("127.0.0.1:{PORT_V4}");
    assert_denied(
        tagged(&["uring-connect", &target]),
        "connect",
        &target,
        "net-v4",
    );
    assert_no_connection(&listener);
    // Allowed requests go through.
    file("open/uring-ok.txt");
    assert_allowed_tagged(
        tagged(&["uring-unlink", &e.p("open/uring-ok.txt")]),
        "unlink",
        &e.p("open/uring-ok.txt"),
    );
}

#[test]
fn connect_denied_through_other_calls() {
    let listener = TcpListener::bind(("127.0.0.1", PORT_V4)).unwrap();
    let target = format!("127.0.0.1:{PORT_V4}");
    // TCP Fast Open: connect and send in one sendto(2).
    assert_denied(
        tagged(&["sendto-fastopen", &target]),
        "sendmsg",
        &target,
        "net-v4",
    );
    // A non-blocking connect.
    assert_denied(
        tagged(&["connect-nonblock", &target]),
        "connect",
        &target,
        "net-v4",
    );
    assert_no_connection(&listener);
    // UDP sendmmsg(2).
    let socket = UdpSocket::bind(("127.0.0.1", PORT_UDP)).unwrap();
    let udp = format!("127.0.0.1:{PORT_UDP}");
    assert_denied(tagged(&["sendmmsg-udp", &udp]), "sendmsg", &udp, "net-udp");
    // A socket made before the process was an agent, inherited.
    let inherited = UdpSocket::bind("127.0.0.1:0").unwrap();
    use std::os::fd::AsRawFd;
    let fd = inherited.as_raw_fd();
    // SAFETY: clearing close-on-exec on a descriptor this test owns.
    unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
    let outcome = tagged(&["connect-fd", &fd.to_string(), &udp]);
    assert_denied(outcome, "connect", &udp, "net-udp");
    assert_no_datagram(&socket);
}

// --------------------------------------------------------- self-protection --

/// Asserts a self-protection denial: EPERM, and a deny record of `action`
/// with rule `self-protection`, whatever the profile says.
fn assert_tamper_denied(outcome: Outcome, action: &str) -> Value {
    assert_eq!(outcome.errno, Some(EPERM), "expected EPERM for {action}");
    let record = env().guardd.record(outcome.pid, |r| {
        r["action"] == action && r["rule"] == "self-protection"
    });
    assert_eq!(record["verdict"], "deny", "{record}");
    assert!(
        record["message"]
            .as_str()
            .is_some_and(|m| m.contains("whatever its profile") || m.contains("Guard's own")),
        "{record}"
    );
    record
}

#[test]
fn agents_cannot_use_bpf_mount_or_load_modules() {
    let e = env();
    assert_tamper_denied(tagged(&["bpf"]), "bpf");
    // In monitor mode too: self-protection is never only reported.
    let watched = e.guardd.probe(WATCHER, &e.dir, &["bpf"]);
    assert_eq!(watched.errno, Some(EPERM), "monitor mode: bpf");
    assert_eq!(untagged(&["bpf"]).errno, None, "root outside agents may");

    fs::create_dir_all(e.path("mnt")).unwrap();
    let r = assert_tamper_denied(tagged(&["mount-tmpfs", &e.p("mnt")]), "mount");
    assert_eq!(r["target"], e.p("mnt"), "{r}");
    assert_eq!(r["hook"], "sb_mount", "{r}");
    // A mount the test made stays.
    fs::create_dir_all(e.path("mounted")).unwrap();
    assert_eq!(untagged(&["mount-tmpfs", &e.p("mounted")]).errno, None);
    assert_tamper_denied(tagged(&["umount", &e.p("mounted")]), "umount");
    assert_eq!(untagged(&["umount", &e.p("mounted")]).errno, None);

    // Kernel modules, from a file and from memory. Outside agents the
    // kernel gets to parse the bogus module (and refuses it otherwise).
    let module = file("module.ko");
    let module = module.display().to_string();
    let r = assert_tamper_denied(tagged(&["finit-module", &module]), "load_kernel_file");
    assert_eq!(r["target"], module, "{r}");
    assert_tamper_denied(tagged(&["init-module"]), "load_kernel_data");
    assert_ne!(untagged(&["finit-module", &module]).errno, Some(EPERM));
}

#[test]
fn agents_cannot_signal_or_trace_guardd() {
    let e = env();
    let pid = e.guardd.pid().to_string();
    let r = assert_tamper_denied(tagged(&["kill", &pid, "15"]), "signal");
    assert_eq!(r["target"], format!("pid {pid}"), "{r}");
    assert_eq!(r["hook"], "task_kill", "{r}");
    assert_tamper_denied(tagged(&["kill", &pid, "9"]), "signal");
    assert_tamper_denied(tagged(&["ptrace", &pid]), "ptrace");
    assert_tamper_denied(tagged(&["pidfd-getfd", &pid, "0"]), "ptrace");
    // guardd lives on and still answers.
    assert!(e.guardd.status()["hooks"].is_array());
    // Probing whether it exists (signal 0) is not an attack.
    assert_eq!(tagged(&["kill", &pid, "0"]).errno, None);
}

#[test]
fn agents_cannot_change_guards_files_or_kernel_interfaces() {
    let e = env();
    let policy = e.guardd.policy.display().to_string();
    let r = assert_tamper_denied(tagged(&["open-write", &policy]), "open_write");
    assert_eq!(r["target"], policy, "{r}");
    let events = e.guardd.events.display().to_string();
    assert_tamper_denied(tagged(&["unlink", &events]), "unlink");
    assert_tamper_denied(tagged(&["truncate", &events]), "truncate");
    // Guard's binaries (opening a running one for write fails earlier,
    // with ETXTBSY, so they are unlinked).
    for binary in ["guardd", "guardctl", "guard-collector"] {
        let binary = bin(binary).display().to_string();
        assert_tamper_denied(tagged(&["unlink", &binary]), "unlink");
    }
    assert!(e.guardd.events.exists() && fs::metadata(&e.guardd.events).unwrap().len() > 0);
    // Kernel interfaces: the module loader's path, Guard's cgroups.
    let r = assert_tamper_denied(
        tagged(&["open-write", "/proc/sys/kernel/modprobe"]),
        "open_write",
    );
    assert_eq!(r["target"], "/proc/sys/kernel/modprobe", "{r}");
    let escape = format!("/sys/fs/cgroup/{ROOT}/escape");
    assert_tamper_denied(tagged(&["mkdir", &escape]), "mkdir");
    assert!(!Path::new(&escape).exists());
}

#[test]
fn a_tagged_process_stays_tagged() {
    let e = env();
    for how in [
        "cgroup:/sys/fs/cgroup",
        "child-cgroup",
        "unshare",
        "daemonize",
    ] {
        let rel = format!("protected/escape-{}.txt", how.replace([':', '/'], "-"));
        let path = file(&rel);
        let outcome = tagged(&["--escape", how, "unlink", &e.p(&rel)]);
        assert_denied(outcome, "unlink", &e.p(&rel), "files-protected-dir");
        assert_intact(&path, &rel);
    }
    // The ways out are denied and recorded themselves.
    let r = assert_tamper_denied(tagged(&["join-cgroup", "/sys/fs/cgroup"]), "open_write");
    assert_eq!(r["target"], "/sys/fs/cgroup/cgroup.procs", "{r}");
    assert_tamper_denied(
        tagged(&["clone-into-cgroup", "/sys/fs/cgroup"]),
        "clone_into_cgroup",
    );
}

/// A hook that cannot decide (an internal error, injected here for every
/// file decision) allows by default and denies for `on_error: deny`; both
/// are counted.
#[test]
fn internal_errors_fail_open_or_closed_as_the_profile_says() {
    let e = env();
    let dir = e.path("faults");
    fs::create_dir_all(&dir).unwrap();
    let policy = policy_of(
        &format!(
            "{}  - name: closed\n    default: allow\n    on_error: deny\n",
            open_profile("open")
        ),
        &["open", "closed"],
    );
    let guardd = Guardd::start_with_env(
        &dir,
        &policy,
        "guard-fault-test",
        &[("GUARD_FAULT_HOOK_ERRORS", "1")],
    );
    let counters = |name: &str| guardd.status()["counters"][name].as_u64().unwrap();
    let victim = dir.join("victim");
    fs::write(&victim, "x").unwrap();
    let (errors, denials) = (counters("hook_errors"), counters("error_denials"));
    let open = guardd.probe("open", &dir, &["unlink", &victim.display().to_string()]);
    assert_eq!(open.errno, None, "fail open");
    assert!(!victim.exists());
    assert!(counters("hook_errors") > errors);
    assert_eq!(
        counters("error_denials"),
        denials,
        "nothing denied failing open"
    );
    fs::write(&victim, "x").unwrap();
    let closed = guardd.probe("closed", &dir, &["unlink", &victim.display().to_string()]);
    assert_eq!(closed.errno, Some(EPERM), "fail closed");
    assert!(victim.exists());
    assert!(counters("error_denials") > denials);
}

// --------------------------------------------------------- read-only files --

#[test]
fn read_only_subtree_denies_writing_and_creating() {
    let e = env();
    let path = file("read-only/config.toml");
    let target = e.p("read-only/config.toml");
    let denied = |args: &[&str], action: &str, target: &str, rule: &str| {
        let r = assert_denied(tagged(args), action, target, rule);
        assert_eq!(
            r["message"], "configuration agents may read, not change",
            "{r}"
        );
    };
    denied(
        &["open-write", &target],
        "open_write",
        &target,
        "files-read-only",
    );
    denied(&["unlink", &target], "unlink", &target, "files-read-only");
    denied(
        &["truncate", &target],
        "truncate",
        &target,
        "files-read-only",
    );
    let new = e.p("read-only/new.txt");
    denied(&["create", &new], "create", &new, "files-read-only");
    let dir = e.p("read-only/newdir");
    denied(&["mkdir", &dir], "mkdir", &dir, "files-read-only");
    let link = e.p("read-only/link");
    denied(
        &["symlink", "/etc/hostname", &link],
        "symlink",
        &link,
        "files-read-only",
    );
    let outside = file("open/outside.txt");
    let hard = e.p("read-only/hard");
    denied(
        &["link", &outside.display().to_string(), &hard],
        "link",
        &hard,
        "files-read-only",
    );
    let moved = e.p("read-only/moved.txt");
    denied(
        &["rename", &outside.display().to_string(), &moved],
        "rename_into",
        &moved,
        "files-read-only",
    );
    assert_intact(&path, "read-only/config.toml");
    for gone in ["new.txt", "newdir", "link", "hard", "moved.txt"] {
        assert!(
            !e.path("read-only").join(gone).exists(),
            "{gone} was created"
        );
    }
    // Reading is not a decision; writing elsewhere is allowed.
    assert_eq!(tagged(&["read", &target]).errno, None);
    let open = file("open/writable.txt");
    assert_allowed_tagged(
        tagged(&["open-write", &open.display().to_string()]),
        "open_write",
        &open.display().to_string(),
    );
    // The nearest rule decides: a writable directory inside the read-only one.
    let scratch = e.p("read-only/scratch/note.txt");
    let r = tagged(&["create", &scratch]);
    assert_eq!(r.errno, None, "writable inside read-only");
    let record = e
        .guardd
        .record(r.pid, |r| r["action"] == "create" && r["target"] == scratch);
    assert_eq!(
        (record["verdict"].as_str(), record["rule"].as_str()),
        (Some("allow"), Some("files-writable-inside"))
    );
}

#[test]
fn read_only_names_anywhere() {
    let key = file("open/server.pem");
    let target = key.display().to_string();
    assert_denied(
        tagged(&["open-write", &target]),
        "open_write",
        &target,
        "files-pem",
    );
    assert_denied(tagged(&["unlink", &target]), "unlink", &target, "files-pem");
    assert_intact(&key, "open/server.pem");
}

#[test]
fn untagged_writes_to_read_only_subtrees_are_not_confined() {
    let e = env();
    file("read-only/untagged.txt");
    assert_untagged_ok(untagged(&["open-write", &e.p("read-only/untagged.txt")]));
    assert_untagged_ok(untagged(&["create", &e.p("read-only/untagged-new.txt")]));
}

// --------------------------------------------------------------- sessions --

#[test]
fn sessions_carry_labels_user_and_profile() {
    let e = env();
    file("protected/labelled.txt");
    let target = e.p("protected/labelled.txt");
    let outcome = e.guardd.probe_with(
        &[
            "--agent",
            TAGGED,
            "--label",
            "ticket=OPS-7",
            "--label",
            "model=test-model",
        ],
        &e.dir,
        &["unlink", &target],
    );
    let r = assert_denied(outcome, "unlink", &target, "files-protected-dir");
    assert_eq!(r["labels"]["ticket"], "OPS-7", "{r}");
    assert_eq!(r["labels"]["model"], "test-model", "{r}");
    assert_eq!(r["user"]["name"], "root", "{r}");
    assert_eq!(r["message"], "production data", "{r}");
    // The session is in the daemon's table while it runs, not after.
    let session = r["session"].as_str().unwrap();
    assert!(r.get("parent_session").is_none(), "{r}");

    // Another profile for one session: the watcher's, in monitor mode.
    let outcome = e.guardd.probe_with(
        &["--agent", TAGGED, "--profile", WATCHER],
        &e.dir,
        &["unlink", &target],
    );
    assert_eq!(outcome.errno, None, "monitor mode does not deny");
    let r = e.guardd.record(outcome.pid, |r| r["action"] == "unlink");
    assert_eq!(
        (
            r["verdict"].as_str(),
            r["profile"].as_str(),
            r["agent"].as_str()
        ),
        (Some("would_deny"), Some(WATCHER), Some(TAGGED)),
        "{r}"
    );
    assert_ne!(r["session"], session, "every run is a new session");
}

#[test]
fn sub_agents_nest_in_their_parent_session() {
    let e = env();
    file("protected/sub-agent.txt");
    let target = e.p("protected/sub-agent.txt");
    let guardctl = bin("guardctl").display().to_string();
    let probe = bin("guard-probe").display().to_string();
    // An agent launching a sub-agent: guardctl run inside guardctl run.
    let outcome = e.guardd.probe_with(
        &["--agent", TAGGED, "--label", "role=lead"],
        &e.dir,
        &[
            "exec",
            &guardctl,
            "--socket",
            &e.guardd.socket.display().to_string(),
            "run",
            "--agent",
            TAGGED,
            "--label",
            "role=helper",
            "--",
            &probe,
            "unlink",
            &target,
        ],
    );
    let r = assert_denied(outcome, "unlink", &target, "files-protected-dir");
    assert_eq!(r["labels"]["role"], "helper", "{r}");
    let parent = r["parent_session"].as_str().expect("a parent session");
    assert_ne!(r["session"].as_str(), Some(parent));

    // A sub-agent cannot pick a looser profile, and agents cannot reload.
    let inner = |args: &[&str]| {
        let mut all = vec!["exec", guardctl.as_str(), "--socket"];
        let socket = e.guardd.socket.display().to_string();
        let socket: &'static str = Box::leak(socket.into_boxed_str());
        all.push(socket);
        all.extend_from_slice(args);
        e.guardd
            .probe_command(&["--agent", TAGGED], &all)
            .current_dir(&e.dir)
            .output()
            .unwrap()
    };
    let out = inner(&["run", "--agent", TAGGED, "--profile", WATCHER, "--", "true"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("parent session's profile"), "{stderr}");
    let out = inner(&["reload"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("agents cannot change the policy"),
        "{stderr}"
    );
    // An agent's status lists its own session only, while another runs.
    let mut other = e
        .guardd
        .probe_command(
            &["--agent", TAGGED, "--label", "who=other"],
            &["exec", "/bin/sleep", "30"],
        )
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !e.guardd.status()["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["labels"]["who"] == "other")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the other session never showed"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = inner(&["status", "--json"]);
    let _ = other.kill();
    let _ = other.wait();
    let status: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let sessions = status["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 1, "{sessions:#?}");
    assert!(sessions[0]["labels"].get("who").is_none(), "{sessions:#?}");
}

#[test]
fn guardctl_run_names_an_unknown_agent() {
    let e = env();
    let out = e
        .guardd
        .guardctl(&["run", "--agent", "no-such-agent", "--", "true"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no agent `no-such-agent`"), "{stderr}");
}

#[test]
fn guardctl_status_shows_hooks_generation_modes_and_sessions() {
    let e = env();
    let status = e.guardd.status();
    assert_eq!(status["enforcing"], true, "{status:#}");
    assert!(status["generation"].as_u64().is_some_and(|g| g >= 1));
    assert_eq!(status["policy_sha256"].as_str().map(str::len), Some(64));
    let hooks = status["hooks"].as_array().unwrap();
    for required in [
        "bprm_check_security",
        "path_unlink",
        "socket_connect",
        "path_mknod",
    ] {
        let hook = hooks.iter().find(|h| h["name"] == required).unwrap();
        assert_eq!(
            (&hook["attached"], &hook["enforcing"]),
            (&Value::Bool(true), &Value::Bool(true)),
            "{hook}"
        );
    }
    let mode = |name: &str| {
        status["profiles"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| p["mode"].clone())
    };
    assert_eq!(mode(TAGGED), Some("enforce".into()));
    assert_eq!(mode(WATCHER), Some("monitor".into()));
    assert!(
        mode(".canary").is_none(),
        "the canary is not a user profile"
    );
    // A session that is running shows up.
    let mut sleeper = e
        .guardd
        .probe_command(
            &["--agent", TAGGED, "--label", "ticket=S-1"],
            &["exec", "/bin/sleep", "30"],
        )
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let found = loop {
        let sessions = e.guardd.status()["sessions"].clone();
        if let Some(s) = sessions
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["labels"]["ticket"] == "S-1")
        {
            break s.clone();
        }
        assert!(std::time::Instant::now() < deadline, "session not listed");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert_eq!(found["agent"], TAGGED);
    assert_eq!(found["uid"], 0);
    let text = e.guardd.guardctl(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("enforcing: yes") && text.contains("MONITOR"),
        "{text}"
    );
}

// ------------------------------------------------------- default deny ----

/// A guardd of its own with a locked-down profile: everything not allowed
/// is denied.
#[test]
fn a_default_deny_profile_allows_only_its_rules() {
    let e = env();
    let dir = e.path("locked");
    fs::create_dir_all(dir.join("work")).unwrap();
    fs::create_dir_all(dir.join("outside")).unwrap();
    let probe = bin("guard-probe");
    copy_executable(&probe, &dir.join("other-tool"));
    copy_executable(&probe, &dir.join("pinned-tool"));
    copy_executable(&probe, &dir.join("wrong-pin"));
    copy_executable(&probe, &dir.join("chmod-tool"));
    // The copies have the same content, so one digest pins both.
    let pinned_sha = sha256_of(&dir.join("pinned-tool"));
    let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let d = dir.display();
    let policy = policy_of(
        &format!(
            r#"  - name: locked
    default: deny
    record_allowed: true
    exec:
      allow:
        - id: the-probe
          path: {probe}
        - id: pinned
          path: {d}/pinned-tool
          sha256: {pinned_sha}
        - id: wrong-pin
          path: {d}/wrong-pin
          sha256: {zeros}
        - id: chmod-pin
          path: {d}/chmod-tool
          sha256: {pinned_sha}
    files:
      writable:
        - id: workspace
          subtree: {d}/work
    network:
      allow:
        - id: local-api
          cidr: 127.0.0.1
          ports: {port}
          protocol: tcp
"#,
            probe = probe.display(),
            zeros = "0".repeat(64),
        ),
        &["locked"],
    );
    let guardd = Guardd::start(&dir, &policy, "guard-locked-test");
    assert!(
        guardd.log_text().contains("`wrong-pin`"),
        "a digest mismatch is reported:\n{}",
        guardd.log_text()
    );
    let run = |args: &[&str]| guardd.probe("locked", &dir, args);
    // The outcome and the record of `action` on `target`.
    let verdict = |outcome: Outcome, action: &str, target: &str| {
        let r = guardd.record(outcome.pid, |r| {
            r["action"] == action && r["target"] == target
        });
        (
            outcome.errno,
            r["verdict"].as_str().unwrap().to_string(),
            r["rule"].as_str().unwrap().to_string(),
        )
    };
    let allowed = |rule: &str| (None, "allow".to_string(), rule.to_string());
    let by_default = (Some(EPERM), "deny".to_string(), "default".to_string());

    // exec: the probe itself is allowed by its rule (guardctl execs it).
    let probe_path = probe.display().to_string();
    assert_eq!(
        verdict(run(&["true"]), "exec", &probe_path),
        allowed("the-probe")
    );
    let other = dir.join("other-tool").display().to_string();
    assert_eq!(
        verdict(run(&["exec", &other, "true"]), "exec", &other),
        by_default
    );
    let pinned = dir.join("pinned-tool").display().to_string();
    assert_eq!(
        verdict(run(&["exec", &pinned, "true"]), "exec", &pinned),
        allowed("pinned")
    );
    let wrong = dir.join("wrong-pin").display().to_string();
    assert_eq!(
        verdict(run(&["exec", &wrong, "true"]), "exec", &wrong),
        by_default
    );
    // A copy of an allowed program in memory (memfd) is not that program:
    // no rule names it, so the default denies it.
    let memfd = run(&["exec-memfd", &probe_path]);
    assert_eq!(memfd.errno, Some(EPERM), "memfd exec");
    let r = guardd.record(memfd.pid, |r| {
        r["action"] == "exec" && r["target"].as_str().is_some_and(|t| t.contains("memfd"))
    });
    assert_eq!(
        (r["verdict"].as_str(), r["rule"].as_str()),
        (Some("deny"), Some("default")),
        "{r}"
    );
    assert!(
        r["target"]
            .as_str()
            .is_some_and(|t| t.starts_with("/memfd:guard-probe")),
        "{r}"
    );

    // network
    let ok = format!("127.0.0.1:{port}");
    assert_eq!(
        verdict(run(&["connect-tcp", &ok]), "connect", &ok),
        allowed("local-api")
    );
    let other_port = format!("127.0.0.1:{}", port.wrapping_add(1));
    assert_eq!(
        verdict(run(&["connect-tcp", &other_port]), "connect", &other_port),
        by_default
    );

    // files: writes and destruction only in the workspace.
    let inside = dir.join("work/a.txt").display().to_string();
    assert_eq!(
        verdict(run(&["create", &inside]), "create", &inside),
        allowed("workspace")
    );
    assert_eq!(
        verdict(run(&["unlink", &inside]), "unlink", &inside),
        allowed("workspace")
    );
    fs::write(dir.join("outside/b.txt"), "b").unwrap();
    let outside = dir.join("outside/b.txt").display().to_string();
    assert_eq!(
        verdict(run(&["open-write", &outside]), "open_write", &outside),
        by_default
    );
    assert_eq!(
        verdict(run(&["unlink", &outside]), "unlink", &outside),
        by_default
    );
    let created = dir.join("outside/c.txt").display().to_string();
    assert_eq!(
        verdict(run(&["create", &created]), "create", &created),
        by_default
    );
    assert!(dir.join("outside/b.txt").exists() && !dir.join("outside/c.txt").exists());

    // A pinned file that changes is no longer the file the rule allows: the
    // kernel sees its change time differ at once, and guardd notices the
    // change and publishes a generation without the entry.
    let generation = guardd.status()["generation"].as_u64().unwrap();
    {
        use std::io::Write;
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(dir.join("pinned-tool"))
            .unwrap();
        f.write_all(b"tampered").unwrap();
    }
    assert_eq!(
        verdict(run(&["exec", &pinned, "true"]), "exec", &pinned),
        by_default
    );
    let generation = wait_for_generation(&guardd, generation + 1)["generation"]
        .as_u64()
        .unwrap();
    assert!(guardd.log_text().contains("not the one the rule names"));
    assert_eq!(
        verdict(run(&["exec", &pinned, "true"]), "exec", &pinned),
        by_default
    );
    // A new change time with the same content: guardd re-hashes and
    // publishes the entry with the new change time.
    let chmodded = dir.join("chmod-tool").display().to_string();
    fs::set_permissions(&chmodded, fs::Permissions::from_mode(0o700)).unwrap();
    wait_for_generation(&guardd, generation + 1);
    assert_eq!(
        verdict(run(&["exec", &chmodded, "true"]), "exec", &chmodded),
        allowed("chmod-pin")
    );
    drop(listener);
}

fn sha256_of(path: &Path) -> String {
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
fn wait_for_generation(guardd: &Guardd, generation: u64) -> Value {
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

// ----------------------------------------------------------------- reload --

#[test]
fn reload_switches_policy_and_refuses_a_broken_one() {
    let e = env();
    let dir = e.path("reload");
    for sub in ["a", "b"] {
        fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let protecting = |sub: &str| {
        policy_of(
            &format!(
                "  - name: r\n    default: allow\n    files:\n      protect:\n        - id: keep-{sub}\n          subtree: {}\n",
                dir.join(sub).display()
            ),
            &["r"],
        )
    };
    let guardd = Guardd::start(&dir, &protecting("a"), "guard-reload-test");
    let unlink = |sub: &str| {
        let path = dir.join(sub).join("f");
        fs::write(&path, "f").unwrap();
        let outcome = guardd.probe("r", &dir, &["unlink", &path.display().to_string()]);
        let _ = fs::remove_file(&path);
        outcome.errno
    };
    assert_eq!((unlink("a"), unlink("b")), (Some(EPERM), None));

    // guardctl reload.
    let second = guardd.reload(&protecting("b")).expect("reload");
    assert!(second >= 2);
    let digest_b = guardd.status()["policy_sha256"].clone();
    assert_eq!((unlink("a"), unlink("b")), (None, Some(EPERM)));

    // A broken policy is refused with its line; the generation in force stays.
    let broken = protecting("a").replace("subtree:", "subtre:");
    let (code, stderr) = guardd.reload(&broken).unwrap_err();
    assert_eq!(code, 4, "{stderr}");
    assert!(
        stderr.contains("line 7") && stderr.contains("subtre"),
        "{stderr}"
    );
    let status = guardd.status();
    assert_eq!(status["generation"], second);
    assert!(
        status["last_rejected"]
            .as_str()
            .is_some_and(|m| m.contains("line 7"))
    );
    assert_eq!((unlink("a"), unlink("b")), (None, Some(EPERM)));
    let missing = protecting("a").replace("/reload/a", "/reload/missing");
    assert_eq!(guardd.reload(&missing).unwrap_err().0, 4);
    assert_eq!(guardd.status()["generation"], second);

    // SIGHUP.
    fs::write(&guardd.policy, protecting("a")).unwrap();
    guardd.signal(libc::SIGHUP);
    wait_for_generation(&guardd, second + 1);
    assert_eq!((unlink("a"), unlink("b")), (Some(EPERM), None));

    // A change of the file alone.
    fs::write(&guardd.policy, protecting("b")).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while guardd.status()["policy_sha256"] != digest_b {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            guardd.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!((unlink("a"), unlink("b")), (None, Some(EPERM)));
    let log = guardd.log_text();
    assert!(
        log.contains("SIGHUP") && log.contains("file changed"),
        "{log}"
    );
}

#[test]
fn generation_swaps_are_atomic_under_load() {
    let e = env();
    let dir = e.path("swap");
    fs::create_dir_all(&dir).unwrap();
    let target = "127.0.0.2:7";
    // A denies the target by a rule; B denies by default and allows it by
    // a rule. A decision made from a mix of the two would show up as a
    // verdict or rule that does not belong to the policy of its record.
    let a = policy_of(
        "  - name: s\n    default: allow\n    record_allowed: true\n    network:\n      deny:\n        - id: a-denies\n          cidr: 127.0.0.2\n          ports: 7\n",
        &["s"],
    );
    let b = policy_of(
        "  - name: s\n    default: deny\n    record_allowed: true\n    network:\n      allow:\n        - id: b-allows\n          cidr: 127.0.0.2\n          ports: 7\n",
        &["s"],
    )
    .replace("default: deny", "default: {exec: allow, files: allow, network: deny}");
    let guardd = Guardd::start(&dir, &a, "guard-swap-test");
    let digest_a = guardd.status()["policy_sha256"].clone();
    let stop = dir.join("stop");
    let hammer = guardd
        .probe_command(
            &["--agent", "s"],
            &["connect-udp-loop", target, &stop.display().to_string()],
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let swaps = 100;
    let mut digest_b = Value::Null;
    for i in 0..swaps {
        let text = if i % 2 == 0 { &b } else { &a };
        guardd.reload(text).expect("reload");
        if i == 0 {
            digest_b = guardd.status()["policy_sha256"].clone();
        }
    }
    assert_ne!(digest_a, digest_b);
    // Enough decisions: keep hammering until there are 10,000.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while guardd
        .records()
        .iter()
        .filter(|r| r["action"] == "connect")
        .count()
        < 10_000
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    fs::write(&stop, "").unwrap();
    let out = hammer.wait_with_output().unwrap();
    let report: Value = serde_json::from_slice(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap()
            .as_bytes(),
    )
    .unwrap();
    let pid = report["pid"].as_u64().unwrap() as u32;
    std::thread::sleep(std::time::Duration::from_millis(500));
    let records: Vec<Value> = guardd
        .records()
        .into_iter()
        .filter(|r| r["pid"] == pid && r["action"] == "connect")
        .collect();
    let (allowed, denied) = (
        report["allowed"].as_u64().unwrap(),
        report["denied"].as_u64().unwrap(),
    );
    assert_eq!(
        records.len() as u64,
        allowed + denied,
        "one record per decision"
    );
    assert!(records.len() >= 10_000, "{} decisions", records.len());
    let mut generations = std::collections::BTreeSet::new();
    let mut mixed = Vec::new();
    for r in &records {
        generations.insert(r["generation"].as_u64().unwrap());
        let expected = if r["policy_sha256"] == digest_a {
            ("deny", "a-denies")
        } else {
            assert_eq!(r["policy_sha256"], digest_b, "{r}");
            ("allow", "b-allows")
        };
        if (r["verdict"].as_str().unwrap(), r["rule"].as_str().unwrap()) != expected {
            mixed.push(r.clone());
        }
    }
    assert!(
        mixed.is_empty(),
        "{} mixed decisions, e.g. {:#}",
        mixed.len(),
        mixed[0]
    );
    assert!(
        generations.len() > swaps / 2,
        "decisions spanned only {} generations",
        generations.len()
    );
    println!(
        "{} decisions over {} generations ({} swaps), 0 mixed",
        records.len(),
        generations.len(),
        swaps
    );
}

#[test]
fn readiness_canary_after_reload_catches_a_broken_attachment() {
    let e = env();
    let dir = e.path("canary-reload");
    fs::create_dir_all(&dir).unwrap();
    let policy = policy_of(&open_profile("c"), &["c"]);
    let guardd = Guardd::start_with_env(
        &dir,
        &policy,
        "guard-canary-reload-test",
        &[("GUARD_FAULT_DETACH_ON_RELOAD", "socket_connect")],
    );
    assert_eq!(guardd.status()["enforcing"], true);
    let out = guardd.guardctl(&["reload"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("NOT enforcing") && stderr.contains("socket_connect"),
        "{stderr}"
    );
    let status = guardd.status();
    assert_eq!(status["enforcing"], false, "{status:#}");
    let hook = status["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "socket_connect")
        .unwrap()
        .clone();
    assert_eq!(hook["enforcing"], false, "{hook}");
    let out = guardd.guardctl(&["status"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "status exits 1 when not enforcing"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("enforcing: NO"));
    assert!(guardd.log_text().contains("NOT enforcing"));
}

// --------------------------------------------------------------- examples --

/// The example policy (examples/policy.yaml) loads, and each of its three
/// profiles denies what its comments say.
#[test]
fn example_profiles_load_and_enforce() {
    let examples = std::env::var("GUARD_EXAMPLES")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../examples").into());
    let policy = fs::read_to_string(Path::new(&examples).join("policy.yaml")).unwrap();
    for dir in ["workspace/.git/hooks", "data", "scratch", "postgres"] {
        fs::create_dir_all(Path::new("/srv/agents").join(dir)).unwrap();
    }
    let e = env();
    let dir = e.path("examples");
    fs::create_dir_all(&dir).unwrap();
    let check = std::process::Command::new(bin("guardctl"))
        .args(["policy", "check"])
        .arg(Path::new(&examples).join("policy.yaml"))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let guardd = Guardd::start(&dir, &policy, "guard-examples-test");

    // coding: writes only in the workspace; git hooks read-only; no egress
    // but the registry.
    fs::write("/srv/agents/workspace/.git/hooks/pre-commit", "#!/bin/sh\n").unwrap();
    let coder = |args: &[&str]| guardd.probe("coder", &dir, args);
    assert_eq!(
        coder(&["create", "/srv/agents/workspace/main.rs"]).errno,
        None
    );
    assert_eq!(
        coder(&["open-write", "/srv/agents/workspace/.git/hooks/pre-commit"]).errno,
        Some(EPERM)
    );
    assert_eq!(coder(&["create", "/srv/agents/data/x"]).errno, Some(EPERM));
    assert_eq!(coder(&["connect-tcp", "10.20.0.5:5432"]).errno, Some(EPERM));

    // data-analysis: source data is never deleted; only the database is
    // reachable (no route in the VM, but not EPERM).
    fs::write("/srv/agents/data/events.parquet", "data").unwrap();
    let analyst = |args: &[&str]| guardd.probe("analyst", &dir, args);
    assert_eq!(
        analyst(&["unlink", "/srv/agents/data/events.parquet"]).errno,
        Some(EPERM)
    );
    assert!(Path::new("/srv/agents/data/events.parquet").exists());
    assert_ne!(
        analyst(&["connect-tcp", "10.20.0.5:5432"]).errno,
        Some(EPERM)
    );
    assert_eq!(
        analyst(&["connect-tcp", "10.30.0.5:443"]).errno,
        Some(EPERM)
    );

    // db-maintenance: the data directory stays; its lock file is
    // approvable.
    fs::write("/srv/agents/postgres/PG_VERSION", "16").unwrap();
    fs::write("/srv/agents/postgres/postmaster.pid", "1").unwrap();
    let dba = |args: &[&str]| guardd.probe("dba", &dir, args);
    assert_eq!(
        dba(&["unlink", "/srv/agents/postgres/PG_VERSION"]).errno,
        Some(EPERM)
    );
    let lock = dba(&["unlink", "/srv/agents/postgres/postmaster.pid"]);
    assert_eq!(lock.errno, Some(EPERM));
    let denial = guardd.record(lock.pid, |r| r["verdict"] == "deny");
    assert_eq!(denial["rule"], "postgres-lock", "{denial}");
    assert_eq!(denial["ticket"]["state"], "requested", "{denial}");

    // locked-down: only programs in /usr/bin and /usr/local/bin run.
    fs::create_dir_all("/usr/local/bin").unwrap();
    copy_executable(&bin("guard-probe"), Path::new("/usr/local/bin/guard-probe"));
    let sandboxed = |args: &[&str]| {
        let output = std::process::Command::new(bin("guardctl"))
            .arg("--socket")
            .arg(&guardd.socket)
            .args([
                "run",
                "--agent",
                "sandboxed",
                "--",
                "/usr/local/bin/guard-probe",
            ])
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        guard_tests::parse_outcome(output, "sandboxed probe")
    };
    assert_eq!(
        sandboxed(&["create", "/srv/agents/scratch/out.txt"]).errno,
        None
    );
    assert_eq!(
        sandboxed(&["create", "/srv/agents/data/out.txt"]).errno,
        Some(EPERM)
    );
    let outside_tool = bin("guard-probe").display().to_string();
    assert_eq!(
        sandboxed(&["exec", &outside_tool, "true"]).errno,
        Some(EPERM),
        "a program outside the allowed directories"
    );
    let r = guardd.record(sandboxed(&["connect-tcp", "127.0.0.1:9"]).pid, |r| {
        r["action"] == "connect"
    });
    assert_eq!(
        (r["verdict"].as_str(), r["rule"].as_str()),
        (Some("deny"), Some("default"))
    );
    assert_eq!(r["profile"], "locked-down");
}

// ------------------------------------------------------------ tamper test --

/// Records are sealed into a hash chain that survives a restart of guardd;
/// `guardctl audit verify` finds a changed or removed record.
#[test]
fn records_are_chained_and_tampering_is_found() {
    let e = env();
    let dir = e.path("chain");
    fs::create_dir_all(dir.join("keep")).unwrap();
    let policy = policy_of(
        &format!(
            "  - name: c\n    default: allow\n    files:\n      protect:\n        - id: keep\n          subtree: {}\n",
            dir.join("keep").display()
        ),
        &["c"],
    );
    let denials = |guardd: &Guardd, n: usize| {
        for i in 0..n {
            let path = dir.join(format!("keep/{i}"));
            fs::write(&path, "x").unwrap();
            let outcome = guardd.probe("c", &dir, &["unlink", &path.display().to_string()]);
            assert_eq!(outcome.errno, Some(EPERM));
            guardd.record(outcome.pid, |r| r["action"] == "unlink");
        }
    };
    let guardd = Guardd::start(&dir, &policy, "guard-chain-test");
    denials(&guardd, 3);
    let events = guardd.events.clone();
    guardd.stop();
    // A second run appends to the same file and continues the chain.
    let guardd = Guardd::start(&dir, &policy, "guard-chain-test");
    denials(&guardd, 2);
    guardd.stop();

    let verify = |text: &str| {
        let tampered = dir.join("tampered.jsonl");
        fs::write(&tampered, text).unwrap();
        let out = std::process::Command::new(bin("guardctl"))
            .args(["audit", "verify"])
            .arg(&tampered)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let text = fs::read_to_string(&events).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 5, "{text}");
    let (code, out) = verify(&text);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!(
            "intact: {} records, sequence 1 to {}",
            lines.len(),
            lines.len()
        )),
        "{out}"
    );

    // A changed verdict.
    let victim = lines
        .iter()
        .position(|l| l.contains("\"verdict\":\"deny\""))
        .unwrap();
    let mut changed: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    changed[victim] = changed[victim].replace("\"verdict\":\"deny\"", "\"verdict\":\"allow\"");
    let (code, out) = verify(&(changed.join("\n") + "\n"));
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!("line {}", victim + 1)) && out.contains("changed"),
        "{out}"
    );

    // A removed record.
    let mut removed: Vec<&str> = lines.clone();
    removed.remove(2);
    let (code, out) = verify(&(removed.join("\n") + "\n"));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("line 3") && out.contains("missing"), "{out}");
}

// ------------------------------------------------------------------- gRPC --

/// `guardctl events --follow` receives, through guardd's gRPC feed, the
/// records its server-side filter selects and no others.
#[test]
fn grpc_feed_follows_records_with_a_filter() {
    let e = env();
    let dir = e.path("grpc");
    fs::create_dir_all(dir.join("keep")).unwrap();
    let policy = policy_of(
        &format!(
            "  - name: g\n    default: allow\n    record_allowed: true\n    files:\n      protect:\n        - id: keep\n          subtree: {}\n          message: kept\n",
            dir.join("keep").display()
        ),
        &["g"],
    );
    let addr = {
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().to_string()
    };
    let guardd = Guardd::start_with(
        &dir,
        &policy,
        "guard-grpc-test",
        &["--grpc-listen", &addr],
        &[],
    );
    let mut follower = std::process::Command::new(bin("guardctl"))
        .args([
            "events",
            "--follow",
            "--server",
            &addr,
            "--agent",
            "g",
            "--verdict",
            "deny",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, received) = std::sync::mpsc::channel::<String>();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    // The follower subscribes some time after it starts: act until a
    // denial comes through.
    let victim = dir.join("keep/file");
    let target = victim.display().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let record: Value = loop {
        fs::write(&victim, "x").unwrap();
        let denied = guardd.probe("g", &dir, &["unlink", &target]);
        assert_eq!(denied.errno, Some(EPERM));
        let allowed = guardd.probe("g", &dir, &["true"]);
        assert_eq!(allowed.errno, None);
        if let Ok(line) = received.recv_timeout(std::time::Duration::from_secs(2)) {
            break serde_json::from_str(&line).unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing came through the feed"
        );
    };
    assert_eq!(
        (
            record["verdict"].as_str(),
            record["agent"].as_str(),
            record["target"].as_str()
        ),
        (Some("deny"), Some("g"), Some(target.as_str())),
        "{record}"
    );
    assert_eq!(
        (record["rule"].as_str(), record["message"].as_str()),
        (Some("keep"), Some("kept"))
    );
    assert!(
        record["session"].as_str().is_some_and(|s| s.len() == 36),
        "{record}"
    );
    assert_eq!(record["chain"].as_str().map(str::len), Some(64), "{record}");
    assert!(record["seq"].as_u64().is_some_and(|s| s > 0));
    // Only denials of `g` pass the filter, though allowed records were made.
    std::thread::sleep(std::time::Duration::from_millis(500));
    while let Ok(line) = received.try_recv() {
        let r: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(r["verdict"], "deny", "{r}");
    }
    let _ = follower.kill();
    let _ = follower.wait();
}

// -------------------------------------------------------------- collector --

/// guardd ships its records to guard-collector: the denials of a tagged
/// agent are stored with every field, are found by agent, verdict and time,
/// reach a live follower of the collector, and the stored stream stays
/// complete and free of duplicates when the collector and then guardd are
/// killed mid-stream.
#[test]
fn collector_stores_a_hosts_records_across_restarts() {
    use guard_api::time::{now_nanos, rfc3339};
    use guard_tests::collector::Collector;
    use std::io::BufRead as _;

    let e = env();
    let dir = e.path("collector");
    fs::create_dir_all(dir.join("keep")).unwrap();
    let db = dir.join("collector.db");
    let mut collector = Collector::start(&dir, &format!("sqlite:{}", db.display()));
    let policy = policy_of(
        &format!(
            "  - name: c\n    default: allow\n    record_allowed: true\n    files:\n      protect:\n        - id: keep\n          subtree: {}\n          message: kept\n",
            dir.join("keep").display()
        ),
        &["c"],
    );
    let url = format!("http://{}", collector.addr);
    let metrics = format!("127.0.0.1:{}", guard_tests::collector::free_port());
    let args = [
        "--collector",
        url.as_str(),
        "--host-name",
        "vm-1",
        "--metrics-listen",
        metrics.as_str(),
    ];
    let root = "guard-collector-test";
    let mut guardd = Guardd::start_with(&dir, &policy, root, &args, &[]);
    let victim = dir.join("keep/file");
    fs::write(&victim, "x").unwrap();
    let target = victim.display().to_string();
    let deny = |guardd: &Guardd| {
        let denied = guardd.probe("c", &dir, &["unlink", &target]);
        assert_eq!(denied.errno, Some(EPERM));
        denied.pid
    };
    let last_seq = |guardd: &Guardd| {
        guardd
            .records()
            .last()
            .and_then(|r| r["seq"].as_u64())
            .unwrap()
    };

    let since = rfc3339(now_nanos());
    let denied: Vec<u64> = (0..3).map(|_| u64::from(deny(&guardd))).collect();
    collector.wait_for_seq(
        "vm-1",
        last_seq(&guardd),
        std::time::Duration::from_secs(30),
    );
    let until = rfc3339(now_nanos());
    let stored = collector.query(&[
        "--host",
        "vm-1",
        "--agent",
        "c",
        "--verdict",
        "deny",
        "--since",
        &since,
        "--until",
        &until,
    ]);
    assert_eq!(
        stored
            .iter()
            .filter_map(|r| r["pid"].as_u64())
            .collect::<Vec<_>>(),
        denied
    );
    let written = guardd.records();
    for record in &stored {
        let original = written.iter().find(|w| w["seq"] == record["seq"]).unwrap();
        assert_eq!(record, original, "stored exactly as guardd wrote it");
        for field in [
            "session",
            "user",
            "rule",
            "message",
            "file",
            "generation",
            "chain",
        ] {
            assert!(!record[field].is_null(), "{field} in {record}");
        }
    }
    assert!(
        collector
            .query(&["--host", "vm-1", "--agent", "c", "--until", &since])
            .is_empty(),
        "nothing before the first denial"
    );
    let exposition = guard_tests::collector::scrape(&metrics);
    for line in [
        r#"guard_decisions_total{hook="path_unlink",verdict="deny",agent="c"} 3"#,
        "guard_enforcing 1",
        "guard_policy_generation ",
        r#"guard_kernel_counter{name="records_made"}"#,
        "guard_records_acked_seq",
    ] {
        assert!(exposition.contains(line), "{line} in:\n{exposition}");
    }

    // A live follower of the collector.
    let mut follower = std::process::Command::new(bin("guardctl"))
        .args(["events", "--follow", "--agent", "c", "--verdict", "deny"])
        .args(["--server", &collector.addr])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(follower.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("following"), "{line}");
    let pid = deny(&guardd);
    line.clear();
    std::io::BufReader::new(follower.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let followed: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(followed["pid"].as_u64(), Some(u64::from(pid)), "{followed}");
    let _ = follower.kill();
    let _ = follower.wait();

    // The collector dies while records are made, and comes back.
    collector.kill();
    for _ in 0..3 {
        deny(&guardd);
    }
    collector.restart();
    // guardd dies (SIGKILL) while records are made, and comes back on the
    // same events file.
    deny(&guardd);
    guardd.signal(libc::SIGKILL);
    drop(guardd);
    guardd = Guardd::start_with(&dir, &policy, root, &args, &[]);
    deny(&guardd);
    let last = last_seq(&guardd);
    collector.wait_for_seq("vm-1", last, std::time::Duration::from_secs(60));
    let seqs: Vec<u64> = collector
        .query(&["--host", "vm-1"])
        .iter()
        .filter_map(|r| r["seq"].as_u64())
        .collect();
    // Records made after `last` (session ends) may be there too.
    let stored_last = *seqs.last().unwrap();
    assert!(stored_last >= last);
    assert_eq!(
        seqs,
        (1..=stored_last).collect::<Vec<_>>(),
        "complete, no duplicates"
    );
    let verify = collector.guardctl(&["audit", "verify", "--host", "vm-1"]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
}

/// A secret on an agent's command line is masked on the host: the record
/// says so, and neither guardd's events file nor the collector's store
/// ever holds it.
#[test]
fn secrets_in_argv_never_reach_the_collector() {
    use guard_tests::collector::Collector;

    let e = env();
    let dir = e.path("redaction");
    fs::create_dir_all(dir.join("keep")).unwrap();
    let db = dir.join("collector.db");
    let collector = Collector::start(&dir, &format!("sqlite:{}", db.display()));
    let policy = policy_of(
        &format!(
            "  - name: r\n    default: allow\n    files:\n      protect:\n        - id: keep\n          subtree: {}\n",
            dir.join("keep").display()
        ),
        &["r"],
    );
    let url = format!("http://{}", collector.addr);
    let guardd = Guardd::start_with(
        &dir,
        &policy,
        "guard-redaction-test",
        &["--collector", &url, "--host-name", "vm-r"],
        &[],
    );
    let victim = dir.join("keep/data");
    fs::write(&victim, "x").unwrap();
    // The shell itself truncates (denied) and stays alive, running the same
    // program, while guardd reads its command line
    // (`exit` last: a shell may exec its last command in place.)
    let script = format!("echo > {} || true; sleep 2; exit 0", victim.display());
    let run = guardd.guardctl(&[
        "run",
        "--agent",
        "r",
        "--",
        "sh",
        "-c",
        &script,
        "agent-task",
        "--password=hunter2",
        "postgres://app:s3cret@db.internal/prod",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(fs::read_to_string(&victim).unwrap(), "x", "not truncated");
    let record = guardd
        .records()
        .into_iter()
        .find(|r| r["agent"] == "r" && r["verdict"] == "deny")
        .expect("the denial's record");
    let cmdline: Vec<&str> = record["process"]["cmdline"]
        .as_array()
        .expect("process details")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        cmdline[4..],
        ["--password=***", "postgres://app:***@db.internal/prod"],
        "{record}"
    );
    assert_eq!(record["redacted"], serde_json::json!(["process.cmdline"]));
    assert!(
        record["process"]["ancestry"]
            .as_array()
            .is_some_and(|a| !a.is_empty()),
        "{record}"
    );
    let last = record["seq"].as_u64().unwrap();
    collector.wait_for_seq("vm-r", last, std::time::Duration::from_secs(30));
    let stored = collector.query(&["--host", "vm-r", "--agent", "r"]);
    assert_eq!(stored.last().unwrap()["process"], record["process"]);
    drop(collector);
    for file in [
        guardd.events.clone(),
        db.clone(),
        dir.join("collector.db-wal"),
    ] {
        let bytes = fs::read(&file).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains("hunter2") && !text.contains("s3cret"),
            "a secret in {}",
            file.display()
        );
    }
}

// ------------------------------------------------------------------ loss --

/// Decision records and ring-buffer losses in an events file.
fn tally(events: &Path) -> (u64, u64) {
    let text = fs::read_to_string(events).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    let (mut decisions, mut lost) = (0, 0);
    for line in complete.lines() {
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
fn settled(guardd: &Guardd) -> (u64, u64, u64) {
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

/// A tagged process makes decisions faster than guardd can write them: every
/// record the kernel made is written or counted in an in-band loss record.
/// With audit-or-deny, the actions whose records were lost are denied, so
/// that every allowed action has its record.
#[test]
fn a_flood_is_accounted_for_and_audit_or_deny_leaves_nothing_unrecorded() {
    let e = env();
    let dir = e.path("flood");
    fs::create_dir_all(&dir).unwrap();
    let policy = |audit_or_deny: bool| {
        policy_of(
            &format!(
                "  - name: f\n    default: allow\n    record_allowed: true\n    audit_or_deny: {audit_or_deny}\n"
            ),
            &["f"],
        )
    };
    let guardd = Guardd::start(&dir, &policy(false), "guard-flood-test");
    let flood = |n: u64| -> (u32, u64, u64) {
        let output = guardd
            .probe_command(
                &["--agent", "f"],
                &["connect-udp-flood", "127.0.0.1:40020", &n.to_string()],
            )
            .current_dir(&dir)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let report: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!("{e}: {stdout} {}", String::from_utf8_lossy(&output.stderr))
        });
        (
            report["pid"].as_u64().unwrap() as u32,
            report["allowed"].as_u64().unwrap(),
            report["denied"].as_u64().unwrap(),
        )
    };
    let n = 100_000;

    let (_, allowed, denied) = flood(n);
    assert_eq!((allowed, denied), (n, 0));
    let (made, written, lost) = settled(&guardd);
    eprintln!("flood: {n} connects; {made} records made, {written} written, {lost} counted lost");
    assert!(
        lost > 0,
        "the flood did not outrun guardd, so nothing was tested"
    );

    guardd.reload(&policy(true)).unwrap();
    let before = guardd.status()["counters"]["unrecorded_denials"]
        .as_u64()
        .unwrap();
    let (pid, allowed, denied) = flood(n);
    assert_eq!(allowed + denied, n);
    settled(&guardd);
    let recorded_allowed = guardd
        .records_of(pid)
        .iter()
        .filter(|r| r["verdict"] == "allow" && r["action"] == "connect")
        .count() as u64;
    let unrecorded = guardd.status()["counters"]["unrecorded_denials"]
        .as_u64()
        .unwrap()
        - before;
    eprintln!(
        "audit-or-deny: {allowed} allowed, all recorded ({recorded_allowed}); {denied} denied unrecorded"
    );
    assert_eq!(
        recorded_allowed, allowed,
        "every allowed action has its record"
    );
    assert_eq!(
        unrecorded, denied,
        "each denial for want of a record is counted"
    );
}

// -------------------------------------------------------------- local API --

/// guardd's local gRPC API: `guardctl policy show|apply` and `guardctl
/// sessions`. A valid policy is written and in force at once; an invalid
/// one, or one applied over a change made meanwhile, is refused and the
/// old one stays; an agent may not apply one, and sees only its own
/// session.
#[test]
fn the_local_api_applies_policies_and_lists_sessions() {
    let e = env();
    let dir = e.path("local-api");
    fs::create_dir_all(dir.join("keep")).unwrap();
    let open = policy_of(&open_profile("p"), &["p"]);
    let guardd = Guardd::start(&dir, &open, "guard-local-api-test");
    let run = |args: &[&str]| {
        let out = guardd.guardctl(args);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (code, shown, stderr) = run(&["policy", "show"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(shown, open);
    assert!(stderr.contains("generation 1"), "{stderr}");

    let victim = dir.join("keep/file");
    fs::write(&victim, "x").unwrap();
    let target = victim.display().to_string();
    assert_eq!(guardd.probe("p", &dir, &["unlink", &target]).errno, None);
    fs::write(&victim, "x").unwrap();
    let protect = policy_of(
        &format!(
            "  - name: p\n    default: allow\n    files:\n      protect:\n        - id: keep\n          subtree: {}\n",
            dir.join("keep").display()
        ),
        &["p"],
    );
    let file = dir.join("next.yaml");
    fs::write(&file, &protect).unwrap();
    let (code, out, stderr) = run(&["policy", "apply", file.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(out.contains("in force: generation"), "{out}");
    assert_eq!(fs::read_to_string(&guardd.policy).unwrap(), protect);
    let denied = guardd.probe("p", &dir, &["unlink", &target]);
    assert_eq!(denied.errno, Some(EPERM), "the applied policy is in force");
    let record = guardd.record(denied.pid, |r| r["verdict"] == "deny");
    assert_eq!(record["rule"], "keep", "{record}");
    let generation = guardd.status()["generation"].as_u64().unwrap();

    fs::write(
        &file,
        "profiles:\n  - name: p\n    default: sometimes\nagents: []\n",
    )
    .unwrap();
    let (code, _, stderr) = run(&["policy", "apply", file.to_str().unwrap()]);
    assert_eq!(code, Some(4), "{stderr}");
    assert!(stderr.contains("line 3"), "{stderr}");
    fs::write(&file, &open).unwrap();
    let (code, _, stderr) = run(&["policy", "apply", file.to_str().unwrap(), "--expect", "00"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("the policy in force is"), "{stderr}");
    assert_eq!(guardd.status()["generation"].as_u64(), Some(generation));
    assert_eq!(fs::read_to_string(&guardd.policy).unwrap(), protect);

    // An agent runs guardctl itself.
    let guardctl = bin("guardctl");
    let api = guardd.socket.display().to_string();
    let (code, _, stderr) = run(&[
        "run",
        "--agent",
        "p",
        "--label",
        "who=agent",
        "--",
        guardctl.to_str().unwrap(),
        "--socket",
        &api,
        "policy",
        "apply",
        file.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("agents cannot change the policy"),
        "{stderr}"
    );
    let (code, sessions, stderr) = run(&[
        "run",
        "--agent",
        "p",
        "--label",
        "who=agent",
        "--",
        guardctl.to_str().unwrap(),
        "--socket",
        &api,
        "sessions",
        "--json",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let sessions: Vec<Value> = sessions
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(sessions.len(), 1, "only its own: {sessions:?}");
    assert_eq!(sessions[0]["labels"]["who"], "agent");
    assert_eq!(sessions[0]["agent"], "p");
}

// ------------------------------------------------------------ hardening --
//
// Attacks from inside an agent session on what Guard itself relies on.

/// The way to Guard's files is Guard's own: no agent may rename, remove or
/// create an entry on the path to its policy, records or sockets, so neither
/// a permissive policy nor a socket of its own can be swapped in, even while
/// no guardd runs. The policy in force is the same after an administrator's
/// reload and a restart.
#[test]
fn the_way_to_guards_files_cannot_be_swapped() {
    let e = env();
    let dir = e.path("swap");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let tool = e.p("tools/denied-tool");
    let policy = policy_of(
        &format!(
            "  - name: s\n    default: allow\n    exec:\n      deny:\n        - id: no-tool\n          path: {tool}\n"
        ),
        &["s"],
    );
    let root = "guard-swap-test";
    let guardd = Guardd::start(&dir, &policy, root);
    let sha = guardd.status()["policy_sha256"].clone();
    let tamper = |guardd: &Guardd, args: &[&str], action: &str| {
        let outcome = guardd.probe("s", &e.dir, args);
        assert_eq!(outcome.errno, Some(EPERM), "{args:?}");
        let r = guardd.record(outcome.pid, |r| r["action"] == action);
        assert_eq!(r["verdict"], "deny", "{r}");
        assert_eq!(r["rule"], "self-protection", "{r}");
    };
    let s = |p: &Path| p.display().to_string();
    let moved = e.p("swap.moved");
    // The directory of the policy, records and sockets, and the one above.
    tamper(&guardd, &["rename", &s(&dir), &moved], "rename");
    tamper(
        &guardd,
        &["rename", &s(&e.dir), "/tmp/guard-vm.moved"],
        "rename",
    );
    // A permissive policy renamed over the one in force.
    let permissive = e.path("permissive.yaml");
    fs::write(&permissive, policy_of(&open_profile("s"), &["s"])).unwrap();
    tamper(
        &guardd,
        &["rename", &s(&permissive), &s(&guardd.policy)],
        "rename",
    );
    tamper(&guardd, &["rename", &s(&guardd.events), &moved], "rename");
    tamper(&guardd, &["unlink", &s(&guardd.socket)], "unlink");
    assert!(dir.exists() && guardd.socket.exists());

    // An agent that outlives guardd tries to plant its own socket there.
    let control = s(&guardd.socket);
    let planter = guardd
        .probe_command(
            &["--agent", "s"],
            &["each", "@3000", &format!("create:{control}")],
        )
        .current_dir(&e.dir)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    assert!(guardd.guardctl(&["reload"]).status.success());
    assert_eq!(guardd.status()["policy_sha256"], sha);
    guardd.stop_keeping_programs();
    assert_eq!(errnos_of(planter), vec![EPERM as i64]);
    assert!(!Path::new(&control).exists(), "nothing was planted");

    let guardd = Guardd::start(&dir, &policy, root);
    assert_eq!(guardd.status()["policy_sha256"], sha);
    let denied = guardd.probe("s", &e.dir, &["exec", &tool]);
    assert_eq!(
        denied.errno,
        Some(EPERM),
        "the policy in force still denies"
    );
}

/// guardd loads only a policy that root alone can change, and starts only
/// on one; guardctl talks only to a socket root serves.
#[test]
fn guardd_trusts_only_roots_files_and_guardctl_only_roots_sockets() {
    let e = env();
    let dir = e.path("trust");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let policy = policy_of(&open_profile("t"), &["t"]);
    let guardd = Guardd::start(&dir, &policy, "guard-trust-test");
    let generation = guardd.status()["generation"].clone();

    fs::set_permissions(&guardd.policy, fs::Permissions::from_mode(0o666)).unwrap();
    let reload = guardd.guardctl(&["reload"]);
    fs::set_permissions(&guardd.policy, fs::Permissions::from_mode(0o600)).unwrap();
    let stderr = String::from_utf8_lossy(&reload.stderr);
    assert_eq!(reload.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("is writable by others (mode 666)"),
        "{stderr}"
    );
    assert_eq!(
        guardd.status()["generation"],
        generation,
        "the policy in force stays"
    );

    // An events file put in the place of the one guardd wrote is not
    // continued.
    let (events, state) = (guardd.events.clone(), dir.join("state.json"));
    drop(guardd);
    let planted = dir.join("planted.jsonl");
    fs::copy(&events, &planted).unwrap();
    fs::rename(&planted, &events).unwrap();
    let refused = std::process::Command::new(bin("guardd"))
        .arg("--policy")
        .arg(dir.join("policy.yaml"))
        .args(["--cgroup-root", "guard-trust-test", "--events"])
        .arg(&events)
        .arg("--socket")
        .arg(dir.join("guard.sock"))
        .arg("--state-file")
        .arg(&state)
        .arg("--why-dir")
        .arg(dir.join("why"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("is not the events file guardd last wrote"),
        "{stderr}"
    );

    // A policy in a directory anyone may write to: guardd does not start.
    let open = dir.join("open");
    fs::create_dir_all(&open).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
    fs::write(open.join("policy.yaml"), &policy).unwrap();
    let refused = std::process::Command::new(bin("guardd"))
        .arg("--policy")
        .arg(open.join("policy.yaml"))
        .args(["--cgroup-root", "guard-trust-test-2", "--events"])
        .arg(dir.join("e2.jsonl"))
        .arg("--socket")
        .arg(dir.join("c2.sock"))
        .arg("--state-file")
        .arg(dir.join("s2.json"))
        .arg("--why-dir")
        .arg(dir.join("why2"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("a directory above it") && stderr.contains("not trusted"),
        "{stderr}"
    );

    // A socket served by another user is not guardd.
    let fake = open.join("fake.sock");
    let mut server = std::process::Command::new(bin("guard-probe"))
        .args(["serve-unix-as", "65534"])
        .arg(&fake)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fake.exists() {
        assert!(Instant::now() < deadline, "the fake socket did not appear");
        std::thread::sleep(Duration::from_millis(20));
    }
    for (flag, args) in [
        ("--socket", &["status"][..]),
        ("--api-socket", &["sessions"]),
    ] {
        let output = std::process::Command::new(bin("guardctl"))
            .arg(flag)
            .arg(&fake)
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{flag}: {stderr}");
        assert!(
            stderr.contains("served by uid 65534") && stderr.contains("not by root"),
            "{flag}: {stderr}"
        );
    }
    server.kill().unwrap();
    server.wait().unwrap();
}

/// An agent fills the filesystem that holds the events file: guardd keeps
/// enforcing and starting sessions, a profile with audit_or_deny denies
/// what it cannot record, and once space returns a loss line accounts for
/// the gap and the chain verifies intact.
#[test]
fn a_full_disk_is_survived_and_nothing_is_left_half_written() {
    let e = env();
    let dir = e.path("full");
    let _ = std::process::Command::new("umount")
        .arg(&dir)
        .stderr(std::process::Stdio::null())
        .status();
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs"])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(mounted.success());
    let tool = e.p("tools/denied-tool");
    let policy = policy_of(
        &format!(
            "  - name: strict\n    default: allow\n    record_allowed: true\n    audit_or_deny: true\n  - name: loose\n    default: allow\n    record_allowed: true\n    exec:\n      deny:\n        - id: no-tool\n          path: {tool}\n"
        ),
        &["strict", "loose"],
    );
    let guardd = Guardd::start(&dir, &policy, "guard-full-test");
    let filler = dir.join("filler");
    let filled = guardd.probe("loose", &e.dir, &["fill", &filler.display().to_string()]);
    assert_eq!(filled.errno, None, "the agent filled the disk");

    // Enforcement goes on; the denial's record is counted, not written.
    let denied = guardd.probe("loose", &e.dir, &["exec", &tool]);
    assert_eq!(denied.errno, Some(EPERM));
    // Sessions start; audit_or_deny denies what it cannot record (its
    // agent's very exec), the other profile goes on.
    let connect = |agent: &str| guardd.probe(agent, &e.dir, &["connect-udp", "127.0.0.1:40040"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let output = guardd
            .probe_command(&["--agent", "strict"], &["true"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("cannot start") && stderr.contains("Operation not permitted") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "audit_or_deny did not deny while records cannot be written: {stderr}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(connect("loose").errno, None);
    assert!(guardd.status()["enforcing"].as_bool().unwrap());

    fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let loss = loop {
        let text = fs::read_to_string(&guardd.events).unwrap();
        if let Some(line) = text
            .lines()
            .find(|l| l.contains(r#""stage":"events_file""#))
        {
            break serde_json::from_str::<Value>(line).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "no loss line once space returned"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(loss["loss"]["records"].as_u64().unwrap() >= 2, "{loss}");
    assert_eq!(connect("strict").errno, None, "records are written again");
    let text = fs::read_to_string(&guardd.events).unwrap();
    assert!(text.ends_with('\n'), "no partial line");
    let verify = guardd.guardctl(&["audit", "verify", &guardd.events.display().to_string()]);
    assert!(
        verify.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    // A guardd that died mid-write left half a line: the next one cuts it
    // and says so in the stream, which stays intact.
    let events = guardd.events.clone();
    drop(guardd);
    let mut file = fs::OpenOptions::new().append(true).open(&events).unwrap();
    std::io::Write::write_all(&mut file, br#"{"seq":99999,"time":"#).unwrap();
    drop(file);
    let guardd = Guardd::start(&dir, &policy, "guard-full-test");
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = fs::read_to_string(&events).unwrap();
        if text.contains(r#""stage":"torn_line""#) {
            break text;
        }
        assert!(Instant::now() < deadline, "no torn_line loss: {text}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!text.contains("99999"), "the torn line is cut");
    let verify = guardd.guardctl(&["audit", "verify", &events.display().to_string()]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    drop(guardd);
    std::process::Command::new("umount")
        .arg(&dir)
        .status()
        .unwrap();
}

/// A denial in the middle of a flood of allowed, recorded actions keeps its
/// record: denials have a ring buffer of their own.
#[test]
fn a_denial_is_recorded_among_a_flood_of_allowed_records() {
    let e = env();
    let dir = e.path("lane");
    fs::create_dir_all(&dir).unwrap();
    let policy = policy_of(
        "  - name: f\n    default: allow\n    record_allowed: true\n    network:\n      deny:\n        - id: the-one-denial\n          cidr: 127.0.0.1\n          ports: 40051\n",
        &["f"],
    );
    let guardd = Guardd::start(&dir, &policy, "guard-lane-test");
    let flood = guardd
        .probe_command(
            &["--agent", "f"],
            &["connect-udp-flood", "127.0.0.1:40050", "200000"],
        )
        .current_dir(&dir)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let denied = guardd.probe("f", &dir, &["connect-udp", "127.0.0.1:40051"]);
    assert_eq!(denied.errno, Some(EPERM));
    assert!(flood.wait_with_output().unwrap().status.success());
    let (made, written, lost) = settled(&guardd);
    eprintln!("flood: {made} records made, {written} written, {lost} lost");
    assert!(
        lost > 0,
        "the flood did not outrun guardd, so nothing was tested"
    );
    let r = guardd.record(denied.pid, |r| r["verdict"] == "deny");
    assert_eq!(r["rule"], "the-one-denial", "{r}");
    assert_eq!(guardd.status()["counters"]["denials_lost"], 0);
}

/// A hard link made outside the rule that protects a file would open its
/// content to truncation: denied. Links within the rule's reach, and
/// removing a link someone else made, stay allowed.
#[test]
fn a_hard_link_cannot_take_a_protected_file_out_of_reach() {
    let e = env();
    let s = |p: &Path| p.display().to_string();
    let protected = file("protected/linked.txt");
    let away = e.path("open/linked-away");
    let r = assert_denied(
        tagged(&["link", &s(&protected), &s(&away)]),
        "link_away",
        &s(&protected),
        "files-protected-dir",
    );
    assert_eq!(r["hook"], "path_link", "{r}");
    assert!(!away.exists());
    let db = file("open/linked.sqlite");
    assert_denied(
        tagged(&["link", &s(&db), &e.p("open/linked-copy")]),
        "link_away",
        &s(&db),
        "files-sqlite",
    );
    // Monitor mode: would have been denied.
    let watched = e
        .guardd
        .probe(WATCHER, &e.dir, &["link", &s(&protected), &s(&away)]);
    assert_eq!(watched.errno, None);
    let r = e.guardd.record(watched.pid, |r| r["action"] == "link_away");
    assert_eq!(r["verdict"], "would_deny", "{r}");
    fs::remove_file(&away).unwrap();

    for (from, to) in [
        (s(&protected), e.p("protected/linked-inside")),
        (s(&db), e.p("open/linked-also.sqlite")),
    ] {
        assert_eq!(tagged(&["link", &from, &to]).errno, None, "{from} -> {to}");
        fs::remove_file(&to).unwrap();
    }
    let admin_link = e.path("open/admin-link");
    let _ = fs::remove_file(&admin_link);
    fs::hard_link(&protected, &admin_link).unwrap();
    assert_eq!(tagged(&["unlink", &s(&admin_link)]).errno, None);
    assert_intact(&protected, "protected/linked.txt");
}

/// Writing a kernel interface's file with O_CREAT is one decision (the open
/// for write), not also a `create`.
#[test]
fn writing_cgroup_procs_is_one_denial_not_two() {
    let outcome = tagged(&["open-create-write", "/sys/fs/cgroup/cgroup.procs"]);
    assert_eq!(outcome.errno, Some(EPERM));
    let guardd = &env().guardd;
    guardd.record(outcome.pid, |r| r["action"] == "open_write");
    let actions: Vec<Value> = guardd
        .records_of(outcome.pid)
        .iter()
        .filter(|r| r["verdict"] != "allow")
        .map(|r| r["action"].clone())
        .collect();
    assert_eq!(actions, ["open_write"], "one denial");
}

/// guardctl's listings end quietly when their reader goes away
/// (`guardctl status | head -1`): no panic, no "Broken pipe".
#[test]
fn listing_commands_end_quietly_on_a_closed_pipe() {
    use std::os::{fd::FromRawFd, unix::process::ExitStatusExt};
    let guardd = &env().guardd;
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["tickets"],
        &["sessions"],
        &["policy", "show"],
        &["--help"],
    ] {
        let mut fds = [0; 2];
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // The reader is gone before guardctl writes.
        unsafe { libc::close(fds[0]) };
        let write = unsafe { std::process::Stdio::from_raw_fd(fds[1]) };
        let output = std::process::Command::new(bin("guardctl"))
            .arg("--socket")
            .arg(&guardd.socket)
            .args(args)
            .stdout(write)
            .output()
            .unwrap();
        // (`policy show` says which policy on stderr.)
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !stderr.contains("Broken pipe") && !stderr.contains("panicked"),
            "guardctl {args:?}: {stderr}"
        );
        assert!(
            output.status.success() || output.status.signal() == Some(libc::SIGPIPE),
            "guardctl {args:?}: {:?}",
            output.status
        );
    }
}

/// An exec deny rule by content (`sha256` alone) refuses every copy of the
/// program: under another name, and its bytes in a memfd. Other programs
/// run.
#[test]
fn a_deny_rule_by_content_denies_every_copy() {
    let e = env();
    let dir = e.path("content");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    // A program of its own content: guard-probe with bytes after its end.
    let forbidden = dir.join("forbidden");
    let mut bytes = fs::read(bin("guard-probe")).unwrap();
    bytes.extend_from_slice(b"forbidden content");
    fs::write(&forbidden, &bytes).unwrap();
    fs::set_permissions(&forbidden, fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.join("an-innocent-name");
    copy_executable(&forbidden, &copy);
    let policy = policy_of(
        &format!(
            "  - name: c\n    default: allow\n    exec:\n      deny:\n        - id: no-such-content\n          sha256: {}\n          message: a program we never run, whatever its name\n",
            sha256_of(&forbidden)
        ),
        &["c"],
    );
    let guardd = Guardd::start(&dir, &policy, "guard-content-test");
    let s = |p: &Path| p.display().to_string();
    for (op, target) in [
        ("exec", &forbidden),
        ("exec", &copy),
        ("exec-memfd", &forbidden),
    ] {
        let outcome = guardd.probe("c", &e.dir, &[op, &s(target), "true"]);
        assert_eq!(outcome.errno, Some(EPERM), "{op} {}", target.display());
        let r = guardd.record(outcome.pid, |r| r["verdict"] == "deny");
        assert_eq!(r["action"], "exec", "{r}");
        assert_eq!(r["rule"], "no-such-content", "{r}");
    }
    let allowed = guardd.probe("c", &e.dir, &["exec", &e.p("tools/allowed-tool"), "true"]);
    assert_eq!(allowed.errno, None);
    let status = guardd.status();
    let hook = status["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "exec_content")
        .cloned();
    assert_eq!(hook.map(|h| h["attached"].clone()), Some(Value::Bool(true)));
}
