//! Test support: Amazon DynamoDB Local on loopback, fresh tables, and fault injection.
//!
//! [`DynamoLocal::shared`] starts one DynamoDB Local per test binary (`java -jar DynamoDBLocal.jar
//! -inMemory -sharedDb -disableTelemetry -port <free port>`), found through `DYNAMODB_LOCAL_DIR` or the tools
//! cache that `.ci/dynamodb-local.sh` installs into. It never silently skips: when the jar is
//! missing the test fails and says to run that script. The process is stopped when the test
//! binary exits (its wrapper shell waits on a pipe from this process and kills Java when the pipe
//! closes), or when an owned [`DynamoLocal`] drops.
//!
//! Test code: it panics on setup failures.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::missing_panics_doc
)]

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextMut;
use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::config::{
    BehaviorVersion, ConfigBag, Credentials, Intercept, Region, RuntimeComponents,
};
use aws_smithy_runtime_api::box_error::BoxError;
use blepay_store::Store;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::{DynamoStore, create_table};

const INSTALL_HINT: &str = "Amazon DynamoDB Local is not installed: run `.ci/dynamodb-local.sh` \
     (or set DYNAMODB_LOCAL_DIR to the directory holding DynamoDBLocal.jar)";

/// A running DynamoDB Local.
#[derive(Debug)]
pub struct DynamoLocal {
    endpoint: String,
    child: Mutex<Option<(Child, ChildStdin)>>,
}

impl DynamoLocal {
    /// The directory holding `DynamoDBLocal.jar` and `DynamoDBLocal_lib`.
    ///
    /// # Errors
    /// When it is not there, with the hint to install it.
    pub fn jar_dir() -> Result<PathBuf, String> {
        let dir = match std::env::var_os("DYNAMODB_LOCAL_DIR") {
            Some(d) if !d.is_empty() => PathBuf::from(d),
            _ => {
                let tools = std::env::var_os("BLEPAY_TOOLS_DIR")
                    .filter(|d| !d.is_empty())
                    .map(PathBuf::from)
                    .or_else(|| {
                        std::env::var_os("HOME")
                            .map(|h| PathBuf::from(h).join(".cache").join("blepay-tools"))
                    })
                    .ok_or_else(|| INSTALL_HINT.to_string())?;
                tools.join("dynamodb-local/node_modules/amplify-dynamodb-simulator/emulator")
            }
        };
        if dir.join("DynamoDBLocal.jar").is_file() {
            return Ok(dir);
        }
        // `cargo test --workspace` must work on a fresh machine: install it (npm, pinned) the
        // way CI does, once, then look again.
        if std::env::var_os("DYNAMODB_LOCAL_DIR").is_none() {
            let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../.ci/dynamodb-local.sh");
            let installed = std::process::Command::new("bash")
                .arg(&script)
                .stdout(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if installed && dir.join("DynamoDBLocal.jar").is_file() {
                return Ok(dir);
            }
        }
        Err(format!("{INSTALL_HINT} (looked in {})", dir.display()))
    }

    /// Start a DynamoDB Local on a free loopback port and wait until it accepts connections.
    ///
    /// # Errors
    /// When the jar is missing or the process does not come up.
    pub fn start() -> Result<Self, String> {
        let dir = Self::jar_dir()?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        // The shell runs Java in the background and kills it when its stdin (a pipe from us)
        // closes: at our drop, or when this process exits for any reason.
        let script = r#"java -Djava.library.path="$1/DynamoDBLocal_lib" -jar "$1/DynamoDBLocal.jar" \
            -inMemory -sharedDb -disableTelemetry -port "$2" >/dev/null 2>&1 &
            pid=$!
            read -r _ || true
            kill "$pid" 2>/dev/null
            wait "$pid" 2>/dev/null
            exit 0"#;
        // DynamoDB Local writes a metadata file into its working directory: keep it out of the
        // source tree.
        let work = std::env::temp_dir().join("blepay-dynamodb-local");
        std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
        let mut child = Command::new("sh")
            .current_dir(&work)
            .arg("-c")
            .arg(script)
            .arg("sh")
            .arg(&dir)
            .arg(port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start DynamoDB Local: {e}"))?;
        let stdin = child.stdin.take().ok_or("no stdin pipe")?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("DynamoDB Local exited at start: {status}"));
            }
            if Instant::now() > deadline {
                drop(stdin);
                let _ = child.wait();
                return Err("DynamoDB Local did not open its port within 60 s".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Self {
            endpoint: format!("http://127.0.0.1:{port}"),
            child: Mutex::new(Some((child, stdin))),
        })
    }

    /// The one DynamoDB Local of this test binary, started on first use.
    pub fn shared() -> &'static Self {
        static SHARED: OnceLock<DynamoLocal> = OnceLock::new();
        SHARED.get_or_init(|| Self::start().unwrap_or_else(|e| panic!("{e}")))
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
}

impl Drop for DynamoLocal {
    fn drop(&mut self) {
        let taken = self
            .child
            .get_mut()
            .map_or_else(|p| p.into_inner().take(), Option::take);
        if let Some((mut child, stdin)) = taken {
            drop(stdin);
            let _ = child.wait();
        }
    }
}

/// A client for `endpoint` with dummy credentials, quick SDK retries, and `extra` interceptors.
pub fn client(
    endpoint: &str,
    extra: Vec<Box<dyn FnOnce(ConfigBuilder) -> ConfigBuilder>>,
) -> Client {
    let mut config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(
            "local",
            "local",
            None,
            None,
            "blepay-test",
        ))
        .endpoint_url(endpoint)
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(3)
                .with_initial_backoff(Duration::from_millis(5))
                .with_max_backoff(Duration::from_millis(50)),
        );
    for f in extra {
        config = f(config);
    }
    Client::from_conf(config.build())
}

pub type ConfigBuilder = aws_sdk_dynamodb::config::Builder;

/// A table name not used before in this process.
pub fn unique_table() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "blepay-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

/// A store on a fresh table of the shared DynamoDB Local.
pub async fn fresh_store() -> DynamoStore {
    fresh_store_with(Vec::new()).await
}

/// A store on a fresh table, its client configured by `extra` (e.g. a fault interceptor).
pub async fn fresh_store_with(
    extra: Vec<Box<dyn FnOnce(ConfigBuilder) -> ConfigBuilder>>,
) -> DynamoStore {
    let local = DynamoLocal::shared();
    let table = unique_table();
    create_table(&client(local.endpoint(), Vec::new()), &table)
        .await
        .unwrap_or_else(|e| panic!("cannot create table {table}: {e}"));
    DynamoStore::new(client(local.endpoint(), extra), table)
}

/// The conformance suite's factory: a fresh store as `dyn Store`.
pub async fn fresh_dyn_store() -> (Arc<dyn Store>, ()) {
    (Arc::new(fresh_store().await), ())
}

/// The same, with a store that never acts on its last knowledge of a device item (every pay and
/// machine request reads first: the path taken when that knowledge is missing or stale).
pub async fn fresh_dyn_store_reading_first() -> (Arc<dyn Store>, ()) {
    (Arc::new(fresh_store().await.without_device_shadow()), ())
}

/// Delete one item of the store's table (a record an earlier build wrote with a TTL, swept).
pub async fn delete_item(store: &DynamoStore, pk: &str, sk: &str) {
    use aws_sdk_dynamodb::types::AttributeValue;
    store
        .client
        .delete_item()
        .table_name(&store.table)
        .key(crate::items::PK, AttributeValue::S(pk.to_owned()))
        .key(crate::items::SK, AttributeValue::S(sk.to_owned()))
        .send()
        .await
        .expect("delete");
}

/// Do what DynamoDB's TTL sweeper does by `now` (DynamoDB Local never deletes expired items):
/// delete every item of the store's table whose `ttl` is `<= now`. Returns how many it deleted.
pub async fn sweep_ttl(store: &DynamoStore, now: u64) -> usize {
    use aws_sdk_dynamodb::types::AttributeValue;
    let mut deleted = 0;
    let mut start = None;
    loop {
        let out = store
            .client
            .scan()
            .table_name(&store.table)
            .consistent_read(true)
            .set_exclusive_start_key(start.take())
            .send()
            .await
            .expect("scan");
        for item in out.items() {
            let expired = match item.get(crate::items::TTL) {
                Some(AttributeValue::N(t)) => t.parse::<u64>().expect("a numeric ttl") <= now,
                _ => false,
            };
            if expired {
                let key = [crate::items::PK, crate::items::SK]
                    .into_iter()
                    .map(|k| (k.to_owned(), item[k].clone()))
                    .collect();
                store
                    .client
                    .delete_item()
                    .table_name(&store.table)
                    .set_key(Some(key))
                    .send()
                    .await
                    .expect("delete");
                deleted += 1;
            }
        }
        match out.last_evaluated_key {
            Some(k) if !k.is_empty() => start = Some(k),
            _ => break,
        }
    }
    deleted
}

// ---------------------------------------------------------------------------------------------
// Fault injection
// ---------------------------------------------------------------------------------------------

/// A loopback HTTP server that answers every request with one fixed DynamoDB error.
#[derive(Debug)]
pub struct FaultServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl FaultServer {
    /// Answer `status` with the error `error_type` (e.g. 500 `InternalServerError`, 400
    /// `ThrottlingException`). Must run inside a tokio runtime.
    pub async fn start(status: u16, error_type: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let body = format!(
            r#"{{"__type":"com.amazonaws.dynamodb.v20120810#{error_type}","message":"injected fault"}}"#
        );
        let response = format!(
            "HTTP/1.1 {status} Injected\r\nContent-Type: application/x-amz-json-1.0\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let response = response.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    // Read the head and the body (Content-Length) before answering.
                    loop {
                        let Ok(read) = conn.read(&mut chunk).await else {
                            return;
                        };
                        if read == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..read]);
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                            let length = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            if buf.len() >= end + 4 + length {
                                break;
                            }
                        }
                    }
                    let _ = conn.write_all(response.as_bytes()).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        Self { addr, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sends the requests of the named DynamoDB operations (e.g. `TransactWriteItems`) to a
/// [`FaultServer`] instead, while `enabled`; the others reach DynamoDB Local.
#[derive(Debug, Clone)]
pub struct FaultInjector {
    target: String,
    operations: Vec<String>,
    enabled: Arc<std::sync::atomic::AtomicBool>,
}

impl FaultInjector {
    pub fn new(fault_url: &str, operations: &[&str]) -> Self {
        Self {
            target: fault_url.to_string(),
            operations: operations.iter().map(ToString::to_string).collect(),
            enabled: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        }
    }

    pub fn enable(&self, on: bool) {
        self.enabled.store(on, Ordering::SeqCst);
    }

    /// A client-config step registering this interceptor (for [`fresh_store_with`]).
    pub fn configure(&self) -> Box<dyn FnOnce(ConfigBuilder) -> ConfigBuilder> {
        let me = self.clone();
        Box::new(move |c: ConfigBuilder| c.interceptor(me))
    }
}

impl Intercept for FaultInjector {
    fn name(&self) -> &'static str {
        "blepay-fault-injector"
    }

    fn modify_before_transmit(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if !self.enabled.load(Ordering::SeqCst) {
            return Ok(());
        }
        let request = context.request_mut();
        let target = request.headers().get("x-amz-target").unwrap_or("");
        let operation = target.rsplit('.').next().unwrap_or(target);
        if self.operations.iter().any(|o| o == operation) {
            request.set_uri(format!("{}/", self.target))?;
        }
        Ok(())
    }
}

/// Write `text` to stderr (visible with `--nocapture`), for measurements in tests.
pub fn report(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}
