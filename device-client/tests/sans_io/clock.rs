//! The slot clock, the advert, and the clock-not-synchronised flag across a reboot.

use blepay_core::{Slot, UseCounter};
use blepay_device_client::clock::Clock;
use blepay_device_client::engine::Engine;
use blepay_proto::{Advert, AdvertFlags, DEFAULT_COMPANY_ID};

use crate::common::{LOCAL0, Rig, T0, config, identity};

#[test]
fn the_clock_takes_the_server_time_at_the_middle_of_the_round_trip() {
    let mut c = Clock::new();
    assert!(!c.is_synced());
    assert!(c.sync(T0, 100, 102));
    assert_eq!(c.server_now(101), T0);
    // the local crystal ran 3 s fast since: the next answer corrects it
    assert!(!c.sync(T0 + 60, 164, 164));
    assert_eq!(c.server_now(164), T0 + 60);
    assert_eq!(Clock::restore(c.offset()).server_now(164), T0 + 60);
    assert!(!Clock::restore(c.offset()).is_synced());
}

#[test]
fn the_advert_follows_the_server_clock_and_is_the_protocol_advert() {
    let mut rig = Rig::new();
    assert!(
        rig.engine()
            .advert_flags()
            .contains(AdvertFlags::CLOCK_UNSYNCED)
    );
    rig.step(); // the boot heartbeat's answer sets the clock
    let now = rig.local;
    let ad = rig.engine().advert(now);
    assert_eq!(ad.advert.slot, Slot::at(T0));
    assert_eq!(ad.advert.flags, AdvertFlags::NONE);
    assert_eq!(ad.advert.use_counter, UseCounter::new(0));
    ad.advert.verify(&identity().key).unwrap();
    let parsed = Advert::from_advertising_data(&ad.advertising_data, DEFAULT_COMPANY_ID).unwrap();
    assert_eq!(parsed, ad.advert);
    assert_eq!(&ad.hci_command[..5], &[0x01, 0x08, 0x20, 0x20, 0x1f]);
    assert_eq!(&ad.hci_command[5..], &ad.advertising_data);
    assert_eq!(&ad.advertising_data[7..], &ad.payload);
}

#[test]
fn the_advert_is_reloaded_only_when_the_slot_or_the_flags_change() {
    let mut rig = Rig::new();
    let now = rig.local;
    let first = rig.engine().advert_update(now).unwrap();
    assert!(first.advert.flags.contains(AdvertFlags::CLOCK_UNSYNCED));
    assert!(rig.engine().advert_update(now).is_none());
    rig.step();
    let synced = rig.engine().advert_update(now).unwrap();
    assert_eq!(synced.advert.flags, AdvertFlags::NONE);
    // next slot boundary on the server clock
    let to_next = 30 - (T0 % 30);
    assert!(rig.engine().advert_update(now + to_next - 1).is_none());
    let next = rig.engine().advert_update(now + to_next).unwrap();
    assert_eq!(next.advert.slot.get(), synced.advert.slot.get() + 1);
    // a press makes the machine busy
    rig.press();
    let local = rig.local;
    let busy = rig.engine().advert_update(local).unwrap();
    assert!(busy.advert.flags.contains(AdvertFlags::BUSY));
}

#[test]
fn after_a_reboot_the_advert_says_clock_not_synchronised_until_the_first_answer() {
    let mut rig = Rig::new();
    rig.step();
    assert!(rig.engine().clock().is_synced());
    let offset = rig.engine().clock().offset();
    assert_eq!(offset, i64::try_from(T0 - LOCAL0).unwrap());

    // power loss: same flash, the local clock (an RTC here) kept going
    let (engine, server) = rig.driver.into_parts();
    let log = engine.into_log();
    let engine = Engine::open(identity(), config(), log, LOCAL0 + 10).unwrap();
    assert!(!engine.clock().is_synced());
    assert_eq!(
        engine.clock().offset(),
        offset,
        "the persisted offset is the estimate meanwhile"
    );
    assert!(
        engine
            .advert(LOCAL0 + 10)
            .advert
            .flags
            .contains(AdvertFlags::CLOCK_UNSYNCED)
    );

    let mut rig = Rig {
        driver: blepay_device_client::driver::Driver::new(engine, server.clone()),
        server,
        local: LOCAL0 + 10,
        actions: Vec::new(),
    };
    rig.server.time.set(T0 + 10);
    rig.step();
    assert!(
        !rig.engine()
            .advert(LOCAL0 + 10)
            .advert
            .flags
            .contains(AdvertFlags::CLOCK_UNSYNCED)
    );
}

#[test]
fn a_machine_that_never_synced_keeps_its_local_time_and_the_flag() {
    let engine = Engine::open(
        identity(),
        config(),
        blepay_device_client::log::MemLog::new(),
        42,
    )
    .unwrap();
    assert_eq!(engine.clock().server_now(42), 42);
    assert!(engine.advert_flags().contains(AdvertFlags::CLOCK_UNSYNCED));
}
