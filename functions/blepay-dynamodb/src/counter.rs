//! Counting the requests a store sends, with an SDK interceptor.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_runtime_api::box_error::BoxError;

/// How many request attempts were sent (every attempt, SDK retries included), in total and by
/// DynamoDB operation (`GetItem`, `TransactWriteItems`, ...). Clones share the counts.
#[derive(Debug, Clone, Default)]
pub struct RequestCounter {
    inner: Arc<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: AtomicU64,
    by_operation: Mutex<BTreeMap<String, u64>>,
}

impl RequestCounter {
    /// Request attempts sent since creation or the last [`reset`](Self::reset).
    pub fn count(&self) -> u64 {
        self.inner.total.load(Ordering::SeqCst)
    }

    /// Attempts per DynamoDB operation name.
    pub fn by_operation(&self) -> BTreeMap<String, u64> {
        self.inner
            .by_operation
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Attempts of one operation (`"TransactWriteItems"`).
    pub fn of(&self, operation: &str) -> u64 {
        self.by_operation().get(operation).copied().unwrap_or(0)
    }

    pub fn reset(&self) {
        let mut map = self
            .inner
            .by_operation
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.clear();
        self.inner.total.store(0, Ordering::SeqCst);
    }

    pub(crate) fn interceptor(&self) -> CountingInterceptor {
        CountingInterceptor {
            counter: self.clone(),
        }
    }

    fn record(&self, operation: &str) {
        let mut map = self
            .inner
            .by_operation
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *map.entry(operation.to_string()).or_default() += 1;
        self.inner.total.fetch_add(1, Ordering::SeqCst);
    }
}

/// Runs before every transmission (each attempt) and records the operation named by the request's
/// `X-Amz-Target` header (`DynamoDB_20120810.GetItem` → `GetItem`).
#[derive(Debug)]
pub(crate) struct CountingInterceptor {
    counter: RequestCounter,
}

impl Intercept for CountingInterceptor {
    fn name(&self) -> &'static str {
        "blepay-request-counter"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let target = context
            .request()
            .headers()
            .get("x-amz-target")
            .unwrap_or("");
        let operation = target.rsplit('.').next().unwrap_or(target);
        self.counter.record(operation);
        Ok(())
    }
}
