//! What SQLite acknowledged is still there after the store is dropped and the file reopened.

use std::path::Path;
use std::sync::Arc;

use blepay_core::{Session, SessionStatus, Slot, Units};
use blepay_sqlite::SqliteStore;
use blepay_store::conformance::{
    OFFLINE_AFTER, T0, answer_of, created, device_op, digest, fund, key, online_machine, pay_cmd,
    reconciled, session_of, user, wallet,
};
use blepay_store::{
    Audit, DeviceCall, DeviceCallOutcome, DeviceOp, DeviceOpResult, DeviceState, PayOutcome,
    ResponseEncoder, SavedAnswer, Store,
};

/// What the first process acknowledged before it went away.
struct Acknowledged {
    settled: Session,
    open: Session,
    audit: Audit,
    last_answer: SavedAnswer,
}

/// A settled session on machine 1, an open one on machine 2, and the machines' last answers.
#[allow(clippy::unwrap_used, reason = "test fixture")]
async fn write_history(path: &Path) -> Acknowledged {
    let store = SqliteStore::open(path).unwrap();
    online_machine(&store, 1, T0).await;
    online_machine(&store, 2, T0).await;
    fund(&store, "alice", 1000).await;
    let first = created(&store, &pay_cmd("alice", "p1", 1, 7, 300, T0)).await;
    device_op(&store, 1, 2, DeviceOp::Start { session: first.id }, T0 + 5).await;
    let last = DeviceOp::Report {
        session: first.id,
        units: Units::new(4),
        last: true,
    };
    let settled = session_of(device_op(&store, 1, 3, last, T0 + 9).await);
    let open = created(&store, &pay_cmd("alice", "p2", 2, 7, 200, T0 + 10)).await;
    let last_answer = answer_of(&DeviceOpResult::Session(settled.clone()));
    Acknowledged {
        settled,
        open,
        audit: reconciled(&store).await,
        last_answer,
    }
}

#[tokio::test]
async fn balances_and_sessions_survive_closing_and_reopening_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data").join("blepay.db");
    let before = write_history(&path).await;

    let store = SqliteStore::open(&path).unwrap();

    assert_eq!(reconciled(&store).await, before.audit);
    assert_eq!(
        store.wallet(&user("alice"), T0 + 11).await.unwrap(),
        wallet(700, 200, 100)
    );
    assert_eq!(
        store.session(before.settled.id, T0 + 11).await.unwrap(),
        Some(before.settled)
    );
    assert_eq!(
        store.session(before.open.id, T0 + 11).await.unwrap(),
        Some(before.open.clone())
    );
    let status = store
        .device_status(before.open.device_id, T0 + 11)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.open_session, Some(before.open.id));
    assert_eq!(
        status.state(
            T0 + 11,
            OFFLINE_AFTER,
            blepay_store::AdvertSignals::default()
        ),
        DeviceState::Busy
    );
}

#[tokio::test]
async fn idempotency_keys_advert_uses_and_saved_answers_survive_reopening_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blepay.db");
    let before = write_history(&path).await;

    let store = SqliteStore::open(&path).unwrap();

    assert_eq!(
        store
            .find_pay(&user("alice"), &key("p2"), T0 + 11)
            .await
            .unwrap(),
        Some(before.open)
    );
    assert_eq!(
        store
            .pay(&pay_cmd("alice", "p1", 1, 8, 300, T0 + 12))
            .await
            .unwrap(),
        PayOutcome::Replayed(before.settled.clone())
    );
    let mut reused_advert = pay_cmd("alice", "p3", 1, 7, 300, T0 + 12);
    reused_advert.slot = Slot::at(T0);
    assert_eq!(
        store.pay(&reused_advert).await.unwrap(),
        PayOutcome::AdvertUsed
    );

    let retry = DeviceCall {
        device: before.settled.device_id,
        key_version: blepay_core::KeyVersion::new(0).unwrap(),
        key_epoch: blepay_core::KeyEpoch::FIRST,
        key_update: None,
        seq: 3,
        digest: digest(3),
        op: DeviceOp::Report {
            session: before.settled.id,
            units: Units::new(4),
            last: true,
        },
        now: T0 + 13,
        active_timeout_secs: blepay_store::conformance::ACTIVE_TIMEOUT,
    };
    let never: ResponseEncoder =
        Arc::new(|_: &DeviceOpResult| -> SavedAnswer { panic!("a retry must not run again") });
    assert_eq!(
        store.device_call(&retry, never).await.unwrap(),
        DeviceCallOutcome::Retry(before.last_answer)
    );
    assert_eq!(
        store
            .session(before.settled.id, T0 + 13)
            .await
            .unwrap()
            .unwrap()
            .status,
        SessionStatus::Settled
    );
    assert_eq!(reconciled(&store).await, before.audit);
}
