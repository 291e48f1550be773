//! The top-up decision.

use blepay_core::{Amount, LedgerEntry, UserId, Wallet, WalletError};

use crate::{StoreError, TopUpOutcome};

/// What an earlier top-up with the same user and key must match for a new one to be its retry:
/// the amount, stored with the key record as its minor units in decimal (records written by older
/// builds use it; DynamoDB's TOPUP ledger row carries the same amount).
pub fn top_up_fingerprint(amount: Amount) -> String {
    amount.minor().to_string()
}

/// The facts a store gathers for [`decide_top_up`].
#[derive(Debug, Clone)]
pub struct TopUpFacts<'a> {
    pub user: &'a UserId,
    pub amount: Amount,
    /// The fingerprint stored under the (user, key) record, if there is one.
    pub prior: Option<&'a str>,
    /// The user's wallet, their overdue holds already released.
    pub wallet: Wallet,
}

/// A credit the store must persist, atomically: save `wallet`, write `entry`, record the key
/// with [`top_up_fingerprint`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTopUp {
    pub wallet: Wallet,
    pub entry: LedgerEntry,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopUpDecision {
    Credit(NewTopUp),
    /// Answer without writing anything: a retry or a refusal.
    Answer(TopUpOutcome),
}

/// Decide a top-up, first match wins:
/// 1. a record under the key: [`TopUpOutcome::Replayed`] with the wallet as it is when the amount
///    matches, else [`TopUpOutcome::KeyReused`];
/// 2. [`TopUpOutcome::LimitExceeded`] when the wallet's lifetime total would pass
///    [`Amount::MAX`] ([`Wallet::top_up`]; issue 10, L2): nothing is credited, and since `spent`
///    only grows out of that total, no later capture can overflow either;
///
/// and otherwise [`TopUpDecision::Credit`].
///
/// # Errors
/// [`StoreError::Internal`] when the wallet rule refuses for another reason (none exists today).
pub fn decide_top_up(facts: &TopUpFacts<'_>) -> Result<TopUpDecision, StoreError> {
    if let Some(prior) = facts.prior {
        return Ok(TopUpDecision::Answer(
            if prior == top_up_fingerprint(facts.amount) {
                TopUpOutcome::Replayed(facts.wallet)
            } else {
                TopUpOutcome::KeyReused
            },
        ));
    }
    match facts.wallet.top_up(facts.user, facts.amount) {
        Ok((wallet, entry)) => Ok(TopUpDecision::Credit(NewTopUp { wallet, entry })),
        Err(WalletError::Overflow) => Ok(TopUpDecision::Answer(TopUpOutcome::LimitExceeded)),
        Err(e) => Err(StoreError::Internal(format!(
            "wallet rule refused a stored operation: {e}"
        ))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn amount(minor: i64) -> Amount {
        Amount::new(minor).unwrap()
    }

    #[test]
    fn a_retry_is_answered_before_the_limit_and_the_limit_counts_what_was_spent() {
        let user = UserId::parse("alice").unwrap();
        let spent_all = Wallet {
            available: Amount::ZERO,
            held: Amount::ZERO,
            spent: Amount::MAX,
            refunded: Amount::ZERO,
        };
        let facts = |prior, minor| TopUpFacts {
            user: &user,
            amount: amount(minor),
            prior,
            wallet: spent_all,
        };
        assert_eq!(
            decide_top_up(&facts(None, 1)).unwrap(),
            TopUpDecision::Answer(TopUpOutcome::LimitExceeded)
        );
        assert_eq!(
            decide_top_up(&facts(Some("1"), 1)).unwrap(),
            TopUpDecision::Answer(TopUpOutcome::Replayed(spent_all))
        );
        assert_eq!(
            decide_top_up(&facts(Some("2"), 1)).unwrap(),
            TopUpDecision::Answer(TopUpOutcome::KeyReused)
        );
        let half = Wallet {
            available: amount(10),
            held: amount(5),
            spent: amount(Amount::MAX.minor() - 20),
            refunded: Amount::ZERO,
        };
        let ok = TopUpFacts {
            wallet: half,
            ..facts(None, 5)
        };
        let TopUpDecision::Credit(new) = decide_top_up(&ok).unwrap() else {
            panic!("a credit up to the lifetime maximum goes through");
        };
        assert_eq!(new.wallet.lifetime_total().unwrap(), Amount::MAX);
        let over = TopUpFacts {
            wallet: half,
            ..facts(None, 6)
        };
        assert_eq!(
            decide_top_up(&over).unwrap(),
            TopUpDecision::Answer(TopUpOutcome::LimitExceeded)
        );
    }
}
