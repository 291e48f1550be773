//! `blepay ops …`: operator commands — the operator HTTP API, creating the DynamoDB table, and
//! minting development phone JWTs.

use std::path::PathBuf;

use anyhow::anyhow;
use serde_json::json;

use crate::api::{Api, random_key};
use crate::args::DynamoArgs;

/// `blepay ops` arguments.
#[derive(Debug, clap::Args)]
pub struct OpsArgs {
    #[arg(long, env = "BLEPAY_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    #[arg(
        long,
        env = "BLEPAY_OPS_TOKEN",
        hide_env_values = true,
        default_value = ""
    )]
    ops_token: String,
    #[command(subcommand)]
    command: OpsCommand,
}

#[derive(Debug, clap::Subcommand)]
enum OpsCommand {
    /// Register a machine; prints its device key.
    RegisterDevice {
        #[arg(long)]
        device_id: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        price_per_unit: i64,
        #[arg(long)]
        unit_name: String,
        #[arg(long, default_value = "EUR")]
        currency: String,
    },
    /// Credit a user's wallet.
    Topup {
        #[arg(long)]
        user: String,
        #[arg(long)]
        amount: i64,
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Show a user's wallet.
    Wallet {
        #[arg(long)]
        user: String,
    },
    /// Show any session.
    Session { session_id: String },
    /// Show a machine: tariff, state (IDLE/BUSY/OFFLINE/FAULT), last seen, open session and the
    /// latest heartbeat's telemetry.
    Device {
        #[arg(long)]
        device_id: String,
    },
    /// Create the DynamoDB table (idempotent: an existing table is fine).
    CreateTable {
        #[command(flatten)]
        dynamodb: DynamoArgs,
    },
    /// Mint a development phone JWT (HS256 with BLEPAY_JWT_SECRET, or the one generated in the data dir).
    Token {
        #[arg(long)]
        user: String,
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
        #[arg(long, env = "BLEPAY_JWT_SECRET", hide_env_values = true)]
        jwt_secret: Option<String>,
        #[arg(long, env = "BLEPAY_DATA_DIR", default_value = "./blepay-data")]
        data_dir: PathBuf,
    },
}

/// Run one operator command and print its answer.
///
/// # Errors
/// On a transport failure, a refusal (the server's code and message), or a local failure
/// (DynamoDB unreachable, no JWT secret).
pub async fn run(o: OpsArgs) -> anyhow::Result<()> {
    let api = Api::new(&o.server, &o.ops_token);
    let answer = match o.command {
        OpsCommand::RegisterDevice {
            device_id,
            name,
            price_per_unit,
            unit_name,
            currency,
        } => {
            api.post(
                "/v1/ops/devices",
                &json!({"deviceId": device_id, "name": name, "pricePerUnit": price_per_unit, "unitName": unit_name, "currency": currency}),
            )
            .await?
        }
        OpsCommand::Topup {
            user,
            amount,
            idempotency_key,
        } => {
            let key = idempotency_key.unwrap_or_else(random_key);
            api.post(
                &format!("/v1/ops/wallets/{user}/topup"),
                &json!({"amount": amount, "idempotencyKey": key}),
            )
            .await?
        }
        OpsCommand::Wallet { user } => api.get(&format!("/v1/ops/wallets/{user}")).await?,
        OpsCommand::Session { session_id } => {
            api.get(&format!("/v1/ops/sessions/{session_id}")).await?
        }
        OpsCommand::Device { device_id } => {
            api.get(&format!("/v1/ops/devices/{device_id}")).await?
        }
        OpsCommand::CreateTable { dynamodb } => return create_table(&dynamodb).await,
        OpsCommand::Token {
            user,
            ttl_secs,
            jwt_secret,
            data_dir,
        } => return token(&user, ttl_secs, jwt_secret, &data_dir),
    };
    println!("{}", answer.into_result()?);
    Ok(())
}

async fn create_table(dynamodb: &DynamoArgs) -> anyhow::Result<()> {
    let client = blepay_dynamodb::client_from_env(dynamodb.endpoint.as_deref()).await;
    blepay_dynamodb::create_table(&client, &dynamodb.table).await?;
    println!("{}", json!({"table": dynamodb.table, "status": "ACTIVE"}));
    Ok(())
}

fn token(
    user: &str,
    ttl_secs: u64,
    jwt_secret: Option<String>,
    data_dir: &std::path::Path,
) -> anyhow::Result<()> {
    let secret = match jwt_secret {
        Some(s) => s,
        None => std::fs::read_to_string(data_dir.join("jwt-secret")).map_err(|e| {
            anyhow!(
                "no BLEPAY_JWT_SECRET and no {}/jwt-secret: {e}",
                data_dir.display()
            )
        })?,
    };
    let user = blepay_core::UserId::parse(user).map_err(|e| anyhow!("--user: {e}"))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    println!(
        "{}",
        blepay_service::auth::mint_token(secret.trim(), &user, now, ttl_secs)?
    );
    Ok(())
}
