//! Operators: what a create or a revoke answers, from what the store read.

use crate::{
    CreateOperatorOutcome, NewOperator, OperatorRecord, RevokeOperatorOutcome, StoreError,
};

/// What a create does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateOperatorDecision {
    /// Answer without writing (a retry, or a reused key).
    Answer(CreateOperatorOutcome),
    /// Write the new operator and its key record.
    Create,
}

/// Decide a create from the key record found (its fingerprint and the operator it names).
///
/// # Errors
/// [`StoreError::Corrupt`] when a key record names an operator that does not exist.
pub fn decide_create_operator(
    new: &NewOperator,
    prior: Option<(&str, Option<OperatorRecord>)>,
) -> Result<CreateOperatorDecision, StoreError> {
    Ok(match prior {
        None => CreateOperatorDecision::Create,
        Some((fingerprint, _)) if fingerprint != new.fingerprint() => {
            CreateOperatorDecision::Answer(CreateOperatorOutcome::KeyReused)
        }
        Some((_, Some(rec))) => {
            CreateOperatorDecision::Answer(CreateOperatorOutcome::Replayed(rec))
        }
        Some((_, None)) => {
            return Err(StoreError::Corrupt(
                "an operator idempotency record names no operator".into(),
            ));
        }
    })
}

/// What a revoke does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeOperatorDecision {
    Answer(RevokeOperatorOutcome),
    /// Write this record (revoked at `now`).
    Revoke(OperatorRecord),
}

pub fn decide_revoke_operator(found: Option<OperatorRecord>, now: u64) -> RevokeOperatorDecision {
    match found {
        None => RevokeOperatorDecision::Answer(RevokeOperatorOutcome::NotFound),
        Some(rec) if rec.is_revoked() => {
            RevokeOperatorDecision::Answer(RevokeOperatorOutcome::AlreadyRevoked(rec))
        }
        Some(rec) => RevokeOperatorDecision::Revoke(OperatorRecord {
            revoked_at: Some(now),
            ..rec
        }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::{OperatorId, OperatorName};
    use blepay_core::IdempotencyKey;

    fn new_op(name: &str, role: &str) -> NewOperator {
        NewOperator {
            record: OperatorRecord {
                id: OperatorId::from_bytes([1; 8]),
                name: OperatorName::parse(name).unwrap(),
                role: role.into(),
                token_hash: [0; 32],
                created_at: 10,
                created_by: "ops-token".into(),
                revoked_at: None,
            },
            key: IdempotencyKey::parse("k1").unwrap(),
        }
    }

    #[test]
    fn a_create_is_new_a_retry_or_a_reused_key() {
        let n = new_op("Ann", "support");
        assert_eq!(
            decide_create_operator(&n, None).unwrap(),
            CreateOperatorDecision::Create
        );
        let fp = n.fingerprint();
        assert_eq!(
            decide_create_operator(&n, Some((&fp, Some(n.record.clone())))).unwrap(),
            CreateOperatorDecision::Answer(CreateOperatorOutcome::Replayed(n.record.clone()))
        );
        let other = new_op("Ann", "finance");
        assert_eq!(
            decide_create_operator(&other, Some((&fp, Some(n.record.clone())))).unwrap(),
            CreateOperatorDecision::Answer(CreateOperatorOutcome::KeyReused)
        );
        assert!(decide_create_operator(&n, Some((&fp, None))).is_err());
    }

    #[test]
    fn revoking_twice_changes_nothing_the_second_time() {
        let rec = new_op("Ann", "owner").record;
        let RevokeOperatorDecision::Revoke(revoked) = decide_revoke_operator(Some(rec), 20) else {
            panic!("revokes");
        };
        assert_eq!(revoked.revoked_at, Some(20));
        assert_eq!(
            decide_revoke_operator(Some(revoked.clone()), 30),
            RevokeOperatorDecision::Answer(RevokeOperatorOutcome::AlreadyRevoked(revoked))
        );
        assert_eq!(
            decide_revoke_operator(None, 30),
            RevokeOperatorDecision::Answer(RevokeOperatorOutcome::NotFound)
        );
    }
}
