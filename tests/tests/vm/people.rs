//! Agents and people under Guard as themselves: a user launches an agent
//! that runs as that user (the agent's `launched_by`), and a person's login
//! through PAM runs in a session of the agent whose `logins` names them.
//! alice (in `developers`) and bob are the guest's users (xtask's vm.rs).

use crate::harness::*;
use guard_tests::parse_outcome;
use serde_json::Value;
use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
};

/// uid, gid and groups.
type Person = (u32, u32, &'static [u32]);
const ALICE: Person = (1000, 1000, &[1000, 100]);
const BOB: Person = (1001, 1001, &[1001]);

fn guardctl_as((uid, gid, groups): Person, args: &[&str]) -> Output {
    let mut command = Command::new(bin("guardctl"));
    command.arg("--socket").arg(&env().guardd.socket).args(args);
    run_as(&mut command, uid, gid, groups);
    command.output().expect("run guardctl")
}

/// A file in the protected subtree that everyone may delete: only Guard
/// stops the users.
fn victim(name: &str) -> PathBuf {
    let dir = env().path(&format!("protected/{name}"));
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    let file = dir.join("victim.txt");
    fs::write(&file, "keep").unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o666)).unwrap();
    file
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// alice launches the agent herself: it runs as alice, is denied as its
/// profile says and recorded with her identity, and cannot leave its
/// session or change Guard's cgroups. bob, whom `launched_by` does not
/// name, is refused with the rule; alice may not pick another profile.
#[test]
fn a_user_launches_an_agent_as_themselves() {
    let e = env();
    let victim = victim("alice");
    let probe = bin("guard-probe").display().to_string();
    let target = victim.display().to_string();
    let out = guardctl_as(
        ALICE,
        &["run", "--agent", TAGGED, "--", &probe, "unlink", &target],
    );
    let outcome = parse_outcome(out, "alice's agent");
    assert_eq!(outcome.errno, Some(libc::EPERM), "denied by the profile");
    let r = e.guardd.record(outcome.pid, |r| r["action"] == "unlink");
    assert_eq!(
        (
            r["agent"].as_str(),
            r["rule"].as_str(),
            r["target"].as_str()
        ),
        (
            Some(TAGGED),
            Some("files-protected-dir"),
            Some(target.as_str())
        ),
        "{r}"
    );
    assert_eq!(r["uid"], 1000, "the process's uid: {r}");
    assert_eq!(r["user"]["uid"], 1000, "the session's user: {r}");
    assert_eq!(r["user"]["name"], "alice", "{r}");
    assert!(victim.exists());

    // Where it runs, as whom, and no way out.
    let script = r#"echo "ID=$(id -u) $(id -G)"
cg=$(sed -n 's/^0:://p' /proc/self/cgroup)
echo "CGROUP=$cg"
echo $$ > /sys/fs/cgroup/cgroup.procs && echo LEFT
echo $$ > "/sys/fs/cgroup$cg/../cgroup.procs" && echo LEFT
mkdir "/sys/fs/cgroup$cg/mine" && echo MADE
echo 1 > "/sys/fs/cgroup$cg/cgroup.freeze" && echo FROZE
echo "AFTER=$(sed -n 's/^0:://p' /proc/self/cgroup)"
true"#;
    let out = guardctl_as(ALICE, &["run", "--agent", TAGGED, "--", "sh", "-c", script]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("ID=1000 1000 100"), "{stdout}");
    let cgroup = stdout
        .lines()
        .find_map(|l| l.strip_prefix("CGROUP="))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        cgroup.starts_with(&format!("/{ROOT}/{TAGGED}/")),
        "in a session of the agent: {stdout}"
    );
    for escape in ["LEFT", "MADE", "FROZE"] {
        assert!(!stdout.contains(escape), "{escape}: {stdout}");
    }
    assert!(stdout.contains(&format!("AFTER={cgroup}")), "{stdout}");

    // bob: not a developer.
    let out = guardctl_as(BOB, &["run", "--agent", TAGGED, "--", "true"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "user `bob` (uid 1001) may not launch agent `tagged`: its `launched_by` (policy line"
        ) && stderr.contains("names groups `developers`"),
        "{stderr}"
    );
    let status = e.guardd.status();
    assert!(
        status["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["uid"] != 1001 || s["agent"] != TAGGED),
        "a refused launch starts no session: {status:#}"
    );

    // alice: her agent's profile only.
    let out = guardctl_as(
        ALICE,
        &["run", "--agent", TAGGED, "--profile", WATCHER, "--", "true"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains(
            "only root runs agent `tagged` under another profile than its own (`tagged`)"
        ),
        "{}",
        text(&out.stderr)
    );
}

/// PAM places bob's login (`runuser -l`, with `guardctl login` in its
/// session stack) in a session of the agent whose `logins` names him: his
/// shell is denied as the profile says, the records carry the login, and
/// `guardctl sessions` shows it. alice's logins are not the policy's and
/// run untagged; when guardd cannot be asked, the login is refused.
#[test]
fn a_login_through_pam_runs_in_a_session_of_its_agent() {
    let e = env();
    let victim = victim("bob");
    let pam = |socket: &Path| {
        fs::create_dir_all("/etc/pam.d").unwrap();
        fs::write(
            "/etc/pam.d/runuser-l",
            format!(
                "auth sufficient pam_rootok.so\naccount required pam_permit.so\nsession required pam_exec.so stdout {} --socket {} login\n",
                bin("guardctl").display(),
                socket.display()
            ),
        )
        .unwrap();
    };
    let login = |user: &str, script: &str| {
        Command::new("/usr/sbin/runuser")
            .args(["-l", user, "-c", script])
            .output()
            .expect("run runuser")
    };
    pam(&e.guardd.socket);

    let target = victim.display().to_string();
    let out = login(
        "bob",
        &format!("{} unlink {target}", bin("guard-probe").display()),
    );
    let outcome = parse_outcome(out, "bob's login");
    assert_eq!(outcome.errno, Some(libc::EPERM), "denied by the profile");
    let r = e.guardd.record(outcome.pid, |r| r["action"] == "unlink");
    assert_eq!(
        (
            r["agent"].as_str(),
            r["profile"].as_str(),
            r["rule"].as_str()
        ),
        (Some(LOGIN_AGENT), Some(TAGGED), Some("files-protected-dir")),
        "{r}"
    );
    assert_eq!(
        (r["uid"].as_u64(), r["user"]["name"].as_str()),
        (Some(1001), Some("bob")),
        "{r}"
    );
    assert_eq!(r["login"]["user"], "bob", "{r}");
    assert_eq!(r["login"]["service"], "runuser-l", "{r}");
    assert!(victim.exists());

    // The login's session, as guardctl sessions lists it (from inside it:
    // an agent sees its own).
    let out = login(
        "bob",
        &format!(
            "{} --socket {} sessions --json",
            bin("guardctl").display(),
            e.guardd.socket.display()
        ),
    );
    let stdout = text(&out.stdout);
    let session: Value = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|s| s["agent"] == LOGIN_AGENT)
        .unwrap_or_else(|| panic!("no login session: {stdout}{}", text(&out.stderr)));
    assert_eq!(session["login"]["user"], "bob", "{session}");
    assert_eq!(session["user"], "bob", "{session}");

    // alice's logins are nobody's agent.
    let out = login("alice", "cat /proc/self/cgroup");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!text(&out.stdout).contains(ROOT), "{}", text(&out.stdout));

    // guardd cannot be asked: `required` refuses the login.
    pam(Path::new("/nonexistent/guardd.sock"));
    let out = login("bob", "echo RAN");
    fs::remove_file("/etc/pam.d/runuser-l").unwrap();
    assert!(!out.status.success());
    assert!(!text(&out.stdout).contains("RAN"), "{}", text(&out.stdout));
}
