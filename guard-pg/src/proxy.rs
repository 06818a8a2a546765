//! One connection through the guard: startup and authentication relayed
//! between client and server, then two halves running at once. `upstream`
//! reads the client's messages, judges each statement and forwards the
//! exact bytes (or, for a refused statement, a stand-in that fails in the
//! server's parser); `downstream` relays the server's messages and puts
//! the guard's error where the stand-in's error comes back.

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use guard_api::{
    record::{StatementNote, Verdict},
    statement_guard::GUARD_RULE,
};
use guard_policy::database::StatementEffect;
use guard_sql::{ANY_SETTING, Class, Strings};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, BufReader, BufWriter},
    net::{TcpListener, TcpStream},
};
use tracing::{debug, warn};

use crate::{
    Authority, Client, ConnectionPolicy, StatementRecord,
    protocol::{self, Frontend, Message, ProtocolError, Startup},
    tls::Tls,
};

/// One direction of a connection, over TCP or TLS.
type Reader = BufReader<Box<dyn AsyncRead + Send + Unpin>>;
type Writer = BufWriter<Box<dyn AsyncWrite + Send + Unpin>>;

/// `SSLRequest`: a length of 8 and the code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// SQLSTATE of a statement the policy refuses: insufficient privilege.
pub const REFUSED: &str = "42501";
/// SQLSTATE of a statement the guard cannot parse: syntax error.
const UNPARSABLE: &str = "42601";
/// SQLSTATE of a protocol violation.
const PROTOCOL_VIOLATION: &str = "08P01";
/// SQLSTATE of a feature the guard does not pass through.
const NOT_SUPPORTED: &str = "0A000";

/// Settings that change how the server reads a statement's text: the
/// guard reads it the same way only while they keep the value they had
/// when the connection started.
const READING_SETTINGS: [&str; 2] = ["client_encoding", "standard_conforming_strings"];

/// Accepts connections on `listener` and guards each, with `server` as
/// the PostgreSQL server (`host:port`), and `tls` on either leg.
pub async fn serve(
    listener: TcpListener,
    server: String,
    tls: Tls,
    authority: Arc<dyn Authority>,
) -> std::io::Result<()> {
    let server: Arc<str> = server.into();
    let tls = Arc::new(tls);
    loop {
        let (stream, peer) = listener.accept().await?;
        let (server, tls, authority) = (server.clone(), tls.clone(), authority.clone());
        tokio::spawn(async move {
            if let Err(e) = connection(stream, peer, &server, &tls, authority).await {
                debug!(%peer, "connection ended: {e}");
            }
        });
    }
}

/// An error the guard tells the client: its message starts with `guard: `,
/// so that no one takes it for the server's.
fn guard_error(severity: &str, code: &str, message: &str, detail: Option<&str>) -> Message {
    protocol::error_response(severity, code, &format!("guard: {message}"), detail)
}

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
enum Ended {
    /// A message that breaks the protocol (`08P01`), or the connection lost.
    #[error("{0}")]
    Protocol(#[from] ProtocolError),
    /// Refused by the guard, with the SQLSTATE the client gets.
    #[error("{message}")]
    Refused { code: &'static str, message: String },
}

impl Ended {
    fn refused(code: &'static str, message: impl Into<String>) -> Self {
        Ended::Refused {
            code,
            message: message.into(),
        }
    }

    /// The `FATAL` error that tells the client why: the connection's last
    /// message.
    fn to_client(&self) -> Message {
        let (code, message) = match self {
            Ended::Protocol(e) => (PROTOCOL_VIOLATION, e.to_string()),
            Ended::Refused { code, message } => (*code, message.clone()),
        };
        guard_error("FATAL", code, &message, None)
    }
}

impl From<std::io::Error> for Ended {
    fn from(e: std::io::Error) -> Self {
        Ended::Protocol(e.into())
    }
}

/// Tells the client why its connection ends, and returns the reason.
async fn fatal(writer: &mut (impl AsyncWrite + Unpin), ended: Ended) -> Ended {
    let _ = writer.write_all(&ended.to_client().bytes).await;
    let _ = writer.flush().await;
    ended
}

/// The two halves of a stream, buffered.
fn buffered(
    read: impl AsyncRead + Send + Unpin + 'static,
    write: impl AsyncWrite + Send + Unpin + 'static,
) -> (Reader, Writer) {
    (
        BufReader::new(Box::new(read) as Box<dyn AsyncRead + Send + Unpin>),
        BufWriter::new(Box::new(write) as Box<dyn AsyncWrite + Send + Unpin>),
    )
}

/// A TLS stream's two buffered halves.
fn halves<S: AsyncRead + AsyncWrite + Send + Unpin + 'static>(stream: S) -> (Reader, Writer) {
    let (read, write) = tokio::io::split(stream);
    buffered(read, write)
}

/// A TCP stream's two buffered halves (without `split`'s lock).
fn tcp_halves(stream: TcpStream) -> (Reader, Writer) {
    let (read, write) = stream.into_split();
    buffered(read, write)
}

/// The client's startup: its TLS request answered (and TLS begun, when the
/// listener has a certificate), then its startup packet. `None` when it
/// only cancelled a query, or left.
async fn client_startup(
    mut client: TcpStream,
    server_name: &str,
    tls: &Tls,
) -> Result<Option<(Reader, Writer, Vec<(String, String)>, Vec<u8>)>, Ended> {
    client.set_nodelay(true)?;
    // Startup packets are read exactly, never ahead: bytes a client sends
    // after its TLS request belong to the TLS handshake, and are never
    // taken for plain text.
    loop {
        match (Startup::read(&mut client).await, &tls.clients) {
            (Ok(Startup::Ssl), Some(acceptor)) => {
                client.write_all(b"S").await?;
                let mut stream = acceptor.accept(client).await?;
                return match Startup::read(&mut stream).await {
                    Ok(Startup::Start { params, raw }) => {
                        let (read, write) = halves(stream);
                        Ok(Some((read, write, params, raw)))
                    }
                    Ok(_) => {
                        let why = "only a startup packet may follow the TLS handshake";
                        let ended = Ended::refused(PROTOCOL_VIOLATION, why);
                        Err(fatal(&mut stream, ended).await)
                    }
                    Err(ProtocolError::Closed) => Ok(None),
                    Err(e) => Err(fatal(&mut stream, e.into()).await),
                };
            }
            // The client may go on in plain text, or give up.
            (Ok(Startup::Ssl | Startup::GssEnc), _) => client.write_all(b"N").await?,
            (Ok(Startup::Cancel(packet)), _) => {
                // The key is the server's own, relayed at startup.
                TcpStream::connect(server_name)
                    .await?
                    .write_all(&packet)
                    .await?;
                return Ok(None);
            }
            (Ok(Startup::Start { .. }), _) if tls.clients_required => {
                let why = "the statement guard requires TLS for this database: connect with sslmode=require (or stronger)";
                return Err(fatal(&mut client, Ended::refused("28000", why)).await);
            }
            (Ok(Startup::Start { params, raw }), _) => {
                let (read, write) = tcp_halves(client);
                return Ok(Some((read, write, params, raw)));
            }
            (Err(ProtocolError::Closed), _) => return Ok(None),
            (Err(e), _) => return Err(fatal(&mut client, e.into()).await),
        }
    }
}

/// A connection to the server, in TLS when the policy says so.
async fn connect_server(server_name: &str, tls: &Tls) -> Result<(Reader, Writer), String> {
    let mut server = TcpStream::connect(server_name)
        .await
        .map_err(|e| format!("cannot reach the database server {server_name}: {e}"))?;
    server.set_nodelay(true).map_err(|e| e.to_string())?;
    let Some((connector, name)) = &tls.server else {
        return Ok(tcp_halves(server));
    };
    let mut answer = [0u8; 1];
    server
        .write_all(&SSL_REQUEST)
        .await
        .and(server.read_exact(&mut answer).await.map(drop))
        .map_err(|e| format!("the database server {server_name}: {e}"))?;
    if answer[0] != b'S' {
        return Err(format!(
            "the database server {server_name} does not offer TLS, which the policy requires"
        ));
    }
    let stream = connector
        .connect(name.clone(), server)
        .await
        .map_err(|e| format!("TLS to the database server {server_name}: {e}"))?;
    Ok(halves(stream))
}

async fn connection(
    client: TcpStream,
    peer: SocketAddr,
    server_name: &str,
    tls: &Tls,
    authority: Arc<dyn Authority>,
) -> Result<(), Ended> {
    let local = client.local_addr()?;
    let Some((mut client_read, mut client_write, params, startup)) =
        client_startup(client, server_name, tls).await?
    else {
        return Ok(());
    };
    let param = |name: &str| {
        params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    if param("replication").is_some_and(|v| !matches!(v, "false" | "off" | "no" | "0")) {
        let why = "replication connections are not allowed through the statement guard";
        return Err(fatal(&mut client_write, Ended::refused(REFUSED, why)).await);
    }
    let Some(user) = param("user") else {
        let why = "the startup packet names no user";
        return Err(fatal(&mut client_write, Ended::refused(PROTOCOL_VIOLATION, why)).await);
    };
    let client = Client {
        peer,
        local,
        user: user.to_string(),
        dbname: param("database").unwrap_or(user).to_string(),
    };
    let policy = match authority.connection(&client).await {
        Ok(policy) => policy,
        Err(why) => return Err(fatal(&mut client_write, Ended::refused("28000", why)).await),
    };
    let _closed = Closed {
        authority: authority.clone(),
        connection: policy.connection,
    };

    let (mut server_read, mut server_write) = match connect_server(server_name, tls).await {
        Ok(halves) => halves,
        Err(why) => return Err(fatal(&mut client_write, Ended::refused("08001", why)).await),
    };
    server_write.write_all(&startup).await?;
    server_write.flush().await?;
    let Some(reading) = authenticate(
        &mut client_read,
        &mut client_write,
        &mut server_read,
        &mut server_write,
    )
    .await?
    else {
        return Ok(());
    };
    // The guard reads statements as UTF-8 (and refuses text that is not).
    // The server reads them the same way in UTF8, and byte for byte in
    // SQL_ASCII (what psql asks for in the C locale). Other encodings are
    // converted first; some have multibyte characters whose second byte is
    // a quote or a backslash, so the server would read them differently.
    if !matches!(
        reading.get("client_encoding").map(String::as_str),
        Some("UTF8" | "SQL_ASCII")
    ) {
        let why =
            "the statement guard reads statements as UTF-8; connect with client_encoding UTF8";
        return Err(fatal(&mut client_write, Ended::refused(NOT_SUPPORTED, why)).await);
    }
    let strings = match reading
        .get("standard_conforming_strings")
        .map(String::as_str)
    {
        Some("off") => Strings::BackslashEscapes,
        _ => Strings::Standard,
    };

    let shared = Arc::new(Mutex::new(Shared::default()));
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).map_err(|e| ProtocolError::Io(e.to_string()))?;
    let judge = Judge {
        policy,
        client,
        server: server_name.into(),
        authority,
        strings,
        prepared: HashMap::new(),
    };
    let up = Upstream {
        judge,
        shared: shared.clone(),
        nonce: hex::encode(nonce),
        stand_ins: 0,
        units: 0,
        discarding: false,
    };
    let (up, down) = tokio::join!(
        up.run(client_read, server_write),
        downstream(server_read, client_write, shared, reading)
    );
    up.and(down)
}

/// Tells the authority when a connection it decided ends, however it
/// ends.
struct Closed {
    authority: Arc<dyn Authority>,
    connection: u64,
}

impl Drop for Closed {
    fn drop(&mut self) {
        self.authority.closed(self.connection);
    }
}

/// Relays authentication until the server is ready for queries; returns
/// the server's settings the guard must know, or `None` when the server
/// refused the login (its error relayed).
async fn authenticate(
    client_read: &mut Reader,
    client_write: &mut Writer,
    server_read: &mut Reader,
    server_write: &mut Writer,
) -> Result<Option<HashMap<String, String>>, Ended> {
    let mut settings = HashMap::new();
    loop {
        let message = Message::read(server_read)
            .await?
            .ok_or(ProtocolError::Closed)?;
        match message.tag() {
            b'R' => {
                let code = message
                    .body()
                    .get(..4)
                    .map(|c| i32::from_be_bytes(c.try_into().expect("4 bytes")));
                // Ok, cleartext, MD5, SASL start, continue and final.
                let Some(code @ (0 | 3 | 5 | 10 | 11 | 12)) = code else {
                    let why = format!(
                        "the server asks for an authentication method the guard does not relay ({code:?}); use scram-sha-256, md5, password or trust"
                    );
                    return Err(fatal(client_write, Ended::refused(NOT_SUPPORTED, why)).await);
                };
                let message = if code == 10 {
                    match without_channel_binding(&message) {
                        Some(message) => message,
                        None => {
                            let why = "the server offers only SCRAM with channel binding, which cannot pass through the guard (it ends each leg's TLS)";
                            return Err(
                                fatal(client_write, Ended::refused(NOT_SUPPORTED, why)).await
                            );
                        }
                    }
                } else {
                    message
                };
                client_write.write_all(&message.bytes).await?;
                client_write.flush().await?;
                if matches!(code, 3 | 5 | 10 | 11) {
                    let reply = Message::read(client_read)
                        .await?
                        .ok_or(ProtocolError::Closed)?;
                    if reply.tag() != b'p' {
                        let why = "expected a password message during authentication";
                        return Err(
                            fatal(client_write, Ended::refused(PROTOCOL_VIOLATION, why)).await
                        );
                    }
                    server_write.write_all(&reply.bytes).await?;
                    server_write.flush().await?;
                }
            }
            b'E' => {
                client_write.write_all(&message.bytes).await?;
                client_write.flush().await?;
                return Ok(None);
            }
            b'S' => {
                if let Some((name, value)) = protocol::parameter_status(message.body()) {
                    settings.insert(name, value);
                }
                client_write.write_all(&message.bytes).await?;
            }
            b'K' | b'N' | b'v' => client_write.write_all(&message.bytes).await?,
            b'Z' => {
                client_write.write_all(&message.bytes).await?;
                client_write.flush().await?;
                return Ok(Some(settings));
            }
            other => {
                let why = format!(
                    "unexpected message {:?} from the server during startup",
                    other as char
                );
                return Err(fatal(client_write, Ended::refused(PROTOCOL_VIOLATION, why)).await);
            }
        }
    }
}

/// The server's list of SASL mechanisms (`AuthenticationSASL`) without
/// those with channel binding (`-PLUS`): the binding would be to the
/// guard's TLS, not the client's, and fail. `None` when none is left.
fn without_channel_binding(message: &Message) -> Option<Message> {
    let list = message.body().get(4..)?;
    let kept: Vec<&[u8]> = list
        .split(|&b| b == 0)
        .filter(|m| !m.is_empty() && !m.ends_with(b"-PLUS"))
        .collect();
    if kept.is_empty() {
        return None;
    }
    let mut body = 10i32.to_be_bytes().to_vec();
    for mechanism in kept {
        body.extend_from_slice(mechanism);
        body.push(0);
    }
    body.push(0);
    Some(Message::new(b'R', &body))
}

/// What the two halves share.
#[derive(Default)]
struct Shared {
    /// Stand-ins sent for refused statements, oldest first.
    stand_ins: VecDeque<StandIn>,
    /// An error for the client that ends the connection, set by the half
    /// that ends it and sent by `downstream` last.
    fatal: Option<Message>,
}

/// A refused statement's stand-in: the server's error naming `token` is
/// replaced by `error`.
struct StandIn {
    token: String,
    error: Message,
    /// The stand-in's unit: the number of `ReadyForQuery` messages the
    /// server sends before the one that ends it.
    unit: u64,
}

/// Why a statement is refused.
#[derive(Clone)]
struct Refusal {
    code: &'static str,
    message: String,
    detail: Option<String>,
}

/// What a statement, or a prepared one, does: its classes and tables.
#[derive(Clone, Default)]
struct Judged {
    classes: BTreeSet<Class>,
    objects: BTreeSet<String>,
}

/// Judges statements for one connection and records them.
struct Judge {
    policy: ConnectionPolicy,
    client: Client,
    /// The server's `host:port`.
    server: String,
    authority: Arc<dyn Authority>,
    strings: Strings,
    /// Prepared statements by name (protocol-level and `PREPARE` share one
    /// namespace), for `EXECUTE name`.
    prepared: HashMap<String, Judged>,
}

impl Judge {
    /// Judges every statement of `sql` and records each; `Err` when one is
    /// refused (then none of them runs).
    async fn judge(&mut self, sql: &str) -> Result<Judged, Refusal> {
        let classified = crate::cache::classify(sql, self.strings);
        let statements = match classified.as_ref() {
            Ok(statements) => statements,
            Err(e) => {
                let refusal = Refusal {
                    code: UNPARSABLE,
                    message: e.to_string(),
                    detail: None,
                };
                let outcome = Outcome::refused(Some(GUARD_RULE.into()), refusal.clone());
                self.record(None, Verdict::Deny, Some(refusal.message.clone()), &outcome);
                return Err(refusal);
            }
        };
        let mut outcomes = Vec::with_capacity(statements.len());
        let mut all = Judged::default();
        for statement in statements {
            let mut judged = Judged {
                classes: statement.classes.clone(),
                objects: statement.objects.clone(),
            };
            for name in &statement.executes {
                // An unknown name fails in the server.
                if let Some(prepared) = self.prepared.get(name) {
                    judged.classes.extend(&prepared.classes);
                    judged.objects.extend(prepared.objects.iter().cloned());
                }
            }
            let outcome = self.outcome(statement, &judged);
            // A later statement of the same message may execute it.
            if let (Some(name), None) = (&statement.prepares, &outcome.refusal) {
                self.prepared.insert(name.clone(), judged.clone());
            }
            all.classes.extend(&judged.classes);
            all.objects.extend(judged.objects.iter().cloned());
            outcomes.push((statement, judged, outcome));
        }
        // A statement refused by an approvable rule runs if a human
        // approved it, when it is the message's only refused statement (an
        // approval is not used up by a statement that does not run).
        let refusals: Vec<usize> = (0..outcomes.len())
            .filter(|&i| outcomes[i].2.refusal.is_some())
            .collect();
        if let [only] = refusals[..]
            && outcomes[only].2.approvable
        {
            let fingerprint = &outcomes[only].0.fingerprint;
            if let Some(ticket) = self
                .authority
                .approval(self.policy.connection, fingerprint)
                .await
            {
                let (statement, judged, outcome) = &mut outcomes[only];
                outcome.approved(ticket);
                if let Some(name) = &statement.prepares {
                    self.prepared.insert(name.clone(), judged.clone());
                }
            }
        }
        let refused = outcomes.iter().position(|(_, _, o)| o.refusal.is_some());
        for (statement, judged, outcome) in &outcomes {
            let (verdict, reason) = match (refused, &outcome.refusal) {
                (_, Some(refusal)) => (Verdict::Deny, Some(refusal.message.clone())),
                (Some(_), None) => (
                    Verdict::Deny,
                    Some("not run: another statement of the same message was refused".into()),
                ),
                (None, None) => (outcome.verdict, None),
            };
            self.record(Some((statement, judged)), verdict, reason, outcome);
        }
        match refused {
            Some(i) => Err(outcomes.swap_remove(i).2.refusal.expect("refused")),
            None => Ok(all),
        }
    }

    /// One statement's verdict under the policy.
    fn outcome(&self, statement: &guard_sql::Statement, judged: &Judged) -> Outcome {
        if let Some(setting) = statement
            .settings
            .iter()
            .find(|s| READING_SETTINGS.contains(&s.as_str()) || s.as_str() == ANY_SETTING)
        {
            return Outcome::refused(
                Some(GUARD_RULE.into()),
                Refusal {
                    code: REFUSED,
                    message: format!(
                        "changing `{setting}` is not allowed: the guard must read statements as the server does"
                    ),
                    detail: None,
                },
            );
        }
        let rules = &self.policy.rules;
        let judgement = rules.judge(&judged.classes, &judged.objects);
        let rule = judgement.rule.map(|r| r.id.clone());
        let monitored = judgement.effect == StatementEffect::Monitor;
        let allowed = |verdict| Outcome {
            verdict,
            rule: rule.clone(),
            monitored,
            refusal: None,
            approvable: false,
            ticket: None,
        };
        if judgement.effect != StatementEffect::Deny {
            return allowed(Verdict::Allow);
        }
        if !self.policy.enforce {
            return allowed(Verdict::WouldDeny);
        }
        let approvable = judgement.rule.is_some_and(|r| r.approvable);
        let classes: Vec<_> = judged.classes.iter().map(|c| c.name()).collect();
        let objects: Vec<_> = judged.objects.iter().map(String::as_str).collect();
        let message = match judgement.rule.and_then(|r| r.message.as_deref()) {
            Some(message) => message.to_string(),
            None => "the policy does not allow this statement".to_string(),
        };
        let by = match &rule {
            Some(id) => format!("rule `{id}`"),
            None => "the default".to_string(),
        };
        let mut detail = format!(
            "Refused by {by} of profile `{}` for database `{}`; the statement's classes: {}; its tables: {}.",
            self.policy.profile,
            rules.database,
            classes.join(", "),
            if objects.is_empty() {
                "none".to_string()
            } else {
                objects.join(", ")
            },
        );
        if approvable {
            detail.push_str(
                " A human may approve this statement for your session: `guardctl tickets` lists the ticket, `guardctl approve ID --once` approves it; then send it again.",
            );
        }
        Outcome {
            monitored,
            approvable,
            ..Outcome::refused(
                rule,
                Refusal {
                    code: REFUSED,
                    message,
                    detail: Some(detail),
                },
            )
        }
    }

    fn record(
        &self,
        statement: Option<(&guard_sql::Statement, &Judged)>,
        verdict: Verdict,
        reason: Option<String>,
        outcome: &Outcome,
    ) {
        let mut note = StatementNote {
            database: self.policy.rules.database.clone(),
            server: self.server.clone(),
            dbname: self.client.dbname.clone(),
            user: self.client.user.clone(),
            client: self.client.peer.to_string(),
            monitored: outcome.monitored,
            ..StatementNote::default()
        };
        if let Some((statement, judged)) = statement {
            note.classes = judged.classes.iter().map(|c| c.name().into()).collect();
            note.classes.sort();
            note.objects = judged.objects.iter().cloned().collect();
            note.normalized = statement.normalized.clone();
            note.fingerprint = statement.fingerprint.clone();
        }
        self.authority.record(StatementRecord {
            connection: self.policy.connection,
            profile: self.policy.profile.clone(),
            verdict,
            rule: outcome.rule.clone(),
            reason,
            approvable: outcome.approvable && outcome.refusal.is_some(),
            ticket: outcome.ticket.clone(),
            statement: note,
        });
    }
}

struct Outcome {
    verdict: Verdict,
    rule: Option<String>,
    monitored: bool,
    refusal: Option<Refusal>,
    /// Refused by an `approvable` rule.
    approvable: bool,
    /// Allowed by this approved ticket.
    ticket: Option<String>,
}

impl Outcome {
    fn refused(rule: Option<String>, refusal: Refusal) -> Outcome {
        Outcome {
            verdict: Verdict::Deny,
            rule,
            monitored: false,
            refusal: Some(refusal),
            approvable: false,
            ticket: None,
        }
    }

    /// A human approved the refused statement: it runs, with `ticket`.
    fn approved(&mut self, ticket: String) {
        self.verdict = Verdict::Allow;
        self.refusal = None;
        self.ticket = Some(ticket);
    }
}

/// The client-to-server half.
struct Upstream {
    judge: Judge,
    shared: Arc<Mutex<Shared>>,
    /// Makes stand-in tokens unguessable, so that no client can make the
    /// server produce an error the guard would take for a stand-in's.
    nonce: String,
    stand_ins: u64,
    /// Messages sent that the server answers with `ReadyForQuery` (`Query`,
    /// `Sync`, `FunctionCall`).
    units: u64,
    /// After a refused `Parse`: the server skips to the next `Sync` once
    /// the stand-in fails, and so does the guard.
    discarding: bool,
}

impl Upstream {
    async fn run(mut self, mut client: Reader, mut server: Writer) -> Result<(), Ended> {
        let result = self.relay(&mut client, &mut server).await;
        if let Err(e) = &result {
            let error = e.to_client();
            self.shared.lock().expect("lock").fatal.get_or_insert(error);
        }
        // The server ends the session; `downstream` then sees it close.
        let _ = server.write_all(&Message::new(b'X', b"").bytes).await;
        let _ = server.shutdown().await;
        result
    }

    async fn relay(&mut self, client: &mut Reader, server: &mut Writer) -> Result<(), Ended> {
        while let Some(message) = Message::read(client).await? {
            let forward = match Frontend::decode(&message)? {
                Frontend::Query(sql) => {
                    let unit = self.next_unit();
                    match self.judge.judge(sql).await {
                        Ok(_) => Some(message),
                        Err(refusal) => Some(self.stand_in(unit, refusal, false)),
                    }
                }
                Frontend::Parse { .. } if self.discarding => None,
                Frontend::Parse { name, query } => match self.judge.judge(query).await {
                    Ok(judged) => {
                        self.judge.prepared.insert(name.to_string(), judged);
                        Some(message)
                    }
                    Err(refusal) => {
                        self.discarding = true;
                        Some(self.stand_in(self.units, refusal, true))
                    }
                },
                Frontend::Sync => {
                    self.discarding = false;
                    self.next_unit();
                    Some(message)
                }
                Frontend::FunctionCall => {
                    let unit = self.next_unit();
                    let refusal = Refusal {
                        code: NOT_SUPPORTED,
                        message: "the fast-path function call interface is not allowed through the guard; call functions with SELECT".into(),
                        detail: None,
                    };
                    Some(self.stand_in(unit, refusal, false))
                }
                Frontend::Password => {
                    let why = "a password message after authentication";
                    return Err(Ended::refused(PROTOCOL_VIOLATION, why));
                }
                Frontend::Terminate => return Ok(()),
                // The server ignores everything up to `Sync` but a flush.
                Frontend::Flush => Some(message),
                _ if self.discarding => None,
                _ => Some(message),
            };
            if let Some(message) = forward {
                server.write_all(&message.bytes).await?;
            }
            if client.buffer().is_empty() {
                server.flush().await?;
            }
        }
        Ok(())
    }

    fn next_unit(&mut self) -> u64 {
        self.units += 1;
        self.units - 1
    }

    /// The message sent in place of a refused statement: one the server's
    /// parser fails on, naming a token only this guard knows.
    fn stand_in(&mut self, unit: u64, refusal: Refusal, extended: bool) -> Message {
        let token = format!("guard_refused_{}_{}", self.nonce, self.stand_ins);
        self.stand_ins += 1;
        let error = guard_error(
            "ERROR",
            refusal.code,
            &refusal.message,
            refusal.detail.as_deref(),
        );
        self.shared
            .lock()
            .expect("lock")
            .stand_ins
            .push_back(StandIn {
                token: token.clone(),
                error,
                unit,
            });
        if extended {
            protocol::parse(&token, &token)
        } else {
            protocol::query(&token)
        }
    }
}

/// The server-to-client half.
async fn downstream(
    mut server: Reader,
    mut client: Writer,
    shared: Arc<Mutex<Shared>>,
    reading: HashMap<String, String>,
) -> Result<(), Ended> {
    let mut ready = 0u64;
    let result = async {
        while let Some(message) = Message::read(&mut server).await? {
            let mut out = message;
            match out.tag() {
                b'E' => {
                    let fields = protocol::fields(out.body());
                    let text = fields.iter().find(|(code, _)| *code == b'M').map(|(_, m)| m.as_str()).unwrap_or("");
                    let mut shared = shared.lock().expect("lock");
                    if let Some(i) = shared.stand_ins.iter().position(|s| text.contains(&s.token)) {
                        out = shared.stand_ins.remove(i).expect("present").error;
                    }
                }
                b'Z' => {
                    ready += 1;
                    shared.lock().expect("lock").stand_ins.retain(|s| s.unit >= ready);
                }
                b'S' => {
                    if let Some((name, value)) = protocol::parameter_status(out.body())
                        && READING_SETTINGS.contains(&name.as_str())
                        && reading.get(&name) != Some(&value)
                    {
                        warn!(%name, %value, "a setting the guard reads statements by changed; ending the connection");
                        return Err(Ended::refused(REFUSED, format!(
                            "`{name}` changed to `{value}`: the guard can no longer read statements as the server does"
                        )));
                    }
                }
                b'W' => {
                    let why = "the server started a COPY BOTH, which the guard does not relay";
                    return Err(Ended::refused(NOT_SUPPORTED, why));
                }
                _ => {}
            }
            client.write_all(&out.bytes).await?;
            if server.buffer().is_empty() {
                client.flush().await?;
            }
        }
        Ok(())
    }
    .await;
    let ended = result.as_ref().err().map(Ended::to_client);
    if let Some(error) = ended.or_else(|| shared.lock().expect("lock").fatal.take()) {
        let _ = client.write_all(&error.bytes).await;
    }
    let _ = client.flush().await;
    let _ = client.shutdown().await;
    result
}
