//! The kernel ABI of Guard: every type that crosses between the eBPF programs
//! (`guard-ebpf`) and userspace (`guard-daemon`), and the names of the maps
//! and load-time globals both sides use.
//!
//! Rules for this crate: every type is `#[repr(C)]`, `Copy`, has no implicit
//! padding (explicit `_pad` fields, no `bool`) and a compile-time size check.
//! Enums that cross the boundary are plain `u32` ids defined here once; ids are
//! never reused.
#![no_std]

/// Map names, as the eBPF object declares them. Userspace looks maps up by
/// these constants only.
///
/// The policy maps hold two generations side by side, in slots 0 and 1: the
/// slot is part of every key ([`AgentKey::slot`], and the top bit of the
/// profile id in the rule keys, see [`profile_key`]). [`GENERATION`] names the
/// slot in force. The daemon writes a new generation into the idle slot, then
/// switches [`GENERATION`] in one map update, so a hook sees either the old
/// policy or the new one, never a mix.
pub mod map {
    /// Array of maps with one element: an array map whose only element is
    /// the [`super::GenerationInfo`] in force. Replaced whole on every switch.
    pub const GENERATION: &str = "GENERATION";
    /// The inner maps [`GENERATION`] points to, one per slot.
    pub const GENERATION_SLOTS: [&str; 2] = ["GENERATION_SLOT_0", "GENERATION_SLOT_1"];
    /// [`super::AgentKey`] → [`super::AgentEntry`]: agent and session cgroups.
    pub const AGENTS: &str = "AGENTS";
    /// [`super::IdentityKey`] → [`super::ExecIdentityRule`]: exec rules by file identity.
    pub const EXEC_IDENTITY: &str = "EXEC_IDENTITY";
    /// LPM trie [`super::ExecPathKey`] → [`super::RuleRef`]: exec path rules.
    pub const EXEC_PATHS: &str = "EXEC_PATHS";
    /// [`super::DigestKey`] → [`super::RuleRef`]: exec deny rules by
    /// content (a SHA-256 of the file).
    pub const EXEC_DIGESTS: &str = "EXEC_DIGESTS";
    /// [`super::IdentityKey`] → [`super::RuleRef`]: file rules on files and directories.
    pub const FILE_IDENTITY: &str = "FILE_IDENTITY";
    /// LPM trie [`super::NameKey`] → [`super::RuleRef`]: file rules on names.
    pub const FILE_NAMES: &str = "FILE_NAMES";
    /// LPM trie [`super::NetKey`] → [`super::NetRuleSet`]: network rules.
    pub const NET_RULES: &str = "NET_RULES";
    /// [`super::NetKey`] (a whole address) → [`super::NetRuleSet`]: the rules
    /// of hostnames, on each address guardd resolved the name to.
    pub const HOST_ADDRS: &str = "HOST_ADDRS";
    /// [`super::SecretKey`] → `u8`: files no agent may open at all, not
    /// even to read (the statement guard's passwords and TLS keys). Not
    /// part of a generation: guardd sets them with each policy.
    pub const SECRETS: &str = "SECRETS";
    /// [`super::RouteKey`] → [`super::Route`]: the database servers whose
    /// connections each profile's agents make go to the statement guard.
    pub const ROUTES: &str = "ROUTES";
    /// [`super::DatabaseSocketKey`] → [`super::Route`]: the unix-domain
    /// sockets of guarded database servers, which each profile's agents may
    /// not connect to (the kernel cannot route those); the value is the
    /// statement guard's address, for the record.
    pub const DATABASE_SOCKETS: &str = "DATABASE_SOCKETS";
    /// Ring buffer of [`super::Event`] records of allowed actions.
    pub const EVENTS: &str = "EVENTS";
    /// Ring buffer of the [`super::Event`] records that matter most:
    /// denials, would-denials and approved actions. Their own lane, so that
    /// a flood of allowed records never takes a denial's place.
    pub const DENIALS: &str = "DENIALS";
    /// [`super::OwnNameKey`] → `u8`: every directory entry on the way to
    /// one of Guard's own files (each ancestor directory's name in its
    /// parent, and the file's own name). No agent may remove, rename or
    /// create an entry of these names, so the way to Guard's files cannot
    /// be swapped. Each directory that holds such an entry has a key of
    /// its own too ([`super::OwnNameKey::dir`]), so that an entry elsewhere
    /// is passed without copying its name. Not part of a generation.
    pub const OWN_NAMES: &str = "OWN_NAMES";
    /// Array of one `u32` of [`super::spool_flag`] bits: the state of
    /// guardd's records, which the programs act on.
    pub const SPOOL_STATE: &str = "SPOOL_STATE";
    /// Per-CPU u64 counters, indexed by [`super::Counter`].
    pub const COUNTERS: &str = "COUNTERS";
    /// [`super::BudgetKey`] → [`super::BudgetState`]: what each session has
    /// spent of its budgets. Not part of a generation: a reload does not
    /// refill a budget.
    pub const BUDGET_STATE: &str = "BUDGET_STATE";
    /// LRU [`super::DestinationKey`] → `u8`: the destinations each session
    /// has reached, so that only a new one spends its destinations budget.
    pub const DESTINATIONS_SEEN: &str = "DESTINATIONS_SEEN";
    /// [`super::ExceptionKey`] → [`super::Exception`]: approved tickets, each
    /// letting one session do one denied thing to one object.
    pub const EXCEPTIONS: &str = "EXCEPTIONS";
    /// The maps guardd pins with the programs' links, so that a guardd
    /// started later adopts them (the others are private to the programs).
    pub const PINNED: [&str; 22] = [
        GENERATION,
        GENERATION_SLOTS[0],
        GENERATION_SLOTS[1],
        AGENTS,
        EXEC_IDENTITY,
        EXEC_PATHS,
        EXEC_DIGESTS,
        FILE_IDENTITY,
        FILE_NAMES,
        NET_RULES,
        HOST_ADDRS,
        ROUTES,
        DATABASE_SOCKETS,
        SECRETS,
        EVENTS,
        DENIALS,
        OWN_NAMES,
        SPOOL_STATE,
        COUNTERS,
        BUDGET_STATE,
        DESTINATIONS_SEEN,
        EXCEPTIONS,
    ];
}

/// Generations the policy maps hold at once (the one in force and the next).
pub const SLOTS: u32 = 2;

/// The profile id rule keys carry: the profile's index in its generation,
/// with the generation's slot in the top bit.
pub const fn profile_key(slot: u32, index: u32) -> u32 {
    (slot << 31) | index
}

/// The slot in a profile id ([`profile_key`]).
pub const fn profile_slot(key: u32) -> u32 {
    key >> 31
}

/// The profile index in a profile id ([`profile_key`]).
pub const fn profile_index(key: u32) -> u32 {
    key & !(1 << 31)
}

/// Profile index of [`LOCKED`]; no rule key carries it.
pub const LOCKED_PROFILE: u32 = 0x7fff_ffff;

/// The entry of a cgroup below Guard's root that Guard does not know (one an
/// agent made, or left from an earlier run): every decision is denied.
pub const LOCKED: AgentEntry = AgentEntry {
    profile: LOCKED_PROFILE,
    mode: mode::ENFORCE,
    flags: agent_flag::EXEC_DEFAULT_DENY
        | agent_flag::FILES_DEFAULT_DENY
        | agent_flag::NETWORK_DEFAULT_DENY
        | agent_flag::DECIDE_WRITES,
    _pad: 0,
    budgets: [Budget::NONE; BUDGETS],
};

/// Capacities of one generation. Userspace checks a compiled policy against
/// them; the maps hold [`SLOTS`] times as many entries.
pub mod capacity {
    pub const AGENTS: u32 = 1024;
    pub const EXEC_IDENTITY: u32 = 4096;
    pub const EXEC_PATHS: u32 = 4096;
    pub const EXEC_DIGESTS: u32 = 1024;
    pub const FILE_IDENTITY: u32 = 4096;
    pub const FILE_NAMES: u32 = 1024;
    pub const NET_RULES: u32 = 1 << 17;
    /// Addresses of hostname rules (each address of each name, per profile).
    pub const HOST_ADDRS: u32 = 4096;
    /// Guard's secret files.
    pub const SECRETS: u32 = 256;
    /// Routed database addresses (each address of each server, per profile).
    pub const ROUTES: u32 = 1024;
    /// Refused unix-domain sockets of database servers (per profile).
    pub const DATABASE_SOCKETS: u32 = 1024;
    /// Approved tickets in force at once, over all sessions.
    pub const EXCEPTIONS: u32 = 4096;
    /// Destinations remembered per host (least recently used go first; a
    /// forgotten one spends the budget again when reached).
    pub const DESTINATIONS_SEEN: u32 = 1 << 16;
    /// Bytes; must be a power of two and a multiple of the page size.
    pub const EVENTS_BYTES: u32 = 1 << 22;
    /// Bytes of the denials' ring buffer; as [`EVENTS_BYTES`].
    pub const DENIALS_BYTES: u32 = 1 << 21;
    /// Directory entries on the way to Guard's own files.
    pub const OWN_NAMES: u32 = 1024;
}

/// Bits of the [`map::SPOOL_STATE`] value.
pub mod spool_flag {
    /// guardd cannot write records (its disk is full): profiles with
    /// audit-or-deny deny what they would record.
    pub const BLOCKED: u32 = 1;
}

/// Load-time globals (`#[no_mangle]` statics in the eBPF object) that the
/// loader sets from the running kernel's BTF. Offsets are in bytes.
pub mod global {
    /// cgroup id of Guard's root cgroup; agent cgroups are its children.
    pub const ROOT_CGROUP_ID: &str = "GUARD_ROOT_CGROUP_ID";
    /// Level (depth below the cgroup2 root) of Guard's root cgroup.
    pub const ROOT_CGROUP_LEVEL: &str = "GUARD_ROOT_CGROUP_LEVEL";
    /// Fault injection for the kernel tests (guardd sets it only when
    /// `GUARD_FAULT_HOOK_ERRORS=1`): every file decision about an agent
    /// fails as an internal error.
    pub const FAULT_HOOK_ERRORS: &str = "GUARD_FAULT_HOOK_ERRORS";
    /// Kernel addresses of the `rename_lock` and `mount_lock` seqlocks,
    /// whose sequences tell the directory cache that the tree changed (0:
    /// unknown, and the cache is off).
    pub const RENAME_LOCK: &str = "GUARD_RENAME_LOCK";
    pub const MOUNT_LOCK: &str = "GUARD_MOUNT_LOCK";
    /// The globals of 64 bits; the others are `u32`.
    pub const WIDE: [&str; 3] = [ROOT_CGROUP_ID, RENAME_LOCK, MOUNT_LOCK];
}

/// The generation in force: value of the inner map of [`map::GENERATION`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GenerationInfo {
    /// Counts up from 1 with every policy the daemon applies.
    pub generation: u64,
    /// Slot (0 or 1) whose entries make up this generation.
    pub slot: u32,
    pub _pad: u32,
}

/// A kernel struct member whose byte offset the programs need. Layouts differ
/// between kernels (e.g. `file.f_path` is at 16 on 6.1 and 64 on 6.12), so the
/// loader reads each offset from the running kernel's BTF and sets the global
/// named here; the programs never hard-code one.
#[derive(Clone, Copy, Debug)]
pub struct KernelField {
    /// Name of the `u32` global in the eBPF object.
    pub global: &'static str,
    /// Kernel struct name.
    pub structure: &'static str,
    /// Member path; `.` descends into a nested struct member. Anonymous
    /// unions and structs are searched transparently. `|` separates
    /// alternatives for a member that kernels name differently; the first
    /// one the running kernel has is used.
    pub member: &'static str,
}

macro_rules! kernel_fields {
    ($($global:ident = $structure:literal . $member:literal;)*) => {
        /// Globals holding kernel field offsets, one per entry of [`KERNEL_FIELDS`].
        pub mod offset {
            $(pub const $global: &str = stringify!($global);)*
        }
        /// Every kernel field the programs read.
        pub const KERNEL_FIELDS: &[KernelField] = &[
            $(KernelField { global: stringify!($global), structure: $structure, member: $member },)*
        ];
    };
}

kernel_fields! {
    OFF_BPRM_FILE = "linux_binprm" . "file";
    OFF_FILE_PATH = "file" . "f_path";
    OFF_FILE_INODE = "file" . "f_inode";
    OFF_FILE_FLAGS = "file" . "f_flags";
    OFF_PATH_MNT = "path" . "mnt";
    OFF_PATH_DENTRY = "path" . "dentry";
    OFF_DENTRY_PARENT = "dentry" . "d_parent";
    OFF_DENTRY_NAME_LEN = "dentry" . "d_name.len";
    OFF_DENTRY_NAME = "dentry" . "d_name.name";
    OFF_DENTRY_INODE = "dentry" . "d_inode";
    OFF_INODE_INO = "inode" . "i_ino";
    OFF_INODE_SB = "inode" . "i_sb";
    OFF_INODE_SIZE = "inode" . "i_size";
    OFF_INODE_CTIME_SEC = "inode" . "i_ctime_sec|__i_ctime.tv_sec|i_ctime.tv_sec";
    OFF_INODE_CTIME_NSEC = "inode" . "i_ctime_nsec|__i_ctime.tv_nsec|i_ctime.tv_nsec";
    OFF_SB_DEV = "super_block" . "s_dev";
    OFF_SB_MAGIC = "super_block" . "s_magic";
    OFF_DENTRY_SB = "dentry" . "d_sb";
    OFF_INODE_MODE = "inode" . "i_mode";
    OFF_TASK_TGID = "task_struct" . "tgid";
    OFF_TASK_CGROUPS = "task_struct" . "cgroups";
    OFF_CSS_SET_DFL_CGRP = "css_set" . "dfl_cgrp";
    OFF_CGROUP_KN = "cgroup" . "kn";
    OFF_KERNFS_NODE_ID = "kernfs_node" . "id";
    OFF_KERNFS_NODE_PARENT = "kernfs_node" . "__parent|parent";
    OFF_MOUNT_MNT = "mount" . "mnt";
    OFF_MOUNT_PARENT = "mount" . "mnt_parent";
    OFF_MOUNT_MOUNTPOINT = "mount" . "mnt_mountpoint";
    OFF_VFSMOUNT_ROOT = "vfsmount" . "mnt_root";
    OFF_SOCKET_TYPE = "socket" . "type";
    OFF_MSGHDR_NAME = "msghdr" . "msg_name";
    OFF_MSGHDR_NAMELEN = "msghdr" . "msg_namelen";
    OFF_UNIX_SOCK_ADDR = "unix_sock" . "addr";
    OFF_UNIX_ADDRESS_LEN = "unix_address" . "len";
    OFF_UNIX_ADDRESS_NAME = "unix_address" . "name";
}

/// A BPF LSM hook Guard attaches a program to. `args` is the hook's argument count, from
/// `include/linux/lsm_hook_defs.h`; the previous program's return value
/// follows the arguments in the context, at index `args`. The loader checks
/// `args` against the running kernel's BTF before attaching.
#[derive(Clone, Copy, Debug)]
pub struct LsmHook {
    /// The kernel's hook.
    pub name: &'static str,
    /// The program in the eBPF object: the hook's name, unless the hook has
    /// a second program.
    pub program: &'static str,
    pub args: usize,
    /// A kernel without this hook cannot enforce Guard's promises. Optional
    /// hooks close a route that older kernels send through a required hook.
    pub required: bool,
    /// The program reads only the first `args` arguments and not the
    /// previous program's return value, so a kernel may pass more (newer
    /// kernels append arguments to some hooks, e.g. `bpf`).
    pub leading_args: bool,
    /// The same program for attaching to Guard's root cgroup
    /// (`BPF_LSM_CGROUP`, Linux 6.0+), where the kernel runs it only for
    /// agents: processes outside run no Guard program on this hook. Only
    /// for hooks the kernel decides by the calling process's cgroup (not
    /// those that take a socket, which it decides by the socket's).
    pub per_cgroup: Option<&'static str>,
}

impl LsmHook {
    const fn required(name: &'static str, args: usize) -> Self {
        Self {
            name,
            program: name,
            args,
            required: true,
            leading_args: false,
            per_cgroup: None,
        }
    }
    const fn optional(name: &'static str, args: usize) -> Self {
        Self {
            name,
            program: name,
            args,
            required: false,
            leading_args: false,
            per_cgroup: None,
        }
    }
    const fn leading(name: &'static str, args: usize) -> Self {
        Self {
            name,
            program: name,
            args,
            required: true,
            leading_args: true,
            per_cgroup: None,
        }
    }
    /// Also attachable per cgroup, as `program`.
    const fn per_cgroup(self, program: &'static str) -> Self {
        Self {
            per_cgroup: Some(program),
            ..self
        }
    }
}

/// The hooks, in attach order.
pub mod lsm {
    use super::LsmHook;
    /// `int bprm_check_security(struct linux_binprm *bprm)`
    pub const BPRM_CHECK_SECURITY: LsmHook =
        LsmHook::required("bprm_check_security", 1).per_cgroup("cg_bprm_check_security");
    /// `bprm_check_security` again, in a sleepable program: exec deny rules
    /// by content, which needs the kernel's IMA to hash the file. Optional:
    /// a kernel without IMA cannot load it, and guardd then refuses policies
    /// with such rules.
    pub const EXEC_CONTENT: LsmHook = LsmHook {
        program: "exec_content",
        ..LsmHook::optional("bprm_check_security", 1)
    };
    /// `int path_unlink(const struct path *dir, struct dentry *dentry)`
    pub const PATH_UNLINK: LsmHook =
        LsmHook::required("path_unlink", 2).per_cgroup("cg_path_unlink");
    /// `int path_rmdir(const struct path *dir, struct dentry *dentry)`
    pub const PATH_RMDIR: LsmHook = LsmHook::required("path_rmdir", 2);
    /// `int path_rename(const struct path *old_dir, struct dentry *old_dentry,
    /// const struct path *new_dir, struct dentry *new_dentry, unsigned int flags)`
    /// (`flags` since 5.19).
    pub const PATH_RENAME: LsmHook =
        LsmHook::required("path_rename", 5).per_cgroup("cg_path_rename");
    /// `int path_truncate(const struct path *path)`: truncate(2); before 6.2
    /// also ftruncate(2) and open(O_TRUNC).
    pub const PATH_TRUNCATE: LsmHook = LsmHook::required("path_truncate", 1);
    /// `int file_open(struct file *file)`: open with O_TRUNC of a non-empty file.
    pub const FILE_OPEN: LsmHook = LsmHook::required("file_open", 1).per_cgroup("cg_file_open");
    /// `int file_truncate(struct file *file)` (6.2+): ftruncate(2) and
    /// open(O_TRUNC), which older kernels send through `path_truncate`.
    pub const FILE_TRUNCATE: LsmHook = LsmHook::optional("file_truncate", 1);
    /// `int socket_connect(struct socket *sock, struct sockaddr *address, int addrlen)`
    pub const SOCKET_CONNECT: LsmHook = LsmHook::required("socket_connect", 3);
    /// `int socket_sendmsg(struct socket *sock, struct msghdr *msg, int size)`
    pub const SOCKET_SENDMSG: LsmHook = LsmHook::required("socket_sendmsg", 3);
    /// `int path_mknod(const struct path *dir, struct dentry *dentry,
    /// umode_t mode, unsigned int dev)`: also open with O_CREAT.
    pub const PATH_MKNOD: LsmHook = LsmHook::required("path_mknod", 4).per_cgroup("cg_path_mknod");
    /// `int path_mkdir(const struct path *dir, struct dentry *dentry, umode_t mode)`
    pub const PATH_MKDIR: LsmHook = LsmHook::required("path_mkdir", 3).per_cgroup("cg_path_mkdir");
    /// `int path_symlink(const struct path *dir, struct dentry *dentry,
    /// const char *old_name)`
    pub const PATH_SYMLINK: LsmHook = LsmHook::required("path_symlink", 3);
    /// `int path_link(struct dentry *old_dentry, const struct path *new_dir,
    /// struct dentry *new_dentry)`
    pub const PATH_LINK: LsmHook = LsmHook::required("path_link", 3);
    /// `int bpf(int cmd, union bpf_attr *attr, unsigned int size)`, plus
    /// `bool kernel` since 6.16.
    pub const BPF: LsmHook = LsmHook::leading("bpf", 3);
    /// `int task_kill(struct task_struct *p, struct kernel_siginfo *info,
    /// int sig, const struct cred *cred)`
    pub const TASK_KILL: LsmHook = LsmHook::required("task_kill", 4);
    /// `int ptrace_access_check(struct task_struct *child, unsigned int mode)`
    pub const PTRACE_ACCESS_CHECK: LsmHook = LsmHook::required("ptrace_access_check", 2);
    /// `int sb_mount(const char *dev_name, const struct path *path,
    /// const char *type, unsigned long flags, void *data)`
    pub const SB_MOUNT: LsmHook = LsmHook::required("sb_mount", 5);
    /// `int sb_umount(struct vfsmount *mnt, int flags)`
    pub const SB_UMOUNT: LsmHook = LsmHook::required("sb_umount", 2);
    /// `int sb_remount(struct super_block *sb, void *mnt_opts)`
    pub const SB_REMOUNT: LsmHook = LsmHook::required("sb_remount", 2);
    /// `int move_mount(const struct path *from_path, const struct path *to_path)`
    pub const MOVE_MOUNT: LsmHook = LsmHook::required("move_mount", 2);
    /// `int kernel_read_file(struct file *file, enum kernel_read_file_id id,
    /// bool contents)`: finit_module, kexec, firmware and policy files.
    pub const KERNEL_READ_FILE: LsmHook = LsmHook::required("kernel_read_file", 3);
    /// `int kernel_load_data(enum kernel_load_data_id id, bool contents)`:
    /// init_module and kexec_load from memory.
    pub const KERNEL_LOAD_DATA: LsmHook = LsmHook::required("kernel_load_data", 2);
    /// `int task_alloc(struct task_struct *task, unsigned long clone_flags)`
    pub const TASK_ALLOC: LsmHook = LsmHook::required("task_alloc", 2).per_cgroup("cg_task_alloc");
    /// `int mmap_file(struct file *file, unsigned long reqprot,
    /// unsigned long prot, unsigned long flags)`
    pub const MMAP_FILE: LsmHook = LsmHook::required("mmap_file", 4).per_cgroup("cg_mmap_file");
    /// `int unix_stream_connect(struct sock *sock, struct sock *other,
    /// struct sock *newsk)`: connecting to a listening unix-domain socket.
    pub const UNIX_STREAM_CONNECT: LsmHook = LsmHook::required("unix_stream_connect", 3);

    pub const ALL: &[LsmHook] = &[
        BPRM_CHECK_SECURITY,
        EXEC_CONTENT,
        PATH_UNLINK,
        PATH_RMDIR,
        PATH_RENAME,
        PATH_TRUNCATE,
        FILE_OPEN,
        FILE_TRUNCATE,
        SOCKET_CONNECT,
        SOCKET_SENDMSG,
        PATH_MKNOD,
        PATH_MKDIR,
        PATH_SYMLINK,
        PATH_LINK,
        BPF,
        TASK_KILL,
        PTRACE_ACCESS_CHECK,
        SB_MOUNT,
        SB_UMOUNT,
        SB_REMOUNT,
        MOVE_MOUNT,
        KERNEL_READ_FILE,
        KERNEL_LOAD_DATA,
        TASK_ALLOC,
        MMAP_FILE,
        UNIX_STREAM_CONNECT,
    ];
}

/// Longest resolved exec path that takes part in path matching (LPM key data
/// is at most 256 bytes: 4 bytes of profile id plus this).
pub const EXEC_PATH_KEY_LEN: usize = 248;
/// Bytes of a file name that take part in name matching (its last bytes).
pub const NAME_KEY_LEN: usize = 60;
/// Path bytes carried in a record.
pub const EVENT_PATH_LEN: usize = 256;
/// Port-range rules one network prefix can carry (after inheritance from the
/// shorter prefixes that contain it).
pub const NET_RULES_PER_PREFIX: usize = 8;
/// Deepest directory nesting the file hooks walk when looking for a protected
/// ancestor. Deeper targets are decided by the profile's error policy.
pub const MAX_WALK_DEPTH: u32 = 48;

/// Hook that made a decision. Values are stable ids, never reused.
pub mod hook {
    pub const EXEC: u32 = 1;
    pub const UNLINK: u32 = 2;
    pub const RMDIR: u32 = 3;
    pub const RENAME: u32 = 4;
    pub const TRUNCATE: u32 = 5;
    pub const OPEN_TRUNC: u32 = 6;
    pub const FILE_TRUNCATE: u32 = 7;
    pub const CONNECT: u32 = 8;
    pub const SENDMSG: u32 = 9;
    /// Creating a file: open with O_CREAT, mknod.
    pub const CREATE: u32 = 10;
    pub const MKDIR: u32 = 11;
    pub const SYMLINK: u32 = 12;
    pub const LINK: u32 = 13;
    /// Opening a file for write.
    pub const OPEN_WRITE: u32 = 14;
    /// Renaming a file into a directory (the new entry's side of a rename).
    pub const RENAME_INTO: u32 = 15;
    /// Any bpf(2) command.
    pub const BPF: u32 = 16;
    /// A signal to a process outside Guard's cgroup.
    pub const SIGNAL: u32 = 17;
    /// ptrace attach (or /proc/PID/mem, process_vm_writev, pidfd_getfd) to a
    /// process outside Guard's cgroup.
    pub const PTRACE: u32 = 18;
    pub const MOUNT: u32 = 19;
    pub const UMOUNT: u32 = 20;
    pub const REMOUNT: u32 = 21;
    pub const MOVE_MOUNT: u32 = 22;
    /// Loading a kernel module, kexec image or firmware from a file.
    pub const KERNEL_READ_FILE: u32 = 23;
    /// Loading a kernel module or kexec image from memory.
    pub const KERNEL_LOAD_DATA: u32 = 24;
    /// clone3(2) with CLONE_INTO_CGROUP.
    pub const CLONE_INTO_CGROUP: u32 = 25;
    /// Mapping a file executable (the dynamic loader running a program).
    pub const EXEC_MAP: u32 = 26;
    /// A hard link to a protected file, made where the rule that protects
    /// it does not reach (its content would be writable through it).
    pub const LINK_AWAY: u32 = 27;
    /// Opening one of Guard's secret files ([`super::map::SECRETS`]) to read.
    pub const OPEN_READ: u32 = 28;
    /// Connecting to a guarded database server's unix-domain socket
    /// ([`super::map::DATABASE_SOCKETS`]).
    pub const UNIX_CONNECT: u32 = 29;
}

/// Outcome of a decision.
pub mod verdict {
    pub const ALLOW: u32 = 1;
    pub const DENY: u32 = 2;
    /// Monitor mode: a rule would have denied, the action was allowed.
    pub const WOULD_DENY: u32 = 3;
}

/// What a rule does when it matches.
pub mod action {
    /// Exec and network: deny. Files: deny destruction (a protected file may
    /// still be written).
    pub const DENY: u32 = 1;
    /// Allow (files: writing and destruction).
    pub const ALLOW: u32 = 2;
    /// Files: deny destruction, opening for write and creating entries.
    pub const READ_ONLY: u32 = 3;
}

/// A profile's mode.
pub mod mode {
    pub const ENFORCE: u32 = 1;
    pub const MONITOR: u32 = 2;
}

/// Bits of [`AgentEntry::flags`].
pub mod agent_flag {
    /// Record allowed decisions too, not only denials.
    pub const RECORD_ALLOWED: u32 = 1;
    /// Deny an exec no rule matches.
    pub const EXEC_DEFAULT_DENY: u32 = 1 << 1;
    /// Deny destroying or writing a file no rule matches.
    pub const FILES_DEFAULT_DENY: u32 = 1 << 2;
    /// Deny a network destination no rule matches.
    pub const NETWORK_DEFAULT_DENY: u32 = 1 << 3;
    /// Decide on opening files for write and creating entries (the profile
    /// has read-only rules or denies files by default); otherwise those
    /// actions are not decisions.
    pub const DECIDE_WRITES: u32 = 1 << 4;
    /// Deny an action whose record cannot be reserved (the ring buffer is
    /// full) rather than let it happen unrecorded.
    pub const AUDIT_OR_DENY: u32 = 1 << 5;
    /// Deny an action the hook could not decide (an internal error: kernel
    /// memory it could not read) rather than allow it.
    pub const FAIL_CLOSED: u32 = 1 << 6;
    /// The profile has hostname rules: look the destination up in
    /// [`super::map::HOST_ADDRS`] first.
    pub const HOST_RULES: u32 = 1 << 7;
    /// The profile has exec rules by content: hash each executed file and
    /// look it up in [`super::map::EXEC_DIGESTS`].
    pub const EXEC_DIGESTS: u32 = 1 << 8;
    /// The profile has file name rules: look each file's name up in
    /// [`super::map::FILE_NAMES`].
    pub const NAME_RULES: u32 = 1 << 9;
}

/// `enum hash_algo` id of SHA-256 (include/uapi/linux/hash_info.h), as
/// `bpf_ima_file_hash` returns it.
pub const HASH_ALGO_SHA256: i64 = 4;

/// Bits of [`Event::flags`].
pub mod event_flag {
    /// The path did not fit in [`super::Event::path`] or the walk was cut short.
    pub const PATH_TRUNCATED: u32 = 1;
    /// The path is relative to the file system root the walk reached, which is
    /// not the process's root (e.g. a detached mount).
    pub const PATH_UNROOTED: u32 = 2;
    /// A rule denied the action and an approved ticket
    /// ([`super::Event::detail`]) allowed it.
    pub const APPROVED: u32 = 4;
}

/// Protocols in [`NetRule::protocol`] and [`Event::protocol`].
pub mod protocol {
    pub const ANY: u16 = 0;
    pub const TCP: u16 = 6;
    pub const UDP: u16 = 17;
}

/// Indices into the per-CPU [`map::COUNTERS`] array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// A record could not be reserved in the ring buffer and was lost.
    EventsLost = 0,
    /// A hook could not read kernel memory it needed (an internal error):
    /// it allowed the action, or denied it for a fail-closed profile.
    HookErrors = 1,
    /// A file walk hit [`MAX_WALK_DEPTH`] before reaching a root.
    WalkTooDeep = 2,
    /// Records the hooks tried to write (written or lost).
    RecordsMade = 3,
    /// Actions denied only because their record could not be reserved
    /// (profiles with audit-or-deny).
    UnrecordedDenials = 4,
    /// Internal errors that denied the action (fail-closed profiles); a
    /// part of [`Counter::HookErrors`].
    ErrorDenials = 5,
    /// Written by guardd, never by the programs: how many of
    /// [`Counter::EventsLost`] loss lines have reported, so that a guardd
    /// that adopts pinned programs reports only the rest.
    LossesReported = 6,
    /// A denial's record (see [`map::DENIALS`]) could not be reserved.
    DenialsLost = 7,
    /// Written by guardd: as [`Counter::LossesReported`], for
    /// [`Counter::DenialsLost`].
    DenialLossesReported = 8,
}
/// Number of [`Counter`] slots.
pub const COUNTER_SLOTS: u32 = 9;

/// Key of [`map::AGENTS`]: a session or agent cgroup, in one generation slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AgentKey {
    pub cgroup: u64,
    pub slot: u32,
    pub _pad: u32,
}

/// Value of [`map::AGENTS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentEntry {
    /// The profile id rule keys carry ([`profile_key`]).
    pub profile: u32,
    /// [`mode`] of the profile.
    pub mode: u32,
    /// [`agent_flag`] bits.
    pub flags: u32,
    pub _pad: u32,
    /// The profile's budgets, indexed by [`budget`].
    pub budgets: [Budget; BUDGETS],
}

/// The budgets a profile may set, indexes of [`AgentEntry::budgets`].
pub mod budget {
    /// Destroying files: unlink, rmdir, rename away or over, truncate.
    pub const DESTROY: usize = 0;
    /// Reaching a network destination (address) the session has not
    /// reached before.
    pub const DESTINATIONS: usize = 1;
}
/// Number of [`budget`] kinds.
pub const BUDGETS: usize = 2;

/// A token bucket, as a generic cell rate: one operation per `interval_ns`
/// on average, at most `window_ns / interval_ns` (the burst) at once. The
/// kernel keeps a theoretical arrival time per session ([`BudgetState`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Budget {
    pub interval_ns: u64,
    /// `burst * interval_ns`; 0 when the profile sets no such budget.
    pub window_ns: u64,
}

impl Budget {
    pub const NONE: Budget = Budget {
        interval_ns: 0,
        window_ns: 0,
    };
}

/// Key of [`map::BUDGET_STATE`]: a session (the cgroup whose entry applies)
/// and a [`budget`] index.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BudgetKey {
    pub cgroup: u64,
    pub budget: u32,
    pub _pad: u32,
}

/// Value of [`map::BUDGET_STATE`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BudgetState {
    /// Boot-clock time at which the bucket is full again plus one interval
    /// (GCRA's theoretical arrival time).
    pub tat_ns: u64,
    /// Operations the budget allowed so far.
    pub spent: u64,
}

/// Key of [`map::DESTINATIONS_SEEN`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DestinationKey {
    pub cgroup: u64,
    /// IPv6, or IPv4-mapped.
    pub addr: [u8; 16],
}

/// What an [`ExceptionKey`] names.
pub mod object {
    /// A file, by identity: `object` holds `ino` (8 bytes, native order)
    /// then `dev` (4 bytes).
    pub const FILE: u16 = 1;
    /// A program, by identity, as [`FILE`].
    pub const PROGRAM: u16 = 2;
    /// A network destination: `object` holds the address (IPv6 or
    /// IPv4-mapped), `port` the port.
    pub const DESTINATION: u16 = 3;
    /// A database statement, by its fingerprint (the first 16 bytes of its
    /// text). The statement guard asks guardd for these; they never enter
    /// the kernel's map.
    pub const STATEMENT: u16 = 4;
}

/// Key of [`map::EXCEPTIONS`]: one object, for one session.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ExceptionKey {
    /// The session (the cgroup whose entry applies).
    pub cgroup: u64,
    pub object: [u8; 16],
    pub port: u16,
    /// [`object`] kind.
    pub kind: u16,
    pub _pad: u32,
}

impl ExceptionKey {
    /// A file or program ([`object::FILE`], [`object::PROGRAM`]) by identity.
    pub fn identity(cgroup: u64, kind: u16, dev: u32, ino: u64) -> Self {
        let mut object = [0u8; 16];
        object[..8].copy_from_slice(&ino.to_ne_bytes());
        object[8..12].copy_from_slice(&dev.to_ne_bytes());
        Self {
            cgroup,
            object,
            port: 0,
            kind,
            _pad: 0,
        }
    }

    /// A network destination.
    pub fn destination(cgroup: u64, addr: [u8; 16], port: u16) -> Self {
        Self {
            cgroup,
            object: addr,
            port,
            kind: object::DESTINATION,
            _pad: 0,
        }
    }

    /// A database statement by its fingerprint.
    pub fn statement(cgroup: u64, fingerprint: &str) -> Self {
        let mut object = [0u8; 16];
        let bytes = fingerprint.as_bytes();
        let len = bytes.len().min(16);
        object[..len].copy_from_slice(&bytes[..len]);
        Self {
            cgroup,
            object,
            port: 0,
            kind: object::STATEMENT,
            _pad: 0,
        }
    }

    /// Whether the kernel's map holds it (statements are guardd's alone).
    pub fn in_kernel(&self) -> bool {
        self.kind != object::STATEMENT
    }
}

/// Value of [`map::EXCEPTIONS`]: an approved ticket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Exception {
    /// Boot-clock time after which it no longer applies.
    pub expires_ns: u64,
    /// The ticket's number, carried in the records it allows.
    pub ticket: u32,
    /// Non-zero: one use; the program that uses it removes it, so that two
    /// racing attempts cannot both use it.
    pub once: u32,
}

/// A file's identity: device (kernel `dev_t` encoding, `MAJOR << 20 | MINOR`)
/// and inode number, scoped to one profile.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IdentityKey {
    pub ino: u64,
    pub dev: u32,
    pub profile: u32,
}

/// Value of [`map::EXEC_IDENTITY`]: a rule for one executable.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecIdentityRule {
    pub rule: RuleRef,
    /// With [`exec_flag::PINNED`]: the file's change time (`ctime`) when
    /// guardd hashed it. The rule applies only while the inode still has
    /// this change time: any write to the file changes it.
    pub ctime_sec: i64,
    pub ctime_nsec: u32,
    /// [`exec_flag`] bits.
    pub flags: u32,
}

/// Bits of [`ExecIdentityRule::flags`].
pub mod exec_flag {
    /// The rule pins the file's content (a `sha256` rule).
    pub const PINNED: u32 = 1;
}

/// A matched rule: its id (index into the policy's rule table) and [`action`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleRef {
    pub rule_id: u32,
    pub action: u32,
}

/// Data of an [`map::EXEC_PATHS`] LPM key: profile id (big endian, so it is
/// the leading 32 bits of the prefix) then the path bytes. Exact-path rules
/// include the terminating NUL in their prefix; subtree rules end in `/`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecPathKey {
    pub profile: [u8; 4],
    pub path: [u8; EXEC_PATH_KEY_LEN],
}

/// Data of a [`map::FILE_NAMES`] LPM key: profile id (big endian) then the
/// file name reversed, so that a suffix pattern (`*.sqlite`) is a prefix. An
/// exact-name rule includes a NUL after the reversed name.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NameKey {
    pub profile: [u8; 4],
    pub reversed: [u8; NAME_KEY_LEN],
}

/// Data of a [`map::NET_RULES`] LPM key: profile id (big endian) then an IPv6
/// address; IPv4 is stored IPv4-mapped (`::ffff:a.b.c.d`), so mapped and
/// plain IPv4 destinations meet the same rules.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetKey {
    pub profile: [u8; 4],
    pub addr: [u8; 16],
}

/// Key of [`map::SECRETS`]: a file's identity (the kernel's `dev_t`
/// encoding).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SecretKey {
    pub ino: u64,
    pub dev: u32,
    pub _pad: u32,
}

/// Bytes of a unix-domain socket's name (`sun_path` of `struct sockaddr_un`).
pub const UNIX_PATH_LEN: usize = 108;

/// Key of [`map::DATABASE_SOCKETS`]: a profile id ([`profile_key`]) and the
/// name a database server's listening socket is bound to, as the server
/// bound it (`sun_path`: a path and its NUL, or an abstract name after its
/// leading NUL), zero-padded.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DatabaseSocketKey {
    pub profile: u32,
    pub name: [u8; UNIX_PATH_LEN],
}

/// Key of [`map::ROUTES`]: a profile id ([`profile_key`]) and a database
/// server's address (IPv4 stored IPv4-mapped, as in [`NetKey`]) and port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteKey {
    pub profile: u32,
    pub port: u16,
    pub _pad: u16,
    pub addr: [u8; 16],
}

/// Value of [`map::ROUTES`]: where the connection goes instead, the
/// statement guard's address for that database (IPv4 stored IPv4-mapped).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub addr: [u8; 16],
    pub port: u16,
    pub _pad: [u16; 3],
}

/// The programs that route connections, attached to Guard's root cgroup
/// (cgroup socket-address programs: they run for agents only, and load
/// where BPF LSM does not).
pub mod route {
    /// `connect(2)` of IPv4 sockets.
    pub const CONNECT4: &str = "route_connect4";
    /// `connect(2)` of IPv6 sockets, IPv4-mapped destinations included.
    pub const CONNECT6: &str = "route_connect6";
    pub const PROGRAMS: [&str; 2] = [CONNECT4, CONNECT6];
}

/// One port-range rule of a network prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetRule {
    pub port_lo: u16,
    pub port_hi: u16,
    /// [`protocol`] id; [`protocol::ANY`] matches TCP and UDP.
    pub protocol: u16,
    /// [`action`] id (fits in 16 bits).
    pub action: u16,
    pub rule_id: u32,
}

/// Value of [`map::NET_RULES`]: the rules of the longest matching prefix,
/// followed by those inherited from shorter prefixes; the first match wins.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetRuleSet {
    pub len: u32,
    pub _pad: u32,
    pub rules: [NetRule; NET_RULES_PER_PREFIX],
}

/// One decision, as written to the [`map::EVENTS`] ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Event {
    /// `bpf_ktime_get_boot_ns` at the decision.
    pub boot_ns: u64,
    /// Policy generation that decided ([`GenerationInfo::generation`]).
    pub generation: u64,
    /// cgroup whose [`map::AGENTS`] entry applied: the session's, or the
    /// agent's for a process outside any session.
    pub agent_cgroup: u64,
    /// cgroup the process is in (the session's or one below it).
    pub cgroup: u64,
    /// Target file identity (exec and file hooks), else 0.
    pub ino: u64,
    pub dev: u32,
    pub pid: u32,
    pub tgid: u32,
    pub uid: u32,
    /// [`hook`] id.
    pub hook: u32,
    /// [`verdict`] id.
    pub verdict: u32,
    /// Profile index of the agent.
    pub profile: u32,
    /// Rule that decided, or [`NO_RULE`].
    pub rule_id: u32,
    /// Destination port (host order), network hooks.
    pub port: u16,
    /// `AF_INET` / `AF_INET6`, network hooks.
    pub family: u16,
    /// [`protocol`] id, network hooks.
    pub protocol: u16,
    /// Bytes of `path` in use.
    pub path_len: u16,
    /// [`event_flag`] bits.
    pub flags: u32,
    /// With [`event_flag::APPROVED`]: the ticket. With rule
    /// [`BUDGET_EXCEEDED`]: what the budget had allowed the session.
    pub detail: u32,
    /// Destination address, IPv6 or IPv4-mapped.
    pub addr: [u8; 16],
    pub comm: [u8; 16],
    /// Target path (exec and file hooks), not NUL terminated.
    pub path: [u8; EVENT_PATH_LEN],
}

/// Key of [`map::OWN_NAMES`]: the entry `name` in the directory
/// (`dir_dev`, `dir_ino`). Names longer than [`OWN_NAME_LEN`] are matched
/// on their first bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OwnNameKey {
    pub dir_ino: u64,
    pub dir_dev: u32,
    /// Bytes of `name` in use.
    pub len: u32,
    /// The name, zero-padded.
    pub name: [u8; OWN_NAME_LEN],
}

impl OwnNameKey {
    /// The key that says the directory (`dir_dev`, `dir_ino`) holds one of
    /// the names: the empty name, which no entry has.
    pub const fn dir(dir_dev: u32, dir_ino: u64) -> Self {
        Self {
            dir_ino,
            dir_dev,
            len: 0,
            name: [0; OWN_NAME_LEN],
        }
    }
}

/// Key of [`map::EXEC_DIGESTS`]: a file's SHA-256, in one profile (the
/// profile id carries the generation slot, see [`profile_key`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DigestKey {
    pub sha256: [u8; 32],
    pub profile: u32,
    pub _pad: u32,
}

/// Bytes of a name in an [`OwnNameKey`].
pub const OWN_NAME_LEN: usize = 64;

/// [`Event::rule_id`] when no rule matched: the profile's default decided.
pub const NO_RULE: u32 = u32::MAX;
/// [`Event::rule_id`] of a self-protection denial: an action no agent may
/// take whatever its profile says (bpf(2), mounts, kernel modules, signals
/// to processes outside Guard's cgroup, writes to kernel interfaces).
pub const SELF_PROTECTION: u32 = u32::MAX - 1;
/// [`Event::rule_id`] of a denial by an exhausted budget: the file hooks'
/// is [`budget::DESTROY`], the network hooks' [`budget::DESTINATIONS`].
pub const BUDGET_EXCEEDED: u32 = u32::MAX - 2;
/// [`Event::rule_id`] of a connection refused because it would skip the
/// statement guard: to a guarded database server's unix-domain socket.
pub const STATEMENT_GUARD_ONLY: u32 = u32::MAX - 3;

const _: () = assert!(size_of::<AgentEntry>() == 16 + 16 * BUDGETS);
const _: () = assert!(size_of::<BudgetKey>() == 16);
const _: () = assert!(size_of::<BudgetState>() == 16);
const _: () = assert!(size_of::<DestinationKey>() == 24);
const _: () = assert!(size_of::<ExceptionKey>() == 32);
const _: () = assert!(size_of::<Exception>() == 16);
const _: () = assert!(size_of::<IdentityKey>() == 16);
const _: () = assert!(size_of::<RuleRef>() == 8);
const _: () = assert!(size_of::<ExecIdentityRule>() == 24);
const _: () = assert!(size_of::<ExecPathKey>() == 4 + EXEC_PATH_KEY_LEN);
const _: () = assert!(size_of::<ExecPathKey>() <= 256);
const _: () = assert!(size_of::<NameKey>() == 4 + NAME_KEY_LEN);
const _: () = assert!(size_of::<NetKey>() == 20);
const _: () = assert!(size_of::<NetRule>() == 12);
const _: () = assert!(size_of::<RouteKey>() == 24);
const _: () = assert!(size_of::<DatabaseSocketKey>() == 4 + UNIX_PATH_LEN);
const _: () = assert!(size_of::<SecretKey>() == 16);
const _: () = assert!(size_of::<Route>() == 24);
const _: () = assert!(size_of::<NetRuleSet>() == 8 + 12 * NET_RULES_PER_PREFIX);
const _: () = assert!(size_of::<Event>() == 120 + EVENT_PATH_LEN);
const _: () = assert!(size_of::<AgentKey>() == 16);
const _: () = assert!(size_of::<OwnNameKey>() == 16 + OWN_NAME_LEN);
const _: () = assert!(size_of::<DigestKey>() == 40);
const _: () = assert!(size_of::<GenerationInfo>() == 16);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C), Copy, and have no padding (checked by
    // the size assertions above), so any bit pattern is a valid value.
    unsafe impl aya::Pod for AgentEntry {}
    unsafe impl aya::Pod for AgentKey {}
    unsafe impl aya::Pod for GenerationInfo {}
    unsafe impl aya::Pod for IdentityKey {}
    unsafe impl aya::Pod for RuleRef {}
    unsafe impl aya::Pod for ExecIdentityRule {}
    unsafe impl aya::Pod for ExecPathKey {}
    unsafe impl aya::Pod for NameKey {}
    unsafe impl aya::Pod for NetKey {}
    unsafe impl aya::Pod for RouteKey {}
    unsafe impl aya::Pod for DatabaseSocketKey {}
    unsafe impl aya::Pod for SecretKey {}
    unsafe impl aya::Pod for Route {}
    unsafe impl aya::Pod for NetRule {}
    unsafe impl aya::Pod for NetRuleSet {}
    unsafe impl aya::Pod for Event {}
    unsafe impl aya::Pod for BudgetKey {}
    unsafe impl aya::Pod for BudgetState {}
    unsafe impl aya::Pod for DestinationKey {}
    unsafe impl aya::Pod for ExceptionKey {}
    unsafe impl aya::Pod for Exception {}
    unsafe impl aya::Pod for OwnNameKey {}
    unsafe impl aya::Pod for DigestKey {}
}
