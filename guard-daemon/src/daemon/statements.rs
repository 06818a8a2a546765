//! guardd's side of the statement guard (`guard-pg`, docs/databases.md):
//! guardd starts it as an unprivileged user while the policy names
//! databases, sends it each policy, tells it the profile of each
//! connection, and seals its statement records into the host's chain.
//!
//! The profile comes from the kernel, never from the client: the client's
//! socket (found by its addresses with sock_diag) names the cgroup of the
//! process that opened it, and so its session. A connection from no
//! session gets the database's `default_profile` (people, services); one
//! from this host whose socket cannot be found is refused.

use std::{
    collections::HashMap,
    net::SocketAddr,
    os::fd::{AsRawFd as _, OwnedFd},
    sync::{Arc, Mutex},
    time::Duration,
};

use guard_api::{
    record::{Action, Record, StatementNote, Verdict},
    session::Session,
    statement_guard::{CONTROL_FD, FromGuard, ToGuard},
};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::unix::{OwnedReadHalf, OwnedWriteHalf},
};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use guard_common::ExceptionKey;

use crate::{generation::Generation, sock_diag};

use super::{
    approvals,
    config::StatementGuardConfig,
    state::{State, lock},
};

/// The longest line the guard may send: a record with a long statement.
const MAX_LINE: u64 = 16 << 20;

/// How long guardd waits before starting a guard that ended: doubled
/// after each start that did not last, up to the longest.
const RESTART_DELAY: Duration = Duration::from_secs(1);
const LONGEST_RESTART_DELAY: Duration = Duration::from_secs(60);

/// Runs the statement guard while the policy names databases, until
/// `shutdown`.
pub async fn run(
    state: Arc<Mutex<State>>,
    config: StatementGuardConfig,
    shutdown: CancellationToken,
) {
    let mut published = lock(&state).published.subscribe();
    let mut delay = RESTART_DELAY;
    loop {
        let wanted = !lock(&state).current().compiled.databases.is_empty();
        if wanted {
            let started = std::time::Instant::now();
            let Err(e) = guard(&state, &config, &shutdown).await else {
                lock(&state).databases.clear();
                return;
            };
            let why = format!("the statement guard is not running ({e:#})");
            for serving in lock(&state).databases.values_mut() {
                *serving = Err(why.clone());
            }
            if started.elapsed() > LONGEST_RESTART_DELAY {
                delay = RESTART_DELAY;
            }
            error!(
                "{why}; its databases refuse connections until it runs again, in {}s",
                delay.as_secs()
            );
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.cancelled() => return,
            }
            delay = (delay * 2).min(LONGEST_RESTART_DELAY);
            continue;
        }
        lock(&state).databases.clear();
        tokio::select! {
            changed = published.changed() => if changed.is_err() { return },
            () = shutdown.cancelled() => return,
        }
    }
}

/// Starts the guard and serves it until `shutdown` (`Ok`) or until it
/// ends (`Err`, with why).
async fn guard(
    state: &Arc<Mutex<State>>,
    config: &StatementGuardConfig,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    // Without sock_diag no connection from this host can be placed.
    let diag = sock_diag::check().map_err(|e| e.to_string());
    if let Err(e) = &diag {
        error!("{e}: the statement guard refuses connections from this host");
    }
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    let mut child = spawn(config, theirs.into())?;
    info!(pid = child.id(), user = %config.user, "statement guard started");
    ours.set_nonblocking(true)?;
    let (read, mut write) = tokio::net::UnixStream::from_std(ours)?.into_split();
    let mut published = lock(state).published.subscribe();
    published.mark_changed();
    let mut sessions_ended = lock(state).sessions_ended.subscribe();
    let mut lines = BufReader::new(read);
    let mut line = Vec::new();
    let mut connections = HashMap::new();
    loop {
        tokio::select! {
            changed = published.changed() => {
                changed?;
                let current = {
                    let mut state = lock(state);
                    let current = state.current().clone();
                    // Until the guard says it serves them.
                    state.databases = current
                        .compiled
                        .databases
                        .iter()
                        .map(|d| (d.name.clone(), Err("the statement guard is starting".into())))
                        .collect();
                    current
                };
                let files = files_for_guard(&current);
                send(&mut write, &ToGuard::Policy { text: current.text.clone(), files }).await?;
            }
            changed = sessions_ended.changed() => {
                changed?;
                let live = lock(state).sessions.live().map(|s| s.id.clone()).collect();
                send(&mut write, &ToGuard::Sessions { live }).await?;
            }
            message = next(&mut lines, &mut line) => {
                let message = message?.ok_or_else(|| anyhow::anyhow!("it closed its control socket"))?;
                if let Some(answer) = handle(state, &diag, &mut connections, message) {
                    send(&mut write, &answer).await?;
                }
            }
            status = child.wait() => anyhow::bail!("it ended ({})", status?),
            () = shutdown.cancelled() => {
                // Its connections end with it: none goes on unrecorded.
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Ok(());
            }
        }
    }
}

/// `config.program` as `config.user`, with `control` as its fd 3, no
/// supplementary groups and no way to gain privileges.
fn spawn(config: &StatementGuardConfig, control: OwnedFd) -> anyhow::Result<tokio::process::Child> {
    let user = nix::unistd::User::from_name(&config.user)?
        .ok_or_else(|| anyhow::anyhow!("no user `{}` (--statement-guard-user)", config.user))?;
    let mut command = tokio::process::Command::new(&config.program);
    command
        .args(["--log-format", config.log_format])
        .uid(user.uid.as_raw())
        .gid(user.gid.as_raw())
        .current_dir("/")
        .env_clear()
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    if let Ok(filter) = std::env::var("GUARD_LOG") {
        command.env("GUARD_LOG", filter);
    }
    let fd = control.as_raw_fd();
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            // dup2 clears close-on-exec on the copy; a socket already on fd
            // 3 keeps its own flag, so clear it.
            if fd == CONTROL_FD {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, CONTROL_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // std drops the supplementary groups when root sets a uid.
    let child = command
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", config.program.display()))?;
    drop(control);
    Ok(child)
}

/// The files the policy's databases name (TLS certificates and keys,
/// passwords), read as root: the guard gets their contents, never the
/// files. One guardd cannot read is left
/// out (the guard then does not serve its database) and logged.
fn files_for_guard(generation: &Generation) -> std::collections::BTreeMap<String, String> {
    let mut files = std::collections::BTreeMap::new();
    for database in &generation.compiled.databases {
        for path in database.files() {
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    files.insert(path.display().to_string(), text);
                }
                Err(e) => error!(
                    database = %database.name,
                    "cannot read {}: {e}; the database is not served",
                    path.display()
                ),
            }
        }
    }
    files
}

async fn send(write: &mut OwnedWriteHalf, message: &ToGuard) -> anyhow::Result<()> {
    let mut line = serde_json::to_vec(message)?;
    line.push(b'\n');
    write.write_all(&line).await?;
    Ok(())
}

/// The guard's next message; `None` when it closed the socket. `line`
/// keeps what was read of a line when a call is cancelled (by `select!`),
/// so that the next call goes on where it stopped.
async fn next(
    lines: &mut BufReader<OwnedReadHalf>,
    line: &mut Vec<u8>,
) -> anyhow::Result<Option<FromGuard>> {
    let room = MAX_LINE.saturating_sub(line.len() as u64);
    let read = (&mut *lines).take(room).read_until(b'\n', line).await?;
    if read == 0 && line.is_empty() {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        anyhow::bail!("it sent a line longer than {MAX_LINE} bytes, or half a line");
    }
    let message = serde_json::from_slice(line);
    line.clear();
    Ok(Some(message?))
}

/// Who opened a connection, as its records say.
struct Connection {
    profile: String,
    agent: String,
    session: Option<Session>,
    /// The outermost session's id (itself, unless a sub-agent's): tickets
    /// are bound to it.
    outermost: Option<String>,
    /// The cgroup whose profile applies, as in kernel records: the
    /// outermost session's, or the agent's (0 for none).
    agent_cgroup: u64,
    /// The cgroup and user of the client's socket, when it is on this host.
    cgroup: u64,
    uid: u32,
    generation: Arc<Generation>,
}

/// Acts on one message of the guard; returns the answer it waits for.
fn handle(
    state: &Mutex<State>,
    diag: &Result<(), String>,
    connections: &mut HashMap<u64, Connection>,
    message: FromGuard,
) -> Option<ToGuard> {
    match message {
        FromGuard::Connection {
            id,
            database,
            client,
            local,
        } => {
            let answer = identify(&mut lock(state), diag, &database, client, local);
            if let Err(why) = &answer {
                info!(%client, %database, "connection refused: {why}");
            }
            let session = answer.as_ref().ok().and_then(|c| c.outermost.clone());
            Some(ToGuard::Profile {
                id,
                answer: answer.map(|connection| {
                    let profile = connection.profile.clone();
                    connections.insert(id, connection);
                    profile
                }),
                session,
            })
        }
        FromGuard::Statement {
            id,
            verdict,
            rule,
            reason,
            approvable,
            ticket,
            note,
        } => {
            let Some(connection) = connections.get(&id) else {
                warn!(
                    id,
                    "a statement record of a connection guardd does not know; dropped"
                );
                return None;
            };
            let mut record = statement_record(connection, verdict, rule, reason, *note);
            let mut state = lock(state);
            if let Some(ticket) = ticket.and_then(|id| state.tickets.get(&id)) {
                record.flags.push("approved".into());
                record.ticket = Some(approvals::note(&ticket, "used"));
            }
            if let (Some(session), Some(outermost)) = (&connection.session, &connection.outermost)
                && verdict == Verdict::Deny
            {
                if approvable {
                    let fingerprint = &record.statement.as_ref().expect("a statement").fingerprint;
                    let key = ExceptionKey::statement(connection.agent_cgroup, fingerprint);
                    record.ticket = state.tickets.open(key, &record, outermost);
                }
                state.why.note(&session.id, &record);
            }
            state.notes.push(record);
            None
        }
        FromGuard::Approval {
            id,
            query,
            fingerprint,
        } => {
            // Only a session's statements can be approved: the ticket is
            // bound to it.
            let ticket = connections
                .get(&id)
                .filter(|c| c.outermost.is_some())
                .and_then(|c| {
                    let key = ExceptionKey::statement(c.agent_cgroup, &fingerprint);
                    lock(state).tickets.use_statement(key).map(|note| note.id)
                });
            Some(ToGuard::Approval { query, ticket })
        }
        FromGuard::Closed { id } => {
            connections.remove(&id);
            None
        }
        FromGuard::Serving { database, problem } => {
            if let Some(problem) = &problem {
                error!(%database, "the statement guard {problem}: the database is not guarded");
            }
            lock(state)
                .databases
                .insert(database, problem.map_or(Ok(()), Err));
            None
        }
    }
}

/// The profile of a connection to `database` from `client` (at the guard's
/// `local` address), from the session of the process that opened it.
fn identify(
    state: &mut State,
    diag: &Result<(), String>,
    database: &str,
    client: SocketAddr,
    local: SocketAddr,
) -> Result<Connection, String> {
    let generation = state.current().clone();
    let compiled = &generation.compiled;
    let entry = compiled
        .databases
        .iter()
        .find(|d| d.name == database)
        .ok_or_else(|| format!("database `{database}` is not in the policy in force"))?;
    let owner = sock_diag::tcp_owner(client, local)
        .map_err(|e| format!("cannot tell which process opened the connection: {e}"))?;
    let mut connection = Connection {
        profile: String::new(),
        agent: String::new(),
        session: None,
        outermost: None,
        agent_cgroup: 0,
        cgroup: owner.map_or(0, |o| o.cgroup),
        uid: owner.map_or(0, |o| o.uid),
        generation: generation.clone(),
    };
    match owner {
        Some(owner) => {
            if let Some(session) = state.sessions.by_cgroup(owner.cgroup).cloned() {
                connection.profile = session.profile.clone();
                connection.agent = session.agent.clone();
                let outermost = state.outermost(session.clone());
                connection.agent_cgroup = outermost.cgroup;
                connection.outermost = Some(outermost.id);
                connection.session = Some(session);
                return Ok(connection);
            }
            let agent = state.agent_cgroups.iter().find(|(name, _)| {
                crate::cgroup::contains(&state.root.agent_path(name), owner.cgroup)
            });
            if let Some((name, id)) = agent {
                let profile = compiled
                    .agents
                    .iter()
                    .find(|(agent, _)| agent == name)
                    .and_then(|(_, index)| compiled.profiles.get(*index as usize))
                    .map(|(profile, _)| profile.clone())
                    .ok_or_else(|| {
                        format!("agent `{name}` has no profile in the policy in force")
                    })?;
                connection.profile = profile;
                connection.agent = name.clone();
                connection.agent_cgroup = *id;
                return Ok(connection);
            }
        }
        // On this host, the socket must be found: a connection whose
        // opener is unknown gets no profile.
        None if is_local(client.ip()) => {
            let why = match diag {
                Err(e) => format!(" ({e})"),
                Ok(()) => String::new(),
            };
            return Err(format!(
                "the statement guard cannot tell which process opened this connection{why}"
            ));
        }
        None => {}
    }
    connection.profile = entry.default_profile.clone().ok_or_else(|| {
        format!(
            "connections from outside Guard's sessions may not use database `{database}` (it names no default_profile)"
        )
    })?;
    Ok(connection)
}

/// A loopback address, or an IPv4 one as an IPv6 socket sees it.
fn is_local(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(v6.is_loopback(), |v4| v4.is_loopback()),
        v4 => v4.is_loopback(),
    }
}

/// The record of one statement, as the host's chain carries it.
fn statement_record(
    connection: &Connection,
    verdict: Verdict,
    rule: Option<String>,
    reason: Option<String>,
    note: StatementNote,
) -> Record {
    Record {
        seq: 0,
        time: guard_api::time::now_rfc3339(),
        hook: "statement_guard".into(),
        action: Action::Statement,
        verdict,
        agent: connection.agent.clone(),
        profile: connection.profile.clone(),
        session: connection.session.as_ref().map(Session::reference),
        generation: connection.generation.number,
        policy_sha256: connection.generation.policy_sha256.clone(),
        agent_cgroup: connection.agent_cgroup,
        cgroup: connection.cgroup,
        pid: 0,
        tid: 0,
        uid: connection.uid,
        comm: String::new(),
        target: format!("{}/{}", note.database, note.dbname),
        file: None,
        protocol: Some("postgresql".into()),
        host: None,
        rule: rule.unwrap_or_else(|| "default".into()),
        message: reason,
        process: None,
        redacted: Vec::new(),
        flags: Vec::new(),
        ticket: None,
        budget: None,
        statement: Some(note),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line the guard sends in two parts, with the read cancelled in
    /// between (as `select!` does when a reload comes first), arrives
    /// whole.
    #[tokio::test]
    async fn a_cancelled_read_loses_nothing() {
        let (ours, mut theirs) = tokio::net::UnixStream::pair().unwrap();
        let (read, _write) = ours.into_split();
        let mut lines = BufReader::new(read);
        let mut line = Vec::new();
        let text = serde_json::to_string(&FromGuard::Closed { id: 7 }).unwrap() + "\n";
        let (first, rest) = text.split_at(5);
        theirs.write_all(first.as_bytes()).await.unwrap();
        let cancelled =
            tokio::time::timeout(Duration::from_millis(50), next(&mut lines, &mut line)).await;
        assert!(cancelled.is_err(), "no whole line yet");
        theirs.write_all(rest.as_bytes()).await.unwrap();
        let message = next(&mut lines, &mut line).await.unwrap();
        assert!(
            matches!(message, Some(FromGuard::Closed { id: 7 })),
            "{message:?}"
        );
        drop(theirs);
        assert!(next(&mut lines, &mut line).await.unwrap().is_none());
    }
}
