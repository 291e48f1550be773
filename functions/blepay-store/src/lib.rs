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

#[cfg(feature = "conformance")]
pub mod conformance;
pub mod decide;
mod model;

pub use model::*;

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

    /// Credit `amount` to `user`. The same `key` again credits nothing and returns the wallet.
    async fn top_up(
        &self,
        user: &UserId,
        amount: Amount,
        key: &IdempotencyKey,
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
    /// Returns how many were expired.
    async fn expire_due(&self, now: u64) -> Result<usize, StoreError>;

    /// Close by timeout every ACTIVE session whose report deadline
    /// ([`Session::report_deadline`]) is `<= now`: SETTLED at its last reported units, the rest of
    /// the hold released, the machine freed. Returns how many were closed.
    async fn time_out_active(
        &self,
        now: u64,
        active_timeout_secs: u64,
    ) -> Result<usize, StoreError>;

    /// Totals for reconciliation: the ledger, the wallets and the open holds.
    async fn audit(&self) -> Result<Audit, StoreError>;

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
}

/// Turns a device operation's result into the answer to save and send (the frame and its refusal
/// code). Owned, so a store can call it on another thread.
pub type ResponseEncoder = Arc<dyn Fn(&DeviceOpResult) -> SavedAnswer + Send + Sync>;
