//! The gRPC server guardd and guard-collector share (the audit API,
//! standard health checking and server reflection), and the client side of
//! guardd's local API socket.

use std::path::Path;

use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic_health::server::HealthReporter;

use crate::{
    audit::AuditService,
    pb,
    tls::{self, Role},
};

/// The protos' descriptors, for reflection.
const DESCRIPTORS: &[u8] = tonic::include_file_descriptor_set!("guard_descriptors");

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

/// A channel to a gRPC server on a unix socket (guardd's local API).
pub async fn connect_unix(path: &Path) -> anyhow::Result<tonic::transport::Channel> {
    let socket = path.to_owned();
    // The URI is required but unused: the connector dials the socket.
    let channel = crate::http2::endpoint("http://localhost".into())?
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(&socket).await?;
                check_served_by_root(&stream, &socket)?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot reach guardd at {}: {} (is guardd running? `--socket` or GUARD_SOCKET name another socket)",
                path.display(),
                crate::error_chain(&e)
            )
        })?;
    Ok(channel)
}

/// The services every Guard gRPC server offers: health checking, server
/// reflection and the audit API (for readers, over TLS). A server with more (the collector's
/// ingest) adds them to the routes and marks them serving on the reporter.
pub async fn routes(audit: AuditService) -> anyhow::Result<(Routes, HealthReporter)> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<pb::audit_service_server::AuditServiceServer<AuditService>>()
        .await;
    // Both versions of reflection: generic clients speak one or the other
    // (Python's grpcio-reflection only v1alpha).
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(DESCRIPTORS)
    };
    let routes = Routes::new(health_service)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .add_service(
            pb::audit_service_server::AuditServiceServer::with_interceptor(
                audit,
                tls::require(Role::Reader, "query or follow records"),
            ),
        );
    Ok((routes, health))
}

/// How long calls in progress have to finish after shutdown. A client
/// following the feed, or a guardd shipping to a collector, keeps its call
/// open for as long as it can: such calls are cut after this.
pub const GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// Serves `routes` on the connections of [`tls::incoming`] until
/// `shutdown`, then lets the calls in progress finish, for up to [`GRACE`].
pub async fn serve(
    incoming: tls::Incoming,
    routes: Routes,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let server = crate::http2::server()
        .add_routes(routes)
        .serve_with_incoming_shutdown(
            ReceiverStream::new(incoming),
            shutdown.clone().cancelled_owned(),
        );
    let cut = async {
        shutdown.cancelled().await;
        tokio::time::sleep(GRACE).await;
    };
    tokio::select! {
        served = server => served?,
        () = cut => tracing::warn!("calls still open {GRACE:?} after shutdown are cut"),
    }
    Ok(())
}
