//! WAL checkpoints off the writer's thread: the writer's connection has automatic checkpoints
//! off (`wal_autocheckpoint=0`), and this thread, on a connection of its own, folds the WAL into
//! the database file every [`PERIOD`] (one second) with a `PASSIVE` checkpoint — it waits for no reader and
//! no writer, and copies each page once however often it changed in between. A commit's fsync is
//! the writer's only wait; the checkpoint's own fsyncs happen here.
//!
//! Durability is the WAL's: a committed transaction is in the fsynced WAL whether or not it was
//! checkpointed, and opening the file after a crash replays it.

use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use blepay_store::StoreError;
use rusqlite::Connection;

use crate::BUSY_TIMEOUT;
use crate::convert::db;

/// How often the WAL is checkpointed.
pub(crate) const PERIOD: Duration = Duration::from_secs(1);

/// The checkpoint thread; dropping it runs a last checkpoint and stops it.
#[derive(Debug)]
pub(crate) struct Checkpointer {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    pub(crate) fn start(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path).map_err(db)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(db)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db)?;
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("blepay-sqlite-ckpt".into())
            .spawn(move || {
                // Until the store is dropped (the sender goes away).
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(PERIOD) {
                    checkpoint(&conn);
                }
                checkpoint(&conn);
            })
            .map_err(|e| StoreError::Internal(format!("cannot start the WAL checkpointer: {e}")))?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

fn checkpoint(conn: &Connection) {
    // (busy, WAL frames, frames checkpointed); a busy or partial checkpoint is finished by the
    // next one.
    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
        tracing::warn!(error = %e, "WAL checkpoint failed; the next one retries");
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
