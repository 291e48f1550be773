//! The device client against the real server: the SIM800 AT transport on a simulated modem
//! ([`at_transport`]), a simulated dispenser on the real engine + driver over the modem through a
//! lossy proxy ([`dispenser_over_modem`]) and over plain HTTP ([`http_proxy`]).
//!
//! These lived in `device-client/tests/`; they start the server (blepay-service, blepay-store,
//! tokio), so they are here and the firmware crate's dev-dependencies hold no server crate. The
//! device client's own tests (`device-client/tests/sans_io/`) need no server.
//!
//! This is test code: it unwraps and panics on purpose, with messages saying what broke.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::too_many_lines
)]

mod at_transport;
mod dispenser_over_modem;
mod http_proxy;
mod support;
