//! A SIM800 modem simulator: it speaks the AT dialogue of the SIM800 Series AT Command Manual /
//! IP Application Note over an in-memory serial line, bridges each `AT+HTTPACTION=1` to a
//! backend (the real server on loopback), and injects faults on command.
//!
//! The modem runs in its own thread, like the real one on the other side of a UART: the host
//! end ([`HostPort`]) implements the blocking `embedded-io` traits the driver needs.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use blepay_device_client::at::{AtConfig, Sim800, StdTimer, Timeouts};
use blepay_device_client::http::HttpTransport;
use blepay_device_client::transport::Transport;

/// One direction of the serial line.
#[derive(Clone, Default)]
struct Pipe(Arc<(Mutex<VecDeque<u8>>, Condvar)>);

impl Pipe {
    fn push(&self, bytes: &[u8]) {
        let (q, cv) = &*self.0;
        q.lock().unwrap().extend(bytes);
        cv.notify_all();
    }

    /// Up to `buf.len()` bytes, waiting at most `wait` for the first one.
    fn pop(&self, buf: &mut [u8], wait: Duration) -> usize {
        let (q, cv) = &*self.0;
        let mut g = q.lock().unwrap();
        let deadline = Instant::now() + wait;
        while g.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                return 0;
            }
            g = cv.wait_timeout(g, deadline - now).unwrap().0;
        }
        let n = buf.len().min(g.len());
        for (slot, b) in buf.iter_mut().zip(g.drain(..n)) {
            *slot = b;
        }
        n
    }

    fn ready(&self) -> bool {
        !self.0.0.lock().unwrap().is_empty()
    }
}

/// The controller's end of the UART.
pub struct HostPort {
    to_modem: Pipe,
    from_modem: Pipe,
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

/// Where an HTTP action goes: (url, body) → (status, body), or `None` for a network failure.
pub type Backend = Box<dyn FnMut(&str, &[u8]) -> Option<(u16, Vec<u8>)> + Send>;

/// What the test can see and steer.
#[derive(Default)]
pub struct Control {
    pub faults: VecDeque<Fault>,
    /// Every command line received, in order.
    pub commands: Vec<String>,
    /// Every body that reached the backend, in order.
    pub forwarded: Vec<Vec<u8>>,
    /// Power losses so far.
    pub power_losses: u32,
}

struct Http {
    url: Option<String>,
    data: Vec<u8>,
    response: Option<(u16, Vec<u8>)>,
}

struct Modem {
    input: Pipe,
    out: Pipe,
    ctl: Arc<Mutex<Control>>,
    backend: Backend,
    echo: bool,
    bearer: bool,
    http: Option<Http>,
    off_until: Option<Instant>,
    off_for: Duration,
}

/// A running simulated modem.
pub struct Sim {
    pub control: Arc<Mutex<Control>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
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
    /// A modem that has just booted (echo on, no bearer), bridging to `backend`.
    pub fn start(backend: Backend) -> (Self, HostPort) {
        Self::start_with(backend, false)
    }

    /// Like [`Sim::start`], but an HTTP session is still open from an earlier controller run.
    pub fn start_with(backend: Backend, http_left_open: bool) -> (Self, HostPort) {
        let to_modem = Pipe::default();
        let from_modem = Pipe::default();
        let control = Arc::new(Mutex::new(Control::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut modem = Modem {
            input: to_modem.clone(),
            out: from_modem.clone(),
            ctl: control.clone(),
            backend,
            echo: true,
            bearer: false,
            http: http_left_open.then(|| Http {
                url: None,
                data: Vec::new(),
                response: None,
            }),
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

    pub fn inject(&self, fault: Fault) {
        self.control.lock().unwrap().faults.push_back(fault);
    }

    pub fn forwarded(&self) -> Vec<Vec<u8>> {
        self.control.lock().unwrap().forwarded.clone()
    }

    pub fn commands(&self) -> Vec<String> {
        self.control.lock().unwrap().commands.clone()
    }

    /// True when every injected fault has fired.
    pub fn faults_spent(&self) -> bool {
        self.control.lock().unwrap().faults.is_empty()
    }
}

/// A backend that posts to the real server over loopback.
pub fn server_backend() -> Backend {
    let mut http = HttpTransport::new("", Duration::from_secs(10));
    Box::new(move |url, body| {
        let mut answer = Vec::new();
        http.post(url, body, &mut answer)
            .ok()
            .map(|status| (status, answer))
    })
}

/// Timeouts short enough for tests (the simulated modem answers in microseconds).
pub fn test_timeouts() -> Timeouts {
    Timeouts {
        command_ms: 500,
        bearer_ms: 1_000,
        action_ms: 10_000,
        data_ms: 500,
        drain_ms: 30,
        boot_ms: 3_000,
    }
}

/// The driver under test on `port`, for `server` (`http://127.0.0.1:PORT`).
pub fn driver(port: HostPort, server: &str) -> Sim800<HostPort, StdTimer> {
    let mut config = AtConfig::new("internet", server);
    config.timeouts = test_timeouts();
    Sim800::new(port, StdTimer::default(), config)
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
            for &b in &buf[..n] {
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
        self.ctl.lock().unwrap().power_losses += 1;
    }

    /// The first queued fault that `matches`, taken off the queue.
    fn take(&self, matches: impl Fn(&Fault) -> bool) -> Option<Fault> {
        let mut ctl = self.ctl.lock().unwrap();
        let i = ctl.faults.iter().position(matches)?;
        ctl.faults.remove(i)
    }

    fn command(&mut self, cmd: &str) {
        self.ctl.lock().unwrap().commands.push(cmd.to_owned());
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
                    self.http = Some(Http {
                        url: None,
                        data: Vec::new(),
                        response: None,
                    });
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
                }
                ok(self);
            }
            _ if cmd.starts_with("AT+HTTPDATA=") => self.data(cmd),
            _ => err(self),
        }
    }

    fn data(&mut self, cmd: &str) {
        let args: Vec<u64> = cmd["AT+HTTPDATA=".len()..]
            .split(',')
            .filter_map(|v| v.trim().parse().ok())
            .collect();
        let (Some(&len), Some(&ms)) = (args.first(), args.get(1)) else {
            return self.emit("ERROR");
        };
        if self.http.is_none() {
            return self.emit("ERROR");
        }
        let cut = self.take(|f| *f == Fault::PowerLossDuringData).is_some();
        self.emit("DOWNLOAD");
        let len = usize::try_from(len).unwrap();
        let mut data = Vec::with_capacity(len);
        let deadline = Instant::now() + Duration::from_millis(ms);
        while data.len() < len && Instant::now() < deadline {
            if cut && data.len() >= len / 2 {
                return self.power_loss();
            }
            let mut buf = vec![0u8; if cut { 1 } else { len - data.len() }];
            let n = self.input.pop(&mut buf, Duration::from_millis(10));
            data.extend_from_slice(&buf[..n]);
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
        self.ctl.lock().unwrap().forwarded.push(body.clone());
        let answer = (self.backend)(&url, &body);
        match (fault, answer) {
            (Some(Fault::PowerLossAfterForward), _) => self.power_loss(),
            (Some(Fault::AnswerLost), _) | (_, None) => self.emit("+HTTPACTION: 1,601,0"),
            (_, Some((status, bytes))) => {
                let len = bytes.len();
                if let Some(http) = self.http.as_mut() {
                    http.response = Some((status, bytes));
                }
                self.emit(&format!("+HTTPACTION: 1,{status},{len}"));
            }
        }
    }
}
