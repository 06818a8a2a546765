//! Routing: an agent's TCP connections to a database its profile guards go
//! to the statement guard instead (`connect(2)` rewritten before the
//! kernel connects), so `psql -h db.internal` reaches the guard unchanged.
//! cgroup socket-address programs attached to Guard's root cgroup: they run
//! for agents only. The LSM's `socket_connect` sees the server's address
//! first and lets a routed destination through (`network.rs`).

use aya_ebpf::{bindings::bpf_sock_addr, macros::cgroup_sock_addr, programs::SockAddrContext};
use guard_common::{Route, RouteKey};

use crate::{
    agent::{Agent, current_agent},
    maps::ROUTES,
};

/// Return values of a connect program: go on (with the address as it now
/// is), or fail the call with `EPERM`.
const PROCEED: i32 = 1;
const REFUSE: i32 = 0;

const SOCK_STREAM: u32 = 1;

/// The guard's address for a connection `agent` makes to `addr` (IPv6 or
/// IPv4-mapped) and `port`, if its profile guards that database.
#[inline(always)]
pub(crate) fn route_of(agent: &Agent, addr: [u8; 16], port: u16) -> Option<Route> {
    let key = RouteKey {
        profile: agent.entry.profile,
        port,
        _pad: 0,
        addr,
    };
    // SAFETY: the value is a plain Copy struct, copied out at once.
    unsafe { ROUTES.get(&key) }.copied()
}

fn is_ipv4_mapped(addr: &[u8; 16]) -> bool {
    addr[..10] == [0; 10] && addr[10] == 0xff && addr[11] == 0xff
}

/// A port as the context holds it: network byte order in the low 16 bits.
fn port_of(user_port: u32) -> u16 {
    u16::from_be(user_port as u16)
}

fn user_port(port: u16) -> u32 {
    u32::from(port.to_be())
}

/// The context's destination, for an agent's stream socket, and its route.
#[inline(always)]
fn routed(sa: &bpf_sock_addr, addr: [u8; 16]) -> Option<Route> {
    if sa.type_ != SOCK_STREAM {
        return None;
    }
    let agent = current_agent()?;
    route_of(&agent, addr, port_of(sa.user_port))
}

#[cgroup_sock_addr(connect4)]
#[inline(always)]
fn route_connect4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel passes a valid context for the program's run.
    let sa = unsafe { &mut *ctx.sock_addr };
    let mut addr = [0u8; 16];
    addr[10] = 0xff;
    addr[11] = 0xff;
    // The address is in network byte order: its bytes as they lie.
    addr[12..].copy_from_slice(&sa.user_ip4.to_ne_bytes());
    match routed(sa, addr) {
        None => PROCEED,
        Some(route) if is_ipv4_mapped(&route.addr) => {
            let [_, _, _, _, _, _, _, _, _, _, _, _, a, b, c, d] = route.addr;
            sa.user_ip4 = u32::from_ne_bytes([a, b, c, d]);
            sa.user_port = user_port(route.port);
            PROCEED
        }
        // The guard listens on IPv6 only, which an IPv4 socket cannot
        // reach: the connection fails rather than skip the guard.
        Some(_) => REFUSE,
    }
}

#[cgroup_sock_addr(connect6)]
#[inline(always)]
fn route_connect6(ctx: SockAddrContext) -> i32 {
    // SAFETY: as above.
    let sa = unsafe { &mut *ctx.sock_addr };
    let mut addr = [0u8; 16];
    for (i, word) in sa.user_ip6.iter().enumerate() {
        addr[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
    let Some(route) = routed(sa, addr) else {
        return PROCEED;
    };
    // An IPv4 guard is reached as `::ffff:a.b.c.d` (a dual-stack socket;
    // an IPv6-only one then fails to connect, and skips nothing).
    for (i, word) in sa.user_ip6.iter_mut().enumerate() {
        let b = &route.addr[i * 4..i * 4 + 4];
        *word = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
    }
    sa.user_port = user_port(route.port);
    PROCEED
}
