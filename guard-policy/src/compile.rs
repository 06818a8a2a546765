//! Compiling a policy into the entries of the kernel's policy maps.
//!
//! This is the only place that knows how rules become map keys. It touches no
//! kernel: what it reads from the system is the identity (device and inode)
//! of the files and directories rules name, and the digest of files that
//! `sha256` exec rules pin. Keys carry the profile's index; the enforcer adds
//! the generation slot when it writes them.

use std::{
    collections::{BTreeMap, HashMap},
    io::Read,
    net::{IpAddr, SocketAddr},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use guard_common::{
    AgentEntry, DatabaseSocketKey, DigestKey, EXEC_PATH_KEY_LEN, ExecIdentityRule, ExecPathKey,
    IdentityKey, NAME_KEY_LEN, NET_RULES_PER_PREFIX, NameKey, NetKey, NetRule, NetRuleSet, Route,
    RouteKey, RuleRef, SecretKey, UNIX_PATH_LEN, action, agent_flag, capacity, exec_flag, mode,
    protocol,
};
use ipnet::IpNet;
use sha2::Digest as _;

use crate::policy::{
    Access, BudgetSpec, DEFAULT_DENY, Destination, Effect, ExecTarget, FileTarget, Location, Mode,
    NamePattern, NetTarget, Policy, PolicyError, PortRange, Profile, Protocol, Rule, Sha256,
};

/// What a rule id in a record refers to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleInfo {
    pub id: String,
    pub message: Option<String>,
    pub profile: String,
    /// A denial under it freezes the session.
    pub freeze: bool,
    /// A denial under it opens a ticket.
    pub approvable: bool,
}

/// A hostname rule of a profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostRule {
    /// Profile index.
    pub profile: u32,
    pub host: String,
    pub rule: NetRule,
}

/// A database server named by host name, routed for one profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteHost {
    /// Profile index.
    pub profile: u32,
    /// Lower case.
    pub host: String,
    pub port: u16,
    /// The guard's address.
    pub route: Route,
}

/// Entries for the kernel's maps, plus what userspace needs to explain them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompiledPolicy {
    /// Profile names with the entry a cgroup running that profile gets,
    /// indexed by profile index.
    pub profiles: Vec<(String, AgentEntry)>,
    /// Each profile's budgets, indexed like `profiles`, then by
    /// `guard_common::budget`.
    pub budgets: Vec<[Option<BudgetSpec>; guard_common::BUDGETS]>,
    /// Agent names with their profile index.
    pub agents: Vec<(String, u32)>,
    /// The policy's agents, for who may launch them and whose logins they
    /// take.
    pub agent_defs: Vec<crate::policy::AgentDef>,
    pub exec_identity: Vec<(IdentityKey, ExecIdentityRule)>,
    /// `(prefix length in bits, key data, rule)`.
    pub exec_paths: Vec<(u32, ExecPathKey, RuleRef)>,
    /// Exec deny rules by content.
    pub exec_digests: Vec<(DigestKey, RuleRef)>,
    pub file_identity: Vec<(IdentityKey, RuleRef)>,
    pub file_names: Vec<(u32, NameKey, RuleRef)>,
    pub net_rules: Vec<(u32, NetKey, NetRuleSet)>,
    /// Hostname rules, for guardd to put on the addresses it resolves.
    pub host_rules: Vec<HostRule>,
    /// The files of the statement guard no agent may read (passwords and
    /// TLS keys), by identity; those that do not exist are left out.
    pub secrets: Vec<SecretKey>,
    /// The database servers whose connections each profile's agents make
    /// go to the statement guard instead (profile indexes in the keys).
    pub routes: Vec<(RouteKey, Route)>,
    /// The same for servers named by host name: guardd resolves them and
    /// routes each address.
    pub route_hosts: Vec<RouteHost>,
    /// The servers' unix-domain sockets, closed to the same profiles' agents
    /// (the kernel cannot route those); the guard's address as the value.
    pub database_sockets: Vec<(DatabaseSocketKey, Route)>,
    /// Indexed by rule id.
    pub rules: Vec<RuleInfo>,
    /// Files exec rules pin by digest, with what they were when compiled
    /// (`None`: unreadable). A change to one calls for a new generation.
    pub pinned_files: Vec<(PathBuf, Option<FileVersion>)>,
    /// Things the operator should know that do not stop the policy.
    pub notes: Vec<String>,
    /// The databases the statement guard stands in front of (it judges
    /// their statements itself, from the policy's text).
    pub databases: Vec<crate::database::Database>,
}

impl CompiledPolicy {
    /// One line describing the policy, for logs.
    pub fn summary(&self) -> String {
        format!(
            "{} profile(s) [{}], {} agent(s); exec: {} identity + {} path entries; files: {} identities + {} names; network: {} prefixes",
            self.profiles.len(),
            self.profiles
                .iter()
                .map(|(name, entry)| format!("{name}:{}", mode_name(entry)))
                .collect::<Vec<_>>()
                .join(","),
            self.agents.len(),
            self.exec_identity.len(),
            self.exec_paths.len(),
            self.file_identity.len(),
            self.file_names.len(),
            self.net_rules.len(),
        ) + &if self.databases.is_empty() {
            String::new()
        } else {
            format!(
                "; {} database(s) [{}]",
                self.databases.len(),
                self.databases
                    .iter()
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            )
        }
    }

    pub fn rule(&self, rule_id: u32) -> Option<&RuleInfo> {
        self.rules.get(rule_id as usize)
    }

    /// The hostname of a hostname rule.
    pub fn host_of(&self, rule_id: u32) -> Option<&str> {
        self.host_rules
            .iter()
            .find(|r| r.rule.rule_id == rule_id)
            .map(|r| r.host.as_str())
    }

    pub fn profile_index(&self, name: &str) -> Option<u32> {
        self.profiles
            .iter()
            .position(|(n, _)| n == name)
            .map(|i| i as u32)
    }

    /// Whether a pinned file differs from when this was compiled: in content,
    /// or in change time (which the kernel compares, so a `touch` or `chmod`
    /// needs a new generation too).
    pub fn pinned_file_changed(&self) -> bool {
        self.pinned_files
            .iter()
            .any(|(path, version)| FileVersion::read(path).ok() != *version)
    }

    pub fn agent_profile(&self, agent: &str) -> Option<u32> {
        self.agents
            .iter()
            .find(|(n, _)| n == agent)
            .map(|(_, profile)| *profile)
    }
}

/// `enforce` or `monitor`, from an entry's mode.
pub fn mode_name(entry: &AgentEntry) -> &'static str {
    if entry.mode == mode::MONITOR {
        Mode::Monitor.as_str()
    } else {
        Mode::Enforce.as_str()
    }
}

/// A profile's defaults, from its entry's flags: (kind, `allow` or `deny`).
pub fn defaults_of(entry: &AgentEntry) -> [(&'static str, &'static str); 3] {
    let access = |flag: u32| {
        if entry.flags & flag != 0 {
            Access::Deny.as_str()
        } else {
            Access::Allow.as_str()
        }
    };
    [
        ("exec", access(agent_flag::EXEC_DEFAULT_DENY)),
        ("files", access(agent_flag::FILES_DEFAULT_DENY)),
        ("network", access(agent_flag::NETWORK_DEFAULT_DENY)),
    ]
}

/// A file's identity as the kernel sees it: `s_dev` uses the kernel's internal
/// `dev_t` encoding (`MAJOR << 20 | MINOR`, include/linux/kdev_t.h), not the
/// one stat(2) returns.
pub fn identity(path: &Path) -> std::io::Result<(u32, u64)> {
    Ok(kernel_identity(&std::fs::metadata(path)?))
}

/// The `SECRETS` key of a file no agent may read; `None` when it does not
/// exist.
pub fn secret_key(path: &Path) -> Option<SecretKey> {
    let (dev, ino) = identity(path).ok()?;
    Some(SecretKey { ino, dev, _pad: 0 })
}

fn kernel_identity(meta: &std::fs::Metadata) -> (u32, u64) {
    let dev = meta.dev();
    ((libc::major(dev) << 20) | libc::minor(dev), meta.ino())
}

/// A file's content digest and change time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileVersion {
    pub sha256: Sha256,
    pub ctime_sec: i64,
    pub ctime_nsec: u32,
    /// Device (kernel encoding) and inode.
    pub identity: (u32, u64),
}

impl FileVersion {
    /// Reads the change time before hashing: if the file changes while it
    /// is hashed, the kernel sees a newer change time and the rule does not
    /// apply (fails closed) until the next generation.
    pub fn read(path: &Path) -> std::io::Result<Self> {
        let meta = std::fs::metadata(path)?;
        let sha256 = sha256_file(path)?;
        let ctime = |m: &std::fs::Metadata| (m.ctime(), m.ctime_nsec());
        if ctime(&std::fs::metadata(path)?) != ctime(&meta) {
            return Err(std::io::Error::other("it changed while it was hashed"));
        }
        Ok(Self {
            sha256,
            ctime_sec: meta.ctime(),
            ctime_nsec: meta.ctime_nsec() as u32,
            identity: kernel_identity(&meta),
        })
    }
}

/// SHA-256 of a file's content.
pub fn sha256_file(path: &Path) -> std::io::Result<Sha256> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().into())
}

/// Whether the files a policy's rules name must exist on this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Paths {
    /// They must: the policy is compiled for this host (guardd, `guardctl
    /// policy check --this-host`). A missing protected path is an error.
    OnThisHost,
    /// They need not: the policy is validated for another host (a CI job
    /// before deployment). A missing path is a note.
    Anywhere,
}

/// Notes the users and groups the agents' `launched_by` and `logins` name
/// that this host does not know (a typo): they match no one here.
fn note_unknown_people(out: &mut CompiledPolicy) {
    use nix::unistd::{Group, User};
    let mut notes = Vec::new();
    for agent in &out.agent_defs {
        for (key, people) in [
            ("launched_by", &agent.launched_by),
            ("logins", &agent.logins),
        ] {
            let numeric = |name: &&String| name.parse::<u32>().is_ok();
            for user in people.users.iter().filter(|u| !numeric(u)) {
                if !matches!(User::from_name(user), Ok(Some(_))) {
                    notes.push(format!(
                        "agent `{}`: `{key}` names user `{user}`, unknown on this host: it matches no one here",
                        agent.name
                    ));
                }
            }
            for group in people.groups.iter().filter(|g| !numeric(g)) {
                if !matches!(Group::from_name(group), Ok(Some(_))) {
                    notes.push(format!(
                        "agent `{}`: `{key}` names group `{group}`, unknown on this host: it matches no one here",
                        agent.name
                    ));
                }
            }
        }
    }
    out.notes.extend(notes);
}

/// Compiles `policy` for this host.
pub fn compile(policy: &Policy) -> Result<CompiledPolicy, PolicyError> {
    compile_for(policy, Paths::OnThisHost)
}

/// Compiles `policy`; `paths` says whether its files must exist here.
pub fn compile_for(policy: &Policy, paths: Paths) -> Result<CompiledPolicy, PolicyError> {
    let mut out = CompiledPolicy::default();
    let mut seen = SeenKeys::default();
    for (index, profile) in policy.profiles.iter().enumerate() {
        let index = index as u32;
        out.profiles
            .push((profile.name.clone(), profile_entry(profile, index)));
        out.budgets.push(profile.budgets.clone());
        compile_exec(&mut out, &mut seen, profile, index)?;
        compile_files(&mut out, &mut seen, profile, index, paths)?;
        compile_network(&mut out, profile, index)?;
    }
    for agent in &policy.agents {
        let index = out
            .profile_index(&agent.profile)
            .expect("parse checked that agents name existing profiles");
        out.agents.push((agent.name.clone(), index));
    }
    out.agent_defs = policy.agents.clone();
    if paths == Paths::OnThisHost {
        note_unknown_people(&mut out);
    }
    out.databases = policy.databases.clone();
    compile_routes(&mut out, policy);
    out.secrets = policy
        .databases
        .iter()
        .flat_map(|d| d.secret_files())
        .filter_map(secret_key)
        .collect();
    check_capacity(&out, policy)?;
    Ok(out)
}

/// Routes each profile's connections to the databases it has statement
/// rules for to their guard: servers given by address here, servers named
/// by host name through guardd, on each address the name resolves to.
fn compile_routes(out: &mut CompiledPolicy, policy: &Policy) {
    let mut seen = Vec::new();
    for database in &policy.databases {
        let server = match database.server.parse::<SocketAddr>() {
            Ok(addr) => Server::Address(addr),
            Err(_) => {
                let host_port = database.server.rsplit_once(':');
                match host_port.and_then(|(host, port)| Some((host, port.parse().ok()?))) {
                    Some((host, port)) => Server::Host(host.to_ascii_lowercase(), port),
                    // Parsing checked `host:port`.
                    None => continue,
                }
            }
        };
        let route = Route {
            addr: mapped(database.listen.ip()),
            port: database.listen.port(),
            _pad: [0; 3],
        };
        for (index, profile) in policy.profiles.iter().enumerate() {
            if !profile
                .databases
                .iter()
                .any(|d| d.database == database.name)
            {
                continue;
            }
            let profile_index = index as u32;
            if seen.contains(&(profile_index, &database.server)) {
                out.notes.push(format!(
                    "profile `{}` has rules for several databases on server {}: its agents' direct connections go to the guard of the first, not to `{}`'s",
                    profile.name, database.server, database.name
                ));
                continue;
            }
            seen.push((profile_index, &database.server));
            for socket in &database.unix_sockets {
                let key = DatabaseSocketKey {
                    profile: profile_index,
                    name: unix_name(socket),
                };
                if !out.database_sockets.iter().any(|(k, _)| *k == key) {
                    out.database_sockets.push((key, route));
                }
            }
            match &server {
                Server::Address(addr) => out.routes.push((
                    RouteKey {
                        profile: profile_index,
                        port: addr.port(),
                        _pad: 0,
                        addr: mapped(addr.ip()),
                    },
                    route,
                )),
                Server::Host(host, port) => out.route_hosts.push(RouteHost {
                    profile: profile_index,
                    host: host.clone(),
                    port: *port,
                    route,
                }),
            }
        }
    }
}

/// Whether agents' connections to `database`'s server are routed to its
/// guard (for some profile) by `routes`: a policy's, and those of the
/// addresses its host names resolved to.
pub fn is_routed(database: &crate::database::Database, routes: &[(RouteKey, Route)]) -> bool {
    routes.iter().any(|(_, route)| {
        route.addr == mapped(database.listen.ip()) && route.port == database.listen.port()
    })
}

/// The unix-domain sockets of `database`'s server that agents may not
/// connect to (for some profile).
pub fn refused_sockets(
    database: &crate::database::Database,
    sockets: &[(DatabaseSocketKey, Route)],
) -> Vec<String> {
    let guard = mapped(database.listen.ip());
    database
        .unix_sockets
        .iter()
        .filter(|socket| {
            let name = unix_name(socket);
            sockets.iter().any(|(key, route)| {
                key.name == name && route.addr == guard && route.port == database.listen.port()
            })
        })
        .cloned()
        .collect()
}

/// A socket's name as the kernel holds it (`sun_path`): a path, or after
/// a NUL an abstract name (`@name` in the policy), zero-padded.
fn unix_name(socket: &str) -> [u8; UNIX_PATH_LEN] {
    let mut name = [0; UNIX_PATH_LEN];
    let (start, bytes) = match socket.strip_prefix('@') {
        Some(rest) => (1, rest.as_bytes()),
        None => (0, socket.as_bytes()),
    };
    name[start..start + bytes.len()].copy_from_slice(bytes);
    name
}

/// A database server as the policy gives it.
enum Server {
    Address(SocketAddr),
    Host(String, u16),
}

fn profile_entry(profile: &Profile, index: u32) -> AgentEntry {
    let flag = |on: bool, bit: u32| if on { bit } else { 0 };
    let files_deny = profile.defaults.files == Access::Deny;
    let any_read_only = profile.files.iter().any(|r| r.effect == Effect::ReadOnly);
    AgentEntry {
        profile: index,
        mode: match profile.mode {
            Mode::Enforce => mode::ENFORCE,
            Mode::Monitor => mode::MONITOR,
        },
        flags: flag(profile.record_allowed, agent_flag::RECORD_ALLOWED)
            | flag(profile.audit_or_deny, agent_flag::AUDIT_OR_DENY)
            | flag(profile.on_error == Access::Deny, agent_flag::FAIL_CLOSED)
            | flag(
                profile.defaults.exec == Access::Deny,
                agent_flag::EXEC_DEFAULT_DENY,
            )
            | flag(files_deny, agent_flag::FILES_DEFAULT_DENY)
            | flag(
                profile.defaults.network == Access::Deny,
                agent_flag::NETWORK_DEFAULT_DENY,
            )
            | flag(files_deny || any_read_only, agent_flag::DECIDE_WRITES)
            | flag(
                profile
                    .network
                    .iter()
                    .any(|r| matches!(r.target.to, Destination::Host(_))),
                agent_flag::HOST_RULES,
            )
            | flag(
                profile
                    .exec
                    .iter()
                    .any(|r| matches!(r.target, ExecTarget::Content(_))),
                agent_flag::EXEC_DIGESTS,
            )
            | flag(
                profile
                    .files
                    .iter()
                    .any(|r| matches!(r.target, FileTarget::Name(_))),
                agent_flag::NAME_RULES,
            ),
        _pad: 0,
        budgets: profile.budgets.clone().map(|spec| match spec {
            Some(spec) => guard_common::Budget {
                interval_ns: spec.interval.as_nanos() as u64,
                window_ns: spec.interval.as_nanos() as u64 * u64::from(spec.burst),
            },
            None => guard_common::Budget::NONE,
        }),
    }
}

fn add_rule<T>(out: &mut CompiledPolicy, profile: &Profile, rule: &Rule<T>) -> RuleRef {
    let rule_id = out.rules.len() as u32;
    out.rules.push(RuleInfo {
        id: rule.id.clone(),
        message: rule.message.clone(),
        profile: profile.name.clone(),
        freeze: rule.freeze,
        approvable: rule.approvable,
    });
    RuleRef {
        rule_id,
        action: match rule.effect {
            Effect::Allow => action::ALLOW,
            Effect::Deny => action::DENY,
            Effect::ReadOnly => action::READ_ONLY,
        },
    }
}

/// Which rule first claimed each key, so that two rules of a profile that
/// name the same file, path or name are refused rather than one silently
/// overwriting the other.
#[derive(Default)]
struct SeenKeys(HashMap<(&'static str, Vec<u8>), String>);

impl SeenKeys {
    fn claim<T>(
        &mut self,
        kind: &'static str,
        key: &[u8],
        rule: &Rule<T>,
    ) -> Result<(), PolicyError> {
        match self.0.insert((kind, key.to_vec()), rule.id.clone()) {
            Some(first) if first != rule.id => Err(PolicyError::new(
                rule.location,
                format!(
                    "rule `{}`: rule `{first}` of the same profile already names this {kind}; a target may have one rule",
                    rule.id
                ),
            )),
            _ => Ok(()),
        }
    }
}

fn bytes_of<T: Copy>(value: &T) -> Vec<u8> {
    // SAFETY: the key types are repr(C) without padding (guard-common checks).
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

/// LPM key data for an exec path: `bytes` (a path, then NUL for an exact
/// rule or `/` for a subtree rule) after the profile id.
fn exec_path_entry(profile: u32, bytes: &[u8], rule: RuleRef) -> (u32, ExecPathKey, RuleRef) {
    let mut key = ExecPathKey {
        profile: profile.to_be_bytes(),
        path: [0; EXEC_PATH_KEY_LEN],
    };
    key.path[..bytes.len()].copy_from_slice(bytes);
    (32 + bytes.len() as u32 * 8, key, rule)
}

fn compile_exec(
    out: &mut CompiledPolicy,
    seen: &mut SeenKeys,
    profile: &Profile,
    index: u32,
) -> Result<(), PolicyError> {
    for rule in &profile.exec {
        let r = add_rule(out, profile, rule);
        let (path, suffix) = match &rule.target {
            ExecTarget::Path {
                path,
                sha256: Some(expected),
            } => {
                // Pinned by content: identity only, only if the content
                // matches, and only while the file's change time is the one
                // read before hashing (the kernel compares it).
                let version = FileVersion::read(path);
                out.pinned_files
                    .push((path.clone(), version.as_ref().ok().copied()));
                match version {
                    Ok(version) if version.sha256 == *expected => {
                        let (dev, ino) = version.identity;
                        let key = IdentityKey { ino, dev, profile: index };
                        seen.claim("file", &bytes_of(&key), rule)?;
                        out.exec_identity.push((
                            key,
                            ExecIdentityRule {
                                rule: r,
                                ctime_sec: version.ctime_sec,
                                ctime_nsec: version.ctime_nsec,
                                flags: exec_flag::PINNED,
                            },
                        ));
                    }
                    Ok(version) => out.notes.push(format!(
                        "rule `{}`: {} has sha256 {}, not the one the rule names; it is not allowed",
                        rule.id,
                        path.display(),
                        hex::encode(version.sha256)
                    )),
                    Err(e) => out.notes.push(format!(
                        "rule `{}`: cannot read {} ({e}); it is not allowed",
                        rule.id,
                        path.display()
                    )),
                }
                continue;
            }
            ExecTarget::Content(sha256) => {
                let key = DigestKey {
                    sha256: *sha256,
                    profile: index,
                    _pad: 0,
                };
                seen.claim("content", &bytes_of(&key), rule)?;
                out.exec_digests.push((key, r));
                continue;
            }
            ExecTarget::Path { path, sha256: None } => (path, b'\0'),
            ExecTarget::Subtree(path) => (path, b'/'),
        };
        // The kernel sees the resolved path; where the rule's path goes
        // through a symlink (e.g. /bin -> /usr/bin), add the resolved form too.
        let mut paths = vec![path.clone()];
        if let Ok(real) = std::fs::canonicalize(path)
            && real != *path
        {
            paths.push(real);
        }
        for p in &paths {
            let mut bytes = p.as_os_str().as_encoded_bytes().to_vec();
            if suffix == b'/' && bytes == b"/" {
                bytes.clear();
            }
            bytes.push(suffix);
            if bytes.len() > EXEC_PATH_KEY_LEN {
                return Err(PolicyError::new(
                    rule.location,
                    format!(
                        "rule `{}`: resolved path {} is too long for the kernel's path match",
                        rule.id,
                        p.display()
                    ),
                ));
            }
            let entry = exec_path_entry(index, &bytes, r);
            seen.claim("path", &bytes_of(&entry.1), rule)?;
            out.exec_paths.push(entry);
        }
        if let ExecTarget::Path { path, .. } = &rule.target {
            match identity(path) {
                Ok((dev, ino)) => {
                    let key = IdentityKey { ino, dev, profile: index };
                    seen.claim("file", &bytes_of(&key), rule)?;
                    out.exec_identity.push((
                        key,
                        ExecIdentityRule {
                            rule: r,
                            ..Default::default()
                        },
                    ))
                }
                Err(e) => out.notes.push(format!(
                    "rule `{}`: {} cannot be resolved ({e}); it matches by path only until the policy is reloaded",
                    rule.id,
                    path.display()
                )),
            }
        }
    }
    Ok(())
}

fn compile_files(
    out: &mut CompiledPolicy,
    seen: &mut SeenKeys,
    profile: &Profile,
    index: u32,
    paths: Paths,
) -> Result<(), PolicyError> {
    for rule in &profile.files {
        let r = add_rule(out, profile, rule);
        match &rule.target {
            FileTarget::Path(path) | FileTarget::Subtree(path) => {
                let (dev, ino) = match identity(path) {
                    Ok(identity) => identity,
                    Err(e) if paths == Paths::Anywhere => {
                        out.notes.push(format!(
                            "rule `{}`: {} cannot be resolved here ({e}); guardd refuses the policy on a host where it cannot be either",
                            rule.id,
                            path.display()
                        ));
                        continue;
                    }
                    Err(e) => {
                        return Err(PolicyError::new(
                            rule.location,
                            format!("rule `{}`: cannot resolve {}: {e}", rule.id, path.display()),
                        ));
                    }
                };
                if matches!(rule.target, FileTarget::Subtree(_)) && !path.is_dir() {
                    return Err(PolicyError::new(
                        rule.location,
                        format!(
                            "rule `{}`: subtree {} is not a directory; use `path` for a file",
                            rule.id,
                            path.display()
                        ),
                    ));
                }
                let key = IdentityKey {
                    ino,
                    dev,
                    profile: index,
                };
                seen.claim("file or directory", &bytes_of(&key), rule)?;
                out.file_identity.push((key, r));
            }
            FileTarget::Name(pattern) => {
                let entry = name_entry(index, pattern, r);
                seen.claim("name", &bytes_of(&(entry.0, entry.1)), rule)?;
                out.file_names.push(entry)
            }
        }
    }
    Ok(())
}

/// LPM entry for a name pattern: the name reversed, so a suffix pattern is a
/// prefix; an exact name adds a NUL, which the kernel puts after a whole name.
fn name_entry(profile: u32, pattern: &NamePattern, rule: RuleRef) -> (u32, NameKey, RuleRef) {
    let mut key = NameKey {
        profile: profile.to_be_bytes(),
        reversed: [0; NAME_KEY_LEN],
    };
    let (name, exact) = match pattern {
        NamePattern::Exact(name) => (name, true),
        NamePattern::Suffix(suffix) => (suffix, false),
    };
    let mut len = 0;
    for (slot, byte) in key.reversed.iter_mut().zip(name.bytes().rev()) {
        *slot = byte;
        len += 1;
    }
    if exact {
        len += 1; // The NUL, already zero.
    }
    (32 + len * 8, key, rule)
}

/// The key address for a network: IPv6, or IPv4 mapped into IPv6.
pub fn mapped(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn mapped_prefix(net: &IpNet) -> u32 {
    match net {
        IpNet::V4(v4) => 96 + u32::from(v4.prefix_len()),
        IpNet::V6(v6) => u32::from(v6.prefix_len()),
    }
}

fn compile_network(
    out: &mut CompiledPolicy,
    profile: &Profile,
    index: u32,
) -> Result<(), PolicyError> {
    // (mapped address, mapped prefix) → rules for that exact prefix, with the
    // location and id of each for errors.
    type Prefixes = BTreeMap<([u8; 16], u32), Vec<(NetRule, Location, String)>>;
    let mut prefixes = Prefixes::new();
    for rule in profile.network.iter().chain(default_denies().iter()) {
        let r = add_rule(out, profile, rule);
        let target = &rule.target;
        let net_rule = NetRule {
            port_lo: target.ports.lo,
            port_hi: target.ports.hi,
            protocol: match target.protocol {
                Protocol::Any => protocol::ANY,
                Protocol::Tcp => protocol::TCP,
                Protocol::Udp => protocol::UDP,
            },
            action: r.action as u16,
            rule_id: r.rule_id,
        };
        let cidr = match &target.to {
            Destination::Cidr(cidr) => cidr,
            Destination::Host(host) => {
                out.host_rules.push(HostRule {
                    profile: index,
                    host: host.clone(),
                    rule: net_rule,
                });
                continue;
            }
        };
        prefixes
            .entry((mapped(cidr.network()), mapped_prefix(cidr)))
            .or_default()
            .push((net_rule, rule.location, rule.id.clone()));
    }
    // The kernel finds only the longest matching prefix, so each prefix also
    // carries the rules of every shorter prefix containing it, longest first.
    for (&(addr, len), own) in &prefixes {
        // One lookup per shorter length (not a scan of every prefix), so
        // that 100,000 rules compile in linear time.
        let containing: Vec<_> = (0..len)
            .rev()
            .filter_map(|shorter| prefixes.get_key_value(&(network(addr, shorter), shorter)))
            .collect();
        // On one prefix, deny rules are tried before allow rules, and the
        // policy's rules before the default denies.
        let mut own: Vec<_> = own.iter().collect();
        own.sort_by_key(|(rule, _, id)| {
            (
                id.starts_with(DEFAULT_DENY),
                rule.action != action::DENY as u16,
            )
        });
        let all: Vec<_> = own
            .into_iter()
            .chain(containing.into_iter().flat_map(|(_, rules)| rules))
            .collect();
        if all.len() > NET_RULES_PER_PREFIX {
            let (_, location, id) = (*all[0]).clone();
            return Err(PolicyError::new(
                location,
                format!(
                    "rule `{id}`: {} network rules apply to this prefix (including those of wider prefixes containing it); the kernel holds at most {NET_RULES_PER_PREFIX}",
                    all.len()
                ),
            ));
        }
        let mut set = NetRuleSet::default();
        for (slot, (rule, _, _)) in set.rules.iter_mut().zip(&all) {
            *slot = *rule;
        }
        set.len = all.len() as u32;
        out.net_rules.push((
            32 + len,
            NetKey {
                profile: index.to_be_bytes(),
                addr,
            },
            set,
        ));
    }
    Ok(())
}

/// The destinations every profile denies unless a rule of the policy on
/// the same or a narrower prefix allows them: cloud metadata services,
/// link-local and private ranges.
fn default_denies() -> &'static [Rule<NetTarget>] {
    static RULES: std::sync::OnceLock<Vec<Rule<NetTarget>>> = std::sync::OnceLock::new();
    RULES.get_or_init(|| {
        [
            (
                "metadata",
                "169.254.169.254/32",
                "the cloud metadata service holds the host's credentials",
            ),
            (
                "metadata",
                "fd00:ec2::254/128",
                "the cloud metadata service holds the host's credentials",
            ),
            (
                "link-local",
                "169.254.0.0/16",
                "link-local addresses are the host's, not the agent's",
            ),
            (
                "link-local",
                "fe80::/10",
                "link-local addresses are the host's, not the agent's",
            ),
            (
                "private",
                "10.0.0.0/8",
                "private networks are reached only where a rule allows",
            ),
            (
                "private",
                "172.16.0.0/12",
                "private networks are reached only where a rule allows",
            ),
            (
                "private",
                "192.168.0.0/16",
                "private networks are reached only where a rule allows",
            ),
            (
                "private",
                "fc00::/7",
                "private networks are reached only where a rule allows",
            ),
        ]
        .into_iter()
        .map(|(kind, cidr, message)| Rule {
            id: format!("{DEFAULT_DENY}{kind}"),
            message: Some(message.into()),
            freeze: false,
            approvable: false,
            effect: Effect::Deny,
            target: NetTarget {
                to: Destination::Cidr(cidr.parse().expect("valid CIDR")),
                ports: PortRange::ALL,
                protocol: Protocol::Any,
            },
            location: Location::default(),
        })
        .collect()
    })
}

/// The id of the default deny that covers `addr`, if one does.
pub fn default_deny_of(addr: IpAddr) -> Option<&'static str> {
    let addr = match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    };
    default_denies()
        .iter()
        .find(|rule| matches!(&rule.target.to, Destination::Cidr(cidr) if cidr.contains(&addr)))
        .map(|rule| rule.id.as_str())
}

/// The network of `addr` with a prefix of `len` bits (both 128-bit).
fn network(addr: [u8; 16], len: u32) -> [u8; 16] {
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - len)
    };
    (u128::from_be_bytes(addr) & mask).to_be_bytes()
}

fn check_capacity(out: &CompiledPolicy, policy: &Policy) -> Result<(), PolicyError> {
    let limits = [
        ("profiles", out.profiles.len(), capacity::AGENTS),
        ("agents", out.agents.len(), capacity::AGENTS),
        (
            "exec identity entries",
            out.exec_identity.len(),
            capacity::EXEC_IDENTITY,
        ),
        (
            "exec path entries",
            out.exec_paths.len(),
            capacity::EXEC_PATHS,
        ),
        (
            "exec content rules",
            out.exec_digests.len(),
            capacity::EXEC_DIGESTS,
        ),
        (
            "file and directory rules",
            out.file_identity.len(),
            capacity::FILE_IDENTITY,
        ),
        (
            "protected names",
            out.file_names.len(),
            capacity::FILE_NAMES,
        ),
        ("network prefixes", out.net_rules.len(), capacity::NET_RULES),
        (
            "routed database addresses",
            out.routes.len(),
            capacity::ROUTES,
        ),
        (
            "unix-domain sockets of databases",
            out.database_sockets.len(),
            capacity::DATABASE_SOCKETS,
        ),
        (
            "database password and key files",
            out.secrets.len(),
            capacity::SECRETS,
        ),
    ];
    for (what, used, limit) in limits {
        if used > limit as usize {
            // The last profile from the file (guardd's canary has no location).
            let location = policy
                .profiles
                .iter()
                .rev()
                .map(|p| p.location)
                .find(|l| l.line > 0)
                .unwrap_or_default();
            return Err(PolicyError::new(
                location,
                format!("the policy needs {used} {what}; the kernel maps hold {limit}"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parse;

    fn compile_text(text: &str) -> Result<CompiledPolicy, PolicyError> {
        compile(&parse(&with_defaults(text)).expect("valid policy"))
    }

    /// Adds `default: allow` after each profile's name (moving the lines
    /// below it down by one) and an empty agent list.
    fn with_defaults(text: &str) -> String {
        let mut out = String::new();
        for line in text.lines() {
            out += line;
            out += "\n";
            if line.starts_with("  - name: ") {
                out += "    default: allow\n";
            }
        }
        out + "agents: []\n"
    }

    #[test]
    fn databases_route_the_profiles_that_have_rules_for_them() {
        let policy = parse(
            "databases:
  - name: shop
    server: 10.0.0.5:5432
    listen: 127.0.0.1:6432
  - name: shop6
    server: '[::1]:5432'
    listen: '[::1]:6433'
  - name: named
    server: db.internal:5432
    listen: 127.0.0.1:6434
    unix_socket_directories: ['@pg']
  - name: twin
    server: 10.0.0.5:5432
    listen: 127.0.0.1:6435
profiles:
  - name: none
    default: allow
  - name: cleanup
    default: allow
    databases:
      - {database: shop, default: allow}
      - {database: shop6, default: allow}
      - {database: named, default: allow}
      - {database: twin, default: allow}
agents: []
",
        )
        .expect("valid policy");
        let compiled = compile(&policy).unwrap();
        let routes: Vec<(u32, IpAddr, u16, IpAddr, u16)> = compiled
            .routes
            .iter()
            .map(|(key, route)| {
                let addr = |a: [u8; 16]| std::net::Ipv6Addr::from(a).to_canonical();
                (
                    key.profile,
                    addr(key.addr),
                    key.port,
                    addr(route.addr),
                    route.port,
                )
            })
            .collect();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // Only `cleanup` (index 1) is routed; an IPv4 server and guard are
        // stored IPv4-mapped.
        assert_eq!(
            routes,
            [
                (1, ip("10.0.0.5"), 5432, ip("127.0.0.1"), 6432),
                (1, ip("::1"), 5432, ip("::1"), 6433),
            ]
        );
        assert_eq!(compiled.routes[0].0.addr, mapped(ip("10.0.0.5")));
        // The unix sockets of the loopback server, for the same profile.
        let sockets: Vec<(u32, String, u16)> = compiled
            .database_sockets
            .iter()
            .map(|(key, route)| {
                let name = String::from_utf8_lossy(&key.name);
                (
                    key.profile,
                    name.trim_end_matches('\0').to_string(),
                    route.port,
                )
            })
            .collect();
        assert_eq!(
            sockets,
            [
                (1, "/run/postgresql/.s.PGSQL.5432".into(), 6433),
                (1, "/var/run/postgresql/.s.PGSQL.5432".into(), 6433),
                (1, "/tmp/.s.PGSQL.5432".into(), 6433),
                (1, "\0pg/.s.PGSQL.5432".into(), 6434),
            ]
        );
        assert_eq!(
            refused_sockets(&policy.databases[2], &compiled.database_sockets),
            ["@pg/.s.PGSQL.5432"]
        );
        assert!(refused_sockets(&policy.databases[0], &compiled.database_sockets).is_empty());
        assert!(is_routed(&policy.databases[0], &compiled.routes));
        assert!(!is_routed(&policy.databases[2], &compiled.routes));
        assert!(!is_routed(&policy.databases[3], &compiled.routes));
        // A host name is guardd's to resolve.
        assert_eq!(
            compiled.route_hosts,
            [RouteHost {
                profile: 1,
                host: "db.internal".into(),
                port: 5432,
                route: Route {
                    addr: mapped(ip("127.0.0.1")),
                    port: 6434,
                    _pad: [0; 3]
                },
            }]
        );
        let notes = compiled.notes.join("\n");
        assert!(
            notes.contains(
                "profile `cleanup` has rules for several databases on server 10.0.0.5:5432"
            ),
            "{notes}"
        );
    }

    #[test]
    fn exec_rules_become_path_and_identity_entries() {
        let dir = tempfile::tempdir().unwrap();
        let tool = dir.path().join("tool");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        let text = format!(
            "profiles:\n  - name: a\n  - name: b\n    exec:\n      deny:\n        - id: t\n          path: {}\n        - id: s\n          subtree: {}\n",
            tool.display(),
            dir.path().display()
        );
        let c = compile_text(&text).unwrap();
        assert_eq!(
            *c.rules.iter().find(|r| r.id == "t").unwrap(),
            RuleInfo {
                id: "t".into(),
                message: None,
                profile: "b".into(),
                freeze: false,
                approvable: false,
            }
        );
        let id_of = |id: &str| c.rules.iter().position(|r| r.id == id).unwrap() as u32;
        let (t, s) = (id_of("t"), id_of("s"));
        let (dev, ino) = identity(&tool).unwrap();
        assert_eq!(
            c.exec_identity,
            vec![(
                IdentityKey {
                    ino,
                    dev,
                    profile: 1
                },
                ExecIdentityRule {
                    rule: RuleRef {
                        rule_id: t,
                        action: action::DENY
                    },
                    ..Default::default()
                }
            )]
        );

        let exact = tool.as_os_str().as_encoded_bytes();
        let (bits, key, rule) = c.exec_paths[0];
        assert_eq!(key.profile, 1u32.to_be_bytes());
        assert_eq!(&key.path[..exact.len()], exact);
        assert_eq!(key.path[exact.len()], 0);
        assert_eq!(
            bits,
            32 + (exact.len() as u32 + 1) * 8,
            "exact rules include the NUL"
        );
        assert_eq!(rule.rule_id, t);

        let subtree = c.exec_paths.iter().find(|e| e.2.rule_id == s).unwrap();
        let dir_bytes = dir.path().as_os_str().as_encoded_bytes();
        assert_eq!(subtree.0, 32 + (dir_bytes.len() as u32 + 1) * 8);
        assert_eq!(subtree.1.path[dir_bytes.len()], b'/');
    }

    #[test]
    fn missing_exec_target_is_a_note_not_an_error() {
        let c = compile_text("profiles:\n  - name: a\n    exec:\n      deny:\n        - id: t\n          path: /nonexistent/tool\n").unwrap();
        assert!(c.exec_identity.is_empty());
        assert_eq!(c.exec_paths.len(), 1);
        assert!(c.notes[0].contains("by path only"), "{:?}", c.notes);
    }

    #[test]
    fn protected_paths_must_exist_and_errors_have_the_rule_line() {
        let text = "profiles:\n  - name: a\n    files:\n      protect:\n        - id: gone\n          subtree: /nonexistent/dir\n";
        // Validated for another host, a missing path is a note.
        let anywhere = compile_for(&parse(&with_defaults(text)).unwrap(), Paths::Anywhere).unwrap();
        assert!(
            anywhere
                .notes
                .iter()
                .any(|n| n.contains("rule `gone`: /nonexistent/dir cannot be resolved here")),
            "{:?}",
            anywhere.notes
        );
        assert!(anywhere.file_identity.is_empty());
        let e = compile_text(text).unwrap_err();
        assert_eq!(e.location.line, 6);
        assert!(
            e.reason.contains("`gone`") && e.reason.contains("/nonexistent/dir"),
            "{e}"
        );
    }

    #[test]
    fn users_and_groups_this_host_does_not_know_are_notes() {
        let text = "profiles:\n  - name: a\n    default: allow\nagents:\n  - name: x\n    profile: a\n    launched_by: {users: [root, no-such-user-7f3a, '4242'], groups: [no-such-group-7f3a]}\n";
        let policy = parse(text).unwrap();
        let here = compile(&policy).unwrap();
        let about = |who: &str| here.notes.iter().any(|n| n.contains(who));
        assert!(
            about("`launched_by` names user `no-such-user-7f3a`, unknown on this host"),
            "{:?}",
            here.notes
        );
        assert!(
            about("names group `no-such-group-7f3a`"),
            "{:?}",
            here.notes
        );
        assert!(!about("`root`") && !about("4242"), "{:?}", here.notes);
        let anywhere = compile_for(&policy, Paths::Anywhere).unwrap();
        assert!(anywhere.notes.is_empty(), "{:?}", anywhere.notes);
    }

    #[test]
    fn a_file_is_not_a_subtree() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let text = format!(
            "profiles:\n  - name: a\n    files:\n      protect:\n        - id: f\n          subtree: {}\n",
            file.path().display()
        );
        assert!(
            compile_text(&text)
                .unwrap_err()
                .reason
                .contains("not a directory")
        );
    }

    #[test]
    fn protected_directories_become_identities() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "profiles:\n  - name: a\n    files:\n      protect:\n        - id: d\n          subtree: {}\n",
            dir.path().display()
        );
        let c = compile_text(&text).unwrap();
        let (dev, ino) = identity(dir.path()).unwrap();
        assert_eq!(
            c.file_identity[0].0,
            IdentityKey {
                ino,
                dev,
                profile: 0
            }
        );
    }

    #[test]
    fn kernel_dev_encoding() {
        // tmpfs and the like have major 0: the kernel and stat agree there;
        // a real block device would differ, which this guards against.
        let (dev, _) = identity(Path::new("/")).unwrap();
        let meta = std::fs::metadata("/").unwrap();
        assert_eq!(dev >> 20, libc::major(meta.dev()));
        assert_eq!(dev & 0xfffff, libc::minor(meta.dev()));
    }

    #[test]
    fn names_are_reversed() {
        let c = compile_text("profiles:\n  - name: a\n    files:\n      protect:\n        - id: e\n          name: .env\n        - id: s\n          name: \"*.db\"\n").unwrap();
        let (bits, key, _) = c.file_names[0];
        assert_eq!(&key.reversed[..5], b"vne.\0");
        assert_eq!(bits, 32 + 5 * 8);
        let (bits, key, _) = c.file_names[1];
        assert_eq!(&key.reversed[..3], b"bd.");
        assert_eq!(bits, 32 + 3 * 8);
    }

    #[test]
    fn ipv4_is_mapped_and_wider_prefixes_are_inherited() {
        let text = "profiles:\n  - name: a\n    network:\n      deny:\n        - id: wide\n          cidr: 10.0.0.0/8\n          ports: 22\n        - id: narrow\n          cidr: 10.1.0.0/16\n          ports: 443\n          protocol: tcp\n        - id: v6\n          cidr: \"fd00::/8\"\n";
        let c = compile_text(text).unwrap();
        // The three prefixes, and the default denies' eight, one shared.
        assert_eq!(c.net_rules.len(), 3 + 8 - 1);
        let default_private = c.rules.iter().position(|r| r.id == "default-deny:private");
        let find = |bits: u32| {
            c.net_rules
                .iter()
                .find(|e| e.0 == bits && (e.1.addr[12] == 10 || bits == 32 + 8))
                .unwrap()
        };
        let (_, key, wide) = find(32 + 96 + 8);
        assert_eq!(&key.addr[..12], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        assert_eq!(key.addr[12], 10);
        assert_eq!(wide.len, 2, "the policy's rule, then the default deny");
        assert_eq!(Some(wide.rules[1].rule_id as usize), default_private);
        let (_, _, narrow) = find(32 + 96 + 16);
        assert_eq!(narrow.len, 3, "the /16 inherits the /8's rules");
        assert_eq!(
            (
                narrow.rules[0].port_lo,
                narrow.rules[0].protocol,
                narrow.rules[0].rule_id
            ),
            (443, protocol::TCP, 1)
        );
        assert_eq!((narrow.rules[1].port_lo, narrow.rules[1].rule_id), (22, 0));
        let (_, key, v6) = find(32 + 8);
        assert_eq!(key.addr[0], 0xfd);
        assert_eq!(
            (v6.len, v6.rules[0].port_lo, v6.rules[0].port_hi),
            (2, 0, u16::MAX),
            "and inherits fc00::/7's default deny"
        );
    }

    #[test]
    fn a_rule_allows_what_a_default_deny_covers_and_cannot_take_its_id() {
        let text = "profiles:\n  - name: a\n    network:\n      allow:\n        - id: lan\n          cidr: 10.0.0.0/8\n";
        let c = compile_text(text).unwrap();
        let (_, _, set) = c
            .net_rules
            .iter()
            .find(|e| e.0 == 32 + 96 + 8 && e.1.addr[12] == 10)
            .unwrap();
        assert_eq!(
            c.rules[set.rules[0].rule_id as usize].id, "lan",
            "the policy's allow comes first"
        );
        assert_eq!(set.rules[0].action, action::ALLOW as u16);
        let e = parse(&with_defaults(
            &text.replace("id: lan", "id: default-deny:mine"),
        ))
        .unwrap_err();
        assert!(e.reason.contains("default denies"), "{e}");
    }

    #[test]
    fn too_many_rules_on_one_prefix_are_refused_naming_the_rule() {
        let mut text = String::from("profiles:\n  - name: a\n    network:\n      deny:\n");
        for i in 0..=NET_RULES_PER_PREFIX {
            text += &format!(
                "        - id: r{i}\n          cidr: 10.0.0.0/8\n          ports: {}\n",
                1000 + i
            );
        }
        let e = compile_text(&text).unwrap_err();
        assert!(e.reason.contains("at most 8"), "{e}");
        assert_eq!(e.location.line, 6);
    }

    #[test]
    fn summary_names_agents_and_modes() {
        let c = compile_text("profiles:\n  - name: a\n  - name: b\n    mode: monitor\n").unwrap();
        assert!(
            c.summary()
                .starts_with("2 profile(s) [a:enforce,b:monitor], 0 agent(s)"),
            "{}",
            c.summary()
        );
    }

    #[test]
    fn on_error_deny_fails_closed() {
        let c = compile_text("profiles:\n  - name: a\n  - name: b\n    on_error: deny\n").unwrap();
        let fail_closed = |i: usize| c.profiles[i].1.flags & agent_flag::FAIL_CLOSED != 0;
        assert!(!fail_closed(0), "fail open by default");
        assert!(fail_closed(1));
        let e =
            parse("profiles:\n  - name: a\n    default: allow\n    on_error: maybe\n").unwrap_err();
        assert_eq!(e.location.line, 4, "{e}");
    }

    #[test]
    fn defaults_and_read_only_rules_become_entry_flags() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "profiles:\n  - name: open\n    default: allow\n  - name: shut\n    default: deny\n  - name: mixed\n    default: {{exec: allow, files: allow, network: deny}}\n    files:\n      read_only:\n        - id: ro\n          subtree: {}\n  - name: named\n    default: allow\n    files:\n      protect:\n        - id: env\n          name: .env\nagents: []\n",
            dir.path().display()
        );
        let c = compile(&parse(&text).unwrap()).unwrap();
        let flags = |i: usize| c.profiles[i].1.flags;
        assert_eq!(flags(0), 0);
        assert_eq!(
            flags(1),
            agent_flag::EXEC_DEFAULT_DENY
                | agent_flag::FILES_DEFAULT_DENY
                | agent_flag::NETWORK_DEFAULT_DENY
                | agent_flag::DECIDE_WRITES
        );
        assert_eq!(
            flags(2),
            agent_flag::NETWORK_DEFAULT_DENY | agent_flag::DECIDE_WRITES,
            "read-only rules make writes decisions"
        );
        assert_eq!(
            flags(3),
            agent_flag::NAME_RULES,
            "only a profile with name rules looks names up"
        );
        assert_eq!(c.file_identity[0].1.action, action::READ_ONLY);
        assert_eq!(
            defaults_of(&c.profiles[2].1),
            [("exec", "allow"), ("files", "allow"), ("network", "deny")]
        );
    }

    #[test]
    fn allow_rules_carry_the_allow_action() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "profiles:\n  - name: a\n    exec:\n      allow:\n        - id: x\n          subtree: {d}\n    files:\n      writable:\n        - id: w\n          subtree: {d}\n    network:\n      allow:\n        - id: n\n          cidr: 10.0.0.0/8\n",
            d = dir.path().display()
        );
        let c = compile_text(&text).unwrap();
        assert_eq!(c.exec_paths[0].2.action, action::ALLOW);
        assert_eq!(c.file_identity[0].1.action, action::ALLOW);
        assert_eq!(c.net_rules[0].2.rules[0].action, action::ALLOW as u16);
    }

    #[test]
    fn two_rules_on_one_target_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "profiles:\n  - name: a\n    files:\n      writable:\n        - id: first\n          subtree: {d}\n      read_only:\n        - id: second\n          subtree: {d}\n",
            d = dir.path().display()
        );
        let e = compile_text(&text).unwrap_err();
        assert_eq!(e.location.line, 9, "{e}");
        assert!(
            e.reason.contains("`second`") && e.reason.contains("`first`"),
            "{e}"
        );
    }

    #[test]
    fn sha256_rules_allow_only_a_matching_file_by_identity() {
        let dir = tempfile::tempdir().unwrap();
        let tool = dir.path().join("tool");
        std::fs::write(&tool, "#!/bin/sh\necho hi\n").unwrap();
        let digest = hex::encode(sha256_file(&tool).unwrap());
        let rule = |sha: &str| {
            format!(
                "profiles:\n  - name: a\n    exec:\n      allow:\n        - id: pinned\n          path: {}\n          sha256: {sha}\n",
                tool.display()
            )
        };
        let c = compile_text(&rule(&digest)).unwrap();
        let (dev, ino) = identity(&tool).unwrap();
        let meta = std::fs::metadata(&tool).unwrap();
        assert_eq!(
            c.exec_identity,
            vec![(
                IdentityKey {
                    ino,
                    dev,
                    profile: 0
                },
                ExecIdentityRule {
                    rule: RuleRef {
                        rule_id: 0,
                        action: action::ALLOW
                    },
                    ctime_sec: meta.ctime(),
                    ctime_nsec: meta.ctime_nsec() as u32,
                    flags: exec_flag::PINNED,
                }
            )]
        );
        assert!(
            c.exec_paths.is_empty(),
            "never by path: a copy elsewhere is not the file"
        );
        assert_eq!(
            c.pinned_files,
            vec![(tool.clone(), Some(FileVersion::read(&tool).unwrap()))]
        );
        assert!(!c.pinned_file_changed());
        // Change times tick with the kernel's coarse clock.
        std::thread::sleep(std::time::Duration::from_millis(50));
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(c.pinned_file_changed(), "a new change time is a change");

        let c = compile_text(&rule(&"0".repeat(64))).unwrap();
        assert!(c.exec_identity.is_empty());
        assert!(
            c.notes[0].contains("`pinned`") && c.notes[0].contains(&digest),
            "{:?}",
            c.notes
        );
    }

    #[test]
    fn on_one_prefix_deny_rules_come_first() {
        let text = "profiles:\n  - name: a\n    network:\n      allow:\n        - id: lan\n          cidr: 10.0.0.0/8\n      deny:\n        - id: no-ssh\n          cidr: 10.0.0.0/8\n          ports: 22\n";
        let c = compile_text(text).unwrap();
        let rules = &c.net_rules[0].2.rules;
        assert_eq!(
            (rules[0].action, rules[0].port_lo),
            (action::DENY as u16, 22)
        );
        assert_eq!(rules[1].action, action::ALLOW as u16);
    }
}
