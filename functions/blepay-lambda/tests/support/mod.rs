//! Shared test support: the recorded events, the store behind the routers, and calling a router
//! with an event the way `lambda_http::run` does.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use blepay_core::{DeviceId, KeyVersion, UserId};
use blepay_proto::{MasterKey, derive_device_key};
use blepay_service::config::Keyring;
use blepay_service::http::Surface;
use blepay_service::{App, Config};
use blepay_store::Store;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

/// The fixed clock of every recorded event: slot 59000000 of the protocol test vector.
pub const NOW: u64 = 1_770_000_000;
/// The Cognito user (`sub`) of the recorded phone events.
pub const USER: &str = "6f1c2e0a-3b4d-4e5f-8a9b-0c1d2e3f4a5b";
/// The protocol test vector's master key (bytes 0x00..0x1f), key version 0.
pub const MASTER_KEYS: &str = "0:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
/// The test vector's advert: device 0102030405060708, slot 59000000, use counter 7, flags 0.
pub const ADVERT_HEX: &str = "100102030405060708038444c0000700bb26231d83eba4fb";
pub const DEVICE: &str = "0102030405060708";

const JWT_SECRET: &str = "lambda-tests-jwt-secret-0123456789";
const OPS_TOKEN: &str = "lambda-tests-ops-token-0123456789";

pub fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A recorded event, as API Gateway sent it.
pub fn event(name: &str) -> String {
    let path = fixture_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Run an event through `router` exactly as `lambda_http::run` does — the event JSON in, the
/// response JSON the function hands back to API Gateway out (`statusCode`, `headers`, `body`,
/// `isBase64Encoded`).
pub async fn invoke(router: &Router, event: impl AsRef<str>) -> Value {
    let request: lambda_http::request::LambdaRequest =
        serde_json::from_str(event.as_ref()).expect("a valid API Gateway v2 event");
    let adapter = lambda_http::Adapter::from(router.clone());
    let response = adapter
        .oneshot(lambda_http::LambdaEvent::new(
            request,
            lambda_http::Context::default(),
        ))
        .await
        .expect("routers are infallible");
    serde_json::to_value(&response).expect("the response serializes")
}

/// Send an event through a router, as `lambda_http::run` does.
pub async fn call(router: &Router, event: impl AsRef<str>) -> axum::response::Response {
    let request =
        lambda_http::request::from_str(event.as_ref()).expect("a valid API Gateway v2 event");
    router
        .clone()
        .oneshot(request)
        .await
        .expect("routers are infallible")
}

pub async fn body_json(response: axum::response::Response) -> Value {
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("a body")
        .to_bytes();
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
}

/// The phone session event for `session_id`.
pub fn with_session_id(event: &str, session_id: &str) -> String {
    event.replace("SESSION_ID", session_id)
}

/// The event as if no authorizer ran (a local run): no authorizer context, and optionally a
/// bearer token in place of the recorded `Authorization` header.
pub fn without_authorizer(event: &str, bearer: Option<&str>) -> String {
    let mut e: Value = serde_json::from_str(event).expect("JSON");
    if let Some(ctx) = e["requestContext"].as_object_mut() {
        ctx.remove("authorizer");
    }
    if let Some(token) = bearer {
        e["headers"]["authorization"] = json!(format!("Bearer {token}"));
    }
    e.to_string()
}

/// The store behind the routers, and the app configuration the functions would build.
pub struct Backend {
    name: &'static str,
    app: App,
    _guard: Box<dyn std::any::Any + Send>,
}

impl Backend {
    /// Every real store, fresh: SQLite on a temporary file, and a new table on Amazon DynamoDB
    /// Local (started once per test binary; a missing DynamoDB Local fails the test, saying how
    /// to install it).
    pub async fn all() -> Vec<Self> {
        vec![Self::sqlite(), Self::dynamodb().await]
    }

    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store =
            blepay_sqlite::SqliteStore::open(&dir.path().join("blepay.db")).expect("sqlite");
        Self::with_store("sqlite", Arc::new(store), Box::new(dir))
    }

    pub async fn dynamodb() -> Self {
        let store = blepay_dynamodb::testing::fresh_store().await;
        Self::with_store("dynamodb", Arc::new(store), Box::new(()))
    }

    /// A fresh DynamoDB Local table, and the counter of the requests the store sends.
    pub async fn dynamodb_counted() -> (Self, blepay_dynamodb::RequestCounter) {
        let store = blepay_dynamodb::testing::fresh_store().await;
        let counter = store.request_counter();
        (
            Self::with_store("dynamodb", Arc::new(store), Box::new(())),
            counter,
        )
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    fn with_store(
        name: &'static str,
        store: Arc<dyn Store>,
        guard: Box<dyn std::any::Any + Send>,
    ) -> Self {
        let lambda_config = blepay_lambda::LambdaConfig::from_lookup(|k| match k {
            "BLEPAY_DYNAMODB_TABLE" => Some("unused-here".into()),
            "BLEPAY_JWT_SECRET" => Some(JWT_SECRET.into()),
            "BLEPAY_OPS_TOKEN" => Some(OPS_TOKEN.into()),
            _ => None,
        })
        .expect("config");
        let keyring = Keyring::parse(MASTER_KEYS).expect("keyring");
        let config: Config = blepay_lambda::init::service_config(&lambda_config, keyring);
        let app = App::new(config, store, Arc::new(|| NOW));
        eprintln!("-- on {name}");
        Self {
            name,
            app,
            _guard: guard,
        }
    }

    /// The router the function serving `surface` runs.
    pub fn router(&self, surface: Surface) -> Router {
        blepay_lambda::router(self.app.clone(), surface)
    }

    /// The ops function's router when only sessions of the role `operators` admits are operators.
    pub fn router_for(&self, surface: Surface, operators: blepay_lambda::OperatorRole) -> Router {
        blepay_lambda::router_for(self.app.clone(), surface, operators)
    }

    pub fn store(&self) -> &dyn Store {
        self.app.store().as_ref()
    }

    /// An HS256 phone token as `blepay serve` accepts (valid for an hour of real time).
    pub fn hs256_token(user: &str) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        blepay_service::auth::mint_token(JWT_SECRET, &UserId::parse(user).unwrap(), now, 3600)
            .unwrap()
    }

    pub fn ops_token() -> &'static str {
        OPS_TOKEN
    }
}

// ---------------------------------------------------------------------------------------------
// The recorded events (what `fixtures_are_what_the_protocol_makes` writes and checks)
// ---------------------------------------------------------------------------------------------

const API_ID: &str = "k3x9q2w7ab";
const ACCOUNT: &str = "123456789012";
const TIME: &str = "02/Feb/2026:02:40:00 +0000";
const POOL: &str = "us-east-1_Ab12Cd34E";
const CLIENT: &str = "4f7n1p3q5r7t9v1x3z5b7d9f1h";

fn host() -> String {
    format!("{API_ID}.execute-api.us-east-1.amazonaws.com")
}

fn jwt_authorizer() -> Value {
    json!({
        "jwt": {
            "claims": {
                "aud": CLIENT,
                "auth_time": "1769999400",
                "cognito:username": USER,
                "email": "ana@example.com",
                "email_verified": "true",
                "event_id": "5b0e4c1e-8f0a-4c59-9d7e-2d1f6a3b9c10",
                "exp": "1770003000",
                "iat": "1769999400",
                "iss": format!("https://cognito-idp.us-east-1.amazonaws.com/{POOL}"),
                "jti": "a3c1f0de-6b2a-4f8e-9c31-7d4e2b1a0f99",
                "origin_jti": "0e9d8c7b-6a5f-4e3d-2c1b-0a9f8e7d6c5b",
                "sub": USER,
                "token_use": "id"
            },
            "scopes": null
        }
    })
}

fn iam_authorizer() -> Value {
    json!({
        "iam": {
            "accessKey": "ASIAXEXAMPLEKEY12345",
            "accountId": ACCOUNT,
            "callerId": "AROAXEXAMPLEROLEID123:ops-alice",
            "cognitoIdentity": null,
            "principalOrgId": null,
            "userArn": format!("arn:aws:sts::{ACCOUNT}:assumed-role/blepay-operators/ops-alice"),
            "userId": "AROAXEXAMPLEROLEID123:ops-alice"
        }
    })
}

/// One recorded event. `route` is the gateway route key's path, `path` the raw path.
#[allow(clippy::too_many_arguments)]
fn api_event(
    method: &str,
    route: &str,
    path: &str,
    path_parameters: Option<Value>,
    authorization: Option<&str>,
    authorizer: Option<Value>,
    body: Option<(&str, String, bool)>,
    request_id: &str,
) -> Value {
    let mut headers = json!({
        "accept": "application/json",
        "host": host(),
        "user-agent": "blepay-app/1.4.0 (Android 14)",
        "x-amzn-trace-id": format!("Root=1-697fff10-{request_id}"),
        "x-forwarded-for": "203.0.113.7",
        "x-forwarded-port": "443",
        "x-forwarded-proto": "https"
    });
    if let Some(a) = authorization {
        headers["authorization"] = json!(a);
    }
    let mut context = json!({
        "accountId": ACCOUNT,
        "apiId": API_ID,
        "domainName": host(),
        "domainPrefix": API_ID,
        "http": {
            "method": method,
            "path": path,
            "protocol": "HTTP/1.1",
            "sourceIp": "203.0.113.7",
            "userAgent": "blepay-app/1.4.0 (Android 14)"
        },
        "requestId": request_id,
        "routeKey": format!("{method} {route}"),
        "stage": "$default",
        "time": TIME,
        "timeEpoch": NOW * 1000
    });
    if let Some(a) = authorizer {
        context["authorizer"] = a;
    }
    let mut event = json!({
        "version": "2.0",
        "routeKey": format!("{method} {route}"),
        "rawPath": path,
        "rawQueryString": "",
        "headers": headers,
        "requestContext": context,
        "isBase64Encoded": false
    });
    if let Some(p) = path_parameters {
        event["pathParameters"] = p;
    }
    if let Some((content_type, body, base64)) = body {
        event["headers"]["content-type"] = json!(content_type);
        event["headers"]["content-length"] = json!(if base64 {
            B64.decode(&body).map_or(0, |b| b.len()).to_string()
        } else {
            body.len().to_string()
        });
        event["body"] = json!(body);
        event["isBase64Encoded"] = json!(base64);
    }
    event
}

const COGNITO_TOKEN: &str = "Bearer eyJraWQiOiJleGFtcGxlIiwiYWxnIjoiUlMyNTYifQ.eyJzdWIiOiI2ZjFjMmUwYS0zYjRkLTRlNWYtOGE5Yi0wYzFkMmUzZjRhNWIifQ.c2lnbmF0dXJlLW5vdC1jaGVja2VkLWJ5LXRoZS1mdW5jdGlvbg";
const SIGV4: &str = "AWS4-HMAC-SHA256 Credential=ASIAXEXAMPLEKEY12345/20260202/us-east-1/execute-api/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-security-token, Signature=0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

fn phone(
    method: &str,
    route: &str,
    path: &str,
    params: Option<Value>,
    body: Option<Value>,
    id: &str,
) -> Value {
    let body = body.map(|b| ("application/json", b.to_string(), false));
    api_event(
        method,
        route,
        path,
        params,
        Some(COGNITO_TOKEN),
        Some(jwt_authorizer()),
        body,
        id,
    )
}

fn ops(
    method: &str,
    route: &str,
    path: &str,
    params: Option<Value>,
    body: Option<Value>,
    id: &str,
) -> Value {
    let body = body.map(|b| ("application/json", b.to_string(), false));
    api_event(
        method,
        route,
        path,
        params,
        Some(SIGV4),
        Some(iam_authorizer()),
        body,
        id,
    )
}

/// A machine's request: what a SIM800 modem's HTTP stack sends (no `Authorization`, no authorizer).
#[allow(clippy::too_many_arguments)]
fn machine_event(
    method: &str,
    route: &str,
    path: &str,
    path_parameters: Option<Value>,
    authorization: Option<&str>,
    authorizer: Option<Value>,
    body: Option<(&str, String, bool)>,
    request_id: &str,
) -> Value {
    let mut e = api_event(
        method,
        route,
        path,
        path_parameters,
        authorization,
        authorizer,
        body,
        request_id,
    );
    e["headers"]["accept"] = json!("*/*");
    e["headers"]["user-agent"] = json!("SIMCOM_MODULE");
    e["requestContext"]["http"]["userAgent"] = json!("SIMCOM_MODULE");
    e["headers"]["x-forwarded-for"] = json!("198.51.100.23");
    e["requestContext"]["http"]["sourceIp"] = json!("198.51.100.23");
    e
}

/// The first poll of machine 0102030405060708 (sequence number 1), sealed with its device key.
fn poll_frame() -> Vec<u8> {
    let master = MasterKey::parse_hex(MASTER_KEYS.trim_start_matches("0:")).unwrap();
    let kv = KeyVersion::new(0).unwrap();
    let device = DeviceId::parse(DEVICE).unwrap();
    let key = derive_device_key(&master, kv, device, blepay_core::KeyEpoch::FIRST);
    let body = blepay_device_client::poll().encode();
    blepay_proto::seal_request(&key, kv, device, 1, &body)
}

/// The test vector machine's identity (device 0102030405060708, key version 0).
pub fn vector_identity() -> blepay_device_client::Identity {
    let master = MasterKey::parse_hex(MASTER_KEYS.trim_start_matches("0:")).unwrap();
    let key_version = KeyVersion::new(0).unwrap();
    let device_id = DeviceId::parse(DEVICE).unwrap();
    blepay_device_client::Identity {
        device_id,
        key_version,
        key: derive_device_key(
            &master,
            key_version,
            device_id,
            blepay_core::KeyEpoch::FIRST,
        ),
    }
}

/// The heartbeat of the CloudFront fixture: what the machine reports.
pub fn vector_telemetry() -> blepay_core::Telemetry {
    blepay_core::Telemetry {
        firmware_version: "1.4.2".into(),
        fault_codes: vec![],
        signal_quality: 18,
        uptime_secs: 86_400,
        boot_count: 3,
        outbox_depth: 0,
        lifetime_units: 12_345,
    }
}

/// The first heartbeat of machine 0102030405060708 (sequence number 1), as the device client
/// seals it (the CloudFront fixture's body).
pub fn heartbeat_pending() -> blepay_device_client::Pending {
    vector_identity().request(
        1,
        &blepay_device_client::Request::Heartbeat(vector_telemetry()),
    )
}

/// The CloudFront edge that forwarded the machine's request to the HTTP API (API Gateway's TCP
/// peer, so its `sourceIp`).
const EDGE_IP: &str = "64.252.69.139";
/// The machine's address as CloudFront saw it (the SIM's carrier NAT).
const MACHINE_IP: &str = "198.51.100.23";

/// A machine's POST /v1/device as it reaches `blepay-device-fn` through the front door: the
/// SIM800 sent plain HTTP to CloudFront (`DeviceFrontDoor`), which forwarded it over TLS 1.2 to the
/// HTTP API with the origin request policy `AllViewerExceptHostHeader`:
/// - the modem's headers pass (`User-Agent: SIMCOM_MODULE`, `Accept`, `Content-Type`,
///   `Content-Length`), its `Connection: Keep-Alive` does not (hop by hop), and `Host` is the
///   API's own domain, not the distribution's;
/// - CloudFront adds `Via`, `X-Amz-Cf-Id`, `X-Forwarded-For` (the machine) and its
///   `CloudFront-*` headers (`CloudFront-Forwarded-Proto: http`: the viewer came in plain);
/// - API Gateway appends the edge to `X-Forwarded-For`, adds `X-Forwarded-Proto: https` and
///   `X-Forwarded-Port: 443` (its own hop) and `X-Amzn-Trace-Id`; `sourceIp` is the edge.
fn cloudfront_machine_event(frame: &[u8], request_id: &str) -> Value {
    let mut e = machine_event(
        "POST",
        "/v1/device",
        "/v1/device",
        None,
        None,
        None,
        Some(("application/octet-stream", B64.encode(frame), true)),
        request_id,
    );
    let headers = e["headers"].as_object_mut().unwrap();
    for (name, value) in [
        ("cloudfront-forwarded-proto", "http".to_owned()),
        ("cloudfront-is-android-viewer", "false".to_owned()),
        ("cloudfront-is-desktop-viewer", "true".to_owned()),
        ("cloudfront-is-ios-viewer", "false".to_owned()),
        ("cloudfront-is-mobile-viewer", "false".to_owned()),
        ("cloudfront-is-smarttv-viewer", "false".to_owned()),
        ("cloudfront-is-tablet-viewer", "false".to_owned()),
        ("cloudfront-viewer-address", format!("{MACHINE_IP}:49152")),
        ("cloudfront-viewer-asn", "64496".to_owned()),
        ("cloudfront-viewer-country", "DE".to_owned()),
        ("cloudfront-viewer-http-version", "1.1".to_owned()),
        (
            "via",
            "1.1 5f3c2b1a0e9d8c7b6a5f4e3d2c1b0a99.cloudfront.net (CloudFront)".to_owned(),
        ),
        (
            "x-amz-cf-id",
            "q5XzP0n3bUeK1vR8sT2wY4aC6dF7gH9jL0mN2pQ4rS6tU8vW0xY1zA==".to_owned(),
        ),
        ("x-forwarded-for", format!("{MACHINE_IP}, {EDGE_IP}")),
    ] {
        headers.insert(name.to_owned(), json!(value));
    }
    e["requestContext"]["http"]["sourceIp"] = json!(EDGE_IP);
    e
}

/// Every recorded event, by file name.
#[allow(clippy::too_many_lines)] // a table of events
pub fn recorded_events() -> Vec<(&'static str, Value)> {
    let advert = B64.encode(hex::decode(ADVERT_HEX).unwrap());
    let wallet_path = format!("/v1/ops/wallets/{USER}");
    vec![
        (
            "ops-register-device.json",
            ops(
                "POST",
                "/v1/ops/devices",
                "/v1/ops/devices",
                None,
                Some(json!({
                    "deviceId": DEVICE, "name": "Water 1", "pricePerUnit": "50",
                    "unitName": "litre", "currency": "EUR"
                })),
                "Kd1aXhQ0IAMEJmA=",
            ),
        ),
        (
            "ops-topup.json",
            ops(
                "POST",
                "/v1/ops/wallets/{userId}/topup",
                &format!("{wallet_path}/topup"),
                Some(json!({ "userId": USER })),
                Some(json!({ "amount": "1000", "idempotencyKey": "topup-2026-02-02-0001" })),
                "Kd1aYjQ1IAMEJnB=",
            ),
        ),
        (
            "ops-wallet.json",
            ops(
                "GET",
                "/v1/ops/wallets/{userId}",
                &wallet_path,
                Some(json!({ "userId": USER })),
                None,
                "Kd1aZkR2IAMEJoC=",
            ),
        ),
        (
            "device-poll.json",
            machine_event(
                "POST",
                "/v1/device",
                "/v1/device",
                None,
                None,
                None,
                Some(("application/octet-stream", B64.encode(poll_frame()), true)),
                "Kd1aaLS3IAMEJpD=",
            ),
        ),
        (
            "device-heartbeat-cloudfront.json",
            cloudfront_machine_event(&heartbeat_pending().frame, "Kd1afQX8IAMEJuI="),
        ),
        (
            "phone-verify.json",
            phone(
                "POST",
                "/v1/verify",
                "/v1/verify",
                None,
                Some(json!({ "advert": advert })),
                "Kd1abMT4IAMEJqE=",
            ),
        ),
        (
            "phone-pay.json",
            phone(
                "POST",
                "/v1/pay",
                "/v1/pay",
                None,
                Some(
                    json!({ "advert": advert, "maxAmount": "500", "idempotencyKey": "pay-7f3e2a" }),
                ),
                "Kd1acNU5IAMEJrF=",
            ),
        ),
        (
            "phone-wallet.json",
            phone(
                "GET",
                "/v1/wallet",
                "/v1/wallet",
                None,
                None,
                "Kd1adOV6IAMEJsG=",
            ),
        ),
        (
            "phone-session.json",
            phone(
                "GET",
                "/v1/sessions/{sessionId}",
                "/v1/sessions/SESSION_ID",
                Some(json!({ "sessionId": "SESSION_ID" })),
                None,
                "Kd1aePW7IAMEJtH=",
            ),
        ),
    ]
}
