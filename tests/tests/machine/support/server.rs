//! The real blepay server, in-process on `127.0.0.1:0`, on a SQLite file in a temporary
//! directory: what `blepay::serve::bind` does (typed config, SQLite store, `App`), then
//! `blepay_service::server::serve`, as `blepay serve` does.
//! The device side under test is blocking, so the server gets its own tokio runtime and the
//! operator / phone steps call the [`App`] directly.

use std::sync::Arc;
use std::time::Duration;

use blepay_core::{DeviceId, KeyVersion, SessionId, UseCounter, UserId};
use blepay_device_client::Identity;
use blepay_proto::pb::v1 as pb;
use blepay_proto::{AdvertFlags, DeviceKey};
use blepay_service::config::{Keyring, MAX_UNSTARTED_PER_USER, PayLimits, SecretString, Settings};
use blepay_service::{App, Operator, system_clock};
use blepay_sqlite::SqliteStore;
use blepay_store::Audit;
use tempfile::TempDir;

/// A running server.
pub struct Server {
    pub rt: tokio::runtime::Runtime,
    pub app: App,
    /// `http://127.0.0.1:PORT`.
    pub address: String,
    pub port: u16,
    /// What phone JWTs are signed with (generated into the data dir).
    pub jwt_secret: String,
    _dir: TempDir,
}

impl Server {
    pub fn start() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let keyring = Keyring::parse(&format!("0:{}", hex(&rand_bytes::<32>()))).expect("keys");
        let jwt_secret = hex(&rand_bytes::<32>());
        let config = Settings {
            jwt_secret: Some(SecretString::new(jwt_secret.clone())),
            start_timeout_secs: 300,
            offline_after_secs: 600,
            // These tests are about the machine link, not the per-user pay limits.
            pay_limits: PayLimits {
                max_unstarted_per_user: MAX_UNSTARTED_PER_USER,
                rate_max: u32::MAX,
                rate_window_secs: 3600,
                ..PayLimits::default()
            },
            ..Settings::default()
        }
        .validate()
        .expect("config")
        .into_config(keyring);
        let store = SqliteStore::open(&dir.path().join("blepay.db")).expect("sqlite store");
        let app = App::new(config, Arc::new(store), system_clock());
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("listener");
        let port = listener.local_addr().unwrap().port();
        rt.spawn(blepay_service::server::serve(
            listener,
            app.clone(),
            Duration::from_secs(3600),
            std::future::pending(),
        ));
        Self {
            rt,
            app,
            address: format!("http://127.0.0.1:{port}"),
            port,
            jwt_secret,
            _dir: dir,
        }
    }

    /// Register a machine at `price` per unit → its identity.
    pub fn register(&self, price: i64) -> Identity {
        let id: [u8; 8] = rand_bytes();
        let device_id = hex(&id);
        let r = self
            .rt
            .block_on(self.app.register_device(
                &Operator::bootstrap(),
                pb::RegisterDeviceRequest {
                    device_id: device_id.clone(),
                    name: "Water dispenser".into(),
                    price_per_unit: price,
                    unit_name: "litre".into(),
                    currency: "EUR".into(),
                },
            ))
            .expect("register device");
        Identity {
            device_id: DeviceId::parse(&device_id).unwrap(),
            key_version: KeyVersion::new(u8::try_from(r.key_version).unwrap()).unwrap(),
            key: DeviceKey::parse_hex(&r.device_key).unwrap(),
        }
    }

    pub fn top_up(&self, user: &str, amount: i64) {
        self.rt
            .block_on(self.app.top_up(
                &Operator::bootstrap(),
                pb::TopUpRequest {
                    user_id: user.into(),
                    amount,
                    idempotency_key: format!("t-{}", hex(&rand_bytes::<8>())),
                },
            ))
            .expect("top up");
    }

    /// A phone pays with the machine's current advert (use counter `uses`) → the session.
    pub fn pay(&self, user: &str, machine: &Identity, uses: u16, max_amount: i64) -> SessionId {
        let advert = machine.advert(self.app.now(), UseCounter::new(uses), AdvertFlags::NONE);
        let r = self
            .rt
            .block_on(self.app.pay(
                &UserId::parse(user).unwrap(),
                pb::PayRequest {
                    advert: advert.encode().to_vec(),
                    max_amount,
                    idempotency_key: format!("p-{}", hex(&rand_bytes::<8>())),
                },
            ))
            .expect("pay");
        SessionId::parse(&r.session_id).unwrap()
    }

    /// A phone pays over HTTP (`POST /v1/pay` with the user's JWT) with the advert `payload` it
    /// heard → the session.
    pub fn pay_http(&self, user: &str, payload: &[u8], max_amount: i64) -> SessionId {
        use base64::Engine as _;
        let token = blepay_service::auth::mint_token(
            &self.jwt_secret,
            &UserId::parse(user).unwrap(),
            self.app.now(),
            3600,
        )
        .expect("token");
        let body = serde_json::json!({
            "advert": base64::engine::general_purpose::STANDARD.encode(payload),
            "maxAmount": max_amount,
            "idempotencyKey": format!("p-{}", hex(&rand_bytes::<8>())),
        });
        let mut r = ureq::post(format!("{}/v1/pay", self.address))
            .header("authorization", &format!("Bearer {token}"))
            .header("content-type", "application/json")
            .send(body.to_string())
            .expect("POST /v1/pay");
        let answer: serde_json::Value =
            serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        SessionId::parse(answer["sessionId"].as_str().expect("sessionId")).unwrap()
    }

    pub fn session(&self, id: SessionId) -> pb::Session {
        self.rt
            .block_on(
                self.app
                    .ops_session(&Operator::bootstrap(), &id.to_string()),
            )
            .expect("session")
    }

    pub fn wallet(&self, user: &str) -> pb::Wallet {
        self.rt
            .block_on(self.app.wallet(&UserId::parse(user).unwrap()))
            .expect("wallet")
    }

    pub fn audit(&self) -> Audit {
        self.rt.block_on(self.app.store().audit()).expect("audit")
    }
}

pub fn rand_bytes<const N: usize>() -> [u8; N] {
    use std::hash::{BuildHasher, RandomState};
    let mut out = [0u8; N];
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        let v = RandomState::new().hash_one((i, std::time::SystemTime::now()));
        chunk.copy_from_slice(&v.to_be_bytes()[..chunk.len()]);
    }
    out
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
