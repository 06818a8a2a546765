//! Guard's userspace: the `guardd` daemon, which loads the BPF LSM programs
//! and enforces a policy on agent cgroups, and `guardctl`, which launches
//! agents and checks policies.
//!
//! One module per concern: [`policy`] parses and validates the policy file,
//! [`compile`] turns it into map entries, [`kernel_layout`] reads the running
//! kernel's BTF, [`enforcer`] owns the loaded programs and maps, [`cgroup`]
//! manages agent cgroups, [`session`] keeps the session table, [`events`]
//! decodes decision records, [`chain`] seals them into a tamper-evident
//! chain, [`canary`] proves enforcement before guardd
//! says so, [`control`] is the local control socket, [`api`] the gRPC audit
//! feed, [`daemon`] runs it all,
//! and [`launch`] starts agents.

pub mod api;
pub mod canary;
pub mod cgroup;
pub mod chain;
pub mod collector;
pub mod compile;
pub mod control;
pub mod daemon;
pub mod enforcer;
pub mod enrich;
pub mod events;
pub mod grpc;
pub mod kernel_layout;
pub mod launch;
pub mod metrics;
pub mod ocsf;
pub mod policy;
pub mod redact;
pub mod session;
pub mod ship;
pub mod spool;
pub mod trust;

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
    /// answering a control request.
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
