//! Writing a compiled policy into the maps as a generation, and switching
//! the generation in force atomically.

use aya::{
    Pod,
    maps::{Array, ArrayOfMaps, HashMap, LpmTrie, Map, MapData, lpm_trie::Key},
};
use guard_common::{
    AgentKey, DatabaseSocketKey, DigestKey, ExecPathKey, GenerationInfo, IdentityKey, NameKey,
    NetKey, NetRuleSet, Route, RouteKey, lsm, map, profile_key,
};

use guard_policy::compile::CompiledPolicy;

use super::{
    Enforcer,
    error::{EnforceError, is_not_found, map_err, missing_map},
    slots::{InSlot, SlotKeys, hash_keys_of, lpm_keys_of},
};

impl Enforcer {
    /// Publishes `policy` as the next generation, with `cgroups` the agent
    /// and session cgroups and the index of the profile each runs. The new
    /// generation is written into the idle slot, then switched to in one
    /// update. If anything fails before the switch, the generation in force
    /// stays in force, untouched.
    /// `hosts` are the entries of `policy`'s hostname rules on the
    /// addresses resolved so far, `routes` its routes (the database servers
    /// given by address, and the addresses of those named by host name
    /// resolved so far); profile indexes as in `policy`.
    pub fn publish(
        &mut self,
        policy: &CompiledPolicy,
        hosts: &[(NetKey, NetRuleSet)],
        routes: &[(RouteKey, Route)],
        cgroups: &[(u64, u32)],
    ) -> Result<GenerationInfo, EnforceError> {
        if !policy.exec_digests.is_empty()
            && !self
                .attachment
                .attached
                .contains(&lsm::EXEC_CONTENT.program)
        {
            return Err(EnforceError::NoContentRules);
        }
        let next = match self.active {
            Some(active) => GenerationInfo {
                generation: active.generation + 1,
                slot: 1 - active.slot,
                _pad: 0,
            },
            None => GenerationInfo {
                generation: 1,
                slot: 0,
                _pad: 0,
            },
        };
        let slot = next.slot;
        // Idle: the last switch away from it waited for every program that
        // could still be reading it.
        self.clear_slot(slot)?;
        // The keys are noted before they are written, so that a failure part
        // way leaves nothing in the slot that the next clear misses
        // (removing a key that was never written is harmless).
        self.written[slot as usize] = SlotKeys {
            agents: Vec::new(),
            exec_identity: hash_keys_of(&policy.exec_identity, slot),
            exec_paths: lpm_keys_of(&policy.exec_paths, slot),
            exec_digests: hash_keys_of(&policy.exec_digests, slot),
            file_identity: hash_keys_of(&policy.file_identity, slot),
            file_names: lpm_keys_of(&policy.file_names, slot),
            net_rules: lpm_keys_of(&policy.net_rules, slot),
            host_addrs: hash_keys_of(hosts, slot),
            routes: hash_keys_of(routes, slot),
            database_sockets: hash_keys_of(&policy.database_sockets, slot),
        };
        self.write_hash(map::EXEC_IDENTITY, slot, &policy.exec_identity)?;
        self.write_lpm(map::EXEC_PATHS, slot, &policy.exec_paths)?;
        self.write_hash(map::EXEC_DIGESTS, slot, &policy.exec_digests)?;
        self.write_hash(map::FILE_IDENTITY, slot, &policy.file_identity)?;
        self.write_lpm(map::FILE_NAMES, slot, &policy.file_names)?;
        self.write_lpm(map::NET_RULES, slot, &policy.net_rules)?;
        self.write_hash(map::HOST_ADDRS, slot, hosts)?;
        self.write_hash(map::ROUTES, slot, routes)?;
        self.write_hash(map::DATABASE_SOCKETS, slot, &policy.database_sockets)?;
        for &(cgroup, profile) in cgroups {
            self.add_cgroup_in(slot, policy, cgroup, profile)?;
        }
        self.switch_to(next)?;
        self.active = Some(next);
        Ok(next)
    }

    /// Adds a cgroup running profile `profile` of `policy` (the generation
    /// in force) to the generation in force.
    pub fn add_cgroup(
        &mut self,
        policy: &CompiledPolicy,
        cgroup: u64,
        profile: u32,
    ) -> Result<(), EnforceError> {
        let slot = self.active.map(|a| a.slot).unwrap_or(0);
        self.add_cgroup_in(slot, policy, cgroup, profile)
    }

    /// Removes a cgroup from the generation in force.
    pub fn remove_cgroup(&mut self, cgroup: u64) -> Result<(), EnforceError> {
        let Some(active) = self.active else {
            return Ok(());
        };
        let key = AgentKey {
            cgroup,
            slot: active.slot,
            _pad: 0,
        };
        let mut agents: HashMap<_, AgentKey, guard_common::AgentEntry> = self.map(map::AGENTS)?;
        match agents.remove(&key) {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(map_err(map::AGENTS)(e)),
        }
        self.written[active.slot as usize]
            .agents
            .retain(|k| *k != key);
        Ok(())
    }

    pub(super) fn add_cgroup_in(
        &mut self,
        slot: u32,
        policy: &CompiledPolicy,
        cgroup: u64,
        profile: u32,
    ) -> Result<(), EnforceError> {
        let mut entry = policy.profiles[profile as usize].1;
        entry.profile = profile_key(slot, profile);
        let key = AgentKey {
            cgroup,
            slot,
            _pad: 0,
        };
        self.written[slot as usize].agents.push(key);
        let mut agents: HashMap<_, AgentKey, guard_common::AgentEntry> = self.map(map::AGENTS)?;
        agents.insert(key, entry, 0).map_err(map_err(map::AGENTS))
    }

    /// Makes `info` the generation in force: one update of the outer map,
    /// which returns only after every program that could still see the old
    /// generation has finished (the kernel waits for an RCU grace period on
    /// updates of map-in-map maps, `maybe_wait_bpf_programs`).
    pub(super) fn switch_to(&mut self, info: GenerationInfo) -> Result<(), EnforceError> {
        let name = map::GENERATION_SLOTS[info.slot as usize];
        let slot = &mut self.generation_slots[info.slot as usize];
        let mut inner: Array<_, GenerationInfo> =
            Array::try_from(&mut *slot).map_err(map_err(name))?;
        inner.set(0, info, 0).map_err(map_err(name))?;
        let Map::Array(inner) = &*slot else {
            return Err(missing_map(name));
        };
        let data = self
            .maps
            .get_mut(map::GENERATION)
            .ok_or_else(|| missing_map(map::GENERATION))?;
        let mut outer: ArrayOfMaps<_, MapData> =
            ArrayOfMaps::try_from(data).map_err(map_err(map::GENERATION))?;
        outer.set(0, inner, 0).map_err(map_err(map::GENERATION))
    }

    /// Removes every entry of `slot`. On failure the keys stay noted, for
    /// the next attempt.
    pub(super) fn clear_slot(&mut self, slot: u32) -> Result<(), EnforceError> {
        let keys = std::mem::take(&mut self.written[slot as usize]);
        let result = self.remove_keys(&keys);
        if result.is_err() {
            self.written[slot as usize] = keys;
        }
        result
    }

    pub(super) fn remove_keys(&mut self, keys: &SlotKeys) -> Result<(), EnforceError> {
        self.remove_hash::<AgentKey, guard_common::AgentEntry>(map::AGENTS, &keys.agents)?;
        self.remove_hash::<IdentityKey, guard_common::ExecIdentityRule>(
            map::EXEC_IDENTITY,
            &keys.exec_identity,
        )?;
        self.remove_lpm::<ExecPathKey, guard_common::RuleRef>(map::EXEC_PATHS, &keys.exec_paths)?;
        self.remove_hash::<DigestKey, guard_common::RuleRef>(
            map::EXEC_DIGESTS,
            &keys.exec_digests,
        )?;
        self.remove_hash::<IdentityKey, guard_common::RuleRef>(
            map::FILE_IDENTITY,
            &keys.file_identity,
        )?;
        self.remove_lpm::<NameKey, guard_common::RuleRef>(map::FILE_NAMES, &keys.file_names)?;
        self.remove_lpm::<NetKey, guard_common::NetRuleSet>(map::NET_RULES, &keys.net_rules)?;
        self.remove_hash::<NetKey, guard_common::NetRuleSet>(map::HOST_ADDRS, &keys.host_addrs)?;
        self.remove_hash::<RouteKey, Route>(map::ROUTES, &keys.routes)?;
        self.remove_hash::<DatabaseSocketKey, Route>(map::DATABASE_SOCKETS, &keys.database_sockets)
    }

    /// Replaces the hostname entries of the generation in force, after
    /// guardd resolved a name again. Each entry changes atomically; a
    /// decision meanwhile sees an address's old rules or its new ones.
    pub fn set_host_addrs(&mut self, hosts: &[(NetKey, NetRuleSet)]) -> Result<(), EnforceError> {
        self.replace_in_force(map::HOST_ADDRS, hosts, |keys| &mut keys.host_addrs)
    }

    /// Replaces the routes of the generation in force, after guardd
    /// resolved a database server's name again (as [`Self::set_host_addrs`]).
    pub fn set_routes(&mut self, routes: &[(RouteKey, Route)]) -> Result<(), EnforceError> {
        self.replace_in_force(map::ROUTES, routes, |keys| &mut keys.routes)
    }

    /// Makes `entries` the entries of map `name` in the generation in
    /// force; `keys` picks the slot's record of that map's keys.
    fn replace_in_force<K: Pod + InSlot + PartialEq, V: Pod>(
        &mut self,
        name: &'static str,
        entries: &[(K, V)],
        keys: fn(&mut SlotKeys) -> &mut Vec<K>,
    ) -> Result<(), EnforceError> {
        let Some(active) = self.active else {
            return Ok(());
        };
        let slot = active.slot;
        let new = hash_keys_of(entries, slot);
        let written = keys(&mut self.written[slot as usize]);
        let gone: Vec<K> = written
            .iter()
            .filter(|key| !new.contains(key))
            .copied()
            .collect();
        // Noted first, as in `publish`, so a failure part way leaves no
        // key behind that the next clear misses.
        written.extend(new.iter().copied());
        self.write_hash(name, slot, entries)?;
        self.remove_hash::<K, V>(name, &gone)?;
        *keys(&mut self.written[slot as usize]) = new;
        Ok(())
    }

    pub(super) fn write_hash<K: Pod + InSlot, V: Pod>(
        &mut self,
        name: &'static str,
        slot: u32,
        entries: &[(K, V)],
    ) -> Result<(), EnforceError> {
        let mut m: HashMap<_, K, V> = self.map(name)?;
        for (k, v) in entries {
            m.insert(k.in_slot(slot), v, 0).map_err(map_err(name))?;
        }
        Ok(())
    }

    pub(super) fn write_lpm<K: Pod + InSlot, V: Pod>(
        &mut self,
        name: &'static str,
        slot: u32,
        entries: &[(u32, K, V)],
    ) -> Result<(), EnforceError> {
        let mut m: LpmTrie<_, K, V> = self.map(name)?;
        for (bits, k, v) in entries {
            m.insert(&Key::new(*bits, k.in_slot(slot)), v, 0)
                .map_err(map_err(name))?;
        }
        Ok(())
    }

    pub(super) fn remove_hash<K: Pod, V: Pod>(
        &mut self,
        name: &'static str,
        keys: &[K],
    ) -> Result<(), EnforceError> {
        let mut m: HashMap<_, K, V> = self.map(name)?;
        for k in keys {
            match m.remove(k) {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(map_err(name)(e)),
            }
        }
        Ok(())
    }

    pub(super) fn remove_lpm<K: Pod, V: Pod>(
        &mut self,
        name: &'static str,
        keys: &[(u32, K)],
    ) -> Result<(), EnforceError> {
        let mut m: LpmTrie<_, K, V> = self.map(name)?;
        for (bits, k) in keys {
            match m.remove(&Key::new(*bits, *k)) {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(map_err(name)(e)),
            }
        }
        Ok(())
    }
}
