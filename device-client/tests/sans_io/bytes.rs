//! What each request costs on the 2G link: body, frame and the whole HTTP request, measured.

use blepay_core::Telemetry;
use blepay_core::Units;
use blepay_device_client::transport::http_post_request;
use blepay_device_client::{heartbeat, poll, press, report, start};

use crate::common::{identity, session};

/// A realistic server name for a deployment (the Host header is part of every request).
const HOST: &str = "device.blepay.example.com:8080";

#[test]
fn every_request_fits_the_2g_budget() {
    let id = identity();
    let telemetry = Telemetry {
        firmware_version: "dispenser-2.4.1+build.1234".into(),
        fault_codes: vec![101, 70_000],
        signal_quality: 23,
        uptime_secs: 31_536_000,
        boot_count: 1_234,
        outbox_depth: 2,
        lifetime_units: 12_345_678,
    };
    let cases = [
        ("press", press()),
        ("heartbeat (full telemetry)", heartbeat(telemetry)),
        (
            "heartbeat (empty telemetry)",
            heartbeat(Telemetry::default()),
        ),
        ("poll (legacy)", poll()),
        ("start", start(session(9))),
        (
            "report (progress, 1234 units)",
            report(session(9), Units::new(1234), false),
        ),
        (
            "report (final, 16383 units)",
            report(session(9), Units::new(16_383), true),
        ),
        (
            "report (final, u64::MAX units)",
            report(session(9), Units::new(u64::MAX), true),
        ),
    ];
    println!("| request | body | frame | HTTP request (Host: {HOST}) |");
    for (name, body) in cases {
        let body_len = body.encode().len();
        let pending = id.request(u32::MAX, &body);
        let http = http_post_request(HOST, &pending.frame);
        println!(
            "| {name} | {body_len} | {} | {} |",
            pending.frame.len(),
            http.len()
        );
        assert!(body_len <= 80, "{name}: body {body_len} > 80");
        assert!(
            http.len() <= 300,
            "{name}: HTTP request {} > 300",
            http.len()
        );
        assert_eq!(pending.frame.len(), 29 + body_len);
    }
}

#[test]
fn the_http_request_is_the_one_the_server_expects() {
    let pending = identity().request(1, &poll());
    let http = http_post_request("h", &pending.frame);
    let head = b"POST /v1/device HTTP/1.1\r\nHost: h\r\nContent-Type: application/octet-stream\r\nContent-Length: 31\r\n\r\n";
    assert_eq!(&http[..head.len()], head);
    assert_eq!(&http[head.len()..], pending.frame.as_slice());
}
