//! # blepay-sqlite — the [`Store`] on an embedded SQLite file
//!
//! One [`rusqlite::Connection`] behind a mutex; every trait method runs on tokio's blocking pool
//! inside one `BEGIN IMMEDIATE` transaction, so operations are serialized (concurrent pays for one
//! machine cannot both see it idle) and SQLite's "database is locked" never reaches a caller.
//! The file is opened with `journal_mode=WAL` and `synchronous=FULL`: a committed (acknowledged)
//! operation survives `kill -9` and power loss.
//!
//! The decisions are `blepay_store::decide`'s and the money rules and session state machine
//! `blepay-core`'s: this crate loads the facts, calls them and writes back what they return (new
//! balances, ledger entries, session states).
//!
//! - `lib.rs`: opening, the transaction runner, the [`Store`] impl;
//! - `schema.rs`: the migrations; `ops.rs`: pay, machine requests, expiry, audit;
//! - `topups.rs`: users' top-ups through a payment provider and their notifications;
//! - `rows.rs`: one function per statement; `convert.rs`: SQL values and errors.
//!
//! Must not depend on: HTTP, gRPC, protobuf, the AWS SDK.

mod console;
mod convert;
mod fleet;
mod keys;
mod lists;
mod operators;
mod ops;
mod refunds;
mod rows;
mod schema;
mod topups;

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
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
use rusqlite::{Connection, TransactionBehavior, params};

use crate::convert::{db, ts};
use crate::ops::{Due, expire_sessions};
use crate::rows::{
    load_device, load_idempotency, load_session, load_wallet, open_session_of, save_idempotency,
    save_wallet, write_entry_by,
};
use crate::schema::migrate;

/// How long SQLite waits for another process's lock before giving up with `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The embedded store: one SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
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
        migrate(&mut conn)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Run `work` on the blocking pool inside one `BEGIN IMMEDIATE` transaction, committed when it
    /// returns `Ok` (refusals are `Ok` values, and write nothing but due expiries) and rolled back
    /// otherwise.
    async fn run<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            // A panic while the lock was held unwound through the transaction, which rolled back:
            // the connection is consistent, so a poisoned lock is safe to take over.
            let mut guard = conn.lock().unwrap_or_else(PoisonError::into_inner);
            let tx = guard
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db)?;
            let out = work(&tx)?;
            tx.commit().map_err(db)?;
            Ok(out)
        })
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
                .execute(
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
        self.run(move |c| {
            expire_sessions(c, Due::OfDevice(id), now)?;
            let Some(row) = load_device(c, id)? else {
                return Ok(None);
            };
            Ok(Some(row.status(open_session_of(c, id)?)))
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
        let (user, key) = (user.clone(), key.clone());
        self.run(move |c| {
            let Some(seen) = load_idempotency(c, &ops::pay_scope(&user), &key)? else {
                return Ok(None);
            };
            let id = seen.session_id()?;
            expire_sessions(c, Due::Only(id), now)?;
            load_session(c, id)
        })
        .await
    }

    async fn session(&self, id: SessionId, now: u64) -> Result<Option<Session>, StoreError> {
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

    async fn expire_due(&self, now: u64) -> Result<usize, StoreError> {
        self.run(move |c| expire_sessions(c, Due::All, now)).await
    }

    async fn time_out_active(
        &self,
        now: u64,
        active_timeout_secs: u64,
    ) -> Result<usize, StoreError> {
        self.run(move |c| ops::time_out_sessions(c, now, active_timeout_secs))
            .await
    }

    async fn audit(&self) -> Result<Audit, StoreError> {
        self.run(ops::audit).await
    }

    async fn create_operator(
        &self,
        new: &NewOperator,
    ) -> Result<CreateOperatorOutcome, StoreError> {
        let new = new.clone();
        self.run(move |c| operators::create_operator(c, &new)).await
    }

    async fn operator(&self, id: &OperatorId) -> Result<Option<OperatorRecord>, StoreError> {
        let id = id.clone();
        self.run(move |c| operators::load_operator(c, &id)).await
    }

    async fn operators(&self) -> Result<Vec<OperatorRecord>, StoreError> {
        self.run(operators::list_operators).await
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
        self.run(move |c| operators::audit_events(c, &filter, &page))
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
        let id_hash = *id_hash;
        self.run(move |c| console::load_session(c, &id_hash)).await
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
        self.run(move |c| console::telemetry_history(c, device, from, to, limit))
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
        self.run(move |c| lists::statement(c, &user, &page)).await
    }

    async fn sales_facts(&self, from: u64, to: u64) -> Result<SalesFacts, StoreError> {
        self.run(move |c| lists::sales_facts(c, from, to)).await
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
        self.run(move |c| Ok(rows::load_device(c, id)?.map(|row| row.record)))
            .await
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
        self.run(move |c| refunds::open_problems(c, &page)).await
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
        self.run(move |c| topups::load_topup(c, id)).await
    }

    async fn find_topup(
        &self,
        locator: &TopUpLocator,
    ) -> Result<Option<ProviderTopUp>, StoreError> {
        let locator = locator.clone();
        self.run(move |c| topups::find_topup(c, &locator)).await
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
        self.run(move |c| topups::topup_refunds(c, topup)).await
    }

    async fn list_topups(
        &self,
        filter: &TopUpFilter,
        page: &PageRequest,
    ) -> Result<Page<ProviderTopUp>, StoreError> {
        let (filter, page) = (filter.clone(), page.clone());
        self.run(move |c| topups::list_topups(c, &filter, &page))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::{parse_col, units_from_sql, units_to_sql};
    use crate::schema::MIGRATIONS;
    use blepay_core::Units;

    #[tokio::test]
    async fn a_poisoned_lock_is_recovered_not_propagated() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("blepay.db")).unwrap();
        let conn = Arc::clone(&store.conn);
        let _ = std::thread::spawn(move || {
            let _guard = conn.lock().unwrap();
            panic!("poison the lock");
        })
        .join();
        assert!(store.conn.is_poisoned());
        assert_eq!(store.expire_due(0).await.unwrap(), 0);
    }

    #[test]
    fn opening_twice_applies_the_migrations_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/dir/blepay.db");
        drop(SqliteStore::open(&path).unwrap());
        let store = SqliteStore::open(&path).unwrap();
        let guard = store.conn.lock().unwrap();
        let version: i64 = guard
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, i64::try_from(MIGRATIONS.len()).unwrap());
        let mode: String = guard
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = guard
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2, "synchronous=FULL");
        let fk: i64 = guard
            .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
            .unwrap();
        assert_eq!(fk, 1);
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
        let store = SqliteStore::open(&path).unwrap();

        // Assert: the row is kept and the provider kinds are accepted.
        let guard = store.conn.lock().unwrap();
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
