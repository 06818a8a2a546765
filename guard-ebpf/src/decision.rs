//! Deciding about one action and recording the decision; the shape every
//! hook shares (`decide_hook`).

use aya_ebpf::{
    bindings::BPF_RB_NO_WAKEUP,
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_uid_gid, generated},
    programs::LsmContext,
};
use guard_common::{
    Counter, EVENT_PATH_LEN, Event, LsmHook, NO_RULE, RuleRef, SELF_PROTECTION,
    STATEMENT_GUARD_ONLY, action, agent_flag, event_flag, mode, spool_flag, verdict,
};

use crate::{
    agent::{Agent, agent_below_root, current_agent},
    kernel::{self, Identity, Kptr, ReadError},
    maps::{self, COUNTERS, DENIALS, EVENTS, PathScratch, SPOOL_STATE},
};

const EPERM: i32 = 1;

/// How a program says allow or deny, by how it is attached. Return values
/// are read at run time from read-only data, whose values the verifier
/// knows: as literals, the compiler may build them from the deny flag by
/// arithmetic the verifier does not track, and it would reject the
/// program's return value.
pub(crate) trait Attach {
    /// The kernel runs the program only for processes below Guard's root
    /// cgroup, so the program need not check that again.
    const ONLY_BELOW_ROOT: bool;
    fn allow() -> i32;
    fn deny() -> i32;
}

/// Attached to the hook itself (`BPF_LSM_MAC`), for every process: 0 or
/// -EPERM, the hook's own return value.
pub(crate) struct Global;

/// Attached to Guard's root cgroup (`BPF_LSM_CGROUP`, Linux 6.0+): the
/// kernel runs it only for processes in that cgroup or below, i.e. agents.
/// 1 allows, 0 denies (the kernel then returns EPERM).
pub(crate) struct PerCgroup;

static GLOBAL_DENY: i64 = -(EPERM as i64);
static CGROUP_ALLOW: i64 = 1;

#[inline(always)]
fn read(value: &'static i64) -> i32 {
    // SAFETY: a plain read of a static.
    unsafe { core::ptr::read_volatile(value) as i32 }
}

impl Attach for Global {
    const ONLY_BELOW_ROOT: bool = false;
    #[inline(always)]
    fn allow() -> i32 {
        0
    }
    #[inline(always)]
    fn deny() -> i32 {
        read(&GLOBAL_DENY)
    }
}

impl Attach for PerCgroup {
    const ONLY_BELOW_ROOT: bool = true;
    #[inline(always)]
    fn allow() -> i32 {
        read(&CGROUP_ALLOW)
    }
    #[inline(always)]
    fn deny() -> i32 {
        0
    }
}

/// The hook's return value. Only constants are returned: the verifier
/// checks that a global LSM program returns a value in [-4095, 0] (6.12),
/// and a per-cgroup one 0 or 1, and a value loaded back from memory is
/// zero-extended and fails that check.
#[inline(always)]
fn verdict<A: Attach>(result: Result<bool, ReadError>, agent_flags: u32) -> i32 {
    match result {
        Ok(true) => A::deny(),
        Ok(false) => A::allow(),
        Err(_) => {
            // Could not read what the decision needs: the profile says
            // whether that allows (fail open) or denies (fail closed).
            count(Counter::HookErrors);
            if agent_flags & agent_flag::FAIL_CLOSED != 0 {
                count(Counter::ErrorDenials);
                A::deny()
            } else {
                A::allow()
            }
        }
    }
}

pub(crate) fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *slot += 1 };
    }
}

pub(crate) fn scratch() -> Result<&'static mut PathScratch, ReadError> {
    maps::path_scratch().ok_or(-1)
}

/// A decision about one action.
pub(crate) struct Decision {
    pub(crate) verdict: u32,
    pub(crate) rule_id: u32,
    /// [`event_flag`] bits for the record.
    pub(crate) flags: u32,
    /// [`Event::detail`] for the record.
    pub(crate) detail: u32,
}

impl Decision {
    /// The decision of `rule` (an `ALLOW` or `DENY`), or without one, the
    /// profile's default: deny when the entry has `default_deny_flag`.
    pub(crate) fn new(agent: &Agent, rule: Option<RuleRef>, default_deny_flag: u32) -> Self {
        let (deny, rule_id) = match rule {
            Some(rule) => (rule.action == action::DENY, rule.rule_id),
            None => (agent.entry.flags & default_deny_flag != 0, NO_RULE),
        };
        let verdict = if !deny {
            verdict::ALLOW
        } else if agent.entry.mode == mode::MONITOR {
            verdict::WOULD_DENY
        } else {
            verdict::DENY
        };
        Decision {
            verdict,
            rule_id,
            flags: 0,
            detail: 0,
        }
    }

    /// A self-protection denial: enforced in every mode, always recorded.
    pub(crate) const SELF_PROTECTION: Decision = Decision {
        verdict: verdict::DENY,
        rule_id: SELF_PROTECTION,
        flags: 0,
        detail: 0,
    };

    /// A connection that would skip the statement guard: enforced in every
    /// mode, always recorded.
    pub(crate) const STATEMENT_GUARD_ONLY: Decision = Decision {
        verdict: verdict::DENY,
        rule_id: STATEMENT_GUARD_ONLY,
        flags: 0,
        detail: 0,
    };

    /// Denials, actions an approved ticket allowed, and for profiles that
    /// record them, the other allowed actions.
    pub(crate) fn recorded(&self, agent: &Agent) -> bool {
        self.verdict != verdict::ALLOW
            || self.flags & event_flag::APPROVED != 0
            || agent.entry.flags & agent_flag::RECORD_ALLOWED != 0
    }

    pub(crate) fn denies(&self) -> bool {
        self.verdict == verdict::DENY
    }

    /// Denials, would-denials and approved actions: the records that go to
    /// the denials' own ring buffer.
    pub(crate) fn notable(&self) -> bool {
        self.verdict != verdict::ALLOW || self.flags & event_flag::APPROVED != 0
    }
}

/// Whether guardd cannot write records (its disk is full).
fn spool_blocked() -> bool {
    let first: u32 = 0;
    SPOOL_STATE
        .get(first)
        .is_some_and(|flags| flags & spool_flag::BLOCKED != 0)
}

/// Records `decision` if the profile records it, and returns whether the
/// action is denied: by the decision, or, for a profile with audit-or-deny,
/// because its record could not be written (no room in the ring buffer, or
/// guardd cannot write records).
#[inline(always)]
pub(crate) fn decided(
    agent: &Agent,
    hook_id: u32,
    decision: &Decision,
    fill: impl FnOnce(&mut Event),
) -> bool {
    if decision.recorded(agent) {
        let audit_or_deny = agent.entry.flags & agent_flag::AUDIT_OR_DENY != 0;
        if (audit_or_deny && spool_blocked()) || !record(agent, hook_id, decision, fill) {
            if audit_or_deny {
                count(Counter::UnrecordedDenials);
                return true;
            }
        }
    }
    decision.denies()
}

/// Writes a record of `decision`; `fill` adds the target fields. Denials
/// go to a ring buffer of their own and wake the reader; allowed decisions
/// are written without waking it (it drains on a timer). False when the
/// ring buffer had no room (counted).
#[inline(always)]
fn record(agent: &Agent, hook_id: u32, decision: &Decision, fill: impl FnOnce(&mut Event)) -> bool {
    count(Counter::RecordsMade);
    let notable = decision.notable();
    let reserved = if notable {
        DENIALS.reserve::<Event>(0)
    } else {
        EVENTS.reserve::<Event>(0)
    };
    let Some(mut entry) = reserved else {
        count(if notable {
            Counter::DenialsLost
        } else {
            Counter::EventsLost
        });
        return false;
    };
    let event = entry.as_mut_ptr();
    let pid_tgid = bpf_get_current_pid_tgid();
    // Volatile stores, field by field: LLVM would otherwise merge adjacent
    // zero stores into a memset call, a byte loop the verifier must walk on
    // every path through the program.
    // SAFETY: `event` points to a reserved, exclusively owned Event; every
    // field is plain data, written before submit.
    unsafe {
        use core::ptr::{addr_of_mut, write_volatile as put};
        put(
            addr_of_mut!((*event).boot_ns),
            generated::bpf_ktime_get_boot_ns(),
        );
        put(addr_of_mut!((*event).generation), agent.generation);
        put(addr_of_mut!((*event).agent_cgroup), agent.cgroup);
        put(
            addr_of_mut!((*event).cgroup),
            generated::bpf_get_current_cgroup_id(),
        );
        put(addr_of_mut!((*event).ino), 0);
        put(addr_of_mut!((*event).dev), 0);
        put(addr_of_mut!((*event).pid), pid_tgid as u32);
        put(addr_of_mut!((*event).tgid), (pid_tgid >> 32) as u32);
        put(addr_of_mut!((*event).uid), bpf_get_current_uid_gid() as u32);
        put(addr_of_mut!((*event).hook), hook_id);
        put(addr_of_mut!((*event).verdict), decision.verdict);
        put(addr_of_mut!((*event).profile), agent.entry.profile);
        put(addr_of_mut!((*event).rule_id), decision.rule_id);
        put(addr_of_mut!((*event).port), 0);
        put(addr_of_mut!((*event).family), 0);
        put(addr_of_mut!((*event).protocol), 0);
        put(addr_of_mut!((*event).path_len), 0);
        put(addr_of_mut!((*event).flags), decision.flags);
        put(addr_of_mut!((*event).detail), decision.detail);
        let addr = addr_of_mut!((*event).addr).cast::<u64>();
        put(addr, 0);
        put(addr.add(1), 0);
        generated::bpf_get_current_comm(addr_of_mut!((*event).comm).cast(), 16);
        fill(&mut *event);
    }
    let flags = if notable { 0 } else { BPF_RB_NO_WAKEUP as u64 };
    entry.submit(flags);
    true
}

/// Copies `EVENT_PATH_LEN` bytes starting at `src` into the record's path.
pub(crate) fn set_path(event: &mut Event, src: *const u8, len: usize, flags: u32) {
    let (len, flags) = if len > EVENT_PATH_LEN {
        (
            EVENT_PATH_LEN,
            flags | guard_common::event_flag::PATH_TRUNCATED,
        )
    } else {
        (len, flags)
    };
    if kernel::copy(event.path.as_mut_ptr(), EVENT_PATH_LEN as u32, src).is_ok() {
        event.path_len = len as u16;
    }
    event.flags |= flags;
}

pub(crate) fn set_identity(event: &mut Event, identity: Option<Identity>) {
    if let Some(identity) = identity {
        event.dev = identity.dev;
        event.ino = identity.ino;
    }
}

/// The shape every hook shares: keep an earlier BPF LSM program's denial,
/// return at once for processes that are not agents, otherwise let `decide`
/// say whether to deny.
#[inline(always)]
pub(crate) fn decide_hook<A: Attach>(
    ctx: &LsmContext,
    lsm_hook: LsmHook,
    decide: impl FnOnce(&Agent) -> Result<bool, ReadError>,
) -> i32 {
    if !lsm_hook.leading_args {
        let previous: i32 = ctx.arg(lsm_hook.args);
        if previous != 0 {
            return A::deny();
        }
    }
    let agent = if A::ONLY_BELOW_ROOT {
        agent_below_root()
    } else {
        current_agent()
    };
    match agent {
        Some(agent) => verdict::<A>(decide(&agent), agent.entry.flags),
        None => A::allow(),
    }
}

/// A hook's two programs: `$global`, attached to the hook for every
/// process, and `$per_cgroup`, attached to Guard's root cgroup, which the
/// kernel runs only for agents. Both run `$body`; guardd attaches one
/// ([`guard_common::LsmHook::per_cgroup`]). For hooks whose cgroup is the
/// calling process's: on a hook that takes a socket, the kernel would look at
/// the socket's cgroup instead, and an agent's inherited socket would escape.
macro_rules! per_cgroup_too {
    ($hook:tt, $global:ident, $per_cgroup:ident, $body:ident) => {
        #[aya_ebpf::macros::lsm(hook = $hook)]
        // Inlined into the wrapper the macro generates: as a separate
        // global function taking a struct by value, 6.1's verifier rejects
        // it.
        #[inline(always)]
        fn $global(ctx: aya_ebpf::programs::LsmContext) -> i32 {
            $body::<$crate::decision::Global>(&ctx)
        }

        #[aya_ebpf::macros::lsm_cgroup(hook = $hook)]
        #[inline(always)]
        fn $per_cgroup(ctx: aya_ebpf::programs::LsmContext) -> i32 {
            $body::<$crate::decision::PerCgroup>(&ctx)
        }
    };
}
pub(crate) use per_cgroup_too;

/// Records a path target (mounts, kernel files).
pub(crate) fn set_target_path(event: &mut Event, path: Kptr) {
    let Ok((vfsmount, dentry)) = kernel::path_parts(path) else {
        return;
    };
    let (Ok(dentry), Ok(vfsmount)) = (kernel::as_scalar(dentry), kernel::as_scalar(vfsmount))
    else {
        return;
    };
    let built = kernel::guard_build_path(dentry, vfsmount);
    let (start, flags) = (built as u32 as usize, (built >> 32) as u32);
    if let Ok(scratch) = scratch() {
        let from = scratch
            .walk
            .as_ptr()
            .wrapping_add(start & (maps::WALK_LEN - 1));
        set_path(event, from, maps::WALK_LEN - start, flags);
    }
}
