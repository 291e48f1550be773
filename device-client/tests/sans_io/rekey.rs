//! A rotated key delivered in an answer (docs/protocol.md §1.1): the engine unwraps it with its
//! current key, installs it durably (a power loss at any byte of the install leaves a usable
//! key), then seals every frame and advert under the new one; a request sealed before the
//! install is still answered under the old key.

use blepay_core::{KeyEpoch, Slot, UseCounter};
use blepay_device_client::engine::Engine;
use blepay_device_client::log::{MemLog, decode_log};
use blepay_device_client::machine::{Answer, KeyUpdate, RefusalCode};
use blepay_proto::{DeviceKey, RequestFrame, seal_response, wrap_device_key};

use crate::common::{T0, config, identity};

fn new_key() -> DeviceKey {
    DeviceKey::from_bytes([0x5a; 32])
}

fn update() -> KeyUpdate {
    let id = identity();
    KeyUpdate {
        epoch: KeyEpoch::new(1),
        wrapped: wrap_device_key(&id.key, id.device_id, KeyEpoch::new(1), &new_key()),
    }
}

/// Answer `frame` under `key` with `answer`, carrying `update`.
fn answer(frame: &[u8], key: &DeviceKey, answer: &Answer, update: Option<&KeyUpdate>) -> Vec<u8> {
    let req = RequestFrame::parse(frame).unwrap();
    seal_response(key, &req.tag(), req.seq(), T0, &answer.encode_with(update))
}

/// The key a frame verifies under: the old one, the new one, or neither.
fn sealed_under(frame: &[u8]) -> Option<&'static str> {
    let req = RequestFrame::parse(frame).unwrap();
    if req.verify(&identity().key).is_ok() {
        Some("old")
    } else if req.verify(&new_key()).is_ok() {
        Some("new")
    } else {
        None
    }
}

/// Boot, answer the boot heartbeat with the key update: the engine has installed the key.
fn rekeyed() -> Engine<MemLog> {
    let mut e = Engine::open(identity(), config(), MemLog::new(), T0).unwrap();
    let hb = e.transmit(T0).unwrap().expect("the boot heartbeat");
    assert_eq!(sealed_under(&hb.frame), Some("old"));
    let body = answer(&hb.frame, &identity().key, &Answer::Ack, Some(&update()));
    e.on_response(T0, 200, &body).unwrap();
    e
}

#[test]
fn a_key_update_is_installed_and_every_later_frame_and_advert_uses_the_new_key() {
    let mut e = rekeyed();
    assert_eq!(e.key_epoch(), KeyEpoch::new(1));
    assert_eq!(e.stats().keys_installed, 1);
    assert_eq!(e.identity().key.expose_bytes(), new_key().expose_bytes());
    // The next request, and the advert, are under the new key.
    e.on_start_button(T0 + 1).unwrap();
    let press = e.transmit(T0 + 1).unwrap().expect("the press");
    assert_eq!(sealed_under(&press.frame), Some("new"));
    let advert = e.advert(T0 + 1).advert;
    assert!(advert.verify(&new_key()).is_ok());
    assert!(advert.verify(&identity().key).is_err());
    // The same update again (an answer to a retry) changes nothing.
    let refused = Answer::refused(RefusalCode::NoSessionWaiting, "pay first");
    let body = answer(&press.frame, &new_key(), &refused, Some(&update()));
    e.on_response(T0 + 1, 404, &body).unwrap();
    assert_eq!(e.stats().keys_installed, 1);
    let _ = (Slot::at(T0), UseCounter::new(0));
}

#[test]
fn a_request_sealed_before_the_install_is_answered_under_the_old_key() {
    let mut e = Engine::open(identity(), config(), MemLog::new(), T0).unwrap();
    let hb = e.transmit(T0).unwrap().unwrap();
    let body = answer(&hb.frame, &identity().key, &Answer::Ack, None);
    e.on_response(T0, 200, &body).unwrap();
    // A press queued (sealed under the old key), then an answer elsewhere installs the key: here
    // the press's own answer carries it, and the next press is under the new key.
    e.on_start_button(T0 + 1).unwrap();
    let press = e.transmit(T0 + 1).unwrap().unwrap();
    assert_eq!(sealed_under(&press.frame), Some("old"));
    let refused = Answer::refused(RefusalCode::NoSessionWaiting, "pay first");
    let body = answer(&press.frame, &identity().key, &refused, Some(&update()));
    e.on_response(T0 + 1, 404, &body).unwrap();
    assert_eq!(e.key_epoch(), KeyEpoch::new(1));
    // A log rebuilt from the old key's requests still opens answers under the old key: reboot
    // with a press in the outbox sealed under the old key.
    let mut e = Engine::open(identity(), config(), MemLog::new(), T0).unwrap();
    let hb = e.transmit(T0).unwrap().unwrap();
    e.on_start_button(T0).unwrap();
    let body = answer(&hb.frame, &identity().key, &Answer::Ack, Some(&update()));
    e.on_response(T0, 200, &body).unwrap();
    let press = e.transmit(T0 + 1).unwrap().unwrap();
    assert_eq!(
        sealed_under(&press.frame),
        Some("old"),
        "queued before the install"
    );
    let body = answer(&press.frame, &identity().key, &refused, Some(&update()));
    assert!(matches!(
        e.on_response(T0 + 1, 404, &body).unwrap(),
        blepay_device_client::engine::Response::Answered { .. }
    ));
    assert_eq!(
        e.stats().keys_installed,
        1,
        "an old-key answer's update is ignored"
    );
}

#[test]
fn a_power_loss_at_every_byte_of_the_install_leaves_a_usable_key() {
    let before = {
        let mut e = Engine::open(identity(), config(), MemLog::new(), T0).unwrap();
        let hb = e.transmit(T0).unwrap().unwrap();
        let _ = hb;
        e.into_log().as_bytes().to_vec()
    };
    let after = rekeyed().into_log().as_bytes().to_vec();
    assert!(after.len() > before.len());
    let (records, _) = decode_log(&after);
    assert!(!records.is_empty());
    for cut in before.len()..=after.len() {
        let log = MemLog::from_bytes(after[..cut].to_vec());
        let mut e = Engine::open(identity(), config(), log, T0 + 10).unwrap();
        let expected = if e.key_epoch() == KeyEpoch::new(1) {
            "new"
        } else {
            assert_eq!(e.key_epoch(), KeyEpoch::FIRST, "cut at {cut}");
            "old"
        };
        let frame = e
            .transmit(T0 + 10)
            .unwrap()
            .expect("a heartbeat at boot")
            .frame;
        assert_eq!(sealed_under(&frame), Some(expected), "cut at {cut}");
    }
    // Compaction writes the key first: it outlives every compaction.
    let (outbox, _) =
        blepay_device_client::outbox::Outbox::open(MemLog::from_bytes(after.clone()), 4).unwrap();
    assert!(matches!(
        outbox.durable().snapshot().first(),
        Some(blepay_device_client::journal::Record::Key(k)) if k.epoch == KeyEpoch::new(1)
    ));
    let log = MemLog::from_bytes(after);
    let mut e = Engine::open(identity(), config(), log, T0 + 10).unwrap();
    assert_eq!(e.key_epoch(), KeyEpoch::new(1));
    let frame = e.transmit(T0 + 10).unwrap().unwrap().frame;
    assert_eq!(sealed_under(&frame), Some("new"));
}
