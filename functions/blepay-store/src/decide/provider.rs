//! Provider top-ups (issue 12, docs/topups.md): starting one, applying a verified notification at
//! most once, an operator's refund, and the reversal rule they share.
//!
//! The reversal rule is a function of facts, not of the order they arrived in: a top-up's
//! *target* is what should be taken back from the wallet,
//!
//! ```text
//! target = min(credited, max(refunds_committed, provider_refunded) + disputed)
//! ```
//!
//! and after every fact the wallet is moved toward it: debit `min(target - debited, available)`
//! (never below zero; what is left is [`ProviderTopUp::unrecovered`], shown to the operator), or
//! credit back `debited - target` when a refund the provider refused lowered it. A refund or
//! dispute that arrives before the payment's success is remembered and applied with the credit.

use blepay_core::{Amount, LedgerEntry, Wallet, WalletError};

use crate::{
    NewProviderTopUp, ProviderEvent, ProviderEventKind, ProviderEventOutcome, ProviderTopUp,
    StartTopUpOutcome, StoreError, TopUpRefund, TopUpRefundCommand, TopUpRefundOutcome,
    TopUpRefundStatus, TopUpStatus,
};

/// What should be taken back from a top-up's wallet credit (the module's rule).
pub fn reversal_target(t: &ProviderTopUp) -> Amount {
    let refunded = t.refunds_committed.max(t.provider_refunded);
    refunded
        .checked_add(t.disputed)
        .unwrap_or(Amount::MAX)
        .min(t.credited)
}

fn internal(e: WalletError) -> StoreError {
    StoreError::Internal(format!("wallet rule refused a stored operation: {e}"))
}

/// Move `wallet` toward the top-up's reversal target and set its status; returns the entry
/// (if any money moved).
///
/// # Errors
/// [`StoreError::Internal`] when giving back would pass the wallet's lifetime bound (a wallet no
/// rule here produces).
pub fn settle_reversal(
    mut t: ProviderTopUp,
    wallet: Wallet,
) -> Result<(ProviderTopUp, Wallet, Option<LedgerEntry>), StoreError> {
    let target = reversal_target(&t);
    let (wallet, entry) = match target.cmp(&t.debited) {
        std::cmp::Ordering::Greater => {
            let owed = target.checked_sub(t.debited).map_err(|_| corrupt())?;
            let take = owed.min(wallet.available);
            if take.is_zero() {
                (wallet, None)
            } else {
                let (w, e) = wallet
                    .provider_debit(&t.user, t.provider, take)
                    .map_err(internal)?;
                t.debited = t.debited.checked_add(take).map_err(|_| corrupt())?;
                (w, Some(e))
            }
        }
        std::cmp::Ordering::Less => {
            let back = t.debited.checked_sub(target).map_err(|_| corrupt())?;
            let (w, e) = wallet
                .provider_credit(&t.user, t.provider, back)
                .map_err(internal)?;
            t.debited = target;
            (w, Some(e))
        }
        std::cmp::Ordering::Equal => (wallet, None),
    };
    if !t.credited.is_zero() {
        t.status = if target == t.credited {
            TopUpStatus::Refunded
        } else {
            TopUpStatus::Succeeded
        };
    }
    Ok((t, wallet, entry))
}

fn corrupt() -> StoreError {
    StoreError::Corrupt("a provider top-up's totals are inconsistent".into())
}

/// What starting a top-up does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartTopUpDecision {
    /// Persist this PENDING top-up under (user, key).
    Create(ProviderTopUp),
    Answer(StartTopUpOutcome),
}

/// `prior` is the top-up stored under the command's (user, key), if any: the same provider and
/// amount is [`StartTopUpOutcome::Existing`], another is [`StartTopUpOutcome::KeyReused`].
pub fn decide_start_topup(
    prior: Option<&ProviderTopUp>,
    cmd: &NewProviderTopUp,
) -> StartTopUpDecision {
    match prior {
        Some(p) if p.provider == cmd.provider && p.amount == cmd.amount => {
            StartTopUpDecision::Answer(StartTopUpOutcome::Existing(p.clone()))
        }
        Some(_) => StartTopUpDecision::Answer(StartTopUpOutcome::KeyReused),
        None => StartTopUpDecision::Create(ProviderTopUp {
            id: cmd.id,
            user: cmd.user.clone(),
            provider: cmd.provider,
            amount: cmd.amount,
            currency: cmd.currency,
            status: TopUpStatus::Pending,
            key: cmd.key.clone(),
            provider_ref: None,
            client_secret: None,
            transaction_id: None,
            created_at: cmd.now,
            updated_at: cmd.now,
            credited: Amount::ZERO,
            provider_refunded: Amount::ZERO,
            disputed: Amount::ZERO,
            refunds_committed: Amount::ZERO,
            debited: Amount::ZERO,
            mismatch: None,
            failure: None,
        }),
    }
}

/// The facts a store gathers for [`decide_provider_event`].
#[derive(Debug, Clone)]
pub struct ProviderEventFacts<'a> {
    pub event: &'a ProviderEvent,
    /// Whether `(event.provider, event.key)` was applied before.
    pub seen: bool,
    /// The top-up the event locates, when it exists and is `event.provider`'s.
    pub topup: Option<&'a ProviderTopUp>,
    /// Its user's wallet (overdue holds released).
    pub wallet: Wallet,
    /// The refund the event names (`Refunded { refund: Some(..) }`, `RefundConfirmed`,
    /// `RefundFailed`), when it exists.
    pub refund: Option<&'a TopUpRefund>,
}

/// What a store persists for an applied event, atomically and conditioned on the facts it read:
/// the event key as applied, the top-up, the wallet and `entries` (when any), the refund (when
/// `Some`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedEvent {
    pub topup: ProviderTopUp,
    pub wallet: Wallet,
    pub entries: Vec<LedgerEntry>,
    pub refund: Option<TopUpRefund>,
    /// What to answer once persisted.
    pub outcome: ProviderEventOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // a transient value, matched once
pub enum ProviderEventDecision {
    /// Write nothing.
    Answer(ProviderEventOutcome),
    Apply(AppliedEvent),
}

/// Decide a verified notification, first match wins: seen before → `Duplicate`; no top-up →
/// `UnknownTopUp` (also when it is the other provider's); then by kind (docs/topups.md "Notifications"):
/// - `Succeeded` on an uncredited top-up credits it when amount and currency equal the
///   top-up's (else `Mismatch`, recorded); on a credited one it is `Ignored`;
/// - `Failed` marks a PENDING top-up FAILED; otherwise `Ignored`;
/// - refund totals, single refunds, disputes raise their fact (never lower it), a refused refund
///   lowers `refunds_committed` by its amount once; then [`settle_reversal`].
///
/// # Errors
/// [`StoreError::Internal`] / [`StoreError::Corrupt`] only on inconsistent stored totals.
pub fn decide_provider_event(
    facts: &ProviderEventFacts<'_>,
) -> Result<ProviderEventDecision, StoreError> {
    use ProviderEventDecision::{Answer, Apply};
    if facts.seen {
        return Ok(Answer(ProviderEventOutcome::Duplicate));
    }
    let ev = facts.event;
    let Some(prior) = facts.topup.filter(|t| t.provider == ev.provider) else {
        return Ok(Answer(ProviderEventOutcome::UnknownTopUp));
    };
    let mut t = prior.clone();
    t.updated_at = ev.now.max(prior.updated_at);
    let ignored = |t: ProviderTopUp, wallet| {
        Ok(Apply(AppliedEvent {
            outcome: ProviderEventOutcome::Ignored(t.clone()),
            topup: t,
            wallet,
            entries: Vec::new(),
            refund: None,
        }))
    };
    // The named refund, when it is this top-up's.
    let refund = facts.refund.filter(|r| r.topup == t.id).cloned();
    let mut refund_after = None;
    match &ev.kind {
        ProviderEventKind::Succeeded {
            amount,
            currency,
            transaction_id,
        } => {
            if !t.credited.is_zero() {
                return ignored(t, facts.wallet);
            }
            return credit(t, facts.wallet, *amount, *currency, transaction_id);
        }
        ProviderEventKind::Failed { reason } => {
            if t.status != TopUpStatus::Pending {
                return ignored(t, facts.wallet);
            }
            t.status = TopUpStatus::Failed;
            t.failure = Some(reason.clone());
        }
        ProviderEventKind::RefundedTotal { total } => {
            t.provider_refunded = t.provider_refunded.max(*total);
        }
        ProviderEventKind::Refunded {
            refund: named,
            amount,
        } => {
            t.provider_refunded = t
                .provider_refunded
                .checked_add(*amount)
                .map_err(|_| corrupt())?;
            if named.is_some() {
                refund_after = refund.map(|r| confirm(&mut t, r, ev.now)).transpose()?;
            }
        }
        ProviderEventKind::RefundConfirmed { .. } => {
            let Some(r) = refund else {
                return ignored(t, facts.wallet);
            };
            refund_after = Some(confirm(&mut t, r, ev.now)?);
        }
        ProviderEventKind::RefundFailed { reason, .. } => {
            let Some(mut r) = refund else {
                return ignored(t, facts.wallet);
            };
            if r.status != TopUpRefundStatus::Requested {
                return ignored(t, facts.wallet);
            }
            t.refunds_committed = t
                .refunds_committed
                .checked_sub(r.amount)
                .unwrap_or(Amount::ZERO);
            r.status = TopUpRefundStatus::Failed;
            r.failure = Some(reason.clone());
            r.updated_at = ev.now;
            refund_after = Some(r);
        }
        ProviderEventKind::Disputed { amount } => {
            t.disputed = t.disputed.max(*amount);
        }
    }
    let (t, wallet, entry) = settle_reversal(t, facts.wallet)?;
    Ok(Apply(AppliedEvent {
        outcome: ProviderEventOutcome::Applied {
            topup: t.clone(),
            wallet,
        },
        topup: t,
        wallet,
        entries: entry.into_iter().collect(),
        refund: refund_after,
    }))
}

/// The provider says one of our refunds succeeded: one it refused before is committed again.
fn confirm(t: &mut ProviderTopUp, mut r: TopUpRefund, now: u64) -> Result<TopUpRefund, StoreError> {
    if r.status == TopUpRefundStatus::Failed {
        t.refunds_committed = t
            .refunds_committed
            .checked_add(r.amount)
            .map_err(|_| corrupt())?;
    }
    r.status = TopUpRefundStatus::Succeeded;
    r.updated_at = now;
    Ok(r)
}

/// A verified success on an uncredited top-up: credit it when the amount and currency are the
/// top-up's, else record the mismatch; then apply any reversal that arrived before it.
fn credit(
    mut t: ProviderTopUp,
    wallet: Wallet,
    amount: Amount,
    currency: blepay_core::Currency,
    transaction_id: &str,
) -> Result<ProviderEventDecision, StoreError> {
    use ProviderEventDecision::Apply;
    if amount != t.amount || currency != t.currency {
        t.mismatch = Some(format!(
            "{} said {} {} succeeded for a top-up of {} {}",
            t.provider,
            amount.minor(),
            currency,
            t.amount.minor(),
            t.currency
        ));
        return Ok(Apply(AppliedEvent {
            outcome: ProviderEventOutcome::Mismatch(t.clone()),
            topup: t,
            wallet,
            entries: Vec::new(),
            refund: None,
        }));
    }
    let (wallet, credit) = match wallet.provider_credit(&t.user, t.provider, t.amount) {
        Ok(ok) => ok,
        Err(WalletError::Overflow) => {
            t.mismatch = Some("the wallet's lifetime total would overflow".into());
            return Ok(Apply(AppliedEvent {
                outcome: ProviderEventOutcome::Mismatch(t.clone()),
                topup: t,
                wallet,
                entries: Vec::new(),
                refund: None,
            }));
        }
        Err(e) => return Err(internal(e)),
    };
    t.credited = t.amount;
    t.transaction_id = Some(transaction_id.to_owned());
    t.failure = None;
    t.status = TopUpStatus::Succeeded;
    let (t, wallet, reversal) = settle_reversal(t, wallet)?;
    let entries = std::iter::once(credit).chain(reversal).collect();
    Ok(Apply(AppliedEvent {
        outcome: ProviderEventOutcome::Applied {
            topup: t.clone(),
            wallet,
        },
        topup: t,
        wallet,
        entries,
        refund: None,
    }))
}

/// The facts a store gathers for [`decide_topup_refund`].
#[derive(Debug, Clone)]
pub struct TopUpRefundFacts<'a> {
    pub cmd: &'a TopUpRefundCommand,
    pub topup: Option<&'a ProviderTopUp>,
    /// The refund stored under (top-up, key), if any.
    pub prior: Option<&'a TopUpRefund>,
    /// The top-up's user's wallet (overdue holds released).
    pub wallet: Wallet,
}

/// What a store persists for a refund request, atomically: the refund (REQUESTED), the top-up,
/// the wallet and the entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTopUpRefund {
    pub refund: TopUpRefund,
    pub topup: ProviderTopUp,
    pub wallet: Wallet,
    pub entries: Vec<LedgerEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // a transient value, matched once
pub enum TopUpRefundDecision {
    Request(NewTopUpRefund),
    Answer(TopUpRefundOutcome),
}

/// Decide an operator's refund of a top-up, first match wins: no top-up → `NotFound`; a refund
/// under the key → `Replayed` (same amount) or `KeyReused`; not credited → `NotCredited`; more than
/// `min(available − unrecovered, credited − target)` → `ExceedsRefundable`; otherwise the refund is
/// committed (`refunds_committed = max(committed, provider_refunded) + amount`) and taken from the
/// wallet by [`settle_reversal`].
///
/// # Errors
/// [`StoreError::Internal`] / [`StoreError::Corrupt`] only on inconsistent stored totals.
pub fn decide_topup_refund(
    facts: &TopUpRefundFacts<'_>,
) -> Result<TopUpRefundDecision, StoreError> {
    use TopUpRefundDecision::{Answer, Request};
    let cmd = facts.cmd;
    let Some(t) = facts.topup else {
        return Ok(Answer(TopUpRefundOutcome::NotFound));
    };
    if let Some(prior) = facts.prior {
        return Ok(Answer(if prior.amount == cmd.amount {
            TopUpRefundOutcome::Replayed {
                refund: prior.clone(),
                topup: t.clone(),
            }
        } else {
            TopUpRefundOutcome::KeyReused
        }));
    }
    if t.credited.is_zero() {
        return Ok(Answer(TopUpRefundOutcome::NotCredited));
    }
    let left = t
        .credited
        .checked_sub(reversal_target(t))
        .unwrap_or(Amount::ZERO);
    let spendable = facts
        .wallet
        .available
        .checked_sub(t.unrecovered())
        .unwrap_or(Amount::ZERO);
    let refundable = left.min(spendable);
    if cmd.amount > refundable || cmd.amount.is_zero() {
        return Ok(Answer(TopUpRefundOutcome::ExceedsRefundable { refundable }));
    }
    let mut next = t.clone();
    next.refunds_committed = t
        .refunds_committed
        .max(t.provider_refunded)
        .checked_add(cmd.amount)
        .map_err(|_| corrupt())?;
    next.updated_at = cmd.now.max(t.updated_at);
    let (topup, wallet, entry) = settle_reversal(next, facts.wallet)?;
    Ok(Request(NewTopUpRefund {
        refund: TopUpRefund {
            id: cmd.id,
            topup: t.id,
            amount: cmd.amount,
            reason: cmd.reason.clone(),
            actor: cmd.actor.clone(),
            key: cmd.key.clone(),
            status: TopUpRefundStatus::Requested,
            failure: None,
            created_at: cmd.now,
            updated_at: cmd.now,
        },
        topup,
        wallet,
        entries: entry.into_iter().collect(),
    }))
}
