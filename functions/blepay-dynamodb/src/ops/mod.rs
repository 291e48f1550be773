//! The business operations: one read round trip, then one conditional write; each store method
//! retries whole attempts (`attempts.rs`). The decisions are `blepay_store::decide`'s: these
//! modules gather the facts, call them and write what they return as conditional updates.
//!
//! - `attempts.rs`: the retry loop and the single requests (transact, get, batch/transact get);
//! - `expiry.rs`: expiring overdue sessions and closing holds;
//! - `reads.rs`, `top_up.rs`, `pay.rs`, `device_call.rs`, `audit.rs`, `keys.rs` (revoke,
//!   rotate): one operation each.

mod attempts;
mod audit;
mod device_call;
mod expiry;
mod keys;
mod pay;
mod reads;
mod top_up;

use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use blepay_core::{
    Amount, DeviceId, IdempotencyKey, Session, SessionId, UserId, Wallet, WalletError,
};
use blepay_store::{
    Audit, DeviceCall, DeviceCallOutcome, DeviceRecord, DeviceStatus, PayCommand, PayOutcome,
    RegisterOutcome, ResponseEncoder, RevokeOutcome, RotateOutcome, Store, StoreError,
    TopUpOutcome,
};

use crate::DynamoStore;

/// A wallet rule refused an operation the store had already decided to make.
fn wallet_rule(e: WalletError) -> StoreError {
    StoreError::Internal(format!("wallet rule refused a stored operation: {e}"))
}

#[async_trait]
impl Store for DynamoStore {
    async fn register_device(
        &self,
        device: &DeviceRecord,
        _now: u64,
    ) -> Result<RegisterOutcome, StoreError> {
        self.retrying(|| self.register_once(device)).await
    }

    async fn device_status(
        &self,
        id: DeviceId,
        now: u64,
    ) -> Result<Option<DeviceStatus>, StoreError> {
        self.retrying(|| self.device_status_once(id, now)).await
    }

    async fn top_up(
        &self,
        user: &UserId,
        amount: Amount,
        key: &IdempotencyKey,
        now: u64,
    ) -> Result<TopUpOutcome, StoreError> {
        self.retrying(|| self.top_up_once(user, amount, key, now))
            .await
    }

    async fn wallet(&self, user: &UserId, now: u64) -> Result<Wallet, StoreError> {
        self.retrying(|| self.wallet_once(user, now)).await
    }

    async fn pay(&self, cmd: &PayCommand) -> Result<PayOutcome, StoreError> {
        // The first try decides from what this process knows of the machine when it can (one
        // transaction, no read); every other try reads first.
        let first = AtomicBool::new(true);
        self.retrying(|| {
            let first = &first;
            async move {
                if first.swap(false, Ordering::Relaxed) {
                    if let Some(outcome) = self.pay_guessed(cmd).await? {
                        return Ok(outcome);
                    }
                }
                self.pay_once(cmd).await
            }
        })
        .await
    }

    async fn find_pay(
        &self,
        user: &UserId,
        key: &IdempotencyKey,
        now: u64,
    ) -> Result<Option<Session>, StoreError> {
        self.retrying(|| self.find_pay_once(user, key, now)).await
    }

    async fn session(&self, id: SessionId, now: u64) -> Result<Option<Session>, StoreError> {
        self.retrying(|| self.session_once(id, now)).await
    }

    async fn device_call(
        &self,
        call: &DeviceCall,
        encode: ResponseEncoder,
    ) -> Result<DeviceCallOutcome, StoreError> {
        let encode = &encode;
        // As pay: the first try acts on what this process knows of the device item, if it can.
        let first = AtomicBool::new(true);
        self.retrying(|| {
            let first = &first;
            async move {
                if first.swap(false, Ordering::Relaxed) {
                    if let Some(outcome) = self.device_call_guessed(call, encode).await? {
                        return Ok(outcome);
                    }
                }
                self.device_call_once(call, encode).await
            }
        })
        .await
    }

    async fn expire_due(&self, now: u64) -> Result<usize, StoreError> {
        self.retrying(|| self.expire_due_once(now)).await
    }

    async fn time_out_active(
        &self,
        now: u64,
        active_timeout_secs: u64,
    ) -> Result<usize, StoreError> {
        self.retrying(|| self.time_out_active_once(now, active_timeout_secs))
            .await
    }

    async fn audit(&self) -> Result<Audit, StoreError> {
        self.retrying(|| self.audit_once()).await
    }

    async fn revoke_device(
        &self,
        id: DeviceId,
        reason: &str,
        now: u64,
    ) -> Result<RevokeOutcome, StoreError> {
        self.retrying(|| self.revoke_once(id, reason, now)).await
    }

    async fn device_record(&self, id: DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        self.retrying(|| self.device_record_once(id)).await
    }

    async fn rotate_device_key(
        &self,
        id: DeviceId,
        key: &IdempotencyKey,
        _now: u64,
    ) -> Result<RotateOutcome, StoreError> {
        self.retrying(|| self.rotate_once(id, key)).await
    }
}
