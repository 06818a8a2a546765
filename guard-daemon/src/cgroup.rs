//! cgroup v2: where agents live. Guard owns one cgroup (`guard` below the
//! cgroup2 root by default); each agent profile has a child cgroup there, and
//! a process is an agent when it runs in one of those or anywhere below.

use std::{
    fs, io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// Name of Guard's root cgroup below the cgroup2 mount.
pub const DEFAULT_ROOT: &str = "guard";

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "no cgroup2 file system is mounted (looked in /proc/self/mountinfo); mount one with `mount -t cgroup2 none /sys/fs/cgroup`"
    )]
    NoCgroup2,
    #[error("cannot read /proc/self/mountinfo: {0}")]
    MountInfo(io::Error),
    #[error("cannot mount cgroup2 at {path}: {source}")]
    Mount { path: PathBuf, source: nix::Error },
    #[error("cgroup {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "refusing {path} as Guard's cgroup root: {reason}. Choose a dedicated cgroup with --cgroup-root"
    )]
    Unsafe { path: PathBuf, reason: String },
}

/// The cgroup2 mount point, from `/proc/self/mountinfo` (hosts may mount it
/// at /sys/fs/cgroup or, in hybrid setups, /sys/fs/cgroup/unified).
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let info = fs::read_to_string("/proc/self/mountinfo").map_err(CgroupError::MountInfo)?;
    find_cgroup2(&info).ok_or(CgroupError::NoCgroup2)
}

/// Parses mountinfo: `id parent major:minor root mountpoint opts... - fstype source superopts`.
fn find_cgroup2(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        let fstype = after.split_whitespace().next()?;
        let mountpoint = before.split_whitespace().nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_octal(mountpoint)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(byte) => {
                out.push(byte as char);
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Mounts cgroup2 at /sys/fs/cgroup if none is mounted (minimal systems and
/// test VMs boot without one).
pub fn ensure_cgroup2() -> Result<PathBuf, CgroupError> {
    match cgroup2_mount() {
        Err(CgroupError::NoCgroup2) => {
            let path = PathBuf::from("/sys/fs/cgroup");
            nix::mount::mount(
                Some("cgroup2"),
                &path,
                Some("cgroup2"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            )
            .map_err(|source| CgroupError::Mount {
                path: path.clone(),
                source,
            })?;
            Ok(path)
        }
        other => other,
    }
}

/// Guard's root cgroup on this host.
#[derive(Clone, Debug)]
pub struct GuardRoot {
    pub path: PathBuf,
    /// cgroup id (the directory's inode number on cgroup2).
    pub id: u64,
    /// Depth below the cgroup2 root (the root itself is level 0).
    pub level: u32,
}

impl GuardRoot {
    /// Opens (creating if needed) `name` below the cgroup2 mount, after
    /// checking the safety net: Guard's root must be a cgroup of its own,
    /// in which no process the host needs to stay alive runs.
    pub fn create(mount: &Path, name: &str) -> Result<Self, CgroupError> {
        if Path::new(name).components().any(|c| {
            matches!(
                c,
                std::path::Component::ParentDir | std::path::Component::CurDir
            )
        }) {
            return Err(CgroupError::Unsafe {
                path: mount.join(name),
                reason: "it contains `.` or `..`".into(),
            });
        }
        let level = Path::new(name)
            .components()
            .filter(|c| matches!(c, std::path::Component::Normal(_)))
            .count() as u32;
        let path = mount.join(name.trim_start_matches('/'));
        if level == 0 {
            return Err(CgroupError::Unsafe {
                path,
                reason: "it is the cgroup2 root, so every process on the host would be an agent"
                    .into(),
            });
        }
        create_dir(&path)?;
        if let Some((pid, what)) = vital_process_below(&path) {
            return Err(CgroupError::Unsafe {
                path,
                reason: format!(
                    "process {pid} ({what}) runs in it and would be confined as an agent"
                ),
            });
        }
        Ok(Self {
            id: cgroup_id(&path)?,
            path,
            level,
        })
    }

    /// The agent cgroup of `agent`, created if needed. Returns its id.
    pub fn create_agent(&self, agent: &str) -> Result<u64, CgroupError> {
        let path = self.agent_path(agent);
        create_dir(&path)?;
        cgroup_id(&path)
    }

    pub fn agent_path(&self, agent: &str) -> PathBuf {
        self.path.join(agent)
    }

    /// Whether process `pid` runs below this root, or cannot be looked up
    /// (which must count as an agent too).
    pub fn is_agent(&self, pid: i32) -> bool {
        pid <= 0
            || fs::read_to_string(format!("/proc/{pid}/cgroup")).is_err()
            || self.cgroup_of(pid).is_some()
    }

    /// The cgroup directory of process `pid` when it is below this root
    /// (the process is an agent), else `None`.
    pub fn cgroup_of(&self, pid: i32) -> Option<PathBuf> {
        let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let relative = text.lines().find_map(|l| l.strip_prefix("0::"))?;
        let mount = self.path.ancestors().nth(self.level as usize)?;
        let path = mount.join(relative.trim_start_matches('/'));
        (path.starts_with(&self.path) && path != self.path).then_some(path)
    }

    /// Cgroups with processes that Guard has no entry for: agent cgroups not
    /// in `agents`, and cgroups directly below an agent's that are not
    /// `sessions` (left from an earlier run of guardd, or made by an agent).
    /// The kernel denies every action of the processes in them.
    pub fn unknown_with_processes(&self, agents: &[&str], sessions: &[&Path]) -> Vec<PathBuf> {
        subdirs(&self.path)
            .flat_map(|agent| {
                let known = agent
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| agents.contains(&n));
                if known {
                    subdirs(&agent)
                        .filter(|s| !sessions.contains(&s.as_path()))
                        .collect()
                } else {
                    vec![agent]
                }
            })
            .filter(|dir| populated(dir))
            .collect()
    }

    /// Removes the agent cgroups and the root where they are empty, after a
    /// start that failed: a host that cannot enforce keeps no trace of Guard.
    /// Cgroups with processes in them stay (rmdir fails with EBUSY).
    pub fn remove_unused(&self, agents: &[&str]) {
        for agent in agents {
            let _ = fs::remove_dir(self.agent_path(agent));
        }
        let _ = fs::remove_dir(&self.path);
    }
}

/// The directories directly below `dir`.
/// Whether cgroup `id` is `dir` or one below it.
pub fn contains(dir: &Path, id: u64) -> bool {
    use std::os::unix::fs::MetadataExt;
    if fs::metadata(dir).is_ok_and(|m| m.ino() == id) {
        return true;
    }
    subdirs(dir).any(|sub| contains(&sub, id))
}

pub fn subdirs(dir: &Path) -> impl Iterator<Item = PathBuf> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
}

/// Removes the cgroup at `dir` and every (empty) cgroup below it.
pub fn remove_tree(dir: &Path) -> io::Result<()> {
    for sub in subdirs(dir) {
        remove_tree(&sub)?;
    }
    fs::remove_dir(dir)
}

/// Programs a host needs to stay alive (and guardd itself). Policies only
/// ever apply to processes below Guard's root cgroup; guardd refuses a root
/// in which any of these runs.
pub const SAFETY_NET: &[&str] = &[
    "/sbin/init",
    "/usr/sbin/init",
    "/lib/systemd/systemd",
    "/usr/lib/systemd/systemd",
    "/lib/systemd/systemd-journald",
    "/usr/lib/systemd/systemd-journald",
    "/usr/sbin/sshd",
    "/usr/sbin/cron",
    "/usr/local/bin/guardd",
];

/// A process below `dir` that the host needs: PID 1, this guardd, or one
/// running a program of [`SAFETY_NET`]. Returns its pid and what it is.
fn vital_process_below(dir: &Path) -> Option<(u32, String)> {
    let own = std::process::id();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
            let exe = fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
            if pid == 1 {
                return Some((pid, "init".into()));
            }
            if pid == own {
                return Some((pid, "guardd itself".into()));
            }
            // A replaced binary's link ends in " (deleted)".
            let exe_text = exe.to_string_lossy();
            let exe_path = exe_text.trim_end_matches(" (deleted)");
            if SAFETY_NET.contains(&exe_path) {
                return Some((pid, exe.display().to_string()));
            }
        }
        dirs.extend(subdirs(&dir));
    }
    None
}

/// Whether a process runs in the cgroup at `path` or below it.
pub fn populated(path: &Path) -> bool {
    fs::read_to_string(path.join("cgroup.events"))
        .is_ok_and(|events| events.lines().any(|l| l == "populated 1"))
}

fn create_dir(path: &Path) -> Result<(), CgroupError> {
    match fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(CgroupError::Io {
            path: path.into(),
            source,
        }),
    }
}

/// On cgroup2 the cgroup id is the kernfs node id, which is the directory's
/// inode number (kernel/cgroup/cgroup.c, `cgroup_id()`).
pub fn cgroup_id(path: &Path) -> Result<u64, CgroupError> {
    fs::metadata(path)
        .map(|m| m.ino())
        .map_err(|source| CgroupError::Io {
            path: path.into(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_hybrid_mountinfo() {
        let info = "\
25 30 0:23 / /sys rw,nosuid shared:7 - sysfs sysfs rw
33 25 0:28 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
34 33 0:29 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
35 33 0:30 / /sys/fs/cgroup/systemd rw,nosuid shared:11 - cgroup cgroup rw,name=systemd
";
        assert_eq!(
            find_cgroup2(info),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn the_cgroup2_root_is_refused_as_guards_root() {
        let mount = tempfile::tempdir().unwrap();
        for name in ["", "/"] {
            let e = GuardRoot::create(mount.path(), name).unwrap_err();
            assert!(e.to_string().contains("cgroup2 root"), "{e}");
        }
    }

    #[test]
    fn a_root_with_guardd_in_it_is_refused() {
        let mount = tempfile::tempdir().unwrap();
        let root = mount.path().join("guard");
        fs::create_dir(&root).unwrap();
        fs::write(
            root.join("cgroup.procs"),
            format!("{}\n", std::process::id()),
        )
        .unwrap();
        let e = GuardRoot::create(mount.path(), "guard").unwrap_err();
        assert!(e.to_string().contains("guardd itself"), "{e}");
    }

    #[test]
    fn no_cgroup2_is_none() {
        assert_eq!(
            find_cgroup2("25 30 0:23 / /sys rw - sysfs sysfs rw\n"),
            None
        );
    }

    #[test]
    fn unescapes_mount_points() {
        assert_eq!(unescape_octal(r"/mnt/with\040space"), "/mnt/with space");
        assert_eq!(unescape_octal(r"/plain"), "/plain");
    }
}
