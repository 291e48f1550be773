//! End to end: a simulated water dispenser on the real client — session engine + driver + the
//! SIM800 AT transport — talking to a simulated modem whose HTTP bridge goes through a TCP proxy
//! that drops 30% of the connections (half before forwarding, half after the server answered),
//! to the real server; a simulated phone pays over HTTP with a fresh advert from the engine's
//! advertiser each time, then the user presses start (one Press request fetches the grant).
//! Every session settles exactly once, for exactly units × price, and the ledger reconciles.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::support::dispenser::{Dispenser, Settled, local_now};
use crate::support::machine::assert_retries_are_byte_identical;
use crate::support::server::Server;
use crate::support::sim800::{Sim, driver};
use blepay_core::Units;
use blepay_e2e::proxy::Proxy;
use blepay_proto::AdvertFlags;
use blepay_proto::pb::v1 as pb;

const PRICE: i64 = 25;
const SESSIONS: u64 = 12;
const MAX_AMOUNT: i64 = 200; // the cap: 8 units

#[test]
fn twelve_sessions_over_the_modem_through_a_proxy_dropping_30_percent_settle_exactly_once() {
    // Arrange: server, proxy in front of it, modem bridged through the proxy, machine on the modem.
    let began = Instant::now();
    let server = Server::start();
    let proxy = Proxy::start(([127, 0, 0, 1], server.port).into(), 30, 0x0b1e_5eed);
    let (sim, port) = Sim::start();
    let id = server.register(PRICE);
    let mut machine = Dispenser::new(id, driver(port, &proxy.address));
    server.top_up("ida", 10_000);
    machine.run_until(Duration::from_secs(30), |m| m.engine().clock().is_synced());
    let mut expected_spent = 0;

    // Act: pay with the advert the machine broadcasts now; the machine does the rest.
    for cycle in 0..SESSIONS {
        // 1..=9 units: 9 is beyond the cap of 8, where the engine stops on its own.
        let units = 1 + cycle % 9;
        machine.units_per_session = units;
        let advert = machine.engine().advert(local_now());
        assert_eq!(
            advert.advert.flags,
            AdvertFlags::NONE,
            "cycle {cycle}: idle and synced"
        );
        let session = server.pay_http("ida", &advert.payload, MAX_AMOUNT);
        machine.press();
        let done = machine.settled.len() + 1;
        machine.run_until(Duration::from_secs(60), |m| m.settled.len() == done);

        // Assert (per cycle): the machine saw it settle for the units it poured, capped at 8.
        let units = units.min(8);
        let amount = i64::try_from(units).unwrap() * PRICE;
        assert_eq!(
            machine.settled.last(),
            Some(&Settled {
                session,
                units: Units::new(units),
                amount,
                error: None
            }),
            "cycle {cycle}"
        );
        let s = server.session(session);
        assert_eq!(
            (s.status, s.amount, s.units),
            (pb::SessionStatus::Settled as i32, amount, units),
            "cycle {cycle}"
        );
        expected_spent += amount;
    }

    // Assert: exactly once each, exact wallet, reconciled ledger, retries byte-identical.
    let sessions: BTreeSet<_> = machine.settled.iter().map(|s| s.session).collect();
    assert_eq!(
        (machine.settled.len(), sessions.len()),
        (
            usize::try_from(SESSIONS).unwrap(),
            usize::try_from(SESSIONS).unwrap()
        ),
        "each session settled once on the machine"
    );
    assert!(machine.aborted.is_empty(), "{:?}", machine.aborted);
    assert!(machine.not_started.is_empty(), "{:?}", machine.not_started);
    assert_eq!(
        machine.started,
        machine
            .settled
            .iter()
            .map(|s| s.session)
            .collect::<Vec<_>>(),
        "one press, one valve opening per session"
    );
    let w = server.wallet("ida");
    assert_eq!(
        (w.available, w.held, w.spent),
        (10_000 - expected_spent, 0, expected_spent)
    );
    assert!(server.audit().reconciles());
    assert_retries_are_byte_identical(&sim.forwarded());
    assert_eq!(
        machine.engine().use_counter().get(),
        u16::try_from(SESSIONS).unwrap()
    );
    let stats = proxy.stats();
    let at = machine.driver.transport_mut().stats();
    println!(
        "{SESSIONS} sessions in {:?}; proxy: {stats:?}; modem: {at:?}; driver-level failures: {}; \
         engine: {:?}",
        began.elapsed(),
        machine.transport_failures,
        machine.engine().stats()
    );
    assert!(
        stats.dropped_before > 0 && stats.dropped_after > 0,
        "both kinds of drop happened: {stats:?}"
    );
    assert!(at.bearer_opens > 1, "601s made the modem re-attach: {at:?}");
}
