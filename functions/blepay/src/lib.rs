//! # blepay — the command's library
//!
//! `main.rs` only parses arguments and dispatches to one module per command; the work is here:
//! - [`args`]: the server's argument types (clap) and their resolution into the service's
//!   typed `Config` (development secrets generated into the data dir).
//! - [`serve`]: run the self-hosted server on SQLite (or DynamoDB).
//! - [`device`], [`phone`], [`ops`]: the `blepay device|phone|ops …` commands.
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
pub mod args;
pub mod bench;
pub mod demo;
pub mod device;
pub mod device_run;
pub mod machine;
pub mod ops;
pub mod phone;
pub mod serve;
