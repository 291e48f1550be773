//! Operator credentials, the operator routes and the audit trail (docs/api.md "Operators and
//! roles").
//!
//! **Credentials.** An operator's token is `bpo_<operatorId>_<secret>`: the id (16 hex digits)
//! names the record, the secret is 256 random bits (64 hex digits). Only SHA-256 of the secret
//! is stored, and a presented secret's hash is compared with it in constant time. A salted slow
//! hash (argon2, bcrypt) protects low-entropy *passwords* against offline guessing; a 256-bit
//! random secret cannot be guessed, so one SHA-256 (under a microsecond) gives the same
//! protection to a leaked table without adding tens of milliseconds and megabytes of memory to
//! every ops request — the practice for API tokens (GitHub, Stripe). The record is read on every
//! request (one SQLite row or one consistent DynamoDB `GetItem`), never cached, so a revoked
//! operator is refused from the next request on, by every process.
//!
//! **The audit trail.** [`App::record_action`] writes an [`AuditEvent`] after every change an
//! operator makes (and keeps the `blepay::audit` log line). An action with an idempotency key
//! gets an event key derived from (principal, action, target, key), so its retries add nothing.

use blepay_core::{Amount, IdempotencyKey};
use blepay_proto::pb::v1 as pb;
use blepay_store::{
    AuditEvent, AuditFilter, CreateOperatorOutcome, NewOperator, OperatorId, OperatorName,
    OperatorRecord, RevokeOperatorOutcome,
};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::app::App;
use crate::auth::{self, refused};
use crate::error::{ApiError, ErrorCode};
use crate::operator::{Action, ActionRecord, Operator, Role};
use crate::page::{encode_cursor, page_request};

/// The prefix of every operator token.
pub const TOKEN_PREFIX: &str = "bpo_";
/// Hex digits of a token's secret (256 bits).
const SECRET_HEX: usize = 64;

/// An operator token, parsed (the secret zeroized on drop).
pub struct OperatorToken {
    pub id: OperatorId,
    secret: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for OperatorToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorToken")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl OperatorToken {
    /// A fresh token for a new operator.
    pub fn generate() -> Self {
        Self {
            id: OperatorId::from_bytes(rand::random()),
            secret: Zeroizing::new(rand::random()),
        }
    }

    /// Parse `bpo_<16 hex>_<64 hex>`; anything else is `None`.
    pub fn parse(s: &str) -> Option<Self> {
        let rest = s.strip_prefix(TOKEN_PREFIX)?;
        let (id, secret) = rest.split_once('_')?;
        let id = OperatorId::parse(id).ok()?;
        if secret.len() != SECRET_HEX
            || !secret
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return None;
        }
        let mut bytes = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(secret, bytes.as_mut_slice()).ok()?;
        Some(Self { id, secret: bytes })
    }

    /// The token as the operator presents it (shown once).
    pub fn expose(&self) -> Zeroizing<String> {
        Zeroizing::new(format!(
            "{TOKEN_PREFIX}{}_{}",
            self.id,
            hex::encode(self.secret.as_slice())
        ))
    }

    /// What the store keeps: SHA-256 of the secret.
    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.secret.as_slice()).into()
    }
}

fn operator_not_found(id: &str) -> ApiError {
    ApiError::new(ErrorCode::OperatorNotFound, format!("no operator {id}"))
}

fn operator_pb(r: &OperatorRecord) -> pb::Operator {
    pb::Operator {
        operator_id: r.id.to_string(),
        name: r.name.as_str().to_owned(),
        role: r.role.clone(),
        principal: r.id.principal(),
        created_at: secs(r.created_at),
        created_by: r.created_by.clone(),
        revoked_at: r.revoked_at.map_or(0, secs),
    }
}

fn secs(t: u64) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}

fn audit_pb(e: AuditEvent) -> pb::AuditEvent {
    pb::AuditEvent {
        event_id: e.id,
        at: secs(e.at),
        principal: e.principal,
        role: e.role,
        action: e.action,
        target: e.target,
        amount: e.amount.map_or(0, Amount::minor),
        idempotency_key: e.idempotency_key.unwrap_or_default(),
    }
}

/// A new audit event's id: the wall clock in nanoseconds (16 hex digits) and 32 random bits,
/// so ids sort like the events' times within one second (the list's tie-break), across
/// processes as far as their clocks agree.
pub fn new_audit_event_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    format!("{nanos:016x}{:08x}", rand::random::<u32>())
}

/// What makes an audit event a retry of another: derived from (principal, action, target, key)
/// when the action has an idempotency key (a retry maps to the same event), else `id`.
pub fn audit_event_key(principal: &str, rec: &ActionRecord, id: &str) -> String {
    match &rec.idempotency_key {
        Some(key) => {
            let mut h = Sha256::new();
            for part in [principal, rec.action, rec.target.as_str(), key.as_str()] {
                h.update(u64::try_from(part.len()).unwrap_or(u64::MAX).to_be_bytes());
                h.update(part.as_bytes());
            }
            hex::encode(&h.finalize()[..16])
        }
        None => id.to_owned(),
    }
}

/// The longest principal or action filter accepted on `GET /v1/ops/audit`.
pub const MAX_FILTER_LEN: usize = 256;

/// Decode `GET /v1/ops/audit`'s query string (`limit`, `cursor`, `principal`, `action`;
/// percent-encoded; other names are refused so a typo does not silently list everything).
///
/// # Errors
/// INVALID_ARGUMENT naming the parameter.
pub fn audit_query(raw: Option<&str>) -> Result<pb::ListAuditRequest, ApiError> {
    let mut req = pb::ListAuditRequest::default();
    for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value)
            .ok_or_else(|| ApiError::invalid(format!("{name}: not percent-encoded UTF-8")))?;
        match name {
            "limit" => {
                req.limit = value
                    .parse::<u32>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| ApiError::invalid("limit: must be a whole number 1..=500"))?;
            }
            "cursor" => req.cursor = value,
            "principal" | "action" => {
                if value.len() > MAX_FILTER_LEN || value.chars().any(char::is_control) {
                    return Err(ApiError::invalid(format!(
                        "{name}: at most {MAX_FILTER_LEN} bytes, no control characters"
                    )));
                }
                if name == "principal" {
                    req.principal = value;
                } else {
                    req.action = value;
                }
            }
            other => {
                return Err(ApiError::invalid(format!(
                    "unknown query parameter `{}`",
                    other.chars().take(32).collect::<String>()
                )));
            }
        }
    }
    Ok(req)
}

/// `%XX` and `+` (space) decoding; `None` on a malformed escape or invalid UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

impl App {
    /// Who an ops request's `Authorization` header names: the bootstrap owner
    /// (`BLEPAY_OPS_TOKEN`), or an operator whose token matches its stored hash and who is not
    /// revoked.
    ///
    /// # Errors
    /// UNAUTHENTICATED ([`auth::REFUSED`], the one message) otherwise; RETRY_LATER when the
    /// store cannot be read.
    pub async fn authenticate_operator(&self, header: Option<&str>) -> Result<Operator, ApiError> {
        let token = match auth::ops_credential(self.config(), header)? {
            auth::OpsCredential::Bootstrap => return Ok(Operator::bootstrap()),
            auth::OpsCredential::Operator(t) => t,
        };
        let Some(rec) = self.store().operator(&token.id).await? else {
            return Err(refused("unknown operator id"));
        };
        if !bool::from(token.hash().ct_eq(&rec.token_hash)) {
            return Err(refused("wrong operator secret"));
        }
        if rec.is_revoked() {
            return Err(refused(format_args!("operator {} is revoked", rec.id)));
        }
        let role = Role::parse(&rec.role).ok_or_else(|| {
            tracing::error!(operator = %rec.id, role = %rec.role, "stored operator role unknown");
            refused("unknown stored role")
        })?;
        Ok(Operator {
            principal: rec.id.principal(),
            role,
        })
    }

    /// Write the durable audit event of `rec` by `op` (idempotent by its id).
    pub(crate) async fn write_audit_event(
        &self,
        op: &Operator,
        rec: &ActionRecord,
    ) -> Result<(), ApiError> {
        let id = new_audit_event_id();
        let event = AuditEvent {
            key: audit_event_key(&op.principal, rec, &id),
            id,
            at: self.now(),
            principal: op.principal.clone(),
            role: op.role.as_str().to_owned(),
            action: rec.action.to_owned(),
            target: rec.target.clone(),
            amount: rec.amount,
            idempotency_key: rec.idempotency_key.clone(),
        };
        self.store().record_audit_event(&event).await?;
        Ok(())
    }

    /// `POST /v1/ops/operators`: create an operator; its token is in the answer, once.
    ///
    /// # Errors
    /// FORBIDDEN, INVALID_ARGUMENT, IDEMPOTENCY_KEY_REUSED.
    pub async fn create_operator(
        &self,
        op: &Operator,
        req: pb::CreateOperatorRequest,
    ) -> Result<pb::CreateOperatorResponse, ApiError> {
        self.authorize(op, &Action::ManageOperators)?;
        let name =
            OperatorName::parse(&req.name).map_err(|e| ApiError::invalid(format!("name: {e}")))?;
        let role = Role::parse(&req.role).ok_or_else(|| {
            ApiError::invalid("role: must be one of owner, support, finance, technician")
        })?;
        let key = IdempotencyKey::parse(&req.idempotency_key)
            .map_err(|e| ApiError::invalid(format!("idempotencyKey: {e}")))?;
        let token = OperatorToken::generate();
        let new = NewOperator {
            record: OperatorRecord {
                id: token.id.clone(),
                name,
                role: role.as_str().to_owned(),
                token_hash: token.hash(),
                created_at: self.now(),
                created_by: op.principal.clone(),
                revoked_at: None,
            },
            key: key.clone(),
        };
        let (rec, token) = match self.store().create_operator(&new).await? {
            CreateOperatorOutcome::Created(rec) => (rec, token.expose().to_string()),
            CreateOperatorOutcome::Replayed(rec) => (rec, String::new()),
            CreateOperatorOutcome::KeyReused => {
                return Err(ApiError::new(
                    ErrorCode::IdempotencyKeyReused,
                    "this idempotency key was used for a different request",
                ));
            }
        };
        self.record_action(
            op,
            ActionRecord {
                action: "operator.create",
                target: rec.id.to_string(),
                amount: None,
                idempotency_key: Some(key.as_str().to_owned()),
            },
        )
        .await?;
        Ok(pb::CreateOperatorResponse {
            operator: Some(operator_pb(&rec)),
            token,
        })
    }

    /// `GET /v1/ops/operators`: every operator, revoked ones included.
    ///
    /// # Errors
    /// FORBIDDEN, RETRY_LATER.
    pub async fn list_operators(
        &self,
        op: &Operator,
    ) -> Result<pb::ListOperatorsResponse, ApiError> {
        self.authorize(op, &Action::ManageOperators)?;
        let all = self.store().operators().await?;
        Ok(pb::ListOperatorsResponse {
            operators: all.iter().map(operator_pb).collect(),
        })
    }

    /// `POST /v1/ops/operators/{operatorId}/revoke`: its token is refused from now on.
    /// Revoking again answers the operator and changes nothing.
    ///
    /// # Errors
    /// FORBIDDEN, INVALID_ARGUMENT, OPERATOR_NOT_FOUND.
    pub async fn revoke_operator(&self, op: &Operator, id: &str) -> Result<pb::Operator, ApiError> {
        self.authorize(op, &Action::ManageOperators)?;
        let id =
            OperatorId::parse(id).map_err(|e| ApiError::invalid(format!("operatorId: {e}")))?;
        match self.store().revoke_operator(&id, self.now()).await? {
            RevokeOperatorOutcome::Revoked(rec) => {
                self.record_action(
                    op,
                    ActionRecord {
                        action: "operator.revoke",
                        target: rec.id.to_string(),
                        amount: None,
                        idempotency_key: None,
                    },
                )
                .await?;
                Ok(operator_pb(&rec))
            }
            RevokeOperatorOutcome::AlreadyRevoked(rec) => Ok(operator_pb(&rec)),
            RevokeOperatorOutcome::NotFound => Err(operator_not_found(id.as_str())),
        }
    }

    /// `GET /v1/ops/audit`: the audit trail, newest first, one page.
    ///
    /// # Errors
    /// FORBIDDEN, INVALID_ARGUMENT (limit, cursor), RETRY_LATER.
    pub async fn list_audit(
        &self,
        op: &Operator,
        req: pb::ListAuditRequest,
    ) -> Result<pb::ListAuditResponse, ApiError> {
        self.authorize(op, &Action::ReadAudit)?;
        let page = page_request(
            (req.limit != 0).then_some(req.limit),
            Some(req.cursor.as_str()),
        )?;
        let filter = AuditFilter {
            principal: (!req.principal.is_empty()).then_some(req.principal),
            action: (!req.action.is_empty()).then_some(req.action),
        };
        let page = self.store().audit_events(&filter, &page).await?;
        Ok(pb::ListAuditResponse {
            events: page.items.into_iter().map(audit_pb).collect(),
            next_cursor: page.next.as_ref().map(encode_cursor).unwrap_or_default(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_generated_token_parses_back_to_its_id_and_hash() {
        let t = OperatorToken::generate();
        let shown = t.expose();
        assert!(shown.starts_with("bpo_"));
        assert_eq!(shown.len(), 4 + 16 + 1 + 64);
        let back = OperatorToken::parse(&shown).unwrap();
        assert_eq!(back.id, t.id);
        assert_eq!(back.hash(), t.hash());
        assert!(
            !format!("{t:?}").contains(&shown[21..]),
            "the secret never prints"
        );
    }

    #[test]
    fn keyed_audit_ids_are_stable_and_unkeyed_ones_unique() {
        let rec = ActionRecord {
            action: "wallet.top_up",
            target: "alice".into(),
            amount: None,
            idempotency_key: Some("k".into()),
        };
        let (a, b) = (new_audit_event_id(), new_audit_event_id());
        assert!(a[..16] <= b[..16], "ids sort by time: {a} {b}");
        assert_eq!(
            audit_event_key("p", &rec, &a),
            audit_event_key("p", &rec, &b)
        );
        assert_ne!(
            audit_event_key("p", &rec, &a),
            audit_event_key("q", &rec, &a)
        );
        let unkeyed = ActionRecord {
            idempotency_key: None,
            ..rec
        };
        assert_eq!(audit_event_key("p", &unkeyed, &a), a);
    }

    #[test]
    fn the_audit_query_decodes_its_parameters() {
        let q = audit_query(Some(
            "limit=2&principal=op%3A0a00000000000001&action=wallet.top_up",
        ))
        .unwrap();
        assert_eq!(q.limit, 2);
        assert_eq!(q.principal, "op:0a00000000000001");
        assert_eq!(q.action, "wallet.top_up");
        assert!(audit_query(Some("limit=0")).is_err());
        assert!(audit_query(Some("colour=red")).is_err());
        assert!(audit_query(Some("principal=%zz")).is_err());
        assert_eq!(audit_query(None).unwrap(), pb::ListAuditRequest::default());
    }

    proptest! {
        #[test]
        fn any_string_is_a_token_or_not_without_panicking(s in ".{0,120}") {
            if let Some(t) = OperatorToken::parse(&s) {
                let shown = t.expose();
                prop_assert_eq!(shown.as_str(), s.as_str());
            }
        }

        #[test]
        fn any_query_string_decodes_or_is_a_clear_error(s in ".{0,200}") {
            if let Err(e) = audit_query(Some(&s)) {
                prop_assert_eq!(e.code, ErrorCode::InvalidArgument);
            }
        }
    }
}
