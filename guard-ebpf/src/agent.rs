//! Which agent the calling process is: the cgroup whose entry applies and
//! the generation in force, read from the globals the loader sets and the
//! policy maps.

use aya_ebpf::helpers::generated;
use guard_common::{AgentEntry, AgentKey, LOCKED};

use crate::maps::{AGENTS, GENERATION};

/// cgroup id of Guard's root cgroup (set by the loader, by the name in
/// `guard_common::global`).
#[unsafe(no_mangle)]
static GUARD_ROOT_CGROUP_ID: u64 = 0;
/// Level of Guard's root cgroup below the cgroup2 root (set likewise).
#[unsafe(no_mangle)]
static GUARD_ROOT_CGROUP_LEVEL: u32 = 0;
/// Non-zero only in fault-injection tests: every file decision about an
/// agent fails as an internal error.
#[unsafe(no_mangle)]
pub(crate) static GUARD_FAULT_HOOK_ERRORS: u32 = 0;

/// The calling process's agent: the cgroup whose entry applies, the
/// generation in force, and the entry.
pub(crate) struct Agent {
    pub(crate) cgroup: u64,
    pub(crate) generation: u64,
    pub(crate) entry: AgentEntry,
}

/// Returns the agent the current process belongs to, if any. A process is an
/// agent when it runs anywhere below Guard's root cgroup: in an agent cgroup
/// (one level below), a session cgroup (two levels below) or deeper. The
/// session's entry applies to everything below it, the agent's to a process
/// directly in the agent cgroup. A cgroup without an entry (made by an
/// agent, or left from an earlier run) gets `LOCKED`: everything denied, so
/// moving to a new cgroup is no way out of a profile. Everything is read
/// from the one generation in force.
#[inline(always)]
pub(crate) fn current_agent() -> Option<Agent> {
    let root = guard_root();
    // SAFETY: a helper call without pointer arguments.
    if root == 0 || unsafe { generated::bpf_get_current_ancestor_cgroup_id(root_level()) } != root {
        return None;
    }
    agent_below_root()
}

/// [`current_agent`] for a process known to run below Guard's root cgroup
/// (a program attached to that cgroup runs only for those).
#[inline(always)]
pub(crate) fn agent_below_root() -> Option<Agent> {
    let level = root_level();
    // A key on the stack: a promoted `&0` may be merged with a zero-valued
    // load-time global (e.g. the cgroup level), which the loader rewrites.
    let first: u32 = 0;
    // The inner map is never written after the daemon publishes it.
    let info = GENERATION.get_value(0, &first).copied()?;
    let entry_of = |cgroup: u64| {
        let key = AgentKey {
            cgroup,
            slot: info.slot,
            _pad: 0,
        };
        // SAFETY: the value is a plain Copy struct, copied out at once.
        unsafe { AGENTS.get(&key) }.copied().map(|entry| Agent {
            cgroup,
            generation: info.generation,
            entry,
        })
    };
    // SAFETY: helper calls without pointer arguments. 0 when the process
    // is directly in an agent cgroup.
    let session = unsafe { generated::bpf_get_current_ancestor_cgroup_id(level + 2) };
    let cgroup = if session != 0 {
        session
    } else {
        unsafe { generated::bpf_get_current_ancestor_cgroup_id(level + 1) }
    };
    Some(entry_of(cgroup).unwrap_or(Agent {
        cgroup,
        generation: info.generation,
        entry: LOCKED,
    }))
}

#[inline(always)]
fn root_level() -> i32 {
    // SAFETY: a plain read of a static set at load time.
    unsafe { core::ptr::read_volatile(&GUARD_ROOT_CGROUP_LEVEL) as i32 }
}

/// The cgroup id of Guard's root cgroup (0 until the loader sets it).
#[inline(always)]
pub(crate) fn guard_root() -> u64 {
    // SAFETY: a plain read of a static set at load time.
    unsafe { core::ptr::read_volatile(&GUARD_ROOT_CGROUP_ID) }
}
