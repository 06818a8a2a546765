//! guardctl's calls to guardd's local gRPC API: status, policy, sessions
//! and tickets.

use std::{ffi::OsString, path::Path};

use guard_api::{exit, grpc, launch, pb, time};

use tonic::transport::Channel;

/// Runs `call` with a channel to guardd's local API, on a runtime of its
/// own; when guardd cannot be reached, says why and returns the exit code.
fn with_guardd<T>(socket: &Path, call: impl AsyncFnOnce(Channel) -> T) -> Result<T, i32> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        match grpc::connect_unix(socket).await {
            Ok(channel) => Ok(call(channel).await),
            Err(e) => {
                eprintln!("guardctl: {e:#}");
                Err(exit::FAILURE)
            }
        }
    })
}

/// [`with_guardd`] for a command whose call gives its exit code.
fn call_guardd(socket: &Path, call: impl AsyncFnOnce(Channel) -> i32) -> i32 {
    with_guardd(socket, call).unwrap_or_else(|code| code)
}

/// Says why guardd refused; returns the exit code.
fn failed(status: &tonic::Status) -> i32 {
    eprintln!("guardctl: {}", status.message());
    exit::FAILURE
}

/// [`failed`] for commands that load a policy: one that does not validate
/// exits [`exit::INVALID_POLICY`].
fn policy_failed(status: &tonic::Status) -> i32 {
    let code = failed(status);
    if status.code() == tonic::Code::InvalidArgument {
        exit::INVALID_POLICY
    } else {
        code
    }
}

/// Prints `line` after an apply or reload; exit 1 when guardd is not
/// enforcing on the policy in force.
fn in_force(applied: pb::ApplyPolicyResponse, line: String) -> i32 {
    println!("{line}");
    if applied.problem.is_empty() {
        0
    } else {
        eprintln!("guardctl: NOT enforcing: {}", applied.problem);
        exit::FAILURE
    }
}

pub fn show_policy(socket: &Path) -> i32 {
    call_guardd(socket, async |channel| {
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
    call_guardd(socket, async |channel| {
        let mut client = pb::policy_service_client::PolicyServiceClient::new(channel);
        let request = pb::ApplyPolicyRequest {
            text,
            expected_sha256: expect.unwrap_or_default(),
        };
        match client.apply_policy(request).await {
            Ok(applied) => {
                let applied = applied.into_inner();
                let line = format!(
                    "in force: generation {} (policy sha256 {})",
                    applied.generation, applied.sha256
                );
                in_force(applied, line)
            }
            Err(status) => policy_failed(&status),
        }
    })
}

pub fn reload(socket: &Path) -> i32 {
    call_guardd(socket, async |channel| {
        let mut client = pb::policy_service_client::PolicyServiceClient::new(channel);
        match client.reload_policy(pb::ReloadPolicyRequest {}).await {
            Ok(reloaded) => {
                let reloaded = reloaded.into_inner();
                let line = format!(
                    "generation {} in force (policy sha256 {})",
                    reloaded.generation, reloaded.sha256
                );
                in_force(reloaded, line)
            }
            Err(status) => policy_failed(&status),
        }
    })
}

/// Starts a session of `agent` and runs `command` in it; the command's
/// exit status.
pub fn run(
    socket: &Path,
    agent: String,
    profile: Option<String>,
    labels: Vec<(String, String)>,
    user: Option<&str>,
    command: &[OsString],
) -> i32 {
    // The user first: a mistake starts no session.
    let run_as = match user.map(launch::RunAs::lookup).transpose() {
        Ok(run_as) => run_as,
        Err(e) => {
            eprintln!("guardctl: {e}");
            return exit::USAGE;
        }
    };
    let started = with_guardd(socket, async |channel| {
        let mut client = pb::session_service_client::SessionServiceClient::new(channel);
        let request = pb::StartSessionRequest {
            agent,
            profile: profile.unwrap_or_default(),
            labels: labels.into_iter().collect(),
        };
        client
            .start_session(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| failed(&status))
    });
    let started = match started.flatten() {
        Ok(started) => started,
        Err(code) => return code,
    };
    let id = started
        .session
        .and_then(|s| s.session)
        .unwrap_or_default()
        .id;
    let why_file = Some(Path::new(&started.why_file)).filter(|f| !f.as_os_str().is_empty());
    // guardd moves the command's process into the session while it waits
    // to execute the command.
    let place = {
        let (socket, session) = (socket.to_path_buf(), id.clone());
        move |pid: u32| {
            with_guardd(&socket, async |channel| {
                let mut client = pb::session_service_client::SessionServiceClient::new(channel);
                let request = pb::PlaceProcessRequest {
                    session,
                    pid: pid as i32,
                };
                client
                    .place_process(request)
                    .await
                    .map(drop)
                    .map_err(|status| status.message().to_string())
            })
            .map_err(|_| "guardd cannot be reached".to_string())
            .flatten()
        }
    };
    match launch::run(&id, why_file, run_as.as_ref(), command, place) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("guardctl: {e}");
            exit::FAILURE
        }
    }
}

/// Asks guardd to place the login in a session (`guardctl login`, from
/// PAM): exit 0 when placed or not guarded, 1 when guardd refused or cannot
/// be reached.
pub fn login(socket: &Path, login: guard_api::session::Login) -> i32 {
    call_guardd(socket, async |channel| {
        let mut client = pb::session_service_client::SessionServiceClient::new(channel);
        let request = pb::StartLoginRequest {
            login: Some(login.to_proto()),
        };
        match client.start_login(request).await {
            Ok(response) => {
                if let Some(info) = response.into_inner().session {
                    println!(
                        "guard: this login runs in session {} of agent `{}` (profile `{}`)",
                        info.session.unwrap_or_default().id,
                        info.agent,
                        info.profile
                    );
                }
                0
            }
            Err(status) => failed(&status),
        }
    })
}

/// Thaws, kills or refills the budgets of a session.
pub fn control_session(socket: &Path, action: pb::SessionAction, id: String) -> i32 {
    call_guardd(socket, async |channel| {
        let mut client = pb::session_service_client::SessionServiceClient::new(channel);
        let request = pb::ControlSessionRequest {
            id,
            action: action as i32,
        };
        match client.control_session(request).await {
            Ok(done) => {
                println!("{}", done.into_inner().message);
                0
            }
            Err(status) => failed(&status),
        }
    })
}

/// A session as `guardctl sessions --json` and `guardctl status --json`
/// print it.
fn session_json(info: &pb::SessionInfo) -> serde_json::Value {
    let s = info.session.clone().unwrap_or_default();
    let mut json = serde_json::json!({
        "id": s.id, "agent": info.agent, "profile": info.profile, "uid": s.uid,
        "user": Some(&s.user).filter(|u| !u.is_empty()), "labels": s.labels,
        "started": info.started.as_ref().map(|t| time::rfc3339(time::nanos(t))),
        "cgroup": info.cgroup,
    });
    if let Some(login_uid) = s.login_uid {
        json["login_uid"] = login_uid.into();
    }
    if !s.parent.is_empty() {
        json["parent"] = s.parent.into();
    }
    if let Some(login) = s.login {
        json["login"] = serde_json::to_value(guard_api::session::Login::from_proto(login))
            .expect("a login serializes");
    }
    json
}

pub fn list_sessions(socket: &Path, agent: Option<String>, json: bool) -> i32 {
    call_guardd(socket, async |channel| {
        let mut client = pb::session_service_client::SessionServiceClient::new(channel);
        let request = pb::ListSessionsRequest {
            agent: agent.unwrap_or_default(),
        };
        let sessions = match client.list_sessions(request).await {
            Ok(list) => list.into_inner().sessions,
            Err(status) => return failed(&status),
        };
        for info in &sessions {
            if json {
                println!("{}", session_json(info));
            } else {
                println!("{}", session_line(info));
            }
        }
        0
    })
}

fn session_line(info: &pb::SessionInfo) -> String {
    let s = info.session.clone().unwrap_or_default();
    let started = info.started.as_ref().map(|t| time::rfc3339(time::nanos(t)));
    let mut line = format!(
        "{} agent={} profile={} uid={} started={}",
        s.id,
        info.agent,
        info.profile,
        s.uid,
        started.unwrap_or_default(),
    );
    if !s.parent.is_empty() {
        line.push_str(&format!(" parent={}", s.parent));
    }
    if let Some(login) = s.login {
        let login = guard_api::session::Login::from_proto(login);
        line.push_str(&format!(" login=\"{login}\""));
    }
    line
}

/// Shows whether guardd is enforcing; exit 1 when not.
pub fn status(socket: &Path, json: bool) -> i32 {
    call_guardd(socket, async |channel| {
        let mut client = pb::daemon_service_client::DaemonServiceClient::new(channel);
        let status = match client.get_status(pb::GetStatusRequest {}).await {
            Ok(status) => status.into_inner(),
            Err(status) => return failed(&status),
        };
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(&status_json(&status)).expect("JSON prints")
            );
        } else {
            print_status(&status);
        }
        if status.enforcing { 0 } else { exit::FAILURE }
    })
}

/// The status as `guardctl status --json` prints it.
fn status_json(status: &pb::Status) -> serde_json::Value {
    let text = |s: &str| Some(s.to_string()).filter(|s| !s.is_empty());
    let mut json = serde_json::json!({
        "enforcing": status.enforcing,
        "generation": status.generation,
        "policy_file": status.policy_file,
        "policy_sha256": status.policy_sha256,
        "signing_key": text(&status.signing_key),
        "policy_loaded": status.policy_loaded.as_ref().map(|t| time::rfc3339(time::nanos(t))),
        "hooks": status.hooks.iter().map(|h| {
            let mut hook = serde_json::json!({"name": h.name, "attached": h.attached, "per_cgroup": h.per_cgroup, "enforcing": h.enforcing});
            if let Some(note) = text(&h.note) {
                hook["note"] = note.into();
            }
            hook
        }).collect::<Vec<_>>(),
        "profiles": status.profiles.iter().map(|p| serde_json::json!({
            "name": p.name, "mode": p.mode, "defaults": p.defaults, "rules": p.rules,
        })).collect::<Vec<_>>(),
        "sessions": status.sessions.iter().map(session_json).collect::<Vec<_>>(),
        "counters": status.counters,
        "databases": status.databases.iter().map(|d| {
            let mut database = serde_json::json!({
                "name": d.name, "listen": d.listen, "server": d.server, "guarded": d.guarded,
                "routed": d.routed, "unix_sockets_refused": d.unix_sockets_refused,
            });
            if let Some(problem) = text(&d.problem) {
                database["problem"] = problem.into();
            }
            database
        }).collect::<Vec<_>>(),
    });
    if let Some(problem) = text(&status.problem) {
        json["problem"] = problem.into();
    }
    if let Some(rejected) = text(&status.last_rejected) {
        json["last_rejected"] = rejected.into();
    }
    json
}

fn print_status(status: &pb::Status) {
    if status.problem.is_empty() {
        println!("enforcing: yes");
    } else {
        println!("enforcing: NO ({})", status.problem);
    }
    println!(
        "generation: {} (policy {}, sha256 {}, loaded {})",
        status.generation,
        status.policy_file,
        status.policy_sha256,
        status
            .policy_loaded
            .as_ref()
            .map(|t| time::rfc3339(time::nanos(t)))
            .unwrap_or_default()
    );
    if !status.last_rejected.is_empty() {
        println!("last reload refused: {}", status.last_rejected);
    }
    if !status.signing_key.is_empty() {
        println!("records signed with: {}", status.signing_key);
    }
    println!("hooks:");
    for hook in &status.hooks {
        let state = match (hook.attached, hook.per_cgroup, hook.enforcing) {
            (true, true, true) => "attached to Guard's cgroup, enforcing",
            (true, false, true) => "attached, enforcing",
            (true, true, false) => "attached to Guard's cgroup, NOT enforcing",
            (true, false, false) => "attached, NOT enforcing",
            (false, _, _) => "not attached",
        };
        if hook.note.is_empty() {
            println!("  {:<22} {state}", hook.name);
        } else {
            println!("  {:<22} {state} ({})", hook.name, hook.note);
        }
    }
    println!("profiles:");
    for profile in &status.profiles {
        let defaults: Vec<String> = profile
            .defaults
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!(
            "  {:<22} {} (defaults {}; {} rules)",
            profile.name,
            profile.mode.to_uppercase(),
            defaults.join(" "),
            profile.rules
        );
    }
    if !status.databases.is_empty() {
        println!("databases (statement guard):");
        for d in &status.databases {
            let state = if d.guarded {
                "guarded".to_string()
            } else {
                format!("NOT guarded ({})", d.problem)
            };
            let routing = if d.routed {
                "agents' direct connections routed to the guard"
            } else {
                "agents' direct connections NOT routed"
            };
            let sockets = if d.unix_sockets_refused.is_empty() {
                String::new()
            } else {
                format!(
                    "; agents refused at its unix sockets {}",
                    d.unix_sockets_refused.join(", ")
                )
            };
            println!(
                "  {:<22} {} -> {}  {state}; {routing}{sockets}",
                d.name, d.listen, d.server
            );
        }
    }
    println!("sessions: {}", status.sessions.len());
    for info in &status.sessions {
        println!("  {}", session_line(info));
    }
    let counters: Vec<String> = status
        .counters
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!("counters: {}", counters.join(" "));
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
    call_guardd(socket, async |channel| {
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
    call_guardd(socket, async |channel| {
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
