//! The store conformance suite: what every [`Store`] implementation must do, written once.
//!
//! Each check is a `pub async fn` taking a fresh, empty store and panicking (`assert!`) on failure;
//! [`conformance_tests!`](crate::conformance_tests) expands to one `#[tokio::test]` per check
//! (multi-threaded runtime, so the race checks really race). An implementation's test file is two
//! lines:
//!
//! ```ignore
//! async fn fresh_store() -> (Arc<dyn Store>, TempDir) { /* ... */ }
//! blepay_store::conformance_tests!(fresh_store());
//! ```
//!
//! The factory expression is awaited once per test and yields the store plus a guard (a temp dir,
//! a container handle, `()`) kept alive until the test ends. Every check that changes anything
//! asserts [`Audit::reconciles`] afterwards.
//!
//! Compiled only with the `conformance` feature; this is test code, so it asserts and unwraps.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::missing_panics_doc
)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use blepay_core::{
    Amount, CloseReason, Currency, DeviceId, DeviceName, IdempotencyKey, KeyEpoch, KeyVersion,
    LateReport, Session, SessionError, SessionId, SessionStatus, Slot, Tariff, Telemetry, UnitName,
    Units, UseCounter, UserId, Wallet,
};

use crate::{
    AdvertSignals, Audit, CloseCommand, CloseOutcome, DeviceCall, DeviceCallOutcome, DeviceFilter,
    DeviceKeys, DeviceOp, DeviceOpResult, DeviceRecord, DeviceState, DeviceStatus, DeviceUpdate,
    DeviceUpdateOutcome, DismissCommand, DismissOutcome, PageRequest, PayCommand, PayLimits,
    PayOutcome, ProblemCommand, ProblemId, ProblemOutcome, Reason, RefundCommand, RefundOutcome,
    RegisterOutcome, ResolutionKind, ResponseEncoder, RevokeOutcome, RotateOutcome, SavedAnswer,
    ServiceState, Spending, Store, TopUpOutcome,
};
use crate::{
    NewProviderTopUp, ProviderEvent, ProviderEventKind, ProviderEventOutcome, ProviderTopUp,
    StartTopUpOutcome, TopUpFilter, TopUpId, TopUpLocator, TopUpRefundCommand, TopUpRefundId,
    TopUpRefundOutcome, TopUpRefundStatus, TopUpStatus,
};
use blepay_core::Provider;

/// Expand to one `#[tokio::test]` per conformance check, each on a store from `$factory`
/// (an expression evaluating to a future of `(Arc<dyn Store>, guard)`).
///
/// The list must name every check of this module (a `pub async fn` taking `store: Arc<dyn
/// Store>`): the unit test `every_check_defined_is_in_the_list_the_macro_expands` fails otherwise.
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr) => {
        $crate::conformance_tests!(@each $factory;
            registering_a_device_twice_is_exists_and_changes_nothing,
            device_status_tells_last_seen_and_the_open_session,
            the_wallet_of_an_unknown_user_is_zero,
            a_top_up_replayed_with_its_key_credits_once,
            a_top_up_key_reused_with_another_amount_is_refused,
            a_top_up_beyond_the_maximum_balance_is_refused_and_changes_nothing,
            a_pay_holds_the_amount_and_opens_an_authorized_session,
            a_pay_for_an_unknown_device_changes_nothing,
            a_pay_for_a_device_never_seen_is_offline_and_changes_nothing,
            a_pay_for_a_device_seen_too_long_ago_is_offline_and_changes_nothing,
            a_pay_for_a_busy_device_changes_nothing,
            a_pay_with_a_used_advert_changes_nothing,
            a_pay_above_the_available_balance_changes_nothing,
            a_pay_below_the_price_of_one_unit_is_refused_and_changes_nothing,
            a_pay_key_reused_for_another_machine_or_amount_changes_nothing,
            a_replayed_pay_returns_the_same_session_without_a_second_hold,
            a_polling_machine_receives_its_authorized_sessions,
            a_started_session_settles_at_the_cost_of_the_units,
            a_session_settles_at_the_hold_when_the_cost_exceeds_it,
            repeating_the_final_report_is_already_settled_and_moves_no_money,
            a_report_before_start_or_with_other_units_is_refused,
            a_session_read_after_its_deadline_is_expired_and_its_hold_released,
            expire_due_expires_every_overdue_session_and_releases_its_hold,
            starting_a_session_after_its_deadline_is_refused_and_releases_the_hold,
            a_retried_device_call_returns_the_saved_answer_without_running_again,
            an_older_sequence_number_is_replayed_and_changes_nothing,
            the_same_sequence_number_with_other_bytes_is_replayed,
            a_refusal_is_saved_with_its_code_and_a_retry_gets_both,
            a_call_from_an_unknown_device_is_refused,
            a_session_of_another_device_is_not_found,
            concurrent_pays_for_one_machine_create_exactly_one_session,
            concurrent_pays_with_one_key_create_one_session_and_one_hold,
            a_press_starts_the_waiting_session_and_answers_its_terms,
            a_press_with_no_session_waiting_changes_nothing,
            a_press_after_the_start_deadline_expires_the_session_and_releases_the_hold,
            pressing_twice_starts_one_session,
            a_heartbeat_stores_the_telemetry_and_refreshes_last_seen,
            a_retried_heartbeat_does_not_refresh_last_seen,
            time_out_active_settles_silent_sessions_at_their_last_reported_units,
            a_device_op_on_a_silent_active_session_times_it_out_first,
            a_late_final_report_captures_what_it_owes_once,
            a_late_final_report_charges_no_more_than_is_available,
            a_pay_is_refused_offline_on_link_down_and_fault_on_the_fault_flag,
            a_frame_under_a_retired_key_version_is_refused_and_changes_nothing,
            an_operation_that_did_not_decode_is_saved_and_advances_the_sequence_number,
            the_last_sequence_number_is_answered_once_and_nothing_follows_it,
            a_pay_beyond_the_unstarted_cap_is_refused_and_changes_nothing,
            a_pay_beyond_the_rate_is_refused_until_the_next_window,
            concurrent_pays_by_one_user_on_several_machines_open_one_session,
            concurrent_pays_beyond_the_rate_open_exactly_the_rate,
            a_top_up_past_the_lifetime_maximum_is_refused_after_the_money_was_spent,
            keys_reused_after_a_week_are_still_answered_as_retries,
            a_refund_of_a_settled_session_credits_the_wallet_and_shows_on_the_session,
            a_refund_replayed_with_its_key_refunds_once,
            a_refund_over_the_capture_or_of_an_open_session_is_refused_and_changes_nothing,
            concurrent_refunds_never_exceed_the_capture,
            closing_an_authorized_session_voids_it_releases_the_hold_and_frees_the_machine,
            closing_an_active_session_settles_it_and_a_late_report_is_handled_as_after_a_timeout,
            closing_a_session_closed_otherwise_is_refused_and_changes_nothing,
            a_problem_is_opened_once_per_session_and_listed_oldest_first,
            dismissing_a_problem_resolves_it_once_and_a_new_report_opens_another,
            a_refund_resolves_the_sessions_open_problem,
            an_operator_is_created_once_per_key_and_a_reused_key_changes_nothing,
            revoking_an_operator_stamps_it_once_and_an_unknown_one_is_not_found,
            audit_events_are_recorded_once_per_key_and_listed_newest_first_page_by_page,
            concurrent_creates_with_one_key_create_one_operator,
            a_console_session_is_saved_once_read_back_and_ended_once,
            an_expired_console_session_reads_back_not_live_and_can_still_be_ended,
            concurrent_ends_of_one_console_session_end_it_once,
            each_fresh_heartbeat_keeps_a_telemetry_sample_oldest_first,
            the_telemetry_history_holds_its_range_and_keeps_the_newest_within_the_limit,
            a_tariff_change_applies_to_sessions_authorized_after_it_never_to_an_open_one,
            a_pay_for_a_machine_out_of_service_is_refused_and_changes_nothing,
            a_decommissioned_machine_stays_decommissioned_and_keeps_its_history,
            the_fleet_list_pages_by_device_id_and_filters,
            a_pay_over_the_daily_cap_is_refused_and_changes_nothing,
            concurrent_pays_cannot_together_exceed_the_daily_cap,
            the_session_list_filters_by_machine_user_status_and_time_newest_first,
            paging_the_session_list_never_skips_or_repeats_a_session,
            a_statement_lists_every_entry_touching_the_user_newest_first_in_pages,
            the_sales_facts_hold_the_range_and_the_report_sums_match_the_revenue,
            a_revoked_device_refuses_frames_and_adverts_and_voids_its_waiting_session,
            revoking_a_device_settles_its_active_session_at_its_last_reported_units,
            a_rotation_accepts_the_old_key_until_the_first_frame_under_the_new_one,
            a_provider_top_up_is_started_once_per_user_and_key,
            a_top_up_is_found_by_its_id_and_its_providers_ref_never_by_the_other_provider,
            a_verified_success_credits_the_wallet_exactly_once,
            concurrent_deliveries_of_one_success_credit_once,
            concurrent_different_events_on_one_top_up_all_apply,
            a_refund_or_dispute_before_the_success_is_remembered_and_applied_with_the_credit,
            a_success_with_another_amount_or_currency_credits_nothing_and_is_recorded,
            an_event_for_an_unknown_top_up_changes_nothing_and_is_not_recorded,
            a_failure_then_a_success_credits_and_a_success_then_a_failure_is_ignored,
            a_reversal_of_an_unspent_credit_debits_it_all_and_marks_the_top_up_refunded,
            a_reversal_after_spending_debits_only_what_is_available_and_shows_the_rest,
            an_operator_refund_of_a_top_up_is_taken_at_request_and_answered_by_key,
            a_refused_top_up_refund_is_given_back_and_a_confirmed_one_stays,
            the_top_up_list_filters_by_user_provider_status_and_time_newest_first,
        );
    };
    (@each $factory:expr; $($check:ident),+ $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() {
                let (store, _guard) = $factory.await;
                $crate::conformance::$check(store).await;
            }
        )+
    };
}

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// The suite's clock: 2026-02-02, slot 59 000 000.
pub const T0: u64 = 1_770_000_000;
/// Price per litre of every test machine, in cents.
pub const PRICE: i64 = 25;
pub const START_TIMEOUT: u64 = 120;
pub const OFFLINE_AFTER: u64 = 300;
/// `BLEPAY_ACTIVE_TIMEOUT_SECS` of the suite.
pub const ACTIVE_TIMEOUT: u64 = 3600;

pub fn device_id(n: u8) -> DeviceId {
    DeviceId::from_bytes([0xd0, 0, 0, 0, 0, 0, 0, n])
}

pub fn dispenser(n: u8) -> DeviceRecord {
    DeviceRecord {
        id: device_id(n),
        name: DeviceName::parse(&format!("Water dispenser {n}")).unwrap(),
        tariff: Tariff {
            price_per_unit: Amount::positive(PRICE).unwrap(),
            unit_name: UnitName::parse("litre").unwrap(),
            currency: Currency::parse("EUR").unwrap(),
        },
        key_version: KeyVersion::new(0).unwrap(),
        created_at: T0 - 1000,
        service_state: ServiceState::InService,
        keys: DeviceKeys::default(),
    }
}

pub fn user(name: &str) -> UserId {
    UserId::parse(name).unwrap()
}

pub fn key(k: &str) -> IdempotencyKey {
    IdempotencyKey::parse(k).unwrap()
}

pub fn amount(minor: i64) -> Amount {
    Amount::new(minor).unwrap()
}

pub fn session_id(n: u8) -> SessionId {
    SessionId::from_bytes([n; 16])
}

pub fn wallet(available: i64, held: i64, spent: i64) -> Wallet {
    Wallet {
        available: amount(available),
        held: amount(held),
        spent: amount(spent),
        refunded: Amount::ZERO,
    }
}

/// The pay limits of [`pay_cmd`]: roomy enough for every check that is not about them.
pub const ROOMY: PayLimits = PayLimits {
    max_unstarted_per_user: 16,
    rate_max: 1000,
    rate_window_secs: 3600,
};

/// A pay by `who` on machine `n` heard at `now`, advert use counter `use_counter`, with a session
/// id derived from the counter.
pub fn pay_cmd(who: &str, idem: &str, n: u8, use_counter: u16, max: i64, now: u64) -> PayCommand {
    let [hi, lo] = use_counter.to_be_bytes();
    PayCommand {
        user: user(who),
        key: key(idem),
        device: device_id(n),
        slot: Slot::at(now),
        use_counter: UseCounter::new(use_counter),
        max_amount: amount(max),
        session_id: SessionId::from_bytes([n, hi, lo, 0x5e, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
        now,
        start_timeout_secs: START_TIMEOUT,
        offline_after_secs: OFFLINE_AFTER,
        signals: AdvertSignals::default(),
        limits: ROOMY,
        daily_limit: None,
        key_epoch: blepay_core::KeyEpoch::FIRST,
    }
}

/// The frame digest of a machine request: distinct per sequence number.
pub fn digest(seq: u32) -> [u8; 32] {
    let mut d = [0u8; 32];
    d[..4].copy_from_slice(&seq.to_be_bytes());
    d
}

/// The suite's answer encoding: the result's debug text, and a refusal code for the results that
/// are refusals.
pub fn answer_of(r: &DeviceOpResult) -> SavedAnswer {
    let code = match r {
        DeviceOpResult::Grants(_)
        | DeviceOpResult::Session(_)
        | DeviceOpResult::Started(_)
        | DeviceOpResult::Ack => None,
        DeviceOpResult::NoSessionWaiting => Some("NO_SESSION_WAITING".to_owned()),
        DeviceOpResult::SessionNotFound => Some("SESSION_NOT_FOUND".to_owned()),
        DeviceOpResult::Refused(e) => Some(format!("{e:?}")),
        DeviceOpResult::FrameInvalid(_) => Some("FRAME_INVALID".to_owned()),
    };
    SavedAnswer {
        frame: format!("{r:?}").into_bytes(),
        code,
    }
}

/// Run one machine request tagged under key version 0 (the suite's machines' registered one);
/// returns the outcome and the operation's result when it ran.
pub async fn device_call_with(
    store: &dyn Store,
    n: u8,
    seq: u32,
    digest: [u8; 32],
    op: DeviceOp,
    now: u64,
) -> (DeviceCallOutcome, Option<DeviceOpResult>) {
    let v0 = KeyVersion::new(0).unwrap();
    device_call_under(store, v0, n, seq, digest, op, now).await
}

/// Run one machine request whose tag verified under `key_version`; returns the outcome and the
/// operation's result when it ran.
pub async fn device_call_under(
    store: &dyn Store,
    key_version: KeyVersion,
    n: u8,
    seq: u32,
    digest: [u8; 32],
    op: DeviceOp,
    now: u64,
) -> (DeviceCallOutcome, Option<DeviceOpResult>) {
    device_call_keyed(
        store,
        key_version,
        (KeyEpoch::FIRST, None),
        n,
        seq,
        digest,
        op,
        now,
    )
    .await
}

/// Run one machine request whose tag verified under `key_version` and key epoch `keys.0`,
/// expecting the key update `keys.1`.
#[allow(clippy::too_many_arguments)]
pub async fn device_call_keyed(
    store: &dyn Store,
    key_version: KeyVersion,
    (key_epoch, key_update): (KeyEpoch, Option<KeyEpoch>),
    n: u8,
    seq: u32,
    digest: [u8; 32],
    op: DeviceOp,
    now: u64,
) -> (DeviceCallOutcome, Option<DeviceOpResult>) {
    // `ResponseEncoder` is `'static`: the encoder owns what it captures.
    let seen = Arc::new(Mutex::new(None));
    let encode: ResponseEncoder = {
        let seen = Arc::clone(&seen);
        Arc::new(move |r: &DeviceOpResult| {
            *seen.lock().unwrap() = Some(r.clone());
            answer_of(r)
        })
    };
    let call = DeviceCall {
        device: device_id(n),
        key_version,
        key_epoch,
        key_update,
        seq,
        digest,
        op,
        now,
        active_timeout_secs: ACTIVE_TIMEOUT,
    };
    let outcome = store.device_call(&call, encode).await.unwrap();
    let ran = seen.lock().unwrap().take();
    (outcome, ran)
}

/// Run one machine request that must run; returns its result.
pub async fn device_op(
    store: &dyn Store,
    n: u8,
    seq: u32,
    op: DeviceOp,
    now: u64,
) -> DeviceOpResult {
    let (outcome, result) = device_call_with(store, n, seq, digest(seq), op, now).await;
    let result = result.expect("the operation ran");
    assert_eq!(outcome, DeviceCallOutcome::Fresh(answer_of(&result)));
    result
}

/// The session a start or report returned.
pub fn session_of(result: DeviceOpResult) -> Session {
    match result {
        DeviceOpResult::Session(s) => s,
        other => panic!("expected a session, got {other:?}"),
    }
}

/// Register machine `n` and have it poll at `now` (so it is online).
pub async fn online_machine(store: &dyn Store, n: u8, now: u64) {
    assert_eq!(
        store.register_device(&dispenser(n), now).await.unwrap(),
        RegisterOutcome::Created
    );
    device_op(store, n, 1, DeviceOp::Poll, now).await;
}

pub async fn fund(store: &dyn Store, who: &str, minor: i64) {
    let out = store
        .top_up(
            &user(who),
            amount(minor),
            &key(&format!("fund-{who}-{minor}")),
            "ops-test",
            T0 - 10,
        )
        .await
        .unwrap();
    assert!(matches!(out, TopUpOutcome::Credited(_)), "{out:?}");
}

pub async fn created(store: &dyn Store, cmd: &PayCommand) -> Session {
    match store.pay(cmd).await.unwrap() {
        PayOutcome::Created(s) => s,
        other => panic!("expected a created session, got {other:?}"),
    }
}

/// The ids of `sessions` (what a sweep returned), in order.
pub fn ids(sessions: &[Session]) -> Vec<SessionId> {
    sessions.iter().map(|s| s.id).collect()
}

/// Audit and assert that money is conserved.
pub async fn reconciled(store: &dyn Store) -> Audit {
    let audit = store.audit().await.unwrap();
    assert!(audit.reconciles(), "audit does not reconcile: {audit:?}");
    audit
}

/// What a refused pay must leave unchanged.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    audit: Audit,
    wallet: Wallet,
    open_session: Option<SessionId>,
}

async fn snapshot(store: &dyn Store, cmd: &PayCommand) -> Snapshot {
    Snapshot {
        audit: reconciled(store).await,
        wallet: store.wallet(&cmd.user, cmd.now).await.unwrap(),
        open_session: store
            .device_status(cmd.device, cmd.now)
            .await
            .unwrap()
            .and_then(|d| d.open_session),
    }
}

/// Assert `cmd` is refused with `expected` and changes nothing.
async fn refused_without_change(store: &dyn Store, cmd: &PayCommand, expected: PayOutcome) {
    let before = snapshot(store, cmd).await;
    assert_eq!(store.pay(cmd).await.unwrap(), expected);
    assert_eq!(snapshot(store, cmd).await, before);
    assert_eq!(store.session(cmd.session_id, cmd.now).await.unwrap(), None);
    assert_eq!(
        store.find_pay(&cmd.user, &cmd.key, cmd.now).await.unwrap(),
        None
    );
}

// ---------------------------------------------------------------------------------------------
// Devices and wallets
// ---------------------------------------------------------------------------------------------

pub async fn registering_a_device_twice_is_exists_and_changes_nothing(store: Arc<dyn Store>) {
    let first = dispenser(1);
    assert_eq!(
        store.register_device(&first, T0).await.unwrap(),
        RegisterOutcome::Created
    );

    let mut second = dispenser(1);
    second.name = DeviceName::parse("Impostor").unwrap();
    second.tariff.price_per_unit = amount(1);
    assert_eq!(
        store.register_device(&second, T0).await.unwrap(),
        RegisterOutcome::Exists
    );

    let status = store.device_status(first.id, T0).await.unwrap().unwrap();
    assert_eq!(status.device, first);
}

pub async fn device_status_tells_last_seen_and_the_open_session(store: Arc<dyn Store>) {
    assert_eq!(store.device_status(device_id(1), T0).await.unwrap(), None);

    store.register_device(&dispenser(1), T0).await.unwrap();
    let status = store
        .device_status(device_id(1), T0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((status.last_seen, status.open_session), (None, None));
    assert_eq!(
        status.state(T0, OFFLINE_AFTER, AdvertSignals::default()),
        DeviceState::Offline
    );

    device_op(&*store, 1, 1, DeviceOp::Poll, T0).await;
    let status = store
        .device_status(device_id(1), T0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.last_seen, Some(T0));
    assert_eq!(
        status.state(T0, OFFLINE_AFTER, AdvertSignals::default()),
        DeviceState::Idle
    );

    fund(&*store, "alice", 1000).await;
    let s = created(&*store, &pay_cmd("alice", "k1", 1, 7, 300, T0)).await;
    let status = store
        .device_status(device_id(1), T0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.open_session, Some(s.id));
    assert_eq!(
        status.state(T0, OFFLINE_AFTER, AdvertSignals::default()),
        DeviceState::Busy
    );
    reconciled(&*store).await;
}

pub async fn the_wallet_of_an_unknown_user_is_zero(store: Arc<dyn Store>) {
    assert_eq!(
        store.wallet(&user("nobody"), T0).await.unwrap(),
        Wallet::default()
    );
    assert_eq!(reconciled(&*store).await, Audit::default());
}

pub async fn a_top_up_replayed_with_its_key_credits_once(store: Arc<dyn Store>) {
    let alice = user("alice");
    assert_eq!(
        store
            .top_up(&alice, amount(500), &key("t1"), "ops-test", T0)
            .await
            .unwrap(),
        TopUpOutcome::Credited(wallet(500, 0, 0))
    );
    assert_eq!(
        store
            .top_up(&alice, amount(500), &key("t1"), "ops-test", T0 + 1)
            .await
            .unwrap(),
        TopUpOutcome::Replayed(wallet(500, 0, 0))
    );
    assert_eq!(
        store
            .top_up(&alice, amount(500), &key("t2"), "ops-test", T0 + 2)
            .await
            .unwrap(),
        TopUpOutcome::Credited(wallet(1000, 0, 0))
    );
    // Keys are per user: bob's "t1" is his own.
    assert_eq!(
        store
            .top_up(&user("bob"), amount(500), &key("t1"), "ops-test", T0 + 3)
            .await
            .unwrap(),
        TopUpOutcome::Credited(wallet(500, 0, 0))
    );

    assert_eq!(store.wallet(&alice, T0).await.unwrap(), wallet(1000, 0, 0));
    let audit = reconciled(&*store).await;
    assert_eq!((audit.top_ups, audit.available), (1500, 1500));
}

pub async fn a_top_up_key_reused_with_another_amount_is_refused(store: Arc<dyn Store>) {
    let alice = user("alice");
    store
        .top_up(&alice, amount(500), &key("t1"), "ops-test", T0)
        .await
        .unwrap();
    assert_eq!(
        store
            .top_up(&alice, amount(700), &key("t1"), "ops-test", T0)
            .await
            .unwrap(),
        TopUpOutcome::KeyReused
    );
    assert_eq!(store.wallet(&alice, T0).await.unwrap(), wallet(500, 0, 0));
    assert_eq!(reconciled(&*store).await.top_ups, 500);
}

/// A credit that would take a wallet above `Amount::MAX` is a refusal, not a storage failure.
pub async fn a_top_up_beyond_the_maximum_balance_is_refused_and_changes_nothing(
    store: Arc<dyn Store>,
) {
    let alice = user("alice");
    store
        .top_up(&alice, Amount::MAX, &key("t1"), "ops-test", T0)
        .await
        .unwrap();
    assert_eq!(
        store
            .top_up(&alice, amount(1), &key("t2"), "ops-test", T0)
            .await
            .unwrap(),
        TopUpOutcome::LimitExceeded
    );
    assert_eq!(
        store.wallet(&alice, T0).await.unwrap(),
        wallet(Amount::MAX.minor(), 0, 0)
    );
    assert_eq!(reconciled(&*store).await.top_ups, Amount::MAX.minor());
}

// ---------------------------------------------------------------------------------------------
// Pay
// ---------------------------------------------------------------------------------------------

pub async fn a_pay_holds_the_amount_and_opens_an_authorized_session(store: Arc<dyn Store>) {
    online_machine(&*store, 1, T0).await;
    fund(&*store, "alice", 1000).await;
    let cmd = pay_cmd("alice", "p1", 1, 7, 300, T0);

    let s = created(&*store, &cmd).await;

    assert_eq!(s.id, cmd.session_id);
    assert_eq!((s.device_id, &s.user_id), (device_id(1), &user("alice")));
    assert_eq!(s.status, SessionStatus::Authorized);
    assert_eq!(
        (s.hold, s.amount, s.units),
        (amount(300), Amount::ZERO, Units::ZERO)
    );
    assert_eq!(s.tariff, dispenser(1).tariff);
    assert_eq!(s.use_counter, UseCounter::new(7));
    assert_eq!((s.created_at, s.expires_at), (T0, T0 + START_TIMEOUT));
    assert_eq!(store.session(s.id, T0).await.unwrap(), Some(s.clone()));
    assert_eq!(
        store.find_pay(&cmd.user, &cmd.key, T0).await.unwrap(),
        Some(s.clone())
    );
    assert_eq!(
        store.wallet(&cmd.user, T0).await.unwrap(),
        wallet(700, 300, 0)
    );
    let audit = reconciled(&*store).await;
    assert_eq!(
        (audit.top_ups, audit.available, audit.held, audit.open_holds),
        (1000, 700, 300, 300)
    );
    assert_eq!((audit.spent, audit.revenue), (0, 0));
}

pub async fn a_pay_for_an_unknown_device_changes_nothing(store: Arc<dyn Store>) {
    fund(&*store, "alice", 1000).await;
    refused_without_change(
        &*store,
        &pay_cmd("alice", "p1", 9, 7, 300, T0),
        PayOutcome::DeviceUnknown,
    )
    .await;
}

pub async fn a_pay_for_a_device_never_seen_is_offline_and_changes_nothing(store: Arc<dyn Store>) {
    store.register_device(&dispenser(1), T0).await.unwrap();
    fund(&*store, "alice", 1000).await;
    refused_without_change(
        &*store,
        &pay_cmd("alice", "p1", 1, 7, 300, T0),
        PayOutcome::DeviceOffline,
    )
    .await;
}

pub async fn a_pay_for_a_device_seen_too_long_ago_is_offline_and_changes_nothing(
    store: Arc<dyn Store>,
) {
    online_machine(&*store, 1, T0).await;
    fund(&*store, "alice", 1000).await;
    let later = T0 + OFFLINE_AFTER + 1;
    refused_without_change(
        &*store,
        &pay_cmd("alice", "p1", 1, 7, 300, later),
        PayOutcome::DeviceOffline,
    )
    .await;
    // Exactly at the limit it is still online.
    created(
        &*store,
        &pay_cmd("alice", "p2", 1, 8, 300, T0 + OFFLINE_AFTER),
    )
    .await;
    reconciled(&*store).await;
}

pub async fn a_pay_for_a_busy_device_changes_nothing(store: Arc<dyn Store>) {
    online_machine(&*store, 1, T0).await;
    fund(&*store, "alice", 1000).await;
    fund(&*store, "bob", 1000).await;
    created(&*store, &pay_cmd("alice", "p1", 1, 7, 300, T0)).await;
    refused_without_change(
        &*store,
        &pay_cmd("bob", "p1", 1, 8, 300, T0 + 1),
        PayOutcome::DeviceBusy,
    )
    .await;
}

pub async fn a_pay_with_a_used_advert_changes_nothing(store: Arc<dyn Store>) {
    online_machine(&*store, 1, T0).await;
    fund(&*store, "alice", 1000).await;
    fund(&*store, "bob", 1000).await;
    let first = created(&*store, &pay_cmd("alice", "p1", 1, 7, 300, T0)).await;
    device_op(&*store, 1, 2, DeviceOp::Start { session: first.id }, T0 + 5).await;
    device_op(
        &*store,
        1,
        3,
        DeviceOp::Report {
            session: first.id,
            units: Units::new(2),
            last: true,
        },
        T0 + 9,
    )
    .await;

    // The machine is idle again, but the same advert (slot, use counter) cannot start a second session.
    let mut again = pay_cmd("bob", "p1", 1, 7, 300, T0 + 10);
    again.slot = Slot::at(T0);
    again.session_id = session_id(0xb0);
    refused_without_change(&*store, &again, PayOutcome::AdvertUsed).await;
}

pub async fn a_pay_above_the_available_balance_changes_nothing(store: Arc<dyn Store>) {
    online_machine(&*store, 1, T0).await;
    fund(&*store, "alice", 100).await;
    refused_without_change(
        &*store,
        &pay_cmd("alice", "p1", 1, 7, 300, T0),
        PayOutcome::InsufficientFunds {
            available: amount(100),
        },
    )
    .await;
    // (The smallest pay the store does not refuse as below the price of one unit.)
    refused_without_change(
        &*store,
        &pay_cmd("carol", "p1", 1, 7, PRICE, T0),
        PayOutcome::InsufficientFunds {
            available: Amount::ZERO,
        },
    )
    .await;
}

pub async fn a_pay_below_the_price_of_one_unit_is_refused_and_changes_nothing(
    store: Arc<dyn Store>,
) {
    online_machine(&*store, 1, T0).await;
    fund(&*store, "alice", 1000).await;

    let cmd = pay_cmd("alice", "p1", 1, 7, PRICE - 1, T0);

    refused_without_change(
        &*store,
        &cmd,
        PayOutcome::BelowUnitPrice {
            price: amount(PRICE),
            unit_name: UnitName::parse("litre").unwrap(),
        },
    )
    .await;
}

pub async fn a_pay_key_reused_for_another_machine_or_amount_changes_nothing(store: Arc<dyn Store>) {
    online_machine(&*store, 1, T0).await;
    online_machine(&*store, 2, T0).await;
    fund(&*store, "alice", 1000).await;
    let first = created(&*store, &pay_cmd("alice", "p1", 1, 7, 300, T0)).await;

    let mut other_amount = pay_cmd("alice", "p1", 1, 8, 400, T0 + 1);
    other_amount.session_id = session_id(0xa1);
    let mut other_machine = pay_cmd("alice", "p1", 2, 7, 300, T0 + 1);
    other_machine.session_id = session_id(0xa2);
    for cmd in [other_amount, other_machine] {
        let before = snapshot(&*store, &cmd).await;
        assert_eq!(store.pay(&cmd).await.unwrap(), PayOutcome::KeyReused);
        assert_eq!(snapshot(&*store, &cmd).await, before);
        assert_eq!(store.session(cmd.session_id, cmd.now).await.unwrap(), None);
    }
    assert_eq!(
        store
            .find_pay(&user("alice"), &key("p1"), T0 + 1)
            .await
            .unwrap(),
        Some(first)
    );
}

pub async fn a_replayed_pay_returns_the_same_session_without_a_second_hold(store: Arc<dyn Store>) {
    online_machine(&*store, 1, T0).await;
    fund(&*store, "alice", 1000).await;
    let cmd = pay_cmd("alice", "p1", 1, 7, 300, T0);
    let first = created(&*store, &cmd).await;

    // The phone retries with a fresh advert and a fresh candidate session id.
    let mut retry = pay_cmd("alice", "p1", 1, 8, 300, T0 + 5);
    retry.session_id = session_id(0xbb);
    assert_eq!(
        store.pay(&retry).await.unwrap(),
        PayOutcome::Replayed(first.clone())
    );

    assert_eq!(store.session(retry.session_id, T0 + 5).await.unwrap(), None);
    assert_eq!(
        store.wallet(&cmd.user, T0 + 5).await.unwrap(),
        wallet(700, 300, 0)
    );
    assert_eq!(
        store.find_pay(&cmd.user, &key("p1"), T0 + 5).await.unwrap(),
        Some(first)
    );
    assert_eq!(
        store.find_pay(&cmd.user, &key("p2"), T0 + 5).await.unwrap(),
        None
    );
    assert_eq!(reconciled(&*store).await.held, 300);
}

// ---------------------------------------------------------------------------------------------
// The machine's side: poll, start, report
// ---------------------------------------------------------------------------------------------

pub async fn a_polling_machine_receives_its_authorized_sessions(store: Arc<dyn Store>) {
    online_machine(&*store, 1, T0).await;
    online_machine(&*store, 2, T0).await;
    fund(&*store, "alice", 1000).await;
    let s = created(&*store, &pay_cmd("alice", "p1", 1, 7, 300, T0)).await;

    assert_eq!(
        device_op(&*store, 1, 2, DeviceOp::Poll, T0 + 1).await,
        DeviceOpResult::Grants(vec![s.clone()])
    );
    assert_eq!(
        device_op(&*store, 2, 2, DeviceOp::Poll, T0 + 1).await,
        DeviceOpResult::Grants(vec![])
    );

    device_op(&*store, 1, 3, DeviceOp::Start { session: s.id }, T0 + 2).await;
    assert_eq!(
        device_op(&*store, 1, 4, DeviceOp::Poll, T0 + 3).await,
        DeviceOpResult::Grants(vec![])
    );
    reconciled(&*store).await;
}

pub async fn a_started_session_settles_at_the_cost_of_the_units(store: Arc<dyn Store>) {
    online_machine(&*store, 1, T0).await;
    fund(&*store, "alice", 1000).await;
    let s = created(&*store, &pay_cmd("alice", "p1", 1, 7, 300, T0)).await;

    let started =
        session_of(device_op(&*store, 1, 2, DeviceOp::Start { session: s.id }, T0 + 10).await);
    assert_eq!(
        (started.status, started.started_at),
        (SessionStatus::Active, Some(T0 + 10))
    );
    assert_eq!(
        store.session(s.id, T0 + 500).await.unwrap(),
        Some(started),
        "an active session never expires"
    );

    let progress = DeviceOp::Report {
        session: s.id,
        units: Units::new(4),
        last: false,
    };
    let progress = session_of(device_op(&*store, 1, 3, progress, T0 + 20).await);
    assert_eq!(
        (progress.status, progress.amount),
        (SessionStatus::Active, amount(4 * PRICE))
    );
    assert_eq!(
        store.wallet(&user("alice"), T0 + 20).await.unwrap(),
        wallet(700, 300, 0)
    );

    let last = DeviceOp::Report {
        session: s.id,
        units: Units::new(7),
        last: true,
    };
    let settled = session_of(device_op(&*store, 1, 4, last, T0 + 30).await);
    assert_eq!(settled.status, SessionStatus::Settled);
    assert_eq!(
        (settled.units, settled.amount, settled.ended_at),
        (Units::new(7), amount(175), Some(T0 + 30))
    );
    assert_eq!(store.session(s.id, T0 + 31).await.unwrap(), Some(settled));

    assert_eq!(
        store.wallet(&user("alice"), T0 + 31).await.unwrap(),
        wallet(825, 0, 175)
    );
    let status = store
        .device_status(device_id(1), T0 + 31)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        status.state(T0 + 31, OFFLINE_AFTER, AdvertSignals::default()),
        DeviceState::Idle
    );
    let audit = reconciled(&*store).await;
    assert_eq!(
        (audit.revenue, audit.spent, audit.held, audit.open_holds),
        (175, 175, 0, 0)
    );
}

pub async fn a_session_settles_at_the_hold_when_the_cost_exceeds_it(store: Arc<dyn Store>) {
    online_machine(&*store, 1, T0).await;
    fund(&*store, "alice", 1000).await;
    let s = created(&*store, &pay_cmd("alice", "p1", 1, 7, 300, T0)).await;
    device_op(&*store, 1, 2, DeviceOp::Start { session: s.id }, T0 + 10).await;

    let last = DeviceOp::Report {
        session: s.id,
        units: Units::new(u64::MAX),
        last: true,
    };
    let settled = session_of(device_op(&*store, 1, 3, last, T0 + 30).await);

    assert_eq!(
        (settled.units, settled.amount),
        (Units::new(u64::MAX), amount(300))
    );
    assert_eq!(store.session(s.id, T0 + 31).await.unwrap(), Some(settled));
    assert_eq!(
        store.wallet(&user("alice"), T0 + 31).await.unwrap(),
        wallet(700, 0, 300)
    );
    assert_eq!(reconciled(&*store).await.revenue, 300);
}

pub async fn repeating_the_final_report_is_already_settled_and_moves_no_money(
    store: Arc<dyn Store>,
) {
    online_machine(&*store, 1, T0).await;
    fund(&*store, "alice", 1000).await;
    let s = created(&*store, &pay_cmd("alice", "p1", 1, 7, 300, T0)).await;
    device_op(&*store, 1, 2, DeviceOp::Start { session: s.id }, T0 + 10).await;
    let last = DeviceOp::Report {
        session: s.id,
        units: Units::new(3),
        last: true,
    };
    let settled = session_of(device_op(&*store, 1, 3, last.clone(), T0 + 30).await);
    let audit = reconciled(&*store).await;

    // The machine lost the answer and sends the report again, in a new frame.
    assert_eq!(
        device_op(&*store, 1, 4, last, T0 + 40).await,
        DeviceOpResult::Session(settled)
    );

    assert_eq!(
        store.wallet(&user("alice"), T0 + 41).await.unwrap(),
        wallet(925, 0, 75)
    );
    assert_eq!(reconciled(&*store).await, audit);
}

pub async fn a_report_before_start_or_with_other_units_is_refused(store: Arc<dyn Store>) {
    online_machine(&*store, 1, T0).await;
    fund(&*store, "alice", 1000).await;
    let s = created(&*store, &pay_cmd("alice", "p1", 1, 7, 300, T0)).await;

    let early = DeviceOp::Report {
        session: s.id,
        units: Units::new(3),
        last: true,
    };
    assert_eq!(
        device_op(&*store, 1, 2, early, T0 + 1).await,
        DeviceOpResult::Refused(SessionError::NotStarted)
    );
    assert_eq!(store.session(s.id, T0 + 1).await.unwrap(), Some(s.clone()));

    device_op(&*store, 1, 3, DeviceOp::Start { session: s.id }, T0 + 2).await;
    device_op(
        &*store,
        1,
        4,
        DeviceOp::Report {
            session: s.id,
            units: Units::new(3),
            last: true,
        },
        T0 + 3,
    )
    .await;
    let audit = reconciled(&*store).await;
    let conflicting = DeviceOp::Report {
        session: s.id,
        units: Units::new(4),
        last: true,
    };
    assert_eq!(
        device_op(&*store, 1, 5, conflicting, T0 + 4).await,
        DeviceOpResult::Refused(SessionError::ReportConflict)
    );
    assert_eq!(reconciled(&*store).await, audit);
}

// ---------------------------------------------------------------------------------------------
// Expiry
// ---------------------------------------------------------------------------------------------

pub async fn a_session_read_after_its_deadline_is_expired_and_its_hold_released(
    store: Arc<dyn Store>,
) {
    online_machine(&*store, 1, T0).await;
    fund(&*store, "alice", 1000).await;
    let s = created(&*store, &pay_cmd("alice", "p1", 1, 7, 300, T0)).await;

    let just_before = store
        .session(s.id, T0 + START_TIMEOUT - 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(just_before.status, SessionStatus::Authorized);

    let expired = store
        .session(s.id, T0 + START_TIMEOUT)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(expired.status, SessionStatus::Expired);
    assert_eq!(
        (expired.amount, expired.ended_at),
        (Amount::ZERO, Some(T0 + START_TIMEOUT))
    );
    assert_eq!(
        store
            .wallet(&user("alice"), T0 + START_TIMEOUT)
            .await
            .unwrap(),
        wallet(1000, 0, 0)
    );
    let status = store
        .device_status(device_id(1), T0 + START_TIMEOUT)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.open_session, None);
    let audit = reconciled(&*store).await;
    assert_eq!((audit.held, audit.open_holds, audit.revenue), (0, 0, 0));

    // A wallet read alone expires too.
    created(&*store, &pay_cmd("alice", "p2", 1, 8, 200, T0 + 130)).await;
    assert_eq!(
        store.wallet(&user("alice"), T0 + 250).await.unwrap(),
        wallet(1000, 0, 0)
    );
    reconciled(&*store).await;
}

pub async fn expire_due_expires_every_overdue_session_and_releases_its_hold(store: Arc<dyn Store>) {
    online_machine(&*store, 1, T0).await;
    online_machine(&*store, 2, T0).await;
    online_machine(&*store, 3, T0).await;
    fund(&*store, "alice", 1000).await;
    fund(&*store, "bob", 1000).await;
    let a = created(&*store, &pay_cmd("alice", "p1", 1, 7, 300, T0)).await;
    let b = created(&*store, &pay_cmd("bob", "p1", 2, 7, 400, T0 + 10)).await;
    let c = created(&*store, &pay_cmd("bob", "p2", 3, 7, 100, T0)).await;
    device_op(&*store, 3, 2, DeviceOp::Start { session: c.id }, T0 + 1).await;

    assert_eq!(
        store.expire_due(T0 + START_TIMEOUT - 1).await.unwrap(),
        Vec::new()
    );
    let first = store.expire_due(T0 + START_TIMEOUT).await.unwrap();
    assert_eq!(ids(&first), vec![a.id]);
    let second = store.expire_due(T0 + START_TIMEOUT + 10).await.unwrap();
    assert_eq!(ids(&second), vec![b.id]);
    assert_eq!(store.expire_due(T0 + 1000).await.unwrap(), Vec::new());
    // Each is returned as saved: EXPIRED, nothing captured, its whole hold released.
    for (s, at) in [
        (&first[0], T0 + START_TIMEOUT),
        (&second[0], T0 + START_TIMEOUT + 10),
    ] {
        assert_eq!(
            (s.status, s.amount, s.ended_at),
            (SessionStatus::Expired, Amount::ZERO, Some(at))
        );
        assert_eq!(
            store.session(s.id, T0 + 1000).await.unwrap().as_ref(),
            Some(s)
        );
    }

    // Read the sessions at the time of payment: what expired stays expired.
    assert_eq!(
        store.session(a.id, T0).await.unwrap().unwrap().status,
        SessionStatus::Expired
    );
    assert_eq!(
        store.session(b.id, T0).await.unwrap().unwrap().status,
        SessionStatus::Expired
    );
    assert_eq!(
        store.session(c.id, T0).await.unwrap().unwrap().status,
        SessionStatus::Active
    );
    assert_eq!(
        store.wallet(&user("alice"), T0).await.unwrap(),
        wallet(1000, 0, 0)
    );
    assert_eq!(
        store.wallet(&user("bob"), T0).await.unwrap(),
        wallet(900, 100, 0)
    );
    let audit = reconciled(&*store).await;
    assert_eq!((audit.held, audit.open_holds), (100, 100));
}

pub async fn starting_a_session_after_its_deadline_is_refused_and_releases_the_hold(
    store: Arc<dyn Store>,
) {
    online_machine(&*store, 1, T0).await;
    fund(&*store, "alice", 1000).await;
    let s = created(&*store, &pay_cmd("alice", "p1", 1, 7, 300, T0)).await;

    let late = DeviceOp::Start { session: s.id };
    assert_eq!(
        device_op(&*store, 1, 2, late, T0 + START_TIMEOUT).await,
        DeviceOpResult::Refused(SessionError::Expired)
    );

    // Read at the pay time so that only the start could have expired it.
    assert_eq!(
        store.session(s.id, T0).await.unwrap().unwrap().status,
        SessionStatus::Expired
    );
    assert_eq!(
        store.wallet(&user("alice"), T0).await.unwrap(),
        wallet(1000, 0, 0)
    );
    reconciled(&*store).await;
}

// ---------------------------------------------------------------------------------------------
// Sequence numbers
// ---------------------------------------------------------------------------------------------

pub async fn a_retried_device_call_returns_the_saved_answer_without_running_again(
    store: Arc<dyn Store>,
) {
    online_machine(&*store, 1, T0).await;
    fund(&*store, "alice", 1000).await;
    let s = created(&*store, &pay_cmd("alice", "p1", 1, 7, 300, T0)).await;

    let encoded = Arc::new(AtomicUsize::new(0));
    let encode: ResponseEncoder = {
        let encoded = Arc::clone(&encoded);
        Arc::new(move |r: &DeviceOpResult| {
            encoded.fetch_add(1, Ordering::SeqCst);
            answer_of(r)
        })
    };
    let start = DeviceCall {
        device: device_id(1),
        key_version: KeyVersion::new(0).unwrap(),
        key_epoch: blepay_core::KeyEpoch::FIRST,
        key_update: None,
        seq: 2,
        digest: digest(2),
        op: DeviceOp::Start { session: s.id },
        now: T0 + 10,
        active_timeout_secs: ACTIVE_TIMEOUT,
    };
    let DeviceCallOutcome::Fresh(body) = store
        .device_call(&start, Arc::clone(&encode))
        .await
        .unwrap()
    else {
        panic!("the first call runs");
    };
    let audit = reconciled(&*store).await;

    let retry = DeviceCall {
        now: T0 + 250,
        ..start
    };
    assert_eq!(
        store.device_call(&retry, encode).await.unwrap(),
        DeviceCallOutcome::Retry(body)
    );

    assert_eq!(
        encoded.load(Ordering::SeqCst),
        1,
        "the retry did not run the operation again"
    );
    assert_eq!(reconciled(&*store).await, audit);
    let status = store
        .device_status(device_id(1), T0 + 250)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        status.last_seen,
        Some(T0 + 10),
        "a byte-identical retry is no sign of life"
    );
}

pub async fn an_older_sequence_number_is_replayed_and_changes_nothing(store: Arc<dyn Store>) {
    online_machine(&*store, 1, T0).await;
    device_op(&*store, 1, 5, DeviceOp::Poll, T0 + 1).await;

    for seq in [4, 1, 0] {
        let (outcome, ran) =
            device_call_with(&*store, 1, seq, digest(seq), DeviceOp::Poll, T0 + 100).await;
        assert_eq!(outcome, DeviceCallOutcome::Replayed { last_seq: 5 });
        assert_eq!(ran, None, "a replayed call is not run");
    }
    let status = store
        .device_status(device_id(1), T0 + 100)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        status.last_seen,
        Some(T0 + 1),
        "a replay does not count as a sign of life"
    );

    // And the next fresh one still works.
    device_op(&*store, 1, 6, DeviceOp::Poll, T0 + 101).await;
}

pub async fn the_same_sequence_number_with_other_bytes_is_replayed(store: Arc<dyn Store>) {
    online_machine(&*store, 1, T0).await;
    fund(&*store, "alice", 1000).await;
    let s = created(&*store, &pay_cmd("alice", "p1", 1, 7, 300, T0)).await;
    device_op(&*store, 1, 2, DeviceOp::Poll, T0 + 1).await;

    let mut other = digest(2);
    other[31] = 0xff;
    let (outcome, ran) = device_call_with(
        &*store,
        1,
        2,
        other,
        DeviceOp::Start { session: s.id },
        T0 + 2,
    )
    .await;

    assert_eq!(outcome, DeviceCallOutcome::Replayed { last_seq: 2 });
    assert_eq!(ran, None);
    assert_eq!(
        store.session(s.id, T0 + 2).await.unwrap().unwrap().status,
        SessionStatus::Authorized
    );
    reconciled(&*store).await;
}

pub async fn a_refusal_is_saved_with_its_code_and_a_retry_gets_both(store: Arc<dyn Store>) {
    online_machine(&*store, 1, T0).await;
    let nowhere = DeviceOp::Start {
        session: session_id(0xee),
    };

    let (first, ran) = device_call_with(&*store, 1, 2, digest(2), nowhere.clone(), T0 + 1).await;
    let (retry, ran_again) = device_call_with(&*store, 1, 2, digest(2), nowhere, T0 + 2).await;

    assert_eq!(ran, Some(DeviceOpResult::SessionNotFound));
    let expected = answer_of(&DeviceOpResult::SessionNotFound);
    assert_eq!(expected.code.as_deref(), Some("SESSION_NOT_FOUND"));
    assert_eq!(first, DeviceCallOutcome::Fresh(expected.clone()));
    assert_eq!(
        (retry, ran_again),
        (DeviceCallOutcome::Retry(expected), None)
    );
}

pub async fn a_call_from_an_unknown_device_is_refused(store: Arc<dyn Store>) {
    let (outcome, ran) = device_call_with(&*store, 9, 1, digest(1), DeviceOp::Poll, T0).await;
    assert_eq!((outcome, ran), (DeviceCallOutcome::DeviceUnknown, None));
    assert_eq!(store.device_status(device_id(9), T0).await.unwrap(), None);
}

pub async fn a_session_of_another_device_is_not_found(store: Arc<dyn Store>) {
    online_machine(&*store, 1, T0).await;
    online_machine(&*store, 2, T0).await;
    fund(&*store, "alice", 1000).await;
    let s = created(&*store, &pay_cmd("alice", "p1", 1, 7, 300, T0)).await;

    let start = DeviceOp::Start { session: s.id };
    assert_eq!(
        device_op(&*store, 2, 2, start, T0 + 1).await,
        DeviceOpResult::SessionNotFound
    );
    let report = DeviceOp::Report {
        session: s.id,
        units: Units::new(1),
        last: true,
    };
    assert_eq!(
        device_op(&*store, 2, 3, report, T0 + 2).await,
        DeviceOpResult::SessionNotFound
    );
    let nowhere = DeviceOp::Start {
        session: session_id(0xee),
    };
    assert_eq!(
        device_op(&*store, 1, 2, nowhere, T0 + 3).await,
        DeviceOpResult::SessionNotFound
    );

    assert_eq!(store.session(s.id, T0 + 3).await.unwrap(), Some(s));
    reconciled(&*store).await;
}

// ---------------------------------------------------------------------------------------------
// Races
// ---------------------------------------------------------------------------------------------

pub async fn concurrent_pays_for_one_machine_create_exactly_one_session(store: Arc<dyn Store>) {
    const PHONES: u16 = 20;
    online_machine(&*store, 1, T0).await;
    for i in 0..PHONES {
        fund(&*store, &format!("user{i}"), 1000).await;
    }

    let pays: Vec<_> = (0..PHONES)
        .map(|i| {
            let store = Arc::clone(&store);
            let cmd = pay_cmd(&format!("user{i}"), "race", 1, 100 + i, 300, T0);
            tokio::spawn(async move { store.pay(&cmd).await.unwrap() })
        })
        .collect();
    let mut outcomes = Vec::new();
    for pay in pays {
        outcomes.push(pay.await.unwrap());
    }

    let created = outcomes
        .iter()
        .filter(|o| matches!(o, PayOutcome::Created(_)))
        .count();
    let busy = outcomes
        .iter()
        .filter(|o| **o == PayOutcome::DeviceBusy)
        .count();
    assert_eq!(
        (created, busy),
        (1, usize::from(PHONES) - 1),
        "{outcomes:?}"
    );
    let audit = reconciled(&*store).await;
    assert_eq!((audit.held, audit.open_holds), (300, 300));
}

pub async fn concurrent_pays_with_one_key_create_one_session_and_one_hold(store: Arc<dyn Store>) {
    online_machine(&*store, 1, T0).await;
    fund(&*store, "alice", 1000).await;

    let pays: Vec<_> = (0..10u8)
        .map(|i| {
            let store = Arc::clone(&store);
            let mut cmd = pay_cmd("alice", "double-tap", 1, 7, 300, T0);
            cmd.session_id = session_id(0x10 + i);
            tokio::spawn(async move { store.pay(&cmd).await.unwrap() })
        })
        .collect();
    let mut sessions = Vec::new();
    let mut created = 0;
    for pay in pays {
        match pay.await.unwrap() {
            PayOutcome::Created(s) => {
                created += 1;
                sessions.push(s);
            }
            PayOutcome::Replayed(s) => sessions.push(s),
            other => panic!("expected created or replayed, got {other:?}"),
        }
    }

    assert_eq!(created, 1);
    assert!(
        sessions.windows(2).all(|w| w[0] == w[1]),
        "every answer is the same session"
    );
    assert_eq!(
        store.wallet(&user("alice"), T0).await.unwrap(),
        wallet(700, 300, 0)
    );
    assert_eq!(reconciled(&*store).await.held, 300);
}

// ---------------------------------------------------------------------------------------------
// Press, heartbeat, timeouts, late reports (issue 9)
// ---------------------------------------------------------------------------------------------

/// The session a press started (or found ACTIVE).
pub fn started_of(result: DeviceOpResult) -> Session {
    match result {
        DeviceOpResult::Started(s) => s,
        other => panic!("expected a started session, got {other:?}"),
    }
}

/// A heartbeat's telemetry.
pub fn telemetry(boots: u32) -> Telemetry {
    Telemetry {
        firmware_version: "1.4.2".into(),
        fault_codes: vec![3, 17],
        signal_quality: 18,
        uptime_secs: 86_400,
        boot_count: boots,
        outbox_depth: 2,
        lifetime_units: 12_345,
    }
}

/// Machine 1 online with alice's ACTIVE session (hold 300) pressed at `T0 + 10`.
async fn active_session(store: &dyn Store) -> Session {
    online_machine(store, 1, T0).await;
    fund(store, "alice", 1000).await;
    created(store, &pay_cmd("alice", "p1", 1, 7, 300, T0)).await;
    started_of(device_op(store, 1, 2, DeviceOp::Press, T0 + 10).await)
}

pub async fn a_press_starts_the_waiting_session_and_answers_its_terms(store: Arc<dyn Store>) {
    online_machine(&*store, 1, T0).await;
    fund(&*store, "alice", 1000).await;
    let paid = created(&*store, &pay_cmd("alice", "p1", 1, 7, 300, T0)).await;

    let started = started_of(device_op(&*store, 1, 2, DeviceOp::Press, T0 + 10).await);

    assert_eq!(started.id, paid.id);
    assert_eq!(started.status, SessionStatus::Active);
    assert_eq!(started.started_at, Some(T0 + 10));
    assert_eq!(
        (started.hold, started.tariff.clone(), started.use_counter),
        (paid.hold, paid.tariff.clone(), paid.use_counter)
    );
    assert_eq!(
        started.report_deadline(ACTIVE_TIMEOUT),
        Some(T0 + 10 + ACTIVE_TIMEOUT)
    );
    assert_eq!(
        store.session(paid.id, T0 + 11).await.unwrap(),
        Some(started.clone())
    );
    // The session settles by reports as a started one does.
    let report = DeviceOp::Report {
        session: paid.id,
        units: Units::new(3),
        last: true,
    };
    let settled = session_of(device_op(&*store, 1, 3, report, T0 + 20).await);
    assert_eq!(settled.amount, amount(75));
    assert_eq!(
        store.wallet(&user("alice"), T0 + 20).await.unwrap(),
        wallet(925, 0, 75)
    );
    reconciled(&*store).await;
}

pub async fn a_press_with_no_session_waiting_changes_nothing(store: Arc<dyn Store>) {
    online_machine(&*store, 1, T0).await;
    fund(&*store, "alice", 1000).await;
    let before = reconciled(&*store).await;

    let result = device_op(&*store, 1, 2, DeviceOp::Press, T0 + 10).await;

    assert_eq!(result, DeviceOpResult::NoSessionWaiting);
    assert_eq!(reconciled(&*store).await, before);
    let status = store
        .device_status(device_id(1), T0 + 10)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.open_session, None);
    assert_eq!(
        status.last_seen,
        Some(T0 + 10),
        "a fresh request is a sign of life"
    );
    // The answer was saved with the sequence number: a retry gets it.
    let (outcome, ran) = device_call_with(&*store, 1, 2, digest(2), DeviceOp::Press, T0 + 11).await;
    assert_eq!(outcome, DeviceCallOutcome::Retry(answer_of(&result)));
    assert_eq!(ran, None);
}

pub async fn a_press_after_the_start_deadline_expires_the_session_and_releases_the_hold(
    store: Arc<dyn Store>,
) {
    online_machine(&*store, 1, T0).await;
    fund(&*store, "alice", 1000).await;
    let paid = created(&*store, &pay_cmd("alice", "p1", 1, 7, 300, T0)).await;

    let result = device_op(&*store, 1, 2, DeviceOp::Press, T0 + START_TIMEOUT).await;

    assert_eq!(result, DeviceOpResult::Refused(SessionError::Expired));
    let s = store
        .session(paid.id, T0 + START_TIMEOUT)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.status, SessionStatus::Expired);
    assert_eq!(
        store
            .wallet(&user("alice"), T0 + START_TIMEOUT)
            .await
            .unwrap(),
        wallet(1000, 0, 0)
    );
    let status = store
        .device_status(device_id(1), T0 + START_TIMEOUT)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.open_session, None);
    reconciled(&*store).await;
}

pub async fn pressing_twice_starts_one_session(store: Arc<dyn Store>) {
    let first = active_session(&*store).await;

    // A press re-sent with a fresh number (after a reboot) answers the same session.
    let second = started_of(device_op(&*store, 1, 3, DeviceOp::Press, T0 + 12).await);

    assert_eq!(second.id, first.id);
    assert_eq!(second.started_at, Some(T0 + 10), "not started again");
    assert_eq!(
        store.wallet(&user("alice"), T0 + 12).await.unwrap(),
        wallet(700, 300, 0)
    );
    let audit = reconciled(&*store).await;
    assert_eq!(audit.open_holds, 300, "one session holds money");
}

pub async fn a_heartbeat_stores_the_telemetry_and_refreshes_last_seen(store: Arc<dyn Store>) {
    online_machine(&*store, 1, T0).await;
    let before = reconciled(&*store).await;

    let result = device_op(&*store, 1, 2, DeviceOp::Heartbeat(telemetry(4)), T0 + 900).await;
    assert_eq!(result, DeviceOpResult::Ack);
    let status = store
        .device_status(device_id(1), T0 + 900)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.telemetry, Some(telemetry(4)));
    assert_eq!(status.telemetry_at, Some(T0 + 900));
    assert_eq!(status.last_seen, Some(T0 + 900));

    // The latest heartbeat replaces the earlier one.
    let mut healthy = telemetry(5);
    healthy.fault_codes.clear();
    device_op(
        &*store,
        1,
        3,
        DeviceOp::Heartbeat(healthy.clone()),
        T0 + 1800,
    )
    .await;
    let status = store
        .device_status(device_id(1), T0 + 1800)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.telemetry, Some(healthy));
    assert_eq!(status.telemetry_at, Some(T0 + 1800));
    assert_eq!(reconciled(&*store).await, before);
}

pub async fn a_retried_heartbeat_does_not_refresh_last_seen(store: Arc<dyn Store>) {
    online_machine(&*store, 1, T0).await;
    device_op(&*store, 1, 2, DeviceOp::Heartbeat(telemetry(1)), T0 + 10).await;

    // The same frame again much later (an eavesdropper's replay): answered, not a sign of life.
    let (outcome, ran) = device_call_with(
        &*store,
        1,
        2,
        digest(2),
        DeviceOp::Heartbeat(telemetry(1)),
        T0 + 10 + 2 * OFFLINE_AFTER,
    )
    .await;
    assert!(
        matches!(outcome, DeviceCallOutcome::Retry(_)),
        "{outcome:?}"
    );
    assert_eq!(ran, None);
    let (outcome, _) = device_call_with(
        &*store,
        1,
        1,
        digest(1),
        DeviceOp::Poll,
        T0 + 10 + 2 * OFFLINE_AFTER,
    )
    .await;
    assert_eq!(outcome, DeviceCallOutcome::Replayed { last_seq: 2 });

    let now = T0 + 10 + 2 * OFFLINE_AFTER;
    let status = store
        .device_status(device_id(1), now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.last_seen, Some(T0 + 10));
    assert_eq!(status.telemetry_at, Some(T0 + 10));
    assert_eq!(
        status.state(now, OFFLINE_AFTER, AdvertSignals::default()),
        DeviceState::Offline
    );
    refused_without_change(
        &*store,
        &pay_cmd("alice", "p1", 1, 7, 300, now),
        PayOutcome::DeviceOffline,
    )
    .await;
}

pub async fn time_out_active_settles_silent_sessions_at_their_last_reported_units(
    store: Arc<dyn Store>,
) {
    let s = active_session(&*store).await;
    let progress = DeviceOp::Report {
        session: s.id,
        units: Units::new(2),
        last: false,
    };
    device_op(&*store, 1, 3, progress, T0 + 100).await;
    // Machine 2: started, never reported.
    online_machine(&*store, 2, T0).await;
    fund(&*store, "bob", 500).await;
    let other = created(&*store, &pay_cmd("bob", "q1", 2, 1, 200, T0)).await;
    device_op(&*store, 2, 2, DeviceOp::Press, T0 + 20).await;

    // The deadline counts from the last report: nothing is due just before it.
    assert_eq!(
        store
            .time_out_active(T0 + 20 + ACTIVE_TIMEOUT - 1, ACTIVE_TIMEOUT)
            .await
            .unwrap(),
        Vec::new()
    );
    let closed = store
        .time_out_active(T0 + 20 + ACTIVE_TIMEOUT, ACTIVE_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(ids(&closed), vec![other.id]);
    let bob = store
        .session(other.id, T0 + 20 + ACTIVE_TIMEOUT)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(closed[0], bob, "returned as saved");
    assert_eq!(
        (bob.status, bob.closed_by, bob.amount),
        (
            SessionStatus::Settled,
            Some(CloseReason::Timeout),
            Amount::ZERO
        )
    );
    assert_eq!(
        store
            .wallet(&user("bob"), T0 + 20 + ACTIVE_TIMEOUT)
            .await
            .unwrap(),
        wallet(500, 0, 0)
    );

    let at = T0 + 100 + ACTIVE_TIMEOUT;
    let closed = store.time_out_active(at, ACTIVE_TIMEOUT).await.unwrap();
    let alice = store.session(s.id, at).await.unwrap().unwrap();
    assert_eq!(closed, vec![alice.clone()], "returned as saved");
    assert_eq!(alice.status, SessionStatus::Settled);
    assert_eq!(alice.closed_by, Some(CloseReason::Timeout));
    assert_eq!((alice.units, alice.amount), (Units::new(2), amount(50)));
    assert_eq!(alice.ended_at, Some(at));
    assert_eq!(alice.last_report_at, Some(T0 + 100));
    assert_eq!(
        store.wallet(&user("alice"), at).await.unwrap(),
        wallet(950, 0, 50)
    );
    let status = store
        .device_status(device_id(1), at)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.open_session, None, "the machine is free again");
    assert_eq!(
        store.time_out_active(at + 1, ACTIVE_TIMEOUT).await.unwrap(),
        Vec::new()
    );
    reconciled(&*store).await;
}

pub async fn a_device_op_on_a_silent_active_session_times_it_out_first(store: Arc<dyn Store>) {
    let s = active_session(&*store).await;
    let at = T0 + 10 + ACTIVE_TIMEOUT;

    // The sweeper has not run: the press reads the overdue session and closes it first.
    let result = device_op(&*store, 1, 3, DeviceOp::Press, at).await;

    assert_eq!(result, DeviceOpResult::NoSessionWaiting);
    let closed = store.session(s.id, at).await.unwrap().unwrap();
    assert_eq!(
        (closed.status, closed.closed_by, closed.amount),
        (
            SessionStatus::Settled,
            Some(CloseReason::Timeout),
            Amount::ZERO
        )
    );
    assert_eq!(
        store.wallet(&user("alice"), at).await.unwrap(),
        wallet(1000, 0, 0)
    );
    assert_eq!(
        store.time_out_active(at, ACTIVE_TIMEOUT).await.unwrap(),
        Vec::new(),
        "the press closed it: the sweep does not see it"
    );
    // A progress report on it now is answered with the closed session, changing nothing.
    let before = reconciled(&*store).await;
    let progress = DeviceOp::Report {
        session: s.id,
        units: Units::new(1),
        last: false,
    };
    assert_eq!(
        session_of(device_op(&*store, 1, 4, progress, at + 5).await),
        closed
    );
    assert_eq!(reconciled(&*store).await, before);
}

pub async fn a_late_final_report_captures_what_it_owes_once(store: Arc<dyn Store>) {
    let s = active_session(&*store).await;
    let progress = DeviceOp::Report {
        session: s.id,
        units: Units::new(1),
        last: false,
    };
    device_op(&*store, 1, 3, progress, T0 + 20).await;
    let at = T0 + 20 + ACTIVE_TIMEOUT;
    assert_eq!(
        ids(&store.time_out_active(at, ACTIVE_TIMEOUT).await.unwrap()),
        vec![s.id]
    );
    assert_eq!(
        store.wallet(&user("alice"), at).await.unwrap(),
        wallet(975, 0, 25)
    );

    // Back from an outage, the machine's outbox drains its final report: 5 units (125).
    let last = |units| DeviceOp::Report {
        session: s.id,
        units: Units::new(units),
        last: true,
    };
    let late = session_of(device_op(&*store, 1, 4, last(5), at + 600).await);
    assert_eq!(late.status, SessionStatus::Settled);
    assert_eq!((late.units, late.amount), (Units::new(5), amount(125)));
    assert_eq!(
        late.late_report,
        Some(LateReport {
            units: Units::new(5),
            at: at + 600,
            charged: amount(100)
        })
    );
    assert_eq!(late.closed_by, Some(CloseReason::Timeout));
    assert_eq!(
        store.session(s.id, at + 600).await.unwrap(),
        Some(late.clone())
    );
    assert_eq!(
        store.wallet(&user("alice"), at + 600).await.unwrap(),
        wallet(875, 0, 125)
    );
    let audit = reconciled(&*store).await;
    assert_eq!(audit.revenue, 125);

    // The same report again (a fresh number: the outbox re-sent it) moves no money.
    assert_eq!(
        session_of(device_op(&*store, 1, 5, last(5), at + 700).await),
        late
    );
    // Other units are refused.
    assert_eq!(
        device_op(&*store, 1, 6, last(6), at + 800).await,
        DeviceOpResult::Refused(SessionError::ReportConflict)
    );
    assert_eq!(reconciled(&*store).await, audit);
    assert_eq!(store.session(s.id, at + 800).await.unwrap(), Some(late));
}

pub async fn a_late_final_report_charges_no_more_than_is_available(store: Arc<dyn Store>) {
    online_machine(&*store, 1, T0).await;
    fund(&*store, "alice", 300).await;
    let paid = created(&*store, &pay_cmd("alice", "p1", 1, 7, 300, T0)).await;
    device_op(&*store, 1, 2, DeviceOp::Press, T0 + 10).await;
    let progress = DeviceOp::Report {
        session: paid.id,
        units: Units::new(2),
        last: false,
    };
    device_op(&*store, 1, 3, progress, T0 + 20).await;
    let at = T0 + 20 + ACTIVE_TIMEOUT;
    store.time_out_active(at, ACTIVE_TIMEOUT).await.unwrap();
    // 50 captured, 250 released; alice spends 200 of it on another machine.
    online_machine(&*store, 2, at).await;
    created(&*store, &pay_cmd("alice", "p2", 2, 1, 200, at)).await;
    assert_eq!(
        store.wallet(&user("alice"), at).await.unwrap(),
        wallet(50, 200, 50)
    );

    // 10 units: the hold caps it at 300, 250 is owed, 50 is there.
    let last = DeviceOp::Report {
        session: paid.id,
        units: Units::new(10),
        last: true,
    };
    let late = session_of(device_op(&*store, 1, 4, last, at + 60).await);

    assert_eq!(late.amount, amount(100));
    assert_eq!(late.late_report.map(|l| l.charged), Some(amount(50)));
    assert_eq!(
        store.wallet(&user("alice"), at + 60).await.unwrap(),
        wallet(0, 200, 100)
    );
    let audit = reconciled(&*store).await;
    assert_eq!(audit.revenue, 100);
}

pub async fn a_pay_is_refused_offline_on_link_down_and_fault_on_the_fault_flag(
    store: Arc<dyn Store>,
) {
    online_machine(&*store, 1, T0).await;
    fund(&*store, "alice", 1000).await;

    let mut link_down = pay_cmd("alice", "p1", 1, 7, 300, T0 + 1);
    link_down.signals = AdvertSignals {
        link_down: true,
        fault: true,
    };
    refused_without_change(&*store, &link_down, PayOutcome::DeviceOffline).await;

    let mut fault = pay_cmd("alice", "p2", 1, 8, 300, T0 + 1);
    fault.signals = AdvertSignals {
        link_down: false,
        fault: true,
    };
    refused_without_change(&*store, &fault, PayOutcome::DeviceFault).await;

    let status = store
        .device_status(device_id(1), T0 + 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        status.state(T0 + 1, OFFLINE_AFTER, link_down.signals),
        DeviceState::Offline
    );
    assert_eq!(
        status.state(T0 + 1, OFFLINE_AFTER, fault.signals),
        DeviceState::Fault
    );
    // Without the flags the same machine takes the pay.
    created(&*store, &pay_cmd("alice", "p3", 1, 9, 300, T0 + 1)).await;
    reconciled(&*store).await;
}

// ---------------------------------------------------------------------------------------------
// Frames: key versions, undecodable operations, the end of the sequence space
// ---------------------------------------------------------------------------------------------

/// Everything a machine request could change, to compare before and after a refused one.
#[derive(Debug, PartialEq, Eq)]
struct MachineSnapshot {
    audit: Audit,
    wallet: Wallet,
    session: Option<Session>,
    last_seen: Option<u64>,
    open_session: Option<SessionId>,
}

async fn machine_snapshot(store: &dyn Store, n: u8, s: SessionId, now: u64) -> MachineSnapshot {
    let status = store
        .device_status(device_id(n), now)
        .await
        .unwrap()
        .unwrap();
    MachineSnapshot {
        audit: reconciled(store).await,
        wallet: store.wallet(&user("alice"), now).await.unwrap(),
        session: store.session(s, now).await.unwrap(),
        last_seen: status.last_seen,
        open_session: status.open_session,
    }
}

/// A machine registered at key version 3 (the keyring holds 0 to 3): a frame whose tag verified
/// under version 0's derived key — an old master key, the usual reason to rotate — is refused
/// like a forged one, runs nothing and saves nothing (not even its sequence number); the
/// machine's genuine report, with that same number, then settles.
pub async fn a_frame_under_a_retired_key_version_is_refused_and_changes_nothing(
    store: Arc<dyn Store>,
) {
    let (v0, v3) = (KeyVersion::new(0).unwrap(), KeyVersion::new(3).unwrap());
    let rekeyed = DeviceRecord {
        key_version: v3,
        ..dispenser(1)
    };
    assert_eq!(
        store.register_device(&rekeyed, T0).await.unwrap(),
        RegisterOutcome::Created
    );
    let poll = device_call_under(&*store, v3, 1, 1, digest(1), DeviceOp::Poll, T0).await;
    assert!(matches!(poll.0, DeviceCallOutcome::Fresh(_)), "{poll:?}");
    fund(&*store, "alice", 1000).await;
    let s = created(&*store, &pay_cmd("alice", "p1", 1, 7, 300, T0)).await;
    let start = DeviceOp::Start { session: s.id };
    let (started, _) = device_call_under(&*store, v3, 1, 2, digest(2), start, T0 + 10).await;
    assert!(
        matches!(started, DeviceCallOutcome::Fresh(_)),
        "{started:?}"
    );

    let last = DeviceOp::Report {
        session: s.id,
        units: Units::new(12),
        last: true,
    };
    let before = machine_snapshot(&*store, 1, s.id, T0 + 20).await;
    let mut forged = digest(3);
    forged[31] = 0x0f;
    let refused = device_call_under(&*store, v0, 1, 3, forged, last.clone(), T0 + 20).await;
    assert_eq!(refused, (DeviceCallOutcome::KeyVersionRefused, None));
    // Even a byte-identical copy of an accepted request is refused under the wrong version,
    // and a higher sequence number moves nothing.
    let poll_again = device_call_under(&*store, v0, 1, 1, digest(1), DeviceOp::Poll, T0 + 20).await;
    assert_eq!(poll_again, (DeviceCallOutcome::KeyVersionRefused, None));
    let ahead = device_call_under(&*store, v0, 1, 1000, digest(1000), DeviceOp::Poll, T0 + 20);
    assert_eq!(ahead.await, (DeviceCallOutcome::KeyVersionRefused, None));
    assert_eq!(machine_snapshot(&*store, 1, s.id, T0 + 20).await, before);

    // The machine's own report, numbered 3 as the refused one was, settles.
    let (genuine, ran) = device_call_under(&*store, v3, 1, 3, digest(3), last, T0 + 21).await;
    let ran = ran.expect("the genuine report ran");
    assert_eq!(genuine, DeviceCallOutcome::Fresh(answer_of(&ran)));
    let settled = session_of(ran);
    assert_eq!(
        (settled.status, settled.amount),
        (SessionStatus::Settled, amount(12 * PRICE))
    );
    assert_eq!(
        store.wallet(&user("alice"), T0 + 21).await.unwrap(),
        wallet(700, 0, 300)
    );
    reconciled(&*store).await;
}

/// An authenticated frame whose operation does not decode is answered FRAME_INVALID, and that
/// refusal is its stored answer (docs/protocol.md §3.3): a byte-identical retry gets it again
/// without running anything, and a lower sequence number afterwards is replayed.
pub async fn an_operation_that_did_not_decode_is_saved_and_advances_the_sequence_number(
    store: Arc<dyn Store>,
) {
    online_machine(&*store, 1, T0).await;
    fund(&*store, "alice", 1000).await;
    let s = created(&*store, &pay_cmd("alice", "p1", 1, 7, 300, T0)).await;
    let invalid = DeviceOp::Invalid("session id is not 16 bytes".into());

    let (first, ran) = device_call_with(&*store, 1, 5, digest(5), invalid.clone(), T0 + 1).await;
    let refusal = DeviceOpResult::FrameInvalid("session id is not 16 bytes".into());
    assert_eq!(ran, Some(refusal.clone()));
    let expected = answer_of(&refusal);
    assert_eq!(expected.code.as_deref(), Some("FRAME_INVALID"));
    assert_eq!(first, DeviceCallOutcome::Fresh(expected.clone()));
    let before = machine_snapshot(&*store, 1, s.id, T0 + 2).await;
    assert_eq!(
        before.last_seen,
        Some(T0 + 1),
        "a fresh number is a sign of life"
    );

    let retry = device_call_with(&*store, 1, 5, digest(5), invalid, T0 + 2).await;
    assert_eq!(retry, (DeviceCallOutcome::Retry(expected), None));
    let start = DeviceOp::Start { session: s.id };
    let lower = device_call_with(&*store, 1, 4, digest(4), start.clone(), T0 + 2).await;
    assert_eq!(lower, (DeviceCallOutcome::Replayed { last_seq: 5 }, None));
    assert_eq!(machine_snapshot(&*store, 1, s.id, T0 + 2).await, before);

    // The next number runs.
    let started = session_of(device_op(&*store, 1, 6, start, T0 + 3).await);
    assert_eq!(started.status, SessionStatus::Active);
    reconciled(&*store).await;
}

/// `u32::MAX` is answered once, and a byte-identical retry answered again; nothing can follow it:
/// the device is exhausted (docs/protocol.md §3.3) until it is re-provisioned.
pub async fn the_last_sequence_number_is_answered_once_and_nothing_follows_it(
    store: Arc<dyn Store>,
) {
    online_machine(&*store, 1, T0).await;
    let result = device_op(&*store, 1, u32::MAX, DeviceOp::Poll, T0 + 1).await;
    let retry = device_call_with(
        &*store,
        1,
        u32::MAX,
        digest(u32::MAX),
        DeviceOp::Poll,
        T0 + 2,
    );
    assert_eq!(
        retry.await,
        (DeviceCallOutcome::Retry(answer_of(&result)), None)
    );
    let mut other = digest(u32::MAX);
    other[31] = 1;
    for (seq, d) in [(u32::MAX, other), (1, digest(1)), (u32::MAX - 1, digest(7))] {
        let (outcome, ran) = device_call_with(&*store, 1, seq, d, DeviceOp::Poll, T0 + 3).await;
        assert_eq!(
            (outcome, ran),
            (DeviceCallOutcome::Replayed { last_seq: u32::MAX }, None)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Limits (issue 10: M4, L2, L5)
// ---------------------------------------------------------------------------------------------

/// `cmd` with `limits`.
fn limited(mut cmd: PayCommand, limits: PayLimits) -> PayCommand {
    cmd.limits = limits;
    cmd
}

/// With the default cap of one, a user holding a machine that waits for its button cannot pay
/// for another; a retry of the pay that went through is still answered; once the first session
/// started (or expired), the next pay goes through.
pub async fn a_pay_beyond_the_unstarted_cap_is_refused_and_changes_nothing(store: Arc<dyn Store>) {
    for n in 1..=4 {
        online_machine(&*store, n, T0).await;
    }
    fund(&*store, "alice", 1000).await;
    let first_cmd = limited(pay_cmd("alice", "p1", 1, 7, 300, T0), PayLimits::DEFAULT);
    let first = created(&*store, &first_cmd).await;

    let second = limited(
        pay_cmd("alice", "p2", 2, 7, 300, T0 + 1),
        PayLimits::DEFAULT,
    );
    refused_without_change(&*store, &second, PayOutcome::TooManyUnstarted { max: 1 }).await;
    // The limit is the caller's: with room for two, the same pay goes through (and a third
    // is refused).
    let two = PayLimits {
        max_unstarted_per_user: 2,
        ..PayLimits::DEFAULT
    };
    let third = limited(pay_cmd("alice", "p3", 3, 7, 300, T0 + 1), two);
    assert_eq!(
        store.pay(&limited(first_cmd.clone(), two)).await.unwrap(),
        PayOutcome::Replayed(first.clone()),
        "a retry is answered at the cap"
    );
    let mut second_of_two = limited(second.clone(), two);
    second_of_two.key = key("p2b");
    created(&*store, &second_of_two).await;
    refused_without_change(&*store, &third, PayOutcome::TooManyUnstarted { max: 2 }).await;
    assert_eq!(
        store.pay(&first_cmd).await.unwrap(),
        PayOutcome::Replayed(first.clone()),
        "a retry is answered above the cap"
    );

    // Machine 1 starts: alice holds one unstarted session again (machine 2's).
    started_of(device_op(&*store, 1, 2, DeviceOp::Press, T0 + 5).await);
    let third = limited(pay_cmd("alice", "p3", 3, 7, 300, T0 + 6), two);
    created(&*store, &third).await;
    refused_without_change(
        &*store,
        &limited(pay_cmd("alice", "p4", 4, 7, 300, T0 + 6), two),
        PayOutcome::TooManyUnstarted { max: 2 },
    )
    .await;
    // Expired sessions do not count: after the start deadline both waiting ones are gone.
    let late = T0 + 6 + START_TIMEOUT + 1;
    device_op(&*store, 2, 2, DeviceOp::Poll, late).await;
    let after = limited(pay_cmd("alice", "p5", 2, 8, 100, late), PayLimits::DEFAULT);
    created(&*store, &after).await;
    reconciled(&*store).await;
}

/// At most `rate_max` sessions per user per fixed window; the refusal says when the next window
/// begins, and then pays go through again.
pub async fn a_pay_beyond_the_rate_is_refused_until_the_next_window(store: Arc<dyn Store>) {
    let limits = PayLimits {
        max_unstarted_per_user: 16,
        rate_max: 2,
        rate_window_secs: 60,
    };
    for n in 1..=4 {
        online_machine(&*store, n, T0).await;
    }
    fund(&*store, "alice", 1000).await;
    fund(&*store, "bob", 1000).await;
    // T0 is a whole minute.
    assert_eq!(limits.window_start(T0), T0);
    let first = limited(pay_cmd("alice", "p1", 1, 7, 100, T0), limits);
    let s1 = created(&*store, &first).await;
    created(
        &*store,
        &limited(pay_cmd("alice", "p2", 2, 7, 100, T0 + 1), limits),
    )
    .await;
    let third = limited(pay_cmd("alice", "p3", 3, 7, 100, T0 + 20), limits);
    refused_without_change(
        &*store,
        &third,
        PayOutcome::RateLimited {
            retry_after_secs: 40,
        },
    )
    .await;
    // A retry is answered; other users have their own count.
    assert_eq!(store.pay(&first).await.unwrap(), PayOutcome::Replayed(s1));
    created(
        &*store,
        &limited(pay_cmd("bob", "b1", 4, 7, 100, T0 + 20), limits),
    )
    .await;
    // Refused pays did not count, and the next window starts afresh.
    let next = limited(pay_cmd("alice", "p3", 3, 8, 100, T0 + 60), limits);
    created(&*store, &next).await;
    reconciled(&*store).await;
}

/// The cap holds under a race: concurrent pays by one user on different idle machines open one
/// session, the rest are refused and change nothing.
pub async fn concurrent_pays_by_one_user_on_several_machines_open_one_session(
    store: Arc<dyn Store>,
) {
    const MACHINES: u8 = 6;
    for n in 1..=MACHINES {
        online_machine(&*store, n, T0).await;
    }
    fund(&*store, "alice", 10_000).await;
    let pays: Vec<_> = (1..=MACHINES)
        .map(|n| {
            let store = Arc::clone(&store);
            let cmd = limited(
                pay_cmd("alice", &format!("race-{n}"), n, 7, 300, T0),
                PayLimits::DEFAULT,
            );
            tokio::spawn(async move { store.pay(&cmd).await.unwrap() })
        })
        .collect();
    let mut outcomes = Vec::new();
    for pay in pays {
        outcomes.push(pay.await.unwrap());
    }
    let created = outcomes
        .iter()
        .filter(|o| matches!(o, PayOutcome::Created(_)))
        .count();
    let refused = outcomes
        .iter()
        .filter(|o| **o == PayOutcome::TooManyUnstarted { max: 1 })
        .count();
    assert_eq!(
        (created, refused),
        (1, usize::from(MACHINES) - 1),
        "{outcomes:?}"
    );
    assert_eq!(
        store.wallet(&user("alice"), T0).await.unwrap(),
        wallet(9_700, 300, 0)
    );
    let audit = reconciled(&*store).await;
    assert_eq!((audit.held, audit.open_holds), (300, 300));
}

/// The rate holds under a race too.
pub async fn concurrent_pays_beyond_the_rate_open_exactly_the_rate(store: Arc<dyn Store>) {
    const MACHINES: u8 = 6;
    let limits = PayLimits {
        max_unstarted_per_user: 16,
        rate_max: 2,
        rate_window_secs: 3600,
    };
    for n in 1..=MACHINES {
        online_machine(&*store, n, T0).await;
    }
    fund(&*store, "alice", 10_000).await;
    let pays: Vec<_> = (1..=MACHINES)
        .map(|n| {
            let store = Arc::clone(&store);
            let cmd = limited(
                pay_cmd("alice", &format!("race-{n}"), n, 7, 300, T0),
                limits,
            );
            tokio::spawn(async move { store.pay(&cmd).await.unwrap() })
        })
        .collect();
    let mut outcomes = Vec::new();
    for pay in pays {
        outcomes.push(pay.await.unwrap());
    }
    let created = outcomes
        .iter()
        .filter(|o| matches!(o, PayOutcome::Created(_)))
        .count();
    let refused = outcomes
        .iter()
        .filter(|o| matches!(o, PayOutcome::RateLimited { .. }))
        .count();
    assert_eq!(
        (created, refused),
        (2, usize::from(MACHINES) - 2),
        "{outcomes:?}"
    );
    assert_eq!(reconciled(&*store).await.held, 600);
}

/// A wallet's lifetime total (all it was ever credited) stays within `Amount::MAX`, so `spent`
/// can never pass it: a top-up that would take it past is refused, also after the money was
/// spent (issue 10, L2: SQLite then failed the final report forever, DynamoDB wrote a wallet it
/// could not read back).
pub async fn a_top_up_past_the_lifetime_maximum_is_refused_after_the_money_was_spent(
    store: Arc<dyn Store>,
) {
    let alice = user("alice");
    online_machine(&*store, 1, T0).await;
    assert!(matches!(
        store
            .top_up(&alice, Amount::MAX, &key("t1"), "ops-test", T0)
            .await
            .unwrap(),
        TopUpOutcome::Credited(_)
    ));
    let s = created(
        &*store,
        &pay_cmd("alice", "p1", 1, 7, Amount::MAX.minor(), T0),
    )
    .await;
    started_of(device_op(&*store, 1, 2, DeviceOp::Press, T0 + 1).await);
    let all = Units::new(u64::try_from(Amount::MAX.minor() / PRICE).unwrap());
    let last = DeviceOp::Report {
        session: s.id,
        units: all,
        last: true,
    };
    let settled = session_of(device_op(&*store, 1, 3, last, T0 + 2).await);
    assert_eq!(
        (settled.status, settled.amount),
        (SessionStatus::Settled, Amount::MAX)
    );
    let spent = wallet(0, 0, Amount::MAX.minor());
    assert_eq!(store.wallet(&alice, T0 + 3).await.unwrap(), spent);

    for (k, minor) in [("t2", 1), ("t3", Amount::MAX.minor())] {
        assert_eq!(
            store
                .top_up(&alice, amount(minor), &key(k), "ops-test", T0 + 3)
                .await
                .unwrap(),
            TopUpOutcome::LimitExceeded
        );
    }
    assert_eq!(store.wallet(&alice, T0 + 3).await.unwrap(), spent);
    let audit = reconciled(&*store).await;
    assert_eq!(
        (audit.top_ups, audit.spent),
        (Amount::MAX.minor(), Amount::MAX.minor())
    );
    // Other wallets are not affected.
    fund(&*store, "bob", 100).await;
}

/// Idempotency keys are kept as long as what they protect: a top-up retried, or a pay key reused,
/// eight days later is answered as the retry it is (issue 10, L5: DynamoDB's key records expired
/// after seven days while the top-up's ledger row did not).
pub async fn keys_reused_after_a_week_are_still_answered_as_retries(store: Arc<dyn Store>) {
    const LATER: u64 = T0 + 8 * 24 * 3600;
    let alice = user("alice");
    online_machine(&*store, 1, T0).await;
    let TopUpOutcome::Credited(_) = store
        .top_up(&alice, amount(1000), &key("t1"), "ops-test", T0)
        .await
        .unwrap()
    else {
        panic!("credited");
    };
    let paid = created(&*store, &pay_cmd("alice", "p1", 1, 7, 300, T0)).await;

    device_op(&*store, 1, 2, DeviceOp::Poll, LATER).await;
    let TopUpOutcome::Replayed(w) = store
        .top_up(&alice, amount(1000), &key("t1"), "ops-test", LATER)
        .await
        .unwrap()
    else {
        panic!("a top-up retried after a week is replayed");
    };
    assert_eq!(
        w,
        wallet(1000, 0, 0),
        "the session expired, nothing was credited twice"
    );
    assert_eq!(
        store
            .top_up(&alice, amount(999), &key("t1"), "ops-test", LATER)
            .await
            .unwrap(),
        TopUpOutcome::KeyReused
    );
    let again = pay_cmd("alice", "p1", 1, 8, 300, LATER);
    let PayOutcome::Replayed(s) = store.pay(&again).await.unwrap() else {
        panic!("a pay key reused after a week is a retry");
    };
    assert_eq!((s.id, s.status), (paid.id, SessionStatus::Expired));
    assert_eq!(
        store
            .pay(&pay_cmd("alice", "p1", 1, 9, 200, LATER))
            .await
            .unwrap(),
        PayOutcome::KeyReused
    );
    let audit = reconciled(&*store).await;
    assert_eq!((audit.top_ups, audit.held), (1000, 0));
}

// ---------------------------------------------------------------------------------------------
// Operators and the audit trail (issue 11, item 8)
// ---------------------------------------------------------------------------------------------

fn operator_record(n: u8, name: &str, role: &str, at: u64) -> crate::OperatorRecord {
    crate::OperatorRecord {
        id: crate::OperatorId::from_bytes([0x0a, 0, 0, 0, 0, 0, 0, n]),
        name: crate::OperatorName::parse(name).unwrap(),
        role: role.into(),
        token_hash: [n; 32],
        created_at: at,
        created_by: "ops-token".into(),
        revoked_at: None,
    }
}

fn new_operator(n: u8, name: &str, role: &str, key: &str) -> crate::NewOperator {
    crate::NewOperator {
        record: operator_record(n, name, role, T0 + u64::from(n)),
        key: IdempotencyKey::parse(key).unwrap(),
    }
}

pub async fn an_operator_is_created_once_per_key_and_a_reused_key_changes_nothing(
    store: Arc<dyn Store>,
) {
    use crate::CreateOperatorOutcome as C;
    let first = new_operator(1, "Ann (support)", "support", "op-k1");
    assert_eq!(
        store.create_operator(&first).await.unwrap(),
        C::Created(first.record.clone())
    );
    // The same key and request, with another id and secret drawn: the first operator.
    let retry = crate::NewOperator {
        record: crate::OperatorRecord {
            id: crate::OperatorId::from_bytes([0x0b; 8]),
            token_hash: [0xee; 32],
            ..first.record.clone()
        },
        ..first.clone()
    };
    assert_eq!(
        store.create_operator(&retry).await.unwrap(),
        C::Replayed(first.record.clone())
    );
    // The same key with another role: refused, nothing created.
    let reused = new_operator(2, "Ann (support)", "owner", "op-k1");
    assert_eq!(store.create_operator(&reused).await.unwrap(), C::KeyReused);
    assert_eq!(store.operators().await.unwrap(), vec![first.record.clone()]);
    assert_eq!(store.operator(&reused.record.id).await.unwrap(), None);
    // Another creator's key space is its own.
    let mut other = new_operator(3, "Bob", "finance", "op-k1");
    other.record.created_by = "op:0a00000000000001".into();
    assert!(matches!(
        store.create_operator(&other).await.unwrap(),
        C::Created(_)
    ));
    assert_eq!(
        store.operator(&first.record.id).await.unwrap(),
        Some(first.record.clone())
    );
    assert_eq!(
        store.operators().await.unwrap(),
        vec![first.record, other.record]
    );
}

pub async fn revoking_an_operator_stamps_it_once_and_an_unknown_one_is_not_found(
    store: Arc<dyn Store>,
) {
    use crate::RevokeOperatorOutcome as R;
    let op = new_operator(1, "Tom", "technician", "op-k1");
    store.create_operator(&op).await.unwrap();
    let revoked = crate::OperatorRecord {
        revoked_at: Some(T0 + 50),
        ..op.record.clone()
    };
    assert_eq!(
        store.revoke_operator(&op.record.id, T0 + 50).await.unwrap(),
        R::Revoked(revoked.clone())
    );
    assert_eq!(
        store.revoke_operator(&op.record.id, T0 + 90).await.unwrap(),
        R::AlreadyRevoked(revoked.clone())
    );
    assert_eq!(
        store.operator(&op.record.id).await.unwrap(),
        Some(revoked.clone())
    );
    let unknown = crate::OperatorId::from_bytes([0xff; 8]);
    assert_eq!(
        store.revoke_operator(&unknown, T0 + 90).await.unwrap(),
        R::NotFound
    );
    assert_eq!(store.operators().await.unwrap(), vec![revoked]);
}

fn audit_event(id: &str, at: u64, principal: &str, action: &str) -> crate::AuditEvent {
    crate::AuditEvent {
        id: id.into(),
        key: format!("key-of-{id}"),
        at,
        principal: principal.into(),
        role: "owner".into(),
        action: action.into(),
        target: "alice".into(),
        amount: Some(Amount::new(500).unwrap()),
        idempotency_key: Some(format!("key-{id}")),
    }
}

pub async fn audit_events_are_recorded_once_per_key_and_listed_newest_first_page_by_page(
    store: Arc<dyn Store>,
) {
    use crate::{AuditFilter, PageRequest};
    let events = [
        audit_event("e1", T0, "ops-token", "wallet.top_up"),
        audit_event("e2", T0 + 10, "op:0a00000000000001", "device.register"),
        audit_event("e3", T0 + 10, "ops-token", "wallet.top_up"),
        audit_event("e4", T0 + 20, "op:0a00000000000001", "wallet.top_up"),
        crate::AuditEvent {
            amount: None,
            idempotency_key: None,
            ..audit_event("e5", T0 + 30, "ops-token", "operator.create")
        },
    ];
    for e in &events {
        assert!(store.record_audit_event(e).await.unwrap(), "{}", e.id);
    }
    // A retry of e3 (same key; another id and time): nothing added, the first kept.
    let retry = crate::AuditEvent {
        id: "e9".into(),
        at: T0 + 99,
        ..events[2].clone()
    };
    assert!(!store.record_audit_event(&retry).await.unwrap());

    let mut newest_first: Vec<_> = events.to_vec();
    newest_first.reverse();
    let all = |f: AuditFilter| {
        let store = Arc::clone(&store);
        async move {
            let mut out = Vec::new();
            let mut page = PageRequest {
                limit: 2,
                after: None,
            };
            loop {
                let p = store.audit_events(&f, &page).await.unwrap();
                assert!(p.items.len() <= 2);
                out.extend(p.items);
                match p.next {
                    Some(next) => page.after = Some(next),
                    None => break,
                }
            }
            out
        }
    };
    assert_eq!(all(AuditFilter::default()).await, newest_first);
    assert_eq!(
        all(AuditFilter {
            principal: Some("ops-token".into()),
            action: None,
        })
        .await,
        vec![events[4].clone(), events[2].clone(), events[0].clone()]
    );
    assert_eq!(
        all(AuditFilter {
            principal: Some("op:0a00000000000001".into()),
            action: Some("wallet.top_up".into()),
        })
        .await,
        vec![events[3].clone()]
    );
    let one = store
        .audit_events(
            &AuditFilter::default(),
            &PageRequest {
                limit: 500,
                after: None,
            },
        )
        .await
        .unwrap();
    assert_eq!((one.items.len(), one.next), (5, None));
}

pub async fn concurrent_creates_with_one_key_create_one_operator(store: Arc<dyn Store>) {
    let tasks: Vec<_> = (1..=6u8)
        .map(|n| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                store
                    .create_operator(&new_operator(n, "Fay", "finance", "same-key"))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut created = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            crate::CreateOperatorOutcome::Created(r) => created.push(r),
            crate::CreateOperatorOutcome::Replayed(_) => {}
            crate::CreateOperatorOutcome::KeyReused => panic!("same request"),
        }
    }
    assert_eq!(created.len(), 1);
    assert_eq!(store.operators().await.unwrap(), created);
}

// ---------------------------------------------------------------------------------------------
// The operator console: sign-in sessions and the telemetry history
// ---------------------------------------------------------------------------------------------

/// A console session of `operator` signed in at `at` for `ttl` seconds; its id hash is `[n; 32]`.
pub fn console_session(n: u8, operator: &str, at: u64, ttl: u64) -> crate::ConsoleSession {
    crate::ConsoleSession {
        id_hash: [n; 32],
        operator: operator.into(),
        role: "owner".into(),
        created_at: at,
        expires_at: at + ttl,
        ended_at: None,
    }
}

pub async fn a_console_session_is_saved_once_read_back_and_ended_once(store: Arc<dyn Store>) {
    let ann = console_session(1, "op:0a00000000000001", T0, 3600);
    let bob = crate::ConsoleSession {
        role: "support".into(),
        ..console_session(2, "op:0a00000000000002", T0 + 5, 600)
    };
    assert!(store.create_console_session(&ann).await.unwrap());
    assert!(store.create_console_session(&bob).await.unwrap());
    let read = store.console_session(&ann.id_hash).await.unwrap();
    assert_eq!(read.as_ref(), Some(&ann));
    assert!(read.unwrap().is_live(T0 + 10));

    // The same hash again is refused and changes nothing.
    let clash = console_session(1, "bootstrap", T0 + 20, 60);
    assert!(!store.create_console_session(&clash).await.unwrap());
    assert_eq!(
        store.console_session(&ann.id_hash).await.unwrap(),
        Some(ann.clone())
    );

    // Sign-out ends it once, and only it.
    assert!(
        store
            .end_console_session(&ann.id_hash, T0 + 30)
            .await
            .unwrap()
    );
    let ended = store.console_session(&ann.id_hash).await.unwrap().unwrap();
    assert_eq!(
        ended,
        crate::ConsoleSession {
            ended_at: Some(T0 + 30),
            ..ann.clone()
        }
    );
    assert!(!ended.is_live(T0 + 31), "signed out before it expired");
    assert!(
        !store
            .end_console_session(&ann.id_hash, T0 + 40)
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .console_session(&ann.id_hash)
            .await
            .unwrap()
            .unwrap()
            .ended_at,
        Some(T0 + 30),
        "a second sign-out does not move the first"
    );
    assert_eq!(
        store.console_session(&bob.id_hash).await.unwrap(),
        Some(bob)
    );

    // An unknown hash is nothing.
    assert_eq!(store.console_session(&[9; 32]).await.unwrap(), None);
    assert!(!store.end_console_session(&[9; 32], T0 + 50).await.unwrap());
    assert_eq!(store.console_session(&[9; 32]).await.unwrap(), None);
    reconciled(&*store).await;
}

pub async fn an_expired_console_session_reads_back_not_live_and_can_still_be_ended(
    store: Arc<dyn Store>,
) {
    let s = console_session(3, "bootstrap", T0, 100);
    assert!(store.create_console_session(&s).await.unwrap());
    let read = store.console_session(&s.id_hash).await.unwrap().unwrap();
    assert!(read.is_live(T0 + 99));
    assert!(
        !read.is_live(T0 + 100),
        "expires_at is the first second it is not live"
    );

    // Read after its expiry: still there (the caller decides), not live.
    let later = store.console_session(&s.id_hash).await.unwrap().unwrap();
    assert_eq!((later.ended_at, later.is_live(T0 + 500)), (None, false));
    // Signing out of an expired (not ended) session stamps it.
    assert!(
        store
            .end_console_session(&s.id_hash, T0 + 500)
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .console_session(&s.id_hash)
            .await
            .unwrap()
            .unwrap()
            .ended_at,
        Some(T0 + 500)
    );

    // A new sign-in a while later leaves a recent record alone.
    let next = console_session(4, "bootstrap", T0 + 600, 100);
    assert!(store.create_console_session(&next).await.unwrap());
    assert!(store.console_session(&s.id_hash).await.unwrap().is_some());
}

pub async fn concurrent_ends_of_one_console_session_end_it_once(store: Arc<dyn Store>) {
    let s = console_session(5, "op:0a00000000000005", T0, 3600);
    assert!(store.create_console_session(&s).await.unwrap());
    let tasks: Vec<_> = (0..6u64)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.end_console_session(&[5; 32], T0 + 10 + i).await })
        })
        .collect();
    let mut ended = 0;
    for t in tasks {
        if t.await.unwrap().unwrap() {
            ended += 1;
        }
    }
    assert_eq!(ended, 1);
    let read = store.console_session(&s.id_hash).await.unwrap().unwrap();
    assert!(
        read.ended_at
            .is_some_and(|at| (T0 + 10..T0 + 16).contains(&at))
    );
}

/// Machine `n` online at [`T0`] (seq 1), then a heartbeat `telemetry(k)` with seq `k + 1` at
/// `T0 + 1800 k` for each `k` in `beats`.
async fn heartbeats(store: &dyn Store, n: u8, beats: std::ops::RangeInclusive<u32>) {
    online_machine(store, n, T0).await;
    for k in beats {
        let at = T0 + 1800 * u64::from(k);
        let result = device_op(store, n, k + 1, DeviceOp::Heartbeat(telemetry(k)), at).await;
        assert_eq!(result, DeviceOpResult::Ack);
    }
}

fn sample(k: u32) -> crate::TelemetrySample {
    crate::TelemetrySample {
        at: T0 + 1800 * u64::from(k),
        telemetry: telemetry(k),
    }
}

pub async fn each_fresh_heartbeat_keeps_a_telemetry_sample_oldest_first(store: Arc<dyn Store>) {
    heartbeats(&*store, 1, 1..=4).await;
    heartbeats(&*store, 2, 1..=1).await;
    let all = |store: Arc<dyn Store>, n: u8| async move {
        store
            .telemetry_history(device_id(n), 0, u64::MAX, 100)
            .await
            .unwrap()
    };
    let expected: Vec<_> = (1..=4).map(sample).collect();
    assert_eq!(all(Arc::clone(&store), 1).await, expected);
    assert_eq!(
        all(Arc::clone(&store), 2).await,
        vec![sample(1)],
        "per machine"
    );
    assert_eq!(
        all(Arc::clone(&store), 3).await,
        vec![],
        "an unknown machine has none"
    );

    // The device's latest telemetry is the newest sample.
    let status = store
        .device_status(device_id(1), T0 + 7200)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (status.telemetry, status.telemetry_at),
        (Some(telemetry(4)), Some(T0 + 7200))
    );

    // A retried heartbeat (the saved answer) and a poll add no sample.
    let (outcome, ran) = device_call_with(
        &*store,
        1,
        5,
        digest(5),
        DeviceOp::Heartbeat(telemetry(4)),
        T0 + 7300,
    )
    .await;
    assert!(
        matches!(outcome, DeviceCallOutcome::Retry(_)),
        "{outcome:?}"
    );
    assert_eq!(ran, None);
    device_op(&*store, 1, 6, DeviceOp::Poll, T0 + 7400).await;
    assert_eq!(all(Arc::clone(&store), 1).await, expected);

    // Two heartbeats in one second are both kept, in the order received.
    let mut first = telemetry(7);
    first.fault_codes.clear();
    device_op(&*store, 1, 7, DeviceOp::Heartbeat(first.clone()), T0 + 9000).await;
    device_op(&*store, 1, 8, DeviceOp::Heartbeat(telemetry(8)), T0 + 9000).await;
    let got = all(Arc::clone(&store), 1).await;
    assert_eq!(
        got[4..],
        [
            crate::TelemetrySample {
                at: T0 + 9000,
                telemetry: first,
            },
            crate::TelemetrySample {
                at: T0 + 9000,
                telemetry: telemetry(8),
            },
        ]
    );
    reconciled(&*store).await;
}

pub async fn the_telemetry_history_holds_its_range_and_keeps_the_newest_within_the_limit(
    store: Arc<dyn Store>,
) {
    heartbeats(&*store, 1, 1..=6).await;
    let history = |from: u64, to: u64, limit: usize| {
        let store = Arc::clone(&store);
        async move {
            store
                .telemetry_history(device_id(1), from, to, limit)
                .await
                .unwrap()
        }
    };
    let samples = |ks: &[u32]| ks.iter().copied().map(sample).collect::<Vec<_>>();

    // `from` is in the range, `to` is not.
    assert_eq!(history(T0 + 3600, T0 + 7200, 100).await, samples(&[2, 3]));
    assert_eq!(
        history(T0 + 3599, T0 + 7201, 100).await,
        samples(&[2, 3, 4])
    );
    assert_eq!(history(T0 + 3601, T0 + 5400, 100).await, vec![]);
    assert_eq!(history(T0 + 5400, T0 + 5401, 100).await, samples(&[3]));

    // More than `limit` match: the newest `limit`, still oldest first.
    assert_eq!(history(0, u64::MAX, 2).await, samples(&[5, 6]));
    assert_eq!(history(0, T0 + 5400, 1).await, samples(&[2]));
    assert_eq!(history(0, u64::MAX, 6).await, samples(&[1, 2, 3, 4, 5, 6]));

    // Nothing to return.
    assert_eq!(history(0, u64::MAX, 0).await, vec![]);
    assert_eq!(
        history(T0 + 3600, T0 + 3600, 100).await,
        vec![],
        "an empty range"
    );
    assert_eq!(
        history(T0 + 7200, T0 + 3600, 100).await,
        vec![],
        "a reversed range"
    );
    assert_eq!(history(0, T0 + 1800, 100).await, vec![], "before the first");
}

// ---------------------------------------------------------------------------------------------
// Machine lifecycle and the daily spending cap (issue 11, items 4 and 6)
// ---------------------------------------------------------------------------------------------

fn service(state: ServiceState) -> DeviceUpdate {
    DeviceUpdate {
        service_state: Some(state),
        ..DeviceUpdate::default()
    }
}

fn tariff(price: i64) -> Tariff {
    Tariff {
        price_per_unit: amount(price),
        unit_name: UnitName::parse("litre").unwrap(),
        currency: Currency::parse("EUR").unwrap(),
    }
}

fn capped(mut cmd: PayCommand, limit: i64) -> PayCommand {
    cmd.daily_limit = Some(amount(limit));
    cmd
}

async fn updated(store: &dyn Store, n: u8, update: &DeviceUpdate, now: u64) -> DeviceStatus {
    match store
        .update_device(device_id(n), update, now)
        .await
        .unwrap()
    {
        DeviceUpdateOutcome::Updated(d) => d,
        other => panic!("expected an update, got {other:?}"),
    }
}

/// A session keeps the tariff it was authorized with: a tariff changed while it is open does not
/// touch its settlement; the next session is authorized at the new one. The same update again
/// writes nothing.
pub async fn a_tariff_change_applies_to_sessions_authorized_after_it_never_to_an_open_one(
    store: Arc<dyn Store>,
) {
    online_machine(&*store, 1, T0).await;
    fund(&*store, "alice", 1000).await;
    let open = created(&*store, &pay_cmd("alice", "p1", 1, 7, 300, T0)).await;
    let change = DeviceUpdate {
        tariff: Some(tariff(2 * PRICE)),
        ..DeviceUpdate::default()
    };
    let after = updated(&*store, 1, &change, T0 + 1).await;
    assert_eq!(after.device.tariff, tariff(2 * PRICE));
    assert!(matches!(
        store
            .update_device(device_id(1), &change, T0 + 2)
            .await
            .unwrap(),
        DeviceUpdateOutcome::Unchanged(d) if d.device.tariff == tariff(2 * PRICE)
    ));
    device_op(&*store, 1, 2, DeviceOp::Start { session: open.id }, T0 + 3).await;
    let last = DeviceOp::Report {
        session: open.id,
        units: Units::new(4),
        last: true,
    };
    let settled = session_of(device_op(&*store, 1, 3, last, T0 + 4).await);
    assert_eq!(
        (settled.amount, settled.tariff.clone()),
        (amount(4 * PRICE), tariff(PRICE))
    );
    let next = created(&*store, &pay_cmd("alice", "p2", 1, 8, 300, T0 + 5)).await;
    assert_eq!(next.tariff, tariff(2 * PRICE));
    reconciled(&*store).await;
}

/// OUT_OF_SERVICE: the device shows it, a pay is refused and changes nothing; back IN_SERVICE
/// it takes payments again. Updating an unknown machine is DeviceUnknown.
pub async fn a_pay_for_a_machine_out_of_service_is_refused_and_changes_nothing(
    store: Arc<dyn Store>,
) {
    online_machine(&*store, 1, T0).await;
    fund(&*store, "alice", 1000).await;
    assert_eq!(
        store
            .update_device(device_id(9), &service(ServiceState::OutOfService), T0)
            .await
            .unwrap(),
        DeviceUpdateOutcome::DeviceUnknown
    );
    updated(&*store, 1, &service(ServiceState::OutOfService), T0).await;
    let status = store
        .device_status(device_id(1), T0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.device.service_state, ServiceState::OutOfService);
    refused_without_change(
        &*store,
        &pay_cmd("alice", "p1", 1, 7, 300, T0 + 1),
        PayOutcome::DeviceOutOfService,
    )
    .await;
    updated(&*store, 1, &service(ServiceState::InService), T0 + 2).await;
    created(&*store, &pay_cmd("alice", "p2", 1, 8, 300, T0 + 3)).await;
    reconciled(&*store).await;
}

/// DECOMMISSIONED is terminal: decommissioning again is unchanged, nothing brings it back, its
/// sessions stay readable, and a pay is refused as out of service, changing nothing.
pub async fn a_decommissioned_machine_stays_decommissioned_and_keeps_its_history(
    store: Arc<dyn Store>,
) {
    online_machine(&*store, 1, T0).await;
    fund(&*store, "alice", 1000).await;
    let s = created(&*store, &pay_cmd("alice", "p1", 1, 7, 300, T0)).await;
    device_op(&*store, 1, 2, DeviceOp::Start { session: s.id }, T0 + 1).await;
    let last = DeviceOp::Report {
        session: s.id,
        units: Units::new(2),
        last: true,
    };
    device_op(&*store, 1, 3, last, T0 + 2).await;
    let gone = updated(&*store, 1, &DeviceUpdate::decommission(), T0 + 3).await;
    assert_eq!(gone.device.service_state, ServiceState::Decommissioned);
    assert!(matches!(
        store
            .update_device(device_id(1), &DeviceUpdate::decommission(), T0 + 4)
            .await
            .unwrap(),
        DeviceUpdateOutcome::Unchanged(_)
    ));
    for back in [
        service(ServiceState::InService),
        service(ServiceState::OutOfService),
        DeviceUpdate {
            name: Some(DeviceName::parse("Reborn").unwrap()),
            ..DeviceUpdate::default()
        },
    ] {
        assert_eq!(
            store
                .update_device(device_id(1), &back, T0 + 5)
                .await
                .unwrap(),
            DeviceUpdateOutcome::Decommissioned
        );
    }
    let status = store
        .device_status(device_id(1), T0 + 6)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.device.service_state, ServiceState::Decommissioned);
    assert_eq!(
        store.session(s.id, T0 + 6).await.unwrap().map(|s| s.status),
        Some(SessionStatus::Settled)
    );
    refused_without_change(
        &*store,
        &pay_cmd("alice", "p2", 1, 8, 300, T0 + 7),
        PayOutcome::DeviceOutOfService,
    )
    .await;
    reconciled(&*store).await;
}

/// The fleet list: by device id, in pages that continue where the last one ended, filtered by
/// state, service state and name prefix.
pub async fn the_fleet_list_pages_by_device_id_and_filters(store: Arc<dyn Store>) {
    let now = T0 + 10;
    for n in [3, 1] {
        online_machine(&*store, n, T0).await;
    }
    store.register_device(&dispenser(2), T0).await.unwrap();
    updated(&*store, 3, &service(ServiceState::OutOfService), T0).await;
    fund(&*store, "alice", 1000).await;
    created(&*store, &pay_cmd("alice", "p1", 1, 7, 300, T0 + 1)).await;
    let all = DeviceFilter {
        offline_after_secs: OFFLINE_AFTER,
        ..DeviceFilter::default()
    };
    let ids = |p: &crate::Page<DeviceStatus>| -> Vec<DeviceId> {
        p.items.iter().map(|d| d.device.id).collect()
    };
    let first = store
        .list_devices(
            &all,
            &PageRequest {
                limit: 2,
                after: None,
            },
            now,
        )
        .await
        .unwrap();
    assert_eq!(ids(&first), vec![device_id(1), device_id(2)]);
    let after = first.next.clone().expect("a second page");
    assert_eq!(after.id, device_id(2).to_string());
    let second = store
        .list_devices(
            &all,
            &PageRequest {
                limit: 2,
                after: Some(after),
            },
            now,
        )
        .await
        .unwrap();
    assert_eq!((ids(&second), second.next), (vec![device_id(3)], None));
    let whole = PageRequest {
        limit: 10,
        after: None,
    };
    let with = |f: DeviceFilter| {
        let store = Arc::clone(&store);
        let whole = whole.clone();
        async move { store.list_devices(&f, &whole, now).await.unwrap() }
    };
    let out = with(DeviceFilter {
        service_state: Some(ServiceState::OutOfService),
        ..all.clone()
    })
    .await;
    assert_eq!(ids(&out), vec![device_id(3)]);
    let busy = with(DeviceFilter {
        state: Some(DeviceState::Busy),
        ..all.clone()
    })
    .await;
    assert_eq!(ids(&busy), vec![device_id(1)]);
    let offline = with(DeviceFilter {
        state: Some(DeviceState::Offline),
        ..all.clone()
    })
    .await;
    assert_eq!(ids(&offline), vec![device_id(2)]);
    let named = with(DeviceFilter {
        name_prefix: Some("Water dispenser 3".into()),
        ..all.clone()
    })
    .await;
    assert_eq!(ids(&named), vec![device_id(3)]);
    let page = with(all).await;
    assert_eq!(page.items.len(), 3);
    assert!(page.items[0].open_session.is_some());
}

/// The daily cap counts holds plus captures of the day: a pay over it is refused and changes
/// nothing; a settlement below the hold and an expiry give the difference back; a user's
/// override replaces the default (0: no cap) and clearing it restores the default; the next UTC
/// day starts at zero.
#[allow(clippy::too_many_lines, reason = "one scenario, told in order")]
pub async fn a_pay_over_the_daily_cap_is_refused_and_changes_nothing(store: Arc<dyn Store>) {
    let alice = user("alice");
    for n in 1..=4 {
        online_machine(&*store, n, T0).await;
    }
    fund(&*store, "alice", 5000).await;
    let s1 = created(&*store, &capped(pay_cmd("alice", "p1", 1, 7, 300, T0), 500)).await;
    assert_eq!(
        store.spending(&alice, T0).await.unwrap(),
        Spending {
            user_override: None,
            spent_today: amount(300)
        }
    );
    refused_without_change(
        &*store,
        &capped(pay_cmd("alice", "p2", 2, 7, 300, T0 + 1), 500),
        PayOutcome::SpendingLimit {
            limit: amount(500),
            spent_today: amount(300),
        },
    )
    .await;
    // Settled at 4 units (100 of its 300): the day counts 100.
    device_op(&*store, 1, 2, DeviceOp::Start { session: s1.id }, T0 + 2).await;
    let last = DeviceOp::Report {
        session: s1.id,
        units: Units::new(4),
        last: true,
    };
    device_op(&*store, 1, 3, last, T0 + 3).await;
    assert_eq!(
        store.spending(&alice, T0 + 3).await.unwrap().spent_today,
        amount(100)
    );
    let s3 = created(
        &*store,
        &capped(pay_cmd("alice", "p3", 2, 8, 300, T0 + 4), 500),
    )
    .await;
    device_op(&*store, 2, 2, DeviceOp::Start { session: s3.id }, T0 + 4).await;
    // An AUTHORIZED session that expires gives its hold back.
    let s4 = created(
        &*store,
        &capped(pay_cmd("alice", "p4", 3, 7, 100, T0 + 5), 500),
    )
    .await;
    assert_eq!(
        store.spending(&alice, T0 + 5).await.unwrap().spent_today,
        amount(500)
    );
    let expired_at = s4.expires_at + 1;
    assert_eq!(
        store
            .spending(&alice, expired_at)
            .await
            .unwrap()
            .spent_today,
        amount(400)
    );
    // The override: 0 lifts the cap, a value replaces the default; clearing restores it.
    let lifted = store
        .set_spending_limit(&alice, Some(Amount::ZERO), expired_at)
        .await
        .unwrap();
    assert_eq!(lifted.user_override, Some(Amount::ZERO));
    assert_eq!(
        store
            .set_spending_limit(&alice, Some(Amount::ZERO), expired_at)
            .await
            .unwrap(),
        lifted
    );
    created(
        &*store,
        &capped(pay_cmd("alice", "p5", 3, 8, 300, expired_at), 500),
    )
    .await;
    store
        .set_spending_limit(&alice, Some(amount(800)), expired_at)
        .await
        .unwrap();
    refused_without_change(
        &*store,
        &capped(pay_cmd("alice", "p6", 4, 7, 200, expired_at), 500),
        PayOutcome::SpendingLimit {
            limit: amount(800),
            spent_today: amount(700),
        },
    )
    .await;
    let cleared = store
        .set_spending_limit(&alice, None, expired_at)
        .await
        .unwrap();
    assert_eq!(
        cleared,
        Spending {
            user_override: None,
            spent_today: amount(700)
        }
    );
    let next_day = (crate::spending_day(T0) + 1) * crate::SPENDING_DAY_SECS;
    assert_eq!(
        store.spending(&alice, next_day).await.unwrap().spent_today,
        Amount::ZERO
    );
    reconciled(&*store).await;
}

// The back office's lists, statements and report (issue 11, item 7)
// ---------------------------------------------------------------------------------------------

/// Every page of `filter`'s session list with `limit`, concatenated; asserts only the last page
/// has no `next`.
async fn all_pages(
    store: &dyn Store,
    filter: &crate::SessionFilter,
    limit: u32,
    now: u64,
) -> Vec<SessionId> {
    let mut out = Vec::new();
    let mut after = None;
    for _ in 0..100 {
        let page = store
            .list_sessions(filter, &crate::PageRequest { limit, after }, now)
            .await
            .unwrap();
        assert!(page.items.len() <= limit as usize);
        out.extend(page.items.iter().map(|s| s.id));
        match page.next {
            Some(n) => after = Some(n),
            None => return out,
        }
    }
    panic!("the list never ended");
}

async fn listed(store: &dyn Store, filter: crate::SessionFilter, now: u64) -> Vec<SessionId> {
    all_pages(store, &filter, crate::PageRequest::MAX_LIMIT, now).await
}

#[allow(clippy::too_many_lines, reason = "one filter per assertion")]
pub async fn the_session_list_filters_by_machine_user_status_and_time_newest_first(
    store: Arc<dyn Store>,
) {
    use crate::SessionFilter as F;
    for n in 1..=3 {
        online_machine(&*store, n, T0).await;
    }
    fund(&*store, "alice", 1000).await;
    fund(&*store, "bob", 1000).await;
    let s1 = created(&*store, &pay_cmd("alice", "l1", 1, 1, 100, T0))
        .await
        .id;
    let s2 = created(&*store, &pay_cmd("bob", "l2", 2, 1, 100, T0 + 10))
        .await
        .id;
    let s3 = created(&*store, &pay_cmd("alice", "l3", 3, 1, 100, T0 + 20))
        .await
        .id;
    // At T0 + 125 the first is past its start deadline: the list shows it EXPIRED.
    let now = T0 + 125;
    let alice = Some(user("alice"));
    assert_eq!(listed(&*store, F::default(), now).await, [s3, s2, s1]);
    assert_eq!(
        listed(
            &*store,
            F {
                user: alice.clone(),
                ..F::default()
            },
            now
        )
        .await,
        [s3, s1]
    );
    assert_eq!(
        listed(
            &*store,
            F {
                device: Some(device_id(2)),
                ..F::default()
            },
            now
        )
        .await,
        [s2]
    );
    assert_eq!(
        listed(
            &*store,
            F {
                status: Some(SessionStatus::Expired),
                ..F::default()
            },
            now
        )
        .await,
        [s1]
    );
    assert_eq!(
        listed(
            &*store,
            F {
                status: Some(SessionStatus::Authorized),
                ..F::default()
            },
            now
        )
        .await,
        [s3, s2]
    );
    assert_eq!(
        listed(
            &*store,
            F {
                from: Some(T0 + 10),
                ..F::default()
            },
            now
        )
        .await,
        [s3, s2]
    );
    assert_eq!(
        listed(
            &*store,
            F {
                to: Some(T0 + 10),
                ..F::default()
            },
            now
        )
        .await,
        [s2, s1]
    );
    assert_eq!(
        listed(
            &*store,
            F {
                from: Some(T0 + 10),
                to: Some(T0 + 10),
                ..F::default()
            },
            now
        )
        .await,
        [s2]
    );
    assert_eq!(
        listed(
            &*store,
            F {
                user: alice.clone(),
                device: Some(device_id(1)),
                ..F::default()
            },
            now
        )
        .await,
        [s1]
    );
    assert_eq!(
        listed(
            &*store,
            F {
                user: alice,
                status: Some(SessionStatus::Authorized),
                from: Some(T0 + 1),
                ..F::default()
            },
            now
        )
        .await,
        [s3]
    );
    assert!(
        listed(
            &*store,
            F {
                user: Some(user("carol")),
                ..F::default()
            },
            now
        )
        .await
        .is_empty()
    );
    let page = store
        .list_sessions(
            &F::default(),
            &crate::PageRequest {
                limit: 10,
                after: None,
            },
            now,
        )
        .await
        .unwrap();
    assert_eq!(page.items[2].status, SessionStatus::Expired);
    assert_eq!(page.next, None);
    reconciled(&*store).await;
}

pub async fn paging_the_session_list_never_skips_or_repeats_a_session(store: Arc<dyn Store>) {
    use crate::SessionFilter as F;
    fund(&*store, "alice", 10_000).await;
    fund(&*store, "bob", 10_000).await;
    // Seven sessions, several created in the same second (ties are ordered by id).
    let times = [T0, T0, T0, T0 + 5, T0 + 5, T0 + 9, T0 + 9];
    let mut made = Vec::new();
    for (i, t) in times.iter().enumerate() {
        let n = u8::try_from(i + 1).unwrap();
        online_machine(&*store, n, T0).await;
        let who = if i % 2 == 0 { "alice" } else { "bob" };
        let s = created(&*store, &pay_cmd(who, &format!("pg{n}"), n, 1, 100, *t)).await;
        made.push((s.created_at, s.id.to_string(), s.id, who));
    }
    made.sort_by(|a, b| (b.0, &b.1).cmp(&(a.0, &a.1)));
    let newest_first: Vec<SessionId> = made.iter().map(|m| m.2).collect();
    let now = T0 + 10;
    assert_eq!(listed(&*store, F::default(), now).await, newest_first);
    for limit in [1, 2, 3, 6, 7] {
        assert_eq!(
            all_pages(&*store, &F::default(), limit, now).await,
            newest_first,
            "pages of {limit}"
        );
    }
    let alices: Vec<SessionId> = made
        .iter()
        .filter(|m| m.3 == "alice")
        .map(|m| m.2)
        .collect();
    let by_alice = F {
        user: Some(user("alice")),
        ..F::default()
    };
    for limit in [1, 2, 3] {
        assert_eq!(all_pages(&*store, &by_alice, limit, now).await, alices);
    }
    let since = F {
        from: Some(T0 + 5),
        ..F::default()
    };
    assert_eq!(all_pages(&*store, &since, 1, now).await, newest_first[..4]);
    reconciled(&*store).await;
}

pub async fn a_statement_lists_every_entry_touching_the_user_newest_first_in_pages(
    store: Arc<dyn Store>,
) {
    use blepay_core::EntryKind;
    online_machine(&*store, 1, T0).await;
    fund(&*store, "alice", 1000).await;
    fund(&*store, "bob", 500).await;
    let s = created(&*store, &pay_cmd("alice", "st1", 1, 7, 300, T0)).await;
    device_op(&*store, 1, 2, DeviceOp::Start { session: s.id }, T0 + 10).await;
    let last = DeviceOp::Report {
        session: s.id,
        units: Units::new(7),
        last: true,
    };
    device_op(&*store, 1, 3, last, T0 + 30).await;

    let alice = user("alice");
    let page = |limit, after| crate::PageRequest { limit, after };
    let all = store.statement(&alice, &page(500, None)).await.unwrap();
    assert_eq!(all.next, None);
    let kinds: Vec<EntryKind> = all.items.iter().map(|e| e.kind).collect();
    assert_eq!(kinds.len(), 4, "{kinds:?}");
    let mut closing = [kinds[0].as_str(), kinds[1].as_str()];
    closing.sort_unstable();
    assert_eq!(closing, ["CAPTURE", "RELEASE"]);
    assert_eq!(&kinds[2..], [EntryKind::Hold, EntryKind::TopUp]);
    assert!(all.items.iter().all(|e| e.touches(&alice)));
    assert!(
        all.items
            .iter()
            .all(|e| e.session == Some(s.id) || e.kind == EntryKind::TopUp)
    );
    assert_eq!(all.items[0].at, T0 + 30);
    let available: i64 = all.items.iter().map(|e| e.available_delta(&alice)).sum();
    assert_eq!(
        available,
        store
            .wallet(&alice, T0 + 31)
            .await
            .unwrap()
            .available
            .minor()
    );
    assert_eq!(available, 825);
    let capture = all
        .items
        .iter()
        .find(|e| e.kind == EntryKind::Capture)
        .unwrap();
    assert_eq!(
        (capture.amount, capture.credit.as_str()),
        (amount(175), "revenue")
    );

    for limit in [1, 3] {
        let mut paged = Vec::new();
        let mut after = None;
        loop {
            let p = store.statement(&alice, &page(limit, after)).await.unwrap();
            assert!(p.items.len() <= limit as usize);
            paged.extend(p.items);
            match p.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        assert_eq!(paged, all.items, "pages of {limit}");
    }
    let bob = store
        .statement(&user("bob"), &page(500, None))
        .await
        .unwrap();
    assert_eq!(bob.items.len(), 1);
    assert_eq!(bob.items[0].available_delta(&user("bob")), 500);
    assert!(
        store
            .statement(&user("carol"), &page(10, None))
            .await
            .unwrap()
            .items
            .is_empty()
    );
    reconciled(&*store).await;
}

/// Concurrent pays by one user on several machines cannot together pass the daily cap.
pub async fn concurrent_pays_cannot_together_exceed_the_daily_cap(store: Arc<dyn Store>) {
    const MACHINES: u8 = 6;
    for n in 1..=MACHINES {
        online_machine(&*store, n, T0).await;
    }
    fund(&*store, "alice", 10_000).await;
    let pays: Vec<_> = (1..=MACHINES)
        .map(|n| {
            let store = Arc::clone(&store);
            let cmd = capped(pay_cmd("alice", &format!("cap-{n}"), n, 7, 300, T0), 1000);
            tokio::spawn(async move { store.pay(&cmd).await.unwrap() })
        })
        .collect();
    let mut outcomes = Vec::new();
    for pay in pays {
        outcomes.push(pay.await.unwrap());
    }
    let created = outcomes
        .iter()
        .filter(|o| matches!(o, PayOutcome::Created(_)))
        .count();
    let refused = outcomes
        .iter()
        .filter(|o| matches!(o, PayOutcome::SpendingLimit { .. }))
        .count();
    assert_eq!(
        (created, refused),
        (3, usize::from(MACHINES) - 3),
        "{outcomes:?}"
    );
    assert_eq!(reconciled(&*store).await.held, 900);
    assert_eq!(
        store
            .spending(&user("alice"), T0)
            .await
            .unwrap()
            .spent_today,
        amount(900)
    );
}

pub async fn the_sales_facts_hold_the_range_and_the_report_sums_match_the_revenue(
    store: Arc<dyn Store>,
) {
    use crate::decide::{DAY_SECS, sales_report, sales_totals};
    online_machine(&*store, 1, T0).await;
    online_machine(&*store, 2, T0).await;
    fund(&*store, "alice", 1000).await;
    fund(&*store, "bob", 1000).await;
    let s = created(&*store, &pay_cmd("alice", "sf1", 1, 7, 300, T0)).await;
    device_op(&*store, 1, 2, DeviceOp::Start { session: s.id }, T0 + 10).await;
    let last = DeviceOp::Report {
        session: s.id,
        units: Units::new(7),
        last: true,
    };
    device_op(&*store, 1, 3, last, T0 + 30).await;
    let unstarted = created(&*store, &pay_cmd("bob", "sf2", 2, 7, 300, T0 + 40)).await;
    assert_eq!(
        ids(&store.expire_due(T0 + 400).await.unwrap()),
        vec![unstarted.id]
    );

    let day = T0 / DAY_SECS;
    let (from, to) = (day * DAY_SECS, (day + 1) * DAY_SECS);
    let facts = store.sales_facts(from, to).await.unwrap();
    let mut ids: Vec<SessionId> = facts.sessions.iter().map(|s| s.id).collect();
    ids.sort_unstable();
    let mut want = vec![s.id, unstarted.id];
    want.sort_unstable();
    assert_eq!(ids, want);
    assert!(facts.refunds.is_empty(), "no refunds were made");
    let rows = sales_report(&facts, day, day).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (
            rows[0].device,
            rows[0].sessions,
            rows[0].units,
            rows[0].captured,
            rows[0].net
        ),
        (Some(device_id(1)), 1, 7, 175, 175)
    );
    assert_eq!(
        (
            rows[1].device,
            rows[1].sessions,
            rows[1].units,
            rows[1].captured
        ),
        (Some(device_id(2)), 1, 0, 0)
    );
    let audit = reconciled(&*store).await;
    let totals = sales_totals(&rows).unwrap();
    assert_eq!(
        (totals.captured, totals.refunded, totals.net),
        (audit.revenue, 0, audit.revenue)
    );

    let empty = store.sales_facts(to, to + DAY_SECS).await.unwrap();
    assert!(empty.sessions.is_empty() && empty.refunds.is_empty());
    let before = store.sales_facts(from - DAY_SECS, from).await.unwrap();
    assert!(before.sessions.is_empty());
    // The end is exclusive: a range ending at the first session's second holds nothing.
    assert!(
        store
            .sales_facts(from, T0)
            .await
            .unwrap()
            .sessions
            .is_empty()
    );
}

// ---------------------------------------------------------------------------------------------
// The back office: refunds, hand closes, problems (issue 11)
// ---------------------------------------------------------------------------------------------

/// The operator principal of the back-office checks.
pub const OPERATOR: &str = "op:support-1";

pub fn reason(text: &str) -> Reason {
    Reason::parse(text).unwrap()
}

pub fn refund_cmd(session: SessionId, minor: i64, idem: &str, now: u64) -> RefundCommand {
    RefundCommand {
        session,
        amount: amount(minor),
        reason: reason("no water came out"),
        key: key(idem),
        actor: OPERATOR.into(),
        now,
    }
}

pub fn close_cmd(session: SessionId, now: u64) -> CloseCommand {
    CloseCommand {
        session,
        reason: reason("stuck session"),
        actor: OPERATOR.into(),
        now,
        active_timeout_secs: ACTIVE_TIMEOUT,
    }
}

pub fn problem_cmd(who: &str, session: SessionId, n: u8, now: u64) -> ProblemCommand {
    ProblemCommand {
        user: user(who),
        session,
        reason: reason("I paid and got nothing"),
        id: ProblemId::from_bytes([n; 16]),
        now,
    }
}

/// Alice's session on machine 1 (hold 300), settled by the machine at 4 units: 100 captured;
/// her wallet is then 900 available, 100 spent.
async fn settled_session(store: &dyn Store) -> Session {
    let s = active_session(store).await;
    let report = DeviceOp::Report {
        session: s.id,
        units: Units::new(4),
        last: true,
    };
    let settled = session_of(device_op(store, 1, 3, report, T0 + 20).await);
    assert_eq!(settled.amount, amount(100));
    settled
}

/// What a refused back-office request must leave unchanged.
async fn money_state(store: &dyn Store, id: SessionId, now: u64) -> (Audit, Wallet, Session) {
    (
        reconciled(store).await,
        store.wallet(&user("alice"), now).await.unwrap(),
        store.session(id, now).await.unwrap().unwrap(),
    )
}

pub async fn a_refund_of_a_settled_session_credits_the_wallet_and_shows_on_the_session(
    store: Arc<dyn Store>,
) {
    let s = settled_session(&*store).await;

    let out = store
        .refund(&refund_cmd(s.id, 40, "r1", T0 + 30))
        .await
        .unwrap();

    let RefundOutcome::Refunded { session, wallet: w } = out else {
        panic!("a refund under the capture goes through: {out:?}");
    };
    assert_eq!(
        (session.refunded, session.amount),
        (amount(40), amount(100))
    );
    assert_eq!(
        (w.available, w.spent, w.refunded),
        (amount(940), amount(60), amount(40))
    );
    assert_eq!(store.wallet(&user("alice"), T0 + 31).await.unwrap(), w);
    assert_eq!(
        store
            .session(s.id, T0 + 31)
            .await
            .unwrap()
            .unwrap()
            .refunded,
        amount(40)
    );
    let audit = reconciled(&*store).await;
    assert_eq!(
        (audit.revenue, audit.refunded, audit.session_refunds),
        (60, 40, 40)
    );
    // A second refund with another key, up to what is left.
    assert!(matches!(
        store
            .refund(&refund_cmd(s.id, 60, "r2", T0 + 32))
            .await
            .unwrap(),
        RefundOutcome::Refunded { .. }
    ));
    assert_eq!(reconciled(&*store).await.revenue, 0);
}

pub async fn a_refund_replayed_with_its_key_refunds_once(store: Arc<dyn Store>) {
    let s = settled_session(&*store).await;
    store
        .refund(&refund_cmd(s.id, 40, "r1", T0 + 30))
        .await
        .unwrap();
    let before = money_state(&*store, s.id, T0 + 31).await;

    let again = store
        .refund(&refund_cmd(s.id, 40, "r1", T0 + 31))
        .await
        .unwrap();

    let RefundOutcome::Replayed { session, wallet: w } = again else {
        panic!("the same key and amount is a retry: {again:?}");
    };
    assert_eq!((session.refunded, w.available), (amount(40), amount(940)));
    assert_eq!(
        store
            .refund(&refund_cmd(s.id, 41, "r1", T0 + 31))
            .await
            .unwrap(),
        RefundOutcome::KeyReused
    );
    assert_eq!(money_state(&*store, s.id, T0 + 31).await, before);
}

pub async fn a_refund_over_the_capture_or_of_an_open_session_is_refused_and_changes_nothing(
    store: Arc<dyn Store>,
) {
    let s = settled_session(&*store).await;
    store
        .refund(&refund_cmd(s.id, 60, "r1", T0 + 30))
        .await
        .unwrap();
    let before = money_state(&*store, s.id, T0 + 31).await;

    assert_eq!(
        store
            .refund(&refund_cmd(s.id, 41, "r2", T0 + 31))
            .await
            .unwrap(),
        RefundOutcome::ExceedsCapture {
            refundable: amount(40)
        }
    );
    assert_eq!(
        store
            .refund(&refund_cmd(session_id(0x77), 1, "r3", T0 + 31))
            .await
            .unwrap(),
        RefundOutcome::SessionNotFound
    );
    assert_eq!(money_state(&*store, s.id, T0 + 31).await, before);
    // The refused key was not recorded: it refunds what is left.
    assert!(matches!(
        store
            .refund(&refund_cmd(s.id, 40, "r2", T0 + 32))
            .await
            .unwrap(),
        RefundOutcome::Refunded { .. }
    ));

    // An open session captured nothing yet.
    online_machine(&*store, 2, T0).await;
    let open = created(&*store, &pay_cmd("alice", "p2", 2, 9, 200, T0 + 33)).await;
    let before = money_state(&*store, open.id, T0 + 34).await;
    assert_eq!(
        store
            .refund(&refund_cmd(open.id, 1, "r4", T0 + 34))
            .await
            .unwrap(),
        RefundOutcome::NotSettled
    );
    assert_eq!(money_state(&*store, open.id, T0 + 34).await, before);
}

pub async fn concurrent_refunds_never_exceed_the_capture(store: Arc<dyn Store>) {
    let s = settled_session(&*store).await;

    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                store
                    .refund(&refund_cmd(s.id, 30, &format!("race-{i}"), T0 + 30))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut refunded = 0;
    for t in tasks {
        match t.await.unwrap() {
            RefundOutcome::Refunded { .. } => refunded += 1,
            RefundOutcome::ExceedsCapture { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }

    assert_eq!(refunded, 3, "30 fits three times into a capture of 100");
    let after = store.session(s.id, T0 + 31).await.unwrap().unwrap();
    assert_eq!(after.refunded, amount(90));
    let audit = reconciled(&*store).await;
    assert_eq!((audit.refunded, audit.revenue), (90, 10));
}

pub async fn closing_an_authorized_session_voids_it_releases_the_hold_and_frees_the_machine(
    store: Arc<dyn Store>,
) {
    online_machine(&*store, 1, T0).await;
    fund(&*store, "alice", 1000).await;
    let paid = created(&*store, &pay_cmd("alice", "p1", 1, 7, 300, T0)).await;

    let out = store
        .close_session(&close_cmd(paid.id, T0 + 5))
        .await
        .unwrap();

    let CloseOutcome::Closed(closed) = out else {
        panic!("an AUTHORIZED session closes: {out:?}");
    };
    assert_eq!(
        (closed.status, closed.closed_by, closed.ended_at),
        (
            SessionStatus::Expired,
            Some(CloseReason::Operator),
            Some(T0 + 5)
        )
    );
    assert_eq!(
        store.wallet(&user("alice"), T0 + 6).await.unwrap(),
        wallet(1000, 0, 0)
    );
    let status = store
        .device_status(device_id(1), T0 + 6)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.open_session, None, "the machine is free");
    let before = reconciled(&*store).await;
    // Idempotent.
    assert_eq!(
        store
            .close_session(&close_cmd(paid.id, T0 + 7))
            .await
            .unwrap(),
        CloseOutcome::AlreadyClosed(closed)
    );
    // The machine's press finds nothing waiting.
    assert_eq!(
        device_op(&*store, 1, 2, DeviceOp::Press, T0 + 8).await,
        DeviceOpResult::NoSessionWaiting
    );
    assert_eq!(reconciled(&*store).await, before);
    // Another pay on the machine goes through.
    created(&*store, &pay_cmd("alice", "p2", 1, 8, 300, T0 + 9)).await;
    reconciled(&*store).await;
}

pub async fn closing_an_active_session_settles_it_and_a_late_report_is_handled_as_after_a_timeout(
    store: Arc<dyn Store>,
) {
    let s = active_session(&*store).await;
    let progress = DeviceOp::Report {
        session: s.id,
        units: Units::new(2),
        last: false,
    };
    session_of(device_op(&*store, 1, 3, progress, T0 + 20).await);

    let out = store
        .close_session(&close_cmd(s.id, T0 + 30))
        .await
        .unwrap();

    let CloseOutcome::Closed(closed) = out else {
        panic!("an ACTIVE session closes: {out:?}");
    };
    assert_eq!(
        (closed.status, closed.closed_by, closed.amount),
        (
            SessionStatus::Settled,
            Some(CloseReason::Operator),
            amount(50)
        )
    );
    assert_eq!(
        store.wallet(&user("alice"), T0 + 31).await.unwrap(),
        wallet(950, 0, 50)
    );
    let status = store
        .device_status(device_id(1), T0 + 31)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.open_session, None);
    reconciled(&*store).await;

    // The machine's final report arrives: charged what it still owes, once.
    let last = DeviceOp::Report {
        session: s.id,
        units: Units::new(3),
        last: true,
    };
    let late = session_of(device_op(&*store, 1, 4, last.clone(), T0 + 40).await);
    assert_eq!(
        late.late_report,
        Some(LateReport {
            units: Units::new(3),
            at: T0 + 40,
            charged: amount(25)
        })
    );
    assert_eq!(late.amount, amount(75));
    assert_eq!(
        store.wallet(&user("alice"), T0 + 41).await.unwrap(),
        wallet(925, 0, 75)
    );
    session_of(device_op(&*store, 1, 5, last, T0 + 42).await);
    assert_eq!(
        store.wallet(&user("alice"), T0 + 43).await.unwrap(),
        wallet(925, 0, 75),
        "the same late report again charges nothing"
    );
    reconciled(&*store).await;
}

pub async fn closing_a_session_closed_otherwise_is_refused_and_changes_nothing(
    store: Arc<dyn Store>,
) {
    let s = settled_session(&*store).await;
    let before = money_state(&*store, s.id, T0 + 30).await;

    let out = store
        .close_session(&close_cmd(s.id, T0 + 30))
        .await
        .unwrap();

    assert!(
        matches!(&out, CloseOutcome::ClosedOtherwise(c) if c.closed_by == Some(CloseReason::Report)),
        "{out:?}"
    );
    assert_eq!(
        store
            .close_session(&close_cmd(session_id(0x77), T0 + 30))
            .await
            .unwrap(),
        CloseOutcome::SessionNotFound
    );
    assert_eq!(money_state(&*store, s.id, T0 + 30).await, before);
}

/// Alice's two sessions: an ACTIVE one on machine 1 and an AUTHORIZED one on machine 2.
async fn two_sessions(store: &dyn Store) -> (Session, Session) {
    let first = active_session(store).await;
    online_machine(store, 2, T0).await;
    let second = created(store, &pay_cmd("alice", "p2", 2, 9, 200, T0 + 1)).await;
    (first, second)
}

pub async fn a_problem_is_opened_once_per_session_and_listed_oldest_first(store: Arc<dyn Store>) {
    let (first, second) = two_sessions(&*store).await;

    let ProblemOutcome::Opened(on_first) = store
        .report_problem(&problem_cmd("alice", first.id, 1, T0 + 100))
        .await
        .unwrap()
    else {
        panic!("a report opens a problem");
    };
    let ProblemOutcome::Opened(on_second) = store
        .report_problem(&problem_cmd("alice", second.id, 2, T0 + 50))
        .await
        .unwrap()
    else {
        panic!("a report opens a problem");
    };
    assert_eq!(
        (
            on_first.session,
            on_first.created_at,
            on_first.resolution.clone()
        ),
        (first.id, T0 + 100, None)
    );
    // A repeat answers the open one; another user's session is not found.
    assert_eq!(
        store
            .report_problem(&problem_cmd("alice", first.id, 3, T0 + 101))
            .await
            .unwrap(),
        ProblemOutcome::Existing(on_first.clone())
    );
    assert_eq!(
        store
            .report_problem(&problem_cmd("bob", first.id, 4, T0 + 101))
            .await
            .unwrap(),
        ProblemOutcome::SessionNotFound
    );
    assert_eq!(
        store
            .report_problem(&problem_cmd("alice", session_id(0x77), 5, T0 + 101))
            .await
            .unwrap(),
        ProblemOutcome::SessionNotFound
    );

    let one = |after| PageRequest { limit: 1, after };
    let page = store.open_problems(&one(None)).await.unwrap();
    assert_eq!(page.items, vec![on_second.clone()], "oldest first");
    assert!(page.next.is_some(), "a second page follows");
    let page2 = store.open_problems(&one(page.next.clone())).await.unwrap();
    assert_eq!(page2.items, vec![on_first.clone()]);
    assert_eq!(page2.next, None, "the last page says so");
    let all = store
        .open_problems(&PageRequest {
            limit: 10,
            after: None,
        })
        .await
        .unwrap();
    assert_eq!((all.items.len(), all.next), (2, None));
    reconciled(&*store).await;
}

pub async fn dismissing_a_problem_resolves_it_once_and_a_new_report_opens_another(
    store: Arc<dyn Store>,
) {
    let (first, _) = two_sessions(&*store).await;
    let ProblemOutcome::Opened(p) = store
        .report_problem(&problem_cmd("alice", first.id, 1, T0 + 100))
        .await
        .unwrap()
    else {
        panic!("a report opens a problem");
    };
    let dismiss = |id, now| DismissCommand {
        id,
        reason: reason("the machine worked"),
        actor: OPERATOR.into(),
        now,
    };

    let DismissOutcome::Dismissed(done) = store
        .dismiss_problem(&dismiss(p.id, T0 + 200))
        .await
        .unwrap()
    else {
        panic!("an open problem is dismissed");
    };

    let r = done.resolution.clone().unwrap();
    assert_eq!(
        (r.kind, r.at, r.by.as_str()),
        (ResolutionKind::Dismissed, T0 + 200, OPERATOR)
    );
    assert_eq!(
        store
            .dismiss_problem(&dismiss(p.id, T0 + 201))
            .await
            .unwrap(),
        DismissOutcome::AlreadyResolved(done)
    );
    assert_eq!(
        store
            .dismiss_problem(&dismiss(ProblemId::from_bytes([9; 16]), T0 + 201))
            .await
            .unwrap(),
        DismissOutcome::NotFound
    );
    let open = store
        .open_problems(&PageRequest {
            limit: 10,
            after: None,
        })
        .await
        .unwrap();
    assert!(open.items.is_empty(), "{open:?}");
    assert!(matches!(
        store
            .report_problem(&problem_cmd("alice", first.id, 2, T0 + 300))
            .await
            .unwrap(),
        ProblemOutcome::Opened(again) if again.id != p.id
    ));
}

pub async fn a_refund_resolves_the_sessions_open_problem(store: Arc<dyn Store>) {
    let s = settled_session(&*store).await;
    store
        .report_problem(&problem_cmd("alice", s.id, 1, T0 + 25))
        .await
        .unwrap();

    store
        .refund(&refund_cmd(s.id, 100, "r1", T0 + 30))
        .await
        .unwrap();

    let open = store
        .open_problems(&PageRequest {
            limit: 10,
            after: None,
        })
        .await
        .unwrap();
    assert!(open.items.is_empty(), "{open:?}");
    let DismissOutcome::AlreadyResolved(p) = store
        .dismiss_problem(&DismissCommand {
            id: ProblemId::from_bytes([1; 16]),
            reason: reason("late"),
            actor: OPERATOR.into(),
            now: T0 + 40,
        })
        .await
        .unwrap()
    else {
        panic!("the refund resolved it");
    };
    let r = p.resolution.unwrap();
    assert_eq!(
        (r.kind, r.at, r.by.as_str()),
        (ResolutionKind::Refunded, T0 + 30, OPERATOR)
    );
    let audit = reconciled(&*store).await;
    assert_eq!((audit.revenue, audit.refunded), (0, 100));
}

// ---------------------------------------------------------------------------------------------
// Device keys: revocation and rotation (docs/protocol.md §1.1)
// ---------------------------------------------------------------------------------------------

/// The device's key state as the store reads it.
async fn keys_of(store: &dyn Store, n: u8) -> DeviceKeys {
    store
        .device_status(device_id(n), T0 + 100)
        .await
        .unwrap()
        .unwrap()
        .device
        .keys
}

/// Revoking machine 1 voids its AUTHORIZED session (the hold released) in the same operation;
/// from then on its frames are refused as forged and its adverts' pays as forged, changing
/// nothing, a second revoke answers it as it is, and machine 2 keeps working.
pub async fn a_revoked_device_refuses_frames_and_adverts_and_voids_its_waiting_session(
    store: Arc<dyn Store>,
) {
    online_machine(&*store, 1, T0).await;
    online_machine(&*store, 2, T0).await;
    fund(&*store, "alice", 1000).await;
    let waiting = created(&*store, &pay_cmd("alice", "p1", 1, 7, 300, T0)).await;
    let RevokeOutcome::Revoked { device, closed } = store
        .revoke_device(device_id(1), "key read out of flash", T0 + 5)
        .await
        .unwrap()
    else {
        panic!("not revoked")
    };
    assert_eq!(
        device.keys.revoked.as_ref().map(|r| r.reason.as_str()),
        Some("key read out of flash")
    );
    let closed = closed.expect("the waiting session was closed");
    assert_eq!(
        (closed.id, closed.status),
        (waiting.id, SessionStatus::Expired)
    );
    assert_eq!(
        store.wallet(&user("alice"), T0 + 5).await.unwrap(),
        wallet(1000, 0, 0)
    );
    reconciled(&*store).await;
    let before = machine_snapshot(&*store, 1, waiting.id, T0 + 6).await;
    let press = device_call_with(&*store, 1, 2, digest(2), DeviceOp::Press, T0 + 6).await;
    assert_eq!(press, (DeviceCallOutcome::KeyVersionRefused, None));
    // A byte-identical copy of an accepted request is refused too.
    let again = device_call_with(&*store, 1, 1, digest(1), DeviceOp::Poll, T0 + 6).await;
    assert_eq!(again, (DeviceCallOutcome::KeyVersionRefused, None));
    assert_eq!(
        store
            .pay(&pay_cmd("alice", "p2", 1, 8, 300, T0 + 6))
            .await
            .unwrap(),
        PayOutcome::KeyRefused
    );
    // A retry of the pay made before the revoke is refused as well.
    assert_eq!(
        store
            .pay(&pay_cmd("alice", "p1", 1, 7, 300, T0 + 6))
            .await
            .unwrap(),
        PayOutcome::KeyRefused
    );
    assert_eq!(
        machine_snapshot(&*store, 1, waiting.id, T0 + 6).await,
        before
    );
    assert!(matches!(
        store
            .revoke_device(device_id(1), "again", T0 + 7)
            .await
            .unwrap(),
        RevokeOutcome::AlreadyRevoked(d) if d.keys.revoked.as_ref().is_some_and(|r| r.at == T0 + 5)
    ));
    assert_eq!(
        store
            .revoke_device(device_id(9), "nobody", T0 + 7)
            .await
            .unwrap(),
        RevokeOutcome::DeviceUnknown
    );
    // Another machine keeps working.
    let other = created(&*store, &pay_cmd("alice", "p3", 2, 1, 300, T0 + 8)).await;
    let started = started_of(device_op(&*store, 2, 2, DeviceOp::Press, T0 + 9).await);
    assert_eq!(started.id, other.id);
    reconciled(&*store).await;
}

/// Revoking a machine with an ACTIVE session settles it at its last reported units, the rest
/// of the hold released, in the same operation; the final report that follows is refused.
pub async fn revoking_a_device_settles_its_active_session_at_its_last_reported_units(
    store: Arc<dyn Store>,
) {
    online_machine(&*store, 1, T0).await;
    fund(&*store, "alice", 1000).await;
    let s = created(&*store, &pay_cmd("alice", "p1", 1, 7, 300, T0)).await;
    device_op(&*store, 1, 2, DeviceOp::Press, T0 + 1).await;
    let progress = DeviceOp::Report {
        session: s.id,
        units: Units::new(4),
        last: false,
    };
    device_op(&*store, 1, 3, progress, T0 + 2).await;
    let RevokeOutcome::Revoked { closed, .. } = store
        .revoke_device(device_id(1), "stolen", T0 + 3)
        .await
        .unwrap()
    else {
        panic!("not revoked")
    };
    let closed = closed.expect("the active session was closed");
    assert_eq!(closed.status, SessionStatus::Settled);
    assert_eq!(closed.amount, amount(4 * PRICE));
    let status = store
        .device_status(device_id(1), T0 + 3)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.open_session, None);
    assert_eq!(
        store.wallet(&user("alice"), T0 + 3).await.unwrap(),
        wallet(1000 - 4 * PRICE, 0, 4 * PRICE)
    );
    let last = DeviceOp::Report {
        session: s.id,
        units: Units::new(12),
        last: true,
    };
    let refused = device_call_with(&*store, 1, 4, digest(4), last, T0 + 4).await;
    assert_eq!(refused, (DeviceCallOutcome::KeyVersionRefused, None));
    assert_eq!(
        store.session(s.id, T0 + 4).await.unwrap().map(|x| x.amount),
        Some(amount(4 * PRICE))
    );
    reconciled(&*store).await;
}

/// A rotation makes epoch 1 pending: frames under epoch 0 are accepted (when the caller expects
/// the update), as are adverts under either epoch; the first frame under epoch 1 completes it,
/// after which epoch 0 is refused (frames and adverts) and nothing changes. The same key answers
/// the same rotation; any rotation while one is pending answers the pending one.
pub async fn a_rotation_accepts_the_old_key_until_the_first_frame_under_the_new_one(
    store: Arc<dyn Store>,
) {
    let (v0, e0, e1) = (
        KeyVersion::new(0).unwrap(),
        KeyEpoch::FIRST,
        KeyEpoch::new(1),
    );
    online_machine(&*store, 1, T0).await;
    let RotateOutcome::Issued(d) = store
        .rotate_device_key(device_id(1), &key("r1"), T0 + 1)
        .await
        .unwrap()
    else {
        panic!("not issued")
    };
    assert_eq!((d.keys.epoch, d.keys.pending), (e0, Some(e1)));
    assert_eq!(keys_of(&*store, 1).await, d.keys);
    assert!(matches!(
        store.rotate_device_key(device_id(1), &key("r2"), T0 + 1).await.unwrap(),
        RotateOutcome::Existing(x) if x.keys.pending == Some(e1)
    ));
    // Under the old key, without expecting the update (a stale read): refused, nothing saved.
    let stale = device_call_keyed(
        &*store,
        v0,
        (e0, None),
        1,
        2,
        digest(2),
        DeviceOp::Poll,
        T0 + 2,
    )
    .await;
    assert_eq!(stale, (DeviceCallOutcome::KeyVersionRefused, None));
    let hb = DeviceOp::Heartbeat(telemetry(1));
    let old = device_call_keyed(
        &*store,
        v0,
        (e0, Some(e1)),
        1,
        2,
        digest(2),
        hb.clone(),
        T0 + 2,
    )
    .await;
    assert!(matches!(old.0, DeviceCallOutcome::Fresh(_)), "{old:?}");
    assert_eq!(keys_of(&*store, 1).await.pending, Some(e1));
    // Adverts under either key pay while the rotation is pending.
    fund(&*store, "alice", 1000).await;
    let mut under_new = pay_cmd("alice", "p1", 1, 7, 300, T0 + 3);
    under_new.key_epoch = e1;
    let s = created(&*store, &under_new).await;
    // The first frame under the new key completes the rotation.
    let press = device_call_keyed(
        &*store,
        v0,
        (e1, None),
        1,
        3,
        digest(3),
        DeviceOp::Press,
        T0 + 4,
    )
    .await;
    assert!(matches!(press.0, DeviceCallOutcome::Fresh(_)), "{press:?}");
    let keys = keys_of(&*store, 1).await;
    assert_eq!((keys.epoch, keys.pending), (e1, None));
    // The old key is refused for good, frames and adverts, and changes nothing.
    let before = machine_snapshot(&*store, 1, s.id, T0 + 5).await;
    let replay =
        device_call_keyed(&*store, v0, (e0, None), 1, 4, digest(4), hb.clone(), T0 + 5).await;
    assert_eq!(replay, (DeviceCallOutcome::KeyVersionRefused, None));
    let retry = device_call_keyed(&*store, v0, (e0, Some(e1)), 1, 2, digest(2), hb, T0 + 5).await;
    assert_eq!(retry, (DeviceCallOutcome::KeyVersionRefused, None));
    assert_eq!(
        store
            .pay(&pay_cmd("alice", "p2", 1, 8, 300, T0 + 5))
            .await
            .unwrap(),
        PayOutcome::KeyRefused
    );
    assert_eq!(machine_snapshot(&*store, 1, s.id, T0 + 5).await, before);
    // The same key answers that rotation again; a new key issues epoch 2.
    assert!(matches!(
        store.rotate_device_key(device_id(1), &key("r1"), T0 + 6).await.unwrap(),
        RotateOutcome::Existing(x) if x.keys.epoch == e1 && x.keys.pending.is_none()
    ));
    assert!(matches!(
        store.rotate_device_key(device_id(1), &key("r3"), T0 + 6).await.unwrap(),
        RotateOutcome::Issued(x) if x.keys.pending == Some(KeyEpoch::new(2))
    ));
    // A revoked machine is never re-keyed.
    store
        .revoke_device(device_id(1), "gone", T0 + 7)
        .await
        .unwrap();
    assert!(matches!(
        store
            .rotate_device_key(device_id(1), &key("r4"), T0 + 8)
            .await
            .unwrap(),
        RotateOutcome::Revoked(_)
    ));
    reconciled(&*store).await;
}

// ---------------------------------------------------------------------------------------------
// Users' top-ups through a payment provider (issue 12, docs/topups.md)
// ---------------------------------------------------------------------------------------------

pub fn topup_id(n: u8) -> TopUpId {
    TopUpId::from_bytes([0x70, n, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, n])
}

pub fn topup_refund_id(n: u8) -> TopUpRefundId {
    TopUpRefundId::from_bytes([0x7f, n, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, n])
}

pub fn eur() -> Currency {
    Currency::parse("EUR").unwrap()
}

/// `who` starts a top-up of `minor` EUR cents through `provider` with key `idem`; id `topup_id(n)`.
pub fn start_cmd(
    who: &str,
    idem: &str,
    provider: Provider,
    minor: i64,
    n: u8,
    now: u64,
) -> NewProviderTopUp {
    NewProviderTopUp {
        id: topup_id(n),
        user: user(who),
        provider,
        amount: amount(minor),
        currency: eur(),
        key: key(idem),
        now,
    }
}

/// Start a top-up that must be created.
pub async fn started(store: &dyn Store, cmd: &NewProviderTopUp) -> ProviderTopUp {
    match store.start_topup(cmd).await.unwrap() {
        StartTopUpOutcome::Created(t) => t,
        other => panic!("expected a created top-up, got {other:?}"),
    }
}

/// A verified notification of `t`'s provider about `t` (by id).
pub fn event_on(
    t: &ProviderTopUp,
    event_key: &str,
    kind: ProviderEventKind,
    now: u64,
) -> ProviderEvent {
    ProviderEvent {
        provider: t.provider,
        key: event_key.into(),
        topup: TopUpLocator::Id(t.id),
        kind,
        now,
    }
}

/// The provider's success for exactly `t`'s amount and currency.
pub fn success_of(t: &ProviderTopUp, event_key: &str, now: u64) -> ProviderEvent {
    event_on(
        t,
        event_key,
        ProviderEventKind::Succeeded {
            amount: t.amount,
            currency: t.currency,
            transaction_id: format!("txn-{}", t.id),
        },
        now,
    )
}

/// Apply an event that must apply; returns the top-up and wallet after it.
pub async fn applied(store: &dyn Store, ev: &ProviderEvent) -> (ProviderTopUp, Wallet) {
    match store.apply_provider_event(ev).await.unwrap() {
        ProviderEventOutcome::Applied { topup, wallet } => (topup, wallet),
        other => panic!("expected {ev:?} to apply, got {other:?}"),
    }
}

/// A started top-up of `minor` by `who` that the provider's success credited.
pub async fn credited_topup(
    store: &dyn Store,
    who: &str,
    provider: Provider,
    minor: i64,
    n: u8,
) -> ProviderTopUp {
    let t = started(
        store,
        &start_cmd(who, &format!("t{n}"), provider, minor, n, T0),
    )
    .await;
    let (t, _) = applied(store, &success_of(&t, &format!("evt-ok-{n}"), T0 + 1)).await;
    assert_eq!(t.credited, amount(minor));
    t
}

pub fn topup_refund_cmd(
    topup: TopUpId,
    n: u8,
    minor: i64,
    idem: &str,
    now: u64,
) -> TopUpRefundCommand {
    TopUpRefundCommand {
        topup,
        id: topup_refund_id(n),
        amount: amount(minor),
        reason: reason("user asked for the unspent part"),
        key: key(idem),
        actor: OPERATOR.into(),
        now,
    }
}

/// What an event that changes nothing must leave unchanged.
async fn topup_state(
    store: &dyn Store,
    id: TopUpId,
    who: &str,
) -> (Audit, Wallet, Option<ProviderTopUp>) {
    (
        reconciled(store).await,
        store.wallet(&user(who), T0 + 50).await.unwrap(),
        store.topup(id).await.unwrap(),
    )
}

pub async fn a_provider_top_up_is_started_once_per_user_and_key(store: Arc<dyn Store>) {
    let cmd = start_cmd("alice", "k1", Provider::Stripe, 1000, 1, T0);

    let t = started(&*store, &cmd).await;

    assert_eq!(
        (
            t.id,
            t.status,
            t.amount,
            t.currency,
            t.credited,
            t.provider_ref.clone()
        ),
        (
            topup_id(1),
            TopUpStatus::Pending,
            amount(1000),
            eur(),
            Amount::ZERO,
            None
        )
    );
    assert_eq!(store.topup(t.id).await.unwrap(), Some(t.clone()));
    // The same key again (with a fresh id) is the same top-up.
    let again = NewProviderTopUp {
        id: topup_id(2),
        now: T0 + 5,
        ..cmd.clone()
    };
    assert_eq!(
        store.start_topup(&again).await.unwrap(),
        StartTopUpOutcome::Existing(t.clone())
    );
    // Another amount or provider under the key is refused.
    let other_amount = NewProviderTopUp {
        id: topup_id(3),
        amount: amount(999),
        ..cmd.clone()
    };
    assert_eq!(
        store.start_topup(&other_amount).await.unwrap(),
        StartTopUpOutcome::KeyReused
    );
    let other_provider = NewProviderTopUp {
        id: topup_id(4),
        provider: Provider::WechatPay,
        ..cmd.clone()
    };
    assert_eq!(
        store.start_topup(&other_provider).await.unwrap(),
        StartTopUpOutcome::KeyReused
    );
    for n in [2, 3, 4] {
        assert_eq!(store.topup(topup_id(n)).await.unwrap(), None);
    }
    // Keys are per user.
    let bob = started(
        &*store,
        &start_cmd("bob", "k1", Provider::WechatPay, 500, 5, T0),
    )
    .await;
    assert_eq!(bob.user, user("bob"));
    assert_eq!(
        store.wallet(&user("alice"), T0 + 1).await.unwrap(),
        Wallet::default()
    );
    let audit = reconciled(&*store).await;
    assert_eq!((audit.provider_credits, audit.topups_net), (0, 0));
}

#[allow(clippy::too_many_lines, reason = "one scenario, step by step")]
pub async fn a_top_up_is_found_by_its_id_and_its_providers_ref_never_by_the_other_provider(
    store: Arc<dyn Store>,
) {
    let t = started(
        &*store,
        &start_cmd("alice", "k1", Provider::Stripe, 1000, 1, T0),
    )
    .await;
    let w = started(
        &*store,
        &start_cmd("alice", "k2", Provider::WechatPay, 800, 2, T0),
    )
    .await;

    let attached = store
        .attach_topup_ref(t.id, "pi_123", Some("pi_123_secret_abc"), T0 + 1)
        .await
        .unwrap()
        .expect("the top-up exists");

    assert_eq!(attached.provider_ref.as_deref(), Some("pi_123"));
    assert_eq!(attached.client_secret.as_deref(), Some("pi_123_secret_abc"));
    assert_eq!(store.topup(t.id).await.unwrap(), Some(attached.clone()));
    // The same values again change nothing.
    let again = store
        .attach_topup_ref(t.id, "pi_123", Some("pi_123_secret_abc"), T0 + 2)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (again.provider_ref, again.client_secret),
        (
            attached.provider_ref.clone(),
            attached.client_secret.clone()
        )
    );
    assert_eq!(
        store
            .attach_topup_ref(topup_id(9), "pi_9", None, T0 + 2)
            .await
            .unwrap(),
        None
    );
    store
        .attach_topup_ref(w.id, "wx_prepay_1", None, T0 + 2)
        .await
        .unwrap()
        .unwrap();

    let by_ref = |p, r: &str| TopUpLocator::ProviderRef(p, r.to_owned());
    let found = store
        .find_topup(&by_ref(Provider::Stripe, "pi_123"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.id, t.id);
    assert_eq!(
        store
            .find_topup(&by_ref(Provider::WechatPay, "pi_123"))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .find_topup(&by_ref(Provider::Stripe, "pi_999"))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .find_topup(&by_ref(Provider::WechatPay, "wx_prepay_1"))
            .await
            .unwrap()
            .unwrap()
            .id,
        w.id
    );
    assert_eq!(
        store
            .find_topup(&TopUpLocator::Id(t.id))
            .await
            .unwrap()
            .unwrap()
            .id,
        t.id
    );
    assert_eq!(
        store
            .find_topup(&TopUpLocator::Id(topup_id(9)))
            .await
            .unwrap(),
        None
    );

    // A WeChat Pay notification naming the Stripe top-up's id finds nothing.
    let before = topup_state(&*store, t.id, "alice").await;
    let foreign = ProviderEvent {
        provider: Provider::WechatPay,
        ..success_of(&t, "txn:1", T0 + 3)
    };
    assert_eq!(
        store.apply_provider_event(&foreign).await.unwrap(),
        ProviderEventOutcome::UnknownTopUp
    );
    assert_eq!(topup_state(&*store, t.id, "alice").await, before);

    // A notification by the provider's ref applies.
    let by_pi = ProviderEvent {
        topup: by_ref(Provider::Stripe, "pi_123"),
        ..success_of(&t, "evt_1", T0 + 4)
    };
    let (after, wallet) = applied(&*store, &by_pi).await;
    assert_eq!(
        (after.id, after.status, wallet.available),
        (t.id, TopUpStatus::Succeeded, amount(1000))
    );
    reconciled(&*store).await;
}

pub async fn a_verified_success_credits_the_wallet_exactly_once(store: Arc<dyn Store>) {
    let t = started(
        &*store,
        &start_cmd("alice", "k1", Provider::Stripe, 1000, 1, T0),
    )
    .await;
    let ok = success_of(&t, "evt_1", T0 + 1);

    let (after, wallet) = applied(&*store, &ok).await;

    assert_eq!(
        (after.status, after.credited, after.debited),
        (TopUpStatus::Succeeded, amount(1000), Amount::ZERO)
    );
    assert_eq!(
        after.transaction_id.as_deref(),
        Some(format!("txn-{}", t.id).as_str())
    );
    assert_eq!(wallet.available, amount(1000));
    assert_eq!(store.wallet(&user("alice"), T0 + 2).await.unwrap(), wallet);
    assert_eq!(store.topup(t.id).await.unwrap(), Some(after.clone()));
    let audit = reconciled(&*store).await;
    assert_eq!(
        (
            audit.provider_credits,
            audit.provider_debits,
            audit.clearing,
            audit.topups_net
        ),
        (1000, 0, -1000, 1000)
    );

    // The same event again, and another success for the same payment, credit nothing.
    assert_eq!(
        store.apply_provider_event(&ok).await.unwrap(),
        ProviderEventOutcome::Duplicate
    );
    let other = success_of(&t, "evt_2", T0 + 3);
    assert!(matches!(
        store.apply_provider_event(&other).await.unwrap(),
        ProviderEventOutcome::Ignored(_)
    ));
    assert_eq!(
        store.apply_provider_event(&other).await.unwrap(),
        ProviderEventOutcome::Duplicate
    );
    assert_eq!(
        store
            .wallet(&user("alice"), T0 + 4)
            .await
            .unwrap()
            .available,
        amount(1000)
    );
    let topup = store.topup(t.id).await.unwrap().unwrap();
    assert_eq!(
        (topup.credited, topup.status),
        (amount(1000), TopUpStatus::Succeeded)
    );
    assert_eq!(reconciled(&*store).await.provider_credits, 1000);
}

pub async fn concurrent_deliveries_of_one_success_credit_once(store: Arc<dyn Store>) {
    let t = started(
        &*store,
        &start_cmd("alice", "k1", Provider::WechatPay, 1000, 1, T0),
    )
    .await;
    let ok = success_of(&t, "txn:4200001", T0 + 1);

    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = Arc::clone(&store);
            let ok = ok.clone();
            tokio::spawn(async move { store.apply_provider_event(&ok).await.unwrap() })
        })
        .collect();
    let mut applied_count = 0;
    for task in tasks {
        match task.await.unwrap() {
            ProviderEventOutcome::Applied { .. } => applied_count += 1,
            ProviderEventOutcome::Duplicate => {}
            other => panic!("unexpected {other:?}"),
        }
    }

    assert_eq!(
        applied_count, 1,
        "one delivery credits, the rest are duplicates"
    );
    assert_eq!(
        store
            .wallet(&user("alice"), T0 + 2)
            .await
            .unwrap()
            .available,
        amount(1000)
    );
    assert_eq!(
        store.topup(t.id).await.unwrap().unwrap().credited,
        amount(1000)
    );
    let audit = reconciled(&*store).await;
    assert_eq!((audit.provider_credits, audit.topups_net), (1000, 1000));
}

pub async fn concurrent_different_events_on_one_top_up_all_apply(store: Arc<dyn Store>) {
    // The success and four refunds race (a refund may land before the success).
    let t = started(
        &*store,
        &start_cmd("alice", "k1", Provider::WechatPay, 1000, 1, T0),
    )
    .await;
    let mut events = vec![success_of(&t, "txn:1", T0 + 1)];
    events.extend((0..4).map(|i| {
        event_on(
            &t,
            &format!("refund:{i}"),
            ProviderEventKind::Refunded {
                refund: None,
                amount: amount(10),
            },
            T0 + 1,
        )
    }));

    let tasks: Vec<_> = events
        .into_iter()
        .map(|ev| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.apply_provider_event(&ev).await.unwrap() })
        })
        .collect();
    for task in tasks {
        let out = task.await.unwrap();
        assert!(
            matches!(out, ProviderEventOutcome::Applied { .. }),
            "none is lost: {out:?}"
        );
    }

    let after = store.topup(t.id).await.unwrap().unwrap();
    assert_eq!(
        (
            after.credited,
            after.provider_refunded,
            after.debited,
            after.status
        ),
        (amount(1000), amount(40), amount(40), TopUpStatus::Succeeded)
    );
    assert_eq!(
        store
            .wallet(&user("alice"), T0 + 2)
            .await
            .unwrap()
            .available,
        amount(960)
    );
    let audit = reconciled(&*store).await;
    assert_eq!(
        (
            audit.provider_credits,
            audit.provider_debits,
            audit.topups_net
        ),
        (1000, 40, 960)
    );
}

pub async fn a_refund_or_dispute_before_the_success_is_remembered_and_applied_with_the_credit(
    store: Arc<dyn Store>,
) {
    let t = started(
        &*store,
        &start_cmd("alice", "k1", Provider::Stripe, 1000, 1, T0),
    )
    .await;

    let (early, wallet) = applied(
        &*store,
        &event_on(
            &t,
            "evt_r",
            ProviderEventKind::RefundedTotal { total: amount(300) },
            T0 + 1,
        ),
    )
    .await;
    assert_eq!(
        (early.status, early.provider_refunded, wallet.available),
        (TopUpStatus::Pending, amount(300), Amount::ZERO)
    );
    let (early, _) = applied(
        &*store,
        &event_on(
            &t,
            "evt_d",
            ProviderEventKind::Disputed {
                amount: amount(200),
            },
            T0 + 2,
        ),
    )
    .await;
    assert_eq!((early.disputed, early.debited), (amount(200), Amount::ZERO));
    reconciled(&*store).await;

    let (after, wallet) = applied(&*store, &success_of(&t, "evt_ok", T0 + 3)).await;

    assert_eq!(
        (
            after.status,
            after.credited,
            after.debited,
            after.unrecovered()
        ),
        (
            TopUpStatus::Succeeded,
            amount(1000),
            amount(500),
            Amount::ZERO
        )
    );
    assert_eq!(wallet.available, amount(500));
    assert_eq!(
        store
            .wallet(&user("alice"), T0 + 4)
            .await
            .unwrap()
            .available,
        amount(500)
    );

    // A full refund before the success: credited and taken back at once.
    let u = started(
        &*store,
        &start_cmd("bob", "k1", Provider::Stripe, 700, 2, T0),
    )
    .await;
    applied(
        &*store,
        &event_on(
            &u,
            "evt_r2",
            ProviderEventKind::RefundedTotal { total: amount(700) },
            T0 + 1,
        ),
    )
    .await;
    let (after, wallet) = applied(&*store, &success_of(&u, "evt_ok2", T0 + 2)).await;
    assert_eq!(
        (after.status, after.debited, wallet.available),
        (TopUpStatus::Refunded, amount(700), Amount::ZERO)
    );
    let audit = reconciled(&*store).await;
    assert_eq!(
        (
            audit.provider_credits,
            audit.provider_debits,
            audit.topups_net
        ),
        (1700, 1200, 500)
    );
}

pub async fn a_success_with_another_amount_or_currency_credits_nothing_and_is_recorded(
    store: Arc<dyn Store>,
) {
    let t = started(
        &*store,
        &start_cmd("alice", "k1", Provider::WechatPay, 1000, 1, T0),
    )
    .await;
    let before = topup_state(&*store, t.id, "alice").await;
    let wrong_amount = event_on(
        &t,
        "txn:a",
        ProviderEventKind::Succeeded {
            amount: amount(999),
            currency: eur(),
            transaction_id: "4200a".into(),
        },
        T0 + 1,
    );
    let wrong_currency = event_on(
        &t,
        "txn:b",
        ProviderEventKind::Succeeded {
            amount: amount(1000),
            currency: Currency::parse("CNY").unwrap(),
            transaction_id: "4200b".into(),
        },
        T0 + 2,
    );

    for ev in [&wrong_amount, &wrong_currency] {
        let out = store.apply_provider_event(ev).await.unwrap();
        let ProviderEventOutcome::Mismatch(m) = out else {
            panic!("a wrong amount or currency is a mismatch: {out:?}");
        };
        assert!(m.mismatch.is_some());
        assert_eq!((m.credited, m.status), (Amount::ZERO, TopUpStatus::Pending));
        assert_eq!(
            store.apply_provider_event(ev).await.unwrap(),
            ProviderEventOutcome::Duplicate
        );
    }

    let (audit, wallet, stored) = topup_state(&*store, t.id, "alice").await;
    assert_eq!((audit, wallet), (before.0, before.1));
    let stored = stored.unwrap();
    assert!(
        stored.mismatch.is_some(),
        "the mismatch is recorded for the operator"
    );
    assert_eq!(stored.credited, Amount::ZERO);
    // The correct success still credits.
    let (after, wallet) = applied(&*store, &success_of(&t, "txn:c", T0 + 3)).await;
    assert_eq!(
        (after.credited, wallet.available),
        (amount(1000), amount(1000))
    );
    reconciled(&*store).await;
}

pub async fn an_event_for_an_unknown_top_up_changes_nothing_and_is_not_recorded(
    store: Arc<dyn Store>,
) {
    let cmd = start_cmd("alice", "k1", Provider::Stripe, 1000, 1, T0);
    let early = ProviderEvent {
        provider: Provider::Stripe,
        key: "evt_early".into(),
        topup: TopUpLocator::Id(cmd.id),
        kind: ProviderEventKind::Succeeded {
            amount: amount(1000),
            currency: eur(),
            transaction_id: "pi_1".into(),
        },
        now: T0,
    };
    let by_ref = ProviderEvent {
        key: "evt_early_ref".into(),
        topup: TopUpLocator::ProviderRef(Provider::Stripe, "pi_1".into()),
        kind: ProviderEventKind::Disputed {
            amount: amount(100),
        },
        ..early.clone()
    };
    let before = reconciled(&*store).await;

    for ev in [&early, &by_ref] {
        assert_eq!(
            store.apply_provider_event(ev).await.unwrap(),
            ProviderEventOutcome::UnknownTopUp
        );
    }

    assert_eq!(reconciled(&*store).await, before);
    assert_eq!(store.topup(cmd.id).await.unwrap(), None);
    assert_eq!(
        store.wallet(&user("alice"), T0).await.unwrap(),
        Wallet::default()
    );
    // Once the top-up exists, the same events apply (they were not recorded as seen).
    started(&*store, &cmd).await;
    store
        .attach_topup_ref(cmd.id, "pi_1", None, T0 + 1)
        .await
        .unwrap()
        .unwrap();
    let (after, wallet) = applied(&*store, &early).await;
    assert_eq!(
        (after.credited, wallet.available),
        (amount(1000), amount(1000))
    );
    let (after, wallet) = applied(&*store, &by_ref).await;
    assert_eq!(
        (after.debited, wallet.available),
        (amount(100), amount(900))
    );
    reconciled(&*store).await;
}

pub async fn a_failure_then_a_success_credits_and_a_success_then_a_failure_is_ignored(
    store: Arc<dyn Store>,
) {
    let failed = ProviderEventKind::Failed {
        reason: "card_declined".into(),
    };
    let a = started(
        &*store,
        &start_cmd("alice", "k1", Provider::Stripe, 1000, 1, T0),
    )
    .await;

    let (after, _) = applied(&*store, &event_on(&a, "evt_f", failed.clone(), T0 + 1)).await;
    assert_eq!(after.status, TopUpStatus::Failed);
    assert_eq!(after.failure.as_deref(), Some("card_declined"));
    assert_eq!(
        store.topup(a.id).await.unwrap().unwrap().status,
        TopUpStatus::Failed
    );
    let (after, wallet) = applied(&*store, &success_of(&a, "evt_ok", T0 + 2)).await;
    assert_eq!(
        (after.status, after.credited, wallet.available),
        (TopUpStatus::Succeeded, amount(1000), amount(1000))
    );

    let b = credited_topup(&*store, "bob", Provider::Stripe, 500, 2).await;
    let out = store
        .apply_provider_event(&event_on(&b, "evt_f2", failed, T0 + 3))
        .await
        .unwrap();
    let ProviderEventOutcome::Ignored(ignored) = out else {
        panic!("a failure after a success changes nothing: {out:?}");
    };
    assert_eq!(ignored.status, TopUpStatus::Succeeded);
    let b_after = store.topup(b.id).await.unwrap().unwrap();
    assert_eq!(
        (b_after.status, b_after.credited),
        (TopUpStatus::Succeeded, amount(500))
    );
    assert_eq!(
        store.wallet(&user("bob"), T0 + 4).await.unwrap().available,
        amount(500)
    );
    reconciled(&*store).await;
}

pub async fn a_reversal_of_an_unspent_credit_debits_it_all_and_marks_the_top_up_refunded(
    store: Arc<dyn Store>,
) {
    let t = credited_topup(&*store, "alice", Provider::Stripe, 1000, 1).await;
    fund(&*store, "alice", 200).await;

    let (after, wallet) = applied(
        &*store,
        &event_on(
            &t,
            "evt_d",
            ProviderEventKind::Disputed {
                amount: amount(1000),
            },
            T0 + 5,
        ),
    )
    .await;

    assert_eq!(
        (after.status, after.debited, after.unrecovered()),
        (TopUpStatus::Refunded, amount(1000), Amount::ZERO)
    );
    assert_eq!(
        wallet.available,
        amount(200),
        "only the top-up's credit is taken back"
    );
    assert_eq!(
        store
            .wallet(&user("alice"), T0 + 6)
            .await
            .unwrap()
            .available,
        amount(200)
    );
    let audit = reconciled(&*store).await;
    assert_eq!(
        (
            audit.provider_credits,
            audit.provider_debits,
            audit.clearing,
            audit.topups_net
        ),
        (1000, 1000, 0, 0)
    );
    // A partial refund total after it raises nothing: the target is capped at the credit.
    let (after, _) = applied(
        &*store,
        &event_on(
            &t,
            "evt_r",
            ProviderEventKind::RefundedTotal { total: amount(400) },
            T0 + 7,
        ),
    )
    .await;
    assert_eq!(after.debited, amount(1000));
    assert_eq!(
        store
            .wallet(&user("alice"), T0 + 8)
            .await
            .unwrap()
            .available,
        amount(200)
    );
    reconciled(&*store).await;
}

pub async fn a_reversal_after_spending_debits_only_what_is_available_and_shows_the_rest(
    store: Arc<dyn Store>,
) {
    online_machine(&*store, 1, T0).await;
    let t = credited_topup(&*store, "alice", Provider::Stripe, 1000, 1).await;
    created(&*store, &pay_cmd("alice", "p1", 1, 1, 700, T0 + 2)).await;
    assert_eq!(
        store
            .wallet(&user("alice"), T0 + 3)
            .await
            .unwrap()
            .available,
        amount(300)
    );

    let (after, wallet) = applied(
        &*store,
        &event_on(
            &t,
            "evt_r",
            ProviderEventKind::RefundedTotal {
                total: amount(1000),
            },
            T0 + 3,
        ),
    )
    .await;

    assert_eq!(
        (after.debited, after.unrecovered()),
        (amount(300), amount(700))
    );
    assert_eq!(after.status, TopUpStatus::Refunded);
    assert_eq!(
        (wallet.available, wallet.held),
        (Amount::ZERO, amount(700)),
        "never negative"
    );
    assert_eq!(
        store.topup(t.id).await.unwrap().unwrap().unrecovered(),
        amount(700)
    );
    let audit = reconciled(&*store).await;
    assert_eq!((audit.provider_debits, audit.topups_net), (300, 700));
    // The next fact about it takes what became available since, still never more than owed.
    fund(&*store, "alice", 500).await;
    let (after, wallet) = applied(
        &*store,
        &event_on(
            &t,
            "evt_d",
            ProviderEventKind::Disputed {
                amount: amount(100),
            },
            T0 + 4,
        ),
    )
    .await;
    assert_eq!(
        (after.debited, after.unrecovered()),
        (amount(800), amount(200))
    );
    assert_eq!(wallet.available, Amount::ZERO);
    reconciled(&*store).await;
}

#[allow(clippy::too_many_lines, reason = "one outcome per assertion")]
pub async fn an_operator_refund_of_a_top_up_is_taken_at_request_and_answered_by_key(
    store: Arc<dyn Store>,
) {
    let t = credited_topup(&*store, "alice", Provider::Stripe, 1000, 1).await;
    let cmd = topup_refund_cmd(t.id, 1, 300, "r1", T0 + 10);

    let out = store.request_topup_refund(&cmd).await.unwrap();

    let TopUpRefundOutcome::Requested {
        refund,
        topup,
        wallet,
    } = out
    else {
        panic!("a refund of unspent credit is requested: {out:?}");
    };
    assert_eq!(
        (
            refund.id,
            refund.topup,
            refund.amount,
            refund.status,
            refund.actor.as_str()
        ),
        (
            topup_refund_id(1),
            t.id,
            amount(300),
            TopUpRefundStatus::Requested,
            OPERATOR
        )
    );
    assert_eq!(
        (topup.refunds_committed, topup.debited, topup.status),
        (amount(300), amount(300), TopUpStatus::Succeeded)
    );
    assert_eq!(wallet.available, amount(700));
    assert_eq!(store.wallet(&user("alice"), T0 + 11).await.unwrap(), wallet);
    assert_eq!(store.topup(t.id).await.unwrap(), Some(topup.clone()));
    assert_eq!(
        store.topup_refunds(t.id).await.unwrap(),
        vec![refund.clone()]
    );
    let audit = reconciled(&*store).await;
    assert_eq!((audit.provider_debits, audit.topups_net), (300, 700));

    // Answered by key: the same amount is a replay, another amount is refused; nothing moves.
    let before = topup_state(&*store, t.id, "alice").await;
    let replay = TopUpRefundCommand {
        id: topup_refund_id(2),
        now: T0 + 12,
        ..cmd.clone()
    };
    let out = store.request_topup_refund(&replay).await.unwrap();
    let TopUpRefundOutcome::Replayed { refund: again, .. } = out else {
        panic!("the same key and amount is a replay: {out:?}");
    };
    assert_eq!(again.id, refund.id);
    let reused = topup_refund_cmd(t.id, 3, 301, "r1", T0 + 12);
    assert_eq!(
        store.request_topup_refund(&reused).await.unwrap(),
        TopUpRefundOutcome::KeyReused
    );
    assert_eq!(
        store
            .request_topup_refund(&topup_refund_cmd(t.id, 4, 701, "r2", T0 + 12))
            .await
            .unwrap(),
        TopUpRefundOutcome::ExceedsRefundable {
            refundable: amount(700)
        }
    );
    assert_eq!(
        store
            .request_topup_refund(&topup_refund_cmd(topup_id(9), 5, 1, "r3", T0 + 12))
            .await
            .unwrap(),
        TopUpRefundOutcome::NotFound
    );
    assert_eq!(topup_state(&*store, t.id, "alice").await, before);
    assert_eq!(store.topup_refunds(t.id).await.unwrap().len(), 1);

    // An uncredited top-up has nothing to refund.
    let pending = started(
        &*store,
        &start_cmd("alice", "k9", Provider::Stripe, 500, 2, T0),
    )
    .await;
    assert_eq!(
        store
            .request_topup_refund(&topup_refund_cmd(pending.id, 6, 100, "r4", T0 + 12))
            .await
            .unwrap(),
        TopUpRefundOutcome::NotCredited
    );
    assert_eq!(store.topup_refunds(pending.id).await.unwrap(), vec![]);

    // What the user spent is not refundable.
    online_machine(&*store, 1, T0).await;
    created(&*store, &pay_cmd("alice", "p1", 1, 1, 600, T0 + 13)).await;
    assert_eq!(
        store
            .request_topup_refund(&topup_refund_cmd(t.id, 7, 200, "r5", T0 + 14))
            .await
            .unwrap(),
        TopUpRefundOutcome::ExceedsRefundable {
            refundable: amount(100)
        }
    );
    // The rest of the unspent part goes, with another key.
    let out = store
        .request_topup_refund(&topup_refund_cmd(t.id, 8, 100, "r5", T0 + 15))
        .await
        .unwrap();
    assert!(
        matches!(out, TopUpRefundOutcome::Requested { .. }),
        "{out:?}"
    );
    assert_eq!(
        store
            .wallet(&user("alice"), T0 + 16)
            .await
            .unwrap()
            .available,
        Amount::ZERO
    );
    let refunds = store.topup_refunds(t.id).await.unwrap();
    assert_eq!(
        refunds.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![topup_refund_id(1), topup_refund_id(8)]
    );
    reconciled(&*store).await;
}

#[allow(clippy::too_many_lines, reason = "one scenario, step by step")]
pub async fn a_refused_top_up_refund_is_given_back_and_a_confirmed_one_stays(
    store: Arc<dyn Store>,
) {
    let t = credited_topup(&*store, "alice", Provider::Stripe, 1000, 1).await;
    for (n, minor, k) in [(1, 300, "r1"), (2, 200, "r2")] {
        let out = store
            .request_topup_refund(&topup_refund_cmd(t.id, n, minor, k, T0 + 10))
            .await
            .unwrap();
        assert!(
            matches!(out, TopUpRefundOutcome::Requested { .. }),
            "{out:?}"
        );
    }
    assert_eq!(
        store
            .wallet(&user("alice"), T0 + 11)
            .await
            .unwrap()
            .available,
        amount(500)
    );

    let (after, wallet) = applied(
        &*store,
        &event_on(
            &t,
            "evt_rf",
            ProviderEventKind::RefundFailed {
                refund: topup_refund_id(1),
                reason: "expired_card".into(),
            },
            T0 + 12,
        ),
    )
    .await;

    assert_eq!(
        (after.refunds_committed, after.debited),
        (amount(200), amount(200))
    );
    assert_eq!(
        wallet.available,
        amount(800),
        "the refused refund is given back"
    );
    let (after, wallet) = applied(
        &*store,
        &event_on(
            &t,
            "evt_rc",
            ProviderEventKind::RefundConfirmed {
                refund: topup_refund_id(2),
            },
            T0 + 13,
        ),
    )
    .await;
    assert_eq!(
        (after.debited, wallet.available),
        (amount(200), amount(800))
    );
    let refunds = store.topup_refunds(t.id).await.unwrap();
    assert_eq!(
        refunds.iter().map(|r| (r.id, r.status)).collect::<Vec<_>>(),
        vec![
            (topup_refund_id(1), TopUpRefundStatus::Failed),
            (topup_refund_id(2), TopUpRefundStatus::Succeeded)
        ]
    );
    assert_eq!(refunds[0].failure.as_deref(), Some("expired_card"));
    // A failure of a refund already failed gives nothing back twice.
    assert!(matches!(
        store
            .apply_provider_event(&event_on(
                &t,
                "evt_rf_again",
                ProviderEventKind::RefundFailed {
                    refund: topup_refund_id(1),
                    reason: "x".into()
                },
                T0 + 14,
            ))
            .await
            .unwrap(),
        ProviderEventOutcome::Ignored(_)
    ));
    assert_eq!(
        store
            .wallet(&user("alice"), T0 + 15)
            .await
            .unwrap()
            .available,
        amount(800)
    );
    let audit = reconciled(&*store).await;
    assert_eq!(
        (
            audit.provider_credits,
            audit.provider_debits,
            audit.topups_net
        ),
        (1300, 500, 800)
    );

    // WeChat Pay: a REFUND.SUCCESS naming our refund confirms it; refunding everything left
    // marks the top-up REFUNDED.
    let w = credited_topup(&*store, "bob", Provider::WechatPay, 600, 2).await;
    let out = store
        .request_topup_refund(&topup_refund_cmd(w.id, 3, 600, "r1", T0 + 20))
        .await
        .unwrap();
    let TopUpRefundOutcome::Requested { topup, wallet, .. } = out else {
        panic!("{out:?}");
    };
    assert_eq!(
        (topup.status, wallet.available),
        (TopUpStatus::Refunded, Amount::ZERO)
    );
    let (after, wallet) = applied(
        &*store,
        &event_on(
            &w,
            "refund:50300",
            ProviderEventKind::Refunded {
                refund: Some(topup_refund_id(3)),
                amount: amount(600),
            },
            T0 + 21,
        ),
    )
    .await;
    assert_eq!(
        (
            after.status,
            after.provider_refunded,
            after.debited,
            wallet.available
        ),
        (
            TopUpStatus::Refunded,
            amount(600),
            amount(600),
            Amount::ZERO
        )
    );
    assert_eq!(
        store.topup_refunds(w.id).await.unwrap()[0].status,
        TopUpRefundStatus::Succeeded
    );
    reconciled(&*store).await;
}

/// Every page of `filter`'s top-up list with `limit`, concatenated.
async fn all_topup_pages(store: &dyn Store, filter: &TopUpFilter, limit: u32) -> Vec<TopUpId> {
    let mut out = Vec::new();
    let mut after = None;
    for _ in 0..100 {
        let page = store
            .list_topups(filter, &crate::PageRequest { limit, after })
            .await
            .unwrap();
        assert!(page.items.len() <= limit as usize);
        for t in &page.items {
            assert!(filter.matches(t), "{t:?} is not one {filter:?} shows");
        }
        out.extend(page.items.iter().map(|t| t.id));
        match page.next {
            Some(n) => after = Some(n),
            None => return out,
        }
    }
    panic!("the list never ended");
}

#[allow(clippy::too_many_lines, reason = "one scenario, step by step")]
pub async fn the_top_up_list_filters_by_user_provider_status_and_time_newest_first(
    store: Arc<dyn Store>,
) {
    // (n, user, provider, created_at); 3 and 4 share a second (then by id, descending).
    let rows = [
        (1, "alice", Provider::Stripe, T0),
        (2, "bob", Provider::WechatPay, T0 + 10),
        (3, "alice", Provider::WechatPay, T0 + 20),
        (4, "bob", Provider::Stripe, T0 + 20),
        (5, "alice", Provider::Stripe, T0 + 30),
    ];
    for (n, who, provider, at) in rows {
        started(
            &*store,
            &start_cmd(who, &format!("k{n}"), provider, 100 * i64::from(n), n, at),
        )
        .await;
    }
    let t5 = store.topup(topup_id(5)).await.unwrap().unwrap();
    applied(&*store, &success_of(&t5, "evt_5", T0 + 31)).await;
    let t2 = store.topup(topup_id(2)).await.unwrap().unwrap();
    applied(
        &*store,
        &event_on(
            &t2,
            "txn:f",
            ProviderEventKind::Failed {
                reason: "closed".into(),
            },
            T0 + 31,
        ),
    )
    .await;
    let ids = |ns: &[u8]| ns.iter().map(|n| topup_id(*n)).collect::<Vec<_>>();
    let max = crate::PageRequest::MAX_LIMIT;

    let all = all_topup_pages(&*store, &TopUpFilter::default(), max).await;

    assert_eq!(all, ids(&[5, 4, 3, 2, 1]));
    for limit in [1, 2, 3] {
        assert_eq!(
            all_topup_pages(&*store, &TopUpFilter::default(), limit).await,
            all
        );
    }
    let page = store
        .list_topups(
            &TopUpFilter::default(),
            &crate::PageRequest {
                limit: 2,
                after: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        page.next,
        Some(crate::ListPosition {
            at: T0 + 20,
            id: topup_id(4).to_string()
        })
    );
    let check = |f: TopUpFilter, expected: Vec<TopUpId>| {
        let store = Arc::clone(&store);
        async move { assert_eq!(all_topup_pages(&*store, &f, 2).await, expected, "{f:?}") }
    };
    check(
        TopUpFilter {
            user: Some(user("alice")),
            ..TopUpFilter::default()
        },
        ids(&[5, 3, 1]),
    )
    .await;
    check(
        TopUpFilter {
            provider: Some(Provider::WechatPay),
            ..TopUpFilter::default()
        },
        ids(&[3, 2]),
    )
    .await;
    check(
        TopUpFilter {
            status: Some(TopUpStatus::Succeeded),
            ..TopUpFilter::default()
        },
        ids(&[5]),
    )
    .await;
    check(
        TopUpFilter {
            status: Some(TopUpStatus::Failed),
            ..TopUpFilter::default()
        },
        ids(&[2]),
    )
    .await;
    check(
        TopUpFilter {
            status: Some(TopUpStatus::Pending),
            ..TopUpFilter::default()
        },
        ids(&[4, 3, 1]),
    )
    .await;
    check(
        TopUpFilter {
            from: Some(T0 + 10),
            to: Some(T0 + 20),
            ..TopUpFilter::default()
        },
        ids(&[4, 3, 2]),
    )
    .await;
    check(
        TopUpFilter {
            user: Some(user("bob")),
            provider: Some(Provider::Stripe),
            from: Some(T0 + 20),
            ..TopUpFilter::default()
        },
        ids(&[4]),
    )
    .await;
    check(
        TopUpFilter {
            user: Some(user("carol")),
            ..TopUpFilter::default()
        },
        vec![],
    )
    .await;
    reconciled(&*store).await;
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// This file's source: the checks it defines and the list `conformance_tests!` expands.
    const SOURCE: &str = include_str!("conformance.rs");

    /// Every `pub async fn` at the start of a line whose parameters are `store: Arc<dyn Store>`.
    fn defined_checks() -> BTreeSet<&'static str> {
        SOURCE
            .split("\npub async fn ")
            .skip(1)
            .filter_map(|rest| {
                let (name, after) = rest.split_once('(')?;
                let (params, _) = after.split_once('{')?;
                let params: String = params.split_whitespace().collect();
                (params == "store:Arc<dynStore>,)" || params == "store:Arc<dynStore>)")
                    .then_some(name.trim())
            })
            .collect()
    }

    fn listed_checks() -> BTreeSet<&'static str> {
        let (_, list) = SOURCE
            .split_once("(@each $factory;\n")
            .expect("the macro's list");
        let (list, _) = list.split_once(");").expect("the end of the list");
        list.split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .collect()
    }

    #[test]
    fn every_check_defined_is_in_the_list_the_macro_expands() {
        let defined = defined_checks();
        assert!(
            defined.len() > 30,
            "the parser found the checks: {defined:?}"
        );
        assert_eq!(listed_checks(), defined);
    }
}
