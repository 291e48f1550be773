//! The machine route's answers carry only the headers HTTP needs, byte for byte on a real TCP
//! socket of the server `blepay serve` runs (docs/api.md "The machine route's headers"): every
//! byte is billed on the machine's SIM. The request is what a SIM800's `AT+HTTPACTION` POST sends.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests: a failure is a panic

mod support;

use std::time::Duration;

use blepay_device_client::Request;
use blepay_service::server;
use support::{Service, user};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A served instance of `service` on a loopback port; stops when dropped.
struct Served {
    addr: std::net::SocketAddr,
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

/// A raw HTTP/1.1 answer: status line, header lines as sent, body.
#[derive(Debug)]
struct RawAnswer {
    status_line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Every byte the server put on the connection for this answer.
    wire_len: usize,
}

impl RawAnswer {
    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .headers
            .iter()
            .map(|(n, _)| n.to_ascii_lowercase())
            .collect();
        names.sort();
        names
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Send `request` on `stream` and read exactly one answer (framed by its content-length).
async fn exchange(stream: &mut TcpStream, request: &[u8]) -> RawAnswer {
    stream.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8(buf[..end].to_vec()).unwrap();
            let mut lines = head.split("\r\n");
            let status_line = lines.next().unwrap().to_owned();
            let headers: Vec<(String, String)> = lines
                .map(|l| {
                    let (n, v) = l.split_once(':').unwrap();
                    (n.to_owned(), v.trim().to_owned())
                })
                .collect();
            let len: usize = headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                .map(|(_, v)| v.parse().unwrap())
                .expect("answers are framed by content-length");
            let total = end + 4 + len;
            while buf.len() < total {
                let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
                    .await
                    .unwrap()
                    .unwrap();
                assert!(n > 0, "connection closed mid-body");
                buf.extend_from_slice(&chunk[..n]);
            }
            assert_eq!(buf.len(), total, "nothing may follow the answer");
            return RawAnswer {
                status_line,
                headers,
                body: buf[end + 4..total].to_vec(),
                wire_len: total,
            };
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "connection closed before the answer");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The request a SIM800 sends for `AT+HTTPACTION=1` with `frame` as the `AT+HTTPDATA` body.
fn sim800_post(host: &str, frame: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST /v1/device HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {}\r\nConnection: Keep-Alive\r\nAccept: */*\r\n\
         User-Agent: SIMCOM_MODULE\r\n\r\n",
        frame.len()
    )
    .into_bytes();
    r.extend_from_slice(frame);
    r
}

#[tokio::test]
async fn a_machine_answer_carries_only_content_type_and_content_length() {
    let service = Service::new();
    let ana = user("ana");
    let mut machine = service.provision("0102030405060708", &ana).await;
    let served = serve(&service).await;
    let mut stream = TcpStream::connect(served.addr).await.unwrap();
    let host = served.addr.to_string();

    // A heartbeat (200 + frame), a press with no session waiting (a signed 404 refusal) and an
    // unauthenticated frame (a JSON 401): every kind of machine answer, on one keep-alive
    // connection as the SIM800 keeps it.
    let heartbeat = machine
        .identity
        .request(1, &Request::Heartbeat(blepay_core::Telemetry::default()));
    let press = machine.identity.request(2, &Request::Press);
    machine.next_seq = 3;
    let mut forged = press.frame.clone();
    if let Some(last) = forged.last_mut() {
        *last ^= 1;
    }

    let mut bodies = Vec::new();
    for (frame, status, content_type) in [
        (&heartbeat.frame, "200 OK", "application/octet-stream"),
        (&press.frame, "404 Not Found", "application/octet-stream"),
        (&forged, "401 Unauthorized", "application/json"),
    ] {
        let answer = exchange(&mut stream, &sim800_post(&host, frame)).await;
        assert_eq!(
            answer.status_line,
            format!("HTTP/1.1 {status}"),
            "{answer:?}"
        );
        assert_eq!(
            answer.names(),
            ["content-length", "content-type"],
            "exactly these headers, nothing else (no date, no server, no request id): {answer:?}"
        );
        assert_eq!(answer.header("content-type"), Some(content_type));
        assert_eq!(
            answer.header("content-length"),
            Some(answer.body.len().to_string().as_str())
        );
        // Status line, two headers, blank line, body: nothing else is on the wire.
        let head = format!(
            "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
            answer.body.len()
        );
        assert_eq!(
            answer.wire_len,
            head.len() + answer.body.len(),
            "{answer:?}"
        );
        bodies.push(answer.body);
    }

    // The frames are real answers: the heartbeat's is an acknowledgement, the press's a signed
    // NO_SESSION_WAITING.
    let opened = machine.identity.open(&heartbeat, &bodies[0]).unwrap();
    assert_eq!(opened.refusal_code(), None, "{opened:?}");
    let opened = machine.identity.open(&press, &bodies[1]).unwrap();
    assert_eq!(
        opened.refusal_code(),
        Some(blepay_device_client::RefusalCode::NoSessionWaiting)
    );
    // A retry of the press gets the same bytes, with the same minimal headers.
    let again = exchange(&mut stream, &sim800_post(&host, &press.frame)).await;
    assert_eq!(again.body, bodies[1]);
    assert_eq!(again.names(), ["content-length", "content-type"]);
}

#[tokio::test]
async fn every_other_route_still_carries_a_date() {
    let service = Service::new();
    let served = serve(&service).await;
    let mut stream = TcpStream::connect(served.addr).await.unwrap();
    let host = served.addr.to_string();
    for path in ["/healthz", "/v1/wallet", "/no/such/route"] {
        let answer = exchange(
            &mut stream,
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes(),
        )
        .await;
        let date = answer
            .header("date")
            .unwrap_or_else(|| panic!("{path}: {answer:?}"));
        assert!(
            httpdate::parse_http_date(date).is_ok(),
            "{path}: an IMF-fixdate, not {date:?}"
        );
    }
}
