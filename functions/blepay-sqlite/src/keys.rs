//! A device's key state (epoch, pending rotation, revocation: `blepay_store::DeviceKeys`) and
//! the revoke and rotate operations, each inside the caller's transaction.

use blepay_core::{DeviceId, IdempotencyKey, KeyEpoch};
use blepay_store::decide::{RevokeDecision, RotateDecision, decide_revoke, decide_rotate};
use blepay_store::{DeviceKeys, Revocation, RevokeOutcome, RotateOutcome, StoreError};
use rusqlite::{Connection, OptionalExtension, params};

use crate::convert::{Cached, db, parse_col, ts};
use crate::ops::{Due, close_hold, expire_sessions};
use crate::rows::{load_device, load_open_session, save_session_state};

/// The key columns of a device row (migration 5; a row from before reads as epoch 0).
pub(crate) fn load_keys(c: &Connection, id: DeviceId) -> Result<Option<DeviceKeys>, StoreError> {
    c.row_cached(
        "SELECT key_epoch, key_pending, key_rotation_key, key_rotation_epoch, revoked_at,
                revoked_reason
         FROM devices WHERE id = ?1",
        [id.as_bytes()],
        |r| {
            let rotation_key: Option<String> = r.get(2)?;
            let rotation_epoch: Option<u32> = r.get(3)?;
            let revoked_at: Option<u64> = r.get(4)?;
            Ok(DeviceKeys {
                epoch: KeyEpoch::new(r.get(0)?),
                pending: r.get::<_, Option<u32>>(1)?.map(KeyEpoch::new),
                last_rotation: match (rotation_key, rotation_epoch) {
                    (Some(_), Some(e)) => Some((
                        parse_col(r, 2, |s: String| IdempotencyKey::parse(&s))?,
                        KeyEpoch::new(e),
                    )),
                    _ => None,
                },
                revoked: match revoked_at {
                    Some(at) => Some(Revocation {
                        at,
                        reason: r.get::<_, Option<String>>(5)?.unwrap_or_default(),
                    }),
                    None => None,
                },
            })
        },
    )
    .optional()
    .map_err(db)
}

/// Write a device's key state.
pub(crate) fn save_keys(c: &Connection, id: DeviceId, k: &DeviceKeys) -> Result<(), StoreError> {
    let (rotation_key, rotation_epoch) = match &k.last_rotation {
        Some((key, e)) => (Some(key.to_string()), Some(e.get())),
        None => (None, None),
    };
    let (revoked_at, revoked_reason) = match &k.revoked {
        Some(r) => (Some(ts(r.at)?), Some(r.reason.as_str())),
        None => (None, None),
    };
    c.exec_cached(
        "UPDATE devices SET key_epoch = ?1, key_pending = ?2, key_rotation_key = ?3,
                key_rotation_epoch = ?4, revoked_at = ?5, revoked_reason = ?6
         WHERE id = ?7",
        params![
            k.epoch.get(),
            k.pending.map(KeyEpoch::get),
            rotation_key,
            rotation_epoch,
            revoked_at,
            revoked_reason,
            id.as_bytes()
        ],
    )
    .map_err(db)?;
    Ok(())
}

/// Revoke a device: its key state and the close of its open session, one transaction.
pub(crate) fn revoke(
    c: &Connection,
    id: DeviceId,
    reason: &str,
    now: u64,
) -> Result<RevokeOutcome, StoreError> {
    expire_sessions(c, Due::OfDevice(id), now)?;
    let device = load_device(c, id)?.map(|row| row.record);
    let open = load_open_session(c, id)?;
    match decide_revoke(device.as_ref(), open.as_ref(), reason, now) {
        RevokeDecision::Answer(outcome) => Ok(outcome),
        RevokeDecision::Revoke { device, closed } => {
            save_keys(c, id, &device.keys)?;
            if let Some((session, settlement)) = closed.as_deref() {
                save_session_state(c, session)?;
                close_hold(c, session, *settlement, now)?;
            }
            Ok(RevokeOutcome::Revoked {
                device,
                closed: closed.map(|c| Box::new(c.0)),
            })
        }
    }
}

/// Issue a new key epoch (pending).
pub(crate) fn rotate(
    c: &Connection,
    id: DeviceId,
    key: &IdempotencyKey,
) -> Result<RotateOutcome, StoreError> {
    let device = load_device(c, id)?.map(|row| row.record);
    match decide_rotate(device.as_ref(), key) {
        RotateDecision::Answer(outcome) => Ok(outcome),
        RotateDecision::Issue(device) => {
            save_keys(c, id, &device.keys)?;
            Ok(RotateOutcome::Issued(device))
        }
    }
}
