//! Session engine scenarios, driven through the real driver against the fake server.

use blepay_core::Units;
use blepay_device_client::RefusalCode;
use blepay_device_client::driver::{Driver, Step};
use blepay_device_client::engine::{
    AbortReason, Action, Config, DEFAULT_HEARTBEAT_SECS, DEFAULT_SEQ_RESERVE, Engine,
    FAULT_SEQ_LOW, NotStarted, Phase, RequestKind, Response, StopReason,
};
use blepay_device_client::log::MemLog;
use blepay_device_client::transport::{LinkStatus, Transport};
use blepay_proto::AdvertFlags;
use blepay_proto::pb::v1 as pb;
use blepay_proto::seal_response;
use prost::Message;

use crate::common::{
    ACTIVE_TIMEOUT, FakeServer, LOCAL0, Lost, Rig, Status, config, identity, session,
};

fn hold_250_at_10(rig: &Rig) {
    let expires = rig.server.time.get() + 120;
    rig.server.pay(1, 250, 10, expires);
}

/// A rig past its boot heartbeat: clock synced, idle.
fn booted() -> Rig {
    let mut rig = Rig::new();
    assert!(matches!(
        rig.step(),
        Step::Exchanged {
            kind: RequestKind::Heartbeat,
            ..
        }
    ));
    assert!(rig.engine().clock().is_synced());
    rig
}

fn exchanged_kind(step: &Step<Lost>) -> Option<RequestKind> {
    match step {
        Step::Exchanged { kind, .. } => Some(*kind),
        _ => None,
    }
}

#[test]
fn an_idle_machine_sends_only_a_heartbeat_every_interval() {
    let mut rig = Rig::new();
    let interval = rig.engine().config().heartbeat_interval_secs;
    assert_eq!(interval, DEFAULT_HEARTBEAT_SECS);
    let mut sent_at = Vec::new();
    // five intervals of idling, one minute at a time
    for minute in 0..=(5 * interval / 60) {
        if minute > 0 {
            rig.wait(60);
        }
        if let Step::Exchanged { kind, .. } = rig.step() {
            assert_eq!(kind, RequestKind::Heartbeat);
            sent_at.push(rig.local);
        }
        assert!(matches!(rig.step(), Step::Idle), "one exchange at a time");
    }
    assert_eq!(sent_at.len(), 6, "the boot heartbeat and one per interval");
    for w in sent_at.windows(2) {
        assert_eq!(w[1] - w[0], interval);
    }
    assert!(
        rig.kinds().iter().all(|k| *k == "heartbeat"),
        "{:?}",
        rig.kinds()
    );
    assert!(
        rig.engine().outbox().is_empty(),
        "heartbeats are not persisted"
    );
    // the wakeup never sleeps through the next heartbeat
    let now = rig.local;
    assert!(rig.engine().next_wakeup(now) <= sent_at[5] + interval);
}

#[test]
fn the_heartbeat_carries_the_telemetry() {
    struct Modem(FakeServer);
    impl Transport for Modem {
        type Error = Lost;
        fn post(&mut self, p: &str, b: &[u8], r: &mut Vec<u8>) -> Result<u16, Lost> {
            self.0.post(p, b, r)
        }
        fn link_status(&mut self) -> LinkStatus {
            LinkStatus {
                attached: Some(true),
                signal_quality: 17,
            }
        }
    }
    let server = FakeServer::new(identity().key);
    let cfg = Config {
        firmware_version: "dispenser-2.4.1",
        ..config()
    };
    let mut engine = blepay_device_client::engine::Engine::open(
        identity(),
        cfg,
        blepay_device_client::log::MemLog::new(),
        LOCAL0,
    )
    .unwrap();
    engine.set_fault_codes(&[7, 42]);
    let mut driver = Driver::new(engine, Modem(server.clone()));
    let mut now = LOCAL0 + 100;
    driver.step(&mut || now).unwrap();
    let t = server.state.borrow().telemetry.clone().unwrap();
    assert_eq!(t.firmware_version, "dispenser-2.4.1");
    assert_eq!(t.fault_codes, [7, 42]);
    assert_eq!(t.signal_quality, 17);
    assert_eq!(t.uptime_secs, 100);
    assert_eq!((t.boot_count, t.outbox_depth, t.lifetime_units), (1, 0, 0));
    assert!(driver.engine().advert_flags().contains(AdvertFlags::FAULT));

    // a session of 7 units, then a reboot: boot count and lifetime units persist
    server.pay(1, 250, 10, crate::common::T0 + 1000);
    driver.engine_mut().on_start_button(now).unwrap();
    driver.step(&mut || now).unwrap();
    driver.engine_mut().on_meter(now, 7).unwrap();
    driver.engine_mut().on_dispense_end(now).unwrap();
    driver.step(&mut || now).unwrap();
    assert_eq!(server.sess(1).status, Status::Settled);
    let (engine, modem) = driver.into_parts();
    let engine =
        blepay_device_client::engine::Engine::open(identity(), cfg, engine.into_log(), 5).unwrap();
    let mut driver = Driver::new(engine, modem);
    now = 9;
    driver.step(&mut || now).unwrap();
    let t = server.state.borrow().telemetry.clone().unwrap();
    assert_eq!((t.boot_count, t.lifetime_units, t.uptime_secs), (2, 7, 4));
    assert!(t.fault_codes.is_empty());
}

/// Within `seq_reserve` numbers of `u32::MAX` (after which the server accepts nothing from the
/// machine) the engine reports FAULT_SEQ_LOW in the heartbeat and the FAULT flag, across reboots.
#[test]
fn within_the_seq_reserve_the_engine_reports_seq_low_and_the_fault_flag() {
    assert_eq!(
        (Config::default().seq_reserve, DEFAULT_SEQ_RESERVE),
        (65_536, 65_536)
    );
    assert_eq!(FAULT_SEQ_LOW, 0xB1E0_0001);
    let cfg = Config {
        seq_reserve: 100,
        ..config()
    };
    let mut engine = Engine::open(identity(), cfg, MemLog::new(), LOCAL0).unwrap();
    assert!(!engine.seq_low());
    assert!(!engine.advert_flags().contains(AdvertFlags::FAULT));

    // 101 numbers left: still fine.
    engine.raise_seq_floor(u32::MAX - 101).unwrap();
    assert!(!engine.seq_low());
    assert!(engine.telemetry(LOCAL0).fault_codes.is_empty());
    assert!(!engine.advert_flags().contains(AdvertFlags::FAULT));

    // 100 left: the fault code comes first, before the firmware's own.
    engine.raise_seq_floor(u32::MAX - 100).unwrap();
    engine.set_fault_codes(&[7]);
    assert!(engine.seq_low());
    assert_eq!(engine.telemetry(LOCAL0).fault_codes, [FAULT_SEQ_LOW, 7]);
    assert_eq!(
        engine.fault_codes(),
        [7],
        "the firmware's codes stay its own"
    );
    engine.set_fault_codes(&[]);
    assert!(engine.advert_flags().contains(AdvertFlags::FAULT));

    // The heartbeat carries it to the server; a reboot keeps it (the floor is persisted).
    let server = FakeServer::new(identity().key);
    let mut driver = Driver::new(engine, server.clone());
    let now = LOCAL0 + 10;
    driver.step(&mut || now).unwrap();
    let t = server.state.borrow().telemetry.clone().unwrap();
    assert_eq!(t.fault_codes, [FAULT_SEQ_LOW]);
    assert_eq!(
        server.state.borrow().executed.last().copied(),
        Some(u32::MAX - 100)
    );
    let (engine, _) = driver.into_parts();
    let engine = Engine::open(identity(), cfg, engine.into_log(), 5).unwrap();
    assert!(engine.seq_low());
    assert!(engine.advert_flags().contains(AdvertFlags::FAULT));
}

#[test]
fn a_press_starts_the_waiting_session_in_one_exchange_and_a_short_session_is_two() {
    let mut rig = booted();
    hold_250_at_10(&rig);
    assert!(
        matches!(rig.step(), Step::Idle),
        "no polling: nothing is sent"
    );

    // the press: one request, persisted before it is sent; nothing flows yet
    rig.press();
    assert_eq!(
        rig.engine().phase(),
        &Phase::Pressing { interrupted: false }
    );
    assert_eq!(rig.engine().outbox().len(), 1);
    assert!(rig.take_actions().is_empty());
    assert!(rig.engine().advert_flags().contains(AdvertFlags::BUSY));
    assert_eq!(exchanged_kind(&rig.step()), Some(RequestKind::Press));
    let s = session(1);
    assert_eq!(
        rig.take_actions(),
        [Action::StartDispensing {
            session: s,
            max_units: Units::new(25)
        }]
    );
    assert_eq!(rig.server.sess(1).status, Status::Active);
    assert!(
        matches!(rig.step(), Step::Idle),
        "nothing more while pouring"
    );

    // 7 units, the user stops: the final report settles it
    rig.meter(7);
    rig.end();
    assert_eq!(
        rig.engine().use_counter().get(),
        1,
        "bumped with the final report"
    );
    assert_eq!(exchanged_kind(&rig.step()), Some(RequestKind::FinalReport));
    let acts = rig.take_actions();
    assert_eq!(
        acts,
        [
            Action::StopDispensing {
                session: s,
                reason: StopReason::Ended
            },
            Action::SessionSettled {
                session: s,
                units: Units::new(7),
                amount: 70,
                error: None
            }
        ]
    );
    assert_eq!(rig.engine().phase(), &Phase::Idle);
    assert!(rig.engine().outbox().is_empty());
    assert_eq!(rig.kinds(), ["heartbeat", "press", "final"], "2 exchanges");
    assert!(matches!(rig.step(), Step::Idle));
}

#[test]
fn dispensing_stops_at_the_cap_with_progress_reports_on_the_way() {
    let mut rig = booted();
    hold_250_at_10(&rig);
    rig.press();
    rig.step();
    rig.take_actions();
    rig.meter(6);
    rig.meter(6); // 12 ≥ 10: a progress report
    assert_eq!(exchanged_kind(&rig.step()), Some(RequestKind::Report));
    assert_eq!(rig.server.sess(1).units, 12);
    rig.meter(13);
    assert_eq!(
        rig.take_actions(),
        [Action::StopDispensing {
            session: session(1),
            reason: StopReason::CapReached
        }]
    );
    rig.settle_down();
    let sess = rig.server.sess(1);
    assert_eq!(
        (sess.status, sess.amount, sess.settles),
        (Status::Settled, 250, 1)
    );
}

#[test]
fn presses_in_quick_succession_and_while_pouring_send_one_press() {
    let mut rig = booted();
    hold_250_at_10(&rig);
    rig.press();
    rig.press();
    rig.press();
    assert_eq!(rig.engine().outbox().len(), 1);
    rig.step();
    rig.press(); // while dispensing: ignored (no new request, valve stays open)
    rig.meter(3);
    rig.press();
    assert!(rig.engine().outbox().is_empty());
    rig.end();
    rig.press(); // final report pending: ignored
    rig.settle_down();
    assert_eq!(rig.kinds(), ["heartbeat", "press", "final"]);
    assert_eq!(rig.server.state.borrow().presses_started, 1);
    assert_eq!(rig.engine().stats().presses_ignored, 5);
    assert_eq!(rig.server.sess(1).amount, 30);
}

#[test]
fn a_press_with_no_session_waiting_changes_nothing() {
    let mut rig = booted();
    let before = rig.engine().outbox().durable().clone();
    rig.press();
    assert_eq!(exchanged_kind(&rig.step()), Some(RequestKind::Press));
    let acts = rig.take_actions();
    assert_eq!(
        acts,
        [Action::NotStarted {
            reason: NotStarted::Refused(RefusalCode::NoSessionWaiting)
        }]
    );
    let Action::NotStarted { reason } = &acts[0] else {
        unreachable!()
    };
    assert!(reason.pay_in_app_first());
    assert_eq!(rig.engine().phase(), &Phase::Idle);
    assert!(rig.engine().outbox().is_empty());
    let after = rig.engine().outbox().durable();
    assert_eq!(
        (after.use_counter, after.open.clone(), after.lifetime_units),
        (
            before.use_counter,
            before.open.clone(),
            before.lifetime_units
        )
    );
    assert_eq!(rig.engine().advert_flags(), AdvertFlags::NONE);
    assert!(matches!(rig.step(), Step::Idle));
    // and the next press with a payment works
    hold_250_at_10(&rig);
    rig.press();
    rig.step();
    assert!(matches!(
        rig.take_actions().as_slice(),
        [Action::StartDispensing { .. }]
    ));
}

#[test]
fn a_press_after_the_payment_expired_is_shown_as_pay_in_the_app_first() {
    let mut rig = booted();
    hold_250_at_10(&rig);
    rig.wait(121);
    rig.press();
    rig.step();
    let acts = rig.take_actions();
    assert_eq!(
        acts,
        [Action::NotStarted {
            reason: NotStarted::Refused(RefusalCode::SessionExpired)
        }]
    );
    assert!(matches!(&acts[0], Action::NotStarted { reason } if reason.pay_in_app_first()));
    assert_eq!(rig.engine().phase(), &Phase::Idle);
    assert_eq!(rig.engine().use_counter().get(), 0);
}

#[test]
fn no_water_flows_before_the_started_answer_and_retries_send_the_same_bytes() {
    let mut rig = booted();
    hold_250_at_10(&rig);
    rig.press();
    rig.server.fail_before.set(1);
    let first = match rig.step() {
        Step::TransportFailed {
            kind: RequestKind::Press,
            seq,
            ..
        } => seq,
        other => panic!("{other:?}"),
    };
    assert!(
        rig.take_actions().is_empty(),
        "no StartDispensing on a failed press"
    );
    assert!(matches!(rig.step(), Step::Idle), "backing off");
    // the server executes the press but its answer is lost: the retry gets the saved answer
    rig.wait(1);
    rig.server.lose_answer.set(1);
    let frame_before = rig.engine().outbox().front().unwrap().frame.clone();
    assert!(matches!(rig.step(), Step::TransportFailed { .. }));
    rig.press(); // the impatient user: ignored, the press is already in flight
    rig.wait(2);
    match rig.step() {
        Step::Exchanged {
            kind: RequestKind::Press,
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
    let executed = rig.server.state.borrow().executed.clone();
    assert_eq!(executed.iter().filter(|&&s| s == first).count(), 1);
    assert_eq!(rig.server.state.borrow().presses_started, 1);
    assert!(matches!(
        rig.take_actions().as_slice(),
        [Action::StartDispensing { .. }]
    ));
}

#[test]
fn a_press_goes_before_a_heartbeat_waiting_for_its_retry() {
    let mut rig = booted();
    rig.wait(DEFAULT_HEARTBEAT_SECS);
    rig.server.fail_before.set(1);
    assert!(matches!(
        rig.step(),
        Step::TransportFailed {
            kind: RequestKind::Heartbeat,
            ..
        }
    ));
    hold_250_at_10(&rig);
    rig.press();
    assert_eq!(exchanged_kind(&rig.step()), Some(RequestKind::Press));
    assert!(matches!(
        rig.take_actions().as_slice(),
        [Action::StartDispensing { .. }]
    ));
}

#[test]
fn the_link_down_flag_follows_the_last_exchange_and_the_modem() {
    let mut rig = booted();
    assert!(!rig.engine().advert_flags().contains(AdvertFlags::LINK_DOWN));
    rig.press();
    rig.server.fail_before.set(1);
    rig.step();
    assert!(rig.engine().advert_flags().contains(AdvertFlags::LINK_DOWN));
    let now = rig.local;
    let flagged = rig.engine().advert_update(now).unwrap();
    assert!(flagged.advert.flags.contains(AdvertFlags::LINK_DOWN));
    flagged.advert.verify(&identity().key).unwrap();
    rig.wait(1);
    rig.step(); // answered (NO_SESSION_WAITING, authenticated): the link is up
    assert!(!rig.engine().advert_flags().contains(AdvertFlags::LINK_DOWN));

    // a forged answer is a failed exchange too
    rig.press();
    let now = rig.local;
    let tx = rig.engine().transmit(now).unwrap().unwrap();
    let (_, mut answer) = rig.server.handle(&tx.frame);
    *answer.last_mut().unwrap() ^= 1;
    assert!(matches!(
        rig.engine().on_response(now, 200, &answer).unwrap(),
        Response::NotAuthentic { .. }
    ));
    assert!(rig.engine().link_down());
    rig.wait(2);
    rig.step();
    assert!(!rig.engine().link_down());

    // the modem says it is not attached
    rig.engine().on_link_status(LinkStatus {
        attached: Some(false),
        signal_quality: 99,
    });
    assert!(rig.engine().advert_flags().contains(AdvertFlags::LINK_DOWN));
    rig.engine().set_fault_codes(&[3]);
    assert!(rig.engine().advert_flags().contains(AdvertFlags::FAULT));
    rig.engine().set_fault_codes(&[]);
    assert!(!rig.engine().advert_flags().contains(AdvertFlags::FAULT));
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
fn no_flow_for_the_timeout_ends_dispensing_and_progress_reports_follow_time() {
    let mut rig = booted();
    hold_250_at_10(&rig);
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
fn a_long_session_reports_before_the_servers_deadline() {
    let mut rig = Rig::with_config(Config {
        report_every_units: 0,
        report_every_secs: 0,
        no_flow_timeout_secs: 0,
        report_deadline_margin_secs: 60,
        ..config()
    });
    rig.step();
    rig.server.pay(1, 100_000, 1, rig.server.time.get() + 120);
    rig.press();
    rig.step();
    let Phase::Dispensing {
        deadline, timeout, ..
    } = rig.engine().phase().clone()
    else {
        panic!("{:?}", rig.engine().phase())
    };
    assert_eq!(timeout, u64::try_from(ACTIVE_TIMEOUT).unwrap());
    let deadline_local = rig.local + (deadline - rig.server.time.get());
    // pour one unit a second; no report until 60 s before the deadline
    let mut reports_at = Vec::new();
    for _ in 0..1300 {
        rig.wait(1);
        rig.meter(1);
        if let Step::Exchanged {
            kind: RequestKind::Report,
            ..
        } = rig.step()
        {
            reports_at.push(rig.local);
        }
    }
    assert_eq!(reports_at.len(), 2, "{reports_at:?}");
    assert_eq!(reports_at[0], deadline_local - 60);
    // the answered report moved the deadline to its answer + the server's timeout
    assert_eq!(reports_at[1], reports_at[0] + 600 - 60);
    assert_eq!(rig.server.sess(1).status, Status::Active);
}

#[test]
fn a_press_interrupted_by_a_power_loss_is_resent_and_never_pours() {
    for answer_lost in [true, false] {
        let mut rig = booted();
        hold_250_at_10(&rig);
        rig.press();
        let frame = rig.engine().outbox().front().unwrap().frame.clone();
        if answer_lost {
            rig.server.lose_answer.set(1); // the server started it, the answer never came
        } else {
            rig.server.fail_before.set(1); // it never reached the server
        }
        assert!(matches!(rig.step(), Step::TransportFailed { .. }));
        let local = rig.local + 30;
        rig.server.time.set(rig.server.time.get() + 30);
        let mut rig = rig.reboot(local);
        assert_eq!(rig.engine().phase(), &Phase::Pressing { interrupted: true });
        assert_eq!(
            rig.engine().outbox().front().unwrap().frame,
            frame,
            "same bytes"
        );
        rig.settle_down();
        let acts = rig.take_actions();
        assert!(
            !acts
                .iter()
                .any(|a| matches!(a, Action::StartDispensing { .. })),
            "answer lost: {answer_lost}: {acts:?}"
        );
        assert!(acts.contains(&Action::SessionAborted {
            session: session(1),
            reason: AbortReason::Interrupted
        }));
        assert!(acts.contains(&Action::SessionSettled {
            session: session(1),
            units: Units::ZERO,
            amount: 0,
            error: None
        }));
        let sess = rig.server.sess(1);
        assert_eq!(
            (sess.status, sess.amount, sess.settles),
            (Status::Settled, 0, 1)
        );
        assert_eq!(rig.server.state.borrow().presses_started, 1);
        assert_eq!(rig.server.state.borrow().replays, 0);
        assert_eq!(rig.engine().phase(), &Phase::Idle);
        assert_eq!(rig.engine().advert_flags(), AdvertFlags::NONE);
    }
}

#[test]
fn a_started_answer_for_a_session_already_ended_never_pours_again() {
    let mut rig = booted();
    hold_250_at_10(&rig);
    rig.press();
    rig.step();
    rig.meter(4);
    rig.end();
    rig.settle_down();
    rig.take_actions();
    // a press answered (say, by a confused server) with the session that just settled
    rig.press();
    let now = rig.local;
    let tx = rig.engine().transmit(now).unwrap().unwrap();
    let body = pb::DeviceResponse {
        grants: vec![pb::Grant {
            session_id: vec![1; 16],
            hold_amount: 250,
            price_per_unit: 10,
            expires_at: i64::try_from(rig.server.time.get()).unwrap() + 600,
            use_counter: 0,
        }],
        status: pb::SessionStatus::Active as i32,
        ..Default::default()
    }
    .encode_to_vec();
    let tag: [u8; 16] = tx.frame[tx.frame.len() - 16..].try_into().unwrap();
    let answer = seal_response(&identity().key, &tag, tx.seq, rig.server.time.get(), &body);
    let r = rig.engine().on_response(now, 200, &answer).unwrap();
    assert!(matches!(
        r,
        Response::Answered {
            kind: RequestKind::Press,
            ..
        }
    ));
    assert!(rig.engine().drain_actions().next().is_none());
    assert_eq!(rig.engine().phase(), &Phase::Idle);
    assert!(rig.engine().outbox().is_empty());
    assert_eq!(rig.engine().stats().known_sessions_ignored, 1);
}

#[test]
fn a_power_loss_while_pouring_reports_the_last_checkpoint_once() {
    let mut rig = booted();
    hold_250_at_10(&rig);
    rig.press();
    rig.step();
    rig.meter(12);
    rig.step(); // progress report of 12
    rig.meter(5); // not checkpointed
    let local = rig.local + 5;
    let mut rig = rig.reboot(local);
    assert!(rig.take_actions().contains(&Action::StopDispensing {
        session: session(1),
        reason: StopReason::Interrupted
    }));
    assert_eq!(rig.engine().use_counter().get(), 1);
    rig.settle_down();
    let sess = rig.server.sess(1);
    assert_eq!((sess.units, sess.amount, sess.settles), (12, 120, 1));
    // rebooting again sends nothing more
    let local = rig.local + 5;
    let mut rig = rig.reboot(local);
    rig.settle_down();
    assert_eq!(rig.server.sess(1).settles, 1);
    assert_eq!(*rig.kinds().last().unwrap(), "heartbeat");
}

#[test]
fn an_answer_older_than_the_clock_never_steps_it_back() {
    let mut rig = booted();
    let offset = rig.engine().clock().offset();
    hold_250_at_10(&rig);
    rig.press();
    // executed at once, answer lost; the retry 40 s later gets the answer stamped then
    rig.server.lose_answer.set(1);
    rig.step();
    rig.wait(40);
    let local = rig.local;
    let before = rig.engine().clock().server_now(local);
    rig.step();
    assert!(matches!(
        rig.take_actions().as_slice(),
        [Action::StartDispensing { .. }]
    ));
    assert_eq!(rig.engine().clock().offset(), offset, "no step back");
    let local = rig.local;
    assert!(rig.engine().clock().server_now(local) >= before);
}

#[test]
fn next_wakeup_is_never_later_than_the_next_slot() {
    let mut rig = booted();
    let now = rig.local;
    let at = rig.engine().next_wakeup(now);
    assert!(at > now && at <= now + 30, "{at} vs {now}");
}
