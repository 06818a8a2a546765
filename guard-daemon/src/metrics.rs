//! Prometheus metrics of guardd and guard-collector, served as OpenMetrics
//! text on `GET /metrics`.

use std::{convert::Infallible, sync::Arc};

use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Bytes, header::CONTENT_TYPE};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::net::TcpListener;
use tracing::warn;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub hook: String,
    pub verdict: String,
    pub agent: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NameLabels {
    pub name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

/// guardd's metrics.
pub struct DaemonMetrics {
    registry: Registry,
    pub decisions: Family<DecisionLabels, Counter>,
    pub lost: Family<StageLabels, Counter>,
    pub kernel: Family<NameLabels, Gauge>,
    pub enforcing: Gauge,
    pub generation: Gauge,
    pub written_seq: Gauge,
    pub acked_seq: Gauge,
}

impl Default for DaemonMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("guard");
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "decisions",
            "Decisions recorded, by hook, verdict and agent",
            decisions.clone(),
        );
        let lost = Family::<StageLabels, Counter>::default();
        registry.register(
            "records_lost",
            "Records lost, by stage: ring_buffer, denials_ring_buffer, decode, events_file, torn_line, replaced_programs, subscriber_queue, ocsf_file (the OCSF copy only)",
            lost.clone(),
        );
        let kernel = Family::<NameLabels, Gauge>::default();
        registry.register(
            "kernel_counter",
            "The BPF programs' counters (records_made, events_lost, denials_lost, unrecorded_denials, hook_errors, error_denials, walk_too_deep)",
            kernel.clone(),
        );
        let enforcing = Gauge::default();
        registry.register(
            "enforcing",
            "1 when every hook is attached and the readiness canary was denied",
            enforcing.clone(),
        );
        let generation = Gauge::default();
        registry.register(
            "policy_generation",
            "The policy generation in force",
            generation.clone(),
        );
        let written_seq = Gauge::default();
        registry.register(
            "records_written_seq",
            "Sequence number of the last record written to the events stream",
            written_seq.clone(),
        );
        let acked_seq = Gauge::default();
        registry.register(
            "records_acked_seq",
            "Sequence number up to which the collector acknowledged the stream (shipping lag: written - acked)",
            acked_seq.clone(),
        );
        Self {
            registry,
            decisions,
            lost,
            kernel,
            enforcing,
            generation,
            written_seq,
            acked_seq,
        }
    }
}

/// guard-collector's metrics.
pub struct CollectorMetrics {
    registry: Registry,
    pub entries: Family<KindLabels, Counter>,
    pub broken: Counter,
    pub duplicates: Counter,
    pub hosts_connected: Gauge,
    pub store_errors: Counter,
    pub lost: Family<StageLabels, Counter>,
}

impl Default for CollectorMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("guard_collector");
        let entries = Family::<KindLabels, Counter>::default();
        registry.register(
            "entries",
            "Entries stored, by kind: record, loss, gap",
            entries.clone(),
        );
        let broken = Counter::default();
        registry.register(
            "broken_links",
            "Records stored whose chain link did not verify",
            broken.clone(),
        );
        let duplicates = Counter::default();
        registry.register(
            "duplicates",
            "Lines received that were already stored (resends), skipped",
            duplicates.clone(),
        );
        let hosts_connected = Gauge::default();
        registry.register(
            "hosts_connected",
            "Hosts shipping now",
            hosts_connected.clone(),
        );
        let store_errors = Counter::default();
        registry.register(
            "store_errors",
            "Batches the store refused (the host resends them)",
            store_errors.clone(),
        );
        let lost = Family::<StageLabels, Counter>::default();
        registry.register(
            "records_lost",
            "Entries live followers missed (stage subscriber_queue)",
            lost.clone(),
        );
        Self {
            registry,
            entries,
            broken,
            duplicates,
            hosts_connected,
            store_errors,
            lost,
        }
    }
}

pub trait Exposition: Send + Sync + 'static {
    fn registry(&self) -> &Registry;
}

impl Exposition for DaemonMetrics {
    fn registry(&self) -> &Registry {
        &self.registry
    }
}

impl Exposition for CollectorMetrics {
    fn registry(&self) -> &Registry {
        &self.registry
    }
}

/// Serves `metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<dyn Exposition>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!("metrics: {e}");
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<_>| {
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(respond(&request, metrics.registry())) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}

fn respond<B>(request: &Request<B>, registry: &Registry) -> Response<Full<Bytes>> {
    let reply = |status, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response
    };
    if request.uri().path() != "/metrics" {
        return reply(StatusCode::NOT_FOUND, "see /metrics\n".into());
    }
    let mut text = String::new();
    if let Err(e) = encode(&mut text, registry) {
        return reply(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"));
    }
    let mut response = reply(StatusCode::OK, text);
    response.headers_mut().insert(
        CONTENT_TYPE,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
            .parse()
            .expect("a valid header"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_encode_with_labels() {
        let metrics = DaemonMetrics::default();
        metrics
            .decisions
            .get_or_create(&DecisionLabels {
                hook: "path_unlink".into(),
                verdict: "deny".into(),
                agent: "coder".into(),
            })
            .inc();
        metrics.enforcing.set(1);
        let request = Request::get("/metrics").body(()).unwrap();
        let response = respond(&request, metrics.registry());
        assert_eq!(response.status(), StatusCode::OK);
        let mut text = String::new();
        encode(&mut text, metrics.registry()).unwrap();
        assert!(
            text.contains(
                r#"guard_decisions_total{hook="path_unlink",verdict="deny",agent="coder"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains("guard_enforcing 1"), "{text}");
        let other = Request::get("/").body(()).unwrap();
        assert_eq!(
            respond(&other, metrics.registry()).status(),
            StatusCode::NOT_FOUND
        );
    }
}
