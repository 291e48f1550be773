//! Stripe: the webhook (`Stripe-Signature`) and the outbound client (PaymentIntents, refunds).
//!
//! - **Inbound.** [`verify_signature`] checks the `Stripe-Signature` header against every
//!   configured endpoint secret (HMAC-SHA256 over `"{t}.{raw body}"`, hex, constant-time
//!   compare); only then does [`parse_event`] read the body into the
//!   [`ProviderEvent`] blepay applies at most once (keyed by the event `id`). Neither does IO
//!   (besides a log line): time comes in as `now`.
//! - **Outbound.** [`StripeClient`] creates a PaymentIntent per top-up and refunds, form-encoded
//!   as Stripe's API takes them, with the `Idempotency-Key` derived from blepay's own id (so a
//!   retry, now or after a crash, is the same request to Stripe), a pinned [`API_VERSION`], and
//!   at most [`MAX_ATTEMPTS`] attempts while the outcome is unknown: no answer, 5xx, 429, 409
//!   (a concurrent request under the same key), or whatever `Stripe-Should-Retry: true` says;
//!   `Stripe-Should-Retry: false` stops the retries. An outcome still unknown after them is
//!   [`ProviderError::Unreachable`], never a refusal: a refund answered so must not be given
//!   back to the wallet, as Stripe may still carry it out.

use std::collections::HashMap;

use blepay_core::{Amount, Currency, Provider};
use blepay_store::{
    ProviderEvent, ProviderEventKind, ProviderTopUp, TopUpId, TopUpLocator, TopUpRefund,
    TopUpRefundId,
};
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::{Method, Request, StatusCode, header};
use http_body_util::Full;
use serde::Deserialize;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::config::SecretString;
use crate::providers::http::{Answer, Outbound, OutboundError, backoff};
use crate::providers::{ProviderError, RefundAnswer, WebhookError};

/// Where the API is; tests point [`StripeSettings::api_base`] at a loopback fixture server.
pub const DEFAULT_API_BASE: &str = "https://api.stripe.com";
/// The most a signed timestamp may differ from our clock, either way (Stripe's libraries'
/// default tolerance).
pub const SIGNATURE_TOLERANCE_SECS: u64 = 300;
/// The API version every request pins (`Stripe-Version`), so the answers' shape does not follow
/// the account's default (the version Stripe's SDKs of October 2026 pin). The webhook endpoint
/// should be created with the same version; the fields read here (`amount_received`,
/// `metadata`, `amount_refunded`, `payment_intent`, `failure_reason`, `status`) are
/// long-standing ones of the documented objects.
pub const API_VERSION: &str = "2026-09-30.endive";
/// Attempts per outbound call while the outcome is unknown (no answer, 5xx, 429, 409).
pub const MAX_ATTEMPTS: u32 = 3;
/// The longest failure reason kept from Stripe's text (characters).
pub const MAX_REASON_CHARS: usize = 200;
/// The longest Stripe object id accepted (Stripe documents ids as opaque strings of up to 255).
const MAX_ID_LEN: usize = 255;

/// The metadata key naming our top-up on a PaymentIntent and a refund.
pub const METADATA_TOPUP_ID: &str = "blepay_topup_id";
/// The metadata key naming the top-up's user on a PaymentIntent.
pub const METADATA_USER: &str = "blepay_user";
/// The metadata key naming our refund on a Stripe refund.
pub const METADATA_REFUND_ID: &str = "blepay_refund_id";

/// A deployment's Stripe configuration.
#[derive(Clone, Debug)]
pub struct StripeSettings {
    /// The secret API key (`sk_live_…`, `sk_test_…` or a restricted `rk_…`).
    pub secret_key: SecretString,
    /// Every webhook endpoint secret (`whsec_…`) a signature may verify with: more than one
    /// while a secret is rolled.
    pub webhook_secrets: Vec<SecretString>,
    /// [`DEFAULT_API_BASE`] outside tests.
    pub api_base: String,
}

// ---------------------------------------------------------------------------------------------
// Inbound: the signature
// ---------------------------------------------------------------------------------------------

type HmacSha256 = Hmac<Sha256>;

/// `t` and the `v1` signatures of a `Stripe-Signature` header.
struct SignatureHeader<'a> {
    /// As sent: it is what was signed.
    timestamp_text: &'a str,
    timestamp: u64,
    v1: Vec<[u8; 32]>,
}

/// Split `t=…,v1=…,v1=…,v0=…` on `,` then on the first `=`. Unknown keys (`v0`, future
/// schemes) and items without `=` are skipped; a `v1` that is not 64 hex digits can match
/// nothing and is skipped too. `None` when there is not exactly one numeric `t` or no usable
/// `v1`.
fn parse_signature_header(header: &str) -> Option<SignatureHeader<'_>> {
    let mut timestamp_text = None;
    let mut v1 = Vec::new();
    for item in header.split(',') {
        let Some((key, value)) = item.trim().split_once('=') else {
            continue;
        };
        match key {
            "t" if timestamp_text.is_some() => return None,
            "t" => timestamp_text = Some(value),
            "v1" => {
                let mut sig = [0u8; 32];
                if hex::decode_to_slice(value, &mut sig).is_ok() {
                    v1.push(sig);
                }
            }
            _ => {}
        }
    }
    let timestamp_text = timestamp_text?;
    if timestamp_text.is_empty() || !timestamp_text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let timestamp = timestamp_text.parse().ok()?;
    if v1.is_empty() {
        return None;
    }
    Some(SignatureHeader {
        timestamp_text,
        timestamp,
        v1,
    })
}

/// HMAC-SHA256 of `"{t}.{body}"` under `secret` (its bytes as configured, `whsec_` included, as
/// Stripe signs). `None` never happens (HMAC takes a key of any length), and would match
/// nothing.
fn expected_signature(
    secret: &SecretString,
    timestamp_text: &str,
    body: &[u8],
) -> Option<[u8; 32]> {
    let mut mac = HmacSha256::new_from_slice(secret.expose().as_bytes()).ok()?;
    mac.update(timestamp_text.as_bytes());
    mac.update(b".");
    mac.update(body);
    Some(mac.finalize().into_bytes().into())
}

/// Verify the `Stripe-Signature` header (`t=…,v1=…[,v1=…][,v0=…]`) of a webhook `body`.
///
/// Any `v1` matching the HMAC under any of `secrets` passes (endpoint secret rotation: Stripe
/// signs with every active secret). Every secret is tried against every `v1`, compared in
/// constant time. The timestamp is checked **after** a signature matched, as Stripe's own
/// libraries do: a forged request learns nothing about our clock, and a genuine but replayed
/// or delayed one is [`WebhookError::StaleTimestamp`] (more than [`SIGNATURE_TOLERANCE_SECS`]
/// away from `now`, in either direction). Neither outcome changes anything.
///
/// # Errors
/// [`WebhookError::NotConfigured`] with no secret; [`WebhookError::MissingSignature`] when the
/// header is absent or does not parse; [`WebhookError::BadSignature`] when nothing matches;
/// [`WebhookError::StaleTimestamp`].
pub fn verify_signature(
    secrets: &[SecretString],
    header: Option<&str>,
    body: &[u8],
    now: u64,
) -> Result<(), WebhookError> {
    if secrets.is_empty() {
        return Err(WebhookError::NotConfigured);
    }
    let header = header.ok_or(WebhookError::MissingSignature)?;
    let parsed = parse_signature_header(header).ok_or(WebhookError::MissingSignature)?;
    let mut matched = subtle::Choice::from(0);
    for secret in secrets {
        let Some(expected) = expected_signature(secret, parsed.timestamp_text, body) else {
            continue;
        };
        for sig in &parsed.v1 {
            matched |= expected.ct_eq(sig);
        }
    }
    if !bool::from(matched) {
        return Err(WebhookError::BadSignature);
    }
    if now.abs_diff(parsed.timestamp) > SIGNATURE_TOLERANCE_SECS {
        return Err(WebhookError::StaleTimestamp);
    }
    Ok(())
}

/// A `Stripe-Signature` header for `body` at `timestamp` under `secret`: what Stripe sends.
/// For tests (here and the webhook's end-to-end tests).
pub fn sign(secret: &SecretString, timestamp: u64, body: &[u8]) -> String {
    let t = timestamp.to_string();
    let v1 = expected_signature(secret, &t, body).map(hex::encode);
    format!("t={t},v1={}", v1.unwrap_or_default())
}

// ---------------------------------------------------------------------------------------------
// Inbound: the event
// ---------------------------------------------------------------------------------------------

/// The Event envelope: only what blepay reads.
#[derive(Deserialize)]
struct EventEnvelope {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    data: EventData,
}

#[derive(Deserialize)]
struct EventData {
    object: serde_json::Value,
}

/// A PaymentIntent as `payment_intent.*` events carry it.
#[derive(Deserialize)]
struct PaymentIntentObject {
    id: String,
    #[serde(default)]
    amount_received: Option<i64>,
    currency: String,
    #[serde(default)]
    metadata: HashMap<String, String>,
    #[serde(default)]
    last_payment_error: Option<ApiErrorObject>,
}

/// Stripe's error object (`last_payment_error`, and an error answer's `error`).
#[derive(Deserialize, Default)]
struct ApiErrorObject {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    decline_code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// A Charge as `charge.refunded` carries it.
#[derive(Deserialize)]
struct ChargeObject {
    id: String,
    amount_refunded: i64,
    #[serde(default)]
    payment_intent: Option<serde_json::Value>,
}

/// A Dispute as `charge.dispute.created` carries it.
#[derive(Deserialize)]
struct DisputeObject {
    id: String,
    amount: i64,
    #[serde(default)]
    payment_intent: Option<serde_json::Value>,
}

/// A Refund as `refund.*` and `charge.refund.updated` carry it (and the refund API answers).
#[derive(Deserialize)]
struct RefundObject {
    id: String,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    payment_intent: Option<serde_json::Value>,
    #[serde(default)]
    metadata: HashMap<String, String>,
    #[serde(default)]
    failure_reason: Option<String>,
}

fn malformed(what: impl std::fmt::Display) -> WebhookError {
    WebhookError::Malformed(what.to_string())
}

fn object<T: for<'de> Deserialize<'de>>(
    value: serde_json::Value,
    what: &str,
) -> Result<T, WebhookError> {
    serde_json::from_value(value).map_err(|e| malformed(format!("{what}: {e}")))
}

/// A Stripe id: 1..=255 ASCII graphic characters.
fn stripe_id(s: &str, what: &str) -> Result<String, WebhookError> {
    if s.is_empty() || s.len() > MAX_ID_LEN || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(malformed(format!("{what}: not a Stripe id")));
    }
    Ok(s.to_owned())
}

/// An expandable reference (`"pi_…"` or, expanded, `{"id":"pi_…",…}`); `Ok(None)` when null
/// or absent.
fn expandable_id(
    value: Option<&serde_json::Value>,
    what: &str,
) -> Result<Option<String>, WebhookError> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => stripe_id(s, what).map(Some),
        Some(serde_json::Value::Object(o)) => match o.get("id") {
            Some(serde_json::Value::String(s)) => stripe_id(s, what).map(Some),
            _ => Err(malformed(format!("{what}: expanded object without an id"))),
        },
        Some(_) => Err(malformed(format!("{what}: not an id"))),
    }
}

fn amount(minor: i64, what: &str) -> Result<Amount, WebhookError> {
    Amount::new(minor).map_err(|_| malformed(format!("{what}: not an amount")))
}

/// Stripe's lowercase ISO code as blepay's [`Currency`].
fn currency(code: &str) -> Result<Currency, WebhookError> {
    Currency::parse(&code.to_ascii_uppercase()).map_err(|_| malformed("currency"))
}

/// Provider text made safe to store and show: control characters dropped, whitespace
/// trimmed, at most [`MAX_REASON_CHARS`] characters; `fallback` when nothing is left.
fn bounded_reason(text: &str, fallback: &str) -> String {
    let cleaned: String = text
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_REASON_CHARS)
        .collect();
    let trimmed = cleaned.trim();
    if trimmed.is_empty() {
        fallback.to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// Why a PaymentIntent's last attempt failed: `code` (`card_declined`), with the issuer's
/// `decline_code` when there is one, else the `message`, else `payment_failed`.
fn failure_reason(error: Option<&ApiErrorObject>) -> String {
    let text = match error {
        Some(ApiErrorObject {
            code: Some(code),
            decline_code: Some(decline),
            ..
        }) => format!("{code} ({decline})"),
        Some(ApiErrorObject {
            code: Some(code), ..
        }) => code.clone(),
        Some(ApiErrorObject {
            message: Some(message),
            ..
        }) => message.clone(),
        _ => String::new(),
    };
    bounded_reason(&text, "payment_failed")
}

/// One of our ids in `metadata[key]`: `Ok(None)` when absent, malformed when present but not
/// one of ours.
fn ours<T>(
    metadata: &HashMap<String, String>,
    key: &str,
    parse: impl Fn(&str) -> Result<T, blepay_store::ReasonError>,
) -> Result<Option<T>, WebhookError> {
    metadata
        .get(key)
        .map(|v| parse(v).map_err(|_| malformed(format!("metadata.{key}"))))
        .transpose()
}

/// Parse a **verified** event body into what blepay acts on.
///
/// | event | locator | kind |
/// |---|---|---|
/// | `payment_intent.succeeded` | `metadata.blepay_topup_id`, else the PaymentIntent id | `Succeeded{amount_received, currency, id}` |
/// | `payment_intent.payment_failed` | same | `Failed{last_payment_error code/message}` |
/// | `charge.refunded` | the charge's `payment_intent` | `RefundedTotal{amount_refunded}` |
/// | `charge.dispute.created` | the dispute's `payment_intent` | `Disputed{amount}` |
/// | `refund.created`, `refund.updated`, `refund.failed`, `charge.refund.updated` | the refund's `payment_intent` | `succeeded` → `RefundConfirmed`; `failed`/`canceled` → `RefundFailed{failure_reason}` |
///
/// `Ok(None)` — answered 2xx, nothing applied — for every other event type; for a charge or
/// dispute without a `payment_intent` (not a payment blepay created: every top-up is a
/// PaymentIntent, and its charges and disputes name it); for a refund without
/// `metadata.blepay_refund_id` (made in the Dashboard: its effect arrives as
/// `charge.refunded`'s total) or in a status that is not final. The event key is the event
/// `id`.
///
/// # Errors
/// [`WebhookError::Malformed`] when the body is not a Stripe event or a handled event lacks a
/// field or holds an invalid one (a negative or too large amount, an unknown currency, our
/// metadata not one of our ids).
pub fn parse_event(body: &[u8], now: u64) -> Result<Option<ProviderEvent>, WebhookError> {
    let envelope: EventEnvelope =
        serde_json::from_slice(body).map_err(|e| malformed(format!("event: {e}")))?;
    let key = stripe_id(&envelope.id, "event id")?;
    let event = |topup, kind| {
        Some(ProviderEvent {
            provider: Provider::Stripe,
            key: key.clone(),
            topup,
            kind,
            now,
        })
    };
    let by_pi = |pi: String| TopUpLocator::ProviderRef(Provider::Stripe, pi);
    match envelope.kind.as_str() {
        kind @ ("payment_intent.succeeded" | "payment_intent.payment_failed") => {
            let pi: PaymentIntentObject = object(envelope.data.object, "payment_intent")?;
            let pi_id = stripe_id(&pi.id, "payment_intent.id")?;
            let locator = match ours(&pi.metadata, METADATA_TOPUP_ID, TopUpId::parse)? {
                Some(id) => TopUpLocator::Id(id),
                None => by_pi(pi_id.clone()),
            };
            let kind = if kind == "payment_intent.succeeded" {
                ProviderEventKind::Succeeded {
                    amount: amount(
                        pi.amount_received
                            .ok_or_else(|| malformed("amount_received: missing"))?,
                        "amount_received",
                    )?,
                    currency: currency(&pi.currency)?,
                    transaction_id: pi_id,
                }
            } else {
                ProviderEventKind::Failed {
                    reason: failure_reason(pi.last_payment_error.as_ref()),
                }
            };
            Ok(event(locator, kind))
        }
        "charge.refunded" => {
            let charge: ChargeObject = object(envelope.data.object, "charge")?;
            let total = amount(charge.amount_refunded, "amount_refunded")?;
            let Some(pi) = expandable_id(charge.payment_intent.as_ref(), "charge.payment_intent")?
            else {
                tracing::info!(charge = %charge.id, "charge.refunded without a PaymentIntent: not a blepay top-up");
                return Ok(None);
            };
            Ok(event(by_pi(pi), ProviderEventKind::RefundedTotal { total }))
        }
        "charge.dispute.created" => {
            let dispute: DisputeObject = object(envelope.data.object, "dispute")?;
            let disputed = amount(dispute.amount, "dispute.amount")?;
            let Some(pi) =
                expandable_id(dispute.payment_intent.as_ref(), "dispute.payment_intent")?
            else {
                tracing::warn!(dispute = %dispute.id, "dispute without a PaymentIntent: not a blepay top-up");
                return Ok(None);
            };
            Ok(event(
                by_pi(pi),
                ProviderEventKind::Disputed { amount: disputed },
            ))
        }
        "refund.created" | "refund.updated" | "refund.failed" | "charge.refund.updated" => {
            let refund: RefundObject = object(envelope.data.object, "refund")?;
            let Some(refund_id) = ours(&refund.metadata, METADATA_REFUND_ID, TopUpRefundId::parse)?
            else {
                return Ok(None);
            };
            let pi = expandable_id(refund.payment_intent.as_ref(), "refund.payment_intent")?
                .ok_or_else(|| malformed("refund.payment_intent: missing"))?;
            let status = refund
                .status
                .as_deref()
                .ok_or_else(|| malformed("refund.status: missing"))?;
            let kind = match status {
                "succeeded" => ProviderEventKind::RefundConfirmed { refund: refund_id },
                "failed" | "canceled" => ProviderEventKind::RefundFailed {
                    refund: refund_id,
                    reason: bounded_reason(refund.failure_reason.as_deref().unwrap_or(""), status),
                },
                _ => {
                    tracing::debug!(refund = %refund.id, status, "refund not final yet");
                    return Ok(None);
                }
            };
            Ok(event(by_pi(pi), kind))
        }
        _ => Ok(None),
    }
}

// ---------------------------------------------------------------------------------------------
// Outbound
// ---------------------------------------------------------------------------------------------

/// A created PaymentIntent: its id (the top-up's `provider_ref`) and what the app's Stripe SDK
/// confirms it with.
#[derive(Clone, Debug)]
pub struct PaymentIntent {
    pub id: String,
    pub client_secret: SecretString,
}

#[derive(Deserialize)]
struct CreatedPaymentIntent {
    id: String,
    client_secret: Option<String>,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    error: ApiErrorObject,
}

/// The Stripe API client: PaymentIntents and refunds, over the shared [`Outbound`].
#[derive(Clone, Debug)]
pub struct StripeClient {
    settings: StripeSettings,
    outbound: Outbound,
}

impl StripeClient {
    pub fn new(settings: StripeSettings, outbound: Outbound) -> Self {
        Self { settings, outbound }
    }

    /// The settings it was built with (the webhook route reads `webhook_secrets`).
    pub fn settings(&self) -> &StripeSettings {
        &self.settings
    }

    /// `POST /v1/payment_intents` for `topup`: `amount` (minor units), `currency` (lowercase),
    /// `automatic_payment_methods[enabled]=true`, `metadata[blepay_topup_id]`,
    /// `metadata[blepay_user]`; `Idempotency-Key: topup-{id}`, so the same top-up is the same
    /// PaymentIntent however often it is asked for.
    ///
    /// # Errors
    /// [`ProviderError`]: unreachable after the retries, refused (4xx), or an answer without an
    /// id and `client_secret`.
    pub async fn create_payment_intent(
        &self,
        topup: &ProviderTopUp,
    ) -> Result<PaymentIntent, ProviderError> {
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("amount", &topup.amount.minor().to_string())
            .append_pair("currency", &topup.currency.as_str().to_ascii_lowercase())
            .append_pair("automatic_payment_methods[enabled]", "true")
            .append_pair("metadata[blepay_topup_id]", &topup.id.to_string())
            .append_pair("metadata[blepay_user]", topup.user.as_str())
            .finish();
        let answer = self
            .post("/v1/payment_intents", &format!("topup-{}", topup.id), form)
            .await?;
        let created: CreatedPaymentIntent = serde_json::from_slice(&answer.body)
            .map_err(|e| ProviderError::BadAnswer(format!("payment_intent: {e}")))?;
        let id = stripe_id(&created.id, "payment_intent.id")
            .map_err(|e| ProviderError::BadAnswer(e.to_string()))?;
        let client_secret = created
            .client_secret
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                ProviderError::BadAnswer("payment_intent without client_secret".into())
            })?;
        Ok(PaymentIntent {
            id,
            client_secret: SecretString::new(client_secret),
        })
    }

    /// `POST /v1/refunds` of `refund.amount` of `topup`'s PaymentIntent (`provider_ref`, else
    /// `transaction_id`), with `metadata[blepay_refund_id]` and `metadata[blepay_topup_id]` (so
    /// its notifications name our refund); `Idempotency-Key: refund-{id}`.
    ///
    /// Answers by the refund's `status`: `succeeded` → [`RefundAnswer::Succeeded`];
    /// `pending`, `requires_action` → [`RefundAnswer::Pending`]; `failed`, `canceled` →
    /// [`RefundAnswer::Failed`] with the `failure_reason`.
    ///
    /// # Errors
    /// [`ProviderError`]: unreachable after the retries, refused (4xx: e.g.
    /// `charge_already_refunded`), an answer without a known status, or
    /// [`ProviderError::BadAnswer`] without a request when the top-up names no PaymentIntent.
    pub async fn refund(
        &self,
        topup: &ProviderTopUp,
        refund: &TopUpRefund,
    ) -> Result<RefundAnswer, ProviderError> {
        let pi = topup
            .provider_ref
            .as_deref()
            .or(topup.transaction_id.as_deref())
            .ok_or_else(|| {
                ProviderError::BadAnswer(format!("top-up {} has no PaymentIntent", topup.id))
            })?;
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("payment_intent", pi)
            .append_pair("amount", &refund.amount.minor().to_string())
            .append_pair("metadata[blepay_refund_id]", &refund.id.to_string())
            .append_pair("metadata[blepay_topup_id]", &topup.id.to_string())
            .finish();
        let answer = self
            .post("/v1/refunds", &format!("refund-{}", refund.id), form)
            .await?;
        let answered: RefundObject = serde_json::from_slice(&answer.body)
            .map_err(|e| ProviderError::BadAnswer(format!("refund: {e}")))?;
        match answered.status.as_deref() {
            Some("succeeded") => Ok(RefundAnswer::Succeeded),
            Some("pending" | "requires_action") => Ok(RefundAnswer::Pending),
            Some(status @ ("failed" | "canceled")) => Ok(RefundAnswer::Failed(bounded_reason(
                answered.failure_reason.as_deref().unwrap_or(""),
                status,
            ))),
            other => Err(ProviderError::BadAnswer(format!(
                "refund status {:?}",
                other.map(|s| bounded_reason(s, ""))
            ))),
        }
    }

    /// One form POST, up to [`MAX_ATTEMPTS`] times under the same `Idempotency-Key` while the
    /// outcome is unknown; the 2xx answer, or the error.
    async fn post(
        &self,
        path: &str,
        idempotency_key: &str,
        form: String,
    ) -> Result<Answer, ProviderError> {
        let url = format!("{}{path}", self.settings.api_base.trim_end_matches('/'));
        let body = Bytes::from(form);
        let mut last = ProviderError::Unreachable("no attempt made".into());
        for attempt in 1..=MAX_ATTEMPTS {
            if attempt > 1 {
                tokio::time::sleep(backoff(attempt - 1)).await;
            }
            let request = Request::builder()
                .method(Method::POST)
                .uri(&url)
                .header(
                    header::AUTHORIZATION,
                    format!("Bearer {}", self.settings.secret_key.expose()),
                )
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .header(header::ACCEPT, "application/json")
                .header("Idempotency-Key", idempotency_key)
                .header("Stripe-Version", API_VERSION)
                .body(Full::new(body.clone()))
                // The error names neither the key nor the header's value.
                .map_err(|e| ProviderError::BadAnswer(format!("request not built: {e}")))?;
            match self.outbound.send(request).await {
                Ok(answer) if answer.status.is_success() => return Ok(answer),
                Ok(answer) => {
                    let status = answer.status.as_u16();
                    // Indeterminate: the request may still take effect (a 500 is saved under
                    // the key; a 409 is a concurrent request with the same key in progress).
                    let indeterminate = answer.status == StatusCode::CONFLICT
                        || answer.status == StatusCode::TOO_MANY_REQUESTS
                        || answer.status.is_server_error();
                    let error = if indeterminate {
                        ProviderError::Unreachable(format!(
                            "HTTP {status}{}",
                            error_summary(&answer.body)
                        ))
                    } else if answer.status.is_client_error() {
                        refusal(&answer)
                    } else {
                        ProviderError::BadAnswer(format!("unexpected HTTP {status}"))
                    };
                    // Stripe's own word on retrying wins over the status.
                    if !should_retry(&answer.headers).unwrap_or(indeterminate) {
                        return Err(error);
                    }
                    tracing::warn!(path, attempt, status, "Stripe: retrying");
                    last = error;
                }
                Err(OutboundError::Unreachable(m)) => {
                    tracing::warn!(path, attempt, error = %m, "Stripe: retrying");
                    last = ProviderError::Unreachable(m);
                }
                // Nothing was sent: a configuration error, and nothing happened at Stripe.
                Err(OutboundError::Insecure(m)) => return Err(ProviderError::Unreachable(m)),
                Err(OutboundError::BadAnswer(m)) => return Err(ProviderError::BadAnswer(m)),
            }
        }
        Err(last)
    }
}

/// The `Stripe-Should-Retry` header: `Some(true)`/`Some(false)` when Stripe knows whether a
/// retry can have an effect, `None` when it does not say.
fn should_retry(headers: &http::HeaderMap) -> Option<bool> {
    match headers.get("stripe-should-retry")?.to_str().ok()? {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// `: {type}: {message}` of an error answer, or nothing.
fn error_summary(body: &[u8]) -> String {
    match serde_json::from_slice::<ErrorAnswer>(body) {
        Ok(ErrorAnswer { error }) => format!(
            ": {}: {}",
            bounded_reason(error.kind.as_deref().unwrap_or(""), "error"),
            bounded_reason(error.message.as_deref().unwrap_or(""), "-")
        ),
        Err(_) => String::new(),
    }
}

/// A 4xx answer as [`ProviderError::Refused`] (`code` is the error's `code`, else its `type`),
/// or [`ProviderError::BadAnswer`] when it is not Stripe's error JSON.
fn refusal(answer: &Answer) -> ProviderError {
    match serde_json::from_slice::<ErrorAnswer>(&answer.body) {
        Ok(ErrorAnswer { error }) => {
            let code = error
                .code
                .as_deref()
                .or(error.kind.as_deref())
                .unwrap_or("");
            ProviderError::Refused {
                status: answer.status.as_u16(),
                code: bounded_reason(code, "unknown"),
                message: bounded_reason(error.message.as_deref().unwrap_or(""), "-"),
            }
        }
        Err(e) => ProviderError::BadAnswer(format!(
            "HTTP {} without Stripe's error object: {e}",
            answer.status.as_u16()
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECRET: &str = "whsec_test_5c4f1b2a9e8d7c6b5a4f3e2d1c0b9a8f";
    const OLD_SECRET: &str = "whsec_test_0ld0ld0ld0ld0ld0ld0ld0ld0ld0ld0l";
    const NOW: u64 = 1_765_098_000;
    const TOPUP: &str = "0123456789abcdef0123456789abcdef";
    const REFUND: &str = "fedcba9876543210fedcba9876543210";
    const PI: &str = "pi_3QxPaS2eZvKYlo2C1nDq6Z5v";

    fn secret(s: &str) -> SecretString {
        SecretString::new(s.to_owned())
    }

    fn fixture(name: &str) -> &'static str {
        match name {
            "pi_succeeded" => {
                include_str!("../../tests/fixtures/stripe/evt_payment_intent_succeeded.json")
            }
            "pi_failed" => {
                include_str!("../../tests/fixtures/stripe/evt_payment_intent_payment_failed.json")
            }
            "charge_refunded" => {
                include_str!("../../tests/fixtures/stripe/evt_charge_refunded.json")
            }
            "dispute_created" => {
                include_str!("../../tests/fixtures/stripe/evt_charge_dispute_created.json")
            }
            "refund_updated" => {
                include_str!("../../tests/fixtures/stripe/evt_refund_updated.json")
            }
            "refund_failed" => include_str!("../../tests/fixtures/stripe/evt_refund_failed.json"),
            "customer_created" => {
                include_str!("../../tests/fixtures/stripe/evt_customer_created.json")
            }
            other => panic!("no fixture {other}"),
        }
    }

    /// A fixture with `edit` applied to its JSON.
    fn edited(name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
        let mut v: serde_json::Value = serde_json::from_str(fixture(name)).unwrap();
        edit(&mut v);
        serde_json::to_vec(&v).unwrap()
    }

    fn parse(body: &[u8]) -> Result<Option<ProviderEvent>, WebhookError> {
        parse_event(body, NOW)
    }

    fn by_pi() -> TopUpLocator {
        TopUpLocator::ProviderRef(Provider::Stripe, PI.into())
    }

    // --- signatures ---------------------------------------------------------------------

    #[test]
    fn a_signature_made_with_the_endpoint_secret_verifies() {
        // Arrange
        let body = fixture("pi_succeeded").as_bytes();
        let header = sign(&secret(SECRET), NOW, body);
        // Act / Assert
        assert_eq!(
            verify_signature(&[secret(SECRET)], Some(&header), body, NOW + 10),
            Ok(())
        );
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body_in_hex() {
        // An independent computation: HMAC(key, m) = H((k^opad) || H((k^ipad) || m)).
        use sha2::Digest;
        let body = br#"{"id":"evt_1"}"#;
        let mut key = [0u8; 64];
        key[..SECRET.len()].copy_from_slice(SECRET.as_bytes());
        let pad = |b: u8| key.iter().map(|k| k ^ b).collect::<Vec<_>>();
        let inner = sha2::Sha256::new()
            .chain_update(pad(0x36))
            .chain_update(format!("{NOW}.").as_bytes())
            .chain_update(body)
            .finalize();
        let outer = sha2::Sha256::new()
            .chain_update(pad(0x5c))
            .chain_update(inner)
            .finalize();
        assert_eq!(
            sign(&secret(SECRET), NOW, body),
            format!("t={NOW},v1={}", hex::encode(outer))
        );
    }

    #[test]
    fn any_v1_matching_any_secret_passes_during_rotation() {
        // Arrange: Stripe signs with the new and the old secret; v0 and unknown keys present.
        let body = fixture("charge_refunded").as_bytes();
        let sig =
            |s: &str| hex::encode(expected_signature(&secret(s), &NOW.to_string(), body).unwrap());
        let header = format!(
            "t={NOW},v1={},v1={},v0={},x-future=1",
            "ab".repeat(32),
            sig(SECRET),
            "cd".repeat(32)
        );
        // Act / Assert: the second configured secret is the one that matches.
        assert_eq!(
            verify_signature(
                &[secret(OLD_SECRET), secret(SECRET)],
                Some(&header),
                body,
                NOW
            ),
            Ok(())
        );
        let only_old = sign(&secret(OLD_SECRET), NOW, body);
        assert_eq!(
            verify_signature(
                &[secret(OLD_SECRET), secret(SECRET)],
                Some(&only_old),
                body,
                NOW
            ),
            Ok(())
        );
    }

    #[test]
    fn a_signature_made_with_another_secret_is_refused() {
        let body = fixture("pi_succeeded").as_bytes();
        let header = sign(&secret("whsec_someone_else"), NOW, body);
        assert_eq!(
            verify_signature(&[secret(SECRET)], Some(&header), body, NOW),
            Err(WebhookError::BadSignature)
        );
    }

    #[test]
    fn a_tampered_body_or_timestamp_is_refused() {
        let body = fixture("pi_succeeded");
        let header = sign(&secret(SECRET), NOW, body.as_bytes());
        let tampered = body.replace("\"amount_received\": 2000", "\"amount_received\": 200000");
        assert_ne!(tampered, body);
        assert_eq!(
            verify_signature(&[secret(SECRET)], Some(&header), tampered.as_bytes(), NOW),
            Err(WebhookError::BadSignature)
        );
        let moved = header.replace(&format!("t={NOW}"), &format!("t={}", NOW + 1));
        assert_eq!(
            verify_signature(&[secret(SECRET)], Some(&moved), body.as_bytes(), NOW),
            Err(WebhookError::BadSignature)
        );
    }

    #[test]
    fn a_missing_or_garbage_header_is_a_missing_signature() {
        let body = b"{}";
        let good = sign(&secret(SECRET), NOW, body);
        let v1 = good.split_once(",v1=").unwrap().1;
        for header in [
            "",
            "garbage",
            "t=,v1=00",
            &format!("v1={v1}"),
            &format!("t={NOW}"),
            &format!("t={NOW},v1=nothex"),
            &format!("t=-5,v1={v1}"),
            &format!("t=+{NOW},v1={v1}"),
            &format!("t={NOW},t={NOW},v1={v1}"),
            &format!("t={NOW},v0={v1}"),
            &format!("t=99999999999999999999999,v1={v1}"),
        ] {
            assert_eq!(
                verify_signature(&[secret(SECRET)], Some(header), body, NOW),
                Err(WebhookError::MissingSignature),
                "{header}"
            );
        }
        assert_eq!(
            verify_signature(&[secret(SECRET)], None, body, NOW),
            Err(WebhookError::MissingSignature)
        );
    }

    #[test]
    fn no_configured_secret_is_not_configured() {
        let body = b"{}";
        let header = sign(&secret(SECRET), NOW, body);
        assert_eq!(
            verify_signature(&[], Some(&header), body, NOW),
            Err(WebhookError::NotConfigured)
        );
    }

    #[test]
    fn a_timestamp_beyond_the_tolerance_either_way_is_stale() {
        let body = fixture("pi_succeeded").as_bytes();
        let secrets = [secret(SECRET)];
        let at = |t: u64| sign(&secret(SECRET), t, body);
        let tol = SIGNATURE_TOLERANCE_SECS;
        // At the edges: accepted.
        assert_eq!(
            verify_signature(&secrets, Some(&at(NOW - tol)), body, NOW),
            Ok(())
        );
        assert_eq!(
            verify_signature(&secrets, Some(&at(NOW + tol)), body, NOW),
            Ok(())
        );
        // Beyond them: stale, in the past and in the future.
        assert_eq!(
            verify_signature(&secrets, Some(&at(NOW - tol - 1)), body, NOW),
            Err(WebhookError::StaleTimestamp)
        );
        assert_eq!(
            verify_signature(&secrets, Some(&at(NOW + tol + 1)), body, NOW),
            Err(WebhookError::StaleTimestamp)
        );
        // A forged signature on a stale timestamp is a bad signature (checked first).
        let forged = sign(&secret("whsec_forger"), NOW - 10_000, body);
        assert_eq!(
            verify_signature(&secrets, Some(&forged), body, NOW),
            Err(WebhookError::BadSignature)
        );
    }

    #[test]
    fn settings_and_clients_never_show_their_secrets() {
        let settings = StripeSettings {
            secret_key: secret("sk_test_do_not_print"),
            webhook_secrets: vec![secret(SECRET)],
            api_base: DEFAULT_API_BASE.into(),
        };
        let client = StripeClient::new(
            settings.clone(),
            Outbound::new(std::time::Duration::from_secs(1)).unwrap(),
        );
        let intent = PaymentIntent {
            id: PI.into(),
            client_secret: secret("pi_x_secret_do_not_print"),
        };
        for shown in [
            format!("{settings:?}"),
            format!("{client:?}"),
            format!("{intent:?}"),
        ] {
            assert!(
                !shown.contains("do_not_print") && !shown.contains(SECRET),
                "{shown}"
            );
        }
    }

    // --- events -------------------------------------------------------------------------

    #[test]
    fn payment_intent_succeeded_credits_our_topup_by_its_metadata() {
        let event = parse(fixture("pi_succeeded").as_bytes()).unwrap().unwrap();
        assert_eq!(
            event,
            ProviderEvent {
                provider: Provider::Stripe,
                key: "evt_3QxPaS2eZvKYlo2C1u6RDrgm".into(),
                topup: TopUpLocator::Id(TopUpId::parse(TOPUP).unwrap()),
                kind: ProviderEventKind::Succeeded {
                    amount: Amount::new(2000).unwrap(),
                    currency: Currency::parse("EUR").unwrap(),
                    transaction_id: PI.into(),
                },
                now: NOW,
            }
        );
    }

    #[test]
    fn payment_intent_succeeded_without_our_metadata_is_located_by_its_id() {
        let body = edited("pi_succeeded", |v| {
            v["data"]["object"]["metadata"] = serde_json::json!({});
        });
        assert_eq!(parse(&body).unwrap().unwrap().topup, by_pi());
    }

    #[test]
    fn payment_intent_succeeded_with_bad_fields_is_malformed() {
        let body = edited("pi_succeeded", |v| {
            v["data"]["object"]
                .as_object_mut()
                .unwrap()
                .remove("amount_received");
        });
        assert!(matches!(parse(&body), Err(WebhookError::Malformed(_))));
        let bad: [(&str, serde_json::Value); 7] = [
            ("amount_received", serde_json::json!(-1)),
            ("amount_received", serde_json::json!(12.5)),
            (
                "amount_received",
                serde_json::json!(Amount::MAX.minor() + 1),
            ),
            ("currency", serde_json::json!("euro")),
            ("currency", serde_json::json!(null)),
            (
                "metadata",
                serde_json::json!({"blepay_topup_id": "not-hex"}),
            ),
            ("id", serde_json::json!("")),
        ];
        for (field, value) in bad {
            let body = edited("pi_succeeded", |v| {
                v["data"]["object"][field] = value.clone();
            });
            assert!(
                matches!(parse(&body), Err(WebhookError::Malformed(_))),
                "{field} = {value}"
            );
        }
    }

    #[test]
    fn payment_failed_carries_the_decline_as_a_bounded_reason() {
        let event = parse(fixture("pi_failed").as_bytes()).unwrap().unwrap();
        assert_eq!(event.key, "evt_3QxPbT2eZvKYlo2C0h7sF2kd");
        assert_eq!(
            event.topup,
            TopUpLocator::Id(TopUpId::parse(TOPUP).unwrap())
        );
        assert_eq!(
            event.kind,
            ProviderEventKind::Failed {
                reason: "card_declined (insufficient_funds)".into()
            }
        );
        // Only a message: the message, without control characters, at most 200 characters.
        let body = edited("pi_failed", |v| {
            v["data"]["object"]["last_payment_error"] = serde_json::json!({"type": "card_error", "message": format!("bad\n\u{7}{}", "x".repeat(500))});
        });
        let ProviderEventKind::Failed { reason } = parse(&body).unwrap().unwrap().kind else {
            panic!("not a failure");
        };
        assert!(reason.starts_with("badxxx"));
        assert_eq!(reason.chars().count(), MAX_REASON_CHARS);
        // No error at all: `payment_failed`.
        let body = edited("pi_failed", |v| {
            v["data"]["object"]["last_payment_error"] = serde_json::Value::Null;
        });
        assert_eq!(
            parse(&body).unwrap().unwrap().kind,
            ProviderEventKind::Failed {
                reason: "payment_failed".into()
            }
        );
    }

    #[test]
    fn charge_refunded_reports_the_refunded_total_of_its_payment_intent() {
        let event = parse(fixture("charge_refunded").as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(event.key, "evt_3QxPaS2eZvKYlo2C1f2mKq7r");
        assert_eq!(event.topup, by_pi());
        assert_eq!(
            event.kind,
            ProviderEventKind::RefundedTotal {
                total: Amount::new(500).unwrap()
            }
        );
        // Expanded `payment_intent`: the same.
        let body = edited("charge_refunded", |v| {
            v["data"]["object"]["payment_intent"] =
                serde_json::json!({"id": PI, "object": "payment_intent"});
        });
        assert_eq!(parse(&body).unwrap().unwrap().topup, by_pi());
        // A charge without a PaymentIntent is not ours.
        let body = edited("charge_refunded", |v| {
            v["data"]["object"]["payment_intent"] = serde_json::Value::Null;
        });
        assert_eq!(parse(&body), Ok(None));
        // A negative total is malformed.
        let body = edited("charge_refunded", |v| {
            v["data"]["object"]["amount_refunded"] = serde_json::json!(-500);
        });
        assert!(matches!(parse(&body), Err(WebhookError::Malformed(_))));
    }

    #[test]
    fn a_dispute_reports_its_amount_against_its_payment_intent() {
        let event = parse(fixture("dispute_created").as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(event.key, "evt_1QyDsp2eZvKYlo2CxN4fH7aL");
        assert_eq!(event.topup, by_pi());
        assert_eq!(
            event.kind,
            ProviderEventKind::Disputed {
                amount: Amount::new(2000).unwrap()
            }
        );
        let body = edited("dispute_created", |v| {
            v["data"]["object"]["payment_intent"] = serde_json::Value::Null;
        });
        assert_eq!(parse(&body), Ok(None));
        let body = edited("dispute_created", |v| {
            v["data"]["object"]["amount"] = serde_json::json!("2000");
        });
        assert!(matches!(parse(&body), Err(WebhookError::Malformed(_))));
    }

    #[test]
    fn our_refund_succeeding_confirms_it_under_every_refund_event_type() {
        let refund = TopUpRefundId::parse(REFUND).unwrap();
        for kind in [
            "refund.created",
            "refund.updated",
            "refund.failed",
            "charge.refund.updated",
        ] {
            let body = edited("refund_updated", |v| v["type"] = serde_json::json!(kind));
            let event = parse(&body).unwrap().unwrap();
            assert_eq!(event.topup, by_pi(), "{kind}");
            assert_eq!(event.key, "evt_3QxPaS2eZvKYlo2C1Vw5Rz0t");
            assert_eq!(event.kind, ProviderEventKind::RefundConfirmed { refund });
        }
    }

    #[test]
    fn our_refund_failing_or_canceled_gives_it_back_with_the_reason() {
        let refund = TopUpRefundId::parse(REFUND).unwrap();
        let event = parse(fixture("refund_failed").as_bytes()).unwrap().unwrap();
        assert_eq!(event.topup, by_pi());
        assert_eq!(
            event.kind,
            ProviderEventKind::RefundFailed {
                refund,
                reason: "expired_or_canceled_card".into()
            }
        );
        let body = edited("refund_updated", |v| {
            v["data"]["object"]["status"] = serde_json::json!("canceled");
        });
        assert_eq!(
            parse(&body).unwrap().unwrap().kind,
            ProviderEventKind::RefundFailed {
                refund,
                reason: "canceled".into()
            }
        );
    }

    #[test]
    fn refunds_not_final_or_not_ours_are_ignored_and_ours_without_a_payment_intent_malformed() {
        for status in ["pending", "requires_action"] {
            let body = edited("refund_updated", |v| {
                v["data"]["object"]["status"] = serde_json::json!(status);
            });
            assert_eq!(parse(&body), Ok(None), "{status}");
        }
        let body = edited("refund_updated", |v| {
            v["data"]["object"]["metadata"] = serde_json::json!({});
        });
        assert_eq!(parse(&body), Ok(None));
        let body = edited("refund_updated", |v| {
            v["data"]["object"]["payment_intent"] = serde_json::Value::Null;
        });
        assert!(matches!(parse(&body), Err(WebhookError::Malformed(_))));
        let body = edited("refund_updated", |v| {
            v["data"]["object"]["metadata"]["blepay_refund_id"] = serde_json::json!("re_x");
        });
        assert!(matches!(parse(&body), Err(WebhookError::Malformed(_))));
    }

    #[test]
    fn other_event_types_are_ignored_and_non_events_malformed() {
        assert_eq!(parse(fixture("customer_created").as_bytes()), Ok(None));
        let body = edited("pi_succeeded", |v| {
            v["type"] = serde_json::json!("payment_intent.created");
        });
        assert_eq!(parse(&body), Ok(None));
        for body in [
            &b""[..],
            b"not json",
            b"[]",
            br#"{"type":"payment_intent.succeeded"}"#,
            br#"{"id":"evt_1","type":"payment_intent.succeeded","data":{"object":{}}}"#,
            br#"{"id":"evt_1","type":"charge.refunded","data":{"object":{"id":"ch_1"}}}"#,
            br#"{"id":"","type":"customer.created","data":{"object":{}}}"#,
        ] {
            assert!(
                matches!(parse(body), Err(WebhookError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    proptest! {
        #[test]
        fn random_headers_and_bodies_never_panic(
            header in proptest::option::of(".{0,200}"),
            body in proptest::collection::vec(any::<u8>(), 0..300),
            now in any::<u64>(),
        ) {
            let r = verify_signature(&[secret(SECRET)], header.as_deref(), &body, now);
            prop_assert!(r != Ok(()) || header.is_some());
        }

        #[test]
        fn header_shaped_input_never_panics(
            t in "[0-9+-]{0,25}",
            sigs in proptest::collection::vec("(v1|v0|t|x)=[0-9a-f]{0,70}", 0..5),
            now in any::<u64>(),
        ) {
            let header = format!("t={t},{}", sigs.join(","));
            let _ = verify_signature(&[secret(SECRET), secret(OLD_SECRET)], Some(&header), b"{}", now);
        }

        #[test]
        fn random_bytes_never_panic_the_event_parser(
            body in proptest::collection::vec(any::<u8>(), 0..500),
        ) {
            let _ = parse(&body);
        }

        #[test]
        fn mutated_fixtures_never_panic_the_event_parser(
            which in 0usize..7,
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let names = ["pi_succeeded", "pi_failed", "charge_refunded", "dispute_created",
                "refund_updated", "refund_failed", "customer_created"];
            let mut body = fixture(names[which]).as_bytes().to_vec();
            let i = at.index(body.len());
            body[i] = byte;
            let _ = parse(&body);
        }
    }
}
