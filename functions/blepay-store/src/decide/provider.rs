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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use blepay_core::{Currency, EntryKind, IdempotencyKey, LedgerAccount, Provider, UserId};
    use proptest::prelude::*;

    use super::*;
    use crate::{Reason, TopUpId, TopUpLocator, TopUpRefundId};

    fn amount(minor: i64) -> Amount {
        Amount::new(minor).unwrap()
    }

    fn eur() -> Currency {
        Currency::parse("EUR").unwrap()
    }

    fn funds(available: i64) -> Wallet {
        Wallet {
            available: amount(available),
            ..Wallet::default()
        }
    }

    fn pending(provider: Provider, minor: i64) -> ProviderTopUp {
        let cmd = NewProviderTopUp {
            id: TopUpId::from_bytes([1; 16]),
            user: UserId::parse("alice").unwrap(),
            provider,
            amount: amount(minor),
            currency: eur(),
            key: IdempotencyKey::parse("k1").unwrap(),
            now: 100,
        };
        let StartTopUpDecision::Create(t) = decide_start_topup(None, &cmd) else {
            panic!("a first start creates");
        };
        t
    }

    fn event(t: &ProviderTopUp, key: &str, kind: ProviderEventKind) -> ProviderEvent {
        ProviderEvent {
            provider: t.provider,
            key: key.into(),
            topup: TopUpLocator::Id(t.id),
            kind,
            now: 200,
        }
    }

    fn success(t: &ProviderTopUp, minor: i64) -> ProviderEventKind {
        ProviderEventKind::Succeeded {
            amount: amount(minor),
            currency: t.currency,
            transaction_id: "txn".into(),
        }
    }

    /// A store of one top-up, its wallet and refunds, applying events through the decision.
    #[derive(Debug, Clone)]
    struct Sim {
        topup: ProviderTopUp,
        wallet: Wallet,
        seen: HashSet<String>,
        refunds: HashMap<TopUpRefundId, TopUpRefund>,
        /// Σ entries into the wallet's available balance less Σ out of it.
        net_into_available: i64,
    }

    impl Sim {
        fn new(topup: ProviderTopUp, wallet: Wallet) -> Self {
            Self {
                topup,
                wallet,
                seen: HashSet::new(),
                refunds: HashMap::new(),
                net_into_available: 0,
            }
        }

        fn book(&mut self, entries: &[LedgerEntry]) {
            let available = LedgerAccount::UserAvailable(self.topup.user.clone());
            for e in entries {
                assert!(matches!(
                    e.kind,
                    EntryKind::ProviderCredit | EntryKind::ProviderDebit
                ));
                if e.credit == available {
                    self.net_into_available += e.amount.minor();
                }
                if e.debit == available {
                    self.net_into_available -= e.amount.minor();
                }
            }
        }

        fn apply(&mut self, ev: &ProviderEvent) -> ProviderEventOutcome {
            let named = match &ev.kind {
                ProviderEventKind::Refunded {
                    refund: Some(r), ..
                }
                | ProviderEventKind::RefundConfirmed { refund: r }
                | ProviderEventKind::RefundFailed { refund: r, .. } => self.refunds.get(r),
                _ => None,
            };
            let facts = ProviderEventFacts {
                event: ev,
                seen: self.seen.contains(&ev.key),
                topup: Some(&self.topup),
                wallet: self.wallet,
                refund: named,
            };
            let outcome = match decide_provider_event(&facts).unwrap() {
                ProviderEventDecision::Answer(a) => a,
                ProviderEventDecision::Apply(a) => {
                    self.seen.insert(ev.key.clone());
                    self.book(&a.entries);
                    self.topup = a.topup;
                    self.wallet = a.wallet;
                    if let Some(r) = a.refund {
                        self.refunds.insert(r.id, r);
                    }
                    a.outcome
                }
            };
            self.check();
            outcome
        }

        fn refund(&mut self, n: u8, minor: i64) -> TopUpRefundOutcome {
            let cmd = TopUpRefundCommand {
                topup: self.topup.id,
                id: TopUpRefundId::from_bytes([n; 16]),
                amount: amount(minor),
                reason: Reason::parse("asked").unwrap(),
                key: IdempotencyKey::parse(&format!("r{n}")).unwrap(),
                actor: "op".into(),
                now: 150,
            };
            let prior = self.refunds.values().find(|r| r.key == cmd.key);
            let facts = TopUpRefundFacts {
                cmd: &cmd,
                topup: Some(&self.topup),
                prior,
                wallet: self.wallet,
            };
            let outcome = match decide_topup_refund(&facts).unwrap() {
                TopUpRefundDecision::Answer(a) => a,
                TopUpRefundDecision::Request(r) => {
                    self.book(&r.entries);
                    self.refunds.insert(r.refund.id, r.refund.clone());
                    self.topup = r.topup.clone();
                    self.wallet = r.wallet;
                    TopUpRefundOutcome::Requested {
                        refund: r.refund,
                        topup: r.topup,
                        wallet: r.wallet,
                    }
                }
            };
            self.check();
            outcome
        }

        /// What holds after every step: the top-up never took back more than its target nor
        /// than it credited, and what is missing is exactly the unrecovered part.
        fn check(&self) {
            let t = &self.topup;
            let target = reversal_target(t);
            assert!(t.debited <= target, "{t:?}");
            assert!(target <= t.credited, "{t:?}");
            assert_eq!(t.debited.checked_add(t.unrecovered()).unwrap(), target);
        }

        /// The totals order must not change.
        fn totals(&self) -> impl PartialEq + std::fmt::Debug {
            let t = &self.topup;
            let mut refunds: Vec<_> = self.refunds.values().map(|r| (r.id, r.status)).collect();
            refunds.sort_by_key(|(id, _)| *id.as_bytes());
            (
                self.wallet,
                t.status,
                t.credited,
                t.debited,
                t.provider_refunded,
                t.disputed,
                t.refunds_committed,
                t.transaction_id.clone(),
                refunds,
            )
        }
    }

    #[test]
    fn the_target_is_the_larger_refunded_total_plus_the_dispute_capped_at_the_credit() {
        let mut t = pending(Provider::Stripe, 1000);
        t.provider_refunded = amount(300);
        t.refunds_committed = amount(200);
        t.disputed = amount(100);
        assert_eq!(reversal_target(&t), Amount::ZERO, "nothing credited yet");
        t.credited = amount(1000);
        assert_eq!(reversal_target(&t), amount(400));
        t.disputed = amount(900);
        assert_eq!(reversal_target(&t), amount(1000));
    }

    #[test]
    fn a_reversal_takes_only_what_is_available_and_the_rest_is_unrecovered() {
        let mut sim = Sim::new(pending(Provider::Stripe, 1000), Wallet::default());
        let ok = event(&sim.topup, "e1", success(&sim.topup, 1000));
        sim.apply(&ok);
        sim.wallet.available = amount(250); // the user spent the rest

        let dispute = event(
            &sim.topup,
            "e2",
            ProviderEventKind::Disputed {
                amount: amount(1000),
            },
        );
        let out = sim.apply(&dispute);

        assert!(matches!(out, ProviderEventOutcome::Applied { .. }));
        assert_eq!(sim.wallet.available, Amount::ZERO);
        assert_eq!(
            (sim.topup.debited, sim.topup.unrecovered(), sim.topup.status),
            (amount(250), amount(750), TopUpStatus::Refunded)
        );
    }

    #[test]
    fn a_reversal_before_the_success_is_applied_with_the_credit() {
        let mut sim = Sim::new(pending(Provider::WechatPay, 1000), funds(50));
        let refunded = ProviderEventKind::Refunded {
            refund: None,
            amount: amount(400),
        };
        sim.apply(&event(&sim.topup.clone(), "refund:1", refunded));
        assert_eq!(
            (sim.wallet.available, sim.topup.debited),
            (amount(50), Amount::ZERO)
        );

        sim.apply(&event(
            &sim.topup.clone(),
            "txn:1",
            success(&sim.topup, 1000),
        ));

        assert_eq!(sim.wallet.available, amount(650));
        assert_eq!(sim.topup.debited, amount(400));
        assert_eq!(sim.net_into_available, 600);
    }

    #[test]
    fn a_refused_operator_refund_is_given_back_once() {
        let mut sim = Sim::new(pending(Provider::Stripe, 1000), Wallet::default());
        sim.apply(&event(&sim.topup.clone(), "e1", success(&sim.topup, 1000)));
        assert!(matches!(
            sim.refund(1, 300),
            TopUpRefundOutcome::Requested { .. }
        ));
        assert_eq!(sim.wallet.available, amount(700));
        let failed = ProviderEventKind::RefundFailed {
            refund: TopUpRefundId::from_bytes([1; 16]),
            reason: "declined".into(),
        };

        sim.apply(&event(&sim.topup.clone(), "e2", failed.clone()));
        let again = sim.apply(&event(&sim.topup.clone(), "e3", failed));

        assert!(matches!(again, ProviderEventOutcome::Ignored(_)));
        assert_eq!(sim.wallet.available, amount(1000));
        assert_eq!(
            (sim.topup.refunds_committed, sim.topup.debited),
            (Amount::ZERO, Amount::ZERO)
        );
    }

    #[test]
    fn an_operator_refund_is_bounded_by_the_unspent_unreversed_credit() {
        let mut sim = Sim::new(pending(Provider::Stripe, 1000), Wallet::default());
        assert_eq!(sim.refund(1, 1), TopUpRefundOutcome::NotCredited);
        sim.apply(&event(&sim.topup.clone(), "e1", success(&sim.topup, 1000)));
        sim.apply(&event(
            &sim.topup.clone(),
            "e2",
            ProviderEventKind::Disputed {
                amount: amount(600),
            },
        ));
        assert_eq!(
            sim.refund(2, 401),
            TopUpRefundOutcome::ExceedsRefundable {
                refundable: amount(400)
            }
        );
        sim.wallet.available = amount(100);
        assert_eq!(
            sim.refund(2, 101),
            TopUpRefundOutcome::ExceedsRefundable {
                refundable: amount(100)
            }
        );
        assert_eq!(
            sim.refund(2, 0),
            TopUpRefundOutcome::ExceedsRefundable {
                refundable: amount(100)
            }
        );
        assert!(matches!(
            sim.refund(2, 100),
            TopUpRefundOutcome::Requested { .. }
        ));
        assert_eq!(
            (sim.wallet.available, sim.topup.debited),
            (Amount::ZERO, amount(700))
        );
    }

    #[test]
    fn an_event_for_the_other_providers_top_up_or_seen_before_is_answered_without_a_write() {
        let t = pending(Provider::Stripe, 1000);
        let mut ev = event(&t, "e1", success(&t, 1000));
        ev.provider = Provider::WechatPay;
        let facts = ProviderEventFacts {
            event: &ev,
            seen: false,
            topup: Some(&t),
            wallet: Wallet::default(),
            refund: None,
        };
        assert_eq!(
            decide_provider_event(&facts).unwrap(),
            ProviderEventDecision::Answer(ProviderEventOutcome::UnknownTopUp)
        );
        let seen = ProviderEventFacts {
            seen: true,
            ..facts
        };
        assert_eq!(
            decide_provider_event(&seen).unwrap(),
            ProviderEventDecision::Answer(ProviderEventOutcome::Duplicate)
        );
    }

    /// One provider fact about a pending top-up of 1000, as the provider would send it (Stripe
    /// reports refunded totals, WeChat Pay single refunds).
    fn fact(provider: Provider) -> impl Strategy<Value = ProviderEventKind> {
        let refund = match provider {
            Provider::Stripe => (0..=1200i64)
                .prop_map(|m| ProviderEventKind::RefundedTotal { total: amount(m) })
                .boxed(),
            Provider::WechatPay => (0..=400i64)
                .prop_map(|m| ProviderEventKind::Refunded {
                    refund: None,
                    amount: amount(m),
                })
                .boxed(),
        };
        prop_oneof![
            Just(ProviderEventKind::Succeeded {
                amount: amount(1000),
                currency: Currency::parse("EUR").unwrap(),
                transaction_id: "txn".into(),
            }),
            Just(ProviderEventKind::Succeeded {
                amount: amount(999),
                currency: Currency::parse("EUR").unwrap(),
                transaction_id: "txn".into(),
            }),
            Just(ProviderEventKind::Failed {
                reason: "declined".into()
            }),
            (0..=1200i64).prop_map(|m| ProviderEventKind::Disputed { amount: amount(m) }),
            refund,
        ]
    }

    type Deliveries = Vec<(String, ProviderEventKind)>;

    /// Events with distinct keys, some delivered twice, and the same deliveries shuffled.
    fn deliveries(provider: Provider) -> impl Strategy<Value = (Deliveries, Deliveries)> {
        prop::collection::vec((fact(provider), any::<bool>()), 0..8)
            .prop_map(|facts| {
                facts
                    .into_iter()
                    .enumerate()
                    .flat_map(|(i, (kind, twice))| {
                        let one = (format!("evt-{i}"), kind);
                        let n = if twice { 2 } else { 1 };
                        std::iter::repeat_n(one, n)
                    })
                    .collect::<Vec<_>>()
            })
            .prop_flat_map(|events| {
                let shuffled = Just(events.clone()).prop_shuffle();
                (Just(events), shuffled)
            })
    }

    fn run(sim: &Sim, events: &[(String, ProviderEventKind)]) -> Sim {
        let mut sim = sim.clone();
        for (key, kind) in events {
            let ev = event(&sim.topup, key, kind.clone());
            sim.apply(&ev);
        }
        sim
    }

    fn both_providers() -> impl Strategy<Value = Provider> {
        prop_oneof![Just(Provider::Stripe), Just(Provider::WechatPay)]
    }

    proptest! {
        /// Any provider events, in any order and delivered any number of times, end with the
        /// same wallet and top-up totals; the wallet moves exactly as its entries say.
        #[test]
        fn provider_events_in_any_order_end_the_same(
            (provider, (events, shuffled), other_funds) in both_providers()
                .prop_flat_map(|p| (Just(p), deliveries(p), 0..=2000i64))
        ) {
            let start = Sim::new(pending(provider, 1000), funds(other_funds));

            let a = run(&start, &events);
            let b = run(&start, &shuffled);

            prop_assert_eq!(a.totals(), b.totals());
            for sim in [&a, &b] {
                prop_assert_eq!(
                    sim.wallet.available.minor(),
                    other_funds + sim.net_into_available
                );
                prop_assert_eq!(sim.topup.credited.minor() - sim.topup.debited.minor(), sim.net_into_available);
            }
        }

        /// The notifications about a credited top-up's operator refunds (confirmed, refused,
        /// WeChat Pay's REFUND.SUCCESS) and disputes, after the user spent some of it, in any
        /// order: the same end, and never more taken than was available.
        #[test]
        fn refund_notifications_in_any_order_end_the_same(
            (spent, (events, shuffled)) in (0..=500i64, refund_events().prop_flat_map(|e| {
                let shuffled = Just(e.clone()).prop_shuffle();
                (Just(e), shuffled)
            }))
        ) {
            let mut start = Sim::new(pending(Provider::WechatPay, 1000), Wallet::default());
            start.apply(&event(&start.topup.clone(), "txn:1", success(&start.topup, 1000)));
            let requested = [start.refund(1, 300), start.refund(2, 200)]
                .iter()
                .all(|o| matches!(o, TopUpRefundOutcome::Requested { .. }));
            prop_assert!(requested);
            start.wallet.available = amount(500 - spent);
            let before = start.net_into_available;

            let a = run(&start, &events);
            let b = run(&start, &shuffled);

            prop_assert_eq!(a.totals(), b.totals());
            for sim in [&a, &b] {
                prop_assert_eq!(
                    sim.wallet.available.minor(),
                    500 - spent + sim.net_into_available - before
                );
            }
        }
    }

    fn refund_events() -> impl Strategy<Value = Deliveries> {
        let r = |n: u8| TopUpRefundId::from_bytes([n; 16]);
        let kind = prop_oneof![
            (1..=2u8).prop_map(move |n| ProviderEventKind::RefundConfirmed { refund: r(n) }),
            (1..=2u8).prop_map(move |n| ProviderEventKind::RefundFailed {
                refund: r(n),
                reason: "declined".into()
            }),
            (1..=2u8).prop_map(move |n| ProviderEventKind::Refunded {
                refund: Some(r(n)),
                amount: amount(if n == 1 { 300 } else { 200 }),
            }),
            (0..=1000i64).prop_map(|m| ProviderEventKind::Disputed { amount: amount(m) }),
        ];
        prop::collection::vec(kind, 0..8).prop_map(|kinds| {
            kinds
                .into_iter()
                .enumerate()
                .map(|(i, k)| (format!("evt-{i}"), k))
                .collect()
        })
    }
}
