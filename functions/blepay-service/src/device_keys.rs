//! Revoking and rotating a machine's key (issue 11, item 5; docs/protocol.md §1.1).
//!
//! - `revoke_device`: the machine's adverts (verify/pay: ADVERT_INVALID) and frames
//!   (DEVICE_AUTH_FAILED, the body a forged frame gets) are refused from now on, and its open
//!   session is closed in the same store operation — AUTHORIZED voided (hold released), ACTIVE
//!   settled at its last reported units — so nothing can be captured under the old key.
//!   Revoking a revoked machine answers it. Reusable by other operations (decommissioning):
//!   [`App::revoke`] does the change without the permission check.
//! - `rotate_device_key`: a new key epoch, pending; every answer to a frame under the current
//!   key carries the new key wrapped under it, until the first frame under the new key (then
//!   the old key is refused for good). The new key is also answered, for re-provisioning by hand.

use blepay_core::{DeviceId, IdempotencyKey, KeyEpoch};
use blepay_proto::machine::KeyUpdate;
use blepay_proto::pb::v1 as pb;
use blepay_proto::{DeviceKey, FrameError, RequestFrame, derive_device_key, wrap_device_key};
use blepay_store::decide::rotation_epoch;
use blepay_store::{DeviceKeys, DeviceRecord, RevokeOutcome, RotateOutcome};

use crate::app::{App, device_unknown, frame_not_authentic};
use crate::error::{ApiError, ErrorCode};
use crate::operator::{Action, ActionRecord, Operator};

/// The longest revocation reason kept.
pub const MAX_REASON_CHARS: usize = 200;

/// A revocation's reason: 1 to [`MAX_REASON_CHARS`] characters, not blank, no control
/// characters.
///
/// # Errors
/// INVALID_ARGUMENT.
pub fn parse_reason(s: &str) -> Result<String, ApiError> {
    let t = s.trim();
    if t.is_empty() {
        return Err(ApiError::invalid("reason: must not be empty"));
    }
    if t.chars().count() > MAX_REASON_CHARS {
        return Err(ApiError::invalid(format!(
            "reason: at most {MAX_REASON_CHARS} characters"
        )));
    }
    if t.chars().any(char::is_control) {
        return Err(ApiError::invalid("reason: no control characters"));
    }
    Ok(t.to_owned())
}

/// The key fields of a `pb::Device` (the rest default; merged with `..`).
pub fn key_fields(keys: &DeviceKeys) -> pb::Device {
    pb::Device {
        key_epoch: keys.epoch.get(),
        pending_key_epoch: keys.pending.map_or(0, KeyEpoch::get),
        revoked_at: keys
            .revoked
            .as_ref()
            .map_or(0, |r| i64::try_from(r.at).unwrap_or(i64::MAX)),
        revoked_reason: keys
            .revoked
            .as_ref()
            .map(|r| r.reason.clone())
            .unwrap_or_default(),
        ..Default::default()
    }
}

fn parse_device(id: &str) -> Result<DeviceId, ApiError> {
    DeviceId::parse(id).map_err(|e| ApiError::invalid(format!("deviceId: {e}")))
}

/// The key a machine frame verified under, and the key update its answer carries.
pub(crate) struct FrameKeys {
    pub key_epoch: KeyEpoch,
    pub key: DeviceKey,
    /// The pending epoch the answer delivers (only for a frame under the current key).
    pub key_update: Option<KeyEpoch>,
    /// That epoch's key, wrapped under `key`.
    pub wrapped: Option<KeyUpdate>,
}

impl App {
    /// Check a frame's tag under the keys its device accepts (its epoch, then a pending
    /// rotation's; none once revoked): a revoked device's frame is answered exactly as a forged
    /// one. An unregistered id is checked under epoch 0 (DEVICE_UNKNOWN only when that
    /// verifies). The store checks the epoch again against the record it writes. While a
    /// rotation is pending, the answer to a frame under the current key carries the next key,
    /// wrapped under the current one (docs/protocol.md §1.1).
    ///
    /// # Errors
    /// FRAME_INVALID, DEVICE_AUTH_FAILED, DEVICE_UNKNOWN, RETRY_LATER.
    pub(crate) async fn frame_keys(&self, frame: &RequestFrame<'_>) -> Result<FrameKeys, ApiError> {
        let (version, id) = (frame.key_version(), frame.device_id());
        let master = self
            .config()
            .keyring
            .get(version)
            .ok_or_else(frame_not_authentic)?;
        let verifies = |key: &DeviceKey| match frame.verify(key) {
            Ok(()) => Ok(true),
            Err(FrameError::BadTag) => Ok(false),
            Err(other) => Err(ApiError::new(ErrorCode::FrameInvalid, other.to_string())),
        };
        let Some(device) = self.store().device_record(id).await? else {
            // Unregistered: derived, not cached (key_cache.rs).
            let key = derive_device_key(master, version, id, KeyEpoch::FIRST);
            return Err(if verifies(&key)? {
                device_unknown(id)
            } else {
                frame_not_authentic()
            });
        };
        let keys = &device.keys;
        let accepted: Vec<KeyEpoch> = keys.accepted().collect();
        let mut verified = None;
        for (epoch, key) in self.device_keys(master, version, id, &accepted).iter() {
            if verifies(key)? {
                verified = Some((epoch, key.clone()));
                break;
            }
        }
        let (key_epoch, key) = verified.ok_or_else(frame_not_authentic)?;
        let key_update = keys.pending.filter(|_| key_epoch == keys.epoch);
        let wrapped = key_update.map(|next| KeyUpdate {
            epoch: next,
            wrapped: wrap_device_key(
                &key,
                id,
                next,
                &derive_device_key(master, version, id, next),
            ),
        });
        Ok(FrameKeys {
            key_epoch,
            key,
            key_update,
            wrapped,
        })
    }

    /// `POST /v1/ops/devices/{deviceId}/revoke` (Action::DeviceKeys).
    ///
    /// # Errors
    /// FORBIDDEN, INVALID_ARGUMENT, DEVICE_UNKNOWN, RETRY_LATER.
    pub async fn revoke_device(
        &self,
        op: &Operator,
        req: pb::RevokeDeviceRequest,
    ) -> Result<pb::Device, ApiError> {
        self.authorize(op, &Action::DeviceKeys)?;
        let id = parse_device(&req.device_id)?;
        let reason = parse_reason(&req.reason)?;
        if self.revoke(id, &reason).await? {
            self.record_action(
                op,
                ActionRecord {
                    action: "device.revoke",
                    target: id.to_string(),
                    amount: None,
                    idempotency_key: None,
                },
            )
            .await?;
        }
        self.ops_device(op, &id.to_string()).await
    }

    /// Revoke `id`'s key (no permission check: for operations that include a revocation, such as
    /// decommissioning). `true` when it was revoked now, `false` when it already was.
    ///
    /// # Errors
    /// DEVICE_UNKNOWN, RETRY_LATER.
    pub async fn revoke(&self, id: DeviceId, reason: &str) -> Result<bool, ApiError> {
        let outcome = self.store().revoke_device(id, reason, self.now()).await?;
        self.forget_device_keys(id);
        match outcome {
            RevokeOutcome::Revoked { closed, .. } => {
                tracing::warn!(
                    device = %id,
                    closed_session = closed.as_ref().map(|s| s.id.to_string()),
                    "device key revoked"
                );
                Ok(true)
            }
            RevokeOutcome::AlreadyRevoked(_) => Ok(false),
            RevokeOutcome::DeviceUnknown => Err(device_unknown(id)),
        }
    }

    /// `POST /v1/ops/devices/{deviceId}/rotate-key` (Action::DeviceKeys).
    ///
    /// # Errors
    /// FORBIDDEN, INVALID_ARGUMENT, DEVICE_UNKNOWN, DEVICE_OUT_OF_SERVICE (revoked: never
    /// re-keyed), RETRY_LATER.
    pub async fn rotate_device_key(
        &self,
        op: &Operator,
        req: pb::RotateDeviceKeyRequest,
    ) -> Result<pb::RotateDeviceKeyResponse, ApiError> {
        self.authorize(op, &Action::DeviceKeys)?;
        let id = parse_device(&req.device_id)?;
        let key = IdempotencyKey::parse(&req.idempotency_key)
            .map_err(|e| ApiError::invalid(format!("idempotencyKey: {e}")))?;
        let outcome = self.store().rotate_device_key(id, &key, self.now()).await?;
        self.forget_device_keys(id);
        let device = match outcome {
            RotateOutcome::Issued(d) => {
                self.record_action(
                    op,
                    ActionRecord {
                        action: "device.rotate_key",
                        target: id.to_string(),
                        amount: None,
                        idempotency_key: Some(key.to_string()),
                    },
                )
                .await?;
                d
            }
            RotateOutcome::Existing(d) => d,
            RotateOutcome::Revoked(_) => {
                return Err(ApiError::new(
                    ErrorCode::DeviceOutOfService,
                    format!("device {id} was revoked: its key is never rotated again"),
                ));
            }
            RotateOutcome::Exhausted => {
                return Err(ApiError::new(
                    ErrorCode::DeviceOutOfService,
                    format!("device {id} has used up its key epochs"),
                ));
            }
            RotateOutcome::DeviceUnknown => return Err(device_unknown(id)),
        };
        self.rotation_pb(&device)
    }

    fn rotation_pb(&self, d: &DeviceRecord) -> Result<pb::RotateDeviceKeyResponse, ApiError> {
        let epoch = rotation_epoch(&d.keys);
        let master = self.config().keyring.get(d.key_version).ok_or_else(|| {
            ApiError::new(
                ErrorCode::Internal,
                "the device's key version is not in the keyring",
            )
        })?;
        Ok(pb::RotateDeviceKeyResponse {
            device_id: d.id.to_string(),
            key_version: u32::from(d.key_version.get()),
            key_epoch: epoch.get(),
            device_key: derive_device_key(master, d.key_version, d.id, epoch).expose_hex(),
            pending: d.keys.pending == Some(epoch),
        })
    }
}
