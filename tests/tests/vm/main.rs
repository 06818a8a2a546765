//! Kernel tests. They need a kernel with BPF LSM and root, and run inside
//! the VMs that `cargo xtask test` boots (one per kernel series). Every test
//! makes the real system call and asserts the errno, the state afterwards,
//! and the record guardd wrote.
//!
//! One module per feature; `harness` holds the shared environment and
//! assertions.

mod attachment;
mod audit;
mod bypass;
mod databases;
mod default_deny;
mod examples;
mod exec;
mod files;
mod guardrails;
mod harness;
mod lifecycle;
mod local_api;
mod network;
mod people;
mod reload;
mod self_protection;
mod sessions;
