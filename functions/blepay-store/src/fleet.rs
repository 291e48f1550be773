//! The values of the machine lifecycle (service state, updates, the fleet list) and of the daily
//! spending cap that cross the [`crate::Store`] trait (issue 11, items 4 and 6).

use blepay_core::{Amount, DeviceName, Session, SessionStatus, Tariff};

use crate::{DeviceState, DeviceStatus};

/// Whether a machine takes payments. Every machine starts IN_SERVICE; DECOMMISSIONED is terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum ServiceState {
    #[default]
    InService,
    /// Taken out of service by an operator: verify shows it, pay is refused; can be put back.
    OutOfService,
    /// Out of service for good; its history stays.
    Decommissioned,
}

impl ServiceState {
    /// The stored (and wire) name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InService => "IN_SERVICE",
            Self::OutOfService => "OUT_OF_SERVICE",
            Self::Decommissioned => "DECOMMISSIONED",
        }
    }

    /// The inverse of [`Self::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "IN_SERVICE" => Some(Self::InService),
            "OUT_OF_SERVICE" => Some(Self::OutOfService),
            "DECOMMISSIONED" => Some(Self::Decommissioned),
            _ => None,
        }
    }
}

/// An operator's change to a machine; `None` fields stay as they are.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceUpdate {
    pub name: Option<DeviceName>,
    /// Applies to sessions authorized after the change: a session keeps the tariff it was
    /// authorized with.
    pub tariff: Option<Tariff>,
    pub service_state: Option<ServiceState>,
}

impl DeviceUpdate {
    /// The update that decommissions a machine.
    pub fn decommission() -> Self {
        Self {
            service_state: Some(ServiceState::Decommissioned),
            ..Self::default()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "one value per request, moved once; boxing buys nothing"
)]
pub enum DeviceUpdateOutcome {
    /// The record changed: the machine after the change.
    Updated(DeviceStatus),
    /// The update asked for what the record already is: nothing written.
    Unchanged(DeviceStatus),
    DeviceUnknown,
    /// The machine is DECOMMISSIONED: nothing but decommissioning it again is accepted.
    Decommissioned,
}

/// The filters of the fleet list (`GET /v1/ops/devices`). The list is sorted by device id.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceFilter {
    /// Only machines in this state (as [`DeviceStatus::state`] computes it with
    /// `offline_after_secs` and the latest heartbeat's fault codes as the fault signal).
    pub state: Option<DeviceState>,
    pub service_state: Option<ServiceState>,
    /// Only machines whose name starts with this (case-sensitive).
    pub name_prefix: Option<String>,
    /// `BLEPAY_OFFLINE_AFTER_SECS`, for `state`.
    pub offline_after_secs: u64,
}

impl DeviceFilter {
    /// Whether `d` passes every filter at `now`.
    pub fn matches(&self, d: &DeviceStatus, now: u64) -> bool {
        self.state
            .is_none_or(|s| listed_state(d, now, self.offline_after_secs) == s)
            && self
                .service_state
                .is_none_or(|s| d.device.service_state == s)
            && self
                .name_prefix
                .as_deref()
                .is_none_or(|p| d.device.name.as_str().starts_with(p))
    }
}

/// A machine's state as the server knows it without an advert: the latest heartbeat's fault codes
/// are the machine's own word, as the advert's fault flag is.
pub fn listed_state(d: &DeviceStatus, now: u64, offline_after_secs: u64) -> DeviceState {
    let signals = crate::AdvertSignals {
        link_down: false,
        fault: d
            .telemetry
            .as_ref()
            .is_some_and(|t| !t.fault_codes.is_empty()),
    };
    d.state(now, offline_after_secs, signals)
}

/// The length of a spending day: the cap counts per UTC day.
pub const SPENDING_DAY_SECS: u64 = 86_400;

/// The UTC day `t` falls in (days since the epoch).
pub const fn spending_day(t: u64) -> u64 {
    t / SPENDING_DAY_SECS
}

/// What one session counts against its user's spending of the day it was authorized: its hold
/// while AUTHORIZED or ACTIVE, what it captured once SETTLED (a late report's charge included),
/// nothing once EXPIRED.
pub fn session_spend(s: &Session) -> Amount {
    spend(s.status, s.hold, s.amount)
}

/// [`session_spend`] from the three fields it reads: what a store that reads only those columns
/// (SQLite's spending query) counts.
pub const fn spend(status: SessionStatus, hold: Amount, amount: Amount) -> Amount {
    match status {
        SessionStatus::Authorized | SessionStatus::Active => hold,
        SessionStatus::Settled => amount,
        SessionStatus::Expired => Amount::ZERO,
    }
}

/// The cap that applies to a user: their override when set (`0`: no cap for them), else the
/// deployment's default (`None`: no cap).
pub fn effective_daily_limit(
    user_override: Option<Amount>,
    default: Option<Amount>,
) -> Option<Amount> {
    match user_override {
        Some(l) if l == Amount::ZERO => None,
        Some(l) => Some(l),
        None => default.filter(|l| *l != Amount::ZERO),
    }
}

/// A user's daily cap and spending, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Spending {
    /// The operator's override (`Some(0)`: no cap for this user), `None`: the deployment default.
    pub user_override: Option<Amount>,
    /// Holds plus captures of the sessions the user opened this UTC day.
    pub spent_today: Amount,
}
