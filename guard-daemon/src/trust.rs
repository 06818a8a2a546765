//! What guardd trusts must be its own: a file it loads or continues (the
//! policy, the events file), and every directory on the way to it, belongs
//! to guardd's user (root) and nobody else can write it. Otherwise whoever
//! can write it could choose Guard's policy or its records.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

const GROUP_OR_OTHER_WRITE: u32 = 0o022;
const STICKY: u32 = 0o1000;

/// Checks that `path` and each directory above it are owned by this
/// process's user (or root) and writable by no one else. A sticky
/// directory (`/tmp`) may be writable by all: there, only an entry's owner
/// can rename or remove it.
pub fn check_owned(path: &Path) -> Result<(), String> {
    let owner = nix::unistd::geteuid().as_raw();
    let path =
        std::path::absolute(path).map_err(|e| format!("cannot resolve {}: {e}", path.display()))?;
    let mut at: PathBuf = PathBuf::new();
    let mut checked = Vec::new();
    for component in path.components() {
        at.push(component);
        checked.push(at.clone());
    }
    for (i, at) in checked.iter().enumerate() {
        let meta = std::fs::symlink_metadata(at)
            .map_err(|e| format!("cannot inspect {}: {e}", at.display()))?;
        let is_target = i + 1 == checked.len();
        let whose = if meta.uid() != owner && meta.uid() != 0 {
            Some(format!("is owned by uid {}", meta.uid()))
        } else if meta.mode() & GROUP_OR_OTHER_WRITE != 0
            && !(meta.is_dir() && meta.mode() & STICKY != 0 && !is_target)
            && !meta.file_type().is_symlink()
        {
            Some(format!(
                "is writable by others (mode {:o})",
                meta.mode() & 0o7777
            ))
        } else {
            None
        };
        if let Some(whose) = whose {
            let what = if is_target {
                ""
            } else {
                "a directory above it, "
            };
            return Err(format!(
                "{} is not trusted: {what}{} {whose}, so someone other than {} could replace it. Make it owned by root and writable by root only",
                path.display(),
                at.display(),
                if owner == 0 {
                    "root".to_string()
                } else {
                    format!("uid {owner}")
                },
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn a_file_others_can_write_or_replace_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("policy.yaml");
        std::fs::write(&file, "").unwrap();
        // tempdir is under /tmp (sticky) in a 0700 directory: trusted.
        check_owned(&file).unwrap();

        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = check_owned(&file).unwrap_err();
        assert!(e.contains("writable by others (mode 666)"), "{e}");

        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = check_owned(&file).unwrap_err();
        assert!(
            e.contains("a directory above it") && e.contains("mode 777"),
            "{e}"
        );
    }
}
