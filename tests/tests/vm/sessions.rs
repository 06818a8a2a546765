//! Sessions: `guardctl run` (exit status, streams, signals), `guardctl why`,
//! labels, users and profiles on records, sub-agents, and `guardctl status`.

use crate::harness::*;
use std::fs;

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

/// Root launches an agent as another user: `--user` drops, once the child
/// has joined the session, to that user's uid, gid and groups, with its
/// home and no capability left; the profile decides what it may do as
/// before. A user that does not exist starts no session.
#[test]
fn guardctl_run_user_drops_every_root_privilege() {
    let e = env();
    let run_as_postgres = |script: &str| {
        std::process::Command::new(bin("guardctl"))
            .arg("--socket")
            .arg(&e.guardd.socket)
            .args(["run", "--agent", TAGGED, "--user", "postgres", "--"])
            .args(["sh", "-c", script])
            .current_dir(&e.dir)
            .output()
            .unwrap()
    };
    let out = run_as_postgres(
        "cat /proc/self/status; echo \"HOME=$HOME USER=$USER\"; cat /proc/self/cgroup",
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    // postgres is uid and gid 70, and a member of `staff` (50).
    assert_eq!(field("Uid:"), "70\t70\t70\t70");
    assert_eq!(field("Gid:"), "70\t70\t70\t70");
    assert_eq!(field("Groups:"), "50 70");
    for caps in ["CapInh:", "CapPrm:", "CapEff:", "CapAmb:"] {
        assert_eq!(field(caps), "0000000000000000", "{caps}");
    }
    assert!(text.contains("HOME=/tmp USER=postgres"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("0::/") && l.contains(&format!("/{ROOT}/{TAGGED}/"))),
        "in the session's cgroup: {text}"
    );

    // Still the agent: its profile denies as before, recorded with its uid.
    let target = format!("127.0.0.1:{PORT_V4}");
    let outcome = e.guardd.probe_with(
        &["--agent", TAGGED, "--user", "postgres"],
        &e.dir,
        &["connect-tcp", &target],
    );
    let r = assert_denied(outcome, "connect", &target, "net-v4");
    assert_eq!(r["uid"], 70, "{r}");

    let out = std::process::Command::new(bin("guardctl"))
        .arg("--socket")
        .arg(&e.guardd.socket)
        .args([
            "run",
            "--agent",
            TAGGED,
            "--user",
            "no-such-user",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no user `no-such-user`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
