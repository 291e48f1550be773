//! The operator's machine lifecycle and the daily spending cap (issue 11, items 4 and 6): the
//! fleet list, a tariff change that never touches an open session, OUT_OF_SERVICE (verify shows
//! it, pay is 409 DEVICE_OUT_OF_SERVICE), decommissioning for good, and a per-user daily cap
//! (402 SPENDING_LIMIT) with an operator's override. Every refusal changes nothing.

use blepay_e2e::{Answer, Settings, TestApp, spawn_app, spawn_app_with};
use blepay_service::config::PayLimits;
use serde_json::{Value, json};

async fn reconciled(app: &TestApp) {
    let audit = app.audit().await;
    assert!(
        audit.reconciles(),
        "the ledger does not reconcile: {audit:?}"
    );
}

async fn patch_device(app: &TestApp, device_id: &str, body: &Value) -> Answer {
    let r = app
        .client
        .patch(app.url(&format!("/v1/ops/devices/{device_id}")))
        .bearer_auth(&app.ops_token)
        .json(body)
        .send()
        .await
        .unwrap();
    Answer::of(r).await
}

async fn decommission(app: &TestApp, device_id: &str) -> Answer {
    app.post(
        &format!("/v1/ops/devices/{device_id}/decommission"),
        &app.ops_token,
        &json!({}),
    )
    .await
}

async fn set_limit(app: &TestApp, user: &str, body: &Value) -> Answer {
    let r = app
        .client
        .put(app.url(&format!("/v1/ops/wallets/{user}/spending-limit")))
        .bearer_auth(&app.ops_token)
        .json(body)
        .send()
        .await
        .unwrap();
    Answer::of(r).await
}

async fn fleet(app: &TestApp, query: &str) -> Answer {
    app.get(&format!("/v1/ops/devices{query}"), &app.ops_token)
        .await
}

fn ids(page: &Value) -> Vec<String> {
    page["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["deviceId"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tariff_changed_while_a_session_is_open_applies_only_to_sessions_paid_after_it() {
    // Arrange: alice's session is open at 25 a litre.
    let app = spawn_app().await;
    let m = app.online_machine(25).await;
    app.top_up("alice", 1000).await;
    let open = app.pay("alice", &m.advert(), 300, "open").await.ok();
    let tariff = json!({"tariff": {"pricePerUnit": 50, "unitName": "litre", "currency": "EUR"}});

    // Act: the operator doubles the price, twice (the same request).
    let changed = patch_device(&app, &m.device_id, &tariff).await.ok();
    let again = patch_device(&app, &m.device_id, &tariff).await.ok();
    let grant = m.machine.press().await.unwrap();
    let settled = m.machine.report(grant.session, 4, true).await.unwrap();
    let next = app.pay("alice", &m.advert(), 300, "next").await.ok();

    // Assert: the open session settled at its own tariff; the next one has the new one.
    assert_eq!(changed["pricePerUnit"], "50");
    assert_eq!(again, changed, "the same PATCH is the same answer");
    assert_eq!(settled.amount, 100, "4 litres at the tariff it was paid at");
    let first = app.ops_session(open["sessionId"].as_str().unwrap()).await;
    assert_eq!(first["pricePerUnit"], "25");
    let second = app.ops_session(next["sessionId"].as_str().unwrap()).await;
    assert_eq!(second["pricePerUnit"], "50");
    reconciled(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_machine_out_of_service_shows_it_in_verify_and_refuses_pay_without_change() {
    // Arrange
    let app = spawn_app().await;
    let m = app.online_machine(25).await;
    app.top_up("alice", 1000).await;
    let out = json!({"serviceState": "OUT_OF_SERVICE"});

    // Act
    let patched = patch_device(&app, &m.device_id, &out).await.ok();
    let verified = app.verify("alice", &m.advert()).await.ok();
    let before = app.snapshot("alice").await;
    let refused = app.pay("alice", &m.advert(), 300, "p1").await;

    // Assert
    assert_eq!(patched["serviceState"], "OUT_OF_SERVICE");
    assert_eq!(verified["serviceState"], "OUT_OF_SERVICE");
    refused.assert_error(409, "DEVICE_OUT_OF_SERVICE");
    assert_eq!(
        app.snapshot("alice").await,
        before,
        "a refused pay changed something"
    );
    assert_eq!(app.ops_device(&m.device_id).await["openSessionId"], "");

    // Back in service, it takes payments again.
    let back = patch_device(&app, &m.device_id, &json!({"serviceState": "IN_SERVICE"}))
        .await
        .ok();
    assert_eq!(back["serviceState"], "IN_SERVICE");
    app.pay("alice", &m.advert(), 300, "p2").await.ok();
    reconciled(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_decommissioned_machine_never_comes_back_and_keeps_its_history() {
    // Arrange: one settled session on the machine.
    let app = spawn_app().await;
    let m = app.online_machine(25).await;
    app.top_up("alice", 1000).await;
    let paid = app.pay("alice", &m.advert(), 300, "p1").await.ok();
    let grant = m.machine.press().await.unwrap();
    m.machine.report(grant.session, 2, true).await.unwrap();

    // Act
    let gone = decommission(&app, &m.device_id).await.ok();
    let again = decommission(&app, &m.device_id).await.ok();
    let back = patch_device(&app, &m.device_id, &json!({"serviceState": "IN_SERVICE"})).await;
    let renamed = patch_device(&app, &m.device_id, &json!({"name": "Reborn"})).await;
    let before = app.snapshot("alice").await;
    let refused = app.pay("alice", &m.advert(), 300, "p2").await;

    // Assert
    assert_eq!(gone["serviceState"], "DECOMMISSIONED");
    assert_eq!(again, gone, "decommissioning again is the same answer");
    back.assert_error(409, "DEVICE_OUT_OF_SERVICE");
    renamed.assert_error(409, "DEVICE_OUT_OF_SERVICE");
    // Decommissioning revoked its key too: its adverts are refused as forged, for good.
    assert!(
        gone["revokedAt"].as_str().is_some_and(|t| t != "0"),
        "{gone}"
    );
    assert_eq!(gone["revokedReason"], "decommissioned");
    refused.assert_error(403, "ADVERT_INVALID");
    assert_eq!(app.snapshot("alice").await, before);
    let history = app.ops_session(paid["sessionId"].as_str().unwrap()).await;
    assert_eq!(history["status"], "SETTLED");
    assert_eq!(
        app.ops_device(&m.device_id).await["serviceState"],
        "DECOMMISSIONED"
    );
    // PATCH cannot decommission (that is the decommission route's).
    let other = app.online_machine(25).await;
    patch_device(
        &app,
        &other.device_id,
        &json!({"serviceState": "DECOMMISSIONED"}),
    )
    .await
    .assert_error(400, "INVALID_ARGUMENT");
    reconciled(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_fleet_list_pages_by_device_id_and_filters_by_state_and_service_state() {
    // Arrange: three machines; one busy, one out of service.
    let app = spawn_app().await;
    let machines = [
        app.online_machine(25).await,
        app.online_machine(25).await,
        app.online_machine(25).await,
    ];
    app.top_up("alice", 1000).await;
    app.pay("alice", &machines[0].advert(), 300, "p1")
        .await
        .ok();
    patch_device(
        &app,
        &machines[1].device_id,
        &json!({"serviceState": "OUT_OF_SERVICE"}),
    )
    .await
    .ok();
    let mut all: Vec<String> = machines.iter().map(|m| m.device_id.clone()).collect();
    all.sort();

    // Act
    let first = fleet(&app, "?limit=2").await.ok();
    let cursor = first["nextCursor"].as_str().unwrap().to_owned();
    let second = fleet(&app, &format!("?limit=2&cursor={cursor}")).await.ok();
    let busy = fleet(&app, "?state=BUSY").await.ok();
    let out = fleet(&app, "?serviceState=OUT_OF_SERVICE").await.ok();
    let named = fleet(&app, "?q=Water").await.ok();
    let nobody = fleet(&app, "?q=Coffee").await.ok();

    // Assert
    assert_eq!(ids(&first), all[..2].to_vec());
    assert_eq!(ids(&second), all[2..].to_vec());
    assert_eq!(second["nextCursor"], "", "the last page has no cursor");
    assert_eq!(ids(&busy), vec![machines[0].device_id.clone()]);
    assert_eq!(ids(&out), vec![machines[1].device_id.clone()]);
    assert_eq!(ids(&named).len(), 3);
    assert!(ids(&nobody).is_empty());
    let listed = &first["devices"][0];
    for field in ["state", "serviceState", "lastSeenAt", "telemetry"] {
        assert!(!listed[field].is_null(), "{field} missing: {listed}");
    }
    fleet(&app, "?state=SLEEPY")
        .await
        .assert_error(400, "INVALID_ARGUMENT");
    fleet(&app, "?cursor=not-a-cursor")
        .await
        .assert_error(400, "INVALID_ARGUMENT");
    fleet(&app, "?limit=0")
        .await
        .assert_error(400, "INVALID_ARGUMENT");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pay_over_the_daily_cap_is_402_spending_limit_and_changes_nothing() {
    // Arrange: a deployment cap of 500 a day; room for several unstarted sessions.
    let app = spawn_app_with(Settings {
        pay_limits: PayLimits {
            max_unstarted_per_user: 4,
            daily_spending_limit: 500,
            ..PayLimits::default()
        },
        ..Settings::default()
    })
    .await;
    let (m1, m2) = (app.online_machine(25).await, app.online_machine(25).await);
    app.top_up("alice", 5000).await;
    app.pay("alice", &m1.advert(), 300, "p1").await.ok();
    let before = app.snapshot("alice").await;

    // Act
    let refused = app.pay("alice", &m2.advert(), 300, "p2").await;

    // Assert: refused, nothing changed, the machine stays free; the wallet shows the cap.
    refused.assert_error(402, "SPENDING_LIMIT");
    assert_eq!(
        refused.body["message"],
        "this pay would take today's spending (300 so far) above your daily limit of 500"
    );
    assert_eq!(app.snapshot("alice").await, before);
    assert_eq!(app.ops_device(&m2.device_id).await["state"], "IDLE");
    let w = app.wallet("alice").await;
    assert_eq!(
        (
            &w["dailyLimit"],
            &w["spentToday"],
            &w["dailyLimitOverridden"]
        ),
        (&json!("500"), &json!("300"), &json!(false))
    );
    let mine = app.get("/v1/wallet", &app.token_for("alice")).await.ok();
    assert_eq!(mine["spentToday"], "300", "the phone sees it too");

    // The operator raises alice's cap (twice: the same answer); then the pay goes through.
    let raised = set_limit(&app, "alice", &json!({"dailyLimit": 1000}))
        .await
        .ok();
    let again = set_limit(&app, "alice", &json!({"dailyLimit": 1000}))
        .await
        .ok();
    assert_eq!(
        (&raised["dailyLimit"], &raised["dailyLimitOverridden"]),
        (&json!("1000"), &json!(true))
    );
    assert_eq!(again, raised);
    app.pay("alice", &m2.advert(), 300, "p2").await.ok();
    // Cleared: the deployment's cap applies again.
    let cleared = set_limit(&app, "alice", &json!({})).await.ok();
    assert_eq!(
        (&cleared["dailyLimit"], &cleared["spentToday"]),
        (&json!("500"), &json!("600"))
    );
    set_limit(&app, "alice", &json!({"dailyLimit": -1}))
        .await
        .assert_error(400, "INVALID_ARGUMENT");
    reconciled(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_machine_lifecycle_and_the_daily_cap_are_served_over_grpc_too() {
    use blepay_proto::pb::v1 as pb;
    use blepay_proto::pb::v1::ops_service_client::OpsServiceClient;
    // Arrange
    let app = spawn_app().await;
    let m = app.online_machine(25).await;
    let ch = tonic::transport::Endpoint::from_shared(app.address.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut ops = OpsServiceClient::new(ch);
    let token = app.ops_token.clone();
    #[allow(clippy::items_after_statements)]
    fn grpc_authed<T>(msg: T, token: &str) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        r
    }
    // Act
    let out = ops
        .update_device(grpc_authed(
            pb::UpdateDeviceRequest {
                device_id: m.device_id.clone(),
                service_state: pb::ServiceState::OutOfService as i32,
                ..pb::UpdateDeviceRequest::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let listed = ops
        .list_devices(grpc_authed(
            pb::ListDevicesRequest {
                service_state: pb::ServiceState::OutOfService as i32,
                ..pb::ListDevicesRequest::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let gone = ops
        .decommission_device(grpc_authed(
            pb::DecommissionDeviceRequest {
                device_id: m.device_id.clone(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let back = ops
        .update_device(grpc_authed(
            pb::UpdateDeviceRequest {
                device_id: m.device_id.clone(),
                service_state: pb::ServiceState::InService as i32,
                ..pb::UpdateDeviceRequest::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    let wallet = ops
        .set_spending_limit(grpc_authed(
            pb::SetSpendingLimitRequest {
                user_id: "grpc-user".into(),
                daily_limit: Some(700),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();

    // Assert
    assert_eq!(out.service_state, pb::ServiceState::OutOfService as i32);
    assert_eq!(
        listed
            .devices
            .iter()
            .map(|d| d.device_id.clone())
            .collect::<Vec<_>>(),
        vec![m.device_id.clone()]
    );
    assert_eq!(gone.service_state, pb::ServiceState::Decommissioned as i32);
    assert_eq!(back.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        (wallet.daily_limit, wallet.daily_limit_overridden),
        (700, true)
    );
}
