//! guardd: load, enforce, stream records, reload, detach.
//!
//! One [`state::State`] behind a mutex owns the enforcer, the generations
//! and the session table. Three things use it: the record stream
//! ([`writer`]), the local API ([`services`], with its callers in
//! [`caller`], its refusals in [`refusal`] and the starting of sessions
//! in [`launching`]), reloads ([`reload`]) and
//! the statement guard's connections ([`statements`]). [`run`] starts them
//! all.

pub mod approvals;
mod builtins;
mod caller;
mod config;
mod dns;
mod hosts;
mod kept;
mod launching;
mod refusal;
mod reload;
mod run;
mod services;
mod state;
mod statements;
mod why;
mod writer;

pub use builtins::Builtins;
pub use caller::AccessGroups;
pub use config::{
    Config, Fatal, Persistence, StatementGuardConfig, compile_policy, load_own_policy,
};
pub use run::{check_host, detach, run};
pub use writer::{Checkpoints, Out, RecordWriter};
