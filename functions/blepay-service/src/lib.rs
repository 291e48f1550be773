//! # blepay-service — the handlers and their front ends
//!
//! - [`app`]: the handlers as plain async functions over wire messages ([`App`]).
//! - [`http`]: the axum router (proto3 JSON and `application/x-protobuf`).
//! - [`grpc`]: the tonic services (plus reflection v1 and v1alpha).
//! - [`server`]: one port for both (plain or TLS), the machine listener, and the expiry sweeper.
//! - [`limits`]: timeouts, connection/stream caps and message sizes of the listeners.
//! - [`error`]: the one mapping from [`error::ErrorCode`] to HTTP status and gRPC code.
//! - [`auth`]: phone JWTs and the operator token.
//! - [`operator`]: operators as principals, their roles and what each may do.
//! - [`operators`]: operator credentials, the operator routes and the audit trail.
//! - [`page`]: cursor pagination for the list routes.
//! - [`devices`]: the fleet list, machine lifecycle and the daily spending cap.
//! - [`device_keys`]: a machine key's revocation and rotation (delivered over the air).
//! - [`refunds`]: refunds, closing a session by hand, the users' problem reports.
//! - [`topups`]: users' own top-ups through a provider: start, notifications, the operators' list and refund.
//! - [`providers`]: Stripe and WeChat Pay: their notifications and their outbound clients.
//! - [`reports`]: the back office's lists, statements and sales report (JSON, protobuf, CSV).
//! - [`config`]: typed configuration (`Settings` → validated once → `Config`) and the master keyring.
//!
//! Wire types (`pb`) stop here: below, the store and core speak domain types only.

pub mod app;
pub mod auth;
pub mod config;
pub mod console;
pub mod device_keys;
pub mod devices;
pub mod error;
pub mod grpc;
pub mod http;
pub mod key_cache;
pub mod limits;
pub mod metrics;
pub mod operator;
pub mod operators;
pub mod page;
pub mod providers;
pub mod refunds;
pub mod reports;
pub mod server;
pub mod topups;

pub use app::{App, Clock, system_clock};
pub use config::{Config, Settings, ValidSettings};
pub use error::{ApiError, ErrorCode};
pub use operator::{Action, Operator, Role};
