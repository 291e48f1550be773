//! Durability: the real `blepay serve` binary, killed with SIGKILL and restarted on its data dir.

use std::path::Path;

use blepay::machine::Machine;
use blepay_core::SessionId;
use blepay_e2e::{Answer, JWT_SECRET, OPS_TOKEN, ServeProcess, random_device_id, unix_now};
use blepay_store::Store;
use serde_json::{Value, json};

/// A `blepay serve` child process on SQLite in `data_dir`.
struct Server(ServeProcess);

impl Server {
    async fn start(data_dir: &Path) -> Self {
        Self(ServeProcess::start(&[("BLEPAY_DATA_DIR", data_dir.as_os_str())]).await)
    }

    fn kill_9(self) {
        self.0.kill_9();
    }

    async fn post(&self, path: &str, token: &str, body: &Value) -> Value {
        let r = self
            .0
            .client
            .post(format!("{}{path}", self.0.address))
            .bearer_auth(token)
            .json(body)
            .send()
            .await;
        Answer::of(r.unwrap()).await.ok()
    }

    async fn get(&self, path: &str, token: &str) -> Value {
        let r = self
            .0
            .client
            .get(format!("{}{path}", self.0.address))
            .bearer_auth(token)
            .send()
            .await;
        Answer::of(r.unwrap()).await.ok()
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
    // Arrange: the real binary, a register, a top-up, a heartbeat and a pay — all acknowledged.
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
    let m = Machine::new(&server.0.address, &device_id, &device_key, 0, &machine_dir).unwrap();
    m.heartbeat(blepay_e2e::test_telemetry()).await.unwrap();
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
        json!({"userId": "kim", "available": "800", "held": "200", "spent": "0", "currency": "EUR",
              "dailyLimit": "0", "spentToday": "200", "dailyLimitOverridden": false, "refunded": "0"})
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
    let m = Machine::new(&server.0.address, &device_id, &device_key, 0, &machine_dir).unwrap();
    let sid = SessionId::parse(&session).unwrap();
    assert_eq!(m.press().await.unwrap().session, sid);
    let done = m.report(sid, 2, true).await.unwrap();
    assert_eq!(done.amount, 50);
    assert_eq!(
        server.get("/v1/wallet", &kim).await,
        json!({"userId": "kim", "available": "950", "held": "0", "spent": "50", "currency": "EUR",
              "dailyLimit": "0", "spentToday": "50", "dailyLimitOverridden": false, "refunded": "0"})
    );

    // The ledger on disk reconciles after a last kill -9.
    server.kill_9();
    let store = blepay_sqlite::SqliteStore::open(&data_dir.join("blepay.db")).unwrap();
    let audit = store.audit().await.unwrap();
    assert!(audit.reconciles(), "{audit:?}");
    assert_eq!((audit.top_ups, audit.revenue), (1000, 50));
}
