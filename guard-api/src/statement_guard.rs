//! What guardd and its statement guard (`guard-pg`) tell each other: one
//! JSON object per line, on the socket guardd hands the guard when it
//! starts it (file descriptor [`CONTROL_FD`]).
//!
//! guardd decides who opened each connection (from the kernel, never from
//! the client) and seals the statement records into the host's chain; the
//! guard, an unprivileged process, does the parsing and judging.

use std::{collections::BTreeMap, net::SocketAddr};

use serde::{Deserialize, Serialize};

use crate::record::{StatementNote, Verdict};

/// The rule of a statement the guard itself refused (one it cannot parse,
/// or one that would change how the server reads statements), as records
/// name it.
pub const GUARD_RULE: &str = "statement-guard";

/// The guard's end of the control socket.
pub const CONTROL_FD: i32 = 3;

/// From guardd to the guard.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToGuard {
    /// The policy in force (its text): sent first and after each reload,
    /// before any answer made under it. The guard listens for the
    /// databases it names, and judges new connections by it. `files` holds
    /// the TLS files the databases name, by path, as guardd read them (the
    /// guard reads no file itself); a file guardd could not read is absent.
    Policy {
        text: String,
        files: BTreeMap<String, String>,
    },
    /// The profile of connection `id`, or why it is refused, and the Guard
    /// session it belongs to (the outermost one, for a sub-agent's): the
    /// session's connections share its statement budgets.
    Profile {
        id: u64,
        answer: Result<String, String>,
        #[serde(default)]
        session: Option<String>,
    },
    /// The Guard sessions still running, sent when some ended: the guard
    /// forgets what the others spent of their budgets.
    Sessions { live: Vec<String> },
    /// The answer to [`FromGuard::Approval`] `query`: the approved ticket
    /// the statement uses (a one-use ticket is used up by it), if any.
    Approval { query: u64, ticket: Option<String> },
}

/// From the guard to guardd.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FromGuard {
    /// A client connected to the guard for `database`: which profile
    /// decides?
    Connection {
        id: u64,
        database: String,
        client: SocketAddr,
        /// The guard's own address of the connection.
        local: SocketAddr,
    },
    /// A statement judged on connection `id`.
    Statement {
        id: u64,
        verdict: Verdict,
        /// The rule that decided ([`GUARD_RULE`] when the guard itself
        /// refused); none when the default did.
        rule: Option<String>,
        reason: Option<String>,
        /// Refused by an `approvable` rule: guardd opens a ticket.
        approvable: bool,
        /// Allowed by this approved ticket.
        ticket: Option<String>,
        note: Box<StatementNote>,
    },
    /// An `approvable` rule refuses a statement with this fingerprint on
    /// connection `id`: has a human approved it for the connection's
    /// session?
    Approval {
        id: u64,
        query: u64,
        fingerprint: String,
    },
    /// Connection `id` ended.
    Closed { id: u64 },
    /// The guard listens for `database` (`problem` is `None`), or cannot
    /// serve it, and why.
    Serving {
        database: String,
        problem: Option<String>,
    },
}
