//! Exec hooks: executing a program by identity, path or content, and
//! mapping a denied program executable.

use aya_ebpf::{helpers::generated, macros::lsm, programs::LsmContext};
use guard_common::{
    DigestKey, EXEC_PATH_KEY_LEN, ExceptionKey, HASH_ALGO_SHA256, action, agent_flag, exec_flag,
    hook, lsm, object,
};

use crate::{
    agent::{Agent, current_agent},
    decision::{
        Attach, Decision, Global, decide_hook, decided, per_cgroup_too, scratch, set_identity,
        set_path, set_target_path,
    },
    guardrails,
    kernel::{self, Identity, Kptr, ReadError, Typed},
    maps::{self, EXEC_DIGESTS, EXEC_IDENTITY, EXEC_PATHS, PathScratch},
};

/// The key of an approved ticket for executing the program `identity`.
fn program_key(agent: &Agent, identity: Identity) -> ExceptionKey {
    ExceptionKey::identity(agent.cgroup, object::PROGRAM, identity.dev, identity.ino)
}

/// Denies executing a file by its identity (device + inode: catches hard
/// links, symlinks and copies' originals) or by path rules on its resolved
/// path (`bpf_d_path`). Runs for the script and again for its interpreter, so
/// both a denied script and a denied interpreter are refused.
#[inline(always)]
fn exec<A: Attach>(ctx: &LsmContext) -> i32 {
    decide_hook::<A>(ctx, lsm::BPRM_CHECK_SECURITY, |agent| try_exec(ctx, agent))
}
per_cgroup_too!(
    "bprm_check_security",
    bprm_check_security,
    cg_bprm_check_security,
    exec
);

// Inlined: each of the hook's two programs has its own copy, as when it
// had one caller (an outlined copy adds a stack frame that 6.1's 512-byte
// limit on a call chain's stack does not leave room for).
#[inline(always)]
fn try_exec(ctx: &LsmContext, agent: &Agent) -> Result<bool, ReadError> {
    let bprm: Kptr = ctx.arg(0);
    // A direct load, not bpf_probe_read: bpf_d_path needs the kernel's typed
    // pointer to `file->f_path`, which only a BTF-checked load yields.
    // SAFETY: the verifier checks this load against the kernel's BTF.
    let file: Kptr =
        unsafe { core::ptr::read_volatile(bprm.add(kernel::bprm_file_offset()) as *const Kptr) };
    let inode = kernel::file_inode(file);
    let identity = kernel::inode_identity::<Typed>(inode)?;
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
    decide_hook::<Global>(&ctx, lsm::EXEC_CONTENT, |agent| {
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
    let identity = kernel::inode_identity::<Typed>(kernel::file_inode(file))?;
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
#[inline(always)]
fn mmap<A: Attach>(ctx: &LsmContext) -> i32 {
    decide_hook::<A>(ctx, lsm::MMAP_FILE, |agent| try_mmap_file(ctx, agent))
}
per_cgroup_too!("mmap_file", mmap_file, cg_mmap_file, mmap);

// Inlined: each of the hook's two programs has its own copy, as when it
// had one caller (an outlined copy adds a stack frame that 6.1's 512-byte
// limit on a call chain's stack does not leave room for).
#[inline(always)]
fn try_mmap_file(ctx: &LsmContext, agent: &Agent) -> Result<bool, ReadError> {
    let file: Kptr = ctx.arg(0);
    let prot: u64 = ctx.arg(2);
    if file.is_null() || prot & PROT_EXEC == 0 {
        return Ok(false);
    }
    let identity = kernel::inode_identity::<Typed>(kernel::file_inode(file))?;
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
