//! guard-collector end to end: guardctl ships events files to a real
//! collector over gRPC, into SQLite and into a real PostgreSQL server; the
//! stored streams are queried, followed, verified and tampered with, and a
//! Python grpcio client generated from the proto talks to the API.
//!
//! Run by `cargo xtask test` (they need the release binaries, PostgreSQL
//! and Python's grpcio, which `cargo xtask setup` installs).

use std::{
    fs,
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use guard_api::{
    chain::Chain,
    record::{CheckpointRecord, Line},
    signing::HostKey,
};
use guard_tests::{
    bin,
    collector::{Collector, Pki, Postgres, wait_for_log},
};
use serde_json::Value;

/// A host's stream of `n` sealed lines: every third record a denial by
/// `coder`, the rest allowed for `analyst`, and every 100th line a loss.
fn stream(n: u64, salt: &str) -> Vec<String> {
    let mut chain = Chain::default();
    (1..=n)
        .map(|seq| {
            let second = seq % 60;
            let json = if seq % 100 == 0 {
                format!(
                    r#"{{"seq":{seq},"time":"2026-11-22T10:00:{second:02}Z","loss":{{"stage":"ring_buffer","records":5}}}}"#
                )
            } else {
                let (agent, verdict) = if seq % 3 == 0 {
                    ("coder", "deny")
                } else {
                    ("analyst", "allow")
                };
                format!(
                    r#"{{"seq":{seq},"time":"2026-11-22T10:00:{second:02}Z","hook":"path_unlink","action":"unlink","verdict":"{verdict}","agent":"{agent}","profile":"coding","session":"s-{agent}","user":{{"uid":1000,"name":"dev"}},"labels":{{"ticket":"OPS-1"}},"generation":1,"policy_sha256":"{salt}","agent_cgroup":1,"cgroup":2,"pid":{seq},"tid":{seq},"uid":1000,"comm":"rm","target":"/srv/data/f{seq}","file":{{"dev":3,"ino":{seq}}},"rule":"keep-data","message":"data is kept"}}"#
                )
            };
            String::from_utf8(chain.seal(json.into_bytes()).0).unwrap()
        })
        .collect()
}

fn write_events(path: &Path, lines: &[String]) {
    fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn ship(collector: &Collector, file: &Path, host: &str) -> std::process::Output {
    collector.guardctl(&["audit", "ship", file.to_str().unwrap(), "--as-host", host])
}

fn assert_ok(output: &std::process::Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what}: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn seqs(entries: &[Value]) -> Vec<u64> {
    entries.iter().filter_map(|e| e["seq"].as_u64()).collect()
}

/// Shipped records come back exactly as sealed, and the filters select.
fn round_trip(dir: &Path, collector: &Collector) {
    let lines = stream(2000, "a");
    let file = dir.join("a.jsonl");
    write_events(&file, &lines);
    let out = assert_ok(&ship(collector, &file, "host-a"), "ship");
    assert!(out.contains("up to 2000"), "{out}");

    let all = collector.query(&["--host", "host-a"]);
    let json: Vec<String> = all.iter().map(|v| v.to_string()).collect();
    let expected: Vec<String> = lines
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap().to_string())
        .collect();
    assert_eq!(
        json, expected,
        "every record and loss, every field, in order"
    );

    let denials = collector.query(&["--host", "host-a", "--agent", "coder", "--verdict", "deny"]);
    let records: Vec<&Value> = denials.iter().filter(|e| e["loss"].is_null()).collect();
    assert!(
        records
            .iter()
            .all(|r| r["agent"] == "coder" && r["verdict"] == "deny")
    );
    assert_eq!(
        records.len(),
        (1..=2000).filter(|s| s % 3 == 0 && s % 100 != 0).count()
    );
    assert_eq!(
        denials.len() - records.len(),
        20,
        "losses match any record filter: they may hide a denial"
    );

    let window = collector.query(&[
        "--host",
        "host-a",
        "--since",
        "2026-11-22T10:00:10Z",
        "--until",
        "2026-11-22T10:00:12Z",
    ]);
    assert!(!window.is_empty());
    assert!(
        window
            .iter()
            .all(|e| matches!(e["seq"].as_u64().unwrap() % 60, 10 | 11))
    );

    let stats = assert_ok(
        &collector.guardctl(&["audit", "stats", "--host", "host-a"]),
        "stats",
    );
    assert!(
        stats.contains(&format!("denied: {}\n", records.len())),
        "{stats}"
    );
    assert!(stats.contains("lost: 100\n"), "20 losses of 5: {stats}");
    assert!(stats.contains("host host-a: next sequence 2001"), "{stats}");

    let verify = assert_ok(
        &collector.guardctl(&["audit", "verify", "--host", "host-a"]),
        "verify",
    );
    assert!(
        verify.contains("intact: 2000 records, sequence 1 to 2000"),
        "{verify}"
    );
}

/// A collector killed mid-stream loses nothing it acknowledged, and the
/// resent stream is stored once.
fn restart_mid_stream(dir: &Path, collector: &mut Collector) {
    let n = 60_000;
    let file = dir.join("b.jsonl");
    write_events(&file, &stream(n, "b"));
    let shipping = Command::new(bin("guardctl"))
        .args([
            "audit",
            "ship",
            file.to_str().unwrap(),
            "--as-host",
            "host-b",
        ])
        .args(["--server", &collector.addr])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    collector.wait_for_seq("host-b", 1, Duration::from_secs(30));
    collector.kill();
    let first = shipping.wait_with_output().unwrap();
    assert!(
        !first.status.success(),
        "the shipment was cut off mid-stream (else make the stream longer)"
    );
    collector.restart();
    assert_ok(&ship(collector, &file, "host-b"), "ship again");
    let stored = seqs(&collector.query(&["--host", "host-b"]));
    assert_eq!(
        stored,
        (1..=n).collect::<Vec<_>>(),
        "complete, no duplicates"
    );
    let verify = assert_ok(
        &collector.guardctl(&["audit", "verify", "--host", "host-b"]),
        "verify",
    );
    assert!(verify.contains(&format!("intact: {n} records")), "{verify}");
}

/// A missing stretch becomes a gap; a changed or removed stored record is
/// found by `audit verify`.
fn gaps_and_tampering(dir: &Path, collector: &Collector, tamper: &dyn Fn(&str)) {
    let lines = stream(20, "c");
    let file = dir.join("c.jsonl");
    write_events(&file, &lines[..10]);
    assert_ok(&ship(collector, &file, "host-c"), "ship 1-10");
    // The spool lost 11-13 (rotated away, say): 14-20 follow.
    write_events(&file, &lines[13..]);
    assert_ok(&ship(collector, &file, "host-c"), "ship 14-20");
    let entries = collector.query(&["--host", "host-c"]);
    let gap = entries
        .iter()
        .find(|e| !e["gap"].is_null())
        .expect("a gap entry");
    assert_eq!(
        (
            gap["gap"]["first_seq"].as_u64(),
            gap["gap"]["last_seq"].as_u64()
        ),
        (Some(11), Some(13))
    );
    let stats = assert_ok(
        &collector.guardctl(&["audit", "stats", "--host", "host-c"]),
        "stats",
    );
    assert!(stats.contains("missing: 3\n"), "{stats}");
    let metrics = guard_tests::collector::scrape(&collector.metrics);
    assert!(
        metrics.contains(r#"guard_collector_entries_total{kind="gap"} 1"#),
        "{metrics}"
    );
    let verify = assert_ok(
        &collector.guardctl(&["audit", "verify", "--host", "host-c"]),
        "verify with a recorded gap",
    );
    assert!(
        verify.contains("records 11 to 13 never reached the collector"),
        "{verify}"
    );

    tamper(
        "UPDATE entries SET json = replace(json, '/srv/data/f5\"', '/srv/data/g5\"') WHERE host = 'host-c' AND seq = 5 AND kind = 'record'",
    );
    let changed = collector.guardctl(&["audit", "verify", "--host", "host-c"]);
    assert_eq!(changed.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&changed.stderr);
    assert!(
        stderr.contains("record 5 does not match its chain hash"),
        "{stderr}"
    );

    tamper(
        "UPDATE entries SET json = replace(json, '/srv/data/g5\"', '/srv/data/f5\"') WHERE host = 'host-c' AND seq = 5",
    );
    assert_ok(
        &collector.guardctl(&["audit", "verify", "--host", "host-c"]),
        "restored",
    );
    tamper("DELETE FROM entries WHERE host = 'host-c' AND seq = 7 AND kind = 'record'");
    let removed = collector.guardctl(&["audit", "verify", "--host", "host-c"]);
    assert_eq!(removed.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&removed.stderr);
    assert!(
        stderr.contains("sequence 8 follows 6: 1 record(s) missing"),
        "{stderr}"
    );
}

/// `lines` sealed again on `chain`, with a checkpoint by `key` after every
/// 5th.
fn signed(lines: &[String], chain: &mut Chain, key: &HostKey) -> Vec<String> {
    let mut out = Vec::new();
    for line in lines {
        let mut value: Value = serde_json::from_str(line).unwrap();
        let object = value.as_object_mut().unwrap();
        object.remove("chain");
        object.insert("seq".into(), chain.next_seq().into());
        out.push(String::from_utf8(chain.seal(serde_json::to_vec(&value).unwrap()).0).unwrap());
        if chain.next_seq().is_multiple_of(6) {
            let time = "2026-11-22T10:01:00Z".to_string();
            let checkpoint = Line::Checkpoint(CheckpointRecord {
                seq: chain.next_seq(),
                checkpoint: key.checkpoint(chain.next_seq() - 1, &chain.last_hex(), &time),
                time,
            });
            out.push(String::from_utf8(chain.seal(checkpoint.to_json().unwrap()).0).unwrap());
        }
    }
    out
}

/// A stream with signed checkpoints: verified with the host's key; a store
/// rewritten with every hash (and every checkpoint's head) recomputed is
/// caught by the signature; a checkpoint by another key is flagged by the
/// collector on the way in and by `audit verify`; an unsigned stream fails
/// a verification that expects a key.
fn signed_checkpoints(dir: &Path, collector: &mut Collector, tamper: &dyn Fn(&str)) {
    let key = HostKey::load_or_create(&dir.join("host-s.key")).unwrap().0;
    let lines = signed(&stream(20, "s"), &mut Chain::default(), &key);
    let file = dir.join("s.jsonl");
    write_events(&file, &lines);
    assert_ok(&ship(collector, &file, "host-s"), "ship signed");
    let verify = assert_ok(
        &collector.guardctl(&[
            "audit",
            "verify",
            "--host",
            "host-s",
            "--key",
            &key.public(),
        ]),
        "verify signed",
    );
    assert!(
        verify.contains(&format!(
            "signed: 4 checkpoint(s) by {}, through sequence 23",
            key.public()
        )),
        "{verify}"
    );

    // Record 3 changed, then every later line sealed again and each
    // checkpoint's head made to match: the chain holds, no signature does.
    let mut previous = [0u8; 32];
    let mut forged = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        let mut value: Value = serde_json::from_str(line).unwrap();
        let object = value.as_object_mut().unwrap();
        object.remove("chain");
        if index == 2 {
            object.insert("target".into(), "/srv/data/innocent".into());
        }
        if let Some(checkpoint) = object.get_mut("checkpoint") {
            checkpoint["head"] = hex_of(&previous).into();
        }
        let body = serde_json::to_vec(&value).unwrap();
        let mut body = body[..body.len() - 1].to_vec();
        previous = guard_api::chain::link(&previous, &body);
        body.extend_from_slice(format!(",\"chain\":\"{}\"}}", hex_of(&previous)).as_bytes());
        forged.push(String::from_utf8(body).unwrap());
    }
    for line in &forged[2..] {
        let value: Value = serde_json::from_str(line).unwrap();
        let kind = if value.get("checkpoint").is_some() {
            "checkpoint"
        } else if value.get("loss").is_some() {
            "loss"
        } else {
            "record"
        };
        tamper(&format!(
            "UPDATE entries SET json = '{}' WHERE host = 'host-s' AND seq = {} AND kind = '{kind}'",
            line.replace('\'', "''"),
            value["seq"]
        ));
    }
    let caught = collector.guardctl(&["audit", "verify", "--host", "host-s"]);
    let stderr = String::from_utf8_lossy(&caught.stderr);
    assert_eq!(caught.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("BROKEN")
            && stderr.contains("checkpoint 6: its signature does not match key"),
        "{stderr}"
    );

    // host-t enrolls one key, then sends a checkpoint by another.
    let mut chain = Chain::default();
    let first = signed(&stream(10, "t")[..5], &mut chain, &key);
    let other = HostKey::load_or_create(&dir.join("other.key")).unwrap().0;
    let rest = signed(&stream(10, "t")[5..], &mut chain, &other);
    let file = dir.join("t.jsonl");
    write_events(&file, &[first, rest].concat());
    assert_ok(&ship(collector, &file, "host-t"), "ship with a key change");
    let stats = assert_ok(
        &collector.guardctl(&["audit", "stats", "--host", "host-t"]),
        "stats",
    );
    assert!(stats.contains("broken: 1\n"), "{stats}");
    let metrics = guard_tests::collector::scrape(&collector.metrics);
    assert!(
        metrics.contains("guard_collector_checkpoints_failed_total 1\n"),
        "{metrics}"
    );
    let log = fs::read_to_string(&collector.log).unwrap();
    assert!(
        log.contains("host key enrolled on first contact")
            && log.contains("checkpoint does not hold"),
        "{log}"
    );
    let changed = collector.guardctl(&["audit", "verify", "--host", "host-t"]);
    assert_eq!(changed.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&changed.stderr).contains("not by the host's key"),
        "{}",
        String::from_utf8_lossy(&changed.stderr)
    );

    // host-u's key pinned: its first checkpoint, by another key, is not
    // enrolled but flagged.
    collector.args = vec!["--host-key".into(), format!("host-u={}", other.public())];
    collector.restart();
    let file = dir.join("u.jsonl");
    write_events(&file, &signed(&stream(5, "u"), &mut Chain::default(), &key));
    assert_ok(&ship(collector, &file, "host-u"), "ship to a pinned key");
    let stats = assert_ok(
        &collector.guardctl(&["audit", "stats", "--host", "host-u"]),
        "stats",
    );
    assert!(stats.contains("broken: 1\n"), "{stats}");
    collector.args.clear();
    collector.restart();

    // No checkpoint at all, while the host's key is expected.
    let unsigned = collector.guardctl(&[
        "audit",
        "verify",
        "--host",
        "host-a",
        "--key",
        &key.public(),
    ]);
    assert_eq!(unsigned.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&unsigned.stderr).contains("NOT SIGNED"),
        "{}",
        String::from_utf8_lossy(&unsigned.stderr)
    );
}

fn hex_of(bytes: &[u8; 32]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Another stream under a name the collector knows is refused, not merged.
fn another_stream_under_the_same_name(dir: &Path, collector: &Collector) {
    let file = dir.join("d.jsonl");
    write_events(&file, &stream(10, "d"));
    assert_ok(&ship(collector, &file, "host-d"), "ship");
    write_events(&file, &stream(12, "other"));
    let refused = ship(collector, &file, "host-d");
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("another stream for host `host-d`"),
        "{stderr}"
    );
    assert_eq!(seqs(&collector.query(&["--host", "host-d"])).len(), 10);
}

/// `guardctl events --follow` on the collector gets what is stored from now
/// on, filtered on the server.
fn live_follow(dir: &Path, collector: &Collector) {
    let mut follower = Command::new(bin("guardctl"))
        .args([
            "events",
            "--follow",
            "--host",
            "host-e",
            "--verdict",
            "deny",
        ])
        .args(["--server", &collector.addr])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(follower.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(line.contains("following"), "{line}");
    let file = dir.join("e.jsonl");
    write_events(&file, &stream(30, "e"));
    assert_ok(&ship(collector, &file, "host-e"), "ship");
    let mut stdout = BufReader::new(follower.stdout.take().unwrap());
    let mut followed = Vec::new();
    for _ in 0..10 {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        followed.push(serde_json::from_str::<Value>(&line).unwrap());
    }
    let _ = follower.kill();
    let _ = follower.wait();
    assert_eq!(seqs(&followed), (1..=10).map(|i| i * 3).collect::<Vec<_>>());
    assert!(followed.iter().all(|r| r["verdict"] == "deny"));
}

fn all_scenarios(dir: &Path, collector: &mut Collector, tamper: &dyn Fn(&str)) {
    round_trip(dir, collector);
    restart_mid_stream(dir, collector);
    gaps_and_tampering(dir, collector, tamper);
    another_stream_under_the_same_name(dir, collector);
    live_follow(dir, collector);
    signed_checkpoints(dir, collector, tamper);
}

#[test]
#[ignore = "needs the release binaries: cargo xtask test"]
fn sqlite_store() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("collector.db");
    let mut collector = Collector::start(dir.path(), &format!("sqlite:{}", db.display()));
    let tamper = |sql: &str| {
        rusqlite::Connection::open(&db)
            .unwrap()
            .execute(sql, [])
            .unwrap();
    };
    all_scenarios(dir.path(), &mut collector, &tamper);
}

#[test]
#[ignore = "needs the release binaries and PostgreSQL: cargo xtask test"]
fn postgres_store() {
    let dir = tempfile::tempdir().unwrap();
    let postgres = Postgres::start();
    let mut collector = Collector::start(dir.path(), &postgres.url);
    let tamper = |sql: &str| {
        let out = Command::new("psql")
            .args([postgres.url.as_str(), "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .unwrap();
        assert_ok(&out, sql);
    };
    all_scenarios(dir.path(), &mut collector, &tamper);
    // A second collector on the same database serves what the first stored.
    let second_dir = dir.path().join("second");
    fs::create_dir(&second_dir).unwrap();
    let second = Collector::start(&second_dir, &postgres.url);
    assert_eq!(seqs(&second.query(&["--host", "host-a"])).len(), 2000);
}

#[test]
#[ignore = "needs the release binaries and Python grpcio: cargo xtask test"]
fn a_python_grpcio_client_follows_and_queries() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("collector.db");
    let collector = Collector::start(dir.path(), &format!("sqlite:{}", db.display()));
    let lines = stream(60, "py");
    let file = dir.path().join("py.jsonl");
    write_events(&file, &lines[..30]);
    assert_ok(&ship(&collector, &file, "host-py"), "ship 1-30");

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut client = Command::new("python3")
        .arg(root.join("tests/python/audit_client.py"))
        .args(["--proto", root.join("proto").to_str().unwrap()])
        .args(["--server", &collector.addr, "--follow", "10"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut stdout = BufReader::new(client.stdout.take().unwrap());
    let mut read = || {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        serde_json::from_str::<Value>(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    };
    // A client that knows nothing but what reflection tells it.
    let reflection = read();
    let services = reflection["reflection"]["services"].to_string();
    assert!(
        services.contains("\"guard.v1.AuditService\"")
            && services.contains("\"grpc.reflection.v1alpha.ServerReflection\""),
        "{reflection}"
    );
    assert_eq!(
        reflection["reflection"]["methods"],
        serde_json::json!(["Follow", "Query", "Stats"]),
        "{reflection}"
    );
    assert_eq!(reflection["reflection"]["entries"], 5, "{reflection}");
    let v1 = reflected_services_v1(&collector.addr);
    assert!(
        v1.iter().any(|s| s == "guard.v1.AuditService")
            && v1
                .iter()
                .any(|s| s == "grpc.reflection.v1.ServerReflection"),
        "{v1:?}"
    );
    let query = read();
    assert_eq!(
        query["query"],
        serde_json::json!((1..=10).map(|i| i * 3).collect::<Vec<_>>()),
        "denials of coder among 1-30: {query}"
    );
    assert_eq!(query["bad_page_token"], "INVALID_ARGUMENT");
    assert_eq!(query["bad_verdict"], "INVALID_ARGUMENT");
    assert_eq!(read()["following"], true);
    write_events(&file, &lines);
    assert_ok(&ship(&collector, &file, "host-py"), "ship 31-60");
    let followed = read();
    let output = client.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        followed["followed"],
        serde_json::json!((11..=20).map(|i| i * 3).collect::<Vec<_>>()),
        "{followed}"
    );
}

/// A collector whose log cannot be written (stderr on a full disk) goes on
/// collecting: a log line is dropped, it does not end the task that logged.
#[test]
#[ignore = "needs the release binaries: cargo xtask test"]
fn a_collector_whose_log_cannot_be_written_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("collector.db");
    let collector =
        Collector::start_logging_to("/dev/full".into(), &format!("sqlite:{}", db.display()));
    let file = dir.path().join("full.jsonl");
    write_events(&file, &stream(30, "full"));
    assert_ok(&ship(&collector, &file, "host-full"), "ship");
    assert_eq!(
        seqs(&collector.query(&["--host", "host-full"])),
        (1..=30).collect::<Vec<_>>()
    );
}

#[test]
#[ignore = "needs the release binaries: cargo xtask test"]
fn the_collector_refuses_settings_that_contradict_each_other() {
    for (args, says) in [
        (
            &[
                "--store",
                "postgres://guard@localhost/guard",
                "--retain-size",
                "1GiB",
            ][..],
            "--retain-size applies to a SQLite store only",
        ),
        (
            &[
                "--store",
                "sqlite:/nonexistent/guard.db",
                "--listen",
                "127.0.0.1:50998",
                "--metrics-listen",
                "127.0.0.1:50998",
            ],
            "--listen and --metrics-listen are both 127.0.0.1:50998",
        ),
    ] {
        let output = std::process::Command::new(guard_tests::bin("guard-collector"))
            .args(args)
            .arg("--plaintext")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    let output = std::process::Command::new(guard_tests::bin("guard-collector"))
        .args(["--host-key", "web-1=ed25519:00"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("is not an Ed25519 public key"), "{stderr}");
}

/// The services a reflection client of version v1 is told of at `addr`.
fn reflected_services_v1(addr: &str) -> Vec<String> {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = ServerReflectionClient::new(channel);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut responses = client
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        match responses
            .message()
            .await
            .unwrap()
            .and_then(|r| r.message_response)
        {
            Some(MessageResponse::ListServicesResponse(list)) => {
                list.service.into_iter().map(|s| s.name).collect()
            }
            other => panic!("not a list of services: {other:?}"),
        }
    })
}

/// Guard's OCSF output validates against the published OCSF schema (the
/// release it names), for every class it emits: each kind of decision,
/// findings, statements, losses and gaps. The check is an independent
/// validator's: the schema's own JSON Schema for each class, and the
/// captions it gives each enumerated id.
#[test]
#[ignore = "needs Python with ocsf-json-schema and jsonschema: cargo xtask test"]
fn ocsf_events_validate_against_the_published_schema() {
    const BASE: &str = r#""seq":7,"time":"2026-11-22T10:00:01.5Z","agent":"coder","profile":"coding","session":"s1","user":{"uid":1000,"name":"dev"},"labels":{"ticket":"OPS-1"},"generation":3,"policy_sha256":"ab","agent_cgroup":1,"cgroup":2,"pid":42,"tid":43,"uid":1000,"comm":"rm""#;
    let decision = |rest: &str| format!("{{{BASE},{rest}}}");
    let statement = r#""statement":{"database":"shop","server":"10.0.0.5:5432","dbname":"shop","user":"agent","client":"127.0.0.1:40000","role":"app","classes":["drop"],"objects":["customers"],"normalized":"DROP TABLE customers","fingerprint":"5845001d2291c08a","rows_read":0}"#;
    let lines = [
        decision(
            r#""hook":"path_unlink","action":"unlink","verdict":"deny","target":"/srv/data/db.sqlite","file":{"dev":3,"ino":9},"rule":"keep-data","message":"data stays","process":{"cmdline":["rm","-rf","/srv/data"],"exe":"/usr/bin/rm","ancestry":[{"pid":41,"comm":"bash"}]}"#,
        ),
        decision(
            r#""hook":"path_rename","action":"rename","verdict":"allow","target":"/w/a","rule":"default""#,
        ),
        decision(
            r#""hook":"file_open","action":"open_write","verdict":"would_deny","target":"/w/b","rule":"ro","flags":["path_truncated"]"#,
        ),
        decision(
            r#""hook":"path_mknod","action":"create","verdict":"deny","target":"/w/c","rule":"ro""#,
        ),
        decision(
            r#""hook":"path_truncate","action":"truncate","verdict":"deny","target":"/w/d","rule":"ro""#,
        ),
        decision(
            r#""hook":"bprm_check_security","action":"exec","verdict":"would_deny","target":"/usr/bin/curl","rule":"no-curl""#,
        ),
        decision(
            r#""hook":"socket_connect","action":"connect","verdict":"allow","target":"10.0.0.1:443","protocol":"tcp","rule":"default""#,
        ),
        decision(
            r#""hook":"socket_sendmsg","action":"sendmsg","verdict":"deny","target":"[::1]:53","protocol":"udp","rule":"no-dns""#,
        ),
        decision(
            r#""hook":"unix_stream_connect","action":"connect","verdict":"deny","target":"/run/postgresql/.s.PGSQL.5432","protocol":"unix","rule":"statement-guard-only","message":"agents reach database `shop` only through its statement guard: connect to 127.0.0.1:6432""#,
        ),
        decision(
            r#""hook":"task_kill","action":"signal","verdict":"deny","target":"pid 812","rule":"self-protection","message":"no agent may do this""#,
        ),
        decision(
            r#""hook":"path_unlink","action":"unlink","verdict":"deny","target":"/w/t9","rule":"budget:destroy","budget":{"name":"destroy","spent":50,"burst":50,"rate":"30/min"}"#,
        ),
        decision(
            r#""hook":"guardctl","action":"ticket_approve","verdict":"allow","target":"/w/e","rule":"lock","ticket":{"id":"0000002a","state":"approved","once":true}"#,
        ),
        decision(&format!(
            r#""hook":"statement_guard","action":"statement","verdict":"deny","target":"shop/shop","protocol":"postgresql","rule":"no-drop",{statement}"#
        )),
        decision(&format!(
            r#""hook":"statement_guard","action":"statement","verdict":"allow","target":"shop/shop","protocol":"postgresql","rule":"default",{}"#,
            statement
                .replace("DROP TABLE", "SELECT * FROM")
                .replace("[\"drop\"]", "[\"read\"]")
        )),
        r#"{"seq":9,"time":"2026-11-22T10:00:02Z","loss":{"stage":"ring_buffer","records":12}}"#
            .to_string(),
    ];
    let mut events: Vec<Value> = lines
        .iter()
        .map(|json| {
            let line =
                guard_api::record::Line::parse(json).unwrap_or_else(|e| panic!("{e}: {json}"));
            guard_api::ocsf::event("web-1", &line, json).expect("an event")
        })
        .collect();
    events.push(guard_api::ocsf::gap(
        "web-1",
        10,
        19,
        1_795_341_601_500_000_000,
    ));
    let classes: std::collections::BTreeSet<u64> = events
        .iter()
        .filter_map(|e| e["class_uid"].as_u64())
        .collect();
    assert_eq!(
        classes.into_iter().collect::<Vec<_>>(),
        [0, 1001, 1007, 2004, 4001, 6005],
        "every class Guard emits"
    );

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut validator = Command::new("python3")
        .arg(root.join("tests/python/ocsf_validate.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    let input: String = events.iter().map(|e| format!("{e}\n")).collect();
    std::io::Write::write_all(validator.stdin.as_mut().unwrap(), input.as_bytes()).unwrap();
    drop(validator.stdin.take());
    let output = validator.wait_with_output().unwrap();
    let failures = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "events that do not validate:\n{failures}{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// guardctl with `who`'s certificate from `pki` against `collector`.
fn guardctl_as(collector: &Collector, pki: &Pki, who: &str, args: &[&str]) -> std::process::Output {
    Command::new(bin("guardctl"))
        .args(args)
        .args(["--server", &collector.addr])
        .args(pki.args(who))
        .output()
        .unwrap()
}

fn assert_refused(output: &std::process::Output, what: &str, says: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{what} was not refused: {stderr}");
    assert!(stderr.contains(says), "{what}: no `{says}` in: {stderr}");
}

/// A fleet on mutual TLS: certificates from `guardctl pki` (and one from
/// openssl, as docs/audit.md shows), a host that ships only its own
/// stream, roles that keep hosts from querying and readers from shipping,
/// no way in without the fleet's CA or in plaintext, and the collector's
/// certificate, key and CA rotated without a restart.
#[test]
#[ignore = "needs the release binaries: cargo xtask test"]
fn mutual_tls_lets_each_certificate_do_its_role_only() {
    let dir = tempfile::tempdir().unwrap();
    let [ca, other, next] = ["ca", "other", "next"].map(|name| {
        let pki = Pki::new(&dir.path().join(name));
        pki.issue("web-1", "host", &[]);
        pki.issue("alice", "reader", &[]);
        pki.issue("collector", "collector", &["127.0.0.1"]);
        pki
    });
    // The files the collector is given, to rotate in place later.
    let served = Pki {
        dir: dir.path().join("served"),
    };
    fs::create_dir(&served.dir).unwrap();
    for ending in ["pem", "key"] {
        fs::copy(
            ca.dir.join(format!("collector.{ending}")),
            served.dir.join(format!("collector.{ending}")),
        )
        .unwrap();
    }
    fs::copy(ca.dir.join("ca.pem"), served.dir.join("ca.pem")).unwrap();
    let store = format!("sqlite:{}", dir.path().join("collector.db").display());
    let collector = Collector::start_with(
        dir.path().join("collector.log"),
        &store,
        served.args("collector"),
    );
    let pid = collector.pid();
    let file = dir.path().join("web-1.jsonl");
    let lines = stream(30, "tls");
    write_events(&file, &lines[..20]);
    let ship_as = |ca: &Pki, who: &str, host: &str| {
        let file = file.to_str().unwrap();
        guardctl_as(
            &collector,
            ca,
            who,
            &["audit", "ship", file, "--as-host", host],
        )
    };
    let query_as =
        |ca: &Pki, who: &str| guardctl_as(&collector, ca, who, &["audit", "query", "-o", "json"]);

    // A host ships its own stream; a reader reads it.
    assert_ok(&ship_as(&ca, "web-1", "web-1"), "web-1 ships");
    let out = assert_ok(&query_as(&ca, "alice"), "alice queries");
    assert_eq!(out.lines().count(), 20, "{out}");

    // A host may not ship under another host's name, nor query; a reader
    // may not ship.
    assert_refused(
        &ship_as(&ca, "web-1", "web-2"),
        "web-1 shipping as web-2",
        "the certificate is for host `web-1`: it may not ship host `web-2`'s stream",
    );
    assert_refused(
        &query_as(&ca, "web-1"),
        "a host querying",
        "the certificate of `web-1` (roles: host) may not query or follow records",
    );
    assert_refused(
        &ship_as(&ca, "alice", "alice"),
        "a reader shipping",
        "the certificate of `alice` (roles: reader) may not ship records",
    );
    let stats = assert_ok(
        &guardctl_as(&collector, &ca, "alice", &["audit", "stats"]),
        "stats",
    );
    assert!(
        !stats.contains("web-2") && !stats.contains("host alice"),
        "{stats}"
    );

    // Another CA's certificate, and plaintext, get nowhere.
    assert_refused(
        &query_as(&other, "alice"),
        "a reader of another CA",
        "cannot reach",
    );
    assert_refused(
        &ship_as(&other, "web-1", "web-1"),
        "a host of another CA",
        "cannot reach",
    );
    // A client that trusts the collector but shows another CA's certificate.
    let stranger = Command::new(bin("guardctl"))
        .args(["audit", "query", "--server", &collector.addr])
        .args(["--tls-cert", other.dir.join("alice.pem").to_str().unwrap()])
        .args(["--tls-key", other.dir.join("alice.key").to_str().unwrap()])
        .args(["--tls-ca", ca.dir.join("ca.pem").to_str().unwrap()])
        .output()
        .unwrap();
    assert_refused(
        &stranger,
        "a certificate of another CA",
        "closed the connection: if it refused the certificate",
    );
    wait_for_log(
        &collector.log,
        "TLS handshake refused: invalid peer certificate",
        Duration::from_secs(5),
    );
    assert_refused(
        &collector.guardctl(&["audit", "query"]),
        "a plaintext query",
        "does not answer plaintext gRPC: if it serves TLS, give --tls-cert",
    );

    // A reader certificate made with openssl, as docs/audit.md shows.
    let openssl = |args: &[&str]| {
        let output = Command::new("openssl")
            .current_dir(&ca.dir)
            .args(args)
            .output()
            .expect("openssl (cargo xtask setup installs it)");
        assert_ok(&output, &format!("openssl {args:?}"));
    };
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "bob.key",
        "-out",
        "bob.csr",
        "-subj",
        "/CN=bob/OU=reader",
    ]);
    fs::write(ca.dir.join("bob.ext"), "extendedKeyUsage = clientAuth\n").unwrap();
    openssl(&[
        "x509", "-req", "-in", "bob.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-days", "30",
        "-extfile", "bob.ext", "-out", "bob.pem",
    ]);
    assert_eq!(
        assert_ok(&query_as(&ca, "bob"), "bob queries")
            .lines()
            .count(),
        20
    );

    // Rotation without a restart. Files that do not load leave the last
    // good ones in use...
    fs::write(served.dir.join("collector.pem"), "not a certificate").unwrap();
    assert_eq!(
        assert_ok(&query_as(&ca, "alice"), "query mid-rotation")
            .lines()
            .count(),
        20
    );
    wait_for_log(
        &collector.log,
        "TLS files changed but do not load",
        Duration::from_secs(5),
    );
    // ...and the next CA's files, once in place, are used at once.
    for file in ["collector.key", "ca.pem", "collector.pem"] {
        let staged = served.dir.join(format!("{file}.new"));
        fs::copy(next.dir.join(file), &staged).unwrap();
        fs::rename(&staged, served.dir.join(file)).unwrap();
    }
    write_events(&file, &lines);
    assert_ok(
        &ship_as(&next, "web-1", "web-1"),
        "web-1 ships with the next CA",
    );
    assert_eq!(
        assert_ok(&query_as(&next, "alice"), "alice, next CA")
            .lines()
            .count(),
        30
    );
    assert_refused(
        &query_as(&ca, "alice"),
        "a reader of the old CA",
        "cannot reach",
    );
    assert_eq!(collector.pid(), pid);
    assert!(collector.log_of_this_run().contains("TLS files reloaded"));
}

/// Plaintext only when asked for, and only on loopback.
#[test]
#[ignore = "needs the release binaries: cargo xtask test"]
fn plaintext_is_refused_unless_asked_for_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite:{}", dir.path().join("c.db").display());
    for (args, says) in [
        (
            &["--listen", "127.0.0.1:50997"][..],
            "--listen 127.0.0.1:50997 needs TLS",
        ),
        (
            &["--listen", "0.0.0.0:50997", "--plaintext"],
            "--listen 0.0.0.0:50997 is not a loopback address",
        ),
        (
            &[
                "--listen",
                "127.0.0.1:50997",
                "--tls-cert",
                "/nonexistent/c.pem",
            ],
            "TLS needs all of --tls-cert, --tls-key and --tls-ca",
        ),
    ] {
        let output = Command::new(bin("guard-collector"))
            .args(["--store", &store])
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    let output = Command::new(bin("guardctl"))
        .args(["audit", "query", "--server", "192.0.2.1:50052"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("192.0.2.1:50052 is not on loopback"),
        "{stderr}"
    );
}

/// A spool whose events file was rotated (files named after their last
/// sequence number) is one stream: `audit verify` checks it across the
/// files, naming the file of a broken link, and `audit ship` sends it all.
#[test]
#[ignore = "needs the release binaries: cargo xtask test"]
fn a_rotated_spool_verifies_and_ships_as_one_stream() {
    let dir = tempfile::tempdir().unwrap();
    let lines = stream(90, "rotated");
    let events = dir.path().join("events.jsonl");
    write_events(&dir.path().join("events.jsonl.30"), &lines[..30]);
    write_events(&dir.path().join("events.jsonl.60"), &lines[30..60]);
    write_events(&events, &lines[60..]);
    let verify = |file: &Path| {
        Command::new(bin("guardctl"))
            .args(["audit", "verify"])
            .arg(file)
            .output()
            .unwrap()
    };
    let out = assert_ok(&verify(&events), "verify the spool");
    assert!(
        out.contains("(and 2 file(s) rotated out of it): intact: 90 records, sequence 1 to 90"),
        "{out}"
    );

    let collector = Collector::start(
        dir.path(),
        &format!("sqlite:{}", dir.path().join("c.db").display()),
    );
    assert_ok(&ship(&collector, &events, "host-rot"), "ship the spool");
    assert_eq!(
        seqs(&collector.query(&["--host", "host-rot"])),
        (1..=90).collect::<Vec<_>>()
    );

    // A line changed in a rotated file.
    let changed = lines[44].replace("/srv/data/f45", "/srv/data/other");
    let mut tampered = lines[30..60].to_vec();
    tampered[14] = changed;
    write_events(&dir.path().join("events.jsonl.60"), &tampered);
    let out = verify(&events);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("BROKEN at line 15: record 45 does not match its chain hash")
            && stderr.contains("events.jsonl.60)"),
        "{stderr}"
    );
}

/// `cargo xtask pipeline-bench`'s program, on a few thousand records: every
/// stage runs, the collector stores and serves every line (the bench asserts
/// it), and the report has a row for each stage with its ratio.
#[test]
#[ignore = "needs the release binaries and PostgreSQL: cargo xtask test"]
fn the_pipeline_bench_runs_every_stage() {
    let output = Command::new(bin("pipeline-bench"))
        .env("PIPELINE_BENCH_RECORDS", "5000")
        .output()
        .expect("run pipeline-bench");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "pipeline-bench: {report}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for stage in [
        "baseline: JSON and a SHA-256 chain | ",
        "guardd: the writer (",
        "0 lost by the subscriber's queue",
        "ingest into SQLite",
        "ingest into PostgreSQL",
        "query streaming from PostgreSQL",
        "guardctl audit verify, the events file",
    ] {
        assert!(report.contains(stage), "no `{stage}` row in:\n{report}");
    }
    assert!(
        report.contains("| 1.000 |"),
        "the baseline's own ratio:\n{report}"
    );
}
