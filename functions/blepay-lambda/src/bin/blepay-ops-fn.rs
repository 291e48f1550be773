//! `blepay-ops-fn`: the operator routes (/v1/ops/...), IAM-authorized by API Gateway.
//!
//! Cold start builds everything once (config, SDK clients, master keys, warmed DynamoDB
//! connection); then `lambda_http` feeds each API Gateway event to the same axum router
//! `blepay serve` runs.

use blepay_service::http;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    lambda_http::tracing::init_default_subscriber();
    let router = blepay_lambda::http_router(http::ops_surface)
        .await
        .inspect_err(|e| {
            tracing::error!(error = %e, "cold start failed");
        })?;
    lambda_http::run(router).await
}
