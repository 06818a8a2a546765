//! Guard's statement guard for PostgreSQL: it stands between clients and a
//! PostgreSQL server, speaks the wire protocol to both ([`protocol`]), and
//! judges every statement with PostgreSQL's own parser (`guard-sql`) and
//! the policy's statement rules before the server sees it ([`proxy`]).
//!
//! A refused statement never reaches the server: in its place the guard
//! sends one that fails in the server's parser, so the server ends the
//! client's transaction or pipeline exactly as it would for any error, and
//! the guard puts its own error, with the rule's reason, where the
//! server's would have been. The connection stays usable.

mod cache;
pub mod protocol;
pub mod proxy;

use std::collections::BTreeSet;

use guard_api::record::Verdict;
use guard_policy::database::StatementRules;
use serde::Serialize;

/// What decides for one connection: the profile and its rules for the
/// database.
#[derive(Clone, Debug)]
pub struct ConnectionPolicy {
    pub profile: String,
    /// `false` in a profile's monitor mode: statements rules deny are
    /// allowed and recorded as `would_deny`.
    pub enforce: bool,
    pub rules: StatementRules,
}

/// Who opened a connection, as the guard knows it.
#[derive(Clone, Debug, Serialize)]
pub struct Client {
    pub address: String,
    /// The login name the client asked for.
    pub user: String,
    pub database: String,
}

/// Where the guard gets each connection's policy and sends its records.
pub trait Authority: Send + Sync + 'static {
    /// The policy for a new connection; `Err` refuses it with the reason.
    fn connection(&self, client: &Client) -> Result<ConnectionPolicy, String>;
    /// Takes one statement's record.
    fn record(&self, record: StatementRecord);
}

/// One statement, as judged.
#[derive(Clone, Debug, Serialize)]
pub struct StatementRecord {
    pub client: Client,
    pub profile: String,
    pub verdict: Verdict,
    /// The rule that decided; none when the default did, or when the guard
    /// itself refused (`reason` says why).
    pub rule: Option<String>,
    pub reason: Option<String>,
    /// A `monitor` rule matched.
    pub monitored: bool,
    pub classes: BTreeSet<&'static str>,
    pub objects: BTreeSet<String>,
    /// The statement with its literals replaced by `$1`, `$2`, ...
    pub normalized: String,
    pub fingerprint: String,
}
