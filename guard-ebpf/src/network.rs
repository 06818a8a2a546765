//! Network hooks: connecting or sending to a destination.

use aya_ebpf::{macros::lsm, programs::LsmContext};
use guard_common::{
    Event, ExceptionKey, NetKey, NetRuleSet, RuleRef, agent_flag, hook, lsm, protocol,
};

use crate::{
    agent::Agent,
    decision::{Decision, Global, decide_hook, decided, scratch, set_path},
    guardrails,
    kernel::{self, Kptr, ReadError},
    maps::{DATABASE_SOCKETS, HOST_ADDRS, NET_RULES},
    routing,
};

const AF_UNIX: u16 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const SOCK_STREAM: u16 = 1;
const SOCK_DGRAM: u16 = 2;

/// A destination read from a `struct sockaddr`.
struct Destination {
    family: u16,
    port: u16,
    /// IPv6, or IPv4-mapped IPv6.
    addr: [u8; 16],
}

/// Reads an AF_INET or AF_INET6 sockaddr (UAPI layouts). Other families are
/// not network destinations Guard decides on.
fn read_destination(sockaddr: Kptr, len: i32) -> Result<Option<Destination>, ReadError> {
    if sockaddr.is_null() || len < 2 {
        return Ok(None);
    }
    let family: u16 = kernel::read(sockaddr, 0)?;
    match family {
        AF_INET if len >= 8 => {
            // struct sockaddr_in: family, port (BE), address.
            let raw: [u8; 8] = kernel::read(sockaddr, 0)?;
            let mut addr = [0u8; 16];
            addr[10] = 0xff;
            addr[11] = 0xff;
            addr[12..16].copy_from_slice(&raw[4..8]);
            Ok(Some(Destination {
                family,
                port: u16::from_be_bytes([raw[2], raw[3]]),
                addr,
            }))
        }
        AF_INET6 if len >= 24 => {
            // struct sockaddr_in6: family, port (BE), flowinfo, address.
            let raw: [u8; 24] = kernel::read(sockaddr, 0)?;
            let mut addr = [0u8; 16];
            addr.copy_from_slice(&raw[8..24]);
            Ok(Some(Destination {
                family,
                port: u16::from_be_bytes([raw[2], raw[3]]),
                addr,
            }))
        }
        _ => Ok(None),
    }
}

fn socket_protocol(sock: Kptr) -> Result<u16, ReadError> {
    Ok(match kernel::socket_type(sock)? {
        SOCK_STREAM => protocol::TCP,
        SOCK_DGRAM => protocol::UDP,
        _ => protocol::ANY,
    })
}

/// The rule that decides on a destination: a hostname rule on the exact
/// address (the most specific there is), else the first rule of the longest
/// matching prefix (with the rules it inherits from shorter prefixes) whose
/// port range and protocol match.
fn find_net_rule(agent: &Agent, dest: &Destination, proto: u16) -> Option<RuleRef> {
    let key = NetKey {
        profile: agent.entry.profile.to_be_bytes(),
        addr: dest.addr,
    };
    if agent.entry.flags & agent_flag::HOST_RULES != 0 {
        // SAFETY: the value is a plain Copy struct, read at once.
        if let Some(rule) =
            unsafe { HOST_ADDRS.get(&key) }.and_then(|set| first_match(set, dest, proto))
        {
            return Some(rule);
        }
    }
    let key = aya_ebpf::maps::lpm_trie::Key::new(32 + 128, key);
    first_match(NET_RULES.get(&key)?, dest, proto)
}

/// The first rule of `set` whose port range and protocol match.
fn first_match(set: &NetRuleSet, dest: &Destination, proto: u16) -> Option<RuleRef> {
    for rule in set.rules.iter().take(set.len as usize) {
        if dest.port >= rule.port_lo
            && dest.port <= rule.port_hi
            && (rule.protocol == protocol::ANY || rule.protocol == proto)
        {
            return Some(RuleRef {
                rule_id: rule.rule_id,
                action: rule.action as u32,
            });
        }
    }
    None
}

/// Sets the record's address: two word stores rather than a 16-byte copy
/// (see `record`).
#[inline(always)]
fn set_address(event: &mut Event, addr: [u8; 16]) {
    // SAFETY: plain bytes reinterpreted as words.
    let [a, b]: [u64; 2] = unsafe { core::mem::transmute(addr) };
    let words = event.addr.as_mut_ptr().cast::<u64>();
    // SAFETY: `words` is 8-byte aligned inside the reserved record.
    unsafe {
        core::ptr::write_volatile(words, a);
        core::ptr::write_volatile(words.add(1), b);
    }
}

#[inline(always)]
fn check_destination(
    agent: &Agent,
    hook_id: u32,
    sock: Kptr,
    sockaddr: Kptr,
    len: i32,
) -> Result<bool, ReadError> {
    let Some(dest) = read_destination(sockaddr, len)? else {
        return Ok(false);
    };
    let proto = socket_protocol(sock)?;
    // A database the profile guards: the connection goes to the statement
    // guard (`routing.rs` rewrites it next), which decides what it may do.
    if proto == protocol::TCP && routing::route_of(agent, dest.addr, dest.port).is_some() {
        return Ok(false);
    }
    let mut decision = Decision::new(
        agent,
        find_net_rule(agent, &dest, proto),
        agent_flag::NETWORK_DEFAULT_DENY,
    );
    guardrails::approve(
        &mut decision,
        &ExceptionKey::destination(agent.cgroup, dest.addr, dest.port),
    );
    guardrails::spend_on_destination(agent, &mut decision, dest.addr);
    Ok(decided(agent, hook_id, &decision, |event| {
        event.family = dest.family;
        event.port = dest.port;
        event.protocol = proto;
        set_address(event, dest.addr);
    }))
}

/// Denies connect(2) to a denied destination (TCP, and UDP connect).
#[lsm(hook = "socket_connect")]
// Inlined into the wrapper the macro generates: as a separate global
// function taking a struct by value, 6.1\'s verifier rejects it.
#[inline(always)]
fn socket_connect(ctx: LsmContext) -> i32 {
    decide_hook::<Global>(&ctx, lsm::SOCKET_CONNECT, |agent| {
        check_destination(agent, hook::CONNECT, ctx.arg(0), ctx.arg(1), ctx.arg(2))
    })
}

/// Denies sendto(2)/sendmsg(2) with an explicit denied destination, so an
/// unconnected UDP socket is not a way around `socket_connect`. Sends without
/// a destination are not decisions.
#[lsm(hook = "socket_sendmsg")]
// Inlined into the wrapper the macro generates: as a separate global
// function taking a struct by value, 6.1\'s verifier rejects it.
#[inline(always)]
fn socket_sendmsg(ctx: LsmContext) -> i32 {
    decide_hook::<Global>(&ctx, lsm::SOCKET_SENDMSG, |agent| {
        let (name, len) = kernel::msghdr_name(ctx.arg(1))?;
        check_destination(agent, hook::SENDMSG, ctx.arg(0), name, len)
    })
}

/// Denies an agent's connection to the unix-domain socket of a database
/// server its profile guards: the kernel cannot route those to the guard
/// (6.1 has no cgroup program for unix connects). The listening socket is
/// known by the name its server bound it to, so no symlink, hard link or
/// relative path of the agent's reaches it.
#[lsm(hook = "unix_stream_connect")]
// Inlined into the wrapper the macro generates: as a separate global
// function taking a struct by value, 6.1\'s verifier rejects it.
#[inline(always)]
fn unix_stream_connect(ctx: LsmContext) -> i32 {
    decide_hook::<Global>(&ctx, lsm::UNIX_STREAM_CONNECT, |agent| {
        let scratch = scratch()?;
        let key = &mut scratch.socket_key;
        key.profile = agent.entry.profile;
        let len = kernel::unix_bound_name(ctx.arg(1), key)?;
        if len == 0 {
            return Ok(false);
        }
        // SAFETY: the value is a plain Copy struct, copied out at once.
        let Some(guard) = (unsafe { DATABASE_SOCKETS.get(&*key) }).copied() else {
            return Ok(false);
        };
        Ok(decided(
            agent,
            hook::UNIX_CONNECT,
            &Decision::STATEMENT_GUARD_ONLY,
            |event| {
                event.family = AF_UNIX;
                event.protocol = protocol::ANY;
                // The guard's address, which the record names.
                event.port = guard.port;
                set_address(event, guard.addr);
                set_path(event, key.name.as_ptr(), len as usize, 0);
            },
        ))
    })
}
