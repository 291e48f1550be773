//! The session state machine.
//!
//! ```text
//!            pay                 start (machine button)        final report
//!   (none) ───────► AUTHORIZED ─────────────────────► ACTIVE ───────────────► SETTLED
//!                       │ no start before expires_at
//!                       ▼
//!                    EXPIRED (hold released)
//! ```
//!
//! An ACTIVE session whose machine falls silent is closed by the server ([`Session::time_out`])
//! at its last reported units once `active_timeout_secs` passed since its start or its last
//! report ([`Session::report_deadline`]); a final report that arrives after that is a
//! [`Session::late_final_report`] (docs/sessions.md).
//!
//! Every transition is a pure function of the session and the time passed in; the result says what
//! money must move ([`Settlement`]). Repeats are outcomes, not errors: starting an ACTIVE session
//! again or re-sending the same final report answers as the first time did.

use crate::ids::{DeviceId, SessionId, UseCounter, UserId};
use crate::money::{Amount, Tariff, Units};

/// A session's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionStatus {
    Authorized,
    Active,
    Settled,
    Expired,
}

impl SessionStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Authorized => "AUTHORIZED",
            Self::Active => "ACTIVE",
            Self::Settled => "SETTLED",
            Self::Expired => "EXPIRED",
        }
    }

    /// Parse the names written by [`SessionStatus::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "AUTHORIZED" => Self::Authorized,
            "ACTIVE" => Self::Active,
            "SETTLED" => Self::Settled,
            "EXPIRED" => Self::Expired,
            _ => return None,
        })
    }

    /// True while the session keeps its machine busy and its hold open.
    pub const fn is_open(self) -> bool {
        matches!(self, Self::Authorized | Self::Active)
    }
}

/// Why a machine's start or report was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("the session expired before the machine started it")]
    Expired,
    #[error("the session is {0:?} and cannot be started")]
    NotStartable(SessionStatus),
    #[error("the session has not been started")]
    NotStarted,
    #[error("the report contradicts what was already reported")]
    ReportConflict,
}

/// Why a SETTLED session was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The machine's final report.
    Report,
    /// The server, after `active_timeout_secs` without a report ([`Session::time_out`]).
    Timeout,
    /// An operator, by hand ([`Session::close_by_operator`]): an AUTHORIZED session is voided
    /// (EXPIRED, the whole hold released), an ACTIVE one SETTLED at its last reported units.
    Operator,
}

impl CloseReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Report => "REPORT",
            Self::Timeout => "TIMEOUT",
            Self::Operator => "OPERATOR",
        }
    }

    /// Parse the names written by [`CloseReason::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "REPORT" => Self::Report,
            "TIMEOUT" => Self::Timeout,
            "OPERATOR" => Self::Operator,
            _ => return None,
        })
    }
}

/// A final report that reached a session after the server had closed it by timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LateReport {
    /// The units it reported.
    pub units: Units,
    /// When it arrived.
    pub at: u64,
    /// What it captured from the user's available balance (docs/sessions.md); may be 0.
    pub charged: Amount,
}

/// Money to move when a session closes: capture `capture` of `hold`, release the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settlement {
    pub hold: Amount,
    pub capture: Amount,
}

/// What a start did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartOutcome {
    Started,
    AlreadyActive,
}

/// What a report did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportOutcome {
    Progress,
    Settled(Settlement),
    AlreadySettled,
}

/// What an operator's close did ([`Session::close_by_operator`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperatorClose {
    /// Closed now: apply the settlement (a voided AUTHORIZED session captures nothing).
    Closed(Settlement),
    /// An operator closed it before: nothing changes, no money moves.
    AlreadyClosed,
    /// It was closed otherwise (a report, a timeout, an expiry): nothing changes.
    ClosedOtherwise,
}

/// What a final report on a session closed by timeout did ([`Session::late_final_report`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LateOutcome {
    /// Recorded on the session; `charged` (maybe 0) is still to be captured from the user's
    /// available balance ([`crate::Wallet::late_capture`]).
    Recorded { charged: Amount },
    /// The same late report again: nothing changes, no money moves.
    AlreadyRecorded,
}

/// A paid session on one machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: SessionId,
    pub device_id: DeviceId,
    pub user_id: UserId,
    pub hold: Amount,
    pub tariff: Tariff,
    pub use_counter: UseCounter,
    pub status: SessionStatus,
    pub units: Units,
    pub amount: Amount,
    pub created_at: u64,
    pub expires_at: u64,
    pub started_at: Option<u64>,
    pub ended_at: Option<u64>,
    /// When the machine last reported units (progress or final) on it.
    pub last_report_at: Option<u64>,
    /// Why it is SETTLED (`None` while open, and for EXPIRED sessions).
    pub closed_by: Option<CloseReason>,
    /// The final report that arrived after a timeout closed it, if any.
    pub late_report: Option<LateReport>,
    /// What operators refunded of its capture so far (never above `amount`).
    pub refunded: Amount,
}

impl Session {
    /// A new AUTHORIZED session whose start deadline is `now + start_timeout_secs`.
    #[allow(clippy::too_many_arguments)]
    pub fn authorize(
        id: SessionId,
        device_id: DeviceId,
        user_id: UserId,
        hold: Amount,
        tariff: Tariff,
        use_counter: UseCounter,
        now: u64,
        start_timeout_secs: u64,
    ) -> Self {
        Self {
            id,
            device_id,
            user_id,
            hold,
            tariff,
            use_counter,
            status: SessionStatus::Authorized,
            units: Units::ZERO,
            amount: Amount::ZERO,
            created_at: now,
            expires_at: now.saturating_add(start_timeout_secs),
            started_at: None,
            ended_at: None,
            last_report_at: None,
            closed_by: None,
            late_report: None,
            refunded: Amount::ZERO,
        }
    }

    /// True when the server closed this SETTLED session without the machine's final report
    /// (by timeout or by an operator): a final report that arrives later is a
    /// [`Session::late_final_report`].
    pub fn closed_by_server(&self) -> bool {
        self.status == SessionStatus::Settled
            && matches!(
                self.closed_by,
                Some(CloseReason::Timeout | CloseReason::Operator)
            )
    }

    /// What an operator may still refund of this session: its capture less what was refunded
    /// (zero for a session that is not SETTLED).
    pub fn refundable(&self) -> Amount {
        if self.status != SessionStatus::Settled {
            return Amount::ZERO;
        }
        self.amount
            .checked_sub(self.refunded)
            .unwrap_or(Amount::ZERO)
    }

    /// An operator closes the session by hand, `now`: an AUTHORIZED one is voided (EXPIRED, the
    /// whole hold released), an ACTIVE one SETTLED at its last reported units
    /// (`tariff.capture_for(units, hold)`, the rest of the hold released); both are then
    /// closed by [`CloseReason::Operator`] and end `now`. Closing again is
    /// [`OperatorClose::AlreadyClosed`]; a session closed any other way is
    /// [`OperatorClose::ClosedOtherwise`]. The caller expires or times out an overdue session
    /// first (as any read does).
    pub fn close_by_operator(&mut self, now: u64) -> OperatorClose {
        match self.status {
            SessionStatus::Authorized => {
                self.status = SessionStatus::Expired;
                self.closed_by = Some(CloseReason::Operator);
                self.ended_at = Some(now);
                OperatorClose::Closed(Settlement {
                    hold: self.hold,
                    capture: Amount::ZERO,
                })
            }
            SessionStatus::Active => {
                self.amount = self.tariff.capture_for(self.units, self.hold);
                self.status = SessionStatus::Settled;
                self.closed_by = Some(CloseReason::Operator);
                self.ended_at = Some(now);
                OperatorClose::Closed(Settlement {
                    hold: self.hold,
                    capture: self.amount,
                })
            }
            SessionStatus::Settled | SessionStatus::Expired
                if self.closed_by == Some(CloseReason::Operator) =>
            {
                OperatorClose::AlreadyClosed
            }
            SessionStatus::Settled | SessionStatus::Expired => OperatorClose::ClosedOtherwise,
        }
    }

    /// True when the session is AUTHORIZED but its start deadline has passed.
    pub const fn is_due_to_expire(&self, now: u64) -> bool {
        matches!(self.status, SessionStatus::Authorized) && now >= self.expires_at
    }

    /// Expire an AUTHORIZED session whose deadline passed; the whole hold is released.
    pub fn expire(&mut self, now: u64) -> Option<Settlement> {
        if !self.is_due_to_expire(now) {
            return None;
        }
        self.status = SessionStatus::Expired;
        self.ended_at = Some(self.expires_at);
        Some(Settlement {
            hold: self.hold,
            capture: Amount::ZERO,
        })
    }

    /// For an ACTIVE session: when the server closes it by timeout if no report reaches it
    /// first: the later of its start and its last report, plus `active_timeout_secs`
    /// (saturating). `None` for any other status.
    pub fn report_deadline(&self, active_timeout_secs: u64) -> Option<u64> {
        if self.status != SessionStatus::Active {
            return None;
        }
        let base = match (self.started_at, self.last_report_at) {
            (Some(s), Some(r)) => s.max(r),
            (Some(t), None) | (None, Some(t)) => t,
            (None, None) => self.created_at,
        };
        Some(base.saturating_add(active_timeout_secs))
    }

    /// True when the session is ACTIVE and its report deadline has passed.
    pub fn is_due_to_time_out(&self, now: u64, active_timeout_secs: u64) -> bool {
        self.report_deadline(active_timeout_secs)
            .is_some_and(|deadline| now >= deadline)
    }

    /// Close an ACTIVE session whose report deadline passed: SETTLED at its last reported units
    /// (`tariff.capture_for(units, hold)`), closed by [`CloseReason::Timeout`], ended `now`; the
    /// rest of the hold is released.
    pub fn time_out(&mut self, now: u64, active_timeout_secs: u64) -> Option<Settlement> {
        if !self.is_due_to_time_out(now, active_timeout_secs) {
            return None;
        }
        self.amount = self.tariff.capture_for(self.units, self.hold);
        self.status = SessionStatus::Settled;
        self.closed_by = Some(CloseReason::Timeout);
        self.ended_at = Some(now);
        Some(Settlement {
            hold: self.hold,
            capture: self.amount,
        })
    }

    /// Close an open session now because its machine's key was revoked (no report under the
    /// old key can ever reach it): an AUTHORIZED one is voided (EXPIRED, ended `now`, the whole
    /// hold released); an ACTIVE one is SETTLED at its last reported units as a timeout settles
    /// it (closed by [`CloseReason::Timeout`], ended `now`, the rest of the hold released).
    /// `None` for a session that is not open.
    pub fn close_for_revocation(&mut self, now: u64) -> Option<Settlement> {
        match self.status {
            SessionStatus::Authorized => {
                self.status = SessionStatus::Expired;
                self.ended_at = Some(now);
                Some(Settlement {
                    hold: self.hold,
                    capture: Amount::ZERO,
                })
            }
            SessionStatus::Active => {
                self.amount = self.tariff.capture_for(self.units, self.hold);
                self.status = SessionStatus::Settled;
                self.closed_by = Some(CloseReason::Timeout);
                self.ended_at = Some(now);
                Some(Settlement {
                    hold: self.hold,
                    capture: self.amount,
                })
            }
            _ => None,
        }
    }

    /// A final report of `units` that reached a session the server closed by timeout or an
    /// operator closed by hand ([`Session::closed_by_server`])
    /// (docs/sessions.md): units below the ones it was settled at, or other units than an earlier
    /// late report, are [`SessionError::ReportConflict`]; the same late report again is
    /// [`LateOutcome::AlreadyRecorded`]. Otherwise what the units still owe,
    /// `tariff.capture_for(units, hold) - amount`, is charged up to `available` (the user's
    /// available balance): `amount` grows by the charge (so the total captured never exceeds the
    /// hold), `units` becomes the report's, and the report is recorded in `late_report`.
    ///
    /// # Errors
    /// [`SessionError::ReportConflict`] as above; [`SessionError::NotStartable`] for a session that
    /// was not closed by timeout.
    pub fn late_final_report(
        &mut self,
        units: Units,
        now: u64,
        available: Amount,
    ) -> Result<LateOutcome, SessionError> {
        if !self.closed_by_server() {
            return Err(SessionError::NotStartable(self.status));
        }
        if let Some(late) = self.late_report {
            return if late.units == units {
                Ok(LateOutcome::AlreadyRecorded)
            } else {
                Err(SessionError::ReportConflict)
            };
        }
        if units < self.units {
            return Err(SessionError::ReportConflict);
        }
        let owed = self
            .tariff
            .capture_for(units, self.hold)
            .checked_sub(self.amount)
            .unwrap_or(Amount::ZERO);
        let charged = owed.min(available);
        self.amount = self
            .amount
            .checked_add(charged)
            .map_err(|_| SessionError::ReportConflict)?;
        self.units = units;
        self.late_report = Some(LateReport {
            units,
            at: now,
            charged,
        });
        Ok(LateOutcome::Recorded { charged })
    }

    /// The machine's start button was pressed.
    ///
    /// # Errors
    /// [`SessionError::Expired`] past the deadline; [`SessionError::NotStartable`] when closed.
    pub fn start(&mut self, now: u64) -> Result<StartOutcome, SessionError> {
        match self.status {
            SessionStatus::Authorized if now >= self.expires_at => Err(SessionError::Expired),
            SessionStatus::Authorized => {
                self.status = SessionStatus::Active;
                self.started_at = Some(now);
                Ok(StartOutcome::Started)
            }
            SessionStatus::Active => Ok(StartOutcome::AlreadyActive),
            SessionStatus::Expired => Err(SessionError::Expired),
            s @ SessionStatus::Settled => Err(SessionError::NotStartable(s)),
        }
    }

    /// The machine reports `units` dispensed so far (cumulative); `last` ends the session.
    ///
    /// # Errors
    /// [`SessionError::NotStarted`] before a start; [`SessionError::ReportConflict`] when units go
    /// backwards or a settled session is reported with other units; [`SessionError::Expired`].
    pub fn report(
        &mut self,
        units: Units,
        last: bool,
        now: u64,
    ) -> Result<ReportOutcome, SessionError> {
        match self.status {
            SessionStatus::Authorized => Err(SessionError::NotStarted),
            SessionStatus::Expired => Err(SessionError::Expired),
            SessionStatus::Settled => {
                if last && units == self.units {
                    Ok(ReportOutcome::AlreadySettled)
                } else {
                    Err(SessionError::ReportConflict)
                }
            }
            SessionStatus::Active => {
                if units < self.units {
                    return Err(SessionError::ReportConflict);
                }
                self.units = units;
                self.amount = self.tariff.capture_for(units, self.hold);
                self.last_report_at = Some(now);
                if !last {
                    return Ok(ReportOutcome::Progress);
                }
                self.status = SessionStatus::Settled;
                self.closed_by = Some(CloseReason::Report);
                self.ended_at = Some(now);
                Ok(ReportOutcome::Settled(Settlement {
                    hold: self.hold,
                    capture: self.amount,
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::{Currency, UnitName};

    fn session() -> Session {
        Session::authorize(
            SessionId::from_bytes([7; 16]),
            DeviceId::from_bytes([1; 8]),
            UserId::parse("alice").unwrap(),
            Amount::new(100).unwrap(),
            Tariff {
                price_per_unit: Amount::new(30).unwrap(),
                unit_name: UnitName::parse("litre").unwrap(),
                currency: Currency::parse("EUR").unwrap(),
            },
            UseCounter::new(7),
            1000,
            120,
        )
    }

    #[test]
    fn a_started_session_settles_at_the_cost_capped_by_the_hold() {
        let mut s = session();
        assert_eq!(s.start(1010), Ok(StartOutcome::Started));
        assert_eq!(
            s.report(Units::new(2), false, 1020),
            Ok(ReportOutcome::Progress)
        );
        assert_eq!(s.amount.minor(), 60);
        let out = s.report(Units::new(5), true, 1030).unwrap();
        assert_eq!(
            out,
            ReportOutcome::Settled(Settlement {
                hold: Amount::new(100).unwrap(),
                capture: Amount::new(100).unwrap()
            })
        );
        assert_eq!(s.status, SessionStatus::Settled);
    }

    #[test]
    fn repeating_the_final_report_is_idempotent_but_other_units_conflict() {
        let mut s = session();
        s.start(1010).unwrap();
        s.report(Units::new(3), true, 1030).unwrap();
        assert_eq!(
            s.report(Units::new(3), true, 1040),
            Ok(ReportOutcome::AlreadySettled)
        );
        assert_eq!(
            s.report(Units::new(4), true, 1040),
            Err(SessionError::ReportConflict)
        );
    }

    #[test]
    fn a_session_not_started_in_time_expires_and_cannot_start() {
        let mut s = session();
        assert_eq!(s.expire(1119), None);
        assert_eq!(s.start(1120), Err(SessionError::Expired));
        assert!(s.expire(1120).is_some());
        assert_eq!(s.status, SessionStatus::Expired);
        assert_eq!(s.start(1121), Err(SessionError::Expired));
    }

    #[test]
    fn starting_twice_is_not_an_error_and_reports_need_a_start() {
        let mut s = session();
        assert_eq!(
            s.report(Units::new(1), true, 1001),
            Err(SessionError::NotStarted)
        );
        s.start(1001).unwrap();
        assert_eq!(s.start(1002), Ok(StartOutcome::AlreadyActive));
    }

    #[test]
    fn a_silent_active_session_times_out_at_its_last_reported_units() {
        let mut s = session();
        s.start(1010).unwrap();
        assert_eq!(s.report_deadline(3600), Some(4610));
        s.report(Units::new(2), false, 2000).unwrap();
        assert_eq!(s.report_deadline(3600), Some(5600));
        assert_eq!(s.time_out(5599, 3600), None);
        let settlement = s.time_out(5600, 3600).unwrap();
        assert_eq!(settlement.capture.minor(), 60);
        assert_eq!(settlement.hold.minor(), 100);
        assert_eq!(
            (s.status, s.closed_by, s.ended_at),
            (
                SessionStatus::Settled,
                Some(CloseReason::Timeout),
                Some(5600)
            )
        );
        assert_eq!(s.report_deadline(3600), None);
        assert_eq!(s.time_out(9999, 3600), None);
    }

    #[test]
    fn a_late_final_report_charges_what_it_owes_up_to_the_available_balance_once() {
        let mut s = session();
        s.start(1010).unwrap();
        s.report(Units::new(1), false, 1020).unwrap();
        s.time_out(9000, 3600).unwrap();
        assert_eq!(s.amount.minor(), 30);
        let mut other = s.clone();
        assert_eq!(
            s.late_final_report(Units::new(0), 9100, Amount::MAX),
            Err(SessionError::ReportConflict)
        );
        // 3 units cost 90: 60 more is owed, only 50 is available.
        assert_eq!(
            s.late_final_report(Units::new(3), 9100, Amount::new(50).unwrap()),
            Ok(LateOutcome::Recorded {
                charged: Amount::new(50).unwrap()
            })
        );
        assert_eq!((s.amount.minor(), s.units.get()), (80, 3));
        assert_eq!(
            s.late_final_report(Units::new(3), 9200, Amount::MAX),
            Ok(LateOutcome::AlreadyRecorded)
        );
        assert_eq!(
            s.late_final_report(Units::new(4), 9200, Amount::MAX),
            Err(SessionError::ReportConflict)
        );
        // Beyond the hold the capture stops at the hold.
        assert_eq!(
            other.late_final_report(Units::new(50), 9100, Amount::MAX),
            Ok(LateOutcome::Recorded {
                charged: Amount::new(70).unwrap()
            })
        );
        assert_eq!(other.amount, other.hold);
    }

    #[test]
    fn an_operator_voids_an_authorized_session_and_settles_an_active_one_once() {
        let mut s = session();
        assert_eq!(
            s.close_by_operator(1005),
            OperatorClose::Closed(Settlement {
                hold: Amount::new(100).unwrap(),
                capture: Amount::ZERO
            })
        );
        assert_eq!(
            (s.status, s.closed_by),
            (SessionStatus::Expired, Some(CloseReason::Operator))
        );
        assert_eq!(s.close_by_operator(1006), OperatorClose::AlreadyClosed);
        assert_eq!(s.start(1007), Err(SessionError::Expired));

        let mut s = session();
        s.start(1010).unwrap();
        s.report(Units::new(2), false, 1020).unwrap();
        assert_eq!(
            s.close_by_operator(1030),
            OperatorClose::Closed(Settlement {
                hold: Amount::new(100).unwrap(),
                capture: Amount::new(60).unwrap()
            })
        );
        assert!(s.closed_by_server());
        assert_eq!(s.refundable().minor(), 60);
        // A late final report is handled as after a timeout.
        assert_eq!(
            s.late_final_report(Units::new(3), 1040, Amount::MAX),
            Ok(LateOutcome::Recorded {
                charged: Amount::new(30).unwrap()
            })
        );

        let mut s = session();
        s.start(1010).unwrap();
        s.report(Units::new(1), true, 1020).unwrap();
        assert_eq!(s.close_by_operator(1030), OperatorClose::ClosedOtherwise);
    }

    #[test]
    fn units_never_go_backwards() {
        let mut s = session();
        s.start(1001).unwrap();
        s.report(Units::new(3), false, 1002).unwrap();
        assert_eq!(
            s.report(Units::new(2), false, 1003),
            Err(SessionError::ReportConflict)
        );
    }
}
