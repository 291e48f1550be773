//! The sequence-number check of machine requests.

use crate::{SavedAnswer, StoreError};

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
