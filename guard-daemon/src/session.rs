//! Sessions: one per `guardctl run`. A session is a cgroup below its agent's
//! cgroup (or below its parent session's, for a sub-agent), plus who started
//! it and why. The daemon keeps the table; every record names its session.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use guard_api::{session::Session, time::now_rfc3339};
use serde::{Deserialize, Serialize};

/// Most labels a session may carry.
pub const MAX_LABELS: usize = 32;
/// How long an empty session is kept before it counts as ended: the time its
/// launcher has to move the first process in.
const EMPTY_GRACE: Duration = Duration::from_secs(10);
/// How long an ended session stays in the table, so that late records still
/// name it.
const ENDED_KEPT: Duration = Duration::from_secs(600);

/// A live or recently ended session, with what the daemon needs to manage it.
struct Entry {
    session: Session,
    path: PathBuf,
    created: Instant,
    ended_at: Option<Instant>,
    /// The process that started the session and may place its child in it,
    /// until it has.
    launcher: Option<i32>,
}

/// The session table. Looked up by cgroup id: a record names the cgroup its
/// process ran in, which is a session's or one below it.
#[derive(Default)]
pub struct Sessions {
    entries: BTreeMap<String, Entry>,
    /// cgroup id → session id, for the session cgroups and any cgroup looked
    /// up since (`None`: in no session).
    by_cgroup: BTreeMap<u64, Option<String>>,
}

impl Sessions {
    /// Adds a session; `launcher` may then place one process in it.
    pub fn insert(&mut self, session: Session, path: PathBuf, launcher: Option<i32>) {
        self.by_cgroup
            .insert(session.cgroup, Some(session.id.clone()));
        self.entries.insert(
            session.id.clone(),
            Entry {
                session,
                path,
                created: Instant::now(),
                ended_at: None,
                launcher,
            },
        );
    }

    /// Whether `pid` started live session `id` and has not placed a process
    /// in it yet; it may not again.
    pub fn take_launcher(&mut self, id: &str, pid: i32) -> bool {
        self.entries
            .get_mut(id)
            .filter(|e| e.ended_at.is_none() && e.launcher == Some(pid))
            .is_some_and(|e| e.launcher.take().is_some())
    }

    pub fn get(&self, id: &str) -> Option<&Session> {
        self.entries.get(id).map(|e| &e.session)
    }

    pub fn path(&self, id: &str) -> Option<&Path> {
        self.entries.get(id).map(|e| e.path.as_path())
    }

    /// The cgroups of the sessions whose processes may still run.
    pub fn live_paths(&self) -> Vec<&Path> {
        self.entries
            .values()
            .filter(|e| e.ended_at.is_none())
            .map(|e| e.path.as_path())
            .collect()
    }

    /// Sessions whose processes may still run.
    pub fn live(&self) -> impl Iterator<Item = &Session> {
        self.entries
            .values()
            .filter(|e| e.ended_at.is_none())
            .map(|e| &e.session)
    }

    /// How many sessions have processes now.
    pub fn populated(&self) -> usize {
        self.entries
            .values()
            .filter(|e| e.ended_at.is_none() && crate::cgroup::populated(&e.path))
            .count()
    }

    /// The session of a process in cgroup `cgroup`, which is a session's or
    /// one an agent created below it (found by its directory's inode).
    pub fn by_cgroup(&mut self, cgroup: u64) -> Option<&Session> {
        if !self.by_cgroup.contains_key(&cgroup) {
            // Sub-agent sessions lie inside their parent's: the deepest wins.
            let found = self
                .entries
                .values()
                .filter(|e| crate::cgroup::contains(&e.path, cgroup))
                .max_by_key(|e| e.path.components().count())
                .map(|e| e.session.id.clone());
            self.by_cgroup.insert(cgroup, found);
        }
        let id = self.by_cgroup.get(&cgroup)?.as_deref()?;
        self.get(id)
    }

    /// Marks sessions whose cgroup is empty (after the grace period) as
    /// ended, removes their cgroups, and forgets long-ended ones. Returns the
    /// cgroup ids of the sessions that ended now.
    pub fn reap(&mut self) -> Vec<u64> {
        let mut ended = Vec::new();
        // Innermost first, so a sub-agent's session ends before its parent's
        // directory (which holds it) is removed.
        let mut entries: Vec<&mut Entry> = self.entries.values_mut().collect();
        entries.sort_by_key(|e| std::cmp::Reverse(e.path.components().count()));
        for entry in entries {
            if entry.ended_at.is_some() || entry.created.elapsed() < EMPTY_GRACE {
                continue;
            }
            // With its sub-agents' sessions and any cgroups the agent made.
            // (A sub-agent's directory may be gone with its parent's.)
            if !entry.path.exists()
                || (!crate::cgroup::populated(&entry.path)
                    && crate::cgroup::remove_tree(&entry.path).is_ok())
            {
                entry.ended_at = Some(Instant::now());
                entry.session.ended = Some(now_rfc3339());
                ended.push(entry.session.cgroup);
            }
        }
        let forget: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| e.ended_at.is_some_and(|t| t.elapsed() > ENDED_KEPT))
            .map(|(id, _)| id.clone())
            .collect();
        for id in forget {
            self.entries.remove(&id);
            self.by_cgroup
                .retain(|_, s| s.as_deref() != Some(id.as_str()));
        }
        ended
    }
}

/// A live session and its cgroup, as guardd keeps it for the next guardd.
#[derive(Serialize, Deserialize)]
pub struct KeptSession {
    pub session: Session,
    pub path: PathBuf,
}

impl Sessions {
    /// The live sessions, to keep for the next guardd.
    pub fn kept(&self) -> Vec<KeptSession> {
        self.entries
            .values()
            .filter(|e| e.ended_at.is_none())
            .map(|e| KeptSession {
                session: e.session.clone(),
                path: e.path.clone(),
            })
            .collect()
    }
}

/// Whether a cgroup with id `id` lies in the tree at `dir`.
/// A new session id: a random UUID from the kernel.
pub fn new_id() -> std::io::Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/random/uuid")?
        .trim()
        .to_string())
}

/// Checks labels given on the command line (`key=value`).
pub fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), String> {
    if labels.len() > MAX_LABELS {
        return Err(format!("at most {MAX_LABELS} labels"));
    }
    for (key, value) in labels {
        let key_ok = !key.is_empty()
            && key.len() <= 64
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
        if !key_ok {
            return Err(format!(
                "label key `{key}`: use 1-64 letters, digits, `-`, `_`, `.` or `/`"
            ));
        }
        if value.len() > 256 || value.chars().any(char::is_control) {
            return Err(format!(
                "label `{key}`: the value must be at most 256 bytes without control characters"
            ));
        }
    }
    Ok(())
}

/// What guardd checks of a process before it places it in a session.
#[derive(Debug, PartialEq, Eq)]
pub struct Process {
    pub parent: i32,
    /// Its real uid.
    pub uid: u32,
    /// `/proc/PID/cgroup`: where it runs.
    pub cgroup: String,
}

impl Process {
    /// `None` for a process that is gone.
    pub fn read(pid: i32) -> Option<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| -> Option<u32> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        };
        Some(Self {
            parent: field("PPid:")? as i32,
            uid: field("Uid:")?,
            cgroup: std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?,
        })
    }
}

/// The login uid of a process (`/proc/PID/loginuid`); `None` when unset.
pub fn login_uid(pid: i32) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/loginuid")).ok()?;
    let uid: u32 = text.trim().parse().ok()?;
    (uid != u32::MAX).then_some(uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_read_from_proc() {
        let me = Process::read(std::process::id() as i32).unwrap();
        assert_eq!(me.parent, nix::unistd::getppid().as_raw());
        assert_eq!(me.uid, nix::unistd::getuid().as_raw());
        assert!(me.cgroup.contains("0::"), "{}", me.cgroup);
        assert!(Process::read(i32::MAX).is_none());
    }

    #[test]
    fn labels_are_checked() {
        let ok: BTreeMap<_, _> = [("ticket".to_string(), "OPS-12".to_string())].into();
        assert!(check_labels(&ok).is_ok());
        let bad_key: BTreeMap<_, _> = [("a b".to_string(), "x".to_string())].into();
        assert!(check_labels(&bad_key).unwrap_err().contains("label key"));
        let bad_value: BTreeMap<_, _> = [("k".to_string(), "a\nb".to_string())].into();
        assert!(check_labels(&bad_value).unwrap_err().contains("control"));
        let many: BTreeMap<_, _> = (0..=MAX_LABELS)
            .map(|i| (format!("k{i}"), String::new()))
            .collect();
        assert!(check_labels(&many).is_err());
    }

    #[test]
    fn sessions_are_found_by_their_cgroup_and_cgroups_below() {
        let dir = tempfile::tempdir().unwrap();
        let below = dir.path().join("worker");
        std::fs::create_dir(&below).unwrap();
        use std::os::unix::fs::MetadataExt;
        let id = std::fs::metadata(dir.path()).unwrap().ino();
        let below_id = std::fs::metadata(&below).unwrap().ino();
        let mut sessions = Sessions::default();
        sessions.insert(
            Session {
                id: "s1".into(),
                agent: "coder".into(),
                profile: "coding".into(),
                uid: 1000,
                user: Some("dev".into()),
                login_uid: None,
                labels: BTreeMap::new(),
                started: now_rfc3339(),
                parent: None,
                cgroup: id,
                login: None,
                ended: None,
            },
            dir.path().into(),
            Some(7),
        );
        assert!(!sessions.take_launcher("s1", 8));
        assert!(sessions.take_launcher("s1", 7));
        assert!(!sessions.take_launcher("s1", 7), "one process, once");
        assert_eq!(sessions.by_cgroup(id).unwrap().id, "s1");
        assert_eq!(sessions.by_cgroup(below_id).unwrap().id, "s1");
        assert!(sessions.by_cgroup(1).is_none());
        assert_eq!(sessions.live().count(), 1);

        // A sub-agent's session inside it: its cgroups are the sub-agent's.
        let sub = dir.path().join("sub-session");
        let sub_worker = sub.join("worker");
        std::fs::create_dir_all(&sub_worker).unwrap();
        let sub_id = std::fs::metadata(&sub).unwrap().ino();
        let worker_id = std::fs::metadata(&sub_worker).unwrap().ino();
        sessions.insert(
            Session {
                id: "s2".into(),
                parent: Some("s1".into()),
                cgroup: sub_id,
                ..sessions.get("s1").unwrap().clone()
            },
            sub,
            None,
        );
        assert_eq!(sessions.by_cgroup(worker_id).unwrap().id, "s2");
    }
}
