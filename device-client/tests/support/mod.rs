//! Test support: the real server in-process, a SIM800 simulator, a fault-injecting TCP proxy, a
//! simulated dispenser on the real engine + driver ([`dispenser`]), and a request-level harness
//! for transport tests ([`machine`]: seal, send until answered with the same bytes, open).
//!
//! This is test code: it unwraps and panics on purpose, with messages saying what broke.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod dispenser;
pub mod machine;
pub mod proxy;
pub mod server;
pub mod sim800;
