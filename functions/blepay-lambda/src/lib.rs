//! # blepay-lambda — blepay on AWS Lambda
//!
//! API Gateway (HTTP API, payload 2.0) → these functions → DynamoDB. The HTTP functions run the
//! very axum routers `blepay serve` runs ([`blepay_service::http::routes_for`]) through
//! `lambda_http`: there is no second routing layer, so the HTTP contract cannot drift.
//!
//! | binary | routes | caller authenticated by |
//! |---|---|---|
//! | `blepay-verify-fn` | `/v1/verify`, `/v1/pay`, `/v1/sessions/{id}`, `/v1/wallet` | the gateway's JWT authorizer (`sub` = user) |
//! | `blepay-ops-fn` | `/v1/ops/...` | the gateway's IAM authorization, sessions of the operator role only (`BLEPAY_OPERATOR_ROLE_ID`) |
//! | `blepay-device-fn` | `POST /v1/device` | each frame (docs/protocol.md) |
//! | `blepay-sweeper-fn` | EventBridge schedule: expiry and the ACTIVE timeout | — |
//!
//! ## Map
//! - [`config`]: typed configuration from the environment, loaded once at cold start.
//! - [`keys`]: the master keyring, from Secrets Manager, SSM SecureString or the environment.
//! - [`identity`]: the caller the gateway already authenticated (request context → extensions).
//! - [`init`]: cold start: config, SDK clients, keyring, store warm-up → the router to run.
//!
//! ## Invariants
//! - Everything costly happens once, at cold start; a request only runs the router.
//! - The caller identity comes only from the request context API Gateway builds (clients cannot
//!   forge it). Without one (`cargo lambda watch`, local runs) the router falls back to the
//!   `Authorization` header exactly as `blepay serve` does.
//! - The master keys never print ([`blepay_service::config::Keyring`] redacts them).

pub mod config;
pub mod identity;
pub mod init;
pub mod keys;

pub use config::{LambdaConfig, MasterKeySource};
pub use identity::{OperatorRole, with_upstream_identity, with_upstream_identity_for};
pub use init::{InitError, SweepError, Sweeper, http_router, router, router_for, sweep, sweeper};
