//! The values of users' own top-ups through a payment provider (issue 12, docs/topups.md) that
//! cross the [`crate::Store`] trait: the pending top-up, the provider's verified notifications
//! applied to it at most once, and an operator's refund of its unspent part.

use blepay_core::{Amount, Currency, IdempotencyKey, Provider, UserId, Wallet};

use crate::Reason;

crate::hex_id!(
    /// A provider top-up's id: 16 random bytes, 32 lowercase hex characters. It is the WeChat Pay
    /// `out_trade_no` and the Stripe PaymentIntent's `metadata.blepay_topup_id`.
    TopUpId
);

crate::hex_id!(
    /// An operator's refund of a top-up: the WeChat Pay `out_refund_no`, the Stripe refund's
    /// `Idempotency-Key` and `metadata.blepay_refund_id`.
    TopUpRefundId
);

/// Where a top-up stands (docs/topups.md "States").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TopUpStatus {
    /// Created; no verified payment yet.
    Pending,
    /// The provider's verified notification credited the wallet.
    Succeeded,
    /// The provider said the payment failed. Not terminal: a later verified success still
    /// credits (a user may retry the same payment object).
    Failed,
    /// All of what was credited was reversed (refunds and disputes).
    Refunded,
}

impl TopUpStatus {
    pub const ALL: [Self; 4] = [Self::Pending, Self::Succeeded, Self::Failed, Self::Refunded];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Succeeded => "SUCCEEDED",
            Self::Failed => "FAILED",
            Self::Refunded => "REFUNDED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A user's top-up through a provider, with every fact its notifications established.
///
/// The reversal rule ([`crate::decide::reversal_target`]) reads `credited`, `refunds_committed`,
/// `provider_refunded` and `disputed`; `debited` is what was taken back from the wallet so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderTopUp {
    pub id: TopUpId,
    pub user: UserId,
    pub provider: Provider,
    pub amount: Amount,
    pub currency: Currency,
    pub status: TopUpStatus,
    /// The (user, key) the phone created it with.
    pub key: IdempotencyKey,
    /// The provider's payment object: the Stripe PaymentIntent id, the WeChat Pay `prepay_id`.
    pub provider_ref: Option<String>,
    /// What the app's provider SDK needs again on a retry (the Stripe `client_secret`); only
    /// ever shown to the top-up's own user.
    pub client_secret: Option<String>,
    /// The provider's payment id once it succeeded (Stripe PaymentIntent id, WeChat Pay
    /// `transaction_id`).
    pub transaction_id: Option<String>,
    pub created_at: u64,
    pub updated_at: u64,
    /// What was credited to the wallet: 0 or `amount`.
    pub credited: Amount,
    /// The provider's refunded total as its notifications told it (Stripe `amount_refunded`;
    /// the sum of WeChat Pay `REFUND.SUCCESS` amounts).
    pub provider_refunded: Amount,
    /// The disputed amount (Stripe `charge.dispute.created`).
    pub disputed: Amount,
    /// The refunded total blepay committed to: raised by each operator refund (to the provider's
    /// known total plus the refund), lowered again when the provider refuses one.
    pub refunds_committed: Amount,
    /// What was taken back from the wallet (PROVIDER_DEBIT less PROVIDER_CREDIT give-backs).
    pub debited: Amount,
    /// Why a verified notification was not applied (wrong amount or currency), for the operator.
    pub mismatch: Option<String>,
    /// The provider's failure reason, when it said FAILED.
    pub failure: Option<String>,
}

impl ProviderTopUp {
    /// What should have been taken back but could not be (the wallet had spent it): the
    /// operator's to recover outside blepay.
    pub fn unrecovered(&self) -> Amount {
        crate::decide::reversal_target(self)
            .checked_sub(self.debited)
            .unwrap_or(Amount::ZERO)
    }
}

/// A user starts a top-up.
#[derive(Debug, Clone)]
pub struct NewProviderTopUp {
    /// A fresh random id, used when the top-up is created.
    pub id: TopUpId,
    pub user: UserId,
    pub provider: Provider,
    pub amount: Amount,
    pub currency: Currency,
    /// Scoped per user: the same key is the same top-up.
    pub key: IdempotencyKey,
    pub now: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartTopUpOutcome {
    Created(ProviderTopUp),
    /// The same user, key, provider and amount before: that top-up.
    Existing(ProviderTopUp),
    /// The key was used by this user for another provider or amount.
    KeyReused,
}

/// Which top-up a notification is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopUpLocator {
    /// Our id (the PaymentIntent's metadata, WeChat Pay's `out_trade_no`).
    Id(TopUpId),
    /// The provider's payment object ([`ProviderTopUp::provider_ref`]): what a Stripe charge or
    /// dispute names (its `payment_intent`).
    ProviderRef(Provider, String),
}

/// What a verified notification says happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderEventKind {
    /// The payment succeeded: credit when `amount` and `currency` equal the top-up's.
    Succeeded {
        amount: Amount,
        currency: Currency,
        transaction_id: String,
    },
    /// The payment failed (a PENDING top-up becomes FAILED).
    Failed { reason: String },
    /// The provider's refunded total for the payment (Stripe `charge.refunded`'s
    /// `amount_refunded`).
    RefundedTotal { total: Amount },
    /// One refund succeeded (WeChat Pay `REFUND.SUCCESS`); `refund` is ours when its
    /// `out_refund_no` is one of our refunds.
    Refunded {
        refund: Option<TopUpRefundId>,
        amount: Amount,
    },
    /// One of our refunds succeeded at the provider (Stripe `refund.updated`, a refund API
    /// answer `succeeded`).
    RefundConfirmed { refund: TopUpRefundId },
    /// One of our refunds was refused or failed at the provider: its amount is given back.
    RefundFailed {
        refund: TopUpRefundId,
        reason: String,
    },
    /// The payment is disputed for `amount` (Stripe `charge.dispute.created`).
    Disputed { amount: Amount },
}

/// A provider's verified notification, applied at most once per `(provider, key)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderEvent {
    pub provider: Provider,
    /// What makes it the same notification again: the Stripe event id; WeChat Pay's
    /// `txn:<transaction_id>` or `refund:<refund_id>`; `answer:<refund id>:<status>` for a
    /// refund API answer.
    pub key: String,
    pub topup: TopUpLocator,
    pub kind: ProviderEventKind,
    pub now: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderEventOutcome {
    /// Applied now: the top-up and its user's wallet after it.
    Applied {
        topup: ProviderTopUp,
        wallet: Wallet,
    },
    /// This `(provider, key)` was applied before: nothing changed.
    Duplicate,
    /// No such top-up (or it belongs to the other provider): nothing changed, nothing recorded.
    UnknownTopUp,
    /// A success whose amount or currency differs from the top-up's: nothing credited, the
    /// mismatch recorded on the top-up (and the event as applied).
    Mismatch(ProviderTopUp),
    /// Verified and recorded, but it changes nothing (a success for a top-up already
    /// credited, a failure after a success, a refund event naming another top-up's refund).
    Ignored(ProviderTopUp),
}

/// Where an operator's refund of a top-up stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TopUpRefundStatus {
    /// Taken from the wallet; the provider has not confirmed yet.
    Requested,
    Succeeded,
    /// The provider refused or failed it: its amount was given back to the wallet.
    Failed,
}

impl TopUpRefundStatus {
    pub const ALL: [Self; 3] = [Self::Requested, Self::Succeeded, Self::Failed];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Requested => "REQUESTED",
            Self::Succeeded => "SUCCEEDED",
            Self::Failed => "FAILED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// An operator's refund of (part of) a top-up's unspent credit back to the card / WeChat
/// balance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopUpRefund {
    pub id: TopUpRefundId,
    pub topup: TopUpId,
    pub amount: Amount,
    pub reason: Reason,
    /// The operator's principal.
    pub actor: String,
    /// Scoped per top-up.
    pub key: IdempotencyKey,
    pub status: TopUpRefundStatus,
    /// Why the provider refused it.
    pub failure: Option<String>,
    pub created_at: u64,
    pub updated_at: u64,
}

/// An operator refunds part of a top-up.
#[derive(Debug, Clone)]
pub struct TopUpRefundCommand {
    pub topup: TopUpId,
    /// A fresh random id, used when the refund is created.
    pub id: TopUpRefundId,
    pub amount: Amount,
    pub reason: Reason,
    pub key: IdempotencyKey,
    pub actor: String,
    pub now: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopUpRefundOutcome {
    /// Taken from the wallet now; the caller asks the provider to refund it.
    Requested {
        refund: TopUpRefund,
        topup: ProviderTopUp,
        wallet: Wallet,
    },
    /// The same key on this top-up requested the same amount before: nothing moves (the caller
    /// asks the provider again, under the same idempotency key, while it is REQUESTED).
    Replayed {
        refund: TopUpRefund,
        topup: ProviderTopUp,
    },
    /// The key was used on this top-up for another amount.
    KeyReused,
    /// More than is left to refund: `refundable` is at most the wallet's available balance and
    /// what was credited less what is already reversed.
    ExceedsRefundable {
        refundable: Amount,
    },
    /// The top-up was not credited (PENDING or FAILED).
    NotCredited,
    NotFound,
}

/// Which top-ups a list shows; every field narrows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopUpFilter {
    pub user: Option<UserId>,
    pub provider: Option<Provider>,
    pub status: Option<TopUpStatus>,
    /// Created at or after (unix seconds).
    pub from: Option<u64>,
    /// Created at or before (unix seconds, inclusive).
    pub to: Option<u64>,
}

impl TopUpFilter {
    /// Whether `t` is one this filter shows.
    pub fn matches(&self, t: &ProviderTopUp) -> bool {
        self.user.as_ref().is_none_or(|u| *u == t.user)
            && self.provider.is_none_or(|p| p == t.provider)
            && self.status.is_none_or(|s| s == t.status)
            && self.from.is_none_or(|f| t.created_at >= f)
            && self.to.is_none_or(|to| t.created_at <= to)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_and_ids_are_hex() {
        for s in TopUpStatus::ALL {
            assert_eq!(TopUpStatus::parse(s.as_str()), Some(s));
        }
        for s in TopUpRefundStatus::ALL {
            assert_eq!(TopUpRefundStatus::parse(s.as_str()), Some(s));
        }
        let id = TopUpId::from_bytes([7; 16]);
        assert_eq!(TopUpId::parse(&id.to_string()).unwrap(), id);
        assert_eq!(id.to_string().len(), 32);
        assert!(TopUpRefundId::parse("xyz").is_err());
    }
}
