//! The session engine: a sans-IO state machine that decides what the machine sends, when it
//! dispenses, and what it advertises. Time is passed in as local seconds (`now`).
//!
//! ```text
//!          start button                 Started (the server's terms)
//!   Idle ───────────────► Pressing ──────────────────────────────────► Dispensing
//!    ▲ ◄── NO_SESSION_WAITING / ───┘                                    │ meter ticks, progress
//!    │     SESSION_EXPIRED (nothing changes)                            │ reports (long sessions)
//!    │                                                                  ▼ cap / end / no flow
//!    └──────────────────────── final report answered ──────────── Ending
//! ```
//!
//! Inputs: [`Engine::on_start_button`], [`Engine::on_meter`], [`Engine::on_dispense_end`],
//! [`Engine::tick`] (timers), [`Engine::on_response`] / [`Engine::on_transport_error`] (the fate of
//! its own requests), [`Engine::on_link_status`] and [`Engine::set_fault_codes`] (telemetry).
//! Outputs: [`Engine::transmit`] (the one request to send now — the same bytes again on a retry),
//! [`Engine::drain_actions`] (open/close the valve, what to show), [`Engine::advert_update`].
//!
//! Decisions:
//! - **Silent while idle.** An idle machine sends nothing but a heartbeat every
//!   [`Config::heartbeat_interval_secs`] (30 min by default) with its [`Telemetry`]; any answered
//!   exchange restarts that interval. A heartbeat is also sent at boot and whenever the clock is
//!   not synchronised (backing off).
//! - **The press fetches the grant.** The start button queues one `Press` request (persisted in
//!   the outbox before it is sent, like every request but heartbeats); the server starts the
//!   session waiting on this machine and answers with its terms, and the valve opens on that
//!   answer alone (`Action::StartDispensing`, at most [`Grant::max_units`]). A short session is
//!   two exchanges: press → Started, final report → settled. Presses while a press is queued, a
//!   session is open or its final report is pending are ignored (counted in
//!   [`Stats::presses_ignored`]).
//! - **No optimistic dispensing.** Nothing flows before the server's authenticated answer.
//!   `NO_SESSION_WAITING` / `SESSION_EXPIRED` change nothing on the machine
//!   (`Action::NotStarted`: show "pay in the app first").
//! - **A press interrupted by a power loss does not pour.** A press still queued after a reboot
//!   is resent with the same bytes (the server answers a byte-identical retry from its saved
//!   answer, so at most one session starts); if the answer starts a session, the valve stays
//!   closed — the user pressed before the power cut and may be gone — and the final report of 0
//!   units is sent at once, so the session settles with nothing captured and the hold released
//!   (`Action::SessionAborted { reason: Interrupted }`, then `SessionSettled`). An answer naming
//!   a session the journal shows already started or ended never opens the valve again.
//! - **Everything goes through one in-flight slot**: a request is answered before the next is
//!   sent (docs/protocol.md §3.3). Queued presses and reports go first; a heartbeat only when the
//!   outbox is empty and the machine is idle, and a press pre-empts a heartbeat still waiting for
//!   its retry (its sequence number is simply skipped).
//! - **Cap**: the machine stops at `floor(hold / price_per_unit)` units (the units the hold pays
//!   for: `blepay_core::units_for_hold`, the function `Tariff::units_for` uses) and reports what
//!   the meter counted.
//! - **Progress reports** every `report_every_units` units or `report_every_secs` seconds, at most
//!   one queued at a time (reports are cumulative, so a newer one supersedes a waiting one).
//!   They are also the checkpoint of dispensed units in flash. The press answer's `expires_at` is
//!   the report deadline (the server closes a silent session by timeout then): a progress report
//!   is queued `report_deadline_margin_secs` before it, and each answered report moves the
//!   deadline on by the same timeout.
//! - **A reboot ends the open session**: the valve is closed by the power loss; on recovery the
//!   engine queues the final report with the units of the last queued report. Units dispensed
//!   after the last progress report are not charged.
//! - The use counter is bumped when the final report is queued, in the same record; so are the
//!   lifetime units.
//! - **Link down**: the advert's `LINK_DOWN` flag is set when the last exchange failed (transport
//!   error or no authentic answer) or the transport says the modem is not attached, and cleared
//!   by the next authenticated answer. `FAULT` is set while the machine reports a fault code.
//! - **Sequence numbers run out** after 2^32 − 2 requests: within [`Config::seq_reserve`] of the
//!   end the engine reports [`FAULT_SEQ_LOW`] (in the heartbeat, with `FAULT`), so the machine
//!   stops taking sessions but keeps talking while an operator re-provisions it.

use alloc::collections::VecDeque;
use alloc::collections::vec_deque::Drain;
use alloc::string::String;
use alloc::vec::Vec;

use blepay_core::{SessionId, SessionStatus, Telemetry, Units, UseCounter};
use blepay_proto::AdvertFlags;

use crate::advertiser::{AdvertData, Advertiser};
use crate::clock::Clock;
pub use crate::grant::{Grant, GrantError};
use crate::journal::{Entry, Op};
use crate::log::RecordLog;
use crate::machine;
use crate::outbox::{Outbox, OutboxError, Recovery};
use crate::transport::LinkStatus;
use crate::{Answer, Identity, LinkError, Pending, RefusalCode, Status};

/// Tunables. [`Config::default`] suits a water dispenser on GPRS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Bluetooth company identifier in the advert.
    pub company_id: u16,
    /// Firmware version carried by the heartbeat's telemetry (at most 32 bytes are sent).
    pub firmware_version: &'static str,
    /// An idle machine sends a heartbeat this many seconds after its last answered exchange.
    pub heartbeat_interval_secs: u64,
    /// First retry delay after a failed exchange; doubles up to `retry_max_secs`.
    pub retry_min_secs: u64,
    /// Longest retry delay.
    pub retry_max_secs: u64,
    /// A request handed out by [`Engine::transmit`] with no answer reported after this long is
    /// handed out again (a driver that lost track).
    pub answer_timeout_secs: u64,
    /// Queue a progress report every this many units (0: never by units).
    pub report_every_units: u64,
    /// Queue a progress report every this many seconds while units change (0: never by time).
    pub report_every_secs: u64,
    /// Queue a progress report this many seconds before the server's report deadline (at most
    /// half the server's timeout).
    pub report_deadline_margin_secs: u64,
    /// End dispensing after this many seconds without a meter tick (0: never).
    pub no_flow_timeout_secs: u64,
    /// Sequence numbers reserved per persisted high-water mark.
    pub seq_block: u32,
    /// When at most this many sequence numbers are left before `u32::MAX` (after which the
    /// server can accept nothing from this device: docs/protocol.md §3.3), the engine reports the
    /// fault code [`FAULT_SEQ_LOW`] and sets the advert's FAULT flag, so an operator re-provisions
    /// the machine (a new device id) before it falls silent. 0: only when exhausted.
    pub seq_reserve: u32,
    /// Compact the log when it grows beyond this many bytes.
    pub compact_after_bytes: usize,
    /// Re-persist the clock offset when it moved by more than this many seconds.
    pub clock_persist_drift_secs: u64,
    /// The longest round trip an answer may have to correct the clock ([`Clock::max_rtt`]).
    pub clock_max_rtt_secs: u64,
}

/// The default heartbeat interval: 30 minutes (1,440 heartbeats in 30 days).
pub const DEFAULT_HEARTBEAT_SECS: u64 = 1800;

/// The fault code the engine reports itself (first in the heartbeat's fault codes, with the
/// advert's FAULT flag) once the sequence numbers left are within [`Config::seq_reserve`].
pub const FAULT_SEQ_LOW: u32 = 0xB1E0_0001;

/// The default [`Config::seq_reserve`]: 65,536 numbers, 45 days of one frame a minute, or 3.7
/// years of the heartbeats alone a FAULT machine still sends (it takes no new sessions).
pub const DEFAULT_SEQ_RESERVE: u32 = 65_536;

impl Default for Config {
    fn default() -> Self {
        Self {
            company_id: blepay_proto::DEFAULT_COMPANY_ID,
            firmware_version: env!("CARGO_PKG_VERSION"),
            heartbeat_interval_secs: DEFAULT_HEARTBEAT_SECS,
            retry_min_secs: 1,
            retry_max_secs: 30,
            answer_timeout_secs: 90,
            report_every_units: 100,
            report_every_secs: 60,
            report_deadline_margin_secs: 60,
            no_flow_timeout_secs: 30,
            seq_block: 64,
            seq_reserve: DEFAULT_SEQ_RESERVE,
            compact_after_bytes: 4096,
            clock_persist_drift_secs: 10,
            clock_max_rtt_secs: crate::clock::DEFAULT_MAX_RTT_SECS,
        }
    }
}

/// Why dispensing stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// Units × price reached the hold.
    CapReached,
    /// The hardware reported the end of dispensing.
    Ended,
    /// No meter tick for `no_flow_timeout_secs`.
    NoFlow,
    /// The server refused a progress report: the session is over on its side.
    Refused,
    /// The machine rebooted during the session.
    Interrupted,
}

/// Why a started session ended without dispensing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AbortReason {
    /// The press was sent before a power loss and answered after it: the valve stays closed and
    /// the session is reported with 0 units.
    Interrupted,
    /// Legacy start: the server refused it with this code.
    Refused(RefusalCode),
    /// Legacy start: the server answered with a status other than `ACTIVE`.
    NotActive(Status),
}

impl AbortReason {
    /// The reason as a protocol string: `INTERRUPTED`, the refusal code, or the status's name.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::Interrupted => "INTERRUPTED",
            Self::Refused(code) => code.as_str(),
            Self::NotActive(status) => status.as_str(),
        }
    }
}

/// Why a press started nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotStarted {
    /// The server refused the press: `NO_SESSION_WAITING` (nobody paid), `SESSION_EXPIRED` (the
    /// payment timed out; the server released the hold), or another code.
    Refused(RefusalCode),
    /// The server answered with terms the machine cannot use (it dispenses nothing; the server
    /// closes the session by timeout with nothing reported).
    BadTerms(GrantError),
}

impl NotStarted {
    /// True when the firmware should show "pay in the app first".
    pub const fn pay_in_app_first(&self) -> bool {
        matches!(
            self,
            Self::Refused(RefusalCode::NoSessionWaiting | RefusalCode::SessionExpired)
        )
    }

    /// The reason as a string: the refusal code, or `BAD_TERMS`.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::Refused(code) => code.as_str(),
            Self::BadTerms(_) => "BAD_TERMS",
        }
    }
}

/// What the firmware must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The server started a session on the press: open the valve. The firmware should stop on
    /// its own at `max_units` too.
    StartDispensing {
        /// The session.
        session: SessionId,
        /// Stop at this many units.
        max_units: Units,
    },
    /// Close the valve.
    StopDispensing {
        /// The session.
        session: SessionId,
        /// Why.
        reason: StopReason,
    },
    /// The press started nothing; nothing changed (show "pay in the app first" when
    /// [`NotStarted::pay_in_app_first`]).
    NotStarted {
        /// Why.
        reason: NotStarted,
    },
    /// A started session ends without dispensing (its final report of 0 units follows).
    SessionAborted {
        /// The session.
        session: SessionId,
        /// Why.
        reason: AbortReason,
    },
    /// The final report was answered: the session is over.
    SessionSettled {
        /// The session.
        session: SessionId,
        /// Units reported.
        units: Units,
        /// The amount captured, as the server said (0 when it refused the report).
        amount: i64,
        /// The server's refusal code of the final report, if any.
        error: Option<RefusalCode>,
    },
}

/// Where the engine is (see the module diagram).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// No session.
    Idle,
    /// The press is queued or in flight.
    Pressing {
        /// Recovered after a reboot: if the answer starts a session, report 0 units at once.
        interrupted: bool,
    },
    /// The valve is open.
    Dispensing {
        /// The session's terms.
        grant: Grant,
        /// Units counted so far.
        units: Units,
        /// Units in the last queued report.
        reported: Units,
        /// Local time of the last queued report (or of the start).
        reported_at: u64,
        /// Local time of the last meter tick (or of the start).
        flow_at: u64,
        /// Server time by which the next report must reach the server.
        deadline: u64,
        /// The server's report timeout (`expires_at − server_time` of the press answer).
        timeout: u64,
    },
    /// The final report is queued or in flight.
    Ending {
        /// The session.
        session: SessionId,
        /// Units in the final report.
        units: Units,
    },
}

impl Phase {
    /// The session this phase is about.
    pub const fn session(&self) -> Option<SessionId> {
        match self {
            Self::Idle | Self::Pressing { .. } => None,
            Self::Dispensing { grant, .. } => Some(grant.session),
            Self::Ending { session, .. } => Some(*session),
        }
    }
}

/// Which request a [`Transmit`] carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// The idle machine's heartbeat — not persisted.
    Heartbeat,
    /// The start button: start the session waiting on this machine.
    Press,
    /// Legacy start of a session (only from an outbox written by the polling firmware).
    Start,
    /// A progress report.
    Report,
    /// The final report.
    FinalReport,
}

impl RequestKind {
    /// A short name (`heartbeat`, `press`, `start`, `report`, `final-report`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Heartbeat => "heartbeat",
            Self::Press => "press",
            Self::Start => "start",
            Self::Report => "report",
            Self::FinalReport => "final-report",
        }
    }
}

/// A request to send now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Its sequence number.
    pub seq: u32,
    /// What it is.
    pub kind: RequestKind,
    /// The sealed frame: POST it to `/v1/device` as `application/octet-stream`.
    pub frame: Vec<u8>,
}

/// What [`Engine::on_response`] made of an answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    /// An authenticated answer to the request in flight; it has been acted on.
    Answered {
        /// Which request it answered.
        kind: RequestKind,
        /// The answer.
        answer: Answer,
    },
    /// Not an authentic answer to the request in flight (a JSON error, a forged or corrupted
    /// frame): the request will be retried with the same bytes.
    NotAuthentic {
        /// The HTTP status.
        status: u16,
        /// Why the frame was refused.
        error: LinkError,
    },
    /// No request was in flight; ignored.
    Unexpected,
}

/// Counters for diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Presses ignored because a press was queued or a session open.
    pub presses_ignored: u32,
    /// Heartbeats handed out (first sends; retries not counted).
    pub heartbeats: u32,
    /// Started answers naming a session the journal already started or ended (not dispensed).
    pub known_sessions_ignored: u32,
    /// Exchanges that failed (transport error or no authentic answer).
    pub failed_exchanges: u32,
    /// Rotated keys installed from answers (docs/protocol.md §1.1).
    pub keys_installed: u32,
}

/// An engine failure: only storage can fail (the request is then not sent).
pub type EngineError<E> = OutboxError<E>;

#[derive(Debug, Clone)]
struct InFlight {
    kind: RequestKind,
    pending: Pending,
    /// Local time it was first handed out, when it cannot have been sent before (not recovered
    /// from the outbox after a reboot): the clock's upper bound.
    first_sent_at: Option<u64>,
    /// Local time it was last handed out; `None` before the first time.
    sent_at: Option<u64>,
    /// Local time from which it may be handed out (again).
    due_at: u64,
    failures: u32,
    /// Handed out and neither answered nor failed yet.
    outstanding: bool,
}

/// The machine: identity, durable outbox, clock, session phase.
#[derive(Debug)]
pub struct Engine<L: RecordLog> {
    identity: Identity,
    /// The key before the last one installed over the air (answers to requests sealed before
    /// the install are tagged with it), and the installed key's epoch (0: the provisioned key).
    previous_key: Option<blepay_proto::DeviceKey>,
    key_epoch: blepay_core::KeyEpoch,
    config: Config,
    outbox: Outbox<L>,
    clock: Clock,
    advertiser: Advertiser,
    phase: Phase,
    in_flight: Option<InFlight>,
    /// Sequence numbers below this may have been sent before this boot.
    boot_seq: u32,
    booted_at: u64,
    next_heartbeat_at: u64,
    /// Heartbeats answered in a row without synchronising the clock (for the backoff).
    unsynced_answers: u32,
    link_down: bool,
    signal_quality: u8,
    fault_codes: Vec<u32>,
    actions: VecDeque<Action>,
    stats: Stats,
    recovery: Recovery,
}

const fn entry_kind(e: &Entry) -> RequestKind {
    match e.op {
        Op::Press => RequestKind::Press,
        Op::Start { .. } => RequestKind::Start,
        Op::Report { last: false, .. } => RequestKind::Report,
        Op::Report { last: true, .. } => RequestKind::FinalReport,
    }
}

impl<L: RecordLog> Engine<L> {
    /// Boot: recover the outbox from `log`, count the boot, and resume. A session that was open
    /// when the power went is ended (see the module docs): its final report is queued now; a press
    /// still queued is resent, and a session it starts is reported with 0 units.
    ///
    /// # Errors
    /// The log cannot be read or written.
    pub fn open(
        identity: Identity,
        config: Config,
        log: L,
        now: u64,
    ) -> Result<Self, EngineError<L::Error>> {
        let (mut outbox, recovery) = Outbox::open(log, config.seq_block)?;
        outbox.count_boot()?;
        let durable = outbox.durable();
        let clock = if durable.clock_synced {
            Clock::restore(durable.clock_offset)
        } else {
            Clock::new()
        }
        .with_max_rtt(config.clock_max_rtt_secs);
        let open = durable.open.clone();
        let ending = durable.queue.iter().find_map(|e| match e.op {
            Op::Report {
                session,
                units,
                last: true,
                ..
            } => Some((session, units)),
            Op::Press | Op::Start { .. } | Op::Report { .. } => None,
        });
        let pressing = durable
            .queue
            .iter()
            .any(|e| matches!(e.op, Op::Press | Op::Start { .. }));
        let boot_seq = outbox.peek_seq();
        // A key installed over the air replaces the provisioned one.
        let (identity, previous_key, key_epoch) = match &durable.key {
            Some(k) => (
                Identity {
                    key: blepay_proto::DeviceKey::from_bytes(k.key),
                    ..identity
                },
                Some(blepay_proto::DeviceKey::from_bytes(k.previous)),
                k.epoch,
            ),
            None => (identity, None, blepay_core::KeyEpoch::FIRST),
        };
        let mut engine = Self {
            identity,
            previous_key,
            key_epoch,
            config,
            outbox,
            clock,
            advertiser: Advertiser::new(config.company_id),
            phase: Phase::Idle,
            in_flight: None,
            boot_seq,
            booted_at: now,
            next_heartbeat_at: now,
            unsynced_answers: 0,
            link_down: false,
            signal_quality: blepay_core::telemetry::SIGNAL_UNKNOWN,
            fault_codes: Vec::new(),
            actions: VecDeque::new(),
            stats: Stats::default(),
            recovery,
        };
        match open {
            // A legacy start still queued.
            Some(o) if !o.started => engine.phase = Phase::Pressing { interrupted: true },
            Some(o) => {
                engine.actions.push_back(Action::StopDispensing {
                    session: o.grant.session,
                    reason: StopReason::Interrupted,
                });
                engine.queue_final(o.grant.session, o.units)?;
            }
            None => {
                if let Some((session, units)) = ending {
                    engine.phase = Phase::Ending { session, units };
                } else if pressing {
                    engine.phase = Phase::Pressing { interrupted: true };
                }
            }
        }
        Ok(engine)
    }

    /// The key epoch the engine seals with (0: the provisioned key; above: installed over the
    /// air, docs/protocol.md §1.1).
    pub const fn key_epoch(&self) -> blepay_core::KeyEpoch {
        self.key_epoch
    }

    /// The machine's identity.
    pub const fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The configuration.
    pub const fn config(&self) -> &Config {
        &self.config
    }

    /// Where the engine is.
    pub const fn phase(&self) -> &Phase {
        &self.phase
    }

    /// The clock.
    pub const fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The current use counter.
    pub const fn use_counter(&self) -> UseCounter {
        self.outbox.durable().use_counter
    }

    /// The durable outbox.
    pub const fn outbox(&self) -> &Outbox<L> {
        &self.outbox
    }

    /// Diagnostic counters.
    pub const fn stats(&self) -> Stats {
        self.stats
    }

    /// What recovery found when the engine was opened.
    pub const fn recovery(&self) -> Recovery {
        self.recovery
    }

    /// Hand the log back (e.g. to simulate a reboot).
    pub fn into_log(self) -> L {
        self.outbox.into_log()
    }

    /// The machine's current fault codes (empty: healthy). They go into the heartbeat, and any
    /// code sets the advert's fault flag. At most 8 are sent.
    pub fn set_fault_codes(&mut self, codes: &[u32]) {
        self.fault_codes.clear();
        self.fault_codes.extend_from_slice(codes);
    }

    /// The fault codes set with [`Engine::set_fault_codes`] (the heartbeat also carries the
    /// engine's own, [`FAULT_SEQ_LOW`]).
    pub fn fault_codes(&self) -> &[u32] {
        &self.fault_codes
    }

    /// True when at most [`Config::seq_reserve`] sequence numbers are left: the engine then
    /// reports [`FAULT_SEQ_LOW`] and the FAULT flag.
    pub const fn seq_low(&self) -> bool {
        u32::MAX - self.outbox.peek_seq() <= self.config.seq_reserve
    }

    /// What the transport knows about the link (the driver asks it before each heartbeat): the
    /// signal quality goes into the telemetry; a modem that is not attached sets the link-down
    /// flag until the next authenticated answer.
    pub fn on_link_status(&mut self, status: LinkStatus) {
        let q = status.signal_quality;
        self.signal_quality = if q <= 31 {
            q
        } else {
            blepay_core::telemetry::SIGNAL_UNKNOWN
        };
        if status.attached == Some(false) {
            self.link_down = true;
        }
    }

    /// True when the last exchange failed or the modem said it is not attached (cleared by the
    /// next authenticated answer).
    pub const fn link_down(&self) -> bool {
        self.link_down
    }

    /// Never use a sequence number below `floor` (see [`Outbox::raise_seq_floor`]).
    ///
    /// # Errors
    /// Storage.
    pub fn raise_seq_floor(&mut self, floor: u32) -> Result<(), EngineError<L::Error>> {
        self.outbox.raise_seq_floor(floor)
    }

    /// The telemetry a heartbeat sent at local time `now` carries.
    pub fn telemetry(&self, now: u64) -> Telemetry {
        let mut firmware_version = String::new();
        for c in self.config.firmware_version.chars() {
            if firmware_version.len() + c.len_utf8()
                > blepay_core::telemetry::MAX_FIRMWARE_VERSION_LEN
            {
                break;
            }
            firmware_version.push(c);
        }
        let durable = self.outbox.durable();
        Telemetry {
            firmware_version,
            fault_codes: self
                .seq_low()
                .then_some(FAULT_SEQ_LOW)
                .into_iter()
                .chain(self.fault_codes.iter().copied())
                .take(blepay_core::telemetry::MAX_FAULT_CODES)
                .collect(),
            signal_quality: self.signal_quality,
            uptime_secs: now.saturating_sub(self.booted_at),
            boot_count: durable.boot_count,
            outbox_depth: u32::try_from(self.outbox.len()).unwrap_or(u32::MAX),
            lifetime_units: durable.lifetime_units,
        }
    }

    /// The advert flags now: busy while a session is open, fault while a fault code is set or
    /// the sequence numbers run low ([`Engine::seq_low`]),
    /// clock not synchronised until the first bounded answer since boot, link down after a
    /// failed exchange or when the modem is not attached.
    pub fn advert_flags(&self) -> AdvertFlags {
        let mut flags = AdvertFlags::NONE;
        if self.phase != Phase::Idle {
            flags = flags | AdvertFlags::BUSY;
        }
        if !self.fault_codes.is_empty() || self.seq_low() {
            flags = flags | AdvertFlags::FAULT;
        }
        if !self.clock.is_synced() {
            flags = flags | AdvertFlags::CLOCK_UNSYNCED;
        }
        if self.link_down {
            flags = flags | AdvertFlags::LINK_DOWN;
        }
        flags
    }

    /// The advert to broadcast at local time `now`.
    pub fn advert(&self, now: u64) -> AdvertData {
        self.advertiser.current(
            &self.identity,
            self.clock.server_now(now),
            self.use_counter(),
            self.advert_flags(),
        )
    }

    /// The advert to load into the controller when it changed since the last call (new slot,
    /// use counter or flags), else `None`.
    pub fn advert_update(&mut self, now: u64) -> Option<AdvertData> {
        let (server_now, uc, flags) = (
            self.clock.server_now(now),
            self.use_counter(),
            self.advert_flags(),
        );
        self.advertiser
            .update(&self.identity, server_now, uc, flags)
    }

    /// Actions produced by the inputs so far, oldest first.
    pub fn drain_actions(&mut self) -> Drain<'_, Action> {
        self.actions.drain(..)
    }

    /// True when the next [`Engine::transmit`] at `now` would build a new heartbeat (the driver
    /// then asks the transport for its [`LinkStatus`] first).
    pub fn heartbeat_due(&self, now: u64) -> bool {
        self.in_flight.is_none()
            && self.outbox.is_empty()
            && self.phase == Phase::Idle
            && now >= self.next_heartbeat_at
    }

    /// The request to send now, if one is due: the oldest queued press/report (the same bytes on
    /// every retry), else a heartbeat when one is due. At most one request is in flight; after
    /// handing it out, report the result with [`Engine::on_response`] or
    /// [`Engine::on_transport_error`].
    ///
    /// # Errors
    /// Storage, when reserving a sequence number for a heartbeat fails (nothing is sent).
    pub fn transmit(&mut self, now: u64) -> Result<Option<Transmit>, EngineError<L::Error>> {
        if self.in_flight.is_none() {
            if let Some(e) = self.outbox.front() {
                self.in_flight = Some(InFlight {
                    kind: entry_kind(e),
                    pending: e.pending(),
                    first_sent_at: None,
                    sent_at: None,
                    due_at: now,
                    failures: 0,
                    outstanding: false,
                });
            } else if self.heartbeat_due(now) {
                let seq = self.outbox.take_seq()?;
                let pending = self
                    .identity
                    .request(seq, &crate::heartbeat(self.telemetry(now)));
                self.stats.heartbeats = self.stats.heartbeats.saturating_add(1);
                self.in_flight = Some(InFlight {
                    kind: RequestKind::Heartbeat,
                    pending,
                    first_sent_at: None,
                    sent_at: None,
                    due_at: now,
                    failures: 0,
                    outstanding: false,
                });
            }
        }
        let timeout = self.config.answer_timeout_secs;
        let boot_seq = self.boot_seq;
        let Some(f) = self.in_flight.as_mut().filter(|f| now >= f.due_at) else {
            return Ok(None);
        };
        if f.sent_at.is_none() && f.pending.seq >= boot_seq {
            f.first_sent_at = Some(now);
        }
        f.sent_at = Some(now);
        f.outstanding = true;
        f.due_at = now.saturating_add(timeout);
        Ok(Some(Transmit {
            seq: f.pending.seq,
            kind: f.kind,
            frame: f.pending.frame.clone(),
        }))
    }

    fn backoff(&self, failures: u32) -> u64 {
        let shift = failures.saturating_sub(1).min(16);
        self.config
            .retry_min_secs
            .max(1)
            .saturating_mul(1 << shift)
            .min(self.config.retry_max_secs.max(1))
    }

    /// The request in flight could not be delivered or got no answer: it is retried later with the
    /// same bytes (backing off). The advert says link down until the next authenticated answer.
    pub fn on_transport_error(&mut self, now: u64) {
        self.stats.failed_exchanges = self.stats.failed_exchanges.saturating_add(1);
        self.link_down = true;
        let Some(failures) = self.in_flight.as_mut().map(|f| {
            f.outstanding = false;
            f.failures = f.failures.saturating_add(1);
            f.failures
        }) else {
            return;
        };
        let delay = self.backoff(failures);
        if let Some(f) = self.in_flight.as_mut() {
            f.due_at = now.saturating_add(delay);
        }
    }

    /// An HTTP answer (`status`, `body`) to the request in flight arrived at local time `now`.
    /// An authentic answer sets the clock, acknowledges the request and drives the session;
    /// anything else leaves the request in flight to be retried with the same bytes.
    ///
    /// # Errors
    /// Storage, while persisting the acknowledgement, the clock or a follow-up report. The answer
    /// is then not acknowledged and the request is retried (the server answers a byte-identical
    /// retry with the same answer).
    pub fn on_response(
        &mut self,
        now: u64,
        status: u16,
        body: &[u8],
    ) -> Result<Response, EngineError<L::Error>> {
        let Some(f) = self.in_flight.clone() else {
            return Ok(Response::Unexpected);
        };
        // A request sealed before a key was installed is answered under the key before it.
        let previous = self.previous_key.clone().map(|key| Identity {
            key,
            ..self.identity.clone()
        });
        let opened = match self.identity.open(&f.pending, body) {
            Err(LinkError::Frame(blepay_proto::FrameError::BadTag)) if previous.is_some() => {
                previous
                    .as_ref()
                    .map_or(Err(LinkError::Body), |p| p.open(&f.pending, body))
                    .map(|a| (a, true))
            }
            other => other.map(|a| (a, false)),
        };
        let (answer, under_previous) = match opened {
            Ok(a) => a,
            Err(error) => {
                self.on_transport_error(now);
                return Ok(Response::NotAuthentic { status, error });
            }
        };
        // A key update for an epoch not installed yet, in an answer under the current key:
        // install it durably before anything else (if that fails, nothing is acknowledged and
        // the retry's saved answer carries it again).
        if let Some(update) = answer
            .key_update
            .as_ref()
            .filter(|u| !under_previous && u.epoch > self.key_epoch)
        {
            let next = self.identity.rekeyed(update);
            if let Err(e) = self.outbox.install_key(crate::journal::KeyRecord {
                epoch: update.epoch,
                key: *next.key.expose_bytes(),
                previous: *self.identity.key.expose_bytes(),
            }) {
                self.on_transport_error(now);
                return Err(e);
            }
            self.previous_key = Some(core::mem::replace(&mut self.identity, next).key);
            self.key_epoch = update.epoch;
            self.stats.keys_installed += 1;
        }
        match self.handle_answer(now, &f, &answer) {
            Ok(()) => Ok(Response::Answered {
                kind: f.kind,
                answer,
            }),
            Err(e) => {
                self.on_transport_error(now);
                Err(e)
            }
        }
    }

    fn handle_answer(
        &mut self,
        now: u64,
        f: &InFlight,
        answer: &Answer,
    ) -> Result<(), EngineError<L::Error>> {
        self.link_down = false;
        // Any answer to this seq was stamped after its first send (a retry may get an earlier
        // try's saved answer): that, not the last try, bounds its age.
        let seen = self.clock.observe(answer.server_time, f.first_sent_at, now);
        if seen.first || seen.moved.unsigned_abs() > self.config.clock_persist_drift_secs {
            self.outbox.save_clock(self.clock.offset(), true)?;
        }
        self.schedule_heartbeat(now);
        let refused = answer.refusal().is_some();
        if f.kind == RequestKind::Heartbeat {
            self.in_flight = None;
            return Ok(());
        }
        let entry = self.outbox.front().cloned();
        let Some(entry) = entry.filter(|e| e.seq == f.pending.seq) else {
            self.in_flight = None;
            return Err(OutboxError::NotHead(f.pending.seq));
        };
        match entry.op {
            Op::Press => self.on_press_answer(now, entry.seq, answer),
            Op::Start { grant } => {
                self.outbox.ack(entry.seq, refused)?;
                self.in_flight = None;
                self.on_legacy_start_answer(&grant, answer)
            }
            Op::Report {
                session,
                last: false,
                ..
            } => {
                self.outbox.ack(entry.seq, refused)?;
                self.in_flight = None;
                if refused {
                    return self.stop(session, StopReason::Refused);
                }
                if let Phase::Dispensing {
                    grant,
                    deadline,
                    timeout,
                    ..
                } = &mut self.phase
                {
                    if grant.session == session && *timeout > 0 {
                        *deadline = answer.server_time.saturating_add(*timeout);
                    }
                }
                Ok(())
            }
            Op::Report {
                session,
                units,
                last: true,
                ..
            } => {
                self.outbox.ack(entry.seq, refused)?;
                self.in_flight = None;
                if matches!(self.phase, Phase::Ending { session: s, .. } if s == session) {
                    self.phase = Phase::Idle;
                }
                self.actions.push_back(Action::SessionSettled {
                    session,
                    units,
                    amount: answer.body.session().map_or(0, |(_, amount)| amount),
                    error: answer.refusal_code(),
                });
                self.outbox
                    .compact_if_over(self.config.compact_after_bytes)?;
                Ok(())
            }
        }
    }

    /// After an answered exchange: the next heartbeat is an interval away — or soon, backing off,
    /// while the clock is not synchronised.
    fn schedule_heartbeat(&mut self, now: u64) {
        let interval = self.config.heartbeat_interval_secs.max(1);
        let delay = if self.clock.is_synced() {
            self.unsynced_answers = 0;
            interval
        } else {
            self.unsynced_answers = self.unsynced_answers.saturating_add(1);
            self.backoff(self.unsynced_answers).min(interval)
        };
        self.next_heartbeat_at = now.saturating_add(delay);
    }

    /// Is `session` one the journal already started or ended?
    fn known_session(&self, session: SessionId) -> bool {
        let d = self.outbox.durable();
        d.open.as_ref().is_some_and(|o| o.grant.session == session)
            || d.last_final == Some(session)
            || d.queue.iter().any(|e| e.op.session() == Some(session))
    }

    fn on_press_answer(
        &mut self,
        now: u64,
        seq: u32,
        answer: &Answer,
    ) -> Result<(), EngineError<L::Error>> {
        let interrupted = matches!(self.phase, Phase::Pressing { interrupted: true });
        let grant = match &answer.body {
            machine::Answer::Started(Ok(grant)) => grant.clone(),
            machine::Answer::Started(Err(e)) => {
                return self.not_started(seq, false, NotStarted::BadTerms(*e));
            }
            machine::Answer::Refused(r) => {
                return self.not_started(seq, true, NotStarted::Refused(r.code));
            }
            // Not what the codec reads a press answer as.
            machine::Answer::Ack | machine::Answer::Grants(_) | machine::Answer::Session { .. } => {
                return self.not_started(seq, false, NotStarted::BadTerms(GrantError::Count));
            }
        };
        if self.known_session(grant.session) {
            // Never pour twice: whatever the journal says about this session stands (an open one
            // is ended by its final report, queued at boot).
            self.stats.known_sessions_ignored = self.stats.known_sessions_ignored.saturating_add(1);
            self.outbox.ack(seq, false)?;
            self.in_flight = None;
            if matches!(self.phase, Phase::Pressing { .. }) {
                self.phase = Phase::Idle;
            }
            return Ok(());
        }
        self.outbox.started(seq, grant.clone())?;
        self.in_flight = None;
        if interrupted {
            self.actions.push_back(Action::SessionAborted {
                session: grant.session,
                reason: AbortReason::Interrupted,
            });
            return self.queue_final(grant.session, Units::ZERO);
        }
        self.actions.push_back(Action::StartDispensing {
            session: grant.session,
            max_units: grant.max_units(),
        });
        let timeout = grant.expires_at.saturating_sub(answer.server_time);
        self.phase = Phase::Dispensing {
            deadline: grant.expires_at,
            timeout,
            grant,
            units: Units::ZERO,
            reported: Units::ZERO,
            reported_at: now,
            flow_at: now,
        };
        Ok(())
    }

    fn not_started(
        &mut self,
        seq: u32,
        refused: bool,
        reason: NotStarted,
    ) -> Result<(), EngineError<L::Error>> {
        self.outbox.ack(seq, refused)?;
        self.in_flight = None;
        if matches!(self.phase, Phase::Pressing { .. }) {
            self.phase = Phase::Idle;
        }
        self.actions.push_back(Action::NotStarted { reason });
        Ok(())
    }

    /// A legacy start (queued by the polling firmware before an upgrade) answered after a reboot:
    /// the user is gone, so an `ACTIVE` session is reported with 0 units.
    fn on_legacy_start_answer(
        &mut self,
        grant: &Grant,
        answer: &Answer,
    ) -> Result<(), EngineError<L::Error>> {
        if !matches!(self.phase, Phase::Pressing { .. }) {
            return Ok(());
        }
        let reason = match &answer.body {
            machine::Answer::Session {
                status: Status::Known(SessionStatus::Active),
                ..
            } => AbortReason::Interrupted,
            machine::Answer::Session { status, .. } => AbortReason::NotActive(*status),
            machine::Answer::Refused(r) => AbortReason::Refused(r.code),
            machine::Answer::Grants(_) | machine::Answer::Started(_) | machine::Answer::Ack => {
                AbortReason::NotActive(Status::Unspecified)
            }
        };
        let active = reason == AbortReason::Interrupted;
        self.actions.push_back(Action::SessionAborted {
            session: grant.session,
            reason,
        });
        if active {
            return self.queue_final(grant.session, Units::ZERO);
        }
        self.phase = Phase::Idle;
        Ok(())
    }

    /// The physical start button. When idle: queue the press (dispensing begins when the server
    /// answers with a started session). Otherwise ignored: a press is already queued or in
    /// flight, or a session is open.
    ///
    /// # Errors
    /// Storage: the press is then not queued (the user presses again).
    pub fn on_start_button(&mut self, _now: u64) -> Result<(), EngineError<L::Error>> {
        if self.phase != Phase::Idle {
            self.stats.presses_ignored = self.stats.presses_ignored.saturating_add(1);
            return Ok(());
        }
        let seq = self.outbox.take_seq()?;
        let pending = self.identity.request(seq, &crate::press());
        self.outbox.enqueue(seq, Op::Press, pending.frame)?;
        self.phase = Phase::Pressing { interrupted: false };
        if self
            .in_flight
            .as_ref()
            .is_some_and(|f| f.kind == RequestKind::Heartbeat && !f.outstanding)
        {
            // A heartbeat not sent yet or waiting for its retry: the press goes first (the
            // heartbeat's sequence number is skipped, which the protocol allows).
            self.in_flight = None;
        }
        Ok(())
    }

    /// `delta` units counted by the meter. Stops at the cap (queues the final report), queues a
    /// progress report every `report_every_units`. Ignored when not dispensing.
    ///
    /// # Errors
    /// Storage, while queueing a report.
    pub fn on_meter(&mut self, now: u64, delta: u64) -> Result<(), EngineError<L::Error>> {
        let Phase::Dispensing {
            grant,
            units,
            flow_at,
            ..
        } = &mut self.phase
        else {
            return Ok(());
        };
        if delta == 0 {
            return Ok(());
        }
        *units = Units::new(units.get().saturating_add(delta));
        *flow_at = now;
        let (session, units_now, cap) = (grant.session, *units, grant.max_units());
        if units_now >= cap {
            return self.stop(session, StopReason::CapReached);
        }
        self.maybe_progress(now, false)
    }

    /// The hardware ended dispensing (user stopped, container full): queue the final report.
    ///
    /// # Errors
    /// Storage, while queueing the final report.
    pub fn on_dispense_end(&mut self, _now: u64) -> Result<(), EngineError<L::Error>> {
        match &self.phase {
            Phase::Dispensing { grant, .. } => {
                let session = grant.session;
                self.stop(session, StopReason::Ended)
            }
            _ => Ok(()),
        }
    }

    /// Timers: the no-flow timeout, time- and deadline-based progress reports. Call it whenever
    /// [`Engine::next_wakeup`] is reached (calling it more often is harmless).
    ///
    /// # Errors
    /// Storage, while queueing a report.
    pub fn tick(&mut self, now: u64) -> Result<(), EngineError<L::Error>> {
        match &self.phase {
            Phase::Dispensing { grant, flow_at, .. } => {
                let timeout = self.config.no_flow_timeout_secs;
                if timeout > 0 && now.saturating_sub(*flow_at) >= timeout {
                    let session = grant.session;
                    return self.stop(session, StopReason::NoFlow);
                }
                self.maybe_progress(now, true)
            }
            _ => Ok(()),
        }
    }

    /// The local time at which a progress report is due for the server's deadline.
    fn deadline_report_at(&self) -> Option<u64> {
        let Phase::Dispensing {
            deadline, timeout, ..
        } = &self.phase
        else {
            return None;
        };
        if *timeout == 0 {
            return None;
        }
        let margin = self.config.report_deadline_margin_secs.min(*timeout / 2);
        Some(local_at(
            deadline.saturating_sub(margin),
            self.clock.offset(),
        ))
    }

    /// Queue a progress report when one is due and none is waiting.
    fn maybe_progress(&mut self, now: u64, by_time: bool) -> Result<(), EngineError<L::Error>> {
        let deadline_due = by_time && self.deadline_report_at().is_some_and(|at| now >= at);
        let Phase::Dispensing {
            grant,
            units,
            reported,
            reported_at,
            ..
        } = &self.phase
        else {
            return Ok(());
        };
        let (every_units, every_secs) = (
            self.config.report_every_units,
            self.config.report_every_secs,
        );
        let new_units = units.get().saturating_sub(reported.get());
        let due = deadline_due
            || if by_time {
                every_secs > 0 && new_units > 0 && now.saturating_sub(*reported_at) >= every_secs
            } else {
                every_units > 0 && new_units >= every_units
            };
        let session = grant.session;
        let waiting = self
            .outbox
            .queue()
            .any(|e| matches!(e.op, Op::Report { last: false, .. }));
        if !due || waiting {
            return Ok(());
        }
        let units = *units;
        let use_counter = self.use_counter();
        let seq = self.outbox.take_seq()?;
        let pending = self
            .identity
            .request(seq, &crate::report(session, units, false));
        self.outbox.enqueue(
            seq,
            Op::Report {
                session,
                units,
                last: false,
                use_counter,
            },
            pending.frame,
        )?;
        if let Phase::Dispensing {
            reported,
            reported_at,
            ..
        } = &mut self.phase
        {
            *reported = units;
            *reported_at = now;
        }
        Ok(())
    }

    /// Close the valve and queue the final report.
    fn stop(
        &mut self,
        session: SessionId,
        reason: StopReason,
    ) -> Result<(), EngineError<L::Error>> {
        let Phase::Dispensing { grant, units, .. } = &self.phase else {
            return Ok(());
        };
        if grant.session != session {
            return Ok(());
        }
        let units = *units;
        self.actions
            .push_back(Action::StopDispensing { session, reason });
        self.queue_final(session, units)
    }

    /// Queue the final report (bumping the use counter and the lifetime units in the same
    /// record) and enter `Ending`.
    fn queue_final(
        &mut self,
        session: SessionId,
        units: Units,
    ) -> Result<(), EngineError<L::Error>> {
        let use_counter = self.use_counter().next();
        let seq = self.outbox.take_seq()?;
        let pending = self
            .identity
            .request(seq, &crate::report(session, units, true));
        self.outbox.enqueue(
            seq,
            Op::Report {
                session,
                units,
                last: true,
                use_counter,
            },
            pending.frame,
        )?;
        self.phase = Phase::Ending { session, units };
        Ok(())
    }

    /// The local time by which the engine wants to be called again ([`Engine::tick`],
    /// [`Engine::transmit`], [`Engine::advert_update`]): the next retry or heartbeat, the
    /// no-flow timeout, a progress report, or the advert's slot change.
    pub fn next_wakeup(&self, now: u64) -> u64 {
        let mut at = self.next_slot_at(now);
        let mut consider = |t: u64| at = at.min(t.max(now));
        match &self.in_flight {
            Some(f) => consider(f.due_at),
            None if !self.outbox.is_empty() => consider(now),
            None if self.phase == Phase::Idle => consider(self.next_heartbeat_at),
            None => {}
        }
        if let Phase::Dispensing {
            flow_at,
            reported_at,
            ..
        } = &self.phase
        {
            if self.config.no_flow_timeout_secs > 0 {
                consider(flow_at.saturating_add(self.config.no_flow_timeout_secs));
            }
            if self.config.report_every_secs > 0 {
                consider(reported_at.saturating_add(self.config.report_every_secs));
            }
            if let Some(t) = self.deadline_report_at() {
                consider(t);
            }
        }
        at
    }

    fn next_slot_at(&self, now: u64) -> u64 {
        let server_now = self.clock.server_now(now);
        let next_slot = (server_now / blepay_core::Slot::SECONDS + 1)
            .saturating_mul(blepay_core::Slot::SECONDS);
        local_at(next_slot, self.clock.offset()).max(now)
    }
}

/// Local time at which the server clock shows `server_time`.
const fn local_at(server_time: u64, offset: i64) -> u64 {
    server_time.saturating_add_signed(offset.saturating_neg())
}
