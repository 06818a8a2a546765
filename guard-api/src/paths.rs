//! Where guardd's files and sockets are unless told otherwise; guardd and
//! guardctl share these defaults.

/// Where guardd serves its local gRPC API (status, policy, sessions,
/// tickets) unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/guard/guard.sock";
/// Where guardd writes each session's last denials for its agent.
pub const DEFAULT_WHY_DIR: &str = "/run/guard/why";
/// Where guardd keeps the policy in force and the live sessions for the
/// next guardd.
pub const DEFAULT_STATE_FILE: &str = "/run/guard/state.json";
/// The host's signing key for checkpoints: it must outlive reboots.
pub const DEFAULT_SIGNING_KEY: &str = "/var/lib/guard/signing.key";
