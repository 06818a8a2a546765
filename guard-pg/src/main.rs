//! `guard-pg`: Guard's statement guard as guardd runs it, an unprivileged
//! process of its own (it parses hostile input).
//!
//! guardd starts it with a control socket on fd 3 (`guard_api::
//! statement_guard`): guardd sends the policy, and the guard listens on
//! each database's `listen` address; for each connection it asks guardd
//! which profile decides (guardd knows the client's session from the
//! kernel), and it sends guardd every statement's record, which guardd
//! seals into the host's chain. When guardd goes away, the guard stops:
//! no connection is served without guardd to decide and record.

use std::{
    collections::{BTreeMap, HashMap},
    os::fd::FromRawFd as _,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use clap::Parser;
use guard_api::{
    exit,
    logs::{self, LogFormat},
    statement_guard::{CONTROL_FD, FromGuard, ToGuard},
};
use guard_pg::{Approval, Authority, Client, ConnectionPolicy, Decision, Spent, StatementRecord};
use guard_policy::{
    database::{ClientTls, Database, ServerTls},
    policy::Policy,
};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, BufWriter},
    net::{TcpListener, UnixStream},
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tracing::{error, info, warn};

/// Guard's statement guard for PostgreSQL. guardd starts it (as an
/// unprivileged user) when the policy names databases; it is not meant to
/// be run by hand.
///
/// It listens on each database's `listen` address, judges every statement
/// with PostgreSQL's own parser and the policy's statement rules before the
/// server sees it, and sends each statement's record to guardd. See
/// docs/databases.md.
#[derive(Parser)]
#[command(version, max_term_width = 100)]
struct Args {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

fn main() {
    let args = Args::parse();
    logs::init(args.log_format);
    let control = match control_socket() {
        Ok(control) => control,
        Err(e) => {
            error!("{e}");
            std::process::exit(exit::USAGE);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    if let Err(e) = runtime.block_on(run(control)) {
        error!("{e}");
        std::process::exit(exit::FAILURE);
    }
}

/// The control socket guardd passed on fd 3.
fn control_socket() -> Result<std::os::unix::net::UnixStream, String> {
    // SAFETY: fstat writes into `stat` only.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    let is_socket = unsafe { libc::fstat(CONTROL_FD, &mut stat) } == 0
        && stat.st_mode & libc::S_IFMT == libc::S_IFSOCK;
    if !is_socket {
        return Err(format!(
            "no control socket on fd {CONTROL_FD}: guard-pg is started by guardd, for a policy that names databases (docs/databases.md)"
        ));
    }
    // SAFETY: fd 3 is a socket this process owns from its start.
    let socket = unsafe { std::os::unix::net::UnixStream::from_raw_fd(CONTROL_FD) };
    socket
        .set_nonblocking(true)
        .map_err(|e| format!("the control socket: {e}"))?;
    Ok(socket)
}

/// A connection's profile (or why it is refused), and its Guard session.
type ProfileAnswer = (Result<String, String>, Option<String>);

/// What the listeners share: the policy in force, the line to guardd, and
/// the questions waiting for guardd's answer.
struct Shared {
    policy: RwLock<Arc<Policy>>,
    to_guardd: mpsc::UnboundedSender<FromGuard>,
    /// New connections, by id: guardd's answer.
    profiles: Mutex<HashMap<u64, oneshot::Sender<ProfileAnswer>>>,
    /// What each Guard session has spent of its statement budgets, until
    /// guardd says it ended.
    spent: Mutex<HashMap<String, Arc<Spent>>>,
    /// Approval questions, by query: the ticket.
    approvals: Mutex<HashMap<u64, oneshot::Sender<Option<String>>>>,
    /// Numbers connections and approval questions.
    next_id: AtomicU64,
}

impl Shared {
    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// The authority of one database's listener.
struct Listener {
    database: String,
    shared: Arc<Shared>,
}

impl Authority for Listener {
    fn connection(&self, client: &Client) -> Decision {
        let shared = self.shared.clone();
        let database = self.database.clone();
        let id = shared.next_id();
        let (answer, answered) = oneshot::channel();
        lock(&shared.profiles).insert(id, answer);
        let asked = shared.to_guardd.send(FromGuard::Connection {
            id,
            database: database.clone(),
            client: client.peer,
            local: client.local,
        });
        Box::pin(async move {
            if asked.is_err() {
                return Err("the statement guard lost guardd".into());
            }
            let (profile, session) = answered
                .await
                .map_err(|_| "the statement guard lost guardd".to_string())?;
            let policy = shared
                .policy
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let mut decided = ConnectionPolicy::of(&policy, id, &profile?, &database)?;
            if let Some(session) = session {
                decided.spent = lock(&shared.spent).entry(session).or_default().clone();
            }
            Ok(decided)
        })
    }

    fn approval(&self, connection: u64, fingerprint: &str) -> Approval {
        let shared = self.shared.clone();
        let query = shared.next_id();
        let (answer, answered) = oneshot::channel();
        lock(&shared.approvals).insert(query, answer);
        let asked = shared.to_guardd.send(FromGuard::Approval {
            id: connection,
            query,
            fingerprint: fingerprint.to_string(),
        });
        Box::pin(async move {
            // Without guardd there is no approval: the refusal stands.
            if asked.is_err() {
                return None;
            }
            answered.await.ok().flatten()
        })
    }

    fn record(&self, record: StatementRecord) {
        let _ = self.shared.to_guardd.send(FromGuard::Statement {
            id: record.connection,
            verdict: record.verdict,
            rule: record.rule,
            reason: record.reason,
            approvable: record.approvable,
            ticket: record.ticket,
            note: Box::new(record.statement),
        });
    }

    fn closed(&self, connection: u64) {
        let _ = self
            .shared
            .to_guardd
            .send(FromGuard::Closed { id: connection });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn run(control: std::os::unix::net::UnixStream) -> anyhow::Result<()> {
    let (read, write) = UnixStream::from_std(control)?.into_split();
    let (to_guardd, mut outgoing) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        policy: RwLock::new(Arc::new(Policy {
            profiles: vec![],
            agents: vec![],
            databases: vec![],
        })),
        to_guardd,
        profiles: Mutex::new(HashMap::new()),
        spent: Mutex::new(HashMap::new()),
        approvals: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(1),
    });
    // Records and questions go out in the order they were made.
    let mut writer = tokio::spawn(async move {
        let mut write = BufWriter::new(write);
        while let Some(message) = outgoing.recv().await {
            let mut line = serde_json::to_vec(&message).expect("messages serialize");
            line.push(b'\n');
            write.write_all(&line).await?;
            if outgoing.is_empty() {
                write.flush().await?;
            }
        }
        anyhow::Ok(())
    });
    let mut listeners = Listeners::default();
    let mut lines = BufReader::new(read).lines();
    loop {
        tokio::select! {
            line = lines.next_line() => {
                let Some(line) = line? else {
                    info!("guardd closed the control socket; stopping");
                    return Ok(());
                };
                match serde_json::from_str(&line)? {
                    ToGuard::Policy { text, files } => {
                        let policy = guard_policy::policy::parse(&text)
                            .map_err(|e| anyhow::anyhow!("the policy from guardd: {e}"))?;
                        let policy = Arc::new(policy);
                        *shared.policy.write().unwrap_or_else(|e| e.into_inner()) = policy.clone();
                        listeners.update(&policy, &files, &shared).await;
                    }
                    ToGuard::Profile { id, answer, session } => {
                        if let Some(waiting) = lock(&shared.profiles).remove(&id) {
                            let _ = waiting.send((answer, session));
                        }
                    }
                    ToGuard::Sessions { live } => {
                        let live: std::collections::HashSet<String> = live.into_iter().collect();
                        lock(&shared.spent).retain(|session, _| live.contains(session));
                    }
                    ToGuard::Approval { query, ticket } => {
                        if let Some(waiting) = lock(&shared.approvals).remove(&query) {
                            let _ = waiting.send(ticket);
                        }
                    }
                }
            }
            written = &mut writer => {
                written??;
                anyhow::bail!("the line to guardd closed");
            }
        }
    }
}

/// The listening sockets, one per database of the policy in force.
#[derive(Default)]
struct Listeners {
    /// Database name → what it was started with, and the task accepting.
    serving: HashMap<String, (Served, JoinHandle<()>)>,
}

/// What a listener serves: its database (without where the policy says
/// it) and the contents of its TLS files.
#[derive(PartialEq)]
struct Served {
    listen: std::net::SocketAddr,
    server: String,
    client_tls: Option<ClientTls>,
    server_tls: Option<ServerTls>,
    files: Vec<Option<String>>,
}

impl Served {
    fn of(database: &Database, files: &BTreeMap<String, String>) -> Served {
        Served {
            listen: database.listen,
            server: database.server.clone(),
            client_tls: database.client_tls.clone(),
            server_tls: database.server_tls.clone(),
            files: database
                .files()
                .iter()
                .map(|path| files.get(&path.display().to_string()).cloned())
                .collect(),
        }
    }
}

impl Listeners {
    /// Listens for the databases of `policy`: new ones start, changed ones
    /// restart, removed ones stop accepting (their connections go on).
    async fn update(
        &mut self,
        policy: &Policy,
        files: &BTreeMap<String, String>,
        shared: &Arc<Shared>,
    ) {
        let mut stopped = Vec::new();
        self.serving.retain(|name, (served, task)| {
            let same = policy
                .databases
                .iter()
                .any(|d| &d.name == name && Served::of(d, files) == *served);
            if !same {
                task.abort();
                stopped.push(std::mem::replace(task, tokio::spawn(async {})));
            }
            same
        });
        // Their sockets close before the same addresses are bound again.
        for task in stopped {
            let _ = task.await;
        }
        // guardd learns the state of every database of each policy.
        for database in &policy.databases {
            let serving = |problem: Option<String>| {
                let _ = shared.to_guardd.send(FromGuard::Serving {
                    database: database.name.clone(),
                    problem,
                });
            };
            if self.serving.contains_key(&database.name) {
                serving(None);
                continue;
            }
            let served = Served::of(database, files);
            let read = |path: &std::path::Path| {
                files
                    .get(&path.display().to_string())
                    .map(|text| text.as_bytes().to_vec())
                    .ok_or_else(|| format!("guardd could not read {}", path.display()))
            };
            let cannot = |problem: String| {
                warn!(database = %database.name, "{problem}");
                serving(Some(problem));
            };
            let tls = guard_pg::tls::for_database(database, read);
            let login = guard_pg::login::for_database(database, read);
            let (tls, login) = match (tls, login) {
                (Ok(tls), Ok(login)) => (tls, login),
                (Err(e), _) | (_, Err(e)) => {
                    cannot(format!("cannot serve it: {e}"));
                    continue;
                }
            };
            let listener = match TcpListener::bind(database.listen).await {
                Ok(listener) => listener,
                Err(e) => {
                    cannot(format!("cannot listen on {}: {e}", database.listen));
                    continue;
                }
            };
            info!(
                database = %database.name,
                listen = %database.listen,
                server = %database.server,
                client_tls = tls.clients.is_some(),
                server_tls = tls.server.is_some(),
                "guarding"
            );
            let authority = Arc::new(Listener {
                database: database.name.clone(),
                shared: shared.clone(),
            });
            let server = database.server.clone();
            let task = tokio::spawn(async move {
                if let Err(e) =
                    guard_pg::proxy::serve(listener, server, tls, login, authority).await
                {
                    error!("accepting connections: {e}");
                }
            });
            self.serving.insert(database.name.clone(), (served, task));
            serving(None);
        }
    }
}
