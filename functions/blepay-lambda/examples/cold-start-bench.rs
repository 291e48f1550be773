//! Cold start, warm invocation time, DynamoDB requests per operation and cost per million
//! payments of the Lambda functions (docs/performance.md §4). Measures, never asserts.
//!
//! ```sh
//! AWS_LC_SYS_NO_JITTER_ENTROPY=1 cargo build --release --locked -p blepay-lambda --bins
//! cargo run --locked -p blepay-lambda --example cold-start-bench -- \
//!     --bins target/release --runs 20 --cycles 20
//! ```
//!
//! (The harness itself may be a debug build: it only spawns and times the release binaries.)
//!
//! Each release binary (the four functions and `hello-fn`) is started `--runs` times against a
//! Lambda Runtime API stub served here, with one event queued: cold start = process spawn → the
//! stub receives `POST /2018-06-01/runtime/invocation/{id}/response`; each start's `initialized`
//! log line (JSON on stdout) gives what its init spent, step by step. The functions run against
//! Amazon DynamoDB Local (`blepay_dynamodb::testing`): the cold starts directly, the warm ones
//! through a counting proxy that also asks for `ReturnConsumedCapacity=TOTAL`, so a payment cycle
//! driven through the warm functions (verify, pay, press, final report) gives warm durations,
//! requests and capacity units per operation; the cost table multiplies them by the list prices
//! below. Zip sizes: each binary zipped alone as `bootstrap` with the `zip` CLI (`zip -9`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a measuring tool: fail loudly
#![allow(clippy::too_many_lines, clippy::cast_precision_loss)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use blepay_core::{DeviceId, KeyVersion, Slot, UseCounter};
use blepay_device_client::{Identity, Request};
use blepay_proto::{Advert, AdvertFlags, MasterKey, derive_device_key};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// List prices, us-east-1, as recorded in /work/shared/field-notes.md and the issue-5 brief (Lambda
/// GB-s: arm64, first pricing tier), read 2026-11-27 (docs/performance.md §4).
const LAMBDA_PER_REQUEST: f64 = 0.20 / 1e6;
const LAMBDA_PER_GB_S_ARM64: f64 = 0.000_013_333_4;
const DDB_PER_WRU: f64 = 0.625 / 1e6;
const DDB_PER_RRU: f64 = 0.125 / 1e6;
const HTTP_API_PER_CALL: f64 = 1.00 / 1e6;
/// The machines' plain-HTTP front door (CloudFront, HTTP requests, North America; as
/// docs/performance.md §4 "With the press flow").
const CLOUDFRONT_PER_REQUEST: f64 = 0.75 / 1e6;
/// `infra/template.yaml` Globals.Function.MemorySize.
const MEMORY_MB: f64 = 256.0;

const MASTER_KEY: [u8; 32] = [
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f,
    0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f,
];
const DEVICE: &str = "0102030405060708";
const FUNCTIONS: [&str; 5] = [
    "hello-fn",
    "blepay-verify-fn",
    "blepay-device-fn",
    "blepay-ops-fn",
    "blepay-sweeper-fn",
];

// --- the Lambda Runtime API stub -------------------------------------------------------------

#[derive(Debug)]
struct Reply {
    body: Bytes,
    error: bool,
    handed_out: Option<Instant>,
    at: Instant,
}

struct Stub {
    events: tokio::sync::Mutex<mpsc::UnboundedReceiver<Value>>,
    handed_out: Mutex<Option<Instant>>,
    replies: mpsc::UnboundedSender<Reply>,
    next_id: Mutex<u64>,
}

async fn next(State(s): State<Arc<Stub>>) -> impl IntoResponse {
    let event = s.events.lock().await.recv().await.unwrap_or(Value::Null);
    *s.handed_out.lock().unwrap() = Some(Instant::now());
    let id = {
        let mut n = s.next_id.lock().unwrap();
        *n += 1;
        format!("req-{n}")
    };
    let mut h = HeaderMap::new();
    let deadline = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 10_000;
    h.insert("lambda-runtime-aws-request-id", id.parse().unwrap());
    h.insert(
        "lambda-runtime-deadline-ms",
        deadline.to_string().parse().unwrap(),
    );
    h.insert(
        "lambda-runtime-invoked-function-arn",
        "arn:aws:lambda:us-east-1:123456789012:function:bench"
            .parse()
            .unwrap(),
    );
    h.insert("lambda-runtime-trace-id", "Root=1-0-0".parse().unwrap());
    h.insert("content-type", "application/json".parse().unwrap());
    (h, event.to_string())
}

fn reply(s: &Stub, body: Bytes, error: bool) -> StatusCode {
    let handed_out = s.handed_out.lock().unwrap().take();
    let _ = s.replies.send(Reply {
        body,
        error,
        handed_out,
        at: Instant::now(),
    });
    StatusCode::ACCEPTED
}

/// One function process and its runtime API.
struct Function {
    child: Child,
    events: mpsc::UnboundedSender<Value>,
    replies: mpsc::UnboundedReceiver<Reply>,
    /// The fields of the function's `initialized` log line (what its init spent, `init.rs`),
    /// once its stdout has carried it.
    init: Arc<Mutex<Option<Value>>>,
}

/// The `initialized` line's timings, in the order `init.rs` takes them.
const INIT_FIELDS: [&str; 6] = [
    "sdk_config_ms",
    "master_keys_ms",
    "dynamodb_warm_up_ms",
    "provider_secrets_ms",
    "jwks_ms",
    "total_ms",
];

impl Function {
    /// Spawn `bin` with `event` already queued → the process and its cold start.
    async fn cold(bin: &Path, env: &[(String, String)], event: Value) -> (Self, Duration, Reply) {
        let (etx, erx) = mpsc::unbounded_channel();
        let (rtx, rrx) = mpsc::unbounded_channel();
        let stub = Arc::new(Stub {
            events: tokio::sync::Mutex::new(erx),
            handed_out: Mutex::new(None),
            replies: rtx,
            next_id: Mutex::new(0),
        });
        let app = axum::Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(
                    |State(s): State<Arc<Stub>>, _: UrlPath<String>, b: Bytes| async move {
                        reply(&s, b, false)
                    },
                ),
            )
            .route(
                "/2018-06-01/runtime/invocation/{id}/error",
                post(
                    |State(s): State<Arc<Stub>>, _: UrlPath<String>, b: Bytes| async move {
                        reply(&s, b, true)
                    },
                ),
            )
            .route(
                "/2018-06-01/runtime/init/error",
                post(|State(s): State<Arc<Stub>>, b: Bytes| async move { reply(&s, b, true) }),
            )
            .with_state(stub);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        etx.send(event).unwrap();
        let t0 = Instant::now();
        let mut child = Command::new(bin)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("AWS_LAMBDA_RUNTIME_API", api.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", bin.file_name().unwrap())
            // JSON log lines at INFO, read below for the `initialized` line.
            .env("AWS_LAMBDA_LOG_FORMAT", "JSON")
            .env("AWS_LAMBDA_LOG_LEVEL", "INFO")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let init = Arc::new(Mutex::new(None));
        let stdout = child.stdout.take().unwrap();
        let seen = init.clone();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if v["fields"]["message"] == "initialized" {
                    *seen.lock().unwrap() = Some(v["fields"].clone());
                }
            }
        });
        let mut f = Self {
            child,
            events: etx,
            replies: rrx,
            init,
        };
        let r = tokio::time::timeout(Duration::from_secs(30), f.replies.recv())
            .await
            .expect("no answer within 30 s")
            .unwrap();
        assert!(
            !r.error,
            "{}: {}",
            bin.display(),
            String::from_utf8_lossy(&r.body)
        );
        (f, r.at - t0, r)
    }

    /// The `initialized` line's fields (the line precedes the first answer; its reader thread
    /// may lag by a moment). `None` for a binary that does not log it (hello-fn, the sweeper).
    async fn init_fields(&self) -> Option<Value> {
        for _ in 0..50 {
            if let Some(v) = self.init.lock().unwrap().clone() {
                return Some(v);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        None
    }

    /// A warm invocation → the answer and the time from handing the event out to the answer.
    async fn invoke(&mut self, event: Value) -> (Value, Duration) {
        self.events.send(event).unwrap();
        let r = tokio::time::timeout(Duration::from_secs(30), self.replies.recv())
            .await
            .expect("no answer within 30 s")
            .unwrap();
        assert!(!r.error, "{}", String::from_utf8_lossy(&r.body));
        let took = r.at - r.handed_out.unwrap_or(r.at);
        (serde_json::from_slice(&r.body).unwrap_or(Value::Null), took)
    }
}

impl Drop for Function {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// --- the DynamoDB counting proxy -------------------------------------------------------------

#[derive(Debug, Default, Clone)]
struct Usage {
    requests: BTreeMap<String, u64>,
    read_units: f64,
    write_units: f64,
}

impl Usage {
    fn total(&self) -> u64 {
        self.requests.values().sum()
    }
}

#[derive(Clone)]
struct Counter {
    upstream: String,
    http: reqwest::Client,
    usage: Arc<Mutex<Usage>>,
}

const CAPACITY_OPS: [&str; 9] = [
    "GetItem",
    "PutItem",
    "UpdateItem",
    "DeleteItem",
    "Query",
    "Scan",
    "BatchGetItem",
    "TransactGetItems",
    "TransactWriteItems",
];

async fn count(State(c): State<Counter>, headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .rsplit('.')
        .next()
        .unwrap_or("")
        .to_owned();
    let mut body = body.to_vec();
    if CAPACITY_OPS.contains(&target.as_str())
        && let Ok(mut v) = serde_json::from_slice::<Value>(&body)
    {
        v["ReturnConsumedCapacity"] = json!("TOTAL");
        body = serde_json::to_vec(&v).unwrap();
    }
    let mut req = c.http.post(&c.upstream).body(body);
    for (k, v) in &headers {
        if k != "host" && k != "content-length" {
            req = req.header(k, v);
        }
    }
    let r = req.send().await.unwrap();
    let status = r.status();
    let ct = r.headers().get("content-type").cloned();
    let bytes = r.bytes().await.unwrap();
    {
        let mut u = c.usage.lock().unwrap();
        *u.requests.entry(target.clone()).or_default() += 1;
        if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
            let caps = match &v["ConsumedCapacity"] {
                Value::Array(a) => a.clone(),
                Value::Null => Vec::new(),
                one => vec![one.clone()],
            };
            for cap in caps {
                let total = cap["CapacityUnits"].as_f64().unwrap_or(0.0);
                let (r, w) = (
                    cap["ReadCapacityUnits"].as_f64(),
                    cap["WriteCapacityUnits"].as_f64(),
                );
                match (r, w) {
                    (Some(r), Some(w)) => {
                        u.read_units += r;
                        u.write_units += w;
                    }
                    _ if target.contains("Get") || target == "Query" || target == "Scan" => {
                        u.read_units += total;
                    }
                    _ => u.write_units += total,
                }
            }
        }
    }
    let mut h = HeaderMap::new();
    if let Some(ct) = ct {
        h.insert("content-type", ct);
    }
    (StatusCode::from_u16(status.as_u16()).unwrap(), h, bytes)
}

// --- events ----------------------------------------------------------------------------------

fn fixture(name: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn with_body(mut e: Value, body: &Value) -> Value {
    e["body"] = json!(body.to_string());
    e["headers"]["content-length"] = json!(body.to_string().len().to_string());
    // The recorded token's claims are of the day it was recorded, and the functions check `iat`
    // and `exp` against the real clock here: a token issued now, for an hour.
    if let Some(claims) = e
        .pointer_mut("/requestContext/authorizer/jwt/claims")
        .and_then(Value::as_object_mut)
    {
        let t = now();
        for (k, v) in [("iat", t), ("auth_time", t), ("exp", t + 3600)] {
            claims.insert(k.into(), json!(v.to_string()));
        }
    }
    e
}

fn frame_event(identity: &Identity, seq: u32, body: &Request) -> Value {
    let mut e = fixture("device-poll.json");
    let frame = identity.request(seq, body).frame;
    e["headers"]["content-length"] = json!(frame.len().to_string());
    e["body"] = json!(B64.encode(frame));
    e
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn scheduled_event() -> Value {
    json!({"version": "0", "id": "5e1c2d3f-0000-0000-0000-000000000000",
           "detail-type": "Scheduled Event", "source": "aws.events", "account": "123456789012",
           "time": "2026-02-02T02:40:00Z", "region": "us-east-1", "resources": [], "detail": {}})
}

fn stats(mut v: Vec<Duration>) -> (f64, f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    // Nearest rank: the value at index round((n - 1) × q).
    let at = |q: f64| {
        let last = v.len() - 1;
        let i = (0..=last)
            .min_by(|a, b| {
                let (da, db) = (*a as f64 - last as f64 * q, *b as f64 - last as f64 * q);
                da.abs().total_cmp(&db.abs())
            })
            .unwrap_or(0);
        ms(v[i])
    };
    (at(0.5), at(0.9), ms(v[0]))
}

fn zip_size(bin: &Path, dir: &Path) -> Option<u64> {
    let stage = dir.join(bin.file_name()?);
    std::fs::create_dir_all(&stage).ok()?;
    std::fs::copy(bin, stage.join("bootstrap")).ok()?;
    let out = stage.join("bootstrap.zip");
    let ok = Command::new("zip")
        .args(["-q", "-9", "-X"])
        .arg(&out)
        .arg("bootstrap")
        .current_dir(&stage)
        .status()
        .ok()?
        .success();
    ok.then(|| std::fs::metadata(&out).ok().map(|m| m.len()))?
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| v.parse().expect("a number"))
}

#[tokio::main]
async fn main() {
    let runs = arg("--runs", 20);
    let cycles = arg("--cycles", 20);
    // The release binaries: `--bins DIR`, or the profile dir this harness was built in.
    let args: Vec<String> = std::env::args().collect();
    let bins: PathBuf = args
        .iter()
        .position(|a| a == "--bins")
        .and_then(|i| args.get(i + 1))
        .map_or_else(
            || {
                let exe = std::env::current_exe().unwrap();
                exe.parent().and_then(Path::parent).unwrap().to_owned()
            },
            PathBuf::from,
        );
    for f in FUNCTIONS {
        assert!(
            bins.join(f).exists(),
            "no {} — run `AWS_LC_SYS_NO_JITTER_ENTROPY=1 cargo build --release --locked -p blepay-lambda --bins` first",
            bins.join(f).display()
        );
    }

    // DynamoDB Local, a table, and the counting proxy in front of it.
    let local = blepay_dynamodb::testing::DynamoLocal::start().expect("DynamoDB Local");
    let table = blepay_dynamodb::testing::unique_table();
    let client = blepay_dynamodb::testing::client(local.endpoint(), Vec::new());
    blepay_dynamodb::create_table(&client, &table)
        .await
        .unwrap();
    let usage = Arc::new(Mutex::new(Usage::default()));
    let counter = Counter {
        upstream: local.endpoint().to_owned(),
        http: reqwest::Client::new(),
        usage: usage.clone(),
    };
    let app = axum::Router::new().fallback(count).with_state(counter);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let env: Vec<(String, String)> = [
        ("BLEPAY_DYNAMODB_TABLE", table.clone()),
        ("BLEPAY_DYNAMODB_ENDPOINT", proxy.clone()),
        (
            "BLEPAY_MASTER_KEYS",
            format!("0:{}", hex::encode(MASTER_KEY)),
        ),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "bench".into()),
        ("AWS_SECRET_ACCESS_KEY", "bench".into()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256".into()),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".into()),
        ("AWS_LAMBDA_LOG_STREAM_NAME", "bench".into()),
        ("AWS_LAMBDA_LOG_GROUP_NAME", "bench".into()),
        ("AWS_LAMBDA_LOG_LEVEL", "ERROR".into()),
        ("RUST_LOG", "error".into()),
        // One user pays `--cycles` times within minutes: above the default pay rate limit.
        ("BLEPAY_PAY_RATE_MAX", "100000".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();

    // Provision: the machine (test vector device) and the user's funds, through ops-fn.
    let device = DeviceId::parse(DEVICE).unwrap();
    let kv = KeyVersion::new(0).unwrap();
    let key = derive_device_key(
        &MasterKey::from_bytes(MASTER_KEY),
        kv,
        device,
        blepay_core::KeyEpoch::FIRST,
    );
    let identity = Identity {
        device_id: device,
        key_version: kv,
        key: key.clone(),
    };
    let (mut ops, _, _) = Function::cold(
        &bins.join("blepay-ops-fn"),
        &env,
        fixture("ops-register-device.json"),
    )
    .await;
    let topup = with_body(
        fixture("ops-topup.json"),
        &json!({"amount": "100000000", "idempotencyKey": "bench-topup"}),
    );
    let (v, _) = ops.invoke(topup).await;
    assert_eq!(v["statusCode"], 200, "topup: {v}");
    drop(ops);
    let mut seq = 0u32;

    // Cold starts, straight to DynamoDB Local: the counting proxy (a debug build, when this
    // harness is one) would add its own time to the functions' init and first request, which
    // hello-fn does not make.
    let direct: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| match k.as_str() {
            "BLEPAY_DYNAMODB_ENDPOINT" => (k.clone(), local.endpoint().to_owned()),
            _ => (k.clone(), v.clone()),
        })
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let mut cold: BTreeMap<&str, (f64, f64, f64, Option<u64>)> = BTreeMap::new();
    let mut inits: BTreeMap<&str, BTreeMap<&str, Vec<Duration>>> = BTreeMap::new();
    for f in FUNCTIONS {
        let mut times = Vec::new();
        for _ in 0..runs {
            let event = match f {
                "blepay-verify-fn" => fixture("phone-wallet.json"),
                "blepay-ops-fn" => fixture("ops-wallet.json"),
                "blepay-device-fn" => {
                    seq += 1;
                    frame_event(&identity, seq, &blepay_device_client::poll())
                }
                "blepay-sweeper-fn" => scheduled_event(),
                _ => json!({}),
            };
            let (started, t, _) = Function::cold(&bins.join(f), &direct, event).await;
            times.push(t);
            if let Some(fields) = started.init_fields().await {
                for k in INIT_FIELDS {
                    if let Some(ms) = fields[k].as_f64() {
                        inits
                            .entry(f)
                            .or_default()
                            .entry(k)
                            .or_default()
                            .push(Duration::from_secs_f64(ms / 1e3));
                    }
                }
            }
        }
        let (p50, p90, min) = stats(times);
        cold.insert(f, (p50, p90, min, zip_size(&bins.join(f), tmp.path())));
    }

    // Warm: payment cycles through one verify-fn and one device-fn process.
    let (mut phone, _, _) = Function::cold(
        &bins.join("blepay-verify-fn"),
        &env,
        fixture("phone-wallet.json"),
    )
    .await;
    seq += 1;
    let (mut machine, _, _) = Function::cold(
        &bins.join("blepay-device-fn"),
        &env,
        frame_event(&identity, seq, &blepay_device_client::poll()),
    )
    .await;
    // The firmware's flow: the phone verifies and pays, the machine's press starts the session
    // and its final report settles it (it no longer polls).
    let ops_names = ["verify", "pay", "press", "final report"];
    let mut warm: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
    let mut per_op: BTreeMap<&str, Usage> = BTreeMap::new();
    let mut measure = |name: &'static str, took: Duration, before: &Usage| {
        let after = usage.lock().unwrap().clone();
        warm.entry(name).or_default().push(took);
        let e = per_op.entry(name).or_default();
        for (k, v) in &after.requests {
            let d = v - before.requests.get(k).copied().unwrap_or(0);
            if d > 0 {
                *e.requests.entry(k.clone()).or_default() += d;
            }
        }
        e.read_units += after.read_units - before.read_units;
        e.write_units += after.write_units - before.write_units;
    };
    for c in 0..cycles {
        let slot = Slot::at(now());
        let advert = Advert::sign(
            &key,
            kv,
            device,
            slot,
            UseCounter::new(u16::try_from(c + 1).unwrap()),
            AdvertFlags::NONE,
        );
        let advert = B64.encode(advert.encode());

        let before = usage.lock().unwrap().clone();
        let (v, t) = phone
            .invoke(with_body(
                fixture("phone-verify.json"),
                &json!({"advert": advert}),
            ))
            .await;
        assert_eq!(v["statusCode"], 200, "verify: {v}");
        measure("verify", t, &before);

        let before = usage.lock().unwrap().clone();
        let body =
            json!({"advert": advert, "maxAmount": "500", "idempotencyKey": format!("bench-{c}")});
        let (v, t) = phone
            .invoke(with_body(fixture("phone-pay.json"), &body))
            .await;
        assert_eq!(v["statusCode"], 200, "pay: {v}");
        let paid: Value = serde_json::from_str(v["body"].as_str().unwrap()).unwrap();
        let sid = blepay_core::SessionId::parse(paid["sessionId"].as_str().unwrap()).unwrap();
        measure("pay", t, &before);

        for (name, req) in [
            ("press", blepay_device_client::press()),
            (
                "final report",
                blepay_device_client::report(sid, blepay_core::Units::new(2), true),
            ),
        ] {
            seq += 1;
            let before = usage.lock().unwrap().clone();
            let (v, t) = machine.invoke(frame_event(&identity, seq, &req)).await;
            assert_eq!(v["statusCode"], 200, "{name}: {v}");
            let bytes = B64.decode(v["body"].as_str().unwrap()).unwrap();
            let pending = identity.request(seq, &req);
            let answer = identity.open(&pending, &bytes).unwrap();
            assert_eq!(answer.refusal_code(), None, "{name}: {:?}", answer.body);
            measure(name, t, &before);
        }
    }

    // Report.
    let hello = cold["hello-fn"].0;
    println!("\n## Cold start ({runs} starts each, process spawn → first answer), zip sizes\n");
    println!(
        "| binary | median ms | p90 ms | min ms | ratio to hello-world (median) | zip (bootstrap) bytes |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for f in FUNCTIONS {
        let (p50, p90, min, zip) = cold[f];
        println!(
            "| `{f}` | {p50:.1} | {p90:.1} | {min:.1} | {:.2} | {} |",
            p50 / hello,
            zip.map_or("?".into(), |z| z.to_string())
        );
    }
    println!(
        "\n## What init spends (median ms of the `initialized` log line; the network steps overlap)\n"
    );
    println!("| binary | {} |", INIT_FIELDS.join(" | "));
    println!("|---|{}", "---:|".repeat(INIT_FIELDS.len()));
    for (f, fields) in &inits {
        let cells: Vec<String> = INIT_FIELDS
            .iter()
            .map(|k| {
                fields
                    .get(k)
                    .map_or("–".into(), |v| format!("{:.2}", stats(v.clone()).0))
            })
            .collect();
        println!("| `{f}` | {} |", cells.join(" | "));
    }
    println!("\n## Warm invocations ({cycles} payment cycles), DynamoDB per operation\n");
    println!("| operation | function | median ms | p90 ms | DynamoDB requests | RRU | WRU |");
    println!("|---|---|---:|---:|---|---:|---:|");
    let n = cycles as f64;
    let (mut gb_s, mut rru, mut wru, mut reqs, mut machine_reqs) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for name in ops_names {
        let (p50, p90, _) = stats(warm[name].clone());
        let u = &per_op[name];
        let f = if matches!(name, "verify" | "pay") {
            "verify-fn"
        } else {
            machine_reqs += 1.0;
            "device-fn"
        };
        let requests: Vec<String> = u
            .requests
            .iter()
            .map(|(k, v)| format!("{k} {}", *v as f64 / n))
            .collect();
        println!(
            "| {name} | {f} | {p50:.2} | {p90:.2} | {} ({}) | {:.1} | {:.1} |",
            u.total() as f64 / n,
            requests.join(", "),
            u.read_units / n,
            u.write_units / n
        );
        // Lambda bills duration rounded up to the millisecond.
        gb_s += (p50.ceil() / 1e3) * MEMORY_MB / 1024.0;
        rru += u.read_units / n;
        wru += u.write_units / n;
        reqs += 1.0;
    }
    let m = 1e6;
    let lambda_req = reqs * LAMBDA_PER_REQUEST * m;
    let lambda_dur = gb_s * LAMBDA_PER_GB_S_ARM64 * m;
    let ddb_r = rru * DDB_PER_RRU * m;
    let ddb_w = wru * DDB_PER_WRU * m;
    let api = reqs * HTTP_API_PER_CALL * m;
    let cloudfront = machine_reqs * CLOUDFRONT_PER_REQUEST * m;
    let total = lambda_req + lambda_dur + ddb_r + ddb_w + api + cloudfront;
    println!("\n## Cost per million payments (us-east-1 list prices, {MEMORY_MB} MB arm64)\n");
    println!(
        "one payment = verify + pay (phone) + press + final report (machine, through the front door) = {reqs} requests; warm medians; no cold starts, heartbeats or sweeper runs\n"
    );
    println!("| item | per payment | price | per million payments (USD) |");
    println!("|---|---:|---:|---:|");
    println!(
        "| CloudFront HTTP requests (the machine's) | {machine_reqs} | $0.75 / M | {cloudfront:.2} |"
    );
    println!("| API Gateway HTTP API calls | {reqs} | $1.00 / M | {api:.2} |");
    println!("| Lambda requests | {reqs} | $0.20 / M | {lambda_req:.2} |");
    println!("| Lambda duration | {gb_s:.6} GB-s | $0.0000133334 / GB-s | {lambda_dur:.2} |");
    println!("| DynamoDB read request units | {rru:.1} | $0.125 / M | {ddb_r:.2} |");
    println!("| DynamoDB write request units | {wru:.1} | $0.625 / M | {ddb_w:.2} |");
    println!("| **total** | | | **{total:.2}** |");
    let summary = json!({
        "runs": runs, "cycles": cycles,
        "cold_ms": cold.iter().map(|(k, v)| (k.to_string(), json!({"p50": v.0, "p90": v.1, "zip_bytes": v.3}))).collect::<serde_json::Map<_, _>>(),
        "rru_per_payment": rru, "wru_per_payment": wru, "gb_s_per_payment": gb_s,
        "usd_per_million_payments": total,
    });
    println!("\n{summary}");
}
