//! Conversions between domain values and SQLite's, and the classification of SQLite errors.

use blepay_core::{Amount, Units, WalletError};
use blepay_store::StoreError;
use rusqlite::types::{FromSql, Type};
use rusqlite::{ErrorCode, Row};

/// A unix time as SQLite's INTEGER.
pub(crate) fn ts(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v)
        .map_err(|_| StoreError::Internal(format!("time {v} does not fit a 64-bit signed integer")))
}

/// Units are the machine's meter reading and any `u64` must round-trip, so they are stored as the
/// same 64 bits read as `i64` (readings above `i64::MAX`, nonsense in practice, show as negative in
/// SQL; nothing does arithmetic on them there).
pub(crate) fn units_to_sql(u: Units) -> i64 {
    i64::from_ne_bytes(u.get().to_ne_bytes())
}

pub(crate) fn units_from_sql(v: i64) -> Units {
    Units::new(u64::from_ne_bytes(v.to_ne_bytes()))
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct BadValue(pub(crate) &'static str);

/// Read column `idx` as `T` and parse it into a domain type; a parse failure is a conversion error,
/// which [`db`] reports as [`StoreError::Corrupt`].
pub(crate) fn parse_col<T, U, E>(
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

pub(crate) fn amount_col(r: &Row<'_>, idx: usize) -> rusqlite::Result<Amount> {
    parse_col(r, idx, Amount::new)
}

/// Classify a SQLite error: contention is retryable, unreadable rows are corruption.
#[allow(clippy::needless_pass_by_value, reason = "shaped for `map_err(db)`")]
pub(crate) fn db(e: rusqlite::Error) -> StoreError {
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
pub(crate) fn wallet_rule(e: WalletError) -> StoreError {
    StoreError::Internal(format!("wallet rule refused a stored operation: {e}"))
}

/// Statements through the connection's prepared-statement cache: a pay runs about fifteen, and
/// preparing each afresh (parsing and planning the SQL) cost more than running it.
pub(crate) trait Cached {
    /// [`Connection::execute`] on a cached statement.
    fn exec_cached<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize>;
    /// [`Connection::query_row`] on a cached statement.
    fn row_cached<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>;
}

impl Cached for rusqlite::Connection {
    fn exec_cached<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }

    fn row_cached<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    {
        self.prepare_cached(sql)?.query_row(params, f)
    }
}

/// Prepared statements kept per connection: more than the store has distinct statements, so
/// none is ever prepared twice on a connection.
pub(crate) const STATEMENT_CACHE: usize = 256;
