//! Egress by hostname, and database servers named by host name. A network
//! rule may name a host instead of a CIDR; guardd resolves each such name
//! itself, keeps its addresses for as long as the DNS records' TTLs say,
//! and puts the rule on each address in the kernel (`HOST_ADDRS`), where it
//! is the most specific rule for that address. Addresses in the
//! default-deny ranges (metadata, link-local, private) are never allowed
//! from DNS: a name that resolves there is a rebinding attempt or needs a
//! `cidr` rule. A database server's name is resolved the same way, and
//! each of its addresses routed to the statement guard (`ROUTES`), private
//! ones included: a route only narrows what an agent reaches.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::{Duration, Instant},
};

use guard_common::{NET_RULES_PER_PREFIX, NetKey, NetRuleSet, Route, RouteKey, capacity};
use hickory_resolver::{
    TokioResolver,
    config::{NameServerConfig, ResolverConfig},
    net::runtime::TokioRuntimeProvider,
};
use tracing::{info, warn};

use guard_policy::compile::{CompiledPolicy, default_deny_of, mapped};

/// Shortest and longest time an answer is kept before it is asked again.
const MIN_KEEP: Duration = Duration::from_secs(1);
const MAX_KEEP: Duration = Duration::from_secs(300);

/// What each name resolved to, and until when.
#[derive(Default)]
pub struct Hosts {
    resolved: BTreeMap<String, Resolved>,
}

struct Resolved {
    addrs: Vec<IpAddr>,
    until: Instant,
}

impl Hosts {
    /// The names of `policy`'s hostname rules and database servers that
    /// are new or due again.
    pub fn due(&self, policy: &CompiledPolicy) -> BTreeSet<String> {
        let now = Instant::now();
        let rules = policy.host_rules.iter().map(|r| &r.host);
        let servers = policy.route_hosts.iter().map(|r| &r.host);
        rules
            .chain(servers)
            .filter(|name| self.resolved.get(*name).is_none_or(|r| r.until <= now))
            .cloned()
            .collect()
    }

    /// Takes an answer for `name` (an empty one when it did not resolve);
    /// true when its addresses changed.
    pub fn update(&mut self, name: &str, mut addrs: Vec<IpAddr>, ttl: Duration) -> bool {
        addrs.sort();
        addrs.dedup();
        let until = Instant::now() + ttl.clamp(MIN_KEEP, MAX_KEEP);
        let changed = self.resolved.get(name).is_none_or(|r| r.addrs != addrs);
        if changed {
            info!(host = name, addrs = ?addrs, ttl_s = ttl.as_secs(), "hostname resolved");
            for addr in &addrs {
                if let Some(rule) = default_deny_of(*addr) {
                    warn!(host = name, %addr, "hostname rules do not allow a resolved address that `{rule}` denies; a `cidr` rule may allow it");
                }
            }
        }
        self.resolved
            .insert(name.to_string(), Resolved { addrs, until });
        changed
    }

    /// The kernel entries of `policy`'s hostname rules on the addresses
    /// resolved so far (profile indexes as in `policy`). An address whose
    /// names carry more than the kernel holds keeps the first rules.
    pub fn entries(&self, policy: &CompiledPolicy) -> Vec<(NetKey, NetRuleSet)> {
        let mut sets: BTreeMap<(u32, [u8; 16]), NetRuleSet> = BTreeMap::new();
        for rule in &policy.host_rules {
            let Some(resolved) = self.resolved.get(&rule.host) else {
                continue;
            };
            let allowed = resolved
                .addrs
                .iter()
                .filter(|a| default_deny_of(**a).is_none());
            for addr in allowed {
                let set = sets.entry((rule.profile, mapped(*addr))).or_default();
                if (set.len as usize) < NET_RULES_PER_PREFIX {
                    set.rules[set.len as usize] = rule.rule;
                    set.len += 1;
                } else {
                    warn!(host = %rule.host, %addr, "more than {NET_RULES_PER_PREFIX} hostname rules on one address; the rest do not apply");
                }
            }
        }
        let mut entries: Vec<(NetKey, NetRuleSet)> = sets
            .into_iter()
            .map(|((profile, addr), set)| {
                let key = NetKey {
                    profile: profile.to_be_bytes(),
                    addr,
                };
                (key, set)
            })
            .collect();
        if entries.len() > capacity::HOST_ADDRS as usize {
            warn!(
                "hostname rules resolved to {} addresses; the kernel holds {}, the rest do not apply",
                entries.len(),
                capacity::HOST_ADDRS
            );
            entries.truncate(capacity::HOST_ADDRS as usize);
        }
        entries
    }

    /// `policy`'s routes: those of servers given by address, then those of
    /// the addresses its servers' names resolved to so far (an address
    /// routed already keeps its first route).
    pub fn routes(&self, policy: &CompiledPolicy) -> Vec<(RouteKey, Route)> {
        let mut routes = policy.routes.clone();
        for server in &policy.route_hosts {
            let Some(resolved) = self.resolved.get(&server.host) else {
                continue;
            };
            for addr in &resolved.addrs {
                let key = RouteKey {
                    profile: server.profile,
                    port: server.port,
                    _pad: 0,
                    addr: mapped(*addr),
                };
                if !routes.iter().any(|(routed, _)| *routed == key) {
                    routes.push((key, server.route));
                }
            }
        }
        if routes.len() > capacity::ROUTES as usize {
            warn!(
                "database servers resolved to {} routed addresses; the kernel holds {}, the rest are not routed",
                routes.len(),
                capacity::ROUTES
            );
            routes.truncate(capacity::ROUTES as usize);
        }
        routes
    }
}

/// The resolver for hostname rules: `server` when given (guardd's
/// `--dns-server`), otherwise the system's (`/etc/resolv.conf`).
pub fn resolver(server: Option<IpAddr>) -> anyhow::Result<TokioResolver> {
    let builder = match server {
        Some(ip) => TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(vec![NameServerConfig::udp_and_tcp(ip)]),
            TokioRuntimeProvider::default(),
        ),
        None => TokioResolver::builder_tokio()?,
    };
    Ok(builder.build()?)
}

/// Resolves `name`: its addresses and how long they hold. A name that
/// does not resolve has none (its rules then apply to no address).
pub async fn resolve(resolver: &TokioResolver, name: &str) -> (Vec<IpAddr>, Duration) {
    match resolver.lookup_ip(format!("{name}.")).await {
        Ok(lookup) => {
            let ttl = lookup
                .valid_until()
                .saturating_duration_since(Instant::now());
            (lookup.iter().collect(), ttl)
        }
        Err(e) => {
            warn!(host = name, "cannot resolve: {e}");
            (Vec::new(), MIN_KEEP * 5)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use guard_policy::{compile::compile, policy::parse};

    #[test]
    fn resolved_addresses_carry_the_rule_and_rebinding_into_denied_ranges_is_dropped() {
        let policy = compile(
            &parse("profiles:\n  - name: a\n    default: allow\n    network:\n      allow:\n        - id: api\n          host: api.test\n          ports: 443\nagents: []\n")
                .unwrap(),
        )
        .unwrap();
        let mut hosts = Hosts::default();
        assert_eq!(hosts.due(&policy), BTreeSet::from(["api.test".to_string()]));
        let answer: Vec<IpAddr> = ["127.0.0.8", "169.254.169.254", "10.1.2.3"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert!(hosts.update("api.test", answer.clone(), Duration::from_secs(60)));
        assert!(
            !hosts.update("api.test", answer, Duration::from_secs(60)),
            "unchanged"
        );
        assert!(hosts.due(&policy).is_empty(), "kept for its TTL");
        let entries = hosts.entries(&policy);
        assert_eq!(
            entries.len(),
            1,
            "metadata and private addresses are not taken from DNS"
        );
        let (key, set) = entries[0];
        assert_eq!(key.addr, mapped("127.0.0.8".parse().unwrap()));
        assert_eq!((set.len, set.rules[0].port_lo), (1, 443));
        assert_eq!(policy.host_of(set.rules[0].rule_id), Some("api.test"));
    }
}
