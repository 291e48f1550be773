//! The operator's back office for money (issue 11, items 1–3): refunds bounded by what a session
//! captured, closing a stuck session by hand (and the machine's late report after it), and the
//! users' problem reports. Every scenario ends with the ledger reconciled; refusals change
//! nothing.

use blepay_core::SessionId;
use blepay_e2e::{TestApp, TestMachine, spawn_app};
use serde_json::{Value, json};

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

/// `user` pays 200 on a machine at 25 a litre and the machine starts it.
async fn active_session(app: &TestApp, user: &str) -> (TestMachine, String) {
    let m = app.online_machine(25).await;
    app.top_up(user, 1000).await;
    let paid = app.pay(user, &m.advert(), 200, "p-1").await.ok();
    m.machine.press().await.unwrap();
    (m, paid["sessionId"].as_str().unwrap().to_owned())
}

/// ... and it dispenses 4 litres: 100 captured.
async fn settled_session(app: &TestApp, user: &str) -> (TestMachine, String) {
    let (m, sid) = active_session(app, user).await;
    m.machine
        .report(SessionId::parse(&sid).unwrap(), 4, true)
        .await
        .unwrap();
    (m, sid)
}

async fn refund(app: &TestApp, sid: &str, amount: i64, key: &str) -> blepay_e2e::Answer {
    app.post(
        &format!("/v1/ops/sessions/{sid}/refund"),
        &app.ops_token,
        &json!({"amount": amount, "reason": "no water came out", "idempotencyKey": key}),
    )
    .await
}

async fn close(app: &TestApp, sid: &str) -> blepay_e2e::Answer {
    app.post(
        &format!("/v1/ops/sessions/{sid}/close"),
        &app.ops_token,
        &json!({"reason": "stuck"}),
    )
    .await
}

async fn open_problems(app: &TestApp) -> Vec<Value> {
    let list = app.get("/v1/ops/problems", &app.ops_token).await.ok();
    list["problems"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_refunds_part_of_a_settled_session_and_a_replay_refunds_nothing() {
    let app = spawn_app().await;
    let (_m, sid) = settled_session(&app, "rita").await;

    let s = refund(&app, &sid, 40, "refund-1").await.ok();

    assert_eq!(
        (money(&s, "amount"), money(&s, "refunded")),
        (100, 40),
        "{s}"
    );
    let w = app.wallet("rita").await;
    assert_eq!(
        (
            money(&w, "available"),
            money(&w, "spent"),
            money(&w, "refunded")
        ),
        (940, 60, 40),
        "{w}"
    );
    assert_eq!(money(&app.ops_session(&sid).await, "refunded"), 40);
    let before = app.snapshot("rita").await;
    // The same key again: the same answer, no second refund.
    let again = refund(&app, &sid, 40, "refund-1").await.ok();
    assert_eq!(money(&again, "refunded"), 40);
    // The same key for another amount.
    refund(&app, &sid, 41, "refund-1")
        .await
        .assert_error(409, "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(app.snapshot("rita").await, before);
    let audit = reconciled(&app).await;
    assert_eq!((audit.revenue, audit.refunded), (60, 40));
    let metrics = app.get("/metrics", &app.ops_token).await;
    let text = metrics.body.as_str().unwrap_or_default();
    assert!(
        text.lines()
            .any(|l| l == "blepay_sessions_refunded_total 1"),
        "one refund counted, the replay not: {text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refund_over_the_capture_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    let (_m, sid) = settled_session(&app, "rita").await;
    refund(&app, &sid, 70, "refund-1").await.ok();
    let before = app.snapshot("rita").await;

    refund(&app, &sid, 31, "refund-2")
        .await
        .assert_error(409, "REFUND_EXCEEDS_CAPTURE");
    refund(&app, &"ab".repeat(16), 1, "refund-3")
        .await
        .assert_error(404, "SESSION_NOT_FOUND");
    refund(&app, &sid, 0, "refund-4")
        .await
        .assert_error(400, "INVALID_ARGUMENT");

    assert_eq!(app.snapshot("rita").await, before);
    assert_eq!(money(&app.ops_session(&sid).await, "refunded"), 70);
    // What is left can still be refunded.
    refund(&app, &sid, 30, "refund-2").await.ok();
    reconciled(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn closing_an_authorized_session_voids_it_releases_the_hold_and_frees_the_machine() {
    let app = spawn_app().await;
    let m = app.online_machine(25).await;
    app.top_up("cleo", 1000).await;
    let paid = app.pay("cleo", &m.advert(), 200, "p-1").await.ok();
    let sid = paid["sessionId"].as_str().unwrap().to_owned();

    let closed = close(&app, &sid).await.ok();

    assert_eq!(
        (closed["status"].as_str(), closed["closedBy"].as_str()),
        (Some("EXPIRED"), Some("OPERATOR")),
        "{closed}"
    );
    let w = app.wallet("cleo").await;
    assert_eq!((money(&w, "available"), money(&w, "held")), (1000, 0));
    let device = app.ops_device(&m.device_id).await;
    assert_eq!(
        (
            device["state"].as_str(),
            device["openSessionId"].as_str().unwrap_or("")
        ),
        (Some("IDLE"), ""),
        "the machine is free: {device}"
    );
    // Idempotent: closing it again answers the closed session.
    let again = close(&app, &sid).await.ok();
    assert_eq!(again["status"], "EXPIRED");
    // The machine's press finds nothing waiting.
    assert!(m.machine.press().await.is_err());
    reconciled(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn closing_an_active_session_settles_it_and_the_late_report_charges_what_it_still_owes() {
    let app = spawn_app().await;
    let (m, sid) = active_session(&app, "cleo").await;
    let session = SessionId::parse(&sid).unwrap();
    m.machine.report(session, 2, false).await.unwrap();

    let closed = close(&app, &sid).await.ok();

    assert_eq!(
        (
            closed["status"].as_str(),
            closed["closedBy"].as_str(),
            money(&closed, "amount")
        ),
        (Some("SETTLED"), Some("OPERATOR"), 50),
        "{closed}"
    );
    let w = app.wallet("cleo").await;
    assert_eq!((money(&w, "available"), money(&w, "held")), (950, 0));
    // The machine's final report arrives afterwards: handled as after a timeout.
    m.machine.report(session, 3, true).await.unwrap();
    let s = app.ops_session(&sid).await;
    assert_eq!(
        (money(&s, "amount"), money(&s["lateReport"], "charged")),
        (75, 25),
        "{s}"
    );
    assert_eq!(money(&app.wallet("cleo").await, "available"), 925);
    reconciled(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn closing_a_session_the_machine_settled_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    let (_m, sid) = settled_session(&app, "cleo").await;
    let before = app.snapshot("cleo").await;

    close(&app, &sid).await.assert_error(409, "SESSION_CLOSED");

    assert_eq!(app.snapshot("cleo").await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_reports_a_problem_operators_list_it_and_a_dismissal_resolves_it() {
    let app = spawn_app().await;
    let (_m, sid) = settled_session(&app, "pat").await;
    let path = format!("/v1/sessions/{sid}/problem");
    let body = json!({"reason": "I paid and got nothing"});

    let problem = app.post(&path, &app.token_for("pat"), &body).await.ok();

    assert_eq!(problem["status"], "PROBLEM_OPEN", "{problem}");
    let id = problem["problemId"].as_str().unwrap().to_owned();
    // A repeat answers the open one; another user's session is not found.
    let again = app.post(&path, &app.token_for("pat"), &body).await.ok();
    assert_eq!(again["problemId"].as_str(), Some(id.as_str()));
    app.post(&path, &app.token_for("mallory"), &body)
        .await
        .assert_error(404, "SESSION_NOT_FOUND");
    let open = open_problems(&app).await;
    assert_eq!(open.len(), 1);
    assert_eq!(open[0]["problemId"].as_str(), Some(id.as_str()));

    let dismissed = app
        .post(
            &format!("/v1/ops/problems/{id}/dismiss"),
            &app.ops_token,
            &json!({"reason": "the machine logged a full dispense"}),
        )
        .await
        .ok();

    assert_eq!(dismissed["status"], "PROBLEM_DISMISSED");
    assert_eq!(dismissed["resolvedBy"], "ops-token");
    assert!(open_problems(&app).await.is_empty());
    app.post(
        &format!("/v1/ops/problems/{}/dismiss", "cd".repeat(16)),
        &app.ops_token,
        &json!({"reason": "x"}),
    )
    .await
    .assert_error(404, "PROBLEM_NOT_FOUND");
    app.get("/v1/ops/problems?limit=0", &app.ops_token)
        .await
        .assert_error(400, "INVALID_ARGUMENT");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refund_resolves_the_sessions_open_problem() {
    let app = spawn_app().await;
    let (_m, sid) = settled_session(&app, "pat").await;
    app.post(
        &format!("/v1/sessions/{sid}/problem"),
        &app.token_for("pat"),
        &json!({"reason": "only half came out"}),
    )
    .await
    .ok();
    assert_eq!(open_problems(&app).await.len(), 1);

    refund(&app, &sid, 50, "refund-1").await.ok();

    assert!(open_problems(&app).await.is_empty());
    let audit = reconciled(&app).await;
    assert_eq!((audit.revenue, audit.refunded), (50, 50));
}
