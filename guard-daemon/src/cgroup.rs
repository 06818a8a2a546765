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
        "no agent `{agent}` in the running policy: {path} does not exist. Is guardd running with a policy that defines `{agent}`?"
    )]
    UnknownAgent { agent: String, path: PathBuf },
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
    /// Opens (creating if needed) `name` below the cgroup2 mount.
    pub fn create(mount: &Path, name: &str) -> Result<Self, CgroupError> {
        let path = mount.join(name);
        create_dir(&path)?;
        let level = Path::new(name).components().count() as u32;
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

    /// Agent cgroups below the root that are not in `agents` but still have
    /// processes: left from an earlier policy, they are not confined now.
    pub fn unknown_agents_with_processes(&self, agents: &[&str]) -> Vec<String> {
        let Ok(entries) = fs::read_dir(&self.path) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| !agents.contains(&name.as_str()))
            .filter(|name| {
                let procs = fs::read_to_string(self.agent_path(name).join("cgroup.procs"))
                    .unwrap_or_default();
                !procs.trim().is_empty()
            })
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

/// The `cgroup.procs` file of an existing agent's cgroup, for `guardctl run`.
pub fn agent_procs(mount: &Path, root: &str, agent: &str) -> Result<PathBuf, CgroupError> {
    let path = mount.join(root).join(agent);
    if !path.is_dir() {
        return Err(CgroupError::UnknownAgent {
            agent: agent.into(),
            path,
        });
    }
    Ok(path.join("cgroup.procs"))
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
