//! A warm pay is checked under what the process knows of the device (`Store::device_known`, the
//! device shadow), not under a fresh read: these tests show that a revocation or a completed
//! rotation made through another process still takes effect at once — the pay's transaction
//! conditions on the key state, so the stale knowledge is refused by DynamoDB in that one
//! request, nothing is written, and the process knows the device afresh afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests: a failure is a panic

use blepay_core::{KeyEpoch, KeyVersion};
use blepay_dynamodb::DynamoStore;
use blepay_dynamodb::testing::fresh_store;
use blepay_store::conformance::{
    T0, device_call_keyed, device_id, digest, fund, key, online_machine, pay_cmd, reconciled,
    telemetry, user, wallet,
};
use blepay_store::{DeviceCallOutcome, DeviceOp, PayOutcome, RevokeOutcome, RotateOutcome, Store};

/// `a` still knows device 1 under its first key epoch only, and alice's pay under it at `now` is
/// refused (`KeyRefused`) by the pay's one request.
async fn stale_pay_is_refused_in_one_request(a: &DynamoStore, now: u64) {
    let known = a.device_known(device_id(1), now).await.unwrap().unwrap();
    assert_eq!(
        known.device.keys.accepted().collect::<Vec<_>>(),
        [KeyEpoch::FIRST]
    );
    let counter = a.request_counter();
    counter.reset();
    assert_eq!(
        a.pay(&pay_cmd("alice", "p1", 1, 7, 300, now))
            .await
            .unwrap(),
        PayOutcome::KeyRefused
    );
    assert_eq!(counter.count(), 1, "{:?}", counter.by_operation());
}

#[tokio::test]
async fn a_pay_from_knowledge_older_than_a_revocation_is_refused_by_its_write() {
    let a = fresh_store().await;
    online_machine(&a, 1, T0).await;
    fund(&a, "alice", 1000).await;
    // Another process (another Lambda instance) revokes the machine's key.
    let b = DynamoStore::new(a.client().clone(), a.table());
    assert!(matches!(
        b.revoke_device(device_id(1), "stolen", T0 + 1)
            .await
            .unwrap(),
        RevokeOutcome::Revoked { .. }
    ));
    // `a` still believes the key live (the advert's tag checks out under it), and the pay's one
    // request is refused by the transaction's key condition.
    stale_pay_is_refused_in_one_request(&a, T0 + 2).await;
    assert_eq!(
        a.wallet(&user("alice"), T0 + 2).await.unwrap(),
        wallet(1000, 0, 0)
    );
    // The guess was dropped: the next check reads, and sees the revocation.
    let read = a.device_known(device_id(1), T0 + 3).await.unwrap().unwrap();
    assert_eq!(read.device.keys.accepted().count(), 0);
    reconciled(&a).await;
}

#[tokio::test]
async fn a_pay_under_a_key_rotated_away_elsewhere_is_refused_by_its_write() {
    let a = fresh_store().await;
    online_machine(&a, 1, T0).await;
    fund(&a, "alice", 1000).await;
    let b = DynamoStore::new(a.client().clone(), a.table());
    let e1 = KeyEpoch::new(1);
    assert!(matches!(
        b.rotate_device_key(device_id(1), &key("r1"), T0 + 1)
            .await
            .unwrap(),
        RotateOutcome::Issued(_)
    ));
    // The machine's first frame under the new key (through `b`) retires the old one.
    let (first, _) = device_call_keyed(
        &b,
        KeyVersion::new(0).unwrap(),
        (e1, None),
        1,
        2,
        digest(2),
        DeviceOp::Heartbeat(telemetry(1)),
        T0 + 2,
    )
    .await;
    assert!(matches!(first, DeviceCallOutcome::Fresh(_)), "{first:?}");
    // `a` knows only the old epoch; a pay under it is refused by the write, in one request.
    stale_pay_is_refused_in_one_request(&a, T0 + 3).await;
    // Read afresh, the new epoch is the one accepted, and a pay under it goes through.
    let read = a.device_known(device_id(1), T0 + 4).await.unwrap().unwrap();
    assert_eq!(read.device.keys.accepted().collect::<Vec<_>>(), [e1]);
    let mut under_new = pay_cmd("alice", "p2", 1, 8, 300, T0 + 4);
    under_new.key_epoch = e1;
    assert!(matches!(
        a.pay(&under_new).await.unwrap(),
        PayOutcome::Created(_)
    ));
    reconciled(&a).await;
}
