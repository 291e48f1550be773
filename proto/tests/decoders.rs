//! Every protobuf decoder over random bytes returns `Ok` or `Err`, never panics; and the
//! machine messages round-trip for arbitrary field values.

use blepay_proto::pb::v1::{
    DeviceFrame, DeviceRequest, DeviceResponse, Grant, Heartbeat, PayRequest, Poll, Press, Report,
    Start, Telemetry, VerifyRequest, device_request,
};
use proptest::prelude::*;
use prost::Message as _;

fn arb_request() -> impl Strategy<Value = DeviceRequest> {
    let session = proptest::collection::vec(any::<u8>(), 0..=16);
    prop_oneof![
        Just(None),
        Just(Some(device_request::Kind::Poll(Poll {}))),
        Just(Some(device_request::Kind::Press(Press {}))),
        (
            ".{0,40}",
            proptest::collection::vec(any::<u32>(), 0..10),
            any::<u32>(),
            any::<u64>()
        )
            .prop_map(
                |(firmware_version, fault_codes, signal_quality, uptime_secs)| {
                    Some(device_request::Kind::Heartbeat(Heartbeat {
                        telemetry: Some(Telemetry {
                            firmware_version,
                            fault_codes,
                            signal_quality,
                            uptime_secs,
                            ..Telemetry::default()
                        }),
                    }))
                }
            ),
        session
            .clone()
            .prop_map(|session_id| Some(device_request::Kind::Start(Start { session_id }))),
        (session, any::<u64>(), any::<bool>()).prop_map(|(session_id, units, last)| {
            Some(device_request::Kind::Report(Report {
                session_id,
                units,
                r#final: last,
            }))
        }),
    ]
    .prop_map(|kind| DeviceRequest { kind })
}

fn arb_grant() -> impl Strategy<Value = Grant> {
    (
        proptest::collection::vec(any::<u8>(), 16),
        any::<i64>(),
        any::<i64>(),
        any::<i64>(),
        any::<u32>(),
    )
        .prop_map(
            |(session_id, hold_amount, price_per_unit, expires_at, use_counter)| Grant {
                session_id,
                hold_amount,
                price_per_unit,
                expires_at,
                use_counter,
            },
        )
}

fn arb_response() -> impl Strategy<Value = DeviceResponse> {
    (
        proptest::collection::vec(arb_grant(), 0..4),
        0i32..=4,
        any::<i64>(),
        "[A-Z_]{0,24}",
        ".{0,40}",
    )
        .prop_map(
            |(grants, status, amount, error_code, error_message)| DeviceResponse {
                grants,
                status,
                amount,
                error_code,
                error_message,
                key_update: None,
            },
        )
}

proptest! {
    #[test]
    fn decoding_random_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = DeviceRequest::decode(bytes.as_slice());
        let _ = DeviceResponse::decode(bytes.as_slice());
        let _ = PayRequest::decode(bytes.as_slice());
        let _ = VerifyRequest::decode(bytes.as_slice());
        let _ = DeviceFrame::decode(bytes.as_slice());
        let _ = blepay_proto::machine::KeyUpdate::from_body(bytes.as_slice());
    }

    #[test]
    fn device_requests_round_trip(request in arb_request()) {
        let decoded = DeviceRequest::decode(request.encode_to_vec().as_slice()).unwrap();
        prop_assert_eq!(decoded, request);
    }

    #[test]
    fn device_responses_round_trip(response in arb_response()) {
        let decoded = DeviceResponse::decode(response.encode_to_vec().as_slice()).unwrap();
        prop_assert_eq!(decoded, response);
    }

    #[test]
    fn pay_requests_round_trip(advert in proptest::collection::vec(any::<u8>(), 0..32), max_amount in any::<i64>(), key in ".{0,32}") {
        let request = PayRequest { advert, max_amount, idempotency_key: key };
        let decoded = PayRequest::decode(request.encode_to_vec().as_slice()).unwrap();
        prop_assert_eq!(decoded, request);
    }
}
