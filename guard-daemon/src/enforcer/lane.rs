//! The ring buffers the programs write records to.

use guard_common::{Counter, map};

/// The ring buffers the programs write records to, each with its own loss
/// accounting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// Denials, would-denials and approved actions.
    Denials,
    /// Allowed actions of profiles that record them.
    Allowed,
}

impl Lane {
    /// Read in this order, so that a denial is written before the flood.
    pub const ALL: [Lane; 2] = [Lane::Denials, Lane::Allowed];

    pub fn map(self) -> &'static str {
        match self {
            Lane::Denials => map::DENIALS,
            Lane::Allowed => map::EVENTS,
        }
    }

    /// The kernel's count of records this lane had no room for.
    pub fn lost(self) -> Counter {
        match self {
            Lane::Denials => Counter::DenialsLost,
            Lane::Allowed => Counter::EventsLost,
        }
    }

    /// How many of [`Lane::lost`] loss lines have reported (kept with the
    /// programs for a guardd that adopts them).
    pub fn reported(self) -> Counter {
        match self {
            Lane::Denials => Counter::DenialLossesReported,
            Lane::Allowed => Counter::LossesReported,
        }
    }

    /// The loss stage of its loss lines.
    pub fn stage(self) -> &'static str {
        match self {
            Lane::Denials => "denials_ring_buffer",
            Lane::Allowed => "ring_buffer",
        }
    }
}
