//! The command line's argument types for the server (`serve`, and the store flags `bench` and
//! `ops create-table` share) — clap lives here, in the CLI crate, not in the service. Every flag
//! can come from its `BLEPAY_*` environment variable; [`ServeArgs::resolve`] turns them into the
//! service's typed [`Config`], checked by [`Settings::validate`] like the Lambda loader's.
//!
//! Secrets (master keys, JWT secret, ops token) are never flag values — a command line is
//! readable by every local user in `/proc/<pid>/cmdline` and lands in shell history. Each comes
//! from its variable (`BLEPAY_MASTER_KEYS`, …) or a file (`--master-keys-file`, …) that must not
//! be readable by group or others, and is held in a [`SecretString`] whose `Debug` redacts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use blepay_service::config::{
    Config, ConfigError, DEFAULT_ACTIVE_TIMEOUT_SECS, DEFAULT_CURRENCY,
    DEFAULT_JWT_MAX_LIFETIME_SECS, DEFAULT_MAX_UNSTARTED_PER_USER, DEFAULT_OFFLINE_AFTER_SECS,
    DEFAULT_PAY_RATE_MAX, DEFAULT_PAY_RATE_WINDOW_SECS, DEFAULT_START_TIMEOUT_SECS,
    DEFAULT_SUPPORT_REFUND_MAX, JwtSettings, Keyring, PayLimits, ProviderSettings, SecretString,
    Settings, cfg_err,
};
use blepay_service::limits::{
    DEFAULT_GRPC_MAX_MESSAGE_BYTES, DEFAULT_H2_KEEPALIVE_INTERVAL_SECS,
    DEFAULT_H2_KEEPALIVE_TIMEOUT_SECS, DEFAULT_H2_MAX_CONCURRENT_STREAMS,
    DEFAULT_HEADER_READ_TIMEOUT_SECS, DEFAULT_IDLE_TIMEOUT_SECS, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_REQUEST_BODY_TIMEOUT_SECS, ServerLimits,
};
use blepay_service::providers::config::{DEFAULT_TOPUP_MAX, DEFAULT_TOPUP_MIN, DEFAULT_WALLET_MAX};

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
    /// Created mode 0700; the database files are 0600.
    #[arg(long, env = "BLEPAY_DATA_DIR", default_value = "./blepay-data")]
    pub data_dir: PathBuf,
    /// Master keys set by code (demo, bench, tests); never a flag. From outside: the variable
    /// `BLEPAY_MASTER_KEYS` or `--master-keys-file`.
    #[arg(skip)]
    pub master_keys: Option<SecretString>,
    /// The phone JWT HS256 secret set by code; never a flag. From outside: `BLEPAY_JWT_SECRET` or
    /// `--jwt-secret-file`.
    #[arg(skip)]
    pub jwt_secret: Option<SecretString>,
    /// The operator token set by code; never a flag. From outside: `BLEPAY_OPS_TOKEN` or
    /// `--ops-token-file`.
    #[arg(skip)]
    pub ops_token: Option<SecretString>,
    /// File holding the master keys, `version:hex64` comma-separated (versions 0-15; devices
    /// registered now use the highest version); or the keys themselves in the variable
    /// BLEPAY_MASTER_KEYS. Must not be readable by group or others. When neither is set, a key is
    /// generated into the data dir on first run (development, loopback only).
    #[arg(long, env = "BLEPAY_MASTER_KEYS_FILE")]
    pub master_keys_file: Option<PathBuf>,
    /// File holding the HS256 secret that signs phone JWTs (at least 32 bytes); or the secret in
    /// the variable BLEPAY_JWT_SECRET. When none of it and no JWKS is set, one is generated into
    /// the data dir (development, loopback only).
    #[arg(long, env = "BLEPAY_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,
    /// File holding the operator API's bearer token; or the token in the variable
    /// BLEPAY_OPS_TOKEN. When neither is set, one is generated into the data dir (development,
    /// loopback only).
    #[arg(long, env = "BLEPAY_OPS_TOKEN_FILE")]
    pub ops_token_file: Option<PathBuf>,
    #[command(flatten)]
    pub jwt: JwtArgs,
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
    /// The default daily cap on what one user's pays may hold plus capture in a UTC day, in minor
    /// units (0: no cap); operators override it per user.
    #[arg(long, env = "BLEPAY_DAILY_SPENDING_LIMIT", default_value_t = 0)]
    pub daily_spending_limit: u64,
    /// The largest refund a support operator may make, in minor units (0: support may not
    /// refund; owners may refund any amount).
    #[arg(long, env = "BLEPAY_SUPPORT_REFUND_MAX", default_value_t = DEFAULT_SUPPORT_REFUND_MAX)]
    pub support_refund_max: i64,
    /// File holding the Stripe JSON document (docs/topups.md: secretKey, webhookSecrets); or
    /// the document in the variable BLEPAY_STRIPE. Unset: Stripe top-ups are not offered.
    #[arg(long, env = "BLEPAY_STRIPE_FILE")]
    pub stripe_file: Option<PathBuf>,
    /// File holding the WeChat Pay JSON document (docs/topups.md: mchid, appid, apiV3Key,
    /// merchantPrivateKey, merchantSerial, platformKeys, notifyUrl); or the document in the
    /// variable BLEPAY_WECHATPAY. Unset: WeChat Pay top-ups are not offered.
    #[arg(long, env = "BLEPAY_WECHATPAY_FILE")]
    pub wechatpay_file: Option<PathBuf>,
    /// The smallest top-up through a provider, in minor units.
    #[arg(long, env = "BLEPAY_TOPUP_MIN", default_value_t = DEFAULT_TOPUP_MIN)]
    pub topup_min: i64,
    /// The largest top-up through a provider, in minor units.
    #[arg(long, env = "BLEPAY_TOPUP_MAX", default_value_t = DEFAULT_TOPUP_MAX)]
    pub topup_max: i64,
    /// The most a wallet's available plus held balance may reach by a provider top-up, in minor
    /// units.
    #[arg(long, env = "BLEPAY_WALLET_MAX", default_value_t = DEFAULT_WALLET_MAX)]
    pub wallet_max: i64,
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
    /// TLS-terminating proxy on the same host or network you trust), and generated development
    /// secrets on such an address.
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

/// Phone JWTs from an identity provider (OIDC) instead of the HS256 secret, and the claims
/// policy.
#[derive(Debug, Clone, clap::Args)]
pub struct JwtArgs {
    /// A JWK set file (RSA or EC P-256/P-384 keys: RS256, ES256, …) that verifies phone JWTs.
    #[arg(long = "jwt-jwks-file", env = "BLEPAY_JWT_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,
    /// The identity provider's JWKS URL (its `jwks_uri`): fetched at start, refreshed every 5
    /// minutes and when a token names an unknown key id. https (Mozilla's roots, plus
    /// --jwt-jwks-ca-file); plain http only to a loopback host.
    #[arg(long = "jwt-jwks-url", env = "BLEPAY_JWT_JWKS_URL")]
    pub jwks_url: Option<String>,
    /// A PEM file of CA certificates the JWKS URL's server is also trusted by (a private CA).
    #[arg(long = "jwt-jwks-ca-file", env = "BLEPAY_JWT_JWKS_CA_FILE")]
    pub jwks_ca_file: Option<PathBuf>,
    /// The `iss` every phone JWT must carry (required with a JWKS).
    #[arg(long = "jwt-issuer", env = "BLEPAY_JWT_ISSUER")]
    pub issuer: Option<String>,
    /// A value every phone JWT's `aud` must hold (required with a JWKS).
    #[arg(long = "jwt-audience", env = "BLEPAY_JWT_AUDIENCE")]
    pub audience: Option<String>,
    /// The longest phone JWT lifetime accepted: `exp − iat` (or `exp − now`), in seconds.
    #[arg(long = "jwt-max-lifetime-secs", env = "BLEPAY_JWT_MAX_LIFETIME_SECS",
          default_value_t = DEFAULT_JWT_MAX_LIFETIME_SECS)]
    pub max_lifetime_secs: u64,
}

impl Default for JwtArgs {
    fn default() -> Self {
        Self {
            jwks_file: None,
            jwks_url: None,
            jwks_ca_file: None,
            issuer: None,
            audience: None,
            max_lifetime_secs: DEFAULT_JWT_MAX_LIFETIME_SECS,
        }
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

/// What a `blepay` built without the `dynamodb` feature says when asked for DynamoDB.
pub const NO_DYNAMODB: &str = "this blepay was built without the DynamoDB store: \
    build it with `cargo build -p blepay --features dynamodb` (or `cargo install --path functions/blepay --features dynamodb`)";

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
            master_keys_file: None,
            jwt_secret_file: None,
            ops_token_file: None,
            jwt: JwtArgs::default(),
            start_timeout_secs: DEFAULT_START_TIMEOUT_SECS,
            offline_after_secs: DEFAULT_OFFLINE_AFTER_SECS,
            active_timeout_secs: DEFAULT_ACTIVE_TIMEOUT_SECS,
            currency: DEFAULT_CURRENCY.into(),
            max_unstarted_per_user: DEFAULT_MAX_UNSTARTED_PER_USER,
            pay_rate_max: DEFAULT_PAY_RATE_MAX,
            pay_rate_window_secs: DEFAULT_PAY_RATE_WINDOW_SECS,
            daily_spending_limit: 0,
            support_refund_max: DEFAULT_SUPPORT_REFUND_MAX,
            stripe_file: None,
            wechatpay_file: None,
            topup_min: DEFAULT_TOPUP_MIN,
            topup_max: DEFAULT_TOPUP_MAX,
            wallet_max: DEFAULT_WALLET_MAX,
            sweep_interval_secs: 5,
            transport: TransportArgs::default(),
        }
    }

    /// Resolve secrets (code-set value, then file, then variable; missing ones generated into the
    /// data dir, mode 0600, on a loopback address only) and validate.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the variable at fault.
    pub fn resolve(&self) -> Result<(Config, Generated), ConfigError> {
        self.resolve_with(&|name| std::env::var(name).ok())
    }

    /// [`ServeArgs::resolve`] with the variables read through `env` (tests).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the variable at fault.
    pub fn resolve_with(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(Config, Generated), ConfigError> {
        let mut generated = Generated::default();
        create_private_dir(&self.data_dir, &mut generated)
            .map_err(|e| cfg_err("BLEPAY_DATA_DIR", e))?;
        let env = |name: &str| {
            env(name)
                .filter(|v| !v.trim().is_empty())
                .map(SecretString::new)
        };
        let given = |value: &Option<SecretString>,
                     file: &Option<PathBuf>,
                     var: &'static str,
                     file_var: &'static str| {
            match (value, file) {
                (Some(v), _) => Ok(Some(v.clone())),
                (None, Some(path)) => read_secret_file(path)
                    .map(Some)
                    .map_err(|e| cfg_err(file_var, e)),
                (None, None) => Ok(env(var)),
            }
        };
        let master_keys = given(
            &self.master_keys,
            &self.master_keys_file,
            "BLEPAY_MASTER_KEYS",
            "BLEPAY_MASTER_KEYS_FILE",
        )?;
        let jwt_secret = given(
            &self.jwt_secret,
            &self.jwt_secret_file,
            "BLEPAY_JWT_SECRET",
            "BLEPAY_JWT_SECRET_FILE",
        )?;
        let ops_token = given(
            &self.ops_token,
            &self.ops_token_file,
            "BLEPAY_OPS_TOKEN",
            "BLEPAY_OPS_TOKEN_FILE",
        )?;
        let providers = ProviderSettings {
            stripe: given(
                &None,
                &self.stripe_file,
                "BLEPAY_STRIPE",
                "BLEPAY_STRIPE_FILE",
            )?,
            wechatpay: given(
                &None,
                &self.wechatpay_file,
                "BLEPAY_WECHATPAY",
                "BLEPAY_WECHATPAY_FILE",
            )?,
            ..self.topup_limits()
        };
        let jwks = self.jwt.jwks_file.is_some() || self.jwt.jwks_url.is_some();

        self.refuse_generated_off_loopback(&[
            (master_keys.is_none(), "BLEPAY_MASTER_KEYS"),
            (jwt_secret.is_none() && !jwks, "BLEPAY_JWT_SECRET"),
            (ops_token.is_none(), "BLEPAY_OPS_TOKEN"),
        ])?;

        let keys = match master_keys {
            Some(s) => s,
            None => dev_secret(&self.data_dir, "master-keys", &mut generated, || {
                format!("0:{}", hex::encode(rand::random::<[u8; 32]>()))
            })
            .map_err(|e| cfg_err("BLEPAY_MASTER_KEYS", e))?,
        };
        let keyring =
            Keyring::parse(keys.expose()).map_err(|e| cfg_err("BLEPAY_MASTER_KEYS", e))?;
        let jwt_secret = match jwt_secret {
            Some(s) => Some(s),
            None if jwks => None,
            None => Some(
                dev_secret(&self.data_dir, "jwt-secret", &mut generated, || {
                    hex::encode(rand::random::<[u8; 32]>())
                })
                .map_err(|e| cfg_err("BLEPAY_JWT_SECRET", e))?,
            ),
        };
        let ops_token = match ops_token {
            Some(s) => s,
            None => dev_secret(&self.data_dir, "ops-token", &mut generated, || {
                hex::encode(rand::random::<[u8; 24]>())
            })
            .map_err(|e| cfg_err("BLEPAY_OPS_TOKEN", e))?,
        };
        let settings = self.settings(jwt_secret, ops_token, providers);
        Ok((settings.validate()?.into_config(keyring), generated))
    }

    /// The service settings of the flags with the resolved secrets and providers.
    fn settings(
        &self,
        jwt_secret: Option<SecretString>,
        ops_token: SecretString,
        providers: ProviderSettings,
    ) -> Settings {
        Settings {
            jwt_secret,
            jwt: JwtSettings {
                jwks_file: self.jwt.jwks_file.clone(),
                jwks_url: self.jwt.jwks_url.clone(),
                jwks_ca_file: self.jwt.jwks_ca_file.clone(),
                issuer: self.jwt.issuer.clone(),
                audience: self.jwt.audience.clone(),
                max_lifetime_secs: self.jwt.max_lifetime_secs,
            },
            ops_token: Some(ops_token),
            start_timeout_secs: self.start_timeout_secs,
            offline_after_secs: self.offline_after_secs,
            active_timeout_secs: self.active_timeout_secs,
            currency: self.currency.clone(),
            pay_limits: PayLimits {
                max_unstarted_per_user: self.max_unstarted_per_user,
                rate_max: self.pay_rate_max,
                rate_window_secs: self.pay_rate_window_secs,
                daily_spending_limit: self.daily_spending_limit,
            },
            support_refund_max: self.support_refund_max,
            providers,
        }
    }

    /// The top-up limits of the flags, no provider yet.
    fn topup_limits(&self) -> ProviderSettings {
        ProviderSettings {
            stripe: None,
            wechatpay: None,
            topup_min: self.topup_min,
            topup_max: self.topup_max,
            wallet_max: self.wallet_max,
        }
    }

    /// Generated secrets are for a developer's machine: anyone who can read the data dir (or a
    /// backup of it) holds them. Refuse them where others can connect, unless allowed.
    fn refuse_generated_off_loopback(
        &self,
        missing: &[(bool, &'static str)],
    ) -> Result<(), ConfigError> {
        let missing: Vec<&'static str> = missing
            .iter()
            .filter_map(|&(m, var)| m.then_some(var))
            .collect();
        match missing.first() {
            Some(first) if !self.listen.ip().is_loopback() && !self.transport.allow_insecure => {
                Err(cfg_err(
                    first,
                    format!(
                        "{} unset: generated development secrets are refused on the non-loopback \
                         address {} (set them from the environment or --*-file, or pass \
                         --allow-insecure)",
                        missing.join(", "),
                        self.listen
                    ),
                ))
            }
            _ => Ok(()),
        }
    }

    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("blepay.db")
    }
}

/// Read `dir/name`, or create it with `make()` (mode 0600) and note that it was generated.
/// What a generated development secret is, and the variable that replaces it.
fn dev_secret_description(file: &str) -> (&'static str, &'static str) {
    match file {
        "master-keys" => (
            "the master keys the device keys derive from",
            "BLEPAY_MASTER_KEYS",
        ),
        "jwt-secret" => (
            "the HS256 secret phone JWTs are checked with",
            "BLEPAY_JWT_SECRET or a JWKS",
        ),
        "ops-token" => ("the bootstrap operator token", "BLEPAY_OPS_TOKEN"),
        _ => ("a secret", "its variable"),
    }
}

fn dev_secret(
    dir: &Path,
    name: &str,
    generated: &mut Generated,
    make: impl FnOnce() -> String,
) -> Result<SecretString, String> {
    let path = dir.join(name);
    match std::fs::symlink_metadata(&path) {
        Ok(_) => read_secret_file(&path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let value = make();
            write_private(&path, &value)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            generated.notes.push(format!(
                "generated {} into {} (development only: set {} in production)",
                dev_secret_description(name).0,
                path.display(),
                dev_secret_description(name).1
            ));
            Ok(SecretString::new(value))
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// A client command's secret: from `file` (checked like the server's), else the variable `var`.
///
/// # Errors
/// When the file cannot be read or is open to group or others.
pub fn client_secret(file: Option<&Path>, var: &str) -> Result<Option<SecretString>, String> {
    match file {
        Some(path) => read_secret_file(path).map(Some),
        None => Ok(std::env::var(var)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .map(|v| SecretString::new(v.trim().to_owned()))),
    }
}

/// Read a secret from `path`, trimmed; refused when group or others may read it.
///
/// # Errors
/// When it cannot be read, is empty, or its mode lets group or others read or write it.
pub fn read_secret_file(path: &Path) -> Result<SecretString, String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta =
            std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "{} is accessible to group or others (mode {mode:04o}); `chmod 600` it",
                path.display()
            ));
        }
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    // The text as read is zeroed on drop too.
    let text = SecretString::new(text);
    let value = text.expose().trim();
    if value.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(SecretString::new(value.to_owned()))
}

/// Create `dir` (and its parents) mode 0700, or tighten an existing one to 0700.
fn create_private_dir(dir: &Path, generated: &mut Generated) -> Result<(), String> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir)
            .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o077 != 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| format!("cannot chmod 700 {}: {e}", dir.display()))?;
            generated.notes.push(format!(
                "tightened the data dir {} from mode {mode:04o} to 0700",
                dir.display()
            ));
        }
    }
    Ok(())
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
        ServeArgs::local(dir.join("data"))
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn generated_secrets_are_named_in_words_with_their_production_variable() {
        for (file, var) in [
            ("master-keys", "BLEPAY_MASTER_KEYS"),
            ("jwt-secret", "BLEPAY_JWT_SECRET"),
            ("ops-token", "BLEPAY_OPS_TOKEN"),
        ] {
            let (what, replaced_by) = dev_secret_description(file);
            assert!(!what.contains('-'), "{what}");
            assert!(replaced_by.starts_with(var), "{replaced_by}");
        }
    }

    #[test]
    fn development_secrets_are_generated_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (first, generated) = args(dir.path()).resolve_with(&no_env).unwrap();
        assert_eq!(generated.notes.len(), 3);
        let (second, generated) = args(dir.path()).resolve_with(&no_env).unwrap();
        assert!(generated.notes.is_empty());
        let secret = std::fs::read_to_string(dir.path().join("data/jwt-secret")).unwrap();
        let alice = blepay_core::UserId::parse("alice").unwrap();
        let now = 1_770_000_000;
        let token = blepay_service::auth::mint_token(&secret, &alice, now, 60).unwrap();
        assert!(first.phone_tokens.verify(&token, now).is_ok());
        assert!(second.phone_tokens.verify(&token, now).is_ok());
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
        assert_eq!(
            a.resolve_with(&no_env).unwrap_err().var,
            "BLEPAY_JWT_SECRET"
        );
        // 31 bytes from the environment: still short.
        let a = args(dir.path());
        let env = |k: &str| (k == "BLEPAY_JWT_SECRET").then(|| "a".repeat(31));
        assert_eq!(a.resolve_with(&env).unwrap_err().var, "BLEPAY_JWT_SECRET");
    }

    #[test]
    fn no_secret_is_a_flag_and_debug_shows_none() {
        use clap::Parser;
        #[derive(Debug, clap::Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        for flag in ["--jwt-secret", "--ops-token", "--master-keys"] {
            let parsed =
                Cli::try_parse_from(["blepay", flag, "hunter2hunter2hunter2hunter2hunter2"]);
            assert!(parsed.is_err(), "{flag} is still accepted");
        }
        let dir = tempfile::tempdir().unwrap();
        let a = ServeArgs {
            jwt_secret: Some("hunter2hunter2hunter2hunter2hunter2".parse().unwrap()),
            ops_token: Some("opsopsopsopsopsopsops".parse().unwrap()),
            master_keys: Some(format!("0:{}", "ab".repeat(32)).parse().unwrap()),
            ..args(dir.path())
        };
        let (config, _) = a.resolve_with(&no_env).unwrap();
        for shown in [format!("{a:?}"), format!("{config:?}")] {
            assert!(
                !shown.contains("hunter2")
                    && !shown.contains("opsops")
                    && !shown.contains(&"ab".repeat(32)),
                "{shown}"
            );
        }
    }

    #[cfg(unix)]
    #[test]
    fn the_data_dir_is_private_and_open_secret_files_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = args(dir.path());
        a.resolve_with(&no_env).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&a.data_dir), 0o700);
        for name in ["master-keys", "jwt-secret", "ops-token"] {
            assert_eq!(mode(&a.data_dir.join(name)), 0o600, "{name}");
        }
        // A data dir made world-readable is tightened again.
        std::fs::set_permissions(&a.data_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (_, generated) = a.resolve_with(&no_env).unwrap();
        assert_eq!(mode(&a.data_dir), 0o700);
        assert!(
            generated.notes.iter().any(|n| n.contains("0755")),
            "{:?}",
            generated.notes
        );

        // A group-readable secret, given or generated earlier, is refused.
        let file = dir.path().join("jwt");
        std::fs::write(&file, "s".repeat(40)).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        let given = ServeArgs {
            jwt_secret_file: Some(file.clone()),
            ..args(dir.path())
        };
        let e = given.resolve_with(&no_env).unwrap_err();
        assert_eq!(e.var, "BLEPAY_JWT_SECRET_FILE");
        assert!(e.message.contains("0640"), "{e}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(given.resolve_with(&no_env).is_ok());
        let generated = a.data_dir.join("ops-token");
        std::fs::set_permissions(&generated, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(a.resolve_with(&no_env).unwrap_err().var, "BLEPAY_OPS_TOKEN");
    }

    #[test]
    fn generated_secrets_are_refused_off_loopback_unless_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let open = ServeArgs {
            listen: "0.0.0.0:8080".parse().unwrap(),
            ..args(dir.path())
        };
        let e = open.resolve_with(&no_env).unwrap_err();
        assert!(e.message.contains("--allow-insecure"), "{e}");
        assert!(
            !open.data_dir.join("jwt-secret").exists(),
            "nothing generated"
        );
        let allowed = ServeArgs {
            transport: TransportArgs {
                allow_insecure: true,
                ..open.transport.clone()
            },
            ..open.clone()
        };
        assert!(allowed.resolve_with(&no_env).is_ok());
        // Every secret given: fine on any address.
        let given = |k: &str| match k {
            "BLEPAY_MASTER_KEYS" => Some(format!("0:{}", "cd".repeat(32))),
            "BLEPAY_JWT_SECRET" => Some("j".repeat(32)),
            "BLEPAY_OPS_TOKEN" => Some("o".repeat(32)),
            _ => None,
        };
        let fresh = tempfile::tempdir().unwrap();
        let open = ServeArgs {
            data_dir: fresh.path().join("data"),
            ..open
        };
        assert!(open.resolve_with(&given).is_ok());
    }
}
