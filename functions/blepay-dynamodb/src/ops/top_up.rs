//! Top-up: one read (wallet and key record), one transaction.

use std::collections::HashMap;

use crate::DynamoStore;
use crate::items::{
    self, Failure, Item, Upd, get_n, get_s, n, put_new, s, wallet_from_item, wallet_key,
};
use aws_sdk_dynamodb::types::AttributeValue;
use blepay_core::{Amount, IdempotencyKey, UserId};
use blepay_store::decide::{
    NewTopUp, TopUpDecision, TopUpFacts, decide_top_up, top_up_fingerprint,
};
use blepay_store::{StoreError, TopUpOutcome};

impl DynamoStore {
    pub(super) async fn top_up_once(
        &self,
        user: &UserId,
        amount: Amount,
        key: &IdempotencyKey,
        actor: &str,
        now: u64,
    ) -> Result<TopUpOutcome, Failure> {
        let [wallet, seen, ledger_row] = <[Option<Item>; 3]>::try_from(
            self.batch_get(vec![
                wallet_key(user),
                items::topup_key_key(user, key),
                items::topup_ledger_key(user, key),
            ])
            .await?,
        )
        .map_err(|_| StoreError::Internal("BatchGetItem answered the wrong count".into()))?;
        let w = wallet_from_item(wallet.as_ref())?;
        if self.expire_due_holds(&w, now).await? {
            return Err(Failure::Contention("expired due holds; read again".into()));
        }
        let fingerprint = top_up_fingerprint(amount);
        // The key record, or else the deterministic ledger row the credit wrote: a record that
        // expired (written with a TTL by an earlier build) must not make the retry fail on the
        // row forever (issue 10, L5).
        let prior = match (&seen, &ledger_row) {
            (Some(seen), _) => Some(get_s(seen, "fingerprint")?.to_owned()),
            (None, Some(row)) => Some(top_up_fingerprint(
                Amount::new(get_n(row, "amount")?)
                    .map_err(|_| items::corrupt("ledger entry", "amount"))?,
            )),
            (None, None) => None,
        };
        let facts = TopUpFacts {
            user,
            amount,
            prior: prior.as_deref(),
            wallet: w.wallet,
        };
        let NewTopUp {
            wallet: after,
            entry,
        } = match decide_top_up(&facts)? {
            TopUpDecision::Answer(outcome) => return Ok(outcome),
            TopUpDecision::Credit(new) => new,
        };
        let mut wallet_upd = Upd::new(wallet_key(user))
            .set("available = :a, held = :h, spent = :s, #type = :type, #user = :user")
            .set("holds = if_not_exists(holds, :empty)")
            .name("#type", "type")
            .name("#user", "user")
            .val(":a", n(after.available.minor()))
            .val(":h", n(after.held.minor()))
            .val(":s", n(after.spent.minor()))
            .val(":type", s("WALLET"))
            .val(":user", s(user.as_str()))
            .val(":empty", AttributeValue::M(HashMap::new()));
        wallet_upd = if w.exists {
            wallet_upd
                .cond("available = :pa AND held = :ph AND spent = :ps")
                .val(":pa", n(w.wallet.available.minor()))
                .val(":ph", n(w.wallet.held.minor()))
                .val(":ps", n(w.wallet.spent.minor()))
        } else {
            wallet_upd.cond("attribute_not_exists(pk)")
        };
        let mut record = items::topup_key_key(user, key);
        record.extend([
            ("type".to_string(), s("IDEMPOTENCY")),
            ("fingerprint".to_string(), s(&fingerprint)),
            // No TTL: the record lives as long as the TOPUP ledger row it protects (issue 10, L5).
        ]);
        let actions = vec![
            wallet_upd.into_transact(&self.table)?,
            put_new(&self.table, record)?,
            put_new(
                &self.table,
                items::with_actor(
                    items::ledger_item(&entry, now, None, &items::topup_ledger_id(user, key)),
                    actor,
                ),
            )?,
        ];
        self.transact_or_rerun(actions).await?;
        Ok(TopUpOutcome::Credited(after))
    }
}
