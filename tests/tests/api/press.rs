//! The machine link of issue 9: the start button fetches the session in one exchange, the rare
//! heartbeat carries telemetry and liveness, sessions end even when the machine never reports,
//! replays do not fake liveness, and the advert's link-down and fault flags are honoured.
//! Every scenario ends with the ledger reconciled.

use std::time::Duration;

use blepay_core::{SessionStatus, Telemetry, Units};
use blepay_device_client::{RefusalCode, Status, heartbeat, report};
use blepay_e2e::{
    Settings, TestApp, signed_advert_with, spawn_app, spawn_app_with, test_telemetry, unix_now,
};
use blepay_proto::{AdvertFlags, DeviceKey};
use serde_json::{Value, json};

/// Sleep until the unix clock is past `deadline`.
async fn sleep_past(deadline: u64) {
    while unix_now() <= deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Poll `f` every 100 ms for up to `secs` seconds until it holds.
async fn eventually<F, Fut>(secs: u64, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..secs * 10 {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

async fn reconciled(app: &TestApp) -> blepay_store::Audit {
    let audit = app.audit().await;
    assert!(
        audit.reconciles(),
        "the ledger does not reconcile: {audit:?}"
    );
    audit
}

fn money(v: &Value, field: &str) -> i64 {
    v[field].as_str().unwrap_or("0").parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_press_with_a_waiting_session_starts_it_in_one_exchange_and_the_cycle_settles() {
    // Arrange: an online machine, a paid session waiting on it.
    let app = spawn_app().await;
    let m = app.online_machine(25).await;
    app.top_up("pia", 1000).await;
    let paid = app.pay("pia", &m.advert(), 200, "p-1").await.ok();
    assert_eq!(paid["status"], "AUTHORIZED");
    let seq_before = m.machine.next_seq().unwrap();

    // Act: the start button — one request, no poll before it.
    let grant = m.machine.press().await.unwrap();

    // Assert: one exchange, and its answer carries the terms the valve needs.
    assert_eq!(
        m.machine.next_seq().unwrap(),
        seq_before + 1,
        "one exchange"
    );
    assert_eq!(
        grant.session.to_string(),
        paid["sessionId"].as_str().unwrap()
    );
    assert_eq!(
        (
            grant.hold.minor(),
            grant.price_per_unit.minor(),
            grant.max_units().get()
        ),
        (200, 25, 8)
    );
    let sid = grant.session.to_string();
    assert_eq!(app.ops_session(&sid).await["status"], "ACTIVE");
    let device = app.ops_device(&m.device_id).await;
    assert_eq!(
        (device["state"].as_str(), device["openSessionId"].as_str()),
        (Some("BUSY"), Some(sid.as_str())),
        "{device}"
    );

    // The final report settles: the second and last exchange of the cycle.
    let settled = m.machine.report(grant.session, 3, true).await.unwrap();
    assert_eq!(
        (settled.status, settled.amount),
        (Status::Known(SessionStatus::Settled), 75)
    );
    assert_eq!(m.machine.next_seq().unwrap(), seq_before + 2);
    let s = app.ops_session(&sid).await;
    assert_eq!(
        (
            s["status"].as_str(),
            s["amount"].as_str(),
            s["closedBy"].as_str()
        ),
        (Some("SETTLED"), Some("75"), Some("REPORT")),
        "{s}"
    );
    let w = app.wallet("pia").await;
    assert_eq!((money(&w, "available"), money(&w, "spent")), (925, 75));
    let audit = reconciled(&app).await;
    assert_eq!((audit.held, audit.revenue), (0, 75));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_press_with_no_session_waiting_is_refused_and_changes_nothing() {
    // Arrange: an online machine nobody paid for; a user with money.
    let app = spawn_app().await;
    let m = app.online_machine(25).await;
    app.top_up("quinn", 1000).await;
    let before = app.snapshot("quinn").await;

    // Act
    let (status, answer) = m.machine.press_answer().await.unwrap();

    // Assert: an authenticated refusal with its own code; nothing changed.
    assert_eq!(
        (status, answer.refusal_code()),
        (404, Some(RefusalCode::NoSessionWaiting))
    );
    let after = app.snapshot("quinn").await;
    assert_eq!(after.0, before.0);
    assert_eq!(after.1, before.1);
    let device = app.ops_device(&m.device_id).await;
    assert_eq!(device["state"], "IDLE", "{device}");
    assert_eq!(device["openSessionId"].as_str().unwrap_or(""), "");
    reconciled(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn presses_in_quick_succession_start_one_session() {
    // Arrange
    let app = spawn_app().await;
    let m = app.online_machine(25).await;
    app.top_up("rae", 1000).await;
    app.pay("rae", &m.advert(), 100, "r-1").await.ok();

    // Act: the user presses three times.
    let first = m.machine.press().await.unwrap();
    let again = m.machine.press_answer().await.unwrap();
    let third = m.machine.press_answer().await.unwrap();

    // Assert: the later presses start nothing new and hold nothing more: the server answers
    // them with the session already running (the firmware does not open the valve twice).
    for (status, answer) in [again, third] {
        let named: Vec<_> = answer.body.usable_grants().map(|g| g.session).collect();
        assert_eq!((status, named), (200, vec![first.session]), "{answer:?}");
    }
    assert_eq!(
        app.ops_session(&first.session.to_string()).await["status"],
        "ACTIVE"
    );
    let audit = reconciled(&app).await;
    assert_eq!((audit.held, audit.open_holds), (100, 100));
    m.machine.report(first.session, 2, true).await.unwrap();
    let audit = reconciled(&app).await;
    assert_eq!((audit.held, audit.revenue), (0, 50));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_nobody_presses_for_is_released_by_the_sweeper_and_a_late_press_starts_nothing() {
    // Arrange: a 2 s start timeout, the sweeper every 200 ms.
    let app = spawn_app_with(Settings {
        start_timeout_secs: 2,
        sweep_every: Duration::from_millis(200),
        ..Settings::default()
    })
    .await;
    let m = app.online_machine(25).await;
    app.top_up("sam", 1000).await;
    let paid = app.pay("sam", &m.advert(), 300, "s-1").await.ok();
    let expires_at: u64 = paid["expiresAt"].as_str().unwrap().parse().unwrap();
    assert_eq!(app.audit().await.open_holds, 300);

    // Act: nobody presses; only the ledger is watched.
    sleep_past(expires_at).await;
    let released = eventually(5, || async { app.audit().await.open_holds == 0 }).await;

    // Assert: the hold is back; a press now starts nothing.
    assert!(released, "{:?}", app.audit().await);
    let audit = reconciled(&app).await;
    assert_eq!((audit.held, audit.available), (0, 1000));
    let (status, answer) = m.machine.press_answer().await.unwrap();
    assert!(
        matches!(
            answer.refusal_code(),
            Some(RefusalCode::NoSessionWaiting | RefusalCode::SessionExpired)
        ),
        "{status} {answer:?}"
    );
    assert_eq!(
        app.ops_session(paid["sessionId"].as_str().unwrap()).await["status"],
        "EXPIRED"
    );
    reconciled(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_press_after_the_start_deadline_is_session_expired_and_the_hold_is_released() {
    // Arrange: a 2 s start timeout and no sweeper run during the test.
    let app = spawn_app_with(Settings {
        start_timeout_secs: 2,
        ..Settings::default()
    })
    .await;
    let m = app.online_machine(25).await;
    app.top_up("tia", 1000).await;
    let paid = app.pay("tia", &m.advert(), 300, "t-1").await.ok();
    let expires_at: u64 = paid["expiresAt"].as_str().unwrap().parse().unwrap();
    sleep_past(expires_at).await;

    // Act
    let (status, answer) = m.machine.press_answer().await.unwrap();

    // Assert
    assert_eq!(
        (status, answer.refusal_code()),
        (409, Some(RefusalCode::SessionExpired))
    );
    assert_eq!(
        app.ops_session(paid["sessionId"].as_str().unwrap()).await["status"],
        "EXPIRED"
    );
    assert_eq!(app.wallet("tia").await["available"], "1000");
    reconciled(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_active_session_whose_machine_dies_is_settled_by_timeout_and_a_late_report_never_double_charges()
 {
    // Arrange: ACTIVE sessions time out after 2 s without a report; the sweeper every 200 ms.
    let app = spawn_app_with(Settings {
        active_timeout_secs: 2,
        sweep_every: Duration::from_millis(200),
        ..Settings::default()
    })
    .await;
    let m = app.online_machine(25).await;
    app.top_up("uma", 1000).await;
    app.pay("uma", &m.advert(), 200, "u-1").await.ok();
    let grant = m.machine.press().await.unwrap();
    let sid = grant.session;
    m.machine.report(sid, 2, false).await.unwrap();

    // Act 1: the machine dies (no more reports); the server closes the session by timeout.
    let closed = eventually(10, || async {
        app.ops_session(&sid.to_string()).await["status"] == "SETTLED"
    })
    .await;

    // Assert 1: settled at the last reported units, the rest of the hold released, the
    // machine free.
    assert!(closed, "{}", app.ops_session(&sid.to_string()).await);
    let s = app.ops_session(&sid.to_string()).await;
    assert_eq!(
        (
            s["closedBy"].as_str(),
            s["units"].as_str(),
            s["amount"].as_str()
        ),
        (Some("TIMEOUT"), Some("2"), Some("50")),
        "{s}"
    );
    let w = app.wallet("uma").await;
    assert_eq!(
        (
            money(&w, "available"),
            money(&w, "held"),
            money(&w, "spent")
        ),
        (950, 0, 50),
        "{w}"
    );
    assert_eq!(
        app.ops_device(&m.device_id).await["openSessionId"]
            .as_str()
            .unwrap_or(""),
        ""
    );
    let timed_out = reconciled(&app).await;

    // Act 2: the machine comes back and drains its outbox: the final report of 4 units; then the
    // same report once more with a fresh sequence number, and one frame sent twice byte for byte
    // (a lost answer).
    let (status, late) = m
        .machine
        .exchange(&report(sid, Units::new(4), true))
        .await
        .unwrap();
    let (status_again, _) = m
        .machine
        .exchange(&report(sid, Units::new(4), true))
        .await
        .unwrap();

    let frame = m
        .identity()
        .request(
            m.machine.next_seq().unwrap(),
            &report(sid, Units::new(4), true),
        )
        .frame;
    let (raw_status, raw_first) = app.post_frame(frame.clone()).await;
    let (raw_status_again, raw_again) = app.post_frame(frame).await;

    // Assert 2: answered (authenticated, so the outbox drains), recorded on the session, and
    // money moved at most once, never above the hold.
    assert!(status < 500, "{status} {late:?}");
    assert!(status_again < 500, "{status_again}");
    assert!(raw_status < 500 && raw_status == raw_status_again);
    assert_eq!(
        raw_first, raw_again,
        "a retry gets the byte-identical answer"
    );
    let s = app.ops_session(&sid.to_string()).await;
    assert_eq!(s["status"], "SETTLED", "{s}");
    assert_eq!(s["lateReport"]["units"].as_str(), Some("4"), "{s}");
    let charged = money(&s["lateReport"], "charged");
    let w = app.wallet("uma").await;
    let spent = money(&w, "spent");
    assert_eq!(spent, 50 + charged, "{w} {s}");
    assert!(spent <= 200, "never above the hold: {w}");
    assert!(charged <= 100 - 50, "at most the 4 reported units: {s}");
    assert_eq!(money(&s, "amount"), spent, "{s}");
    let audit = reconciled(&app).await;
    assert_eq!(audit.revenue, timed_out.revenue + charged, "{audit:?}");
    assert_eq!(audit.held, 0);
    assert_eq!(m.machine.outbox_depth().unwrap(), 0, "the outbox drained");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replayed_frame_does_not_make_an_offline_machine_online() {
    // Arrange: machines are OFFLINE after 2 s without a fresh message.
    let app = spawn_app_with(Settings {
        offline_after_secs: 2,
        ..Settings::default()
    })
    .await;
    let (id, key) = app.register_device(25).await;
    let m = app.machine(&id, &key);
    let identity = m.identity();
    let frame = identity.request(1, &heartbeat(test_telemetry())).frame;
    let (status, first) = app.post_frame(frame.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(app.verify("val", &m.advert()).await.ok()["state"], "IDLE");
    let seen = app.ops_device(&id).await["lastSeenAt"].clone();

    // Act: the machine goes silent past the offline window; an eavesdropper replays its frame.
    let offline = eventually(6, || async {
        app.verify("val", &m.advert()).await.ok()["state"] == "OFFLINE"
    })
    .await;
    assert!(offline);
    let (status, replayed) = app.post_frame(frame.clone()).await;

    // Assert: the replay gets the saved answer, but the machine stays OFFLINE.
    assert_eq!((status, &replayed), (200, &first));
    assert_eq!(
        app.verify("val", &m.advert()).await.ok()["state"],
        "OFFLINE"
    );
    let device = app.ops_device(&id).await;
    assert_eq!(
        (device["state"].as_str(), &device["lastSeenAt"]),
        (Some("OFFLINE"), &seen),
        "{device}"
    );
    // A fresh message does bring it back.
    let fresh = identity.request(2, &heartbeat(test_telemetry())).frame;
    assert_eq!(app.post_frame(fresh).await.0, 200);
    assert_eq!(app.verify("val", &m.advert()).await.ok()["state"], "IDLE");
    reconciled(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_and_pay_honour_the_link_down_and_fault_flags() {
    // Arrange: an online machine, a user with money.
    let app = spawn_app().await;
    let m = app.online_machine(25).await;
    app.top_up("wes", 1000).await;
    let key = DeviceKey::parse_hex(&m.device_key).unwrap();
    let link_down = signed_advert_with(&m.device_id, &key, 0, 0, AdvertFlags::LINK_DOWN);
    let fault = signed_advert_with(&m.device_id, &key, 0, 0, AdvertFlags::FAULT);
    let before = app.snapshot("wes").await;

    // Act + Assert: link down reads OFFLINE and cannot be paid...
    assert_eq!(app.verify("wes", &link_down).await.ok()["state"], "OFFLINE");
    app.pay("wes", &link_down, 100, "w-1")
        .await
        .assert_error(409, "DEVICE_OFFLINE");
    // ...a fault reads FAULT and is refused with its own code...
    assert_eq!(app.verify("wes", &fault).await.ok()["state"], "FAULT");
    app.pay("wes", &fault, 100, "w-2")
        .await
        .assert_error(409, "DEVICE_FAULT");
    // ...and neither moved money or created a session.
    let after = app.snapshot("wes").await;
    assert_eq!((&after.0, &after.1), (&before.0, &before.1));
    // The scriptable machine's advert sets the same signed flags.
    let flagged = m.machine.advert_with(AdvertFlags::LINK_DOWN).unwrap();
    assert_eq!(flagged["linkDown"], true);
    let flagged = flagged["advert"].as_str().unwrap().to_owned();
    assert_eq!(app.verify("wes", &flagged).await.ok()["state"], "OFFLINE");
    // The same machine, flags clear: IDLE, and it can be paid.
    assert_eq!(app.verify("wes", &m.advert()).await.ok()["state"], "IDLE");
    app.pay("wes", &m.advert(), 100, "w-3").await.ok();
    reconciled(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_operator_sees_the_latest_heartbeat_telemetry() {
    // Arrange
    let app = spawn_app().await;
    let (id, key) = app.register_device(25).await;
    let m = app.machine(&id, &key);
    let never = app.ops_device(&id).await;
    assert_eq!(never["state"], "OFFLINE", "{never}");

    // Act: two heartbeats; the second one reports a fault.
    m.machine.heartbeat(test_telemetry()).await.unwrap();
    let before = unix_now();
    m.machine
        .heartbeat(Telemetry {
            firmware_version: "fw-2.3.1".into(),
            fault_codes: vec![17, 42],
            signal_quality: 21,
            uptime_secs: 3600,
            boot_count: 7,
            outbox_depth: 0,
            lifetime_units: 12_345,
        })
        .await
        .unwrap();

    // Assert: the device with its tariff, state, last seen and the latest telemetry.
    let d = app.ops_device(&id).await;
    assert_eq!(
        (
            d["deviceId"].as_str(),
            d["pricePerUnit"].as_str(),
            d["unitName"].as_str(),
            d["currency"].as_str()
        ),
        (Some(id.as_str()), Some("25"), Some("litre"), Some("EUR")),
        "{d}"
    );
    let t = &d["telemetry"];
    assert_eq!(
        t,
        &json!({"firmwareVersion": "fw-2.3.1", "faultCodes": [17, 42], "signalQuality": 21,
                "uptimeSecs": "3600", "bootCount": 7, "outboxDepth": 0, "lifetimeUnits": "12345"}),
        "{d}"
    );
    let seen: u64 = d["lastSeenAt"].as_str().unwrap().parse().unwrap();
    let at: u64 = d["telemetryAt"].as_str().unwrap().parse().unwrap();
    assert!(seen >= before && at >= before, "{d}");
    assert_eq!(d["state"], "FAULT", "a heartbeat with fault codes: {d}");
    // A healthy heartbeat clears it.
    m.machine.heartbeat(test_telemetry()).await.unwrap();
    assert_eq!(app.ops_device(&id).await["state"], "IDLE");
}
