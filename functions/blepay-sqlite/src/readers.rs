//! Read-only connections for the operations that only read: in WAL mode they read the last
//! committed state without waiting for the writer (and the writer does not wait for them).
//!
//! Each read runs in one deferred transaction, so it sees one snapshot. Idle connections are
//! kept for reuse, at most [`MAX_IDLE`]; more concurrent reads open more, closed when returned.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use blepay_store::StoreError;
use rusqlite::{Connection, OpenFlags};

use crate::BUSY_TIMEOUT;
use crate::convert::db;

/// The most idle read connections kept.
pub(crate) const MAX_IDLE: usize = 8;

pub(crate) struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl fmt::Debug for Readers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Readers")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Readers {
    pub(crate) fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            idle: Mutex::new(Vec::new()),
        }
    }

    fn open(&self) -> Result<Connection, StoreError> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(db)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(db)?;
        conn.set_prepared_statement_cache_capacity(crate::convert::STATEMENT_CACHE);
        Ok(conn)
    }

    /// Run `work` on a read-only connection, in one snapshot.
    pub(crate) fn read<T>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        // A panic while the pool's lock was held cannot leave the Vec half-changed (push and
        // pop are the only operations under it), so a poisoned lock is safe to take over.
        let taken = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let conn = match taken {
            Some(c) => c,
            None => self.open()?,
        };
        let out = conn.unchecked_transaction().map_err(db).and_then(|tx| {
            let out = work(&tx);
            // Dropping the read's transaction rolls it back: it wrote nothing.
            drop(tx);
            out
        });
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
        out
    }
}
