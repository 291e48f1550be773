//! Shared test support: the real service (the router `blepay serve` runs) on a real SQLite file,
//! a clock the test moves, and callers — operator, phone, machine (the device client's
//! `Identity` seals and opens the frames).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Body;
use axum::http::{Request as HttpRequest, StatusCode, header};
use blepay_core::{DeviceId, KeyVersion, UseCounter, UserId};
use blepay_device_client::{Answer, Identity, Pending, Request};
use blepay_proto::{AdvertFlags, DeviceKey};
use blepay_service::config::{Config, Keyring, SecretString, TokenPolicy, TokenVerifier};
use blepay_service::{App, server};
use blepay_sqlite::SqliteStore;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

/// The clock every test starts at (slot 59000000 of the protocol test vector).
pub const T0: u64 = 1_770_000_000;
pub const JWT_SECRET: &str = "service-tests-jwt-secret-0123456789";
pub const OPS_TOKEN: &str = "service-tests-ops-token-0123456789";
/// The active timeout of these tests' configuration (the default: 4 h).
pub const ACTIVE_TIMEOUT: u64 = 14_400;
pub const OFFLINE_AFTER: u64 = 4_200;

/// The service on a fresh SQLite file, with a clock the test sets.
pub struct Service {
    pub app: App,
    pub router: Router,
    clock: Arc<AtomicU64>,
    _dir: tempfile::TempDir,
}

/// An answer over HTTP: status, content type and body bytes.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}), HTTP {}: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

pub fn config() -> Config {
    Config {
        keyring: Keyring::parse(&format!("0:{}", "00".repeat(32))).unwrap(),
        phone_tokens: TokenVerifier::hs256(
            SecretString::new(JWT_SECRET.into()),
            TokenPolicy::default(),
        )
        .unwrap(),
        ops_token: SecretString::new(OPS_TOKEN.into()),
        start_timeout_secs: 120,
        offline_after_secs: OFFLINE_AFTER,
        active_timeout_secs: ACTIVE_TIMEOUT,
        currency: blepay_core::Currency::parse("EUR").unwrap(),
        pay_limits: blepay_service::config::PayLimits::default(),
        support_refund_max: blepay_core::Amount::new(
            blepay_service::operator::DEFAULT_SUPPORT_REFUND_MAX,
        )
        .unwrap(),
        providers: blepay_service::config::Providers::none(),
    }
}

impl Service {
    pub fn new() -> Self {
        Self::with_config(config())
    }

    /// The service with `config` (e.g. another keyring).
    pub fn with_config(config: Config) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("blepay.db")).unwrap();
        let clock = Arc::new(AtomicU64::new(T0));
        let c = clock.clone();
        let app = App::new(
            config,
            Arc::new(store),
            Arc::new(move || c.load(Ordering::SeqCst)),
        );
        let router = server::router(&app).unwrap();
        Self {
            app,
            router,
            clock,
            _dir: dir,
        }
    }

    pub fn now(&self) -> u64 {
        self.clock.load(Ordering::SeqCst)
    }

    pub fn set_now(&self, t: u64) {
        self.clock.store(t, Ordering::SeqCst);
    }

    pub async fn send(&self, req: HttpRequest<Body>) -> Reply {
        let r = self.router.clone().oneshot(req).await.unwrap();
        let status = r.status();
        let content_type = r
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = r.into_body().collect().await.unwrap().to_bytes().to_vec();
        Reply {
            status,
            content_type,
            body,
        }
    }

    /// An operator call with the ops token; `body` is JSON.
    pub async fn ops(&self, method: &str, path: &str, body: Option<Value>) -> Reply {
        let req = HttpRequest::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {OPS_TOKEN}"));
        let req = match body {
            Some(b) => req
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        };
        self.send(req.unwrap()).await
    }

    /// A phone call as `user` (an HS256 token valid for an hour of real time).
    pub async fn phone(
        &self,
        user: &UserId,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Reply {
        let real_now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let token = blepay_service::auth::mint_token(JWT_SECRET, user, real_now, 3600).unwrap();
        let req = HttpRequest::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {token}"));
        let req = match body {
            Some(b) => req
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        };
        self.send(req.unwrap()).await
    }

    /// POST raw bytes to the machine route.
    pub async fn device_bytes(&self, frame: &[u8]) -> Reply {
        let req = HttpRequest::builder()
            .method("POST")
            .uri("/v1/device")
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(Body::from(frame.to_vec()))
            .unwrap();
        self.send(req).await
    }

    /// Register a machine (price 50 per litre) and top up `user` with 1000.
    pub async fn provision(&self, device: &str, user: &UserId) -> Machine {
        let r = self
            .ops(
                "POST",
                "/v1/ops/devices",
                Some(
                    json!({"deviceId": device, "name": "Water 1", "pricePerUnit": "50",
                            "unitName": "litre", "currency": "EUR"}),
                ),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
        let registered = r.json();
        let identity = Identity {
            device_id: DeviceId::parse(device).unwrap(),
            key_version: KeyVersion::new(
                u8::try_from(registered["keyVersion"].as_u64().unwrap()).unwrap(),
            )
            .unwrap(),
            key: DeviceKey::parse_hex(registered["deviceKey"].as_str().unwrap()).unwrap(),
        };
        let r = self
            .ops(
                "POST",
                &format!("/v1/ops/wallets/{user}/topup"),
                Some(json!({"amount": "1000", "idempotencyKey": format!("topup-{device}")})),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
        Machine {
            identity,
            next_seq: 1,
        }
    }

    /// The machine sends `request` with its next sequence number; the answer must authenticate.
    pub async fn exchange(&self, machine: &mut Machine, request: &Request) -> Exchange {
        let pending = machine.identity.request(machine.next_seq, request);
        machine.next_seq += 1;
        self.resend(machine, &pending).await
    }

    /// Send `pending` (again: a retry with the same bytes).
    pub async fn resend(&self, machine: &Machine, pending: &Pending) -> Exchange {
        let reply = self.device_bytes(&pending.frame).await;
        let answer = machine
            .identity
            .open(pending, &reply.body)
            .unwrap_or_else(|e| {
                panic!(
                    "answer (HTTP {}) does not open: {e}: {}",
                    reply.status,
                    String::from_utf8_lossy(&reply.body)
                )
            });
        Exchange {
            pending: pending.clone(),
            reply,
            answer,
        }
    }

    /// A verify with the machine's advert at the server's time carrying `flags`.
    pub async fn verify(&self, machine: &Machine, user: &UserId, flags: AdvertFlags) -> Reply {
        let advert = machine.advert(self.now(), 1, flags);
        self.phone(
            user,
            "POST",
            "/v1/verify",
            Some(json!({ "advert": advert })),
        )
        .await
    }

    /// A pay of up to 500 with the machine's advert (use counter `counter`) carrying `flags`.
    pub async fn pay(
        &self,
        machine: &Machine,
        user: &UserId,
        counter: u16,
        flags: AdvertFlags,
    ) -> Reply {
        let advert = machine.advert(self.now(), counter, flags);
        self.phone(
            user,
            "POST",
            "/v1/pay",
            Some(json!({"advert": advert, "maxAmount": "500",
                        "idempotencyKey": format!("pay-{counter}-{}", flags.bits())})),
        )
        .await
    }
}

/// A simulated machine: its identity and next sequence number.
pub struct Machine {
    pub identity: Identity,
    pub next_seq: u32,
}

impl Machine {
    /// The base64 advert at `now`.
    pub fn advert(&self, now: u64, counter: u16, flags: AdvertFlags) -> String {
        use base64::Engine as _;
        let advert = self
            .identity
            .advert(now, UseCounter::new(counter), flags)
            .encode();
        base64::engine::general_purpose::STANDARD.encode(advert)
    }
}

/// One machine exchange: what was sent, what came back, and the opened answer.
#[derive(Debug)]
pub struct Exchange {
    pub pending: Pending,
    pub reply: Reply,
    pub answer: Answer,
}

pub fn user(name: &str) -> UserId {
    UserId::parse(name).unwrap()
}
