//! Users' top-ups through a payment provider (issue 12, docs/topups.md; items in
//! docs/dynamodb.md "Provider top-ups"). Each operation reads, calls the shared decision
//! (`blepay_store::decide::{decide_start_topup, decide_provider_event, decide_topup_refund}`) and
//! writes one `TransactWriteItems` conditioned on what it read; a lost race re-runs the whole
//! operation, which then decides from what won.
//!
//! - the top-up item (`TOPUP#<id>` / `TOPUP`) carries a `version`: every write of it is a `Put`
//!   conditioned on the version it read and bumps it, so two different events (or an event and a
//!   refund) on one top-up never lose an update — one commits, the other reads again;
//! - the (user, key) record is created with the top-up (`attribute_not_exists`), so a key makes
//!   one top-up however many requests race;
//! - a provider event's item (`PEVENT#<provider>#<key>`) is put with `attribute_not_exists` in
//!   the same transaction as the top-up, the wallet and the ledger entries it causes: an event
//!   moves money at most once, and of concurrent duplicates one commits and the others, read
//!   again, answer `Duplicate`;
//! - refunds live in the top-up's partition (`REFUND#<id>`, and the (top-up, key) record
//!   `REFUNDKEY#<key>`), so a top-up's refunds are one `Query`; every change of a refund also
//!   writes its top-up, so the top-up's version orders them too.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::TransactWriteItem;
use aws_sdk_dynamodb::types::{AttributeValue, Put, ReturnValuesOnConditionCheckFailure};
use blepay_core::{Currency, IdempotencyKey, LedgerEntry, Provider, UserId, Wallet};
use blepay_store::decide::{
    AppliedEvent, NewTopUpRefund, ProviderEventDecision, ProviderEventFacts, StartTopUpDecision,
    TopUpRefundDecision, TopUpRefundFacts, decide_provider_event, decide_start_topup,
    decide_topup_refund,
};
use blepay_store::{
    ListPosition, NewProviderTopUp, Page, PageRequest, ProviderEvent, ProviderEventKind,
    ProviderEventOutcome, ProviderTopUp, Reason, StartTopUpOutcome, StoreError, TopUpFilter,
    TopUpId, TopUpLocator, TopUpRefund, TopUpRefundCommand, TopUpRefundId, TopUpRefundOutcome,
    TopUpRefundStatus, TopUpStatus,
};

use super::attempts::Tx;
use super::lists::{IndexQuery, SESSIONS_BY_TIME};
use crate::DynamoStore;
use crate::items::{
    self, Failure, Item, Upd, WalletItem, build_error, get_n, get_s, key, n, opt_s, put_new, s,
    wallet_from_item, wallet_key,
};

/// The GSI of a user's top-ups: `t_user` + `created_at` (the top-up item's own attributes).
pub(crate) const TOPUPS_BY_USER: &str = "topups_by_user";
/// The top-up item's user (not `user`, which would put it in `sessions_by_user`).
pub(crate) const T_USER: &str = "t_user";
/// The top-up item's `type`, also its partition of `sessions_by_time` (the unfiltered list).
const TOPUP_TYPE: &str = "TOPUP";

// ---------------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------------

fn topup_key(id: TopUpId) -> Item {
    key(format!("TOPUP#{id}"), "TOPUP")
}

/// The (user, key) record of a provider top-up (`PTOPUP#`: the operator's top-up keys are
/// `TOPUP#` in the same partition).
fn topup_key_record(user: &UserId, k: &IdempotencyKey) -> Item {
    key(format!("USER#{user}"), &format!("PTOPUP#{k}"))
}

/// The provider's payment object → the top-up ([`TopUpLocator::ProviderRef`]).
fn provider_ref_key(provider: Provider, r: &str) -> Item {
    key(format!("PREF#{provider}#{r}"), "PREF")
}

/// A provider event applied (its presence is "seen").
fn event_key(provider: Provider, k: &str) -> Item {
    key(format!("PEVENT#{provider}#{k}"), "PEVENT")
}

fn refund_key(topup: TopUpId, id: TopUpRefundId) -> Item {
    key(format!("TOPUP#{topup}"), &format!("REFUND#{id}"))
}

/// The (top-up, key) record of a refund (`REFUNDKEY#` does not begin with `REFUND#`, so the
/// refunds' `Query` does not see it).
fn refund_key_record(topup: TopUpId, k: &IdempotencyKey) -> Item {
    key(format!("TOPUP#{topup}"), &format!("REFUNDKEY#{k}"))
}

/// The ledger id of the `i`-th entry a write of version `version` of the top-up made: one
/// write per version, so ids never repeat.
fn ledger_id(topup: TopUpId, version: u64, i: usize) -> String {
    format!("PTOPUP#{topup}#{version}#{i}")
}

// ---------------------------------------------------------------------------------------------
// Items
// ---------------------------------------------------------------------------------------------

fn put_opt(item: &mut Item, attr: &str, v: Option<&str>) {
    if let Some(v) = v {
        item.insert(attr.into(), s(v));
    }
}

/// The top-up item at `version`.
fn topup_item(t: &ProviderTopUp, version: u64) -> Item {
    let mut item = topup_key(t.id);
    item.extend([
        ("type".to_string(), s(TOPUP_TYPE)),
        ("id".to_string(), s(t.id.to_string())),
        (T_USER.to_string(), s(t.user.as_str())),
        ("provider".to_string(), s(t.provider.as_str())),
        ("amount".to_string(), n(t.amount.minor())),
        ("currency".to_string(), s(t.currency.as_str())),
        ("status".to_string(), s(t.status.as_str())),
        ("key".to_string(), s(t.key.to_string())),
        ("created_at".to_string(), n(t.created_at)),
        ("updated_at".to_string(), n(t.updated_at)),
        ("credited".to_string(), n(t.credited.minor())),
        (
            "provider_refunded".to_string(),
            n(t.provider_refunded.minor()),
        ),
        ("disputed".to_string(), n(t.disputed.minor())),
        (
            "refunds_committed".to_string(),
            n(t.refunds_committed.minor()),
        ),
        ("debited".to_string(), n(t.debited.minor())),
        ("version".to_string(), n(version)),
    ]);
    put_opt(&mut item, "provider_ref", t.provider_ref.as_deref());
    put_opt(&mut item, "client_secret", t.client_secret.as_deref());
    put_opt(&mut item, "transaction_id", t.transaction_id.as_deref());
    put_opt(&mut item, "mismatch", t.mismatch.as_deref());
    put_opt(&mut item, "failure", t.failure.as_deref());
    item
}

fn parse_attr<T, E>(
    item: &Item,
    what: &str,
    attr: &str,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<T, StoreError> {
    parse(get_s(item, attr)?).map_err(|_| items::corrupt(what, attr))
}

fn amount(item: &Item, what: &str, attr: &str) -> Result<blepay_core::Amount, StoreError> {
    blepay_core::Amount::new(get_n(item, attr)?).map_err(|_| items::corrupt(what, attr))
}

/// A top-up item and its version.
pub(super) fn topup_from_item(item: &Item) -> Result<(ProviderTopUp, u64), StoreError> {
    const T: &str = "provider top-up";
    let text = |attr| opt_s(item, attr).map(|v| v.map(str::to_owned));
    let t = ProviderTopUp {
        id: parse_attr(item, T, "id", TopUpId::parse)?,
        user: parse_attr(item, T, T_USER, UserId::parse)?,
        provider: parse_attr(item, T, "provider", |v| Provider::parse(v).ok_or(()))?,
        amount: amount(item, T, "amount")?,
        currency: parse_attr(item, T, "currency", Currency::parse)?,
        status: parse_attr(item, T, "status", |v| TopUpStatus::parse(v).ok_or(()))?,
        key: parse_attr(item, T, "key", IdempotencyKey::parse)?,
        provider_ref: text("provider_ref")?,
        client_secret: text("client_secret")?,
        transaction_id: text("transaction_id")?,
        created_at: get_n(item, "created_at")?,
        updated_at: get_n(item, "updated_at")?,
        credited: amount(item, T, "credited")?,
        provider_refunded: amount(item, T, "provider_refunded")?,
        disputed: amount(item, T, "disputed")?,
        refunds_committed: amount(item, T, "refunds_committed")?,
        debited: amount(item, T, "debited")?,
        mismatch: text("mismatch")?,
        failure: text("failure")?,
    };
    Ok((t, get_n(item, "version")?))
}

fn refund_item(r: &TopUpRefund) -> Item {
    let mut item = refund_key(r.topup, r.id);
    item.extend([
        ("type".to_string(), s("TOPUP_REFUND")),
        ("id".to_string(), s(r.id.to_string())),
        ("topup".to_string(), s(r.topup.to_string())),
        ("amount".to_string(), n(r.amount.minor())),
        ("reason".to_string(), s(r.reason.as_str())),
        ("actor".to_string(), s(&r.actor)),
        ("key".to_string(), s(r.key.to_string())),
        ("status".to_string(), s(r.status.as_str())),
        ("created_at".to_string(), n(r.created_at)),
        ("updated_at".to_string(), n(r.updated_at)),
    ]);
    put_opt(&mut item, "failure", r.failure.as_deref());
    item
}

fn refund_from_item(item: &Item) -> Result<TopUpRefund, StoreError> {
    const R: &str = "top-up refund";
    Ok(TopUpRefund {
        id: parse_attr(item, R, "id", TopUpRefundId::parse)?,
        topup: parse_attr(item, R, "topup", TopUpId::parse)?,
        amount: amount(item, R, "amount")?,
        reason: parse_attr(item, R, "reason", Reason::parse)?,
        actor: get_s(item, "actor")?.to_owned(),
        key: parse_attr(item, R, "key", IdempotencyKey::parse)?,
        status: parse_attr(item, R, "status", |v| TopUpRefundStatus::parse(v).ok_or(()))?,
        failure: opt_s(item, "failure")?.map(str::to_owned),
        created_at: get_n(item, "created_at")?,
        updated_at: get_n(item, "updated_at")?,
    })
}

// ---------------------------------------------------------------------------------------------
// Writes
// ---------------------------------------------------------------------------------------------

/// A `Put` conditioned on `cond` (with `#version`/`#pk` names available) as a transaction action.
fn put_if(
    table: &str,
    item: Item,
    cond: &str,
    values: Item,
) -> Result<TransactWriteItem, StoreError> {
    let names: HashMap<String, String> = [("#version", "version"), ("#pk", "pk")]
        .into_iter()
        .filter(|(k, _)| cond.contains(k))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let put = Put::builder()
        .table_name(table)
        .set_item(Some(item))
        .condition_expression(cond)
        .set_expression_attribute_names((!names.is_empty()).then_some(names))
        .set_expression_attribute_values((!values.is_empty()).then_some(values))
        .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
        .build()
        .map_err(build_error)?;
    Ok(TransactWriteItem::builder().put(put).build())
}

/// The top-up at `read + 1`, conditioned on it still being at `read` (`None`: it is new).
fn topup_write(
    table: &str,
    t: &ProviderTopUp,
    read: Option<u64>,
) -> Result<TransactWriteItem, StoreError> {
    match read {
        None => put_new(table, topup_item(t, 0)),
        Some(v) => put_if(
            table,
            topup_item(t, v.saturating_add(1)),
            "#version = :read_version",
            HashMap::from([(":read_version".to_string(), n(v))]),
        ),
    }
}

/// The wallet's new balances, conditioned on the balances the decision read (or on it not
/// existing yet).
fn wallet_write(
    table: &str,
    user: &UserId,
    read: &WalletItem,
    after: Wallet,
) -> Result<TransactWriteItem, StoreError> {
    let upd = Upd::new(wallet_key(user))
        .set("available = :a, held = :h, spent = :s, #type = :type, #user = :user")
        .set("holds = if_not_exists(holds, :empty)")
        .name("#type", "type")
        .name("#user", "user")
        .val(":a", n(after.available.minor()))
        .val(":h", n(after.held.minor()))
        .val(":s", n(after.spent.minor()))
        .val(":type", s("WALLET"))
        .val(":user", s(user.as_str()))
        .val(":empty", AttributeValue::M(HashMap::new()));
    if read.exists {
        upd.cond("available = :pa AND held = :ph AND spent = :ps")
            .val(":pa", n(read.wallet.available.minor()))
            .val(":ph", n(read.wallet.held.minor()))
            .val(":ps", n(read.wallet.spent.minor()))
    } else {
        upd.cond("attribute_not_exists(pk)")
    }
    .into_transact(table)
}

/// The ledger entries of one write of the top-up (at `version`), each `attribute_not_exists`.
fn ledger_writes(
    table: &str,
    t: &ProviderTopUp,
    version: u64,
    entries: &[LedgerEntry],
    at: u64,
    extra: &[(&str, AttributeValue)],
) -> Result<Vec<TransactWriteItem>, StoreError> {
    entries
        .iter()
        .enumerate()
        .map(|(i, entry)| {
            let mut item = items::ledger_item(entry, at, None, &ledger_id(t.id, version, i));
            item.insert("topup".into(), s(t.id.to_string()));
            for (k, v) in extra {
                item.insert((*k).to_owned(), v.clone());
            }
            put_new(table, item)
        })
        .collect()
}

/// The refund an event names, if any.
fn named_refund(kind: &ProviderEventKind) -> Option<TopUpRefundId> {
    match kind {
        ProviderEventKind::Refunded {
            refund: Some(r), ..
        }
        | ProviderEventKind::RefundConfirmed { refund: r }
        | ProviderEventKind::RefundFailed { refund: r, .. } => Some(*r),
        _ => None,
    }
}

/// What an applied event did, kept on its item for the operator.
fn outcome_name(o: &ProviderEventOutcome) -> &'static str {
    match o {
        ProviderEventOutcome::Applied { .. } => "APPLIED",
        ProviderEventOutcome::Duplicate => "DUPLICATE",
        ProviderEventOutcome::UnknownTopUp => "UNKNOWN_TOPUP",
        ProviderEventOutcome::Mismatch(_) => "MISMATCH",
        ProviderEventOutcome::Ignored(_) => "IGNORED",
    }
}

fn wrong_count() -> StoreError {
    StoreError::Internal("TransactGetItems answered the wrong count".into())
}

impl DynamoStore {
    async fn read_topup(&self, id: TopUpId) -> Result<Option<(ProviderTopUp, u64)>, Failure> {
        Ok(self
            .get(topup_key(id))
            .await?
            .as_ref()
            .map(topup_from_item)
            .transpose()?)
    }

    /// The top-up a provider's payment object was attached to.
    async fn ref_target(&self, provider: Provider, r: &str) -> Result<Option<TopUpId>, Failure> {
        Ok(self
            .get(provider_ref_key(provider, r))
            .await?
            .map(|item| parse_attr(&item, "provider ref", "topup", TopUpId::parse))
            .transpose()?)
    }

    pub(super) async fn start_topup_once(
        &self,
        cmd: &NewProviderTopUp,
    ) -> Result<StartTopUpOutcome, Failure> {
        let prior = match self.get(topup_key_record(&cmd.user, &cmd.key)).await? {
            None => None,
            Some(record) => {
                let id = parse_attr(&record, "top-up key", "topup", TopUpId::parse)?;
                let (t, _) = self.read_topup(id).await?.ok_or_else(|| {
                    StoreError::Corrupt(format!("top-up {id} of a key record is missing"))
                })?;
                Some(t)
            }
        };
        match decide_start_topup(prior.as_ref(), cmd) {
            StartTopUpDecision::Answer(outcome) => Ok(outcome),
            StartTopUpDecision::Create(t) => {
                let mut record = topup_key_record(&t.user, &t.key);
                record.extend([
                    ("type".to_string(), s("TOPUP_KEY")),
                    ("topup".to_string(), s(t.id.to_string())),
                ]);
                let writes = vec![
                    put_new(&self.table, record)?,
                    topup_write(&self.table, &t, None)?,
                ];
                // A lost race on the key re-runs: the winner's top-up is then `Existing`.
                self.transact_or_rerun(writes).await?;
                Ok(StartTopUpOutcome::Created(t))
            }
        }
    }

    pub(super) async fn attach_topup_ref_once(
        &self,
        id: TopUpId,
        provider_ref: &str,
        client_secret: Option<&str>,
        now: u64,
    ) -> Result<Option<ProviderTopUp>, Failure> {
        let Some((t, version)) = self.read_topup(id).await? else {
            return Ok(None);
        };
        if t.provider_ref.as_deref() == Some(provider_ref)
            && t.client_secret.as_deref() == client_secret
        {
            return Ok(Some(t));
        }
        let mut next = t.clone();
        next.provider_ref = Some(provider_ref.to_owned());
        next.client_secret = client_secret.map(str::to_owned);
        next.updated_at = now.max(t.updated_at);
        let mut pointer_item = provider_ref_key(t.provider, provider_ref);
        pointer_item.extend([
            ("type".to_string(), s("PROVIDER_REF")),
            ("topup".to_string(), s(id.to_string())),
        ]);
        let writes = vec![
            topup_write(&self.table, &next, Some(version))?,
            // A payment object names one top-up: another's is refused, not overwritten.
            put_if(
                &self.table,
                pointer_item,
                "attribute_not_exists(#pk) OR topup = :id",
                HashMap::from([(":id".to_string(), s(id.to_string()))]),
            )?,
        ];
        match self.transact(writes).await? {
            Tx::Done => Ok(Some(next)),
            Tx::Cancelled(reasons) => {
                let other = reasons
                    .get(1)
                    .and_then(|(code, old)| (code == "ConditionalCheckFailed").then_some(old))
                    .and_then(|old| old.as_ref())
                    .and_then(|old| opt_s(old, "topup").ok().flatten())
                    .filter(|other| *other != id.to_string());
                if let Some(other) = other {
                    return Err(StoreError::Internal(format!(
                        "the {} payment object {provider_ref} already names top-up {other}",
                        t.provider
                    ))
                    .into());
                }
                Err(Failure::Contention(
                    "the top-up changed since it was read".into(),
                ))
            }
        }
    }

    pub(super) async fn topup_once(&self, id: TopUpId) -> Result<Option<ProviderTopUp>, Failure> {
        Ok(self.read_topup(id).await?.map(|(t, _)| t))
    }

    /// The top-up a locator names: by id, or the one whose payment object the provider ref is
    /// now (a top-up whose ref was replaced is no longer found by the old one).
    async fn locate(
        &self,
        locator: &TopUpLocator,
    ) -> Result<Option<(ProviderTopUp, u64)>, Failure> {
        match locator {
            TopUpLocator::Id(id) => self.read_topup(*id).await,
            TopUpLocator::ProviderRef(provider, r) => {
                let Some(id) = self.ref_target(*provider, r).await? else {
                    return Ok(None);
                };
                Ok(self.read_topup(id).await?.filter(|(t, _)| {
                    t.provider == *provider && t.provider_ref.as_deref() == Some(r.as_str())
                }))
            }
        }
    }

    pub(super) async fn find_topup_once(
        &self,
        locator: &TopUpLocator,
    ) -> Result<Option<ProviderTopUp>, Failure> {
        Ok(self.locate(locator).await?.map(|(t, _)| t))
    }

    pub(super) async fn apply_provider_event_once(
        &self,
        ev: &ProviderEvent,
    ) -> Result<ProviderEventOutcome, Failure> {
        let Some((first, _)) = self.locate(&ev.topup).await? else {
            // No top-up: nothing is written (the decision answers from `seen`).
            let seen = self.get(event_key(ev.provider, &ev.key)).await?.is_some();
            let facts = ProviderEventFacts {
                event: ev,
                seen,
                topup: None,
                wallet: Wallet::default(),
                refund: None,
            };
            return match decide_provider_event(&facts)? {
                ProviderEventDecision::Answer(outcome) => Ok(outcome),
                ProviderEventDecision::Apply(_) => Err(StoreError::Internal(
                    "an event without its top-up was to be applied".into(),
                )
                .into()),
            };
        };
        // One consistent snapshot of every fact: the top-up, its user's wallet, the event's
        // record, the refund it names.
        let refund_id = named_refund(&ev.kind);
        let mut keys = vec![
            topup_key(first.id),
            wallet_key(&first.user),
            event_key(ev.provider, &ev.key),
        ];
        if let Some(r) = refund_id {
            keys.push(refund_key(first.id, r));
        }
        let mut got = self.transact_get(keys).await?.into_iter();
        let (Some(topup), Some(wallet), Some(seen)) = (got.next(), got.next(), got.next()) else {
            return Err(wrong_count().into());
        };
        let refund = got.next().flatten();
        let Some((topup, version)) = topup.as_ref().map(topup_from_item).transpose()? else {
            return Err(StoreError::Corrupt(format!("top-up {} vanished", first.id)).into());
        };
        let w = wallet_from_item(wallet.as_ref())?;
        if self.expire_due_holds(&w, ev.now).await? {
            return Err(Failure::Contention("expired due holds; read again".into()));
        }
        let refund = refund.as_ref().map(refund_from_item).transpose()?;
        let facts = ProviderEventFacts {
            event: ev,
            seen: seen.is_some(),
            topup: Some(&topup),
            wallet: w.wallet,
            refund: refund.as_ref(),
        };
        let applied = match decide_provider_event(&facts)? {
            ProviderEventDecision::Answer(outcome) => return Ok(outcome),
            ProviderEventDecision::Apply(applied) => applied,
        };
        let writes = self.event_writes(ev, &topup, version, &w, &applied)?;
        // A lost race (a duplicate committed first, the top-up or wallet changed) re-runs.
        self.transact_or_rerun(writes).await?;
        Ok(applied.outcome)
    }

    /// An applied event's one transaction: its record (new), the top-up (at the version read),
    /// the wallet (its balances as read) and the entries when money moved, the refund it changed.
    fn event_writes(
        &self,
        ev: &ProviderEvent,
        read: &ProviderTopUp,
        version: u64,
        w: &WalletItem,
        applied: &AppliedEvent,
    ) -> Result<Vec<TransactWriteItem>, StoreError> {
        let mut record = event_key(ev.provider, &ev.key);
        record.extend([
            ("type".to_string(), s("PROVIDER_EVENT")),
            ("provider".to_string(), s(ev.provider.as_str())),
            ("key".to_string(), s(&ev.key)),
            ("topup".to_string(), s(read.id.to_string())),
            ("at".to_string(), n(ev.now)),
            ("outcome".to_string(), s(outcome_name(&applied.outcome))),
        ]);
        let mut writes = vec![
            put_new(&self.table, record)?,
            topup_write(&self.table, &applied.topup, Some(version))?,
        ];
        if !applied.entries.is_empty() {
            writes.push(wallet_write(&self.table, &read.user, w, applied.wallet)?);
            writes.extend(ledger_writes(
                &self.table,
                read,
                version.saturating_add(1),
                &applied.entries,
                ev.now,
                &[("event", s(&ev.key))],
            )?);
        }
        if let Some(r) = &applied.refund {
            // Its changes are ordered by the top-up's version (every one writes both).
            writes.push(put_if(
                &self.table,
                refund_item(r),
                "attribute_exists(#pk)",
                Item::new(),
            )?);
        }
        Ok(writes)
    }

    pub(super) async fn request_topup_refund_once(
        &self,
        cmd: &TopUpRefundCommand,
    ) -> Result<TopUpRefundOutcome, Failure> {
        let Some((first, _)) = self.read_topup(cmd.topup).await? else {
            return Ok(TopUpRefundOutcome::NotFound);
        };
        let mut got = self
            .transact_get(vec![
                topup_key(cmd.topup),
                wallet_key(&first.user),
                refund_key_record(cmd.topup, &cmd.key),
            ])
            .await?
            .into_iter();
        let (Some(topup), Some(wallet), Some(record)) = (got.next(), got.next(), got.next()) else {
            return Err(wrong_count().into());
        };
        let Some((topup, version)) = topup.as_ref().map(topup_from_item).transpose()? else {
            return Err(StoreError::Corrupt(format!("top-up {} vanished", cmd.topup)).into());
        };
        let w = wallet_from_item(wallet.as_ref())?;
        if self.expire_due_holds(&w, cmd.now).await? {
            return Err(Failure::Contention("expired due holds; read again".into()));
        }
        // The key's refund (refunds are never deleted; it was written with its record).
        let prior = match record {
            None => None,
            Some(record) => {
                let rid = parse_attr(&record, "refund key", "refund", TopUpRefundId::parse)?;
                let item = self.get(refund_key(cmd.topup, rid)).await?.ok_or_else(|| {
                    StoreError::Corrupt(format!("refund {rid} of a key record is missing"))
                })?;
                Some(refund_from_item(&item)?)
            }
        };
        let facts = TopUpRefundFacts {
            cmd,
            topup: Some(&topup),
            prior: prior.as_ref(),
            wallet: w.wallet,
        };
        let new = match decide_topup_refund(&facts)? {
            TopUpRefundDecision::Answer(outcome) => return Ok(outcome),
            TopUpRefundDecision::Request(new) => new,
        };
        let writes = self.topup_refund_writes(cmd, version, &w, &new)?;
        self.transact_or_rerun(writes).await?;
        let NewTopUpRefund {
            refund,
            topup,
            wallet,
            ..
        } = new;
        Ok(TopUpRefundOutcome::Requested {
            refund,
            topup,
            wallet,
        })
    }

    /// A refund request's one transaction: the key's record and the refund (new), the top-up (at
    /// the version read), the wallet (its balances as read: the refundable amount was decided
    /// from them) and the entry, which names the operator.
    fn topup_refund_writes(
        &self,
        cmd: &TopUpRefundCommand,
        version: u64,
        w: &WalletItem,
        new: &NewTopUpRefund,
    ) -> Result<Vec<TransactWriteItem>, StoreError> {
        let mut record = refund_key_record(cmd.topup, &cmd.key);
        record.extend([
            ("type".to_string(), s("TOPUP_REFUND_KEY")),
            ("refund".to_string(), s(new.refund.id.to_string())),
        ]);
        let mut writes = vec![
            put_new(&self.table, record)?,
            put_new(&self.table, refund_item(&new.refund))?,
            topup_write(&self.table, &new.topup, Some(version))?,
            wallet_write(&self.table, &new.topup.user, w, new.wallet)?,
        ];
        writes.extend(ledger_writes(
            &self.table,
            &new.topup,
            version.saturating_add(1),
            &new.entries,
            cmd.now,
            &[
                ("actor", s(&cmd.actor)),
                ("refund", s(new.refund.id.to_string())),
            ],
        )?);
        Ok(writes)
    }

    /// A top-up's refunds, oldest first: one `Query` of its partition.
    pub(super) async fn topup_refunds_once(
        &self,
        topup: TopUpId,
    ) -> Result<Vec<TopUpRefund>, Failure> {
        let mut found = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND begins_with(sk, :refund)")
                .expression_attribute_values(":pk", s(format!("TOPUP#{topup}")))
                .expression_attribute_values(":refund", s("REFUND#"))
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| items::sdk_error(&e))?;
            for item in out.items() {
                found.push(refund_from_item(item)?);
            }
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        found.sort_by_key(|r| (r.created_at, r.id.to_string()));
        Ok(found)
    }

    /// Top-ups newest first: a user's from `topups_by_user`, else all from the `TOPUP` partition
    /// of `sessions_by_time`; `from`/`to` are the key condition, the other filters are applied to
    /// what the query returns (as the session list does, `lists.rs`).
    pub(super) async fn list_topups_once(
        &self,
        filter: &TopUpFilter,
        page: &PageRequest,
    ) -> Result<Page<ProviderTopUp>, Failure> {
        let (index, hash, value) = match &filter.user {
            Some(u) => (TOPUPS_BY_USER, T_USER, u.as_str().to_owned()),
            None => (SESSIONS_BY_TIME, "type", TOPUP_TYPE.to_owned()),
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
        self.page_of(
            &q,
            page,
            |item| {
                let (t, _) = topup_from_item(item)?;
                Ok(filter.matches(&t).then_some(t))
            },
            |t| ListPosition {
                at: t.created_at,
                id: t.id.to_string(),
            },
        )
        .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use blepay_core::Amount;

    use super::*;

    fn topup() -> ProviderTopUp {
        ProviderTopUp {
            id: TopUpId::from_bytes([3; 16]),
            user: UserId::parse("alice").unwrap(),
            provider: Provider::WechatPay,
            amount: Amount::new(500).unwrap(),
            currency: Currency::parse("CNY").unwrap(),
            status: TopUpStatus::Succeeded,
            key: IdempotencyKey::parse("k-1").unwrap(),
            provider_ref: Some("wx123".into()),
            client_secret: None,
            transaction_id: Some("4200".into()),
            created_at: 10,
            updated_at: 20,
            credited: Amount::new(500).unwrap(),
            provider_refunded: Amount::new(100).unwrap(),
            disputed: Amount::ZERO,
            refunds_committed: Amount::new(150).unwrap(),
            debited: Amount::new(150).unwrap(),
            mismatch: None,
            failure: Some("earlier".into()),
        }
    }

    #[test]
    fn a_topup_item_reads_back_as_the_topup_and_its_version() {
        let t = topup();

        let (back, version) = topup_from_item(&topup_item(&t, 7)).unwrap();

        assert_eq!(back, t);
        assert_eq!(version, 7);
    }

    #[test]
    fn a_refund_item_reads_back_as_the_refund() {
        let r = TopUpRefund {
            id: TopUpRefundId::from_bytes([4; 16]),
            topup: TopUpId::from_bytes([3; 16]),
            amount: Amount::new(50).unwrap(),
            reason: Reason::parse("customer asked").unwrap(),
            actor: "op:1".into(),
            key: IdempotencyKey::parse("r-1").unwrap(),
            status: TopUpRefundStatus::Failed,
            failure: Some("declined".into()),
            created_at: 30,
            updated_at: 40,
        };

        assert_eq!(refund_from_item(&refund_item(&r)).unwrap(), r);
    }

    #[test]
    fn a_topup_item_is_not_a_session_list_item() {
        // `user` + `created_at` would put it in `sessions_by_user`, whose readers parse sessions.
        let item = topup_item(&topup(), 0);

        assert!(!item.contains_key("user"));
        assert!(item.contains_key(T_USER));
    }
}
