//! `blepay`: parse the command line and hand over to the library (one module per command).

use clap::{Parser, Subcommand};

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
    Serve(Box<blepay::args::ServeCommand>),
    /// Start an embedded server and run one full payment cycle with a simulated machine and phone.
    Demo {
        /// Then keep the server running and print the operator console's address and a
        /// sign-in token (valid until Ctrl-C; the data is in a temporary directory).
        #[arg(long)]
        console: bool,
    },
    /// A scriptable simulated machine.
    Device(blepay::device::DeviceArgs),
    /// A scriptable simulated phone.
    Phone(blepay::phone::PhoneArgs),
    /// Operator commands.
    Ops(blepay::ops::OpsArgs),
    /// Load-test an embedded server against a hello-world ceiling, at several client counts, and
    /// an idle fleet of heartbeating machines (`--quick`: 3 s phases), or size a payment cycle on
    /// the machine's link (`--link-bytes`).
    Bench(blepay::bench::BenchArgs),
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
    // BLEPAY_LOG_FORMAT=json: one JSON object per line (journald, a log shipper); colour only
    // when stderr is a terminal.
    let json = match std::env::var("BLEPAY_LOG_FORMAT").as_deref() {
        Err(_) | Ok("" | "text") => false,
        Ok("json") => true,
        Ok(other) => {
            eprintln!("BLEPAY_LOG_FORMAT: must be text or json, not {other:?}");
            return std::process::ExitCode::from(2);
        }
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        logs.json().init();
    } else {
        logs.init();
    }
    let done = match cli.command {
        Command::Serve(s) => {
            let s = *s;
            blepay::serve::run_with(s.args, s.store).await
        }
        Command::Demo { console } => blepay::demo::run(console).await,
        Command::Device(d) => blepay::device::run(d).await,
        Command::Phone(p) => blepay::phone::run(p).await,
        Command::Ops(o) => blepay::ops::run(o).await,
        Command::Bench(args) => blepay::bench::run(args).await,
    };
    match done {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
