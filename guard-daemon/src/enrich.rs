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
    entries: Cached<Option<(ProcessInfo, bool)>>,
    /// Each process's name and parent, as the walks up the ancestry read
    /// them: an agent's processes share their parents, which are then read
    /// once, not once for each child.
    parents: Cached<Option<(String, i32)>>,
}

/// Values by pid, each with when it was read.
type Cached<T> = HashMap<u32, (Instant, T)>;

/// The value for `pid` if it was read less than [`REUSE`] ago and `fresh`
/// is not asked for; else `read`'s, kept.
fn cached<T: Clone>(cache: &mut Cached<T>, pid: u32, fresh: bool, read: impl FnOnce() -> T) -> T {
    let now = Instant::now();
    if let Some((when, value)) = cache.get(&pid)
        && !fresh
        && now.duration_since(*when) < REUSE
    {
        return value.clone();
    }
    if cache.len() >= CACHE_SIZE {
        cache.retain(|_, (when, _)| now.duration_since(*when) < REUSE);
    }
    let value = read();
    cache.insert(pid, (now, value.clone()));
    value
}

impl ProcessCache {
    /// The details of `pid` and whether a secret was masked in them (`None`
    /// if the process is gone), read again when they are older than
    /// [`REUSE`] or `fresh` (an exec changes the command line).
    pub fn get(
        &mut self,
        pid: u32,
        fresh: bool,
        redactor: &Redactor,
    ) -> Option<(ProcessInfo, bool)> {
        let parents = &mut self.parents;
        cached(&mut self.entries, pid, fresh, || {
            process(pid, redactor, parents)
        })
    }
}

/// The details of `pid`, its parents' names read through `parents`.
fn process(
    pid: u32,
    redactor: &Redactor,
    parents: &mut Cached<Option<(String, i32)>>,
) -> Option<(ProcessInfo, bool)> {
    let process = procfs::process::Process::new(pid as i32).ok()?;
    // A process in the middle of an exec can show a cut command line (a
    // secret cut short escapes its pattern): only one read twice alike
    // is kept.
    let mut cmdline = process.cmdline().ok()?;
    if process.cmdline().ok()? != cmdline {
        cmdline = Vec::new();
    }
    let masked = redactor.args(&mut cmdline);
    let exe = process.exe().ok().map(|p| p.display().to_string());
    let mut ancestry = Vec::new();
    let (_, mut ppid) = name_and_parent(parents, pid)?;
    while ppid > 0 && ancestry.len() < MAX_ANCESTRY {
        let Some((comm, next)) = name_and_parent(parents, ppid as u32) else {
            break;
        };
        ancestry.push(Ancestor {
            pid: ppid as u32,
            comm,
        });
        ppid = next;
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

/// A process's name and its parent's pid, from its `stat`.
fn name_and_parent(parents: &mut Cached<Option<(String, i32)>>, pid: u32) -> Option<(String, i32)> {
    cached(parents, pid, false, || {
        let stat = procfs::process::Process::new(pid as i32)
            .ok()?
            .stat()
            .ok()?;
        Some((stat.comm, stat.ppid))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_and_its_parents() {
        let redactor = Redactor::new(&[]).unwrap();
        let mut cache = ProcessCache::default();
        let (info, masked) = cache.get(std::process::id(), false, &redactor).unwrap();
        assert!(!masked);
        assert!(!info.cmdline.is_empty());
        assert!(!info.ancestry.is_empty(), "the test runner has a parent");
        // Read again for an exec, with the same parents.
        let (again, _) = cache.get(std::process::id(), true, &redactor).unwrap();
        assert_eq!(again.ancestry, info.ancestry);
        assert!(cache.get(u32::MAX, false, &redactor).is_none());
    }
}
