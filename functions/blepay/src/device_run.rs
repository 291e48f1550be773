//! `blepay device run`: a simulated water dispenser on the real device client.
//!
//! The machine is the firmware's loop (`blepay_device_client::driver` docs) on a PC: the session
//! [`Engine`] with its outbox in a [`FileLog`] (`<state-dir>/outbox.log`), a [`Driver`] over the
//! plain [`HttpTransport`], and simulated hardware around it:
//! - **BLE radio**: every advert change (new slot, use counter or flags) is written atomically to
//!   `<state-dir>/advert.json` (base64 payload, advertising data and HCI command in hex), where a
//!   phone simulator reads it, and printed;
//! - **start button**: a file `<state-dir>/start` (removed when taken), a line on stdin, or
//!   `--auto-start` (a user pressing every `--auto-start-every-secs` while the machine is idle).
//!   A press sends one `Press` request: the server starts the session paid for on this machine
//!   and answers with its terms, or refuses `NO_SESSION_WAITING` ("pay in the app first": a
//!   `not-started` event, nothing changes). Pressed while dispensing, it ends dispensing;
//! - **valve and meter**: once the press answer started the session, units flow at
//!   `--flow-units-per-sec` until `--units` (then the "container is full") or the cap the hold
//!   pays for (the engine stops there);
//! - **link**: idle, the machine sends nothing but a heartbeat every `--heartbeat-every-secs`
//!   (30 minutes by default; also one at boot), with its telemetry (`--fault-codes` set the
//!   advert's fault flag too).
//!
//! stdout carries one JSON line per event: `boot`, `recovered`, `advert`, `heartbeat` (answered),
//! `pressed`, `not-started`, `started`, `progress` (a progress report the server acknowledged),
//! `stopped`, `aborted`, `settled`. Link failures go to the log (stderr); requests are retried
//! with the same bytes.
//!
//! Power loss is `SIGKILL`: on the next run the engine recovers the outbox from the log and ends
//! the interrupted session with a final report of the last reported units (docs/protocol.md).
//!
//! Everything here is blocking (the engine is sans-IO, the transport a blocking `ureq`); [`run`]
//! moves it onto a blocking thread.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use base64::Engine as _;
use blepay_core::{DeviceId, KeyVersion, SessionId, Units};
use blepay_device_client::advertiser::AdvertData;
use blepay_device_client::driver::{Driver, Step};
use blepay_device_client::engine::{
    Action, Config, Engine, Phase, RequestKind, Response, StopReason,
};
use blepay_device_client::file_log::FileLog;
use blepay_device_client::http::HttpTransport;
use blepay_device_client::{Identity, RefusalCode};
use blepay_proto::{AdvertFlags, DeviceKey};
use serde_json::{Value, json};

/// The file the outbox is persisted in, inside the state directory.
pub const OUTBOX_FILE: &str = "outbox.log";
/// The current advert, rewritten atomically whenever it changes.
pub const ADVERT_FILE: &str = "advert.json";
/// Create this file to press the start button.
pub const START_FILE: &str = "start";

/// Options of `blepay device run` (the machine's identity and state dir come from `blepay device`).
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// A simulated user presses the start button every `--auto-start-every-secs` while the
    /// machine is idle (each press is one exchange; without a payment it starts nothing).
    #[arg(long)]
    pub auto_start: bool,
    /// Seconds between the simulated user's presses (`--auto-start`).
    #[arg(long, default_value_t = 2)]
    pub auto_start_every_secs: u64,
    /// Flow rate of the simulated valve, units per second.
    #[arg(long, default_value_t = 1.0)]
    pub flow_units_per_sec: f64,
    /// End dispensing after this many units (default: at the cap the hold pays for).
    #[arg(long)]
    pub units: Option<u64>,
    /// Send a heartbeat after this many seconds without an answered exchange (idle machines send
    /// nothing else).
    #[arg(long, default_value_t = blepay_device_client::engine::DEFAULT_HEARTBEAT_SECS)]
    pub heartbeat_every_secs: u64,
    /// Fault codes the machine reports (comma-separated): its heartbeat carries them and its
    /// advert sets the fault flag, so phones see FAULT and cannot pay.
    #[arg(long, value_delimiter = ',')]
    pub fault_codes: Vec<u32>,
    /// Send a progress report every this many seconds while dispensing (0: never by time).
    #[arg(long, default_value_t = 1)]
    pub report_every_secs: u64,
    /// Send a progress report every this many units (0: never by units).
    #[arg(long, default_value_t = 0)]
    pub report_every_units: u64,
    /// Exit after this many sessions ended (settled or aborted); default: run until killed.
    #[arg(long)]
    pub sessions: Option<u32>,
    /// Timeout of one HTTP exchange, seconds.
    #[arg(long, default_value_t = 10)]
    pub http_timeout_secs: u64,
}

/// Who the machine is and where it keeps its state.
#[derive(Debug, Clone)]
pub struct Machine {
    /// `http://host:port`.
    pub server: String,
    pub identity: Identity,
    pub state_dir: PathBuf,
}

impl Machine {
    /// Parse the identity.
    ///
    /// # Errors
    /// A malformed device id, key version or key (the message names the flag).
    pub fn parse(
        server: &str,
        device_id: &str,
        device_key: &str,
        key_version: u8,
        state_dir: &Path,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            server: server.trim_end_matches('/').to_owned(),
            identity: Identity {
                device_id: DeviceId::parse(device_id).map_err(|e| anyhow!("--device-id: {e}"))?,
                key_version: KeyVersion::new(key_version)
                    .map_err(|e| anyhow!("--key-version: {e}"))?,
                key: DeviceKey::parse_hex(device_key).map_err(|e| anyhow!("--device-key: {e}"))?,
            },
            state_dir: state_dir.to_owned(),
        })
    }
}

/// Run the simulated machine on a blocking thread, printing events to stdout.
///
/// # Errors
/// Bad options, or the state directory cannot be used (the log, the advert file).
pub async fn run(machine: Machine, args: RunArgs) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || {
        let stdout = std::io::stdout();
        let presses = stdin_presses();
        run_blocking(&machine, &args, &presses, &mut stdout.lock())
    })
    .await
    .context("the machine thread failed")?
}

/// Each line on stdin is a press of the start button. The reader thread ends at end of input.
fn stdin_presses() -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            if line.is_err() || tx.send(()).is_err() {
                break;
            }
        }
    });
    rx
}

/// Local seconds: the machine's own clock (the engine corrects it with the server's time).
fn local_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The simulated valve and meter of one session.
#[derive(Debug)]
struct Valve {
    session: SessionId,
    opened: Instant,
    /// Units per second, in thousandths.
    milli_units_per_sec: u64,
    /// Units counted so far.
    counted: u64,
    /// Stop here: `--units` or the cap.
    until: u64,
}

impl Valve {
    /// Units flowed since the last call.
    fn take_pulses(&mut self) -> u64 {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        let flowed = ms.saturating_mul(self.milli_units_per_sec) / 1_000_000;
        let now = flowed.min(self.until);
        let delta = now.saturating_sub(self.counted);
        self.counted = now;
        delta
    }

    fn finished(&self) -> bool {
        self.counted >= self.until
    }
}

fn milli_units(flow: f64) -> anyhow::Result<u64> {
    if !flow.is_finite() || flow <= 0.0 || flow > 1e9 {
        bail!("--flow-units-per-sec must be a positive number, got {flow}");
    }
    // In range (checked above) and rounded: the cast neither truncates nor loses a sign.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Ok((flow * 1000.0).round().max(1.0) as u64)
}

fn advert_json(ad: &AdvertData) -> Value {
    json!({
        "advert": base64::engine::general_purpose::STANDARD.encode(ad.payload),
        "advertisingData": hex::encode(ad.advertising_data),
        "hciCommand": hex::encode(ad.hci_command),
        "slot": ad.advert.slot.get(),
        "useCounter": ad.advert.use_counter.get(),
        "busy": ad.advert.flags.contains(AdvertFlags::BUSY),
        "fault": ad.advert.flags.contains(AdvertFlags::FAULT),
        "linkDown": ad.advert.flags.contains(AdvertFlags::LINK_DOWN),
        "clockSynced": !ad.advert.flags.contains(AdvertFlags::CLOCK_UNSYNCED),
    })
}

/// Write `value` to `path` atomically (a reader sees the old or the new file, never half).
fn write_atomically(path: &Path, value: &Value) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, value.to_string())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

fn phase_name(p: &Phase) -> &'static str {
    match p {
        Phase::Idle => "idle",
        Phase::Pressing { .. } => "pressing",
        Phase::Dispensing { .. } => "dispensing",
        Phase::Ending { .. } => "ending",
    }
}

const fn stop_reason(r: StopReason) -> &'static str {
    match r {
        StopReason::CapReached => "CAP_REACHED",
        StopReason::Ended => "ENDED",
        StopReason::NoFlow => "NO_FLOW",
        StopReason::Refused => "REFUSED",
        StopReason::Interrupted => "INTERRUPTED",
    }
}

/// The simulated machine, until `args.sessions` sessions ended (or forever). `presses` carries
/// start-button presses (besides the start file); events go to `out`, one JSON line each.
///
/// # Errors
/// Bad options, storage failures (the log, the advert file), or `out` failing.
pub fn run_blocking(
    machine: &Machine,
    args: &RunArgs,
    presses: &mpsc::Receiver<()>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let milli_units_per_sec = milli_units(args.flow_units_per_sec)?;
    std::fs::create_dir_all(&machine.state_dir)
        .with_context(|| format!("creating {}", machine.state_dir.display()))?;
    let log = FileLog::open(machine.state_dir.join(OUTBOX_FILE))?;
    let config = Config {
        heartbeat_interval_secs: args.heartbeat_every_secs.max(1),
        firmware_version: concat!("blepay-device-run/", env!("CARGO_PKG_VERSION")),
        report_every_secs: args.report_every_secs,
        report_every_units: args.report_every_units,
        // The simulated meter always flows while the valve is open.
        no_flow_timeout_secs: 0,
        ..Config::default()
    };
    let engine = Engine::open(machine.identity.clone(), config, log, local_now())?;
    let transport = HttpTransport::new(
        &machine.server,
        Duration::from_secs(args.http_timeout_secs.max(1)),
    );
    let mut m = Sim {
        driver: Driver::new(engine, transport),
        args,
        out,
        advert_path: machine.state_dir.join(ADVERT_FILE),
        start_path: machine.state_dir.join(START_FILE),
        milli_units_per_sec,
        valve: None,
        progress_units: None,
        ended: 0,
        last_auto_press: None,
    };
    m.driver.engine_mut().set_fault_codes(&args.fault_codes);
    m.boot()?;
    m.run(presses)
}

struct Sim<'a, W> {
    driver: Driver<HttpTransport, FileLog>,
    args: &'a RunArgs,
    out: &'a mut W,
    advert_path: PathBuf,
    start_path: PathBuf,
    milli_units_per_sec: u64,
    valve: Option<Valve>,
    /// Units of the progress report queued last (acknowledged ones are printed).
    progress_units: Option<u64>,
    /// Sessions settled or aborted.
    ended: u32,
    /// When the simulated user last pressed (`--auto-start`).
    last_auto_press: Option<Instant>,
}

impl<W: Write> Sim<'_, W> {
    fn emit(&mut self, v: &Value) -> anyhow::Result<()> {
        writeln!(self.out, "{v}")?;
        self.out.flush()?;
        Ok(())
    }

    fn boot(&mut self) -> anyhow::Result<()> {
        let e = self.driver.engine();
        let (recovery, phase, use_counter) = (e.recovery(), e.phase().clone(), e.use_counter());
        let queued = e.outbox().queue().count();
        self.emit(&json!({
            "event": "boot",
            "records": recovery.records,
            "skipped": recovery.skipped,
            "phase": phase_name(&phase),
            "queued": queued,
            "useCounter": use_counter.get(),
        }))?;
        if let Some(session) = phase.session() {
            self.emit(&json!({
                "event": "recovered",
                "session": session.to_string(),
                "phase": phase_name(&phase),
            }))?;
        }
        self.actions()
    }

    fn run(&mut self, presses: &mpsc::Receiver<()>) -> anyhow::Result<()> {
        loop {
            let now = local_now();
            if self.button_pressed(presses) {
                let phase = phase_name(self.driver.engine().phase());
                self.driver.engine_mut().on_start_button(now)?;
                if phase == "idle" {
                    self.emit(&json!({"event": "pressed"}))?;
                }
            }
            self.meter(now)?;
            self.driver.engine_mut().tick(now)?;
            self.note_progress();
            self.actions()?;
            let step = self.driver.step(&mut local_now)?;
            let busy = self.on_step(step)?;
            self.actions()?;
            self.advert()?;
            if self
                .args
                .sessions
                .is_some_and(|n| self.ended >= n && self.quiet())
            {
                return Ok(());
            }
            if !busy {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Nothing open and nothing left to send.
    fn quiet(&self) -> bool {
        let e = self.driver.engine();
        *e.phase() == Phase::Idle && e.outbox().is_empty()
    }

    /// A press from stdin, the start file or the simulated user, taken only when the button
    /// means something: idle (a press fetches the paid session) or dispensing (it ends).
    fn button_pressed(&mut self, presses: &mpsc::Receiver<()>) -> bool {
        let phase = self.driver.engine().phase();
        let idle = *phase == Phase::Idle && self.driver.engine().outbox().is_empty();
        if !idle && !matches!(phase, Phase::Dispensing { .. }) {
            return false;
        }
        if presses.try_recv().is_ok() {
            return true;
        }
        if std::fs::remove_file(&self.start_path).is_ok() {
            return true;
        }
        let every = Duration::from_secs(self.args.auto_start_every_secs.max(1));
        if idle && self.args.auto_start && self.last_auto_press.is_none_or(|t| t.elapsed() >= every)
        {
            self.last_auto_press = Some(Instant::now());
            return true;
        }
        false
    }

    fn meter(&mut self, now: u64) -> anyhow::Result<()> {
        let Some(valve) = self.valve.as_mut() else {
            return Ok(());
        };
        let pulses = valve.take_pulses();
        let finished = valve.finished();
        self.driver.engine_mut().on_meter(now, pulses)?;
        if finished {
            self.driver.engine_mut().on_dispense_end(now)?;
        }
        Ok(())
    }

    /// Remember the units of the progress report queued last, to print it once acknowledged.
    fn note_progress(&mut self) {
        if let Phase::Dispensing { reported, .. } = self.driver.engine().phase() {
            if reported.get() > 0 {
                self.progress_units = Some(reported.get());
            }
        }
    }

    /// Log what the link did; true when an exchange happened (go round again at once).
    fn on_step(
        &mut self,
        step: Step<blepay_device_client::http::HttpError>,
    ) -> anyhow::Result<bool> {
        match step {
            Step::Idle => Ok(false),
            Step::TransportFailed { kind, seq, error } => {
                tracing::warn!(?kind, seq, %error, "exchange failed; retrying with the same bytes");
                Ok(false)
            }
            Step::Exchanged {
                kind,
                seq,
                status,
                response,
            } => {
                match response {
                    Response::Answered { kind, answer }
                        if kind == RequestKind::Report && answer.refusal().is_none() =>
                    {
                        if let Some(units) = self.progress_units {
                            self.emit(&json!({"event": "progress", "units": units}))?;
                        }
                    }
                    Response::Answered { kind, answer }
                        if kind == RequestKind::Heartbeat && answer.refusal().is_none() =>
                    {
                        self.emit(&json!({
                            "event": "heartbeat",
                            "seq": seq,
                            "serverTime": answer.server_time,
                        }))?;
                    }
                    Response::NotAuthentic { status, error } => {
                        tracing::warn!(?kind, seq, status, %error, "answer not authentic; retrying");
                    }
                    Response::Answered { .. } | Response::Unexpected => {}
                }
                tracing::debug!(?kind, seq, status, "exchanged");
                Ok(true)
            }
        }
    }

    fn actions(&mut self) -> anyhow::Result<()> {
        let actions: Vec<Action> = self.driver.engine_mut().drain_actions().collect();
        for action in actions {
            self.act(action)?;
        }
        Ok(())
    }

    fn act(&mut self, action: Action) -> anyhow::Result<()> {
        match action {
            Action::NotStarted { reason } => {
                self.emit(&json!({
                    "event": "not-started",
                    "reason": reason.as_str(),
                    "payInAppFirst": reason.pay_in_app_first(),
                }))?;
            }
            Action::StartDispensing { session, max_units } => {
                let until = self
                    .args
                    .units
                    .map_or(max_units, Units::new)
                    .min(max_units)
                    .get();
                self.valve = Some(Valve {
                    session,
                    opened: Instant::now(),
                    milli_units_per_sec: self.milli_units_per_sec,
                    counted: 0,
                    until,
                });
                self.progress_units = None;
                self.emit(&json!({
                    "event": "started",
                    "session": session.to_string(),
                    "maxUnits": max_units.get(),
                    "untilUnits": until,
                }))?;
            }
            Action::StopDispensing { session, reason } => {
                let units = self
                    .valve
                    .take()
                    .filter(|v| v.session == session)
                    .map(|v| v.counted)
                    .or_else(|| match self.driver.engine().phase() {
                        // After a reboot: the units of the final report queued at recovery.
                        Phase::Ending { session: s, units } if *s == session => Some(units.get()),
                        _ => None,
                    });
                self.emit(&json!({
                    "event": "stopped",
                    "session": session.to_string(),
                    "reason": stop_reason(reason),
                    "units": units,
                }))?;
            }
            Action::SessionAborted { session, reason } => {
                self.ended = self.ended.saturating_add(1);
                self.emit(&json!({
                    "event": "aborted",
                    "session": session.to_string(),
                    "reason": reason.as_str(),
                }))?;
            }
            Action::SessionSettled {
                session,
                units,
                amount,
                error,
            } => {
                self.ended = self.ended.saturating_add(1);
                self.progress_units = None;
                self.emit(&json!({
                    "event": "settled",
                    "session": session.to_string(),
                    "units": units.get(),
                    "amount": amount,
                    "error": error.map(RefusalCode::as_str),
                }))?;
            }
        }
        Ok(())
    }

    fn advert(&mut self) -> anyhow::Result<()> {
        let Some(ad) = self.driver.engine_mut().advert_update(local_now()) else {
            return Ok(());
        };
        let v = advert_json(&ad);
        write_atomically(&self.advert_path, &v)?;
        let mut event = json!({"event": "advert"});
        if let (Some(e), Some(fields)) = (event.as_object_mut(), v.as_object()) {
            e.extend(fields.clone());
        }
        self.emit(&event)
    }
}
