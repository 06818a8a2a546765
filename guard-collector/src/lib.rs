//! guard-collector: receives the record streams of many guardd hosts,
//! checks each stream's sequence and chain as it arrives, stores it, and
//! serves the audit API across all hosts.
//!
//! [`ingest`] is the checking (pure), [`store`] the schema both stores share,
//! [`sqlite`] and [`postgres`] the stores, [`metrics`] the collector's own,
//! and [`run`] serves it all until shutdown.

pub mod metrics;
pub mod postgres;
pub mod sqlite;
pub mod store;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt as _, wrappers::ReceiverStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{error, info, warn};

use guard_api::{
    audit::{self, AuditService, Feed, Filter, History},
    chain,
    metrics::StageLabels,
    pb,
    record::{Line, Verdict},
    signing, time,
    tls::{self, Role, Transport},
};

use crate::{
    metrics::{CollectorMetrics, KindLabels},
    store::{Kind, NewEntry, Store, StoreError, StreamState},
};

/// Lines the collector stores in one transaction at most.
const BATCH: usize = 512;
/// How long it waits for a batch to fill before storing what it has.
const BATCH_WAIT: Duration = Duration::from_millis(20);
/// Longest host name accepted.
const MAX_HOST: usize = 253;

/// Where the collector keeps what it receives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreSpec {
    Sqlite(PathBuf),
    Postgres(String),
}

impl std::str::FromStr for StoreSpec {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        if let Some(path) = spec.strip_prefix("sqlite:") {
            Ok(StoreSpec::Sqlite(path.into()))
        } else if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
            Ok(StoreSpec::Postgres(spec.into()))
        } else {
            Err(format!(
                "`{spec}` is not a store: use sqlite:PATH or postgres://USER@HOST/DATABASE"
            ))
        }
    }
}

impl StoreSpec {
    pub fn open(&self) -> Result<Box<dyn Store>, StoreError> {
        Ok(match self {
            StoreSpec::Sqlite(path) => Box::new(sqlite::Sqlite::open(path)?),
            StoreSpec::Postgres(url) => Box::new(postgres::Postgres::connect(url)?),
        })
    }
}

pub struct Config {
    pub listen: SocketAddr,
    /// Mutual TLS on `listen`, or plaintext (loopback only).
    pub transport: Transport,
    pub store: StoreSpec,
    /// Delete entries older than this.
    pub retain_for: Option<Duration>,
    /// Delete the oldest entries beyond this size (SQLite only).
    pub retain_bytes: Option<u64>,
    /// Where Prometheus metrics are served; off when `None`.
    pub metrics_listen: Option<SocketAddr>,
    /// Hosts' signing keys, pinned: their checkpoints must be signed by
    /// these rather than by the key each enrolled on first contact.
    pub host_keys: BTreeMap<String, String>,
}

impl Config {
    /// Refuses settings that contradict each other: each would otherwise be
    /// silently ignored or fail later.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.retain_bytes.is_some() && matches!(self.store, StoreSpec::Postgres(_)) {
            anyhow::bail!(
                "--retain-size applies to a SQLite store only: PostgreSQL manages its own space (use --retain-for)"
            );
        }
        if self.metrics_listen == Some(self.listen) {
            anyhow::bail!("--listen and --metrics-listen are both {}", self.listen);
        }
        Ok(())
    }
}

/// The store, used from blocking threads one call at a time.
#[derive(Clone)]
pub struct StoreHandle(Arc<Mutex<Box<dyn Store>>>);

impl StoreHandle {
    pub fn new(store: Box<dyn Store>) -> Self {
        Self(Arc::new(Mutex::new(store)))
    }

    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.0.clone();
        tokio::task::spawn_blocking(move || {
            let mut store = store.lock().unwrap_or_else(|e| e.into_inner());
            f(store.as_mut())
        })
        .await
        .map_err(|e| StoreError::Database(format!("store call failed: {e}")))?
    }
}

fn status(e: StoreError) -> Status {
    match e {
        StoreError::Conflict(_) => Status::aborted(e.to_string()),
        StoreError::Database(_) => Status::unavailable(e.to_string()),
    }
}

/// A line the collector cannot take.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("line with sequence {after}+: {reason}")]
pub struct BadLine {
    /// The last sequence number accepted before it.
    pub after: u64,
    pub reason: String,
}

/// What one batch of a host's lines adds to the store.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Ingested {
    pub entries: Vec<NewEntry>,
    /// Lines the store already held (a resend), skipped.
    pub duplicates: u64,
    /// What the host's checkpoints showed: a key enrolled on first contact,
    /// or a checkpoint that does not hold (stored as broken).
    pub checkpoints: Vec<CheckpointNote>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum CheckpointNote {
    Enrolled { seq: u64, key: String },
    Failed { seq: u64, reason: String },
}

/// Checks `lines` against where the host's stream stands and turns them
/// into entries, moving `state` on: a jump in sequence numbers becomes a
/// gap entry, and each record's chain link is checked against the record
/// before it. Stops at the first line that is not a sealed record or loss;
/// what came before it stands.
pub fn ingest(
    state: &mut StreamState,
    lines: Vec<String>,
    now: i64,
) -> (Ingested, Option<BadLine>) {
    let mut out = Ingested::default();
    for line in lines {
        let bad = |reason: String| BadLine {
            after: state.next_seq - 1,
            reason,
        };
        let Some((body, hash)) = chain::unseal(&line) else {
            return (out, Some(bad("not a sealed line (no `chain`)".into())));
        };
        let parsed = match Line::parse(&line) {
            Ok(parsed) => parsed,
            Err(e) => return (out, Some(bad(format!("not a record or loss: {e}")))),
        };
        let seq = parsed.seq();
        if seq < state.next_seq {
            out.duplicates += 1;
            continue;
        }
        let previous = if seq > state.next_seq {
            out.entries.push(NewEntry {
                kind: Kind::Gap,
                seq: state.next_seq,
                count: seq - state.next_seq,
                time: now,
                agent: String::new(),
                session: String::new(),
                hook: String::new(),
                verdict: String::new(),
                integrity: pb::Integrity::Unspecified,
                json: String::new(),
                parsed: None,
            });
            None
        } else if seq == 1 {
            Some([0; 32])
        } else {
            state.last_chain
        };
        let integrity = match previous {
            None => pb::Integrity::Unchecked,
            Some(previous) if chain::link(&previous, body) == hash => pb::Integrity::Verified,
            Some(_) => pb::Integrity::Broken,
        };
        let mut entry = NewEntry {
            kind: Kind::Record,
            seq,
            count: 1,
            time: time::rfc3339_nanos(parsed.time()),
            agent: String::new(),
            session: String::new(),
            hook: String::new(),
            verdict: String::new(),
            integrity,
            json: String::new(),
            parsed: None,
        };
        match &parsed {
            Line::Decision(r) => {
                entry.agent = r.agent.clone();
                entry.session = r
                    .session
                    .as_ref()
                    .map(|s| s.session.clone())
                    .unwrap_or_default();
                entry.hook = r.hook.clone();
                entry.verdict = r.verdict.name().into();
            }
            Line::Loss(loss) => {
                entry.kind = Kind::Loss;
                entry.count = loss.loss.records;
            }
            Line::Checkpoint(checkpoint) => {
                entry.kind = Kind::Checkpoint;
                let checked = signing::check_line(checkpoint, previous, state.key.as_deref());
                entry.integrity = match (checked, integrity) {
                    (Err(reason), _) => {
                        out.checkpoints.push(CheckpointNote::Failed { seq, reason });
                        pb::Integrity::Broken
                    }
                    (Ok(()), integrity) => {
                        if state.key.is_none() {
                            let key = checkpoint.checkpoint.key.clone();
                            out.checkpoints.push(CheckpointNote::Enrolled {
                                seq,
                                key: key.clone(),
                            });
                            state.key = Some(key);
                        }
                        integrity
                    }
                };
            }
        }
        entry.parsed = Some(parsed);
        entry.json = line;
        out.entries.push(entry);
        state.next_seq = seq + 1;
        state.last_chain = Some(hash);
    }
    (out, None)
}

/// The API form of a stored entry.
pub fn to_entry(host: &str, entry: NewEntry) -> pb::Entry {
    if entry.kind == Kind::Gap {
        return pb::Entry {
            entry: Some(pb::entry::Entry::Gap(pb::Gap {
                host: host.into(),
                first_seq: entry.seq,
                last_seq: entry.seq + entry.count - 1,
                time: Some(time::timestamp(entry.time)),
            })),
        };
    }
    if let Some(line) = entry.parsed {
        return audit::entry(host, entry.json, line, entry.integrity);
    }
    // Stored lines were checked on the way in; one that no longer parses,
    // or whose chain hash is no longer hex, was changed in the store.
    let sealed = chain::hex_of(&entry.json).is_some();
    match Line::parse(&entry.json) {
        Ok(line) if sealed => audit::entry(host, entry.json, line, entry.integrity),
        _ => pb::Entry {
            entry: Some(pb::entry::Entry::Record(pb::Record {
                seq: entry.seq,
                host: host.into(),
                time: Some(time::timestamp(entry.time)),
                integrity: pb::Integrity::Broken as i32,
                json: entry.json,
                ..Default::default()
            })),
        },
    }
}

#[tonic::async_trait]
impl History for StoreHandle {
    async fn query(
        &self,
        filter: &Filter,
        after: u64,
        limit: u32,
    ) -> Result<(Vec<pb::Entry>, u64), Status> {
        let filter = filter.clone();
        let rows = self
            .call(move |s| s.query(&filter, after, limit))
            .await
            .map_err(status)?;
        let last = rows.last().map_or(after, |r| r.id);
        Ok((
            rows.into_iter()
                .map(|r| to_entry(&r.host, r.entry))
                .collect(),
            last,
        ))
    }

    async fn stats(&self, filter: &Filter) -> Result<pb::StatsResponse, Status> {
        let filter = filter.clone();
        let (totals, hosts) = self
            .call(move |s| Ok((s.totals(&filter)?, s.hosts()?)))
            .await
            .map_err(status)?;
        let mut stats = pb::StatsResponse::default();
        for (kind, verdict, integrity, count) in totals.rows {
            match (kind, Verdict::from_name(&verdict)) {
                (Kind::Record, Some(Verdict::Allow)) => stats.allowed += count,
                (Kind::Record, Some(Verdict::Deny)) => stats.denied += count,
                (Kind::Record, Some(Verdict::WouldDeny)) => stats.would_deny += count,
                (Kind::Loss, _) => stats.lost += count,
                (Kind::Gap, _) => stats.missing += count,
                _ => {}
            }
            if integrity == pb::Integrity::Broken {
                stats.broken += count;
            }
        }
        stats.hosts = hosts
            .into_iter()
            .map(|(host, next_seq)| pb::HostStats { host, next_seq })
            .collect();
        Ok(stats)
    }
}

/// `guard.v1.IngestService`.
#[derive(Clone)]
pub struct IngestService {
    pub store: StoreHandle,
    pub feed: Feed,
    pub metrics: Arc<CollectorMetrics>,
    /// [`Config::host_keys`].
    pub host_keys: Arc<BTreeMap<String, String>>,
}

type IngestStream = Pin<Box<dyn Stream<Item = Result<pb::IngestResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::ingest_service_server::IngestService for IngestService {
    type IngestStream = IngestStream;

    async fn ingest(
        &self,
        request: Request<Streaming<pb::IngestRequest>>,
    ) -> Result<Response<IngestStream>, Status> {
        let certificate = tls::peer(&request).cloned();
        let mut incoming = request.into_inner();
        let host = match incoming.message().await? {
            Some(pb::IngestRequest {
                item: Some(pb::ingest_request::Item::Hello(hello)),
            }) => hello.host,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message must be a Hello",
                ));
            }
        };
        if host.is_empty()
            || host.len() > MAX_HOST
            || !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        {
            return Err(Status::invalid_argument(format!(
                "host `{host}`: 1 to {MAX_HOST} letters, digits, `-`, `.` or `_`"
            )));
        }
        // A host writes its own stream only: the one its certificate names.
        if let Some(certificate) = certificate
            && certificate.name != host
        {
            warn!(%host, certificate = %certificate.name, "refused a stream shipped under another host's name");
            return Err(Status::permission_denied(format!(
                "the certificate is for host `{}`: it may not ship host `{host}`'s stream",
                certificate.name
            )));
        }
        let mut state = {
            let host = host.clone();
            self.store
                .call(move |s| s.stream(&host))
                .await
                .map_err(status)?
        };
        if let Some(pinned) = self.host_keys.get(&host) {
            state.key = Some(pinned.clone());
        }
        let (tx, rx) = mpsc::channel(64);
        let resume = pb::Resume {
            next_seq: state.next_seq,
            last_chain: state.last_chain.map(hex::encode).unwrap_or_default(),
        };
        let _ = tx
            .send(Ok(pb::IngestResponse {
                item: Some(pb::ingest_response::Item::Resume(resume)),
            }))
            .await;
        info!(%host, next_seq = state.next_seq, "host connected");
        self.metrics.hosts_connected.inc();
        tokio::spawn(self.clone().receive(host, state, incoming, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// One batch of a host's lines, checked and ready to store.
struct Checked {
    from: StreamState,
    to: StreamState,
    entries: Vec<NewEntry>,
    /// Why the stream ends after this batch, if it does.
    end: Option<Status>,
}

/// Batches checked ahead of the one being stored: the next lines are
/// received and checked while a batch commits.
const CHECKED_AHEAD: usize = 4;

impl IngestService {
    /// Stores a host's lines batch by batch, acknowledging each batch once
    /// it is committed. Receiving and checking run in a task of their own,
    /// ahead of the store.
    async fn receive(
        self,
        host: String,
        state: StreamState,
        incoming: Streaming<pb::IngestRequest>,
        acks: mpsc::Sender<Result<pb::IngestResponse, Status>>,
    ) {
        let mut next_seq = state.next_seq;
        let (checked, mut batches) = mpsc::channel(CHECKED_AHEAD);
        let checking = tokio::spawn(self.clone().check(host.clone(), state, incoming, checked));
        while let Some(Checked {
            from,
            to,
            entries,
            end,
        }) = batches.recv().await
        {
            if !entries.is_empty() {
                let (h, t) = (host.clone(), to.clone());
                let stored = self
                    .store
                    .call(move |s| s.append(&h, &from, &t, &entries).map(|()| entries))
                    .await;
                match stored {
                    Ok(entries) => {
                        self.count(&entries);
                        if self.feed.has_subscribers() {
                            self.feed
                                .publish(entries.into_iter().map(|e| to_entry(&host, e)).collect());
                        }
                    }
                    Err(e) => {
                        warn!(%host, "cannot store: {e}");
                        self.metrics.store_errors.inc();
                        let _ = acks.send(Err(status(e))).await;
                        break;
                    }
                }
            }
            next_seq = to.next_seq;
            let ack = pb::IngestResponse {
                item: Some(pb::ingest_response::Item::Ack(pb::Ack {
                    seq: next_seq - 1,
                })),
            };
            if acks.send(Ok(ack)).await.is_err() {
                break;
            }
            if let Some(end) = end {
                if end.code() != tonic::Code::Cancelled {
                    let _ = acks.send(Err(end)).await;
                }
                break;
            }
        }
        checking.abort();
        self.metrics.hosts_connected.dec();
        info!(%host, next_seq, "host disconnected");
    }

    /// Receives a host's lines in batches and checks them ([`ingest`]),
    /// until the stream ends or the store stops taking batches.
    async fn check(
        self,
        host: String,
        mut state: StreamState,
        incoming: Streaming<pb::IngestRequest>,
        checked: mpsc::Sender<Checked>,
    ) {
        let batches = incoming.chunks_timeout(BATCH, BATCH_WAIT);
        tokio::pin!(batches);
        while let Some(batch) = batches.next().await {
            let mut lines = Vec::with_capacity(batch.len());
            let mut end = None;
            for item in batch {
                match item {
                    Ok(pb::IngestRequest {
                        item: Some(pb::ingest_request::Item::Line(line)),
                    }) => lines.push(line),
                    Ok(_) => {
                        end = Some(Status::invalid_argument("only lines may follow the Hello"));
                        break;
                    }
                    // The host went away; store what it sent before.
                    Err(_) => {
                        end = Some(Status::cancelled("stream ended"));
                        break;
                    }
                }
            }
            let from = state.clone();
            let (ingested, bad) = ingest(&mut state, lines, time::now_nanos());
            self.metrics.duplicates.inc_by(ingested.duplicates);
            if let Some(bad) = &bad {
                warn!(%host, "refusing the rest of the stream: {bad}");
                end.get_or_insert(Status::invalid_argument(bad.to_string()));
            }
            for entry in &ingested.entries {
                match (entry.kind, entry.integrity) {
                    (Kind::Gap, _) => {
                        warn!(%host, first = entry.seq, count = entry.count, "records missing from the stream")
                    }
                    (Kind::Checkpoint, _) => {}
                    (_, pb::Integrity::Broken) => {
                        warn!(%host, seq = entry.seq, "record does not match its chain hash")
                    }
                    _ => {}
                }
            }
            for note in &ingested.checkpoints {
                match note {
                    CheckpointNote::Enrolled { seq, key } => {
                        info!(%host, seq, %key, "host key enrolled on first contact: its checkpoints must be signed by it from now on")
                    }
                    CheckpointNote::Failed { seq, reason } => {
                        error!(%host, seq, "checkpoint does not hold, stored as broken: {reason}")
                    }
                }
            }
            let ends = end.is_some();
            let batch = Checked {
                from,
                to: state.clone(),
                entries: ingested.entries,
                end,
            };
            if checked.send(batch).await.is_err() || ends {
                return;
            }
        }
    }

    fn count(&self, entries: &[NewEntry]) {
        for entry in entries {
            self.metrics
                .entries
                .get_or_create(&KindLabels {
                    kind: entry.kind.as_str().into(),
                })
                .inc();
            let broken = match (entry.kind, entry.integrity) {
                (Kind::Checkpoint, pb::Integrity::Broken) => &self.metrics.checkpoints_failed,
                (_, pb::Integrity::Broken) => &self.metrics.broken,
                _ => continue,
            };
            broken.inc();
        }
    }
}

/// Runs the collector until `shutdown` is cancelled, then lets the calls in
/// progress finish for up to `grpc::GRACE` and awaits its other tasks.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    config.check()?;
    let spec = config.store.clone();
    let store = StoreHandle::new(
        tokio::task::spawn_blocking(move || spec.open())
            .await?
            .context("cannot open the store")?,
    );
    // Every task runs until `shutdown`, and is awaited before the collector ends.
    let mut tasks = tokio::task::JoinSet::new();
    let feed = Feed::default();
    let metrics = Arc::new(CollectorMetrics::default());
    if let Some(addr) = config.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for metrics on {addr}"))?;
        info!(%addr, "metrics on /metrics");
        tasks.spawn(guard_api::metrics::serve(
            listener,
            metrics.clone(),
            shutdown.clone(),
        ));
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let incoming = tls::incoming(listener, &config.transport)?;
    info!(listen = %config.listen, tls = matches!(config.transport, Transport::Tls(_)), store = ?config.store, "collecting");
    let pruning = shutdown.clone();
    let store_to_prune = store.clone();
    tasks.spawn(async move {
        pruning
            .run_until_cancelled(prune(
                store_to_prune,
                config.retain_for,
                config.retain_bytes,
            ))
            .await;
    });
    let audit = AuditService {
        feed: feed.clone(),
        history: Some(Arc::new(store.clone())),
        subscriber_losses: metrics
            .lost
            .get_or_create(&StageLabels {
                stage: "subscriber_queue".into(),
            })
            .clone(),
    };
    let ingest = IngestService {
        store,
        feed,
        metrics,
        host_keys: Arc::new(config.host_keys.clone()),
    };
    let (routes, health) = guard_api::grpc::routes(audit).await?;
    health
        .set_serving::<pb::ingest_service_server::IngestServiceServer<IngestService>>()
        .await;
    let routes = routes.add_service(
        pb::ingest_service_server::IngestServiceServer::with_interceptor(
            ingest,
            tls::require(Role::Host, "ship records"),
        ),
    );
    let served = guard_api::grpc::serve(incoming, routes, shutdown.clone()).await;
    // The server may also end by an error: everything stops with it.
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    served?;
    info!("stopped");
    Ok(())
}

/// Applies the retention limits every minute.
async fn prune(store: StoreHandle, retain_for: Option<Duration>, retain_bytes: Option<u64>) {
    if retain_for.is_none() && retain_bytes.is_none() {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        let before = retain_for.map(|age| time::now_nanos() - age.as_nanos() as i64);
        match store.call(move |s| s.prune(before, retain_bytes)).await {
            Ok(0) => {}
            Ok(n) => info!(deleted = n, "retention: deleted the oldest entries"),
            Err(e) => warn!("retention: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use guard_api::chain::Chain;

    /// A host stream of `n` sealed lines: decisions, with a loss as line 3.
    pub fn stream(n: u64) -> Vec<String> {
        let mut chain = Chain::default();
        (1..=n)
            .map(|seq| {
                let json = if seq == 3 {
                    format!(
                        r#"{{"seq":{seq},"time":"2026-11-22T10:00:03Z","loss":{{"stage":"ring_buffer","records":7}}}}"#
                    )
                } else {
                    format!(
                        r#"{{"seq":{seq},"time":"2026-11-22T10:00:{seq:02}Z","hook":"path_unlink","action":"unlink","verdict":"{}","agent":"coder","profile":"coding","session":"s1","user":{{"uid":0}},"generation":1,"policy_sha256":"","agent_cgroup":1,"cgroup":1,"pid":1,"tid":1,"uid":0,"comm":"rm","target":"/srv/x{seq}","rule":"keep"}}"#,
                        if seq % 2 == 0 { "deny" } else { "allow" }
                    )
                };
                String::from_utf8(chain.seal(json.into_bytes()).0).unwrap()
            })
            .collect()
    }

    #[test]
    fn an_intact_stream_is_verified_and_resends_are_skipped() {
        let lines = stream(5);
        let mut state = StreamState::default();
        let (first, bad) = ingest(&mut state, lines[..3].to_vec(), 0);
        assert_eq!(bad, None);
        assert_eq!(first.entries.len(), 3);
        assert!(
            first
                .entries
                .iter()
                .all(|e| e.integrity == pb::Integrity::Verified)
        );
        assert_eq!(first.entries[1].verdict, "deny");
        assert_eq!(first.entries[1].session, "s1");
        assert_eq!(
            (first.entries[2].kind, first.entries[2].count),
            (Kind::Loss, 7)
        );
        assert_eq!(state.next_seq, 4);
        // A resend from 2 after a reconnect: 2 and 3 are skipped.
        let (second, _) = ingest(&mut state, lines[1..].to_vec(), 0);
        assert_eq!(second.duplicates, 2);
        assert_eq!(second.entries.len(), 2);
        assert_eq!(second.entries[0].integrity, pb::Integrity::Verified);
        assert_eq!(state.next_seq, 6);
    }

    #[test]
    fn a_jump_becomes_a_gap_and_the_next_record_is_unchecked() {
        let lines = stream(6);
        let mut state = StreamState::default();
        let (ingested, _) = ingest(&mut state, vec![lines[0].clone(), lines[4].clone()], 42);
        let gap = &ingested.entries[1];
        assert_eq!(
            (gap.kind, gap.seq, gap.count, gap.time),
            (Kind::Gap, 2, 3, 42)
        );
        assert_eq!(ingested.entries[2].integrity, pb::Integrity::Unchecked);
        let (next, _) = ingest(&mut state, lines[5..].to_vec(), 0);
        assert_eq!(next.entries[0].integrity, pb::Integrity::Verified);
        match to_entry("web-1", gap.clone()).entry {
            Some(pb::entry::Entry::Gap(g)) => assert_eq!((g.first_seq, g.last_seq), (2, 4)),
            other => panic!("a gap, not {other:?}"),
        }
    }

    #[test]
    fn a_changed_record_is_stored_as_broken() {
        let mut lines = stream(3);
        lines[1] = lines[1].replace("/srv/x2", "/srv/y2");
        let mut state = StreamState::default();
        let (ingested, bad) = ingest(&mut state, lines.clone(), 0);
        assert_eq!(bad, None);
        let integrity: Vec<_> = ingested.entries.iter().map(|e| e.integrity).collect();
        assert_eq!(
            integrity,
            [
                pb::Integrity::Verified,
                pb::Integrity::Broken,
                pb::Integrity::Verified
            ],
            "the record after it still commits to the original"
        );
    }

    #[test]
    fn a_line_that_is_not_sealed_stops_the_batch_after_what_came_before() {
        let mut lines = stream(3);
        lines[1] = "{\"seq\":2}".into();
        let mut state = StreamState::default();
        let (ingested, bad) = ingest(&mut state, lines.clone(), 0);
        assert_eq!(ingested.entries.len(), 1);
        assert_eq!(bad.unwrap().after, 1);
        assert_eq!(state.next_seq, 2);
    }

    #[test]
    fn a_batch_larger_than_one_insert_is_stored_whole_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = sqlite::Sqlite::open(&dir.path().join("c.db")).unwrap();
        let mut state = StreamState::default();
        // One INSERT of 32 entries, then 8 one by one.
        let (ingested, bad) = ingest(&mut state, stream(40), 0);
        assert!(bad.is_none());
        store
            .append("web-1", &StreamState::default(), &state, &ingested.entries)
            .unwrap();
        let stored = store.query(&Filter::default(), 0, 100).unwrap();
        let expected: Vec<NewEntry> = ingested
            .entries
            .into_iter()
            .map(|entry| NewEntry {
                parsed: None,
                ..entry
            })
            .collect();
        assert_eq!(
            stored.iter().map(|s| &s.entry).collect::<Vec<_>>(),
            expected.iter().collect::<Vec<_>>()
        );
        assert!(stored.iter().all(|s| s.host == "web-1"));
        assert!(stored.windows(2).all(|w| w[0].id < w[1].id));
    }

    #[test]
    fn the_sqlite_store_appends_queries_counts_and_prunes() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = sqlite::Sqlite::open(&dir.path().join("c.db")).unwrap();
        let lines = stream(6);
        let mut state = StreamState::default();
        let (ingested, _) = ingest(&mut state, lines.clone(), 0);
        store
            .append("web-1", &StreamState::default(), &state, &ingested.entries)
            .unwrap();
        assert_eq!(store.stream("web-1").unwrap(), state);
        // A second writer that read the old state loses.
        assert!(matches!(
            store.append("web-1", &StreamState::default(), &state, &[]),
            Err(StoreError::Conflict(_))
        ));
        let denials = Filter {
            verdicts: vec![Verdict::Deny],
            ..Default::default()
        };
        let page = store.query(&denials, 0, 2).unwrap();
        // Records 2 and the loss (3), which matches any record filter.
        assert_eq!(page.iter().map(|e| e.entry.seq).collect::<Vec<_>>(), [2, 3]);
        let rest = store.query(&denials, page[1].id, 10).unwrap();
        assert_eq!(rest.iter().map(|e| e.entry.seq).collect::<Vec<_>>(), [4, 6]);
        let totals = store.totals(&Filter::default()).unwrap();
        let count = |kind, verdict: &str| {
            totals
                .rows
                .iter()
                .filter(|r| r.0 == kind && r.1 == verdict)
                .map(|r| r.3)
                .sum::<u64>()
        };
        assert_eq!(
            (count(Kind::Record, "deny"), count(Kind::Record, "allow")),
            (3, 2)
        );
        assert_eq!(count(Kind::Loss, ""), 7);
        assert_eq!(store.hosts().unwrap(), [("web-1".to_string(), 7)]);
        let cutoff = time::rfc3339_nanos("2026-11-22T10:00:03Z");
        assert_eq!(store.prune(Some(cutoff), None).unwrap(), 2);
        assert_eq!(
            store.query(&Filter::default(), 0, 10).unwrap()[0].entry.seq,
            3
        );
        assert!(store.prune(None, Some(0)).unwrap() >= 4);
        assert!(store.query(&Filter::default(), 0, 10).unwrap().is_empty());
        assert_eq!(
            store.stream("web-1").unwrap(),
            state,
            "the stream's end stays"
        );
    }
}
