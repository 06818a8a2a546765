//! The JSON control socket: one request and one response per connection.

use std::{
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};
use tracing::warn;

use guard_api::control::{Request, Response};

use super::{
    caller::Caller,
    reload,
    state::{Reason, State, lock},
};

/// Listens on a unix socket only root can open (the control socket, the
/// local API socket).
pub(super) fn bind_control(path: &Path) -> anyhow::Result<UnixListener> {
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

pub(super) async fn serve_control(listener: UnixListener, state: Arc<Mutex<State>>) {
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
pub(super) const MAX_REQUEST: u64 = 64 * 1024;
/// How long a client has to send its request.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) async fn handle_control(stream: UnixStream, state: Arc<Mutex<State>>) {
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

pub(super) async fn answer(request: Request, caller: Caller, state: Arc<Mutex<State>>) -> Response {
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
        Request::Reload => reload::reload(state, Reason::Request).await,
    }
}
