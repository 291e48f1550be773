//! Throttling and 5xx that persist: the store answers `Unavailable` (503 RETRY_LATER) after the
//! SDK's retries and its own, and a refused request changes nothing. DynamoDB Local cannot
//! throttle, so the faults are injected in-process: an interceptor sends the chosen operation's
//! requests to a loopback server that answers the error.

use blepay_core::{SessionStatus, Units};
use blepay_dynamodb::testing::{FaultInjector, FaultServer, fresh_store_with};
use blepay_store::conformance::{
    T0, device_call_with, device_id, device_op, digest, fund, online_machine, pay_cmd, reconciled,
    session_of, user, wallet,
};
use blepay_store::{DeviceCallOutcome, DeviceOp, PayOutcome, Store, StoreError};

#[tokio::test]
async fn a_pay_whose_transaction_keeps_failing_with_5xx_is_unavailable_and_changes_nothing() {
    let server = FaultServer::start(500, "InternalServerError").await;
    let faults = FaultInjector::new(&server.url(), &["TransactWriteItems"]);
    let store = fresh_store_with(vec![faults.configure()]).await;
    online_machine(&store, 1, T0).await;
    fund(&store, "alice", 1000).await;
    let before = reconciled(&store).await;
    let counter = store.request_counter();

    faults.enable(true);
    counter.reset();
    let cmd = pay_cmd("alice", "p1", 1, 7, 300, T0);
    let err = store.pay(&cmd).await.unwrap_err();
    faults.enable(false);

    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    // 3 SDK attempts per try, 1 try + 2 re-runs by the store.
    assert_eq!(
        counter.of("TransactWriteItems"),
        9,
        "{:?}",
        counter.by_operation()
    );
    assert_eq!(reconciled(&store).await, before);
    assert_eq!(
        store.wallet(&user("alice"), T0).await.unwrap(),
        wallet(1000, 0, 0)
    );
    assert_eq!(store.session(cmd.session_id, T0).await.unwrap(), None);
    assert_eq!(store.find_pay(&cmd.user, &cmd.key, T0).await.unwrap(), None);
    let status = store
        .device_status(device_id(1), T0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.open_session, None);

    // Once DynamoDB answers again, the same request goes through.
    assert!(matches!(
        store.pay(&cmd).await.unwrap(),
        PayOutcome::Created(_)
    ));
    reconciled(&store).await;
}

#[tokio::test]
async fn a_final_report_that_keeps_being_throttled_is_unavailable_and_can_be_retried() {
    let server = FaultServer::start(400, "ThrottlingException").await;
    let faults = FaultInjector::new(&server.url(), &["TransactWriteItems"]);
    let store = fresh_store_with(vec![faults.configure()]).await;
    online_machine(&store, 1, T0).await;
    fund(&store, "alice", 1000).await;
    let PayOutcome::Created(s) = store
        .pay(&pay_cmd("alice", "p1", 1, 7, 300, T0))
        .await
        .unwrap()
    else {
        panic!("the pay is created");
    };
    device_op(&store, 1, 2, DeviceOp::Start { session: s.id }, T0 + 1).await;
    let before = reconciled(&store).await;

    faults.enable(true);
    let last = DeviceOp::Report {
        session: s.id,
        units: Units::new(3),
        last: true,
    };
    let call = blepay_store::DeviceCall {
        device: device_id(1),
        key_version: blepay_core::KeyVersion::new(0).unwrap(),
        key_epoch: blepay_core::KeyEpoch::FIRST,
        key_update: None,
        seq: 3,
        digest: digest(3),
        op: last.clone(),
        now: T0 + 2,
        active_timeout_secs: blepay_store::conformance::ACTIVE_TIMEOUT,
    };
    let encode: blepay_store::ResponseEncoder =
        std::sync::Arc::new(blepay_store::conformance::answer_of);
    let err = store.device_call(&call, encode).await.unwrap_err();
    faults.enable(false);

    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert_eq!(reconciled(&store).await, before);
    assert_eq!(
        store.session(s.id, T0 + 2).await.unwrap().unwrap().status,
        SessionStatus::Active
    );
    // Nothing was saved for seq 3, so the machine's retry runs it.
    let (outcome, ran) = device_call_with(&store, 1, 3, digest(3), last, T0 + 3).await;
    assert!(matches!(outcome, DeviceCallOutcome::Fresh(_)));
    assert_eq!(session_of(ran.unwrap()).status, SessionStatus::Settled);
    assert_eq!(
        store.wallet(&user("alice"), T0 + 3).await.unwrap(),
        wallet(925, 0, 75)
    );
    reconciled(&store).await;
}
