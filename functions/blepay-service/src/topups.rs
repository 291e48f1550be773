//! Users fund their own wallets through a payment provider (issue 12, docs/topups.md): starting
//! a top-up (the provider's payment object), the providers' notifications (the only thing that
//! credits), and the operators' list and refund. The handlers (`impl App`) and their HTTP routes;
//! the gRPC methods are in `grpc.rs`; the rules are the store's
//! (`blepay_store::decide::{decide_start_topup, decide_provider_event, decide_topup_refund}`).
//!
//! The webhook routes carry no bearer token: the provider's signature is the authentication,
//! checked before anything is read from the store; a notification that does not verify changes
//! nothing and is answered as its provider expects a refusal (so it retries a real one).

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use blepay_core::{Amount, IdempotencyKey, Provider, UserId};
use blepay_proto::pb::v1 as pb;
use blepay_store::{
    NewProviderTopUp, ProviderEvent, ProviderEventKind, ProviderEventOutcome, ProviderTopUp,
    StartTopUpOutcome, TopUpFilter, TopUpId, TopUpLocator, TopUpRefund, TopUpRefundCommand,
    TopUpRefundId, TopUpRefundOutcome, TopUpStatus,
};

use crate::app::{App, key_reused, secs};
use crate::error::{ApiError, ErrorCode};
use crate::http::{Format, OpsCaller, PhoneUser, Reply, Wire};
use crate::operator::{Action, ActionRecord, Operator};
use crate::page::{encode_cursor, page_request};
use crate::providers::{ProviderError, RefundAnswer, WebhookError, stripe, wechatpay};

/// How long after a refund's request a retry asks the provider again: less than the 24 hours
/// Stripe keeps an idempotency key.
pub const REFUND_RETRY_WINDOW_SECS: u64 = 23 * 60 * 60;

/// The description a WeChat Pay order shows the payer (at most 127 bytes).
pub const WECHATPAY_DESCRIPTION: &str = "blepay wallet top-up";

fn topup_id(s: &str) -> Result<TopUpId, ApiError> {
    TopUpId::parse(s).map_err(|_| ApiError::invalid("topUpId: must be 32 hex characters"))
}

fn topup_not_found() -> ApiError {
    ApiError::new(ErrorCode::TopUpNotFound, "no such top-up")
}

fn unavailable(p: &str) -> ApiError {
    ApiError::new(
        ErrorCode::ProviderUnavailable,
        format!("the payment provider {p:?} is not offered by this deployment"),
    )
}

fn provider_error(e: &ProviderError) -> ApiError {
    tracing::warn!(error = %e, "payment provider call failed");
    ApiError::new(
        ErrorCode::ProviderError,
        match e {
            ProviderError::Refused { code, .. } => {
                format!("the payment provider refused the request ({code})")
            }
            ProviderError::Unreachable(_) | ProviderError::BadAnswer(_) => {
                "the payment provider could not be reached; retry with the same idempotency key"
                    .to_owned()
            }
        },
    )
}

const fn status_pb(s: TopUpStatus) -> pb::TopUpStatus {
    match s {
        TopUpStatus::Pending => pb::TopUpStatus::Pending,
        TopUpStatus::Succeeded => pb::TopUpStatus::Succeeded,
        TopUpStatus::Failed => pb::TopUpStatus::Failed,
        TopUpStatus::Refunded => pb::TopUpStatus::Refunded,
    }
}

/// A top-up as its user sees it (no operator-only fields, no checkout).
pub fn topup_pb(t: &ProviderTopUp) -> pb::TopUp {
    pb::TopUp {
        top_up_id: t.id.to_string(),
        user_id: t.user.to_string(),
        provider: t.provider.as_str().to_owned(),
        amount: t.amount.minor(),
        currency: t.currency.to_string(),
        status: status_pb(t.status) as i32,
        created_at: secs(t.created_at),
        updated_at: secs(t.updated_at),
        credited: t.credited.minor(),
        reversed: t.debited.minor(),
        unrecovered: t.unrecovered().minor(),
        failure: t.failure.clone().unwrap_or_default(),
        ..pb::TopUp::default()
    }
}

fn refund_pb(r: &TopUpRefund) -> pb::TopUpRefund {
    pb::TopUpRefund {
        refund_id: r.id.to_string(),
        amount: r.amount.minor(),
        status: r.status.as_str().to_owned(),
        reason: r.reason.as_str().to_owned(),
        actor: r.actor.clone(),
        created_at: secs(r.created_at),
        updated_at: secs(r.updated_at),
        failure: r.failure.clone().unwrap_or_default(),
    }
}

/// A top-up as an operator sees it: everything its notifications established.
pub fn ops_topup_pb(t: &ProviderTopUp, refunds: &[TopUpRefund]) -> pb::TopUp {
    pb::TopUp {
        mismatch: t.mismatch.clone().unwrap_or_default(),
        transaction_id: t.transaction_id.clone().unwrap_or_default(),
        provider_refunded: t.provider_refunded.minor(),
        disputed: t.disputed.minor(),
        refunds: refunds.iter().map(refund_pb).collect(),
        ..topup_pb(t)
    }
}

impl App {
    fn provider_of(&self, name: &str) -> Result<Provider, ApiError> {
        let p = Provider::parse(name)
            .ok_or_else(|| ApiError::invalid("provider: one of \"stripe\", \"wechatpay\""))?;
        if self.config().providers.offers(p) {
            Ok(p)
        } else {
            Err(unavailable(name))
        }
    }

    /// Start a top-up: a PENDING top-up and the provider's payment object, answered with what
    /// the app's provider SDK needs. The same key answers the same top-up (and, if the provider
    /// could not be reached the first time, asks it again under the same idempotency key).
    ///
    /// # Errors
    /// INVALID_ARGUMENT, PROVIDER_UNAVAILABLE, TOPUP_AMOUNT_OUT_OF_RANGE, WALLET_LIMIT,
    /// IDEMPOTENCY_KEY_REUSED, PROVIDER_ERROR (nothing charged; retry with the same key),
    /// RETRY_LATER.
    pub async fn start_topup(
        &self,
        user: &UserId,
        req: pb::StartTopUpRequest,
    ) -> Result<pb::TopUp, ApiError> {
        let provider = self.provider_of(&req.provider)?;
        let amount =
            Amount::positive(req.amount).map_err(|e| ApiError::invalid(format!("amount: {e}")))?;
        let key = IdempotencyKey::parse(&req.idempotency_key)
            .map_err(|e| ApiError::invalid(format!("idempotencyKey: {e}")))?;
        let openid = match req.wechat_open_id.as_str() {
            "" => None,
            o if provider == Provider::WechatPay
                && o.len() <= 128
                && o.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') =>
            {
                Some(o.to_owned())
            }
            _ => {
                return Err(ApiError::invalid(
                    "wechatOpenId: a WeChat Pay openid (1..=128 of [A-Za-z0-9_-]), only with \
                     provider \"wechatpay\"",
                ));
            }
        };
        let limits = self.config().providers.limits;
        if amount < limits.min || amount > limits.max {
            return Err(ApiError::new(
                ErrorCode::TopUpAmountOutOfRange,
                format!(
                    "a top-up must be {} to {} minor units",
                    limits.min.minor(),
                    limits.max.minor()
                ),
            ));
        }
        let now = self.now();
        let wallet = self.store().wallet(user, now).await?;
        let after = wallet
            .available
            .checked_add(wallet.held)
            .and_then(|b| b.checked_add(amount))
            .ok()
            .filter(|b| *b <= limits.wallet_max);
        if after.is_none() {
            return Err(ApiError::new(
                ErrorCode::WalletLimit,
                format!(
                    "the wallet may hold at most {} minor units",
                    limits.wallet_max.minor()
                ),
            ));
        }
        let cmd = NewProviderTopUp {
            id: TopUpId::from_bytes(rand::random()),
            user: user.clone(),
            provider,
            amount,
            currency: self.config().currency,
            key,
            now,
        };
        let topup = match self.store().start_topup(&cmd).await? {
            StartTopUpOutcome::Created(t) => {
                tracing::info!(topup = %t.id, provider = provider.as_str(), amount = %amount, "top-up started");
                t
            }
            StartTopUpOutcome::Existing(t) => t,
            StartTopUpOutcome::KeyReused => return Err(key_reused()),
        };
        self.checkout(topup, openid.as_deref(), now).await
    }

    /// The provider's payment object for `topup` (created now if it has none yet) and the
    /// answer carrying what the app needs.
    async fn checkout(
        &self,
        topup: ProviderTopUp,
        openid: Option<&str>,
        now: u64,
    ) -> Result<pb::TopUp, ApiError> {
        let providers = &self.config().providers;
        let mut answer = topup_pb(&topup);
        match topup.provider {
            Provider::Stripe => {
                let stripe = providers
                    .stripe
                    .as_ref()
                    .ok_or_else(|| unavailable("stripe"))?;
                let (id, secret) =
                    if let (Some(id), Some(secret)) = (&topup.provider_ref, &topup.client_secret) {
                        (id.clone(), secret.clone())
                    } else {
                        let pi = stripe
                            .client
                            .create_payment_intent(&topup)
                            .await
                            .map_err(|e| provider_error(&e))?;
                        let secret = pi.client_secret.expose().to_owned();
                        self.store()
                            .attach_topup_ref(topup.id, &pi.id, Some(&secret), now)
                            .await?;
                        (pi.id, secret)
                    };
                answer.stripe = Some(pb::StripeCheckout {
                    payment_intent_id: id,
                    client_secret: secret,
                });
            }
            Provider::WechatPay => {
                let wechat = providers
                    .wechatpay
                    .as_ref()
                    .ok_or_else(|| unavailable("wechatpay"))?;
                let (prepay_id, params) = if let Some(prepay_id) = &topup.provider_ref {
                    (
                        prepay_id.clone(),
                        wechat
                            .client_params(prepay_id, openid.is_some(), now)
                            .map_err(|e| provider_error(&e))?,
                    )
                } else {
                    let order = wechat
                        .create_order(&topup, WECHATPAY_DESCRIPTION, openid)
                        .await
                        .map_err(|e| provider_error(&e))?;
                    self.store()
                        .attach_topup_ref(topup.id, &order.prepay_id, None, now)
                        .await?;
                    (order.prepay_id, order.client)
                };
                answer.wechatpay = Some(pb::WechatPayCheckout {
                    prepay_id,
                    trade_type: if openid.is_some() { "JSAPI" } else { "APP" }.to_owned(),
                    params: params
                        .as_object()
                        .map(|o| {
                            o.iter()
                                .map(|(k, v)| {
                                    (
                                        k.clone(),
                                        v.as_str().map_or_else(|| v.to_string(), str::to_owned),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                });
            }
        }
        Ok(answer)
    }

    /// One of the caller's own top-ups.
    ///
    /// # Errors
    /// INVALID_ARGUMENT, TOPUP_NOT_FOUND (also another user's).
    pub async fn get_topup(
        &self,
        user: &UserId,
        req: pb::GetTopUpRequest,
    ) -> Result<pb::TopUp, ApiError> {
        let id = topup_id(&req.top_up_id)?;
        match self.store().topup(id).await? {
            Some(t) if t.user == *user => Ok(topup_pb(&t)),
            _ => Err(topup_not_found()),
        }
    }

    /// Apply a verified notification: every outcome but a storage failure is an
    /// acknowledgement (a retry would change nothing).
    async fn apply_event(&self, ev: &ProviderEvent) -> Result<(), ApiError> {
        let outcome = self.store().apply_provider_event(ev).await?;
        self.metrics().provider_notification(
            ev.provider.as_str(),
            match &outcome {
                ProviderEventOutcome::Applied { .. } => "applied",
                ProviderEventOutcome::Duplicate => "duplicate",
                ProviderEventOutcome::UnknownTopUp => "unknown_topup",
                ProviderEventOutcome::Mismatch(_) => "mismatch",
                ProviderEventOutcome::Ignored(_) => "ignored",
            },
        );
        match &outcome {
            ProviderEventOutcome::Applied { topup, .. } => {
                tracing::info!(provider = ev.provider.as_str(), event = %ev.key, topup = %topup.id, status = topup.status.as_str(), "provider notification applied");
            }
            ProviderEventOutcome::Duplicate => {
                tracing::debug!(provider = ev.provider.as_str(), event = %ev.key, "provider notification already applied");
            }
            ProviderEventOutcome::UnknownTopUp => {
                tracing::warn!(provider = ev.provider.as_str(), event = %ev.key, "provider notification for an unknown top-up: nothing changed");
            }
            ProviderEventOutcome::Mismatch(t) => {
                tracing::warn!(provider = ev.provider.as_str(), event = %ev.key, topup = %t.id, mismatch = t.mismatch.as_deref().unwrap_or(""), "provider notification does not match its top-up: nothing credited");
            }
            ProviderEventOutcome::Ignored(t) => {
                tracing::debug!(provider = ev.provider.as_str(), event = %ev.key, topup = %t.id, "provider notification changes nothing");
            }
        }
        Ok(())
    }

    /// `POST /v1/webhooks/stripe`: verify the `Stripe-Signature`, then apply the event.
    ///
    /// # Errors
    /// PROVIDER_UNAVAILABLE (not configured), UNAUTHENTICATED (a signature that does not
    /// verify, a stale timestamp: Stripe retries), INVALID_ARGUMENT (a verified but malformed
    /// event), RETRY_LATER.
    pub async fn stripe_webhook(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), ApiError> {
        let stripe = self
            .config()
            .providers
            .stripe
            .as_ref()
            .ok_or_else(|| unavailable("stripe"))?;
        let now = self.now();
        let sig = headers
            .get("stripe-signature")
            .and_then(|v| v.to_str().ok());
        stripe::verify_signature(&stripe.webhook_secrets, sig, body, now)
            .map_err(|e| webhook_refusal(self, Provider::Stripe, &e))?;
        match stripe::parse_event(body, now)
            .map_err(|e| webhook_refusal(self, Provider::Stripe, &e))?
        {
            Some(ev) => self.apply_event(&ev).await,
            None => Ok(()),
        }
    }

    /// `POST /v1/webhooks/wechatpay`: verify the `Wechatpay-*` signature, decrypt the
    /// resource, then apply it. The answer is WeChat Pay's: 200 with no body when received,
    /// else a 4xx/5xx with `{"code":"FAIL","message":…}` (it retries).
    pub async fn wechatpay_webhook(&self, headers: &HeaderMap, body: &[u8]) -> Response {
        let Some(wechat) = self.config().providers.wechatpay.as_ref() else {
            return unavailable("wechatpay").into_response();
        };
        let now = self.now();
        let answer = match wechat.verify_notification(headers, body, now) {
            Err(e) => {
                let refusal = webhook_refusal(self, Provider::WechatPay, &e);
                wechatpay::nack(refusal.code.http_status(), &refusal.message)
            }
            Ok(None) => wechatpay::ack(),
            Ok(Some(ev)) => match self.apply_event(&ev).await {
                Ok(()) => wechatpay::ack(),
                Err(e) => wechatpay::nack(e.code.http_status(), "please retry"),
            },
        };
        let (status, body) = answer;
        if body.is_empty() {
            status.into_response()
        } else {
            (
                status,
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                body,
            )
                .into_response()
        }
    }

    /// Top-ups, newest first, a page at a time.
    ///
    /// # Errors
    /// FORBIDDEN, INVALID_ARGUMENT.
    pub async fn list_topups(
        &self,
        op: &Operator,
        req: pb::ListTopUpsRequest,
    ) -> Result<pb::TopUpList, ApiError> {
        self.authorize(op, &Action::ReadMoney)?;
        let filter = topup_filter(&req)?;
        let limit = (req.limit != 0).then_some(req.limit);
        let page = page_request(limit, Some(&req.cursor))?;
        let page = self.store().list_topups(&filter, &page).await?;
        let mut top_ups = Vec::with_capacity(page.items.len());
        for t in &page.items {
            let refunds = if t.credited.is_zero() {
                Vec::new()
            } else {
                self.store().topup_refunds(t.id).await?
            };
            top_ups.push(ops_topup_pb(t, &refunds));
        }
        Ok(pb::TopUpList {
            top_ups,
            next_cursor: page.next.as_ref().map(encode_cursor).unwrap_or_default(),
        })
    }

    /// Refund part of a top-up's unspent credit to the card / WeChat balance: taken from the
    /// wallet at once, then the provider's refund API is asked (idempotency key = the refund's
    /// id); a refusal gives it back; the provider's notification confirms it. A retry with the
    /// same key asks the provider again while the refund is REQUESTED.
    ///
    /// # Errors
    /// FORBIDDEN (support above its cap), INVALID_ARGUMENT, TOPUP_NOT_FOUND,
    /// IDEMPOTENCY_KEY_REUSED, REFUND_EXCEEDS_TOPUP, PROVIDER_UNAVAILABLE, PROVIDER_ERROR
    /// (refused: given back; unreachable: still REQUESTED, retry with the same key).
    pub async fn refund_topup(
        &self,
        op: &Operator,
        req: pb::RefundTopUpRequest,
    ) -> Result<pb::TopUp, ApiError> {
        let amount =
            Amount::positive(req.amount).map_err(|e| ApiError::invalid(format!("amount: {e}")))?;
        self.authorize(op, &Action::Refund { amount })?;
        let id = topup_id(&req.top_up_id)?;
        let key = IdempotencyKey::parse(&req.idempotency_key)
            .map_err(|e| ApiError::invalid(format!("idempotencyKey: {e}")))?;
        let reason = blepay_store::Reason::parse(&req.reason)
            .map_err(|e| ApiError::invalid(format!("reason: {e}")))?;
        let now = self.now();
        let cmd = TopUpRefundCommand {
            topup: id,
            id: TopUpRefundId::from_bytes(rand::random()),
            amount,
            reason,
            key: key.clone(),
            actor: op.principal.clone(),
            now,
        };
        let (refund, topup) = match self.store().request_topup_refund(&cmd).await? {
            TopUpRefundOutcome::Requested { refund, topup, .. } => {
                tracing::info!(topup = %topup.id, refund = %refund.id, amount = %amount, principal = %op.principal, "top-up refund requested");
                self.record_action(
                    op,
                    ActionRecord {
                        action: "topup.refund",
                        target: topup.id.to_string(),
                        amount: Some(amount),
                        idempotency_key: Some(key.to_string()),
                    },
                )
                .await?;
                (refund, topup)
            }
            TopUpRefundOutcome::Replayed { refund, topup } => (refund, topup),
            TopUpRefundOutcome::KeyReused => return Err(key_reused()),
            TopUpRefundOutcome::ExceedsRefundable { refundable } => {
                return Err(ApiError::new(
                    ErrorCode::RefundExceedsTopUp,
                    format!(
                        "at most {} minor units of this top-up can be refunded (its unspent, \
                         unreversed credit)",
                        refundable.minor()
                    ),
                ));
            }
            TopUpRefundOutcome::NotCredited => {
                return Err(ApiError::new(
                    ErrorCode::RefundExceedsTopUp,
                    "the top-up was never credited: nothing to refund",
                ));
            }
            TopUpRefundOutcome::NotFound => return Err(topup_not_found()),
        };
        // Stripe keeps idempotency keys for 24 hours: past that, asking again could refund twice,
        // so a refund still REQUESTED then waits for the provider's notification (docs/topups.md).
        if refund.status == blepay_store::TopUpRefundStatus::Requested
            && now.saturating_sub(refund.created_at) < REFUND_RETRY_WINDOW_SECS
        {
            self.ask_provider_to_refund(&topup, &refund, now).await?;
        }
        let topup = self.store().topup(id).await?.ok_or_else(topup_not_found)?;
        let refunds = self.store().topup_refunds(id).await?;
        Ok(ops_topup_pb(&topup, &refunds))
    }

    /// Call the provider's refund API for a REQUESTED refund and apply what it answered as an
    /// event of its own (`answer:<refund>:<status>`), so it, too, is applied at most once.
    async fn ask_provider_to_refund(
        &self,
        topup: &ProviderTopUp,
        refund: &TopUpRefund,
        now: u64,
    ) -> Result<(), ApiError> {
        let providers = &self.config().providers;
        let answer = match topup.provider {
            Provider::Stripe => {
                let s = providers
                    .stripe
                    .as_ref()
                    .ok_or_else(|| unavailable("stripe"))?;
                s.client.refund(topup, refund).await
            }
            Provider::WechatPay => {
                let w = providers
                    .wechatpay
                    .as_ref()
                    .ok_or_else(|| unavailable("wechatpay"))?;
                w.refund(topup, refund).await
            }
        };
        let (kind, status, refused) = match answer {
            Ok(RefundAnswer::Pending) => return Ok(()),
            Ok(RefundAnswer::Succeeded) => (
                ProviderEventKind::RefundConfirmed { refund: refund.id },
                "succeeded",
                None,
            ),
            Ok(RefundAnswer::Failed(reason)) => (
                ProviderEventKind::RefundFailed {
                    refund: refund.id,
                    reason,
                },
                "failed",
                None,
            ),
            Err(e @ ProviderError::Refused { .. }) => (
                ProviderEventKind::RefundFailed {
                    refund: refund.id,
                    reason: e.to_string(),
                },
                "refused",
                Some(e),
            ),
            Err(e) => return Err(provider_error(&e)),
        };
        let ev = ProviderEvent {
            provider: topup.provider,
            key: format!("answer:{}:{status}", refund.id),
            topup: TopUpLocator::Id(topup.id),
            kind,
            now,
        };
        self.apply_event(&ev).await?;
        match refused {
            Some(e) => Err(provider_error(&e)),
            None => Ok(()),
        }
    }
}

/// A notification that was not accepted, as the webhook answers it (nothing was applied).
fn webhook_refusal(app: &App, provider: Provider, e: &WebhookError) -> ApiError {
    tracing::warn!(provider = provider.as_str(), error = %e, "provider notification refused");
    app.metrics()
        .provider_notification(provider.as_str(), "refused");
    match e {
        WebhookError::NotConfigured => unavailable(provider.as_str()),
        WebhookError::Malformed(m) => ApiError::invalid(format!("malformed notification: {m}")),
        WebhookError::MissingSignature
        | WebhookError::BadSignature
        | WebhookError::StaleTimestamp
        | WebhookError::UnknownCertificate => {
            ApiError::new(ErrorCode::Unauthenticated, e.to_string())
        }
    }
}

/// The top-up list's filter from its request message (empty / 0 / unspecified = no filter).
///
/// # Errors
/// INVALID_ARGUMENT naming the field.
pub fn topup_filter(req: &pb::ListTopUpsRequest) -> Result<TopUpFilter, ApiError> {
    let user = match req.user_id.as_str() {
        "" => None,
        u => Some(App::parse_user(u)?),
    };
    let provider = match req.provider.as_str() {
        "" => None,
        p => Some(
            Provider::parse(p)
                .ok_or_else(|| ApiError::invalid("provider: one of stripe, wechatpay"))?,
        ),
    };
    let status = match pb::TopUpStatus::try_from(req.status) {
        Ok(pb::TopUpStatus::Unspecified) => None,
        Ok(pb::TopUpStatus::Pending) => Some(TopUpStatus::Pending),
        Ok(pb::TopUpStatus::Succeeded) => Some(TopUpStatus::Succeeded),
        Ok(pb::TopUpStatus::Failed) => Some(TopUpStatus::Failed),
        Ok(pb::TopUpStatus::Refunded) => Some(TopUpStatus::Refunded),
        Err(_) => return Err(ApiError::invalid("status: not a top-up status")),
    };
    let (from, to) = crate::reports::time_range(req.from, req.to)?;
    Ok(TopUpFilter {
        user,
        provider,
        status,
        from,
        to,
    })
}

/// `GET /v1/ops/topups`' query: `userId provider status from to limit cursor`.
///
/// # Errors
/// INVALID_ARGUMENT naming the parameter.
pub fn topups_query(query: Option<&str>) -> Result<pb::ListTopUpsRequest, ApiError> {
    let mut req = pb::ListTopUpsRequest::default();
    let allowed = [
        "userId", "provider", "status", "from", "to", "limit", "cursor",
    ];
    for (name, v) in crate::reports::query_pairs(query, &allowed)? {
        match name {
            "userId" => req.user_id = v,
            "provider" => req.provider = v,
            "status" => {
                req.status = pb::TopUpStatus::from_str_name(&v)
                    .filter(|s| *s != pb::TopUpStatus::Unspecified)
                    .ok_or_else(|| {
                        ApiError::invalid("status: one of PENDING, SUCCEEDED, FAILED, REFUNDED")
                    })? as i32;
            }
            "from" => req.from = crate::reports::time_param("from", &v)?,
            "to" => req.to = crate::reports::time_param("to", &v)?,
            "limit" => req.limit = crate::reports::limit_param(&v)?,
            _ => req.cursor = v,
        }
    }
    topup_filter(&req)?;
    Ok(req)
}

/// The CSV columns of `GET /v1/ops/topups` with `Accept: text/csv`.
pub const TOPUPS_CSV_HEADER: [&str; 14] = [
    "top_up_id",
    "user_id",
    "provider",
    "status",
    "amount",
    "currency",
    "credited",
    "reversed",
    "unrecovered",
    "provider_refunded",
    "disputed",
    "transaction_id",
    "created_at",
    "mismatch",
];

fn topups_csv(list: &pb::TopUpList) -> Result<Vec<u8>, ApiError> {
    use crate::reports::{Cell, csv_document, format_time};
    let time = |t: i64| Cell::Text(format_time(u64::try_from(t).unwrap_or(0)));
    let rows: Vec<Vec<Cell>> = list
        .top_ups
        .iter()
        .map(|t| {
            vec![
                Cell::Text(t.top_up_id.clone()),
                Cell::Text(t.user_id.clone()),
                Cell::Text(t.provider.clone()),
                Cell::Text(
                    pb::TopUpStatus::try_from(t.status)
                        .map_or("", |s| s.as_str_name())
                        .to_owned(),
                ),
                Cell::Num(i128::from(t.amount)),
                Cell::Text(t.currency.clone()),
                Cell::Num(i128::from(t.credited)),
                Cell::Num(i128::from(t.reversed)),
                Cell::Num(i128::from(t.unrecovered)),
                Cell::Num(i128::from(t.provider_refunded)),
                Cell::Num(i128::from(t.disputed)),
                Cell::Text(t.transaction_id.clone()),
                time(t.created_at),
                Cell::Text(t.mismatch.clone()),
            ]
        })
        .collect();
    csv_document(&TOPUPS_CSV_HEADER, &rows)
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

/// The phone's routes: `POST /v1/topups`, `GET /v1/topups/{topUpId}`.
pub(crate) fn phone_routes(router: Router<App>) -> Router<App> {
    router
        .route("/v1/topups", post(start_http))
        .route("/v1/topups/{top_up_id}", get(get_http))
}

/// The providers' notification routes (no bearer token: the signature authenticates).
pub(crate) fn webhook_routes(router: Router<App>) -> Router<App> {
    router
        .route("/v1/webhooks/stripe", post(stripe_http))
        .route("/v1/webhooks/wechatpay", post(wechatpay_http))
}

/// The operators' routes: `GET /v1/ops/topups`, `POST /v1/ops/topups/{topUpId}/refund`.
pub(crate) fn ops_routes(router: Router<App>) -> Router<App> {
    router
        .route("/v1/ops/topups", get(list_http))
        .route("/v1/ops/topups/{top_up_id}/refund", post(refund_http))
}

async fn start_http(
    State(app): State<App>,
    PhoneUser(user): PhoneUser,
    Wire(req, f): Wire<pb::StartTopUpRequest>,
) -> Result<Reply<pb::TopUp>, ApiError> {
    Ok(Reply(app.start_topup(&user, req).await?, f))
}

async fn get_http(
    State(app): State<App>,
    PhoneUser(user): PhoneUser,
    Path(top_up_id): Path<String>,
    headers: HeaderMap,
) -> Result<Reply<pb::TopUp>, ApiError> {
    let req = pb::GetTopUpRequest { top_up_id };
    Ok(Reply(
        app.get_topup(&user, req).await?,
        Format::of_accept(&headers),
    ))
}

async fn stripe_http(
    State(app): State<App>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body = crate::http::read_body(body).await?;
    app.stripe_webhook(&headers, &body).await?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"received":true}"#,
    )
        .into_response())
}

async fn wechatpay_http(State(app): State<App>, headers: HeaderMap, body: Body) -> Response {
    match crate::http::read_body(body).await {
        Ok(body) => app.wechatpay_webhook(&headers, &body).await,
        Err(e) => {
            let (status, body) = wechatpay::nack(e.code.http_status(), &e.message);
            (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
    }
}

async fn list_http(
    State(app): State<App>,
    OpsCaller(op): OpsCaller,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    app.authorize(&op, &Action::ReadMoney)?;
    let req = topups_query(q.as_deref())?;
    let list = app.list_topups(&op, req).await?;
    Ok(crate::reports::list_answer(
        list,
        &headers,
        topups_csv,
        |l| &l.next_cursor,
    ))
}

async fn refund_http(
    State(app): State<App>,
    OpsCaller(op): OpsCaller,
    Path(top_up_id): Path<String>,
    Wire(body, f): Wire<pb::RefundTopUpRequest>,
) -> Result<Reply<pb::TopUp>, ApiError> {
    let req = pb::RefundTopUpRequest { top_up_id, ..body };
    Ok(Reply(app.refund_topup(&op, req).await?, f))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_list_query_names_what_is_wrong() {
        let r = topups_query(Some("provider=stripe&status=SUCCEEDED&from=1&to=2&limit=5")).unwrap();
        assert_eq!(r.provider, "stripe");
        assert_eq!(r.status, pb::TopUpStatus::Succeeded as i32);
        for (q, needle) in [
            ("provider=paypal", "provider"),
            ("status=DONE", "status"),
            ("from=5&to=1", "from"),
            ("limit=0", "limit"),
            ("color=red", "unknown"),
        ] {
            let e = topups_query(Some(q)).unwrap_err();
            assert!(e.message.contains(needle), "{q}: {}", e.message);
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_queries_never_panic(q in ".{0,300}") {
            let _ = topups_query(Some(&q));
        }
    }
}
