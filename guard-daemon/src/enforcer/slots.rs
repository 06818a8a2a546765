//! The two generation slots of the rule maps: which keys each holds.

use guard_common::{
    AgentKey, DatabaseSocketKey, DigestKey, ExecPathKey, IdentityKey, NameKey, NetKey, RouteKey,
    profile_key, profile_slot,
};

/// The keys one generation slot holds.
#[derive(Default)]
pub(super) struct SlotKeys {
    pub(super) agents: Vec<AgentKey>,
    pub(super) exec_identity: Vec<IdentityKey>,
    pub(super) exec_paths: Vec<(u32, ExecPathKey)>,
    pub(super) exec_digests: Vec<DigestKey>,
    pub(super) file_identity: Vec<IdentityKey>,
    pub(super) file_names: Vec<(u32, NameKey)>,
    pub(super) net_rules: Vec<(u32, NetKey)>,
    pub(super) host_addrs: Vec<NetKey>,
    pub(super) routes: Vec<RouteKey>,
    pub(super) database_sockets: Vec<DatabaseSocketKey>,
}

pub(super) fn hash_keys_of<K: InSlot, V>(entries: &[(K, V)], slot: u32) -> Vec<K> {
    entries.iter().map(|(k, _)| k.in_slot(slot)).collect()
}

pub(super) fn lpm_keys_of<K: InSlot, V>(entries: &[(u32, K, V)], slot: u32) -> Vec<(u32, K)> {
    entries
        .iter()
        .map(|(bits, k, _)| (*bits, k.in_slot(slot)))
        .collect()
}

/// A key of a generation slot: a rule key's profile id carries the slot.
pub(super) trait InSlot: Copy {
    fn in_slot(self, slot: u32) -> Self;
    fn slot(&self) -> u32;
}

impl InSlot for AgentKey {
    fn in_slot(mut self, slot: u32) -> Self {
        self.slot = slot;
        self
    }
    fn slot(&self) -> u32 {
        self.slot & 1
    }
}

macro_rules! profile_in_slot {
    ($($key:ty),*) => {$(
        impl InSlot for $key {
            fn in_slot(mut self, slot: u32) -> Self {
                self.profile = profile_key(slot, self.profile);
                self
            }
            fn slot(&self) -> u32 {
                profile_slot(self.profile)
            }
        }
    )*};
}
profile_in_slot!(IdentityKey, DigestKey, RouteKey, DatabaseSocketKey);

macro_rules! big_endian_profile_in_slot {
    ($($key:ty),*) => {$(
        impl InSlot for $key {
            fn in_slot(mut self, slot: u32) -> Self {
                self.profile = profile_key(slot, u32::from_be_bytes(self.profile)).to_be_bytes();
                self
            }
            fn slot(&self) -> u32 {
                profile_slot(u32::from_be_bytes(self.profile))
            }
        }
    )*};
}
big_endian_profile_in_slot!(ExecPathKey, NameKey, NetKey);
