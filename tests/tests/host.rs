//! Host tests, run by `cargo xtask test` on the build machine itself (as
//! root, with `--ignored`): guardd must tell the truth about whether this
//! host can enforce, and the command-line tools must fail clearly.

use std::{fs, process::Command};

use guard_tests::bin;

fn run(cmd: &mut Command) -> (Option<i32>, String, String) {
    let out = cmd.output().expect("run");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
#[ignore = "needs root; run by `cargo xtask test`"]
fn guardd_check_tells_the_truth_about_this_host() {
    let (code, _, stderr) = run(Command::new(bin("guardd")).arg("--check"));
    // Read after the check: guardd mounts securityfs if nothing has.
    let lsm = fs::read_to_string("/sys/kernel/security/lsm").unwrap_or_default();
    let bpf_active = lsm.split(',').any(|l| l.trim() == "bpf");
    match code {
        Some(0) => {
            assert!(
                bpf_active,
                "guardd claims it can enforce but bpf is not an active LSM ({lsm}):\n{stderr}"
            );
            assert!(stderr.contains("BPF LSM usable"), "{stderr}");
        }
        Some(3) => {
            let cause = if bpf_active {
                "refused to load BPF LSM program"
            } else {
                "BPF LSM is not active"
            };
            assert!(
                stderr.contains(cause),
                "expected the cause `{cause}` (lsm: {lsm}):\n{stderr}"
            );
            assert!(stderr.contains("not enforcing"), "{stderr}");
        }
        other => panic!("guardd --check must exit 0 or 3, got {other:?}:\n{stderr}"),
    }
}

#[test]
#[ignore = "needs root; run by `cargo xtask test`"]
fn guardd_never_claims_enforcing_on_a_host_that_cannot() {
    let (check, _, _) = run(Command::new(bin("guardd")).arg("--check"));
    if check != Some(3) {
        return; // This host can enforce; the VM tests cover that case.
    }
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("p.yaml"),
        "profiles:\n  - name: a\n    default: allow\nagents:\n  - name: a\n    profile: a\n",
    )
    .unwrap();
    let (code, stdout, stderr) = run(Command::new(bin("guardd"))
        .arg("--policy")
        .arg(dir.path().join("p.yaml"))
        .arg("--cgroup-root")
        .arg("guard-host-test"));
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        !claims_enforcing(&stderr),
        "guardd must not claim to enforce:\n{stderr}"
    );
    assert!(stdout.is_empty());
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let cgroup2 = mountinfo
        .lines()
        .find(|l| l.contains(" - cgroup2 "))
        .and_then(|l| l.split_whitespace().nth(4))
        .unwrap();
    assert!(
        !std::path::Path::new(cgroup2)
            .join("guard-host-test")
            .exists(),
        "a guardd that cannot enforce leaves no cgroups behind"
    );
}

#[test]
#[ignore = "needs root; run by `cargo xtask test`"]
fn invalid_policy_is_refused_with_line_and_exit_4() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("bad.yaml");
    fs::write(&policy, "profiles:\n  - name: a\n    default: allow\n    network:\n      deny:\n        - id: x\n          cidr: 10.0.0.0/99\nagents: []\n").unwrap();
    for cmd in [
        Command::new(bin("guardctl"))
            .args(["policy", "check"])
            .arg(&policy),
        Command::new(bin("guardd")).arg("--policy").arg(&policy),
    ] {
        let (code, _, stderr) = run(cmd);
        assert_eq!(code, Some(4), "{stderr}");
        assert!(
            stderr.contains("line 6") && stderr.contains("not an IP address or CIDR"),
            "{stderr}"
        );
    }
}

#[test]
#[ignore = "needs root; run by `cargo xtask test`"]
fn guardctl_says_when_guardd_is_not_running() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("guard.sock");
    for args in [&["run", "--agent", "a", "--", "true"][..], &["status"]] {
        let (code, _, stderr) = run(Command::new(bin("guardctl"))
            .arg("--socket")
            .arg(&socket)
            .args(args));
        assert_eq!(code, Some(1), "{stderr}");
        assert!(
            stderr.contains("cannot reach guardd") && stderr.contains("guard.sock"),
            "{stderr}"
        );
    }
}

/// Whether guardd's log claims it is enforcing (its INFO line `enforcing: ...`).
fn claims_enforcing(log: &str) -> bool {
    log.lines()
        .any(|l| l.contains("INFO") && l.contains("enforcing:"))
}

/// `guardd --help` tells what stopping guardd does: the programs stay
/// attached until `guardd --detach`.
#[test]
#[ignore = "needs root; run by `cargo xtask test`"]
fn guardd_help_says_the_programs_stay_attached() {
    let (code, stdout, _) = run(Command::new(bin("guardd")).arg("--help"));
    assert_eq!(code, Some(0));
    assert!(stdout.contains("stay attached"), "{stdout}");
    assert!(
        !stdout.contains("detaches the programs and exits"),
        "{stdout}"
    );
}

#[test]
#[ignore = "needs root; run by `cargo xtask test`"]
fn guardd_refuses_settings_that_contradict_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    fs::write(&policy, "profiles: []\nagents: []\n").unwrap();
    let events = dir.path().join("events.jsonl");
    for (args, says) in [
        (
            vec!["--collector", "http://127.0.0.1:1"],
            "the following required arguments were not provided:\n  --events",
        ),
        (
            vec![
                "--grpc-listen",
                "127.0.0.1:50999",
                "--metrics-listen",
                "127.0.0.1:50999",
            ],
            "--grpc-listen and --metrics-listen are both 127.0.0.1:50999",
        ),
        (
            vec![
                "--events",
                events.to_str().unwrap(),
                "--state-file",
                events.to_str().unwrap(),
            ],
            "--events and --state-file name the same path",
        ),
    ] {
        let (code, _, stderr) = run(Command::new(bin("guardd"))
            .arg("--policy")
            .arg(&policy)
            .args(&args));
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}
