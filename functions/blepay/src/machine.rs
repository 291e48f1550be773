//! A scriptable simulated machine: `blepay device advert|poll|start|report`.
//!
//! Its state directory keeps what a real machine keeps in flash: the next sequence number
//! (persisted *before* each send, so it never goes back), the use counter (bumped after every
//! session) and the offset between its clock and the server's (from every answer).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use blepay_core::{DeviceId, KeyVersion, SessionId, UseCounter};
use blepay_device_client::grant::Grant;
use blepay_device_client::{Answer, Identity, Pending, Request, Status, machine};
use blepay_proto::{AdvertFlags, DEFAULT_COMPANY_ID, DeviceKey};
use serde::{Deserialize, Serialize};

/// What the machine persists between runs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MachineState {
    pub next_seq: u32,
    pub use_counter: u16,
    /// Server time minus local time, seconds.
    pub clock_offset: i64,
    /// True once an answer has set the clock.
    pub clock_synced: bool,
}

/// A machine: identity, server and state directory.
#[derive(Debug)]
pub struct Machine {
    pub identity: Identity,
    pub server: String,
    pub state_dir: PathBuf,
    http: reqwest::Client,
}

fn local_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Machine {
    /// # Errors
    /// On a malformed id or key.
    pub fn new(
        server: &str,
        device_id: &str,
        device_key: &str,
        key_version: u8,
        state_dir: &Path,
    ) -> anyhow::Result<Self> {
        let identity = Identity {
            device_id: DeviceId::parse(device_id).map_err(|e| anyhow!("--device-id: {e}"))?,
            key_version: KeyVersion::new(key_version).map_err(|e| anyhow!("--key-version: {e}"))?,
            key: DeviceKey::parse_hex(device_key).map_err(|e| anyhow!("--device-key: {e}"))?,
        };
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("creating {}", state_dir.display()))?;
        Ok(Self {
            identity,
            server: server.trim_end_matches('/').to_owned(),
            state_dir: state_dir.to_owned(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
        })
    }

    fn state_path(&self) -> PathBuf {
        self.state_dir.join("machine-state.json")
    }

    /// # Errors
    /// When the state file exists but cannot be read.
    pub fn load(&self) -> anyhow::Result<MachineState> {
        match std::fs::read(self.state_path()) {
            Ok(b) => serde_json::from_slice(&b).context("machine state file is corrupt"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(MachineState::default()),
            Err(e) => Err(e.into()),
        }
    }

    /// Write the state durably (temp file, fsync, rename).
    ///
    /// # Errors
    /// On IO failure.
    pub fn save(&self, s: &MachineState) -> anyhow::Result<()> {
        use std::io::Write;
        let tmp = self.state_dir.join("machine-state.json.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(s)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, self.state_path())?;
        Ok(())
    }

    /// The current advert, on the server-corrected clock.
    ///
    /// # Errors
    /// When the state cannot be read.
    pub fn advert(&self) -> anyhow::Result<serde_json::Value> {
        let s = self.load()?;
        let now = local_now().saturating_add_signed(s.clock_offset);
        let flags = if s.clock_synced {
            AdvertFlags::NONE
        } else {
            AdvertFlags::CLOCK_UNSYNCED
        };
        let advert = self
            .identity
            .advert(now, UseCounter::new(s.use_counter), flags);
        Ok(serde_json::json!({
            "advert": base64::engine::general_purpose::STANDARD.encode(advert.encode()),
            "advertisingData": hex::encode(advert.advertising_data(DEFAULT_COMPANY_ID)),
            "slot": advert.slot.get(),
            "useCounter": s.use_counter,
        }))
    }

    /// Send one request: take a sequence number (persisted first), send, retry the same bytes
    /// on transport failure, verify the answer and sync the clock.
    ///
    /// # Errors
    /// On transport failure after retries, or an answer that does not authenticate.
    pub async fn exchange(&self, body: &Request) -> anyhow::Result<(u16, Answer)> {
        let mut state = self.load()?;
        let seq = state.next_seq.max(1);
        state.next_seq = seq
            .checked_add(1)
            .ok_or_else(|| anyhow!("sequence numbers exhausted"))?;
        self.save(&state)?;
        let pending = self.identity.request(seq, body);
        let (status, bytes) = self.send(&pending).await?;
        let answer = match self.identity.open(&pending, &bytes) {
            Ok(a) => a,
            Err(e) => bail!(
                "server answered {status} without an authentic frame ({e}): {}",
                String::from_utf8_lossy(&bytes)
            ),
        };
        state.clock_offset = i64::try_from(answer.server_time).unwrap_or(i64::MAX)
            - i64::try_from(local_now()).unwrap_or(0);
        state.clock_synced = true;
        self.save(&state)?;
        Ok((status, answer))
    }

    async fn send(&self, pending: &Pending) -> anyhow::Result<(u16, Vec<u8>)> {
        let url = format!("{}/v1/device", self.server);
        let mut last_err = None;
        for attempt in 0..5u32 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            }
            let r = self
                .http
                .post(&url)
                .header("content-type", "application/octet-stream")
                .body(pending.frame.clone())
                .send()
                .await;
            match r {
                Ok(r) => {
                    let status = r.status().as_u16();
                    match r.bytes().await {
                        Ok(b) => return Ok((status, b.to_vec())),
                        Err(e) => last_err = Some(anyhow!(e)),
                    }
                }
                Err(e) => last_err = Some(anyhow!(e)),
            }
        }
        Err(last_err
            .unwrap_or_else(|| anyhow!("no attempt made"))
            .context(format!("POST {url}")))
    }

    /// Poll for grants.
    ///
    /// # Errors
    /// See [`Machine::exchange`]; or when the server refuses.
    pub async fn poll(&self) -> anyhow::Result<Vec<Grant>> {
        let (_, a) = self.exchange(&blepay_device_client::poll()).await?;
        refused(&a)?;
        Ok(a.body.usable_grants().cloned().collect())
    }

    /// The start button was pressed for `session`.
    ///
    /// # Errors
    /// See [`Machine::exchange`]; or when the server refuses.
    pub async fn start(&self, session: SessionId) -> anyhow::Result<SessionAnswer> {
        let (_, a) = self.exchange(&blepay_device_client::start(session)).await?;
        session_answer(&a)
    }

    /// Report units. A final report bumps the use counter *before* it is sent (persisted first,
    /// like the firmware engine's outbox): a machine that loses power after the server settled
    /// but before it saved the bump would otherwise advertise a spent advert (`ADVERT_USED`)
    /// until the slot rotates.
    ///
    /// # Errors
    /// See [`Machine::exchange`]; or when the server refuses.
    pub async fn report(
        &self,
        session: SessionId,
        units: u64,
        last: bool,
    ) -> anyhow::Result<SessionAnswer> {
        if last {
            let mut s = self.load()?;
            s.use_counter = s.use_counter.wrapping_add(1);
            self.save(&s)?;
        }
        let (_, a) = self
            .exchange(&blepay_device_client::report(
                session,
                blepay_core::Units::new(units),
                last,
            ))
            .await?;
        session_answer(&a)
    }
}

/// What a start or report answer says: the session's status and the amount captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionAnswer {
    pub status: Status,
    pub amount: i64,
}

fn refused(a: &Answer) -> anyhow::Result<()> {
    match a.refusal() {
        Some(r) => bail!("server refused: {}: {}", r.code.as_str(), r.message),
        None => Ok(()),
    }
}

fn session_answer(a: &Answer) -> anyhow::Result<SessionAnswer> {
    refused(a)?;
    match a.body {
        machine::Answer::Session { status, amount } => Ok(SessionAnswer { status, amount }),
        machine::Answer::Grants(_) | machine::Answer::Refused(_) => Ok(SessionAnswer {
            status: Status::Unspecified,
            amount: 0,
        }),
    }
}

/// A grant as one JSON line.
pub fn grant_json(g: &Grant) -> serde_json::Value {
    serde_json::json!({
        "sessionId": g.session.to_string(),
        "holdAmount": g.hold.minor(),
        "pricePerUnit": g.price_per_unit.minor(),
        "expiresAt": g.expires_at,
        "useCounter": g.use_counter.get(),
    })
}

/// A start/report answer as JSON.
pub fn response_json(r: &SessionAnswer) -> serde_json::Value {
    let status = match r.status {
        Status::Unknown(_) => "SESSION_STATUS_UNSPECIFIED",
        s => s.as_str(),
    };
    serde_json::json!({ "status": status, "amount": r.amount })
}
