//! Counting the requests a store sends, and (when asked) the capacity units DynamoDB says they
//! consumed, with an SDK interceptor.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use aws_sdk_dynamodb::config::interceptors::{
    AfterDeserializationInterceptorContextRef, BeforeSerializationInterceptorContextMut,
    BeforeTransmitInterceptorContextRef,
};
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::operation::{
    batch_get_item::{BatchGetItemInput, BatchGetItemOutput},
    batch_write_item::{BatchWriteItemInput, BatchWriteItemOutput},
    delete_item::{DeleteItemInput, DeleteItemOutput},
    get_item::{GetItemInput, GetItemOutput},
    put_item::{PutItemInput, PutItemOutput},
    query::{QueryInput, QueryOutput},
    scan::{ScanInput, ScanOutput},
    transact_get_items::{TransactGetItemsInput, TransactGetItemsOutput},
    transact_write_items::{TransactWriteItemsInput, TransactWriteItemsOutput},
    update_item::{UpdateItemInput, UpdateItemOutput},
};
use aws_sdk_dynamodb::types::{ConsumedCapacity, ReturnConsumedCapacity};
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
    /// Ask DynamoDB for `ConsumedCapacity` (`INDEXES`: the total and its parts) on every
    /// request, and add it up.
    measure_units: AtomicBool,
    units: Mutex<Units>,
    /// Units by where they were spent: `table`, or an index's name.
    by_index: Mutex<BTreeMap<String, f64>>,
}

/// Capacity units DynamoDB reported as consumed (`ReturnConsumedCapacity = INDEXES`: the table and
/// its indexes), summed over successful requests since the last reset.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Units {
    /// Read request units (`GetItem`, `Query`, `Scan`, `BatchGetItem`, `TransactGetItems`).
    pub read: f64,
    /// Write request units (every other operation).
    pub write: f64,
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
        *self.lock_units() = Units::default();
        self.inner
            .by_index
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// The units since the last reset by where DynamoDB spent them: `"table"` or an index name
    /// (`ReturnConsumedCapacity = INDEXES`).
    pub fn units_by_index(&self) -> BTreeMap<String, f64> {
        self.inner
            .by_index
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// From now on every request asks DynamoDB for its consumed capacity (`INDEXES`), and
    /// [`units`](Self::units) adds it up. Off by default (it only adds a field to each request
    /// and its answer).
    pub fn measure_units(&self) {
        self.inner.measure_units.store(true, Ordering::SeqCst);
    }

    /// Capacity units consumed since the last [`reset`](Self::reset), as DynamoDB reported them
    /// (only while [`measure_units`](Self::measure_units) is on; refused requests report none).
    pub fn units(&self) -> Units {
        *self.lock_units()
    }

    fn lock_units(&self) -> std::sync::MutexGuard<'_, Units> {
        self.inner
            .units
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn add_units(&self, read: bool, capacity: &[ConsumedCapacity]) {
        let sum: f64 = capacity.iter().filter_map(|c| c.capacity_units).sum();
        {
            let mut by_index = self
                .inner
                .by_index
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for c in capacity {
                let table = c.table.as_ref().and_then(|t| t.capacity_units);
                *by_index.entry("table".into()).or_default() += table.unwrap_or_default();
                for (name, cap) in c.global_secondary_indexes.iter().flatten() {
                    *by_index.entry(name.clone()).or_default() +=
                        cap.capacity_units.unwrap_or_default();
                }
            }
        }
        let mut units = self.lock_units();
        if read {
            units.read += sum;
        } else {
            units.write += sum;
        }
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

/// Ask for the consumed capacity (`INDEXES`: the total, the table's and each index's) on the
/// operations the store sends.
fn ask_for_units(input: &mut aws_smithy_runtime_api::client::interceptors::context::Input) {
    macro_rules! ask {
        ($($t:ty),*) => {
            $(if let Some(i) = input.downcast_mut::<$t>() {
                i.return_consumed_capacity.get_or_insert(ReturnConsumedCapacity::Indexes);
                return;
            })*
        };
    }
    ask!(
        GetItemInput,
        PutItemInput,
        UpdateItemInput,
        DeleteItemInput,
        QueryInput,
        ScanInput,
        BatchGetItemInput,
        BatchWriteItemInput,
        TransactGetItemsInput,
        TransactWriteItemsInput
    );
}

/// The consumed capacity an answer reports: `(is a read, entries)`.
fn units_of(
    output: &aws_smithy_runtime_api::client::interceptors::context::Output,
) -> Option<(bool, Vec<ConsumedCapacity>)> {
    macro_rules! one {
        ($read:expr, $($t:ty),*) => {
            $(if let Some(o) = output.downcast_ref::<$t>() {
                return Some(($read, o.consumed_capacity.clone().into_iter().collect()));
            })*
        };
    }
    macro_rules! many {
        ($read:expr, $($t:ty),*) => {
            $(if let Some(o) = output.downcast_ref::<$t>() {
                return Some(($read, o.consumed_capacity.clone().unwrap_or_default()));
            })*
        };
    }
    one!(true, GetItemOutput, QueryOutput, ScanOutput);
    one!(false, PutItemOutput, UpdateItemOutput, DeleteItemOutput);
    many!(true, BatchGetItemOutput, TransactGetItemsOutput);
    many!(false, BatchWriteItemOutput, TransactWriteItemsOutput);
    None
}

impl Intercept for CountingInterceptor {
    fn name(&self) -> &'static str {
        "blepay-request-counter"
    }

    fn modify_before_serialization(
        &self,
        context: &mut BeforeSerializationInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if self.counter.inner.measure_units.load(Ordering::SeqCst) {
            ask_for_units(context.input_mut());
        }
        Ok(())
    }

    fn read_after_deserialization(
        &self,
        context: &AfterDeserializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if self.counter.inner.measure_units.load(Ordering::SeqCst)
            && let Ok(output) = context.output_or_error()
            && let Some((read, capacity)) = units_of(output)
        {
            self.counter.add_units(read, &capacity);
        }
        Ok(())
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
