//! The users' problem reports: one open problem per session (issue 11, item 3).

use blepay_core::Session;

use crate::{
    DismissCommand, DismissOutcome, Problem, ProblemCommand, ProblemOutcome, Resolution,
    ResolutionKind,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProblemDecision {
    /// Save this new open problem.
    Open(Problem),
    Answer(ProblemOutcome),
}

/// A user's report on `session` (as stored), given the session's open problem if it has one:
/// another user's session is not found; an open problem is answered again (idempotent: one open
/// problem per session); otherwise a new one opens.
pub fn decide_problem(
    cmd: &ProblemCommand,
    session: Option<&Session>,
    open: Option<Problem>,
) -> ProblemDecision {
    if session.is_none_or(|s| s.user_id != cmd.user) {
        return ProblemDecision::Answer(ProblemOutcome::SessionNotFound);
    }
    if let Some(p) = open {
        return ProblemDecision::Answer(ProblemOutcome::Existing(p));
    }
    ProblemDecision::Open(Problem {
        id: cmd.id,
        session: cmd.session,
        user: cmd.user.clone(),
        reason: cmd.reason.clone(),
        created_at: cmd.now,
        resolution: None,
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DismissDecision {
    /// Save the problem, now resolved.
    Dismiss(Problem),
    Answer(DismissOutcome),
}

/// Dismiss `problem` (as stored): not found, already resolved (idempotent), or resolved now.
pub fn decide_dismiss(cmd: &DismissCommand, problem: Option<Problem>) -> DismissDecision {
    match problem {
        None => DismissDecision::Answer(DismissOutcome::NotFound),
        Some(p) if p.resolution.is_some() => {
            DismissDecision::Answer(DismissOutcome::AlreadyResolved(p))
        }
        Some(mut p) => {
            p.resolution = Some(Resolution {
                kind: ResolutionKind::Dismissed,
                at: cmd.now,
                by: cmd.actor.clone(),
                reason: cmd.reason.clone(),
            });
            DismissDecision::Dismiss(p)
        }
    }
}
