//! The plain HTTP transport on its own (no server needed): a failure says what it was.
//! (The transport under the engine, through a lossy proxy to the real server, is tested in the
//! e2e crate: `tests/tests/machine/http_proxy.rs`.)
#![cfg(feature = "std")]

use std::time::Duration;

use blepay_device_client::http::HttpTransport;

#[test]
fn an_unreachable_server_is_a_clear_error() {
    // Arrange: a port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut http = HttpTransport::new(&format!("http://127.0.0.1:{port}"), Duration::from_secs(2));

    // Act
    let mut answer = Vec::new();
    let r = blepay_device_client::transport::Transport::post(
        &mut http,
        "/v1/device",
        b"frame",
        &mut answer,
    );

    // Assert
    let e = r.unwrap_err().to_string();
    assert!(
        e.contains("HTTP exchange with http://127.0.0.1:") && e.contains("failed"),
        "{e}"
    );
    assert!(answer.is_empty());
}
