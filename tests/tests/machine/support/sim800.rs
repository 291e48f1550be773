//! The SIM800 modem simulator — the device client's own (`device-client/src/sim800_sim.rs`,
//! feature `sim800-sim`), compiled into this test crate from its source so the tests need no
//! feature switch — and the driver under test on it.
//!
//! The simulated modem carries every `AT+HTTPACTION=1` to the server over a real TCP connection
//! with the header set a real SIM800 sends, and counts the bytes on that connection.

use blepay_device_client::at::{AtConfig, Sim800, StdTimer, Timeouts};

#[path = "../../../../device-client/src/sim800_sim.rs"]
mod sim;

pub use sim::{Fault, HostPort, Sim, request_head};

/// Timeouts short enough for tests (the simulated modem answers in microseconds).
pub fn test_timeouts() -> Timeouts {
    Timeouts {
        command_ms: 500,
        bearer_ms: 1_000,
        action_ms: 10_000,
        data_ms: 500,
        drain_ms: 30,
        boot_ms: 3_000,
    }
}

/// The driver under test on `port`, for `server` (`http://127.0.0.1:PORT`).
pub fn driver(port: HostPort, server: &str) -> Sim800<HostPort, StdTimer> {
    let mut config = AtConfig::new("internet", server);
    config.timeouts = test_timeouts();
    Sim800::new(port, StdTimer::default(), config)
}
