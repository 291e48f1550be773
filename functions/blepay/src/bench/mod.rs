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
//! The servers run on a runtime of their own (one worker thread per core, threads named
//! `blepay-server`), apart from the clients' (the command's own runtime), so the server's CPU
//! time can be told from the clients' (`cost`).
//!
//! Then it drives, over HTTP/1.1 JSON (a pooled `reqwest` client) and over gRPC (one tonic
//! channel per client), for `--duration` seconds each (3 with `--quick`):
//! - **verify**: a freshly signed advert of one of the machines;
//! - **pay**: in rounds, one pay per machine (a fresh advert per machine and use counter); the
//!   sessions are settled (press, final report) between rounds, off the clock, so the machines
//!   are free again — `pay_rps` is pays / time spent paying;
//! - **cycle**: pay → press (the session starts, its terms come back) → final report, each
//!   client on machines of its own; `cycle_rps` counts cycles, `cycle_req_rps` the three
//!   requests of each. A cycle is one whole payment.
//!
//! Over HTTP at every `--clients` count (1, 8, 32 and 128 by default: **the curve**), over gRPC
//! at `--concurrency` (32). Each figure is reported as req/s, p50 and p99 latency, the ratio to
//! the hello-world server over the same transport at the same client count, and what the server
//! spent per operation in the measured window: CPU time (µs) and bytes written to storage
//! (`cost`); the cycle also the database bytes it keeps per payment. Then **the idle fleet**
//! (`idle`): `--fleet-machines` machines (100,000) registered through the store and two
//! heartbeat intervals of the whole fleet sent as fast as the server takes them — the server's
//! CPU and bytes per heartbeat, per machine-month, and how many idle machines it carries.
//!
//! Everything (servers and clients) shares this machine's cores, as a single-box deployment
//! would; the rates say what the server does on it, not what a cluster would. The last line
//! printed is one JSON object with every figure: the flat keys at `--concurrency` clients (as
//! before the curve), `curve` (the HTTP points), and `fleet_*`.
//!
//! `--link-bytes` instead measures what the machine's (2G) link costs: a real heartbeat, press
//! and final report through the device client's SIM800 simulator, bytes counted on each TCP
//! connection, plus a stated TCP/IP model for bytes on the wire, and the same messages as JSON.
//!
//! Files: [`servers`] (the real server and the hello-world one, on their runtime), [`fleet`]
//! (machines and users, the operations over HTTP or gRPC), [`machine`] (one machine: the device
//! client's engine on an in-memory log), [`measure`] (closed loops, pay rounds, DynamoDB request
//! counts), [`cost`] (the server's CPU time, bytes written, the database's size), [`idle`] (the
//! idle fleet), [`report`] (the table and the JSON summary), [`link_bytes`] (`--link-bytes`),
//! and [`answer`] (the one place the bench reads inside a machine answer).

mod answer;
mod cost;
mod fleet;
mod idle;
mod link_bytes;
mod machine;
mod measure;
mod report;
mod servers;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::args::StoreArgs;
use fleet::{Ctx, Transport, setup};
use measure::{Timing, closed_loop, counted, pay_rounds};
use report::{Params, Row, fleet_table, summary_json, table};
use servers::Env;

/// `blepay bench` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// The client count of the summary's flat keys, and the one gRPC runs at.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// The client counts of the HTTP curve (comma-separated); `--concurrency` is added when
    /// missing.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,128")]
    pub clients: Vec<usize>,
    /// Seconds each phase is measured for (after a warm-up of a fifth of that).
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Short phases (3 s each); the curve and the idle fleet still run.
    #[arg(long)]
    pub quick: bool,
    /// Machines registered (and kept online) for pay and the cycles; at least the largest client
    /// count.
    #[arg(long, default_value_t = 512)]
    pub machines: usize,
    /// Idle machines of the fleet run (registered through the store, then two compressed
    /// heartbeat intervals); 0 skips it.
    #[arg(long, default_value_t = 100_000)]
    pub fleet_machines: usize,
    /// Heartbeats (and registrations) in flight at once in the fleet run.
    #[arg(long, default_value_t = 64)]
    pub fleet_clients: usize,
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

/// The curve's client counts: sorted, without repeats or zeros, `concurrency` among them.
fn client_counts(clients: &[usize], concurrency: usize) -> Vec<usize> {
    let mut v: Vec<usize> = clients
        .iter()
        .copied()
        .chain([concurrency])
        .filter(|&n| n > 0)
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

async fn load(env: &Env, args: &BenchArgs) -> anyhow::Result<()> {
    let concurrency = args.concurrency.max(1);
    let clients = client_counts(&args.clients, concurrency);
    let most = clients.last().copied().unwrap_or(concurrency);
    let machines = args.machines.max(most);
    let secs = if args.quick { 3 } else { args.duration.max(1) };
    let timing = Timing {
        measure: Duration::from_secs(secs),
        warmup: Duration::from_millis(secs * 200),
    };
    let began = Instant::now();
    println!(
        "blepay bench: store {} (data dir {}), HTTP at {clients:?} clients, gRPC at {concurrency}, {machines} machines, {secs} s per phase, server on {} threads; idle fleet of {} machines",
        args.store.kind.name(),
        env.data_dir.display(),
        env.server_threads,
        args.fleet_machines,
    );
    let ctx = setup(env, most, machines).await?;
    println!(
        "setup: {machines} machines registered and online, {} users topped up ({:.1} s)",
        ctx.tokens.len(),
        began.elapsed().as_secs_f64()
    );

    let mut rows = Vec::new();
    for &n in &clients {
        rows.extend(phases(env, &ctx, Transport::Http, n, timing).await?);
    }
    rows.extend(phases(env, &ctx, Transport::Grpc, concurrency, timing).await?);
    print!("{}", table(&rows));

    let fleet = if args.fleet_machines > 0 {
        let f = idle::run(env, args.fleet_machines, args.fleet_clients).await?;
        print!("{}", fleet_table(&f));
        Some(f)
    } else {
        None
    };

    let audit = ctx.app.store().audit().await?;
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
            println!(
                "{} ({} clients): {} errors, the first: {e}",
                r.name, r.clients, r.figures.errors
            );
        }
    }
    if let Some(e) = fleet.as_ref().and_then(|f| {
        f.boot
            .first_error
            .as_ref()
            .or(f.steady.first_error.as_ref())
    }) {
        println!("idle fleet: the first error: {e}");
    }
    let summary = summary_json(
        &Params {
            store: args.store.kind.name(),
            concurrency,
            clients: &clients,
            machines,
            secs,
            server_threads: env.server_threads,
            reconciles: audit.reconciles(),
        },
        &rows,
        fleet.as_ref(),
    );
    println!("total time {:.1} s", began.elapsed().as_secs_f64());
    println!("{summary}");
    if !audit.reconciles() {
        bail!("the ledger does not reconcile after the bench");
    }
    Ok(())
}

/// hello-world, verify, pay and the cycle over `t` with `n` clients.
async fn phases(
    env: &Env,
    ctx: &Arc<Ctx>,
    t: Transport,
    n: usize,
    timing: Timing,
) -> anyhow::Result<Vec<Row>> {
    let base = closed_loop(
        ctx,
        n,
        timing,
        move |c, w, _| async move { c.hello(t, w).await },
    )
    .await?;
    let baseline_rps = base.rps();
    let m = ctx.machines.len();
    let db = env.dynamo.as_ref();
    let (mut verify, verify_db) = counted(
        db,
        closed_loop(ctx, n, timing, move |c, w, k| async move {
            let machine = (w + usize::try_from(k).unwrap_or(0) * 7) % m;
            c.verify(t, w, machine).await
        }),
    )
    .await?;
    verify.db = verify_db;
    let commits_before = blepay_sqlite::process_write_stats();
    let pay = pay_rounds(ctx, t, n, timing, db).await?;
    let pay_batches = blepay_sqlite::process_write_stats().ops_per_commit_since(commits_before);
    let commits_before = blepay_sqlite::process_write_stats();
    let stored_before = stored(env).await?;
    let (mut cycle, cycle_db) = counted(
        db,
        closed_loop(ctx, n, timing, move |c, w, k| async move {
            // Client w owns machines w, w + n, w + 2n, ... (below m): no two clients share one,
            // since a machine serves one session at a time.
            let owned = m.saturating_sub(w).div_ceil(n).max(1);
            let k = usize::try_from(k).unwrap_or(0) % owned;
            c.cycle(t, w, w + k * n).await
        }),
    )
    .await?;
    cycle.db = cycle_db;
    let cycle_batches = blepay_sqlite::process_write_stats().ops_per_commit_since(commits_before);
    #[allow(clippy::cast_precision_loss)]
    let cycle_storage = match (stored_before, stored(env).await?) {
        (Some(before), Some(after)) if cycle.all_ops > 0 => {
            Some(after.saturating_sub(before) as f64 / cycle.all_ops as f64)
        }
        _ => None,
    };
    let name = t.name();
    let mut rows = vec![Row {
        name: format!("{name} hello-world"),
        clients: n,
        figures: base,
        requests: 1,
        baseline_rps,
        storage_per_op: None,
        ops_per_commit: None,
    }];
    for (op, figures, requests, storage_per_op, ops_per_commit) in [
        ("verify", verify, 1, None, None),
        ("pay", pay, 1, None, pay_batches),
        ("cycle", cycle, 3, cycle_storage, cycle_batches),
    ] {
        rows.push(Row {
            name: format!("{name} {op}"),
            clients: n,
            figures,
            requests,
            baseline_rps,
            storage_per_op,
            ops_per_commit,
        });
    }
    Ok(rows)
}

/// The database's bytes at rest (SQLite only).
async fn stored(env: &Env) -> anyhow::Result<Option<u64>> {
    match &env.database {
        Some(p) => Ok(Some(cost::database_bytes(p).await?)),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::client_counts;

    #[test]
    fn the_curve_runs_each_client_count_once_in_order_with_the_concurrency_among_them() {
        assert_eq!(client_counts(&[1, 8, 32, 128], 32), [1, 8, 32, 128]);
        assert_eq!(client_counts(&[128, 0, 8, 8], 16), [8, 16, 128]);
        assert_eq!(client_counts(&[], 4), [4]);
    }
}
