//! What a guardd keeps for the guardd after it, which adopts the programs
//! it left attached: the generation in force, so that records those
//! programs made while no guardd ran name their rules, and the live
//! sessions they confine.

use std::{io::Write, path::Path};

use serde::{Deserialize, Serialize};

use crate::session::KeptSession;

#[derive(Default, Serialize, Deserialize)]
pub struct Kept {
    /// The generation in force and the policy text it was compiled from.
    pub generation: u64,
    pub policy: String,
    pub sessions: Vec<KeptSession>,
    /// The identity (device, inode) of the events file it wrote.
    #[serde(default)]
    pub events: Option<(u32, u64)>,
}

impl Kept {
    /// Writes `file` in place, not by renaming a new file over it: the
    /// self-protection rule names the file by identity. The space is
    /// reserved first, so that a full disk leaves the old content whole.
    pub fn write(&self, file: &Path) -> std::io::Result<()> {
        let text = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(file)?;
        match nix::fcntl::fallocate(
            &out,
            nix::fcntl::FallocateFlags::empty(),
            0,
            text.len() as libc::off_t,
        ) {
            Ok(()) | Err(nix::errno::Errno::EOPNOTSUPP) => {}
            Err(e) => return Err(e.into()),
        }
        out.write_all(&text)?;
        out.set_len(text.len() as u64)?;
        out.sync_data()
    }

    /// Checks that `events` is the events file the previous guardd wrote
    /// (or a new, empty one): a file put in its place would have guardd
    /// continue someone else's chain.
    pub fn check_events(&self, events: &Path) -> Result<(), String> {
        let (Some(expected), Ok(meta)) = (self.events, std::fs::metadata(events)) else {
            return Ok(());
        };
        let found = guard_policy::compile::identity(events).map_err(|e| e.to_string())?;
        if meta.len() == 0 || found == expected {
            return Ok(());
        }
        Err(format!(
            "{} is not the events file guardd last wrote (device {} inode {}, now device {} inode {}): it was replaced. Put the original back, or move this one aside to start a new chain",
            events.display(),
            expected.0,
            expected.1,
            found.0,
            found.1
        ))
    }

    /// What `file` keeps; nothing if it is missing, empty or unreadable
    /// (the sessions' processes then have every action denied, and records
    /// of the previous generation name rules by number).
    pub fn read(file: &Path) -> Kept {
        match std::fs::read(file) {
            Ok(text) if !text.is_empty() => serde_json::from_slice(&text).unwrap_or_else(|e| {
                tracing::warn!(file = %file.display(), "cannot read what the previous guardd kept: {e}");
                Kept::default()
            }),
            _ => Kept::default(),
        }
    }
}
