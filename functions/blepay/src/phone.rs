//! `blepay phone …`: a scriptable phone over the HTTP JSON API; prints the server's answer.

use serde_json::json;

use crate::api::{Api, random_key};

/// `blepay phone` arguments.
#[derive(Debug, clap::Args)]
pub struct PhoneArgs {
    /// The blepay server's base URL.
    #[arg(long, env = "BLEPAY_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// A file holding the user's JWT (see `blepay ops token`); or the token itself in the
    /// variable BLEPAY_TOKEN (never a flag value: command lines are visible to every local user).
    #[arg(long, env = "BLEPAY_TOKEN_FILE")]
    token_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: PhoneCommand,
}

#[derive(Debug, clap::Subcommand)]
enum PhoneCommand {
    /// Verify a heard advert (base64 payload).
    Verify {
        /// The heard advert's payload, base64 (`blepay device advert` prints one).
        #[arg(long)]
        advert: String,
    },
    /// Pay: hold up to --max-amount for a session on the advertised machine.
    Pay {
        /// The heard advert's payload, base64 (`blepay device advert` prints one).
        #[arg(long)]
        advert: String,
        /// The most the session may cost, held on the wallet until it settles: minor units (e.g. cents: 200 = 2.00).
        #[arg(long)]
        max_amount: i64,
        /// Defaults to a random key; pass the same key to retry safely.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Show one of the user's sessions.
    Session {
        /// The session id (32 hex digits; `pay` prints it).
        session_id: String,
    },
    /// Show the user's wallet.
    Wallet,
}

/// Run one phone command and print the answer.
///
/// # Errors
/// On a transport failure or a refusal (the server's code and message).
pub async fn run(p: PhoneArgs) -> anyhow::Result<()> {
    let token = crate::args::client_secret(p.token_file.as_deref(), "BLEPAY_TOKEN")
        .map_err(|e| anyhow::anyhow!("BLEPAY_TOKEN_FILE: {e}"))?
        .ok_or_else(|| {
            anyhow::anyhow!("set BLEPAY_TOKEN or --token-file (see `blepay ops token`)")
        })?;
    let api = Api::new(&p.server, token.expose());
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
    println!("{}", answer.into_result()?);
    Ok(())
}
