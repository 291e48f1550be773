//! The schema and its migrations.

use blepay_store::StoreError;
use rusqlite::{Connection, TransactionBehavior};

use crate::convert::db;

/// Schema migrations, applied in order; `PRAGMA user_version` records how many have run.
/// Never edit a released entry: append a new one.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: the first release.
    r"
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
",
    // 2: the refusal code saved with a machine's last answer (`SavedAnswer::code`). Rows saved
    // before it have NULL there: their answer reads back as not a refusal (HTTP 200).
    "ALTER TABLE devices ADD COLUMN last_response_code TEXT;",
    // 3: issue 9 — a machine's latest heartbeat telemetry; sessions closed by timeout and the
    // final reports that arrive late (docs/sessions.md); the LATE_CAPTURE ledger entry (the
    // ledger's CHECK is widened by rebuilding the table, ids kept).
    r"
ALTER TABLE devices ADD COLUMN telemetry_at INTEGER;
ALTER TABLE devices ADD COLUMN telemetry_firmware TEXT;
ALTER TABLE devices ADD COLUMN telemetry_faults TEXT;
ALTER TABLE devices ADD COLUMN telemetry_signal INTEGER;
ALTER TABLE devices ADD COLUMN telemetry_uptime INTEGER;
ALTER TABLE devices ADD COLUMN telemetry_boots INTEGER;
ALTER TABLE devices ADD COLUMN telemetry_outbox INTEGER;
ALTER TABLE devices ADD COLUMN telemetry_lifetime_units INTEGER;

ALTER TABLE sessions ADD COLUMN last_report_at INTEGER;
ALTER TABLE sessions ADD COLUMN closed_by TEXT CHECK (closed_by IN ('REPORT', 'TIMEOUT'));
ALTER TABLE sessions ADD COLUMN late_units INTEGER;
ALTER TABLE sessions ADD COLUMN late_at INTEGER;
ALTER TABLE sessions ADD COLUMN late_charged INTEGER;
UPDATE sessions SET closed_by = 'REPORT' WHERE status = 'SETTLED';
-- ACTIVE sessions by the base of their report deadline, for the timeout sweep.
CREATE INDEX sessions_active_by_report ON sessions (status, coalesce(last_report_at, started_at));

CREATE TABLE ledger_v3 (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at         INTEGER NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('TOPUP', 'HOLD', 'RELEASE', 'CAPTURE', 'LATE_CAPTURE')),
    debit      TEXT NOT NULL,
    credit     TEXT NOT NULL,
    amount     INTEGER NOT NULL CHECK (amount > 0),
    session_id BLOB
) STRICT;
INSERT INTO ledger_v3 (id, at, kind, debit, credit, amount, session_id)
    SELECT id, at, kind, debit, credit, amount, session_id FROM ledger;
DROP TABLE ledger;
ALTER TABLE ledger_v3 RENAME TO ledger;
CREATE INDEX ledger_by_kind ON ledger (kind);
",
    // 4: issue 10 (M4) — the pay rate limit counts a user's sessions opened since the start of the
    // current window.
    "CREATE INDEX sessions_by_user_created ON sessions (user_id, created_at);",
    // 5: issue 11 (item 8) — operators with roles (the token's secret kept only as its SHA-256)
    // and the durable audit trail of what they did (listed newest first).
    r"
CREATE TABLE operators (
    id         TEXT PRIMARY KEY CHECK (length(id) = 16),
    name       TEXT NOT NULL,
    role       TEXT NOT NULL,
    token_hash BLOB NOT NULL CHECK (length(token_hash) = 32),
    created_at INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    revoked_at INTEGER
) STRICT;

CREATE TABLE audit_events (
    id              TEXT PRIMARY KEY,
    dedupe_key      TEXT NOT NULL UNIQUE,
    at              INTEGER NOT NULL,
    principal       TEXT NOT NULL,
    role            TEXT NOT NULL,
    action          TEXT NOT NULL,
    target          TEXT NOT NULL,
    amount          INTEGER,
    idempotency_key TEXT
) STRICT;
CREATE INDEX audit_events_by_time ON audit_events (at, id);
",
    // 6: issue 11 (items 4, 6): a machine's service state; a user's daily spending cap override
    // (`0` = no cap for them; no row = the deployment default).
    r"
ALTER TABLE devices ADD COLUMN service_state TEXT NOT NULL DEFAULT 'IN_SERVICE'
    CHECK (service_state IN ('IN_SERVICE', 'OUT_OF_SERVICE', 'DECOMMISSIONED'));
CREATE TABLE spending_limits (
    user_id     TEXT PRIMARY KEY,
    daily_limit INTEGER NOT NULL CHECK (daily_limit >= 0)
) STRICT;
",
    // 7: issue 11 (item 7) — the back office's lists: sessions by machine and by time, a user's
    // statement (the ledger rows naming their accounts).
    r"
CREATE INDEX sessions_by_device_created ON sessions (device_id, created_at);
CREATE INDEX sessions_by_created ON sessions (created_at);
CREATE INDEX ledger_by_debit ON ledger (debit, at);
CREATE INDEX ledger_by_credit ON ledger (credit, at);
",
    // 8: issue 11 (item 5) — a device's key epoch (0 for every existing device: the key it has), a
    // rotation pending until the first frame under its key, the last rotation's idempotency
    // key, and the revocation.
    r"
ALTER TABLE devices ADD COLUMN key_epoch INTEGER NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN key_pending INTEGER;
ALTER TABLE devices ADD COLUMN key_rotation_key TEXT;
ALTER TABLE devices ADD COLUMN key_rotation_epoch INTEGER;
ALTER TABLE devices ADD COLUMN revoked_at INTEGER;
ALTER TABLE devices ADD COLUMN revoked_reason TEXT;
",
    // 9: issue 11 (items 1-3) — refunds (a wallet's and a session's refunded totals, the REFUND ledger
    // entry), sessions closed by an operator (`closed_by` widened to OPERATOR: a new column with
    // the wider CHECK replaces it), the principal who made a ledger entry (`actor`: the
    // operator's principal for top-ups, refunds and hand closes; NULL for the system), and the
    // users' problem reports (one open per session).
    r"
ALTER TABLE wallets ADD COLUMN refunded INTEGER NOT NULL DEFAULT 0 CHECK (refunded >= 0);
ALTER TABLE sessions ADD COLUMN refunded INTEGER NOT NULL DEFAULT 0 CHECK (refunded >= 0);
ALTER TABLE sessions ADD COLUMN close_reason TEXT
    CHECK (close_reason IN ('REPORT', 'TIMEOUT', 'OPERATOR'));
UPDATE sessions SET close_reason = closed_by;
ALTER TABLE sessions DROP COLUMN closed_by;
ALTER TABLE sessions RENAME COLUMN close_reason TO closed_by;

CREATE TABLE ledger_v5 (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at         INTEGER NOT NULL,
    kind       TEXT NOT NULL
               CHECK (kind IN ('TOPUP', 'HOLD', 'RELEASE', 'CAPTURE', 'LATE_CAPTURE', 'REFUND')),
    debit      TEXT NOT NULL,
    credit     TEXT NOT NULL,
    amount     INTEGER NOT NULL CHECK (amount > 0),
    session_id BLOB,
    actor      TEXT
) STRICT;
INSERT INTO ledger_v5 (id, at, kind, debit, credit, amount, session_id)
    SELECT id, at, kind, debit, credit, amount, session_id FROM ledger;
DROP TABLE ledger;
ALTER TABLE ledger_v5 RENAME TO ledger;
CREATE INDEX ledger_by_kind ON ledger (kind);
CREATE INDEX ledger_by_session ON ledger (session_id);
CREATE INDEX ledger_by_debit ON ledger (debit, at);
CREATE INDEX ledger_by_credit ON ledger (credit, at);
CREATE INDEX sessions_refunded ON sessions (id) WHERE refunded > 0;

CREATE TABLE problems (
    id                BLOB PRIMARY KEY CHECK (length(id) = 16),
    session_id        BLOB NOT NULL REFERENCES sessions (id),
    user_id           TEXT NOT NULL,
    reason            TEXT NOT NULL,
    created_at        INTEGER NOT NULL,
    resolution        TEXT CHECK (resolution IN ('DISMISSED', 'REFUNDED')),
    resolved_at       INTEGER,
    resolved_by       TEXT,
    resolution_reason TEXT
) STRICT;
CREATE UNIQUE INDEX problems_one_open_per_session ON problems (session_id)
    WHERE resolution IS NULL;
CREATE INDEX problems_open_by_age ON problems (created_at, id) WHERE resolution IS NULL;
",
    // 10: issue 12 — users' top-ups through a payment provider (docs/topups.md). The ledger's
    // kinds widen to PROVIDER_CREDIT / PROVIDER_DEBIT (a rebuilt table with the wider CHECK, as in
    // 9); `provider_topups` (one per (user, key); a provider's payment object names at most one),
    // `provider_events` (each verified notification applied at most once per (provider, key),
    // written in the transaction of the money it moves) and `topup_refunds` (one per (top-up,
    // key)).
    r"
CREATE TABLE ledger_v10 (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at         INTEGER NOT NULL,
    kind       TEXT NOT NULL
               CHECK (kind IN ('TOPUP', 'HOLD', 'RELEASE', 'CAPTURE', 'LATE_CAPTURE', 'REFUND',
                               'PROVIDER_CREDIT', 'PROVIDER_DEBIT')),
    debit      TEXT NOT NULL,
    credit     TEXT NOT NULL,
    amount     INTEGER NOT NULL CHECK (amount > 0),
    session_id BLOB,
    actor      TEXT
) STRICT;
INSERT INTO ledger_v10 (id, at, kind, debit, credit, amount, session_id, actor)
    SELECT id, at, kind, debit, credit, amount, session_id, actor FROM ledger;
DROP TABLE ledger;
ALTER TABLE ledger_v10 RENAME TO ledger;
CREATE INDEX ledger_by_kind ON ledger (kind);
CREATE INDEX ledger_by_session ON ledger (session_id);
CREATE INDEX ledger_by_debit ON ledger (debit, at);
CREATE INDEX ledger_by_credit ON ledger (credit, at);

CREATE TABLE provider_topups (
    id                BLOB PRIMARY KEY CHECK (length(id) = 16),
    user_id           TEXT NOT NULL,
    provider          TEXT NOT NULL CHECK (provider IN ('stripe', 'wechatpay')),
    amount            INTEGER NOT NULL CHECK (amount >= 0),
    currency          TEXT NOT NULL,
    status            TEXT NOT NULL
                      CHECK (status IN ('PENDING', 'SUCCEEDED', 'FAILED', 'REFUNDED')),
    idem_key          TEXT NOT NULL,
    provider_ref      TEXT,
    client_secret     TEXT,
    transaction_id    TEXT,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    credited          INTEGER NOT NULL CHECK (credited >= 0),
    provider_refunded INTEGER NOT NULL CHECK (provider_refunded >= 0),
    disputed          INTEGER NOT NULL CHECK (disputed >= 0),
    refunds_committed INTEGER NOT NULL CHECK (refunds_committed >= 0),
    debited           INTEGER NOT NULL CHECK (debited >= 0 AND debited <= credited),
    mismatch          TEXT,
    failure           TEXT,
    UNIQUE (user_id, idem_key)
) STRICT;
CREATE UNIQUE INDEX provider_topups_by_ref ON provider_topups (provider, provider_ref)
    WHERE provider_ref IS NOT NULL;
CREATE INDEX provider_topups_by_created ON provider_topups (created_at, id);
CREATE INDEX provider_topups_by_user_created ON provider_topups (user_id, created_at, id);

CREATE TABLE provider_events (
    provider   TEXT NOT NULL,
    event_key  TEXT NOT NULL,
    topup_id   BLOB NOT NULL REFERENCES provider_topups (id),
    outcome    TEXT NOT NULL CHECK (outcome IN ('APPLIED', 'MISMATCH', 'IGNORED')),
    applied_at INTEGER NOT NULL,
    PRIMARY KEY (provider, event_key)
) STRICT;
CREATE INDEX provider_events_by_topup ON provider_events (topup_id);

CREATE TABLE topup_refunds (
    id         BLOB PRIMARY KEY CHECK (length(id) = 16),
    topup_id   BLOB NOT NULL REFERENCES provider_topups (id),
    amount     INTEGER NOT NULL CHECK (amount > 0),
    reason     TEXT NOT NULL,
    actor      TEXT NOT NULL,
    idem_key   TEXT NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('REQUESTED', 'SUCCEEDED', 'FAILED')),
    failure    TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    UNIQUE (topup_id, idem_key)
) STRICT;
",
    // 11: the operator console — its sign-in sessions (only the SHA-256 of the cookie's secret;
    // records expired a day are pruned on the next sign-in) and one telemetry sample per fresh
    // heartbeat for a machine's chart (kept `TELEMETRY_HISTORY_SECS`, pruned per machine when it
    // saves a new one; `id` orders samples received in one second).
    r"
CREATE TABLE console_sessions (
    id_hash    BLOB PRIMARY KEY CHECK (length(id_hash) = 32),
    operator   TEXT NOT NULL,
    role       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    ended_at   INTEGER
) STRICT;
CREATE INDEX console_sessions_by_expiry ON console_sessions (expires_at);

CREATE TABLE telemetry_samples (
    id             INTEGER PRIMARY KEY,
    device_id      BLOB NOT NULL REFERENCES devices (id),
    at             INTEGER NOT NULL,
    firmware       TEXT NOT NULL,
    faults         TEXT NOT NULL,
    signal         INTEGER NOT NULL,
    uptime         INTEGER NOT NULL,
    boots          INTEGER NOT NULL,
    outbox         INTEGER NOT NULL,
    lifetime_units INTEGER NOT NULL
) STRICT;
CREATE INDEX telemetry_samples_by_device ON telemetry_samples (device_id, at);
",
    // 12: issue 14 — every pay reads the user's spending of the day (`fleet::spending_unexpired`:
    // status, hold and amount of each session opened that day); the index carries those columns,
    // so the read is of the index alone instead of one table lookup per session of the day.
    r"
DROP INDEX sessions_by_user_created;
CREATE INDEX sessions_by_user_created ON sessions (user_id, created_at, status, hold, amount);
",
];

pub(crate) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
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
