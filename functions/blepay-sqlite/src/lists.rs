//! The back office's lists (issue 11, item 7): sessions by filter, a user's statement, the sales
//! report's facts. Each runs inside the store's one transaction; the session list expires due
//! sessions first, as every other read does.

use blepay_core::{DeviceId, EntryKind, SessionId, UserId};
use blepay_store::{
    ListPosition, Page, PageRequest, RefundFact, SalesFacts, SessionFilter, StatementEntry,
    StoreError, session_position,
};
use rusqlite::types::Value;
use rusqlite::{Connection, params_from_iter};

use crate::convert::{BadValue, amount_col, db, parse_col};
use crate::ops::{Due, expire_sessions};
use crate::rows::query_sessions;

/// A unix time for a comparison: clamped into SQLite's INTEGER (a forged cursor may carry any
/// `u64`; nothing stored is later than `i64::MAX`).
fn clamp(t: u64) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}

fn fetch_limit(page: &PageRequest) -> i64 {
    i64::from(page.limit).saturating_add(1)
}

/// Cut `items` (fetched with one more than the page) into a page.
fn into_page<T>(
    mut items: Vec<T>,
    page: &PageRequest,
    pos: impl Fn(&T) -> ListPosition,
) -> Page<T> {
    let limit = usize::try_from(page.limit).unwrap_or(usize::MAX);
    if items.len() > limit {
        items.truncate(limit);
        let next = items.last().map(pos);
        Page { items, next }
    } else {
        Page { items, next: None }
    }
}

/// Bind `v` as the next numbered parameter, in place of the `?` in `clause`.
fn bind(clause: &str, v: Value, values: &mut Vec<Value>) -> String {
    values.push(v);
    clause.replace('?', &format!("?{}", values.len()))
}

/// Sessions newest first (`created_at DESC`, then the id's hex `DESC`, the order of
/// [`session_position`]), indexes `sessions_by_user_created`, `sessions_by_device_created`,
/// `sessions_by_created`.
pub(crate) fn list_sessions(
    c: &Connection,
    filter: &SessionFilter,
    page: &PageRequest,
    now: u64,
) -> Result<Page<blepay_core::Session>, StoreError> {
    expire_sessions(c, Due::All, now)?;
    let mut clauses: Vec<String> = Vec::new();
    let mut values: Vec<Value> = Vec::new();
    if let Some(d) = filter.device {
        clauses.push(bind(
            "device_id = ?",
            Value::Blob(d.to_bytes().to_vec()),
            &mut values,
        ));
    }
    if let Some(u) = &filter.user {
        clauses.push(bind(
            "user_id = ?",
            Value::Text(u.as_str().to_owned()),
            &mut values,
        ));
    }
    if let Some(s) = filter.status {
        clauses.push(bind(
            "status = ?",
            Value::Text(s.as_str().to_owned()),
            &mut values,
        ));
    }
    if let Some(f) = filter.from {
        clauses.push(bind(
            "created_at >= ?",
            Value::Integer(clamp(f)),
            &mut values,
        ));
    }
    if let Some(t) = filter.to {
        clauses.push(bind(
            "created_at <= ?",
            Value::Integer(clamp(t)),
            &mut values,
        ));
    }
    if let Some(after) = &page.after {
        let at = bind("?", Value::Integer(clamp(after.at)), &mut values);
        let id = bind("?", Value::Text(after.id.clone()), &mut values);
        clauses.push(format!(
            "(created_at < {at} OR (created_at = {at} AND lower(hex(id)) < {id}))"
        ));
    }
    let limit = bind("?", Value::Integer(fetch_limit(page)), &mut values);
    let filter_sql = if clauses.is_empty() {
        "1".to_owned()
    } else {
        clauses.join(" AND ")
    };
    let sql = format!("{filter_sql} ORDER BY created_at DESC, lower(hex(id)) DESC LIMIT {limit}");
    let items = query_sessions(c, &sql, params_from_iter(values))?;
    Ok(into_page(items, page, session_position))
}

/// The ledger id as a list id: zero-padded so that string order is numeric order.
fn entry_id(id: i64) -> String {
    format!("{id:020}")
}

/// Every ledger row debiting or crediting the user's available or held account, newest first
/// (indexes `ledger_by_debit`, `ledger_by_credit`).
pub(crate) fn statement(
    c: &Connection,
    user: &UserId,
    page: &PageRequest,
) -> Result<Page<StatementEntry>, StoreError> {
    let available = format!("available:{user}");
    let held = format!("held:{user}");
    let (at, id) = page
        .after
        .as_ref()
        .map_or((None, None), |p| (Some(clamp(p.at)), Some(p.id.clone())));
    let mut stmt = c
        .prepare_cached(
            "SELECT id, at, kind, debit, credit, amount, session_id, actor FROM ledger
             WHERE (debit IN (?1, ?2) OR credit IN (?1, ?2))
               AND (?3 IS NULL OR at < ?3 OR (at = ?3 AND printf('%020d', id) < ?4))
             ORDER BY at DESC, id DESC LIMIT ?5",
        )
        .map_err(db)?;
    let rows = stmt
        .query_map(
            rusqlite::params![available, held, at, id, fetch_limit(page)],
            |r| {
                Ok(StatementEntry {
                    id: entry_id(r.get(0)?),
                    at: r.get(1)?,
                    kind: parse_col(r, 2, |s: String| {
                        EntryKind::parse(&s).ok_or(BadValue("unknown ledger kind"))
                    })?,
                    debit: r.get(3)?,
                    credit: r.get(4)?,
                    amount: amount_col(r, 5)?,
                    session: r.get::<_, Option<[u8; 16]>>(6)?.map(SessionId::from_bytes),
                    actor: r.get(7)?,
                })
            },
        )
        .map_err(db)?;
    let items = rows.collect::<Result<Vec<_>, _>>().map_err(db)?;
    Ok(into_page(items, page, StatementEntry::position))
}

/// Sessions created in `[from, to)` and REFUND entries made in it, with their session's machine
/// (indexes `sessions_by_created`, `ledger_by_kind`).
pub(crate) fn sales_facts(c: &Connection, from: u64, to: u64) -> Result<SalesFacts, StoreError> {
    let (from, to) = (clamp(from), clamp(to));
    let sessions = query_sessions(
        c,
        "created_at >= ?1 AND created_at < ?2",
        rusqlite::params![from, to],
    )?;
    let mut stmt = c
        .prepare_cached(
            "SELECT s.device_id, l.at, l.amount FROM ledger l JOIN sessions s ON s.id = l.session_id
             WHERE l.kind = 'REFUND' AND l.at >= ?1 AND l.at < ?2",
        )
        .map_err(db)?;
    let refunds = stmt
        .query_map(rusqlite::params![from, to], |r| {
            Ok(RefundFact {
                device: DeviceId::from_bytes(r.get(0)?),
                at: r.get(1)?,
                amount: amount_col(r, 2)?,
            })
        })
        .map_err(db)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(db)?;
    Ok(SalesFacts { sessions, refunds })
}
