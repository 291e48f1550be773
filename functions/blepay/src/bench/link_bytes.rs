//! `blepay bench --link-bytes`: what one payment cycle costs on the machine's (2G) link — the
//! exact frames the device client builds (`Identity::request` with `blepay_device_client::{poll,
//! start, report}`) for a real poll, start and final report, with HTTP/1.1 framing, against the
//! same messages written as JSON.

use std::fmt::Write as _;
use std::net::SocketAddr;

use anyhow::{anyhow, bail};
use base64::Engine;
use blepay_device_client::{Answer, Identity, Request};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::answer;
use super::fleet::{Transport, setup};
use super::report::round3;
use super::servers::Env;

/// The minimal HTTP/1.1 request framing around a body: request line, Host, Content-Type,
/// Content-Length, blank line.
pub fn request_head(path: &str, host: &str, content_type: &str, len: usize) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\n\r\n"
    )
}

/// The minimal HTTP/1.1 response framing: status line, Content-Type, Content-Length, blank line.
pub fn response_head(status: u16, reason: &str, content_type: &str, len: usize) -> String {
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\n\r\n"
    )
}

/// One message of the cycle as sent on the link.
pub(super) struct LinkMessage {
    pub(super) name: &'static str,
    /// The frame (binary body).
    pub(super) body: usize,
    /// Minimal HTTP/1.1 framing + frame.
    pub(super) http: usize,
    /// What `blepay serve` actually put on the wire for it (requests: what we sent).
    pub(super) wire: usize,
    /// The same fields as JSON, in this API's proto3 JSON mapping (zero fields written).
    pub(super) json: usize,
    /// The same, with zero-valued fields left out.
    pub(super) json_compact: usize,
}

impl LinkMessage {
    pub(super) fn json_http(&self, request: bool, compact: bool, host: &str) -> usize {
        let len = if compact {
            self.json_compact
        } else {
            self.json
        };
        let head = if request {
            request_head("/v1/device", host, "application/json", len).len()
        } else {
            response_head(200, "OK", "application/json", len).len()
        };
        head + len
    }
}

/// POST one frame to `/v1/device` with exactly the minimal framing over a raw socket; returns
/// the response body and the number of bytes the server sent.
pub(super) async fn raw_device_post(
    addr: SocketAddr,
    host: &str,
    frame: &[u8],
) -> anyhow::Result<(Vec<u8>, usize)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let mut req =
        request_head("/v1/device", host, "application/octet-stream", frame.len()).into_bytes();
    req.extend_from_slice(frame);
    s.write_all(&req).await?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            bail!("connection closed before a full answer");
        }
        got.extend_from_slice(buf.get(..n).unwrap_or_default());
        let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(got.get(..end).unwrap_or_default()).to_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .ok_or_else(|| anyhow!("answer without content-length: {head}"))?
            .trim()
            .parse()?;
        if got.len() >= end + 4 + len {
            let body = got.get(end + 4..end + 4 + len).unwrap_or_default().to_vec();
            return Ok((body, end + 4 + len));
        }
    }
}

pub(super) fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Drop zero-valued fields (`""`, `"0"`, `0`, `false`, `[]`, `{}`-less, `*_UNSPECIFIED`).
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

pub(super) fn json_sizes(v: &Value) -> anyhow::Result<(usize, usize)> {
    Ok((
        serde_json::to_vec(v)?.len(),
        serde_json::to_vec(&compact(v))?.len(),
    ))
}

/// The measured machine: its identity seals each request with the device client's own builder
/// (`Identity::request`), numbered after the last request the fleet's engine sent for it.
struct LinkMachine {
    identity: Identity,
    next_seq: u32,
}

/// Send one machine request with the minimal framing and size it every way.
async fn link_exchange(
    env: &Env,
    host: &str,
    machine: &mut LinkMachine,
    body: &Request,
    names: (&'static str, &'static str),
) -> anyhow::Result<(LinkMessage, LinkMessage, Answer)> {
    let seq = machine.next_seq;
    machine.next_seq += 1;
    let pending = machine.identity.request(seq, body);
    let (answer_bytes, wire) = raw_device_post(env.blepay_addr, host, &pending.frame).await?;
    let answer = machine
        .identity
        .open(&pending, &answer_bytes)
        .map_err(|e| anyhow!("answer does not authenticate: {e}"))?;
    if let Some(code) = answer::refusal(&answer) {
        bail!("{} refused: {code}", names.0);
    }
    // The same fields as JSON: the frame header, the body in the API's JSON mapping, the tag.
    let mut req_json = serde_json::to_value(body.to_pb())?;
    if let Value::Object(m) = &mut req_json {
        m.insert(
            "deviceId".into(),
            json!(machine.identity.device_id.to_string()),
        );
        m.insert(
            "keyVersion".into(),
            json!(machine.identity.key_version.get()),
        );
        m.insert("seq".into(), json!(seq));
        m.insert("tag".into(), json!(b64(&pending.tag)));
    }
    let resp_json = answer::as_json(&answer, seq, &b64(&[0u8; 16]))?;
    let (rj, rjc) = json_sizes(&req_json)?;
    let (aj, ajc) = json_sizes(&resp_json)?;
    let req_http = request_head(
        "/v1/device",
        host,
        "application/octet-stream",
        pending.frame.len(),
    )
    .len()
        + pending.frame.len();
    let request = LinkMessage {
        name: names.0,
        body: pending.frame.len(),
        http: req_http,
        wire: req_http,
        json: rj,
        json_compact: rjc,
    };
    let response = LinkMessage {
        name: names.1,
        body: answer_bytes.len(),
        http: response_head(200, "OK", "application/octet-stream", answer_bytes.len()).len()
            + answer_bytes.len(),
        wire,
        json: aj,
        json_compact: ajc,
    };
    Ok((request, response, answer))
}

pub(super) async fn run(env: &Env, host: &str) -> anyhow::Result<()> {
    let ctx = setup(env, 1, 1).await?;
    let fleet_machine = ctx.machine(0)?;
    let machine = &mut LinkMachine {
        identity: fleet_machine.identity()?,
        next_seq: fleet_machine.last_seq() + 1,
    };
    let mut rows = Vec::new();
    let (q, a, _) = link_exchange(
        env,
        host,
        machine,
        &blepay_device_client::poll(),
        ("idle poll", "idle poll answer (no grant)"),
    )
    .await?;
    let idle = [q, a];
    let session = ctx.pay(Transport::Http, 0, 0).await?;
    let (q, a, answer) = link_exchange(
        env,
        host,
        machine,
        &blepay_device_client::poll(),
        ("poll", "poll answer (1 grant)"),
    )
    .await?;
    if answer::grant_count(&answer) != 1 {
        bail!("the poll after the pay did not bring exactly one grant");
    }
    rows.extend([q, a]);
    let (q, a, _) = link_exchange(
        env,
        host,
        machine,
        &blepay_device_client::start(session),
        ("start", "start answer"),
    )
    .await?;
    rows.extend([q, a]);
    let report = blepay_device_client::report(session, blepay_core::Units::new(3), true);
    let (q, a, _) = link_exchange(
        env,
        host,
        machine,
        &report,
        ("final report", "report answer"),
    )
    .await?;
    rows.extend([q, a]);
    print_figures(host, &rows, &idle);
    Ok(())
}

/// Print the table of `rows` (request, answer, …) and `idle`, and the JSON summary.
fn print_figures(host: &str, rows: &[LinkMessage], idle: &[LinkMessage]) {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Bytes on the machine's link per payment cycle (Host: {host}; HTTP/1.1, one request per message)\n"
    );
    let _ = writeln!(
        out,
        "| message | frame | frame + minimal HTTP/1.1 | as `blepay serve` sends it | JSON body | JSON + minimal HTTP/1.1 | compact JSON + HTTP/1.1 |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
    let mut totals = [0usize; 6];
    let line = |out: &mut String, m: &LinkMessage, request: bool| {
        let json_http = m.json_http(request, false, host);
        let compact_http = m.json_http(request, true, host);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            m.name, m.body, m.http, m.wire, m.json, json_http, compact_http
        );
        [m.body, m.http, m.wire, m.json, json_http, compact_http]
    };
    for (i, m) in rows.iter().enumerate() {
        let v = line(&mut out, m, i % 2 == 0);
        for (t, x) in totals.iter_mut().zip(v) {
            *t += x;
        }
    }
    let _ = writeln!(
        out,
        "| **cycle total (poll + start + report)** | {} | {} | {} | {} | {} | {} |",
        totals[0], totals[1], totals[2], totals[3], totals[4], totals[5]
    );
    let _ = writeln!(out, "| *idle poll, for reference* | | | | | | |");
    for (i, m) in idle.iter().enumerate() {
        line(&mut out, m, i == 0);
    }
    print!("{out}");
    #[allow(clippy::cast_precision_loss)]
    let ratio = totals[4] as f64 / totals[1] as f64;
    println!(
        "\nA cycle is {} bytes with the binary frames and minimal HTTP/1.1 framing, {} as JSON: JSON is {:.2}x.",
        totals[1], totals[4], ratio
    );
    println!(
        "{}",
        json!({
            "link_cycle_bytes_binary_http": totals[1],
            "link_cycle_bytes_as_served": totals[2],
            "link_cycle_bytes_json_http": totals[4],
            "link_cycle_bytes_compact_json_http": totals[5],
            "link_json_over_binary": round3(ratio),
        })
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_request_framing_is_request_line_host_type_and_length() {
        let head = request_head("/v1/device", "h.example", "application/octet-stream", 31);
        assert_eq!(
            head,
            "POST /v1/device HTTP/1.1\r\nHost: h.example\r\nContent-Type: application/octet-stream\r\nContent-Length: 31\r\n\r\n"
        );
        assert_eq!(head.len(), 26 + 17 + 40 + 20 + 2);
    }

    #[test]
    fn minimal_response_framing_is_status_type_and_length() {
        let head = response_head(200, "OK", "application/json", 120);
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 120\r\n\r\n"
        );
    }

    #[test]
    fn compact_json_drops_zero_valued_fields_only() {
        let v = json!({"a": "", "b": "0", "c": 0, "d": false, "e": [], "f": "SESSION_STATUS_UNSPECIFIED",
                       "g": "x", "h": [{"i": 0, "j": 1}], "k": true});
        assert_eq!(compact(&v), json!({"g": "x", "h": [{"j": 1}], "k": true}));
    }
}
