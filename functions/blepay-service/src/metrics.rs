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
//! The registry is per process; on Lambda each instance would count alone, so the functions do
//! not serve it (CloudWatch embedded metrics are the Lambda way, not built yet).

use std::fmt;
use std::sync::Arc;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
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
    refunded: Counter,
    swept: Family<OutcomeLabels, Counter>,
    sweeps: Family<ResultLabels, Counter>,
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
        let refunded = Counter::default();
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
            "sessions_refunded",
            "Refunds operators made on sessions (retries not counted)",
            refunded.clone(),
        );
        registry.register(
            "sessions_swept",
            "Sessions the sweeper ended: expired unstarted, or timed out ACTIVE",
            swept.clone(),
        );
        registry.register("sweeps", "Sweeper runs, by result", sweeps.clone());
        Self {
            inner: Arc::new(Inner {
                registry,
                requests,
                durations,
                opened,
                refunded,
                swept,
                sweeps,
            }),
        }
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
    }

    /// An operator refunded (part of) a session.
    pub fn session_refunded(&self) {
        self.inner.refunded.inc();
    }

    /// One sweeper run: `Ok((expired, timed_out))` or a failure.
    pub fn sweep(&self, result: Result<(usize, usize), ()>) {
        match result {
            Ok((expired, timed_out)) => {
                self.inner
                    .sweeps
                    .get_or_create(&ResultLabels { result: "ok" })
                    .inc();
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
            Err(()) => {
                self.inner
                    .sweeps
                    .get_or_create(&ResultLabels { result: "error" })
                    .inc();
            }
        }
    }

    fn observe(&self, route: String, method: String, code: u16, secs: f64) {
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
