//! The fewest round trips, measured: each operation's requests are counted by the store's SDK
//! interceptor and compared with the budget in docs/dynamodb.md. An operation that sends more
//! fails here.

use std::collections::BTreeMap;

use blepay_core::{SessionStatus, Units};
use blepay_dynamodb::testing::{fresh_store, report};
use blepay_store::conformance::{
    T0, device_id, device_op, fund, online_machine, pay_cmd, session_of, user,
};
use blepay_store::{DeviceOp, DeviceOpResult, PayOutcome, Store};

fn ops(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| ((*k).to_string(), *v)).collect()
}

#[tokio::test]
#[allow(
    clippy::too_many_lines,
    reason = "one walk through the whole cycle, measured step by step"
)]
async fn each_happy_path_operation_uses_its_minimum_of_requests() {
    let store = fresh_store().await;
    let counter = store.request_counter();
    online_machine(&store, 1, T0).await;
    fund(&store, "alice", 1000).await;

    // verify: the device's status is one read.
    counter.reset();
    let status = store
        .device_status(device_id(1), T0)
        .await
        .unwrap()
        .unwrap();
    assert!(status.open_session.is_none());
    assert_eq!(counter.by_operation(), ops(&[("GetItem", 1)]), "verify");
    report(&format!(
        "verify (device_status): {:?}",
        counter.by_operation()
    ));

    // pay: one isolated read of device + wallet + pay key + advert marker, then one transaction.
    counter.reset();
    let cmd = pay_cmd("alice", "p1", 1, 7, 300, T0);
    let PayOutcome::Created(session) = store.pay(&cmd).await.unwrap() else {
        panic!("the pay is created");
    };
    assert_eq!(
        counter.by_operation(),
        ops(&[("TransactGetItems", 1), ("TransactWriteItems", 1)]),
        "pay"
    );
    report(&format!("pay: {:?}", counter.by_operation()));

    // poll: one Query of the device's partition, then the sequence number and answer saved.
    counter.reset();
    let grants = device_op(&store, 1, 2, DeviceOp::Poll, T0 + 1).await;
    assert_eq!(grants, DeviceOpResult::Grants(vec![session.clone()]));
    assert_eq!(
        counter.by_operation(),
        ops(&[("Query", 1), ("UpdateItem", 1)]),
        "poll"
    );
    report(&format!("poll: {:?}", counter.by_operation()));

    // start: one read (device + session), one transaction.
    counter.reset();
    let started = session_of(
        device_op(
            &store,
            1,
            3,
            DeviceOp::Start {
                session: session.id,
            },
            T0 + 2,
        )
        .await,
    );
    assert_eq!(started.status, SessionStatus::Active);
    assert_eq!(
        counter.by_operation(),
        ops(&[("BatchGetItem", 1), ("TransactWriteItems", 1)]),
        "start"
    );
    report(&format!("start: {:?}", counter.by_operation()));

    // a progress report: the same.
    counter.reset();
    let progress = DeviceOp::Report {
        session: session.id,
        units: Units::new(1),
        last: false,
    };
    device_op(&store, 1, 4, progress, T0 + 3).await;
    assert_eq!(
        counter.by_operation(),
        ops(&[("BatchGetItem", 1), ("TransactWriteItems", 1)]),
        "progress report"
    );

    // the final report settles in one transaction.
    counter.reset();
    let last = DeviceOp::Report {
        session: session.id,
        units: Units::new(3),
        last: true,
    };
    let settled = session_of(device_op(&store, 1, 5, last, T0 + 4).await);
    assert_eq!(settled.status, SessionStatus::Settled);
    assert_eq!(
        counter.by_operation(),
        ops(&[("BatchGetItem", 1), ("TransactWriteItems", 1)]),
        "final report"
    );
    report(&format!("final report: {:?}", counter.by_operation()));

    // reads: one GetItem each.
    counter.reset();
    store.session(session.id, T0 + 5).await.unwrap().unwrap();
    assert_eq!(
        counter.by_operation(),
        ops(&[("GetItem", 1)]),
        "session read"
    );
    counter.reset();
    store.wallet(&user("alice"), T0 + 5).await.unwrap();
    assert_eq!(
        counter.by_operation(),
        ops(&[("GetItem", 1)]),
        "wallet read"
    );
    counter.reset();
    store
        .find_pay(&user("alice"), &cmd.key, T0 + 5)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(counter.by_operation(), ops(&[("GetItem", 2)]), "find_pay");

    // top-up: one read (wallet + key), one transaction.
    counter.reset();
    fund(&store, "alice", 5).await;
    assert_eq!(
        counter.by_operation(),
        ops(&[("BatchGetItem", 1), ("TransactWriteItems", 1)]),
        "top-up"
    );

    // A device retry (same seq, same bytes) is one read plus a last-seen touch.
    counter.reset();
    let (outcome, ran) = blepay_store::conformance::device_call_with(
        &store,
        1,
        5,
        blepay_store::conformance::digest(5),
        DeviceOp::Report {
            session: session.id,
            units: Units::new(3),
            last: true,
        },
        T0 + 60,
    )
    .await;
    assert!(matches!(outcome, blepay_store::DeviceCallOutcome::Retry(_)));
    assert!(ran.is_none());
    assert_eq!(
        counter.by_operation(),
        ops(&[("BatchGetItem", 1), ("UpdateItem", 1)]),
        "device retry"
    );
    assert_eq!(counter.count(), 2);
}

#[tokio::test]
async fn an_overdue_session_costs_one_more_transaction_on_the_read_that_expires_it() {
    let store = fresh_store().await;
    let counter = store.request_counter();
    online_machine(&store, 1, T0).await;
    fund(&store, "alice", 1000).await;
    let PayOutcome::Created(session) = store
        .pay(&pay_cmd("alice", "p1", 1, 7, 300, T0))
        .await
        .unwrap()
    else {
        panic!("the pay is created");
    };

    counter.reset();
    let read = store.session(session.id, T0 + 500).await.unwrap().unwrap();
    assert_eq!(read.status, SessionStatus::Expired);
    // read, expire, read again.
    assert_eq!(
        counter.by_operation(),
        ops(&[("GetItem", 2), ("TransactWriteItems", 1)]),
        "lazy expiry"
    );

    counter.reset();
    assert_eq!(store.expire_due(T0 + 500).await.unwrap(), 0);
    assert_eq!(
        counter.by_operation(),
        ops(&[("Query", 1)]),
        "sweeper with nothing due"
    );
}
