//! The log lines of the sessions the clock closes — an AUTHORIZED session expired (not started in
//! time) and an ACTIVE one settled by timeout (no report in time) — written by the store that
//! committed the close, whichever operation met the session: the sweeper's, or any read or write
//! that found it overdue on the way (the [`Store`](crate::Store) contract). One function each,
//! so both stores write the same line; a store calls it only once the close is durable.

use blepay_core::{Amount, Session};

/// `session expired: not started in time, hold released`, at INFO, with the ids and the hold.
pub fn log_expired(s: &Session) {
    tracing::info!(
        session = %s.id,
        device = %s.device_id,
        user = %s.user_id,
        released = %s.hold,
        "session expired: not started in time, hold released"
    );
}

/// `session settled by timeout: no report in time`, at INFO, with the ids, the units and the
/// money captured and released.
pub fn log_timed_out(s: &Session) {
    // The store settled it by the core's rule, so the capture is within the hold.
    let released = s.hold.checked_sub(s.amount).unwrap_or(Amount::ZERO);
    tracing::info!(
        session = %s.id,
        device = %s.device_id,
        user = %s.user_id,
        units = s.units.get(),
        captured = %s.amount,
        released = %released,
        "session settled by timeout: no report in time"
    );
}
