//! The store conformance suite, run against [`SqliteStore`] on a real file.

use std::sync::Arc;

use blepay_sqlite::SqliteStore;
use blepay_store::Store;
use tempfile::TempDir;

/// A fresh, empty store in its own temporary directory (removed when the guard drops).
#[allow(clippy::expect_used, reason = "test fixture")]
#[allow(
    clippy::unused_async,
    reason = "the suite awaits its factory (other stores need IO to start)"
)]
async fn fresh_store() -> (Arc<dyn Store>, TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(&dir.path().join("blepay.db")).expect("open store");
    (Arc::new(store), dir)
}

blepay_store::conformance_tests!(fresh_store());
