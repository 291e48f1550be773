//! Twenty phones race for one machine: exactly one session, and no "database is locked".

use blepay_e2e::{Answer, TestApp, TestMachine, random_user, signed_advert, spawn_app};
use std::sync::Arc;

use blepay_proto::DeviceKey;
use serde_json::json;

/// Top up one user per advert, then fire all pays at once (one task each) → every answer.
async fn race(app: &TestApp, adverts: Vec<String>) -> Vec<Answer> {
    let mut requests = Vec::new();
    for advert in adverts {
        let user = random_user();
        app.top_up(&user, 1000).await;
        let body =
            json!({"advert": advert, "maxAmount": 100, "idempotencyKey": format!("race-{user}")});
        requests.push((app.token_for(&user), body));
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(requests.len()));
    let tasks: Vec<_> = requests
        .into_iter()
        .map(|(token, body)| {
            let (client, url, barrier) = (app.client.clone(), app.url("/v1/pay"), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                Answer::of(
                    client
                        .post(url)
                        .bearer_auth(token)
                        .json(&body)
                        .send()
                        .await
                        .unwrap(),
                )
                .await
            })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    answers
}

async fn assert_exactly_one_session(app: &TestApp, answers: &[Answer]) -> String {
    let ok = answers.iter().filter(|a| a.status == 200).count();
    assert_eq!(ok, 1, "exactly one pay succeeds: {answers:?}");
    let winner = answers
        .iter()
        .find(|a| a.status == 200)
        .unwrap()
        .str("sessionId");
    for a in answers.iter().filter(|a| a.status != 200) {
        assert_eq!(a.status, 409, "{a:?}");
        let code = a.body["code"].as_str().unwrap();
        assert!(matches!(code, "DEVICE_BUSY" | "ADVERT_USED"), "{a:?}");
        assert!(!a.body.to_string().contains("locked"), "{a:?}");
    }
    let audit = app.audit().await;
    assert!(audit.reconciles(), "{audit:?}");
    assert_eq!(
        (audit.held, audit.open_holds),
        (100, 100),
        "one hold in total: {audit:?}"
    );
    winner
}

/// The machine's press starts exactly the winner's session, and a second press names it again.
async fn assert_the_press_starts_only(m: &TestMachine, winner: &str) {
    assert_eq!(m.machine.press().await.unwrap().session.to_string(), winner);
    assert_eq!(m.machine.press().await.unwrap().session.to_string(), winner);
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_phones_paying_with_the_same_advert_open_exactly_one_session() {
    // Arrange
    let app = spawn_app().await;
    let m = app.online_machine(25).await;
    let advert = m.advert();

    // Act
    let answers = race(&app, vec![advert; 20]).await;

    // Assert
    let winner = assert_exactly_one_session(&app, &answers).await;
    assert_the_press_starts_only(&m, &winner).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_phones_paying_with_their_own_adverts_open_exactly_one_session() {
    // Arrange: twenty authentic adverts (distinct use counters).
    let app = spawn_app().await;
    let m = app.online_machine(25).await;
    let key = DeviceKey::parse_hex(&m.device_key).unwrap();
    let adverts = (0..20)
        .map(|i| signed_advert(&m.device_id, &key, 0, i))
        .collect();

    // Act
    let answers = race(&app, adverts).await;

    // Assert
    let winner = assert_exactly_one_session(&app, &answers).await;
    assert_the_press_starts_only(&m, &winner).await;
}
