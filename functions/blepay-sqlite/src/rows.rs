//! Loading and saving rows: each function is one statement inside the caller's transaction.

use blepay_core::{
    CloseReason, Currency, DeviceId, DeviceName, IdempotencyKey, KeyVersion, LateReport,
    LedgerEntry, Session, SessionId, SessionStatus, Slot, Tariff, Telemetry, UnitName, Units,
    UseCounter, UserId, Wallet,
};
use blepay_store::decide::LastCall;
use blepay_store::{DeviceKeys, DeviceRecord, DeviceStatus, SavedAnswer, ServiceState, StoreError};
use rusqlite::types::Type;
use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::convert::{
    BadValue, Cached, amount_col, db, parse_col, ts, units_from_sql, units_to_sql,
};

pub(crate) struct DeviceRow {
    pub(crate) record: DeviceRecord,
    /// The last accepted request and its saved answer.
    pub(crate) last: Option<LastCall>,
    pub(crate) last_seen: Option<u64>,
    pub(crate) telemetry: Option<Telemetry>,
    pub(crate) telemetry_at: Option<u64>,
}

impl DeviceRow {
    /// The machine as the pay decision and the operators see it.
    pub(crate) fn status(self, open_session: Option<SessionId>) -> DeviceStatus {
        DeviceStatus {
            device: self.record,
            last_seen: self.last_seen,
            open_session,
            telemetry: self.telemetry,
            telemetry_at: self.telemetry_at,
        }
    }
}

pub(crate) fn load_device(c: &Connection, id: DeviceId) -> Result<Option<DeviceRow>, StoreError> {
    let Some(mut row) = load_device_row(c, id)? else {
        return Ok(None);
    };
    row.record.service_state = crate::fleet::load_service_state(c, id)?;
    Ok(Some(row))
}

fn load_device_row(c: &Connection, id: DeviceId) -> Result<Option<DeviceRow>, StoreError> {
    c.row_cached(
        "SELECT id, name, price_per_unit, unit_name, currency, key_version, created_at,
                last_seq, last_digest, last_response, last_response_code, last_seen,
                telemetry_at, telemetry_firmware, telemetry_faults, telemetry_signal,
                telemetry_uptime, telemetry_boots, telemetry_outbox, telemetry_lifetime_units
         FROM devices WHERE id = ?1",
        [id.as_bytes()],
        |r| {
            Ok(DeviceRow {
                record: DeviceRecord {
                    id: DeviceId::from_bytes(r.get(0)?),
                    name: parse_col(r, 1, |s: String| DeviceName::parse(&s))?,
                    tariff: Tariff {
                        price_per_unit: amount_col(r, 2)?,
                        unit_name: parse_col(r, 3, |s: String| UnitName::parse(&s))?,
                        currency: parse_col(r, 4, |s: String| Currency::parse(&s))?,
                    },
                    key_version: parse_col(r, 5, KeyVersion::new)?,
                    created_at: r.get(6)?,
                    service_state: ServiceState::InService,
                    keys: DeviceKeys::default(),
                },
                last: last_call(r)?,
                last_seen: r.get(11)?,
                telemetry_at: r.get(12)?,
                telemetry: telemetry(r)?,
            })
        },
    )
    .optional()
    .map_err(db)?
    .map(|mut row| -> Result<DeviceRow, StoreError> {
        row.record.keys = crate::keys::load_keys(c, id)?.unwrap_or_default();
        Ok(row)
    })
    .transpose()
}

/// Columns 7 to 10 of [`load_device`]'s row: the last accepted request and its saved answer.
fn last_call(r: &Row<'_>) -> rusqlite::Result<Option<LastCall>> {
    let Some(seq) = r.get::<_, Option<u32>>(7)? else {
        return Ok(None);
    };
    let frame: Option<Vec<u8>> = r.get(9)?;
    let code: Option<String> = r.get(10)?;
    Ok(Some(LastCall {
        seq,
        digest: r.get(8)?,
        answer: frame.map(|frame| SavedAnswer { frame, code }),
    }))
}

/// Columns 12 to 19 of [`load_device`]'s row: the latest heartbeat's telemetry.
fn telemetry(r: &Row<'_>) -> rusqlite::Result<Option<Telemetry>> {
    telemetry_cols(r, 13)
}

/// Telemetry from 7 columns starting at `first`: firmware (NULL = none), faults (comma
/// separated), signal, uptime, boots, outbox, lifetime units.
pub(crate) fn telemetry_cols(r: &Row<'_>, first: usize) -> rusqlite::Result<Option<Telemetry>> {
    let Some(firmware_version) = r.get::<_, Option<String>>(first)? else {
        return Ok(None);
    };
    let faults: String = r.get(first + 1)?;
    let fault_codes = faults
        .split(',')
        .filter(|f| !f.is_empty())
        .map(str::parse)
        .collect::<Result<Vec<u32>, _>>()
        .map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(first + 1, Type::Text, Box::new(e))
        })?;
    Ok(Some(Telemetry {
        firmware_version,
        fault_codes,
        signal_quality: r.get(first + 2)?,
        uptime_secs: units_from_sql(r.get(first + 3)?).get(),
        boot_count: r.get(first + 4)?,
        outbox_depth: r.get(first + 5)?,
        lifetime_units: units_from_sql(r.get(first + 6)?).get(),
    }))
}

/// Fault codes as stored: comma separated.
pub(crate) fn faults_text(t: &Telemetry) -> String {
    t.fault_codes
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Save a heartbeat's telemetry, received at `at`: the device's latest, and a sample of its
/// history (`console::save_sample`).
pub(crate) fn save_telemetry(
    c: &Connection,
    device: DeviceId,
    t: &Telemetry,
    at: u64,
) -> Result<(), StoreError> {
    let faults = faults_text(t);
    c.exec_cached(
        "UPDATE devices SET telemetry_at = ?1, telemetry_firmware = ?2, telemetry_faults = ?3,
                telemetry_signal = ?4, telemetry_uptime = ?5, telemetry_boots = ?6,
                telemetry_outbox = ?7, telemetry_lifetime_units = ?8
         WHERE id = ?9",
        params![
            ts(at)?,
            t.firmware_version,
            faults,
            t.signal_quality,
            units_to_sql(Units::new(t.uptime_secs)),
            t.boot_count,
            t.outbox_depth,
            units_to_sql(Units::new(t.lifetime_units)),
            device.as_bytes()
        ],
    )
    .map_err(db)?;
    crate::console::save_sample(c, device, t, at)
}

/// The AUTHORIZED or ACTIVE session on `device`, whole.
pub(crate) fn load_open_session(
    c: &Connection,
    device: DeviceId,
) -> Result<Option<Session>, StoreError> {
    Ok(query_sessions(
        c,
        "device_id = ?1 AND status IN ('AUTHORIZED', 'ACTIVE')",
        [device.as_bytes()],
    )?
    .into_iter()
    .next())
}

pub(crate) fn open_session_of(
    c: &Connection,
    device: DeviceId,
) -> Result<Option<SessionId>, StoreError> {
    c.row_cached(
        "SELECT id FROM sessions WHERE device_id = ?1 AND status IN ('AUTHORIZED', 'ACTIVE')",
        [device.as_bytes()],
        |r| Ok(SessionId::from_bytes(r.get(0)?)),
    )
    .optional()
    .map_err(db)
}

pub(crate) const SESSION_COLUMNS: &str = "id, device_id, user_id, hold, price_per_unit, unit_name, currency, use_counter, \
                               status, units, amount, created_at, expires_at, started_at, ended_at, \
                               last_report_at, closed_by, late_units, late_at, late_charged, refunded";

pub(crate) fn session_from_row(r: &Row<'_>) -> rusqlite::Result<Session> {
    Ok(Session {
        id: SessionId::from_bytes(r.get(0)?),
        device_id: DeviceId::from_bytes(r.get(1)?),
        user_id: parse_col(r, 2, |s: String| UserId::parse(&s))?,
        hold: amount_col(r, 3)?,
        tariff: Tariff {
            price_per_unit: amount_col(r, 4)?,
            unit_name: parse_col(r, 5, |s: String| UnitName::parse(&s))?,
            currency: parse_col(r, 6, |s: String| Currency::parse(&s))?,
        },
        use_counter: UseCounter::new(r.get(7)?),
        status: parse_col(r, 8, |s: String| {
            SessionStatus::parse(&s).ok_or(BadValue("unknown session status"))
        })?,
        units: units_from_sql(r.get(9)?),
        amount: amount_col(r, 10)?,
        created_at: r.get(11)?,
        expires_at: r.get(12)?,
        started_at: r.get(13)?,
        ended_at: r.get(14)?,
        last_report_at: r.get(15)?,
        closed_by: r
            .get::<_, Option<String>>(16)?
            .map(|s| {
                CloseReason::parse(&s).ok_or_else(|| {
                    rusqlite::Error::FromSqlConversionFailure(
                        16,
                        rusqlite::types::Type::Text,
                        Box::new(BadValue("unknown close reason")),
                    )
                })
            })
            .transpose()?,
        late_report: match (r.get::<_, Option<i64>>(17)?, r.get::<_, Option<u64>>(18)?) {
            (Some(units), Some(at)) => Some(LateReport {
                units: units_from_sql(units),
                at,
                charged: amount_col(r, 19)?,
            }),
            _ => None,
        },
        refunded: amount_col(r, 20)?,
    })
}

pub(crate) fn query_sessions<P: rusqlite::Params>(
    c: &Connection,
    filter: &str,
    params: P,
) -> Result<Vec<Session>, StoreError> {
    let mut stmt = c
        .prepare_cached(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE {filter}"
        ))
        .map_err(db)?;
    let rows = stmt.query_map(params, session_from_row).map_err(db)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(db)
}

pub(crate) fn load_session(c: &Connection, id: SessionId) -> Result<Option<Session>, StoreError> {
    Ok(query_sessions(c, "id = ?1", [id.as_bytes()])?
        .into_iter()
        .next())
}

pub(crate) fn load_session_of_device(
    c: &Connection,
    id: SessionId,
    device: DeviceId,
) -> Result<Option<Session>, StoreError> {
    Ok(query_sessions(
        c,
        "id = ?1 AND device_id = ?2",
        params![id.as_bytes(), device.as_bytes()],
    )?
    .into_iter()
    .next())
}

/// How many AUTHORIZED sessions `user` holds (index `sessions_by_user`).
pub(crate) fn count_unstarted(c: &Connection, user: &UserId) -> Result<u32, StoreError> {
    count(
        c,
        "SELECT count(*) FROM sessions WHERE user_id = ?1 AND status = 'AUTHORIZED'",
        params![user.as_str()],
    )
}

/// How many sessions `user` opened at or after `since` (index `sessions_by_user_created`).
pub(crate) fn count_opened_since(
    c: &Connection,
    user: &UserId,
    since: u64,
) -> Result<u32, StoreError> {
    count(
        c,
        "SELECT count(*) FROM sessions WHERE user_id = ?1 AND created_at >= ?2",
        params![user.as_str(), ts(since)?],
    )
}

fn count<P: rusqlite::Params>(c: &Connection, sql: &str, p: P) -> Result<u32, StoreError> {
    let n: i64 = c.row_cached(sql, p, |r| r.get(0)).map_err(db)?;
    // More than 4 billion rows saturate: every limit is far below.
    Ok(u32::try_from(n).unwrap_or(u32::MAX))
}

pub(crate) fn insert_session(c: &Connection, s: &Session) -> Result<(), StoreError> {
    c.exec_cached(
        &format!(
            "INSERT INTO sessions ({SESSION_COLUMNS})
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15,
                     ?16, ?17, ?18, ?19, ?20, ?21)"
        ),
        params![
            s.id.as_bytes(),
            s.device_id.as_bytes(),
            s.user_id.as_str(),
            s.hold.minor(),
            s.tariff.price_per_unit.minor(),
            s.tariff.unit_name.as_str(),
            s.tariff.currency.as_str(),
            s.use_counter.get(),
            s.status.as_str(),
            units_to_sql(s.units),
            s.amount.minor(),
            ts(s.created_at)?,
            ts(s.expires_at)?,
            s.started_at.map(ts).transpose()?,
            s.ended_at.map(ts).transpose()?,
            s.last_report_at.map(ts).transpose()?,
            s.closed_by.map(CloseReason::as_str),
            s.late_report.map(|l| units_to_sql(l.units)),
            s.late_report.map(|l| ts(l.at)).transpose()?,
            s.late_report.map(|l| l.charged.minor()),
            s.refunded.minor(),
        ],
    )
    .map_err(db)?;
    Ok(())
}

/// Persist what the state machine may change: status, units, amount, start, report and end
/// times, why it closed and a late report.
pub(crate) fn save_session_state(c: &Connection, s: &Session) -> Result<(), StoreError> {
    c.exec_cached(
        "UPDATE sessions SET status = ?1, units = ?2, amount = ?3, started_at = ?4, ended_at = ?5,
                last_report_at = ?6, closed_by = ?7, late_units = ?8, late_at = ?9,
                late_charged = ?10, refunded = ?12
         WHERE id = ?11",
        params![
            s.status.as_str(),
            units_to_sql(s.units),
            s.amount.minor(),
            s.started_at.map(ts).transpose()?,
            s.ended_at.map(ts).transpose()?,
            s.last_report_at.map(ts).transpose()?,
            s.closed_by.map(CloseReason::as_str),
            s.late_report.map(|l| units_to_sql(l.units)),
            s.late_report.map(|l| ts(l.at)).transpose()?,
            s.late_report.map(|l| l.charged.minor()),
            s.id.as_bytes(),
            s.refunded.minor(),
        ],
    )
    .map_err(db)?;
    Ok(())
}

pub(crate) fn load_wallet(c: &Connection, user: &UserId) -> Result<Wallet, StoreError> {
    c.row_cached(
        "SELECT available, held, spent, refunded FROM wallets WHERE user_id = ?1",
        [user.as_str()],
        |r| {
            Ok(Wallet {
                available: amount_col(r, 0)?,
                held: amount_col(r, 1)?,
                spent: amount_col(r, 2)?,
                refunded: amount_col(r, 3)?,
            })
        },
    )
    .optional()
    .map(Option::unwrap_or_default)
    .map_err(db)
}

pub(crate) fn save_wallet(c: &Connection, user: &UserId, w: &Wallet) -> Result<(), StoreError> {
    c.exec_cached(
        "INSERT INTO wallets (user_id, available, held, spent, refunded)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (user_id) DO UPDATE
         SET available = excluded.available, held = excluded.held, spent = excluded.spent,
             refunded = excluded.refunded",
        params![
            user.as_str(),
            w.available.minor(),
            w.held.minor(),
            w.spent.minor(),
            w.refunded.minor()
        ],
    )
    .map_err(db)?;
    Ok(())
}

/// Record one ledger entry made by the system (no actor).
pub(crate) fn write_entry(
    c: &Connection,
    e: &LedgerEntry,
    at: u64,
    session: Option<SessionId>,
) -> Result<(), StoreError> {
    write_entry_by(c, e, at, session, None)
}

/// Record one ledger entry; `actor` is the operator's principal when an operator made it. A
/// zero movement records nothing (the ledger holds positive amounts).
pub(crate) fn write_entry_by(
    c: &Connection,
    e: &LedgerEntry,
    at: u64,
    session: Option<SessionId>,
    actor: Option<&str>,
) -> Result<(), StoreError> {
    if e.amount.is_zero() {
        return Ok(());
    }
    c.exec_cached(
        "INSERT INTO ledger (at, kind, debit, credit, amount, session_id, actor)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            ts(at)?,
            e.kind.as_str(),
            e.debit.key(),
            e.credit.key(),
            e.amount.minor(),
            session.map(SessionId::to_bytes),
            actor
        ],
    )
    .map_err(db)?;
    Ok(())
}

pub(crate) struct Idempotency {
    pub(crate) fingerprint: String,
    pub(crate) result: Option<Vec<u8>>,
}

impl Idempotency {
    /// The session a pay record points to.
    pub(crate) fn session_id(&self) -> Result<SessionId, StoreError> {
        self.result
            .as_deref()
            .and_then(|b| <[u8; 16]>::try_from(b).ok())
            .map(SessionId::from_bytes)
            .ok_or_else(|| StoreError::Corrupt("a pay idempotency record has no session id".into()))
    }
}

pub(crate) fn load_idempotency(
    c: &Connection,
    scope: &str,
    key: &IdempotencyKey,
) -> Result<Option<Idempotency>, StoreError> {
    c.row_cached(
        "SELECT fingerprint, result FROM idempotency WHERE scope = ?1 AND key = ?2",
        params![scope, key.as_str()],
        |r| {
            Ok(Idempotency {
                fingerprint: r.get(0)?,
                result: r.get(1)?,
            })
        },
    )
    .optional()
    .map_err(db)
}

pub(crate) fn save_idempotency(
    c: &Connection,
    scope: &str,
    key: &IdempotencyKey,
    fingerprint: &str,
    result: Option<&[u8]>,
    now: u64,
) -> Result<(), StoreError> {
    c.exec_cached(
        "INSERT INTO idempotency (scope, key, fingerprint, result, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![scope, key.as_str(), fingerprint, result, ts(now)?],
    )
    .map_err(db)?;
    Ok(())
}

/// Whether this advert (machine, slot, use counter) already paid for a session.
pub(crate) fn advert_used(
    c: &Connection,
    device: DeviceId,
    slot: Slot,
    use_counter: UseCounter,
) -> Result<bool, StoreError> {
    Ok(c.row_cached(
        "SELECT 1 FROM advert_uses WHERE device_id = ?1 AND slot = ?2 AND use_counter = ?3",
        params![device.as_bytes(), slot.get(), use_counter.get()],
        |_| Ok(()),
    )
    .optional()
    .map_err(db)?
    .is_some())
}

pub(crate) fn mark_advert_used(c: &Connection, s: &Session, slot: Slot) -> Result<(), StoreError> {
    c.exec_cached(
        "INSERT INTO advert_uses (device_id, slot, use_counter, session_id) VALUES (?1, ?2, ?3, ?4)",
        params![s.device_id.as_bytes(), slot.get(), s.use_counter.get(), s.id.as_bytes()],
    )
    .map_err(db)?;
    Ok(())
}
