//! A machine's start, press or report: its result and what it changes.

use blepay_core::{
    DeviceId, LateOutcome, LedgerEntry, ReportOutcome, Session, SessionError, SessionStatus,
    Settlement, StartOutcome, Wallet, WalletError,
};

use crate::{DeviceOp, DeviceOpResult, StoreError};

/// What a start, press or report changed, to persist with the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionChange {
    /// Nothing (already active, already settled, refused, not found, no session waiting).
    None,
    /// AUTHORIZED → ACTIVE: save the session (status, start time); its hold is no longer an
    /// expiry candidate.
    Started(Session),
    /// A progress report: save the units, amount and report time.
    Progressed(Session),
    /// The final report: save the SETTLED session and apply the settlement to the wallet and the
    /// ledger; the machine is free again.
    Settled(Session, Settlement),
    /// A final report on a session closed by timeout (docs/sessions.md): save the session (units,
    /// amount, `late_report`); with `capture`, write that ledger entry and save `wallet` (the
    /// wallet after any close in [`SessionOpDecision::closed`] and this capture).
    LateReport {
        session: Session,
        capture: Option<LedgerEntry>,
        wallet: Wallet,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionOpDecision {
    /// The answer to the machine.
    pub result: DeviceOpResult,
    /// The session was overdue and closed first (as any read of it would): an AUTHORIZED one
    /// past its start deadline EXPIRED (the whole hold released), an ACTIVE one past its report
    /// deadline SETTLED by timeout. Save it and apply the settlement; the machine is free again.
    pub closed: Option<(Session, Settlement)>,
    pub change: SessionChange,
}

/// The facts of a start, press or report.
#[derive(Debug, Clone)]
pub struct SessionOpFacts {
    /// The machine asking.
    pub device: DeviceId,
    /// A start or report: the session it names, as stored. A press: the machine's open
    /// (AUTHORIZED or ACTIVE) session. `None` when there is none.
    pub session: Option<Session>,
    /// The session's user's wallet as stored. Needed only when [`needs_wallet`] says so.
    pub wallet: Option<Wallet>,
    pub now: u64,
    pub active_timeout_secs: u64,
}

/// Whether deciding `op` on `session` needs its user's wallet: a final report on a session
/// closed by timeout, or on an ACTIVE one that is overdue (it is timed out first).
pub fn needs_wallet(op: &DeviceOp, session: &Session, now: u64, active_timeout_secs: u64) -> bool {
    matches!(op, DeviceOp::Report { last: true, .. })
        && (session.closed_by_server() || session.is_due_to_time_out(now, active_timeout_secs))
}

/// Run a start, press or report named by `op` on the facts, by the core's state machine.
///
/// A session of another machine is not found. An overdue session is closed first: an AUTHORIZED
/// one past its start deadline expires (a start or press is then refused as expired); an ACTIVE
/// one past its report deadline is settled by timeout (a press then finds no session waiting, a
/// final report is a late one). A press starts the AUTHORIZED session waiting (or answers the
/// ACTIVE one again, changing nothing); with none it is [`DeviceOpResult::NoSessionWaiting`]. A
/// final report on a session closed by timeout follows the late-report rule
/// ([`Session::late_final_report`], docs/sessions.md); a progress report on one is answered with
/// the session, changing nothing. A poll or heartbeat names no session:
/// [`DeviceOpResult::SessionNotFound`]. An operation that did not decode
/// ([`DeviceOp::Invalid`]) is [`DeviceOpResult::FrameInvalid`] and changes nothing.
///
/// # Errors
/// [`StoreError::Internal`] when the wallet is needed ([`needs_wallet`]) but missing, or a wallet
/// rule refuses an amount the rule computed (stored balances overflowing).
pub fn decide_session_op(
    op: &DeviceOp,
    facts: SessionOpFacts,
) -> Result<SessionOpDecision, StoreError> {
    let nothing = |result| SessionOpDecision {
        result,
        closed: None,
        change: SessionChange::None,
    };
    let none_found = match op {
        // An operation that did not decode names no session and runs nothing.
        DeviceOp::Invalid(reason) => {
            return Ok(nothing(DeviceOpResult::FrameInvalid(reason.clone())));
        }
        DeviceOp::Press => DeviceOpResult::NoSessionWaiting,
        _ => DeviceOpResult::SessionNotFound,
    };
    let Some(mut s) = facts.session.filter(|s| s.device_id == facts.device) else {
        return Ok(nothing(none_found));
    };
    let (now, timeout) = (facts.now, facts.active_timeout_secs);
    let wallet_needed = needs_wallet(op, &s, now, timeout);
    let closed = s
        .expire(now)
        .or_else(|| s.time_out(now, timeout))
        .map(|settlement| (s.clone(), settlement));
    let (result, change) = match op {
        DeviceOp::Poll | DeviceOp::Heartbeat(_) | DeviceOp::Invalid(_) => {
            return Ok(nothing(none_found));
        }
        DeviceOp::Press => match s.status {
            // Not overdue: that expired it above.
            SessionStatus::Authorized => match s.start(now) {
                Ok(_) => (
                    DeviceOpResult::Started(s.clone()),
                    SessionChange::Started(s),
                ),
                Err(e) => (DeviceOpResult::Refused(e), SessionChange::None),
            },
            SessionStatus::Active => (DeviceOpResult::Started(s), SessionChange::None),
            SessionStatus::Expired if closed.is_some() => (
                DeviceOpResult::Refused(SessionError::Expired),
                SessionChange::None,
            ),
            SessionStatus::Expired | SessionStatus::Settled => {
                (DeviceOpResult::NoSessionWaiting, SessionChange::None)
            }
        },
        DeviceOp::Start { .. } => match s.start(now) {
            Ok(StartOutcome::Started) => (
                DeviceOpResult::Session(s.clone()),
                SessionChange::Started(s),
            ),
            Ok(StartOutcome::AlreadyActive) => (DeviceOpResult::Session(s), SessionChange::None),
            Err(e) => (DeviceOpResult::Refused(e), SessionChange::None),
        },
        DeviceOp::Report { last: false, .. } if s.closed_by_server() => {
            (DeviceOpResult::Session(s), SessionChange::None)
        }
        DeviceOp::Report { units, .. } if s.closed_by_server() => {
            let stored = facts.wallet.filter(|_| wallet_needed).ok_or_else(|| {
                StoreError::Internal("a late final report needs the wallet".into())
            })?;
            // The wallet after the timeout decided above, if it was.
            let wallet = match &closed {
                Some((c, settlement)) => {
                    stored
                        .settle(&c.user_id, settlement.hold, settlement.capture)
                        .map_err(rule)?
                        .0
                }
                None => stored,
            };
            late_final_report(s, *units, now, wallet)?
        }
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
    Ok(SessionOpDecision {
        result,
        closed,
        change,
    })
}

/// A final report of `units` on `s`, closed by timeout, with its user's wallet as it is now.
fn late_final_report(
    mut s: Session,
    units: blepay_core::Units,
    now: u64,
    wallet: Wallet,
) -> Result<(DeviceOpResult, SessionChange), StoreError> {
    Ok(match s.late_final_report(units, now, wallet.available) {
        Ok(LateOutcome::AlreadyRecorded) => (DeviceOpResult::Session(s), SessionChange::None),
        Ok(LateOutcome::Recorded { charged }) => {
            let (wallet, capture) = if charged.is_zero() {
                (wallet, None)
            } else {
                let (w, entry) = wallet.late_capture(&s.user_id, charged).map_err(rule)?;
                (w, Some(entry))
            };
            (
                DeviceOpResult::Session(s.clone()),
                SessionChange::LateReport {
                    session: s,
                    capture,
                    wallet,
                },
            )
        }
        Err(e) => (DeviceOpResult::Refused(e), SessionChange::None),
    })
}

#[allow(clippy::needless_pass_by_value, reason = "shaped for `map_err`")]
fn rule(e: WalletError) -> StoreError {
    StoreError::Internal(format!("wallet rule refused a stored operation: {e}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use blepay_core::{Amount, Currency, SessionId, Tariff, UnitName, Units, UseCounter, UserId};

    use super::*;
    use blepay_core::CloseReason;

    const NOW: u64 = 1_770_000_000;

    fn decide(op: &DeviceOp, device: DeviceId, s: Option<Session>, now: u64) -> SessionOpDecision {
        decide_with(op, device, s, None, now)
    }

    fn decide_with(
        op: &DeviceOp,
        device: DeviceId,
        session: Option<Session>,
        wallet: Option<Wallet>,
        now: u64,
    ) -> SessionOpDecision {
        decide_session_op(
            op,
            SessionOpFacts {
                device,
                session,
                wallet,
                now,
                active_timeout_secs: TIMEOUT,
            },
        )
        .unwrap()
    }

    const TIMEOUT: u64 = 3600;

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
        let d = decide(&start(), machine(), Some(authorized()), NOW + 1);
        let SessionChange::Started(s) = &d.change else {
            panic!("expected a start: {d:?}");
        };
        assert_eq!(s.status, SessionStatus::Active);
        assert_eq!(d.result, DeviceOpResult::Session(s.clone()));
        assert_eq!(d.closed, None);
    }

    #[test]
    fn a_session_of_another_machine_is_not_found_and_changes_nothing() {
        let d = decide(
            &start(),
            DeviceId::from_bytes([2; 8]),
            Some(authorized()),
            NOW,
        );
        assert_eq!(d.result, DeviceOpResult::SessionNotFound);
        assert_eq!((d.closed, d.change), (None, SessionChange::None));
    }

    #[test]
    fn starting_after_the_deadline_expires_the_session_first_and_is_refused() {
        let d = decide(&start(), machine(), Some(authorized()), NOW + 500);
        assert_eq!(d.result, DeviceOpResult::Refused(SessionError::Expired));
        let (expired, settlement) = d.closed.unwrap();
        assert_eq!(expired.status, SessionStatus::Expired);
        assert_eq!(settlement.capture, Amount::ZERO);
        assert_eq!(d.change, SessionChange::None);
    }

    #[test]
    fn a_final_report_settles_and_repeating_it_changes_nothing() {
        let mut active = authorized();
        active.start(NOW + 1).unwrap();
        let d = decide(&report(3, true), machine(), Some(active), NOW + 9);
        let SessionChange::Settled(settled, settlement) = d.change else {
            panic!("expected a settlement");
        };
        assert_eq!(settlement.capture, Amount::new(75).unwrap());
        let again = decide(&report(3, true), machine(), Some(settled.clone()), NOW + 10);
        assert_eq!(again.result, DeviceOpResult::Session(settled));
        assert_eq!(again.change, SessionChange::None);
    }

    #[test]
    fn a_report_before_the_start_is_refused() {
        let d = decide(&report(1, false), machine(), Some(authorized()), NOW + 1);
        assert_eq!(d.result, DeviceOpResult::Refused(SessionError::NotStarted));
        assert_eq!(d.change, SessionChange::None);
    }

    #[test]
    fn a_press_starts_the_waiting_session_once_and_answers_it_again() {
        let d = decide(&DeviceOp::Press, machine(), Some(authorized()), NOW + 1);
        let SessionChange::Started(s) = &d.change else {
            panic!("expected a start: {d:?}");
        };
        assert_eq!(
            (s.status, s.started_at),
            (SessionStatus::Active, Some(NOW + 1))
        );
        assert_eq!(d.result, DeviceOpResult::Started(s.clone()));
        let again = decide(&DeviceOp::Press, machine(), Some(s.clone()), NOW + 2);
        assert_eq!(again.result, DeviceOpResult::Started(s.clone()));
        assert_eq!((again.closed, again.change), (None, SessionChange::None));
    }

    #[test]
    fn a_press_with_nothing_waiting_or_past_the_deadline() {
        let none = decide(&DeviceOp::Press, machine(), None, NOW);
        assert_eq!(none.result, DeviceOpResult::NoSessionWaiting);
        assert_eq!((none.closed, none.change), (None, SessionChange::None));
        let late = decide(&DeviceOp::Press, machine(), Some(authorized()), NOW + 120);
        assert_eq!(late.result, DeviceOpResult::Refused(SessionError::Expired));
        assert_eq!(late.closed.unwrap().1.capture, Amount::ZERO);
    }

    #[test]
    fn a_press_on_a_silent_active_session_times_it_out_first() {
        let mut active = authorized();
        active.start(NOW + 1).unwrap();
        active.report(Units::new(2), false, NOW + 10).unwrap();
        let d = decide(
            &DeviceOp::Press,
            machine(),
            Some(active),
            NOW + 10 + TIMEOUT,
        );
        assert_eq!(d.result, DeviceOpResult::NoSessionWaiting);
        let (closed, settlement) = d.closed.unwrap();
        assert_eq!(closed.closed_by, Some(CloseReason::Timeout));
        assert_eq!(settlement.capture, Amount::new(50).unwrap());
    }

    #[test]
    fn a_late_final_report_captures_from_the_wallet_after_the_timeout_released_the_hold() {
        let mut active = authorized();
        active.start(NOW + 1).unwrap();
        active.report(Units::new(1), false, NOW + 10).unwrap();
        let stored = Wallet {
            available: Amount::ZERO,
            held: Amount::new(300).unwrap(),
            spent: Amount::ZERO,
            refunded: Amount::ZERO,
        };
        let at = NOW + 10 + TIMEOUT;
        // Timed out by this very report: 25 captured, 275 released, then 75 more owed for 4.
        let d = decide_with(
            &report(4, true),
            machine(),
            Some(active.clone()),
            Some(stored),
            at,
        );
        let (_, settlement) = d.closed.clone().unwrap();
        assert_eq!(settlement.capture, Amount::new(25).unwrap());
        let SessionChange::LateReport {
            session,
            capture,
            wallet,
        } = d.change
        else {
            panic!("expected a late report: {d:?}");
        };
        assert_eq!(session.amount, Amount::new(100).unwrap());
        assert_eq!(capture.unwrap().amount, Amount::new(75).unwrap());
        assert_eq!(wallet.available, Amount::new(200).unwrap());
        assert_eq!(wallet.spent, Amount::new(100).unwrap());
        assert_eq!(d.result, DeviceOpResult::Session(session.clone()));
        // The same again changes nothing; other units conflict; progress is answered as is.
        let again = decide_with(
            &report(4, true),
            machine(),
            Some(session.clone()),
            Some(wallet),
            at + 1,
        );
        assert_eq!((again.closed, again.change), (None, SessionChange::None));
        let other = decide_with(
            &report(5, true),
            machine(),
            Some(session.clone()),
            Some(wallet),
            at + 1,
        );
        assert_eq!(
            other.result,
            DeviceOpResult::Refused(SessionError::ReportConflict)
        );
        let progress = decide(&report(9, false), machine(), Some(session.clone()), at + 1);
        assert_eq!(progress.result, DeviceOpResult::Session(session));
        assert_eq!(progress.change, SessionChange::None);
    }

    #[test]
    fn an_operation_that_did_not_decode_is_frame_invalid_and_changes_nothing() {
        let op = DeviceOp::Invalid("session id is not 16 bytes".into());
        for s in [None, Some(authorized())] {
            let d = decide(&op, machine(), s, NOW + 500);
            assert_eq!(
                d.result,
                DeviceOpResult::FrameInvalid("session id is not 16 bytes".into())
            );
            assert_eq!((d.closed, d.change), (None, SessionChange::None));
        }
    }

    #[test]
    fn a_late_final_report_without_the_wallet_is_an_internal_error() {
        let mut timed_out = authorized();
        timed_out.start(NOW + 1).unwrap();
        timed_out.time_out(NOW + 1 + TIMEOUT, TIMEOUT).unwrap();
        let facts = SessionOpFacts {
            device: machine(),
            session: Some(timed_out),
            wallet: None,
            now: NOW + 2 * TIMEOUT,
            active_timeout_secs: TIMEOUT,
        };
        assert!(matches!(
            decide_session_op(&report(1, true), facts),
            Err(StoreError::Internal(_))
        ));
    }
}
