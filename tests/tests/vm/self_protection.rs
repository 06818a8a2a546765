//! Self-protection and hardening: what no agent may do to Guard, whatever its
//! profile, and the attacks on Guard's files, sockets, disk and records.

use crate::harness::*;
use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::Path,
    time::{Duration, Instant},
};

/// Asserts a self-protection denial: EPERM, and a deny record of `action`
/// with rule `self-protection`, whatever the profile says.
fn assert_tamper_denied(outcome: Outcome, action: &str) -> Value {
    assert_eq!(outcome.errno, Some(EPERM), "expected EPERM for {action}");
    let record = env().guardd.record(outcome.pid, |r| {
        r["action"] == action && r["rule"] == "self-protection"
    });
    assert_eq!(record["verdict"], "deny", "{record}");
    assert!(
        record["message"]
            .as_str()
            .is_some_and(|m| m.contains("whatever its profile") || m.contains("Guard's own")),
        "{record}"
    );
    record
}

#[test]
fn agents_cannot_use_bpf_mount_or_load_modules() {
    let e = env();
    assert_tamper_denied(tagged(&["bpf"]), "bpf");
    // In monitor mode too: self-protection is never only reported.
    let watched = e.guardd.probe(WATCHER, &e.dir, &["bpf"]);
    assert_eq!(watched.errno, Some(EPERM), "monitor mode: bpf");
    assert_eq!(untagged(&["bpf"]).errno, None, "root outside agents may");

    fs::create_dir_all(e.path("mnt")).unwrap();
    let r = assert_tamper_denied(tagged(&["mount-tmpfs", &e.p("mnt")]), "mount");
    assert_eq!(r["target"], e.p("mnt"), "{r}");
    assert_eq!(r["hook"], "sb_mount", "{r}");
    // A mount the test made stays.
    fs::create_dir_all(e.path("mounted")).unwrap();
    assert_eq!(untagged(&["mount-tmpfs", &e.p("mounted")]).errno, None);
    assert_tamper_denied(tagged(&["umount", &e.p("mounted")]), "umount");
    assert_eq!(untagged(&["umount", &e.p("mounted")]).errno, None);

    // Kernel modules, from a file and from memory. Outside agents the
    // kernel gets to parse the bogus module (and refuses it otherwise).
    let module = file("module.ko");
    let module = module.display().to_string();
    let r = assert_tamper_denied(tagged(&["finit-module", &module]), "load_kernel_file");
    assert_eq!(r["target"], module, "{r}");
    assert_tamper_denied(tagged(&["init-module"]), "load_kernel_data");
    assert_ne!(untagged(&["finit-module", &module]).errno, Some(EPERM));
}

#[test]
fn agents_cannot_signal_or_trace_guardd() {
    let e = env();
    let pid = e.guardd.pid().to_string();
    let r = assert_tamper_denied(tagged(&["kill", &pid, "15"]), "signal");
    assert_eq!(r["target"], format!("pid {pid}"), "{r}");
    assert_eq!(r["hook"], "task_kill", "{r}");
    assert_tamper_denied(tagged(&["kill", &pid, "9"]), "signal");
    assert_tamper_denied(tagged(&["ptrace", &pid]), "ptrace");
    assert_tamper_denied(tagged(&["pidfd-getfd", &pid, "0"]), "ptrace");
    // guardd lives on and still answers.
    assert!(e.guardd.status()["hooks"].is_array());
    // Probing whether it exists (signal 0) is not an attack.
    assert_eq!(tagged(&["kill", &pid, "0"]).errno, None);
}

#[test]
fn agents_cannot_change_guards_files_or_kernel_interfaces() {
    let e = env();
    let policy = e.guardd.policy.display().to_string();
    let r = assert_tamper_denied(tagged(&["open-write", &policy]), "open_write");
    assert_eq!(r["target"], policy, "{r}");
    let events = e.guardd.events.display().to_string();
    assert_tamper_denied(tagged(&["unlink", &events]), "unlink");
    assert_tamper_denied(tagged(&["truncate", &events]), "truncate");
    // Guard's binaries (opening a running one for write fails earlier,
    // with ETXTBSY, so they are unlinked).
    for binary in ["guardd", "guardctl", "guard-collector"] {
        let binary = bin(binary).display().to_string();
        assert_tamper_denied(tagged(&["unlink", &binary]), "unlink");
    }
    assert!(e.guardd.events.exists() && fs::metadata(&e.guardd.events).unwrap().len() > 0);
    // Kernel interfaces: the module loader's path, Guard's cgroups.
    let r = assert_tamper_denied(
        tagged(&["open-write", "/proc/sys/kernel/modprobe"]),
        "open_write",
    );
    assert_eq!(r["target"], "/proc/sys/kernel/modprobe", "{r}");
    let escape = format!("/sys/fs/cgroup/{ROOT}/escape");
    assert_tamper_denied(tagged(&["mkdir", &escape]), "mkdir");
    assert!(!Path::new(&escape).exists());
}

#[test]
fn a_tagged_process_stays_tagged() {
    let e = env();
    for how in [
        "cgroup:/sys/fs/cgroup",
        "child-cgroup",
        "unshare",
        "daemonize",
    ] {
        let rel = format!("protected/escape-{}.txt", how.replace([':', '/'], "-"));
        let path = file(&rel);
        let outcome = tagged(&["--escape", how, "unlink", &e.p(&rel)]);
        assert_denied(outcome, "unlink", &e.p(&rel), "files-protected-dir");
        assert_intact(&path, &rel);
    }
    // The ways out are denied and recorded themselves.
    let r = assert_tamper_denied(tagged(&["join-cgroup", "/sys/fs/cgroup"]), "open_write");
    assert_eq!(r["target"], "/sys/fs/cgroup/cgroup.procs", "{r}");
    assert_tamper_denied(
        tagged(&["clone-into-cgroup", "/sys/fs/cgroup"]),
        "clone_into_cgroup",
    );
}

/// A hook that cannot decide (an internal error, injected here for every
/// file decision) allows by default and denies for `on_error: deny`; both
/// are counted.
#[test]
fn internal_errors_fail_open_or_closed_as_the_profile_says() {
    let e = env();
    let dir = e.path("faults");
    fs::create_dir_all(&dir).unwrap();
    let policy = policy_of(
        &format!(
            "{}  - name: closed\n    default: allow\n    on_error: deny\n",
            open_profile("open")
        ),
        &["open", "closed"],
    );
    let guardd = Guardd::start_with_env(
        &dir,
        &policy,
        "guard-fault-test",
        &[("GUARD_FAULT_HOOK_ERRORS", "1")],
    );
    let counters = |name: &str| guardd.status()["counters"][name].as_u64().unwrap();
    let victim = dir.join("victim");
    fs::write(&victim, "x").unwrap();
    let (errors, denials) = (counters("hook_errors"), counters("error_denials"));
    let open = guardd.probe("open", &dir, &["unlink", &victim.display().to_string()]);
    assert_eq!(open.errno, None, "fail open");
    assert!(!victim.exists());
    assert!(counters("hook_errors") > errors);
    assert_eq!(
        counters("error_denials"),
        denials,
        "nothing denied failing open"
    );
    fs::write(&victim, "x").unwrap();
    let closed = guardd.probe("closed", &dir, &["unlink", &victim.display().to_string()]);
    assert_eq!(closed.errno, Some(EPERM), "fail closed");
    assert!(victim.exists());
    assert!(counters("error_denials") > denials);
}

// Hardening: attacks from inside an agent session on what Guard itself
// relies on.

/// The way to Guard's files is Guard's own: no agent may rename, remove or
/// create an entry on the path to its policy, records or sockets, so neither
/// a permissive policy nor a socket of its own can be swapped in, even while
/// no guardd runs. The policy in force is the same after an administrator's
/// reload and a restart.
#[test]
fn the_way_to_guards_files_cannot_be_swapped() {
    let e = env();
    let dir = e.path("swap");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let tool = e.p("tools/denied-tool");
    let policy = policy_of(
        &format!(
            "  - name: s\n    default: allow\n    exec:\n      deny:\n        - id: no-tool\n          path: {tool}\n"
        ),
        &["s"],
    );
    let root = "guard-swap-test";
    let guardd = Guardd::start(&dir, &policy, root);
    let sha = guardd.status()["policy_sha256"].clone();
    let tamper = |guardd: &Guardd, args: &[&str], action: &str| {
        let outcome = guardd.probe("s", &e.dir, args);
        assert_eq!(outcome.errno, Some(EPERM), "{args:?}");
        let r = guardd.record(outcome.pid, |r| r["action"] == action);
        assert_eq!(r["verdict"], "deny", "{r}");
        assert_eq!(r["rule"], "self-protection", "{r}");
    };
    let s = |p: &Path| p.display().to_string();
    let moved = e.p("swap.moved");
    // The directory of the policy, records and sockets, and the one above.
    tamper(&guardd, &["rename", &s(&dir), &moved], "rename");
    tamper(
        &guardd,
        &["rename", &s(&e.dir), "/tmp/guard-vm.moved"],
        "rename",
    );
    // A permissive policy renamed over the one in force.
    let permissive = e.path("permissive.yaml");
    fs::write(&permissive, policy_of(&open_profile("s"), &["s"])).unwrap();
    tamper(
        &guardd,
        &["rename", &s(&permissive), &s(&guardd.policy)],
        "rename",
    );
    tamper(&guardd, &["rename", &s(&guardd.events), &moved], "rename");
    tamper(&guardd, &["unlink", &s(&guardd.socket)], "unlink");
    assert!(dir.exists() && guardd.socket.exists());

    // An agent that outlives guardd tries to plant its own socket there.
    let control = s(&guardd.socket);
    let planter = guardd
        .probe_command(
            &["--agent", "s"],
            &["each", "@3000", &format!("create:{control}")],
        )
        .current_dir(&e.dir)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    assert!(guardd.guardctl(&["reload"]).status.success());
    assert_eq!(guardd.status()["policy_sha256"], sha);
    guardd.stop_keeping_programs();
    assert_eq!(errnos_of(planter), vec![EPERM as i64]);
    assert!(!Path::new(&control).exists(), "nothing was planted");

    let guardd = Guardd::start(&dir, &policy, root);
    assert_eq!(guardd.status()["policy_sha256"], sha);
    let denied = guardd.probe("s", &e.dir, &["exec", &tool]);
    assert_eq!(
        denied.errno,
        Some(EPERM),
        "the policy in force still denies"
    );
}

/// guardd loads only a policy that root alone can change, and starts only
/// on one; guardctl talks only to a socket root serves.
#[test]
fn guardd_trusts_only_roots_files_and_guardctl_only_roots_sockets() {
    let e = env();
    let dir = e.path("trust");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let policy = policy_of(&open_profile("t"), &["t"]);
    let guardd = Guardd::start(&dir, &policy, "guard-trust-test");
    let generation = guardd.status()["generation"].clone();

    fs::set_permissions(&guardd.policy, fs::Permissions::from_mode(0o666)).unwrap();
    let reload = guardd.guardctl(&["reload"]);
    fs::set_permissions(&guardd.policy, fs::Permissions::from_mode(0o600)).unwrap();
    let stderr = String::from_utf8_lossy(&reload.stderr);
    assert_eq!(reload.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("is writable by others (mode 666)"),
        "{stderr}"
    );
    assert_eq!(
        guardd.status()["generation"],
        generation,
        "the policy in force stays"
    );

    // An events file put in the place of the one guardd wrote is not
    // continued.
    let (events, state) = (guardd.events.clone(), dir.join("state.json"));
    drop(guardd);
    let planted = dir.join("planted.jsonl");
    fs::copy(&events, &planted).unwrap();
    fs::rename(&planted, &events).unwrap();
    let refused = std::process::Command::new(bin("guardd"))
        .arg("--policy")
        .arg(dir.join("policy.yaml"))
        .args(["--cgroup-root", "guard-trust-test", "--events"])
        .arg(&events)
        .arg("--socket")
        .arg(dir.join("guard.sock"))
        .arg("--state-file")
        .arg(&state)
        .arg("--why-dir")
        .arg(dir.join("why"))
        .arg("--signing-key")
        .arg(dir.join("signing.key"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("is not the events file guardd last wrote"),
        "{stderr}"
    );

    // A policy in a directory anyone may write to: guardd does not start.
    let open = dir.join("open");
    fs::create_dir_all(&open).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
    fs::write(open.join("policy.yaml"), &policy).unwrap();
    let refused = std::process::Command::new(bin("guardd"))
        .arg("--policy")
        .arg(open.join("policy.yaml"))
        .args(["--cgroup-root", "guard-trust-test-2", "--events"])
        .arg(dir.join("e2.jsonl"))
        .arg("--socket")
        .arg(dir.join("c2.sock"))
        .arg("--state-file")
        .arg(dir.join("s2.json"))
        .arg("--why-dir")
        .arg(dir.join("why2"))
        .arg("--signing-key")
        .arg(dir.join("signing2.key"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("a directory above it") && stderr.contains("not trusted"),
        "{stderr}"
    );

    // A socket served by another user is not guardd.
    let fake = open.join("fake.sock");
    let mut server = std::process::Command::new(bin("guard-probe"))
        .args(["serve-unix-as", "65534"])
        .arg(&fake)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fake.exists() {
        assert!(Instant::now() < deadline, "the fake socket did not appear");
        std::thread::sleep(Duration::from_millis(20));
    }
    for (flag, args) in [
        ("--socket", &["status"][..]),
        ("--api-socket", &["sessions"]),
    ] {
        let output = std::process::Command::new(bin("guardctl"))
            .arg(flag)
            .arg(&fake)
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{flag}: {stderr}");
        assert!(
            stderr.contains("served by uid 65534") && stderr.contains("not by root"),
            "{flag}: {stderr}"
        );
    }
    server.kill().unwrap();
    server.wait().unwrap();
}

/// An agent fills the filesystem that holds the events file: guardd keeps
/// enforcing and starting sessions, a profile with audit_or_deny denies
/// what it cannot record, and once space returns a loss line accounts for
/// the gap and the chain verifies intact.
#[test]
fn a_full_disk_is_survived_and_nothing_is_left_half_written() {
    let e = env();
    let dir = e.path("full");
    let _ = std::process::Command::new("umount")
        .arg(&dir)
        .stderr(std::process::Stdio::null())
        .status();
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs"])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(mounted.success());
    let tool = e.p("tools/denied-tool");
    let policy = policy_of(
        &format!(
            "  - name: strict\n    default: allow\n    record_allowed: true\n    audit_or_deny: true\n  - name: loose\n    default: allow\n    record_allowed: true\n    exec:\n      deny:\n        - id: no-tool\n          path: {tool}\n"
        ),
        &["strict", "loose"],
    );
    let guardd = Guardd::start(&dir, &policy, "guard-full-test");
    let filler = dir.join("filler");
    let filled = guardd.probe("loose", &e.dir, &["fill", &filler.display().to_string()]);
    assert_eq!(filled.errno, None, "the agent filled the disk");

    // Enforcement goes on; the denial's record is counted, not written.
    let denied = guardd.probe("loose", &e.dir, &["exec", &tool]);
    assert_eq!(denied.errno, Some(EPERM));
    // Sessions start; audit_or_deny denies what it cannot record (its
    // agent's very exec), the other profile goes on.
    let connect = |agent: &str| guardd.probe(agent, &e.dir, &["connect-udp", "127.0.0.1:40040"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let output = guardd
            .probe_command(&["--agent", "strict"], &["true"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("cannot start") && stderr.contains("Operation not permitted") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "audit_or_deny did not deny while records cannot be written: {stderr}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(connect("loose").errno, None);
    assert!(guardd.status()["enforcing"].as_bool().unwrap());

    // Once space returns, guardd takes records again (audit_or_deny stops
    // denying) after writing the loss lines for what it could not write.
    // A short loss line can fit while the disk is still too full for
    // records, so losses may be reported in several lines, some before
    // space returned.
    fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !guardd
        .probe_command(&["--agent", "strict"], &["true"])
        .output()
        .unwrap()
        .status
        .success()
    {
        assert!(
            Instant::now() < deadline,
            "records are not written again once space returned"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(connect("strict").errno, None, "records are written again");
    let text = fs::read_to_string(&guardd.events).unwrap();
    let lost: Vec<u64> = text
        .lines()
        .filter(|l| l.contains(r#""stage":"events_file""#))
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["loss"]["records"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert!(lost.iter().sum::<u64>() >= 2, "records lost: {lost:?}");
    assert!(text.ends_with('\n'), "no partial line");
    let verify = guardd.guardctl(&["audit", "verify", &guardd.events.display().to_string()]);
    assert!(
        verify.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    // A guardd that died mid-write left half a line: the next one cuts it
    // and says so in the stream, which stays intact.
    let events = guardd.events.clone();
    drop(guardd);
    let mut file = fs::OpenOptions::new().append(true).open(&events).unwrap();
    std::io::Write::write_all(&mut file, br#"{"seq":99999,"time":"#).unwrap();
    drop(file);
    let guardd = Guardd::start(&dir, &policy, "guard-full-test");
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = fs::read_to_string(&events).unwrap();
        if text.contains(r#""stage":"torn_line""#) {
            break text;
        }
        assert!(Instant::now() < deadline, "no torn_line loss: {text}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!text.contains("99999"), "the torn line is cut");
    let verify = guardd.guardctl(&["audit", "verify", &events.display().to_string()]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    drop(guardd);
    std::process::Command::new("umount")
        .arg(&dir)
        .status()
        .unwrap();
}

/// A denial in the middle of a flood of allowed, recorded actions keeps its
/// record: denials have a ring buffer of their own.
#[test]
fn a_denial_is_recorded_among_a_flood_of_allowed_records() {
    let e = env();
    let dir = e.path("lane");
    fs::create_dir_all(&dir).unwrap();
    let policy = policy_of(
        "  - name: f\n    default: allow\n    record_allowed: true\n    network:\n      deny:\n        - id: the-one-denial\n          cidr: 127.0.0.1\n          ports: 40051\n",
        &["f"],
    );
    let guardd = Guardd::start(&dir, &policy, "guard-lane-test");
    let flood = guardd
        .probe_command(
            &["--agent", "f"],
            &["connect-udp-flood", "127.0.0.1:40050", "200000"],
        )
        .current_dir(&dir)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let denied = guardd.probe("f", &dir, &["connect-udp", "127.0.0.1:40051"]);
    assert_eq!(denied.errno, Some(EPERM));
    assert!(flood.wait_with_output().unwrap().status.success());
    let (made, written, lost) = settled(&guardd);
    eprintln!("flood: {made} records made, {written} written, {lost} lost");
    assert!(
        lost > 0,
        "the flood did not outrun guardd, so nothing was tested"
    );
    let r = guardd.record(denied.pid, |r| r["verdict"] == "deny");
    assert_eq!(r["rule"], "the-one-denial", "{r}");
    assert_eq!(guardd.status()["counters"]["denials_lost"], 0);
}

/// A hard link made outside the rule that protects a file would open its
/// content to truncation: denied. Links within the rule's reach, and
/// removing a link someone else made, stay allowed.
#[test]
fn a_hard_link_cannot_take_a_protected_file_out_of_reach() {
    let e = env();
    let s = |p: &Path| p.display().to_string();
    let protected = file("protected/linked.txt");
    let away = e.path("open/linked-away");
    let r = assert_denied(
        tagged(&["link", &s(&protected), &s(&away)]),
        "link_away",
        &s(&protected),
        "files-protected-dir",
    );
    assert_eq!(r["hook"], "path_link", "{r}");
    assert!(!away.exists());
    let db = file("open/linked.sqlite");
    assert_denied(
        tagged(&["link", &s(&db), &e.p("open/linked-copy")]),
        "link_away",
        &s(&db),
        "files-sqlite",
    );
    // Monitor mode: would have been denied.
    let watched = e
        .guardd
        .probe(WATCHER, &e.dir, &["link", &s(&protected), &s(&away)]);
    assert_eq!(watched.errno, None);
    let r = e.guardd.record(watched.pid, |r| r["action"] == "link_away");
    assert_eq!(r["verdict"], "would_deny", "{r}");
    fs::remove_file(&away).unwrap();

    for (from, to) in [
        (s(&protected), e.p("protected/linked-inside")),
        (s(&db), e.p("open/linked-also.sqlite")),
    ] {
        assert_eq!(tagged(&["link", &from, &to]).errno, None, "{from} -> {to}");
        fs::remove_file(&to).unwrap();
    }
    let admin_link = e.path("open/admin-link");
    let _ = fs::remove_file(&admin_link);
    fs::hard_link(&protected, &admin_link).unwrap();
    assert_eq!(tagged(&["unlink", &s(&admin_link)]).errno, None);
    assert_intact(&protected, "protected/linked.txt");
}

/// Writing a kernel interface's file with O_CREAT is one decision (the open
/// for write), not also a `create`.
#[test]
fn writing_cgroup_procs_is_one_denial_not_two() {
    let outcome = tagged(&["open-create-write", "/sys/fs/cgroup/cgroup.procs"]);
    assert_eq!(outcome.errno, Some(EPERM));
    let guardd = &env().guardd;
    guardd.record(outcome.pid, |r| r["action"] == "open_write");
    let actions: Vec<Value> = guardd
        .records_of(outcome.pid)
        .iter()
        .filter(|r| r["verdict"] != "allow")
        .map(|r| r["action"].clone())
        .collect();
    assert_eq!(actions, ["open_write"], "one denial");
}

/// guardctl's listings end quietly when their reader goes away
/// (`guardctl status | head -1`): no panic, no "Broken pipe".
#[test]
fn listing_commands_end_quietly_on_a_closed_pipe() {
    use std::os::{fd::FromRawFd, unix::process::ExitStatusExt};
    let guardd = &env().guardd;
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["tickets"],
        &["sessions"],
        &["policy", "show"],
        &["--help"],
    ] {
        let mut fds = [0; 2];
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // The reader is gone before guardctl writes.
        unsafe { libc::close(fds[0]) };
        let write = unsafe { std::process::Stdio::from_raw_fd(fds[1]) };
        let output = std::process::Command::new(bin("guardctl"))
            .arg("--socket")
            .arg(&guardd.socket)
            .args(args)
            .stdout(write)
            .output()
            .unwrap();
        // (`policy show` says which policy on stderr.)
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !stderr.contains("Broken pipe") && !stderr.contains("panicked"),
            "guardctl {args:?}: {stderr}"
        );
        assert!(
            output.status.success() || output.status.signal() == Some(libc::SIGPIPE),
            "guardctl {args:?}: {:?}",
            output.status
        );
    }
}

/// An exec deny rule by content (`sha256` alone) refuses every copy of the
/// program: under another name, and its bytes in a memfd. Other programs
/// run.
#[test]
fn a_deny_rule_by_content_denies_every_copy() {
    let e = env();
    let dir = e.path("content");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    // A program of its own content: guard-probe with bytes after its end.
    let forbidden = dir.join("forbidden");
    let mut bytes = fs::read(bin("guard-probe")).unwrap();
    bytes.extend_from_slice(b"forbidden content");
    fs::write(&forbidden, &bytes).unwrap();
    fs::set_permissions(&forbidden, fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.join("an-innocent-name");
    copy_executable(&forbidden, &copy);
    let policy = policy_of(
        &format!(
            "  - name: c\n    default: allow\n    exec:\n      deny:\n        - id: no-such-content\n          sha256: {}\n          message: a program we never run, whatever its name\n",
            sha256_of(&forbidden)
        ),
        &["c"],
    );
    let guardd = Guardd::start(&dir, &policy, "guard-content-test");
    let s = |p: &Path| p.display().to_string();
    for (op, target) in [
        ("exec", &forbidden),
        ("exec", &copy),
        ("exec-memfd", &forbidden),
    ] {
        let outcome = guardd.probe("c", &e.dir, &[op, &s(target), "true"]);
        assert_eq!(outcome.errno, Some(EPERM), "{op} {}", target.display());
        let r = guardd.record(outcome.pid, |r| r["verdict"] == "deny");
        assert_eq!(r["action"], "exec", "{r}");
        assert_eq!(r["rule"], "no-such-content", "{r}");
    }
    let allowed = guardd.probe("c", &e.dir, &["exec", &e.p("tools/allowed-tool"), "true"]);
    assert_eq!(allowed.errno, None);
    let status = guardd.status();
    let hook = status["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "exec_content")
        .cloned();
    assert_eq!(hook.map(|h| h["attached"].clone()), Some(Value::Bool(true)));
}
