//! `guardd`: load, enforce, stream records, reload, detach on SIGTERM.
//!
//! One [`State`] behind a mutex owns the enforcer, the generations and the
//! session table. Three things use it: the record stream, the control
//! socket, and reloads (SIGHUP, a change of the policy file or of a file a
//! rule pins by digest, or a control request).

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

pub mod approvals;
mod builtins;
mod hosts;
mod kept;
mod services;
mod why;
mod writer;

pub use builtins::Builtins;

use anyhow::Context as _;
use guard_common::{Counter, lsm};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    signal::unix::SignalKind,
    sync::{mpsc, watch},
};
use tracing::{error, info, warn};

use writer::{Out, RecordWriter};

use crate::{
    api::AuditService,
    canary::{self, Canary},
    cgroup::{self, GuardRoot},
    chain::Chain,
    compile::{self, CompiledPolicy},
    control::{HookStatus, ProfileStatus, Request, Response, SessionAction, Status},
    enforcer::{EnforceError, Enforcer},
    events::{self, Clock},
    exit,
    metrics::{DaemonMetrics, NameLabels, StageLabels},
    policy,
    session::{self, Session, Sessions},
    spool::LineFile,
};

/// Generations kept after they are replaced, so that records still queued
/// from them name their rules.
const GENERATIONS_KEPT: usize = 16;
/// How long file changes are collected before one reload.
const SETTLE: Duration = Duration::from_millis(300);

pub struct Config {
    pub policy: PathBuf,
    /// Where records go; stdout when `None`.
    pub events: Option<PathBuf>,
    /// Guard's cgroup, relative to the cgroup2 mount.
    pub cgroup_root: String,
    /// The control socket.
    pub socket: PathBuf,
    /// The local gRPC API socket (policy and sessions).
    pub api_socket: PathBuf,
    /// Where the gRPC audit API listens; off when `None`.
    pub grpc_listen: Option<std::net::SocketAddr>,
    /// The collector to ship the events file to; needs `events`.
    pub collector: Option<String>,
    /// This host's name in records and in the collector.
    pub host_name: String,
    /// Masks secrets in recorded command lines.
    pub redactor: crate::redact::Redactor,
    /// Also write every record as an OCSF event to this file.
    pub ocsf: Option<PathBuf>,
    /// Where Prometheus metrics are served; off when `None`.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// More files and directories no agent may change (configuration, the
    /// collector's database).
    pub protect: Vec<PathBuf>,
    /// Where the generation in force and the live sessions are kept for
    /// the next guardd ([`kept`]).
    pub state_file: PathBuf,
    /// Where each session's last denials are written for its agent.
    pub why_dir: PathBuf,
    /// The DNS server for hostname rules; the system's when `None`.
    pub dns_server: Option<std::net::IpAddr>,
}

/// Where what outlives one guardd is, for the next to adopt.
pub struct Persistence {
    /// Below which the programs are pinned ([`crate::enforcer::pin_root`]).
    pub pins: PathBuf,
    /// See [`kept`].
    pub state_file: PathBuf,
}

/// An error with the process exit code it maps to.
#[derive(Debug, thiserror::Error)]
#[error("{error:#}")]
pub struct Fatal {
    pub code: i32,
    pub error: anyhow::Error,
}

impl From<EnforceError> for Fatal {
    fn from(e: EnforceError) -> Self {
        let code = if e.is_unsupported_host() {
            exit::UNSUPPORTED_HOST
        } else {
            exit::FAILURE
        };
        Fatal {
            code,
            error: e.into(),
        }
    }
}

fn failure(error: impl Into<anyhow::Error>) -> Fatal {
    Fatal {
        code: exit::FAILURE,
        error: error.into(),
    }
}

/// A policy read from its file: compiled, with the digest of the file.
pub struct LoadedPolicy {
    pub compiled: CompiledPolicy,
    pub sha256: String,
    pub text: String,
}

/// Reads, validates and compiles the policy file, with guardd's built-in
/// agent, profile and rules added when `builtins` is given. Errors name the
/// file, line, column and reason, and exit with [`exit::INVALID_POLICY`].
pub fn load_policy(path: &Path, builtins: Option<&Builtins>) -> Result<LoadedPolicy, Fatal> {
    let invalid = |error: anyhow::Error| Fatal {
        code: exit::INVALID_POLICY,
        error,
    };
    let text = std::fs::read(path)
        .with_context(|| format!("cannot read policy {}", path.display()))
        .map_err(invalid)?;
    let text = String::from_utf8(text).map_err(|_| {
        invalid(anyhow::anyhow!(
            "invalid policy {}: not UTF-8",
            path.display()
        ))
    })?;
    compile_policy(text, &path.display().to_string(), builtins)
}

/// [`load_policy`] for guardd: the file and every directory above it must
/// be root's alone ([`trust::check_owned`]), or whoever could write them
/// would choose the policy.
pub fn load_own_policy(path: &Path, builtins: &Builtins) -> Result<LoadedPolicy, Fatal> {
    crate::trust::check_owned(path).map_err(|e| Fatal {
        code: exit::INVALID_POLICY,
        error: anyhow::anyhow!("refusing the policy: {e}"),
    })?;
    load_policy(path, Some(builtins))
}

/// Validates and compiles a policy's text; errors name `origin` (a file)
/// with the line, column and reason.
pub fn compile_policy(
    text: String,
    origin: &str,
    builtins: Option<&Builtins>,
) -> Result<LoadedPolicy, Fatal> {
    let invalid = |e: &dyn std::fmt::Display| Fatal {
        code: exit::INVALID_POLICY,
        error: anyhow::anyhow!("invalid policy {origin}: {e}"),
    };
    let mut parsed = policy::parse(&text).map_err(|e| invalid(&e))?;
    if let Some(builtins) = builtins {
        builtins.add_to(&mut parsed);
    }
    let compiled = compile::compile(&parsed).map_err(|e| invalid(&e))?;
    Ok(LoadedPolicy {
        compiled,
        sha256: digest(text.as_bytes()),
        text,
    })
}

/// SHA-256 of a policy file's bytes, as records and status show it.
fn digest(text: &[u8]) -> String {
    compile::hex(&<sha2::Sha256 as sha2::Digest>::digest(text))
}

/// Checks whether this host can enforce, without enforcing anything: loads
/// and attaches the programs and runs the readiness canary, then detaches.
pub fn check_host() -> Result<(), Fatal> {
    let builtins = Builtins::new(Canary::prepare().map_err(failure)?, Vec::new());
    let mut only_canary = policy::Policy {
        profiles: vec![],
        agents: vec![],
    };
    builtins.add_to(&mut only_canary);
    let compiled = compile::compile(&only_canary)
        .map_err(|e| failure(anyhow::anyhow!("canary profile: {e}")))?;
    let mount = cgroup::ensure_cgroup2().map_err(failure)?;
    let state = State::start(
        &mount,
        cgroup::DEFAULT_ROOT,
        PathBuf::new(),
        builtins,
        LoadedPolicy {
            compiled,
            sha256: String::new(),
            text: String::new(),
        },
        None,
    )?;
    info!(
        hooks = ?state.enforcer.attachment.attached,
        unavailable = ?state.enforcer.attachment.unavailable,
        "BPF LSM usable: all programs loaded and attached, and the readiness canary was denied"
    );
    Ok(())
}

/// Removes the programs guardd left pinned (and attached) for
/// `cgroup_root`: agents below it are no longer confined.
pub fn detach(cgroup_root: &str) -> Result<(), Fatal> {
    let pins = crate::enforcer::pin_root(cgroup_root);
    let started = std::time::Instant::now();
    let removed = crate::enforcer::detach_pinned(cgroup_root)
        .with_context(|| format!("cannot remove {}", pins.display()))
        .map_err(failure)?;
    if removed {
        info!(
            pins = %pins.display(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "detached: agents below `{cgroup_root}` are no longer confined"
        );
    } else {
        info!(pins = %pins.display(), "nothing pinned: no programs of a stopped guardd were attached");
    }
    Ok(())
}

/// One published policy.
pub struct Generation {
    pub number: u64,
    pub policy_sha256: String,
    /// The policy file's text.
    pub text: String,
    pub compiled: CompiledPolicy,
    /// RFC 3339.
    pub loaded: String,
}

/// Everything the running daemon owns.
pub struct State {
    enforcer: Enforcer,
    root: GuardRoot,
    policy_path: PathBuf,
    builtins: Arc<Builtins>,
    /// The generation in force first, then the ones it replaced.
    generations: VecDeque<Arc<Generation>>,
    sessions: Sessions,
    /// Agent name → agent cgroup id.
    agent_cgroups: BTreeMap<String, u64>,
    /// `Err` with the reason when the canary failed on the generation in force.
    readiness: Result<(), String>,
    last_rejected: Option<String>,
    /// Where the generation in force and the live sessions are kept for
    /// the next guardd, on every change.
    state_file: Option<PathBuf>,
    /// The events file, whose identity is kept with the state.
    events_file: Option<PathBuf>,
    /// Each session's last denials, for its agent to read.
    why: why::Why,
    tickets: approvals::Tickets,
    /// Records guardd makes itself (ticket steps), for the writer.
    notes: Vec<events::Record>,
    /// The addresses of hostname rules.
    hosts: hosts::Hosts,
}

impl State {
    /// Creates Guard's cgroups, loads and attaches the programs (or adopts
    /// those a previous guardd left pinned, with what it kept, when
    /// `persistence` says where), publishes the first generation and runs the canary. On
    /// failure the cgroups created here are removed again and programs
    /// loaded here detach; adopted ones stay as they were.
    fn start(
        mount: &Path,
        cgroup_root: &str,
        policy_path: PathBuf,
        builtins: Builtins,
        policy: LoadedPolicy,
        persistence: Option<&Persistence>,
    ) -> Result<Self, Fatal> {
        let root = GuardRoot::create(mount, cgroup_root).map_err(failure)?;
        let agent_names: Vec<String> = policy
            .compiled
            .agents
            .iter()
            .map(|(name, _)| name.clone())
            .collect();
        let enforcer = match Enforcer::load(&root, persistence.map(|p| p.pins.as_path())) {
            Ok(enforcer) => enforcer,
            Err(e) => {
                root.remove_unused(&[]);
                return Err(e.into());
            }
        };
        let mut state = State {
            enforcer,
            root,
            policy_path,
            builtins: Arc::new(builtins),
            generations: VecDeque::new(),
            sessions: Sessions::default(),
            agent_cgroups: BTreeMap::new(),
            readiness: Err("no policy published yet".into()),
            last_rejected: None,
            // Set once started: a guardd that fails to start keeps nothing.
            state_file: None,
            events_file: None,
            why: why::Why::default(),
            tickets: approvals::Tickets::default(),
            notes: Vec::new(),
            hosts: hosts::Hosts::default(),
        };
        if let Some(adopted) = &state.enforcer.adopted
            && let Some(persistence) = persistence
        {
            let generation = adopted.generation;
            state.take_over(kept::Kept::read(&persistence.state_file), generation);
        }
        let published = state.publish(policy);
        let names: Vec<&str> = agent_names.iter().map(String::as_str).collect();
        if let Err(e) = published.and_then(|()| {
            state.readiness.clone().map_err(|reason| Fatal {
                code: exit::UNSUPPORTED_HOST,
                error: anyhow::anyhow!(reason),
            })
        }) {
            let root = state.root.clone();
            drop(state);
            root.remove_unused(&names);
            return Err(e);
        }
        state.warn_unknown_cgroups();
        Ok(state)
    }

    /// Warns about cgroups below the root with processes that no entry of
    /// the generation in force covers: the kernel denies all they do.
    fn warn_unknown_cgroups(&self) {
        let compiled = &self.current().compiled;
        let agents: Vec<&str> = compiled.agents.iter().map(|(n, _)| n.as_str()).collect();
        for cgroup in self
            .root
            .unknown_with_processes(&agents, &self.sessions.live_paths())
        {
            warn!(
                cgroup = %cgroup.display(),
                "this cgroup has processes but is not an agent or session of the policy in force (left from an earlier policy or guardd run, or made by an agent): every action of theirs is denied until they exit"
            );
        }
    }

    fn current(&self) -> &Arc<Generation> {
        self.generations
            .front()
            .expect("a State always has a generation")
    }

    /// Publishes `policy` as the next generation and runs the canary on it.
    /// Agent cgroups are created as needed; running sessions keep their
    /// profile, which the policy must still define.
    fn publish(&mut self, policy: LoadedPolicy) -> Result<(), Fatal> {
        let compiled = policy.compiled;
        let mut cgroups = Vec::new();
        // Sub-agents' sessions need no entry: the outermost session's applies.
        for session in self.sessions.live().filter(|s| s.parent.is_none()) {
            let profile = compiled.profile_index(&session.profile).ok_or_else(|| Fatal {
                code: exit::INVALID_POLICY,
                error: anyhow::anyhow!(
                    "profile `{}` is in use by session {} (agent `{}`); a new policy must keep the profiles of running sessions",
                    session.profile,
                    session.id,
                    session.agent
                ),
            })?;
            cgroups.push((session.cgroup, profile));
        }
        let mut agent_cgroups = BTreeMap::new();
        for (name, profile) in &compiled.agents {
            let id = self.root.create_agent(name).map_err(failure)?;
            agent_cgroups.insert(name.clone(), id);
            cgroups.push((id, *profile));
        }
        let info = self
            .enforcer
            .publish(&compiled, &self.hosts.entries(&compiled), &cgroups)?;
        self.agent_cgroups = agent_cgroups;
        self.generations.push_front(Arc::new(Generation {
            number: info.generation,
            policy_sha256: policy.sha256,
            text: policy.text,
            compiled,
            loaded: session::now_rfc3339(),
        }));
        self.generations.truncate(GENERATIONS_KEPT + 1);
        self.keep();
        if let Ok(hooks) = std::env::var("GUARD_FAULT_DETACH_ON_RELOAD")
            && info.generation > 1
        {
            // For the readiness test only: break an attachment after start.
            for hook in hooks.split(',') {
                warn!(hook, "GUARD_FAULT_DETACH_ON_RELOAD: detaching this hook");
                self.enforcer.detach(hook);
            }
        }
        self.readiness = self
            .builtins
            .canary
            .check(&self.root)
            .map_err(|e| e.to_string());
        Ok(())
    }

    /// Publishes a policy read again from its file, or, if it failed to
    /// read, parse, validate or compile, records that it was refused: the
    /// generation in force stays.
    fn reload(
        &mut self,
        reason: Reason,
        policy: Result<LoadedPolicy, Fatal>,
    ) -> Result<Arc<Generation>, Fatal> {
        let reason = reason.as_str();
        let result = policy.and_then(|policy| {
            let notes = policy.compiled.notes.clone();
            self.publish(policy)?;
            Ok(notes)
        });
        match result {
            Ok(notes) => {
                for note in notes {
                    warn!("{note}");
                }
                let current = self.current().clone();
                self.last_rejected = None;
                self.warn_unknown_cgroups();
                match &self.readiness {
                    Ok(()) => info!(
                        reason,
                        generation = current.number,
                        policy_sha256 = %current.policy_sha256,
                        "enforcing: {}",
                        current.compiled.summary()
                    ),
                    Err(problem) => error!(
                        reason,
                        generation = current.number,
                        "NOT enforcing: {problem}"
                    ),
                }
                Ok(current)
            }
            Err(fatal) => {
                let message = format!("{fatal}");
                error!(
                    reason,
                    generation = self.current().number,
                    "policy refused, the generation in force stays: {message}"
                );
                self.last_rejected = Some(message);
                Err(fatal)
            }
        }
    }

    /// Starts a session for a `guardctl run` by `caller`.
    fn start_session(
        &mut self,
        agent: String,
        profile: Option<String>,
        labels: BTreeMap<String, String>,
        caller: &Caller,
    ) -> Result<(Session, PathBuf, Option<PathBuf>), String> {
        session::check_labels(&labels)?;
        let generation = self.current().clone();
        let compiled = &generation.compiled;
        if agent == canary::AGENT || compiled.agent_profile(&agent).is_none() {
            return Err(format!("no agent `{agent}` in the policy in force"));
        }
        let parent = self.parent_session(caller.pid)?;
        if caller.agent && parent.is_none() {
            return Err("cannot tell which session the caller runs in".into());
        }
        let (profile, dir) = match &parent {
            Some(parent) => {
                // The kernel applies the outermost session's profile to
                // everything below it.
                let outermost = self.outermost(parent.clone());
                if profile.as_ref().is_some_and(|p| *p != outermost.profile) {
                    return Err(format!(
                        "a sub-agent runs under its parent session's profile `{}`",
                        outermost.profile
                    ));
                }
                let dir = self
                    .sessions
                    .path(&parent.id)
                    .expect("a live session has a path")
                    .to_path_buf();
                (outermost.profile, dir)
            }
            None => {
                let profile = match profile {
                    Some(p) => p,
                    None => {
                        let index = compiled.agent_profile(&agent).expect("checked above");
                        compiled.profiles[index as usize].0.clone()
                    }
                };
                let dir = self.root.agent_path(&agent);
                (profile, dir)
            }
        };
        let index = compiled
            .profile_index(&profile)
            .filter(|_| profile != canary::AGENT)
            .ok_or_else(|| format!("no profile `{profile}` in the policy in force"))?;
        let id = session::new_id().map_err(|e| format!("cannot make a session id: {e}"))?;
        let path = dir.join(&id);
        std::fs::create_dir(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        let cgroup = cgroup::cgroup_id(&path).map_err(|e| e.to_string())?;
        if parent.is_none()
            && let Err(e) = self.enforcer.add_cgroup(compiled, cgroup, index)
        {
            let _ = std::fs::remove_dir(&path);
            return Err(e.to_string());
        }
        let session = Session {
            id,
            agent,
            profile,
            uid: caller.uid,
            user: nix::unistd::User::from_uid(caller.uid.into())
                .ok()
                .flatten()
                .map(|u| u.name),
            login_uid: session::login_uid(caller.pid),
            labels,
            started: session::now_rfc3339(),
            parent: parent.map(|p| p.id),
            cgroup,
            ended: None,
        };
        info!(
            session = %session.id,
            agent = %session.agent,
            profile = %session.profile,
            uid = session.uid,
            parent = ?session.parent,
            "session started"
        );
        self.sessions.insert(session.clone(), path.clone());
        self.keep();
        let why_file = self.why.open(&session);
        Ok((session, path.join("cgroup.procs"), why_file))
    }

    /// The (innermost) session a process runs in, if it is an agent; an
    /// agent outside any session may not start sessions.
    fn parent_session(&mut self, pid: i32) -> Result<Option<Session>, String> {
        let Some(path) = self.root.cgroup_of(pid) else {
            return Ok(None);
        };
        let id = cgroup::cgroup_id(&path).map_err(|e| e.to_string())?;
        match self.sessions.by_cgroup(id).cloned() {
            Some(session) => Ok(Some(session)),
            None => {
                Err("a process in an agent cgroup outside any session cannot start sessions".into())
            }
        }
    }

    fn outermost(&self, mut session: Session) -> Session {
        while let Some(parent) = session.parent.as_ref().and_then(|p| self.sessions.get(p)) {
            session = parent.clone();
        }
        session
    }

    /// Marks ended sessions and removes their entries, budgets and
    /// tickets; expires approvals past their time.
    fn reap_sessions(&mut self) {
        let ended = self.sessions.reap();
        for &cgroup in &ended {
            if let Err(e) = self
                .enforcer
                .remove_cgroup(cgroup)
                .and_then(|()| self.enforcer.reset_budgets(cgroup))
            {
                warn!("cannot remove an ended session's entries: {e}");
            }
        }
        let closed = self.tickets.close(&ended);
        let expired = self.tickets.expire();
        for key in closed.iter().chain(expired.iter().map(|(key, _)| key)) {
            if let Err(e) = self.enforcer.revoke(key) {
                warn!("cannot withdraw an approval: {e}");
            }
        }
        self.notes
            .extend(expired.into_iter().map(|(_, record)| record));
        if !ended.is_empty() {
            self.keep();
            self.why
                .keep_only(self.sessions.live().map(|s| s.id.as_str()));
        }
    }

    /// Freezes the outermost session of `session` (the whole agent, with
    /// its sub-agents) through cgroup v2's freezer: every process stops
    /// where it is, for a human to inspect, thaw or kill. True if frozen.
    fn freeze(&self, session: Session) -> bool {
        let outermost = self.outermost(session);
        let Some(path) = self.sessions.path(&outermost.id) else {
            return false;
        };
        match std::fs::write(path.join("cgroup.freeze"), "1") {
            Ok(()) => {
                warn!(session = %outermost.id, agent = %outermost.agent, "a rule marked `freeze` denied: session frozen (`guardctl session thaw|kill`)");
                true
            }
            Err(e) => {
                error!(session = %outermost.id, "cannot freeze the session: {e}");
                false
            }
        }
    }

    /// Thaws, kills or refills the budgets of a live session.
    fn session_action(&mut self, id: &str, action: SessionAction) -> Result<String, String> {
        let session = self
            .sessions
            .live()
            .find(|s| s.id == id)
            .cloned()
            .ok_or_else(|| format!("no live session `{id}`"))?;
        let path = self
            .sessions
            .path(&session.id)
            .ok_or_else(|| format!("no live session `{id}`"))?;
        let (file, what) = match action {
            SessionAction::Thaw => ("cgroup.freeze", "0"),
            SessionAction::Kill => ("cgroup.kill", "1"),
            SessionAction::Reset => {
                // Budgets belong to the outermost session, whose entry applies.
                let cgroup = self.outermost(session).cgroup;
                self.enforcer
                    .reset_budgets(cgroup)
                    .map_err(|e| e.to_string())?;
                info!(session = id, "budgets refilled");
                return Ok(format!("the budgets of session {id} are full again"));
            }
        };
        std::fs::write(path.join(file), what)
            .map_err(|e| format!("cannot write {}: {e}", path.join(file).display()))?;
        info!(session = id, ?action, "session action");
        Ok(match action {
            SessionAction::Thaw => format!("session {id} thawed"),
            _ => format!("every process of session {id} killed"),
        })
    }

    /// Takes new answers for hostname rules and, when an address changed,
    /// rewrites the generation in force's hostname entries.
    fn resolved(&mut self, answers: Vec<(String, Vec<std::net::IpAddr>, Duration)>) {
        let mut changed = false;
        for (name, addrs, ttl) in answers {
            changed |= self.hosts.update(&name, addrs, ttl);
        }
        if changed {
            let entries = self.hosts.entries(&self.current().compiled);
            if let Err(e) = self.enforcer.set_host_addrs(&entries) {
                error!("cannot update the addresses of hostname rules: {e}");
            }
        }
    }

    /// The tickets `caller` may see: an agent, its own outermost
    /// session's.
    fn tickets_for(&mut self, caller: &Caller, all: bool) -> Vec<approvals::Ticket> {
        let mut tickets = self.tickets.list(all);
        if caller.agent {
            let own = self.own_session(caller);
            tickets.retain(|t| own.as_deref() == Some(t.session.as_str()));
        }
        tickets
    }

    /// Approves a pending ticket: the kernel honours it from now on.
    fn approve(
        &mut self,
        id: &str,
        terms: approvals::Terms,
        caller: &Caller,
    ) -> Result<approvals::Ticket, approvals::TicketError> {
        let by = caller.approver();
        let (key, exception, record) = self.tickets.approve(id, terms, &by)?;
        self.enforcer
            .grant(key, exception)
            .map_err(|e| approvals::TicketError::kernel(id, e))?;
        info!(
            ticket = id,
            uid = by.uid,
            once = terms.once,
            "ticket approved"
        );
        self.notes.push(record);
        Ok(self.tickets.get(id).expect("just approved"))
    }

    /// Denies an open ticket, withdrawing its approval from the kernel.
    fn deny_ticket(
        &mut self,
        id: &str,
        caller: &Caller,
    ) -> Result<approvals::Ticket, approvals::TicketError> {
        let by = caller.approver();
        let (key, record) = self.tickets.deny(id, &by)?;
        self.enforcer
            .revoke(&key)
            .map_err(|e| approvals::TicketError::kernel(id, e))?;
        info!(ticket = id, uid = by.uid, "ticket denied");
        self.notes.push(record);
        Ok(self.tickets.get(id).expect("just denied"))
    }

    /// Writes the generation in force and the live sessions for the next
    /// guardd.
    fn keep(&self) {
        let Some(file) = &self.state_file else {
            return;
        };
        let current = self.current();
        let kept = kept::Kept {
            generation: current.number,
            policy: current.text.clone(),
            sessions: self.sessions.kept(),
            events: self
                .events_file
                .as_deref()
                .and_then(|events| compile::identity(events).ok()),
        };
        if let Err(e) = kept.write(file) {
            warn!(file = %file.display(), "cannot keep the state for the next guardd: {e}");
        }
    }

    /// Takes what the guardd whose programs were adopted kept: its
    /// generation in force (`adopted`), so that the records of the time no
    /// guardd ran name their rules, and the sessions whose cgroups are
    /// still there.
    fn take_over(&mut self, kept: kept::Kept, adopted: Option<u64>) {
        if adopted == Some(kept.generation) {
            match compile_policy(
                kept.policy,
                "kept by the previous guardd",
                Some(&self.builtins),
            ) {
                Ok(policy) => self.generations.push_back(Arc::new(Generation {
                    number: kept.generation,
                    policy_sha256: policy.sha256,
                    text: policy.text,
                    compiled: policy.compiled,
                    loaded: session::now_rfc3339(),
                })),
                Err(e) => warn!("{e}: records of the previous generation name rules by number"),
            }
        }
        for k in kept.sessions {
            if cgroup::cgroup_id(&k.path).is_ok_and(|id| id == k.session.cgroup) {
                info!(session = %k.session.id, agent = %k.session.agent, "session kept from the previous guardd");
                self.sessions.insert(k.session, k.path);
            }
        }
    }

    /// The id of the outermost session an agent caller runs in.
    fn own_session(&mut self, caller: &Caller) -> Option<String> {
        self.parent_session(caller.pid)
            .ok()
            .flatten()
            .map(|session| self.outermost(session).id)
    }

    /// The status, as `caller` may see it: an agent sees only the sessions
    /// of its own outermost session (itself and its sub-agents).
    fn status_for(&mut self, caller: &Caller) -> Status {
        let mut status = self.status();
        if caller.agent {
            let own = self.own_session(caller);
            status.sessions.retain(|session| {
                own.as_ref()
                    .is_some_and(|own| self.outermost(session.clone()).id == *own)
            });
        }
        status
    }

    fn status(&self) -> Status {
        let current = self.current();
        let canaried: BTreeSet<&str> = canary::HOOKS.iter().copied().collect();
        let attachment = &self.enforcer.attachment;
        let hooks = lsm::ALL
            .iter()
            .map(|hook| {
                let attached = attachment.attached.contains(&hook.program);
                let missing = if hook.program == lsm::EXEC_CONTENT.program {
                    "cannot run on this kernel (it needs IMA); exec rules by content are refused"
                } else {
                    "not in this kernel; older hooks cover its routes"
                };
                HookStatus {
                    name: hook.program.into(),
                    attached,
                    enforcing: attached
                        && (self.readiness.is_ok() || !canaried.contains(hook.program)),
                    note: attachment
                        .unavailable
                        .contains(&hook.program)
                        .then(|| missing.into()),
                }
            })
            .collect();
        let compiled = &current.compiled;
        let profiles = compiled
            .profiles
            .iter()
            .filter(|(name, _)| name != canary::AGENT)
            .map(|(name, entry)| ProfileStatus {
                name: name.clone(),
                mode: compile::mode_name(entry).into(),
                defaults: compile::defaults_of(entry)
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                rules: compiled.rules.iter().filter(|r| r.profile == *name).count(),
            })
            .collect();
        Status {
            enforcing: self.readiness.is_ok(),
            problem: self.readiness.clone().err(),
            generation: current.number,
            policy_file: self.policy_path.clone(),
            policy_sha256: current.policy_sha256.clone(),
            policy_loaded: current.loaded.clone(),
            last_rejected: self.last_rejected.clone(),
            hooks,
            profiles,
            sessions: self.sessions.live().cloned().collect(),
            counters: self.counters(),
        }
    }

    /// The kernel's counters, by name.
    fn counters(&self) -> BTreeMap<String, u64> {
        [
            ("events_lost", Counter::EventsLost),
            ("denials_lost", Counter::DenialsLost),
            ("hook_errors", Counter::HookErrors),
            ("walk_too_deep", Counter::WalkTooDeep),
            ("records_made", Counter::RecordsMade),
            ("unrecorded_denials", Counter::UnrecordedDenials),
            ("error_denials", Counter::ErrorDenials),
        ]
        .into_iter()
        .map(|(name, c)| (name.to_string(), self.enforcer.counter(c).unwrap_or(0)))
        .collect()
    }

    /// Copies the kernel counters, enforcement state and generation into
    /// the metrics.
    fn update_metrics(&self, metrics: &DaemonMetrics) {
        for (name, value) in self.counters() {
            metrics
                .kernel
                .get_or_create(&NameLabels { name })
                .set(value as i64);
        }
        metrics.enforcing.set(i64::from(self.readiness.is_ok()));
        metrics.generation.set(self.current().number as i64);
    }

    fn record(&mut self, event: &guard_common::Event, clock: &Clock) -> events::Record {
        let generation = self
            .generations
            .iter()
            .find(|g| g.number == event.generation)
            .cloned();
        let session = self.sessions.by_cgroup(event.cgroup).cloned();
        let agent = match &session {
            Some(s) => Some(s.agent.clone()),
            None => self
                .agent_cgroups
                .iter()
                .find(|(_, id)| **id == event.agent_cgroup)
                .map(|(name, _)| name.clone()),
        };
        let mut record =
            events::to_record(event, generation.as_deref(), agent, session.as_ref(), clock);
        if event.flags & guard_common::event_flag::APPROVED != 0 {
            self.tickets.used(event.detail);
        }
        if let Some(session) = session
            && record.verdict == "deny"
        {
            let compiled = generation.as_ref().map(|g| &g.compiled);
            let rule = compiled.and_then(|c| c.rule(event.rule_id));
            let budget = (event.rule_id == guard_common::BUDGET_EXCEEDED)
                .then(|| {
                    let profile = guard_common::profile_index(event.profile) as usize;
                    compiled?.budgets.get(profile)?[events::budget_of(event.hook)].as_ref()
                })
                .flatten();
            let freeze = rule.is_some_and(|r| r.freeze) || budget.is_some_and(|b| b.freeze);
            if rule.is_some_and(|r| r.approvable)
                && let Some(key) = approvals::object_of(event)
            {
                let outermost = self.outermost(session.clone());
                record.ticket = self.tickets.open(key, &record, &outermost.id);
            }
            if freeze && self.freeze(session.clone()) {
                record.flags.push("session_frozen".into());
            }
            self.why.note(&session.id, &record);
        }
        record
    }
}

/// The files no agent may change: Guard's binaries, the policy, the
/// records and the state file (created here if new, so that they are
/// protected from the start) and what `--protect` names.
fn own_files(config: &Config) -> Vec<PathBuf> {
    let mut own = Builtins::binaries();
    own.push(config.policy.clone());
    // Readable by each session's user; changed by guardd only.
    match std::fs::create_dir_all(&config.why_dir) {
        Ok(()) => own.push(config.why_dir.clone()),
        Err(e) => warn!(dir = %config.why_dir.display(), "cannot create: {e}"),
    }
    let files = [config.events.as_ref(), config.ocsf.as_ref()];
    for file in files.into_iter().flatten().chain([&config.state_file]) {
        if let Some(dir) = file.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Err(e) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
        {
            warn!(file = %file.display(), "cannot create: {e}");
        }
        own.push(file.clone());
    }
    own.extend(config.protect.iter().cloned());
    own
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<(), Fatal> {
    let builtins = Builtins::new(Canary::prepare().map_err(failure)?, own_files(&config));
    let sockets = [config.socket.clone(), config.api_socket.clone()];
    for dir in sockets.iter().filter_map(|socket| socket.parent()) {
        let _ = std::fs::create_dir_all(dir);
    }
    let own_names = builtins.own_names(&sockets);
    if let Some(events) = &config.events {
        crate::trust::check_owned(events)
            .and_then(|()| kept::Kept::read(&config.state_file).check_events(events))
            .map_err(|e| failure(anyhow::anyhow!("refusing to continue the events file: {e}")))?;
    }
    let policy = load_own_policy(&config.policy, &builtins)?;
    for note in &policy.compiled.notes {
        warn!("{note}");
    }
    let mount = cgroup::ensure_cgroup2().map_err(failure)?;
    let persistence = Persistence {
        pins: crate::enforcer::pin_root(&config.cgroup_root),
        state_file: config.state_file.clone(),
    };
    let mut state = State::start(
        &mount,
        &config.cgroup_root,
        config.policy.clone(),
        builtins,
        policy,
        Some(&persistence),
    )?;
    if let Some(adopted) = &state.enforcer.adopted {
        info!(
            pins = %persistence.pins.display(),
            previous_generation = ?adopted.generation,
            unreported_losses = adopted.unreported_losses,
            "adopted the programs the previous guardd left attached: agents stayed confined while no guardd ran"
        );
    }
    state.enforcer.set_own_names(&own_names).map_err(failure)?;
    state.state_file = Some(persistence.state_file.clone());
    state.events_file = config.events.clone();
    state.keep();
    state.why = why::Why::new(config.why_dir.clone());
    let kept: Vec<Session> = state.sessions.live().cloned().collect();
    for session in &kept {
        state.why.open(session);
    }

    let replaced = match state.enforcer.pin() {
        Ok(replaced) => replaced,
        Err(e) => {
            warn!(
                "{e}: the programs detach when guardd ends, leaving agents unconfined until it runs again"
            );
            0
        }
    };
    let events = state.enforcer.take_events()?;
    let listener = bind_control(&config.socket).map_err(failure)?;
    if !state.enforcer.attachment.unavailable.is_empty() {
        info!(hooks = ?state.enforcer.attachment.unavailable, "optional hooks not in this kernel; older hooks cover their routes");
    }
    {
        let current = state.current();
        info!(
            policy = %config.policy.display(),
            cgroup_root = %config.cgroup_root,
            control_socket = %config.socket.display(),
            hooks = ?state.enforcer.attachment.attached,
            generation = current.number,
            policy_sha256 = %current.policy_sha256,
            "enforcing: {}",
            current.compiled.summary()
        );
    }

    // Before the chain is resumed: a torn last line is cut first.
    let (out, torn) = Out::open(config.events.as_deref()).map_err(failure)?;
    let watched = watched_files(&config.policy, &state.current().compiled);
    let state = Arc::new(Mutex::new(state));
    let (changes_tx, changes_rx) = mpsc::channel(16);
    let watcher = FileWatcher::new(changes_tx, watched).map_err(failure)?;
    tokio::spawn(serve_control(listener, state.clone()));
    let api_listener = bind_control(&config.api_socket).map_err(failure)?;
    tokio::spawn(services::serve(
        api_listener,
        services::LocalApi {
            state: state.clone(),
        },
    ));
    tokio::spawn(reload_on_change(state.clone(), changes_rx, watcher));
    tokio::spawn(resolve_hosts(
        state.clone(),
        hosts::resolver(config.dns_server).map_err(|e| format!("{e:#}")),
    ));

    let chain = match &config.events {
        Some(path) => Chain::resume(path)
            .with_context(|| format!("cannot continue the record chain of {}", path.display()))
            .map_err(failure)?,
        None => Chain::default(),
    };
    let ocsf = match &config.ocsf {
        Some(path) => Some(
            LineFile::open(path)
                .with_context(|| format!("cannot open OCSF file {}", path.display()))
                .map_err(failure)?
                .0,
        ),
        None => None,
    };
    let metrics = Arc::new(DaemonMetrics::default());
    if let Some(addr) = config.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for metrics on {addr}"))
            .map_err(failure)?;
        info!(%addr, "metrics on /metrics");
        tokio::spawn(crate::metrics::serve(listener, metrics.clone()));
    }
    lock(&state).update_metrics(&metrics);
    let mut writer = RecordWriter::new(
        chain,
        out,
        config.host_name.clone(),
        config.redactor,
        &state,
    );
    writer.ocsf = ocsf;
    writer.metrics = metrics.clone();
    if torn > 0 {
        warn!(
            bytes = torn,
            "the events file ended in a torn line (a guardd ended mid-write): cut, and reported as a loss"
        );
        writer.lose("torn_line", 1);
    }
    // Records that programs of another build made and no guardd read.
    writer.lose("replaced_programs", replaced);
    writer.write_losses();
    writer.flush();
    if let Some(addr) = config.grpc_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for gRPC on {addr}"))
            .map_err(failure)?;
        info!(%addr, "gRPC audit API listening");
        let services = crate::grpc::Services {
            audit: AuditService {
                feed: writer.feed.clone(),
                history: None,
                subscriber_losses: metrics
                    .lost
                    .get_or_create(&StageLabels {
                        stage: "subscriber_queue".into(),
                    })
                    .clone(),
            },
            ingest: None,
        };
        tokio::spawn(async move {
            if let Err(e) = crate::grpc::serve(listener, services, std::future::pending()).await {
                error!("gRPC audit API stopped: {e:#}");
            }
        });
    }
    if let (Some(collector), Some(events)) = (&config.collector, &config.events) {
        let shipper = crate::ship::Shipper {
            events: events.clone(),
            collector: collector.clone(),
            host: config.host_name.clone(),
            written: Some(writer.written.subscribe()),
            acked: watch::Sender::new(0),
        };
        let mut acked = shipper.acked.subscribe();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            while acked.changed().await.is_ok() {
                metrics.acked_seq.set(*acked.borrow() as i64);
            }
        });
        tokio::spawn(shipper.run());
    }
    let result = writer::stream_events(events, &state, writer).await;
    let _ = std::fs::remove_file(&config.socket);
    let _ = std::fs::remove_file(&config.api_socket);
    result.map_err(failure)?;

    let state = lock(&state);
    let counters = state.counters();
    let live = state.sessions.populated();
    let pinned = state.enforcer.pinned();
    drop(state);
    if pinned {
        info!(
            ?counters,
            pins = %persistence.pins.display(),
            "stopped; the programs stay attached and agents stay confined by the policy in force until guardd runs again (`guardd --detach` removes them)"
        );
    } else {
        info!(?counters, "detached: no longer enforcing");
        if live > 0 {
            warn!(
                "{live} session(s) still have processes; they are NOT confined until guardd runs again"
            );
        }
    }
    Ok(())
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    // A panic while holding the lock leaves nothing half-written that
    // matters more than continuing to stream records.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether the policy file or a pinned file has other content than
/// `generation` was made from.
fn files_changed(policy_path: &Path, generation: &Generation) -> bool {
    let policy = std::fs::read(policy_path).map(|text| digest(&text));
    policy.ok().as_ref() != Some(&generation.policy_sha256)
        || generation.compiled.pinned_file_changed()
}

/// What asked for a reload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reason {
    Signal,
    FileChanged,
    Request,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Reason::Signal => "SIGHUP",
            Reason::FileChanged => "file changed",
            Reason::Request => "control request",
        }
    }
}

/// Reloads in a blocking task (the canary runs a process) and reports the
/// outcome as a control response.
async fn reload(state: Arc<Mutex<State>>, reason: Reason) -> Response {
    let result = tokio::task::spawn_blocking(move || {
        // Read and compile without the lock (records keep flowing), then
        // publish with it.
        let (path, builtins, current) = {
            let state = lock(&state);
            (
                state.policy_path.clone(),
                state.builtins.clone(),
                state.current().clone(),
            )
        };
        if reason == Reason::FileChanged && !files_changed(&path, &current) {
            return Ok((current, None));
        }
        let policy = load_own_policy(&path, &builtins);
        let mut state = lock(&state);
        // Another reload may have published this very file meanwhile.
        if reason == Reason::FileChanged && !files_changed(&path, state.current()) {
            return Ok((state.current().clone(), None));
        }
        state
            .reload(reason, policy)
            .map(|generation| (generation, state.readiness.clone().err()))
    })
    .await;
    match result {
        Ok(Ok((generation, problem))) => Response::Reloaded {
            generation: generation.number,
            policy_sha256: generation.policy_sha256.clone(),
            problem,
        },
        Ok(Err(fatal)) if fatal.code == exit::INVALID_POLICY => Response::PolicyRefused {
            message: fatal.to_string(),
        },
        Ok(Err(fatal)) => Response::Error {
            message: fatal.to_string(),
        },
        Err(e) => Response::Error {
            message: format!("reload failed: {e}"),
        },
    }
}

/// The files whose change calls for a reload: the policy and every file a
/// rule pins by digest.
fn watched_files(policy: &Path, compiled: &CompiledPolicy) -> Vec<PathBuf> {
    std::iter::once(policy.to_path_buf())
        .chain(compiled.pinned_files.iter().map(|(path, _)| path.clone()))
        .collect()
}

/// Watches files by their directories (editors replace files by rename).
struct FileWatcher {
    watcher: notify::RecommendedWatcher,
    files: Arc<Mutex<Vec<PathBuf>>>,
    dirs: BTreeSet<PathBuf>,
}

impl FileWatcher {
    fn new(changes: mpsc::Sender<()>, files: Vec<PathBuf>) -> notify::Result<Self> {
        let watched = Arc::new(Mutex::new(Vec::new()));
        let filter = watched.clone();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            if event.kind.is_access() {
                return;
            }
            let files = filter.lock().unwrap_or_else(|e| e.into_inner());
            if event.paths.iter().any(|p| files.contains(p)) {
                let _ = changes.try_send(());
            }
        })?;
        let mut this = Self {
            watcher,
            files: watched,
            dirs: BTreeSet::new(),
        };
        this.watch(files);
        Ok(this)
    }

    fn watch(&mut self, files: Vec<PathBuf>) {
        use notify::Watcher as _;
        let files: Vec<PathBuf> = files
            .into_iter()
            .map(|f| std::path::absolute(&f).unwrap_or(f))
            .collect();
        let dirs: BTreeSet<PathBuf> = files
            .iter()
            .filter_map(|f| f.parent().map(Path::to_path_buf))
            .collect();
        for gone in self.dirs.difference(&dirs) {
            let _ = self.watcher.unwatch(gone);
        }
        for new in dirs.difference(&self.dirs) {
            if let Err(e) = self.watcher.watch(new, notify::RecursiveMode::NonRecursive) {
                warn!(dir = %new.display(), "cannot watch for policy changes: {e}");
            }
        }
        self.dirs = dirs;
        *self.files.lock().unwrap_or_else(|e| e.into_inner()) = files;
    }
}

/// Reloads on SIGHUP and when a watched file changes.
async fn reload_on_change(
    state: Arc<Mutex<State>>,
    mut changes: mpsc::Receiver<()>,
    mut watcher: FileWatcher,
) {
    let Ok(mut hup) = tokio::signal::unix::signal(SignalKind::hangup()) else {
        error!("cannot handle SIGHUP; reload through `guardctl reload`");
        return;
    };
    // Also picks up the pinned files of generations published on request.
    let mut refresh = tokio::time::interval(Duration::from_secs(2));
    loop {
        let reason = tokio::select! {
            _ = hup.recv() => Some(Reason::Signal),
            Some(()) = changes.recv() => {
                // Let a burst of writes settle into one reload.
                tokio::time::sleep(SETTLE).await;
                while changes.try_recv().is_ok() {}
                Some(Reason::FileChanged)
            }
            _ = refresh.tick() => None,
        };
        if let Some(reason) = reason {
            reload(state.clone(), reason).await;
        }
        let files = {
            let state = lock(&state);
            watched_files(&state.policy_path, &state.current().compiled)
        };
        watcher.watch(files);
    }
}

/// Listens on a unix socket only root can open (the control socket, the
/// local API socket).
fn bind_control(path: &Path) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // A socket left by a daemon that did not shut down cleanly.
    let _ = std::fs::remove_file(path);
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {}", path.display()))?;
    Ok(listener)
}

async fn serve_control(listener: UnixListener, state: Arc<Mutex<State>>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(handle_control(stream, state.clone()));
            }
            Err(e) => {
                // E.g. out of file descriptors: do not spin.
                warn!("control socket: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Largest request accepted.
const MAX_REQUEST: u64 = 64 * 1024;
/// How long a client has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A control request's caller, from the socket's peer credentials.
struct Caller {
    pid: i32,
    uid: u32,
    /// Inside Guard's root (or not identifiable): may only start sub-agent
    /// sessions and read the status.
    agent: bool,
}

impl Caller {
    /// The caller as the approver of a ticket.
    fn approver(&self) -> approvals::Approver {
        approvals::Approver {
            pid: self.pid,
            uid: self.uid,
        }
    }
}

async fn handle_control(stream: UnixStream, state: Arc<Mutex<State>>) {
    // Looked up at once and again after the request: a caller that exits
    // in between (its pid may be reused) counts as an agent.
    let peer = stream.peer_cred().ok();
    let pid = peer.and_then(|p| p.pid()).unwrap_or(0);
    let agent_at_accept = lock(&state).root.is_agent(pid);
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST));
    let response = match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await {
        Err(_) => Response::Error {
            message: "no request within 5 s".into(),
        },
        Ok(Err(e)) => Response::Error {
            message: format!("cannot read the request: {e}"),
        },
        Ok(Ok(_)) => match (serde_json::from_str::<Request>(&line), peer) {
            (Err(e), _) => Response::Error {
                message: format!("malformed request: {e}"),
            },
            (Ok(_), None) => Response::Error {
                message: "cannot identify the caller".into(),
            },
            (Ok(request), Some(peer)) => {
                let caller = Caller {
                    pid,
                    uid: peer.uid(),
                    agent: agent_at_accept || lock(&state).root.is_agent(pid),
                };
                answer(request, caller, state).await
            }
        },
    };
    let mut reply = serde_json::to_vec(&response).expect("responses serialize");
    reply.push(b'\n');
    let _ = write.write_all(&reply).await;
}

async fn answer(request: Request, caller: Caller, state: Arc<Mutex<State>>) -> Response {
    match request {
        Request::Status => Response::Status(Box::new(lock(&state).status_for(&caller))),
        Request::Session { .. } if caller.agent => Response::Error {
            message: "agents cannot thaw or kill sessions".into(),
        },
        Request::Session { session, action } => match lock(&state).session_action(&session, action)
        {
            Ok(message) => Response::SessionDone { message },
            Err(message) => Response::Error { message },
        },
        Request::StartSession {
            agent,
            profile,
            labels,
        } => match lock(&state).start_session(agent, profile, labels, &caller) {
            Ok((session, cgroup_procs, why_file)) => Response::Session {
                session: Box::new(session),
                cgroup_procs,
                why_file,
            },
            Err(message) => Response::Error { message },
        },
        Request::Reload if caller.agent => Response::Error {
            message: "agents cannot change the policy".into(),
        },
        Request::Reload => reload(state, Reason::Request).await,
    }
}

/// Resolves the names of hostname rules when they are new or their
/// answers expire, and keeps the kernel's addresses current. Without a
/// resolver, says so once a policy names hosts.
async fn resolve_hosts(
    state: Arc<Mutex<State>>,
    resolver: Result<hickory_resolver::TokioResolver, String>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut warned = false;
    loop {
        tick.tick().await;
        let due = {
            let state = lock(&state);
            state.hosts.due(&state.current().compiled)
        };
        let resolver = match &resolver {
            Ok(resolver) => resolver,
            Err(e) => {
                if !due.is_empty() && !warned {
                    warn!(hosts = ?due, "no DNS resolver ({e}): hostname rules apply to no address");
                }
                warned = !due.is_empty();
                continue;
            }
        };
        let mut answers = Vec::new();
        for name in due {
            let (addrs, ttl) = hosts::resolve(resolver, &name).await;
            answers.push((name, addrs, ttl));
        }
        if !answers.is_empty() {
            lock(&state).resolved(answers);
        }
    }
}
