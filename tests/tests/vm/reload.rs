//! Reloads: switching generations, refusing a broken policy, atomic swaps
//! under load, and the canary after a reload.

use crate::harness::*;
use std::fs;

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
