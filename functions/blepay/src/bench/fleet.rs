//! The fleet: simulated machines ([`Machine`], each the device client's own engine: its identity
//! seals the requests and opens the answers, the engine numbers them, takes the grants and keeps
//! the use counter) and users, and the operations the clients run over HTTP or gRPC.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{anyhow, bail};
use blepay_core::{DeviceId, KeyVersion, SessionId, UserId};
use blepay_device_client::{Answer, Identity};
use blepay_proto::DeviceKey;
use blepay_proto::pb::v1 as pb;
use blepay_proto::pb::v1::device_service_client::DeviceServiceClient;
use blepay_proto::pb::v1::phone_service_client::PhoneServiceClient;
use blepay_service::App;
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tonic::transport::Channel;

use super::answer;
use super::machine::Machine;
use super::servers::{Env, JWT_SECRET, OPS_TOKEN};

pub(super) const PRICE: i64 = 25;
pub(super) const MAX_AMOUNT: i64 = 250;
pub(super) const TOP_UP: i64 = 1_000_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Transport {
    Http,
    Grpc,
}

impl Transport {
    pub(super) const fn name(self) -> &'static str {
        match self {
            Self::Http => "HTTP",
            Self::Grpc => "gRPC",
        }
    }
}

/// Everything the clients share.
pub(super) struct Ctx {
    pub(super) app: App,
    pub(super) base: String,
    pub(super) hello_base: String,
    pub(super) http: reqwest::Client,
    /// One channel per client to blepay, and one per client to the hello-world server.
    pub(super) channels: Vec<Channel>,
    pub(super) hello_channels: Vec<Channel>,
    pub(super) machines: Vec<Machine>,
    /// One user (wallet + JWT) per client.
    pub(super) tokens: Vec<String>,
    /// Makes idempotency keys unique across phases.
    pub(super) pays: AtomicUsize,
    /// Makes ids and keys unique across runs (a DynamoDB table outlives a run).
    pub(super) run: String,
}

impl Ctx {
    pub(super) fn channel(&self, worker: usize) -> anyhow::Result<Channel> {
        self.channels
            .get(worker)
            .cloned()
            .ok_or_else(|| anyhow!("no channel for client {worker}"))
    }

    pub(super) fn token(&self, worker: usize) -> anyhow::Result<&str> {
        self.tokens
            .get(worker)
            .map(String::as_str)
            .ok_or_else(|| anyhow!("no user for client {worker}"))
    }

    pub(super) fn machine(&self, i: usize) -> anyhow::Result<&Machine> {
        self.machines
            .get(i)
            .ok_or_else(|| anyhow!("no machine {i}"))
    }

    pub(super) async fn ops_post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
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

    pub(super) async fn verify(&self, t: Transport, worker: usize, m: usize) -> anyhow::Result<()> {
        let machine = self.machine(m)?;
        let token = self.token(worker)?;
        let now = self.app.now();
        match t {
            Transport::Http => {
                let r = self
                    .http
                    .post(format!("{}/v1/verify", self.base))
                    .bearer_auth(token)
                    .json(&json!({ "advert": machine.advert_b64(now)? }))
                    .send()
                    .await?;
                expect_ok(r).await.map(drop)
            }
            Transport::Grpc => {
                let mut c = PhoneServiceClient::new(self.channel(worker)?);
                let req = pb::VerifyRequest {
                    advert: machine.advert_bytes(now)?.to_vec(),
                };
                c.verify(authorized(req, token)?).await?;
                Ok(())
            }
        }
    }

    pub(super) async fn pay(
        &self,
        t: Transport,
        worker: usize,
        m: usize,
    ) -> anyhow::Result<SessionId> {
        let machine = self.machine(m)?;
        // The phone at machine `m` pays: one user per machine, so no user ever holds more than
        // one unstarted session (BLEPAY_MAX_UNSTARTED_PER_USER) however the clients interleave.
        let token = self.token(m)?;
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
                        "advert": machine.advert_b64(now)?,
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
                    advert: machine.advert_bytes(now)?.to_vec(),
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

    /// One machine exchange: what the machine's engine sends now, and its answer handed back to
    /// the engine; a refusal is an error.
    pub(super) async fn exchange(
        &self,
        t: Transport,
        worker: usize,
        m: usize,
    ) -> anyhow::Result<Answer> {
        let machine = self.machine(m)?;
        let transmit = machine.transmit(self.app.now())?;
        let sent = match t {
            Transport::Http => self.post_frame(transmit.frame).await,
            Transport::Grpc => match self.channel(worker) {
                Ok(channel) => DeviceServiceClient::new(channel)
                    .exchange(pb::DeviceFrame {
                        frame: transmit.frame,
                    })
                    .await
                    .map(|r| (200, r.into_inner().frame))
                    .map_err(anyhow::Error::from),
                Err(e) => Err(e),
            },
        };
        match sent {
            Ok((status, bytes)) => machine.on_answer(self.app.now(), status, &bytes),
            Err(e) => {
                machine.on_transport_error(self.app.now())?;
                Err(e)
            }
        }
    }

    async fn post_frame(&self, frame: Vec<u8>) -> anyhow::Result<(u16, Vec<u8>)> {
        let r = self
            .http
            .post(format!("{}/v1/device", self.base))
            .header("content-type", "application/octet-stream")
            .body(frame)
            .send()
            .await?;
        let status = r.status().as_u16();
        Ok((status, r.bytes().await?.to_vec()))
    }

    /// Finish the paid `session` with one unit: the user presses start (one exchange: the
    /// server starts the session and the machine opens its valve on the answer), the machine
    /// dispenses one unit and sends its final report; it is free again.
    pub(super) async fn settle(
        &self,
        t: Transport,
        worker: usize,
        m: usize,
        session: SessionId,
    ) -> anyhow::Result<()> {
        let machine = self.machine(m)?;
        machine.press_start(self.app.now())?;
        let pressed = self.exchange(t, worker, m).await?;
        if !answer::grants(&pressed, session) || machine.dispensing()? != Some(session) {
            bail!("the press did not start {session}");
        }
        machine.dispense(self.app.now(), 1)?;
        self.exchange(t, worker, m).await?;
        Ok(())
    }

    /// pay → press (starts the session, brings its terms) → final report.
    pub(super) async fn cycle(&self, t: Transport, worker: usize, m: usize) -> anyhow::Result<()> {
        let session = self.pay(t, worker, m).await?;
        self.settle(t, worker, m, session).await
    }

    pub(super) async fn hello(&self, t: Transport, worker: usize) -> anyhow::Result<()> {
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

pub(super) async fn expect_ok(r: reqwest::Response) -> anyhow::Result<bytes::Bytes> {
    let status = r.status();
    let body = r.bytes().await?;
    if status.is_success() {
        Ok(body)
    } else {
        bail!("{status}: {}", String::from_utf8_lossy(&body))
    }
}

pub(super) fn authorized<T>(msg: T, token: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut req = tonic::Request::new(msg);
    let value = format!("Bearer {token}")
        .parse()
        .map_err(|e| anyhow!("authorization metadata: {e}"))?;
    req.metadata_mut().insert("authorization", value);
    Ok(req)
}

pub(super) async fn connect(addr: SocketAddr) -> anyhow::Result<Channel> {
    Ok(Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?)
}

/// Register the machines, top up one user per client and per machine, bring every machine online (its boot
/// heartbeat), and
/// connect the gRPC channels.
pub(super) async fn setup(
    env: &Env,
    concurrency: usize,
    machines: usize,
) -> anyhow::Result<Arc<Ctx>> {
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
    // One user per client and one per machine (pay uses the machine's).
    let users = concurrency.max(machines);
    let mut tokens = Vec::with_capacity(users);
    for w in 0..users {
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
    for w in 0..users {
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
        let identity = Identity {
            device_id: DeviceId::from_bytes(id.to_be_bytes()),
            key_version: KeyVersion::new(u8::try_from(kv)?).map_err(|e| anyhow!(e))?,
            key: DeviceKey::parse_hex(&key).map_err(|e| anyhow!(e))?,
        };
        ctx.machines.push(Machine::new(identity, now)?);
    }
    let ctx = Arc::new(ctx);
    for_each_machine(&ctx, concurrency, |c, w, m| async move {
        c.exchange(Transport::Http, w, m).await.map(drop)
    })
    .await?;
    Ok(ctx)
}

/// Run `op(ctx, client, machine)` once for every machine, `concurrency` clients at a time.
pub(super) async fn for_each_machine<F, Fut>(
    ctx: &Arc<Ctx>,
    concurrency: usize,
    op: F,
) -> anyhow::Result<()>
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
