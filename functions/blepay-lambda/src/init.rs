//! Cold start: everything costly happens here, once per execution environment — reading the
//! configuration, loading the AWS SDK configuration, fetching the master keys, building the
//! DynamoDB client and warming its connection (TLS handshake included), so the first request
//! does not pay for it. The master keys, the provider secrets and the DynamoDB warm-up are
//! independent round trips and run concurrently; the `initialized` log line says what each took.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use aws_config::{BehaviorVersion, SdkConfig};
use axum::Router;
use blepay_dynamodb::DynamoStore;
use blepay_service::config::{Config, ConfigError, Keyring};
use blepay_service::http::{Surface, routes_for};
use blepay_service::{App, system_clock};
use blepay_store::{Store, StoreError};
use lambda_http::lambda_runtime::Diagnostic;

use crate::config::LambdaConfig;
use crate::identity::{OperatorRole, with_upstream_identity_for};
use crate::keys;

/// Why a function could not start. Lambda reports it as an init error; the message names the
/// variable or the resource at fault.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("DynamoDB: {0}")]
    Store(#[from] StoreError),
}

/// Cold start of an HTTP function: the router of `surface`, ready for `lambda_http::run`.
///
/// # Errors
/// See [`InitError`].
pub async fn http_router(surface: Surface) -> Result<Router, InitError> {
    let started = Instant::now();
    let config = LambdaConfig::from_env()?;
    let sdk = sdk_config().await;
    let sdk_ms = elapsed_ms(started);
    // The three network steps do not depend on one another: run them at once, so a cold start
    // waits for the slowest round trip, not for their sum.
    let (keyring, store, providers) = tokio::join!(
        // Boxed: the SDK's futures are large, and three side by side would be too.
        timed(Box::pin(keys::load(config.master_key_source()?, &sdk))),
        timed(Box::pin(dynamo_store(&config, &sdk))),
        timed(Box::pin(keys::load_providers(
            &config.provider_secrets,
            &config.provider_settings,
            &sdk
        ))),
    );
    let (keyring_ms, store_ms, providers_ms) = (keyring.1, store.1, providers.1);
    let (keyring, store, providers) = (keyring.0?, store.0, providers.0?);
    let mut service = service_config(&config, keyring);
    if let Some(providers) = providers {
        service.providers = providers;
    }
    let jwks_started = Instant::now();
    service.phone_tokens.start().await?;
    let jwks_ms = elapsed_ms(jwks_started);
    let app = App::new(service, Arc::new(store), system_clock());
    // On AWS the metrics are CloudWatch EMF log lines (one per event), not a scrape endpoint.
    app.metrics().enable_emf();
    let router = router_for(app.clone(), surface, config.operator_role.clone());
    // What this cold start spent, for CloudWatch (the three network steps overlap).
    tracing::info!(
        total_ms = elapsed_ms(started),
        sdk_config_ms = sdk_ms,
        master_keys_ms = keyring_ms,
        dynamodb_warm_up_ms = store_ms,
        provider_secrets_ms = providers_ms,
        jwks_ms,
        "initialized"
    );
    Ok(router.layer(axum::middleware::from_fn_with_state(
        app.metrics().clone(),
        blepay_service::metrics::track,
    )))
}

/// The router a function runs: the service's routes for `surface`, with the caller API Gateway
/// authenticated made visible to the extractors (any IAM caller is an operator). Tests send
/// recorded events through it.
pub fn router(app: App, surface: Surface) -> Router {
    router_for(app, surface, OperatorRole::AnyIamCaller)
}

/// [`router`], with only the IAM callers `operators` admits as operators.
pub fn router_for(app: App, surface: Surface, operators: OperatorRole) -> Router {
    with_upstream_identity_for(routes_for(app.clone(), surface), app, operators)
}

/// What the sweeper runs on: the store and the ACTIVE timeout.
#[derive(Clone)]
pub struct Sweeper {
    pub store: Arc<dyn Store>,
    /// `BLEPAY_ACTIVE_TIMEOUT_SECS`.
    pub active_timeout_secs: u64,
}

impl std::fmt::Debug for Sweeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sweeper")
            .field("active_timeout_secs", &self.active_timeout_secs)
            .finish_non_exhaustive()
    }
}

/// Cold start of the sweeper: only the store and the timeouts (it derives no keys, so it needs
/// no master key and no access to the secret).
///
/// # Errors
/// See [`InitError`].
pub async fn sweeper() -> Result<Sweeper, InitError> {
    let config = LambdaConfig::from_env()?;
    let sdk = sdk_config().await;
    Ok(Sweeper {
        store: Arc::new(dynamo_store(&config, &sdk).await),
        active_timeout_secs: config.service.active_timeout_secs,
    })
}

/// One sweep (what `blepay serve`'s background sweeper does, here on an EventBridge schedule):
/// expire sessions never started and release their holds, then settle ACTIVE sessions with no
/// report for `active_timeout_secs` at their last reported units. Answers
/// `{"expired": n, "timedOut": m}`.
///
/// # Errors
/// On storage failure; the scheduled invocation fails and the next one retries.
pub async fn sweep(
    store: &dyn Store,
    now: u64,
    active_timeout_secs: u64,
) -> Result<serde_json::Value, SweepError> {
    let metrics = blepay_service::metrics::Metrics::new();
    metrics.enable_emf();
    let swept = blepay_service::app::sweep(store, now, active_timeout_secs)
        .await
        .inspect_err(|_| metrics.sweep(Err(())))
        .map_err(SweepError)?;
    metrics.sweep(Ok((swept.expired, swept.timed_out)));
    if !swept.is_empty() {
        tracing::info!(
            expired = swept.expired,
            timed_out = swept.timed_out,
            "expired unstarted sessions and settled silent ACTIVE ones by timeout"
        );
    }
    Ok(serde_json::json!({ "expired": swept.expired, "timedOut": swept.timed_out }))
}

/// A failed sweep, reported to Lambda as a diagnostic.
#[derive(Debug, thiserror::Error)]
#[error("sweep failed: {0}")]
pub struct SweepError(pub StoreError);

impl From<SweepError> for Diagnostic {
    fn from(e: SweepError) -> Self {
        let error_type = match e.0 {
            StoreError::Unavailable(_) => "Blepay.RetryLater",
            StoreError::Corrupt(_) | StoreError::Internal(_) => "Blepay.Internal",
        };
        Diagnostic {
            error_type: error_type.to_owned(),
            error_message: e.to_string(),
        }
    }
}

/// The service configuration. Without `BLEPAY_JWT_SECRET` / `BLEPAY_OPS_TOKEN` (deployed), each
/// gets a random value nobody knows ([`ValidSettings::into_config`]), so a request without the
/// gateway's authorizer context can never authenticate.
///
/// [`ValidSettings::into_config`]: blepay_service::config::ValidSettings::into_config
pub fn service_config(config: &LambdaConfig, keyring: Keyring) -> Config {
    config.service.clone().into_config(keyring)
}

/// `fut`'s output and how long it took, in milliseconds.
async fn timed<T>(fut: impl Future<Output = T>) -> (T, f64) {
    let started = Instant::now();
    let out = fut.await;
    (out, elapsed_ms(started))
}

fn elapsed_ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// The AWS SDK configuration from the Lambda environment (region, role credentials).
pub async fn sdk_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest()).load().await
}

/// The DynamoDB store on one client (built once), its connection warmed. With
/// `BLEPAY_DYNAMODB_ENDPOINT` (DynamoDB Local) the client goes there, with dummy credentials when
/// the environment has none.
async fn dynamo_store(config: &LambdaConfig, sdk: &SdkConfig) -> DynamoStore {
    let client = match &config.dynamodb_endpoint {
        Some(endpoint) => blepay_dynamodb::client_from_env(Some(endpoint)).await,
        None => aws_sdk_dynamodb::Client::new(sdk),
    };
    let store = DynamoStore::new(client, config.table.clone());
    // A failed warm-up is not fatal: requests retry the connection and answer 503 RETRY_LATER
    // while DynamoDB is unreachable; failing the init would turn a blip into 502s.
    if let Err(e) = store.warm_up().await {
        tracing::warn!(error = %e, table = %config.table, "DynamoDB warm-up failed");
    }
    store
}
