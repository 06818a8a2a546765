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

mod kernel;
mod maps;

use aya_ebpf::{
    bindings::BPF_RB_NO_WAKEUP,
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_uid_gid, generated},
    macros::lsm,
    programs::LsmContext,
};
use guard_common::{
    AgentEntry, Counter, EVENT_PATH_LEN, EXEC_PATH_KEY_LEN, Event, LsmHook, NO_RULE, NetKey,
    RuleRef, action, agent_flag, hook, lsm, mode, protocol, verdict,
};
use kernel::{Identity, Kptr, Protection, ReadError};
use maps::{
    AGENTS, COUNTERS, EVENTS, EXEC_IDENTITY, EXEC_PATHS, NET_RULES, PATH_SCRATCH, PathScratch,
};

const EPERM: i32 = 1;
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

/// The calling process's agent: its agent cgroup id and entry.
struct Agent {
    cgroup: u64,
    entry: AgentEntry,
}

/// Returns the agent the current process belongs to, if any. A process is an
/// agent when it runs in a child of Guard's root cgroup or anywhere below one;
/// the cgroup at the level below Guard's root names the agent.
#[inline(always)]
fn current_agent() -> Option<Agent> {
    // SAFETY: plain reads of statics set at load time.
    let root = unsafe { core::ptr::read_volatile(&GUARD_ROOT_CGROUP_ID) };
    let level = unsafe { core::ptr::read_volatile(&GUARD_ROOT_CGROUP_LEVEL) } as i32;
    // SAFETY: helper calls without pointer arguments.
    if root == 0 || unsafe { generated::bpf_get_current_ancestor_cgroup_id(level) } != root {
        return None;
    }
    let cgroup = unsafe { generated::bpf_get_current_ancestor_cgroup_id(level + 1) };
    // SAFETY: the value is a plain Copy struct.
    let entry = unsafe { AGENTS.get(&cgroup) }.copied()?;
    Some(Agent { cgroup, entry })
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
fn verdict(result: Result<bool, ReadError>) -> i32 {
    match result {
        Ok(true) => deny_return(),
        Ok(false) => 0,
        Err(_) => {
            // Could not read what the decision needs: allow (fail open), counted.
            count(Counter::HookErrors);
            0
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
    // SAFETY: per-CPU value, used by one program at a time on this CPU.
    PATH_SCRATCH
        .get_ptr_mut(0)
        .map(|p| unsafe { &mut *p })
        .ok_or(-1)
}

/// A decision about one action.
struct Decision {
    verdict: u32,
    rule_id: u32,
}

impl Decision {
    fn new(agent: &Agent, rule: Option<RuleRef>) -> Self {
        match rule {
            Some(rule) if rule.action == action::DENY => Decision {
                verdict: if agent.entry.mode == mode::MONITOR {
                    verdict::WOULD_DENY
                } else {
                    verdict::DENY
                },
                rule_id: rule.rule_id,
            },
            Some(rule) => Decision {
                verdict: verdict::ALLOW,
                rule_id: rule.rule_id,
            },
            None => Decision {
                verdict: verdict::ALLOW,
                rule_id: NO_RULE,
            },
        }
    }

    fn recorded(&self, agent: &Agent) -> bool {
        self.verdict != verdict::ALLOW || agent.entry.flags & agent_flag::RECORD_ALLOWED != 0
    }

    fn denies(&self) -> bool {
        self.verdict == verdict::DENY
    }
}

/// Writes a record of `decision`; `fill` adds the target fields. Allowed
/// decisions are written without waking the reader (it drains on a timer);
/// denials wake it.
#[inline(always)]
fn record(agent: &Agent, hook_id: u32, decision: &Decision, fill: impl FnOnce(&mut Event)) {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count(Counter::EventsLost);
        return;
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
        put(addr_of_mut!((*event).agent_cgroup), agent.cgroup);
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
        put(addr_of_mut!((*event).flags), 0);
        put(addr_of_mut!((*event)._pad), 0);
        let addr = addr_of_mut!((*event).addr).cast::<u64>();
        put(addr, 0);
        put(addr.add(1), 0);
        generated::bpf_get_current_comm(addr_of_mut!((*event).comm).cast(), 16);
        fill(&mut *event);
    }
    let flags = if decision.verdict == verdict::ALLOW {
        BPF_RB_NO_WAKEUP as u64
    } else {
        0
    };
    entry.submit(flags);
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
    let previous: i32 = ctx.arg(lsm_hook.args);
    if previous != 0 {
        return deny_return();
    }
    match current_agent() {
        Some(agent) => verdict(decide(&agent)),
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
    let identity = kernel::inode_identity(kernel::file_inode(file)?)?;
    let scratch = scratch()?;

    // SAFETY: the value is a plain Copy struct, copied out at once.
    let mut rule = unsafe { EXEC_IDENTITY.get(&identity.key(agent.entry.profile)) }.copied();
    // SAFETY: the path pointer is the file's typed f_path; the buffer is a map value of D_PATH_LEN bytes.
    let path_len = unsafe {
        generated::bpf_d_path(
            kernel::file_path(file) as *mut _,
            scratch.d_path.as_mut_ptr() as *mut _,
            maps::D_PATH_LEN as u32,
        )
    };
    // bpf_d_path returns the length including the NUL.
    let path_len = if path_len > 0 {
        path_len as usize - 1
    } else {
        0
    };
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

    let decision = Decision::new(agent, rule);
    if decision.recorded(agent) {
        record(agent, hook::EXEC, &decision, |event| {
            set_identity(event, Some(identity));
            set_path(event, scratch.d_path.as_ptr(), path_len, 0);
        });
    }
    Ok(decision.denies())
}

// ---------------------------------------------------------------- files ---

/// Decides on destroying the file at `dentry` (in mount `vfsmount`): denied
/// when its name is protected, or it or any ancestor directory is protected.
fn check_destroy(
    agent: &Agent,
    hook_id: u32,
    vfsmount: Kptr,
    dentry: Kptr,
) -> Result<bool, ReadError> {
    let scratch = scratch()?;
    let profile = agent.entry.profile;
    let mut rule = kernel::find_protected_name(profile, dentry, scratch)?;
    if rule.is_none() {
        rule = match kernel::find_protected(profile, dentry, vfsmount)? {
            Protection::Protected(rule) => Some(rule),
            Protection::Clear => None,
            Protection::TooDeep => {
                // Fails open like other internal limits; counted and reported.
                count(Counter::WalkTooDeep);
                None
            }
        };
    }
    let decision = Decision::new(agent, rule);
    if decision.recorded(agent) {
        let identity = kernel::dentry_identity(dentry).unwrap_or(None);
        let built = kernel::build_path(dentry, vfsmount, scratch);
        let path = scratch
            .walk
            .as_ptr()
            .wrapping_add(built.start & (maps::WALK_LEN - 1));
        record(agent, hook_id, &decision, |event| {
            set_identity(event, identity);
            set_path(event, path, maps::WALK_LEN - built.start, built.flags);
        });
    }
    Ok(decision.denies())
}

/// Denies unlinking a protected file (path_unlink).
#[lsm(hook = "path_unlink")]
// Inlined into the wrapper the macro generates: as a separate global
// function taking a struct by value, 6.1\'s verifier rejects it.
#[inline(always)]
fn path_unlink(ctx: LsmContext) -> i32 {
    decide_hook(&ctx, lsm::PATH_UNLINK, |agent| {
        let (vfsmount, _) = kernel::path_parts(ctx.arg(0))?;
        check_destroy(agent, hook::UNLINK, vfsmount, ctx.arg(1))
    })
}

/// Denies removing a protected directory or one inside a protected subtree.
#[lsm(hook = "path_rmdir")]
// Inlined into the wrapper the macro generates: as a separate global
// function taking a struct by value, 6.1\'s verifier rejects it.
#[inline(always)]
fn path_rmdir(ctx: LsmContext) -> i32 {
    decide_hook(&ctx, lsm::PATH_RMDIR, |agent| {
        let (vfsmount, _) = kernel::path_parts(ctx.arg(0))?;
        check_destroy(agent, hook::RMDIR, vfsmount, ctx.arg(1))
    })
}

/// Denies renaming a protected file away and renaming another file over a
/// protected one. Renaming a new name *into* a protected directory creates
/// and destroys nothing, so it is allowed.
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
    let (old_mnt, _) = kernel::path_parts(old_dir)?;
    if check_destroy(agent, hook::RENAME, old_mnt, old_dentry)? {
        return Ok(true);
    }
    if kernel::dentry_identity(new_dentry)?.is_none() {
        return Ok(false);
    }
    let (new_mnt, _) = kernel::path_parts(new_dir)?;
    check_destroy(agent, hook::RENAME, new_mnt, new_dentry)
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
        check_destroy(agent, hook::TRUNCATE, vfsmount, dentry)
    })
}

/// Denies opening a non-empty protected file with O_TRUNC. Opens without
/// O_TRUNC, and O_TRUNC on an empty or new file, destroy nothing and are not
/// decisions.
#[lsm(hook = "file_open")]
// Inlined into the wrapper the macro generates: as a separate global
// function taking a struct by value, 6.1\'s verifier rejects it.
#[inline(always)]
fn file_open(ctx: LsmContext) -> i32 {
    decide_hook(&ctx, lsm::FILE_OPEN, |agent| try_file_open(&ctx, agent))
}

fn try_file_open(ctx: &LsmContext, agent: &Agent) -> Result<bool, ReadError> {
    let file: Kptr = ctx.arg(0);
    if kernel::file_flags(file)? & O_TRUNC == 0
        || kernel::inode_size(kernel::file_inode(file)?)? <= 0
    {
        return Ok(false);
    }
    let (vfsmount, dentry) = kernel::path_parts(kernel::file_path(file))?;
    check_destroy(agent, hook::OPEN_TRUNC, vfsmount, dentry)
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
        check_destroy(agent, hook::FILE_TRUNCATE, vfsmount, dentry)
    })
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

/// First rule of the longest matching prefix (with the rules it inherits from
/// shorter prefixes) whose port range and protocol match.
fn find_net_rule(profile: u32, dest: &Destination, proto: u16) -> Option<RuleRef> {
    let key = aya_ebpf::maps::lpm_trie::Key::new(
        32 + 128,
        NetKey {
            profile: profile.to_be_bytes(),
            addr: dest.addr,
        },
    );
    let set = NET_RULES.get(&key)?;
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
    let decision = Decision::new(agent, find_net_rule(agent.entry.profile, &dest, proto));
    if decision.recorded(agent) {
        record(agent, hook_id, &decision, |event| {
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
        });
    }
    Ok(decision.denies())
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// `bpf_d_path` and the probe-read helpers are GPL-only.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
