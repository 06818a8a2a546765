//! File rules: protected files survive unlink, rmdir, rename and truncation;
//! read-only places refuse writes and new entries; children of agents stay
//! tagged; monitor mode records would-denials.

use crate::harness::*;
use std::{
    fs,
    path::{Path, PathBuf},
};

#[test]
fn unlink_denied_in_protected_subtree() {
    let e = env();
    let path = file("protected/deep/er/unlink.txt");
    let r = assert_denied(
        tagged(&["unlink", &e.p("protected/deep/er/unlink.txt")]),
        "unlink",
        &e.p("protected/deep/er/unlink.txt"),
        "files-protected-dir",
    );
    assert_eq!(r["message"], "production data");
    assert_intact(&path, "protected/deep/er/unlink.txt");
}

#[test]
fn rmdir_denied_in_protected_subtree() {
    let e = env();
    fs::create_dir_all(e.path("protected/empty-dir")).unwrap();
    assert_denied(
        tagged(&["rmdir", &e.p("protected/empty-dir")]),
        "rmdir",
        &e.p("protected/empty-dir"),
        "files-protected-dir",
    );
    assert!(e.path("protected/empty-dir").is_dir());
    // The protected directory itself.
    assert_denied(
        tagged(&["rmdir", &e.p("protected")]),
        "rmdir",
        &e.p("protected"),
        "files-protected-dir",
    );
}

#[test]
fn rename_away_denied() {
    let e = env();
    let path = file("protected/rename-away.txt");
    assert_denied(
        tagged(&[
            "rename",
            &e.p("protected/rename-away.txt"),
            &e.p("open/stolen.txt"),
        ]),
        "rename",
        &e.p("protected/rename-away.txt"),
        "files-protected-dir",
    );
    assert_intact(&path, "protected/rename-away.txt");
    assert!(!e.path("open/stolen.txt").exists());
}

#[test]
fn rename_over_denied() {
    let e = env();
    let victim = file("protected/rename-over.txt");
    file("open/replacement.txt");
    assert_denied(
        tagged(&[
            "rename",
            &e.p("open/replacement.txt"),
            &e.p("protected/rename-over.txt"),
        ]),
        "rename",
        &e.p("protected/rename-over.txt"),
        "files-protected-dir",
    );
    assert_intact(&victim, "protected/rename-over.txt");
    assert!(e.path("open/replacement.txt").exists());
}

#[test]
fn truncate_denied() {
    let e = env();
    let path = file("protected/truncate.txt");
    assert_denied(
        tagged(&["truncate", &e.p("protected/truncate.txt")]),
        "truncate",
        &e.p("protected/truncate.txt"),
        "files-protected-dir",
    );
    assert_intact(&path, "protected/truncate.txt");
}

#[test]
fn open_with_o_trunc_denied() {
    let e = env();
    let path = file("protected/o-trunc.txt");
    let r = assert_denied(
        tagged(&["open-trunc", &e.p("protected/o-trunc.txt")]),
        "truncate",
        &e.p("protected/o-trunc.txt"),
        "files-protected-dir",
    );
    assert_eq!(r["hook"], "file_open");
    assert_intact(&path, "protected/o-trunc.txt");
}

#[test]
fn ftruncate_denied() {
    let e = env();
    let path = file("protected/ftruncate.txt");
    assert_denied(
        tagged(&["ftruncate", &e.p("protected/ftruncate.txt")]),
        "truncate",
        &e.p("protected/ftruncate.txt"),
        "files-protected-dir",
    );
    assert_intact(&path, "protected/ftruncate.txt");
}

#[test]
fn protected_names_anywhere() {
    let e = env();
    let db = file("open/app.sqlite");
    assert_denied(
        tagged(&["unlink", &e.p("open/app.sqlite")]),
        "unlink",
        &e.p("open/app.sqlite"),
        "files-sqlite",
    );
    assert_intact(&db, "open/app.sqlite");
    let dotenv = file("open/.env");
    assert_denied(
        tagged(&["truncate", &e.p("open/.env")]),
        "truncate",
        &e.p("open/.env"),
        "files-env",
    );
    assert_intact(&dotenv, "open/.env");
    // Only the exact name: `.envrc` is not `.env`.
    file("open/.envrc");
    assert_allowed_tagged(
        tagged(&["unlink", &e.p("open/.envrc")]),
        "unlink",
        &e.p("open/.envrc"),
    );
}

#[test]
fn file_operations_allowed_outside_protection() {
    let e = env();
    file("open/u.txt");
    assert_allowed_tagged(
        tagged(&["unlink", &e.p("open/u.txt")]),
        "unlink",
        &e.p("open/u.txt"),
    );
    assert!(!e.path("open/u.txt").exists());
    fs::create_dir_all(e.path("open/d")).unwrap();
    assert_allowed_tagged(tagged(&["rmdir", &e.p("open/d")]), "rmdir", &e.p("open/d"));
    file("open/r.txt");
    assert_allowed_tagged(
        tagged(&["rename", &e.p("open/r.txt"), &e.p("open/r2.txt")]),
        "rename",
        &e.p("open/r.txt"),
    );
    file("open/t.txt");
    assert_allowed_tagged(
        tagged(&["truncate", &e.p("open/t.txt")]),
        "truncate",
        &e.p("open/t.txt"),
    );
    assert_eq!(fs::metadata(e.path("open/t.txt")).unwrap().len(), 0);
    file("open/o.txt");
    assert_allowed_tagged(
        tagged(&["open-trunc", &e.p("open/o.txt")]),
        "truncate",
        &e.p("open/o.txt"),
    );
    // Creating a new file inside a protected directory destroys nothing.
    file("open/new.txt");
    let outcome = tagged(&["rename", &e.p("open/new.txt"), &e.p("protected/new.txt")]);
    assert_eq!(
        outcome.errno, None,
        "moving a new file into a protected directory is allowed"
    );
}

#[test]
fn file_operations_untagged_are_not_confined() {
    let e = env();
    file("protected/untagged-unlink.txt");
    assert_untagged_ok(untagged(&["unlink", &e.p("protected/untagged-unlink.txt")]));
    assert!(!e.path("protected/untagged-unlink.txt").exists());
    file("protected/untagged-truncate.txt");
    assert_untagged_ok(untagged(&[
        "truncate",
        &e.p("protected/untagged-truncate.txt"),
    ]));
    file("protected/untagged-otrunc.txt");
    assert_untagged_ok(untagged(&[
        "open-trunc",
        &e.p("protected/untagged-otrunc.txt"),
    ]));
    file("protected/untagged-rename.txt");
    assert_untagged_ok(untagged(&[
        "rename",
        &e.p("protected/untagged-rename.txt"),
        &e.p("open/untagged-renamed.txt"),
    ]));
    fs::create_dir_all(e.path("protected/untagged-dir")).unwrap();
    assert_untagged_ok(untagged(&["rmdir", &e.p("protected/untagged-dir")]));
    file("open/untagged.sqlite");
    assert_untagged_ok(untagged(&["unlink", &e.p("open/untagged.sqlite")]));
}

/// The cgroup2 directory of process `pid`.
fn cgroup_of(pid: u32) -> PathBuf {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup2 entry");
    Path::new("/sys/fs/cgroup").join(rel.trim().trim_start_matches('/'))
}

/// The one child process of `pid`, once it has one.
fn child_of(pid: u32) -> u32 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let children = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"));
        if let Some(child) = children
            .ok()
            .and_then(|c| c.split_whitespace().next().and_then(|p| p.parse().ok()))
        {
            return child;
        }
        assert!(std::time::Instant::now() < deadline, "{pid} has no child");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn child_cgroup_of_an_agent_is_still_tagged() {
    let e = env();
    let path = file("protected/child-cgroup.txt");
    // Agents may not make cgroups (self-protection), so the test makes one
    // below a live session and starts a process in it.
    let mut sleeper = e
        .guardd
        .probe_command(&["--agent", TAGGED], &["exec", "/bin/sleep", "60"])
        .spawn()
        .expect("start an agent");
    let agent = child_of(sleeper.id());
    let sessions = Path::new("/sys/fs/cgroup").join(ROOT).join(TAGGED);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let session_dir = loop {
        let cgroup = cgroup_of(agent);
        if cgroup.starts_with(&sessions) {
            break cgroup;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent never joined its session"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let sub = session_dir.join("sub");
    fs::create_dir_all(&sub).unwrap();
    let mut cmd = std::process::Command::new(bin("guard-probe"));
    cmd.args(["unlink", &e.p("protected/child-cgroup.txt")]);
    join_cgroup_on_exec(&mut cmd, &sub.join("cgroup.procs"));
    let outcome = guard_tests::parse_outcome(cmd.output().unwrap(), "probe in a child cgroup");
    let r = assert_denied(
        outcome,
        "unlink",
        &e.p("protected/child-cgroup.txt"),
        "files-protected-dir",
    );
    assert_intact(&path, "protected/child-cgroup.txt");
    // The session's entry applied; the record names the child cgroup the
    // process ran in, and the session it belongs to.
    assert!(r["session"].as_str().is_some(), "{r}");
    let ino = |path: &Path| {
        fs::metadata(path)
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    assert_eq!(r["agent_cgroup"], ino(&session_dir), "{r}");
    assert_eq!(r["cgroup"], ino(&sub), "{r}");
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let _ = fs::remove_dir(&sub);
}

#[test]
fn monitor_mode_allows_and_records_would_deny() {
    let e = env();
    file("protected/monitored.txt");
    let outcome = e.guardd.probe(
        WATCHER,
        &e.dir,
        &["unlink", &e.p("protected/monitored.txt")],
    );
    assert_eq!(outcome.errno, None, "monitor mode does not deny");
    assert!(!e.path("protected/monitored.txt").exists());
    let r = e.guardd.record(outcome.pid, |r| r["action"] == "unlink");
    assert_eq!(r["verdict"], "would_deny", "{r}");
    assert_eq!(r["agent"], WATCHER);
    assert_eq!(r["rule"], "w-files-protected-dir");

    let outcome = e.guardd.probe(
        WATCHER,
        &e.dir,
        &["exec", &e.p("tools/denied-tool"), "true"],
    );
    assert_eq!(outcome.errno, None);
    let r = e.guardd.record(outcome.pid, |r| r["action"] == "exec");
    assert_eq!(
        (r["verdict"].as_str(), r["rule"].as_str()),
        (Some("would_deny"), Some("w-exec-denied-tool"))
    );
}

#[test]
fn read_only_subtree_denies_writing_and_creating() {
    let e = env();
    let path = file("read-only/config.toml");
    let target = e.p("read-only/config.toml");
    let denied = |args: &[&str], action: &str, target: &str, rule: &str| {
        let r = assert_denied(tagged(args), action, target, rule);
        assert_eq!(
            r["message"], "configuration agents may read, not change",
            "{r}"
        );
    };
    denied(
        &["open-write", &target],
        "open_write",
        &target,
        "files-read-only",
    );
    denied(&["unlink", &target], "unlink", &target, "files-read-only");
    denied(
        &["truncate", &target],
        "truncate",
        &target,
        "files-read-only",
    );
    let new = e.p("read-only/new.txt");
    denied(&["create", &new], "create", &new, "files-read-only");
    let dir = e.p("read-only/newdir");
    denied(&["mkdir", &dir], "mkdir", &dir, "files-read-only");
    let link = e.p("read-only/link");
    denied(
        &["symlink", "/etc/hostname", &link],
        "symlink",
        &link,
        "files-read-only",
    );
    let outside = file("open/outside.txt");
    let hard = e.p("read-only/hard");
    denied(
        &["link", &outside.display().to_string(), &hard],
        "link",
        &hard,
        "files-read-only",
    );
    let moved = e.p("read-only/moved.txt");
    denied(
        &["rename", &outside.display().to_string(), &moved],
        "rename_into",
        &moved,
        "files-read-only",
    );
    assert_intact(&path, "read-only/config.toml");
    for gone in ["new.txt", "newdir", "link", "hard", "moved.txt"] {
        assert!(
            !e.path("read-only").join(gone).exists(),
            "{gone} was created"
        );
    }
    // Reading is not a decision; writing elsewhere is allowed.
    assert_eq!(tagged(&["read", &target]).errno, None);
    let open = file("open/writable.txt");
    assert_allowed_tagged(
        tagged(&["open-write", &open.display().to_string()]),
        "open_write",
        &open.display().to_string(),
    );
    // The nearest rule decides: a writable directory inside the read-only one.
    let scratch = e.p("read-only/scratch/note.txt");
    let r = tagged(&["create", &scratch]);
    assert_eq!(r.errno, None, "writable inside read-only");
    let record = e
        .guardd
        .record(r.pid, |r| r["action"] == "create" && r["target"] == scratch);
    assert_eq!(
        (record["verdict"].as_str(), record["rule"].as_str()),
        (Some("allow"), Some("files-writable-inside"))
    );
}

#[test]
fn read_only_names_anywhere() {
    let key = file("open/server.pem");
    let target = key.display().to_string();
    assert_denied(
        tagged(&["open-write", &target]),
        "open_write",
        &target,
        "files-pem",
    );
    assert_denied(tagged(&["unlink", &target]), "unlink", &target, "files-pem");
    assert_intact(&key, "open/server.pem");
}

#[test]
fn untagged_writes_to_read_only_subtrees_are_not_confined() {
    let e = env();
    file("read-only/untagged.txt");
    assert_untagged_ok(untagged(&["open-write", &e.p("read-only/untagged.txt")]));
    assert_untagged_ok(untagged(&["create", &e.p("read-only/untagged-new.txt")]));
}

/// A directory whose decision the kernel keeps (an allowed unlink in it)
/// is renamed into a protected subtree by someone else: the next unlink
/// there is decided by its new place, not by the kept result.
#[test]
fn a_directory_renamed_into_protection_is_protected_at_once() {
    let e = env();
    let _ = fs::remove_dir_all(e.path("open/moving"));
    let _ = fs::remove_dir_all(e.path("protected/moved"));
    file("open/moving/inner/first.txt");
    assert_allowed_tagged(
        tagged(&["unlink", &e.p("open/moving/inner/first.txt")]),
        "unlink",
        &e.p("open/moving/inner/first.txt"),
    );
    file("open/moving/inner/second.txt");
    fs::rename(e.path("open/moving"), e.path("protected/moved")).unwrap();
    let path = e.path("protected/moved/inner/second.txt");
    assert_denied(
        tagged(&["unlink", &e.p("protected/moved/inner/second.txt")]),
        "unlink",
        &e.p("protected/moved/inner/second.txt"),
        "files-protected-dir",
    );
    assert_intact(&path, "open/moving/inner/second.txt");
}

/// The same for a mount: a file system the agent was allowed to change is
/// moved (`mount --move`) to a place inside a protected subtree.
#[test]
fn a_mount_moved_into_protection_is_protected_at_once() {
    let e = env();
    let (from, to) = (e.path("open/mount-from"), e.path("protected/mount-to"));
    for dir in [&from, &to] {
        let _ = std::process::Command::new("umount")
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status();
        fs::create_dir_all(dir).unwrap();
    }
    let mount = |args: &[&str]| {
        let status = std::process::Command::new("mount")
            .args(args)
            .status()
            .unwrap();
        assert!(status.success(), "mount {args:?}");
    };
    mount(&["-t", "tmpfs", "tmpfs", &e.p("open/mount-from")]);
    file("open/mount-from/d/first.txt");
    assert_allowed_tagged(
        tagged(&["unlink", &e.p("open/mount-from/d/first.txt")]),
        "unlink",
        &e.p("open/mount-from/d/first.txt"),
    );
    file("open/mount-from/d/second.txt");
    mount(&[
        "--move",
        &e.p("open/mount-from"),
        &e.p("protected/mount-to"),
    ]);
    let outcome = tagged(&["unlink", &e.p("protected/mount-to/d/second.txt")]);
    let intact = fs::read_to_string(to.join("d/second.txt"));
    let _ = std::process::Command::new("umount").arg(&to).status();
    assert_eq!(
        intact.ok().as_deref(),
        Some("content of open/mount-from/d/second.txt")
    );
    assert_denied(
        outcome,
        "unlink",
        &e.p("protected/mount-to/d/second.txt"),
        "files-protected-dir",
    );
}
