//! Network rules: connect and send to denied addresses, v4, v6 and v4-mapped;
//! the default denials of metadata, link-local and private ranges; hostname
//! rules following DNS answers.

use crate::harness::*;
use std::{
    fs,
    net::{TcpListener, UdpSocket},
    time::{Duration, Instant},
};

/// TCP connects to denied addresses, one row per way of writing one: v4,
/// v6, and a v4 address written as v4-mapped v6 (decided by the v4 rule).
#[test]
fn connect_denied_by_v4_v6_and_v4_mapped_addresses() {
    for (listen, port, target, rule) in [
        (
            "127.0.0.1",
            PORT_V4,
            format!("127.0.0.1:{PORT_V4}"),
            "net-v4",
        ),
        ("::1", PORT_V6, format!("[::1]:{PORT_V6}"), "net-v6"),
        (
            "127.0.0.1",
            PORT_V4,
            format!("[::ffff:127.0.0.1]:{PORT_V4}"),
            "net-v4",
        ),
    ] {
        let listener = TcpListener::bind((listen, port)).unwrap();
        let r = assert_denied(tagged(&["connect-tcp", &target]), "connect", &target, rule);
        assert_eq!(r["protocol"], "tcp", "{target}: {r}");
        assert_no_connection(&listener);
    }
}

#[test]
fn udp_sendto_and_connect_denied() {
    let socket = UdpSocket::bind(("127.0.0.1", PORT_UDP)).unwrap();
    let target = format!("127.0.0.1:{PORT_UDP}");
    let r = assert_denied(
        tagged(&["sendto-udp", &target]),
        "sendmsg",
        &target,
        "net-udp",
    );
    assert_eq!(r["protocol"], "udp");
    assert_no_datagram(&socket);
    assert_denied(
        tagged(&["connect-udp", &target]),
        "connect",
        &target,
        "net-udp",
    );
    // TCP to the same port is not covered by the UDP rule.
    let listener = TcpListener::bind(("127.0.0.1", PORT_UDP)).unwrap();
    assert_allowed_tagged(tagged(&["connect-tcp", &target]), "connect", &target);
    listener
        .accept()
        .expect("the allowed TCP connection arrives");
}

#[test]
fn connect_allowed_elsewhere() {
    let listener = TcpListener::bind(("127.0.0.1", PORT_OPEN)).unwrap();
    let target = format!("127.0.0.1:{PORT_OPEN}");
    assert_allowed_tagged(tagged(&["connect-tcp", &target]), "connect", &target);
    listener.accept().expect("the allowed connection arrives");
}

#[test]
fn network_untagged_is_not_confined() {
    let listener = TcpListener::bind(("127.0.0.1", PORT_V4)).unwrap();
    assert_untagged_ok(untagged(&["connect-tcp", &format!("127.0.0.1:{PORT_V4}")]));
    listener.accept().expect("untagged connection arrives");
    let v6 = TcpListener::bind(("::1", PORT_V6)).unwrap();
    assert_untagged_ok(untagged(&["connect-tcp", &format!("[::1]:{PORT_V6}")]));
    v6.accept().expect("untagged v6 connection arrives");
    assert_untagged_ok(untagged(&[
        "connect-tcp",
        &format!("[::ffff:127.0.0.1]:{PORT_V4}"),
    ]));
    listener
        .accept()
        .expect("untagged v4-mapped connection arrives");
    let socket = UdpSocket::bind(("127.0.0.1", PORT_UDP)).unwrap();
    assert_untagged_ok(untagged(&["sendto-udp", &format!("127.0.0.1:{PORT_UDP}")]));
    let mut buf = [0u8; 64];
    socket
        .recv_from(&mut buf)
        .expect("untagged datagram arrives");
    assert_untagged_ok(untagged(&["connect-udp", &format!("127.0.0.1:{PORT_UDP}")]));
}

#[test]
fn metadata_link_local_and_private_ranges_are_denied_by_default() {
    let e = env();
    let dir = e.path("egress-defaults");
    fs::create_dir_all(&dir).unwrap();
    let policy = policy_of(
        "  - name: open\n    default: allow\n  - name: lan\n    default: allow\n    network:\n      allow:\n        - id: lan\n          cidr: 10.0.0.0/8\n",
        &["open", "lan"],
    );
    let guardd = Guardd::start(&dir, &policy, "guard-egress-defaults-test");
    for (to, rule) in [
        ("169.254.169.254:80", "default-deny:metadata"),
        ("[fd00:ec2::254]:80", "default-deny:metadata"),
        ("169.254.1.1:80", "default-deny:link-local"),
        ("[fe80::1]:80", "default-deny:link-local"),
        ("10.1.2.3:80", "default-deny:private"),
        ("192.168.1.1:53", "default-deny:private"),
    ] {
        let outcome = guardd.probe("open", &dir, &["connect-udp", to]);
        assert_eq!(outcome.errno, Some(EPERM), "{to}");
        let record = guardd.record(outcome.pid, |r| r["verdict"] == "deny");
        assert_eq!(
            (&record["target"], &record["rule"]),
            (&to.into(), &rule.into()),
            "{record}"
        );
    }
    assert_eq!(
        guardd
            .probe("open", &dir, &["connect-udp", "127.0.0.1:9"])
            .errno,
        None
    );
    assert_ne!(
        guardd
            .probe("lan", &dir, &["connect-udp", "10.1.2.3:80"])
            .errno,
        Some(EPERM),
        "a rule allows a private range (no route in the VM, but not EPERM)"
    );
}

/// A DNS server on `at` (port 53) that answers A queries for `name` (with
/// its final dot) with the address `answer` holds, with a TTL of 1 s, and
/// every other query with no records.
pub(crate) fn serve_dns(
    at: &str,
    name: &'static str,
    answer: std::sync::Arc<std::sync::Mutex<std::net::Ipv4Addr>>,
) {
    use hickory_proto::{
        op::Message,
        rr::{RData, Record, RecordType, rdata::A},
    };
    let socket = std::net::UdpSocket::bind(at).expect("bind the test's DNS server");
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let Ok(query) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
            reply.metadata.recursion_available = true;
            for q in &query.queries {
                if q.name().to_ascii().eq_ignore_ascii_case(name) && q.query_type() == RecordType::A
                {
                    let ip = *answer.lock().unwrap();
                    reply
                        .answers
                        .push(Record::from_rdata(q.name().clone(), 1, RData::A(A(ip))));
                }
            }
            reply.queries = query.queries;
            if let Ok(bytes) = reply.to_vec() {
                let _ = socket.send_to(&bytes, from);
            }
        }
    });
}

/// Waits until guardd's log says that `name` resolved to `addr`.
pub(crate) fn wait_resolved(guardd: &Guardd, name: &str, addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !guardd
        .log_text()
        .lines()
        .any(|l| l.contains("hostname resolved") && l.contains(name) && l.contains(addr))
    {
        assert!(
            Instant::now() < deadline,
            "{name} never resolved to {addr}: {}",
            guardd.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn hostname_rules_follow_dns_answers_and_records_name_the_host() {
    let e = env();
    let dir = e.path("hosts");
    fs::create_dir_all(&dir).unwrap();
    let answer = std::sync::Arc::new(std::sync::Mutex::new(std::net::Ipv4Addr::new(127, 0, 0, 8)));
    serve_dns("127.0.0.2:53", "api.test.", answer.clone());
    let policy = policy_of(
        "  - name: egress\n    record_allowed: true\n    default: {exec: allow, files: allow, network: deny}\n    network:\n      allow:\n        - id: api\n          host: api.test\n          ports: 9\n          protocol: udp\n",
        &["egress"],
    );
    let guardd = Guardd::start_with(
        &dir,
        &policy,
        "guard-hosts-test",
        &["--dns-server", "127.0.0.2"],
        &[],
    );
    let resolved_to = |addr: &str| wait_resolved(&guardd, "api.test", addr);
    let connect = |to: &str| guardd.probe("egress", &dir, &["connect-udp", to]);
    resolved_to("127.0.0.8");
    let allowed = connect("127.0.0.8:9");
    assert_eq!(allowed.errno, None);
    let record = guardd.record(allowed.pid, |r| r["action"] == "connect");
    assert_eq!(
        (&record["verdict"], &record["rule"], &record["host"]),
        (&"allow".into(), &"api".into(), &"api.test".into()),
        "{record}"
    );
    assert_eq!(connect("127.0.0.8:10").errno, Some(EPERM), "another port");
    let other = connect("127.0.0.9:9");
    assert_eq!(
        other.errno,
        Some(EPERM),
        "an address the name did not resolve to"
    );
    let record = guardd.record(other.pid, |r| r["action"] == "connect");
    assert_eq!(record["rule"], "default", "{record}");

    // The answer changes: within its TTL guardd asks again, and the rule
    // moves to the new address.
    *answer.lock().unwrap() = std::net::Ipv4Addr::new(127, 0, 0, 9);
    resolved_to("127.0.0.9");
    assert_eq!(connect("127.0.0.9:9").errno, None);
    assert_eq!(connect("127.0.0.8:9").errno, Some(EPERM));
}
