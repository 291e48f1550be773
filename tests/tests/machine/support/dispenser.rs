//! A simulated water dispenser on the real client: the session [`Engine`] (outbox in a
//! [`MemLog`]) and the [`Driver`] over any [`Transport`], turned by the firmware loop of the
//! `driver` module docs. The user presses the start button after paying ([`Dispenser::press`]);
//! the valve opens on the server's answer to that one press, the meter counts one unit per turn up
//! to `units_per_session`, then the hardware ends dispensing.

use std::time::{Duration, Instant};

use blepay_core::{SessionId, Units};
use blepay_device_client::driver::{Driver, Step};
use blepay_device_client::engine::{Action, Config, Engine, NotStarted};
use blepay_device_client::log::MemLog;
use blepay_device_client::transport::Transport;
use blepay_device_client::{Identity, RefusalCode};

/// A session as the machine saw it end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    pub session: SessionId,
    pub units: Units,
    pub amount: i64,
    pub error: Option<RefusalCode>,
}

pub struct Dispenser<T: Transport> {
    pub driver: Driver<T, MemLog>,
    /// Units to dispense in each session (the engine also stops at the cap).
    pub units_per_session: u64,
    /// Units the meter still has to count in the open session.
    pouring: Option<u64>,
    pub settled: Vec<Settled>,
    pub aborted: Vec<SessionId>,
    /// Presses that started nothing.
    pub not_started: Vec<NotStarted>,
    /// Sessions the valve opened for.
    pub started: Vec<SessionId>,
    pub transport_failures: u32,
    /// The user pressed start: fed to the engine at the next turn.
    pressed: bool,
}

/// Local seconds: wall-clock unix time (the engine corrects it with the server's time).
pub fn local_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Tunables for a test: a progress report every 2 units, retries after 1 s (the heartbeat stays
/// at its default: these tests never wait that long).
pub fn test_config() -> Config {
    Config {
        retry_min_secs: 1,
        retry_max_secs: 1,
        report_every_units: 2,
        report_every_secs: 0,
        ..Config::default()
    }
}

impl<T: Transport> Dispenser<T> {
    pub fn new(identity: Identity, transport: T) -> Self {
        let engine = Engine::open(identity, test_config(), MemLog::new(), local_now()).unwrap();
        Self {
            driver: Driver::new(engine, transport),
            units_per_session: 1,
            pouring: None,
            settled: Vec::new(),
            aborted: Vec::new(),
            not_started: Vec::new(),
            started: Vec::new(),
            transport_failures: 0,
            pressed: false,
        }
    }

    /// The user presses the start button.
    pub fn press(&mut self) {
        self.pressed = true;
    }

    pub fn engine(&self) -> &Engine<MemLog> {
        self.driver.engine()
    }

    /// One turn of the firmware loop; true when an exchange was attempted.
    pub fn turn(&mut self) -> bool {
        let now = local_now();
        let engine = self.driver.engine_mut();
        if std::mem::take(&mut self.pressed) {
            engine.on_start_button(now).unwrap();
        }
        if let Some(left) = self.pouring.as_mut() {
            if *left > 0 {
                *left -= 1;
                engine.on_meter(now, 1).unwrap();
            } else {
                engine.on_dispense_end(now).unwrap();
            }
        }
        engine.tick(now).unwrap();
        let step = self.driver.step(&mut local_now).unwrap();
        let exchanged = !matches!(step, Step::Idle);
        if let Step::TransportFailed { .. } = step {
            self.transport_failures += 1;
        }
        let actions: Vec<Action> = self.driver.engine_mut().drain_actions().collect();
        for action in actions {
            match action {
                Action::StartDispensing { session, .. } => {
                    self.started.push(session);
                    self.pouring = Some(self.units_per_session);
                }
                Action::NotStarted { reason } => self.not_started.push(reason),
                Action::StopDispensing { .. } => self.pouring = None,
                Action::SessionAborted { session, .. } => self.aborted.push(session),
                Action::SessionSettled {
                    session,
                    units,
                    amount,
                    error,
                } => self.settled.push(Settled {
                    session,
                    units,
                    amount,
                    error,
                }),
            }
        }
        exchanged
    }

    /// Turn the loop until `done`, failing after `limit`.
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + limit;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "not done after {limit:?}: phase {:?}, settled {}, stats {:?}",
                self.engine().phase(),
                self.settled.len(),
                self.engine().stats()
            );
            if !self.turn() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// A [`Transport`] that records every body it is given (retries included).
pub struct Recording<T> {
    pub inner: T,
    pub sent: Vec<Vec<u8>>,
}

impl<T> Recording<T> {
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            sent: Vec::new(),
        }
    }
}

impl<T: Transport> Transport for Recording<T> {
    type Error = T::Error;

    fn post(&mut self, path: &str, body: &[u8], response: &mut Vec<u8>) -> Result<u16, T::Error> {
        self.sent.push(body.to_vec());
        self.inner.post(path, body, response)
    }
}
