//! The machine link: authenticated frames, sequence numbers, retries and garbage.

use blepay_device_client::{RefusalCode, heartbeat, report, start};
use blepay_e2e::test_telemetry;
use blepay_e2e::{TestApp, TestMachine, spawn_app};
use blepay_proto::open_response;
use blepay_proto::pb::v1 as pb;
use prost::Message;

async fn arranged() -> (TestApp, TestMachine) {
    let app = spawn_app().await;
    let (id, key) = app.register_device(25).await;
    let m = app.machine(&id, &key);
    (app, m)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replayed_older_frame_is_refused_as_sequence_replayed() {
    // Arrange: frames 1 and 2 accepted.
    let (app, m) = arranged().await;
    let id = m.identity();
    let one = id.request(1, &heartbeat(test_telemetry()));
    let two = id.request(2, &heartbeat(test_telemetry()));
    assert_eq!(app.post_frame(one.frame.clone()).await.0, 200);
    assert_eq!(app.post_frame(two.frame.clone()).await.0, 200);

    // Act: frame 1 again.
    let (status, bytes) = app.post_frame(one.frame.clone()).await;

    // Assert: an authentic refusal.
    let answer = id.open(&one, &bytes).unwrap();
    assert_eq!(
        (status, answer.refusal_code()),
        (409, Some(RefusalCode::SequenceReplayed))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retried_frame_gets_the_byte_identical_answer_and_runs_once() {
    // Arrange: a paid session, and the machine's final report.
    let (app, m) = arranged().await;
    m.machine.heartbeat(test_telemetry()).await.unwrap();
    app.top_up("ida", 1000).await;
    app.pay("ida", &m.advert(), 200, "i-1").await.ok();
    let sid = m.machine.press().await.unwrap().session;
    let next = m.machine.next_seq().unwrap();
    let id = m.identity();
    let last = id.request(next, &report(sid, blepay_core::Units::new(4), true));
    let (status, first) = app.post_frame(last.frame.clone()).await;
    assert_eq!(status, 200);

    // Act: the modem lost the answer; the same bytes go again, a second later (docs/protocol.md
    // §3.3: "the stored one, re-sent; its server_time is the original one").
    let sent_at = blepay_e2e::unix_now();
    while blepay_e2e::unix_now() == sent_at {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (status_again, again) = app.post_frame(last.frame.clone()).await;

    // Assert: no double effect, the same answer body, and the same bytes.
    assert_eq!(status_again, 200);
    let key = blepay_proto::DeviceKey::parse_hex(&m.device_key).unwrap();
    let original = open_response(&key, &last.tag, &first).unwrap();
    let retried = open_response(&key, &last.tag, &again).unwrap();
    let body = pb::DeviceResponse::decode(original.body.as_slice()).unwrap();
    assert_eq!(
        (body.status, body.amount),
        (pb::SessionStatus::Settled as i32, 100)
    );
    assert_eq!((original.seq, &original.body), (retried.seq, &retried.body));
    let w = app.wallet("ida").await;
    assert_eq!(
        (w["available"].as_str(), w["spent"].as_str()),
        (Some("900"), Some("100"))
    );
    assert!(app.audit().await.reconciles());
    assert_eq!(
        original.server_time, retried.server_time,
        "a retry's answer must carry the original server_time"
    );
    assert_eq!(first, again, "a retry must get the byte-identical answer");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frame_with_a_flipped_byte_is_device_auth_failed() {
    // Arrange
    let (app, m) = arranged().await;
    let mut frame = m.identity().request(1, &heartbeat(test_telemetry())).frame;
    frame[10] ^= 0x01; // inside the sequence number

    // Act
    let (status, bytes) = app.post_frame(frame).await;

    // Assert
    let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("DEVICE_AUTH_FAILED"))
    );
    // Nothing was recorded: the machine is still offline, and seq 1 is still fresh.
    let v = app
        .post(
            "/v1/verify",
            &app.token_for("ida"),
            &serde_json::json!({"advert": m.advert()}),
        )
        .await
        .ok();
    assert_eq!(v["state"], "OFFLINE");
    assert_eq!(
        app.post_frame(m.identity().request(1, &heartbeat(test_telemetry())).frame)
            .await
            .0,
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_garbage_body_is_frame_invalid() {
    // Arrange
    let (app, _m) = arranged().await;

    // Act
    let (short, short_body) = app.post_frame(b"hello".to_vec()).await;
    let (long, long_body) = app.post_frame(vec![0x10; 2000]).await;

    // Assert
    for (status, bytes) in [(short, short_body), (long, long_body)] {
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some("FRAME_INVALID")),
            "{body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_legacy_start_for_a_session_of_another_machine_is_not_found() {
    // Arrange
    let app = spawn_app().await;
    let a = app.online_machine(25).await;
    let b = app.online_machine(25).await;
    app.top_up("jo", 1000).await;
    let paid = app.pay("jo", &a.advert(), 200, "j-1").await.ok();
    let sid = blepay_core::SessionId::parse(paid["sessionId"].as_str().unwrap()).unwrap();

    // Act
    let (status, answer) = b.machine.exchange(&start(sid)).await.unwrap();

    // Assert
    assert_eq!(
        (status, answer.refusal_code()),
        (404, Some(RefusalCode::SessionNotFound))
    );
    assert_eq!(
        app.ops_session(&sid.to_string()).await["status"],
        "AUTHORIZED"
    );
}
