//! `blepay device run`, the simulated dispenser on the real device client, as a child process:
//! SIGKILLed while dispensing (a power loss) and restarted on the same state dir, it delivers the
//! final report after the restart, and the session settles exactly once.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use blepay_e2e::{TestApp, blepay_binary, random_key, random_user, spawn_app};
use serde_json::Value;

/// A `blepay device run` child; its stdout events arrive on a channel. Killed on drop.
struct Dispenser {
    child: Child,
    events: Receiver<Value>,
    seen: Vec<Value>,
}

impl Dispenser {
    fn spawn(app: &TestApp, device: &(String, String), state_dir: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(blepay_binary())
            .args(["device", "run", "--server", &app.address])
            .args(["--device-id", &device.0, "--device-key", &device.1])
            .arg("--state-dir")
            .arg(state_dir)
            .args(["--flow-units-per-sec", "4", "--report-every-secs", "1"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, events) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            events,
            seen: Vec::new(),
        }
    }

    /// The next event named `name` (earlier ones are kept in `seen`).
    fn wait_for(&mut self, name: &str, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if v["event"] == name {
                        return v;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no {name} event within {limit:?}; saw {:?}", self.seen)
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("the machine exited before {name}; saw {:?}", self.seen)
                }
            }
        }
    }

    fn count(&self, name: &str) -> usize {
        self.seen.iter().filter(|v| v["event"] == name).count()
    }

    /// SIGKILL: the power goes.
    fn kill_9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        while let Ok(v) = self.events.recv_timeout(Duration::from_millis(200)) {
            self.seen.push(v);
        }
    }
}

impl Drop for Dispenser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The advert the machine wrote for phones, once its clock is synchronised.
fn synced_advert(state_dir: &Path) -> String {
    let path = state_dir.join("advert.json");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(text) = std::fs::read_to_string(&path) {
            let v: Value = serde_json::from_str(&text).expect("advert.json is whole JSON");
            if v["clockSynced"] == true && v["busy"] == false {
                return v["advert"].as_str().unwrap().to_owned();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no synced advert in {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn device_run_killed_mid_session_delivers_the_final_report_after_restart_exactly_once() {
    // Arrange: a registered machine running, a user with money.
    let app = spawn_app().await;
    let device = app.register_device(10).await;
    let user = random_user();
    app.top_up(&user, 1000).await;
    let state = app.dir.path().join("dispenser");
    let mut first = Dispenser::spawn(&app, &device, &state, &[]);
    let advert = tokio::task::block_in_place(|| synced_advert(&state));

    // Act 1: the phone pays with the advert the machine published; the start button (a file)
    // fetches the session in one exchange; it dispenses at 4 units/s, reporting progress every
    // second.
    let paid = app.pay(&user, &advert, 500, &random_key()).await.ok();
    let session = paid["sessionId"].as_str().unwrap().to_owned();
    tokio::task::block_in_place(|| {
        std::fs::write(state.join("start"), b"").unwrap();
        let started = first.wait_for("started", Duration::from_secs(20));
        assert_eq!(started["session"], session.as_str());
        assert_eq!(started["maxUnits"], 50);
        let progress = first.wait_for("progress", Duration::from_secs(20));
        assert!(progress["units"].as_u64().unwrap() >= 1, "{progress}");
    });
    let mid = app.ops_session(&session).await;
    assert_eq!(mid["status"], "ACTIVE", "{mid}");

    // Act 2: power loss mid-session, then a restart on the same state dir.
    tokio::task::block_in_place(|| first.kill_9());
    assert_eq!(first.count("settled"), 0, "{:?}", first.seen);
    let mut second = Dispenser::spawn(&app, &device, &state, &["--sessions", "1"]);
    let settled = tokio::task::block_in_place(|| {
        let recovered = second.wait_for("recovered", Duration::from_secs(10));
        assert_eq!(recovered["session"], session.as_str());
        second.wait_for("settled", Duration::from_secs(30))
    });

    // Assert: the final report came after the restart, for the last reported units, once.
    let units = settled["units"].as_u64().unwrap();
    assert!(units >= 1, "{settled}");
    let stopped = second
        .seen
        .iter()
        .find(|v| v["event"] == "stopped")
        .unwrap();
    assert_eq!(
        (stopped["reason"].as_str(), stopped["units"].as_u64()),
        (Some("INTERRUPTED"), Some(units))
    );
    assert_eq!(settled["session"], session.as_str());
    assert_eq!(settled["amount"], units * 10);
    assert_eq!(settled["error"], Value::Null);
    let status = tokio::task::block_in_place(|| second.child.wait().unwrap());
    assert!(status.success(), "--sessions 1 exits cleanly: {status}");
    while let Ok(v) = second.events.try_recv() {
        second.seen.push(v);
    }
    assert_eq!(second.count("settled"), 1, "{:?}", second.seen);
    let s = app.ops_session(&session).await;
    let amount = i64::try_from(units * 10).unwrap();
    assert_eq!(
        (
            s["status"].as_str(),
            s["units"].as_str(),
            s["amount"].as_str()
        ),
        (
            Some("SETTLED"),
            Some(units.to_string().as_str()),
            Some(amount.to_string().as_str())
        ),
        "{s}"
    );
    let w = app.wallet(&user).await;
    assert_eq!(
        (
            w["available"].as_str(),
            w["held"].as_str(),
            w["spent"].as_str()
        ),
        (
            Some((1000 - amount).to_string().as_str()),
            Some("0"),
            Some(amount.to_string().as_str())
        ),
        "{w}"
    );
    assert!(app.audit().await.reconciles());
    println!(
        "before the kill: {:?}\nafter the restart: {:?}",
        first.seen, second.seen
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn device_run_is_silent_while_idle_and_a_press_nobody_paid_for_starts_nothing() {
    // Arrange: a running machine with the default 30-minute heartbeat.
    let app = spawn_app().await;
    let device = app.register_device(10).await;
    let user = random_user();
    app.top_up(&user, 1000).await;
    let state = app.dir.path().join("idle-dispenser");
    let mut m = Dispenser::spawn(&app, &device, &state, &["--units", "2", "--sessions", "1"]);
    let advert = tokio::task::block_in_place(|| {
        m.wait_for("heartbeat", Duration::from_secs(20));
        synced_advert(&state)
    });
    let seen = app.ops_device(&device.0).await["lastSeenAt"].clone();

    // Act 1: idle for 2 s, then the button with nothing paid.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        app.ops_device(&device.0).await["lastSeenAt"],
        seen,
        "an idle machine sends nothing between heartbeats"
    );
    let before = app.snapshot(&user).await;
    let refused = tokio::task::block_in_place(|| {
        std::fs::write(state.join("start"), b"").unwrap();
        m.wait_for("not-started", Duration::from_secs(20))
    });

    // Assert 1: "pay in the app first", nothing changed.
    assert_eq!(
        (
            refused["reason"].as_str(),
            refused["payInAppFirst"].as_bool()
        ),
        (Some("NO_SESSION_WAITING"), Some(true)),
        "{refused}"
    );
    let after = app.snapshot(&user).await;
    assert_eq!((&after.0, &after.1), (&before.0, &before.1));

    // Act 2: the phone pays, the user presses: one exchange starts it; 2 units, settled.
    let paid = app.pay(&user, &advert, 100, &random_key()).await.ok();
    let settled = tokio::task::block_in_place(|| {
        std::fs::write(state.join("start"), b"").unwrap();
        let started = m.wait_for("started", Duration::from_secs(20));
        assert_eq!(started["session"], paid["sessionId"]);
        m.wait_for("settled", Duration::from_secs(30))
    });

    // Assert 2
    assert_eq!(
        (settled["units"].as_u64(), settled["amount"].as_i64()),
        (Some(2), Some(20))
    );
    let presses = m.seen.iter().filter(|v| v["event"] == "pressed").count();
    assert_eq!(presses, 2, "{:?}", m.seen);
    assert_eq!(m.count("heartbeat"), 1, "{:?}", m.seen);
    assert!(app.audit().await.reconciles());
}
