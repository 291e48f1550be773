//! The no_std core of the machine: session engine scenarios against a fake server that keeps the
//! protocol's rules, the clock and advert, the outbox's crash recovery, the record decoders, and
//! the bytes each request costs on the 2G link.

// Test support code outside `#[test]` functions (the fake server, the rig) may panic too.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::too_many_lines
)]

mod bytes;
mod clock;
mod common;
mod crash;
mod engine;
#[cfg(feature = "std")]
mod file_log;
mod records;
mod rekey;
