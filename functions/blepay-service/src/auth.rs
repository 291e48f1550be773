//! Who is calling: phones by JWT (`sub` = user id), operators by a bearer token compared in
//! constant time. Shared by HTTP and gRPC.
//!
//! A phone JWT is verified by a [`TokenVerifier`] against one key source:
//! - an HS256 secret of at least [`MIN_JWT_SECRET_BYTES`] bytes (development, small deployments);
//! - a JWKS file (an OIDC provider's published keys, saved);
//! - a JWKS URL, fetched at start and kept fresh ([`TokenVerifier::start`]): refreshed every
//!   [`JWKS_REFRESH_SECS`], and early (at most once per [`JWKS_MIN_REFRESH_SECS`]) when a token
//!   names a key id the cache does not hold. Fetched over https with rustls and the aws-lc-rs
//!   provider, trusting Mozilla's roots (webpki-roots) plus an optional CA file; plain http only
//!   to a loopback host (a network attacker serving their own keys could mint any token).
//!
//! JWKS keys verify RS256/RS384/RS512/PS256/PS384/PS512 (RSA) and ES256/ES384 (P-256/P-384)
//! only: never HS256 (a published "key" used as an HMAC secret is the classic algorithm
//! confusion), never `none`. Then the claims: `exp` and `sub` required; `nbf` honoured; an
//! `iat` more than [`LEEWAY_SECS`] in the future refused; `exp − iat` (or `exp − now` without
//! `iat`) at most the configured maximum lifetime; `iss` and `aud` required and checked when
//! configured (a token carrying an `aud` is accepted when no audience is configured).
//!
//! Every refusal answers the same UNAUTHENTICATED message, [`REFUSED`]: what was wrong is
//! logged at debug level only, so a caller learns nothing about keys, algorithms or claims.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use blepay_core::UserId;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use subtle::ConstantTimeEq;

use crate::config::{Config, ConfigError, SecretString, cfg_err};
use crate::error::ApiError;
use crate::operator::Operator;

/// The one message of every authentication refusal (HTTP and gRPC).
pub const REFUSED: &str = "invalid or missing credentials";
/// Clock skew allowed on `exp`, `nbf` and `iat`.
pub const LEEWAY_SECS: u64 = 60;
/// The shortest HS256 secret accepted, in bytes: 256 bits, the size of the HMAC's output.
pub const MIN_JWT_SECRET_BYTES: usize = 32;
/// `BLEPAY_JWT_MAX_LIFETIME_SECS` when unset: one day.
pub const DEFAULT_JWT_MAX_LIFETIME_SECS: u64 = 86_400;
/// How often a JWKS URL is fetched again while the server runs.
pub const JWKS_REFRESH_SECS: u64 = 300;
/// The least time between two fetches of a JWKS URL (an unknown `kid` cannot make the server
/// hammer its identity provider).
pub const JWKS_MIN_REFRESH_SECS: u64 = 30;
/// How long one fetch of a JWKS URL may take, connect to last byte.
pub const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest JWKS document read (a provider publishes a few keys, a few KiB).
pub const JWKS_MAX_BYTES: usize = 1 << 20;

const JWKS_URL_VAR: &str = "BLEPAY_JWT_JWKS_URL";
const JWKS_CA_VAR: &str = "BLEPAY_JWT_JWKS_CA_FILE";

/// The signature algorithms a JWKS key may verify.
const ASYMMETRIC: [Algorithm; 8] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
];

/// A refused credential: the client sees [`REFUSED`], the debug log `why`.
pub fn refused(why: impl fmt::Display) -> ApiError {
    tracing::debug!(reason = %why, "authentication refused");
    ApiError::unauthenticated(REFUSED)
}

// ---------------------------------------------------------------------------------------------
// Claims and the policy on them (pure; the Lambda functions apply it to the claims API
// Gateway's JWT authorizer passes on)
// ---------------------------------------------------------------------------------------------

/// What is required of a phone token's claims beyond its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenPolicy {
    /// `BLEPAY_JWT_ISSUER`: the `iss` every token must carry, when set.
    pub issuer: Option<String>,
    /// `BLEPAY_JWT_AUDIENCE`: a value the token's `aud` must contain, when set.
    pub audience: Option<String>,
    /// `BLEPAY_JWT_MAX_LIFETIME_SECS`: the longest `exp − iat` (or `exp − now`) accepted.
    pub max_lifetime_secs: u64,
}

impl Default for TokenPolicy {
    fn default() -> Self {
        Self {
            issuer: None,
            audience: None,
            max_lifetime_secs: DEFAULT_JWT_MAX_LIFETIME_SECS,
        }
    }
}

/// `aud`: one string or a list of them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn contains(&self, wanted: &str) -> bool {
        match self {
            Self::One(a) => a == wanted,
            Self::Many(all) => all.iter().any(|a| a == wanted),
        }
    }
}

/// The registered claims blepay reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
pub struct Claims {
    #[serde(default)]
    pub sub: Option<String>,
    #[serde(default)]
    pub exp: Option<u64>,
    #[serde(default)]
    pub nbf: Option<u64>,
    #[serde(default)]
    pub iat: Option<u64>,
    #[serde(default)]
    pub iss: Option<String>,
    #[serde(default)]
    pub aud: Option<Audience>,
}

impl TokenPolicy {
    /// The user `claims` name, if they satisfy the policy at `now` (unix seconds).
    ///
    /// # Errors
    /// UNAUTHENTICATED ([`REFUSED`]) when `exp` or `sub` is missing, the token is expired, not
    /// yet valid (`nbf`), issued in the future (`iat`), lives longer than the maximum lifetime,
    /// has the wrong issuer or audience, or `sub` is not a user id.
    pub fn check(&self, claims: &Claims, now: u64) -> Result<UserId, ApiError> {
        let exp = claims.exp.ok_or_else(|| refused("no `exp` claim"))?;
        if exp.saturating_add(LEEWAY_SECS) <= now {
            return Err(refused("token expired"));
        }
        if claims
            .nbf
            .is_some_and(|nbf| nbf > now.saturating_add(LEEWAY_SECS))
        {
            return Err(refused("token not valid yet (nbf)"));
        }
        if claims
            .iat
            .is_some_and(|iat| iat > now.saturating_add(LEEWAY_SECS))
        {
            return Err(refused("token issued in the future (iat)"));
        }
        let lifetime = exp.saturating_sub(claims.iat.unwrap_or(now));
        if lifetime > self.max_lifetime_secs {
            return Err(refused(format_args!(
                "token lifetime {lifetime} s above the maximum {} s",
                self.max_lifetime_secs
            )));
        }
        if let Some(issuer) = &self.issuer
            && claims.iss.as_deref() != Some(issuer.as_str())
        {
            return Err(refused("wrong or missing `iss`"));
        }
        if let Some(audience) = &self.audience
            && !claims.aud.as_ref().is_some_and(|a| a.contains(audience))
        {
            return Err(refused("wrong or missing `aud`"));
        }
        let sub = claims.sub.as_deref().ok_or_else(|| refused("no `sub`"))?;
        UserId::parse(sub).map_err(|e| refused(format_args!("token subject: {e}")))
    }
}

// ---------------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------------

/// One usable verification key of a JWKS.
struct PublicKey {
    kid: Option<String>,
    algorithms: Vec<Algorithm>,
    key: DecodingKey,
}

/// The usable keys of a JWK set: RSA and EC (P-256, P-384) signature keys; others are skipped.
fn usable_keys(set: &JwkSet) -> Vec<PublicKey> {
    set.keys.iter().filter_map(usable_key).collect()
}

fn usable_key(jwk: &Jwk) -> Option<PublicKey> {
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return None;
    }
    let family: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => ASYMMETRIC[..6].to_vec(),
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return None,
        },
        // Never an HMAC secret or anything else out of a published key set.
        _ => return None,
    };
    let algorithms = match jwk.common.key_algorithm {
        Some(alg) => {
            let alg = Algorithm::from_str(&alg.to_string()).ok()?;
            if !family.contains(&alg) {
                return None;
            }
            vec![alg]
        }
        None => family,
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(PublicKey {
        kid: jwk.common.key_id.clone(),
        algorithms,
        key,
    })
}

/// Parse a JWKS document into its usable keys.
///
/// # Errors
/// When it is not a JWK set or holds no usable signature key.
fn parse_jwks(text: &str) -> Result<Vec<PublicKey>, String> {
    let set: JwkSet = serde_json::from_str(text).map_err(|e| format!("not a JWK set: {e}"))?;
    let keys = usable_keys(&set);
    if keys.is_empty() {
        return Err(
            "no usable signature key (RSA, or EC P-256/P-384; HMAC keys are never used)".into(),
        );
    }
    Ok(keys)
}

/// The live key set of a JWKS URL and when it was last fetched.
struct JwksCache {
    url: String,
    uri: http::Uri,
    keys: RwLock<Arc<Vec<PublicKey>>>,
    /// Woken when a token names an unknown `kid`.
    wake: tokio::sync::Notify,
    http: HttpClient<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>,
    /// [`JWKS_MIN_REFRESH_SECS`] and [`JWKS_REFRESH_SECS`] unless a test changes them.
    min_interval: Duration,
    period: Duration,
}

enum KeySource {
    Hs256(SecretString),
    Jwks(Vec<PublicKey>),
    Url(Box<JwksCache>),
}

struct Inner {
    source: KeySource,
    policy: TokenPolicy,
}

/// Verifies phone JWTs: one key source and a [`TokenPolicy`]. Cheap to clone.
#[derive(Clone)]
pub struct TokenVerifier(Arc<Inner>);

impl fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = match &self.0.source {
            KeySource::Hs256(_) => "HS256 secret (redacted)".to_owned(),
            KeySource::Jwks(keys) => format!("JWKS file ({} keys)", keys.len()),
            KeySource::Url(c) => format!("JWKS URL {}", c.url),
        };
        f.debug_struct("TokenVerifier")
            .field("source", &source)
            .field("policy", &self.0.policy)
            .finish()
    }
}

/// Where a [`TokenVerifier`] gets its keys, as configured.
#[derive(Debug, Clone)]
pub enum PhoneKeys {
    /// `BLEPAY_JWT_SECRET`.
    Hs256(SecretString),
    /// `BLEPAY_JWT_JWKS_FILE`.
    JwksFile(std::path::PathBuf),
    /// `BLEPAY_JWT_JWKS_URL`, and `BLEPAY_JWT_JWKS_CA_FILE`: more roots it is trusted by.
    JwksUrl {
        url: String,
        ca_file: Option<PathBuf>,
    },
}

impl TokenVerifier {
    /// HS256 with `secret`.
    ///
    /// # Errors
    /// `BLEPAY_JWT_SECRET` when the secret is shorter than [`MIN_JWT_SECRET_BYTES`].
    pub fn hs256(secret: SecretString, policy: TokenPolicy) -> Result<Self, ConfigError> {
        if secret.expose().len() < MIN_JWT_SECRET_BYTES {
            return Err(cfg_err(
                "BLEPAY_JWT_SECRET",
                format!(
                    "must be at least {MIN_JWT_SECRET_BYTES} bytes of random (e.g. \
                     `openssl rand -hex 32`): a short secret can be guessed offline from any token"
                ),
            ));
        }
        Ok(Self::with(KeySource::Hs256(secret), policy))
    }

    /// The keys of a JWKS document (the contents of a JWKS file).
    ///
    /// # Errors
    /// `BLEPAY_JWT_JWKS_FILE` when it is not a JWK set or holds no usable key.
    pub fn jwks(text: &str, policy: TokenPolicy) -> Result<Self, ConfigError> {
        let keys = parse_jwks(text).map_err(|e| cfg_err("BLEPAY_JWT_JWKS_FILE", e))?;
        Ok(Self::with(KeySource::Jwks(keys), policy))
    }

    /// The keys at a JWKS URL, its server certificate checked against Mozilla's roots. Nothing
    /// is fetched until [`TokenVerifier::start`]; until then every token is refused.
    ///
    /// # Errors
    /// `BLEPAY_JWT_JWKS_URL` when it is not an https URL (or http to a loopback host).
    pub fn jwks_url(url: &str, policy: TokenPolicy) -> Result<Self, ConfigError> {
        Self::jwks_url_trusting(url, None, policy)
    }

    /// [`TokenVerifier::jwks_url`], also trusting the CA certificates of the PEM file `ca_file`
    /// (a private CA).
    ///
    /// # Errors
    /// `BLEPAY_JWT_JWKS_URL` when it is not an https URL (or http to a loopback host);
    /// `BLEPAY_JWT_JWKS_CA_FILE` when the file cannot be read or holds no usable certificate.
    pub fn jwks_url_trusting(
        url: &str,
        ca_file: Option<&Path>,
        policy: TokenPolicy,
    ) -> Result<Self, ConfigError> {
        let uri = jwks_uri(url)?;
        let http = jwks_client(ca_file)?;
        Ok(Self::with(
            KeySource::Url(Box::new(JwksCache {
                url: url.to_owned(),
                uri,
                keys: RwLock::new(Arc::new(Vec::new())),
                wake: tokio::sync::Notify::new(),
                http,
                min_interval: Duration::from_secs(JWKS_MIN_REFRESH_SECS),
                period: Duration::from_secs(JWKS_REFRESH_SECS),
            })),
            policy,
        ))
    }

    /// A verifier of `keys`; a JWKS file is read here.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the variable of the source.
    pub fn from_source(keys: &PhoneKeys, policy: TokenPolicy) -> Result<Self, ConfigError> {
        match keys {
            PhoneKeys::Hs256(secret) => Self::hs256(secret.clone(), policy),
            PhoneKeys::JwksFile(path) => {
                let text = read_jwks_file(path)?;
                Self::jwks(&text, policy)
            }
            PhoneKeys::JwksUrl { url, ca_file } => {
                Self::jwks_url_trusting(url, ca_file.as_deref(), policy)
            }
        }
    }

    /// HS256 with a random secret nobody knows: no phone token verifies (deployed on Lambda
    /// without `BLEPAY_JWT_SECRET`, only the gateway's JWT authorizer lets a phone in).
    pub fn unguessable(policy: TokenPolicy) -> Self {
        let secret = SecretString::new(hex::encode(rand::random::<[u8; 32]>()));
        Self::with(KeySource::Hs256(secret), policy)
    }

    /// A JWKS URL verifier refreshing at most every `min_interval` and at least every `period`
    /// (call before [`TokenVerifier::start`]; other sources are unchanged).
    #[must_use]
    pub fn refreshing(mut self, min_interval: Duration, period: Duration) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.0)
            && let KeySource::Url(cache) = &mut inner.source
        {
            cache.min_interval = min_interval;
            cache.period = period.max(min_interval);
        }
        self
    }

    fn with(source: KeySource, policy: TokenPolicy) -> Self {
        Self(Arc::new(Inner { source, policy }))
    }

    pub fn policy(&self) -> &TokenPolicy {
        &self.0.policy
    }

    /// For a JWKS URL: fetch the keys once (a failure fails the start) and keep them fresh in a
    /// background task for as long as the verifier lives. Other sources: nothing to do.
    ///
    /// # Errors
    /// `BLEPAY_JWT_JWKS_URL` when the first fetch fails or brings no usable key.
    pub async fn start(&self) -> Result<(), ConfigError> {
        let KeySource::Url(cache) = &self.0.source else {
            return Ok(());
        };
        let keys = fetch(cache).await.map_err(|e| cfg_err(JWKS_URL_VAR, e))?;
        set_keys(cache, keys);
        let weak = Arc::downgrade(&self.0);
        tokio::spawn(async move {
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let KeySource::Url(cache) = &inner.source else {
                    return;
                };
                // Wait for the period or an unknown kid, whichever comes first, but never less
                // than the minimum interval.
                tokio::time::sleep(cache.min_interval).await;
                let _ = tokio::time::timeout(
                    cache.period.saturating_sub(cache.min_interval),
                    cache.wake.notified(),
                )
                .await;
                match fetch(cache).await {
                    Ok(keys) => set_keys(cache, keys),
                    Err(e) => tracing::warn!(url = %cache.url, error = %e,
                        "JWKS refresh failed; keeping the previous keys"),
                }
            }
        });
        Ok(())
    }

    /// The user named by a valid JWT (the bare token, without `Bearer`), checked at `now`.
    ///
    /// # Errors
    /// UNAUTHENTICATED ([`REFUSED`]) for any bad token.
    pub fn verify(&self, token: &str, now: u64) -> Result<UserId, ApiError> {
        let header = jsonwebtoken::decode_header(token).map_err(refused)?;
        let claims = match &self.0.source {
            KeySource::Hs256(secret) => {
                if header.alg != Algorithm::HS256 {
                    return Err(refused(format_args!("algorithm {:?}", header.alg)));
                }
                decode(
                    token,
                    header.alg,
                    &DecodingKey::from_secret(secret.expose().as_bytes()),
                )?
            }
            KeySource::Jwks(keys) => decode_with(keys, token, &header)?,
            KeySource::Url(cache) => {
                let keys = cache
                    .keys
                    .read()
                    .map_or_else(|p| p.into_inner().clone(), |k| k.clone());
                let known = header
                    .kid
                    .as_ref()
                    .is_none_or(|kid| keys.iter().any(|k| k.kid.as_ref() == Some(kid)));
                if !known {
                    // A rotated key: refresh early (the background task keeps the minimum
                    // interval); this token is refused.
                    cache.wake.notify_one();
                }
                decode_with(&keys, token, &header)?
            }
        };
        self.0.policy.check(&claims, now)
    }
}

fn read_jwks_file(path: &Path) -> Result<String, ConfigError> {
    let var = "BLEPAY_JWT_JWKS_FILE";
    std::fs::read_to_string(path)
        .map_err(|e| cfg_err(var, format!("cannot read {}: {e}", path.display())))
}

fn set_keys(cache: &JwksCache, keys: Vec<PublicKey>) {
    let n = keys.len();
    match cache.keys.write() {
        Ok(mut k) => *k = Arc::new(keys),
        Err(p) => *p.into_inner() = Arc::new(keys),
    }
    tracing::debug!(url = %cache.url, keys = n, "JWKS fetched");
}

/// A JWKS URL as a request target: https, or plain http to a loopback host only (a test, a
/// sidecar) — keys fetched in the clear let anyone on the path serve their own and mint tokens.
fn jwks_uri(url: &str) -> Result<http::Uri, ConfigError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| cfg_err(JWKS_URL_VAR, format!("not a URL: {e}")))?;
    let Some(host) = uri.host() else {
        return Err(cfg_err(JWKS_URL_VAR, "must be an https:// URL"));
    };
    match uri.scheme_str() {
        Some("https") => Ok(uri),
        Some("http") if is_loopback(host) => Ok(uri),
        Some("http") => Err(cfg_err(
            JWKS_URL_VAR,
            "must be an https:// URL: plain http is allowed only to a loopback host (anyone on \
             the network path could serve their own keys and mint tokens)",
        )),
        _ => Err(cfg_err(JWKS_URL_VAR, "must be an https:// URL")),
    }
}

/// `localhost` or a loopback IP address (`[::1]` as a URL writes it).
fn is_loopback(host: &str) -> bool {
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
    host.eq_ignore_ascii_case("localhost")
        || bare
            .unwrap_or(host)
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The JWKS HTTP client: rustls with the aws-lc-rs provider given explicitly (no process-wide
/// default is needed or installed), Mozilla's roots plus those of `ca_file`, HTTP/1.1.
fn jwks_client(
    ca_file: Option<&Path>,
) -> Result<HttpClient<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>, ConfigError> {
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_file {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let shown = path.display();
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .map_err(|e| cfg_err(JWKS_CA_VAR, format!("cannot read {shown}: {e}")))?;
        if certs.is_empty() {
            return Err(cfg_err(
                JWKS_CA_VAR,
                format!("{shown} holds no PEM certificate"),
            ));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| cfg_err(JWKS_CA_VAR, format!("{shown}: {e}")))?;
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| cfg_err(JWKS_URL_VAR, format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Ok(HttpClient::builder(TokioExecutor::new()).build(connector))
}

/// An error and its causes, `: `-joined (a TLS refusal sits a few levels down).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

async fn fetch(cache: &JwksCache) -> Result<Vec<PublicKey>, String> {
    let url = &cache.url;
    let get = async {
        let r = cache
            .http
            .get(cache.uri.clone())
            .await
            .map_err(|e| format!("cannot fetch {url}: {}", chain(&e)))?;
        if !r.status().is_success() {
            return Err(format!("{url} answered {}", r.status()));
        }
        let body = Limited::new(r.into_body(), JWKS_MAX_BYTES)
            .collect()
            .await
            .map_err(|e| format!("cannot read {url} (at most {JWKS_MAX_BYTES} bytes): {e}"))?
            .to_bytes();
        String::from_utf8(body.to_vec()).map_err(|_| format!("{url}: not UTF-8"))
    };
    let text = tokio::time::timeout(JWKS_FETCH_TIMEOUT, get)
        .await
        .map_err(|_| format!("{url}: no answer within {JWKS_FETCH_TIMEOUT:?}"))??;
    parse_jwks(&text)
}

/// Decode with the key the header's `kid` names (or, without a `kid`, each key that can verify
/// the header's algorithm in turn).
fn decode_with(keys: &[PublicKey], token: &str, header: &Header) -> Result<Claims, ApiError> {
    if !ASYMMETRIC.contains(&header.alg) {
        return Err(refused(format_args!("algorithm {:?}", header.alg)));
    }
    let mut candidates = keys.iter().filter(|k| {
        k.algorithms.contains(&header.alg)
            && header
                .kid
                .as_ref()
                .is_none_or(|kid| k.kid.as_ref() == Some(kid))
    });
    let mut last = refused("no key for this token's kid and algorithm");
    for key in candidates.by_ref() {
        match decode(token, header.alg, &key.key) {
            Ok(claims) => return Ok(claims),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Check the signature under `alg` (and that `exp` and `sub` are present); the times and the
/// issuer and audience are the policy's ([`TokenPolicy::check`]).
fn decode(token: &str, alg: Algorithm, key: &DecodingKey) -> Result<Claims, ApiError> {
    let mut validation = Validation::new(alg);
    validation.set_required_spec_claims(&["exp", "sub"]);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    jsonwebtoken::decode::<Claims>(token, key, &validation)
        .map(|d| d.claims)
        .map_err(refused)
}

// ---------------------------------------------------------------------------------------------
// The callers
// ---------------------------------------------------------------------------------------------

fn bearer(header: Option<&str>) -> Result<&str, ApiError> {
    let value = header.ok_or_else(|| refused("no Authorization header"))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| refused("Authorization is not `Bearer <token>`"))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(refused("Authorization is not `Bearer <token>`"));
    }
    Ok(token.trim())
}

/// Unix seconds now.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The phone user named by a valid JWT in an `Authorization` header value.
///
/// # Errors
/// UNAUTHENTICATED ([`REFUSED`]) when missing, malformed, badly signed, expired, not yet valid,
/// too long-lived, for another issuer or audience, or `sub` is not a valid user id.
pub fn phone_user(config: &Config, header: Option<&str>) -> Result<UserId, ApiError> {
    let token = bearer(header)?;
    config.phone_tokens.verify(token, unix_now())
}

/// What an ops request's bearer token is, before any store lookup.
#[derive(Debug)]
pub enum OpsCredential {
    /// `BLEPAY_OPS_TOKEN` (constant-time comparison): the bootstrap owner.
    Bootstrap,
    /// Shaped as an operator token (`bpo_<id>_<secret>`): to check against the store.
    Operator(crate::operators::OperatorToken),
}

/// Classify an operator's bearer token without reading the store (HTTP extractor and gRPC layer
/// run this on the headers, before any body is read).
///
/// # Errors
/// UNAUTHENTICATED ([`REFUSED`]) unless it is `BLEPAY_OPS_TOKEN` or shaped as an operator token.
pub fn ops_credential(config: &Config, header: Option<&str>) -> Result<OpsCredential, ApiError> {
    let token = bearer(header)?;
    if bool::from(token.as_bytes().ct_eq(config.ops_token.expose().as_bytes())) {
        return Ok(OpsCredential::Bootstrap);
    }
    crate::operators::OperatorToken::parse(token)
        .map(OpsCredential::Operator)
        .ok_or_else(|| refused("wrong operator token"))
}

/// Check a bearer token against `BLEPAY_OPS_TOKEN` only (the bootstrap owner); operator
/// tokens need the store: [`crate::App::authenticate_operator`].
///
/// # Errors
/// UNAUTHENTICATED ([`REFUSED`]) unless it equals `BLEPAY_OPS_TOKEN` (constant-time comparison).
pub fn ops(config: &Config, header: Option<&str>) -> Result<Operator, ApiError> {
    match ops_credential(config, header)? {
        OpsCredential::Bootstrap => Ok(Operator::bootstrap()),
        OpsCredential::Operator(_) => Err(refused("operator token outside a store lookup")),
    }
}

#[derive(serde::Serialize)]
struct MintClaims<'a> {
    sub: &'a str,
    iat: u64,
    exp: u64,
}

/// Mint a development phone JWT (HS256) for `user`, issued at `now` and valid `ttl_secs`.
///
/// # Errors
/// When signing fails.
pub fn mint_token(
    secret: &str,
    user: &UserId,
    now: u64,
    ttl_secs: u64,
) -> Result<String, ApiError> {
    let sub = user.to_string();
    let claims = MintClaims {
        sub: &sub,
        iat: now,
        exp: now.saturating_add(ttl_secs),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| {
        tracing::error!(error = %e, "cannot sign a token");
        ApiError::new(crate::error::ErrorCode::Internal, "cannot sign token")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_770_000_000;

    fn claims(exp: u64) -> Claims {
        Claims {
            sub: Some("alice".into()),
            exp: Some(exp),
            ..Claims::default()
        }
    }

    #[test]
    fn the_policy_bounds_the_times() {
        let p = TokenPolicy::default();
        assert!(p.check(&claims(NOW + 3600), NOW).is_ok());
        assert!(p.check(&claims(NOW - 61), NOW).is_err(), "expired");
        assert!(p.check(&claims(u64::MAX), NOW).is_err(), "exp = 2^64-1");
        assert!(p.check(&claims(NOW + 86_401), NOW).is_err(), "too long");
        let future_iat = Claims {
            iat: Some(NOW + 120),
            ..claims(NOW + 600)
        };
        assert!(p.check(&future_iat, NOW).is_err(), "iat in the future");
        let nbf = Claims {
            nbf: Some(NOW + 120),
            ..claims(NOW + 600)
        };
        assert!(p.check(&nbf, NOW).is_err(), "nbf");
        assert!(p.check(&nbf, NOW + 120).is_ok());
        // An old iat counts: a token issued two days ago and valid for three is too long-lived.
        let old = Claims {
            iat: Some(NOW - 2 * 86_400),
            ..claims(NOW + 86_400)
        };
        assert!(p.check(&old, NOW).is_err());
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let p = TokenPolicy {
            issuer: Some("https://id.example".into()),
            audience: Some("blepay".into()),
            ..TokenPolicy::default()
        };
        let good = Claims {
            iss: Some("https://id.example".into()),
            aud: Some(Audience::Many(vec!["other".into(), "blepay".into()])),
            ..claims(NOW + 60)
        };
        assert!(p.check(&good, NOW).is_ok());
        for bad in [
            Claims {
                iss: None,
                ..good.clone()
            },
            Claims {
                iss: Some("https://evil.example".into()),
                ..good.clone()
            },
            Claims {
                aud: None,
                ..good.clone()
            },
            Claims {
                aud: Some(Audience::One("other".into())),
                ..good.clone()
            },
        ] {
            let e = p.check(&bad, NOW).unwrap_err();
            assert_eq!(e.message, REFUSED);
        }
        // Without a configured audience a token carrying one is fine.
        let open = TokenPolicy::default();
        assert!(open.check(&good, NOW).is_ok());
    }
}
