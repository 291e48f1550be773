//! Durability: the real `blepay serve` binary, killed with SIGKILL and restarted on its data dir.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use blepay::machine::Machine;
use blepay_core::SessionId;
use blepay_e2e::{Answer, JWT_SECRET, OPS_TOKEN, master_keys_env, random_device_id, unix_now};
use blepay_store::Store;
use serde_json::{Value, json};

/// `target/<profile>/blepay`, next to this test's `deps/` directory; built if missing.
fn blepay_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_owned();
    let bin = profile_dir.join(format!("blepay{}", std::env::consts::EXE_SUFFIX));
    if !bin.exists() {
        let cargo = option_env!("CARGO").unwrap_or("cargo");
        let status = Command::new(cargo)
            .args(["build", "-p", "blepay", "--bin", "blepay"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap();
        assert!(status.success(), "cargo build -p blepay failed");
    }
    assert!(bin.exists(), "no blepay binary at {}", bin.display());
    bin
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `blepay serve` child process; killed (SIGKILL) on drop.
struct Server {
    child: Child,
    address: String,
    client: reqwest::Client,
}

impl Server {
    async fn start(data_dir: &Path) -> Self {
        let port = free_port();
        let child = Command::new(blepay_binary())
            .arg("serve")
            .env("BLEPAY_LISTEN", format!("127.0.0.1:{port}"))
            .env("BLEPAY_DATA_DIR", data_dir)
            .env("BLEPAY_MASTER_KEYS", master_keys_env())
            .env("BLEPAY_JWT_SECRET", JWT_SECRET)
            .env("BLEPAY_OPS_TOKEN", OPS_TOKEN)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = Self {
            child,
            address: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let up = server
                .client
                .get(format!("{}/healthz", server.address))
                .send()
                .await;
            if up.is_ok_and(|r| r.status().is_success()) {
                return server;
            }
            assert!(Instant::now() < deadline, "blepay serve did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn kill_9(mut self) {
        self.child.kill().unwrap(); // SIGKILL on unix
        self.child.wait().unwrap();
    }

    async fn post(&self, path: &str, token: &str, body: &Value) -> Value {
        let r = self
            .client
            .post(format!("{}{path}", self.address))
            .bearer_auth(token)
            .json(body)
            .send()
            .await;
        Answer::of(r.unwrap()).await.ok()
    }

    async fn get(&self, path: &str, token: &str) -> Value {
        let r = self
            .client
            .get(format!("{}{path}", self.address))
            .bearer_auth(token)
            .send()
            .await;
        Answer::of(r.unwrap()).await.ok()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn phone_token(user: &str) -> String {
    blepay_service::auth::mint_token(
        JWT_SECRET,
        &blepay_core::UserId::parse(user).unwrap(),
        unix_now(),
        3600,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_acknowledged_operation_survives_kill_9_and_the_cycle_finishes_after_restart() {
    // Arrange: the real binary, a register, a top-up, a poll and a pay — all acknowledged.
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let server = Server::start(&data_dir).await;
    let device_id = random_device_id();
    let reg = server
        .post(
            "/v1/ops/devices",
            OPS_TOKEN,
            &json!({"deviceId": device_id, "name": "Water dispenser", "pricePerUnit": 25,
                    "unitName": "litre", "currency": "EUR"}),
        )
        .await;
    let device_key = reg["deviceKey"].as_str().unwrap().to_owned();
    server
        .post(
            "/v1/ops/wallets/kim/topup",
            OPS_TOKEN,
            &json!({"amount": 1000, "idempotencyKey": "t-1"}),
        )
        .await;
    let machine_dir = dir.path().join("machine");
    let m = Machine::new(&server.address, &device_id, &device_key, 0, &machine_dir).unwrap();
    m.poll().await.unwrap();
    let advert = m.advert().unwrap()["advert"].as_str().unwrap().to_owned();
    let paid = server
        .post(
            "/v1/pay",
            &phone_token("kim"),
            &json!({"advert": advert, "maxAmount": 200, "idempotencyKey": "p-1"}),
        )
        .await;
    let session = paid["sessionId"].as_str().unwrap().to_owned();

    // Act: SIGKILL, then restart on the same data dir (a new port).
    server.kill_9();
    let server = Server::start(&data_dir).await;

    // Assert: the wallet, the session, the top-up's and the pay's idempotency all survived...
    let kim = phone_token("kim");
    assert_eq!(
        server.get("/v1/wallet", &kim).await,
        json!({"userId": "kim", "available": "800", "held": "200", "spent": "0", "currency": "EUR"})
    );
    let s = server.get(&format!("/v1/sessions/{session}"), &kim).await;
    assert_eq!(
        (s["status"].as_str(), s["holdAmount"].as_str()),
        (Some("AUTHORIZED"), Some("200"))
    );
    let again = server
        .post(
            "/v1/ops/wallets/kim/topup",
            OPS_TOKEN,
            &json!({"amount": 1000, "idempotencyKey": "t-1"}),
        )
        .await;
    assert_eq!(again["available"], "800");
    let pay_again = server
        .post(
            "/v1/pay",
            &kim,
            &json!({"advert": advert, "maxAmount": 200, "idempotencyKey": "p-1"}),
        )
        .await;
    assert_eq!(pay_again["sessionId"].as_str(), Some(session.as_str()));

    // ...and the machine (same state dir: its sequence numbers go on) finishes the cycle.
    let m = Machine::new(&server.address, &device_id, &device_key, 0, &machine_dir).unwrap();
    let grants = m.poll().await.unwrap();
    assert_eq!(grants.len(), 1);
    let sid = SessionId::parse(&session).unwrap();
    m.start(sid).await.unwrap();
    let done = m.report(sid, 2, true).await.unwrap();
    assert_eq!(done.amount, 50);
    assert_eq!(
        server.get("/v1/wallet", &kim).await,
        json!({"userId": "kim", "available": "950", "held": "0", "spent": "50", "currency": "EUR"})
    );

    // The ledger on disk reconciles after a last kill -9.
    server.kill_9();
    let store = blepay_store::sqlite::SqliteStore::open(&data_dir.join("blepay.db")).unwrap();
    let audit = store.audit().await.unwrap();
    assert!(audit.reconciles(), "{audit:?}");
    assert_eq!((audit.top_ups, audit.revenue), (1000, 50));
}
