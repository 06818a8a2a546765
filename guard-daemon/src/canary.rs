//! Readiness canary. Before guardd reports "enforcing", a throwaway process
//! in a canary agent cgroup tries one action per hook family that the canary
//! profile denies (connect, unlink, exec) and one that self-protection
//! denies to every agent (bpf), and each must fail with EPERM. A
//! kernel that loads the programs but does not apply them, or an attachment
//! that is missing, is caught here instead of being reported as enforcing.
//! The canary's denials appear in the records, as agent `.canary`.

use std::{
    io,
    net::TcpStream,
    os::unix::{ffi::OsStrExt, fs::PermissionsExt},
    path::Path,
    process::Command,
};

use ipnet::IpNet;

use guard_api::launch;
use guard_policy::policy::{
    Access, AgentDef, Defaults, Destination, Effect, ExecTarget, FileTarget, Location, Mode,
    NetTarget, Policy, PortRange, Profile, Protocol, Rule,
};

use crate::cgroup::GuardRoot;

/// The canary's agent and profile name; user names cannot start with `.`.
pub const AGENT: &str = ".canary";
/// A port the canary profile denies on loopback (discard).
const PORT: u16 = 9;
const EXEC_TARGET: &str = "exec-target";
const UNLINK_TARGET: &str = "unlink-target";

/// The hooks the canary exercises.
pub const HOOKS: [&str; 4] = [ACTIONS[0].1, ACTIONS[1].1, ACTIONS[2].1, ACTIONS[3].1];

/// The actions, in the order the canary process tries them (exec last: if it
/// is not denied, the process image is replaced).
const ACTIONS: [(&str, &str); 4] = [
    ("connect", "socket_connect"),
    ("unlink", "path_unlink"),
    ("bpf", "bpf"),
    ("exec", "bprm_check_security"),
];

#[derive(Debug, thiserror::Error)]
pub enum CanaryError {
    #[error("cannot prepare the canary: {0}")]
    Prepare(io::Error),
    #[error("cannot run the canary: {0}")]
    Run(#[from] launch::LaunchError),
    #[error(
        "readiness canary: a test agent's {action} was not denied (hook `{hook}`: {outcome}); the kernel accepted the programs but is not enforcing them"
    )]
    NotDenied {
        action: &'static str,
        hook: &'static str,
        outcome: String,
    },
}

/// The canary's files, in a temporary directory removed on drop.
pub struct Canary {
    dir: tempfile::TempDir,
}

impl Canary {
    pub fn prepare() -> Result<Self, CanaryError> {
        let dir = tempfile::Builder::new()
            .prefix("guard-canary.")
            .tempdir()
            .map_err(CanaryError::Prepare)?;
        let exec_target = dir.path().join(EXEC_TARGET);
        std::fs::write(&exec_target, "#!/bin/false\n").map_err(CanaryError::Prepare)?;
        std::fs::set_permissions(&exec_target, std::fs::Permissions::from_mode(0o755))
            .map_err(CanaryError::Prepare)?;
        std::fs::write(dir.path().join(UNLINK_TARGET), "canary\n").map_err(CanaryError::Prepare)?;
        Ok(Self { dir })
    }

    /// Adds the canary's agent, and its profile that denies the canary's
    /// actions, to `policy`.
    pub fn add_to(&self, policy: &mut Policy) {
        fn rule<T>(action: &str, target: T) -> Rule<T> {
            Rule {
                id: format!("guard-canary-{action}"),
                message: Some("readiness canary".into()),
                freeze: false,
                approvable: false,
                effect: Effect::Deny,
                target,
                location: Location::default(),
            }
        }
        let loopback = IpNet::from(std::net::IpAddr::from(std::net::Ipv4Addr::LOCALHOST));
        policy.profiles.push(Profile {
            name: AGENT.into(),
            mode: Mode::Enforce,
            record_allowed: false,
            audit_or_deny: false,
            // A hook that runs but cannot decide still denies the canary;
            // the error counters report that it could not decide.
            on_error: Access::Deny,
            defaults: Defaults::all(Access::Allow),
            exec: vec![rule(
                "exec",
                ExecTarget::Path {
                    path: self.dir.path().join(EXEC_TARGET),
                    sha256: None,
                },
            )],
            files: vec![rule(
                "unlink",
                FileTarget::Path(self.dir.path().join(UNLINK_TARGET)),
            )],
            network: vec![rule(
                "connect",
                NetTarget {
                    to: Destination::Cidr(loopback),
                    ports: PortRange { lo: PORT, hi: PORT },
                    protocol: Protocol::Tcp,
                },
            )],
            budgets: Default::default(),
            databases: Vec::new(),
            location: Location::default(),
        });
        policy.agents.push(AgentDef {
            name: AGENT.into(),
            profile: AGENT.into(),
            launched_by: Default::default(),
            logins: Default::default(),
            location: Location::default(),
        });
    }

    /// Runs the canary process in the canary agent's cgroup and checks that
    /// every action was denied.
    pub fn check(&self, root: &GuardRoot) -> Result<(), CanaryError> {
        let mut cmd = Command::new("/proc/self/exe");
        cmd.arg("--canary").arg(self.dir.path());
        launch::join_cgroup_on_exec(&mut cmd, &root.agent_path(AGENT).join("cgroup.procs"))?;
        let output = cmd.output().map_err(|e| {
            CanaryError::Run(launch::LaunchError::Spawn {
                command: "guardd --canary".into(),
                source: e,
            })
        })?;
        let report = String::from_utf8_lossy(&output.stdout);
        for (action, hook) in ACTIONS {
            let outcome = report
                .lines()
                .find_map(|l| l.strip_prefix(action).map(|rest| rest.trim().to_string()))
                .unwrap_or_else(|| format!("no result, canary exited with {}", output.status));
            if outcome != "errno 1" {
                return Err(CanaryError::NotDenied {
                    action,
                    hook,
                    outcome,
                });
            }
        }
        Ok(())
    }
}

/// bpf(BPF_PROG_GET_NEXT_ID): harmless, and allowed to root but not to an
/// agent. ENOENT (no programs) counts as allowed.
fn bpf_next_program_id() -> io::Result<()> {
    const BPF_PROG_GET_NEXT_ID: libc::c_long = 11;
    let mut attr = [0u32; 4]; // start_id, next_id, open_flags, padding
    // SAFETY: the kernel reads and writes at most `size_of_val(&attr)` bytes.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_GET_NEXT_ID,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    match io::Error::last_os_error().raw_os_error() {
        _ if rc == 0 => Ok(()),
        Some(libc::ENOENT) => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// The canary process (`guardd --canary DIR`): tries each action and prints
/// `<action> ok` or `<action> errno N`, one line each.
pub fn probe(dir: &Path) -> i32 {
    let report = |action: &str, result: io::Result<()>| match result {
        Ok(()) => println!("{action} ok"),
        Err(e) => println!("{action} errno {}", e.raw_os_error().unwrap_or(-1)),
    };
    report("connect", TcpStream::connect(("127.0.0.1", PORT)).map(drop));
    report("unlink", std::fs::remove_file(dir.join(UNLINK_TARGET)));
    report("bpf", bpf_next_program_id());
    let target = dir.join(EXEC_TARGET);
    let path =
        std::ffi::CString::new(target.as_os_str().as_bytes()).expect("no NUL in a temp path");
    let argv = [path.as_ptr(), std::ptr::null()];
    // SAFETY: NUL-terminated argv of valid C strings. On success this process
    // becomes /bin/false, and the missing line reports it.
    unsafe { libc::execv(path.as_ptr(), argv.as_ptr()) };
    report("exec", Err(io::Error::last_os_error()));
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use guard_policy::{compile::compile, policy::Policy};

    #[test]
    fn the_canary_profile_denies_one_action_per_hook_family() {
        let canary = Canary::prepare().unwrap();
        let mut policy = Policy {
            profiles: vec![],
            agents: vec![],
            databases: vec![],
        };
        canary.add_to(&mut policy);
        let compiled = compile(&policy).unwrap();
        assert_eq!(compiled.agents, vec![(AGENT.to_string(), 0)]);
        assert_eq!(
            compiled.exec_identity.len(),
            1,
            "exec target denied by identity"
        );
        assert_eq!(compiled.file_identity.len(), 1, "unlink target protected");
        let loopback = compiled
            .net_rules
            .iter()
            .filter(|(_, _, set)| set.rules[0].port_lo == PORT)
            .count();
        assert_eq!(loopback, 1, "loopback port denied");
        assert!(compiled.notes.is_empty(), "{:?}", compiled.notes);
    }
}
