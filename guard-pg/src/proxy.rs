//! One connection through the guard: startup and authentication relayed
//! between client and server, then two halves running at once. `upstream`
//! reads the client's messages, judges each statement and forwards the
//! exact bytes (or, for a refused statement, a stand-in that fails in the
//! server's parser); `downstream` relays the server's messages and puts
//! the guard's error where the stand-in's error comes back.
//!
//! With budgets or masking, each statement that returns or changes rows
//! is *watched*: `downstream` counts and masks its rows, and the client's
//! next message waits until it has ended, so that the guard can still undo
//! it (`BEGIN` ... `COMMIT` or `ROLLBACK` of its own around a `Query`
//! outside the client's transaction; a stand-in that fails after it
//! otherwise).

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use guard_api::{
    record::{StatementNote, Verdict},
    statement_guard::GUARD_RULE,
};
use guard_policy::database::{StatementEffect, StatementRules};
use guard_sql::{ANY_SETTING, Class, Strings};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, BufReader, BufWriter},
    net::{TcpListener, TcpStream},
    sync::oneshot,
};
use tracing::{debug, warn};

use crate::{
    Authority, Client, ConnectionPolicy, Spent, StatementRecord,
    budget::{self, Counts, Overrun},
    login::{Authenticating, Login},
    mask::{self, Catalog, Column},
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

/// Startup parameters a client may send (compared in lower case). The
/// server takes any other as a setting, set before the first statement
/// the guard judges (`role`, `session_authorization`, ...), so others are
/// refused; `options` (`-c name=value`) only empty.
const STARTUP_PARAMETERS: [&str; 10] = [
    "user",
    "database",
    "application_name",
    "client_encoding",
    "datestyle",
    "timezone",
    "intervalstyle",
    "extra_float_digits",
    "search_path",
    "replication",
];

/// Accepts connections on `listener` and guards each, with `server` as
/// the PostgreSQL server (`host:port`), `tls` on either leg, and `login`
/// when the guard logs in for clients.
pub async fn serve(
    listener: TcpListener,
    server: String,
    tls: Tls,
    login: Option<Login>,
    authority: Arc<dyn Authority>,
) -> std::io::Result<()> {
    let server: Arc<str> = server.into();
    let tls = Arc::new(tls);
    let login = Arc::new(login);
    loop {
        let (stream, peer) = listener.accept().await?;
        let (server, tls, login, authority) = (
            server.clone(),
            tls.clone(),
            login.clone(),
            authority.clone(),
        );
        tokio::spawn(async move {
            let login = Option::as_ref(&login);
            if let Err(e) = connection(stream, peer, &server, &tls, login, authority).await {
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
    login: Option<&Login>,
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
    if let Some((name, _)) = params.iter().find(|(name, value)| {
        let name = name.to_lowercase();
        !(STARTUP_PARAMETERS.contains(&name.as_str())
            || name == "options" && value.trim().is_empty())
    }) {
        let why = format!(
            "the startup parameter `{name}` is not allowed through the statement guard: change settings with SET, which the policy judges"
        );
        return Err(fatal(&mut client_write, Ended::refused(REFUSED, why)).await);
    }
    let Some(user) = param("user") else {
        let why = "the startup packet names no user";
        return Err(fatal(&mut client_write, Ended::refused(PROTOCOL_VIOLATION, why)).await);
    };
    if login.is_some() && !(peer.ip().is_loopback() || peer.ip() == local.ip()) {
        let why = "the statement guard logs in for this database's clients, so they must be on its host (where the kernel says who they are)";
        return Err(fatal(&mut client_write, Ended::refused("28000", why)).await);
    }
    let client = Client {
        peer,
        local,
        user: user.to_string(),
        dbname: param("database").unwrap_or(user).to_string(),
        role: login.map(|l| l.user.clone()),
    };
    // With credentials, the server sees the guard's role, not the client's.
    let startup = match login {
        Some(login) => {
            let mut params = params.clone();
            for (name, value) in &mut params {
                if name == "user" {
                    value.clone_from(&login.user);
                }
            }
            if param("database").is_none() {
                params.push(("database".into(), user.to_string()));
            }
            let version = startup[4..8]
                .try_into()
                .expect("a startup packet has a version");
            protocol::startup(version, &params)
        }
        None => startup,
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
        login,
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
    let catalog = match &policy.rules.mask {
        Some(masking) => match masked_columns(&mut server_read, &mut server_write, masking).await {
            Ok(catalog) => catalog,
            Err(why) => {
                let why = format!(
                    "the guard cannot read which columns to mask from the server's catalog: {why}"
                );
                return Err(fatal(&mut client_write, Ended::refused(REFUSED, why)).await);
            }
        },
        None => Catalog::default(),
    };
    let catalog = Arc::new(catalog);

    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).map_err(|e| ProtocolError::Io(e.to_string()))?;
    let shared = Arc::new(Mutex::new(Shared {
        nonce: hex::encode(nonce),
        ..Shared::default()
    }));
    let server_write = Arc::new(tokio::sync::Mutex::new(server_write));
    let (settled, settled_seen) = tokio::sync::watch::channel((0, b'I'));
    let down = Downstream {
        shared: shared.clone(),
        server: server_write.clone(),
        reading,
        profile: policy.profile.clone(),
        rules: policy.rules.clone(),
        spent: policy.spent.clone(),
        authority: authority.clone(),
        preface: None,
        catalog: catalog.clone(),
        columns: None,
        masked: BTreeSet::new(),
        ready: 0,
        counts: Counts::default(),
        copied_in: false,
        settled,
    };
    let judge = Judge {
        policy,
        client,
        server: server_name.into(),
        authority,
        strings,
        prepared: HashMap::new(),
        held: None,
        catalog,
    };
    let up = Upstream {
        judge,
        shared,
        server: server_write,
        settled: settled_seen,
        gate: None,
        portals: HashMap::new(),
        ids: Ids::default(),
        discarding: false,
    };
    let (up, down) = tokio::join!(up.run(client_read), down.run(server_read, client_write));
    up.and(down)
}

/// Asks the server's catalog which ids the masked columns have, before the
/// client's first statement.
async fn masked_columns(
    server_read: &mut Reader,
    server_write: &mut Writer,
    masking: &guard_policy::database::Masking,
) -> Result<Catalog, String> {
    let mut catalog = Catalog::default();
    let Some(query) = Catalog::query(masking) else {
        return Ok(catalog);
    };
    catalog_query(server_read, server_write, &query, |row| {
        catalog.add_row(masking, row)
    })
    .await?;
    if let Some(views) = catalog.views_query() {
        catalog_query(server_read, server_write, &views, |row| {
            catalog.add_view(row)
        })
        .await?;
    }
    Ok(catalog)
}

/// Runs `query` on the server before the client's first statement, with
/// `row` taking each row of its answer.
async fn catalog_query(
    server_read: &mut Reader,
    server_write: &mut Writer,
    query: &str,
    mut row: impl FnMut(&Message) -> Result<(), String>,
) -> Result<(), String> {
    server_write
        .write_all(&protocol::query(query).bytes)
        .await
        .map_err(|e| e.to_string())?;
    server_write.flush().await.map_err(|e| e.to_string())?;
    let mut failed = None;
    loop {
        let message = Message::read(server_read)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the server closed the connection")?;
        match message.tag() {
            b'D' => row(&message)?,
            b'E' => failed = Some(protocol::field(message.body(), b'M')),
            b'Z' => break,
            _ => {}
        }
    }
    match failed {
        Some(why) => Err(why),
        None => Ok(()),
    }
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

/// Relays authentication until the server is ready for queries (or, with
/// `login`, logs in itself: the client only learns that it is in); returns
/// the server's settings the guard must know, or `None` when the server
/// refused the login (its error relayed).
async fn authenticate(
    client_read: &mut Reader,
    client_write: &mut Writer,
    server_read: &mut Reader,
    server_write: &mut Writer,
    login: Option<&Login>,
) -> Result<Option<HashMap<String, String>>, Ended> {
    let mut settings = HashMap::new();
    let mut guard_login = login.map(Authenticating::new);
    loop {
        let message = Message::read(server_read)
            .await?
            .ok_or(ProtocolError::Closed)?;
        match message.tag() {
            b'R' if guard_login.is_some() => {
                let body = message.body();
                let code = body
                    .get(..4)
                    .map_or(-1, |c| i32::from_be_bytes(c.try_into().expect("4 bytes")));
                if code == 0 {
                    client_write.write_all(&message.bytes).await?;
                    continue;
                }
                let answering = guard_login.as_mut().expect("logging in");
                match answering.answer(code, &body[4.min(body.len())..]) {
                    Ok(Some(answer)) => {
                        server_write.write_all(&answer.bytes).await?;
                        server_write.flush().await?;
                    }
                    Ok(None) => {}
                    Err(why) => {
                        let why = format!("the guard cannot log in to the server: {why}");
                        return Err(fatal(client_write, Ended::refused("28000", why)).await);
                    }
                }
            }
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
    /// Makes stand-in tokens unguessable, so that no client can make the
    /// server produce an error the guard would take for a stand-in's.
    nonce: String,
    stand_in_count: u64,
    /// Units sent to the server, the guard's own included: messages it
    /// answers with `ReadyForQuery` (`Query`, `Sync`).
    units: u64,
    /// The guard's own units around a budgeted `Query`, whose answers the
    /// client does not see.
    injected: HashMap<u64, Injected>,
    /// `Query` units whose statements' records wait for their counts.
    counting: HashMap<u64, Counting>,
    /// The budgeted execution the server is answering, if any: the client's
    /// next message waits for its end.
    watch: Option<Watch>,
    /// With masking: the `Describe` messages the server has yet to answer,
    /// oldest first, and the columns of those it answered.
    describing: VecDeque<Describing>,
    descriptions: HashMap<Described, Result<Vec<Column>, String>>,
}

/// What a `Describe` describes: a prepared statement or a portal, by the
/// guard's number for its `Parse` or `Bind` (a name is used again).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Described {
    Statement(u64),
    Portal(u64),
}

/// A `Describe` sent: its unit, what it describes, and the tables its
/// statement names.
struct Describing {
    unit: u64,
    what: Described,
    objects: BTreeSet<String>,
}

/// The guard's numbers for the client's `Parse` and `Bind` messages, and
/// each prepared statement's, by name.
#[derive(Default)]
struct Ids {
    next: u64,
    statements: HashMap<String, u64>,
}

/// A bound portal: what its statement does (`None` when the guard does not
/// know the statement), and the guard's numbers for its `Bind` and its
/// statement's `Parse`.
struct Portal {
    judged: Option<Judged>,
    bind: u64,
    parse: Option<u64>,
}

impl Ids {
    fn next(&mut self) -> u64 {
        self.next += 1;
        self.next
    }
}

impl Shared {
    fn next_unit(&mut self) -> u64 {
        self.units += 1;
        self.units - 1
    }

    /// The message sent in place of a refused statement in `unit`: one the
    /// server's parser fails on, naming a token only this guard knows.
    fn stand_in(&mut self, unit: u64, refusal: &Refusal, extended: bool) -> Message {
        let token = format!("guard_refused_{}_{}", self.nonce, self.stand_in_count);
        self.stand_in_count += 1;
        self.stand_ins.push_back(StandIn {
            token: token.clone(),
            error: refusal.to_client(),
            unit,
        });
        if extended {
            protocol::parse(&token, &token)
        } else {
            protocol::query(&token)
        }
    }
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

/// A unit the guard sends itself around a budgeted `Query` outside the
/// client's transaction.
enum Injected {
    /// `BEGIN` before it: every answer is the guard's.
    Begin,
    /// `COMMIT` or `ROLLBACK` after it: its `ReadyForQuery` ends the
    /// client's `Query`, after `error` (the budget the statement went over)
    /// and any error of the server's (a `COMMIT` that fails).
    End(Option<Message>),
}

/// The statements of one `Query`, whose records wait for their counts.
struct Counting {
    records: Vec<StatementRecord>,
    /// How many statements the server has answered.
    answered: usize,
    /// The statement that went over a budget, and which.
    overrun: Option<(usize, Overrun)>,
}

/// A budgeted execution: a `Query`, or an `Execute` (with the record of
/// its statement, for a refusal).
struct Watch {
    unit: u64,
    execute: Option<StatementRecord>,
    /// An `Execute`'s columns, as the portal's or its statement's
    /// `Describe` gave them, and the tables its statement names.
    described: Vec<Described>,
    objects: BTreeSet<String>,
    /// The guard began a transaction for the `Query`, and ends it.
    began: bool,
    /// The budget it went over: its rows are no longer sent, and it is
    /// undone.
    over: Option<Overrun>,
    /// Told, once the guard has acted on the end, whether the server now
    /// skips to the next `Sync`.
    done: oneshot::Sender<bool>,
}

/// Why a statement is refused.
#[derive(Clone)]
struct Refusal {
    code: &'static str,
    message: String,
    detail: Option<String>,
}

impl Refusal {
    fn to_client(&self) -> Message {
        guard_error("ERROR", self.code, &self.message, self.detail.as_deref())
    }
}

/// Whether the guard watches each statement that returns or changes rows
/// (counts its rows, masks them), and waits for its end before the next.
fn watches(rules: &StatementRules) -> bool {
    rules.budgets.any() || rules.mask.is_some()
}

/// The refusal of a computed result column the guard cannot tell is not
/// from a masked column (`computed: refuse`).
fn computed(name: &str) -> Overrun {
    Overrun::mask(format!(
        "the result column `{name}` is computed in a statement that reads a table with masked columns, and the policy refuses those: select the columns themselves"
    ))
}

/// Statement classes that neither return nor change rows: budgets do not
/// watch them (some cannot run in the transaction a watched `Query` gets).
const NO_ROWS: [Class; 10] = [
    Class::Transaction,
    Class::Setting,
    Class::Server,
    Class::Create,
    Class::Alter,
    Class::Drop,
    Class::Rename,
    Class::Comment,
    Class::Privilege,
    Class::Lock,
];

/// What a statement, or a prepared one, does.
#[derive(Clone, Default)]
struct Judged {
    classes: BTreeSet<Class>,
    objects: BTreeSet<String>,
    /// For records: the (last) statement's normalized text and fingerprint.
    normalized: String,
    fingerprint: String,
    /// Every row it changes is in its command tag.
    changes_counted: bool,
}

impl Judged {
    /// It may return or change rows, so budgets count it.
    fn has_rows(&self) -> bool {
        self.classes.iter().any(|c| !NO_ROWS.contains(c))
    }

    fn add(&mut self, other: &Judged) {
        self.classes.extend(&other.classes);
        self.objects.extend(other.objects.iter().cloned());
        self.changes_counted &= other.changes_counted;
    }
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
    /// Records held back (until the server answers) instead of sent.
    held: Option<Vec<StatementRecord>>,
    /// With masking: the tables with masked columns.
    catalog: Arc<Catalog>,
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
        // With budgets, the guard may run a `Query` in a transaction of its
        // own, which transaction control in the same message would end.
        let mixed = watches(&self.policy.rules)
            && statements.len() > 1
            && statements
                .iter()
                .any(|s| s.classes.contains(&Class::Transaction));
        let mut outcomes = Vec::with_capacity(statements.len());
        let mut all = Judged {
            changes_counted: true,
            ..Judged::default()
        };
        for statement in statements {
            let mut judged = Judged {
                classes: statement.classes.clone(),
                objects: statement.objects.clone(),
                normalized: statement.normalized.clone(),
                fingerprint: statement.fingerprint.clone(),
                changes_counted: statement.changes_counted,
            };
            for name in &statement.executes {
                // An unknown name fails in the server.
                if let Some(prepared) = self.prepared.get(name) {
                    judged.add(prepared);
                }
            }
            let outcome = self.outcome(statement, &judged, mixed);
            // A later statement of the same message may execute it.
            if let (Some(name), None) = (&statement.prepares, &outcome.refusal) {
                self.prepared.insert(name.clone(), judged.clone());
            }
            all.add(&judged);
            all.normalized.clone_from(&judged.normalized);
            all.fingerprint.clone_from(&judged.fingerprint);
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
        for (_, judged, outcome) in &outcomes {
            let (verdict, reason) = match (refused, &outcome.refusal) {
                (_, Some(refusal)) => (Verdict::Deny, Some(refusal.message.clone())),
                (Some(_), None) => (
                    Verdict::Deny,
                    Some("not run: another statement of the same message was refused".into()),
                ),
                (None, None) => (outcome.verdict, None),
            };
            self.record(Some(judged), verdict, reason, outcome);
        }
        match refused {
            Some(i) => Err(outcomes.swap_remove(i).2.refusal.expect("refused")),
            None => Ok(all),
        }
    }

    /// One statement's verdict under the policy; `mixed` when its message
    /// has transaction control and budgets apply.
    fn outcome(&self, statement: &guard_sql::Statement, judged: &Judged, mixed: bool) -> Outcome {
        let guard_refusal = |rule: &str, message: String| {
            Outcome::refused(
                Some(rule.into()),
                Refusal {
                    code: REFUSED,
                    message,
                    detail: None,
                },
            )
        };
        if let Some(setting) = statement
            .settings
            .iter()
            .find(|s| READING_SETTINGS.contains(&s.as_str()) || s.as_str() == ANY_SETTING)
        {
            return guard_refusal(
                GUARD_RULE,
                format!(
                    "changing `{setting}` is not allowed: the guard must read statements as the server does"
                ),
            );
        }
        if mixed && statement.classes.contains(&Class::Transaction) {
            return guard_refusal(
                GUARD_RULE,
                "with statement budgets or masking, send transaction control (BEGIN, COMMIT, ROLLBACK, savepoints) as a statement of its own".into(),
            );
        }
        let rules = &self.policy.rules;
        if rules.budgets.changes()
            && (judged.classes.contains(&Class::Code)
                || (judged.classes.contains(&Class::Write) && !judged.changes_counted))
        {
            return guard_refusal(
                "budget:rows_changed",
                "with a budget of rows changed, the guard counts changes by the server's command tags, and this statement's would not be counted (a data-modifying WITH under another statement, EXPLAIN ANALYZE, DO, CALL): send each change as an INSERT, UPDATE, DELETE or MERGE of its own".into(),
            );
        }
        // Masked values must not be copied where they would not be.
        let copies = judged.classes.contains(&Class::Create)
            || judged.classes.contains(&Class::Setting)
            || (judged.classes.contains(&Class::Write)
                && !judged.objects.iter().all(|o| self.catalog.is_masked(o)));
        if rules.mask.is_some() && copies && self.catalog.reads_masked(&judged.objects) {
            return guard_refusal(
                "mask",
                "with masking, a statement that reads a table with masked columns may not copy from it into another (CREATE ... AS, CREATE VIEW, INSERT ... SELECT, set_config): read it, or change it in place".into(),
            );
        }
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

    /// A statement's record (`None`: text that did not parse).
    fn record_of(
        &self,
        judged: Option<&Judged>,
        verdict: Verdict,
        reason: Option<String>,
        outcome: &Outcome,
    ) -> StatementRecord {
        let mut note = StatementNote {
            database: self.policy.rules.database.clone(),
            server: self.server.clone(),
            dbname: self.client.dbname.clone(),
            user: self.client.user.clone(),
            client: self.client.peer.to_string(),
            role: self.client.role.clone(),
            monitored: outcome.monitored,
            ..StatementNote::default()
        };
        if let Some(judged) = judged {
            note.classes = judged.classes.iter().map(|c| c.name().into()).collect();
            note.classes.sort();
            note.objects = judged.objects.iter().cloned().collect();
            note.normalized = judged.normalized.clone();
            note.fingerprint = judged.fingerprint.clone();
        }
        StatementRecord {
            connection: self.policy.connection,
            profile: self.policy.profile.clone(),
            verdict,
            rule: outcome.rule.clone(),
            reason,
            approvable: outcome.approvable && outcome.refusal.is_some(),
            ticket: outcome.ticket.clone(),
            statement: note,
        }
    }

    /// Sends a statement's record, or holds it back.
    fn record(
        &mut self,
        judged: Option<&Judged>,
        verdict: Verdict,
        reason: Option<String>,
        outcome: &Outcome,
    ) {
        let record = self.record_of(judged, verdict, reason, outcome);
        match &mut self.held {
            Some(held) => held.push(record),
            None => self.authority.record(record),
        }
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

    /// A statement's outcome as records of an execution see it.
    fn ran() -> Outcome {
        Outcome {
            verdict: Verdict::Allow,
            rule: None,
            monitored: false,
            refusal: None,
            approvable: false,
            ticket: None,
        }
    }
}

/// The server's end of the connection, written by both halves: the
/// client's messages, and the guard's own around budgeted statements.
type ServerWriter = Arc<tokio::sync::Mutex<Writer>>;

/// The client-to-server half.
struct Upstream {
    judge: Judge,
    shared: Arc<Mutex<Shared>>,
    server: ServerWriter,
    /// `downstream`'s count of `ReadyForQuery` messages, and the last one's
    /// transaction status.
    settled: tokio::sync::watch::Receiver<(u64, u8)>,
    /// Open when the budgeted execution in flight has ended and the guard
    /// has acted on it; `true` when the server now skips to `Sync`.
    gate: Option<oneshot::Receiver<bool>>,
    /// The client's portals, by name.
    portals: HashMap<String, Portal>,
    /// Numbers for statements and portals, with masking.
    ids: Ids,
    /// After a refused `Parse` (or an `Execute` over its budget): the
    /// server skips to the next `Sync`, and so does the guard.
    discarding: bool,
}

impl Upstream {
    async fn run(mut self, mut client: Reader) -> Result<(), Ended> {
        let result = self.relay(&mut client).await;
        if let Err(e) = &result {
            let error = e.to_client();
            lock(&self.shared).fatal.get_or_insert(error);
        }
        // The server ends the session; `downstream` then sees it close.
        let mut server = self.server.lock().await;
        let _ = server.write_all(&Message::new(b'X', b"").bytes).await;
        let _ = server.shutdown().await;
        result
    }

    async fn relay(&mut self, client: &mut Reader) -> Result<(), Ended> {
        while let Some(message) = Message::read(client).await? {
            let decoded = Frontend::decode(&message)?;
            // A budgeted execution ends before anything but its own COPY
            // data reaches the server.
            if !matches!(
                decoded,
                Frontend::CopyData | Frontend::CopyDone | Frontend::CopyFail | Frontend::Flush
            ) && let Some(gate) = self.gate.take()
            {
                // What is sent must reach the server before the guard waits.
                self.server.lock().await.flush().await?;
                self.discarding |= gate.await.map_err(|_| ProtocolError::Closed)?;
            }
            let mut forward = Vec::new();
            match decoded {
                Frontend::Query(sql) => forward = self.query(sql).await?,
                Frontend::Parse { .. } if self.discarding => {}
                Frontend::Parse { name, query } => match self.judge.judge(query).await {
                    Ok(judged) => {
                        self.judge.prepared.insert(name.to_string(), judged);
                        let id = self.ids.next();
                        if let Some(old) = self.ids.statements.insert(name.to_string(), id) {
                            self.forget(Described::Statement(old));
                        }
                        forward.push(Out::Client);
                    }
                    Err(refusal) => {
                        self.discarding = true;
                        let mut shared = lock(&self.shared);
                        let unit = shared.units;
                        forward.push(Out::Guard(shared.stand_in(unit, &refusal, true)));
                    }
                },
                Frontend::Bind { .. } | Frontend::Execute { .. } if self.discarding => {}
                Frontend::Bind { portal, statement } => {
                    let bound = Portal {
                        judged: self.judge.prepared.get(statement).cloned(),
                        bind: self.ids.next(),
                        parse: self.ids.statements.get(statement).copied(),
                    };
                    if let Some(old) = self.portals.insert(portal.to_string(), bound) {
                        self.forget(Described::Portal(old.bind));
                    }
                    forward.push(Out::Client);
                }
                Frontend::Describe { portal, name }
                    if !self.discarding && self.judge.policy.rules.mask.is_some() =>
                {
                    let (what, judged) = if portal {
                        let bound = self.portals.get(name);
                        (
                            bound.map(|p| Described::Portal(p.bind)),
                            bound.and_then(|p| p.judged.as_ref()),
                        )
                    } else {
                        let parse = self.ids.statements.get(name).copied();
                        (
                            parse.map(Described::Statement),
                            self.judge.prepared.get(name),
                        )
                    };
                    // An unknown name fails in the server: nothing to note.
                    if let (Some(what), Some(judged)) = (what, judged) {
                        let mut shared = lock(&self.shared);
                        let unit = shared.units;
                        shared.describing.push_back(Describing {
                            unit,
                            what,
                            objects: judged.objects.clone(),
                        });
                    }
                    forward.push(Out::Client);
                }
                Frontend::Execute { portal, max_rows } => {
                    forward = self.execute(portal, max_rows);
                }
                Frontend::Sync => {
                    self.discarding = false;
                    lock(&self.shared).next_unit();
                    forward.push(Out::Client);
                }
                Frontend::FunctionCall => {
                    let refusal = Refusal {
                        code: NOT_SUPPORTED,
                        message: "the fast-path function call interface is not allowed through the guard; call functions with SELECT".into(),
                        detail: None,
                    };
                    let mut shared = lock(&self.shared);
                    let unit = shared.next_unit();
                    forward.push(Out::Guard(shared.stand_in(unit, &refusal, false)));
                }
                Frontend::Password => {
                    let why = "a password message after authentication";
                    return Err(Ended::refused(PROTOCOL_VIOLATION, why));
                }
                Frontend::Terminate => return Ok(()),
                // The server ignores everything up to `Sync` but a flush.
                Frontend::Flush => forward.push(Out::Client),
                // The end of a budgeted execution's COPY: its result is
                // asked for at once, as the next message waits for it.
                Frontend::CopyDone | Frontend::CopyFail if self.gate.is_some() => {
                    forward.extend([Out::Client, Out::Guard(Message::new(b'H', b""))]);
                }
                _ if self.discarding => {}
                _ => forward.push(Out::Client),
            }
            let mut server = self.server.lock().await;
            for out in &forward {
                let bytes = match out {
                    Out::Client => &message.bytes,
                    Out::Guard(guard) => &guard.bytes,
                };
                server.write_all(bytes).await?;
            }
            if client.buffer().is_empty() {
                server.flush().await?;
            }
        }
        Ok(())
    }

    /// A statement or portal replaced under its name: its columns are not
    /// needed any more.
    fn forget(&self, described: Described) {
        if self.judge.policy.rules.mask.is_some() {
            lock(&self.shared).descriptions.remove(&described);
        }
    }

    /// A `Query`: judged, and when budgets count its rows, watched (in a
    /// transaction of the guard's own outside the client's, so that it can
    /// be undone).
    async fn query(&mut self, sql: &str) -> Result<Vec<Out>, Ended> {
        self.judge.held = Some(Vec::new());
        let judged = self.judge.judge(sql).await;
        let records = self.judge.held.take().unwrap_or_default();
        let judged = match judged {
            Ok(judged) => judged,
            Err(refusal) => {
                for record in records {
                    self.judge.authority.record(record);
                }
                let mut shared = lock(&self.shared);
                let unit = shared.next_unit();
                return Ok(vec![Out::Guard(shared.stand_in(unit, &refusal, false))]);
            }
        };
        let watched = watches(&self.judge.policy.rules) && judged.has_rows();
        // The transaction status once the server has answered everything
        // sent so far.
        let began = watched && {
            let sent = lock(&self.shared).units;
            let settled = self
                .settled
                .wait_for(|(ready, _)| *ready >= sent)
                .await
                .map_err(|_| ProtocolError::Closed)?;
            settled.1 == b'I'
        };
        let mut forward = Vec::new();
        let mut shared = lock(&self.shared);
        if began {
            let unit = shared.next_unit();
            shared.injected.insert(unit, Injected::Begin);
            forward.push(Out::Guard(protocol::query("BEGIN")));
        }
        let unit = shared.next_unit();
        shared.counting.insert(
            unit,
            Counting {
                records,
                answered: 0,
                overrun: None,
            },
        );
        if watched {
            let (done, gate) = oneshot::channel();
            shared.watch = Some(Watch {
                unit,
                execute: None,
                described: Vec::new(),
                objects: judged.objects.clone(),
                began,
                over: None,
                done,
            });
            self.gate = Some(gate);
        }
        forward.push(Out::Client);
        Ok(forward)
    }

    /// An `Execute`: watched when budgets count its portal's rows; the
    /// guard asks for its result at once (`Flush`).
    fn execute(&mut self, portal: &str, max_rows: i32) -> Vec<Out> {
        let budgets = &self.judge.policy.rules.budgets;
        // A portal the guard does not know is watched too (the server will
        // most likely refuse it).
        let bound = self.portals.get(portal);
        let judged = bound.and_then(|p| p.judged.clone());
        if !watches(&self.judge.policy.rules) || judged.as_ref().is_some_and(|j| !j.has_rows()) {
            return vec![Out::Client];
        }
        let judged = judged.unwrap_or_default();
        let described = match bound {
            Some(bound) => {
                let mut described = vec![Described::Portal(bound.bind)];
                described.extend(bound.parse.map(Described::Statement));
                described
            }
            None => Vec::new(),
        };
        let mut shared = lock(&self.shared);
        let unit = shared.units;
        if max_rows > 0 && budgets.changes() && judged.classes.contains(&Class::Write) {
            self.discarding = true;
            let refusal = Refusal {
                code: NOT_SUPPORTED,
                message: "with a budget of rows changed, execute a change without a row limit (its count comes at its end)".into(),
                detail: None,
            };
            return vec![Out::Guard(shared.stand_in(unit, &refusal, true))];
        }
        let (done, gate) = oneshot::channel();
        let record = self
            .judge
            .record_of(Some(&judged), Verdict::Deny, None, &Outcome::ran());
        shared.watch = Some(Watch {
            unit,
            execute: Some(record),
            described,
            objects: judged.objects.clone(),
            began: false,
            over: None,
            done,
        });
        self.gate = Some(gate);
        vec![Out::Client, Out::Guard(Message::new(b'H', b""))]
    }
}

/// What goes to the server for one client message.
enum Out {
    /// The client's message, as it sent it.
    Client,
    /// A message of the guard's.
    Guard(Message),
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// The server-to-client half.
struct Downstream {
    shared: Arc<Mutex<Shared>>,
    server: ServerWriter,
    /// The settings the guard reads statements by, as they were at startup.
    reading: HashMap<String, String>,
    /// The connection's profile, and its rules (their budgets).
    profile: String,
    rules: StatementRules,
    spent: Arc<Spent>,
    authority: Arc<dyn Authority>,
    /// A message the client gets before the next one.
    preface: Option<Message>,
    /// With masking: the masked columns' ids, the columns of the `Query`
    /// statement's rows the server sends now, and what the statement had
    /// masked so far.
    catalog: Arc<Catalog>,
    columns: Option<Result<Vec<Column>, String>>,
    masked: BTreeSet<String>,
    /// `ReadyForQuery` messages seen: the unit the server answers now.
    ready: u64,
    /// The statement the server answers now: its rows so far, and whether
    /// it copied rows in.
    counts: Counts,
    copied_in: bool,
    /// Tells `upstream` of each `ReadyForQuery`: `ready`, and the status.
    settled: tokio::sync::watch::Sender<(u64, u8)>,
}

impl Downstream {
    async fn run(mut self, mut server: Reader, mut client: Writer) -> Result<(), Ended> {
        let result = async {
            while let Some(message) = Message::read(&mut server).await? {
                let out = self.message(message).await?;
                if let Some(preface) = self.preface.take() {
                    client.write_all(&preface.bytes).await?;
                }
                if let Some(out) = out {
                    client.write_all(&out.bytes).await?;
                }
                if server.buffer().is_empty() {
                    client.flush().await?;
                }
            }
            Ok(())
        }
        .await;
        // Records still waiting for their counts go out as they are.
        let counting: Vec<Counting> = lock(&self.shared)
            .counting
            .drain()
            .map(|(_, c)| c)
            .collect();
        for counting in counting {
            for record in counting.records {
                self.authority.record(record);
            }
        }
        let ended = result.as_ref().err().map(Ended::to_client);
        if let Some(error) = ended.or_else(|| lock(&self.shared).fatal.take()) {
            let _ = client.write_all(&error.bytes).await;
        }
        let _ = client.flush().await;
        let _ = client.shutdown().await;
        result
    }

    /// One message of the server's: what the client gets in its place, if
    /// anything.
    async fn message(&mut self, message: Message) -> Result<Option<Message>, Ended> {
        let tag = message.tag();
        match tag {
            b'S' => {
                if let Some((name, value)) = protocol::parameter_status(message.body())
                    && READING_SETTINGS.contains(&name.as_str())
                    && self.reading.get(&name) != Some(&value)
                {
                    warn!(%name, %value, "a setting the guard reads statements by changed; ending the connection");
                    return Err(Ended::refused(
                        REFUSED,
                        format!(
                            "`{name}` changed to `{value}`: the guard can no longer read statements as the server does"
                        ),
                    ));
                }
            }
            b'W' => {
                let why = "the server started a COPY BOTH, which the guard does not relay";
                return Err(Ended::refused(NOT_SUPPORTED, why));
            }
            _ => {}
        }
        // Without budgets and masking, the guard sends nothing of its own
        // and watches nothing: no lookups per message.
        let mut watching = None;
        if watches(&self.rules) {
            let mut shared = lock(&self.shared);
            if let Some(injected) = shared.injected.remove(&self.ready) {
                drop(shared);
                return Ok(self.injected(injected, message));
            }
            watching = shared
                .watch
                .as_ref()
                .filter(|w| w.unit == self.ready)
                .map(|w| (w.execute.is_some(), w.over.is_some()));
        }
        let mut forward = Some(message);
        match tag {
            b'D' | b'd' => {
                let bytes = forward.as_ref().map_or(0, |m| m.body().len() as u64);
                self.counts.read += 1;
                self.counts.bytes += bytes;
                if let Some((_, over)) = watching {
                    if over {
                        forward = None;
                    } else if let Err(overrun) =
                        budget::read(&self.rules.budgets, &self.spent, &self.counts, bytes)
                    {
                        self.overrun(overrun);
                        forward = None;
                    }
                }
                if let Some(row) = forward.take() {
                    forward = self.mask(row, watching.is_some_and(|(execute, _)| execute));
                }
            }
            b'G' => self.copied_in = true,
            b'T' | b'n' if self.rules.mask.is_some() => {
                let message = forward.as_ref().expect("a message");
                self.described(message);
                if self.is_over() {
                    forward = None;
                }
            }
            b'N' if self.rules.mask.is_some() => {
                forward = forward.map(|notice| self.withheld(notice, watching));
            }
            b'H' if self.rules.mask.is_some() => {
                self.copying_out(watching, &forward);
                if self.is_over() {
                    forward = None;
                }
            }
            b'C' | b'I' => {
                let tag_text = forward
                    .as_ref()
                    .map(|m| {
                        String::from_utf8_lossy(m.body())
                            .trim_end_matches('\0')
                            .to_string()
                    })
                    .unwrap_or_default();
                self.counts.changed = budget::rows_changed(&tag_text, self.copied_in);
                if let (Some((_, false)), Some(rows)) = (watching, self.counts.changed)
                    && let Err(overrun) = budget::changed(&self.rules.budgets, &self.spent, rows)
                {
                    self.overrun(overrun);
                }
                self.answered();
                if self.is_over() {
                    forward = None;
                }
                if let Some((true, _)) = watching {
                    self.end_execute().await?;
                }
            }
            b's' => {
                if let Some((true, over)) = watching {
                    if over {
                        forward = None;
                    }
                    self.end_execute().await?;
                }
            }
            b'E' => {
                let text = protocol::field(forward.as_ref().expect("a message").body(), b'M');
                let stand_in = {
                    let mut shared = lock(&self.shared);
                    let found = shared
                        .stand_ins
                        .iter()
                        .position(|s| text.contains(&s.token));
                    found.and_then(|i| shared.stand_ins.remove(i))
                };
                if let Some(stand_in) = stand_in {
                    forward = Some(stand_in.error);
                } else {
                    forward = forward.map(|error| self.withheld(error, watching));
                    // The statement failed: the rest of its message does
                    // not run.
                    self.counts = Counts::default();
                    self.copied_in = false;
                    if self.is_over() {
                        forward = None;
                    }
                    if let Some((true, _)) = watching {
                        self.end_execute().await?;
                    }
                }
            }
            b'Z' => {
                let status = forward.as_ref().and_then(|m| m.body().first().copied());
                let status = status.unwrap_or(b'I');
                let replaced = match watching {
                    Some((false, _)) => self.end_query(status).await?,
                    // An `Execute` the server skipped.
                    Some((true, _)) => {
                        self.end_execute().await?;
                        false
                    }
                    _ => {
                        let counting = lock(&self.shared).counting.remove(&self.ready);
                        if let Some(counting) = counting {
                            self.send_records(counting);
                        }
                        false
                    }
                };
                if replaced {
                    forward = None;
                }
                self.settle(status);
            }
            // After a `Query` went over its budget, the rest of its answers
            // but those the client must act on.
            b'T' | b'H' | b'c' | b'n' if self.is_over() => forward = None,
            _ => {}
        }
        Ok(forward)
    }

    /// The next unit: stand-ins of units answered are gone (the server
    /// never answers them), and `upstream` learns the status.
    fn settle(&mut self, status: u8) {
        self.ready += 1;
        let ready = self.ready;
        lock(&self.shared).stand_ins.retain(|s| s.unit >= ready);
        self.settled.send_replace((ready, status));
    }

    /// An answer to a unit the guard sent itself.
    fn injected(&mut self, injected: Injected, message: Message) -> Option<Message> {
        match (injected, message.tag()) {
            (Injected::End(error), b'Z') => {
                let status = message.body().first().copied().unwrap_or(b'I');
                self.settle(status);
                // The client's error comes before its `ReadyForQuery`.
                self.preface = error;
                Some(message)
            }
            (Injected::Begin, b'Z') => {
                let status = message.body().first().copied().unwrap_or(b'I');
                self.settle(status);
                None
            }
            (injected, tag) => {
                // A `COMMIT` that fails: the client must know.
                let forward = matches!(injected, Injected::End(_)) && tag == b'E';
                lock(&self.shared).injected.insert(self.ready, injected);
                forward.then_some(message)
            }
        }
    }

    /// A row description (or `NoData`): the columns of the rows that
    /// follow (a `Query`'s), or of the statement or portal a `Describe`
    /// asked for.
    fn described(&mut self, message: &Message) {
        let Some(masking) = &self.rules.mask else {
            return;
        };
        let describe = |objects: &BTreeSet<String>| match message.tag() {
            b'T' => mask::describe(
                message,
                &self.catalog,
                masking,
                self.catalog.reads_masked(objects),
            ),
            _ => Ok(Vec::new()),
        };
        let ready = self.ready;
        if lock(&self.shared).counting.contains_key(&ready) {
            // A `Query`'s statement: its rows follow.
            let columns = describe(&self.current_objects(None));
            if let Err(name) = &columns {
                self.overrun(computed(name));
            }
            self.columns = Some(columns);
            return;
        }
        let mut shared = lock(&self.shared);
        while shared.describing.front().is_some_and(|d| d.unit < ready) {
            shared.describing.pop_front();
        }
        if let Some(describing) = shared.describing.pop_front() {
            let columns = describe(&describing.objects);
            shared.descriptions.insert(describing.what, columns);
        }
    }

    /// A row as the client may see it: masked, or `None` when the guard
    /// cannot tell its columns (the statement is then cut short).
    fn mask(&mut self, row: Message, execute: bool) -> Option<Message> {
        let Some(masking) = &self.rules.mask else {
            return Some(row);
        };
        if row.tag() == b'd' {
            // COPY's text rows: the detectors only (a COPY of masked
            // columns is refused when it starts).
            return match mask::text(row.body(), &masking.values, &mut self.masked) {
                Some(masked) => Some(Message::new(b'd', &masked)),
                None => Some(row),
            };
        }
        // An `Execute`'s columns, from its portal's or statement's
        // `Describe`, found at its first row.
        if execute && self.columns.is_none() {
            let shared = lock(&self.shared);
            self.columns = shared.watch.as_ref().and_then(|w| {
                w.described
                    .iter()
                    .find_map(|d| shared.descriptions.get(d).cloned())
            });
        }
        let overrun = match &self.columns {
            Some(Ok(columns)) => {
                let masked = mask::row(&row, columns, &masking.values, &mut self.masked);
                return Some(masked.unwrap_or(row));
            }
            Some(Err(name)) => computed(name),
            None => Overrun::mask(
                "the guard does not know this result's columns, so it cannot mask them: describe the statement or portal before executing it (drivers do)",
            ),
        };
        self.overrun(overrun);
        None
    }

    /// The tables the statement the server answers now names.
    fn current_objects(&self, watching: Option<(bool, bool)>) -> BTreeSet<String> {
        let shared = lock(&self.shared);
        match watching {
            Some((true, _)) => shared
                .watch
                .as_ref()
                .map(|w| w.objects.clone())
                .unwrap_or_default(),
            _ => shared
                .counting
                .get(&self.ready)
                .and_then(|c| c.records.get(c.answered))
                .map(|r| r.statement.objects.iter().cloned().collect())
                .unwrap_or_default(),
        }
    }

    /// An error or notice of a statement that reads masked columns, with
    /// its text withheld: the server's messages may quote values
    /// (`invalid input syntax for type integer: "ann@example.com"`).
    fn withheld(&self, message: Message, watching: Option<(bool, bool)>) -> Message {
        if !self.catalog.reads_masked(&self.current_objects(watching)) {
            return message;
        }
        let code = protocol::field(message.body(), b'C');
        let text = format!(
            "the server's message is withheld: the statement reads a table with masked columns (SQLSTATE {code})"
        );
        let severity = protocol::field(message.body(), b'S');
        let replaced = guard_error(&severity, &code, &text, None);
        Message::new(message.tag(), replaced.body())
    }

    /// A `COPY ... TO STDOUT` starts: refused when its rows could hold
    /// masked columns (they cannot be masked column by column), or are
    /// binary and values are detected.
    fn copying_out(&mut self, watching: Option<(bool, bool)>, forward: &Option<Message>) {
        let Some(masking) = &self.rules.mask else {
            return;
        };
        let objects = self.current_objects(watching);
        let binary = forward.as_ref().and_then(|m| m.body().first()) == Some(&1);
        let why = if self.catalog.reads_masked(&objects) {
            "COPY out of a table with masked columns is refused: its rows cannot be masked column by column; SELECT them"
        } else if binary && !masking.values.is_empty() {
            "a binary COPY out is refused: the guard cannot mask values in it"
        } else {
            return;
        };
        self.overrun(Overrun::mask(why));
    }

    fn is_over(&self) -> bool {
        lock(&self.shared)
            .watch
            .as_ref()
            .is_some_and(|w| w.unit == self.ready && w.over.is_some())
    }

    /// The statement the server answers went over `overrun`.
    fn overrun(&mut self, overrun: Overrun) {
        let mut shared = lock(&self.shared);
        let ready = self.ready;
        if let Some(counting) = shared.counting.get_mut(&ready)
            && counting.overrun.is_none()
        {
            counting.overrun = Some((counting.answered, overrun.clone()));
        }
        if let Some(watch) = shared.watch.as_mut() {
            watch.over.get_or_insert(overrun);
        }
    }

    /// The server answered a statement: its record gets its counts.
    fn answered(&mut self) {
        let counts = std::mem::take(&mut self.counts);
        let masked: Vec<String> = std::mem::take(&mut self.masked).into_iter().collect();
        self.copied_in = false;
        self.columns = None;
        let mut shared = lock(&self.shared);
        let shared = &mut *shared;
        // A `Query`'s statement, or a watched `Execute`.
        let record = match shared.counting.get_mut(&self.ready) {
            Some(counting) => {
                let record = counting.records.get_mut(counting.answered);
                counting.answered += 1;
                record
            }
            None => shared.watch.as_mut().and_then(|w| w.execute.as_mut()),
        };
        if let Some(record) = record {
            record.statement.rows_changed = counts.changed;
            record.statement.rows_read = Some(counts.read);
            record.statement.bytes_read = Some(counts.bytes);
            record.statement.masked = masked;
        }
    }

    /// A watched `Execute` ended. Over its budget, it fails as any
    /// statement does: a stand-in fails in its place, so the server undoes
    /// it (its transaction) and skips to `Sync`, and the client gets the
    /// guard's error.
    async fn end_execute(&mut self) -> Result<(), Ended> {
        let Some(mut watch) = lock(&self.shared).watch.take() else {
            return Ok(());
        };
        self.columns = None;
        let over = watch.over.take();
        if let (Some(overrun), Some(mut record)) = (&over, watch.execute.take()) {
            record.rule = Some(overrun.rule.clone());
            record.reason = Some(overrun.message.clone());
            self.authority.record(record);
            let stand_in = {
                let mut shared = lock(&self.shared);
                let unit = shared.units;
                shared.stand_in(unit, &self.refusal(overrun), true)
            };
            let mut server = self.server.lock().await;
            server.write_all(&stand_in.bytes).await?;
            server.write_all(&Message::new(b'H', b"").bytes).await?;
            server.flush().await?;
        }
        let _ = watch.done.send(over.is_some());
        Ok(())
    }

    /// A watched `Query` ended with `status`: the guard ends the
    /// transaction it began (`COMMIT`, or `ROLLBACK` when over a budget
    /// or failed), or makes the client's own fail when over. Its records go
    /// out. `true` when its `ReadyForQuery` is not the client's.
    async fn end_query(&mut self, status: u8) -> Result<bool, Ended> {
        let (watch, counting) = {
            let mut shared = lock(&self.shared);
            let counting = shared.counting.remove(&self.ready);
            (shared.watch.take(), counting)
        };
        let Some(watch) = watch else {
            return Ok(false);
        };
        if let Some(counting) = counting {
            self.send_records(counting);
        }
        let over = watch.over.as_ref().map(|o| self.refusal(o));
        let end = {
            let mut shared = lock(&self.shared);
            match (&over, watch.began) {
                (over, true) => {
                    let unit = shared.next_unit();
                    shared
                        .injected
                        .insert(unit, Injected::End(over.as_ref().map(Refusal::to_client)));
                    let end = if over.is_none() && status == b'T' {
                        "COMMIT"
                    } else {
                        "ROLLBACK"
                    };
                    Some(protocol::query(end))
                }
                (Some(refusal), false) => {
                    let unit = shared.next_unit();
                    Some(shared.stand_in(unit, refusal, false))
                }
                (None, false) => None,
            }
        };
        let replaced = end.is_some();
        if let Some(end) = end {
            let mut server = self.server.lock().await;
            server.write_all(&end.bytes).await?;
            server.flush().await?;
        }
        let _ = watch.done.send(false);
        Ok(replaced)
    }

    /// The records of a `Query`'s statements, with their counts; over a
    /// budget, every statement of the message is undone.
    fn send_records(&self, counting: Counting) {
        for (i, mut record) in counting.records.into_iter().enumerate() {
            if let Some((at, overrun)) = &counting.overrun {
                record.verdict = Verdict::Deny;
                if i == *at {
                    record.rule = Some(overrun.rule.clone());
                    record.reason = Some(overrun.message.clone());
                } else {
                    record.reason = Some(format!(
                        "undone: statement {} of the same message went over its budget",
                        at + 1
                    ));
                }
            }
            self.authority.record(record);
        }
    }

    /// What the client is told of a budget the statement went over, or of
    /// rows masking cannot allow.
    fn refusal(&self, overrun: &Overrun) -> Refusal {
        Refusal {
            code: REFUSED,
            message: overrun.message.clone(),
            detail: Some(format!(
                "Refused by `{}` of profile `{}` for database `{}`: no row beyond it was sent, and nothing the statement did was kept.",
                overrun.rule, self.profile, self.rules.database
            )),
        }
    }
}
