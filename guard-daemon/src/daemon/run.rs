//! `run`: start guardd, spawn its tasks and stream records until shutdown;
//! `check_host` and `detach`.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use tokio::{
    sync::{mpsc, watch},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use guard_api::{
    audit::AuditService, chain::Chain, grpc::GRACE, metrics::StageLabels, session::Session,
    signing::HostKey,
};
use guard_policy::{LoadedPolicy, compile, policy};

use crate::{canary::Canary, cgroup, metrics::DaemonMetrics, spool::LineFile};

use super::{
    builtins::Builtins,
    config::{Config, Fatal, Persistence, failure, load_own_policy},
    dns, hosts, kept, reload, services,
    state::{Reason, State, lock},
    statements, why,
    writer::{self, Checkpoints, Out, RecordWriter},
};

/// Checks whether this host can enforce, without enforcing anything: loads
/// and attaches the programs and runs the readiness canary, then detaches.
pub fn check_host() -> Result<(), Fatal> {
    let builtins = Builtins::new(Canary::prepare().map_err(failure)?, Vec::new());
    let mut only_canary = policy::Policy {
        profiles: vec![],
        agents: vec![],
        databases: vec![],
    };
    builtins.add_to(&mut only_canary);
    let compiled = compile::compile(&only_canary)
        .map_err(|e| failure(anyhow::anyhow!("canary profile: {e}")))?;
    let mount = cgroup::ensure_cgroup2().map_err(failure)?;
    let state = State::start(
        &mount,
        cgroup::DEFAULT_ROOT,
        PathBuf::new(),
        builtins,
        LoadedPolicy {
            compiled,
            sha256: String::new(),
            text: String::new(),
        },
        None,
        Default::default(),
    )?;
    info!(
        hooks = ?state.enforcer.attachment.attached,
        unavailable = ?state.enforcer.attachment.unavailable,
        "BPF LSM usable: all programs loaded and attached, and the readiness canary was denied"
    );
    Ok(())
}

/// Removes the programs guardd left pinned (and attached) for
/// `cgroup_root`: agents below it are no longer confined.
pub fn detach(cgroup_root: &str) -> Result<(), Fatal> {
    let pins = crate::enforcer::pin_root(cgroup_root);
    let started = std::time::Instant::now();
    let removed = crate::enforcer::detach_pinned(cgroup_root)
        .with_context(|| format!("cannot remove {}", pins.display()))
        .map_err(failure)?;
    if removed {
        info!(
            pins = %pins.display(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "detached: agents below `{cgroup_root}` are no longer confined"
        );
    } else {
        info!(pins = %pins.display(), "nothing pinned: no programs of a stopped guardd were attached");
    }
    Ok(())
}

/// The files no agent may change: Guard's binaries, the policy, the
/// signing key, the TLS files, the records and the state file (created
/// here if new, so that they are protected from the start) and what
/// `--protect` names.
pub(super) fn own_files(config: &Config) -> Vec<PathBuf> {
    let mut own = Builtins::binaries();
    own.push(config.policy.clone());
    own.push(config.signing_key.clone());
    if let Some(tls) = config.tls_files() {
        own.extend([tls.certificate.clone(), tls.key.clone(), tls.ca.clone()]);
    }
    // Readable by each session's user; changed by guardd only.
    match std::fs::create_dir_all(&config.why_dir) {
        Ok(()) => own.push(config.why_dir.clone()),
        Err(e) => warn!(dir = %config.why_dir.display(), "cannot create: {e}"),
    }
    // The spool's next events file is made now, to be protected before it
    // is needed; the files rotated out are added at each generation.
    let next = config.events.as_deref().map(crate::spool::next_name);
    let files = [config.events.as_ref(), next.as_ref(), config.ocsf.as_ref()];
    for file in files.into_iter().flatten().chain([&config.state_file]) {
        if let Some(dir) = file.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Err(e) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
        {
            warn!(file = %file.display(), "cannot create: {e}");
        }
        own.push(file.clone());
    }
    own.extend(config.protect.iter().cloned());
    own
}

/// Loading parsed the kernel's BTF and relocated every program: tens of
/// MiB of heap, all freed by now, that the allocator would otherwise keep
/// for the daemon's whole life.
fn return_freed_memory() {
    // SAFETY: malloc_trim only gives free memory back; it takes no pointer.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Runs the daemon until `shutdown` is cancelled: enforces, serves and
/// streams records, then drains the records left, lets every server finish
/// its calls (for up to [`GRACE`]) and reports how it leaves the host.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Fatal> {
    config.check()?;
    // Before the files are protected: a key made now is protected too.
    let (key, made) = HostKey::load_or_create(&config.signing_key).map_err(failure)?;
    info!(
        file = %config.signing_key.display(),
        key = %key.public(),
        made,
        "checkpoints are signed with this host's key"
    );
    let builtins = Builtins::new(Canary::prepare().map_err(failure)?, own_files(&config))
        .with_spool(config.events.clone())
        // Either key would let an agent speak for this host.
        .with_secrets(
            std::iter::once(config.signing_key.clone())
                .chain(config.tls_files().map(|tls| tls.key.clone()))
                .collect(),
        );
    let sockets = [config.socket.clone()];
    for dir in sockets.iter().filter_map(|socket| socket.parent()) {
        let _ = std::fs::create_dir_all(dir);
    }
    let own_names = builtins.own_names(&sockets);
    if let Some(events) = &config.events {
        crate::trust::check_owned(events)
            .and_then(|()| kept::Kept::read(&config.state_file).check_events(events))
            .map_err(|e| failure(anyhow::anyhow!("refusing to continue the events file: {e}")))?;
    }
    let policy = load_own_policy(&config.policy, &builtins)?;
    for note in &policy.compiled.notes {
        warn!("{note}");
    }
    let mount = cgroup::ensure_cgroup2().map_err(failure)?;
    let persistence = Persistence {
        pins: crate::enforcer::pin_root(&config.cgroup_root),
        state_file: config.state_file.clone(),
    };
    let mut state = State::start(
        &mount,
        &config.cgroup_root,
        config.policy.clone(),
        builtins,
        policy,
        Some(&persistence),
        config.programs,
    )?;
    if let Some(adopted) = &state.enforcer.adopted {
        info!(
            pins = %persistence.pins.display(),
            previous_generation = ?adopted.generation,
            unreported_losses = adopted.unreported_losses,
            "adopted the programs the previous guardd left attached: agents stayed confined while no guardd ran"
        );
    }
    state.enforcer.set_own_names(&own_names).map_err(failure)?;
    state.state_file = Some(persistence.state_file.clone());
    state.signing_key = Some(key.public());
    state.events_file = config.events.clone();
    state.keep();
    state.why = why::Why::new(config.why_dir.clone());
    let kept: Vec<Session> = state.sessions.live().cloned().collect();
    for session in &kept {
        state.why.open(session);
    }

    let replaced = match state.enforcer.pin() {
        Ok(replaced) => replaced,
        Err(e) => {
            warn!(
                "{e}: the programs detach when guardd ends, leaving agents unconfined until it runs again"
            );
            0
        }
    };
    let events = state.enforcer.take_events()?;
    return_freed_memory();
    let listener = services::bind(&config.socket).map_err(failure)?;
    if !state.enforcer.attachment.unavailable.is_empty() {
        info!(hooks = ?state.enforcer.attachment.unavailable, "optional hooks not in this kernel; older hooks cover their routes");
    }
    {
        let current = state.current();
        info!(
            policy = %config.policy.display(),
            cgroup_root = %config.cgroup_root,
            socket = %config.socket.display(),
            hooks = ?state.enforcer.attachment.attached,
            generation = current.number,
            policy_sha256 = %current.policy_sha256,
            "started"
        );
        let summary = current.compiled.summary();
        match &state.readiness {
            Ok(()) => info!("enforcing: {summary}"),
            // Only with --routing-only: a failed canary stops guardd.
            Err(problem) => warn!("NOT enforcing: {problem}. {summary}"),
        }
    }

    // Before the chain is resumed: a torn last line is cut first.
    let (out, torn) = Out::open(config.events.as_deref(), config.spool).map_err(failure)?;
    let watched = reload::watched_files(&config.policy, &state.current().compiled);
    let state = Arc::new(Mutex::new(state));
    let (changes_tx, changes_rx) = mpsc::channel(16);
    let watcher = reload::FileWatcher::new(changes_tx, watched).map_err(failure)?;
    // Every task runs until `shutdown`, and is awaited before guardd ends.
    let mut tasks = JoinSet::new();
    let api = services::LocalApi {
        state: state.clone(),
        groups: Arc::new(config.access.clone()),
    };
    tasks.spawn(logged(
        "local API",
        services::serve(listener, api, shutdown.clone().cancelled_owned()),
    ));
    tasks.spawn(until(
        &shutdown,
        reload::reload_on_change(state.clone(), changes_rx, watcher),
    ));
    tasks.spawn(statements::run(
        state.clone(),
        config.statement_guard.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(until(
        &shutdown,
        dns::resolve_hosts(
            state.clone(),
            hosts::resolver(config.dns_server).map_err(|e| format!("{e:#}")),
        ),
    ));

    let chain = match &config.events {
        Some(path) => Chain::resume(path)
            .with_context(|| format!("cannot continue the record chain of {}", path.display()))
            .map_err(failure)?,
        None => Chain::default(),
    };
    let ocsf = match &config.ocsf {
        Some(path) => Some(
            LineFile::open(path)
                .with_context(|| format!("cannot open OCSF file {}", path.display()))
                .map_err(failure)?
                .0,
        ),
        None => None,
    };
    let metrics = Arc::new(DaemonMetrics::default());
    if let Some(addr) = config.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for metrics on {addr}"))
            .map_err(failure)?;
        info!(%addr, "metrics on /metrics");
        tasks.spawn(guard_api::metrics::serve(
            listener,
            metrics.clone(),
            shutdown.clone(),
        ));
    }
    lock(&state).update_metrics(&metrics);
    let mut writer = RecordWriter::new(chain, out, config.host_name.clone(), config.redactor);
    writer.losses_reported_by(&state);
    writer.ocsf = ocsf;
    writer.metrics = metrics.clone();
    writer.checkpoints = Some(Checkpoints::new(key));
    if torn > 0 {
        warn!(
            bytes = torn,
            "the events file ended in a torn line (a guardd ended mid-write): cut, and reported as a loss"
        );
        writer.lose("torn_line", 1);
    }
    // Records that programs of another build made and no guardd read.
    writer.lose("replaced_programs", replaced);
    writer.write_losses();
    writer.flush();
    if let Some((addr, transport)) = &config.grpc_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for gRPC on {addr}"))
            .map_err(failure)?;
        let incoming = guard_api::tls::incoming(listener, transport).map_err(failure)?;
        info!(%addr, "gRPC audit API listening");
        let audit = AuditService {
            feed: writer.feed.clone(),
            history: None,
            subscriber_losses: metrics
                .lost
                .get_or_create(&StageLabels {
                    stage: "subscriber_queue".into(),
                })
                .clone(),
        };
        let (routes, _health) = guard_api::grpc::routes(audit).await.map_err(failure)?;
        tasks.spawn(logged(
            "gRPC audit API",
            guard_api::grpc::serve(incoming, routes, shutdown.clone()),
        ));
    }
    if let (Some(collector), Some(events)) = (&config.collector, &config.events) {
        let shipper = guard_api::ship::Shipper {
            events: events.clone(),
            collector: collector.clone(),
            host: config.host_name.clone(),
            written: Some(writer.written.subscribe()),
            acked: watch::Sender::new(0),
        };
        // Rotated files go once the collector has them.
        writer.acked = Some(shipper.acked.subscribe());
        let mut acked = shipper.acked.subscribe();
        let metrics = metrics.clone();
        tasks.spawn(until(&shutdown, async move {
            while acked.changed().await.is_ok() {
                metrics.acked_seq.set(*acked.borrow() as i64);
            }
        }));
        tasks.spawn(until(&shutdown, shipper.run()));
    }
    if config.events.is_some() {
        // Each rotation makes new files: a generation of the same policy
        // protects them as Guard's own.
        let rotated = Arc::new(tokio::sync::Notify::new());
        writer.rotated = Some(rotated.clone());
        let state = state.clone();
        tasks.spawn(until(&shutdown, async move {
            loop {
                rotated.notified().await;
                if let Err(e) = reload::reload(state.clone(), Reason::SpoolRotated).await {
                    error!("cannot protect the files of the rotated spool: {e}");
                }
            }
        }));
    }
    let result = writer::stream_events(events, &state, writer, &shutdown).await;
    // The writer may also end by an error: everything stops with it.
    shutdown.cancel();
    finish(tasks).await;
    let _ = std::fs::remove_file(&config.socket);
    result.map_err(failure)?;

    let state = lock(&state);
    let counters = state.counters();
    let live = state.sessions.populated();
    let pinned = state.enforcer.pinned();
    drop(state);
    if pinned {
        info!(
            ?counters,
            pins = %persistence.pins.display(),
            "stopped; the programs stay attached and agents stay confined by the policy in force until guardd runs again (`guardd --detach` removes them)"
        );
    } else {
        info!(?counters, "detached: no longer enforcing");
        if live > 0 {
            warn!(
                "{live} session(s) still have processes; they are NOT confined until guardd runs again"
            );
        }
    }
    Ok(())
}

/// Runs `task` until `shutdown`.
fn until(
    shutdown: &CancellationToken,
    task: impl Future<Output = ()> + Send + 'static,
) -> impl Future<Output = ()> + Send + 'static {
    let shutdown = shutdown.clone();
    async move {
        shutdown.run_until_cancelled(task).await;
    }
}

/// Runs a server, logging why it stopped if it failed.
async fn logged(what: &'static str, server: impl Future<Output = anyhow::Result<()>>) {
    if let Err(e) = server.await {
        error!("{what} stopped: {e:#}");
    }
}

/// Waits for the tasks to end after shutdown; those still running after
/// [`GRACE`] are stopped.
async fn finish(mut tasks: JoinSet<()>) {
    let deadline = tokio::time::Instant::now() + GRACE;
    loop {
        match tokio::time::timeout_at(deadline, tasks.join_next()).await {
            Ok(None) => return,
            Ok(Some(Err(e))) if e.is_panic() => error!("a task panicked: {e}"),
            Ok(Some(_)) => {}
            Err(_) => {
                warn!(
                    tasks = tasks.len(),
                    "tasks still running {GRACE:?} after shutdown are stopped"
                );
                tasks.shutdown().await;
                return;
            }
        }
    }
}
