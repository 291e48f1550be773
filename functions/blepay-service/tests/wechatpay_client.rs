//! The WeChat Pay API v3 client against a loopback fixture server that records every request
//! and answers recorded bodies (tests/fixtures/wechatpay/*.json) signed with a test platform
//! key. Keys are generated per run (rcgen with aws-lc-rs, RSA-2048): no key is committed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    KeyPair, RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_SHA256, RsaKeyPair, UnparsedPublicKey,
};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use blepay_core::{Amount, Currency, IdempotencyKey, Provider, UserId};
use blepay_service::config::SecretString;
use blepay_service::providers::http::Outbound;
use blepay_service::providers::wechatpay::{
    WechatPay, WechatPaySettings, app_sign_message, jsapi_sign_message, request_sign_message,
    verify_sign_message,
};
use blepay_service::providers::{ProviderError, RefundAnswer};
use blepay_store::{
    ProviderTopUp, Reason, TopUpId, TopUpRefund, TopUpRefundId, TopUpRefundStatus, TopUpStatus,
};
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject;

const MCHID: &str = "1900000109";
const APPID: &str = "wxd678efh567hg6787";
const MERCHANT_SERIAL: &str = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1";
const PUB_KEY_ID: &str = "PUB_KEY_ID_0114232134912410000000000001";
const TOPUP: &str = "00112233445566778899aabbccddeeff";
const REFUND: &str = "ffeeddccbbaa99887766554433221100";

const ORDER_ANSWER: &str = include_str!("fixtures/wechatpay/order_answer.json");
const REFUND_ANSWER: &str = include_str!("fixtures/wechatpay/refund_answer.json");
const ERROR_ANSWER: &str = include_str!("fixtures/wechatpay/error_answer.json");

/// PEMs: the merchant key pair (PKCS#8), the platform key pair and its public key (SPKI).
#[allow(clippy::struct_field_names)]
struct Pems {
    merchant_pem: String,
    platform_pem: String,
    platform_spki_pem: String,
}

fn keys() -> &'static Pems {
    static KEYS: OnceLock<Pems> = OnceLock::new();
    KEYS.get_or_init(|| {
        let rsa = || rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        let (merchant, platform) = (rsa(), rsa());
        Pems {
            merchant_pem: merchant.serialize_pem(),
            platform_pem: platform.serialize_pem(),
            platform_spki_pem: platform.public_key_pem(),
        }
    })
}

fn key_pair(pem: &str) -> RsaKeyPair {
    let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).unwrap();
    RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).unwrap()
}

fn sign(pem: &str, message: &[u8]) -> String {
    let kp = key_pair(pem);
    let mut sig = vec![0; kp.public_modulus_len()];
    kp.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), message, &mut sig)
        .unwrap();
    B64.encode(sig)
}

/// Whether `signature` (base64) over `message` verifies with the merchant's public key.
fn merchant_signed(message: &[u8], signature: &str) -> bool {
    let kp = key_pair(&keys().merchant_pem);
    let public = UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, kp.public_key().as_ref());
    let Ok(sig) = B64.decode(signature) else {
        return false;
    };
    public.verify(message, &sig).is_ok()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// How the fixture server signs an answer.
#[derive(Clone, Copy)]
enum Signing {
    Platform,
    /// Signed, but by a key that is not the platform's.
    WrongKey,
    Unsigned,
}

#[derive(Clone)]
struct Scripted {
    status: u16,
    body: &'static str,
    signing: Signing,
}

fn answer(status: u16, body: &'static str) -> Scripted {
    Scripted {
        status,
        body,
        signing: Signing::Platform,
    }
}

#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    path: String,
    authorization: String,
    user_agent: Option<String>,
    body: Vec<u8>,
}

#[derive(Clone, Default)]
struct Fixture {
    script: Arc<Mutex<VecDeque<Scripted>>>,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl Fixture {
    fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

/// A loopback server answering `script` in order (then 500s); the client pointed at it.
async fn serve(script: Vec<Scripted>) -> (WechatPay, Fixture) {
    let fixture = Fixture {
        script: Arc::new(Mutex::new(script.into())),
        ..Fixture::default()
    };
    let f = fixture.clone();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let f = f.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = http_body_util::BodyExt::collect(body)
                .await
                .unwrap()
                .to_bytes()
                .to_vec();
            let header =
                |n: http::HeaderName| parts.headers.get(n).map(|v| v.to_str().unwrap().to_owned());
            f.requests.lock().unwrap().push(Recorded {
                method: parts.method.to_string(),
                path: parts.uri.path().to_owned(),
                authorization: header(http::header::AUTHORIZATION).unwrap_or_default(),
                user_agent: header(http::header::USER_AGENT),
                body,
            });
            let next = f.script.lock().unwrap().pop_front().unwrap_or(Scripted {
                status: 500,
                body: r#"{"code":"SYSTEM_ERROR","message":"系统错误"}"#,
                signing: Signing::Unsigned,
            });
            let mut res = http::Response::builder()
                .status(next.status)
                .header("content-type", "application/json");
            let (ts, nonce) = (now().to_string(), "d824f2e086d3c1df967785d13fcd22ef");
            let message = verify_sign_message(&ts, nonce, next.body.as_bytes());
            let pem = match next.signing {
                Signing::Platform => Some(keys().platform_pem.as_str()),
                Signing::WrongKey => Some(keys().merchant_pem.as_str()),
                Signing::Unsigned => None,
            };
            if let Some(pem) = pem {
                res = res
                    .header("Wechatpay-Timestamp", ts)
                    .header("Wechatpay-Nonce", nonce)
                    .header("Wechatpay-Signature", sign(pem, &message))
                    .header("Wechatpay-Serial", PUB_KEY_ID)
                    .header("Wechatpay-Signature-Type", "WECHATPAY2-SHA256-RSA2048");
            }
            res.body(axum::body::Body::from(next.body)).unwrap()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let settings = WechatPaySettings {
        mchid: MCHID.into(),
        appid: APPID.into(),
        api_v3_key: SecretString::new("0123456789abcdefghijklmnopqrstuv".into()),
        merchant_private_key_pem: SecretString::new(keys().merchant_pem.clone()),
        merchant_serial: MERCHANT_SERIAL.into(),
        platform_keys: vec![(PUB_KEY_ID.into(), keys().platform_spki_pem.clone())],
        notify_url: "https://blepay.example/v1/providers/wechatpay/notify".into(),
        api_base: format!("http://{addr}"),
    };
    let outbound = Outbound::new(Duration::from_secs(5)).unwrap();
    (WechatPay::new(settings, outbound).unwrap(), fixture)
}

fn topup() -> ProviderTopUp {
    ProviderTopUp {
        id: TopUpId::parse(TOPUP).unwrap(),
        user: UserId::parse("alice").unwrap(),
        provider: Provider::WechatPay,
        amount: Amount::new(500).unwrap(),
        currency: Currency::parse("CNY").unwrap(),
        status: TopUpStatus::Succeeded,
        key: IdempotencyKey::parse("k1").unwrap(),
        provider_ref: Some("wx26112221580621e9b071c00d9e093b0000".into()),
        client_secret: None,
        transaction_id: Some("1217752501201407033233368018".into()),
        created_at: 1,
        updated_at: 1,
        credited: Amount::new(500).unwrap(),
        provider_refunded: Amount::ZERO,
        disputed: Amount::ZERO,
        refunds_committed: Amount::ZERO,
        debited: Amount::ZERO,
        mismatch: None,
        failure: None,
    }
}

fn a_refund() -> TopUpRefund {
    TopUpRefund {
        id: TopUpRefundId::parse(REFUND).unwrap(),
        topup: TopUpId::parse(TOPUP).unwrap(),
        amount: Amount::new(200).unwrap(),
        reason: Reason::parse("machine out of order").unwrap(),
        actor: "ops@example.com".into(),
        key: IdempotencyKey::parse("r1").unwrap(),
        status: TopUpRefundStatus::Requested,
        failure: None,
        created_at: 2,
        updated_at: 2,
    }
}

/// The `Authorization` header's fields, checking its exact shape:
/// `WECHATPAY2-SHA256-RSA2048 mchid="…",nonce_str="…",signature="…",timestamp="…",serial_no="…"`.
fn authorization_fields(header: &str) -> Vec<(String, String)> {
    let rest = header
        .strip_prefix("WECHATPAY2-SHA256-RSA2048 ")
        .expect("scheme");
    let fields: Vec<(String, String)> = rest
        .split(',')
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            let v = v.strip_prefix('"').unwrap().strip_suffix('"').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect();
    let names: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        ["mchid", "nonce_str", "signature", "timestamp", "serial_no"]
    );
    fields
}

/// The request's Authorization header names us, is fresh, and its signature over
/// `"METHOD\npath\ntimestamp\nnonce\nbody\n"` verifies with the merchant's public key.
fn assert_signed_request(r: &Recorded) {
    let f = authorization_fields(&r.authorization);
    let field = |n: &str| f.iter().find(|(k, _)| k == n).unwrap().1.clone();
    assert_eq!(field("mchid"), MCHID);
    assert_eq!(field("serial_no"), MERCHANT_SERIAL);
    assert_eq!(field("nonce_str").len(), 32);
    let ts: u64 = field("timestamp").parse().unwrap();
    assert!(ts.abs_diff(now()) < 600);
    let message = request_sign_message(&r.method, &r.path, ts, &field("nonce_str"), &r.body);
    assert!(merchant_signed(&message, &field("signature")));
    // The same signature over another body does not verify.
    let other = request_sign_message(&r.method, &r.path, ts, &field("nonce_str"), b"{}");
    assert!(!merchant_signed(&other, &field("signature")));
    assert!(r.user_agent.is_some(), "WeChat Pay requires a User-Agent");
}

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap()
}

#[tokio::test]
async fn an_app_order_is_a_signed_post_and_answers_signed_app_parameters() {
    // Arrange
    let (wechat, fixture) = serve(vec![answer(200, ORDER_ANSWER)]).await;

    // Act
    let order = wechat
        .create_order(&topup(), "blepay wallet top-up", None)
        .await
        .unwrap();

    // Assert: the request
    let requests = fixture.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/v3/pay/transactions/app");
    assert_eq!(
        json(&r.body),
        serde_json::json!({
            "appid": APPID, "mchid": MCHID, "description": "blepay wallet top-up",
            "out_trade_no": TOPUP,
            "notify_url": "https://blepay.example/v1/providers/wechatpay/notify",
            "amount": {"total": 500, "currency": "CNY"}
        })
    );
    assert_signed_request(r);

    // Assert: the answer and the app's parameters ("APP调起支付")
    assert_eq!(order.prepay_id, "wx26112221580621e9b071c00d9e093b0000");
    let c = &order.client;
    let mut names: Vec<&str> = c.as_object().unwrap().keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "appid",
            "noncestr",
            "package",
            "partnerid",
            "prepayid",
            "sign",
            "timestamp"
        ]
    );
    assert_eq!(c["appid"], APPID);
    assert_eq!(c["partnerid"], MCHID);
    assert_eq!(c["prepayid"], order.prepay_id.as_str());
    assert_eq!(c["package"], "Sign=WXPay");
    let s = |k: &str| c[k].as_str().unwrap().to_owned();
    let message = app_sign_message(APPID, &s("timestamp"), &s("noncestr"), &order.prepay_id);
    assert!(merchant_signed(&message, &s("sign")));
}

#[tokio::test]
async fn a_jsapi_order_names_the_payer_and_answers_signed_jsapi_parameters() {
    let (wechat, fixture) = serve(vec![answer(200, ORDER_ANSWER)]).await;

    let order = wechat
        .create_order(&topup(), "top-up", Some("oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"))
        .await
        .unwrap();

    let r = &fixture.requests()[0];
    assert_eq!(r.path, "/v3/pay/transactions/jsapi");
    assert_eq!(
        json(&r.body)["payer"],
        serde_json::json!({"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"})
    );
    assert_signed_request(r);
    let c = &order.client;
    assert_eq!(c.as_object().unwrap().len(), 6);
    assert_eq!(c["appId"], APPID);
    assert_eq!(
        c["package"],
        "prepay_id=wx26112221580621e9b071c00d9e093b0000"
    );
    assert_eq!(c["signType"], "RSA");
    let s = |k: &str| c[k].as_str().unwrap().to_owned();
    let message = jsapi_sign_message(APPID, &s("timeStamp"), &s("nonceStr"), &s("package"));
    assert!(merchant_signed(&message, &s("paySign")));
}

#[tokio::test]
async fn client_params_for_an_existing_prepay_id_are_signed_afresh() {
    let (wechat, fixture) = serve(vec![]).await;
    let prepay = "wx26112221580621e9b071c00d9e093b0000";

    let app = wechat.client_params(prepay, false, 1_700_000_000).unwrap();
    let again = wechat.client_params(prepay, false, 1_700_000_001).unwrap();
    let jsapi = wechat.client_params(prepay, true, 1_700_000_000).unwrap();

    assert!(fixture.requests().is_empty(), "no new order");
    assert_eq!(app["timestamp"], "1700000000");
    assert_ne!(app["noncestr"], again["noncestr"]);
    let s = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap().to_owned();
    assert!(merchant_signed(
        &app_sign_message(APPID, "1700000000", &s(&app, "noncestr"), prepay),
        &s(&app, "sign")
    ));
    assert_eq!(jsapi["timeStamp"], "1700000000");
    assert!(merchant_signed(
        &jsapi_sign_message(
            APPID,
            "1700000000",
            &s(&jsapi, "nonceStr"),
            &format!("prepay_id={prepay}")
        ),
        &s(&jsapi, "paySign")
    ));
}

#[tokio::test]
async fn an_answer_not_signed_by_the_platform_is_a_bad_answer() {
    for signing in [Signing::WrongKey, Signing::Unsigned] {
        let (wechat, _) = serve(vec![Scripted {
            status: 200,
            body: ORDER_ANSWER,
            signing,
        }])
        .await;
        let err = wechat
            .create_order(&topup(), "top-up", None)
            .await
            .unwrap_err();
        assert!(matches!(err, ProviderError::BadAnswer(_)), "{err:?}");
    }
}

#[tokio::test]
async fn a_4xx_error_json_is_a_refusal_with_its_code() {
    let (wechat, fixture) = serve(vec![answer(400, ERROR_ANSWER)]).await;

    let err = wechat
        .create_order(&topup(), "top-up", None)
        .await
        .unwrap_err();

    assert_eq!(
        err,
        ProviderError::Refused {
            status: 400,
            code: "PARAM_ERROR".into(),
            message: "参数错误".into()
        }
    );
    assert_eq!(fixture.requests().len(), 1, "a refusal is not retried");

    // An unsigned refusal is still a refusal (only a 2xx must be signed); a 4xx without the
    // error JSON is unusable.
    let (wechat, _) = serve(vec![Scripted {
        status: 401,
        body: r#"{"code":"SIGN_ERROR","message":"签名错误"}"#,
        signing: Signing::Unsigned,
    }])
    .await;
    let err = wechat.refund(&topup(), &a_refund()).await.unwrap_err();
    assert!(
        matches!(err, ProviderError::Refused { status: 401, ref code, .. } if code == "SIGN_ERROR")
    );
    let (wechat, _) = serve(vec![answer(404, "not found")]).await;
    let err = wechat.refund(&topup(), &a_refund()).await.unwrap_err();
    assert!(matches!(err, ProviderError::BadAnswer(_)), "{err:?}");
}

#[tokio::test]
async fn server_errors_are_retried_three_times_then_unreachable() {
    let (wechat, fixture) = serve(vec![]).await; // every answer a 500

    let err = wechat.refund(&topup(), &a_refund()).await.unwrap_err();

    assert!(matches!(err, ProviderError::Unreachable(_)), "{err:?}");
    let requests = fixture.requests();
    assert_eq!(requests.len(), 3);
    // Each attempt is the same refund, signed afresh.
    assert!(requests.iter().all(|r| r.body == requests[0].body));
    assert_ne!(requests[0].authorization, requests[1].authorization);
}

#[tokio::test]
async fn a_server_error_then_an_answer_succeeds_on_the_retry() {
    let (wechat, fixture) = serve(vec![
        Scripted {
            status: 503,
            body: "",
            signing: Signing::Unsigned,
        },
        answer(200, ORDER_ANSWER),
    ])
    .await;

    let order = wechat.create_order(&topup(), "top-up", None).await.unwrap();

    assert_eq!(order.prepay_id, "wx26112221580621e9b071c00d9e093b0000");
    assert_eq!(fixture.requests().len(), 2);
}

#[tokio::test]
async fn a_refund_is_a_signed_post_and_its_status_maps_to_the_answer() {
    let (wechat, fixture) = serve(vec![answer(200, REFUND_ANSWER)]).await;

    let got = wechat.refund(&topup(), &a_refund()).await.unwrap();

    assert_eq!(got, RefundAnswer::Pending);
    let r = &fixture.requests()[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/v3/refund/domestic/refunds");
    assert_eq!(
        json(&r.body),
        serde_json::json!({
            "out_trade_no": TOPUP, "out_refund_no": REFUND, "reason": "machine out of order",
            "notify_url": "https://blepay.example/v1/providers/wechatpay/notify",
            "amount": {"refund": 200, "total": 500, "currency": "CNY"}
        })
    );
    assert_signed_request(r);
}

#[tokio::test]
async fn each_refund_status_maps_to_its_answer() {
    // Leaked: each case's body must be 'static for the fixture server.
    let with_status = |s: &str| -> &'static str {
        Box::leak(
            REFUND_ANSWER
                .replace("\"PROCESSING\"", &format!("\"{s}\""))
                .into_boxed_str(),
        )
    };
    for (status, want) in [
        ("SUCCESS", Ok(RefundAnswer::Succeeded)),
        ("PROCESSING", Ok(RefundAnswer::Pending)),
        (
            "CLOSED",
            Ok(RefundAnswer::Failed("WeChat Pay refund CLOSED".into())),
        ),
        (
            "ABNORMAL",
            Ok(RefundAnswer::Failed("WeChat Pay refund ABNORMAL".into())),
        ),
        ("WHATEVER", Err(())),
    ] {
        let (wechat, _) = serve(vec![answer(200, with_status(status))]).await;
        let got = wechat.refund(&topup(), &a_refund()).await;
        match want {
            Ok(w) => assert_eq!(got, Ok(w), "{status}"),
            Err(()) => assert!(matches!(got, Err(ProviderError::BadAnswer(_))), "{status}"),
        }
    }
}
