//! # blepay-store — where state lives
//!
//! [`Store`] is the one storage trait: each method is one *business operation* executed
//! atomically (one SQLite transaction; one DynamoDB `TransactWriteItems`), returning a domain
//! outcome. Refusals ("device busy", "advert used", "insufficient funds") are outcome values, not
//! errors; [`StoreError`] is only for the unexpected (IO, corruption) and is retryable or fatal.
//!
//! The decisions both stores share are here, pure ([`decide`]): what a pay answers and opens, the
//! sequence-number check, a start's or report's outcome, the audit's totals. An implementation
//! gathers the facts, calls the decision and persists what it returns.
//!
//! Implementations live in their own crates: `blepay-sqlite` (embedded, the default) and
//! `blepay-dynamodb`. The conformance suite (`conformance`, behind the `conformance` feature)
//! holds the tests every implementation must pass; `conformance_tests!` turns them into one
//! `#[tokio::test]` each.
//!
//! Must not depend on: a database driver (rusqlite, the AWS SDK), HTTP, gRPC, protobuf or the
//! advert MAC (callers verify adverts and frames before they get here).

pub mod closed;
#[cfg(feature = "conformance")]
pub mod conformance;
mod console;
pub mod decide;
mod fleet;
mod lists;
mod model;
mod operators;
mod refunds;
mod topups;

pub use console::*;
pub use fleet::*;
pub use refunds::*;
pub use topups::*;

pub use lists::*;
pub use model::*;
pub use operators::*;

use std::sync::Arc;

use async_trait::async_trait;
use blepay_core::{Amount, DeviceId, IdempotencyKey, Session, SessionId, UserId, Wallet};

/// Unexpected storage failures. Business refusals are outcomes, never this.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Temporary: contention, throttling, a lost connection. The operation changed nothing and may
    /// be retried.
    #[error("storage temporarily unavailable: {0}")]
    Unavailable(String),
    /// Stored data that does not parse back into domain types.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("storage failure: {0}")]
    Internal(String),
}

/// The storage contract shared by the SQLite and DynamoDB implementations.
///
/// Every method takes `now` (unix seconds) from the caller; sessions whose start deadline has passed
/// are expired (hold released) by any operation that reads them, so a read after the deadline already
/// shows EXPIRED even if the sweeper has not run.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Register a machine. An existing id is [`RegisterOutcome::Exists`], and changes nothing.
    async fn register_device(
        &self,
        device: &DeviceRecord,
        now: u64,
    ) -> Result<RegisterOutcome, StoreError>;

    /// A machine's record and live state (last authenticated message, open session).
    async fn device_status(
        &self,
        id: DeviceId,
        now: u64,
    ) -> Result<Option<DeviceStatus>, StoreError>;

    /// The machine as this store last knew it, without a read when it can (DynamoDB: its device
    /// shadow), else [`device_status`](Self::device_status). Only for checking an advert's tag
    /// just before [`pay`](Self::pay): pay conditions its write on the key state (not revoked,
    /// the advert's epoch accepted) and on everything else it decides from, so a stale answer
    /// here can make a pay be refused ([`PayOutcome::KeyRefused`]) but never accepted. A caller
    /// whose tag does not verify under it reads with `device_status` before refusing.
    async fn device_known(
        &self,
        id: DeviceId,
        now: u64,
    ) -> Result<Option<DeviceStatus>, StoreError> {
        self.device_status(id, now).await
    }

    /// Credit `amount` to `user`; `actor` (the operator's principal) is written on the ledger
    /// row. The same `key` again credits nothing and returns the wallet.
    async fn top_up(
        &self,
        user: &UserId,
        amount: Amount,
        key: &IdempotencyKey,
        actor: &str,
        now: u64,
    ) -> Result<TopUpOutcome, StoreError>;

    /// A user's wallet (all zero when it never existed).
    async fn wallet(&self, user: &UserId, now: u64) -> Result<Wallet, StoreError>;

    /// Hold `max_amount` and open an AUTHORIZED session, atomically, or refuse and change nothing.
    async fn pay(&self, cmd: &PayCommand) -> Result<PayOutcome, StoreError>;

    /// The session a user's earlier pay with `key` created, if any (for retries with a stale advert).
    async fn find_pay(
        &self,
        user: &UserId,
        key: &IdempotencyKey,
        now: u64,
    ) -> Result<Option<Session>, StoreError>;

    /// One session, expired first if its deadline passed.
    async fn session(&self, id: SessionId, now: u64) -> Result<Option<Session>, StoreError>;

    /// Run one authenticated machine request: the sequence-number check, the operation, and saving the
    /// answer `encode` produces, atomically (SQLite calls `encode` inside its transaction). A retry
    /// (same seq, same digest) returns the saved answer without running the operation again.
    async fn device_call(
        &self,
        call: &DeviceCall,
        encode: ResponseEncoder,
    ) -> Result<DeviceCallOutcome, StoreError>;

    /// Expire every AUTHORIZED session whose start deadline is `<= now`, releasing its hold.
    /// Returns the sessions it expired, as saved (EXPIRED, their whole hold released), for the
    /// caller to count. Every store logs each session it expires, here or on the way, with
    /// [`closed::log_expired`] once the close is durable (and [`closed::log_timed_out`] for
    /// timeouts). A session some other operation expired first (any read or write
    /// that finds an overdue AUTHORIZED session expires it on the way) is not among them.
    async fn expire_due(&self, now: u64) -> Result<Vec<Session>, StoreError>;

    /// Close by timeout every ACTIVE session whose report deadline
    /// ([`Session::report_deadline`]) is `<= now`: SETTLED at its last reported units, the rest of
    /// the hold released, the machine freed. Returns the sessions it closed, as saved (`amount`
    /// captured, `hold - amount` released).
    async fn time_out_active(
        &self,
        now: u64,
        active_timeout_secs: u64,
    ) -> Result<Vec<Session>, StoreError>;

    /// Totals for reconciliation: the ledger, the wallets, the open holds and every session's
    /// refunds against its capture.
    async fn audit(&self) -> Result<Audit, StoreError>;

    // --- Operators and the audit trail (docs/api.md "Operators and roles") ---

    /// Create an operator, once per (creator, idempotency key): the same key with the same name
    /// and role answers the operator created first; with another, [`CreateOperatorOutcome::KeyReused`].
    async fn create_operator(&self, new: &NewOperator)
    -> Result<CreateOperatorOutcome, StoreError>;

    /// One operator, revoked or not (the credential check reads it on every request).
    async fn operator(&self, id: &OperatorId) -> Result<Option<OperatorRecord>, StoreError>;

    /// Every operator, revoked ones included, by creation time then id.
    async fn operators(&self) -> Result<Vec<OperatorRecord>, StoreError>;

    /// Revoke an operator at `now`: its token is refused from then on.
    async fn revoke_operator(
        &self,
        id: &OperatorId,
        now: u64,
    ) -> Result<RevokeOperatorOutcome, StoreError>;

    /// Record an audit event; one whose id is already recorded changes nothing. Returns whether
    /// it was new.
    async fn record_audit_event(&self, event: &AuditEvent) -> Result<bool, StoreError>;

    /// Audit events matching `filter`, newest first (by `at`, then `id`, descending), one page.
    async fn audit_events(
        &self,
        filter: &AuditFilter,
        page: &PageRequest,
    ) -> Result<Page<AuditEvent>, StoreError>;

    // --- The operator console (its sign-in sessions; a machine's telemetry history) ---

    /// Save a new console session. Answers `true` when saved; `false` when a session with this
    /// `id_hash` exists already, which is left as it is (hashes of 256-bit random secrets do not
    /// collide: a caller may treat `false` as an internal error). Records expired more than
    /// [`CONSOLE_SESSION_GRACE_SECS`] before `s.created_at` may be deleted on the way.
    async fn create_console_session(&self, s: &ConsoleSession) -> Result<bool, StoreError>;

    /// The session whose id is `id_hash`, if any: ended and expired ones included (the caller
    /// decides with [`ConsoleSession::is_live`]); one expired more than
    /// [`CONSOLE_SESSION_GRACE_SECS`] ago may be gone.
    async fn console_session(
        &self,
        id_hash: &[u8; 32],
    ) -> Result<Option<ConsoleSession>, StoreError>;

    /// End a console session at `now` (sign-out): `true` when it was not ended yet (expired or
    /// not), `false` when it was ended already or is unknown (nothing changes).
    async fn end_console_session(&self, id_hash: &[u8; 32], now: u64) -> Result<bool, StoreError>;

    /// `device`'s telemetry samples (one per fresh heartbeat) with `from <= at < to`, oldest
    /// first (by `at`, then the order they were received), at most `limit`: the newest `limit`
    /// when more match. Samples are kept [`TELEMETRY_HISTORY_SECS`]; older ones may be gone (or,
    /// on DynamoDB, linger until its TTL sweeper deletes them).
    async fn telemetry_history(
        &self,
        device: DeviceId,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<TelemetrySample>, StoreError>;
    /// One page of the fleet, sorted by device id ([`ListPosition::id`] is the device id in
    /// hex, `at` is 0), only the machines `filter` matches.
    async fn list_devices(
        &self,
        filter: &DeviceFilter,
        page: &PageRequest,
        now: u64,
    ) -> Result<Page<DeviceStatus>, StoreError>;

    /// Apply an operator's change to a machine, as [`decide::decide_device_update`] decides it,
    /// atomically (a concurrent change is not lost).
    async fn update_device(
        &self,
        id: DeviceId,
        update: &DeviceUpdate,
        now: u64,
    ) -> Result<DeviceUpdateOutcome, StoreError>;

    /// A user's cap override and their spending of the current UTC day ([`Spending`]).
    async fn spending(&self, user: &UserId, now: u64) -> Result<Spending, StoreError>;

    /// Set (`Some`, `0` = no cap for this user) or clear (`None`: the deployment default applies)
    /// a user's daily cap override; answers the spending after.
    async fn set_spending_limit(
        &self,
        user: &UserId,
        limit: Option<Amount>,
        now: u64,
    ) -> Result<Spending, StoreError>;
    /// Sessions matching `filter`, newest first ([`SessionFilter`]), one page after
    /// `page.after`. Due AUTHORIZED sessions are expired first, so the status shown is current.
    async fn list_sessions(
        &self,
        filter: &SessionFilter,
        page: &PageRequest,
        now: u64,
    ) -> Result<Page<Session>, StoreError>;

    /// Every ledger entry touching `user` (their available or held account), newest first (by
    /// time, then entry id, descending), one page.
    async fn statement(
        &self,
        user: &UserId,
        page: &PageRequest,
    ) -> Result<Page<StatementEntry>, StoreError>;

    /// The sales report's facts over `[from, to)` (unix seconds): sessions created in it and
    /// refund entries made in it ([`SalesFacts`]).
    async fn sales_facts(&self, from: u64, to: u64) -> Result<SalesFacts, StoreError>;
    /// Revoke a device's key (`decide::decide_revoke`): from then on every advert and frame of it
    /// is refused as forged, and its open session is closed in the same operation (AUTHORIZED
    /// voided, ACTIVE settled at its last reported units). A revoked device is answered as it is.
    async fn revoke_device(
        &self,
        id: DeviceId,
        reason: &str,
        now: u64,
    ) -> Result<RevokeOutcome, StoreError>;

    /// A device's record as stored (its key state included), without expiring anything: what a
    /// machine request's tag is checked against before the request runs.
    async fn device_record(&self, id: DeviceId) -> Result<Option<DeviceRecord>, StoreError>;

    /// Issue a new key epoch for a device (`decide::decide_rotate`), pending until the first
    /// frame under it.
    async fn rotate_device_key(
        &self,
        id: DeviceId,
        key: &IdempotencyKey,
        now: u64,
    ) -> Result<RotateOutcome, StoreError>;
    /// Refund part of a SETTLED session's capture to its user's available balance
    /// ([`decide::decide_refund`]), resolving the session's open problem; one atomic write
    /// conditioned on the session's refunded total and the key.
    async fn refund(&self, cmd: &RefundCommand) -> Result<RefundOutcome, StoreError>;

    /// Close a session by hand ([`decide::decide_close`]): void an AUTHORIZED one, settle an
    /// ACTIVE one at its last reported units; the machine is freed.
    async fn close_session(&self, cmd: &CloseCommand) -> Result<CloseOutcome, StoreError>;

    /// A user reports a problem with their own session ([`decide::decide_problem`]).
    async fn report_problem(&self, cmd: &ProblemCommand) -> Result<ProblemOutcome, StoreError>;

    /// Open problems, oldest first (by creation time, then id: [`ListPosition`] `at` is the
    /// creation time, `id` the problem id in hex).
    async fn open_problems(&self, page: &PageRequest) -> Result<Page<Problem>, StoreError>;

    /// Dismiss a problem ([`decide::decide_dismiss`]).
    async fn dismiss_problem(&self, cmd: &DismissCommand) -> Result<DismissOutcome, StoreError>;

    // --- Users' top-ups through a payment provider (issue 12, docs/topups.md) ---

    /// Create a PENDING top-up once per (user, key) ([`decide::decide_start_topup`]).
    async fn start_topup(&self, cmd: &NewProviderTopUp) -> Result<StartTopUpOutcome, StoreError>;

    /// Record the provider's payment object on a top-up (its id, and the client secret the app
    /// needs again on a retry); from then on [`TopUpLocator::ProviderRef`] finds it. Setting the
    /// same values again changes nothing; `None` when there is no such top-up.
    async fn attach_topup_ref(
        &self,
        id: TopUpId,
        provider_ref: &str,
        client_secret: Option<&str>,
        now: u64,
    ) -> Result<Option<ProviderTopUp>, StoreError>;

    /// One top-up.
    async fn topup(&self, id: TopUpId) -> Result<Option<ProviderTopUp>, StoreError>;

    /// The top-up a notification's [`TopUpLocator`] names, when it exists and is that
    /// provider's (an id of the other provider's top-up finds nothing).
    async fn find_topup(&self, locator: &TopUpLocator)
    -> Result<Option<ProviderTopUp>, StoreError>;

    /// Apply a verified notification ([`decide::decide_provider_event`]): the event key is
    /// recorded in the same atomic write as the credit or debit it causes, so each event moves
    /// money at most once however often, concurrently or out of order it arrives.
    async fn apply_provider_event(
        &self,
        event: &ProviderEvent,
    ) -> Result<ProviderEventOutcome, StoreError>;

    /// An operator's refund of a top-up ([`decide::decide_topup_refund`]): taken from the wallet
    /// at once, in the same atomic write as the REQUESTED refund.
    async fn request_topup_refund(
        &self,
        cmd: &TopUpRefundCommand,
    ) -> Result<TopUpRefundOutcome, StoreError>;

    /// A top-up's refunds, oldest first.
    async fn topup_refunds(&self, topup: TopUpId) -> Result<Vec<TopUpRefund>, StoreError>;

    /// Top-ups matching `filter`, newest first (by creation time, then id, descending:
    /// [`ListPosition`] `at` is the creation time, `id` the top-up id in hex), one page.
    async fn list_topups(
        &self,
        filter: &TopUpFilter,
        page: &PageRequest,
    ) -> Result<Page<ProviderTopUp>, StoreError>;
}

/// Turns a device operation's result into the answer to save and send (the frame and its refusal
/// code). Owned, so a store can call it on another thread.
pub type ResponseEncoder = Arc<dyn Fn(&DeviceOpResult) -> SavedAnswer + Send + Sync>;
