//! `blepay-sweeper-fn`: run by an EventBridge schedule; expires sessions never started and
//! releases their holds, and settles ACTIVE sessions silent for `BLEPAY_ACTIVE_TIMEOUT_SECS` at
//! their last reported units (what `blepay serve`'s background sweeper does).

use blepay_service::system_clock;
use lambda_http::lambda_runtime::{self, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let sweeper = blepay_lambda::sweeper().await.inspect_err(|e| {
        tracing::error!(error = %e, "cold start failed");
    })?;
    let clock = system_clock();
    lambda_runtime::run(service_fn(move |_: LambdaEvent<serde_json::Value>| {
        let sweeper = sweeper.clone();
        let now = clock();
        async move {
            blepay_lambda::sweep(sweeper.store.as_ref(), now, sweeper.active_timeout_secs).await
        }
    }))
    .await
}
