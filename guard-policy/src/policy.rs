//! The policy file: a YAML list of agent profiles, each with exec, file and
//! network rules and a mode. `docs/policy.md` is the reference.
//!
//! Parsing keeps the location of every profile and rule, so that every error,
//! including those found later while compiling (a protected path that does
//! not exist, a limit exceeded), names the line and column.

use std::{
    net::IpAddr,
    path::{Component, Path, PathBuf},
};

use ipnet::IpNet;
use serde::Deserialize;
use serde_saphyr::Spanned;

pub use crate::common::{Access, Location, PolicyError, check_name};
use crate::{
    common::host_name,
    database::{self, Database, DatabaseFile, StatementRules, StatementRulesFile},
};

/// Longest exec path a rule may name (the kernel matches at most
/// `EXEC_PATH_KEY_LEN` bytes, including the NUL or trailing `/`).
pub const MAX_EXEC_RULE_PATH: usize = guard_common::EXEC_PATH_KEY_LEN - 1;
/// Longest protected name pattern (without the `*`).
pub const MAX_NAME_PATTERN: usize = guard_common::NAME_KEY_LEN - 1;

/// A validated policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub profiles: Vec<Profile>,
    pub agents: Vec<AgentDef>,
    /// The databases the statement guard stands in front of.
    pub databases: Vec<Database>,
}

/// An agent: a name developers launch (`guardctl run --agent NAME`) and the
/// profile its sessions get unless they ask for another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentDef {
    pub name: String,
    pub profile: String,
    /// Who besides root may launch it.
    pub launched_by: People,
    /// Whose logins are placed in its sessions (`guardctl login`).
    pub logins: People,
    pub location: Location,
}

/// Users and groups by name, or by number for ids; looked up when used, so
/// that the user database of the host at that moment decides.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct People {
    pub users: Vec<String>,
    pub groups: Vec<String>,
    /// Where the policy names them; `None` when it does not.
    pub location: Option<Location>,
}

impl People {
    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.groups.is_empty()
    }
}

impl std::fmt::Display for People {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |names: &[String]| {
            names
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match (self.users.is_empty(), self.groups.is_empty()) {
            (true, true) => write!(f, "nobody"),
            (false, true) => write!(f, "users {}", list(&self.users)),
            (true, false) => write!(f, "groups {}", list(&self.groups)),
            (false, false) => write!(
                f,
                "users {} and groups {}",
                list(&self.users),
                list(&self.groups)
            ),
        }
    }
}

/// What an agent may do: a default per kind of action, and rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile {
    pub name: String,
    pub mode: Mode,
    pub record_allowed: bool,
    /// Deny an action whose record cannot be written (implies
    /// `record_allowed`).
    pub audit_or_deny: bool,
    /// What an internal error in a hook does: allow (fail open, the
    /// default) or deny (fail closed).
    pub on_error: Access,
    pub defaults: Defaults,
    pub exec: Vec<Rule<ExecTarget>>,
    pub files: Vec<Rule<FileTarget>>,
    pub network: Vec<Rule<NetTarget>>,
    /// Indexed by `guard_common::budget`.
    pub budgets: [Option<BudgetSpec>; guard_common::BUDGETS],
    /// What its statements may do, per database.
    pub databases: Vec<StatementRules>,
    pub location: Location,
}

/// The budgets' names in policies and records, indexed by
/// `guard_common::budget`.
pub const BUDGET_NAMES: [&str; guard_common::BUDGETS] = ["destroy", "destinations"];

/// A per-session budget: at most `burst` operations at once, refilled by
/// one every `interval`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BudgetSpec {
    pub burst: u32,
    pub interval: std::time::Duration,
    /// The rate as written, for messages.
    pub rate: String,
    /// Exhausting it also freezes the session.
    pub freeze: bool,
}

/// Largest burst a budget may have.
pub const MAX_BURST: u32 = 1_000_000;

/// What happens to an action no rule matches, per kind of action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Defaults {
    pub exec: Access,
    pub files: Access,
    pub network: Access,
}

impl Defaults {
    pub const fn all(access: Access) -> Self {
        Self {
            exec: access,
            files: access,
            network: access,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Deny what the profile denies.
    #[default]
    Enforce,
    /// Allow everything; record what would have been denied.
    Monitor,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Monitor => "monitor",
        }
    }
}

/// What a matching rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// exec and network `allow`; files `writable`.
    Allow,
    /// exec and network `deny`; files `protect` (no destruction).
    Deny,
    /// files `read_only`: no destruction, no write, no new entries.
    ReadOnly,
}

/// A rule: its id, the message shown in records, what it does and matches,
/// and where it was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule<T> {
    pub id: String,
    pub message: Option<String>,
    /// A denial under this rule also freezes the agent's whole session.
    pub freeze: bool,
    /// A denial under this rule opens a ticket a human may approve.
    pub approvable: bool,
    pub effect: Effect,
    pub target: T,
    pub location: Location,
}

/// A SHA-256 digest.
pub type Sha256 = [u8; 32];

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExecTarget {
    /// This file: by its path and by its identity (device + inode). With a
    /// digest (allow rules only), by identity only, and only while the
    /// file's content has that digest.
    Path {
        path: PathBuf,
        sha256: Option<Sha256>,
    },
    /// Every file below this directory, by resolved path.
    Subtree(PathBuf),
    /// Every file with this content (deny rules only): hashed by the
    /// kernel's IMA at each exec.
    Content(Sha256),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileTarget {
    /// This file, by identity.
    Path(PathBuf),
    /// This directory and everything below it, by identity.
    Subtree(PathBuf),
    /// Any file with this name.
    Name(NamePattern),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NamePattern {
    Exact(String),
    /// `*suffix`.
    Suffix(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetTarget {
    pub to: Destination,
    pub ports: PortRange,
    pub protocol: Protocol,
}

/// Where a network rule applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// Every address in this network (host bits cleared).
    Cidr(IpNet),
    /// The addresses guardd resolves this name to (lower case, no trailing
    /// dot).
    Host(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    pub const ALL: PortRange = PortRange {
        lo: 0,
        hi: u16::MAX,
    };
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Any,
    Tcp,
    Udp,
}

// ------------------------------------------------------------ file format --

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    profiles: Vec<Spanned<ProfileFile>>,
    agents: Vec<Spanned<AgentFile>>,
    #[serde(default)]
    databases: Vec<Spanned<DatabaseFile>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentFile {
    name: Spanned<String>,
    profile: Spanned<String>,
    launched_by: Option<Spanned<PeopleFile>>,
    logins: Option<Spanned<PeopleFile>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PeopleFile {
    #[serde(default)]
    users: Vec<Spanned<String>>,
    #[serde(default)]
    groups: Vec<Spanned<String>>,
}

impl PeopleFile {
    /// Checks the names: what a user or group database accepts.
    fn parse(file: Option<Spanned<Self>>) -> Result<People, PolicyError> {
        let Some(file) = file else {
            return Ok(People::default());
        };
        let names = |list: Vec<Spanned<String>>, what: &str| {
            list.into_iter()
                .map(|name| {
                    let valid = !name.value.is_empty()
                        && name.value.len() <= 32
                        && !name.value.starts_with('-')
                        && name.value.chars().all(|c| {
                            c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '$')
                        });
                    if valid {
                        Ok(name.value)
                    } else {
                        Err(PolicyError::new(
                            Location::from(name.referenced),
                            format!(
                                "invalid {what} `{}`: use a name of 1-32 letters, digits, `-`, `_`, `.` (a number is an id)",
                                name.value
                            ),
                        ))
                    }
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(People {
            users: names(file.value.users, "user")?,
            groups: names(file.value.groups, "group")?,
            location: Some(Location::from(file.referenced)),
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    name: Spanned<String>,
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    record_allowed: bool,
    #[serde(default)]
    audit_or_deny: bool,
    #[serde(default = "fail_open")]
    on_error: Access,
    /// Required: a profile says what happens when no rule matches.
    default: DefaultsFile,
    #[serde(default)]
    exec: ExecFile,
    #[serde(default)]
    files: FilesFile,
    #[serde(default)]
    network: NetworkFile,
    #[serde(default)]
    budgets: BudgetsFile,
    #[serde(default)]
    databases: Vec<Spanned<StatementRulesFile>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BudgetsFile {
    destroy: Option<Spanned<BudgetFile>>,
    destinations: Option<Spanned<BudgetFile>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BudgetFile {
    /// `N/s`, `N/min` or `N/h`.
    rate: String,
    burst: u32,
    #[serde(default)]
    freeze: bool,
}

fn fail_open() -> Access {
    Access::Allow
}

/// `default: allow`, or one value per kind of action.
#[derive(Deserialize)]
#[serde(
    untagged,
    expecting = "`default` must be `allow`, `deny`, or a map with `exec`, `files` and `network`, each `allow` or `deny`"
)]
enum DefaultsFile {
    All(Access),
    PerKind(PerKindDefaults),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PerKindDefaults {
    exec: Access,
    files: Access,
    network: Access,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecFile {
    #[serde(default)]
    allow: Vec<Spanned<RuleFile>>,
    #[serde(default)]
    deny: Vec<Spanned<RuleFile>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilesFile {
    #[serde(default)]
    writable: Vec<Spanned<RuleFile>>,
    #[serde(default)]
    protect: Vec<Spanned<RuleFile>>,
    #[serde(default)]
    read_only: Vec<Spanned<RuleFile>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkFile {
    #[serde(default)]
    allow: Vec<Spanned<RuleFile>>,
    #[serde(default)]
    deny: Vec<Spanned<RuleFile>>,
}

/// Every key any rule may have; which are allowed depends on the section.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    id: String,
    message: Option<String>,
    #[serde(default)]
    freeze: bool,
    #[serde(default)]
    approvable: bool,
    path: Option<String>,
    sha256: Option<String>,
    subtree: Option<String>,
    name: Option<String>,
    cidr: Option<String>,
    host: Option<String>,
    ports: Option<PortsFile>,
    protocol: Option<Protocol>,
}

#[derive(Deserialize)]
#[serde(
    untagged,
    expecting = "`ports` must be a port (`443`) or a range of ports (`8000-8999`)"
)]
enum PortsFile {
    One(u16),
    Range(String),
}

/// Parses and validates a policy.
pub fn parse(text: &str) -> Result<Policy, PolicyError> {
    // The parser's limits, sized to the largest policy the kernel maps can
    // hold (about 130,000 network rules of six YAML nodes each).
    let mut budget = serde_saphyr::Budget::default();
    budget.max_nodes = 2_000_000;
    budget.max_events = 4_000_000;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    let file: PolicyFile = serde_saphyr::from_str_with_options(text, options).map_err(|e| {
        let location = e.location().map(Location::from).unwrap_or_default();
        PolicyError {
            location,
            reason: parse_reason(&e.to_string()),
        }
    })?;
    let databases = database::databases(file.databases)?;
    let mut rule_ids = std::collections::HashMap::new();
    let mut profiles: Vec<Profile> = Vec::with_capacity(file.profiles.len());
    for profile in file.profiles {
        let location = Location::from(profile.referenced);
        let profile = profile.value;
        let name_location = Location::from(profile.name.referenced);
        let name = profile.name.value;
        check_name("profile", &name).map_err(|reason| PolicyError::new(name_location, reason))?;
        if profiles.iter().any(|p| p.name == name) {
            return Err(PolicyError::new(
                name_location,
                format!("profile `{name}` is defined twice"),
            ));
        }
        let mut unique_id = |id: &str, location: Location| -> Result<(), PolicyError> {
            check_rule_id(id).map_err(|reason| PolicyError::new(location, reason))?;
            match rule_ids.insert(id.to_string(), location) {
                Some(first) => Err(PolicyError::new(
                    location,
                    format!("rule id `{id}` is already used at {first}; rule ids must be unique"),
                )),
                None => Ok(()),
            }
        };
        let mut section = |rules: Vec<Spanned<RuleFile>>,
                           effect: Effect,
                           out: &mut Vec<(RuleFile, Effect, Location)>|
         -> Result<(), PolicyError> {
            for rule in rules {
                let location = Location::from(rule.referenced);
                unique_id(&rule.value.id, location)?;
                out.push((rule.value, effect, location));
            }
            Ok(())
        };
        let (mut exec, mut files, mut network) = (Vec::new(), Vec::new(), Vec::new());
        section(profile.exec.allow, Effect::Allow, &mut exec)?;
        section(profile.exec.deny, Effect::Deny, &mut exec)?;
        section(profile.files.writable, Effect::Allow, &mut files)?;
        section(profile.files.protect, Effect::Deny, &mut files)?;
        section(profile.files.read_only, Effect::ReadOnly, &mut files)?;
        section(profile.network.allow, Effect::Allow, &mut network)?;
        section(profile.network.deny, Effect::Deny, &mut network)?;
        let mut statements: Vec<StatementRules> = Vec::new();
        for section in profile.databases {
            let section = database::statement_rules(section, &mut unique_id)?;
            let name = &section.database;
            if !databases.iter().any(|d| &d.name == name) {
                return Err(PolicyError::new(
                    section.location,
                    format!(
                        "no database is named `{name}` (the top-level `databases` list names them)"
                    ),
                ));
            }
            if statements.iter().any(|s| &s.database == name) {
                return Err(PolicyError::new(
                    section.location,
                    format!("database `{name}` has two sections in this profile"),
                ));
            }
            statements.push(section);
        }
        let budgets = [profile.budgets.destroy, profile.budgets.destinations];
        let budgets = budgets.map(|b| b.map(budget_spec).transpose());
        let [destroy, destinations] = budgets;
        profiles.push(Profile {
            name,
            mode: profile.mode,
            record_allowed: profile.record_allowed || profile.audit_or_deny,
            audit_or_deny: profile.audit_or_deny,
            on_error: profile.on_error,
            defaults: match profile.default {
                DefaultsFile::All(access) => Defaults::all(access),
                DefaultsFile::PerKind(d) => Defaults {
                    exec: d.exec,
                    files: d.files,
                    network: d.network,
                },
            },
            exec: exec
                .into_iter()
                .map(|(r, e, l)| exec_rule(r, e, l))
                .collect::<Result<_, _>>()?,
            files: files
                .into_iter()
                .map(|(r, e, l)| file_rule(r, e, l))
                .collect::<Result<_, _>>()?,
            network: network
                .into_iter()
                .map(|(r, e, l)| net_rule(r, e, l))
                .collect::<Result<_, _>>()?,
            budgets: [destroy?, destinations?],
            databases: statements,
            location,
        });
    }
    let mut agents: Vec<AgentDef> = Vec::with_capacity(file.agents.len());
    for agent in file.agents {
        let location = Location::from(agent.referenced);
        let name_location = Location::from(agent.value.name.referenced);
        let name = agent.value.name.value;
        check_name("agent", &name).map_err(|reason| PolicyError::new(name_location, reason))?;
        if agents.iter().any(|a| a.name == name) {
            return Err(PolicyError::new(
                name_location,
                format!("agent `{name}` is defined twice"),
            ));
        }
        let profile = agent.value.profile.value;
        if !profiles.iter().any(|p| p.name == profile) {
            return Err(PolicyError::new(
                Location::from(agent.value.profile.referenced),
                format!("agent `{name}`: no profile is named `{profile}`"),
            ));
        }
        let logins = PeopleFile::parse(agent.value.logins)?;
        // A login goes to one agent's session: a name in two `logins`
        // would make the policy's order decide silently.
        for other in &agents {
            let twice = logins
                .users
                .iter()
                .find(|u| other.logins.users.contains(u))
                .map(|u| format!("user `{u}`"))
                .or_else(|| {
                    logins
                        .groups
                        .iter()
                        .find(|g| other.logins.groups.contains(g))
                        .map(|g| format!("group `{g}`"))
                });
            if let Some(twice) = twice {
                return Err(PolicyError::new(
                    logins.location.unwrap_or(location),
                    format!(
                        "agent `{name}`: the logins of {twice} already go to agent `{}`",
                        other.name
                    ),
                ));
            }
        }
        agents.push(AgentDef {
            name,
            profile,
            launched_by: PeopleFile::parse(agent.value.launched_by)?,
            logins,
            location,
        });
    }
    for database in &databases {
        if let Some(profile) = &database.default_profile
            && !profiles.iter().any(|p| &p.name == profile)
        {
            return Err(PolicyError::new(
                database.location,
                format!(
                    "database `{}`: no profile is named `{profile}`",
                    database.name
                ),
            ));
        }
    }
    Ok(Policy {
        profiles,
        agents,
        databases,
    })
}

/// The reason of a YAML or shape error: its first line, without the
/// location the error repeats (it is reported separately), and in terms of
/// the policy rather than of the parser's types.
fn parse_reason(message: &str) -> String {
    let line = message.lines().next().unwrap_or(message).trim();
    let line = line.strip_prefix("error: ").unwrap_or(line);
    let line = match line.split_once(": ") {
        Some((location, rest)) if location.starts_with("line ") => rest,
        _ => line,
    };
    if let Some(breach) = line.strip_prefix("budget breached: ") {
        return limit_reason(breach);
    }
    line.to_string()
}

/// The parser's limit a policy exceeded (`RecordedAnchorEvents { .. }`), in
/// words.
fn limit_reason(breach: &str) -> String {
    let kind = breach.split([' ', '{']).next().unwrap_or(breach);
    let mut words = String::new();
    for c in kind.chars() {
        if c.is_uppercase() && !words.is_empty() {
            words.push(' ');
        }
        words.push(c.to_ascii_lowercase());
    }
    format!(
        "the policy exceeds the YAML parser's limit on {words}: it is too large, or expands anchors (`*alias`) too often"
    )
}

/// Rule ids of the destinations every profile denies unless a rule of the
/// policy allows them start with this (policies may not use it).
pub const DEFAULT_DENY: &str = "default-deny:";

fn check_rule_id(id: &str) -> Result<(), String> {
    let valid = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '/'));
    if id.starts_with(DEFAULT_DENY) {
        Err(format!(
            "rule id `{id}`: ids starting with `{}` name Guard's default denies",
            DEFAULT_DENY
        ))
    } else if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid rule id `{id}`: use 1-64 letters, digits, `-`, `_`, `.`, `:` or `/`"
        ))
    }
}

/// Rejects keys that do not belong to the rule's section.
fn only_keys(
    rule: &RuleFile,
    location: Location,
    section: &str,
    allowed: &[&str],
) -> Result<(), PolicyError> {
    let present = [
        ("path", rule.path.is_some()),
        ("sha256", rule.sha256.is_some()),
        ("subtree", rule.subtree.is_some()),
        ("name", rule.name.is_some()),
        ("cidr", rule.cidr.is_some()),
        ("host", rule.host.is_some()),
        ("ports", rule.ports.is_some()),
        ("protocol", rule.protocol.is_some()),
    ];
    for (key, is_present) in present {
        if is_present && !allowed.contains(&key) {
            return Err(PolicyError::new(
                location,
                format!(
                    "rule `{}`: `{key}` is not a key of {section} rules (expected one of: {})",
                    rule.id,
                    allowed.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// Exactly one of the target keys must be set.
fn one_target(rule: &RuleFile, location: Location, keys: &[&str]) -> Result<(), PolicyError> {
    let set = [
        ("path", rule.path.is_some()),
        ("subtree", rule.subtree.is_some()),
        ("name", rule.name.is_some()),
        ("cidr", rule.cidr.is_some()),
        ("host", rule.host.is_some()),
    ]
    .iter()
    .filter(|(k, present)| *present && keys.contains(k))
    .count();
    if set == 1 {
        Ok(())
    } else {
        Err(PolicyError::new(
            location,
            format!("rule `{}`: set exactly one of {}", rule.id, keys.join(", ")),
        ))
    }
}

fn absolute_path(
    rule_id: &str,
    path: &str,
    location: Location,
    max: usize,
) -> Result<PathBuf, PolicyError> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(PolicyError::new(
            location,
            format!("rule `{rule_id}`: path `{path}` must be absolute"),
        ));
    }
    if p.components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(PolicyError::new(
            location,
            format!("rule `{rule_id}`: path `{path}` must not contain `.` or `..`"),
        ));
    }
    // Normalise away duplicate and trailing slashes.
    let normal: PathBuf = p.components().collect();
    if normal.as_os_str().len() > max {
        return Err(PolicyError::new(
            location,
            format!(
                "rule `{rule_id}`: path `{path}` is longer than {max} bytes, the longest the kernel matches"
            ),
        ));
    }
    Ok(normal)
}

fn exec_rule(
    rule: RuleFile,
    effect: Effect,
    location: Location,
) -> Result<Rule<ExecTarget>, PolicyError> {
    only_keys(&rule, location, "exec", &["path", "subtree", "sha256"])?;
    let sha256 = || {
        rule.sha256
            .as_deref()
            .map(|hex| parse_sha256(&rule.id, hex, location))
            .transpose()
    };
    if effect == Effect::Deny {
        // A deny rule names files (`path`, `subtree`) or a content
        // (`sha256`): every copy of it.
        if rule.sha256.is_some() {
            if rule.path.is_some() || rule.subtree.is_some() {
                return Err(PolicyError::new(
                    location,
                    format!(
                        "rule `{}`: a deny rule names files by `path` or `subtree`, or every copy of a content by `sha256` alone, not both",
                        rule.id
                    ),
                ));
            }
            let target = ExecTarget::Content(sha256()?.expect("present"));
            return rule_of(rule, effect, target, location);
        }
    }
    one_target(&rule, location, &["path", "subtree"])?;
    let target = match (&rule.path, &rule.subtree) {
        (Some(path), _) => ExecTarget::Path {
            path: absolute_path(&rule.id, path, location, MAX_EXEC_RULE_PATH)?,
            sha256: sha256()?,
        },
        (_, Some(_)) if rule.sha256.is_some() => {
            return Err(PolicyError::new(
                location,
                format!(
                    "rule `{}`: `sha256` names one file; use it with `path`",
                    rule.id
                ),
            ));
        }
        // A subtree entry is the path plus `/`.
        (_, Some(dir)) => ExecTarget::Subtree(absolute_path(
            &rule.id,
            dir,
            location,
            MAX_EXEC_RULE_PATH - 1,
        )?),
        _ => unreachable!("one_target checked"),
    };
    rule_of(rule, effect, target, location)
}

/// A budget, with its rate (`N/s`, `N/min`, `N/h`) read.
fn budget_spec(budget: Spanned<BudgetFile>) -> Result<BudgetSpec, PolicyError> {
    let location = Location::from(budget.referenced);
    let budget = budget.value;
    let fail = |reason: String| Err(PolicyError::new(location, reason));
    let period = |unit: &str| match unit {
        "s" | "sec" | "second" => Some(1),
        "min" | "minute" => Some(60),
        "h" | "hour" => Some(3600),
        _ => None,
    };
    let parsed = budget.rate.split_once('/').and_then(|(count, unit)| {
        let count: u64 = count.trim().parse().ok().filter(|&n| n > 0)?;
        Some((count, period(unit.trim())?))
    });
    let Some((count, seconds)) = parsed else {
        return fail(format!(
            "budget rate `{}` is not `N/s`, `N/min` or `N/h` with N at least 1",
            budget.rate
        ));
    };
    if budget.burst == 0 || budget.burst > MAX_BURST {
        return fail(format!("budget burst must be 1 to {MAX_BURST}"));
    }
    Ok(BudgetSpec {
        burst: budget.burst,
        interval: std::time::Duration::from_secs(seconds) / count as u32,
        rate: budget.rate,
        freeze: budget.freeze,
    })
}

/// The rule, once its section has checked its target.
fn rule_of<T>(
    rule: RuleFile,
    effect: Effect,
    target: T,
    location: Location,
) -> Result<Rule<T>, PolicyError> {
    for (set, key, what) in [
        (
            rule.freeze,
            "freeze",
            "a denial under them freezes the session",
        ),
        (
            rule.approvable,
            "approvable",
            "a denial under them opens a ticket",
        ),
    ] {
        if set && effect == Effect::Allow {
            return Err(PolicyError::new(
                location,
                format!(
                    "rule `{}`: `{key}` belongs on rules that deny ({what})",
                    rule.id
                ),
            ));
        }
    }
    Ok(Rule {
        id: rule.id,
        message: rule.message,
        freeze: rule.freeze,
        approvable: rule.approvable,
        effect,
        target,
        location,
    })
}

fn parse_sha256(rule_id: &str, hex: &str, location: Location) -> Result<Sha256, PolicyError> {
    let bytes = hex.as_bytes();
    let mut digest = [0u8; 32];
    let valid = bytes.len() == 64
        && digest.iter_mut().zip(bytes.chunks(2)).all(|(out, pair)| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .map(|b| *out = b)
                .is_some()
        });
    if valid {
        Ok(digest)
    } else {
        Err(PolicyError::new(
            location,
            format!("rule `{rule_id}`: sha256 must be 64 hexadecimal digits"),
        ))
    }
}

fn file_rule(
    rule: RuleFile,
    effect: Effect,
    location: Location,
) -> Result<Rule<FileTarget>, PolicyError> {
    only_keys(&rule, location, "files", &["path", "subtree", "name"])?;
    one_target(&rule, location, &["path", "subtree", "name"])?;
    let target = match (&rule.path, &rule.subtree, &rule.name) {
        (Some(path), _, _) => FileTarget::Path(absolute_path(&rule.id, path, location, 4095)?),
        (_, Some(dir), _) => FileTarget::Subtree(absolute_path(&rule.id, dir, location, 4095)?),
        (_, _, Some(name)) if effect == Effect::Allow => {
            return Err(PolicyError::new(
                location,
                format!(
                    "rule `{}`: `writable` takes `path` or `subtree`; a name cannot make files writable",
                    rule.id
                ),
            ));
        }
        (_, _, Some(name)) => FileTarget::Name(name_pattern(&rule.id, name, location)?),
        _ => unreachable!("one_target checked"),
    };
    rule_of(rule, effect, target, location)
}

fn name_pattern(
    rule_id: &str,
    pattern: &str,
    location: Location,
) -> Result<NamePattern, PolicyError> {
    let err = |why: &str| {
        PolicyError::new(
            location,
            format!("rule `{rule_id}`: name `{pattern}` {why}"),
        )
    };
    let (suffix, body) = match pattern.strip_prefix('*') {
        Some(rest) => (true, rest),
        None => (false, pattern),
    };
    if body.is_empty() {
        return Err(err("matches every file; protect a subtree instead"));
    }
    if body.contains(['/', '\0']) {
        return Err(err("must be a file name, without `/`"));
    }
    if body.contains(['*', '?', '[']) {
        return Err(err(
            "may only use `*` at its start (e.g. `*.sqlite`); other wildcards are not supported",
        ));
    }
    if body.len() > MAX_NAME_PATTERN {
        return Err(err(&format!("is longer than {MAX_NAME_PATTERN} bytes")));
    }
    Ok(if suffix {
        NamePattern::Suffix(body.into())
    } else {
        NamePattern::Exact(body.into())
    })
}

fn net_rule(
    rule: RuleFile,
    effect: Effect,
    location: Location,
) -> Result<Rule<NetTarget>, PolicyError> {
    only_keys(
        &rule,
        location,
        "network",
        &["cidr", "host", "ports", "protocol"],
    )?;
    one_target(&rule, location, &["cidr", "host"])?;
    let id = &rule.id;
    let to = match (&rule.cidr, &rule.host) {
        (Some(text), _) => Destination::Cidr(
            parse_cidr(text)
                .ok_or_else(|| {
                    PolicyError::new(
                        location,
                        format!("rule `{id}`: `{text}` is not an IP address or CIDR"),
                    )
                })?
                .trunc(),
        ),
        (_, Some(name)) => Destination::Host(
            host_name(name)
                .map_err(|why| PolicyError::new(location, format!("rule `{id}`: {why}")))?,
        ),
        _ => unreachable!("one_target checked"),
    };
    let ports = match &rule.ports {
        None => PortRange::ALL,
        Some(PortsFile::One(port)) => PortRange {
            lo: *port,
            hi: *port,
        },
        Some(PortsFile::Range(text)) => parse_ports(text).ok_or_else(|| {
            PolicyError::new(
                location,
                format!("rule `{id}`: ports `{text}` must be a port or a range like `8000-8100`"),
            )
        })?,
    };
    let target = NetTarget {
        to,
        ports,
        protocol: rule.protocol.unwrap_or_default(),
    };
    rule_of(rule, effect, target, location)
}

fn parse_cidr(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
}

fn parse_ports(text: &str) -> Option<PortRange> {
    let (lo, hi) = match text.split_once('-') {
        Some((lo, hi)) => (lo.trim().parse().ok()?, hi.trim().parse().ok()?),
        None => {
            let port = text.trim().parse().ok()?;
            (port, port)
        }
    };
    (lo <= hi).then_some(PortRange { lo, hi })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
profiles:
  - name: coder
    mode: monitor
    record_allowed: true
    default: {exec: allow, files: deny, network: allow}
    exec:
      allow:
        - id: python
          path: /usr/bin/python3
          sha256: "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
      deny:
        - id: no-curl
          path: /usr/bin/curl
          message: no downloads
        - id: no-tools
          subtree: /opt/tools/
    files:
      writable:
        - id: workspace
          subtree: /work
      protect:
        - id: keep-data
          subtree: /srv/data
        - id: keep-env
          name: .env
        - id: keep-db
          name: "*.sqlite"
      read_only:
        - id: hooks
          subtree: /work/.git/hooks
    network:
      allow:
        - id: registry
          cidr: 10.9.0.0/16
          ports: 443
      deny:
        - id: no-metadata
          cidr: 169.254.169.254
        - id: no-db
          cidr: 10.0.0.0/8
          ports: 5432
          protocol: tcp
        - id: no-high
          cidr: "::/0"
          ports: "8000-8100"
agents:
  - name: claude
    profile: coder
"#;

    /// A policy whose only profile, `a`, has `body` (which starts at its
    /// `- name:` line), allows by default and has no agents. Lines of `body`
    /// keep their numbers.
    fn one_profile(body: &str) -> String {
        format!("profiles:\n{body}    default: allow\nagents: []\n")
    }

    #[test]
    fn parses_every_rule_kind() {
        let policy = parse(GOOD).expect("valid policy");
        let profile = &policy.profiles[0];
        assert_eq!(profile.name, "coder");
        assert_eq!(profile.mode, Mode::Monitor);
        assert!(profile.record_allowed);
        assert_eq!(
            profile.defaults,
            Defaults {
                exec: Access::Allow,
                files: Access::Deny,
                network: Access::Allow
            }
        );
        let ExecTarget::Path { path, sha256 } = &profile.exec[0].target else {
            panic!("a path rule")
        };
        assert_eq!(path, Path::new("/usr/bin/python3"));
        assert_eq!(sha256.unwrap()[..2], [0x00, 0x11]);
        assert_eq!(profile.exec[0].effect, Effect::Allow);
        assert_eq!(
            profile.exec[1].target,
            ExecTarget::Path {
                path: "/usr/bin/curl".into(),
                sha256: None
            }
        );
        assert_eq!(profile.exec[1].effect, Effect::Deny);
        assert_eq!(profile.exec[1].message.as_deref(), Some("no downloads"));
        assert_eq!(
            profile.exec[2].target,
            ExecTarget::Subtree("/opt/tools".into())
        );
        let effects: Vec<Effect> = profile.files.iter().map(|r| r.effect).collect();
        use Effect::*;
        assert_eq!(effects, [Allow, Deny, Deny, Deny, ReadOnly]);
        assert_eq!(
            profile.files[2].target,
            FileTarget::Name(NamePattern::Exact(".env".into()))
        );
        assert_eq!(
            profile.files[3].target,
            FileTarget::Name(NamePattern::Suffix(".sqlite".into()))
        );
        let net = &profile.network;
        assert_eq!(net[0].effect, Allow);
        assert_eq!(
            net[1].target.to,
            Destination::Cidr("169.254.169.254/32".parse::<IpNet>().unwrap())
        );
        assert_eq!(net[1].target.ports, PortRange::ALL);
        assert_eq!(net[2].target.ports, PortRange { lo: 5432, hi: 5432 });
        assert_eq!(net[2].target.protocol, Protocol::Tcp);
        assert_eq!(net[3].target.ports, PortRange { lo: 8000, hi: 8100 });
        assert_eq!(net[1].location.line, 38, "the line of the rule's `- id:`");
        assert_eq!(
            policy.agents,
            vec![AgentDef {
                name: "claude".into(),
                profile: "coder".into(),
                launched_by: People::default(),
                logins: People::default(),
                location: policy.agents[0].location
            }]
        );
    }

    #[test]
    fn approvable_is_for_rules_that_deny() {
        let rules = |section: &str| {
            one_profile(&format!(
                "  - name: a\n    network:\n      {section}:\n        - id: r\n          cidr: 10.0.0.1\n          approvable: true\n"
            ))
        };
        assert!(parse(&rules("deny")).unwrap().profiles[0].network[0].approvable);
        let e = error(&rules("allow"));
        assert!(e.reason.contains("`approvable`"), "{e}");
    }

    #[test]
    fn budgets_read_rate_and_burst_and_refuse_nonsense() {
        let budgets = |destroy: &str| {
            one_profile(&format!(
                "  - name: a\n    budgets:\n      destroy: {destroy}\n      destinations: {{rate: 10/h, burst: 2, freeze: true}}\n"
            ))
        };
        let policy = parse(&budgets("{rate: 30/min, burst: 50}")).unwrap();
        let [destroy, destinations] = &policy.profiles[0].budgets;
        let destroy = destroy.as_ref().unwrap();
        assert_eq!(
            (destroy.burst, destroy.interval),
            (50, std::time::Duration::from_secs(2))
        );
        let destinations = destinations.as_ref().unwrap();
        assert_eq!(destinations.interval, std::time::Duration::from_secs(360));
        assert!(destinations.freeze);
        for (bad, why) in [
            ("{rate: 0/min, burst: 5}", "budget rate"),
            ("{rate: 5/week, burst: 5}", "budget rate"),
            ("{rate: fast, burst: 5}", "budget rate"),
            ("{rate: 5/s, burst: 0}", "burst must be"),
        ] {
            let e = error(&budgets(bad));
            assert!(e.reason.contains(why), "{bad}: {e}");
            assert_eq!(e.location.line, 4, "{bad}: {e}");
        }
    }

    #[test]
    fn freeze_is_for_rules_that_deny() {
        let rules = |section: &str| {
            one_profile(&format!(
                "  - name: a\n    files:\n      {section}:\n        - id: r\n          subtree: /srv\n          freeze: true\n"
            ))
        };
        let policy = parse(&rules("protect")).unwrap();
        assert!(policy.profiles[0].files[0].freeze);
        let e = error(&rules("writable"));
        assert!(e.reason.contains("`freeze`"), "{e}");
        assert_eq!(e.location.line, 5, "{e}");
    }

    #[test]
    fn mode_defaults_to_enforce_and_default_is_required() {
        let policy = parse(&one_profile("  - name: a\n")).unwrap();
        assert_eq!(policy.profiles[0].mode, Mode::Enforce);
        assert!(!policy.profiles[0].record_allowed);
        let e = error("profiles:\n  - name: a\nagents: []\n");
        assert!(e.reason.contains("default"), "{e}");
        let e = error("profiles:\n  - name: a\n    default: {exec: deny}\nagents: []\n");
        assert_eq!(e.location.line, 3, "{e}");
        assert!(e.reason.starts_with("`default` must be"), "{e}");
    }

    #[test]
    fn agents_name_who_launches_them_and_whose_logins_they_take() {
        let head = "profiles:\n  - name: p\n    default: deny\nagents:\n";
        let policy = parse(&format!(
            "{head}  - name: coder\n    profile: p\n    launched_by: {{users: [alice, '1001'], groups: [developers]}}\n  - name: ops\n    profile: p\n    logins: {{groups: [ops]}}\n"
        ))
        .unwrap();
        let coder = &policy.agents[0];
        assert_eq!(coder.launched_by.users, ["alice", "1001"]);
        assert_eq!(coder.launched_by.groups, ["developers"]);
        assert_eq!(coder.launched_by.location.unwrap().line, 7);
        assert!(coder.logins.is_empty());
        assert_eq!(
            coder.launched_by.to_string(),
            "users `alice`, `1001` and groups `developers`"
        );
        assert_eq!(policy.agents[1].logins.groups, ["ops"]);
        let bad = error(&format!(
            "{head}  - name: coder\n    profile: p\n    launched_by: {{users: ['al ice']}}\n"
        ));
        assert_eq!(bad.location.line, 7, "{bad}");
        assert!(bad.reason.contains("invalid user `al ice`"), "{bad}");
        let twice = error(&format!(
            "{head}  - name: a\n    profile: p\n    logins: {{users: [bob]}}\n  - name: b\n    profile: p\n    logins: {{users: [bob]}}\n"
        ));
        assert_eq!(twice.location.line, 10, "{twice}");
        assert!(
            twice
                .reason
                .contains("the logins of user `bob` already go to agent `a`"),
            "{twice}"
        );
    }

    #[test]
    fn agents_name_existing_profiles() {
        let e = error("profiles: []\nagents:\n  - name: x\n    profile: nope\n");
        assert_eq!(e.location.line, 4, "{e}");
        assert!(e.reason.contains("no profile is named `nope`"), "{e}");
        let twice = "profiles:\n  - name: p\n    default: deny\nagents:\n  - name: x\n    profile: p\n  - name: x\n    profile: p\n";
        assert_eq!(error(twice).location.line, 7);
    }

    #[test]
    fn sha256_belongs_to_exec_allow_path_rules() {
        let deny = one_profile(
            "  - name: a\n    exec:\n      deny:\n        - id: r\n          path: /bin/sh\n          sha256: abc\n",
        );
        // A deny rule's `sha256` stands alone: every copy of a content.
        assert!(
            error(&deny).reason.contains("by `sha256` alone, not both"),
            "{}",
            error(&deny)
        );
        let content = one_profile(&format!(
            "  - name: a\n    exec:\n      deny:\n        - id: r\n          sha256: {}\n",
            "ab".repeat(32)
        ));
        let policy = parse(&content).unwrap();
        assert_eq!(
            policy.profiles[0].exec[0].target,
            ExecTarget::Content([0xab; 32])
        );
        let short = one_profile(
            "  - name: a\n    exec:\n      allow:\n        - id: r\n          path: /bin/sh\n          sha256: abc\n",
        );
        assert!(error(&short).reason.contains("64 hexadecimal digits"));
        let subtree = one_profile(&format!(
            "  - name: a\n    exec:\n      allow:\n        - id: r\n          subtree: /bin\n          sha256: {}\n",
            "0".repeat(64)
        ));
        assert!(error(&subtree).reason.contains("use it with `path`"));
    }

    #[test]
    fn writable_takes_no_names() {
        let text = one_profile(
            "  - name: a\n    files:\n      writable:\n        - id: r\n          name: .env\n",
        );
        assert!(
            error(&text)
                .reason
                .contains("a name cannot make files writable")
        );
    }

    fn error(text: &str) -> PolicyError {
        parse(text).expect_err("policy should be refused")
    }

    #[test]
    fn syntax_errors_have_a_line() {
        let e = error("profiles:\n  - name: a\n    mode: [\n");
        assert!(e.location.line >= 3, "{e}");
    }

    #[test]
    fn unknown_keys_are_refused_with_their_line() {
        let e = error(&one_profile("  - name: a\n    moed: monitor\n"));
        assert_eq!(e.location.line, 3, "{e}");
        assert!(
            !e.reason.contains("line 3"),
            "the location is not repeated: {e}"
        );
        assert!(e.reason.contains("moed"), "{e}");
    }

    #[test]
    fn errors_say_what_was_expected_without_type_names() {
        let e = error(&one_profile(
            "  - name: a\n    network:\n      deny:\n        - id: p\n          cidr: 10.0.0.0/8\n          ports: [1]\n",
        ));
        assert!(
            e.reason.contains("a port (`443`) or a range of ports"),
            "{e}"
        );
        let e = error(&one_profile("  - name: a\n    default: maybe\n"));
        assert!(e.reason.contains("`allow`, `deny`, or a map"), "{e}");
        // The parser's budget, as its error names it.
        assert_eq!(
            parse_reason("budget breached: RecordedAnchorEvents { recorded_anchor_events: 9 }"),
            "the policy exceeds the YAML parser's limit on recorded anchor events: it is too large, or expands anchors (`*alias`) too often"
        );
    }

    #[test]
    fn bad_mode_is_refused() {
        let e = error(&one_profile("  - name: a\n    mode: loud\n"));
        assert_eq!(e.location.line, 3, "{e}");
    }

    #[test]
    fn rule_errors_name_rule_and_line() {
        let text = &one_profile(
            "  - name: a\n    exec:\n      deny:\n        - id: rel\n          path: bin/sh\n",
        );
        let e = error(text);
        assert_eq!(e.location.line, 5, "{e}");
        assert!(
            e.reason.contains("`rel`") && e.reason.contains("absolute"),
            "{e}"
        );
    }

    #[test]
    fn duplicate_rule_ids_are_refused() {
        let text = &one_profile(
            "  - name: a\n    files:\n      protect:\n        - id: x\n          name: a\n        - id: x\n          name: b\n",
        );
        let e = error(text);
        assert_eq!(e.location.line, 7, "{e}");
        assert!(e.reason.contains("line 5"), "{e}");
    }

    #[test]
    fn duplicate_profiles_are_refused() {
        let e = error(
            "profiles:\n  - name: a\n    default: allow\n  - name: a\n    default: allow\nagents: []\n",
        );
        assert_eq!(e.location.line, 4, "{e}");
    }

    #[test]
    fn bad_names_are_refused() {
        for name in ["../x", ".hidden", "a b", ""] {
            let e = error(&one_profile(&format!("  - name: \"{name}\"\n")));
            assert!(e.reason.contains("profile name"), "{name}: {e}");
        }
    }

    #[test]
    fn a_rule_needs_exactly_one_target() {
        let both = &one_profile(
            "  - name: a\n    exec:\n      deny:\n        - id: r\n          path: /a\n          subtree: /b\n",
        );
        assert!(error(both).reason.contains("exactly one"));
        let none = &one_profile("  - name: a\n    exec:\n      deny:\n        - id: r\n");
        assert!(error(none).reason.contains("exactly one"));
    }

    #[test]
    fn keys_of_other_sections_are_refused() {
        let text = &one_profile(
            "  - name: a\n    exec:\n      deny:\n        - id: r\n          cidr: 10.0.0.0/8\n",
        );
        assert!(
            error(text)
                .reason
                .contains("`cidr` is not a key of exec rules")
        );
    }

    #[test]
    fn bad_network_values_are_refused() {
        let cidr = &one_profile(
            "  - name: a\n    network:\n      deny:\n        - id: r\n          cidr: 10.0.0.0/33\n",
        );
        assert!(error(cidr).reason.contains("not an IP address or CIDR"));
        let ports = &one_profile(
            "  - name: a\n    network:\n      deny:\n        - id: r\n          cidr: 10.0.0.0/8\n          ports: \"90-80\"\n",
        );
        assert!(error(ports).reason.contains("ports"));
        let proto = &one_profile(
            "  - name: a\n    network:\n      deny:\n        - id: r\n          cidr: 10.0.0.0/8\n          protocol: icmp\n",
        );
        assert_eq!(error(proto).location.line, 7);
        let host = |name: &str| {
            one_profile(&format!(
                "  - name: a\n    network:\n      allow:\n        - id: r\n          host: \"{name}\"\n"
            ))
        };
        assert_eq!(
            parse(&host("PyPI.org.")).unwrap().profiles[0].network[0]
                .target
                .to,
            Destination::Host("pypi.org".into())
        );
        assert!(error(&host("*.github.com")).reason.contains("wildcards"));
        assert!(error(&host("10.0.0.1")).reason.contains("use `cidr`"));
        assert!(error(&host("a..b")).reason.contains("not a hostname"));
        let both = one_profile(
            "  - name: a\n    network:\n      allow:\n        - id: r\n          host: pypi.org\n          cidr: 10.0.0.1\n",
        );
        assert!(
            error(&both).reason.contains("exactly one"),
            "{}",
            error(&both)
        );
    }

    #[test]
    fn name_patterns_are_checked() {
        let rule = |name: &str| {
            one_profile(&format!(
                "  - name: a\n    files:\n      protect:\n        - id: r\n          name: \"{name}\"\n"
            ))
        };
        assert!(error(&rule("*")).reason.contains("every file"));
        assert!(error(&rule("a/b")).reason.contains("without `/`"));
        assert!(
            error(&rule("*.d*"))
                .reason
                .contains("only use `*` at its start")
        );
    }

    #[test]
    fn over_long_exec_paths_are_refused() {
        let long = format!("/{}", "x".repeat(MAX_EXEC_RULE_PATH));
        let text = format!(
            "profiles:\n  - name: a\n    exec:\n      deny:\n        - id: r\n          path: {long}\n    default: allow\nagents: []\n"
        );
        assert!(error(&text).reason.contains("longer than"));
    }

    #[test]
    fn paths_are_normalised() {
        let text = &one_profile(
            "  - name: a\n    exec:\n      deny:\n        - id: r\n          subtree: //opt//tools/\n",
        );
        assert_eq!(
            parse(text).unwrap().profiles[0].exec[0].target,
            ExecTarget::Subtree("/opt/tools".into())
        );
        let dots = &one_profile(
            "  - name: a\n    exec:\n      deny:\n        - id: r\n          path: /opt/../bin/sh\n",
        );
        assert!(error(dots).reason.contains("`..`"));
    }
}
