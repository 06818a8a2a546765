//! The gRPC audit API (`proto/guard/v1/audit.proto`), served by guardd (a
//! live feed of the records it writes) and by guard-collector (the live
//! feed of every host it stores, and queries over what it stored).
//!
//! Every subscriber has its own bounded queue; one that falls behind is told
//! how many entries it missed and never slows the writer.

use std::{
    pin::Pin,
    sync::{Arc, Mutex},
};

use futures_util::{StreamExt as _, stream};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::{
    chain, pb,
    record::{Line, Record, Verdict},
    session::SessionRef,
    time::{nanos, rfc3339_nanos, timestamp},
};

/// Entries the feed hands its subscribers at a time, at most: a
/// subscriber is woken once per batch, not once per entry.
pub const FEED_BATCH: usize = 64;

/// Batches each subscriber may fall behind by before it loses some: at
/// least this many entries, at most [`FEED_BATCH`] times as many.
pub const SUBSCRIBER_QUEUE: usize = 128;

/// Largest page a query returns, and the default.
pub const MAX_PAGE: u32 = 1000;
pub const DEFAULT_PAGE: u32 = 100;

/// The live feed: the writer publishes, each `Follow` call subscribes.
#[derive(Clone)]
pub struct Feed {
    sender: broadcast::Sender<Arc<Batch>>,
    /// Entries published so far. Held while a batch is sent, so that
    /// batches arrive in the order of their numbers.
    published: Arc<Mutex<u64>>,
}

/// Entries published together.
pub struct Batch {
    /// How many entries the feed published before these.
    pub first: u64,
    pub entries: Vec<pb::Entry>,
}

impl Default for Feed {
    fn default() -> Self {
        Self {
            sender: broadcast::channel(SUBSCRIBER_QUEUE).0,
            published: Arc::default(),
        }
    }
}

impl Feed {
    /// Whether anyone follows (so that callers can skip building entries).
    pub fn has_subscribers(&self) -> bool {
        self.sender.receiver_count() > 0
    }

    /// A subscriber's queue of the entries published from now on.
    pub fn subscribe(&self) -> Subscriber {
        // Under the lock: no batch is sent between the count and the
        // subscription.
        let published = self.published.lock().unwrap_or_else(|e| e.into_inner());
        Subscriber {
            receiver: self.sender.subscribe(),
            next: *published,
        }
    }

    /// Publishes entries to the current subscribers (none is fine), in
    /// batches of at most [`FEED_BATCH`].
    pub fn publish(&self, entries: Vec<pb::Entry>) {
        let mut published = self.published.lock().unwrap_or_else(|e| e.into_inner());
        let mut entries = entries.into_iter().peekable();
        while entries.peek().is_some() {
            let batch: Vec<_> = entries.by_ref().take(FEED_BATCH).collect();
            let first = *published;
            *published += batch.len() as u64;
            let _ = self.sender.send(Arc::new(Batch {
                first,
                entries: batch,
            }));
        }
    }
}

/// One subscriber's queue of the feed.
pub struct Subscriber {
    receiver: broadcast::Receiver<Arc<Batch>>,
    /// The number of the entry expected next.
    next: u64,
}

impl Subscriber {
    /// The next batch, with how many entries published before it this
    /// subscriber missed (its queue was full); `None` once the feed is gone.
    pub async fn recv(&mut self) -> Option<(Arc<Batch>, u64)> {
        loop {
            match self.receiver.recv().await {
                Ok(batch) => {
                    let missed = batch.first - self.next;
                    self.next = batch.first + batch.entries.len() as u64;
                    return Some((batch, missed));
                }
                // The next batch says how many entries were missed.
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return None,
            }
        }
    }

    /// [`Self::recv`]'s batches as a stream.
    fn into_stream(self) -> impl Stream<Item = (Arc<Batch>, u64)> {
        stream::unfold(self, |mut subscriber| async move {
            let received = subscriber.recv().await?;
            Some((received, subscriber))
        })
    }
}

/// Stored entries, for `Query` and `Stats` (the collector's store).
#[tonic::async_trait]
pub trait History: Send + Sync {
    /// Up to `limit` entries matching `filter` after position `after` (0 for
    /// the start), and the position of the last one returned.
    async fn query(
        &self,
        filter: &Filter,
        after: u64,
        limit: u32,
    ) -> Result<(Vec<pb::Entry>, u64), Status>;

    async fn stats(&self, filter: &Filter) -> Result<pb::StatsResponse, Status>;
}

/// `guard.v1.AuditService`.
pub struct AuditService {
    pub feed: Feed,
    /// None in guardd, which keeps no queryable store.
    pub history: Option<Arc<dyn History>>,
    /// Counts the entries followers missed (a metric).
    pub subscriber_losses: prometheus_client::metrics::counter::Counter,
}

type FollowStream = Pin<Box<dyn Stream<Item = Result<pb::Entry, Status>> + Send>>;

#[tonic::async_trait]
impl pb::audit_service_server::AuditService for AuditService {
    type FollowStream = FollowStream;

    async fn follow(
        &self,
        request: Request<pb::FollowRequest>,
    ) -> Result<Response<FollowStream>, Status> {
        let filter = Filter::new(request.into_inner().filter.unwrap_or_default())?;
        let losses = self.subscriber_losses.clone();
        let stream = self
            .feed
            .subscribe()
            .into_stream()
            .flat_map(move |(batch, missed)| {
                let mut entries = Vec::new();
                if missed > 0 {
                    losses.inc_by(missed);
                    entries.push(Ok(pb::Entry {
                        entry: Some(pb::entry::Entry::Loss(pb::Loss {
                            records: missed,
                            stage: "subscriber_queue".into(),
                            ..Default::default()
                        })),
                    }));
                }
                entries.extend(
                    batch
                        .entries
                        .iter()
                        .filter(|entry| filter.matches(entry))
                        .map(|entry| Ok(entry.clone())),
                );
                stream::iter(entries)
            });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn query(
        &self,
        request: Request<pb::QueryRequest>,
    ) -> Result<Response<pb::QueryResponse>, Status> {
        let history = self.history()?;
        let request = request.into_inner();
        let filter = Filter::new(request.filter.unwrap_or_default())?;
        let limit = match request.page_size {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let after = match request.page_token.as_str() {
            "" => 0,
            token => token.parse().map_err(|_| {
                Status::invalid_argument("page_token: not a token this server gave")
            })?,
        };
        let (entries, last) = history.query(&filter, after, limit).await?;
        let next_page_token = if entries.len() as u32 == limit {
            last.to_string()
        } else {
            String::new()
        };
        Ok(Response::new(pb::QueryResponse {
            entries,
            next_page_token,
        }))
    }

    async fn stats(
        &self,
        request: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        let history = self.history()?;
        let filter = Filter::new(request.into_inner().filter.unwrap_or_default())?;
        Ok(Response::new(history.stats(&filter).await?))
    }
}

impl AuditService {
    fn history(&self) -> Result<&Arc<dyn History>, Status> {
        self.history.as_ref().ok_or_else(|| {
            Status::unimplemented(
                "guardd keeps no queryable store: query guard-collector, or read guardd's events file",
            )
        })
    }
}

/// A checked [`pb::Filter`].
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub agents: Vec<String>,
    pub sessions: Vec<String>,
    pub hooks: Vec<String>,
    pub verdicts: Vec<Verdict>,
    pub hosts: Vec<String>,
    /// Nanoseconds since the epoch.
    pub since: Option<i64>,
    pub until: Option<i64>,
}

impl Filter {
    pub fn new(filter: pb::Filter) -> Result<Self, Status> {
        let verdicts = filter
            .verdicts
            .iter()
            .map(|v| {
                verdict_of(*v).ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "filter.verdicts: {v} is not a verdict (1 allow, 2 deny, 3 would_deny)"
                    ))
                })
            })
            .collect::<Result<_, _>>()?;
        let since = filter.since.as_ref().map(nanos);
        let until = filter.until.as_ref().map(nanos);
        if let (Some(since), Some(until)) = (since, until)
            && since >= until
        {
            return Err(Status::invalid_argument(
                "filter: `since` must be before `until`",
            ));
        }
        Ok(Self {
            agents: filter.agents,
            sessions: filter.sessions,
            hooks: filter.hooks,
            verdicts,
            hosts: filter.hosts,
            since,
            until,
        })
    }

    /// Whether the filter restricts records beyond host and time (losses
    /// and gaps match such filters regardless: they may hide any record;
    /// checkpoints do not: they belong to the whole stream).
    pub fn selects_records(&self) -> bool {
        !(self.agents.is_empty()
            && self.sessions.is_empty()
            && self.hooks.is_empty()
            && self.verdicts.is_empty())
    }

    /// Whether `entry` passes: every non-empty list must contain the
    /// entry's value.
    pub fn matches(&self, entry: &pb::Entry) -> bool {
        let any = |list: &[String], value: &str| list.is_empty() || list.iter().any(|v| v == value);
        let (host, time) = match &entry.entry {
            Some(pb::entry::Entry::Record(r)) => (&r.host, r.time),
            Some(pb::entry::Entry::Loss(l)) => (&l.host, l.time),
            Some(pb::entry::Entry::Gap(g)) => (&g.host, g.time),
            Some(pb::entry::Entry::Checkpoint(c)) => (&c.host, c.time),
            None => return false,
        };
        let time = time.as_ref().map_or(0, nanos);
        if !any(&self.hosts, host)
            || self.since.is_some_and(|s| time < s)
            || self.until.is_some_and(|u| time >= u)
        {
            return false;
        }
        let r = match &entry.entry {
            Some(pb::entry::Entry::Record(r)) => r,
            Some(pb::entry::Entry::Checkpoint(_)) => return !self.selects_records(),
            _ => return true,
        };
        let session = r.session.as_ref().map_or("", |s| s.id.as_str());
        any(&self.agents, &r.agent)
            && any(&self.sessions, session)
            && any(&self.hooks, &r.hook)
            && (self.verdicts.is_empty()
                || verdict_of(r.verdict).is_some_and(|v| self.verdicts.contains(&v)))
    }
}

/// A verdict's form in the API.
impl From<Verdict> for pb::Verdict {
    fn from(verdict: Verdict) -> Self {
        match verdict {
            Verdict::Allow => pb::Verdict::Allow,
            Verdict::Deny => pb::Verdict::Deny,
            Verdict::WouldDeny => pb::Verdict::WouldDeny,
        }
    }
}

/// The verdict an API message's `verdict` field holds, if it holds one.
pub fn verdict_of(value: i32) -> Option<Verdict> {
    Verdict::ALL
        .into_iter()
        .find(|v| pb::Verdict::from(*v) as i32 == value)
}

/// The entry for one sealed line of a host's events stream: its text and
/// what it says (taken, not copied: a caller that keeps the line clones it).
pub fn entry(host: &str, sealed: String, line: Line, integrity: pb::Integrity) -> pb::Entry {
    let entry = match line {
        Line::Decision(record) => {
            let mut record = to_proto(*record, sealed);
            record.host = host.into();
            record.integrity = integrity as i32;
            pb::entry::Entry::Record(record)
        }
        Line::Loss(loss) => pb::entry::Entry::Loss(pb::Loss {
            records: loss.loss.records,
            stage: loss.loss.stage,
            host: host.into(),
            seq: loss.seq,
            time: Some(timestamp(rfc3339_nanos(&loss.time))),
            json: sealed,
        }),
        Line::Checkpoint(checkpoint) => pb::entry::Entry::Checkpoint(pb::Checkpoint {
            seq: checkpoint.seq,
            time: Some(timestamp(rfc3339_nanos(&checkpoint.time))),
            host: host.into(),
            covers: checkpoint.checkpoint.covers,
            key: checkpoint.checkpoint.key,
            integrity: integrity as i32,
            json: sealed,
        }),
    };
    pb::Entry { entry: Some(entry) }
}

fn to_proto(r: Record, json: String) -> pb::Record {
    pb::Record {
        seq: r.seq,
        time: Some(timestamp(rfc3339_nanos(&r.time))),
        hook: r.hook,
        action: r.action.name().into(),
        verdict: pb::Verdict::from(r.verdict) as i32,
        agent: r.agent,
        profile: r.profile,
        session: r.session.map(SessionRef::into_proto),
        generation: r.generation,
        policy_sha256: r.policy_sha256,
        agent_cgroup: r.agent_cgroup,
        cgroup: r.cgroup,
        pid: r.pid,
        tid: r.tid,
        uid: r.uid,
        comm: r.comm,
        target: r.target,
        file: r.file.map(|f| pb::FileIdentity {
            dev: f.dev,
            ino: f.ino,
        }),
        protocol: r.protocol.unwrap_or_default(),
        rule: r.rule,
        message: r.message.unwrap_or_default(),
        flags: r.flags,
        chain: chain::hex_of(&json).unwrap_or_default().into(),
        host: String::new(),
        integrity: pb::Integrity::Unspecified as i32,
        json,
        process: r.process.map(|p| pb::Process {
            cmdline: p.cmdline,
            exe: p.exe.unwrap_or_default(),
            ancestry: p
                .ancestry
                .into_iter()
                .map(|a| pb::Ancestor {
                    pid: a.pid,
                    comm: a.comm,
                })
                .collect(),
        }),
        redacted: r.redacted,
        statement: r.statement.map(|s| pb::Statement {
            database: s.database,
            server: s.server,
            dbname: s.dbname,
            user: s.user,
            client: s.client,
            classes: s.classes,
            objects: s.objects,
            normalized: s.normalized,
            fingerprint: s.fingerprint,
            monitored: s.monitored,
            rows_changed: s.rows_changed,
            rows_read: s.rows_read,
            bytes_read: s.bytes_read,
            role: s.role,
            masked: s.masked,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::Chain;

    fn record(agent: &str, verdict: pb::Verdict) -> pb::Entry {
        pb::Entry {
            entry: Some(pb::entry::Entry::Record(pb::Record {
                agent: agent.into(),
                hook: "path_unlink".into(),
                verdict: verdict as i32,
                host: "web-1".into(),
                time: Some(timestamp(5_000_000_000)),
                ..Default::default()
            })),
        }
    }

    fn filter(filter: pb::Filter) -> Filter {
        Filter::new(filter).unwrap()
    }

    #[test]
    fn filters_need_every_non_empty_list_to_match() {
        let all = filter(pb::Filter::default());
        assert!(all.matches(&record("coder", pb::Verdict::Allow)));
        let denials_of_coder = filter(pb::Filter {
            agents: vec!["coder".into()],
            verdicts: vec![pb::Verdict::Deny as i32],
            ..Default::default()
        });
        assert!(denials_of_coder.matches(&record("coder", pb::Verdict::Deny)));
        assert!(!denials_of_coder.matches(&record("coder", pb::Verdict::Allow)));
        assert!(!denials_of_coder.matches(&record("other", pb::Verdict::Deny)));
        let by_session = filter(pb::Filter {
            sessions: vec!["s1".into()],
            ..Default::default()
        });
        assert!(!by_session.matches(&record("coder", pb::Verdict::Deny)));
        let other_host = filter(pb::Filter {
            hosts: vec!["db-1".into()],
            ..Default::default()
        });
        assert!(!other_host.matches(&record("coder", pb::Verdict::Deny)));
    }

    #[test]
    fn time_ranges_are_half_open_and_gaps_match_record_filters() {
        let window = |since, until| {
            filter(pb::Filter {
                since: Some(timestamp(since)),
                until: Some(timestamp(until)),
                agents: vec!["coder".into()],
                ..Default::default()
            })
        };
        assert!(window(5_000_000_000, 6_000_000_000).matches(&record("coder", pb::Verdict::Deny)));
        assert!(!window(4_000_000_000, 5_000_000_000).matches(&record("coder", pb::Verdict::Deny)));
        let gap = pb::Entry {
            entry: Some(pb::entry::Entry::Gap(pb::Gap {
                host: "web-1".into(),
                first_seq: 3,
                last_seq: 4,
                time: Some(timestamp(5_500_000_000)),
            })),
        };
        assert!(window(5_000_000_000, 6_000_000_000).matches(&gap));
        assert!(!window(6_000_000_000, 7_000_000_000).matches(&gap));
    }

    #[test]
    fn bad_filters_are_invalid_arguments() {
        let bad_verdict = pb::Filter {
            verdicts: vec![42],
            ..Default::default()
        };
        assert_eq!(
            Filter::new(bad_verdict).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let backwards = pb::Filter {
            since: Some(timestamp(2)),
            until: Some(timestamp(1)),
            ..Default::default()
        };
        assert_eq!(
            Filter::new(backwards).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }

    fn sealed_entry(seq: u64) -> pb::Entry {
        let mut chain = Chain::default();
        while chain.next_seq() < seq {
            chain.seal(b"{}".to_vec());
        }
        let json = format!(
            r#"{{"seq":{seq},"time":"2026-11-22T21:45:01.5Z","hook":"path_unlink","action":"unlink","verdict":"deny","agent":"coder","profile":"coding","generation":1,"policy_sha256":"","agent_cgroup":1,"cgroup":1,"pid":1,"tid":1,"uid":0,"comm":"rm","target":"/srv/data/x","rule":"keep"}}"#
        );
        let (sealed, _) = chain.seal(json.into_bytes());
        let sealed = String::from_utf8(sealed).unwrap();
        let line = Line::parse(&sealed).unwrap();
        entry("web-1", sealed, line, pb::Integrity::Unspecified)
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_is_told_what_it_missed() {
        use pb::audit_service_server::AuditService as _;
        let service = AuditService {
            feed: Feed::default(),
            history: None,
            subscriber_losses: Default::default(),
        };
        let mut stream = service
            .follow(Request::new(pb::FollowRequest::default()))
            .await
            .unwrap()
            .into_inner();
        let entry = sealed_entry(1);
        // A batch at a time: the queue holds the last SUBSCRIBER_QUEUE.
        for _ in 0..(SUBSCRIBER_QUEUE + 10) {
            service.feed.publish(vec![entry.clone(); 3]);
        }
        let first = stream.next().await.unwrap().unwrap().entry.unwrap();
        assert_eq!(
            first,
            pb::entry::Entry::Loss(pb::Loss {
                records: 30,
                stage: "subscriber_queue".into(),
                ..Default::default()
            })
        );
        let Some(pb::entry::Entry::Record(next)) = stream.next().await.unwrap().unwrap().entry
        else {
            panic!("a record after the loss")
        };
        assert_eq!(next.verdict, pb::Verdict::Deny as i32);
        assert_eq!(next.time.unwrap().nanos, 500_000_000);
        assert_eq!(next.host, "web-1");
        assert_eq!(next.chain.len(), 64);
        assert!(next.json.starts_with("{\"seq\":1,"));
        assert_eq!(
            service.subscriber_losses.get(),
            30,
            "the metric counts entries, not batches"
        );
    }

    #[tokio::test]
    async fn a_subscriber_that_keeps_up_gets_every_entry_in_order() {
        let feed = Feed::default();
        let mut subscriber = feed.subscribe();
        let entries: Vec<_> = (1..=150).map(sealed_entry).collect();
        feed.publish(entries[..100].to_vec());
        feed.publish(entries[100..].to_vec());
        let mut received = Vec::new();
        while received.len() < entries.len() {
            let (batch, missed) = subscriber.recv().await.unwrap();
            assert_eq!(missed, 0);
            assert!(batch.entries.len() <= FEED_BATCH);
            assert_eq!(batch.first, received.len() as u64);
            received.extend(batch.entries.iter().cloned());
        }
        assert_eq!(received, entries);
        drop(feed);
        assert!(subscriber.recv().await.is_none(), "the feed is gone");
    }

    #[tokio::test]
    async fn guardd_answers_queries_with_unimplemented() {
        use pb::audit_service_server::AuditService as _;
        let service = AuditService {
            feed: Feed::default(),
            history: None,
            subscriber_losses: Default::default(),
        };
        let status = service
            .query(Request::new(pb::QueryRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unimplemented);
    }
}
