//! How long SQLite keeps the console's records: a console session until a day after it expired
//! (pruned by the next sign-in), a machine's telemetry samples `TELEMETRY_HISTORY_SECS` (pruned
//! when that machine saves a new one), and the samples survive reopening the file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use blepay_sqlite::SqliteStore;
use blepay_store::conformance::{
    T0, console_session, device_id, device_op, online_machine, telemetry,
};
use blepay_store::{CONSOLE_SESSION_GRACE_SECS, DeviceOp, Store, TELEMETRY_HISTORY_SECS};

#[tokio::test]
async fn a_sign_in_prunes_the_sessions_expired_more_than_a_day_before() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("blepay.db")).unwrap();
    let old = console_session(1, "bootstrap", T0, 100);
    let ended = console_session(2, "bootstrap", T0, 5000);
    assert!(store.create_console_session(&old).await.unwrap());
    assert!(store.create_console_session(&ended).await.unwrap());
    assert!(
        store
            .end_console_session(&ended.id_hash, T0 + 10)
            .await
            .unwrap()
    );

    // A day after `old` expired, to the second: kept.
    let at = T0 + 100 + CONSOLE_SESSION_GRACE_SECS;
    assert!(
        store
            .create_console_session(&console_session(3, "bootstrap", at, 60))
            .await
            .unwrap()
    );
    assert!(store.console_session(&old.id_hash).await.unwrap().is_some());

    // One second later: pruned; the one signed out but expiring later is still kept.
    let at = at + 1;
    assert!(
        store
            .create_console_session(&console_session(4, "bootstrap", at, 60))
            .await
            .unwrap()
    );
    assert_eq!(store.console_session(&old.id_hash).await.unwrap(), None);
    assert!(
        store
            .console_session(&ended.id_hash)
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn a_heartbeat_prunes_its_machines_samples_older_than_the_history() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blepay.db");
    let store = SqliteStore::open(&path).unwrap();
    online_machine(&store, 1, T0).await;
    online_machine(&store, 2, T0).await;
    device_op(&store, 1, 2, DeviceOp::Heartbeat(telemetry(1)), T0).await;
    device_op(&store, 1, 3, DeviceOp::Heartbeat(telemetry(2)), T0 + 1).await;
    device_op(&store, 2, 2, DeviceOp::Heartbeat(telemetry(1)), T0).await;

    // Exactly the history's length after the first: the first goes, the second stays.
    let later = T0 + TELEMETRY_HISTORY_SECS;
    device_op(&store, 1, 4, DeviceOp::Heartbeat(telemetry(3)), later).await;
    let at = |v: Vec<blepay_store::TelemetrySample>| v.iter().map(|s| s.at).collect::<Vec<_>>();
    let history = store
        .telemetry_history(device_id(1), 0, u64::MAX, 100)
        .await
        .unwrap();
    assert_eq!(at(history), vec![T0 + 1, later]);
    // Another machine's samples are pruned only by its own heartbeats.
    let other = store
        .telemetry_history(device_id(2), 0, u64::MAX, 100)
        .await
        .unwrap();
    assert_eq!(at(other), vec![T0]);

    drop(store);
    let store = SqliteStore::open(&path).unwrap();
    let history = store
        .telemetry_history(device_id(1), 0, u64::MAX, 100)
        .await
        .unwrap();
    assert_eq!(history.last().map(|s| &s.telemetry), Some(&telemetry(3)));
}
