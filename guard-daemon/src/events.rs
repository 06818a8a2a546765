//! Decision records: decoding the kernel's fixed-layout records and writing
//! them as one JSON object per line.

use std::{
    net::{IpAddr, Ipv6Addr},
    time::{Duration, SystemTime},
};

use guard_common::{
    BUDGET_EXCEEDED, Event, NO_RULE, SELF_PROTECTION, STATEMENT_GUARD_ONLY, budget, event_flag,
    hook, protocol, verdict,
};

use guard_api::{
    record::{
        Action, BudgetNote, FileIdentity, Record, SELF_PROTECTION_RULE, STATEMENT_GUARD_ONLY_RULE,
        TicketNote, Verdict, ticket_id,
    },
    session::Session,
};
use guard_policy::policy::BUDGET_NAMES;

use crate::generation::Generation;

/// The budget a hook spends (`guard_common::budget`): the network hooks'
/// is the destinations budget, the file hooks' the destroy budget.
pub fn budget_of(hook_id: u32) -> usize {
    match hook_id {
        hook::CONNECT | hook::SENDMSG => budget::DESTINATIONS,
        _ => budget::DESTROY,
    }
}

/// The rule id of a denial by budget `index` (`guard_common::budget`).
pub fn budget_rule(index: usize) -> String {
    format!("budget:{}", BUDGET_NAMES[index])
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed record: {len} bytes, expected {expected}")]
pub struct DecodeError {
    pub len: usize,
    pub expected: usize,
}

/// Reads an [`Event`] from ring-buffer bytes.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    if bytes.len() < size_of::<Event>() {
        return Err(DecodeError {
            len: bytes.len(),
            expected: size_of::<Event>(),
        });
    }
    // SAFETY: length checked; Event is plain data valid for any bit pattern.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) })
}

/// Converts the kernel's boot-clock timestamps to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Wall-clock time at boot.
    boot: SystemTime,
}

impl Clock {
    pub fn new() -> Self {
        let since_boot = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
            .map(|t| Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32))
            .unwrap_or_default();
        Self {
            boot: SystemTime::now() - since_boot,
        }
    }

    pub fn wall(&self, boot_ns: u64) -> SystemTime {
        self.boot + Duration::from_nanos(boot_ns)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

const SELF_PROTECTION_MESSAGE: &str = "no agent may do this, whatever its profile: it would switch Guard off, leave the agent's cgroup or change the kernel";

/// The LSM hook and the action of a kernel record's hook id.
pub fn hook_name(id: u32) -> (&'static str, Action) {
    match id {
        hook::EXEC => ("bprm_check_security", Action::Exec),
        hook::UNLINK => ("path_unlink", Action::Unlink),
        hook::RMDIR => ("path_rmdir", Action::Rmdir),
        hook::RENAME => ("path_rename", Action::Rename),
        hook::TRUNCATE => ("path_truncate", Action::Truncate),
        hook::OPEN_TRUNC => ("file_open", Action::Truncate),
        hook::FILE_TRUNCATE => ("file_truncate", Action::Truncate),
        hook::CONNECT => ("socket_connect", Action::Connect),
        hook::SENDMSG => ("socket_sendmsg", Action::Sendmsg),
        hook::CREATE => ("path_mknod", Action::Create),
        hook::MKDIR => ("path_mkdir", Action::Mkdir),
        hook::SYMLINK => ("path_symlink", Action::Symlink),
        hook::LINK => ("path_link", Action::Link),
        hook::OPEN_WRITE => ("file_open", Action::OpenWrite),
        hook::RENAME_INTO => ("path_rename", Action::RenameInto),
        hook::BPF => ("bpf", Action::Bpf),
        hook::SIGNAL => ("task_kill", Action::Signal),
        hook::PTRACE => ("ptrace_access_check", Action::Ptrace),
        hook::MOUNT => ("sb_mount", Action::Mount),
        hook::UMOUNT => ("sb_umount", Action::Umount),
        hook::REMOUNT => ("sb_remount", Action::Remount),
        hook::MOVE_MOUNT => ("move_mount", Action::Mount),
        hook::KERNEL_READ_FILE => ("kernel_read_file", Action::LoadKernelFile),
        hook::KERNEL_LOAD_DATA => ("kernel_load_data", Action::LoadKernelData),
        hook::CLONE_INTO_CGROUP => ("task_alloc", Action::CloneIntoCgroup),
        hook::EXEC_MAP => ("mmap_file", Action::ExecMap),
        hook::LINK_AWAY => ("path_link", Action::LinkAway),
        hook::OPEN_READ => ("file_open", Action::OpenRead),
        hook::UNIX_CONNECT => ("unix_stream_connect", Action::Connect),
        _ => ("unknown", Action::Unknown),
    }
}

/// The verdict of a kernel record; a value the programs never write is
/// taken as a denial, never as allowed.
fn verdict_of(id: u32) -> Verdict {
    match id {
        verdict::ALLOW => Verdict::Allow,
        verdict::WOULD_DENY => Verdict::WouldDeny,
        _ => Verdict::Deny,
    }
}

/// A unix-domain socket's name as people write it: a path, or `@name` for
/// the abstract namespace (whose names start with a NUL).
fn unix_socket_name(name: &str) -> String {
    match name.strip_prefix('\0') {
        Some(rest) => format!("@{}", rest.trim_end_matches('\0')),
        None => name.trim_end_matches('\0').to_string(),
    }
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// Turns a kernel record into a [`Record`], naming the profile and rule from
/// the generation that decided (`None` when it is no longer kept), with the
/// agent and session the process belongs to.
pub fn to_record(
    event: &Event,
    generation: Option<&Generation>,
    agent: Option<String>,
    session: Option<&Session>,
    clock: &Clock,
) -> Record {
    let (hook, action) = hook_name(event.hook);
    let is_network = matches!(event.hook, hook::CONNECT | hook::SENDMSG);
    let is_unix = event.hook == hook::UNIX_CONNECT;
    let is_process = matches!(event.hook, hook::SIGNAL | hook::PTRACE);
    // The destination; for a unix-domain socket, the guard it should have
    // connected to.
    let address = || {
        let v6 = Ipv6Addr::from(event.addr);
        let ip = match (event.family, v6.to_ipv4_mapped()) {
            // AF_INET; AF_UNIX, whose address is the guard's.
            (2 | 1, Some(v4)) => IpAddr::V4(v4),
            _ => IpAddr::V6(v6),
        };
        std::net::SocketAddr::new(ip, event.port)
    };
    let path = || {
        let len = usize::from(event.path_len).min(event.path.len());
        String::from_utf8_lossy(&event.path[..len]).into_owned()
    };
    let target = if is_process {
        format!("pid {}", event.ino)
    } else if is_network {
        address().to_string()
    } else if is_unix {
        unix_socket_name(&path())
    } else {
        path()
    };
    let policy = generation.map(|g| &g.compiled);
    let rule = (event.rule_id != NO_RULE)
        .then(|| policy.and_then(|p| p.rule(event.rule_id)))
        .flatten();
    let profile_index = guard_common::profile_index(event.profile);
    let budget_index = budget_of(event.hook);
    let budget = (event.rule_id == BUDGET_EXCEEDED).then(|| {
        let spec = policy
            .and_then(|p| p.budgets.get(profile_index as usize))
            .and_then(|budgets| budgets[budget_index].as_ref());
        BudgetNote {
            name: BUDGET_NAMES[budget_index].into(),
            spent: event.detail.into(),
            burst: spec.map_or(0, |s| s.burst),
            rate: spec.map(|s| s.rate.clone()).unwrap_or_default(),
        }
    });
    let mut flags = Vec::new();
    if event.flags & event_flag::PATH_TRUNCATED != 0 {
        flags.push("path_truncated".into());
    }
    if event.flags & event_flag::PATH_UNROOTED != 0 {
        flags.push("path_unrooted".into());
    }
    let approved = event.flags & event_flag::APPROVED != 0;
    if approved {
        flags.push("approved".into());
    }
    Record {
        seq: 0,
        time: humantime::format_rfc3339_nanos(clock.wall(event.boot_ns)).to_string(),
        hook: hook.into(),
        action,
        verdict: verdict_of(event.verdict),
        agent: agent.unwrap_or_else(|| format!("cgroup-{}", event.agent_cgroup)),
        profile: match profile_index {
            guard_common::LOCKED_PROFILE => "locked".into(),
            index => policy
                .and_then(|p| p.profiles.get(index as usize))
                .map(|(name, _)| name.clone())
                .unwrap_or_else(|| format!("profile-{index}")),
        },
        session: session.map(Session::reference),
        generation: event.generation,
        policy_sha256: generation
            .map(|g| g.policy_sha256.clone())
            .unwrap_or_default(),
        agent_cgroup: event.agent_cgroup,
        cgroup: event.cgroup,
        pid: event.tgid,
        tid: event.pid,
        uid: event.uid,
        comm: c_string(&event.comm),
        target,
        file: (!is_network && !is_unix && !is_process && event.ino != 0).then_some(FileIdentity {
            dev: event.dev,
            ino: event.ino,
        }),
        protocol: (is_network || is_unix).then(|| {
            match (is_unix, event.protocol) {
                (true, _) => "unix",
                (_, protocol::TCP) => "tcp",
                (_, protocol::UDP) => "udp",
                _ => "other",
            }
            .into()
        }),
        host: policy
            .filter(|_| is_network)
            .and_then(|p| p.host_of(event.rule_id))
            .map(str::to_string),
        rule: match (event.rule_id, rule) {
            (NO_RULE, _) => "default".into(),
            (SELF_PROTECTION, _) => SELF_PROTECTION_RULE.into(),
            (STATEMENT_GUARD_ONLY, _) => STATEMENT_GUARD_ONLY_RULE.into(),
            (BUDGET_EXCEEDED, _) => budget_rule(budget_index),
            (_, Some(rule)) => rule.id.clone(),
            (id, None) => format!("#{id}"),
        },
        message: match (event.rule_id, &budget) {
            (SELF_PROTECTION, _) => Some(SELF_PROTECTION_MESSAGE.into()),
            (STATEMENT_GUARD_ONLY, _) => {
                let guard = address();
                let database = policy
                    .and_then(|p| p.databases.iter().find(|d| d.listen == guard))
                    .map_or_else(String::new, |d| format!(" `{}`", d.name));
                Some(format!(
                    "agents reach database{database} only through its statement guard: connect to {guard}"
                ))
            }
            (_, Some(b)) => Some(format!(
                "the session's `{}` budget ({} at once, refilled at {}) is spent: {} allowed so far; it refills with time, or `guardctl session reset` refills it",
                b.name, b.burst, b.rate, b.spent
            )),
            _ => rule.and_then(|r| r.message.clone()),
        },
        process: None,
        redacted: Vec::new(),
        flags,
        ticket: approved.then(|| TicketNote {
            id: ticket_id(event.detail),
            state: "used".into(),
            once: false,
            expires: None,
        }),
        budget,
        statement: None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_hook_and_action_of_a_record_is_documented() {
        let doc = include_str!("../../docs/policy.md");
        let row = |field: &str| {
            doc.lines()
                .find(|l| l.starts_with(&format!("| `{field}` |")))
                .unwrap_or_else(|| panic!("policy.md has no row for `{field}`"))
                .to_string()
        };
        let (hooks, actions) = (row("hook"), row("action"));
        for id in 1..=guard_common::hook::UNIX_CONNECT {
            let (hook, action) = super::hook_name(id);
            assert_ne!(hook, "unknown", "hook id {id} has no name");
            assert!(
                hooks.contains(&format!("`{hook}`")),
                "`{hook}` is not documented"
            );
            assert!(
                actions.contains(&format!("`{action}`")),
                "`{action}` is not documented"
            );
        }
    }
    use super::*;
    use guard_policy::{compile::compile, policy::parse};

    fn generation() -> Generation {
        Generation {
            number: 3,
            policy_sha256: "ab".repeat(32),
            text: String::new(),
            compiled: compile(
                &parse("profiles:\n  - name: coding\n    default: allow\n    network:\n      deny:\n        - id: no-db\n          cidr: 10.0.0.0/8\n          message: no databases\nagents:\n  - name: coder\n    profile: coding\n")
                    .unwrap(),
            )
            .unwrap(),
            loaded: String::new(),
        }
    }

    fn session() -> Session {
        Session {
            id: "5d8e".into(),
            agent: "coder".into(),
            profile: "coding".into(),
            uid: 1000,
            user: Some("dev".into()),
            login_uid: Some(1000),
            labels: [("ticket".to_string(), "OPS-1".to_string())].into(),
            started: String::new(),
            parent: None,
            cgroup: 77,
            login: None,
            ended: None,
        }
    }

    fn blank() -> Event {
        // SAFETY: Event is plain data; all-zero is valid.
        unsafe { std::mem::zeroed() }
    }

    #[test]
    fn short_records_are_refused() {
        assert_eq!(decode(&[0; 10]).unwrap_err().len, 10);
    }

    #[test]
    fn decodes_and_names_a_network_denial() {
        let mut e = blank();
        e.hook = hook::CONNECT;
        e.verdict = verdict::DENY;
        e.family = 2;
        e.port = 5432;
        e.protocol = protocol::TCP;
        e.addr = std::net::Ipv4Addr::new(10, 1, 2, 3)
            .to_ipv6_mapped()
            .octets();
        e.rule_id = 0;
        e.pid = 7;
        e.tgid = 7;
        e.comm[..4].copy_from_slice(b"psql");
        let bytes: [u8; size_of::<Event>()] = unsafe { std::mem::transmute(e) };
        let r = to_record(
            &decode(&bytes).unwrap(),
            Some(&generation()),
            Some("coder".into()),
            Some(&session()),
            &Clock::new(),
        );
        assert_eq!(
            (r.hook.as_str(), r.action.name(), r.verdict.name()),
            ("socket_connect", "connect", "deny")
        );
        assert_eq!(r.target, "10.1.2.3:5432");
        assert_eq!(r.agent, "coder");
        assert_eq!(r.rule, "no-db");
        assert_eq!(r.profile, "coding");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["session"], "5d8e");
        assert_eq!(json["user"]["uid"], 1000);
        assert_eq!(json["user"]["name"], "dev");
        assert_eq!(json["labels"]["ticket"], "OPS-1");
        assert_eq!(json["policy_sha256"], "ab".repeat(32));
        assert_eq!(r.message.as_deref(), Some("no databases"));
        assert_eq!(r.comm, "psql");
        assert_eq!(r.protocol.as_deref(), Some("tcp"));
        assert!(r.file.is_none());
    }

    #[test]
    fn mapped_addresses_on_ipv6_sockets_stay_ipv6() {
        let mut e = blank();
        e.hook = hook::CONNECT;
        e.family = 10;
        e.port = 80;
        e.addr = std::net::Ipv4Addr::new(127, 0, 0, 1)
            .to_ipv6_mapped()
            .octets();
        e.rule_id = NO_RULE;
        let r = to_record(&e, Some(&generation()), None, None, &Clock::new());
        assert_eq!(r.target, "[::ffff:127.0.0.1]:80");
        assert_eq!(r.rule, "default");
        assert_eq!(r.agent, "cgroup-0", "no agent known for the cgroup");
    }

    #[test]
    fn a_refused_unix_socket_names_the_guard() {
        let mut e = blank();
        e.hook = hook::UNIX_CONNECT;
        e.verdict = verdict::DENY;
        e.rule_id = STATEMENT_GUARD_ONLY;
        e.family = 1;
        e.port = 6432;
        e.addr = std::net::Ipv4Addr::LOCALHOST.to_ipv6_mapped().octets();
        let name = b"/run/postgresql/.s.PGSQL.5432\0";
        e.path[..name.len()].copy_from_slice(name);
        e.path_len = name.len() as u16;
        let r = to_record(&e, Some(&generation()), None, None, &Clock::new());
        assert_eq!(
            (r.hook.as_str(), r.action.name(), r.rule.as_str()),
            ("unix_stream_connect", "connect", "statement-guard-only")
        );
        assert_eq!(r.target, "/run/postgresql/.s.PGSQL.5432");
        assert_eq!(r.protocol.as_deref(), Some("unix"));
        assert_eq!(
            r.message.as_deref(),
            Some(
                "agents reach database only through its statement guard: connect to 127.0.0.1:6432"
            )
        );
        assert!(r.file.is_none());
        // An abstract name, as people write it.
        let name = b"\0pg/.s.PGSQL.5432";
        e.path[..name.len()].copy_from_slice(name);
        e.path_len = name.len() as u16;
        let r = to_record(&e, Some(&generation()), None, None, &Clock::new());
        assert_eq!(r.target, "@pg/.s.PGSQL.5432");
    }

    #[test]
    fn file_records_carry_path_identity_and_flags() {
        let mut e = blank();
        e.hook = hook::UNLINK;
        e.verdict = verdict::WOULD_DENY;
        e.path[..6].copy_from_slice(b"/a/b/c");
        e.path_len = 6;
        e.ino = 42;
        e.dev = 3;
        e.flags = event_flag::PATH_TRUNCATED;
        e.rule_id = NO_RULE;
        let r = to_record(&e, None, Some("coder".into()), None, &Clock::new());
        assert_eq!(
            (r.action.name(), r.verdict.name(), r.target.as_str()),
            ("unlink", "would_deny", "/a/b/c")
        );
        assert_eq!(r.file, Some(FileIdentity { dev: 3, ino: 42 }));
        assert_eq!(r.flags, vec!["path_truncated"]);
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains(r#""verdict":"would_deny""#), "{json}");
        assert!(!json.contains("protocol"), "{json}");
        assert!(
            !json.contains("session"),
            "no session, no session fields: {json}"
        );
    }
}
