//! An operator closes a session by hand (issue 11, item 2).

use blepay_core::{OperatorClose, Session, Settlement};

use crate::CloseOutcome;

/// What a close decided: what to persist and the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseDecision {
    pub outcome: CloseOutcome,
    /// The session was overdue and closed first by the usual rule (expired, or timed out), as
    /// any read would: save it and apply the settlement (actor: the system, none).
    pub overdue: Option<(Session, Settlement)>,
    /// Closed by the operator now: save the session, apply the settlement (ledger rows naming
    /// the operator); the machine is free.
    pub closed: Option<(Session, Settlement)>,
}

/// Close `session` (as stored) by hand at `now`: an overdue one is first expired or timed out
/// (then it is [`CloseOutcome::ClosedOtherwise`]); an AUTHORIZED one is voided, an ACTIVE one
/// settled at its last reported units ([`Session::close_by_operator`]); closing again is
/// [`CloseOutcome::AlreadyClosed`].
pub fn decide_close(session: Option<Session>, now: u64, active_timeout_secs: u64) -> CloseDecision {
    let Some(mut s) = session else {
        return CloseDecision {
            outcome: CloseOutcome::SessionNotFound,
            overdue: None,
            closed: None,
        };
    };
    let overdue = s
        .expire(now)
        .or_else(|| s.time_out(now, active_timeout_secs))
        .map(|settlement| (s.clone(), settlement));
    let (outcome, closed) = match s.close_by_operator(now) {
        OperatorClose::Closed(settlement) => {
            (CloseOutcome::Closed(s.clone()), Some((s, settlement)))
        }
        OperatorClose::AlreadyClosed => (CloseOutcome::AlreadyClosed(s), None),
        OperatorClose::ClosedOtherwise => (CloseOutcome::ClosedOtherwise(s), None),
    };
    CloseDecision {
        outcome,
        overdue,
        closed,
    }
}
