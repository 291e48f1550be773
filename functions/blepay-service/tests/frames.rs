//! Machine frames on a real socket of the server `blepay serve` runs (HTTP `POST /v1/device` and
//! gRPC `DeviceService/Exchange`), on a real SQLite file: issue 10's D1 (a frame under a retired
//! key version) and D2 (authenticated FRAME_INVALID refusals are saved answers that advance the
//! sequence number, docs/protocol.md §3.3).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests: a failure is a panic

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use blepay_core::{DeviceId, KeyVersion, SessionId, SessionStatus, Telemetry, Units};
use blepay_device_client::{Identity, Pending, RefusalCode, Request};
use blepay_proto::machine::{Answer, Status};
use blepay_proto::pb::v1 as pb;
use blepay_proto::pb::v1::device_service_client::DeviceServiceClient;
use blepay_proto::{AdvertFlags, MasterKey, derive_device_key, open_response, seal_request};
use blepay_service::config::{Config, Keyring};
use blepay_service::server;
use prost::Message;
use serde_json::Value;
use support::{Machine, Service, T0, user};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const DEVICE: &str = "0102030405060708";

fn settled() -> Status {
    Status::Known(SessionStatus::Settled)
}

/// Master keys 0 to 3; machines register under the current one, 3.
fn master(v: u8) -> String {
    format!("{v}{v}").repeat(32)
}

fn rotated() -> Config {
    let ring: Vec<String> = (0..=3).map(|v| format!("{v}:{}", master(v))).collect();
    Config {
        keyring: Keyring::parse(&ring.join(",")).unwrap(),
        ..support::config()
    }
}

/// What an attacker holding master key `v` (retired, still in the keyring) derives for `device`.
fn identity_under(v: u8, device: DeviceId) -> Identity {
    let version = KeyVersion::new(v).unwrap();
    Identity {
        device_id: device,
        key_version: version,
        key: derive_device_key(
            &MasterKey::parse_hex(&master(v)).unwrap(),
            version,
            device,
            blepay_core::KeyEpoch::FIRST,
        ),
    }
}

/// A served instance of `service` on a loopback port; stops when dropped.
struct Served {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn serve(service: &Service) -> Served {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server::serve_router(
        listener,
        server::router(&service.app).unwrap(),
        async move {
            let _ = stopped.await;
        },
    ));
    Served {
        addr,
        stop: Some(stop),
    }
}

/// `POST /v1/device` with `frame` on a fresh connection: the status and the body.
async fn post(addr: SocketAddr, frame: &[u8]) -> (u16, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "POST /v1/device HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        frame.len()
    )
    .into_bytes();
    req.extend_from_slice(frame);
    stream.write_all(&req).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8(raw[..end].to_vec()).unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, raw[end + 4..].to_vec())
}

/// Send `pending` from `machine`: the status and the opened answer.
async fn exchange(addr: SocketAddr, machine: &Machine, pending: &Pending) -> (u16, Answer) {
    let (status, body) = post(addr, &pending.frame).await;
    let answer = machine.identity.open(pending, &body).unwrap_or_else(|e| {
        panic!(
            "answer (HTTP {status}) does not open: {e}: {}",
            String::from_utf8_lossy(&body)
        )
    });
    (status, answer.body)
}

async fn ops_json(service: &Service, path: &str) -> Value {
    let r = service.ops("GET", path, None).await;
    assert_eq!(r.status, axum::http::StatusCode::OK);
    r.json()
}

/// A machine past its heartbeat with a session paid (hold 500) and started by a press: the id of
/// that ACTIVE session.
async fn active_session(service: &Service, served: &Served, machine: &mut Machine) -> SessionId {
    let ana = user("ana");
    let heartbeat = machine
        .identity
        .request(1, &Request::Heartbeat(Telemetry::default()));
    assert_eq!(
        exchange(served.addr, machine, &heartbeat).await.1,
        Answer::Ack
    );
    let r = service.pay(machine, &ana, 1, AdvertFlags::NONE).await;
    assert_eq!(r.status, axum::http::StatusCode::OK, "{}", r.json());
    let press = machine.identity.request(2, &Request::Press);
    let (status, answer) = exchange(served.addr, machine, &press).await;
    assert_eq!(status, 200);
    let Answer::Started(Ok(grant)) = answer else {
        panic!("the press starts the session: {answer:?}");
    };
    machine.next_seq = 3;
    grant.session
}

/// D1 over HTTP: a final report tagged with the key derived from master key 0, for a machine
/// registered at key version 3, is refused exactly like a forged frame (DEVICE_AUTH_FAILED,
/// 401, the same body byte for byte) and changes nothing; the machine's genuine report, with the
/// same sequence number, then settles.
#[tokio::test]
async fn a_frame_under_a_retired_key_version_is_refused_like_a_forged_one() {
    let service = Service::with_config(rotated());
    let mut machine = service.provision(DEVICE, &user("ana")).await;
    assert_eq!(machine.identity.key_version.get(), 3);
    let served = serve(&service).await;
    let session = active_session(&service, &served, &mut machine).await;

    let report = Request::Report {
        session,
        units: Units::new(4),
        last: true,
    };
    let device = machine.identity.device_id;
    let stolen = identity_under(0, device).request(3, &report);
    let genuine = machine.identity.request(3, &report);
    let mut forged = genuine.frame.clone();
    *forged.last_mut().unwrap() ^= 1;
    let nowhere = Identity {
        key_version: KeyVersion::new(9).unwrap(),
        ..identity_under(0, device)
    }
    .request(3, &report);
    let wallet_before = ops_json(&service, "/v1/ops/wallets/ana").await;

    let (forged_status, forged_body) = post(served.addr, &forged).await;
    assert_eq!(forged_status, 401);
    let forged_json: Value = serde_json::from_slice(&forged_body).unwrap();
    assert_eq!(forged_json["code"], "DEVICE_AUTH_FAILED");
    for (what, frame) in [
        ("version 0's key", &stolen.frame),
        (
            "an older key version, 1",
            &identity_under(1, device).request(3, &report).frame,
        ),
        ("a version outside the keyring", &nowhere.frame),
    ] {
        let (status, body) = post(served.addr, frame).await;
        assert_eq!(
            (status, body.as_slice()),
            (forged_status, forged_body.as_slice()),
            "a frame under {what} is answered as a forged one: {}",
            String::from_utf8_lossy(&body)
        );
    }

    let s = ops_json(&service, &format!("/v1/ops/sessions/{session}")).await;
    assert_eq!(s["status"], "ACTIVE", "{s}");
    assert_eq!(
        ops_json(&service, "/v1/ops/wallets/ana").await,
        wallet_before
    );

    // The machine's own report, numbered 3 too (the refused frames advanced nothing), settles.
    let (status, answer) = exchange(served.addr, &machine, &genuine).await;
    assert_eq!(status, 200);
    assert_eq!(answer.session(), Some((settled(), 200)));
    let w = ops_json(&service, "/v1/ops/wallets/ana").await;
    assert_eq!(
        (w["available"].as_str(), w["spent"].as_str()),
        (Some("800"), Some("200")),
        "{w}"
    );
}

/// D1 over gRPC: the same frame fails `Exchange` with UNAUTHENTICATED and the forged frame's
/// message; the genuine one settles.
#[tokio::test]
async fn over_grpc_a_frame_under_a_retired_key_version_is_unauthenticated_like_a_forged_one() {
    let service = Service::with_config(rotated());
    let mut machine = service.provision(DEVICE, &user("ana")).await;
    let served = serve(&service).await;
    let session = active_session(&service, &served, &mut machine).await;
    let mut client = DeviceServiceClient::connect(format!("http://{}", served.addr))
        .await
        .unwrap();
    let report = Request::Report {
        session,
        units: Units::new(4),
        last: true,
    };
    let genuine = machine.identity.request(3, &report);
    let mut forged = genuine.frame.clone();
    *forged.last_mut().unwrap() ^= 1;
    let stolen = identity_under(0, machine.identity.device_id).request(3, &report);

    let refused = |frame: Vec<u8>| {
        let mut client = client.clone();
        async move {
            client
                .exchange(pb::DeviceFrame { frame })
                .await
                .expect_err("refused")
        }
    };
    let (forged, stolen) = (refused(forged).await, refused(stolen.frame).await);
    assert_eq!(forged.code(), tonic::Code::Unauthenticated);
    assert_eq!(
        (stolen.code(), stolen.message()),
        (forged.code(), forged.message())
    );

    let answer = client
        .exchange(pb::DeviceFrame {
            frame: genuine.frame.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let answer = machine.identity.open(&genuine, &answer.frame).unwrap();
    assert_eq!(answer.body.session(), Some((settled(), 200)));
}

/// D2: an authenticated frame whose body does not decode — not protobuf, a session id of 3
/// bytes, an empty body — is a signed FRAME_INVALID (400) that is saved as the answer to its
/// sequence number: a byte-identical retry later gets the byte-identical answer (the original
/// server time), and a lower sequence number afterwards is SEQUENCE_REPLAYED and not executed.
#[tokio::test]
async fn an_authenticated_frame_invalid_refusal_is_saved_and_advances_the_sequence_number() {
    let service = Service::new();
    let machine = service.provision(DEVICE, &user("ana")).await;
    let served = serve(&service).await;
    let id = &machine.identity;
    let heartbeat = id.request(1, &Request::Heartbeat(Telemetry::default()));
    assert_eq!(
        exchange(served.addr, &machine, &heartbeat).await.1,
        Answer::Ack
    );

    let short_id = pb::DeviceRequest {
        kind: Some(pb::device_request::Kind::Start(pb::Start {
            session_id: vec![1, 2, 3],
        })),
    }
    .encode_to_vec();
    let bodies: [(&str, Vec<u8>); 3] = [
        ("not protobuf", vec![0xff, 0xff, 0xff, 0xff]),
        ("a 3-byte session id", short_id),
        ("an empty body", Vec::new()),
    ];
    let mut seq = 10;
    for (what, body) in bodies {
        service.set_now(T0 + u64::from(seq));
        let frame = seal_request(&id.key, id.key_version, id.device_id, seq, &body);
        let tag: [u8; 16] = frame[frame.len() - 16..].try_into().unwrap();
        let (status, first) = post(served.addr, &frame).await;
        assert_eq!(status, 400, "{what}: {}", String::from_utf8_lossy(&first));
        let opened = open_response(&id.key, &tag, &first).unwrap();
        let refusal = pb::DeviceResponse::decode(opened.body.as_slice()).unwrap();
        assert_eq!(refusal.error_code, "FRAME_INVALID", "{what}");
        assert_eq!(opened.server_time, T0 + u64::from(seq));

        // The retry, five seconds on: the stored answer, byte for byte.
        service.set_now(T0 + u64::from(seq) + 5);
        let (status, retry) = post(served.addr, &frame).await;
        assert_eq!(
            (status, &retry),
            (400, &first),
            "{what}: the retry gets the saved answer"
        );

        // A lower number is a replay now, and runs nothing.
        let lower = id.request(seq - 1, &Request::Heartbeat(Telemetry::default()));
        let (status, answer) = exchange(served.addr, &machine, &lower).await;
        assert_eq!(status, 409, "{what}: {answer:?}");
        let Answer::Refused(r) = answer else {
            panic!("{what}: a replay is refused");
        };
        assert_eq!(r.code, RefusalCode::SequenceReplayed, "{what}");
        seq += 10;
    }
}
