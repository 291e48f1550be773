//! The machine codec (`blepay_proto::machine`): its decoders are total over random bytes, typed
//! messages round-trip, and the bytes are exactly the protobuf messages the wire carries.
// The strategies below are test code outside `#[test]` functions: failing loudly is their job.
#![allow(clippy::unwrap_used)]

use blepay_core::{Amount, SessionId, SessionStatus, Telemetry, Units, UseCounter};
use blepay_proto::machine::{
    Answer, Grant, GrantError, RefusalCode, Request, RequestError, RequestKind, Status,
};
use blepay_proto::pb::v1 as pb;
use proptest::prelude::*;
use prost::Message as _;

fn arb_session() -> impl Strategy<Value = SessionId> {
    any::<[u8; 16]>().prop_map(SessionId::from_bytes)
}

/// Telemetry the decoder accepts (within its limits).
fn arb_telemetry() -> impl Strategy<Value = Telemetry> {
    (
        "[ -~]{0,32}",
        proptest::collection::vec(any::<u32>(), 0..=8),
        prop_oneof![0u8..=31, Just(99u8)],
        any::<u64>(),
        any::<u32>(),
        any::<u32>(),
        any::<u64>(),
    )
        .prop_map(
            |(
                firmware_version,
                fault_codes,
                signal_quality,
                uptime_secs,
                boot_count,
                outbox_depth,
                lifetime_units,
            )| {
                Telemetry {
                    firmware_version,
                    fault_codes,
                    signal_quality,
                    uptime_secs,
                    boot_count,
                    outbox_depth,
                    lifetime_units,
                }
            },
        )
}

fn arb_request() -> impl Strategy<Value = Request> {
    prop_oneof![
        Just(Request::Press),
        arb_telemetry().prop_map(Request::Heartbeat),
        Just(Request::Poll),
        arb_session().prop_map(|session| Request::Start { session }),
        (arb_session(), any::<u64>(), any::<bool>()).prop_map(|(session, units, last)| {
            Request::Report {
                session,
                units: Units::new(units),
                last,
            }
        }),
    ]
}

/// Grants the decoder accepts: positive amounts, a hold that pays for a unit, a non-negative
/// expiry.
fn arb_grant() -> impl Strategy<Value = Grant> {
    (
        arb_session(),
        1i64..1_000_000,
        1i64..1_000,
        0..=i64::MAX.unsigned_abs(),
        any::<u16>(),
    )
        .prop_map(|(session, price, units, expires_at, use_counter)| Grant {
            session,
            hold: Amount::positive(price * units).unwrap(),
            price_per_unit: Amount::positive(price).unwrap(),
            expires_at,
            use_counter: UseCounter::new(use_counter),
        })
}

fn arb_status() -> impl Strategy<Value = Status> {
    prop_oneof![
        Just(Status::Unspecified),
        Just(Status::Known(SessionStatus::Authorized)),
        Just(Status::Known(SessionStatus::Active)),
        Just(Status::Known(SessionStatus::Settled)),
        Just(Status::Known(SessionStatus::Expired)),
        (5i32..).prop_map(Status::Unknown),
        (..0i32).prop_map(Status::Unknown),
    ]
}

fn arb_code() -> impl Strategy<Value = RefusalCode> {
    prop_oneof![
        Just(RefusalCode::FrameInvalid),
        Just(RefusalCode::SequenceReplayed),
        Just(RefusalCode::SessionNotFound),
        Just(RefusalCode::SessionExpired),
        Just(RefusalCode::SessionNotStartable),
        Just(RefusalCode::SessionNotStarted),
        Just(RefusalCode::ReportConflict),
        Just(RefusalCode::NoSessionWaiting),
        Just(RefusalCode::Unrecognized),
    ]
}

/// An answer with the kind of request it answers.
fn arb_answer() -> impl Strategy<Value = (RequestKind, Answer)> {
    prop_oneof![
        arb_grant().prop_map(|g| (RequestKind::Press, Answer::Started(Ok(g)))),
        Just((RequestKind::Heartbeat, Answer::Ack)),
        proptest::collection::vec(arb_grant(), 0..4)
            .prop_map(|g| (RequestKind::Poll, Answer::grants(g))),
        (arb_status(), any::<i64>(), any::<bool>()).prop_map(|(status, amount, start)| {
            let kind = if start {
                RequestKind::Start
            } else {
                RequestKind::Report
            };
            (kind, Answer::Session { status, amount })
        }),
        (kind(), arb_code(), ".{0,40}")
            .prop_map(|(kind, code, message)| (kind, Answer::refused(code, message))),
    ]
}

fn kind() -> impl Strategy<Value = RequestKind> {
    prop_oneof![
        Just(RequestKind::Press),
        Just(RequestKind::Heartbeat),
        Just(RequestKind::Poll),
        Just(RequestKind::Start),
        Just(RequestKind::Report)
    ]
}

proptest! {
    #[test]
    fn decoding_random_bytes_gives_a_value_or_an_error_never_a_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
        to in kind(),
    ) {
        let _ = Request::decode(&bytes);
        let _ = Answer::decode(to, &bytes);
    }

    #[test]
    fn requests_round_trip(request in arb_request()) {
        prop_assert_eq!(Request::decode(&request.encode()), Ok(request));
    }

    #[test]
    fn answers_round_trip((to, answer) in arb_answer()) {
        prop_assert_eq!(Answer::decode(to, &answer.encode()), Ok(answer));
    }

    #[test]
    fn a_request_is_exactly_its_protobuf_message(request in arb_request()) {
        prop_assert_eq!(request.encode(), request.to_pb().encode_to_vec());
        let decoded = pb::DeviceRequest::decode(request.encode().as_slice()).unwrap();
        prop_assert_eq!(Request::from_pb(&decoded), Ok(request));
    }

    #[test]
    fn every_wire_grant_is_a_grant_or_a_grant_error(
        session_id in proptest::collection::vec(any::<u8>(), 0..=17),
        hold_amount in any::<i64>(),
        price_per_unit in any::<i64>(),
        expires_at in any::<i64>(),
        use_counter in any::<u32>(),
    ) {
        let wire = pb::Grant { session_id, hold_amount, price_per_unit, expires_at, use_counter };
        if let Ok(g) = Grant::try_from(&wire) {
            prop_assert!(g.max_units() > Units::ZERO);
            prop_assert_eq!(g.session.as_bytes().as_slice(), wire.session_id.as_slice());
        }
    }
}

#[test]
fn request_errors_say_what_the_server_has_always_said() {
    // Arrange: a start with a 3-byte session id, a message with no operation, garbage.
    let short = pb::DeviceRequest {
        kind: Some(pb::device_request::Kind::Start(pb::Start {
            session_id: vec![1, 2, 3],
        })),
    }
    .encode_to_vec();
    let empty = pb::DeviceRequest { kind: None }.encode_to_vec();

    // Act / Assert
    assert_eq!(
        Request::decode(&short).unwrap_err().to_string(),
        "sessionId must be 16 bytes, got 3"
    );
    assert_eq!(
        Request::decode(&empty),
        Err(RequestError::NoOperation),
        "an empty body"
    );
    assert_eq!(
        RequestError::NoOperation.to_string(),
        "request body names no operation"
    );
    assert!(
        Request::decode(&[0xff, 0xff])
            .unwrap_err()
            .to_string()
            .starts_with("request body: ")
    );
}

#[test]
fn refusal_codes_are_the_protocol_strings() {
    for (code, s) in [
        (RefusalCode::FrameInvalid, "FRAME_INVALID"),
        (RefusalCode::SequenceReplayed, "SEQUENCE_REPLAYED"),
        (RefusalCode::SessionNotFound, "SESSION_NOT_FOUND"),
        (RefusalCode::SessionExpired, "SESSION_EXPIRED"),
        (RefusalCode::SessionNotStartable, "SESSION_NOT_STARTABLE"),
        (RefusalCode::SessionNotStarted, "SESSION_NOT_STARTED"),
        (RefusalCode::ReportConflict, "REPORT_CONFLICT"),
    ] {
        assert_eq!(code.as_str(), s);
        assert_eq!(RefusalCode::parse(s), code);
    }
    assert_eq!(
        RefusalCode::parse("SOMETHING_NEWER"),
        RefusalCode::Unrecognized
    );
}

#[test]
fn a_poll_answer_keeps_the_grants_that_parse_and_marks_the_others() {
    // Arrange: one usable grant, one whose hold pays for no unit, one with a short session id.
    let good = pb::Grant {
        session_id: vec![7; 16],
        hold_amount: 100,
        price_per_unit: 25,
        expires_at: 1_700_000_000,
        use_counter: 3,
    };
    let poor = pb::Grant {
        hold_amount: 10,
        ..good.clone()
    };
    let short = pb::Grant {
        session_id: vec![7; 15],
        ..good.clone()
    };
    let body = pb::DeviceResponse {
        grants: vec![good, poor, short],
        ..Default::default()
    }
    .encode_to_vec();

    // Act
    let answer = Answer::decode(RequestKind::Poll, &body).unwrap();

    // Assert
    let Answer::Grants(grants) = &answer else {
        panic!("not a grants answer: {answer:?}");
    };
    assert_eq!(grants.len(), 3);
    assert_eq!(grants[1], Err(GrantError::Amounts));
    assert_eq!(grants[2], Err(GrantError::SessionId));
    let usable: Vec<_> = answer.usable_grants().collect();
    assert_eq!(usable.len(), 1);
    assert_eq!(usable[0].max_units(), Units::new(4));
}

#[test]
fn an_error_code_makes_any_answer_a_refusal() {
    let body = pb::DeviceResponse {
        status: 2,
        error_code: "SESSION_EXPIRED".into(),
        error_message: "too late".into(),
        ..Default::default()
    }
    .encode_to_vec();
    let answer = Answer::decode(RequestKind::Start, &body).unwrap();
    assert_eq!(
        answer,
        Answer::refused(RefusalCode::SessionExpired, "too late")
    );
}

#[test]
fn a_press_answer_must_carry_exactly_one_grant() {
    let g = pb::Grant {
        session_id: vec![3; 16],
        hold_amount: 300,
        price_per_unit: 25,
        expires_at: 1_770_014_400,
        use_counter: 7,
    };
    let none = pb::DeviceResponse {
        status: 2,
        ..Default::default()
    };
    assert_eq!(
        Answer::from_pb(RequestKind::Press, &none),
        Answer::Started(Err(GrantError::Count))
    );
    let two = pb::DeviceResponse {
        grants: vec![g.clone(), g.clone()],
        status: 2,
        ..Default::default()
    };
    assert_eq!(
        Answer::from_pb(RequestKind::Press, &two),
        Answer::Started(Err(GrantError::Count))
    );
    let one = pb::DeviceResponse {
        grants: vec![g],
        status: 2,
        ..Default::default()
    };
    let Answer::Started(Ok(grant)) = Answer::from_pb(RequestKind::Press, &one) else {
        panic!("one grant is a started session");
    };
    assert_eq!(
        (grant.max_units(), grant.expires_at),
        (Units::new(12), 1_770_014_400)
    );
    let refused = pb::DeviceResponse {
        error_code: "NO_SESSION_WAITING".into(),
        error_message: "no session is waiting on this machine: pay in the app first".into(),
        ..Default::default()
    };
    assert_eq!(
        Answer::from_pb(RequestKind::Press, &refused)
            .refusal()
            .map(|r| r.code),
        Some(RefusalCode::NoSessionWaiting)
    );
}

#[test]
fn telemetry_outside_its_limits_is_refused() {
    let body = |t: pb::Telemetry| {
        pb::DeviceRequest {
            kind: Some(pb::device_request::Kind::Heartbeat(pb::Heartbeat {
                telemetry: Some(t),
            })),
        }
        .encode_to_vec()
    };
    let long = pb::Telemetry {
        firmware_version: "v".repeat(33),
        ..Default::default()
    };
    assert!(matches!(
        Request::decode(&body(long)),
        Err(RequestError::Telemetry(_))
    ));
    let csq = pb::Telemetry {
        signal_quality: 64,
        ..Default::default()
    };
    assert!(matches!(
        Request::decode(&body(csq)),
        Err(RequestError::Telemetry(_))
    ));
    let faults = pb::Telemetry {
        fault_codes: vec![1; 9],
        ..Default::default()
    };
    assert!(matches!(
        Request::decode(&body(faults)),
        Err(RequestError::Telemetry(_))
    ));
    let heartbeat_without_telemetry = pb::DeviceRequest {
        kind: Some(pb::device_request::Kind::Heartbeat(pb::Heartbeat {
            telemetry: None,
        })),
    }
    .encode_to_vec();
    assert_eq!(
        Request::decode(&heartbeat_without_telemetry),
        Ok(Request::Heartbeat(Telemetry::default()))
    );
}
