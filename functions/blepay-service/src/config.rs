//! Typed configuration, loaded once from the environment (or flags); malformed values fail at start
//! with a message naming the variable. Secrets live in types whose `Debug` redacts them.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use blepay_core::{Currency, KeyVersion};
use blepay_proto::keys::MasterKey;
use zeroize::Zeroizing;

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
    #[arg(long, env = "BLEPAY_START_TIMEOUT_SECS", default_value_t = 120)]
    pub start_timeout_secs: u64,
    /// A machine with no authenticated message for this long is OFFLINE, and cannot be paid.
    #[arg(long, env = "BLEPAY_OFFLINE_AFTER_SECS", default_value_t = 300)]
    pub offline_after_secs: u64,
    /// The deployment's currency (ISO 4217): wallets hold it and every tariff must use it.
    #[arg(long, env = "BLEPAY_CURRENCY", default_value = "EUR")]
    pub currency: String,
    /// Seconds between runs of the expiry sweeper.
    #[arg(long, env = "BLEPAY_SWEEP_INTERVAL_SECS", default_value_t = 5)]
    pub sweep_interval_secs: u64,
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

/// A string secret: `Debug` prints `<redacted>`, memory is zeroed on drop.
#[derive(Clone)]
pub struct SecretString(Zeroizing<String>);

impl SecretString {
    pub fn new(s: String) -> Self {
        Self(Zeroizing::new(s))
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString(<redacted>)")
    }
}

impl std::str::FromStr for SecretString {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::new(s.to_owned()))
    }
}

/// A configuration problem, naming the variable.
#[derive(Debug, thiserror::Error)]
#[error("{var}: {message}")]
pub struct ConfigError {
    pub var: &'static str,
    pub message: String,
}

fn cfg_err(var: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        message: message.into(),
    }
}

/// The server's master keys by version.
#[derive(Clone)]
pub struct Keyring {
    keys: BTreeMap<u8, MasterKey>,
    current: (KeyVersion, MasterKey),
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("versions", &self.keys.keys().collect::<Vec<_>>())
            .field("current", &self.current.0)
            .finish()
    }
}

impl Keyring {
    /// Parse `version:hex64[,version:hex64...]`.
    ///
    /// # Errors
    /// On a malformed entry, a version above 15, a duplicate version or an empty list.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut keys = BTreeMap::new();
        for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (v, hex) = entry
                .split_once(':')
                .ok_or("each entry must be version:hex64")?;
            let v: u8 = v
                .trim()
                .parse()
                .map_err(|_| "key version must be a number 0-15")?;
            let v = KeyVersion::new(v).map_err(|e| e.to_string())?.get();
            let key = MasterKey::parse_hex(hex.trim())
                .map_err(|_| "master key must be 64 hex characters")?;
            if keys.insert(v, key).is_some() {
                return Err(format!("key version {v} given twice"));
            }
        }
        let current = match keys.iter().next_back() {
            Some((v, k)) => (KeyVersion::new(*v).map_err(|e| e.to_string())?, k.clone()),
            None => return Err("no master keys".into()),
        };
        Ok(Self { keys, current })
    }

    pub fn get(&self, v: KeyVersion) -> Option<&MasterKey> {
        self.keys.get(&v.get())
    }

    /// The version new devices get: the highest configured.
    pub fn current(&self) -> (KeyVersion, &MasterKey) {
        (self.current.0, &self.current.1)
    }
}

/// Everything the service needs, resolved.
#[derive(Debug, Clone)]
pub struct Config {
    pub keyring: Keyring,
    pub jwt_secret: SecretString,
    pub ops_token: SecretString,
    pub start_timeout_secs: u64,
    pub offline_after_secs: u64,
    pub currency: Currency,
}

/// What resolving the config generated (development mode), to tell the operator.
#[derive(Debug, Default)]
pub struct Generated {
    pub notes: Vec<String>,
}

impl ServeArgs {
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
        if jwt_secret.expose().len() < 16 {
            return Err(cfg_err(
                "BLEPAY_JWT_SECRET",
                "must be at least 16 characters",
            ));
        }
        let ops_token = match &self.ops_token {
            Some(s) => s.clone(),
            None => dev_secret(&self.data_dir, "ops-token", &mut generated, || {
                hex::encode(rand::random::<[u8; 24]>())
            })
            .map_err(|e| cfg_err("BLEPAY_OPS_TOKEN", e))?,
        };
        if ops_token.expose().len() < 16 {
            return Err(cfg_err(
                "BLEPAY_OPS_TOKEN",
                "must be at least 16 characters",
            ));
        }
        if self.start_timeout_secs == 0 {
            return Err(cfg_err("BLEPAY_START_TIMEOUT_SECS", "must be at least 1"));
        }
        let currency = Currency::parse(&self.currency)
            .map_err(|e| cfg_err("BLEPAY_CURRENCY", e.to_string()))?;
        Ok((
            Config {
                keyring,
                jwt_secret,
                ops_token,
                start_timeout_secs: self.start_timeout_secs,
                offline_after_secs: self.offline_after_secs,
                currency,
            },
            generated,
        ))
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

    #[test]
    fn a_keyring_parses_versions_and_picks_the_highest() {
        let k = Keyring::parse(&format!("0:{},3:{}", "00".repeat(32), "11".repeat(32))).unwrap();
        assert_eq!(k.current().0.get(), 3);
        assert!(k.get(KeyVersion::new(0).unwrap()).is_some());
        assert!(k.get(KeyVersion::new(1).unwrap()).is_none());
    }

    #[test]
    fn a_bad_keyring_is_refused() {
        assert!(Keyring::parse("").is_err());
        assert!(Keyring::parse("16:00").is_err());
        assert!(Keyring::parse(&format!("16:{}", "00".repeat(32))).is_err());
        assert!(Keyring::parse(&format!("0:{0},0:{0}", "00".repeat(32))).is_err());
    }

    #[test]
    fn secrets_do_not_leak_through_debug() {
        let s = SecretString::new("hunter2hunter2".into());
        assert!(!format!("{s:?}").contains("hunter2"));
        let k = Keyring::parse(&format!("0:{}", "ab".repeat(32))).unwrap();
        assert!(!format!("{k:?}").contains("abab"));
    }
}
