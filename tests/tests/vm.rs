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
};

use guard_tests::{EPERM, Guardd, Outcome, bin, probe_as, probe_untagged};
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

        let policy = format!(
            "agents:\n  - name: {TAGGED}\n    mode: enforce\n    record_allowed: true\n{}  - name: {WATCHER}\n    mode: monitor\n{}",
            rules(&dir, ""),
            rules(&dir, "w-")
        );
        let guardd = Guardd::start(&dir, &policy, ROOT);
        Env { guardd, dir }
    }
}

fn tagged(args: &[&str]) -> Outcome {
    let e = env();
    probe_as(TAGGED, ROOT, &e.dir, args)
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
    assert_eq!(record["target"], target, "{record}");
    assert_eq!(record["rule"], rule, "{record}");
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
    assert!(record.get("rule").is_none(), "{record}");
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
    let outcome = probe_as(
        TAGGED,
        ROOT,
        &e.path("tools"),
        &["exec", "./denied-tool", "true"],
    );
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

#[test]
fn child_cgroup_of_an_agent_is_still_tagged() {
    let e = env();
    let path = file("protected/child-cgroup.txt");
    let outcome = tagged(&[
        "--child-cgroup",
        "sub",
        "unlink",
        &e.p("protected/child-cgroup.txt"),
    ]);
    let r = assert_denied(
        outcome,
        "unlink",
        &e.p("protected/child-cgroup.txt"),
        "files-protected-dir",
    );
    assert_intact(&path, "protected/child-cgroup.txt");
    // The record names the agent's cgroup, not the child's.
    let agent_cgroup = fs::metadata(format!("/sys/fs/cgroup/{ROOT}/{TAGGED}"))
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap();
    assert_eq!(r["agent_cgroup"], agent_cgroup);
    assert!(Path::new(&format!("/sys/fs/cgroup/{ROOT}/{TAGGED}/sub")).is_dir());
}

#[test]
fn monitor_mode_allows_and_records_would_deny() {
    let e = env();
    file("protected/monitored.txt");
    let outcome = probe_as(
        WATCHER,
        ROOT,
        &e.dir,
        &["unlink", &e.p("protected/monitored.txt")],
    );
    assert_eq!(outcome.errno, None, "monitor mode does not deny");
    assert!(!e.path("protected/monitored.txt").exists());
    let r = e.guardd.record(outcome.pid, |r| r["action"] == "unlink");
    assert_eq!(r["verdict"], "would_deny", "{r}");
    assert_eq!(r["agent"], WATCHER);
    assert_eq!(r["rule"], "w-files-protected-dir");

    let outcome = probe_as(
        WATCHER,
        ROOT,
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
            .args([
                "run",
                "--agent",
                TAGGED,
                "--cgroup-root",
                ROOT,
                "--",
                "sh",
                "-c",
                script,
            ])
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

// ------------------------------------------------------------- lifecycle --

#[test]
fn sigterm_detaches() {
    let e = env();
    let dir = e.path("detach");
    fs::create_dir_all(dir.join("keep")).unwrap();
    let victim = dir.join("keep/file.txt");
    fs::write(&victim, "keep").unwrap();
    let policy = format!(
        "agents:\n  - name: short-lived\n    files:\n      protect:\n        - id: keep\n          subtree: {}\n",
        dir.join("keep").display()
    );
    let root = "guard-detach-test";
    let guardd = Guardd::start(&dir, &policy, root);
    let denied = probe_as(
        "short-lived",
        root,
        &dir,
        &["truncate", &victim.display().to_string()],
    );
    assert_eq!(denied.errno, Some(EPERM));
    let (code, log) = guardd.stop();
    assert_eq!(code, Some(0), "guardd exits 0 on SIGTERM:\n{log}");
    assert!(log.contains("detached"), "{log}");
    // The agent cgroup is still there, but nothing enforces any more.
    let after = probe_as(
        "short-lived",
        root,
        &dir,
        &["truncate", &victim.display().to_string()],
    );
    assert_eq!(
        after.errno, None,
        "after detaching, the operation is no longer denied"
    );
}

#[test]
fn agents_missing_from_a_new_policy_are_reported_unconfined() {
    let e = env();
    let root = "guard-stale-test";
    let (first, second) = (e.path("stale/first"), e.path("stale/second"));
    fs::create_dir_all(&first).unwrap();
    fs::create_dir_all(&second).unwrap();
    let guardd = Guardd::start(&first, "agents:\n  - name: old\n", root);
    let mut sleeper = std::process::Command::new(bin("guardctl"))
        .args([
            "run",
            "--agent",
            "old",
            "--cgroup-root",
            root,
            "--",
            "sleep",
            "60",
        ])
        .spawn()
        .expect("start an agent");
    let procs = format!("/sys/fs/cgroup/{root}/old/cgroup.procs");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while fs::read_to_string(&procs)
        .unwrap_or_default()
        .trim()
        .is_empty()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent never joined its cgroup"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    guardd.stop();
    let guardd = Guardd::start(&second, "agents:\n  - name: new\n", root);
    let log = guardd.log_text();
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert!(
        log.contains("agent `old` is not in this policy") && log.contains("NOT confined"),
        "{log}"
    );
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
    fs::write(dir.join("policy.yaml"), "agents:\n  - name: a\n").unwrap();
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
    fs::write(dir.path().join("policy.yaml"), "agents:\n  - name: a\n").unwrap();
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

/// Whether guardd's log claims it is enforcing (its INFO line `enforcing: ...`).
fn claims_enforcing(log: &str) -> bool {
    log.lines()
        .any(|l| l.contains("INFO") && l.contains("enforcing:"))
}
