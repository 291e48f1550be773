//! Expiring overdue AUTHORIZED sessions (releasing their holds), and closing a session's hold.

use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem};
use blepay_core::{Amount, CloseReason, Session, SessionStatus, Wallet};
use blepay_store::StoreError;

use super::attempts::Tx;
use super::wallet_rule;
use crate::DynamoStore;
use crate::items::{
    self, ACTIVE_PARTITION, DUE_AT, DUE_INDEX, DUE_PARTITION, DUE_PK, Failure, Item, Upd,
    WalletItem, device_key, n, put_new, s, session_from_item, session_key, wallet_delta,
    wallet_key,
};

impl DynamoStore {
    /// The writes that expire `s` (AUTHORIZED, due at `now`) and release its hold; the device
    /// changes (lock release) are returned to be merged into that device's update.
    pub(super) fn expiry_writes(
        &self,
        s: &Session,
        now: u64,
        writes: &mut Vec<TransactWriteItem>,
    ) -> Result<(Session, Upd), StoreError> {
        let mut expired = s.clone();
        let Some(settlement) = expired.expire(now) else {
            return Err(StoreError::Internal(
                "expiring a session that is not due".into(),
            ));
        };
        let device = self.close_writes(&expired, settlement, now, writes)?;
        Ok((expired, device))
    }

    /// Close `closed` (its new state already applied: SETTLED or EXPIRED): save it, settle the
    /// wallet (`settlement`, by the core's rules), write the ledger entries. Returns the device
    /// changes (release the lock) to merge into the device's update.
    pub(super) fn close_writes(
        &self,
        closed: &Session,
        settlement: blepay_core::Settlement,
        now: u64,
        writes: &mut Vec<TransactWriteItem>,
    ) -> Result<Upd, StoreError> {
        self.close_writes_by(closed, settlement, now, None, writes)
    }

    /// [`Self::close_writes`], its ledger rows naming `actor` (an operator's hand close).
    pub(super) fn close_writes_by(
        &self,
        closed: &Session,
        settlement: blepay_core::Settlement,
        now: u64,
        actor: Option<&str>,
        writes: &mut Vec<TransactWriteItem>,
    ) -> Result<Upd, StoreError> {
        let sid = closed.id.to_string();
        // Session state, guarded by the state it was read in.
        let prev_status = if closed.status == SessionStatus::Expired {
            SessionStatus::Authorized
        } else {
            SessionStatus::Active
        };
        let mut session = Upd::new(session_key(closed.id));
        if let Some(reason) = closed.closed_by {
            session = session
                .set("closed_by = :closed_by")
                .val(":closed_by", s(reason.as_str()));
        }
        if let Some(t) = closed.last_report_at {
            session = session
                .set("last_report_at = :last_report_at")
                .val(":last_report_at", n(t));
        }
        if matches!(
            closed.closed_by,
            Some(CloseReason::Timeout | CloseReason::Operator)
        ) {
            // No report reached it since it was read (a report moves the deadline).
            session = match closed.last_report_at {
                Some(t) => session
                    .cond("attribute_not_exists(last_report_at) OR last_report_at <= :read_report")
                    .val(":read_report", n(t)),
                None => session.cond("attribute_not_exists(last_report_at)"),
            };
        }
        writes.push(
            session
                .set("#status = :status, units = :units, amount = :amount, ended_at = :ended")
                .remove(format!("{DUE_PK}, {DUE_AT}"))
                // Closed, it enters the list indexes (`items::session_item`).
                .set("created_at = :created")
                .remove(items::OPENED_AT)
                .val(":created", n(closed.created_at))
                // The count stored so far cannot exceed the closing one (a final report decided
                // from a guess, see `shadow.rs`, relies on it; an expiry closes at 0 units).
                .cond("#status = :prev AND units <= :units")
                .name("#status", "status")
                .val(":status", s(closed.status.as_str()))
                .val(":prev", s(prev_status.as_str()))
                .val(":units", n(closed.units.get()))
                .val(":amount", n(closed.amount.minor()))
                .val(":ended", n(closed.ended_at.unwrap_or(now)))
                .into_transact(&self.table)?,
        );
        // The wallet: the core settles a wallet holding exactly this hold; the difference is the
        // change to apply to the stored balances (which hold at least this much).
        let before = Wallet {
            available: Amount::ZERO,
            held: settlement.hold,
            spent: Amount::ZERO,
            refunded: Amount::ZERO,
        };
        let (after, entries) = before
            .settle(&closed.user_id, settlement.hold, settlement.capture)
            .map_err(wallet_rule)?;
        let [da, dh, ds] = wallet_delta(before, after);
        writes.push(
            Upd::new(wallet_key(&closed.user_id))
                .set("available = available + :da, held = held + :dh, spent = spent + :ds")
                .remove("holds.#sid")
                .delete(format!("{} :open_sid", items::OPEN_SESSIONS))
                .val(":open_sid", AttributeValue::Ss(vec![sid.clone()]))
                .cond("held >= :hold")
                .name("#sid", &sid)
                .val(":da", n(da))
                .val(":dh", n(dh))
                .val(":ds", n(ds))
                .val(":hold", n(settlement.hold.minor()))
                .into_transact(&self.table)?,
        );
        for entry in &entries {
            let row = items::ledger_item(entry, now, Some(closed.id), "");
            let row = match actor {
                Some(a) => items::with_actor(row, a),
                None => row,
            };
            writes.push(put_new(&self.table, row)?);
        }
        // The day's spending counts this session at what it captured now, no longer its hold.
        super::fleet::push_spend(
            &self.table,
            writes,
            &closed.user_id,
            blepay_store::spending_day(closed.created_at),
            settlement.capture.minor() - settlement.hold.minor(),
        )?;
        Ok(Upd::default()
            .remove("#open")
            .cond("#open.id = :open_sid")
            .name("#open", "open")
            .val(":open_sid", s(&sid)))
    }

    /// Expire `s` (AUTHORIZED, due) in one transaction: the session as saved, or `None` when it
    /// changed meanwhile (it was started or expired by someone else).
    pub(super) async fn expire_one(
        &self,
        s: &Session,
        now: u64,
    ) -> Result<Option<Session>, Failure> {
        let mut writes = Vec::new();
        let (expired, device) = self.expiry_writes(s, now, &mut writes)?;
        writes.push(
            Upd::new(device_key(s.device_id))
                .merge(device)
                .into_transact(&self.table)?,
        );
        match self.transact(writes).await? {
            Tx::Done => {
                self.shadow.closed(s.device_id, s.id);
                blepay_store::closed::log_expired(&expired);
                Ok(Some(expired))
            }
            Tx::Cancelled(_) => Ok(None),
        }
    }

    /// Close `s` (ACTIVE, past its report deadline) by timeout in one transaction: the session as
    /// saved, or `None` when it changed meanwhile (a report reached it, or someone else closed
    /// it).
    pub(super) async fn time_out_one(
        &self,
        s: &Session,
        now: u64,
        active_timeout_secs: u64,
    ) -> Result<Option<Session>, Failure> {
        let mut closed = s.clone();
        let Some(settlement) = closed.time_out(now, active_timeout_secs) else {
            return Err(StoreError::Internal("timing out a session that is not due".into()).into());
        };
        let mut writes = Vec::new();
        let device = self.close_writes(&closed, settlement, now, &mut writes)?;
        writes.push(
            Upd::new(device_key(s.device_id))
                .merge(device)
                .into_transact(&self.table)?,
        );
        match self.transact(writes).await? {
            Tx::Done => {
                self.shadow.closed(s.device_id, s.id);
                blepay_store::closed::log_timed_out(&closed);
                Ok(Some(closed))
            }
            Tx::Cancelled(_) => Ok(None),
        }
    }

    /// Close by timeout every ACTIVE session whose report base (`due_at` in the `ACTIVE`
    /// partition of the `due` GSI) is at or before `now - active_timeout_secs`.
    pub(super) async fn time_out_active_once(
        &self,
        now: u64,
        active_timeout_secs: u64,
    ) -> Result<Vec<Session>, Failure> {
        let cutoff = now.saturating_sub(active_timeout_secs);
        let mut closed = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(DUE_INDEX)
                .key_condition_expression("#pk = :pk AND #at <= :cutoff")
                .expression_attribute_names("#pk", DUE_PK)
                .expression_attribute_names("#at", DUE_AT)
                .expression_attribute_values(":pk", s(ACTIVE_PARTITION))
                .expression_attribute_values(":cutoff", n(cutoff))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| items::sdk_error(&e))?;
            for item in out.items() {
                let session = session_from_item(item)?;
                // The index is eventually consistent: the transaction's conditions decide.
                if session.is_due_to_time_out(now, active_timeout_secs) {
                    closed.extend(
                        self.time_out_one(&session, now, active_timeout_secs)
                            .await?,
                    );
                }
            }
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(closed),
            }
        }
    }

    /// Expire the due holds of a wallet; `true` when any was expired (read again).
    pub(super) async fn expire_due_holds(&self, w: &WalletItem, now: u64) -> Result<bool, Failure> {
        let mut any = false;
        for hold in w.holds.iter().filter(|h| h.is_due_to_expire(now)) {
            self.expire_one(hold, now).await?;
            any = true;
        }
        Ok(any)
    }

    pub(super) async fn expire_due_once(&self, now: u64) -> Result<Vec<Session>, Failure> {
        let mut expired = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(DUE_INDEX)
                .key_condition_expression("#pk = :pk AND #at <= :now")
                .expression_attribute_names("#pk", DUE_PK)
                .expression_attribute_names("#at", DUE_AT)
                .expression_attribute_values(":pk", s(DUE_PARTITION))
                .expression_attribute_values(":now", n(now))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| items::sdk_error(&e))?;
            for item in out.items() {
                let session = session_from_item(item)?;
                // The index is eventually consistent: the transaction's conditions decide.
                if session.is_due_to_expire(now) {
                    expired.extend(self.expire_one(&session, now).await?);
                }
            }
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(expired),
            }
        }
    }
}
