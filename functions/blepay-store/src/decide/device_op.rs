//! A machine's start or report: its result and what it changes.

use blepay_core::{DeviceId, ReportOutcome, Session, Settlement, StartOutcome};

use crate::{DeviceOp, DeviceOpResult};

/// What a start or report changed, to persist with the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionChange {
    /// Nothing (already active, already settled, refused, not found).
    None,
    /// AUTHORIZED → ACTIVE: save the session (status, start time); its hold is no longer an
    /// expiry candidate.
    Started(Session),
    /// A progress report: save the units and amount.
    Progressed(Session),
    /// The final report: save the SETTLED session and apply the settlement to the wallet and the
    /// ledger; the machine is free again.
    Settled(Session, Settlement),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionOpDecision {
    /// The answer to the machine.
    pub result: DeviceOpResult,
    /// The session was overdue and expired first (as any read of it would): save it EXPIRED and
    /// apply the settlement (release the hold); the machine is free again.
    pub expired: Option<(Session, Settlement)>,
    pub change: SessionChange,
}

/// Run a start or report named by `op` on `session` (as stored; `None` when there is none) for
/// machine `device` at `now`, by the core's state machine.
///
/// A session of another machine is not found; an overdue AUTHORIZED session is expired first
/// (a start then is refused as expired). A poll names no session: [`DeviceOpResult::SessionNotFound`].
pub fn decide_session_op(
    op: &DeviceOp,
    device: DeviceId,
    session: Option<Session>,
    now: u64,
) -> SessionOpDecision {
    let not_found = SessionOpDecision {
        result: DeviceOpResult::SessionNotFound,
        expired: None,
        change: SessionChange::None,
    };
    let Some(mut s) = session.filter(|s| s.device_id == device) else {
        return not_found;
    };
    let expired = s.expire(now).map(|settlement| (s.clone(), settlement));
    let (result, change) = match op {
        DeviceOp::Poll | DeviceOp::Press | DeviceOp::Heartbeat(_) => return not_found,
        DeviceOp::Start { .. } => match s.start(now) {
            Ok(StartOutcome::Started) => (
                DeviceOpResult::Session(s.clone()),
                SessionChange::Started(s),
            ),
            Ok(StartOutcome::AlreadyActive) => (DeviceOpResult::Session(s), SessionChange::None),
            Err(e) => (DeviceOpResult::Refused(e), SessionChange::None),
        },
        DeviceOp::Report { units, last, .. } => match s.report(*units, *last, now) {
            Ok(ReportOutcome::Progress) => (
                DeviceOpResult::Session(s.clone()),
                SessionChange::Progressed(s),
            ),
            Ok(ReportOutcome::Settled(settlement)) => (
                DeviceOpResult::Session(s.clone()),
                SessionChange::Settled(s, settlement),
            ),
            Ok(ReportOutcome::AlreadySettled) => (DeviceOpResult::Session(s), SessionChange::None),
            Err(e) => (DeviceOpResult::Refused(e), SessionChange::None),
        },
    };
    SessionOpDecision {
        result,
        expired,
        change,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use blepay_core::{
        Amount, Currency, SessionError, SessionId, SessionStatus, Tariff, UnitName, Units,
        UseCounter, UserId,
    };

    use super::*;

    const NOW: u64 = 1_770_000_000;

    fn machine() -> DeviceId {
        DeviceId::from_bytes([1; 8])
    }

    fn authorized() -> Session {
        Session::authorize(
            SessionId::from_bytes([3; 16]),
            machine(),
            UserId::parse("alice").unwrap(),
            Amount::new(300).unwrap(),
            Tariff {
                price_per_unit: Amount::new(25).unwrap(),
                unit_name: UnitName::parse("litre").unwrap(),
                currency: Currency::parse("EUR").unwrap(),
            },
            UseCounter::new(1),
            NOW,
            120,
        )
    }

    fn start() -> DeviceOp {
        DeviceOp::Start {
            session: SessionId::from_bytes([3; 16]),
        }
    }

    fn report(units: u64, last: bool) -> DeviceOp {
        DeviceOp::Report {
            session: SessionId::from_bytes([3; 16]),
            units: Units::new(units),
            last,
        }
    }

    #[test]
    fn starting_an_authorized_session_activates_it() {
        let d = decide_session_op(&start(), machine(), Some(authorized()), NOW + 1);
        let SessionChange::Started(s) = &d.change else {
            panic!("expected a start: {d:?}");
        };
        assert_eq!(s.status, SessionStatus::Active);
        assert_eq!(d.result, DeviceOpResult::Session(s.clone()));
        assert_eq!(d.expired, None);
    }

    #[test]
    fn a_session_of_another_machine_is_not_found_and_changes_nothing() {
        let d = decide_session_op(
            &start(),
            DeviceId::from_bytes([2; 8]),
            Some(authorized()),
            NOW,
        );
        assert_eq!(d.result, DeviceOpResult::SessionNotFound);
        assert_eq!((d.expired, d.change), (None, SessionChange::None));
    }

    #[test]
    fn starting_after_the_deadline_expires_the_session_first_and_is_refused() {
        let d = decide_session_op(&start(), machine(), Some(authorized()), NOW + 500);
        assert_eq!(d.result, DeviceOpResult::Refused(SessionError::Expired));
        let (expired, settlement) = d.expired.unwrap();
        assert_eq!(expired.status, SessionStatus::Expired);
        assert_eq!(settlement.capture, Amount::ZERO);
        assert_eq!(d.change, SessionChange::None);
    }

    #[test]
    fn a_final_report_settles_and_repeating_it_changes_nothing() {
        let mut active = authorized();
        active.start(NOW + 1).unwrap();
        let d = decide_session_op(&report(3, true), machine(), Some(active), NOW + 9);
        let SessionChange::Settled(settled, settlement) = d.change else {
            panic!("expected a settlement");
        };
        assert_eq!(settlement.capture, Amount::new(75).unwrap());
        let again = decide_session_op(&report(3, true), machine(), Some(settled.clone()), NOW + 10);
        assert_eq!(again.result, DeviceOpResult::Session(settled));
        assert_eq!(again.change, SessionChange::None);
    }

    #[test]
    fn a_report_before_the_start_is_refused() {
        let d = decide_session_op(&report(1, false), machine(), Some(authorized()), NOW + 1);
        assert_eq!(d.result, DeviceOpResult::Refused(SessionError::NotStarted));
        assert_eq!(d.change, SessionChange::None);
    }
}
