//! The store's decisions, written once and pure: no IO, no async, no database types.
//!
//! Each store gathers the facts a decision needs (one SQLite transaction's reads; one DynamoDB
//! read, a guess from the device shadow, or a cancelled transaction's old items), calls the
//! decision, and persists what it returns:
//!
//! - [`decide_pay`]: a pay's answer, in one declared precedence order, and the session it opens;
//!   [`PayFingerprint`] / [`PayCommand::is_retry_of`](crate::PayCommand::is_retry_of) say what
//!   makes a pay a retry.
//! - [`check_call`]: a machine request's key version (only the device's registered one), then
//!   [`check_seq`]: its sequence number — fresh, a retry, or replayed.
//! - [`decide_session_op`]: a start's, press's or report's result and what it changes (lazy
//!   expiry and timeout, the late-report rule).
//! - [`decide_top_up`]: a top-up's answer (a retry, the lifetime money bound) and its credit.
//! - [`AuditTally`]: the reconciliation totals, with checked arithmetic.
//! - [`decide_refund`], [`decide_close`], [`decide_problem`], [`decide_dismiss`]: the back
//!   office's refunds (bounded by the session's capture), hand closes and problem reports.

mod audit;
mod close;
mod device_op;
mod pay;
mod problem;
mod refund;
mod seq;
mod top_up;

pub use audit::AuditTally;
pub use close::{CloseDecision, decide_close};
pub use device_op::{
    SessionChange, SessionOpDecision, SessionOpFacts, decide_session_op, needs_wallet,
};
pub use pay::{NewPay, PayDecision, PayFacts, PayFingerprint, PriorPay, decide_pay};
pub use problem::{DismissDecision, ProblemDecision, decide_dismiss, decide_problem};
pub use refund::{NewRefund, RefundDecision, RefundFacts, decide_refund, refund_fingerprint};
pub use seq::{LastCall, SeqCheck, check_call, check_seq};
pub use top_up::{NewTopUp, TopUpDecision, TopUpFacts, decide_top_up, top_up_fingerprint};
