//! The checks of a machine request before it runs: its key version, then its sequence number.
//!
//! Sequence numbers are `u32` and strictly increasing: a request numbered `u32::MAX` is answered
//! (and a byte-identical retry of it answered again), but nothing can follow it — the device is
//! exhausted until it is re-provisioned (docs/protocol.md §3.3).

use crate::{DeviceCall, DeviceRecord, KeyUse, SavedAnswer, StoreError};

/// What the store saved of a machine's last accepted request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastCall {
    pub seq: u32,
    /// The digest of its frame.
    pub digest: Option<Vec<u8>>,
    /// The answer saved with it.
    pub answer: Option<SavedAnswer>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeqCheck {
    /// Newer than the last accepted request: run it.
    Fresh,
    /// The last request again, byte for byte: answer what was saved, run nothing.
    Retry(SavedAnswer),
    /// Not newer than the last accepted one, or its number with other bytes: refuse.
    Replayed { last_seq: u32 },
    /// Tagged under a key version other than the device's registered one: refuse like a forged
    /// frame ([`crate::DeviceCallOutcome::KeyVersionRefused`]); nothing runs or is saved.
    KeyVersionRefused,
}

/// Check an authenticated machine request against its device: the key version its tag verified
/// under must be the one the device is registered with — a frame tagged with a retired master
/// key's derived key is refused, even byte-identical to an earlier one — and its key epoch one
/// the device accepts (not revoked; the current epoch, or a pending rotation's: [`KeyUse`]); a
/// call verified under the current key must expect the device's pending rotation as it is (the
/// answer carries that key update). Then its sequence number ([`check_seq`]).
///
/// # Errors
/// As [`check_seq`].
pub fn check_call(
    device: &DeviceRecord,
    last: Option<LastCall>,
    call: &DeviceCall,
) -> Result<SeqCheck, StoreError> {
    if call.key_version != device.key_version {
        return Ok(SeqCheck::KeyVersionRefused);
    }
    match device.keys.key_use(call.key_epoch) {
        KeyUse::Refused => return Ok(SeqCheck::KeyVersionRefused),
        KeyUse::Current if call.key_update != device.keys.pending => {
            return Ok(SeqCheck::KeyVersionRefused);
        }
        KeyUse::Current | KeyUse::Pending => {}
    }
    check_seq(last, call.seq, &call.digest)
}

/// Check a request numbered `seq` with frame digest `digest` against the machine's last one.
///
/// # Errors
/// [`StoreError::Corrupt`] when the last request is repeated but no answer was saved with it.
pub fn check_seq(
    last: Option<LastCall>,
    seq: u32,
    digest: &[u8; 32],
) -> Result<SeqCheck, StoreError> {
    let Some(last) = last else {
        return Ok(SeqCheck::Fresh);
    };
    if seq == last.seq && last.digest.as_deref() == Some(&digest[..]) {
        return last.answer.map(SeqCheck::Retry).ok_or_else(|| {
            StoreError::Corrupt("a device has a sequence but no saved answer".into())
        });
    }
    if seq <= last.seq {
        return Ok(SeqCheck::Replayed { last_seq: last.seq });
    }
    Ok(SeqCheck::Fresh)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use blepay_core::{KeyEpoch, KeyVersion};

    use super::*;

    fn answer() -> SavedAnswer {
        SavedAnswer {
            frame: b"saved".to_vec(),
            code: None,
        }
    }

    fn last(seq: u32, digest: [u8; 32]) -> LastCall {
        LastCall {
            seq,
            digest: Some(digest.to_vec()),
            answer: Some(answer()),
        }
    }

    #[test]
    fn a_machine_first_request_is_fresh_whatever_its_number() {
        assert_eq!(check_seq(None, 0, &[1; 32]).unwrap(), SeqCheck::Fresh);
    }

    #[test]
    fn a_higher_number_is_fresh() {
        assert_eq!(
            check_seq(Some(last(5, [1; 32])), 6, &[2; 32]).unwrap(),
            SeqCheck::Fresh
        );
    }

    #[test]
    fn the_same_number_and_bytes_is_a_retry_answered_with_the_saved_answer() {
        assert_eq!(
            check_seq(Some(last(5, [1; 32])), 5, &[1; 32]).unwrap(),
            SeqCheck::Retry(answer())
        );
    }

    #[test]
    fn the_same_number_with_other_bytes_or_a_lower_number_is_replayed() {
        let replayed = SeqCheck::Replayed { last_seq: 5 };
        assert_eq!(
            check_seq(Some(last(5, [1; 32])), 5, &[2; 32]).unwrap(),
            replayed
        );
        assert_eq!(
            check_seq(Some(last(5, [1; 32])), 4, &[1; 32]).unwrap(),
            replayed
        );
    }

    fn call(key_version: u8, seq: u32, digest: [u8; 32]) -> DeviceCall {
        DeviceCall {
            device: blepay_core::DeviceId::from_bytes([1; 8]),
            key_version: KeyVersion::new(key_version).unwrap(),
            key_epoch: KeyEpoch::FIRST,
            key_update: None,
            seq,
            digest,
            op: crate::DeviceOp::Poll,
            now: 0,
            active_timeout_secs: 0,
        }
    }

    fn registered(version: u8) -> DeviceRecord {
        DeviceRecord {
            id: blepay_core::DeviceId::from_bytes([1; 8]),
            name: blepay_core::DeviceName::parse("m").unwrap(),
            tariff: blepay_core::Tariff {
                price_per_unit: blepay_core::Amount::positive(1).unwrap(),
                unit_name: blepay_core::UnitName::parse("l").unwrap(),
                currency: blepay_core::Currency::parse("EUR").unwrap(),
            },
            key_version: KeyVersion::new(version).unwrap(),
            created_at: 0,
            keys: crate::DeviceKeys::default(),
            service_state: crate::ServiceState::InService,
        }
    }

    #[test]
    fn a_call_under_a_revoked_or_stale_epoch_is_refused_and_a_pending_one_accepted() {
        let mut d = registered(0);
        let mut c = call(0, 6, [2; 32]);
        d.keys.pending = Some(KeyEpoch::new(1));
        // Verified under the current key but expecting no rotation: refused (stale read).
        assert_eq!(
            check_call(&d, None, &c).unwrap(),
            SeqCheck::KeyVersionRefused
        );
        c.key_update = Some(KeyEpoch::new(1));
        assert_eq!(check_call(&d, None, &c).unwrap(), SeqCheck::Fresh);
        let mut under_new = call(0, 7, [3; 32]);
        under_new.key_epoch = KeyEpoch::new(1);
        assert_eq!(check_call(&d, None, &under_new).unwrap(), SeqCheck::Fresh);
        under_new.key_epoch = KeyEpoch::new(2);
        assert_eq!(
            check_call(&d, None, &under_new).unwrap(),
            SeqCheck::KeyVersionRefused
        );
        d.keys.revoked = Some(crate::Revocation {
            at: 1,
            reason: "r".into(),
        });
        assert_eq!(
            check_call(&d, None, &c).unwrap(),
            SeqCheck::KeyVersionRefused
        );
    }

    #[test]
    fn a_call_under_another_key_version_is_refused_whatever_its_number() {
        let v3 = &registered(3);
        for c in [
            call(0, 6, [2; 32]),
            call(2, 5, [1; 32]),
            call(4, 0, [1; 32]),
        ] {
            assert_eq!(
                check_call(v3, Some(last(5, [1; 32])), &c).unwrap(),
                SeqCheck::KeyVersionRefused
            );
        }
        assert_eq!(
            check_call(v3, None, &call(0, 1, [1; 32])).unwrap(),
            SeqCheck::KeyVersionRefused
        );
        // Under the registered version the sequence number decides.
        assert_eq!(
            check_call(v3, Some(last(5, [1; 32])), &call(3, 6, [2; 32])).unwrap(),
            SeqCheck::Fresh
        );
        assert_eq!(
            check_call(v3, Some(last(5, [1; 32])), &call(3, 5, [1; 32])).unwrap(),
            SeqCheck::Retry(answer())
        );
    }

    #[test]
    fn the_last_number_is_answered_once_and_nothing_follows_it() {
        assert_eq!(
            check_seq(Some(last(5, [1; 32])), u32::MAX, &[2; 32]).unwrap(),
            SeqCheck::Fresh
        );
        let exhausted = Some(last(u32::MAX, [2; 32]));
        assert_eq!(
            check_seq(exhausted.clone(), u32::MAX, &[2; 32]).unwrap(),
            SeqCheck::Retry(answer())
        );
        for (seq, d) in [(u32::MAX, [3; 32]), (0, [3; 32]), (u32::MAX - 1, [3; 32])] {
            assert_eq!(
                check_seq(exhausted.clone(), seq, &d).unwrap(),
                SeqCheck::Replayed { last_seq: u32::MAX }
            );
        }
    }

    #[test]
    fn a_retry_with_no_saved_answer_is_corrupt() {
        let mut l = last(5, [1; 32]);
        l.answer = None;
        assert!(matches!(
            check_seq(Some(l), 5, &[1; 32]),
            Err(StoreError::Corrupt(_))
        ));
    }
}
