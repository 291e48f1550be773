//! Wallets and the double-entry ledger.
//!
//! A wallet is three balances: `available` (spendable), `held` (reserved for open sessions) and
//! `spent` (captured so far, a running total). Every change is expressed as [`LedgerEntry`]s, each
//! moving one amount from a debit account to a credit account, so the ledger always sums to zero:
//!
//! ```text
//! top-up   : Funding        -> UserAvailable(u)
//! hold     : UserAvailable  -> UserHeld(u)
//! release  : UserHeld       -> UserAvailable(u)
//! capture  : UserHeld       -> Revenue
//! late capture : UserAvailable -> Revenue   (a final report after a timeout, docs/sessions.md)
//! refund   : Revenue        -> UserAvailable(u)   (an operator's refund of a session's capture)
//! provider credit : Clearing(p) -> UserAvailable(u)  (a verified Stripe / WeChat Pay payment)
//! provider debit  : UserAvailable(u) -> Clearing(p)  (its refund or dispute, docs/topups.md)
//! ```
//!
//! Invariant: for every user, `available` and `held` equal the balances of their ledger accounts;
//! and `sum(available + held) + revenue == total top-ups + provider credits - provider debits`, to
//! the cent (revenue net of refunds: `revenue == sum(spent)`, `spent` being what was captured less
//! what was refunded); the clearing accounts hold minus what the providers' payments credited net.

use crate::ids::UserId;
use crate::money::{Amount, MoneyError};

/// Why a wallet operation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WalletError {
    #[error("insufficient funds: {available} available, {requested} requested")]
    InsufficientFunds {
        available: Amount,
        requested: Amount,
    },
    #[error("wallet balance would overflow")]
    Overflow,
    #[error("cannot release or capture more than is held")]
    NotHeld,
    #[error("cannot refund more than was captured")]
    NotCaptured,
}

impl From<MoneyError> for WalletError {
    fn from(_: MoneyError) -> Self {
        Self::Overflow
    }
}

/// A payment provider users fund their wallets through (issue 12).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Provider {
    Stripe,
    WechatPay,
}

impl Provider {
    pub const ALL: [Self; 2] = [Self::Stripe, Self::WechatPay];

    /// `stripe`, `wechatpay`: the API's and the storage's name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Stripe => "stripe",
            Self::WechatPay => "wechatpay",
        }
    }

    /// Parse what [`Provider::as_str`] wrote.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

impl core::fmt::Display for Provider {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The ledger accounts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LedgerAccount {
    /// Where top-ups come from (the outside world); its balance is minus all top-ups.
    Funding,
    UserAvailable(UserId),
    UserHeld(UserId),
    /// The operator's captured revenue.
    Revenue,
    /// What a payment provider owes the operator: minus its payments credited to wallets, plus
    /// what was reversed (refunds, disputes). Settled with the provider outside blepay.
    Clearing(Provider),
}

impl LedgerAccount {
    /// A stable textual name, used as a storage key: `funding`, `revenue`, `available:<user>`,
    /// `held:<user>`, `clearing:<provider>`.
    pub fn key(&self) -> alloc::string::String {
        use alloc::format;
        match self {
            Self::Funding => "funding".into(),
            Self::Revenue => "revenue".into(),
            Self::UserAvailable(u) => format!("available:{u}"),
            Self::UserHeld(u) => format!("held:{u}"),
            Self::Clearing(p) => format!("clearing:{p}"),
        }
    }
}

/// What a ledger entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    TopUp,
    Hold,
    Release,
    Capture,
    /// A late final report's capture from the available balance (docs/sessions.md).
    LateCapture,
    /// An operator's refund of (part of) a session's capture: revenue back to available.
    Refund,
    /// A verified provider payment: clearing to available.
    ProviderCredit,
    /// A provider payment's refund or dispute taken back: available to clearing.
    ProviderDebit,
}

impl EntryKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::TopUp => "TOPUP",
            Self::Hold => "HOLD",
            Self::Release => "RELEASE",
            Self::Capture => "CAPTURE",
            Self::LateCapture => "LATE_CAPTURE",
            Self::Refund => "REFUND",
            Self::ProviderCredit => "PROVIDER_CREDIT",
            Self::ProviderDebit => "PROVIDER_DEBIT",
        }
    }

    pub const ALL: [Self; 8] = [
        Self::TopUp,
        Self::Hold,
        Self::Release,
        Self::Capture,
        Self::LateCapture,
        Self::Refund,
        Self::ProviderCredit,
        Self::ProviderDebit,
    ];

    /// Parse what [`EntryKind::as_str`] wrote.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// One double-entry movement of a positive amount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    pub kind: EntryKind,
    pub debit: LedgerAccount,
    pub credit: LedgerAccount,
    pub amount: Amount,
}

/// A user's wallet balances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Wallet {
    pub available: Amount,
    pub held: Amount,
    /// What was captured (captures and late captures) less what was refunded: the wallet's share
    /// of revenue.
    pub spent: Amount,
    /// Everything operators ever refunded to this wallet (a running total, shown to the user).
    /// Kept apart from `spent` so that `spent` stays within the lifetime total: a refund gives
    /// the money back, so it can be spent and captured again without `spent` growing past it.
    pub refunded: Amount,
}

impl Wallet {
    /// What this wallet was ever credited: `available + held + spent`. Holds, releases,
    /// captures and refunds only move money between the three balances, so this changes only
    /// with a top-up or a provider credit (up) and a provider debit (down).
    ///
    /// # Errors
    /// [`WalletError::Overflow`] when it exceeds [`Amount::MAX`] (a wallet no rule here produces).
    pub fn lifetime_total(&self) -> Result<Amount, WalletError> {
        Ok(self
            .available
            .checked_add(self.held)?
            .checked_add(self.spent)?)
    }

    /// Refund `amount` of what was captured: revenue back to the available balance (`spent`
    /// down, `available` up, `refunded` up by it). The caller bounds it by the session's own
    /// capture (a session's refunds never exceed what it captured); this rule bounds it by the
    /// wallet's `spent`.
    ///
    /// # Errors
    /// [`WalletError::NotCaptured`] when `amount > spent`; [`WalletError::Overflow`] when the
    /// running `refunded` total would pass [`Amount::MAX`].
    pub fn refund(self, user: &UserId, amount: Amount) -> Result<(Self, LedgerEntry), WalletError> {
        let spent = self
            .spent
            .checked_sub(amount)
            .map_err(|_| WalletError::NotCaptured)?;
        let refunded = self.refunded.checked_add(amount)?;
        let available = self.available.checked_add(amount)?;
        Ok((
            Self {
                available,
                held: self.held,
                spent,
                refunded,
            },
            LedgerEntry {
                kind: EntryKind::Refund,
                debit: LedgerAccount::Revenue,
                credit: LedgerAccount::UserAvailable(user.clone()),
                amount,
            },
        ))
    }

    /// Credit a top-up.
    ///
    /// The wallet's lifetime total ([`Wallet::lifetime_total`]: every top-up ever credited) must
    /// stay at most [`Amount::MAX`]. Since `spent` can only grow out of that total, no capture can
    /// ever take `spent` (or any balance) past [`Amount::MAX`] either (issue 10, L2).
    ///
    /// # Errors
    /// [`WalletError::Overflow`] when the lifetime total would exceed [`Amount::MAX`].
    pub fn top_up(self, user: &UserId, amount: Amount) -> Result<(Self, LedgerEntry), WalletError> {
        self.lifetime_total()?.checked_add(amount)?;
        let next = Self {
            available: self.available.checked_add(amount)?,
            ..self
        };
        Ok((
            next,
            LedgerEntry {
                kind: EntryKind::TopUp,
                debit: LedgerAccount::Funding,
                credit: LedgerAccount::UserAvailable(user.clone()),
                amount,
            },
        ))
    }

    /// Credit a verified provider payment (or give back a reversal that no longer stands):
    /// `Clearing(provider)` to available, under the same lifetime bound as [`Wallet::top_up`].
    ///
    /// # Errors
    /// [`WalletError::Overflow`] when the lifetime total would exceed [`Amount::MAX`].
    pub fn provider_credit(
        self,
        user: &UserId,
        provider: Provider,
        amount: Amount,
    ) -> Result<(Self, LedgerEntry), WalletError> {
        let (next, entry) = self.top_up(user, amount)?;
        Ok((
            next,
            LedgerEntry {
                kind: EntryKind::ProviderCredit,
                debit: LedgerAccount::Clearing(provider),
                ..entry
            },
        ))
    }

    /// Take back `amount` of a provider payment (its refund or dispute): available to
    /// `Clearing(provider)`. Never makes `available` negative.
    ///
    /// # Errors
    /// [`WalletError::InsufficientFunds`] when `available < amount`.
    pub fn provider_debit(
        self,
        user: &UserId,
        provider: Provider,
        amount: Amount,
    ) -> Result<(Self, LedgerEntry), WalletError> {
        let available =
            self.available
                .checked_sub(amount)
                .map_err(|_| WalletError::InsufficientFunds {
                    available: self.available,
                    requested: amount,
                })?;
        Ok((
            Self { available, ..self },
            LedgerEntry {
                kind: EntryKind::ProviderDebit,
                debit: LedgerAccount::UserAvailable(user.clone()),
                credit: LedgerAccount::Clearing(provider),
                amount,
            },
        ))
    }

    /// Reserve `amount` for a session.
    ///
    /// # Errors
    /// [`WalletError::InsufficientFunds`] when `available < amount`.
    pub fn hold(self, user: &UserId, amount: Amount) -> Result<(Self, LedgerEntry), WalletError> {
        let available =
            self.available
                .checked_sub(amount)
                .map_err(|_| WalletError::InsufficientFunds {
                    available: self.available,
                    requested: amount,
                })?;
        let held = self.held.checked_add(amount)?;
        Ok((
            Self {
                available,
                held,
                ..self
            },
            LedgerEntry {
                kind: EntryKind::Hold,
                debit: LedgerAccount::UserAvailable(user.clone()),
                credit: LedgerAccount::UserHeld(user.clone()),
                amount,
            },
        ))
    }

    /// Capture `amount` straight from the available balance as revenue: what a final report that
    /// arrived after its session was closed by timeout still owes (docs/sessions.md). Never makes
    /// `available` negative.
    ///
    /// # Errors
    /// [`WalletError::InsufficientFunds`] when `available < amount`; [`WalletError::Overflow`].
    pub fn late_capture(
        self,
        user: &UserId,
        amount: Amount,
    ) -> Result<(Self, LedgerEntry), WalletError> {
        let available =
            self.available
                .checked_sub(amount)
                .map_err(|_| WalletError::InsufficientFunds {
                    available: self.available,
                    requested: amount,
                })?;
        let spent = self.spent.checked_add(amount)?;
        Ok((
            Self {
                available,
                spent,
                ..self
            },
            LedgerEntry {
                kind: EntryKind::LateCapture,
                debit: LedgerAccount::UserAvailable(user.clone()),
                credit: LedgerAccount::Revenue,
                amount,
            },
        ))
    }

    /// Close a hold of `hold`: capture `capture` (≤ hold) as revenue and release the rest.
    /// Returns the entries with a positive amount (zero movements are not recorded).
    ///
    /// # Errors
    /// [`WalletError::NotHeld`] when `hold > held` or `capture > hold`.
    pub fn settle(
        self,
        user: &UserId,
        hold: Amount,
        capture: Amount,
    ) -> Result<(Self, alloc::vec::Vec<LedgerEntry>), WalletError> {
        let release = hold
            .checked_sub(capture)
            .map_err(|_| WalletError::NotHeld)?;
        let held = self
            .held
            .checked_sub(hold)
            .map_err(|_| WalletError::NotHeld)?;
        let available = self.available.checked_add(release)?;
        let spent = self.spent.checked_add(capture)?;
        let refunded = self.refunded;
        let mut entries = alloc::vec::Vec::with_capacity(2);
        if !capture.is_zero() {
            entries.push(LedgerEntry {
                kind: EntryKind::Capture,
                debit: LedgerAccount::UserHeld(user.clone()),
                credit: LedgerAccount::Revenue,
                amount: capture,
            });
        }
        if !release.is_zero() {
            entries.push(LedgerEntry {
                kind: EntryKind::Release,
                debit: LedgerAccount::UserHeld(user.clone()),
                credit: LedgerAccount::UserAvailable(user.clone()),
                amount: release,
            });
        }
        Ok((
            Self {
                available,
                held,
                spent,
                refunded,
            },
            entries,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn user() -> UserId {
        UserId::parse("alice").unwrap()
    }
    fn amt(v: i64) -> Amount {
        Amount::new(v).unwrap()
    }

    #[test]
    fn a_hold_larger_than_available_is_refused() {
        let (w, _) = Wallet::default().top_up(&user(), amt(100)).unwrap();
        assert_eq!(
            w.hold(&user(), amt(101)),
            Err(WalletError::InsufficientFunds {
                available: amt(100),
                requested: amt(101)
            })
        );
    }

    #[test]
    fn settling_captures_part_and_releases_the_rest() {
        let (w, _) = Wallet::default().top_up(&user(), amt(500)).unwrap();
        let (w, _) = w.hold(&user(), amt(200)).unwrap();
        let (w, entries) = w.settle(&user(), amt(200), amt(75)).unwrap();
        assert_eq!(
            w,
            Wallet {
                available: amt(425),
                held: amt(0),
                spent: amt(75),
                refunded: amt(0),
            }
        );
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].kind, EntryKind::Capture);
        assert_eq!(entries[1].amount, amt(125));
    }

    #[test]
    fn a_late_capture_moves_available_to_revenue_and_never_below_zero() {
        let (w, _) = Wallet::default().top_up(&user(), amt(100)).unwrap();
        let (w2, entry) = w.late_capture(&user(), amt(40)).unwrap();
        assert_eq!(
            w2,
            Wallet {
                available: amt(60),
                held: amt(0),
                spent: amt(40),
                refunded: amt(0),
            }
        );
        assert_eq!(
            (entry.kind, entry.debit, entry.credit),
            (
                EntryKind::LateCapture,
                LedgerAccount::UserAvailable(user()),
                LedgerAccount::Revenue
            )
        );
        assert!(matches!(
            w2.late_capture(&user(), amt(61)),
            Err(WalletError::InsufficientFunds { .. })
        ));
    }

    #[test]
    fn a_top_up_past_the_lifetime_maximum_is_refused_even_after_the_money_was_spent() {
        let (w, _) = Wallet::default().top_up(&user(), Amount::MAX).unwrap();
        let (w, _) = w.hold(&user(), Amount::MAX).unwrap();
        let (w, _) = w.settle(&user(), Amount::MAX, Amount::MAX).unwrap();
        assert_eq!(w.available, Amount::ZERO);
        assert_eq!(w.spent, Amount::MAX);
        assert_eq!(w.top_up(&user(), amt(1)), Err(WalletError::Overflow));
    }

    #[test]
    fn a_refund_moves_revenue_back_to_available_and_never_past_what_was_captured() {
        let (w, _) = Wallet::default().top_up(&user(), amt(500)).unwrap();
        let (w, _) = w.hold(&user(), amt(200)).unwrap();
        let (w, _) = w.settle(&user(), amt(200), amt(75)).unwrap();
        let total = w.lifetime_total().unwrap();
        let (w, entry) = w.refund(&user(), amt(50)).unwrap();
        assert_eq!(
            (w.available, w.spent, w.refunded),
            (amt(475), amt(25), amt(50))
        );
        assert_eq!(
            (entry.kind, entry.debit, entry.credit, entry.amount),
            (
                EntryKind::Refund,
                LedgerAccount::Revenue,
                LedgerAccount::UserAvailable(user()),
                amt(50)
            )
        );
        assert_eq!(
            w.lifetime_total().unwrap(),
            total,
            "a refund credits nothing new"
        );
        assert_eq!(w.refund(&user(), amt(26)), Err(WalletError::NotCaptured));
        assert!(w.refund(&user(), amt(25)).is_ok());
    }

    proptest! {
        /// Whatever happens, no balance can pass `Amount::MAX`: every rule either refuses or
        /// keeps the lifetime total (which only top-ups raise, up to the maximum).
        #[test]
        fn no_sequence_of_operations_overflows_a_balance(ops in proptest::collection::vec((0u8..5, 0i64..=Amount::MAX.minor(), 0i64..=Amount::MAX.minor()), 0..40)) {
            let u = user();
            let mut w = Wallet::default();
            let mut holds: alloc::vec::Vec<Amount> = alloc::vec::Vec::new();
            for (op, a, b) in ops {
                match op {
                    0 => if let Ok((n, _)) = w.top_up(&u, amt(a)) { w = n; },
                    1 => if let Ok((n, _)) = w.hold(&u, amt(a)) { w = n; holds.push(amt(a)); },
                    2 => if let Ok((n, _)) = w.late_capture(&u, amt(a)) { w = n; },
                    3 if b % 2 == 0 => if let Ok((n, _)) = w.refund(&u, amt(a)) { w = n; },
                    _ => if let Some(h) = holds.pop() {
                        let (n, _) = w.settle(&u, h, amt(b).min(h)).unwrap();
                        w = n;
                    },
                }
                prop_assert!(w.lifetime_total().is_ok());
            }
        }

        #[test]
        fn any_sequence_of_operations_conserves_money(ops in proptest::collection::vec((0u8..4, 0i64..10_000, 0i64..10_000), 0..50)) {
            let u = user();
            let mut w = Wallet::default();
            let mut topups = 0i64;
            let mut revenue = 0i64;
            let mut holds: alloc::vec::Vec<Amount> = alloc::vec::Vec::new();
            for (op, a, b) in ops {
                match op {
                    0 => if let Ok((n, _)) = w.top_up(&u, amt(a)) { w = n; topups += a; },
                    1 => if let Ok((n, _)) = w.hold(&u, amt(a)) { w = n; holds.push(amt(a)); },
                    3 => if let Ok((n, _)) = w.refund(&u, amt(a)) { w = n; revenue -= a; },
                    _ => if let Some(h) = holds.pop() {
                        let cap = amt(b).min(h);
                        let (n, entries) = w.settle(&u, h, cap).unwrap();
                        w = n;
                        revenue += entries.iter().filter(|e| e.kind == EntryKind::Capture).map(|e| e.amount.minor()).sum::<i64>();
                    },
                }
                prop_assert_eq!(w.available.minor() + w.held.minor() + revenue, topups);
                prop_assert_eq!(w.spent.minor(), revenue);
            }
        }
    }
}
