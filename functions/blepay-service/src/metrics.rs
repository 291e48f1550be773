//! Prometheus metrics of `blepay serve` (issue 11, item 9 — the server's part), served at
//! `GET /metrics` on the main listener to operators (the ops bearer token, which Prometheus sends
//! with `authorization: {credentials: …}`), in the OpenMetrics text format.
//!
//! - `blepay_http_requests_total{route, method, code}` and
//!   `blepay_http_request_duration_seconds{route}`: every request the main listener answers,
//!   HTTP and gRPC, by its route *template* (`/v1/sessions/{session_id}`, or the gRPC
//!   `/blepay.v1.PhoneService/{method}` path) so a client cannot mint label values; anything
//!   that matched no route is `route="unmatched"`. `code` is the HTTP status (gRPC answers are
//!   200 with their status in the trailers).
//! - `blepay_sessions_opened_total`: pays that opened a session (not retries);
//!   `blepay_sessions_swept_total{outcome="expired"|"timed_out"}`: what the sweeper ended;
//!   `blepay_sweeps_total{result="ok"|"error"}`: sweeper runs.
//!
//! - `blepay_sessions_settled_total{closed_by="report"|"timeout"}`, `blepay_sessions_expired_total`,
//!   `blepay_sessions_refunded_total`: sessions as they end — a machine's final report (counted
//!   by the exchange that settled it), the sweeper's expiries and timeouts, an operator's refund
//!   ([`Metrics::session_refunded`], called by the refund handler).
//! - `blepay_machines{state="online"|"offline"|"fault"}`: gauges set at scrape time from the
//!   store ([`Metrics::set_machines`]).
//!
//! The registry is per process; on Lambda each instance would count alone, so the functions do
//! not serve it: with [`Metrics::enable_emf`] every event is also written to stdout as one
//! CloudWatch Embedded Metric Format line ([`emf_line`]), which CloudWatch Logs turns into the
//! same metrics (namespace [`EMF_NAMESPACE`]).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::time::Instant;

/// The content type of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClosedByLabels {
    closed_by: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NotificationLabels {
    provider: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms to ~4 s, doubling.
    Histogram::new(exponential_buckets(0.000_5, 2.0, 14))
}

/// The server's metrics. Cheap to clone (one shared registry).
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Family<RouteLabels, Histogram, fn() -> Histogram>,
    opened: Counter,
    swept: Family<OutcomeLabels, Counter>,
    sweeps: Family<ResultLabels, Counter>,
    settled: Family<ClosedByLabels, Counter>,
    expired: Counter,
    refunded: Counter,
    machines: Family<StateLabels, Gauge>,
    notifications: Family<NotificationLabels, Counter>,
    emf: AtomicBool,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("blepay");
        let requests = Family::<RequestLabels, Counter>::default();
        let durations = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let opened = Counter::default();
        let swept = Family::<OutcomeLabels, Counter>::default();
        let sweeps = Family::<ResultLabels, Counter>::default();
        registry.register(
            "http_requests",
            "Requests answered, by route template, method and HTTP status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer a request, by route template",
            durations.clone(),
        );
        registry.register(
            "sessions_opened",
            "Pays that opened a session (retries not counted)",
            opened.clone(),
        );
        registry.register(
            "sessions_swept",
            "Sessions the sweeper ended: expired unstarted, or timed out ACTIVE",
            swept.clone(),
        );
        registry.register("sweeps", "Sweeper runs, by result", sweeps.clone());
        let settled = Family::<ClosedByLabels, Counter>::default();
        let expired = Counter::default();
        let refunded = Counter::default();
        let machines = Family::<StateLabels, Gauge>::default();
        registry.register(
            "sessions_settled",
            "Sessions settled, by what closed them: the machine's final report or the timeout",
            settled.clone(),
        );
        registry.register(
            "sessions_expired",
            "Sessions expired unstarted (holds released) by the sweeper",
            expired.clone(),
        );
        registry.register(
            "sessions_refunded",
            "Refunds an operator made on a session",
            refunded.clone(),
        );
        registry.register(
            "machines",
            "Registered machines by state, at the last scrape",
            machines.clone(),
        );
        let notifications = Family::<NotificationLabels, Counter>::default();
        registry.register(
            "provider_notifications",
            "Payment providers' notifications by provider and outcome: applied, duplicate, \
             unknown_topup, mismatch, ignored, refused (signature, timestamp, malformed)",
            notifications.clone(),
        );
        Self {
            inner: Arc::new(Inner {
                registry,
                requests,
                durations,
                opened,
                swept,
                sweeps,
                settled,
                expired,
                refunded,
                machines,
                notifications,
                emf: AtomicBool::new(false),
            }),
        }
    }

    /// Also write every event as a CloudWatch EMF line on stdout (the Lambda functions).
    pub fn enable_emf(&self) {
        self.inner.emf.store(true, Ordering::Relaxed);
    }

    fn emf(&self, dimensions: &[(&str, &str)], metrics: &[(&str, &str, f64)]) {
        if self.inner.emf.load(Ordering::Relaxed) {
            println!("{}", emf_line(unix_millis(), dimensions, metrics));
        }
    }

    /// A machine's final report settled a session.
    pub fn session_settled_by_report(&self) {
        self.settled("report", 1);
    }

    fn settled(&self, closed_by: &'static str, n: u64) {
        if n == 0 {
            return;
        }
        self.inner
            .settled
            .get_or_create(&ClosedByLabels { closed_by })
            .inc_by(n);
        #[allow(clippy::cast_precision_loss, reason = "a count of sessions")]
        self.emf(
            &[("closedBy", closed_by)],
            &[("SessionsSettled", "Count", n as f64)],
        );
    }

    fn expired(&self, n: u64) {
        if n == 0 {
            return;
        }
        self.inner.expired.inc_by(n);
        #[allow(clippy::cast_precision_loss, reason = "a count of sessions")]
        self.emf(&[], &[("SessionsExpired", "Count", n as f64)]);
    }

    /// An operator refunded (part of) a session (the refund handler calls it once per refund
    /// that moved money, not for a retry).
    pub fn session_refunded(&self) {
        self.inner.refunded.inc();
        self.emf(&[], &[("SessionsRefunded", "Count", 1.0)]);
    }

    /// A provider's notification reached a webhook, and what became of it.
    pub fn provider_notification(&self, provider: &'static str, outcome: &'static str) {
        self.inner
            .notifications
            .get_or_create(&NotificationLabels { provider, outcome })
            .inc();
        self.emf(
            &[("provider", provider), ("outcome", outcome)],
            &[("ProviderNotifications", "Count", 1.0)],
        );
    }

    /// The machines by state, computed by the caller (at scrape time) from the store.
    pub fn set_machines(&self, online: u64, offline: u64, fault: u64) {
        for (state, n) in [("online", online), ("offline", offline), ("fault", fault)] {
            self.inner
                .machines
                .get_or_create(&StateLabels { state })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        #[allow(clippy::cast_precision_loss, reason = "counts of machines")]
        self.emf(
            &[],
            &[
                ("MachinesOnline", "Count", online as f64),
                ("MachinesOffline", "Count", offline as f64),
                ("MachinesFault", "Count", fault as f64),
            ],
        );
    }

    /// The metrics in the OpenMetrics text format ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.inner.registry);
        out
    }

    /// A pay opened a session.
    pub fn session_opened(&self) {
        self.inner.opened.inc();
        self.emf(&[], &[("SessionsOpened", "Count", 1.0)]);
    }

    /// One sweeper run: `Ok((expired, timed_out))` or a failure.
    pub fn sweep(&self, result: Result<(usize, usize), ()>) {
        if let Ok((expired, timed_out)) = result {
            {
                self.inner
                    .sweeps
                    .get_or_create(&ResultLabels { result: "ok" })
                    .inc();
                self.emf(&[("result", "ok")], &[("Sweeps", "Count", 1.0)]);
                self.expired(u64::try_from(expired).unwrap_or(u64::MAX));
                self.settled("timeout", u64::try_from(timed_out).unwrap_or(u64::MAX));
                self.inner
                    .swept
                    .get_or_create(&OutcomeLabels { outcome: "expired" })
                    .inc_by(u64::try_from(expired).unwrap_or(u64::MAX));
                self.inner
                    .swept
                    .get_or_create(&OutcomeLabels {
                        outcome: "timed_out",
                    })
                    .inc_by(u64::try_from(timed_out).unwrap_or(u64::MAX));
            }
        } else {
            {
                self.inner
                    .sweeps
                    .get_or_create(&ResultLabels { result: "error" })
                    .inc();
                self.emf(&[("result", "error")], &[("Sweeps", "Count", 1.0)]);
            }
        }
    }

    fn observe(&self, route: String, method: String, code: u16, secs: f64) {
        if self.inner.emf.load(Ordering::Relaxed) {
            let code_text = code.to_string();
            self.emf(
                &[("route", &route), ("method", &method), ("code", &code_text)],
                &[
                    ("Requests", "Count", 1.0),
                    ("Latency", "Milliseconds", secs * 1000.0),
                ],
            );
        }
        self.inner
            .durations
            .get_or_create(&RouteLabels {
                route: route.clone(),
            })
            .observe(secs);
        self.inner
            .requests
            .get_or_create(&RequestLabels {
                route,
                method,
                code,
            })
            .inc();
    }
}

/// Middleware (`axum::middleware::from_fn_with_state`): count and time every request by its
/// route template.
pub async fn track(
    axum::extract::State(metrics): axum::extract::State<Metrics>,
    req: Request,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = match req.method().as_str() {
        m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS") => m.to_owned(),
        _ => "other".to_owned(),
    };
    let started = Instant::now();
    let response = next.run(req).await;
    metrics.observe(
        route,
        method,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// The CloudWatch namespace of the EMF lines.
pub const EMF_NAMESPACE: &str = "blepay";

fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One CloudWatch Embedded Metric Format document (one log line): the `_aws` metadata with its
/// `Timestamp` (ms) and one `CloudWatchMetrics` directive in [`EMF_NAMESPACE`] whose one
/// dimension set is `dimensions`' names, then each dimension and metric value as a root member
/// (the AWS specification, "Embedded metric format document structure"). `metrics` are
/// (name, unit, value).
pub fn emf_line(
    timestamp_ms: u64,
    dimensions: &[(&str, &str)],
    metrics: &[(&str, &str, f64)],
) -> String {
    let mut root = serde_json::Map::new();
    let names: Vec<&str> = dimensions.iter().map(|(k, _)| *k).collect();
    let defs: Vec<serde_json::Value> = metrics
        .iter()
        .map(|(name, unit, _)| serde_json::json!({"Name": name, "Unit": unit}))
        .collect();
    root.insert(
        "_aws".into(),
        serde_json::json!({
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": EMF_NAMESPACE,
                "Dimensions": [names],
                "Metrics": defs,
            }],
        }),
    );
    for (k, v) in dimensions {
        root.insert((*k).to_owned(), serde_json::Value::from(*v));
    }
    for (name, _, value) in metrics {
        root.insert((*name).to_owned(), serde_json::Value::from(*value));
    }
    serde_json::Value::Object(root).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_emf_line_is_one_json_document_cloudwatch_can_extract() {
        let line = emf_line(
            1_770_000_000_000,
            &[("route", "/v1/pay"), ("code", "200")],
            &[("Requests", "Count", 1.0), ("Latency", "Milliseconds", 2.5)],
        );
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let aws = &v["_aws"];
        assert_eq!(aws["Timestamp"], 1_770_000_000_000_u64);
        let d = &aws["CloudWatchMetrics"][0];
        assert_eq!(d["Namespace"], "blepay");
        assert_eq!(d["Dimensions"], serde_json::json!([["route", "code"]]));
        assert_eq!(
            d["Metrics"][1],
            serde_json::json!({"Name": "Latency", "Unit": "Milliseconds"})
        );
        // Every dimension and metric the directive names is a root member (the spec's rule).
        for name in ["route", "code", "Requests", "Latency"] {
            assert!(v.get(name).is_some(), "{name} missing: {line}");
        }
        assert_eq!(v["Latency"], 2.5);
    }

    #[test]
    fn the_new_counters_and_gauges_are_exposed() {
        let m = Metrics::new();
        m.session_settled_by_report();
        m.session_refunded();
        m.sweep(Ok((2, 1)));
        m.set_machines(3, 1, 1);
        let text = m.encode();
        for want in [
            "blepay_sessions_settled_total{closed_by=\"report\"} 1",
            "blepay_sessions_settled_total{closed_by=\"timeout\"} 1",
            "blepay_sessions_expired_total 2",
            "blepay_sessions_refunded_total 1",
            "blepay_machines{state=\"online\"} 3",
            "blepay_machines{state=\"fault\"} 1",
        ] {
            assert!(text.contains(want), "{want} missing from {text}");
        }
    }
}
