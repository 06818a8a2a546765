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
pub mod compile;
pub mod control;
pub mod daemon;
pub mod enforcer;
pub mod events;
pub mod kernel_layout;
pub mod launch;
pub mod policy;
pub mod session;

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
