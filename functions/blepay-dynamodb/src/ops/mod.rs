//! The business operations: one read round trip, then one conditional write; each store method
//! retries whole attempts (`attempts.rs`). The decisions are `blepay_store::decide`'s: these
//! modules gather the facts, call them and write what they return as conditional updates.
//!
//! - `attempts.rs`: the retry loop and the single requests (transact, get, batch/transact get);
//! - `expiry.rs`: expiring overdue sessions and closing holds;
//! - `reads.rs`, `top_up.rs`, `pay.rs`, `device_call.rs`, `audit.rs`, `keys.rs` (revoke,
//!   rotate): one operation each.
//! - `reads.rs`, `top_up.rs`, `pay.rs`, `device_call.rs`, `audit.rs`: one operation each;
//! - `refunds.rs`: refunds, hand closes and problem reports (issue 11);
//! - `topups.rs`: users' top-ups through a payment provider, their notifications and refunds
//!   (issue 12).

mod attempts;
mod audit;
mod console;
mod device_call;
mod expiry;
mod fleet;
mod keys;
mod lists;
mod operators;
mod pay;
mod reads;
mod refunds;
mod top_up;
mod topups;

use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use blepay_core::{
    Amount, DeviceId, IdempotencyKey, Session, SessionId, UserId, Wallet, WalletError,
};
use blepay_store::{
    Audit, AuditEvent, AuditFilter, CloseCommand, CloseOutcome, ConsoleSession,
    CreateOperatorOutcome, DeviceCall, DeviceCallOutcome, DeviceFilter, DeviceRecord, DeviceStatus,
    DeviceUpdate, DeviceUpdateOutcome, DismissCommand, DismissOutcome, NewOperator, OperatorId,
    OperatorRecord, Page, PageRequest, PayCommand, PayOutcome, Problem, ProblemCommand,
    ProblemOutcome, RefundCommand, RefundOutcome, RegisterOutcome, ResponseEncoder,
    RevokeOperatorOutcome, RevokeOutcome, RotateOutcome, SalesFacts, SessionFilter, Spending,
    StatementEntry, Store, StoreError, TelemetrySample, TopUpOutcome,
};
use blepay_store::{
    NewProviderTopUp, ProviderEvent, ProviderEventOutcome, ProviderTopUp, StartTopUpOutcome,
    TopUpFilter, TopUpId, TopUpLocator, TopUpRefund, TopUpRefundCommand, TopUpRefundOutcome,
};

use crate::DynamoStore;

pub(crate) use lists::{
    L_REFUND, L_USER, LEDGER_BY_USER, REFUNDS, SESSIONS_BY_DEVICE, SESSIONS_BY_TIME,
    SESSIONS_BY_USER,
};
pub(crate) use topups::{T_USER, TOPUPS_BY_USER};

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

    /// The device shadow when it holds the device (no request: pay's write conditions on the key
    /// state, docs/dynamodb.md), else a read.
    async fn device_known(
        &self,
        id: DeviceId,
        now: u64,
    ) -> Result<Option<DeviceStatus>, StoreError> {
        if let Some(known) = self.shadow.get(id) {
            return Ok(Some(known.status()));
        }
        self.device_status(id, now).await
    }

    async fn top_up(
        &self,
        user: &UserId,
        amount: Amount,
        key: &IdempotencyKey,
        actor: &str,
        now: u64,
    ) -> Result<TopUpOutcome, StoreError> {
        self.retrying(|| self.top_up_once(user, amount, key, actor, now))
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

    async fn expire_due(&self, now: u64) -> Result<Vec<Session>, StoreError> {
        self.retrying(|| self.expire_due_once(now)).await
    }

    async fn time_out_active(
        &self,
        now: u64,
        active_timeout_secs: u64,
    ) -> Result<Vec<Session>, StoreError> {
        self.retrying(|| self.time_out_active_once(now, active_timeout_secs))
            .await
    }

    async fn audit(&self) -> Result<Audit, StoreError> {
        self.retrying(|| self.audit_once()).await
    }

    async fn create_operator(
        &self,
        new: &NewOperator,
    ) -> Result<CreateOperatorOutcome, StoreError> {
        self.retrying(|| self.create_operator_once(new)).await
    }

    async fn operator(&self, id: &OperatorId) -> Result<Option<OperatorRecord>, StoreError> {
        self.retrying(|| self.operator_once(id)).await
    }

    async fn operators(&self) -> Result<Vec<OperatorRecord>, StoreError> {
        self.retrying(|| self.operators_once()).await
    }

    async fn revoke_operator(
        &self,
        id: &OperatorId,
        now: u64,
    ) -> Result<RevokeOperatorOutcome, StoreError> {
        self.retrying(|| self.revoke_operator_once(id, now)).await
    }

    async fn record_audit_event(&self, event: &AuditEvent) -> Result<bool, StoreError> {
        self.retrying(|| self.record_audit_event_once(event)).await
    }

    async fn audit_events(
        &self,
        filter: &AuditFilter,
        page: &PageRequest,
    ) -> Result<Page<AuditEvent>, StoreError> {
        self.retrying(|| self.audit_events_once(filter, page)).await
    }

    async fn create_console_session(&self, s: &ConsoleSession) -> Result<bool, StoreError> {
        self.retrying(|| self.create_console_session_once(s)).await
    }

    async fn console_session(
        &self,
        id_hash: &[u8; 32],
    ) -> Result<Option<ConsoleSession>, StoreError> {
        self.retrying(|| self.console_session_once(id_hash)).await
    }

    async fn end_console_session(&self, id_hash: &[u8; 32], now: u64) -> Result<bool, StoreError> {
        self.retrying(|| self.end_console_session_once(id_hash, now))
            .await
    }

    async fn telemetry_history(
        &self,
        device: DeviceId,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<TelemetrySample>, StoreError> {
        self.retrying(|| self.telemetry_history_once(device, from, to, limit))
            .await
    }

    async fn list_devices(
        &self,
        filter: &DeviceFilter,
        page: &PageRequest,
        now: u64,
    ) -> Result<Page<DeviceStatus>, StoreError> {
        self.retrying(|| self.list_devices_once(filter, page, now))
            .await
    }

    async fn update_device(
        &self,
        id: DeviceId,
        update: &DeviceUpdate,
        now: u64,
    ) -> Result<DeviceUpdateOutcome, StoreError> {
        self.retrying(|| self.update_device_once(id, update, now))
            .await
    }

    async fn spending(&self, user: &UserId, now: u64) -> Result<Spending, StoreError> {
        self.retrying(|| self.spending_once(user, now)).await
    }

    async fn set_spending_limit(
        &self,
        user: &UserId,
        limit: Option<Amount>,
        now: u64,
    ) -> Result<Spending, StoreError> {
        self.retrying(|| self.set_spending_limit_once(user, limit, now))
            .await
    }

    async fn list_sessions(
        &self,
        filter: &SessionFilter,
        page: &PageRequest,
        now: u64,
    ) -> Result<Page<Session>, StoreError> {
        self.retrying(|| self.list_sessions_once(filter, page, now))
            .await
    }

    async fn statement(
        &self,
        user: &UserId,
        page: &PageRequest,
    ) -> Result<Page<StatementEntry>, StoreError> {
        self.retrying(|| self.statement_once(user, page)).await
    }

    async fn sales_facts(&self, from: u64, to: u64) -> Result<SalesFacts, StoreError> {
        self.retrying(|| self.sales_facts_once(from, to)).await
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

    async fn refund(&self, cmd: &RefundCommand) -> Result<RefundOutcome, StoreError> {
        self.retrying(|| self.refund_once(cmd)).await
    }

    async fn close_session(&self, cmd: &CloseCommand) -> Result<CloseOutcome, StoreError> {
        self.retrying(|| self.close_once(cmd)).await
    }

    async fn report_problem(&self, cmd: &ProblemCommand) -> Result<ProblemOutcome, StoreError> {
        self.retrying(|| self.report_problem_once(cmd)).await
    }

    async fn open_problems(&self, page: &PageRequest) -> Result<Page<Problem>, StoreError> {
        self.retrying(|| self.open_problems_once(page)).await
    }

    async fn dismiss_problem(&self, cmd: &DismissCommand) -> Result<DismissOutcome, StoreError> {
        self.retrying(|| self.dismiss_problem_once(cmd)).await
    }

    async fn start_topup(&self, cmd: &NewProviderTopUp) -> Result<StartTopUpOutcome, StoreError> {
        self.retrying(|| self.start_topup_once(cmd)).await
    }

    async fn attach_topup_ref(
        &self,
        id: TopUpId,
        provider_ref: &str,
        client_secret: Option<&str>,
        now: u64,
    ) -> Result<Option<ProviderTopUp>, StoreError> {
        self.retrying(|| self.attach_topup_ref_once(id, provider_ref, client_secret, now))
            .await
    }

    async fn topup(&self, id: TopUpId) -> Result<Option<ProviderTopUp>, StoreError> {
        self.retrying(|| self.topup_once(id)).await
    }

    async fn find_topup(
        &self,
        locator: &TopUpLocator,
    ) -> Result<Option<ProviderTopUp>, StoreError> {
        self.retrying(|| self.find_topup_once(locator)).await
    }

    async fn apply_provider_event(
        &self,
        event: &ProviderEvent,
    ) -> Result<ProviderEventOutcome, StoreError> {
        self.retrying(|| self.apply_provider_event_once(event))
            .await
    }

    async fn request_topup_refund(
        &self,
        cmd: &TopUpRefundCommand,
    ) -> Result<TopUpRefundOutcome, StoreError> {
        self.retrying(|| self.request_topup_refund_once(cmd)).await
    }

    async fn topup_refunds(&self, topup: TopUpId) -> Result<Vec<TopUpRefund>, StoreError> {
        self.retrying(|| self.topup_refunds_once(topup)).await
    }

    async fn list_topups(
        &self,
        filter: &TopUpFilter,
        page: &PageRequest,
    ) -> Result<Page<ProviderTopUp>, StoreError> {
        self.retrying(|| self.list_topups_once(filter, page)).await
    }
}
