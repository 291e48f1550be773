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
//! - [`decide_device_update`]: an operator's change to a machine (DECOMMISSIONED is terminal).
//! - [`decide_revoke`], [`decide_rotate`], [`rotation_completes`]: a device key's revocation and
//!   rotation (docs/protocol.md §1.1).
//! - [`AuditTally`]: the reconciliation totals, with checked arithmetic.
//! - [`sales_report`]: the sales report per machine per UTC day, from [`crate::SalesFacts`].
//! - [`decide_refund`], [`decide_close`], [`decide_problem`], [`decide_dismiss`]: the back
//!   office's refunds (bounded by the session's capture), hand closes and problem reports.
//! - [`decide_start_topup`], [`decide_provider_event`], [`decide_topup_refund`] and the reversal
//!   rule [`reversal_target`] / [`settle_reversal`]: users' own top-ups through a payment
//!   provider, applied at most once per notification (docs/topups.md).

mod audit;
mod close;
mod device_admin;
mod device_op;
mod keys;
mod operators;
mod pay;
mod problem;
mod provider;
mod refund;
mod report;
mod seq;
mod top_up;

pub use audit::AuditTally;
pub use close::{CloseDecision, decide_close};
pub use device_admin::{DeviceUpdateDecision, decide_device_update};
pub use device_op::{
    SessionChange, SessionOpDecision, SessionOpFacts, decide_session_op, needs_wallet,
};
pub use operators::{
    CreateOperatorDecision, RevokeOperatorDecision, decide_create_operator, decide_revoke_operator,
};

pub use keys::{
    RevokeDecision, RotateDecision, completed, decide_revoke, decide_rotate, rotation_completes,
    rotation_epoch,
};
pub use pay::{NewPay, PayDecision, PayFacts, PayFingerprint, PriorPay, decide_pay};
pub use problem::{DismissDecision, ProblemDecision, decide_dismiss, decide_problem};
pub use provider::{
    AppliedEvent, NewTopUpRefund, ProviderEventDecision, ProviderEventFacts, StartTopUpDecision,
    TopUpRefundDecision, TopUpRefundFacts, decide_provider_event, decide_start_topup,
    decide_topup_refund, reversal_target, settle_reversal,
};
pub use refund::{NewRefund, RefundDecision, RefundFacts, decide_refund, refund_fingerprint};
pub use report::{DAY_SECS, SalesRow, sales_report, sales_totals};
pub use seq::{LastCall, SeqCheck, check_call, check_seq};
pub use top_up::{NewTopUp, TopUpDecision, TopUpFacts, decide_top_up, top_up_fingerprint};
