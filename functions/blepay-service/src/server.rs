//! Serving: HTTP and gRPC on one port, and the expiry sweeper.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;

use crate::app::App;
use crate::{grpc, http};

/// gRPC path prefixes routed to tonic; everything else is the HTTP API.
const GRPC_SERVICES: [&str; 5] = [
    "blepay.v1.PhoneService",
    "blepay.v1.OpsService",
    "blepay.v1.DeviceService",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// The whole service: the HTTP routes and the gRPC services.
///
/// # Errors
/// When the gRPC reflection service cannot be built.
pub fn router(app: &App) -> Result<Router, tonic_reflection::server::Error> {
    let grpc = grpc::routes(app)?;
    let mut router = http::routes(app.clone());
    for service in GRPC_SERVICES {
        router = router.route_service(&format!("/{service}/{{method}}"), grpc.clone());
    }
    Ok(router)
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
    let result = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await;
    sweeper.abort();
    result
}

/// Expire sessions never started, forever.
pub async fn sweep_loop(app: App, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match app.sweep().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                expired = n,
                "sweeper expired sessions and released their holds"
            ),
            Err(e) => tracing::warn!(error = %e, "sweeper failed; will retry"),
        }
    }
}
