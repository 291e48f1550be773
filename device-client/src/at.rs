//! HTTP `POST` through a SIM800-class 2G modem, spoken over its UART with AT commands.
//!
//! The dialogue follows the SIM800 Series AT Command Manual and the SIM800 IP Application Note:
//!
//! ```text
//! AT+SAPBR=3,1,"Contype","GPRS"      bearer profile 1 (once per attach)
//! AT+SAPBR=3,1,"APN","<apn>"
//! AT+SAPBR=1,1                       open the bearer (up to 85 s)
//! AT+SAPBR=2,1                       query: +SAPBR: 1,1,"10.1.2.3"  (1 = connected)
//! AT+HTTPINIT
//! AT+HTTPPARA="CID",1
//! AT+HTTPPARA="URL","http://host:port/v1/device"
//! AT+HTTPPARA="CONTENT","application/octet-stream"
//! AT+HTTPDATA=<len>,<ms>             -> DOWNLOAD, then exactly <len> raw bytes, -> OK
//! AT+HTTPACTION=1                    -> OK, later the URC +HTTPACTION: 1,<status>,<len>
//! AT+HTTPREAD                        -> +HTTPREAD: <len>, exactly <len> raw bytes, OK
//! AT+HTTPTERM
//! ```
//!
//! At heartbeat time the engine asks for the link's state ([`Transport::link_status`]), read
//! locally — no data leaves the modem:
//!
//! ```text
//! AT+CSQ                             -> +CSQ: <rssi>,<ber>  (rssi 0..31, 99 = not known), OK
//! AT+SAPBR=2,1                       -> +SAPBR: 1,<status>,"<ip>"  (1 = connected), OK
//! ```
//!
//! (SIM800 Series AT Command Manual V1.09 §3.2.35 `AT+CSQ`: `<rssi>` 0 = −115 dBm or less … 31 =
//! −52 dBm or greater, 99 not known or not detectable; `<ber>` 0..7 RXQUAL, 99 not known. A real
//! modem's log reads `+CSQ: 24,99`.)
//!
//! [`Sim800`] drives that dialogue and implements [`Transport`]. It is `no_std` + `alloc`: it
//! needs only a serial port with the blocking [`embedded_io`] traits (`Read + Write +
//! ReadReady`) and a millisecond [`Timer`]. Every wait has a deadline ([`Timeouts`]); silence
//! becomes [`AtError::Timeout`], never a hang.
//!
//! What it survives, inside one [`Transport::post`] (up to [`AtConfig::attempts`] tries, each
//! carrying the *same bytes*, so the server answers a retry from its saved answer):
//! - unsolicited result codes anywhere between replies (`+CPIN`, `Call Ready`, `SMS Ready`,
//!   `+CREG`, ...); `+SAPBR 1: DEACT` / `+PDP: DEACT` mark the bearer as dropped;
//! - `ERROR` / `+CME ERROR: <n>` and silence: the modem is re-synchronised (`AT`, `ATE0`) and a
//!   left-over HTTP session is closed (`AT+HTTPTERM`) before the next try;
//! - `AT+HTTPINIT` refused because an HTTP session was left open (the controller rebooted, the
//!   modem did not): `AT+HTTPTERM`, then `AT+HTTPINIT` again;
//! - `+HTTPACTION: 1,6xx,0` (601 network error, 603 DNS error, ...): the bearer is re-attached
//!   (`AT+SAPBR=0,1`, `AT+SAPBR=1,1`) before the next try;
//! - a modem power loss (it forgets echo mode, bearer and HTTP session, and greets with `RDY`):
//!   everything is set up again.
//!
//! Bodies are binary and carried byte-exact: the request goes after `DOWNLOAD` by length, and the
//! answer is read by the length in `+HTTPREAD: <len>`, so `\r\nOK\r\n` inside a frame is data.
//!
//! Why not the `atat` crate: its digester is built around line-oriented, typed responses with
//! fixed-capacity (`heapless`) buffers and derive macros; SIM800 HTTP needs a `DOWNLOAD` prompt
//! followed by raw bytes and a length-prefixed binary read, which means a custom digester anyway,
//! and the whole exchange is eight commands. A small hand-written driver over `embedded-io` keeps
//! the dependency tree to one trait crate and makes every byte on the UART visible here.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use embedded_io::{Read, ReadReady, Write};

use crate::transport::{LinkStatus, Transport};

/// A monotonic millisecond clock for command deadlines.
pub trait Timer {
    /// Milliseconds since some fixed point; never goes back.
    fn now_ms(&mut self) -> u64;

    /// Called while waiting for the modem with nothing to read: sleep a little (a tick, `WFI`).
    /// The default busy-waits.
    fn idle(&mut self) {}
}

/// [`Timer`] on `std::time::Instant`; idles by sleeping one millisecond.
#[cfg(feature = "std")]
#[derive(Debug, Clone, Copy)]
pub struct StdTimer {
    start: std::time::Instant,
}

#[cfg(feature = "std")]
impl Default for StdTimer {
    fn default() -> Self {
        Self {
            start: std::time::Instant::now(),
        }
    }
}

#[cfg(feature = "std")]
impl Timer for StdTimer {
    fn now_ms(&mut self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn idle(&mut self) {
        std::thread::sleep(core::time::Duration::from_millis(1));
    }
}

/// How long to wait for each step, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// An ordinary command's final result (`OK`/`ERROR`).
    pub command_ms: u32,
    /// `AT+SAPBR=1,1` / `AT+SAPBR=0,1` (the manual gives 85 s / 65 s).
    pub bearer_ms: u32,
    /// The `+HTTPACTION` URC after `AT+HTTPACTION=1`: a GPRS round trip and more.
    pub action_ms: u32,
    /// The input window given to `AT+HTTPDATA` for the raw body.
    pub data_ms: u32,
    /// Quiet time that ends the draining of stale modem output before a re-synchronisation.
    pub drain_ms: u32,
    /// How long the modem may take to answer `AT` again after a power loss (it boots in ~3 s).
    pub boot_ms: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            command_ms: 5_000,
            bearer_ms: 85_000,
            action_ms: 60_000,
            data_ms: 10_000,
            drain_ms: 100,
            boot_ms: 10_000,
        }
    }
}

/// What the modem needs to reach the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AtConfig {
    /// The carrier's access point name, e.g. `"internet"`.
    pub apn: String,
    /// `http://host:port`, no trailing slash; the request path is appended.
    pub server: String,
    pub timeouts: Timeouts,
    /// Tries per [`Transport::post`] (at least 1); each retry sends the same bytes.
    pub attempts: u8,
    /// The largest answer body accepted (frames are ≤ 1024 bytes).
    pub max_response: usize,
}

impl AtConfig {
    /// Defaults for `apn` and `server` (`http://host:port`).
    pub fn new(apn: &str, server: &str) -> Self {
        Self {
            apn: apn.into(),
            server: server.trim_end_matches('/').into(),
            timeouts: Timeouts::default(),
            attempts: 3,
            max_response: 2048,
        }
    }
}

/// Why an exchange through the modem failed. `E` is the serial port's error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AtError<E> {
    /// The UART itself failed.
    Serial(E),
    /// No final result for `command` within its deadline (the modem is silent).
    Timeout { command: &'static str },
    /// `command` answered `ERROR`.
    Error { command: &'static str },
    /// `command` answered `+CME ERROR: <code>`.
    Cme { command: &'static str, code: u16 },
    /// The bearer (GPRS PDP context) would not come up.
    NoBearer,
    /// `+HTTPACTION: 1,<status>,0` with a 6xx modem status: 601 network error, 603 DNS error, ...
    Network { status: u16 },
    /// The answer is longer than [`AtConfig::max_response`].
    TooLarge { len: usize },
    /// The configuration cannot be sent as an AT string (a `"` in the APN or URL).
    BadConfig,
    /// The modem said something the dialogue does not allow.
    Unexpected { command: &'static str },
}

impl<E: fmt::Debug> fmt::Display for AtError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Serial(e) => write!(f, "serial port: {e:?}"),
            Self::Timeout { command } => write!(f, "modem silent: no answer to {command}"),
            Self::Error { command } => write!(f, "{command} answered ERROR"),
            Self::Cme { command, code } => write!(f, "{command} answered +CME ERROR: {code}"),
            Self::NoBearer => f.write_str("GPRS bearer did not come up"),
            Self::Network { status } => {
                write!(f, "HTTP action failed in the modem with status {status}")
            }
            Self::TooLarge { len } => write!(f, "answer of {len} bytes is too large"),
            Self::BadConfig => f.write_str("APN or URL contains a quote"),
            Self::Unexpected { command } => write!(f, "unexpected modem output after {command}"),
        }
    }
}

impl<E: fmt::Debug> core::error::Error for AtError<E> {}

/// Counters of what the driver had to do, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AtStats {
    /// HTTP exchanges tried (first tries and retries).
    pub tries: u32,
    /// Re-synchronisations of the command channel (after an error, silence or a reboot).
    pub resyncs: u32,
    /// Bearer opens (first attach and re-attaches).
    pub bearer_opens: u32,
    /// Modem boots seen (`RDY`).
    pub reboots_seen: u32,
    /// `+SAPBR 1: DEACT` / `+PDP: DEACT` seen.
    pub bearer_drops_seen: u32,
    /// `AT+HTTPINIT` refused and repaired with `AT+HTTPTERM`.
    pub stale_http_sessions: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bearer {
    /// Not known: ask with `AT+SAPBR=2,1`.
    Unknown,
    Up,
    /// Dropped or broken: close (ignoring errors) and open again.
    Reattach,
}

/// A final result line.
#[derive(Clone, Copy)]
enum Final {
    Ok,
    Error,
    Cme(u16),
}

/// The SIM800 HTTP driver over serial port `S`, timed by `T`.
#[derive(Debug)]
pub struct Sim800<S, T> {
    serial: S,
    timer: T,
    config: AtConfig,
    /// Bytes read from the modem and not yet consumed.
    rx: Vec<u8>,
    /// Echo off and no HTTP session left over.
    synced: bool,
    bearer: Bearer,
    /// The last `+HTTPACTION: <method>,<status>,<len>` URC.
    action: Option<(u8, u16, usize)>,
    stats: AtStats,
}

type Res<T, S> = Result<T, AtError<<S as embedded_io::ErrorType>::Error>>;

impl<S, T> Sim800<S, T>
where
    S: Read + Write + ReadReady,
    T: Timer,
{
    /// A driver for the modem on `serial`. Nothing is sent until the first [`Transport::post`].
    pub fn new(serial: S, timer: T, config: AtConfig) -> Self {
        Self {
            serial,
            timer,
            config,
            rx: Vec::new(),
            synced: false,
            bearer: Bearer::Unknown,
            action: None,
            stats: AtStats::default(),
        }
    }

    /// What the driver has had to do so far.
    pub fn stats(&self) -> AtStats {
        self.stats
    }

    /// Give the serial port and timer back.
    pub fn into_parts(self) -> (S, T) {
        (self.serial, self.timer)
    }

    /// `AT+CSQ` → `+CSQ: <rssi>,<ber>`: the received signal strength, 0..=31 or 99 (not known).
    ///
    /// # Errors
    /// The modem did not answer, or not with a `+CSQ:` line.
    pub fn signal_quality(&mut self) -> Res<u8, S> {
        if !self.synced {
            self.resync()?;
        }
        let command = "AT+CSQ";
        let lines = self.command(command, command, self.config.timeouts.command_ms)?;
        lines
            .iter()
            .find_map(|l| l.strip_prefix("+CSQ:"))
            .and_then(|rest| rest.trim().split(',').next())
            .and_then(|rssi| rssi.trim().parse::<u8>().ok())
            .map(|rssi| if rssi <= 31 { rssi } else { 99 })
            .ok_or(AtError::Unexpected { command })
    }

    /// `AT+SAPBR=2,1`: is the GPRS bearer up? (Updates what the next exchange assumes.)
    ///
    /// # Errors
    /// The modem did not answer, or not with a `+SAPBR:` line.
    pub fn attached(&mut self) -> Res<bool, S> {
        if !self.synced {
            self.resync()?;
        }
        let up = self.bearer_connected()?;
        self.bearer = if up { Bearer::Up } else { Bearer::Unknown };
        Ok(up)
    }

    /// One HTTP exchange, no retry. On error the caller marks state for recovery.
    fn exchange(&mut self, path: &str, body: &[u8], response: &mut Vec<u8>) -> Res<u16, S> {
        if self.config.apn.contains('"') || self.config.server.contains('"') || path.contains('"') {
            return Err(AtError::BadConfig);
        }
        if !self.synced {
            self.resync()?;
        }
        self.ensure_bearer()?;
        self.http_init()?;
        let t = self.config.timeouts;
        self.simple("AT+HTTPPARA=\"CID\",1", "AT+HTTPPARA=CID", t.command_ms)?;
        let url = format!("AT+HTTPPARA=\"URL\",\"{}{}\"", self.config.server, path);
        self.simple(&url, "AT+HTTPPARA=URL", t.command_ms)?;
        self.simple(
            "AT+HTTPPARA=\"CONTENT\",\"application/octet-stream\"",
            "AT+HTTPPARA=CONTENT",
            t.command_ms,
        )?;
        self.http_data(body)?;
        let (status, len) = self.http_action()?;
        if (600..700).contains(&status) {
            // The modem's own failure codes (601 network, 603 DNS, 604 stack busy, ...).
            self.bearer = Bearer::Reattach;
            let _ = self.simple("AT+HTTPTERM", "AT+HTTPTERM", t.command_ms);
            return Err(AtError::Network { status });
        }
        if len > self.config.max_response {
            let _ = self.simple("AT+HTTPTERM", "AT+HTTPTERM", t.command_ms);
            return Err(AtError::TooLarge { len });
        }
        if len > 0 {
            self.http_read(len, response)?;
        }
        self.simple("AT+HTTPTERM", "AT+HTTPTERM", t.command_ms)?;
        Ok(status)
    }

    /// Bring the command channel back to a known state: drop stale output, wait for the modem to
    /// answer `AT` (it may be booting), echo off, no HTTP session.
    fn resync(&mut self) -> Res<(), S> {
        self.stats.resyncs += 1;
        let t = self.config.timeouts;
        self.drain()?;
        let boot_deadline = self.deadline(t.boot_ms);
        loop {
            match self.simple("AT", "AT", t.command_ms.min(1_000)) {
                Ok(()) => break,
                Err(AtError::Serial(e)) => return Err(AtError::Serial(e)),
                Err(e) => {
                    if self.timer.now_ms() >= boot_deadline {
                        return Err(e);
                    }
                    self.drain()?;
                }
            }
        }
        self.simple("ATE0", "ATE0", t.command_ms)?;
        // A session left open (by us before a reset, or by a previous firmware run) would make
        // AT+HTTPINIT fail; ERROR here just means there was none.
        match self.simple("AT+HTTPTERM", "AT+HTTPTERM", t.command_ms) {
            Ok(()) | Err(AtError::Error { .. } | AtError::Cme { .. }) => {}
            Err(e) => return Err(e),
        }
        self.synced = true;
        Ok(())
    }

    /// Make sure the bearer is open, re-attaching it if it dropped.
    fn ensure_bearer(&mut self) -> Res<(), S> {
        let t = self.config.timeouts;
        if self.bearer == Bearer::Up {
            return Ok(());
        }
        if self.bearer == Bearer::Reattach {
            match self.simple("AT+SAPBR=0,1", "AT+SAPBR=0,1", t.bearer_ms) {
                Ok(()) | Err(AtError::Error { .. } | AtError::Cme { .. }) => {}
                Err(e) => return Err(e),
            }
        } else if self.bearer_connected()? {
            self.bearer = Bearer::Up;
            return Ok(());
        }
        self.simple(
            "AT+SAPBR=3,1,\"Contype\",\"GPRS\"",
            "AT+SAPBR=3,1,Contype",
            t.command_ms,
        )?;
        let apn = format!("AT+SAPBR=3,1,\"APN\",\"{}\"", self.config.apn);
        self.simple(&apn, "AT+SAPBR=3,1,APN", t.command_ms)?;
        self.stats.bearer_opens += 1;
        match self.simple("AT+SAPBR=1,1", "AT+SAPBR=1,1", t.bearer_ms) {
            // ERROR may mean "already open": the query below decides.
            Ok(()) | Err(AtError::Error { .. } | AtError::Cme { .. }) => {}
            Err(e) => return Err(e),
        }
        if self.bearer_connected()? {
            self.bearer = Bearer::Up;
            Ok(())
        } else {
            self.bearer = Bearer::Reattach;
            Err(AtError::NoBearer)
        }
    }

    /// `AT+SAPBR=2,1` → `+SAPBR: 1,<status>,"<ip>"`; status 1 is connected.
    fn bearer_connected(&mut self) -> Res<bool, S> {
        let command = "AT+SAPBR=2,1";
        let lines = self.command(command, command, self.config.timeouts.command_ms)?;
        for line in &lines {
            if let Some(rest) = line.strip_prefix("+SAPBR:") {
                let mut fields = rest.trim().split(',');
                let _cid = fields.next();
                return Ok(fields.next().map(str::trim) == Some("1"));
            }
        }
        Err(AtError::Unexpected { command })
    }

    /// `AT+HTTPINIT`, closing a left-over session first if the modem refuses.
    fn http_init(&mut self) -> Res<(), S> {
        let ms = self.config.timeouts.command_ms;
        match self.simple("AT+HTTPINIT", "AT+HTTPINIT", ms) {
            Err(AtError::Error { .. } | AtError::Cme { .. }) => {
                self.stats.stale_http_sessions += 1;
                let _ = self.simple("AT+HTTPTERM", "AT+HTTPTERM", ms);
                self.simple("AT+HTTPINIT", "AT+HTTPINIT", ms)
            }
            other => other,
        }
    }

    /// `AT+HTTPDATA=<len>,<ms>`, `DOWNLOAD`, the raw body, `OK`.
    fn http_data(&mut self, body: &[u8]) -> Res<(), S> {
        let command = "AT+HTTPDATA";
        let t = self.config.timeouts;
        self.send(&format!("AT+HTTPDATA={},{}", body.len(), t.data_ms))?;
        let deadline = self.deadline(t.command_ms);
        loop {
            let line = self.line(deadline, command)?;
            if line == "DOWNLOAD" {
                break;
            }
            if let Some(f) = final_result(&line) {
                return Err(fail(f, command));
            }
            // Echo or URC: carry on.
        }
        self.serial.write_all(body).map_err(AtError::Serial)?;
        self.serial.flush().map_err(AtError::Serial)?;
        let deadline = self.deadline(t.data_ms.saturating_add(t.command_ms));
        self.finish(deadline, command, &mut Vec::new())
    }

    /// `AT+HTTPACTION=1`, `OK`, then the URC `+HTTPACTION: 1,<status>,<len>` → (status, len).
    fn http_action(&mut self) -> Res<(u16, usize), S> {
        let command = "AT+HTTPACTION=1";
        let t = self.config.timeouts;
        self.action = None;
        self.simple(command, command, t.command_ms)?;
        let deadline = self.deadline(t.action_ms);
        loop {
            if let Some((method, status, len)) = self.action.take() {
                if method == 1 {
                    return Ok((status, len));
                }
            }
            if let Some(line) = self.line_or_urc(deadline, command)? {
                if final_result(&line).is_some() {
                    return Err(AtError::Unexpected { command });
                }
            }
        }
    }

    /// `AT+HTTPREAD` → `+HTTPREAD: <len>`, exactly `<len>` raw bytes, `OK`.
    fn http_read(&mut self, expected: usize, response: &mut Vec<u8>) -> Res<(), S> {
        let command = "AT+HTTPREAD";
        self.send(command)?;
        let deadline = self.deadline(self.config.timeouts.command_ms);
        let len = loop {
            let line = self.line(deadline, command)?;
            if let Some(n) = line.strip_prefix("+HTTPREAD:") {
                break n
                    .trim()
                    .parse::<usize>()
                    .map_err(|_| AtError::Unexpected { command })?;
            }
            if let Some(f) = final_result(&line) {
                return Err(fail(f, command));
            }
        };
        if len != expected || len > self.config.max_response {
            return Err(AtError::Unexpected { command });
        }
        while self.rx.len() < len {
            self.fill(deadline, command)?;
        }
        response.extend(self.rx.drain(..len));
        self.finish(deadline, command, &mut Vec::new())
    }

    /// A command whose only expected answer is `OK`.
    fn simple(&mut self, command: &str, label: &'static str, ms: u32) -> Res<(), S> {
        self.command(command, label, ms).map(drop)
    }

    /// Send `command`, collect its information lines until `OK`.
    fn command(&mut self, command: &str, label: &'static str, ms: u32) -> Res<Vec<String>, S> {
        self.send(command)?;
        let deadline = self.deadline(ms);
        let mut info = Vec::new();
        self.finish(deadline, label, &mut info)?;
        // Drop the echo (the modem echoes until ATE0, and again after a reboot).
        info.retain(|l| l != command);
        Ok(info)
    }

    /// Read lines until the final result; information lines go to `info`.
    fn finish(&mut self, deadline: u64, label: &'static str, info: &mut Vec<String>) -> Res<(), S> {
        loop {
            let line = self.line(deadline, label)?;
            match final_result(&line) {
                Some(Final::Ok) => return Ok(()),
                Some(f) => return Err(fail(f, label)),
                None => info.push(line),
            }
        }
    }

    fn send(&mut self, command: &str) -> Res<(), S> {
        self.serial
            .write_all(command.as_bytes())
            .map_err(AtError::Serial)?;
        self.serial.write_all(b"\r").map_err(AtError::Serial)?;
        self.serial.flush().map_err(AtError::Serial)
    }

    /// The next non-empty line that is not an unsolicited result code.
    fn line(&mut self, deadline: u64, label: &'static str) -> Res<String, S> {
        loop {
            if let Some(line) = self.line_or_urc(deadline, label)? {
                return Ok(line);
            }
        }
    }

    /// The next non-empty line, or `None` after an unsolicited result code was taken in.
    fn line_or_urc(&mut self, deadline: u64, label: &'static str) -> Res<Option<String>, S> {
        loop {
            if let Some(end) = self.rx.iter().position(|&b| b == b'\n') {
                let raw: Vec<u8> = self.rx.drain(..=end).collect();
                let text = String::from_utf8_lossy(&raw);
                let line = text.trim_matches(|c| c == '\r' || c == '\n' || c == ' ');
                if line.is_empty() {
                    continue;
                }
                if self.urc(line) {
                    return Ok(None);
                }
                return Ok(Some(line.into()));
            }
            self.fill(deadline, label)?;
        }
    }

    /// Take an unsolicited result code into account; true if `line` was one.
    fn urc(&mut self, line: &str) -> bool {
        if let Some(rest) = line.strip_prefix("+HTTPACTION:") {
            let mut f = rest.trim().split(',').map(str::trim);
            let method = f.next().and_then(|v| v.parse().ok());
            let status = f.next().and_then(|v| v.parse().ok());
            let len = f.next().and_then(|v| v.parse().ok());
            if let (Some(m), Some(s), Some(l)) = (method, status, len) {
                self.action = Some((m, s, l));
            }
            return true;
        }
        if line.starts_with("+SAPBR 1: DEACT") || line.starts_with("+PDP: DEACT") {
            self.stats.bearer_drops_seen += 1;
            self.bearer = Bearer::Reattach;
            return true;
        }
        if line == "RDY" {
            // The modem (re)booted: echo is on, the bearer and any HTTP session are gone.
            self.stats.reboots_seen += 1;
            self.synced = false;
            self.bearer = Bearer::Unknown;
            return true;
        }
        IGNORED.iter().any(|p| line.starts_with(p))
    }

    /// Wait for at least one more byte, or fail at `deadline`.
    fn fill(&mut self, deadline: u64, label: &'static str) -> Res<(), S> {
        loop {
            if self.serial.read_ready().map_err(AtError::Serial)? {
                let mut buf = [0u8; 64];
                let n = self.serial.read(&mut buf).map_err(AtError::Serial)?;
                if n > 0 {
                    self.rx.extend_from_slice(buf.get(..n).unwrap_or_default());
                    return Ok(());
                }
            }
            if self.timer.now_ms() >= deadline {
                return Err(AtError::Timeout { command: label });
            }
            self.timer.idle();
        }
    }

    /// Discard modem output until it has been quiet for `drain_ms` (late answers of a command
    /// that timed out), still noting URCs such as `RDY`.
    fn drain(&mut self) -> Res<(), S> {
        let quiet = self.config.timeouts.drain_ms;
        // A modem that never stops talking is not allowed to hold the driver forever.
        let cap = self.deadline(self.config.timeouts.boot_ms);
        while self.timer.now_ms() < cap {
            let deadline = self.deadline(quiet);
            match self.fill(deadline, "drain") {
                Ok(()) => {}
                Err(AtError::Timeout { .. }) => break,
                Err(e) => return Err(e),
            }
        }
        while let Some(end) = self.rx.iter().position(|&b| b == b'\n') {
            let raw: Vec<u8> = self.rx.drain(..=end).collect();
            let text = String::from_utf8_lossy(&raw);
            let line = text.trim();
            let _ = self.urc(line);
        }
        self.rx.clear();
        Ok(())
    }

    fn deadline(&mut self, ms: u32) -> u64 {
        self.timer.now_ms().saturating_add(u64::from(ms))
    }

    /// After a failed try: what must be redone before the next one.
    ///
    /// Known limit: if a timed-out `AT+HTTPACTION=1` did run in the modem, its late
    /// `+HTTPACTION` URC may be taken for the next try's; that try carries the same bytes, so the
    /// server's answer is the same one, and `AT+HTTPREAD` checks the announced length.
    fn recover_after(&mut self, error: &AtError<S::Error>) {
        match error {
            AtError::Network { .. } | AtError::NoBearer => {}
            _ => {
                self.synced = false;
                if self.bearer == Bearer::Up {
                    self.bearer = Bearer::Unknown;
                }
            }
        }
        self.action = None;
    }
}

/// Unsolicited result codes that change nothing for HTTP.
const IGNORED: [&str; 9] = [
    "+CPIN:",
    "+CFUN:",
    "Call Ready",
    "SMS Ready",
    "+CREG:",
    "+CGREG:",
    "+CTZV:",
    "*PSUTTZ",
    "DST:",
];

fn final_result(line: &str) -> Option<Final> {
    if line == "OK" {
        Some(Final::Ok)
    } else if line == "ERROR" {
        Some(Final::Error)
    } else {
        line.strip_prefix("+CME ERROR:")
            .map(|code| Final::Cme(code.trim().parse().unwrap_or(0)))
    }
}

fn fail<E>(f: Final, command: &'static str) -> AtError<E> {
    match f {
        Final::Cme(code) => AtError::Cme { command, code },
        Final::Ok | Final::Error => AtError::Error { command },
    }
}

impl<S, T> Transport for Sim800<S, T>
where
    S: Read + Write + ReadReady,
    T: Timer,
{
    type Error = AtError<S::Error>;

    fn post(
        &mut self,
        path: &str,
        body: &[u8],
        response: &mut Vec<u8>,
    ) -> Result<u16, Self::Error> {
        let start = response.len();
        let mut tries = self.config.attempts.max(1);
        loop {
            self.stats.tries += 1;
            match self.exchange(path, body, response) {
                Ok(status) => return Ok(status),
                Err(e) => {
                    response.truncate(start);
                    self.recover_after(&e);
                    tries -= 1;
                    if tries == 0 || matches!(e, AtError::BadConfig | AtError::TooLarge { .. }) {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// `AT+CSQ` and `AT+SAPBR=2,1`; a modem that does not answer is not attached and its signal
    /// is not known.
    fn link_status(&mut self) -> LinkStatus {
        let signal_quality = match self.signal_quality() {
            Ok(q) => q,
            Err(e) => {
                self.recover_after(&e);
                return LinkStatus {
                    attached: Some(false),
                    signal_quality: blepay_core::telemetry::SIGNAL_UNKNOWN,
                };
            }
        };
        let attached = match self.attached() {
            Ok(up) => up,
            Err(e) => {
                self.recover_after(&e);
                false
            }
        };
        LinkStatus {
            attached: Some(attached),
            signal_quality,
        }
    }
}
