//! Machine requests: the sequence-number check ([`check_seq`]), the start/report decision
//! ([`decide_session_op`]), and the answer saved with the operation's writes.

use aws_sdk_dynamodb::types::TransactWriteItem;
use blepay_core::{Session, SessionStatus};
use blepay_store::decide::{SeqCheck, SessionChange, check_seq, decide_session_op};
use blepay_store::{
    DeviceCall, DeviceCallOutcome, DeviceOp, DeviceOpResult, ResponseEncoder, SavedAnswer,
    StoreError,
};

use super::attempts::Tx;
use crate::DynamoStore;
use crate::items::{
    DUE_AT, DUE_PK, DeviceItem, Failure, Item, Upd, b, device_from_item, device_key, n, s,
    session_from_item, session_key, wallet_key,
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
            DeviceOp::Poll => (self.query_device(call.device).await?, None),
            DeviceOp::Press | DeviceOp::Heartbeat(_) => {
                return Err(StoreError::Internal("not yet".into()).into());
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
        match check_seq(device.last_call(), call.seq, &call.digest)? {
            SeqCheck::Fresh => {}
            SeqCheck::Retry(answer) => return self.answer_retry(call, &device, answer).await,
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
    pub(super) async fn device_call_guessed(
        &self,
        call: &DeviceCall,
        encode: &ResponseEncoder,
    ) -> Result<Option<DeviceCallOutcome>, Failure> {
        let Some(device) = self.shadow.get(call.device) else {
            return Ok(None);
        };
        // Retries and replays are answered from a read, never from a guess.
        if !matches!(
            check_seq(device.last_call(), call.seq, &call.digest),
            Ok(SeqCheck::Fresh)
        ) {
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
    pub(super) async fn device_decide_and_write(
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
            DeviceOp::Press | DeviceOp::Heartbeat(_) => {
                return Err(StoreError::Internal("not yet".into()).into());
            }
            DeviceOp::Start { .. } | DeviceOp::Report { .. } => {
                let decision = decide_session_op(&call.op, call.device, session, now);
                if let Some((expired, settlement)) = &decision.expired {
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
        let mut upd = Upd::new(device_key(call.device))
            .set("last_seq = :seq, last_digest = :digest, last_response = :body, last_seen = :seen")
            .val(":seq", n(call.seq))
            .val(":digest", b(&call.digest))
            .val(":body", b(&answer.frame))
            .val(":seen", n(seen));
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
            last_answer: Some(answer.clone()),
            last_seen: Some(seen),
            open: open_after,
        });
        Ok(Some(DeviceCallOutcome::Fresh(answer)))
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
                writes.push(
                    Upd::new(session_key(started.id))
                        .set("#status = :status, started_at = :t")
                        .remove(format!("{DUE_PK}, {DUE_AT}"))
                        .cond("#status = :prev")
                        .name("#status", "status")
                        .val(":status", s(started.status.as_str()))
                        .val(":prev", s(SessionStatus::Authorized.as_str()))
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
                writes.push(
                    Upd::new(session_key(progressed.id))
                        .set("units = :units, amount = :amount")
                        .cond("#status = :active AND units <= :units")
                        .name("#status", "status")
                        .val(":active", s(SessionStatus::Active.as_str()))
                        .val(":units", n(progressed.units.get()))
                        .val(":amount", n(progressed.amount.minor()))
                        .into_transact(&self.table)?,
                );
                Upd::default()
            }
            SessionChange::Settled(settled, settlement) => {
                *open = None;
                self.close_writes(settled, *settlement, now, writes)?
            }
        })
    }

    /// A retry of the last request: its saved answer; the message still counts as a sign of life.
    pub(super) async fn answer_retry(
        &self,
        call: &DeviceCall,
        device: &DeviceItem,
        answer: SavedAnswer,
    ) -> Result<DeviceCallOutcome, Failure> {
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
        Ok(DeviceCallOutcome::Retry(answer))
    }
}
