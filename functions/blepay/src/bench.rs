//! `blepay bench`: how fast the self-hosted server is on this machine, against the ceiling of its
//! own transport.
//!
//! One process starts, in a temporary directory:
//! - the real server (`serve::bind` + `server::serve`, SQLite with `synchronous=FULL`), and
//! - a hello-world server built from the same stack: an axum route `POST /hello` that reads the
//!   body and answers `{"hello":"world"}`, and a tonic unary service answering with what it got.
//!   The tonic one reuses blepay's own generated `DeviceService/Exchange(DeviceFrame)` with an
//!   echo implementation, so there is no second `.proto`: the same codegen, codec, HTTP/2 stack
//!   and axum routing as the real gRPC services, and no work behind it.
//!
//! Then it drives, over HTTP/1.1 JSON (a pooled `reqwest` client) and over gRPC (one tonic
//! channel per client), with `--concurrency` clients for `--duration` seconds each:
//! - **verify**: a freshly signed advert of one of the machines;
//! - **pay**: in rounds, one pay per machine (a fresh advert per machine and use counter); the
//!   sessions are settled (start + final report) between rounds, off the clock, so the machines
//!   are free again — `pay_rps` is pays / time spent paying;
//! - **cycle**: pay → poll (the grant arrives) → start → final report, each client on machines
//!   of its own; `cycle_rps` counts cycles, `cycle_req_rps` the four requests of each.
//!
//! Each figure is reported as req/s, p50 and p99 latency, and the ratio to the hello-world server
//! over the same transport. Everything (servers and clients) shares this machine's cores, as a
//! single-box deployment would; the numbers say what the server does on it, not what a cluster
//! would. The last line printed is one JSON object with every figure.
//!
//! `--link-bytes` instead measures what one payment cycle costs on the machine's (2G) link:
//! the exact frames of a real poll, start and final report, with HTTP/1.1 framing, against the
//! same messages written as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use blepay_core::{DeviceId, KeyVersion, SessionId, UseCounter, UserId};
use blepay_device_client::{Answer, Identity, Request};
use blepay_dynamodb::{DynamoStore, RequestCounter};
use blepay_proto::pb::v1 as pb;
use blepay_proto::pb::v1::device_service_client::DeviceServiceClient;
use blepay_proto::pb::v1::device_service_server::{DeviceService, DeviceServiceServer};
use blepay_proto::pb::v1::phone_service_client::PhoneServiceClient;
use blepay_proto::{AdvertFlags, DeviceKey};
use blepay_service::{App, ServeArgs, StoreArgs, StoreKind, system_clock};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;
use tonic::transport::Channel;

/// `blepay bench` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Concurrent clients (tokio tasks) per phase.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Seconds each phase is measured for (after a warm-up of a fifth of that).
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// A short run (3 s per phase) that finishes in under a minute.
    #[arg(long)]
    pub quick: bool,
    /// Machines registered (and kept online) for pay and the cycles; at least `--concurrency`.
    #[arg(long, default_value_t = 200)]
    pub machines: usize,
    /// The store behind the server (`--store dynamodb --dynamodb-endpoint URL` for a
    /// DynamoDB-API server; the table is created when missing). With DynamoDB the figures include
    /// the DynamoDB requests sent per operation.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Where the temporary data directory goes (default: the system's temp dir). The disk under
    /// it matters: every acknowledged write is fsynced.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Instead of the load test: bytes on the machine's link per payment cycle.
    #[arg(long)]
    pub link_bytes: bool,
    /// The `Host` header assumed on the machine's link (`--link-bytes`).
    #[arg(long, default_value = "pay.example.com")]
    pub link_host: String,
}

/// Run `blepay bench`.
///
/// # Errors
/// When the servers cannot start, the fleet cannot be set up, or the ledger does not reconcile.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let env = Env::start(&args).await?;
    if args.link_bytes {
        return link_bytes(&env, &args.link_host).await;
    }
    load(&env, &args).await
}

// ---------------------------------------------------------------------------------------------
// Servers
// ---------------------------------------------------------------------------------------------

const JWT_SECRET: &str = "bench-jwt-secret-0123456789abcdef";
const OPS_TOKEN: &str = "bench-ops-token-0123456789abcdef";
const PRICE: i64 = 25;
const MAX_AMOUNT: i64 = 250;
const TOP_UP: i64 = 1_000_000_000_000;

/// The servers of one run.
struct Env {
    app: App,
    base: String,
    blepay_addr: SocketAddr,
    hello_addr: SocketAddr,
    data_dir: PathBuf,
    /// Counts the requests the DynamoDB store sends (`--store dynamodb`).
    dynamo: Option<RequestCounter>,
    _dir: tempfile::TempDir,
    tasks: Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Drop for Env {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Env {
    async fn start(args: &BenchArgs) -> anyhow::Result<Self> {
        let dir = match &args.dir {
            Some(d) => tempfile::tempdir_in(d),
            None => tempfile::tempdir(),
        }
        .context("creating the temporary data directory")?;
        let master = hex::encode(rand::random::<[u8; 32]>());
        let serve = ServeArgs {
            listen: "127.0.0.1:0".parse()?,
            data_dir: dir.path().join("server"),
            master_keys: Some(format!("0:{master}").parse()?),
            jwt_secret: Some(JWT_SECRET.parse()?),
            ops_token: Some(OPS_TOKEN.parse()?),
            // Long enough that nothing expires or goes offline while the bench runs.
            start_timeout_secs: 3600,
            offline_after_secs: 3600,
            currency: "EUR".into(),
            sweep_interval_secs: 3600,
        };
        let (listener, app, dynamo) = match args.store.kind {
            StoreKind::Sqlite => {
                let bound = crate::serve::bind_with(&serve, &args.store).await?;
                (bound.listener, bound.app, None)
            }
            StoreKind::Dynamodb => {
                // Built here rather than by `serve::bind_with`, to keep its request counter.
                let (listener, app, counter) = bind_dynamodb(&serve, &args.store).await?;
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
        Ok(Self {
            app,
            base: format!("http://{blepay_addr}"),
            blepay_addr,
            hello_addr,
            data_dir: serve.data_dir,
            dynamo,
            _dir: dir,
            tasks: vec![server, hello_task],
        })
    }
}

/// The server on the DynamoDB table `store` names (created when missing), and the counter of the
/// requests its store sends.
async fn bind_dynamodb(
    serve: &ServeArgs,
    store: &StoreArgs,
) -> anyhow::Result<(tokio::net::TcpListener, App, RequestCounter)> {
    let (config, _generated) = serve.resolve()?;
    let table = &store.dynamodb.table;
    let endpoint = store.dynamodb.endpoint.as_deref();
    let dynamo = DynamoStore::from_env(table, endpoint).await?;
    blepay_dynamodb::create_table(dynamo.client(), table)
        .await
        .with_context(|| format!("creating the DynamoDB table {table} (endpoint {endpoint:?})"))?;
    dynamo
        .warm_up()
        .await
        .with_context(|| format!("DynamoDB table {table}"))?;
    let counter = dynamo.request_counter();
    let app = App::new(config, Arc::new(dynamo), system_clock());
    let listener = tokio::net::TcpListener::bind(serve.listen)
        .await
        .with_context(|| format!("binding {}", serve.listen))?;
    Ok((listener, app, counter))
}

/// The tonic hello-world: blepay's generated `DeviceService`, answering with the frame it got.
#[derive(Debug, Clone, Copy)]
struct Echo;

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
fn hello_router() -> axum::Router {
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

// ---------------------------------------------------------------------------------------------
// The fleet: machines and users
// ---------------------------------------------------------------------------------------------

/// A simulated machine: its identity, next sequence number and use counter. One client at a
/// time uses a machine, so the counters only need to be shared, not locked.
struct Machine {
    identity: Identity,
    seq: AtomicU32,
    use_counter: AtomicU16,
}

impl Machine {
    fn advert_b64(&self, now: u64) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.advert_bytes(now))
    }

    fn advert_bytes(&self, now: u64) -> [u8; 24] {
        let uc = UseCounter::new(self.use_counter.load(Ordering::SeqCst));
        self.identity.advert(now, uc, AdvertFlags::NONE).encode()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Http,
    Grpc,
}

impl Transport {
    const fn name(self) -> &'static str {
        match self {
            Self::Http => "HTTP",
            Self::Grpc => "gRPC",
        }
    }
}

/// Everything the clients share.
struct Ctx {
    app: App,
    base: String,
    hello_base: String,
    http: reqwest::Client,
    /// One channel per client to blepay, and one per client to the hello-world server.
    channels: Vec<Channel>,
    hello_channels: Vec<Channel>,
    machines: Vec<Machine>,
    /// One user (wallet + JWT) per client.
    tokens: Vec<String>,
    /// Makes idempotency keys unique across phases.
    pays: AtomicUsize,
    /// Makes ids and keys unique across runs (a DynamoDB table outlives a run).
    run: String,
}

impl Ctx {
    fn channel(&self, worker: usize) -> anyhow::Result<Channel> {
        self.channels
            .get(worker)
            .cloned()
            .ok_or_else(|| anyhow!("no channel for client {worker}"))
    }

    fn token(&self, worker: usize) -> anyhow::Result<&str> {
        self.tokens
            .get(worker)
            .map(String::as_str)
            .ok_or_else(|| anyhow!("no user for client {worker}"))
    }

    fn machine(&self, i: usize) -> anyhow::Result<&Machine> {
        self.machines
            .get(i)
            .ok_or_else(|| anyhow!("no machine {i}"))
    }

    async fn ops_post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(OPS_TOKEN)
            .json(body)
            .send()
            .await?;
        let status = r.status();
        let v: Value = r.json().await?;
        if !status.is_success() {
            bail!("POST {path}: {status} {v}");
        }
        Ok(v)
    }

    // ----- the operations, over either transport -----

    async fn verify(&self, t: Transport, worker: usize, m: usize) -> anyhow::Result<()> {
        let machine = self.machine(m)?;
        let token = self.token(worker)?;
        let now = self.app.now();
        match t {
            Transport::Http => {
                let r = self
                    .http
                    .post(format!("{}/v1/verify", self.base))
                    .bearer_auth(token)
                    .json(&json!({ "advert": machine.advert_b64(now) }))
                    .send()
                    .await?;
                expect_ok(r).await.map(drop)
            }
            Transport::Grpc => {
                let mut c = PhoneServiceClient::new(self.channel(worker)?);
                let req = pb::VerifyRequest {
                    advert: machine.advert_bytes(now).to_vec(),
                };
                c.verify(authorized(req, token)?).await?;
                Ok(())
            }
        }
    }

    async fn pay(&self, t: Transport, worker: usize, m: usize) -> anyhow::Result<SessionId> {
        let machine = self.machine(m)?;
        let token = self.token(worker)?;
        let key = format!(
            "bench-{}-{}",
            self.run,
            self.pays.fetch_add(1, Ordering::Relaxed)
        );
        let now = self.app.now();
        let session = match t {
            Transport::Http => {
                let r = self
                    .http
                    .post(format!("{}/v1/pay", self.base))
                    .bearer_auth(token)
                    .json(&json!({
                        "advert": machine.advert_b64(now),
                        "maxAmount": MAX_AMOUNT,
                        "idempotencyKey": key,
                    }))
                    .send()
                    .await?;
                let v: Value = serde_json::from_slice(&expect_ok(r).await?)?;
                v["sessionId"]
                    .as_str()
                    .ok_or_else(|| anyhow!("pay answer without sessionId: {v}"))?
                    .to_owned()
            }
            Transport::Grpc => {
                let mut c = PhoneServiceClient::new(self.channel(worker)?);
                let req = pb::PayRequest {
                    advert: machine.advert_bytes(now).to_vec(),
                    max_amount: MAX_AMOUNT,
                    idempotency_key: key,
                };
                c.pay(authorized(req, token)?)
                    .await?
                    .into_inner()
                    .session_id
            }
        };
        SessionId::parse(&session).map_err(|e| anyhow!("sessionId {session}: {e}"))
    }

    /// One authenticated machine exchange; a refusal is an error.
    async fn device(
        &self,
        t: Transport,
        worker: usize,
        m: usize,
        body: &Request,
    ) -> anyhow::Result<Answer> {
        let machine = self.machine(m)?;
        let seq = machine.seq.fetch_add(1, Ordering::SeqCst);
        let pending = machine.identity.request(seq, body);
        let bytes = match t {
            Transport::Http => {
                let r = self
                    .http
                    .post(format!("{}/v1/device", self.base))
                    .header("content-type", "application/octet-stream")
                    .body(pending.frame.clone())
                    .send()
                    .await?;
                r.bytes().await?.to_vec()
            }
            Transport::Grpc => {
                let mut c = DeviceServiceClient::new(self.channel(worker)?);
                let req = pb::DeviceFrame {
                    frame: pending.frame.clone(),
                };
                c.exchange(req).await?.into_inner().frame
            }
        };
        let answer = machine
            .identity
            .open(&pending, &bytes)
            .map_err(|e| anyhow!("machine answer does not authenticate: {e}"))?;
        if let Some(code) = answer.refusal_code() {
            bail!("machine request refused: {}", code.as_str());
        }
        Ok(answer)
    }

    /// Start and finish a session with one unit: the machine is free again.
    async fn settle(
        &self,
        t: Transport,
        worker: usize,
        m: usize,
        session: SessionId,
    ) -> anyhow::Result<()> {
        self.device(t, worker, m, &blepay_device_client::start(session))
            .await?;
        let units = blepay_core::Units::new(1);
        self.device(
            t,
            worker,
            m,
            &blepay_device_client::report(session, units, true),
        )
        .await?;
        self.machine(m)?.use_counter.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// pay → poll (must bring the grant) → start → final report.
    async fn cycle(&self, t: Transport, worker: usize, m: usize) -> anyhow::Result<()> {
        let session = self.pay(t, worker, m).await?;
        let polled = self
            .device(t, worker, m, &blepay_device_client::poll())
            .await?;
        let granted = polled.body.usable_grants().any(|g| g.session == session);
        if !granted {
            bail!("the poll did not bring the grant of {session}");
        }
        self.settle(t, worker, m, session).await
    }

    async fn hello(&self, t: Transport, worker: usize) -> anyhow::Result<()> {
        match t {
            Transport::Http => {
                // The same body and header sizes as a verify.
                let r = self
                    .http
                    .post(format!("{}/hello", self.hello_base))
                    .bearer_auth(self.token(worker)?)
                    .json(&json!({ "advert": "EAECAwQFBgcIA4REwAAHALsmIx2D66T7" }))
                    .send()
                    .await?;
                expect_ok(r).await.map(drop)
            }
            Transport::Grpc => {
                let channel = self
                    .hello_channels
                    .get(worker)
                    .cloned()
                    .ok_or_else(|| anyhow!("no hello channel for client {worker}"))?;
                let mut c = DeviceServiceClient::new(channel);
                c.exchange(pb::DeviceFrame {
                    frame: vec![0x10; 32],
                })
                .await?;
                Ok(())
            }
        }
    }
}

async fn expect_ok(r: reqwest::Response) -> anyhow::Result<bytes::Bytes> {
    let status = r.status();
    let body = r.bytes().await?;
    if status.is_success() {
        Ok(body)
    } else {
        bail!("{status}: {}", String::from_utf8_lossy(&body))
    }
}

fn authorized<T>(msg: T, token: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut req = tonic::Request::new(msg);
    let value = format!("Bearer {token}")
        .parse()
        .map_err(|e| anyhow!("authorization metadata: {e}"))?;
    req.metadata_mut().insert("authorization", value);
    Ok(req)
}

async fn connect(addr: SocketAddr) -> anyhow::Result<Channel> {
    Ok(Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?)
}

/// Register the machines, top up one user per client, bring every machine online (a poll), and
/// connect the gRPC channels.
async fn setup(env: &Env, concurrency: usize, machines: usize) -> anyhow::Result<Arc<Ctx>> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency * 2)
        .timeout(Duration::from_secs(30))
        .build()?;
    let mut channels = Vec::with_capacity(concurrency);
    let mut hello_channels = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        channels.push(connect(env.blepay_addr).await?);
        hello_channels.push(connect(env.hello_addr).await?);
    }
    let now = env.app.now();
    let run = hex::encode(rand::random::<[u8; 3]>());
    let mut tokens = Vec::with_capacity(concurrency);
    for w in 0..concurrency {
        let user = UserId::parse(&format!("bench-{run}-u{w}")).map_err(|e| anyhow!(e))?;
        tokens.push(blepay_service::auth::mint_token(
            JWT_SECRET,
            &user,
            now,
            24 * 3600,
        )?);
    }
    let ctx = Ctx {
        app: env.app.clone(),
        base: env.base.clone(),
        hello_base: format!("http://{}", env.hello_addr),
        http,
        channels,
        hello_channels,
        machines: Vec::with_capacity(machines),
        tokens,
        pays: AtomicUsize::new(0),
        run: run.clone(),
    };
    for w in 0..concurrency {
        ctx.ops_post(
            &format!("/v1/ops/wallets/bench-{run}-u{w}/topup"),
            &json!({ "amount": TOP_UP, "idempotencyKey": format!("bench-{run}-topup-{w}") }),
        )
        .await?;
    }
    // Registration is done by a few concurrent operators.
    let ids: Vec<u64> = (0..machines as u64)
        .map(|i| (0xb1e0_u64 << 48) | (u64::from(rand::random::<u16>()) << 32) | i)
        .collect();
    let ctx_ref = Arc::new(ctx);
    let next = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for _ in 0..concurrency.min(16) {
        let (c, next, ids) = (ctx_ref.clone(), next.clone(), ids.clone());
        set.spawn(async move {
            let mut keys = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(id) = ids.get(i) else { break };
                let reg = c
                    .ops_post(
                        "/v1/ops/devices",
                        &json!({
                            "deviceId": format!("{id:016x}"), "name": format!("Bench dispenser {i}"),
                            "pricePerUnit": PRICE, "unitName": "litre", "currency": "EUR",
                        }),
                    )
                    .await?;
                let key = reg["deviceKey"]
                    .as_str()
                    .ok_or_else(|| anyhow!("no deviceKey in {reg}"))?;
                let kv = reg["keyVersion"].as_u64().unwrap_or(0);
                keys.push((i, *id, key.to_owned(), kv));
            }
            anyhow::Ok(keys)
        });
    }
    let mut registered = Vec::with_capacity(machines);
    while let Some(r) = set.join_next().await {
        registered.extend(r??);
    }
    registered.sort_by_key(|r| r.0);
    let mut ctx = Arc::try_unwrap(ctx_ref).map_err(|_| anyhow!("setup still shared"))?;
    for (_, id, key, kv) in registered {
        ctx.machines.push(Machine {
            identity: Identity {
                device_id: DeviceId::from_bytes(id.to_be_bytes()),
                key_version: KeyVersion::new(u8::try_from(kv)?).map_err(|e| anyhow!(e))?,
                key: DeviceKey::parse_hex(&key).map_err(|e| anyhow!(e))?,
            },
            seq: AtomicU32::new(1),
            use_counter: AtomicU16::new(0),
        });
    }
    let ctx = Arc::new(ctx);
    for_each_machine(&ctx, concurrency, |c, w, m| async move {
        c.device(Transport::Http, w, m, &blepay_device_client::poll())
            .await
            .map(drop)
    })
    .await?;
    Ok(ctx)
}

/// Run `op(ctx, client, machine)` once for every machine, `concurrency` clients at a time.
async fn for_each_machine<F, Fut>(ctx: &Arc<Ctx>, concurrency: usize, op: F) -> anyhow::Result<()>
where
    F: Fn(Arc<Ctx>, usize, usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for w in 0..concurrency {
        let (c, next, op) = (ctx.clone(), next.clone(), op.clone());
        set.spawn(async move {
            loop {
                let m = next.fetch_add(1, Ordering::Relaxed);
                if m >= c.machines.len() {
                    return anyhow::Ok(());
                }
                op(c.clone(), w, m).await?;
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Measuring
// ---------------------------------------------------------------------------------------------

/// DynamoDB requests sent during a stretch of the run: in total and by DynamoDB operation.
#[derive(Debug, Clone, Default)]
struct DbCount {
    requests: u64,
    by_operation: BTreeMap<String, u64>,
}

impl DbCount {
    fn read(counter: &RequestCounter) -> Self {
        Self {
            requests: counter.count(),
            by_operation: counter.by_operation(),
        }
    }

    /// What `counter` sent since `self` was read.
    fn since(&self, counter: &RequestCounter) -> Self {
        let now = Self::read(counter);
        let by_operation = now
            .by_operation
            .iter()
            .filter_map(|(op, n)| {
                let d = n.saturating_sub(self.by_operation.get(op).copied().unwrap_or(0));
                (d > 0).then(|| (op.clone(), d))
            })
            .collect();
        Self {
            requests: now.requests.saturating_sub(self.requests),
            by_operation,
        }
    }

    fn add(&mut self, other: &Self) {
        self.requests += other.requests;
        for (op, n) in &other.by_operation {
            *self.by_operation.entry(op.clone()).or_default() += n;
        }
    }
}

/// Run `phase`; with a counter, also the DynamoDB requests it sent.
async fn counted<Fut>(
    counter: Option<&RequestCounter>,
    phase: Fut,
) -> anyhow::Result<(Figures, Option<DbCount>)>
where
    Fut: Future<Output = anyhow::Result<Figures>>,
{
    let before = counter.map(DbCount::read);
    let figures = phase.await?;
    let sent = counter.zip(before).map(|(c, b)| b.since(c));
    Ok((figures, sent))
}

/// What one phase measured.
#[derive(Debug)]
struct Figures {
    ops: u64,
    errors: u64,
    first_error: Option<String>,
    secs: f64,
    hist: Histogram<u64>,
    /// Every operation run in the phase, warm-up and those outside the window included (what
    /// the DynamoDB requests of the phase are divided by).
    all_ops: u64,
    /// DynamoDB requests sent by those `all_ops` operations (`--store dynamodb`).
    db: Option<DbCount>,
}

impl Figures {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            ops: 0,
            errors: 0,
            first_error: None,
            secs: 0.0,
            hist: Histogram::new_with_bounds(1, 120_000_000, 3)?,
            all_ops: 0,
            db: None,
        })
    }

    fn record(&mut self, took: Duration) {
        self.ops += 1;
        self.hist
            .saturating_record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
    }

    fn error(&mut self, e: &anyhow::Error) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(format!("{e:#}"));
        }
    }

    fn merge(&mut self, other: &Self) -> anyhow::Result<()> {
        self.ops += other.ops;
        self.all_ops += other.all_ops;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
        self.hist.add(&other.hist)?;
        Ok(())
    }

    #[allow(clippy::cast_precision_loss)]
    fn rps(&self) -> f64 {
        if self.secs > 0.0 {
            self.ops as f64 / self.secs
        } else {
            0.0
        }
    }

    #[allow(clippy::cast_precision_loss)]
    fn ms(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }

    /// DynamoDB requests per operation run (`--store dynamodb`).
    #[allow(clippy::cast_precision_loss)]
    fn db_per_op(&self) -> Option<f64> {
        let db = self.db.as_ref()?;
        (self.all_ops > 0).then(|| db.requests as f64 / self.all_ops as f64)
    }
}

/// Phase timing: a warm-up, then the measured window.
#[derive(Debug, Clone, Copy)]
struct Timing {
    warmup: Duration,
    measure: Duration,
}

/// `concurrency` clients each running `op(ctx, client, n)` back to back; operations started and
/// finished inside the measured window count.
async fn closed_loop<F, Fut>(
    ctx: &Arc<Ctx>,
    concurrency: usize,
    timing: Timing,
    op: F,
) -> anyhow::Result<Figures>
where
    F: Fn(Arc<Ctx>, usize, u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let from = Instant::now() + timing.warmup;
    let end = from + timing.measure;
    let mut set = JoinSet::new();
    for w in 0..concurrency {
        let (c, op) = (ctx.clone(), op.clone());
        set.spawn(async move {
            let mut figures = Figures::new()?;
            let mut n = 0u64;
            loop {
                let start = Instant::now();
                if start >= end {
                    break;
                }
                let r = op(c.clone(), w, n).await;
                n += 1;
                figures.all_ops += 1;
                let done = Instant::now();
                if start < from {
                    continue;
                }
                match r {
                    Ok(()) if done <= end => figures.record(done - start),
                    Ok(()) => {}
                    Err(e) => figures.error(&e),
                }
            }
            anyhow::Ok(figures)
        });
    }
    let mut total = Figures::new()?;
    while let Some(r) = set.join_next().await {
        total.merge(&r??)?;
    }
    total.secs = timing.measure.as_secs_f64();
    Ok(total)
}

/// Pay in rounds: every machine paid once (timed), then every session settled (not timed).
/// With `db`, the DynamoDB requests of the pays (every round, settling excluded) are counted.
async fn pay_rounds(
    ctx: &Arc<Ctx>,
    transport: Transport,
    concurrency: usize,
    timing: Timing,
    db: Option<&RequestCounter>,
) -> anyhow::Result<Figures> {
    let mut total = Figures::new()?;
    let mut db_total = db.map(|_| DbCount::default());
    let mut paying = Duration::ZERO;
    let mut warm = Duration::ZERO;
    while paying < timing.measure {
        let sessions: Arc<Vec<std::sync::Mutex<Option<SessionId>>>> = Arc::new(
            (0..ctx.machines.len())
                .map(|_| std::sync::Mutex::new(None))
                .collect(),
        );
        let next = Arc::new(AtomicUsize::new(0));
        let db_before = db.map(DbCount::read);
        let began = Instant::now();
        let mut set = JoinSet::new();
        for w in 0..concurrency {
            let (c, next, sessions) = (ctx.clone(), next.clone(), sessions.clone());
            set.spawn(async move {
                let mut figures = Figures::new()?;
                loop {
                    let m = next.fetch_add(1, Ordering::Relaxed);
                    let Some(slot) = sessions.get(m) else { break };
                    let start = Instant::now();
                    figures.all_ops += 1;
                    match c.pay(transport, w, m).await {
                        Ok(s) => {
                            figures.record(start.elapsed());
                            if let Ok(mut g) = slot.lock() {
                                *g = Some(s);
                            }
                        }
                        Err(e) => figures.error(&e),
                    }
                }
                anyhow::Ok(figures)
            });
        }
        let mut round = Figures::new()?;
        while let Some(r) = set.join_next().await {
            round.merge(&r??)?;
        }
        let took = began.elapsed();
        if let (Some(t), Some(c), Some(b)) = (db_total.as_mut(), db, db_before.as_ref()) {
            t.add(&b.since(c));
        }
        if warm < timing.warmup {
            warm += took;
            total.all_ops += round.all_ops;
        } else {
            paying += took;
            total.merge(&round)?;
        }
        let s = sessions.clone();
        for_each_machine(ctx, concurrency, move |c, w, m| {
            let session = s.get(m).and_then(|slot| slot.lock().ok().and_then(|g| *g));
            async move {
                match session {
                    Some(session) => c.settle(transport, w, m, session).await,
                    None => Ok(()),
                }
            }
        })
        .await?;
    }
    total.secs = paying.as_secs_f64();
    total.db = db_total;
    Ok(total)
}

/// One row of the results.
struct Row {
    name: String,
    figures: Figures,
    /// Requests per operation (4 for a cycle).
    requests: u64,
    baseline_rps: f64,
}

impl Row {
    #[allow(clippy::cast_precision_loss)]
    fn req_rps(&self) -> f64 {
        self.figures.rps() * self.requests as f64
    }
    fn ratio(&self) -> f64 {
        if self.baseline_rps > 0.0 {
            self.req_rps() / self.baseline_rps
        } else {
            0.0
        }
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

async fn load(env: &Env, args: &BenchArgs) -> anyhow::Result<()> {
    let concurrency = args.concurrency.max(1);
    let machines = args.machines.max(concurrency);
    let secs = if args.quick { 3 } else { args.duration.max(1) };
    let timing = Timing {
        measure: Duration::from_secs(secs),
        warmup: Duration::from_millis(secs * 200),
    };
    let began = Instant::now();
    println!(
        "blepay bench: store {} (data dir {}), {concurrency} clients, {machines} machines, {secs} s per phase",
        store_name(&args.store),
        env.data_dir.display()
    );
    let ctx = setup(env, concurrency, machines).await?;
    println!(
        "setup: {machines} machines registered and online, {concurrency} users topped up ({:.1} s)",
        began.elapsed().as_secs_f64()
    );

    let mut rows = Vec::new();
    for t in [Transport::Http, Transport::Grpc] {
        let base = closed_loop(&ctx, concurrency, timing, move |c, w, _| async move {
            c.hello(t, w).await
        })
        .await?;
        let baseline_rps = base.rps();
        let m = ctx.machines.len();
        let db = env.dynamo.as_ref();
        let (mut verify, verify_db) = counted(
            db,
            closed_loop(&ctx, concurrency, timing, move |c, w, n| async move {
                let machine = (w + usize::try_from(n).unwrap_or(0) * 7) % m;
                c.verify(t, w, machine).await
            }),
        )
        .await?;
        verify.db = verify_db;
        let pay = pay_rounds(&ctx, t, concurrency, timing, db).await?;
        let (mut cycle, cycle_db) = counted(
            db,
            closed_loop(&ctx, concurrency, timing, move |c, w, n| async move {
                // Client w owns machines w, w + concurrency, w + 2 concurrency, ... (below m): no
                // two clients share one, since a machine serves one session at a time.
                let owned = m.saturating_sub(w).div_ceil(concurrency).max(1);
                let k = usize::try_from(n).unwrap_or(0) % owned;
                let machine = w + k * concurrency;
                c.cycle(t, w, machine).await
            }),
        )
        .await?;
        cycle.db = cycle_db;
        let name = t.name();
        rows.push(Row {
            name: format!("{name} hello-world"),
            figures: base,
            requests: 1,
            baseline_rps,
        });
        for (op, figures, requests) in [("verify", verify, 1), ("pay", pay, 1), ("cycle", cycle, 4)]
        {
            rows.push(Row {
                name: format!("{name} {op}"),
                figures,
                requests,
                baseline_rps,
            });
        }
    }

    let audit = ctx.app.store().audit().await?;
    print!("{}", table(&rows));
    println!(
        "ledger after the run: top-ups {} = wallets {} + revenue {}: {}",
        audit.top_ups,
        audit.available + audit.held,
        audit.revenue,
        if audit.reconciles() {
            "reconciles"
        } else {
            "DOES NOT RECONCILE"
        }
    );
    for r in &rows {
        if let Some(e) = &r.figures.first_error {
            println!("{}: {} errors, the first: {e}", r.name, r.figures.errors);
        }
    }
    let summary = summary_json(
        store_name(&args.store),
        &rows,
        concurrency,
        machines,
        secs,
        audit.reconciles(),
    );
    println!("total time {:.1} s", began.elapsed().as_secs_f64());
    println!("{summary}");
    if !audit.reconciles() {
        bail!("the ledger does not reconcile after the bench");
    }
    Ok(())
}

fn store_name(store: &StoreArgs) -> &'static str {
    match store.kind {
        StoreKind::Sqlite => "sqlite",
        StoreKind::Dynamodb => "dynamodb",
    }
}

fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    // The DynamoDB column only when the store is DynamoDB.
    let dynamo = rows.iter().any(|r| r.figures.db.is_some());
    let _ = write!(
        out,
        "{:<20} {:>10} {:>10} {:>9} {:>9} {:>9} {:>7}",
        "phase", "ops/s", "req/s", "p50 ms", "p99 ms", "ratio", "errors"
    );
    if dynamo {
        let _ = write!(out, " {:>12}", "ddb req/op");
    }
    let _ = writeln!(out);
    for r in rows {
        let _ = write!(
            out,
            "{:<20} {:>10.0} {:>10.0} {:>9.2} {:>9.2} {:>9.3} {:>7}",
            r.name,
            r.figures.rps(),
            r.req_rps(),
            r.figures.ms(0.5),
            r.figures.ms(0.99),
            r.ratio(),
            r.figures.errors
        );
        if dynamo {
            match r.figures.db_per_op() {
                Some(x) => {
                    let _ = write!(out, " {x:>12.3}");
                }
                None => {
                    let _ = write!(out, " {:>12}", "-");
                }
            }
        }
        let _ = writeln!(out);
    }
    for r in rows {
        if let Some(by_op) = db_by_operation(&r.figures) {
            let parts: Vec<String> = by_op.iter().map(|(op, x)| format!("{op} {x:.3}")).collect();
            let _ = writeln!(
                out,
                "{}: DynamoDB requests per operation by API call ({} operations): {}",
                r.name,
                r.figures.all_ops,
                parts.join(", ")
            );
        }
    }
    out
}

/// DynamoDB requests per operation run, by DynamoDB API call (`--store dynamodb`).
#[allow(clippy::cast_precision_loss)]
fn db_by_operation(f: &Figures) -> Option<BTreeMap<String, f64>> {
    let db = f.db.as_ref()?;
    if f.all_ops == 0 {
        return None;
    }
    Some(
        db.by_operation
            .iter()
            .map(|(op, n)| (op.clone(), *n as f64 / f.all_ops as f64))
            .collect(),
    )
}

fn summary_json(
    store: &str,
    rows: &[Row],
    concurrency: usize,
    machines: usize,
    secs: u64,
    reconciles: bool,
) -> Value {
    let mut o = serde_json::Map::new();
    o.insert("store".into(), json!(store));
    o.insert("concurrency".into(), json!(concurrency));
    o.insert("machines".into(), json!(machines));
    o.insert("duration_secs".into(), json!(secs));
    let mut errors = 0;
    for r in rows {
        errors += r.figures.errors;
        let (transport, op) = r.name.split_once(' ').unwrap_or(("", ""));
        let prefix = if transport == "gRPC" { "grpc_" } else { "" };
        if op == "hello-world" {
            o.insert(
                format!("{prefix}baseline_rps"),
                json!(round3(r.figures.rps())),
            );
            o.insert(
                format!("{prefix}baseline_p99_ms"),
                json!(round3(r.figures.ms(0.99))),
            );
            continue;
        }
        o.insert(format!("{prefix}{op}_rps"), json!(round3(r.figures.rps())));
        if r.requests > 1 {
            o.insert(format!("{prefix}{op}_req_rps"), json!(round3(r.req_rps())));
        }
        o.insert(format!("{prefix}{op}_ratio"), json!(round3(r.ratio())));
        o.insert(
            format!("{prefix}{op}_p50_ms"),
            json!(round3(r.figures.ms(0.5))),
        );
        o.insert(
            format!("{prefix}{op}_p99_ms"),
            json!(round3(r.figures.ms(0.99))),
        );
        if let Some(x) = r.figures.db_per_op() {
            o.insert(
                format!("{prefix}dynamodb_requests_per_{op}"),
                json!(round3(x)),
            );
        }
        if let Some(by_op) = db_by_operation(&r.figures) {
            let by_op: serde_json::Map<String, Value> = by_op
                .into_iter()
                .map(|(k, v)| (k, json!(round3(v))))
                .collect();
            o.insert(
                format!("{prefix}dynamodb_requests_per_{op}_by_operation"),
                Value::Object(by_op),
            );
        }
    }
    o.insert("errors".into(), json!(errors));
    o.insert("ledger_reconciles".into(), json!(reconciles));
    Value::Object(o)
}

// ---------------------------------------------------------------------------------------------
// Bytes on the machine's link
// ---------------------------------------------------------------------------------------------

/// The minimal HTTP/1.1 request framing around a body: request line, Host, Content-Type,
/// Content-Length, blank line.
pub fn request_head(path: &str, host: &str, content_type: &str, len: usize) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\n\r\n"
    )
}

/// The minimal HTTP/1.1 response framing: status line, Content-Type, Content-Length, blank line.
pub fn response_head(status: u16, reason: &str, content_type: &str, len: usize) -> String {
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\n\r\n"
    )
}

/// One message of the cycle as sent on the link.
struct LinkMessage {
    name: &'static str,
    /// The frame (binary body).
    body: usize,
    /// Minimal HTTP/1.1 framing + frame.
    http: usize,
    /// What `blepay serve` actually put on the wire for it (requests: what we sent).
    wire: usize,
    /// The same fields as JSON, in this API's proto3 JSON mapping (zero fields written).
    json: usize,
    /// The same, with zero-valued fields left out.
    json_compact: usize,
}

impl LinkMessage {
    fn json_http(&self, request: bool, compact: bool, host: &str) -> usize {
        let len = if compact {
            self.json_compact
        } else {
            self.json
        };
        let head = if request {
            request_head("/v1/device", host, "application/json", len).len()
        } else {
            response_head(200, "OK", "application/json", len).len()
        };
        head + len
    }
}

/// POST one frame to `/v1/device` with exactly the minimal framing over a raw socket; returns
/// the response body and the number of bytes the server sent.
async fn raw_device_post(
    addr: SocketAddr,
    host: &str,
    frame: &[u8],
) -> anyhow::Result<(Vec<u8>, usize)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let mut req =
        request_head("/v1/device", host, "application/octet-stream", frame.len()).into_bytes();
    req.extend_from_slice(frame);
    s.write_all(&req).await?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            bail!("connection closed before a full answer");
        }
        got.extend_from_slice(buf.get(..n).unwrap_or_default());
        let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(got.get(..end).unwrap_or_default()).to_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .ok_or_else(|| anyhow!("answer without content-length: {head}"))?
            .trim()
            .parse()?;
        if got.len() >= end + 4 + len {
            let body = got.get(end + 4..end + 4 + len).unwrap_or_default().to_vec();
            return Ok((body, end + 4 + len));
        }
    }
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Drop zero-valued fields (`""`, `"0"`, `0`, `false`, `[]`, `{}`-less, `*_UNSPECIFIED`).
fn compact(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| {
                    !matches!(v, Value::Bool(false))
                        && v.as_str().is_none_or(|s| {
                            !s.is_empty() && s != "0" && !s.ends_with("UNSPECIFIED")
                        })
                        && v.as_i64() != Some(0)
                        && v.as_array().is_none_or(|a| !a.is_empty())
                })
                .map(|(k, v)| (k.clone(), compact(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(compact).collect()),
        other => other.clone(),
    }
}

fn json_sizes(v: &Value) -> anyhow::Result<(usize, usize)> {
    Ok((
        serde_json::to_vec(v)?.len(),
        serde_json::to_vec(&compact(v))?.len(),
    ))
}

/// Send one machine request with the minimal framing and size it every way.
async fn link_exchange(
    env: &Env,
    host: &str,
    machine: &Machine,
    body: &Request,
    names: (&'static str, &'static str),
) -> anyhow::Result<(LinkMessage, LinkMessage, Answer)> {
    let seq = machine.seq.fetch_add(1, Ordering::SeqCst);
    let pending = machine.identity.request(seq, body);
    let (answer_bytes, wire) = raw_device_post(env.blepay_addr, host, &pending.frame).await?;
    let answer = machine
        .identity
        .open(&pending, &answer_bytes)
        .map_err(|e| anyhow!("answer does not authenticate: {e}"))?;
    if let Some(code) = answer.refusal_code() {
        bail!("{} refused: {}", names.0, code.as_str());
    }
    // The same fields as JSON: the frame header, the body in the API's JSON mapping, the tag.
    let mut req_json = serde_json::to_value(body.to_pb())?;
    if let Value::Object(m) = &mut req_json {
        m.insert(
            "deviceId".into(),
            json!(machine.identity.device_id.to_string()),
        );
        m.insert(
            "keyVersion".into(),
            json!(machine.identity.key_version.get()),
        );
        m.insert("seq".into(), json!(seq));
        m.insert("tag".into(), json!(b64(&pending.tag)));
    }
    let mut resp_json = serde_json::to_value(answer.body.to_pb())?;
    if let Value::Object(m) = &mut resp_json {
        m.insert("seq".into(), json!(seq));
        m.insert("serverTime".into(), json!(answer.server_time.to_string()));
        m.insert("tag".into(), json!(b64(&[0u8; 16])));
    }
    let (rj, rjc) = json_sizes(&req_json)?;
    let (aj, ajc) = json_sizes(&resp_json)?;
    let req_http = request_head(
        "/v1/device",
        host,
        "application/octet-stream",
        pending.frame.len(),
    )
    .len()
        + pending.frame.len();
    let request = LinkMessage {
        name: names.0,
        body: pending.frame.len(),
        http: req_http,
        wire: req_http,
        json: rj,
        json_compact: rjc,
    };
    let response = LinkMessage {
        name: names.1,
        body: answer_bytes.len(),
        http: response_head(200, "OK", "application/octet-stream", answer_bytes.len()).len()
            + answer_bytes.len(),
        wire,
        json: aj,
        json_compact: ajc,
    };
    Ok((request, response, answer))
}

async fn link_bytes(env: &Env, host: &str) -> anyhow::Result<()> {
    let ctx = setup(env, 1, 1).await?;
    let machine = ctx.machine(0)?;
    let mut rows = Vec::new();
    let (q, a, _) = link_exchange(
        env,
        host,
        machine,
        &blepay_device_client::poll(),
        ("idle poll", "idle poll answer (no grant)"),
    )
    .await?;
    let idle = [q, a];
    let session = ctx.pay(Transport::Http, 0, 0).await?;
    let (q, a, answer) = link_exchange(
        env,
        host,
        machine,
        &blepay_device_client::poll(),
        ("poll", "poll answer (1 grant)"),
    )
    .await?;
    if answer.body.usable_grants().count() != 1 {
        bail!("the poll after the pay did not bring exactly one grant");
    }
    rows.extend([q, a]);
    let (q, a, _) = link_exchange(
        env,
        host,
        machine,
        &blepay_device_client::start(session),
        ("start", "start answer"),
    )
    .await?;
    rows.extend([q, a]);
    let report = blepay_device_client::report(session, blepay_core::Units::new(3), true);
    let (q, a, _) = link_exchange(
        env,
        host,
        machine,
        &report,
        ("final report", "report answer"),
    )
    .await?;
    rows.extend([q, a]);

    let mut out = String::new();
    let _ = writeln!(
        out,
        "Bytes on the machine's link per payment cycle (Host: {host}; HTTP/1.1, one request per message)\n"
    );
    let _ = writeln!(
        out,
        "| message | frame | frame + minimal HTTP/1.1 | as `blepay serve` sends it | JSON body | JSON + minimal HTTP/1.1 | compact JSON + HTTP/1.1 |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
    let mut totals = [0usize; 6];
    let line = |out: &mut String, m: &LinkMessage, request: bool| {
        let json_http = m.json_http(request, false, host);
        let compact_http = m.json_http(request, true, host);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            m.name, m.body, m.http, m.wire, m.json, json_http, compact_http
        );
        [m.body, m.http, m.wire, m.json, json_http, compact_http]
    };
    for (i, m) in rows.iter().enumerate() {
        let v = line(&mut out, m, i % 2 == 0);
        for (t, x) in totals.iter_mut().zip(v) {
            *t += x;
        }
    }
    let _ = writeln!(
        out,
        "| **cycle total (poll + start + report)** | {} | {} | {} | {} | {} | {} |",
        totals[0], totals[1], totals[2], totals[3], totals[4], totals[5]
    );
    let _ = writeln!(out, "| *idle poll, for reference* | | | | | | |");
    for (i, m) in idle.iter().enumerate() {
        line(&mut out, m, i == 0);
    }
    print!("{out}");
    #[allow(clippy::cast_precision_loss)]
    let ratio = totals[4] as f64 / totals[1] as f64;
    println!(
        "\nA cycle is {} bytes with the binary frames and minimal HTTP/1.1 framing, {} as JSON: JSON is {:.2}x.",
        totals[1], totals[4], ratio
    );
    println!(
        "{}",
        json!({
            "link_cycle_bytes_binary_http": totals[1],
            "link_cycle_bytes_as_served": totals[2],
            "link_cycle_bytes_json_http": totals[4],
            "link_cycle_bytes_compact_json_http": totals[5],
            "link_json_over_binary": round3(ratio),
        })
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_request_framing_is_request_line_host_type_and_length() {
        let head = request_head("/v1/device", "h.example", "application/octet-stream", 31);
        assert_eq!(
            head,
            "POST /v1/device HTTP/1.1\r\nHost: h.example\r\nContent-Type: application/octet-stream\r\nContent-Length: 31\r\n\r\n"
        );
        assert_eq!(head.len(), 26 + 17 + 40 + 20 + 2);
    }

    #[test]
    fn minimal_response_framing_is_status_type_and_length() {
        let head = response_head(200, "OK", "application/json", 120);
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 120\r\n\r\n"
        );
    }

    #[test]
    fn compact_json_drops_zero_valued_fields_only() {
        let v = json!({"a": "", "b": "0", "c": 0, "d": false, "e": [], "f": "SESSION_STATUS_UNSPECIFIED",
                       "g": "x", "h": [{"i": 0, "j": 1}], "k": true});
        assert_eq!(compact(&v), json!({"g": "x", "h": [{"j": 1}], "k": true}));
    }
}
