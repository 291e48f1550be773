//! Serving: HTTP and gRPC on one port, and the sweeper (expiry and the ACTIVE timeout).
//!
//! The connection loop is hyper's (not `axum::serve`) so that the automatic `Date` header can be
//! turned off: every byte of a machine's answer is billed on its SIM, and the frame already
//! carries the authenticated server time. [`with_date`] puts `Date` back on every other answer
//! (phones, operators, gRPC), so only `POST /v1/device` goes without it (docs/api.md "The
//! machine route's headers").

use std::future::Future;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use crate::app::App;
use crate::http::DEVICE_PATH;
use crate::{grpc, http};

/// gRPC path prefixes routed to tonic; everything else is the HTTP API.
const GRPC_SERVICES: [&str; 5] = [
    "blepay.v1.PhoneService",
    "blepay.v1.OpsService",
    "blepay.v1.DeviceService",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// The whole service: the HTTP routes and the gRPC services, with `Date` on every answer but
/// the machine route's.
///
/// # Errors
/// When the gRPC reflection service cannot be built.
pub fn router(app: &App) -> Result<Router, tonic_reflection::server::Error> {
    let grpc = grpc::routes(app)?;
    let mut router = http::routes(app.clone());
    for service in GRPC_SERVICES {
        router = router.route_service(&format!("/{service}/{{method}}"), grpc.clone());
    }
    Ok(with_date(router))
}

/// `router` with a `Date` header (RFC 9110 §6.6.1) on every answer except those of
/// `POST /v1/device`, for a server whose connections do not add one ([`serve_router`]).
pub fn with_date(router: Router) -> Router {
    router.layer(middleware::from_fn(date_except_device))
}

async fn date_except_device(req: Request, next: Next) -> Response {
    let device = req.uri().path() == DEVICE_PATH;
    let mut response = next.run(req).await;
    if !device && !response.headers().contains_key(header::DATE) {
        let now = httpdate::fmt_http_date(SystemTime::now());
        if let Ok(v) = HeaderValue::from_str(&now) {
            response.headers_mut().insert(header::DATE, v);
        }
    }
    response
}

/// Serve until `shutdown` resolves; the sweeper runs alongside.
///
/// # Errors
/// On a listener failure.
pub async fn serve(
    listener: TcpListener,
    app: App,
    sweep_every: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = router(&app).map_err(std::io::Error::other)?;
    let sweeper = tokio::spawn(sweep_loop(app, sweep_every));
    let result = serve_router(listener, router, shutdown).await;
    sweeper.abort();
    result
}

/// Serve `router` (HTTP/1.1 and h2c, as `axum::serve` does) with hyper's automatic `Date` header
/// off, until `shutdown` resolves; then wait for open connections to finish their requests.
///
/// # Errors
/// Never at present (accept errors are logged and retried); the `Result` is for the caller's
/// `?` like `axum::serve`'s.
pub async fn serve_router(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().auto_date_header(false);
    builder.http2().auto_date_header(false);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Per-connection errors (reset before accept) are the client's; anything
                    // else (out of file descriptors) is waited out, as axum does.
                    if !is_connection_error(&e) {
                        tracing::warn!(error = %e, "accept failed; retrying in 1 s");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Small answers go out at once (as a SIM800 waits for them), not after Nagle's delay.
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::trace!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// Sweep forever: expire sessions never started, settle ACTIVE sessions silent past the active
/// timeout.
pub async fn sweep_loop(app: App, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match app.sweep().await {
            Ok(swept) if swept.is_empty() => {}
            Ok(swept) => tracing::info!(
                expired = swept.expired,
                timed_out = swept.timed_out,
                "sweeper expired unstarted sessions and settled silent ACTIVE ones by timeout"
            ),
            Err(e) => tracing::warn!(error = %e, "sweeper failed; will retry"),
        }
    }
}
