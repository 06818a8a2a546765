//! guardd's local API: `guardctl policy show|apply` and `guardctl sessions`.

use crate::harness::*;
use std::fs;

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

/// Who may use the local API besides root, decided from the kernel's peer
/// credentials: the read group (`guard`) may read, the admin group
/// (`--admin-group`) may also change, and anyone else, though the socket
/// lets them connect, is refused. Only the users an agent's `launched_by`
/// names start its sessions (people.rs).
#[test]
fn the_read_and_admin_groups_decide_who_may_read_and_change() {
    use std::os::unix::fs::MetadataExt as _;
    // A directory others may enter, for the socket.
    let dir = std::path::Path::new("/tmp/guard-access-test");
    fs::create_dir_all(dir).unwrap();
    fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let open = policy_of(&open_profile("p"), &["p"]);
    let guardd = Guardd::start_with(
        dir,
        &open,
        "guard-access-test",
        &["--admin-group", "staff"],
        &[],
    );
    let socket = fs::metadata(&guardd.socket).unwrap();
    assert_eq!(socket.mode() & 0o777, 0o666);

    // guardctl run by postgres (uid and gid 70) with these groups.
    let (guard, staff) = (60, 50);
    let as_postgres = |groups: &[libc::gid_t], args: &[&str]| {
        let mut command = std::process::Command::new(bin("guardctl"));
        command.arg("--socket").arg(&guardd.socket).args(args);
        run_as(&mut command, 70, 70, groups);
        let out = command.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    // In `guard`: reads, and changes nothing.
    for args in [
        &["status"][..],
        &["policy", "show"],
        &["tickets"],
        &["sessions"],
    ] {
        let (code, stderr) = as_postgres(&[70, guard], args);
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
    }
    let (code, stderr) = as_postgres(&[70, guard], &["reload"]);
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains(
            "only root or members of group `staff` (guardd --admin-group) may change the policy"
        ),
        "{stderr}"
    );
    let (code, stderr) = as_postgres(&[70, guard], &["run", "--agent", "p", "--", "true"]);
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("user `postgres` (uid 70) may not launch agent `p`: only root may: it has no `launched_by`"),
        "{stderr}"
    );

    // Also in `staff`: changes too.
    let (code, stderr) = as_postgres(&[70, guard, staff], &["reload"]);
    assert_eq!(code, Some(0), "{stderr}");

    // In neither: refused.
    let (code, stderr) = as_postgres(&[70], &["status"]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("only root or members of group `guard` (guardd --read-group) may"),
        "{stderr}"
    );
}
