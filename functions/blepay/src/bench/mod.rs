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
//!   sessions are settled (press, final report) between rounds, off the clock, so the machines
//!   are free again — `pay_rps` is pays / time spent paying;
//! - **cycle**: pay → press (the session starts, its terms come back) → final report, each
//!   client on machines of its own; `cycle_rps` counts cycles, `cycle_req_rps` the three
//!   requests of each.
//!
//! Each figure is reported as req/s, p50 and p99 latency, and the ratio to the hello-world server
//! over the same transport. Everything (servers and clients) shares this machine's cores, as a
//! single-box deployment would; the numbers say what the server does on it, not what a cluster
//! would. The last line printed is one JSON object with every figure.
//!
//! `--link-bytes` instead measures what the machine's (2G) link costs: a real heartbeat, press
//! and final report through the device client's SIM800 simulator, bytes counted on each TCP
//! connection, plus a stated TCP/IP model for bytes on the wire, and the same messages as JSON.
//!
//! Files: [`servers`] (the real server and the hello-world one), [`fleet`] (machines and users,
//! the operations over HTTP or gRPC), [`machine`] (one machine: the device client's engine on an
//! in-memory log), [`measure`] (closed loops, pay rounds, DynamoDB request counts), [`report`]
//! (the table and the JSON summary), [`link_bytes`] (`--link-bytes`), and [`answer`] (the one
//! place the bench reads inside a machine answer).

mod answer;
mod fleet;
mod link_bytes;
mod machine;
mod measure;
mod report;
mod servers;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::args::StoreArgs;
use fleet::{Transport, setup};
use measure::{Timing, closed_loop, counted, pay_rounds};
use report::{Row, summary_json, table};
use servers::Env;

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
        return link_bytes::run(&env, &args.link_host).await;
    }
    load(&env, &args).await
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
        args.store.kind.name(),
        env.data_dir.display()
    );
    let ctx = setup(env, concurrency, machines).await?;
    println!(
        "setup: {machines} machines registered and online, {} users topped up ({:.1} s)",
        ctx.tokens.len(),
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
        for (op, figures, requests) in [("verify", verify, 1), ("pay", pay, 1), ("cycle", cycle, 3)]
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
        args.store.kind.name(),
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
