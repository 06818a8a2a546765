//! Reading kernel structs portably.
//!
//! Rust eBPF has no CO-RE field relocations, and layouts differ between
//! kernels, so every offset is a `u32` global that the loader sets from the
//! running kernel's BTF (`guard_common::KERNEL_FIELDS`). The globals live in a
//! frozen read-only map, so the verifier sees them as constants.

use core::ffi::c_void;

use aya_ebpf::helpers::{bpf_probe_read_kernel, generated};
use guard_common::{
    DatabaseSocketKey, IdentityKey, MAX_WALK_DEPTH, NAME_KEY_LEN, OWN_NAME_LEN, RuleRef,
    UNIX_PATH_LEN, event_flag,
};

use crate::maps::{FILE_IDENTITY, FILE_NAMES, OWN_NAMES, PathScratch, WALK_LEN};

/// A kernel pointer; dereferenced through `bpf_probe_read_kernel`, or by a
/// direct load where it is BTF-typed (see [`Access`]).
pub type Kptr = *const u8;

/// An error reading kernel memory (the helper's negative errno).
pub type ReadError = i64;

macro_rules! offset_globals {
    ($($name:ident),* $(,)?) => {
        $(
            #[unsafe(no_mangle)]
            static $name: u32 = 0;
        )*
    };
}

// One per entry of guard_common::KERNEL_FIELDS; the loader fails if any of
// these is missing from the object or from the kernel's BTF.
offset_globals!(
    OFF_BPRM_FILE,
    OFF_FILE_PATH,
    OFF_FILE_INODE,
    OFF_FILE_FLAGS,
    OFF_PATH_MNT,
    OFF_PATH_DENTRY,
    OFF_DENTRY_PARENT,
    OFF_DENTRY_NAME_LEN,
    OFF_DENTRY_NAME,
    OFF_DENTRY_INODE,
    OFF_INODE_INO,
    OFF_INODE_SB,
    OFF_INODE_SIZE,
    OFF_INODE_CTIME_SEC,
    OFF_INODE_CTIME_NSEC,
    OFF_SB_DEV,
    OFF_SB_MAGIC,
    OFF_DENTRY_SB,
    OFF_INODE_MODE,
    OFF_TASK_TGID,
    OFF_TASK_CGROUPS,
    OFF_CSS_SET_DFL_CGRP,
    OFF_CGROUP_KN,
    OFF_KERNFS_NODE_ID,
    OFF_KERNFS_NODE_PARENT,
    OFF_MOUNT_MNT,
    OFF_MOUNT_PARENT,
    OFF_MOUNT_MOUNTPOINT,
    OFF_VFSMOUNT_ROOT,
    OFF_SOCKET_TYPE,
    OFF_MSGHDR_NAME,
    OFF_MSGHDR_NAMELEN,
    OFF_UNIX_SOCK_ADDR,
    OFF_UNIX_ADDRESS_LEN,
    OFF_UNIX_ADDRESS_NAME,
);

/// Byte offset held in an offset global.
#[inline(always)]
pub fn off(global: &'static u32) -> usize {
    // SAFETY: a plain read of a static; volatile so the compiler cannot fold
    // the object's placeholder 0 into the code.
    unsafe { core::ptr::read_volatile(global) as usize }
}

/// Reads a `T` at `base + offset` of kernel memory.
#[inline(always)]
pub fn read<T>(base: Kptr, offset: usize) -> Result<T, ReadError> {
    // SAFETY: bpf_probe_read_kernel checks the address; a bad one is an error.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset) as *const T) }.map_err(i64::from)
}

/// How a function reads kernel structs: [`Probe`] from any address,
/// [`Typed`] by direct loads, which cost an instruction where a helper call
/// costs dozens (file decisions read about twenty fields).
pub trait Access {
    fn read<T>(base: Kptr, offset: usize) -> Result<T, ReadError>;
}

/// Through `bpf_probe_read_kernel`: from any address, a bad one an error.
pub struct Probe;

/// By direct loads ([`typed_field`]): only from a BTF-typed pointer (a
/// hook's argument, or a pointer loaded from one by a direct load) that is
/// not NULL; a pointer that may be NULL is checked before it is read from.
/// That check can be lost: in the body of `path_rename`'s program, 6.12's
/// verifier took `d_inode`, loaded directly from the new name's dentry, for
/// a pointer that is never NULL and dropped the check as dead code; the
/// negative dentry of a new name then oopsed the kernel. In `check_file`
/// (a subprogram) the check holds on both kernels, as the VM tests that
/// create files, directories and links as agents show. Elsewhere a dentry
/// that may be negative is read with [`Probe`] (`try_rename`,
/// `file_decided`).
pub struct Typed;

impl Access for Probe {
    #[inline(always)]
    fn read<T>(base: Kptr, offset: usize) -> Result<T, ReadError> {
        read(base, offset)
    }
}

impl Access for Typed {
    #[inline(always)]
    fn read<T>(base: Kptr, offset: usize) -> Result<T, ReadError> {
        Ok(typed_field(base, offset))
    }
}

/// Copies `len` bytes of kernel memory from `src` to `dst`.
#[inline(always)]
pub fn copy(dst: *mut u8, len: u32, src: Kptr) -> Result<(), ReadError> {
    // SAFETY: callers pass a destination inside a map value or the stack with
    // at least `len` bytes; the verifier checks it too.
    let rc =
        unsafe { generated::bpf_probe_read_kernel(dst as *mut c_void, len, src as *const c_void) };
    if rc < 0 { Err(rc) } else { Ok(()) }
}

/// A file's identity in the kernel's `dev_t` encoding.
#[derive(Clone, Copy, Default)]
pub struct Identity {
    pub dev: u32,
    pub ino: u64,
}

impl Identity {
    pub fn key(self, profile: u32) -> IdentityKey {
        IdentityKey {
            ino: self.ino,
            dev: self.dev,
            profile,
        }
    }
}

#[inline(always)]
pub fn inode_identity<A: Access>(inode: Kptr) -> Result<Identity, ReadError> {
    let ino: u64 = A::read(inode, off(&OFF_INODE_INO))?;
    let sb: Kptr = A::read(inode, off(&OFF_INODE_SB))?;
    let dev: u32 = A::read(sb, off(&OFF_SB_DEV))?;
    Ok(Identity { dev, ino })
}

/// Identity of a dentry's inode, or `None` for a negative dentry.
#[inline(always)]
pub fn dentry_identity<A: Access>(dentry: Kptr) -> Result<Option<Identity>, ReadError> {
    let inode: Kptr = A::read(dentry, off(&OFF_DENTRY_INODE))?;
    if inode.is_null() {
        return Ok(None);
    }
    inode_identity::<A>(inode).map(Some)
}

const CGROUP2_SUPER_MAGIC: u64 = 0x6367_7270;

/// Superblock magic numbers of the filesystems through which a process
/// steers the kernel (include/uapi/linux/magic.h): cgroup2, cgroup, bpf,
/// securityfs, tracefs, debugfs, proc, sysfs.
const KERNEL_INTERFACES: [u64; 8] = [
    CGROUP2_SUPER_MAGIC,
    0x0027_e0eb,
    0xcafe_4a11,
    0x7363_6673,
    0x7472_6163,
    0x6462_6720,
    0x9fa0,
    0x6265_6572,
];
const S_IFMT: u16 = 0o170_000;
const S_IFBLK: u16 = 0o060_000;

/// Whether no agent may write, create or destroy `dentry` (`for_write`:
/// open it for write), whatever its profile: a file of a kernel interface
/// (moving a process between cgroups, pinned BPF objects, sysctls such as
/// `kernel.modprobe`) or a block device (writing one rewrites files beneath
/// every rule). One exception: a process may move into a cgroup below its
/// own (sub-agents launched by an agent do), which leaves it confined.
/// `dentry` is BTF-typed.
pub fn off_limits(dentry: Kptr, for_write: bool) -> Result<bool, ReadError> {
    let sb: Kptr = Typed::read(dentry, off(&OFF_DENTRY_SB))?;
    let magic: u64 = Typed::read(sb, off(&OFF_SB_MAGIC))?;
    if KERNEL_INTERFACES.contains(&magic) {
        let deeper = magic == CGROUP2_SUPER_MAGIC && for_write && joins_own_subtree(dentry)?;
        return Ok(!deeper);
    }
    let inode: Kptr = Typed::read(dentry, off(&OFF_DENTRY_INODE))?;
    if inode.is_null() {
        return Ok(false);
    }
    let mode: u16 = Typed::read(inode, off(&OFF_INODE_MODE))?;
    Ok(mode & S_IFMT == S_IFBLK)
}

/// Cgroup levels walked up looking for a cgroup.
const MAX_CGROUP_DEPTH: u32 = 32;

/// Whether `dentry` is the `cgroup.procs` file of the caller's cgroup or of
/// one below it (a cgroup2 directory's inode number is the cgroup's id).
fn joins_own_subtree(dentry: Kptr) -> Result<bool, ReadError> {
    const PROCS: &[u8; 12] = b"cgroup.procs";
    let len: u32 = read(dentry, off(&OFF_DENTRY_NAME_LEN))?;
    let name: Kptr = read(dentry, off(&OFF_DENTRY_NAME))?;
    if len != PROCS.len() as u32 || read::<[u8; 12]>(name, 0)? != *PROCS {
        return Ok(false);
    }
    // SAFETY: a helper call without arguments.
    let own = unsafe { generated::bpf_get_current_cgroup_id() };
    let mut dir: Kptr = read(dentry, off(&OFF_DENTRY_PARENT))?;
    for _ in 0..MAX_CGROUP_DEPTH {
        let inode: Kptr = read(dir, off(&OFF_DENTRY_INODE))?;
        if inode.is_null() {
            return Ok(false);
        }
        if read::<u64>(inode, off(&OFF_INODE_INO))? == own {
            return Ok(true);
        }
        let parent: Kptr = read(dir, off(&OFF_DENTRY_PARENT))?;
        if parent == dir {
            return Ok(false);
        }
        dir = parent;
    }
    Ok(false)
}

/// Whether `task` runs in the cgroup `root` or below it (its cgroup2
/// cgroup's kernfs node or an ancestor has id `root`).
pub fn task_in_cgroup(task: Kptr, root: u64) -> Result<bool, ReadError> {
    let css_set: Kptr = read(task, off(&OFF_TASK_CGROUPS))?;
    let cgroup: Kptr = read(css_set, off(&OFF_CSS_SET_DFL_CGRP))?;
    let mut node: Kptr = read(cgroup, off(&OFF_CGROUP_KN))?;
    for _ in 0..MAX_CGROUP_DEPTH {
        if node.is_null() {
            return Ok(false);
        }
        let id: u64 = read(node, off(&OFF_KERNFS_NODE_ID))?;
        if id == root {
            return Ok(true);
        }
        node = read(node, off(&OFF_KERNFS_NODE_PARENT))?;
    }
    Ok(false)
}

pub fn task_tgid(task: Kptr) -> Result<u32, ReadError> {
    read(task, off(&OFF_TASK_TGID))
}

/// `(vfsmount, dentry)` of a `struct path`.
pub fn path_parts(path: Kptr) -> Result<(Kptr, Kptr), ReadError> {
    Ok((
        read(path, off(&OFF_PATH_MNT))?,
        read(path, off(&OFF_PATH_DENTRY))?,
    ))
}

/// The dentry of a `struct path` (a BTF-typed pointer), by a direct load,
/// so that the result is typed too (inode storage needs that).
pub fn typed_path_dentry(path: Kptr) -> Kptr {
    typed_field(path, off(&OFF_PATH_DENTRY))
}

/// The mount of a `struct path` (a BTF-typed pointer), by a direct load.
pub fn typed_path_mnt(path: Kptr) -> Kptr {
    typed_field(path, off(&OFF_PATH_MNT))
}

/// A pointer member of a BTF-typed struct, by a direct load: the verifier
/// checks it against the kernel's BTF and types the result. Only for a
/// `base` that is never NULL (a hook's argument, a dentry's `d_parent`, a
/// path's dentry): on 6.12 a load through a pointer walked from a hook's
/// arguments can be a plain load, and one through NULL oopses the kernel.
#[inline(always)]
pub fn typed_field<T>(base: Kptr, offset: usize) -> T {
    // SAFETY: the verifier checks the load against the kernel's BTF, and
    // callers pass a `base` that cannot be NULL.
    unsafe { core::ptr::read_volatile(base.wrapping_add(offset) as *const T) }
}

pub fn dentry_parent_offset() -> usize {
    off(&OFF_DENTRY_PARENT)
}

pub fn dentry_inode_offset() -> usize {
    off(&OFF_DENTRY_INODE)
}

/// Whether `dentry` is the root of mount `vfsmount` (both BTF-typed).
pub fn is_mount_root(dentry: Kptr, vfsmount: Kptr) -> bool {
    typed_field::<Kptr>(vfsmount, off(&OFF_VFSMOUNT_ROOT)) == dentry
}

pub fn file_path(file: Kptr) -> Kptr {
    file.wrapping_add(off(&OFF_FILE_PATH))
}

/// `file` is BTF-typed.
pub fn file_flags(file: Kptr) -> u32 {
    typed_field(file, off(&OFF_FILE_FLAGS))
}

/// An open file's inode (never NULL); `file` is BTF-typed.
pub fn file_inode(file: Kptr) -> Kptr {
    typed_field(file, off(&OFF_FILE_INODE))
}

/// `inode` is BTF-typed.
pub fn inode_size(inode: Kptr) -> i64 {
    typed_field(inode, off(&OFF_INODE_SIZE))
}

/// An inode's change time: seconds, nanoseconds (on 6.1 the low half of a
/// `long`, on 6.11+ a `u32`; little endian either way).
pub fn inode_ctime(inode: Kptr) -> Result<(i64, u32), ReadError> {
    Ok((
        read(inode, off(&OFF_INODE_CTIME_SEC))?,
        read(inode, off(&OFF_INODE_CTIME_NSEC))?,
    ))
}

pub fn bprm_file_offset() -> usize {
    off(&OFF_BPRM_FILE)
}

pub fn socket_type(sock: Kptr) -> Result<u16, ReadError> {
    read(sock, off(&OFF_SOCKET_TYPE))
}

/// `(msg_name, msg_namelen)` of a `struct msghdr`.
pub fn msghdr_name(msg: Kptr) -> Result<(Kptr, i32), ReadError> {
    Ok((
        read(msg, off(&OFF_MSGHDR_NAME))?,
        read(msg, off(&OFF_MSGHDR_NAMELEN))?,
    ))
}

/// Sets `key.name` to the name a unix-domain socket (`struct sock` of
/// `struct unix_sock`) is bound to, zero-padded, and returns its length;
/// 0 for an unbound socket.
pub fn unix_bound_name(sk: Kptr, key: &mut DatabaseSocketKey) -> Result<u32, ReadError> {
    // Word stores at constant offsets (see `record` in main.rs on memset).
    let words = key.name.as_mut_ptr().cast::<u32>();
    for i in 0..UNIX_PATH_LEN / 4 {
        // SAFETY: `words` covers the 108-byte, 4-aligned name of a map value.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
    let addr: Kptr = read(sk, off(&OFF_UNIX_SOCK_ADDR))?;
    if addr.is_null() {
        return Ok(0);
    }
    // `len` counts `sun_family` and the name (with a path's NUL).
    let len: i32 = read(addr, off(&OFF_UNIX_ADDRESS_LEN))?;
    let len = (len - 2).clamp(0, UNIX_PATH_LEN as i32) as u32;
    let sun_path = addr.wrapping_add(off(&OFF_UNIX_ADDRESS_NAME) + 2);
    copy(key.name.as_mut_ptr(), len, sun_path)?;
    Ok(len)
}

/// One step from a dentry towards the root of the mount tree
/// (`fs/d_path.c`, `prepend_path`).
enum Step {
    /// The parent dentry in the same mount.
    Parent(Kptr),
    /// The dentry was the root of its mount: continue at the mount point in
    /// the parent mount.
    Mount { mountpoint: Kptr, vfsmount: Kptr },
    /// The root of the mount tree.
    Root,
}

fn step_up(dentry: Kptr, vfsmount: Kptr) -> Result<Step, ReadError> {
    let mnt_root: Kptr = read(vfsmount, off(&OFF_VFSMOUNT_ROOT))?;
    let parent: Kptr = read(dentry, off(&OFF_DENTRY_PARENT))?;
    if dentry != mnt_root && dentry != parent {
        return Ok(Step::Parent(parent));
    }
    // `struct mount` embeds the `struct vfsmount` (fs/mount.h, real_mount()).
    let mount = vfsmount.wrapping_sub(off(&OFF_MOUNT_MNT));
    let mount_parent: Kptr = read(mount, off(&OFF_MOUNT_PARENT))?;
    if mount_parent == mount {
        return Ok(Step::Root);
    }
    let mountpoint: Kptr = read(mount, off(&OFF_MOUNT_MOUNTPOINT))?;
    Ok(Step::Mount {
        mountpoint,
        vfsmount: mount_parent.wrapping_add(off(&OFF_MOUNT_MNT)),
    })
}

/// Result of looking for a protected file or ancestor directory.
pub enum Protection {
    Protected(RuleRef),
    Clear,
    /// The walk gave up after `MAX_WALK_DEPTH` steps.
    TooDeep,
}

/// The rule of `profile` on the dentry's own file or directory (by its
/// identity), if any; none for a negative dentry.
#[inline(always)]
pub fn identity_rule<A: Access>(profile: u32, dentry: Kptr) -> Result<Option<RuleRef>, ReadError> {
    let Some(identity) = dentry_identity::<A>(dentry)? else {
        return Ok(None);
    };
    // SAFETY: the value is a plain Copy struct, copied out at once.
    Ok(unsafe { FILE_IDENTITY.get(&identity.key(profile)) }.copied())
}

/// Looks the dentry and each of its ancestors (across mounts) up in the
/// protected identities of `profile`. Matching by identity rather than by path
/// also covers bind mounts and other aliases of a protected directory.
pub fn find_protected(profile: u32, dentry: Kptr, vfsmount: Kptr) -> Result<Protection, ReadError> {
    let mut dentry = dentry;
    let mut vfsmount = vfsmount;
    for _ in 0..MAX_WALK_DEPTH {
        if let Some(rule) = identity_rule::<Probe>(profile, dentry)? {
            return Ok(Protection::Protected(rule));
        }
        match step_up(dentry, vfsmount)? {
            Step::Parent(parent) => dentry = parent,
            Step::Mount {
                mountpoint,
                vfsmount: parent_mount,
            } => {
                dentry = mountpoint;
                vfsmount = parent_mount;
            }
            Step::Root => return Ok(Protection::Clear),
        }
    }
    Ok(Protection::TooDeep)
}

/// Looks the dentry's name up in the protected names of `profile`. Names are
/// matched reversed, so `*.sqlite` is a prefix and `.env` an exact key.
pub fn find_protected_name(
    profile: u32,
    dentry: Kptr,
    scratch: &mut PathScratch,
) -> Result<Option<RuleRef>, ReadError> {
    let len: u32 = read(dentry, off(&OFF_DENTRY_NAME_LEN))?;
    let name: Kptr = read(dentry, off(&OFF_DENTRY_NAME))?;
    let len = (len as usize).min(255);
    copy(scratch.name.as_mut_ptr(), len as u32, name)?;

    let key = &mut scratch.name_key;
    key.data.profile = profile.to_be_bytes();
    // Every slot is written at a constant index, zero past the name, so an
    // exact name is followed by its NUL without a store at a computed offset
    // (6.1's verifier explores infeasible paths on which such an offset is
    // unbounded).
    for i in 0..NAME_KEY_LEN {
        key.data.reversed[i] = if i < len {
            scratch.name[(len - 1 - i) & 255]
        } else {
            0
        };
    }
    let key_bytes = if len < NAME_KEY_LEN {
        len + 1
    } else {
        NAME_KEY_LEN
    };
    key.prefix_len = 32 + key_bytes as u32 * 8;
    Ok(FILE_NAMES.get(&*key).copied())
}

/// Whether `dentry`'s entry (its name in its parent directory) is one of
/// the entries on the way to Guard's own files (`OWN_NAMES`). `dentry` is
/// BTF-typed.
#[inline(always)]
pub fn is_own_name(dentry: Kptr) -> Result<bool, ReadError> {
    let scratch = crate::maps::path_scratch().ok_or(-1)?;
    let parent: Kptr = Typed::read(dentry, off(&OFF_DENTRY_PARENT))?;
    if parent == dentry {
        return Ok(false);
    }
    let Some(dir) = dentry_identity::<Typed>(parent)? else {
        return Ok(false);
    };
    let key = &mut scratch.own_key;
    key.dir_ino = dir.ino;
    key.dir_dev = dir.dev;
    key.len = 0;
    // Word stores at constant offsets (see `record` in main.rs on memset).
    let words = key.name.as_mut_ptr().cast::<u64>();
    for i in 0..OWN_NAME_LEN / 8 {
        // SAFETY: `words` covers the 64-byte, 8-aligned name of a map value.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
    // First the directory's own key (`OwnNameKey::dir`): nearly every
    // directory holds none of the names, and its entries' names need not
    // be copied.
    // SAFETY: only presence is read.
    if unsafe { OWN_NAMES.get(&*key) }.is_none() {
        return Ok(false);
    }
    let len: u32 = Typed::read(dentry, off(&OFF_DENTRY_NAME_LEN))?;
    let name: Kptr = Typed::read(dentry, off(&OFF_DENTRY_NAME))?;
    let len = len.min(OWN_NAME_LEN as u32);
    key.len = len;
    copy(key.name.as_mut_ptr(), len, name)?;
    // SAFETY: only presence is read.
    Ok(unsafe { OWN_NAMES.get(&*key) }.is_some())
}

/// A path built into `PathScratch::walk`.
pub struct BuiltPath {
    /// Start of the path in `walk`; it ends at `WALK_LEN`.
    pub start: usize,
    /// `event_flag` bits.
    pub flags: u32,
}

/// Builds the absolute path of a dentry by walking to the root of the mount
/// tree, back to front (like `prepend_path` in fs/d_path.c). Used for records
/// on hooks where `bpf_d_path` is not allowed on every supported kernel.
pub fn build_path(dentry: Kptr, vfsmount: Kptr, scratch: &mut PathScratch) -> BuiltPath {
    use core::ptr::{addr_of_mut, read_volatile, write_volatile};
    let pos_slot = addr_of_mut!(scratch.walk_pos);
    // The cursor, re-read from map memory each time (see `walk_pos`); the
    // mask keeps it provably inside `walk` for the verifier.
    // SAFETY: `pos_slot` points into the per-CPU scratch value.
    let pos = || unsafe { read_volatile(pos_slot) } as usize & (2 * WALK_LEN - 1);
    let set_pos = |value: usize| unsafe { write_volatile(pos_slot, value as u64) };
    let buf = addr_of_mut!(scratch.walk).cast::<u8>();
    let put_slash = |at: usize| unsafe { write_volatile(buf.add(at & (WALK_LEN - 1)), b'/') };

    set_pos(WALK_LEN);
    let mut flags = event_flag::PATH_TRUNCATED;
    let mut dentry = dentry;
    let mut vfsmount = vfsmount;
    for _ in 0..MAX_WALK_DEPTH {
        match step_up(dentry, vfsmount) {
            Ok(Step::Parent(parent)) => {
                let Ok(len) = read::<u32>(dentry, off(&OFF_DENTRY_NAME_LEN)) else {
                    break;
                };
                let Ok(name) = read::<Kptr>(dentry, off(&OFF_DENTRY_NAME)) else {
                    break;
                };
                let len = (len as usize).min(255);
                let at = pos();
                if at < len + 1 {
                    break;
                }
                let at = at - len;
                if copy(buf.wrapping_add(at & (WALK_LEN - 1)), len as u32, name).is_err() {
                    break;
                }
                put_slash(at - 1);
                set_pos(at - 1);
                dentry = parent;
            }
            Ok(Step::Mount {
                mountpoint,
                vfsmount: parent_mount,
            }) => {
                dentry = mountpoint;
                vfsmount = parent_mount;
            }
            Ok(Step::Root) => {
                flags = 0;
                break;
            }
            Err(_) => {
                flags = event_flag::PATH_UNROOTED;
                break;
            }
        }
    }
    if pos() >= WALK_LEN {
        put_slash(WALK_LEN - 1);
        set_pos(WALK_LEN - 1);
    }
    BuiltPath {
        start: pos().min(WALK_LEN - 1),
        flags,
    }
}

// ------------------------------------------------------ global functions --
//
// The walks above loop up to MAX_WALK_DEPTH times. Called from a hook as
// ordinary (static) functions, the verifier walks them again for every
// state the hook reaches them in, which on 6.1 multiplies into minutes and,
// for some hooks, past its instruction limit. As global functions, with
// only scalar arguments and a scalar result, each is verified once, on its
// own. The results are packed into a u64.

/// A rule was found: `action << 32 | rule_id` in the low bits.
pub const FOUND: u64 = 1 << 63;
/// The walk gave up after `MAX_WALK_DEPTH` steps.
pub const TOO_DEEP: u64 = 1 << 62;
/// Kernel memory could not be read.
pub const FAILED: u64 = 1 << 61;

pub fn pack(rule: Option<RuleRef>) -> u64 {
    match rule {
        Some(rule) => FOUND | (u64::from(rule.action) << 32) | u64::from(rule.rule_id),
        None => 0,
    }
}

/// Unpacks a result of the functions below.
pub fn unpack(packed: u64) -> Result<Option<RuleRef>, ReadError> {
    if packed & FAILED != 0 {
        return Err(-1);
    }
    Ok((packed & FOUND != 0).then_some(RuleRef {
        rule_id: packed as u32,
        action: ((packed >> 32) & 0xff) as u32,
    }))
}

/// A kernel pointer as a plain number. Hook arguments are typed pointers to
/// the verifier, and 6.1 refuses them as arguments of global functions;
/// copied through `bpf_probe_read_kernel`, the value is a scalar.
pub fn as_scalar(pointer: Kptr) -> Result<u64, ReadError> {
    let value = pointer as u64;
    read(core::ptr::addr_of!(value).cast(), 0)
}

/// [`find_protected`] as a global function.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn guard_file_rule(profile: u32, dentry: u64, vfsmount: u64) -> u64 {
    match find_protected(profile, dentry as Kptr, vfsmount as Kptr) {
        Ok(Protection::Protected(rule)) => pack(Some(rule)),
        Ok(Protection::Clear) => 0,
        Ok(Protection::TooDeep) => TOO_DEEP,
        Err(_) => FAILED,
    }
}

/// [`find_protected_name`] as a global function.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn guard_name_rule(profile: u32, dentry: u64) -> u64 {
    let Some(scratch) = crate::maps::path_scratch() else {
        return FAILED;
    };
    match find_protected_name(profile, dentry as Kptr, scratch) {
        Ok(rule) => pack(rule),
        Err(_) => FAILED,
    }
}

/// [`build_path`] into the per-CPU scratch, as a global function: returns
/// `flags << 32 | start`.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn guard_build_path(dentry: u64, vfsmount: u64) -> u64 {
    let Some(scratch) = crate::maps::path_scratch() else {
        return u64::from(event_flag::PATH_UNROOTED) << 32 | (WALK_LEN as u64 - 1);
    };
    let built = build_path(dentry as Kptr, vfsmount as Kptr, scratch);
    u64::from(built.flags) << 32 | built.start as u64
}
