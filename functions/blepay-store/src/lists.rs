//! The back office's read models (issue 11, item 7): the session list's filter, a user's
//! statement entries, and the facts the sales report is computed from
//! ([`crate::decide::sales_report`]).

use blepay_core::{Amount, DeviceId, EntryKind, Session, SessionId, SessionStatus, UserId};

use crate::ListPosition;

/// What `GET /v1/ops/sessions` (and the phone's own `GET /v1/sessions`) filter on. Every field
/// narrows; none set lists every session. Newest first: by `created_at` descending, then by the
/// session id (hex) descending, which is the [`ListPosition`] of a session
/// ([`session_position`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionFilter {
    pub device: Option<DeviceId>,
    pub user: Option<UserId>,
    pub status: Option<SessionStatus>,
    /// Created at or after (unix seconds).
    pub from: Option<u64>,
    /// Created at or before (unix seconds, inclusive).
    pub to: Option<u64>,
}

impl SessionFilter {
    /// Whether `s` passes every filter.
    pub fn matches(&self, s: &Session) -> bool {
        self.device.is_none_or(|d| d == s.device_id)
            && self.user.as_ref().is_none_or(|u| *u == s.user_id)
            && self.status.is_none_or(|st| st == s.status)
            && self.from.is_none_or(|f| s.created_at >= f)
            && self.to.is_none_or(|t| s.created_at <= t)
    }
}

/// A session's place in the newest-first list.
pub fn session_position(s: &Session) -> ListPosition {
    ListPosition {
        at: s.created_at,
        id: s.id.to_string(),
    }
}

/// Whether `p` comes after `cursor` in a newest-first list (time descending, then id
/// descending): the items a page that starts after `cursor` may hold.
pub fn comes_after(p: &ListPosition, cursor: Option<&ListPosition>) -> bool {
    cursor.is_none_or(|c| (p.at, &p.id) < (c.at, &c.id))
}

/// One ledger entry as it appears on a user's statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementEntry {
    /// The entry's stable id in its store (SQLite: the row id, zero-padded to 20 digits;
    /// DynamoDB: the item's `pk`). With `at`, its place in the list.
    pub id: String,
    pub at: u64,
    pub kind: EntryKind,
    /// The account names ([`blepay_core::LedgerAccount::key`]).
    pub debit: String,
    pub credit: String,
    pub amount: Amount,
    pub session: Option<SessionId>,
    /// The operator principal who made it (refunds, operator top-ups), when the store keeps one.
    pub actor: Option<String>,
}

impl StatementEntry {
    /// Its place in the newest-first statement.
    pub fn position(&self) -> ListPosition {
        ListPosition {
            at: self.at,
            id: self.id.clone(),
        }
    }

    /// What it did to `user`'s available balance, in minor units: `+amount` when it credits
    /// `available:<user>`, `-amount` when it debits it, 0 when it moves money elsewhere (a
    /// capture from held to revenue).
    pub fn available_delta(&self, user: &UserId) -> i64 {
        let available = format!("available:{user}");
        match (self.credit == available, self.debit == available) {
            (true, false) => self.amount.minor(),
            (false, true) => -self.amount.minor(),
            _ => 0,
        }
    }

    /// Whether it touches `user` (one of its accounts is the user's available or held).
    pub fn touches(&self, user: &UserId) -> bool {
        let mine = [format!("available:{user}"), format!("held:{user}")];
        mine.contains(&self.debit) || mine.contains(&self.credit)
    }
}

/// A refund ledger entry, attributed to its session's machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundFact {
    pub device: DeviceId,
    pub at: u64,
    pub amount: Amount,
}

/// What the sales report over `[from, to)` (unix seconds) is computed from: the sessions created
/// in it, and the refunds made in it with their session's machine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SalesFacts {
    pub sessions: Vec<Session>,
    pub refunds: Vec<RefundFact>,
}
