//! The payment providers users fund their wallets through (issue 12): Stripe and WeChat Pay.
//!
//! Each provider has two halves, kept apart:
//! - **inbound**: its notifications (webhooks), authenticated by the provider's signature only
//!   (never by the phone's word), parsed into a [`blepay_store::ProviderEvent`] the store applies
//!   at most once;
//! - **outbound**: one small client per provider ([`stripe`], [`wechatpay`]) that creates the
//!   payment object and refunds, over [`http::Outbound`] with explicit timeouts, bounded retries
//!   and the provider's idempotency keys.
//!
//! Which providers a deployment offers is configuration ([`config`]): one without
//! configuration is not offered (`400 PROVIDER_UNAVAILABLE`).

pub mod config;
pub mod http;
pub mod stripe;
pub mod wechatpay;

/// Why a notification was not accepted. Nothing was applied; the webhook answers the provider's
/// "not received" (Stripe: 400; WeChat Pay: 4xx with `{"code":"FAIL",...}`) so it retries —
/// except [`WebhookError::Malformed`], which no retry fixes (still answered 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// The provider is not configured on this deployment.
    #[error("provider not configured")]
    NotConfigured,
    /// A signature header is missing or does not parse.
    #[error("missing or malformed signature headers")]
    MissingSignature,
    /// No signature verifies with any configured secret / certificate.
    #[error("signature does not verify")]
    BadSignature,
    /// The signed timestamp is outside the tolerance.
    #[error("timestamp outside the tolerance")]
    StaleTimestamp,
    /// The signed platform certificate serial is not one we know.
    #[error("unknown platform certificate serial")]
    UnknownCertificate,
    /// The body verified but could not be decrypted or parsed.
    #[error("malformed notification: {0}")]
    Malformed(String),
}

/// Why an outbound call to a provider did not give a definite answer or was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// Connect, TLS, timeout, 5xx or 429 after the retries: the outcome is unknown; the same
    /// idempotency key may be retried later.
    #[error("provider unreachable: {0}")]
    Unreachable(String),
    /// A definite refusal (4xx other than 429): the provider did nothing.
    #[error("provider refused ({status} {code}): {message}")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    /// An answer that does not parse or whose signature does not verify.
    #[error("provider answer unusable: {0}")]
    BadAnswer(String),
}

/// A refund as the provider's refund API answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundAnswer {
    /// Accepted; its notification will tell how it ends.
    Pending,
    Succeeded,
    /// The provider says it failed or was closed (`reason`).
    Failed(String),
}
