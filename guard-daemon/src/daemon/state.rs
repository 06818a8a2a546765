//! The one [`State`] behind a mutex: the enforcer, the generations, the
//! session table, tickets, status and metrics. The record stream, the
//! local API and reloads all go through it.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use guard_common::{Counter, lsm, route};
use tracing::{error, info, warn};

use guard_api::{exit, pb, record::Verdict, session::Session};
use guard_policy::{LoadedPolicy, compile};

use crate::{
    canary,
    cgroup::{self, GuardRoot},
    enforcer::{Enforcer, Programs},
    events::{self, Clock},
    generation::Generation,
    metrics::{DaemonMetrics, NameLabels},
    session::Sessions,
};

use super::{
    approvals,
    builtins::Builtins,
    caller::Caller,
    config::{Fatal, Persistence, compile_policy, failure},
    hosts, kept,
    refusal::Refusal,
    why,
};

/// What asked for a reload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Reason {
    Signal,
    FileChanged,
    Request,
    /// The same policy again, for the files of a rotated spool.
    SpoolRotated,
}

impl Reason {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Reason::Signal => "SIGHUP",
            Reason::FileChanged => "file changed",
            Reason::Request => "API request",
            Reason::SpoolRotated => "events file rotated",
        }
    }
}

/// Generations kept after they are replaced, so that records still queued
/// from them name their rules.
pub(super) const GENERATIONS_KEPT: usize = 16;

/// Everything the running daemon owns.
pub struct State {
    pub(super) enforcer: Enforcer,
    pub(super) root: GuardRoot,
    pub(super) policy_path: PathBuf,
    pub(super) builtins: Arc<Builtins>,
    /// The generation in force first, then the ones it replaced.
    pub(super) generations: VecDeque<Arc<Generation>>,
    pub(super) sessions: Sessions,
    /// Agent name → agent cgroup id.
    pub(super) agent_cgroups: BTreeMap<String, u64>,
    /// `Err` with the reason when the canary failed on the generation in
    /// force, or when only routing runs.
    pub(super) readiness: Result<(), String>,
    /// `guardd --routing-only`: no LSM program, only the routing programs.
    pub(super) routing_only: bool,
    pub(super) last_rejected: Option<String>,
    /// The public key of the host's signed checkpoints.
    pub(super) signing_key: Option<String>,
    /// Where the generation in force and the live sessions are kept for
    /// the next guardd, on every change.
    pub(super) state_file: Option<PathBuf>,
    /// The events file, whose identity is kept with the state.
    pub(super) events_file: Option<PathBuf>,
    /// Each session's last denials, for its agent to read.
    pub(super) why: why::Why,
    pub(super) tickets: approvals::Tickets,
    /// Records guardd makes itself (ticket steps), for the writer.
    pub(super) notes: Vec<guard_api::record::Record>,
    /// The addresses of hostname rules.
    pub(super) hosts: hosts::Hosts,
    /// The number of each generation as it is published.
    pub(super) published: tokio::sync::watch::Sender<u64>,
    /// How many times sessions ended: the statement guard then forgets
    /// their budgets.
    pub(super) sessions_ended: tokio::sync::watch::Sender<u64>,
    /// Whether the statement guard serves each database of the policy in
    /// force, or why not.
    pub(super) databases: BTreeMap<String, Result<(), String>>,
}

/// What a guardd with `--routing-only` does not do, in its status.
const ROUTING_ONLY: &str = "routing only (guardd --routing-only, for a host without BPF LSM): agents' connections to guarded databases go to their statement guards, and nothing else is enforced: no exec, file or network rule, no refusal at a database's unix socket, no self-protection";

impl State {
    /// Creates Guard's cgroups, loads and attaches the programs (or adopts
    /// those a previous guardd left pinned, with what it kept, when
    /// `persistence` says where), publishes the first generation and runs the canary. On
    /// failure the cgroups created here are removed again and programs
    /// loaded here detach; adopted ones stay as they were.
    pub(super) fn start(
        mount: &Path,
        cgroup_root: &str,
        policy_path: PathBuf,
        builtins: Builtins,
        policy: LoadedPolicy,
        persistence: Option<&Persistence>,
        programs: Programs,
    ) -> Result<Self, Fatal> {
        let root = GuardRoot::create(mount, cgroup_root).map_err(failure)?;
        let agent_names: Vec<String> = policy
            .compiled
            .agents
            .iter()
            .map(|(name, _)| name.clone())
            .collect();
        let pins = persistence.map(|p| p.pins.as_path());
        let enforcer = match Enforcer::load(&root, pins, programs) {
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
            routing_only: programs.routing_only,
            last_rejected: None,
            signing_key: None,
            // Set once started: a guardd that fails to start keeps nothing.
            state_file: None,
            events_file: None,
            why: why::Why::default(),
            tickets: approvals::Tickets::default(),
            notes: Vec::new(),
            hosts: hosts::Hosts::default(),
            published: tokio::sync::watch::Sender::new(0),
            sessions_ended: tokio::sync::watch::Sender::new(0),
            databases: BTreeMap::new(),
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
            if programs.routing_only {
                return Ok(());
            }
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
    pub(super) fn warn_unknown_cgroups(&self) {
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

    pub(super) fn current(&self) -> &Arc<Generation> {
        self.generations
            .front()
            .expect("a State always has a generation")
    }

    /// Publishes `policy` as the next generation and runs the canary on it.
    /// Agent cgroups are created as needed; running sessions keep their
    /// profile, which the policy must still define.
    pub(super) fn publish(&mut self, policy: LoadedPolicy) -> Result<(), Fatal> {
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
        // Before the switch: the generation in force keeps every secret it
        // had until then too.
        self.enforcer.set_secrets(&compiled.secrets)?;
        let info = self.enforcer.publish(
            &compiled,
            &self.hosts.entries(&compiled),
            &self.hosts.routes(&compiled),
            &cgroups,
        )?;
        self.agent_cgroups = agent_cgroups;
        self.generations.push_front(Arc::new(Generation {
            number: info.generation,
            policy_sha256: policy.sha256,
            text: policy.text,
            compiled,
            loaded: guard_api::time::now_rfc3339(),
        }));
        self.generations.truncate(GENERATIONS_KEPT + 1);
        self.published.send_replace(info.generation);
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
        self.readiness = if self.routing_only {
            Err(ROUTING_ONLY.into())
        } else {
            self.builtins
                .canary
                .check(&self.root)
                .map_err(|e| e.to_string())
        };
        Ok(())
    }

    /// Publishes a policy read again from its file, or, if it failed to
    /// read, parse, validate or compile, records that it was refused: the
    /// generation in force stays.
    pub(super) fn reload(
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

    /// The (innermost) session a process runs in, if it is an agent; an
    /// agent outside any session may not start sessions.
    pub(super) fn parent_session(&mut self, pid: i32) -> Result<Option<Session>, String> {
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

    pub(super) fn outermost(&self, mut session: Session) -> Session {
        while let Some(parent) = session.parent.as_ref().and_then(|p| self.sessions.get(p)) {
            session = parent.clone();
        }
        session
    }

    /// Marks ended sessions and removes their entries, budgets and
    /// tickets; expires approvals past their time.
    pub(super) fn reap_sessions(&mut self) {
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
            if key.in_kernel()
                && let Err(e) = self.enforcer.revoke(key)
            {
                warn!("cannot withdraw an approval: {e}");
            }
        }
        self.notes
            .extend(expired.into_iter().map(|(_, record)| record));
        if !ended.is_empty() {
            self.sessions_ended.send_modify(|n| *n += 1);
            self.keep();
            self.why
                .keep_only(self.sessions.live().map(|s| s.id.as_str()));
        }
    }

    /// Freezes the outermost session of `session` (the whole agent, with
    /// its sub-agents) through cgroup v2's freezer: every process stops
    /// where it is, for a human to inspect, thaw or kill. True if frozen.
    pub(super) fn freeze(&self, session: Session) -> bool {
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
    pub(super) fn session_action(
        &mut self,
        id: &str,
        action: pb::SessionAction,
    ) -> Result<String, Refusal> {
        let unknown = || Refusal::NotFound(format!("no live session `{id}`"));
        let session = self
            .sessions
            .live()
            .find(|s| s.id == id)
            .cloned()
            .ok_or_else(unknown)?;
        let path = self.sessions.path(&session.id).ok_or_else(unknown)?;
        let (file, what) = match action {
            pb::SessionAction::Thaw => ("cgroup.freeze", "0"),
            pb::SessionAction::Kill => ("cgroup.kill", "1"),
            pb::SessionAction::Reset => {
                // Budgets belong to the outermost session, whose entry applies.
                let cgroup = self.outermost(session).cgroup;
                self.enforcer
                    .reset_budgets(cgroup)
                    .map_err(|e| Refusal::Failed(e.to_string()))?;
                info!(session = id, "budgets refilled");
                return Ok(format!("the budgets of session {id} are full again"));
            }
            pb::SessionAction::Unspecified => {
                return Err(Refusal::Invalid(
                    "no session action: thaw, kill or reset".into(),
                ));
            }
        };
        std::fs::write(path.join(file), what).map_err(|e| {
            Refusal::Failed(format!("cannot write {}: {e}", path.join(file).display()))
        })?;
        info!(session = id, ?action, "session action");
        Ok(match action {
            pb::SessionAction::Thaw => format!("session {id} thawed"),
            _ => format!("every process of session {id} killed"),
        })
    }

    /// Takes new answers for hostname rules and, when an address changed,
    /// rewrites the generation in force's hostname entries.
    pub(super) fn resolved(&mut self, answers: Vec<(String, Vec<std::net::IpAddr>, Duration)>) {
        let mut changed = false;
        for (name, addrs, ttl) in answers {
            changed |= self.hosts.update(&name, addrs, ttl);
        }
        if changed {
            let compiled = &self.current().compiled;
            let (entries, routes) = (self.hosts.entries(compiled), self.hosts.routes(compiled));
            if let Err(e) = self.enforcer.set_host_addrs(&entries) {
                error!("cannot update the addresses of hostname rules: {e}");
            }
            if let Err(e) = self.enforcer.set_routes(&routes) {
                error!("cannot update the routed addresses of database servers: {e}");
            }
        }
    }

    /// The tickets `caller` may see: an agent, its own outermost
    /// session's.
    pub(super) fn tickets_for(&mut self, caller: &Caller, all: bool) -> Vec<approvals::Ticket> {
        let mut tickets = self.tickets.list(all);
        if caller.agent {
            let own = self.own_session(caller);
            tickets.retain(|t| own.as_deref() == Some(t.session.as_str()));
        }
        tickets
    }

    /// Approves a pending ticket: the kernel honours it from now on.
    pub(super) fn approve(
        &mut self,
        id: &str,
        terms: approvals::Terms,
        caller: &Caller,
    ) -> Result<approvals::Ticket, approvals::TicketError> {
        let by = caller.approver();
        let (key, exception, record) = self.tickets.approve(id, terms, &by)?;
        if key.in_kernel() {
            self.enforcer
                .grant(key, exception)
                .map_err(|e| approvals::TicketError::kernel(id, e))?;
        }
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
    pub(super) fn deny_ticket(
        &mut self,
        id: &str,
        caller: &Caller,
    ) -> Result<approvals::Ticket, approvals::TicketError> {
        let by = caller.approver();
        let (key, record) = self.tickets.deny(id, &by)?;
        if key.in_kernel() {
            self.enforcer
                .revoke(&key)
                .map_err(|e| approvals::TicketError::kernel(id, e))?;
        }
        info!(ticket = id, uid = by.uid, "ticket denied");
        self.notes.push(record);
        Ok(self.tickets.get(id).expect("just denied"))
    }

    /// Writes the generation in force and the live sessions for the next
    /// guardd.
    pub(super) fn keep(&self) {
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
    pub(super) fn take_over(&mut self, kept: kept::Kept, adopted: Option<u64>) {
        if adopted == Some(kept.generation) {
            match compile_policy(kept.policy, "kept by the previous guardd", &self.builtins) {
                Ok(policy) => self.generations.push_back(Arc::new(Generation {
                    number: kept.generation,
                    policy_sha256: policy.sha256,
                    text: policy.text,
                    compiled: policy.compiled,
                    loaded: guard_api::time::now_rfc3339(),
                })),
                Err(e) => warn!("{e}: records of the previous generation name rules by number"),
            }
        }
        for k in kept.sessions {
            if cgroup::cgroup_id(&k.path).is_ok_and(|id| id == k.session.cgroup) {
                info!(session = %k.session.id, agent = %k.session.agent, "session kept from the previous guardd");
                self.sessions.insert(k.session, k.path, None);
            }
        }
    }

    /// The id of the outermost session an agent caller runs in.
    pub(super) fn own_session(&mut self, caller: &Caller) -> Option<String> {
        self.parent_session(caller.pid)
            .ok()
            .flatten()
            .map(|session| self.outermost(session).id)
    }

    /// The live sessions `caller` may see: an agent sees only those of its
    /// own outermost session (itself and its sub-agents).
    pub(super) fn sessions_for(&mut self, caller: &Caller) -> Vec<Session> {
        let mut sessions: Vec<Session> = self.sessions.live().cloned().collect();
        if caller.agent {
            let own = self.own_session(caller);
            sessions.retain(|session| {
                own.as_ref()
                    .is_some_and(|own| self.outermost(session.clone()).id == *own)
            });
        }
        sessions
    }

    /// The status, as `caller` may see it (its sessions: [`Self::sessions_for`]).
    pub(super) fn status_for(&mut self, caller: &Caller) -> pb::Status {
        let sessions = self.sessions_for(caller);
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
                pb::HookStatus {
                    name: hook.program.into(),
                    attached,
                    per_cgroup: attachment.per_cgroup.contains(&hook.program),
                    enforcing: attached
                        && (self.readiness.is_ok() || !canaried.contains(hook.program)),
                    note: if attachment.unavailable.contains(&hook.program) {
                        missing.into()
                    } else {
                        String::new()
                    },
                }
            })
            .chain(route::PROGRAMS.iter().map(|program| {
                let attached = attachment.attached.contains(program);
                pb::HookStatus {
                    name: (*program).into(),
                    attached,
                    enforcing: attached,
                    note: String::new(),
                    // Routing programs are cgroup programs.
                    per_cgroup: true,
                }
            }))
            .collect();
        let routing = route::PROGRAMS
            .iter()
            .all(|p| attachment.attached.contains(p));
        let routes = self.hosts.routes(&current.compiled);
        let compiled = &current.compiled;
        let profiles = compiled
            .profiles
            .iter()
            .filter(|(name, _)| name != canary::AGENT)
            .map(|(name, entry)| pb::ProfileStatus {
                name: name.clone(),
                mode: compile::mode_name(entry).into(),
                defaults: compile::defaults_of(entry)
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                rules: compiled.rules.iter().filter(|r| r.profile == *name).count() as u64,
            })
            .collect();
        let databases = compiled
            .databases
            .iter()
            .map(|d| {
                let serving = self
                    .databases
                    .get(&d.name)
                    .cloned()
                    .unwrap_or_else(|| Err("the statement guard has not started".into()));
                pb::DatabaseStatus {
                    name: d.name.clone(),
                    listen: d.listen.to_string(),
                    server: d.server.clone(),
                    guarded: serving.is_ok(),
                    problem: serving.err().unwrap_or_default(),
                    routed: routing && compile::is_routed(d, &routes),
                    unix_sockets_refused: compile::refused_sockets(d, &compiled.database_sockets),
                }
            })
            .collect();
        pb::Status {
            enforcing: self.readiness.is_ok(),
            problem: self.readiness.clone().err().unwrap_or_default(),
            generation: current.number,
            policy_file: self.policy_path.display().to_string(),
            policy_sha256: current.policy_sha256.clone(),
            policy_loaded: Some(guard_api::time::timestamp(guard_api::time::rfc3339_nanos(
                &current.loaded,
            ))),
            last_rejected: self.last_rejected.clone().unwrap_or_default(),
            signing_key: self.signing_key.clone().unwrap_or_default(),
            hooks,
            profiles,
            sessions: sessions.iter().map(Session::to_proto).collect(),
            counters: self.counters(),
            databases,
        }
    }

    /// The kernel's counters, by name.
    pub(super) fn counters(&self) -> BTreeMap<String, u64> {
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
    pub(super) fn update_metrics(&self, metrics: &DaemonMetrics) {
        for (name, value) in self.counters() {
            metrics
                .kernel
                .get_or_create(&NameLabels { name })
                .set(value as i64);
        }
        metrics.enforcing.set(i64::from(self.readiness.is_ok()));
        metrics.generation.set(self.current().number as i64);
    }

    /// The record of one kernel decision, and what the decision sets off.
    /// Making the record is pure (`events::to_record`, from the generation
    /// that decided and the session table); every side effect is in
    /// [`Self::apply`].
    pub(super) fn record(
        &mut self,
        event: &guard_common::Event,
        clock: &Clock,
    ) -> guard_api::record::Record {
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
        self.apply(event, generation.as_deref(), session, &mut record);
        record
    }

    /// What a decision sets off, noted in its record: an approved action
    /// uses its ticket; a denial in a session opens a ticket (approvable
    /// rules), freezes the session (freezing rules and budgets), and goes to
    /// the session's reasons file.
    fn apply(
        &mut self,
        event: &guard_common::Event,
        generation: Option<&Generation>,
        session: Option<Session>,
        record: &mut guard_api::record::Record,
    ) {
        if event.flags & guard_common::event_flag::APPROVED != 0 {
            self.tickets.used(event.detail);
        }
        if let Some(session) = session
            && record.verdict == Verdict::Deny
        {
            let compiled = generation.map(|g| &g.compiled);
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
                record.ticket = self.tickets.open(key, record, &outermost.id);
            }
            if freeze && self.freeze(session.clone()) {
                record.flags.push("session_frozen".into());
            }
            self.why.note(&session.id, record);
        }
    }
}

pub(super) fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    // A panic while holding the lock leaves nothing half-written that
    // matters more than continuing to stream records.
    state.lock().unwrap_or_else(|e| e.into_inner())
}
