//! Recorded API Gateway HTTP API (payload 2.0) events, sent through the very routers the Lambda
//! functions run, against a real store.
//!
//! The events in `tests/fixtures/` are what API Gateway hands the functions: phone calls carry the
//! JWT authorizer's claims (`requestContext.authorizer.jwt.claims.sub` is the user), operator calls
//! the IAM authorizer's caller, the machine call a base64 body and no authorizer. Their bodies are
//! made with the protocol test vector (master key 00..1f, device 0102030405060708, slot 59000000)
//! and a clock fixed at [`NOW`], so they stay valid forever; `fixtures_are_what_the_protocol_makes`
//! checks them against the protocol code. Regenerate with
//! `BLEPAY_REGENERATE_FIXTURES=1 cargo test -p blepay-lambda --test events fixtures_are`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests: a failure is a panic

mod support;

use std::path::PathBuf;

use axum::http::StatusCode;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use blepay_service::http::Surface;
use serde_json::{Value, json};
use support::{Backend, NOW, USER, body_json, call, event, fixture_dir};

/// The protocol test vector's device key for device 0102030405060708, key version 0.
const DEVICE_KEY: &str = "e74bd0e5e3891556ff6dff5fcebc44eab49aaa2152d9ced22bb6141a5f237a82";

#[tokio::test]
async fn a_payment_flows_through_the_functions_routers_with_the_jwt_sub_as_the_user() {
    for backend in Backend::all().await {
        let ops = backend.router(Surface::Ops);
        let phone = backend.router(Surface::Phone);
        let device = backend.router(Surface::Device);

        // Ops (IAM-authorized): register the machine, top up the user named by the phone's `sub`.
        let r = call(&ops, event("ops-register-device.json")).await;
        assert_eq!(r.status(), StatusCode::OK);
        let registered = body_json(r).await;
        assert_eq!(registered["deviceId"], "0102030405060708");
        assert_eq!(registered["deviceKey"], DEVICE_KEY);

        let r = call(&ops, event("ops-topup.json")).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(body_json(r).await["available"], "1000");

        // The machine polls (a base64 binary body): it is now online.
        let r = call(&device, event("device-poll.json")).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-type"], "application/octet-stream");

        // The phone verifies and pays.
        let r = call(&phone, event("phone-verify.json")).await;
        assert_eq!(r.status(), StatusCode::OK);
        let verified = body_json(r).await;
        assert_eq!(
            (verified["name"].as_str(), verified["state"].as_str()),
            (Some("Water 1"), Some("IDLE"))
        );

        let r = call(&phone, event("phone-pay.json")).await;
        assert_eq!(r.status(), StatusCode::OK);
        let paid = body_json(r).await;
        assert_eq!(
            (paid["status"].as_str(), paid["holdAmount"].as_str()),
            (Some("AUTHORIZED"), Some("500"))
        );
        let session_id = paid["sessionId"].as_str().unwrap().to_owned();

        // The wallet and session the phone sees are those of the claims' `sub`.
        let r = call(&phone, event("phone-wallet.json")).await;
        assert_eq!(r.status(), StatusCode::OK);
        let wallet = body_json(r).await;
        assert_eq!(wallet["userId"], USER);
        assert_eq!(
            (wallet["available"].as_str(), wallet["held"].as_str()),
            (Some("500"), Some("500"))
        );

        let session = support::with_session_id(&event("phone-session.json"), &session_id);
        let r = call(&phone, session).await;
        assert_eq!(r.status(), StatusCode::OK);
        let session = body_json(r).await;
        assert_eq!(
            (session["userId"].as_str(), session["status"].as_str()),
            (Some(USER), Some("AUTHORIZED"))
        );

        let r = call(&ops, event("ops-wallet.json")).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(body_json(r).await["held"], "500");

        // Paying again with the same idempotency key returns the same session.
        let r = call(&phone, event("phone-pay.json")).await;
        assert_eq!(body_json(r).await["sessionId"], session_id.as_str());

        // Nobody starts the machine: the sweeper expires the session and releases the hold.
        let swept = blepay_lambda::sweep(backend.store(), NOW + 121, 14_400)
            .await
            .unwrap();
        assert_eq!(swept, json!({ "expired": 1, "timedOut": 0 }));
        assert!(backend.store().audit().await.unwrap().reconciles());
    }
}

/// The recorded ops events are signed by a session of this role (`userId` `<role id>:ops-alice`).
const RECORDED_OPERATOR_ROLE: &str = "AROAXEXAMPLEROLEID123";

#[tokio::test]
async fn with_the_operator_role_configured_no_other_iam_caller_reaches_the_ops_routes() {
    use blepay_lambda::OperatorRole;
    for backend in Backend::all().await {
        let user = blepay_core::UserId::parse(USER).unwrap();
        let mut e: Value = serde_json::from_str(&event("ops-topup.json")).unwrap();
        e["requestContext"]["authorizer"]["iam"]["userId"] = json!("AIDAEXAMPLEUSERID1234");
        e["requestContext"]["authorizer"]["iam"]["userArn"] =
            json!("arn:aws:iam::123456789012:user/admin");
        let not_a_role_session = e.to_string();
        for (role, request) in [
            // Another role of the account, allowed execute-api:Invoke by its own policies.
            ("AROAOTHERROLEID456789", event("ops-topup.json")),
            // A role id that is only a prefix of the caller's.
            ("AROAXEXAMPLEROLEID12", event("ops-topup.json")),
            // An IAM user (say an administrator with `*`), not a session of the role.
            (RECORDED_OPERATOR_ROLE, not_a_role_session),
        ] {
            let ops = backend.router_for(Surface::Ops, OperatorRole::Only(role.into()));
            let r = call(&ops, request).await;
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "role {role}");
            assert_eq!(body_json(r).await["code"], "UNAUTHENTICATED");
            let r = call(&ops, event("ops-wallet.json")).await;
            if role != RECORDED_OPERATOR_ROLE {
                assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "role {role}");
            }
            // The refused top-up created no money.
            let w = backend.store().wallet(&user, NOW).await.unwrap();
            assert_eq!(w.available.minor(), 0, "role {role}");
        }

        // A session of the operator role is an operator.
        let ops = backend.router_for(
            Surface::Ops,
            OperatorRole::Only(RECORDED_OPERATOR_ROLE.into()),
        );
        let r = call(&ops, event("ops-topup.json")).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(body_json(r).await["available"], "1000");
    }
}

#[tokio::test]
async fn with_roles_mapped_from_iam_each_role_session_gets_its_role_and_the_audit_names_its_arn() {
    use blepay_lambda::OperatorRole;
    use blepay_service::Role;
    use blepay_store::{AuditFilter, PageRequest};
    for backend in Backend::all().await {
        let user = blepay_core::UserId::parse(USER).unwrap();
        // The recorded session's role is mapped to finance: it reads, it may not top up.
        let finance = backend.router_for(
            Surface::Ops,
            OperatorRole::Mapped(vec![(RECORDED_OPERATOR_ROLE.into(), Role::Finance)]),
        );
        let r = call(&finance, event("ops-topup.json")).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(body_json(r).await["code"], "FORBIDDEN");
        let r = call(&finance, event("ops-wallet.json")).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            backend
                .store()
                .wallet(&user, NOW)
                .await
                .unwrap()
                .available
                .minor(),
            0
        );
        let no_filter = AuditFilter::default();
        let everything = PageRequest {
            limit: 50,
            after: None,
        };
        let audit = || backend.store().audit_events(&no_filter, &everything);
        assert!(
            audit().await.unwrap().items.is_empty(),
            "a refusal records nothing"
        );

        // Mapped to owner (next to another role's mapping): the top-up goes through, and the
        // audit names the role session's ARN.
        let owner = backend.router_for(
            Surface::Ops,
            OperatorRole::Mapped(vec![
                ("AROAOTHERROLEID456789".into(), Role::Support),
                (RECORDED_OPERATOR_ROLE.into(), Role::Owner),
            ]),
        );
        let r = call(&owner, event("ops-topup.json")).await;
        assert_eq!(r.status(), StatusCode::OK);
        let events = audit().await.unwrap().items;
        assert_eq!(events.len(), 1);
        assert_eq!(
            (
                events[0].principal.as_str(),
                events[0].role.as_str(),
                events[0].action.as_str(),
                events[0].target.as_str(),
                events[0].amount.map(blepay_core::Amount::minor),
            ),
            (
                "arn:aws:sts::123456789012:assumed-role/blepay-operators/ops-alice",
                "owner",
                "wallet.top_up",
                USER,
                Some(1000),
            )
        );
        // An IAM role that is not mapped is refused.
        let other = backend.router_for(
            Surface::Ops,
            OperatorRole::Mapped(vec![("AROAOTHERROLEID456789".into(), Role::Owner)]),
        );
        assert_eq!(
            call(&other, event("ops-wallet.json")).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
}

/// The DynamoDB actions infra/template.yaml grants the function `resource` (its `- dynamodb:X`
/// lines; infra/test_template.py checks the policies' shape).
fn granted_actions(resource: &str) -> std::collections::BTreeSet<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../infra/template.yaml");
    let template = std::fs::read_to_string(&path).unwrap();
    let start = format!("  {resource}:");
    let mut lines = template.lines().skip_while(|l| *l != start.as_str());
    assert!(lines.next().is_some(), "{resource} is not in the template");
    lines
        // The resource ends at the next line indented by at most two spaces.
        .take_while(|l| l.is_empty() || l.starts_with("   "))
        .filter_map(|l| l.trim().strip_prefix("- dynamodb:"))
        .map(str::to_owned)
        .collect()
}

/// The IAM action a DynamoDB request needs (a transaction needs its items' actions: every
/// transaction blepay writes updates an item; the item kinds are checked statically by
/// infra/test_template.py).
fn needed_action(operation: &str) -> &str {
    match operation {
        "TransactGetItems" => "GetItem",
        "TransactWriteItems" => "UpdateItem",
        other => other,
    }
}

#[tokio::test]
async fn each_function_sends_only_requests_its_template_policy_allows() {
    use std::collections::{BTreeMap, BTreeSet};
    let (backend, counter) = Backend::dynamodb_counted().await;
    let mut used: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let mut run = |function: &'static str, ops: BTreeMap<String, u64>| {
        used.entry(function)
            .or_default()
            .extend(ops.into_keys().map(|o| needed_action(&o).to_owned()));
    };
    let calls = [
        (
            Surface::Ops,
            "OpsFunction",
            event("ops-register-device.json"),
        ),
        (Surface::Ops, "OpsFunction", event("ops-topup.json")),
        // (The recorded poll and heartbeat share a sequence number: one of them.)
        (
            Surface::Device,
            "DeviceFunction",
            event("device-heartbeat-cloudfront.json"),
        ),
        (Surface::Phone, "VerifyFunction", event("phone-verify.json")),
        (Surface::Phone, "VerifyFunction", event("phone-pay.json")),
        (Surface::Phone, "VerifyFunction", event("phone-pay.json")),
        (Surface::Phone, "VerifyFunction", event("phone-wallet.json")),
        (Surface::Ops, "OpsFunction", event("ops-wallet.json")),
        (Surface::Ops, "OpsFunction", event("ops-topup.json")),
    ];
    for (surface, function, request) in calls {
        counter.reset();
        let r = call(&backend.router(surface), request).await;
        assert!(r.status().is_success(), "{function}: {}", r.status());
        run(function, counter.by_operation());
    }
    // The sweeper expires the unstarted session (its hold released).
    counter.reset();
    let swept = blepay_lambda::sweep(backend.store(), NOW + 121, 14_400)
        .await
        .unwrap();
    assert_eq!(swept["expired"], 1);
    run("SweeperFunction", counter.by_operation());

    assert_eq!(used.len(), 4);
    for (function, actions) in &used {
        let granted = granted_actions(function);
        eprintln!("{function}: sends requests needing {actions:?}; granted {granted:?}");
        let missing: Vec<&String> = actions.difference(&granted).collect();
        assert!(
            missing.is_empty(),
            "{function} sends requests needing {missing:?}, not in its policy {granted:?}"
        );
    }
}

#[tokio::test]
async fn each_function_serves_only_its_own_routes() {
    for backend in Backend::all().await {
        for (surface, foreign) in [
            (Surface::Phone, "ops-wallet.json"),
            (Surface::Phone, "device-poll.json"),
            (Surface::Ops, "phone-wallet.json"),
            (Surface::Device, "phone-verify.json"),
        ] {
            let r = call(&backend.router(surface), event(foreign)).await;
            assert_eq!(
                r.status(),
                StatusCode::NOT_FOUND,
                "{surface:?} must not serve {foreign}"
            );
            assert_eq!(body_json(r).await["code"], "NOT_FOUND");
        }
    }
}

#[tokio::test]
async fn without_an_authorizer_context_a_phone_needs_an_hs256_token_as_with_serve() {
    for backend in Backend::all().await {
        let phone = backend.router(Surface::Phone);

        // The recorded Authorization header holds the Cognito token: not an HS256 token of ours.
        let r = call(
            &phone,
            support::without_authorizer(&event("phone-wallet.json"), None),
        )
        .await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(body_json(r).await["code"], "UNAUTHENTICATED");

        let token = Backend::hs256_token(USER);
        let r = call(
            &phone,
            support::without_authorizer(&event("phone-wallet.json"), Some(&token)),
        )
        .await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(body_json(r).await["userId"], USER);
    }
}

#[tokio::test]
async fn without_an_iam_context_an_operator_needs_the_ops_token_as_with_serve() {
    for backend in Backend::all().await {
        let ops = backend.router(Surface::Ops);

        let r = call(
            &ops,
            support::without_authorizer(&event("ops-wallet.json"), None),
        )
        .await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

        let r = call(
            &ops,
            support::without_authorizer(&event("ops-wallet.json"), Some(Backend::ops_token())),
        )
        .await;
        assert_eq!(r.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn a_jwt_context_without_a_usable_sub_is_refused() {
    for backend in Backend::all().await {
        let phone = backend.router(Surface::Phone);
        for sub in [None, Some("not a user id")] {
            let mut e: Value = serde_json::from_str(&event("phone-wallet.json")).unwrap();
            let claims = e["requestContext"]["authorizer"]["jwt"]["claims"]
                .as_object_mut()
                .unwrap();
            match sub {
                None => {
                    claims.remove("sub");
                }
                Some(s) => {
                    claims.insert("sub".into(), json!(s));
                }
            }
            let r = call(&phone, e.to_string()).await;
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "sub {sub:?}");
        }
    }
}

/// The gateway checked the signature, `iss`, `aud` and `exp`; the function still applies the
/// service's token policy to the claims it passes on (issue 10, M3): a token living longer than
/// `BLEPAY_JWT_MAX_LIFETIME_SECS` (default one day), one issued in the future, or not valid yet,
/// is refused with the generic message.
#[tokio::test]
async fn a_jwt_context_outside_the_token_policy_is_refused() {
    for backend in Backend::all().await {
        let phone = backend.router(Surface::Phone);
        for (what, changes) in [
            (
                "a week-long token",
                json!({"exp": (NOW + 7 * 86_400).to_string()}),
            ),
            ("exp = 2^64-1", json!({"exp": u64::MAX.to_string()})),
            (
                "iat in the future",
                json!({"iat": (NOW + 600).to_string(), "exp": (NOW + 1200).to_string()}),
            ),
            ("nbf in the future", json!({"nbf": (NOW + 600).to_string()})),
            ("a non-numeric exp", json!({"exp": "tomorrow"})),
        ] {
            let mut e: Value = serde_json::from_str(&event("phone-wallet.json")).unwrap();
            let claims = e["requestContext"]["authorizer"]["jwt"]["claims"]
                .as_object_mut()
                .unwrap();
            for (k, v) in changes.as_object().unwrap() {
                claims.insert(k.clone(), v.clone());
            }
            let r = call(&phone, e.to_string()).await;
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{what}");
            let body = body_json(r).await;
            assert_eq!(
                body["message"],
                blepay_service::auth::REFUSED,
                "{what}: {body}"
            );
        }
        // The recorded event itself (a one-hour Cognito token) passes.
        let r = call(&phone, event("phone-wallet.json")).await;
        assert_eq!(r.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn the_machine_route_answers_a_forged_frame_with_an_error() {
    for backend in Backend::all().await {
        let device = backend.router(Surface::Device);
        let mut e: Value = serde_json::from_str(&event("device-poll.json")).unwrap();
        let mut frame = B64.decode(e["body"].as_str().unwrap()).unwrap();
        if let Some(last) = frame.last_mut() {
            *last ^= 1;
        }
        e["body"] = json!(B64.encode(frame));
        let r = call(
            &backend.router(Surface::Ops),
            event("ops-register-device.json"),
        )
        .await;
        assert_eq!(r.status(), StatusCode::OK);
        let r = call(&device, e.to_string()).await;
        assert!(r.status().is_client_error(), "{}", r.status());
        assert_eq!(body_json(r).await["code"], "DEVICE_AUTH_FAILED");
    }
}

#[tokio::test]
async fn the_device_function_answers_a_frame_delivered_the_way_cloudfront_delivers_it() {
    for backend in Backend::all().await {
        let r = call(
            &backend.router(Surface::Ops),
            event("ops-register-device.json"),
        )
        .await;
        assert_eq!(r.status(), StatusCode::OK);

        // The machine's heartbeat, through the plain-HTTP front door (CloudFront's headers, the
        // API's Host, a base64 body): what blepay-device-fn hands back to API Gateway.
        let answer = support::invoke(
            &backend.router(Surface::Device),
            event("device-heartbeat-cloudfront.json"),
        )
        .await;
        assert_eq!(answer["statusCode"], 200, "{answer}");
        assert_eq!(answer["isBase64Encoded"], true, "{answer}");
        // Only the headers HTTP needs: API Gateway adds the framing (content-length) itself.
        let headers = answer["headers"].as_object().unwrap();
        let names: Vec<&str> = headers.keys().map(String::as_str).collect();
        assert!(
            names == ["content-type"] || names == ["content-length", "content-type"],
            "{answer}"
        );
        assert_eq!(headers["content-type"], "application/octet-stream");
        assert!(
            answer["multiValueHeaders"]
                .as_object()
                .is_none_or(|m| m.keys().all(|k| headers.contains_key(k))),
            "{answer}"
        );

        // The body is the signed answer frame, bound to the request: an acknowledgement at the
        // server's time.
        let frame = B64.decode(answer["body"].as_str().unwrap()).unwrap();
        let opened = support::vector_identity()
            .open(&support::heartbeat_pending(), &frame)
            .unwrap();
        assert_eq!(opened.body, blepay_proto::machine::Answer::Ack);
        assert_eq!(opened.server_time, NOW);

        // The heartbeat counted: the operator sees the telemetry it carried.
        let status = backend
            .store()
            .device_status(blepay_core::DeviceId::parse(support::DEVICE).unwrap(), NOW)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status.last_seen, Some(NOW), "{}", backend.name());
        assert_eq!(status.telemetry, Some(support::vector_telemetry()));
    }
}

#[test]
fn fixtures_are_what_the_protocol_makes() {
    let dir: PathBuf = fixture_dir();
    let regenerate = std::env::var_os("BLEPAY_REGENERATE_FIXTURES").is_some();
    for (name, value) in support::recorded_events() {
        let path = dir.join(name);
        let text = serde_json::to_string_pretty(&value).unwrap() + "\n";
        if regenerate {
            std::fs::write(&path, &text).unwrap();
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(
            on_disk, text,
            "{name} is stale: rerun with BLEPAY_REGENERATE_FIXTURES=1"
        );
    }
}

#[tokio::test]
async fn answers_go_back_to_api_gateway_as_binary_frames_and_text_json() {
    for backend in Backend::all().await {
        let r = call(
            &backend.router(Surface::Ops),
            event("ops-register-device.json"),
        )
        .await;
        let json_answer = lambda_http::IntoResponse::into_response(r).await;
        assert!(
            matches!(json_answer.body(), lambda_http::Body::Text(t) if t.contains("deviceKey"))
        );

        let r = call(&backend.router(Surface::Device), event("device-poll.json")).await;
        assert_eq!(r.status(), StatusCode::OK);
        let frame_answer = lambda_http::IntoResponse::into_response(r).await;
        // Binary bodies are sent base64-encoded with isBase64Encoded, which API Gateway decodes.
        assert!(matches!(frame_answer.body(), lambda_http::Body::Binary(b) if !b.is_empty()));
    }
}
