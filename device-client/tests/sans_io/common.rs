//! A fake blepay server for the device side: the real frame code (`RequestFrame::verify`,
//! `seal_response`), the sequence rules of docs/protocol.md §3.3 and a tiny session table.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;

use blepay_core::{DeviceId, KeyVersion, SessionId};
use blepay_device_client::Identity;
use blepay_device_client::driver::{Driver, Step};
use blepay_device_client::engine::{Action, Config, Engine};
use blepay_device_client::log::{MemLog, MemLogError, RecordLog};
use blepay_device_client::transport::Transport;
use blepay_proto::pb::v1 as pb;
use blepay_proto::{DeviceKey, RequestFrame, seal_response};
use prost::Message;

pub const T0: u64 = 1_770_000_000;

pub fn identity() -> Identity {
    Identity {
        device_id: DeviceId::from_bytes([1, 2, 3, 4, 5, 6, 7, 8]),
        key_version: KeyVersion::new(0).unwrap(),
        key: DeviceKey::from_bytes([7; 32]),
    }
}

pub fn config() -> Config {
    Config {
        report_every_units: 10,
        report_every_secs: 20,
        no_flow_timeout_secs: 15,
        seq_block: 4,
        compact_after_bytes: 1 << 20,
        ..Config::default()
    }
}

pub fn session(n: u8) -> SessionId {
    SessionId::from_bytes([n; 16])
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Authorized,
    Active,
    Settled,
    Expired,
}

#[derive(Debug, Clone)]
pub struct Sess {
    pub status: Status,
    pub hold: i64,
    pub price: i64,
    pub expires_at: i64,
    pub units: u64,
    pub amount: i64,
    pub settles: u32,
    pub expiry_told: bool,
}

#[derive(Debug, Clone, Default)]
pub struct ServerState {
    /// The last executed request: (seq, frame, answer body, server time it was stamped with).
    pub last: Option<(u32, Vec<u8>, Vec<u8>, u64)>,
    pub sessions: BTreeMap<[u8; 16], Sess>,
    pub executed: Vec<u32>,
    pub replays: u32,
    /// The kind of every request executed (not replayed), in order.
    pub kinds: Vec<&'static str>,
    /// The telemetry of the last heartbeat.
    pub telemetry: Option<pb::Telemetry>,
    /// Sessions started by a press.
    pub presses_started: u32,
}

/// How long the fake server keeps an ACTIVE session without a report.
pub const ACTIVE_TIMEOUT: i64 = 600;

/// The server: shared state so a test can look at it while the driver owns the transport.
#[derive(Debug, Clone)]
pub struct FakeServer {
    pub key: DeviceKey,
    pub state: Rc<RefCell<ServerState>>,
    pub time: Rc<Cell<u64>>,
    /// Fail this many posts before they reach the server.
    pub fail_before: Rc<Cell<u32>>,
    /// Execute this many posts but lose their answers.
    pub lose_answer: Rc<Cell<u32>>,
    /// The state after every post (index 0: before any).
    pub history: Rc<RefCell<Vec<ServerState>>>,
}

impl FakeServer {
    pub fn new(key: DeviceKey) -> Self {
        Self {
            key,
            state: Rc::default(),
            time: Rc::new(Cell::new(T0)),
            fail_before: Rc::default(),
            lose_answer: Rc::default(),
            history: Rc::new(RefCell::new(vec![ServerState::default()])),
        }
    }

    pub fn with_state(key: DeviceKey, state: ServerState, time: u64) -> Self {
        let s = Self::new(key);
        *s.state.borrow_mut() = state;
        s.time.set(time);
        s
    }

    pub fn pay(&self, n: u8, hold: i64, price: i64, expires_at: u64) {
        self.state.borrow_mut().sessions.insert(
            [n; 16],
            Sess {
                status: Status::Authorized,
                hold,
                price,
                expires_at: i64::try_from(expires_at).unwrap(),
                units: 0,
                amount: 0,
                settles: 0,
                expiry_told: false,
            },
        );
    }

    pub fn sess(&self, n: u8) -> Sess {
        self.state.borrow().sessions[&[n; 16]].clone()
    }

    /// Answer one request frame as the server would: (HTTP status, body).
    pub fn handle(&self, frame: &[u8]) -> (u16, Vec<u8>) {
        let Ok(req) = RequestFrame::parse(frame) else {
            return (400, b"{\"code\":\"FRAME_INVALID\"}".to_vec());
        };
        if req.verify(&self.key).is_err() {
            return (401, b"{\"code\":\"DEVICE_AUTH_FAILED\"}".to_vec());
        }
        let now = self.time.get();
        let mut st = self.state.borrow_mut();
        let (body, stamp) = match &st.last {
            // a byte-identical retry gets the saved answer, stamped as it was
            Some((seq, bytes, answer, stamp)) if *seq == req.seq() && bytes == frame => {
                (answer.clone(), *stamp)
            }
            Some((seq, _, _, _)) if req.seq() <= *seq => {
                st.replays += 1;
                (refusal("SEQUENCE_REPLAYED"), now)
            }
            _ => {
                let answer = execute(&mut st, req.body(), now);
                st.executed.push(req.seq());
                st.last = Some((req.seq(), frame.to_vec(), answer.clone(), now));
                (answer, now)
            }
        };
        let status =
            if pb::DeviceResponse::decode(body.as_slice()).is_ok_and(|r| r.error_code.is_empty()) {
                200
            } else {
                409
            };
        (
            status,
            seal_response(&self.key, &req.tag(), req.seq(), stamp, &body),
        )
    }
}

fn refusal(code: &str) -> Vec<u8> {
    pb::DeviceResponse {
        error_code: code.into(),
        ..Default::default()
    }
    .encode_to_vec()
}

fn execute(st: &mut ServerState, body: &[u8], now: u64) -> Vec<u8> {
    use pb::device_request::Kind;
    let Ok(req) = pb::DeviceRequest::decode(body) else {
        return refusal("FRAME_INVALID");
    };
    let now = i64::try_from(now).unwrap();
    for s in st.sessions.values_mut() {
        if s.status == Status::Authorized && now >= s.expires_at {
            s.status = Status::Expired;
        }
    }

    let find = |st: &mut ServerState, id: &[u8]| -> Option<[u8; 16]> {
        let id: [u8; 16] = id.try_into().ok()?;
        st.sessions.contains_key(&id).then_some(id)
    };
    st.kinds.push(match &req.kind {
        Some(Kind::Press(_)) => "press",
        Some(Kind::Heartbeat(_)) => "heartbeat",
        Some(Kind::Poll(_)) => "poll",
        Some(Kind::Start(_)) => "start",
        Some(Kind::Report(r)) if r.r#final => "final",
        Some(Kind::Report(_)) => "report",
        None => "none",
    });
    match req.kind {
        Some(Kind::Press(_)) => {
            let waiting = st
                .sessions
                .iter_mut()
                .find(|(_, s)| s.status == Status::Authorized);
            if let Some((id, s)) = waiting {
                s.status = Status::Active;
                let grant = pb::Grant {
                    session_id: id.to_vec(),
                    hold_amount: s.hold,
                    price_per_unit: s.price,
                    expires_at: now + ACTIVE_TIMEOUT,
                    use_counter: 0,
                };
                st.presses_started += 1;
                return pb::DeviceResponse {
                    grants: vec![grant],
                    status: pb::SessionStatus::Active as i32,
                    ..Default::default()
                }
                .encode_to_vec();
            }
            // A session that expired waiting is told once, to the next press.
            let expired = st
                .sessions
                .values_mut()
                .find(|s| s.status == Status::Expired && !s.expiry_told)
                .map(|s| s.expiry_told = true)
                .is_some();
            if expired {
                refusal("SESSION_EXPIRED")
            } else {
                refusal("NO_SESSION_WAITING")
            }
        }
        Some(Kind::Heartbeat(h)) => {
            st.telemetry = h.telemetry;
            pb::DeviceResponse::default().encode_to_vec()
        }
        Some(Kind::Poll(_)) => pb::DeviceResponse {
            grants: st
                .sessions
                .iter()
                .filter(|(_, s)| s.status == Status::Authorized)
                .map(|(id, s)| pb::Grant {
                    session_id: id.to_vec(),
                    hold_amount: s.hold,
                    price_per_unit: s.price,
                    expires_at: s.expires_at,
                    use_counter: 0,
                })
                .collect(),
            ..Default::default()
        }
        .encode_to_vec(),
        Some(Kind::Start(s)) => {
            let Some(id) = find(st, &s.session_id) else {
                return refusal("SESSION_NOT_FOUND");
            };
            let sess = st.sessions.get_mut(&id).unwrap();
            match sess.status {
                Status::Authorized | Status::Active => {
                    sess.status = Status::Active;
                    pb::DeviceResponse {
                        status: pb::SessionStatus::Active as i32,
                        ..Default::default()
                    }
                    .encode_to_vec()
                }
                Status::Expired => refusal("SESSION_EXPIRED"),
                Status::Settled => refusal("SESSION_NOT_STARTABLE"),
            }
        }
        Some(Kind::Report(r)) => {
            let Some(id) = find(st, &r.session_id) else {
                return refusal("SESSION_NOT_FOUND");
            };
            let sess = st.sessions.get_mut(&id).unwrap();
            match sess.status {
                Status::Active if r.units >= sess.units => {
                    sess.units = r.units;
                    if r.r#final {
                        sess.status = Status::Settled;
                        sess.amount = (i64::try_from(r.units).unwrap() * sess.price).min(sess.hold);
                        sess.settles += 1;
                        pb::DeviceResponse {
                            status: pb::SessionStatus::Settled as i32,
                            amount: sess.amount,
                            ..Default::default()
                        }
                        .encode_to_vec()
                    } else {
                        pb::DeviceResponse {
                            status: pb::SessionStatus::Active as i32,
                            ..Default::default()
                        }
                        .encode_to_vec()
                    }
                }
                Status::Active | Status::Settled => refusal("REPORT_CONFLICT"),
                Status::Authorized => refusal("SESSION_NOT_STARTED"),
                Status::Expired => refusal("SESSION_EXPIRED"),
            }
        }
        None => refusal("FRAME_INVALID"),
    }
}

#[derive(Debug)]
pub struct Lost;

impl Transport for FakeServer {
    type Error = Lost;

    fn post(&mut self, path: &str, body: &[u8], response: &mut Vec<u8>) -> Result<u16, Lost> {
        assert_eq!(path, "/v1/device");
        if self.fail_before.get() > 0 {
            self.fail_before.set(self.fail_before.get() - 1);
            return Err(Lost);
        }
        let (status, answer) = self.handle(body);
        self.history.borrow_mut().push(self.state.borrow().clone());
        if self.lose_answer.get() > 0 {
            self.lose_answer.set(self.lose_answer.get() - 1);
            return Err(Lost);
        }
        response.extend_from_slice(&answer);
        Ok(status)
    }
}

/// A machine on a fake server, with its own local clock (`local`), which differs from the server's.
pub struct Rig<L: RecordLog = MemLog> {
    pub driver: Driver<FakeServer, L>,
    pub server: FakeServer,
    pub local: u64,
    pub actions: Vec<Action>,
}

/// Local clock of the machine: starts far from the server's.
pub const LOCAL0: u64 = 1_000;

impl Rig<MemLog> {
    pub fn new() -> Self {
        let server = FakeServer::new(identity().key);
        Self::on(server, MemLog::new(), LOCAL0)
    }
}

impl Rig<MemLog> {
    pub fn with_config(config: Config) -> Self {
        let server = FakeServer::new(identity().key);
        Self::on_with(server, MemLog::new(), LOCAL0, config)
    }
}

impl<L: RecordLog> Rig<L>
where
    L::Error: std::fmt::Debug,
{
    pub fn on(server: FakeServer, log: L, local: u64) -> Self {
        Self::on_with(server, log, local, config())
    }

    pub fn on_with(server: FakeServer, log: L, local: u64, config: Config) -> Self {
        let engine = Engine::open(identity(), config, log, local).unwrap();
        let mut rig = Self {
            driver: Driver::new(engine, server.clone()),
            server,
            local,
            actions: Vec::new(),
        };
        rig.collect();
        rig
    }

    pub fn engine(&mut self) -> &mut Engine<L> {
        self.driver.engine_mut()
    }

    fn collect(&mut self) {
        let acts: Vec<Action> = self.driver.engine_mut().drain_actions().collect();
        self.actions.extend(acts);
    }

    /// Advance both clocks by `secs`.
    pub fn wait(&mut self, secs: u64) {
        self.local += secs;
        self.server.time.set(self.server.time.get() + secs);
        let now = self.local;
        self.engine().tick(now).unwrap();
        self.collect();
    }

    /// One driver step (at most one exchange).
    pub fn step(&mut self) -> Step<Lost> {
        let now = self.local;
        self.engine().tick(now).unwrap();
        let mut clock = || now;
        let step = self.driver.step(&mut clock).unwrap();
        self.collect();
        step
    }

    /// Exchange until nothing is due now (bounded).
    pub fn settle_down(&mut self) {
        for _ in 0..50 {
            if matches!(self.step(), Step::Idle) {
                return;
            }
        }
        panic!("the engine kept sending");
    }

    pub fn press(&mut self) {
        let now = self.local;
        self.engine().on_start_button(now).unwrap();
        self.collect();
    }

    pub fn meter(&mut self, units: u64) {
        let now = self.local;
        self.engine().on_meter(now, units).unwrap();
        self.collect();
    }

    pub fn end(&mut self) {
        let now = self.local;
        self.engine().on_dispense_end(now).unwrap();
        self.collect();
    }

    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// Power loss: the same flash, a new engine at local time `local` (the server keeps going).
    pub fn reboot(self, local: u64) -> Self {
        let config = *self.driver.engine().config();
        let (engine, server) = self.driver.into_parts();
        let log = engine.into_log();
        let engine = Engine::open(identity(), config, log, local).unwrap();
        let mut rig = Self {
            driver: Driver::new(engine, server.clone()),
            server,
            local,
            actions: Vec::new(),
        };
        rig.collect();
        rig
    }

    /// The kinds of the requests the server executed.
    pub fn kinds(&self) -> Vec<&'static str> {
        self.server.state.borrow().kinds.clone()
    }
}

/// A MemLog that remembers, for every append, the server's post count at that moment.
#[derive(Debug, Clone)]
pub struct Recording {
    pub log: MemLog,
    pub history: Rc<RefCell<Vec<ServerState>>>,
    /// (start offset of the record, number of posts the server had answered when it was appended)
    pub appends: Rc<RefCell<Vec<(usize, usize)>>>,
}

impl RecordLog for Recording {
    type Error = MemLogError;

    fn append(&mut self, record: &[u8]) -> Result<(), MemLogError> {
        let at = self.log.used_bytes();
        self.log.append(record)?;
        self.appends
            .borrow_mut()
            .push((at, self.history.borrow().len() - 1));
        Ok(())
    }

    fn recover(&mut self) -> Result<Vec<Vec<u8>>, MemLogError> {
        self.log.recover()
    }

    fn replace(&mut self, records: &[Vec<u8>]) -> Result<(), MemLogError> {
        self.log.replace(records)
    }

    fn used_bytes(&self) -> usize {
        self.log.used_bytes()
    }
}
