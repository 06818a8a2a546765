//! guardctl's calls to guardd's local gRPC API (policy and sessions).

use std::path::Path;

use guard_api::{exit, grpc, pb, time};

fn block_on<T>(future: impl Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(future)
}

/// A channel to guardd's local API, or the exit code after saying why not.
async fn channel(socket: &Path) -> Result<tonic::transport::Channel, i32> {
    grpc::connect_unix(socket).await.map_err(|e| {
        eprintln!("guardctl: {e:#}");
        exit::FAILURE
    })
}

fn failed(status: &tonic::Status) -> i32 {
    eprintln!("guardctl: {}", status.message());
    match status.code() {
        tonic::Code::InvalidArgument => exit::INVALID_POLICY,
        _ => exit::FAILURE,
    }
}

pub fn show_policy(socket: &Path) -> i32 {
    block_on(async {
        let channel = match channel(socket).await {
            Ok(channel) => channel,
            Err(code) => return code,
        };
        let mut client = pb::policy_service_client::PolicyServiceClient::new(channel);
        match client.get_policy(pb::GetPolicyRequest {}).await {
            Ok(policy) => {
                let policy = policy.into_inner();
                eprintln!(
                    "# generation {}, {} (sha256 {})",
                    policy.generation, policy.path, policy.sha256
                );
                print!("{}", policy.text);
                0
            }
            Err(status) => failed(&status),
        }
    })
}

pub fn apply_policy(socket: &Path, file: &Path, expect: Option<String>) -> i32 {
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("guardctl: cannot read {}: {e}", file.display());
            return exit::FAILURE;
        }
    };
    block_on(async {
        let channel = match channel(socket).await {
            Ok(channel) => channel,
            Err(code) => return code,
        };
        let mut client = pb::policy_service_client::PolicyServiceClient::new(channel);
        let request = pb::ApplyPolicyRequest {
            text,
            expected_sha256: expect.unwrap_or_default(),
        };
        match client.apply_policy(request).await {
            Ok(applied) => {
                let applied = applied.into_inner();
                println!(
                    "in force: generation {} (policy sha256 {})",
                    applied.generation, applied.sha256
                );
                if applied.problem.is_empty() {
                    0
                } else {
                    eprintln!("guardctl: NOT enforcing: {}", applied.problem);
                    exit::FAILURE
                }
            }
            Err(status) => failed(&status),
        }
    })
}

pub fn list_sessions(socket: &Path, agent: Option<String>, json: bool) -> i32 {
    block_on(async {
        let channel = match channel(socket).await {
            Ok(channel) => channel,
            Err(code) => return code,
        };
        let mut client = pb::session_service_client::SessionServiceClient::new(channel);
        let request = pb::ListSessionsRequest {
            agent: agent.unwrap_or_default(),
        };
        let sessions = match client.list_sessions(request).await {
            Ok(list) => list.into_inner().sessions,
            Err(status) => return failed(&status),
        };
        for info in sessions {
            let s = info.session.unwrap_or_default();
            let started = info.started.as_ref().map(|t| time::rfc3339(time::nanos(t)));
            if json {
                let line = serde_json::json!({
                    "id": s.id, "agent": info.agent, "profile": info.profile, "uid": s.uid,
                    "user": s.user, "login_uid": s.login_uid, "labels": s.labels,
                    "parent": s.parent, "started": started, "cgroup": info.cgroup,
                });
                println!("{line}");
            } else {
                println!(
                    "{} agent={} profile={} uid={} started={}{}",
                    s.id,
                    info.agent,
                    info.profile,
                    s.uid,
                    started.unwrap_or_default(),
                    if s.parent.is_empty() {
                        String::new()
                    } else {
                        format!(" parent={}", s.parent)
                    }
                );
            }
        }
        0
    })
}

/// A ticket as `guardctl tickets --json` prints it.
fn ticket_json(t: &pb::Ticket) -> serde_json::Value {
    let time =
        |t: &Option<prost_types::Timestamp>| t.as_ref().map(|t| time::rfc3339(time::nanos(t)));
    serde_json::json!({
        "id": t.id, "state": t.state, "session": t.session, "agent": t.agent,
        "action": t.action, "target": t.target, "rule": t.rule, "message": t.message,
        "opened": time(&t.opened), "denials": t.denials, "once": t.once,
        "expires": time(&t.expires), "approved_by": t.approved_by,
    })
}

fn ticket_line(t: &pb::Ticket) -> String {
    let terms = match (&t.expires, t.once) {
        (Some(until), once) => format!(
            " ({}until {})",
            if once { "once, " } else { "" },
            time::rfc3339(time::nanos(until))
        ),
        (None, _) => String::new(),
    };
    let message = if t.message.is_empty() {
        String::new()
    } else {
        format!(": {}", t.message)
    };
    format!(
        "{} {}{terms} session={} agent={} {} {} rule={} denials={}{message}",
        t.id, t.state, t.session, t.agent, t.action, t.target, t.rule, t.denials
    )
}

/// Lists tickets; with `follow`, polls and prints each ticket when it opens
/// or changes.
pub fn tickets(socket: &Path, all: bool, follow: bool, json: bool) -> i32 {
    block_on(async {
        let channel = match channel(socket).await {
            Ok(channel) => channel,
            Err(code) => return code,
        };
        let mut client = pb::approval_service_client::ApprovalServiceClient::new(channel);
        let mut shown = std::collections::BTreeMap::new();
        loop {
            let request = pb::ListTicketsRequest { all: all || follow };
            let list = match client.list_tickets(request).await {
                Ok(list) => list.into_inner().tickets,
                Err(status) => return failed(&status),
            };
            if list.is_empty() && !follow && !json {
                println!("no open tickets");
            }
            for t in &list {
                let line = if json {
                    ticket_json(t).to_string()
                } else {
                    ticket_line(t)
                };
                if shown.get(&t.id) != Some(&line) {
                    println!("{line}");
                    shown.insert(t.id.clone(), line);
                }
            }
            if !follow {
                return 0;
            }
            use std::io::Write as _;
            let _ = std::io::stdout().flush();
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    })
}

/// Approves (`ttl` Some) or denies (`ttl` None) a ticket.
pub fn decide_ticket(
    socket: &Path,
    id: String,
    approve: Option<(bool, std::time::Duration)>,
) -> i32 {
    block_on(async {
        let channel = match channel(socket).await {
            Ok(channel) => channel,
            Err(code) => return code,
        };
        let mut client = pb::approval_service_client::ApprovalServiceClient::new(channel);
        let result = match approve {
            Some((once, ttl)) => {
                client
                    .approve(pb::ApproveRequest {
                        id,
                        once,
                        ttl_seconds: ttl.as_secs(),
                    })
                    .await
            }
            None => client.deny(pb::DenyRequest { id }).await,
        };
        match result {
            Ok(ticket) => {
                println!("{}", ticket_line(&ticket.into_inner()));
                0
            }
            Err(status) => failed(&status),
        }
    })
}
