//! Measuring: closed loops of clients, pay rounds, latency histograms, the DynamoDB requests a
//! phase sent, and what the server spent in the measured window (CPU, bytes written: `cost.rs`).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::servers::RequestCounter;
use blepay_core::SessionId;
use hdrhistogram::Histogram;
use tokio::task::JoinSet;

use super::cost::{Cost, Usage};
use super::fleet::{Ctx, Transport, for_each_machine};

/// DynamoDB requests sent during a stretch of the run: in total and by DynamoDB operation.
#[derive(Debug, Clone, Default)]
pub(super) struct DbCount {
    pub(super) requests: u64,
    pub(super) by_operation: BTreeMap<String, u64>,
}

impl DbCount {
    pub(super) fn read(counter: &RequestCounter) -> Self {
        Self {
            requests: counter.count(),
            by_operation: counter.by_operation(),
        }
    }

    /// What `counter` sent since `self` was read.
    pub(super) fn since(&self, counter: &RequestCounter) -> Self {
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

    pub(super) fn add(&mut self, other: &Self) {
        self.requests += other.requests;
        for (op, n) in &other.by_operation {
            *self.by_operation.entry(op.clone()).or_default() += n;
        }
    }
}

/// Run `phase`; with a counter, also the DynamoDB requests it sent.
pub(super) async fn counted<Fut>(
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
pub(super) struct Figures {
    pub(super) ops: u64,
    pub(super) errors: u64,
    pub(super) first_error: Option<String>,
    pub(super) secs: f64,
    pub(super) hist: Histogram<u64>,
    /// Every operation run in the phase, warm-up and those outside the window included (what
    /// the DynamoDB requests of the phase are divided by).
    pub(super) all_ops: u64,
    /// DynamoDB requests sent by those `all_ops` operations (`--store dynamodb`).
    pub(super) db: Option<DbCount>,
    /// What the process spent in the measured window (`None` without Linux's `/proc`).
    pub(super) cost: Option<Cost>,
    /// The operations that succeeded inside the window `cost` covers, whenever they started:
    /// what `cost` is divided by.
    pub(super) window_done: u64,
}

impl Figures {
    pub(super) fn new() -> anyhow::Result<Self> {
        Ok(Self {
            ops: 0,
            errors: 0,
            first_error: None,
            secs: 0.0,
            hist: Histogram::new_with_bounds(1, 120_000_000, 3)?,
            all_ops: 0,
            db: None,
            cost: None,
            window_done: 0,
        })
    }

    pub(super) fn record(&mut self, took: Duration) {
        self.ops += 1;
        self.hist
            .saturating_record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
    }

    pub(super) fn error(&mut self, e: &anyhow::Error) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(format!("{e:#}"));
        }
    }

    pub(super) fn merge(&mut self, other: &Self) -> anyhow::Result<()> {
        self.ops += other.ops;
        self.all_ops += other.all_ops;
        self.window_done += other.window_done;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
        self.hist.add(&other.hist)?;
        Ok(())
    }

    #[allow(clippy::cast_precision_loss)]
    pub(super) fn rps(&self) -> f64 {
        if self.secs > 0.0 {
            self.ops as f64 / self.secs
        } else {
            0.0
        }
    }

    #[allow(clippy::cast_precision_loss)]
    pub(super) fn ms(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }

    /// The server's CPU time per operation, in microseconds.
    #[allow(clippy::cast_precision_loss)]
    pub(super) fn server_cpu_us_per_op(&self) -> Option<f64> {
        let c = self.cost?;
        (self.window_done > 0).then(|| c.server_cpu_secs * 1e6 / self.window_done as f64)
    }

    /// The part of that spent in the kernel, in microseconds.
    #[allow(clippy::cast_precision_loss)]
    pub(super) fn server_sys_us_per_op(&self) -> Option<f64> {
        let c = self.cost?;
        (self.window_done > 0).then(|| c.server_sys_secs * 1e6 / self.window_done as f64)
    }

    /// The whole process's CPU time (server and clients) per operation, in microseconds.
    #[allow(clippy::cast_precision_loss)]
    pub(super) fn process_cpu_us_per_op(&self) -> Option<f64> {
        let c = self.cost?;
        (self.window_done > 0).then(|| c.process_cpu_secs * 1e6 / self.window_done as f64)
    }

    /// Bytes written to storage per operation.
    #[allow(clippy::cast_precision_loss)]
    pub(super) fn write_bytes_per_op(&self) -> Option<f64> {
        let c = self.cost?;
        (self.window_done > 0).then(|| c.write_bytes as f64 / self.window_done as f64)
    }

    /// DynamoDB requests per operation run (`--store dynamodb`).
    #[allow(clippy::cast_precision_loss)]
    pub(super) fn db_per_op(&self) -> Option<f64> {
        let db = self.db.as_ref()?;
        (self.all_ops > 0).then(|| db.requests as f64 / self.all_ops as f64)
    }
}

/// Phase timing: a warm-up, then the measured window.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timing {
    pub(super) warmup: Duration,
    pub(super) measure: Duration,
}

/// `concurrency` clients each running `op(ctx, client, n)` back to back; operations started and
/// finished inside the measured window count.
pub(super) async fn closed_loop<F, Fut>(
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
    // What the process spends from `from` to `end`.
    let sampler = tokio::spawn(async move {
        tokio::time::sleep_until(from.into()).await;
        let before = Usage::read();
        tokio::time::sleep_until(end.into()).await;
        let after = Usage::read();
        after.zip(before).map(|(a, b)| a.since(&b))
    });
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
                if r.is_ok() && done >= from && done <= end {
                    figures.window_done += 1;
                }
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
    total.cost = sampler.await?;
    Ok(total)
}

/// Pay in rounds: every machine paid once (timed) by `concurrency` clients, then every session
/// settled (not timed, by every client the context has). With `db`, the DynamoDB requests of the
/// pays (every round, settling excluded) are counted; the cost is that of the timed rounds after
/// the warm-up.
pub(super) async fn pay_rounds(
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
    let mut cost: Option<Cost> = Some(Cost::default());
    while paying < timing.measure {
        let sessions: Arc<Vec<std::sync::Mutex<Option<SessionId>>>> = Arc::new(
            (0..ctx.machines.len())
                .map(|_| std::sync::Mutex::new(None))
                .collect(),
        );
        let next = Arc::new(AtomicUsize::new(0));
        let db_before = db.map(DbCount::read);
        let usage_before = Usage::read();
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
        let round_cost = Usage::read().zip(usage_before).map(|(a, b)| a.since(&b));
        if let (Some(t), Some(c), Some(b)) = (db_total.as_mut(), db, db_before.as_ref()) {
            t.add(&b.since(c));
        }
        if warm < timing.warmup {
            warm += took;
            total.all_ops += round.all_ops;
        } else {
            paying += took;
            round.window_done = round.ops;
            total.merge(&round)?;
            cost = cost.zip(round_cost).map(|(mut sum, c)| {
                sum.add(&c);
                sum
            });
        }
        let s = sessions.clone();
        for_each_machine(ctx, ctx.channels.len(), move |c, w, m| {
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
    total.cost = cost;
    Ok(total)
}
