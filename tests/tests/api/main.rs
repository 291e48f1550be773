//! End-to-end tests of blepay: the real server, driven from the outside.
//!
//! One binary, one module per concern (zero-to-production style); the harness is `blepay_e2e`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::too_many_lines
)]

mod backoffice_devices;
mod backoffice_keys;
mod backoffice_money;
mod backoffice_reports;
mod console;
mod console_http;
mod device_link;
mod device_run;
mod errors;
mod expiry;
mod full_cycle_grpc;
mod full_cycle_http;
mod health;
mod idempotency;
mod operators;
mod pay_limits;
mod press;
mod race;
mod readme;
mod reflection;
mod reliability;
mod restart;
mod topups;
