//! Creating the table (operators: `blepay ops create-table`; tests: a fresh table each).

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, TableStatus, TimeToLiveSpecification,
};
use blepay_store::StoreError;

use crate::items::{DUE_AT, DUE_INDEX, DUE_PK, PK, SK, TTL, build_error, sdk_error};
use crate::ops::{
    L_REFUND, L_USER, LEDGER_BY_USER, REFUNDS, SESSIONS_BY_DEVICE, SESSIONS_BY_TIME,
    SESSIONS_BY_USER, T_USER, TOPUPS_BY_USER,
};

/// Create blepay's table (on-demand billing, the `due` GSI and the lists' GSIs, TTL on `ttl`)
/// and wait until it is active. An existing table is fine (nothing is changed but TTL, which is enabled if it is not).
///
/// # Errors
/// When DynamoDB refuses or cannot be reached.
pub async fn create_table(client: &Client, table: &str) -> Result<(), StoreError> {
    let key = |name: &str, kind: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(kind)
            .build()
            .map_err(build_error)
    };
    let attr = |name: &str, kind: ScalarAttributeType| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(kind)
            .build()
            .map_err(build_error)
    };
    let gsi = |name: &str, hash: &str, range: &str| {
        GlobalSecondaryIndex::builder()
            .index_name(name)
            .key_schema(key(hash, KeyType::Hash)?)
            .key_schema(key(range, KeyType::Range)?)
            .projection(
                Projection::builder()
                    .projection_type(ProjectionType::All)
                    .build(),
            )
            .build()
            .map_err(build_error)
    };
    let due = gsi(DUE_INDEX, DUE_PK, DUE_AT)?;
    let created = client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attr(PK, ScalarAttributeType::S)?)
        .attribute_definitions(attr(SK, ScalarAttributeType::S)?)
        .attribute_definitions(attr(DUE_PK, ScalarAttributeType::S)?)
        .attribute_definitions(attr(DUE_AT, ScalarAttributeType::N)?)
        .attribute_definitions(attr("user", ScalarAttributeType::S)?)
        .attribute_definitions(attr("device", ScalarAttributeType::S)?)
        .attribute_definitions(attr("type", ScalarAttributeType::S)?)
        .attribute_definitions(attr("created_at", ScalarAttributeType::N)?)
        .attribute_definitions(attr(L_USER, ScalarAttributeType::S)?)
        .attribute_definitions(attr(L_REFUND, ScalarAttributeType::S)?)
        .attribute_definitions(attr("at", ScalarAttributeType::N)?)
        .attribute_definitions(attr(T_USER, ScalarAttributeType::S)?)
        .key_schema(key(PK, KeyType::Hash)?)
        .key_schema(key(SK, KeyType::Range)?)
        .global_secondary_indexes(due)
        // The back office's lists (docs/dynamodb.md, ops/lists.rs).
        .global_secondary_indexes(gsi(SESSIONS_BY_USER, "user", "created_at")?)
        .global_secondary_indexes(gsi(SESSIONS_BY_DEVICE, "device", "created_at")?)
        .global_secondary_indexes(gsi(SESSIONS_BY_TIME, "type", "created_at")?)
        .global_secondary_indexes(gsi(LEDGER_BY_USER, L_USER, "at")?)
        .global_secondary_indexes(gsi(REFUNDS, L_REFUND, "at")?)
        // A user's provider top-ups (issue 12, ops/topups.rs).
        .global_secondary_indexes(gsi(TOPUPS_BY_USER, T_USER, "created_at")?)
        .send()
        .await;
    match created {
        Ok(_) => tracing::info!(table, "created the DynamoDB table"),
        Err(e) if e.code() == Some("ResourceInUseException") => {
            tracing::info!(table, "the DynamoDB table exists");
        }
        Err(e) => return Err(sdk_error(&e).into_store()),
    }
    wait_active(client, table).await?;
    enable_ttl(client, table).await;
    Ok(())
}

async fn wait_active(client: &Client, table: &str) -> Result<(), StoreError> {
    for _ in 0..120 {
        let described = client
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(|e| sdk_error(&e).into_store())?;
        if described.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    Err(StoreError::Unavailable(format!(
        "table {table} did not become active"
    )))
}

/// Enable TTL on `ttl`. Already enabled is fine; an endpoint that does not support it is logged
/// and tolerated (expired markers are then kept, which is harmless).
async fn enable_ttl(client: &Client, table: &str) {
    let spec = match TimeToLiveSpecification::builder()
        .attribute_name(TTL)
        .enabled(true)
        .build()
    {
        Ok(spec) => spec,
        Err(e) => {
            tracing::warn!(error = %e, "cannot build the TTL specification");
            return;
        }
    };
    let result = client
        .update_time_to_live()
        .table_name(table)
        .time_to_live_specification(spec)
        .send()
        .await;
    if let Err(e) = result {
        let message = e.message().unwrap_or_default();
        if message.contains("already enabled") {
            return;
        }
        tracing::warn!(
            table,
            code = e.code().unwrap_or("?"),
            message,
            "could not enable TTL"
        );
    }
}
