//! The machine lifecycle (operator updates, the fleet list) and the daily spending cap
//! (issue 11, items 4 and 6; docs/dynamodb.md "Fleet and spending").

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem};
use blepay_core::{Amount, DeviceId, UserId};
use blepay_store::decide::{DeviceUpdateDecision, decide_device_update};
use blepay_store::{
    DeviceFilter, DeviceStatus, DeviceUpdate, DeviceUpdateOutcome, ListPosition, Page, PageRequest,
    SPENDING_DAY_SECS, ServiceState, Spending, StoreError, spending_day,
};

use crate::DynamoStore;
use crate::items::{
    self, DUE_AT, DUE_INDEX, DUE_PK, FLEET_PARTITION, Failure, Item, TTL, Upd, device_from_item,
    device_key, fleet_position, n, opt_n, s, spend_key, wallet_from_item, wallet_key,
};

/// How long a day's spending item outlives its day (TTL), so late releases still find it.
const SPEND_KEEP_DAYS: u64 = 3;

/// The update of `user`'s spending item of `day` by `delta` minor units (created at 0 when
/// absent); with `room`, only while the stored spending is at most `room` (the pay's cap check:
/// spending + hold <= cap).
pub(crate) fn spend_update(user: &UserId, day: u64, delta: i64, room: Option<i64>) -> Upd {
    let upd = Upd::new(spend_key(user, day))
        .set("#n = if_not_exists(#n, :zero) + :d, #type = :spend, #ttl = :ttl")
        .name("#n", "n")
        .name("#type", "type")
        .name("#ttl", TTL)
        .val(":zero", n(0))
        .val(":d", n(delta))
        .val(":spend", s("SPEND"))
        .val(":ttl", n((day + SPEND_KEEP_DAYS) * SPENDING_DAY_SECS));
    match room {
        None => upd,
        Some(room) => upd
            .cond("attribute_not_exists(#n) OR #n <= :room")
            .val(":room", n(room)),
    }
}

/// Add `delta` to `user`'s spending of `day` in `writes`, merged into an adjustment of the same
/// item already there (a transaction may name an item once).
pub(crate) fn push_spend(
    table: &str,
    writes: &mut Vec<TransactWriteItem>,
    user: &UserId,
    day: u64,
    delta: i64,
) -> Result<(), StoreError> {
    let key = spend_key(user, day);
    let mut total = delta;
    if let Some(pos) = writes
        .iter()
        .position(|w| w.update().is_some_and(|u| *u.key() == key))
    {
        let prev = writes.remove(pos);
        total += prev
            .update()
            .and_then(|u| u.expression_attribute_values())
            .and_then(|v| v.get(":d"))
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0);
    }
    if total != 0 {
        writes.push(spend_update(user, day, total, None).into_transact(table)?);
    }
    Ok(())
}

/// The stored spending of a day's item (0 without it; never below 0: releases of sessions opened
/// before the item existed may take it below).
pub(crate) fn spent_of(item: Option<&Item>) -> Result<Amount, StoreError> {
    let v: i64 = match item {
        None => 0,
        Some(item) => opt_n(item, "n")?.unwrap_or(0),
    };
    Amount::new(v.max(0)).map_err(|_| items::corrupt("spending", "n"))
}

/// A wallet item's cap override (`daily_limit`), if any.
pub(crate) fn override_of(wallet: Option<&Item>) -> Result<Option<Amount>, StoreError> {
    let Some(item) = wallet else {
        return Ok(None);
    };
    opt_n::<i64>(item, "daily_limit")?
        .map(|v| Amount::new(v).map_err(|_| items::corrupt("wallet", "daily_limit")))
        .transpose()
}

impl DynamoStore {
    pub(super) async fn list_devices_once(
        &self,
        filter: &DeviceFilter,
        page: &PageRequest,
        now: u64,
    ) -> Result<Page<DeviceStatus>, Failure> {
        let after = match &page.after {
            None => None,
            Some(p) => Some(fleet_position(DeviceId::parse(&p.id).map_err(|_| {
                StoreError::Internal(format!("a fleet cursor names no device: {:?}", p.id))
            })?)),
        };
        let limit = usize::try_from(page.limit).unwrap_or(usize::MAX);
        let mut items = Vec::new();
        let mut more = false;
        let mut start: Option<Item> = None;
        'pages: loop {
            let mut q = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(DUE_INDEX)
                .expression_attribute_names("#pk", DUE_PK)
                .expression_attribute_values(":pk", s(FLEET_PARTITION))
                .set_exclusive_start_key(start.take());
            q = match after {
                None => q.key_condition_expression("#pk = :pk"),
                Some(a) => q
                    .key_condition_expression("#pk = :pk AND #at > :after")
                    .expression_attribute_names("#at", DUE_AT)
                    .expression_attribute_values(":after", n(a)),
            };
            let out = q.send().await.map_err(|e| items::sdk_error(&e))?;
            for d in self.fleet_devices(out.items()).await? {
                let mut status = d.status();
                if let Some(open) = d.open.as_ref().filter(|o| o.is_due_to_expire(now)) {
                    self.expire_one(open, now).await?;
                    status.open_session = None;
                }
                if !filter.matches(&status, now) {
                    continue;
                }
                if items.len() == limit {
                    more = true;
                    break 'pages;
                }
                items.push(status);
            }
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        let next = if more {
            items.last().map(|d: &DeviceStatus| ListPosition {
                at: 0,
                id: d.device.id.to_string(),
            })
        } else {
            None
        };
        Ok(Page { items, next })
    }

    /// The devices a page of the `FLEET` partition names, in its order: fleet entries
    /// (`items::fleet_item`) are read (consistent `BatchGetItem`, 100 keys at a time); device
    /// items indexed themselves (registered before fleet entries) are taken as they are.
    async fn fleet_devices(&self, page: &[Item]) -> Result<Vec<items::DeviceItem>, Failure> {
        let entries: Vec<Item> = page
            .iter()
            .filter(|i| items::get_s(i, "sk").is_ok_and(|sk| sk == items::FLEET_SK))
            .map(|i| {
                let mut key = Item::new();
                if let Some(pk) = i.get("pk") {
                    key.insert("pk".into(), pk.clone());
                }
                key.insert("sk".into(), s("DEVICE"));
                key
            })
            .collect();
        let mut read = Vec::with_capacity(entries.len());
        for chunk in entries.chunks(100) {
            read.extend(self.batch_get(chunk.to_vec()).await?);
        }
        let mut read = read.into_iter();
        let mut devices = Vec::with_capacity(page.len());
        for item in page {
            if items::get_s(item, "sk").is_ok_and(|sk| sk == items::FLEET_SK) {
                // A fleet entry whose device is gone (deleted by hand) lists nothing.
                if let Some(device) = read.next().flatten() {
                    devices.push(device_from_item(&device)?);
                }
            } else {
                devices.push(device_from_item(item)?);
            }
        }
        Ok(devices)
    }

    /// One `GetItem`, the decision, one `UpdateItem` conditioned on every field read (a
    /// concurrent change makes it a re-read, never a lost update).
    pub(super) async fn update_device_once(
        &self,
        id: DeviceId,
        update: &DeviceUpdate,
        now: u64,
    ) -> Result<DeviceUpdateOutcome, Failure> {
        let Some(current) = self.device_status_once(id, now).await? else {
            return Ok(DeviceUpdateOutcome::DeviceUnknown);
        };
        let next = match decide_device_update(&current.device, update) {
            DeviceUpdateDecision::Unchanged => {
                return Ok(DeviceUpdateOutcome::Unchanged(current));
            }
            DeviceUpdateDecision::Decommissioned => {
                return Ok(DeviceUpdateOutcome::Decommissioned);
            }
            DeviceUpdateDecision::Write(next) => next,
        };
        let was = &current.device;
        let mut upd = Upd::new(device_key(id))
            .set("#name = :name, price = :price, #unit = :unit, currency = :currency")
            .set("service = :service")
            // A device item of an earlier layout leaves the `FLEET` partition for its entry.
            .remove(format!("{DUE_PK}, {DUE_AT}"))
            .cond("attribute_exists(pk)")
            .cond("#name = :pname AND price = :pprice AND #unit = :punit AND currency = :pcur")
            .name("#name", "name")
            .name("#unit", "unit")
            .val(":name", s(next.name.as_str()))
            .val(":price", n(next.tariff.price_per_unit.minor()))
            .val(":unit", s(next.tariff.unit_name.as_str()))
            .val(":currency", s(next.tariff.currency.as_str()))
            .val(":service", s(next.service_state.as_str()))
            .val(":pname", s(was.name.as_str()))
            .val(":pprice", n(was.tariff.price_per_unit.minor()))
            .val(":punit", s(was.tariff.unit_name.as_str()))
            .val(":pcur", s(was.tariff.currency.as_str()))
            .val(":pservice", s(was.service_state.as_str()));
        upd = if was.service_state == ServiceState::InService {
            upd.cond("attribute_not_exists(service) OR service = :pservice")
        } else {
            upd.cond("service = :pservice")
        };
        // With the device's fleet entry (written again: a device registered before entries
        // existed gets one here, as it used to get its `due_pk` from any update).
        let fleet = aws_sdk_dynamodb::types::Put::builder()
            .table_name(&self.table)
            .set_item(Some(items::fleet_item(id)))
            .build()
            .map_err(items::build_error)?;
        let sent = self
            .transact_or_rerun(vec![
                upd.into_transact(&self.table)?,
                TransactWriteItem::builder().put(fleet).build(),
            ])
            .await;
        self.shadow.forget(id);
        sent?;
        Ok(DeviceUpdateOutcome::Updated(DeviceStatus {
            device: next,
            ..current
        }))
    }

    pub(super) async fn spending_once(&self, user: &UserId, now: u64) -> Result<Spending, Failure> {
        let [wallet, spend] = <[Option<Item>; 2]>::try_from(
            // TransactGetItems (GetItem per item): the phone routes' function has no BatchGetItem.
            self.transact_get(vec![wallet_key(user), spend_key(user, spending_day(now))])
                .await?,
        )
        .map_err(|_| StoreError::Internal("TransactGetItems answered the wrong count".into()))?;
        let w = wallet_from_item(wallet.as_ref())?;
        if self.expire_due_holds(&w, now).await? {
            return Err(Failure::Contention("expired due holds; read again".into()));
        }
        Ok(Spending {
            user_override: override_of(wallet.as_ref())?,
            spent_today: spent_of(spend.as_ref())?,
        })
    }

    pub(super) async fn set_spending_limit_once(
        &self,
        user: &UserId,
        limit: Option<Amount>,
        now: u64,
    ) -> Result<Spending, Failure> {
        match limit {
            Some(l) => {
                // Creates a zero wallet when there is none, as a top-up would.
                Upd::new(wallet_key(user))
                    .set("daily_limit = :l, #type = :type, #user = :user")
                    .set("available = if_not_exists(available, :z)")
                    .set("held = if_not_exists(held, :z), spent = if_not_exists(spent, :z)")
                    .set("holds = if_not_exists(holds, :empty)")
                    .name("#type", "type")
                    .name("#user", "user")
                    .val(":l", n(l.minor()))
                    .val(":z", n(0))
                    .val(":type", s("WALLET"))
                    .val(":user", s(user.as_str()))
                    .val(":empty", AttributeValue::M(HashMap::new()))
                    .send(&self.client, &self.table)
                    .await?;
            }
            None => {
                match Upd::new(wallet_key(user))
                    .remove("daily_limit")
                    .cond("attribute_exists(pk)")
                    .send(&self.client, &self.table)
                    .await
                {
                    // No wallet: no override to clear.
                    Ok(()) | Err(Failure::Condition) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        self.spending_once(user, now).await
    }
}
