//! Operators (principals with a role and a hashed credential) and the audit trail of what they
//! did: the records both stores keep (docs/api.md "Operators and roles").
//!
//! The store knows an operator's role only as its name (`owner`, `support`, …): the roles and
//! what each may do are the service's (`blepay_service::operator::Role`), which parses it back and
//! treats a name it does not know as corrupt data.

use std::fmt;

use blepay_core::{Amount, IdempotencyKey};

/// Why an operator field did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OperatorFieldError {
    #[error("must be {} lowercase hex digits", OperatorId::LEN)]
    Id,
    #[error(
        "must be 1..={} characters, not blank, without control characters",
        OperatorName::MAX_LEN
    )]
    Name,
}

/// An operator's id: 16 lowercase hex digits (8 random bytes), the `<id>` of `op:<id>` and of
/// the token `bpo_<id>_<secret>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OperatorId(String);

impl OperatorId {
    pub const LEN: usize = 16;

    /// # Errors
    /// [`OperatorFieldError::Id`] unless exactly 16 lowercase hex digits.
    pub fn parse(s: &str) -> Result<Self, OperatorFieldError> {
        if s.len() == Self::LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(Self(s.to_owned()))
        } else {
            Err(OperatorFieldError::Id)
        }
    }

    pub fn from_bytes(b: [u8; 8]) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(Self::LEN);
        for x in b {
            s.push(char::from(HEX[usize::from(x >> 4)]));
            s.push(char::from(HEX[usize::from(x & 0x0f)]));
        }
        Self(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The principal the audit trail names this operator by.
    pub fn principal(&self) -> String {
        format!("op:{}", self.0)
    }
}

impl fmt::Display for OperatorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An operator's display name: 1..=64 characters, not blank, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OperatorName(String);

impl OperatorName {
    pub const MAX_LEN: usize = 64;

    /// # Errors
    /// [`OperatorFieldError::Name`].
    pub fn parse(s: &str) -> Result<Self, OperatorFieldError> {
        if s.trim().is_empty()
            || s.chars().count() > Self::MAX_LEN
            || s.chars().any(char::is_control)
        {
            return Err(OperatorFieldError::Name);
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An operator as stored. Its credential is only the SHA-256 of the token's secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorRecord {
    pub id: OperatorId,
    pub name: OperatorName,
    /// The role's name (`owner`, `support`, `finance`, `technician`).
    pub role: String,
    /// SHA-256 of the token's 256-bit secret.
    pub token_hash: [u8; 32],
    pub created_at: u64,
    /// The principal who created it.
    pub created_by: String,
    pub revoked_at: Option<u64>,
}

impl OperatorRecord {
    pub const fn is_revoked(&self) -> bool {
        self.revoked_at.is_some()
    }
}

/// Create an operator, once per idempotency key of its creator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOperator {
    /// The operator to create (`created_by` is the creator, the key's scope).
    pub record: OperatorRecord,
    pub key: IdempotencyKey,
}

impl NewOperator {
    /// What makes a create a retry of an earlier one with the same key: the same name and role.
    pub fn fingerprint(&self) -> String {
        operator_fingerprint(&self.record.name, &self.record.role)
    }
}

/// The fingerprint of a create request (its name and role).
pub fn operator_fingerprint(name: &OperatorName, role: &str) -> String {
    format!("{role}|{}", name.as_str())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateOperatorOutcome {
    Created(OperatorRecord),
    /// The same key and request again: the operator the first one created (its token is not
    /// shown again: only its hash was kept).
    Replayed(OperatorRecord),
    /// The same key with another name or role: nothing created.
    KeyReused,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeOperatorOutcome {
    Revoked(OperatorRecord),
    /// Revoked before: nothing changed (revoking is naturally idempotent).
    AlreadyRevoked(OperatorRecord),
    NotFound,
}

/// One operator action that changed something, as the audit trail keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// Unique, and ordered like the events' times (the list's tie-break within one second).
    pub id: String,
    /// What makes an event a retry of another: an event whose key is already recorded is not
    /// recorded again (the service derives it from (principal, action, target, idempotency key)
    /// when the action has a key, so a retry adds nothing; otherwise it is the id).
    pub key: String,
    pub at: u64,
    pub principal: String,
    pub role: String,
    pub action: String,
    pub target: String,
    pub amount: Option<Amount>,
    pub idempotency_key: Option<String>,
}

impl AuditEvent {
    /// Where a list continues after this event (newest first: by `at`, then `id`, descending).
    pub fn position(&self) -> crate::ListPosition {
        crate::ListPosition {
            at: self.at,
            id: self.id.clone(),
        }
    }
}

/// Which audit events a list returns (all when empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub principal: Option<String>,
    pub action: Option<String>,
}

impl AuditFilter {
    pub fn matches(&self, e: &AuditEvent) -> bool {
        self.principal.as_ref().is_none_or(|p| *p == e.principal)
            && self.action.as_ref().is_none_or(|a| *a == e.action)
    }
}
