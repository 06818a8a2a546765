//! guardd, the Guard daemon: it loads the BPF LSM programs and enforces a
//! policy on agent cgroups, and records every decision.
//!
//! [`kernel_layout`] reads the running kernel's BTF, [`enforcer`] owns the
//! loaded programs and maps, [`cgroup`] manages agent cgroups, [`session`]
//! keeps the session table, [`events`] decodes the kernel's records,
//! [`enrich`] and [`redact`] add the process's details with secrets masked,
//! [`spool`] appends whole lines, [`trust`] checks who owns Guard's files,
//! [`canary`] proves enforcement before guardd says so, [`generation`] is a
//! published policy generation, [`metrics`] are guardd's own, and
//! [`daemon`] runs it all. The policy is `guard-policy`'s; the record, the
//! chain and the API are `guard-api`'s.

pub mod canary;
pub mod cgroup;
pub mod daemon;
pub mod enforcer;
pub mod enrich;
pub mod events;
pub mod generation;
pub mod kernel_layout;
pub mod metrics;
pub mod redact;
pub mod session;
pub mod sock_diag;
pub mod spool;
pub mod trust;
