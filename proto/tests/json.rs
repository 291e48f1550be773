//! The proto3 JSON mapping (pbjson): 64-bit integers are strings on output and accepted as
//! strings or numbers on input, enums are their names, and zero values still appear.
#![cfg(feature = "json")]

use blepay_proto::pb::v1::{PayRequest, PayResponse, Session, SessionStatus, VerifyRequest};

#[test]
fn a_pay_response_prints_int64_as_strings_and_the_status_by_name() {
    let response = PayResponse {
        session_id: "abc".into(),
        status: SessionStatus::Authorized.into(),
        hold_amount: 500,
        device_id: "0102030405060708".into(),
        expires_at: 1_770_000_120,
    };
    let json: serde_json::Value = serde_json::to_value(&response).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "sessionId": "abc",
            "status": "AUTHORIZED",
            "holdAmount": "500",
            "deviceId": "0102030405060708",
            "expiresAt": "1770000120",
        })
    );
}

#[test]
fn zero_valued_fields_still_appear() {
    let json = serde_json::to_value(PayResponse::default()).unwrap();
    assert_eq!(json["holdAmount"], "0");
    assert_eq!(json["status"], "SESSION_STATUS_UNSPECIFIED");
    assert_eq!(json["sessionId"], "");
    let session = serde_json::to_value(Session::default()).unwrap();
    assert_eq!(session["startedAt"], "0");
    assert_eq!(session["units"], "0");
    assert_eq!(session["useCounter"], 0);
}

#[test]
fn max_amount_is_accepted_as_a_number_or_a_string() {
    let from_number: PayRequest =
        serde_json::from_str(r#"{"advert":"","maxAmount":500,"idempotencyKey":"k"}"#).unwrap();
    let from_string: PayRequest =
        serde_json::from_str(r#"{"advert":"","maxAmount":"500","idempotencyKey":"k"}"#).unwrap();
    assert_eq!(from_number.max_amount, 500);
    assert_eq!(from_number, from_string);
}

#[test]
fn bytes_are_base64_and_unknown_fields_are_ignored() {
    let request: VerifyRequest =
        serde_json::from_str(r#"{"advert":"AQID","somethingNew":true}"#).unwrap();
    assert_eq!(request.advert, vec![1, 2, 3]);
    assert!(serde_json::from_str::<VerifyRequest>(r#"{"advert":"%%%"}"#).is_err());
}
