//! Pay: decided by [`decide_pay`] from one read (or from the device shadow), written in one
//! transaction whose cancellation reasons map onto the same refusals.

use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem};
use blepay_core::{Amount, LedgerEntry, Session, SessionId, Tariff, Wallet};
use blepay_store::decide::{PayDecision, PayFacts, PriorPay, decide_pay};
use blepay_store::{
    DeviceState, PayCommand, PayOutcome, ServiceState, Spending, StoreError, effective_daily_limit,
    spending_day,
};

use super::attempts::Tx;
use super::fleet::{override_of, spend_update, spent_of};
use crate::DynamoStore;
use crate::items::{
    self, DeviceItem, Failure, Item, RETENTION_SECS, TTL, Upd, device_from_item, device_key, get_s,
    n, put_new, s, session_attrs, session_item, wallet_delta, wallet_from_item, wallet_key,
};

impl DynamoStore {
    pub(super) async fn pay_once(&self, cmd: &PayCommand) -> Result<PayOutcome, Failure> {
        // The one read: the device (tariff, liveness, lock), the wallet (balance, due holds), the
        // idempotency record (a retry is answered before anything else) and the advert marker —
        // one isolated snapshot, so a concurrent pay with this key is seen whole or not at all.
        let [device, wallet, seen, advert_used, rate, spend] = <[Option<Item>; 6]>::try_from(
            self.transact_get(vec![
                device_key(cmd.device),
                wallet_key(&cmd.user),
                items::pay_key_key(&cmd.user, &cmd.key),
                items::advert_key(cmd.device, cmd.slot, cmd.use_counter),
                items::rate_key(&cmd.user, cmd.limits.window(cmd.now)),
                items::spend_key(&cmd.user, spending_day(cmd.now)),
            ])
            .await?,
        )
        .map_err(|_| StoreError::Internal("TransactGetItems answered the wrong count".into()))?;

        // The facts; overdue sessions (on this machine, or holding this user's money) are
        // expired first, then everything is read again.
        let prior = match seen {
            None => None,
            Some(seen)
                if !cmd
                    .fingerprint()
                    .matches_stored(get_s(&seen, "fingerprint")?) =>
            {
                Some(PriorPay::Other)
            }
            Some(seen) => {
                let sid = SessionId::parse(get_s(&seen, "session")?)
                    .map_err(|_| items::corrupt("pay record", "session"))?;
                let Some(session) = self.session_once(sid, cmd.now).await? else {
                    return Err(StoreError::Corrupt(format!(
                        "pay key {} names a missing session {sid}",
                        cmd.key
                    ))
                    .into());
                };
                Some(PriorPay::Same(session))
            }
        };
        let device = match device {
            None => {
                self.shadow.forget(cmd.device);
                None
            }
            Some(item) => {
                let device = device_from_item(&item)?;
                self.shadow.put(device.clone());
                Some(device)
            }
        };
        let w = wallet_from_item(wallet.as_ref())?;
        let spending = Spending {
            user_override: override_of(wallet.as_ref())?,
            spent_today: spent_of(spend.as_ref())?,
        };
        if let Some(open) = device
            .as_ref()
            .and_then(|d| d.open.as_ref())
            .filter(|o| o.is_due_to_expire(cmd.now))
        {
            self.expire_one(open, cmd.now).await?;
            return Err(Failure::Contention(
                "expired a due session; read again".into(),
            ));
        }
        if self.expire_due_holds(&w, cmd.now).await? {
            return Err(Failure::Contention("expired due holds; read again".into()));
        }
        let status = device.as_ref().map(DeviceItem::status);
        let facts = PayFacts {
            cmd,
            device: status.as_ref(),
            prior,
            advert_used: advert_used.is_some(),
            wallet: w.wallet,
            // No hold is due (they were expired above): every one is an unstarted session.
            unstarted: count(w.holds.len()),
            opened_in_window: rate_count(rate.as_ref())?,
            spending,
        };

        let new = match decide_pay(&facts)? {
            PayDecision::Answer(outcome) => return Ok(outcome),
            PayDecision::Create(new) => new,
        };
        let delta = wallet_delta(w.wallet, new.wallet);
        let terms = SpendTerms::of(cmd, spending.user_override);
        // The tariff read is conditioned too: a session authorized after a tariff change never
        // gets the old one.
        let actions = self.pay_actions(
            cmd,
            &new.session,
            delta,
            &new.hold_entry,
            Some(&new.session.tariff),
            terms,
        )?;
        match self.transact(actions).await? {
            Tx::Done => Ok(self.paid(new.session)),
            Tx::Cancelled(reasons) => match pay_refusal(cmd, &reasons, terms)? {
                Some(refusal) => Ok(refusal),
                None => Err(Failure::Contention(
                    "the pay lost a race; read again".into(),
                )),
            },
        }
    }

    /// Pay in one `TransactWriteItems`, deciding from this process's last knowledge of the device
    /// item (the service reads the device just before it pays, so it is fresh) instead of a read:
    /// the transaction checks every fact the decision used (the tariff copied into the session,
    /// online, idle), and the refusals come from its cancellation reasons. `None` when there is no
    /// such knowledge, when it shows anything but an idle online machine, or when the reasons
    /// leave the answer open (a retry with this key, an overdue hold, a race): then the usual pay
    /// runs (read, then write).
    pub(super) async fn pay_guessed(
        &self,
        cmd: &PayCommand,
    ) -> Result<Option<PayOutcome>, Failure> {
        let Some(device) = self.shadow.get(cmd.device) else {
            return Ok(None);
        };
        // The facts assumed (the transaction checks each): no pay with this key yet, an unused
        // advert, the user within both limits, and the money there. The wallet is not read: the core holds the amount on a
        // wallet holding exactly it, and the difference is applied under the condition that the
        // money is there. Any answer but a new session is left to the read.
        let base = Wallet {
            available: cmd.max_amount,
            held: Amount::ZERO,
            spent: Amount::ZERO,
            refunded: Amount::ZERO,
        };
        let status = device.status();
        let assumed = PayFacts {
            cmd,
            device: Some(&status),
            prior: None,
            advert_used: false,
            wallet: base,
            unstarted: 0,
            opened_in_window: 0,
            // Assumed too: no override for this user (the wallet's condition) and nothing
            // spent that the cap would refuse (the spending item's condition).
            spending: Spending::default(),
        };
        let PayDecision::Create(new) = decide_pay(&assumed)? else {
            return Ok(None);
        };
        let session = new.session;
        let terms = SpendTerms::of(cmd, None);
        let actions = self.pay_actions(
            cmd,
            &session,
            wallet_delta(base, new.wallet),
            &new.hold_entry,
            Some(&device.record.tariff),
            terms,
        )?;
        let outcome = match self.transact(actions).await {
            Ok(Tx::Done) => return Ok(Some(self.paid(session))),
            Ok(Tx::Cancelled(reasons)) => pay_refusal(cmd, &reasons, terms),
            Err(e) => Err(e),
        };
        // Whatever the device item is now, this process no longer knows it.
        self.shadow.forget(cmd.device);
        outcome
    }

    /// A pay went through: the machine now holds `session`.
    pub(super) fn paid(&self, session: Session) -> PayOutcome {
        self.shadow.update(session.device_id, |d| {
            d.open = Some(session.clone());
        });
        PayOutcome::Created(session)
    }

    /// Pay's transaction, in the order of the refusals (`PAY_*`): DynamoDB reports the failed
    /// conditions of a cancelled transaction in action order, so the first one reported is the
    /// refusal [`decide_pay`] gives first. With `tariff` (a decision from a guess), the device's
    /// tariff must still be the one copied into the session.
    pub(super) fn pay_actions(
        &self,
        cmd: &PayCommand,
        session: &Session,
        [da, dh, ds]: [i64; 3],
        hold_entry: &LedgerEntry,
        tariff: Option<&Tariff>,
        terms: SpendTerms,
    ) -> Result<Vec<TransactWriteItem>, StoreError> {
        let sid = session.id.to_string();
        let snapshot = AttributeValue::M(session_attrs(session));
        let fresh_since = cmd.now.saturating_sub(cmd.offline_after_secs);
        let mut advert = items::advert_key(cmd.device, cmd.slot, cmd.use_counter);
        advert.extend([
            ("type".to_string(), s("ADVERT")),
            ("session".to_string(), s(&sid)),
            ("user".to_string(), s(cmd.user.as_str())),
            (TTL.to_string(), n(cmd.now + RETENTION_SECS)),
        ]);
        let mut record = items::pay_key_key(&cmd.user, &cmd.key);
        record.extend([
            ("type".to_string(), s("IDEMPOTENCY")),
            ("fingerprint".to_string(), s(cmd.fingerprint().to_string())),
            ("session".to_string(), s(&sid)),
            // No TTL: the record lives as long as the session and ledger rows it protects, so
            // a key reused after any time is answered as SQLite answers it (issue 10, L5).
        ]);
        let mut device = Upd::new(device_key(cmd.device))
            .set("#open = :snap")
            .cond("attribute_exists(pk) AND attribute_not_exists(#open) AND last_seen >= :fresh")
            .cond("attribute_not_exists(service) OR service = :in_service")
            .name("#open", "open")
            .val(":in_service", s(ServiceState::InService.as_str()))
            .val(":snap", snapshot.clone())
            .val(":fresh", n(fresh_since))
            // The advert's key epoch is still one the device accepts (not revoked, not rotated
            // away): a stale shadow is a failed condition here.
            .cond("attribute_not_exists(revoked_at)")
            .cond(if cmd.key_epoch == blepay_core::KeyEpoch::FIRST {
                "attribute_not_exists(key_epoch) OR key_epoch = :advert_epoch \
                 OR key_pending = :advert_epoch"
            } else {
                "key_epoch = :advert_epoch OR key_pending = :advert_epoch"
            })
            .val(":advert_epoch", n(cmd.key_epoch.get()));
        if let Some(t) = tariff {
            device = device
                .cond("price = :price AND #unit = :unit AND currency = :currency")
                .name("#unit", "unit")
                .val(":price", n(t.price_per_unit.minor()))
                .val(":unit", s(t.unit_name.as_str()))
                .val(":currency", s(t.currency.as_str()));
        }
        Ok(vec![
            // PAY_KEY: the idempotency record.
            put_new(&self.table, record)?,
            // PAY_DEVICE: the machine's lock, only if it is idle and online.
            device.into_transact(&self.table)?,
            // PAY_ADVERT: the single-use advert marker.
            put_new(&self.table, advert)?,
            // PAY_WALLET: the hold, only if the user holds fewer unstarted sessions (`holds`,
            // their AUTHORIZED sessions) than the cap and the money is there.
            Upd::new(wallet_key(&cmd.user))
                .set("available = available + :da, held = held + :dh, spent = spent + :ds")
                .set("holds.#sid = :snap")
                // The user's open sessions, for their session list (`items::session_item`).
                .add(format!("{} :open_sid", items::OPEN_SESSIONS))
                .val(":open_sid", AttributeValue::Ss(vec![sid.clone()]))
                .cond("attribute_not_exists(holds) OR size(holds) < :cap")
                .cond("available >= :amt")
                .name("#sid", &sid)
                .val(":da", n(da))
                .val(":dh", n(dh))
                .val(":ds", n(ds))
                .val(":cap", n(cmd.limits.max_unstarted_per_user))
                .val(":amt", n(cmd.max_amount.minor()))
                .val(":snap", snapshot)
                .merge(match terms.assumed_override {
                    None => Upd::default().cond("attribute_not_exists(daily_limit)"),
                    Some(l) => Upd::default()
                        .cond("daily_limit = :daily_limit")
                        .val(":daily_limit", n(l.minor())),
                })
                .into_transact(&self.table)?,
            // PAY_RATE: the user's counter of this rate window, only while below the rate.
            Upd::new(items::rate_key(&cmd.user, cmd.limits.window(cmd.now)))
                .set("#n = if_not_exists(#n, :zero) + :one, #type = :rate, #ttl = :end")
                .cond("attribute_not_exists(#n) OR #n < :max")
                .name("#n", "n")
                .name("#type", "type")
                .name("#ttl", TTL)
                .val(":zero", n(0))
                .val(":one", n(1))
                .val(":rate", s("RATE"))
                .val(":end", n(cmd.now + cmd.limits.secs_to_next_window(cmd.now)))
                .val(":max", n(cmd.limits.rate_max))
                .into_transact(&self.table)?,
            // The session (random ids do not collide) and the ledger entry.
            put_new(&self.table, session_item(session))?,
            put_new(
                &self.table,
                items::ledger_item(hold_entry, cmd.now, Some(session.id), ""),
            )?,
            // PAY_SPEND: the day's spending grows by the hold, only while within the cap.
            spend_update(
                &cmd.user,
                terms.day,
                cmd.max_amount.minor(),
                terms
                    .cap
                    .map(|cap| cap.minor().saturating_sub(cmd.max_amount.minor())),
            )
            .into_transact(&self.table)?,
        ])
    }
}

/// Positions of pay's actions (`pay_actions`), in the order of the refusals.
const PAY_KEY: usize = 0;
const PAY_DEVICE: usize = 1;
const PAY_ADVERT: usize = 2;
const PAY_WALLET: usize = 3;
const PAY_RATE: usize = 4;
const PAY_SPEND: usize = 7;

/// What a pay assumed of the daily cap: the day, the user's override it read (or assumed
/// absent), and so the cap that applies.
#[derive(Debug, Clone, Copy)]
pub(super) struct SpendTerms {
    day: u64,
    assumed_override: Option<Amount>,
    cap: Option<Amount>,
}

impl SpendTerms {
    fn of(cmd: &PayCommand, assumed_override: Option<Amount>) -> Self {
        Self {
            day: spending_day(cmd.now),
            assumed_override,
            cap: effective_daily_limit(assumed_override, cmd.daily_limit),
        }
    }
}

fn count(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// The sessions a rate counter item says were opened in its window (0 without the item).
fn rate_count(item: Option<&Item>) -> Result<u32, StoreError> {
    match item {
        None => Ok(0),
        Some(item) => items::opt_n(item, "n").map(Option::unwrap_or_default),
    }
}

/// The refusal a cancelled pay transaction means, from its cancellation reasons (the old items,
/// `ALL_OLD`); `None` when they leave it open and the pay must be decided from a fresh read: a
/// request with this key won (it is answered as a retry), an overdue session is in the way (it is
/// expired first), or the item changed since it was read.
fn pay_refusal(
    cmd: &PayCommand,
    reasons: &[(String, Option<Item>)],
    terms: SpendTerms,
) -> Result<Option<PayOutcome>, Failure> {
    let failed = |i: usize| {
        reasons
            .get(i)
            .filter(|(code, _)| code == "ConditionalCheckFailed")
            .map(|(_, old)| old.as_ref())
    };
    // A lost race against a pay with the same key can show up as busy / advert used /
    // insufficient funds when that pay's record was written after this transaction checked it;
    // when the old item shows a session this very request could have created (same user, machine
    // and amount), read again: the key record then answers it as a retry.
    let ours = |x: &Session| cmd.is_retry_of(x);
    if failed(PAY_KEY).is_some() {
        return Ok(None);
    }
    if let Some(old) = failed(PAY_DEVICE) {
        let Some(old) = old else {
            return Ok(Some(PayOutcome::DeviceUnknown));
        };
        let device = device_from_item(old)?;
        if device.record.keys.key_use(cmd.key_epoch) == blepay_store::KeyUse::Refused {
            return Ok(Some(PayOutcome::KeyRefused));
        }
        if device.record.service_state != ServiceState::InService {
            return Ok(Some(PayOutcome::DeviceOutOfService));
        }
        if device
            .open
            .as_ref()
            .is_some_and(|o| ours(o) || o.is_due_to_expire(cmd.now))
        {
            return Ok(None);
        }
        return Ok(
            match device
                .status()
                .state(cmd.now, cmd.offline_after_secs, cmd.signals)
            {
                DeviceState::Offline => Some(PayOutcome::DeviceOffline),
                DeviceState::Fault => Some(PayOutcome::DeviceFault),
                DeviceState::Busy => Some(PayOutcome::DeviceBusy),
                // Idle and online: another tariff, or the read was stale.
                DeviceState::Idle => None,
            },
        );
    }
    if let Some(old) = failed(PAY_ADVERT) {
        if old.is_some_and(|m| items::get_s(m, "user").is_ok_and(|u| u == cmd.user.as_str())) {
            return Ok(None);
        }
        return Ok(Some(PayOutcome::AdvertUsed));
    }
    // The wallet (the unstarted cap, then the money) and the rate counter, in
    // `decide_pay`'s order: too many unstarted, rate limited, insufficient funds.
    let wallet = match failed(PAY_WALLET) {
        None => None,
        Some(old) => {
            let wallet = wallet_from_item(old)?;
            if wallet
                .holds
                .iter()
                .any(|h| ours(h) || h.is_due_to_expire(cmd.now))
            {
                return Ok(None);
            }
            if count(wallet.holds.len()) >= cmd.limits.max_unstarted_per_user {
                return Ok(Some(PayOutcome::TooManyUnstarted {
                    max: cmd.limits.max_unstarted_per_user,
                }));
            }
            // The cap override changed since it was read (or was assumed absent): read again.
            if override_of(old)? != terms.assumed_override {
                return Ok(None);
            }
            Some(wallet)
        }
    };
    if let Some(old) = failed(PAY_RATE) {
        if rate_count(old)? >= cmd.limits.rate_max {
            return Ok(Some(PayOutcome::RateLimited {
                retry_after_secs: cmd.limits.secs_to_next_window(cmd.now),
            }));
        }
        return Ok(None);
    }
    if let Some(old) = failed(PAY_SPEND) {
        let spent_today = spent_of(old)?;
        return Ok(match terms.cap {
            Some(limit) if spent_today.minor() + cmd.max_amount.minor() > limit.minor() => {
                Some(PayOutcome::SpendingLimit { limit, spent_today })
            }
            _ => None,
        });
    }
    if let Some(wallet) = wallet {
        let available = wallet.wallet.available;
        if available < cmd.max_amount {
            return Ok(Some(PayOutcome::InsufficientFunds { available }));
        }
        return Ok(None);
    }
    Err(StoreError::Internal(format!(
        "pay cancelled for an unexpected reason: {:?}",
        reasons.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>()
    ))
    .into())
}
