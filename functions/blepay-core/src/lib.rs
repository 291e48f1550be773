//! # blepay-core — the pure domain
//!
//! Identifiers, money, the wallet/hold/ledger rules and the session state machine.
//!
//! This crate knows nothing about HTTP, protobuf, SQL, DynamoDB, async runtimes, clocks or
//! randomness: time and ids are passed in. It is `no_std` (+ `alloc`) so that the device client
//! can use the very same types on a microcontroller.
#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

pub mod ids;
pub mod money;
pub mod session;
pub mod telemetry;
pub mod wallet;

pub use ids::{
    DeviceId, DeviceName, IdParseError, IdempotencyKey, KeyEpoch, KeyVersion, SessionId, Slot,
    UseCounter, UserId,
};
pub use money::{Amount, Currency, MoneyError, Tariff, UnitName, Units, units_for_hold};
pub use session::{
    CloseReason, LateOutcome, LateReport, OperatorClose, ReportOutcome, Session, SessionError,
    SessionStatus, Settlement, StartOutcome,
};
pub use telemetry::{Telemetry, TelemetryError};
pub use wallet::{EntryKind, LedgerAccount, LedgerEntry, Provider, Wallet, WalletError};
