//! `blepay serve`: the self-hosted server on its embedded SQLite store.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use blepay_service::{App, ServeArgs, system_clock};
use blepay_store::sqlite::SqliteStore;
use tokio::net::TcpListener;

/// A server bound and ready: its address and the app behind it.
#[derive(Debug)]
pub struct Bound {
    pub listener: TcpListener,
    pub app: App,
    pub notes: Vec<String>,
}

/// Resolve config, open the store and bind the listener.
///
/// # Errors
/// A config error naming its variable, or a store/listener failure.
pub async fn bind(args: &ServeArgs) -> anyhow::Result<Bound> {
    let (config, generated) = args.resolve()?;
    let path = args.database_path();
    let store = SqliteStore::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let app = App::new(config, Arc::new(store), system_clock());
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    Ok(Bound {
        listener,
        app,
        notes: generated.notes,
    })
}

/// Serve until Ctrl-C / SIGTERM.
///
/// # Errors
/// On startup failure.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let bound = bind(&args).await?;
    for note in &bound.notes {
        tracing::warn!("{note}");
    }
    let addr = bound.listener.local_addr()?;
    tracing::info!(%addr, data_dir = %args.data_dir.display(), "blepay serving HTTP and gRPC");
    let sweep = Duration::from_secs(args.sweep_interval_secs.max(1));
    blepay_service::server::serve(bound.listener, bound.app, sweep, shutdown_signal()).await?;
    tracing::info!("blepay stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { () = ctrl_c => {}, () = term => {} }
}
