//! What SQLite acknowledged is still there after the store is dropped and the file reopened.

use blepay_core::{SessionStatus, Units};
use blepay_store::conformance::{
    OFFLINE_AFTER, T0, device_op, digest, fund, online_machine, pay_cmd, reconciled, session_of,
    user, wallet,
};
use blepay_store::sqlite::SqliteStore;
use blepay_store::{
    DeviceCall, DeviceCallOutcome, DeviceOp, DeviceOpResult, DeviceState, PayOutcome, Store,
};

#[tokio::test]
async fn everything_acknowledged_survives_closing_and_reopening_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data").join("blepay.db");

    // Arrange: a settled session, an open one, and the machines' last answers.
    let (settled, open, audit, last_answer) = {
        let store = SqliteStore::open(&path).unwrap();
        online_machine(&store, 1, T0).await;
        online_machine(&store, 2, T0).await;
        fund(&store, "alice", 1000).await;
        let first = match store
            .pay(&pay_cmd("alice", "p1", 1, 7, 300, T0))
            .await
            .unwrap()
        {
            PayOutcome::Created(s) => s,
            other => panic!("{other:?}"),
        };
        device_op(&store, 1, 2, DeviceOp::Start { session: first.id }, T0 + 5).await;
        let last = DeviceOp::Report {
            session: first.id,
            units: Units::new(4),
            last: true,
        };
        let settled = session_of(device_op(&store, 1, 3, last, T0 + 9).await);
        let open = match store
            .pay(&pay_cmd("alice", "p2", 2, 7, 200, T0 + 10))
            .await
            .unwrap()
        {
            PayOutcome::Created(s) => s,
            other => panic!("{other:?}"),
        };
        let audit = reconciled(&store).await;
        let last_answer = format!("{:?}", DeviceOpResult::Session(settled.clone())).into_bytes();
        (settled, open, audit, last_answer)
    };

    // Act
    let store = SqliteStore::open(&path).unwrap();

    // Assert
    assert_eq!(reconciled(&store).await, audit);
    assert_eq!(
        store.wallet(&user("alice"), T0 + 11).await.unwrap(),
        wallet(700, 200, 100)
    );
    assert_eq!(
        store.session(settled.id, T0 + 11).await.unwrap(),
        Some(settled.clone())
    );
    assert_eq!(
        store.session(open.id, T0 + 11).await.unwrap(),
        Some(open.clone())
    );
    assert_eq!(
        store
            .find_pay(
                &user("alice"),
                &blepay_store::conformance::key("p2"),
                T0 + 11
            )
            .await
            .unwrap(),
        Some(open.clone())
    );
    let status = store
        .device_status(open.device_id, T0 + 11)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.open_session, Some(open.id));
    assert_eq!(status.state(T0 + 11, OFFLINE_AFTER), DeviceState::Busy);

    // Idempotency records, advert uses and sequence numbers survived too.
    assert_eq!(
        store
            .pay(&pay_cmd("alice", "p1", 1, 8, 300, T0 + 12))
            .await
            .unwrap(),
        PayOutcome::Replayed(settled.clone())
    );
    let mut reused_advert = pay_cmd("alice", "p3", 1, 7, 300, T0 + 12);
    reused_advert.slot = blepay_core::Slot::at(T0);
    assert_eq!(
        store.pay(&reused_advert).await.unwrap(),
        PayOutcome::AdvertUsed
    );
    let retry = DeviceCall {
        device: settled.device_id,
        seq: 3,
        digest: digest(3),
        op: DeviceOp::Report {
            session: settled.id,
            units: Units::new(4),
            last: true,
        },
        now: T0 + 13,
    };
    let never = |_: &DeviceOpResult| -> Vec<u8> { panic!("a retry must not run again") };
    assert_eq!(
        store.device_call(&retry, &never).await.unwrap(),
        DeviceCallOutcome::Retry(last_answer)
    );
    assert_eq!(
        store
            .session(settled.id, T0 + 13)
            .await
            .unwrap()
            .unwrap()
            .status,
        SessionStatus::Settled
    );
    reconciled(&store).await;
}
