//! The operator's back office (issue 11, items 1–3): refunds, closing a session by hand, and the
//! users' problem reports. The handlers (`impl App`) and their HTTP routes; the gRPC methods are
//! in `grpc.rs`. The rules are the store's (`blepay_store::decide::{decide_refund, decide_close,
//! decide_problem, decide_dismiss}`).

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use blepay_core::{Amount, IdempotencyKey, SessionId, UserId};
use blepay_proto::pb::v1 as pb;
use blepay_store::{
    CloseCommand, CloseOutcome, DismissCommand, DismissOutcome, Problem, ProblemCommand, ProblemId,
    ProblemOutcome, Reason, RefundCommand, RefundOutcome, ResolutionKind,
};

use crate::app::{App, key_reused, secs, session_not_found, session_pb};
use crate::error::{ApiError, ErrorCode};
use crate::http::{Format, OpsCaller, PhoneUser, Reply, Wire};
use crate::operator::{Action, ActionRecord, Operator};
use crate::page::{encode_cursor, page_request};

fn reason(s: &str) -> Result<Reason, ApiError> {
    Reason::parse(s).map_err(|e| ApiError::invalid(format!("reason: {e}")))
}

fn session_id(s: &str) -> Result<SessionId, ApiError> {
    SessionId::parse(s).map_err(|e| ApiError::invalid(format!("sessionId: {e}")))
}

fn problem_not_found() -> ApiError {
    ApiError::new(ErrorCode::ProblemNotFound, "no such problem")
}

/// A problem as the API shows it.
pub fn problem_pb(p: &Problem) -> pb::Problem {
    let status = match p.resolution.as_ref().map(|r| r.kind) {
        None => pb::ProblemStatus::ProblemOpen,
        Some(ResolutionKind::Dismissed) => pb::ProblemStatus::ProblemDismissed,
        Some(ResolutionKind::Refunded) => pb::ProblemStatus::ProblemRefunded,
    };
    pb::Problem {
        problem_id: p.id.to_string(),
        session_id: p.session.to_string(),
        user_id: p.user.to_string(),
        reason: p.reason.as_str().to_owned(),
        created_at: secs(p.created_at),
        status: status as i32,
        resolved_at: p.resolution.as_ref().map_or(0, |r| secs(r.at)),
        resolved_by: p
            .resolution
            .as_ref()
            .map(|r| r.by.clone())
            .unwrap_or_default(),
        resolution_reason: p
            .resolution
            .as_ref()
            .map(|r| r.reason.as_str().to_owned())
            .unwrap_or_default(),
    }
}

impl App {
    /// Refund part of a SETTLED session's capture to its user's available balance, once per
    /// (session, idempotency key); resolves the session's open problem.
    ///
    /// # Errors
    /// FORBIDDEN (a support operator above the refund cap), INVALID_ARGUMENT, SESSION_NOT_FOUND,
    /// IDEMPOTENCY_KEY_REUSED, REFUND_EXCEEDS_CAPTURE (more than is left of its capture, or a
    /// session that is not SETTLED: nothing captured yet).
    pub async fn refund_session(
        &self,
        op: &Operator,
        req: pb::RefundRequest,
    ) -> Result<pb::Session, ApiError> {
        let amount =
            Amount::positive(req.amount).map_err(|e| ApiError::invalid(format!("amount: {e}")))?;
        self.authorize(op, &Action::Refund { amount })?;
        let session = session_id(&req.session_id)?;
        let key = IdempotencyKey::parse(&req.idempotency_key)
            .map_err(|e| ApiError::invalid(format!("idempotencyKey: {e}")))?;
        let cmd = RefundCommand {
            session,
            amount,
            reason: reason(&req.reason)?,
            key: key.clone(),
            actor: op.principal.clone(),
            now: self.now(),
        };
        match self.store().refund(&cmd).await? {
            RefundOutcome::Refunded { session: s, .. } => {
                tracing::info!(session = %s.id, amount = %amount, principal = %op.principal, "session refunded");
                self.metrics().session_refunded();
                self.record_action(
                    op,
                    ActionRecord {
                        action: "session.refund",
                        target: s.id.to_string(),
                        amount: Some(amount),
                        idempotency_key: Some(key.to_string()),
                    },
                )
                .await?;
                Ok(session_pb(&s))
            }
            RefundOutcome::Replayed { session: s, .. } => Ok(session_pb(&s)),
            RefundOutcome::KeyReused => Err(key_reused()),
            RefundOutcome::ExceedsCapture { refundable } => Err(ApiError::new(
                ErrorCode::RefundExceedsCapture,
                format!("the session's refunds would exceed its capture: {refundable} left"),
            )),
            RefundOutcome::NotSettled => Err(ApiError::new(
                ErrorCode::RefundExceedsCapture,
                "the session is not settled: nothing was captured to refund",
            )),
            RefundOutcome::SessionNotFound => Err(session_not_found()),
        }
    }

    /// Close a session by hand: AUTHORIZED → voided (EXPIRED, hold released), ACTIVE → SETTLED
    /// at its last reported units; the machine is freed. Closing it so again answers the closed
    /// session.
    ///
    /// # Errors
    /// INVALID_ARGUMENT, SESSION_NOT_FOUND, SESSION_CLOSED (closed by a report, timeout or expiry).
    pub async fn close_session(
        &self,
        op: &Operator,
        req: pb::CloseSessionRequest,
    ) -> Result<pb::Session, ApiError> {
        self.authorize(op, &Action::CloseSession)?;
        let cmd = CloseCommand {
            session: session_id(&req.session_id)?,
            reason: reason(&req.reason)?,
            actor: op.principal.clone(),
            now: self.now(),
            active_timeout_secs: self.config().active_timeout_secs,
        };
        match self.store().close_session(&cmd).await? {
            CloseOutcome::Closed(s) => {
                tracing::info!(session = %s.id, device = %s.device_id, user = %s.user_id, status = s.status.as_str(), captured = %s.amount, principal = %op.principal, reason = cmd.reason.as_str(), "session closed by an operator");
                self.record_action(
                    op,
                    ActionRecord {
                        action: "session.close",
                        target: s.id.to_string(),
                        amount: Some(s.amount),
                        idempotency_key: None,
                    },
                )
                .await?;
                Ok(session_pb(&s))
            }
            CloseOutcome::AlreadyClosed(s) => Ok(session_pb(&s)),
            CloseOutcome::ClosedOtherwise(s) => Err(ApiError::new(
                ErrorCode::SessionClosed,
                format!("the session is already {}", s.status.as_str()),
            )),
            CloseOutcome::SessionNotFound => Err(session_not_found()),
        }
    }

    /// A user reports a problem with their own session; a repeat while it is open answers the
    /// open one.
    ///
    /// # Errors
    /// INVALID_ARGUMENT, SESSION_NOT_FOUND (also for another user's session).
    pub async fn report_problem(
        &self,
        user: &UserId,
        req: pb::ReportProblemRequest,
    ) -> Result<pb::Problem, ApiError> {
        let cmd = ProblemCommand {
            user: user.clone(),
            session: session_id(&req.session_id)?,
            reason: reason(&req.reason)?,
            id: ProblemId::from_bytes(rand::random()),
            now: self.now(),
        };
        match self.store().report_problem(&cmd).await? {
            ProblemOutcome::Opened(p) => {
                tracing::info!(problem = %p.id, session = %p.session, "problem reported");
                Ok(problem_pb(&p))
            }
            ProblemOutcome::Existing(p) => Ok(problem_pb(&p)),
            ProblemOutcome::SessionNotFound => Err(session_not_found()),
        }
    }

    /// Open problems, oldest first, a page at a time.
    ///
    /// # Errors
    /// FORBIDDEN, INVALID_ARGUMENT (`limit`, `cursor`).
    pub async fn list_problems(
        &self,
        op: &Operator,
        req: pb::ListProblemsRequest,
    ) -> Result<pb::ProblemList, ApiError> {
        self.authorize(op, &Action::ReadMoney)?;
        let limit = (req.limit != 0).then_some(req.limit);
        let page = page_request(limit, Some(&req.cursor))?;
        let page = self.store().open_problems(&page).await?;
        Ok(pb::ProblemList {
            problems: page.items.iter().map(problem_pb).collect(),
            next_cursor: page.next.as_ref().map(encode_cursor).unwrap_or_default(),
        })
    }

    /// Dismiss a problem; dismissing a resolved one answers it as it is.
    ///
    /// # Errors
    /// FORBIDDEN, INVALID_ARGUMENT, PROBLEM_NOT_FOUND.
    pub async fn dismiss_problem(
        &self,
        op: &Operator,
        req: pb::DismissProblemRequest,
    ) -> Result<pb::Problem, ApiError> {
        self.authorize(op, &Action::ResolveProblem)?;
        let id = ProblemId::parse(&req.problem_id)
            .map_err(|_| ApiError::invalid("problemId: must be 32 hex characters"))?;
        let cmd = DismissCommand {
            id,
            reason: reason(&req.reason)?,
            actor: op.principal.clone(),
            now: self.now(),
        };
        match self.store().dismiss_problem(&cmd).await? {
            DismissOutcome::Dismissed(p) => {
                self.record_action(
                    op,
                    ActionRecord {
                        action: "problem.dismiss",
                        target: p.id.to_string(),
                        amount: None,
                        idempotency_key: None,
                    },
                )
                .await?;
                Ok(problem_pb(&p))
            }
            DismissOutcome::AlreadyResolved(p) => Ok(problem_pb(&p)),
            DismissOutcome::NotFound => Err(problem_not_found()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

/// The phone's back-office routes.
pub(crate) fn phone_routes(router: Router<App>) -> Router<App> {
    router.route("/v1/sessions/{session_id}/problem", post(report_problem))
}

/// The operators' back-office routes.
pub(crate) fn ops_routes(router: Router<App>) -> Router<App> {
    router
        .route("/v1/ops/sessions/{session_id}/refund", post(refund))
        .route("/v1/ops/sessions/{session_id}/close", post(close))
        .route("/v1/ops/problems", get(list_problems))
        .route("/v1/ops/problems/{problem_id}/dismiss", post(dismiss))
}

async fn refund(
    State(app): State<App>,
    OpsCaller(op): OpsCaller,
    Path(session_id): Path<String>,
    Wire(body, f): Wire<pb::RefundRequest>,
) -> Result<Reply<pb::Session>, ApiError> {
    // The path names the session; a `sessionId` in the body, if any, is ignored.
    let req = pb::RefundRequest { session_id, ..body };
    Ok(Reply(app.refund_session(&op, req).await?, f))
}

async fn close(
    State(app): State<App>,
    OpsCaller(op): OpsCaller,
    Path(session_id): Path<String>,
    Wire(body, f): Wire<pb::CloseSessionRequest>,
) -> Result<Reply<pb::Session>, ApiError> {
    let req = pb::CloseSessionRequest { session_id, ..body };
    Ok(Reply(app.close_session(&op, req).await?, f))
}

async fn report_problem(
    State(app): State<App>,
    PhoneUser(user): PhoneUser,
    Path(session_id): Path<String>,
    Wire(body, f): Wire<pb::ReportProblemRequest>,
) -> Result<Reply<pb::Problem>, ApiError> {
    let req = pb::ReportProblemRequest { session_id, ..body };
    Ok(Reply(app.report_problem(&user, req).await?, f))
}

/// `?limit=N&cursor=C` of `GET /v1/ops/problems`.
#[derive(Debug, serde::Deserialize)]
pub struct ListQuery {
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

async fn list_problems(
    State(app): State<App>,
    OpsCaller(op): OpsCaller,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Result<Reply<pb::ProblemList>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid(format!("query: {e}")))?;
    let req = pb::ListProblemsRequest {
        limit: match q.limit {
            // 0 means the default in the message: refuse it here, as any limit out of range.
            Some(0) => return Err(ApiError::invalid("limit: must be 1..=500")),
            l => l.unwrap_or(0),
        },
        cursor: q.cursor.unwrap_or_default(),
    };
    Ok(Reply(
        app.list_problems(&op, req).await?,
        Format::of_accept(&headers),
    ))
}

async fn dismiss(
    State(app): State<App>,
    OpsCaller(op): OpsCaller,
    Path(problem_id): Path<String>,
    Wire(body, f): Wire<pb::DismissProblemRequest>,
) -> Result<Reply<pb::Problem>, ApiError> {
    let req = pb::DismissProblemRequest { problem_id, ..body };
    Ok(Reply(app.dismiss_problem(&op, req).await?, f))
}
