//! The DNS task: resolves hostname rules' names and keeps the kernel's
//! addresses current.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tracing::warn;

use super::{
    hosts,
    state::{State, lock},
};

/// Resolves the names of hostname rules when they are new or their
/// answers expire, and keeps the kernel's addresses current. Without a
/// resolver, says so once a policy names hosts.
pub(super) async fn resolve_hosts(
    state: Arc<Mutex<State>>,
    resolver: Result<hickory_resolver::TokioResolver, String>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut warned = false;
    loop {
        tick.tick().await;
        let due = {
            let state = lock(&state);
            state.hosts.due(&state.current().compiled)
        };
        let resolver = match &resolver {
            Ok(resolver) => resolver,
            Err(e) => {
                if !due.is_empty() && !warned {
                    warn!(hosts = ?due, "no DNS resolver ({e}): hostname rules apply to no address");
                }
                warned = !due.is_empty();
                continue;
            }
        };
        let mut answers = Vec::new();
        for name in due {
            let (addrs, ttl) = hosts::resolve(resolver, &name).await;
            answers.push((name, addrs, ttl));
        }
        if !answers.is_empty() {
            lock(&state).resolved(answers);
        }
    }
}
