//! The reliability suite (issue 5), on whichever store the suite runs on (`BLEPAY_E2E_STORE`):
//!
//! - **race**: many phones on many machines at once → never more than one open session per
//!   machine, no double hold (each phone also retries its pay concurrently), money conserved;
//! - **kill -9 under load**: the real `blepay serve` binary SIGKILLed while workers top up and pay,
//!   restarted on the same data (same SQLite dir, or the same DynamoDB Local table) → every
//!   acknowledged operation is there, nothing applied twice, the ledger reconciles;
//! - **lossy machine link**: machines reach the server through a proxy that drops 30% of the
//!   connections (half of them after the server already executed the request) → every final
//!   report settles exactly once.
//!
//! Sizes: reduced by default (what `.ci/run` runs); `BLEPAY_RELIABILITY=full` runs the issue's
//! sizes (200 phones on 20 machines, 3 kills, 20 machines × 5 cycles through the proxy). Each test
//! prints one `reliability:` line with what it did (`--nocapture` to see it). docs/reliability.md.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blepay::machine::Machine;
use blepay_core::SessionId;
use blepay_device_client::machine;
use blepay_e2e::{
    Answer, JWT_SECRET, Link, OPS_TOKEN, ServeProcess, identity, random_device_id, random_key,
    random_user, signed_advert, spawn_app, unix_now,
};
use blepay_proto::DeviceKey;
use blepay_store::{Audit, Store};
use serde_json::{Value, json};

fn full() -> bool {
    std::env::var("BLEPAY_RELIABILITY").is_ok_and(|v| v == "full")
}

fn dynamodb() -> bool {
    std::env::var("BLEPAY_E2E_STORE").is_ok_and(|v| v == "dynamodb")
}

fn store_name() -> &'static str {
    if dynamodb() { "dynamodb" } else { "sqlite" }
}

// ---------------------------------------------------------------------------------------------
// (a) race
// ---------------------------------------------------------------------------------------------

const HOLD: i64 = 100;
const PRICE: i64 = 25;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn phones_racing_for_machines_never_open_two_sessions_on_one_machine_nor_hold_twice() {
    // Arrange: M online machines, P phones (each funded for exactly one hold), phone i on machine
    // i % M with an advert of its own (use counter i / M).
    let (phones, machines) = if full() { (200, 20) } else { (60, 6) };
    let app = spawn_app().await;
    let mut ms = Vec::new();
    for _ in 0..machines {
        ms.push(app.online_machine(PRICE).await);
    }
    let mut requests = Vec::new();
    for i in 0..phones {
        let user = random_user();
        app.top_up(&user, HOLD).await;
        let m = &ms[i % machines];
        let key = DeviceKey::parse_hex(&m.device_key).unwrap();
        let counter = u16::try_from(i / machines).unwrap();
        let advert = signed_advert(&m.device_id, &key, 0, counter);
        let body = json!({"advert": advert, "maxAmount": HOLD, "idempotencyKey": random_key()});
        requests.push((user, i % machines, body));
    }

    // Act: every phone sends its pay twice at once (a phone retrying after a timeout, same key).
    let barrier = Arc::new(tokio::sync::Barrier::new(2 * phones));
    let mut tasks = Vec::new();
    for (user, machine, body) in &requests {
        for _ in 0..2 {
            let (client, url, barrier) = (app.client.clone(), app.url("/v1/pay"), barrier.clone());
            let (token, body) = (app.token_for(user), body.clone());
            let (user, machine) = (user.clone(), *machine);
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let r = client
                    .post(url)
                    .bearer_auth(token)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                (user, machine, Answer::of(r).await)
            }));
        }
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }

    // Assert: the answers are successes or clean refusals...
    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    let mut sessions_by_machine: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
    let mut sessions_by_user: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (user, machine, a) in &answers {
        if a.status == 200 {
            *codes.entry("200".into()).or_default() += 1;
            let sid = a.str("sessionId");
            sessions_by_machine
                .entry(*machine)
                .or_default()
                .insert(sid.clone());
            sessions_by_user
                .entry(user.clone())
                .or_default()
                .insert(sid);
        } else {
            let code = a.body["code"].as_str().unwrap_or("?").to_owned();
            assert!(
                matches!(
                    (a.status, code.as_str()),
                    (409, "DEVICE_BUSY" | "ADVERT_USED") | (503, "RETRY_LATER")
                ),
                "{a:?}"
            );
            *codes.entry(format!("{} {code}", a.status)).or_default() += 1;
        }
    }
    // ...never more than one session per machine, never more than one per phone (the retry with
    // the same key answers the same session)...
    for (machine, sessions) in &sessions_by_machine {
        assert_eq!(sessions.len(), 1, "machine {machine}: {sessions:?}");
    }
    for (user, sessions) in &sessions_by_user {
        assert_eq!(sessions.len(), 1, "phone {user}: {sessions:?}");
    }
    let winners = sessions_by_machine.len();
    if !codes.contains_key("503 RETRY_LATER") {
        assert_eq!(winners, machines, "every machine was won once: {codes:?}");
    }
    // ...each machine holds exactly its one session (the operator's view), and the holds are
    // exactly the winners'.
    for (i, m) in ms.iter().enumerate() {
        let expected = sessions_by_machine
            .get(&i)
            .and_then(|s| s.first().cloned())
            .unwrap_or_default();
        let device = app.ops_device(&m.device_id).await;
        assert_eq!(
            device["openSessionId"].as_str().unwrap_or(""),
            expected,
            "machine {i}"
        );
    }
    let winners_i64 = i64::try_from(winners).unwrap();
    let phones_i64 = i64::try_from(phones).unwrap();
    let audit = app.audit().await;
    assert!(audit.reconciles(), "{audit:?}");
    assert_eq!(
        (audit.top_ups, audit.held, audit.open_holds),
        (HOLD * phones_i64, HOLD * winners_i64, HOLD * winners_i64),
        "{audit:?}"
    );
    for (user, _, _) in &requests {
        let w = app.wallet(user).await;
        let held: i64 = w["held"].as_str().unwrap().parse().unwrap();
        let expected = if sessions_by_user.contains_key(user) {
            HOLD
        } else {
            0
        };
        assert_eq!(held, expected, "{user}: {w}");
    }

    // Then every machine dispenses and settles: money conserved to the cent.
    let mut revenue = 0;
    for (i, m) in ms.iter().enumerate() {
        let Some(sid) = sessions_by_machine.get(&i).and_then(|s| s.first()) else {
            continue;
        };
        let sid = SessionId::parse(sid).unwrap();
        let units = 1 + u64::try_from(i).unwrap() % 4;
        assert_eq!(m.machine.press().await.unwrap().session, sid, "machine {i}");
        m.machine.report(sid, units, true).await.unwrap();
        revenue += i64::try_from(units).unwrap() * PRICE;
    }
    let audit = app.audit().await;
    assert!(audit.reconciles(), "{audit:?}");
    assert_eq!(
        (audit.held, audit.open_holds, audit.revenue, audit.spent),
        (0, 0, revenue, revenue),
        "{audit:?}"
    );
    println!(
        "reliability: race store={} phones={phones} machines={machines} pays_sent={} \
         sessions={winners} answers={codes:?} revenue={revenue} audit_reconciles=true",
        store_name(),
        2 * phones
    );
}

// ---------------------------------------------------------------------------------------------
// (b) kill -9 under load
// ---------------------------------------------------------------------------------------------

/// Where the killed server keeps its data: a SQLite dir, or a DynamoDB Local table.
enum Data {
    Sqlite(PathBuf),
    Dynamo {
        endpoint: String,
        table: String,
        dir: PathBuf,
    },
}

impl Data {
    async fn new(dir: &Path) -> Self {
        if dynamodb() {
            let local = blepay_dynamodb::testing::DynamoLocal::shared();
            let table = blepay_dynamodb::testing::unique_table();
            let client = blepay_dynamodb::testing::client(local.endpoint(), Vec::new());
            blepay_dynamodb::create_table(&client, &table)
                .await
                .unwrap();
            Self::Dynamo {
                endpoint: local.endpoint().to_owned(),
                table,
                dir: dir.join("data"),
            }
        } else {
            Self::Sqlite(dir.join("data"))
        }
    }

    /// The ledger audit, read straight from the store (the server is dead by then).
    async fn audit(&self) -> Audit {
        match self {
            Self::Sqlite(dir) => blepay_sqlite::SqliteStore::open(&dir.join("blepay.db"))
                .unwrap()
                .audit()
                .await
                .unwrap(),
            Self::Dynamo {
                endpoint, table, ..
            } => {
                let client = blepay_dynamodb::testing::client(endpoint, Vec::new());
                blepay_dynamodb::DynamoStore::new(client, table.clone())
                    .audit()
                    .await
                    .unwrap()
            }
        }
    }
}

/// Start `blepay serve` on `data`'s store.
async fn start_server(data: &Data) -> ServeProcess {
    match data {
        Data::Sqlite(dir) => ServeProcess::start(&[("BLEPAY_DATA_DIR", dir.as_os_str())]).await,
        Data::Dynamo {
            endpoint,
            table,
            dir,
        } => {
            ServeProcess::start(&[
                ("BLEPAY_DATA_DIR", dir.as_os_str()),
                ("BLEPAY_STORE", "dynamodb".as_ref()),
                ("BLEPAY_DYNAMODB_ENDPOINT", endpoint.as_ref()),
                ("BLEPAY_DYNAMODB_TABLE", table.as_ref()),
            ])
            .await
        }
    }
}

/// What the server acknowledged (answered 200) before it was killed.
#[derive(Debug, Default)]
struct Acks {
    top_ups: Vec<(String, String, i64)>,
    pays: Vec<(String, String, String, String)>, // user, key, advert, session
    settled: Vec<(String, String, i64)>,         // user, session, amount
    attempted: u64,
    /// Refusals seen, by code (an in-flight request cut by the kill is `unanswered`).
    refused: BTreeMap<String, u64>,
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

async fn send(client: &reqwest::Client, url: String, token: &str, body: &Value) -> Option<Value> {
    send_or_refusal(client, url, token, body).await.ok()
}

/// The body of a 200, or the refusal's code.
async fn send_or_refusal(
    client: &reqwest::Client,
    url: String,
    token: &str,
    body: &Value,
) -> Result<Value, String> {
    let r = client.post(url).bearer_auth(token).json(body).send().await;
    let a = Answer::of(r.map_err(|_| "unanswered".to_owned())?).await;
    if a.status == 200 {
        Ok(a.body)
    } else {
        Err(format!(
            "{} {}",
            a.status,
            a.body["code"].as_str().unwrap_or("?")
        ))
    }
}

/// One worker: its own user and machine; top up, pay, press, settle, again, until stopped.
async fn worker(
    address: String,
    user: String,
    machine: Machine,
    acks: Arc<Mutex<Acks>>,
    stop: Arc<AtomicBool>,
) {
    let client = reqwest::Client::new();
    let token = phone_token(&user);
    while !stop.load(Ordering::SeqCst) {
        let key = random_key();
        acks.lock().unwrap().attempted += 1;
        let url = format!("{address}/v1/ops/wallets/{user}/topup");
        let body = json!({"amount": 100, "idempotencyKey": key});
        match send_or_refusal(&client, url, OPS_TOKEN, &body).await {
            Ok(_) => acks.lock().unwrap().top_ups.push((user.clone(), key, 100)),
            Err(code) => {
                let dead = code == "unanswered";
                *acks.lock().unwrap().refused.entry(code).or_default() += 1;
                if dead {
                    return;
                }
            }
        }
        let Ok(advert) = machine.advert() else { return };
        let advert = advert["advert"].as_str().unwrap().to_owned();
        let key = random_key();
        let body = json!({"advert": advert, "maxAmount": HOLD, "idempotencyKey": key});
        acks.lock().unwrap().attempted += 1;
        let paid = match send_or_refusal(&client, format!("{address}/v1/pay"), &token, &body).await
        {
            Ok(paid) => paid,
            Err(code) => {
                let dead = code == "unanswered";
                *acks.lock().unwrap().refused.entry(code).or_default() += 1;
                if dead {
                    return; // the server is gone: this worker's load ends here
                }
                continue;
            }
        };
        let sid = paid["sessionId"].as_str().unwrap().to_owned();
        acks.lock()
            .unwrap()
            .pays
            .push((user.clone(), key, advert, sid.clone()));
        let session = SessionId::parse(&sid).unwrap();
        match machine.press().await {
            Ok(g) if g.session == session => {}
            _ => return,
        }
        if machine.report(session, 2, true).await.is_err() {
            return;
        }
        acks.lock()
            .unwrap()
            .settled
            .push((user.clone(), sid, 2 * PRICE));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_load_loses_no_acknowledged_operation_and_the_ledger_reconciles() {
    let (workers, kills, load) = if full() {
        (32, 3, Duration::from_secs(4))
    } else {
        (8, 1, Duration::from_millis(1500))
    };
    let dir = tempfile::tempdir().unwrap();
    let data = Data::new(dir.path()).await;
    let mut server = start_server(&data).await;

    // Arrange: one machine and one user per worker; the machines keep their state on disk.
    let client = reqwest::Client::new();
    let mut fleet = Vec::new();
    for w in 0..workers {
        let device_id = random_device_id();
        let reg = send(
            &client,
            format!("{}/v1/ops/devices", server.address),
            OPS_TOKEN,
            &json!({"deviceId": device_id, "name": "Water dispenser", "pricePerUnit": PRICE,
                    "unitName": "litre", "currency": "EUR"}),
        )
        .await
        .unwrap();
        let key = reg["deviceKey"].as_str().unwrap().to_owned();
        fleet.push((
            format!("w{w}-{}", random_user()),
            device_id,
            key,
            dir.path().join(format!("machine-{w}")),
        ));
    }

    let acks = Arc::new(Mutex::new(Acks::default()));
    for _ in 0..kills {
        // Every machine sends a heartbeat (it is online), then the workers run until the kill.
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for (user, device_id, key, state) in &fleet {
            let m = Machine::new(&server.address, device_id, key, 0, state).unwrap();
            m.heartbeat(blepay_e2e::test_telemetry()).await.unwrap();
            tasks.push(tokio::spawn(worker(
                server.address.clone(),
                user.clone(),
                m,
                acks.clone(),
                stop.clone(),
            )));
        }
        tokio::time::sleep(load).await;

        // Act: SIGKILL mid-load, stop the workers (what was in flight is not acknowledged), and
        // restart on the same data.
        server.kill_9();
        stop.store(true, Ordering::SeqCst);
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
        server = start_server(&data).await;

        // The sessions the kill left open (paid, not settled) are finished by their machine:
        // the one waiting is started by a press (a press the kill left unanswered in the
        // machine's outbox is sent again first, with the same bytes), the active one reported.
        for (user, device_id, key, state) in &fleet {
            let m = Machine::new(&server.address, device_id, key, 0, state).unwrap();
            let token = phone_token(user);
            let url = format!("{}/v1/ops/devices/{device_id}", server.address);
            let d = client.get(url).bearer_auth(OPS_TOKEN).send().await.unwrap();
            let d = Answer::of(d).await.ok();
            let mut open: BTreeSet<SessionId> = d["openSessionId"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(|s| SessionId::parse(s).unwrap())
                .into_iter()
                .collect();
            let last_pay = acks
                .lock()
                .unwrap()
                .pays
                .iter()
                .rev()
                .find(|p| &p.0 == user)
                .map(|p| p.3.clone());
            open.extend(last_pay.map(|s| SessionId::parse(&s).unwrap()));
            for sid in open {
                let url = format!("{}/v1/sessions/{sid}", server.address);
                let s = client.get(url).bearer_auth(&token).send().await.unwrap();
                let s = Answer::of(s).await.ok();
                match s["status"].as_str() {
                    Some("AUTHORIZED") => {
                        assert_eq!(m.press().await.unwrap().session, sid);
                    }
                    Some("ACTIVE") => {}
                    _ => continue,
                }
                m.report(sid, 2, true).await.unwrap();
                acks.lock()
                    .unwrap()
                    .settled
                    .push((user.clone(), sid.to_string(), 2 * PRICE));
            }
        }
    }
    let acks = std::mem::take(&mut *acks.lock().unwrap());

    // Assert: the ledger reconciles and holds at least every acknowledged top-up...
    let before = data.audit().await;
    assert!(before.reconciles(), "{before:?}");
    let acked_top_ups: i64 = acks.top_ups.iter().map(|t| t.2).sum();
    assert!(
        before.top_ups >= acked_top_ups,
        "{before:?} < {acked_top_ups}"
    );

    // ...replaying every acknowledged top-up (same key) credits nothing: each one is there...
    for (user, key, amount) in &acks.top_ups {
        let url = format!("{}/v1/ops/wallets/{user}/topup", server.address);
        let body = json!({"amount": amount, "idempotencyKey": key});
        assert!(
            send(&client, url, OPS_TOKEN, &body).await.is_some(),
            "{user} {key}"
        );
    }
    // ...every acknowledged pay answers its own session again, and every acknowledged settlement
    // is SETTLED for its amount...
    let mut settled: BTreeMap<String, i64> = BTreeMap::new();
    for (user, sid, amount) in &acks.settled {
        settled.insert(sid.clone(), *amount);
        let url = format!("{}/v1/sessions/{sid}", server.address);
        let s = client
            .get(url)
            .bearer_auth(phone_token(user))
            .send()
            .await
            .unwrap();
        let s = Answer::of(s).await.ok();
        assert_eq!(
            (s["status"].as_str(), s["amount"].as_str()),
            (Some("SETTLED"), Some(amount.to_string().as_str())),
            "{s}"
        );
    }
    for (user, key, advert, sid) in &acks.pays {
        let body = json!({"advert": advert, "maxAmount": HOLD, "idempotencyKey": key});
        let url = format!("{}/v1/pay", server.address);
        let again = send(&client, url, &phone_token(user), &body).await;
        assert_eq!(
            again.as_ref().and_then(|a| a["sessionId"].as_str()),
            Some(sid.as_str()),
            "{again:?}"
        );
    }
    server.kill_9();
    let after = data.audit().await;
    assert!(after.reconciles(), "{after:?}");
    assert_eq!(after.top_ups, before.top_ups, "a replay credited again");
    let acked_revenue: i64 = settled.values().sum();
    assert!(
        after.revenue >= acked_revenue,
        "{after:?} < {acked_revenue}"
    );
    println!(
        "reliability: kill-9 store={} workers={workers} kills={kills} attempted={} \
         acknowledged: top_ups={} pays={} settlements={} refused={:?} audit={after:?} reconciles=true",
        store_name(),
        acks.attempted,
        acks.top_ups.len(),
        acks.pays.len(),
        settled.len(),
        acks.refused
    );
}

// ---------------------------------------------------------------------------------------------
// (c) the machine link through a proxy dropping 30% of connections
// ---------------------------------------------------------------------------------------------

/// A machine on the raw protocol: every request is a fresh connection through the proxy (as a
/// 2G modem does), retried with the same bytes until an answer comes back.
struct LossyMachine {
    link: Link,
    url: String,
    http: reqwest::Client,
    retries: u32,
}

impl LossyMachine {
    async fn exchange(&mut self, body: &blepay_device_client::Request) -> machine::Answer {
        let pending = self.link.seal(body);
        for _ in 0..60 {
            let r = self
                .http
                .post(&self.url)
                .header("content-type", "application/octet-stream")
                .header("connection", "close")
                .body(pending.frame.clone())
                .send()
                .await;
            let bytes = match r {
                Ok(r) => r.bytes().await,
                Err(e) => Err(e),
            };
            if let Ok(b) = bytes {
                let a = self.link.identity.open(&pending, &b).unwrap();
                assert_eq!(a.refusal(), None, "{:?}", a.body);
                return a.body;
            }
            self.retries += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no answer through the proxy after 60 attempts");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn final_reports_through_a_proxy_dropping_30_percent_of_connections_settle_exactly_once() {
    let (machines, cycles) = if full() { (20, 5) } else { (4, 3) };
    let app = spawn_app().await;
    let proxy = blepay_e2e::proxy::Proxy::start(([127, 0, 0, 1], app.port).into(), 30, 0x05ee_db1e);
    let funds = 1_000_000;

    // Each machine runs its cycles concurrently with the others: pay (phone, direct), then the
    // press (one exchange starts the session) and the final report through the proxy. One user
    // per machine: a user may hold one unstarted session at a time (BLEPAY_MAX_UNSTARTED_PER_USER).
    let mut tasks = Vec::new();
    let mut users = Vec::new();
    for i in 0..machines {
        let user = random_user();
        app.top_up(&user, funds).await;
        users.push(user.clone());
        let (id, key) = app.register_device(PRICE).await;
        let mut m = LossyMachine {
            link: Link::new(identity(&id, &key)),
            url: format!("{}/v1/device", proxy.address),
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            retries: 0,
        };
        let (client, pay_url, token) =
            (app.client.clone(), app.url("/v1/pay"), app.token_for(&user));
        let device_key = DeviceKey::parse_hex(&key).unwrap();
        tasks.push(tokio::spawn(async move {
            m.exchange(&blepay_device_client::heartbeat(
                blepay_e2e::test_telemetry(),
            ))
            .await;
            let mut expected = Vec::new();
            for c in 0..cycles {
                let advert = signed_advert(&id, &device_key, 0, u16::try_from(c).unwrap());
                let body =
                    json!({"advert": advert, "maxAmount": HOLD, "idempotencyKey": random_key()});
                let r = client
                    .post(&pay_url)
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await;
                let paid = Answer::of(r.unwrap()).await.ok();
                let sid = SessionId::parse(paid["sessionId"].as_str().unwrap()).unwrap();
                let pressed = m.exchange(&blepay_device_client::press()).await;
                let started: Vec<_> = pressed.usable_grants().map(|g| g.session).collect();
                assert_eq!(started, vec![sid]);
                let units = 1 + u64::try_from((i + c) % 4).unwrap();
                let report =
                    blepay_device_client::report(sid, blepay_core::Units::new(units), true);
                m.exchange(&report).await;
                expected.push((sid, i64::try_from(units).unwrap() * PRICE));
            }
            (expected, m.retries)
        }));
    }
    let mut expected = Vec::new();
    let mut retries = 0;
    let mut spent = 0;
    for (t, user) in tasks.into_iter().zip(&users) {
        let (e, r) = t.await.unwrap();
        retries += r;
        // Assert: every session settled once, for its amount; each wallet and the ledger agree.
        let mut user_spent = 0;
        for (sid, amount) in &e {
            let s = app.ops_session(&sid.to_string()).await;
            assert_eq!(
                (s["status"].as_str(), s["amount"].as_str()),
                (Some("SETTLED"), Some(amount.to_string().as_str())),
                "{s}"
            );
            user_spent += amount;
        }
        let w = app.wallet(user).await;
        assert_eq!(
            (
                w["available"].as_str(),
                w["held"].as_str(),
                w["spent"].as_str()
            ),
            (
                Some((funds - user_spent).to_string().as_str()),
                Some("0"),
                Some(user_spent.to_string().as_str())
            ),
            "{w}"
        );
        spent += user_spent;
        expected.extend(e);
    }
    let audit = app.audit().await;
    assert!(audit.reconciles(), "{audit:?}");
    assert_eq!(audit.revenue, spent, "{audit:?}");
    let stats = proxy.stats();
    assert!(
        stats.dropped_before > 0 && stats.dropped_after > 0,
        "both kinds of drop happened: {stats:?}"
    );
    assert_eq!(retries, stats.dropped_before + stats.dropped_after);
    println!(
        "reliability: lossy-link store={} machines={machines} cycles={} connections: passed={} \
         dropped_before={} dropped_after={} machine_retries={retries} settled_once=true",
        store_name(),
        expected.len(),
        stats.passed,
        stats.dropped_before,
        stats.dropped_after
    );
}
