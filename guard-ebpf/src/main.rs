//! Guard's BPF LSM programs.
//!
//! Every hook has the same shape (`decide_hook`): honour a denial by an
//! earlier BPF LSM program on the same hook, return at once for processes
//! that are not agents (one helper call and a compare), then decide from the
//! policy maps and record the decision. A hook that cannot read kernel
//! memory it needs fails open and counts `Counter::HookErrors`; the daemon
//! reports that counter.
//!
//! Hook functions are `#[inline(always)]` into the wrapper `#[lsm]`
//! generates: as a separate global function taking a struct by value, 6.1's
//! verifier rejects them.
#![no_std]
#![no_main]

mod guardrails;
mod kernel;
mod maps;

use aya_ebpf::{
    bindings::BPF_RB_NO_WAKEUP,
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_uid_gid, generated},
    macros::lsm,
    programs::LsmContext,
};
use guard_common::{
    AgentEntry, AgentKey, Counter, DigestKey, EVENT_PATH_LEN, EXEC_PATH_KEY_LEN, Event,
    ExceptionKey, HASH_ALGO_SHA256, LOCKED, LsmHook, NO_RULE, NetKey, NetRuleSet, RuleRef,
    SELF_PROTECTION, action, agent_flag, budget, event_flag, exec_flag, hook, lsm, mode, object,
    protocol, spool_flag, verdict,
};
use kernel::{Identity, Kptr, ReadError};
use maps::{
    AGENTS, COUNTERS, DENIALS, EVENTS, EXEC_DIGESTS, EXEC_IDENTITY, EXEC_PATHS, GENERATION,
    HOST_ADDRS, NET_RULES, PathScratch, SPOOL_STATE,
};

const EPERM: i32 = 1;
const O_ACCMODE: u32 = 0o3;
const O_RDONLY: u32 = 0;
const O_TRUNC: u32 = 0o1000;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const SOCK_STREAM: u16 = 1;
const SOCK_DGRAM: u16 = 2;

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
static GUARD_FAULT_HOOK_ERRORS: u32 = 0;

/// The calling process's agent: the cgroup whose entry applies, the
/// generation in force, and the entry.
struct Agent {
    cgroup: u64,
    generation: u64,
    entry: AgentEntry,
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
fn current_agent() -> Option<Agent> {
    let root = guard_root();
    // SAFETY: a plain read of a static set at load time.
    let level = unsafe { core::ptr::read_volatile(&GUARD_ROOT_CGROUP_LEVEL) } as i32;
    // SAFETY: helper calls without pointer arguments.
    if root == 0 || unsafe { generated::bpf_get_current_ancestor_cgroup_id(level) } != root {
        return None;
    }
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
    // 0 when the process is directly in an agent cgroup.
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

/// The cgroup id of Guard's root cgroup (0 until the loader sets it).
#[inline(always)]
fn guard_root() -> u64 {
    // SAFETY: a plain read of a static set at load time.
    unsafe { core::ptr::read_volatile(&GUARD_ROOT_CGROUP_ID) }
}

/// -EPERM, read at run time from read-only data. As a literal, the compiler
/// builds it by negating the deny flag, and the verifier does not track
/// negation, so it would reject the program's return value.
static DENY_RETURN: i64 = -(EPERM as i64);

fn deny_return() -> i32 {
    // SAFETY: a plain read of a static.
    unsafe { core::ptr::read_volatile(&DENY_RETURN) as i32 }
}

/// The hook's return value. Only the constants 0 and -EPERM are returned:
/// the verifier (6.12) checks that an LSM program returns a value in
/// [-4095, 0], and a value loaded back from memory is zero-extended and fails
/// that check. An earlier program's denial is kept, as EPERM.
#[inline(always)]
fn verdict(result: Result<bool, ReadError>, agent_flags: u32) -> i32 {
    match result {
        Ok(true) => deny_return(),
        Ok(false) => 0,
        Err(_) => {
            // Could not read what the decision needs: the profile says
            // whether that allows (fail open) or denies (fail closed).
            count(Counter::HookErrors);
            if agent_flags & agent_flag::FAIL_CLOSED != 0 {
                count(Counter::ErrorDenials);
                deny_return()
            } else {
                0
            }
        }
    }
}

fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *slot += 1 };
    }
}

fn scratch() -> Result<&'static mut PathScratch, ReadError> {
    maps::path_scratch().ok_or(-1)
}

/// A decision about one action.
struct Decision {
    verdict: u32,
    rule_id: u32,
    /// [`event_flag`] bits for the record.
    flags: u32,
    /// [`Event::detail`] for the record.
    detail: u32,
}

impl Decision {
    /// The decision of `rule` (an `ALLOW` or `DENY`), or without one, the
    /// profile's default: deny when the entry has `default_deny_flag`.
    fn new(agent: &Agent, rule: Option<RuleRef>, default_deny_flag: u32) -> Self {
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
    const SELF_PROTECTION: Decision = Decision {
        verdict: verdict::DENY,
        rule_id: SELF_PROTECTION,
        flags: 0,
        detail: 0,
    };

    /// Denials, actions an approved ticket allowed, and for profiles that
    /// record them, the other allowed actions.
    fn recorded(&self, agent: &Agent) -> bool {
        self.verdict != verdict::ALLOW
            || self.flags & event_flag::APPROVED != 0
            || agent.entry.flags & agent_flag::RECORD_ALLOWED != 0
    }

    fn denies(&self) -> bool {
        self.verdict == verdict::DENY
    }

    /// Denials, would-denials and approved actions: the records that go to
    /// the denials' own ring buffer.
    fn notable(&self) -> bool {
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
fn decided(
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
fn set_path(event: &mut Event, src: *const u8, len: usize, flags: u32) {
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

/// The key of an approved ticket for executing the program `identity`.
fn program_key(agent: &Agent, identity: Identity) -> ExceptionKey {
    ExceptionKey::identity(agent.cgroup, object::PROGRAM, identity.dev, identity.ino)
}

fn set_identity(event: &mut Event, identity: Option<Identity>) {
    if let Some(identity) = identity {
        event.dev = identity.dev;
        event.ino = identity.ino;
    }
}

/// The shape every hook shares: keep an earlier BPF LSM program's denial,
/// return at once for processes that are not agents, otherwise let `decide`
/// say whether to deny.
#[inline(always)]
fn decide_hook(
    ctx: &LsmContext,
    lsm_hook: LsmHook,
    decide: impl FnOnce(&Agent) -> Result<bool, ReadError>,
) -> i32 {
    if !lsm_hook.leading_args {
        let previous: i32 = ctx.arg(lsm_hook.args);
        if previous != 0 {
            return deny_return();
        }
    }
    match current_agent() {
        Some(agent) => verdict(decide(&agent), agent.entry.flags),
        None => 0,
    }
}

// ---------------------------------------------------------------- exec ----

/// Denies executing a file by its identity (device + inode: catches hard
/// links, symlinks and copies' originals) or by path rules on its resolved
/// path (`bpf_d_path`). Runs for the script and again for its interpreter, so
/// both a denied script and a denied interpreter are refused.
#[lsm(hook = "bprm_check_security")]
// Inlined into the wrapper the macro generates: as a separate global
// function taking a struct by value, 6.1\'s verifier rejects it.
#[inline(always)]
fn bprm_check_security(ctx: LsmContext) -> i32 {
    decide_hook(&ctx, lsm::BPRM_CHECK_SECURITY, |agent| {
        try_exec(&ctx, agent)
    })
}

fn try_exec(ctx: &LsmContext, agent: &Agent) -> Result<bool, ReadError> {
    let bprm: Kptr = ctx.arg(0);
    // A direct load, not bpf_probe_read: bpf_d_path needs the kernel's typed
    // pointer to `file->f_path`, which only a BTF-checked load yields.
    // SAFETY: the verifier checks this load against the kernel's BTF.
    let file: Kptr =
        unsafe { core::ptr::read_volatile(bprm.add(kernel::bprm_file_offset()) as *const Kptr) };
    let inode = kernel::file_inode(file)?;
    let identity = kernel::inode_identity(inode)?;
    let scratch = scratch()?;

    // SAFETY: the value is a plain Copy struct, copied out at once.
    let mut rule = match unsafe { EXEC_IDENTITY.get(&identity.key(agent.entry.profile)) }.copied() {
        // A pinned file changed since guardd hashed it: not the file the
        // rule names any more.
        Some(pinned) if pinned.flags & exec_flag::PINNED != 0 => (kernel::inode_ctime(inode)?
            == (pinned.ctime_sec, pinned.ctime_nsec))
            .then_some(pinned.rule),
        found => found.map(|r| r.rule),
    };
    let path_len = d_path(file, scratch);
    if rule.is_none() && path_len > 0 {
        let key = &mut scratch.exec_key;
        key.data.profile = agent.entry.profile.to_be_bytes();
        kernel::copy(
            key.data.path.as_mut_ptr(),
            EXEC_PATH_KEY_LEN as u32,
            scratch.d_path.as_ptr(),
        )?;
        // Exact rules include the NUL, so they match only a path that ends there.
        key.prefix_len = 32 + (path_len + 1).min(EXEC_PATH_KEY_LEN) as u32 * 8;
        rule = EXEC_PATHS.get(&*key).copied();
    }

    let mut decision = Decision::new(agent, rule, agent_flag::EXEC_DEFAULT_DENY);
    guardrails::approve(&mut decision, &program_key(agent, identity));
    Ok(decided(agent, hook::EXEC, &decision, |event| {
        set_identity(event, Some(identity));
        set_path(event, scratch.d_path.as_ptr(), path_len, 0);
    }))
}

/// The resolved path of `file` (a BTF-typed pointer) into
/// `scratch.d_path`; its length without the NUL, 0 if it has none.
#[inline(always)]
fn d_path(file: Kptr, scratch: &mut PathScratch) -> usize {
    // SAFETY: the path pointer is the file's typed f_path; the buffer is a
    // map value of D_PATH_LEN bytes.
    let len = unsafe {
        generated::bpf_d_path(
            kernel::file_path(file) as *mut _,
            scratch.d_path.as_mut_ptr() as *mut _,
            maps::D_PATH_LEN as u32,
        )
    };
    // bpf_d_path returns the length including the NUL.
    if len > 0 { len as usize - 1 } else { 0 }
}

/// Denies executing a file whose content an exec deny rule names by
/// SHA-256: every copy, whatever its name, a memfd included. Sleepable: the
/// kernel's IMA hashes the whole file at each exec.
#[lsm(hook = "bprm_check_security", sleepable)]
#[inline(always)]
fn exec_content(ctx: LsmContext) -> i32 {
    decide_hook(&ctx, lsm::EXEC_CONTENT, |agent| {
        if agent.entry.flags & agent_flag::EXEC_DIGESTS == 0 {
            return Ok(false);
        }
        try_exec_content(&ctx)
    })
}

fn try_exec_content(ctx: &LsmContext) -> Result<bool, ReadError> {
    let bprm: Kptr = ctx.arg(0);
    // SAFETY: the verifier checks this load against the kernel's BTF; the
    // IMA helper needs the typed pointer.
    let file: Kptr =
        unsafe { core::ptr::read_volatile(bprm.add(kernel::bprm_file_offset()) as *const Kptr) };
    let mut key = DigestKey::default();
    // SAFETY: `file` is the typed `struct file *`; the buffer is 32 bytes.
    let algo = unsafe {
        generated::bpf_ima_file_hash(
            file as *mut _,
            key.sha256.as_mut_ptr() as *mut core::ffi::c_void,
            32,
        )
    };
    if algo != HASH_ALGO_SHA256 {
        // No hash, or IMA hashes with another algorithm: undecidable.
        return Err(-1);
    }
    // Hashing may sleep: decide with the generation in force now.
    let Some(agent) = current_agent() else {
        return Ok(false);
    };
    key.profile = agent.entry.profile;
    // SAFETY: the value is a plain Copy struct, copied out at once.
    let Some(rule) = (unsafe { EXEC_DIGESTS.get(&key) }).copied() else {
        return Ok(false);
    };
    let identity = kernel::inode_identity(kernel::file_inode(file)?)?;
    let mut decision = Decision::new(&agent, Some(rule), 0);
    guardrails::approve(&mut decision, &program_key(&agent, identity));
    let scratch = scratch()?;
    let path_len = d_path(file, scratch);
    Ok(decided(&agent, hook::EXEC, &decision, |event| {
        set_identity(event, Some(identity));
        set_path(event, scratch.d_path.as_ptr(), path_len, 0);
    }))
}

const PROT_EXEC: u64 = 0x4;

/// Denies mapping a file executable when an exec rule denies that file by
/// identity: `ld.so PROGRAM` runs a program by mapping it, not executing
/// it. Path rules are not applied here (no `bpf_d_path` in this hook), nor
/// the default: every library a process loads is mapped this way.
#[lsm(hook = "mmap_file")]
#[inline(always)]
fn mmap_file(ctx: LsmContext) -> i32 {
    decide_hook(&ctx, lsm::MMAP_FILE, |agent| try_mmap_file(&ctx, agent))
}

fn try_mmap_file(ctx: &LsmContext, agent: &Agent) -> Result<bool, ReadError> {
    let file: Kptr = ctx.arg(0);
    let prot: u64 = ctx.arg(2);
    if file.is_null() || prot & PROT_EXEC == 0 {
        return Ok(false);
    }
    let identity = kernel::inode_identity(kernel::file_inode(file)?)?;
    // SAFETY: the value is a plain Copy struct, copied out at once.
    let rule = match unsafe { EXEC_IDENTITY.get(&identity.key(agent.entry.profile)) } {
        Some(found) if found.rule.action == action::DENY => found.rule,
        _ => return Ok(false),
    };
    let mut decision = Decision::new(agent, Some(rule), 0);
    guardrails::approve(&mut decision, &program_key(agent, identity));
    Ok(decided(agent, hook::EXEC_MAP, &decision, |event| {
        set_identity(event, Some(identity));
        set_target_path(event, kernel::file_path(file));
    }))
}

// ---------------------------------------------------------------- files ---

/// What a file hook is about to do to its target.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FileOp {
    /// Unlink, rmdir, rename away or over, truncate.
    Destroy,
    /// Open for write, or create an entry in a directory.
    Write,
}

/// What a file hook id does to its target.
fn file_op(hook_id: u32) -> FileOp {
    match hook_id {
        hook::CREATE
        | hook::MKDIR
        | hook::SYMLINK
        | hook::LINK
        | hook::OPEN_WRITE
        | hook::RENAME_INTO => FileOp::Write,
        _ => FileOp::Destroy,
    }
}

/// Whether a file rule's `action` denies `op`: read-only denies both,
/// protect (`DENY`) only destruction, `ALLOW` neither.
fn file_rule_denies(rule_action: u32, op: FileOp) -> bool {
    match rule_action {
        action::ALLOW => false,
        action::READ_ONLY => true,
        _ => op == FileOp::Destroy,
    }
}

/// Decides on the action of `hook_id` on the file at `dentry` (in mount `vfsmount`; for a
/// creation, the new, still negative dentry). A name rule that denies `op`
/// decides first; then the rule of the nearest of the file and its ancestor
/// directories that has one; then the profile's default.
///
/// Files of kernel interfaces and block devices, and the entries on the way
/// to Guard's own files, are off limits to every agent (self-protection),
/// before any rule.
fn check_file(
    agent: &Agent,
    hook_id: u32,
    vfsmount: Kptr,
    dentry: Kptr,
) -> Result<bool, ReadError> {
    // SAFETY: a plain read of a static set at load time.
    if unsafe { core::ptr::read_volatile(&GUARD_FAULT_HOOK_ERRORS) } != 0 {
        return Err(-1);
    }
    let (dentry_arg, vfsmount_arg) = (kernel::as_scalar(dentry)?, kernel::as_scalar(vfsmount)?);
    let own_name = changes_entry(hook_id) && {
        let found = kernel::guard_own_name(dentry_arg);
        if found & kernel::FAILED != 0 {
            return Err(-1);
        }
        found != 0
    };
    // A creation's dentry is new: not a kernel interface's file (opening
    // one with O_CREAT passes here too; the open for write that follows is
    // the decision) nor a block device.
    let off_limits = own_name
        || (hook_id != hook::CREATE && kernel::off_limits(dentry, hook_id == hook::OPEN_WRITE)?);
    let mut decision = if off_limits {
        Decision::SELF_PROTECTION
    } else {
        match file_decision(agent, hook_id, dentry_arg, vfsmount_arg)? {
            Some(decision) => decision,
            None => return Ok(false),
        }
    };
    if file_op(hook_id) == FileOp::Destroy {
        guardrails::spend(agent, &mut decision, budget::DESTROY);
    }
    file_decided(agent, hook_id, decision, dentry, dentry_arg, vfsmount_arg)
}

/// Whether a file hook id adds, removes or renames a directory entry.
fn changes_entry(hook_id: u32) -> bool {
    matches!(
        hook_id,
        hook::UNLINK
            | hook::RMDIR
            | hook::RENAME
            | hook::RENAME_INTO
            | hook::CREATE
            | hook::MKDIR
            | hook::SYMLINK
            | hook::LINK
    )
}

/// Applies an approved ticket for the file at `dentry` to `decision`, then
/// records it (with the file's path) and returns whether the action is denied.
#[inline(always)]
fn file_decided(
    agent: &Agent,
    hook_id: u32,
    mut decision: Decision,
    dentry: Kptr,
    dentry_arg: u64,
    vfsmount_arg: u64,
) -> Result<bool, ReadError> {
    if !decision.recorded(agent) {
        return Ok(decision.denies());
    }
    let identity = kernel::dentry_identity(dentry).unwrap_or(None);
    if let Some(identity) = identity {
        let key = ExceptionKey::identity(agent.cgroup, object::FILE, identity.dev, identity.ino);
        guardrails::approve(&mut decision, &key);
    }
    let built = kernel::guard_build_path(dentry_arg, vfsmount_arg);
    let (start, flags) = (built as u32 as usize, (built >> 32) as u32);
    let scratch = scratch()?;
    let path = scratch
        .walk
        .as_ptr()
        .wrapping_add(start & (maps::WALK_LEN - 1));
    Ok(decided(agent, hook_id, &decision, |event| {
        set_identity(event, identity);
        set_path(event, path, maps::WALK_LEN - start, flags);
    }))
}

/// The profile's decision on a file action; `None` for a write the profile
/// does not decide.
fn file_decision(
    agent: &Agent,
    hook_id: u32,
    dentry_arg: u64,
    vfsmount_arg: u64,
) -> Result<Option<Decision>, ReadError> {
    let op = file_op(hook_id);
    if op == FileOp::Write && agent.entry.flags & agent_flag::DECIDE_WRITES == 0 {
        return Ok(None);
    }
    let profile = agent.entry.profile;
    let mut rule = kernel::unpack(kernel::guard_name_rule(profile, dentry_arg))?
        .filter(|rule| file_rule_denies(rule.action, op));
    if rule.is_none() {
        let packed = kernel::guard_file_rule(profile, dentry_arg, vfsmount_arg);
        if packed & kernel::TOO_DEEP != 0 {
            // Left to the profile's default; counted and reported.
            count(Counter::WalkTooDeep);
        }
        rule = kernel::unpack(packed)?;
    }
    let rule = rule.map(|rule| RuleRef {
        rule_id: rule.rule_id,
        action: if file_rule_denies(rule.action, op) {
            action::DENY
        } else {
            action::ALLOW
        },
    });
    Ok(Some(Decision::new(
        agent,
        rule,
        agent_flag::FILES_DEFAULT_DENY,
    )))
}

/// `check_file` for a hook whose arguments are a directory's `struct path`
/// and a dentry in it.
fn check_in_dir(agent: &Agent, hook_id: u32, dir: Kptr, dentry: Kptr) -> Result<bool, ReadError> {
    let (vfsmount, _) = kernel::path_parts(dir)?;
    check_file(agent, hook_id, vfsmount, dentry)
}

/// Denies unlinking a protected file (path_unlink).
#[lsm(hook = "path_unlink")]
// Inlined into the wrapper the macro generates: as a separate global
// function taking a struct by value, 6.1\'s verifier rejects it.
#[inline(always)]
fn path_unlink(ctx: LsmContext) -> i32 {
    decide_hook(&ctx, lsm::PATH_UNLINK, |agent| {
        check_in_dir(agent, hook::UNLINK, ctx.arg(0), ctx.arg(1))
    })
}

/// Denies removing a protected directory or one inside a protected subtree.
#[lsm(hook = "path_rmdir")]
// Inlined into the wrapper the macro generates: as a separate global
// function taking a struct by value, 6.1\'s verifier rejects it.
#[inline(always)]
fn path_rmdir(ctx: LsmContext) -> i32 {
    decide_hook(&ctx, lsm::PATH_RMDIR, |agent| {
        check_in_dir(agent, hook::RMDIR, ctx.arg(0), ctx.arg(1))
    })
}

/// Denies renaming a protected file away, renaming another file over a
/// protected one, and renaming anything into a read-only directory.
/// Renaming a new name into a (merely) protected directory destroys
/// nothing, so it is allowed.
#[lsm(hook = "path_rename")]
// Inlined into the wrapper the macro generates: as a separate global
// function taking a struct by value, 6.1\'s verifier rejects it.
#[inline(always)]
fn path_rename(ctx: LsmContext) -> i32 {
    decide_hook(&ctx, lsm::PATH_RENAME, |agent| try_rename(&ctx, agent))
}

fn try_rename(ctx: &LsmContext, agent: &Agent) -> Result<bool, ReadError> {
    let old_dir: Kptr = ctx.arg(0);
    let old_dentry: Kptr = ctx.arg(1);
    let new_dir: Kptr = ctx.arg(2);
    let new_dentry: Kptr = ctx.arg(3);
    if check_in_dir(agent, hook::RENAME, old_dir, old_dentry)? {
        return Ok(true);
    }
    // Over an existing file: destroying it (which a read-only directory
    // denies too). Otherwise: a new entry in the directory.
    let new_side = if kernel::dentry_identity(new_dentry)?.is_some() {
        hook::RENAME
    } else {
        hook::RENAME_INTO
    };
    check_in_dir(agent, new_side, new_dir, new_dentry)
}

/// Denies truncate(2) of a protected file (and, before 6.2, ftruncate(2) and
/// open with O_TRUNC, which older kernels route here).
#[lsm(hook = "path_truncate")]
// Inlined into the wrapper the macro generates: as a separate global
// function taking a struct by value, 6.1\'s verifier rejects it.
#[inline(always)]
fn path_truncate(ctx: LsmContext) -> i32 {
    decide_hook(&ctx, lsm::PATH_TRUNCATE, |agent| {
        let (vfsmount, dentry) = kernel::path_parts(ctx.arg(0))?;
        check_file(agent, hook::TRUNCATE, vfsmount, dentry)
    })
}

/// Denies opening a non-empty protected file with O_TRUNC, and opening a
/// read-only file for write. Read-only opens, and O_TRUNC on an empty or new
/// file, destroy nothing and are not decisions on destruction.
#[lsm(hook = "file_open")]
// Inlined into the wrapper the macro generates: as a separate global
// function taking a struct by value, 6.1\'s verifier rejects it.
#[inline(always)]
fn file_open(ctx: LsmContext) -> i32 {
    decide_hook(&ctx, lsm::FILE_OPEN, |agent| try_file_open(&ctx, agent))
}

fn try_file_open(ctx: &LsmContext, agent: &Agent) -> Result<bool, ReadError> {
    let file: Kptr = ctx.arg(0);
    let flags = kernel::file_flags(file)?;
    if flags & O_ACCMODE == O_RDONLY {
        return Ok(false);
    }
    let (vfsmount, dentry) = kernel::path_parts(kernel::file_path(file))?;
    // Truncating a non-empty file destroys its content (denied wherever
    // writing is, too); any other open for write writes.
    let hook_id = if flags & O_TRUNC != 0 && kernel::inode_size(kernel::file_inode(file)?)? > 0 {
        hook::OPEN_TRUNC
    } else {
        hook::OPEN_WRITE
    };
    check_file(agent, hook_id, vfsmount, dentry)
}

/// Denies ftruncate(2) (and open with O_TRUNC) of a protected file on kernels
/// that have this hook (6.2+).
#[lsm(hook = "file_truncate")]
// Inlined into the wrapper the macro generates: as a separate global
// function taking a struct by value, 6.1\'s verifier rejects it.
#[inline(always)]
fn file_truncate(ctx: LsmContext) -> i32 {
    decide_hook(&ctx, lsm::FILE_TRUNCATE, |agent| {
        let (vfsmount, dentry) = kernel::path_parts(kernel::file_path(ctx.arg(0)))?;
        check_file(agent, hook::FILE_TRUNCATE, vfsmount, dentry)
    })
}

/// Denies creating a file (open with O_CREAT, mknod) in a read-only directory.
#[lsm(hook = "path_mknod")]
// Inlined into the wrapper the macro generates: as a separate global
// function taking a struct by value, 6.1\'s verifier rejects it.
#[inline(always)]
fn path_mknod(ctx: LsmContext) -> i32 {
    decide_hook(&ctx, lsm::PATH_MKNOD, |agent| {
        check_in_dir(agent, hook::CREATE, ctx.arg(0), ctx.arg(1))
    })
}

/// Denies creating a directory in a read-only directory.
#[lsm(hook = "path_mkdir")]
// Inlined into the wrapper the macro generates: as a separate global
// function taking a struct by value, 6.1\'s verifier rejects it.
#[inline(always)]
fn path_mkdir(ctx: LsmContext) -> i32 {
    decide_hook(&ctx, lsm::PATH_MKDIR, |agent| {
        check_in_dir(agent, hook::MKDIR, ctx.arg(0), ctx.arg(1))
    })
}

/// Denies creating a symlink in a read-only directory.
#[lsm(hook = "path_symlink")]
// Inlined into the wrapper the macro generates: as a separate global
// function taking a struct by value, 6.1\'s verifier rejects it.
#[inline(always)]
fn path_symlink(ctx: LsmContext) -> i32 {
    decide_hook(&ctx, lsm::PATH_SYMLINK, |agent| {
        check_in_dir(agent, hook::SYMLINK, ctx.arg(0), ctx.arg(1))
    })
}

/// Denies creating a hard link in a read-only directory, and a hard link to
/// a protected file where the rule that protects it does not reach (the
/// file's content would be open to truncation through the new name).
#[lsm(hook = "path_link")]
// Inlined into the wrapper the macro generates: as a separate global
// function taking a struct by value, 6.1\'s verifier rejects it.
#[inline(always)]
fn path_link(ctx: LsmContext) -> i32 {
    decide_hook(&ctx, lsm::PATH_LINK, |agent| try_link(&ctx, agent))
}

fn try_link(ctx: &LsmContext, agent: &Agent) -> Result<bool, ReadError> {
    let old: Kptr = ctx.arg(0);
    let new_dir: Kptr = ctx.arg(1);
    let new: Kptr = ctx.arg(2);
    if check_in_dir(agent, hook::LINK, new_dir, new)? {
        return Ok(true);
    }
    // A hard link stays within one mount: both names are in `new_dir`'s.
    let (vfsmount, _) = kernel::path_parts(new_dir)?;
    let (old_arg, new_arg, vfsmount_arg) = (
        kernel::as_scalar(old)?,
        kernel::as_scalar(new)?,
        kernel::as_scalar(vfsmount)?,
    );
    let Some(rule) = protecting_rule(agent.entry.profile, old_arg, vfsmount_arg)? else {
        return Ok(false);
    };
    if protecting_rule(agent.entry.profile, new_arg, vfsmount_arg)?
        .is_some_and(|reaches| reaches.rule_id == rule.rule_id)
    {
        return Ok(false);
    }
    let decision = Decision::new(
        agent,
        Some(RuleRef {
            rule_id: rule.rule_id,
            action: action::DENY,
        }),
        0,
    );
    file_decided(agent, hook::LINK_AWAY, decision, old, old_arg, vfsmount_arg)
}

/// The rule that keeps the file at `dentry` from being destroyed, if any:
/// a name rule, or the nearest rule by place.
fn protecting_rule(profile: u32, dentry: u64, vfsmount: u64) -> Result<Option<RuleRef>, ReadError> {
    let destroys = |rule: &RuleRef| file_rule_denies(rule.action, FileOp::Destroy);
    if let Some(rule) = kernel::unpack(kernel::guard_name_rule(profile, dentry))?.filter(destroys) {
        return Ok(Some(rule));
    }
    Ok(kernel::unpack(kernel::guard_file_rule(profile, dentry, vfsmount))?.filter(destroys))
}

// -------------------------------------------------------------- network ---

/// A destination read from a `struct sockaddr`.
struct Destination {
    family: u16,
    port: u16,
    /// IPv6, or IPv4-mapped IPv6.
    addr: [u8; 16],
}

/// Reads an AF_INET or AF_INET6 sockaddr (UAPI layouts). Other families are
/// not network destinations Guard decides on.
fn read_destination(sockaddr: Kptr, len: i32) -> Result<Option<Destination>, ReadError> {
    if sockaddr.is_null() || len < 2 {
        return Ok(None);
    }
    let family: u16 = kernel::read(sockaddr, 0)?;
    match family {
        AF_INET if len >= 8 => {
            // struct sockaddr_in: family, port (BE), address.
            let raw: [u8; 8] = kernel::read(sockaddr, 0)?;
            let mut addr = [0u8; 16];
            addr[10] = 0xff;
            addr[11] = 0xff;
            addr[12..16].copy_from_slice(&raw[4..8]);
            Ok(Some(Destination {
                family,
                port: u16::from_be_bytes([raw[2], raw[3]]),
                addr,
            }))
        }
        AF_INET6 if len >= 24 => {
            // struct sockaddr_in6: family, port (BE), flowinfo, address.
            let raw: [u8; 24] = kernel::read(sockaddr, 0)?;
            let mut addr = [0u8; 16];
            addr.copy_from_slice(&raw[8..24]);
            Ok(Some(Destination {
                family,
                port: u16::from_be_bytes([raw[2], raw[3]]),
                addr,
            }))
        }
        _ => Ok(None),
    }
}

fn socket_protocol(sock: Kptr) -> Result<u16, ReadError> {
    Ok(match kernel::socket_type(sock)? {
        SOCK_STREAM => protocol::TCP,
        SOCK_DGRAM => protocol::UDP,
        _ => protocol::ANY,
    })
}

/// The rule that decides on a destination: a hostname rule on the exact
/// address (the most specific there is), else the first rule of the longest
/// matching prefix (with the rules it inherits from shorter prefixes) whose
/// port range and protocol match.
fn find_net_rule(agent: &Agent, dest: &Destination, proto: u16) -> Option<RuleRef> {
    let key = NetKey {
        profile: agent.entry.profile.to_be_bytes(),
        addr: dest.addr,
    };
    if agent.entry.flags & agent_flag::HOST_RULES != 0 {
        // SAFETY: the value is a plain Copy struct, read at once.
        if let Some(rule) =
            unsafe { HOST_ADDRS.get(&key) }.and_then(|set| first_match(set, dest, proto))
        {
            return Some(rule);
        }
    }
    let key = aya_ebpf::maps::lpm_trie::Key::new(32 + 128, key);
    first_match(NET_RULES.get(&key)?, dest, proto)
}

/// The first rule of `set` whose port range and protocol match.
fn first_match(set: &NetRuleSet, dest: &Destination, proto: u16) -> Option<RuleRef> {
    for rule in set.rules.iter().take(set.len as usize) {
        if dest.port >= rule.port_lo
            && dest.port <= rule.port_hi
            && (rule.protocol == protocol::ANY || rule.protocol == proto)
        {
            return Some(RuleRef {
                rule_id: rule.rule_id,
                action: rule.action as u32,
            });
        }
    }
    None
}

#[inline(always)]
fn check_destination(
    agent: &Agent,
    hook_id: u32,
    sock: Kptr,
    sockaddr: Kptr,
    len: i32,
) -> Result<bool, ReadError> {
    let Some(dest) = read_destination(sockaddr, len)? else {
        return Ok(false);
    };
    let proto = socket_protocol(sock)?;
    let mut decision = Decision::new(
        agent,
        find_net_rule(agent, &dest, proto),
        agent_flag::NETWORK_DEFAULT_DENY,
    );
    guardrails::approve(
        &mut decision,
        &ExceptionKey::destination(agent.cgroup, dest.addr, dest.port),
    );
    guardrails::spend_on_destination(agent, &mut decision, dest.addr);
    Ok(decided(agent, hook_id, &decision, |event| {
        event.family = dest.family;
        event.port = dest.port;
        event.protocol = proto;
        // Two word stores rather than a 16-byte copy (see `record`).
        let [a, b]: [u64; 2] = unsafe { core::mem::transmute(dest.addr) };
        let addr = event.addr.as_mut_ptr().cast::<u64>();
        // SAFETY: `addr` is 8-byte aligned inside the reserved record.
        unsafe {
            core::ptr::write_volatile(addr, a);
            core::ptr::write_volatile(addr.add(1), b);
        }
    }))
}

/// Denies connect(2) to a denied destination (TCP, and UDP connect).
#[lsm(hook = "socket_connect")]
// Inlined into the wrapper the macro generates: as a separate global
// function taking a struct by value, 6.1\'s verifier rejects it.
#[inline(always)]
fn socket_connect(ctx: LsmContext) -> i32 {
    decide_hook(&ctx, lsm::SOCKET_CONNECT, |agent| {
        check_destination(agent, hook::CONNECT, ctx.arg(0), ctx.arg(1), ctx.arg(2))
    })
}

/// Denies sendto(2)/sendmsg(2) with an explicit denied destination, so an
/// unconnected UDP socket is not a way around `socket_connect`. Sends without
/// a destination are not decisions.
#[lsm(hook = "socket_sendmsg")]
// Inlined into the wrapper the macro generates: as a separate global
// function taking a struct by value, 6.1\'s verifier rejects it.
#[inline(always)]
fn socket_sendmsg(ctx: LsmContext) -> i32 {
    decide_hook(&ctx, lsm::SOCKET_SENDMSG, |agent| {
        let (name, len) = kernel::msghdr_name(ctx.arg(1))?;
        check_destination(agent, hook::SENDMSG, ctx.arg(0), name, len)
    })
}

// ------------------------------------------------------ self-protection --
//
// Actions no agent may take, whatever its profile and in every mode: each
// would switch Guard off, step out of its cgroup, or change the kernel
// beneath every rule. Denied and recorded with rule `SELF_PROTECTION`.

/// `decide_hook` for a self-protection hook: deny and record when
/// `applies` says the action is one of those.
#[inline(always)]
fn protect(
    ctx: &LsmContext,
    lsm_hook: LsmHook,
    hook_id: u32,
    applies: impl FnOnce() -> Result<bool, ReadError>,
    fill: impl FnOnce(&mut Event),
) -> i32 {
    decide_hook(ctx, lsm_hook, |agent| {
        Ok(applies()? && decided(agent, hook_id, &Decision::SELF_PROTECTION, fill))
    })
}

/// Records a process target (signal, ptrace) as its pid, in `ino`.
fn set_target_pid(event: &mut Event, task: Kptr) {
    event.ino = kernel::task_tgid(task).unwrap_or(0) as u64;
}

/// Records a path target (mounts, kernel files).
fn set_target_path(event: &mut Event, path: Kptr) {
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

/// Denies every bpf(2) command: loading programs, reading or writing maps
/// (Guard's policy), detaching links.
#[lsm(hook = "bpf")]
#[inline(always)]
fn bpf(ctx: LsmContext) -> i32 {
    protect(&ctx, lsm::BPF, hook::BPF, || Ok(true), |_| {})
}

/// Denies a signal to any process outside Guard's cgroup (guardd, the
/// collector, the rest of the host). Signal 0 only probes and is allowed.
#[lsm(hook = "task_kill")]
#[inline(always)]
fn task_kill(ctx: LsmContext) -> i32 {
    let target: Kptr = ctx.arg(0);
    let signal: i32 = ctx.arg(2);
    protect(
        &ctx,
        lsm::TASK_KILL,
        hook::SIGNAL,
        || Ok(signal != 0 && !kernel::task_in_cgroup(target, guard_root())?),
        |event| set_target_pid(event, target),
    )
}

/// `PTRACE_MODE_ATTACH`: ptrace attach, /proc/PID/mem, process_vm_writev,
/// pidfd_getfd. Read access (`ps`, /proc/PID/stat) stays allowed.
const PTRACE_MODE_ATTACH: u32 = 0x02;

/// Denies attaching to (or writing the memory of) a process outside Guard's
/// cgroup.
#[lsm(hook = "ptrace_access_check")]
#[inline(always)]
fn ptrace_access_check(ctx: LsmContext) -> i32 {
    let target: Kptr = ctx.arg(0);
    let mode: u32 = ctx.arg(1);
    protect(
        &ctx,
        lsm::PTRACE_ACCESS_CHECK,
        hook::PTRACE,
        || Ok(mode & PTRACE_MODE_ATTACH != 0 && !kernel::task_in_cgroup(target, guard_root())?),
        |event| set_target_pid(event, target),
    )
}

/// Denies mount(2) (new mounts, binds, remounts, moves).
#[lsm(hook = "sb_mount")]
#[inline(always)]
fn sb_mount(ctx: LsmContext) -> i32 {
    let at: Kptr = ctx.arg(1);
    protect(
        &ctx,
        lsm::SB_MOUNT,
        hook::MOUNT,
        || Ok(true),
        |event| set_target_path(event, at),
    )
}

/// Denies umount(2).
#[lsm(hook = "sb_umount")]
#[inline(always)]
fn sb_umount(ctx: LsmContext) -> i32 {
    protect(&ctx, lsm::SB_UMOUNT, hook::UMOUNT, || Ok(true), |_| {})
}

/// Denies reconfiguring a mounted filesystem (fsconfig, remount).
#[lsm(hook = "sb_remount")]
#[inline(always)]
fn sb_remount(ctx: LsmContext) -> i32 {
    protect(&ctx, lsm::SB_REMOUNT, hook::REMOUNT, || Ok(true), |_| {})
}

/// Denies move_mount(2), which attaches a mount made with fsmount(2).
#[lsm(hook = "move_mount")]
#[inline(always)]
fn move_mount(ctx: LsmContext) -> i32 {
    let to: Kptr = ctx.arg(1);
    protect(
        &ctx,
        lsm::MOVE_MOUNT,
        hook::MOVE_MOUNT,
        || Ok(true),
        |event| set_target_path(event, to),
    )
}

/// Denies the kernel reading a file on an agent's behalf: finit_module(2),
/// kexec_file_load(2), firmware.
#[lsm(hook = "kernel_read_file")]
#[inline(always)]
fn kernel_read_file(ctx: LsmContext) -> i32 {
    let file: Kptr = ctx.arg(0);
    protect(
        &ctx,
        lsm::KERNEL_READ_FILE,
        hook::KERNEL_READ_FILE,
        || Ok(true),
        |event| {
            if !file.is_null() {
                set_target_path(event, kernel::file_path(file));
            }
        },
    )
}

/// Denies init_module(2) and kexec_load(2) from memory.
#[lsm(hook = "kernel_load_data")]
#[inline(always)]
fn kernel_load_data(ctx: LsmContext) -> i32 {
    protect(
        &ctx,
        lsm::KERNEL_LOAD_DATA,
        hook::KERNEL_LOAD_DATA,
        || Ok(true),
        |_| {},
    )
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Denies clone3(2) with CLONE_INTO_CGROUP: a child born in another cgroup
/// would not be an agent.
#[lsm(hook = "task_alloc")]
#[inline(always)]
fn task_alloc(ctx: LsmContext) -> i32 {
    let flags: u64 = ctx.arg(1);
    protect(
        &ctx,
        lsm::TASK_ALLOC,
        hook::CLONE_INTO_CGROUP,
        || Ok(flags & CLONE_INTO_CGROUP != 0),
        |_| {},
    )
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// `bpf_d_path` and the probe-read helpers are GPL-only.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
