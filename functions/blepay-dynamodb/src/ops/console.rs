//! The operator console's items (docs/dynamodb.md "The operator console"):
//!
//! - a console session is `pk = CONSOLE#<SHA-256 of the cookie secret, hex>`, `sk = CONSOLE`,
//!   with `ttl` = its expiry + [`CONSOLE_SESSION_GRACE_SECS`]; created by one conditional
//!   `PutItem`, ended by one conditional `UpdateItem`, read by one consistent `GetItem`;
//! - a telemetry sample is `pk = DEV#<device>`, `sk = TELEMETRY#<at, 20 digits>#<seq, 10 digits>`
//!   (in the device's partition, next to its `DEVICE` item), with `ttl` = `at` +
//!   [`TELEMETRY_HISTORY_SECS`]; put by one `PutItem` right after the heartbeat's own write
//!   (`device_call.rs`), read by one backwards `Query` of the sort key range.

use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use blepay_core::{DeviceId, Telemetry};
use blepay_store::{
    CONSOLE_SESSION_GRACE_SECS, ConsoleSession, StoreError, TELEMETRY_HISTORY_SECS, TelemetrySample,
};

use crate::DynamoStore;
use crate::items::{
    self, Failure, Item, TTL, Upd, b, corrupt, device_pk, get_n, get_s, key, n, opt_b, opt_m,
    opt_n, s, telemetry_attr, telemetry_from_item,
};

const CONSOLE_SK: &str = "CONSOLE";
const SAMPLE_PREFIX: &str = "TELEMETRY#";

fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for x in bytes {
        out.push(char::from(HEX[usize::from(x >> 4)]));
        out.push(char::from(HEX[usize::from(x & 0x0f)]));
    }
    out
}

fn console_key(id_hash: &[u8; 32]) -> Item {
    key(format!("CONSOLE#{}", hex(id_hash)), CONSOLE_SK)
}

fn console_item(x: &ConsoleSession) -> Item {
    let mut item = console_key(&x.id_hash);
    item.extend([
        ("type".to_owned(), s("CONSOLE_SESSION")),
        ("id_hash".to_owned(), b(&x.id_hash)),
        ("operator".to_owned(), s(&x.operator)),
        ("role".to_owned(), s(&x.role)),
        // Not `created_at`: with `type` it would put the item in the `sessions_by_time` GSI.
        ("signed_in_at".to_owned(), n(x.created_at)),
        ("expires_at".to_owned(), n(x.expires_at)),
        (
            TTL.to_owned(),
            n(x.expires_at.saturating_add(CONSOLE_SESSION_GRACE_SECS)),
        ),
    ]);
    if let Some(at) = x.ended_at {
        item.insert("ended_at".to_owned(), n(at));
    }
    item
}

fn console_from_item(item: &Item) -> Result<ConsoleSession, StoreError> {
    let hash = opt_b(item, "id_hash")?.ok_or_else(|| corrupt("console session", "id_hash"))?;
    Ok(ConsoleSession {
        id_hash: <[u8; 32]>::try_from(hash).map_err(|_| corrupt("console session", "id_hash"))?,
        operator: get_s(item, "operator")?.to_owned(),
        role: get_s(item, "role")?.to_owned(),
        created_at: get_n(item, "signed_in_at")?,
        expires_at: get_n(item, "expires_at")?,
        ended_at: opt_n(item, "ended_at")?,
    })
}

fn sample_sk(at: u64, seq: u32) -> String {
    format!("{SAMPLE_PREFIX}{at:020}#{seq:010}")
}

/// A heartbeat's sample item (`seq` makes its key unique within a second).
pub(crate) fn sample_item(device: DeviceId, seq: u32, at: u64, t: &Telemetry) -> Item {
    let mut item = key(device_pk(device), &sample_sk(at, seq));
    item.extend([
        ("type".to_owned(), s("TELEMETRY_SAMPLE")),
        ("at".to_owned(), n(at)),
        ("telemetry".to_owned(), telemetry_attr(t)),
        (TTL.to_owned(), n(at.saturating_add(TELEMETRY_HISTORY_SECS))),
    ]);
    item
}

fn sample_from_item(item: &Item) -> Result<TelemetrySample, StoreError> {
    let t = opt_m(item, "telemetry")?.ok_or_else(|| corrupt("telemetry sample", "telemetry"))?;
    Ok(TelemetrySample {
        at: get_n(item, "at")?,
        telemetry: telemetry_from_item(t)?,
    })
}

impl DynamoStore {
    /// Keep a heartbeat's sample: one unconditional `PutItem` after the heartbeat's write
    /// succeeded (the same sequence number always writes the same key, so a re-run overwrites
    /// it with the same values). A failure is logged, not returned: the heartbeat has been
    /// answered and saved, and its retry runs nothing, so that chart point is lost.
    pub(super) async fn put_sample(&self, device: DeviceId, seq: u32, at: u64, t: &Telemetry) {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(sample_item(device, seq, at, t)))
            .send()
            .await;
        if let Err(e) = result {
            tracing::warn!(
                device = %device,
                seq,
                at,
                code = e.code().unwrap_or("?"),
                "could not keep the heartbeat's telemetry sample"
            );
        }
    }

    pub(super) async fn create_console_session_once(
        &self,
        x: &ConsoleSession,
    ) -> Result<bool, Failure> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(console_item(x)))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => {
                // Ours, when an earlier attempt's put landed but its answer was lost.
                Ok(self.console_session_once(&x.id_hash).await?.as_ref() == Some(x))
            }
            Err(e) => Err(items::sdk_error(&e)),
        }
    }

    pub(super) async fn console_session_once(
        &self,
        id_hash: &[u8; 32],
    ) -> Result<Option<ConsoleSession>, Failure> {
        match self.get(console_key(id_hash)).await? {
            Some(item) => Ok(Some(console_from_item(&item)?)),
            None => Ok(None),
        }
    }

    pub(super) async fn end_console_session_once(
        &self,
        id_hash: &[u8; 32],
        now: u64,
    ) -> Result<bool, Failure> {
        let upd = Upd::new(console_key(id_hash))
            .set("ended_at = :now")
            .val(":now", n(now))
            .cond("attribute_exists(pk) AND attribute_not_exists(ended_at)");
        match upd.send(&self.client, &self.table).await {
            Ok(()) => Ok(true),
            // Unknown, or ended already: nothing changes.
            Err(Failure::Condition) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub(super) async fn telemetry_history_once(
        &self,
        device: DeviceId,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<TelemetrySample>, Failure> {
        let Some(last) = to.checked_sub(1).filter(|l| *l >= from) else {
            return Ok(Vec::new());
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let lo = format!("{SAMPLE_PREFIX}{from:020}");
        // `~` sorts after every digit: every sequence number of second `last`.
        let hi = format!("{SAMPLE_PREFIX}{last:020}#~");
        let page = i32::try_from(limit.min(1000)).unwrap_or(1000);
        let mut found = Vec::new();
        let mut start: Option<Item> = None;
        // Newest first, until `limit` or the range's start.
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND sk BETWEEN :lo AND :hi")
                .expression_attribute_values(":pk", s(device_pk(device)))
                .expression_attribute_values(":lo", s(lo.clone()))
                .expression_attribute_values(":hi", s(hi.clone()))
                .scan_index_forward(false)
                .consistent_read(true)
                .limit(page)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| items::sdk_error(&e))?;
            for item in out.items() {
                if found.len() == limit {
                    break;
                }
                found.push(sample_from_item(item)?);
            }
            if found.len() == limit {
                break;
            }
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        found.reverse();
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_keys_sort_by_time_then_sequence_number() {
        let keys = [
            sample_sk(9, 4_000_000_000),
            sample_sk(10, 1),
            sample_sk(10, 2),
            sample_sk(u64::MAX, 0),
        ];
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(sorted, keys);
        assert!(format!("{SAMPLE_PREFIX}{:020}#~", 10) > sample_sk(10, u32::MAX));
    }

    /// DynamoDB's item size (docs: attribute names plus values; a number is about one byte per
    /// two digits plus one; a map or list 3 bytes plus 1 per element).
    fn size(v: &aws_sdk_dynamodb::types::AttributeValue) -> usize {
        use aws_sdk_dynamodb::types::AttributeValue as A;
        match v {
            A::S(x) => x.len(),
            A::N(x) => x.len().div_ceil(2) + 1,
            A::B(x) => x.as_ref().len(),
            A::M(m) => 3 + m.iter().map(|(k, v)| k.len() + size(v) + 1).sum::<usize>(),
            A::L(l) => 3 + l.iter().map(|v| size(v) + 1).sum::<usize>(),
            _ => 1,
        }
    }

    #[test]
    fn the_largest_telemetry_sample_is_one_write_unit() {
        let t = Telemetry {
            firmware_version: "x".repeat(blepay_core::telemetry::MAX_FIRMWARE_VERSION_LEN),
            fault_codes: vec![u32::MAX; blepay_core::telemetry::MAX_FAULT_CODES],
            signal_quality: 99,
            uptime_secs: u64::MAX,
            boot_count: u32::MAX,
            outbox_depth: u32::MAX,
            lifetime_units: u64::MAX,
        };
        let item = sample_item(DeviceId::from_bytes([0xff; 8]), u32::MAX, u64::MAX / 2, &t);
        let bytes: usize = item.iter().map(|(k, v)| k.len() + size(v)).sum();
        // About 310 bytes (a typical one about 200): one write unit (1 KB).
        assert!((250..400).contains(&bytes), "{bytes} bytes");
    }

    #[test]
    fn a_console_session_round_trips_through_its_item() {
        let x = ConsoleSession {
            id_hash: [0xab; 32],
            operator: "bootstrap".into(),
            role: "owner".into(),
            created_at: 10,
            expires_at: 20,
            ended_at: Some(15),
        };
        assert_eq!(console_from_item(&console_item(&x)).ok(), Some(x));
    }
}
