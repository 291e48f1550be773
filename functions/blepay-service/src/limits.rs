//! What one client may hold of the server: timeouts, connection and stream caps, message sizes
//! (issue 10, H1 and M1). `blepay serve` sets them from flags and `BLEPAY_*` variables; the
//! defaults are sized for phones on mobile networks and operators' scripts, with room to spare,
//! while one client (or a few hundred) cannot hold the server's memory or file descriptors.

use std::time::Duration;

use crate::config::{ConfigError, cfg_err};

/// `BLEPAY_HEADER_READ_TIMEOUT_SECS` when unset: a request's head (or, on a new connection, the
/// first request; or the TLS handshake) must arrive within this.
pub const DEFAULT_HEADER_READ_TIMEOUT_SECS: u64 = 15;
/// `BLEPAY_REQUEST_BODY_TIMEOUT_SECS` when unset: a whole request body must arrive within this
/// (the largest body is 64 KiB).
pub const DEFAULT_REQUEST_BODY_TIMEOUT_SECS: u64 = 30;
/// `BLEPAY_IDLE_TIMEOUT_SECS` when unset: a connection with no request in flight for this long
/// is closed.
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 60;
/// `BLEPAY_H2_KEEPALIVE_INTERVAL_SECS` when unset: an HTTP/2 connection is pinged this often.
pub const DEFAULT_H2_KEEPALIVE_INTERVAL_SECS: u64 = 30;
/// `BLEPAY_H2_KEEPALIVE_TIMEOUT_SECS` when unset: an unanswered ping closes the connection.
pub const DEFAULT_H2_KEEPALIVE_TIMEOUT_SECS: u64 = 20;
/// `BLEPAY_MAX_CONNECTIONS` when unset: open connections per listener; at the cap the listener
/// stops accepting (new clients wait in the kernel's backlog) until one closes.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
/// The largest `BLEPAY_MAX_CONNECTIONS` accepted.
pub const MAX_MAX_CONNECTIONS: usize = 1_000_000;
/// `BLEPAY_H2_MAX_CONCURRENT_STREAMS` when unset: streams (requests) in flight per HTTP/2
/// connection.
pub const DEFAULT_H2_MAX_CONCURRENT_STREAMS: u32 = 32;
/// The largest HTTP/2 header list (HPACK-decoded) and frame accepted.
pub const H2_MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;
/// The largest HTTP/2 frame accepted (the protocol's minimum, 16 KiB).
pub const H2_MAX_FRAME_BYTES: u32 = 16 * 1024;
/// `BLEPAY_GRPC_MAX_MESSAGE_BYTES` when unset: the largest gRPC request message of the phone,
/// operator and reflection services (their largest real message is well under 1 KiB).
pub const DEFAULT_GRPC_MAX_MESSAGE_BYTES: usize = 16 * 1024;
/// The largest `DeviceService` request message: one frame (at most 1,024 bytes,
/// `blepay_proto::frame::MAX_FRAME_LEN`) plus its protobuf field tag and length.
pub const DEVICE_GRPC_MAX_MESSAGE_BYTES: usize = blepay_proto::frame::MAX_FRAME_LEN + 16;

/// The largest `BLEPAY_GRPC_MAX_MESSAGE_BYTES` accepted: the HTTP routes' body limit.
pub const MAX_GRPC_MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Every limit a listener enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// `BLEPAY_HEADER_READ_TIMEOUT_SECS`.
    pub header_read_timeout: Duration,
    /// `BLEPAY_REQUEST_BODY_TIMEOUT_SECS`.
    pub request_body_timeout: Duration,
    /// `BLEPAY_IDLE_TIMEOUT_SECS`.
    pub idle_timeout: Duration,
    /// `BLEPAY_H2_KEEPALIVE_INTERVAL_SECS`.
    pub h2_keepalive_interval: Duration,
    /// `BLEPAY_H2_KEEPALIVE_TIMEOUT_SECS`.
    pub h2_keepalive_timeout: Duration,
    /// `BLEPAY_MAX_CONNECTIONS`, per listener.
    pub max_connections: usize,
    /// `BLEPAY_H2_MAX_CONCURRENT_STREAMS`.
    pub h2_max_concurrent_streams: u32,
    /// `BLEPAY_GRPC_MAX_MESSAGE_BYTES`: phone, ops and reflection services (DeviceService is
    /// always [`DEVICE_GRPC_MAX_MESSAGE_BYTES`]).
    pub grpc_max_message_bytes: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(DEFAULT_HEADER_READ_TIMEOUT_SECS),
            request_body_timeout: Duration::from_secs(DEFAULT_REQUEST_BODY_TIMEOUT_SECS),
            idle_timeout: Duration::from_secs(DEFAULT_IDLE_TIMEOUT_SECS),
            h2_keepalive_interval: Duration::from_secs(DEFAULT_H2_KEEPALIVE_INTERVAL_SECS),
            h2_keepalive_timeout: Duration::from_secs(DEFAULT_H2_KEEPALIVE_TIMEOUT_SECS),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            h2_max_concurrent_streams: DEFAULT_H2_MAX_CONCURRENT_STREAMS,
            grpc_max_message_bytes: DEFAULT_GRPC_MAX_MESSAGE_BYTES,
        }
    }
}

impl ServerLimits {
    /// Check the limits.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the variable: a timeout of 0, no connections or streams, a gRPC
    /// message limit below the device frame's or above [`MAX_GRPC_MAX_MESSAGE_BYTES`].
    pub fn validate(self) -> Result<Self, ConfigError> {
        for (d, var) in [
            (self.header_read_timeout, "BLEPAY_HEADER_READ_TIMEOUT_SECS"),
            (
                self.request_body_timeout,
                "BLEPAY_REQUEST_BODY_TIMEOUT_SECS",
            ),
            (self.idle_timeout, "BLEPAY_IDLE_TIMEOUT_SECS"),
            (
                self.h2_keepalive_interval,
                "BLEPAY_H2_KEEPALIVE_INTERVAL_SECS",
            ),
            (
                self.h2_keepalive_timeout,
                "BLEPAY_H2_KEEPALIVE_TIMEOUT_SECS",
            ),
        ] {
            if d.is_zero() {
                return Err(cfg_err(var, "must be at least 1 second"));
            }
        }
        if self.max_connections == 0 || self.max_connections > MAX_MAX_CONNECTIONS {
            return Err(cfg_err(
                "BLEPAY_MAX_CONNECTIONS",
                format!("must be 1 to {MAX_MAX_CONNECTIONS}"),
            ));
        }
        if self.h2_max_concurrent_streams == 0 {
            return Err(cfg_err(
                "BLEPAY_H2_MAX_CONCURRENT_STREAMS",
                "must be at least 1",
            ));
        }
        if self.grpc_max_message_bytes < DEVICE_GRPC_MAX_MESSAGE_BYTES
            || self.grpc_max_message_bytes > MAX_GRPC_MAX_MESSAGE_BYTES
        {
            return Err(cfg_err(
                "BLEPAY_GRPC_MAX_MESSAGE_BYTES",
                format!(
                    "must be {DEVICE_GRPC_MAX_MESSAGE_BYTES} to {MAX_GRPC_MAX_MESSAGE_BYTES} bytes"
                ),
            ));
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid() {
        assert_eq!(
            ServerLimits::default().validate().unwrap(),
            ServerLimits::default()
        );
    }

    #[test]
    fn a_zero_limit_names_its_variable() {
        for (limits, var) in [
            (
                ServerLimits {
                    header_read_timeout: Duration::ZERO,
                    ..ServerLimits::default()
                },
                "BLEPAY_HEADER_READ_TIMEOUT_SECS",
            ),
            (
                ServerLimits {
                    max_connections: 0,
                    ..ServerLimits::default()
                },
                "BLEPAY_MAX_CONNECTIONS",
            ),
            (
                ServerLimits {
                    grpc_max_message_bytes: 4 * 1024 * 1024,
                    ..ServerLimits::default()
                },
                "BLEPAY_GRPC_MAX_MESSAGE_BYTES",
            ),
        ] {
            assert_eq!(limits.validate().unwrap_err().var, var);
        }
    }
}
