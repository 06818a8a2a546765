//! Taking over the programs a previous guardd left pinned, and pinning
//! this guardd's for the next.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use aya::{
    Pod,
    maps::{Array, ArrayOfMaps, HashMap, LpmTrie, Map, MapData, MapError},
    programs::links::{FdLink, LinkType, PinnedLink},
};
use guard_common::{
    AgentKey, DatabaseSocketKey, DigestKey, ExecPathKey, GenerationInfo, IdentityKey, LsmHook,
    NameKey, NetKey, Route, RouteKey, map, route,
};

use super::{
    Adopted, Attachment, Enforcer,
    error::{EnforceError, map_err, missing_map},
    lane::Lane,
    pins::{detach_builds, ensure_bpffs, unread_records},
    slots::{InSlot, SlotKeys},
};

impl Enforcer {
    /// Takes over the links and maps pinned in `dir`.
    pub(super) fn adopt(
        dir: &Path,
        hooks: &[LsmHook],
        unavailable: Vec<&'static str>,
    ) -> Result<Self, EnforceError> {
        let failed = |what: &str, e: &dyn std::fmt::Display| EnforceError::Pin {
            path: dir.to_path_buf(),
            reason: format!("{what}: {e}"),
        };
        let programs: Vec<&'static str> = hooks
            .iter()
            .map(|h| h.program)
            .chain(route::PROGRAMS)
            .collect();
        let mut links = Vec::new();
        let mut per_cgroup = Vec::new();
        for program in &programs {
            let link = FdLink::from(
                PinnedLink::from_pin(dir.join(program)).map_err(|e| failed(program, &e))?,
            );
            // A hook's program on Guard's root cgroup has a cgroup link.
            let on_cgroup = link
                .info()
                .and_then(|info| info.link_type())
                .is_ok_and(|kind| kind == LinkType::Cgroup);
            if on_cgroup && hooks.iter().any(|h| h.program == *program) {
                per_cgroup.push(*program);
            }
            links.push((*program, link));
        }
        let mut maps = BTreeMap::new();
        for name in map::PINNED {
            let map = MapData::from_pin(dir.join(name))
                .and_then(Map::from_map_data)
                .map_err(|e| failed(name, &e))?;
            maps.insert(name, map);
        }
        let attachment = Attachment {
            attached: programs,
            per_cgroup,
            unavailable,
        };
        let mut enforcer = Self::with_maps(
            None,
            maps,
            Vec::new(),
            links,
            Some(dir.to_path_buf()),
            attachment,
        )?;
        enforcer.active = enforcer.generation_in_force()?;
        // The slots' keys are read back, so that each slot can be cleared
        // before it is reused, as if this guardd had written them.
        enforcer.written = enforcer.keys_in_slots()?;
        let mut unreported_losses = 0;
        for lane in Lane::ALL {
            unreported_losses += enforcer
                .counter(lane.lost())?
                .saturating_sub(enforcer.counter(lane.reported())?);
        }
        enforcer.adopted = Some(Adopted {
            generation: enforcer.active.map(|a| a.generation),
            unreported_losses,
        });
        Ok(enforcer)
    }

    /// The generation the programs see, read back from their maps.
    pub(super) fn generation_in_force(&self) -> Result<Option<GenerationInfo>, EnforceError> {
        let data = self
            .maps
            .get(map::GENERATION)
            .ok_or_else(|| missing_map(map::GENERATION))?;
        let outer: ArrayOfMaps<_, MapData> =
            ArrayOfMaps::try_from(data).map_err(map_err(map::GENERATION))?;
        let inner = match outer.get(&0, 0) {
            Ok(inner) => Map::Array(inner),
            Err(MapError::KeyNotFound) => return Ok(None),
            Err(e) => return Err(map_err(map::GENERATION)(e)),
        };
        let inner: Array<_, GenerationInfo> =
            Array::try_from(&inner).map_err(map_err(map::GENERATION))?;
        inner.get(&0, 0).map(Some).map_err(map_err(map::GENERATION))
    }

    /// Every key in the policy maps, by the slot it belongs to.
    pub(super) fn keys_in_slots(&self) -> Result<[SlotKeys; 2], EnforceError> {
        use guard_common::{AgentEntry, ExecIdentityRule, NetRuleSet, RuleRef};
        let [agents_0, agents_1] = self.hash_keys_by_slot::<AgentKey, AgentEntry>(map::AGENTS)?;
        let [exec_identity_0, exec_identity_1] =
            self.hash_keys_by_slot::<IdentityKey, ExecIdentityRule>(map::EXEC_IDENTITY)?;
        let [file_identity_0, file_identity_1] =
            self.hash_keys_by_slot::<IdentityKey, RuleRef>(map::FILE_IDENTITY)?;
        let [exec_paths_0, exec_paths_1] =
            self.lpm_keys_by_slot::<ExecPathKey, RuleRef>(map::EXEC_PATHS)?;
        let [exec_digests_0, exec_digests_1] =
            self.hash_keys_by_slot::<DigestKey, RuleRef>(map::EXEC_DIGESTS)?;
        let [file_names_0, file_names_1] =
            self.lpm_keys_by_slot::<NameKey, RuleRef>(map::FILE_NAMES)?;
        let [net_rules_0, net_rules_1] =
            self.lpm_keys_by_slot::<NetKey, NetRuleSet>(map::NET_RULES)?;
        let [host_addrs_0, host_addrs_1] =
            self.hash_keys_by_slot::<NetKey, NetRuleSet>(map::HOST_ADDRS)?;
        let [routes_0, routes_1] = self.hash_keys_by_slot::<RouteKey, Route>(map::ROUTES)?;
        let [database_sockets_0, database_sockets_1] =
            self.hash_keys_by_slot::<DatabaseSocketKey, Route>(map::DATABASE_SOCKETS)?;
        Ok([
            SlotKeys {
                agents: agents_0,
                exec_identity: exec_identity_0,
                exec_paths: exec_paths_0,
                exec_digests: exec_digests_0,
                file_identity: file_identity_0,
                file_names: file_names_0,
                net_rules: net_rules_0,
                host_addrs: host_addrs_0,
                routes: routes_0,
                database_sockets: database_sockets_0,
            },
            SlotKeys {
                agents: agents_1,
                exec_identity: exec_identity_1,
                exec_paths: exec_paths_1,
                exec_digests: exec_digests_1,
                file_identity: file_identity_1,
                file_names: file_names_1,
                net_rules: net_rules_1,
                host_addrs: host_addrs_1,
                routes: routes_1,
                database_sockets: database_sockets_1,
            },
        ])
    }

    pub(super) fn hash_keys_by_slot<K: Pod + InSlot, V: Pod>(
        &self,
        name: &'static str,
    ) -> Result<[Vec<K>; 2], EnforceError> {
        let m: HashMap<_, K, V> = self.map_ref(name)?;
        let mut slots = [Vec::new(), Vec::new()];
        for key in m.keys() {
            let key = key.map_err(map_err(name))?;
            slots[key.slot() as usize].push(key);
        }
        Ok(slots)
    }

    pub(super) fn lpm_keys_by_slot<K: Pod + InSlot, V: Pod>(
        &self,
        name: &'static str,
    ) -> Result<[Vec<(u32, K)>; 2], EnforceError> {
        let m: LpmTrie<_, K, V> = self.map_ref(name)?;
        let mut slots = [Vec::new(), Vec::new()];
        for key in m.keys() {
            let key = key.map_err(map_err(name))?;
            slots[key.data().slot() as usize].push((key.prefix_len(), key.data()));
        }
        Ok(slots)
    }

    /// Pins the links and maps (before [`Self::take_events`] takes the ring
    /// buffer), so that the programs stay attached when this guardd ends, and removes the pins of any other build (which
    /// detaches those programs: these are attached already, so agents are
    /// never without programs). Returns the records the replaced programs
    /// made that no guardd read, and their unreported losses.
    pub fn pin(&mut self) -> Result<u64, EnforceError> {
        let Some(dir) = self.pins.clone() else {
            return Ok(0);
        };
        let failed = |path: &Path, what: &str, e: &dyn std::fmt::Display| EnforceError::Pin {
            path: path.to_path_buf(),
            reason: format!("{what}: {e}"),
        };
        let root = dir.parent().expect("a build directory has a parent");
        ensure_bpffs();
        if let Some(ebpf) = &mut self.ebpf {
            // Pinned in a staging directory, moved into place when whole.
            let mut staging = dir.as_os_str().to_owned();
            staging.push("_staging");
            let staging = PathBuf::from(staging);
            let _ = std::fs::remove_dir_all(&staging);
            std::fs::create_dir_all(&staging).map_err(|e| failed(&staging, "create", &e))?;
            let slots = map::GENERATION_SLOTS.iter().zip(&self.generation_slots);
            for (name, map) in self.maps.iter().chain(slots) {
                map.pin(staging.join(name))
                    .map_err(|e| failed(&staging, name, &e))?;
            }
            for (name, link) in std::mem::take(&mut self.unpinned) {
                let pinned = super::take_link(ebpf, name, link)?
                    .pin(staging.join(name))
                    .map_err(|e| failed(&staging, name, &e))?;
                self.links.push((name, FdLink::from(pinned)));
            }
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::rename(&staging, &dir).map_err(|e| failed(&dir, "rename", &e))?;
        }
        // Detached before any session starts: their policy does not know
        // the sessions this guardd starts, so they would lock them.
        let others: Vec<PathBuf> = crate::cgroup::subdirs(root).filter(|d| *d != dir).collect();
        let unread = others.iter().map(|other| unread_records(other)).sum();
        detach_builds(&others).map_err(|e| failed(root, "replace", &e))?;
        if !others.is_empty() {
            tracing::info!(
                ?others,
                unread,
                "replaced the programs of another build that a previous guardd left attached"
            );
        }
        Ok(unread)
    }

    /// Whether the programs stay attached when this guardd ends.
    pub fn pinned(&self) -> bool {
        self.pins.is_some() && self.unpinned.is_empty() && !self.links.is_empty()
    }
}
