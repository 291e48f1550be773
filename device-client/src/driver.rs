//! The loop that connects the sans-IO [`Engine`] to a blocking [`Transport`].
//!
//! A firmware main loop, sketched (`local_seconds` is the machine's own monotonic or RTC time):
//!
//! ```ignore
//! let engine = Engine::open(identity, Config::default(), flash_log, local_seconds())?;
//! let mut driver = Driver::new(engine, sim800);
//! loop {
//!     let now = local_seconds();
//!     if button.take_press() { driver.engine_mut().on_start_button(now)?; } // one Press request
//!     driver.engine_mut().set_fault_codes(&machine.fault_codes());
//!     driver.engine_mut().on_meter(now, meter.take_pulses())?;
//!     if valve.finished() { driver.engine_mut().on_dispense_end(now)?; }
//!     driver.engine_mut().tick(now)?;
//!     driver.step(&mut local_seconds)?;            // at most one HTTP exchange
//!     for action in driver.engine_mut().drain_actions() {
//!         match action {
//!             Action::StartDispensing { max_units, .. } => valve.open(max_units),
//!             Action::StopDispensing { .. } => valve.close(),
//!             Action::NotStarted { reason } if reason.pay_in_app_first() => display.pay_in_app(),
//!             other => display.show(&other),
//!         }
//!     }
//!     if let Some(ad) = driver.engine_mut().advert_update(local_seconds()) {
//!         ble.write(&ad.hci_command);               // HCI LE Set Advertising Data
//!     }
//!     sleep_until(driver.engine().next_wakeup(local_seconds()), /* or an input */);
//! }
//! ```

use alloc::vec::Vec;

use crate::engine::{Engine, EngineError, RequestKind, Response};
use crate::log::RecordLog;
use crate::transport::{DEVICE_PATH, Transport};

/// What one [`Driver::step`] did.
#[derive(Debug)]
pub enum Step<E> {
    /// Nothing was due.
    Idle,
    /// One request was sent and an HTTP answer came back (authentic or not: see `response`).
    Exchanged {
        /// Which request.
        kind: RequestKind,
        /// Its sequence number.
        seq: u32,
        /// The HTTP status.
        status: u16,
        /// What the engine made of the answer.
        response: Response,
    },
    /// The transport failed; the request will be retried with the same bytes after a backoff.
    TransportFailed {
        /// Which request.
        kind: RequestKind,
        /// Its sequence number.
        seq: u32,
        /// The transport's error.
        error: E,
    },
}

/// An [`Engine`] and the [`Transport`] that carries its requests.
#[derive(Debug)]
pub struct Driver<T: Transport, L: RecordLog> {
    engine: Engine<L>,
    transport: T,
    response: Vec<u8>,
}

impl<T: Transport, L: RecordLog> Driver<T, L> {
    /// A driver over `engine` and `transport`.
    pub const fn new(engine: Engine<L>, transport: T) -> Self {
        Self {
            engine,
            transport,
            response: Vec::new(),
        }
    }

    /// The engine.
    pub const fn engine(&self) -> &Engine<L> {
        &self.engine
    }

    /// The engine, to feed it inputs.
    pub const fn engine_mut(&mut self) -> &mut Engine<L> {
        &mut self.engine
    }

    /// The transport.
    pub const fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// Take the engine and the transport apart.
    pub fn into_parts(self) -> (Engine<L>, T) {
        (self.engine, self.transport)
    }

    /// Send the request that is due, if any, and feed the answer (or the failure) back to the
    /// engine. Before a new heartbeat the transport's [`crate::transport::LinkStatus`] is read
    /// into the engine (signal quality for the telemetry, attach state for the link-down flag). `clock` gives the local time; it is read again after the (blocking) exchange so
    /// the clock sync sees the round trip.
    ///
    /// # Errors
    /// Storage, from the engine (the request is then retried later).
    pub fn step(
        &mut self,
        clock: &mut impl FnMut() -> u64,
    ) -> Result<Step<T::Error>, EngineError<L::Error>> {
        let now = clock();
        if self.engine.heartbeat_due(now) {
            // Cheap and local (SIM800: AT+CSQ, AT+SAPBR=2,1): no data leaves the modem.
            let status = self.transport.link_status();
            self.engine.on_link_status(status);
        }
        let Some(tx) = self.engine.transmit(now)? else {
            return Ok(Step::Idle);
        };
        self.response.clear();
        match self
            .transport
            .post(DEVICE_PATH, &tx.frame, &mut self.response)
        {
            Ok(status) => {
                let response = self.engine.on_response(clock(), status, &self.response)?;
                Ok(Step::Exchanged {
                    kind: tx.kind,
                    seq: tx.seq,
                    status,
                    response,
                })
            }
            Err(error) => {
                self.engine.on_transport_error(clock());
                Ok(Step::TransportFailed {
                    kind: tx.kind,
                    seq: tx.seq,
                    error,
                })
            }
        }
    }
}
