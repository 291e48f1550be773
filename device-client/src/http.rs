//! Plain HTTP/1.1 over TCP, for development machines and Linux-class gateways (feature `std`).
//!
//! A thin [`Transport`] over a blocking [`ureq`] agent built without TLS and without gzip:
//! blepay frames authenticate themselves (docs/protocol.md §3), so plain HTTP is the protocol's
//! own assumption, the same one a SIM800 makes.
//!
//! Every request opens a fresh connection (no idle pool), like a modem's `AT+HTTPACTION`: a
//! connection that died while idle can never eat a request, and each exchange is one connection
//! for a fault-injecting proxy to cut.

use std::time::Duration;

use crate::transport::Transport;

/// Why a plain HTTP exchange failed (connection refused or cut, timeout, malformed answer).
#[derive(Debug, thiserror::Error)]
#[error("HTTP exchange with {server} failed: {source}")]
pub struct HttpError {
    server: String,
    #[source]
    source: ureq::Error,
}

/// Blocking HTTP client for the device endpoint.
#[derive(Debug, Clone)]
pub struct HttpTransport {
    agent: ureq::Agent,
    server: String,
    max_response: u64,
}

impl HttpTransport {
    /// A client for `server` (`http://host:port`), each exchange bounded by `timeout`.
    pub fn new(server: &str, timeout: Duration) -> Self {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .max_idle_connections(0)
            .max_idle_connections_per_host(0)
            .build();
        Self {
            agent: config.into(),
            server: server.trim_end_matches('/').to_owned(),
            max_response: 64 * 1024,
        }
    }
}

impl Transport for HttpTransport {
    type Error = HttpError;

    fn post(
        &mut self,
        path: &str,
        body: &[u8],
        response: &mut Vec<u8>,
    ) -> Result<u16, Self::Error> {
        let fail = |source| HttpError {
            server: self.server.clone(),
            source,
        };
        let mut answer = self
            .agent
            .post(format!("{}{path}", self.server))
            .header("content-type", "application/octet-stream")
            .send(body)
            .map_err(fail)?;
        let status = answer.status().as_u16();
        let bytes = answer
            .body_mut()
            .with_config()
            .limit(self.max_response)
            .read_to_vec()
            .map_err(fail)?;
        response.extend_from_slice(&bytes);
        Ok(status)
    }
}
