//! `blepay device …`: the scriptable machine (`advert`, `press`, `report`, `heartbeat`, and the
//! legacy `poll` and `start`, on [`crate::machine`]) and the simulated dispenser (`run`, on
//! [`crate::device_run`]).

use std::path::PathBuf;

use anyhow::anyhow;

use blepay_core::Telemetry;
use blepay_proto::AdvertFlags;

use crate::machine::{Machine, grant_json, response_json};

// `global`: the machine's flags go before or after the subcommand (`blepay device run --server
// ...`); a global flag cannot be `required`, so the id and key are checked in `run`.
/// `blepay device` arguments.
#[derive(Debug, clap::Args)]
pub struct DeviceArgs {
    /// The blepay server's base URL.
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
    /// The master key version the device key was derived under (0..=15; `register-device` prints it).
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
    Advert {
        /// Set the advert's link-down flag (the modem is not attached): the server treats the
        /// machine as OFFLINE.
        #[arg(long)]
        link_down: bool,
        /// Set the advert's fault flag: the server shows FAULT and refuses pays.
        #[arg(long)]
        fault: bool,
    },
    /// The start button: one exchange starts the session paid for on this machine; prints its
    /// terms as one JSON line (or fails with NO_SESSION_WAITING: "pay in the app first").
    Press,
    /// The idle machine's rare sign of life, with telemetry; prints `{"ack":true,...}`.
    Heartbeat {
        /// Firmware version.
        #[arg(long, default_value = concat!("blepay-cli/", env!("CARGO_PKG_VERSION")))]
        firmware_version: String,
        /// Fault codes (comma-separated); none when healthy.
        #[arg(long, value_delimiter = ',')]
        fault_codes: Vec<u32>,
        /// Signal quality, SIM800 `AT+CSQ` rssi: 0..=31, or 99 (unknown).
        #[arg(long, default_value_t = 99)]
        signal_quality: u8,
        /// Seconds since boot.
        #[arg(long, default_value_t = 0)]
        uptime_secs: u64,
        /// Boots since manufacture.
        #[arg(long, default_value_t = 0)]
        boot_count: u32,
        /// Units dispensed since manufacture.
        #[arg(long, default_value_t = 0)]
        lifetime_units: u64,
    },
    /// Legacy: poll the server; prints one JSON line per grant (the firmware no longer polls).
    Poll,
    /// Legacy: the start button for a session learnt by polling (`press` needs no poll).
    Start {
        /// The session id (32 hex digits; `press` prints it).
        #[arg(long)]
        session: String,
    },
    /// Report units dispensed so far; `--final` ends and settles the session.
    Report {
        /// The session id (32 hex digits; `press` prints it).
        #[arg(long)]
        session: String,
        /// Units dispensed so far in the session (a running total, not a delta).
        #[arg(long)]
        units: u64,
        /// The final report: ends the session and settles it (captures at most the hold).
        #[arg(long = "final")]
        last: bool,
    },
    /// Run a simulated water dispenser on the device client's engine: advertises (to
    /// <state-dir>/advert.json), sends a heartbeat every 30 minutes and nothing else while idle;
    /// the start button (<state-dir>/start, a line on stdin, or --auto-start) fetches the paid
    /// session in one exchange, dispenses, reports; one JSON line per event.
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
        DeviceCommand::Advert { link_down, fault } => {
            let mut bits = 0;
            if link_down {
                bits |= AdvertFlags::LINK_DOWN.bits();
            }
            if fault {
                bits |= AdvertFlags::FAULT.bits();
            }
            let flags = AdvertFlags::from_bits(bits).map_err(|e| anyhow!("{e}"))?;
            println!("{}", m.advert_with(flags)?);
        }
        DeviceCommand::Press => println!("{}", grant_json(&m.press().await?)),
        DeviceCommand::Heartbeat {
            firmware_version,
            fault_codes,
            signal_quality,
            uptime_secs,
            boot_count,
            lifetime_units,
        } => {
            let telemetry = Telemetry {
                firmware_version,
                fault_codes,
                signal_quality,
                uptime_secs,
                boot_count,
                outbox_depth: m.outbox_depth()?,
                lifetime_units,
            };
            telemetry
                .validate()
                .map_err(|e| anyhow!("telemetry: {e}"))?;
            m.heartbeat(telemetry).await?;
            println!(
                "{}",
                serde_json::json!({ "ack": true, "nextSeq": m.next_seq()? })
            );
        }
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
