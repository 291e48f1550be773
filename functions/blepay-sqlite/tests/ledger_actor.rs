//! Ledger rows an operator causes name the operator (`ledger.actor`, docs/api.md "Ledger rows
//! name the operator"): top-ups, refunds and a hand close's rows; the system's rows name nobody.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use blepay_core::Units;
use blepay_sqlite::SqliteStore;
use blepay_store::conformance::{
    OPERATOR, T0, close_cmd, created, device_op, fund, online_machine, pay_cmd, refund_cmd,
};
use blepay_store::{CloseOutcome, DeviceOp, DeviceOpResult, RefundOutcome, Store};

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
