//! Stripe: the webhook (`Stripe-Signature`) and the outbound client (PaymentIntents, refunds).
//! LEAD STUB — replaced by helper s's module on merge.
#![allow(
    clippy::unused_async,
    missing_docs,
    unused_variables,
    dead_code,
    missing_debug_implementations
)]

use crate::config::SecretString;
use crate::providers::{ProviderError, RefundAnswer, WebhookError, http::Outbound};
use blepay_store::{ProviderEvent, ProviderTopUp, TopUpRefund};

pub const DEFAULT_API_BASE: &str = "https://api.stripe.com";
pub const SIGNATURE_TOLERANCE_SECS: u64 = 300;

#[derive(Clone, Debug)]
pub struct StripeSettings {
    pub secret_key: SecretString,
    pub webhook_secrets: Vec<SecretString>,
    pub api_base: String,
}

pub fn verify_signature(
    secrets: &[SecretString],
    header: Option<&str>,
    body: &[u8],
    now: u64,
) -> Result<(), WebhookError> {
    Err(WebhookError::BadSignature)
}

pub fn parse_event(body: &[u8], now: u64) -> Result<Option<ProviderEvent>, WebhookError> {
    Ok(None)
}

pub struct StripeClient {
    settings: StripeSettings,
    outbound: Outbound,
}

pub struct PaymentIntent {
    pub id: String,
    pub client_secret: SecretString,
}

impl StripeClient {
    pub fn new(settings: StripeSettings, outbound: Outbound) -> Self {
        Self { settings, outbound }
    }
    pub async fn create_payment_intent(
        &self,
        topup: &ProviderTopUp,
    ) -> Result<PaymentIntent, ProviderError> {
        Err(ProviderError::Unreachable("stub".into()))
    }
    pub async fn refund(
        &self,
        topup: &ProviderTopUp,
        refund: &TopUpRefund,
    ) -> Result<RefundAnswer, ProviderError> {
        Err(ProviderError::Unreachable("stub".into()))
    }
}
