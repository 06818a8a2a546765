//! Why Guard cannot enforce, or failed while setting up; and the small
//! conversions of aya's errors into it.

use std::{io, path::PathBuf};

use aya::{EbpfError, maps::MapError, programs::ProgramError};

use crate::{cgroup::CgroupError, kernel_layout::LayoutError};

pub(super) const SECURITYFS_LSM: &str = "/sys/kernel/security/lsm";

/// Why Guard cannot enforce on this host, or failed while setting up.
#[derive(Debug, thiserror::Error)]
pub enum EnforceError {
    #[error(
        "cannot read the active LSM list at {SECURITYFS_LSM}: {0}. Mount securityfs (`mount -t securityfs securityfs /sys/kernel/security`) and check that the kernel has CONFIG_SECURITY=y"
    )]
    LsmList(io::Error),
    #[error(
        "BPF LSM is not active on this kernel: the active LSMs are `{active}`. Add `bpf` to the kernel's `lsm=` boot parameter (for example `lsm={active},bpf`) and reboot; the kernel also needs CONFIG_BPF_LSM=y. Meanwhile `guardd --routing-only` runs the one part that needs no LSM: agents' database connections routed to their statement guards"
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
        "the kernel refused to load BPF LSM program `{program}` with EPERM although `bpf` is an active LSM. This kernel does not allow BPF trampolines (ftrace patching disabled, or lockdown), so BPF LSM cannot enforce here. Guard is not enforcing (`guardd --routing-only` runs the one part that needs no LSM: agents' database connections routed to their statement guards)"
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
    #[error(
        "cannot load or attach `{program}`, the program that routes agents' database connections to the statement guard, to Guard's cgroup: {reason}"
    )]
    Route {
        program: &'static str,
        reason: String,
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

/// The error for a map the object lacks (an inconsistent build).
pub(super) fn missing_map(name: &'static str) -> EnforceError {
    EnforceError::Map {
        name,
        source: MapError::InvalidName { name: name.into() },
    }
}

pub(super) fn map_err(name: &'static str) -> impl Fn(MapError) -> EnforceError {
    move |source| EnforceError::Map { name, source }
}

/// Whether removing a key failed only because it is not there (the kernel
/// says ENOENT): harmless when clearing a slot.
pub(super) fn is_not_found(error: &MapError) -> bool {
    match error {
        MapError::KeyNotFound => true,
        MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

pub(super) fn is_eperm(error: &ProgramError) -> bool {
    match error {
        ProgramError::LoadError { io_error, .. } => io_error.raw_os_error() == Some(libc::EPERM),
        ProgramError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::EPERM),
        _ => false,
    }
}
