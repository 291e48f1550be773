//! Issue 11, item 5: revoking and rotating a machine's key (docs/protocol.md §1.1). A revoked
//! machine's adverts and frames are refused as forged while another machine keeps paying; a
//! rotated key reaches the machine — the device client's engine — over the air, and the old key
//! is refused once the machine has used the new one. Every scenario ends reconciled.

use std::time::Duration;

use blepay_device_client::driver::Driver;
use blepay_device_client::engine::{Config, Engine};
use blepay_device_client::heartbeat;
use blepay_device_client::http::HttpTransport;
use blepay_device_client::log::MemLog;
use blepay_e2e::{Link, TestApp, b64, identity, spawn_app, test_telemetry, unix_now};
use serde_json::{Value, json};

async fn reconciled(app: &TestApp) {
    let audit = app.audit().await;
    assert!(
        audit.reconciles(),
        "the ledger does not reconcile: {audit:?}"
    );
}

async fn revoke(app: &TestApp, device_id: &str, reason: &str) -> blepay_e2e::Answer {
    app.post(
        &format!("/v1/ops/devices/{device_id}/revoke"),
        &app.ops_token,
        &json!({ "reason": reason }),
    )
    .await
}

async fn rotate(app: &TestApp, device_id: &str, key: &str) -> blepay_e2e::Answer {
    app.post(
        &format!("/v1/ops/devices/{device_id}/rotate-key"),
        &app.ops_token,
        &json!({ "idempotencyKey": key }),
    )
    .await
}

/// One heartbeat sealed with the next number of `link` → (status, body).
async fn heartbeat_frame(app: &TestApp, link: &mut Link) -> (u16, Vec<u8>) {
    let p = link.seal(&heartbeat(test_telemetry()));
    app.post_frame(p.frame).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_machine_is_refused_as_forged_and_another_machine_keeps_paying() {
    // Arrange: two online machines, a session paid and waiting on the first.
    let app = spawn_app().await;
    let m = app.online_machine(25).await;
    let other = app.online_machine(25).await;
    app.top_up("rex", 1000).await;
    let advert = m.advert();
    let paid = app.pay("rex", &advert, 300, "k-1").await.ok();
    assert_eq!(app.wallet("rex").await["held"], "300");

    // Act: revoke it.
    let device = revoke(&app, &m.device_id, "key read out of flash")
        .await
        .ok();

    // Assert: revoked, its waiting session voided and the hold released.
    assert_eq!(device["revokedReason"], "key read out of flash");
    assert_ne!(device["revokedAt"], "0");
    assert_eq!(device["openSessionId"], "");
    let s = app.ops_session(paid["sessionId"].as_str().unwrap()).await;
    assert_eq!(s["status"], "EXPIRED");
    let before = app.snapshot("rex").await;
    assert_eq!(before.0["held"], "0");
    // Its adverts are answered as forged ones, on verify and pay (a retry included)...
    let forged = {
        let mut bytes = blepay_e2e::unb64(&advert);
        bytes[23] ^= 1;
        b64(&bytes)
    };
    let forged_answer = app.verify("rex", &forged).await;
    forged_answer.assert_error(403, "ADVERT_INVALID");
    let revoked_answer = app.verify("rex", &m.advert()).await;
    revoked_answer.assert_error(403, "ADVERT_INVALID");
    assert_eq!(
        revoked_answer.body["message"],
        forged_answer.body["message"]
    );
    app.pay("rex", &m.advert(), 300, "k-2")
        .await
        .assert_error(403, "ADVERT_INVALID");
    app.pay("rex", &advert, 300, "k-1")
        .await
        .assert_error(403, "ADVERT_INVALID");
    // ...and its frames as forged frames: the same status and body.
    let mut link = Link::new(identity(&m.device_id, &m.device_key));
    let (status, body) = heartbeat_frame(&app, &mut link).await;
    let mut wrong = Link::new(identity(&m.device_id, &"ab".repeat(32)));
    let (forged_status, forged_body) = heartbeat_frame(&app, &mut wrong).await;
    assert_eq!((status, &body), (401, &forged_body));
    assert_eq!(forged_status, 401);
    let code: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(code["code"], "DEVICE_AUTH_FAILED");
    assert!(m.machine.press().await.is_err());
    // Nothing changed; revoking again answers the same device.
    assert_eq!(app.snapshot("rex").await, before);
    let again = revoke(&app, &m.device_id, "again").await.ok();
    assert_eq!(
        (&again["revokedAt"], &again["revokedReason"]),
        (&device["revokedAt"], &device["revokedReason"])
    );
    // A revoked machine is never re-keyed.
    rotate(&app, &m.device_id, "r-1")
        .await
        .assert_error(409, "DEVICE_OUT_OF_SERVICE");

    // The other machine keeps working: paid, pressed, settled.
    app.pay("rex", &other.advert(), 200, "k-3").await.ok();
    let grant = other.machine.press().await.unwrap();
    other.machine.report(grant.session, 2, true).await.unwrap();
    assert_eq!(app.wallet("rex").await["spent"], "50");
    reconciled(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_key_reaches_the_machine_over_the_air_and_the_old_key_is_then_refused() {
    // Arrange: a machine on the device client's engine over plain HTTP.
    let app = spawn_app().await;
    let (device_id, device_key) = app.register_device(25).await;
    let old = identity(&device_id, &device_key);
    let address = app.address.clone();
    let config = Config {
        retry_min_secs: 1,
        retry_max_secs: 1,
        ..Config::default()
    };
    let engine = Engine::open(old.clone(), config, MemLog::new(), unix_now()).unwrap();
    let mut driver = Driver::new(engine, HttpTransport::new(&address, Duration::from_secs(5)));
    // The boot heartbeat: the machine is online.
    let mut driver = tokio::task::spawn_blocking(move || {
        while !driver.engine().clock().is_synced() {
            driver.step(&mut unix_now).unwrap();
            std::thread::sleep(Duration::from_millis(50));
        }
        driver
    })
    .await
    .unwrap();

    // Act: rotate; the retry with the same key answers the same rotation.
    let rotated = rotate(&app, &device_id, "rot-1").await.ok();
    assert_eq!(
        (rotated["keyEpoch"].as_u64(), rotated["pending"].as_bool()),
        (Some(1), Some(true))
    );
    assert_eq!(rotate(&app, &device_id, "rot-1").await.ok(), rotated);
    assert_ne!(rotated["deviceKey"], device_key.as_str());
    assert_eq!(app.ops_device(&device_id).await["pendingKeyEpoch"], 1);
    // The start button, with nothing paid: the answer ("pay first") carries the new key.
    let mut driver = tokio::task::spawn_blocking(move || {
        driver.engine_mut().on_start_button(unix_now()).unwrap();
        while driver.engine().stats().keys_installed == 0 {
            driver.step(&mut unix_now).unwrap();
            std::thread::sleep(Duration::from_millis(50));
        }
        driver
    })
    .await
    .unwrap();
    assert_eq!(driver.engine().key_epoch().get(), 1);
    assert_eq!(
        driver.engine().identity().key.expose_hex(),
        rotated["deviceKey"].as_str().unwrap()
    );
    // Its advert is now under the new key, and pays (the rotation is still pending).
    app.top_up("ola", 1000).await;
    let advert = b64(&driver.engine().advert(unix_now()).payload);
    let paid = app.pay("ola", &advert, 100, "o-1").await.ok();
    // The press, sealed under the new key, completes the rotation.
    let driver = tokio::task::spawn_blocking(move || {
        driver.engine_mut().on_start_button(unix_now()).unwrap();
        let mut started = false;
        while !started {
            driver.step(&mut unix_now).unwrap();
            started = driver.engine_mut().drain_actions().any(|a| {
                matches!(
                    a,
                    blepay_device_client::engine::Action::StartDispensing { .. }
                )
            });
            std::thread::sleep(Duration::from_millis(50));
        }
        driver
    })
    .await
    .unwrap();
    drop(driver);

    // Assert: the machine is on epoch 1, nothing pending, the session started.
    let device = app.ops_device(&device_id).await;
    assert_eq!(
        (
            device["keyEpoch"].as_u64(),
            device["pendingKeyEpoch"].as_u64()
        ),
        (Some(1), Some(0))
    );
    let sid = paid["sessionId"].as_str().unwrap();
    assert_eq!(app.ops_session(sid).await["status"], "ACTIVE");
    // The old key is refused for good: frames and adverts, as forged ones.
    let mut stale = Link::new(old.clone());
    let (status, body) = heartbeat_frame(&app, &mut stale).await;
    assert_eq!(status, 401, "{}", String::from_utf8_lossy(&body));
    let old_advert = b64(&old
        .advert(
            unix_now(),
            blepay_core::UseCounter::new(0),
            blepay_proto::AdvertFlags::from_bits(0).unwrap(),
        )
        .encode());
    app.verify("ola", &old_advert)
        .await
        .assert_error(403, "ADVERT_INVALID");
    // A new rotation with another key would issue epoch 2; the first one's key still answers it.
    assert_eq!(
        rotate(&app, &device_id, "rot-1").await.ok()["pending"],
        false
    );
    reconciled(&app).await;
}
