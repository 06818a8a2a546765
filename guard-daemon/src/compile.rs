//! Compiling a policy into the entries of the kernel's policy maps.
//!
//! This is the only place that knows how rules become map keys. It touches no
//! kernel: the one thing it reads from the system is the identity (device and
//! inode) of the files and directories rules name.

use std::{collections::BTreeMap, net::IpAddr, os::unix::fs::MetadataExt, path::Path};

use guard_common::{
    AgentEntry, EXEC_PATH_KEY_LEN, ExecPathKey, IdentityKey, NAME_KEY_LEN, NET_RULES_PER_PREFIX,
    NameKey, NetKey, NetRule, NetRuleSet, RuleRef, action, agent_flag, capacity, mode, protocol,
};
use ipnet::IpNet;

use crate::policy::{
    AgentProfile, ExecTarget, FileTarget, Location, Mode, NamePattern, Policy, PolicyError,
    Protocol,
};

/// What a rule id in a record refers to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleInfo {
    pub id: String,
    pub message: Option<String>,
    pub agent: String,
}

/// Entries for the kernel's maps, plus what userspace needs to explain them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompiledPolicy {
    /// Agent names, indexed by profile id, with their map entry (the agent
    /// cgroup id is added when the cgroups exist).
    pub agents: Vec<(String, AgentEntry)>,
    pub exec_identity: Vec<(IdentityKey, RuleRef)>,
    /// `(prefix length in bits, key data, rule)`.
    pub exec_paths: Vec<(u32, ExecPathKey, RuleRef)>,
    pub file_identity: Vec<(IdentityKey, RuleRef)>,
    pub file_names: Vec<(u32, NameKey, RuleRef)>,
    pub net_rules: Vec<(u32, NetKey, NetRuleSet)>,
    /// Indexed by rule id.
    pub rules: Vec<RuleInfo>,
    /// Things the operator should know that do not stop the policy.
    pub notes: Vec<String>,
}

impl CompiledPolicy {
    /// One line describing the policy, for logs.
    pub fn summary(&self) -> String {
        format!(
            "{} agent(s) [{}]; exec: {} identity + {} path entries; files: {} protected identities + {} names; network: {} prefixes",
            self.agents.len(),
            self.agents
                .iter()
                .map(|(name, entry)| format!(
                    "{name}:{}",
                    if entry.mode == mode::MONITOR {
                        "monitor"
                    } else {
                        "enforce"
                    }
                ))
                .collect::<Vec<_>>()
                .join(","),
            self.exec_identity.len(),
            self.exec_paths.len(),
            self.file_identity.len(),
            self.file_names.len(),
            self.net_rules.len(),
        )
    }

    pub fn rule(&self, rule_id: u32) -> Option<&RuleInfo> {
        self.rules.get(rule_id as usize)
    }
}

/// A file's identity as the kernel sees it: `s_dev` uses the kernel's internal
/// `dev_t` encoding (`MAJOR << 20 | MINOR`, include/linux/kdev_t.h), not the
/// one stat(2) returns.
pub fn identity(path: &Path) -> std::io::Result<(u32, u64)> {
    let meta = std::fs::metadata(path)?;
    let dev = meta.dev();
    let kernel_dev = (libc::major(dev) << 20) | libc::minor(dev);
    Ok((kernel_dev, meta.ino()))
}

/// Compiles `policy`.
pub fn compile(policy: &Policy) -> Result<CompiledPolicy, PolicyError> {
    let mut out = CompiledPolicy::default();
    for (index, agent) in policy.agents.iter().enumerate() {
        let profile = index as u32;
        out.agents
            .push((agent.name.clone(), agent_entry(agent, profile)));
        compile_exec(&mut out, agent, profile)?;
        compile_files(&mut out, agent, profile)?;
        compile_network(&mut out, agent, profile)?;
    }
    check_capacity(&out, policy)?;
    Ok(out)
}

fn agent_entry(agent: &AgentProfile, profile: u32) -> AgentEntry {
    AgentEntry {
        profile,
        mode: match agent.mode {
            Mode::Enforce => mode::ENFORCE,
            Mode::Monitor => mode::MONITOR,
        },
        flags: if agent.record_allowed {
            agent_flag::RECORD_ALLOWED
        } else {
            0
        },
        _pad: 0,
    }
}

fn add_rule(
    out: &mut CompiledPolicy,
    agent: &AgentProfile,
    id: &str,
    message: &Option<String>,
) -> RuleRef {
    let rule_id = out.rules.len() as u32;
    out.rules.push(RuleInfo {
        id: id.into(),
        message: message.clone(),
        agent: agent.name.clone(),
    });
    RuleRef {
        rule_id,
        action: action::DENY,
    }
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
    agent: &AgentProfile,
    profile: u32,
) -> Result<(), PolicyError> {
    for rule in &agent.exec_deny {
        let r = add_rule(out, agent, &rule.id, &rule.message);
        let (path, suffix) = match &rule.target {
            ExecTarget::Path(path) => (path, b'\0'),
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
            out.exec_paths.push(exec_path_entry(profile, &bytes, r));
        }
        if let ExecTarget::Path(path) = &rule.target {
            match identity(path) {
                Ok((dev, ino)) => out.exec_identity.push((IdentityKey { ino, dev, profile }, r)),
                Err(e) => out.notes.push(format!(
                    "rule `{}`: {} cannot be resolved ({e}); it is denied by path only until the policy is reloaded",
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
    agent: &AgentProfile,
    profile: u32,
) -> Result<(), PolicyError> {
    for rule in &agent.file_protect {
        let r = add_rule(out, agent, &rule.id, &rule.message);
        match &rule.target {
            FileTarget::Path(path) | FileTarget::Subtree(path) => {
                let (dev, ino) = identity(path).map_err(|e| {
                    PolicyError::new(
                        rule.location,
                        format!("rule `{}`: cannot protect {}: {e}", rule.id, path.display()),
                    )
                })?;
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
                out.file_identity
                    .push((IdentityKey { ino, dev, profile }, r));
            }
            FileTarget::Name(pattern) => out.file_names.push(name_entry(profile, pattern, r)),
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
fn mapped(addr: IpAddr) -> [u8; 16] {
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
    agent: &AgentProfile,
    profile: u32,
) -> Result<(), PolicyError> {
    // (mapped address, mapped prefix) → rules for that exact prefix, with the
    // location and id of each for errors.
    type Prefixes = BTreeMap<([u8; 16], u32), Vec<(NetRule, Location, String)>>;
    let mut prefixes = Prefixes::new();
    for rule in &agent.network_deny {
        let r = add_rule(out, agent, &rule.id, &rule.message);
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
        prefixes
            .entry((mapped(target.cidr.network()), mapped_prefix(&target.cidr)))
            .or_default()
            .push((net_rule, rule.location, rule.id.clone()));
    }
    // The kernel finds only the longest matching prefix, so each prefix also
    // carries the rules of every shorter prefix containing it, longest first.
    for (&(addr, len), own) in &prefixes {
        let mut containing: Vec<_> = prefixes
            .iter()
            .filter(|&(&(other, other_len), _)| other_len < len && contains(other, other_len, addr))
            .collect();
        containing.sort_by_key(|&(&(_, other_len), _)| std::cmp::Reverse(other_len));
        let all: Vec<_> = own
            .iter()
            .chain(containing.into_iter().flat_map(|(_, rules)| rules))
            .collect();
        if all.len() > NET_RULES_PER_PREFIX {
            let (_, location, id) = own[0].clone();
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
                profile: profile.to_be_bytes(),
                addr,
            },
            set,
        ));
    }
    Ok(())
}

/// Whether `addr` lies in `net/len` (both 128-bit).
fn contains(net: [u8; 16], len: u32, addr: [u8; 16]) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - len)
    };
    u128::from_be_bytes(net) & mask == u128::from_be_bytes(addr) & mask
}

fn check_capacity(out: &CompiledPolicy, policy: &Policy) -> Result<(), PolicyError> {
    let limits = [
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
            "protected files and directories",
            out.file_identity.len(),
            capacity::FILE_IDENTITY,
        ),
        (
            "protected names",
            out.file_names.len(),
            capacity::FILE_NAMES,
        ),
        ("network prefixes", out.net_rules.len(), capacity::NET_RULES),
    ];
    for (what, used, limit) in limits {
        if used > limit as usize {
            let location = policy.agents.last().map(|a| a.location).unwrap_or_default();
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
        compile(&parse(text).expect("valid policy"))
    }

    #[test]
    fn exec_rules_become_path_and_identity_entries() {
        let dir = tempfile::tempdir().unwrap();
        let tool = dir.path().join("tool");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        let text = format!(
            "agents:\n  - name: a\n  - name: b\n    exec:\n      deny:\n        - id: t\n          path: {}\n        - id: s\n          subtree: {}\n",
            tool.display(),
            dir.path().display()
        );
        let c = compile_text(&text).unwrap();
        assert_eq!(
            c.rules[0],
            RuleInfo {
                id: "t".into(),
                message: None,
                agent: "b".into()
            }
        );
        let (dev, ino) = identity(&tool).unwrap();
        assert_eq!(
            c.exec_identity,
            vec![(
                IdentityKey {
                    ino,
                    dev,
                    profile: 1
                },
                RuleRef {
                    rule_id: 0,
                    action: action::DENY
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
        assert_eq!(rule.rule_id, 0);

        let subtree = c.exec_paths.iter().find(|e| e.2.rule_id == 1).unwrap();
        let dir_bytes = dir.path().as_os_str().as_encoded_bytes();
        assert_eq!(subtree.0, 32 + (dir_bytes.len() as u32 + 1) * 8);
        assert_eq!(subtree.1.path[dir_bytes.len()], b'/');
    }

    #[test]
    fn missing_exec_target_is_a_note_not_an_error() {
        let c = compile_text("agents:\n  - name: a\n    exec:\n      deny:\n        - id: t\n          path: /nonexistent/tool\n").unwrap();
        assert!(c.exec_identity.is_empty());
        assert_eq!(c.exec_paths.len(), 1);
        assert!(c.notes[0].contains("denied by path only"), "{:?}", c.notes);
    }

    #[test]
    fn protected_paths_must_exist_and_errors_have_the_rule_line() {
        let e = compile_text("agents:\n  - name: a\n    files:\n      protect:\n        - id: gone\n          subtree: /nonexistent/dir\n").unwrap_err();
        assert_eq!(e.location.line, 5);
        assert!(
            e.reason.contains("`gone`") && e.reason.contains("/nonexistent/dir"),
            "{e}"
        );
    }

    #[test]
    fn a_file_is_not_a_subtree() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let text = format!(
            "agents:\n  - name: a\n    files:\n      protect:\n        - id: f\n          subtree: {}\n",
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
            "agents:\n  - name: a\n    files:\n      protect:\n        - id: d\n          subtree: {}\n",
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
        let c = compile_text("agents:\n  - name: a\n    files:\n      protect:\n        - id: e\n          name: .env\n        - id: s\n          name: \"*.db\"\n").unwrap();
        let (bits, key, _) = c.file_names[0];
        assert_eq!(&key.reversed[..5], b"vne.\0");
        assert_eq!(bits, 32 + 5 * 8);
        let (bits, key, _) = c.file_names[1];
        assert_eq!(&key.reversed[..3], b"bd.");
        assert_eq!(bits, 32 + 3 * 8);
    }

    #[test]
    fn ipv4_is_mapped_and_wider_prefixes_are_inherited() {
        let text = "agents:\n  - name: a\n    network:\n      deny:\n        - id: wide\n          cidr: 10.0.0.0/8\n          ports: 22\n        - id: narrow\n          cidr: 10.1.0.0/16\n          ports: 443\n          protocol: tcp\n        - id: v6\n          cidr: \"fd00::/8\"\n";
        let c = compile_text(text).unwrap();
        assert_eq!(c.net_rules.len(), 3);
        let find = |bits: u32| c.net_rules.iter().find(|e| e.0 == bits).unwrap();
        let (_, key, wide) = find(32 + 96 + 8);
        assert_eq!(&key.addr[..12], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        assert_eq!(key.addr[12], 10);
        assert_eq!(wide.len, 1);
        let (_, _, narrow) = find(32 + 96 + 16);
        assert_eq!(narrow.len, 2, "the /16 inherits the /8's rule");
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
            (1, 0, u16::MAX)
        );
    }

    #[test]
    fn too_many_rules_on_one_prefix_are_refused_naming_the_rule() {
        let mut text = String::from("agents:\n  - name: a\n    network:\n      deny:\n");
        for i in 0..=NET_RULES_PER_PREFIX {
            text += &format!(
                "        - id: r{i}\n          cidr: 10.0.0.0/8\n          ports: {}\n",
                1000 + i
            );
        }
        let e = compile_text(&text).unwrap_err();
        assert!(e.reason.contains("at most 8"), "{e}");
        assert_eq!(e.location.line, 5);
    }

    #[test]
    fn summary_names_agents_and_modes() {
        let c = compile_text("agents:\n  - name: a\n  - name: b\n    mode: monitor\n").unwrap();
        assert!(
            c.summary().starts_with("2 agent(s) [a:enforce,b:monitor]"),
            "{}",
            c.summary()
        );
    }
}
