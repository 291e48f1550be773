//! The Lambda binaries answering the HTTP contract under the cargo-lambda emulator
//! (`cargo lambda watch`), on DynamoDB Local: a whole payment, machine included.
//!
//! Needs the local stack: `infra/local-stack.sh --detach` starts DynamoDB Local and the emulator
//! and writes an env file; `.ci/infra.sh` does that and runs these tests with
//! `-- --include-ignored`. They are `#[ignore]`d (plain `cargo test` has no emulator, and a test
//! that returns early would report `ok` without running); run, anything missing is a failure
//! naming it, never a skip.
//!
//! There is no API Gateway here, so no authorizer context: phones authenticate with HS256 tokens
//! and operators with the ops token, exactly as against `blepay serve`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests: a failure is a panic

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use blepay_core::{DeviceId, KeyVersion, SessionId, Units, UseCounter, UserId};
use blepay_device_client::{Answer, Identity, Request};
use blepay_proto::{AdvertFlags, DeviceKey};
use serde_json::{Value, json};

struct Stack {
    url: String,
    jwt_secret: String,
    ops_token: String,
    stripe_webhook_secret: String,
    http: reqwest::Client,
}

fn required(var: &str) -> String {
    std::env::var(var).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| {
        panic!(
            "{var} is not set: start the stack with `infra/local-stack.sh --detach` and source the \
             env file it prints (or run .ci/infra.sh)"
        )
    })
}

fn stack() -> Stack {
    Stack {
        url: required("BLEPAY_LAMBDA_URL")
            .trim_end_matches('/')
            .to_owned(),
        jwt_secret: required("BLEPAY_JWT_SECRET"),
        ops_token: required("BLEPAY_OPS_TOKEN"),
        stripe_webhook_secret: required("BLEPAY_STRIPE_WEBHOOK_SECRET"),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap(),
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl Stack {
    fn function(&self, name: &str, path: &str) -> String {
        format!("{}/lambda-url/{name}{path}", self.url)
    }

    async fn json(&self, req: reqwest::RequestBuilder) -> (u16, Value) {
        let r = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("emulator unreachable at {}: {e}", self.url));
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
        (status, body)
    }

    async fn ops(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, self.function("blepay-ops-fn", path))
            .bearer_auth(&self.ops_token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        self.json(req).await
    }

    async fn phone(
        &self,
        user: &UserId,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let token = blepay_service::auth::mint_token(&self.jwt_secret, user, now(), 600).unwrap();
        let mut req = self
            .http
            .request(method, self.function("blepay-verify-fn", path))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        self.json(req).await
    }

    async fn machine(&self, id: &Identity, seq: u32, body: &Request) -> Answer {
        let pending = id.request(seq, body);
        let r = self
            .http
            .post(self.function("blepay-device-fn", "/v1/device"))
            .header("content-type", "application/octet-stream")
            .body(pending.frame.clone())
            .send()
            .await
            .unwrap();
        let status = r.status();
        let bytes = r.bytes().await.unwrap();
        let answer = id.open(&pending, &bytes).unwrap_or_else(|e| {
            panic!(
                "machine answer (HTTP {status}) does not open: {e}: {}",
                String::from_utf8_lossy(&bytes)
            )
        });
        assert_eq!(
            answer.refusal_code(),
            None,
            "machine request {seq} refused: {answer:?}"
        );
        answer
    }
}

/// Ops: register a new machine and top up a new user with 1000.
async fn provision(stack: &Stack) -> (Identity, UserId) {
    let device_id = DeviceId::from_bytes(rand::random());
    let user = UserId::parse(&format!("e2e-{}", hex::encode(rand::random::<[u8; 6]>()))).unwrap();

    let (status, registered) = stack
        .ops(
            reqwest::Method::POST,
            "/v1/ops/devices",
            Some(json!({"deviceId": device_id.to_string(), "name": "Emulated tap", "pricePerUnit": "50",
                        "unitName": "litre", "currency": "EUR"})),
        )
        .await;
    assert_eq!(status, 200, "{registered}");
    let identity = Identity {
        device_id,
        key_version: KeyVersion::new(
            u8::try_from(registered["keyVersion"].as_u64().unwrap()).unwrap(),
        )
        .unwrap(),
        key: DeviceKey::parse_hex(registered["deviceKey"].as_str().unwrap()).unwrap(),
    };
    let (status, wallet) = stack
        .ops(
            reqwest::Method::POST,
            &format!("/v1/ops/wallets/{user}/topup"),
            Some(json!({"amount": "1000", "idempotencyKey": "e2e-topup"})),
        )
        .await;
    assert_eq!(
        (status, wallet["available"].as_str()),
        (200, Some("1000")),
        "{wallet}"
    );

    (identity, user)
}

/// The machine's first heartbeat (sequence number 1); ops then see it IDLE with its telemetry.
async fn first_heartbeat(stack: &Stack, identity: &Identity) -> Answer {
    let answer = stack
        .machine(
            identity,
            1,
            &Request::Heartbeat(blepay_core::Telemetry {
                firmware_version: "emulated-1".into(),
                signal_quality: 20,
                ..blepay_core::Telemetry::default()
            }),
        )
        .await;
    let (status, device) = stack
        .ops(
            reqwest::Method::GET,
            &format!("/v1/ops/devices/{}", identity.device_id),
            None,
        )
        .await;
    assert_eq!(
        (
            status,
            device["state"].as_str(),
            device["telemetry"]["firmwareVersion"].as_str()
        ),
        (200, Some("IDLE"), Some("emulated-1")),
        "{device}"
    );
    answer
}

#[tokio::test]
#[ignore = "needs the local Lambda stack (.ci/infra.sh runs it)"]
async fn the_lambda_binaries_take_a_payment_end_to_end_under_the_emulator() {
    let stack = stack();
    let (identity, user) = provision(&stack).await;

    // The machine's heartbeat: it is online, its clock is the server's.
    let first = first_heartbeat(&stack, &identity).await;
    let advert = identity.advert(first.server_time, UseCounter::new(1), AdvertFlags::NONE);
    let advert = B64.encode(advert.encode());

    // Phone: verify, pay.
    let (status, verified) = stack
        .phone(
            &user,
            reqwest::Method::POST,
            "/v1/verify",
            Some(json!({"advert": advert})),
        )
        .await;
    assert_eq!(
        (status, verified["state"].as_str()),
        (200, Some("IDLE")),
        "{verified}"
    );
    let (status, paid) = stack
        .phone(
            &user,
            reqwest::Method::POST,
            "/v1/pay",
            Some(json!({"advert": advert, "maxAmount": "500", "idempotencyKey": "e2e-pay"})),
        )
        .await;
    assert_eq!(
        (status, paid["status"].as_str()),
        (200, Some("AUTHORIZED")),
        "{paid}"
    );
    let session_id = paid["sessionId"].as_str().unwrap().to_owned();
    let session = SessionId::parse(&session_id).unwrap();

    // Machine: the user presses start (one exchange fetches the grant and starts it), 3 litres
    // flow.
    let pressed = stack.machine(&identity, 2, &Request::Press).await;
    let grants: Vec<_> = pressed.body.usable_grants().collect();
    assert_eq!(
        grants.iter().map(|g| g.session).collect::<Vec<_>>(),
        [session],
        "{pressed:?}"
    );
    let done = stack
        .machine(
            &identity,
            3,
            &blepay_device_client::report(session, Units::new(3), true),
        )
        .await;
    assert_eq!(done.body.session().map(|(_, amount)| amount), Some(150));

    // Everyone sees the settlement.
    let (status, s) = stack
        .phone(
            &user,
            reqwest::Method::GET,
            &format!("/v1/sessions/{session_id}"),
            None,
        )
        .await;
    assert_eq!(
        (status, s["status"].as_str(), s["amount"].as_str()),
        (200, Some("SETTLED"), Some("150")),
        "{s}"
    );
    let (status, w) = stack
        .phone(&user, reqwest::Method::GET, "/v1/wallet", None)
        .await;
    assert_eq!(
        (status, w["available"].as_str(), w["spent"].as_str()),
        (200, Some("850"), Some("150")),
        "{w}"
    );
    let (status, s) = stack
        .ops(
            reqwest::Method::GET,
            &format!("/v1/ops/sessions/{session_id}"),
            None,
        )
        .await;
    assert_eq!(
        (status, s["userId"].as_str(), s["closedBy"].as_str()),
        (200, Some(user.as_str()), Some("REPORT")),
        "{s}"
    );

    // Each function serves only its own routes.
    let (status, e) = stack
        .json(
            stack
                .http
                .get(stack.function("blepay-ops-fn", "/v1/wallet")),
        )
        .await;
    assert_eq!(
        (status, e["code"].as_str()),
        (404, Some("NOT_FOUND")),
        "{e}"
    );
}

#[tokio::test]
#[ignore = "needs the local Lambda stack (.ci/infra.sh runs it)"]
async fn the_sweeper_binary_runs_under_the_emulator() {
    let stack = stack();
    // What EventBridge Scheduler sends; the sweeper ignores its content.
    let event = json!({"version": "0", "id": "7bf73129-1428-4cd3-a780-95db273d1602",
        "detail-type": "Scheduled Event", "source": "aws.scheduler", "account": "123456789012",
        "time": "2026-02-02T02:40:00Z", "region": "us-east-1", "resources": [], "detail": {}});
    let url = format!(
        "{}/2015-03-31/functions/blepay-sweeper-fn/invocations",
        stack.url
    );
    let (status, answer) = stack.json(stack.http.post(url).json(&event)).await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer["expired"].is_u64() && answer["timedOut"].is_u64(),
        "{answer}"
    );
}

/// The phone function serves Stripe's webhook without a bearer token: a notification signed with
/// the configured endpoint secret is received (one for a top-up the store does not know changes
/// nothing), one with a bad signature is refused and changes nothing.
#[tokio::test]
#[ignore = "needs the local Lambda stack (.ci/infra.sh runs it)"]
async fn the_phone_function_verifies_stripe_notifications_under_the_emulator() {
    let stack = stack();
    let url = stack.function("blepay-verify-fn", "/v1/webhooks/stripe");
    let body = serde_json::json!({
        "id": format!("evt_emulator_{}", now()),
        "object": "event",
        "type": "payment_intent.succeeded",
        "created": now(),
        "livemode": false,
        "data": {"object": {
            "id": "pi_emulator", "object": "payment_intent", "amount": 500,
            "amount_received": 500, "currency": "eur", "status": "succeeded",
            "metadata": {"blepay_topup_id": "00112233445566778899aabbccddeeff"}
        }}
    })
    .to_string();
    let secret = blepay_service::config::SecretString::new(stack.stripe_webhook_secret.clone());
    let signed = blepay_service::providers::stripe::sign(&secret, now(), body.as_bytes());
    let send = |sig: String| {
        stack
            .http
            .post(&url)
            .header("content-type", "application/json")
            .header("stripe-signature", sig)
            .body(body.clone())
    };
    let (status, answer) = stack.json(send(signed)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["received"], true);
    let wrong = blepay_service::providers::stripe::sign(
        &blepay_service::config::SecretString::new("whsec_not_the_secret".into()),
        now(),
        body.as_bytes(),
    );
    let (status, answer) = stack.json(send(wrong)).await;
    assert_eq!(status, 401, "{answer}");
    assert_eq!(answer["code"], "UNAUTHENTICATED");
}
