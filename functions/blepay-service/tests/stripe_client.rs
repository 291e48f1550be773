//! **Outbound** Stripe tests (issue 12): the client's requests against Stripe's published request
//! shapes, answered by a loopback fixture server replaying recorded Stripe answers
//! (`tests/fixtures/stripe/*.json`). Stripe itself cannot be reached from here. The exact
//! method, path, form fields, `Authorization`, `Idempotency-Key` and `Stripe-Version` are
//! asserted; so are retries under the same key (5xx, 429, 409, no answer, `Stripe-Should-Retry`),
//! refusals (other 4xx) and
//! unusable answers. The webhook (inbound) side is tested with real signatures in
//! `providers::stripe`'s unit tests.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blepay_core::{Amount, Currency, IdempotencyKey, Provider, UserId};
use blepay_service::config::SecretString;
use blepay_service::providers::http::Outbound;
use blepay_service::providers::stripe::{API_VERSION, MAX_ATTEMPTS, StripeClient, StripeSettings};
use blepay_service::providers::{ProviderError, RefundAnswer};
use blepay_store::{
    ProviderTopUp, Reason, TopUpId, TopUpRefund, TopUpRefundId, TopUpRefundStatus, TopUpStatus,
};
use bytes::Bytes;
use http::{HeaderMap, Method, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

const SECRET_KEY: &str = "sk_test_51BlePayFixtureKey0000000000000000";
const TOPUP: &str = "0123456789abcdef0123456789abcdef";
const REFUND: &str = "fedcba9876543210fedcba9876543210";
const PI: &str = "pi_3QxPaS2eZvKYlo2C1nDq6Z5v";

const PAYMENT_INTENT: &str = include_str!("fixtures/stripe/payment_intent.json");
const REFUND_OBJECT: &str = include_str!("fixtures/stripe/refund.json");
const ERROR_AMOUNT_TOO_SMALL: &str = include_str!("fixtures/stripe/error_amount_too_small.json");
const ERROR_ALREADY_REFUNDED: &str =
    include_str!("fixtures/stripe/error_charge_already_refunded.json");
const ERROR_API: &str = include_str!("fixtures/stripe/error_api_error.json");
const ERROR_AUTHENTICATION: &str = include_str!("fixtures/stripe/error_authentication.json");

/// A scripted answer: status, body, `Stripe-Should-Retry`.
type Scripted = (u16, &'static str, Option<&'static str>);

/// One request as the fixture server saw it.
#[derive(Debug, Clone)]
struct Recorded {
    method: Method,
    path: String,
    headers: HeaderMap,
    form: Vec<(String, String)>,
}

impl Recorded {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .unwrap()
    }
}

/// A loopback HTTP/1.1 server answering scripted `(status, body)` pairs in order and recording
/// every request.
struct FixtureServer {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl FixtureServer {
    async fn start(answers: Vec<(u16, &'static str)>) -> Self {
        Self::start_with(answers.into_iter().map(|(s, b)| (s, b, None)).collect()).await
    }

    /// Like [`FixtureServer::start`], each answer with an optional `Stripe-Should-Retry`.
    async fn start_with(answers: Vec<Scripted>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let answers = Arc::new(Mutex::new(VecDeque::from(answers)));
        let recorded = requests.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let recorded = recorded.clone();
                let answers = answers.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let recorded = recorded.clone();
                            let answers = answers.clone();
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = body.collect().await?.to_bytes();
                                recorded.lock().unwrap().push(Recorded {
                                    method: parts.method,
                                    path: parts.uri.path().to_owned(),
                                    headers: parts.headers,
                                    form: form_urlencoded::parse(&body).into_owned().collect(),
                                });
                                Ok::<_, hyper::Error>(next_answer(&answers))
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, requests }
    }

    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

/// The next scripted answer (a 500 once the script is spent).
fn next_answer(answers: &Mutex<VecDeque<Scripted>>) -> Response<Full<Bytes>> {
    let (status, body, should_retry) = answers
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or((500, ERROR_API, None));
    let mut answer = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("request-id", "req_fixture");
    if let Some(v) = should_retry {
        answer = answer.header("stripe-should-retry", v);
    }
    answer
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

fn client(api_base: String) -> StripeClient {
    StripeClient::new(
        StripeSettings {
            secret_key: SecretString::new(SECRET_KEY.into()),
            webhook_secrets: vec![SecretString::new("whsec_unused".into())],
            api_base,
        },
        Outbound::new(Duration::from_secs(5)).unwrap(),
    )
}

fn topup(provider_ref: Option<&str>) -> ProviderTopUp {
    ProviderTopUp {
        id: TopUpId::parse(TOPUP).unwrap(),
        user: UserId::parse("alice@example.com").unwrap(),
        provider: Provider::Stripe,
        amount: Amount::new(2000).unwrap(),
        currency: Currency::parse("EUR").unwrap(),
        status: TopUpStatus::Succeeded,
        key: IdempotencyKey::parse("k-1").unwrap(),
        provider_ref: provider_ref.map(str::to_owned),
        client_secret: None,
        transaction_id: None,
        created_at: 1_765_097_940,
        updated_at: 1_765_098_000,
        credited: Amount::new(2000).unwrap(),
        provider_refunded: Amount::ZERO,
        disputed: Amount::ZERO,
        refunds_committed: Amount::ZERO,
        debited: Amount::ZERO,
        mismatch: None,
        failure: None,
    }
}

fn refund() -> TopUpRefund {
    TopUpRefund {
        id: TopUpRefundId::parse(REFUND).unwrap(),
        topup: TopUpId::parse(TOPUP).unwrap(),
        amount: Amount::new(500).unwrap(),
        reason: Reason::parse("machine broken").unwrap(),
        actor: "ops@example.com".into(),
        key: IdempotencyKey::parse("r-1").unwrap(),
        status: TopUpRefundStatus::Requested,
        failure: None,
        created_at: 1_765_184_400,
        updated_at: 1_765_184_400,
    }
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The headers every request carries.
fn assert_stripe_headers(r: &Recorded, idempotency_key: &str) {
    assert_eq!(r.method, Method::POST);
    assert_eq!(r.header("authorization"), format!("Bearer {SECRET_KEY}"));
    assert_eq!(r.header("idempotency-key"), idempotency_key);
    assert_eq!(r.header("stripe-version"), API_VERSION);
    assert_eq!(
        r.header("content-type"),
        "application/x-www-form-urlencoded"
    );
}

#[tokio::test]
async fn outbound_a_payment_intent_is_created_with_stripes_request_shape() {
    // Arrange
    let server = FixtureServer::start(vec![(200, PAYMENT_INTENT)]).await;
    // Act
    let pi = client(server.base())
        .create_payment_intent(&topup(None))
        .await
        .unwrap();
    // Assert: the answer...
    assert_eq!(pi.id, PI);
    assert_eq!(
        pi.client_secret.expose(),
        "pi_3QxPaS2eZvKYlo2C1nDq6Z5v_secret_Vh7kLwQ2mYb6rXyP1sTdJfEaZ"
    );
    assert!(!format!("{pi:?}").contains("_secret_"));
    // ...and exactly one request of Stripe's documented shape.
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(r.path, "/v1/payment_intents");
    assert_stripe_headers(r, &format!("topup-{TOPUP}"));
    assert_eq!(
        r.form,
        pairs(&[
            ("amount", "2000"),
            ("currency", "eur"),
            ("automatic_payment_methods[enabled]", "true"),
            ("metadata[blepay_topup_id]", TOPUP),
            ("metadata[blepay_user]", "alice@example.com"),
        ])
    );
}

#[tokio::test]
async fn outbound_a_refund_names_the_payment_intent_and_our_ids() {
    // Arrange
    let server = FixtureServer::start(vec![(200, REFUND_OBJECT)]).await;
    // Act
    let answer = client(server.base())
        .refund(&topup(Some(PI)), &refund())
        .await
        .unwrap();
    // Assert
    assert_eq!(answer, RefundAnswer::Succeeded);
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(r.path, "/v1/refunds");
    assert_stripe_headers(r, &format!("refund-{REFUND}"));
    assert_eq!(
        r.form,
        pairs(&[
            ("payment_intent", PI),
            ("amount", "500"),
            ("metadata[blepay_refund_id]", REFUND),
            ("metadata[blepay_topup_id]", TOPUP),
        ])
    );
}

#[tokio::test]
async fn outbound_a_refund_falls_back_to_the_transaction_id() {
    let server = FixtureServer::start(vec![(200, REFUND_OBJECT)]).await;
    let mut t = topup(None);
    t.transaction_id = Some(PI.into());
    client(server.base()).refund(&t, &refund()).await.unwrap();
    assert_eq!(
        server.requests()[0].form[0],
        ("payment_intent".into(), PI.into())
    );
}

#[tokio::test]
async fn outbound_a_refund_without_a_payment_intent_sends_nothing() {
    let server = FixtureServer::start(vec![]).await;
    let r = client(server.base()).refund(&topup(None), &refund()).await;
    assert!(matches!(r, Err(ProviderError::BadAnswer(_))), "{r:?}");
    assert!(server.requests().is_empty());
}

/// `refund.json` with its `status` (and `failure_reason`) replaced.
fn refund_answer(status: &str, failure_reason: Option<&str>) -> &'static str {
    let mut v: serde_json::Value = serde_json::from_str(REFUND_OBJECT).unwrap();
    v["status"] = serde_json::json!(status);
    if let Some(reason) = failure_reason {
        v["failure_reason"] = serde_json::json!(reason);
    }
    Box::leak(serde_json::to_string(&v).unwrap().into_boxed_str())
}

#[tokio::test]
async fn outbound_refund_statuses_map_to_answers() {
    let cases = [
        (refund_answer("pending", None), Ok(RefundAnswer::Pending)),
        (
            refund_answer("requires_action", None),
            Ok(RefundAnswer::Pending),
        ),
        (
            refund_answer("failed", Some("lost_or_stolen_card")),
            Ok(RefundAnswer::Failed("lost_or_stolen_card".into())),
        ),
        (
            refund_answer("canceled", None),
            Ok(RefundAnswer::Failed("canceled".into())),
        ),
    ];
    for (body, expected) in cases {
        let server = FixtureServer::start(vec![(200, body)]).await;
        let got = client(server.base())
            .refund(&topup(Some(PI)), &refund())
            .await;
        assert_eq!(got, expected, "{body}");
    }
    let server = FixtureServer::start(vec![(200, refund_answer("mystery", None))]).await;
    let got = client(server.base())
        .refund(&topup(Some(PI)), &refund())
        .await;
    assert!(matches!(got, Err(ProviderError::BadAnswer(_))), "{got:?}");
}

#[tokio::test]
async fn outbound_a_500_then_a_200_is_retried_under_the_same_idempotency_key() {
    // Arrange
    let server = FixtureServer::start(vec![(500, ERROR_API), (200, PAYMENT_INTENT)]).await;
    // Act
    let pi = client(server.base())
        .create_payment_intent(&topup(None))
        .await
        .unwrap();
    // Assert: two identical requests.
    assert_eq!(pi.id, PI);
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    for r in &requests {
        assert_stripe_headers(r, &format!("topup-{TOPUP}"));
        assert_eq!(r.form, requests[0].form);
    }
}

#[tokio::test]
async fn outbound_a_429_is_retried_too() {
    let server = FixtureServer::start(vec![(429, ERROR_API), (200, REFUND_OBJECT)]).await;
    let answer = client(server.base())
        .refund(&topup(Some(PI)), &refund())
        .await
        .unwrap();
    assert_eq!(answer, RefundAnswer::Succeeded);
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[1].header("idempotency-key"),
        format!("refund-{REFUND}")
    );
}

#[tokio::test]
async fn outbound_a_409_conflict_under_the_same_key_is_retried_and_never_a_refusal() {
    // Arrange: a concurrent request with the same key is still in progress, twice... then
    // three times: the outcome is unknown, not refused (the refund may still happen).
    let server = FixtureServer::start(vec![(409, ERROR_API), (200, REFUND_OBJECT)]).await;
    let answer = client(server.base())
        .refund(&topup(Some(PI)), &refund())
        .await
        .unwrap();
    assert_eq!(answer, RefundAnswer::Succeeded);
    assert_eq!(server.requests().len(), 2);

    let server = FixtureServer::start(vec![(409, ERROR_API); 3]).await;
    let r = client(server.base())
        .refund(&topup(Some(PI)), &refund())
        .await;
    assert!(matches!(r, Err(ProviderError::Unreachable(_))), "{r:?}");
    assert_eq!(server.requests().len(), MAX_ATTEMPTS as usize);
}

#[tokio::test]
async fn outbound_stripe_should_retry_overrides_the_status() {
    // `false` on a 503: one attempt, still an unknown outcome.
    let server = FixtureServer::start_with(vec![(503, ERROR_API, Some("false"))]).await;
    let r = client(server.base())
        .create_payment_intent(&topup(None))
        .await;
    assert!(matches!(r, Err(ProviderError::Unreachable(_))), "{r:?}");
    assert_eq!(server.requests().len(), 1);
    // `true` on a 400: retried under the same key.
    let server = FixtureServer::start_with(vec![
        (400, ERROR_AMOUNT_TOO_SMALL, Some("true")),
        (200, PAYMENT_INTENT, None),
    ])
    .await;
    let pi = client(server.base())
        .create_payment_intent(&topup(None))
        .await
        .unwrap();
    assert_eq!(pi.id, PI);
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[0].header("idempotency-key"),
        requests[1].header("idempotency-key")
    );
}

#[tokio::test]
async fn outbound_three_5xx_answers_are_unreachable_after_three_attempts() {
    // Arrange: more failures scripted than attempts allowed.
    let server = FixtureServer::start(vec![(503, ERROR_API); 5]).await;
    // Act
    let r = client(server.base())
        .create_payment_intent(&topup(None))
        .await;
    // Assert
    assert!(matches!(r, Err(ProviderError::Unreachable(_))), "{r:?}");
    let requests = server.requests();
    assert_eq!(requests.len(), MAX_ATTEMPTS as usize);
    assert!(
        requests
            .iter()
            .all(|r| r.header("idempotency-key") == format!("topup-{TOPUP}"))
    );
}

#[tokio::test]
async fn outbound_no_server_at_all_is_unreachable() {
    // A loopback port nobody listens on any more.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let r = client(format!("http://{addr}"))
        .create_payment_intent(&topup(None))
        .await;
    assert!(matches!(r, Err(ProviderError::Unreachable(_))), "{r:?}");
}

#[tokio::test]
async fn outbound_a_400_is_refused_with_stripes_code_and_not_retried() {
    // Arrange
    let server = FixtureServer::start(vec![(400, ERROR_AMOUNT_TOO_SMALL)]).await;
    // Act
    let r = client(server.base())
        .create_payment_intent(&topup(None))
        .await;
    // Assert
    assert_eq!(
        r.unwrap_err(),
        ProviderError::Refused {
            status: 400,
            code: "amount_too_small".into(),
            message: "Amount must be at least €0.50 eur".into(),
        }
    );
    assert_eq!(server.requests().len(), 1);

    let server = FixtureServer::start(vec![(400, ERROR_ALREADY_REFUNDED)]).await;
    let r = client(server.base())
        .refund(&topup(Some(PI)), &refund())
        .await;
    assert!(
        matches!(&r, Err(ProviderError::Refused { status: 400, code, .. }) if code == "charge_already_refunded"),
        "{r:?}"
    );
}

#[tokio::test]
async fn outbound_a_refusal_without_a_code_is_named_by_its_type() {
    let server = FixtureServer::start(vec![(401, ERROR_AUTHENTICATION)]).await;
    let r = client(server.base())
        .create_payment_intent(&topup(None))
        .await;
    assert!(
        matches!(&r, Err(ProviderError::Refused { status: 401, code, .. }) if code == "invalid_request_error"),
        "{r:?}"
    );
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn outbound_unusable_answers_are_bad_answers() {
    for (status, body) in [
        (200, "not json"),
        (
            200,
            r#"{"id":"pi_1","object":"payment_intent","client_secret":null}"#,
        ),
        (400, "<html>Bad Request</html>"),
    ] {
        let server = FixtureServer::start(vec![(status, body)]).await;
        let r = client(server.base())
            .create_payment_intent(&topup(None))
            .await;
        assert!(
            matches!(r, Err(ProviderError::BadAnswer(_))),
            "{status} {body}: {r:?}"
        );
        assert_eq!(server.requests().len(), 1);
    }
}

#[tokio::test]
async fn outbound_plain_http_to_a_non_loopback_host_is_never_sent() {
    let r = client("http://api.stripe.com".into())
        .create_payment_intent(&topup(None))
        .await;
    assert!(r.is_err());
    assert!(!matches!(r, Err(ProviderError::Refused { .. })));
}
