//! Who sent a request to the local API, from the socket's peer credentials
//! as they were when the connection was accepted.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::UnixStream,
};
use tonic::transport::server::Connected;

use super::approvals;

/// A request's caller.
pub(super) struct Caller {
    pub(super) pid: i32,
    pub(super) uid: u32,
    /// Inside Guard's root (or not identifiable): may only read the status
    /// of its own sessions, validate policies, start sub-agent sessions and
    /// list its own tickets.
    pub(super) agent: bool,
}

impl Caller {
    /// The caller as the approver of a ticket.
    pub(super) fn approver(&self) -> approvals::Approver {
        approvals::Approver {
            pid: self.pid,
            uid: self.uid,
        }
    }
}

/// The peer of a connection, as seen when it was accepted.
#[derive(Clone, Copy, Debug)]
pub(super) struct Peer {
    pub(super) pid: i32,
    pub(super) uid: u32,
    /// Whether the peer was an agent then. A caller that exits before its
    /// request is handled (its pid may be reused by then) still counts as
    /// one.
    pub(super) agent_at_accept: bool,
}

/// An accepted connection to the local API, carrying its [`Peer`] to each
/// request (tonic puts it in the request's extensions).
pub(super) struct Connection {
    stream: UnixStream,
    peer: Option<Peer>,
}

impl Connection {
    /// `is_agent` says whether a pid is an agent's.
    pub(super) fn accept(stream: UnixStream, is_agent: impl Fn(i32) -> bool) -> Self {
        let peer = stream.peer_cred().ok().map(|cred| {
            let pid = cred.pid().unwrap_or(0);
            Peer {
                pid,
                uid: cred.uid(),
                agent_at_accept: is_agent(pid),
            }
        });
        Self { stream, peer }
    }
}

impl Connected for Connection {
    type ConnectInfo = Option<Peer>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.peer
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
