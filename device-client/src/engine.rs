//! The session engine: a sans-IO state machine that decides what the machine sends, when it
//! dispenses, and what it advertises. Time is passed in as local seconds (`now`).
//!
//! ```text
//!            poll answer with a grant               start button (before expires_at)
//!   Idle ─────────────────────────────► Granted ─────────────────────────────► Starting
//!    ▲  ◄── grant expired ───────────────┘                                    │ start answered
//!    │  ◄── start refused (SESSION_EXPIRED, …) ───────────────────────────────┤
//!    │                                                                        ▼ ACTIVE
//!    │      final report answered        cap reached / end / no flow /     Dispensing
//!    └────────────────────────── Ending ◄──── start button again ───────────┘  (meter ticks,
//!                                                                              progress reports)
//! ```
//!
//! Inputs: [`Engine::on_response`] (answers to its own requests), [`Engine::on_start_button`],
//! [`Engine::on_meter`], [`Engine::on_dispense_end`], [`Engine::tick`] (timers). Outputs:
//! [`Engine::transmit`] (the one request to send now — the same bytes again on a retry) and
//! [`Engine::drain_actions`] (open/close the valve, show a state), [`Engine::advert_update`].
//!
//! Decisions:
//! - **No optimistic dispensing.** The valve opens only when the server answered the start with
//!   `ACTIVE`. The server is the only authority on start (a grant may have expired, the hold may
//!   be gone); a GPRS round trip (0.5–1 s) after a button press is an acceptable wait.
//! - **Everything goes through one in-flight slot**: a request is answered before the next is
//!   sent (docs/protocol.md §3.3). Queued starts and reports go first; polls only when the outbox
//!   is empty and the machine is idle or waiting for the button.
//! - **Cap**: the machine stops at `floor(hold / price_per_unit)` units (the units the hold pays
//!   for: `blepay_core::units_for_hold`, the function `Tariff::units_for` uses) and reports what
//!   the meter counted.
//! - **Progress reports** every `report_every_units` units or `report_every_secs` seconds, at most
//!   one queued at a time (reports are cumulative, so a newer one supersedes a waiting one).
//!   They are also the checkpoint of dispensed units in flash.
//! - **A reboot ends the open session**: the valve is closed by the power loss; on recovery the
//!   engine queues the final report with the units of the last queued report (a start still
//!   unanswered is sent first, then a final report). Units dispensed after the last progress
//!   report are not charged.
//! - The start button while dispensing ends dispensing.
//! - The use counter is bumped when the final report is queued, in the same record.

use alloc::collections::VecDeque;
use alloc::collections::vec_deque::Drain;
use alloc::vec::Vec;

use blepay_core::{SessionId, SessionStatus, Units, UseCounter};
use blepay_proto::AdvertFlags;

use crate::advertiser::{AdvertData, Advertiser};
use crate::clock::Clock;
pub use crate::grant::{Grant, GrantError};
use crate::journal::{Entry, Op};
use crate::log::RecordLog;
use crate::machine;
use crate::outbox::{Outbox, OutboxError, Recovery};
use crate::{Answer, Identity, LinkError, Pending, RefusalCode, Status};

/// Tunables. [`Config::default`] suits a water dispenser on GPRS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Bluetooth company identifier in the advert.
    pub company_id: u16,
    /// Poll every this many seconds while idle or waiting for the button.
    pub poll_every_secs: u64,
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
    /// End dispensing after this many seconds without a meter tick (0: never).
    pub no_flow_timeout_secs: u64,
    /// Sequence numbers reserved per persisted high-water mark.
    pub seq_block: u32,
    /// Compact the log when it grows beyond this many bytes.
    pub compact_after_bytes: usize,
    /// Re-persist the clock offset when it moved by more than this many seconds.
    pub clock_persist_drift_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            company_id: blepay_proto::DEFAULT_COMPANY_ID,
            poll_every_secs: 5,
            retry_min_secs: 1,
            retry_max_secs: 30,
            answer_timeout_secs: 90,
            report_every_units: 100,
            report_every_secs: 60,
            no_flow_timeout_secs: 30,
            seq_block: 64,
            compact_after_bytes: 4096,
            clock_persist_drift_secs: 10,
        }
    }
}

/// Why dispensing stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// Units × price reached the hold.
    CapReached,
    /// The hardware reported the end of dispensing (or the button was pressed again).
    Ended,
    /// No meter tick for `no_flow_timeout_secs`.
    NoFlow,
    /// The server refused a progress report: the session is over on its side.
    Refused,
    /// The machine rebooted during the session.
    Interrupted,
}

/// Why a session ended without dispensing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AbortReason {
    /// The grant's `expires_at` passed before the start button.
    Expired,
    /// The server refused the start with this code (e.g. `SESSION_EXPIRED`).
    Refused(RefusalCode),
    /// The server answered the start with a status other than `ACTIVE`.
    NotActive(Status),
}

impl AbortReason {
    /// The reason as a protocol string: `EXPIRED`, the refusal code, or the status's name.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::Expired => "EXPIRED",
            Self::Refused(code) => code.as_str(),
            Self::NotActive(status) => status.as_str(),
        }
    }
}

/// What the firmware must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A grant arrived: invite the user to press start (e.g. light the button).
    AwaitStart {
        /// The session.
        session: SessionId,
        /// Server unix time by which start must be pressed.
        expires_at: u64,
        /// The units the hold pays for.
        max_units: Units,
    },
    /// The server confirmed the start: open the valve. The firmware should stop on its own at
    /// `max_units` too.
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
    /// The session ended before dispensing; nothing was charged.
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
    /// A grant is waiting for the start button.
    Granted {
        /// The grant.
        grant: Grant,
    },
    /// The start request is queued or in flight.
    Starting {
        /// The grant.
        grant: Grant,
        /// Recovered after a reboot: end the session as soon as the start is answered.
        interrupted: bool,
    },
    /// The valve is open.
    Dispensing {
        /// The grant.
        grant: Grant,
        /// Units counted so far.
        units: Units,
        /// Units in the last queued report.
        reported: Units,
        /// Local time of the last queued report (or of the start).
        reported_at: u64,
        /// Local time of the last meter tick (or of the start).
        flow_at: u64,
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
    pub fn session(&self) -> Option<SessionId> {
        match self {
            Self::Idle => None,
            Self::Granted { grant }
            | Self::Starting { grant, .. }
            | Self::Dispensing { grant, .. } => Some(grant.session),
            Self::Ending { session, .. } => Some(*session),
        }
    }
}

/// Which request a [`Transmit`] carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// "Anything for me?" — not persisted.
    Poll,
    /// Start of a session.
    Start,
    /// A progress report.
    Report,
    /// The final report.
    FinalReport,
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
    /// Grants ignored because a session was already open.
    pub grants_ignored_busy: u32,
    /// Grants ignored because their `expires_at` had passed.
    pub grants_expired: u32,
    /// Grants that did not parse.
    pub grants_invalid: u32,
    /// Exchanges that failed (transport error or no authentic answer).
    pub failed_exchanges: u32,
}

/// An engine failure: only storage can fail (the request is then not sent).
pub type EngineError<E> = OutboxError<E>;

#[derive(Debug, Clone)]
struct InFlight {
    kind: RequestKind,
    pending: Pending,
    /// Local time it was last handed out; `None` before the first time.
    sent_at: Option<u64>,
    /// Local time from which it may be handed out (again).
    due_at: u64,
    failures: u32,
}

/// The machine: identity, durable outbox, clock, session phase.
#[derive(Debug)]
pub struct Engine<L: RecordLog> {
    identity: Identity,
    config: Config,
    outbox: Outbox<L>,
    clock: Clock,
    advertiser: Advertiser,
    phase: Phase,
    in_flight: Option<InFlight>,
    next_poll_at: u64,
    fault: bool,
    actions: VecDeque<Action>,
    stats: Stats,
    recovery: Recovery,
}

fn entry_kind(e: &Entry) -> RequestKind {
    match e.op {
        Op::Start { .. } => RequestKind::Start,
        Op::Report { last: false, .. } => RequestKind::Report,
        Op::Report { last: true, .. } => RequestKind::FinalReport,
    }
}

impl<L: RecordLog> Engine<L> {
    /// Boot: recover the outbox from `log` and resume. A session that was open when the power went
    /// is ended (see the module docs): the final report is queued now, or after the pending start
    /// is answered.
    ///
    /// # Errors
    /// The log cannot be read, or the final report of an interrupted session cannot be queued.
    pub fn open(
        identity: Identity,
        config: Config,
        log: L,
        now: u64,
    ) -> Result<Self, EngineError<L::Error>> {
        let (outbox, recovery) = Outbox::open(log, config.seq_block)?;
        let durable = outbox.durable();
        let clock = if durable.clock_synced {
            Clock::restore(durable.clock_offset)
        } else {
            Clock::new()
        };
        let open = durable.open.clone();
        let ending = durable.queue.iter().find_map(|e| match e.op {
            Op::Report {
                session,
                units,
                last: true,
                ..
            } => Some((session, units)),
            Op::Start { .. } | Op::Report { .. } => None,
        });
        let mut engine = Self {
            identity,
            config,
            outbox,
            clock,
            advertiser: Advertiser::new(config.company_id),
            phase: Phase::Idle,
            in_flight: None,
            next_poll_at: now,
            fault: false,
            actions: VecDeque::new(),
            stats: Stats::default(),
            recovery,
        };
        match open {
            Some(o) if !o.started => {
                engine.phase = Phase::Starting {
                    grant: o.grant,
                    interrupted: true,
                }
            }
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
                }
            }
        }
        Ok(engine)
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

    /// Set or clear the advert's fault flag.
    pub fn set_fault(&mut self, fault: bool) {
        self.fault = fault;
    }

    /// Never use a sequence number below `floor` (see [`Outbox::raise_seq_floor`]).
    ///
    /// # Errors
    /// Storage.
    pub fn raise_seq_floor(&mut self, floor: u32) -> Result<(), EngineError<L::Error>> {
        self.outbox.raise_seq_floor(floor)
    }

    /// The advert flags now: busy while a session is open, clock not synchronised until the first
    /// answer since boot, fault when set.
    pub fn advert_flags(&self) -> AdvertFlags {
        let mut flags = AdvertFlags::NONE;
        if self.phase != Phase::Idle {
            flags = flags | AdvertFlags::BUSY;
        }
        if self.fault {
            flags = flags | AdvertFlags::FAULT;
        }
        if !self.clock.is_synced() {
            flags = flags | AdvertFlags::CLOCK_UNSYNCED;
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

    /// The request to send now, if one is due: the oldest queued start/report (the same bytes on
    /// every retry), else a poll when one is due. At most one request is in flight; after handing
    /// it out, report the result with [`Engine::on_response`] or [`Engine::on_transport_error`].
    ///
    /// # Errors
    /// Storage, when reserving a sequence number for a poll fails (nothing is sent).
    pub fn transmit(&mut self, now: u64) -> Result<Option<Transmit>, EngineError<L::Error>> {
        if self.in_flight.is_none() {
            if let Some(e) = self.outbox.front() {
                self.in_flight = Some(InFlight {
                    kind: entry_kind(e),
                    pending: e.pending(),
                    sent_at: None,
                    due_at: now,
                    failures: 0,
                });
            } else if self.may_poll() && now >= self.next_poll_at {
                let seq = self.outbox.take_seq()?;
                let pending = self.identity.request(seq, &crate::poll());
                self.in_flight = Some(InFlight {
                    kind: RequestKind::Poll,
                    pending,
                    sent_at: None,
                    due_at: now,
                    failures: 0,
                });
            }
        }
        let timeout = self.config.answer_timeout_secs;
        let Some(f) = self.in_flight.as_mut().filter(|f| now >= f.due_at) else {
            return Ok(None);
        };
        f.sent_at = Some(now);
        f.due_at = now.saturating_add(timeout);
        Ok(Some(Transmit {
            seq: f.pending.seq,
            kind: f.kind,
            frame: f.pending.frame.clone(),
        }))
    }

    fn may_poll(&self) -> bool {
        matches!(self.phase, Phase::Idle | Phase::Granted { .. })
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
    /// same bytes (backing off).
    pub fn on_transport_error(&mut self, now: u64) {
        self.stats.failed_exchanges = self.stats.failed_exchanges.saturating_add(1);
        let Some(failures) = self.in_flight.as_mut().map(|f| {
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
    /// An authentic answer sets the clock, acknowledges the request and drives the session; anything
    /// else leaves the request in flight to be retried with the same bytes.
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
        let answer = match self.identity.open(&f.pending, body) {
            Ok(a) => a,
            Err(error) => {
                self.on_transport_error(now);
                return Ok(Response::NotAuthentic { status, error });
            }
        };
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
        let previous = self.clock.offset();
        let first = self
            .clock
            .sync(answer.server_time, f.sent_at.unwrap_or(now), now);
        let drift = self.clock.offset().abs_diff(previous);
        if first || drift > self.config.clock_persist_drift_secs {
            self.outbox.save_clock(self.clock.offset(), true)?;
        }
        let refused = answer.refusal().is_some();
        if f.kind == RequestKind::Poll {
            self.in_flight = None;
            self.next_poll_at = now.saturating_add(self.config.poll_every_secs);
            if let machine::Answer::Grants(grants) = &answer.body {
                self.take_grants(now, grants);
            }
            return Ok(());
        }
        let entry = self.outbox.ack(f.pending.seq, refused)?;
        self.in_flight = None;
        match entry.op {
            Op::Start { grant } => self.on_start_answer(now, grant, answer),
            Op::Report {
                session,
                last: false,
                ..
            } => {
                if refused {
                    self.stop(session, StopReason::Refused)?;
                }
                Ok(())
            }
            Op::Report {
                session,
                units,
                last: true,
                ..
            } => {
                if matches!(self.phase, Phase::Ending { session: s, .. } if s == session) {
                    self.phase = Phase::Idle;
                    self.next_poll_at = now;
                }
                self.actions.push_back(Action::SessionSettled {
                    session,
                    units,
                    amount: match answer.body {
                        machine::Answer::Session { amount, .. } => amount,
                        machine::Answer::Grants(_) | machine::Answer::Refused(_) => 0,
                    },
                    error: answer.refusal_code(),
                });
                self.outbox
                    .compact_if_over(self.config.compact_after_bytes)?;
                Ok(())
            }
        }
    }

    fn on_start_answer(
        &mut self,
        now: u64,
        grant: Grant,
        answer: &Answer,
    ) -> Result<(), EngineError<L::Error>> {
        let Phase::Starting {
            grant: g,
            interrupted,
        } = &self.phase
        else {
            return Ok(());
        };
        if g.session != grant.session {
            return Ok(());
        }
        let interrupted = *interrupted;
        let not_active = match &answer.body {
            machine::Answer::Session {
                status: Status::Known(SessionStatus::Active),
                ..
            } => None,
            machine::Answer::Session { status, .. } => Some(AbortReason::NotActive(*status)),
            machine::Answer::Refused(r) => Some(AbortReason::Refused(r.code)),
            // Not what a start is answered with (the codec reads start answers as a session).
            machine::Answer::Grants(_) => Some(AbortReason::NotActive(Status::Unspecified)),
        };
        if let Some(reason) = not_active {
            self.phase = Phase::Idle;
            self.next_poll_at = now;
            self.actions.push_back(Action::SessionAborted {
                session: grant.session,
                reason,
            });
            return Ok(());
        }
        if interrupted {
            return self.queue_final(grant.session, Units::ZERO);
        }
        self.actions.push_back(Action::StartDispensing {
            session: grant.session,
            max_units: grant.max_units(),
        });
        self.phase = Phase::Dispensing {
            grant,
            units: Units::ZERO,
            reported: Units::ZERO,
            reported_at: now,
            flow_at: now,
        };
        Ok(())
    }

    fn take_grants(&mut self, now: u64, grants: &[Result<Grant, GrantError>]) {
        let server_now = self.clock.server_now(now);
        for g in grants {
            let Ok(grant) = g.clone() else {
                self.stats.grants_invalid = self.stats.grants_invalid.saturating_add(1);
                continue;
            };
            if self.phase.session() == Some(grant.session) {
                continue; // the grant we already hold, listed again
            }
            if self.phase != Phase::Idle {
                self.stats.grants_ignored_busy = self.stats.grants_ignored_busy.saturating_add(1);
                continue;
            }
            if server_now >= grant.expires_at {
                self.stats.grants_expired = self.stats.grants_expired.saturating_add(1);
                continue;
            }
            self.actions.push_back(Action::AwaitStart {
                session: grant.session,
                expires_at: grant.expires_at,
                max_units: grant.max_units(),
            });
            self.phase = Phase::Granted { grant };
        }
    }

    /// The physical start button. With a live grant: queue the start request (dispensing begins
    /// when the server answers `ACTIVE`). While dispensing: end of dispensing. Otherwise ignored.
    ///
    /// # Errors
    /// Storage: the start is then not queued, and the grant is still waiting.
    pub fn on_start_button(&mut self, now: u64) -> Result<(), EngineError<L::Error>> {
        match &self.phase {
            Phase::Granted { grant } => {
                let grant = grant.clone();
                if self.clock.server_now(now) >= grant.expires_at {
                    self.expire(grant.session);
                    return Ok(());
                }
                let seq = self.outbox.take_seq()?;
                let pending = self.identity.request(seq, &crate::start(grant.session));
                self.outbox.enqueue(
                    seq,
                    Op::Start {
                        grant: grant.clone(),
                    },
                    pending.frame,
                )?;
                self.phase = Phase::Starting {
                    grant,
                    interrupted: false,
                };
                if self
                    .in_flight
                    .as_ref()
                    .is_some_and(|f| f.kind == RequestKind::Poll && f.sent_at.is_none())
                {
                    self.in_flight = None; // a poll not handed out yet: the start goes first
                }
                Ok(())
            }
            Phase::Dispensing { grant, .. } => {
                let session = grant.session;
                self.stop(session, StopReason::Ended)
            }
            Phase::Idle | Phase::Starting { .. } | Phase::Ending { .. } => Ok(()),
        }
    }

    fn expire(&mut self, session: SessionId) {
        self.phase = Phase::Idle;
        self.stats.grants_expired = self.stats.grants_expired.saturating_add(1);
        self.actions.push_back(Action::SessionAborted {
            session,
            reason: AbortReason::Expired,
        });
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

    /// Timers: grant expiry, the no-flow timeout, time-based progress reports. Call it whenever
    /// [`Engine::next_wakeup`] is reached (calling it more often is harmless).
    ///
    /// # Errors
    /// Storage, while queueing a report.
    pub fn tick(&mut self, now: u64) -> Result<(), EngineError<L::Error>> {
        match &self.phase {
            Phase::Granted { grant } if self.clock.server_now(now) >= grant.expires_at => {
                let session = grant.session;
                self.expire(session);
                Ok(())
            }
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

    /// Queue a progress report when one is due and none is waiting.
    fn maybe_progress(&mut self, now: u64, by_time: bool) -> Result<(), EngineError<L::Error>> {
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
        let due = if by_time {
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

    /// Queue the final report (bumping the use counter in the same record) and enter `Ending`.
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
    /// [`Engine::transmit`], [`Engine::advert_update`]): the next retry or poll, grant expiry,
    /// no-flow timeout, progress report, or advert slot change.
    pub fn next_wakeup(&self, now: u64) -> u64 {
        let mut at = self.next_slot_at(now);
        let mut consider = |t: u64| at = at.min(t.max(now));
        match &self.in_flight {
            Some(f) => consider(f.due_at),
            None if !self.outbox.is_empty() => consider(now),
            None if self.may_poll() => consider(self.next_poll_at),
            None => {}
        }
        let offset = self.clock.offset();
        match &self.phase {
            Phase::Granted { grant } => consider(local_at(grant.expires_at, offset)),
            Phase::Dispensing {
                flow_at,
                reported_at,
                ..
            } => {
                if self.config.no_flow_timeout_secs > 0 {
                    consider(flow_at.saturating_add(self.config.no_flow_timeout_secs));
                }
                if self.config.report_every_secs > 0 {
                    consider(reported_at.saturating_add(self.config.report_every_secs));
                }
            }
            _ => {}
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
fn local_at(server_time: u64, offset: i64) -> u64 {
    server_time.saturating_add_signed(offset.saturating_neg())
}
