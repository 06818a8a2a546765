//! `guardd`: load, enforce, stream records, detach on SIGTERM.

use std::{io::Write, path::PathBuf, time::Duration};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use guard_common::Counter;
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind};
use tracing::{info, warn};

use crate::{
    canary::Canary,
    cgroup::{self, GuardRoot},
    compile::{self, CompiledPolicy},
    enforcer::{EnforceError, Enforcer},
    events::{self, Clock},
    exit, policy,
};

/// How often records of allowed decisions (written without a wake-up) are
/// drained.
const DRAIN_INTERVAL: Duration = Duration::from_millis(100);

pub struct Config {
    pub policy: PathBuf,
    /// Where records go; stdout when `None`.
    pub events: Option<PathBuf>,
    /// Guard's cgroup, relative to the cgroup2 mount.
    pub cgroup_root: String,
}

/// An error with the process exit code it maps to.
#[derive(Debug, thiserror::Error)]
#[error("{error:#}")]
pub struct Fatal {
    pub code: i32,
    pub error: anyhow::Error,
}

impl From<EnforceError> for Fatal {
    fn from(e: EnforceError) -> Self {
        let code = if e.is_unsupported_host() {
            exit::UNSUPPORTED_HOST
        } else {
            exit::FAILURE
        };
        Fatal {
            code,
            error: e.into(),
        }
    }
}

fn failure(error: anyhow::Error) -> Fatal {
    Fatal {
        code: exit::FAILURE,
        error,
    }
}

/// Reads, validates and compiles the policy file, with `extra_agents` (the
/// daemon's own canary) appended after the file's profiles.
pub fn load_policy(
    path: &std::path::Path,
    extra_agents: Vec<policy::AgentProfile>,
) -> Result<CompiledPolicy, Fatal> {
    let invalid = |error: anyhow::Error| Fatal {
        code: exit::INVALID_POLICY,
        error,
    };
    let mut parsed = policy::load(path).map_err(|e| invalid(e.into()))?;
    parsed.agents.extend(extra_agents);
    compile::compile(&parsed)
        .map_err(|e| invalid(anyhow::anyhow!("invalid policy {}: {e}", path.display())))
}

/// Checks whether this host can enforce, without enforcing anything: loads
/// and attaches the programs and runs the readiness canary, then detaches.
pub fn check_host() -> Result<(), Fatal> {
    let canary = Canary::prepare().map_err(|e| failure(e.into()))?;
    let policy = compile::compile(&policy::Policy {
        agents: vec![canary.profile()],
    })
    .map_err(|e| failure(anyhow::anyhow!("canary profile: {e}")))?;
    let mount = cgroup::ensure_cgroup2().map_err(|e| failure(e.into()))?;
    let enforcer = start(&mount, cgroup::DEFAULT_ROOT, &policy, &canary)?;
    info!(
        hooks = ?enforcer.attachment.attached,
        unavailable = ?enforcer.attachment.unavailable,
        "BPF LSM usable: all programs loaded and attached, and the readiness canary was denied"
    );
    Ok(())
}

/// Creates the cgroups, loads and attaches the programs, applies `policy`
/// (which includes the canary's profile) and runs the canary. On failure,
/// cgroups created here are removed again and the programs detach.
fn start(
    mount: &std::path::Path,
    cgroup_root: &str,
    policy: &CompiledPolicy,
    canary: &Canary,
) -> Result<Enforcer, Fatal> {
    let root = GuardRoot::create(mount, cgroup_root).map_err(|e| failure(e.into()))?;
    let agent_names: Vec<&str> = policy
        .agents
        .iter()
        .map(|(name, _)| name.as_str())
        .collect();
    let started = (|| {
        let agent_cgroups = agent_names
            .iter()
            .map(|name| root.create_agent(name))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| failure(e.into()))?;
        let mut enforcer = Enforcer::load(&root)?;
        enforcer.apply(policy, &agent_cgroups)?;
        canary.check(&root).map_err(|e| Fatal {
            code: exit::UNSUPPORTED_HOST,
            error: e.into(),
        })?;
        Ok(enforcer)
    })();
    if started.is_err() {
        root.remove_unused(&agent_names);
    }
    for stale in root.unknown_agents_with_processes(&agent_names) {
        warn!(
            cgroup = %root.agent_path(&stale).display(),
            "agent `{stale}` is not in this policy but its cgroup has processes: they are NOT confined"
        );
    }
    started
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<(), Fatal> {
    let canary = Canary::prepare().map_err(|e| failure(e.into()))?;
    let policy = load_policy(&config.policy, vec![canary.profile()])?;
    for note in &policy.notes {
        warn!("{note}");
    }
    let mount = cgroup::ensure_cgroup2().map_err(|e| failure(e.into()))?;
    let mut enforcer = start(&mount, &config.cgroup_root, &policy, &canary)?;
    let events = enforcer.take_events()?;
    if !enforcer.attachment.unavailable.is_empty() {
        info!(hooks = ?enforcer.attachment.unavailable, "optional hooks not in this kernel; older hooks cover their routes");
    }
    info!(
        policy = %config.policy.display(),
        cgroup_root = %config.cgroup_root,
        hooks = ?enforcer.attachment.attached,
        "enforcing: {}",
        policy.summary()
    );

    let mut out: Box<dyn Write + Send> = match &config.events {
        Some(path) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open events file {}", path.display()))
                .map_err(failure)?,
        ),
        None => Box::new(std::io::stdout()),
    };
    stream_events(events, &policy, &mut out)
        .await
        .map_err(failure)?;

    let lost = enforcer.counter(Counter::EventsLost)?;
    let errors = enforcer.counter(Counter::HookErrors)?;
    let too_deep = enforcer.counter(Counter::WalkTooDeep)?;
    drop(enforcer);
    info!(
        events_lost = lost,
        hook_errors = errors,
        walk_too_deep = too_deep,
        "detached: no longer enforcing"
    );
    Ok(())
}

/// Writes every record until a termination signal, then drains what is left.
async fn stream_events(
    events: RingBuf<MapData>,
    policy: &CompiledPolicy,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    // SAFETY: the ring buffer owns its map fd and lives inside the AsyncFd,
    // so the fd stays open for as long as it is registered.
    let mut events =
        unsafe { AsyncFd::register(events) }.context("cannot poll the events ring buffer")?;
    let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(DRAIN_INTERVAL);
    let clock = Clock::new();
    loop {
        tokio::select! {
            ready = events.readable_mut() => {
                let mut guard = ready?;
                drain(guard.get_inner_mut(), policy, &clock, out)?;
                guard.clear_ready();
            }
            _ = tick.tick() => drain(events.get_mut(), policy, &clock, out)?,
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    drain(events.get_mut(), policy, &clock, out)
}

fn drain(
    events: &mut RingBuf<MapData>,
    policy: &CompiledPolicy,
    clock: &Clock,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let mut wrote = false;
    while let Some(item) = events.next() {
        match events::decode(&item) {
            Ok(event) => {
                // One write per record, so a reader following the file never
                // sees a record split across writes.
                let mut line = serde_json::to_vec(&events::to_record(&event, policy, clock))?;
                line.push(b'\n');
                out.write_all(&line)?;
                wrote = true;
            }
            Err(e) => warn!("{e}"),
        }
    }
    if wrote {
        out.flush()?;
    }
    Ok(())
}
