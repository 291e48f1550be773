//! Revoking and rotating a device's key (docs/protocol.md §1.1): what each answers and changes.
//!
//! - Revoke: the device refuses every advert and frame from then on (as forged), and its open
//!   session is closed in the same operation ([`Session::close_for_revocation`]): AUTHORIZED is
//!   voided, ACTIVE settled at its last reported units — nothing under the old key can capture
//!   more. Revoking a revoked device answers it and changes nothing.
//! - Rotate: a new epoch becomes *pending*; adverts and frames under either key are accepted
//!   until the first frame under the new one ([`rotation_completes`]), after which the old key is
//!   refused for good. The same idempotency key as the last rotation, or any rotation while one
//!   is pending, answers that rotation and changes nothing (a machine can only be on its way to
//!   one new key). A revoked device is never re-keyed.

use blepay_core::{IdempotencyKey, KeyEpoch, Session, Settlement};

use crate::{
    DeviceCall, DeviceKeys, DeviceRecord, KeyUse, Revocation, RevokeOutcome, RotateOutcome,
};

/// What a revoke does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeDecision {
    /// Answer without writing.
    Answer(RevokeOutcome),
    /// Write the device's new key state (revoked) and, if it had one, its closed session with
    /// the settlement to apply, then answer `Revoked`.
    Revoke {
        device: DeviceRecord,
        closed: Option<Box<(Session, Settlement)>>,
    },
}

/// Decide a revoke from the device record and its open (AUTHORIZED or ACTIVE) session.
pub fn decide_revoke(
    device: Option<&DeviceRecord>,
    open: Option<&Session>,
    reason: &str,
    now: u64,
) -> RevokeDecision {
    let Some(device) = device else {
        return RevokeDecision::Answer(RevokeOutcome::DeviceUnknown);
    };
    if device.keys.revoked.is_some() {
        return RevokeDecision::Answer(RevokeOutcome::AlreadyRevoked(device.clone()));
    }
    let mut revoked = device.clone();
    revoked.keys.revoked = Some(Revocation {
        at: now,
        reason: reason.to_owned(),
    });
    let closed = open.and_then(|s| {
        let mut s = s.clone();
        s.close_for_revocation(now)
            .map(|settlement| Box::new((s, settlement)))
    });
    RevokeDecision::Revoke {
        device: revoked,
        closed,
    }
}

/// What a rotation does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotateDecision {
    Answer(RotateOutcome),
    /// Write `keys` (the new pending epoch and the rotation's key) and answer `Issued`.
    Issue(DeviceRecord),
}

/// Decide a key rotation with idempotency key `key`.
pub fn decide_rotate(device: Option<&DeviceRecord>, key: &IdempotencyKey) -> RotateDecision {
    let Some(device) = device else {
        return RotateDecision::Answer(RotateOutcome::DeviceUnknown);
    };
    let keys = &device.keys;
    if keys.revoked.is_some() {
        return RotateDecision::Answer(RotateOutcome::Revoked(device.clone()));
    }
    if keys.pending.is_some() || keys.last_rotation.as_ref().is_some_and(|(k, _)| k == key) {
        return RotateDecision::Answer(RotateOutcome::Existing(device.clone()));
    }
    let Some(next) = keys.epoch.next() else {
        return RotateDecision::Answer(RotateOutcome::Exhausted);
    };
    let mut rotated = device.clone();
    rotated.keys = DeviceKeys {
        epoch: keys.epoch,
        pending: Some(next),
        last_rotation: Some((key.clone(), next)),
        revoked: None,
    };
    RotateDecision::Issue(rotated)
}

/// The epoch a rotation answer names: the pending one, else the last rotation's (now current).
pub fn rotation_epoch(keys: &DeviceKeys) -> KeyEpoch {
    keys.pending
        .or_else(|| keys.last_rotation.as_ref().map(|(_, e)| *e))
        .unwrap_or(keys.epoch)
}

/// True when `call` (already accepted by [`crate::decide::check_call`]) is the first frame
/// under the pending key: the store makes the pending epoch current in the same write.
pub fn rotation_completes(device: &DeviceRecord, call: &DeviceCall) -> bool {
    device.keys.key_use(call.key_epoch) == KeyUse::Pending
}

/// The key state after `call` completed a rotation.
pub fn completed(keys: &DeviceKeys) -> DeviceKeys {
    DeviceKeys {
        epoch: keys.pending.unwrap_or(keys.epoch),
        pending: None,
        last_rotation: keys.last_rotation.clone(),
        revoked: keys.revoked.clone(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use blepay_core::{
        Amount, Currency, DeviceId, DeviceName, KeyVersion, SessionId, Tariff, UnitName, UserId,
    };

    use super::*;

    fn device() -> DeviceRecord {
        DeviceRecord {
            id: DeviceId::from_bytes([1; 8]),
            name: DeviceName::parse("m").unwrap(),
            tariff: Tariff {
                price_per_unit: Amount::positive(25).unwrap(),
                unit_name: UnitName::parse("l").unwrap(),
                currency: Currency::parse("EUR").unwrap(),
            },
            key_version: KeyVersion::new(0).unwrap(),
            created_at: 1,
            keys: DeviceKeys::default(),
            service_state: crate::ServiceState::InService,
        }
    }

    fn key(s: &str) -> IdempotencyKey {
        IdempotencyKey::parse(s).unwrap()
    }

    #[test]
    fn revoking_closes_the_open_session_and_a_second_revoke_changes_nothing() {
        let d = device();
        let mut s = Session::authorize(
            SessionId::from_bytes([2; 16]),
            d.id,
            UserId::parse("u").unwrap(),
            Amount::positive(100).unwrap(),
            d.tariff.clone(),
            blepay_core::UseCounter::new(0),
            10,
            60,
        );
        let RevokeDecision::Revoke { device: r, closed } =
            decide_revoke(Some(&d), Some(&s), "x", 20)
        else {
            panic!("not revoked")
        };
        let (closed, settlement) = *closed.unwrap();
        assert_eq!(closed.status, blepay_core::SessionStatus::Expired);
        assert_eq!(settlement.capture, Amount::ZERO);
        assert_eq!(r.keys.key_use(KeyEpoch::FIRST), KeyUse::Refused);
        assert_eq!(r.keys.accepted().count(), 0);
        assert_eq!(
            decide_revoke(Some(&r), None, "again", 30),
            RevokeDecision::Answer(RevokeOutcome::AlreadyRevoked(r.clone()))
        );
        s.start(15).unwrap();
        let RevokeDecision::Revoke { closed, .. } = decide_revoke(Some(&d), Some(&s), "x", 20)
        else {
            panic!("not revoked")
        };
        assert_eq!(
            closed.unwrap().0.status,
            blepay_core::SessionStatus::Settled
        );
        assert_eq!(
            decide_revoke(None, None, "x", 1),
            RevokeDecision::Answer(RevokeOutcome::DeviceUnknown)
        );
    }

    #[test]
    fn a_rotation_is_pending_until_its_first_frame_and_is_answered_again_meanwhile() {
        let d = device();
        let RotateDecision::Issue(r) = decide_rotate(Some(&d), &key("k1")) else {
            panic!("not issued")
        };
        assert_eq!(r.keys.pending, Some(KeyEpoch::new(1)));
        assert_eq!(r.keys.key_use(KeyEpoch::FIRST), KeyUse::Current);
        assert_eq!(r.keys.key_use(KeyEpoch::new(1)), KeyUse::Pending);
        assert_eq!(rotation_epoch(&r.keys), KeyEpoch::new(1));
        // Pending: any rotation answers the pending one.
        assert_eq!(
            decide_rotate(Some(&r), &key("k2")),
            RotateDecision::Answer(RotateOutcome::Existing(r.clone()))
        );
        let mut done = r.clone();
        done.keys = completed(&r.keys);
        assert_eq!(done.keys.epoch, KeyEpoch::new(1));
        assert_eq!(done.keys.key_use(KeyEpoch::FIRST), KeyUse::Refused);
        assert_eq!(rotation_epoch(&done.keys), KeyEpoch::new(1));
        // The same key after completion: still that rotation.
        assert_eq!(
            decide_rotate(Some(&done), &key("k1")),
            RotateDecision::Answer(RotateOutcome::Existing(done.clone()))
        );
        let RotateDecision::Issue(again) = decide_rotate(Some(&done), &key("k2")) else {
            panic!("not issued")
        };
        assert_eq!(again.keys.pending, Some(KeyEpoch::new(2)));
    }

    #[test]
    fn a_revoked_device_is_never_rekeyed_and_the_last_epoch_is_exhausted() {
        let mut d = device();
        d.keys.revoked = Some(Revocation {
            at: 1,
            reason: "r".into(),
        });
        assert!(matches!(
            decide_rotate(Some(&d), &key("k")),
            RotateDecision::Answer(RotateOutcome::Revoked(_))
        ));
        let mut full = device();
        full.keys.epoch = KeyEpoch::new(u32::MAX);
        assert_eq!(
            decide_rotate(Some(&full), &key("k")),
            RotateDecision::Answer(RotateOutcome::Exhausted)
        );
    }
}
