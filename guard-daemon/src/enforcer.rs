//! The one owner of kernel state: checks that this host can enforce, loads
//! and attaches the programs, and writes a compiled policy into their maps.

use std::{io, path::Path};

use aya::{
    Btf, Ebpf, EbpfError, EbpfLoader, Pod,
    maps::{
        Array, ArrayOfMaps, HashMap, LpmTrie, MapData, MapError, PerCpuArray, RingBuf,
        lpm_trie::Key,
    },
    programs::{Lsm, ProgramError},
};
use guard_common::{
    AgentKey, Counter, ExecPathKey, GenerationInfo, IdentityKey, KERNEL_FIELDS, LsmHook, NameKey,
    NetKey, global, lsm, map, profile_key,
};

use crate::{
    cgroup::{CgroupError, GuardRoot},
    compile::CompiledPolicy,
    kernel_layout::{KernelLayout, LayoutError},
};

/// The programs, built by build.rs from guard-ebpf.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/guard"));

const SECURITYFS_LSM: &str = "/sys/kernel/security/lsm";

/// Why Guard cannot enforce on this host, or failed while setting up.
#[derive(Debug, thiserror::Error)]
pub enum EnforceError {
    #[error(
        "cannot read the active LSM list at {SECURITYFS_LSM}: {0}. Mount securityfs (`mount -t securityfs securityfs /sys/kernel/security`) and check that the kernel has CONFIG_SECURITY=y"
    )]
    LsmList(io::Error),
    #[error(
        "BPF LSM is not active on this kernel: the active LSMs are `{active}`. Add `bpf` to the kernel's `lsm=` boot parameter (for example `lsm={active},bpf`) and reboot; the kernel also needs CONFIG_BPF_LSM=y"
    )]
    BpfLsmInactive { active: String },
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("cannot parse the kernel's BTF for program loading: {0}")]
    Btf(#[source] aya::BtfError),
    #[error("cannot load the eBPF object: {0}")]
    Object(#[source] EbpfError),
    #[error("the eBPF object has no program `{0}`; the build is inconsistent")]
    NoProgram(&'static str),
    #[error(
        "the kernel refused to load BPF LSM program `{program}` with EPERM although `bpf` is an active LSM. This kernel does not allow BPF trampolines (ftrace patching disabled, or lockdown), so BPF LSM cannot enforce here. Guard is not enforcing"
    )]
    LoadRefused { program: &'static str },
    #[error("cannot load BPF LSM program `{program}`: {source}")]
    Load {
        program: &'static str,
        source: ProgramError,
    },
    #[error("cannot attach BPF LSM program `{program}`: {source}")]
    Attach {
        program: &'static str,
        source: ProgramError,
    },
    #[error("map `{name}`: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
}

impl EnforceError {
    /// Errors that mean "this host cannot enforce", as opposed to a fault.
    pub fn is_unsupported_host(&self) -> bool {
        matches!(
            self,
            EnforceError::LsmList(_)
                | EnforceError::BpfLsmInactive { .. }
                | EnforceError::Layout(_)
                | EnforceError::LoadRefused { .. }
        )
    }
}

/// Checks that BPF LSM is an active LSM, mounting securityfs if needed.
pub fn check_bpf_lsm_active() -> Result<(), EnforceError> {
    if !Path::new(SECURITYFS_LSM).exists() {
        // Ignore failure: the read below reports the problem.
        let _ = nix::mount::mount(
            Some("securityfs"),
            "/sys/kernel/security",
            Some("securityfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        );
    }
    let active = std::fs::read_to_string(SECURITYFS_LSM).map_err(EnforceError::LsmList)?;
    let active = active.trim().to_string();
    if active.split(',').any(|l| l == "bpf") {
        Ok(())
    } else {
        Err(EnforceError::BpfLsmInactive { active })
    }
}

/// Hooks attached, and optional hooks this kernel lacks.
#[derive(Debug, Default)]
pub struct Attachment {
    pub attached: Vec<&'static str>,
    pub unavailable: Vec<&'static str>,
}

/// Loaded and attached programs. Dropping it detaches them.
pub struct Enforcer {
    ebpf: Ebpf,
    pub attachment: Attachment,
    /// The generation in force; `None` until the first [`Self::publish`].
    active: Option<GenerationInfo>,
    /// Keys written into each slot, to clear the slot before it is reused.
    written: [SlotKeys; 2],
    /// The inner map of [`map::GENERATION`] for each slot.
    generation_slots: [Array<MapData, GenerationInfo>; 2],
}

/// The keys one generation slot holds.
#[derive(Default)]
struct SlotKeys {
    agents: Vec<AgentKey>,
    exec_identity: Vec<IdentityKey>,
    exec_paths: Vec<(u32, ExecPathKey)>,
    file_identity: Vec<IdentityKey>,
    file_names: Vec<(u32, NameKey)>,
    net_rules: Vec<(u32, NetKey)>,
}

fn hash_keys_of<K: InSlot, V>(entries: &[(K, V)], slot: u32) -> Vec<K> {
    entries.iter().map(|(k, _)| k.in_slot(slot)).collect()
}

fn lpm_keys_of<K: InSlot, V>(entries: &[(u32, K, V)], slot: u32) -> Vec<(u32, K)> {
    entries
        .iter()
        .map(|(bits, k, _)| (*bits, k.in_slot(slot)))
        .collect()
}

/// A rule key moved into a generation slot: its profile id gets the slot.
trait InSlot: Copy {
    fn in_slot(self, slot: u32) -> Self;
}

impl InSlot for IdentityKey {
    fn in_slot(mut self, slot: u32) -> Self {
        self.profile = profile_key(slot, self.profile);
        self
    }
}

macro_rules! big_endian_profile_in_slot {
    ($($key:ty),*) => {$(
        impl InSlot for $key {
            fn in_slot(mut self, slot: u32) -> Self {
                self.profile = profile_key(slot, u32::from_be_bytes(self.profile)).to_be_bytes();
                self
            }
        }
    )*};
}
big_endian_profile_in_slot!(ExecPathKey, NameKey, NetKey);

impl Enforcer {
    /// Checks the host, loads the programs with this kernel's layout, and
    /// attaches every hook. Agents stay untouched until [`Self::publish`].
    pub fn load(root: &GuardRoot) -> Result<Self, EnforceError> {
        check_bpf_lsm_active()?;
        let layout = KernelLayout::from_sys()?;
        let mut hooks = Vec::new();
        let mut attachment = Attachment::default();
        // For the readiness test only: leave named hooks unattached, to prove
        // that the canary notices.
        let skipped = std::env::var("GUARD_FAULT_SKIP_HOOK").unwrap_or_default();
        for hook in lsm::ALL {
            if skipped.split(',').any(|h| h == hook.name) {
                tracing::warn!(
                    hook = hook.name,
                    "GUARD_FAULT_SKIP_HOOK: not attaching this hook"
                );
                continue;
            }
            match layout.check_hook(hook) {
                Ok(()) => hooks.push(*hook),
                Err(LayoutError::NoHook { .. }) if !hook.required => {
                    attachment.unavailable.push(hook.name)
                }
                Err(e) => return Err(e.into()),
            }
        }
        let offsets = KERNEL_FIELDS
            .iter()
            .map(|field| Ok((field.global, layout.offset(field)?)))
            .collect::<Result<Vec<_>, LayoutError>>()?;

        let mut loader = EbpfLoader::new();
        for (name, offset) in &offsets {
            loader.override_global(name, offset, true);
        }
        loader.override_global(global::ROOT_CGROUP_ID, &root.id, true);
        loader.override_global(global::ROOT_CGROUP_LEVEL, &root.level, true);
        let fault: u32 = if std::env::var("GUARD_FAULT_HOOK_ERRORS").as_deref() == Ok("1") {
            tracing::warn!("GUARD_FAULT_HOOK_ERRORS: every file decision about an agent fails");
            1
        } else {
            0
        };
        loader.override_global(global::FAULT_HOOK_ERRORS, &fault, true);
        let mut ebpf = loader.load(EBPF_OBJECT).map_err(EnforceError::Object)?;

        let btf = Btf::from_sys_fs().map_err(EnforceError::Btf)?;
        for hook in hooks {
            let started = std::time::Instant::now();
            attach(&mut ebpf, &btf, &hook)?;
            tracing::debug!(
                program = hook.name,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "loaded and attached"
            );
            attachment.attached.push(hook.name);
        }
        let mut slot = |name: &'static str| {
            let data = ebpf.take_map(name).ok_or_else(|| missing_map(name))?;
            Array::try_from(data).map_err(map_err(name))
        };
        let generation_slots = [
            slot(map::GENERATION_SLOTS[0])?,
            slot(map::GENERATION_SLOTS[1])?,
        ];
        Ok(Self {
            ebpf,
            attachment,
            active: None,
            written: Default::default(),
            generation_slots,
        })
    }

    /// Detaches one hook's program (fault injection for the readiness test).
    pub fn detach(&mut self, hook: &str) {
        if let Some(program) = self.ebpf.program_mut(hook)
            && let Ok(program) = <&mut Lsm>::try_from(program)
        {
            let _ = program.unload();
        }
    }

    /// Publishes `policy` as the next generation, with `cgroups` the agent
    /// and session cgroups and the index of the profile each runs. The new
    /// generation is written into the idle slot, then switched to in one
    /// update. If anything fails before the switch, the generation in force
    /// stays in force, untouched.
    pub fn publish(
        &mut self,
        policy: &CompiledPolicy,
        cgroups: &[(u64, u32)],
    ) -> Result<GenerationInfo, EnforceError> {
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
            file_identity: hash_keys_of(&policy.file_identity, slot),
            file_names: lpm_keys_of(&policy.file_names, slot),
            net_rules: lpm_keys_of(&policy.net_rules, slot),
        };
        self.write_hash(map::EXEC_IDENTITY, slot, &policy.exec_identity)?;
        self.write_lpm(map::EXEC_PATHS, slot, &policy.exec_paths)?;
        self.write_hash(map::FILE_IDENTITY, slot, &policy.file_identity)?;
        self.write_lpm(map::FILE_NAMES, slot, &policy.file_names)?;
        self.write_lpm(map::NET_RULES, slot, &policy.net_rules)?;
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
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(map_err(map::AGENTS)(e)),
        }
        self.written[active.slot as usize]
            .agents
            .retain(|k| *k != key);
        Ok(())
    }

    fn add_cgroup_in(
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
    fn switch_to(&mut self, info: GenerationInfo) -> Result<(), EnforceError> {
        let name = map::GENERATION_SLOTS[info.slot as usize];
        let inner = &mut self.generation_slots[info.slot as usize];
        inner.set(0, info, 0).map_err(map_err(name))?;
        let data = self
            .ebpf
            .map_mut(map::GENERATION)
            .ok_or_else(|| missing_map(map::GENERATION))?;
        let mut outer: ArrayOfMaps<_, Array<MapData, GenerationInfo>> =
            ArrayOfMaps::try_from(data).map_err(map_err(map::GENERATION))?;
        outer
            .set(0, &self.generation_slots[info.slot as usize], 0)
            .map_err(map_err(map::GENERATION))
    }

    /// Removes every entry of `slot`. On failure the keys stay noted, for
    /// the next attempt.
    fn clear_slot(&mut self, slot: u32) -> Result<(), EnforceError> {
        let keys = std::mem::take(&mut self.written[slot as usize]);
        let result = self.remove_keys(&keys);
        if result.is_err() {
            self.written[slot as usize] = keys;
        }
        result
    }

    fn remove_keys(&mut self, keys: &SlotKeys) -> Result<(), EnforceError> {
        self.remove_hash::<AgentKey, guard_common::AgentEntry>(map::AGENTS, &keys.agents)?;
        self.remove_hash::<IdentityKey, guard_common::ExecIdentityRule>(
            map::EXEC_IDENTITY,
            &keys.exec_identity,
        )?;
        self.remove_lpm::<ExecPathKey, guard_common::RuleRef>(map::EXEC_PATHS, &keys.exec_paths)?;
        self.remove_hash::<IdentityKey, guard_common::RuleRef>(
            map::FILE_IDENTITY,
            &keys.file_identity,
        )?;
        self.remove_lpm::<NameKey, guard_common::RuleRef>(map::FILE_NAMES, &keys.file_names)?;
        self.remove_lpm::<NetKey, guard_common::NetRuleSet>(map::NET_RULES, &keys.net_rules)
    }

    fn write_hash<K: Pod + InSlot, V: Pod>(
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

    fn write_lpm<K: Pod + InSlot, V: Pod>(
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

    fn remove_hash<K: Pod, V: Pod>(
        &mut self,
        name: &'static str,
        keys: &[K],
    ) -> Result<(), EnforceError> {
        let mut m: HashMap<_, K, V> = self.map(name)?;
        for k in keys {
            match m.remove(k) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(name)(e)),
            }
        }
        Ok(())
    }

    fn remove_lpm<K: Pod, V: Pod>(
        &mut self,
        name: &'static str,
        keys: &[(u32, K)],
    ) -> Result<(), EnforceError> {
        let mut m: LpmTrie<_, K, V> = self.map(name)?;
        for (bits, k) in keys {
            match m.remove(&Key::new(*bits, *k)) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(name)(e)),
            }
        }
        Ok(())
    }

    /// Takes the ring buffer of decision records (once).
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, EnforceError> {
        let data = self
            .ebpf
            .take_map(map::EVENTS)
            .ok_or_else(|| missing_map(map::EVENTS))?;
        RingBuf::try_from(data).map_err(map_err(map::EVENTS))
    }

    /// A kernel counter, summed over CPUs.
    pub fn counter(&self, counter: Counter) -> Result<u64, EnforceError> {
        let data = self
            .ebpf
            .map(map::COUNTERS)
            .ok_or_else(|| missing_map(map::COUNTERS))?;
        let array: PerCpuArray<_, u64> =
            PerCpuArray::try_from(data).map_err(map_err(map::COUNTERS))?;
        let values = array
            .get(&(counter as u32), 0)
            .map_err(map_err(map::COUNTERS))?;
        Ok(values.iter().sum())
    }

    fn map<'a, M>(&'a mut self, name: &'static str) -> Result<M, EnforceError>
    where
        M: TryFrom<&'a mut aya::maps::Map, Error = MapError>,
    {
        let data = self.ebpf.map_mut(name).ok_or_else(|| missing_map(name))?;
        M::try_from(data).map_err(map_err(name))
    }
}

/// The error for a map the object lacks (an inconsistent build).
fn missing_map(name: &'static str) -> EnforceError {
    EnforceError::Map {
        name,
        source: MapError::InvalidName { name: name.into() },
    }
}

fn map_err(name: &'static str) -> impl Fn(MapError) -> EnforceError {
    move |source| EnforceError::Map { name, source }
}

fn attach(ebpf: &mut Ebpf, btf: &Btf, hook: &LsmHook) -> Result<(), EnforceError> {
    let program: &mut Lsm = ebpf
        .program_mut(hook.name)
        .ok_or(EnforceError::NoProgram(hook.name))?
        .try_into()
        .map_err(|source| EnforceError::Load {
            program: hook.name,
            source,
        })?;
    program.load(hook.name, btf).map_err(|source| {
        if is_eperm(&source) {
            EnforceError::LoadRefused { program: hook.name }
        } else {
            EnforceError::Load {
                program: hook.name,
                source,
            }
        }
    })?;
    program.attach().map_err(|source| EnforceError::Attach {
        program: hook.name,
        source,
    })?;
    Ok(())
}

fn is_eperm(error: &ProgramError) -> bool {
    match error {
        ProgramError::LoadError { io_error, .. } => io_error.raw_os_error() == Some(libc::EPERM),
        ProgramError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::EPERM),
        _ => false,
    }
}
