//! Operators with roles, and the audit trail (issue 11, item 8): operators are created (owner
//! only) and get a token once; each role may call exactly the ops routes `Role::allows` says and
//! gets 403 FORBIDDEN elsewhere, changing nothing; a revoked operator is refused at once; the
//! audit lists every operator action, newest first, page by page.
//!
//! **Adding a route** to the permission table is one line in [`ops_routes`]: its name, the
//! [`Action`] its handler authorizes, the method, the path and the body (each call gets fresh
//! ids and keys from the [`Fixture`], so a permitted call succeeds).

use blepay_e2e::providers::{ProviderApp, ProviderSetup, spawn_app_with_providers, stripe};
use blepay_e2e::{Answer, TestApp, random_device_id, random_key, spawn_app};
use blepay_proto::pb::v1 as pb;
use blepay_proto::pb::v1::ops_service_client::OpsServiceClient;
use blepay_service::operator::DEFAULT_SUPPORT_REFUND_MAX;
use blepay_service::{Action, Role};
use serde_json::{Value, json};

fn authed<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

/// What the table's calls act on (created by the bootstrap owner before the table runs).
struct Fixture {
    device_id: String,
    user: String,
    session_id: String,
    /// An operator the owner's revoke call revokes (again and again: idempotent).
    victim: String,
    /// A SETTLED session (100 captured) that permitted refunds take 1 from, each with a new key.
    settled_session: String,
    /// An open problem report, which permitted dismissals resolve (again: the same answer).
    problem_id: String,
    /// A machine that permitted calls decommission and revoke (again: the same answer).
    spare_device: String,
    /// A machine whose key permitted calls rotate (with one key: the same rotation).
    rotating_device: String,
    /// `user`'s Stripe top-up of 1000, credited, that permitted refunds take 1 from, each with a
    /// new key.
    topup: String,
}

#[derive(Clone, Copy)]
enum Method {
    Get,
    Post,
    Put,
    Patch,
}

/// One ops route: the action its handler authorizes (`None`: any authenticated operator), and
/// how to call it.
struct OpsRoute {
    name: &'static str,
    action: Option<Action>,
    method: Method,
    path: fn(&Fixture) -> String,
    body: fn(&Fixture) -> Value,
}

fn no_body(_: &Fixture) -> Value {
    Value::Null
}

/// Every ops route, one line each.
fn ops_routes() -> Vec<OpsRoute> {
    use Method::{Get, Patch, Post, Put};
    let r = |name, action, method, path, body| OpsRoute {
        name,
        action,
        method,
        path,
        body,
    };
    vec![
        r(
            "register device",
            Some(Action::RegisterDevice),
            Post,
            |_| "/v1/ops/devices".into(),
            |_| json!({"deviceId": random_device_id(), "name": "Washer", "pricePerUnit": 50, "unitName": "cycle", "currency": "EUR"}),
        ),
        r(
            "get device",
            Some(Action::ReadDevices),
            Get,
            |f| format!("/v1/ops/devices/{}", f.device_id),
            no_body,
        ),
        r(
            "top up",
            Some(Action::TopUp),
            Post,
            |f| format!("/v1/ops/wallets/{}/topup", f.user),
            |_| json!({"amount": 100, "idempotencyKey": random_key()}),
        ),
        r(
            "get wallet",
            Some(Action::ReadMoney),
            Get,
            |f| format!("/v1/ops/wallets/{}", f.user),
            no_body,
        ),
        r(
            "get session",
            Some(Action::ReadMoney),
            Get,
            |f| format!("/v1/ops/sessions/{}", f.session_id),
            no_body,
        ),
        r("metrics", None, Get, |_| "/metrics".into(), no_body),
        r(
            "create operator",
            Some(Action::ManageOperators),
            Post,
            |_| "/v1/ops/operators".into(),
            |_| json!({"name": "Temp", "role": "finance", "idempotencyKey": random_key()}),
        ),
        r(
            "list operators",
            Some(Action::ManageOperators),
            Get,
            |_| "/v1/ops/operators".into(),
            no_body,
        ),
        r(
            "revoke operator",
            Some(Action::ManageOperators),
            Post,
            |f| format!("/v1/ops/operators/{}/revoke", f.victim),
            no_body,
        ),
        r(
            "list devices",
            Some(Action::ReadDevices),
            Get,
            |_| "/v1/ops/devices?limit=5".into(),
            no_body,
        ),
        r(
            "update device",
            Some(Action::ManageDevice),
            Patch,
            |f| format!("/v1/ops/devices/{}", f.device_id),
            |_| json!({"name": "Renamed washer"}),
        ),
        r(
            "decommission device",
            Some(Action::ManageDevice),
            Post,
            |f| format!("/v1/ops/devices/{}/decommission", f.spare_device),
            no_body,
        ),
        r(
            "revoke device key",
            Some(Action::DeviceKeys),
            Post,
            |f| format!("/v1/ops/devices/{}/revoke", f.spare_device),
            |_| json!({"reason": "key read out of flash"}),
        ),
        r(
            "rotate device key",
            Some(Action::DeviceKeys),
            Post,
            |f| format!("/v1/ops/devices/{}/rotate-key", f.rotating_device),
            |_| json!({"idempotencyKey": "rotate-in-the-table"}),
        ),
        r(
            "set spending limit",
            Some(Action::SetSpendingLimit),
            Put,
            |f| format!("/v1/ops/wallets/{}/spending-limit", f.user),
            |_| json!({"dailyLimit": 5000}),
        ),
        r(
            "refund",
            Some(Action::Refund {
                amount: blepay_core::Amount::new(1).unwrap(),
            }),
            Post,
            |f| format!("/v1/ops/sessions/{}/refund", f.settled_session),
            |_| json!({"amount": 1, "reason": "short pour", "idempotencyKey": random_key()}),
        ),
        r(
            "close session",
            Some(Action::CloseSession),
            Post,
            |f| format!("/v1/ops/sessions/{}/close", f.session_id),
            |_| json!({"reason": "stuck"}),
        ),
        r(
            "list problems",
            Some(Action::ReadMoney),
            Get,
            |_| "/v1/ops/problems".into(),
            no_body,
        ),
        r(
            "dismiss problem",
            Some(Action::ResolveProblem),
            Post,
            |f| format!("/v1/ops/problems/{}/dismiss", f.problem_id),
            |_| json!({"reason": "machine worked"}),
        ),
        r(
            "list sessions",
            Some(Action::ReadMoney),
            Get,
            |f| format!("/v1/ops/sessions?userId={}", f.user),
            no_body,
        ),
        r(
            "statement",
            Some(Action::ReadMoney),
            Get,
            |f| format!("/v1/ops/wallets/{}/ledger", f.user),
            no_body,
        ),
        r(
            "sales report",
            Some(Action::ReadReports),
            Get,
            |_| "/v1/ops/reports/sales?from=2026-01-01&to=2026-01-31".into(),
            no_body,
        ),
        r(
            "list audit",
            Some(Action::ReadAudit),
            Get,
            |_| "/v1/ops/audit".into(),
            no_body,
        ),
        r(
            "list top-ups",
            Some(Action::ReadMoney),
            Get,
            |f| format!("/v1/ops/topups?userId={}", f.user),
            no_body,
        ),
        r(
            "refund top-up",
            Some(Action::Refund {
                amount: blepay_core::Amount::new(1).unwrap(),
            }),
            Post,
            |f| format!("/v1/ops/topups/{}/refund", f.topup),
            |_| json!({"amount": 1, "reason": "asked for it back", "idempotencyKey": random_key()}),
        ),
    ]
}

async fn call(app: &TestApp, route: &OpsRoute, f: &Fixture, token: &str) -> Answer {
    let url = app.url(&(route.path)(f));
    let req = match route.method {
        Method::Get => app.client.get(url),
        Method::Post => app.client.post(url).json(&(route.body)(f)),
        Method::Put => app.client.put(url).json(&(route.body)(f)),
        Method::Patch => app.client.patch(url).json(&(route.body)(f)),
    };
    Answer::of(req.bearer_auth(token).send().await.unwrap()).await
}

/// Create an operator as `token` → (operator JSON, its token).
async fn create_operator(app: &TestApp, token: &str, name: &str, role: &str) -> (Value, String) {
    let body = app
        .post(
            "/v1/ops/operators",
            token,
            &json!({"name": name, "role": role, "idempotencyKey": random_key()}),
        )
        .await
        .ok();
    let secret = body["token"].as_str().unwrap().to_owned();
    (body["operator"].clone(), secret)
}

/// The whole audit trail, newest first, read as the bootstrap owner `limit` at a time.
async fn audit_trail(app: &TestApp, limit: u32) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = app
            .get(
                &format!("/v1/ops/audit?limit={limit}&cursor={cursor}"),
                &app.ops_token,
            )
            .await
            .ok();
        let events = page["events"].as_array().cloned().unwrap_or_default();
        assert!(events.len() <= limit as usize);
        out.extend(events);
        match page["nextCursor"].as_str() {
            Some(c) if !c.is_empty() => c.clone_into(&mut cursor),
            _ => return out,
        }
    }
}

async fn fixture(app: &ProviderApp) -> Fixture {
    let machine = app.online_machine(25).await;
    let user = blepay_e2e::random_user();
    app.top_up(&user, 1000).await;
    let session = app
        .pay(&user, &machine.advert(), 100, &random_key())
        .await
        .ok();
    let (victim, _) = create_operator(app, &app.ops_token, "Victim", "support").await;
    // Another user's session, pressed and settled at 4 units of 25: 100 captured.
    let buyer = blepay_e2e::random_user();
    app.top_up(&buyer, 1000).await;
    let other = app.online_machine(25).await;
    let paid = app
        .pay(&buyer, &other.advert(), 200, &random_key())
        .await
        .ok();
    let settled = paid["sessionId"].as_str().unwrap().to_owned();
    other.machine.press().await.unwrap();
    other
        .machine
        .report(blepay_core::SessionId::parse(&settled).unwrap(), 4, true)
        .await
        .unwrap();
    let problem = app
        .post(
            &format!("/v1/sessions/{settled}/problem"),
            &app.token_for(&buyer),
            &json!({"reason": "it stopped early"}),
        )
        .await
        .ok();
    let (spare_device, _) = app.register_device(25).await;
    let (rotating_device, _) = app.register_device(25).await;
    let started = app
        .start_topup(&user, "stripe", 1000, &random_key())
        .await
        .ok();
    let topup = started["topUpId"].as_str().unwrap().to_owned();
    let pi = started["stripe"]["paymentIntentId"].as_str().unwrap();
    let (credited, _) = app
        .stripe_notify(
            "payment_intent.succeeded",
            stripe::payment_intent(pi, &topup, 1000, app.currency),
        )
        .await;
    assert_eq!(credited.status, 200, "{}", credited.body);
    Fixture {
        device_id: machine.device_id.clone(),
        user,
        session_id: session["sessionId"].as_str().unwrap().to_owned(),
        victim: victim["operatorId"].as_str().unwrap().to_owned(),
        settled_session: settled,
        problem_id: problem["problemId"].as_str().unwrap().to_owned(),
        spare_device,
        rotating_device,
        topup,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_owner_creates_an_operator_of_each_role_and_each_token_works_once_shown() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let mut made = Vec::new();
    for role in Role::ALL {
        made.push((
            role,
            create_operator(&app, &app.ops_token, "Someone", role.as_str()).await,
        ));
    }
    let list = app.get("/v1/ops/operators", &app.ops_token).await.ok();

    // Assert
    for (role, (op, token)) in &made {
        assert_eq!(op["role"], role.as_str());
        let id = op["operatorId"].as_str().unwrap();
        assert_eq!(op["principal"], format!("op:{id}"));
        assert_eq!(op["createdBy"], "ops-token");
        assert!(token.starts_with(&format!("bpo_{id}_")), "{token}");
        // The token authenticates: every role may read a device's absence.
        app.get(&format!("/v1/ops/devices/{}", random_device_id()), token)
            .await
            .assert_error(404, "DEVICE_UNKNOWN");
    }
    let listed = list["operators"].as_array().unwrap();
    assert_eq!(listed.len(), 4);
    assert!(
        listed.iter().all(|o| o.get("token").is_none()),
        "no token is listed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_create_retried_with_its_key_answers_the_same_operator_without_a_token() {
    let app = spawn_app().await;
    let body = json!({"name": "Ann", "role": "support", "idempotencyKey": "create-ann"});
    let first = app
        .post("/v1/ops/operators", &app.ops_token, &body)
        .await
        .ok();
    let retry = app
        .post("/v1/ops/operators", &app.ops_token, &body)
        .await
        .ok();
    let reused = app
        .post(
            "/v1/ops/operators",
            &app.ops_token,
            &json!({"name": "Ann", "role": "owner", "idempotencyKey": "create-ann"}),
        )
        .await;

    assert_eq!(retry["operator"], first["operator"]);
    assert!(retry.get("token").is_none_or(|t| t == ""), "{retry}");
    reused.assert_error(409, "IDEMPOTENCY_KEY_REUSED");
    let list = app.get("/v1/ops/operators", &app.ops_token).await.ok();
    assert_eq!(list["operators"].as_array().unwrap().len(), 1);
    let creates: Vec<_> = audit_trail(&app, 50)
        .await
        .into_iter()
        .filter(|e| e["action"] == "operator.create")
        .collect();
    assert_eq!(creates.len(), 1, "a retry adds no audit event: {creates:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn each_role_may_call_exactly_the_routes_its_permissions_allow_and_a_refusal_changes_nothing()
{
    // Arrange: a server with the payment providers (their fakes), for the top-up routes.
    let app = spawn_app_with_providers(ProviderSetup::default()).await;
    let f = fixture(&app).await;
    let cap = blepay_core::Amount::new(DEFAULT_SUPPORT_REFUND_MAX).unwrap();
    let mut tokens = vec![(Role::Owner, "bootstrap".to_owned(), app.ops_token.clone())];
    for role in Role::ALL {
        let (_, token) = create_operator(&app, &app.ops_token, role.as_str(), role.as_str()).await;
        tokens.push((role, role.as_str().to_owned(), token));
    }

    // Act + Assert
    let mut refused = 0;
    for (role, who, token) in &tokens {
        for route in ops_routes() {
            let allowed = route.action.as_ref().is_none_or(|a| role.allows(a, cap));
            let before = (
                app.wallet(&f.user).await,
                audit_trail(&app, 500).await,
                app.audit().await,
            );
            let answer = call(&app, &route, &f, token).await;
            if allowed {
                assert!(
                    (200..300).contains(&answer.status),
                    "{who} ({role:?}) may {}: got {} {}",
                    route.name,
                    answer.status,
                    answer.body
                );
            } else {
                refused += 1;
                answer.assert_error(403, "FORBIDDEN");
                let after = (
                    app.wallet(&f.user).await,
                    audit_trail(&app, 500).await,
                    app.audit().await,
                );
                assert_eq!(
                    after, before,
                    "{who} tried {}: something changed",
                    route.name
                );
            }
        }
    }
    assert!(
        refused >= 10,
        "the table refuses something to every role but owner"
    );
    assert!(app.audit().await.reconciles());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_operator_is_refused_at_once_with_the_generic_answer() {
    // Arrange
    let app = spawn_app().await;
    let (op, token) = create_operator(&app, &app.ops_token, "Tom", "technician").await;
    let id = op["operatorId"].as_str().unwrap();
    let device = format!("/v1/ops/devices/{}", random_device_id());
    app.get(&device, &token)
        .await
        .assert_error(404, "DEVICE_UNKNOWN");

    // Act
    let revoked = app
        .post(
            &format!("/v1/ops/operators/{id}/revoke"),
            &app.ops_token,
            &Value::Null,
        )
        .await
        .ok();
    let again = app
        .post(
            &format!("/v1/ops/operators/{id}/revoke"),
            &app.ops_token,
            &Value::Null,
        )
        .await
        .ok();

    // Assert
    assert!(
        revoked["revokedAt"]
            .as_str()
            .unwrap()
            .parse::<i64>()
            .unwrap()
            > 0
    );
    assert_eq!(again, revoked, "revoking twice changes nothing");
    let refused = app.get(&device, &token).await;
    refused.assert_error(401, "UNAUTHENTICATED");
    let garbage = app.get(&device, "bpo_0000000000000000_00").await;
    assert_eq!(refused.body["message"], garbage.body["message"]);
    app.post(
        &format!("/v1/ops/operators/{}/revoke", "0123456789abcdef"),
        &app.ops_token,
        &Value::Null,
    )
    .await
    .assert_error(404, "OPERATOR_NOT_FOUND");
    let revokes: Vec<_> = audit_trail(&app, 50)
        .await
        .into_iter()
        .filter(|e| e["action"] == "operator.revoke")
        .collect();
    assert_eq!(revokes.len(), 1);
    assert_eq!(revokes[0]["target"], id);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_audit_lists_every_operator_action_of_the_test_newest_first() {
    // Arrange: the bootstrap owner creates a technician and a support operator; the technician
    // registers a machine, the owner tops up twice (once retried), support is refused a top-up.
    let app = spawn_app().await;
    let (tech, tech_token) = create_operator(&app, &app.ops_token, "Tech", "technician").await;
    let (sup, sup_token) = create_operator(&app, &app.ops_token, "Sup", "support").await;
    let device_id = random_device_id();
    app.post(
        "/v1/ops/devices",
        &tech_token,
        &json!({"deviceId": device_id, "name": "Washer", "pricePerUnit": 50, "unitName": "cycle", "currency": "EUR"}),
    )
    .await
    .ok();
    let top_up = json!({"amount": 700, "idempotencyKey": "t-1"});
    app.post("/v1/ops/wallets/alice/topup", &app.ops_token, &top_up)
        .await
        .ok();
    app.post("/v1/ops/wallets/alice/topup", &app.ops_token, &top_up)
        .await
        .ok();
    app.post(
        "/v1/ops/wallets/bob/topup",
        &app.ops_token,
        &json!({"amount": 300, "idempotencyKey": "t-2"}),
    )
    .await
    .ok();
    app.post(
        "/v1/ops/wallets/bob/topup",
        &sup_token,
        &json!({"amount": 1, "idempotencyKey": "t-3"}),
    )
    .await
    .assert_error(403, "FORBIDDEN");

    // Act: two at a time.
    let trail = audit_trail(&app, 2).await;

    // Assert
    let tech_p = tech["principal"].as_str().unwrap();
    let got: Vec<(String, String, String, i64)> = trail
        .iter()
        .map(|e| {
            (
                e["principal"].as_str().unwrap().to_owned(),
                e["action"].as_str().unwrap().to_owned(),
                e["target"].as_str().unwrap().to_owned(),
                e["amount"].as_str().map_or(0, |a| a.parse().unwrap()),
            )
        })
        .collect();
    let t = |p: &str, a: &str, target: &str, amount: i64| {
        (p.to_owned(), a.to_owned(), target.to_owned(), amount)
    };
    assert_eq!(
        got,
        vec![
            t("ops-token", "wallet.top_up", "bob", 300),
            t("ops-token", "wallet.top_up", "alice", 700),
            t(tech_p, "device.register", &device_id, 0),
            t(
                "ops-token",
                "operator.create",
                sup["operatorId"].as_str().unwrap(),
                0
            ),
            t(
                "ops-token",
                "operator.create",
                tech["operatorId"].as_str().unwrap(),
                0
            ),
        ]
    );
    assert_eq!(trail[1]["idempotencyKey"], "t-1");
    assert_eq!(trail[2]["role"], "technician");
    let by_tech = app
        .get(
            &format!("/v1/ops/audit?principal={}", tech_p.replace(':', "%3A")),
            &app.ops_token,
        )
        .await
        .ok();
    assert_eq!(by_tech["events"].as_array().unwrap().len(), 1);
    app.get("/v1/ops/audit?cursor=nonsense", &app.ops_token)
        .await
        .assert_error(400, "INVALID_ARGUMENT");
    app.get("/v1/ops/audit?limit=0", &app.ops_token)
        .await
        .assert_error(400, "INVALID_ARGUMENT");
}

#[tokio::test(flavor = "multi_thread")]
async fn over_grpc_operator_tokens_roles_and_revocation_hold_the_same() {
    // Arrange
    let app = spawn_app().await;
    let ch = tonic::transport::Endpoint::from_shared(app.address.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut ops = OpsServiceClient::new(ch);
    // Act + Assert: the owner creates a technician over gRPC.
    let created = ops
        .create_operator(authed(
            pb::CreateOperatorRequest {
                name: "Tech".into(),
                role: "technician".into(),
                idempotency_key: "g-1".into(),
            },
            &app.ops_token,
        ))
        .await
        .unwrap()
        .into_inner();
    let tech = created.operator.unwrap();
    let top_up = |token: &str| {
        authed(
            pb::TopUpRequest {
                user_id: "alice".into(),
                amount: 100,
                idempotency_key: random_key(),
            },
            token,
        )
    };
    let denied = ops.top_up(top_up(&created.token)).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    let listed = ops
        .list_operators(authed(pb::ListOperatorsRequest {}, &created.token))
        .await
        .unwrap_err();
    assert_eq!(listed.code(), tonic::Code::PermissionDenied);
    ops.revoke_operator(authed(
        pb::RevokeOperatorRequest {
            operator_id: tech.operator_id.clone(),
        },
        &app.ops_token,
    ))
    .await
    .unwrap();
    let refused = ops.top_up(top_up(&created.token)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let audit = ops
        .list_audit(authed(pb::ListAuditRequest::default(), &app.ops_token))
        .await
        .unwrap()
        .into_inner();
    let actions: Vec<_> = audit.events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["operator.revoke", "operator.create"]);
    assert_eq!(
        app.wallet("alice").await["available"]
            .as_str()
            .unwrap_or("0"),
        "0"
    );
}
