//! A scriptable simulated machine: `blepay device advert|press|report|heartbeat` (and the legacy
//! `poll|start`, which the server still answers but the firmware no longer sends).
//!
//! It is the device client run one request per command, not a copy of its rules: the state
//! directory holds the device client's own outbox log (`<state-dir>/outbox.log`, a [`FileLog`],
//! the very file `blepay device run` keeps), so what a real machine keeps in flash is kept by the
//! firmware's code ([`Outbox`], [`Clock`]):
//! - the next sequence number is reserved in the log *before* a request is sealed
//!   ([`Outbox::take_seq`]), so it never goes back;
//! - a press and a report are queued in the log before they are sent and dropped when answered
//!   (a press left unanswered by an earlier command is the next press's answer); a final report
//!   carries the bumped use counter in that same record, so a machine that loses power after the
//!   server settled still advertises a fresh advert;
//! - a request a previous command could not deliver is sent again, with the same bytes, before
//!   any new one (request N+1 only after N was answered);
//! - the clock offset comes from every answer ([`Clock::sync`]) and is persisted in the log.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use blepay_core::{DeviceId, KeyVersion, SessionId, Telemetry, Units};
use blepay_device_client::clock::Clock;
use blepay_device_client::file_log::FileLog;
use blepay_device_client::grant::Grant;
use blepay_device_client::journal::Op;
use blepay_device_client::outbox::Outbox;
use blepay_device_client::{Answer, Identity, Pending, Request, Status, machine};
use blepay_proto::{AdvertFlags, DEFAULT_COMPANY_ID, DeviceKey};

/// The outbox log inside the state directory (shared with `blepay device run`).
pub const OUTBOX_FILE: &str = crate::device_run::OUTBOX_FILE;

/// One number per reservation: a command uses one or two, and the next command resumes right
/// after them.
const SEQ_BLOCK: u32 = 1;

/// Rewrite the log as a snapshot once it grows beyond this.
const COMPACT_AFTER_BYTES: usize = 4096;

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

    /// The outbox, recovered from the state directory.
    fn outbox(&self) -> anyhow::Result<Outbox<FileLog>> {
        let log = FileLog::open(self.state_dir.join(OUTBOX_FILE))?;
        let (outbox, _) = Outbox::open(log, SEQ_BLOCK)?;
        Ok(outbox)
    }

    /// The sequence number the next request will carry.
    ///
    /// # Errors
    /// When the state cannot be read.
    pub fn next_seq(&self) -> anyhow::Result<u32> {
        Ok(self.outbox()?.peek_seq())
    }

    /// Requests waiting in the outbox for delivery (the heartbeat's `outbox_depth`).
    ///
    /// # Errors
    /// When the state cannot be read.
    pub fn outbox_depth(&self) -> anyhow::Result<u32> {
        Ok(u32::try_from(self.outbox()?.len()).unwrap_or(u32::MAX))
    }

    /// The current advert, on the server-corrected clock.
    ///
    /// # Errors
    /// When the state cannot be read.
    pub fn advert(&self) -> anyhow::Result<serde_json::Value> {
        self.advert_with(AdvertFlags::NONE)
    }

    /// The current advert with `extra` flags (link down, fault) on top of what the state says.
    ///
    /// # Errors
    /// When the state cannot be read.
    pub fn advert_with(&self, extra: AdvertFlags) -> anyhow::Result<serde_json::Value> {
        let outbox = self.outbox()?;
        let durable = outbox.durable();
        let now = Clock::restore(durable.clock_offset).server_now(local_now());
        let synced = if durable.clock_synced {
            AdvertFlags::NONE
        } else {
            AdvertFlags::CLOCK_UNSYNCED
        };
        let flags = AdvertFlags::from_bits(synced.bits() | extra.bits())
            .map_err(|e| anyhow!("advert flags: {e}"))?;
        let advert = self.identity.advert(now, durable.use_counter, flags);
        Ok(serde_json::json!({
            "advert": base64::engine::general_purpose::STANDARD.encode(advert.encode()),
            "advertisingData": hex::encode(advert.advertising_data(DEFAULT_COMPANY_ID)),
            "slot": advert.slot.get(),
            "useCounter": durable.use_counter.get(),
            "linkDown": flags.contains(AdvertFlags::LINK_DOWN),
            "fault": flags.contains(AdvertFlags::FAULT),
        }))
    }

    /// Send one request: first whatever an earlier command left unanswered in the outbox, then
    /// this one with a sequence number reserved in the log first (a report is queued in the log
    /// before it is sent). Transport failures are retried with the same bytes; the answer is
    /// verified and sets the clock.
    ///
    /// # Errors
    /// On transport failure after retries, or an answer that does not authenticate.
    pub async fn exchange(&self, request: &Request) -> anyhow::Result<(u16, Answer)> {
        let mut outbox = self.outbox()?;
        while let Some(entry) = outbox.front().cloned() {
            let answered = self.deliver(&mut outbox, &entry.pending(), true).await?;
            // A press an earlier command could not deliver is this press: its answer (the
            // session it started, or the refusal) is the answer, and no second press is sent.
            let press_again = matches!(entry.op, Op::Press) && matches!(request, Request::Press);
            if press_again && outbox.is_empty() {
                return Ok(answered);
            }
        }
        let seq = outbox.take_seq()?;
        let pending = self.identity.request(seq, request);
        let queued = match request {
            &Request::Report {
                session,
                units,
                last,
            } => {
                let current = outbox.durable().use_counter;
                let use_counter = if last { current.next() } else { current };
                let op = Op::Report {
                    session,
                    units,
                    last,
                    use_counter,
                };
                outbox.enqueue(seq, op, pending.frame.clone())?;
                true
            }
            // A press is queued like the firmware queues it: a command that fails before its
            // answer leaves it in the log, and the next command sends the same bytes first (the
            // server answers a retry from its saved answer: at most one session starts).
            Request::Press => {
                outbox.enqueue(seq, Op::Press, pending.frame.clone())?;
                true
            }
            Request::Heartbeat(_) | Request::Poll | Request::Start { .. } => false,
        };
        let answered = self.deliver(&mut outbox, &pending, queued).await?;
        outbox.compact_if_over(COMPACT_AFTER_BYTES)?;
        Ok(answered)
    }

    /// Send `pending` until the server answers, open the answer, sync the clock, and acknowledge
    /// it in the outbox when it was `queued` there.
    async fn deliver(
        &self,
        outbox: &mut Outbox<FileLog>,
        pending: &Pending,
        queued: bool,
    ) -> anyhow::Result<(u16, Answer)> {
        let sent_at = local_now();
        let (status, bytes) = self.send(pending).await?;
        let answer = match self.identity.open(pending, &bytes) {
            Ok(a) => a,
            Err(e) => bail!(
                "server answered {status} without an authentic frame ({e}): {}",
                String::from_utf8_lossy(&bytes)
            ),
        };
        let mut clock = Clock::restore(outbox.durable().clock_offset);
        clock.sync(answer.server_time, sent_at, local_now());
        outbox.save_clock(clock.offset(), true)?;
        if queued {
            outbox.ack(pending.seq, answer.refusal().is_some())?;
        }
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

    /// The start button: one exchange that starts the session waiting on this machine and
    /// brings its terms (the valve may open on this answer alone).
    ///
    /// # Errors
    /// See [`Machine::exchange`]; or when the server refuses (`NO_SESSION_WAITING`,
    /// `SESSION_EXPIRED`, ...): the error names the code.
    pub async fn press(&self) -> anyhow::Result<Grant> {
        let (_, a) = self.exchange(&Request::Press).await?;
        refused(&a)?;
        match a.body {
            machine::Answer::Started(Ok(grant)) => Ok(grant),
            machine::Answer::Started(Err(e)) => bail!("the press answer's grant is unusable: {e}"),
            other => bail!("a press answered with {other:?}"),
        }
    }

    /// The press as one exchange, whatever the server answers: (HTTP status, answer).
    ///
    /// # Errors
    /// See [`Machine::exchange`].
    pub async fn press_answer(&self) -> anyhow::Result<(u16, Answer)> {
        self.exchange(&Request::Press).await
    }

    /// The idle machine's heartbeat, with its telemetry.
    ///
    /// # Errors
    /// See [`Machine::exchange`]; or when the server refuses.
    pub async fn heartbeat(&self, telemetry: Telemetry) -> anyhow::Result<()> {
        let (_, a) = self.exchange(&Request::Heartbeat(telemetry)).await?;
        refused(&a)?;
        Ok(())
    }

    /// Legacy: poll for grants (the firmware no longer polls; the server still answers).
    ///
    /// # Errors
    /// See [`Machine::exchange`]; or when the server refuses.
    pub async fn poll(&self) -> anyhow::Result<Vec<Grant>> {
        let (_, a) = self.exchange(&blepay_device_client::poll()).await?;
        refused(&a)?;
        Ok(a.body.usable_grants().cloned().collect())
    }

    /// Legacy: the start button was pressed for `session` (learnt by polling).
    ///
    /// # Errors
    /// See [`Machine::exchange`]; or when the server refuses.
    pub async fn start(&self, session: SessionId) -> anyhow::Result<SessionAnswer> {
        let (_, a) = self.exchange(&blepay_device_client::start(session)).await?;
        session_answer(&a)
    }

    /// Report units. A final report bumps the use counter in the record that queues it, before
    /// it is sent (the firmware engine's rule): a machine that loses power after the server
    /// settled but before it saved the bump would otherwise advertise a spent advert
    /// (`ADVERT_USED`) until the slot rotates.
    ///
    /// # Errors
    /// See [`Machine::exchange`]; or when the server refuses.
    pub async fn report(
        &self,
        session: SessionId,
        units: u64,
        last: bool,
    ) -> anyhow::Result<SessionAnswer> {
        let (_, a) = self
            .exchange(&blepay_device_client::report(
                session,
                Units::new(units),
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
        machine::Answer::Grants(_)
        | machine::Answer::Refused(_)
        | machine::Answer::Started(_)
        | machine::Answer::Ack => Ok(SessionAnswer {
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
