//! Who sent a control or API request, from the socket's peer credentials.

use super::approvals;

/// A control request's caller, from the socket's peer credentials.
pub(super) struct Caller {
    pub(super) pid: i32,
    pub(super) uid: u32,
    /// Inside Guard's root (or not identifiable): may only start sub-agent
    /// sessions and read the status.
    pub(super) agent: bool,
}

impl Caller {
    /// The caller as the approver of a ticket.
    pub(super) fn approver(&self) -> approvals::Approver {
        approvals::Approver {
            pid: self.pid,
            uid: self.uid,
        }
    }
}
