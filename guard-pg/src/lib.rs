//! Guard's statement guard for PostgreSQL: it stands between clients and a
//! PostgreSQL server, speaks the wire protocol to both ([`protocol`]), and
//! judges every statement with PostgreSQL's own parser (`guard-sql`) and
//! the policy's statement rules before the server sees it ([`proxy`]).
//!
//! Budgets bound the rows statements change and read ([`budget`]);
//! masking hides columns and values in the rows a client reads ([`mask`]);
//! the guard may log in with credentials it holds ([`login`]).
//!
//! A refused statement never reaches the server: in its place the guard
//! sends one that fails in the server's parser, so the server ends the
//! client's transaction or pipeline exactly as it would for any error, and
//! the guard puts its own error, with the rule's reason, where the
//! server's would have been. The connection stays usable.

pub mod budget;
mod cache;
pub mod login;
pub mod mask;
pub mod protocol;
pub mod proxy;
pub mod tls;

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use guard_api::record::{StatementNote, Verdict};
use guard_policy::{
    database::StatementRules,
    policy::{Mode, Policy},
};
use serde::Serialize;

/// What decides for one connection: the profile and its rules for the
/// database.
#[derive(Clone, Debug)]
pub struct ConnectionPolicy {
    /// The authority's number for the connection, which its records carry.
    pub connection: u64,
    pub profile: String,
    /// `false` in a profile's monitor mode: statements rules deny are
    /// allowed and recorded as `would_deny`.
    pub enforce: bool,
    pub rules: StatementRules,
    /// What the connection's Guard session has spent of its statement
    /// budgets, shared by the session's connections (a connection from no
    /// session has its own).
    pub spent: Arc<Spent>,
}

/// Rows and bytes a session's statements changed and read so far.
#[derive(Debug, Default)]
pub struct Spent {
    pub rows_changed: AtomicU64,
    pub rows_read: AtomicU64,
    pub bytes_read: AtomicU64,
}

impl Spent {
    /// Adds `amount` to `counter` unless that takes it over `limit`; the
    /// total it would have reached when it does.
    pub fn spend(counter: &AtomicU64, amount: u64, limit: Option<u64>) -> Result<(), u64> {
        let Some(limit) = limit else {
            counter.fetch_add(amount, Ordering::Relaxed);
            return Ok(());
        };
        counter
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |spent| {
                spent.checked_add(amount).filter(|&total| total <= limit)
            })
            .map(drop)
            .map_err(|spent| spent.saturating_add(amount))
    }
}

impl ConnectionPolicy {
    /// `profile`'s rules for `database` in `policy`; a profile without
    /// rules for it is refused the database.
    pub fn of(
        policy: &Policy,
        connection: u64,
        profile: &str,
        database: &str,
    ) -> Result<ConnectionPolicy, String> {
        let found = policy
            .profiles
            .iter()
            .find(|p| p.name == profile)
            .ok_or_else(|| format!("profile `{profile}` is not in the policy in force"))?;
        let rules = found
            .databases
            .iter()
            .find(|r| r.database == database)
            .ok_or_else(|| {
                format!(
                    "profile `{profile}` has no rules for database `{database}`, so it may not use it"
                )
            })?;
        Ok(ConnectionPolicy {
            connection,
            profile: profile.to_string(),
            enforce: found.mode == Mode::Enforce,
            rules: rules.clone(),
            spent: Arc::default(),
        })
    }
}

/// A connection to the guard, as its startup packet describes it.
#[derive(Clone, Debug)]
pub struct Client {
    pub peer: SocketAddr,
    /// The guard's own address of the connection.
    pub local: SocketAddr,
    /// The login name the client asked for.
    pub user: String,
    /// The PostgreSQL database the client asked for.
    pub dbname: String,
    /// The role the guard logs in as for the client, with credentials it
    /// holds (the client's `user` is then only recorded).
    pub role: Option<String>,
}

/// A connection's policy, or why it is refused.
pub type Decision = Pin<Box<dyn Future<Output = Result<ConnectionPolicy, String>> + Send>>;

/// The approved ticket a statement may use, if any.
pub type Approval = Pin<Box<dyn Future<Output = Option<String>> + Send>>;

/// Where the guard gets each connection's policy and approvals, and sends
/// its records.
pub trait Authority: Send + Sync + 'static {
    /// The policy for a new connection; `Err` refuses it with the reason.
    fn connection(&self, client: &Client) -> Decision;
    /// A statement with `fingerprint` that an `approvable` rule refuses on
    /// `connection`: the ticket a human approved for it, which this
    /// statement uses (a one-use ticket is used up).
    fn approval(&self, connection: u64, fingerprint: &str) -> Approval;
    /// Takes one statement's record.
    fn record(&self, record: StatementRecord);
    /// Connection `connection` ended.
    fn closed(&self, connection: u64);
}

/// One statement, as judged.
#[derive(Clone, Debug, Serialize)]
pub struct StatementRecord {
    pub connection: u64,
    pub profile: String,
    pub verdict: Verdict,
    /// The rule that decided (`statement-guard` when the guard itself
    /// refused; `reason` says why); none when the default did.
    pub rule: Option<String>,
    pub reason: Option<String>,
    /// Refused by an `approvable` rule (a human may approve it).
    pub approvable: bool,
    /// Allowed by this approved ticket.
    pub ticket: Option<String>,
    #[serde(flatten)]
    pub statement: StatementNote,
}
