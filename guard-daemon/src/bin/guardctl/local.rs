//! guardctl's calls to guardd's local gRPC API (policy and sessions).

use std::path::Path;

use guard_daemon::{
    api::{self, pb},
    exit, grpc,
};

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
            let started = info.started.as_ref().map(|t| api::rfc3339(api::nanos(t)));
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
