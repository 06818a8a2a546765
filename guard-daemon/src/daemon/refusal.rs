//! Why guardd did not do what a request asked. `services.rs` maps each kind
//! to its gRPC status, in one place.

/// A request guardd did not carry out.
#[derive(Debug, thiserror::Error)]
pub(super) enum Refusal {
    /// The request names something that is not so (an agent or profile the
    /// policy does not have, a bad label, a policy that does not validate).
    #[error("{0}")]
    Invalid(String),
    /// The request names a session or ticket guardd does not know.
    #[error("{0}")]
    NotFound(String),
    /// What the request expects no longer holds (a ticket that is not
    /// pending, a policy changed meanwhile).
    #[error("{0}")]
    Conflict(String),
    /// The caller may not ask this (an agent).
    #[error("{0}")]
    NotAllowed(String),
    /// guardd could not do it (the host refused, a file could not be written).
    #[error("{0}")]
    Failed(String),
}
