//! What the operator web console keeps in the stores: its server-side sign-in sessions, so that
//! signing out and expiry really end them (the cookie only names one), and the machines'
//! telemetry history its charts draw.

use blepay_core::Telemetry;

/// How long a console session's record is kept after it expired (then a store may delete it:
/// SQLite prunes on the next sign-in, DynamoDB's TTL sweeper deletes it).
pub const CONSOLE_SESSION_GRACE_SECS: u64 = 86_400;

/// How long a heartbeat's telemetry sample is kept (30 days). SQLite deletes a machine's older
/// samples when it saves a new one; DynamoDB's items carry a `ttl` this long after the sample.
pub const TELEMETRY_HISTORY_SECS: u64 = 30 * 86_400;

/// A console sign-in, as stored. Its id is only the SHA-256 of the cookie's secret: the secret
/// itself is never stored, so a read of the store cannot sign anyone in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleSession {
    /// SHA-256 of the cookie's secret.
    pub id_hash: [u8; 32],
    /// The principal signed in (`op:<id>`, or `bootstrap` for the ops token).
    pub operator: String,
    /// The role's name it signed in with (`owner`, `support`, …).
    pub role: String,
    pub created_at: u64,
    /// The first second it is no longer live.
    pub expires_at: u64,
    /// When it was signed out, if it was.
    pub ended_at: Option<u64>,
}

impl ConsoleSession {
    /// Whether the session still signs its cookie's holder in at `now`: not signed out and
    /// `now < expires_at`.
    pub const fn is_live(&self, now: u64) -> bool {
        self.ended_at.is_none() && now < self.expires_at
    }
}

/// One heartbeat's telemetry, kept [`TELEMETRY_HISTORY_SECS`] for a machine's chart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetrySample {
    /// When the heartbeat was received (unix seconds; the device's `telemetry_at`).
    pub at: u64,
    pub telemetry: Telemetry,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(expires_at: u64, ended_at: Option<u64>) -> ConsoleSession {
        ConsoleSession {
            id_hash: [1; 32],
            operator: "op:0a00000000000001".into(),
            role: "owner".into(),
            created_at: 100,
            expires_at,
            ended_at,
        }
    }

    #[test]
    fn a_session_is_live_until_it_expires_or_ends() {
        let s = session(200, None);
        assert!(s.is_live(100));
        assert!(s.is_live(199));
        assert!(
            !s.is_live(200),
            "expires_at is the first second it is not live"
        );
        assert!(!session(200, Some(150)).is_live(120), "signed out");
    }
}
