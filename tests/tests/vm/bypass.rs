//! Ways around rules: descriptors, the dynamic loader, other file routes,
//! io_uring and other network calls are decided like the direct system calls.

use crate::harness::*;
use std::{
    fs,
    net::{TcpListener, UdpSocket},
};

/// The same program reached through a descriptor: denied by its identity.
#[test]
fn exec_denied_through_a_descriptor() {
    let e = env();
    for op in ["exec-fd", "exec-proc-fd"] {
        assert_denied(
            tagged(&[op, &e.p("tools/denied-tool")]),
            "exec",
            &e.p("tools/denied-tool"),
            "exec-denied-tool",
        );
    }
}

/// `ld.so PROGRAM` executes the loader, which maps the program: the mapping
/// is denied.
#[test]
fn exec_denied_through_the_dynamic_loader() {
    let e = env();
    let tool = e.p("tools/denied-tool");
    let output = e.guardd.guardctl(&[
        "run",
        "--agent",
        TAGGED,
        "--",
        "/lib64/ld-linux-x86-64.so.2",
        &tool,
        "true",
    ]);
    assert!(!output.status.success(), "the loader ran the denied tool");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("\"ok\":true"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let record = loop {
        if let Some(r) = e
            .guardd
            .records()
            .into_iter()
            .find(|r| r["action"] == "exec_map" && r["target"] == tool.as_str())
        {
            break r;
        }
        assert!(std::time::Instant::now() < deadline, "no exec_map record");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(
        (
            record["verdict"].as_str(),
            record["rule"].as_str(),
            record["hook"].as_str()
        ),
        (Some("deny"), Some("exec-denied-tool"), Some("mmap_file")),
        "{record}"
    );
}

/// Other routes to destroying a protected file.
#[test]
fn protected_files_survive_other_routes() {
    let e = env();
    // Exchanging a protected file with another destroys it at its name.
    let path = file("protected/exchange.txt");
    file("open/exchange-other.txt");
    assert_denied(
        tagged(&[
            "rename-exchange",
            &e.p("protected/exchange.txt"),
            &e.p("open/exchange-other.txt"),
        ]),
        "rename",
        &e.p("protected/exchange.txt"),
        "files-protected-dir",
    );
    assert_intact(&path, "protected/exchange.txt");
    // A hard link elsewhere, then unlinking the link: the protected name
    // and its content survive whatever the outcome.
    let path = file("protected/linked.txt");
    let link = e.p("open/linked-copy.txt");
    let _ = fs::remove_file(&link);
    let _ = tagged(&["link", &e.p("protected/linked.txt"), &link]);
    let _ = tagged(&["unlink", &link]);
    assert_intact(&path, "protected/linked.txt");
    // Moving a directory of protected files out of the protected subtree.
    let deep = file("protected/deep/keep.txt");
    assert_denied(
        tagged(&["rename", &e.p("protected/deep"), &e.p("open/deep-moved")]),
        "rename",
        &e.p("protected/deep"),
        "files-protected-dir",
    );
    assert_intact(&deep, "protected/deep/keep.txt");
}

/// io_uring requests reach the same kernel functions, and the same hooks,
/// as the system calls (some run on the process's io-wq worker threads).
#[test]
fn io_uring_requests_are_decided_like_system_calls() {
    let e = env();
    let path = file("protected/uring.txt");
    assert_denied(
        tagged(&["uring-unlink", &e.p("protected/uring.txt")]),
        "unlink",
        &e.p("protected/uring.txt"),
        "files-protected-dir",
    );
    assert_denied(
        tagged(&[
            "uring-rename",
            &e.p("protected/uring.txt"),
            &e.p("open/uring-moved.txt"),
        ]),
        "rename",
        &e.p("protected/uring.txt"),
        "files-protected-dir",
    );
    assert_intact(&path, "protected/uring.txt");
    let config = file("read-only/uring.conf");
    assert_denied(
        tagged(&["uring-open-write", &e.p("read-only/uring.conf")]),
        "open_write",
        &e.p("read-only/uring.conf"),
        "files-read-only",
    );
    assert_intact(&config, "read-only/uring.conf");
    let listener = TcpListener::bind(("127.0.0.1", PORT_V4)).unwrap();
    let target = format!("127.0.0.1:{PORT_V4}");
    assert_denied(
        tagged(&["uring-connect", &target]),
        "connect",
        &target,
        "net-v4",
    );
    assert_no_connection(&listener);
    // Allowed requests go through.
    file("open/uring-ok.txt");
    assert_allowed_tagged(
        tagged(&["uring-unlink", &e.p("open/uring-ok.txt")]),
        "unlink",
        &e.p("open/uring-ok.txt"),
    );
}

#[test]
fn connect_denied_through_other_calls() {
    let listener = TcpListener::bind(("127.0.0.1", PORT_V4)).unwrap();
    let target = format!("127.0.0.1:{PORT_V4}");
    // TCP Fast Open: connect and send in one sendto(2).
    assert_denied(
        tagged(&["sendto-fastopen", &target]),
        "sendmsg",
        &target,
        "net-v4",
    );
    // A non-blocking connect.
    assert_denied(
        tagged(&["connect-nonblock", &target]),
        "connect",
        &target,
        "net-v4",
    );
    assert_no_connection(&listener);
    // UDP sendmmsg(2).
    let socket = UdpSocket::bind(("127.0.0.1", PORT_UDP)).unwrap();
    let udp = format!("127.0.0.1:{PORT_UDP}");
    assert_denied(tagged(&["sendmmsg-udp", &udp]), "sendmsg", &udp, "net-udp");
    // A socket made before the process was an agent, inherited.
    let inherited = UdpSocket::bind("127.0.0.1:0").unwrap();
    use std::os::fd::AsRawFd;
    let fd = inherited.as_raw_fd();
    // SAFETY: clearing close-on-exec on a descriptor this test owns.
    unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
    let outcome = tagged(&["connect-fd", &fd.to_string(), &udp]);
    assert_denied(outcome, "connect", &udp, "net-udp");
    assert_no_datagram(&socket);
}
