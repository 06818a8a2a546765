//! Who sent a request to the local API, from the socket's peer credentials
//! as they were when the connection was accepted.

use std::os::fd::AsRawFd;

use guard_api::accepted::Accepted;
use tokio::net::UnixStream;

use super::approvals;

/// A request's caller.
pub(super) struct Caller {
    pub(super) pid: i32,
    pub(super) uid: u32,
    /// Its gid and supplementary groups.
    pub(super) gids: Vec<u32>,
    /// Inside Guard's root (or not identifiable): may only read the status
    /// of its own sessions, validate policies, start sub-agent sessions and
    /// list its own tickets.
    pub(super) agent: bool,
    /// What it may do if it is no agent.
    pub(super) access: Access,
}

/// What a caller outside Guard's cgroups may do, from its credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Access {
    Nothing,
    /// Read the status, the policy, the sessions and the tickets.
    Read,
    /// Also change: reload or apply the policy, act on sessions, approve
    /// or deny tickets.
    Change,
}

/// The groups that give access to the local API (`guardd --read-group`,
/// `--admin-group`); root may always change.
#[derive(Clone, Debug, Default)]
pub struct AccessGroups {
    /// The group that may read.
    pub read: Option<(String, u32)>,
    /// The group that may also change.
    pub change: Option<(String, u32)>,
}

/// The group that may read through the local API by default, if it exists.
const DEFAULT_READ_GROUP: &str = "guard";

impl AccessGroups {
    /// Looks the groups up: `read` (the default group when `None`, which
    /// may not exist) and `admin`. A group named but not found is an error.
    pub fn lookup(read: Option<&str>, admin: Option<&str>) -> Result<Self, String> {
        let find = |name: &str| -> Result<Option<(String, u32)>, String> {
            nix::unistd::Group::from_name(name)
                .map_err(|e| format!("cannot look up group `{name}`: {e}"))
                .map(|group| group.map(|g| (name.to_string(), g.gid.as_raw())))
        };
        let named = |name: &str, flag: &str| {
            find(name)?
                .ok_or_else(|| format!("{flag}: no group `{name}`"))
                .map(Some)
        };
        Ok(Self {
            read: match read {
                None => find(DEFAULT_READ_GROUP)?,
                Some("") => None,
                Some(name) => named(name, "--read-group")?,
            },
            change: admin
                .map(|name| named(name, "--admin-group"))
                .transpose()?
                .flatten(),
        })
    }

    /// What a process of `uid` with the groups `gids` may do.
    pub(super) fn access(&self, uid: u32, gids: &[u32]) -> Access {
        let member = |group: &Option<(String, u32)>| {
            group.as_ref().is_some_and(|(_, gid)| gids.contains(gid))
        };
        if uid == 0 || member(&self.change) {
            Access::Change
        } else if member(&self.read) {
            Access::Read
        } else {
            Access::Nothing
        }
    }

    /// What a caller lacking `needed` is told.
    pub(super) fn refusal(&self, needed: Access, what: &str) -> String {
        let (group, flag) = match needed {
            Access::Change => (&self.change, "--admin-group"),
            _ => (&self.read, "--read-group"),
        };
        match group {
            Some((name, _)) => {
                format!("only root or members of group `{name}` (guardd {flag}) may {what}")
            }
            None => format!("only root may {what}"),
        }
    }
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
#[derive(Clone, Debug)]
pub(super) struct Peer {
    pub(super) pid: i32,
    pub(super) uid: u32,
    /// Its gid and supplementary groups (the kernel's, `SO_PEERGROUPS`).
    pub(super) gids: Vec<u32>,
    /// Whether the peer was an agent then. A caller that exits before its
    /// request is handled (its pid may be reused by then) still counts as
    /// one.
    pub(super) agent_at_accept: bool,
}

/// An accepted connection to the local API, carrying its [`Peer`] to each
/// request (tonic puts it in the request's extensions).
pub(super) type Connection = Accepted<UnixStream, Option<Peer>>;

/// `is_agent` says whether a pid is an agent's.
pub(super) fn accept(stream: UnixStream, is_agent: impl Fn(i32) -> bool) -> Connection {
    let peer = stream.peer_cred().ok().map(|cred| {
        let pid = cred.pid().unwrap_or(0);
        let mut gids = peer_groups(&stream).unwrap_or_default();
        gids.push(cred.gid());
        Peer {
            pid,
            uid: cred.uid(),
            gids,
            agent_at_accept: is_agent(pid),
        }
    });
    Accepted {
        io: stream,
        info: peer,
    }
}

/// The supplementary groups of a unix socket's peer, as the kernel saw them
/// when it connected.
fn peer_groups(stream: &UnixStream) -> std::io::Result<Vec<u32>> {
    let mut gids = vec![0u32; 64];
    loop {
        let mut len = (gids.len() * size_of::<u32>()) as libc::socklen_t;
        // SAFETY: `gids` has room for `len` bytes, which the kernel updates.
        let rc = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                gids.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if rc == 0 {
            gids.truncate(len as usize / size_of::<u32>());
            return Ok(gids);
        }
        let error = std::io::Error::last_os_error();
        // Too small: `len` is the size needed.
        if error.raw_os_error() != Some(libc::ERANGE) {
            return Err(error);
        }
        let needed = len as usize / size_of::<u32>();
        if needed <= gids.len() {
            return Err(error);
        }
        gids.resize(needed, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_changes_the_admin_group_changes_the_read_group_reads() {
        let groups = AccessGroups {
            read: Some(("guard".into(), 60)),
            change: Some(("ops".into(), 61)),
        };
        assert_eq!(groups.access(0, &[0]), Access::Change);
        assert_eq!(groups.access(1000, &[1000, 61]), Access::Change);
        assert_eq!(groups.access(1000, &[1000, 60]), Access::Read);
        assert_eq!(groups.access(1000, &[1000]), Access::Nothing);
        assert_eq!(
            groups.refusal(Access::Change, "approve or deny tickets"),
            "only root or members of group `ops` (guardd --admin-group) may approve or deny tickets"
        );
        let none = AccessGroups::default();
        assert_eq!(none.access(1000, &[60, 61]), Access::Nothing);
        assert_eq!(
            none.refusal(Access::Change, "change the policy"),
            "only root may change the policy"
        );
    }
}
