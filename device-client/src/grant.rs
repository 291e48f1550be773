//! A grant: a session the server authorised on this machine, with its terms (hold, price, start
//! deadline, use counter). It is the protocol's typed grant ([`blepay_proto::machine::Grant`]),
//! read from poll answers by the very codec the server writes them with; the engine keeps it in
//! its phase and the journal persists it with a start request.
//!
//! [`Grant::max_units`] is the dispensing cap, `blepay_core::units_for_hold` — the same function
//! the server's `Tariff::units_for` uses.

pub use blepay_proto::machine::{Grant, GrantError};
