//! Serving: HTTP and gRPC on one port (plain or TLS), an optional plain-HTTP machine listener,
//! and the sweeper (expiry and the ACTIVE timeout).
//!
//! The connection loop is our own over hyper's automatic HTTP/1.1 + HTTP/2 connection (not
//! `axum::serve`):
//! - so that the automatic `Date` header can be turned off: every byte of a machine's answer is
//!   billed on its SIM, and the frame already carries the authenticated server time.
//!   [`with_date`] puts `Date` back on every other answer (phones, operators, gRPC), so only
//!   `POST /v1/device` goes without it (docs/api.md "The machine route's headers");
//! - so that one client cannot hold the server (issue 10, M1 and H1): each listener accepts at
//!   most [`ServerLimits::max_connections`] connections (at the cap it stops accepting); a
//!   request head (or a new connection's first request, or its TLS handshake) must arrive within
//!   the header-read timeout, a request body within the body timeout, and a connection with no
//!   request in flight is closed after the idle timeout; HTTP/2 connections are pinged, carry at
//!   most 32 concurrent streams, 16 KiB header lists and 16 KiB frames.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tower::ServiceExt;

use crate::app::App;
use crate::config::{ConfigError, cfg_err};
use crate::grpc::GrpcOptions;
use crate::http::DEVICE_PATH;
use crate::limits::{H2_MAX_FRAME_BYTES, H2_MAX_HEADER_LIST_BYTES, ServerLimits};
use crate::{grpc, http, metrics};

pub use tokio_rustls::TlsAcceptor;

/// gRPC path prefixes routed to tonic; everything else is the HTTP API.
const GRPC_SERVICES: [&str; 5] = [
    "blepay.v1.PhoneService",
    "blepay.v1.OpsService",
    "blepay.v1.DeviceService",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// The whole service with the default gRPC options (reflection off): the HTTP routes and the
/// gRPC services, with `Date` on every answer but the machine route's.
///
/// # Errors
/// When the gRPC reflection service cannot be built.
pub fn router(app: &App) -> Result<Router, tonic_reflection::server::Error> {
    router_with(app, GrpcOptions::default())
}

/// [`router`] with gRPC built as `grpc` says (decode limits, reflection). A gRPC path of a
/// service not served (reflection, when off) answers UNIMPLEMENTED.
///
/// # Errors
/// When the gRPC reflection service cannot be built.
pub fn router_with(
    app: &App,
    grpc: GrpcOptions,
) -> Result<Router, tonic_reflection::server::Error> {
    let grpc = grpc::routes(app, grpc)?;
    let mut router = http::routes(app.clone()).route(
        "/metrics",
        axum::routing::get(metrics_text).with_state(app.clone()),
    );
    for service in GRPC_SERVICES {
        router = router.route_service(&format!("/{service}/{{method}}"), grpc.clone());
    }
    let router = router.layer(middleware::from_fn_with_state(
        app.metrics().clone(),
        metrics::track,
    ));
    Ok(with_date(router))
}

/// `GET /metrics`: the Prometheus metrics, to operators only (the ops bearer token).
async fn metrics_text(
    axum::extract::State(app): axum::extract::State<App>,
    _operator: http::OpsCaller,
) -> Response {
    let mut response = Response::new(axum::body::Body::from(app.metrics().encode()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(metrics::CONTENT_TYPE),
    );
    response
}

/// The machine listener's service: `POST /v1/device` only, without `Date` like on the main
/// listener, counted in the same metrics.
pub fn device_router(app: &App) -> Router {
    let router = http::device_routes(app.clone()).layer(middleware::from_fn_with_state(
        app.metrics().clone(),
        metrics::track,
    ));
    with_date(router)
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

/// How `blepay serve` serves: the limits, gRPC reflection, and TLS for the main listener.
#[derive(Clone, Default)]
pub struct ServeOptions {
    pub limits: ServerLimits,
    /// Serve gRPC server reflection (off by default).
    pub grpc_reflection: bool,
    /// Terminate TLS on the main listener (phones, operators, gRPC) with this acceptor; the
    /// machine listener is always plain HTTP.
    pub tls: Option<TlsAcceptor>,
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("limits", &self.limits)
            .field("grpc_reflection", &self.grpc_reflection)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// A TLS acceptor (rustls, TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`) for the certificate chain
/// in the PEM file `cert` and the private key in the PEM file `key`.
///
/// # Errors
/// A [`ConfigError`] naming `BLEPAY_TLS_CERT` or `BLEPAY_TLS_KEY` when a file cannot be read or
/// parsed, or the key does not fit the certificate.
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<TlsAcceptor, ConfigError> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| cfg_err("BLEPAY_TLS_CERT", format!("{}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(cfg_err(
            "BLEPAY_TLS_CERT",
            format!("{}: no certificate", cert.display()),
        ));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| cfg_err("BLEPAY_TLS_KEY", format!("{}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| cfg_err("BLEPAY_TLS_CERT", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| cfg_err("BLEPAY_TLS_KEY", format!("{}: {e}", key.display())))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The sockets `blepay serve` listens on.
#[derive(Debug)]
pub struct Listeners {
    /// Phones, operators and gRPC (and the machine route too): TLS when configured.
    pub main: TcpListener,
    /// Plain HTTP serving only `POST /v1/device`, for machines whose modems cannot do TLS 1.2.
    pub device: Option<TcpListener>,
}

/// Serve until `shutdown` resolves, with the default limits, no TLS, no reflection; the sweeper
/// runs alongside.
///
/// # Errors
/// On a listener failure.
pub async fn serve(
    listener: TcpListener,
    app: App,
    sweep_every: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listeners = Listeners {
        main: listener,
        device: None,
    };
    serve_with(
        listeners,
        app,
        sweep_every,
        ServeOptions::default(),
        shutdown,
    )
    .await
}

/// Serve `listeners` as `options` say until `shutdown` resolves; the sweeper runs alongside.
/// Then wait for open connections to finish their requests (at most the body timeout).
///
/// # Errors
/// When the gRPC services cannot be built.
pub async fn serve_with(
    listeners: Listeners,
    app: App,
    sweep_every: Duration,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let grpc = GrpcOptions {
        max_message_bytes: options.limits.grpc_max_message_bytes,
        reflection: options.grpc_reflection,
    };
    let router = router_with(&app, grpc).map_err(std::io::Error::other)?;
    let (stop, stopped) = watch::channel(false);
    let device = listeners.device.map(|listener| {
        tokio::spawn(serve_listener(
            listener,
            device_router(&app),
            options.limits,
            None,
            stopped.clone(),
        ))
    });
    let sweeper = tokio::spawn(sweep_loop(app, sweep_every));
    let main = tokio::spawn(serve_listener(
        listeners.main,
        router,
        options.limits,
        options.tls,
        stopped,
    ));
    shutdown.await;
    let _ = stop.send(true);
    sweeper.abort();
    let _ = main.await;
    if let Some(device) = device {
        let _ = device.await;
    }
    Ok(())
}

/// Serve `router` (HTTP/1.1 and h2c) with the default limits until `shutdown` resolves; then
/// wait for open connections to finish their requests.
///
/// # Errors
/// Never at present (accept errors are logged and retried); the `Result` is for the caller's
/// `?` like `axum::serve`'s.
pub async fn serve_router(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop, stopped) = watch::channel(false);
    let served = tokio::spawn(serve_listener(
        listener,
        router,
        ServerLimits::default(),
        None,
        stopped,
    ));
    shutdown.await;
    let _ = stop.send(true);
    let _ = served.await;
    Ok(())
}

/// The connection builder: HTTP/1.1 and HTTP/2 with `limits`, hyper's `Date` off.
fn builder(limits: &ServerLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .auto_date_header(false)
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // The read buffer bounds a request head; 64 KiB is far above any real one.
        .max_buf_size(64 * 1024);
    builder
        .http2()
        .auto_date_header(false)
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.h2_keepalive_interval)
        .keep_alive_timeout(limits.h2_keepalive_timeout)
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(H2_MAX_HEADER_LIST_BYTES)
        .max_frame_size(H2_MAX_FRAME_BYTES);
    builder
}

/// Accept on `listener` until `stopped` turns true, at most `limits.max_connections` open at
/// once; then wait for the open ones to finish.
async fn serve_listener(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    tls: Option<TlsAcceptor>,
    mut stopped: watch::Receiver<bool>,
) {
    let builder = Arc::new(builder(&limits));
    // Handlers see that a request came over TLS (the console's cookie is then `Secure`).
    let router = if tls.is_some() {
        router.layer(axum::Extension(crate::console::OverTls))
    } else {
        router
    };
    let cap = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let permits = Arc::new(Semaphore::new(cap));
    loop {
        // At the cap, stop accepting: new clients wait in the kernel's backlog, not in memory.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = until_stopped(&mut stopped) => break,
        };
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
            () = until_stopped(&mut stopped) => break,
        };
        // Small answers go out at once (as a SIM800 waits for them), not after Nagle's delay.
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        let router = router.clone();
        let stopped = stopped.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None => connection(stream, &builder, router, limits, stopped).await,
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream));
                    match handshake.await {
                        Ok(Ok(stream)) => {
                            connection(stream, &builder, router, limits, stopped).await;
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    // Every connection holds a permit: when all are back, all connections are closed.
    let all = u32::try_from(cap).unwrap_or(u32::MAX);
    let _ = permits.acquire_many(all).await;
}

/// Resolve once the server is stopping (or its stop signal is gone).
async fn until_stopped(stopped: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`: drop it at once.
    let _ = stopped.wait_for(|s| *s).await;
}

/// What a connection is doing, for its idle timer.
#[derive(Debug)]
struct Activity {
    in_flight: AtomicUsize,
    /// Whether any request has arrived (before the first, the header-read timeout applies).
    started: AtomicBool,
    /// When the last request finished (or the connection opened).
    since: Mutex<Instant>,
}

impl Activity {
    fn new() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            started: AtomicBool::new(false),
            since: Mutex::new(Instant::now()),
        }
    }

    fn enter(self: &Arc<Self>) -> InFlight {
        self.started.store(true, Ordering::SeqCst);
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }

    /// When the connection is idle past its timeout, if nothing arrives in between.
    fn deadline(&self, limits: &ServerLimits) -> Instant {
        let since = *self.since.lock().unwrap_or_else(PoisonError::into_inner);
        if self.started.load(Ordering::SeqCst) {
            since + limits.idle_timeout
        } else {
            since + limits.header_read_timeout
        }
    }

    fn idle(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) == 0
    }
}

/// A request in flight on a connection.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        *self.0.since.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serve one connection until it closes, it is idle past its timeout, or `stopped`.
async fn connection<I>(
    io: I,
    builder: &auto::Builder<TokioExecutor>,
    router: Router,
    limits: ServerLimits,
    mut stopped: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |req: axum::http::Request<Incoming>| {
            let in_flight = activity.enter();
            let router = router.clone();
            let body_timeout = limits.request_body_timeout;
            async move {
                let _in_flight = in_flight;
                let req = req.map(|b| axum::body::Body::new(Deadline::new(b, body_timeout)));
                router.oneshot(req).await
            }
        })
    };
    let conn = builder.serve_connection(TokioIo::new(io), service);
    let mut conn = std::pin::pin!(conn);
    loop {
        // Idle: sleep to the idle deadline. Busy: a request in flight is bounded by the body
        // timeout (and its handler); look again an idle timeout later.
        let wake = if activity.idle() {
            activity.deadline(&limits)
        } else {
            Instant::now() + limits.idle_timeout
        };
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done {
                    tracing::trace!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = tokio::time::sleep_until(wake) => {
                if activity.idle() && Instant::now() >= activity.deadline(&limits) {
                    tracing::trace!("closing an idle connection");
                    break;
                }
            }
            () = until_stopped(&mut stopped) => break,
        }
    }
    // Let requests in flight finish (a GOAWAY on HTTP/2), at most for the body timeout.
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(limits.request_body_timeout, conn).await;
}

/// A request body that fails once `timeout` has passed since the request arrived: a client
/// trickling its body cannot hold a connection (and a request in flight) past it.
struct Deadline<B> {
    inner: B,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl<B> Deadline<B> {
    fn new(inner: B, timeout: Duration) -> Self {
        Self {
            inner,
            sleep: Box::pin(tokio::time::sleep(timeout)),
        }
    }
}

/// The request body did not arrive within the body timeout.
#[derive(Debug, thiserror::Error)]
#[error("request body timed out")]
pub struct BodyTimeout;

impl<B> HttpBody for Deadline<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.inner.is_end_stream() {
            return Pin::new(&mut this.inner).poll_frame(cx).map_err(Into::into);
        }
        if this.sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(BodyTimeout))));
        }
        Pin::new(&mut this.inner).poll_frame(cx).map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// How often the sweeper recounts the fleet for the `blepay_machines` gauges.
pub const MACHINE_GAUGES_EVERY: Duration = Duration::from_secs(60);

/// Sweep forever: expire sessions never started, settle ACTIVE sessions silent past the active
/// timeout; and recount the fleet by state at most every [`MACHINE_GAUGES_EVERY`].
pub async fn sweep_loop(app: App, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut gauges_at: Option<tokio::time::Instant> = None;
    loop {
        tick.tick().await;
        let result = app.sweep().await;
        // The machines-by-state gauges: counted from the fleet after a sweep, at most once per
        // MACHINE_GAUGES_EVERY (a scrape stays a read of memory, whatever the fleet's size).
        if gauges_at.is_none_or(|t| t.elapsed() >= MACHINE_GAUGES_EVERY) {
            gauges_at = Some(tokio::time::Instant::now());
            if let Err(e) = app.refresh_machine_gauges().await {
                tracing::warn!(error = %e, "machine gauges not refreshed; will retry");
            }
        }
        app.metrics().sweep(
            result
                .as_ref()
                .map(|swept| (swept.expired, swept.timed_out))
                .map_err(|_| ()),
        );
        match result {
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
