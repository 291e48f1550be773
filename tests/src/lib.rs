//! # blepay-e2e — the end-to-end test harness
//!
//! [`spawn_app`] starts the real server (`blepay::serve::bind` + `blepay_service::server::serve`)
//! in-process on `127.0.0.1:0`, on a real SQLite file in a temporary directory, with explicit
//! secrets. The returned [`TestApp`] drives it the way the outside world does: HTTP JSON with a
//! `reqwest` client, gRPC with the tonic clients, and simulated machines
//! ([`blepay::machine::Machine`]) posting authenticated frames to `/v1/device`: a heartbeat
//! brings a machine online, a press starts the session paid for on it, a final report settles.
//!
//! It keeps the [`App`] so tests can audit the ledger (`app.store().audit()`) after each scenario.
//! The tests themselves live in `tests/api/` (one binary, one module per concern) and
//! `tests/machine/` (the device client's transports and engine against the real server); the
//! fault-injecting TCP proxy both use is [`proxy`]. [`providers`] starts the server with Stripe
//! and WeChat Pay configured against fakes of their APIs on loopback, and signs their
//! notifications for real (the top-up tests, `tests/api/topups.rs`). [`browser`] drives the
//! operator console in headless Chromium over WebDriver, and [`seed`] fills a server with a
//! realistic demo fleet for it (`tests/api/console.rs`).
//!
//! This is test code: it unwraps and panics on purpose, with messages saying what broke.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::missing_panics_doc
)]

pub mod browser;
pub mod providers;
pub mod proxy;
pub mod seed;

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use blepay::args::ServeArgs;
use blepay::machine::Machine;
use blepay_core::{DeviceId, KeyVersion, Slot, UseCounter, UserId};
use blepay_device_client::log::MemLog;
use blepay_device_client::outbox::Outbox;
use blepay_device_client::{Identity, Pending, Request};
use blepay_proto::{Advert, AdvertFlags, DeviceKey, MasterKey, derive_device_key};
use blepay_service::App;
use blepay_store::Audit;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::task::JoinHandle;

/// The master key (version 0) every test server uses, so tests can derive device keys themselves.
pub const MASTER_KEY: [u8; 32] = [
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f,
    0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f,
];
/// The HS256 secret phone JWTs are signed with (at least 32 bytes, as the server requires).
pub const JWT_SECRET: &str = "e2e-jwt-secret-0123456789abcdef-0123456789";
/// The operator bearer token.
pub const OPS_TOKEN: &str = "e2e-ops-token-0123456789abcdef";

/// The `BLEPAY_MASTER_KEYS` value for [`MASTER_KEY`].
pub fn master_keys_env() -> String {
    format!("0:{}", hex::encode(MASTER_KEY))
}

/// What a test may change about the server it spawns.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub start_timeout_secs: u64,
    pub offline_after_secs: u64,
    /// An ACTIVE session with no report for this long is settled by timeout.
    pub active_timeout_secs: u64,
    /// How often the sweeper runs (expiry, ACTIVE timeout; its first run is at start).
    pub sweep_every: Duration,
    /// Per-user pay limits (the product's defaults unless a test changes them).
    pub pay_limits: blepay_service::config::PayLimits,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            start_timeout_secs: 120,
            offline_after_secs: 300,
            active_timeout_secs: blepay_service::config::DEFAULT_ACTIVE_TIMEOUT_SECS,
            sweep_every: Duration::from_secs(3600),
            pay_limits: blepay_service::config::PayLimits::default(),
        }
    }
}

/// A running server and everything a test needs to talk to it.
#[derive(Debug)]
pub struct TestApp {
    /// `http://127.0.0.1:PORT`.
    pub address: String,
    pub port: u16,
    pub client: reqwest::Client,
    pub ops_token: String,
    pub app: App,
    pub dir: TempDir,
    server: JoinHandle<std::io::Result<()>>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Start the real server with default settings.
/// The store the suite runs on: SQLite by default; `BLEPAY_E2E_STORE=dynamodb` runs the very same
/// suite on a fresh table of Amazon DynamoDB Local (started once per test binary, on loopback).
pub async fn store_args() -> blepay::args::StoreArgs {
    use blepay::args::{DynamoArgs, StoreArgs, StoreKind};
    match std::env::var("BLEPAY_E2E_STORE").as_deref() {
        Ok("dynamodb") => {
            let local = blepay_dynamodb::testing::DynamoLocal::shared();
            let table = blepay_dynamodb::testing::unique_table();
            let client = blepay_dynamodb::testing::client(local.endpoint(), Vec::new());
            blepay_dynamodb::create_table(&client, &table)
                .await
                .expect("create a DynamoDB Local table");
            StoreArgs {
                kind: StoreKind::Dynamodb,
                dynamodb: DynamoArgs {
                    endpoint: Some(local.endpoint().to_owned()),
                    table,
                },
            }
        }
        Ok("sqlite") | Err(_) => StoreArgs::default(),
        Ok(other) => panic!("BLEPAY_E2E_STORE must be sqlite or dynamodb, not {other}"),
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Settings::default()).await
}

/// Start the real server with `settings`.
pub async fn spawn_app_with(settings: Settings) -> TestApp {
    spawn_app_in(settings, tempfile::tempdir().expect("temp dir"), |args| {
        args
    })
    .await
}

/// Start the real server with `settings` in `dir`, its [`ServeArgs`] changed by `customize`
/// (the payment providers' files, the currency, the top-up limits: [`providers`]).
pub async fn spawn_app_in(
    settings: Settings,
    dir: TempDir,
    customize: impl FnOnce(ServeArgs) -> ServeArgs,
) -> TestApp {
    // The secrets reach the server the way an operator gives them: in files only the owner can
    // read, outside the data dir.
    let args = ServeArgs {
        master_keys_file: Some(secret_file(dir.path(), "master-keys", &master_keys_env())),
        jwt_secret_file: Some(secret_file(dir.path(), "jwt-secret", JWT_SECRET)),
        ops_token_file: Some(secret_file(dir.path(), "ops-token", OPS_TOKEN)),
        start_timeout_secs: settings.start_timeout_secs,
        offline_after_secs: settings.offline_after_secs,
        active_timeout_secs: settings.active_timeout_secs,
        max_unstarted_per_user: settings.pay_limits.max_unstarted_per_user,
        pay_rate_max: settings.pay_limits.rate_max,
        pay_rate_window_secs: settings.pay_limits.rate_window_secs,
        daily_spending_limit: settings.pay_limits.daily_spending_limit,
        sweep_interval_secs: settings.sweep_every.as_secs().max(1),
        ..ServeArgs::local(dir.path().join("server"))
    };
    let args = customize(args);
    let bound = blepay::serve::bind_with(&args, &store_args().await)
        .await
        .expect("server binds");
    let port = bound.listener.local_addr().expect("local address").port();
    let app = bound.app.clone();
    let server = tokio::spawn(blepay_service::server::serve(
        bound.listener,
        bound.app,
        settings.sweep_every,
        std::future::pending(),
    ));
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        port,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client"),
        ops_token: OPS_TOKEN.into(),
        app,
        dir,
        server,
    }
}

/// Write `value` into `dir/secrets/name`, mode 0600 → its path.
pub fn secret_file(dir: &std::path::Path, name: &str, value: &str) -> PathBuf {
    use std::io::Write;
    let secrets = dir.join("secrets");
    std::fs::create_dir_all(&secrets).expect("secrets dir");
    let path = secrets.join(name);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(&path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .expect("write a secret file");
    path
}

/// A status and a JSON body (or the raw text as a JSON string, if the body was not JSON).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Answer {
    pub async fn of(r: reqwest::Response) -> Self {
        let status = r.status().as_u16();
        let bytes = r.bytes().await.expect("body");
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Self { status, body }
    }

    /// Assert a 200 and return the body.
    #[track_caller]
    pub fn ok(self) -> Value {
        assert_eq!(
            self.status, 200,
            "expected 200, got {}: {}",
            self.status, self.body
        );
        self.body
    }

    /// Assert an error answer with this status and code.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(
            (self.status, self.body["code"].as_str()),
            (status, Some(code)),
            "expected {status} {code}, got {}: {}",
            self.status,
            self.body
        );
        assert!(
            self.body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "no message: {}",
            self.body
        );
    }

    pub fn str(&self, field: &str) -> String {
        self.body[field].as_str().unwrap_or_default().to_owned()
    }
}

/// A fresh random id of 16 hex characters (a device id).
pub fn random_device_id() -> String {
    hex::encode(rand::random::<[u8; 8]>())
}

/// A fresh random idempotency key.
pub fn random_key() -> String {
    format!("k-{}", hex::encode(rand::random::<[u8; 8]>()))
}

/// A unique user id.
pub fn random_user() -> String {
    format!("u-{}", hex::encode(rand::random::<[u8; 6]>()))
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The device key the server derives for `device_id` from [`MASTER_KEY`] (key version 0).
pub fn device_key_for(device_id: &str) -> DeviceKey {
    derive_device_key(
        &MasterKey::from_bytes(MASTER_KEY),
        KeyVersion::new(0).expect("key version"),
        DeviceId::parse(device_id).expect("device id"),
        blepay_core::KeyEpoch::FIRST,
    )
}

/// A machine's identity (for building raw frames and adverts).
pub fn identity(device_id: &str, device_key: &str) -> Identity {
    Identity {
        device_id: DeviceId::parse(device_id).expect("device id"),
        key_version: KeyVersion::new(0).expect("key version"),
        key: DeviceKey::parse_hex(device_key).expect("device key"),
    }
}

/// An advert signed with `key` for `slot_offset` slots from now, base64 for JSON.
pub fn signed_advert(
    device_id: &str,
    key: &DeviceKey,
    slot_offset: i64,
    use_counter: u16,
) -> String {
    signed_advert_with(device_id, key, slot_offset, use_counter, AdvertFlags::NONE)
}

/// [`signed_advert`] with `flags` (link down, fault, busy) in its signed flags byte.
pub fn signed_advert_with(
    device_id: &str,
    key: &DeviceKey,
    slot_offset: i64,
    use_counter: u16,
    flags: AdvertFlags,
) -> String {
    let slot = i64::from(Slot::at(unix_now()).get()) + slot_offset;
    let advert = Advert::sign(
        key,
        KeyVersion::new(0).expect("key version"),
        DeviceId::parse(device_id).expect("device id"),
        Slot::new(u32::try_from(slot).expect("slot")),
        UseCounter::new(use_counter),
        flags,
    );
    b64(&advert.encode())
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn unb64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("base64")
}

/// The telemetry the suite's machines send in their heartbeats.
pub fn test_telemetry() -> blepay_core::Telemetry {
    blepay_core::Telemetry {
        firmware_version: "e2e-1.0".into(),
        signal_quality: 18,
        uptime_secs: 60,
        boot_count: 1,
        ..blepay_core::Telemetry::default()
    }
}

/// The link half of a simulated machine, on the device client: its [`Identity`] seals requests
/// and opens answers, and an in-memory [`Outbox`] hands out the sequence numbers — the firmware's
/// own rules, for tests that drive the protocol one request at a time over a transport of their
/// own (gRPC, a lossy proxy, a simulated modem).
#[derive(Debug)]
pub struct Link {
    pub identity: Identity,
    outbox: Outbox<MemLog>,
}

impl Link {
    pub fn new(identity: Identity) -> Self {
        let (outbox, _) = Outbox::open(MemLog::new(), 1).expect("an empty outbox");
        Self { identity, outbox }
    }

    /// Seal `request` with the next sequence number.
    pub fn seal(&mut self, request: &Request) -> Pending {
        let seq = self.outbox.take_seq().expect("a sequence number");
        self.identity.request(seq, request)
    }

    /// The sequence number the next [`Link::seal`] uses.
    pub fn next_seq(&self) -> u32 {
        self.outbox.peek_seq()
    }
}

/// A registered machine with its simulated firmware.
#[derive(Debug)]
pub struct TestMachine {
    pub device_id: String,
    pub device_key: String,
    pub machine: Machine,
}

impl TestMachine {
    /// Its current advert (base64), on the server-corrected clock.
    pub fn advert(&self) -> String {
        self.machine.advert().expect("advert")["advert"]
            .as_str()
            .expect("advert field")
            .to_owned()
    }

    pub fn identity(&self) -> Identity {
        identity(&self.device_id, &self.device_key)
    }
}

impl TestApp {
    /// A phone JWT for `user`, valid for an hour.
    pub fn token_for(&self, user: &str) -> String {
        let user = UserId::parse(user).expect("user id");
        blepay_service::auth::mint_token(JWT_SECRET, &user, unix_now(), 3600).expect("token")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// POST a JSON body with a bearer token.
    pub async fn post(&self, path: &str, token: &str, body: &Value) -> Answer {
        let r = self
            .client
            .post(self.url(path))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("POST");
        Answer::of(r).await
    }

    /// GET with a bearer token.
    pub async fn get(&self, path: &str, token: &str) -> Answer {
        let r = self
            .client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("GET");
        Answer::of(r).await
    }

    /// Register a machine at `price` per unit → (device id, device key hex).
    pub async fn register_device(&self, price: i64) -> (String, String) {
        let device_id = random_device_id();
        let body = self
            .post(
                "/v1/ops/devices",
                &self.ops_token,
                &json!({"deviceId": device_id, "name": "Water dispenser", "pricePerUnit": price,
                        "unitName": "litre", "currency": "EUR"}),
            )
            .await
            .ok();
        (
            device_id,
            body["deviceKey"].as_str().expect("deviceKey").to_owned(),
        )
    }

    /// Credit `amount` to `user`'s wallet → the wallet JSON.
    pub async fn top_up(&self, user: &str, amount: i64) -> Value {
        self.post(
            &format!("/v1/ops/wallets/{user}/topup"),
            &self.ops_token,
            &json!({"amount": amount, "idempotencyKey": random_key()}),
        )
        .await
        .ok()
    }

    /// The wallet as operators see it.
    pub async fn wallet(&self, user: &str) -> Value {
        self.get(&format!("/v1/ops/wallets/{user}"), &self.ops_token)
            .await
            .ok()
    }

    /// The session as operators see it.
    pub async fn ops_session(&self, session_id: &str) -> Value {
        self.get(&format!("/v1/ops/sessions/{session_id}"), &self.ops_token)
            .await
            .ok()
    }

    /// A simulated machine for a registered device (state in the temp dir).
    pub fn machine(&self, device_id: &str, device_key: &str) -> TestMachine {
        let state_dir: PathBuf = self.dir.path().join(format!("machine-{device_id}"));
        TestMachine {
            device_id: device_id.to_owned(),
            device_key: device_key.to_owned(),
            machine: Machine::new(&self.address, device_id, device_key, 0, &state_dir)
                .expect("machine"),
        }
    }

    /// A registered machine that has sent its first heartbeat (so it is online).
    pub async fn online_machine(&self, price: i64) -> TestMachine {
        let (id, key) = self.register_device(price).await;
        let m = self.machine(&id, &key);
        m.machine
            .heartbeat(test_telemetry())
            .await
            .expect("first heartbeat");
        m
    }

    /// The device as operators see it (`GET /v1/ops/devices/{id}`): tariff, state, last seen,
    /// open session, the latest heartbeat's telemetry.
    pub async fn ops_device(&self, device_id: &str) -> Value {
        self.get(&format!("/v1/ops/devices/{device_id}"), &self.ops_token)
            .await
            .ok()
    }

    /// Verify `advert` as `user`'s phone → the raw answer.
    pub async fn verify(&self, user: &str, advert: &str) -> Answer {
        self.post(
            "/v1/verify",
            &self.token_for(user),
            &json!({ "advert": advert }),
        )
        .await
    }

    /// A phone pays with `advert` → the raw answer.
    pub async fn pay(&self, user: &str, advert: &str, max_amount: i64, key: &str) -> Answer {
        self.post(
            "/v1/pay",
            &self.token_for(user),
            &json!({"advert": advert, "maxAmount": max_amount, "idempotencyKey": key}),
        )
        .await
    }

    /// The ledger's reconciliation totals.
    pub async fn audit(&self) -> Audit {
        self.app.store().audit().await.expect("audit")
    }

    /// What a refused request must leave unchanged: the user's wallet and the audit.
    pub async fn snapshot(&self, user: &str) -> (Value, Audit) {
        (self.wallet(user).await, self.audit().await)
    }

    /// POST raw bytes to the machine link → (status, body bytes).
    pub async fn post_frame(&self, frame: Vec<u8>) -> (u16, Vec<u8>) {
        let r = self
            .client
            .post(self.url("/v1/device"))
            .header("content-type", "application/octet-stream")
            .body(frame)
            .send()
            .await
            .expect("POST /v1/device");
        let status = r.status().as_u16();
        (status, r.bytes().await.expect("body").to_vec())
    }
}

// ---------------------------------------------------------------------------------------------
// The real binary
// ---------------------------------------------------------------------------------------------

/// `target/<profile>/blepay`, next to the test executable's `deps/` directory, brought up to date
/// once per test binary (a stale binary is never tested) by `cargo test --workspace --no-run`:
/// the build of the README's test command, whose one feature resolution for the whole workspace
/// gives the CLI the DynamoDB store (feature `dynamodb`, which this crate turns on), as
/// `BLEPAY_E2E_STORE=dynamodb` needs. Under that command it is already built and this takes a
/// second or two; `cargo build -p blepay --features dynamodb` would resolve features for the CLI
/// alone and rebuild about 300 crates, the AWS SDK among them.
pub fn blepay_binary() -> &'static std::path::Path {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe
            .parent()
            .and_then(std::path::Path::parent)
            .expect("target/<profile>/deps/<test>")
            .to_owned();
        let mut build = std::process::Command::new(option_env!("CARGO").unwrap_or("cargo"));
        build
            .args(["test", "--quiet", "--workspace", "--no-run"])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile_dir.file_name().is_some_and(|p| p == "release") {
            build.arg("--release");
        }
        assert!(
            build.status().expect("run cargo test --no-run").success(),
            "cargo test --workspace --no-run failed"
        );
        let bin = profile_dir.join(format!("blepay{}", std::env::consts::EXE_SUFFIX));
        assert!(bin.exists(), "no blepay binary at {}", bin.display());
        bin
    })
}

/// A `blepay serve` child process with the suite's secrets on a free loopback port; killed with
/// SIGKILL on drop.
#[derive(Debug)]
pub struct ServeProcess {
    child: std::process::Child,
    pub address: String,
    pub client: reqwest::Client,
}

impl ServeProcess {
    /// Start `blepay serve` with `BLEPAY_*` `env` on top of the suite's keys and tokens, and wait
    /// until `/healthz` answers.
    pub async fn start(env: &[(&str, &std::ffi::OsStr)]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut cmd = std::process::Command::new(blepay_binary());
        cmd.arg("serve")
            .env("BLEPAY_LISTEN", format!("127.0.0.1:{port}"))
            .env("BLEPAY_MASTER_KEYS", master_keys_env())
            .env("BLEPAY_JWT_SECRET", JWT_SECRET)
            .env("BLEPAY_OPS_TOKEN", OPS_TOKEN)
            .env("RUST_LOG", "error")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let server = Self {
            child: cmd.spawn().expect("spawn blepay serve"),
            address: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let up = server
                .client
                .get(format!("{}/healthz", server.address))
                .send()
                .await;
            if up.is_ok_and(|r| r.status().is_success()) {
                return server;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "blepay serve did not come up"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL, as a power cut would: no graceful shutdown.
    pub fn kill_9(mut self) {
        self.child.kill().expect("SIGKILL"); // SIGKILL on unix
        self.child.wait().expect("reap");
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
