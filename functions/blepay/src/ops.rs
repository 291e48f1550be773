//! `blepay ops …`: operator commands — the operator HTTP API, creating the DynamoDB table, and
//! minting development phone JWTs.

use std::path::PathBuf;

use anyhow::anyhow;
use serde_json::json;

use crate::api::{Api, random_key};
use crate::args::DynamoArgs;
use blepay_service::config::SecretString;

/// `blepay ops` arguments.
#[derive(Debug, clap::Args)]
pub struct OpsArgs {
    /// The blepay server's base URL.
    #[arg(long, env = "BLEPAY_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// A file holding the operator token; or the token itself in the variable BLEPAY_OPS_TOKEN
    /// (never a flag value: command lines are visible to every local user).
    #[arg(long, env = "BLEPAY_OPS_TOKEN_FILE")]
    ops_token_file: Option<PathBuf>,
    #[command(subcommand)]
    command: OpsCommand,
}

#[derive(Debug, clap::Subcommand)]
enum OpsCommand {
    /// Register a machine; prints its device key.
    RegisterDevice {
        /// The machine's id: 16 hex digits.
        #[arg(long)]
        device_id: String,
        /// The name operators (and, for a machine, phones) see.
        #[arg(long)]
        name: String,
        /// The price of one unit, in minor units (e.g. cents: 25 = 0.25).
        #[arg(long)]
        price_per_unit: i64,
        /// What one unit is: litre, cycle, minute…
        #[arg(long)]
        unit_name: String,
        /// The tariff's currency (ISO 4217); it must be the deployment's.
        #[arg(long, default_value = "EUR")]
        currency: String,
    },
    /// Credit a user's wallet.
    Topup {
        /// The user id (the `sub` of their phone JWT).
        #[arg(long)]
        user: String,
        /// The amount, in minor units (e.g. cents: 1000 = 10.00).
        #[arg(long)]
        amount: i64,
        /// Makes a retry safe: the same key does it once. Defaults to a random key.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Show a user's wallet.
    Wallet {
        /// The user id (the `sub` of their phone JWT).
        #[arg(long)]
        user: String,
    },
    /// Show any session.
    Session {
        /// The session id (32 hex digits).
        session_id: String,
    },
    /// Show a machine: tariff, state (IDLE/BUSY/OFFLINE/FAULT), last seen, open session and the
    /// latest heartbeat's telemetry.
    Device {
        /// The machine's id: 16 hex digits.
        #[arg(long)]
        device_id: String,
    },
    /// Operators: create (prints the token, once), list, revoke (owner only).
    Operator {
        #[command(subcommand)]
        command: OperatorCommand,
    },
    /// Create the DynamoDB table (idempotent: an existing table is fine).
    CreateTable {
        #[command(flatten)]
        dynamodb: DynamoArgs,
    },
    /// Mint a development phone JWT (HS256 with BLEPAY_JWT_SECRET, or the one generated in the data dir).
    Token {
        /// The user id (the `sub` of their phone JWT).
        #[arg(long)]
        user: String,
        /// The token's lifetime, in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
        /// A file holding the HS256 secret; or the secret in the variable BLEPAY_JWT_SECRET;
        /// else the data dir's generated `jwt-secret`.
        #[arg(long, env = "BLEPAY_JWT_SECRET_FILE")]
        jwt_secret_file: Option<PathBuf>,
        /// The server's data dir (holds the generated `jwt-secret` of a development server).
        #[arg(long, env = "BLEPAY_DATA_DIR", default_value = "./blepay-data")]
        data_dir: PathBuf,
    },
}

#[derive(Debug, clap::Subcommand)]
enum OperatorCommand {
    /// Create an operator with a role (owner, support, finance, technician); prints its token once.
    Create {
        /// The name operators (and, for a machine, phones) see.
        #[arg(long)]
        name: String,
        /// The operator's role: owner, support, finance or technician.
        #[arg(long)]
        role: String,
        /// Makes a retry safe: the same key does it once. Defaults to a random key.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// List every operator, revoked ones included.
    List,
    /// Revoke an operator: its token is refused from now on.
    Revoke {
        /// The operator's id (`operator list` shows it).
        operator_id: String,
    },
}

/// Run one operator command and print its answer.
///
/// # Errors
/// On a transport failure, a refusal (the server's code and message), or a local failure
/// (DynamoDB unreachable, no JWT secret).
pub async fn run(o: OpsArgs) -> anyhow::Result<()> {
    let ops_token = crate::args::client_secret(o.ops_token_file.as_deref(), "BLEPAY_OPS_TOKEN")
        .map_err(|e| anyhow!("BLEPAY_OPS_TOKEN_FILE: {e}"))?
        .unwrap_or_else(|| SecretString::new(String::new()));
    let api = Api::new(&o.server, ops_token.expose());
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
        OpsCommand::Operator { command } => match command {
            OperatorCommand::Create {
                name,
                role,
                idempotency_key,
            } => {
                let key = idempotency_key.unwrap_or_else(random_key);
                api.post(
                    "/v1/ops/operators",
                    &json!({"name": name, "role": role, "idempotencyKey": key}),
                )
                .await?
            }
            OperatorCommand::List => api.get("/v1/ops/operators").await?,
            OperatorCommand::Revoke { operator_id } => {
                api.post(
                    &format!("/v1/ops/operators/{operator_id}/revoke"),
                    &json!({}),
                )
                .await?
            }
        },
        OpsCommand::CreateTable { dynamodb } => return create_table(&dynamodb).await,
        OpsCommand::Token {
            user,
            ttl_secs,
            jwt_secret_file,
            data_dir,
        } => return token(&user, ttl_secs, jwt_secret_file.as_deref(), &data_dir),
    };
    println!("{}", answer.into_result()?);
    Ok(())
}

#[cfg(not(feature = "dynamodb"))]
#[allow(clippy::unused_async)] // the same signature as with the feature
async fn create_table(_dynamodb: &DynamoArgs) -> anyhow::Result<()> {
    anyhow::bail!("{}", crate::args::NO_DYNAMODB)
}

#[cfg(feature = "dynamodb")]
async fn create_table(dynamodb: &DynamoArgs) -> anyhow::Result<()> {
    let client = blepay_dynamodb::client_from_env(dynamodb.endpoint.as_deref()).await;
    blepay_dynamodb::create_table(&client, &dynamodb.table).await?;
    println!("{}", json!({"table": dynamodb.table, "status": "ACTIVE"}));
    Ok(())
}

fn token(
    user: &str,
    ttl_secs: u64,
    jwt_secret_file: Option<&std::path::Path>,
    data_dir: &std::path::Path,
) -> anyhow::Result<()> {
    let secret = match crate::args::client_secret(jwt_secret_file, "BLEPAY_JWT_SECRET")
        .map_err(|e| anyhow!("BLEPAY_JWT_SECRET_FILE: {e}"))?
    {
        Some(s) => s,
        None => crate::args::read_secret_file(&data_dir.join("jwt-secret"))
            .map_err(|e| anyhow!("no BLEPAY_JWT_SECRET or --jwt-secret-file, and {e}"))?,
    };
    let user = blepay_core::UserId::parse(user).map_err(|e| anyhow!("--user: {e}"))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    println!(
        "{}",
        blepay_service::auth::mint_token(secret.expose(), &user, now, ttl_secs)?
    );
    Ok(())
}
