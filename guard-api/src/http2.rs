//! The HTTP/2 settings of Guard's gRPC connections, at both ends.

/// Flow-control windows of a stream and of a connection. The default
/// (64 KiB) holds about a hundred record lines, so a shipping host, or a
/// query's page, would wait for a window update every hundred lines.
pub const STREAM_WINDOW: u32 = 4 << 20;
pub const CONNECTION_WINDOW: u32 = 8 << 20;

/// A client endpoint for `uri`.
pub fn endpoint(uri: String) -> anyhow::Result<tonic::transport::Endpoint> {
    Ok(tonic::transport::Endpoint::try_from(uri)?
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW))
}

/// A server.
pub fn server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
}
