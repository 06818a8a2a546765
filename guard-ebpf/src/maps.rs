//! Every map of the programs. Names and capacities come from
//! `guard_common::{map, capacity}`; the loader looks them up by those names.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LpmTrie, PerCpuArray, RingBuf, lpm_trie::Key},
};
use guard_common::{
    AgentEntry, COUNTER_SLOTS, EVENT_PATH_LEN, ExecPathKey, IdentityKey, NameKey, NetKey,
    NetRuleSet, RuleRef, capacity,
};

/// agent cgroup id → agent entry. Written by the daemon, read by every hook.
#[map]
pub static AGENTS: HashMap<u64, AgentEntry> = HashMap::with_max_entries(capacity::AGENTS, 0);

/// (profile, dev, ino) → rule: executables denied by file identity.
#[map]
pub static EXEC_IDENTITY: HashMap<IdentityKey, RuleRef> =
    HashMap::with_max_entries(capacity::EXEC_IDENTITY, 0);

/// LPM (profile, resolved path) → rule: exec path rules (exact and subtree).
#[map]
pub static EXEC_PATHS: LpmTrie<ExecPathKey, RuleRef> =
    LpmTrie::with_max_entries(capacity::EXEC_PATHS, 0);

/// (profile, dev, ino) → rule: protected files and directory subtrees.
#[map]
pub static FILE_IDENTITY: HashMap<IdentityKey, RuleRef> =
    HashMap::with_max_entries(capacity::FILE_IDENTITY, 0);

/// LPM (profile, reversed file name) → rule: protected names.
#[map]
pub static FILE_NAMES: LpmTrie<NameKey, RuleRef> =
    LpmTrie::with_max_entries(capacity::FILE_NAMES, 0);

/// LPM (profile, IPv6 or IPv4-mapped address) → port-range rules.
#[map]
pub static NET_RULES: LpmTrie<NetKey, NetRuleSet> =
    LpmTrie::with_max_entries(capacity::NET_RULES, 0);

/// Decision records for the daemon.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(capacity::EVENTS_BYTES, 0);

/// Per-CPU counters indexed by `guard_common::Counter`. Read by the daemon.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// Per-CPU scratch space for paths (too large for the 512-byte stack).
#[map]
pub static PATH_SCRATCH: PerCpuArray<PathScratch> = PerCpuArray::with_max_entries(1, 0);

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
    /// Keeps `EVENT_PATH_LEN`-byte copies from `walk` in bounds.
    pub _tail: [u8; EVENT_PATH_LEN],
}
