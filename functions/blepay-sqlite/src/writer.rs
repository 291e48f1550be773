//! Group commit: one writer thread owns the read-write connection and commits every operation
//! waiting at that moment in one transaction, with one fsync.
//!
//! - Each operation runs in its own `SAVEPOINT`: an `Err` (or a panic) rolls back that operation
//!   alone and is answered at once; the others of the batch are unaffected.
//! - Operations that returned `Ok` (refusals included: they write nothing but due expiries) are
//!   answered only after `COMMIT` returned, so an acknowledged operation is durable
//!   (`synchronous=FULL`). When the commit fails, every one of them is answered with the error and
//!   nothing of the batch is kept; an error that made SQLite roll the whole transaction back
//!   fails the operations before it the same way.
//! - Operations run one after another on the one connection, in arrival order, so they are
//!   serialized exactly as under a mutex: concurrent pays for one machine still cannot both see
//!   it idle.
//! - A batch holds at most [`MAX_BATCH`] operations; the queue between callers and the writer is
//!   bounded by [`QUEUE_DEPTH`] (a caller beyond it waits for room).

use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use blepay_store::StoreError;
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use crate::convert::db;

/// The most operations committed by one transaction.
pub(crate) const MAX_BATCH: usize = 256;
/// The most operations waiting for the writer.
pub(crate) const QUEUE_DEPTH: usize = 4096;

/// What an operation left to do once its batch's fate is known: send its result, or the commit's
/// error.
type Answer = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// An operation: runs on the writer's connection inside its savepoint; says whether it succeeded
/// (kept) or failed (rolled back), and how to answer its caller. Given an error instead of the
/// connection (its savepoint could not be opened), it answers that error without running.
type Job = Box<dyn FnOnce(Result<&Connection, StoreError>) -> (bool, Answer) + Send>;

/// Work to do once the running operation's batch is committed (a log line of what it changed);
/// dropped if the operation is rolled back.
type Deferred = Box<dyn FnOnce()>;

thread_local! {
    /// What the operation running on this (the writer's) thread deferred with [`after_commit`].
    static DEFERRED: RefCell<Vec<Deferred>> = const { RefCell::new(Vec::new()) };
}

/// Run `f` after the running operation's batch is committed, and never if the operation rolls
/// back (its savepoint, or the whole batch). Called from inside an operation, on the writer's
/// thread; elsewhere it is dropped at that thread's next operation.
pub(crate) fn after_commit(f: impl FnOnce() + 'static) {
    // The operation runs under its caller's tracing dispatcher (see `run`); so does `f`.
    let dispatch = tracing::dispatcher::get_default(tracing::Dispatch::clone);
    DEFERRED.with(|d| {
        d.borrow_mut().push(Box::new(move || {
            tracing::dispatcher::with_default(&dispatch, f);
        }));
    });
}

fn take_deferred() -> Vec<Deferred> {
    DEFERRED.with(|d| std::mem::take(&mut *d.borrow_mut()))
}

/// An operation kept in the batch: its answer and what it deferred to the commit.
struct Kept {
    answer: Answer,
    after: Vec<Deferred>,
}

/// The handle callers send operations to. Dropping the last one stops the thread after the
/// operations already queued, and closes the connection.
#[derive(Debug)]
pub(crate) struct Writer {
    queue: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<Counters>,
}

/// What the writer has done since the store was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriteStats {
    /// Transactions committed (each one fsync of the WAL).
    pub commits: u64,
    /// Operations those transactions kept (answered `Ok`).
    pub operations: u64,
}

/// The same, summed over every store of this process.
static PROCESS: Counters = Counters {
    commits: AtomicU64::new(0),
    operations: AtomicU64::new(0),
};

/// What every SQLite writer of this process has committed (`blepay bench` reads it around a
/// phase: operations per commit is the group commit's batch size).
#[must_use]
pub fn process_write_stats() -> WriteStats {
    WriteStats {
        commits: PROCESS.commits.load(Ordering::Relaxed),
        operations: PROCESS.operations.load(Ordering::Relaxed),
    }
}

impl WriteStats {
    /// Operations per commit since `earlier` (`None` without a commit).
    #[must_use]
    #[allow(clippy::cast_precision_loss)]
    pub fn ops_per_commit_since(self, earlier: Self) -> Option<f64> {
        let commits = self
            .commits
            .checked_sub(earlier.commits)
            .filter(|c| *c > 0)?;
        let ops = self.operations.saturating_sub(earlier.operations);
        Some(ops as f64 / commits as f64)
    }
}

#[derive(Debug, Default)]
struct Counters {
    commits: AtomicU64,
    operations: AtomicU64,
}

impl Writer {
    /// Start the writer thread on `conn` (already configured and migrated).
    pub(crate) fn start(conn: Connection) -> Result<Self, StoreError> {
        let (queue, rx) = mpsc::channel(QUEUE_DEPTH);
        let stats = Arc::new(Counters::default());
        let counters = Arc::clone(&stats);
        let thread = std::thread::Builder::new()
            .name("blepay-sqlite-writer".into())
            .spawn(move || serve(&conn, rx, &counters))
            .map_err(|e| StoreError::Internal(format!("cannot start the SQLite writer: {e}")))?;
        Ok(Self {
            queue: Some(queue),
            thread: Some(thread),
            stats,
        })
    }

    pub(crate) fn stats(&self) -> WriteStats {
        WriteStats {
            commits: self.stats.commits.load(Ordering::Relaxed),
            operations: self.stats.operations.load(Ordering::Relaxed),
        }
    }

    /// Operations waiting for the writer (queued, not yet taken into a batch).
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        self.queue
            .as_ref()
            .map_or(0, |q| q.max_capacity() - q.capacity())
    }

    /// Run `work` in the next batch; its result once the batch is committed.
    pub(crate) async fn run<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        // What the operation logs goes where its caller's logs go (a test's own subscriber, or
        // the process's).
        let dispatch = tracing::dispatcher::get_default(tracing::Dispatch::clone);
        let job: Job = Box::new(move |c: Result<&Connection, StoreError>| {
            let out = tracing::dispatcher::with_default(&dispatch, || c.and_then(work));
            let ok = out.is_ok();
            let answer: Answer = Box::new(move |committed: Result<(), StoreError>| {
                // The caller may have gone away (its request was cancelled): nothing to tell.
                let _ = tx.send(committed.and(out));
            });
            (ok, answer)
        });
        let queue = self.queue.as_ref().ok_or_else(stopped)?;
        queue.send(job).await.map_err(|_| stopped())?;
        // A dropped answer means the operation panicked (and was rolled back).
        rx.await
            .map_err(|_| StoreError::Internal("the storage operation failed".into()))?
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(thread) = self.thread.take() {
            // Wait for the queued operations and the connection's close, so the file is free
            // once the store is gone (a reopen finds no writer of ours still holding it).
            let _ = thread.join();
        }
    }
}

fn stopped() -> StoreError {
    StoreError::Internal("the SQLite writer has stopped".into())
}

fn serve(conn: &Connection, mut rx: mpsc::Receiver<Job>, stats: &Counters) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        commit_batch(conn, batch.drain(..), stats);
    }
}

/// Run `jobs` in one transaction and answer them.
fn commit_batch(conn: &Connection, jobs: impl Iterator<Item = Job>, stats: &Counters) {
    let mut kept: Vec<Kept> = Vec::new();
    let mut open = false;
    for job in jobs {
        if !open {
            if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
                let (_, answer) = job(Err(db(e)));
                answer(Ok(()));
                continue;
            }
            open = true;
        }
        if let Err(e) = conn.execute_batch("SAVEPOINT op") {
            let (_, answer) = job(Err(db(e)));
            answer(Ok(()));
            open = !abandon_if_rolled_back(conn, &mut kept);
            continue;
        }
        drop(take_deferred());
        let ran = catch_unwind(AssertUnwindSafe(|| job(Ok(conn))));
        let after = take_deferred();
        match ran {
            Ok((true, answer)) => match conn.execute_batch("RELEASE op") {
                Ok(()) => kept.push(Kept { answer, after }),
                Err(e) => {
                    answer(Err(db(e)));
                    open = !rollback_all(conn, &mut kept);
                }
            },
            Ok((false, answer)) => {
                open = undo(conn, &mut kept);
                answer(Ok(()));
            }
            // The panic dropped the answer, which tells the caller.
            Err(_) => open = undo(conn, &mut kept),
        }
    }
    if !open {
        return;
    }
    match conn.execute_batch("COMMIT") {
        Ok(()) => {
            // Counted before answering, so a caller that was answered sees its commit counted.
            for counters in [stats, &PROCESS] {
                counters.commits.fetch_add(1, Ordering::Relaxed);
                counters
                    .operations
                    .fetch_add(kept.len() as u64, Ordering::Relaxed);
            }
            for Kept { answer, after } in kept {
                for f in after {
                    f();
                }
                answer(Ok(()));
            }
        }
        Err(e) => {
            let message = e.to_string();
            let _ = conn.execute_batch("ROLLBACK");
            fail(&mut kept, &message);
        }
    }
}

/// Roll back the failed operation's savepoint; whether the transaction is still open.
fn undo(conn: &Connection, kept: &mut Vec<Kept>) -> bool {
    if abandon_if_rolled_back(conn, kept) {
        return false;
    }
    match conn.execute_batch("ROLLBACK TO op; RELEASE op") {
        Ok(()) => true,
        Err(_) => !rollback_all(conn, kept),
    }
}

/// When SQLite already rolled the whole transaction back (some I/O and memory errors do), the
/// kept operations are gone: fail them. Whether that happened.
fn abandon_if_rolled_back(conn: &Connection, kept: &mut Vec<Kept>) -> bool {
    if conn.is_autocommit() {
        fail(kept, "the transaction was rolled back by SQLite");
        true
    } else {
        false
    }
}

/// Roll back the transaction and fail the kept operations; always true (the transaction is
/// closed).
fn rollback_all(conn: &Connection, kept: &mut Vec<Kept>) -> bool {
    let _ = conn.execute_batch("ROLLBACK");
    fail(kept, "the batch's transaction failed");
    true
}

fn fail(kept: &mut Vec<Kept>, why: &str) {
    // What they deferred is dropped with them: nothing of theirs was committed.
    for Kept { answer, .. } in kept.drain(..) {
        answer(Err(StoreError::Unavailable(format!(
            "the write was not committed ({why}); retry"
        ))));
    }
}
