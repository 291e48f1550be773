//! Session engine scenarios, driven through the real driver against the fake server.

use blepay_core::Units;
use blepay_device_client::RefusalCode;
use blepay_device_client::driver::Step;
use blepay_device_client::engine::{AbortReason, Action, Phase, RequestKind, Response, StopReason};

use blepay_proto::pb::v1 as pb;
use blepay_proto::seal_response;
use prost::Message;

use crate::common::{Rig, Status, T0, identity, session};

fn hold_250_at_10(rig: &Rig) {
    let expires = rig.server.time.get() + 120;
    rig.server.pay(1, 250, 10, expires);
}

#[test]
fn a_grant_starts_on_the_button_dispenses_to_the_cap_and_settles() {
    let mut rig = Rig::new();
    hold_250_at_10(&rig);

    // poll → grant
    assert!(matches!(
        rig.step(),
        Step::Exchanged {
            kind: RequestKind::Poll,
            ..
        }
    ));
    let s = session(1);
    assert_eq!(
        rig.take_actions(),
        [Action::AwaitStart {
            session: s,
            expires_at: rig.server.time.get() + 120,
            max_units: Units::new(25)
        }]
    );

    // button → start queued, nothing dispensed until the server says ACTIVE
    rig.press();
    assert!(matches!(rig.engine().phase(), Phase::Starting { .. }));
    assert_eq!(rig.engine().outbox().len(), 1);
    assert!(rig.take_actions().is_empty());
    assert!(matches!(
        rig.step(),
        Step::Exchanged {
            kind: RequestKind::Start,
            ..
        }
    ));
    assert_eq!(
        rig.take_actions(),
        [Action::StartDispensing {
            session: s,
            max_units: Units::new(25)
        }]
    );
    assert_eq!(rig.server.sess(1).status, Status::Active);

    // ticks → a progress report at 10 units
    rig.meter(6);
    rig.meter(6);
    assert_eq!(rig.engine().outbox().len(), 1);
    assert!(matches!(
        rig.step(),
        Step::Exchanged {
            kind: RequestKind::Report,
            ..
        }
    ));
    assert_eq!(rig.server.sess(1).units, 12);

    // the cap (25 units × 10 = 250 = hold) stops dispensing and queues the final report
    rig.meter(8);
    assert!(rig.take_actions().is_empty());
    rig.meter(5);
    assert_eq!(
        rig.take_actions(),
        [Action::StopDispensing {
            session: s,
            reason: StopReason::CapReached
        }]
    );
    assert_eq!(
        rig.engine().use_counter().get(),
        1,
        "bumped when the final report is queued"
    );
    assert!(
        rig.engine()
            .advert_flags()
            .contains(blepay_proto::AdvertFlags::BUSY)
    );
    assert!(matches!(
        rig.step(),
        Step::Exchanged {
            kind: RequestKind::FinalReport,
            ..
        }
    ));
    assert_eq!(
        rig.take_actions(),
        [Action::SessionSettled {
            session: s,
            units: Units::new(25),
            amount: 250,
            error: None
        }]
    );
    assert_eq!(rig.engine().phase(), &Phase::Idle);
    assert!(rig.engine().outbox().is_empty());
    assert!(
        !rig.engine()
            .advert_flags()
            .contains(blepay_proto::AdvertFlags::BUSY)
    );
    let sess = rig.server.sess(1);
    assert_eq!(
        (sess.status, sess.amount, sess.settles),
        (Status::Settled, 250, 1)
    );

    // idle again: the next thing it sends is a poll
    assert!(matches!(
        rig.step(),
        Step::Exchanged {
            kind: RequestKind::Poll,
            ..
        }
    ));
}

#[test]
fn an_expired_grant_is_ignored() {
    let mut rig = Rig::new();
    let now = rig.local;
    let tx = rig.engine().transmit(now).unwrap().unwrap();
    // an answer listing a grant whose expires_at is already past at the answer's server time
    let grant = pb::Grant {
        session_id: vec![1; 16],
        hold_amount: 250,
        price_per_unit: 10,
        expires_at: i64::try_from(T0).unwrap() - 1,
        use_counter: 0,
    };
    let body = pb::DeviceResponse {
        grants: vec![grant],
        ..Default::default()
    }
    .encode_to_vec();
    let tag: [u8; 16] = tx.frame[tx.frame.len() - 16..].try_into().unwrap();
    let answer = seal_response(&identity().key, &tag, tx.seq, T0, &body);
    let r = rig.engine().on_response(now, 200, &answer).unwrap();
    assert!(matches!(
        r,
        Response::Answered {
            kind: RequestKind::Poll,
            ..
        }
    ));
    assert_eq!(rig.engine().drain_actions().count(), 0);
    assert_eq!(rig.engine().phase(), &Phase::Idle);
    assert_eq!(rig.engine().stats().grants_expired, 1);
}

#[test]
fn a_second_grant_while_busy_is_ignored() {
    let mut rig = Rig::new();
    let expires = rig.server.time.get() + 120;
    rig.server.pay(1, 250, 10, expires);
    rig.server.pay(2, 500, 10, expires);
    rig.step();
    assert!(
        matches!(rig.engine().phase(), Phase::Granted { grant } if grant.session == session(1))
    );
    assert_eq!(rig.engine().stats().grants_ignored_busy, 1);

    // a later poll while waiting for the button lists both again: still only the first
    rig.wait(5);
    rig.step();
    assert!(
        matches!(rig.engine().phase(), Phase::Granted { grant } if grant.session == session(1))
    );
    assert_eq!(rig.engine().stats().grants_ignored_busy, 2);
    assert_eq!(rig.take_actions().len(), 1, "one AwaitStart only");
}

#[test]
fn a_start_refused_with_session_expired_goes_back_to_idle() {
    let mut rig = Rig::new();
    hold_250_at_10(&rig);
    rig.step();
    rig.take_actions();
    rig.press();
    // the server's sweeper expired the session meanwhile
    rig.server
        .state
        .borrow_mut()
        .sessions
        .get_mut(&[1; 16])
        .unwrap()
        .status = Status::Expired;
    rig.step();
    assert_eq!(
        rig.take_actions(),
        [Action::SessionAborted {
            session: session(1),
            reason: AbortReason::Refused(RefusalCode::SessionExpired)
        }]
    );
    assert_eq!(rig.engine().phase(), &Phase::Idle);
    assert!(rig.engine().outbox().is_empty());
    assert_eq!(rig.engine().use_counter().get(), 0);
}

#[test]
fn the_button_after_the_grant_expired_aborts_without_sending_a_start() {
    let mut rig = Rig::new();
    hold_250_at_10(&rig);
    rig.step();
    rig.take_actions();
    rig.local += 121; // only the machine's clock moves: no tick ran in between
    rig.press();
    assert_eq!(
        rig.take_actions(),
        [Action::SessionAborted {
            session: session(1),
            reason: AbortReason::Expired
        }]
    );
    assert!(rig.engine().outbox().is_empty());
}

#[test]
fn a_grant_nobody_starts_expires_on_its_own() {
    let mut rig = Rig::new();
    hold_250_at_10(&rig);
    rig.step();
    rig.take_actions();
    rig.wait(120);
    assert_eq!(
        rig.take_actions(),
        [Action::SessionAborted {
            session: session(1),
            reason: AbortReason::Expired
        }]
    );
    assert_eq!(rig.engine().phase(), &Phase::Idle);
}

#[test]
fn no_water_flows_before_the_start_is_acknowledged_and_retries_send_the_same_bytes() {
    let mut rig = Rig::new();
    hold_250_at_10(&rig);
    rig.step();
    rig.take_actions();
    rig.press();
    rig.server.fail_before.set(1);
    let first = match rig.step() {
        Step::TransportFailed {
            kind: RequestKind::Start,
            seq,
            ..
        } => seq,
        other => panic!("{other:?}"),
    };
    assert!(
        rig.take_actions().is_empty(),
        "no StartDispensing on a failed start"
    );
    assert!(matches!(rig.step(), Step::Idle), "backing off");
    // the server executes the start but its answer is lost: the retry gets the stored answer
    rig.wait(1);
    rig.server.lose_answer.set(1);
    let frame_before = rig.engine().outbox().front().unwrap().frame.clone();
    assert!(matches!(rig.step(), Step::TransportFailed { .. }));
    rig.wait(2);
    match rig.step() {
        Step::Exchanged {
            kind: RequestKind::Start,
            seq,
            status: 200,
            ..
        } => assert_eq!(seq, first),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        rig.server.state.borrow().last.as_ref().unwrap().1,
        frame_before
    );
    assert_eq!(
        rig.server
            .state
            .borrow()
            .executed
            .iter()
            .filter(|&&s| s == first)
            .count(),
        1
    );
    assert!(matches!(
        rig.take_actions().as_slice(),
        [Action::StartDispensing { .. }]
    ));
}

#[test]
fn a_forged_answer_is_not_trusted_and_the_request_is_retried() {
    let mut rig = Rig::new();
    let now = rig.local;
    let tx = rig.engine().transmit(now).unwrap().unwrap();
    let (_, mut answer) = rig.server.handle(&tx.frame);
    *answer.last_mut().unwrap() ^= 1;
    let r = rig.engine().on_response(now, 200, &answer).unwrap();
    assert!(matches!(r, Response::NotAuthentic { .. }));
    assert!(!rig.engine().clock().is_synced());
    rig.wait(1);
    let again = rig.engine().transmit(now + 1).unwrap().unwrap();
    assert_eq!(again, tx);
}

#[test]
fn the_end_of_dispensing_sends_the_final_report_with_the_units_counted() {
    let mut rig = Rig::new();
    hold_250_at_10(&rig);
    rig.step();
    rig.press();
    rig.step();
    rig.meter(7);
    rig.end();
    rig.settle_down();
    let acts = rig.take_actions();
    assert!(acts.contains(&Action::StopDispensing {
        session: session(1),
        reason: StopReason::Ended
    }));
    assert!(acts.contains(&Action::SessionSettled {
        session: session(1),
        units: Units::new(7),
        amount: 70,
        error: None
    }));
}

#[test]
fn no_flow_for_the_timeout_ends_dispensing_and_progress_reports_follow_time() {
    let mut rig = Rig::new();
    hold_250_at_10(&rig);
    rig.step();
    rig.press();
    rig.step();
    for _ in 0..3 {
        rig.wait(10);
        rig.meter(1);
    }
    // 20 s after the start, with 1 new unit: a time-based progress report (every 20 s)
    assert_eq!(rig.engine().outbox().len(), 1);
    rig.settle_down();
    assert_eq!(rig.server.sess(1).units, 1, "reported at the 20 s mark");
    rig.wait(15);
    assert!(rig.take_actions().contains(&Action::StopDispensing {
        session: session(1),
        reason: StopReason::NoFlow
    }));
    rig.settle_down();
    assert_eq!(rig.server.sess(1).amount, 30);
}

#[test]
fn next_wakeup_is_never_later_than_the_next_slot_or_poll() {
    let mut rig = Rig::new();
    rig.step();
    let now = rig.local;
    let at = rig.engine().next_wakeup(now);
    assert!(at > now && at <= now + 30, "{at} vs {now}");
}
