//! Guard's BPF LSM programs, one file per hook family: `exec`, `files`,
//! `network` and `self_protection`; and `routing`, the cgroup programs that
//! send agents' database connections to the statement guard. What they share: `agent` (which agent
//! the calling process is), `decision` (deciding, recording, and the shape
//! every hook has), `guardrails` (budgets and approved tickets), `maps`, and
//! `kernel` (reading kernel structures).
//!
//! Every hook has the same shape (`decision::decide_hook`): honour a denial
//! by an earlier BPF LSM program on the same hook, return at once for
//! processes that are not agents (one helper call and a compare), then
//! decide from the policy maps and record the decision. A hook that cannot
//! read kernel memory it needs fails open and counts `Counter::HookErrors`;
//! the daemon reports that counter.
//!
//! The hooks the kernel decides by the calling process's cgroup have a
//! second program (`decision::per_cgroup_too`) that guardd attaches to
//! Guard's root cgroup instead, so that processes outside it run none; the
//! two differ only in how they say allow and deny (`decision::Attach`).
//!
//! Hook functions are `#[inline(always)]` into the wrapper `#[lsm]`
//! generates: as a separate global function taking a struct by value, 6.1's
//! verifier rejects them.
#![no_std]
#![no_main]

mod agent;
mod decision;
mod dir_cache;
mod exec;
mod files;
mod guardrails;
mod kernel;
mod maps;
mod network;
mod routing;
mod self_protection;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// `bpf_d_path` and the probe-read helpers are GPL-only.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
