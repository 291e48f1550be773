//! The back office's lists (issue 11, item 7), as `Query`s of sparse GSIs, never a scan
//! (docs/dynamodb.md "The back office's lists"):
//!
//! - sessions by user (`sessions_by_user`: `user` + `created_at`), by machine
//!   (`sessions_by_device`: `device` + `created_at`), by time (`sessions_by_time`: `type` +
//!   `created_at`, the `SESSION` partition); the other filters are applied to what the query
//!   returns;
//! - a user's statement (`ledger_by_user`: `l_user` + `at`, set on every ledger item touching a
//!   user, in the transaction that writes it);
//! - refunds by time (`refunds`: `l_refund` + `at`, set on REFUND entries only).
//!
//! Ties: a GSI does not order items with the same sort key, so a page keeps reading until it has
//! read every item at the time of its last one, then orders them by (time, id) descending — the
//! order of [`blepay_store::comes_after`].

use std::collections::HashMap;

use blepay_core::{Amount, DeviceId, EntryKind, SessionId, UserId};
use blepay_store::{
    ListPosition, Page, PageRequest, RefundFact, SalesFacts, SessionFilter, StatementEntry,
    comes_after, session_position,
};

use crate::DynamoStore;
use crate::items::{
    self, Failure, Item, get_n, get_s, n, opt_s, s, session_from_item, session_key,
};

pub(crate) const SESSIONS_BY_USER: &str = "sessions_by_user";
pub(crate) const SESSIONS_BY_DEVICE: &str = "sessions_by_device";
pub(crate) const SESSIONS_BY_TIME: &str = "sessions_by_time";
pub(crate) const LEDGER_BY_USER: &str = "ledger_by_user";
pub(crate) const REFUNDS: &str = "refunds";
/// The ledger item's attribute naming the user it touches (`ledger_by_user`'s partition key).
pub(crate) const L_USER: &str = "l_user";
/// `REFUND` on refund entries only (`refunds`' partition key).
pub(crate) const L_REFUND: &str = "l_refund";

/// One index query: partition `hash = value`, sort key `range` between `lo` and `hi`.
pub(super) struct IndexQuery<'a> {
    pub index: &'a str,
    pub hash: &'a str,
    pub value: String,
    pub range: &'a str,
    pub lo: u64,
    pub hi: u64,
}

impl DynamoStore {
    /// Read `q` newest first until the page is exact (see the module's note on ties): the items
    /// `keep` accepts that come after `page.after`, at most `page.limit`, and the next position.
    pub(super) async fn page_of<T>(
        &self,
        q: &IndexQuery<'_>,
        page: &PageRequest,
        keep: impl Fn(&Item) -> Result<Option<T>, Failure>,
        pos: impl Fn(&T) -> ListPosition,
    ) -> Result<Page<T>, Failure> {
        self.page_with(q, page, Vec::new(), keep, pos).await
    }

    /// [`Self::page_of`], with `extra`: the items of the list that are not in the index (open
    /// sessions, `items::session_item`), already filtered, within the query's range. An item in
    /// both (it was closed, hence indexed, between the two reads) is taken from the index.
    pub(super) async fn page_with<T>(
        &self,
        q: &IndexQuery<'_>,
        page: &PageRequest,
        extra: Vec<T>,
        keep: impl Fn(&Item) -> Result<Option<T>, Failure>,
        pos: impl Fn(&T) -> ListPosition,
    ) -> Result<Page<T>, Failure> {
        let limit = usize::try_from(page.limit).unwrap_or(usize::MAX);
        let mut found: Vec<(ListPosition, bool, T)> = Vec::new();
        let mut start: Option<Item> = None;
        if q.lo > q.hi {
            return Ok(Page {
                items: Vec::new(),
                next: None,
            });
        }
        for t in extra {
            let p = pos(&t);
            if comes_after(&p, page.after.as_ref()) {
                found.push((p, true, t));
            }
        }
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(q.index)
                .key_condition_expression("#h = :h AND #r BETWEEN :lo AND :hi")
                .expression_attribute_names("#h", q.hash)
                .expression_attribute_names("#r", q.range)
                .expression_attribute_values(":h", s(q.value.clone()))
                .expression_attribute_values(":lo", n(q.lo))
                .expression_attribute_values(":hi", n(q.hi))
                .scan_index_forward(false)
                .limit(i32::try_from(limit.saturating_add(1).max(50)).unwrap_or(i32::MAX))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| items::sdk_error(&e))?;
            let mut last_at = None;
            for item in out.items() {
                last_at = Some(get_n::<u64>(item, q.range)?);
                if let Some(t) = keep(item)? {
                    let p = pos(&t);
                    if comes_after(&p, page.after.as_ref()) {
                        found.push((p, false, t));
                    }
                }
            }
            // Newest first; of two at one position, the index's first (then the other dropped).
            found.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            found.dedup_by(|later, first| later.0 == first.0);
            start = out.last_evaluated_key;
            let exact = found.len() > limit
                && last_at.is_some_and(|t| {
                    found
                        .get(limit.saturating_sub(1))
                        .is_some_and(|f| t < f.0.at)
                });
            if start.is_none() || exact {
                break;
            }
        }
        let more = found.len() > limit;
        found.truncate(limit);
        let next = if more {
            found.last().map(|f| f.0.clone())
        } else {
            None
        };
        Ok(Page {
            items: found.into_iter().map(|f| f.2).collect(),
            next,
        })
    }

    /// The open sessions a session list must add to its index's (open sessions are in no list
    /// index, `items::session_item`): a user's from their wallet's `open_sessions` (read
    /// consistently, as the sessions then are), a machine's from its device item's `open`, all
    /// of them from the `due` index's `DUE` and `ACTIVE` partitions (what the sweepers read:
    /// every open session).
    async fn open_sessions(
        &self,
        filter: &SessionFilter,
    ) -> Result<Vec<blepay_core::Session>, Failure> {
        let ids: Vec<SessionId> = match (&filter.user, filter.device) {
            (Some(u), _) => {
                let Some(wallet) = self.get(items::wallet_key(u)).await? else {
                    return Ok(Vec::new());
                };
                match wallet.get(items::OPEN_SESSIONS) {
                    Some(aws_sdk_dynamodb::types::AttributeValue::Ss(ids)) => ids
                        .iter()
                        .map(|id| {
                            SessionId::parse(id)
                                .map_err(|_| Failure::from(items::corrupt("wallet", "open")))
                        })
                        .collect::<Result<_, _>>()?,
                    _ => Vec::new(),
                }
            }
            (None, Some(d)) => {
                let Some(device) = self.get(items::device_key(d)).await? else {
                    return Ok(Vec::new());
                };
                items::device_from_item(&device)?
                    .open
                    .map(|o| o.id)
                    .into_iter()
                    .collect()
            }
            (None, None) => return self.all_open_sessions().await,
        };
        // `TransactGetItems` (consistent; `GetItem` per item in IAM): the phone routes' function,
        // which lists a user's sessions, has no `BatchGetItem`.
        let mut sessions = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(100) {
            let keys = chunk.iter().map(|sid| session_key(*sid)).collect();
            for item in self.transact_get(keys).await?.into_iter().flatten() {
                sessions.push(session_from_item(&item)?);
            }
        }
        Ok(sessions)
    }

    /// Every open session, from the `due` index's `DUE` and `ACTIVE` partitions.
    async fn all_open_sessions(&self) -> Result<Vec<blepay_core::Session>, Failure> {
        let mut sessions = Vec::new();
        for partition in [items::DUE_PARTITION, items::ACTIVE_PARTITION] {
            let mut start: Option<Item> = None;
            loop {
                let out = self
                    .client
                    .query()
                    .table_name(&self.table)
                    .index_name(items::DUE_INDEX)
                    .key_condition_expression("#pk = :pk")
                    .expression_attribute_names("#pk", items::DUE_PK)
                    .expression_attribute_values(":pk", s(partition))
                    .set_exclusive_start_key(start.take())
                    .send()
                    .await
                    .map_err(|e| items::sdk_error(&e))?;
                for item in out.items() {
                    if item.get("type") == Some(&s("SESSION")) {
                        sessions.push(session_from_item(item)?);
                    }
                }
                match out.last_evaluated_key {
                    Some(k) if !k.is_empty() => start = Some(k),
                    _ => break,
                }
            }
        }
        Ok(sessions)
    }

    pub(super) async fn list_sessions_once(
        &self,
        filter: &SessionFilter,
        page: &PageRequest,
        now: u64,
    ) -> Result<Page<blepay_core::Session>, Failure> {
        // The status shown is current: due AUTHORIZED sessions are expired first.
        self.expire_due_once(now).await?;
        let (index, hash, value) = match (&filter.user, filter.device) {
            (Some(u), _) => (SESSIONS_BY_USER, "user", u.as_str().to_owned()),
            (None, Some(d)) => (SESSIONS_BY_DEVICE, "device", d.to_string()),
            (None, None) => (SESSIONS_BY_TIME, "type", "SESSION".to_owned()),
        };
        let hi = filter
            .to
            .unwrap_or(u64::MAX)
            .min(page.after.as_ref().map_or(u64::MAX, |a| a.at));
        let q = IndexQuery {
            index,
            hash,
            value,
            range: "created_at",
            lo: filter.from.unwrap_or(0),
            hi: hi.min(i64::MAX as u64),
        };
        let extra = self
            .open_sessions(filter)
            .await?
            .into_iter()
            .filter(|s| (q.lo..=q.hi).contains(&s.created_at) && filter.matches(s))
            .collect();
        self.page_with(
            &q,
            page,
            extra,
            |item| {
                // `sessions_by_user` also holds problem items (`user` + `created_at`).
                if item.get("type") != Some(&s("SESSION")) {
                    return Ok(None);
                }
                let s = session_from_item(item)?;
                Ok(filter.matches(&s).then_some(s))
            },
            session_position,
        )
        .await
    }

    pub(super) async fn statement_once(
        &self,
        user: &UserId,
        page: &PageRequest,
    ) -> Result<Page<StatementEntry>, Failure> {
        let q = IndexQuery {
            index: LEDGER_BY_USER,
            hash: L_USER,
            value: user.as_str().to_owned(),
            range: "at",
            lo: 0,
            hi: page
                .after
                .as_ref()
                .map_or(u64::MAX, |a| a.at)
                .min(i64::MAX as u64),
        };
        self.page_of(
            &q,
            page,
            |item| entry_from_item(item).map(Some),
            StatementEntry::position,
        )
        .await
    }

    pub(super) async fn sales_facts_once(&self, from: u64, to: u64) -> Result<SalesFacts, Failure> {
        let mut facts = SalesFacts::default();
        if to <= from {
            return Ok(facts);
        }
        let all = PageRequest {
            limit: u32::MAX,
            after: None,
        };
        let sessions = IndexQuery {
            index: SESSIONS_BY_TIME,
            hash: "type",
            value: "SESSION".into(),
            range: "created_at",
            lo: from,
            hi: to - 1,
        };
        let open = self
            .all_open_sessions()
            .await?
            .into_iter()
            .filter(|s| (from..to).contains(&s.created_at))
            .collect();
        facts.sessions = self
            .page_with(
                &sessions,
                &all,
                open,
                |i| session_from_item(i).map(Some).map_err(Failure::from),
                session_position,
            )
            .await?
            .items;
        let refunds = IndexQuery {
            index: REFUNDS,
            hash: L_REFUND,
            value: EntryKind::Refund.as_str().into(),
            range: "at",
            lo: from,
            hi: to - 1,
        };
        let entries = self
            .page_of(
                &refunds,
                &all,
                |i| entry_from_item(i).map(Some),
                StatementEntry::position,
            )
            .await?
            .items;
        // Each refund's machine: its session's, from the sessions already read or one
        // `BatchGetItem` per 100 others.
        let mut device_of: HashMap<SessionId, DeviceId> =
            facts.sessions.iter().map(|s| (s.id, s.device_id)).collect();
        let missing: Vec<SessionId> = entries
            .iter()
            .filter_map(|e| e.session)
            .filter(|sid| !device_of.contains_key(sid))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        for chunk in missing.chunks(100) {
            let keys = chunk.iter().map(|sid| session_key(*sid)).collect();
            for item in self.batch_get(keys).await?.into_iter().flatten() {
                let s = session_from_item(&item)?;
                device_of.insert(s.id, s.device_id);
            }
        }
        for e in entries {
            let device = e
                .session
                .and_then(|sid| device_of.get(&sid).copied())
                .ok_or_else(|| Failure::Fatal(items::corrupt("refund entry", "session")))?;
            facts.refunds.push(RefundFact {
                device,
                at: e.at,
                amount: e.amount,
            });
        }
        Ok(facts)
    }
}

/// A ledger item as a statement entry (its id is its `pk`).
fn entry_from_item(item: &Item) -> Result<StatementEntry, Failure> {
    let kind = EntryKind::parse(get_s(item, "kind")?)
        .ok_or_else(|| items::corrupt("ledger entry", "kind"))?;
    Ok(StatementEntry {
        id: get_s(item, items::PK)?.to_owned(),
        at: get_n(item, "at")?,
        kind,
        debit: get_s(item, "debit")?.to_owned(),
        credit: get_s(item, "credit")?.to_owned(),
        amount: Amount::new(get_n(item, "amount")?)
            .map_err(|_| items::corrupt("ledger entry", "amount"))?,
        session: opt_s(item, "session")?
            .map(|v| SessionId::parse(v).map_err(|_| items::corrupt("ledger entry", "session")))
            .transpose()?,
        actor: opt_s(item, "actor")?.map(str::to_owned),
    })
}
