//! `hello-fn`: the smallest `lambda_runtime` function (echoes `{"hello":"world"}`), built only as
//! the baseline of the cold-start benchmark (`cold-start-bench`, docs/performance.md): what a
//! Rust Lambda costs to start before blepay adds the SDK, the keyring and the router.

use lambda_http::lambda_runtime::{self, LambdaEvent, service_fn};
use serde_json::{Value, json};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::run(service_fn(|_event: LambdaEvent<Value>| async {
        Ok::<_, lambda_runtime::Error>(json!({ "hello": "world" }))
    }))
    .await
}
