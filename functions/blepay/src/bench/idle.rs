//! The idle fleet: what a machine that only heartbeats costs the server.
//!
//! `--fleet-machines` machines (100,000 by default) are registered **through the store directly**
//! (`Store::register_device`, the call `POST /v1/ops/devices` makes, without its HTTP and
//! without its audit event; their keys derived from the server's master key as that route
//! does), `--fleet-clients` at a time. Each machine is the device client's own engine
//! ([`Machine`]), which seals its heartbeat with its key and opens the answer. Then the fleet
//! sends two heartbeat intervals, compressed in time: every machine's heartbeat of one interval
//! sent over plain HTTP (`POST /v1/device`, the machines' link) as fast as the server takes them,
//! `--fleet-clients` in flight:
//! 1. the **boot** heartbeats (each machine's first message: it comes online), then
//! 2. the **steady** interval: every machine's next heartbeat, its local clock 1,800 s later
//!    (the engine's default interval, docs/performance.md §3) — what an idle fleet sends every
//!    half hour. The cost figures are this interval's.
//!
//! Around each interval the server's CPU time and the bytes written are read (`cost.rs`); on
//! SQLite the database is sized (after a checkpoint) after registration and after each interval.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use blepay_core::{Amount, DeviceId, DeviceName, KeyEpoch, Tariff, UnitName};
use blepay_device_client::Identity;
use blepay_proto::derive_device_key;
use blepay_store::{DeviceKeys, DeviceRecord, RegisterOutcome, ServiceState};
use tokio::task::JoinSet;

use super::cost::{Usage, database_bytes};
use super::fleet::PRICE;
use super::machine::Machine;
use super::measure::Figures;
use super::servers::Env;

/// The engine's default heartbeat interval (30 minutes).
pub(super) const HEARTBEAT_SECS: u64 = blepay_device_client::engine::DEFAULT_HEARTBEAT_SECS;
/// Heartbeats in 30 days at that interval.
pub(super) const HEARTBEATS_PER_MONTH: u64 = 30 * 24 * 3600 / HEARTBEAT_SECS;

/// What the idle fleet measured.
pub(super) struct IdleFleet {
    pub(super) machines: usize,
    pub(super) clients: usize,
    pub(super) register_secs: f64,
    /// The boot heartbeats (the fleet comes online).
    pub(super) boot: Figures,
    /// The next interval's heartbeats: the steady state.
    pub(super) steady: Figures,
    /// Bytes at rest in the database (SQLite): before registering, after, after each interval.
    pub(super) storage: Option<[u64; 4]>,
    /// The server runtime's worker threads: the cores it is sized for.
    pub(super) server_threads: usize,
}

impl IdleFleet {
    /// Database bytes per machine registered.
    #[allow(clippy::cast_precision_loss)]
    pub(super) fn storage_per_machine(&self) -> Option<f64> {
        let [before, registered, ..] = self.storage?;
        (self.machines > 0).then(|| registered.saturating_sub(before) as f64 / self.machines as f64)
    }

    /// Database growth per steady heartbeat (its telemetry sample, kept 30 days).
    #[allow(clippy::cast_precision_loss)]
    pub(super) fn storage_per_heartbeat(&self) -> Option<f64> {
        let [.., booted, steady] = self.storage?;
        (self.steady.ops > 0).then(|| steady.saturating_sub(booted) as f64 / self.steady.ops as f64)
    }

    /// One machine's bytes at rest after a month: its registration and 30 days of samples.
    #[allow(clippy::cast_precision_loss)]
    pub(super) fn storage_per_machine_month(&self) -> Option<f64> {
        Some(
            self.storage_per_machine()?
                + self.storage_per_heartbeat()? * HEARTBEATS_PER_MONTH as f64,
        )
    }

    /// Idle machines one server carries at the rate it sustained (clients on the same cores).
    pub(super) fn machines_per_server(&self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let interval = HEARTBEAT_SECS as f64;
        self.steady.rps() * interval
    }

    /// Idle machines the server's cores carry if its CPU were the only limit (`server_threads`
    /// cores, each giving a CPU-second per second).
    #[allow(clippy::cast_precision_loss)]
    pub(super) fn machines_per_server_by_cpu(&self) -> Option<f64> {
        let us = self.steady.server_cpu_us_per_op()?;
        (us > 0.0).then(|| self.server_threads as f64 * HEARTBEAT_SECS as f64 * 1e6 / us)
    }
}

/// Register the fleet and send its two intervals of heartbeats.
///
/// # Errors
/// When a machine cannot be registered or the database cannot be sized; a heartbeat that fails is
/// counted as an error, not returned.
pub(super) async fn run(env: &Env, machines: usize, clients: usize) -> anyhow::Result<IdleFleet> {
    let clients = clients.max(1);
    let storage0 = size(env).await?;
    let began = Instant::now();
    let fleet = Arc::new(register(env, machines, clients).await?);
    let register_secs = began.elapsed().as_secs_f64();
    println!(
        "idle fleet: {machines} machines registered through the store in {register_secs:.1} s"
    );
    let storage1 = size(env).await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients * 2)
        .timeout(Duration::from_secs(60))
        .build()?;
    let boot = interval(env, &http, &fleet, clients, 0).await?;
    println!(
        "idle fleet: boot heartbeats {:.0}/s ({} errors)",
        boot.rps(),
        boot.errors
    );
    let storage2 = size(env).await?;
    let steady = interval(env, &http, &fleet, clients, HEARTBEAT_SECS).await?;
    println!(
        "idle fleet: the next interval's heartbeats {:.0}/s ({} errors)",
        steady.rps(),
        steady.errors
    );
    let storage3 = size(env).await?;
    let storage = match (storage0, storage1, storage2, storage3) {
        (Some(a), Some(b), Some(c), Some(d)) => Some([a, b, c, d]),
        _ => None,
    };
    Ok(IdleFleet {
        machines,
        clients,
        register_secs,
        boot,
        steady,
        storage,
        server_threads: env.server_threads,
    })
}

async fn size(env: &Env) -> anyhow::Result<Option<u64>> {
    match &env.database {
        Some(path) => Ok(Some(database_bytes(path).await?)),
        None => Ok(None),
    }
}

/// Register `n` machines through the store, `clients` at a time; their engines, in order.
async fn register(env: &Env, n: usize, clients: usize) -> anyhow::Result<Vec<Machine>> {
    let app = env.app.clone();
    let (key_version, master) = app.config().keyring.current();
    let master = master.clone();
    let currency = app.config().currency;
    // Ids unique across runs (a DynamoDB table outlives a run).
    let prefix = (0xb1e1_u64 << 48) | (u64::from(rand::random::<u16>()) << 32);
    let unit_name = UnitName::parse("litre").map_err(|e| anyhow!("{e}"))?;
    let tariff = Tariff {
        price_per_unit: Amount::positive(PRICE).map_err(|e| anyhow!("{e}"))?,
        unit_name,
        currency,
    };
    let next = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for _ in 0..clients {
        let (app, next, master, tariff) =
            (app.clone(), next.clone(), master.clone(), tariff.clone());
        set.spawn(async move {
            let mut made = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok(made);
                }
                let id = DeviceId::from_bytes((prefix | u64::try_from(i)?).to_be_bytes());
                let now = app.now();
                let record = DeviceRecord {
                    id,
                    name: DeviceName::parse(&format!("Idle dispenser {i}"))
                        .map_err(|e| anyhow!("{e}"))?,
                    tariff: tariff.clone(),
                    key_version,
                    created_at: now,
                    service_state: ServiceState::InService,
                    keys: DeviceKeys::default(),
                };
                match app.store().register_device(&record, now).await? {
                    RegisterOutcome::Created => {}
                    RegisterOutcome::Exists => bail!("device {id} exists already"),
                }
                let identity = Identity {
                    device_id: id,
                    key_version,
                    key: derive_device_key(&master, key_version, id, KeyEpoch::FIRST),
                };
                made.push((i, Machine::new(identity, now)?));
            }
        });
    }
    let mut all = Vec::with_capacity(n);
    while let Some(r) = set.join_next().await {
        all.extend(r??);
    }
    all.sort_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, m)| m).collect())
}

/// Every machine's next heartbeat, its local clock `offset` seconds ahead of the server's, sent
/// by `clients` at a time; timed from the first to the last, with what the server spent.
async fn interval(
    env: &Env,
    http: &reqwest::Client,
    fleet: &Arc<Vec<Machine>>,
    clients: usize,
    offset: u64,
) -> anyhow::Result<Figures> {
    let next = Arc::new(AtomicUsize::new(0));
    let url = format!("{}/v1/device", env.base);
    let before = Usage::read();
    let began = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..clients {
        let (fleet, next, http, url, app) = (
            fleet.clone(),
            next.clone(),
            http.clone(),
            url.clone(),
            env.app.clone(),
        );
        set.spawn(async move {
            let mut figures = Figures::new()?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(machine) = fleet.get(i) else {
                    return anyhow::Ok(figures);
                };
                let local = app.now() + offset;
                figures.all_ops += 1;
                let start = Instant::now();
                match heartbeat(&http, &url, machine, local).await {
                    Ok(()) => figures.record(start.elapsed()),
                    Err(e) => {
                        machine.on_transport_error(local)?;
                        figures.error(&e);
                    }
                }
            }
        });
    }
    let mut total = Figures::new()?;
    while let Some(r) = set.join_next().await {
        total.merge(&r??)?;
    }
    total.secs = began.elapsed().as_secs_f64();
    total.cost = Usage::read()
        .zip(before)
        .map(|(after, before)| after.since(&before));
    total.window_done = total.ops;
    Ok(total)
}

/// One heartbeat: what the machine's engine sends at local time `local`, over plain HTTP, and the
/// answer opened by the engine (a refusal is an error).
async fn heartbeat(
    http: &reqwest::Client,
    url: &str,
    machine: &Machine,
    local: u64,
) -> anyhow::Result<()> {
    let frame = machine.transmit(local)?.frame;
    let r = http
        .post(url)
        .header("content-type", "application/octet-stream")
        .body(frame)
        .send()
        .await?;
    let status = r.status().as_u16();
    let body = r.bytes().await?;
    machine.on_answer(local, status, &body)?;
    Ok(())
}

/// The server's cost of the steady interval, per heartbeat and per machine-month.
pub(super) fn server_cpu_secs_per_machine_month(f: &IdleFleet) -> Option<f64> {
    #[allow(clippy::cast_precision_loss)]
    let month = HEARTBEATS_PER_MONTH as f64;
    f.steady.server_cpu_us_per_op().map(|us| us * month / 1e6)
}
