//! The machine's slot clock: local seconds corrected by the server time of every authenticated
//! answer.
//!
//! The machine has some local seconds counter (a monotonic timer since boot, or an RTC). It never
//! trusts it, nor the network clock (NITZ/`AT+CCLK` may say 2004): every authenticated answer
//! carries `server_time` (docs/protocol.md §3.4), and the clock keeps
//! `offset = server_time − local time at the middle of the round trip`. Taking a fresh offset from
//! every answer corrects the local crystal's drift; the server accepts ±1 slot (30 s), which a
//! 150 ppm crystal only loses after days without any answer.
//!
//! After a reboot the clock is *not synchronised* until the first answer, whatever was persisted
//! ([`Clock::restore`]): the advert then carries the clock-not-synchronised flag.

/// Server time from local time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Clock {
    offset: i64,
    synced: bool,
}

impl Clock {
    /// A clock that has never been synchronised: server time = local time.
    pub const fn new() -> Self {
        Self {
            offset: 0,
            synced: false,
        }
    }

    /// The clock after a reboot: the persisted offset is kept as the best estimate (useful when
    /// the local time is an RTC that survived), but the clock counts as not synchronised until
    /// the next answer.
    pub const fn restore(offset: i64) -> Self {
        Self {
            offset,
            synced: false,
        }
    }

    /// The estimated server unix time at local time `local_now`.
    pub const fn server_now(&self, local_now: u64) -> u64 {
        local_now.saturating_add_signed(self.offset)
    }

    /// `server_time − local time`, seconds.
    pub const fn offset(&self) -> i64 {
        self.offset
    }

    /// True once an authenticated answer has set the clock since boot.
    pub const fn is_synced(&self) -> bool {
        self.synced
    }

    /// Take the time from an authenticated answer to a request sent at local `sent_at` and
    /// answered at local `received_at`: the server stamped it around the middle of the round
    /// trip. Returns true when this is the first sync since boot.
    pub fn sync(&mut self, server_time: u64, sent_at: u64, received_at: u64) -> bool {
        let (lo, hi) = if sent_at <= received_at {
            (sent_at, received_at)
        } else {
            (received_at, sent_at)
        };
        let middle = lo + (hi - lo) / 2;
        let server = i128::from(server_time);
        let local = i128::from(middle);
        self.offset = i64::try_from(server - local).unwrap_or(if server > local {
            i64::MAX
        } else {
            i64::MIN
        });
        let first = !self.synced;
        self.synced = true;
        first
    }
}
