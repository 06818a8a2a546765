//! The daemon's local control socket: one JSON request per connection, one
//! JSON response. `guardctl` is the client. The socket is root's (mode 0600);
//! a request from a process inside an agent cgroup may only start a
//! sub-agent session or read the status, never change the policy.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::session::Session;

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// Start a session for `agent`; `profile` overrides the agent's.
    StartSession {
        agent: String,
        profile: Option<String>,
        labels: BTreeMap<String, String>,
    },
    /// Read the policy file again and switch to it.
    Reload,
    Status,
    /// Thaw a frozen session, kill every process in it, or refill its
    /// budgets.
    Session {
        session: String,
        action: SessionAction,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum SessionAction {
    /// Let a frozen session run again.
    Thaw,
    /// Kill every process of the session (frozen or not).
    Kill,
    /// Refill the session's budgets.
    Reset,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// The new session, and the `cgroup.procs` file its first process joins.
    Session {
        session: Box<Session>,
        cgroup_procs: PathBuf,
        /// The file with the session's last denials (`GUARD_WHY`).
        #[serde(default)]
        why_file: Option<PathBuf>,
    },
    /// The new generation is in force; `problem` says why it is not
    /// enforcing when the canary failed on it.
    Reloaded {
        generation: u64,
        policy_sha256: String,
        problem: Option<String>,
    },
    Status(Box<Status>),
    /// The session action was done.
    SessionDone {
        message: String,
    },
    /// The policy file did not read, parse, validate or compile; the
    /// generation in force stays.
    PolicyRefused {
        message: String,
    },
    Error {
        message: String,
    },
}

/// What `guardctl status` shows.
#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    /// True when the canary passed on the generation in force.
    pub enforcing: bool,
    /// Why not, when not enforcing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    pub generation: u64,
    pub policy_file: PathBuf,
    pub policy_sha256: String,
    /// RFC 3339.
    pub policy_loaded: String,
    /// The last reload that was refused, and why; the generation in force
    /// stayed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_rejected: Option<String>,
    pub hooks: Vec<HookStatus>,
    pub profiles: Vec<ProfileStatus>,
    pub sessions: Vec<Session>,
    pub counters: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct HookStatus {
    pub name: String,
    pub attached: bool,
    /// Attached, and (for the hooks the canary exercises) denied the
    /// canary's action on the generation in force.
    pub enforcing: bool,
    /// Why the hook is not attached, e.g. not in this kernel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ProfileStatus {
    pub name: String,
    /// `enforce` or `monitor`.
    pub mode: String,
    /// Default per kind: exec, files, network.
    pub defaults: BTreeMap<String, String>,
    pub rules: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach guardd at {path}: {source} (is guardd running? `--socket` or GUARD_CONTROL_SOCKET name another socket)"
    )]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("guardd sent a malformed response: {0}")]
    Malformed(serde_json::Error),
    #[error("guardd: {0}")]
    Refused(String),
}

/// Checks that the other end of a connection to one of guardd's sockets is
/// a root process: a socket planted at guardd's path by anyone else is not
/// guardd, and would see (or answer) what guardctl sends.
pub fn check_served_by_root(stream: &impl std::os::fd::AsFd, socket: &Path) -> std::io::Result<()> {
    let peer = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)?;
    if peer.uid() != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} is served by uid {} (pid {}), not by root: that is not guardd; refusing to talk to it",
                socket.display(),
                peer.uid(),
                peer.pid()
            ),
        ));
    }
    Ok(())
}

/// Sends one request and returns the response; an `Error` response becomes
/// [`ClientError::Refused`].
pub fn call(socket: &Path, request: &Request) -> Result<Response, ClientError> {
    let io = |source| ClientError::Io {
        path: socket.into(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: socket.into(),
        source,
    })?;
    check_served_by_root(&stream, socket).map_err(io)?;
    let mut line = serde_json::to_vec(request).expect("requests serialize");
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply).map_err(io)?;
    match serde_json::from_str(&reply).map_err(ClientError::Malformed)? {
        Response::Error { message } => Err(ClientError::Refused(message)),
        response => Ok(response),
    }
}
