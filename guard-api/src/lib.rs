//! What Guard's programs share: the gRPC API ([`pb`], generated from
//! `proto/`), the decision [`record`] and its hash [`chain`], the audit
//! service ([`audit`]) that guardd and guard-collector both serve
//! ([`grpc`], which also dials guardd's local API socket) with mutual
//! [`tls`] over TCP, the peer of each [`accepted`] connection and the
//! [`http2`] settings of both ends, the OCSF
//! form of records ([`ocsf`]), shipping the events files (the [`spool`])
//! to a collector ([`ship`]), sessions ([`session`]) and default
//! [`paths`], what guardd and its statement guard tell each other
//! ([`statement_guard`]), starting a command inside a cgroup ([`launch`]),
//! [`metrics`] serving, [`time`] formats, [`shutdown`] on signals, logging
//! and exit codes.
//!
//! It knows nothing of the kernel, the policy or the stores: guardd,
//! guardctl and guard-collector depend on it, never the other way round.

pub mod accepted;
pub mod audit;
pub mod chain;
pub mod grpc;
pub mod http2;
pub mod launch;
pub mod metrics;
pub mod ocsf;
pub mod paths;
pub mod record;
pub mod session;
pub mod ship;
pub mod shutdown;
pub mod signing;
pub mod spool;
pub mod statement_guard;
pub mod time;
pub mod tls;

/// An error with each of its causes, `: `-separated (tonic's own errors
/// hide the cause, e.g. a certificate refused, below "transport error").
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Some errors repeat their cause in their own text.
        if !message.contains(&cause_text) {
            message = format!("{message}: {cause_text}");
        }
        source = cause.source();
    }
    message
}

/// Generated from the protos.
#[allow(clippy::large_enum_variant)] // oneofs of a record or a small message
pub mod pb {
    tonic::include_proto!("guard.v1");
}

/// Logging setup shared by the daemons.
pub mod logs {
    /// Log format on stderr.
    #[derive(Clone, Copy, clap::ValueEnum)]
    pub enum LogFormat {
        Text,
        Json,
    }

    /// Logs to stderr in `format`, filtered by `GUARD_LOG` (default `info`).
    /// A log line that cannot be written (stderr on a full disk) is dropped:
    /// the default would report it with `eprintln!`, which panics on that
    /// same failure and would end the task that was logging, such as one
    /// answering an API request.
    pub fn init(format: LogFormat) {
        let filter = tracing_subscriber::EnvFilter::try_from_env("GUARD_LOG")
            .unwrap_or_else(|_| "info".into());
        let logs = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .log_internal_errors(false);
        match format {
            LogFormat::Text => logs.init(),
            LogFormat::Json => logs.json().init(),
        }
    }
}

/// Exit codes shared by the binaries; documented in README.md.
pub mod exit {
    /// Something failed (I/O, a fault while setting up).
    pub const FAILURE: i32 = 1;
    /// Command-line usage error (clap's own code).
    pub const USAGE: i32 = 2;
    /// This host cannot enforce: BPF LSM inactive, or programs refused.
    pub const UNSUPPORTED_HOST: i32 = 3;
    /// The policy is invalid.
    pub const INVALID_POLICY: i32 = 4;
}
