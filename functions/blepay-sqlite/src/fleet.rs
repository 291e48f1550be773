//! The machine lifecycle (service state, operator updates, the fleet list) and the daily
//! spending cap, each inside the caller's transaction (issue 11, items 4 and 6).

use blepay_core::{Amount, DeviceId, SessionStatus, UserId};
use blepay_store::decide::{DeviceUpdateDecision, decide_device_update};
use blepay_store::{
    DeviceFilter, DeviceStatus, DeviceUpdate, DeviceUpdateOutcome, ListPosition, Page, PageRequest,
    SPENDING_DAY_SECS, ServiceState, Spending, StoreError, spend, spending_day,
};
use rusqlite::{Connection, OptionalExtension, params};

use crate::convert::{Cached, db, ts};
use crate::ops::{Due, expire_sessions};
use crate::rows::{load_device, open_session_of};

pub(crate) fn load_service_state(c: &Connection, id: DeviceId) -> Result<ServiceState, StoreError> {
    let s: String = c
        .row_cached(
            "SELECT service_state FROM devices WHERE id = ?1",
            [id.as_bytes()],
            |r| r.get(0),
        )
        .map_err(db)?;
    ServiceState::parse(&s)
        .ok_or_else(|| StoreError::Corrupt(format!("device {id} has service state {s:?}")))
}

fn device_status(c: &Connection, id: DeviceId) -> Result<Option<DeviceStatus>, StoreError> {
    let Some(row) = load_device(c, id)? else {
        return Ok(None);
    };
    Ok(Some(row.status(open_session_of(c, id)?)))
}

/// The fleet after `page.after`, by id, filtered; overdue sessions expired first (as any read).
pub(crate) fn list_devices(
    c: &Connection,
    filter: &DeviceFilter,
    page: &PageRequest,
    now: u64,
) -> Result<Page<DeviceStatus>, StoreError> {
    expire_sessions(c, Due::All, now)?;
    let after = page.after.as_ref().map(|p| p.id.to_ascii_lowercase());
    let mut ids = c
        .prepare("SELECT id FROM devices WHERE ?1 IS NULL OR lower(hex(id)) > ?1 ORDER BY id")
        .map_err(db)?;
    let ids = ids
        .query_map([after], |r| r.get::<_, [u8; 8]>(0))
        .map_err(db)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(db)?;
    let limit = usize::try_from(page.limit).unwrap_or(usize::MAX);
    let mut items = Vec::new();
    let mut more = false;
    for id in ids {
        let Some(d) = device_status(c, DeviceId::from_bytes(id))? else {
            continue;
        };
        if !filter.matches(&d, now) {
            continue;
        }
        if items.len() == limit {
            more = true;
            break;
        }
        items.push(d);
    }
    let next = if more {
        items.last().map(|d: &DeviceStatus| ListPosition {
            at: 0,
            id: d.device.id.to_string(),
        })
    } else {
        None
    };
    Ok(Page { items, next })
}

pub(crate) fn update_device(
    c: &Connection,
    id: DeviceId,
    update: &DeviceUpdate,
    now: u64,
) -> Result<DeviceUpdateOutcome, StoreError> {
    expire_sessions(c, Due::OfDevice(id), now)?;
    let Some(current) = device_status(c, id)? else {
        return Ok(DeviceUpdateOutcome::DeviceUnknown);
    };
    let next = match decide_device_update(&current.device, update) {
        DeviceUpdateDecision::Unchanged => return Ok(DeviceUpdateOutcome::Unchanged(current)),
        DeviceUpdateDecision::Decommissioned => return Ok(DeviceUpdateOutcome::Decommissioned),
        DeviceUpdateDecision::Write(next) => next,
    };
    c.exec_cached(
        "UPDATE devices SET name = ?1, price_per_unit = ?2, unit_name = ?3, currency = ?4,
                service_state = ?5
         WHERE id = ?6",
        params![
            next.name.as_str(),
            next.tariff.price_per_unit.minor(),
            next.tariff.unit_name.as_str(),
            next.tariff.currency.as_str(),
            next.service_state.as_str(),
            id.as_bytes()
        ],
    )
    .map_err(db)?;
    Ok(DeviceUpdateOutcome::Updated(DeviceStatus {
        device: next,
        ..current
    }))
}

/// The user's override and spending of `now`'s UTC day: the sessions they opened that day, their
/// overdue ones expired first, each counted by [`spend`] (the rule of [`blepay_store::session_spend`]).
pub(crate) fn spending(c: &Connection, user: &UserId, now: u64) -> Result<Spending, StoreError> {
    expire_sessions(c, Due::OfUser(user), now)?;
    spending_unexpired(c, user, now)
}

/// What a session of the day counts ([`blepay_store::spend`]): read from the covering index
/// `sessions_by_user_created` alone (schema migration 12).
const SPENDING_OF_DAY: &str = "SELECT status, hold, amount FROM sessions
     WHERE user_id = ?1 AND created_at >= ?2 AND created_at < ?3";

/// [`spending`] for a caller that has just expired the user's overdue sessions itself (pay).
/// Reads the three columns the rule needs, not whole sessions: a pay costs one index range of
/// the user's sessions of the day, not one decoded session each.
pub(crate) fn spending_unexpired(
    c: &Connection,
    user: &UserId,
    now: u64,
) -> Result<Spending, StoreError> {
    let user_override = c
        .row_cached(
            "SELECT daily_limit FROM spending_limits WHERE user_id = ?1",
            [user.as_str()],
            |r| crate::convert::amount_col(r, 0),
        )
        .optional()
        .map_err(db)?;
    let start = spending_day(now) * SPENDING_DAY_SECS;
    let mut stmt = c.prepare_cached(SPENDING_OF_DAY).map_err(db)?;
    let mut rows = stmt
        .query(params![
            user.as_str(),
            ts(start)?,
            ts(start + SPENDING_DAY_SECS)?
        ])
        .map_err(db)?;
    let mut spent_today = Amount::ZERO;
    while let Some(r) = rows.next().map_err(db)? {
        let status = r
            .get_ref(0)
            .and_then(|v| v.as_str().map_err(Into::into))
            .map_err(db)?;
        let status = SessionStatus::parse(status)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown session status {status:?}")))?;
        let hold = crate::convert::amount_col(r, 1).map_err(db)?;
        let amount = crate::convert::amount_col(r, 2).map_err(db)?;
        spent_today = spent_today
            .checked_add(spend(status, hold, amount))
            .map_err(|_| StoreError::Corrupt(format!("{user}'s spending overflows")))?;
    }
    Ok(Spending {
        user_override,
        spent_today,
    })
}

pub(crate) fn set_spending_limit(
    c: &Connection,
    user: &UserId,
    limit: Option<Amount>,
    now: u64,
) -> Result<Spending, StoreError> {
    match limit {
        Some(l) => c.exec_cached(
            "INSERT INTO spending_limits (user_id, daily_limit) VALUES (?1, ?2)
             ON CONFLICT (user_id) DO UPDATE SET daily_limit = excluded.daily_limit",
            params![user.as_str(), l.minor()],
        ),
        None => c.exec_cached(
            "DELETE FROM spending_limits WHERE user_id = ?1",
            [user.as_str()],
        ),
    }
    .map_err(db)?;
    spending(c, user, now)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Every pay runs this query over the user's sessions of the day: it reads the index only,
    /// never the table, however many sessions the user opened.
    #[test]
    fn the_days_spending_is_read_from_an_index_alone() {
        let mut c = Connection::open_in_memory().unwrap();
        crate::schema::migrate(&mut c).unwrap();
        let plan: Vec<String> = c
            .prepare(&format!("EXPLAIN QUERY PLAN {SPENDING_OF_DAY}"))
            .unwrap()
            .query_map(params!["u", 0, 86_400], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            plan.iter()
                .any(|step| step.contains("USING COVERING INDEX sessions_by_user_created")),
            "{plan:?}"
        );
    }
}
