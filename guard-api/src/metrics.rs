//! Serving Prometheus metrics as OpenMetrics text on `GET /metrics`, for
//! guardd and guard-collector, which each define their own.

use std::{convert::Infallible, sync::Arc};

use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Bytes, header::CONTENT_TYPE};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    registry::Registry,
};
use tokio::net::TcpListener;
use tracing::warn;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub stage: String,
}

pub trait Exposition: Send + Sync + 'static {
    fn registry(&self) -> &Registry;
}

/// Serves `metrics` on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<dyn Exposition>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => return,
        };
        let stream = match accepted {
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
    use prometheus_client::metrics::{counter::Counter, family::Family};

    use super::*;

    struct Lost(Registry, Family<StageLabels, Counter>);

    impl Exposition for Lost {
        fn registry(&self) -> &Registry {
            &self.0
        }
    }

    #[test]
    fn metrics_encode_with_labels() {
        let mut registry = Registry::with_prefix("guard");
        let lost = Family::<StageLabels, Counter>::default();
        registry.register("records_lost", "Records lost", lost.clone());
        let metrics = Lost(registry, lost);
        metrics
            .1
            .get_or_create(&StageLabels {
                stage: "ring_buffer".into(),
            })
            .inc();
        let request = Request::get("/metrics").body(()).unwrap();
        let response = respond(&request, metrics.registry());
        assert_eq!(response.status(), StatusCode::OK);
        let mut text = String::new();
        encode(&mut text, metrics.registry()).unwrap();
        assert!(
            text.contains(r#"guard_records_lost_total{stage="ring_buffer"} 1"#),
            "{text}"
        );
        let other = Request::get("/").body(()).unwrap();
        assert_eq!(
            respond(&other, metrics.registry()).status(),
            StatusCode::NOT_FOUND
        );
    }
}
