//! Reloads: on SIGHUP, on a change of the policy file or of a file a rule
//! pins by digest, or on request; the file watcher.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{signal::unix::SignalKind, sync::mpsc};
use tracing::{error, warn};

use guard_policy::compile::CompiledPolicy;

use crate::generation::Generation;

use super::{
    config::{Fatal, compile_policy, failure, load_own_policy},
    state::{Reason, State, lock},
};

/// How long file changes are collected before one reload.
const SETTLE: Duration = Duration::from_millis(300);

/// Whether the policy file or a pinned file has other content than
/// `generation` was made from.
pub(super) fn files_changed(policy_path: &Path, generation: &Generation) -> bool {
    let policy = std::fs::read(policy_path).map(|text| guard_policy::digest(&text));
    policy.ok().as_ref() != Some(&generation.policy_sha256)
        || generation.compiled.pinned_file_changed()
}

/// The generation in force after a reload, and why guardd is not enforcing
/// on it when the readiness canary failed.
pub(super) struct Reloaded {
    pub(super) generation: u64,
    pub(super) policy_sha256: String,
    pub(super) problem: Option<String>,
}

/// Reloads in a blocking task (the canary runs a process). A policy that
/// does not validate is refused with `exit::INVALID_POLICY` as its code,
/// and the generation in force stays.
pub(super) async fn reload(state: Arc<Mutex<State>>, reason: Reason) -> Result<Reloaded, Fatal> {
    let result = tokio::task::spawn_blocking(move || {
        // Read and compile without the lock (records keep flowing), then
        // publish with it.
        let (path, builtins, current) = {
            let state = lock(&state);
            (
                state.policy_path.clone(),
                state.builtins.clone(),
                state.current().clone(),
            )
        };
        if reason == Reason::FileChanged && !files_changed(&path, &current) {
            return Ok((current, None));
        }
        if reason == Reason::SpoolRotated {
            // The policy in force (not the file, which may hold a change not
            // loaded yet), compiled under the lock so that no other reload
            // comes between: only the built-in rules change.
            let mut state = lock(&state);
            let text = state.current().text.clone();
            let policy = compile_policy(text, "the policy in force", &builtins);
            return state
                .reload(reason, policy)
                .map(|generation| (generation, state.readiness.clone().err()));
        }
        let policy = load_own_policy(&path, &builtins);
        let mut state = lock(&state);
        // Another reload may have published this very file meanwhile.
        if reason == Reason::FileChanged && !files_changed(&path, state.current()) {
            return Ok((state.current().clone(), None));
        }
        state
            .reload(reason, policy)
            .map(|generation| (generation, state.readiness.clone().err()))
    })
    .await;
    let (generation, problem) =
        result.map_err(|e| failure(anyhow::anyhow!("reload failed: {e}")))??;
    Ok(Reloaded {
        generation: generation.number,
        policy_sha256: generation.policy_sha256.clone(),
        problem,
    })
}

/// The files whose change calls for a reload: the policy and every file a
/// rule pins by digest.
pub(super) fn watched_files(policy: &Path, compiled: &CompiledPolicy) -> Vec<PathBuf> {
    std::iter::once(policy.to_path_buf())
        .chain(compiled.pinned_files.iter().map(|(path, _)| path.clone()))
        .collect()
}

/// Watches files by their directories (editors replace files by rename).
pub(super) struct FileWatcher {
    watcher: notify::RecommendedWatcher,
    files: Arc<Mutex<Vec<PathBuf>>>,
    dirs: BTreeSet<PathBuf>,
}

impl FileWatcher {
    pub(super) fn new(changes: mpsc::Sender<()>, files: Vec<PathBuf>) -> notify::Result<Self> {
        let watched = Arc::new(Mutex::new(Vec::new()));
        let filter = watched.clone();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            if event.kind.is_access() {
                return;
            }
            let files = filter.lock().unwrap_or_else(|e| e.into_inner());
            if event.paths.iter().any(|p| files.contains(p)) {
                let _ = changes.try_send(());
            }
        })?;
        let mut this = Self {
            watcher,
            files: watched,
            dirs: BTreeSet::new(),
        };
        this.watch(files);
        Ok(this)
    }

    pub(super) fn watch(&mut self, files: Vec<PathBuf>) {
        use notify::Watcher as _;
        let files: Vec<PathBuf> = files
            .into_iter()
            .map(|f| std::path::absolute(&f).unwrap_or(f))
            .collect();
        let dirs: BTreeSet<PathBuf> = files
            .iter()
            .filter_map(|f| f.parent().map(Path::to_path_buf))
            .collect();
        for gone in self.dirs.difference(&dirs) {
            let _ = self.watcher.unwatch(gone);
        }
        for new in dirs.difference(&self.dirs) {
            if let Err(e) = self.watcher.watch(new, notify::RecursiveMode::NonRecursive) {
                warn!(dir = %new.display(), "cannot watch for policy changes: {e}");
            }
        }
        self.dirs = dirs;
        *self.files.lock().unwrap_or_else(|e| e.into_inner()) = files;
    }
}

/// Reloads on SIGHUP and when a watched file changes.
pub(super) async fn reload_on_change(
    state: Arc<Mutex<State>>,
    mut changes: mpsc::Receiver<()>,
    mut watcher: FileWatcher,
) {
    let Ok(mut hup) = tokio::signal::unix::signal(SignalKind::hangup()) else {
        error!("cannot handle SIGHUP; reload through `guardctl reload`");
        return;
    };
    // Also picks up the pinned files of generations published on request.
    let mut refresh = tokio::time::interval(Duration::from_secs(2));
    loop {
        let reason = tokio::select! {
            _ = hup.recv() => Some(Reason::Signal),
            Some(()) = changes.recv() => {
                // Let a burst of writes settle into one reload.
                tokio::time::sleep(SETTLE).await;
                while changes.try_recv().is_ok() {}
                Some(Reason::FileChanged)
            }
            _ = refresh.tick() => None,
        };
        if let Some(reason) = reason {
            // The outcome is logged where it is decided.
            let _ = reload(state.clone(), reason).await;
        }
        let files = {
            let state = lock(&state);
            watched_files(&state.policy_path, &state.current().compiled)
        };
        watcher.watch(files);
    }
}
