//! The link to the server, as the device sees it: one blocking HTTP `POST` at a time.
//!
//! The session engine ([`crate::engine`]) is sans-IO; a [`Transport`] is what the firmware (or
//! `blepay device run`) plugs in to carry its sealed frames: a SIM800 AT-command modem on the
//! machine, a plain HTTP client on a PC. The driver loop ([`crate::driver`]) connects the two.

/// What the transport knows about the link without sending anything (asked at heartbeat time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkStatus {
    /// Whether the modem is attached (its data bearer is up); `None` when not known.
    pub attached: Option<bool>,
    /// `AT+CSQ` `<rssi>`: 0..=31, or 99 ([`blepay_core::telemetry::SIGNAL_UNKNOWN`]) when not known.
    pub signal_quality: u8,
}

impl LinkStatus {
    /// Nothing known (a plain HTTP client).
    pub const UNKNOWN: Self = Self {
        attached: None,
        signal_quality: blepay_core::telemetry::SIGNAL_UNKNOWN,
    };
}

/// One blocking HTTP exchange with the blepay server.
///
/// `path` is the request path (`/v1/device`), `body` the sealed request frame (sent as
/// `Content-Type: application/octet-stream`). On success, the response body is appended to
/// `response` (which the caller clears beforehand) and the HTTP status code is returned.
pub trait Transport {
    /// A link-level failure (no network, timeout, modem error, ...). The request will be retried
    /// with the same bytes.
    type Error: core::fmt::Debug;

    /// POST `body` to `path`; fill `response` with the response body; return the HTTP status.
    ///
    /// # Errors
    /// The request could not be carried or no complete answer arrived.
    fn post(
        &mut self,
        path: &str,
        body: &[u8],
        response: &mut alloc::vec::Vec<u8>,
    ) -> Result<u16 /*HTTP status*/, Self::Error>;

    /// The link's state, read locally (no data sent): the driver asks before each heartbeat and
    /// puts it in the telemetry and the advert's link-down flag. The default knows nothing.
    fn link_status(&mut self) -> LinkStatus {
        LinkStatus::UNKNOWN
    }
}

/// The request path of the device endpoint.
pub const DEVICE_PATH: &str = "/v1/device";

/// The whole HTTP/1.1 request carrying `frame` to `host`, byte for byte, for a transport that
/// writes raw TCP (e.g. SIM800 `AT+CIPSEND`):
///
/// ```text
/// POST /v1/device HTTP/1.1\r\n
/// Host: <host>\r\n
/// Content-Type: application/octet-stream\r\n
/// Content-Length: <n>\r\n
/// \r\n
/// <frame>
/// ```
pub fn http_post_request(host: &str, frame: &[u8]) -> alloc::vec::Vec<u8> {
    use alloc::string::ToString;
    let mut out = alloc::vec::Vec::with_capacity(96 + host.len() + frame.len());
    for part in [
        "POST ",
        DEVICE_PATH,
        " HTTP/1.1\r\nHost: ",
        host,
        "\r\nContent-Type: application/octet-stream\r\nContent-Length: ",
        &frame.len().to_string(),
        "\r\n\r\n",
    ] {
        out.extend_from_slice(part.as_bytes());
    }
    out.extend_from_slice(frame);
    out
}
