//! File hooks: destroying protected files, writing or creating in
//! read-only places, and reading Guard's secrets.

use aya_ebpf::{macros::lsm, programs::LsmContext};
use guard_common::{
    Counter, ExceptionKey, RuleRef, SecretKey, action, agent_flag, budget, hook, lsm, object,
};

use crate::{
    agent::{Agent, GUARD_FAULT_HOOK_ERRORS},
    decision::{
        Attach, Decision, Global, count, decide_hook, decided, per_cgroup_too, scratch,
        set_identity, set_path,
    },
    dir_cache, guardrails,
    kernel::{self, Kptr, Probe, ReadError, Typed},
    maps,
};

const O_ACCMODE: u32 = 0o3;
const O_RDONLY: u32 = 0;
const O_TRUNC: u32 = 0o1000;

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

/// Decides on the action of `hook_id` on the file at `dentry` (in mount
/// `vfsmount`, both BTF-typed; for a creation, the new, still negative
/// dentry). A name rule that denies `op`
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
    let own_name = changes_entry(hook_id) && kernel::is_own_name(dentry)?;
    // A creation's dentry is new: not a kernel interface's file (opening
    // one with O_CREAT passes here too; the open for write that follows is
    // the decision) nor a block device.
    let off_limits = own_name
        || (hook_id != hook::CREATE && kernel::off_limits(dentry, hook_id == hook::OPEN_WRITE)?);
    let mut decision = if off_limits {
        Decision::SELF_PROTECTION
    } else {
        match file_decision(agent, hook_id, dentry, vfsmount)? {
            Some(decision) => decision,
            None => return Ok(false),
        }
    };
    if file_op(hook_id) == FileOp::Destroy {
        guardrails::spend(agent, &mut decision, budget::DESTROY);
    }
    file_decided(agent, hook_id, decision, dentry, vfsmount)
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

/// Applies an approved ticket for the file at `dentry` (in mount
/// `vfsmount`) to `decision`, then records it (with the file's path) and
/// returns whether the action is denied.
#[inline(always)]
fn file_decided(
    agent: &Agent,
    hook_id: u32,
    mut decision: Decision,
    dentry: Kptr,
    vfsmount: Kptr,
) -> Result<bool, ReadError> {
    if !decision.recorded(agent) {
        return Ok(decision.denies());
    }
    let (dentry_arg, vfsmount_arg) = (kernel::as_scalar(dentry)?, kernel::as_scalar(vfsmount)?);
    let identity = kernel::dentry_identity::<Probe>(dentry).unwrap_or(None);
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
    dentry: Kptr,
    vfsmount: Kptr,
) -> Result<Option<Decision>, ReadError> {
    let op = file_op(hook_id);
    if op == FileOp::Write && agent.entry.flags & agent_flag::DECIDE_WRITES == 0 {
        return Ok(None);
    }
    let profile = agent.entry.profile;
    let mut rule = None;
    if agent.entry.flags & agent_flag::NAME_RULES != 0 {
        rule = kernel::unpack(kernel::guard_name_rule(profile, kernel::as_scalar(dentry)?))?
            .filter(|rule| file_rule_denies(rule.action, op));
    }
    if rule.is_none() {
        let packed = dir_cache::file_rule(profile, agent.generation, dentry, vfsmount);
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

/// `check_file` for the file at a `struct path` (a BTF-typed pointer).
#[inline(always)]
fn check_path(agent: &Agent, hook_id: u32, path: Kptr) -> Result<bool, ReadError> {
    check_file(
        agent,
        hook_id,
        kernel::typed_path_mnt(path),
        kernel::typed_path_dentry(path),
    )
}

/// `check_file` for a hook whose arguments are a directory's `struct path`
/// and a dentry in it.
fn check_in_dir(agent: &Agent, hook_id: u32, dir: Kptr, dentry: Kptr) -> Result<bool, ReadError> {
    check_file(agent, hook_id, kernel::typed_path_mnt(dir), dentry)
}

/// Denies unlinking a protected file (path_unlink).
#[inline(always)]
fn unlink<A: Attach>(ctx: &LsmContext) -> i32 {
    decide_hook::<A>(ctx, lsm::PATH_UNLINK, |agent| {
        check_in_dir(agent, hook::UNLINK, ctx.arg(0), ctx.arg(1))
    })
}
per_cgroup_too!("path_unlink", path_unlink, cg_path_unlink, unlink);

/// Denies removing a protected directory or one inside a protected subtree.
#[lsm(hook = "path_rmdir")]
// Inlined into the wrapper the macro generates: as a separate global
// function taking a struct by value, 6.1\'s verifier rejects it.
#[inline(always)]
fn path_rmdir(ctx: LsmContext) -> i32 {
    decide_hook::<Global>(&ctx, lsm::PATH_RMDIR, |agent| {
        check_in_dir(agent, hook::RMDIR, ctx.arg(0), ctx.arg(1))
    })
}

/// Denies renaming a protected file away, renaming another file over a
/// protected one, and renaming anything into a read-only directory.
/// Renaming a new name into a (merely) protected directory destroys
/// nothing, so it is allowed.
#[inline(always)]
fn rename<A: Attach>(ctx: &LsmContext) -> i32 {
    decide_hook::<A>(ctx, lsm::PATH_RENAME, |agent| try_rename(ctx, agent))
}
per_cgroup_too!("path_rename", path_rename, cg_path_rename, rename);

// Inlined: each of the hook's two programs has its own copy, as when it
// had one caller (an outlined copy adds a stack frame that 6.1's 512-byte
// limit on a call chain's stack does not leave room for).
#[inline(always)]
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
    let new_side = if kernel::dentry_identity::<Probe>(new_dentry)?.is_some() {
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
    decide_hook::<Global>(&ctx, lsm::PATH_TRUNCATE, |agent| {
        check_path(agent, hook::TRUNCATE, ctx.arg(0))
    })
}

/// Denies opening a non-empty protected file with O_TRUNC, and opening a
/// read-only file for write. Read-only opens, and O_TRUNC on an empty or new
/// file, destroy nothing and are not decisions on destruction.
#[inline(always)]
fn open<A: Attach>(ctx: &LsmContext) -> i32 {
    decide_hook::<A>(ctx, lsm::FILE_OPEN, |agent| try_file_open(ctx, agent))
}
per_cgroup_too!("file_open", file_open, cg_file_open, open);

// Inlined: each of the hook's two programs has its own copy, as when it
// had one caller (an outlined copy adds a stack frame that 6.1's 512-byte
// limit on a call chain's stack does not leave room for).
#[inline(always)]
fn try_file_open(ctx: &LsmContext, agent: &Agent) -> Result<bool, ReadError> {
    let file: Kptr = ctx.arg(0);
    let flags = kernel::file_flags(file);
    if flags & O_ACCMODE == O_RDONLY {
        return read_secret(agent, file);
    }
    // Truncating a non-empty file destroys its content (denied wherever
    // writing is, too); any other open for write writes.
    let hook_id = if flags & O_TRUNC != 0 && kernel::inode_size(kernel::file_inode(file)) > 0 {
        hook::OPEN_TRUNC
    } else {
        hook::OPEN_WRITE
    };
    check_path(agent, hook_id, kernel::file_path(file))
}

/// An open to read is a decision only on one of Guard's secrets, which no
/// agent may read (opens for write are denied by their read-only rules).
// Inlined: each of the hook's two programs has its own copy, as when it
// had one caller (an outlined copy adds a stack frame that 6.1's 512-byte
// limit on a call chain's stack does not leave room for).
#[inline(always)]
fn read_secret(agent: &Agent, file: Kptr) -> Result<bool, ReadError> {
    let identity = kernel::inode_identity::<Typed>(kernel::file_inode(file))?;
    let key = SecretKey {
        ino: identity.ino,
        dev: identity.dev,
        _pad: 0,
    };
    // SAFETY: only presence is read.
    if unsafe { maps::SECRETS.get(&key) }.is_none() {
        return Ok(false);
    }
    let path = kernel::file_path(file);
    file_decided(
        agent,
        hook::OPEN_READ,
        Decision::SELF_PROTECTION,
        kernel::typed_path_dentry(path),
        kernel::typed_path_mnt(path),
    )
}

/// Denies ftruncate(2) (and open with O_TRUNC) of a protected file on kernels
/// that have this hook (6.2+).
#[lsm(hook = "file_truncate")]
// Inlined into the wrapper the macro generates: as a separate global
// function taking a struct by value, 6.1\'s verifier rejects it.
#[inline(always)]
fn file_truncate(ctx: LsmContext) -> i32 {
    decide_hook::<Global>(&ctx, lsm::FILE_TRUNCATE, |agent| {
        check_path(agent, hook::FILE_TRUNCATE, kernel::file_path(ctx.arg(0)))
    })
}

/// Denies creating a file (open with O_CREAT, mknod) in a read-only directory.
#[inline(always)]
fn mknod<A: Attach>(ctx: &LsmContext) -> i32 {
    decide_hook::<A>(ctx, lsm::PATH_MKNOD, |agent| {
        check_in_dir(agent, hook::CREATE, ctx.arg(0), ctx.arg(1))
    })
}
per_cgroup_too!("path_mknod", path_mknod, cg_path_mknod, mknod);

/// Denies creating a directory in a read-only directory.
#[inline(always)]
fn mkdir<A: Attach>(ctx: &LsmContext) -> i32 {
    decide_hook::<A>(ctx, lsm::PATH_MKDIR, |agent| {
        check_in_dir(agent, hook::MKDIR, ctx.arg(0), ctx.arg(1))
    })
}
per_cgroup_too!("path_mkdir", path_mkdir, cg_path_mkdir, mkdir);

/// Denies creating a symlink in a read-only directory.
#[lsm(hook = "path_symlink")]
// Inlined into the wrapper the macro generates: as a separate global
// function taking a struct by value, 6.1\'s verifier rejects it.
#[inline(always)]
fn path_symlink(ctx: LsmContext) -> i32 {
    decide_hook::<Global>(&ctx, lsm::PATH_SYMLINK, |agent| {
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
    decide_hook::<Global>(&ctx, lsm::PATH_LINK, |agent| try_link(&ctx, agent))
}

fn try_link(ctx: &LsmContext, agent: &Agent) -> Result<bool, ReadError> {
    let old: Kptr = ctx.arg(0);
    let new_dir: Kptr = ctx.arg(1);
    let new: Kptr = ctx.arg(2);
    if check_in_dir(agent, hook::LINK, new_dir, new)? {
        return Ok(true);
    }
    // A hard link stays within one mount: both names are in `new_dir`'s.
    let vfsmount = kernel::typed_path_mnt(new_dir);
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
    file_decided(agent, hook::LINK_AWAY, decision, old, vfsmount)
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
