//! The operations, each inside the caller's transaction: gather the facts, call the decision
//! (`blepay_store::decide`), persist what it returns.

use blepay_core::{DeviceId, IdempotencyKey, Session, SessionId, Settlement, UserId, Wallet};
use blepay_store::decide::{
    AuditTally, PayDecision, PayFacts, PriorPay, SeqCheck, SessionChange, SessionOpFacts,
    check_call, completed, decide_pay, decide_session_op, needs_wallet, rotation_completes,
};
use blepay_store::{
    Audit, DeviceCall, DeviceCallOutcome, DeviceOp, DeviceOpResult, DeviceStatus, PayCommand,
    PayOutcome, ResponseEncoder, SavedAnswer, StoreError,
};
use rusqlite::{Connection, params};

use crate::convert::{Cached, amount_col, db, parse_col, ts, wallet_rule};
use crate::rows::{
    Idempotency, advert_used, count_opened_since, count_unstarted, insert_session, load_device,
    load_idempotency, load_open_session, load_session, load_session_of_device, load_wallet,
    mark_advert_used, open_session_of, query_sessions, save_idempotency, save_session_state,
    save_telemetry, save_wallet, write_entry, write_entry_by,
};

// ---------------------------------------------------------------------------------------------
// Pay
// ---------------------------------------------------------------------------------------------

pub(crate) fn pay_scope(user: &UserId) -> String {
    format!("pay:{user}")
}

/// The session an earlier pay's key record names, expired first if it was due.
pub(crate) fn session_of_record(
    c: &Connection,
    seen: &Idempotency,
    key: &IdempotencyKey,
    now: u64,
) -> Result<Session, StoreError> {
    let id = seen.session_id()?;
    expire_sessions(c, Due::Only(id), now)?;
    load_session(c, id)?
        .ok_or_else(|| StoreError::Corrupt(format!("pay key {key} names a missing session {id}")))
}

pub(crate) fn pay(c: &Connection, cmd: &PayCommand) -> Result<PayOutcome, StoreError> {
    // The facts, overdue sessions (on this machine, or holding this user's money) expired first.
    let scope = pay_scope(&cmd.user);
    let fingerprint = cmd.fingerprint();
    let prior = match load_idempotency(c, &scope, &cmd.key)? {
        None => None,
        Some(seen) if !fingerprint.matches_stored(&seen.fingerprint) => Some(PriorPay::Other),
        Some(seen) => Some(PriorPay::Same(session_of_record(
            c, &seen, &cmd.key, cmd.now,
        )?)),
    };
    expire_sessions(c, Due::OfDevice(cmd.device), cmd.now)?;
    expire_sessions(c, Due::OfUser(&cmd.user), cmd.now)?;
    let device = load_device(c, cmd.device)?
        .map(|row| -> Result<DeviceStatus, StoreError> {
            Ok(row.status(open_session_of(c, cmd.device)?))
        })
        .transpose()?;
    let facts = PayFacts {
        cmd,
        device: device.as_ref(),
        prior,
        advert_used: advert_used(c, cmd.device, cmd.slot, cmd.use_counter)?,
        wallet: load_wallet(c, &cmd.user)?,
        unstarted: count_unstarted(c, &cmd.user)?,
        opened_in_window: count_opened_since(c, &cmd.user, cmd.limits.window_start(cmd.now))?,
        // The user's overdue sessions were expired above.
        spending: crate::fleet::spending_unexpired(c, &cmd.user, cmd.now)?,
    };

    let new = match decide_pay(&facts)? {
        PayDecision::Answer(outcome) => return Ok(outcome),
        PayDecision::Create(new) => new,
    };
    insert_session(c, &new.session)?;
    mark_advert_used(c, &new.session, cmd.slot)?;
    save_idempotency(
        c,
        &scope,
        &cmd.key,
        &fingerprint.to_string(),
        Some(new.session.id.as_bytes()),
        cmd.now,
    )?;
    write_entry(c, &new.hold_entry, cmd.now, Some(new.session.id))?;
    save_wallet(c, &cmd.user, &new.wallet)?;
    Ok(PayOutcome::Created(new.session))
}

// ---------------------------------------------------------------------------------------------
// Machine requests
// ---------------------------------------------------------------------------------------------

/// A machine request: the key-version and sequence-number checks, the operation, and the answer `encode` produces
/// saved with the request, all in the caller's transaction.
pub(crate) fn device_call(
    c: &Connection,
    call: &DeviceCall,
    encode: &ResponseEncoder,
) -> Result<DeviceCallOutcome, StoreError> {
    let Some(device) = load_device(c, call.device)? else {
        return Ok(DeviceCallOutcome::DeviceUnknown);
    };
    let completes = rotation_completes(&device.record, call);
    match check_call(&device.record, device.last, call)? {
        SeqCheck::Fresh => {}
        SeqCheck::KeyVersionRefused => return Ok(DeviceCallOutcome::KeyVersionRefused),
        // A byte-identical retry is no sign of life (anyone who saw the frame can send it again):
        // only a fresh sequence number refreshes `last_seen` (`save_answer`).
        SeqCheck::Retry(answer) => return Ok(DeviceCallOutcome::Retry(answer)),
        SeqCheck::Replayed { last_seq } => return Ok(DeviceCallOutcome::Replayed { last_seq }),
    }
    if completes {
        // The first frame under the pending key: it is the device's key from now on, and the
        // old one is refused for good (docs/protocol.md §1.1).
        crate::keys::save_keys(c, call.device, &completed(&device.record.keys))?;
    }
    let result = run_op(c, call)?;
    let answer = encode(&result);
    save_answer(c, call, &answer)?;
    Ok(DeviceCallOutcome::Fresh(answer))
}

fn run_op(c: &Connection, call: &DeviceCall) -> Result<DeviceOpResult, StoreError> {
    let now = call.now;
    let session = match &call.op {
        DeviceOp::Poll => {
            expire_sessions(c, Due::OfDevice(call.device), now)?;
            return Ok(DeviceOpResult::Grants(query_sessions(
                c,
                // The IN term lets SQLite use the partial index of open sessions
                // (`sessions_one_open_per_device`) instead of every session of the machine.
                "device_id = ?1 AND status IN ('AUTHORIZED', 'ACTIVE') AND status = 'AUTHORIZED'
                 ORDER BY created_at, id",
                [call.device.as_bytes()],
            )?));
        }
        DeviceOp::Heartbeat(telemetry) => {
            save_telemetry(c, call.device, telemetry, now)?;
            return Ok(DeviceOpResult::Ack);
        }
        DeviceOp::Invalid(reason) => return Ok(DeviceOpResult::FrameInvalid(reason.clone())),
        DeviceOp::Press => load_open_session(c, call.device)?,
        DeviceOp::Start { session } | DeviceOp::Report { session, .. } => {
            load_session_of_device(c, *session, call.device)?
        }
    };
    let wallet = match &session {
        Some(s) if needs_wallet(&call.op, s, now, call.active_timeout_secs) => {
            Some(load_wallet(c, &s.user_id)?)
        }
        _ => None,
    };
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
    if let Some((closed, settlement)) = &decision.closed {
        save_session_state(c, closed)?;
        close_hold(c, closed, *settlement, now)?;
    }
    match &decision.change {
        SessionChange::None => {}
        SessionChange::Started(s) | SessionChange::Progressed(s) => save_session_state(c, s)?,
        SessionChange::Settled(s, settlement) => {
            save_session_state(c, s)?;
            close_hold(c, s, *settlement, now)?;
        }
        SessionChange::LateReport {
            session,
            capture,
            wallet,
        } => {
            save_session_state(c, session)?;
            if let Some(entry) = capture {
                write_entry(c, entry, now, Some(session.id))?;
                save_wallet(c, &session.user_id, wallet)?;
            }
        }
    }
    Ok(decision.result)
}

fn save_answer(c: &Connection, call: &DeviceCall, answer: &SavedAnswer) -> Result<(), StoreError> {
    c.exec_cached(
        "UPDATE devices SET last_seq = ?1, last_digest = ?2, last_response = ?3,
                last_response_code = ?4, last_seen = max(coalesce(last_seen, ?5), ?5)
         WHERE id = ?6",
        params![
            call.seq,
            &call.digest[..],
            &answer.frame,
            answer.code.as_deref(),
            ts(call.now)?,
            call.device.as_bytes()
        ],
    )
    .map_err(db)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Expiry
// ---------------------------------------------------------------------------------------------

/// Which AUTHORIZED sessions [`expire_sessions`] looks at.
#[derive(Clone, Copy)]
pub(crate) enum Due<'a> {
    All,
    OfDevice(DeviceId),
    OfUser(&'a UserId),
    Only(SessionId),
}

/// Whether [`expire_sessions`] would expire anything of `due` at `now` (a read's test: only then
/// does it need the writer). Not for [`Due::All`], which is the sweeper's and always writes.
pub(crate) fn any_due(c: &Connection, due: Due<'_>, now: u64) -> Result<bool, StoreError> {
    const DUE: &str = "status = 'AUTHORIZED' AND expires_at <= ?2";
    let now = ts(now)?;
    let found = match due {
        Due::All => return Ok(true),
        Due::OfDevice(d) => exists(c, &format!("device_id = ?1 AND {DUE}"), d.to_bytes(), now),
        Due::OfUser(u) => exists(c, &format!("user_id = ?1 AND {DUE}"), u.as_str(), now),
        Due::Only(s) => exists(c, &format!("id = ?1 AND {DUE}"), s.to_bytes(), now),
    };
    found.map_err(db)
}

fn exists(
    c: &Connection,
    filter: &str,
    key: impl rusqlite::ToSql,
    now: i64,
) -> rusqlite::Result<bool> {
    c.prepare_cached(&format!(
        "SELECT EXISTS (SELECT 1 FROM sessions WHERE {filter})"
    ))?
    .query_row(params![key, now], |r| r.get(0))
}

/// Expire every selected AUTHORIZED session whose start deadline is `<= now`, releasing its hold.
/// Returns the sessions expired, as saved.
pub(crate) fn expire_sessions(
    c: &Connection,
    due: Due<'_>,
    now: u64,
) -> Result<Vec<Session>, StoreError> {
    let (device, user, id) = match due {
        Due::All => (None, None, None),
        Due::OfDevice(d) => (Some(d.to_bytes()), None, None),
        Due::OfUser(u) => (None, Some(u.as_str()), None),
        Due::Only(s) => (None, None, Some(s.to_bytes())),
    };
    let sessions = query_sessions(
        c,
        "status = 'AUTHORIZED' AND expires_at <= ?1
         AND (?2 IS NULL OR device_id = ?2) AND (?3 IS NULL OR user_id = ?3) AND (?4 IS NULL OR id = ?4)",
        params![ts(now)?, device, user, id],
    )?;
    let mut expired = Vec::new();
    for mut s in sessions {
        if let Some(settlement) = s.expire(now) {
            save_session_state(c, &s)?;
            close_hold(c, &s, settlement, now)?;
            let logged = s.clone();
            crate::writer::after_commit(move || blepay_store::closed::log_expired(&logged));
            expired.push(s);
        }
    }
    Ok(expired)
}

/// Close by timeout every ACTIVE session whose report deadline is `<= now` (the rule is the
/// core's [`Session::time_out`]), settling its hold. Returns the sessions closed, as saved.
pub(crate) fn time_out_sessions(
    c: &Connection,
    now: u64,
    active_timeout_secs: u64,
) -> Result<Vec<Session>, StoreError> {
    let cutoff = now.saturating_sub(active_timeout_secs);
    let sessions = query_sessions(
        c,
        // Reports follow the start, so this is the later of the two (`sessions_active_by_report`).
        "status = 'ACTIVE' AND coalesce(last_report_at, started_at) <= ?1",
        params![ts(cutoff)?],
    )?;
    let mut closed = Vec::new();
    for mut s in sessions {
        if let Some(settlement) = s.time_out(now, active_timeout_secs) {
            save_session_state(c, &s)?;
            close_hold(c, &s, settlement, now)?;
            let logged = s.clone();
            crate::writer::after_commit(move || blepay_store::closed::log_timed_out(&logged));
            closed.push(s);
        }
    }
    Ok(closed)
}

/// Apply a session's settlement (capture and/or release) to its user's wallet and the ledger.
pub(crate) fn close_hold(
    c: &Connection,
    s: &Session,
    settlement: Settlement,
    now: u64,
) -> Result<(), StoreError> {
    close_hold_by(c, s, settlement, now, None)
}

/// [`close_hold`], its ledger rows naming `actor` (an operator's hand close).
pub(crate) fn close_hold_by(
    c: &Connection,
    s: &Session,
    settlement: Settlement,
    now: u64,
    actor: Option<&str>,
) -> Result<(), StoreError> {
    let (wallet, entries) = load_wallet(c, &s.user_id)?
        .settle(&s.user_id, settlement.hold, settlement.capture)
        .map_err(wallet_rule)?;
    save_wallet(c, &s.user_id, &wallet)?;
    for entry in &entries {
        write_entry_by(c, entry, now, Some(s.id), actor)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Audit
// ---------------------------------------------------------------------------------------------

/// Every ledger entry, wallet and open hold, tallied by [`AuditTally`].
pub(crate) fn audit(c: &Connection) -> Result<Audit, StoreError> {
    let mut tally = AuditTally::default();
    let mut ledger = c
        .prepare("SELECT kind, debit, credit, amount FROM ledger")
        .map_err(db)?;
    let mut rows = ledger.query([]).map_err(db)?;
    while let Some(r) = rows.next().map_err(db)? {
        let (kind, debit, credit): (String, String, String) = (
            r.get(0).map_err(db)?,
            r.get(1).map_err(db)?,
            r.get(2).map_err(db)?,
        );
        tally.ledger_entry(&kind, &debit, &credit, r.get(3).map_err(db)?);
    }
    let mut wallets = c
        .prepare("SELECT user_id, available, held, spent, refunded FROM wallets")
        .map_err(db)?;
    let rows = wallets
        .query_map([], |r| {
            Ok((
                parse_col(r, 0, |s: String| UserId::parse(&s))?,
                Wallet {
                    available: amount_col(r, 1)?,
                    held: amount_col(r, 2)?,
                    spent: amount_col(r, 3)?,
                    refunded: amount_col(r, 4)?,
                },
            ))
        })
        .map_err(db)?;
    for row in rows {
        let (user, wallet) = row.map_err(db)?;
        tally.wallet(user, &wallet);
    }
    let mut holds = c
        .prepare("SELECT hold FROM sessions WHERE status IN ('AUTHORIZED', 'ACTIVE')")
        .map_err(db)?;
    let rows = holds.query_map([], |r| amount_col(r, 0)).map_err(db)?;
    for hold in rows {
        tally.open_hold(hold.map_err(db)?);
    }
    let mut refunds = c
        .prepare("SELECT amount, refunded FROM sessions WHERE refunded > 0")
        .map_err(db)?;
    let rows = refunds
        .query_map([], |r| Ok((amount_col(r, 0)?, amount_col(r, 1)?)))
        .map_err(db)?;
    for row in rows {
        let (captured, refunded) = row.map_err(db)?;
        tally.session_refunds(captured, refunded);
    }
    for t in crate::topups::all_topups(c)? {
        tally.provider_topup(&t);
    }
    tally.finish()
}
