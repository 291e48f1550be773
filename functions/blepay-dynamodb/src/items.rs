//! Keys, item shapes, attribute conversions and the classification of SDK errors.
//! The table design is written up in `docs/dynamodb.md`; keep the two in step.

use std::collections::HashMap;
use std::fmt::Display;
use std::str::FromStr;

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeValue, Put, ReturnValuesOnConditionCheckFailure, TransactWriteItem, Update,
};
use blepay_core::{
    Amount, CloseReason, Currency, DeviceId, DeviceName, EntryKind, IdempotencyKey, KeyEpoch,
    KeyVersion, LateReport, LedgerAccount, LedgerEntry, Session, SessionId, SessionStatus, Slot,
    Tariff, Telemetry, UnitName, Units, UseCounter, UserId, Wallet,
};
use blepay_store::decide::LastCall;
use blepay_store::{
    DeviceKeys, DeviceRecord, DeviceStatus, Revocation, SavedAnswer, ServiceState, StoreError,
};

pub(crate) type Item = HashMap<String, AttributeValue>;

/// Partition and sort key attribute names.
pub(crate) const PK: &str = "pk";
pub(crate) const SK: &str = "sk";
/// The sparse GSI of AUTHORIZED sessions by start deadline.
pub(crate) const DUE_INDEX: &str = "due";
pub(crate) const DUE_PK: &str = "due_pk";
/// An open session item's creation time (`session_item`).
pub(crate) const OPENED_AT: &str = "opened_at";
/// The wallet's string set of its user's open sessions (`SS` of session ids): added by pay,
/// deleted by the close; what the user's session list adds to its index's closed sessions.
pub(crate) const OPEN_SESSIONS: &str = "open_sessions";
pub(crate) const DUE_AT: &str = "due_at";
pub(crate) const DUE_PARTITION: &str = "DUE";
/// The `due` GSI partition of ACTIVE sessions, sorted by the base of their report deadline
/// (the later of their start and their last report): the timeout sweep's candidates.
pub(crate) const ACTIVE_PARTITION: &str = "ACTIVE";
/// The TTL attribute (unix seconds) of advert markers and rate counters (idempotency records
/// have none since issue 10: they live as long as the ledger rows they protect).
pub(crate) const TTL: &str = "ttl";
/// The `due` GSI partition of device items, sorted by their id as a number (`fleet_position`):
/// the fleet list's index (docs/dynamodb.md).
pub(crate) const FLEET_PARTITION: &str = "FLEET";
/// How long advert markers are kept.
pub(crate) const RETENTION_SECS: u64 = 7 * 24 * 3600;

// ---------------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------------

pub(crate) fn key(pk: String, sk: &str) -> Item {
    HashMap::from([
        (PK.to_string(), AttributeValue::S(pk)),
        (SK.to_string(), s(sk)),
    ])
}

pub(crate) fn device_key(id: DeviceId) -> Item {
    key(device_pk(id), "DEVICE")
}

pub(crate) fn device_pk(id: DeviceId) -> String {
    format!("DEV#{id}")
}

pub(crate) fn wallet_key(user: &UserId) -> Item {
    key(format!("USER#{user}"), "WALLET")
}

pub(crate) fn pay_key_key(user: &UserId, k: &IdempotencyKey) -> Item {
    key(format!("USER#{user}"), &format!("PAY#{k}"))
}

pub(crate) fn topup_key_key(user: &UserId, k: &IdempotencyKey) -> Item {
    key(format!("USER#{user}"), &format!("TOPUP#{k}"))
}

/// A user's pay counter for rate window `window` (`blepay_store::PayLimits::window`): attribute
/// `n`, the sessions opened in it, and a TTL at the window's end.
pub(crate) fn rate_key(user: &UserId, window: u64) -> Item {
    key(format!("USER#{user}"), &format!("RATE#{window}"))
}

/// The id of the ledger row a top-up with `k` writes (`ledger_key`'s `topup`).
pub(crate) fn topup_ledger_id(user: &UserId, k: &IdempotencyKey) -> String {
    format!("TOPUP#{user}#{k}")
}

/// The key of the ledger row a top-up with `k` writes.
pub(crate) fn topup_ledger_key(user: &UserId, k: &IdempotencyKey) -> Item {
    key(format!("LEDGER#{}", topup_ledger_id(user, k)), "ENTRY")
}

pub(crate) fn session_key(id: SessionId) -> Item {
    key(format!("SESSION#{id}"), "SESSION")
}

pub(crate) fn advert_key(device: DeviceId, slot: Slot, counter: UseCounter) -> Item {
    key(
        format!("ADVERT#{device}#{}#{}", slot.get(), counter.get()),
        "ADVERT",
    )
}

/// Ledger entries of a session are keyed by session and kind (each happens at most once per
/// session); top-ups by user and idempotency key.
pub(crate) fn ledger_key(entry: &LedgerEntry, session: Option<SessionId>, topup: &str) -> Item {
    let id = match session {
        Some(sid) => format!("LEDGER#{sid}#{}", entry.kind.as_str()),
        None => format!("LEDGER#{topup}"),
    };
    key(id, "ENTRY")
}

// ---------------------------------------------------------------------------------------------
// Attribute values
// ---------------------------------------------------------------------------------------------

pub(crate) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub(crate) fn n(v: impl Display) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

pub(crate) fn b(v: &[u8]) -> AttributeValue {
    AttributeValue::B(Blob::new(v))
}

pub(crate) fn corrupt(what: &str, attr: &str) -> StoreError {
    StoreError::Corrupt(format!(
        "{what}: attribute `{attr}` is missing or malformed"
    ))
}

pub(crate) fn get_s<'a>(item: &'a Item, attr: &str) -> Result<&'a str, StoreError> {
    match item.get(attr) {
        Some(AttributeValue::S(v)) => Ok(v),
        _ => Err(corrupt("item", attr)),
    }
}

pub(crate) fn get_n<T: FromStr>(item: &Item, attr: &str) -> Result<T, StoreError> {
    opt_n(item, attr)?.ok_or_else(|| corrupt("item", attr))
}

pub(crate) fn opt_n<T: FromStr>(item: &Item, attr: &str) -> Result<Option<T>, StoreError> {
    match item.get(attr) {
        None | Some(AttributeValue::Null(_)) => Ok(None),
        Some(AttributeValue::N(v)) => v.parse().map(Some).map_err(|_| corrupt("item", attr)),
        Some(_) => Err(corrupt("item", attr)),
    }
}

pub(crate) fn opt_b<'a>(item: &'a Item, attr: &str) -> Result<Option<&'a [u8]>, StoreError> {
    match item.get(attr) {
        None | Some(AttributeValue::Null(_)) => Ok(None),
        Some(AttributeValue::B(v)) => Ok(Some(v.as_ref())),
        Some(_) => Err(corrupt("item", attr)),
    }
}

pub(crate) fn opt_s<'a>(item: &'a Item, attr: &str) -> Result<Option<&'a str>, StoreError> {
    match item.get(attr) {
        None | Some(AttributeValue::Null(_)) => Ok(None),
        Some(AttributeValue::S(v)) => Ok(Some(v)),
        Some(_) => Err(corrupt("item", attr)),
    }
}

pub(crate) fn opt_m<'a>(item: &'a Item, attr: &str) -> Result<Option<&'a Item>, StoreError> {
    match item.get(attr) {
        None | Some(AttributeValue::Null(_)) => Ok(None),
        Some(AttributeValue::M(v)) => Ok(Some(v)),
        Some(_) => Err(corrupt("item", attr)),
    }
}

fn amount(item: &Item, attr: &str) -> Result<Amount, StoreError> {
    Amount::new(get_n(item, attr)?).map_err(|_| corrupt("amount", attr))
}

fn parsed<T, E>(
    item: &Item,
    attr: &str,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<T, StoreError> {
    parse(get_s(item, attr)?).map_err(|_| corrupt("item", attr))
}

// ---------------------------------------------------------------------------------------------
// Devices
// ---------------------------------------------------------------------------------------------

/// A device item, with the protocol state the store keeps on it.
#[derive(Debug, Clone)]
pub(crate) struct DeviceItem {
    pub record: DeviceRecord,
    pub last_seq: Option<u32>,
    pub last_digest: Option<Vec<u8>>,
    /// The answer saved with `last_seq`: `last_response` (B) and `last_code` (S, the refusal
    /// code; absent for an answer that is not a refusal, and on items saved before it existed).
    pub last_answer: Option<SavedAnswer>,
    pub last_seen: Option<u64>,
    /// The AUTHORIZED or ACTIVE session on the machine (the "busy" lock and the poll grant).
    pub open: Option<Session>,
    /// The latest heartbeat's telemetry (`telemetry`, M) and when it arrived (`telemetry_at`).
    pub telemetry: Option<Telemetry>,
    pub telemetry_at: Option<u64>,
}

impl DeviceItem {
    /// The last accepted request, for [`blepay_store::decide::check_call`].
    pub fn last_call(&self) -> Option<LastCall> {
        self.last_seq.map(|seq| LastCall {
            seq,
            digest: self.last_digest.clone(),
            answer: self.last_answer.clone(),
        })
    }

    /// The machine as the pay decision sees it.
    pub fn status(&self) -> DeviceStatus {
        DeviceStatus {
            device: self.record.clone(),
            last_seen: self.last_seen,
            open_session: self.open.as_ref().map(|o| o.id),
            telemetry: self.telemetry.clone(),
            telemetry_at: self.telemetry_at,
        }
    }
}

pub(crate) fn device_item(d: &DeviceRecord) -> Item {
    let mut item = device_key(d.id);
    item.extend([
        ("type".to_string(), s("DEVICE")),
        ("id".to_string(), s(d.id.to_string())),
        ("name".to_string(), s(d.name.as_str())),
        ("price".to_string(), n(d.tariff.price_per_unit.minor())),
        ("unit".to_string(), s(d.tariff.unit_name.as_str())),
        ("currency".to_string(), s(d.tariff.currency.as_str())),
        ("key_version".to_string(), n(d.key_version.get())),
        // Not `created_at`: with `type` that would put every device in `sessions_by_time`, and
        // each machine request would pay for that index's copy (docs/dynamodb.md "Units").
        ("registered_at".to_string(), n(d.created_at)),
        ("service".to_string(), s(d.service_state.as_str())),
    ]);
    item
}

/// The device's entry in the fleet list: a small item next to the device item, in the `FLEET`
/// partition of the `due` GSI (the device item itself is in no index, so a machine request
/// writes no index copy). Written with the device at registration, never changed.
pub(crate) fn fleet_item(id: DeviceId) -> Item {
    let mut item = key(device_pk(id), FLEET_SK);
    item.extend([
        ("type".to_string(), s("FLEET")),
        ("id".to_string(), s(id.to_string())),
        (DUE_PK.to_string(), s(FLEET_PARTITION)),
        (DUE_AT.to_string(), n(fleet_position(id))),
    ]);
    item
}

/// The sort key of a device's fleet entry ([`fleet_item`]).
pub(crate) const FLEET_SK: &str = "FLEET";

/// A device's sort key in the `FLEET` partition of the `due` GSI: its 8 id bytes as a big-endian
/// number, so numeric order is id order.
pub(crate) fn fleet_position(id: DeviceId) -> u64 {
    u64::from_be_bytes(id.to_bytes())
}

/// A user's spending of one UTC day (`blepay_store::spending_day`).
pub(crate) fn spend_key(user: &UserId, day: u64) -> Item {
    key(format!("USER#{user}"), &format!("SPEND#{day}"))
}

pub(crate) fn device_from_item(item: &Item) -> Result<DeviceItem, StoreError> {
    Ok(DeviceItem {
        record: DeviceRecord {
            id: parsed(item, "id", DeviceId::parse)?,
            name: parsed(item, "name", DeviceName::parse)?,
            tariff: tariff(item)?,
            key_version: KeyVersion::new(get_n(item, "key_version")?)
                .map_err(|_| corrupt("device", "key_version"))?,
            // `created_at` on items registered before `registered_at`.
            created_at: match opt_n(item, "registered_at")? {
                Some(at) => at,
                None => get_n(item, "created_at")?,
            },
            service_state: match opt_s(item, "service")? {
                None => ServiceState::InService,
                Some(v) => ServiceState::parse(v).ok_or_else(|| corrupt("device", "service"))?,
            },
            keys: keys_from_item(item)?,
        },
        last_seq: opt_n(item, "last_seq")?,
        last_digest: opt_b(item, "last_digest")?.map(<[u8]>::to_vec),
        last_answer: opt_b(item, "last_response")?
            .map(|frame| -> Result<SavedAnswer, StoreError> {
                Ok(SavedAnswer {
                    frame: frame.to_vec(),
                    code: opt_s(item, "last_code")?.map(str::to_owned),
                })
            })
            .transpose()?,
        last_seen: opt_n(item, "last_seen")?,
        open: opt_m(item, "open")?.map(session_from_item).transpose()?,
        telemetry: opt_m(item, "telemetry")?
            .map(telemetry_from_item)
            .transpose()?,
        telemetry_at: opt_n(item, "telemetry_at")?,
    })
}

/// A device item's key state: `key_epoch` (N, absent = 0: items written before epochs existed),
/// `key_pending` (N), `key_rotation_key` (S) with `key_rotation_epoch` (N), `revoked_at` (N) with
/// `revoked_reason` (S).
fn keys_from_item(item: &Item) -> Result<DeviceKeys, StoreError> {
    let last_rotation = match (
        opt_s(item, "key_rotation_key")?,
        opt_n::<u32>(item, "key_rotation_epoch")?,
    ) {
        (Some(k), Some(e)) => Some((
            IdempotencyKey::parse(k).map_err(|_| corrupt("device", "key_rotation_key"))?,
            KeyEpoch::new(e),
        )),
        _ => None,
    };
    Ok(DeviceKeys {
        epoch: KeyEpoch::new(opt_n(item, "key_epoch")?.unwrap_or(0)),
        pending: opt_n(item, "key_pending")?.map(KeyEpoch::new),
        last_rotation,
        revoked: opt_n(item, "revoked_at")?
            .map(|at| -> Result<Revocation, StoreError> {
                Ok(Revocation {
                    at,
                    reason: opt_s(item, "revoked_reason")?.unwrap_or("").to_owned(),
                })
            })
            .transpose()?,
    })
}

/// Conditions a device update on the key state `keys` it was decided from: not revoked (every
/// write that acts for a device requires that), the same epoch, the same pending rotation.
pub(crate) fn keys_cond(upd: Upd, keys: &DeviceKeys) -> Upd {
    let upd = upd.cond("attribute_not_exists(revoked_at)");
    let upd = if keys.epoch == KeyEpoch::FIRST {
        upd.cond("attribute_not_exists(key_epoch) OR key_epoch = :key_epoch_read")
    } else {
        upd.cond("key_epoch = :key_epoch_read")
    }
    .val(":key_epoch_read", n(keys.epoch.get()));
    match keys.pending {
        Some(p) => upd
            .cond("key_pending = :key_pending_read")
            .val(":key_pending_read", n(p.get())),
        None => upd.cond("attribute_not_exists(key_pending)"),
    }
}

/// A heartbeat's telemetry as the device item's `telemetry` map.
pub(crate) fn telemetry_attr(t: &Telemetry) -> AttributeValue {
    AttributeValue::M(HashMap::from([
        ("firmware".to_string(), s(&t.firmware_version)),
        (
            "faults".to_string(),
            AttributeValue::L(t.fault_codes.iter().map(n).collect()),
        ),
        ("signal".to_string(), n(t.signal_quality)),
        ("uptime".to_string(), n(t.uptime_secs)),
        ("boots".to_string(), n(t.boot_count)),
        ("outbox".to_string(), n(t.outbox_depth)),
        ("lifetime_units".to_string(), n(t.lifetime_units)),
    ]))
}

pub(crate) fn telemetry_from_item(item: &Item) -> Result<Telemetry, StoreError> {
    let fault_codes = match item.get("faults") {
        Some(AttributeValue::L(list)) => list
            .iter()
            .map(|v| match v {
                AttributeValue::N(x) => x.parse().map_err(|_| corrupt("telemetry", "faults")),
                _ => Err(corrupt("telemetry", "faults")),
            })
            .collect::<Result<Vec<u32>, _>>()?,
        _ => return Err(corrupt("telemetry", "faults")),
    };
    Ok(Telemetry {
        firmware_version: get_s(item, "firmware")?.to_owned(),
        fault_codes,
        signal_quality: get_n(item, "signal")?,
        uptime_secs: get_n(item, "uptime")?,
        boot_count: get_n(item, "boots")?,
        outbox_depth: get_n(item, "outbox")?,
        lifetime_units: get_n(item, "lifetime_units")?,
    })
}

fn tariff(item: &Item) -> Result<Tariff, StoreError> {
    Ok(Tariff {
        price_per_unit: amount(item, "price")?,
        unit_name: parsed(item, "unit", UnitName::parse)?,
        currency: parsed(item, "currency", Currency::parse)?,
    })
}

// ---------------------------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------------------------

/// A session's attributes (also the shape of the snapshot kept in the device's `open` and the
/// wallet's `holds`).
pub(crate) fn session_attrs(x: &Session) -> Item {
    let mut item = HashMap::from([
        ("id".to_string(), s(x.id.to_string())),
        ("device".to_string(), s(x.device_id.to_string())),
        ("user".to_string(), s(x.user_id.as_str())),
        ("hold".to_string(), n(x.hold.minor())),
        ("price".to_string(), n(x.tariff.price_per_unit.minor())),
        ("unit".to_string(), s(x.tariff.unit_name.as_str())),
        ("currency".to_string(), s(x.tariff.currency.as_str())),
        ("use_counter".to_string(), n(x.use_counter.get())),
        ("status".to_string(), s(x.status.as_str())),
        ("units".to_string(), n(x.units.get())),
        ("amount".to_string(), n(x.amount.minor())),
        ("created_at".to_string(), n(x.created_at)),
        ("expires_at".to_string(), n(x.expires_at)),
    ]);
    if let Some(t) = x.started_at {
        item.insert("started_at".into(), n(t));
    }
    if let Some(t) = x.ended_at {
        item.insert("ended_at".into(), n(t));
    }
    if let Some(t) = x.last_report_at {
        item.insert("last_report_at".into(), n(t));
    }
    if let Some(c) = x.closed_by {
        item.insert("closed_by".into(), s(c.as_str()));
    }
    if let Some(l) = x.late_report {
        item.insert("late_units".into(), n(l.units.get()));
        item.insert("late_at".into(), n(l.at));
        item.insert("late_charged".into(), n(l.charged.minor()));
    }
    if !x.refunded.is_zero() {
        item.insert("refunded".into(), n(x.refunded.minor()));
    }
    item
}

/// The session item: its attributes, its key, and — while AUTHORIZED — the `due` GSI keys.
///
/// While the session is open (AUTHORIZED or ACTIVE) its creation time is `opened_at`, not
/// `created_at`: `created_at` is the sort key of the three list indexes, so an open session is in
/// none of them and its writes (pay, the press, progress reports) write no index copy there. The
/// close sets `created_at` (`close_writes`), which indexes it once; the lists add the open
/// sessions from where they are kept anyway (docs/dynamodb.md "Write units per payment").
pub(crate) fn session_item(x: &Session) -> Item {
    let mut item = session_attrs(x);
    item.extend(session_key(x.id));
    item.insert("type".into(), s("SESSION"));
    if matches!(x.status, SessionStatus::Authorized | SessionStatus::Active) {
        if let Some(at) = item.remove("created_at") {
            item.insert(OPENED_AT.into(), at);
        }
    }
    if x.status == SessionStatus::Authorized {
        item.insert(DUE_PK.into(), s(DUE_PARTITION));
        item.insert(DUE_AT.into(), n(x.expires_at));
    }
    if let Some(base) = report_base(x) {
        item.insert(DUE_PK.into(), s(ACTIVE_PARTITION));
        item.insert(DUE_AT.into(), n(base));
    }
    item
}

/// For an ACTIVE session: the base of its report deadline (the later of its start and its last
/// report), its `due_at` in the [`ACTIVE_PARTITION`] of the `due` GSI.
pub(crate) fn report_base(x: &Session) -> Option<u64> {
    x.report_deadline(0)
}

pub(crate) fn session_from_item(item: &Item) -> Result<Session, StoreError> {
    Ok(Session {
        id: parsed(item, "id", SessionId::parse)?,
        device_id: parsed(item, "device", DeviceId::parse)?,
        user_id: parsed(item, "user", UserId::parse)?,
        hold: amount(item, "hold")?,
        tariff: tariff(item)?,
        use_counter: UseCounter::new(get_n(item, "use_counter")?),
        status: parsed(item, "status", |v| SessionStatus::parse(v).ok_or(()))?,
        units: Units::new(get_n(item, "units")?),
        amount: amount(item, "amount")?,
        // An open session's item has `opened_at` (`session_item`); snapshots and closed items
        // `created_at`.
        created_at: match opt_n(item, "created_at")? {
            Some(at) => at,
            None => get_n(item, OPENED_AT)?,
        },
        expires_at: get_n(item, "expires_at")?,
        started_at: opt_n(item, "started_at")?,
        ended_at: opt_n(item, "ended_at")?,
        last_report_at: opt_n(item, "last_report_at")?,
        closed_by: opt_s(item, "closed_by")?
            .map(|c| CloseReason::parse(c).ok_or_else(|| corrupt("session", "closed_by")))
            .transpose()?,
        late_report: match (opt_n(item, "late_units")?, opt_n(item, "late_at")?) {
            (Some(units), Some(at)) => Some(LateReport {
                units: Units::new(units),
                at,
                charged: amount(item, "late_charged")?,
            }),
            _ => None,
        },
        refunded: opt_amount(item, "refunded")?,
    })
}

/// An amount attribute that items written before it existed lack (read as zero).
pub(crate) fn opt_amount(item: &Item, attr: &str) -> Result<Amount, StoreError> {
    opt_n::<i64>(item, attr)?.map_or(Ok(Amount::ZERO), |v| {
        Amount::new(v).map_err(|_| corrupt("amount", attr))
    })
}

// ---------------------------------------------------------------------------------------------
// Wallets
// ---------------------------------------------------------------------------------------------

/// A wallet item: balances, and the AUTHORIZED sessions holding money on it (`holds`, by session
/// id), so that a wallet read can expire overdue holds without an index.
#[derive(Debug, Clone, Default)]
pub(crate) struct WalletItem {
    pub exists: bool,
    pub wallet: Wallet,
    pub holds: Vec<Session>,
}

pub(crate) fn wallet_from_item(item: Option<&Item>) -> Result<WalletItem, StoreError> {
    let Some(item) = item else {
        return Ok(WalletItem::default());
    };
    let holds = match opt_m(item, "holds")? {
        None => Vec::new(),
        Some(map) => map
            .values()
            .map(|v| match v {
                AttributeValue::M(m) => session_from_item(m),
                _ => Err(corrupt("wallet", "holds")),
            })
            .collect::<Result<_, _>>()?,
    };
    Ok(WalletItem {
        exists: true,
        wallet: Wallet {
            available: amount(item, "available")?,
            held: amount(item, "held")?,
            spent: amount(item, "spent")?,
            refunded: opt_amount(item, "refunded")?,
        },
        holds,
    })
}

/// The change from `before` to `after` (both computed by the core's wallet rules), per balance.
pub(crate) fn wallet_delta(before: Wallet, after: Wallet) -> [i64; 3] {
    [
        after.available.minor() - before.available.minor(),
        after.held.minor() - before.held.minor(),
        after.spent.minor() - before.spent.minor(),
    ]
}

// ---------------------------------------------------------------------------------------------
// Ledger
// ---------------------------------------------------------------------------------------------

pub(crate) fn ledger_item(
    entry: &LedgerEntry,
    at: u64,
    session: Option<SessionId>,
    topup_id: &str,
) -> Item {
    let mut item = ledger_key(entry, session, topup_id);
    item.extend([
        ("type".to_string(), s("LEDGER")),
        ("kind".to_string(), s(entry.kind.as_str())),
        ("debit".to_string(), s(entry.debit.key())),
        ("credit".to_string(), s(entry.credit.key())),
        ("amount".to_string(), n(entry.amount.minor())),
        ("at".to_string(), n(at)),
    ]);
    if let Some(sid) = session {
        item.insert("session".into(), s(sid.to_string()));
    }
    // The back office's indexes (ops/lists.rs): the user it touches, and refunds by time.
    if let Some(user) = [&entry.debit, &entry.credit]
        .into_iter()
        .find_map(|a| match a {
            LedgerAccount::UserAvailable(u) | LedgerAccount::UserHeld(u) => Some(u),
            LedgerAccount::Funding | LedgerAccount::Revenue | LedgerAccount::Clearing(_) => None,
        })
    {
        item.insert(crate::ops::L_USER.into(), s(user.as_str()));
    }
    if entry.kind == EntryKind::Refund {
        item.insert(crate::ops::L_REFUND.into(), s(entry.kind.as_str()));
    }
    item
}

/// A ledger item naming the principal who made it (`actor`: an operator's top-up, refund or
/// hand close).
pub(crate) fn with_actor(mut item: Item, actor: &str) -> Item {
    item.insert("actor".into(), s(actor));
    item
}

/// A refund's ledger row: one per (session, idempotency key), so it is also the key's record
/// (its `amount` is the fingerprint, `decide/refund.rs`).
pub(crate) fn refund_ledger_key(session: SessionId, k: &IdempotencyKey) -> Item {
    key(format!("LEDGER#{session}#REFUND#{k}"), "ENTRY")
}

// ---------------------------------------------------------------------------------------------
// Writes
// ---------------------------------------------------------------------------------------------

/// An update expression assembled from parts, so that one item's changes from several rules (the
/// sequence number, a lock release, an expiry) merge into one action of a transaction.
#[derive(Debug, Default, Clone)]
pub(crate) struct Upd {
    key: Item,
    sets: Vec<String>,
    removes: Vec<String>,
    /// `DELETE` clauses (elements out of a set).
    deletes: Vec<String>,
    /// `ADD` clauses (elements into a set, or a number added).
    adds: Vec<String>,
    conds: Vec<String>,
    names: HashMap<String, String>,
    values: Item,
}

impl Upd {
    pub fn new(key: Item) -> Self {
        Self {
            key,
            ..Self::default()
        }
    }
    pub fn set(mut self, expr: impl Into<String>) -> Self {
        self.sets.push(expr.into());
        self
    }
    pub fn remove(mut self, expr: impl Into<String>) -> Self {
        self.removes.push(expr.into());
        self
    }
    pub fn add(mut self, expr: impl Into<String>) -> Self {
        self.adds.push(expr.into());
        self
    }
    pub fn delete(mut self, expr: impl Into<String>) -> Self {
        self.deletes.push(expr.into());
        self
    }
    pub fn cond(mut self, expr: impl Into<String>) -> Self {
        self.conds.push(format!("({})", expr.into()));
        self
    }
    pub fn name(mut self, k: &str, v: impl Into<String>) -> Self {
        self.names.insert(k.into(), v.into());
        self
    }
    pub fn val(mut self, k: &str, v: AttributeValue) -> Self {
        self.values.insert(k.into(), v);
        self
    }

    /// Add `other`'s changes and conditions to this update (keeping this one's key).
    pub fn merge(mut self, other: Upd) -> Self {
        self.sets.extend(other.sets);
        self.removes.extend(other.removes);
        self.adds.extend(other.adds);
        self.deletes.extend(other.deletes);
        self.conds.extend(other.conds);
        self.names.extend(other.names);
        self.values.extend(other.values);
        self
    }

    fn expression(&self) -> String {
        let mut out = String::new();
        if !self.sets.is_empty() {
            out.push_str("SET ");
            out.push_str(&self.sets.join(", "));
        }
        if !self.removes.is_empty() {
            out.push_str(" REMOVE ");
            out.push_str(&self.removes.join(", "));
        }
        if !self.adds.is_empty() {
            out.push_str(" ADD ");
            out.push_str(&self.adds.join(", "));
        }
        if !self.deletes.is_empty() {
            out.push_str(" DELETE ");
            out.push_str(&self.deletes.join(", "));
        }
        out
    }

    fn condition(&self) -> Option<String> {
        (!self.conds.is_empty()).then(|| self.conds.join(" AND "))
    }

    pub fn into_transact(self, table: &str) -> Result<TransactWriteItem, StoreError> {
        let update = Update::builder()
            .table_name(table)
            .set_key(Some(self.key.clone()))
            .update_expression(self.expression())
            .set_condition_expression(self.condition())
            .set_expression_attribute_names((!self.names.is_empty()).then(|| self.names.clone()))
            .set_expression_attribute_values((!self.values.is_empty()).then(|| self.values.clone()))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .build()
            .map_err(build_error)?;
        Ok(TransactWriteItem::builder().update(update).build())
    }

    /// Send as a single `UpdateItem`.
    pub async fn send(self, client: &aws_sdk_dynamodb::Client, table: &str) -> Result<(), Failure> {
        let result = client
            .update_item()
            .table_name(table)
            .set_key(Some(self.key.clone()))
            .update_expression(self.expression())
            .set_condition_expression(self.condition())
            .set_expression_attribute_names((!self.names.is_empty()).then_some(self.names))
            .set_expression_attribute_values((!self.values.is_empty()).then_some(self.values))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => {
                Err(Failure::Condition)
            }
            Err(e) => Err(sdk_error(&e)),
        }
    }
}

/// A conditional `Put` (the item must not exist yet) as a transaction action.
pub(crate) fn put_new(table: &str, item: Item) -> Result<TransactWriteItem, StoreError> {
    let put = Put::builder()
        .table_name(table)
        .set_item(Some(item))
        .condition_expression("attribute_not_exists(pk)")
        .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
        .build()
        .map_err(build_error)?;
    Ok(TransactWriteItem::builder().put(put).build())
}

#[allow(clippy::needless_pass_by_value, reason = "shaped for `map_err`")]
pub(crate) fn build_error(e: aws_sdk_dynamodb::error::BuildError) -> StoreError {
    StoreError::Internal(format!("cannot build a DynamoDB request: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why one attempt of an operation did not complete.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Lost a race (a transaction conflict, or an item changed since it was read): re-run the
    /// whole operation.
    Contention(String),
    /// A single-item write's condition failed (the caller decides what it means).
    Condition,
    /// The SDK gave up after its own retries (throttling, 5xx, network): may be re-run a little.
    Unavailable(String),
    /// Not retryable.
    Fatal(StoreError),
}

impl Failure {
    pub fn into_store(self) -> StoreError {
        match self {
            Self::Contention(m) | Self::Unavailable(m) => StoreError::Unavailable(m),
            Self::Condition => StoreError::Unavailable("a condition kept failing".into()),
            Self::Fatal(e) => e,
        }
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Self::Fatal(e)
    }
}

/// Error codes that mean "try again later".
const TRANSIENT_CODES: &[&str] = &[
    "ThrottlingException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "InternalServerError",
    "ServiceUnavailable",
    "TransactionInProgressException",
    "TransactionConflictException",
    "LimitExceededException",
];

/// Classify an SDK error that is not a transaction cancellation.
pub(crate) fn sdk_error<E, R>(e: &SdkError<E, R>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let message = format!("{}", aws_sdk_dynamodb::error::DisplayErrorContext(e));
    match e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            Failure::Unavailable(message)
        }
        SdkError::ServiceError(ctx) => {
            let code = ctx.err().code().unwrap_or("");
            if TRANSIENT_CODES.contains(&code) {
                Failure::Unavailable(message)
            } else {
                Failure::Fatal(StoreError::Internal(message))
            }
        }
        _ => {
            // Raw 5xx responses that did not parse as a modeled error end up here too.
            if e.code().is_some_and(|c| TRANSIENT_CODES.contains(&c)) {
                Failure::Unavailable(message)
            } else {
                Failure::Fatal(StoreError::Internal(message))
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn machine() -> DeviceRecord {
        DeviceRecord {
            id: DeviceId::from_bytes([0xd0, 0, 0, 0, 0, 0, 0, 1]),
            name: DeviceName::parse("Water").unwrap(),
            tariff: Tariff {
                price_per_unit: Amount::new(25).unwrap(),
                unit_name: UnitName::parse("litre").unwrap(),
                currency: Currency::parse("EUR").unwrap(),
            },
            key_version: KeyVersion::new(0).unwrap(),
            created_at: 0,
            service_state: ServiceState::InService,
            keys: DeviceKeys::default(),
        }
    }

    #[test]
    fn an_answer_saved_without_a_code_reads_back_as_not_a_refusal() {
        let mut item = device_item(&machine());
        item.insert("last_seq".into(), n(7));
        item.insert("last_response".into(), b(b"old answer"));

        let device = device_from_item(&item).unwrap();

        assert_eq!(
            device.last_answer,
            Some(SavedAnswer {
                frame: b"old answer".to_vec(),
                code: None,
            })
        );
    }

    #[test]
    fn an_answer_saved_with_a_code_reads_back_with_it() {
        let mut item = device_item(&machine());
        item.insert("last_seq".into(), n(7));
        item.insert("last_response".into(), b(b"refusal"));
        item.insert("last_code".into(), s("SESSION_NOT_FOUND"));

        let answer = device_from_item(&item).unwrap().last_answer.unwrap();

        assert_eq!(answer.code.as_deref(), Some("SESSION_NOT_FOUND"));
    }
}
