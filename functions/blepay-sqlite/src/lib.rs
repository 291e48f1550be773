//! # blepay-sqlite — the [`Store`] on an embedded SQLite file
//!
//! One writer thread owns the read-write [`rusqlite::Connection`] and **group-commits**: every
//! mutating operation waiting at that moment runs in one `BEGIN IMMEDIATE` transaction, each in
//! its own savepoint (a refusal or failure rolls back only that one), with one fsync for all
//! (`writer.rs`). Operations are serialized on that connection (concurrent pays for one machine
//! cannot both see it idle) and SQLite's "database is locked" never reaches a caller. The file is
//! opened with `journal_mode=WAL` and `synchronous=FULL`, and a caller is answered only after its
//! batch's commit returned: an acknowledged operation survives `kill -9` and power loss.
//!
//! Operations that only read run on read-only WAL connections (`readers.rs`), never queued behind
//! writes: point reads (a machine, a session, a wallet) on the caller's thread, listings and
//! reports on tokio's blocking pool. A read that finds a session due for expiry goes to the
//! writer instead, which expires it first (the [`Store`] contract).
//!
//! The decisions are `blepay_store::decide`'s and the money rules and session state machine
//! `blepay-core`'s: this crate loads the facts, calls them and writes back what they return (new
//! balances, ledger entries, session states).
//!
//! - `lib.rs`: opening, the [`Store`] impl; `writer.rs`: group commit; `readers.rs`: reads;
//! - `schema.rs`: the migrations; `ops.rs`: pay, machine requests, expiry, audit;
//! - `topups.rs`: users' top-ups through a payment provider and their notifications;
//! - `rows.rs`: one function per statement; `convert.rs`: SQL values and errors.
//!
//! Must not depend on: HTTP, gRPC, protobuf, the AWS SDK.

mod checkpointer;
mod console;
mod convert;
mod fleet;
mod keys;
mod lists;
mod operators;
mod ops;
mod readers;
mod refunds;
mod rows;
mod schema;
mod topups;
mod writer;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use blepay_core::{Amount, DeviceId, IdempotencyKey, Session, SessionId, UserId, Wallet};
use blepay_store::decide::{
    NewTopUp, TopUpDecision, TopUpFacts, decide_top_up, top_up_fingerprint,
};
use blepay_store::{
    Audit, AuditEvent, AuditFilter, CloseCommand, CloseOutcome, ConsoleSession,
    CreateOperatorOutcome, DeviceCall, DeviceCallOutcome, DeviceFilter, DeviceRecord, DeviceStatus,
    DeviceUpdate, DeviceUpdateOutcome, DismissCommand, DismissOutcome, NewOperator, OperatorId,
    OperatorRecord, Page, PageRequest, PayCommand, PayOutcome, Problem, ProblemCommand,
    ProblemOutcome, RefundCommand, RefundOutcome, RegisterOutcome, ResponseEncoder,
    RevokeOperatorOutcome, RevokeOutcome, RotateOutcome, SalesFacts, SessionFilter, Spending,
    StatementEntry, Store, StoreError, TelemetrySample, TopUpOutcome,
};
use blepay_store::{
    NewProviderTopUp, ProviderEvent, ProviderEventOutcome, ProviderTopUp, StartTopUpOutcome,
    TopUpFilter, TopUpId, TopUpLocator, TopUpRefund, TopUpRefundCommand, TopUpRefundOutcome,
};
use rusqlite::{Connection, params};

use crate::checkpointer::Checkpointer;
use crate::convert::{Cached, db, ts};
use crate::ops::{Due, expire_sessions};
use crate::readers::Readers;
use crate::rows::{
    load_device, load_idempotency, load_session, load_wallet, open_session_of, save_idempotency,
    save_wallet, write_entry_by,
};
use crate::schema::migrate;
use crate::writer::Writer;
pub use crate::writer::{WriteStats, process_write_stats};

/// The writer connection's page cache, in KiB (SQLite's negative `cache_size`): 64 MiB.
const WRITER_CACHE_KIB: i64 = -65_536;

/// How long SQLite waits for another process's lock before giving up with `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The embedded store: one SQLite file. Clones share the writer and the readers; the writer
/// stops (and closes the file) when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    // Dropped in this order: readers, then the writer (its queued operations done), then the
    // checkpointer (a last checkpoint).
    readers: Readers,
    writer: Writer,
    _checkpointer: Checkpointer,
}

impl SqliteStore {
    /// Open (creating the parent directory and the file if needed) and migrate the database at
    /// `path`.
    ///
    /// # Errors
    /// When the directory or file cannot be created, the file is not a SQLite database, WAL cannot
    /// be enabled, or its schema is newer than this build knows ([`StoreError::Corrupt`]).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Internal(format!("cannot create directory {}: {e}", dir.display()))
            })?;
        }
        let mut conn = Connection::open(path).map_err(db)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(db)?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(db)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Internal(format!(
                "cannot enable WAL on {} (journal mode is {mode})",
                path.display()
            )));
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(db)?;
        conn.set_prepared_statement_cache_capacity(crate::convert::STATEMENT_CACHE);
        // The writer's page cache: the working set of a busy store stays in memory rather than
        // being read back from the OS on every batch (the default is 2 MiB).
        conn.pragma_update(None, "cache_size", WRITER_CACHE_KIB)
            .map_err(db)?;
        // Checkpoints are the checkpointer's (checkpointer.rs), not the committing writer's.
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(db)?;
        migrate(&mut conn)?;
        let checkpointer = Checkpointer::start(path)?;
        Ok(Self {
            inner: Arc::new(Inner {
                readers: Readers::new(path),
                writer: Writer::start(conn)?,
                _checkpointer: checkpointer,
            }),
        })
    }

    /// What the writer has committed since the store was opened: transactions (fsyncs) and the
    /// operations they carried; their ratio is the group commit's batch size.
    #[must_use]
    pub fn write_stats(&self) -> WriteStats {
        self.inner.writer.stats()
    }

    /// Run `work` in the writer's next batch (one `BEGIN IMMEDIATE` transaction, `work` in its
    /// own savepoint): kept and answered after the commit when it returns `Ok` (refusals are `Ok`
    /// values, and write nothing but due expiries), rolled back alone otherwise.
    async fn run<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.inner.writer.run(work).await
    }

    /// A point read (a few indexed rows) on a read-only connection, on the caller's thread.
    fn read<T>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.inner.readers.read(work)
    }

    /// A read of many rows (a listing, a report) on a read-only connection, on tokio's blocking
    /// pool.
    async fn read_many<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.readers.read(work))
            .await
            .map_err(|e| StoreError::Internal(format!("storage task failed: {e}")))?
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn register_device(
        &self,
        device: &DeviceRecord,
        _now: u64,
    ) -> Result<RegisterOutcome, StoreError> {
        let d = device.clone();
        self.run(move |c| {
            let inserted = c
                .exec_cached(
                    "INSERT INTO devices (id, name, price_per_unit, unit_name, currency, key_version, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (id) DO NOTHING",
                    params![
                        d.id.as_bytes(),
                        d.name.as_str(),
                        d.tariff.price_per_unit.minor(),
                        d.tariff.unit_name.as_str(),
                        d.tariff.currency.as_str(),
                        d.key_version.get(),
                        ts(d.created_at)?,
                    ],
                )
                .map_err(db)?;
            Ok(if inserted == 0 { RegisterOutcome::Exists } else { RegisterOutcome::Created })
        })
        .await
    }

    async fn device_status(
        &self,
        id: DeviceId,
        now: u64,
    ) -> Result<Option<DeviceStatus>, StoreError> {
        let status = move |c: &Connection| {
            let Some(row) = load_device(c, id)? else {
                return Ok(None);
            };
            Ok(Some(row.status(open_session_of(c, id)?)))
        };
        if let Some(fresh) = self.read(|c| unless_due(c, Due::OfDevice(id), now, status))? {
            return Ok(fresh);
        }
        self.run(move |c| {
            expire_sessions(c, Due::OfDevice(id), now)?;
            status(c)
        })
        .await
    }

    async fn top_up(
        &self,
        user: &UserId,
        amount: Amount,
        key: &IdempotencyKey,
        actor: &str,
        now: u64,
    ) -> Result<TopUpOutcome, StoreError> {
        let (user, key, actor) = (user.clone(), key.clone(), actor.to_owned());
        self.run(move |c| {
            expire_sessions(c, Due::OfUser(&user), now)?;
            let scope = format!("topup:{user}");
            let seen = load_idempotency(c, &scope, &key)?;
            let facts = TopUpFacts {
                user: &user,
                amount,
                prior: seen.as_ref().map(|s| s.fingerprint.as_str()),
                wallet: load_wallet(c, &user)?,
            };
            let NewTopUp { wallet, entry } = match decide_top_up(&facts)? {
                TopUpDecision::Answer(outcome) => return Ok(outcome),
                TopUpDecision::Credit(new) => new,
            };
            save_wallet(c, &user, &wallet)?;
            write_entry_by(c, &entry, now, None, Some(&actor))?;
            let fingerprint = top_up_fingerprint(amount);
            save_idempotency(c, &scope, &key, &fingerprint, None, now)?;
            Ok(TopUpOutcome::Credited(wallet))
        })
        .await
    }

    async fn wallet(&self, user: &UserId, now: u64) -> Result<Wallet, StoreError> {
        if let Some(w) =
            self.read(|c| unless_due(c, Due::OfUser(user), now, |c| load_wallet(c, user)))?
        {
            return Ok(w);
        }
        let user = user.clone();
        self.run(move |c| {
            expire_sessions(c, Due::OfUser(&user), now)?;
            load_wallet(c, &user)
        })
        .await
    }

    async fn pay(&self, cmd: &PayCommand) -> Result<PayOutcome, StoreError> {
        let cmd = cmd.clone();
        self.run(move |c| ops::pay(c, &cmd)).await
    }

    async fn find_pay(
        &self,
        user: &UserId,
        key: &IdempotencyKey,
        now: u64,
    ) -> Result<Option<Session>, StoreError> {
        let seen = self.read(|c| load_idempotency(c, &ops::pay_scope(user), key))?;
        let Some(seen) = seen else {
            return Ok(None);
        };
        self.session(seen.session_id()?, now).await
    }

    async fn session(&self, id: SessionId, now: u64) -> Result<Option<Session>, StoreError> {
        if let Some(s) =
            self.read(|c| unless_due(c, Due::Only(id), now, |c| load_session(c, id)))?
        {
            return Ok(s);
        }
        self.run(move |c| {
            expire_sessions(c, Due::Only(id), now)?;
            load_session(c, id)
        })
        .await
    }

    async fn device_call(
        &self,
        call: &DeviceCall,
        encode: ResponseEncoder,
    ) -> Result<DeviceCallOutcome, StoreError> {
        // The encoder runs here, on the blocking thread inside the transaction: the answer is
        // saved with the operation or, if encoding fails (panics), neither is.
        let call = call.clone();
        self.run(move |c| ops::device_call(c, &call, &encode)).await
    }

    async fn expire_due(&self, now: u64) -> Result<Vec<Session>, StoreError> {
        self.run(move |c| expire_sessions(c, Due::All, now)).await
    }

    async fn time_out_active(
        &self,
        now: u64,
        active_timeout_secs: u64,
    ) -> Result<Vec<Session>, StoreError> {
        self.run(move |c| ops::time_out_sessions(c, now, active_timeout_secs))
            .await
    }

    async fn audit(&self) -> Result<Audit, StoreError> {
        self.read_many(ops::audit).await
    }

    async fn create_operator(
        &self,
        new: &NewOperator,
    ) -> Result<CreateOperatorOutcome, StoreError> {
        let new = new.clone();
        self.run(move |c| operators::create_operator(c, &new)).await
    }

    async fn operator(&self, id: &OperatorId) -> Result<Option<OperatorRecord>, StoreError> {
        self.read(|c| operators::load_operator(c, id))
    }

    async fn operators(&self) -> Result<Vec<OperatorRecord>, StoreError> {
        self.read_many(operators::list_operators).await
    }

    async fn revoke_operator(
        &self,
        id: &OperatorId,
        now: u64,
    ) -> Result<RevokeOperatorOutcome, StoreError> {
        let id = id.clone();
        self.run(move |c| operators::revoke_operator(c, &id, now))
            .await
    }

    async fn record_audit_event(&self, event: &AuditEvent) -> Result<bool, StoreError> {
        let event = event.clone();
        self.run(move |c| operators::record_audit_event(c, &event))
            .await
    }

    async fn audit_events(
        &self,
        filter: &AuditFilter,
        page: &PageRequest,
    ) -> Result<Page<AuditEvent>, StoreError> {
        let (filter, page) = (filter.clone(), page.clone());
        self.read_many(move |c| operators::audit_events(c, &filter, &page))
            .await
    }

    async fn create_console_session(&self, s: &ConsoleSession) -> Result<bool, StoreError> {
        let s = s.clone();
        self.run(move |c| console::create_session(c, &s)).await
    }

    async fn console_session(
        &self,
        id_hash: &[u8; 32],
    ) -> Result<Option<ConsoleSession>, StoreError> {
        self.read(|c| console::load_session(c, id_hash))
    }

    async fn end_console_session(&self, id_hash: &[u8; 32], now: u64) -> Result<bool, StoreError> {
        let id_hash = *id_hash;
        self.run(move |c| console::end_session(c, &id_hash, now))
            .await
    }

    async fn telemetry_history(
        &self,
        device: DeviceId,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<TelemetrySample>, StoreError> {
        self.read_many(move |c| console::telemetry_history(c, device, from, to, limit))
            .await
    }

    async fn list_devices(
        &self,
        filter: &DeviceFilter,
        page: &PageRequest,
        now: u64,
    ) -> Result<Page<DeviceStatus>, StoreError> {
        let (filter, page) = (filter.clone(), page.clone());
        self.run(move |c| fleet::list_devices(c, &filter, &page, now))
            .await
    }

    async fn update_device(
        &self,
        id: DeviceId,
        update: &DeviceUpdate,
        now: u64,
    ) -> Result<DeviceUpdateOutcome, StoreError> {
        let update = update.clone();
        self.run(move |c| fleet::update_device(c, id, &update, now))
            .await
    }

    async fn spending(&self, user: &UserId, now: u64) -> Result<Spending, StoreError> {
        let user = user.clone();
        self.run(move |c| fleet::spending(c, &user, now)).await
    }

    async fn set_spending_limit(
        &self,
        user: &UserId,
        limit: Option<Amount>,
        now: u64,
    ) -> Result<Spending, StoreError> {
        let user = user.clone();
        self.run(move |c| fleet::set_spending_limit(c, &user, limit, now))
            .await
    }

    async fn list_sessions(
        &self,
        filter: &SessionFilter,
        page: &PageRequest,
        now: u64,
    ) -> Result<Page<Session>, StoreError> {
        let (filter, page) = (filter.clone(), page.clone());
        self.run(move |c| lists::list_sessions(c, &filter, &page, now))
            .await
    }

    async fn statement(
        &self,
        user: &UserId,
        page: &PageRequest,
    ) -> Result<Page<StatementEntry>, StoreError> {
        let (user, page) = (user.clone(), page.clone());
        self.read_many(move |c| lists::statement(c, &user, &page))
            .await
    }

    async fn sales_facts(&self, from: u64, to: u64) -> Result<SalesFacts, StoreError> {
        self.read_many(move |c| lists::sales_facts(c, from, to))
            .await
    }

    async fn revoke_device(
        &self,
        id: DeviceId,
        reason: &str,
        now: u64,
    ) -> Result<RevokeOutcome, StoreError> {
        let reason = reason.to_owned();
        self.run(move |c| keys::revoke(c, id, &reason, now)).await
    }

    async fn device_record(&self, id: DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        self.read(|c| Ok(rows::load_device(c, id)?.map(|row| row.record)))
    }

    async fn rotate_device_key(
        &self,
        id: DeviceId,
        key: &IdempotencyKey,
        _now: u64,
    ) -> Result<RotateOutcome, StoreError> {
        let key = key.clone();
        self.run(move |c| keys::rotate(c, id, &key)).await
    }
    async fn refund(&self, cmd: &RefundCommand) -> Result<RefundOutcome, StoreError> {
        let cmd = cmd.clone();
        self.run(move |c| refunds::refund(c, &cmd)).await
    }

    async fn close_session(&self, cmd: &CloseCommand) -> Result<CloseOutcome, StoreError> {
        let cmd = cmd.clone();
        self.run(move |c| refunds::close_session(c, &cmd)).await
    }

    async fn report_problem(&self, cmd: &ProblemCommand) -> Result<ProblemOutcome, StoreError> {
        let cmd = cmd.clone();
        self.run(move |c| refunds::report_problem(c, &cmd)).await
    }

    async fn open_problems(&self, page: &PageRequest) -> Result<Page<Problem>, StoreError> {
        let page = page.clone();
        self.read_many(move |c| refunds::open_problems(c, &page))
            .await
    }

    async fn dismiss_problem(&self, cmd: &DismissCommand) -> Result<DismissOutcome, StoreError> {
        let cmd = cmd.clone();
        self.run(move |c| refunds::dismiss_problem(c, &cmd)).await
    }
    async fn start_topup(&self, cmd: &NewProviderTopUp) -> Result<StartTopUpOutcome, StoreError> {
        let cmd = cmd.clone();
        self.run(move |c| topups::start_topup(c, &cmd)).await
    }

    async fn attach_topup_ref(
        &self,
        id: TopUpId,
        provider_ref: &str,
        client_secret: Option<&str>,
        now: u64,
    ) -> Result<Option<ProviderTopUp>, StoreError> {
        let (provider_ref, client_secret) =
            (provider_ref.to_owned(), client_secret.map(str::to_owned));
        self.run(move |c| {
            topups::attach_topup_ref(c, id, &provider_ref, client_secret.as_deref(), now)
        })
        .await
    }

    async fn topup(&self, id: TopUpId) -> Result<Option<ProviderTopUp>, StoreError> {
        self.read(|c| topups::load_topup(c, id))
    }

    async fn find_topup(
        &self,
        locator: &TopUpLocator,
    ) -> Result<Option<ProviderTopUp>, StoreError> {
        self.read(|c| topups::find_topup(c, locator))
    }

    async fn apply_provider_event(
        &self,
        event: &ProviderEvent,
    ) -> Result<ProviderEventOutcome, StoreError> {
        let event = event.clone();
        self.run(move |c| topups::apply_provider_event(c, &event))
            .await
    }

    async fn request_topup_refund(
        &self,
        cmd: &TopUpRefundCommand,
    ) -> Result<TopUpRefundOutcome, StoreError> {
        let cmd = cmd.clone();
        self.run(move |c| topups::request_topup_refund(c, &cmd))
            .await
    }

    async fn topup_refunds(&self, topup: TopUpId) -> Result<Vec<TopUpRefund>, StoreError> {
        self.read_many(move |c| topups::topup_refunds(c, topup))
            .await
    }

    async fn list_topups(
        &self,
        filter: &TopUpFilter,
        page: &PageRequest,
    ) -> Result<Page<ProviderTopUp>, StoreError> {
        let (filter, page) = (filter.clone(), page.clone());
        self.read_many(move |c| topups::list_topups(c, &filter, &page))
            .await
    }
}

/// `read`'s answer when nothing of `due` is due for expiry at `now`; `None` when something is (the
/// caller then goes to the writer, which expires it first).
fn unless_due<T>(
    c: &Connection,
    due: Due<'_>,
    now: u64,
    read: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<Option<T>, StoreError> {
    if ops::any_due(c, due, now)? {
        return Ok(None);
    }
    read(c).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::{parse_col, units_from_sql, units_to_sql};
    use crate::schema::MIGRATIONS;
    use blepay_core::Units;

    #[tokio::test]
    async fn a_panicking_operation_is_an_error_and_rolls_back_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("blepay.db")).unwrap();
        let panicked = store
            .run(|c| -> Result<(), StoreError> {
                c.exec_cached("INSERT INTO wallets (user_id, available, held, spent) VALUES ('ghost', 0, 0, 0)", [])
                    .map_err(db)?;
                panic!("a bug in an operation");
            })
            .await;
        assert!(
            matches!(panicked, Err(StoreError::Internal(_))),
            "{panicked:?}"
        );
        let ghosts: i64 = store
            .read(|c| {
                c.row_cached(
                    "SELECT count(*) FROM wallets WHERE user_id = 'ghost'",
                    [],
                    |r| r.get(0),
                )
                .map_err(db)
            })
            .unwrap();
        assert_eq!(ghosts, 0, "the panicked operation's write was rolled back");
        assert_eq!(
            store.expire_due(0).await.unwrap(),
            Vec::new(),
            "the writer still serves"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn operations_waiting_together_share_one_commit_and_a_failing_one_rolls_back_alone() {
        // Arrange: the writer is held by a first operation until 300 more are queued; every
        // third of them fails after writing.
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("blepay.db")).unwrap();
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (running, started) = tokio::sync::oneshot::channel::<()>();
        let first = tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .run(move |_| {
                        let _ = running.send(());
                        held.recv()
                            .map_err(|e| StoreError::Internal(e.to_string()))?;
                        Ok(())
                    })
                    .await
            }
        });
        started.await.unwrap();
        let ops: Vec<_> = (0..300)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .run(move |c| {
                            c.exec_cached(
                                "INSERT INTO wallets (user_id, available, held, spent)
                                 VALUES (?1, 0, 0, 0)",
                                [format!("u{i}")],
                            )
                            .map_err(db)?;
                            if i % 3 == 0 {
                                return Err(StoreError::Internal(format!("refused {i}")));
                            }
                            Ok(i)
                        })
                        .await
                })
            })
            .collect();
        while store.inner.writer.queued() < 300 {
            tokio::task::yield_now().await;
        }
        let before = store.write_stats();

        // Act
        release.send(()).unwrap();
        first.await.unwrap().unwrap();
        let mut answered = Vec::new();
        for op in ops {
            answered.push(op.await.unwrap());
        }

        // Assert: the 301 operations took at most 3 commits (a batch holds 256), and exactly the
        // operations answered Ok are in the file.
        let after = store.write_stats();
        assert_eq!(after.operations - before.operations, 201);
        assert!(
            after.commits - before.commits <= 3,
            "{before:?} → {after:?}"
        );
        let kept: Vec<i64> = answered
            .iter()
            .filter_map(|r| r.as_ref().ok().copied())
            .collect();
        assert_eq!(kept.len(), 200, "{:?}", &answered[..3]);
        assert!(
            answered
                .iter()
                .enumerate()
                .all(|(i, r)| r.is_ok() == (i % 3 != 0))
        );
        drop(store);
        let conn = Connection::open(dir.path().join("blepay.db")).unwrap();
        let mut stored: Vec<i64> = conn
            .prepare("SELECT CAST(substr(user_id, 2) AS INTEGER) FROM wallets")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        stored.sort_unstable();
        assert_eq!(stored, kept);
    }

    #[tokio::test]
    async fn the_checkpointer_folds_the_wal_into_the_file_while_the_writer_never_does() {
        // Arrange: the writer's automatic checkpoints are off.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blepay.db");
        let store = SqliteStore::open(&path).unwrap();
        let auto: i64 = store
            .run(|c| {
                c.row_cached("PRAGMA wal_autocheckpoint", [], |r| r.get(0))
                    .map_err(db)
            })
            .await
            .unwrap();
        assert_eq!(auto, 0);
        let file_before = std::fs::metadata(&path).unwrap().len();

        // Act: about 2 MB of rows, committed.
        for batch in 0..20 {
            store
                .run(move |c| {
                    for i in 0..100 {
                        c.exec_cached(
                            "INSERT INTO wallets (user_id, available, held, spent) VALUES (?1, 0, 0, 0)",
                            [format!("{batch}-{i}-{}", "x".repeat(900))],
                        )
                        .map_err(db)?;
                    }
                    Ok(())
                })
                .await
                .unwrap();
        }

        // Assert: the database file itself grows (the WAL was checkpointed into it) within a
        // few of the checkpointer's periods.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::fs::metadata(&path).unwrap().len() < file_before + 1_000_000 {
            assert!(
                std::time::Instant::now() < deadline,
                "no checkpoint happened"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn opening_twice_applies_the_migrations_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/dir/blepay.db");
        drop(SqliteStore::open(&path).unwrap());
        let store = SqliteStore::open(&path).unwrap();
        // The writer's own connection's settings.
        let (version, mode, sync, fk) = store
            .run(|c| {
                let get = |sql: &str| -> Result<String, StoreError> {
                    c.row_cached(sql, [], |r| r.get::<_, rusqlite::types::Value>(0))
                        .map(|v| match v {
                            rusqlite::types::Value::Integer(i) => i.to_string(),
                            rusqlite::types::Value::Text(t) => t,
                            other => format!("{other:?}"),
                        })
                        .map_err(db)
                };
                Ok((
                    get("PRAGMA user_version")?,
                    get("PRAGMA journal_mode")?,
                    get("PRAGMA synchronous")?,
                    get("PRAGMA foreign_keys")?,
                ))
            })
            .await
            .unwrap();
        assert_eq!(version, MIGRATIONS.len().to_string());
        assert_eq!(mode, "wal");
        assert_eq!(sync, "2", "synchronous=FULL");
        assert_eq!(fk, "1");
    }

    #[test]
    fn the_ledger_keeps_its_rows_when_it_widens_to_provider_kinds() {
        // Arrange: a database at schema version 9 with an operator's top-up row.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blepay.db");
        {
            let conn = Connection::open(&path).unwrap();
            for sql in &MIGRATIONS[..9] {
                conn.execute_batch(sql).unwrap();
            }
            conn.pragma_update(None, "user_version", 9).unwrap();
            conn.execute(
                "INSERT INTO ledger (at, kind, debit, credit, amount, actor)
                 VALUES (100, 'TOPUP', 'funding', 'available:alice', 500, 'op:1')",
                [],
            )
            .unwrap();
        }

        // Act
        drop(SqliteStore::open(&path).unwrap());

        // Assert: the row is kept and the provider kinds are accepted.
        let guard = Connection::open(&path).unwrap();
        let kept: (i64, String, i64, Option<String>) = guard
            .query_row("SELECT id, kind, amount, actor FROM ledger", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .unwrap();
        assert_eq!(kept, (1, "TOPUP".into(), 500, Some("op:1".into())));
        guard
            .execute(
                "INSERT INTO ledger (at, kind, debit, credit, amount)
                 VALUES (101, 'PROVIDER_CREDIT', 'clearing:stripe', 'available:alice', 5)",
                [],
            )
            .unwrap();
        let next: i64 = guard
            .query_row("SELECT max(id) FROM ledger", [], |r| r.get(0))
            .unwrap();
        assert_eq!(next, 2);
    }

    #[test]
    fn a_schema_newer_than_the_build_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blepay.db");
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        assert!(matches!(
            SqliteStore::open(&path),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn units_round_trip_through_sql_for_every_value() {
        for v in [0, 1, i64::MAX as u64, i64::MAX as u64 + 1, u64::MAX] {
            assert_eq!(units_from_sql(units_to_sql(Units::new(v))).get(), v);
        }
    }

    #[test]
    fn unreadable_rows_are_corrupt() {
        let conn = Connection::open_in_memory().unwrap();
        let e = conn
            .query_row("SELECT 'not a user id'", [], |r| {
                parse_col(r, 0, |s: String| UserId::parse(&s))
            })
            .unwrap_err();
        assert!(matches!(db(e), StoreError::Corrupt(_)));
    }

    #[tokio::test]
    async fn an_answer_saved_before_codes_were_stored_reads_back_as_not_a_refusal() {
        // Arrange: a database at schema version 1 whose machine has a saved answer.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blepay.db");
        let id = [0xd0, 0, 0, 0, 0, 0, 0, 1];
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute(
                "INSERT INTO devices (id, name, price_per_unit, unit_name, currency, key_version,
                                      created_at, last_seq, last_digest, last_response, last_seen)
                 VALUES (?1, 'Old', 25, 'litre', 'EUR', 0, 0, 7, ?2, ?3, 100)",
                params![&id[..], &[7u8; 32][..], &b"old answer"[..]],
            )
            .unwrap();
        }

        // Act: the machine retries that request after an upgrade.
        let store = SqliteStore::open(&path).unwrap();
        let retry = DeviceCall {
            device: DeviceId::from_bytes(id),
            key_version: blepay_core::KeyVersion::new(0).unwrap(),
            key_epoch: blepay_core::KeyEpoch::FIRST,
            key_update: None,
            seq: 7,
            digest: [7; 32],
            op: blepay_store::DeviceOp::Poll,
            now: 200,
            active_timeout_secs: 3600,
        };
        let never: ResponseEncoder =
            Arc::new(|_: &blepay_store::DeviceOpResult| panic!("a retry does not run"));

        // Assert
        assert_eq!(
            store.device_call(&retry, never).await.unwrap(),
            DeviceCallOutcome::Retry(blepay_store::SavedAnswer {
                frame: b"old answer".to_vec(),
                code: None,
            })
        );
    }
}
