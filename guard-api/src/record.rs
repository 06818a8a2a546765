//! A decision record and a loss record: one JSON object per line of the
//! events stream, as guardd writes it, the chain seals it and the collector
//! stores it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize, de::IgnoredAny};

use crate::session::{Login, SessionRef, User};

/// A decision, as written to the events stream. It is read through
/// `RecordMembers` (a new field goes there too: the conversion will not
/// compile without it); the attributes below shape how it is written.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(try_from = "RecordMembers")]
pub struct Record {
    /// Position in this host's record stream, from 1; see [`crate::chain`].
    pub seq: u64,
    /// Wall-clock time of the decision, RFC 3339.
    pub time: String,
    /// LSM hook that decided.
    pub hook: String,
    /// What the process tried.
    pub action: Action,
    pub verdict: Verdict,
    pub agent: String,
    /// The profile that decided.
    pub profile: String,
    /// The session, its launching user and labels; absent for a process
    /// that runs in an agent cgroup outside any session.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionRef>,
    /// Policy generation that decided, and the SHA-256 of its policy file.
    pub generation: u64,
    pub policy_sha256: String,
    /// The cgroup whose entry applied (session or agent), and the process's.
    pub agent_cgroup: u64,
    pub cgroup: u64,
    /// Process id (the kernel's tgid).
    pub pid: u32,
    /// Thread id (the kernel's pid).
    pub tid: u32,
    pub uid: u32,
    pub comm: String,
    /// The file path, or `address:port` for network actions.
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileIdentity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Network actions decided by a hostname rule: the hostname.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Id of the rule that decided; `default` when no rule matched and the
    /// profile's default decided.
    pub rule: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The acting process's command line and parents, from procfs; absent
    /// when it had already exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessInfo>,
    /// Fields in which secrets were masked, e.g. `process.cmdline`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redacted: Vec<String>,
    /// Notes on the record, e.g. `path_truncated`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
    /// The approval ticket this record opened, used, or changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<TicketNote>,
    /// The exhausted budget of a denial by rule `budget:NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetNote>,
    /// The statement of a `statement` record (the statement guard's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement: Option<StatementNote>,
}

/// A decision record's members as they stand in a line, the session's
/// among the others: read in one pass (serde's `flatten` would buffer every
/// member it does not know first), and with a note of any `loss` or
/// `checkpoint` member, which makes the line another kind.
#[derive(Deserialize)]
struct RecordMembers {
    seq: u64,
    time: String,
    hook: String,
    action: Action,
    verdict: Verdict,
    agent: String,
    profile: String,
    session: Option<String>,
    user: Option<User>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    parent_session: Option<String>,
    login: Option<Login>,
    generation: u64,
    policy_sha256: String,
    agent_cgroup: u64,
    cgroup: u64,
    pid: u32,
    tid: u32,
    uid: u32,
    comm: String,
    target: String,
    file: Option<FileIdentity>,
    protocol: Option<String>,
    host: Option<String>,
    rule: String,
    message: Option<String>,
    process: Option<ProcessInfo>,
    #[serde(default)]
    redacted: Vec<String>,
    #[serde(default)]
    flags: Vec<String>,
    ticket: Option<TicketNote>,
    budget: Option<BudgetNote>,
    statement: Option<StatementNote>,
    loss: Option<IgnoredAny>,
    checkpoint: Option<IgnoredAny>,
}

impl TryFrom<RecordMembers> for Record {
    type Error = &'static str;

    fn try_from(m: RecordMembers) -> Result<Self, Self::Error> {
        if m.loss.is_some() || m.checkpoint.is_some() {
            return Err("a decision record has no `loss` or `checkpoint` member");
        }
        let session = match (m.session, m.user) {
            (Some(session), Some(user)) => Some(SessionRef {
                session,
                user,
                labels: m.labels,
                parent_session: m.parent_session,
                login: m.login,
            }),
            (Some(_), None) => return Err("a record's `session` comes with its `user`"),
            (None, _) => None,
        };
        Ok(Record {
            seq: m.seq,
            time: m.time,
            hook: m.hook,
            action: m.action,
            verdict: m.verdict,
            agent: m.agent,
            profile: m.profile,
            session,
            generation: m.generation,
            policy_sha256: m.policy_sha256,
            agent_cgroup: m.agent_cgroup,
            cgroup: m.cgroup,
            pid: m.pid,
            tid: m.tid,
            uid: m.uid,
            comm: m.comm,
            target: m.target,
            file: m.file,
            protocol: m.protocol,
            host: m.host,
            rule: m.rule,
            message: m.message,
            process: m.process,
            redacted: m.redacted,
            flags: m.flags,
            ticket: m.ticket,
            budget: m.budget,
            statement: m.statement,
        })
    }
}

/// What a decision decided. Its name is how records, the API's filters,
/// the collector's tables and `guardctl` spell it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    Allow,
    Deny,
    /// Monitor mode: a rule would have denied; the action was allowed.
    WouldDeny,
}

impl Verdict {
    pub const ALL: [Verdict; 3] = [Verdict::Allow, Verdict::Deny, Verdict::WouldDeny];

    pub fn name(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::WouldDeny => "would_deny",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.name() == name)
    }
}

/// What a process tried, or what happened to a ticket. Its name is how
/// records spell it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Exec,
    /// Mapping a program executable (`ld.so PROGRAM`).
    ExecMap,
    Unlink,
    Rmdir,
    /// Renaming a file away, or over another.
    Rename,
    /// Renaming a file to a new name in a directory.
    RenameInto,
    Truncate,
    OpenWrite,
    /// Opening one of Guard's secrets (a password or key file) to read.
    OpenRead,
    Create,
    Mkdir,
    Symlink,
    Link,
    /// A hard link that would take a protected file out of its rule's reach.
    LinkAway,
    Connect,
    Sendmsg,
    Bpf,
    Signal,
    Ptrace,
    Mount,
    Umount,
    Remount,
    LoadKernelFile,
    LoadKernelData,
    CloneIntoCgroup,
    TicketApprove,
    TicketDeny,
    TicketExpire,
    /// A database statement, judged by the statement guard.
    Statement,
    /// A kernel record of a hook this guardd does not know, or a record
    /// from a newer guardd with an action this build does not know.
    Unknown,
}

impl Action {
    pub const ALL: [Action; 30] = [
        Action::Exec,
        Action::ExecMap,
        Action::Unlink,
        Action::Rmdir,
        Action::Rename,
        Action::RenameInto,
        Action::Truncate,
        Action::OpenWrite,
        Action::OpenRead,
        Action::Create,
        Action::Mkdir,
        Action::Symlink,
        Action::Link,
        Action::LinkAway,
        Action::Connect,
        Action::Sendmsg,
        Action::Bpf,
        Action::Signal,
        Action::Ptrace,
        Action::Mount,
        Action::Umount,
        Action::Remount,
        Action::LoadKernelFile,
        Action::LoadKernelData,
        Action::CloneIntoCgroup,
        Action::TicketApprove,
        Action::TicketDeny,
        Action::TicketExpire,
        Action::Statement,
        Action::Unknown,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Action::Exec => "exec",
            Action::ExecMap => "exec_map",
            Action::Unlink => "unlink",
            Action::Rmdir => "rmdir",
            Action::Rename => "rename",
            Action::RenameInto => "rename_into",
            Action::Truncate => "truncate",
            Action::OpenWrite => "open_write",
            Action::OpenRead => "open_read",
            Action::Create => "create",
            Action::Mkdir => "mkdir",
            Action::Symlink => "symlink",
            Action::Link => "link",
            Action::LinkAway => "link_away",
            Action::Connect => "connect",
            Action::Sendmsg => "sendmsg",
            Action::Bpf => "bpf",
            Action::Signal => "signal",
            Action::Ptrace => "ptrace",
            Action::Mount => "mount",
            Action::Umount => "umount",
            Action::Remount => "remount",
            Action::LoadKernelFile => "load_kernel_file",
            Action::LoadKernelData => "load_kernel_data",
            Action::CloneIntoCgroup => "clone_into_cgroup",
            Action::TicketApprove => "ticket_approve",
            Action::TicketDeny => "ticket_deny",
            Action::TicketExpire => "ticket_expire",
            Action::Statement => "statement",
            Action::Unknown => "unknown",
        }
    }

    /// The action named `name`; [`Action::Unknown`] for a name this build
    /// does not know, so that a newer guardd's records are still read.
    pub fn from_name(name: &str) -> Self {
        Self::ALL
            .into_iter()
            .find(|a| a.name() == name)
            .unwrap_or(Action::Unknown)
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Verdict {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Verdict {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = std::borrow::Cow::<str>::deserialize(deserializer)?;
        Verdict::from_name(&name).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "verdict `{name}` is none of allow, deny, would_deny"
            ))
        })
    }
}

impl Serialize for Action {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Action {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = std::borrow::Cow::<str>::deserialize(deserializer)?;
        Ok(Action::from_name(&name))
    }
}

/// A ticket, as a record mentions it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TicketNote {
    pub id: String,
    /// `requested` (the denial opened or repeats it), `approved`,
    /// `used`, `denied` or `expired`.
    pub state: String,
    /// Approvals: one use only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub once: bool,
    /// Approvals: RFC 3339 time it ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
}

/// An exhausted budget, as a denial mentions it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BudgetNote {
    /// `destroy` or `destinations`.
    pub name: String,
    /// Operations the budget allowed the session before it ran out.
    pub spent: u64,
    pub burst: u32,
    pub rate: String,
}

/// A database statement as the statement guard judged it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatementNote {
    /// The database as the policy names it, and its server (`host:port`).
    pub database: String,
    pub server: String,
    /// The PostgreSQL database and the login name the client asked for.
    pub dbname: String,
    pub user: String,
    /// The client's address (`ip:port`).
    pub client: String,
    /// The role the guard logged in as, with credentials it holds; absent
    /// when the client's own login was relayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// What the statement does (docs/databases.md lists the classes), and
    /// the tables it names.
    pub classes: Vec<String>,
    pub objects: Vec<String>,
    /// The statement with its literals replaced by `$1`, `$2`, ...; empty
    /// when it did not parse.
    pub normalized: String,
    /// The same for every statement that differs only in its literals.
    pub fingerprint: String,
    /// A `monitor` rule matched (`rule` names it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub monitored: bool,
    /// Rows the statement changed, as the server's command tag counts them
    /// (`DELETE 3`), and the rows and bytes of rows it returned; absent
    /// when the guard did not count them (docs/databases.md says when).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows_changed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows_read: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_read: Option<u64>,
    /// What was masked in the rows it returned: columns (`schema.table.column`,
    /// or a computed column) and values (`value:email`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub masked: Vec<String>,
}

/// The rule of a self-protection denial (`guard_common::SELF_PROTECTION`).
pub const SELF_PROTECTION_RULE: &str = "self-protection";

/// The rule of a connection refused because it would skip the statement
/// guard (`guard_common::STATEMENT_GUARD_ONLY`).
pub const STATEMENT_GUARD_ONLY_RULE: &str = "statement-guard-only";

/// A ticket's id, as people type it: its number in 8 hex digits.
pub fn ticket_id(number: u32) -> String {
    format!("{number:08x}")
}

/// Records that were made but never written, as written to the events
/// stream in their place.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LossRecord {
    pub seq: u64,
    pub time: String,
    pub loss: Loss,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Loss {
    /// Where they were lost: `ring_buffer` or `decode`.
    pub stage: String,
    pub records: u64,
}

/// The host's signature over the head of its chain, as a line of the
/// stream (see [`crate::signing`]).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CheckpointRecord {
    pub seq: u64,
    pub time: String,
    pub checkpoint: Checkpoint,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Checkpoint {
    /// The line it signs: the one before it.
    pub covers: u64,
    /// That line's chain hash (hex), which commits to every line before.
    pub head: String,
    /// The host's public key: `ed25519:` and 64 hex digits.
    pub key: String,
    /// Ed25519, 128 hex digits.
    pub signature: String,
}

/// One line of the events stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Line {
    Decision(Box<Record>),
    Loss(LossRecord),
    Checkpoint(CheckpointRecord),
}

impl Line {
    /// Parses a line of an events file (a sealed record, loss or
    /// checkpoint), strictly (a repeated member is refused). Nearly every
    /// line is a decision, read as one in a single pass; any other line is
    /// looked at for a `loss` or `checkpoint` member, then read as that.
    pub fn parse(line: &str) -> serde_json::Result<Self> {
        let not_a_decision = match serde_json::from_str::<Record>(line) {
            Ok(record) => return Ok(Line::Decision(Box::new(record))),
            Err(e) => e,
        };
        #[derive(Deserialize)]
        struct Probe {
            loss: Option<IgnoredAny>,
            checkpoint: Option<IgnoredAny>,
        }
        let probe = serde_json::from_str::<Probe>(line)?;
        if probe.loss.is_some() {
            serde_json::from_str(line).map(Line::Loss)
        } else if probe.checkpoint.is_some() {
            serde_json::from_str(line).map(Line::Checkpoint)
        } else {
            Err(not_a_decision)
        }
    }

    /// The line's JSON object, before sealing.
    pub fn to_json(&self) -> serde_json::Result<Vec<u8>> {
        match self {
            Line::Decision(r) => serde_json::to_vec(r),
            Line::Loss(l) => serde_json::to_vec(l),
            Line::Checkpoint(c) => serde_json::to_vec(c),
        }
    }

    pub fn seq(&self) -> u64 {
        match self {
            Line::Decision(r) => r.seq,
            Line::Loss(l) => l.seq,
            Line::Checkpoint(c) => c.seq,
        }
    }

    pub fn time(&self) -> &str {
        match self {
            Line::Decision(r) => &r.time,
            Line::Loss(l) => &l.time,
            Line::Checkpoint(c) => &c.time,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileIdentity {
    /// Kernel `dev_t` encoding: major << 20 | minor.
    pub dev: u32,
    pub ino: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Empty when it changed while guardd read it.
    pub cmdline: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    /// Parent first, up to init.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ancestry: Vec<Ancestor>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Ancestor {
    pub pid: u32,
    pub comm: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_verdict_and_action_reads_back_by_its_name() {
        for verdict in Verdict::ALL {
            let json = serde_json::to_string(&verdict).unwrap();
            assert_eq!(json, format!("\"{}\"", verdict.name()));
            assert_eq!(serde_json::from_str::<Verdict>(&json).unwrap(), verdict);
        }
        let mut names = std::collections::HashSet::new();
        for action in Action::ALL {
            assert!(names.insert(action.name()), "{action} named twice");
            let json = serde_json::to_string(&action).unwrap();
            assert_eq!(serde_json::from_str::<Action>(&json).unwrap(), action);
        }
    }

    const DECISION: &str = r#"{"seq":7,"time":"2026-12-06T14:22:43Z","hook":"path_unlink","action":"unlink","verdict":"deny","agent":"coder","profile":"coding","session":"s-1","user":{"uid":1000,"name":"dev"},"labels":{"ticket":"OPS-1"},"generation":1,"policy_sha256":"ab","agent_cgroup":77,"cgroup":77,"pid":1,"tid":1,"uid":1000,"comm":"rm","target":"/srv/x","rule":"keep","chain":"00"}"#;

    #[test]
    fn a_decision_line_reads_in_one_pass_with_its_session() {
        let Ok(Line::Decision(record)) = Line::parse(DECISION) else {
            panic!("not read as a decision");
        };
        let session = record.session.as_ref().expect("the session");
        assert_eq!(session.session, "s-1");
        assert_eq!(session.user.name.as_deref(), Some("dev"));
        assert_eq!(session.labels["ticket"], "OPS-1");
        // What is written reads back the same.
        let written = serde_json::to_string(&*record).unwrap();
        assert_eq!(Line::parse(&written).unwrap(), Line::Decision(record));
        // No session at all is a record outside any session.
        let sessionless = DECISION.replace(r#""session":"s-1","#, "").replace(
            r#""user":{"uid":1000,"name":"dev"},"labels":{"ticket":"OPS-1"},"#,
            "",
        );
        let Ok(Line::Decision(record)) = Line::parse(&sessionless) else {
            panic!("not read as a decision");
        };
        assert_eq!(record.session, None);
    }

    #[test]
    fn a_line_is_refused_when_its_members_disagree() {
        // A session without its user.
        let no_user = DECISION.replace(r#""user":{"uid":1000,"name":"dev"},"#, "");
        let error = Line::parse(&no_user).unwrap_err().to_string();
        assert!(error.contains("`session` comes with its `user`"), "{error}");
        // A repeated member.
        let twice = DECISION.replace(r#""rule":"keep","#, r#""rule":"keep","rule":"other","#);
        let error = Line::parse(&twice).unwrap_err().to_string();
        assert!(error.contains("duplicate field `rule`"), "{error}");
        // A `loss` member makes the line a loss line, read strictly as one.
        let loss = DECISION.replace(
            r#""chain""#,
            r#""loss":{"stage":"ring_buffer","records":3},"chain""#,
        );
        let Ok(Line::Loss(loss)) = Line::parse(&loss) else {
            panic!("not read as a loss");
        };
        assert_eq!((loss.seq, loss.loss.records), (7, 3));
    }

    #[test]
    fn an_unknown_action_is_read_and_an_unknown_verdict_refused() {
        assert_eq!(
            serde_json::from_str::<Action>("\"drop_table\"").unwrap(),
            Action::Unknown
        );
        let error = serde_json::from_str::<Verdict>("\"maybe\"").unwrap_err();
        assert!(error.to_string().contains("`maybe` is none of"), "{error}");
    }
}
