//! `blepay serve`: the self-hosted server on its embedded SQLite store (or DynamoDB, with
//! `BLEPAY_STORE=dynamodb`).

use std::sync::Arc;
use std::time::Duration;

use crate::args::{ServeArgs, StoreArgs, StoreKind};
use anyhow::Context;
use blepay_service::server::{Listeners, ServeOptions};
use blepay_service::{App, system_clock};
use blepay_sqlite::SqliteStore;
use blepay_store::Store;
use tokio::net::TcpListener;

/// A server bound and ready: its address and the app behind it.
#[derive(Debug)]
pub struct Bound {
    /// `--listen`: phones, operators, gRPC (TLS when configured).
    pub listener: TcpListener,
    /// `--device-listen`: plain HTTP, `POST /v1/device` only.
    pub device_listener: Option<TcpListener>,
    pub app: App,
    /// The limits, reflection and TLS from the transport flags.
    pub options: ServeOptions,
    pub notes: Vec<String>,
}

impl Bound {
    /// Serve until `shutdown` resolves, as the transport flags say.
    ///
    /// # Errors
    /// When the gRPC services cannot be built.
    pub async fn serve(
        self,
        sweep_every: Duration,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let listeners = Listeners {
            main: self.listener,
            device: self.device_listener,
        };
        blepay_service::server::serve_with(listeners, self.app, sweep_every, self.options, shutdown)
            .await
    }
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
    let transport = &args.transport;
    transport.check_listen(args.listen)?;
    let limits = transport.limits()?;
    let tls = match transport.tls() {
        Some((cert, key)) => Some(blepay_service::server::tls_acceptor(cert, key)?),
        None => None,
    };
    let (config, generated) = args.resolve()?;
    config.phone_tokens.start().await?;
    let store = open_store(args, store).await?;
    let app = App::new(config, store, system_clock());
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let device_listener = match transport.device_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr} (BLEPAY_DEVICE_LISTEN)"))?,
        ),
        None => None,
    };
    Ok(Bound {
        listener,
        device_listener,
        app,
        options: ServeOptions {
            limits,
            grpc_reflection: transport.grpc_reflection,
            tls,
        },
        notes: generated.notes,
    })
}

/// Open the chosen store: the SQLite file in the data dir, or the DynamoDB table (whose connection
/// is warmed up, so a missing table or endpoint fails at start).
///
/// # Errors
/// When the store cannot be opened or reached.
#[cfg_attr(not(feature = "dynamodb"), allow(clippy::unused_async))] // async with DynamoDB
pub async fn open_store(args: &ServeArgs, store: &StoreArgs) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match store.kind {
        StoreKind::Sqlite => {
            let path = args.database_path();
            private_database_files(&path)?;
            Arc::new(
                SqliteStore::open(&path).with_context(|| format!("opening {}", path.display()))?,
            )
        }
        #[cfg(not(feature = "dynamodb"))]
        StoreKind::Dynamodb => anyhow::bail!("{}", crate::args::NO_DYNAMODB),
        #[cfg(feature = "dynamodb")]
        StoreKind::Dynamodb => {
            let table = &store.dynamodb.table;
            let dynamo =
                blepay_dynamodb::DynamoStore::from_env(table, store.dynamodb.endpoint.as_deref())
                    .await?;
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
    let scheme = if bound.options.tls.is_some() {
        "HTTPS (TLS)"
    } else {
        "plain HTTP"
    };
    tracing::info!(%addr, data_dir = %args.data_dir.display(), "blepay serving {scheme} and gRPC");
    if let Some(device) = &bound.device_listener {
        tracing::info!(addr = %device.local_addr()?, "machine listener: plain HTTP, POST /v1/device only");
    }
    if bound.options.grpc_reflection {
        tracing::info!("gRPC reflection is on");
    }
    let sweep = Duration::from_secs(args.sweep_interval_secs.max(1));
    bound.serve(sweep, shutdown_signal()).await?;
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
