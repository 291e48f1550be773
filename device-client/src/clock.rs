//! The machine's slot clock: local seconds corrected by the server time of the authenticated
//! answers.
//!
//! The machine has some local seconds counter (a monotonic timer since boot, or an RTC). It never
//! trusts it, nor the network clock (NITZ/`AT+CCLK` may say 2004): every authenticated answer
//! carries `server_time` (docs/protocol.md §3.4), and the clock keeps
//! `offset = server_time − local time`.
//!
//! **What an answer proves.** The server stamped `server_time` before the answer arrived, so at the
//! local time the answer is received the true server time is *at least* `server_time` — whatever
//! the answer (fresh, a byte-identical retry's saved answer, one an attacker held back). Only an
//! answer to a request sent for the first time at a known local time `sent_at` (the server cannot
//! have stamped it before that) also gives an upper bound: `server_time + (received_at − sent_at)`.
//! Hence two kinds of samples ([`Clock::observe`]):
//! - **bounded** (a fresh exchange whose round trip is at most [`Clock::max_rtt`]): the clock takes
//!   the middle of the round trip, `server_time` at `(sent_at + received_at) / 2` — it may move back
//!   by at most half the round trip, the error the bound allows;
//! - **lower bound only** (a retry, a request that may have been sent before a reboot, a round
//!   trip longer than the bound): the clock only moves *forward*, to `server_time` at
//!   `received_at`, if it is behind; it **never steps backwards** on such an answer.
//!
//! The clock counts as synchronised ([`Clock::is_synced`]) after the first bounded sample since
//! boot; before that the advert carries the clock-not-synchronised flag.
//!
//! **Drift.** From successive bounded samples at least [`DRIFT_BASELINE_SECS`] apart the clock
//! estimates how fast the local crystal runs against the server ([`Clock::drift_ppm`]); it is
//! reported, not applied: at the 30-minute default heartbeat a 100 ppm crystal drifts
//! 1800 s × 100 × 10⁻⁶ = 0.18 s between two answers (a 150 ppm one 0.27 s), far below the 1 s
//! resolution of `server_time` and well inside the server's ±1 slot (±30 s) window; the window is
//! only at risk after about 3.5 days without any answer at 100 ppm.
//!
//! After a reboot the clock is *not synchronised* until the first bounded answer, whatever was
//! persisted ([`Clock::restore`]).

/// The shortest baseline between two bounded samples used for the drift estimate (1 h: with
/// 1 s timestamps the estimate is then good to about ±300 ppm, and better the longer it runs).
pub const DRIFT_BASELINE_SECS: u64 = 3600;

/// The longest round trip a sample may have to correct the clock (seconds): the midpoint is then
/// within ±10 s of the truth, a third of the ±30 s slot window.
pub const DEFAULT_MAX_RTT_SECS: u64 = 20;

/// What one answer did to the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    /// The sample had an upper bound (fresh exchange, round trip within [`Clock::max_rtt`]).
    pub bounded: bool,
    /// This was the first bounded sample since boot (the clock just became synchronised).
    pub first: bool,
    /// How far the offset moved, seconds (positive: forward).
    pub moved: i64,
}

/// Server time from local time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    offset: i64,
    synced: bool,
    max_rtt: u64,
    /// The first bounded sample since boot: (local time at its middle, offset).
    anchor: Option<(u64, i64)>,
    drift_ppm: Option<i32>,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    /// A clock that has never been synchronised: server time = local time.
    pub const fn new() -> Self {
        Self::restore(0)
    }

    /// The clock after a reboot: the persisted offset is kept as the best estimate (useful when
    /// the local time is an RTC that survived), but the clock counts as not synchronised until
    /// the next bounded answer.
    pub const fn restore(offset: i64) -> Self {
        Self {
            offset,
            synced: false,
            max_rtt: DEFAULT_MAX_RTT_SECS,
            anchor: None,
            drift_ppm: None,
        }
    }

    /// The same clock with a different round-trip bound (seconds).
    #[must_use]
    pub const fn with_max_rtt(mut self, secs: u64) -> Self {
        self.max_rtt = secs;
        self
    }

    /// The longest round trip a sample may have to correct the clock.
    pub const fn max_rtt(&self) -> u64 {
        self.max_rtt
    }

    /// The estimated server unix time at local time `local_now`.
    pub const fn server_now(&self, local_now: u64) -> u64 {
        local_now.saturating_add_signed(self.offset)
    }

    /// `server_time − local time`, seconds.
    pub const fn offset(&self) -> i64 {
        self.offset
    }

    /// True once a bounded answer has set the clock since boot.
    pub const fn is_synced(&self) -> bool {
        self.synced
    }

    /// How fast the local clock runs against the server's, parts per million (positive: the
    /// local crystal is fast), once two bounded samples are [`DRIFT_BASELINE_SECS`] apart.
    pub const fn drift_ppm(&self) -> Option<i32> {
        self.drift_ppm
    }

    /// Take the time from an authenticated answer received at local `received_at`. `sent_at` is
    /// the local time the request was first sent *if* it had never been sent before (then the
    /// answer cannot be older than that); `None` when it may have been (a retry, a request
    /// recovered from the outbox after a reboot). See the module docs for the rules.
    pub fn observe(
        &mut self,
        server_time: u64,
        sent_at: Option<u64>,
        received_at: u64,
    ) -> Observed {
        let before = self.offset;
        let bounded = sent_at.filter(|&s| s <= received_at && received_at - s <= self.max_rtt);
        let first = bounded.is_some() && !self.synced;
        match bounded {
            Some(sent) => {
                let middle = sent + (received_at - sent) / 2;
                self.offset = offset_of(server_time, middle);
                self.synced = true;
                self.estimate_drift(middle);
            }
            None => {
                // Only a lower bound: move forward if behind, never back.
                if self.server_now(received_at) < server_time {
                    self.offset = offset_of(server_time, received_at);
                }
            }
        }
        Observed {
            bounded: bounded.is_some(),
            first,
            moved: self.offset.saturating_sub(before),
        }
    }

    /// A fresh exchange sent at local `sent_at` and answered at local `received_at` (the request
    /// had never been sent before): [`Clock::observe`] with a known send time. Returns true when
    /// this is the first bounded sample since boot.
    pub fn sync(&mut self, server_time: u64, sent_at: u64, received_at: u64) -> bool {
        self.observe(server_time, Some(sent_at), received_at).first
    }

    fn estimate_drift(&mut self, local: u64) {
        let Some((at, offset)) = self.anchor else {
            self.anchor = Some((local, self.offset));
            return;
        };
        let baseline = local.saturating_sub(at);
        if baseline < DRIFT_BASELINE_SECS {
            return;
        }
        // offset = server − local: a fast local clock makes it shrink.
        let delta = i128::from(offset) - i128::from(self.offset);
        let ppm = delta * 1_000_000 / i128::from(baseline);
        self.drift_ppm =
            Some(i32::try_from(ppm).unwrap_or(if ppm > 0 { i32::MAX } else { i32::MIN }));
    }
}

fn offset_of(server: u64, local: u64) -> i64 {
    let d = i128::from(server) - i128::from(local);
    i64::try_from(d).unwrap_or(if d > 0 { i64::MAX } else { i64::MIN })
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 1_770_000_000;

    #[test]
    fn a_fresh_answer_sets_the_middle_of_the_round_trip() {
        let mut c = Clock::new();
        let o = c.observe(T, Some(100), 104);
        assert!(o.bounded && o.first && c.is_synced());
        assert_eq!(c.server_now(102), T);
        assert_eq!(c.server_now(104), T + 2);
    }

    #[test]
    fn an_answer_older_than_the_estimate_never_steps_the_clock_back() {
        let mut c = Clock::new();
        c.sync(T, 100, 100);
        // a retried request's saved answer, stamped 50 s ago
        let o = c.observe(T + 10, None, 160);
        assert_eq!((o.bounded, o.moved), (false, 0));
        assert_eq!(c.server_now(160), T + 60);
        // an answer held back beyond the round-trip bound: not a correction either
        let o = c.observe(T + 20, Some(170), 170 + DEFAULT_MAX_RTT_SECS + 1);
        assert_eq!((o.bounded, o.moved), (false, 0));
        assert_eq!(c.server_now(200), T + 100);
    }

    #[test]
    fn an_unbounded_answer_moves_a_clock_that_is_behind_forward() {
        let mut c = Clock::new();
        c.sync(T, 100, 100);
        let o = c.observe(T + 100, None, 150);
        assert_eq!((o.bounded, o.moved), (false, 50));
        assert_eq!(c.server_now(150), T + 100);
    }

    #[test]
    fn a_fresh_answer_corrects_a_fast_clock_within_its_round_trip() {
        let mut c = Clock::new();
        c.sync(T, 100, 100);
        // 3 s fast after 60 s: fresh, 2 s round trip
        let o = c.observe(T + 57, Some(159), 161);
        assert!(o.bounded && !o.first);
        assert_eq!(o.moved, -3);
        assert_eq!(c.server_now(160), T + 57);
    }

    #[test]
    fn an_unbounded_answer_does_not_synchronise_a_rebooted_clock() {
        let mut c = Clock::restore(5);
        let o = c.observe(T, None, 100);
        assert!(!o.bounded && !c.is_synced());
        assert_eq!(c.server_now(100), T, "moved forward to the lower bound");
        assert!(c.sync(T + 10, 110, 110));
        assert!(c.is_synced());
    }

    #[test]
    fn drift_is_estimated_from_bounded_samples_an_hour_apart() {
        let mut c = Clock::new();
        c.sync(T, 0, 0);
        c.sync(T + 1000, 1000, 1000);
        assert_eq!(c.drift_ppm(), None, "baseline too short");
        // the local crystal ran 1 s fast over 10 000 s: +100 ppm
        c.sync(T + 9_999, 10_000, 10_000);
        assert_eq!(c.drift_ppm(), Some(100));
    }
}
