//! The operator console's records: its sign-in sessions and the machines' telemetry history,
//! each operation inside the caller's transaction.

use blepay_core::{DeviceId, Telemetry, Units};
use blepay_store::{
    CONSOLE_SESSION_GRACE_SECS, ConsoleSession, StoreError, TELEMETRY_HISTORY_SECS, TelemetrySample,
};
use rusqlite::types::Type;
use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::convert::{BadValue, Cached, db, parse_col, ts, units_to_sql};
use crate::rows::{faults_text, telemetry_cols};

const SESSION_COLUMNS: &str = "id_hash, operator, role, created_at, expires_at, ended_at";

fn session_row(r: &Row<'_>) -> rusqlite::Result<ConsoleSession> {
    let hash: Vec<u8> = r.get(0)?;
    Ok(ConsoleSession {
        id_hash: <[u8; 32]>::try_from(hash.as_slice()).map_err(|_| {
            rusqlite::Error::FromSqlConversionFailure(
                0,
                Type::Blob,
                Box::new(BadValue("id_hash is not 32 bytes")),
            )
        })?,
        operator: r.get(1)?,
        role: r.get(2)?,
        created_at: parse_col(r, 3, |v: i64| u64::try_from(v))?,
        expires_at: parse_col(r, 4, |v: i64| u64::try_from(v))?,
        ended_at: r
            .get::<_, Option<i64>>(5)?
            .map(u64::try_from)
            .transpose()
            .map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(5, Type::Integer, Box::new(e))
            })?,
    })
}

/// Prune the records expired more than [`CONSOLE_SESSION_GRACE_SECS`] before `s.created_at`,
/// then insert `s`; `false` (nothing written but the pruning) when its hash exists already.
pub(crate) fn create_session(c: &Connection, s: &ConsoleSession) -> Result<bool, StoreError> {
    if let Some(cutoff) = s.created_at.checked_sub(CONSOLE_SESSION_GRACE_SECS) {
        c.exec_cached(
            "DELETE FROM console_sessions WHERE expires_at < ?1",
            [ts(cutoff)?],
        )
        .map_err(db)?;
    }
    let inserted = c
        .exec_cached(
            &format!(
                "INSERT INTO console_sessions ({SESSION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (id_hash) DO NOTHING"
            ),
            params![
                &s.id_hash[..],
                s.operator,
                s.role,
                ts(s.created_at)?,
                ts(s.expires_at)?,
                s.ended_at.map(ts).transpose()?,
            ],
        )
        .map_err(db)?;
    Ok(inserted == 1)
}

pub(crate) fn load_session(
    c: &Connection,
    id_hash: &[u8; 32],
) -> Result<Option<ConsoleSession>, StoreError> {
    c.row_cached(
        &format!("SELECT {SESSION_COLUMNS} FROM console_sessions WHERE id_hash = ?1"),
        [&id_hash[..]],
        session_row,
    )
    .optional()
    .map_err(db)
}

/// Stamp `ended_at = now` on a session not ended yet; whether one was.
pub(crate) fn end_session(
    c: &Connection,
    id_hash: &[u8; 32],
    now: u64,
) -> Result<bool, StoreError> {
    let changed = c
        .exec_cached(
            "UPDATE console_sessions SET ended_at = ?2 WHERE id_hash = ?1 AND ended_at IS NULL",
            params![&id_hash[..], ts(now)?],
        )
        .map_err(db)?;
    Ok(changed == 1)
}

/// Keep a heartbeat's telemetry, received at `at`, as a sample of `device`'s history, and delete
/// its samples [`TELEMETRY_HISTORY_SECS`] old or older.
pub(crate) fn save_sample(
    c: &Connection,
    device: DeviceId,
    t: &Telemetry,
    at: u64,
) -> Result<(), StoreError> {
    if let Some(cutoff) = at.checked_sub(TELEMETRY_HISTORY_SECS) {
        c.exec_cached(
            "DELETE FROM telemetry_samples WHERE device_id = ?1 AND at <= ?2",
            params![device.as_bytes(), ts(cutoff)?],
        )
        .map_err(db)?;
    }
    c.exec_cached(
        "INSERT INTO telemetry_samples (device_id, at, firmware, faults, signal, uptime, boots,
                                        outbox, lifetime_units)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            device.as_bytes(),
            ts(at)?,
            t.firmware_version,
            faults_text(t),
            t.signal_quality,
            units_to_sql(Units::new(t.uptime_secs)),
            t.boot_count,
            t.outbox_depth,
            units_to_sql(Units::new(t.lifetime_units)),
        ],
    )
    .map_err(db)?;
    Ok(())
}

/// `device`'s samples with `from <= at < to`, the newest `limit`, oldest first.
pub(crate) fn telemetry_history(
    c: &Connection,
    device: DeviceId,
    from: u64,
    to: u64,
    limit: usize,
) -> Result<Vec<TelemetrySample>, StoreError> {
    if from >= to || limit == 0 {
        return Ok(Vec::new());
    }
    // Times above i64::MAX are never stored: clamp the bounds instead of refusing them.
    let bound = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let mut stmt = c
        .prepare(
            "SELECT at, firmware, faults, signal, uptime, boots, outbox, lifetime_units
             FROM telemetry_samples
             WHERE device_id = ?1 AND at >= ?2 AND at < ?3
             ORDER BY at DESC, id DESC LIMIT ?4",
        )
        .map_err(db)?;
    let rows = stmt
        .query_map(
            params![
                device.as_bytes(),
                bound(from),
                bound(to),
                i64::try_from(limit).unwrap_or(i64::MAX)
            ],
            |r| {
                let telemetry = telemetry_cols(r, 1)?.ok_or_else(|| {
                    rusqlite::Error::FromSqlConversionFailure(
                        1,
                        Type::Null,
                        Box::new(BadValue("a sample without firmware")),
                    )
                })?;
                Ok(TelemetrySample {
                    at: parse_col(r, 0, |v: i64| u64::try_from(v))?,
                    telemetry,
                })
            },
        )
        .map_err(db)?;
    let mut samples = rows.collect::<Result<Vec<_>, _>>().map_err(db)?;
    samples.reverse();
    Ok(samples)
}
