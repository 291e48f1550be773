//! # blepay — the command's library
//!
//! `main.rs` only parses arguments; the work is here:
//! - [`serve`]: run the self-hosted server on SQLite.
//! - [`machine`]: a scriptable simulated machine, one request per command, on the device
//!   client's identity, outbox log and clock (its state dir is the device client's outbox log,
//!   the one `device run` keeps).
//! - [`device_run`]: `blepay device run`, a simulated water dispenser on the device client's
//!   engine, driver and file-backed outbox.
//! - [`api`]: a small HTTP client for the phone and operator APIs.
//! - [`demo`]: one full payment cycle against an embedded server, narrated.
//! - [`bench`]: `blepay bench`, the load test against a hello-world ceiling, and the bytes of a
//!   payment cycle on the machine's link.

pub mod api;
pub mod bench;
pub mod demo;
pub mod device_run;
pub mod machine;
pub mod serve;
