//! The back office's operations (issue 11): refunds, hand closes and problem reports, each inside
//! the caller's transaction — gather the facts, call the decision, persist what it returns.

use blepay_core::{SessionId, Wallet};
use blepay_store::decide::{
    DismissDecision, NewRefund, ProblemDecision, RefundDecision, RefundFacts, decide_close,
    decide_dismiss, decide_problem, decide_refund, refund_fingerprint,
};
use blepay_store::{
    CloseCommand, CloseOutcome, DismissCommand, DismissOutcome, ListPosition, Page, PageRequest,
    Problem, ProblemCommand, ProblemId, ProblemOutcome, Reason, RefundCommand, RefundOutcome,
    Resolution, ResolutionKind, StoreError,
};
use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::convert::{BadValue, Cached, db, parse_col, ts};
use crate::ops::{Due, close_hold_by, expire_sessions};
use crate::rows::{
    load_idempotency, load_session, load_wallet, save_idempotency, save_session_state, save_wallet,
    write_entry_by,
};

/// Refund keys are scoped per session (`decide/refund.rs`).
fn refund_scope(session: SessionId) -> String {
    format!("refund:{session}")
}

pub(crate) fn refund(c: &Connection, cmd: &RefundCommand) -> Result<RefundOutcome, StoreError> {
    expire_sessions(c, Due::Only(cmd.session), cmd.now)?;
    let session = load_session(c, cmd.session)?;
    let scope = refund_scope(cmd.session);
    let seen = load_idempotency(c, &scope, &cmd.key)?;
    let wallet = match &session {
        Some(s) => load_wallet(c, &s.user_id)?,
        None => Wallet::default(),
    };
    let facts = RefundFacts {
        cmd,
        session,
        prior: seen.as_ref().map(|s| s.fingerprint.as_str()),
        wallet,
        open_problem: load_open_problem(c, cmd.session)?,
    };
    let NewRefund {
        session,
        wallet,
        entry,
        resolved,
    } = match decide_refund(facts)? {
        RefundDecision::Answer(outcome) => return Ok(outcome),
        RefundDecision::Refund(new) => new,
    };
    save_session_state(c, &session)?;
    save_wallet(c, &session.user_id, &wallet)?;
    write_entry_by(c, &entry, cmd.now, Some(session.id), Some(&cmd.actor))?;
    save_idempotency(
        c,
        &scope,
        &cmd.key,
        &refund_fingerprint(cmd.amount),
        None,
        cmd.now,
    )?;
    if let Some(p) = &resolved {
        save_resolution(c, p)?;
    }
    Ok(RefundOutcome::Refunded { session, wallet })
}

pub(crate) fn close_session(
    c: &Connection,
    cmd: &CloseCommand,
) -> Result<CloseOutcome, StoreError> {
    let decision = decide_close(
        load_session(c, cmd.session)?,
        cmd.now,
        cmd.active_timeout_secs,
    );
    if let Some((s, settlement)) = &decision.overdue {
        save_session_state(c, s)?;
        close_hold_by(c, s, *settlement, cmd.now, None)?;
    }
    if let Some((s, settlement)) = &decision.closed {
        save_session_state(c, s)?;
        close_hold_by(c, s, *settlement, cmd.now, Some(&cmd.actor))?;
    }
    Ok(decision.outcome)
}

pub(crate) fn report_problem(
    c: &Connection,
    cmd: &ProblemCommand,
) -> Result<ProblemOutcome, StoreError> {
    expire_sessions(c, Due::Only(cmd.session), cmd.now)?;
    let session = load_session(c, cmd.session)?;
    let open = load_open_problem(c, cmd.session)?;
    match decide_problem(cmd, session.as_ref(), open) {
        ProblemDecision::Answer(outcome) => Ok(outcome),
        ProblemDecision::Open(p) => {
            c.exec_cached(
                "INSERT INTO problems (id, session_id, user_id, reason, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    p.id.as_bytes(),
                    p.session.as_bytes(),
                    p.user.as_str(),
                    p.reason.as_str(),
                    ts(p.created_at)?
                ],
            )
            .map_err(db)?;
            Ok(ProblemOutcome::Opened(p))
        }
    }
}

pub(crate) fn open_problems(
    c: &Connection,
    page: &PageRequest,
) -> Result<Page<Problem>, StoreError> {
    let (after_at, after_id) = match &page.after {
        Some(p) => (
            Some(ts(p.at)?),
            // A position this list did not issue sorts before every id (matches nothing odd).
            Some(ProblemId::parse(&p.id).map_or_else(|_| vec![], |id| id.as_bytes().to_vec())),
        ),
        None => (None, None),
    };
    let limit = i64::from(page.limit);
    let mut stmt = c
        .prepare_cached(&format!(
            "SELECT {PROBLEM_COLUMNS} FROM problems WHERE resolution IS NULL
             AND (?1 IS NULL OR created_at > ?1 OR (created_at = ?1 AND id > ?2))
             ORDER BY created_at, id LIMIT ?3"
        ))
        .map_err(db)?;
    let rows = stmt
        .query_map(params![after_at, after_id, limit + 1], problem_from_row)
        .map_err(db)?;
    let mut items = rows.collect::<Result<Vec<_>, _>>().map_err(db)?;
    let more = items.len() > usize::try_from(page.limit).unwrap_or(usize::MAX);
    items.truncate(usize::try_from(page.limit).unwrap_or(usize::MAX));
    let next = if more {
        items.last().map(|p| ListPosition {
            at: p.created_at,
            id: p.id.to_string(),
        })
    } else {
        None
    };
    Ok(Page { items, next })
}

pub(crate) fn dismiss_problem(
    c: &Connection,
    cmd: &DismissCommand,
) -> Result<DismissOutcome, StoreError> {
    let problem = c
        .row_cached(
            &format!("SELECT {PROBLEM_COLUMNS} FROM problems WHERE id = ?1"),
            [cmd.id.as_bytes()],
            problem_from_row,
        )
        .optional()
        .map_err(db)?;
    match decide_dismiss(cmd, problem) {
        DismissDecision::Answer(outcome) => Ok(outcome),
        DismissDecision::Dismiss(p) => {
            save_resolution(c, &p)?;
            Ok(DismissOutcome::Dismissed(p))
        }
    }
}

const PROBLEM_COLUMNS: &str = "id, session_id, user_id, reason, created_at, resolution, \
                               resolved_at, resolved_by, resolution_reason";

fn problem_from_row(r: &Row<'_>) -> rusqlite::Result<Problem> {
    let resolution = match r.get::<_, Option<String>>(5)? {
        None => None,
        Some(_) => Some(Resolution {
            kind: parse_col(r, 5, |s: String| {
                ResolutionKind::parse(&s).ok_or(BadValue("unknown problem resolution"))
            })?,
            at: r.get(6)?,
            by: r.get(7)?,
            reason: parse_col(r, 8, |s: String| Reason::parse(&s))?,
        }),
    };
    Ok(Problem {
        id: ProblemId::from_bytes(r.get(0)?),
        session: SessionId::from_bytes(r.get(1)?),
        user: parse_col(r, 2, |s: String| blepay_core::UserId::parse(&s))?,
        reason: parse_col(r, 3, |s: String| Reason::parse(&s))?,
        created_at: r.get(4)?,
        resolution,
    })
}

fn load_open_problem(c: &Connection, session: SessionId) -> Result<Option<Problem>, StoreError> {
    c.row_cached(
        &format!(
            "SELECT {PROBLEM_COLUMNS} FROM problems WHERE session_id = ?1 AND resolution IS NULL"
        ),
        [session.as_bytes()],
        problem_from_row,
    )
    .optional()
    .map_err(db)
}

fn save_resolution(c: &Connection, p: &Problem) -> Result<(), StoreError> {
    let Some(r) = &p.resolution else {
        return Ok(());
    };
    c.exec_cached(
        "UPDATE problems SET resolution = ?1, resolved_at = ?2, resolved_by = ?3,
                resolution_reason = ?4
         WHERE id = ?5",
        params![
            r.kind.as_str(),
            ts(r.at)?,
            r.by,
            r.reason.as_str(),
            p.id.as_bytes()
        ],
    )
    .map_err(db)?;
    Ok(())
}
