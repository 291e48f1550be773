//! Idempotency lives as long as what it protects (issue 10, L5): after DynamoDB's TTL sweeper has
//! deleted everything past its `ttl` (simulated: DynamoDB Local never sweeps), a top-up retried and
//! a pay key reused are answered as retries, as SQLite answers them, instead of a top-up failing
//! with 503 forever on its deterministic ledger row and a pay opening a second session.

use blepay_core::SessionStatus;
use blepay_dynamodb::testing::{delete_item, fresh_store, sweep_ttl};
use blepay_store::conformance::{
    T0, amount, device_op, key, online_machine, pay_cmd, reconciled, user, wallet,
};
use blepay_store::{DeviceOp, PayOutcome, Store, TopUpOutcome};

/// Eight days on: past the seven days idempotency records were kept before.
const LATER: u64 = T0 + 8 * 24 * 3600;

#[tokio::test]
async fn keys_are_still_retries_after_the_ttl_sweeper_ran() {
    let store = fresh_store().await;
    let alice = user("alice");
    online_machine(&store, 1, T0).await;
    assert!(matches!(
        store
            .top_up(&alice, amount(1000), &key("t1"), "ops-test", T0)
            .await
            .unwrap(),
        TopUpOutcome::Credited(_)
    ));
    let PayOutcome::Created(paid) = store
        .pay(&pay_cmd("alice", "p1", 1, 7, 300, T0))
        .await
        .unwrap()
    else {
        panic!("created");
    };

    // Advert markers (and rate counters) do expire; nothing a retry needs does.
    let swept = sweep_ttl(&store, LATER).await;
    assert!(swept >= 1, "the advert marker is swept");
    device_op(&store, 1, 2, DeviceOp::Poll, LATER).await;

    assert_eq!(
        store
            .top_up(&alice, amount(1000), &key("t1"), "ops-test", LATER)
            .await
            .unwrap(),
        TopUpOutcome::Replayed(wallet(1000, 0, 0))
    );
    let PayOutcome::Replayed(s) = store
        .pay(&pay_cmd("alice", "p1", 1, 8, 300, LATER))
        .await
        .unwrap()
    else {
        panic!("a pay key reused after the sweep is a retry");
    };
    assert_eq!((s.id, s.status), (paid.id, SessionStatus::Expired));
    let audit = reconciled(&store).await;
    assert_eq!((audit.top_ups, audit.held), (1000, 0));
}

/// Top-up key records written by builds before issue 10 carry a TTL: once one is swept, the retry
/// is answered from the deterministic TOPUP ledger row (it used to fail on that row with 503
/// forever).
#[tokio::test]
async fn a_top_up_whose_key_record_was_swept_is_answered_from_its_ledger_row() {
    let store = fresh_store().await;
    let alice = user("alice");
    assert!(matches!(
        store
            .top_up(&alice, amount(1000), &key("t1"), "ops-test", T0)
            .await
            .unwrap(),
        TopUpOutcome::Credited(_)
    ));
    delete_item(&store, "USER#alice", "TOPUP#t1").await;

    assert_eq!(
        store
            .top_up(&alice, amount(1000), &key("t1"), "ops-test", LATER)
            .await
            .unwrap(),
        TopUpOutcome::Replayed(wallet(1000, 0, 0))
    );
    assert_eq!(
        store
            .top_up(&alice, amount(5), &key("t1"), "ops-test", LATER)
            .await
            .unwrap(),
        TopUpOutcome::KeyReused
    );
    assert_eq!(reconciled(&store).await.top_ups, 1000);
}

/// The console's items carry a `ttl`: a telemetry sample `TELEMETRY_HISTORY_SECS` after its
/// heartbeat, a console session `CONSOLE_SESSION_GRACE_SECS` after its expiry; the sweeper deletes
/// them then and not before.
#[tokio::test]
async fn telemetry_samples_and_console_sessions_expire_by_ttl() {
    use blepay_store::TELEMETRY_HISTORY_SECS;
    use blepay_store::conformance::{console_session, device_id, telemetry};

    let store = fresh_store().await;
    online_machine(&store, 1, T0).await;
    device_op(&store, 1, 2, DeviceOp::Heartbeat(telemetry(1)), T0).await;
    device_op(&store, 1, 3, DeviceOp::Heartbeat(telemetry(2)), T0 + 10).await;
    let signed_in = console_session(1, "bootstrap", T0, 3600);
    assert!(store.create_console_session(&signed_in).await.unwrap());
    let history = || async {
        store
            .telemetry_history(device_id(1), 0, u64::MAX, 100)
            .await
            .unwrap()
            .iter()
            .map(|s| s.at)
            .collect::<Vec<_>>()
    };

    assert_eq!(
        sweep_ttl(&store, T0 + TELEMETRY_HISTORY_SECS - 1).await,
        1,
        "the session only"
    );
    assert_eq!(history().await, vec![T0, T0 + 10]);

    assert_eq!(sweep_ttl(&store, T0 + TELEMETRY_HISTORY_SECS).await, 1);
    assert_eq!(history().await, vec![T0 + 10]);
    assert_eq!(
        store.console_session(&signed_in.id_hash).await.unwrap(),
        None
    );
}

#[tokio::test]
async fn a_console_session_is_kept_a_day_after_it_expired() {
    use blepay_store::CONSOLE_SESSION_GRACE_SECS;
    use blepay_store::conformance::console_session;

    let store = fresh_store().await;
    let signed_in = console_session(1, "bootstrap", T0, 3600);
    assert!(store.create_console_session(&signed_in).await.unwrap());
    let gone_at = signed_in.expires_at + CONSOLE_SESSION_GRACE_SECS;
    assert_eq!(sweep_ttl(&store, gone_at - 1).await, 0);
    assert!(
        store
            .console_session(&signed_in.id_hash)
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(sweep_ttl(&store, gone_at).await, 1);
    assert_eq!(
        store.console_session(&signed_in.id_hash).await.unwrap(),
        None
    );
}
