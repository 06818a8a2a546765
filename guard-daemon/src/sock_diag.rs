//! Who owns a TCP socket on this host, from the kernel's socket
//! diagnostics (`NETLINK_SOCK_DIAG`): the cgroup of the process that
//! created it and its user. The statement guard's connections are tied to
//! sessions this way, never by anything the client says.

use std::{io, net::SocketAddr};

use netlink_packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags, nlas::Nla},
};
use netlink_sys::{Socket, protocols::NETLINK_SOCK_DIAG};

/// `INET_DIAG_CGROUP_ID` (Linux 5.7): the socket's cgroup v2 id, sent with
/// every answer.
const INET_DIAG_CGROUP_ID: u16 = 21;

/// The owner of a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    /// The cgroup of the process that created the socket.
    pub cgroup: u64,
    pub uid: u32,
}

/// The owner of the TCP socket on this host whose own address is `local`
/// and whose peer is `remote`; `None` when no such socket is here (the
/// peer is another host, or the connection is gone).
pub fn tcp_owner(local: SocketAddr, remote: SocketAddr) -> io::Result<Option<Owner>> {
    let (local, remote) = (unmapped(local), unmapped(remote));
    if local.is_ipv4() != remote.is_ipv4() {
        return Ok(None);
    }
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&netlink_sys::SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    // One socket, named by its addresses (not a dump of them all).
    header.flags = NLM_F_REQUEST;
    let request = InetRequest {
        family: if local.is_ipv4() { AF_INET } else { AF_INET6 },
        protocol: IPPROTO_TCP,
        extensions: ExtensionFlags::empty(),
        states: StateFlags::all(),
        socket_id: SocketId {
            source_port: local.port(),
            destination_port: remote.port(),
            source_address: local.ip(),
            destination_address: remote.ip(),
            interface_id: 0,
            // INET_DIAG_NOCOOKIE: any socket with these addresses.
            cookie: [0xff; 8],
        },
    };
    let mut packet = NetlinkMessage::new(header, SockDiagMessage::InetRequest(request).into());
    packet.finalize();
    let mut bytes = vec![0; packet.buffer_len()];
    packet.serialize(&mut bytes);
    socket.send(&bytes, 0)?;
    let mut reply = vec![0; 8192];
    let size = socket.recv(&mut &mut reply[..], 0)?;
    let message = NetlinkMessage::<SockDiagMessage>::deserialize(&reply[..size])
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    match message.payload {
        NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
            let cgroup = response.nlas.iter().find_map(|nla| match nla {
                Nla::Other(other)
                    if netlink_packet_core::Nla::kind(other) == INET_DIAG_CGROUP_ID =>
                {
                    let mut value = [0u8; 8];
                    (netlink_packet_core::Nla::value_len(other) == 8).then(|| {
                        netlink_packet_core::Nla::emit_value(other, &mut value);
                        u64::from_ne_bytes(value)
                    })
                }
                _ => None,
            });
            let cgroup = cgroup.ok_or_else(|| {
                io::Error::other(
                    "the kernel did not say the socket's cgroup (Linux 5.7 or later does)",
                )
            })?;
            Ok(Some(Owner {
                cgroup,
                uid: response.header.uid,
            }))
        }
        NetlinkPayload::Error(e) if e.code.map(|c| -c.get()) == Some(libc::ENOENT) => Ok(None),
        NetlinkPayload::Error(e) => Err(e.to_io()),
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected sock_diag answer: {other:?}"),
        )),
    }
}

/// Whether the kernel answers for TCP sockets: it finds a loopback
/// connection of this process. (`inet_diag` and `tcp_diag` may be modules a
/// host without modprobe has not loaded.)
pub fn check() -> io::Result<()> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let client = std::net::TcpStream::connect(listener.local_addr()?)?;
    match tcp_owner(client.local_addr()?, client.peer_addr()?)? {
        Some(_) => Ok(()),
        None => Err(io::Error::other(
            "the kernel's socket diagnostics do not answer for TCP (are the inet_diag and tcp_diag modules loaded?)",
        )),
    }
}

/// An IPv4 address that reached an IPv6 socket as `::ffff:a.b.c.d`, as
/// the IPv4 address it is.
fn unmapped(address: SocketAddr) -> SocketAddr {
    match address {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => address,
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    /// This process's own cgroup id and uid come back for its own socket;
    /// a socket that is not there is `None`.
    #[test]
    fn finds_the_owner_of_a_loopback_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (local, remote) = (client.local_addr().unwrap(), client.peer_addr().unwrap());
        let owner = tcp_owner(local, remote)
            .unwrap()
            .expect("the socket is here");
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let path = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
        let mount = crate::cgroup::cgroup2_mount().unwrap();
        let id = std::fs::metadata(mount.join(path.trim_start_matches('/')))
            .unwrap()
            .ino();
        assert_eq!(owner.cgroup, id);
        assert_eq!(owner.uid, unsafe { libc::geteuid() });
        // The other end of the same connection is the listener's.
        assert!(tcp_owner(remote, local).unwrap().is_some());
        check().unwrap();
        drop(client);
        let gone = SocketAddr::new(local.ip(), 1);
        assert_eq!(tcp_owner(gone, remote).unwrap(), None);
    }
}
