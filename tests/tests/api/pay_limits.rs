//! Per-user pay limits (issue 10, M4): locking machines costs something. With the defaults a user
//! holds at most one unstarted session (TOO_MANY_UNSTARTED, 409) and opens at most
//! `BLEPAY_PAY_RATE_MAX` sessions per window (RATE_LIMITED, 429 with `Retry-After`); a refused pay
//! changes nothing and leaves the machine IDLE; a retry of a pay that went through is answered.

use blepay_e2e::{Answer, Settings, TestApp, spawn_app, spawn_app_with};
use blepay_service::config::PayLimits;
use serde_json::{Value, json};

async fn assert_unchanged(app: &TestApp, user: &str, before: &(Value, blepay_store::Audit)) {
    let after = app.snapshot(user).await;
    assert_eq!(
        &after, before,
        "a refused pay changed the wallet or the ledger"
    );
    assert!(after.1.reconciles(), "{:?}", after.1);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_defaults_a_second_unstarted_session_is_too_many_and_changes_nothing() {
    // Arrange: alice holds machine 1 (paid, not started).
    let app = spawn_app().await;
    let (m1, m2) = (app.online_machine(25).await, app.online_machine(25).await);
    app.top_up("alice", 1000).await;
    let advert1 = m1.advert();
    let first = app.pay("alice", &advert1, 100, "first").await.ok();
    let before = app.snapshot("alice").await;

    // Act
    let second = app.pay("alice", &m2.advert(), 100, "second").await;
    let retry = app.pay("alice", &advert1, 100, "first").await.ok();

    // Assert
    second.assert_error(409, "TOO_MANY_UNSTARTED");
    assert_unchanged(&app, "alice", &before).await;
    assert_eq!(app.ops_device(&m2.device_id).await["state"], "IDLE");
    assert_eq!(
        retry["sessionId"], first["sessionId"],
        "a retry is answered"
    );
    // Another user is not affected.
    app.top_up("bob", 1000).await;
    app.pay("bob", &m2.advert(), 100, "bob-1").await.ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn pays_beyond_the_rate_are_429_with_a_retry_after_and_change_nothing() {
    // Arrange: two pays an hour, room for several unstarted sessions.
    let app = spawn_app_with(Settings {
        pay_limits: PayLimits {
            max_unstarted_per_user: 4,
            rate_max: 2,
            rate_window_secs: 3600,
            ..PayLimits::default()
        },
        ..Settings::default()
    })
    .await;
    let mut machines = Vec::new();
    for _ in 0..3 {
        machines.push(app.online_machine(25).await);
    }
    app.top_up("carol", 1000).await;
    for (i, m) in machines.iter().take(2).enumerate() {
        app.pay("carol", &m.advert(), 100, &format!("c-{i}"))
            .await
            .ok();
    }
    let before = app.snapshot("carol").await;

    // Act
    let r = app
        .client
        .post(app.url("/v1/pay"))
        .bearer_auth(app.token_for("carol"))
        .json(&json!({"advert": machines[2].advert(), "maxAmount": 100, "idempotencyKey": "c-2"}))
        .send()
        .await
        .unwrap();
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let answer = Answer::of(r).await;

    // Assert
    answer.assert_error(429, "RATE_LIMITED");
    assert!((1..=3600).contains(&retry_after), "{retry_after}");
    assert_unchanged(&app, "carol", &before).await;
    assert_eq!(
        app.ops_device(&machines[2].device_id).await["state"],
        "IDLE"
    );
}
