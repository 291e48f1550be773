use blepay_e2e::{signed_advert, spawn_app};
use blepay_proto::DeviceKey;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn the_same_top_up_key_twice_credits_once() {
    // Arrange
    let app = spawn_app().await;
    let body = json!({"amount": 300, "idempotencyKey": "topup-1"});

    // Act
    let first = app
        .post("/v1/ops/wallets/erin/topup", &app.ops_token, &body)
        .await
        .ok();
    let second = app
        .post("/v1/ops/wallets/erin/topup", &app.ops_token, &body)
        .await
        .ok();

    // Assert
    let expected = json!({"userId": "erin", "available": "300", "held": "0", "spent": "0", "currency": "EUR",
              "dailyLimit": "0", "spentToday": "0", "dailyLimitOverridden": false, "refunded": "0"});
    assert_eq!((&first, &second), (&expected, &expected));
    assert_eq!(app.wallet("erin").await, expected);
    let audit = app.audit().await;
    assert_eq!(audit.top_ups, 300);
    assert!(audit.reconciles());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_pay_key_twice_is_the_same_session_and_one_hold() {
    // Arrange
    let app = spawn_app().await;
    let m = app.online_machine(25).await;
    app.top_up("erin", 1000).await;
    let advert = m.advert();

    // Act
    let first = app.pay("erin", &advert, 200, "pay-1").await.ok();
    let second = app.pay("erin", &advert, 200, "pay-1").await.ok();

    // Assert
    assert_eq!(first, second);
    let w = app.wallet("erin").await;
    assert_eq!(
        (w["available"].as_str(), w["held"].as_str()),
        (Some("800"), Some("200"))
    );
    // One session waits on the machine: its press starts it, and a second press names the same
    // one (nothing else was paid for).
    let started = m.machine.press().await.unwrap();
    assert_eq!(
        started.session.to_string(),
        first["sessionId"].as_str().unwrap()
    );
    assert_eq!(m.machine.press().await.unwrap().session, started.session);
    let audit = app.audit().await;
    assert_eq!(audit.open_holds, 200);
    assert!(audit.reconciles());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pay_retried_after_its_advert_went_stale_is_the_same_session() {
    // Arrange: a pay made with a fresh advert; the retry carries an advert 3 slots old.
    let app = spawn_app().await;
    let m = app.online_machine(25).await;
    app.top_up("erin", 1000).await;
    let first = app.pay("erin", &m.advert(), 200, "pay-stale").await.ok();
    let stale = signed_advert(
        &m.device_id,
        &DeviceKey::parse_hex(&m.device_key).unwrap(),
        -3,
        0,
    );

    // Act
    let retry = app.pay("erin", &stale, 200, "pay-stale").await.ok();

    // Assert
    assert_eq!(retry, first);
    assert_eq!(app.wallet("erin").await["held"], "200");
    assert_eq!(app.audit().await.open_holds, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pay_key_reused_for_a_different_amount_is_refused() {
    // Arrange
    let app = spawn_app().await;
    let m = app.online_machine(25).await;
    app.top_up("erin", 1000).await;
    app.pay("erin", &m.advert(), 200, "pay-2").await.ok();
    let before = app.snapshot("erin").await;

    // Act
    let a = app.pay("erin", &m.advert(), 300, "pay-2").await;

    // Assert
    a.assert_error(409, "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(app.snapshot("erin").await, before);
}
