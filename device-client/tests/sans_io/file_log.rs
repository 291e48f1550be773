//! The file-backed log: durable appends, a torn tail cut on recovery, atomic compaction, and the
//! engine surviving a restart on it.

use blepay_device_client::engine::{Engine, Phase};
use blepay_device_client::file_log::FileLog;
use blepay_device_client::log::RecordLog;

use crate::common::{FakeServer, LOCAL0, Rig, T0, config, identity};

#[test]
fn appends_survive_reopening_and_a_torn_tail_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.log");
    let mut log = FileLog::open(&path).unwrap();
    assert!(log.recover().unwrap().is_empty());
    log.append(b"one").unwrap();
    log.append(b"two").unwrap();
    drop(log);
    // a power loss in the middle of a third append
    let mut bytes = std::fs::read(&path).unwrap();
    let full = bytes.len();
    bytes.extend_from_slice(&[0xB1, 9, 0, b'x']);
    std::fs::write(&path, &bytes).unwrap();

    let mut log = FileLog::open(&path).unwrap();
    assert_eq!(log.recover().unwrap(), [b"one".to_vec(), b"two".to_vec()]);
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        u64::try_from(full).unwrap()
    );
    log.append(b"three").unwrap();
    log.replace(&[b"snapshot".to_vec()]).unwrap();
    log.append(b"after").unwrap();
    drop(log);
    let mut log = FileLog::open(&path).unwrap();
    assert_eq!(
        log.recover().unwrap(),
        [b"snapshot".to_vec(), b"after".to_vec()]
    );
}

#[test]
fn the_engine_delivers_the_final_report_after_a_restart_on_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.log");
    let server = FakeServer::new(identity().key);
    server.pay(1, 1000, 10, T0 + 120);
    let mut log = FileLog::open(&path).unwrap();
    log.recover().unwrap();
    let mut rig = Rig::on(server.clone(), log, LOCAL0);
    rig.step();
    rig.press();
    rig.step();
    rig.meter(12);
    rig.step(); // progress report: 12 units persisted and acknowledged
    rig.meter(3);
    drop(rig); // power loss while dispensing

    let log = FileLog::open(&path).unwrap();
    let engine = Engine::open(identity(), config(), log, LOCAL0 + 100).unwrap();
    assert!(matches!(engine.phase(), Phase::Ending { .. }));
    let mut rig = Rig {
        driver: blepay_device_client::driver::Driver::new(engine, server.clone()),
        server,
        local: LOCAL0 + 100,
        actions: Vec::new(),
    };
    rig.settle_down();
    let s = rig.server.sess(1);
    assert_eq!((s.units, s.amount, s.settles), (12, 120, 1));
    assert_eq!(rig.engine().use_counter().get(), 1);
}
