//! The values that cross the [`crate::Store`] trait.

use blepay_core::{
    Amount, DeviceId, DeviceName, IdempotencyKey, KeyEpoch, KeyVersion, Session, SessionError,
    SessionId, Slot, Tariff, Telemetry, UnitName, Units, UseCounter, UserId, Wallet,
};

/// A registered machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    pub id: DeviceId,
    pub name: DeviceName,
    pub tariff: Tariff,
    /// The master-key version its device key was derived with.
    pub key_version: KeyVersion,
    pub created_at: u64,
    /// Whether it may take payments (`PATCH /v1/ops/devices/{id}`, decommission).
    pub service_state: crate::ServiceState,
    /// Its key epoch, a rotation under way, its revocation (docs/protocol.md §1.1).
    pub keys: DeviceKeys,
}

/// A device's key state: which key epochs its adverts and frames may be tagged under.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceKeys {
    /// The epoch of the key it is provisioned with (0 at registration).
    pub epoch: KeyEpoch,
    /// A rotation issued and not yet seen: the new epoch, accepted alongside `epoch` until the
    /// first frame tagged under it arrives (then it becomes `epoch` and the old key is refused).
    pub pending: Option<KeyEpoch>,
    /// The idempotency key of the last rotation and the epoch it issued.
    pub last_rotation: Option<(IdempotencyKey, KeyEpoch)>,
    /// Revoked: every advert and frame is refused as forged, for good.
    pub revoked: Option<Revocation>,
}

/// When and why a device's key was revoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub at: u64,
    pub reason: String,
}

/// How an advert's or frame's key epoch stands against the device's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyUse {
    /// The device's current key.
    Current,
    /// The key of the pending rotation: a frame under it completes the rotation.
    Pending,
    /// Revoked, or an epoch the device is not (or no longer) keyed with: refuse as forged.
    Refused,
}

impl DeviceKeys {
    /// How `epoch` stands.
    pub fn key_use(&self, epoch: KeyEpoch) -> KeyUse {
        if self.revoked.is_some() {
            KeyUse::Refused
        } else if epoch == self.epoch {
            KeyUse::Current
        } else if self.pending == Some(epoch) {
            KeyUse::Pending
        } else {
            KeyUse::Refused
        }
    }

    /// The epochs a tag may verify under, current first (none once revoked).
    pub fn accepted(&self) -> impl Iterator<Item = KeyEpoch> {
        let live = self.revoked.is_none();
        [Some(self.epoch), self.pending]
            .into_iter()
            .flatten()
            .filter(move |_| live)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterOutcome {
    Created,
    Exists,
}

/// A machine and what the server knows of its liveness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceStatus {
    pub device: DeviceRecord,
    /// Unix seconds of the last authenticated request with a fresh sequence number, if any (a
    /// retry answered from the saved answer, a replay or a refused number never refresh it).
    pub last_seen: Option<u64>,
    /// The AUTHORIZED or ACTIVE session on it, if any.
    pub open_session: Option<SessionId>,
    /// The telemetry of its latest heartbeat, if any.
    pub telemetry: Option<Telemetry>,
    /// When that heartbeat arrived (unix seconds).
    pub telemetry_at: Option<u64>,
}

/// What the machine's verified advert signals about itself (its flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AdvertSignals {
    /// The link-down flag: the modem is not attached or its last exchange failed.
    pub link_down: bool,
    /// The fault flag.
    pub fault: bool,
}

impl DeviceStatus {
    /// The machine's state, first match wins: OFFLINE when nothing fresh was heard for
    /// `offline_after_secs` (or ever) or the advert signals link down; FAULT when the advert
    /// signals a fault; BUSY with an open session; else IDLE.
    pub fn state(&self, now: u64, offline_after_secs: u64, signals: AdvertSignals) -> DeviceState {
        match self.last_seen {
            None => DeviceState::Offline,
            Some(t) if now.saturating_sub(t) > offline_after_secs => DeviceState::Offline,
            Some(_) if signals.link_down => DeviceState::Offline,
            Some(_) if signals.fault => DeviceState::Fault,
            Some(_) if self.open_session.is_some() => DeviceState::Busy,
            Some(_) => DeviceState::Idle,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceState {
    Idle,
    Busy,
    Offline,
    /// The advert's fault flag is set.
    Fault,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopUpOutcome {
    Credited(Wallet),
    /// The key was used before for the same user and amount: nothing credited.
    Replayed(Wallet),
    /// The key was used before with another amount.
    KeyReused,
    /// The credit would take the wallet above [`blepay_core::Amount::MAX`]: nothing credited.
    LimitExceeded,
}

/// Everything `pay` needs, already parsed and verified by the caller.
#[derive(Debug, Clone)]
pub struct PayCommand {
    pub user: UserId,
    pub key: IdempotencyKey,
    pub device: DeviceId,
    pub slot: Slot,
    pub use_counter: UseCounter,
    pub max_amount: Amount,
    /// A fresh random id, used when a session is created.
    pub session_id: SessionId,
    pub now: u64,
    pub start_timeout_secs: u64,
    pub offline_after_secs: u64,
    /// The verified advert's flags.
    pub signals: AdvertSignals,
    /// The per-user limits on pay (issue 10, M4).
    pub limits: PayLimits,
    /// The deployment's daily spending cap (`BLEPAY_DAILY_SPENDING_LIMIT`; `None`: no cap),
    /// unless the user has an override ([`crate::effective_daily_limit`]).
    pub daily_limit: Option<Amount>,
    /// The key epoch the advert's tag verified under (refused unless the device accepts it).
    pub key_epoch: KeyEpoch,
}

/// Per-user limits on pay: locking a machine must cost something (issue 10, M4). A pay refused by
/// either limit changes nothing; a retry of a pay that went through is answered whatever the
/// limits say now. The service builds this from its `BLEPAY_MAX_UNSTARTED_PER_USER`,
/// `BLEPAY_PAY_RATE_MAX` and `BLEPAY_PAY_RATE_WINDOW_SECS` (validated there: all at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayLimits {
    /// AUTHORIZED sessions (paid, not started, not past their start deadline) one user may hold.
    pub max_unstarted_per_user: u32,
    /// Sessions one user may open per rate window.
    pub rate_max: u32,
    /// The length of a rate window, in seconds. Windows are fixed: window `w` is
    /// `[w * rate_window_secs, (w + 1) * rate_window_secs)`.
    pub rate_window_secs: u64,
}

impl PayLimits {
    /// The service's defaults: one machine waiting per user, 10 pays an hour.
    pub const DEFAULT: Self = Self {
        max_unstarted_per_user: 1,
        rate_max: 10,
        rate_window_secs: 3600,
    };

    /// The number of the rate window `now` falls in (a window of 0 seconds counts as 1).
    pub const fn window(&self, now: u64) -> u64 {
        now / self.window_len()
    }

    /// When the window `now` falls in began (unix seconds).
    pub const fn window_start(&self, now: u64) -> u64 {
        self.window(now) * self.window_len()
    }

    /// Seconds from `now` until the next window begins (at least 1).
    pub const fn secs_to_next_window(&self, now: u64) -> u64 {
        self.window_start(now) + self.window_len() - now
    }

    const fn window_len(&self) -> u64 {
        if self.rate_window_secs == 0 {
            1
        } else {
            self.rate_window_secs
        }
    }
}

impl Default for PayLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayOutcome {
    Created(Session),
    /// The same user and key paid before for the same machine and amount: that session, no new hold.
    Replayed(Session),
    /// `max_amount` is below the price of one unit on this machine.
    BelowUnitPrice {
        price: Amount,
        unit_name: UnitName,
    },
    DeviceUnknown,
    /// The machine is OUT_OF_SERVICE or DECOMMISSIONED.
    DeviceOutOfService,
    /// Nothing fresh heard within `offline_after_secs`, or the advert signals link down.
    DeviceOffline,
    /// The advert signals a fault.
    DeviceFault,
    DeviceBusy,
    AdvertUsed,
    InsufficientFunds {
        available: Amount,
    },
    /// The key was used before for another machine or amount.
    KeyReused,
    /// The advert verified under a key the device no longer accepts (revoked, or rotated away):
    /// answered as a forged advert.
    KeyRefused,
    /// The user already holds [`PayLimits::max_unstarted_per_user`] AUTHORIZED sessions.
    TooManyUnstarted {
        max: u32,
    },
    /// The user already opened [`PayLimits::rate_max`] sessions in this rate window; the next
    /// window begins in `retry_after_secs`.
    RateLimited {
        retry_after_secs: u64,
    },
    /// The hold would take the user's spending of the day (holds plus captures of the sessions
    /// authorized this UTC day) above their daily cap.
    SpendingLimit {
        limit: Amount,
        spent_today: Amount,
    },
}

/// What a machine asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceOp {
    Poll,
    /// The start button was pressed: start the AUTHORIZED session waiting on the machine.
    Press,
    /// An idle machine's heartbeat, with its telemetry (validated by the codec).
    Heartbeat(Telemetry),
    Start {
        session: SessionId,
    },
    Report {
        session: SessionId,
        units: Units,
        last: bool,
    },
    /// An authenticated frame whose body does not decode into an operation (not a valid
    /// `DeviceRequest`, a session id of the wrong length, no operation): the decoder's message.
    /// It runs nothing, but is answered [`DeviceOpResult::FrameInvalid`] and that refusal is saved
    /// with its sequence number like any other (docs/protocol.md §3.3).
    Invalid(String),
}

/// One authenticated machine request, after its frame's MAC was verified.
#[derive(Debug, Clone)]
pub struct DeviceCall {
    pub device: DeviceId,
    /// The master-key version the frame's tag verified under. Only the device's registered one
    /// ([`DeviceRecord::key_version`]) is accepted ([`crate::decide::check_call`]).
    pub key_version: KeyVersion,
    /// The key epoch the frame's tag verified under ([`DeviceKeys::key_use`]).
    pub key_epoch: KeyEpoch,
    /// The pending epoch the answer carries a key update for (what the caller saw in
    /// [`DeviceKeys::pending`] when it verified the frame under the current key). The store
    /// refuses the call as forged when the device's pending epoch is another one, so an answer
    /// never hands out a key the server would not accept.
    pub key_update: Option<KeyEpoch>,
    pub seq: u32,
    /// A digest of the whole request frame, to tell a retry from a different request.
    pub digest: [u8; 32],
    pub op: DeviceOp,
    pub now: u64,
    /// `BLEPAY_ACTIVE_TIMEOUT_SECS`: an ACTIVE session read by the request whose report deadline
    /// passed is closed by timeout first ([`blepay_core::Session::time_out`]).
    pub active_timeout_secs: u64,
}

/// The result of a device operation, before encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceOpResult {
    /// Poll: the AUTHORIZED sessions waiting for this machine's start.
    Grants(Vec<Session>),
    /// Start or report: the session after the operation.
    Session(Session),
    /// Press: the session now ACTIVE on the machine (started by this press or an earlier one),
    /// with its terms.
    Started(Session),
    /// Press: no session is waiting on the machine; nothing changed.
    NoSessionWaiting,
    /// Heartbeat: the telemetry was saved.
    Ack,
    SessionNotFound,
    Refused(SessionError),
    /// The operation did not decode ([`DeviceOp::Invalid`]): its message. Nothing changed.
    FrameInvalid(String),
}

/// A machine request's answer, as the encoder produced it and the store saved it with the
/// request's sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedAnswer {
    /// The answer to send (the service saves a sealed response frame).
    pub frame: Vec<u8>,
    /// The refusal code the answer carries; `None` for an answer that is not a refusal. Answers
    /// saved before codes were stored (SQLite schema version 1, DynamoDB items without
    /// `last_code`) read back as `None`.
    pub code: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceCallOutcome {
    /// The operation ran; this is the saved answer (what the encoder produced).
    Fresh(SavedAnswer),
    /// A retry of the last request: the answer saved the first time, byte for byte.
    Retry(SavedAnswer),
    /// `seq` is not newer than the last accepted one (or reuses it with other bytes): refused,
    /// nothing ran.
    Replayed {
        last_seq: u32,
    },
    DeviceUnknown,
    /// The frame verified under a key version that is not the device's registered one (a
    /// retired master key): refused like a forged frame, nothing ran, nothing was saved.
    KeyVersionRefused,
}

/// Reconciliation totals, all in minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Audit {
    pub top_ups: i64,
    pub available: i64,
    pub held: i64,
    pub spent: i64,
    pub revenue: i64,
    /// Sum of the holds of AUTHORIZED and ACTIVE sessions.
    pub open_holds: i64,
    /// Sum of every ledger account's balance (must be 0).
    pub ledger_sum: i64,
    /// Users whose wallet differs from their ledger accounts (must be 0).
    pub mismatched_wallets: u64,
    /// Sum of the wallets' `refunded` totals.
    pub refunded: i64,
    /// Sum of the REFUND ledger entries.
    pub refund_entries: i64,
    /// Sum of the sessions' `refunded` totals.
    pub session_refunds: i64,
    /// Sessions whose refunds exceed what they captured (must be 0).
    pub over_refunded_sessions: u64,
    /// Sum of the PROVIDER_CREDIT ledger entries.
    pub provider_credits: i64,
    /// Sum of the PROVIDER_DEBIT ledger entries.
    pub provider_debits: i64,
    /// Sum of the clearing accounts' balances (must be `provider_debits - provider_credits`).
    pub clearing: i64,
    /// Σ over provider top-ups of `credited - debited` (must be `provider_credits -
    /// provider_debits`).
    pub topups_net: i64,
}

impl Audit {
    /// True when money is conserved to the cent: the ledger sums to zero, wallets match their
    /// accounts, Σ(available + held) + revenue = Σ top-ups + Σ provider credits − Σ provider
    /// debits with revenue net of refunds (= Σ spent, each wallet's captures less its refunds),
    /// every refund is one ledger entry and one session's, no session's refunds exceed its
    /// capture, and the providers' clearing accounts and top-up records agree with their entries.
    pub fn reconciles(&self) -> bool {
        let provider_net = self.provider_credits - self.provider_debits;
        self.ledger_sum == 0
            && self.mismatched_wallets == 0
            && self.available + self.held + self.revenue == self.top_ups + provider_net
            && self.clearing == -provider_net
            && self.topups_net == provider_net
            && self.spent == self.revenue
            && self.held == self.open_holds
            && self.refunded == self.refund_entries
            && self.refunded == self.session_refunds
            && self.over_refunded_sessions == 0
    }
}

/// Where a list continues: the sort key of the last item returned (a time and an id; each list
/// documents which time and which id it sorts by, and in which direction). Opaque to clients:
/// the service encodes it as a cursor string (`blepay_service::page`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListPosition {
    pub at: u64,
    pub id: String,
}

/// One page of a list request: at most `limit` items after `after` (from the start without).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    pub limit: u32,
    pub after: Option<ListPosition>,
}

impl PageRequest {
    /// The largest page any list returns.
    pub const MAX_LIMIT: u32 = 500;
    /// The page size when the client names none.
    pub const DEFAULT_LIMIT: u32 = 50;
}

/// A page of items, and where the next one starts (`None`: this was the last page).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<ListPosition>,
}

/// The outcome of revoking a device's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeOutcome {
    /// Revoked now; `closed` is its open session, closed in the same operation (AUTHORIZED:
    /// voided, hold released; ACTIVE: settled at its last reported units).
    Revoked {
        device: DeviceRecord,
        closed: Option<Box<Session>>,
    },
    /// It was revoked before: nothing changed.
    AlreadyRevoked(DeviceRecord),
    DeviceUnknown,
}

/// The outcome of rotating a device's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotateOutcome {
    /// A new epoch was issued (now pending).
    Issued(DeviceRecord),
    /// The same idempotency key as the last rotation, or a rotation already pending: that
    /// rotation, nothing changed.
    Existing(DeviceRecord),
    /// A revoked device is never re-keyed.
    Revoked(DeviceRecord),
    /// No epoch is left (2^32 rotations).
    Exhausted,
    DeviceUnknown,
}
