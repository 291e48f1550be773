//! The payment providers around the real server (issue 12): fake Stripe and WeChat Pay APIs on
//! loopback, and the notifications those providers send, signed for real.
//!
//! [`spawn_app_with_providers`] starts the real server with both providers configured the way an
//! operator configures them (docs/topups.md: one JSON document per provider, in a 0600 file),
//! their `apiBase` pointing at a [`FakeProvider`] each:
//! - **Stripe** ([`FakeProvider`] on `POST /v1/payment_intents`, `POST /v1/refunds`): checks
//!   the `Bearer` secret key, answers a PaymentIntent (`pi_…`, `client_secret` `pi_…_secret_…`)
//!   or a Refund as Stripe's API does, replays an answer for a repeated `Idempotency-Key`, and
//!   records every request.
//! - **WeChat Pay API v3** (`POST /v3/pay/transactions/{app,jsapi}`,
//!   `POST /v3/refund/domestic/refunds`): verifies the merchant's `Authorization`
//!   (`WECHATPAY2-SHA256-RSA2048`, RSA-SHA256 over `METHOD\npath\ntimestamp\nnonce\nbody\n` with
//!   the merchant key), answers `{prepay_id}` or a refund, each answer signed with the platform
//!   key in the `Wechatpay-*` headers, and records every request.
//!
//! The notifications are the providers' own formats, made with keys generated once per test
//! binary: [`stripe::event`] posted with a `Stripe-Signature` (`t=…,v1=…`, HMAC-SHA256 of
//! `"{t}.{body}"` with the endpoint secret); [`wechat::notification`] (the resource encrypted
//! with AES-256-GCM under the API v3 key) posted with the `Wechatpay-Timestamp/-Nonce/-Signature/
//! -Serial` headers (RSA-SHA256 of `"timestamp\nnonce\nbody\n"` with the platform key). [`Sign`]
//! says how a delivery is signed: validly, or each of the ways a forged or replayed one is.
//!
//! Test code: it unwraps and panics on purpose.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::missing_panics_doc
)]

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    KeyPair as _, RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_SHA256, RsaKeyPair, UnparsedPublicKey,
};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::{Answer, Settings, TestApp, b64, secret_file, spawn_app_in, unix_now};

/// The Stripe secret API key the server is configured with (the fake checks it).
pub const STRIPE_SECRET_KEY: &str = "sk_test_e2e_51NblepayE2E0123456789abcdef";
/// The webhook endpoint's signing secret.
pub const STRIPE_WEBHOOK_SECRET: &str = "whsec_e2e_5c4f1b2a9e8d7c6b5a4f3e2d1c0b9a8f";
/// A second, older endpoint secret, configured too (as while a secret is rolled).
pub const STRIPE_OLD_WEBHOOK_SECRET: &str = "whsec_e2e_0ld0ld0ld0ld0ld0ld0ld0ld0ld0ld0l";
/// A secret the server does not know.
pub const STRIPE_FOREIGN_SECRET: &str = "whsec_e2e_f0re1gnf0re1gnf0re1gnf0re1gnf0r";

pub const WECHAT_MCHID: &str = "1900000109";
pub const WECHAT_APPID: &str = "wxd678efh567hg6787";
/// The API v3 key: 32 ASCII characters.
pub const WECHAT_API_V3_KEY: &str = "e2eApiV3Key0123456789abcdefGHIJK";
/// The merchant API certificate's serial.
pub const WECHAT_MERCHANT_SERIAL: &str = "3775B6A45ACD588826D15E583A95F5DD2C0B1E4F";
/// The platform's verification key, in WeChat Pay's "public key" mode (an SPKI PEM).
pub const WECHAT_PLATFORM_KEY_ID: &str = "PUB_KEY_ID_0119000001092026120700000000000001";
pub const WECHAT_NOTIFY_URL: &str = "https://blepay.example/v1/webhooks/wechatpay";
/// The `Authorization` / `Wechatpay-Signature-Type` scheme of API v3.
pub const WECHAT_SCHEME: &str = "WECHATPAY2-SHA256-RSA2048";

// ---------------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------------

/// The RSA-2048 keys of the test run: the merchant's (signs requests and app parameters), the
/// platform's (signs answers and notifications), and a stranger's (signs forgeries).
pub struct TestKeys {
    pub merchant: RsaKeyPair,
    pub merchant_pkcs8_pem: String,
    pub platform: RsaKeyPair,
    pub platform_spki_pem: String,
    pub stranger: RsaKeyPair,
}

impl std::fmt::Debug for TestKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TestKeys")
    }
}

/// PEM armour for `der` under `label`, 64 characters a line.
pub fn pem(label: &str, der: &[u8]) -> String {
    let text = b64(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in text.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

/// Generated once per test binary.
pub fn test_keys() -> &'static TestKeys {
    static KEYS: OnceLock<TestKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let generate = || RsaKeyPair::generate(KeySize::Rsa2048).expect("RSA-2048 key");
        let merchant = generate();
        let platform = generate();
        let merchant_pkcs8_pem = pem(
            "PRIVATE KEY",
            AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&merchant)
                .expect("PKCS#8")
                .as_ref(),
        );
        let platform_spki_pem = pem(
            "PUBLIC KEY",
            AsDer::<aws_lc_rs::encoding::PublicKeyX509Der>::as_der(platform.public_key())
                .expect("SPKI")
                .as_ref(),
        );
        TestKeys {
            merchant,
            merchant_pkcs8_pem,
            platform,
            platform_spki_pem,
            stranger: generate(),
        }
    })
}

/// RSA-SHA256 (PKCS#1 v1.5) of `message` with `key`, base64.
pub fn rsa_sign(key: &RsaKeyPair, message: &[u8]) -> String {
    let mut sig = vec![0u8; key.public_modulus_len()];
    key.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), message, &mut sig)
        .expect("RSA signature");
    b64(&sig)
}

/// Whether `signature_b64` is `key`'s RSA-SHA256 signature of `message`.
pub fn rsa_verifies(key: &RsaKeyPair, message: &[u8], signature_b64: &str) -> bool {
    let Ok(sig) = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, signature_b64)
    else {
        return false;
    };
    UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, key.public_key().as_ref())
        .verify(message, &sig)
        .is_ok()
}

fn random_hex(bytes: usize) -> String {
    hex::encode(
        (0..bytes)
            .map(|_| rand::random::<u8>())
            .collect::<Vec<u8>>(),
    )
}

fn random_alnum(n: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..n)
        .map(|_| char::from(ALPHABET[usize::from(rand::random::<u8>()) % ALPHABET.len()]))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// How a delivery is signed
// ---------------------------------------------------------------------------------------------

/// How a notification is signed when it is delivered.
#[derive(Debug, Clone)]
pub enum Sign {
    /// As the provider signs it, now (Stripe: the current endpoint secret).
    Valid,
    /// Stripe only: with the older of the two configured endpoint secrets (a secret being
    /// rolled). WeChat Pay: as `Valid`.
    OldSecret,
    /// Validly, but 400 s ago (the tolerance is 300 s).
    Stale,
    /// By someone else: another Stripe secret; another RSA key under the platform key's id.
    WrongKey,
    /// WeChat Pay only: a `Wechatpay-Serial` the server does not know.
    UnknownSerial,
    /// No signature header at all.
    Missing,
    /// A valid signature of *these* bytes, while another body is sent: a tampered body.
    SignedFor(Vec<u8>),
}

// ---------------------------------------------------------------------------------------------
// The fake provider APIs
// ---------------------------------------------------------------------------------------------

/// One request a fake provider received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Received {
    /// A header's value ("" when absent).
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }

    /// The form-encoded body (Stripe), by name.
    pub fn form(&self) -> BTreeMap<String, String> {
        form_urlencoded::parse(&self.body).into_owned().collect()
    }

    /// The JSON body (WeChat Pay).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON request body")
    }
}

#[derive(Debug, Default)]
struct FakeState {
    received: Mutex<Vec<Received>>,
    /// Answer refund requests with a definite refusal (HTTP 400).
    refuse_refunds: AtomicBool,
    /// The status refunds are answered with (Stripe `pending`, WeChat Pay `PROCESSING` unless
    /// set).
    refund_status: Mutex<Option<String>>,
    /// Stripe: the answer saved under each `Idempotency-Key`; WeChat Pay: the `prepay_id` of
    /// each `out_trade_no`.
    saved: Mutex<HashMap<String, (StatusCode, Value)>>,
}

/// A fake provider API on `127.0.0.1`: what it received, and how it answers refunds.
#[derive(Debug, Clone)]
pub struct FakeProvider {
    /// `http://127.0.0.1:PORT`, the provider document's `apiBase`.
    pub base: String,
    state: Arc<FakeState>,
    _server: Arc<AbortOnDrop>,
}

#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl FakeProvider {
    async fn start(router: Router<Arc<FakeState>>) -> Self {
        let state = Arc::new(FakeState::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a fake provider");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let app = router.with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            base,
            state,
            _server: Arc::new(AbortOnDrop(task)),
        }
    }

    /// Every request received on `path`, oldest first.
    pub fn received(&self, path: &str) -> Vec<Received> {
        self.state
            .received
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// From now on, refuse (`true`) or accept refund requests.
    pub fn refuse_refunds(&self, refuse: bool) {
        self.state.refuse_refunds.store(refuse, Ordering::SeqCst);
    }

    /// From now on, answer accepted refunds with `status` (Stripe `succeeded`; WeChat Pay
    /// `SUCCESS`...).
    pub fn answer_refunds_with(&self, status: &str) {
        *self.state.refund_status.lock().unwrap() = Some(status.to_owned());
    }

    fn record(state: &FakeState, method: Method, uri: &Uri, headers: &HeaderMap, body: &Bytes) {
        state.received.lock().unwrap().push(Received {
            method,
            path: uri.path().to_owned(),
            headers: headers.clone(),
            body: body.to_vec(),
        });
    }
}

// --- Stripe -----------------------------------------------------------------------------------

fn stripe_error(status: StatusCode, kind: &str, code: &str, message: &str) -> (StatusCode, Value) {
    (
        status,
        json!({"error": {"type": kind, "code": code, "message": message,
                         "request_log_url": "https://dashboard.stripe.com/test/logs/req_e2e"}}),
    )
}

fn stripe_answer(
    state: &FakeState,
    headers: &HeaderMap,
    answer: impl FnOnce() -> (StatusCode, Value),
) -> Response {
    let authorized = headers
        .get("authorization")
        .is_some_and(|v| v.as_bytes() == format!("Bearer {STRIPE_SECRET_KEY}").as_bytes());
    let (status, body) = if authorized {
        let key = headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        match key {
            // Stripe saves the first answer under the key and replays it.
            Some(key) => state
                .saved
                .lock()
                .unwrap()
                .entry(key)
                .or_insert_with(answer)
                .clone(),
            None => answer(),
        }
    } else {
        stripe_error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "api_key_invalid",
            "Invalid API Key provided",
        )
    };
    let mut r = (status, axum::Json(body)).into_response();
    r.headers_mut()
        .insert("request-id", HeaderValue::from_static("req_e2e"));
    r
}

async fn stripe_payment_intents(
    State(state): State<Arc<FakeState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    FakeProvider::record(&state, method, &uri, &headers, &body);
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    stripe_answer(&state, &headers, || {
        let Some(amount) = form.get("amount").and_then(|a| a.parse::<i64>().ok()) else {
            return stripe_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "parameter_missing",
                "Missing required param: amount.",
            );
        };
        let id = format!("pi_3{}", random_alnum(23));
        let metadata: BTreeMap<String, String> = form
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix("metadata[")
                    .and_then(|k| k.strip_suffix(']'))
                    .map(|k| (k.to_owned(), v.clone()))
            })
            .collect();
        (
            StatusCode::OK,
            json!({
                "id": id,
                "object": "payment_intent",
                "amount": amount,
                "amount_capturable": 0,
                "amount_received": 0,
                "automatic_payment_methods": {"allow_redirects": "always", "enabled": true},
                "capture_method": "automatic_async",
                "client_secret": format!("{id}_secret_{}", random_alnum(25)),
                "confirmation_method": "automatic",
                "created": unix_now(),
                "currency": form.get("currency").cloned().unwrap_or_default(),
                "latest_charge": null,
                "livemode": false,
                "metadata": metadata,
                "payment_method": null,
                "payment_method_types": ["card"],
                "status": "requires_payment_method",
            }),
        )
    })
}

async fn stripe_refunds(
    State(state): State<Arc<FakeState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    FakeProvider::record(&state, method, &uri, &headers, &body);
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let refuse = state.refuse_refunds.load(Ordering::SeqCst);
    let status = state
        .refund_status
        .lock()
        .unwrap()
        .clone()
        .unwrap_or_else(|| "pending".into());
    stripe_answer(&state, &headers, || {
        if refuse {
            return stripe_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "charge_disputed",
                "This charge has been disputed and cannot be refunded.",
            );
        }
        let metadata: BTreeMap<String, String> = form
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix("metadata[")
                    .and_then(|k| k.strip_suffix(']'))
                    .map(|k| (k.to_owned(), v.clone()))
            })
            .collect();
        (
            StatusCode::OK,
            json!({
                "id": format!("re_3{}", random_alnum(23)),
                "object": "refund",
                "amount": form.get("amount").and_then(|a| a.parse::<i64>().ok()),
                "balance_transaction": null,
                "charge": format!("ch_3{}", random_alnum(23)),
                "created": unix_now(),
                "currency": "eur",
                "metadata": metadata,
                "payment_intent": form.get("payment_intent"),
                "reason": null,
                "status": status,
            }),
        )
    })
}

// --- WeChat Pay -------------------------------------------------------------------------------

/// The `Wechatpay-*` headers WeChat Pay signs an answer or a notification with.
pub fn wechat_signature_headers(body: &[u8], sign: &Sign) -> Vec<(&'static str, String)> {
    if matches!(sign, Sign::Missing) {
        return Vec::new();
    }
    let keys = test_keys();
    let timestamp = match sign {
        Sign::Stale => unix_now() - 400,
        _ => unix_now(),
    };
    let nonce = random_alnum(32);
    let signed_body = match sign {
        Sign::SignedFor(other) => other.as_slice(),
        _ => body,
    };
    let key = match sign {
        Sign::WrongKey => &keys.stranger,
        _ => &keys.platform,
    };
    let serial = match sign {
        Sign::UnknownSerial => "PUB_KEY_ID_0119000001092026120700000000009999",
        _ => WECHAT_PLATFORM_KEY_ID,
    };
    let signature = rsa_sign(
        key,
        &wechat::verify_message(&timestamp.to_string(), &nonce, signed_body),
    );
    vec![
        ("wechatpay-timestamp", timestamp.to_string()),
        ("wechatpay-nonce", nonce),
        ("wechatpay-signature", signature),
        ("wechatpay-serial", serial.to_owned()),
        ("wechatpay-signature-type", WECHAT_SCHEME.to_owned()),
    ]
}

fn wechat_answer(status: StatusCode, body: &Value) -> Response {
    let bytes = body.to_string().into_bytes();
    let mut r = (status, bytes.clone()).into_response();
    let h = r.headers_mut();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    h.insert(
        "request-id",
        HeaderValue::from_static("08F4E2A7B106B0E3C6F5A3C10000E2A4"),
    );
    for (name, value) in wechat_signature_headers(&bytes, &Sign::Valid) {
        h.insert(name, HeaderValue::from_str(&value).expect("a header value"));
    }
    r
}

fn wechat_error(status: StatusCode, code: &str, message: &str) -> Response {
    wechat_answer(status, &json!({"code": code, "message": message}))
}

/// The merchant's `Authorization` header verified as WeChat Pay does: the scheme, `mchid` and
/// `serial_no` ours, `signature` the merchant key's over
/// `"METHOD\npath\ntimestamp\nnonce_str\nbody\n"`.
pub fn wechat_authorization_verifies(
    method: &str,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> bool {
    let Some(auth) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some(params) = auth.strip_prefix(&format!("{WECHAT_SCHEME} ")) else {
        return false;
    };
    let fields = wechat::authorization_fields(params);
    let field = |k: &str| fields.get(k).map_or("", String::as_str);
    if field("mchid") != WECHAT_MCHID || field("serial_no") != WECHAT_MERCHANT_SERIAL {
        return false;
    }
    let mut message = format!(
        "{method}\n{path}\n{}\n{}\n",
        field("timestamp"),
        field("nonce_str")
    )
    .into_bytes();
    message.extend_from_slice(body);
    message.push(b'\n');
    rsa_verifies(&test_keys().merchant, &message, field("signature"))
}

async fn wechat_order(
    State(state): State<Arc<FakeState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    FakeProvider::record(&state, method.clone(), &uri, &headers, &body);
    if !wechat_authorization_verifies(method.as_str(), uri.path(), &headers, &body) {
        return wechat_error(StatusCode::UNAUTHORIZED, "SIGN_ERROR", "签名错误");
    }
    let Ok(order) = serde_json::from_slice::<Value>(&body) else {
        return wechat_error(StatusCode::BAD_REQUEST, "PARAM_ERROR", "请求体不是 JSON");
    };
    if order["appid"] != WECHAT_APPID || order["mchid"] != WECHAT_MCHID {
        return wechat_error(
            StatusCode::BAD_REQUEST,
            "APPID_MCHID_NOT_MATCH",
            "appid和mch_id不匹配",
        );
    }
    if order["amount"]["currency"] != "CNY" {
        return wechat_error(StatusCode::BAD_REQUEST, "PARAM_ERROR", "币种必须为 CNY");
    }
    let Some(out_trade_no) = order["out_trade_no"].as_str() else {
        return wechat_error(StatusCode::BAD_REQUEST, "PARAM_ERROR", "缺少 out_trade_no");
    };
    // The same out_trade_no is the same order: its prepay_id again.
    let (status, answer) = state
        .saved
        .lock()
        .unwrap()
        .entry(format!("order:{out_trade_no}"))
        .or_insert_with(|| {
            (
                StatusCode::OK,
                json!({"prepay_id": format!("wx{}{}", unix_now(), random_hex(12))}),
            )
        })
        .clone();
    wechat_answer(status, &answer)
}

async fn wechat_refund(
    State(state): State<Arc<FakeState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    FakeProvider::record(&state, method.clone(), &uri, &headers, &body);
    if !wechat_authorization_verifies(method.as_str(), uri.path(), &headers, &body) {
        return wechat_error(StatusCode::UNAUTHORIZED, "SIGN_ERROR", "签名错误");
    }
    if state.refuse_refunds.load(Ordering::SeqCst) {
        return wechat_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST", "订单已全额退款");
    }
    let Ok(refund) = serde_json::from_slice::<Value>(&body) else {
        return wechat_error(StatusCode::BAD_REQUEST, "PARAM_ERROR", "请求体不是 JSON");
    };
    let status = state
        .refund_status
        .lock()
        .unwrap()
        .clone()
        .unwrap_or_else(|| "PROCESSING".into());
    let amount = &refund["amount"];
    wechat_answer(
        StatusCode::OK,
        &json!({
            "refund_id": format!("50000{}", random_digits(24)),
            "out_refund_no": refund["out_refund_no"],
            "transaction_id": format!("42000{}", random_digits(23)),
            "out_trade_no": refund["out_trade_no"],
            "channel": "ORIGINAL",
            "user_received_account": "支付用户零钱",
            "create_time": "2026-12-07T15:00:00+08:00",
            "status": status,
            "funds_account": "AVAILABLE",
            "amount": {
                "total": amount["total"],
                "refund": amount["refund"],
                "payer_total": amount["total"],
                "payer_refund": amount["refund"],
                "settlement_refund": amount["refund"],
                "settlement_total": amount["total"],
                "discount_refund": 0,
                "currency": "CNY",
            },
        }),
    )
}

fn random_digits(n: usize) -> String {
    (0..n)
        .map(|_| char::from(b'0' + rand::random::<u8>() % 10))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The server with both providers
// ---------------------------------------------------------------------------------------------

/// Which providers the server offers, in which currency, with which limits.
#[derive(Debug, Clone)]
pub struct ProviderSetup {
    pub stripe: bool,
    pub wechatpay: bool,
    /// The deployment's currency (WeChat Pay's domestic API takes CNY only: its fake refuses
    /// orders in any other).
    pub currency: &'static str,
    pub topup_min: i64,
    pub topup_max: i64,
    pub wallet_max: i64,
}

impl Default for ProviderSetup {
    fn default() -> Self {
        use blepay_service::providers::config::{
            DEFAULT_TOPUP_MAX, DEFAULT_TOPUP_MIN, DEFAULT_WALLET_MAX,
        };
        Self {
            stripe: true,
            wechatpay: true,
            currency: "EUR",
            topup_min: DEFAULT_TOPUP_MIN,
            topup_max: DEFAULT_TOPUP_MAX,
            wallet_max: DEFAULT_WALLET_MAX,
        }
    }
}

impl ProviderSetup {
    /// Both providers, in CNY (what a WeChat Pay merchant's deployment uses).
    pub fn cny() -> Self {
        Self {
            currency: "CNY",
            ..Self::default()
        }
    }
}

/// The real server with its providers' fakes.
#[derive(Debug)]
pub struct ProviderApp {
    pub app: TestApp,
    pub stripe: FakeProvider,
    pub wechat: FakeProvider,
    /// The deployment's currency.
    pub currency: &'static str,
}

impl std::ops::Deref for ProviderApp {
    type Target = TestApp;
    fn deref(&self) -> &TestApp {
        &self.app
    }
}

/// The Stripe document of docs/topups.md, pointed at `api_base`.
pub fn stripe_document(api_base: &str) -> Value {
    json!({
        "secretKey": STRIPE_SECRET_KEY,
        "webhookSecrets": [STRIPE_WEBHOOK_SECRET, STRIPE_OLD_WEBHOOK_SECRET],
        "apiBase": api_base,
    })
}

/// The WeChat Pay document of docs/topups.md, pointed at `api_base`.
pub fn wechatpay_document(api_base: &str) -> Value {
    let keys = test_keys();
    json!({
        "mchid": WECHAT_MCHID,
        "appid": WECHAT_APPID,
        "apiV3Key": WECHAT_API_V3_KEY,
        "merchantPrivateKey": keys.merchant_pkcs8_pem,
        "merchantSerial": WECHAT_MERCHANT_SERIAL,
        "platformKeys": [{"id": WECHAT_PLATFORM_KEY_ID, "pem": keys.platform_spki_pem}],
        "notifyUrl": WECHAT_NOTIFY_URL,
        "apiBase": api_base,
    })
}

/// Start the fakes, then the real server configured with them (each document in a 0600 file,
/// as `blepay serve --stripe-file/--wechatpay-file` reads it).
pub async fn spawn_app_with_providers(setup: ProviderSetup) -> ProviderApp {
    use axum::routing::post;
    let stripe = FakeProvider::start(
        Router::new()
            .route("/v1/payment_intents", post(stripe_payment_intents))
            .route("/v1/refunds", post(stripe_refunds)),
    )
    .await;
    let wechat = FakeProvider::start(
        Router::new()
            .route("/v3/pay/transactions/app", post(wechat_order))
            .route("/v3/pay/transactions/jsapi", post(wechat_order))
            .route("/v3/refund/domestic/refunds", post(wechat_refund)),
    )
    .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let stripe_file = setup.stripe.then(|| {
        secret_file(
            dir.path(),
            "stripe.json",
            &stripe_document(&stripe.base).to_string(),
        )
    });
    let wechatpay_file = setup.wechatpay.then(|| {
        secret_file(
            dir.path(),
            "wechatpay.json",
            &wechatpay_document(&wechat.base).to_string(),
        )
    });
    let app = spawn_app_in(Settings::default(), dir, |args| blepay::args::ServeArgs {
        stripe_file,
        wechatpay_file,
        currency: setup.currency.to_owned(),
        topup_min: setup.topup_min,
        topup_max: setup.topup_max,
        wallet_max: setup.wallet_max,
        ..args
    })
    .await;
    ProviderApp {
        app,
        stripe,
        wechat,
        currency: setup.currency,
    }
}

impl ProviderApp {
    /// `POST /v1/topups` as `user`'s phone.
    pub async fn start_topup(&self, user: &str, provider: &str, amount: i64, key: &str) -> Answer {
        self.post(
            "/v1/topups",
            &self.token_for(user),
            &json!({"amount": amount, "provider": provider, "idempotencyKey": key}),
        )
        .await
    }

    /// `GET /v1/topups/{id}` as `user`'s phone.
    pub async fn user_topup(&self, user: &str, id: &str) -> Answer {
        self.get(&format!("/v1/topups/{id}"), &self.token_for(user))
            .await
    }

    /// `GET /v1/ops/topups?{query}` → the list.
    pub async fn ops_topups(&self, query: &str) -> Vec<Value> {
        let list = self
            .get(&format!("/v1/ops/topups?{query}"), &self.ops_token)
            .await
            .ok();
        list["topUps"].as_array().cloned().unwrap_or_default()
    }

    /// The top-up as operators see it (from `GET /v1/ops/topups?userId=…`).
    pub async fn ops_topup(&self, user: &str, id: &str) -> Value {
        self.ops_topups(&format!("userId={user}&limit=500"))
            .await
            .into_iter()
            .find(|t| t["topUpId"] == id)
            .unwrap_or_else(|| panic!("top-up {id} is not in {user}'s list"))
    }

    /// `POST /v1/ops/topups/{id}/refund` as the bootstrap owner.
    pub async fn refund_topup(&self, id: &str, amount: i64, key: &str) -> Answer {
        self.post(
            &format!("/v1/ops/topups/{id}/refund"),
            &self.ops_token,
            &json!({"amount": amount, "reason": "the user asked for the rest back", "idempotencyKey": key}),
        )
        .await
    }

    /// The request that delivers `body` to `/v1/webhooks/stripe`, signed as `sign` says.
    pub fn stripe_delivery(&self, body: &[u8], sign: &Sign) -> reqwest::RequestBuilder {
        let mut req = self
            .client
            .post(self.url("/v1/webhooks/stripe"))
            .header("content-type", "application/json; charset=utf-8")
            .header(
                "user-agent",
                "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
            )
            .body(body.to_vec());
        if let Some(header) = stripe::signature_header(body, sign) {
            req = req.header("stripe-signature", header);
        }
        req
    }

    /// POST `body` to `/v1/webhooks/stripe`, signed as `sign` says.
    pub async fn post_stripe(&self, body: &[u8], sign: &Sign) -> Answer {
        let r = self.stripe_delivery(body, sign).send().await;
        Answer::of(r.expect("POST /v1/webhooks/stripe")).await
    }

    /// A fresh Stripe event of `kind` about `object`, delivered validly signed → (the answer,
    /// the body, to deliver again).
    pub async fn stripe_notify(&self, kind: &str, object: Value) -> (Answer, Vec<u8>) {
        let body = stripe::event(kind, object);
        (self.post_stripe(&body, &Sign::Valid).await, body)
    }

    /// The request that delivers `body` to `/v1/webhooks/wechatpay`, signed as `sign` says.
    pub fn wechat_delivery(&self, body: &[u8], sign: &Sign) -> reqwest::RequestBuilder {
        let mut req = self
            .client
            .post(self.url("/v1/webhooks/wechatpay"))
            .header("content-type", "application/json")
            .header("user-agent", "Mozilla/4.0")
            .body(body.to_vec());
        for (name, value) in wechat_signature_headers(body, sign) {
            req = req.header(name, value);
        }
        req
    }

    /// POST `body` to `/v1/webhooks/wechatpay`, signed as `sign` says.
    pub async fn post_wechat(&self, body: &[u8], sign: &Sign) -> Answer {
        let r = self.wechat_delivery(body, sign).send().await;
        Answer::of(r.expect("POST /v1/webhooks/wechatpay")).await
    }

    /// A fresh WeChat Pay notification `event_type` with `resource` (encrypted), delivered
    /// validly signed → (the answer, the body, to deliver again).
    pub async fn wechat_notify(&self, event_type: &str, resource: &Value) -> (Answer, Vec<u8>) {
        let body = wechat::notification(event_type, resource);
        (self.post_wechat(&body, &Sign::Valid).await, body)
    }

    /// Send every request at once (as a provider's retries and parallel deliveries arrive)
    /// → their answers.
    pub async fn all_at_once(&self, requests: Vec<reqwest::RequestBuilder>) -> Vec<Answer> {
        let barrier = Arc::new(tokio::sync::Barrier::new(requests.len()));
        let mut set = tokio::task::JoinSet::new();
        for req in requests {
            let barrier = barrier.clone();
            set.spawn(async move {
                barrier.wait().await;
                Answer::of(req.send().await.expect("a concurrent delivery")).await
            });
        }
        set.join_all().await
    }
}

// ---------------------------------------------------------------------------------------------
// Stripe's events
// ---------------------------------------------------------------------------------------------

/// Stripe's events and objects, as its webhooks deliver them.
pub mod stripe {
    use super::{
        STRIPE_FOREIGN_SECRET, STRIPE_OLD_WEBHOOK_SECRET, STRIPE_WEBHOOK_SECRET, Sign, random_alnum,
    };
    use crate::unix_now;
    use serde_json::{Value, json};

    /// `hex(HMAC-SHA256(secret, "{t}.{body}"))`: Stripe's `v1` signature.
    pub fn v1_signature(secret: &str, t: u64, body: &[u8]) -> String {
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.as_bytes());
        let mut ctx = aws_lc_rs::hmac::Context::with_key(&key);
        ctx.update(t.to_string().as_bytes());
        ctx.update(b".");
        ctx.update(body);
        hex::encode(ctx.sign().as_ref())
    }

    /// The `Stripe-Signature` header for `body` signed as `sign` says (`None`: no header).
    pub fn signature_header(body: &[u8], sign: &Sign) -> Option<String> {
        let now = unix_now();
        let (secret, t, signed): (&str, u64, &[u8]) = match sign {
            Sign::Valid => (STRIPE_WEBHOOK_SECRET, now, body),
            Sign::UnknownSerial => panic!("Stripe signatures name no key serial"),
            Sign::OldSecret => (STRIPE_OLD_WEBHOOK_SECRET, now, body),
            Sign::Stale => (STRIPE_WEBHOOK_SECRET, now - 400, body),
            Sign::WrongKey => (STRIPE_FOREIGN_SECRET, now, body),
            Sign::SignedFor(other) => (STRIPE_WEBHOOK_SECRET, now, other.as_slice()),
            Sign::Missing => return None,
        };
        Some(format!("t={t},v1={}", v1_signature(secret, t, signed)))
    }

    /// An Event envelope of `kind` (`payment_intent.succeeded`...) about `object`, with a fresh
    /// `evt_…` id.
    pub fn event(kind: &str, object: Value) -> Vec<u8> {
        let mut event = json!({
            "id": format!("evt_3{}", random_alnum(23)),
            "object": "event",
            "api_version": "2026-09-30.endive",
            "created": unix_now(),
            "data": {},
            "livemode": false,
            "pending_webhooks": 1,
            "request": {"id": null, "idempotency_key": null},
            "type": kind,
        });
        event["data"]["object"] = object;
        serde_json::to_vec(&event).expect("JSON")
    }

    /// A PaymentIntent that succeeded: `amount_received` of `currency` (lowercase, as Stripe
    /// writes it), our top-up id in its metadata.
    pub fn payment_intent(pi: &str, topup_id: &str, amount: i64, currency: &str) -> Value {
        json!({
            "id": pi,
            "object": "payment_intent",
            "amount": amount,
            "amount_capturable": 0,
            "amount_received": amount,
            "client_secret": format!("{pi}_secret_{}", random_alnum(25)),
            "created": unix_now(),
            "currency": currency.to_ascii_lowercase(),
            "latest_charge": format!("ch_3{}", random_alnum(23)),
            "livemode": false,
            "metadata": {"blepay_topup_id": topup_id},
            "status": "succeeded",
        })
    }

    /// A PaymentIntent whose payment failed (`card_declined`).
    pub fn failed_payment_intent(pi: &str, topup_id: &str, amount: i64, currency: &str) -> Value {
        let mut v = payment_intent(pi, topup_id, amount, currency);
        v["amount_received"] = json!(0);
        v["status"] = json!("requires_payment_method");
        v["last_payment_error"] = json!({
            "type": "card_error", "code": "card_declined", "decline_code": "insufficient_funds",
            "message": "Your card has insufficient funds."
        });
        v
    }

    /// The Charge of PaymentIntent `pi` after refunds totalling `amount_refunded`.
    pub fn charge(pi: &str, amount: i64, amount_refunded: i64) -> Value {
        json!({
            "id": format!("ch_3{}", random_alnum(23)),
            "object": "charge",
            "amount": amount,
            "amount_captured": amount,
            "amount_refunded": amount_refunded,
            "captured": true,
            "currency": "eur",
            "paid": true,
            "payment_intent": pi,
            "refunded": amount_refunded == amount,
            "status": "succeeded",
        })
    }

    /// A Dispute of `amount` on PaymentIntent `pi`.
    pub fn dispute(pi: &str, amount: i64) -> Value {
        json!({
            "id": format!("du_1{}", random_alnum(23)),
            "object": "dispute",
            "amount": amount,
            "charge": format!("ch_3{}", random_alnum(23)),
            "currency": "eur",
            "payment_intent": pi,
            "reason": "fraudulent",
            "status": "needs_response",
        })
    }

    /// A Refund of our refund `refund_id` on `pi`, in `status` (`succeeded`, `failed`...).
    pub fn refund(pi: &str, refund_id: &str, amount: i64, status: &str) -> Value {
        json!({
            "id": format!("re_3{}", random_alnum(23)),
            "object": "refund",
            "amount": amount,
            "currency": "eur",
            "metadata": {"blepay_refund_id": refund_id},
            "payment_intent": pi,
            "status": status,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// WeChat Pay's notifications
// ---------------------------------------------------------------------------------------------

/// WeChat Pay API v3's notifications ("支付通知", "退款结果通知").
pub mod wechat {
    use super::{WECHAT_API_V3_KEY, WECHAT_APPID, WECHAT_MCHID, random_alnum, random_digits};
    use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
    use serde_json::{Value, json};
    use std::collections::HashMap;

    /// What WeChat Pay signs an answer or a notification over: `"timestamp\nnonce\nbody\n"`.
    pub fn verify_message(timestamp: &str, nonce: &str, body: &[u8]) -> Vec<u8> {
        let mut m = format!("{timestamp}\n{nonce}\n").into_bytes();
        m.extend_from_slice(body);
        m.push(b'\n');
        m
    }

    /// The `key="value"` pairs of an `Authorization` header after its scheme.
    pub fn authorization_fields(params: &str) -> HashMap<String, String> {
        params
            .split(',')
            .filter_map(|kv| kv.trim().split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
            .collect()
    }

    /// `resource` encrypted as WeChat Pay does: AES-256-GCM with the API v3 key, a 12-character
    /// nonce, `associated_data` → `{algorithm, ciphertext (base64 of ciphertext‖tag), nonce,
    /// associated_data, original_type}`.
    pub fn encrypt(resource: &Value, original_type: &str) -> Value {
        let nonce = random_alnum(12);
        let associated_data = original_type;
        let key = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, WECHAT_API_V3_KEY.as_bytes()).expect("AES-256 key"),
        );
        let mut buf = serde_json::to_vec(resource).expect("JSON");
        key.seal_in_place_append_tag(
            Nonce::try_assume_unique_for_key(nonce.as_bytes()).expect("12-byte nonce"),
            Aad::from(associated_data.as_bytes()),
            &mut buf,
        )
        .expect("seal");
        json!({
            "algorithm": "AEAD_AES_256_GCM",
            "ciphertext": crate::b64(&buf),
            "associated_data": associated_data,
            "original_type": original_type,
            "nonce": nonce,
        })
    }

    /// A notification body: the envelope `{id, create_time, resource_type, event_type, summary,
    /// resource}` around `resource`, encrypted.
    pub fn notification(event_type: &str, resource: &Value) -> Vec<u8> {
        let (original_type, summary) = if event_type.starts_with("REFUND.") {
            ("refund", "退款成功")
        } else {
            ("transaction", "支付成功")
        };
        serde_json::to_vec(&json!({
            "id": format!("EV-{}", random_digits(18)),
            "create_time": "2026-12-07T15:00:00+08:00",
            "resource_type": "encrypt-resource",
            "event_type": event_type,
            "summary": summary,
            "resource": encrypt(resource, original_type),
        }))
        .expect("JSON")
    }

    /// A fresh WeChat Pay `transaction_id`.
    pub fn transaction_id() -> String {
        format!("42000{}", random_digits(23))
    }

    /// A paid transaction ("支付通知"'s resource): `out_trade_no` = our top-up id.
    pub fn transaction(
        out_trade_no: &str,
        transaction_id: &str,
        total: i64,
        currency: &str,
    ) -> Value {
        json!({
            "mchid": WECHAT_MCHID,
            "appid": WECHAT_APPID,
            "out_trade_no": out_trade_no,
            "transaction_id": transaction_id,
            "trade_type": "APP",
            "trade_state": "SUCCESS",
            "trade_state_desc": "支付成功",
            "bank_type": "OTHERS",
            "attach": "",
            "success_time": "2026-12-07T15:00:00+08:00",
            "payer": {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
            "amount": {"total": total, "payer_total": total, "currency": currency, "payer_currency": currency},
        })
    }

    /// A successful refund ("退款结果通知"'s resource) of `refund` of a `total` top-up;
    /// `out_refund_no` = our refund id (or another merchant-side number).
    pub fn refund(
        out_trade_no: &str,
        out_refund_no: &str,
        refund_id: &str,
        refund: i64,
        total: i64,
    ) -> Value {
        json!({
            "mchid": WECHAT_MCHID,
            "out_trade_no": out_trade_no,
            "transaction_id": transaction_id(),
            "out_refund_no": out_refund_no,
            "refund_id": refund_id,
            "refund_status": "SUCCESS",
            "success_time": "2026-12-07T15:05:00+08:00",
            "user_received_account": "支付用户零钱",
            "amount": {"total": total, "refund": refund, "payer_total": total, "payer_refund": refund},
        })
    }

    /// A fresh WeChat Pay `refund_id`.
    pub fn refund_id() -> String {
        format!("50000{}", random_digits(24))
    }
}
