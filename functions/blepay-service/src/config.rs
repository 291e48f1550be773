//! Typed configuration. Each front end reads its own inputs — `blepay serve` its flags and
//! `BLEPAY_*` variables (clap, in the `blepay` crate), the Lambda functions their environment
//! (`blepay-lambda`'s loader) — into one [`Settings`], and [`Settings::validate`] is the one place
//! they are checked: a malformed value fails at start with a message naming the variable. With
//! a [`Keyring`] the valid settings make the service's [`Config`]. Secrets live in types whose
//! `Debug` redacts them.

use std::collections::BTreeMap;
use std::fmt;

use std::path::PathBuf;

use blepay_core::{Amount, Currency, KeyVersion};

pub use crate::operator::DEFAULT_SUPPORT_REFUND_MAX;
use blepay_proto::keys::MasterKey;

pub use crate::providers::config::{ProviderSettings, Providers, TopUpLimits};
use zeroize::Zeroizing;

pub use crate::auth::{
    DEFAULT_JWT_MAX_LIFETIME_SECS, MIN_JWT_SECRET_BYTES, PhoneKeys, TokenPolicy, TokenVerifier,
};

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

/// A [`ConfigError`] for `var`.
pub fn cfg_err(var: &'static str, message: impl Into<String>) -> ConfigError {
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

/// Everything the service needs, resolved (built by [`ValidSettings::into_config`]; tests may
/// build one directly).
#[derive(Debug, Clone)]
pub struct Config {
    pub keyring: Keyring,
    /// Verifies phone JWTs (an HS256 secret, a JWKS file or URL, and the claims policy).
    pub phone_tokens: TokenVerifier,
    pub ops_token: SecretString,
    pub start_timeout_secs: u64,
    pub offline_after_secs: u64,
    pub active_timeout_secs: u64,
    pub currency: Currency,
    /// How many unstarted sessions a user may hold and how fast they may pay.
    pub pay_limits: PayLimits,
    /// `BLEPAY_SUPPORT_REFUND_MAX`: the largest refund a support operator may make.
    pub support_refund_max: Amount,
    /// The payment providers users top up through (none unless configured).
    pub providers: Providers,
}

/// Per-user limits on pay (issue 10, M4): locking machines must cost something. A pay refused by
/// either changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayLimits {
    /// `BLEPAY_MAX_UNSTARTED_PER_USER`: AUTHORIZED sessions (paid, not yet started, not past
    /// their start deadline) one user may have open at once.
    pub max_unstarted_per_user: u32,
    /// `BLEPAY_PAY_RATE_MAX`: sessions one user may open per window.
    pub rate_max: u32,
    /// `BLEPAY_PAY_RATE_WINDOW_SECS`: the window of `rate_max`.
    pub rate_window_secs: u64,
    /// `BLEPAY_DAILY_SPENDING_LIMIT`: the default cap, in minor units, on what one user's pays
    /// may hold plus capture in one UTC day (0: no cap); an operator may override it per user
    /// (`PUT /v1/ops/wallets/{userId}/spending-limit`).
    pub daily_spending_limit: u64,
}

/// `BLEPAY_MAX_UNSTARTED_PER_USER` when unset: one machine waiting for its button per user.
pub const DEFAULT_MAX_UNSTARTED_PER_USER: u32 = 1;
/// `BLEPAY_PAY_RATE_MAX` when unset.
pub const DEFAULT_PAY_RATE_MAX: u32 = 10;
/// `BLEPAY_PAY_RATE_WINDOW_SECS` when unset: 10 sessions per hour.
pub const DEFAULT_PAY_RATE_WINDOW_SECS: u64 = 3600;
/// The largest `BLEPAY_MAX_UNSTARTED_PER_USER` accepted.
pub const MAX_UNSTARTED_PER_USER: u32 = 16;
/// The longest `BLEPAY_PAY_RATE_WINDOW_SECS` accepted: one day.
pub const MAX_PAY_RATE_WINDOW_SECS: u64 = 24 * 60 * 60;

impl Default for PayLimits {
    fn default() -> Self {
        Self {
            max_unstarted_per_user: DEFAULT_MAX_UNSTARTED_PER_USER,
            rate_max: DEFAULT_PAY_RATE_MAX,
            rate_window_secs: DEFAULT_PAY_RATE_WINDOW_SECS,
            daily_spending_limit: 0,
        }
    }
}

impl PayLimits {
    /// Check the limits.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the variable: an unstarted cap of 0 or above
    /// [`MAX_UNSTARTED_PER_USER`], a rate of 0, a window of 0 or above
    /// [`MAX_PAY_RATE_WINDOW_SECS`].
    pub fn validate(self) -> Result<Self, ConfigError> {
        if self.max_unstarted_per_user == 0 || self.max_unstarted_per_user > MAX_UNSTARTED_PER_USER
        {
            return Err(cfg_err(
                "BLEPAY_MAX_UNSTARTED_PER_USER",
                format!("must be 1 to {MAX_UNSTARTED_PER_USER}"),
            ));
        }
        if self.rate_max == 0 {
            return Err(cfg_err("BLEPAY_PAY_RATE_MAX", "must be at least 1"));
        }
        if self.rate_window_secs == 0 || self.rate_window_secs > MAX_PAY_RATE_WINDOW_SECS {
            return Err(cfg_err(
                "BLEPAY_PAY_RATE_WINDOW_SECS",
                format!("must be 1 to {MAX_PAY_RATE_WINDOW_SECS}"),
            ));
        }
        if i64::try_from(self.daily_spending_limit)
            .ok()
            .and_then(|v| Amount::new(v).ok())
            .is_none()
        {
            return Err(cfg_err(
                "BLEPAY_DAILY_SPENDING_LIMIT",
                format!("must be 0 (no cap) to {} minor units", Amount::MAX),
            ));
        }
        Ok(self)
    }

    /// The default daily cap (`None`: no cap).
    pub fn daily_limit(&self) -> Option<Amount> {
        i64::try_from(self.daily_spending_limit)
            .ok()
            .and_then(|v| Amount::new(v).ok())
            .filter(|a| *a != Amount::ZERO)
    }
}

/// `BLEPAY_START_TIMEOUT_SECS` when unset.
pub const DEFAULT_START_TIMEOUT_SECS: u64 = 120;
/// The machines' default heartbeat interval (the device client's; docs/protocol.md): 30 min.
pub const HEARTBEAT_INTERVAL_SECS: u64 = 30 * 60;
/// `BLEPAY_OFFLINE_AFTER_SECS` when unset: two missed heartbeats plus 10 minutes of slack
/// (4200 s = 70 min). One lost heartbeat (a 2G blip) does not make a machine OFFLINE; a machine
/// that stopped talking is OFFLINE within 70 minutes. A machine whose link is down says so at
/// once in its advert (the link-down flag), so pay does not wait for this timeout to refuse it.
pub const DEFAULT_OFFLINE_AFTER_SECS: u64 = 2 * HEARTBEAT_INTERVAL_SECS + 600;
/// `BLEPAY_ACTIVE_TIMEOUT_SECS` when unset: 4 hours. An ACTIVE session whose machine has sent
/// nothing for it (no progress or final report) for this long is settled by the server at its
/// last reported units. The longest legitimate cycle without progress reports is a washer's
/// (about 2 h); 4 h leaves it twice that, and a dead machine's user gets the rest of the hold
/// back the same day — hours, not days.
pub const DEFAULT_ACTIVE_TIMEOUT_SECS: u64 = 4 * 60 * 60;
/// The largest `BLEPAY_ACTIVE_TIMEOUT_SECS` accepted: 7 days.
pub const MAX_ACTIVE_TIMEOUT_SECS: u64 = 7 * 24 * 60 * 60;
/// `BLEPAY_CURRENCY` when unset.
pub const DEFAULT_CURRENCY: &str = "EUR";
/// The shortest `BLEPAY_OPS_TOKEN` accepted (`BLEPAY_JWT_SECRET`: [`MIN_JWT_SECRET_BYTES`]).
pub const MIN_SECRET_LEN: usize = 16;
/// The longest `BLEPAY_JWT_MAX_LIFETIME_SECS` accepted: 30 days.
pub const MAX_JWT_LIFETIME_SECS: u64 = 30 * 24 * 60 * 60;

/// How phone JWTs are verified besides `BLEPAY_JWT_SECRET` (HS256): an OIDC provider's keys,
/// and what the claims must say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtSettings {
    /// `BLEPAY_JWT_JWKS_FILE`: a JWK set (RSA / EC P-256 / P-384 keys) on disk.
    pub jwks_file: Option<PathBuf>,
    /// `BLEPAY_JWT_JWKS_URL`: a JWK set fetched at start and refreshed (the provider's
    /// `jwks_uri`).
    pub jwks_url: Option<String>,
    /// `BLEPAY_JWT_JWKS_CA_FILE`: PEM CA certificates the JWKS URL's server is also trusted by
    /// (a private CA; Mozilla's roots are always trusted).
    pub jwks_ca_file: Option<PathBuf>,
    /// `BLEPAY_JWT_ISSUER`: the required `iss` (required with a JWKS).
    pub issuer: Option<String>,
    /// `BLEPAY_JWT_AUDIENCE`: the required `aud` (required with a JWKS).
    pub audience: Option<String>,
    /// `BLEPAY_JWT_MAX_LIFETIME_SECS`: the longest token lifetime accepted.
    pub max_lifetime_secs: u64,
}

impl Default for JwtSettings {
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

/// The service's settings as a front end read them, not yet checked; each field is named after
/// its variable. [`Settings::validate`] checks them.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `BLEPAY_JWT_SECRET`: the HS256 secret that signs phone JWTs (at least
    /// [`MIN_JWT_SECRET_BYTES`] bytes); or a JWKS in `jwt`, not both.
    pub jwt_secret: Option<SecretString>,
    /// The JWKS alternatives to `jwt_secret` and the claims policy.
    pub jwt: JwtSettings,
    /// `BLEPAY_OPS_TOKEN`: the operator API's bearer token.
    pub ops_token: Option<SecretString>,
    /// `BLEPAY_START_TIMEOUT_SECS`: how long a paid session waits for the machine's start.
    pub start_timeout_secs: u64,
    /// `BLEPAY_OFFLINE_AFTER_SECS`: a machine with no fresh authenticated message for this long
    /// is OFFLINE.
    pub offline_after_secs: u64,
    /// `BLEPAY_ACTIVE_TIMEOUT_SECS`: an ACTIVE session with no report for this long is settled by
    /// timeout at its last reported units.
    pub active_timeout_secs: u64,
    /// `BLEPAY_CURRENCY`: the deployment's currency (ISO 4217).
    pub currency: String,
    /// `BLEPAY_MAX_UNSTARTED_PER_USER`, `BLEPAY_PAY_RATE_MAX`, `BLEPAY_PAY_RATE_WINDOW_SECS`.
    pub pay_limits: PayLimits,
    /// `BLEPAY_SUPPORT_REFUND_MAX`: the largest refund a support operator may make, in minor
    /// units (0: support may not refund).
    pub support_refund_max: i64,
    /// The payment providers users top up through, and the top-up limits.
    pub providers: ProviderSettings,
}

impl Default for Settings {
    /// The defaults of every variable; no secrets.
    fn default() -> Self {
        Self {
            jwt_secret: None,
            jwt: JwtSettings::default(),
            ops_token: None,
            start_timeout_secs: DEFAULT_START_TIMEOUT_SECS,
            offline_after_secs: DEFAULT_OFFLINE_AFTER_SECS,
            active_timeout_secs: DEFAULT_ACTIVE_TIMEOUT_SECS,
            currency: DEFAULT_CURRENCY.to_owned(),
            pay_limits: PayLimits::default(),
            support_refund_max: DEFAULT_SUPPORT_REFUND_MAX,
            providers: ProviderSettings::default(),
        }
    }
}

/// Settings that passed [`Settings::validate`] (only it builds one); with a [`Keyring`] they make
/// a [`Config`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ValidSettings {
    /// The phone token verifier, when a key source (secret, JWKS file or URL) was set.
    pub phone_tokens: Option<TokenVerifier>,
    /// The claims policy (also what the Lambda functions check of the gateway's claims).
    pub token_policy: TokenPolicy,
    /// At least [`MIN_SECRET_LEN`] characters when set.
    pub ops_token: Option<SecretString>,
    /// At least 1.
    pub start_timeout_secs: u64,
    /// At least 1.
    pub offline_after_secs: u64,
    /// At least 1, at most [`MAX_ACTIVE_TIMEOUT_SECS`].
    pub active_timeout_secs: u64,
    pub currency: Currency,
    pub pay_limits: PayLimits,
    pub support_refund_max: Amount,
    pub providers: Providers,
}

impl Settings {
    /// Check every setting: the one place the rules live.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the variable at fault: a JWT secret shorter than
    /// [`MIN_JWT_SECRET_BYTES`], an ops token shorter than [`MIN_SECRET_LEN`], two phone key
    /// sources, a JWKS without issuer and audience, an unreadable JWKS file, a timeout of 0, an active timeout above [`MAX_ACTIVE_TIMEOUT_SECS`], a
    /// currency that is not ISO 4217.
    pub fn validate(self) -> Result<ValidSettings, ConfigError> {
        let secret = |value: Option<SecretString>, var: &'static str| match value {
            Some(s) if s.expose().len() < MIN_SECRET_LEN => {
                Err(cfg_err(var, "must be at least 16 characters"))
            }
            s => Ok(s),
        };
        let (phone_tokens, token_policy) = phone_tokens(self.jwt_secret, self.jwt)?;
        let ops_token = secret(self.ops_token, "BLEPAY_OPS_TOKEN")?;
        if self.start_timeout_secs == 0 {
            return Err(cfg_err("BLEPAY_START_TIMEOUT_SECS", "must be at least 1"));
        }
        if self.offline_after_secs == 0 {
            return Err(cfg_err("BLEPAY_OFFLINE_AFTER_SECS", "must be at least 1"));
        }
        if self.active_timeout_secs == 0 {
            return Err(cfg_err("BLEPAY_ACTIVE_TIMEOUT_SECS", "must be at least 1"));
        }
        if self.active_timeout_secs > MAX_ACTIVE_TIMEOUT_SECS {
            return Err(cfg_err(
                "BLEPAY_ACTIVE_TIMEOUT_SECS",
                format!(
                    "must be at most {MAX_ACTIVE_TIMEOUT_SECS} (7 days): a hold frozen longer is \
                     not a timeout"
                ),
            ));
        }
        let currency = Currency::parse(&self.currency)
            .map_err(|e| cfg_err("BLEPAY_CURRENCY", e.to_string()))?;
        let pay_limits = self.pay_limits.validate()?;
        let support_refund_max = Amount::new(self.support_refund_max).map_err(|e| {
            cfg_err(
                "BLEPAY_SUPPORT_REFUND_MAX",
                format!("must be 0..={} minor units: {e}", Amount::MAX.minor()),
            )
        })?;
        let providers = self.providers.build()?;
        Ok(ValidSettings {
            providers,
            phone_tokens,
            token_policy,
            ops_token,
            start_timeout_secs: self.start_timeout_secs,
            offline_after_secs: self.offline_after_secs,
            active_timeout_secs: self.active_timeout_secs,
            currency,
            pay_limits,
            support_refund_max,
        })
    }
}

impl ValidSettings {
    /// The service configuration with `keyring`. A secret left unset gets a random value nobody
    /// knows, so nothing can authenticate with it (deployed on Lambda, the gateway's authorizers
    /// authenticate callers instead).
    pub fn into_config(self, keyring: Keyring) -> Config {
        let unguessable = || SecretString::new(hex::encode(rand::random::<[u8; 32]>()));
        let policy = self.token_policy;
        let phone_tokens = self
            .phone_tokens
            .unwrap_or_else(|| TokenVerifier::unguessable(policy));
        Config {
            keyring,
            phone_tokens,
            ops_token: self.ops_token.unwrap_or_else(unguessable),
            start_timeout_secs: self.start_timeout_secs,
            offline_after_secs: self.offline_after_secs,
            active_timeout_secs: self.active_timeout_secs,
            currency: self.currency,
            pay_limits: self.pay_limits,
            support_refund_max: self.support_refund_max,
            providers: self.providers,
        }
    }
}

/// The phone token verifier of at most one key source, and the claims policy.
fn phone_tokens(
    secret: Option<SecretString>,
    jwt: JwtSettings,
) -> Result<(Option<TokenVerifier>, TokenPolicy), ConfigError> {
    if jwt.max_lifetime_secs == 0 || jwt.max_lifetime_secs > MAX_JWT_LIFETIME_SECS {
        return Err(cfg_err(
            "BLEPAY_JWT_MAX_LIFETIME_SECS",
            format!("must be 1 to {MAX_JWT_LIFETIME_SECS} (30 days)"),
        ));
    }
    let policy = TokenPolicy {
        issuer: jwt.issuer,
        audience: jwt.audience,
        max_lifetime_secs: jwt.max_lifetime_secs,
    };
    let mut sources: Vec<PhoneKeys> = Vec::new();
    sources.extend(secret.map(PhoneKeys::Hs256));
    sources.extend(jwt.jwks_file.map(PhoneKeys::JwksFile));
    if jwt.jwks_ca_file.is_some() && jwt.jwks_url.is_none() {
        return Err(cfg_err(
            "BLEPAY_JWT_JWKS_CA_FILE",
            "applies only with BLEPAY_JWT_JWKS_URL",
        ));
    }
    let ca_file = jwt.jwks_ca_file;
    sources.extend(jwt.jwks_url.map(|url| PhoneKeys::JwksUrl { url, ca_file }));
    if sources.len() > 1 {
        return Err(cfg_err(
            "BLEPAY_JWT_SECRET",
            "set only one of BLEPAY_JWT_SECRET, BLEPAY_JWT_JWKS_FILE, BLEPAY_JWT_JWKS_URL",
        ));
    }
    let Some(source) = sources.pop() else {
        return Ok((None, policy));
    };
    if !matches!(source, PhoneKeys::Hs256(_)) {
        // An identity provider's keys sign tokens for every application it serves: without
        // both checks, any of them would be a blepay token.
        if policy.issuer.is_none() {
            return Err(cfg_err(
                "BLEPAY_JWT_ISSUER",
                "must be set with a JWKS (the identity provider's issuer URL)",
            ));
        }
        if policy.audience.is_none() {
            return Err(cfg_err(
                "BLEPAY_JWT_AUDIENCE",
                "must be set with a JWKS (blepay's client id or API audience)",
            ));
        }
    }
    let verifier = TokenVerifier::from_source(&source, policy.clone())?;
    Ok((Some(verifier), policy))
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

    #[test]
    fn malformed_settings_name_their_variable() {
        for (settings, var) in [
            (
                Settings {
                    jwt_secret: Some(SecretString::new("short".into())),
                    ..Settings::default()
                },
                "BLEPAY_JWT_SECRET",
            ),
            (
                Settings {
                    ops_token: Some(SecretString::new("short".into())),
                    ..Settings::default()
                },
                "BLEPAY_OPS_TOKEN",
            ),
            (
                Settings {
                    start_timeout_secs: 0,
                    ..Settings::default()
                },
                "BLEPAY_START_TIMEOUT_SECS",
            ),
            (
                Settings {
                    offline_after_secs: 0,
                    ..Settings::default()
                },
                "BLEPAY_OFFLINE_AFTER_SECS",
            ),
            (
                Settings {
                    active_timeout_secs: 0,
                    ..Settings::default()
                },
                "BLEPAY_ACTIVE_TIMEOUT_SECS",
            ),
            (
                Settings {
                    active_timeout_secs: MAX_ACTIVE_TIMEOUT_SECS + 1,
                    ..Settings::default()
                },
                "BLEPAY_ACTIVE_TIMEOUT_SECS",
            ),
            (
                Settings {
                    currency: "euro".into(),
                    ..Settings::default()
                },
                "BLEPAY_CURRENCY",
            ),
            (
                Settings {
                    pay_limits: PayLimits {
                        max_unstarted_per_user: 0,
                        ..PayLimits::default()
                    },
                    ..Settings::default()
                },
                "BLEPAY_MAX_UNSTARTED_PER_USER",
            ),
            (
                Settings {
                    pay_limits: PayLimits {
                        rate_max: 0,
                        ..PayLimits::default()
                    },
                    ..Settings::default()
                },
                "BLEPAY_PAY_RATE_MAX",
            ),
            (
                Settings {
                    pay_limits: PayLimits {
                        rate_window_secs: MAX_PAY_RATE_WINDOW_SECS + 1,
                        ..PayLimits::default()
                    },
                    ..Settings::default()
                },
                "BLEPAY_PAY_RATE_WINDOW_SECS",
            ),
        ] {
            assert_eq!(settings.validate().unwrap_err().var, var);
        }
    }

    #[test]
    fn the_daily_spending_limit_is_none_at_zero_and_refused_above_the_money_bound() {
        let with = |daily_spending_limit| Settings {
            pay_limits: PayLimits {
                daily_spending_limit,
                ..PayLimits::default()
            },
            ..Settings::default()
        };
        assert_eq!(with(0).validate().unwrap().pay_limits.daily_limit(), None);
        assert_eq!(
            with(500).validate().unwrap().pay_limits.daily_limit(),
            Some(Amount::new(500).unwrap())
        );
        let too_much = u64::try_from(Amount::MAX.minor()).unwrap() + 1;
        assert_eq!(
            with(too_much).validate().unwrap_err().var,
            "BLEPAY_DAILY_SPENDING_LIMIT"
        );
    }

    #[test]
    fn the_defaults_fit_the_heartbeat_and_the_longest_cycle() {
        let v = Settings::default().validate().unwrap();
        // Two heartbeats may be lost before a machine goes OFFLINE.
        assert!(v.offline_after_secs > 2 * HEARTBEAT_INTERVAL_SECS);
        assert_eq!(v.offline_after_secs, 4200);
        // A 2 h washer cycle without progress reports is not cut short; a dead machine's hold
        // is released within hours.
        assert_eq!(v.active_timeout_secs, 14_400);
        assert!(v.active_timeout_secs >= 2 * 2 * 60 * 60 && v.active_timeout_secs < 24 * 60 * 60);
    }

    #[test]
    fn unset_secrets_become_unguessable() {
        let keyring = Keyring::parse(&format!("0:{}", "ab".repeat(32))).unwrap();
        let a = Settings::default()
            .validate()
            .unwrap()
            .into_config(keyring.clone());
        let b = Settings::default().validate().unwrap().into_config(keyring);
        assert!(a.ops_token.expose().len() >= MIN_SECRET_LEN);
        assert_ne!(a.ops_token.expose(), b.ops_token.expose());
        // No token verifies against the unknown secret, not even one signed with the empty key.
        let alice = blepay_core::UserId::parse("alice").unwrap();
        let now = 1_770_000_000;
        for secret in [String::new(), "0".repeat(64)] {
            let t = crate::auth::mint_token(&secret, &alice, now, 60).unwrap();
            assert!(a.phone_tokens.verify(&t, now).is_err());
        }
    }

    #[test]
    fn a_jwt_secret_needs_32_bytes_and_one_key_source() {
        let with = |secret: &str, jwt: JwtSettings| {
            Settings {
                jwt_secret: Some(SecretString::new(secret.into())),
                jwt,
                ..Settings::default()
            }
            .validate()
        };
        // The 16-character secret, and one byte short of 32.
        for short in ["a".repeat(16), "a".repeat(31)] {
            let e = with(&short, JwtSettings::default()).unwrap_err();
            assert_eq!(e.var, "BLEPAY_JWT_SECRET");
            assert!(e.message.contains("32"), "{e}");
        }
        assert!(with(&"a".repeat(32), JwtSettings::default()).is_ok());
        let two = JwtSettings {
            jwks_url: Some("https://id.example/jwks".into()),
            ..JwtSettings::default()
        };
        assert_eq!(
            with(&"a".repeat(32), two).unwrap_err().var,
            "BLEPAY_JWT_SECRET"
        );
        let jwks = |issuer: Option<&str>, audience: Option<&str>| {
            Settings {
                jwt: JwtSettings {
                    jwks_url: Some("https://id.example/jwks".into()),
                    issuer: issuer.map(str::to_owned),
                    audience: audience.map(str::to_owned),
                    ..JwtSettings::default()
                },
                ..Settings::default()
            }
            .validate()
        };
        assert_eq!(jwks(None, Some("b")).unwrap_err().var, "BLEPAY_JWT_ISSUER");
        assert_eq!(
            jwks(Some("i"), None).unwrap_err().var,
            "BLEPAY_JWT_AUDIENCE"
        );
        assert!(jwks(Some("i"), Some("b")).is_ok());
        let forever = Settings {
            jwt: JwtSettings {
                max_lifetime_secs: MAX_JWT_LIFETIME_SECS + 1,
                ..JwtSettings::default()
            },
            ..Settings::default()
        };
        assert_eq!(
            forever.validate().unwrap_err().var,
            "BLEPAY_JWT_MAX_LIFETIME_SECS"
        );
    }
}
