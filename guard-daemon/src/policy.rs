//! The policy file: a YAML list of agent profiles, each with exec, file and
//! network rules and a mode. `docs/policy.md` is the reference.
//!
//! Parsing keeps the location of every profile and rule, so that every error,
//! including those found later while compiling (a protected path that does
//! not exist, a limit exceeded), names the line and column.

use std::{
    fmt,
    net::IpAddr,
    path::{Component, Path, PathBuf},
};

use ipnet::IpNet;
use serde::Deserialize;
use serde_saphyr::Spanned;

/// A location in the policy file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Location {
    pub line: u64,
    pub column: u64,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

impl From<serde_saphyr::Location> for Location {
    fn from(l: serde_saphyr::Location) -> Self {
        Self {
            line: l.line(),
            column: l.column(),
        }
    }
}

/// Why a policy was refused, and where.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{location}: {reason}")]
pub struct PolicyError {
    pub location: Location,
    pub reason: String,
}

impl PolicyError {
    pub fn new(location: impl Into<Location>, reason: impl Into<String>) -> Self {
        Self {
            location: location.into(),
            reason: reason.into(),
        }
    }
}

/// Longest exec path a rule may name (the kernel matches at most
/// `EXEC_PATH_KEY_LEN` bytes, including the NUL or trailing `/`).
pub const MAX_EXEC_RULE_PATH: usize = guard_common::EXEC_PATH_KEY_LEN - 1;
/// Longest protected name pattern (without the `*`).
pub const MAX_NAME_PATTERN: usize = guard_common::NAME_KEY_LEN - 1;

/// A validated policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub agents: Vec<AgentProfile>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentProfile {
    pub name: String,
    pub mode: Mode,
    pub record_allowed: bool,
    pub exec_deny: Vec<Rule<ExecTarget>>,
    pub file_protect: Vec<Rule<FileTarget>>,
    pub network_deny: Vec<Rule<NetTarget>>,
    pub location: Location,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Deny what the rules deny.
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

/// A rule: its id, the message shown in records, what it matches, and where
/// it was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule<T> {
    pub id: String,
    pub message: Option<String>,
    pub target: T,
    pub location: Location,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExecTarget {
    /// This file: by its path and by its identity (device + inode).
    Path(PathBuf),
    /// Every file below this directory, by resolved path.
    Subtree(PathBuf),
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
    pub cidr: IpNet,
    pub ports: PortRange,
    pub protocol: Protocol,
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
    agents: Vec<Spanned<AgentFile>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentFile {
    name: Spanned<String>,
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    record_allowed: bool,
    #[serde(default)]
    exec: ExecFile,
    #[serde(default)]
    files: FilesFile,
    #[serde(default)]
    network: NetworkFile,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecFile {
    #[serde(default)]
    deny: Vec<Spanned<RuleFile>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilesFile {
    #[serde(default)]
    protect: Vec<Spanned<RuleFile>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkFile {
    #[serde(default)]
    deny: Vec<Spanned<RuleFile>>,
}

/// Every key any rule may have; which are allowed depends on the section.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    id: String,
    message: Option<String>,
    path: Option<String>,
    subtree: Option<String>,
    name: Option<String>,
    cidr: Option<String>,
    ports: Option<PortsFile>,
    protocol: Option<Protocol>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PortsFile {
    One(u16),
    Range(String),
}

/// Parses and validates a policy.
pub fn parse(text: &str) -> Result<Policy, PolicyError> {
    let file: PolicyFile = serde_saphyr::from_str(text).map_err(|e| {
        let location = e.location().map(Location::from).unwrap_or_default();
        PolicyError {
            location,
            reason: first_line(&e.to_string()),
        }
    })?;
    let mut agents = Vec::with_capacity(file.agents.len());
    let mut rule_ids = std::collections::HashMap::new();
    for agent in file.agents {
        let location = Location::from(agent.referenced);
        let agent_file = agent.value;
        let name_location = Location::from(agent_file.name.referenced);
        let name = agent_file.name.value;
        check_agent_name(&name).map_err(|reason| PolicyError::new(name_location, reason))?;
        if agents.iter().any(|a: &AgentProfile| a.name == name) {
            return Err(PolicyError::new(
                name_location,
                format!("agent `{name}` is defined twice"),
            ));
        }
        let mut rules =
            |section: Vec<Spanned<RuleFile>>| -> Result<Vec<(RuleFile, Location)>, PolicyError> {
                section
                .into_iter()
                .map(|rule| {
                    let location = Location::from(rule.referenced);
                    check_rule_id(&rule.value.id).map_err(|reason| PolicyError::new(location, reason))?;
                    if let Some(first) = rule_ids.insert(rule.value.id.clone(), location) {
                        return Err(PolicyError::new(
                            location,
                            format!("rule id `{}` is already used at {first}; rule ids must be unique", rule.value.id),
                        ));
                    }
                    Ok((rule.value, location))
                })
                .collect()
            };
        let exec_deny = rules(agent_file.exec.deny)?
            .into_iter()
            .map(|(r, l)| exec_rule(r, l))
            .collect::<Result<_, _>>()?;
        let file_protect = rules(agent_file.files.protect)?
            .into_iter()
            .map(|(r, l)| file_rule(r, l))
            .collect::<Result<_, _>>()?;
        let network_deny = rules(agent_file.network.deny)?
            .into_iter()
            .map(|(r, l)| net_rule(r, l))
            .collect::<Result<_, _>>()?;
        agents.push(AgentProfile {
            name,
            mode: agent_file.mode,
            record_allowed: agent_file.record_allowed,
            exec_deny,
            file_protect,
            network_deny,
            location,
        });
    }
    Ok(Policy { agents })
}

/// Reads and parses a policy file.
pub fn load(path: &Path) -> Result<Policy, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.into(),
        source,
    })?;
    parse(&text).map_err(|error| LoadError::Invalid {
        path: path.into(),
        error,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read policy {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid policy {path}: {error}")]
    Invalid { path: PathBuf, error: PolicyError },
}

fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or(message).trim().to_string()
}

fn check_agent_name(name: &str) -> Result<(), String> {
    // The name becomes a cgroup directory name.
    let valid = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid agent name `{name}`: use 1-64 letters, digits, `-`, `_` or `.`, not starting with `.`"
        ))
    }
}

fn check_rule_id(id: &str) -> Result<(), String> {
    let valid = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '/'));
    if valid {
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
        ("subtree", rule.subtree.is_some()),
        ("name", rule.name.is_some()),
        ("cidr", rule.cidr.is_some()),
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

fn exec_rule(rule: RuleFile, location: Location) -> Result<Rule<ExecTarget>, PolicyError> {
    only_keys(&rule, location, "exec", &["path", "subtree"])?;
    one_target(&rule, location, &["path", "subtree"])?;
    let target = match (&rule.path, &rule.subtree) {
        (Some(path), _) => {
            ExecTarget::Path(absolute_path(&rule.id, path, location, MAX_EXEC_RULE_PATH)?)
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
    Ok(Rule {
        id: rule.id,
        message: rule.message,
        target,
        location,
    })
}

fn file_rule(rule: RuleFile, location: Location) -> Result<Rule<FileTarget>, PolicyError> {
    only_keys(&rule, location, "files", &["path", "subtree", "name"])?;
    one_target(&rule, location, &["path", "subtree", "name"])?;
    let target = match (&rule.path, &rule.subtree, &rule.name) {
        (Some(path), _, _) => FileTarget::Path(absolute_path(&rule.id, path, location, 4095)?),
        (_, Some(dir), _) => FileTarget::Subtree(absolute_path(&rule.id, dir, location, 4095)?),
        (_, _, Some(name)) => FileTarget::Name(name_pattern(&rule.id, name, location)?),
        _ => unreachable!("one_target checked"),
    };
    Ok(Rule {
        id: rule.id,
        message: rule.message,
        target,
        location,
    })
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

fn net_rule(rule: RuleFile, location: Location) -> Result<Rule<NetTarget>, PolicyError> {
    only_keys(&rule, location, "network", &["cidr", "ports", "protocol"])?;
    let id = &rule.id;
    let cidr_text = rule
        .cidr
        .as_deref()
        .ok_or_else(|| PolicyError::new(location, format!("rule `{id}`: `cidr` is required")))?;
    let cidr = parse_cidr(cidr_text).ok_or_else(|| {
        PolicyError::new(
            location,
            format!("rule `{id}`: `{cidr_text}` is not an IP address or CIDR"),
        )
    })?;
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
        cidr: cidr.trunc(),
        ports,
        protocol: rule.protocol.unwrap_or_default(),
    };
    Ok(Rule {
        id: rule.id,
        message: rule.message,
        target,
        location,
    })
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
agents:
  - name: coder
    mode: monitor
    record_allowed: true
    exec:
      deny:
        - id: no-curl
          path: /usr/bin/curl
          message: no downloads
        - id: no-tools
          subtree: /opt/tools/
    files:
      protect:
        - id: keep-data
          subtree: /srv/data
        - id: keep-env
          name: .env
        - id: keep-db
          name: "*.sqlite"
    network:
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
"#;

    #[test]
    fn parses_every_rule_kind() {
        let policy = parse(GOOD).expect("valid policy");
        let agent = &policy.agents[0];
        assert_eq!(agent.name, "coder");
        assert_eq!(agent.mode, Mode::Monitor);
        assert!(agent.record_allowed);
        assert_eq!(
            agent.exec_deny[0].target,
            ExecTarget::Path("/usr/bin/curl".into())
        );
        assert_eq!(agent.exec_deny[0].message.as_deref(), Some("no downloads"));
        assert_eq!(
            agent.exec_deny[1].target,
            ExecTarget::Subtree("/opt/tools".into())
        );
        assert_eq!(
            agent.file_protect[1].target,
            FileTarget::Name(NamePattern::Exact(".env".into()))
        );
        assert_eq!(
            agent.file_protect[2].target,
            FileTarget::Name(NamePattern::Suffix(".sqlite".into()))
        );
        let net = &agent.network_deny;
        assert_eq!(
            net[0].target.cidr,
            "169.254.169.254/32".parse::<IpNet>().unwrap()
        );
        assert_eq!(net[0].target.ports, PortRange::ALL);
        assert_eq!(net[1].target.ports, PortRange { lo: 5432, hi: 5432 });
        assert_eq!(net[1].target.protocol, Protocol::Tcp);
        assert_eq!(net[2].target.ports, PortRange { lo: 8000, hi: 8100 });
        assert_eq!(net[0].location.line, 23, "the line of the rule's `- id:`");
    }

    #[test]
    fn defaults_are_enforce_and_no_allowed_records() {
        let policy = parse("agents:\n  - name: a\n").unwrap();
        assert_eq!(policy.agents[0].mode, Mode::Enforce);
        assert!(!policy.agents[0].record_allowed);
    }

    fn error(text: &str) -> PolicyError {
        parse(text).expect_err("policy should be refused")
    }

    #[test]
    fn syntax_errors_have_a_line() {
        let e = error("agents:\n  - name: a\n    mode: [\n");
        assert!(e.location.line >= 3, "{e}");
    }

    #[test]
    fn unknown_keys_are_refused_with_their_line() {
        let e = error("agents:\n  - name: a\n    moed: monitor\n");
        assert_eq!(e.location.line, 3, "{e}");
        assert!(e.reason.contains("moed"), "{e}");
    }

    #[test]
    fn bad_mode_is_refused() {
        let e = error("agents:\n  - name: a\n    mode: loud\n");
        assert_eq!(e.location.line, 3, "{e}");
    }

    #[test]
    fn rule_errors_name_rule_and_line() {
        let text = "agents:\n  - name: a\n    exec:\n      deny:\n        - id: rel\n          path: bin/sh\n";
        let e = error(text);
        assert_eq!(e.location.line, 5, "{e}");
        assert!(
            e.reason.contains("`rel`") && e.reason.contains("absolute"),
            "{e}"
        );
    }

    #[test]
    fn duplicate_rule_ids_are_refused() {
        let text = "agents:\n  - name: a\n    files:\n      protect:\n        - id: x\n          name: a\n        - id: x\n          name: b\n";
        let e = error(text);
        assert_eq!(e.location.line, 7, "{e}");
        assert!(e.reason.contains("line 5"), "{e}");
    }

    #[test]
    fn duplicate_agents_are_refused() {
        let e = error("agents:\n  - name: a\n  - name: a\n");
        assert_eq!(e.location.line, 3, "{e}");
    }

    #[test]
    fn bad_agent_names_are_refused() {
        for name in ["../x", ".hidden", "a b", ""] {
            let e = error(&format!("agents:\n  - name: \"{name}\"\n"));
            assert!(e.reason.contains("agent name"), "{name}: {e}");
        }
    }

    #[test]
    fn a_rule_needs_exactly_one_target() {
        let both = "agents:\n  - name: a\n    exec:\n      deny:\n        - id: r\n          path: /a\n          subtree: /b\n";
        assert!(error(both).reason.contains("exactly one"));
        let none = "agents:\n  - name: a\n    exec:\n      deny:\n        - id: r\n";
        assert!(error(none).reason.contains("exactly one"));
    }

    #[test]
    fn keys_of_other_sections_are_refused() {
        let text = "agents:\n  - name: a\n    exec:\n      deny:\n        - id: r\n          cidr: 10.0.0.0/8\n";
        assert!(
            error(text)
                .reason
                .contains("`cidr` is not a key of exec rules")
        );
    }

    #[test]
    fn bad_network_values_are_refused() {
        let cidr = "agents:\n  - name: a\n    network:\n      deny:\n        - id: r\n          cidr: 10.0.0.0/33\n";
        assert!(error(cidr).reason.contains("not an IP address or CIDR"));
        let ports = "agents:\n  - name: a\n    network:\n      deny:\n        - id: r\n          cidr: 10.0.0.0/8\n          ports: \"90-80\"\n";
        assert!(error(ports).reason.contains("ports"));
        let proto = "agents:\n  - name: a\n    network:\n      deny:\n        - id: r\n          cidr: 10.0.0.0/8\n          protocol: icmp\n";
        assert_eq!(error(proto).location.line, 7);
    }

    #[test]
    fn name_patterns_are_checked() {
        let rule = |name: &str| {
            format!(
                "agents:\n  - name: a\n    files:\n      protect:\n        - id: r\n          name: \"{name}\"\n"
            )
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
            "agents:\n  - name: a\n    exec:\n      deny:\n        - id: r\n          path: {long}\n"
        );
        assert!(error(&text).reason.contains("longer than"));
    }

    #[test]
    fn paths_are_normalised() {
        let text = "agents:\n  - name: a\n    exec:\n      deny:\n        - id: r\n          subtree: //opt//tools/\n";
        assert_eq!(
            parse(text).unwrap().agents[0].exec_deny[0].target,
            ExecTarget::Subtree("/opt/tools".into())
        );
        let dots = "agents:\n  - name: a\n    exec:\n      deny:\n        - id: r\n          path: /opt/../bin/sh\n";
        assert!(error(dots).reason.contains("`..`"));
    }
}
