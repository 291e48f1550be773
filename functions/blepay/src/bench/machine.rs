//! One simulated machine of the bench fleet: the device client's own [`Engine`] on an in-memory
//! [`MemLog`], so the bench keeps no copy of the firmware's rules (sequence numbers, grants,
//! the use counter, the advert).

use std::sync::{Mutex, MutexGuard};

use anyhow::{anyhow, bail};
use base64::Engine as _;
use blepay_core::SessionId;
use blepay_device_client::engine::{Config as EngineConfig, Engine, Phase, Response, Transmit};
use blepay_device_client::log::MemLog;
use blepay_device_client::{Answer, Identity};

use super::answer;

/// How the bench's machines run the device client's engine: the boot heartbeat is their one
/// idle exchange (the next is 30 minutes away, beyond any run) and no progress reports (a cycle
/// is pay, press, final report).
fn engine_config() -> EngineConfig {
    EngineConfig {
        report_every_units: 0,
        report_every_secs: 0,
        no_flow_timeout_secs: 0,
        ..EngineConfig::default()
    }
}

/// A simulated machine: the device client's [`Engine`] on an in-memory log — it numbers and
/// seals the requests, opens the answers, takes the grants, keeps the use counter and builds the
/// advert. One client at a time drives a machine; the lock is never held across an exchange.
pub(super) struct Machine {
    engine: Mutex<Engine<MemLog>>,
}

impl Machine {
    pub(super) fn new(identity: Identity, now: u64) -> anyhow::Result<Self> {
        Ok(Self {
            engine: Mutex::new(Engine::open(identity, engine_config(), MemLog::new(), now)?),
        })
    }

    fn engine(&self) -> anyhow::Result<MutexGuard<'_, Engine<MemLog>>> {
        self.engine
            .lock()
            .map_err(|_| anyhow!("a machine's engine lock is poisoned"))
    }

    pub(super) fn advert_b64(&self, now: u64) -> anyhow::Result<String> {
        Ok(base64::engine::general_purpose::STANDARD.encode(self.advert_bytes(now)?))
    }

    pub(super) fn advert_bytes(&self, now: u64) -> anyhow::Result<[u8; 24]> {
        Ok(self.engine()?.advert(now).payload)
    }

    /// The request the engine sends now.
    pub(super) fn transmit(&self, now: u64) -> anyhow::Result<Transmit> {
        let t = self
            .engine()?
            .transmit(now)?
            .ok_or_else(|| anyhow!("the machine has nothing to send"))?;
        Ok(t)
    }

    /// The engine's verdict on the answer to what it sent; a refusal is an error.
    pub(super) fn on_answer(&self, now: u64, status: u16, body: &[u8]) -> anyhow::Result<Answer> {
        let mut engine = self.engine()?;
        let response = engine.on_response(now, status, body);
        engine.drain_actions().for_each(drop);
        match response? {
            Response::Answered { answer, .. } => match answer::refusal(&answer) {
                Some(code) => bail!("machine request refused: {code}"),
                None => Ok(answer),
            },
            Response::NotAuthentic { status, error } => {
                bail!("machine answer ({status}) does not authenticate: {error}")
            }
            Response::Unexpected => bail!("an answer with no request in flight"),
        }
    }

    pub(super) fn on_transport_error(&self, now: u64) -> anyhow::Result<()> {
        self.engine()?.on_transport_error(now);
        Ok(())
    }

    /// The session the machine is dispensing for (started by its press).
    pub(super) fn dispensing(&self) -> anyhow::Result<Option<SessionId>> {
        Ok(match self.engine()?.phase() {
            Phase::Dispensing { grant, .. } => Some(grant.session),
            _ => None,
        })
    }

    /// The start button (the press request is queued).
    pub(super) fn press_start(&self, now: u64) -> anyhow::Result<()> {
        self.engine()?.on_start_button(now)?;
        Ok(())
    }

    /// The meter counts `units`, then dispensing ends (the final report is queued).
    pub(super) fn dispense(&self, now: u64, units: u64) -> anyhow::Result<()> {
        let mut engine = self.engine()?;
        engine.drain_actions().for_each(drop);
        engine.on_meter(now, units)?;
        engine.on_dispense_end(now)?;
        engine.drain_actions().for_each(drop);
        Ok(())
    }
}
