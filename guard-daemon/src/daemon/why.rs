//! Reasons an agent can read. The kernel gives a denied agent only EPERM;
//! guardd keeps each session's last denials, with the rule and its
//! message, in a file the session's user can read. `guardctl run` points
//! GUARD_WHY at it and `guardctl why` prints it.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use tracing::warn;

use guard_api::{record::Record, session::Session};

/// Denials kept per session.
const KEPT: usize = 20;

#[derive(Default)]
pub struct Why {
    /// Where the files are, one per session; off when `None`.
    dir: Option<PathBuf>,
    recent: BTreeMap<String, VecDeque<String>>,
    /// Sessions whose file is behind.
    dirty: BTreeSet<String>,
}

impl Why {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir: Some(dir),
            ..Self::default()
        }
    }

    /// Creates the (empty) file of `session`, readable by its user only,
    /// and returns its path.
    pub fn open(&mut self, session: &Session) -> Option<PathBuf> {
        let path = self.dir.as_ref()?.join(&session.id);
        self.recent.insert(session.id.clone(), VecDeque::new());
        match write_file(&path, "") {
            Ok(()) => {
                let _ = nix::unistd::chown(&path, Some(session.uid.into()), None);
                Some(path)
            }
            Err(e) => {
                warn!(file = %path.display(), "cannot create the session's reasons file: {e}");
                None
            }
        }
    }

    /// Notes a denial of `session`.
    pub fn note(&mut self, session: &str, record: &Record) {
        let Some(recent) = self.recent.get_mut(session) else {
            return;
        };
        let target = match &record.statement {
            Some(statement) => format!("{} `{}`", record.target, statement.normalized),
            None => record.target.clone(),
        };
        let mut line = format!(
            "{} {} {target}: denied by rule `{}` of profile `{}`",
            record.time, record.action, record.rule, record.profile
        );
        if let Some(message) = &record.message {
            line.push_str(": ");
            line.push_str(message);
        }
        if let Some(ticket) = &record.ticket {
            line.push_str(&format!(
                " [approvable: ticket {}; a human may run `guardctl approve {}`, then retry]",
                ticket.id, ticket.id
            ));
        }
        if recent.len() == KEPT {
            recent.pop_front();
        }
        recent.push_back(line);
        self.dirty.insert(session.to_string());
    }

    /// Brings the files of sessions with new denials up to date.
    pub fn write(&mut self) {
        let Some(dir) = &self.dir else { return };
        for session in std::mem::take(&mut self.dirty) {
            let Some(recent) = self.recent.get(&session) else {
                continue;
            };
            let mut text = String::new();
            for line in recent {
                text.push_str(line);
                text.push('\n');
            }
            let path = dir.join(&session);
            if let Err(e) = write_file(&path, &text) {
                warn!(file = %path.display(), "cannot write the session's reasons: {e}");
            }
        }
    }

    /// Forgets sessions that are not in `live`, and removes their files.
    pub fn keep_only<'a>(&mut self, live: impl Iterator<Item = &'a str>) {
        let live: BTreeSet<&str> = live.collect();
        let ended: Vec<String> = self
            .recent
            .keys()
            .filter(|id| !live.contains(id.as_str()))
            .cloned()
            .collect();
        for id in ended {
            self.recent.remove(&id);
            self.dirty.remove(&id);
            if let Some(dir) = &self.dir {
                let _ = std::fs::remove_file(dir.join(&id));
            }
        }
    }
}

/// Writes `text` to `path` in place, never through a symbolic link.
fn write_file(path: &Path, text: &str) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o400)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    file.write_all(text.as_bytes())
}
