//! A SIM800 modem simulator (feature `sim800-sim`): it speaks the AT dialogue of the SIM800 Series
//! AT Command Manual / IP Application Note over an in-memory serial line, carries each
//! `AT+HTTPACTION=1` to the server over a real TCP connection with the request a SIM800 puts on
//! the air, counts the bytes on that connection, and injects faults on command.
//!
//! The modem runs in its own thread, like the real one on the other side of a UART: the host
//! end ([`HostPort`]) implements the blocking `embedded-io` traits [`crate::at::Sim800`] needs.
//!
//! **The request on the wire.** For `AT+HTTPACTION=1` a SIM800 sends (one TCP connection per
//! action, closed at `AT+HTTPTERM`):
//!
//! ```text
//! POST /v1/device HTTP/1.1\r\n
//! Host: <host[:port] of AT+HTTPPARA="URL">\r\n
//! Content-Type: <AT+HTTPPARA="CONTENT">\r\n
//! Content-Length: <AT+HTTPDATA length>\r\n
//! Connection: Keep-Alive\r\n
//! Accept: */*\r\n
//! User-Agent: SIMCOM_MODULE\r\n
//! \r\n
//! <body>
//! ```
//!
//! Sources: the header *set* is what servers log from SIM800 `AT+HTTPACTION=1` POSTs — an
//! httpbin echo of a SIM800 POST lists `Accept: */*`, `Content-Length`, `Content-Type`, `Host`,
//! `User-Agent: SIMCOM_MODULE` (its proxy drops `Connection`), and a PHP capture of a SIM800 POST
//! lists `Accept`, `Connection: Keep-Alive`, `Content-Length`, `Content-Type`, `Host`,
//! `User-Agent: SIMCOM_MODULE`; no `Cache-Control` appears in either. Both captures print the
//! headers sorted, so the *order* above (the one the issue gives) is not established by them; it
//! changes no byte count. The `Host` carries the port when the URL has one.
//!
//! **Bytes.** Every byte written to and read from the TCP connection is counted per exchange
//! ([`Sim::link_bytes`]): what the carrier bills above TCP/IP (headers, handshake and ACKs are a
//! model on top, see `blepay bench --link-bytes`).

use std::collections::VecDeque;
use std::io::{Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One direction of the serial line.
#[derive(Clone, Default)]
struct Pipe(Arc<(Mutex<VecDeque<u8>>, Condvar)>);

impl Pipe {
    fn push(&self, bytes: &[u8]) {
        let (q, cv) = &*self.0;
        lock(q).extend(bytes);
        cv.notify_all();
    }

    /// Up to `buf.len()` bytes, waiting at most `wait` for the first one.
    fn pop(&self, buf: &mut [u8], wait: Duration) -> usize {
        let (q, cv) = &*self.0;
        let mut g = lock(q);
        let deadline = Instant::now() + wait;
        while g.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                return 0;
            }
            g = cv
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let n = buf.len().min(g.len());
        for (slot, b) in buf.iter_mut().zip(g.drain(..n)) {
            *slot = b;
        }
        n
    }

    fn ready(&self) -> bool {
        !lock(&self.0.0).is_empty()
    }
}

/// The controller's end of the UART.
pub struct HostPort {
    to_modem: Pipe,
    from_modem: Pipe,
}

impl core::fmt::Debug for HostPort {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("HostPort")
    }
}

impl embedded_io::ErrorType for HostPort {
    type Error = embedded_io::ErrorKind;
}

impl embedded_io::Read for HostPort {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let n = self.from_modem.pop(buf, Duration::from_millis(50));
            if n > 0 {
                return Ok(n);
            }
        }
    }
}

impl embedded_io::ReadReady for HostPort {
    fn read_ready(&mut self) -> Result<bool, Self::Error> {
        Ok(self.from_modem.ready())
    }
}

impl embedded_io::Write for HostPort {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        self.to_modem.push(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// A fault to inject; each fires once, at the first command that matches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The next command starting with this answers `ERROR`.
    Error(&'static str),
    /// The next command starting with this answers `+CME ERROR: <code>`.
    Cme(&'static str, u16),
    /// The next command starting with this gets no answer at all.
    Silence(&'static str),
    /// The next `AT+HTTPACTION=1` reports this status (601 network, 603 DNS) without reaching
    /// the server.
    ActionFails(u16),
    /// The next `AT+HTTPACTION=1` reaches the server, but the modem loses the answer: 601.
    AnswerLost,
    /// At the next command starting with this, the bearer drops: URC `+SAPBR 1: DEACT`,
    /// `AT+SAPBR=2,1` reports closed, an `AT+HTTPACTION` fails with 601.
    DropBearer(&'static str),
    /// At the next command starting with this (before answering it), the modem loses power: it
    /// forgets echo mode, bearer and HTTP session, is deaf for a while, then boots (`RDY`, ...).
    PowerLoss(&'static str),
    /// The next `AT+HTTPACTION=1` reaches the server, then the power goes before the URC.
    PowerLossAfterForward,
    /// The next `AT+HTTPDATA`: `DOWNLOAD`, then the power goes halfway through the body.
    PowerLossDuringData,
    /// The next command starting with this is answered after `URC_NOISE`.
    Noise(&'static str),
}

/// Unsolicited result codes a SIM800 sends on its own.
pub const URC_NOISE: &[&str] = &[
    "+CPIN: READY",
    "Call Ready",
    "SMS Ready",
    "+CREG: 1",
    "+CFUN: 1",
];

/// The bytes of one HTTP action on its TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Exchange {
    /// Bytes the modem wrote (request line, headers, body).
    pub sent: u64,
    /// Bytes the modem read (status line, headers, body).
    pub received: u64,
}

/// Byte counters over every HTTP action that opened a TCP connection.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LinkBytes {
    /// One entry per TCP connection opened (in order), answered or not.
    pub exchanges: Vec<Exchange>,
}

impl LinkBytes {
    /// Bytes written, all exchanges.
    pub fn sent(&self) -> u64 {
        self.exchanges.iter().map(|e| e.sent).sum()
    }

    /// Bytes read, all exchanges.
    pub fn received(&self) -> u64 {
        self.exchanges.iter().map(|e| e.received).sum()
    }
}

/// What the test can see and steer.
#[derive(Debug)]
pub struct Control {
    /// Faults still to fire, in order.
    pub faults: VecDeque<Fault>,
    /// Every command line received, in order.
    pub commands: Vec<String>,
    /// Every body that reached the server, in order.
    pub forwarded: Vec<Vec<u8>>,
    /// Every request head (request line and headers, up to the empty line) put on TCP, in order.
    pub heads: Vec<String>,
    /// Power losses so far.
    pub power_losses: u32,
    /// What `AT+CSQ` answers as `<rssi>`.
    pub rssi: u8,
    /// Bytes on the TCP connections.
    pub bytes: LinkBytes,
    /// How long an HTTP action may take on TCP.
    pub tcp_timeout: Duration,
}

impl Default for Control {
    fn default() -> Self {
        Self {
            faults: VecDeque::new(),
            commands: Vec::new(),
            forwarded: Vec::new(),
            heads: Vec::new(),
            power_losses: 0,
            rssi: 18,
            bytes: LinkBytes::default(),
            tcp_timeout: Duration::from_secs(10),
        }
    }
}

struct Http {
    url: Option<String>,
    content: Option<String>,
    data: Vec<u8>,
    response: Option<(u16, Vec<u8>)>,
}

impl Http {
    const fn new() -> Self {
        Self {
            url: None,
            content: None,
            data: Vec::new(),
            response: None,
        }
    }
}

struct Modem {
    input: Pipe,
    out: Pipe,
    ctl: Arc<Mutex<Control>>,
    echo: bool,
    bearer: bool,
    http: Option<Http>,
    off_until: Option<Instant>,
    off_for: Duration,
}

/// A running simulated modem (stopped when dropped).
pub struct Sim {
    /// What the test can see and steer.
    pub control: Arc<Mutex<Control>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl core::fmt::Debug for Sim {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Sim").finish_non_exhaustive()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Sim {
    /// A modem that has just booted (echo on, no bearer).
    pub fn start() -> (Self, HostPort) {
        Self::start_with(false)
    }

    /// Like [`Sim::start`], but an HTTP session is still open from an earlier controller run.
    pub fn start_with(http_left_open: bool) -> (Self, HostPort) {
        let to_modem = Pipe::default();
        let from_modem = Pipe::default();
        let control = Arc::new(Mutex::new(Control::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut modem = Modem {
            input: to_modem.clone(),
            out: from_modem.clone(),
            ctl: control.clone(),
            echo: true,
            bearer: false,
            http: http_left_open.then(Http::new),
            off_until: None,
            off_for: Duration::from_millis(300),
        };
        let s = stop.clone();
        let thread = std::thread::spawn(move || modem.run(&s));
        (
            Self {
                control,
                stop,
                thread: Some(thread),
            },
            HostPort {
                to_modem,
                from_modem,
            },
        )
    }

    /// Queue a fault.
    pub fn inject(&self, fault: Fault) {
        lock(&self.control).faults.push_back(fault);
    }

    /// Every body that reached the server.
    pub fn forwarded(&self) -> Vec<Vec<u8>> {
        lock(&self.control).forwarded.clone()
    }

    /// Every request head put on TCP.
    pub fn heads(&self) -> Vec<String> {
        lock(&self.control).heads.clone()
    }

    /// Every command line received.
    pub fn commands(&self) -> Vec<String> {
        lock(&self.control).commands.clone()
    }

    /// The byte counters of the TCP connections so far.
    pub fn link_bytes(&self) -> LinkBytes {
        lock(&self.control).bytes.clone()
    }

    /// Forget the byte counters (e.g. between the phases of a benchmark).
    pub fn reset_link_bytes(&self) {
        lock(&self.control).bytes = LinkBytes::default();
    }

    /// What `AT+CSQ` answers as `<rssi>` from now on.
    pub fn set_rssi(&self, rssi: u8) {
        lock(&self.control).rssi = rssi;
    }

    /// True when every injected fault has fired.
    pub fn faults_spent(&self) -> bool {
        lock(&self.control).faults.is_empty()
    }
}

/// Why an HTTP action failed on TCP (the modem then reports 601).
#[derive(Debug)]
struct TcpFailure;

impl From<std::io::Error> for TcpFailure {
    fn from(_: std::io::Error) -> Self {
        Self
    }
}

/// `http://host[:port]/path` → (authority, path).
fn split_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("http://")?;
    Some(match rest.find('/') {
        Some(i) => (rest.get(..i)?, rest.get(i..)?),
        None => (rest, "/"),
    })
}

/// The request head a SIM800 sends for `AT+HTTPACTION=1` (see the module docs).
pub fn request_head(host: &str, path: &str, content_type: Option<&str>, len: usize) -> String {
    let content_type =
        content_type.map_or_else(String::new, |ct| format!("Content-Type: {ct}\r\n"));
    format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\n{content_type}Content-Length: {len}\r\n\
         Connection: Keep-Alive\r\nAccept: */*\r\nUser-Agent: SIMCOM_MODULE\r\n\r\n"
    )
}

/// A byte-counting reader over the connection.
struct Counted<'a> {
    stream: &'a mut TcpStream,
    buf: Vec<u8>,
    read: u64,
}

impl Counted<'_> {
    fn fill(&mut self) -> Result<bool, TcpFailure> {
        let mut chunk = [0u8; 1024];
        let n = self.stream.read(&mut chunk)?;
        self.read += n as u64;
        self.buf
            .extend_from_slice(chunk.get(..n).unwrap_or_default());
        Ok(n > 0)
    }

    /// The bytes up to and including `delim`, taken off the buffer.
    fn until(&mut self, delim: &[u8]) -> Result<Vec<u8>, TcpFailure> {
        loop {
            if let Some(i) = self.buf.windows(delim.len()).position(|w| w == delim) {
                return Ok(self.buf.drain(..i + delim.len()).collect());
            }
            if !self.fill()? {
                return Err(TcpFailure);
            }
        }
    }

    fn exactly(&mut self, n: usize) -> Result<Vec<u8>, TcpFailure> {
        while self.buf.len() < n {
            if !self.fill()? {
                return Err(TcpFailure);
            }
        }
        Ok(self.buf.drain(..n).collect())
    }
}

/// One POST on a fresh TCP connection: (status, body), counting bytes into `bytes`.
fn post_tcp(
    url: &str,
    content_type: Option<&str>,
    body: &[u8],
    timeout: Duration,
    bytes: &mut Exchange,
    heads: &mut Vec<String>,
) -> Result<(u16, Vec<u8>), TcpFailure> {
    let (host, path) = split_url(url).ok_or(TcpFailure)?;
    let addr = host.to_socket_addrs()?.next().ok_or(TcpFailure)?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let head = request_head(host, path, content_type, body.len());
    let mut request = head.clone().into_bytes();
    request.extend_from_slice(body);
    heads.push(head);
    stream.write_all(&request)?;
    bytes.sent += request.len() as u64;
    let mut r = Counted {
        stream: &mut stream,
        buf: Vec::new(),
        read: 0,
    };
    let result = read_response(&mut r);
    bytes.received += r.read;
    result
}

fn read_response(r: &mut Counted<'_>) -> Result<(u16, Vec<u8>), TcpFailure> {
    let head = r.until(b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or(TcpFailure)?;
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
        if name == "content-length" {
            length = value.parse::<usize>().ok();
        } else if name == "transfer-encoding" && value.eq_ignore_ascii_case("chunked") {
            chunked = true;
        }
    }
    let body = if chunked {
        let mut body = Vec::new();
        loop {
            let size_line = r.until(b"\r\n")?;
            let size = String::from_utf8_lossy(&size_line);
            let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| TcpFailure)?;
            let chunk = r.exactly(size + 2)?;
            body.extend_from_slice(chunk.get(..size).unwrap_or_default());
            if size == 0 {
                break body;
            }
        }
    } else if let Some(n) = length {
        r.exactly(n)?
    } else {
        while r.fill()? {}
        core::mem::take(&mut r.buf)
    };
    Ok((status, body))
}

impl Modem {
    fn run(&mut self, stop: &AtomicBool) {
        let mut line = Vec::new();
        let mut buf = [0u8; 256];
        while !stop.load(Ordering::SeqCst) {
            self.maybe_boot();
            let n = self.input.pop(&mut buf, Duration::from_millis(10));
            if self.off_until.is_some() {
                continue; // no power: the bytes fall on the floor
            }
            for &b in buf.get(..n).unwrap_or_default() {
                match b {
                    b'\r' => {
                        let cmd = String::from_utf8_lossy(&line).trim().to_owned();
                        line.clear();
                        if self.echo {
                            self.out.push(format!("{cmd}\r").as_bytes());
                        }
                        if !cmd.is_empty() {
                            self.command(&cmd);
                        }
                    }
                    b'\n' => {}
                    _ => line.push(b),
                }
                if self.off_until.is_some() {
                    line.clear();
                    break;
                }
            }
        }
    }

    fn emit(&self, text: &str) {
        self.out.push(format!("\r\n{text}\r\n").as_bytes());
    }

    fn maybe_boot(&mut self) {
        if let Some(t) = self.off_until {
            if Instant::now() >= t {
                self.off_until = None;
                for urc in ["RDY", "+CFUN: 1", "+CPIN: READY", "Call Ready", "SMS Ready"] {
                    self.emit(urc);
                }
            }
        }
    }

    fn power_loss(&mut self) {
        self.echo = true;
        self.bearer = false;
        self.http = None;
        self.off_until = Some(Instant::now() + self.off_for);
        lock(&self.ctl).power_losses += 1;
    }

    /// The first queued fault that `matches`, taken off the queue.
    fn take(&self, matches: impl Fn(&Fault) -> bool) -> Option<Fault> {
        let mut ctl = lock(&self.ctl);
        let i = ctl.faults.iter().position(matches)?;
        ctl.faults.remove(i)
    }

    fn command(&mut self, cmd: &str) {
        lock(&self.ctl).commands.push(cmd.to_owned());
        let fault = self.take(|f| match f {
            Fault::Error(p)
            | Fault::Cme(p, _)
            | Fault::Silence(p)
            | Fault::PowerLoss(p)
            | Fault::Noise(p)
            | Fault::DropBearer(p) => cmd.starts_with(p),
            _ => false,
        });
        match fault {
            Some(Fault::Error(_)) => return self.emit("ERROR"),
            Some(Fault::Cme(_, code)) => return self.emit(&format!("+CME ERROR: {code}")),
            Some(Fault::Silence(_)) => return,
            Some(Fault::PowerLoss(_)) => return self.power_loss(),
            Some(Fault::Noise(_)) => URC_NOISE.iter().for_each(|u| self.emit(u)),
            Some(Fault::DropBearer(_)) => {
                self.bearer = false;
                self.emit("+SAPBR 1: DEACT");
            }
            _ => {}
        }
        self.answer(cmd);
    }

    fn answer(&mut self, cmd: &str) {
        let ok = |m: &Self| m.emit("OK");
        let err = |m: &Self| m.emit("ERROR");
        match cmd {
            "AT" => ok(self),
            "ATE0" => {
                self.echo = false;
                ok(self);
            }
            "ATE1" => {
                self.echo = true;
                ok(self);
            }
            "AT+CSQ" => {
                // SIM800 manual §3.2.35: +CSQ: <rssi>,<ber>
                let rssi = lock(&self.ctl).rssi;
                self.emit(&format!("+CSQ: {rssi},0"));
                ok(self);
            }
            "AT+SAPBR=1,1" => {
                if self.bearer {
                    err(self);
                } else {
                    self.bearer = true;
                    ok(self);
                }
            }
            "AT+SAPBR=0,1" => {
                if self.bearer {
                    self.bearer = false;
                    ok(self);
                } else {
                    err(self);
                }
            }
            "AT+SAPBR=2,1" => {
                if self.bearer {
                    self.emit("+SAPBR: 1,1,\"10.64.12.7\"");
                } else {
                    self.emit("+SAPBR: 1,3,\"0.0.0.0\"");
                }
                ok(self);
            }
            "AT+HTTPINIT" => {
                if self.http.is_some() {
                    err(self);
                } else {
                    self.http = Some(Http::new());
                    ok(self);
                }
            }
            "AT+HTTPTERM" => {
                if self.http.take().is_some() {
                    ok(self);
                } else {
                    err(self);
                }
            }
            "AT+HTTPACTION=1" => self.action(),
            "AT+HTTPREAD" => match self.http.as_ref().and_then(|h| h.response.clone()) {
                Some((_, body)) => {
                    self.out
                        .push(format!("\r\n+HTTPREAD: {}\r\n", body.len()).as_bytes());
                    self.out.push(&body);
                    self.out.push(b"\r\nOK\r\n");
                }
                None => err(self),
            },
            _ if cmd.starts_with("AT+SAPBR=3,1,") => ok(self),
            _ if cmd.starts_with("AT+HTTPPARA=") => {
                let Some(http) = self.http.as_mut() else {
                    return err(self);
                };
                if let Some(url) = cmd.strip_prefix("AT+HTTPPARA=\"URL\",\"") {
                    http.url = Some(url.trim_end_matches('"').to_owned());
                } else if let Some(ct) = cmd.strip_prefix("AT+HTTPPARA=\"CONTENT\",\"") {
                    http.content = Some(ct.trim_end_matches('"').to_owned());
                }
                ok(self);
            }
            _ if cmd.starts_with("AT+HTTPDATA=") => self.data(cmd),
            _ => err(self),
        }
    }

    fn data(&mut self, cmd: &str) {
        let args: Vec<u64> = cmd
            .get("AT+HTTPDATA=".len()..)
            .unwrap_or_default()
            .split(',')
            .filter_map(|v| v.trim().parse().ok())
            .collect();
        let (Some(&len), Some(&ms)) = (args.first(), args.get(1)) else {
            return self.emit("ERROR");
        };
        let Ok(len) = usize::try_from(len) else {
            return self.emit("ERROR");
        };
        if self.http.is_none() {
            return self.emit("ERROR");
        }
        let cut = self.take(|f| *f == Fault::PowerLossDuringData).is_some();
        self.emit("DOWNLOAD");
        let mut data = Vec::with_capacity(len);
        let deadline = Instant::now() + Duration::from_millis(ms);
        while data.len() < len && Instant::now() < deadline {
            if cut && data.len() >= len / 2 {
                return self.power_loss();
            }
            let mut buf = vec![0u8; if cut { 1 } else { len - data.len() }];
            let n = self.input.pop(&mut buf, Duration::from_millis(10));
            data.extend_from_slice(buf.get(..n).unwrap_or_default());
        }
        if let Some(http) = self.http.as_mut() {
            http.data = data;
        }
        self.emit("OK");
    }

    fn action(&mut self) {
        let Some(http) = self.http.as_mut() else {
            return self.emit("ERROR");
        };
        let Some(url) = http.url.clone() else {
            return self.emit("ERROR");
        };
        let content = http.content.clone();
        let body = http.data.clone();
        http.response = None;
        self.emit("OK");
        let fault = self.take(|f| {
            matches!(
                f,
                Fault::ActionFails(_) | Fault::AnswerLost | Fault::PowerLossAfterForward
            )
        });
        if let Some(Fault::ActionFails(status)) = fault {
            return self.emit(&format!("+HTTPACTION: 1,{status},0"));
        }
        if !self.bearer {
            return self.emit("+HTTPACTION: 1,601,0");
        }
        let timeout = {
            let mut ctl = lock(&self.ctl);
            ctl.forwarded.push(body.clone());
            ctl.tcp_timeout
        };
        let mut bytes = Exchange::default();
        let mut heads = Vec::new();
        let answer = post_tcp(
            &url,
            content.as_deref(),
            &body,
            timeout,
            &mut bytes,
            &mut heads,
        );
        {
            let mut ctl = lock(&self.ctl);
            ctl.bytes.exchanges.push(bytes);
            ctl.heads.extend(heads);
        }
        match (fault, answer) {
            (Some(Fault::PowerLossAfterForward), _) => self.power_loss(),
            (Some(Fault::AnswerLost), _) | (_, Err(TcpFailure)) => {
                self.emit("+HTTPACTION: 1,601,0");
            }
            (_, Ok((status, bytes))) => {
                let len = bytes.len();
                if let Some(http) = self.http.as_mut() {
                    http.response = Some((status, bytes));
                }
                self.emit(&format!("+HTTPACTION: 1,{status},{len}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_head_is_the_sim800_header_set() {
        assert_eq!(
            request_head(
                "pay.example.com:8080",
                "/v1/device",
                Some("application/octet-stream"),
                42
            ),
            "POST /v1/device HTTP/1.1\r\nHost: pay.example.com:8080\r\n\
             Content-Type: application/octet-stream\r\nContent-Length: 42\r\n\
             Connection: Keep-Alive\r\nAccept: */*\r\nUser-Agent: SIMCOM_MODULE\r\n\r\n"
        );
        assert_eq!(
            split_url("http://127.0.0.1:9/v1/device"),
            Some(("127.0.0.1:9", "/v1/device"))
        );
    }
}
