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
        .arg("guard-host-test")
        .arg("--signing-key")
        .arg(dir.path().join("signing.key")));
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        !claims_enforcing(&stderr),
        "guardd must not claim to enforce:\n{stderr}"
    );
    assert!(stdout.is_empty());
    assert!(
        !cgroup2_mount().join("guard-host-test").exists(),
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
        Command::new(bin("guardd"))
            .arg("--policy")
            .arg(&policy)
            .arg("--signing-key")
            .arg(dir.path().join("signing.key")),
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

/// Where cgroup2 is mounted (beside cgroup v1 on some hosts).
fn cgroup2_mount() -> std::path::PathBuf {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    mountinfo
        .lines()
        .find(|l| l.contains(" - cgroup2 "))
        .and_then(|l| l.split_whitespace().nth(4))
        .expect("a cgroup2 mount")
        .into()
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
                "--plaintext",
                "--metrics-listen",
                "127.0.0.1:50999",
            ],
            "--grpc-listen and --metrics-listen are both 127.0.0.1:50999",
        ),
        (
            vec!["--grpc-listen", "127.0.0.1:50999"],
            "--grpc-listen 127.0.0.1:50999 needs TLS",
        ),
        (
            vec!["--grpc-listen", "0.0.0.0:50999", "--plaintext"],
            "--grpc-listen 0.0.0.0:50999 is not a loopback address",
        ),
        (
            vec![
                "--collector",
                "http://192.0.2.1:50052",
                "--events",
                events.to_str().unwrap(),
            ],
            "--collector: http://192.0.2.1:50052 is not on loopback",
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
        (
            vec!["--events", events.to_str().unwrap(), "--spool-max", "1MiB"],
            "--spool-max (1048576 bytes) must be at least twice --spool-rotate-size (67108864 bytes)",
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

/// Routing needs no LSM: on a host without BPF LSM (like the one `cargo
/// xtask test` runs on), `guardd --routing-only` routes agents' connections
/// to a guarded database's server to its statement guard, leaves other
/// processes alone, and says that it enforces nothing else.
#[test]
#[ignore = "needs root and PostgreSQL; run by `cargo xtask test`"]
fn routing_only_routes_agents_database_connections_without_bpf_lsm() {
    let postgres = guard_tests::collector::Postgres::start();
    let psql = |command: &mut Command, sql: &str| {
        run(command
            .arg(&postgres.url)
            .args(["-X", "-q", "-A", "-t", "-c", sql]))
    };
    let psql_bin = postgres.bin_dir.join("psql");
    let direct = |sql: &str| {
        let (code, out, err) = psql(&mut Command::new(&psql_bin), sql);
        assert_eq!(code, Some(0), "{sql}: {err}");
        out.trim().to_string()
    };
    direct("CREATE TABLE t (id int); CREATE TABLE scratch (id int)");

    let guard = guard_tests::collector::free_port();
    let dir = tempfile::tempdir().unwrap();
    let policy = format!(
        "\
databases:
  - name: shop
    server: 127.0.0.1:{server}
    listen: 127.0.0.1:{guard}
profiles:
  - name: analyst
    default: allow
    databases:
      - database: shop
        default: allow
        deny:
          - id: no-drop
            classes: [drop]
            message: analysts never drop tables
  - name: coder
    default: allow
agents:
  - name: analyst
    profile: analyst
  - name: coder
    profile: coder
",
        server = postgres.port
    );
    let guardd =
        guard_tests::Guardd::start_routing_only(dir.path(), &policy, "guard-routing-only-test");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", guard)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the guard never listened:\n{}",
            guardd.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    // It says what it does and what it does not.
    let status = guardd.status();
    assert_eq!(status["enforcing"], false, "{status}");
    assert!(
        status["problem"]
            .as_str()
            .is_some_and(|p| p.contains("routing only") && p.contains("nothing else is enforced")),
        "{status}"
    );
    let attached = |name: &str| {
        status["hooks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["name"] == name)
            .map(|h| h["attached"] == true)
    };
    assert_eq!(
        (
            attached("route_connect4"),
            attached("route_connect6"),
            attached("bprm_check_security"),
            attached("unix_stream_connect")
        ),
        (Some(true), Some(true), Some(false), Some(false)),
        "{status}"
    );
    assert_eq!(status["databases"][0]["routed"], true, "{status}");
    assert_eq!(guardd.guardctl(&["status"]).status.code(), Some(1));

    // An agent connecting to the server's own address reaches the guard.
    let as_agent = |agent: &str| {
        let mut command = Command::new(bin("guardctl"));
        command
            .arg("--socket")
            .arg(&guardd.socket)
            .args(["run", "--agent", agent, "--"])
            .arg(&psql_bin);
        command
    };
    let (code, _, err) = psql(&mut as_agent("analyst"), "DROP TABLE t");
    assert!(
        code != Some(0) && err.contains("guard: analysts never drop tables"),
        "{err}"
    );
    assert_eq!(
        direct("SELECT count(*) FROM t"),
        "0",
        "the table is still there"
    );
    let (code, out, err) = psql(&mut as_agent("analyst"), "SELECT count(*) FROM t");
    assert!(code == Some(0) && out.trim() == "0", "{err}");
    let refused = guardd.wait_for_record("the DROP refused", |r| {
        r["action"] == "statement" && r["verdict"] == "deny"
    });
    assert_eq!(
        (&refused["agent"], &refused["rule"]),
        (&"analyst".into(), &"no-drop".into()),
        "{refused}"
    );

    // Untouched: a profile with no rules for the database, and a process
    // in no session.
    let (code, _, err) = psql(&mut as_agent("coder"), "DROP TABLE scratch");
    assert_eq!(code, Some(0), "coder: {err}");
    assert_eq!(direct("SELECT 1"), "1");

    // Detached, the host keeps no trace of the test.
    drop(guardd);
    remove_cgroups(&cgroup2_mount().join("guard-routing-only-test"));
}

/// Removes an empty cgroup and the cgroups below it, deepest first.
fn remove_cgroups(cgroup: &std::path::Path) {
    for entry in fs::read_dir(cgroup).unwrap().filter_map(Result::ok) {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroups(&entry.path());
        }
    }
    fs::remove_dir(cgroup).unwrap_or_else(|e| panic!("{}: {e}", cgroup.display()));
}

/// A policy validates on any machine (a CI job before deployment), the
/// shipped example included; `--this-host` checks it as guardd would load
/// it here, where a protected path that does not exist is an error.
#[test]
#[ignore = "needs the release binaries; run by `cargo xtask test`"]
fn policy_check_validates_anywhere_and_on_this_host_with_a_flag() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/policy.yaml");
    let (code, stdout, stderr) = run(Command::new(bin("guardctl"))
        .args(["policy", "check"])
        .arg(example));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("valid"), "{stdout}");

    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("elsewhere");
    let policy = dir.path().join("p.yaml");
    fs::write(
        &policy,
        format!(
            "profiles:\n  - name: a\n    default: allow\n    files:\n      protect:\n        - id: data\n          subtree: {}\nagents: []\n",
            missing.display()
        ),
    )
    .unwrap();
    let check = |this_host: bool| {
        let mut command = Command::new(bin("guardctl"));
        command.args(["policy", "check"]);
        if this_host {
            command.arg("--this-host");
        }
        run(command.arg(&policy))
    };
    let (code, _, stderr) = check(false);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("note: rule `data`") && stderr.contains("cannot be resolved here"),
        "{stderr}"
    );
    let (code, _, stderr) = check(true);
    assert_eq!(code, Some(4), "{stderr}");
    assert!(
        stderr.contains("line 6") && stderr.contains("rule `data`: cannot resolve"),
        "{stderr}"
    );
}

/// The Debian packages (`cargo xtask package`) install with `dpkg -i` into
/// a root of their own, which leaves this host as it was: their binaries
/// run from the installed paths, the installed policy is valid and
/// confines nothing, the collector's system user is made, and
/// `systemd-analyze verify` passes on the units as installed.
#[test]
#[ignore = "needs root and the packages; run by `cargo xtask test`"]
fn the_packages_install_and_their_units_verify() {
    let debs: Vec<std::path::PathBuf> = std::env::split_paths(
        &std::env::var_os("GUARD_DEBS").expect("GUARD_DEBS names the packages (cargo xtask test)"),
    )
    .collect();
    assert_eq!(debs.len(), 2, "{debs:?}");
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    fs::create_dir_all(r.join("var/lib/dpkg/updates")).unwrap();
    fs::create_dir_all(r.join("var/lib/dpkg/info")).unwrap();
    fs::write(r.join("var/lib/dpkg/status"), "").unwrap();
    // The root holds no libc package to depend on; the scripts run here,
    // told the root by DPKG_ROOT.
    let dpkg = |args: &[&str]| {
        let (code, stdout, stderr) = run(Command::new("dpkg")
            .arg(format!("--root={}", r.display()))
            .args(["--force-script-chrootless", "--force-depends"])
            .args(args));
        assert_eq!(code, Some(0), "dpkg {args:?}:\n{stdout}\n{stderr}");
    };
    let mut install = vec!["-i"];
    install.extend(debs.iter().map(|d| d.to_str().unwrap()));
    dpkg(&install);

    for (binary, args) in [
        ("guardd", &["--version"][..]),
        ("guardctl", &["--version"]),
        ("guard-pg", &["--version"]),
        ("guard-collector", &["--version"]),
    ] {
        let (code, stdout, stderr) = run(Command::new(r.join("usr/bin").join(binary)).args(args));
        assert_eq!(code, Some(0), "{binary} {args:?}: {stderr}");
        assert!(
            stdout.contains(env!("CARGO_PKG_VERSION")),
            "{binary}: {stdout}"
        );
    }
    let policy = r.join("etc/guard/policy.yaml");
    let (code, stdout, stderr) = run(Command::new(r.join("usr/bin/guardctl"))
        .args(["policy", "check"])
        .arg(&policy));
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("valid: 0 profile(s) [], 0 agent(s)"),
        "{stdout}"
    );
    let passwd = fs::read_to_string(r.join("etc/passwd")).unwrap();
    assert!(passwd.contains("guard-collector:"), "{passwd}");
    let conffiles = fs::read_to_string(r.join("var/lib/dpkg/info/guard.conffiles")).unwrap();
    assert_eq!(conffiles.trim(), "/etc/guard/policy.yaml");

    // systemd-analyze resolves the units' dependencies (sysinit.target...)
    // in the root, so it gets this host's; ExecStart and the rest are
    // checked against the installed files.
    let units = r.join("lib/systemd/system");
    for entry in fs::read_dir("/usr/lib/systemd/system").unwrap() {
        let entry = entry.unwrap();
        let to = units.join(entry.file_name());
        if entry.file_type().unwrap().is_file() && !to.exists() {
            fs::copy(entry.path(), to).unwrap();
        }
    }
    let (code, stdout, stderr) = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", r.display()))
        .args(["guardd.service", "guard-collector.service"]));
    assert_eq!(code, Some(0), "systemd-analyze verify:\n{stdout}{stderr}");
    let unit = fs::read_to_string(units.join("guardd.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/bin/guardd --policy /etc/guard/policy.yaml"),
        "{unit}"
    );

    // Removal leaves the administrator's policy.
    dpkg(&["-r", "guard", "guard-collector"]);
    assert!(!r.join("usr/bin/guardd").exists());
    assert!(policy.exists());
}
