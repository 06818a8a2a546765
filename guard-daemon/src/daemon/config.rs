//! guardd's configuration, its fatal errors with their exit codes, and
//! loading its own policy.

use std::path::{Path, PathBuf};

use guard_api::exit;
use guard_policy::{InvalidPolicy, LoadedPolicy};

use crate::enforcer::EnforceError;

use super::{builtins::Builtins, caller::AccessGroups};

pub struct Config {
    pub policy: PathBuf,
    /// Where records go; stdout when `None`.
    pub events: Option<PathBuf>,
    /// Guard's cgroup, relative to the cgroup2 mount.
    pub cgroup_root: String,
    /// The local gRPC API socket.
    pub socket: PathBuf,
    /// Where the gRPC audit API listens, and how; off when `None`.
    pub grpc_listen: Option<(std::net::SocketAddr, guard_api::tls::Transport)>,
    /// The collector to ship the events file to; needs `events`.
    pub collector: Option<guard_api::tls::Target>,
    /// This host's name in records and in the collector.
    pub host_name: String,
    /// Masks secrets in recorded command lines.
    pub redactor: crate::redact::Redactor,
    /// Also write every record as an OCSF event to this file.
    pub ocsf: Option<PathBuf>,
    /// Where Prometheus metrics are served; off when `None`.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// More files and directories no agent may change (configuration, the
    /// collector's database).
    pub protect: Vec<PathBuf>,
    /// Where the generation in force and the live sessions are kept for
    /// the next guardd ([`kept`]).
    pub state_file: PathBuf,
    /// Where each session's last denials are written for its agent.
    pub why_dir: PathBuf,
    /// The host's key for signed checkpoints, made on first start.
    pub signing_key: PathBuf,
    /// When the events file rotates, and the bound on the spool.
    pub spool: crate::spool::SpoolLimits,
    /// The DNS server for hostname rules; the system's when `None`.
    pub dns_server: Option<std::net::IpAddr>,
    /// How the statement guard runs, for policies that name databases.
    pub statement_guard: StatementGuardConfig,
    /// Which programs guardd loads, and how it attaches them.
    pub programs: crate::enforcer::Programs,
    /// Who besides root may read and change through the local API.
    pub access: AccessGroups,
}

/// How guardd runs its statement guard (`guard-pg`).
#[derive(Clone, Debug)]
pub struct StatementGuardConfig {
    pub program: PathBuf,
    /// The unprivileged user it runs as.
    pub user: String,
    /// `--log-format` for its logs, which go to guardd's stderr.
    pub log_format: &'static str,
}

impl Config {
    /// guardd's TLS files, for --grpc-listen and --collector.
    pub fn tls_files(&self) -> Option<&guard_api::tls::TlsFiles> {
        let served = self
            .grpc_listen
            .as_ref()
            .and_then(|(_, transport)| match transport {
                guard_api::tls::Transport::Tls(files) => Some(files),
                guard_api::tls::Transport::Plaintext => None,
            });
        served.or_else(|| self.collector.as_ref().and_then(|c| c.tls.as_ref()))
    }

    /// Refuses settings that contradict each other, with exit
    /// [`exit::USAGE`]: each would otherwise break guardd later. (Flags that
    /// need another, such as `--collector` without `--events`, are refused
    /// by the command line's own rules.)
    pub fn check(&self) -> Result<(), Fatal> {
        let usage = |message: String| Fatal {
            code: exit::USAGE,
            error: anyhow::anyhow!(message),
        };
        if let (Some((grpc, _)), Some(metrics)) = (&self.grpc_listen, self.metrics_listen)
            && *grpc == metrics
        {
            return Err(usage(format!(
                "--grpc-listen and --metrics-listen are both {grpc}"
            )));
        }
        if let Some(size) = self.spool.rotate_size
            && size == 0
        {
            return Err(usage("--spool-rotate-size must be more than 0".into()));
        }
        if let (Some(max), Some(size)) = (self.spool.max, self.spool.rotate_size)
            && max < 2 * size
        {
            return Err(usage(format!(
                "--spool-max ({max} bytes) must be at least twice --spool-rotate-size ({size} bytes): the events file must rotate before the spool is full"
            )));
        }
        let files = [
            ("--policy", Some(&self.policy)),
            ("--events", self.events.as_ref()),
            ("--ocsf-file", self.ocsf.as_ref()),
            ("--state-file", Some(&self.state_file)),
            ("--socket", Some(&self.socket)),
            ("--why-dir", Some(&self.why_dir)),
            ("--signing-key", Some(&self.signing_key)),
        ];
        for (i, (flag, path)) in files.iter().enumerate() {
            let Some(path) = path else { continue };
            if let Some((other, _)) = files[i + 1..]
                .iter()
                .find(|(_, other)| other.is_some_and(|o| o == *path))
            {
                return Err(usage(format!(
                    "{flag} and {other} name the same path, {}",
                    path.display()
                )));
            }
        }
        Ok(())
    }
}

/// Where what outlives one guardd is, for the next to adopt.
pub struct Persistence {
    /// Below which the programs are pinned ([`crate::enforcer::pin_root`]).
    pub pins: PathBuf,
    /// See [`kept`].
    pub state_file: PathBuf,
}

/// An error with the process exit code it maps to.
#[derive(Debug, thiserror::Error)]
#[error("{error:#}")]
pub struct Fatal {
    pub code: i32,
    pub error: anyhow::Error,
}

impl From<EnforceError> for Fatal {
    fn from(e: EnforceError) -> Self {
        let code = if e.is_unsupported_host() {
            exit::UNSUPPORTED_HOST
        } else {
            exit::FAILURE
        };
        Fatal {
            code,
            error: e.into(),
        }
    }
}

pub(super) fn failure(error: impl Into<anyhow::Error>) -> Fatal {
    Fatal {
        code: exit::FAILURE,
        error: error.into(),
    }
}

impl From<InvalidPolicy> for Fatal {
    fn from(e: InvalidPolicy) -> Self {
        Fatal {
            code: exit::INVALID_POLICY,
            error: e.into(),
        }
    }
}

/// Reads, validates and compiles guardd's policy file, with guardd's
/// built-in agent, profile and rules added. The file and every directory
/// above it must be root's alone ([`trust::check_owned`]), or whoever could
/// write them would choose the policy.
pub fn load_own_policy(path: &Path, builtins: &Builtins) -> Result<LoadedPolicy, Fatal> {
    crate::trust::check_owned(path)
        .map_err(|e| InvalidPolicy(format!("refusing the policy: {e}")))?;
    let loaded = guard_policy::load(path, guard_policy::compile::Paths::OnThisHost, |p| {
        builtins.add_to(p)
    })?;
    Ok(with_own_secrets(loaded, builtins))
}

/// Validates and compiles a policy's text with guardd's built-ins; errors
/// name `origin` with the line, column and reason.
pub fn compile_policy(
    text: String,
    origin: &str,
    builtins: &Builtins,
) -> Result<LoadedPolicy, Fatal> {
    let loaded = guard_policy::compile_text(
        text,
        origin,
        guard_policy::compile::Paths::OnThisHost,
        |p| builtins.add_to(p),
    )?;
    Ok(with_own_secrets(loaded, builtins))
}

/// Adds Guard's own secrets (the signing key) to the files no agent may
/// read.
fn with_own_secrets(mut loaded: LoadedPolicy, builtins: &Builtins) -> LoadedPolicy {
    loaded.compiled.secrets.extend(builtins.secret_keys());
    loaded
}
