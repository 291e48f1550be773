//! Machine requests: the key-version and sequence-number checks ([`check_call`]), the
//! start/report decision
//! ([`decide_session_op`]), and the answer saved with the operation's writes.

use aws_sdk_dynamodb::types::TransactWriteItem;
use blepay_core::{CloseReason, LedgerEntry, Session, SessionStatus, Wallet};
use blepay_store::decide::{
    SeqCheck, SessionChange, SessionOpFacts, check_call, completed, decide_session_op,
    needs_wallet, rotation_completes,
};
use blepay_store::{
    DeviceCall, DeviceCallOutcome, DeviceOp, DeviceOpResult, ResponseEncoder, SavedAnswer,
    StoreError,
};

use super::attempts::Tx;
use crate::DynamoStore;
use crate::items::{
    ACTIVE_PARTITION, DUE_AT, DUE_PK, DeviceItem, Failure, Item, Upd, b, device_from_item,
    device_key, keys_cond, ledger_item, n, put_new, s, session_from_item, session_key,
    telemetry_attr, wallet_from_item, wallet_key,
};

impl DynamoStore {
    pub(super) async fn device_call_once(
        &self,
        call: &DeviceCall,
        encode: &ResponseEncoder,
    ) -> Result<DeviceCallOutcome, Failure> {
        // The one read: the device item (sequence state, lock, grant), plus the session named by a
        // start or report.
        let (device, session) = match &call.op {
            DeviceOp::Poll | DeviceOp::Press | DeviceOp::Heartbeat(_) | DeviceOp::Invalid(_) => {
                (self.query_device(call.device).await?, None)
            }
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
        match check_call(&device.record, device.last_call(), call)? {
            SeqCheck::Fresh => {}
            SeqCheck::KeyVersionRefused => return Ok(DeviceCallOutcome::KeyVersionRefused),
            // A retry gets its saved answer and writes nothing: anyone who saw the frame can
            // send it again, so it is no sign of life (`last_seen` moves only with a fresh
            // sequence number).
            SeqCheck::Retry(answer) => return Ok(DeviceCallOutcome::Retry(answer)),
            SeqCheck::Replayed { last_seq } => {
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
        let (now, timeout) = (call.now, call.active_timeout_secs);
        let mut session = session.map(|i| session_from_item(&i)).transpose()?;
        if matches!(call.op, DeviceOp::Press) {
            // The fact is the machine's open session; the device item keeps it whole.
            session = device.open.clone();
            if let Some(o) = session
                .as_ref()
                .filter(|o| o.is_due_to_time_out(now, timeout))
            {
                // Check the overdue guess on the session item itself (an item written before the
                // snapshot kept report times has none).
                session = self
                    .get(session_key(o.id))
                    .await?
                    .map(|i| session_from_item(&i))
                    .transpose()?;
            }
        }
        // An ACTIVE session past its report deadline is closed by timeout first, on its own.
        if let Some(s) = session
            .as_ref()
            .filter(|s| s.device_id == call.device && s.is_due_to_time_out(now, timeout))
        {
            self.time_out_one(s, now, timeout).await?;
            return Err(Failure::Contention(
                "timed out a silent session; read again".into(),
            ));
        }
        let wallet = match &session {
            Some(s) if needs_wallet(&call.op, s, now, timeout) => {
                Some(wallet_from_item(self.get(wallet_key(&s.user_id)).await?.as_ref())?.wallet)
            }
            _ => None,
        };
        match self
            .device_decide_and_write(call, encode, &device, session, wallet, false)
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
    pub(super) async fn device_call_guessed(
        &self,
        call: &DeviceCall,
        encode: &ResponseEncoder,
    ) -> Result<Option<DeviceCallOutcome>, Failure> {
        let Some(device) = self.shadow.get(call.device) else {
            return Ok(None);
        };
        // Retries, replays and refused key versions are answered from a read, never from a guess.
        if !matches!(
            check_call(&device.record, device.last_call(), call),
            Ok(SeqCheck::Fresh)
        ) {
            return Ok(None);
        }
        let (now, timeout) = (call.now, call.active_timeout_secs);
        let open = device.open.as_ref();
        let session = match (&call.op, open) {
            (DeviceOp::Poll, open) => {
                if open.is_some_and(|o| o.is_due_to_expire(now)) {
                    return Ok(None);
                }
                None
            }
            // A press decides on the open session the device item holds: no session, an
            // AUTHORIZED one in time, an ACTIVE one not overdue (the write checks id and status).
            (DeviceOp::Heartbeat(_) | DeviceOp::Invalid(_), _) | (DeviceOp::Press, None) => None,
            (DeviceOp::Press, Some(o))
                if (o.status == SessionStatus::Authorized && now < o.expires_at)
                    || (o.status == SessionStatus::Active
                        && !o.is_due_to_time_out(now, timeout)) =>
            {
                Some(o.clone())
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
                if o.id == *session
                    && o.status == SessionStatus::Active
                    && !o.is_due_to_time_out(now, timeout) =>
            {
                Some(o.clone())
            }
            _ => return Ok(None),
        };
        match self
            .device_decide_and_write(call, encode, &device, session, None, true)
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
    pub(super) async fn device_decide_and_write(
        &self,
        call: &DeviceCall,
        encode: &ResponseEncoder,
        device: &DeviceItem,
        session: Option<Session>,
        wallet: Option<Wallet>,
        guessed: bool,
    ) -> Result<Option<DeviceCallOutcome>, Failure> {
        let now = call.now;
        let mut telemetry = (device.telemetry.clone(), device.telemetry_at);
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
            DeviceOp::Heartbeat(t) => {
                device_changes = device_changes
                    .set("telemetry = :telemetry, telemetry_at = :telemetry_at")
                    .val(":telemetry", telemetry_attr(t))
                    .val(":telemetry_at", n(now));
                telemetry = (Some(t.clone()), Some(now));
                DeviceOpResult::Ack
            }
            // Runs nothing; the refusal is saved with the sequence number like any answer.
            DeviceOp::Invalid(reason) => DeviceOpResult::FrameInvalid(reason.clone()),
            DeviceOp::Press | DeviceOp::Start { .. } | DeviceOp::Report { .. } => {
                let decision = decide_session_op(
                    &call.op,
                    SessionOpFacts {
                        device: call.device,
                        session,
                        wallet,
                        now,
                        active_timeout_secs: call.active_timeout_secs,
                    },
                )?;
                if let Some((expired, settlement)) = &decision.closed {
                    // An overdue session expires first (as any read of it would).
                    let changes = self.close_writes(expired, *settlement, now, &mut writes)?;
                    device_changes = device_changes.merge(changes);
                    open_after = None;
                }
                let changes = self.session_change_writes(
                    &decision.change,
                    now,
                    &mut writes,
                    &mut open_after,
                )?;
                device_changes = device_changes.merge(changes);
                decision.result
            }
        };
        // The answer is encoded before anything is written, and saved with the operation.
        let answer = encode(&result);
        let upd = answer_update(call, device, &answer, seen, guessed);
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
        let mut record = device.record.clone();
        if rotation_completes(&device.record, call) {
            record.keys = completed(&device.record.keys);
        }
        self.shadow.put(DeviceItem {
            record,
            last_seq: Some(call.seq),
            last_digest: Some(call.digest.to_vec()),
            last_answer: Some(answer.clone()),
            last_seen: Some(seen),
            open: open_after,
            telemetry: telemetry.0,
            telemetry_at: telemetry.1,
        });
        if let DeviceOp::Heartbeat(t) = &call.op {
            // The history's sample, right after the heartbeat's own write (docs/dynamodb.md
            // "The operator console": not in a transaction, which would double the heartbeat's
            // write units); a chart point lost to a failure here does not fail the heartbeat.
            self.put_sample(call.device, call.seq, now, t).await;
        }
        Ok(Some(DeviceCallOutcome::Fresh(answer)))
    }

    /// The writes of a late final report ([`SessionChange::LateReport`]): the session's new units,
    /// amount and record, and with `capture` the wallet's debit (only from money that is there)
    /// and the `LATE_CAPTURE` ledger entry.
    fn late_report_writes(
        &self,
        late: &Session,
        capture: Option<&LedgerEntry>,
        now: u64,
        writes: &mut Vec<TransactWriteItem>,
    ) -> Result<Upd, Failure> {
        let Some(report) = late.late_report else {
            return Err(StoreError::Internal("a late report without its record".into()).into());
        };
        writes.push(
            Upd::new(session_key(late.id))
                .set("units = :units, amount = :amount")
                .set("late_units = :units, late_at = :at, late_charged = :charged")
                // Closed by the server (timeout, or an operator's hand close) as it was read.
                .cond("#status = :settled AND closed_by = :closed_by")
                .cond("attribute_not_exists(late_at) AND units <= :units")
                .name("#status", "status")
                .val(":settled", s(SessionStatus::Settled.as_str()))
                .val(
                    ":closed_by",
                    s(late.closed_by.unwrap_or(CloseReason::Timeout).as_str()),
                )
                .val(":units", n(late.units.get()))
                .val(":amount", n(late.amount.minor()))
                .val(":at", n(report.at))
                .val(":charged", n(report.charged.minor()))
                .into_transact(&self.table)?,
        );
        if let Some(entry) = capture {
            writes.push(
                Upd::new(wallet_key(&late.user_id))
                    .set("available = available - :c, spent = spent + :c")
                    .cond("available >= :c")
                    .val(":c", n(entry.amount.minor()))
                    .into_transact(&self.table)?,
            );
            writes.push(put_new(
                &self.table,
                ledger_item(entry, now, Some(late.id), ""),
            )?);
            super::fleet::push_spend(
                &self.table,
                writes,
                &late.user_id,
                blepay_store::spending_day(late.created_at),
                entry.amount.minor(),
            )?;
        }
        Ok(Upd::default())
    }

    /// The writes of a start's or report's [`SessionChange`]; returns the device changes to merge
    /// into the device's update. `open` becomes the device's open session after the writes.
    fn session_change_writes(
        &self,
        change: &SessionChange,
        now: u64,
        writes: &mut Vec<TransactWriteItem>,
        open: &mut Option<Session>,
    ) -> Result<Upd, Failure> {
        Ok(match change {
            SessionChange::None => Upd::default(),
            SessionChange::Started(started) => {
                let sid = started.id.to_string();
                // It moves to the ACTIVE partition of the `due` GSI, by its report base.
                writes.push(
                    Upd::new(session_key(started.id))
                        .set("#status = :status, started_at = :t")
                        .set(format!("{DUE_PK} = :active, {DUE_AT} = :t"))
                        .cond("#status = :prev")
                        .name("#status", "status")
                        .val(":status", s(started.status.as_str()))
                        .val(":prev", s(SessionStatus::Authorized.as_str()))
                        .val(":active", s(ACTIVE_PARTITION))
                        .val(":t", n(now))
                        .into_transact(&self.table)?,
                );
                // The hold is no longer an expiry candidate.
                writes.push(
                    Upd::new(wallet_key(&started.user_id))
                        .remove("holds.#sid")
                        .name("#sid", &sid)
                        .into_transact(&self.table)?,
                );
                *open = Some(started.clone());
                Upd::default()
                    .set("#open.#status = :status, #open.started_at = :t")
                    .cond("#open.id = :open_sid")
                    .name("#open", "open")
                    .name("#status", "status")
                    .val(":status", s(started.status.as_str()))
                    .val(":t", n(now))
                    .val(":open_sid", s(&sid))
            }
            SessionChange::Progressed(progressed) => {
                // The outcome holds for any count stored so far up to this one.
                // The report moves its report deadline: the GSI key and the device's snapshot
                // follow.
                let t = progressed.last_report_at.unwrap_or(now);
                writes.push(
                    Upd::new(session_key(progressed.id))
                        .set("units = :units, amount = :amount, last_report_at = :t")
                        .set(format!("{DUE_PK} = :active_pk, {DUE_AT} = :t"))
                        .cond("#status = :active AND units <= :units")
                        .name("#status", "status")
                        .val(":active", s(SessionStatus::Active.as_str()))
                        .val(":active_pk", s(ACTIVE_PARTITION))
                        .val(":units", n(progressed.units.get()))
                        .val(":amount", n(progressed.amount.minor()))
                        .val(":t", n(t))
                        .into_transact(&self.table)?,
                );
                *open = Some(progressed.clone());
                Upd::default()
                    .set("#open.units = :p_units, #open.amount = :p_amount")
                    .set("#open.last_report_at = :p_t")
                    .cond("#open.id = :open_sid")
                    .name("#open", "open")
                    .val(":p_units", n(progressed.units.get()))
                    .val(":p_amount", n(progressed.amount.minor()))
                    .val(":p_t", n(t))
                    .val(":open_sid", s(progressed.id.to_string()))
            }
            SessionChange::LateReport {
                session: late,
                capture,
                wallet: _,
            } => self.late_report_writes(late, capture.as_ref(), now, writes)?,
            SessionChange::Settled(settled, settlement) => {
                *open = None;
                self.close_writes(settled, *settlement, now, writes)?
            }
        })
    }
}

/// The device's update that saves a fresh request: its sequence number, digest and answer, and
/// `last_seen`; conditioned on the sequence state read and on the key version the frame verified
/// under still being the registered one (and, for a decision from a guess, on every other
/// guessed fact).
fn answer_update(
    call: &DeviceCall,
    device: &DeviceItem,
    answer: &SavedAnswer,
    seen: u64,
    guessed: bool,
) -> Upd {
    let mut upd = Upd::new(device_key(call.device))
        .set("last_seq = :seq, last_digest = :digest, last_response = :body, last_seen = :seen")
        .val(":seq", n(call.seq))
        .val(":digest", b(&call.digest))
        .val(":body", b(&answer.frame))
        .val(":seen", n(seen))
        .cond("key_version = :key_version")
        .val(":key_version", n(call.key_version.get()));
    // The key state the call was accepted under (revoked, rotated since: the condition fails and
    // the read refuses it); the first frame under a pending key makes it the current one.
    upd = keys_cond(upd, &device.record.keys);
    if rotation_completes(&device.record, call) {
        upd = upd
            .set("key_epoch = :key_epoch_new")
            .remove("key_pending")
            .val(":key_epoch_new", n(call.key_epoch.get()));
    }
    upd = match &answer.code {
        Some(code) => upd.set("last_code = :code").val(":code", s(code)),
        None => upd.remove("last_code"),
    };
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
    upd
}
