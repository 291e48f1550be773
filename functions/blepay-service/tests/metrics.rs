//! `GET /metrics` of the server `blepay serve` runs (issue 11, item 9 — the server's part):
//! operators only; requests counted by route template (never by a client-chosen path), method
//! and status; sessions opened; the sweeper's runs and what it ended.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests: a failure is a panic

mod support;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request as HttpRequest, StatusCode, header};
use blepay_core::Telemetry;
use blepay_device_client::Request;
use blepay_proto::AdvertFlags;
use blepay_service::server;
use support::{Service, T0, user};

async fn scrape(service: &Service) -> String {
    let r = service.ops("GET", "/metrics", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.content_type.as_deref(),
        Some(blepay_service::metrics::CONTENT_TYPE)
    );
    String::from_utf8(r.body).unwrap()
}

/// The value of the sample line that starts with `series` (name and labels, exactly).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn metrics_need_the_ops_token() {
    let service = Service::new();
    for auth in [None, Some("Bearer not-the-token")] {
        let mut req = HttpRequest::builder().uri("/metrics");
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        let r = service.send(req.body(Body::empty()).unwrap()).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(r.json()["code"], "UNAUTHENTICATED");
    }
}

#[tokio::test]
async fn requests_are_counted_by_route_template_and_status_and_pays_that_open_a_session() {
    let service = Service::new();
    let ana = user("ana");
    let mut machine = service.provision("0102030405060708", &ana).await;
    service
        .exchange(&mut machine, &Request::Heartbeat(Telemetry::default()))
        .await;
    let paid = service.pay(&machine, &ana, 1, AdvertFlags::NONE).await;
    assert_eq!(paid.status, StatusCode::OK);
    // The same pay again is a retry: answered, but no second session.
    let again = service.pay(&machine, &ana, 1, AdvertFlags::NONE).await;
    assert_eq!(again.status, StatusCode::OK);
    let id = paid.json()["sessionId"].as_str().unwrap().to_owned();
    let seen = service
        .phone(&ana, "GET", &format!("/v1/sessions/{id}"), None)
        .await;
    assert_eq!(seen.status, StatusCode::OK);
    for junk in ["/v1/no-such-route", "/v1/another/made-up/path"] {
        let r = service.phone(&ana, "GET", junk, None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
    }

    let text = scrape(&service).await;
    let count = |labels: &str| sample(&text, &format!("blepay_http_requests_total{{{labels}}}"));
    assert_eq!(
        count(r#"route="/v1/pay",method="POST",code="200""#),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        count(r#"route="/v1/ops/devices",method="POST",code="200""#),
        Some(1.0)
    );
    assert_eq!(
        count(r#"route="/v1/device",method="POST",code="200""#),
        Some(1.0)
    );
    // A session id is not a label value: the route template is.
    assert_eq!(
        count(r#"route="/v1/sessions/{session_id}",method="GET",code="200""#),
        Some(1.0)
    );
    assert!(!text.contains(&id), "{text}");
    // Paths that matched no route share one label value.
    assert_eq!(
        count(r#"route="unmatched",method="GET",code="404""#),
        Some(2.0)
    );
    assert!(!text.contains("no-such-route") && !text.contains("made-up"));
    assert_eq!(
        sample(
            &text,
            r#"blepay_http_request_duration_seconds_count{route="/v1/pay"}"#
        ),
        Some(2.0)
    );
    assert_eq!(sample(&text, "blepay_sessions_opened_total"), Some(1.0));
    assert!(text.trim_end().ends_with("# EOF"), "OpenMetrics text");
}

#[tokio::test]
async fn the_sweeper_s_runs_and_the_sessions_it_expired_are_counted() {
    let service = Service::new();
    let ana = user("ana");
    let mut machine = service.provision("0102030405060708", &ana).await;
    service
        .exchange(&mut machine, &Request::Heartbeat(Telemetry::default()))
        .await;
    let paid = service.pay(&machine, &ana, 1, AdvertFlags::NONE).await;
    assert_eq!(paid.status, StatusCode::OK);
    // Past the start deadline (120 s): the sweeper expires it.
    service.set_now(T0 + 1_000);
    let sweeper = tokio::spawn(server::sweep_loop(
        service.app.clone(),
        Duration::from_millis(10),
    ));
    let mut text = String::new();
    for _ in 0..500 {
        text = scrape(&service).await;
        if sample(&text, r#"blepay_sessions_swept_total{outcome="expired"}"#) == Some(1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sweeper.abort();
    assert_eq!(
        sample(&text, r#"blepay_sessions_swept_total{outcome="expired"}"#),
        Some(1.0),
        "{text}"
    );
    // The sweeper also counted the fleet (one machine, in some state) for the gauges.
    let machines: f64 = ["online", "offline", "fault"]
        .iter()
        .filter_map(|st| sample(&text, &format!("blepay_machines{{state=\"{st}\"}}")))
        .sum();
    assert!((machines - 1.0).abs() < f64::EPSILON, "{text}");
    assert_eq!(
        sample(&text, r#"blepay_sessions_swept_total{outcome="timed_out"}"#),
        Some(0.0)
    );
    assert!(sample(&text, r#"blepay_sweeps_total{result="ok"}"#).unwrap() >= 1.0);
    assert_eq!(
        sample(&text, r#"blepay_sweeps_total{result="error"}"#),
        None
    );
}
