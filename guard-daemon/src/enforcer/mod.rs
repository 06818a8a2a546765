//! The one owner of kernel state. Here: loading and attaching the programs
//! with this kernel's layout, and the small controls on their maps
//! (tickets, budgets, counters, Guard's own names). The rest by concern:
//! whether the host can enforce ([`host`]), adopting and pinning the
//! programs across guardd restarts ([`adoption`], [`pins`]), writing a
//! compiled policy as a generation ([`publish`], [`slots`]), the record
//! lanes ([`lane`]) and the errors ([`error`]).

use std::{
    collections::BTreeMap,
    io,
    path::{Path, PathBuf},
};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuValues, RingBuf},
    programs::ProgramError,
    programs::{
        CgroupAttachMode, CgroupSockAddr, Lsm, LsmCgroup, cgroup_sock_addr::CgroupSockAddrLinkId,
        links::FdLink, lsm::LsmLinkId,
    },
};
use guard_common::{
    BUDGETS, BudgetKey, BudgetState, Counter, Exception, ExceptionKey, GenerationInfo,
    KERNEL_FIELDS, LsmHook, OwnNameKey, SecretKey, global, lsm, map, route, spool_flag,
};

use crate::{
    cgroup::GuardRoot,
    kernel_layout::{self, KernelLayout, LayoutError},
};

mod adoption;
mod error;
mod host;
mod lane;
mod pins;
mod publish;
mod slots;

pub use error::EnforceError;
pub use host::check_bpf_lsm_active;
pub use lane::Lane;
pub use pins::{detach_pinned, pin_root};

use error::{is_eperm, is_not_found, map_err, missing_map};
use pins::build_id;
use slots::SlotKeys;

/// The programs, built by build.rs from guard-ebpf.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/guard"));

/// Hooks attached, and optional hooks this kernel lacks.
#[derive(Debug, Default)]
pub struct Attachment {
    pub attached: Vec<&'static str>,
    /// Those of `attached` attached to Guard's root cgroup
    /// ([`LsmHook::per_cgroup`]): no process outside it runs them.
    pub per_cgroup: Vec<&'static str>,
    pub unavailable: Vec<&'static str>,
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
    unpinned: Vec<(&'static str, NewLink)>,
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

/// Which programs [`Enforcer::load`] loads, and how it attaches them.
#[derive(Clone, Copy, Debug, Default)]
pub struct Programs {
    /// No LSM program (a host without BPF LSM): only the routing programs,
    /// which are cgroup programs.
    pub routing_only: bool,
    /// Every LSM program on its hook, none on Guard's root cgroup.
    pub globally: bool,
}

/// A link this guardd made, by its program's kind.
enum NewLink {
    Lsm(LsmLinkId),
    /// Of the hook's program [`LsmHook::per_cgroup`].
    LsmCgroup(&'static str, aya::programs::lsm_cgroup::LsmLinkId),
    Route(CgroupSockAddrLinkId),
}

/// What a guardd found when it adopted pinned programs.
#[derive(Debug)]
pub struct Adopted {
    /// The generation the previous guardd left in force.
    pub generation: Option<u64>,
    /// Ring-buffer losses its loss lines had not reported.
    pub unreported_losses: u64,
}

impl Enforcer {
    /// Checks the host, loads the programs with this kernel's layout, and
    /// attaches every hook. Agents stay untouched until [`Self::publish`].
    ///
    /// With `pin_root` ([`pin_root`]), programs of this very build (same
    /// object, kernel layout, Guard cgroup and hooks) that a previous guardd
    /// left pinned there are adopted instead: their links and maps are
    /// taken over, with the generation in force, so that agents are never
    /// without them. Anything else there is replaced by [`Self::pin`].
    ///
    /// With [`Programs::routing_only`], no LSM program is loaded (for a host
    /// without BPF LSM): only the routing programs, which are cgroup programs.
    ///
    /// A hook with a per-cgroup program ([`LsmHook::per_cgroup`]) has it
    /// attached to Guard's root cgroup, unless [`Programs::globally`]; where the kernel
    /// refuses that (before 6.0, or its ten per-cgroup LSM hooks are taken),
    /// its global program is attached instead, and a warning says so.
    pub fn load(
        root: &GuardRoot,
        pin_root: Option<&Path>,
        programs: Programs,
    ) -> Result<Self, EnforceError> {
        let Programs {
            routing_only,
            globally,
        } = programs;
        if !routing_only {
            check_bpf_lsm_active()?;
        }
        let layout = KernelLayout::from_sys()?;
        let mut hooks = Vec::new();
        let mut attachment = Attachment::default();
        // For the readiness test only: leave named hooks unattached, to prove
        // that the canary notices.
        let skipped = std::env::var("GUARD_FAULT_SKIP_HOOK").unwrap_or_default();
        let lsm_hooks = if routing_only { &[][..] } else { lsm::ALL };
        for hook in lsm_hooks {
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
        let [rename_lock, mount_lock] = kernel_layout::symbols(["rename_lock", "mount_lock"]);
        if rename_lock == 0 || mount_lock == 0 {
            tracing::warn!(
                "{} has no address for rename_lock or mount_lock: every file decision walks the whole directory tree (no directory cache)",
                kernel_layout::KALLSYMS
            );
        }
        globals.extend([
            (global::ROOT_CGROUP_ID, root.id),
            (global::ROOT_CGROUP_LEVEL, u64::from(root.level)),
            (global::FAULT_HOOK_ERRORS, u64::from(fault)),
            (global::RENAME_LOCK, rename_lock),
            (global::MOUNT_LOCK, mount_lock),
        ]);

        let pins = pin_root.map(|dir| dir.join(build_id(EBPF_OBJECT, &globals, &hooks, globally)));
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

        let is_wide = |name: &&str| global::WIDE.contains(name);
        let narrow: Vec<(&str, u32)> = globals
            .iter()
            .filter(|(name, _)| !is_wide(name))
            .map(|(name, value)| (*name, *value as u32))
            .collect();
        let mut loader = EbpfLoader::new();
        for (name, value) in &narrow {
            loader.override_global(name, value, true);
        }
        for (name, value) in globals.iter().filter(|(name, _)| is_wide(name)) {
            loader.override_global(name, value, true);
        }
        let mut ebpf = loader.load(EBPF_OBJECT).map_err(EnforceError::Object)?;

        let btf = Btf::from_sys_fs().map_err(EnforceError::Btf)?;
        let mut unpinned = Vec::new();
        let cgroup = std::fs::File::open(&root.path).map_err(|e| EnforceError::Attach {
            program: "Guard's root cgroup",
            source: ProgramError::IOError(e),
        })?;
        for hook in hooks {
            let started = std::time::Instant::now();
            if let Some(program) = hook.per_cgroup.filter(|_| !globally) {
                match attach_per_cgroup(&mut ebpf, &btf, &hook, program, &cgroup) {
                    Ok(link) => {
                        unpinned.push((hook.program, NewLink::LsmCgroup(program, link)));
                        attachment.attached.push(hook.program);
                        attachment.per_cgroup.push(hook.program);
                        tracing::debug!(
                            program,
                            elapsed_ms = started.elapsed().as_millis() as u64,
                            "loaded and attached to Guard's root cgroup"
                        );
                        continue;
                    }
                    Err(e) => tracing::warn!(
                        "{e}: attaching the hook's program globally instead, where every process on the host runs it"
                    ),
                }
            }
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
            unpinned.push((hook.program, NewLink::Lsm(link)));
            tracing::debug!(
                program = hook.program,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "loaded and attached"
            );
            attachment.attached.push(hook.program);
        }
        for program in route::PROGRAMS {
            let link = attach_route(&mut ebpf, program, root)?;
            unpinned.push((program, NewLink::Route(link)));
            attachment.attached.push(program);
        }
        let mut maps = BTreeMap::new();
        for name in map::PINNED {
            maps.insert(name, ebpf.take_map(name).ok_or_else(|| missing_map(name))?);
        }
        Self::with_maps(Some(ebpf), maps, unpinned, Vec::new(), pins, attachment)
    }

    fn with_maps(
        ebpf: Option<Ebpf>,
        mut maps: BTreeMap<&'static str, Map>,
        unpinned: Vec<(&'static str, NewLink)>,
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

    /// Detaches one hook's program (fault injection for the readiness test).
    pub fn detach(&mut self, hook: &str) {
        if let Some(at) = self.links.iter().position(|(name, _)| *name == hook) {
            self.links.remove(at);
            if let Some(dir) = &self.pins {
                let _ = std::fs::remove_file(dir.join(hook));
            }
        }
        let Some(ebpf) = self.ebpf.as_mut() else {
            return;
        };
        if let Some(program) = ebpf.program_mut(hook)
            && let Ok(program) = <&mut Lsm>::try_from(program)
        {
            let _ = program.unload();
        }
        let per_cgroup = lsm::ALL
            .iter()
            .find(|h| h.program == hook)
            .and_then(|h| h.per_cgroup);
        if let Some(program) = per_cgroup.and_then(|p| ebpf.program_mut(p))
            && let Ok(program) = <&mut LsmCgroup>::try_from(program)
        {
            let _ = program.unload();
        }
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
        self.set_keys(map::OWN_NAMES, names)
    }

    /// Makes `secrets` the files no agent may open, even to read (see
    /// [`map::SECRETS`]).
    pub fn set_secrets(&mut self, secrets: &[SecretKey]) -> Result<(), EnforceError> {
        self.set_keys(map::SECRETS, secrets)
    }

    /// Makes `keys` the keys of the set `name` (a hash map to `1`): the new
    /// ones first, then the stale ones removed.
    fn set_keys<K: aya::Pod + PartialEq>(
        &mut self,
        name: &'static str,
        keys: &[K],
    ) -> Result<(), EnforceError> {
        let mut set: HashMap<_, K, u8> = self.map(name)?;
        let stale: Vec<K> = set
            .keys()
            .filter_map(Result::ok)
            .filter(|key| !keys.contains(key))
            .collect();
        for key in keys {
            set.insert(key, 1, 0).map_err(map_err(name))?;
        }
        for key in &stale {
            match set.remove(key) {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(map_err(name)(e)),
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

/// Loads a hook's per-cgroup `program` and attaches it to Guard's root
/// cgroup, where it runs for every agent below and for nothing else.
fn attach_per_cgroup(
    ebpf: &mut Ebpf,
    btf: &Btf,
    hook: &LsmHook,
    program: &'static str,
    cgroup: &std::fs::File,
) -> Result<aya::programs::lsm_cgroup::LsmLinkId, EnforceError> {
    let found: &mut LsmCgroup = ebpf
        .program_mut(program)
        .ok_or(EnforceError::NoProgram(program))?
        .try_into()
        .map_err(|source| EnforceError::Load { program, source })?;
    found
        .load(hook.name, btf)
        .map_err(|source| EnforceError::Load { program, source })?;
    found
        .attach(cgroup)
        .map_err(|source| EnforceError::Attach { program, source })
}

/// Loads a routing program and attaches it to Guard's root cgroup, where it
/// runs for every agent below and for nothing else. Other programs on that
/// cgroup (a previous guardd's, until it is replaced) run too.
fn attach_route(
    ebpf: &mut Ebpf,
    program: &'static str,
    root: &GuardRoot,
) -> Result<CgroupSockAddrLinkId, EnforceError> {
    let failed = |reason: String| EnforceError::Route { program, reason };
    let routing: &mut CgroupSockAddr = ebpf
        .program_mut(program)
        .ok_or(EnforceError::NoProgram(program))?
        .try_into()
        .map_err(|e: ProgramError| failed(e.to_string()))?;
    routing.load().map_err(|e| failed(e.to_string()))?;
    let cgroup = std::fs::File::open(&root.path)
        .map_err(|e| failed(format!("{}: {e}", root.path.display())))?;
    // Through a BPF link (Linux 5.7+), which the kernel always treats as
    // one of several programs on the cgroup; it refuses any flag, so the
    // mode must be `Single` (no flag).
    routing
        .attach(&cgroup, CgroupAttachMode::Single)
        .map_err(|e| match std::error::Error::source(&e) {
            Some(source) => failed(format!("{e}: {source}")),
            None => failed(e.to_string()),
        })
}

/// Takes a new link from its program, as a link that can be pinned.
fn take_link(
    ebpf: &mut Ebpf,
    program: &'static str,
    link: NewLink,
) -> Result<FdLink, EnforceError> {
    // A hook's link is pinned under the hook's program name, whichever of
    // its programs made it.
    let program = match &link {
        NewLink::LsmCgroup(per_cgroup, _) => per_cgroup,
        _ => program,
    };
    let attach = |source| EnforceError::Attach { program, source };
    let found = ebpf
        .program_mut(program)
        .ok_or(EnforceError::NoProgram(program))?;
    match link {
        NewLink::Lsm(id) => {
            let lsm: &mut Lsm = found.try_into().map_err(attach)?;
            Ok(FdLink::from(lsm.take_link(id).map_err(attach)?))
        }
        NewLink::LsmCgroup(_, id) => {
            let lsm: &mut LsmCgroup = found.try_into().map_err(attach)?;
            Ok(FdLink::from(lsm.take_link(id).map_err(attach)?))
        }
        NewLink::Route(id) => {
            let routing: &mut CgroupSockAddr = found.try_into().map_err(attach)?;
            let link = routing.take_link(id).map_err(attach)?;
            // A kernel older than 5.7 attaches without a link, which
            // cannot be pinned.
            FdLink::try_from(link).map_err(|e| EnforceError::Route {
                program,
                reason: format!("its link cannot be pinned: {e}"),
            })
        }
    }
}
