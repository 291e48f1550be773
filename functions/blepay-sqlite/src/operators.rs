//! Operators and the audit trail, each operation inside the caller's transaction.

use blepay_core::Amount;
use blepay_store::decide::{
    CreateOperatorDecision, RevokeOperatorDecision, decide_create_operator, decide_revoke_operator,
};
use blepay_store::{
    AuditEvent, AuditFilter, CreateOperatorOutcome, ListPosition, NewOperator, OperatorId,
    OperatorName, OperatorRecord, Page, PageRequest, RevokeOperatorOutcome, StoreError,
};
use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::convert::{BadValue, Cached, db, parse_col, ts};
use crate::rows::{load_idempotency, save_idempotency};

const OPERATOR_COLUMNS: &str = "id, name, role, token_hash, created_at, created_by, revoked_at";

fn operator_row(r: &Row<'_>) -> rusqlite::Result<OperatorRecord> {
    let hash: Vec<u8> = r.get(3)?;
    Ok(OperatorRecord {
        id: parse_col(r, 0, |s: String| OperatorId::parse(&s))?,
        name: parse_col(r, 1, |s: String| OperatorName::parse(&s))?,
        role: r.get(2)?,
        token_hash: <[u8; 32]>::try_from(hash.as_slice()).map_err(|_| {
            rusqlite::Error::FromSqlConversionFailure(
                3,
                rusqlite::types::Type::Blob,
                Box::new(BadValue("token_hash is not 32 bytes")),
            )
        })?,
        created_at: parse_col(r, 4, |v: i64| u64::try_from(v))?,
        created_by: r.get(5)?,
        revoked_at: r
            .get::<_, Option<i64>>(6)?
            .map(u64::try_from)
            .transpose()
            .map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(
                    6,
                    rusqlite::types::Type::Integer,
                    Box::new(e),
                )
            })?,
    })
}

pub(crate) fn load_operator(
    c: &Connection,
    id: &OperatorId,
) -> Result<Option<OperatorRecord>, StoreError> {
    c.row_cached(
        &format!("SELECT {OPERATOR_COLUMNS} FROM operators WHERE id = ?1"),
        params![id.as_str()],
        operator_row,
    )
    .optional()
    .map_err(db)
}

pub(crate) fn list_operators(c: &Connection) -> Result<Vec<OperatorRecord>, StoreError> {
    let mut stmt = c
        .prepare(&format!(
            "SELECT {OPERATOR_COLUMNS} FROM operators ORDER BY created_at, id"
        ))
        .map_err(db)?;
    let rows = stmt.query_map([], operator_row).map_err(db)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(db)
}

fn scope(creator: &str) -> String {
    format!("operator:{creator}")
}

pub(crate) fn create_operator(
    c: &Connection,
    new: &NewOperator,
) -> Result<CreateOperatorOutcome, StoreError> {
    let scope = scope(&new.record.created_by);
    let seen = load_idempotency(c, &scope, &new.key)?;
    let prior = match &seen {
        None => None,
        Some(s) => {
            let id = s
                .result
                .as_deref()
                .and_then(|b| std::str::from_utf8(b).ok())
                .and_then(|s| OperatorId::parse(s).ok());
            let rec = match id {
                Some(id) => load_operator(c, &id)?,
                None => None,
            };
            Some((s.fingerprint.as_str(), rec))
        }
    };
    match decide_create_operator(new, prior)? {
        CreateOperatorDecision::Answer(outcome) => return Ok(outcome),
        CreateOperatorDecision::Create => {}
    }
    let r = &new.record;
    c.exec_cached(
        &format!("INSERT INTO operators ({OPERATOR_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"),
        params![
            r.id.as_str(),
            r.name.as_str(),
            r.role,
            &r.token_hash[..],
            ts(r.created_at)?,
            r.created_by,
            r.revoked_at.map(ts).transpose()?,
        ],
    )
    .map_err(db)?;
    save_idempotency(
        c,
        &scope,
        &new.key,
        &new.fingerprint(),
        Some(r.id.as_str().as_bytes()),
        r.created_at,
    )?;
    Ok(CreateOperatorOutcome::Created(r.clone()))
}

pub(crate) fn revoke_operator(
    c: &Connection,
    id: &OperatorId,
    now: u64,
) -> Result<RevokeOperatorOutcome, StoreError> {
    match decide_revoke_operator(load_operator(c, id)?, now) {
        RevokeOperatorDecision::Answer(outcome) => Ok(outcome),
        RevokeOperatorDecision::Revoke(rec) => {
            c.exec_cached(
                "UPDATE operators SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![id.as_str(), rec.revoked_at.map(ts).transpose()?],
            )
            .map_err(db)?;
            Ok(RevokeOperatorOutcome::Revoked(rec))
        }
    }
}

pub(crate) fn record_audit_event(c: &Connection, e: &AuditEvent) -> Result<bool, StoreError> {
    let inserted = c
        .exec_cached(
            "INSERT INTO audit_events (id, at, principal, role, action, target, amount, idempotency_key, dedupe_key)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT DO NOTHING",
            params![
                e.id,
                ts(e.at)?,
                e.principal,
                e.role,
                e.action,
                e.target,
                e.amount.map(Amount::minor),
                e.idempotency_key,
                e.key,
            ],
        )
        .map_err(db)?;
    Ok(inserted == 1)
}

fn audit_row(r: &Row<'_>) -> rusqlite::Result<AuditEvent> {
    Ok(AuditEvent {
        id: r.get(0)?,
        at: parse_col(r, 1, |v: i64| u64::try_from(v))?,
        principal: r.get(2)?,
        role: r.get(3)?,
        action: r.get(4)?,
        target: r.get(5)?,
        amount: r
            .get::<_, Option<i64>>(6)?
            .map(Amount::new)
            .transpose()
            .map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(
                    6,
                    rusqlite::types::Type::Integer,
                    Box::new(e),
                )
            })?,
        idempotency_key: r.get(7)?,
        key: r.get(8)?,
    })
}

pub(crate) fn audit_events(
    c: &Connection,
    filter: &AuditFilter,
    page: &PageRequest,
) -> Result<Page<AuditEvent>, StoreError> {
    let (after_at, after_id) = match &page.after {
        Some(p) => (Some(ts(p.at)?), Some(p.id.clone())),
        None => (None, None),
    };
    let mut stmt = c
        .prepare(
            "SELECT id, at, principal, role, action, target, amount, idempotency_key, dedupe_key
             FROM audit_events
             WHERE (?1 IS NULL OR at < ?1 OR (at = ?1 AND id < ?2))
               AND (?3 IS NULL OR principal = ?3)
               AND (?4 IS NULL OR action = ?4)
             ORDER BY at DESC, id DESC
             LIMIT ?5",
        )
        .map_err(db)?;
    let rows = stmt
        .query_map(
            params![
                after_at,
                after_id,
                filter.principal,
                filter.action,
                i64::from(page.limit) + 1
            ],
            audit_row,
        )
        .map_err(db)?;
    let mut items = rows.collect::<Result<Vec<_>, _>>().map_err(db)?;
    Ok(into_page(&mut items, page.limit))
}

/// `items` (at most `limit` + 1, in list order) as a page of `limit`.
fn into_page(items: &mut Vec<AuditEvent>, limit: u32) -> Page<AuditEvent> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let more = items.len() > limit;
    items.truncate(limit);
    let next: Option<ListPosition> = if more {
        items.last().map(AuditEvent::position)
    } else {
        None
    };
    Page {
        items: std::mem::take(items),
        next,
    }
}
