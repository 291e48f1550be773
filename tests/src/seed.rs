//! # A demo fleet: realistic data for the console's browser tests and its screenshots
//!
//! [`seed_demo_fleet`] fills a fresh [`TestApp`] through its public API only (the ops routes
//! with the bootstrap token, phones with their JWTs, machines over the device protocol): seven
//! machines in a building — most online with telemetry at different signal levels (a few
//! heartbeats each, so charts have points), one never heard (OFFLINE), one whose heartbeat
//! carries a fault code (FAULT), one taken out of service (PATCH), one with a session running
//! (BUSY) — four users topped up, five completed paid sessions (verify → pay → press → final
//! report), one problem reported by a user, and a support and a finance operator.

use blepay_core::{SessionId, Telemetry};
use serde_json::{Value, json};

use crate::{TestApp, TestMachine, random_device_id, random_key};

/// One demo machine.
#[derive(Debug)]
pub struct DemoMachine {
    pub device_id: String,
    pub device_key: String,
    pub name: &'static str,
    /// Minor units per unit.
    pub price: i64,
    pub unit_name: &'static str,
    /// The state the fleet page should show for it.
    pub expected_state: &'static str,
    /// Its simulated firmware (none for the machine never heard from).
    pub sim: TestMachine,
}

/// A completed (SETTLED) demo session.
#[derive(Debug, Clone)]
pub struct DemoSession {
    pub session_id: String,
    pub user: String,
    pub device_id: String,
    pub hold: i64,
    /// What it captured, minor units.
    pub amount: i64,
}

/// What [`seed_demo_fleet`] made.
#[derive(Debug)]
pub struct DemoFleet {
    pub machines: Vec<DemoMachine>,
    /// (user id, what they were topped up with in minor units).
    pub users: Vec<(String, i64)>,
    pub sessions: Vec<DemoSession>,
    /// The session running on the BUSY machine (ACTIVE).
    pub active_session: String,
    /// The open problem report and the session it is about.
    pub problem_id: String,
    pub problem_session: String,
    /// (operator id, token) of the support operator "Sam Support".
    pub support: (String, String),
    /// (operator id, token) of the finance operator "Fiona Finance".
    pub finance: (String, String),
}

impl DemoFleet {
    /// The machine named `name`.
    pub fn machine(&self, name: &str) -> &DemoMachine {
        self.machines
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no demo machine {name}"))
    }

    /// The first machine in `state` ("IDLE", "OFFLINE", "FAULT", "OUT OF SERVICE", "BUSY").
    pub fn in_state(&self, state: &str) -> &DemoMachine {
        self.machines
            .iter()
            .find(|m| m.expected_state == state)
            .unwrap_or_else(|| panic!("no demo machine in state {state}"))
    }
}

/// Telemetry of a machine with `signal` (0..=31) after `uptime` seconds.
fn telemetry(firmware: &str, signal: u8, uptime: u64, faults: &[u32], lifetime: u64) -> Telemetry {
    Telemetry {
        firmware_version: firmware.into(),
        fault_codes: faults.to_vec(),
        signal_quality: signal,
        uptime_secs: uptime,
        boot_count: 3,
        outbox_depth: 0,
        lifetime_units: lifetime,
    }
}

struct Spec {
    name: &'static str,
    price: i64,
    unit: &'static str,
    /// Signal levels of its heartbeats, oldest first; empty: never heard.
    signals: &'static [u8],
    faults: &'static [u32],
    out_of_service: bool,
    expected: &'static str,
}

const SPECS: [Spec; 7] = [
    Spec {
        name: "Water dispenser, Lobby",
        price: 25,
        unit: "litre",
        signals: &[22, 24, 23, 25],
        faults: &[],
        out_of_service: false,
        expected: "IDLE",
    },
    Spec {
        name: "Washer 3, Block B",
        price: 350,
        unit: "cycle",
        signals: &[15, 13, 14, 14],
        faults: &[],
        out_of_service: false,
        expected: "IDLE",
    },
    Spec {
        name: "Dryer 2, Block B",
        price: 200,
        unit: "cycle",
        signals: &[9, 7, 6, 8],
        faults: &[],
        out_of_service: false,
        expected: "IDLE",
    },
    Spec {
        name: "Snack vending, Gym",
        price: 150,
        unit: "item",
        signals: &[19, 20, 18, 19],
        faults: &[],
        out_of_service: false,
        expected: "BUSY",
    },
    Spec {
        name: "Coffee machine, 2nd floor",
        price: 120,
        unit: "cup",
        signals: &[17, 16, 12, 11],
        faults: &[4_017],
        out_of_service: false,
        expected: "FAULT",
    },
    Spec {
        name: "Washer 1, Block A",
        price: 350,
        unit: "cycle",
        signals: &[20, 21, 21, 20],
        faults: &[],
        out_of_service: true,
        expected: "OUT OF SERVICE",
    },
    Spec {
        name: "Water dispenser, Car park",
        price: 25,
        unit: "litre",
        signals: &[],
        faults: &[],
        out_of_service: false,
        expected: "OFFLINE",
    },
];

/// Register a machine named `name` → (device id, device key hex).
pub async fn register_named(
    app: &TestApp,
    name: &str,
    price: i64,
    unit_name: &str,
) -> (String, String) {
    let device_id = random_device_id();
    let body = app
        .post(
            "/v1/ops/devices",
            &app.ops_token,
            &json!({"deviceId": device_id, "name": name, "pricePerUnit": price,
                    "unitName": unit_name, "currency": "EUR"}),
        )
        .await
        .ok();
    (
        device_id,
        body["deviceKey"].as_str().expect("deviceKey").to_owned(),
    )
}

/// Create an operator named `name` with `role` as the bootstrap owner → (operator id, token).
pub async fn create_operator(app: &TestApp, name: &str, role: &str) -> (String, String) {
    let body = app
        .post(
            "/v1/ops/operators",
            &app.ops_token,
            &json!({"name": name, "role": role, "idempotencyKey": random_key()}),
        )
        .await
        .ok();
    (
        body["operator"]["operatorId"]
            .as_str()
            .expect("operatorId")
            .to_owned(),
        body["token"].as_str().expect("token").to_owned(),
    )
}

/// `user` verifies and pays `hold` on `m`, presses start → the session id (ACTIVE).
pub async fn start_session(app: &TestApp, m: &TestMachine, user: &str, hold: i64) -> String {
    let advert = m.advert();
    let verified = app.verify(user, &advert).await.ok();
    assert_eq!(verified["state"], "IDLE", "{verified}");
    let paid = app.pay(user, &advert, hold, &random_key()).await.ok();
    let sid = paid["sessionId"].as_str().expect("sessionId").to_owned();
    let grant = m.machine.press().await.expect("press start");
    assert_eq!(grant.session.to_string(), sid);
    sid
}

/// ... and the machine's final report of `units` settles it → the captured amount.
pub async fn complete_session(
    app: &TestApp,
    m: &TestMachine,
    user: &str,
    hold: i64,
    units: u64,
) -> DemoSession {
    let sid = start_session(app, m, user, hold).await;
    let settled = m
        .machine
        .report(SessionId::parse(&sid).expect("session id"), units, true)
        .await
        .expect("final report");
    DemoSession {
        session_id: sid,
        user: user.to_owned(),
        device_id: m.device_id.clone(),
        hold,
        amount: settled.amount,
    }
}

/// PATCH `/v1/ops/devices/{id}` with `body` as the bootstrap owner → the device JSON.
pub async fn patch_device(app: &TestApp, device_id: &str, body: &Value) -> Value {
    let r = app
        .client
        .patch(app.url(&format!("/v1/ops/devices/{device_id}")))
        .bearer_auth(&app.ops_token)
        .json(body)
        .send()
        .await
        .expect("PATCH device");
    crate::Answer::of(r).await.ok()
}

/// Fill `app` with the demo fleet (see the module doc).
pub async fn seed_demo_fleet(app: &TestApp) -> DemoFleet {
    // Machines: registered, heard from a few times (signal levels vary), one faulty.
    let mut machines = Vec::new();
    for (i, spec) in SPECS.iter().enumerate() {
        let (device_id, device_key) = register_named(app, spec.name, spec.price, spec.unit).await;
        let sim = app.machine(&device_id, &device_key);
        let lifetime = 1_000 + 137 * u64::try_from(i).unwrap_or(0);
        let beats = spec.signals.len();
        for (n, &signal) in spec.signals.iter().enumerate() {
            // The fault shows in the latest heartbeat only: it began recently.
            let faults = if n + 1 == beats { spec.faults } else { &[] };
            let uptime = 3_600 * (u64::try_from(n).unwrap_or(0) + 1);
            sim.machine
                .heartbeat(telemetry("2.4.1", signal, uptime, faults, lifetime))
                .await
                .expect("heartbeat");
        }
        machines.push(DemoMachine {
            device_id,
            device_key,
            name: spec.name,
            price: spec.price,
            unit_name: spec.unit,
            expected_state: spec.expected,
            sim,
        });
    }

    // Users with money.
    let users: Vec<(String, i64)> = [
        ("amelia.khan", 2_000),
        ("ben.okafor", 5_000),
        ("chloe.martin", 1_500),
        ("dmitri.ivanov", 1_000),
    ]
    .into_iter()
    .map(|(u, a)| (u.to_owned(), a))
    .collect();
    for (user, amount) in &users {
        app.top_up(user, *amount).await;
    }

    // Completed paid sessions.
    let water = &machines[0].sim;
    let washer = &machines[1].sim;
    let dryer = &machines[2].sim;
    let vending = &machines[3].sim;
    let sessions = vec![
        complete_session(app, water, "amelia.khan", 200, 6).await, // 150
        complete_session(app, washer, "ben.okafor", 350, 1).await, // 350
        complete_session(app, dryer, "chloe.martin", 400, 2).await, // 400
        complete_session(app, water, "dmitri.ivanov", 100, 3).await, // 75
        complete_session(app, washer, "amelia.khan", 350, 1).await, // 350
    ];

    // A user's problem: Ben's wash.
    let problem_session = sessions[1].session_id.clone();
    let problem = app
        .post(
            &format!("/v1/sessions/{problem_session}/problem"),
            &app.token_for("ben.okafor"),
            &json!({"reason": "The drum never turned; my clothes came out dry and dirty"}),
        )
        .await
        .ok();
    let problem_id = problem["problemId"].as_str().expect("problemId").to_owned();

    // One session still running: the vending machine is BUSY.
    let active_session = start_session(app, vending, "chloe.martin", 300).await;

    // The washer in Block A is out of service.
    for (m, spec) in machines.iter().zip(&SPECS) {
        if spec.out_of_service {
            let patched = patch_device(
                app,
                &m.device_id,
                &json!({"serviceState": "OUT_OF_SERVICE"}),
            )
            .await;
            assert_eq!(patched["serviceState"], "OUT_OF_SERVICE", "{patched}");
        }
    }

    // The operators.
    let support = create_operator(app, "Sam Support", "support").await;
    let finance = create_operator(app, "Fiona Finance", "finance").await;

    // What the fleet page will show, by the API's word.
    for m in &machines {
        let d = app.ops_device(&m.device_id).await;
        let want = match m.expected_state {
            "OUT OF SERVICE" => "IDLE",
            s => s,
        };
        assert_eq!(d["state"], want, "{}: {d}", m.name);
    }

    DemoFleet {
        machines,
        users,
        sessions,
        active_session,
        problem_id,
        problem_session,
        support,
        finance,
    }
}
