//! Operators and the audit trail (docs/dynamodb.md "Operators and the audit trail").
//!
//! - an operator is `pk = OPERATORS`, `sk = OP#<id>`; its creator's idempotency record
//!   `pk = OPERATORS`, `sk = KEY#<creator>#<key>` (one partition: operators are few, and the
//!   credential check is one strongly consistent `GetItem` of it);
//! - an audit event is `pk = AUDIT`, `sk = <at, 20 digits>#<id>` (newest first is one `Query`
//!   backwards), written with a marker `pk = AUDITKEY#<key>` in one transaction, so an event
//!   whose key is already recorded (a retry) adds nothing.

use std::collections::HashMap;

use blepay_core::Amount;
use blepay_store::decide::{
    CreateOperatorDecision, RevokeOperatorDecision, decide_create_operator, decide_revoke_operator,
};
use blepay_store::{
    AuditEvent, AuditFilter, CreateOperatorOutcome, NewOperator, OperatorId, OperatorName,
    OperatorRecord, Page, PageRequest, RevokeOperatorOutcome, StoreError,
};

use crate::DynamoStore;
use crate::items::{
    self, Failure, Item, Upd, b, corrupt, get_n, get_s, key, n, opt_b, opt_n, opt_s, put_new, s,
};
use crate::ops::attempts::Tx;

const OPERATORS_PK: &str = "OPERATORS";
const AUDIT_PK: &str = "AUDIT";

fn operator_key(id: &OperatorId) -> Item {
    key(OPERATORS_PK.into(), &format!("OP#{id}"))
}

fn operator_key_record(creator: &str, k: &blepay_core::IdempotencyKey) -> Item {
    key(OPERATORS_PK.into(), &format!("KEY#{creator}#{k}"))
}

fn audit_sk(at: u64, id: &str) -> String {
    format!("{at:020}#{id}")
}

fn operator_item(r: &OperatorRecord) -> Item {
    let mut item = operator_key(&r.id);
    item.extend([
        ("type".to_owned(), s("OPERATOR")),
        ("id".to_owned(), s(r.id.as_str())),
        ("name".to_owned(), s(r.name.as_str())),
        ("role".to_owned(), s(&r.role)),
        ("token_hash".to_owned(), b(&r.token_hash)),
        ("created_at".to_owned(), n(r.created_at)),
        ("created_by".to_owned(), s(&r.created_by)),
    ]);
    if let Some(at) = r.revoked_at {
        item.insert("revoked_at".to_owned(), n(at));
    }
    item
}

fn operator_from_item(item: &Item) -> Result<OperatorRecord, StoreError> {
    let hash = opt_b(item, "token_hash")?.ok_or_else(|| corrupt("operator", "token_hash"))?;
    Ok(OperatorRecord {
        id: OperatorId::parse(get_s(item, "id")?).map_err(|_| corrupt("operator", "id"))?,
        name: OperatorName::parse(get_s(item, "name")?).map_err(|_| corrupt("operator", "name"))?,
        role: get_s(item, "role")?.to_owned(),
        token_hash: <[u8; 32]>::try_from(hash).map_err(|_| corrupt("operator", "token_hash"))?,
        created_at: get_n(item, "created_at")?,
        created_by: get_s(item, "created_by")?.to_owned(),
        revoked_at: opt_n(item, "revoked_at")?,
    })
}

fn audit_item(e: &AuditEvent) -> Item {
    let mut item = key(AUDIT_PK.into(), &audit_sk(e.at, &e.id));
    item.extend([
        ("type".to_owned(), s("AUDIT_EVENT")),
        ("id".to_owned(), s(&e.id)),
        ("key".to_owned(), s(&e.key)),
        ("at".to_owned(), n(e.at)),
        ("principal".to_owned(), s(&e.principal)),
        ("role".to_owned(), s(&e.role)),
        ("action".to_owned(), s(&e.action)),
        ("target".to_owned(), s(&e.target)),
    ]);
    if let Some(a) = e.amount {
        item.insert("amount".to_owned(), n(a.minor()));
    }
    if let Some(k) = &e.idempotency_key {
        item.insert("idempotency_key".to_owned(), s(k));
    }
    item
}

fn audit_from_item(item: &Item) -> Result<AuditEvent, StoreError> {
    Ok(AuditEvent {
        id: get_s(item, "id")?.to_owned(),
        key: get_s(item, "key")?.to_owned(),
        at: get_n(item, "at")?,
        principal: get_s(item, "principal")?.to_owned(),
        role: get_s(item, "role")?.to_owned(),
        action: get_s(item, "action")?.to_owned(),
        target: get_s(item, "target")?.to_owned(),
        amount: opt_n::<i64>(item, "amount")?
            .map(Amount::new)
            .transpose()
            .map_err(|_| corrupt("audit event", "amount"))?,
        idempotency_key: opt_s(item, "idempotency_key")?.map(str::to_owned),
    })
}

impl DynamoStore {
    pub(super) async fn create_operator_once(
        &self,
        new: &NewOperator,
    ) -> Result<CreateOperatorOutcome, Failure> {
        let record_key = operator_key_record(&new.record.created_by, &new.key);
        let seen = self.get(record_key.clone()).await?;
        let prior = match &seen {
            None => None,
            Some(item) => {
                let id = OperatorId::parse(get_s(item, "operator_id")?)
                    .map_err(|_| corrupt("operator key record", "operator_id"))?;
                let rec = match self.get(operator_key(&id)).await? {
                    Some(i) => Some(operator_from_item(&i)?),
                    None => None,
                };
                Some((get_s(item, "fingerprint")?.to_owned(), rec))
            }
        };
        let prior = prior.as_ref().map(|(f, r)| (f.as_str(), r.clone()));
        match decide_create_operator(new, prior)? {
            CreateOperatorDecision::Answer(outcome) => return Ok(outcome),
            CreateOperatorDecision::Create => {}
        }
        let mut record = record_key;
        record.extend([
            ("type".to_owned(), s("IDEMPOTENCY")),
            ("fingerprint".to_owned(), s(new.fingerprint())),
            ("operator_id".to_owned(), s(new.record.id.as_str())),
        ]);
        // Conditioned on both not existing: a concurrent create with the key re-runs and
        // answers the operator it made.
        self.transact_or_rerun(vec![
            put_new(&self.table, record)?,
            put_new(&self.table, operator_item(&new.record))?,
        ])
        .await?;
        Ok(CreateOperatorOutcome::Created(new.record.clone()))
    }

    pub(super) async fn operator_once(
        &self,
        id: &OperatorId,
    ) -> Result<Option<OperatorRecord>, Failure> {
        match self.get(operator_key(id)).await? {
            Some(item) => Ok(Some(operator_from_item(&item)?)),
            None => Ok(None),
        }
    }

    pub(super) async fn operators_once(&self) -> Result<Vec<OperatorRecord>, Failure> {
        let mut all = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND begins_with(sk, :op)")
                .expression_attribute_values(":pk", s(OPERATORS_PK))
                .expression_attribute_values(":op", s("OP#"))
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| items::sdk_error(&e))?;
            for item in out.items() {
                all.push(operator_from_item(item)?);
            }
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        all.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(all)
    }

    pub(super) async fn revoke_operator_once(
        &self,
        id: &OperatorId,
        now: u64,
    ) -> Result<RevokeOperatorOutcome, Failure> {
        let found = self.operator_once(id).await?;
        match decide_revoke_operator(found, now) {
            RevokeOperatorDecision::Answer(outcome) => Ok(outcome),
            RevokeOperatorDecision::Revoke(rec) => {
                let at = rec.revoked_at.unwrap_or(now);
                let upd = Upd::new(operator_key(id))
                    .set("revoked_at = :at")
                    .val(":at", n(at))
                    .cond("attribute_exists(pk) AND attribute_not_exists(revoked_at)");
                match upd.send(&self.client, &self.table).await {
                    // Revoked (or removed) since it was read: read again.
                    Err(Failure::Condition) => {
                        Err(Failure::Contention("operator changed since read".into()))
                    }
                    Err(e) => Err(e),
                    Ok(()) => Ok(RevokeOperatorOutcome::Revoked(rec)),
                }
            }
        }
    }

    pub(super) async fn record_audit_event_once(&self, e: &AuditEvent) -> Result<bool, Failure> {
        let marker = HashMap::from([
            ("pk".to_owned(), s(format!("AUDITKEY#{}", e.key))),
            ("sk".to_owned(), s("AUDITKEY")),
            ("type".to_owned(), s("AUDIT_KEY")),
            ("event".to_owned(), s(audit_sk(e.at, &e.id))),
        ]);
        let put = aws_sdk_dynamodb::types::Put::builder()
            .table_name(&self.table)
            .set_item(Some(audit_item(e)))
            .build()
            .map_err(items::build_error)?;
        let actions = vec![
            put_new(&self.table, marker)?,
            aws_sdk_dynamodb::types::TransactWriteItem::builder()
                .put(put)
                .build(),
        ];
        match self.transact(actions).await? {
            Tx::Done => Ok(true),
            // The marker exists: an event with this key is recorded already.
            Tx::Cancelled(_) => Ok(false),
        }
    }

    pub(super) async fn audit_events_once(
        &self,
        filter: &AuditFilter,
        page: &PageRequest,
    ) -> Result<Page<AuditEvent>, Failure> {
        let want = usize::try_from(page.limit).unwrap_or(usize::MAX);
        let mut found: Vec<AuditEvent> = Vec::new();
        let mut start: Option<Item> = page
            .after
            .as_ref()
            .map(|p| key(AUDIT_PK.into(), &audit_sk(p.at, &p.id)));
        // Read backwards until one more match than the page holds, or the end; the filter is
        // applied here (a FilterExpression would count unmatched items against `Limit`).
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", s(AUDIT_PK))
                .scan_index_forward(false)
                .consistent_read(true)
                .limit(i32::try_from(want.saturating_add(1).max(100)).unwrap_or(i32::MAX))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| items::sdk_error(&e))?;
            for item in out.items() {
                let e = audit_from_item(item)?;
                if filter.matches(&e) {
                    found.push(e);
                }
                if found.len() > want {
                    break;
                }
            }
            if found.len() > want {
                break;
            }
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        let more = found.len() > want;
        found.truncate(want);
        let next = if more {
            found.last().map(AuditEvent::position)
        } else {
            None
        };
        Ok(Page { items: found, next })
    }
}
