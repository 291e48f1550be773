//! The reconciliation: [`Audit`] totals from the stored rows, with checked arithmetic.

use std::collections::HashMap;

use blepay_core::{Amount, EntryKind, LedgerAccount, UserId, Wallet};

use crate::{Audit, StoreError};

/// Accumulates the rows a store reads for an audit (in any order, page by page) and computes the
/// [`Audit`] from them. Every sum is checked: totals beyond `i64` make [`AuditTally::finish`]
/// answer [`StoreError::Corrupt`], never wrap or panic.
#[derive(Debug, Default)]
pub struct AuditTally {
    top_ups: i64,
    available: i64,
    held: i64,
    spent: i64,
    open_holds: i64,
    refunded: i64,
    refund_entries: i64,
    session_refunds: i64,
    over_refunded_sessions: u64,
    provider_credits: i64,
    provider_debits: i64,
    topups_net: i64,
    /// Balance of every ledger account: credits minus debits.
    balances: HashMap<String, i64>,
    wallets: Vec<(UserId, Amount, Amount)>,
    /// The first sum that overflowed.
    overflow: Option<&'static str>,
}

impl AuditTally {
    /// One ledger entry: `amount` moved from `debit` to `credit` (account keys,
    /// [`LedgerAccount::key`]); `kind` is its [`EntryKind`] as stored.
    pub fn ledger_entry(&mut self, kind: &str, debit: &str, credit: &str, amount: i64) {
        if kind == EntryKind::TopUp.as_str() {
            self.top_ups = self.add(self.top_ups, amount, "top-ups");
        }
        if kind == EntryKind::Refund.as_str() {
            self.refund_entries = self.add(self.refund_entries, amount, "refund entries");
        }
        if kind == EntryKind::ProviderCredit.as_str() {
            self.provider_credits = self.add(self.provider_credits, amount, "provider credits");
        }
        if kind == EntryKind::ProviderDebit.as_str() {
            self.provider_debits = self.add(self.provider_debits, amount, "provider debits");
        }
        let credited = self.balances.get(credit).copied().unwrap_or(0);
        let credited = self.add(credited, amount, "ledger balances");
        self.balances.insert(credit.to_owned(), credited);
        let debited = self.balances.get(debit).copied().unwrap_or(0);
        let debited = self.sub(debited, amount, "ledger balances");
        self.balances.insert(debit.to_owned(), debited);
    }

    /// One user's wallet.
    pub fn wallet(&mut self, user: UserId, w: &Wallet) {
        self.available = self.add(self.available, w.available.minor(), "available balances");
        self.held = self.add(self.held, w.held.minor(), "held balances");
        self.spent = self.add(self.spent, w.spent.minor(), "spent totals");
        self.refunded = self.add(self.refunded, w.refunded.minor(), "refunded totals");
        self.wallets.push((user, w.available, w.held));
    }

    /// The hold of one AUTHORIZED or ACTIVE session.
    pub fn open_hold(&mut self, hold: Amount) {
        self.open_holds = self.add(self.open_holds, hold.minor(), "open holds");
    }

    /// One session with refunds: what it captured (`Session::amount`) and what was refunded of
    /// it. Refunds above the capture count as an over-refunded session.
    pub fn session_refunds(&mut self, captured: Amount, refunded: Amount) {
        self.session_refunds = self.add(self.session_refunds, refunded.minor(), "session refunds");
        if refunded > captured {
            self.over_refunded_sessions = self.over_refunded_sessions.saturating_add(1);
        }
    }

    /// One provider top-up: what it credited less what was taken back.
    pub fn provider_topup(&mut self, t: &crate::ProviderTopUp) {
        let net = self.sub(t.credited.minor(), t.debited.minor(), "provider top-ups");
        self.topups_net = self.add(self.topups_net, net, "provider top-ups");
    }

    fn sub(&mut self, sum: i64, v: i64, what: &'static str) -> i64 {
        sum.checked_sub(v).unwrap_or_else(|| {
            self.overflow.get_or_insert(what);
            0
        })
    }

    fn add(&mut self, sum: i64, v: i64, what: &'static str) -> i64 {
        sum.checked_add(v).unwrap_or_else(|| {
            self.overflow.get_or_insert(what);
            0
        })
    }

    /// The totals: each wallet is compared with its two ledger accounts, and a user account with
    /// a balance but no wallet counts as a mismatch too (one per account).
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] when a sum overflows `i64`.
    pub fn finish(mut self) -> Result<Audit, StoreError> {
        if let Some(what) = self.overflow {
            return Err(StoreError::Corrupt(format!(
                "audit: the sum of {what} overflows"
            )));
        }
        let ledger_sum = self
            .balances
            .values()
            .try_fold(0i64, |sum, b| sum.checked_add(*b))
            .ok_or_else(|| StoreError::Corrupt("ledger balances overflow".into()))?;
        let revenue = self
            .balances
            .get(&LedgerAccount::Revenue.key())
            .copied()
            .unwrap_or(0);
        let mut mismatched_wallets = 0u64;
        for (user, available, held) in std::mem::take(&mut self.wallets) {
            let ledger_available = self
                .balances
                .remove(&LedgerAccount::UserAvailable(user.clone()).key())
                .unwrap_or(0);
            let ledger_held = self
                .balances
                .remove(&LedgerAccount::UserHeld(user).key())
                .unwrap_or(0);
            if available.minor() != ledger_available || held.minor() != ledger_held {
                mismatched_wallets = mismatched_wallets.saturating_add(1);
            }
        }
        let clearing = blepay_core::Provider::ALL
            .into_iter()
            .filter_map(|p| self.balances.get(&LedgerAccount::Clearing(p).key()))
            .try_fold(0i64, |sum, b| sum.checked_add(*b))
            .ok_or_else(|| StoreError::Corrupt("clearing balances overflow".into()))?;
        let mut system = vec![LedgerAccount::Funding.key(), LedgerAccount::Revenue.key()];
        system.extend(
            blepay_core::Provider::ALL
                .into_iter()
                .map(|p| LedgerAccount::Clearing(p).key()),
        );
        let orphans = self
            .balances
            .iter()
            .filter(|(account, balance)| **balance != 0 && !system.contains(account))
            .count();
        mismatched_wallets =
            mismatched_wallets.saturating_add(u64::try_from(orphans).unwrap_or(u64::MAX));
        Ok(Audit {
            top_ups: self.top_ups,
            available: self.available,
            held: self.held,
            spent: self.spent,
            revenue,
            open_holds: self.open_holds,
            ledger_sum,
            mismatched_wallets,
            refunded: self.refunded,
            refund_entries: self.refund_entries,
            session_refunds: self.session_refunds,
            over_refunded_sessions: self.over_refunded_sessions,
            provider_credits: self.provider_credits,
            provider_debits: self.provider_debits,
            clearing,
            topups_net: self.topups_net,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn alice() -> UserId {
        UserId::parse("alice").unwrap()
    }

    fn wallet(available: i64, held: i64, spent: i64) -> Wallet {
        Wallet {
            available: Amount::new(available).unwrap(),
            held: Amount::new(held).unwrap(),
            spent: Amount::new(spent).unwrap(),
            refunded: Amount::ZERO,
        }
    }

    fn key(a: &LedgerAccount) -> String {
        a.key()
    }

    #[test]
    fn a_top_up_a_hold_and_a_capture_reconcile() {
        let mut t = AuditTally::default();
        let (funding, revenue) = (key(&LedgerAccount::Funding), key(&LedgerAccount::Revenue));
        let available = key(&LedgerAccount::UserAvailable(alice()));
        let held = key(&LedgerAccount::UserHeld(alice()));
        t.ledger_entry("TOPUP", &funding, &available, 1000);
        t.ledger_entry("HOLD", &available, &held, 300);
        t.ledger_entry("CAPTURE", &held, &revenue, 75);
        t.ledger_entry("RELEASE", &held, &available, 225);
        t.wallet(alice(), &wallet(925, 0, 75));
        let audit = t.finish().unwrap();
        assert!(audit.reconciles(), "{audit:?}");
        assert_eq!((audit.top_ups, audit.revenue, audit.spent), (1000, 75, 75));
    }

    #[test]
    fn a_refund_reconciles_and_a_session_refunded_past_its_capture_does_not() {
        let mut t = AuditTally::default();
        let (funding, revenue) = (key(&LedgerAccount::Funding), key(&LedgerAccount::Revenue));
        let available = key(&LedgerAccount::UserAvailable(alice()));
        let held = key(&LedgerAccount::UserHeld(alice()));
        t.ledger_entry("TOPUP", &funding, &available, 1000);
        t.ledger_entry("HOLD", &available, &held, 300);
        t.ledger_entry("CAPTURE", &held, &revenue, 100);
        t.ledger_entry("RELEASE", &held, &available, 200);
        t.ledger_entry("REFUND", &revenue, &available, 40);
        t.wallet(
            alice(),
            &Wallet {
                refunded: Amount::new(40).unwrap(),
                ..wallet(940, 0, 60)
            },
        );
        t.session_refunds(Amount::new(100).unwrap(), Amount::new(40).unwrap());
        let audit = t.finish().unwrap();
        assert!(audit.reconciles(), "{audit:?}");
        assert_eq!(audit.revenue, 60);
        let over = Audit {
            over_refunded_sessions: 1,
            ..audit
        };
        assert!(!over.reconciles());
    }

    #[test]
    fn a_wallet_that_differs_from_its_ledger_accounts_is_a_mismatch() {
        let mut t = AuditTally::default();
        t.ledger_entry(
            "TOPUP",
            &key(&LedgerAccount::Funding),
            &key(&LedgerAccount::UserAvailable(alice())),
            1000,
        );
        t.wallet(alice(), &wallet(999, 0, 0));
        t.ledger_entry(
            "TOPUP",
            &key(&LedgerAccount::Funding),
            &key(&LedgerAccount::UserAvailable(UserId::parse("bob").unwrap())),
            5,
        );
        let audit = t.finish().unwrap();
        assert_eq!(
            audit.mismatched_wallets, 2,
            "alice differs, bob has no wallet"
        );
        assert!(!audit.reconciles());
    }

    #[test]
    fn totals_beyond_i64_are_corrupt_not_wrapped() {
        let mut t = AuditTally::default();
        // Amount::MAX is 10^15: ten thousand of them pass i64::MAX (about 9.2 * 10^18).
        for _ in 0..10_000 {
            t.open_hold(Amount::MAX);
        }
        assert!(matches!(t.finish(), Err(StoreError::Corrupt(_))));

        let mut t = AuditTally::default();
        for _ in 0..3 {
            t.ledger_entry("TOPUP", "FUNDING", "USER#x#AVAILABLE", i64::MAX);
        }
        assert!(matches!(t.finish(), Err(StoreError::Corrupt(_))));
    }
}
