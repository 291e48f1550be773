//! The OpenAPI document served at `/openapi.json` stays in step with the router and the error
//! codes. (schemathesis, `.ci/schemathesis.sh`, checks the answers against it on a live server.)

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test file: helpers outside #[test] fns too

use std::collections::BTreeSet;

use blepay_service::ErrorCode;
use blepay_service::http::OPENAPI_JSON;
use serde_json::Value;

fn document() -> Value {
    serde_json::from_str(OPENAPI_JSON).expect("openapi.json is JSON")
}

#[test]
fn the_document_is_openapi_3_0_and_describes_every_http_route() {
    let doc = document();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.0."));
    let paths: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |method| (method.clone(), path.clone()))
        })
        .collect();
    let expected: BTreeSet<(String, String)> = [
        ("get", "/healthz"),
        ("get", "/openapi.json"),
        ("get", "/metrics"),
        ("post", "/v1/verify"),
        ("post", "/v1/pay"),
        ("get", "/v1/sessions/{sessionId}"),
        ("get", "/v1/wallet"),
        ("post", "/v1/ops/devices"),
        ("get", "/v1/ops/devices/{deviceId}"),
        ("post", "/v1/ops/devices/{deviceId}/revoke"),
        ("post", "/v1/ops/devices/{deviceId}/rotate-key"),
        ("post", "/v1/ops/wallets/{userId}/topup"),
        ("get", "/v1/ops/wallets/{userId}"),
        ("get", "/v1/ops/sessions/{sessionId}"),
        ("get", "/v1/ops/devices"),
        ("patch", "/v1/ops/devices/{deviceId}"),
        ("post", "/v1/ops/devices/{deviceId}/decommission"),
        ("put", "/v1/ops/wallets/{userId}/spending-limit"),
        ("post", "/v1/device"),
        ("post", "/v1/ops/sessions/{sessionId}/refund"),
        ("post", "/v1/ops/sessions/{sessionId}/close"),
        ("post", "/v1/sessions/{sessionId}/problem"),
        ("get", "/v1/ops/problems"),
        ("post", "/v1/ops/problems/{problemId}/dismiss"),
        ("get", "/v1/sessions"),
        ("get", "/v1/wallet/ledger"),
        ("get", "/v1/ops/sessions"),
        ("get", "/v1/ops/wallets/{userId}/ledger"),
        ("get", "/v1/ops/reports/sales"),
        ("post", "/v1/ops/operators"),
        ("get", "/v1/ops/operators"),
        ("post", "/v1/ops/operators/{operatorId}/revoke"),
        ("get", "/v1/ops/audit"),
        ("post", "/v1/topups"),
        ("get", "/v1/topups/{topUpId}"),
        ("post", "/v1/webhooks/stripe"),
        ("post", "/v1/webhooks/wechatpay"),
        ("get", "/v1/ops/topups"),
        ("post", "/v1/ops/topups/{topUpId}/refund"),
    ]
    .into_iter()
    .map(|(m, p)| (m.to_owned(), p.to_owned()))
    .collect();
    assert_eq!(paths, expected);
}

#[test]
fn every_error_code_is_in_the_error_schema_with_its_status_on_the_routes() {
    let doc = document();
    let codes: BTreeSet<&str> = doc["components"]["schemas"]["Error"]["properties"]["code"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    for code in blepay_service::ErrorCode::all() {
        assert!(
            codes.contains(code.as_str()),
            "{} is missing from the Error schema",
            code.as_str()
        );
    }
    let statuses: BTreeSet<String> = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|item| item.as_object().unwrap().values())
        .flat_map(|op| op["responses"].as_object().unwrap().keys().cloned())
        .collect();
    for code in [
        "UNAUTHENTICATED",
        "INVALID_ARGUMENT",
        "PAYLOAD_TOO_LARGE",
        "ADVERT_INVALID",
        "ADVERT_STALE",
        "ADVERT_USED",
        "DEVICE_UNKNOWN",
        "DEVICE_BUSY",
        "DEVICE_OFFLINE",
        "DEVICE_FAULT",
        "NO_SESSION_WAITING",
        "INSUFFICIENT_FUNDS",
        "SESSION_NOT_FOUND",
        "DEVICE_EXISTS",
        "IDEMPOTENCY_KEY_REUSED",
        "TOO_MANY_UNSTARTED",
        "RATE_LIMITED",
        "NOT_FOUND",
        "FRAME_INVALID",
        "DEVICE_AUTH_FAILED",
        "RETRY_LATER",
        "FORBIDDEN",
        "REFUND_EXCEEDS_CAPTURE",
        "SESSION_CLOSED",
        "PROBLEM_NOT_FOUND",
    ] {
        let parsed = ErrorCode::parse(code).unwrap();
        assert!(
            codes.contains(code),
            "{code} is missing from the Error schema"
        );
        let status = parsed.http_status().as_u16().to_string();
        assert!(
            statuses.contains(&status),
            "no route documents {status} ({code})"
        );
    }
}

#[test]
fn int64_fields_are_strings_out_and_numbers_or_strings_in() {
    let doc = document();
    let schemas = &doc["components"]["schemas"];
    for (schema, field) in [
        ("Wallet", "available"),
        ("PayResponse", "holdAmount"),
        ("Session", "units"),
        ("VerifyResponse", "pricePerUnit"),
    ] {
        assert_eq!(
            schemas[schema]["properties"][field]["type"], "string",
            "{schema}.{field}"
        );
    }
    for (schema, field) in [
        ("PayRequest", "maxAmount"),
        ("TopUpRequest", "amount"),
        ("RegisterDeviceRequest", "pricePerUnit"),
        ("RefundRequest", "amount"),
    ] {
        let one_of = schemas[schema]["properties"][field]["oneOf"]
            .as_array()
            .unwrap();
        let types: Vec<&str> = one_of.iter().map(|s| s["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["integer", "string"], "{schema}.{field}");
    }
}
