//! The gRPC audit API (`proto/guard/v1/audit.proto`): a live feed of the
//! records guardd writes, with server-side filters. Every subscriber has its
//! own bounded queue; one that falls behind is told how many records it
//! missed and never slows the record writer.

use std::{pin::Pin, sync::Arc, time::SystemTime};

use tokio::sync::broadcast;
use tokio_stream::{
    Stream, StreamExt as _,
    wrappers::{BroadcastStream, errors::BroadcastStreamRecvError},
};
use tonic::{Request, Response, Status};

use crate::events::Record;

/// Generated from the proto.
#[allow(clippy::large_enum_variant)] // a oneof of a record or a loss count
pub mod pb {
    tonic::include_proto!("guard.v1");
}

/// Records each subscriber may fall behind by before it loses some.
pub const SUBSCRIBER_QUEUE: usize = 4096;

/// A written record and its chain link, as the feed sends it.
#[derive(Debug)]
pub struct Sealed {
    pub record: Record,
    pub chain: String,
}

/// The record feed: the writer publishes, each `Follow` call subscribes.
#[derive(Clone)]
pub struct Feed {
    sender: broadcast::Sender<Arc<Sealed>>,
}

impl Default for Feed {
    fn default() -> Self {
        Self {
            sender: broadcast::channel(SUBSCRIBER_QUEUE).0,
        }
    }
}

impl Feed {
    /// Publishes a record to the current subscribers (none is fine).
    pub fn publish(&self, sealed: Sealed) {
        let _ = self.sender.send(Arc::new(sealed));
    }
}

/// `guard.v1.AuditService`.
pub struct AuditService {
    pub feed: Feed,
}

type FollowStream = Pin<Box<dyn Stream<Item = Result<pb::FollowResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::audit_service_server::AuditService for AuditService {
    type FollowStream = FollowStream;

    async fn follow(
        &self,
        request: Request<pb::FollowRequest>,
    ) -> Result<Response<FollowStream>, Status> {
        let filter = request.into_inner().filter.unwrap_or_default();
        for verdict in &filter.verdicts {
            if !matches!(
                pb::Verdict::try_from(*verdict),
                Ok(pb::Verdict::Allow | pb::Verdict::Deny | pb::Verdict::WouldDeny)
            ) {
                return Err(Status::invalid_argument(format!(
                    "filter.verdicts: {verdict} is not a verdict (1 allow, 2 deny, 3 would_deny)"
                )));
            }
        }
        let stream = BroadcastStream::new(self.feed.sender.subscribe()).filter_map(move |item| {
            let event = match item {
                Ok(sealed) => {
                    let record = to_proto(&sealed);
                    matches(&filter, &record)
                        .then_some(pb::follow_response::Event::Record(record))?
                }
                Err(BroadcastStreamRecvError::Lagged(missed)) => {
                    pb::follow_response::Event::Loss(pb::Loss {
                        records: missed,
                        stage: "subscriber_queue".into(),
                    })
                }
            };
            Some(Ok(pb::FollowResponse { event: Some(event) }))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Whether `record` passes `filter`: every non-empty list must contain the
/// record's value.
pub fn matches(filter: &pb::Filter, record: &pb::Record) -> bool {
    let any = |list: &[String], value: &str| list.is_empty() || list.iter().any(|v| v == value);
    let session = record.session.as_ref().map_or("", |s| s.id.as_str());
    any(&filter.agents, &record.agent)
        && any(&filter.sessions, session)
        && any(&filter.hooks, &record.hook)
        && (filter.verdicts.is_empty() || filter.verdicts.contains(&record.verdict))
}

pub fn verdict(name: &str) -> pb::Verdict {
    match name {
        "allow" => pb::Verdict::Allow,
        "deny" => pb::Verdict::Deny,
        "would_deny" => pb::Verdict::WouldDeny,
        _ => pb::Verdict::Unspecified,
    }
}

fn to_proto(sealed: &Sealed) -> pb::Record {
    let r = &sealed.record;
    let time = humantime::parse_rfc3339(&r.time)
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| prost_types::Timestamp {
            seconds: d.as_secs() as i64,
            nanos: d.subsec_nanos() as i32,
        });
    pb::Record {
        seq: r.seq,
        time,
        hook: r.hook.into(),
        action: r.action.into(),
        verdict: verdict(r.verdict) as i32,
        agent: r.agent.clone(),
        profile: r.profile.clone(),
        session: r.session.as_ref().map(|s| pb::Session {
            id: s.session.clone(),
            uid: s.user.uid,
            user: s.user.name.clone().unwrap_or_default(),
            login_uid: s.user.login_uid,
            labels: s.labels.clone().into_iter().collect(),
            parent: s.parent_session.clone().unwrap_or_default(),
        }),
        generation: r.generation,
        policy_sha256: r.policy_sha256.clone(),
        agent_cgroup: r.agent_cgroup,
        cgroup: r.cgroup,
        pid: r.pid,
        tid: r.tid,
        uid: r.uid,
        comm: r.comm.clone(),
        target: r.target.clone(),
        file: r.file.as_ref().map(|f| pb::FileIdentity {
            dev: f.dev,
            ino: f.ino,
        }),
        protocol: r.protocol.unwrap_or_default().into(),
        rule: r.rule.clone(),
        message: r.message.clone().unwrap_or_default(),
        flags: r.flags.iter().map(|f| f.to_string()).collect(),
        chain: sealed.chain.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(agent: &str, verdict: pb::Verdict) -> pb::Record {
        pb::Record {
            agent: agent.into(),
            hook: "path_unlink".into(),
            verdict: verdict as i32,
            ..Default::default()
        }
    }

    #[test]
    fn filters_need_every_non_empty_list_to_match() {
        let all = pb::Filter::default();
        assert!(matches(&all, &record("coder", pb::Verdict::Allow)));
        let denials_of_coder = pb::Filter {
            agents: vec!["coder".into()],
            verdicts: vec![pb::Verdict::Deny as i32],
            ..Default::default()
        };
        assert!(matches(
            &denials_of_coder,
            &record("coder", pb::Verdict::Deny)
        ));
        assert!(!matches(
            &denials_of_coder,
            &record("coder", pb::Verdict::Allow)
        ));
        assert!(!matches(
            &denials_of_coder,
            &record("other", pb::Verdict::Deny)
        ));
        let by_session = pb::Filter {
            sessions: vec!["s1".into()],
            ..Default::default()
        };
        assert!(!matches(&by_session, &record("coder", pb::Verdict::Deny)));
    }

    fn sealed(seq: u64) -> Sealed {
        Sealed {
            record: Record {
                seq,
                time: "2026-11-22T21:45:01.5Z".into(),
                hook: "path_unlink",
                action: "unlink",
                verdict: "deny",
                agent: "coder".into(),
                profile: "coding".into(),
                session: None,
                generation: 1,
                policy_sha256: String::new(),
                agent_cgroup: 1,
                cgroup: 1,
                pid: 1,
                tid: 1,
                uid: 0,
                comm: "rm".into(),
                target: "/srv/data/x".into(),
                file: None,
                protocol: None,
                rule: "keep".into(),
                message: None,
                flags: vec![],
            },
            chain: "ab".repeat(32),
        }
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_is_told_what_it_missed() {
        use pb::audit_service_server::AuditService as _;
        let service = AuditService {
            feed: Feed::default(),
        };
        let mut stream = service
            .follow(Request::new(pb::FollowRequest::default()))
            .await
            .unwrap()
            .into_inner();
        for seq in 1..=(SUBSCRIBER_QUEUE as u64 + 10) {
            service.feed.publish(sealed(seq));
        }
        let first = stream.next().await.unwrap().unwrap().event.unwrap();
        assert_eq!(
            first,
            pb::follow_response::Event::Loss(pb::Loss {
                records: 10,
                stage: "subscriber_queue".into()
            })
        );
        let Some(pb::follow_response::Event::Record(next)) =
            stream.next().await.unwrap().unwrap().event
        else {
            panic!("a record after the loss")
        };
        assert_eq!(next.seq, 11, "the oldest record still queued");
        assert_eq!(next.verdict, pb::Verdict::Deny as i32);
        assert_eq!(next.time.unwrap().nanos, 500_000_000);
    }

    #[tokio::test]
    async fn an_unknown_verdict_in_a_filter_is_invalid_argument() {
        use pb::audit_service_server::AuditService as _;
        let service = AuditService {
            feed: Feed::default(),
        };
        let request = pb::FollowRequest {
            filter: Some(pb::Filter {
                verdicts: vec![42],
                ..Default::default()
            }),
        };
        let Err(status) = service.follow(Request::new(request)).await else {
            panic!("refused")
        };
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    }
}
