//! `blepay device …`: the scriptable machine (`advert`, `poll`, `start`, `report`, on
//! [`crate::machine`]) and the simulated dispenser (`run`, on [`crate::device_run`]).

use std::path::PathBuf;

use anyhow::anyhow;

use crate::machine::{Machine, grant_json, response_json};

// `global`: the machine's flags go before or after the subcommand (`blepay device run --server
// ...`); a global flag cannot be `required`, so the id and key are checked in `run`.
/// `blepay device` arguments.
#[derive(Debug, clap::Args)]
pub struct DeviceArgs {
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

#[derive(Debug, clap::Subcommand)]
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
    Run(crate::device_run::RunArgs),
}

/// Run one machine command; each prints JSON lines.
///
/// # Errors
/// When the id or key is missing or malformed, the state dir cannot be used, or the exchange
/// fails.
pub async fn run(d: DeviceArgs) -> anyhow::Result<()> {
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
            let machine = crate::device_run::Machine::parse(
                &d.server,
                device_id,
                device_key,
                d.key_version,
                &d.state_dir,
            )?;
            return crate::device_run::run(machine, args).await;
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
        DeviceCommand::Advert => println!("{}", m.advert()?),
        DeviceCommand::Poll => m
            .poll()
            .await?
            .iter()
            .for_each(|g| println!("{}", grant_json(g))),
        DeviceCommand::Start { session: s } => {
            println!("{}", response_json(&m.start(session(&s)?).await?));
        }
        DeviceCommand::Report {
            session: s,
            units,
            last,
        } => {
            println!(
                "{}",
                response_json(&m.report(session(&s)?, units, last).await?)
            );
        }
        DeviceCommand::Run(_) => {} // handled above
    }
    Ok(())
}
