//! The real `blepay serve` binary on loopback sockets (issue 10, H1 and M7): an unauthenticated
//! gRPC flood cannot grow its memory past a bound; it terminates TLS with a certificate it is
//! given; it refuses plain phone/operator traffic on a non-loopback address unless told; its
//! machine listener serves only `POST /v1/device`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A port free on loopback now (the server binds it a moment later).
fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The binary under test: this build's, or `BLEPAY_BIN` (to measure another build, e.g. the
/// figures before a fix).
fn blepay_bin() -> std::path::PathBuf {
    std::env::var_os("BLEPAY_BIN").map_or_else(
        || std::path::PathBuf::from(env!("CARGO_BIN_EXE_blepay")),
        std::path::PathBuf::from,
    )
}

fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "blepay serve did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `blepay serve` child process; killed when dropped.
struct Server {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// `blepay serve --listen 127.0.0.1:PORT <extra>` with generated development secrets, once
    /// it accepts connections.
    fn start(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new(blepay_bin())
            .arg("serve")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start blepay serve");
        let server = Self {
            child,
            port,
            _dir: dir,
        };
        wait_listening(port);
        server
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// A line of /proc/PID/status, in KiB (`VmRSS`, `VmHWM`).
    fn status_kib(&self, key: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}:")))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {key} in /proc status"))
    }
}

/// One HTTP/1.1 request with `Connection: close` over any stream; the whole answer as text.
async fn http1<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    request: &str,
) -> String {
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut got)).await;
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unauthenticated_grpc_flood_does_not_grow_memory_past_a_bound() {
    use blepay_proto::pb::v1 as pb;
    use blepay_proto::pb::v1::ops_service_client::OpsServiceClient;

    // Arrange: the server, idle; one h2c connection.
    let server = Server::start(&[]);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let client = OpsServiceClient::new(channel);
    let before_kib = server.status_kib("VmRSS");

    // Act: the review's attack: 190 concurrent OpsService/TopUp calls of 4 MiB each (just under
    // tonic's default 4 MiB decode limit), without the operator token, on one connection.
    let started = Instant::now();
    let calls = (0..190).map(|i| {
        let mut client = client.clone();
        async move {
            let req = pb::TopUpRequest {
                user_id: "x".repeat(4 * 1024 * 1024 - 64),
                amount: 1,
                idempotency_key: format!("flood-{i}"),
            };
            client.top_up(req).await
        }
    });
    let answers = tokio::time::timeout(Duration::from_secs(120), futures_join_all(calls.collect()))
        .await
        .expect("the flood was answered");
    let took = started.elapsed();
    let after_kib = server.status_kib("VmRSS");
    let peak_kib = server.status_kib("VmHWM");

    // Assert: every call refused, and the server's peak memory stays bounded (before the fix
    // it went from ~19 to ~820 MiB).
    let mut codes = std::collections::BTreeMap::<String, usize>::new();
    for a in &answers {
        let code = a
            .as_ref()
            .map_or_else(|s| format!("{:?}", s.code()), |_| "Ok".into());
        *codes.entry(code).or_default() += 1;
    }
    eprintln!(
        "flood of 190 x 4 MiB unauthenticated TopUp: VmRSS {before_kib} -> {after_kib} KiB, \
         VmHWM {peak_kib} KiB, {took:?}, answers {codes:?}"
    );
    for a in &answers {
        let status = a.as_ref().expect_err("an unauthenticated TopUp succeeded");
        assert_ne!(status.code(), tonic::Code::Ok);
    }
    let unauthenticated = answers
        .iter()
        .filter(|a| matches!(a, Err(s) if s.code() == tonic::Code::Unauthenticated))
        .count();
    assert!(
        unauthenticated > 0,
        "no call was refused as UNAUTHENTICATED"
    );
    assert!(
        peak_kib < 200 * 1024,
        "peak RSS {peak_kib} KiB after an unauthenticated flood"
    );
}

/// Await every future (a tiny `join_all`, to keep the dev-dependencies to what the graph has).
async fn futures_join_all<F: std::future::Future + Send + 'static>(
    futures: Vec<F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

/// A self-signed certificate for `localhost` / 127.0.0.1, as PEM files in `dir`; its DER.
fn generated_cert(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    (cert_path, key_path, cert.cert.der().to_vec())
}

/// A TLS connection to `addr` trusting only `der`, offering `alpn`.
async fn tls_connect(
    addr: SocketAddr,
    der: &[u8],
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(der.to_vec()))
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await.expect("TLS handshake")
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_terminates_tls_with_the_certificate_it_is_given() {
    // Arrange
    let certs = tempfile::tempdir().unwrap();
    let (cert, key, der) = generated_cert(certs.path());
    let server = Server::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);

    // Act: a TLS client offering h2 and http/1.1 (gRPC, phones), one offering http/1.1 only,
    // and a plain-HTTP client.
    let h2 = tls_connect(server.addr(), &der, &[b"h2", b"http/1.1"]).await;
    let negotiated = h2.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    let h1 = tls_connect(server.addr(), &der, &[b"http/1.1"]).await;
    let health = http1(
        h1,
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    let plain = http1(
        TcpStream::connect(server.addr()).await.unwrap(),
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;

    // Assert
    assert_eq!(negotiated.as_deref(), Some(&b"h2"[..]));
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.ends_with("ok"), "{health}");
    assert!(
        !plain.contains("200 OK"),
        "plain HTTP was served on the TLS port: {plain}"
    );
}

#[test]
fn plain_http_on_a_non_loopback_address_is_refused_unless_allowed() {
    // Act: `--listen 0.0.0.0:PORT` without TLS.
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let out = Command::new(env!("CARGO_BIN_EXE_blepay"))
        .args(["serve", "--listen", &format!("0.0.0.0:{port}")])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .unwrap();

    // Assert: it does not start, and says why.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "served plain HTTP on 0.0.0.0");
    assert!(stderr.contains("BLEPAY_LISTEN"), "{stderr}");
    assert!(stderr.contains("--allow-insecure"), "{stderr}");

    // ...and with --allow-insecure it starts.
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_blepay"))
        .args([
            "serve",
            "--allow-insecure",
            "--listen",
            &format!("0.0.0.0:{port}"),
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data2"))
        .env("RUST_LOG", "warn")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut listening = false;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            listening = true;
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            for line in BufReader::new(child.stderr.take().unwrap()).lines() {
                err.push_str(&line.unwrap());
            }
            panic!("exited {status}: {err}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(listening, "--allow-insecure did not start");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_device_listener_serves_only_the_machine_route() {
    // Arrange
    let device_port = free_port();
    let server = Server::start(&["--device-listen", &format!("127.0.0.1:{device_port}")]);
    wait_listening(device_port);
    let device = SocketAddr::from(([127, 0, 0, 1], device_port));
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n");

    // Act
    let health = http1(TcpStream::connect(device).await.unwrap(), &get("/healthz")).await;
    let wallet = http1(
        TcpStream::connect(device).await.unwrap(),
        &get("/v1/wallet"),
    )
    .await;
    let openapi = http1(
        TcpStream::connect(device).await.unwrap(),
        &get("/openapi.json"),
    )
    .await;
    let frame = http1(
        TcpStream::connect(device).await.unwrap(),
        "POST /v1/device HTTP/1.1\r\nHost: b\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    )
    .await;
    let main = http1(
        TcpStream::connect(server.addr()).await.unwrap(),
        &get("/healthz"),
    )
    .await;

    // Assert
    for other in [&health, &wallet, &openapi] {
        assert!(other.starts_with("HTTP/1.1 404"), "{other}");
    }
    assert!(frame.starts_with("HTTP/1.1 400"), "{frame}");
    assert!(frame.contains("FRAME_INVALID"), "{frame}");
    assert!(main.starts_with("HTTP/1.1 200"), "{main}");
}
