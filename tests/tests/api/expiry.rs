use std::time::Duration;

use blepay_core::SessionId;
use blepay_device_client::{RefusalCode, start};
// The press after the deadline is tested in `press.rs`; this is the legacy start.
use blepay_e2e::{Settings, spawn_app_with, unix_now};
use serde_json::json;

fn short_timeout(sweep_every: Duration) -> Settings {
    Settings {
        start_timeout_secs: 2,
        sweep_every,
        ..Settings::default()
    }
}

/// Sleep until the unix clock is past `deadline` (the store expires at `expires_at <= now`).
async fn sleep_past(deadline: u64) {
    while unix_now() <= deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unstarted_session_reads_as_expired_after_its_deadline_and_its_hold_is_released() {
    // Arrange: no sweeper run during the test (its next tick is an hour away).
    let app = spawn_app_with(short_timeout(Duration::from_secs(3600))).await;
    let m = app.online_machine(25).await;
    app.top_up("fay", 1000).await;
    let paid = app.pay("fay", &m.advert(), 300, "f-1").await.ok();
    let session = paid["sessionId"].as_str().unwrap().to_owned();
    let expires_at: u64 = paid["expiresAt"].as_str().unwrap().parse().unwrap();

    // Act
    sleep_past(expires_at).await;
    let s = app
        .get(&format!("/v1/sessions/{session}"), &app.token_for("fay"))
        .await
        .ok();

    // Assert
    assert_eq!(s["status"], "EXPIRED");
    assert_eq!(
        (s["amount"].as_str(), s["units"].as_str()),
        (Some("0"), Some("0"))
    );
    assert_ne!(s["endedAt"], "0");
    assert_eq!(
        app.get("/v1/wallet", &app.token_for("fay")).await.ok(),
        json!({"userId": "fay", "available": "1000", "held": "0", "spent": "0", "currency": "EUR",
              "dailyLimit": "0", "spentToday": "0", "dailyLimitOverridden": false, "refunded": "0"})
    );
    let audit = app.audit().await;
    assert!(audit.reconciles(), "{audit:?}");
    assert_eq!((audit.held, audit.open_holds), (0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sweeper_alone_expires_an_unstarted_session() {
    // Arrange
    let app = spawn_app_with(short_timeout(Duration::from_millis(200))).await;
    let m = app.online_machine(25).await;
    app.top_up("gus", 1000).await;
    let paid = app.pay("gus", &m.advert(), 300, "g-1").await.ok();
    let expires_at: u64 = paid["expiresAt"].as_str().unwrap().parse().unwrap();
    assert_eq!(app.audit().await.open_holds, 300);

    // Act: nobody reads the session or the wallet; only the ledger is watched.
    sleep_past(expires_at).await;
    let mut audit = app.audit().await;
    for _ in 0..20 {
        if audit.open_holds == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        audit = app.audit().await;
    }

    // Assert
    assert!(audit.reconciles(), "{audit:?}");
    assert_eq!(
        (audit.held, audit.open_holds, audit.available),
        (0, 0, 1000),
        "{audit:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_legacy_start_after_expiry_is_refused_as_session_expired() {
    // Arrange
    let app = spawn_app_with(short_timeout(Duration::from_secs(3600))).await;
    let m = app.online_machine(25).await;
    app.top_up("hal", 1000).await;
    let paid = app.pay("hal", &m.advert(), 300, "h-1").await.ok();
    let sid = SessionId::parse(paid["sessionId"].as_str().unwrap()).unwrap();
    let expires_at: u64 = paid["expiresAt"].as_str().unwrap().parse().unwrap();
    sleep_past(expires_at).await;

    // Act
    let (status, answer) = m.machine.exchange(&start(sid)).await.unwrap();

    // Assert
    assert_eq!(
        (status, answer.refusal_code()),
        (409, Some(RefusalCode::SessionExpired))
    );
    assert_eq!(app.ops_session(&sid.to_string()).await["status"], "EXPIRED");
    assert_eq!(app.wallet("hal").await["available"], "1000");
    assert!(app.audit().await.reconciles());
}
