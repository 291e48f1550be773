//! The fewest round trips, measured: each operation's requests are counted by the store's SDK
//! interceptor and compared with the budget in docs/dynamodb.md. An operation that sends more
//! fails here.
//!
//! The happy path is measured in one process that has seen the machine (its device shadow is warm,
//! as in `blepay serve` or a warm Lambda instance: the service checks a pay's advert under that
//! knowledge, `Store::device_known`, so the pay is its one transaction); the cold path (a process
//! that has not, or whose knowledge is stale) is measured too. A payment's write units are
//! measured from DynamoDB's own `ConsumedCapacity` and bounded (docs/dynamodb.md "Write units per
//! payment").

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

    // pay: the service checks the advert under what the store knows of the device (no request:
    // the shadow), then the pay is one transaction, no read of its own.
    counter.reset();
    let known = store.device_known(device_id(1), T0).await.unwrap().unwrap();
    assert_eq!(known, status);
    let cmd = pay_cmd("alice", "p1", 1, 7, 300, T0);
    let PayOutcome::Created(session) = store.pay(&cmd).await.unwrap() else {
        panic!("the pay is created");
    };
    assert_eq!(
        counter.by_operation(),
        ops(&[("TransactWriteItems", 1)]),
        "pay"
    );
    report(&format!("pay: {:?}", counter.by_operation()));

    // poll: the sequence number and answer saved by one conditional UpdateItem.
    counter.reset();
    let grants = device_op(&store, 1, 2, DeviceOp::Poll, T0 + 1).await;
    assert_eq!(grants, DeviceOpResult::Grants(vec![session.clone()]));
    assert_eq!(counter.by_operation(), ops(&[("UpdateItem", 1)]), "poll");
    report(&format!("poll: {:?}", counter.by_operation()));

    // start: one transaction.
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
        ops(&[("TransactWriteItems", 1)]),
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
        ops(&[("TransactWriteItems", 1)]),
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
        ops(&[("TransactWriteItems", 1)]),
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

    // A device retry (same seq, same bytes) is one read and writes nothing (no sign of life).
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
        ops(&[("BatchGetItem", 1)]),
        "device retry"
    );
    assert_eq!(counter.count(), 1);

    // The button-press cycle: pay, then a warm press is one transaction, like start.
    let cmd = pay_cmd("alice", "p2", 1, 8, 300, T0 + 61);
    let PayOutcome::Created(second) = store.pay(&cmd).await.unwrap() else {
        panic!("the second pay is created");
    };
    counter.reset();
    let pressed = device_op(&store, 1, 6, DeviceOp::Press, T0 + 62).await;
    let DeviceOpResult::Started(pressed) = pressed else {
        panic!("the press starts the session: {pressed:?}");
    };
    assert_eq!(pressed.id, second.id);
    assert_eq!(
        counter.by_operation(),
        ops(&[("TransactWriteItems", 1)]),
        "press"
    );
    report(&format!("press: {:?}", counter.by_operation()));

    // A press with nothing waiting (after the session settled) is one conditional UpdateItem.
    let last = DeviceOp::Report {
        session: second.id,
        units: Units::new(2),
        last: true,
    };
    device_op(&store, 1, 7, last, T0 + 63).await;
    counter.reset();
    assert_eq!(
        device_op(&store, 1, 8, DeviceOp::Press, T0 + 64).await,
        DeviceOpResult::NoSessionWaiting
    );
    assert_eq!(
        counter.by_operation(),
        ops(&[("UpdateItem", 1)]),
        "press, none waiting"
    );

    // A warm heartbeat: one conditional UpdateItem, then the history's sample (one PutItem).
    counter.reset();
    let heartbeat = DeviceOp::Heartbeat(blepay_store::conformance::telemetry(3));
    assert_eq!(
        device_op(&store, 1, 9, heartbeat, T0 + 1800).await,
        DeviceOpResult::Ack
    );
    assert_eq!(
        counter.by_operation(),
        ops(&[("PutItem", 1), ("UpdateItem", 1)]),
        "heartbeat"
    );
    report(&format!("heartbeat: {:?}", counter.by_operation()));

    // The timeout sweep with nothing due: one Query of the `due` GSI.
    counter.reset();
    assert_eq!(
        store
            .time_out_active(T0 + 1800, blepay_store::conformance::ACTIVE_TIMEOUT)
            .await
            .unwrap(),
        Vec::new()
    );
    assert_eq!(
        counter.by_operation(),
        ops(&[("Query", 1)]),
        "time_out_active"
    );
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
    assert_eq!(store.expire_due(T0 + 500).await.unwrap(), Vec::new());
    assert_eq!(
        counter.by_operation(),
        ops(&[("Query", 1)]),
        "sweeper with nothing due"
    );
}

/// A process that has not seen the machine (a cold Lambda instance, another server): every
/// operation reads first, then writes — the budget of the fallback path.
#[tokio::test]
async fn without_knowledge_of_the_machine_each_operation_reads_then_writes_once() {
    let warm = fresh_store().await;
    online_machine(&warm, 1, T0).await;
    fund(&warm, "alice", 1000).await;
    let store = warm.clone().without_device_shadow();
    let counter = store.request_counter();

    counter.reset();
    let PayOutcome::Created(session) = store
        .pay(&pay_cmd("alice", "p1", 1, 7, 300, T0))
        .await
        .unwrap()
    else {
        panic!("the pay is created");
    };
    assert_eq!(
        counter.by_operation(),
        ops(&[("TransactGetItems", 1), ("TransactWriteItems", 1)]),
        "cold pay"
    );
    counter.reset();
    device_op(&store, 1, 2, DeviceOp::Poll, T0 + 1).await;
    assert_eq!(
        counter.by_operation(),
        ops(&[("Query", 1), ("UpdateItem", 1)]),
        "cold poll"
    );
    let start = DeviceOp::Start {
        session: session.id,
    };
    let last = DeviceOp::Report {
        session: session.id,
        units: Units::new(3),
        last: true,
    };
    for (seq, op, what) in [(3, start, "cold start"), (4, last, "cold final report")] {
        counter.reset();
        device_op(&store, 1, seq, op, T0 + 2).await;
        assert_eq!(
            counter.by_operation(),
            ops(&[("BatchGetItem", 1), ("TransactWriteItems", 1)]),
            "{what}"
        );
    }
    // A cold press: the device item (its open session) read, then one transaction.
    created_on(&store, "p2", 8, T0 + 3).await;
    counter.reset();
    assert!(matches!(
        device_op(&store, 1, 5, DeviceOp::Press, T0 + 4).await,
        DeviceOpResult::Started(_)
    ));
    assert_eq!(
        counter.by_operation(),
        ops(&[("Query", 1), ("TransactWriteItems", 1)]),
        "cold press"
    );
    // A cold heartbeat: the device item read, then one UpdateItem and the sample's PutItem.
    counter.reset();
    let heartbeat = DeviceOp::Heartbeat(blepay_store::conformance::telemetry(1));
    device_op(&store, 1, 6, heartbeat, T0 + 5).await;
    assert_eq!(
        counter.by_operation(),
        ops(&[("PutItem", 1), ("Query", 1), ("UpdateItem", 1)]),
        "cold heartbeat"
    );
    blepay_store::conformance::reconciled(&store).await;
}

#[allow(clippy::unwrap_used, reason = "test code")]
async fn created_on(store: &blepay_dynamodb::DynamoStore, key: &str, counter: u16, now: u64) {
    let out = store
        .pay(&pay_cmd("alice", key, 1, counter, 300, now))
        .await
        .unwrap();
    assert!(matches!(out, PayOutcome::Created(_)), "{out:?}");
}

/// Two processes serve one machine: what one knows goes stale when the other answers. A stale
/// guess costs one refused write and changes nothing; the request is then read and answered
/// exactly as from a cold start (a retry of a frame the other process answered gets that answer).
#[tokio::test]
async fn a_stale_guess_costs_one_refused_write_and_changes_nothing() {
    let a = fresh_store().await;
    online_machine(&a, 1, T0).await;
    fund(&a, "alice", 1000).await;
    // Another process on the same table, with its own knowledge.
    let b = blepay_dynamodb::DynamoStore::new(a.client().clone(), a.table());
    let session =
        blepay_store::conformance::created(&b, &pay_cmd("alice", "p1", 1, 7, 300, T0)).await;
    let counter = a.request_counter();

    // `a` still believes the machine idle with seq 1: the poll's guess is refused, then read.
    counter.reset();
    let grants = device_op(&a, 1, 2, DeviceOp::Poll, T0 + 1).await;
    assert_eq!(grants, DeviceOpResult::Grants(vec![session.clone()]));
    assert_eq!(
        counter.by_operation(),
        ops(&[("UpdateItem", 2), ("Query", 1)]),
        "stale poll"
    );

    // `b` answers seq 3 (the start); the machine's retry of seq 3 reaches `a`.
    let start = DeviceOp::Start {
        session: session.id,
    };
    let (first, _) = blepay_store::conformance::device_call_with(
        &b,
        1,
        3,
        blepay_store::conformance::digest(3),
        start.clone(),
        T0 + 2,
    )
    .await;
    let (retry, _) = blepay_store::conformance::device_call_with(
        &a,
        1,
        3,
        blepay_store::conformance::digest(3),
        start,
        T0 + 3,
    )
    .await;
    let blepay_store::DeviceCallOutcome::Fresh(body) = first else {
        panic!("the start ran: {first:?}");
    };
    assert_eq!(retry, blepay_store::DeviceCallOutcome::Retry(body));

    let last = DeviceOp::Report {
        session: session.id,
        units: Units::new(3),
        last: true,
    };
    let settled = session_of(device_op(&a, 1, 4, last, T0 + 4).await);
    assert_eq!(settled.status, SessionStatus::Settled);
    assert_eq!(a.session(session.id, T0 + 5).await.unwrap(), Some(settled));
    assert_eq!(
        a.wallet(&user("alice"), T0 + 5).await.unwrap(),
        blepay_store::conformance::wallet(925, 0, 75)
    );
    blepay_store::conformance::reconciled(&a).await;
}

/// A pay decided from stale knowledge (the machine became busy through another process) is refused
/// from the cancellation reasons alone — one request — and, when several conditions fail at once,
/// with the refusal SQLite gives first (busy before advert used before insufficient funds).
#[tokio::test]
async fn a_warm_pay_is_refused_from_the_cancellation_reasons_in_sqlites_order() {
    let a = fresh_store().await;
    online_machine(&a, 1, T0).await;
    fund(&a, "alice", 1000).await;
    fund(&a, "bob", 10).await;
    let b = blepay_dynamodb::DynamoStore::new(a.client().clone(), a.table());
    blepay_store::conformance::created(&b, &pay_cmd("alice", "p1", 1, 7, 300, T0)).await;
    let counter = a.request_counter();

    // Busy, the same advert, and more than bob has: busy wins.
    counter.reset();
    let mut cmd = pay_cmd("bob", "p1", 1, 7, 300, T0);
    cmd.session_id = blepay_store::conformance::session_id(0x77);
    assert_eq!(a.pay(&cmd).await.unwrap(), PayOutcome::DeviceBusy);
    assert_eq!(
        counter.by_operation(),
        ops(&[("TransactWriteItems", 1)]),
        "refused from the reasons"
    );
    assert_eq!(a.session(cmd.session_id, T0).await.unwrap(), None);
    blepay_store::conformance::reconciled(&a).await;
}

/// Write units per payment, as DynamoDB reports them (`ReturnConsumedCapacity = INDEXES`: the
/// table and each index; DynamoDB Local's accounting): verify, pay, the machine's press and its
/// final report. docs/dynamodb.md "Write units per payment" has the figures per step and index.
const PAYMENT_WRITE_UNITS: f64 = 68.0;

/// The same payment on a process that has not seen the machine: its reads come first, the
/// writes are the same transactions.
const COLD_PAYMENT_WRITE_UNITS: f64 = 68.0;

/// Write units of an idle machine's heartbeat, measured the same way.
const HEARTBEAT_WRITE_UNITS: f64 = 2.0;

/// A machine request on machine 1 answered with a frame of the size real answers have
/// (docs/performance.md §3: 29–62 bytes; 62 here), so that the device item is measured at its
/// size in the field (the suite's encoder saves a debug string of the whole result, ≈ 500 bytes).
#[allow(clippy::unwrap_used, reason = "test code")]
async fn machine_op(
    store: &blepay_dynamodb::DynamoStore,
    seq: u32,
    op: DeviceOp,
    now: u64,
) -> DeviceOpResult {
    use std::sync::{Arc, Mutex};
    let seen = Arc::new(Mutex::new(None));
    let encode: blepay_store::ResponseEncoder = {
        let seen = Arc::clone(&seen);
        Arc::new(move |r: &DeviceOpResult| {
            *seen.lock().unwrap() = Some(r.clone());
            blepay_store::SavedAnswer {
                frame: vec![0xA5; 62],
                code: blepay_store::conformance::answer_of(r).code,
            }
        })
    };
    let call = blepay_store::DeviceCall {
        device: device_id(1),
        key_version: blepay_core::KeyVersion::new(0).unwrap(),
        key_epoch: blepay_core::KeyEpoch::FIRST,
        key_update: None,
        seq,
        digest: blepay_store::conformance::digest(seq),
        op,
        now,
        active_timeout_secs: blepay_store::conformance::ACTIVE_TIMEOUT,
    };
    let outcome = store.device_call(&call, encode).await.unwrap();
    assert!(
        matches!(outcome, blepay_store::DeviceCallOutcome::Fresh(_)),
        "{outcome:?}"
    );
    seen.lock().unwrap().take().unwrap()
}

/// One payment (verify, pay, press, final report) on `store`, each step's units and requests.
#[allow(clippy::unwrap_used, clippy::panic, reason = "test code")]
async fn payment(
    store: &blepay_dynamodb::DynamoStore,
    key: &str,
    advert: u16,
    seq: u32,
    now: u64,
) -> Vec<(&'static str, blepay_dynamodb::Units, u64)> {
    let counter = store.request_counter();
    counter.measure_units();
    let mut steps = Vec::new();
    let step = |name, steps: &mut Vec<_>| {
        steps.push((name, counter.units(), counter.count()));
        report(&format!(
            "{name}: {:?} {:?} {:?}",
            counter.units(),
            counter.units_by_index(),
            counter.by_operation()
        ));
        counter.reset();
    };
    counter.reset();
    store
        .device_status(device_id(1), now)
        .await
        .unwrap()
        .unwrap();
    step("verify", &mut steps);
    store
        .device_known(device_id(1), now)
        .await
        .unwrap()
        .unwrap();
    let PayOutcome::Created(session) = store
        .pay(&pay_cmd("alice", key, 1, advert, 300, now))
        .await
        .unwrap()
    else {
        panic!("the pay is created");
    };
    step("pay", &mut steps);
    let pressed = machine_op(store, seq, DeviceOp::Press, now + 2).await;
    assert!(matches!(pressed, DeviceOpResult::Started(_)), "{pressed:?}");
    step("press", &mut steps);
    let last = DeviceOp::Report {
        session: session.id,
        units: Units::new(3),
        last: true,
    };
    let settled = session_of(machine_op(store, seq + 1, last, now + 4).await);
    assert_eq!(settled.status, SessionStatus::Settled);
    step("final report", &mut steps);
    let write: f64 = steps.iter().map(|(_, u, _)| u.write).sum();
    let read: f64 = steps.iter().map(|(_, u, _)| u.read).sum();
    report(&format!("payment: {write} WRU, {read} RRU"));
    steps
}

/// A payment on a warm process: the pay is one request (no device read: the service checks the
/// advert under what the store knows, and the transaction checks the key state), and the whole
/// cycle stays within [`PAYMENT_WRITE_UNITS`], measured from DynamoDB's `ConsumedCapacity`; a
/// process that has not seen the machine (cold) writes the same units and reads first.
#[tokio::test]
async fn a_warm_payment_is_one_pay_request_and_within_its_measured_write_units() {
    let store = fresh_store().await;
    online_machine(&store, 1, T0).await;
    fund(&store, "alice", 1000).await;
    let counter = store.request_counter();
    // A machine in the field has sent a heartbeat: its item carries the telemetry.
    let heartbeat = DeviceOp::Heartbeat(blepay_store::conformance::telemetry(2));
    assert_eq!(
        machine_op(&store, 2, heartbeat, T0).await,
        DeviceOpResult::Ack
    );

    let steps = payment(&store, "p1", 7, 3, T0).await;
    let requests: Vec<(&str, u64)> = steps.iter().map(|(n, _, c)| (*n, *c)).collect();
    assert_eq!(
        requests,
        [("verify", 1), ("pay", 1), ("press", 1), ("final report", 1)],
        "warm: one request each"
    );
    let write: f64 = steps.iter().map(|(_, u, _)| u.write).sum();
    assert!(write > 0.0, "DynamoDB reported the units consumed");
    assert!(
        write <= PAYMENT_WRITE_UNITS,
        "a payment costs {write} WRU, over its budget of {PAYMENT_WRITE_UNITS}: {steps:?}"
    );

    // An idle machine's heartbeat: the device's UpdateItem and the history's PutItem, each
    // outside a transaction (docs/performance.md's idle machine-month).
    counter.reset();
    let heartbeat = DeviceOp::Heartbeat(blepay_store::conformance::telemetry(3));
    assert_eq!(
        machine_op(&store, 5, heartbeat, T0 + 1800).await,
        DeviceOpResult::Ack
    );
    report(&format!(
        "heartbeat: {:?} {:?}",
        counter.units(),
        counter.units_by_index()
    ));
    assert!(
        counter.units().write <= HEARTBEAT_WRITE_UNITS,
        "a heartbeat costs {:?}",
        counter.units()
    );

    // Another pay on the same process, no verify before it: still one request.
    counter.reset();
    store
        .device_known(device_id(1), T0 + 1801)
        .await
        .unwrap()
        .unwrap();
    created_on(&store, "p2", 8, T0 + 1801).await;
    assert_eq!(counter.count(), 1, "a second warm pay");

    // Cold (a process that never saw the machine): the same writes, each after its read.
    let cold = store.clone().without_device_shadow();
    // First the second pay's session, pressed and settled through the cold store.
    let open = cold
        .device_status(device_id(1), T0 + 1802)
        .await
        .unwrap()
        .unwrap()
        .open_session
        .unwrap();
    machine_op(&cold, 6, DeviceOp::Press, T0 + 1803).await;
    let done = DeviceOp::Report {
        session: open,
        units: Units::new(1),
        last: true,
    };
    machine_op(&cold, 7, done, T0 + 1804).await;
    let steps = payment(&cold, "p3", 9, 8, T0 + 1810).await;
    let write: f64 = steps.iter().map(|(_, u, _)| u.write).sum();
    assert!(
        write <= COLD_PAYMENT_WRITE_UNITS,
        "a cold payment costs {write} WRU, over {COLD_PAYMENT_WRITE_UNITS}: {steps:?}"
    );
}
