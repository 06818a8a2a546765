//! guardd's local gRPC API: `PolicyService`, `SessionService` and
//! `ApprovalService`, on a unix socket only root can open (`--api-socket`).
//! Callers are identified by the socket's peer credentials, as on the
//! control socket: a caller inside Guard's root (an agent) may validate
//! policies and list its own session tree and tickets, but not read or
//! apply the policy, nor approve or deny tickets.

use std::sync::{Arc, Mutex};

use tonic::{Request, Response, Status, transport::server::UdsConnectInfo};

use super::{
    approvals::{self, TicketError},
    caller::Caller,
    config::compile_policy,
    reload::reload,
    state::{Reason, State, lock},
};
use guard_api::{control, pb, session::Session};

#[derive(Clone)]
pub struct LocalApi {
    pub state: Arc<Mutex<State>>,
}

impl LocalApi {
    fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let cred = request
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|info| info.peer_cred)
            .ok_or_else(|| Status::permission_denied("cannot identify the caller"))?;
        let pid = cred.pid().unwrap_or(0);
        Ok(Caller {
            pid,
            uid: cred.uid(),
            agent: lock(&self.state).root.is_agent(pid),
        })
    }

    /// The caller, unless it is an agent: then PERMISSION_DENIED saying
    /// `agents cannot {what}`.
    fn not_for_agents<T>(&self, request: &Request<T>, what: &str) -> Result<Caller, Status> {
        let caller = self.caller(request)?;
        if caller.agent {
            return Err(Status::permission_denied(format!("agents cannot {what}")));
        }
        Ok(caller)
    }
}

#[tonic::async_trait]
impl pb::policy_service_server::PolicyService for LocalApi {
    async fn get_policy(
        &self,
        request: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::Policy>, Status> {
        self.not_for_agents(&request, "read the policy")?;
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
        self.not_for_agents(&request, "change the policy")?;
        let request = request.into_inner();
        let (path, builtins, sha256) = {
            let state = lock(&self.state);
            let sha256 = state.current().policy_sha256.clone();
            (state.policy_path.clone(), state.builtins.clone(), sha256)
        };
        if !request.expected_sha256.is_empty() && request.expected_sha256 != sha256 {
            return Err(Status::failed_precondition(format!(
                "the policy in force is {sha256}, not {}",
                request.expected_sha256
            )));
        }
        let text = request.text;
        let written = tokio::task::spawn_blocking(move || {
            compile_policy(text.clone(), "(request)", &builtins)
                .map_err(|fatal| Status::invalid_argument(fatal.to_string()))?;
            // Replace the file in one rename, so that a reload never reads
            // half of it.
            let dir = path.parent().unwrap_or(std::path::Path::new("."));
            let mut file = tempfile::NamedTempFile::new_in(dir)
                .map_err(|e| Status::internal(format!("cannot write {}: {e}", dir.display())))?;
            std::io::Write::write_all(&mut file, text.as_bytes())
                .and_then(|()| file.as_file().sync_all())
                .map_err(|e| Status::internal(format!("cannot write the policy: {e}")))?;
            file.persist(&path)
                .map_err(|e| Status::internal(format!("cannot replace {}: {e}", path.display())))?;
            Ok::<_, Status>(())
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        written?;
        match reload(self.state.clone(), Reason::Request).await {
            control::Response::Reloaded {
                generation,
                policy_sha256,
                problem,
            } => Ok(Response::new(pb::ApplyPolicyResponse {
                generation,
                sha256: policy_sha256,
                problem: problem.unwrap_or_default(),
            })),
            control::Response::PolicyRefused { message } => Err(Status::invalid_argument(message)),
            other => Err(Status::internal(format!("{other:?}"))),
        }
    }
}

fn session_info(s: &Session) -> pb::SessionInfo {
    pb::SessionInfo {
        session: Some(guard_api::audit::session(&s.reference())),
        agent: s.agent.clone(),
        profile: s.profile.clone(),
        started: Some(guard_api::time::timestamp(guard_api::time::rfc3339_nanos(
            &s.started,
        ))),
        cgroup: s.cgroup,
    }
}

#[tonic::async_trait]
impl pb::session_service_server::SessionService for LocalApi {
    async fn list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let caller = self.caller(&request)?;
        let agent = request.into_inner().agent;
        let sessions = lock(&self.state)
            .status_for(&caller)
            .sessions
            .iter()
            .filter(|s| agent.is_empty() || s.agent == agent)
            .map(session_info)
            .collect();
        Ok(Response::new(pb::ListSessionsResponse { sessions }))
    }

    async fn get_session(
        &self,
        request: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::SessionInfo>, Status> {
        let caller = self.caller(&request)?;
        let id = request.into_inner().id;
        lock(&self.state)
            .status_for(&caller)
            .sessions
            .iter()
            .find(|s| s.id == id)
            .map(|s| Response::new(session_info(s)))
            .ok_or_else(|| Status::not_found(format!("no session {id}")))
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

fn ticket_status(e: TicketError) -> Status {
    match e {
        TicketError::Unknown(_) => Status::not_found(e.to_string()),
        TicketError::Closed { .. } => Status::failed_precondition(e.to_string()),
        TicketError::BadTtl => Status::invalid_argument(e.to_string()),
        TicketError::Kernel { .. } => Status::internal(e.to_string()),
    }
}

#[tonic::async_trait]
impl pb::approval_service_server::ApprovalService for LocalApi {
    async fn list_tickets(
        &self,
        request: Request<pb::ListTicketsRequest>,
    ) -> Result<Response<pb::ListTicketsResponse>, Status> {
        let caller = self.caller(&request)?;
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
        let caller = self.not_for_agents(&request, "approve or deny tickets")?;
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
        let caller = self.not_for_agents(&request, "approve or deny tickets")?;
        lock(&self.state)
            .deny_ticket(&request.into_inner().id, &caller)
            .map(|t| Response::new(ticket(&t)))
            .map_err(ticket_status)
    }
}

/// Serves the local API on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::UnixListener, api: LocalApi) {
    let result = tonic::transport::Server::builder()
        .add_service(pb::policy_service_server::PolicyServiceServer::new(
            api.clone(),
        ))
        .add_service(pb::session_service_server::SessionServiceServer::new(
            api.clone(),
        ))
        .add_service(pb::approval_service_server::ApprovalServiceServer::new(api))
        .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
        .await;
    if let Err(e) = result {
        tracing::error!("local API stopped: {e}");
    }
}
