//! The pay decision.

use std::fmt;

use blepay_core::{Amount, DeviceId, LedgerEntry, Session, Wallet, WalletError};

use crate::{DeviceState, DeviceStatus, PayCommand, PayOutcome, StoreError};

/// What an earlier pay with the same user and key must match for a new one to be its retry: the
/// machine and the amount. Stored with the key record in its [`Display`](fmt::Display) form
/// (`<device id>:<minor units>`), which must not change (records written by older builds use it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayFingerprint {
    pub device: DeviceId,
    pub max_amount: Amount,
}

impl PayFingerprint {
    /// The fingerprint of the pay that opened `s`.
    pub fn of_session(s: &Session) -> Self {
        Self {
            device: s.device_id,
            max_amount: s.hold,
        }
    }

    /// Whether a key record's stored fingerprint is this one.
    pub fn matches_stored(&self, stored: &str) -> bool {
        self.to_string() == stored
    }
}

impl fmt::Display for PayFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.device, self.max_amount.minor())
    }
}

impl PayCommand {
    /// This pay's [`PayFingerprint`].
    pub fn fingerprint(&self) -> PayFingerprint {
        PayFingerprint {
            device: self.device,
            max_amount: self.max_amount,
        }
    }

    /// Whether `s` is a session this very pay could have opened (same user, machine and amount):
    /// then this pay is a retry of the one that did.
    pub fn is_retry_of(&self, s: &Session) -> bool {
        s.user_id == self.user && PayFingerprint::of_session(s) == self.fingerprint()
    }
}

/// What the store found under the pay's (user, key) record.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "one value per pay, moved once; boxing buys nothing"
)]
pub enum PriorPay {
    /// The record's fingerprint matches ([`PayFingerprint::matches_stored`]): the session it
    /// created, expired first if it was due.
    Same(Session),
    /// The record was written by a pay for another machine or amount.
    Other,
}

/// The facts a store gathers for [`decide_pay`].
#[derive(Debug, Clone)]
pub struct PayFacts<'a> {
    pub cmd: &'a PayCommand,
    /// The machine, its overdue session already expired; `None` when it is not registered.
    pub device: Option<&'a DeviceStatus>,
    /// The record of an earlier pay by this user with this key, if any.
    pub prior: Option<PriorPay>,
    /// Whether this advert (machine, slot, use counter) already paid for a session.
    pub advert_used: bool,
    /// The user's wallet, their overdue holds already released.
    pub wallet: Wallet,
    /// The user's AUTHORIZED sessions (their overdue ones already expired).
    pub unstarted: u32,
    /// The sessions the user opened in the current rate window
    /// ([`PayLimits::window`](crate::PayLimits::window) of `cmd.now`).
    pub opened_in_window: u32,
    /// The user's cap override and what they spent this UTC day ([`crate::Spending`]).
    pub spending: crate::Spending,
}

/// A pay the store must persist, atomically: insert `session` (AUTHORIZED), mark the advert
/// used, record the key with the command's fingerprint, write `hold_entry`, save `wallet`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPay {
    pub session: Session,
    pub wallet: Wallet,
    pub hold_entry: LedgerEntry,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayDecision {
    Create(NewPay),
    /// Answer without writing anything: a retry ([`PayOutcome::Replayed`]) or a refusal.
    Answer(PayOutcome),
}

/// Decide a pay from the facts the store gathered.
///
/// Precedence, first match wins:
/// 0. [`PayOutcome::KeyRefused`]: the machine is registered and does not accept the key epoch the
///    advert verified under (revoked, or rotated away): the advert is answered as forged, before
///    anything else, retries included;
/// 1. [`PayOutcome::BelowUnitPrice`]: the machine is registered and one unit costs more than
///    `max_amount` (no retry or later state can make this pay valid);
/// 2. a record under the key: [`PayOutcome::Replayed`] with its session when the fingerprint
///    matches, else [`PayOutcome::KeyReused`];
/// 3. [`PayOutcome::DeviceUnknown`];
/// 4. [`PayOutcome::DeviceOutOfService`] (its service state is OUT_OF_SERVICE or
///    DECOMMISSIONED, whatever its liveness);
/// 5. [`PayOutcome::DeviceOffline`] (nothing fresh heard within `offline_after_secs`, or the
///    advert's link-down flag);
/// 6. [`PayOutcome::DeviceFault`] (the advert's fault flag);
/// 7. [`PayOutcome::DeviceBusy`] (an open session on the machine);
/// 8. [`PayOutcome::AdvertUsed`];
/// 9. [`PayOutcome::TooManyUnstarted`] (`unstarted >= max_unstarted_per_user`);
/// 10. [`PayOutcome::RateLimited`] (`opened_in_window >= rate_max`);
/// 11. [`PayOutcome::SpendingLimit`] (`spent_today + max_amount` above the user's daily cap,
///     [`crate::effective_daily_limit`] of their override and `cmd.daily_limit`);
/// 12. [`PayOutcome::InsufficientFunds`];
///
/// and otherwise [`PayDecision::Create`]: hold `max_amount` (the core's wallet rule) for a new
/// AUTHORIZED session with the machine's tariff. DynamoDB's pay transaction orders its conditions
/// the same way, so its cancellation reasons map onto the same refusals (`blepay-dynamodb`,
/// `ops/pay.rs`).
///
/// # Errors
/// [`StoreError::Internal`] when the wallet rule refuses for a reason other than funds (an
/// overflow of stored balances).
pub fn decide_pay(facts: &PayFacts<'_>) -> Result<PayDecision, StoreError> {
    use PayDecision::Answer;
    let cmd = facts.cmd;
    if let Some(device) = facts.device {
        if device.device.keys.key_use(cmd.key_epoch) == crate::KeyUse::Refused {
            return Ok(Answer(PayOutcome::KeyRefused));
        }
        let tariff = &device.device.tariff;
        if tariff.price_per_unit > cmd.max_amount {
            return Ok(Answer(PayOutcome::BelowUnitPrice {
                price: tariff.price_per_unit,
                unit_name: tariff.unit_name.clone(),
            }));
        }
    }
    match &facts.prior {
        Some(PriorPay::Same(session)) => return Ok(Answer(PayOutcome::Replayed(session.clone()))),
        Some(PriorPay::Other) => return Ok(Answer(PayOutcome::KeyReused)),
        None => {}
    }
    let Some(device) = facts.device else {
        return Ok(Answer(PayOutcome::DeviceUnknown));
    };
    if device.device.service_state != crate::ServiceState::InService {
        return Ok(Answer(PayOutcome::DeviceOutOfService));
    }
    match device.state(cmd.now, cmd.offline_after_secs, cmd.signals) {
        DeviceState::Offline => return Ok(Answer(PayOutcome::DeviceOffline)),
        DeviceState::Fault => return Ok(Answer(PayOutcome::DeviceFault)),
        DeviceState::Busy => return Ok(Answer(PayOutcome::DeviceBusy)),
        DeviceState::Idle => {}
    }
    if facts.advert_used {
        return Ok(Answer(PayOutcome::AdvertUsed));
    }
    let limits = cmd.limits;
    if facts.unstarted >= limits.max_unstarted_per_user {
        return Ok(Answer(PayOutcome::TooManyUnstarted {
            max: limits.max_unstarted_per_user,
        }));
    }
    if facts.opened_in_window >= limits.rate_max {
        return Ok(Answer(PayOutcome::RateLimited {
            retry_after_secs: limits.secs_to_next_window(cmd.now),
        }));
    }
    if let Some(limit) = crate::effective_daily_limit(facts.spending.user_override, cmd.daily_limit)
    {
        let spent_today = facts.spending.spent_today;
        let within = spent_today
            .checked_add(cmd.max_amount)
            .is_ok_and(|total| total <= limit);
        if !within {
            return Ok(Answer(PayOutcome::SpendingLimit { limit, spent_today }));
        }
    }
    let (wallet, hold_entry) = match facts.wallet.hold(&cmd.user, cmd.max_amount) {
        Ok(held) => held,
        Err(WalletError::InsufficientFunds { available, .. }) => {
            return Ok(Answer(PayOutcome::InsufficientFunds { available }));
        }
        Err(e) => {
            return Err(StoreError::Internal(format!(
                "wallet rule refused a stored operation: {e}"
            )));
        }
    };
    let session = Session::authorize(
        cmd.session_id,
        cmd.device,
        cmd.user.clone(),
        cmd.max_amount,
        device.device.tariff.clone(),
        cmd.use_counter,
        cmd.now,
        cmd.start_timeout_secs,
    );
    Ok(PayDecision::Create(NewPay {
        session,
        wallet,
        hold_entry,
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use blepay_core::{
        Currency, DeviceName, IdempotencyKey, KeyVersion, SessionId, Slot, Tariff, UnitName,
        UseCounter, UserId,
    };

    use super::*;
    use crate::DeviceRecord;

    const NOW: u64 = 1_770_000_000;

    fn amount(minor: i64) -> Amount {
        Amount::new(minor).unwrap()
    }

    fn cmd(max: i64) -> PayCommand {
        PayCommand {
            user: UserId::parse("alice").unwrap(),
            key: IdempotencyKey::parse("k1").unwrap(),
            device: DeviceId::from_bytes([1; 8]),
            slot: Slot::at(NOW),
            use_counter: UseCounter::new(7),
            max_amount: amount(max),
            session_id: SessionId::from_bytes([9; 16]),
            now: NOW,
            start_timeout_secs: 120,
            offline_after_secs: 300,
            signals: crate::AdvertSignals::default(),
            limits: crate::PayLimits::DEFAULT,
            daily_limit: None,
            key_epoch: blepay_core::KeyEpoch::FIRST,
        }
    }

    fn machine(last_seen: Option<u64>, open: Option<SessionId>) -> DeviceStatus {
        DeviceStatus {
            device: DeviceRecord {
                id: DeviceId::from_bytes([1; 8]),
                name: DeviceName::parse("Water").unwrap(),
                tariff: Tariff {
                    price_per_unit: amount(25),
                    unit_name: UnitName::parse("litre").unwrap(),
                    currency: Currency::parse("EUR").unwrap(),
                },
                key_version: KeyVersion::new(0).unwrap(),
                created_at: NOW - 1000,
                service_state: crate::ServiceState::InService,
                keys: crate::DeviceKeys::default(),
            },
            last_seen,
            open_session: open,
            telemetry: None,
            telemetry_at: None,
        }
    }

    fn funds(available: i64) -> Wallet {
        Wallet {
            available: amount(available),
            held: Amount::ZERO,
            spent: Amount::ZERO,
            refunded: Amount::ZERO,
        }
    }

    fn answer(facts: &PayFacts<'_>) -> PayOutcome {
        match decide_pay(facts).unwrap() {
            PayDecision::Answer(o) => o,
            PayDecision::Create(new) => PayOutcome::Created(new.session),
        }
    }

    #[test]
    fn an_idle_online_machine_and_enough_money_open_a_session_holding_the_amount() {
        let c = cmd(300);
        let m = machine(Some(NOW), None);
        let facts = PayFacts {
            cmd: &c,
            device: Some(&m),
            prior: None,
            advert_used: false,
            wallet: funds(1000),
            unstarted: 0,
            opened_in_window: 0,
            spending: crate::Spending::default(),
        };
        let PayDecision::Create(new) = decide_pay(&facts).unwrap() else {
            panic!("expected a new pay");
        };
        assert_eq!(new.session.hold, amount(300));
        assert_eq!(new.session.tariff, m.device.tariff);
        assert_eq!(new.wallet.available, amount(700));
        assert_eq!(new.wallet.held, amount(300));
        assert!(c.is_retry_of(&new.session));
    }

    #[test]
    fn each_refusal_wins_over_every_later_one() {
        let c = cmd(300);
        let offline = machine(None, None);
        let busy = machine(Some(NOW), Some(SessionId::from_bytes([2; 16])));
        let idle = machine(Some(NOW), None);
        let mut cheap = cmd(10);
        cheap.key = c.key.clone();
        let everything_wrong = |device| PayFacts {
            cmd: &c,
            device,
            prior: Some(PriorPay::Other),
            advert_used: true,
            wallet: funds(0),
            unstarted: 1,
            opened_in_window: 10,
            spending: crate::Spending::default(),
        };
        let below = PayFacts {
            cmd: &cheap,
            ..everything_wrong(Some(&offline))
        };
        assert!(
            matches!(answer(&below), PayOutcome::BelowUnitPrice { price, .. } if price == amount(25))
        );
        assert_eq!(
            answer(&everything_wrong(Some(&offline))),
            PayOutcome::KeyReused
        );
        let no_key = |device| PayFacts {
            prior: None,
            ..everything_wrong(device)
        };
        assert_eq!(answer(&no_key(None)), PayOutcome::DeviceUnknown);
        assert_eq!(answer(&no_key(Some(&offline))), PayOutcome::DeviceOffline);
        assert_eq!(answer(&no_key(Some(&busy))), PayOutcome::DeviceBusy);
        assert_eq!(answer(&no_key(Some(&idle))), PayOutcome::AdvertUsed);
        let fresh_advert = PayFacts {
            advert_used: false,
            ..no_key(Some(&idle))
        };
        assert_eq!(
            answer(&fresh_advert),
            PayOutcome::TooManyUnstarted { max: 1 }
        );
        let none_waiting = PayFacts {
            unstarted: 0,
            ..fresh_advert.clone()
        };
        assert_eq!(
            answer(&none_waiting),
            PayOutcome::RateLimited {
                // NOW = 1_770_000_000 is 2400 s into its hour
                retry_after_secs: 1200
            }
        );
        let within_rate = PayFacts {
            opened_in_window: 9,
            ..none_waiting
        };
        assert_eq!(
            answer(&within_rate),
            PayOutcome::InsufficientFunds {
                available: Amount::ZERO
            }
        );
    }

    #[test]
    fn the_advert_flags_refuse_offline_before_fault_before_busy() {
        let busy = machine(Some(NOW), Some(SessionId::from_bytes([2; 16])));
        let with = |link_down, fault| {
            let mut c = cmd(300);
            c.signals = crate::AdvertSignals { link_down, fault };
            answer(&PayFacts {
                cmd: &c,
                device: Some(&busy),
                prior: None,
                advert_used: true,
                wallet: funds(0),
                unstarted: 0,
                opened_in_window: 0,
                spending: crate::Spending::default(),
            })
        };
        assert_eq!(with(true, true), PayOutcome::DeviceOffline);
        assert_eq!(with(false, true), PayOutcome::DeviceFault);
        assert_eq!(with(false, false), PayOutcome::DeviceBusy);
    }

    #[test]
    fn a_pay_with_the_key_of_the_same_request_is_replayed_whatever_the_machine_does_now() {
        let c = cmd(300);
        let busy = machine(Some(NOW), Some(SessionId::from_bytes([9; 16])));
        let first = Session::authorize(
            c.session_id,
            c.device,
            c.user.clone(),
            c.max_amount,
            busy.device.tariff.clone(),
            c.use_counter,
            NOW,
            120,
        );
        let facts = PayFacts {
            cmd: &c,
            device: Some(&busy),
            prior: Some(PriorPay::Same(first.clone())),
            advert_used: true,
            wallet: funds(0),
            unstarted: 1,
            opened_in_window: 10,
            spending: crate::Spending::default(),
        };
        assert_eq!(answer(&facts), PayOutcome::Replayed(first));
    }

    #[test]
    fn the_limits_count_what_the_store_found_against_the_command_s_limits() {
        let mut c = cmd(300);
        c.limits = crate::PayLimits {
            max_unstarted_per_user: 3,
            rate_max: 5,
            rate_window_secs: 60,
        };
        let m = machine(Some(NOW), None);
        let facts = |unstarted, opened_in_window| PayFacts {
            cmd: &c,
            device: Some(&m),
            prior: None,
            advert_used: false,
            wallet: funds(1000),
            unstarted,
            opened_in_window,
            spending: crate::Spending::default(),
        };
        assert!(matches!(answer(&facts(2, 4)), PayOutcome::Created(_)));
        assert_eq!(
            answer(&facts(3, 0)),
            PayOutcome::TooManyUnstarted { max: 3 }
        );
        // 1_770_000_000 is a whole minute: the next window is a full window away.
        assert_eq!(
            answer(&facts(0, 5)),
            PayOutcome::RateLimited {
                retry_after_secs: 60
            }
        );
    }

    #[test]
    fn a_retry_is_the_same_user_machine_and_amount() {
        let c = cmd(300);
        let m = machine(Some(NOW), None);
        let s = Session::authorize(
            c.session_id,
            c.device,
            c.user.clone(),
            c.max_amount,
            m.device.tariff,
            c.use_counter,
            NOW,
            120,
        );
        assert!(c.is_retry_of(&s));
        assert!(!cmd(200).is_retry_of(&s));
        let mut other_user = c.clone();
        other_user.user = UserId::parse("bob").unwrap();
        assert!(!other_user.is_retry_of(&s));
        let mut other_machine = c.clone();
        other_machine.device = DeviceId::from_bytes([2; 8]);
        assert!(!other_machine.is_retry_of(&s));
    }

    #[test]
    fn the_stored_fingerprint_is_the_device_and_the_minor_amount() {
        let f = cmd(300).fingerprint();
        assert_eq!(
            f.to_string(),
            format!("{}:300", DeviceId::from_bytes([1; 8]))
        );
        assert!(f.matches_stored(&f.to_string()));
        assert!(!f.matches_stored(&cmd(301).fingerprint().to_string()));
    }

    #[test]
    fn an_out_of_service_machine_is_refused_before_its_liveness() {
        let c = cmd(300);
        for state in [
            crate::ServiceState::OutOfService,
            crate::ServiceState::Decommissioned,
        ] {
            let mut m = machine(None, None);
            m.device.service_state = state;
            let facts = PayFacts {
                cmd: &c,
                device: Some(&m),
                prior: None,
                advert_used: true,
                wallet: funds(0),
                unstarted: 0,
                opened_in_window: 0,
                spending: crate::Spending::default(),
            };
            assert_eq!(answer(&facts), PayOutcome::DeviceOutOfService);
        }
    }

    #[test]
    fn the_daily_cap_counts_the_day_s_spending_plus_this_hold() {
        let mut c = cmd(300);
        c.daily_limit = Some(amount(1000));
        let m = machine(Some(NOW), None);
        let facts = |user_override, spent| PayFacts {
            cmd: &c,
            device: Some(&m),
            prior: None,
            advert_used: false,
            wallet: funds(0),
            unstarted: 0,
            opened_in_window: 0,
            spending: crate::Spending {
                user_override,
                spent_today: amount(spent),
            },
        };
        // 700 + 300 = 1000 is within the cap: the next refusal (funds) answers.
        assert!(matches!(
            answer(&facts(None, 700)),
            PayOutcome::InsufficientFunds { .. }
        ));
        assert_eq!(
            answer(&facts(None, 701)),
            PayOutcome::SpendingLimit {
                limit: amount(1000),
                spent_today: amount(701)
            }
        );
        assert_eq!(
            answer(&facts(Some(amount(200)), 0)),
            PayOutcome::SpendingLimit {
                limit: amount(200),
                spent_today: Amount::ZERO
            }
        );
        // An override of 0 lifts the cap for this user.
        assert!(matches!(
            answer(&facts(Some(Amount::ZERO), 5000)),
            PayOutcome::InsufficientFunds { .. }
        ));
    }
}
