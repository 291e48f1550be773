//! Ledger rows an operator causes name the operator (`ledger.actor`, docs/api.md "Ledger rows
//! name the operator"): top-ups, refunds (of sessions and of provider top-ups) and a hand close's
//! rows; the system's rows, and those a provider's verified notification causes, name nobody.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use blepay_core::Provider;
use blepay_core::Units;
use blepay_sqlite::SqliteStore;
use blepay_store::conformance::{
    OPERATOR, T0, applied, close_cmd, created, credited_topup, device_op, event_on, fund,
    online_machine, pay_cmd, refund_cmd, topup_refund_cmd, topup_refund_id,
};
use blepay_store::{
    CloseOutcome, DeviceOp, DeviceOpResult, ProviderEventKind, RefundOutcome, Store,
    TopUpRefundOutcome,
};

#[tokio::test]
async fn top_ups_refunds_and_hand_closes_write_the_operator_on_their_ledger_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blepay.db");
    let store = SqliteStore::open(&path).unwrap();
    online_machine(&store, 1, T0).await;
    online_machine(&store, 2, T0).await;
    fund(&store, "alice", 1000).await; // actor "ops-test"
    let s = created(&store, &pay_cmd("alice", "p1", 1, 7, 300, T0)).await;
    device_op(&store, 1, 2, DeviceOp::Press, T0 + 1).await;
    let report = DeviceOp::Report {
        session: s.id,
        units: Units::new(4),
        last: true,
    };
    assert!(matches!(
        device_op(&store, 1, 3, report, T0 + 2).await,
        DeviceOpResult::Session(_)
    ));
    assert!(matches!(
        store
            .refund(&refund_cmd(s.id, 40, "r1", T0 + 3))
            .await
            .unwrap(),
        RefundOutcome::Refunded { .. }
    ));
    let other = created(&store, &pay_cmd("alice", "p2", 2, 8, 200, T0 + 4)).await;
    assert!(matches!(
        store
            .close_session(&close_cmd(other.id, T0 + 5))
            .await
            .unwrap(),
        CloseOutcome::Closed(_)
    ));
    drop(store);

    let c = rusqlite::Connection::open(&path).unwrap();
    let rows: Vec<(String, Option<String>)> = c
        .prepare("SELECT kind, actor FROM ledger ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let op = Some(OPERATOR.to_owned());
    assert_eq!(
        rows,
        vec![
            ("TOPUP".to_owned(), Some("ops-test".to_owned())),
            ("HOLD".to_owned(), None),
            ("CAPTURE".to_owned(), None),
            ("RELEASE".to_owned(), None),
            ("REFUND".to_owned(), op.clone()),
            ("HOLD".to_owned(), None),
            ("RELEASE".to_owned(), op),
        ]
    );
}

#[tokio::test]
async fn a_provider_credit_names_nobody_and_an_operator_refund_of_it_names_the_operator() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blepay.db");
    let store = SqliteStore::open(&path).unwrap();
    let t = credited_topup(&store, "alice", Provider::Stripe, 1000, 1).await;
    let refund = store
        .request_topup_refund(&topup_refund_cmd(t.id, 1, 300, "r1", T0 + 10))
        .await
        .unwrap();
    assert!(matches!(refund, TopUpRefundOutcome::Requested { .. }));
    let failed = ProviderEventKind::RefundFailed {
        refund: topup_refund_id(1),
        reason: "declined".into(),
    };
    applied(&store, &event_on(&t, "evt_rf", failed, T0 + 11)).await;
    drop(store);

    let c = rusqlite::Connection::open(&path).unwrap();
    let rows: Vec<(String, String, String, Option<String>)> = c
        .prepare("SELECT kind, debit, credit, actor FROM ledger ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let row = |kind: &str, debit: &str, credit: &str, actor: Option<&str>| {
        (
            kind.to_owned(),
            debit.to_owned(),
            credit.to_owned(),
            actor.map(str::to_owned),
        )
    };
    assert_eq!(
        rows,
        vec![
            row(
                "PROVIDER_CREDIT",
                "clearing:stripe",
                "available:alice",
                None
            ),
            row(
                "PROVIDER_DEBIT",
                "available:alice",
                "clearing:stripe",
                Some(OPERATOR)
            ),
            // The provider refused the refund: its word gives the money back.
            row(
                "PROVIDER_CREDIT",
                "clearing:stripe",
                "available:alice",
                None
            ),
        ]
    );
}
