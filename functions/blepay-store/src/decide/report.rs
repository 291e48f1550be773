//! The sales report (issue 11, item 7): per machine per UTC day, sessions, units, captured,
//! refunded and net — computed once, here, from the facts either store gathers
//! ([`crate::SalesFacts`]), with checked arithmetic.
//!
//! Attribution: a session counts on the UTC day it was created (its units and, once SETTLED, its
//! captured amount, late captures included); a refund counts on the day it was made, on its
//! session's machine (cash basis: a day's net is what that day's sales captured minus what was
//! paid back that day). Rows are ordered by day, then machine id.

use std::collections::BTreeMap;

use blepay_core::{DeviceId, SessionStatus};

use crate::{SalesFacts, StoreError};

/// Seconds in a UTC day.
pub const DAY_SECS: u64 = 86_400;

/// One row of the report: one machine on one UTC day (days since 1970-01-01).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SalesRow {
    pub day: u64,
    pub device: Option<DeviceId>,
    pub sessions: u64,
    pub units: u64,
    /// Minor units captured by that day's sessions.
    pub captured: i64,
    /// Minor units refunded that day on the machine.
    pub refunded: i64,
    /// `captured - refunded` (may be negative on a day of refunds only).
    pub net: i64,
}

fn overflow() -> StoreError {
    StoreError::Corrupt("the sales report's sums overflow".into())
}

/// The report over the UTC days `from_day..=to_day` (days since the epoch). Facts outside that
/// range are ignored; a day with no activity on a machine has no row.
///
/// # Errors
/// [`StoreError::Corrupt`] when a sum overflows (no data the stores accept produces it).
pub fn sales_report(
    facts: &SalesFacts,
    from_day: u64,
    to_day: u64,
) -> Result<Vec<SalesRow>, StoreError> {
    let mut rows: BTreeMap<(u64, DeviceId), SalesRow> = BTreeMap::new();
    let in_range = |day: u64| (from_day..=to_day).contains(&day);
    for s in &facts.sessions {
        let day = s.created_at / DAY_SECS;
        if !in_range(day) {
            continue;
        }
        let row = rows.entry((day, s.device_id)).or_default();
        row.sessions = row.sessions.checked_add(1).ok_or_else(overflow)?;
        row.units = row.units.checked_add(s.units.get()).ok_or_else(overflow)?;
        if s.status == SessionStatus::Settled {
            row.captured = row
                .captured
                .checked_add(s.amount.minor())
                .ok_or_else(overflow)?;
        }
    }
    for r in &facts.refunds {
        let day = r.at / DAY_SECS;
        if !in_range(day) {
            continue;
        }
        let row = rows.entry((day, r.device)).or_default();
        row.refunded = row
            .refunded
            .checked_add(r.amount.minor())
            .ok_or_else(overflow)?;
    }
    rows.into_iter()
        .map(|((day, device), mut row)| {
            row.day = day;
            row.device = Some(device);
            row.net = row
                .captured
                .checked_sub(row.refunded)
                .ok_or_else(overflow)?;
            Ok(row)
        })
        .collect()
}

/// Totals over rows (the report's footer and the conformance checks' sums).
///
/// # Errors
/// [`StoreError::Corrupt`] on overflow.
pub fn sales_totals(rows: &[SalesRow]) -> Result<SalesRow, StoreError> {
    let mut t = SalesRow::default();
    for r in rows {
        t.sessions = t.sessions.checked_add(r.sessions).ok_or_else(overflow)?;
        t.units = t.units.checked_add(r.units).ok_or_else(overflow)?;
        t.captured = t.captured.checked_add(r.captured).ok_or_else(overflow)?;
        t.refunded = t.refunded.checked_add(r.refunded).ok_or_else(overflow)?;
        t.net = t.net.checked_add(r.net).ok_or_else(overflow)?;
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RefundFact;
    use blepay_core::{
        Amount, Currency, Session, SessionId, Tariff, UnitName, Units, UseCounter, UserId,
    };

    fn session(
        device: u8,
        created_at: u64,
        status: SessionStatus,
        units: u64,
        amount: i64,
    ) -> Session {
        let mut s = Session::authorize(
            SessionId::from_bytes([device; 16]),
            DeviceId::from_bytes([device; 8]),
            UserId::parse("u1").unwrap(),
            Amount::new(1000).unwrap(),
            Tariff {
                price_per_unit: Amount::new(10).unwrap(),
                unit_name: UnitName::parse("l").unwrap(),
                currency: Currency::parse("EUR").unwrap(),
            },
            UseCounter::new(1),
            created_at,
            60,
        );
        s.status = status;
        s.units = Units::new(units);
        s.amount = Amount::new(amount).unwrap();
        s
    }

    #[test]
    fn sessions_count_on_their_day_and_refunds_on_theirs() {
        let facts = SalesFacts {
            sessions: vec![
                session(1, 10, SessionStatus::Settled, 3, 30),
                session(1, 20, SessionStatus::Expired, 0, 0),
                session(2, DAY_SECS + 5, SessionStatus::Settled, 2, 20),
                session(2, 5 * DAY_SECS, SessionStatus::Settled, 2, 20),
            ],
            refunds: vec![RefundFact {
                device: DeviceId::from_bytes([1; 8]),
                at: DAY_SECS + 7,
                amount: Amount::new(5).unwrap(),
            }],
        };
        let rows = sales_report(&facts, 0, 1).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(
            (
                rows[0].sessions,
                rows[0].units,
                rows[0].captured,
                rows[0].net
            ),
            (2, 3, 30, 30)
        );
        assert_eq!((rows[1].day, rows[1].refunded, rows[1].net), (1, 5, -5));
        assert_eq!((rows[2].day, rows[2].captured), (1, 20));
        let t = sales_totals(&rows).unwrap();
        assert_eq!((t.sessions, t.captured, t.refunded, t.net), (3, 50, 5, 45));
    }
}
