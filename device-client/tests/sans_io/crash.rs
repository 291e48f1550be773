//! Power loss at every byte: for every record of a realistic log, cut the log at every offset
//! inside that record (and, separately, corrupt each of its bytes), recover, and check the queue
//! is consistent — nothing acknowledged is sent again as new, nothing persisted and unacknowledged
//! is lost, sequence numbers never go back — and that the machine then finishes its sessions on
//! the server as it was at that moment, each settled exactly once.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;

use blepay_device_client::driver::Step;
use blepay_device_client::engine::Engine;
use blepay_device_client::journal::Record;
use blepay_device_client::log::{MemLog, RECORD_OVERHEAD, RecordLog, decode_log};
use blepay_device_client::outbox::Outbox;

use crate::common::{
    FakeServer, LOCAL0, Recording, Rig, ServerState, Status, T0, config, identity,
};

struct Recorded {
    bytes: Vec<u8>,
    /// (start offset, server posts answered at that append)
    appends: Vec<(usize, usize)>,
    history: Vec<ServerState>,
    /// (server posts answered before it was sent, seq) for every request the machine sent
    sent: Vec<(usize, u32)>,
}

/// Two sessions with failures in between: heartbeats, a refused press, a lost press answer,
/// progress reports, a final report, then a second session cut short.
fn record_a_busy_log() -> Recorded {
    let server = FakeServer::new(identity().key);
    let appends = Rc::new(RefCell::new(Vec::new()));
    let log = Recording {
        log: MemLog::new(),
        history: server.history.clone(),
        appends: appends.clone(),
    };
    let mut rig = Rig::on(server, log, LOCAL0);
    let mut sent = Vec::new();
    let mut step = |rig: &mut Rig<Recording>| {
        let before = rig.server.history.borrow().len() - 1;
        match rig.step() {
            Step::Exchanged { seq, .. } | Step::TransportFailed { seq, .. } => {
                sent.push((before, seq));
            }
            Step::Idle => {}
        }
    };
    // the boot heartbeat, a press with nobody paid, a heartbeat an interval later
    step(&mut rig);
    rig.press();
    step(&mut rig);
    rig.wait(rig.driver.engine().config().heartbeat_interval_secs);
    step(&mut rig);
    // session 1: the press answer is lost (the retry gets the saved answer), progress reports,
    // a final report that fails once
    rig.server.pay(1, 1000, 10, rig.server.time.get() + 200);
    rig.press();
    rig.server.lose_answer.set(1);
    step(&mut rig);
    rig.wait(1);
    step(&mut rig);
    for _ in 0..4 {
        rig.meter(11);
        rig.wait(1);
        step(&mut rig);
    }
    rig.end();
    rig.server.fail_before.set(1);
    step(&mut rig);
    rig.wait(1);
    step(&mut rig);
    rig.wait(5);
    // session 2: a press that fails once, then cut short while pouring
    rig.server.pay(2, 1000, 10, rig.server.time.get() + 200);
    rig.press();
    rig.server.fail_before.set(1);
    step(&mut rig);
    rig.wait(1);
    step(&mut rig);
    rig.meter(12);
    rig.server.lose_answer.set(1);
    step(&mut rig);
    rig.meter(3);
    let (engine, server) = rig.driver.into_parts();
    let log = engine.into_log();
    let history = server.history.borrow().clone();
    let appends = appends.borrow().clone();
    Recorded {
        bytes: log.log.as_bytes().to_vec(),
        appends,
        history,
        sent,
    }
}

/// The queue a log prefix describes, computed independently of the engine: enqueued minus acked.
fn expected_queue(prefix: &[u8]) -> Vec<(u32, Vec<u8>)> {
    let (records, _) = decode_log(prefix);
    let mut queue: Vec<(u32, Vec<u8>)> = Vec::new();
    for r in records {
        match Record::decode(r).unwrap() {
            Record::Enqueue(e) => queue.push((e.seq, e.frame)),
            Record::Ack { seq, .. } => queue.retain(|(s, _)| *s != seq),
            Record::Started { seq, .. } => queue.retain(|(s, _)| *s != seq),
            Record::State { .. }
            | Record::Session(_)
            | Record::Counters { .. }
            | Record::Key(_) => {}
        }
    }
    queue
}

fn acked(prefix: &[u8]) -> BTreeSet<u32> {
    let (records, _) = decode_log(prefix);
    records
        .into_iter()
        .filter_map(|r| match Record::decode(r) {
            Some(Record::Ack { seq, .. } | Record::Started { seq, .. }) => Some(seq),
            _ => None,
        })
        .collect()
}

fn check_recovery(rec: &Recorded, k: usize, medium: Vec<u8>, what: &str) {
    let (start, posts) = rec.appends[k];
    let prefix = &rec.bytes[..start];
    let (outbox, _) = Outbox::open(MemLog::from_bytes(medium.clone()), 4).unwrap();
    assert_eq!(
        outbox.log().as_bytes(),
        prefix,
        "{what}: the torn record is cut off"
    );
    let engine = Engine::open(
        identity(),
        config(),
        MemLog::from_bytes(medium),
        LOCAL0 + 10_000,
    )
    .unwrap();

    // the queue is exactly what was persisted and not acknowledged, with the same bytes
    let queue: Vec<(u32, Vec<u8>)> = engine
        .outbox()
        .queue()
        .map(|e| (e.seq, e.frame.clone()))
        .collect();
    let persisted = expected_queue(prefix);
    assert_eq!(
        queue[..persisted.len().min(queue.len())],
        persisted[..],
        "{what}"
    );
    // ... plus, for a session interrupted while dispensing, its final report queued at boot
    assert!(
        queue.len() == persisted.len() || queue.len() == persisted.len() + 1,
        "{what}"
    );
    let acked = acked(prefix);
    assert!(
        queue.iter().all(|(s, _)| !acked.contains(s)),
        "{what}: an acknowledged request is queued again"
    );

    // sequence numbers never go back: above everything sent before the crash
    let max_sent = rec
        .sent
        .iter()
        .filter(|(p, _)| *p < posts)
        .map(|(_, s)| *s)
        .max()
        .unwrap_or(0);
    for (seq, _) in &queue[persisted.len()..] {
        assert!(
            *seq > max_sent,
            "{what}: new seq {seq} after {max_sent} was sent"
        );
    }
    assert!(
        engine.outbox().peek_seq() > max_sent,
        "{what}: next seq {} after {max_sent}",
        engine.outbox().peek_seq()
    );

    // and the machine finishes against the server as it was at that moment
    let server_state = rec.history[posts].clone();
    let server = FakeServer::with_state(identity().key, server_state, T0 + 50);
    let mut rig = Rig {
        driver: blepay_device_client::driver::Driver::new(engine, server.clone()),
        server,
        local: LOCAL0 + 10_000,
        actions: Vec::new(),
    };
    rig.settle_down();
    let st = rig.server.state.borrow();
    assert_eq!(
        st.replays, 0,
        "{what}: the server saw a replayed sequence number"
    );
    for (id, s) in &st.sessions {
        assert!(s.settles <= 1, "{what}: session {id:?} settled twice");
        assert_ne!(
            s.status,
            Status::Active,
            "{what}: session {id:?} left ACTIVE"
        );
    }
}

#[test]
fn a_cut_at_every_offset_of_every_record_recovers_a_consistent_queue() {
    let rec = record_a_busy_log();
    assert!(
        rec.appends.len() >= 20,
        "a busy log: {} records",
        rec.appends.len()
    );
    let mut cuts = 0;
    for k in 0..rec.appends.len() {
        let start = rec.appends[k].0;
        let end = rec.appends.get(k + 1).map_or(rec.bytes.len(), |a| a.0);
        assert!(end - start > RECORD_OVERHEAD);
        for cut in start..end {
            check_recovery(
                &rec,
                k,
                rec.bytes[..cut].to_vec(),
                &format!("record {k}, cut at {cut}"),
            );
            cuts += 1;
        }
    }
    println!(
        "{} records, {} bytes, {cuts} cuts recovered",
        rec.appends.len(),
        rec.bytes.len()
    );
}

#[test]
fn a_corrupt_byte_in_the_last_record_drops_only_that_record() {
    let rec = record_a_busy_log();
    for k in 0..rec.appends.len() {
        let start = rec.appends[k].0;
        let end = rec.appends.get(k + 1).map_or(rec.bytes.len(), |a| a.0);
        for at in start..end {
            let mut medium = rec.bytes[..end].to_vec();
            medium[at] ^= 0x55;
            check_recovery(&rec, k, medium, &format!("record {k}, byte {at} corrupted"));
        }
    }
}

#[test]
fn the_whole_log_recovers_the_second_session_and_ends_it() {
    let rec = record_a_busy_log();
    let engine = Engine::open(
        identity(),
        config(),
        MemLog::from_bytes(rec.bytes.clone()),
        LOCAL0,
    )
    .unwrap();
    // session 2 was dispensing when the power went: its final report is queued at boot
    let last = engine.outbox().queue().last().unwrap();
    assert!(matches!(
        last.op,
        blepay_device_client::journal::Op::Report { last: true, .. }
    ));
    assert_eq!(engine.use_counter().get(), 2);
}

#[test]
fn compaction_keeps_the_queue_and_the_high_water_mark() {
    let rec = record_a_busy_log();
    let mut log = MemLog::from_bytes(rec.bytes.clone());
    let (mut outbox, _) = Outbox::open(log.clone(), 4).unwrap();
    let before: Vec<_> = outbox.queue().cloned().collect();
    let hwm = outbox.durable().seq_high_water;
    assert!(outbox.compact_if_over(0).unwrap());
    assert!(outbox.log().used_bytes() < rec.bytes.len());
    log = outbox.into_log();
    let (outbox, _) = Outbox::open(log, 4).unwrap();
    assert_eq!(outbox.queue().cloned().collect::<Vec<_>>(), before);
    assert_eq!(outbox.durable().seq_high_water, hwm);
    assert!(outbox.peek_seq() >= hwm);
}
