//! One request each, and the retry loop that re-runs a whole attempt: contention and transient
//! failures are classified here ([`Failure`]), decisions are not.

use std::future::Future;

use aws_sdk_dynamodb::operation::transact_get_items::TransactGetItemsError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{Get, KeysAndAttributes, TransactGetItem, TransactWriteItem};
use blepay_core::DeviceId;
use blepay_store::StoreError;
use rand::Rng;

use crate::DynamoStore;
use crate::items::{self, Failure, Item, s};

/// The outcome of one transaction attempt.
pub(super) enum Tx {
    Done,
    /// Cancelled: the reason code and the old item (ALL_OLD) of each action, in order.
    Cancelled(Vec<(String, Option<Item>)>),
}

impl DynamoStore {
    /// Run `attempt` until it completes, re-running it (with jittered exponential backoff) when it
    /// lost a race or the SDK gave up on a transient failure; then [`StoreError::Unavailable`].
    pub(super) async fn retrying<T, F, Fut>(&self, mut attempt: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let policy = self.retry;
        let (mut contended, mut unavailable) = (0u32, 0u32);
        loop {
            let failure = match attempt().await {
                Ok(v) => return Ok(v),
                Err(f) => f,
            };
            let round = match &failure {
                Failure::Contention(_) | Failure::Condition => {
                    contended += 1;
                    if contended >= policy.max_attempts {
                        return Err(failure.into_store());
                    }
                    contended
                }
                Failure::Unavailable(_) => {
                    unavailable += 1;
                    if unavailable > policy.max_unavailable {
                        return Err(failure.into_store());
                    }
                    unavailable + 2
                }
                Failure::Fatal(_) => return Err(failure.into_store()),
            };
            let cap = policy
                .base_backoff
                .saturating_mul(1u32 << round.min(10))
                .min(policy.max_backoff);
            let jittered = rand::rng().random_range(0..=cap.as_millis().max(1));
            let millis = u64::try_from(jittered).unwrap_or(u64::MAX);
            tracing::debug!(?failure, millis, "retrying a contended DynamoDB operation");
            tokio::time::sleep(std::time::Duration::from_millis(millis)).await;
        }
    }

    pub(super) async fn transact(&self, actions: Vec<TransactWriteItem>) -> Result<Tx, Failure> {
        let token: String = {
            let mut rng = rand::rng();
            (0..32)
                .map(|_| char::from(b"0123456789abcdef"[rng.random_range(0..16)]))
                .collect()
        };
        let result = self
            .client
            .transact_write_items()
            .set_transact_items(Some(actions))
            .client_request_token(token)
            .send()
            .await;
        match result {
            Ok(_) => Ok(Tx::Done),
            Err(e) => {
                if let Some(TransactWriteItemsError::TransactionCanceledException(c)) =
                    e.as_service_error()
                {
                    let reasons: Vec<(String, Option<Item>)> = c
                        .cancellation_reasons()
                        .iter()
                        .map(|r| (r.code().unwrap_or("None").to_string(), r.item().cloned()))
                        .collect();
                    if let Some((code, _)) = reasons
                        .iter()
                        .find(|(code, _)| code != "None" && code != "ConditionalCheckFailed")
                    {
                        // TransactionConflict, ThrottlingError, ... : nothing was written.
                        return Err(Failure::Contention(format!(
                            "transaction cancelled: {code}"
                        )));
                    }
                    return Ok(Tx::Cancelled(reasons));
                }
                Err(items::sdk_error(&e))
            }
        }
    }

    /// A transaction whose any failed condition means "the state changed since it was read".
    pub(super) async fn transact_or_rerun(
        &self,
        actions: Vec<TransactWriteItem>,
    ) -> Result<(), Failure> {
        match self.transact(actions).await? {
            Tx::Done => Ok(()),
            Tx::Cancelled(reasons) => Err(Failure::Contention(format!(
                "state changed since read: {:?}",
                reasons.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>()
            ))),
        }
    }

    pub(super) async fn get(&self, key: Item) -> Result<Option<Item>, Failure> {
        self.client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key))
            .consistent_read(true)
            .send()
            .await
            .map(|o| o.item)
            .map_err(|e| items::sdk_error(&e))
    }

    /// One strongly consistent `BatchGetItem`; the items in the order of `keys` (`None` when
    /// absent).
    pub(super) async fn batch_get(&self, keys: Vec<Item>) -> Result<Vec<Option<Item>>, Failure> {
        let wanted = KeysAndAttributes::builder()
            .set_keys(Some(keys.clone()))
            .consistent_read(true)
            .build()
            .map_err(items::build_error)?;
        let out = self
            .client
            .batch_get_item()
            .request_items(&self.table, wanted)
            .send()
            .await
            .map_err(|e| items::sdk_error(&e))?;
        if out
            .unprocessed_keys()
            .is_some_and(|u| u.values().any(|k| !k.keys().is_empty()))
        {
            return Err(Failure::Unavailable(
                "BatchGetItem left keys unprocessed".into(),
            ));
        }
        let found = out
            .responses
            .and_then(|mut r| r.remove(&self.table))
            .unwrap_or_default();
        Ok(keys
            .iter()
            .map(|k| {
                found
                    .iter()
                    .find(|item| item.get("pk") == k.get("pk") && item.get("sk") == k.get("sk"))
                    .cloned()
            })
            .collect())
    }

    /// One `TransactGetItems`: a snapshot of `keys` isolated from concurrent transactions (a
    /// `BatchGetItem` may see half of one). A conflicting write cancels it: contention.
    pub(super) async fn transact_get(&self, keys: Vec<Item>) -> Result<Vec<Option<Item>>, Failure> {
        let mut request = self.client.transact_get_items();
        for key in keys {
            let get = Get::builder()
                .table_name(&self.table)
                .set_key(Some(key))
                .build()
                .map_err(items::build_error)?;
            request = request.transact_items(TransactGetItem::builder().get(get).build());
        }
        match request.send().await {
            Ok(out) => Ok(out.responses().iter().map(|r| r.item().cloned()).collect()),
            Err(e) => {
                if let Some(TransactGetItemsError::TransactionCanceledException(_)) =
                    e.as_service_error()
                {
                    return Err(Failure::Contention("TransactGetItems cancelled".into()));
                }
                Err(items::sdk_error(&e))
            }
        }
    }

    /// Poll's one read: a `Query` of the device's partition (its one item carries the sequence
    /// state and the grant).
    pub(super) async fn query_device(&self, id: DeviceId) -> Result<Option<Item>, Failure> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND sk = :sk")
            .expression_attribute_values(":pk", s(items::device_pk(id)))
            .expression_attribute_values(":sk", s("DEVICE"))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| items::sdk_error(&e))?;
        Ok(out.items.and_then(|mut v| v.pop()))
    }
}
