//! The walk's result for each directory agents act in, kept on the
//! directory's inode, so that a decision on a file looks up the file and
//! its directory instead of walking every ancestor.
//!
//! Inode storage is freed with its inode, so a kept result never outlives
//! the directory it was found for. It holds while nothing it depends on
//! has changed: the generation in force and the agent's profile, the mount
//! the directory was reached through, and the tree above it. Every rename
//! on the host (`d_move`, the only way a dentry changes parent) moves the
//! sequence of the kernel's `rename_lock`, and every mount, unmount or move
//! that of `mount_lock`; a result kept under other sequence numbers is
//! walked again. Kept results are never changed in place, where a reader on
//! another CPU could see half of one: a stale one is deleted and a whole
//! new one made.

use crate::{
    kernel::{self, FAILED, Kptr, TOO_DEEP},
    maps::{DIR_RULES, KeptRule},
};

/// Kernel addresses of `rename_lock` and `mount_lock` (set by the loader
/// from `/proc/kallsyms`; 0 when unknown, which turns the cache off). Each
/// is a `seqlock_t`, whose sequence number is its first `u32`.
#[unsafe(no_mangle)]
static GUARD_RENAME_LOCK: u64 = 0;
#[unsafe(no_mangle)]
static GUARD_MOUNT_LOCK: u64 = 0;

/// The two sequence numbers, or `None` when either is unknown or a change
/// is under way (odd).
#[inline(always)]
fn sequences() -> Option<(u32, u32)> {
    // SAFETY: plain reads of statics set at load time.
    let (renames, mounts) = unsafe {
        (
            core::ptr::read_volatile(&GUARD_RENAME_LOCK),
            core::ptr::read_volatile(&GUARD_MOUNT_LOCK),
        )
    };
    if renames == 0 || mounts == 0 {
        return None;
    }
    let renames: u32 = kernel::read(renames as Kptr, 0).ok()?;
    let mounts: u32 = kernel::read(mounts as Kptr, 0).ok()?;
    (renames & 1 == 0 && mounts & 1 == 0).then_some((renames, mounts))
}

/// [`kernel::guard_file_rule`] of the file at `dentry` in mount `vfsmount`
/// (both BTF-typed): the file's own rule, else its directory's, kept. A
/// file at the root of its mount is walked.
#[inline(always)]
pub fn file_rule(profile: u32, generation: u64, dentry: Kptr, vfsmount: Kptr) -> u64 {
    match kernel::identity_rule::<kernel::Typed>(profile, dentry) {
        Ok(Some(rule)) => return kernel::pack(Some(rule)),
        Ok(None) => {}
        Err(_) => return FAILED,
    }
    let dir: Kptr = kernel::typed_field(dentry, kernel::dentry_parent_offset());
    if dir == dentry || kernel::is_mount_root(dentry, vfsmount) {
        return walk(profile, dentry, vfsmount);
    }
    dir_rule(profile, generation, dir, vfsmount)
}

/// [`kernel::guard_file_rule`] of the directory `dir` in mount `vfsmount`
/// (both BTF-typed), kept or walked.
#[inline(always)]
fn dir_rule(profile: u32, generation: u64, dir: Kptr, vfsmount: Kptr) -> u64 {
    let walked = || walk(profile, dir, vfsmount);
    let Some(before) = sequences() else {
        return walked();
    };
    let inode = kernel::typed_field::<Kptr>(dir, kernel::dentry_inode_offset()) as *mut _;
    // The mount is compared as the address it is; a pointer is copied into
    // a plain number (a helper call) only to be kept or passed on.
    let holds = |kept: &KeptRule| {
        kept.generation == generation
            && kept.profile == profile
            && kept.vfsmount == vfsmount as u64
            && (kept.renames, kept.mounts) == before
    };
    // SAFETY: `inode` is the directory's typed inode pointer, which its
    // dentry (held by the hook's caller) keeps alive.
    let kept = unsafe { DIR_RULES.get_ptr_mut(inode) };
    if !kept.is_null() {
        // SAFETY: a non-null result points at the inode's value.
        let kept = unsafe { *kept };
        if holds(&kept) {
            return kept.packed;
        }
        // SAFETY: as above.
        let _ = unsafe { DIR_RULES.delete(inode) };
    }
    let Ok(vfsmount_arg) = kernel::as_scalar(vfsmount) else {
        return FAILED;
    };
    let packed = walk_from(profile, dir, vfsmount_arg);
    // A walk that raced a rename or a mount change is not kept.
    if packed & (TOO_DEEP | FAILED) == 0 && sequences() == Some(before) {
        let Some(scratch) = crate::maps::path_scratch() else {
            return packed;
        };
        scratch.kept_rule = KeptRule {
            generation,
            vfsmount: vfsmount_arg,
            profile,
            renames: before.0,
            mounts: before.1,
            _pad: 0,
            packed,
        };
        // Made whole, or not at all when another CPU made one first.
        // SAFETY: as above; the value is a map value of this type.
        unsafe { DIR_RULES.get_or_insert_ptr_mut(inode, Some(&mut scratch.kept_rule)) };
    }
    packed
}

/// [`kernel::guard_file_rule`] of `dentry` in mount `vfsmount` (both
/// BTF-typed), walked.
#[inline(always)]
fn walk(profile: u32, dentry: Kptr, vfsmount: Kptr) -> u64 {
    match kernel::as_scalar(vfsmount) {
        Ok(vfsmount_arg) => walk_from(profile, dentry, vfsmount_arg),
        Err(_) => FAILED,
    }
}

/// [`walk`] with the mount already a plain number.
#[inline(always)]
fn walk_from(profile: u32, dentry: Kptr, vfsmount_arg: u64) -> u64 {
    match kernel::as_scalar(dentry) {
        Ok(dentry_arg) => kernel::guard_file_rule(profile, dentry_arg, vfsmount_arg),
        Err(_) => FAILED,
    }
}
