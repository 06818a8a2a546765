//! The one owner of kernel state: checks that this host can enforce, loads
//! and attaches the programs, and writes a compiled policy into their maps.

use std::{io, path::Path};

use aya::{
    Btf, Ebpf, EbpfError, EbpfLoader, Pod,
    maps::{HashMap, LpmTrie, MapData, MapError, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::{Lsm, ProgramError},
};
use guard_common::{Counter, KERNEL_FIELDS, LsmHook, global, lsm, map};

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
}

impl Enforcer {
    /// Checks the host, loads the programs with this kernel's layout, and
    /// attaches every hook. Agents stay untouched until [`Self::apply`].
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
        Ok(Self { ebpf, attachment })
    }

    /// Writes `policy` into the maps, with `agent_cgroups[i]` the cgroup id of
    /// the policy's i-th agent. Rule maps are written before the agents, so no
    /// agent is evaluated against a half-written rule set.
    pub fn apply(
        &mut self,
        policy: &CompiledPolicy,
        agent_cgroups: &[u64],
    ) -> Result<(), EnforceError> {
        self.fill_hash(
            map::EXEC_IDENTITY,
            policy.exec_identity.iter().map(|(k, v)| (*k, *v)),
        )?;
        self.fill_lpm(map::EXEC_PATHS, &policy.exec_paths)?;
        self.fill_hash(
            map::FILE_IDENTITY,
            policy.file_identity.iter().map(|(k, v)| (*k, *v)),
        )?;
        self.fill_lpm(map::FILE_NAMES, &policy.file_names)?;
        self.fill_lpm(map::NET_RULES, &policy.net_rules)?;
        let agents = agent_cgroups
            .iter()
            .zip(&policy.agents)
            .map(|(cgroup, (_, entry))| (*cgroup, *entry));
        self.fill_hash(map::AGENTS, agents)
    }

    fn fill_hash<K: Pod, V: Pod>(
        &mut self,
        name: &'static str,
        entries: impl Iterator<Item = (K, V)>,
    ) -> Result<(), EnforceError> {
        let mut m: HashMap<_, K, V> = self.map(name)?;
        for (k, v) in entries {
            m.insert(k, v, 0).map_err(map_err(name))?;
        }
        Ok(())
    }

    fn fill_lpm<K: Pod, V: Pod>(
        &mut self,
        name: &'static str,
        entries: &[(u32, K, V)],
    ) -> Result<(), EnforceError> {
        let mut m: LpmTrie<_, K, V> = self.map(name)?;
        for (bits, k, v) in entries {
            m.insert(&Key::new(*bits, *k), v, 0)
                .map_err(map_err(name))?;
        }
        Ok(())
    }

    /// Takes the ring buffer of decision records (once).
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, EnforceError> {
        let data = self.ebpf.take_map(map::EVENTS).ok_or(EnforceError::Map {
            name: map::EVENTS,
            source: MapError::InvalidName {
                name: map::EVENTS.into(),
            },
        })?;
        RingBuf::try_from(data).map_err(map_err(map::EVENTS))
    }

    /// A kernel counter, summed over CPUs.
    pub fn counter(&self, counter: Counter) -> Result<u64, EnforceError> {
        let data = self.ebpf.map(map::COUNTERS).ok_or(EnforceError::Map {
            name: map::COUNTERS,
            source: MapError::InvalidName {
                name: map::COUNTERS.into(),
            },
        })?;
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
        let data = self.ebpf.map_mut(name).ok_or(EnforceError::Map {
            name,
            source: MapError::InvalidName { name: name.into() },
        })?;
        M::try_from(data).map_err(map_err(name))
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
