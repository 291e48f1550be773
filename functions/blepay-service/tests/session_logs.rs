//! What the server logs of a session's life (issue 15): every transition at INFO with the
//! session's, machine's and user's ids, read back from the JSON lines a real subscriber wrote.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests: a failure is a panic

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use blepay_core::{SessionId, Telemetry, Units};
use blepay_device_client::Request;
use blepay_proto::AdvertFlags;
use serde_json::Value;
use support::{ACTIVE_TIMEOUT, Machine, Service, T0, user};
use tracing::subscriber::DefaultGuard;

const DEVICE: &str = "0102030405060708";

/// Where the subscriber writes: every line, kept for the test to read.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Log to this buffer, one JSON object per line (`BLEPAY_LOG_FORMAT=json`), INFO and above,
    /// on this thread until the guard drops (a `#[tokio::test]` runs on one thread).
    fn install(&self) -> DefaultGuard {
        let out = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || out.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    /// The INFO lines whose message starts with `message`.
    fn info(&self, message: &str) -> Vec<Value> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|v| {
                v["level"] == "INFO"
                    && v["fields"]["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with(message))
            })
            .collect()
    }
}

/// The one INFO line starting with `message` about `session`, its fields.
fn line_about(logs: &Captured, message: &str, session: &str) -> Value {
    let lines: Vec<Value> = logs
        .info(message)
        .into_iter()
        .filter(|v| v["fields"]["session"] == session)
        .collect();
    assert_eq!(lines.len(), 1, "{message:?} for {session}: {lines:?}");
    lines[0]["fields"].clone()
}

/// Every test's opening: INFO lines captured (on this thread, while the guard lives), ana's
/// machine provisioned and online, and ana has paid once (the session id; hold 500, not pressed).
async fn ana_paid() -> (Captured, DefaultGuard, Service, Machine, String) {
    let logs = Captured::default();
    let guard = logs.install();
    let service = Service::new();
    let ana = user("ana");
    let mut machine = service.provision(DEVICE, &ana).await;
    service
        .exchange(&mut machine, &Request::Heartbeat(Telemetry::default()))
        .await;
    let r = service.pay(&machine, &ana, 1, AdvertFlags::NONE).await;
    let session = r.json()["sessionId"].as_str().unwrap().to_owned();
    (logs, guard, service, machine, session)
}

#[tokio::test]
async fn a_session_the_sweeper_expires_is_logged_at_info_with_its_ids_and_released_hold() {
    // Arrange: ana pays and never presses the button.
    let (logs, _guard, service, mut machine, session) = ana_paid().await;
    let authorized = line_about(&logs, "session authorized", &session);
    assert_eq!(
        (
            &authorized["device"],
            &authorized["user"],
            &authorized["hold"]
        ),
        (
            &Value::from(DEVICE),
            &Value::from("ana"),
            &Value::from("500")
        )
    );

    // Act: the start deadline (120 s) passes and the sweeper runs.
    service.set_now(T0 + 121);
    let swept = service.app.sweep().await.unwrap();

    // Assert: one line for this session, with its machine, its user and what was released.
    assert_eq!(swept.expired, 1);
    let expired = line_about(&logs, "session expired", &session);
    assert_eq!(
        (&expired["device"], &expired["user"], &expired["released"]),
        (
            &Value::from(DEVICE),
            &Value::from("ana"),
            &Value::from("500")
        )
    );

    // A press now is a machine refusal: logged at INFO with the machine's id.
    service.exchange(&mut machine, &Request::Press).await;
    let refused = logs.info("press refused: no session waiting");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["fields"]["device"], DEVICE);
}

#[tokio::test]
async fn a_session_started_reported_and_timed_out_logs_each_transition_at_info() {
    // Arrange: ana pays, presses, the machine reports 2 litres (100) and goes silent.
    let (logs, _guard, service, mut machine, session) = ana_paid().await;
    let id = SessionId::parse(&session).unwrap();
    service.exchange(&mut machine, &Request::Press).await;
    service.set_now(T0 + 60);
    let report = Request::Report {
        session: id,
        units: Units::new(2),
        last: false,
    };
    service.exchange(&mut machine, &report).await;

    // Act: the ACTIVE timeout passes and the sweeper runs.
    service.set_now(T0 + 60 + ACTIVE_TIMEOUT + 1);
    let swept = service.app.sweep().await.unwrap();

    // Assert
    assert_eq!(swept.timed_out, 1);
    let started = line_about(&logs, "session started", &session);
    assert_eq!(
        (&started["device"], &started["user"]),
        (&Value::from(DEVICE), &Value::from("ana"))
    );
    let reported = line_about(&logs, "session reported", &session);
    assert_eq!(
        (&reported["device"], &reported["units"]),
        (&Value::from(DEVICE), &Value::from(2))
    );
    let closed = line_about(&logs, "session settled by timeout", &session);
    assert_eq!(
        (
            &closed["device"],
            &closed["user"],
            &closed["captured"],
            &closed["released"]
        ),
        (
            &Value::from(DEVICE),
            &Value::from("ana"),
            &Value::from("100"),
            &Value::from("400")
        )
    );
}

#[tokio::test]
async fn a_session_a_read_finds_overdue_is_expired_and_logged_once_without_a_sweep() {
    // Arrange: ana pays and never presses; the start deadline passes; no sweeper runs.
    let (logs, _guard, service, _machine, session) = ana_paid().await;
    let ana = user("ana");
    service.set_now(T0 + 121);

    // Act: ana reads her session (the read expires it), then reads it again.
    let path = format!("/v1/sessions/{session}");
    let first = service.phone(&ana, "GET", &path, None).await;
    let again = service.phone(&ana, "GET", &path, None).await;

    // Assert: EXPIRED both times, the expiry logged once, with its ids and the released hold.
    assert_eq!(first.json()["status"], "EXPIRED", "{:?}", first.json());
    assert_eq!(again.json()["status"], "EXPIRED");
    let expired = line_about(&logs, "session expired", &session);
    assert_eq!(
        (&expired["device"], &expired["user"], &expired["released"]),
        (
            &Value::from(DEVICE),
            &Value::from("ana"),
            &Value::from("500")
        )
    );
    assert_eq!(service.app.sweep().await.unwrap().expired, 0);
}
