//! # blepay — the command's library
//!
//! `main.rs` only parses arguments; the work is here:
//! - [`serve`]: run the self-hosted server on SQLite.
//! - [`machine`]: a scriptable simulated machine (state dir with its sequence number, use counter
//!   and clock offset) on `blepay-device-client`.
//! - [`api`]: a small HTTP client for the phone and operator APIs.
//! - [`demo`]: one full payment cycle against an embedded server, narrated.

pub mod api;
pub mod demo;
pub mod machine;
pub mod serve;
