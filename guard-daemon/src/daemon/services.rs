//! guardd's local gRPC API on its unix socket (`--socket`, mode 0666):
//! `DaemonService`, `PolicyService`, `SessionService` and `ApprovalService`.
//! Callers are identified by the socket's peer credentials
//! ([`caller`](super::caller)): a caller inside Guard's root (an agent) may
//! read the status of its own sessions, validate policies, start sub-agent
//! sessions and list its own tickets, but not read, apply or reload the
//! policy, act on sessions, nor approve or deny tickets. Other callers may
//! read if they are root or in the read group (`--read-group`), and change
//! if they are root or in the admin group (`--admin-group`). Root starts
//! sessions of any agent, other users those of the agents whose
//! `launched_by` names them ([`launching`](super::launching)). How each
//! refusal becomes a gRPC status is decided here ([`status_of`], [`ticket_status`]).

use std::{
    path::Path,
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use tokio::net::UnixListener;
use tokio_stream::{StreamExt as _, wrappers::UnixListenerStream};
use tonic::{Request, Response, Status};

use super::{
    approvals::{self, TicketError},
    caller::{self, Access, AccessGroups, Caller, Peer},
    config::{Fatal, compile_policy},
    refusal::Refusal,
    reload::{Reloaded, reload},
    state::{Reason, State, lock},
};
use guard_api::{
    exit, pb,
    session::{Login, Session},
};

#[derive(Clone)]
pub struct LocalApi {
    pub state: Arc<Mutex<State>>,
    pub groups: Arc<AccessGroups>,
}

impl LocalApi {
    fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let peer = request
            .extensions()
            .get::<Option<Peer>>()
            .cloned()
            .flatten()
            .ok_or_else(|| Status::permission_denied("cannot identify the caller"))?;
        Ok(Caller {
            pid: peer.pid,
            uid: peer.uid,
            // Looked up again now: a process moved into an agent cgroup
            // since it connected is an agent too.
            agent: peer.agent_at_accept || lock(&self.state).root.is_agent(peer.pid),
            access: self.groups.access(peer.uid, &peer.gids),
            gids: peer.gids,
        })
    }

    /// The caller, if it is no agent and may do what needs `needed`;
    /// otherwise PERMISSION_DENIED saying who may `{what}`.
    fn allowed<T>(
        &self,
        request: &Request<T>,
        needed: Access,
        what: &str,
    ) -> Result<Caller, Status> {
        let caller = self.caller(request)?;
        if caller.agent {
            return Err(status_of(Refusal::NotAllowed(format!(
                "agents cannot {what}"
            ))));
        }
        if caller.access < needed {
            return Err(status_of(Refusal::NotAllowed(
                self.groups.refusal(needed, what),
            )));
        }
        Ok(caller)
    }

    /// The caller, if it is an agent (which sees its own sessions only) or
    /// may read.
    fn agent_or_reader<T>(&self, request: &Request<T>, what: &str) -> Result<Caller, Status> {
        let caller = self.caller(request)?;
        if !caller.agent && caller.access < Access::Read {
            return Err(status_of(Refusal::NotAllowed(
                self.groups.refusal(Access::Read, what),
            )));
        }
        Ok(caller)
    }

    /// Loads the policy file as the next generation.
    async fn reload(&self) -> Result<Response<pb::ApplyPolicyResponse>, Status> {
        reload(self.state.clone(), Reason::Request)
            .await
            .map(|reloaded| Response::new(in_force(reloaded)))
            .map_err(|fatal| status_of(policy_refusal(fatal)))
    }
}

/// The gRPC status of a refused request.
fn status_of(refusal: Refusal) -> Status {
    match refusal {
        Refusal::Invalid(message) => Status::invalid_argument(message),
        Refusal::NotFound(message) => Status::not_found(message),
        Refusal::Conflict(message) => Status::failed_precondition(message),
        Refusal::NotAllowed(message) => Status::permission_denied(message),
        Refusal::Failed(message) => Status::internal(message),
    }
}

/// A failed reload or policy check: a policy that does not validate is the
/// request's fault, anything else guardd's.
fn policy_refusal(fatal: Fatal) -> Refusal {
    if fatal.code == exit::INVALID_POLICY {
        Refusal::Invalid(fatal.to_string())
    } else {
        Refusal::Failed(fatal.to_string())
    }
}

fn ticket_status(e: TicketError) -> Status {
    status_of(match e {
        TicketError::Unknown(_) => Refusal::NotFound(e.to_string()),
        TicketError::Closed { .. } => Refusal::Conflict(e.to_string()),
        TicketError::BadTtl => Refusal::Invalid(e.to_string()),
        TicketError::Kernel { .. } => Refusal::Failed(e.to_string()),
    })
}

fn in_force(reloaded: Reloaded) -> pb::ApplyPolicyResponse {
    pb::ApplyPolicyResponse {
        generation: reloaded.generation,
        sha256: reloaded.policy_sha256,
        problem: reloaded.problem.unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl pb::daemon_service_server::DaemonService for LocalApi {
    async fn get_status(
        &self,
        request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::Status>, Status> {
        let caller = self.agent_or_reader(&request, "read the status")?;
        Ok(Response::new(lock(&self.state).status_for(&caller)))
    }
}

#[tonic::async_trait]
impl pb::policy_service_server::PolicyService for LocalApi {
    async fn get_policy(
        &self,
        request: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::Policy>, Status> {
        self.allowed(&request, Access::Read, "read the policy")?;
        let state = lock(&self.state);
        let current = state.current();
        Ok(Response::new(pb::Policy {
            text: current.text.clone(),
            sha256: current.policy_sha256.clone(),
            generation: current.number,
            path: state.policy_path.display().to_string(),
            summary: current.compiled.summary(),
        }))
    }

    async fn validate_policy(
        &self,
        request: Request<pb::ValidatePolicyRequest>,
    ) -> Result<Response<pb::ValidatePolicyResponse>, Status> {
        self.agent_or_reader(&request, "validate policies")?;
        let text = request.into_inner().text;
        let builtins = lock(&self.state).builtins.clone();
        let checked =
            tokio::task::spawn_blocking(move || compile_policy(text, "(request)", &builtins))
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(match checked {
            Ok(policy) => pb::ValidatePolicyResponse {
                valid: true,
                error: String::new(),
                summary: policy.compiled.summary(),
                notes: policy.compiled.notes,
            },
            Err(fatal) => pb::ValidatePolicyResponse {
                valid: false,
                error: fatal.to_string(),
                ..Default::default()
            },
        }))
    }

    async fn apply_policy(
        &self,
        request: Request<pb::ApplyPolicyRequest>,
    ) -> Result<Response<pb::ApplyPolicyResponse>, Status> {
        self.allowed(&request, Access::Change, "change the policy")?;
        let request = request.into_inner();
        let (path, builtins, sha256) = {
            let state = lock(&self.state);
            let sha256 = state.current().policy_sha256.clone();
            (state.policy_path.clone(), state.builtins.clone(), sha256)
        };
        if !request.expected_sha256.is_empty() && request.expected_sha256 != sha256 {
            return Err(status_of(Refusal::Conflict(format!(
                "the policy in force is {sha256}, not {}",
                request.expected_sha256
            ))));
        }
        let text = request.text;
        let written = tokio::task::spawn_blocking(move || {
            compile_policy(text.clone(), "(request)", &builtins).map_err(policy_refusal)?;
            // Replace the file in one rename, so that a reload never reads
            // half of it.
            let dir = path.parent().unwrap_or(Path::new("."));
            let mut file = tempfile::NamedTempFile::new_in(dir)
                .map_err(|e| Refusal::Failed(format!("cannot write {}: {e}", dir.display())))?;
            std::io::Write::write_all(&mut file, text.as_bytes())
                .and_then(|()| file.as_file().sync_all())
                .map_err(|e| Refusal::Failed(format!("cannot write the policy: {e}")))?;
            file.persist(&path)
                .map_err(|e| Refusal::Failed(format!("cannot replace {}: {e}", path.display())))?;
            Ok::<_, Refusal>(())
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        written.map_err(status_of)?;
        self.reload().await
    }

    async fn reload_policy(
        &self,
        request: Request<pb::ReloadPolicyRequest>,
    ) -> Result<Response<pb::ApplyPolicyResponse>, Status> {
        self.allowed(&request, Access::Change, "change the policy")?;
        self.reload().await
    }
}

#[tonic::async_trait]
impl pb::session_service_server::SessionService for LocalApi {
    async fn list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let caller = self.agent_or_reader(&request, "list sessions")?;
        let agent = request.into_inner().agent;
        let sessions = lock(&self.state)
            .sessions_for(&caller)
            .iter()
            .filter(|s| agent.is_empty() || s.agent == agent)
            .map(Session::to_proto)
            .collect();
        Ok(Response::new(pb::ListSessionsResponse { sessions }))
    }

    async fn get_session(
        &self,
        request: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::SessionInfo>, Status> {
        let caller = self.agent_or_reader(&request, "read sessions")?;
        let id = request.into_inner().id;
        lock(&self.state)
            .sessions_for(&caller)
            .iter()
            .find(|s| s.id == id)
            .map(|s| Response::new(s.to_proto()))
            .ok_or_else(|| status_of(Refusal::NotFound(format!("no session {id}"))))
    }

    async fn start_session(
        &self,
        request: Request<pb::StartSessionRequest>,
    ) -> Result<Response<pb::StartSessionResponse>, Status> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        let profile = Some(request.profile).filter(|p| !p.is_empty());
        let labels = request.labels.into_iter().collect();
        let (session, why_file) = lock(&self.state)
            .start_session(request.agent, profile, labels, &caller)
            .map_err(status_of)?;
        Ok(Response::new(pb::StartSessionResponse {
            session: Some(session.to_proto()),
            why_file: why_file
                .map(|f| f.display().to_string())
                .unwrap_or_default(),
        }))
    }

    async fn place_process(
        &self,
        request: Request<pb::PlaceProcessRequest>,
    ) -> Result<Response<pb::PlaceProcessResponse>, Status> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        lock(&self.state)
            .place_process(&request.session, request.pid, &caller)
            .map_err(status_of)?;
        Ok(Response::new(pb::PlaceProcessResponse {}))
    }

    async fn start_login(
        &self,
        request: Request<pb::StartLoginRequest>,
    ) -> Result<Response<pb::StartLoginResponse>, Status> {
        let caller = self.caller(&request)?;
        // PAM runs `guardctl login` as root; an agent's su stays the agent's.
        if caller.agent || caller.uid != 0 {
            return Err(status_of(Refusal::NotAllowed(
                "only root outside every session places logins (guardctl login, from PAM)".into(),
            )));
        }
        let login = request
            .into_inner()
            .login
            .map(Login::from_proto)
            .filter(|l| !l.user.is_empty())
            .ok_or_else(|| status_of(Refusal::Invalid("the login names no user".into())))?;
        let session = lock(&self.state)
            .start_login(login, &caller)
            .map_err(status_of)?;
        Ok(Response::new(pb::StartLoginResponse {
            session: session.as_ref().map(Session::to_proto),
        }))
    }

    async fn control_session(
        &self,
        request: Request<pb::ControlSessionRequest>,
    ) -> Result<Response<pb::ControlSessionResponse>, Status> {
        self.allowed(&request, Access::Change, "thaw, kill or reset sessions")?;
        let request = request.into_inner();
        let action = pb::SessionAction::try_from(request.action).unwrap_or_default();
        lock(&self.state)
            .session_action(&request.id, action)
            .map(|message| Response::new(pb::ControlSessionResponse { message }))
            .map_err(status_of)
    }
}

fn ticket(t: &approvals::Ticket) -> pb::Ticket {
    pb::Ticket {
        id: t.id.clone(),
        state: t.state.as_str().into(),
        session: t.session.clone(),
        agent: t.agent.clone(),
        action: t.action.name().into(),
        target: t.target.clone(),
        rule: t.rule.clone(),
        message: t.message.clone().unwrap_or_default(),
        opened: Some(guard_api::time::timestamp(guard_api::time::rfc3339_nanos(
            &t.opened,
        ))),
        denials: t.denials,
        once: t.once,
        expires: t
            .expires
            .as_deref()
            .map(|e| guard_api::time::timestamp(guard_api::time::rfc3339_nanos(e))),
        approved_by: t.approved_by,
    }
}

#[tonic::async_trait]
impl pb::approval_service_server::ApprovalService for LocalApi {
    async fn list_tickets(
        &self,
        request: Request<pb::ListTicketsRequest>,
    ) -> Result<Response<pb::ListTicketsResponse>, Status> {
        let caller = self.agent_or_reader(&request, "list tickets")?;
        let all = request.into_inner().all;
        let tickets = lock(&self.state).tickets_for(&caller, all);
        Ok(Response::new(pb::ListTicketsResponse {
            tickets: tickets.iter().map(ticket).collect(),
        }))
    }

    async fn approve(
        &self,
        request: Request<pb::ApproveRequest>,
    ) -> Result<Response<pb::Ticket>, Status> {
        let caller = self.allowed(&request, Access::Change, "approve or deny tickets")?;
        let request = request.into_inner();
        let ttl = match request.ttl_seconds {
            0 => approvals::DEFAULT_TTL,
            seconds => std::time::Duration::from_secs(seconds),
        };
        let terms = approvals::Terms {
            once: request.once,
            ttl,
        };
        lock(&self.state)
            .approve(&request.id, terms, &caller)
            .map(|t| Response::new(ticket(&t)))
            .map_err(ticket_status)
    }

    async fn deny(
        &self,
        request: Request<pb::DenyRequest>,
    ) -> Result<Response<pb::Ticket>, Status> {
        let caller = self.allowed(&request, Access::Change, "approve or deny tickets")?;
        lock(&self.state)
            .deny_ticket(&request.into_inner().id, &caller)
            .map(|t| Response::new(ticket(&t)))
            .map_err(ticket_status)
    }
}

/// Listens on a unix socket anyone may connect to: what each caller may do
/// is decided from its credentials, request by request.
pub(super) fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // A socket left by a daemon that did not shut down cleanly.
    let _ = std::fs::remove_file(path);
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .with_context(|| format!("cannot open {} to every user", path.display()))?;
    Ok(listener)
}

/// Serves the local API on `listener` until `shutdown` completes, then
/// lets the calls in progress finish.
pub(super) async fn serve(
    listener: UnixListener,
    api: LocalApi,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let root = lock(&api.state).root.clone();
    let incoming = UnixListenerStream::new(listener)
        .map(move |stream| stream.map(|stream| caller::accept(stream, |pid| root.is_agent(pid))));
    tonic::transport::Server::builder()
        .add_service(pb::daemon_service_server::DaemonServiceServer::new(
            api.clone(),
        ))
        .add_service(pb::policy_service_server::PolicyServiceServer::new(
            api.clone(),
        ))
        .add_service(pb::session_service_server::SessionServiceServer::new(
            api.clone(),
        ))
        .add_service(pb::approval_service_server::ApprovalServiceServer::new(api))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .context("local API")
}
