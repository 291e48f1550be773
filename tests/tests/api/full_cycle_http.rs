use blepay_core::SessionStatus;
use blepay_device_client::Status;
use blepay_e2e::{spawn_app, test_telemetry};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn a_phone_pays_a_machine_and_the_money_settles_over_http_json() {
    // Arrange: a machine at 25 per litre, alice with 1000.
    let app = spawn_app().await;
    let (device_id, device_key) = app.register_device(25).await;
    let topped = app.top_up("alice", 1000).await;
    assert_eq!(
        topped,
        json!({"userId": "alice", "available": "1000", "held": "0", "spent": "0", "currency": "EUR",
              "dailyLimit": "0", "spentToday": "0", "dailyLimitOverridden": false, "refunded": "0"})
    );
    let m = app.machine(&device_id, &device_key);
    let alice = app.token_for("alice");

    // Act + Assert: the machine's heartbeat brings it online.
    m.machine.heartbeat(test_telemetry()).await.unwrap();
    let advert = m.advert();
    let verified = app
        .post("/v1/verify", &alice, &json!({"advert": advert}))
        .await
        .ok();
    assert_eq!(
        verified,
        json!({"deviceId": device_id, "name": "Water dispenser", "pricePerUnit": "25",
               "unitName": "litre", "currency": "EUR", "state": "IDLE",
               "serviceState": "IN_SERVICE"})
    );

    // Pay: hold 200.
    let before_pay = blepay_e2e::unix_now();
    let paid = app.pay("alice", &advert, 200, "pay-1").await.ok();
    let session_id = paid["sessionId"].as_str().unwrap().to_owned();
    assert_eq!(paid["status"], "AUTHORIZED");
    assert_eq!(paid["holdAmount"], "200");
    assert_eq!(paid["deviceId"], device_id.as_str());
    let expires_at: u64 = paid["expiresAt"].as_str().unwrap().parse().unwrap();
    assert!(
        (before_pay + 120..=blepay_e2e::unix_now() + 120).contains(&expires_at),
        "{paid}"
    );
    assert_eq!(
        app.get("/v1/wallet", &alice).await.ok(),
        json!({"userId": "alice", "available": "800", "held": "200", "spent": "0", "currency": "EUR",
              "dailyLimit": "0", "spentToday": "200", "dailyLimitOverridden": false, "refunded": "0"})
    );
    let busy = app
        .post("/v1/verify", &alice, &json!({"advert": m.advert()}))
        .await
        .ok();
    assert_eq!(busy["state"], "BUSY");

    // The user presses start: one exchange starts the session and brings its terms, with the
    // report deadline (the ACTIVE timeout from now).
    let before_press = blepay_e2e::unix_now();
    let grant = m.machine.press().await.unwrap();
    assert_eq!(grant.session.to_string(), session_id);
    assert_eq!(
        (
            grant.hold.minor(),
            grant.price_per_unit.minor(),
            grant.use_counter.get()
        ),
        (200, 25, 0)
    );
    let timeout = blepay_service::config::DEFAULT_ACTIVE_TIMEOUT_SECS;
    assert!(
        (before_press + timeout..=blepay_e2e::unix_now() + timeout).contains(&grant.expires_at),
        "the press answer's expires_at is the report deadline: {}",
        grant.expires_at
    );
    let sid = grant.session;

    // Progress, final report: 3 litres × 25 = 75 ≤ 200.
    let active = app
        .get(&format!("/v1/sessions/{session_id}"), &alice)
        .await
        .ok();
    assert_eq!(active["status"], "ACTIVE");
    let progress = m.machine.report(sid, 2, false).await.unwrap();
    assert_eq!(progress.status, Status::Known(SessionStatus::Active));
    let settled = m.machine.report(sid, 3, true).await.unwrap();
    assert_eq!(settled.status, Status::Known(SessionStatus::Settled));
    assert_eq!(settled.amount, 75);

    // The wallet, exactly.
    assert_eq!(
        app.get("/v1/wallet", &alice).await.ok(),
        json!({"userId": "alice", "available": "925", "held": "0", "spent": "75", "currency": "EUR",
              "dailyLimit": "0", "spentToday": "75", "dailyLimitOverridden": false, "refunded": "0"})
    );
    assert_eq!(
        app.wallet("alice").await,
        app.get("/v1/wallet", &alice).await.ok()
    );

    // The session, via the phone and the ops routes.
    let phone_view = app
        .get(&format!("/v1/sessions/{session_id}"), &alice)
        .await
        .ok();
    for field in [
        ("sessionId", json!(session_id)),
        ("status", json!("SETTLED")),
        ("deviceId", json!(device_id)),
        ("userId", json!("alice")),
        ("holdAmount", json!("200")),
        ("units", json!("3")),
        ("amount", json!("75")),
        ("pricePerUnit", json!("25")),
        ("unitName", json!("litre")),
        ("currency", json!("EUR")),
        ("expiresAt", json!(expires_at.to_string())),
        ("useCounter", json!(0)),
    ] {
        assert_eq!(phone_view[field.0], field.1, "{}: {phone_view}", field.0);
    }
    assert_ne!(phone_view["startedAt"], "0");
    assert_ne!(phone_view["endedAt"], "0");
    assert_eq!(app.ops_session(&session_id).await, phone_view);

    // The machine is idle again (its next advert has use counter 1); money reconciles.
    let idle = app
        .post("/v1/verify", &alice, &json!({"advert": m.advert()}))
        .await
        .ok();
    assert_eq!(idle["state"], "IDLE");
    let audit = app.audit().await;
    assert!(audit.reconciles(), "{audit:?}");
    assert_eq!(
        (audit.top_ups, audit.available, audit.held, audit.revenue),
        (1000, 925, 0, 75)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_final_amount_is_capped_at_the_hold() {
    // Arrange
    let app = spawn_app().await;
    let m = app.online_machine(25).await;
    app.top_up("bob", 1000).await;
    let paid = app.pay("bob", &m.advert(), 100, "pay-cap").await.ok();
    let sid = m.machine.press().await.unwrap().session;
    assert_eq!(sid.to_string(), paid["sessionId"].as_str().unwrap());

    // Act: 10 litres × 25 = 250 > hold 100.
    let settled = m.machine.report(sid, 10, true).await.unwrap();

    // Assert
    assert_eq!(settled.amount, 100);
    assert_eq!(
        app.wallet("bob").await,
        json!({"userId": "bob", "available": "900", "held": "0", "spent": "100", "currency": "EUR",
              "dailyLimit": "0", "spentToday": "100", "dailyLimitOverridden": false, "refunded": "0"})
    );
    assert!(app.audit().await.reconciles());
}
