//! # blepay-dynamodb — the [`Store`](blepay_store::Store) on Amazon DynamoDB
//!
//! One table (single-table design, see `docs/dynamodb.md`): devices, wallets, sessions, single-use
//! advert markers, idempotency records, ledger entries and provider top-ups (with their applied
//! events and refunds, `ops/topups.rs`) are items keyed by `pk`/`sk`; one sparse GSI (`due`) lists
//! AUTHORIZED sessions by start deadline for the sweeper, others serve the lists (`ops/lists.rs`). Every business
//! operation is at most one read round trip (`TransactGetItems`, `BatchGetItem`, `GetItem` or
//! `Query`) followed by one conditional write (`TransactWriteItems`, or a single-item write);
//! refusals are decided from the pre-read and, under races, from the transaction's cancellation
//! reasons (with `ReturnValuesOnConditionCheckFailure::AllOld`), never from a second read except on
//! retry paths. Pay and the machine requests usually skip the read: the store decides from what
//! it last read or wrote of the device item and conditions the write on it (`shadow.rs`,
//! docs/dynamodb.md), so they are one request each.
//!
//! Contention (`TransactionConflict`, a condition that failed because the item changed since it
//! was read) re-runs the whole operation with jittered backoff; throttling and 5xx are retried by
//! the SDK first. What still fails is [`StoreError::Unavailable`] and changed nothing.
//!
//! The decisions (what a pay answers, the sequence-number check, a start's or report's outcome,
//! the audit's totals) are `blepay_store::decide`'s, the money rules and the session state machine
//! `blepay-core`'s: this crate gathers the facts, calls them and writes back what they return, as
//! conditional updates (`ops/`, one file per operation).
//!
//! Must not depend on: HTTP frameworks, protobuf, the advert MAC (callers verify before calling).

mod counter;
mod items;
mod ops;
mod shadow;
mod table;
#[cfg(feature = "testing")]
pub mod testing;

use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::{Credentials, Region};
use aws_sdk_dynamodb::types::AttributeValue;
use blepay_store::StoreError;

pub use counter::{RequestCounter, Units};
pub use table::create_table;

/// The DynamoDB implementation of [`blepay_store::Store`].
#[derive(Debug, Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
    counter: RequestCounter,
    retry: RetryPolicy,
    /// This process's last knowledge of device items, to skip reads (see `shadow.rs`).
    shadow: shadow::Shadow,
}

/// How often a contended operation is re-run before answering [`StoreError::Unavailable`].
#[derive(Debug, Clone, Copy)]
struct RetryPolicy {
    /// Re-runs after a transaction conflict or a condition that lost a race.
    max_attempts: u32,
    /// Re-runs after the SDK itself gave up (throttling, 5xx, connection errors).
    max_unavailable: u32,
    base_backoff: Duration,
    max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 12,
            max_unavailable: 2,
            base_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(500),
        }
    }
}

impl DynamoStore {
    /// A store on `table`, using `client` (its configuration is kept; a request-counting
    /// interceptor is added).
    #[allow(
        clippy::needless_pass_by_value,
        reason = "the public API takes the client by value, as the SDK's own constructors do"
    )]
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        let counter = RequestCounter::default();
        let config = client
            .config()
            .to_builder()
            .interceptor(counter.interceptor())
            .build();
        Self {
            client: Client::from_conf(config),
            table: table.into(),
            counter,
            retry: RetryPolicy::default(),
            shadow: shadow::Shadow::default(),
        }
    }

    /// Load the AWS configuration from the environment (the usual chain) and open `table`.
    ///
    /// With `endpoint` (e.g. `http://127.0.0.1:8000` for DynamoDB Local) requests go there, and when
    /// the environment names no credentials or region, static dummy credentials and `us-east-1`
    /// are used so that a local server works offline (and nothing asks the instance metadata
    /// service).
    ///
    /// # Errors
    /// None today (loading the configuration does not fail); kept fallible for callers.
    pub async fn from_env(table: &str, endpoint: Option<&str>) -> Result<Self, StoreError> {
        let client = client_from_env(endpoint).await;
        Ok(Self::new(client, table))
    }

    /// The same store, except that it never acts on its last knowledge of a device item: every
    /// pay and machine request reads first (the path taken when that knowledge is missing or
    /// stale; tests run the conformance suite both ways).
    #[must_use]
    pub fn without_device_shadow(mut self) -> Self {
        self.shadow = shadow::Shadow::disabled();
        self
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The SDK client (with the counting interceptor).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Counts every request attempt this store sends (retries included).
    pub fn request_counter(&self) -> RequestCounter {
        self.counter.clone()
    }

    /// One cheap call to open the connection (DNS, TCP, TLS) during a Lambda init, so the first
    /// request does not pay for it: a `GetItem` (eventually consistent, 0.5 RRU) of a key no item
    /// has. A data-plane call, like every other request of the functions: AWS throttles the
    /// control plane (`DescribeTable`, 2,500 requests/s per account) and advises against mixing
    /// it into data-plane code, and a burst of cold starts would call it once each.
    ///
    /// # Errors
    /// When the table cannot be read (missing, no permission, unreachable).
    pub async fn warm_up(&self) -> Result<(), StoreError> {
        self.client
            .get_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(WARM_UP_KEY.into()))
            .key("sk", AttributeValue::S(WARM_UP_KEY.into()))
            .projection_expression("pk")
            .send()
            .await
            .map(|_| ())
            .map_err(|e| items::sdk_error(&e).into_store())
    }
}

/// The key [`DynamoStore::warm_up`] reads (`pk` and `sk`): no item is ever written under it.
pub const WARM_UP_KEY: &str = "WARM_UP";

/// Build a DynamoDB client from the environment; see [`DynamoStore::from_env`].
///
/// # Errors
/// None (kept for symmetry with other constructors).
pub async fn client_from_env(endpoint: Option<&str>) -> Client {
    client_from_loader(
        aws_config::defaults(aws_config::BehaviorVersion::latest()),
        endpoint,
    )
    .await
}

/// [`client_from_env`] on `loader` (the caller's SDK settings, e.g. its HTTPS client).
pub async fn client_from_loader(
    mut loader: aws_config::ConfigLoader,
    endpoint: Option<&str>,
) -> Client {
    if let Some(endpoint) = endpoint {
        loader = loader.endpoint_url(endpoint);
        let env = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
        if !env("AWS_REGION") && !env("AWS_DEFAULT_REGION") {
            loader = loader.region(Region::new("us-east-1"));
        }
        if !env("AWS_ACCESS_KEY_ID") && !env("AWS_PROFILE") {
            // DynamoDB Local (2.x and later) accepts access key ids of letters and digits only.
            loader = loader.credentials_provider(Credentials::new(
                "blepaylocal",
                "blepaylocal",
                None,
                None,
                "blepay-local-endpoint",
            ));
        }
    }
    let sdk = loader.load().await;
    Client::new(&sdk)
}
