//! The one owner of kernel state: checks that this host can enforce, loads
//! and attaches the programs, and writes a compiled policy into their maps.

use std::{
    collections::BTreeMap,
    io,
    path::{Path, PathBuf},
};

use aya::{
    Btf, Ebpf, EbpfError, EbpfLoader, Pod,
    maps::{
        Array, ArrayOfMaps, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, PerCpuValues,
        RingBuf, lpm_trie::Key,
    },
    programs::{
        Lsm, ProgramError,
        links::{FdLink, PinnedLink},
        lsm::LsmLinkId,
    },
};
use guard_common::{
    AgentKey, BUDGETS, BudgetKey, BudgetState, Counter, DigestKey, Exception, ExceptionKey,
    ExecPathKey, GenerationInfo, IdentityKey, KERNEL_FIELDS, LsmHook, NameKey, NetKey, NetRuleSet,
    OwnNameKey, global, lsm, map, profile_key, profile_slot, spool_flag,
};
use sha2::{Digest, Sha256};

use guard_policy::compile::CompiledPolicy;

use crate::{
    cgroup::{CgroupError, GuardRoot},
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
    #[error(
        "the policy has exec rules by content (`sha256` in a deny rule), but this kernel cannot run the program that hashes files (`exec_content` needs IMA, CONFIG_IMA=y); the policy is refused"
    )]
    NoContentRules,
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
    #[error("cannot pin the programs in {path}: {reason}")]
    Pin { path: PathBuf, reason: String },
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

/// Where the programs of a build are pinned: see [`pin_root`].
const BPFFS: &str = "/sys/fs/bpf";

/// The directory guardd pins its programs' links and maps in for Guard's
/// cgroup `cgroup_root`, so that they stay attached while no guardd runs.
/// It holds one directory per build of the programs ([`Enforcer::load`]).
pub fn pin_root(cgroup_root: &str) -> PathBuf {
    // bpffs refuses names with a dot.
    let name: String = cgroup_root
        .trim_matches('/')
        .chars()
        .map(|c| if c == '/' || c == '.' { '_' } else { c })
        .collect();
    Path::new(BPFFS).join("guard").join(name)
}

/// Attached programs and their maps. Dropping it detaches them, unless
/// they are pinned ([`Self::pin`]): pinned, they stay attached until
/// [`detach_pinned`].
pub struct Enforcer {
    /// The programs, when this guardd loaded them; `None` when it adopted
    /// the ones a previous guardd left pinned.
    ebpf: Option<Ebpf>,
    /// The maps of [`map::PINNED`] but the generation slots, by name.
    maps: BTreeMap<&'static str, Map>,
    /// Links of attached programs not yet pinned.
    unpinned: Vec<(&'static str, LsmLinkId)>,
    /// Pinned links; holding them keeps them attached while guardd runs
    /// even if their pins are removed.
    links: Vec<(&'static str, FdLink)>,
    /// This build's pin directory, below [`pin_root`]; `None` when the
    /// programs are not to be pinned (`guardd --check`).
    pins: Option<PathBuf>,
    pub attachment: Attachment,
    /// Set when the programs were adopted from a previous guardd.
    pub adopted: Option<Adopted>,
    /// The generation in force; `None` until the first [`Self::publish`].
    active: Option<GenerationInfo>,
    /// Keys written into each slot, to clear the slot before it is reused.
    written: [SlotKeys; 2],
    /// The inner map of [`map::GENERATION`] for each slot (array maps of
    /// one [`GenerationInfo`]).
    generation_slots: [Map; 2],
}

/// What a guardd found when it adopted pinned programs.
#[derive(Debug)]
pub struct Adopted {
    /// The generation the previous guardd left in force.
    pub generation: Option<u64>,
    /// Ring-buffer losses its loss lines had not reported.
    pub unreported_losses: u64,
}

/// The ring buffers the programs write records to, each with its own loss
/// accounting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// Denials, would-denials and approved actions.
    Denials,
    /// Allowed actions of profiles that record them.
    Allowed,
}

impl Lane {
    /// Read in this order, so that a denial is written before the flood.
    pub const ALL: [Lane; 2] = [Lane::Denials, Lane::Allowed];

    pub fn map(self) -> &'static str {
        match self {
            Lane::Denials => map::DENIALS,
            Lane::Allowed => map::EVENTS,
        }
    }

    /// The kernel's count of records this lane had no room for.
    pub fn lost(self) -> Counter {
        match self {
            Lane::Denials => Counter::DenialsLost,
            Lane::Allowed => Counter::EventsLost,
        }
    }

    /// How many of [`Lane::lost`] loss lines have reported (kept with the
    /// programs for a guardd that adopts them).
    pub fn reported(self) -> Counter {
        match self {
            Lane::Denials => Counter::DenialLossesReported,
            Lane::Allowed => Counter::LossesReported,
        }
    }

    /// The loss stage of its loss lines.
    pub fn stage(self) -> &'static str {
        match self {
            Lane::Denials => "denials_ring_buffer",
            Lane::Allowed => "ring_buffer",
        }
    }
}

/// The keys one generation slot holds.
#[derive(Default)]
struct SlotKeys {
    agents: Vec<AgentKey>,
    exec_identity: Vec<IdentityKey>,
    exec_paths: Vec<(u32, ExecPathKey)>,
    exec_digests: Vec<DigestKey>,
    file_identity: Vec<IdentityKey>,
    file_names: Vec<(u32, NameKey)>,
    net_rules: Vec<(u32, NetKey)>,
    host_addrs: Vec<NetKey>,
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

/// A key of a generation slot: a rule key's profile id carries the slot.
trait InSlot: Copy {
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
profile_in_slot!(IdentityKey, DigestKey);

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

impl Enforcer {
    /// Checks the host, loads the programs with this kernel's layout, and
    /// attaches every hook. Agents stay untouched until [`Self::publish`].
    ///
    /// With `pin_root` ([`pin_root`]), programs of this very build (same
    /// object, kernel layout, Guard cgroup and hooks) that a previous guardd
    /// left pinned there are adopted instead: their links and maps are
    /// taken over, with the generation in force, so that agents are never
    /// without them. Anything else there is replaced by [`Self::pin`].
    pub fn load(root: &GuardRoot, pin_root: Option<&Path>) -> Result<Self, EnforceError> {
        check_bpf_lsm_active()?;
        let layout = KernelLayout::from_sys()?;
        let mut hooks = Vec::new();
        let mut attachment = Attachment::default();
        // For the readiness test only: leave named hooks unattached, to prove
        // that the canary notices.
        let skipped = std::env::var("GUARD_FAULT_SKIP_HOOK").unwrap_or_default();
        for hook in lsm::ALL {
            if skipped.split(',').any(|h| h == hook.program) {
                tracing::warn!(
                    hook = hook.program,
                    "GUARD_FAULT_SKIP_HOOK: not attaching this hook"
                );
                continue;
            }
            match layout.check_hook(hook) {
                Ok(()) => hooks.push(*hook),
                Err(LayoutError::NoHook { .. }) if !hook.required => {
                    attachment.unavailable.push(hook.program)
                }
                Err(e) => return Err(e.into()),
            }
        }
        let mut globals = KERNEL_FIELDS
            .iter()
            .map(|field| Ok((field.global, u64::from(layout.offset(field)?))))
            .collect::<Result<Vec<_>, LayoutError>>()?;
        let fault = std::env::var("GUARD_FAULT_HOOK_ERRORS").as_deref() == Ok("1");
        if fault {
            tracing::warn!("GUARD_FAULT_HOOK_ERRORS: every file decision about an agent fails");
        }
        globals.extend([
            (global::ROOT_CGROUP_ID, root.id),
            (global::ROOT_CGROUP_LEVEL, u64::from(root.level)),
            (global::FAULT_HOOK_ERRORS, u64::from(fault)),
        ]);

        let pins = pin_root.map(|dir| dir.join(build_id(&globals, &hooks)));
        if let Some(dir) = &pins
            && dir.exists()
        {
            match Self::adopt(dir, &hooks, attachment.unavailable.clone()) {
                Ok(enforcer) => return Ok(enforcer),
                Err(e) => tracing::warn!(
                    "{e}: cannot adopt the pinned programs of the previous guardd; loading afresh and replacing them"
                ),
            }
        }

        // The cgroup id is the only 64-bit global.
        let narrow: Vec<(&str, u32)> = globals
            .iter()
            .filter(|(name, _)| *name != global::ROOT_CGROUP_ID)
            .map(|(name, value)| (*name, *value as u32))
            .collect();
        let mut loader = EbpfLoader::new();
        for (name, value) in &narrow {
            loader.override_global(name, value, true);
        }
        loader.override_global(global::ROOT_CGROUP_ID, &root.id, true);
        let mut ebpf = loader.load(EBPF_OBJECT).map_err(EnforceError::Object)?;

        let btf = Btf::from_sys_fs().map_err(EnforceError::Btf)?;
        let mut unpinned = Vec::new();
        for hook in hooks {
            let started = std::time::Instant::now();
            let link = match attach(&mut ebpf, &btf, &hook) {
                Ok(link) => link,
                // An optional program this kernel cannot run (exec_content
                // without IMA); what needs it is refused instead.
                Err(e) if !hook.required && !matches!(e, EnforceError::LoadRefused { .. }) => {
                    tracing::warn!("{e}");
                    attachment.unavailable.push(hook.program);
                    continue;
                }
                Err(e) => return Err(e),
            };
            unpinned.push((hook.program, link));
            tracing::debug!(
                program = hook.program,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "loaded and attached"
            );
            attachment.attached.push(hook.program);
        }
        let mut maps = BTreeMap::new();
        for name in map::PINNED {
            maps.insert(name, ebpf.take_map(name).ok_or_else(|| missing_map(name))?);
        }
        Self::with_maps(Some(ebpf), maps, unpinned, Vec::new(), pins, attachment)
    }

    /// Takes over the links and maps pinned in `dir`.
    fn adopt(
        dir: &Path,
        hooks: &[LsmHook],
        unavailable: Vec<&'static str>,
    ) -> Result<Self, EnforceError> {
        let failed = |what: &str, e: &dyn std::fmt::Display| EnforceError::Pin {
            path: dir.to_path_buf(),
            reason: format!("{what}: {e}"),
        };
        let mut links = Vec::new();
        for hook in hooks {
            let link = PinnedLink::from_pin(dir.join(hook.program))
                .map_err(|e| failed(hook.program, &e))?;
            links.push((hook.program, FdLink::from(link)));
        }
        let mut maps = BTreeMap::new();
        for name in map::PINNED {
            let map = MapData::from_pin(dir.join(name))
                .and_then(Map::from_map_data)
                .map_err(|e| failed(name, &e))?;
            maps.insert(name, map);
        }
        let attachment = Attachment {
            attached: hooks.iter().map(|h| h.program).collect(),
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

    fn with_maps(
        ebpf: Option<Ebpf>,
        mut maps: BTreeMap<&'static str, Map>,
        unpinned: Vec<(&'static str, LsmLinkId)>,
        links: Vec<(&'static str, FdLink)>,
        pins: Option<PathBuf>,
        attachment: Attachment,
    ) -> Result<Self, EnforceError> {
        let mut slot = |name: &'static str| maps.remove(name).ok_or_else(|| missing_map(name));
        let generation_slots = [
            slot(map::GENERATION_SLOTS[0])?,
            slot(map::GENERATION_SLOTS[1])?,
        ];
        Ok(Self {
            ebpf,
            maps,
            unpinned,
            links,
            pins,
            attachment,
            adopted: None,
            active: None,
            written: Default::default(),
            generation_slots,
        })
    }

    /// The generation the programs see, read back from their maps.
    fn generation_in_force(&self) -> Result<Option<GenerationInfo>, EnforceError> {
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
    fn keys_in_slots(&self) -> Result<[SlotKeys; 2], EnforceError> {
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
            },
        ])
    }

    fn hash_keys_by_slot<K: Pod + InSlot, V: Pod>(
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

    fn lpm_keys_by_slot<K: Pod + InSlot, V: Pod>(
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
            for (name, id) in std::mem::take(&mut self.unpinned) {
                let program: &mut Lsm = ebpf
                    .program_mut(name)
                    .ok_or(EnforceError::NoProgram(name))?
                    .try_into()
                    .map_err(|source| EnforceError::Attach {
                        program: name,
                        source,
                    })?;
                let link = program
                    .take_link(id)
                    .map_err(|source| EnforceError::Attach {
                        program: name,
                        source,
                    })?;
                let pinned = FdLink::from(link)
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

    /// Detaches one hook's program (fault injection for the readiness test).
    pub fn detach(&mut self, hook: &str) {
        if let Some(at) = self.links.iter().position(|(name, _)| *name == hook) {
            self.links.remove(at);
            if let Some(dir) = &self.pins {
                let _ = std::fs::remove_file(dir.join(hook));
            }
        }
        if let Some(program) = self.ebpf.as_mut().and_then(|e| e.program_mut(hook))
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
    /// `hosts` are the entries of `policy`'s hostname rules on the
    /// addresses resolved so far (profile indexes, as in `policy`).
    pub fn publish(
        &mut self,
        policy: &CompiledPolicy,
        hosts: &[(NetKey, NetRuleSet)],
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
        };
        self.write_hash(map::EXEC_IDENTITY, slot, &policy.exec_identity)?;
        self.write_lpm(map::EXEC_PATHS, slot, &policy.exec_paths)?;
        self.write_hash(map::EXEC_DIGESTS, slot, &policy.exec_digests)?;
        self.write_hash(map::FILE_IDENTITY, slot, &policy.file_identity)?;
        self.write_lpm(map::FILE_NAMES, slot, &policy.file_names)?;
        self.write_lpm(map::NET_RULES, slot, &policy.net_rules)?;
        self.write_hash(map::HOST_ADDRS, slot, hosts)?;
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
        self.remove_hash::<NetKey, guard_common::NetRuleSet>(map::HOST_ADDRS, &keys.host_addrs)
    }

    /// Replaces the hostname entries of the generation in force, after
    /// guardd resolved a name again. Each entry changes atomically; a
    /// decision meanwhile sees an address's old rules or its new ones.
    pub fn set_host_addrs(&mut self, hosts: &[(NetKey, NetRuleSet)]) -> Result<(), EnforceError> {
        let Some(active) = self.active else {
            return Ok(());
        };
        let slot = active.slot;
        let new = hash_keys_of(hosts, slot);
        let gone: Vec<NetKey> = self.written[slot as usize]
            .host_addrs
            .iter()
            .filter(|key| !new.contains(key))
            .copied()
            .collect();
        // Noted first, as in `publish`, so a failure part way leaves no
        // key behind that the next clear misses.
        self.written[slot as usize]
            .host_addrs
            .extend(new.iter().copied());
        self.write_hash(map::HOST_ADDRS, slot, hosts)?;
        self.remove_hash::<NetKey, guard_common::NetRuleSet>(map::HOST_ADDRS, &gone)?;
        self.written[slot as usize].host_addrs = new;
        Ok(())
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
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
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
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(map_err(name)(e)),
            }
        }
        Ok(())
    }

    /// Takes the ring buffers of decision records (once), in [`Lane::ALL`] order.
    pub fn take_events(&mut self) -> Result<Vec<(Lane, RingBuf<MapData>)>, EnforceError> {
        Lane::ALL
            .into_iter()
            .map(|lane| {
                let name = lane.map();
                let data = self.maps.remove(name).ok_or_else(|| missing_map(name))?;
                Ok((lane, RingBuf::try_from(data).map_err(map_err(name))?))
            })
            .collect()
    }

    /// Makes `names` the directory entries no agent may add, remove or
    /// rename (see [`map::OWN_NAMES`]).
    pub fn set_own_names(&mut self, names: &[OwnNameKey]) -> Result<(), EnforceError> {
        let mut own: HashMap<_, OwnNameKey, u8> = self.map(map::OWN_NAMES)?;
        let stale: Vec<OwnNameKey> = own
            .keys()
            .filter_map(Result::ok)
            .filter(|key| !names.contains(key))
            .collect();
        for key in names {
            own.insert(key, 1, 0).map_err(map_err(map::OWN_NAMES))?;
        }
        for key in &stale {
            match own.remove(key) {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(map_err(map::OWN_NAMES)(e)),
            }
        }
        Ok(())
    }

    /// Tells the programs whether guardd can write records; while it
    /// cannot, profiles with audit-or-deny deny what they would record.
    pub fn set_spool_blocked(&mut self, blocked: bool) -> Result<(), EnforceError> {
        let mut state: Array<_, u32> = self.map(map::SPOOL_STATE)?;
        let flags = if blocked { spool_flag::BLOCKED } else { 0 };
        state.set(0, flags, 0).map_err(map_err(map::SPOOL_STATE))
    }

    /// A kernel counter, summed over CPUs.
    pub fn counter(&self, counter: Counter) -> Result<u64, EnforceError> {
        let array: PerCpuArray<_, u64> = self.map_ref(map::COUNTERS)?;
        let values = array
            .get(&(counter as u32), 0)
            .map_err(map_err(map::COUNTERS))?;
        Ok(values.iter().sum())
    }

    fn map<'a, M>(&'a mut self, name: &'static str) -> Result<M, EnforceError>
    where
        M: TryFrom<&'a mut aya::maps::Map, Error = MapError>,
    {
        let data = self.maps.get_mut(name).ok_or_else(|| missing_map(name))?;
        M::try_from(data).map_err(map_err(name))
    }

    fn map_ref<'a, M>(&'a self, name: &'static str) -> Result<M, EnforceError>
    where
        M: TryFrom<&'a aya::maps::Map, Error = MapError>,
    {
        let data = self.maps.get(name).ok_or_else(|| missing_map(name))?;
        M::try_from(data).map_err(map_err(name))
    }

    /// Refills a session's budgets: the kernel starts them afresh.
    pub fn reset_budgets(&mut self, cgroup: u64) -> Result<(), EnforceError> {
        let mut state: HashMap<_, BudgetKey, BudgetState> = self.map(map::BUDGET_STATE)?;
        for budget in 0..BUDGETS as u32 {
            let key = BudgetKey {
                cgroup,
                budget,
                _pad: 0,
            };
            match state.remove(&key) {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(map_err(map::BUDGET_STATE)(e)),
            }
        }
        Ok(())
    }

    /// Lets the kernel honour an approved ticket.
    pub fn grant(&mut self, key: ExceptionKey, exception: Exception) -> Result<(), EnforceError> {
        let mut exceptions: HashMap<_, ExceptionKey, Exception> = self.map(map::EXCEPTIONS)?;
        exceptions
            .insert(key, exception, 0)
            .map_err(map_err(map::EXCEPTIONS))
    }

    /// Withdraws an approved ticket; true if the kernel still had it (a
    /// one-use ticket is gone once used).
    pub fn revoke(&mut self, key: &ExceptionKey) -> Result<bool, EnforceError> {
        let mut exceptions: HashMap<_, ExceptionKey, Exception> = self.map(map::EXCEPTIONS)?;
        match exceptions.remove(key) {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(map_err(map::EXCEPTIONS)(e)),
        }
    }

    /// Notes in the kernel's counters how many of `lane`'s losses loss
    /// lines have reported, for a guardd that adopts these programs.
    pub fn set_losses_reported(&mut self, lane: Lane, reported: u64) -> Result<(), EnforceError> {
        let io = |e: io::Error| EnforceError::Map {
            name: map::COUNTERS,
            source: MapError::IoError(e),
        };
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| io(e))?;
        // Summed over CPUs when read.
        let mut values = vec![0u64; cpus];
        values[0] = reported;
        let values = PerCpuValues::try_from(values).map_err(io)?;
        let mut array: PerCpuArray<_, u64> = self.map(map::COUNTERS)?;
        array
            .set(lane.reported() as u32, values, 0)
            .map_err(map_err(map::COUNTERS))
    }
}

/// Removes every pin guardd left for `cgroup_root` and waits until the
/// programs are detached (unless a running guardd still holds them).
/// Returns whether there was anything to remove.
pub fn detach_pinned(cgroup_root: &str) -> io::Result<bool> {
    let dir = pin_root(cgroup_root);
    if !dir.exists() {
        return Ok(false);
    }
    let builds: Vec<PathBuf> = crate::cgroup::subdirs(&dir).collect();
    detach_builds(&builds)?;
    std::fs::remove_dir(&dir)?;
    Ok(true)
}

/// Removes the pins of `builds` (build directories below [`pin_root`]) and
/// waits until the kernel has released their programs, which it does some
/// time after the last reference goes.
fn detach_builds(builds: &[PathBuf]) -> io::Result<()> {
    const PATIENCE: std::time::Duration = std::time::Duration::from_secs(120);
    let programs: Vec<u32> = builds
        .iter()
        .flat_map(|build| std::fs::read_dir(build).into_iter().flatten().flatten())
        // Links are pinned under their hook's name, maps under theirs.
        .filter(|pin| lsm::ALL.iter().any(|hook| pin.file_name() == hook.program))
        .filter_map(|pin| PinnedLink::from_pin(pin.path()).ok())
        .filter_map(|link| FdLink::from(link).info().ok())
        .map(|info| info.program_id())
        .collect();
    for build in builds {
        std::fs::remove_dir_all(build)?;
    }
    let started = std::time::Instant::now();
    loop {
        let held = aya::programs::loaded_programs()
            .flatten()
            .filter(|program| programs.contains(&program.id()))
            .count();
        if held == 0 {
            return Ok(());
        }
        if started.elapsed() > PATIENCE {
            return Err(io::Error::other(format!(
                "the pins are removed, but {held} of the {} programs are still loaded after {} s (does a guardd still run?)",
                programs.len(),
                PATIENCE.as_secs()
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Records left unread in the ring buffer pinned in `dir`, plus the losses
/// its loss lines did not report (0 if it cannot be read).
fn unread_records(dir: &Path) -> u64 {
    let pinned = |name: &str| MapData::from_pin(dir.join(name)).and_then(Map::from_map_data);
    let mut unread = 0;
    for lane in Lane::ALL {
        if let Ok(events) = pinned(lane.map())
            && let Ok(mut ring) = RingBuf::try_from(events)
        {
            while ring.next().is_some() {
                unread += 1;
            }
        }
    }
    if let Ok(counters) = pinned(map::COUNTERS)
        && let Ok(counters) = PerCpuArray::<_, u64>::try_from(&counters)
    {
        let sum = |c: Counter| {
            counters
                .get(&(c as u32), 0)
                .map(|v| v.iter().sum::<u64>())
                .unwrap_or(0)
        };
        for lane in Lane::ALL {
            unread += sum(lane.lost()).saturating_sub(sum(lane.reported()));
        }
    }
    unread
}

/// Mounts bpffs at /sys/fs/bpf if nothing is mounted there.
fn ensure_bpffs() {
    const BPF_FS_MAGIC: i64 = 0xcafe4a11;
    let mounted =
        nix::sys::statfs::statfs(BPFFS).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC);
    if !mounted {
        // A failure shows up as the pin error that follows.
        let _ = nix::mount::mount(
            Some("bpf"),
            BPFFS,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        );
    }
}

/// Names one build of the programs as loaded on this host: the object, the
/// values of its globals (kernel layout, Guard's cgroup) and the hooks
/// attached. A guardd adopts pinned programs only of its own build.
fn build_id(globals: &[(&str, u64)], hooks: &[LsmHook]) -> String {
    let mut hash = Sha256::new();
    hash.update(EBPF_OBJECT);
    for (name, value) in globals {
        hash.update(name.as_bytes());
        hash.update(value.to_le_bytes());
    }
    for hook in hooks {
        hash.update(hook.program.as_bytes());
    }
    let digest = hash.finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
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

fn attach(ebpf: &mut Ebpf, btf: &Btf, hook: &LsmHook) -> Result<LsmLinkId, EnforceError> {
    let program: &mut Lsm = ebpf
        .program_mut(hook.program)
        .ok_or(EnforceError::NoProgram(hook.program))?
        .try_into()
        .map_err(|source| EnforceError::Load {
            program: hook.program,
            source,
        })?;
    program.load(hook.name, btf).map_err(|source| {
        if is_eperm(&source) {
            EnforceError::LoadRefused {
                program: hook.program,
            }
        } else {
            EnforceError::Load {
                program: hook.program,
                source,
            }
        }
    })?;
    program.attach().map_err(|source| EnforceError::Attach {
        program: hook.program,
        source,
    })
}

/// Whether removing a key failed only because it is not there (the kernel
/// says ENOENT): harmless when clearing a slot.
fn is_not_found(error: &MapError) -> bool {
    match error {
        MapError::KeyNotFound => true,
        MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

fn is_eperm(error: &ProgramError) -> bool {
    match error {
        ProgramError::LoadError { io_error, .. } => io_error.raw_os_error() == Some(libc::EPERM),
        ProgramError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::EPERM),
        _ => false,
    }
}
