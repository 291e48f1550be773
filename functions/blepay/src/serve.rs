//! `blepay serve`: the self-hosted server on its embedded SQLite store (or DynamoDB, with
//! `BLEPAY_STORE=dynamodb`).

use std::sync::Arc;
use std::time::Duration;

use crate::args::{ServeArgs, StoreArgs, StoreKind};
use anyhow::Context;
use blepay_dynamodb::DynamoStore;
use blepay_service::{App, system_clock};
use blepay_sqlite::SqliteStore;
use blepay_store::Store;
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
    bind_with(args, &StoreArgs::default()).await
}

/// [`bind`] on the store `store` names.
///
/// # Errors
/// A config error naming its variable, or a store/listener failure.
pub async fn bind_with(args: &ServeArgs, store: &StoreArgs) -> anyhow::Result<Bound> {
    let (config, generated) = args.resolve()?;
    config.phone_tokens.start().await?;
    let store = open_store(args, store).await?;
    let app = App::new(config, store, system_clock());
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    Ok(Bound {
        listener,
        app,
        notes: generated.notes,
    })
}

/// Open the chosen store: the SQLite file in the data dir, or the DynamoDB table (whose connection
/// is warmed up, so a missing table or endpoint fails at start).
///
/// # Errors
/// When the store cannot be opened or reached.
pub async fn open_store(args: &ServeArgs, store: &StoreArgs) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match store.kind {
        StoreKind::Sqlite => {
            let path = args.database_path();
            private_database_files(&path)?;
            Arc::new(
                SqliteStore::open(&path).with_context(|| format!("opening {}", path.display()))?,
            )
        }
        StoreKind::Dynamodb => {
            let table = &store.dynamodb.table;
            let dynamo = DynamoStore::from_env(table, store.dynamodb.endpoint.as_deref()).await?;
            dynamo.warm_up().await.with_context(|| {
                format!("DynamoDB table {table} (BLEPAY_DYNAMODB_TABLE; create it with `blepay ops create-table`)")
            })?;
            tracing::info!(table = %table, endpoint = ?store.dynamodb.endpoint, "using the DynamoDB store");
            Arc::new(dynamo)
        }
    })
}

/// Make the database file mode 0600 before SQLite opens it (created empty if absent): SQLite
/// gives its `-wal` and `-shm` files the database file's mode. Existing `-wal` / `-shm` files
/// (from an older version) are tightened too.
///
/// # Errors
/// When a file cannot be created or its mode changed.
pub fn private_database_files(db: &std::path::Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(db)
            .with_context(|| format!("creating {}", db.display()))?;
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut name = db.as_os_str().to_owned();
            name.push(suffix);
            let path = std::path::PathBuf::from(name);
            match std::fs::metadata(&path) {
                Ok(meta) if meta.permissions().mode() & 0o077 != 0 => {
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                        .with_context(|| format!("chmod 600 {}", path.display()))?;
                }
                _ => {}
            }
        }
    }
    #[cfg(not(unix))]
    let _ = db;
    Ok(())
}

/// Serve until Ctrl-C / SIGTERM.
///
/// # Errors
/// On startup failure.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    run_with(args, StoreArgs::default()).await
}

/// [`run`] on the store `store` names.
///
/// # Errors
/// On startup failure.
pub async fn run_with(args: ServeArgs, store: StoreArgs) -> anyhow::Result<()> {
    let bound = bind_with(&args, &store).await?;
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
