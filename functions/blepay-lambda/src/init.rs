//! Cold start: everything costly happens here, once per execution environment — reading the
//! configuration, loading the AWS SDK configuration, fetching the master keys, building the
//! DynamoDB client and warming its connection (TLS handshake included), so the first request
//! does not pay for it. The master keys, the provider secrets and the DynamoDB warm-up are
//! independent round trips and run concurrently; the `initialized` log line says what each took.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use aws_config::{BehaviorVersion, ConfigLoader, SdkConfig};
use axum::Router;
use blepay_dynamodb::DynamoStore;
use blepay_service::config::{Config, ConfigError, Keyring};
use blepay_service::http::{Surface, SurfaceRoutes, routes_for, routes_with};
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

/// Cold start of an HTTP function: the router of one surface (`blepay_service::http::
/// {phone,ops,device}_surface`), ready for `lambda_http::run`. Given the surface's function, not
/// a [`Surface`], so a binary links only its own surface's handlers.
///
/// # Errors
/// See [`InitError`].
pub async fn http_router(surface: SurfaceRoutes) -> Result<Router, InitError> {
    let started = Instant::now();
    let config = LambdaConfig::from_env()?;
    let sdk = sdk_config().await;
    let sdk_ms = elapsed_ms(started);
    // The three network steps do not depend on one another: run them at once, so a cold start
    // waits for the slowest round trip, not for their sum.
    let (keyring, store, providers) = tokio::join!(
        // Boxed: the SDK's futures are large, and three side by side would be too.
        timed(Box::pin(keys::load(config.master_key_source()?, &sdk))),
        timed(Box::pin(dynamo_store(&config, &sdk, WarmUp::Yes))),
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
    let router = with_upstream_identity_for(
        routes_with(app.clone(), surface),
        app.clone(),
        config.operator_role.clone(),
    );
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
        // No warm-up: nobody waits for a sweep, whose one request opens the connection anyway.
        store: Arc::new(dynamo_store(&config, &sdk, WarmUp::No).await),
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

/// The AWS SDK configuration from the Lambda environment (region, role credentials), its HTTPS
/// client trusting [`AMAZON_TRUST_ROOTS`] only ([`aws_tls_context`]).
pub async fn sdk_config() -> SdkConfig {
    sdk_loader().load().await
}

/// What [`sdk_config`] loads.
fn sdk_loader() -> ConfigLoader {
    use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
    let loader = aws_config::defaults(BehaviorVersion::latest());
    match aws_tls_context() {
        // The SDK's default client (hyper, rustls on aws-lc), but for the trust store.
        Some(context) => loader.http_client(
            aws_smithy_http_client::Builder::new()
                .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc))
                .tls_context(context)
                .build_https(),
        ),
        None => loader,
    }
}

/// The roots of Amazon Trust Services, which issue the certificate of every AWS service endpoint
/// the functions call (DynamoDB, Secrets Manager, SSM Parameter Store), as PEM.
pub const AMAZON_TRUST_ROOTS: &[u8] = include_bytes!("amazon-trust-roots.pem");

/// The TLS settings of the functions' SDK clients: a trust store of [`AMAZON_TRUST_ROOTS`] only.
/// The SDK's default trusts the system's store, which it reads and parses once per process, so on
/// every cold start (3–5 ms of init here, for ≈ 290 files under /etc/ssl/certs:
/// docs/performance.md §4); these five certificates are in the binary. `None` (the SDK's
/// default) if the settings are refused.
#[must_use]
pub fn aws_tls_context() -> Option<aws_smithy_http_client::tls::TlsContext> {
    use aws_smithy_http_client::tls::{TlsContext, TrustStore};
    let trust = TrustStore::empty()
        .with_native_roots(false)
        .with_pem_certificate(AMAZON_TRUST_ROOTS);
    TlsContext::builder()
        .with_trust_store(trust)
        .build()
        .inspect_err(|e| tracing::warn!(error = %e, "the AWS SDK's TLS settings were refused"))
        .ok()
}

/// Whether the cold start opens the DynamoDB connection before the first request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WarmUp {
    Yes,
    No,
}

/// The DynamoDB store on one client (built once), its connection warmed (`WarmUp::Yes`). With
/// `BLEPAY_DYNAMODB_ENDPOINT` (DynamoDB Local) the client goes there, with dummy credentials when
/// the environment has none.
async fn dynamo_store(config: &LambdaConfig, sdk: &SdkConfig, warm: WarmUp) -> DynamoStore {
    let client = match &config.dynamodb_endpoint {
        // The same HTTPS client as on AWS (DynamoDB Local's plain HTTP passes through it).
        Some(endpoint) => blepay_dynamodb::client_from_loader(sdk_loader(), Some(endpoint)).await,
        None => aws_sdk_dynamodb::Client::new(sdk),
    };
    let store = DynamoStore::new(client, config.table.clone());
    // A failed warm-up is not fatal: requests retry the connection and answer 503 RETRY_LATER
    // while DynamoDB is unreachable; failing the init would turn a blip into 502s.
    if warm == WarmUp::Yes
        && let Err(e) = store.warm_up().await
    {
        tracing::warn!(error = %e, table = %config.table, "DynamoDB warm-up failed");
    }
    store
}

#[cfg(test)]
mod tests {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;

    use super::*;

    /// The trust store is exactly the five Amazon Trust Services roots, each a parsable
    /// certificate (the SDK's connector `expect`s valid PEM when it first connects).
    #[test]
    fn the_sdk_trusts_the_five_amazon_trust_services_roots() {
        let certs: Vec<CertificateDer<'_>> = CertificateDer::pem_slice_iter(AMAZON_TRUST_ROOTS)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(certs.len(), 5);
        for (cert, name) in certs.iter().zip([
            "Amazon Root CA 1",
            "Amazon Root CA 2",
            "Amazon Root CA 3",
            "Amazon Root CA 4",
            "Starfield Services Root Certificate Authority - G2",
        ]) {
            let der: &[u8] = cert.as_ref();
            assert!(
                der.windows(name.len()).any(|w| w == name.as_bytes()),
                "{name} is not where it should be"
            );
            // An X.509 certificate a TLS client can anchor its verification on.
            webpki::anchor_from_trusted_cert(cert).unwrap();
        }
        assert!(aws_tls_context().is_some());
    }
}
