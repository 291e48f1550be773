//! `blepay`: parse the command line and hand over to the library.

use std::path::PathBuf;

use anyhow::anyhow;
use blepay::api::Api;
use blepay::machine::{Machine, grant_json, response_json};
use blepay_service::{DynamoArgs, ServeArgs, StoreArgs};
use clap::{Parser, Subcommand};
use serde_json::{Value, json};

#[derive(Debug, Parser)]
#[command(
    name = "blepay",
    version,
    about = "Pay-per-use for self-service machines over BLE adverts"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the self-hosted server (HTTP + gRPC on one port, SQLite store or DynamoDB).
    Serve(ServeCommand),
    /// Start an embedded server and run one full payment cycle with a simulated machine and phone.
    Demo,
    /// A scriptable simulated machine.
    Device(DeviceArgs),
    /// A scriptable simulated phone.
    Phone(PhoneArgs),
    /// Operator commands.
    Ops(OpsArgs),
    /// Load-test an embedded server against a hello-world ceiling (`--quick`: under a minute), or
    /// size a payment cycle on the machine's link (`--link-bytes`).
    Bench(blepay::bench::BenchArgs),
}

#[derive(Debug, clap::Args)]
struct ServeCommand {
    #[command(flatten)]
    args: ServeArgs,
    #[command(flatten)]
    store: StoreArgs,
}

// `global`: the machine's flags go before or after the subcommand (`blepay device run --server
// ...`); a global flag cannot be `required`, so the id and key are checked in `device`.
#[derive(Debug, clap::Args)]
struct DeviceArgs {
    #[arg(
        long,
        global = true,
        env = "BLEPAY_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    server: String,
    /// The machine's id, 16 hex digits (required).
    #[arg(long, global = true, env = "BLEPAY_DEVICE_ID")]
    device_id: Option<String>,
    /// The machine's device key, hex (required).
    #[arg(long, global = true, env = "BLEPAY_DEVICE_KEY", hide_env_values = true)]
    device_key: Option<String>,
    #[arg(long, global = true, default_value_t = 0)]
    key_version: u8,
    /// Where the machine keeps its sequence number, use counter and clock offset.
    #[arg(
        long,
        global = true,
        env = "BLEPAY_STATE_DIR",
        default_value = "./blepay-device"
    )]
    state_dir: PathBuf,
    #[command(subcommand)]
    command: DeviceCommand,
}

#[derive(Debug, Subcommand)]
enum DeviceCommand {
    /// Print the current advert (base64 payload, advertising data hex).
    Advert,
    /// Poll the server; prints one JSON line per grant.
    Poll,
    /// The start button: start a granted session.
    Start {
        #[arg(long)]
        session: String,
    },
    /// Report units dispensed so far; `--final` ends and settles the session.
    Report {
        #[arg(long)]
        session: String,
        #[arg(long)]
        units: u64,
        #[arg(long = "final")]
        last: bool,
    },
    /// Run a simulated water dispenser on the device client's engine: advertises (to
    /// <state-dir>/advert.json), polls, waits for the start button (<state-dir>/start, a line on
    /// stdin, or --auto-start), dispenses, reports; one JSON line per event.
    Run(blepay::device_run::RunArgs),
}

#[derive(Debug, clap::Args)]
struct PhoneArgs {
    #[arg(long, env = "BLEPAY_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// The user's JWT (see `blepay ops token`).
    #[arg(long, env = "BLEPAY_TOKEN", hide_env_values = true)]
    token: String,
    #[command(subcommand)]
    command: PhoneCommand,
}

#[derive(Debug, Subcommand)]
enum PhoneCommand {
    /// Verify a heard advert (base64 payload).
    Verify {
        #[arg(long)]
        advert: String,
    },
    /// Pay: hold up to --max-amount for a session on the advertised machine.
    Pay {
        #[arg(long)]
        advert: String,
        #[arg(long)]
        max_amount: i64,
        /// Defaults to a random key; pass the same key to retry safely.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Show one of the user's sessions.
    Session { session_id: String },
    /// Show the user's wallet.
    Wallet,
}

#[derive(Debug, clap::Args)]
struct OpsArgs {
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

#[derive(Debug, Subcommand)]
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

fn random_key() -> String {
    hex::encode(rand::random::<[u8; 12]>())
}

fn print(v: &Value) {
    println!("{v}");
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The server logs its work; the client commands print answers and only log problems.
    let default_level = if matches!(cli.command, Command::Serve(_)) {
        "info"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(s) => blepay::serve::run_with(s.args, s.store).await,
        Command::Demo => blepay::demo::run().await,
        Command::Device(d) => device(d).await,
        Command::Phone(p) => phone(p).await,
        Command::Ops(o) => ops(o).await,
        Command::Bench(args) => blepay::bench::run(args).await,
    }
}

async fn device(d: DeviceArgs) -> anyhow::Result<()> {
    let device_id = d
        .device_id
        .as_deref()
        .ok_or_else(|| anyhow!("--device-id (or BLEPAY_DEVICE_ID) is required"))?;
    let device_key = d
        .device_key
        .as_deref()
        .ok_or_else(|| anyhow!("--device-key (or BLEPAY_DEVICE_KEY) is required"))?;
    let command = match d.command {
        DeviceCommand::Run(args) => {
            let machine = blepay::device_run::Machine::parse(
                &d.server,
                device_id,
                device_key,
                d.key_version,
                &d.state_dir,
            )?;
            return blepay::device_run::run(machine, args).await;
        }
        other => other,
    };
    let m = Machine::new(
        &d.server,
        device_id,
        device_key,
        d.key_version,
        &d.state_dir,
    )?;
    let session = |s: &str| blepay_core::SessionId::parse(s).map_err(|e| anyhow!("--session: {e}"));
    match command {
        DeviceCommand::Advert => print(&m.advert()?),
        DeviceCommand::Poll => m.poll().await?.iter().for_each(|g| print(&grant_json(g))),
        DeviceCommand::Start { session: s } => print(&response_json(&m.start(session(&s)?).await?)),
        DeviceCommand::Report {
            session: s,
            units,
            last,
        } => {
            print(&response_json(&m.report(session(&s)?, units, last).await?));
        }
        DeviceCommand::Run(_) => {} // handled above
    }
    Ok(())
}

async fn phone(p: PhoneArgs) -> anyhow::Result<()> {
    let api = Api::new(&p.server, &p.token);
    let answer = match p.command {
        PhoneCommand::Verify { advert } => {
            api.post("/v1/verify", &json!({ "advert": advert })).await?
        }
        PhoneCommand::Pay {
            advert,
            max_amount,
            idempotency_key,
        } => {
            let key = idempotency_key.unwrap_or_else(random_key);
            api.post(
                "/v1/pay",
                &json!({ "advert": advert, "maxAmount": max_amount, "idempotencyKey": key }),
            )
            .await?
        }
        PhoneCommand::Session { session_id } => {
            api.get(&format!("/v1/sessions/{session_id}")).await?
        }
        PhoneCommand::Wallet => api.get("/v1/wallet").await?,
    };
    print(&answer.into_result()?);
    Ok(())
}

async fn ops(o: OpsArgs) -> anyhow::Result<()> {
    let api = Api::new(&o.server, &o.ops_token);
    let answer = match o.command {
        OpsCommand::RegisterDevice { device_id, name, price_per_unit, unit_name, currency } => {
            api.post(
                "/v1/ops/devices",
                &json!({"deviceId": device_id, "name": name, "pricePerUnit": price_per_unit, "unitName": unit_name, "currency": currency}),
            )
            .await?
        }
        OpsCommand::Topup { user, amount, idempotency_key } => {
            let key = idempotency_key.unwrap_or_else(random_key);
            api.post(&format!("/v1/ops/wallets/{user}/topup"), &json!({"amount": amount, "idempotencyKey": key}))
                .await?
        }
        OpsCommand::Wallet { user } => api.get(&format!("/v1/ops/wallets/{user}")).await?,
        OpsCommand::Session { session_id } => api.get(&format!("/v1/ops/sessions/{session_id}")).await?,
        OpsCommand::CreateTable { dynamodb } => {
            let client = blepay_dynamodb::client_from_env(dynamodb.endpoint.as_deref()).await;
            blepay_dynamodb::create_table(&client, &dynamodb.table).await?;
            println!("{}", json!({"table": dynamodb.table, "status": "ACTIVE"}));
            return Ok(());
        }
        OpsCommand::Token { user, ttl_secs, jwt_secret, data_dir } => {
            let secret = match jwt_secret {
                Some(s) => s,
                None => std::fs::read_to_string(data_dir.join("jwt-secret"))
                    .map_err(|e| anyhow!("no BLEPAY_JWT_SECRET and no {}/jwt-secret: {e}", data_dir.display()))?,
            };
            let user = blepay_core::UserId::parse(&user).map_err(|e| anyhow!("--user: {e}"))?;
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
            println!("{}", blepay_service::auth::mint_token(secret.trim(), &user, now, ttl_secs)?);
            return Ok(());
        }
    };
    print(&answer.into_result()?);
    Ok(())
}
