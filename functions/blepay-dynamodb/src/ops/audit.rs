//! The audit: one consistent scan, tallied by the shared reconciliation
//! ([`blepay_store::decide::AuditTally`]).

use aws_sdk_dynamodb::types::AttributeValue;
use blepay_core::UserId;
use blepay_store::Audit;
use blepay_store::decide::AuditTally;

use crate::DynamoStore;
use crate::items::{self, Failure, Item, get_n, get_s, session_from_item, wallet_from_item};

impl DynamoStore {
    pub(super) async fn audit_once(&self) -> Result<Audit, Failure> {
        let mut tally = AuditTally::default();
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .client
                .scan()
                .table_name(&self.table)
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| items::sdk_error(&e))?;
            for item in out.items() {
                match item.get("type") {
                    Some(AttributeValue::S(t)) if t == "WALLET" => {
                        let w = wallet_from_item(Some(item))?.wallet;
                        let user = UserId::parse(get_s(item, "user")?)
                            .map_err(|_| items::corrupt("wallet", "user"))?;
                        tally.wallet(user, &w);
                    }
                    Some(AttributeValue::S(t)) if t == "SESSION" => {
                        let x = session_from_item(item)?;
                        if x.status.is_open() {
                            tally.open_hold(x.hold);
                        }
                        if !x.refunded.is_zero() {
                            tally.session_refunds(x.amount, x.refunded);
                        }
                    }
                    Some(AttributeValue::S(t)) if t == "TOPUP" => {
                        tally.provider_topup(&super::topups::topup_from_item(item)?.0);
                    }
                    Some(AttributeValue::S(t)) if t == "LEDGER" => {
                        tally.ledger_entry(
                            get_s(item, "kind")?,
                            get_s(item, "debit")?,
                            get_s(item, "credit")?,
                            get_n(item, "amount")?,
                        );
                    }
                    _ => {}
                }
            }
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        Ok(tally.finish()?)
    }
}
