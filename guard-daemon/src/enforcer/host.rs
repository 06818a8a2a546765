//! Whether this host can enforce: BPF LSM among the active LSMs.

use std::path::Path;

use super::error::{EnforceError, SECURITYFS_LSM};

/// Checks that BPF LSM is an active LSM, mounting securityfs if needed.
pub fn check_bpf_lsm_active() -> Result<(), EnforceError> {
    if !Path::new(SECURITYFS_LSM).exists() {
        // Ignore failure: the read below reports the problem.
        let _ = nix::mount::mount(
            Some("securityfs"),
            "/sys/kernel/security",
            Some("securityfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        );
    }
    let active = std::fs::read_to_string(SECURITYFS_LSM).map_err(EnforceError::LsmList)?;
    let active = active.trim().to_string();
    if active.split(',').any(|l| l == "bpf") {
        Ok(())
    } else {
        Err(EnforceError::BpfLsmInactive { active })
    }
}
