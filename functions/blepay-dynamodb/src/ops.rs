//! The business operations: one read round trip, then one conditional write.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use aws_sdk_dynamodb::operation::transact_get_items::TransactGetItemsError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, Get, KeysAndAttributes, TransactGetItem, TransactWriteItem,
};
use blepay_core::{
    Amount, DeviceId, IdempotencyKey, LedgerAccount, ReportOutcome, Session, SessionId,
    SessionStatus, StartOutcome, UserId, Wallet, WalletError,
};
use blepay_store::{
    Audit, DeviceCall, DeviceCallOutcome, DeviceOp, DeviceOpResult, DeviceRecord, DeviceState,
    DeviceStatus, PayCommand, PayOutcome, RegisterOutcome, ResponseEncoder, Store, StoreError,
    TopUpOutcome,
};
use rand::Rng;

use crate::DynamoStore;
use crate::items::{
    self, DUE_AT, DUE_INDEX, DUE_PARTITION, DUE_PK, DeviceItem, Failure, Item, RETENTION_SECS, TTL,
    Upd, WalletItem, b, device_from_item, device_item, device_key, get_n, get_s, n, put_new, s,
    session_attrs, session_from_item, session_item, session_key, wallet_delta, wallet_from_item,
    wallet_key,
};

/// The outcome of one transaction attempt.
enum Tx {
    Done,
    /// Cancelled: the reason code and the old item (ALL_OLD) of each action, in order.
    Cancelled(Vec<(String, Option<Item>)>),
}

impl DynamoStore {
    /// Run `attempt` until it completes, re-running it (with jittered exponential backoff) when it
    /// lost a race or the SDK gave up on a transient failure; then [`StoreError::Unavailable`].
    async fn retrying<T, F, Fut>(&self, mut attempt: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let policy = self.retry;
        let (mut contended, mut unavailable) = (0u32, 0u32);
        loop {
            let failure = match attempt().await {
                Ok(v) => return Ok(v),
                Err(f) => f,
            };
            let round = match &failure {
                Failure::Contention(_) | Failure::Condition => {
                    contended += 1;
                    if contended >= policy.max_attempts {
                        return Err(failure.into_store());
                    }
                    contended
                }
                Failure::Unavailable(_) => {
                    unavailable += 1;
                    if unavailable > policy.max_unavailable {
                        return Err(failure.into_store());
                    }
                    unavailable + 2
                }
                Failure::Fatal(_) => return Err(failure.into_store()),
            };
            let cap = policy
                .base_backoff
                .saturating_mul(1u32 << round.min(10))
                .min(policy.max_backoff);
            let jittered = rand::rng().random_range(0..=cap.as_millis().max(1));
            let millis = u64::try_from(jittered).unwrap_or(u64::MAX);
            tracing::debug!(?failure, millis, "retrying a contended DynamoDB operation");
            tokio::time::sleep(std::time::Duration::from_millis(millis)).await;
        }
    }

    async fn transact(&self, actions: Vec<TransactWriteItem>) -> Result<Tx, Failure> {
        let token: String = {
            let mut rng = rand::rng();
            (0..32)
                .map(|_| char::from(b"0123456789abcdef"[rng.random_range(0..16)]))
                .collect()
        };
        let result = self
            .client
            .transact_write_items()
            .set_transact_items(Some(actions))
            .client_request_token(token)
            .send()
            .await;
        match result {
            Ok(_) => Ok(Tx::Done),
            Err(e) => {
                if let Some(TransactWriteItemsError::TransactionCanceledException(c)) =
                    e.as_service_error()
                {
                    let reasons: Vec<(String, Option<Item>)> = c
                        .cancellation_reasons()
                        .iter()
                        .map(|r| (r.code().unwrap_or("None").to_string(), r.item().cloned()))
                        .collect();
                    if let Some((code, _)) = reasons
                        .iter()
                        .find(|(code, _)| code != "None" && code != "ConditionalCheckFailed")
                    {
                        // TransactionConflict, ThrottlingError, ... : nothing was written.
                        return Err(Failure::Contention(format!(
                            "transaction cancelled: {code}"
                        )));
                    }
                    return Ok(Tx::Cancelled(reasons));
                }
                Err(items::sdk_error(&e))
            }
        }
    }

    /// A transaction whose any failed condition means "the state changed since it was read".
    async fn transact_or_rerun(&self, actions: Vec<TransactWriteItem>) -> Result<(), Failure> {
        match self.transact(actions).await? {
            Tx::Done => Ok(()),
            Tx::Cancelled(reasons) => Err(Failure::Contention(format!(
                "state changed since read: {:?}",
                reasons.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>()
            ))),
        }
    }

    async fn get(&self, key: Item) -> Result<Option<Item>, Failure> {
        self.client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key))
            .consistent_read(true)
            .send()
            .await
            .map(|o| o.item)
            .map_err(|e| items::sdk_error(&e))
    }

    /// One strongly consistent `BatchGetItem`; the items in the order of `keys` (`None` when
    /// absent).
    async fn batch_get(&self, keys: Vec<Item>) -> Result<Vec<Option<Item>>, Failure> {
        let wanted = KeysAndAttributes::builder()
            .set_keys(Some(keys.clone()))
            .consistent_read(true)
            .build()
            .map_err(items::build_error)?;
        let out = self
            .client
            .batch_get_item()
            .request_items(&self.table, wanted)
            .send()
            .await
            .map_err(|e| items::sdk_error(&e))?;
        if out
            .unprocessed_keys()
            .is_some_and(|u| u.values().any(|k| !k.keys().is_empty()))
        {
            return Err(Failure::Unavailable(
                "BatchGetItem left keys unprocessed".into(),
            ));
        }
        let found = out
            .responses
            .and_then(|mut r| r.remove(&self.table))
            .unwrap_or_default();
        Ok(keys
            .iter()
            .map(|k| {
                found
                    .iter()
                    .find(|item| item.get("pk") == k.get("pk") && item.get("sk") == k.get("sk"))
                    .cloned()
            })
            .collect())
    }

    /// One `TransactGetItems`: a snapshot of `keys` isolated from concurrent transactions (a
    /// `BatchGetItem` may see half of one). A conflicting write cancels it: contention.
    async fn transact_get(&self, keys: Vec<Item>) -> Result<Vec<Option<Item>>, Failure> {
        let mut request = self.client.transact_get_items();
        for key in keys {
            let get = Get::builder()
                .table_name(&self.table)
                .set_key(Some(key))
                .build()
                .map_err(items::build_error)?;
            request = request.transact_items(TransactGetItem::builder().get(get).build());
        }
        match request.send().await {
            Ok(out) => Ok(out.responses().iter().map(|r| r.item().cloned()).collect()),
            Err(e) => {
                if let Some(TransactGetItemsError::TransactionCanceledException(_)) =
                    e.as_service_error()
                {
                    return Err(Failure::Contention("TransactGetItems cancelled".into()));
                }
                Err(items::sdk_error(&e))
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Expiry
    // -----------------------------------------------------------------------------------------

    /// The writes that expire `s` (AUTHORIZED, due at `now`) and release its hold; the device
    /// changes (lock release) are returned to be merged into that device's update.
    fn expiry_writes(
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
    fn close_writes(
        &self,
        closed: &Session,
        settlement: blepay_core::Settlement,
        now: u64,
        writes: &mut Vec<TransactWriteItem>,
    ) -> Result<Upd, StoreError> {
        let sid = closed.id.to_string();
        // Session state, guarded by the state it was read in.
        let prev_status = if closed.status == SessionStatus::Expired {
            SessionStatus::Authorized
        } else {
            SessionStatus::Active
        };
        writes.push(
            Upd::new(session_key(closed.id))
                .set("#status = :status, units = :units, amount = :amount, ended_at = :ended")
                .remove(format!("{DUE_PK}, {DUE_AT}"))
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
        };
        let (after, entries) = before
            .settle(&closed.user_id, settlement.hold, settlement.capture)
            .map_err(wallet_rule)?;
        let [da, dh, ds] = wallet_delta(before, after);
        writes.push(
            Upd::new(wallet_key(&closed.user_id))
                .set("available = available + :da, held = held + :dh, spent = spent + :ds")
                .remove("holds.#sid")
                .cond("held >= :hold")
                .name("#sid", &sid)
                .val(":da", n(da))
                .val(":dh", n(dh))
                .val(":ds", n(ds))
                .val(":hold", n(settlement.hold.minor()))
                .into_transact(&self.table)?,
        );
        for entry in &entries {
            writes.push(put_new(
                &self.table,
                items::ledger_item(entry, now, Some(closed.id), ""),
            )?);
        }
        Ok(Upd::default()
            .remove("#open")
            .cond("#open.id = :open_sid")
            .name("#open", "open")
            .val(":open_sid", s(&sid)))
    }

    /// Expire `s` (AUTHORIZED, due) in one transaction. `false` when it changed meanwhile (it was
    /// started or expired by someone else).
    async fn expire_one(&self, s: &Session, now: u64) -> Result<bool, Failure> {
        let mut writes = Vec::new();
        let (_, device) = self.expiry_writes(s, now, &mut writes)?;
        writes.push(
            Upd::new(device_key(s.device_id))
                .merge(device)
                .into_transact(&self.table)?,
        );
        match self.transact(writes).await? {
            Tx::Done => {
                self.shadow.closed(s.device_id, s.id);
                Ok(true)
            }
            Tx::Cancelled(_) => Ok(false),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Attempts (each is one try; `retrying` re-runs them)
    // -----------------------------------------------------------------------------------------

    async fn session_once(&self, id: SessionId, now: u64) -> Result<Option<Session>, Failure> {
        let Some(item) = self.get(session_key(id)).await? else {
            return Ok(None);
        };
        let session = session_from_item(&item)?;
        if session.is_due_to_expire(now) {
            self.expire_one(&session, now).await?;
            return Err(Failure::Contention(
                "expired a due session; read again".into(),
            ));
        }
        Ok(Some(session))
    }

    /// Expire the due holds of a wallet; `true` when any was expired (read again).
    async fn expire_due_holds(&self, w: &WalletItem, now: u64) -> Result<bool, Failure> {
        let mut any = false;
        for hold in w.holds.iter().filter(|h| h.is_due_to_expire(now)) {
            self.expire_one(hold, now).await?;
            any = true;
        }
        Ok(any)
    }

    async fn wallet_once(&self, user: &UserId, now: u64) -> Result<Wallet, Failure> {
        let item = self.get(wallet_key(user)).await?;
        let w = wallet_from_item(item.as_ref())?;
        if self.expire_due_holds(&w, now).await? {
            return Err(Failure::Contention("expired due holds; read again".into()));
        }
        Ok(w.wallet)
    }

    async fn device_status_once(
        &self,
        id: DeviceId,
        now: u64,
    ) -> Result<Option<DeviceStatus>, Failure> {
        let Some(item) = self.get(device_key(id)).await? else {
            self.shadow.forget(id);
            return Ok(None);
        };
        let d = device_from_item(&item)?;
        self.shadow.put(d.clone());
        if let Some(open) = d.open.as_ref().filter(|o| o.is_due_to_expire(now)) {
            self.expire_one(open, now).await?;
            return Err(Failure::Contention(
                "expired a due session; read again".into(),
            ));
        }
        Ok(Some(DeviceStatus {
            device: d.record,
            last_seen: d.last_seen,
            open_session: d.open.map(|o| o.id),
        }))
    }

    async fn top_up_once(
        &self,
        user: &UserId,
        amount: Amount,
        key: &IdempotencyKey,
        now: u64,
    ) -> Result<TopUpOutcome, Failure> {
        let [wallet, seen] = <[Option<Item>; 2]>::try_from(
            self.batch_get(vec![wallet_key(user), items::topup_key_key(user, key)])
                .await?,
        )
        .map_err(|_| StoreError::Internal("BatchGetItem answered the wrong count".into()))?;
        let w = wallet_from_item(wallet.as_ref())?;
        if self.expire_due_holds(&w, now).await? {
            return Err(Failure::Contention("expired due holds; read again".into()));
        }
        let fingerprint = amount.minor().to_string();
        if let Some(seen) = seen {
            return Ok(if get_s(&seen, "fingerprint")? == fingerprint {
                TopUpOutcome::Replayed(w.wallet)
            } else {
                TopUpOutcome::KeyReused
            });
        }
        let (after, entry) = match w.wallet.top_up(user, amount) {
            Err(WalletError::Overflow) => return Ok(TopUpOutcome::LimitExceeded),
            other => other.map_err(wallet_rule)?,
        };
        let mut wallet_upd = Upd::new(wallet_key(user))
            .set("available = :a, held = :h, spent = :s, #type = :type, #user = :user")
            .set("holds = if_not_exists(holds, :empty)")
            .name("#type", "type")
            .name("#user", "user")
            .val(":a", n(after.available.minor()))
            .val(":h", n(after.held.minor()))
            .val(":s", n(after.spent.minor()))
            .val(":type", s("WALLET"))
            .val(":user", s(user.as_str()))
            .val(":empty", AttributeValue::M(HashMap::new()));
        wallet_upd = if w.exists {
            wallet_upd
                .cond("available = :pa AND held = :ph AND spent = :ps")
                .val(":pa", n(w.wallet.available.minor()))
                .val(":ph", n(w.wallet.held.minor()))
                .val(":ps", n(w.wallet.spent.minor()))
        } else {
            wallet_upd.cond("attribute_not_exists(pk)")
        };
        let mut record = items::topup_key_key(user, key);
        record.extend([
            ("type".to_string(), s("IDEMPOTENCY")),
            ("fingerprint".to_string(), s(&fingerprint)),
            (TTL.to_string(), n(now + RETENTION_SECS)),
        ]);
        let actions = vec![
            wallet_upd.into_transact(&self.table)?,
            put_new(&self.table, record)?,
            put_new(
                &self.table,
                items::ledger_item(&entry, now, None, &format!("TOPUP#{user}#{key}")),
            )?,
        ];
        self.transact_or_rerun(actions).await?;
        Ok(TopUpOutcome::Credited(after))
    }

    async fn pay_once(&self, cmd: &PayCommand) -> Result<PayOutcome, Failure> {
        // The one read: the device (tariff, liveness, lock), the wallet (balance, due holds), the
        // idempotency record (a retry is answered before anything else) and the advert marker —
        // one isolated snapshot, so a concurrent pay with this key is seen whole or not at all.
        let [device, wallet, seen, advert_used] = <[Option<Item>; 4]>::try_from(
            self.transact_get(vec![
                device_key(cmd.device),
                wallet_key(&cmd.user),
                items::pay_key_key(&cmd.user, &cmd.key),
                items::advert_key(cmd.device, cmd.slot, cmd.use_counter),
            ])
            .await?,
        )
        .map_err(|_| StoreError::Internal("TransactGetItems answered the wrong count".into()))?;

        let fingerprint = pay_fingerprint(cmd);
        if let Some(seen) = seen {
            if get_s(&seen, "fingerprint")? != fingerprint {
                return Ok(PayOutcome::KeyReused);
            }
            let sid = SessionId::parse(get_s(&seen, "session")?)
                .map_err(|_| items::corrupt("pay record", "session"))?;
            return match self.session_once(sid, cmd.now).await? {
                Some(session) => Ok(PayOutcome::Replayed(session)),
                None => Err(StoreError::Corrupt(format!(
                    "pay key {} names a missing session {sid}",
                    cmd.key
                ))
                .into()),
            };
        }
        let Some(device) = device else {
            self.shadow.forget(cmd.device);
            return Ok(PayOutcome::DeviceUnknown);
        };
        let device = device_from_item(&device)?;
        self.shadow.put(device.clone());
        let w = wallet_from_item(wallet.as_ref())?;
        // Overdue sessions (on this machine, or holding this user's money) are expired first.
        if let Some(open) = device.open.as_ref().filter(|o| o.is_due_to_expire(cmd.now)) {
            self.expire_one(open, cmd.now).await?;
            return Err(Failure::Contention(
                "expired a due session; read again".into(),
            ));
        }
        if self.expire_due_holds(&w, cmd.now).await? {
            return Err(Failure::Contention("expired due holds; read again".into()));
        }
        match device_state(&device, cmd) {
            DeviceState::Offline => return Ok(PayOutcome::DeviceOffline),
            DeviceState::Busy => return Ok(PayOutcome::DeviceBusy),
            DeviceState::Idle => {}
        }
        if advert_used.is_some() {
            return Ok(PayOutcome::AdvertUsed);
        }
        let (after, hold_entry) = match w.wallet.hold(&cmd.user, cmd.max_amount) {
            Ok(held) => held,
            Err(WalletError::InsufficientFunds { available, .. }) => {
                return Ok(PayOutcome::InsufficientFunds { available });
            }
            Err(e) => return Err(wallet_rule(e).into()),
        };
        let session = new_session(cmd, &device);
        let delta = wallet_delta(w.wallet, after);
        let actions = self.pay_actions(cmd, &session, delta, &hold_entry, None)?;
        match self.transact(actions).await? {
            Tx::Done => Ok(self.paid(session)),
            Tx::Cancelled(reasons) => match pay_refusal(cmd, &reasons)? {
                Some(refusal) => Ok(refusal),
                None => Err(Failure::Contention(
                    "the pay lost a race; read again".into(),
                )),
            },
        }
    }

    /// Pay in one `TransactWriteItems`, deciding from this process's last knowledge of the device
    /// item (the service reads the device just before it pays, so it is fresh) instead of a read:
    /// the transaction checks every fact the decision used (the tariff copied into the session,
    /// online, idle), and the refusals come from its cancellation reasons. `None` when there is no
    /// such knowledge, when it shows anything but an idle online machine, or when the reasons
    /// leave the answer open (a retry with this key, an overdue hold, a race): then the usual pay
    /// runs (read, then write).
    async fn pay_guessed(&self, cmd: &PayCommand) -> Result<Option<PayOutcome>, Failure> {
        let Some(device) = self.shadow.get(cmd.device) else {
            return Ok(None);
        };
        if device.open.is_some() || device_state(&device, cmd) != DeviceState::Idle {
            return Ok(None);
        }
        // The wallet is not read: the core holds the amount on a wallet holding exactly it, and
        // the difference is applied under the condition that the money is there.
        let base = Wallet {
            available: cmd.max_amount,
            held: Amount::ZERO,
            spent: Amount::ZERO,
        };
        let (after, hold_entry) = base.hold(&cmd.user, cmd.max_amount).map_err(wallet_rule)?;
        let session = new_session(cmd, &device);
        let actions = self.pay_actions(
            cmd,
            &session,
            wallet_delta(base, after),
            &hold_entry,
            Some(&device.record.tariff),
        )?;
        let outcome = match self.transact(actions).await {
            Ok(Tx::Done) => return Ok(Some(self.paid(session))),
            Ok(Tx::Cancelled(reasons)) => pay_refusal(cmd, &reasons),
            Err(e) => Err(e),
        };
        // Whatever the device item is now, this process no longer knows it.
        self.shadow.forget(cmd.device);
        outcome
    }

    /// A pay went through: the machine now holds `session`.
    fn paid(&self, session: Session) -> PayOutcome {
        self.shadow.update(session.device_id, |d| {
            d.open = Some(session.clone());
        });
        PayOutcome::Created(session)
    }

    /// Pay's transaction, in the order of the refusals (`PAY_*`): DynamoDB reports the failed
    /// conditions of a cancelled transaction in action order, so the first one reported is the
    /// refusal SQLite would give first. With `tariff` (a decision from a guess), the device's
    /// tariff must still be the one copied into the session.
    fn pay_actions(
        &self,
        cmd: &PayCommand,
        session: &Session,
        [da, dh, ds]: [i64; 3],
        hold_entry: &blepay_core::LedgerEntry,
        tariff: Option<&blepay_core::Tariff>,
    ) -> Result<Vec<TransactWriteItem>, StoreError> {
        let sid = session.id.to_string();
        let snapshot = AttributeValue::M(session_attrs(session));
        let fresh_since = cmd.now.saturating_sub(cmd.offline_after_secs);
        let mut advert = items::advert_key(cmd.device, cmd.slot, cmd.use_counter);
        advert.extend([
            ("type".to_string(), s("ADVERT")),
            ("session".to_string(), s(&sid)),
            ("user".to_string(), s(cmd.user.as_str())),
            (TTL.to_string(), n(cmd.now + RETENTION_SECS)),
        ]);
        let mut record = items::pay_key_key(&cmd.user, &cmd.key);
        record.extend([
            ("type".to_string(), s("IDEMPOTENCY")),
            ("fingerprint".to_string(), s(pay_fingerprint(cmd))),
            ("session".to_string(), s(&sid)),
            (TTL.to_string(), n(cmd.now + RETENTION_SECS)),
        ]);
        let mut device = Upd::new(device_key(cmd.device))
            .set("#open = :snap")
            .cond("attribute_exists(pk) AND attribute_not_exists(#open) AND last_seen >= :fresh")
            .name("#open", "open")
            .val(":snap", snapshot.clone())
            .val(":fresh", n(fresh_since));
        if let Some(t) = tariff {
            device = device
                .cond("price = :price AND #unit = :unit AND currency = :currency")
                .name("#unit", "unit")
                .val(":price", n(t.price_per_unit.minor()))
                .val(":unit", s(t.unit_name.as_str()))
                .val(":currency", s(t.currency.as_str()));
        }
        Ok(vec![
            // PAY_KEY: the idempotency record.
            put_new(&self.table, record)?,
            // PAY_DEVICE: the machine's lock, only if it is idle and online.
            device.into_transact(&self.table)?,
            // PAY_ADVERT: the single-use advert marker.
            put_new(&self.table, advert)?,
            // PAY_WALLET: the hold, only if the money is there.
            Upd::new(wallet_key(&cmd.user))
                .set("available = available + :da, held = held + :dh, spent = spent + :ds")
                .set("holds.#sid = :snap")
                .cond("available >= :amt")
                .name("#sid", &sid)
                .val(":da", n(da))
                .val(":dh", n(dh))
                .val(":ds", n(ds))
                .val(":amt", n(cmd.max_amount.minor()))
                .val(":snap", snapshot)
                .into_transact(&self.table)?,
            // The session (random ids do not collide) and the ledger entry.
            put_new(&self.table, session_item(session))?,
            put_new(
                &self.table,
                items::ledger_item(hold_entry, cmd.now, Some(session.id), ""),
            )?,
        ])
    }

    async fn device_call_once(
        &self,
        call: &DeviceCall,
        encode: &ResponseEncoder,
    ) -> Result<DeviceCallOutcome, Failure> {
        // The one read: the device item (sequence state, lock, grant), plus the session named by a
        // start or report.
        let (device, session) = match &call.op {
            DeviceOp::Poll => (self.query_device(call.device).await?, None),
            DeviceOp::Start { session } | DeviceOp::Report { session, .. } => {
                let [d, s] = <[Option<Item>; 2]>::try_from(
                    self.batch_get(vec![device_key(call.device), session_key(*session)])
                        .await?,
                )
                .map_err(|_| {
                    StoreError::Internal("BatchGetItem answered the wrong count".into())
                })?;
                (d, s)
            }
        };
        let Some(device) = device else {
            self.shadow.forget(call.device);
            return Ok(DeviceCallOutcome::DeviceUnknown);
        };
        let device = device_from_item(&device)?;
        self.shadow.put(device.clone());
        if let Some(last_seq) = device.last_seq {
            if call.seq == last_seq && device.last_digest.as_deref() == Some(&call.digest[..]) {
                return self.answer_retry(call, &device).await;
            }
            if call.seq <= last_seq {
                return Ok(DeviceCallOutcome::Replayed { last_seq });
            }
        }
        if matches!(call.op, DeviceOp::Poll) {
            if let Some(open) = device
                .open
                .as_ref()
                .filter(|o| o.is_due_to_expire(call.now))
            {
                self.expire_one(open, call.now).await?;
                return Err(Failure::Contention(
                    "expired a due session; read again".into(),
                ));
            }
        }
        let session = session.map(|i| session_from_item(&i)).transpose()?;
        match self
            .device_decide_and_write(call, encode, &device, session, false)
            .await?
        {
            Some(outcome) => Ok(outcome),
            None => Err(Failure::Contention(
                "device state changed since read".into(),
            )),
        }
    }

    /// The machine request decided from this process's last knowledge of the device item instead
    /// of a read (see `shadow.rs`), when that knowledge covers the request: a poll, a start of the
    /// AUTHORIZED session the machine holds, a report on its ACTIVE one. `None` when it does not,
    /// or when the write's conditions show the knowledge was stale (nothing was written): then the
    /// request runs the usual way.
    async fn device_call_guessed(
        &self,
        call: &DeviceCall,
        encode: &ResponseEncoder,
    ) -> Result<Option<DeviceCallOutcome>, Failure> {
        let Some(device) = self.shadow.get(call.device) else {
            return Ok(None);
        };
        // Retries and replays are answered from a read, never from a guess.
        if device.last_seq.is_some_and(|last| call.seq <= last) {
            return Ok(None);
        }
        let now = call.now;
        let open = device.open.as_ref();
        let session = match (&call.op, open) {
            (DeviceOp::Poll, open) => {
                if open.is_some_and(|o| o.is_due_to_expire(now)) {
                    return Ok(None);
                }
                None
            }
            // While AUTHORIZED, the session item is exactly the snapshot the machine holds.
            (DeviceOp::Start { session }, Some(o))
                if o.id == *session
                    && o.status == SessionStatus::Authorized
                    && now < o.expires_at =>
            {
                Some(o.clone())
            }
            // While ACTIVE, the session item is the snapshot plus the units reported so far; the
            // report's outcome does not depend on them as long as they are not above the new
            // count, which the write checks.
            (DeviceOp::Report { session, .. }, Some(o))
                if o.id == *session && o.status == SessionStatus::Active =>
            {
                Some(o.clone())
            }
            _ => return Ok(None),
        };
        match self
            .device_decide_and_write(call, encode, &device, session, true)
            .await
        {
            Ok(Some(outcome)) => Ok(Some(outcome)),
            Ok(None) => {
                self.shadow.forget(call.device);
                Ok(None)
            }
            Err(e) => {
                self.shadow.forget(call.device);
                Err(e)
            }
        }
    }

    /// Decide a machine request (not a retry, not a replay) from `device` and `session` (read, or
    /// guessed when `guessed`), encode the answer and write it with the operation's changes. `None`
    /// when a condition failed (nothing was written).
    async fn device_decide_and_write(
        &self,
        call: &DeviceCall,
        encode: &ResponseEncoder,
        device: &DeviceItem,
        session: Option<Session>,
        guessed: bool,
    ) -> Result<Option<DeviceCallOutcome>, Failure> {
        let now = call.now;
        let seen = device.last_seen.map_or(now, |t| t.max(now));
        let mut writes = Vec::new();
        let mut device_changes = Upd::default();
        let mut open_after = device.open.clone();
        let result = match &call.op {
            DeviceOp::Poll => {
                let grants = device
                    .open
                    .iter()
                    .filter(|o| o.status == SessionStatus::Authorized)
                    .cloned()
                    .collect();
                DeviceOpResult::Grants(grants)
            }
            DeviceOp::Start { .. } | DeviceOp::Report { .. } => {
                match session.filter(|s| s.device_id == call.device) {
                    None => DeviceOpResult::SessionNotFound,
                    Some(mut s) => self.run_session_op(
                        call,
                        &mut s,
                        &mut writes,
                        &mut device_changes,
                        &mut open_after,
                    )?,
                }
            }
        };
        // The answer is encoded before anything is written, and saved with the operation.
        let body = encode(&result);
        let mut upd = Upd::new(device_key(call.device))
            .set("last_seq = :seq, last_digest = :digest, last_response = :body, last_seen = :seen")
            .val(":seq", n(call.seq))
            .val(":digest", b(&call.digest))
            .val(":body", b(&body))
            .val(":seen", n(seen));
        upd = match device.last_seq {
            Some(prev) => upd.cond("last_seq = :prev").val(":prev", n(prev)),
            None => upd.cond("attribute_exists(pk) AND attribute_not_exists(last_seq)"),
        };
        if guessed {
            // Every other fact of the guess the decision used.
            upd = upd.cond("attribute_not_exists(last_seen) OR last_seen <= :seen");
            upd = match &device.open {
                None => upd
                    .cond("attribute_not_exists(#open)")
                    .name("#open", "open"),
                Some(o) => upd
                    .cond("#open.id = :guess_open AND #open.#status = :guess_status")
                    .name("#open", "open")
                    .name("#status", "status")
                    .val(":guess_open", s(o.id.to_string()))
                    .val(":guess_status", s(o.status.as_str())),
            };
        }
        let upd = upd.merge(device_changes);
        let written = if writes.is_empty() {
            match upd.send(&self.client, &self.table).await {
                Ok(()) => true,
                Err(Failure::Condition) => false,
                Err(e) => return Err(e),
            }
        } else {
            writes.push(upd.into_transact(&self.table)?);
            matches!(self.transact(writes).await?, Tx::Done)
        };
        if !written {
            return Ok(None);
        }
        self.shadow.put(DeviceItem {
            record: device.record.clone(),
            last_seq: Some(call.seq),
            last_digest: Some(call.digest.to_vec()),
            last_response: Some(body.clone()),
            last_seen: Some(seen),
            open: open_after,
        });
        Ok(Some(DeviceCallOutcome::Fresh(body)))
    }

    /// Run a start or report on `s` (this device's session), collecting the writes; returns the
    /// operation's result. `open` becomes the device's open session after the writes.
    fn run_session_op(
        &self,
        call: &DeviceCall,
        s: &mut Session,
        writes: &mut Vec<TransactWriteItem>,
        device: &mut Upd,
        open: &mut Option<Session>,
    ) -> Result<DeviceOpResult, Failure> {
        let now = call.now;
        let sid = s.id.to_string();
        // An overdue session expires first (as any read of it would).
        if s.is_due_to_expire(now) {
            let (expired, changes) = self.expiry_writes(s, now, writes)?;
            *s = expired;
            *device = std::mem::take(device).merge(changes);
            *open = None;
        }
        Ok(match &call.op {
            DeviceOp::Poll => DeviceOpResult::SessionNotFound,
            DeviceOp::Start { .. } => {
                let prev = s.clone();
                match s.start(now) {
                    Ok(StartOutcome::Started) => {
                        writes.push(
                            Upd::new(session_key(s.id))
                                .set("#status = :status, started_at = :t")
                                .remove(format!("{DUE_PK}, {DUE_AT}"))
                                .cond("#status = :prev")
                                .name("#status", "status")
                                .val(":status", items::s(s.status.as_str()))
                                .val(":prev", items::s(prev.status.as_str()))
                                .val(":t", n(now))
                                .into_transact(&self.table)?,
                        );
                        // The hold is no longer an expiry candidate.
                        writes.push(
                            Upd::new(wallet_key(&s.user_id))
                                .remove("holds.#sid")
                                .name("#sid", &sid)
                                .into_transact(&self.table)?,
                        );
                        *device = std::mem::take(device).merge(
                            Upd::default()
                                .set("#open.#status = :status, #open.started_at = :t")
                                .cond("#open.id = :open_sid")
                                .name("#open", "open")
                                .name("#status", "status")
                                .val(":status", items::s(s.status.as_str()))
                                .val(":t", n(now))
                                .val(":open_sid", items::s(&sid)),
                        );
                        *open = Some(s.clone());
                        DeviceOpResult::Session(s.clone())
                    }
                    Ok(StartOutcome::AlreadyActive) => DeviceOpResult::Session(s.clone()),
                    Err(e) => DeviceOpResult::Refused(e),
                }
            }
            DeviceOp::Report { units, last, .. } => match s.report(*units, *last, now) {
                Ok(ReportOutcome::Progress) => {
                    // The outcome holds for any count stored so far up to this one.
                    writes.push(
                        Upd::new(session_key(s.id))
                            .set("units = :units, amount = :amount")
                            .cond("#status = :active AND units <= :units")
                            .name("#status", "status")
                            .val(":active", items::s(SessionStatus::Active.as_str()))
                            .val(":units", n(s.units.get()))
                            .val(":amount", n(s.amount.minor()))
                            .into_transact(&self.table)?,
                    );
                    DeviceOpResult::Session(s.clone())
                }
                Ok(ReportOutcome::Settled(settlement)) => {
                    let changes = self.close_writes(s, settlement, now, writes)?;
                    *device = std::mem::take(device).merge(changes);
                    *open = None;
                    DeviceOpResult::Session(s.clone())
                }
                Ok(ReportOutcome::AlreadySettled) => DeviceOpResult::Session(s.clone()),
                Err(e) => DeviceOpResult::Refused(e),
            },
        })
    }

    /// A retry of the last request: its saved answer; the message still counts as a sign of life.
    async fn answer_retry(
        &self,
        call: &DeviceCall,
        device: &DeviceItem,
    ) -> Result<DeviceCallOutcome, Failure> {
        let body = device.last_response.clone().ok_or_else(|| {
            StoreError::Corrupt(format!(
                "device {} has a sequence but no saved answer",
                call.device
            ))
        })?;
        if device.last_seen.is_none_or(|t| t < call.now) {
            let touched = Upd::new(device_key(call.device))
                .set("last_seen = :now")
                .cond("attribute_not_exists(last_seen) OR last_seen < :now")
                .val(":now", n(call.now))
                .send(&self.client, &self.table)
                .await;
            match touched {
                Ok(()) | Err(Failure::Condition) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(DeviceCallOutcome::Retry(body))
    }

    /// Poll's one read: a `Query` of the device's partition (its one item carries the sequence
    /// state and the grant).
    async fn query_device(&self, id: DeviceId) -> Result<Option<Item>, Failure> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND sk = :sk")
            .expression_attribute_values(":pk", s(items::device_pk(id)))
            .expression_attribute_values(":sk", s("DEVICE"))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| items::sdk_error(&e))?;
        Ok(out.items.and_then(|mut v| v.pop()))
    }

    async fn expire_due_once(&self, now: u64) -> Result<usize, Failure> {
        let mut expired = 0;
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
                if session.is_due_to_expire(now) && self.expire_one(&session, now).await? {
                    expired += 1;
                }
            }
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(expired),
            }
        }
    }

    async fn audit_once(&self) -> Result<Audit, Failure> {
        let mut a = Audit::default();
        let mut balances: HashMap<String, i64> = HashMap::new();
        let mut wallets: Vec<(String, i64, i64)> = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .client
                .scan()
                .table_name(&self.table)
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| items::sdk_error(&e))?;
            for item in out.items() {
                match item.get("type") {
                    Some(AttributeValue::S(t)) if t == "WALLET" => {
                        let w = wallet_from_item(Some(item))?.wallet;
                        a.available += w.available.minor();
                        a.held += w.held.minor();
                        a.spent += w.spent.minor();
                        wallets.push((
                            get_s(item, "user")?.to_string(),
                            w.available.minor(),
                            w.held.minor(),
                        ));
                    }
                    Some(AttributeValue::S(t)) if t == "SESSION" => {
                        let x = session_from_item(item)?;
                        if x.status.is_open() {
                            a.open_holds += x.hold.minor();
                        }
                    }
                    Some(AttributeValue::S(t)) if t == "LEDGER" => {
                        let amount: i64 = get_n(item, "amount")?;
                        if get_s(item, "kind")? == "TOPUP" {
                            a.top_ups += amount;
                        }
                        *balances
                            .entry(get_s(item, "credit")?.to_string())
                            .or_default() += amount;
                        *balances
                            .entry(get_s(item, "debit")?.to_string())
                            .or_default() -= amount;
                    }
                    _ => {}
                }
            }
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        a.ledger_sum = balances.values().sum();
        a.revenue = balances
            .get(&LedgerAccount::Revenue.key())
            .copied()
            .unwrap_or(0);
        for (user, available, held) in wallets {
            let user = UserId::parse(&user).map_err(|_| items::corrupt("wallet", "user"))?;
            let la = balances
                .remove(&LedgerAccount::UserAvailable(user.clone()).key())
                .unwrap_or(0);
            let lh = balances
                .remove(&LedgerAccount::UserHeld(user).key())
                .unwrap_or(0);
            if available != la || held != lh {
                a.mismatched_wallets += 1;
            }
        }
        let system = [LedgerAccount::Funding.key(), LedgerAccount::Revenue.key()];
        let orphans = balances
            .iter()
            .filter(|(account, balance)| **balance != 0 && !system.contains(account))
            .count();
        a.mismatched_wallets += u64::try_from(orphans).unwrap_or(u64::MAX);
        Ok(a)
    }
}

/// A wallet rule refused an operation the store had already decided to make.
fn wallet_rule(e: WalletError) -> StoreError {
    StoreError::Internal(format!("wallet rule refused a stored operation: {e}"))
}

/// Positions of pay's actions (`pay_actions`), in the order of the refusals.
const PAY_KEY: usize = 0;
const PAY_DEVICE: usize = 1;
const PAY_ADVERT: usize = 2;
const PAY_WALLET: usize = 3;

/// The AUTHORIZED session a pay opens, with the machine's tariff.
fn new_session(cmd: &PayCommand, device: &DeviceItem) -> Session {
    Session::authorize(
        cmd.session_id,
        cmd.device,
        cmd.user.clone(),
        cmd.max_amount,
        device.record.tariff.clone(),
        cmd.use_counter,
        cmd.now,
        cmd.start_timeout_secs,
    )
}

/// What an idempotency record of a pay must match to answer a retry.
fn pay_fingerprint(cmd: &PayCommand) -> String {
    format!("{}:{}", cmd.device, cmd.max_amount.minor())
}

fn device_state(device: &DeviceItem, cmd: &PayCommand) -> DeviceState {
    DeviceStatus {
        device: device.record.clone(),
        last_seen: device.last_seen,
        open_session: device.open.as_ref().map(|o| o.id),
    }
    .state(cmd.now, cmd.offline_after_secs)
}

/// The refusal a cancelled pay transaction means, from its cancellation reasons (the old items,
/// `ALL_OLD`); `None` when they leave it open and the pay must be decided from a fresh read: a
/// request with this key won (it is answered as a retry), an overdue session is in the way (it is
/// expired first), or the item changed since it was read.
fn pay_refusal(
    cmd: &PayCommand,
    reasons: &[(String, Option<Item>)],
) -> Result<Option<PayOutcome>, Failure> {
    let failed = |i: usize| {
        reasons
            .get(i)
            .filter(|(code, _)| code == "ConditionalCheckFailed")
            .map(|(_, old)| old.as_ref())
    };
    // A lost race against a pay with the same key can show up as busy / advert used /
    // insufficient funds when that pay's record was written after this transaction checked it;
    // when the old item shows a session this very request could have created (same user, machine
    // and amount), read again: the key record then answers it as a retry.
    let ours = |x: &Session| {
        x.user_id == cmd.user && x.device_id == cmd.device && x.hold == cmd.max_amount
    };
    if failed(PAY_KEY).is_some() {
        return Ok(None);
    }
    if let Some(old) = failed(PAY_DEVICE) {
        let Some(old) = old else {
            return Ok(Some(PayOutcome::DeviceUnknown));
        };
        let device = device_from_item(old)?;
        if device
            .open
            .as_ref()
            .is_some_and(|o| ours(o) || o.is_due_to_expire(cmd.now))
        {
            return Ok(None);
        }
        return Ok(match device_state(&device, cmd) {
            DeviceState::Offline => Some(PayOutcome::DeviceOffline),
            DeviceState::Busy => Some(PayOutcome::DeviceBusy),
            // Idle and online: another tariff, or the read was stale.
            DeviceState::Idle => None,
        });
    }
    if let Some(old) = failed(PAY_ADVERT) {
        if old.is_some_and(|m| items::get_s(m, "user").is_ok_and(|u| u == cmd.user.as_str())) {
            return Ok(None);
        }
        return Ok(Some(PayOutcome::AdvertUsed));
    }
    if let Some(old) = failed(PAY_WALLET) {
        let wallet = wallet_from_item(old)?;
        if wallet
            .holds
            .iter()
            .any(|h| ours(h) || h.is_due_to_expire(cmd.now))
        {
            return Ok(None);
        }
        let available = wallet.wallet.available;
        if available < cmd.max_amount {
            return Ok(Some(PayOutcome::InsufficientFunds { available }));
        }
        return Ok(None);
    }
    Err(StoreError::Internal(format!(
        "pay cancelled for an unexpected reason: {:?}",
        reasons.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>()
    ))
    .into())
}

#[async_trait]
impl Store for DynamoStore {
    async fn register_device(
        &self,
        device: &DeviceRecord,
        _now: u64,
    ) -> Result<RegisterOutcome, StoreError> {
        self.retrying(|| async {
            let result = self
                .client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(device_item(device)))
                .condition_expression("attribute_not_exists(pk)")
                .send()
                .await;
            match result {
                Ok(_) => Ok(RegisterOutcome::Created),
                Err(e)
                    if aws_sdk_dynamodb::error::ProvideErrorMetadata::code(&e)
                        == Some("ConditionalCheckFailedException") =>
                {
                    Ok(RegisterOutcome::Exists)
                }
                Err(e) => Err(items::sdk_error(&e)),
            }
        })
        .await
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
        self.retrying(|| async {
            let Some(seen) = self.get(items::pay_key_key(user, key)).await? else {
                return Ok(None);
            };
            let sid = SessionId::parse(get_s(&seen, "session")?)
                .map_err(|_| items::corrupt("pay record", "session"))?;
            self.session_once(sid, now).await
        })
        .await
    }

    async fn session(&self, id: SessionId, now: u64) -> Result<Option<Session>, StoreError> {
        self.retrying(|| self.session_once(id, now)).await
    }

    async fn device_call(
        &self,
        call: &DeviceCall,
        encode: &ResponseEncoder,
    ) -> Result<DeviceCallOutcome, StoreError> {
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

    async fn audit(&self) -> Result<Audit, StoreError> {
        self.retrying(|| self.audit_once()).await
    }
}
