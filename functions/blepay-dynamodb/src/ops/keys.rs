//! Revoking and rotating a device's key (`blepay_store::decide::decide_revoke` /
//! `decide_rotate`): one read of the device item (and of its open session's item), then one
//! conditional write conditioned on the key state read (`keys_cond`) and on the open session.
//!
//! The device shadow (`shadow.rs`) may still hold the item as it was before a revoke in another
//! process; that is safe because every write a machine request or a pay makes to the device
//! item is conditioned on the key state it was decided from (`attribute_not_exists(revoked_at)`,
//! the epoch, the pending rotation): a stale guess is a failed condition, a re-read and the
//! refusal.

use blepay_core::{DeviceId, IdempotencyKey};
use blepay_store::decide::{RevokeDecision, RotateDecision, decide_revoke, decide_rotate};
use blepay_store::{RevokeOutcome, RotateOutcome, StoreError};

use super::attempts::Tx;
use crate::DynamoStore;
use crate::items::{
    Failure, Upd, device_from_item, device_key, keys_cond, n, s, session_from_item, session_key,
};

impl DynamoStore {
    pub(super) async fn revoke_once(
        &self,
        id: DeviceId,
        reason: &str,
        now: u64,
    ) -> Result<RevokeOutcome, Failure> {
        let Some(item) = self.get(device_key(id)).await? else {
            self.shadow.forget(id);
            return Ok(RevokeOutcome::DeviceUnknown);
        };
        let device = device_from_item(&item)?;
        self.shadow.put(device.clone());
        // The session item itself: an ACTIVE session's units are on it, not on the snapshot.
        let open = match &device.open {
            Some(o) => self
                .get(session_key(o.id))
                .await?
                .map(|i| session_from_item(&i))
                .transpose()?,
            None => None,
        };
        let (revoked, closed) =
            match decide_revoke(Some(&device.record), open.as_ref(), reason, now) {
                RevokeDecision::Answer(outcome) => return Ok(outcome),
                RevokeDecision::Revoke { device, closed } => (device, closed),
            };
        let mut writes = Vec::new();
        let mut upd = keys_cond(Upd::new(device_key(id)), &device.record.keys)
            .set("revoked_at = :revoked_at, revoked_reason = :revoked_reason")
            .val(":revoked_at", n(now))
            .val(":revoked_reason", s(reason));
        upd = match closed.as_deref() {
            Some((session, settlement)) => {
                upd.merge(self.close_writes(session, *settlement, now, &mut writes)?)
            }
            None => upd
                .cond("attribute_not_exists(#open)")
                .name("#open", "open"),
        };
        writes.push(upd.into_transact(&self.table)?);
        match self.transact(writes).await? {
            Tx::Done => {
                self.shadow.forget(id);
                Ok(RevokeOutcome::Revoked {
                    device: revoked,
                    closed: closed.map(|c| Box::new(c.0)),
                })
            }
            Tx::Cancelled(_) => Err(Failure::Contention(
                "the device changed since it was read".into(),
            )),
        }
    }

    pub(super) async fn device_record_once(
        &self,
        id: DeviceId,
    ) -> Result<Option<blepay_store::DeviceRecord>, Failure> {
        let Some(item) = self.get(device_key(id)).await? else {
            self.shadow.forget(id);
            return Ok(None);
        };
        let device = device_from_item(&item)?;
        self.shadow.put(device.clone());
        Ok(Some(device.record))
    }

    pub(super) async fn rotate_once(
        &self,
        id: DeviceId,
        key: &IdempotencyKey,
    ) -> Result<RotateOutcome, Failure> {
        let Some(item) = self.get(device_key(id)).await? else {
            return Ok(RotateOutcome::DeviceUnknown);
        };
        let device = device_from_item(&item)?;
        let rotated = match decide_rotate(Some(&device.record), key) {
            RotateDecision::Answer(outcome) => return Ok(outcome),
            RotateDecision::Issue(rotated) => rotated,
        };
        let pending = rotated.keys.pending.ok_or_else(|| {
            StoreError::Internal("a rotation decision without a pending epoch".into())
        })?;
        let upd = keys_cond(Upd::new(device_key(id)), &device.record.keys)
            .set(
                "key_pending = :pending, key_rotation_key = :rotation_key, \
                 key_rotation_epoch = :pending",
            )
            .val(":pending", n(pending.get()))
            .val(":rotation_key", s(key.to_string()));
        match self.transact(vec![upd.into_transact(&self.table)?]).await? {
            Tx::Done => {
                self.shadow.forget(id);
                Ok(RotateOutcome::Issued(rotated))
            }
            Tx::Cancelled(_) => Err(Failure::Contention(
                "the device changed since it was read".into(),
            )),
        }
    }
}
