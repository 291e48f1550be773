//! Every error code of the contract, produced by its case; every refusal changes nothing.

use blepay_core::{DeviceId, KeyVersion, SessionId, Slot, UseCounter, UserId};
use blepay_e2e::{
    Answer, JWT_SECRET, TestApp, TestMachine, b64, device_key_for, random_device_id, random_key,
    signed_advert, spawn_app, unb64, unix_now,
};
use blepay_proto::{Advert, AdvertFlags};
use serde_json::{Value, json};

/// Assert `user`'s wallet and the audit are what they were.
async fn assert_unchanged(app: &TestApp, user: &str, before: &(Value, blepay_store::Audit)) {
    let after = app.snapshot(user).await;
    assert_eq!(
        &after, before,
        "a refused request changed the wallet or the ledger"
    );
    assert!(after.1.reconciles(), "{:?}", after.1);
}

/// An app with an online machine at 25 and alice holding 1000.
async fn arranged() -> (TestApp, TestMachine) {
    let app = spawn_app().await;
    let m = app.online_machine(25).await;
    app.top_up("alice", 1000).await;
    (app, m)
}

fn pay_body(advert: &str, max_amount: i64) -> Value {
    json!({"advert": advert, "maxAmount": max_amount, "idempotencyKey": random_key()})
}

#[tokio::test(flavor = "multi_thread")]
async fn callers_without_valid_credentials_are_unauthenticated() {
    // Arrange
    let (app, m) = arranged().await;
    let before = app.snapshot("alice").await;
    let alice = UserId::parse("alice").unwrap();
    let expired =
        blepay_service::auth::mint_token(JWT_SECRET, &alice, unix_now() - 3600, 60).unwrap();
    let no_exp = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "alice"}),
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap();
    let wrong_secret =
        blepay_service::auth::mint_token("another-secret-0123456789", &alice, unix_now(), 3600)
            .unwrap();
    let body = pay_body(&m.advert(), 100);

    // Act
    let no_header = Answer::of(
        app.client
            .post(app.url("/v1/pay"))
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let answers = [
        no_header,
        app.post("/v1/pay", "not-a-jwt", &body).await,
        app.post("/v1/pay", &expired, &body).await,
        app.post("/v1/pay", &no_exp, &body).await,
        app.post("/v1/pay", &wrong_secret, &body).await,
        app.post(
            "/v1/ops/wallets/alice/topup",
            "wrong-ops-token-0123456789",
            &json!({"amount": 5, "idempotencyKey": "x"}),
        )
        .await,
        app.get("/v1/ops/wallets/alice", &app.token_for("alice"))
            .await,
        app.get("/v1/wallet", &app.ops_token).await,
    ];

    // Assert: one generic message, nothing about jsonwebtoken, algorithms or claims (L7)
    for a in answers {
        a.assert_error(401, "UNAUTHENTICATED");
        assert_eq!(
            a.body["message"],
            blepay_service::auth::REFUSED,
            "{}",
            a.body
        );
    }
    // The same over gRPC.
    let mut phone = blepay_proto::pb::v1::phone_service_client::PhoneServiceClient::connect(
        app.address.clone(),
    )
    .await
    .unwrap();
    for token in ["not-a-jwt", expired.as_str(), wrong_secret.as_str()] {
        let mut req = tonic::Request::new(blepay_proto::pb::v1::GetWalletRequest::default());
        req.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let status = phone.get_wallet(req).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert_eq!(status.message(), blepay_service::auth::REFUSED);
    }
    assert_unchanged(&app, "alice", &before).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_are_invalid_arguments() {
    // Arrange
    let (app, m) = arranged().await;
    let before = app.snapshot("alice").await;
    let alice = app.token_for("alice");
    let advert = m.advert();
    let short = b64(&unb64(&advert)[..23]);

    // Act
    let malformed_json = Answer::of(
        app.client
            .post(app.url("/v1/pay"))
            .bearer_auth(&alice)
            .header("content-type", "application/json")
            .body("{\"advert\": ")
            .send()
            .await
            .unwrap(),
    )
    .await;
    let answers = [
        malformed_json,
        app.post("/v1/pay", &alice, &pay_body("!!not base64!!", 100)).await,
        app.post("/v1/pay", &alice, &pay_body(&short, 100)).await,
        app.post("/v1/verify", &alice, &json!({"advert": short})).await,
        app.post("/v1/pay", &alice, &pay_body(&advert, -100)).await,
        app.post("/v1/pay", &alice, &json!({"advert": advert, "maxAmount": "-5", "idempotencyKey": "neg"})).await,
        app.post(
            "/v1/ops/devices",
            &app.ops_token,
            &json!({"deviceId": "not-hex", "name": "x", "pricePerUnit": 1, "unitName": "l", "currency": "EUR"}),
        )
        .await,
        app.post(
            "/v1/ops/devices",
            &app.ops_token,
            &json!({"deviceId": "0102", "name": "x", "pricePerUnit": 1, "unitName": "l", "currency": "EUR"}),
        )
        .await,
    ];

    // Assert
    for a in answers {
        a.assert_error(400, "INVALID_ARGUMENT");
    }
    assert_unchanged(&app, "alice", &before).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_over_64_kib_is_payload_too_large() {
    // Arrange
    let (app, m) = arranged().await;
    let before = app.snapshot("alice").await;
    let mut body = pay_body(&m.advert(), 100);
    body["padding"] = json!("x".repeat(65 * 1024));

    // Act
    let a = app.post("/v1/pay", &app.token_for("alice"), &body).await;

    // Assert
    a.assert_error(413, "PAYLOAD_TOO_LARGE");
    assert_unchanged(&app, "alice", &before).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_or_unsupported_adverts_are_advert_invalid() {
    // Arrange
    let (app, m) = arranged().await;
    let before = app.snapshot("alice").await;
    let alice = app.token_for("alice");
    let good = unb64(&m.advert());
    let mut flipped_tag = good.clone();
    flipped_tag[23] ^= 0x01;
    let mut version_2 = good.clone();
    version_2[0] = 0x20;
    let mut key_version_15 = good.clone();
    key_version_15[0] = 0x1f;
    let mut flipped_counter = good.clone();
    flipped_counter[14] ^= 0x01;

    // Act + Assert: verify and pay both refuse.
    for bad in [flipped_tag, version_2, key_version_15, flipped_counter] {
        app.post("/v1/verify", &alice, &json!({"advert": b64(&bad)}))
            .await
            .assert_error(403, "ADVERT_INVALID");
        app.post("/v1/pay", &alice, &pay_body(&b64(&bad), 100))
            .await
            .assert_error(403, "ADVERT_INVALID");
    }
    assert_unchanged(&app, "alice", &before).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_advert_three_slots_old_is_stale() {
    // Arrange
    let (app, m) = arranged().await;
    let before = app.snapshot("alice").await;
    let key = blepay_proto::DeviceKey::parse_hex(&m.device_key).unwrap();
    let old = signed_advert(&m.device_id, &key, -3, 0);
    let future = signed_advert(&m.device_id, &key, 3, 0);

    // Act
    let a = app.pay("alice", &old, 100, "stale-1").await;
    let v = app
        .post(
            "/v1/verify",
            &app.token_for("alice"),
            &json!({"advert": old}),
        )
        .await;
    let f = app.pay("alice", &future, 100, "stale-2").await;

    // Assert
    a.assert_error(403, "ADVERT_STALE");
    v.assert_error(403, "ADVERT_STALE");
    f.assert_error(403, "ADVERT_STALE");
    assert_unchanged(&app, "alice", &before).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_advert_that_already_paid_for_a_session_is_used() {
    // Arrange: alice's session with this advert runs to the end.
    let (app, m) = arranged().await;
    app.top_up("bob", 1000).await;
    let advert = m.advert();
    let paid = app.pay("alice", &advert, 100, "a-1").await.ok();
    let sid = SessionId::parse(paid["sessionId"].as_str().unwrap()).unwrap();
    assert_eq!(m.machine.press().await.unwrap().session, sid);
    m.machine.report(sid, 1, true).await.unwrap();
    let before = app.snapshot("bob").await;

    // Act: bob replays the advert alice paid with.
    let a = app.pay("bob", &advert, 100, "b-1").await;

    // Assert
    a.assert_error(409, "ADVERT_USED");
    assert_unchanged(&app, "bob", &before).await;
    // A fresh advert (use counter bumped) works.
    app.pay("bob", &m.advert(), 100, "b-2").await.ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_authentic_advert_of_an_unregistered_machine_is_device_unknown() {
    // Arrange: a key the server would derive, for an id nobody registered.
    let (app, _m) = arranged().await;
    let before = app.snapshot("alice").await;
    let id = random_device_id();
    let advert = signed_advert(&id, &device_key_for(&id), 0, 0);

    // Act
    let v = app
        .post(
            "/v1/verify",
            &app.token_for("alice"),
            &json!({"advert": advert}),
        )
        .await;
    let p = app.pay("alice", &advert, 100, "u-1").await;

    // Assert
    v.assert_error(404, "DEVICE_UNKNOWN");
    p.assert_error(404, "DEVICE_UNKNOWN");
    assert_unchanged(&app, "alice", &before).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_machine_serving_a_session_is_busy() {
    // Arrange
    let (app, m) = arranged().await;
    app.top_up("bob", 1000).await;
    app.pay("alice", &m.advert(), 100, "a-1").await.ok();
    let before = app.snapshot("bob").await;

    // Act
    let a = app.pay("bob", &m.advert(), 100, "b-1").await;

    // Assert
    a.assert_error(409, "DEVICE_BUSY");
    assert_unchanged(&app, "bob", &before).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_machine_never_heard_from_is_offline_and_cannot_be_paid() {
    // Arrange: registered, never heard from.
    let app = spawn_app().await;
    app.top_up("alice", 1000).await;
    let (id, key) = app.register_device(25).await;
    let advert = signed_advert(
        &id,
        &blepay_proto::DeviceKey::parse_hex(&key).unwrap(),
        0,
        0,
    );
    let before = app.snapshot("alice").await;

    // Act
    let v = app
        .post(
            "/v1/verify",
            &app.token_for("alice"),
            &json!({"advert": advert}),
        )
        .await
        .ok();
    let p = app.pay("alice", &advert, 100, "o-1").await;

    // Assert
    assert_eq!(v["state"], "OFFLINE");
    p.assert_error(409, "DEVICE_OFFLINE");
    assert_unchanged(&app, "alice", &before).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn paying_more_than_the_available_balance_is_insufficient_funds() {
    // Arrange
    let app = spawn_app().await;
    let m = app.online_machine(25).await;
    app.top_up("dave", 50).await;
    let before = app.snapshot("dave").await;

    // Act
    let a = app.pay("dave", &m.advert(), 100, "d-1").await;

    // Assert
    a.assert_error(402, "INSUFFICIENT_FUNDS");
    assert_unchanged(&app, "dave", &before).await;
    // The advert was not consumed: the same advert pays within the balance.
    app.pay("dave", &m.advert(), 50, "d-2").await.ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_and_other_users_sessions_are_not_found() {
    // Arrange
    let (app, m) = arranged().await;
    let paid = app.pay("alice", &m.advert(), 100, "a-1").await.ok();
    let session = paid["sessionId"].as_str().unwrap();
    let unknown = "00".repeat(16);

    // Act
    let mallory = app
        .get(
            &format!("/v1/sessions/{session}"),
            &app.token_for("mallory"),
        )
        .await;
    let phone_unknown = app
        .get(&format!("/v1/sessions/{unknown}"), &app.token_for("alice"))
        .await;
    let ops_unknown = app
        .get(&format!("/v1/ops/sessions/{unknown}"), &app.ops_token)
        .await;

    // Assert
    mallory.assert_error(404, "SESSION_NOT_FOUND");
    phone_unknown.assert_error(404, "SESSION_NOT_FOUND");
    ops_unknown.assert_error(404, "SESSION_NOT_FOUND");
}

#[tokio::test(flavor = "multi_thread")]
async fn registering_an_existing_id_is_device_exists() {
    // Arrange
    let app = spawn_app().await;
    let (id, key) = app.register_device(25).await;

    // Act
    let again = app
        .post(
            "/v1/ops/devices",
            &app.ops_token,
            &json!({"deviceId": id, "name": "Impostor", "pricePerUnit": 1, "unitName": "l", "currency": "EUR"}),
        )
        .await;

    // Assert: refused, and the original tariff and key stand.
    again.assert_error(409, "DEVICE_EXISTS");
    let m = app.machine(&id, &key);
    m.machine
        .heartbeat(blepay_e2e::test_telemetry())
        .await
        .unwrap();
    let v = app
        .post(
            "/v1/verify",
            &app.token_for("alice"),
            &json!({"advert": m.advert()}),
        )
        .await
        .ok();
    assert_eq!(
        (v["name"].as_str(), v["pricePerUnit"].as_str()),
        (Some("Water dispenser"), Some("25"))
    );
}

#[test]
fn the_stale_advert_helper_signs_what_the_machine_would() {
    // A sanity check of the harness: slot offset 0 and use counter 0 is the machine's advert.
    let id = random_device_id();
    let key = device_key_for(&id);
    let ours = unb64(&signed_advert(&id, &key, 0, 0));
    let theirs = Advert::sign(
        &key,
        KeyVersion::new(0).unwrap(),
        DeviceId::parse(&id).unwrap(),
        Slot::at(unix_now()),
        UseCounter::new(0),
        AdvertFlags::NONE,
    );
    assert_eq!(ours[..9], theirs.encode()[..9]);
}
