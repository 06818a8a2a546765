//! What guardd adds to every policy it loads: the readiness canary's agent
//! and profile, and read-only rules that keep every agent away from Guard's
//! own files (its binaries, policy, records and whatever `--protect` names).

use std::path::{Path, PathBuf};

use crate::{
    canary::Canary,
    events::SELF_PROTECTION_RULE,
    policy::{Effect, FileTarget, Location, Policy, Rule},
};

pub struct Builtins {
    pub canary: Canary,
    /// Files and directories no agent may change.
    own_files: Vec<PathBuf>,
}

impl Builtins {
    /// `own_files` that do not exist are left out (a file created later is
    /// protected from the next reload on).
    pub fn new(canary: Canary, own_files: Vec<PathBuf>) -> Self {
        Self { canary, own_files }
    }

    /// Guard's binaries: this executable and its siblings.
    pub fn binaries() -> Vec<PathBuf> {
        let Ok(me) = std::env::current_exe() else {
            return Vec::new();
        };
        let dir = me.parent().unwrap_or(Path::new("/")).to_path_buf();
        let mut binaries = vec![me];
        for sibling in ["guardd", "guardctl", "guard-collector"] {
            let path = dir.join(sibling);
            if !binaries.contains(&path) {
                binaries.push(path);
            }
        }
        binaries
    }

    pub fn add_to(&self, policy: &mut Policy) {
        let own: Vec<Rule<FileTarget>> = self
            .own_files
            .iter()
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
                    effect: Effect::ReadOnly,
                    target,
                    location: Location::default(),
                })
            })
            .collect();
        for profile in &mut policy.profiles {
            profile.files.extend(own.iter().cloned());
        }
        self.canary.add_to(policy);
    }
}
