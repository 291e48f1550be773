//! The embedded SQLite implementation of [`Store`].
//!
//! One [`rusqlite::Connection`] behind a mutex; every trait method runs on tokio's blocking pool
//! inside one `BEGIN IMMEDIATE` transaction, so operations are serialized (concurrent pays for one
//! machine cannot both see it idle) and SQLite's "database is locked" never reaches a caller.
//! The file is opened with `journal_mode=WAL` and `synchronous=FULL`: a committed (acknowledged)
//! operation survives `kill -9` and power loss.
//!
//! The money rules and the session state machine are `blepay-core`'s: this module only loads
//! values, calls those rules and writes back what they return (new balances, ledger entries,
//! session states).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use blepay_core::{
    Amount, Currency, DeviceId, DeviceName, IdempotencyKey, KeyVersion, LedgerAccount, LedgerEntry,
    ReportOutcome, Session, SessionId, SessionStatus, Settlement, StartOutcome, Tariff, UnitName,
    Units, UseCounter, UserId, Wallet, WalletError,
};
use rusqlite::types::{FromSql, Type};
use rusqlite::{Connection, ErrorCode, OptionalExtension, Row, TransactionBehavior, params};

use crate::{
    Audit, DeviceCall, DeviceCallOutcome, DeviceOp, DeviceOpResult, DeviceRecord, DeviceState,
    DeviceStatus, PayCommand, PayOutcome, RegisterOutcome, ResponseEncoder, Store, StoreError,
    TopUpOutcome,
};

/// How long SQLite waits for another process's lock before giving up with `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Schema migrations, applied in order; `PRAGMA user_version` records how many have run.
/// Never edit a released entry: append a new one.
const MIGRATIONS: &[&str] = &[r"
CREATE TABLE devices (
    id             BLOB PRIMARY KEY CHECK (length(id) = 8),
    name           TEXT NOT NULL,
    price_per_unit INTEGER NOT NULL,
    unit_name      TEXT NOT NULL,
    currency       TEXT NOT NULL,
    key_version    INTEGER NOT NULL,
    created_at     INTEGER NOT NULL,
    last_seq       INTEGER,
    last_digest    BLOB,
    last_response  BLOB,
    last_seen      INTEGER
) STRICT;

CREATE TABLE wallets (
    user_id   TEXT PRIMARY KEY,
    available INTEGER NOT NULL CHECK (available >= 0),
    held      INTEGER NOT NULL CHECK (held >= 0),
    spent     INTEGER NOT NULL CHECK (spent >= 0)
) STRICT;

CREATE TABLE sessions (
    id             BLOB PRIMARY KEY CHECK (length(id) = 16),
    device_id      BLOB NOT NULL REFERENCES devices (id),
    user_id        TEXT NOT NULL,
    hold           INTEGER NOT NULL,
    price_per_unit INTEGER NOT NULL,
    unit_name      TEXT NOT NULL,
    currency       TEXT NOT NULL,
    use_counter    INTEGER NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('AUTHORIZED', 'ACTIVE', 'SETTLED', 'EXPIRED')),
    units          INTEGER NOT NULL,
    amount         INTEGER NOT NULL,
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    started_at     INTEGER,
    ended_at       INTEGER
) STRICT;

-- One open session per machine, enforced by the database as well as by `pay`.
CREATE UNIQUE INDEX sessions_one_open_per_device ON sessions (device_id)
    WHERE status IN ('AUTHORIZED', 'ACTIVE');
CREATE INDEX sessions_by_deadline ON sessions (status, expires_at);
CREATE INDEX sessions_by_user ON sessions (user_id, status);

CREATE TABLE advert_uses (
    device_id   BLOB NOT NULL REFERENCES devices (id),
    slot        INTEGER NOT NULL,
    use_counter INTEGER NOT NULL,
    session_id  BLOB NOT NULL REFERENCES sessions (id),
    PRIMARY KEY (device_id, slot, use_counter)
) STRICT, WITHOUT ROWID;

CREATE TABLE idempotency (
    scope       TEXT NOT NULL,
    key         TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    result      BLOB,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (scope, key)
) STRICT, WITHOUT ROWID;

CREATE TABLE ledger (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at         INTEGER NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('TOPUP', 'HOLD', 'RELEASE', 'CAPTURE')),
    debit      TEXT NOT NULL,
    credit     TEXT NOT NULL,
    amount     INTEGER NOT NULL CHECK (amount > 0),
    session_id BLOB
) STRICT;
CREATE INDEX ledger_by_kind ON ledger (kind);
"];

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

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db)?;
    let version: i64 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(db)?;
    let applied = usize::try_from(version)
        .map_err(|_| StoreError::Corrupt(format!("negative schema version {version}")))?;
    if applied > MIGRATIONS.len() {
        return Err(StoreError::Corrupt(format!(
            "database schema version {applied} is newer than this build ({})",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        tracing::info!(migration = i + 1, "applying schema migration");
        tx.execute_batch(sql).map_err(db)?;
    }
    let target = i64::try_from(MIGRATIONS.len())
        .map_err(|_| StoreError::Internal("too many migrations".into()))?;
    tx.pragma_update(None, "user_version", target).map_err(db)?;
    tx.commit().map_err(db)
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
            Ok(Some(DeviceStatus {
                device: row.record,
                last_seen: row.last_seen,
                open_session: open_session_of(c, id)?,
            }))
        })
        .await
    }

    async fn top_up(
        &self,
        user: &UserId,
        amount: Amount,
        key: &IdempotencyKey,
        now: u64,
    ) -> Result<TopUpOutcome, StoreError> {
        let (user, key) = (user.clone(), key.clone());
        self.run(move |c| {
            expire_sessions(c, Due::OfUser(&user), now)?;
            let scope = format!("topup:{user}");
            let fingerprint = amount.minor().to_string();
            if let Some(seen) = load_idempotency(c, &scope, &key)? {
                return Ok(if seen.fingerprint == fingerprint {
                    TopUpOutcome::Replayed(load_wallet(c, &user)?)
                } else {
                    TopUpOutcome::KeyReused
                });
            }
            let (wallet, entry) = match load_wallet(c, &user)?.top_up(&user, amount) {
                Err(WalletError::Overflow) => return Ok(TopUpOutcome::LimitExceeded),
                other => other.map_err(wallet_rule)?,
            };
            save_wallet(c, &user, &wallet)?;
            write_entry(c, &entry, now, None)?;
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
        self.run(move |c| pay(c, &cmd)).await
    }

    async fn find_pay(
        &self,
        user: &UserId,
        key: &IdempotencyKey,
        now: u64,
    ) -> Result<Option<Session>, StoreError> {
        let (user, key) = (user.clone(), key.clone());
        self.run(move |c| {
            let Some(seen) = load_idempotency(c, &pay_scope(&user), &key)? else {
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
        encode: &ResponseEncoder,
    ) -> Result<DeviceCallOutcome, StoreError> {
        // `encode` is borrowed, so it cannot move to the blocking thread. The transaction stays open
        // there while the result travels here to be encoded and the body travels back to be saved
        // with it. If this future is dropped (or `encode` panics) the body never arrives and the
        // transaction rolls back.
        let call = call.clone();
        let (result_tx, result_rx) = tokio::sync::oneshot::channel::<DeviceOpResult>();
        let (body_tx, body_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(1);
        let transaction = self.run(move |c| match run_device_call(c, &call)? {
            Prepared::Answered(outcome) => Ok(outcome),
            Prepared::Ran(result) => {
                result_tx.send(result).map_err(|_| {
                    StoreError::Internal("device call abandoned before encoding".into())
                })?;
                let body = body_rx.recv().map_err(|_| {
                    StoreError::Internal("device call abandoned while encoding".into())
                })?;
                save_answer(c, &call, &body)?;
                Ok(DeviceCallOutcome::Fresh(body))
            }
        });
        let encoding = async move {
            if let Ok(result) = result_rx.await {
                // A send error means the transaction already failed; its error is returned below.
                let _ = body_tx.send(encode(&result));
            }
        };
        let (outcome, ()) = tokio::join!(transaction, encoding);
        outcome
    }

    async fn expire_due(&self, now: u64) -> Result<usize, StoreError> {
        self.run(move |c| expire_sessions(c, Due::All, now)).await
    }

    async fn audit(&self) -> Result<Audit, StoreError> {
        self.run(audit).await
    }
}

// ---------------------------------------------------------------------------------------------
// Operations (each runs inside the caller's transaction)
// ---------------------------------------------------------------------------------------------

fn pay_scope(user: &UserId) -> String {
    format!("pay:{user}")
}

fn pay(c: &Connection, cmd: &PayCommand) -> Result<PayOutcome, StoreError> {
    let scope = pay_scope(&cmd.user);
    let fingerprint = format!("{}:{}", cmd.device, cmd.max_amount.minor());
    if let Some(seen) = load_idempotency(c, &scope, &cmd.key)? {
        if seen.fingerprint != fingerprint {
            return Ok(PayOutcome::KeyReused);
        }
        let id = seen.session_id()?;
        expire_sessions(c, Due::Only(id), cmd.now)?;
        return load_session(c, id)?
            .map(PayOutcome::Replayed)
            .ok_or_else(|| {
                StoreError::Corrupt(format!("pay key {} names a missing session {id}", cmd.key))
            });
    }

    let Some(device) = load_device(c, cmd.device)? else {
        return Ok(PayOutcome::DeviceUnknown);
    };
    expire_sessions(c, Due::OfDevice(cmd.device), cmd.now)?;
    // The user's own overdue holds go back to `available` before we check it.
    expire_sessions(c, Due::OfUser(&cmd.user), cmd.now)?;

    let status = DeviceStatus {
        device: device.record,
        last_seen: device.last_seen,
        open_session: open_session_of(c, cmd.device)?,
    };
    match status.state(cmd.now, cmd.offline_after_secs) {
        DeviceState::Offline => return Ok(PayOutcome::DeviceOffline),
        DeviceState::Busy => return Ok(PayOutcome::DeviceBusy),
        DeviceState::Idle => {}
    }

    let advert_used = c
        .query_row(
            "SELECT 1 FROM advert_uses WHERE device_id = ?1 AND slot = ?2 AND use_counter = ?3",
            params![cmd.device.as_bytes(), cmd.slot.get(), cmd.use_counter.get()],
            |_| Ok(()),
        )
        .optional()
        .map_err(db)?
        .is_some();
    if advert_used {
        return Ok(PayOutcome::AdvertUsed);
    }

    let (wallet, hold_entry) = match load_wallet(c, &cmd.user)?.hold(&cmd.user, cmd.max_amount) {
        Ok(held) => held,
        Err(WalletError::InsufficientFunds { available, .. }) => {
            return Ok(PayOutcome::InsufficientFunds { available });
        }
        Err(e) => return Err(wallet_rule(e)),
    };

    let session = Session::authorize(
        cmd.session_id,
        cmd.device,
        cmd.user.clone(),
        cmd.max_amount,
        status.device.tariff,
        cmd.use_counter,
        cmd.now,
        cmd.start_timeout_secs,
    );
    insert_session(c, &session)?;
    c.execute(
        "INSERT INTO advert_uses (device_id, slot, use_counter, session_id) VALUES (?1, ?2, ?3, ?4)",
        params![cmd.device.as_bytes(), cmd.slot.get(), cmd.use_counter.get(), session.id.as_bytes()],
    )
    .map_err(db)?;
    save_idempotency(
        c,
        &scope,
        &cmd.key,
        &fingerprint,
        Some(session.id.as_bytes()),
        cmd.now,
    )?;
    write_entry(c, &hold_entry, cmd.now, Some(session.id))?;
    save_wallet(c, &cmd.user, &wallet)?;
    Ok(PayOutcome::Created(session))
}

/// The first half of a device call: either an answer that needs no operation, or the result of
/// the operation, whose encoded body must still be saved.
enum Prepared {
    Answered(DeviceCallOutcome),
    Ran(DeviceOpResult),
}

fn run_device_call(c: &Connection, call: &DeviceCall) -> Result<Prepared, StoreError> {
    let Some(device) = load_device(c, call.device)? else {
        return Ok(Prepared::Answered(DeviceCallOutcome::DeviceUnknown));
    };
    if let Some(last_seq) = device.last_seq {
        if call.seq == last_seq && device.last_digest.as_deref() == Some(&call.digest[..]) {
            let body = device.last_response.ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "device {} has a sequence but no saved answer",
                    call.device
                ))
            })?;
            c.execute(
                "UPDATE devices SET last_seen = max(coalesce(last_seen, ?1), ?1) WHERE id = ?2",
                params![ts(call.now)?, call.device.as_bytes()],
            )
            .map_err(db)?;
            return Ok(Prepared::Answered(DeviceCallOutcome::Retry(body)));
        }
        if call.seq <= last_seq {
            return Ok(Prepared::Answered(DeviceCallOutcome::Replayed { last_seq }));
        }
    }

    let now = call.now;
    let result = match call.op {
        DeviceOp::Poll => {
            expire_sessions(c, Due::OfDevice(call.device), now)?;
            DeviceOpResult::Grants(query_sessions(
                c,
                "device_id = ?1 AND status = 'AUTHORIZED' ORDER BY created_at, id",
                [call.device.as_bytes()],
            )?)
        }
        DeviceOp::Start { session } => match load_session_of_device(c, session, call.device)? {
            None => DeviceOpResult::SessionNotFound,
            Some(mut s) => {
                expire_loaded(c, &mut s, now)?;
                match s.start(now) {
                    Ok(StartOutcome::Started) => {
                        save_session_state(c, &s)?;
                        DeviceOpResult::Session(s)
                    }
                    Ok(StartOutcome::AlreadyActive) => DeviceOpResult::Session(s),
                    Err(e) => DeviceOpResult::Refused(e),
                }
            }
        },
        DeviceOp::Report {
            session,
            units,
            last,
        } => match load_session_of_device(c, session, call.device)? {
            None => DeviceOpResult::SessionNotFound,
            Some(mut s) => {
                expire_loaded(c, &mut s, now)?;
                match s.report(units, last, now) {
                    Ok(ReportOutcome::Progress) => {
                        save_session_state(c, &s)?;
                        DeviceOpResult::Session(s)
                    }
                    Ok(ReportOutcome::Settled(settlement)) => {
                        save_session_state(c, &s)?;
                        close_hold(c, &s, settlement, now)?;
                        DeviceOpResult::Session(s)
                    }
                    Ok(ReportOutcome::AlreadySettled) => DeviceOpResult::Session(s),
                    Err(e) => DeviceOpResult::Refused(e),
                }
            }
        },
    };
    Ok(Prepared::Ran(result))
}

fn save_answer(c: &Connection, call: &DeviceCall, body: &[u8]) -> Result<(), StoreError> {
    c.execute(
        "UPDATE devices SET last_seq = ?1, last_digest = ?2, last_response = ?3,
                last_seen = max(coalesce(last_seen, ?4), ?4)
         WHERE id = ?5",
        params![
            call.seq,
            &call.digest[..],
            body,
            ts(call.now)?,
            call.device.as_bytes()
        ],
    )
    .map_err(db)?;
    Ok(())
}

/// Which AUTHORIZED sessions [`expire_sessions`] looks at.
#[derive(Clone, Copy)]
enum Due<'a> {
    All,
    OfDevice(DeviceId),
    OfUser(&'a UserId),
    Only(SessionId),
}

/// Expire every selected AUTHORIZED session whose start deadline is `<= now`, releasing its hold.
fn expire_sessions(c: &Connection, due: Due<'_>, now: u64) -> Result<usize, StoreError> {
    let (device, user, id) = match due {
        Due::All => (None, None, None),
        Due::OfDevice(d) => (Some(d.to_bytes()), None, None),
        Due::OfUser(u) => (None, Some(u.as_str()), None),
        Due::Only(s) => (None, None, Some(s.to_bytes())),
    };
    let sessions = query_sessions(
        c,
        "status = 'AUTHORIZED' AND expires_at <= ?1
         AND (?2 IS NULL OR device_id = ?2) AND (?3 IS NULL OR user_id = ?3) AND (?4 IS NULL OR id = ?4)",
        params![ts(now)?, device, user, id],
    )?;
    let mut expired = 0;
    for mut s in sessions {
        if expire_loaded(c, &mut s, now)? {
            expired += 1;
        }
    }
    Ok(expired)
}

/// Expire `s` if it is due, persisting the new state and the release. Returns whether it expired.
fn expire_loaded(c: &Connection, s: &mut Session, now: u64) -> Result<bool, StoreError> {
    let Some(settlement) = s.expire(now) else {
        return Ok(false);
    };
    save_session_state(c, s)?;
    close_hold(c, s, settlement, now)?;
    Ok(true)
}

/// Apply a session's settlement (capture and/or release) to its user's wallet and the ledger.
fn close_hold(
    c: &Connection,
    s: &Session,
    settlement: Settlement,
    now: u64,
) -> Result<(), StoreError> {
    let (wallet, entries) = load_wallet(c, &s.user_id)?
        .settle(&s.user_id, settlement.hold, settlement.capture)
        .map_err(wallet_rule)?;
    save_wallet(c, &s.user_id, &wallet)?;
    for entry in &entries {
        write_entry(c, entry, now, Some(s.id))?;
    }
    Ok(())
}

fn audit(c: &Connection) -> Result<Audit, StoreError> {
    let top_ups: i64 = c
        .query_row(
            "SELECT coalesce(sum(amount), 0) FROM ledger WHERE kind = 'TOPUP'",
            [],
            |r| r.get(0),
        )
        .map_err(db)?;
    let (available, held, spent): (i64, i64, i64) = c
        .query_row(
            "SELECT coalesce(sum(available), 0), coalesce(sum(held), 0), coalesce(sum(spent), 0) FROM wallets",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .map_err(db)?;
    let open_holds: i64 = c
        .query_row(
            "SELECT coalesce(sum(hold), 0) FROM sessions WHERE status IN ('AUTHORIZED', 'ACTIVE')",
            [],
            |r| r.get(0),
        )
        .map_err(db)?;

    // Balance of every account: credits minus debits.
    let mut balances: HashMap<String, i64> = HashMap::new();
    {
        let mut stmt = c
            .prepare(
                "SELECT account, sum(delta) FROM (
                     SELECT credit AS account, amount AS delta FROM ledger
                     UNION ALL
                     SELECT debit AS account, -amount AS delta FROM ledger
                 ) GROUP BY account",
            )
            .map_err(db)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(db)?;
        for row in rows {
            let (account, balance) = row.map_err(db)?;
            balances.insert(account, balance);
        }
    }
    let ledger_sum = balances
        .values()
        .try_fold(0i64, |sum, b| sum.checked_add(*b))
        .ok_or_else(|| StoreError::Corrupt("ledger balances overflow".into()))?;
    let revenue = balances
        .get(&LedgerAccount::Revenue.key())
        .copied()
        .unwrap_or(0);

    // Each wallet against its two ledger accounts; then any user account left without a wallet
    // that still has a balance is a mismatch too (counted per account).
    let mut mismatched_wallets = 0u64;
    {
        let mut stmt = c
            .prepare("SELECT user_id, available, held FROM wallets")
            .map_err(db)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    parse_col(r, 0, |s: String| UserId::parse(&s))?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .map_err(db)?;
        for row in rows {
            let (user, available, held) = row.map_err(db)?;
            let ledger_available = balances
                .remove(&LedgerAccount::UserAvailable(user.clone()).key())
                .unwrap_or(0);
            let ledger_held = balances
                .remove(&LedgerAccount::UserHeld(user).key())
                .unwrap_or(0);
            if available != ledger_available || held != ledger_held {
                mismatched_wallets += 1;
            }
        }
    }
    let system = [LedgerAccount::Funding.key(), LedgerAccount::Revenue.key()];
    let orphans = balances
        .iter()
        .filter(|(account, balance)| **balance != 0 && !system.contains(account))
        .count();
    mismatched_wallets += u64::try_from(orphans).unwrap_or(u64::MAX);

    Ok(Audit {
        top_ups,
        available,
        held,
        spent,
        revenue,
        open_holds,
        ledger_sum,
        mismatched_wallets,
    })
}

// ---------------------------------------------------------------------------------------------
// Rows
// ---------------------------------------------------------------------------------------------

struct DeviceRow {
    record: DeviceRecord,
    last_seq: Option<u32>,
    last_digest: Option<Vec<u8>>,
    last_response: Option<Vec<u8>>,
    last_seen: Option<u64>,
}

fn load_device(c: &Connection, id: DeviceId) -> Result<Option<DeviceRow>, StoreError> {
    c.query_row(
        "SELECT id, name, price_per_unit, unit_name, currency, key_version, created_at,
                last_seq, last_digest, last_response, last_seen
         FROM devices WHERE id = ?1",
        [id.as_bytes()],
        |r| {
            Ok(DeviceRow {
                record: DeviceRecord {
                    id: DeviceId::from_bytes(r.get(0)?),
                    name: parse_col(r, 1, |s: String| DeviceName::parse(&s))?,
                    tariff: Tariff {
                        price_per_unit: amount_col(r, 2)?,
                        unit_name: parse_col(r, 3, |s: String| UnitName::parse(&s))?,
                        currency: parse_col(r, 4, |s: String| Currency::parse(&s))?,
                    },
                    key_version: parse_col(r, 5, KeyVersion::new)?,
                    created_at: r.get(6)?,
                },
                last_seq: r.get(7)?,
                last_digest: r.get(8)?,
                last_response: r.get(9)?,
                last_seen: r.get(10)?,
            })
        },
    )
    .optional()
    .map_err(db)
}

fn open_session_of(c: &Connection, device: DeviceId) -> Result<Option<SessionId>, StoreError> {
    c.query_row(
        "SELECT id FROM sessions WHERE device_id = ?1 AND status IN ('AUTHORIZED', 'ACTIVE')",
        [device.as_bytes()],
        |r| Ok(SessionId::from_bytes(r.get(0)?)),
    )
    .optional()
    .map_err(db)
}

const SESSION_COLUMNS: &str = "id, device_id, user_id, hold, price_per_unit, unit_name, currency, use_counter, \
                               status, units, amount, created_at, expires_at, started_at, ended_at";

fn session_from_row(r: &Row<'_>) -> rusqlite::Result<Session> {
    Ok(Session {
        id: SessionId::from_bytes(r.get(0)?),
        device_id: DeviceId::from_bytes(r.get(1)?),
        user_id: parse_col(r, 2, |s: String| UserId::parse(&s))?,
        hold: amount_col(r, 3)?,
        tariff: Tariff {
            price_per_unit: amount_col(r, 4)?,
            unit_name: parse_col(r, 5, |s: String| UnitName::parse(&s))?,
            currency: parse_col(r, 6, |s: String| Currency::parse(&s))?,
        },
        use_counter: UseCounter::new(r.get(7)?),
        status: parse_col(r, 8, |s: String| {
            SessionStatus::parse(&s).ok_or(BadValue("unknown session status"))
        })?,
        units: units_from_sql(r.get(9)?),
        amount: amount_col(r, 10)?,
        created_at: r.get(11)?,
        expires_at: r.get(12)?,
        started_at: r.get(13)?,
        ended_at: r.get(14)?,
    })
}

fn query_sessions<P: rusqlite::Params>(
    c: &Connection,
    filter: &str,
    params: P,
) -> Result<Vec<Session>, StoreError> {
    let mut stmt = c
        .prepare_cached(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE {filter}"
        ))
        .map_err(db)?;
    let rows = stmt.query_map(params, session_from_row).map_err(db)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(db)
}

fn load_session(c: &Connection, id: SessionId) -> Result<Option<Session>, StoreError> {
    Ok(query_sessions(c, "id = ?1", [id.as_bytes()])?
        .into_iter()
        .next())
}

fn load_session_of_device(
    c: &Connection,
    id: SessionId,
    device: DeviceId,
) -> Result<Option<Session>, StoreError> {
    Ok(query_sessions(
        c,
        "id = ?1 AND device_id = ?2",
        params![id.as_bytes(), device.as_bytes()],
    )?
    .into_iter()
    .next())
}

fn insert_session(c: &Connection, s: &Session) -> Result<(), StoreError> {
    c.execute(
        &format!(
            "INSERT INTO sessions ({SESSION_COLUMNS})
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"
        ),
        params![
            s.id.as_bytes(),
            s.device_id.as_bytes(),
            s.user_id.as_str(),
            s.hold.minor(),
            s.tariff.price_per_unit.minor(),
            s.tariff.unit_name.as_str(),
            s.tariff.currency.as_str(),
            s.use_counter.get(),
            s.status.as_str(),
            units_to_sql(s.units),
            s.amount.minor(),
            ts(s.created_at)?,
            ts(s.expires_at)?,
            s.started_at.map(ts).transpose()?,
            s.ended_at.map(ts).transpose()?,
        ],
    )
    .map_err(db)?;
    Ok(())
}

/// Persist what the state machine may change: status, units, amount, start and end times.
fn save_session_state(c: &Connection, s: &Session) -> Result<(), StoreError> {
    c.execute(
        "UPDATE sessions SET status = ?1, units = ?2, amount = ?3, started_at = ?4, ended_at = ?5 WHERE id = ?6",
        params![
            s.status.as_str(),
            units_to_sql(s.units),
            s.amount.minor(),
            s.started_at.map(ts).transpose()?,
            s.ended_at.map(ts).transpose()?,
            s.id.as_bytes(),
        ],
    )
    .map_err(db)?;
    Ok(())
}

fn load_wallet(c: &Connection, user: &UserId) -> Result<Wallet, StoreError> {
    c.query_row(
        "SELECT available, held, spent FROM wallets WHERE user_id = ?1",
        [user.as_str()],
        |r| {
            Ok(Wallet {
                available: amount_col(r, 0)?,
                held: amount_col(r, 1)?,
                spent: amount_col(r, 2)?,
            })
        },
    )
    .optional()
    .map(Option::unwrap_or_default)
    .map_err(db)
}

fn save_wallet(c: &Connection, user: &UserId, w: &Wallet) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO wallets (user_id, available, held, spent) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (user_id) DO UPDATE
         SET available = excluded.available, held = excluded.held, spent = excluded.spent",
        params![
            user.as_str(),
            w.available.minor(),
            w.held.minor(),
            w.spent.minor()
        ],
    )
    .map_err(db)?;
    Ok(())
}

/// Record one ledger entry. A zero movement records nothing (the ledger holds positive amounts).
fn write_entry(
    c: &Connection,
    e: &LedgerEntry,
    at: u64,
    session: Option<SessionId>,
) -> Result<(), StoreError> {
    if e.amount.is_zero() {
        return Ok(());
    }
    c.execute(
        "INSERT INTO ledger (at, kind, debit, credit, amount, session_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            ts(at)?,
            e.kind.as_str(),
            e.debit.key(),
            e.credit.key(),
            e.amount.minor(),
            session.map(SessionId::to_bytes)
        ],
    )
    .map_err(db)?;
    Ok(())
}

struct Idempotency {
    fingerprint: String,
    result: Option<Vec<u8>>,
}

impl Idempotency {
    /// The session a pay record points to.
    fn session_id(&self) -> Result<SessionId, StoreError> {
        self.result
            .as_deref()
            .and_then(|b| <[u8; 16]>::try_from(b).ok())
            .map(SessionId::from_bytes)
            .ok_or_else(|| StoreError::Corrupt("a pay idempotency record has no session id".into()))
    }
}

fn load_idempotency(
    c: &Connection,
    scope: &str,
    key: &IdempotencyKey,
) -> Result<Option<Idempotency>, StoreError> {
    c.query_row(
        "SELECT fingerprint, result FROM idempotency WHERE scope = ?1 AND key = ?2",
        params![scope, key.as_str()],
        |r| {
            Ok(Idempotency {
                fingerprint: r.get(0)?,
                result: r.get(1)?,
            })
        },
    )
    .optional()
    .map_err(db)
}

fn save_idempotency(
    c: &Connection,
    scope: &str,
    key: &IdempotencyKey,
    fingerprint: &str,
    result: Option<&[u8]>,
    now: u64,
) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO idempotency (scope, key, fingerprint, result, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![scope, key.as_str(), fingerprint, result, ts(now)?],
    )
    .map_err(db)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Conversions and errors
// ---------------------------------------------------------------------------------------------

/// A unix time as SQLite's INTEGER.
fn ts(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v)
        .map_err(|_| StoreError::Internal(format!("time {v} does not fit a 64-bit signed integer")))
}

/// Units are the machine's meter reading and any `u64` must round-trip, so they are stored as the
/// same 64 bits read as `i64` (readings above `i64::MAX`, nonsense in practice, show as negative in
/// SQL; nothing does arithmetic on them there).
fn units_to_sql(u: Units) -> i64 {
    i64::from_ne_bytes(u.get().to_ne_bytes())
}

fn units_from_sql(v: i64) -> Units {
    Units::new(u64::from_ne_bytes(v.to_ne_bytes()))
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct BadValue(&'static str);

/// Read column `idx` as `T` and parse it into a domain type; a parse failure is a conversion error,
/// which [`db`] reports as [`StoreError::Corrupt`].
fn parse_col<T, U, E>(
    r: &Row<'_>,
    idx: usize,
    parse: impl FnOnce(T) -> Result<U, E>,
) -> rusqlite::Result<U>
where
    T: FromSql,
    E: std::error::Error + Send + Sync + 'static,
{
    let raw: T = r.get(idx)?;
    parse(raw).map_err(|e| rusqlite::Error::FromSqlConversionFailure(idx, Type::Null, Box::new(e)))
}

fn amount_col(r: &Row<'_>, idx: usize) -> rusqlite::Result<Amount> {
    parse_col(r, idx, Amount::new)
}

/// Classify a SQLite error: contention is retryable, unreadable rows are corruption.
#[allow(clippy::needless_pass_by_value, reason = "shaped for `map_err(db)`")]
fn db(e: rusqlite::Error) -> StoreError {
    use rusqlite::Error as E;
    match &e {
        E::FromSqlConversionFailure(..)
        | E::IntegralValueOutOfRange(..)
        | E::InvalidColumnType(..) => StoreError::Corrupt(e.to_string()),
        _ => match e.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
                StoreError::Unavailable(e.to_string())
            }
            _ => StoreError::Internal(e.to_string()),
        },
    }
}

/// A wallet rule refused an operation the store had already decided to make: balances near
/// [`Amount::MAX`] (overflow) or a hold that is not there (the store's own invariant broken).
fn wallet_rule(e: WalletError) -> StoreError {
    StoreError::Internal(format!("wallet rule refused a stored operation: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
