//! What guardd adds to every policy it loads: the readiness canary's agent
//! and profile, and read-only rules that keep every agent away from Guard's
//! own files (its binaries, policy, records and whatever `--protect` names).

use std::{
    ffi::OsStr,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use guard_common::{OWN_NAME_LEN, OwnNameKey};

use guard_api::record::SELF_PROTECTION_RULE;
use guard_policy::policy::{Effect, FileTarget, Location, Policy, Rule};

use crate::canary::Canary;

pub struct Builtins {
    pub canary: Canary,
    /// Files and directories no agent may change.
    own_files: Vec<PathBuf>,
    /// Guard's files no agent may even read (the signing key, the TLS key).
    secrets: Vec<PathBuf>,
    /// The events file, whose rotated files are Guard's own too (found
    /// anew for each generation).
    spool: Option<PathBuf>,
}

impl Builtins {
    /// `own_files` that do not exist are left out (a file created later is
    /// protected from the next reload on).
    pub fn new(canary: Canary, own_files: Vec<PathBuf>) -> Self {
        Self {
            canary,
            own_files,
            secrets: Vec::new(),
            spool: None,
        }
    }

    /// Also the files rotated out of `events`.
    pub fn with_spool(mut self, events: Option<PathBuf>) -> Self {
        self.spool = events;
        self
    }

    /// Also `secrets`, which no agent may read (`map::SECRETS`).
    pub fn with_secrets(mut self, secrets: Vec<PathBuf>) -> Self {
        self.secrets = secrets;
        self
    }

    /// The kernel's keys for the secrets that exist.
    pub fn secret_keys(&self) -> impl Iterator<Item = guard_common::SecretKey> + '_ {
        self.secrets
            .iter()
            .filter_map(|path| guard_policy::compile::secret_key(path))
    }

    /// Guard's binaries: this executable and its siblings.
    pub fn binaries() -> Vec<PathBuf> {
        let Ok(me) = std::env::current_exe() else {
            return Vec::new();
        };
        let dir = me.parent().unwrap_or(Path::new("/")).to_path_buf();
        let mut binaries = vec![me];
        for sibling in ["guardd", "guardctl", "guard-collector", "guard-pg"] {
            let path = dir.join(sibling);
            if !binaries.contains(&path) {
                binaries.push(path);
            }
        }
        binaries
    }

    /// The directory entries on the way to Guard's own files and to
    /// `more` (paths that need not exist yet, such as sockets): each
    /// path's name and the name of every directory above it, in its parent
    /// directory. Symbolic links on the way count too, with what they
    /// point to. An agent may not add, remove or rename any of them. Each
    /// directory that holds one has its own key ([`OwnNameKey::dir`]),
    /// which the programs look up first.
    pub fn own_names(&self, more: &[PathBuf]) -> Vec<OwnNameKey> {
        let mut names = Vec::new();
        for path in self.own_files.iter().chain(more) {
            let Ok(path) = std::path::absolute(path) else {
                continue;
            };
            let real = path
                .parent()
                .and_then(|dir| dir.canonicalize().ok())
                .zip(path.file_name())
                .map(|(dir, name)| dir.join(name));
            for path in [Some(path), real].into_iter().flatten() {
                for at in path.ancestors() {
                    if let Some(key) = at
                        .parent()
                        .zip(at.file_name())
                        .and_then(|(dir, name)| entry_key(dir, name))
                    {
                        for key in [OwnNameKey::dir(key.dir_dev, key.dir_ino), key] {
                            if !names.contains(&key) {
                                names.push(key);
                            }
                        }
                    }
                }
            }
        }
        names
    }

    /// Adds the read-only rules on Guard's own files, and on the statement
    /// guard's password and key files the policy names (no agent may read
    /// those either: `map::SECRETS`), to every profile; and the canary.
    pub fn add_to(&self, policy: &mut Policy) {
        let secrets: Vec<PathBuf> = policy
            .databases
            .iter()
            .flat_map(|d| d.secret_files())
            .map(Path::to_path_buf)
            .collect();
        let rotated: Vec<PathBuf> = self
            .spool
            .as_deref()
            .and_then(|events| guard_api::spool::rotated(events).ok())
            .into_iter()
            .flatten()
            .map(|r| r.path)
            .collect();
        let own: Vec<Rule<FileTarget>> = self
            .own_files
            .iter()
            .chain(&rotated)
            .chain(&secrets)
            .filter_map(|path| {
                let meta = std::fs::metadata(path).ok()?;
                let target = if meta.is_dir() {
                    FileTarget::Subtree(path.clone())
                } else {
                    FileTarget::Path(path.clone())
                };
                Some(Rule {
                    id: SELF_PROTECTION_RULE.into(),
                    message: Some("one of Guard's own files: no agent may change it".into()),
                    freeze: false,
                    approvable: false,
                    effect: Effect::ReadOnly,
                    target,
                    location: Location::default(),
                })
            })
            .collect();
        // First, so that a rule of the policy on the same target is the
        // one refused, with its line.
        for profile in &mut policy.profiles {
            profile.files.splice(0..0, own.iter().cloned());
        }
        self.canary.add_to(policy);
    }
}

/// The key of the entry `name` in the directory `dir`, if `dir` exists.
fn entry_key(dir: &Path, name: &OsStr) -> Option<OwnNameKey> {
    let (dir_dev, dir_ino) = guard_policy::compile::identity(dir).ok()?;
    let bytes = name.as_bytes();
    let len = bytes.len().min(OWN_NAME_LEN);
    let mut key = OwnNameKey {
        dir_ino,
        dir_dev,
        len: len as u32,
        name: [0; OWN_NAME_LEN],
    };
    key.name[..len].copy_from_slice(&bytes[..len]);
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use guard_policy::{compile::compile, policy::parse};

    #[test]
    fn own_names_are_every_entry_on_the_way_including_links() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("link")).unwrap();
        let builtins = Builtins::new(Canary::prepare().unwrap(), vec![]);
        let names = builtins.own_names(&[dir.path().join("link/control.sock")]);
        let has =
            |dir: &Path, name: &str| names.contains(&entry_key(dir, OsStr::new(name)).unwrap());
        assert!(has(&real, "control.sock"));
        assert!(has(dir.path(), "link"));
        assert!(has(dir.path(), "real"));
        assert!(has(
            dir.path().parent().unwrap(),
            dir.path().file_name().unwrap().to_str().unwrap()
        ));
        assert!(has(Path::new("/"), "tmp"));
        assert!(!has(dir.path(), "other"));
        let holds = |dir: &Path| {
            let (dev, ino) = guard_policy::compile::identity(dir).unwrap();
            names.contains(&OwnNameKey::dir(dev, ino))
        };
        assert!(holds(&real) && holds(dir.path()) && holds(Path::new("/")));
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        assert!(!holds(&elsewhere));
    }

    #[test]
    fn own_files_are_read_only_and_a_rule_on_one_is_refused_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let own = dir.path().join("policy.yaml");
        std::fs::write(&own, "").unwrap();
        let builtins = Builtins::new(Canary::prepare().unwrap(), vec![own.clone()]);
        let text = |rules: &str| {
            format!("profiles:\n  - name: p\n    default: allow\n{rules}agents: []\n")
        };
        let mut policy = parse(&text("")).unwrap();
        builtins.add_to(&mut policy);
        let compiled = compile(&policy).unwrap();
        assert!(
            compiled
                .file_identity
                .iter()
                .any(|(_, rule)| rule.action == guard_common::action::READ_ONLY)
        );
        let mut policy = parse(&text(&format!(
            "    files:\n      writable:\n        - id: mine\n          path: {}\n",
            own.display()
        )))
        .unwrap();
        builtins.add_to(&mut policy);
        let e = compile(&policy).unwrap_err();
        assert_eq!(e.location.line, 6, "{e}");
        assert!(
            e.reason.contains("`mine`") && e.reason.contains("self-protection"),
            "{e}"
        );
    }
}
