//! Users' top-ups through a payment provider (issue 12, docs/topups.md), each inside the caller's
//! transaction: gather the facts, call `blepay_store::decide`'s provider decision, persist what it
//! returns. A notification's `(provider, key)` row in `provider_events` is written in the same
//! transaction as the credit or debit it causes, so it moves money at most once.

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
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter};

use crate::convert::{BadValue, Cached, amount_col, db, parse_col, ts};
use crate::ops::{Due, expire_sessions};
use crate::rows::{load_wallet, save_wallet, write_entry_by};

const TOPUP_COLUMNS: &str = "id, user_id, provider, amount, currency, status, idem_key, \
     provider_ref, client_secret, transaction_id, created_at, updated_at, credited, \
     provider_refunded, disputed, refunds_committed, debited, mismatch, failure";

fn topup_from_row(r: &Row<'_>) -> rusqlite::Result<ProviderTopUp> {
    Ok(ProviderTopUp {
        id: TopUpId::from_bytes(r.get(0)?),
        user: parse_col(r, 1, |s: String| UserId::parse(&s))?,
        provider: parse_col(r, 2, |s: String| {
            Provider::parse(&s).ok_or(BadValue("unknown provider"))
        })?,
        amount: amount_col(r, 3)?,
        currency: parse_col(r, 4, |s: String| Currency::parse(&s))?,
        status: parse_col(r, 5, |s: String| {
            TopUpStatus::parse(&s).ok_or(BadValue("unknown top-up status"))
        })?,
        key: parse_col(r, 6, |s: String| IdempotencyKey::parse(&s))?,
        provider_ref: r.get(7)?,
        client_secret: r.get(8)?,
        transaction_id: r.get(9)?,
        created_at: r.get(10)?,
        updated_at: r.get(11)?,
        credited: amount_col(r, 12)?,
        provider_refunded: amount_col(r, 13)?,
        disputed: amount_col(r, 14)?,
        refunds_committed: amount_col(r, 15)?,
        debited: amount_col(r, 16)?,
        mismatch: r.get(17)?,
        failure: r.get(18)?,
    })
}

const REFUND_COLUMNS: &str =
    "id, topup_id, amount, reason, actor, idem_key, status, failure, created_at, updated_at";

fn refund_from_row(r: &Row<'_>) -> rusqlite::Result<TopUpRefund> {
    Ok(TopUpRefund {
        id: TopUpRefundId::from_bytes(r.get(0)?),
        topup: TopUpId::from_bytes(r.get(1)?),
        amount: amount_col(r, 2)?,
        reason: parse_col(r, 3, |s: String| Reason::parse(&s))?,
        actor: r.get(4)?,
        key: parse_col(r, 5, |s: String| IdempotencyKey::parse(&s))?,
        status: parse_col(r, 6, |s: String| {
            TopUpRefundStatus::parse(&s).ok_or(BadValue("unknown top-up refund status"))
        })?,
        failure: r.get(7)?,
        created_at: r.get(8)?,
        updated_at: r.get(9)?,
    })
}

pub(crate) fn load_topup(c: &Connection, id: TopUpId) -> Result<Option<ProviderTopUp>, StoreError> {
    c.row_cached(
        &format!("SELECT {TOPUP_COLUMNS} FROM provider_topups WHERE id = ?1"),
        [id.as_bytes()],
        topup_from_row,
    )
    .optional()
    .map_err(db)
}

/// The top-up a locator names: by id (any provider's: the decision refuses another provider's),
/// or by the provider's payment object within that provider (index `provider_topups_by_ref`).
pub(crate) fn find_topup(
    c: &Connection,
    locator: &TopUpLocator,
) -> Result<Option<ProviderTopUp>, StoreError> {
    match locator {
        TopUpLocator::Id(id) => load_topup(c, *id),
        TopUpLocator::ProviderRef(provider, reference) => c
            .row_cached(
                &format!(
                    "SELECT {TOPUP_COLUMNS} FROM provider_topups
                     WHERE provider = ?1 AND provider_ref = ?2"
                ),
                params![provider.as_str(), reference],
                topup_from_row,
            )
            .optional()
            .map_err(db),
    }
}

fn insert_topup(c: &Connection, t: &ProviderTopUp) -> Result<(), StoreError> {
    c.exec_cached(
        &format!(
            "INSERT INTO provider_topups ({TOPUP_COLUMNS})
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
                     ?18, ?19)"
        ),
        params![
            t.id.as_bytes(),
            t.user.as_str(),
            t.provider.as_str(),
            t.amount.minor(),
            t.currency.as_str(),
            t.status.as_str(),
            t.key.as_str(),
            t.provider_ref,
            t.client_secret,
            t.transaction_id,
            ts(t.created_at)?,
            ts(t.updated_at)?,
            t.credited.minor(),
            t.provider_refunded.minor(),
            t.disputed.minor(),
            t.refunds_committed.minor(),
            t.debited.minor(),
            t.mismatch,
            t.failure,
        ],
    )
    .map_err(db)?;
    Ok(())
}

/// Write back what a decision changed (everything but the identity and the creation).
fn save_topup(c: &Connection, t: &ProviderTopUp) -> Result<(), StoreError> {
    c.exec_cached(
        "UPDATE provider_topups SET status = ?1, provider_ref = ?2, client_secret = ?3,
                transaction_id = ?4, updated_at = ?5, credited = ?6, provider_refunded = ?7,
                disputed = ?8, refunds_committed = ?9, debited = ?10, mismatch = ?11,
                failure = ?12
         WHERE id = ?13",
        params![
            t.status.as_str(),
            t.provider_ref,
            t.client_secret,
            t.transaction_id,
            ts(t.updated_at)?,
            t.credited.minor(),
            t.provider_refunded.minor(),
            t.disputed.minor(),
            t.refunds_committed.minor(),
            t.debited.minor(),
            t.mismatch,
            t.failure,
            t.id.as_bytes(),
        ],
    )
    .map_err(db)?;
    Ok(())
}

pub(crate) fn start_topup(
    c: &Connection,
    cmd: &NewProviderTopUp,
) -> Result<StartTopUpOutcome, StoreError> {
    let prior = c
        .row_cached(
            &format!(
                "SELECT {TOPUP_COLUMNS} FROM provider_topups WHERE user_id = ?1 AND idem_key = ?2"
            ),
            params![cmd.user.as_str(), cmd.key.as_str()],
            topup_from_row,
        )
        .optional()
        .map_err(db)?;
    match decide_start_topup(prior.as_ref(), cmd) {
        StartTopUpDecision::Answer(outcome) => Ok(outcome),
        StartTopUpDecision::Create(t) => {
            insert_topup(c, &t)?;
            Ok(StartTopUpOutcome::Created(t))
        }
    }
}

/// Record the provider's payment object; the same values again write nothing.
pub(crate) fn attach_topup_ref(
    c: &Connection,
    id: TopUpId,
    provider_ref: &str,
    client_secret: Option<&str>,
    now: u64,
) -> Result<Option<ProviderTopUp>, StoreError> {
    let Some(mut t) = load_topup(c, id)? else {
        return Ok(None);
    };
    if t.provider_ref.as_deref() == Some(provider_ref)
        && t.client_secret.as_deref() == client_secret
    {
        return Ok(Some(t));
    }
    t.provider_ref = Some(provider_ref.to_owned());
    t.client_secret = client_secret.map(str::to_owned);
    t.updated_at = now.max(t.updated_at);
    save_topup(c, &t)?;
    Ok(Some(t))
}

fn load_refund(c: &Connection, id: TopUpRefundId) -> Result<Option<TopUpRefund>, StoreError> {
    c.row_cached(
        &format!("SELECT {REFUND_COLUMNS} FROM topup_refunds WHERE id = ?1"),
        [id.as_bytes()],
        refund_from_row,
    )
    .optional()
    .map_err(db)
}

fn insert_refund(c: &Connection, r: &TopUpRefund) -> Result<(), StoreError> {
    c.exec_cached(
        &format!(
            "INSERT INTO topup_refunds ({REFUND_COLUMNS})
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
        ),
        params![
            r.id.as_bytes(),
            r.topup.as_bytes(),
            r.amount.minor(),
            r.reason.as_str(),
            r.actor,
            r.key.as_str(),
            r.status.as_str(),
            r.failure,
            ts(r.created_at)?,
            ts(r.updated_at)?,
        ],
    )
    .map_err(db)?;
    Ok(())
}

fn save_refund_state(c: &Connection, r: &TopUpRefund) -> Result<(), StoreError> {
    c.exec_cached(
        "UPDATE topup_refunds SET status = ?1, failure = ?2, updated_at = ?3 WHERE id = ?4",
        params![
            r.status.as_str(),
            r.failure,
            ts(r.updated_at)?,
            r.id.as_bytes()
        ],
    )
    .map_err(db)?;
    Ok(())
}

/// A top-up's user's wallet, overdue holds released first (as every read of a wallet does).
fn wallet_of(c: &Connection, user: &UserId, now: u64) -> Result<Wallet, StoreError> {
    expire_sessions(c, Due::OfUser(user), now)?;
    load_wallet(c, user)
}

/// The wallet and its entries as the decision left them; nothing is written when no money moved.
fn save_money(
    c: &Connection,
    user: &UserId,
    wallet: &Wallet,
    entries: &[LedgerEntry],
    now: u64,
    actor: Option<&str>,
) -> Result<(), StoreError> {
    if entries.is_empty() {
        return Ok(());
    }
    save_wallet(c, user, wallet)?;
    for e in entries {
        write_entry_by(c, e, now, None, actor)?;
    }
    Ok(())
}

pub(crate) fn apply_provider_event(
    c: &Connection,
    ev: &ProviderEvent,
) -> Result<ProviderEventOutcome, StoreError> {
    let seen = c
        .row_cached(
            "SELECT 1 FROM provider_events WHERE provider = ?1 AND event_key = ?2",
            params![ev.provider.as_str(), ev.key],
            |_| Ok(()),
        )
        .optional()
        .map_err(db)?
        .is_some();
    let topup = find_topup(c, &ev.topup)?;
    let wallet = match &topup {
        Some(t) => wallet_of(c, &t.user, ev.now)?,
        None => Wallet::default(),
    };
    let named = match &ev.kind {
        ProviderEventKind::Refunded {
            refund: Some(id), ..
        }
        | ProviderEventKind::RefundConfirmed { refund: id }
        | ProviderEventKind::RefundFailed { refund: id, .. } => load_refund(c, *id)?,
        _ => None,
    };
    let facts = ProviderEventFacts {
        event: ev,
        seen,
        topup: topup.as_ref(),
        wallet,
        refund: named.as_ref(),
    };
    let AppliedEvent {
        topup,
        wallet,
        entries,
        refund,
        outcome,
    } = match decide_provider_event(&facts)? {
        ProviderEventDecision::Answer(outcome) => return Ok(outcome),
        ProviderEventDecision::Apply(applied) => applied,
    };
    let recorded = match &outcome {
        ProviderEventOutcome::Mismatch(_) => "MISMATCH",
        ProviderEventOutcome::Ignored(_) => "IGNORED",
        _ => "APPLIED",
    };
    c.exec_cached(
        "INSERT INTO provider_events (provider, event_key, topup_id, outcome, applied_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            ev.provider.as_str(),
            ev.key,
            topup.id.as_bytes(),
            recorded,
            ts(ev.now)?
        ],
    )
    .map_err(db)?;
    save_topup(c, &topup)?;
    // The provider's verified word moved this money: a system row, naming no operator.
    save_money(c, &topup.user, &wallet, &entries, ev.now, None)?;
    if let Some(r) = &refund {
        save_refund_state(c, r)?;
    }
    Ok(outcome)
}

pub(crate) fn request_topup_refund(
    c: &Connection,
    cmd: &TopUpRefundCommand,
) -> Result<TopUpRefundOutcome, StoreError> {
    let topup = load_topup(c, cmd.topup)?;
    let prior = c
        .row_cached(
            &format!(
                "SELECT {REFUND_COLUMNS} FROM topup_refunds WHERE topup_id = ?1 AND idem_key = ?2"
            ),
            params![cmd.topup.as_bytes(), cmd.key.as_str()],
            refund_from_row,
        )
        .optional()
        .map_err(db)?;
    let wallet = match &topup {
        Some(t) => wallet_of(c, &t.user, cmd.now)?,
        None => Wallet::default(),
    };
    let facts = TopUpRefundFacts {
        cmd,
        topup: topup.as_ref(),
        prior: prior.as_ref(),
        wallet,
    };
    let NewTopUpRefund {
        refund,
        topup,
        wallet,
        entries,
    } = match decide_topup_refund(&facts)? {
        TopUpRefundDecision::Answer(outcome) => return Ok(outcome),
        TopUpRefundDecision::Request(new) => new,
    };
    insert_refund(c, &refund)?;
    save_topup(c, &topup)?;
    save_money(c, &topup.user, &wallet, &entries, cmd.now, Some(&cmd.actor))?;
    Ok(TopUpRefundOutcome::Requested {
        refund,
        topup,
        wallet,
    })
}

/// A top-up's refunds, oldest first (then in the order they were made).
pub(crate) fn topup_refunds(c: &Connection, id: TopUpId) -> Result<Vec<TopUpRefund>, StoreError> {
    let mut stmt = c
        .prepare_cached(&format!(
            "SELECT {REFUND_COLUMNS} FROM topup_refunds WHERE topup_id = ?1
             ORDER BY created_at, rowid"
        ))
        .map_err(db)?;
    let rows = stmt
        .query_map([id.as_bytes()], refund_from_row)
        .map_err(db)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(db)
}

/// A unix time for a comparison, clamped into SQLite's INTEGER (a forged cursor may carry any
/// `u64`).
fn clamp(t: u64) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}

/// Bind `v` as the next numbered parameter, in place of the `?` in `clause`.
fn bind(clause: &str, v: Value, values: &mut Vec<Value>) -> String {
    values.push(v);
    clause.replace('?', &format!("?{}", values.len()))
}

/// Top-ups newest first (`created_at DESC`, then the id `DESC`: a 16-byte blob, whose byte order
/// is its lowercase hex's), indexes `provider_topups_by_created`,
/// `provider_topups_by_user_created`.
pub(crate) fn list_topups(
    c: &Connection,
    filter: &TopUpFilter,
    page: &PageRequest,
) -> Result<Page<ProviderTopUp>, StoreError> {
    let mut clauses: Vec<String> = Vec::new();
    let mut values: Vec<Value> = Vec::new();
    if let Some(u) = &filter.user {
        let text = Value::Text(u.as_str().to_owned());
        clauses.push(bind("user_id = ?", text, &mut values));
    }
    if let Some(p) = filter.provider {
        let text = Value::Text(p.as_str().to_owned());
        clauses.push(bind("provider = ?", text, &mut values));
    }
    if let Some(s) = filter.status {
        let text = Value::Text(s.as_str().to_owned());
        clauses.push(bind("status = ?", text, &mut values));
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
        // A position this list did not issue sorts before every id of its second.
        let id_bytes =
            TopUpId::parse(&after.id).map_or_else(|_| vec![], |id| id.as_bytes().to_vec());
        let id = bind("?", Value::Blob(id_bytes), &mut values);
        clauses.push(format!(
            "(created_at < {at} OR (created_at = {at} AND id < {id}))"
        ));
    }
    let limit = bind(
        "?",
        Value::Integer(i64::from(page.limit).saturating_add(1)),
        &mut values,
    );
    let filter_sql = if clauses.is_empty() {
        "1".to_owned()
    } else {
        clauses.join(" AND ")
    };
    let mut stmt = c
        .prepare(&format!(
            "SELECT {TOPUP_COLUMNS} FROM provider_topups WHERE {filter_sql}
             ORDER BY created_at DESC, id DESC LIMIT {limit}"
        ))
        .map_err(db)?;
    let mut items = stmt
        .query_map(params_from_iter(values), topup_from_row)
        .map_err(db)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(db)?;
    let limit = usize::try_from(page.limit).unwrap_or(usize::MAX);
    let next = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|t| ListPosition {
            at: t.created_at,
            id: t.id.to_string(),
        })
    } else {
        None
    };
    Ok(Page { items, next })
}

/// Every top-up, for the audit.
pub(crate) fn all_topups(c: &Connection) -> Result<Vec<ProviderTopUp>, StoreError> {
    let mut stmt = c
        .prepare(&format!("SELECT {TOPUP_COLUMNS} FROM provider_topups"))
        .map_err(db)?;
    let rows = stmt.query_map([], topup_from_row).map_err(db)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(db)
}
