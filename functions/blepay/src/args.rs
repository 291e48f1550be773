//! The command line's argument types for the server (`serve`, and the store flags `bench` and
//! `ops create-table` share) — clap lives here, in the CLI crate, not in the service. Every flag
//! can come from its `BLEPAY_*` environment variable; [`ServeArgs::resolve`] turns them into the
//! service's typed [`Config`], checked by [`Settings::validate`] like the Lambda loader's.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use blepay_service::config::{
    Config, ConfigError, DEFAULT_ACTIVE_TIMEOUT_SECS, DEFAULT_CURRENCY,
    DEFAULT_MAX_UNSTARTED_PER_USER, DEFAULT_OFFLINE_AFTER_SECS, DEFAULT_PAY_RATE_MAX,
    DEFAULT_PAY_RATE_WINDOW_SECS, DEFAULT_START_TIMEOUT_SECS, Keyring, PayLimits, SecretString,
    Settings, cfg_err,
};
use blepay_service::limits::{
    DEFAULT_GRPC_MAX_MESSAGE_BYTES, DEFAULT_H2_KEEPALIVE_INTERVAL_SECS,
    DEFAULT_H2_KEEPALIVE_TIMEOUT_SECS, DEFAULT_H2_MAX_CONCURRENT_STREAMS,
    DEFAULT_HEADER_READ_TIMEOUT_SECS, DEFAULT_IDLE_TIMEOUT_SECS, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_REQUEST_BODY_TIMEOUT_SECS, ServerLimits,
};

/// `blepay serve`: the server's settings and its store.
#[derive(Debug, clap::Args)]
pub struct ServeCommand {
    #[command(flatten)]
    pub args: ServeArgs,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// `blepay serve` settings. Every flag can come from its `BLEPAY_*` environment variable.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (HTTP/1.1, and HTTP/2 for gRPC, on the same port).
    #[arg(long, env = "BLEPAY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Directory holding the SQLite database (blepay.db) and, in development, generated keys.
    #[arg(long, env = "BLEPAY_DATA_DIR", default_value = "./blepay-data")]
    pub data_dir: PathBuf,
    /// Master keys, `version:hex64` comma-separated (versions 0-15). Devices registered now use the
    /// highest version. When unset, a key is generated into the data dir on first run (development).
    #[arg(long, env = "BLEPAY_MASTER_KEYS", hide_env_values = true)]
    pub master_keys: Option<SecretString>,
    /// HS256 secret that signs phone JWTs. When unset, one is generated into the data dir (development).
    #[arg(long, env = "BLEPAY_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<SecretString>,
    /// Bearer token for the operator API. When unset, one is generated into the data dir (development).
    #[arg(long, env = "BLEPAY_OPS_TOKEN", hide_env_values = true)]
    pub ops_token: Option<SecretString>,
    /// Seconds a paid session waits for the machine's start before it expires and the hold is released.
    #[arg(long, env = "BLEPAY_START_TIMEOUT_SECS", default_value_t = DEFAULT_START_TIMEOUT_SECS)]
    pub start_timeout_secs: u64,
    /// A machine with no fresh authenticated message (a byte-identical retry does not count) for
    /// this long is OFFLINE, and cannot be paid. The default is two heartbeat intervals (30 min
    /// each) and ten minutes.
    #[arg(long, env = "BLEPAY_OFFLINE_AFTER_SECS", default_value_t = DEFAULT_OFFLINE_AFTER_SECS)]
    pub offline_after_secs: u64,
    /// An ACTIVE session with no report for this long is settled by the server at its last
    /// reported units (closed by timeout), the rest of its hold released and the machine freed.
    #[arg(long, env = "BLEPAY_ACTIVE_TIMEOUT_SECS", default_value_t = DEFAULT_ACTIVE_TIMEOUT_SECS)]
    pub active_timeout_secs: u64,
    /// The deployment's currency (ISO 4217): wallets hold it and every tariff must use it.
    #[arg(long, env = "BLEPAY_CURRENCY", default_value = DEFAULT_CURRENCY)]
    pub currency: String,
    /// Paid sessions not yet started (waiting for the machine's button) one user may hold at once.
    #[arg(long, env = "BLEPAY_MAX_UNSTARTED_PER_USER", default_value_t = DEFAULT_MAX_UNSTARTED_PER_USER)]
    pub max_unstarted_per_user: u32,
    /// Sessions one user may open per `--pay-rate-window-secs`.
    #[arg(long, env = "BLEPAY_PAY_RATE_MAX", default_value_t = DEFAULT_PAY_RATE_MAX)]
    pub pay_rate_max: u32,
    /// The window of `--pay-rate-max`, in seconds.
    #[arg(long, env = "BLEPAY_PAY_RATE_WINDOW_SECS", default_value_t = DEFAULT_PAY_RATE_WINDOW_SECS)]
    pub pay_rate_window_secs: u64,
    /// Seconds between runs of the sweeper (expiry of unpaid-for starts, the ACTIVE timeout).
    #[arg(long, env = "BLEPAY_SWEEP_INTERVAL_SECS", default_value_t = 5)]
    pub sweep_interval_secs: u64,
    #[command(flatten)]
    pub transport: TransportArgs,
}

/// How `blepay serve` listens: TLS, the machine listener, reflection and the limits one client
/// meets (issue 10, H1, M1, M7, L7). Every flag can come from its `BLEPAY_*` variable.
#[derive(Debug, Clone, clap::Args)]
pub struct TransportArgs {
    /// PEM certificate chain: with `--tls-key`, `--listen` speaks TLS (HTTP/1.1 and HTTP/2,
    /// gRPC). Phone JWTs and the operator token must not cross a network in the clear.
    #[arg(long, env = "BLEPAY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, env = "BLEPAY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// A second, plain-HTTP listener serving only `POST /v1/device`, for machines whose modems
    /// cannot do TLS 1.2 (each frame authenticates itself).
    #[arg(long, env = "BLEPAY_DEVICE_LISTEN")]
    pub device_listen: Option<SocketAddr>,
    /// Allow phone and operator traffic over plain HTTP on a non-loopback `--listen` (behind a
    /// TLS-terminating proxy on the same host or network you trust).
    #[arg(long, env = "BLEPAY_ALLOW_INSECURE")]
    pub allow_insecure: bool,
    /// Serve gRPC server reflection (off: it describes the whole operator API to anyone).
    #[arg(long, env = "BLEPAY_GRPC_REFLECTION")]
    pub grpc_reflection: bool,
    /// Largest gRPC request message of the phone, operator and reflection services, in bytes
    /// (DeviceService takes one frame: 1,040 bytes).
    #[arg(long, env = "BLEPAY_GRPC_MAX_MESSAGE_BYTES", default_value_t = DEFAULT_GRPC_MAX_MESSAGE_BYTES)]
    pub grpc_max_message_bytes: usize,
    /// Seconds a request head (a new connection's first request, a TLS handshake) may take.
    #[arg(long, env = "BLEPAY_HEADER_READ_TIMEOUT_SECS", default_value_t = DEFAULT_HEADER_READ_TIMEOUT_SECS)]
    pub header_read_timeout_secs: u64,
    /// Seconds a whole request body may take.
    #[arg(long, env = "BLEPAY_REQUEST_BODY_TIMEOUT_SECS", default_value_t = DEFAULT_REQUEST_BODY_TIMEOUT_SECS)]
    pub request_body_timeout_secs: u64,
    /// Seconds a connection with no request in flight stays open.
    #[arg(long, env = "BLEPAY_IDLE_TIMEOUT_SECS", default_value_t = DEFAULT_IDLE_TIMEOUT_SECS)]
    pub idle_timeout_secs: u64,
    /// Seconds between HTTP/2 keep-alive pings.
    #[arg(long, env = "BLEPAY_H2_KEEPALIVE_INTERVAL_SECS", default_value_t = DEFAULT_H2_KEEPALIVE_INTERVAL_SECS)]
    pub h2_keepalive_interval_secs: u64,
    /// Seconds an HTTP/2 ping may go unanswered before the connection is closed.
    #[arg(long, env = "BLEPAY_H2_KEEPALIVE_TIMEOUT_SECS", default_value_t = DEFAULT_H2_KEEPALIVE_TIMEOUT_SECS)]
    pub h2_keepalive_timeout_secs: u64,
    /// Open connections per listener; at the cap the listener stops accepting until one closes.
    #[arg(long, env = "BLEPAY_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Concurrent streams (requests) per HTTP/2 connection.
    #[arg(long, env = "BLEPAY_H2_MAX_CONCURRENT_STREAMS", default_value_t = DEFAULT_H2_MAX_CONCURRENT_STREAMS)]
    pub h2_max_concurrent_streams: u32,
}

impl Default for TransportArgs {
    /// The flags' defaults: plain HTTP, no machine listener, reflection off.
    fn default() -> Self {
        Self {
            tls_cert: None,
            tls_key: None,
            device_listen: None,
            allow_insecure: false,
            grpc_reflection: false,
            grpc_max_message_bytes: DEFAULT_GRPC_MAX_MESSAGE_BYTES,
            header_read_timeout_secs: DEFAULT_HEADER_READ_TIMEOUT_SECS,
            request_body_timeout_secs: DEFAULT_REQUEST_BODY_TIMEOUT_SECS,
            idle_timeout_secs: DEFAULT_IDLE_TIMEOUT_SECS,
            h2_keepalive_interval_secs: DEFAULT_H2_KEEPALIVE_INTERVAL_SECS,
            h2_keepalive_timeout_secs: DEFAULT_H2_KEEPALIVE_TIMEOUT_SECS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            h2_max_concurrent_streams: DEFAULT_H2_MAX_CONCURRENT_STREAMS,
        }
    }
}

impl TransportArgs {
    /// The listeners' limits, checked.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the variable at fault.
    pub fn limits(&self) -> Result<ServerLimits, ConfigError> {
        ServerLimits {
            header_read_timeout: Duration::from_secs(self.header_read_timeout_secs),
            request_body_timeout: Duration::from_secs(self.request_body_timeout_secs),
            idle_timeout: Duration::from_secs(self.idle_timeout_secs),
            h2_keepalive_interval: Duration::from_secs(self.h2_keepalive_interval_secs),
            h2_keepalive_timeout: Duration::from_secs(self.h2_keepalive_timeout_secs),
            max_connections: self.max_connections,
            h2_max_concurrent_streams: self.h2_max_concurrent_streams,
            grpc_max_message_bytes: self.grpc_max_message_bytes,
        }
        .validate()
    }

    /// Whether `--tls-cert`/`--tls-key` are set (clap requires both or neither).
    pub fn tls(&self) -> Option<(&Path, &Path)> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
            _ => None,
        }
    }

    /// Refuse phone and operator traffic in plain HTTP on a non-loopback `listen` unless
    /// `--allow-insecure`: phone JWTs and the operator token (which creates money) would cross
    /// the network in the clear.
    ///
    /// # Errors
    /// A [`ConfigError`] naming `BLEPAY_LISTEN`.
    pub fn check_listen(&self, listen: SocketAddr) -> Result<(), ConfigError> {
        if self.tls().is_none() && !listen.ip().is_loopback() && !self.allow_insecure {
            return Err(cfg_err(
                "BLEPAY_LISTEN",
                format!(
                    "{listen} is not a loopback address and TLS is off: phone tokens and the \
                     operator token would cross the network in the clear. Set --tls-cert and \
                     --tls-key (BLEPAY_TLS_CERT, BLEPAY_TLS_KEY), or pass --allow-insecure \
                     (BLEPAY_ALLOW_INSECURE=true) behind a TLS-terminating proxy. Machines' \
                     plain HTTP belongs on --device-listen (POST /v1/device only)"
                ),
            ));
        }
        Ok(())
    }
}

/// Which store `blepay serve` keeps its state in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum StoreKind {
    /// The embedded SQLite file in the data dir.
    #[default]
    Sqlite,
    /// Amazon DynamoDB (or a local DynamoDB-API server, with `BLEPAY_DYNAMODB_ENDPOINT`).
    Dynamodb,
}

impl StoreKind {
    /// The name the flag takes (`sqlite`, `dynamodb`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Dynamodb => "dynamodb",
        }
    }
}

/// Where `blepay serve` keeps its state. Flattened beside [`ServeArgs`] on the command line (a
/// separate struct, so code that builds `ServeArgs` directly keeps compiling and uses SQLite).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct StoreArgs {
    /// The store: `sqlite` (a file in the data dir) or `dynamodb`.
    #[arg(long = "store", env = "BLEPAY_STORE", value_enum, default_value_t = StoreKind::Sqlite)]
    pub kind: StoreKind,
    #[command(flatten)]
    pub dynamodb: DynamoArgs,
}

/// The DynamoDB table (for `serve` with `BLEPAY_STORE=dynamodb`, and `ops create-table`).
#[derive(Debug, Clone, clap::Args)]
pub struct DynamoArgs {
    /// DynamoDB endpoint URL, e.g. http://127.0.0.1:8000 for DynamoDB Local (AWS's when unset;
    /// with an endpoint and no AWS credentials or region in the environment, dummy ones are used).
    #[arg(long = "dynamodb-endpoint", env = "BLEPAY_DYNAMODB_ENDPOINT")]
    pub endpoint: Option<String>,
    /// DynamoDB table name.
    #[arg(
        long = "dynamodb-table",
        env = "BLEPAY_DYNAMODB_TABLE",
        default_value = "blepay"
    )]
    pub table: String,
}

impl Default for DynamoArgs {
    fn default() -> Self {
        Self {
            endpoint: None,
            table: "blepay".into(),
        }
    }
}

/// What resolving the config generated (development mode), to tell the operator.
#[derive(Debug, Default)]
pub struct Generated {
    pub notes: Vec<String>,
}

impl ServeArgs {
    /// The flags' defaults, listening on an ephemeral loopback port with `data_dir`: for code that
    /// runs a server itself (demo, bench, tests), which overrides what it needs with
    /// `ServeArgs { .., ..ServeArgs::local(dir) }`.
    pub fn local(data_dir: PathBuf) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir,
            master_keys: None,
            jwt_secret: None,
            ops_token: None,
            start_timeout_secs: DEFAULT_START_TIMEOUT_SECS,
            offline_after_secs: DEFAULT_OFFLINE_AFTER_SECS,
            active_timeout_secs: DEFAULT_ACTIVE_TIMEOUT_SECS,
            currency: DEFAULT_CURRENCY.into(),
            max_unstarted_per_user: DEFAULT_MAX_UNSTARTED_PER_USER,
            pay_rate_max: DEFAULT_PAY_RATE_MAX,
            pay_rate_window_secs: DEFAULT_PAY_RATE_WINDOW_SECS,
            sweep_interval_secs: 5,
            transport: TransportArgs::default(),
        }
    }

    /// Resolve secrets (generating missing ones into the data dir, mode 0600) and validate.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the variable at fault.
    pub fn resolve(&self) -> Result<(Config, Generated), ConfigError> {
        let mut generated = Generated::default();
        std::fs::create_dir_all(&self.data_dir).map_err(|e| {
            cfg_err(
                "BLEPAY_DATA_DIR",
                format!("cannot create {}: {e}", self.data_dir.display()),
            )
        })?;
        let keys = match &self.master_keys {
            Some(s) => s.clone(),
            None => dev_secret(&self.data_dir, "master-keys", &mut generated, || {
                format!("0:{}", hex::encode(rand::random::<[u8; 32]>()))
            })
            .map_err(|e| cfg_err("BLEPAY_MASTER_KEYS", e))?,
        };
        let keyring =
            Keyring::parse(keys.expose()).map_err(|e| cfg_err("BLEPAY_MASTER_KEYS", e))?;
        let jwt_secret = match &self.jwt_secret {
            Some(s) => s.clone(),
            None => dev_secret(&self.data_dir, "jwt-secret", &mut generated, || {
                hex::encode(rand::random::<[u8; 32]>())
            })
            .map_err(|e| cfg_err("BLEPAY_JWT_SECRET", e))?,
        };
        let ops_token = match &self.ops_token {
            Some(s) => s.clone(),
            None => dev_secret(&self.data_dir, "ops-token", &mut generated, || {
                hex::encode(rand::random::<[u8; 24]>())
            })
            .map_err(|e| cfg_err("BLEPAY_OPS_TOKEN", e))?,
        };
        let settings = Settings {
            jwt_secret: Some(jwt_secret),
            ops_token: Some(ops_token),
            start_timeout_secs: self.start_timeout_secs,
            offline_after_secs: self.offline_after_secs,
            active_timeout_secs: self.active_timeout_secs,
            currency: self.currency.clone(),
            pay_limits: PayLimits {
                max_unstarted_per_user: self.max_unstarted_per_user,
                rate_max: self.pay_rate_max,
                rate_window_secs: self.pay_rate_window_secs,
            },
        };
        Ok((settings.validate()?.into_config(keyring), generated))
    }

    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("blepay.db")
    }
}

/// Read `dir/name`, or create it with `make()` (mode 0600) and note that it was generated.
fn dev_secret(
    dir: &Path,
    name: &str,
    generated: &mut Generated,
    make: impl FnOnce() -> String,
) -> Result<SecretString, String> {
    let path = dir.join(name);
    match std::fs::read_to_string(&path) {
        Ok(s) => Ok(SecretString::new(s.trim().to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let value = make();
            write_private(&path, &value)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            generated.notes.push(format!(
                "generated a development {name} into {}",
                path.display()
            ));
            Ok(SecretString::new(value))
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

fn write_private(path: &Path, value: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(value.as_bytes())?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &Path) -> ServeArgs {
        ServeArgs::local(dir.to_owned())
    }

    #[test]
    fn development_secrets_are_generated_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (first, generated) = args(dir.path()).resolve().unwrap();
        assert_eq!(generated.notes.len(), 3);
        let (second, generated) = args(dir.path()).resolve().unwrap();
        assert!(generated.notes.is_empty());
        assert_eq!(first.jwt_secret.expose(), second.jwt_secret.expose());
        assert_eq!(first.ops_token.expose(), second.ops_token.expose());
    }

    #[test]
    fn plain_http_on_a_public_address_is_refused_unless_allowed() {
        let t = TransportArgs::default();
        let public: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        assert_eq!(t.check_listen(public).unwrap_err().var, "BLEPAY_LISTEN");
        assert!(t.check_listen("127.0.0.1:8080".parse().unwrap()).is_ok());
        assert!(t.check_listen("[::1]:8080".parse().unwrap()).is_ok());
        let allowed = TransportArgs {
            allow_insecure: true,
            ..TransportArgs::default()
        };
        assert!(allowed.check_listen(public).is_ok());
        let tls = TransportArgs {
            tls_cert: Some("c.pem".into()),
            tls_key: Some("k.pem".into()),
            ..TransportArgs::default()
        };
        assert!(tls.check_listen(public).is_ok());
    }

    #[test]
    fn the_flag_defaults_are_the_limits_defaults() {
        assert_eq!(
            TransportArgs::default().limits().unwrap(),
            ServerLimits::default()
        );
    }

    #[test]
    fn a_short_secret_names_its_variable() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = args(dir.path());
        a.jwt_secret = Some("short".parse().unwrap());
        assert_eq!(a.resolve().unwrap_err().var, "BLEPAY_JWT_SECRET");
    }
}
