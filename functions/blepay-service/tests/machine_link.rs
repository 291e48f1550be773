//! The machine link of issue 9 through the real HTTP router on a real SQLite file: the press that
//! starts a session in one exchange, the heartbeat and its telemetry on the operator's device
//! view, liveness that a replayed frame cannot refresh, the advert's link-down and fault flags,
//! and the ACTIVE timeout.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests: a failure is a panic

mod support;

use axum::http::StatusCode;
use blepay_core::{SessionId, Telemetry, Units};
use blepay_device_client::{RefusalCode, Request};
use blepay_proto::AdvertFlags;
use blepay_proto::machine::Answer;
use serde_json::Value;
use support::{ACTIVE_TIMEOUT, Service, T0, user};

const DEVICE: &str = "0102030405060708";

fn telemetry(faults: &[u32]) -> Telemetry {
    Telemetry {
        firmware_version: "1.4.2".into(),
        fault_codes: faults.to_vec(),
        signal_quality: 18,
        uptime_secs: 86_400,
        boot_count: 3,
        outbox_depth: 0,
        lifetime_units: 12_345,
    }
}

async fn ops_device(service: &Service, id: &str) -> (StatusCode, Value) {
    let r = service
        .ops("GET", &format!("/v1/ops/devices/{id}"), None)
        .await;
    (r.status, r.json())
}

async fn ops_session(service: &Service, id: &str) -> Value {
    let r = service
        .ops("GET", &format!("/v1/ops/sessions/{id}"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    r.json()
}

async fn wallet(service: &Service, name: &str) -> Value {
    let r = service
        .ops("GET", &format!("/v1/ops/wallets/{name}"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    r.json()
}

#[tokio::test]
async fn a_press_with_a_waiting_session_starts_it_in_one_exchange_and_the_cycle_settles() {
    let service = Service::new();
    let ana = user("ana");
    let mut machine = service.provision(DEVICE, &ana).await;
    service
        .exchange(&mut machine, &Request::Heartbeat(telemetry(&[])))
        .await;

    let r = service.pay(&machine, &ana, 1, AdvertFlags::NONE).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json());
    let session_id = r.json()["sessionId"].as_str().unwrap().to_owned();

    // The press, 30 s later: one exchange answers with the session's terms.
    service.set_now(T0 + 30);
    let press = service.exchange(&mut machine, &Request::Press).await;
    assert_eq!(press.reply.status, StatusCode::OK);
    assert_eq!(
        press.reply.content_type.as_deref(),
        Some("application/octet-stream")
    );
    let Answer::Started(Ok(grant)) = &press.answer.body else {
        panic!(
            "a press answer carries the started session: {:?}",
            press.answer
        )
    };
    assert_eq!(grant.session, SessionId::parse(&session_id).unwrap());
    assert_eq!(
        (grant.hold.minor(), grant.price_per_unit.minor()),
        (500, 50)
    );
    assert_eq!(grant.use_counter.get(), 1);
    // The report deadline: the server closes the session by timeout if nothing reaches it.
    assert_eq!(grant.expires_at, T0 + 30 + ACTIVE_TIMEOUT);
    assert_eq!(press.answer.server_time, T0 + 30);
    let s = ops_session(&service, &session_id).await;
    assert_eq!(s["status"], "ACTIVE", "{s}");
    let (_, d) = ops_device(&service, DEVICE).await;
    assert_eq!(
        (d["state"].as_str(), d["openSessionId"].as_str()),
        (Some("BUSY"), Some(session_id.as_str())),
        "{d}"
    );

    // A retry of the press (the answer was lost) gets the very same bytes, and starts nothing
    // more.
    service.set_now(T0 + 40);
    let again = service.resend(&machine, &press.pending).await;
    assert_eq!(again.reply.status, press.reply.status);
    assert_eq!(again.reply.body, press.reply.body, "byte-identical answer");

    // A second press while the session runs (a new request: the machine lost power before the
    // answer): the same session's terms, no second session, no second hold.
    let second = service.exchange(&mut machine, &Request::Press).await;
    let Answer::Started(Ok(again)) = &second.answer.body else {
        panic!("{:?}", second.answer)
    };
    assert_eq!(again.session, grant.session);
    let w = wallet(&service, "ana").await;
    assert_eq!(w["held"], "500");

    // 3 litres, final report: settled.
    let session = SessionId::parse(&session_id).unwrap();
    let done = service
        .exchange(
            &mut machine,
            &Request::Report {
                session,
                units: Units::new(3),
                last: true,
            },
        )
        .await;
    assert_eq!(done.answer.body.session().map(|(_, a)| a), Some(150));
    let s = ops_session(&service, &session_id).await;
    assert_eq!(
        (
            s["status"].as_str(),
            s["amount"].as_str(),
            s["closedBy"].as_str()
        ),
        (Some("SETTLED"), Some("150"), Some("REPORT")),
        "{s}"
    );
    assert_eq!(s["lastReportAt"], (T0 + 40).to_string(), "{s}");
    assert!(s.get("lateReport").is_none(), "{s}");
    // The phone sees how it ended too.
    let r = service
        .phone(&ana, "GET", &format!("/v1/sessions/{session_id}"), None)
        .await;
    assert_eq!(r.json()["closedBy"], "REPORT");
    let w = wallet(&service, "ana").await;
    assert_eq!(
        (
            w["available"].as_str(),
            w["held"].as_str(),
            w["spent"].as_str()
        ),
        (Some("850"), Some("0"), Some("150"))
    );
    assert!(service.app.store().audit().await.unwrap().reconciles());
}

#[tokio::test]
async fn a_press_with_no_session_waiting_is_a_signed_404_and_changes_nothing() {
    let service = Service::new();
    let ana = user("ana");
    let mut machine = service.provision(DEVICE, &ana).await;
    service
        .exchange(&mut machine, &Request::Heartbeat(telemetry(&[])))
        .await;
    let audit = service.app.store().audit().await.unwrap();
    let (_, device_before) = ops_device(&service, DEVICE).await;

    service.set_now(T0 + 5);
    let press = service.exchange(&mut machine, &Request::Press).await;
    assert_eq!(press.reply.status, StatusCode::NOT_FOUND);
    assert_eq!(
        press.reply.content_type.as_deref(),
        Some("application/octet-stream"),
        "a signed frame, not a JSON error"
    );
    let refusal = press.answer.refusal().expect("a refusal");
    assert_eq!(refusal.code, RefusalCode::NoSessionWaiting);
    assert_eq!(refusal.code.as_str(), "NO_SESSION_WAITING");

    // Nothing changed but the machine's liveness (a fresh sequence number).
    assert_eq!(service.app.store().audit().await.unwrap(), audit);
    let (_, device) = ops_device(&service, DEVICE).await;
    assert_eq!(device["openSessionId"], "");
    assert_eq!(device["state"], "IDLE");
    assert_eq!(device["telemetry"], device_before["telemetry"]);
    let w = wallet(&service, "ana").await;
    assert_eq!(
        (w["available"].as_str(), w["held"].as_str()),
        (Some("1000"), Some("0"))
    );

    // The retry is byte-identical, with the same status.
    let again = service.resend(&machine, &press.pending).await;
    assert_eq!(
        (again.reply.status, &again.reply.body),
        (press.reply.status, &press.reply.body)
    );
}

#[tokio::test]
async fn the_latest_heartbeat_is_the_operator_s_view_and_a_replayed_one_is_no_sign_of_life() {
    let service = Service::new();
    let ana = user("ana");
    let mut machine = service.provision(DEVICE, &ana).await;

    // Never heard from: OFFLINE, no telemetry.
    let (status, d) = ops_device(&service, DEVICE).await;
    assert_eq!(status, StatusCode::OK, "{d}");
    assert_eq!(
        (
            d["state"].as_str(),
            d["lastSeenAt"].as_str(),
            d["telemetryAt"].as_str()
        ),
        (Some("OFFLINE"), Some("0"), Some("0")),
        "{d}"
    );
    assert!(d.get("telemetry").is_none(), "{d}");
    assert_eq!(
        (
            d["name"].as_str(),
            d["pricePerUnit"].as_str(),
            d["unitName"].as_str(),
            d["currency"].as_str()
        ),
        (Some("Water 1"), Some("50"), Some("litre"), Some("EUR"))
    );

    let heartbeat = service
        .exchange(&mut machine, &Request::Heartbeat(telemetry(&[])))
        .await;
    assert_eq!(heartbeat.reply.status, StatusCode::OK);
    assert_eq!(heartbeat.answer.body, Answer::Ack);
    let (_, d) = ops_device(&service, DEVICE).await;
    assert_eq!(
        (
            d["state"].as_str(),
            d["lastSeenAt"].as_str(),
            d["telemetryAt"].as_str()
        ),
        (
            Some("IDLE"),
            Some(T0.to_string().as_str()),
            Some(T0.to_string().as_str())
        ),
        "{d}"
    );
    let t = &d["telemetry"];
    assert_eq!(
        (
            t["firmwareVersion"].as_str(),
            t["signalQuality"].as_u64(),
            t["uptimeSecs"].as_str(),
            t["bootCount"].as_u64(),
            t["outboxDepth"].as_u64(),
            t["lifetimeUnits"].as_str()
        ),
        (
            Some("1.4.2"),
            Some(18),
            Some("86400"),
            Some(3),
            Some(0),
            Some("12345")
        ),
        "{d}"
    );
    assert_eq!(t["faultCodes"], serde_json::json!([]));

    // An eavesdropper replays the heartbeat an hour later: it gets the saved answer (byte for
    // byte) but the machine was not seen again.
    service.set_now(T0 + 3_600);
    let replayed = service.resend(&machine, &heartbeat.pending).await;
    assert_eq!(replayed.reply.body, heartbeat.reply.body);
    assert_eq!(
        replayed.answer.server_time, T0,
        "the saved answer, its time included"
    );
    let (_, d) = ops_device(&service, DEVICE).await;
    assert_eq!(d["lastSeenAt"], T0.to_string(), "{d}");

    // Past BLEPAY_OFFLINE_AFTER_SECS, replays do not bring it back either.
    service.set_now(T0 + support::OFFLINE_AFTER + 1);
    service.resend(&machine, &heartbeat.pending).await;
    let (_, d) = ops_device(&service, DEVICE).await;
    assert_eq!(
        (d["state"].as_str(), d["lastSeenAt"].as_str()),
        (Some("OFFLINE"), Some(T0.to_string().as_str())),
        "{d}"
    );

    // A fresh heartbeat reporting a fault: seen now, and FAULT for the operator.
    let now = service.now();
    service
        .exchange(&mut machine, &Request::Heartbeat(telemetry(&[7, 42])))
        .await;
    let (_, d) = ops_device(&service, DEVICE).await;
    assert_eq!(
        (d["state"].as_str(), d["lastSeenAt"].as_str()),
        (Some("FAULT"), Some(now.to_string().as_str())),
        "{d}"
    );
    assert_eq!(d["telemetry"]["faultCodes"], serde_json::json!([7, 42]));
    assert_eq!(d["telemetryAt"], now.to_string());
}

#[tokio::test]
async fn the_ops_device_route_speaks_json_and_protobuf_and_refuses_what_it_must() {
    let service = Service::new();
    let ana = user("ana");
    let mut machine = service.provision(DEVICE, &ana).await;
    service
        .exchange(&mut machine, &Request::Heartbeat(telemetry(&[])))
        .await;

    let (status, e) = ops_device(&service, "0102030405060709").await;
    assert_eq!(
        (status, e["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("DEVICE_UNKNOWN"))
    );
    let (status, e) = ops_device(&service, "not-a-device").await;
    assert_eq!(
        (status, e["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("INVALID_ARGUMENT"))
    );
    // Operators only.
    let r = service
        .phone(&ana, "GET", &format!("/v1/ops/devices/{DEVICE}"), None)
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // Protobuf when asked.
    let req = axum::http::Request::builder()
        .uri(format!("/v1/ops/devices/{DEVICE}"))
        .header("authorization", format!("Bearer {}", support::OPS_TOKEN))
        .header("accept", "application/x-protobuf")
        .body(axum::body::Body::empty())
        .unwrap();
    let r = service.send(req).await;
    assert_eq!(r.content_type.as_deref(), Some("application/x-protobuf"));
    let d = <blepay_proto::pb::v1::Device as prost::Message>::decode(r.body.as_slice()).unwrap();
    assert_eq!(d.device_id, DEVICE);
    assert_eq!(d.state, blepay_proto::pb::v1::DeviceState::Idle as i32);
    assert_eq!(d.telemetry.unwrap().lifetime_units, 12_345);
    assert_eq!(d.last_seen_at, i64::try_from(T0).unwrap());
}

#[tokio::test]
async fn the_advert_s_link_down_and_fault_flags_are_honoured_by_verify_and_pay() {
    let service = Service::new();
    let ana = user("ana");
    let mut machine = service.provision(DEVICE, &ana).await;
    service
        .exchange(&mut machine, &Request::Heartbeat(telemetry(&[])))
        .await;
    let audit = service.app.store().audit().await.unwrap();

    for (flags, state, code) in [
        (AdvertFlags::LINK_DOWN, "OFFLINE", "DEVICE_OFFLINE"),
        (AdvertFlags::FAULT, "FAULT", "DEVICE_FAULT"),
        (
            AdvertFlags::from_bits(AdvertFlags::LINK_DOWN.bits() | AdvertFlags::BUSY.bits())
                .unwrap(),
            "OFFLINE",
            "DEVICE_OFFLINE",
        ),
    ] {
        let r = service.verify(&machine, &ana, flags).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.json()["state"], state, "flags {:#x}", flags.bits());
        let r = service.pay(&machine, &ana, 1, flags).await;
        assert_eq!(
            (r.status, r.json()["code"].as_str()),
            (StatusCode::CONFLICT, Some(code)),
            "flags {:#x}: {}",
            flags.bits(),
            r.json()
        );
        assert_eq!(
            service.app.store().audit().await.unwrap(),
            audit,
            "nothing moved"
        );
    }
    let w = wallet(&service, "ana").await;
    assert_eq!(
        (w["available"].as_str(), w["held"].as_str()),
        (Some("1000"), Some("0"))
    );

    // The same machine with clean flags is IDLE and takes the payment.
    let r = service.verify(&machine, &ana, AdvertFlags::NONE).await;
    assert_eq!(r.json()["state"], "IDLE");
    let r = service.pay(&machine, &ana, 1, AdvertFlags::NONE).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json());
}

#[tokio::test]
async fn an_active_session_whose_machine_goes_silent_is_settled_by_the_sweeper() {
    let service = Service::new();
    let ana = user("ana");
    let mut machine = service.provision(DEVICE, &ana).await;
    service
        .exchange(&mut machine, &Request::Heartbeat(telemetry(&[])))
        .await;
    let r = service.pay(&machine, &ana, 1, AdvertFlags::NONE).await;
    let session_id = r.json()["sessionId"].as_str().unwrap().to_owned();
    let session = SessionId::parse(&session_id).unwrap();
    service.exchange(&mut machine, &Request::Press).await;
    service.set_now(T0 + 60);
    service
        .exchange(
            &mut machine,
            &Request::Report {
                session,
                units: Units::new(2),
                last: false,
            },
        )
        .await;

    // Not yet: the deadline runs from the last report.
    service.set_now(T0 + 60 + ACTIVE_TIMEOUT - 1);
    let swept = service.app.sweep().await.unwrap();
    assert_eq!(swept.timed_out, 0);
    assert_eq!(ops_session(&service, &session_id).await["status"], "ACTIVE");

    // The machine died: the sweeper settles at the last reported units.
    service.set_now(T0 + 60 + ACTIVE_TIMEOUT + 1);
    let swept = service.app.sweep().await.unwrap();
    assert_eq!((swept.expired, swept.timed_out), (0, 1));
    let s = ops_session(&service, &session_id).await;
    assert_eq!(
        (
            s["status"].as_str(),
            s["closedBy"].as_str(),
            s["amount"].as_str(),
            s["units"].as_str()
        ),
        (Some("SETTLED"), Some("TIMEOUT"), Some("100"), Some("2")),
        "{s}"
    );
    let w = wallet(&service, "ana").await;
    assert_eq!(
        (
            w["available"].as_str(),
            w["held"].as_str(),
            w["spent"].as_str()
        ),
        (Some("900"), Some("0"), Some("100"))
    );
    let (_, d) = ops_device(&service, DEVICE).await;
    assert_eq!(d["openSessionId"], "", "the machine is free again");
    assert_eq!(service.app.sweep().await.unwrap().timed_out, 0, "once");

    // The machine comes back and drains its outbox: the late final report gets an authenticated
    // answer, is recorded for the operator, and never captures above the hold.
    let late = service
        .exchange(
            &mut machine,
            &Request::Report {
                session,
                units: Units::new(4),
                last: true,
            },
        )
        .await;
    assert!(late.reply.status.is_success() || late.reply.status.is_client_error());
    let s = ops_session(&service, &session_id).await;
    let late_report = &s["lateReport"];
    assert_eq!(late_report["units"], "4", "{s}");
    assert_eq!(late_report["at"], service.now().to_string(), "{s}");
    let charged: i64 = late_report["charged"].as_str().unwrap().parse().unwrap();
    let amount: i64 = s["amount"].as_str().unwrap().parse().unwrap();
    assert!(amount <= 500 && charged >= 0, "{s}");
    assert!(service.app.store().audit().await.unwrap().reconciles());
}
