//! Process details for a record, read from procfs when guardd writes it:
//! the command line (with secrets masked) and the chain of parents. Best
//! effort: a process that has already exited has none, and an exec
//! record's process may already run its new program.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use guard_api::record::{Ancestor, ProcessInfo};

use crate::redact::Redactor;

/// Parents recorded at most.
const MAX_ANCESTRY: usize = 8;

/// How long details read for a process are reused for its next records.
/// A busy agent makes thousands of decisions a second; reading procfs for
/// each would make guardd the bottleneck.
const REUSE: Duration = Duration::from_millis(500);

/// Processes remembered at most before the stale ones are dropped.
const CACHE_SIZE: usize = 4096;

/// Recently read process details, by pid.
#[derive(Default)]
pub struct ProcessCache {
    entries: HashMap<u32, (Instant, Option<(ProcessInfo, bool)>)>,
}

impl ProcessCache {
    /// The details of `pid` ([`process`]), read again when they are older
    /// than [`REUSE`] or `fresh` (an exec changes the command line).
    pub fn get(
        &mut self,
        pid: u32,
        fresh: bool,
        redactor: &Redactor,
    ) -> Option<(ProcessInfo, bool)> {
        let now = Instant::now();
        if let Some((read, details)) = self.entries.get(&pid)
            && !fresh
            && now.duration_since(*read) < REUSE
        {
            return details.clone();
        }
        if self.entries.len() >= CACHE_SIZE {
            self.entries
                .retain(|_, (read, _)| now.duration_since(*read) < REUSE);
        }
        let details = process(pid, redactor);
        self.entries.insert(pid, (now, details.clone()));
        details
    }
}

/// The details of process `pid`, and whether a secret was masked in them;
/// `None` if the process is gone.
pub fn process(pid: u32, redactor: &Redactor) -> Option<(ProcessInfo, bool)> {
    let process = procfs::process::Process::new(pid as i32).ok()?;
    // A process in the middle of an exec can show a cut command line (a
    // secret cut short escapes its pattern): only one read twice alike is
    // kept.
    let mut cmdline = process.cmdline().ok()?;
    if process.cmdline().ok()? != cmdline {
        cmdline = Vec::new();
    }
    let masked = redactor.args(&mut cmdline);
    let exe = process.exe().ok().map(|p| p.display().to_string());
    let mut ancestry = Vec::new();
    let mut ppid = process.stat().ok()?.ppid;
    while ppid > 0 && ancestry.len() < MAX_ANCESTRY {
        let Some(stat) = procfs::process::Process::new(ppid)
            .ok()
            .and_then(|p| p.stat().ok())
        else {
            break;
        };
        ancestry.push(Ancestor {
            pid: ppid as u32,
            comm: stat.comm,
        });
        ppid = stat.ppid;
    }
    Some((
        ProcessInfo {
            cmdline,
            exe,
            ancestry,
        },
        masked,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_and_its_parents() {
        let (info, masked) = process(std::process::id(), &Redactor::new(&[]).unwrap()).unwrap();
        assert!(!masked);
        assert!(!info.cmdline.is_empty());
        assert!(!info.ancestry.is_empty(), "the test runner has a parent");
        assert!(process(u32::MAX, &Redactor::new(&[]).unwrap()).is_none());
    }
}
