//! The plain HTTP transport under the real engine + driver (a simulated dispenser), through a
//! proxy that drops 30% of the machine's connections, some after the server already executed the
//! request: 20 payment cycles, each settles exactly once, retries carry the same bytes, and the
//! ledger reconciles.

use std::time::Duration;

use crate::support::dispenser::{Dispenser, Recording, Settled, local_now};
use crate::support::machine::assert_retries_are_byte_identical;
use crate::support::server::Server;
use blepay_core::Units;
use blepay_device_client::http::HttpTransport;
use blepay_e2e::proxy::Proxy;
use blepay_proto::pb::v1 as pb;

const PRICE: i64 = 25;
const CYCLES: u64 = 20;

#[test]
fn twenty_payment_cycles_through_a_proxy_dropping_30_percent_settle_exactly_once() {
    // Arrange
    let server = Server::start();
    let proxy = Proxy::start(([127, 0, 0, 1], server.port).into(), 30, 0x05ee_db1e);
    let id = server.register(PRICE);
    let http = HttpTransport::new(&proxy.address, Duration::from_secs(5));
    let mut m = Dispenser::new(id, Recording::new(http));
    server.top_up("ida", 10_000);
    m.run_until(Duration::from_secs(30), |m| m.engine().clock().is_synced());
    let mut expected_spent = 0;

    // Act
    for cycle in 0..CYCLES {
        let units = 1 + cycle % 4;
        m.units_per_session = units;
        let advert = m.engine().advert(local_now());
        let sid = server.pay_http("ida", &advert.payload, 200);
        m.press();
        let done = m.settled.len() + 1;
        m.run_until(Duration::from_secs(60), |m| m.settled.len() == done);

        // Assert (per cycle): settled once, for exactly units × price, retries included.
        let amount = i64::try_from(units).unwrap() * PRICE;
        assert_eq!(
            m.settled.last(),
            Some(&Settled {
                session: sid,
                units: Units::new(units),
                amount,
                error: None
            }),
            "cycle {cycle}"
        );
        let s = server.session(sid);
        assert_eq!(
            (s.status, s.amount),
            (pb::SessionStatus::Settled as i32, amount),
            "cycle {cycle}"
        );
        expected_spent += amount;
    }

    // Assert
    assert_eq!(m.settled.len(), usize::try_from(CYCLES).unwrap());
    let w = server.wallet("ida");
    assert_eq!(
        (w.available, w.held, w.spent),
        (10_000 - expected_spent, 0, expected_spent)
    );
    assert!(server.audit().reconciles());
    assert_retries_are_byte_identical(&m.driver.transport_mut().sent);
    let stats = proxy.stats();
    println!(
        "proxy: {stats:?}; machine retries: {}",
        m.transport_failures
    );
    assert!(
        stats.dropped_before > 0 && stats.dropped_after > 0,
        "both kinds of drop happened: {stats:?}"
    );
    assert_eq!(
        m.transport_failures,
        stats.dropped_before + stats.dropped_after
    );
}
