//! Approval tickets. A denial under a rule marked `approvable` opens a
//! ticket bound to the session and the exact object denied (a file or
//! program by identity, a destination by address and port). A human
//! approves it, for one use or for a time, and the kernel then lets that
//! session do that to that object (`guard_common::Exception`), until the
//! ticket is used, expires or is denied. Each step is a record.
//!
//! A database statement's ticket is bound to the session and the
//! statement's fingerprint; the statement guard asks guardd for it
//! ([`Tickets::use_statement`]) and the kernel never holds it.

use std::collections::BTreeMap;

use guard_common::{Event, ExceptionKey, hook, object};

use guard_api::record::{Action, Record, TicketNote, Verdict, ticket_id};

/// Tickets kept open at once; later approvable denials open none (logged).
const MAX_OPEN: usize = 1024;
/// Closed tickets kept for `guardctl tickets --all`.
const KEPT_CLOSED: usize = 256;
/// An approval's time unless one is given.
pub const DEFAULT_TTL: std::time::Duration = std::time::Duration::from_secs(600);
/// Longest approval.
pub const MAX_TTL: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TicketState {
    /// Waiting for a human.
    Pending,
    /// The kernel honours it.
    Approved,
    /// A one-use approval was used.
    Used,
    Denied,
    Expired,
    /// Its session ended.
    Closed,
}

impl TicketState {
    pub fn as_str(self) -> &'static str {
        match self {
            TicketState::Pending => "pending",
            TicketState::Approved => "approved",
            TicketState::Used => "used",
            TicketState::Denied => "denied",
            TicketState::Expired => "expired",
            TicketState::Closed => "closed",
        }
    }

    pub fn is_open(self) -> bool {
        matches!(self, TicketState::Pending | TicketState::Approved)
    }
}

/// A ticket, as `guardctl tickets` shows it.
#[derive(Clone, Debug)]
pub struct Ticket {
    pub id: String,
    pub state: TicketState,
    pub session: String,
    pub agent: String,
    /// What was denied: the action, its target and the rule.
    pub action: Action,
    pub target: String,
    pub rule: String,
    pub message: Option<String>,
    /// RFC 3339.
    pub opened: String,
    /// Denials under it (the first and the agent's retries).
    pub denials: u64,
    pub approved_by: Option<u32>,
    pub once: bool,
    /// RFC 3339, once approved.
    pub expires: Option<String>,
}

/// A ticket with what the kernel and the records need.
struct Entry {
    ticket: Ticket,
    number: u32,
    key: ExceptionKey,
    /// The denial that opened it: the model of its later records.
    denial: Record,
    /// Boot-clock expiry, once approved.
    expires_boot_ns: u64,
}

/// Why a ticket cannot be approved or denied.
#[derive(Debug, thiserror::Error)]
pub enum TicketError {
    #[error("no ticket `{0}` (`guardctl tickets --all` lists them)")]
    Unknown(String),
    #[error("ticket {id} is {}, not {wanted}", state.as_str())]
    Closed {
        id: String,
        state: TicketState,
        wanted: &'static str,
    },
    #[error("ticket {id}: the kernel refused the change: {reason}")]
    Kernel { id: String, reason: String },
    #[error("an approval lasts 1 s to 7 days")]
    BadTtl,
}

impl TicketError {
    pub fn kernel(id: &str, error: impl std::fmt::Display) -> Self {
        TicketError::Kernel {
            id: id.into(),
            reason: error.to_string(),
        }
    }
}

/// An approval's terms.
#[derive(Clone, Copy, Debug)]
pub struct Terms {
    pub once: bool,
    pub ttl: std::time::Duration,
}

#[derive(Default)]
pub struct Tickets {
    entries: BTreeMap<u32, Entry>,
}

/// The key of the object a denial is about, as the hooks build it for the
/// session whose entry applied; `None` for actions on no existing object
/// (a creation).
pub fn object_of(event: &Event) -> Option<ExceptionKey> {
    let cgroup = event.agent_cgroup;
    match event.hook {
        hook::CONNECT | hook::SENDMSG => {
            Some(ExceptionKey::destination(cgroup, event.addr, event.port))
        }
        _ if event.ino == 0 => None,
        hook::EXEC | hook::EXEC_MAP => Some(ExceptionKey::identity(
            cgroup,
            object::PROGRAM,
            event.dev,
            event.ino,
        )),
        _ => Some(ExceptionKey::identity(
            cgroup,
            object::FILE,
            event.dev,
            event.ino,
        )),
    }
}

impl Tickets {
    /// The ticket for a denial of `key` under an approvable rule: the open
    /// one for the same session and object, or a new one.
    pub fn open(
        &mut self,
        key: ExceptionKey,
        record: &Record,
        session: &str,
    ) -> Option<TicketNote> {
        if let Some(entry) = self
            .entries
            .values_mut()
            .find(|e| e.key == key && e.ticket.state.is_open())
        {
            entry.ticket.denials += 1;
            return Some(note(&entry.ticket, "requested"));
        }
        if self
            .entries
            .values()
            .filter(|e| e.ticket.state.is_open())
            .count()
            >= MAX_OPEN
        {
            tracing::warn!(session, rule = %record.rule, "{MAX_OPEN} tickets are open: this approvable denial opens none");
            return None;
        }
        let number = loop {
            let number = new_number();
            if number != 0 && !self.entries.contains_key(&number) {
                break number;
            }
        };
        let ticket = Ticket {
            id: ticket_id(number),
            state: TicketState::Pending,
            session: session.into(),
            agent: record.agent.clone(),
            action: record.action,
            // A statement's ticket shows the statement a human approves.
            target: match &record.statement {
                Some(s) => format!("{}: {}", record.target, s.normalized),
                None => record.target.clone(),
            },
            rule: record.rule.clone(),
            message: record.message.clone(),
            opened: record.time.clone(),
            denials: 1,
            approved_by: None,
            once: false,
            expires: None,
        };
        tracing::info!(ticket = %ticket.id, session, action = %ticket.action, target = %ticket.target, "ticket opened: `guardctl approve {}`", ticket.id);
        let note = note(&ticket, "requested");
        self.entries.insert(
            number,
            Entry {
                ticket,
                number,
                key,
                denial: record.clone(),
                expires_boot_ns: 0,
            },
        );
        self.trim();
        Some(note)
    }

    /// Approves a pending ticket: returns what the kernel needs and the
    /// record of the approval.
    pub fn approve(
        &mut self,
        id: &str,
        terms: Terms,
        by: &Approver,
    ) -> Result<(ExceptionKey, guard_common::Exception, Record), TicketError> {
        if terms.ttl.is_zero() || terms.ttl > MAX_TTL {
            return Err(TicketError::BadTtl);
        }
        let entry = self.find(id)?;
        if entry.ticket.state != TicketState::Pending {
            return Err(TicketError::Closed {
                id: id.into(),
                state: entry.ticket.state,
                wanted: "pending",
            });
        }
        let expires = std::time::SystemTime::now() + terms.ttl;
        entry.expires_boot_ns = boot_ns().saturating_add(terms.ttl.as_nanos() as u64);
        entry.ticket.state = TicketState::Approved;
        entry.ticket.approved_by = Some(by.uid);
        entry.ticket.once = terms.once;
        entry.ticket.expires = Some(humantime::format_rfc3339_seconds(expires).to_string());
        let exception = guard_common::Exception {
            expires_ns: entry.expires_boot_ns,
            ticket: entry.number,
            once: u32::from(terms.once),
        };
        let record = step(entry, Action::TicketApprove, Some(by));
        Ok((entry.key, exception, record))
    }

    /// Denies a pending or approved ticket: returns the key to withdraw
    /// from the kernel and the record.
    pub fn deny(&mut self, id: &str, by: &Approver) -> Result<(ExceptionKey, Record), TicketError> {
        let entry = self.find(id)?;
        if !entry.ticket.state.is_open() {
            return Err(TicketError::Closed {
                id: id.into(),
                state: entry.ticket.state,
                wanted: "open",
            });
        }
        entry.ticket.state = TicketState::Denied;
        Ok((entry.key, step(entry, Action::TicketDeny, Some(by))))
    }

    /// Notes the use of an approved ticket (a record with flag `approved`);
    /// a one-use ticket is closed by it.
    pub fn used(&mut self, number: u32) {
        if let Some(entry) = self.entries.get_mut(&number)
            && entry.ticket.once
            && entry.ticket.state == TicketState::Approved
        {
            entry.ticket.state = TicketState::Used;
        }
    }

    /// The approved ticket for statement `key`, used by a statement: a
    /// one-use ticket is used up.
    pub fn use_statement(&mut self, key: ExceptionKey) -> Option<TicketNote> {
        let now = boot_ns();
        let entry = self.entries.values_mut().find(|e| {
            e.key == key && e.ticket.state == TicketState::Approved && e.expires_boot_ns > now
        })?;
        if entry.ticket.once {
            entry.ticket.state = TicketState::Used;
        }
        Some(note(&entry.ticket, "used"))
    }

    /// Approved tickets past their time: expired, with their keys (the
    /// kernel already refuses them) and records.
    pub fn expire(&mut self) -> Vec<(ExceptionKey, Record)> {
        let now = boot_ns();
        self.entries
            .values_mut()
            .filter(|e| e.ticket.state == TicketState::Approved && e.expires_boot_ns <= now)
            .map(|entry| {
                entry.ticket.state = TicketState::Expired;
                (entry.key, step(entry, Action::TicketExpire, None))
            })
            .collect()
    }

    /// Closes the open tickets of sessions that ended (cgroups in
    /// `ended`), returning their keys.
    pub fn close(&mut self, ended: &[u64]) -> Vec<ExceptionKey> {
        self.entries
            .values_mut()
            .filter(|e| e.ticket.state.is_open() && ended.contains(&e.key.cgroup))
            .map(|entry| {
                entry.ticket.state = TicketState::Closed;
                entry.key
            })
            .collect()
    }

    /// Open tickets, or with `all` the recently closed too, oldest first.
    pub fn list(&self, all: bool) -> Vec<Ticket> {
        let mut tickets: Vec<Ticket> = self
            .entries
            .values()
            .filter(|e| all || e.ticket.state.is_open())
            .map(|e| e.ticket.clone())
            .collect();
        tickets.sort_by(|a, b| a.opened.cmp(&b.opened));
        tickets
    }

    /// A ticket by id.
    pub fn get(&self, id: &str) -> Option<Ticket> {
        self.entries
            .values()
            .find(|e| e.ticket.id == id)
            .map(|e| e.ticket.clone())
    }

    fn find(&mut self, id: &str) -> Result<&mut Entry, TicketError> {
        self.entries
            .values_mut()
            .find(|e| e.ticket.id == id)
            .ok_or_else(|| TicketError::Unknown(id.into()))
    }

    /// Forgets the oldest closed tickets beyond [`KEPT_CLOSED`].
    fn trim(&mut self) {
        let mut closed: Vec<(String, u32)> = self
            .entries
            .values()
            .filter(|e| !e.ticket.state.is_open())
            .map(|e| (e.ticket.opened.clone(), e.number))
            .collect();
        if closed.len() > KEPT_CLOSED {
            closed.sort();
            for (_, number) in &closed[..closed.len() - KEPT_CLOSED] {
                self.entries.remove(number);
            }
        }
    }
}

/// Who approved or denied a ticket, from the control socket's peer.
pub struct Approver {
    pub pid: i32,
    pub uid: u32,
}

/// What a record says about `ticket`, in `state`.
pub fn note(ticket: &Ticket, state: &str) -> TicketNote {
    TicketNote {
        id: ticket.id.clone(),
        state: state.into(),
        once: ticket.once,
        expires: ticket.expires.clone(),
    }
}

/// A record of a step of a ticket: the denial it was opened by, now
/// `action` (approve, deny, expire) by `by` (guardd itself when `None`).
fn step(entry: &Entry, action: Action, by: Option<&Approver>) -> Record {
    let (verdict, state) = match action {
        Action::TicketApprove => (Verdict::Allow, "approved"),
        Action::TicketDeny => (Verdict::Deny, "denied"),
        _ => (Verdict::Deny, "expired"),
    };
    let mut record = entry.denial.clone();
    record.seq = 0;
    record.time = guard_api::time::rfc3339(guard_api::time::now_nanos());
    record.hook = if by.is_some() { "guardctl" } else { "guardd" }.into();
    record.action = action;
    record.verdict = verdict;
    (record.pid, record.tid, record.uid, record.comm) = match by {
        Some(by) => (by.pid as u32, by.pid as u32, by.uid, "guardctl".into()),
        None => (std::process::id(), std::process::id(), 0, "guardd".into()),
    };
    record.process = None;
    record.redacted.clear();
    record.flags.clear();
    record.budget = None;
    record.ticket = Some(note(&entry.ticket, state));
    record
}

/// A random ticket number, so that ids cannot be guessed ahead (the
/// clock, should the kernel's random source fail).
fn new_number() -> u32 {
    let mut bytes = [0u8; 4];
    // SAFETY: writes at most 4 bytes into `bytes`.
    let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if got == 4 {
        u32::from_ne_bytes(bytes)
    } else {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.subsec_nanos())
    }
}

/// The kernel's boot clock (`bpf_ktime_get_boot_ns`), in ns.
fn boot_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}
