//! What the hooks apply after a profile's rules: per-session budgets on
//! destroying files and on reaching new destinations, and approved tickets
//! that let one session do one denied thing to one object.

use aya_ebpf::helpers::generated;
use guard_common::{
    BUDGET_EXCEEDED, BudgetKey, BudgetState, DestinationKey, ExceptionKey, event_flag, mode,
    verdict,
};

use crate::{
    agent::Agent,
    decision::Decision,
    maps::{BUDGET_STATE, DESTINATIONS_SEEN, EXCEPTIONS},
};

const BPF_NOEXIST: u64 = 1;

fn now() -> u64 {
    // SAFETY: helper call without arguments.
    unsafe { generated::bpf_ktime_get_boot_ns() }
}

/// Turns a denial by a rule into an allowed action when the session holds an
/// approved ticket for `key`'s object. A one-use ticket is removed by the
/// action that uses it: of two racing attempts, only the one whose removal
/// succeeds goes ahead. Defaults, budgets and self-protection are not
/// approvable.
#[inline(always)]
pub fn approve(decision: &mut Decision, key: &ExceptionKey) {
    if decision.verdict == verdict::ALLOW || decision.rule_id >= BUDGET_EXCEEDED {
        return;
    }
    // SAFETY: the value is a plain Copy struct, copied out at once.
    let Some(exception) = (unsafe { EXCEPTIONS.get(key) }).copied() else {
        return;
    };
    if now() > exception.expires_ns || (exception.once != 0 && EXCEPTIONS.remove(key).is_err()) {
        return;
    }
    decision.verdict = verdict::ALLOW;
    decision.flags |= event_flag::APPROVED;
    decision.detail = exception.ticket;
}

/// Whether a decision spends budget: allowed, and not by an approved
/// ticket (a human allowed that one).
fn spends(decision: &Decision) -> bool {
    decision.verdict == verdict::ALLOW && decision.flags & event_flag::APPROVED == 0
}

/// Spends one operation of the session's budget `which` on an allowed
/// action; when the budget is exhausted, the decision becomes a denial by
/// [`BUDGET_EXCEEDED`] that says how much the budget allowed. A token bucket
/// kept as a theoretical arrival time (GCRA): the bucket refills one
/// operation per `interval_ns`. Two CPUs spending at the same instant may
/// both read the same state, so a burst can overrun by one per CPU.
#[inline(always)]
pub fn spend(agent: &Agent, decision: &mut Decision, which: usize) {
    let Some(budget) = agent.entry.budgets.get(which).copied() else {
        return;
    };
    if budget.window_ns == 0 || !spends(decision) {
        return;
    }
    let key = BudgetKey {
        cgroup: agent.cgroup,
        budget: which as u32,
        _pad: 0,
    };
    let state = match BUDGET_STATE.get_ptr_mut(&key) {
        Some(state) => state,
        None => {
            let _ = BUDGET_STATE.insert(&key, &BudgetState::default(), BPF_NOEXIST);
            match BUDGET_STATE.get_ptr_mut(&key) {
                Some(state) => state,
                // The map is sized for every session; a full map cannot
                // happen, and would leave the budget unenforced.
                None => return,
            }
        }
    };
    // SAFETY: a map value, read and written as plain data.
    let state = unsafe { &mut *state };
    let now = now();
    let tat = if state.tat_ns > now {
        state.tat_ns
    } else {
        now
    } + budget.interval_ns;
    if tat - now > budget.window_ns {
        decision.verdict = if agent.entry.mode == mode::MONITOR {
            verdict::WOULD_DENY
        } else {
            verdict::DENY
        };
        decision.rule_id = BUDGET_EXCEEDED;
        decision.detail = state.spent as u32;
        return;
    }
    state.tat_ns = tat;
    state.spent += 1;
}

/// [`spend`] on the destinations budget, for a destination the session has
/// not reached before (remembered once allowed).
#[inline(always)]
pub fn spend_on_destination(agent: &Agent, decision: &mut Decision, addr: [u8; 16]) {
    let budget = guard_common::budget::DESTINATIONS;
    if agent.entry.budgets[budget].window_ns == 0 || !spends(decision) {
        return;
    }
    let key = DestinationKey {
        cgroup: agent.cgroup,
        addr,
    };
    // SAFETY: only presence is read.
    if unsafe { DESTINATIONS_SEEN.get(&key) }.is_some() {
        return;
    }
    spend(agent, decision, budget);
    if decision.verdict == verdict::ALLOW {
        let _ = DESTINATIONS_SEEN.insert(&key, &1, 0);
    }
}
