//! The servers of one run: the real one (`serve::bind_with`, or on DynamoDB with its request
//! counter) and the hello-world ceiling on the same axum + tonic stack, both on a runtime of
//! their own (one worker per core), apart from the clients'.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
#[cfg(feature = "dynamodb")]
pub(super) use blepay_dynamodb::RequestCounter;
use blepay_proto::pb::v1 as pb;
use blepay_proto::pb::v1::device_service_server::{DeviceService, DeviceServiceServer};
use blepay_service::App;

use super::BenchArgs;
use super::cost::SERVER_THREAD;
use crate::args::{ServeArgs, StoreArgs, StoreKind};

pub(super) const JWT_SECRET: &str = "bench-jwt-secret-0123456789abcdef";
pub(super) const OPS_TOKEN: &str = "bench-ops-token-0123456789abcdef";

/// The servers of one run.
pub(super) struct Env {
    pub(super) app: App,
    pub(super) base: String,
    pub(super) blepay_addr: SocketAddr,
    pub(super) hello_addr: SocketAddr,
    pub(super) data_dir: PathBuf,
    /// The SQLite database (`None` on DynamoDB).
    pub(super) database: Option<PathBuf>,
    /// Counts the requests the DynamoDB store sends (`--store dynamodb`).
    pub(super) dynamo: Option<RequestCounter>,
    /// The server runtime's worker threads (as many as the machine has cores).
    pub(super) server_threads: usize,
    pub(super) _dir: tempfile::TempDir,
    pub(super) tasks: Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
    /// The runtime both servers run on, threads named [`SERVER_THREAD`], apart from the clients'
    /// (so their CPU time can be told apart: `cost.rs`).
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Env {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        // Dropped from inside the clients' runtime: a runtime may not block there.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// What the server runtime hands back once both servers listen.
struct Started {
    app: App,
    dynamo: Option<RequestCounter>,
    blepay_addr: SocketAddr,
    hello_addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Env {
    pub(super) async fn start(args: &BenchArgs) -> anyhow::Result<Self> {
        let dir = match &args.dir {
            Some(d) => tempfile::tempdir_in(d),
            None => tempfile::tempdir(),
        }
        .context("creating the temporary data directory")?;
        let master = hex::encode(rand::random::<[u8; 32]>());
        let serve = ServeArgs {
            master_keys: Some(format!("0:{master}").parse()?),
            jwt_secret: Some(JWT_SECRET.parse()?),
            ops_token: Some(OPS_TOKEN.parse()?),
            // Long enough that nothing expires or goes offline while the bench runs.
            start_timeout_secs: 3600,
            offline_after_secs: 3600,
            active_timeout_secs: 3600,
            sweep_interval_secs: 3600,
            // The fleet's phones pay as fast as they can: no per-user throttle in a load test.
            pay_rate_max: u32::MAX,
            max_unstarted_per_user: blepay_service::config::MAX_UNSTARTED_PER_USER,
            ..ServeArgs::local(dir.path().join("server"))
        };
        // The server gets a runtime of its own with one worker per core, as `blepay serve` has;
        // its blocking threads (SQLite's) are kept for the whole run, so none exits with CPU
        // time the readings would lose.
        let server_threads = std::thread::available_parallelism().map_or(2, usize::from);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(server_threads)
            .thread_name(SERVER_THREAD)
            .thread_keep_alive(Duration::from_secs(24 * 3600))
            .enable_all()
            .build()
            .context("starting the server runtime")?;
        let (serve_args, store_args) = (serve.clone(), args.store.clone());
        // The store is opened, and both servers bound, inside the server runtime: what they
        // spawn runs there.
        let started = runtime
            .spawn(async move { start_servers(&serve_args, &store_args).await })
            .await
            .context("the server runtime")??;
        let database = matches!(args.store.kind, StoreKind::Sqlite).then(|| serve.database_path());
        Ok(Self {
            app: started.app,
            base: format!("http://{}", started.blepay_addr),
            blepay_addr: started.blepay_addr,
            hello_addr: started.hello_addr,
            data_dir: serve.data_dir,
            database,
            dynamo: started.dynamo,
            server_threads,
            _dir: dir,
            tasks: started.tasks,
            runtime: Some(runtime),
        })
    }
}

/// Bind blepay (SQLite or DynamoDB) and the hello-world server, and spawn both (on the runtime
/// this runs on).
async fn start_servers(serve: &ServeArgs, store: &StoreArgs) -> anyhow::Result<Started> {
    let (listener, app, dynamo) = match store.kind {
        StoreKind::Sqlite => {
            let bound = crate::serve::bind_with(serve, store).await?;
            (bound.listener, bound.app, None)
        }
        #[cfg(not(feature = "dynamodb"))]
        StoreKind::Dynamodb => anyhow::bail!("{}", crate::args::NO_DYNAMODB),
        #[cfg(feature = "dynamodb")]
        StoreKind::Dynamodb => {
            // Built here rather than by `serve::bind_with`, to keep its request counter.
            let (listener, app, counter) = bind_dynamodb(serve, store).await?;
            (listener, app, Some(counter))
        }
    };
    let blepay_addr = listener.local_addr()?;
    let server = tokio::spawn(blepay_service::server::serve(
        listener,
        app.clone(),
        Duration::from_secs(3600),
        std::future::pending(),
    ));
    let hello = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hello_addr = hello.local_addr()?;
    let hello_task = tokio::spawn(async move { axum::serve(hello, hello_router()).await });
    Ok(Started {
        app,
        dynamo,
        blepay_addr,
        hello_addr,
        tasks: vec![server, hello_task],
    })
}

/// Without the `dynamodb` feature there is no DynamoDB store and so no request counter: a type
/// with no value (`Option<RequestCounter>` is always `None`).
#[cfg(not(feature = "dynamodb"))]
#[derive(Debug, Clone)]
pub(super) enum RequestCounter {}

#[cfg(not(feature = "dynamodb"))]
impl RequestCounter {
    pub(super) fn count(&self) -> u64 {
        match *self {}
    }

    pub(super) fn by_operation(&self) -> std::collections::BTreeMap<String, u64> {
        match *self {}
    }
}

/// The server on the DynamoDB table `store` names (created when missing), and the counter of the
/// requests its store sends.
#[cfg(feature = "dynamodb")]
pub(super) async fn bind_dynamodb(
    serve: &ServeArgs,
    store: &crate::args::StoreArgs,
) -> anyhow::Result<(tokio::net::TcpListener, App, RequestCounter)> {
    let (config, _generated) = serve.resolve()?;
    let table = &store.dynamodb.table;
    let endpoint = store.dynamodb.endpoint.as_deref();
    let dynamo = blepay_dynamodb::DynamoStore::from_env(table, endpoint).await?;
    blepay_dynamodb::create_table(dynamo.client(), table)
        .await
        .with_context(|| format!("creating the DynamoDB table {table} (endpoint {endpoint:?})"))?;
    dynamo
        .warm_up()
        .await
        .with_context(|| format!("DynamoDB table {table}"))?;
    let counter = dynamo.request_counter();
    let app = App::new(
        config,
        std::sync::Arc::new(dynamo),
        blepay_service::system_clock(),
    );
    let listener = tokio::net::TcpListener::bind(serve.listen)
        .await
        .with_context(|| format!("binding {}", serve.listen))?;
    Ok((listener, app, counter))
}

/// The tonic hello-world: blepay's generated `DeviceService`, answering with the frame it got.
#[derive(Debug, Clone, Copy)]
pub(super) struct Echo;

#[tonic::async_trait]
impl DeviceService for Echo {
    async fn exchange(
        &self,
        req: tonic::Request<pb::DeviceFrame>,
    ) -> Result<tonic::Response<pb::DeviceFrame>, tonic::Status> {
        Ok(tonic::Response::new(req.into_inner()))
    }
}

/// The hello-world server: the same axum + tonic stack as blepay, doing nothing.
pub(super) fn hello_router() -> axum::Router {
    let grpc = tonic::service::Routes::new(DeviceServiceServer::new(Echo));
    axum::Router::new()
        .route(
            "/hello",
            axum::routing::post(|_body: axum::body::Bytes| async {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    r#"{"hello":"world"}"#,
                )
            }),
        )
        .route_service("/blepay.v1.DeviceService/{method}", grpc)
}
