//! `blepay bench --link-bytes`: what the machine's (2G) link costs, counted as the carrier
//! counts it.
//!
//! A machine — the device client's own [`Engine`] on an in-memory log — talks to the real server
//! through the device client's SIM800 simulator (`blepay_device_client::sim800_sim`, driven by
//! the firmware's AT transport [`Sim800`]). For every `AT+HTTPACTION=1` the simulator opens a
//! real TCP connection to the server, writes the request a SIM800 writes (request line, `Host`,
//! `Content-Type`, `Content-Length`, `Connection: Keep-Alive`, `Accept: */*`,
//! `User-Agent: SIMCOM_MODULE`, the frame; the sources are in that module's docs) and counts every
//! byte it writes and reads on that connection. The exchanges measured: the boot heartbeat, the
//! press (one exchange: the session starts and its terms come back), the final report (settled),
//! and a heartbeat as it looks a month into uptime.
//!
//! Bytes on the wire add TCP/IP to that, by the model in [`TcpModel`]: a fresh TCP connection per
//! exchange (SIM800 `AT+HTTPACTION` opens one and the server closes it), 3-way handshake, one
//! IPv4 + TCP header per segment, data split at the MSS, one ACK per data segment, and a FIN/ACK
//! teardown from both sides.
//!
//! The last stdout line is one JSON object: `link_cycle_exchanges`, `link_cycle_wire_bytes`,
//! `link_idle_month_wire_bytes`, `link_heartbeat_secs`, the per-exchange figures, the model's
//! constants, the budgets (issue 9: a short cycle ≤ 2,000 bytes on the wire, an idle month ≤
//! 1.5 MB), and the frames-against-JSON comparison of the same messages.

use std::fmt::Write as _;

use anyhow::{Context, anyhow, bail};
use base64::Engine as _;
use blepay_core::{DeviceId, KeyVersion, SessionStatus, Units};
use blepay_device_client::at::{AtConfig, Sim800, StdTimer};
use blepay_device_client::engine::{
    Config as EngineConfig, DEFAULT_HEARTBEAT_SECS, Engine, RequestKind, Response,
};
use blepay_device_client::log::MemLog;
use blepay_device_client::sim800_sim::{self, HostPort, Sim};
use blepay_device_client::transport::{DEVICE_PATH, Transport};
use blepay_device_client::{Answer, Identity, Request, Status, machine};
use blepay_proto::DeviceKey;
use serde_json::{Value, json};

use super::answer;
use super::fleet::{Ctx, MAX_AMOUNT, PRICE, setup};
use super::report::round3;
use super::servers::Env;

/// The budgets of issue 9 (bytes on the wire, TCP/IP included).
pub const CYCLE_BUDGET_WIRE_BYTES: u64 = 2_000;
/// 1.5 MB per 30 days for an idle machine.
pub const IDLE_MONTH_BUDGET_WIRE_BYTES: u64 = 1_500_000;
/// Thirty days.
const MONTH_SECS: u64 = 30 * 86_400;
/// Units the short session dispenses.
const CYCLE_UNITS: u64 = 3;

/// The TCP/IP model for bytes on the wire (IPv4, no IP options).
///
/// - every segment carries a 20-byte IPv4 header and a 20-byte TCP header: 40 bytes;
/// - SYN and SYN-ACK carry 20 bytes of options more (MSS 4, SACK-permitted 2, timestamps 10,
///   window scale 3, one NOP 1, as Linux sends them): 60 bytes each; the timestamps option is
///   assumed not to be used after the handshake (a modem stack does not echo it);
/// - MSS 1,360 bytes: the low end of what a SIM800 connection negotiates (1,360–1,460), so a
///   message is split as early as it can be;
/// - a fresh connection per exchange: SYN, SYN-ACK, ACK; the request in ⌈len / MSS⌉ segments,
///   each ACKed by its own segment (no delayed-ACK piggybacking assumed); the answer likewise;
///   then FIN, ACK from one side and FIN, ACK from the other (4 segments).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpModel {
    pub segment_header: u64,
    pub syn_bytes: u64,
    pub mss: u64,
}

impl TcpModel {
    /// The model above.
    pub const STATED: Self = Self {
        segment_header: 40,
        syn_bytes: 60,
        mss: 1360,
    };

    fn segments(self, bytes: u64) -> u64 {
        bytes.div_ceil(self.mss.max(1))
    }

    /// Bytes on the wire, both ways, for one exchange on a fresh connection that carried `sent`
    /// bytes up and `received` bytes down.
    pub const fn handshake_and_teardown(self) -> u64 {
        // SYN + SYN-ACK + ACK, then FIN, ACK, FIN, ACK.
        2 * self.syn_bytes + self.segment_header + 4 * self.segment_header
    }

    /// Bytes on the wire, both ways, for one exchange on a fresh connection.
    pub fn wire_bytes(self, sent: u64, received: u64) -> u64 {
        let up = self.segments(sent);
        let down = self.segments(received);
        // Each data segment: its header; each one ACKed by a bare segment.
        let data = sent + received + (up + down) * self.segment_header;
        let acks = (up + down) * self.segment_header;
        self.handshake_and_teardown() + data + acks
    }

    /// Segments of one exchange.
    pub fn segments_of(self, sent: u64, received: u64) -> u64 {
        7 + 2 * (self.segments(sent) + self.segments(received))
    }
}

/// One measured exchange.
#[derive(Debug, Clone)]
struct Measured {
    name: &'static str,
    kind: RequestKind,
    /// The request frame.
    frame: u64,
    /// The answer frame.
    answer: u64,
    /// What the modem wrote on the TCP connection (head + frame), `Host` made `--link-host`.
    sent: u64,
    /// What it read (status line, headers, answer frame).
    received: u64,
    /// The same request and answer in the API's JSON mapping (zero fields written, and left out).
    json: (u64, u64),
    json_compact: (u64, u64),
    answer_body: Answer,
}

impl Measured {
    fn tcp(&self) -> u64 {
        self.sent + self.received
    }

    fn wire(&self) -> u64 {
        TcpModel::STATED.wire_bytes(self.sent, self.received)
    }

    /// The exchange with JSON bodies instead of frames: the same SIM800 head (with
    /// `application/json`) and the server's answer head with the JSON length.
    fn json_http(&self, compact: bool, host: &str) -> u64 {
        let (q, a) = if compact {
            self.json_compact
        } else {
            self.json
        };
        let q_head = sim800_sim::request_head(host, DEVICE_PATH, Some("application/json"), len(q));
        let answer_head = self.received.saturating_sub(self.answer);
        let digits = |n: u64| u64::try_from(n.to_string().len()).unwrap_or(0);
        // The answer head as served, with the JSON content type and length.
        let a_head = (answer_head + digits(a) + "application/json".len() as u64)
            .saturating_sub(digits(self.answer) + "application/octet-stream".len() as u64);
        q_head.len() as u64 + q + a_head + a
    }
}

fn len(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// The measured machine: the engine, the firmware's AT transport, the simulated modem.
struct LinkMachine {
    engine: Engine<MemLog>,
    modem: Sim800<HostPort, StdTimer>,
    sim: Sim,
    /// `Host` as the modem sends it (`127.0.0.1:PORT`).
    actual_host: String,
    link_host: String,
    /// The machine's local clock; moved on by hand for the month-end heartbeat.
    now: u64,
}

/// Drop zero-valued fields (`""`, `"0"`, `0`, `false`, `[]`, `*_UNSPECIFIED`).
pub(super) fn compact(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| {
                    !matches!(v, Value::Bool(false))
                        && v.as_str().is_none_or(|s| {
                            !s.is_empty() && s != "0" && !s.ends_with("UNSPECIFIED")
                        })
                        && v.as_i64() != Some(0)
                        && v.as_array().is_none_or(|a| !a.is_empty())
                })
                .map(|(k, v)| (k.clone(), compact(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(compact).collect()),
        other => other.clone(),
    }
}

fn json_sizes(v: &Value) -> anyhow::Result<(u64, u64)> {
    Ok((
        u64::try_from(serde_json::to_vec(v)?.len())?,
        u64::try_from(serde_json::to_vec(&compact(v))?.len())?,
    ))
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

impl LinkMachine {
    /// One exchange through the modem: what the engine sends now (it must be `expected`), its
    /// answer handed back to the engine; a refusal is an error. `request` is what the frame
    /// carries (for the JSON comparison).
    fn exchange(
        &mut self,
        name: &'static str,
        expected: RequestKind,
        request: &Request,
    ) -> anyhow::Result<Measured> {
        if self.engine.heartbeat_due(self.now) {
            // What the firmware's driver does before a heartbeat: AT+CSQ, AT+SAPBR=2,1.
            let status = self.modem.link_status();
            self.engine.on_link_status(status);
        }
        let t = self
            .engine
            .transmit(self.now)?
            .ok_or_else(|| anyhow!("{name}: the machine has nothing to send"))?;
        if t.kind != expected {
            bail!("{name}: the machine sent a {} request", t.kind.as_str());
        }
        self.sim.reset_link_bytes();
        let mut body = Vec::new();
        let status = match self.modem.post(DEVICE_PATH, &t.frame, &mut body) {
            Ok(s) => s,
            Err(e) => {
                self.engine.on_transport_error(self.now);
                bail!("{name}: the modem could not carry it: {e:?}");
            }
        };
        let bytes = self.sim.link_bytes();
        if bytes.exchanges.len() != 1 {
            bail!(
                "{name}: {} TCP connections for one exchange (a retry?)",
                bytes.exchanges.len()
            );
        }
        let answer = match self.engine.on_response(self.now, status, &body)? {
            Response::Answered { answer, .. } => answer,
            Response::NotAuthentic { status, error } => {
                bail!("{name}: the answer ({status}) does not authenticate: {error}")
            }
            Response::Unexpected => bail!("{name}: an answer with no request in flight"),
        };
        if let Some(code) = answer::refusal(&answer) {
            bail!("{name} refused: {code}");
        }
        let host_delta =
            i64::try_from(self.link_host.len())? - i64::try_from(self.actual_host.len())?;
        let sent = u64::try_from(i64::try_from(bytes.sent())? + host_delta)?;
        let seq = t.seq;
        let mut req_json = serde_json::to_value(request.to_pb())?;
        if let Value::Object(m) = &mut req_json {
            let id = self.engine.identity();
            m.insert("deviceId".into(), json!(id.device_id.to_string()));
            m.insert("keyVersion".into(), json!(id.key_version.get()));
            m.insert("seq".into(), json!(seq));
            m.insert("tag".into(), json!(b64(&[0u8; 16])));
        }
        let resp_json = answer::as_json(&answer, seq, &b64(&[0u8; 16]))?;
        let (rj, rjc) = json_sizes(&req_json)?;
        let (aj, ajc) = json_sizes(&resp_json)?;
        Ok(Measured {
            name,
            kind: t.kind,
            frame: u64::try_from(t.frame.len())?,
            answer: u64::try_from(body.len())?,
            sent,
            received: bytes.received(),
            json: (rj, aj),
            json_compact: (rjc, ajc),
            answer_body: answer,
        })
    }
}

/// The measured machine, registered on the server, its engine booted and its modem up.
async fn link_machine(ctx: &Ctx, env: &Env, link_host: &str) -> anyhow::Result<LinkMachine> {
    let id = (0xb1e1_u64 << 48) | (u64::from(rand::random::<u32>()) << 8);
    let reg = ctx
        .ops_post(
            "/v1/ops/devices",
            &json!({
                "deviceId": format!("{id:016x}"), "name": "Link-bytes dispenser",
                "pricePerUnit": PRICE, "unitName": "litre", "currency": "EUR",
            }),
        )
        .await?;
    let key = reg["deviceKey"]
        .as_str()
        .ok_or_else(|| anyhow!("no deviceKey in {reg}"))?;
    let identity = Identity {
        device_id: DeviceId::from_bytes(id.to_be_bytes()),
        key_version: KeyVersion::new(u8::try_from(reg["keyVersion"].as_u64().unwrap_or(0))?)
            .map_err(|e| anyhow!(e))?,
        key: DeviceKey::parse_hex(key).map_err(|e| anyhow!(e))?,
    };
    let now = env.app.now();
    // The firmware's defaults (heartbeat every 30 min), no progress report in a short session.
    let config = EngineConfig {
        report_every_secs: 0,
        report_every_units: 0,
        ..EngineConfig::default()
    };
    let engine = Engine::open(identity, config, MemLog::new(), now)?;
    let (sim, port) = Sim::start();
    let actual_host = env.blepay_addr.to_string();
    let modem = Sim800::new(
        port,
        StdTimer::default(),
        AtConfig::new("internet", &format!("http://{actual_host}")),
    );
    Ok(LinkMachine {
        engine,
        modem,
        sim,
        actual_host,
        link_host: link_host.to_owned(),
        now,
    })
}

/// A blocking step of the measured machine (the modem's transport blocks), off the async loop.
async fn blocking<T: Send + 'static>(
    m: LinkMachine,
    f: impl FnOnce(&mut LinkMachine) -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<(LinkMachine, T)> {
    tokio::task::spawn_blocking(move || {
        let mut m = m;
        let r = f(&mut m);
        r.map(|t| (m, t))
    })
    .await
    .context("the machine thread failed")?
}

pub(super) async fn run(env: &Env, host: &str) -> anyhow::Result<()> {
    let ctx = setup(env, 1, 1).await?;
    let m = link_machine(&ctx, env, host).await?;

    // Boot: the engine's first heartbeat (it also synchronises the clock the advert needs).
    let (m, boot) = blocking(m, |m| {
        let request = blepay_device_client::heartbeat(m.engine.telemetry(m.now));
        m.exchange("heartbeat (boot)", RequestKind::Heartbeat, &request)
    })
    .await?;

    // The phone pays with the machine's advert.
    let advert = b64(&m.engine.advert(env.app.now()).payload);
    let r = ctx
        .http
        .post(format!("{}/v1/pay", ctx.base))
        .bearer_auth(ctx.token(0)?)
        .json(&json!({
            "advert": advert, "maxAmount": MAX_AMOUNT,
            "idempotencyKey": format!("link-bytes-{}", ctx.run),
        }))
        .send()
        .await?;
    let paid: Value = serde_json::from_slice(&super::fleet::expect_ok(r).await?)?;
    let session = paid["sessionId"]
        .as_str()
        .ok_or_else(|| anyhow!("pay answer without sessionId: {paid}"))?
        .to_owned();

    // The start button: one exchange starts the session; then 3 units and the final report.
    let (m, cycle) = blocking(m, move |m| {
        m.engine.on_start_button(m.now)?;
        let press = m.exchange("press", RequestKind::Press, &Request::Press)?;
        let granted = press.answer_body.body.usable_grants().next().cloned();
        let grant = granted.ok_or_else(|| anyhow!("the press answer carries no session"))?;
        if grant.session.to_string() != session {
            bail!(
                "the press started {}, not the paid {session}",
                grant.session
            );
        }
        m.engine.drain_actions().for_each(drop);
        m.engine.on_meter(m.now, CYCLE_UNITS)?;
        m.engine.on_dispense_end(m.now)?;
        let report = blepay_device_client::report(grant.session, Units::new(CYCLE_UNITS), true);
        let last = m.exchange("final report", RequestKind::FinalReport, &report)?;
        match last.answer_body.body {
            machine::Answer::Session {
                status: Status::Known(SessionStatus::Settled),
                amount,
            } if amount == i64::try_from(CYCLE_UNITS)? * PRICE => {}
            ref other => bail!("the final report was answered {other:?}, not settled"),
        }
        m.engine.drain_actions().for_each(drop);
        Ok(vec![press, last])
    })
    .await?;

    // A heartbeat as it looks at the end of a month of uptime (bigger varints in its telemetry).
    let (_m, month_end) = blocking(m, |m| {
        m.now += MONTH_SECS - DEFAULT_HEARTBEAT_SECS;
        let request = blepay_device_client::heartbeat(m.engine.telemetry(m.now));
        m.exchange("heartbeat (a month up)", RequestKind::Heartbeat, &request)
    })
    .await?;

    let audit = ctx.app.store().audit().await?;
    if !audit.reconciles() {
        bail!("the ledger does not reconcile after the link-bytes cycle: {audit:?}");
    }
    let figures = Figures {
        host: host.to_owned(),
        cycle,
        heartbeats: vec![boot, month_end],
    };
    print!("{}", figures.table());
    let summary = figures.summary()?;
    println!("{summary}");
    if summary["link_budgets_met"] != json!(true) {
        bail!("the link budgets are not met: {summary}");
    }
    Ok(())
}

struct Figures {
    host: String,
    cycle: Vec<Measured>,
    heartbeats: Vec<Measured>,
}

impl Figures {
    fn heartbeat(&self) -> Option<&Measured> {
        self.heartbeats.iter().max_by_key(|m| m.wire())
    }

    fn table(&self) -> String {
        let mut out = String::new();
        let model = TcpModel::STATED;
        let _ = writeln!(
            out,
            "Bytes on the machine's link, counted on the TCP connection of each SIM800 AT+HTTPACTION \
             (Host: {}), and on the wire with TCP/IP\n",
            self.host
        );
        let _ = writeln!(
            out,
            "| exchange | request frame | answer frame | TCP up | TCP down | TCP both | on the wire (TCP/IP) | segments | as JSON + HTTP |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for m in self.cycle.iter().chain(&self.heartbeats) {
            let _ = writeln!(
                out,
                "| {} ({}) | {} | {} | {} | {} | {} | {} | {} | {} |",
                m.name,
                m.kind.as_str(),
                m.frame,
                m.answer,
                m.sent,
                m.received,
                m.tcp(),
                m.wire(),
                model.segments_of(m.sent, m.received),
                m.json_http(false, &self.host),
            );
        }
        let _ = writeln!(
            out,
            "\nTCP/IP model: a fresh connection per exchange; {} bytes of IPv4+TCP header per segment, SYN and SYN-ACK {} bytes \
             (MSS, SACK-permitted, timestamps, window scale, NOP options); MSS {}; one ACK per data segment; FIN/ACK from both \
             sides: {} bytes of handshake and teardown per exchange.",
            model.segment_header,
            model.syn_bytes,
            model.mss,
            model.handshake_and_teardown()
        );
        out
    }

    fn summary(&self) -> anyhow::Result<Value> {
        let model = TcpModel::STATED;
        let heartbeat = self
            .heartbeat()
            .ok_or_else(|| anyhow!("no heartbeat measured"))?;
        let cycle_tcp: u64 = self.cycle.iter().map(Measured::tcp).sum();
        let cycle_wire: u64 = self.cycle.iter().map(Measured::wire).sum();
        let heartbeats_per_month = MONTH_SECS / DEFAULT_HEARTBEAT_SECS;
        let idle_month = heartbeats_per_month * heartbeat.wire();
        let binary_http = cycle_tcp;
        let json_http: u64 = self
            .cycle
            .iter()
            .map(|m| m.json_http(false, &self.host))
            .sum();
        let compact_http: u64 = self
            .cycle
            .iter()
            .map(|m| m.json_http(true, &self.host))
            .sum();
        #[allow(clippy::cast_precision_loss)]
        let ratio = json_http as f64 / binary_http.max(1) as f64;
        let mut v = json!({
            "link_host": self.host,
            "link_cycle_exchanges": self.cycle.len(),
            "link_cycle_tcp_bytes": cycle_tcp,
            "link_cycle_wire_bytes": cycle_wire,
            "link_heartbeat_secs": DEFAULT_HEARTBEAT_SECS,
            "link_heartbeats_per_month": heartbeats_per_month,
            "link_idle_month_wire_bytes": idle_month,
            "link_budget_cycle_wire_bytes": CYCLE_BUDGET_WIRE_BYTES,
            "link_budget_idle_month_wire_bytes": IDLE_MONTH_BUDGET_WIRE_BYTES,
            "link_budgets_met": self.cycle.len() <= 2
                && cycle_wire <= CYCLE_BUDGET_WIRE_BYTES
                && idle_month <= IDLE_MONTH_BUDGET_WIRE_BYTES,
            "link_tcp_segment_header_bytes": model.segment_header,
            "link_tcp_syn_bytes": model.syn_bytes,
            "link_tcp_mss": model.mss,
            "link_tcp_handshake_teardown_bytes": model.handshake_and_teardown(),
            "link_cycle_bytes_binary_http": binary_http,
            "link_cycle_bytes_json_http": json_http,
            "link_cycle_bytes_compact_json_http": compact_http,
            "link_json_over_binary": round3(ratio),
        });
        if let Value::Object(o) = &mut v {
            let named = [
                ("press", self.cycle.first()),
                ("final_report", self.cycle.get(1)),
                ("heartbeat", Some(heartbeat)),
            ];
            for (name, m) in named {
                let Some(m) = m else { continue };
                o.insert(format!("link_{name}_frame_bytes"), json!(m.frame));
                o.insert(format!("link_{name}_answer_frame_bytes"), json!(m.answer));
                o.insert(format!("link_{name}_tcp_sent"), json!(m.sent));
                o.insert(format!("link_{name}_tcp_received"), json!(m.received));
                o.insert(format!("link_{name}_wire_bytes"), json!(m.wire()));
            }
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_exchange_costs_its_bytes_plus_480_on_the_wire() {
        let m = TcpModel::STATED;
        // SYN 60 + SYN-ACK 60 + ACK 40; request 40 + 200, its ACK 40; answer 40 + 100, its ACK
        // 40; FIN, ACK, FIN, ACK 160.
        assert_eq!(m.handshake_and_teardown(), 320);
        assert_eq!(m.wire_bytes(200, 100), 300 + 480);
        assert_eq!(m.segments_of(200, 100), 11);
    }

    #[test]
    fn a_message_over_the_mss_takes_two_segments_and_two_acks() {
        let m = TcpModel::STATED;
        assert_eq!(m.wire_bytes(1361, 100), m.wire_bytes(1360, 100) + 1 + 80);
    }

    #[test]
    fn compact_json_drops_zero_valued_fields_only() {
        let v = json!({"a": "", "b": "0", "c": 0, "d": false, "e": [], "f": "SESSION_STATUS_UNSPECIFIED",
                       "g": "x", "h": [{"i": 0, "j": 1}], "k": true});
        assert_eq!(compact(&v), json!({"g": "x", "h": [{"j": 1}], "k": true}));
    }
}
