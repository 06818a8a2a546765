//! Where guardd attaches its programs: for the hooks the kernel decides by
//! the calling process's cgroup, on Guard's root cgroup, so that processes
//! outside it (untagged) run no Guard program there at all; the others on
//! their hooks. Counted with the kernel's own statistics.

use crate::harness::*;
use guard_tests::bpf;
use std::{collections::BTreeMap, fs, net::UdpSocket, process::Command};

/// The hooks whose programs run on Guard's root cgroup, and the kernel's
/// names of those programs (cut to 15 bytes).
const PER_CGROUP: &[(&str, &str)] = &[
    ("bprm_check_security", "cg_bprm_check_s"),
    ("mmap_file", "cg_mmap_file"),
    ("file_open", "cg_file_open"),
    ("path_mknod", "cg_path_mknod"),
    ("path_unlink", "cg_path_unlink"),
    ("path_rename", "cg_path_rename"),
    ("path_mkdir", "cg_path_mkdir"),
    ("task_alloc", "cg_task_alloc"),
];

/// Hooks that take a socket: the kernel would decide a per-cgroup program
/// by the socket's cgroup, so an agent's inherited socket would escape.
const GLOBAL: &[&str] = &["socket_connect", "socket_sendmsg", "unix_stream_connect"];

fn runs(names: &[&str]) -> BTreeMap<String, u64> {
    let pid = env().guardd.pid();
    names
        .iter()
        .map(|name| (name.to_string(), bpf::runs(pid, name)))
        .collect()
}

fn added(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(name, runs)| (name.clone(), runs - before[name]))
        .collect()
}

#[test]
fn untagged_processes_run_no_guard_program_on_per_cgroup_hooks() {
    let e = env();
    let status = e.guardd.status();
    let hooks: BTreeMap<&str, &Value> = status["hooks"]
        .as_array()
        .expect("hooks")
        .iter()
        .map(|h| (h["name"].as_str().unwrap(), h))
        .collect();
    for (hook, _) in PER_CGROUP {
        assert_eq!(hooks[hook]["per_cgroup"], true, "{hook}: {}", hooks[hook]);
        assert_eq!(hooks[hook]["enforcing"], true, "{hook}: {}", hooks[hook]);
    }
    for hook in GLOBAL {
        assert_eq!(hooks[hook]["per_cgroup"], false, "{hook}: {}", hooks[hook]);
    }
    let text = String::from_utf8_lossy(&e.guardd.guardctl(&["status"]).stdout).into_owned();
    assert!(
        text.contains("path_unlink") && text.contains("attached to Guard's cgroup, enforcing"),
        "{text}"
    );

    let dir = e.path("attachment");
    fs::create_dir_all(&dir).unwrap();
    let names: Vec<&str> = PER_CGROUP
        .iter()
        .map(|(_, program)| *program)
        .chain(["socket_sendmsg"])
        .collect();
    bpf::stats(true);
    // Untagged (this test process and its children): files made, read,
    // renamed and deleted, directories made, programs run, datagrams sent.
    let before = runs(&names);
    for i in 0..300 {
        let file = dir.join(format!("untagged-{i}"));
        fs::write(&file, "x").unwrap();
        fs::read(&file).unwrap();
        let renamed = dir.join(format!("renamed-{i}"));
        fs::rename(&file, &renamed).unwrap();
        fs::remove_file(&renamed).unwrap();
    }
    fs::create_dir(dir.join("untagged-dir")).unwrap();
    for _ in 0..20 {
        assert!(Command::new("/bin/true").status().unwrap().success());
    }
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..300 {
        socket.send_to(b"x", "127.0.0.1:9").unwrap();
    }
    let untagged = added(&before, &runs(&names));

    // Tagged: the agent's creation, deletion, exec and fork run them.
    let before = runs(&names);
    let file = e.p("attachment/tagged-file");
    assert_allowed_tagged(tagged(&["create", &file]), "create", &file);
    assert_allowed_tagged(tagged(&["unlink", &file]), "unlink", &file);
    let shell = e.guardd.guardctl(&[
        "run",
        "--agent",
        TAGGED,
        "--",
        "/bin/sh",
        "-c",
        "/bin/true; /bin/true",
    ]);
    assert!(shell.status.success(), "{shell:?}");
    let tagged = added(&before, &runs(&names));
    bpf::stats(false);

    assert!(
        untagged["socket_sendmsg"] >= 300,
        "a global program counts every process's calls: {untagged:?}"
    );
    for (hook, program) in PER_CGROUP {
        assert_eq!(
            untagged[*program], 0,
            "{hook}: untagged processes ran Guard's program: {untagged:?}"
        );
    }
    for program in [
        "cg_path_mknod",
        "cg_path_unlink",
        "cg_bprm_check_s",
        "cg_task_alloc",
    ] {
        assert!(
            tagged[program] > 0,
            "{program} did not run for the agent: {tagged:?}"
        );
    }
}
