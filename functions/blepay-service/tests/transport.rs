//! What one client can hold of the server (issue 10, H1, M1, L7, D3): the server `blepay serve`
//! runs (`server::serve_with`) on a real loopback socket, with short timeouts so that the tests
//! are quick, attacked the way the review did: a slow request head, a trickled body, more
//! connections than the cap, gRPC messages larger than their service's limit, an unauthenticated
//! operator call whose body never comes, reflection, an oversized machine frame.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests: a failure is a panic

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use blepay_service::limits::ServerLimits;
use blepay_service::server::{self, Listeners, ServeOptions};
use bytes::Bytes;
use support::Service;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A served instance on loopback ports (the main one and, when asked, the machine listener);
/// stops when dropped.
struct Served {
    addr: SocketAddr,
    device: Option<SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _service: Service,
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn serve(limits: ServerLimits, grpc_reflection: bool, device: bool) -> Served {
    let service = Service::new();
    let main = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = main.local_addr().unwrap();
    let device = if device {
        Some(TcpListener::bind("127.0.0.1:0").await.unwrap())
    } else {
        None
    };
    let device_addr = device.as_ref().map(|l| l.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server::serve_with(
        Listeners { main, device },
        service.app.clone(),
        Duration::from_secs(3600),
        ServeOptions {
            limits,
            grpc_reflection,
            tls: None,
        },
        async move {
            let _ = stopped.await;
        },
    ));
    Served {
        addr,
        device: device_addr,
        stop: Some(stop),
        _service: service,
    }
}

fn short_limits() -> ServerLimits {
    ServerLimits {
        header_read_timeout: Duration::from_secs(1),
        request_body_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(3),
        ..ServerLimits::default()
    }
}

/// Read until the server closes the connection (or `within` passes: then `None`); what it sent.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP/1: timeouts and the connection cap (M1)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_slow_request_head_is_closed_after_the_header_read_timeout() {
    // Arrange: a server whose header-read timeout is 1 s.
    let served = serve(short_limits(), false, false).await;
    let mut slow = TcpStream::connect(served.addr).await.unwrap();
    let mut silent = TcpStream::connect(served.addr).await.unwrap();
    let started = Instant::now();

    // Act: one client sends half a request head and stops; another sends nothing at all.
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: blepay\r\n")
        .await
        .unwrap();
    let slow_closed = read_until_closed(&mut slow, Duration::from_secs(10)).await;
    let silent_closed = read_until_closed(&mut silent, Duration::from_secs(10)).await;

    // Assert: both are closed at the timeout (not held open: the review saw 46 s and counting).
    assert!(
        slow_closed.is_some(),
        "a half-sent head held its connection"
    );
    assert!(
        silent_closed.is_some(),
        "a silent client held its connection"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "closed after {took:?}, the header-read timeout is 1 s"
    );
}

#[tokio::test]
async fn a_body_trickled_byte_by_byte_is_cut_at_the_body_timeout() {
    // Arrange: a 2 s body timeout; a machine-route request announcing 200 bytes.
    let served = serve(short_limits(), false, false).await;
    let mut stream = TcpStream::connect(served.addr).await.unwrap();
    stream
        .write_all(b"POST /v1/device HTTP/1.1\r\nHost: blepay\r\nContent-Length: 200\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();

    // Act: one byte every 200 ms (the review's was one per 5 s), for at most 10 s.
    let mut closed = false;
    for _ in 0..50 {
        if stream.write_all(b"x").await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 1024];
        let read = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await;
        if let Ok(Ok(0) | Err(_)) = read {
            closed = true;
            break;
        }
    }

    // Assert: the server gave up on the body at its timeout and closed the connection.
    let took = started.elapsed();
    assert!(closed, "a trickled body held the connection for {took:?}");
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(5),
        "closed after {took:?}, the body timeout is 2 s"
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    // Arrange: one answered request on a keep-alive connection.
    let served = serve(short_limits(), false, false).await;
    let mut stream = TcpStream::connect(served.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: blepay\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    // Act: say nothing more.
    let closed = read_until_closed(&mut stream, Duration::from_secs(10)).await;

    // Assert
    assert_eq!(closed, Some(Vec::new()), "an idle connection stayed open");
}

#[tokio::test]
async fn at_the_connection_cap_the_server_stops_accepting_until_one_closes() {
    // Arrange: at most 2 connections, both held by clients that sent nothing yet.
    let limits = ServerLimits {
        max_connections: 2,
        header_read_timeout: Duration::from_secs(5),
        ..ServerLimits::default()
    };
    let served = serve(limits, false, false).await;
    let first = TcpStream::connect(served.addr).await.unwrap();
    let _second = TcpStream::connect(served.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Act: a third client asks for /healthz.
    let mut third = TcpStream::connect(served.addr).await.unwrap();
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: blepay\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let while_full = tokio::time::timeout(Duration::from_secs(1), third.read(&mut buf)).await;

    // Assert: not served while two are open; served as soon as one closes.
    assert!(
        while_full.is_err(),
        "a third connection was served above a cap of 2"
    );
    drop(first);
    let n = tokio::time::timeout(Duration::from_secs(3), third.read(&mut buf))
        .await
        .expect("served once a connection closed")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

// ---------------------------------------------------------------------------------------------
// gRPC: decode limits and credentials before the body (H1); reflection (L7)
// ---------------------------------------------------------------------------------------------

/// Open an h2c connection to `addr`.
async fn h2c(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Start a gRPC call to `path` with `headers`, send only the 5-byte message prefix announcing
/// `announced` bytes (and never the message), and return the `grpc-status` the server answers
/// with, if it answers within 3 s.
async fn announce_only(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    announced: u32,
) -> Option<String> {
    let client = h2c(addr).await;
    let mut client = client.ready().await.unwrap();
    let mut req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let (response, mut body) = client.send_request(req.body(()).unwrap(), false).unwrap();
    let mut prefix = vec![0u8];
    prefix.extend_from_slice(&announced.to_be_bytes());
    body.send_data(Bytes::from(prefix), false).unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(3), async {
        let response = response.await.unwrap();
        if let Some(s) = response.headers().get("grpc-status") {
            return s.to_str().unwrap().to_owned();
        }
        let mut body = response.into_body();
        while body.data().await.is_some() {}
        let trailers = body.trailers().await.unwrap().unwrap_or_default();
        trailers
            .get("grpc-status")
            .map(|s| s.to_str().unwrap().to_owned())
            .unwrap_or_default()
    })
    .await;
    answered.ok()
}

#[tokio::test]
async fn an_http2_connection_is_limited_to_32_concurrent_streams() {
    // Arrange
    let served = serve(ServerLimits::default(), false, false).await;

    // Act: the server's SETTINGS arrive with the first exchange.
    let client = h2c(served.addr).await;
    let mut client = client.ready().await.unwrap();
    let req = http::Request::get(format!("http://{}/healthz", served.addr))
        .body(())
        .unwrap();
    let (response, _) = client.send_request(req, true).unwrap();
    assert_eq!(response.await.unwrap().status(), 200);

    // Assert: at most 32 streams at once (h2's default is unlimited).
    assert_eq!(client.current_max_send_streams(), 32);
}

/// gRPC status codes.
const OUT_OF_RANGE: &str = "11";
const UNAUTHENTICATED: &str = "16";

#[tokio::test]
async fn a_device_grpc_message_above_one_frame_is_refused_before_it_is_read() {
    // Arrange
    let served = serve(ServerLimits::default(), false, false).await;

    // Act: announce a 4 MiB DeviceFrame (tonic's default limit; the frame limit is 1,024 bytes)
    // and a 2 KiB one, sending neither.
    let four_mib = announce_only(
        served.addr,
        "/blepay.v1.DeviceService/Exchange",
        &[],
        4 * 1024 * 1024,
    )
    .await;
    let two_kib = announce_only(served.addr, "/blepay.v1.DeviceService/Exchange", &[], 2048).await;

    // Assert: refused at once on the announced length, OUT_OF_RANGE, without waiting for (or
    // buffering) the message.
    assert_eq!(four_mib.as_deref(), Some(OUT_OF_RANGE));
    assert_eq!(two_kib.as_deref(), Some(OUT_OF_RANGE));
}

#[tokio::test]
async fn ops_and_phone_grpc_without_credentials_are_refused_before_the_body() {
    // Arrange
    let served = serve(ServerLimits::default(), false, false).await;

    // Act: a TopUp and a Pay announcing a 1 KiB message that never comes, without credentials
    // and with a wrong token.
    let answers = [
        announce_only(served.addr, "/blepay.v1.OpsService/TopUp", &[], 1024).await,
        announce_only(
            served.addr,
            "/blepay.v1.OpsService/TopUp",
            &[("authorization", "Bearer not-the-ops-token")],
            1024,
        )
        .await,
        announce_only(served.addr, "/blepay.v1.PhoneService/Pay", &[], 1024).await,
    ];

    // Assert: UNAUTHENTICATED from the headers alone.
    for a in answers {
        assert_eq!(a.as_deref(), Some(UNAUTHENTICATED));
    }
}

#[tokio::test]
async fn an_authenticated_ops_message_above_the_limit_is_refused_before_it_is_read() {
    // Arrange
    let served = serve(ServerLimits::default(), false, false).await;
    let token = format!("Bearer {}", support::OPS_TOKEN);

    // Act: an operator announces a 4 MiB TopUp (the limit is 16 KiB).
    let answer = announce_only(
        served.addr,
        "/blepay.v1.OpsService/TopUp",
        &[("authorization", &token)],
        4 * 1024 * 1024,
    )
    .await;

    // Assert
    assert_eq!(answer.as_deref(), Some(OUT_OF_RANGE));
}

async fn reflection_list(addr: SocketAddr) -> Result<Vec<String>, tonic::Status> {
    use tonic_reflection::pb::v1;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel);
    let req = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut inbound = client
        .server_reflection_info(tokio_stream::once(req))
        .await?
        .into_inner();
    let answer = inbound.message().await?.unwrap();
    match answer.message_response {
        Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(l)) => {
            Ok(l.service.into_iter().map(|s| s.name).collect())
        }
        other => panic!("expected a service list, got {other:?}"),
    }
}

#[tokio::test]
async fn grpc_reflection_is_off_unless_turned_on() {
    // Arrange
    let off = serve(ServerLimits::default(), false, false).await;
    let on = serve(ServerLimits::default(), true, false).await;

    // Act
    let refused = reflection_list(off.addr).await;
    let listed = reflection_list(on.addr).await.unwrap();

    // Assert
    assert_eq!(
        refused.unwrap_err().code(),
        tonic::Code::Unimplemented,
        "reflection answered without --grpc-reflection"
    );
    assert!(listed.iter().any(|s| s == "blepay.v1.OpsService"));
}

// ---------------------------------------------------------------------------------------------
// The machine listener and the machine route's size answer (M7, D3)
// ---------------------------------------------------------------------------------------------

/// One HTTP/1.1 request with `Connection: close`; the status line and the body.
async fn http1(addr: SocketAddr, request: &str, body: &[u8]) -> (String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let got = read_until_closed(&mut stream, Duration::from_secs(5))
        .await
        .expect("answered and closed");
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text.lines().next().unwrap_or_default().to_owned();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn the_machine_listener_serves_only_the_machine_route() {
    // Arrange
    let served = serve(ServerLimits::default(), false, true).await;
    let device = served.device.unwrap();

    // Act
    let health = http1(
        device,
        "GET /healthz HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n",
        b"",
    )
    .await;
    let ops = http1(
        device,
        &format!(
            "GET /v1/ops/devices/0011223344556677 HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            support::OPS_TOKEN
        ),
        b"",
    )
    .await;
    let frame = http1(
        device,
        "POST /v1/device HTTP/1.1\r\nHost: b\r\nContent-Length: 3\r\nConnection: close\r\n\r\n",
        b"abc",
    )
    .await;
    let main_health = http1(
        served.addr,
        "GET /healthz HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n",
        b"",
    )
    .await;

    // Assert: the machine route answers (a 3-byte frame is FRAME_INVALID), nothing else does.
    assert!(health.0.contains(" 404 "), "{health:?}");
    assert!(ops.0.contains(" 404 "), "{ops:?}");
    assert!(frame.0.contains(" 400 "), "{frame:?}");
    assert!(frame.1.contains("FRAME_INVALID"), "{frame:?}");
    assert!(main_health.0.contains(" 200 "), "{main_health:?}");
}

#[tokio::test]
async fn a_machine_body_over_one_frame_is_frame_invalid_not_payload_too_large() {
    // Arrange
    let served = serve(ServerLimits::default(), false, false).await;

    // Act: 1,025 bytes, and 70 KiB (over the other routes' 64 KiB), announced; the first 4 KiB
    // sent (the server must not wait for more than one frame's worth).
    let mut answers = Vec::new();
    for len in [1025usize, 70 * 1024] {
        answers.push(
            http1(
                served.addr,
                &format!(
                    "POST /v1/device HTTP/1.1\r\nHost: b\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
                ),
                &vec![0x10; len.min(4096)],
            )
            .await,
        );
    }

    // Assert: 400 FRAME_INVALID, as docs/protocol.md §3 says of anything over 1,024 bytes.
    for (status, body) in answers {
        assert!(status.contains(" 400 "), "{status} {body}");
        assert!(body.contains("FRAME_INVALID"), "{body}");
    }
}
