//! Phone identity (issue 10, M3 and L7): JWTs verified against an identity provider's keys — a
//! JWKS file or URL, RS256 and ES256, with keys these tests generate — or an HS256 secret of at
//! least 32 bytes; `iss`, `aud`, `nbf`, a future `iat` and the maximum lifetime enforced; and
//! every refusal the same generic message, over the real router.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use base64::Engine as _;
use blepay_core::UserId;
use blepay_service::auth::{REFUSED, TokenPolicy, TokenVerifier};
use blepay_service::config::{Config, JwtSettings, SecretString, Settings};
use blepay_service::{App, server};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tower::ServiceExt;

const ISSUER: &str = "https://id.example.com/";
const AUDIENCE: &str = "blepay-app";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A signing key the test made, with its public JWK.
struct Signer {
    alg: Algorithm,
    kid: String,
    key: EncodingKey,
    jwk: Jwk,
}

impl Signer {
    fn rsa(kid: &str) -> Self {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        let der = private.to_pkcs1_der().unwrap();
        Self::new(
            Algorithm::RS256,
            kid,
            EncodingKey::from_rsa_der(der.as_bytes()),
        )
    }

    fn p256(kid: &str) -> Self {
        use p256::pkcs8::EncodePrivateKey;
        let private = p256::ecdsa::SigningKey::random(&mut rsa::rand_core::OsRng);
        let der = private.to_pkcs8_der().unwrap();
        Self::new(
            Algorithm::ES256,
            kid,
            EncodingKey::from_ec_der(der.as_bytes()),
        )
    }

    fn new(alg: Algorithm, kid: &str, key: EncodingKey) -> Self {
        let mut jwk = Jwk::from_encoding_key(&key, alg).unwrap();
        jwk.common.key_id = Some(kid.to_owned());
        Self {
            alg,
            kid: kid.to_owned(),
            key,
            jwk,
        }
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }
}

fn jwks(signers: &[&Signer]) -> String {
    serde_json::to_string(&JwkSet {
        keys: signers.iter().map(|s| s.jwk.clone()).collect(),
    })
    .unwrap()
}

/// Standard OIDC claims for `sub`, valid for an hour from now.
fn claims(sub: &str) -> Value {
    let t = now();
    json!({"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "iat": t, "exp": t + 3600})
}

fn with(base: &Value, changes: &Value) -> Value {
    let mut c = base.clone();
    for (k, v) in changes.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

fn oidc_policy() -> TokenPolicy {
    TokenPolicy {
        issuer: Some(ISSUER.into()),
        audience: Some(AUDIENCE.into()),
        ..TokenPolicy::default()
    }
}

/// The real router on a fresh SQLite file, its phone tokens verified by `verifier`.
struct Server {
    router: axum::Router,
    _dir: tempfile::TempDir,
}

impl Server {
    fn new(verifier: TokenVerifier) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = blepay_sqlite::SqliteStore::open(&dir.path().join("blepay.db")).unwrap();
        let config = Config {
            phone_tokens: verifier,
            ..support::config()
        };
        let app = App::new(config, Arc::new(store), blepay_service::system_clock());
        Self {
            router: server::router(&app).unwrap(),
            _dir: dir,
        }
    }

    /// `GET /v1/wallet` with `token` → (status, body).
    async fn wallet(&self, token: &str) -> (StatusCode, Value) {
        let req = Request::builder()
            .uri("/v1/wallet")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        let r = self.router.clone().oneshot(req).await.unwrap();
        let status = r.status();
        let body = http_body_util::BodyExt::collect(r.into_body())
            .await
            .unwrap()
            .to_bytes();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    async fn accepts(&self, token: &str, what: &str) {
        let (status, body) = self.wallet(token).await;
        assert_eq!(status, StatusCode::OK, "{what}: {body}");
    }

    /// Refused with the generic message and nothing about keys, algorithms or claims.
    async fn refuses(&self, token: &str, what: &str) {
        let (status, body) = self.wallet(token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
        assert_eq!(body["code"], "UNAUTHENTICATED", "{what}: {body}");
        assert_eq!(body["message"], REFUSED, "{what}: {body}");
    }
}

#[tokio::test]
async fn rs256_and_es256_tokens_verify_against_a_jwks_file_with_iss_and_aud() {
    let rsa = Signer::rsa("rsa-1");
    let ec = Signer::p256("ec-1");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, jwks(&[&rsa, &ec])).unwrap();
    // Through the settings, as `blepay serve --jwt-jwks-file` and the Lambda loader build it.
    let config = Settings {
        jwt: JwtSettings {
            jwks_file: Some(file),
            issuer: Some(ISSUER.into()),
            audience: Some(AUDIENCE.into()),
            ..JwtSettings::default()
        },
        ..Settings::default()
    }
    .validate()
    .unwrap();
    let server = Server::new(config.phone_tokens.unwrap());

    let good = claims("alice");
    server.accepts(&rsa.sign(&good), "RS256").await;
    server.accepts(&ec.sign(&good), "ES256").await;
    // `aud` as a list holding ours: standard OIDC.
    let listed = with(&good, &json!({"aud": ["other-app", AUDIENCE]}));
    server.accepts(&rsa.sign(&listed), "aud list").await;

    let t = now();
    for (what, bad) in [
        (
            "another issuer",
            with(&good, &json!({"iss": "https://evil.example/"})),
        ),
        ("no issuer", with(&good, &json!({"iss": null}))),
        (
            "another audience",
            with(&good, &json!({"aud": "other-app"})),
        ),
        ("no audience", with(&good, &json!({"aud": null}))),
        (
            "expired",
            with(&good, &json!({"iat": t - 7200, "exp": t - 3600})),
        ),
        ("exp = 2^64-1", with(&good, &json!({"exp": u64::MAX}))),
        ("no exp", with(&good, &json!({"exp": null}))),
        ("nbf in the future", with(&good, &json!({"nbf": t + 600}))),
        (
            "iat in the future",
            with(&good, &json!({"iat": t + 600, "exp": t + 1200})),
        ),
        (
            "two-day lifetime",
            with(&good, &json!({"exp": t + 2 * 86_400})),
        ),
        (
            "no iat, exp in two days",
            with(&good, &json!({"iat": null, "exp": t + 2 * 86_400})),
        ),
        ("bad sub", with(&good, &json!({"sub": "not a user id"}))),
    ] {
        server.refuses(&rsa.sign(&bad), what).await;
    }
    // nbf in the past and within the leeway are fine.
    server
        .accepts(&ec.sign(&with(&good, &json!({"nbf": t - 10}))), "nbf past")
        .await;
    server
        .accepts(
            &ec.sign(&with(&good, &json!({"iat": t + 30}))),
            "iat in leeway",
        )
        .await;
}

#[tokio::test]
async fn forged_tokens_are_refused_with_one_generic_message() {
    let rsa = Signer::rsa("rsa-1");
    let stranger = Signer::rsa("rsa-1"); // same kid, a key the server never saw
    let server = Server::new(TokenVerifier::jwks(&jwks(&[&rsa]), oidc_policy()).unwrap());
    let good = claims("alice");
    server
        .refuses(&stranger.sign(&good), "unknown key, known kid")
        .await;
    let other_kid = Signer::new(Algorithm::RS256, "rsa-2", stranger.key.clone());
    server.refuses(&other_kid.sign(&good), "unknown kid").await;

    // Algorithm confusion: an HS256 token whose "secret" is the published key's modulus.
    let jwk = serde_json::to_value(&rsa.jwk).unwrap();
    let n = jwk["n"].as_str().unwrap().as_bytes().to_vec();
    let hs = jsonwebtoken::encode(
        &Header {
            kid: Some("rsa-1".into()),
            ..Header::new(Algorithm::HS256)
        },
        &good,
        &EncodingKey::from_secret(&n),
    )
    .unwrap();
    server.refuses(&hs, "HS256 with the public key").await;

    // `alg: none`, garbage, a truncated signature, a wrong scheme.
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let none = format!(
        "{}.{}.",
        b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(good.to_string())
    );
    server.refuses(&none, "alg none").await;
    server.refuses("not-a-jwt", "garbage").await;
    let signed = rsa.sign(&good);
    server
        .refuses(&signed[..signed.len() - 4], "truncated")
        .await;

    let req = Request::builder()
        .uri("/v1/wallet")
        .header(header::AUTHORIZATION, format!("Basic {signed}"))
        .body(Body::empty())
        .unwrap();
    let r = server.router.clone().oneshot(req).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn hs256_needs_32_bytes_and_answers_nothing_about_why() {
    // The issue's brute-forceable secret.
    let e = TokenVerifier::hs256(
        SecretString::new("aaaaaaaaaaaaaaaa".into()),
        TokenPolicy::default(),
    )
    .unwrap_err();
    assert_eq!(e.var, "BLEPAY_JWT_SECRET");
    let secret = "0123456789abcdef0123456789abcdef";
    let server = Server::new(
        TokenVerifier::hs256(SecretString::new(secret.into()), TokenPolicy::default()).unwrap(),
    );
    let alice = UserId::parse("alice").unwrap();
    let t = now();
    server
        .accepts(
            &blepay_service::auth::mint_token(secret, &alice, t, 3600).unwrap(),
            "HS256",
        )
        .await;
    // A token carrying `aud` is accepted when no audience is configured (OIDC tokens do).
    let with_aud = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "alice", "aud": "anything", "iat": t, "exp": t + 60}),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    server.accepts(&with_aud, "aud, none configured").await;
    let wrong = blepay_service::auth::mint_token("another-secret-0123456789abcdef0", &alice, t, 60)
        .unwrap();
    server.refuses(&wrong, "wrong secret").await;
    let forever = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "alice", "exp": u64::MAX}),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    server.refuses(&forever, "exp = 2^64-1").await;
    // An RS256 token offered to an HS256 server.
    let rsa = Signer::rsa("k");
    server
        .refuses(&rsa.sign(&claims("alice")), "RS256 to HS256")
        .await;
}

/// A JWKS URL on loopback whose document the test changes.
async fn jwks_server(doc: Arc<Mutex<String>>, hits: Arc<Mutex<u32>>) -> String {
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let doc = doc.clone();
            let hits = hits.clone();
            async move {
                *hits.lock().unwrap() += 1;
                doc.lock().unwrap().clone()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/jwks.json")
}

#[tokio::test]
async fn a_jwks_url_is_fetched_at_start_and_refreshed_on_an_unknown_kid() {
    let first = Signer::p256("2026-01");
    let doc = Arc::new(Mutex::new(jwks(&[&first])));
    let hits = Arc::new(Mutex::new(0));
    let url = jwks_server(doc.clone(), hits.clone()).await;

    let verifier = TokenVerifier::jwks_url(&url, oidc_policy())
        .unwrap()
        .refreshing(Duration::from_millis(200), Duration::from_secs(3600));
    let token = first.sign(&claims("alice"));
    // Before the start nothing verifies (fail closed).
    assert!(verifier.verify(&token, now()).is_err());
    verifier.start().await.unwrap();
    let server = Server::new(verifier.clone());
    server.accepts(&token, "key from the URL").await;
    assert_eq!(*hits.lock().unwrap(), 1);

    // The provider rotates: a token under the new kid makes the server fetch again (no sooner
    // than the minimum interval) and then verifies.
    let second = Signer::rsa("2026-02");
    *doc.lock().unwrap() = jwks(&[&first, &second]);
    let rotated = second.sign(&claims("alice"));
    server.refuses(&rotated, "kid not fetched yet").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if server.wallet(&rotated).await.0 == StatusCode::OK {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never refreshed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A flood of unknown kids costs at most one fetch per minimum interval.
    let before = *hits.lock().unwrap();
    let started = std::time::Instant::now();
    let unknown = Signer::p256("nobody");
    let flood = unknown.sign(&claims("alice"));
    for _ in 0..200 {
        server.refuses(&flood, "unknown kid").await;
    }
    tokio::time::sleep(Duration::from_millis(450)).await;
    let fetched = *hits.lock().unwrap() - before;
    let bound = started.elapsed().as_millis() / 200 + 2;
    assert!(
        u128::from(fetched) <= bound,
        "{fetched} fetches for 200 unknown-kid tokens in {:?}",
        started.elapsed()
    );

    // An unreachable URL fails the start.
    let dead = TokenVerifier::jwks_url("http://127.0.0.1:9/jwks.json", oidc_policy()).unwrap();
    assert_eq!(dead.start().await.unwrap_err().var, "BLEPAY_JWT_JWKS_URL");
}

/// A private CA (PEM, written to `ca.pem` in the returned dir) and an https server on loopback
/// presenting a leaf certificate for `localhost` it signed, serving `doc` at `/jwks.json`.
async fn https_jwks_server(doc: String) -> (String, tempfile::TempDir) {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "blepay test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let doc = doc.clone();
            async move { doc }
        }),
    );
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let app = app.clone();
            tokio::spawn(async move {
                // A client that refuses the certificate ends the handshake: nothing to serve.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (format!("https://localhost:{port}/jwks.json"), dir)
}

#[tokio::test]
async fn an_https_jwks_url_is_trusted_through_the_configured_ca_file() {
    let signer = Signer::p256("tls-1");
    let (url, dir) = https_jwks_server(jwks(&[&signer])).await;
    let ca = dir.path().join("ca.pem");

    // Through the settings, as `blepay serve --jwt-jwks-url … --jwt-jwks-ca-file …` builds it.
    let config = Settings {
        jwt: JwtSettings {
            jwks_url: Some(url.clone()),
            jwks_ca_file: Some(ca.clone()),
            issuer: Some(ISSUER.into()),
            audience: Some(AUDIENCE.into()),
            ..JwtSettings::default()
        },
        ..Settings::default()
    }
    .validate()
    .unwrap();
    let verifier = config.phone_tokens.unwrap();
    verifier.start().await.unwrap();
    let server = Server::new(verifier);
    server
        .accepts(
            &signer.sign(&claims("alice")),
            "ES256 key fetched over https",
        )
        .await;
    let stranger = Signer::p256("tls-1");
    server
        .refuses(&stranger.sign(&claims("alice")), "same kid, another key")
        .await;

    // Mozilla's roots only: the private CA is unknown, so the start fails and says why.
    let untrusted = TokenVerifier::jwks_url(&url, oidc_policy()).unwrap();
    let e = untrusted.start().await.unwrap_err();
    assert_eq!(e.var, "BLEPAY_JWT_JWKS_URL");
    assert!(e.message.contains("certificate"), "{e}");
    assert!(
        untrusted
            .verify(&signer.sign(&claims("alice")), now())
            .is_err()
    );

    // A CA file that is missing or holds no certificate is a configuration error.
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    for bad in [dir.path().join("missing.pem"), empty] {
        let e = TokenVerifier::jwks_url_trusting(&url, Some(&bad), oidc_policy()).unwrap_err();
        assert_eq!(e.var, "BLEPAY_JWT_JWKS_CA_FILE", "{}", bad.display());
    }
    // The CA file applies to a JWKS URL only.
    let e = Settings {
        jwt: JwtSettings {
            jwks_ca_file: Some(ca),
            ..JwtSettings::default()
        },
        ..Settings::default()
    }
    .validate()
    .unwrap_err();
    assert_eq!(e.var, "BLEPAY_JWT_JWKS_CA_FILE");
}

#[test]
fn a_plain_http_jwks_url_is_refused_off_loopback() {
    for url in [
        "http://id.example.com/.well-known/jwks.json",
        "http://10.0.0.7:8080/jwks.json",
        "http://localhost.evil.example/jwks.json",
        // The host is evil.example; "127.0.0.1" is only user info.
        "http://127.0.0.1@evil.example/jwks.json",
        "ftp://id.example.com/jwks.json",
        "/jwks.json",
    ] {
        let e = TokenVerifier::jwks_url(url, oidc_policy()).unwrap_err();
        assert_eq!(e.var, "BLEPAY_JWT_JWKS_URL", "{url}");
        assert!(e.message.contains("https://"), "{url}: {e}");
    }
    // Also as `blepay serve` reads it.
    let e = Settings {
        jwt: JwtSettings {
            jwks_url: Some("http://id.example.com/jwks.json".into()),
            issuer: Some(ISSUER.into()),
            audience: Some(AUDIENCE.into()),
            ..JwtSettings::default()
        },
        ..Settings::default()
    }
    .validate()
    .unwrap_err();
    assert_eq!(e.var, "BLEPAY_JWT_JWKS_URL");
    // Loopback (a test, a sidecar) may be plain http; https anywhere.
    for url in [
        "http://127.0.0.1:8080/jwks.json",
        "http://[::1]:8080/jwks.json",
        "http://localhost:8080/jwks.json",
        "https://id.example.com/.well-known/jwks.json",
    ] {
        TokenVerifier::jwks_url(url, oidc_policy()).unwrap();
    }
}

#[test]
fn a_jwks_of_hmac_keys_only_is_refused() {
    let doc =
        json!({"keys": [{"kty": "oct", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0", "kid": "x"}]});
    let e = TokenVerifier::jwks(&doc.to_string(), oidc_policy()).unwrap_err();
    assert_eq!(e.var, "BLEPAY_JWT_JWKS_FILE");
}
