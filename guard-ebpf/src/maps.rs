//! Every map of the programs. Names and capacities come from
//! `guard_common::{map, capacity}`; the loader looks them up by those names.

use aya_ebpf::{
    btf_maps::{Array, ArrayOfMaps, InodeStorage},
    macros::{btf_map, map},
    maps::{
        Array as PlainArray, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key,
    },
};
use guard_common::{
    AgentEntry, AgentKey, BUDGETS, BudgetKey, BudgetState, COUNTER_SLOTS, DatabaseSocketKey,
    DestinationKey, DigestKey, EVENT_PATH_LEN, Exception, ExceptionKey, ExecIdentityRule,
    ExecPathKey, GenerationInfo, IdentityKey, NameKey, NetKey, NetRuleSet, OwnNameKey, Route,
    RouteKey, RuleRef, SLOTS, SecretKey, capacity,
};

/// The generation in force: element 0 is an array map holding its
/// `GenerationInfo`. The daemon switches generations by replacing that inner
/// map, one atomic update; the kernel then waits for running programs to
/// finish before the update returns, so the daemon knows when the old slot
/// is idle.
#[btf_map]
pub static GENERATION: ArrayOfMaps<Array<GenerationInfo, 1>, 1> = ArrayOfMaps::new();

/// The inner maps `GENERATION` switches between, one per slot. Declared
/// here, not created by the daemon, so that they are created from the same
/// BTF as `GENERATION`'s inner-map template: 6.1 refuses an inner map whose
/// BTF-derived metadata differs from the template's.
#[btf_map]
pub static GENERATION_SLOT_0: Array<GenerationInfo, 1> = Array::new();
#[btf_map]
pub static GENERATION_SLOT_1: Array<GenerationInfo, 1> = Array::new();

/// (cgroup, slot) → agent entry. Written by the daemon, read by every hook.
#[map]
pub static AGENTS: HashMap<AgentKey, AgentEntry> =
    HashMap::with_max_entries(capacity::AGENTS * SLOTS, 0);

/// (profile, dev, ino) → rule: exec rules by file identity.
#[map]
pub static EXEC_IDENTITY: HashMap<IdentityKey, ExecIdentityRule> =
    HashMap::with_max_entries(capacity::EXEC_IDENTITY * SLOTS, 0);

/// LPM (profile, resolved path) → rule: exec path rules (exact and subtree).
#[map]
pub static EXEC_PATHS: LpmTrie<ExecPathKey, RuleRef> =
    LpmTrie::with_max_entries(capacity::EXEC_PATHS * SLOTS, 0);

/// (profile, SHA-256) → rule: exec deny rules by content.
#[map]
pub static EXEC_DIGESTS: HashMap<DigestKey, RuleRef> =
    HashMap::with_max_entries(capacity::EXEC_DIGESTS * SLOTS, 0);

/// (profile, dev, ino) → rule: protected files and directory subtrees.
#[map]
pub static FILE_IDENTITY: HashMap<IdentityKey, RuleRef> =
    HashMap::with_max_entries(capacity::FILE_IDENTITY * SLOTS, 0);

/// LPM (profile, reversed file name) → rule: protected names.
#[map]
pub static FILE_NAMES: LpmTrie<NameKey, RuleRef> =
    LpmTrie::with_max_entries(capacity::FILE_NAMES * SLOTS, 0);

/// LPM (profile, IPv6 or IPv4-mapped address) → port-range rules.
#[map]
pub static NET_RULES: LpmTrie<NetKey, NetRuleSet> =
    LpmTrie::with_max_entries(capacity::NET_RULES * SLOTS, 0);

/// (profile, address) → the rules of the hostnames that resolved to it.
#[map]
pub static HOST_ADDRS: HashMap<NetKey, NetRuleSet> =
    HashMap::with_max_entries(capacity::HOST_ADDRS * SLOTS, 0);

/// A directory's walk result (`kernel::guard_file_rule`) and what it was
/// found under: the generation, profile and mount (by address), and the
/// sequences of the kernel's `rename_lock` and `mount_lock` (`dir_cache`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct KeptRule {
    pub generation: u64,
    pub vfsmount: u64,
    pub profile: u32,
    pub renames: u32,
    pub mounts: u32,
    pub _pad: u32,
    pub packed: u64,
}

/// Each directory's kept walk result, on its inode (freed with it).
#[btf_map]
pub static DIR_RULES: InodeStorage<KeptRule> = InodeStorage::new();

/// Files no agent may open at all (identity → 1). Written by the daemon.
#[map]
pub static SECRETS: HashMap<SecretKey, u8> = HashMap::with_max_entries(capacity::SECRETS, 0);

/// (profile, server address, port) → the statement guard's address: the
/// database connections routed to the guard.
#[map]
pub static ROUTES: HashMap<RouteKey, Route> =
    HashMap::with_max_entries(capacity::ROUTES * SLOTS, 0);

/// (profile, bound name) → the statement guard's address: the unix-domain
/// sockets of guarded database servers, closed to the profile's agents.
#[map]
pub static DATABASE_SOCKETS: HashMap<DatabaseSocketKey, Route> =
    HashMap::with_max_entries(capacity::DATABASE_SOCKETS * SLOTS, 0);

/// Records of allowed actions for the daemon.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(capacity::EVENTS_BYTES, 0);

/// Records of denials, would-denials and approved actions: a lane of their
/// own, which allowed records cannot fill.
#[map]
pub static DENIALS: RingBuf = RingBuf::with_byte_size(capacity::DENIALS_BYTES, 0);

/// (directory, name) → 1: the entries on the way to Guard's own files.
/// Written by the daemon.
#[map]
pub static OWN_NAMES: HashMap<OwnNameKey, u8> = HashMap::with_max_entries(capacity::OWN_NAMES, 0);

/// `guard_common::spool_flag` bits, written by the daemon.
#[map]
pub static SPOOL_STATE: PlainArray<u32> = PlainArray::with_max_entries(1, 0);

/// Per-CPU counters indexed by `guard_common::Counter`. Read by the daemon.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// (session, budget) → what the session spent. Written by the hooks; the
/// daemon removes a session's entries to reset its budgets.
#[map]
pub static BUDGET_STATE: HashMap<BudgetKey, BudgetState> =
    HashMap::with_max_entries(capacity::AGENTS * BUDGETS as u32, 0);

/// (session, address) → 1: destinations each session has reached.
#[map]
pub static DESTINATIONS_SEEN: LruHashMap<DestinationKey, u8> =
    LruHashMap::with_max_entries(capacity::DESTINATIONS_SEEN, 0);

/// (session, object) → approved ticket. Written by the daemon; a hook
/// removes a one-use entry when it uses it.
#[map]
pub static EXCEPTIONS: HashMap<ExceptionKey, Exception> =
    HashMap::with_max_entries(capacity::EXCEPTIONS, 0);

/// Per-CPU scratch space for paths (too large for the 512-byte stack).
#[map]
pub static PATH_SCRATCH: PerCpuArray<PathScratch> = PerCpuArray::with_max_entries(1, 0);

/// The per-CPU path scratch space.
pub fn path_scratch() -> Option<&'static mut PathScratch> {
    // SAFETY: per-CPU value, used by one program at a time on this CPU.
    PATH_SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// Bytes `bpf_d_path` may write (the kernel's `PATH_MAX`).
pub const D_PATH_LEN: usize = 4096;
/// Bytes available for a path built by walking dentries, back to front.
pub const WALK_LEN: usize = 1024;

#[repr(C)]
pub struct PathScratch {
    /// `bpf_d_path` output.
    pub d_path: [u8; D_PATH_LEN],
    /// Path built by `kernel::build_path`; the tail guards masked writes.
    pub walk: [u8; WALK_LEN + 256],
    /// Where the built path starts in `walk`. Kept in map memory, not in a
    /// register, so the verifier does not track its exact range from
    /// iteration to iteration (which defeats state pruning).
    pub walk_pos: u64,
    /// A file name, for name matching.
    pub name: [u8; 256],
    /// Lookup keys, here because the LPM keys are large.
    pub exec_key: Key<ExecPathKey>,
    pub name_key: Key<NameKey>,
    pub own_key: OwnNameKey,
    /// A directory's walk result to keep (inode storage is filled from a
    /// map value, not the stack).
    pub kept_rule: KeptRule,
    pub socket_key: DatabaseSocketKey,
    /// Keeps `EVENT_PATH_LEN`-byte copies from `walk` in bounds.
    pub _tail: [u8; EVENT_PATH_LEN],
}
