//! The audit trail: hash-chained records and tamper evidence, the gRPC feed,
//! shipping to the collector, secrets masked, and losses accounted for under
//! a flood.

use crate::harness::*;
use guard_tests::collector::Pki;
use std::{fs, net::TcpListener};

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
    let key = guardd.status()["signing_key"]
        .as_str()
        .expect("the status names the signing key")
        .to_string();
    // No agent reads the host's signing key (it would sign anything), or
    // changes it.
    let key_file = dir.join("signing.key").display().to_string();
    for op in ["read", "open-write", "unlink"] {
        let outcome = guardd.probe("c", &dir, &[op, &key_file]);
        assert_eq!(outcome.errno, Some(EPERM), "{op} the signing key");
    }
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
    // Each guardd signed its lines when it stopped, with the host's key.
    let signed = std::process::Command::new(bin("guardctl"))
        .args(["audit", "verify", "--key", &key])
        .arg(&events)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&signed.stdout);
    assert!(
        signed.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&signed.stderr)
    );
    assert!(
        out.contains(&format!(
            "signed: 2 checkpoint(s) by {key}, through sequence {}",
            lines.len() - 1
        )),
        "{out}"
    );
    assert!(lines.last().unwrap().contains("\"checkpoint\":{"), "{text}");

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

/// `guardctl events --follow` receives, through guardd's gRPC feed over
/// mutual TLS, the records its server-side filter selects and no others; a
/// host's certificate may not follow.
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
    let pki = Pki::new(&dir.join("pki"));
    pki.issue("vm-g", "host", &["127.0.0.1"]);
    pki.issue("alice", "reader", &[]);
    let mut args = vec!["--grpc-listen".to_string(), addr.clone()];
    args.extend(pki.args("vm-g"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let guardd = Guardd::start_with(&dir, &policy, "guard-grpc-test", &args, &[]);
    let follow = |who: &str| {
        let mut command = std::process::Command::new(bin("guardctl"));
        command
            .args(["events", "--follow", "--server", &addr])
            .args(["--agent", "g", "--verdict", "deny"])
            .args(pki.args(who));
        command
    };
    // No agent reads guardd's TLS key (it would speak as this host), or
    // changes its certificate or CA.
    let file = |name: &str| pki.dir.join(name).display().to_string();
    for (op, name) in [
        ("read", "vm-g.key"),
        ("open-write", "vm-g.key"),
        ("open-write", "vm-g.pem"),
        ("open-write", "ca.pem"),
        ("unlink", "ca.pem"),
    ] {
        let outcome = guardd.probe("g", &dir, &[op, &file(name)]);
        assert_eq!(outcome.errno, Some(EPERM), "{op} {name}");
    }
    let refused = follow("vm-g").output().unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("may not query or follow records"),
        "{stderr}"
    );
    let mut follower = follow("alice")
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
    // Over mutual TLS: guardd ships with a host certificate for its name.
    let pki = Pki::new(&dir.join("pki"));
    pki.issue("collector", "collector", &["127.0.0.1"]);
    pki.issue("vm-1", "host", &[]);
    pki.issue("alice", "reader", &[]);
    let mut collector = Collector::start_with(
        dir.join("collector.log"),
        &format!("sqlite:{}", db.display()),
        pki.args("collector"),
    );
    collector.guardctl_args = pki.args("alice");
    let policy = policy_of(
        &format!(
            "  - name: c\n    default: allow\n    record_allowed: true\n    files:\n      protect:\n        - id: keep\n          subtree: {}\n          message: kept\n",
            dir.join("keep").display()
        ),
        &["c"],
    );
    let metrics = format!("127.0.0.1:{}", guard_tests::collector::free_port());
    let mut args = vec![
        "--collector".to_string(),
        collector.addr.clone(),
        "--host-name".into(),
        "vm-1".into(),
        "--metrics-listen".into(),
        metrics.clone(),
    ];
    args.extend(pki.args("vm-1"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
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

    let since = rfc3339(now_nanos());
    let denied: Vec<u64> = (0..3).map(|_| u64::from(deny(&guardd))).collect();
    collector.wait_for_seq(
        "vm-1",
        guardd.last_seq(),
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
        .args(&collector.guardctl_args)
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
    // Records made after the last (session ends) may be there too.
    collector.wait_for_whole_stream(
        "vm-1",
        guardd.last_seq(),
        std::time::Duration::from_secs(60),
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
    let flood = |n: u64| udp_flood(&guardd, "f", &dir, n);
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

/// The spool under load: guardd rotates its events file (each rotated file
/// ending in a signed checkpoint, named after its last line), deletes a
/// rotated file only once the collector acknowledged it, and protects each
/// as its own. With the collector away, the spool stays within
/// `--spool-max`: what does not fit is counted lost (stage `spool_full`),
/// and a profile with `audit_or_deny` denies meanwhile. Once the collector is
/// back it receives the whole stream, the loss line included, intact.
#[test]
fn the_spool_rotates_under_load_within_its_bound() {
    use guard_api::spool::rotated;
    use guard_tests::collector::Collector;
    use std::time::Duration;

    let e = env();
    let dir = e.path("spool");
    fs::create_dir_all(&dir).unwrap();
    let mut collector = Collector::start(&dir, &format!("sqlite:{}", dir.join("c.db").display()));
    let policy = |audit_or_deny: bool| {
        policy_of(
            &format!(
                "  - name: s\n    default: allow\n    record_allowed: true\n    audit_or_deny: {audit_or_deny}\n"
            ),
            &["s"],
        )
    };
    let url = format!("http://{}", collector.addr);
    let max = 2 * 1024 * 1024;
    let guardd = Guardd::start_with(
        &dir,
        &policy(false),
        "guard-spool-test",
        &[
            "--collector",
            &url,
            "--host-name",
            "vm-s",
            "--spool-rotate-size",
            "256KiB",
            "--spool-max",
            "2MiB",
        ],
        &[],
    );
    let events = guardd.events.clone();
    let flood = |n: u64| {
        let (_, allowed, denied) = udp_flood(&guardd, "s", &dir, n);
        (allowed, denied)
    };
    let spool_bytes = || -> u64 {
        guard_api::spool::files(&events)
            .unwrap()
            .iter()
            .map(|f| fs::metadata(f).map(|m| m.len()).unwrap_or(0))
            .sum()
    };

    // Shipping: rotations, and every rotated file gone once acknowledged.
    // (Less than the bound: the flood outruns shipping.)
    let (allowed, _) = flood(2000);
    assert_eq!(allowed, 2000);
    // Every record made reaches the collector, written or counted lost
    // (the host's own files may already be gone: acknowledged).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let made = guardd.status()["counters"]["records_made"]
            .as_u64()
            .unwrap();
        let stored = collector.query(&["--host", "vm-s"]);
        let written = stored
            .iter()
            .filter(|r| r["checkpoint"].is_null() && r["loss"].is_null())
            .count() as u64;
        let lost: u64 = stored
            .iter()
            .filter_map(|r| r["loss"]["records"].as_u64())
            .sum();
        if made == written + lost {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{made} records made, {written} stored + {lost} counted lost"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let log = guardd.log_text();
    let rotations = log.matches("events file rotated").count();
    assert!(rotations >= 3, "{rotations} rotations:\n{log}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !rotated(&events).unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "acknowledged files are kept"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Each rotation protected the new files: an agent may not touch the
    // events file it writes to now.
    let outcome = guardd.probe("s", &dir, &["open-write", events.to_str().unwrap()]);
    assert_eq!(outcome.errno, Some(EPERM));

    // The collector away: rotated files are kept, each one of Guard's own.
    collector.kill();
    flood(1000);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let kept = loop {
        let kept = rotated(&events).unwrap();
        if !kept.is_empty() {
            break kept;
        }
        assert!(std::time::Instant::now() < deadline, "no rotation kept");
        std::thread::sleep(Duration::from_millis(100));
    };
    let outcome = guardd.probe("s", &dir, &["unlink", kept[0].path.to_str().unwrap()]);
    assert_eq!(
        outcome.errno,
        Some(EPERM),
        "an agent deletes a rotated file"
    );
    // The bound holds, and audit_or_deny denies (from then on even the
    // start of a program: it would be recorded).
    guardd.reload(&policy(true)).unwrap();
    let (allowed, denied) = flood(20_000);
    assert!(
        denied > 0,
        "{allowed} allowed, none denied: the spool never filled"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        spool_bytes() <= max,
        "the spool holds {} bytes",
        spool_bytes()
    );
    assert!(
        guardd.log_text().contains("spool_full"),
        "{}",
        guardd.log_text()
    );

    // The collector back: it receives everything, and writing resumes
    // with a loss line for what did not fit. The line is looked for in the
    // collector's copy: the file it is written to may be rotated,
    // acknowledged and deleted from the host between two looks.
    collector.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let lost = collector
            .query(&["--host", "vm-s"])
            .iter()
            .any(|r| r["loss"]["stage"] == "spool_full");
        if lost {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no spool_full loss line:\n{}\ncollector:\n{}",
            guardd.log_text(),
            collector.log_of_this_run()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    collector.wait_for_whole_stream("vm-s", guardd.last_seq(), Duration::from_secs(60));
    let verify = collector.guardctl(&["audit", "verify", "--host", "vm-s"]);
    let stdout = String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success() && stdout.contains("signed:"),
        "{stdout}{}",
        String::from_utf8_lossy(&verify.stderr)
    );
}

/// `n` UDP connects to a closed loopback port, back to back, by a process
/// of `agent`: its pid, and how many were allowed and denied.
fn udp_flood(guardd: &Guardd, agent: &str, dir: &std::path::Path, n: u64) -> (u32, u64, u64) {
    let output = guardd
        .probe_command(
            &["--agent", agent],
            &["connect-udp-flood", "127.0.0.1:40020", &n.to_string()],
        )
        .current_dir(dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{e}: {stdout} {}", String::from_utf8_lossy(&output.stderr)));
    (
        report["pid"].as_u64().unwrap() as u32,
        report["allowed"].as_u64().unwrap(),
        report["denied"].as_u64().unwrap(),
    )
}
