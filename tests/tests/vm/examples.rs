//! The example profiles in `examples/` load and enforce.

use crate::harness::*;
use std::{fs, path::Path};

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

    // data-analysis: source data is never deleted; the database is
    // reachable only through the statement guard, to which the kernel
    // routes its server's address.
    fs::write("/srv/agents/data/events.parquet", "data").unwrap();
    let analyst = |args: &[&str]| guardd.probe("analyst", &dir, args);
    assert_eq!(
        analyst(&["unlink", "/srv/agents/data/events.parquet"]).errno,
        Some(EPERM)
    );
    assert!(Path::new("/srv/agents/data/events.parquet").exists());
    let other = analyst(&["connect-tcp", "10.20.0.6:5432"]);
    assert_eq!(other.errno, Some(EPERM));
    let denial = guardd.record(other.pid, |r| r["verdict"] == "deny");
    assert_eq!(denial["rule"], "no-direct-database", "{denial}");
    // guardd runs the statement guard for the example's database.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while guardd.status()["databases"][0]["guarded"] != true {
        assert!(std::time::Instant::now() < deadline, "{}", guardd.status());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(guardd.status()["databases"][0]["routed"], true);
    assert_eq!(analyst(&["connect-tcp", "127.0.0.1:6432"]).errno, None);
    // The server's own address (a host this VM has no route to) reaches
    // the guard on loopback.
    assert_eq!(analyst(&["connect-tcp", "10.20.0.5:5432"]).errno, None);
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
