//! A policy generation: one compiled policy as the kernel enforces it,
//! numbered. Records name their rules and profiles from the generation that
//! decided.

use guard_policy::compile::CompiledPolicy;

/// One published policy.
pub struct Generation {
    pub number: u64,
    pub policy_sha256: String,
    /// The policy file's text.
    pub text: String,
    pub compiled: CompiledPolicy,
    /// RFC 3339.
    pub loaded: String,
}
