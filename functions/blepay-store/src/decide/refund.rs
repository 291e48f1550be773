//! An operator's refund of part of a session's capture.
//!
//! Retry scope: the idempotency key is scoped **per session** (`refund:<session>`): the same key
//! on the same session is the same refund whichever operator sends it (two support agents
//! clicking the same ticket refund once), and a key means nothing on another session. The
//! fingerprint is the amount: the same key with another amount is `KeyReused`.

use blepay_core::{Amount, LedgerEntry, Session, SessionStatus, Wallet, WalletError};

use crate::{Problem, RefundCommand, RefundOutcome, Resolution, ResolutionKind, StoreError};

/// What an earlier refund with the same session and key must match for a new one to be its
/// retry: the amount, in minor units, in decimal.
pub fn refund_fingerprint(amount: Amount) -> String {
    amount.minor().to_string()
}

/// The facts a store gathers for [`decide_refund`].
#[derive(Debug, Clone)]
pub struct RefundFacts<'a> {
    pub cmd: &'a RefundCommand,
    /// The session, overdue ones expired or timed out first.
    pub session: Option<Session>,
    /// The fingerprint stored under the (session, key) record, if there is one.
    pub prior: Option<&'a str>,
    /// The session's user's wallet (after any close above).
    pub wallet: Wallet,
    /// The session's open problem, if any: a refund resolves it.
    pub open_problem: Option<Problem>,
}

/// A refund the store must persist atomically: save `session` (its `refunded`) and `wallet`,
/// write `entry` naming the actor, record the key with [`refund_fingerprint`], and save
/// `resolved` (the session's problem, now resolved) if there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRefund {
    pub session: Session,
    pub wallet: Wallet,
    pub entry: LedgerEntry,
    pub resolved: Option<Problem>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "built once per refund and matched at once"
)]
pub enum RefundDecision {
    Refund(NewRefund),
    /// Answer without writing anything: a retry or a refusal.
    Answer(RefundOutcome),
}

/// Decide a refund, first match wins:
/// 1. no such session: [`RefundOutcome::SessionNotFound`];
/// 2. a record under (session, key): [`RefundOutcome::Replayed`] with the session and wallet as
///    they are when the amount matches, else [`RefundOutcome::KeyReused`];
/// 3. the session is not SETTLED: [`RefundOutcome::NotSettled`];
/// 4. the session's refunds would exceed its capture (`amount + refunded > amount captured`,
///    captures and late captures): [`RefundOutcome::ExceedsCapture`];
///
/// and otherwise [`RefundDecision::Refund`] ([`Wallet::refund`]: revenue back to available).
///
/// # Errors
/// [`StoreError::Corrupt`] when the wallet has captured less than the session says (stored
/// balances that contradict each other).
pub fn decide_refund(facts: RefundFacts<'_>) -> Result<RefundDecision, StoreError> {
    let answer = |o| Ok(RefundDecision::Answer(o));
    let cmd = facts.cmd;
    let Some(mut session) = facts.session else {
        return answer(RefundOutcome::SessionNotFound);
    };
    if let Some(prior) = facts.prior {
        return answer(if prior == refund_fingerprint(cmd.amount) {
            RefundOutcome::Replayed {
                session,
                wallet: facts.wallet,
            }
        } else {
            RefundOutcome::KeyReused
        });
    }
    if session.status != SessionStatus::Settled {
        return answer(RefundOutcome::NotSettled);
    }
    let refundable = session.refundable();
    if cmd.amount > refundable {
        return answer(RefundOutcome::ExceedsCapture { refundable });
    }
    let (wallet, entry) =
        facts
            .wallet
            .refund(&session.user_id, cmd.amount)
            .map_err(|e| match e {
                WalletError::NotCaptured => StoreError::Corrupt(format!(
                    "session {} captured more than its wallet spent",
                    session.id
                )),
                e => StoreError::Internal(format!("wallet rule refused a refund: {e}")),
            })?;
    session.refunded = session
        .refunded
        .checked_add(cmd.amount)
        .map_err(|_| StoreError::Corrupt("a session's refunds overflow".into()))?;
    let resolved = facts.open_problem.map(|mut p| {
        p.resolution = Some(Resolution {
            kind: ResolutionKind::Refunded,
            at: cmd.now,
            by: cmd.actor.clone(),
            reason: cmd.reason.clone(),
        });
        p
    });
    Ok(RefundDecision::Refund(NewRefund {
        session,
        wallet,
        entry,
        resolved,
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use blepay_core::{
        Currency, DeviceId, IdempotencyKey, SessionId, Tariff, UnitName, UseCounter, UserId,
    };

    use crate::Reason;

    fn amount(m: i64) -> Amount {
        Amount::new(m).unwrap()
    }

    fn settled(captured: i64) -> (Session, Wallet) {
        let mut s = Session::authorize(
            SessionId::from_bytes([1; 16]),
            DeviceId::from_bytes([2; 8]),
            UserId::parse("alice").unwrap(),
            amount(500),
            Tariff {
                price_per_unit: amount(1),
                unit_name: UnitName::parse("litre").unwrap(),
                currency: Currency::parse("EUR").unwrap(),
            },
            UseCounter::new(1),
            0,
            60,
        );
        s.start(1).unwrap();
        s.report(blepay_core::Units::new(captured.unsigned_abs()), true, 2)
            .unwrap();
        let wallet = Wallet {
            available: amount(1000 - captured),
            held: Amount::ZERO,
            spent: amount(captured),
            refunded: Amount::ZERO,
        };
        (s, wallet)
    }

    fn cmd(m: i64) -> RefundCommand {
        RefundCommand {
            session: SessionId::from_bytes([1; 16]),
            amount: amount(m),
            reason: Reason::parse("no water").unwrap(),
            key: IdempotencyKey::parse("k1").unwrap(),
            actor: "ops-token".into(),
            now: 10,
        }
    }

    #[test]
    fn refunds_stop_at_the_capture_and_a_retry_is_answered_first() {
        let (s, w) = settled(300);
        let c = cmd(200);
        let facts = |session: Option<Session>, prior| RefundFacts {
            cmd: &c,
            session,
            prior,
            wallet: w,
            open_problem: None,
        };
        assert_eq!(
            decide_refund(facts(None, None)).unwrap(),
            RefundDecision::Answer(RefundOutcome::SessionNotFound)
        );
        let RefundDecision::Refund(new) = decide_refund(facts(Some(s.clone()), None)).unwrap()
        else {
            panic!("a refund under the capture goes through");
        };
        assert_eq!(new.session.refunded, amount(200));
        assert_eq!(new.wallet.available, amount(900));
        let after = new.session;
        assert_eq!(
            decide_refund(facts(Some(after.clone()), None)).unwrap(),
            RefundDecision::Answer(RefundOutcome::ExceedsCapture {
                refundable: amount(100)
            })
        );
        assert!(matches!(
            decide_refund(facts(Some(after.clone()), Some("200"))).unwrap(),
            RefundDecision::Answer(RefundOutcome::Replayed { .. })
        ));
        assert_eq!(
            decide_refund(facts(Some(after), Some("201"))).unwrap(),
            RefundDecision::Answer(RefundOutcome::KeyReused)
        );
    }

    #[test]
    fn an_open_session_is_not_refundable() {
        let (mut s, w) = settled(300);
        s.status = SessionStatus::Active;
        let c = cmd(1);
        assert_eq!(
            decide_refund(RefundFacts {
                cmd: &c,
                session: Some(s),
                prior: None,
                wallet: w,
                open_problem: None,
            })
            .unwrap(),
            RefundDecision::Answer(RefundOutcome::NotSettled)
        );
    }
}
