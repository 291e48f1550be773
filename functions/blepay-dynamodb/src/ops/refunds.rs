//! The back office (issue 11): refunds, hand closes and problem reports. Each reads, calls the
//! shared decision (`blepay_store::decide`), and writes one `TransactWriteItems` conditioned on
//! every fact the decision used; a lost race is a rerun, never a different answer.

use aws_sdk_dynamodb::types::{ConditionCheck, Delete, TransactWriteItem};
use blepay_core::{Amount, SessionId, SessionStatus, UserId};
use blepay_store::decide::{
    DismissDecision, NewRefund, ProblemDecision, RefundDecision, RefundFacts, decide_close,
    decide_dismiss, decide_problem, decide_refund, refund_fingerprint,
};
use blepay_store::{
    CloseCommand, CloseOutcome, DismissCommand, DismissOutcome, ListPosition, Page, PageRequest,
    Problem, ProblemCommand, ProblemId, ProblemOutcome, Reason, RefundCommand, RefundOutcome,
    Resolution, ResolutionKind, StoreError,
};

use crate::DynamoStore;
use crate::items::{
    self, DUE_AT, DUE_INDEX, DUE_PK, Failure, Item, Upd, device_key, get_n, get_s, key, n, opt_s,
    put_new, s, session_from_item, session_key, wallet_from_item, wallet_key,
};

/// The `due` GSI partition of open problems (sorted by creation time).
pub(crate) const PROBLEM_PARTITION: &str = "PROBLEM";

fn problem_key(id: ProblemId) -> Item {
    key(format!("PROBLEM#{id}"), "PROBLEM")
}

/// The marker of a session's open problem: one per session (`attribute_not_exists` on create).
fn open_problem_key(session: SessionId) -> Item {
    key(format!("SESSION#{session}"), "OPEN_PROBLEM")
}

fn problem_item(p: &Problem) -> Item {
    let mut item = problem_key(p.id);
    item.extend([
        ("type".to_string(), s("PROBLEM")),
        ("id".to_string(), s(p.id.to_string())),
        ("session".to_string(), s(p.session.to_string())),
        ("user".to_string(), s(p.user.as_str())),
        ("reason".to_string(), s(p.reason.as_str())),
        ("created_at".to_string(), n(p.created_at)),
    ]);
    if p.resolution.is_none() {
        item.insert(DUE_PK.into(), s(PROBLEM_PARTITION));
        item.insert(DUE_AT.into(), n(p.created_at));
    }
    item
}

fn problem_from_item(item: &Item) -> Result<Problem, StoreError> {
    let bad = |attr| items::corrupt("problem", attr);
    let resolution = match opt_s(item, "resolution")? {
        None => None,
        Some(kind) => Some(Resolution {
            kind: ResolutionKind::parse(kind).ok_or_else(|| bad("resolution"))?,
            at: get_n(item, "resolved_at")?,
            by: get_s(item, "resolved_by")?.to_owned(),
            reason: Reason::parse(get_s(item, "resolution_reason")?)
                .map_err(|_| bad("resolution_reason"))?,
        }),
    };
    Ok(Problem {
        id: ProblemId::parse(get_s(item, "id")?).map_err(|_| bad("id"))?,
        session: SessionId::parse(get_s(item, "session")?).map_err(|_| bad("session"))?,
        user: UserId::parse(get_s(item, "user")?).map_err(|_| bad("user"))?,
        reason: Reason::parse(get_s(item, "reason")?).map_err(|_| bad("reason"))?,
        created_at: get_n(item, "created_at")?,
        resolution,
    })
}

impl DynamoStore {
    /// A session's open problem: its marker, then the problem it names.
    async fn open_problem_of(&self, marker: Option<&Item>) -> Result<Option<Problem>, Failure> {
        let Some(marker) = marker else {
            return Ok(None);
        };
        let id = ProblemId::parse(get_s(marker, "problem")?)
            .map_err(|_| items::corrupt("open problem", "problem"))?;
        let item = self
            .get(problem_key(id))
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("open problem {id} is missing")))?;
        Ok(Some(problem_from_item(&item)?))
    }

    /// Resolve `p` (its resolution set) and remove its session's marker, conditioned on it being
    /// open and the marker naming it.
    fn resolve_writes(
        &self,
        p: &Problem,
        writes: &mut Vec<TransactWriteItem>,
    ) -> Result<(), StoreError> {
        let Some(r) = &p.resolution else {
            return Ok(());
        };
        writes.push(
            Upd::new(problem_key(p.id))
                .set("resolution = :kind, resolved_at = :at, resolved_by = :by")
                .set("resolution_reason = :why")
                .remove(format!("{DUE_PK}, {DUE_AT}"))
                .cond("attribute_exists(pk) AND attribute_not_exists(resolution)")
                .val(":kind", s(r.kind.as_str()))
                .val(":at", n(r.at))
                .val(":by", s(r.by.as_str()))
                .val(":why", s(r.reason.as_str()))
                .into_transact(&self.table)?,
        );
        let delete = Delete::builder()
            .table_name(&self.table)
            .set_key(Some(open_problem_key(p.session)))
            .condition_expression("problem = :pid")
            .expression_attribute_values(":pid", s(p.id.to_string()))
            .build()
            .map_err(items::build_error)?;
        writes.push(TransactWriteItem::builder().delete(delete).build());
        Ok(())
    }

    pub(super) async fn refund_once(&self, cmd: &RefundCommand) -> Result<RefundOutcome, Failure> {
        // The session first (whose wallet?), then one consistent snapshot of everything the
        // decision reads: the session, its user's wallet, the key's ledger row, the open problem.
        let Some(first) = self.get(session_key(cmd.session)).await? else {
            return Ok(RefundOutcome::SessionNotFound);
        };
        let user = session_from_item(&first)?.user_id;
        let [session, wallet_item, prior, marker] = <[Option<Item>; 4]>::try_from(
            self.transact_get(vec![
                session_key(cmd.session),
                wallet_key(&user),
                items::refund_ledger_key(cmd.session, &cmd.key),
                open_problem_key(cmd.session),
            ])
            .await?,
        )
        .map_err(|_| StoreError::Internal("TransactGetItems answered the wrong count".into()))?;
        let session = session.as_ref().map(session_from_item).transpose()?;
        if let Some(due) = session.as_ref().filter(|x| x.is_due_to_expire(cmd.now)) {
            self.expire_one(due, cmd.now).await?;
            return Err(Failure::Contention(
                "expired a due session; read again".into(),
            ));
        }
        let w = wallet_from_item(wallet_item.as_ref())?;
        let prior = prior
            .as_ref()
            .map(|row| -> Result<String, StoreError> {
                Ok(refund_fingerprint(
                    Amount::new(get_n(row, "amount")?)
                        .map_err(|_| items::corrupt("ledger entry", "amount"))?,
                ))
            })
            .transpose()?;
        let open_problem = self.open_problem_of(marker.as_ref()).await?;
        let before = session.clone();
        let facts = RefundFacts {
            cmd,
            session,
            prior: prior.as_deref(),
            wallet: w.wallet,
            open_problem,
        };
        let NewRefund {
            session: after,
            wallet,
            entry,
            resolved,
        } = match decide_refund(facts)? {
            RefundDecision::Answer(outcome) => return Ok(outcome),
            RefundDecision::Refund(new) => new,
        };
        let read =
            before.ok_or_else(|| StoreError::Internal("a refund without its session".into()))?;
        let new = NewRefund {
            session: after,
            wallet,
            entry,
            resolved,
        };
        let writes = self.refund_writes(cmd, &read, w.wallet, &new)?;
        self.transact_or_rerun(writes).await?;
        Ok(RefundOutcome::Refunded {
            session: new.session,
            wallet: new.wallet,
        })
    }

    /// The refund's one transaction: the session (SETTLED, its capture and refunded total as
    /// read), the wallet (its balances as read), the ledger row (also the key's record) and the
    /// session's open problem (resolved, or still none).
    fn refund_writes(
        &self,
        cmd: &RefundCommand,
        read: &blepay_core::Session,
        read_wallet: blepay_core::Wallet,
        new: &NewRefund,
    ) -> Result<Vec<TransactWriteItem>, StoreError> {
        let mut writes = Vec::new();
        // The session: SETTLED, its capture and its refunded total as read.
        let session_upd = Upd::new(session_key(read.id))
            .set("refunded = :refunded")
            .cond("#status = :settled AND amount = :amount")
            .name("#status", "status")
            .val(":refunded", n(new.session.refunded.minor()))
            .val(":settled", s(SessionStatus::Settled.as_str()))
            .val(":amount", n(read.amount.minor()));
        writes.push(
            if read.refunded.is_zero() {
                session_upd.cond("attribute_not_exists(refunded)")
            } else {
                session_upd
                    .cond("refunded = :prev_refunded")
                    .val(":prev_refunded", n(read.refunded.minor()))
            }
            .into_transact(&self.table)?,
        );
        // The wallet: its balances as read.
        let wallet_upd = Upd::new(wallet_key(&read.user_id))
            .set("available = :a, spent = :s, refunded = :r")
            .cond("available = :pa AND held = :ph AND spent = :ps")
            .val(":a", n(new.wallet.available.minor()))
            .val(":s", n(new.wallet.spent.minor()))
            .val(":r", n(new.wallet.refunded.minor()))
            .val(":pa", n(read_wallet.available.minor()))
            .val(":ph", n(read_wallet.held.minor()))
            .val(":ps", n(read_wallet.spent.minor()));
        writes.push(
            if read_wallet.refunded.is_zero() {
                wallet_upd
                    .cond("attribute_not_exists(refunded) OR refunded = :zero")
                    .val(":zero", n(0))
            } else {
                wallet_upd
                    .cond("refunded = :pr")
                    .val(":pr", n(read_wallet.refunded.minor()))
            }
            .into_transact(&self.table)?,
        );
        // The ledger row, which is also the key's record.
        let mut row = items::ledger_item(&new.entry, cmd.now, Some(read.id), "");
        row.extend(items::refund_ledger_key(read.id, &cmd.key));
        row.insert("reason".into(), s(cmd.reason.as_str()));
        writes.push(put_new(&self.table, items::with_actor(row, &cmd.actor))?);
        // The session's open problem: resolved, or still none.
        if let Some(p) = &new.resolved {
            self.resolve_writes(p, &mut writes)?;
        } else {
            let check = ConditionCheck::builder()
                .table_name(&self.table)
                .set_key(Some(open_problem_key(read.id)))
                .condition_expression("attribute_not_exists(pk)")
                .build()
                .map_err(items::build_error)?;
            writes.push(TransactWriteItem::builder().condition_check(check).build());
        }
        Ok(writes)
    }

    pub(super) async fn close_once(&self, cmd: &CloseCommand) -> Result<CloseOutcome, Failure> {
        let session = self
            .get(session_key(cmd.session))
            .await?
            .as_ref()
            .map(session_from_item)
            .transpose()?;
        let decision = decide_close(session, cmd.now, cmd.active_timeout_secs);
        let (closed, settlement, actor) = match (&decision.overdue, &decision.closed) {
            (Some((s, st)), _) => (s, *st, None),
            (None, Some((s, st))) => (s, *st, Some(cmd.actor.as_str())),
            (None, None) => return Ok(decision.outcome),
        };
        let mut writes = Vec::new();
        let device = self.close_writes_by(closed, settlement, cmd.now, actor, &mut writes)?;
        writes.push(
            Upd::new(device_key(closed.device_id))
                .merge(device)
                .into_transact(&self.table)?,
        );
        self.transact_or_rerun(writes).await?;
        self.shadow.closed(closed.device_id, closed.id);
        if decision.overdue.is_some() {
            // Closed by the usual rule first: answer from what is stored now.
            return Err(Failure::Contention(
                "closed an overdue session; read again".into(),
            ));
        }
        Ok(decision.outcome)
    }

    pub(super) async fn report_problem_once(
        &self,
        cmd: &ProblemCommand,
    ) -> Result<ProblemOutcome, Failure> {
        let [session, marker] = <[Option<Item>; 2]>::try_from(
            self.batch_get(vec![
                session_key(cmd.session),
                open_problem_key(cmd.session),
            ])
            .await?,
        )
        .map_err(|_| StoreError::Internal("BatchGetItem answered the wrong count".into()))?;
        let session = session.as_ref().map(session_from_item).transpose()?;
        let open = self.open_problem_of(marker.as_ref()).await?;
        match decide_problem(cmd, session.as_ref(), open) {
            ProblemDecision::Answer(outcome) => Ok(outcome),
            ProblemDecision::Open(p) => {
                let mut marker = open_problem_key(p.session);
                marker.insert("type".into(), s("OPEN_PROBLEM"));
                marker.insert("problem".into(), s(p.id.to_string()));
                let writes = vec![
                    put_new(&self.table, marker)?,
                    put_new(&self.table, problem_item(&p))?,
                ];
                self.transact_or_rerun(writes).await?;
                Ok(ProblemOutcome::Opened(p))
            }
        }
    }

    /// Open problems, oldest first: the `PROBLEM` partition of the `due` GSI (sorted by creation
    /// time), read from the cursor's time on (the queue of open problems is short: resolved ones
    /// leave the index), ordered by (time, id) here and cut after the cursor.
    pub(super) async fn open_problems_once(
        &self,
        page: &PageRequest,
    ) -> Result<Page<Problem>, Failure> {
        let from = page.after.as_ref().map_or(0, |p| p.at);
        let limit = usize::try_from(page.limit).unwrap_or(usize::MAX);
        let mut found: Vec<Problem> = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(DUE_INDEX)
                .key_condition_expression("#pk = :pk AND #at >= :from")
                .expression_attribute_names("#pk", DUE_PK)
                .expression_attribute_names("#at", DUE_AT)
                .expression_attribute_values(":pk", s(PROBLEM_PARTITION))
                .expression_attribute_values(":from", n(from))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| items::sdk_error(&e))?;
            for item in out.items() {
                let p = problem_from_item(item)?;
                // The index is eventually consistent: a just-resolved problem may still show.
                if p.resolution.is_none() {
                    found.push(p);
                }
            }
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        let pos = |p: &Problem| ListPosition {
            at: p.created_at,
            id: p.id.to_string(),
        };
        found.sort_by_key(pos);
        let mut items: Vec<Problem> = found
            .into_iter()
            .filter(|p| page.after.as_ref().is_none_or(|after| pos(p) > *after))
            .collect();
        let more = items.len() > limit;
        items.truncate(limit);
        let next = if more { items.last().map(pos) } else { None };
        Ok(Page { items, next })
    }

    pub(super) async fn dismiss_problem_once(
        &self,
        cmd: &DismissCommand,
    ) -> Result<DismissOutcome, Failure> {
        let problem = self
            .get(problem_key(cmd.id))
            .await?
            .as_ref()
            .map(problem_from_item)
            .transpose()?;
        match decide_dismiss(cmd, problem) {
            DismissDecision::Answer(outcome) => Ok(outcome),
            DismissDecision::Dismiss(p) => {
                let mut writes = Vec::new();
                self.resolve_writes(&p, &mut writes)?;
                self.transact_or_rerun(writes).await?;
                Ok(DismissOutcome::Dismissed(p))
            }
        }
    }
}
