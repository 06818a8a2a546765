//! Default-deny profiles: only what their rules allow.

use crate::harness::*;
use std::{fs, net::TcpListener, os::unix::fs::PermissionsExt};

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
