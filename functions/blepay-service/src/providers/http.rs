//! The one outbound HTTP client the provider clients share: rustls with the aws-lc-rs provider
//! (Mozilla's roots), HTTP/1.1, plain `http://` allowed only for loopback (the tests' fixture
//! servers), every request bounded in time and every answer in size.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The most an answer from a provider may hold: their JSON objects are a few KiB.
pub const MAX_ANSWER_BYTES: usize = 256 * 1024;
/// How long one attempt may take, connect to last byte.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an outbound request got no answer to interpret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutboundError {
    /// Connect, TLS, IO or timeout: nothing is known about what the provider did; retrying with
    /// the same idempotency key is safe.
    #[error("provider unreachable: {0}")]
    Unreachable(String),
    /// The answer was larger than [`MAX_ANSWER_BYTES`] or not readable.
    #[error("provider answer unreadable: {0}")]
    BadAnswer(String),
    /// The URL is not `https://` (or `http://` to a loopback address).
    #[error("refusing a non-TLS provider URL: {0}")]
    Insecure(String),
}

/// One provider answer: status, headers, body (at most [`MAX_ANSWER_BYTES`]).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A shared HTTPS client with a per-attempt timeout.
#[derive(Clone)]
pub struct Outbound {
    http: HttpClient<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Outbound {
    /// A client whose every attempt ends within `timeout`.
    ///
    /// # Errors
    /// When rustls cannot be configured (no safe protocol version: does not happen with
    /// aws-lc-rs).
    pub fn new(timeout: Duration) -> Result<Self, String> {
        use tokio_rustls::rustls;
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self {
            http: HttpClient::builder(TokioExecutor::new()).build(connector),
            timeout,
        })
    }

    /// Send one request and read its answer, within the timeout. Only `https://` URLs, and
    /// `http://` to 127.0.0.1, `[::1]` or `localhost` (fixture servers), are sent.
    ///
    /// # Errors
    /// [`OutboundError`]: no answer (retryable), an unreadable one, or an insecure URL.
    pub async fn send(&self, request: Request<Full<Bytes>>) -> Result<Answer, OutboundError> {
        let uri = request.uri();
        let loopback = matches!(
            uri.host(),
            Some("127.0.0.1" | "[::1]" | "::1" | "localhost")
        );
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if loopback => {}
            _ => return Err(OutboundError::Insecure(uri.to_string())),
        }
        let attempt = async {
            let answer = self
                .http
                .request(request)
                .await
                .map_err(|e| OutboundError::Unreachable(chain(&e)))?;
            let (parts, body) = answer.into_parts();
            let body = Limited::new(body, MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| OutboundError::BadAnswer(e.to_string()))?
                .to_bytes();
            Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(self.timeout, attempt)
            .await
            .map_err(|_| {
                OutboundError::Unreachable(format!("no answer within {:?}", self.timeout))
            })?
    }
}

/// An error and its causes, `: `-joined.
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

/// The pause before retry `attempt` (1-based): 200 ms, 400 ms, 800 ms… capped at 5 s, with up
/// to a quarter of it added at random so retries from many processes do not align.
pub fn backoff(attempt: u32) -> Duration {
    let base = 200u64
        .saturating_mul(1u64 << attempt.saturating_sub(1).min(5))
        .min(5_000);
    let jitter = rand::random::<u64>() % (base / 4 + 1);
    Duration::from_millis(base + jitter)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn plain_http_goes_only_to_loopback() {
        let c = Outbound::new(Duration::from_millis(200)).unwrap();
        let req = |url: &str| Request::get(url).body(Full::new(Bytes::new())).unwrap();
        assert!(matches!(
            c.send(req("http://api.stripe.com/v1/x")).await,
            Err(OutboundError::Insecure(_))
        ));
        // A closed loopback port: sent, and unreachable.
        assert!(matches!(
            c.send(req("http://127.0.0.1:9/")).await,
            Err(OutboundError::Unreachable(_))
        ));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(
            backoff(1) >= Duration::from_millis(200) && backoff(1) <= Duration::from_millis(250)
        );
        assert!(backoff(30) <= Duration::from_millis(6_250));
    }
}
