//! The reads (a session, a wallet, a machine's status, a pay by key: each expires what it finds
//! overdue, then reads again) and registering a machine.

use blepay_core::{DeviceId, IdempotencyKey, Session, SessionId, UserId, Wallet};
use blepay_store::{DeviceRecord, DeviceStatus, RegisterOutcome};

use crate::DynamoStore;
use crate::items::{
    self, Failure, device_from_item, device_item, device_key, get_s, session_from_item,
    session_key, wallet_from_item, wallet_key,
};

impl DynamoStore {
    pub(super) async fn session_once(
        &self,
        id: SessionId,
        now: u64,
    ) -> Result<Option<Session>, Failure> {
        let Some(item) = self.get(session_key(id)).await? else {
            return Ok(None);
        };
        let session = session_from_item(&item)?;
        if session.is_due_to_expire(now) {
            self.expire_one(&session, now).await?;
            return Err(Failure::Contention(
                "expired a due session; read again".into(),
            ));
        }
        Ok(Some(session))
    }

    pub(super) async fn wallet_once(&self, user: &UserId, now: u64) -> Result<Wallet, Failure> {
        let item = self.get(wallet_key(user)).await?;
        let w = wallet_from_item(item.as_ref())?;
        if self.expire_due_holds(&w, now).await? {
            return Err(Failure::Contention("expired due holds; read again".into()));
        }
        Ok(w.wallet)
    }

    pub(super) async fn device_status_once(
        &self,
        id: DeviceId,
        now: u64,
    ) -> Result<Option<DeviceStatus>, Failure> {
        let Some(item) = self.get(device_key(id)).await? else {
            self.shadow.forget(id);
            return Ok(None);
        };
        let d = device_from_item(&item)?;
        self.shadow.put(d.clone());
        if let Some(open) = d.open.as_ref().filter(|o| o.is_due_to_expire(now)) {
            self.expire_one(open, now).await?;
            return Err(Failure::Contention(
                "expired a due session; read again".into(),
            ));
        }
        Ok(Some(d.status()))
    }

    /// The session an earlier pay with `key` opened, expired first if it is due.
    pub(super) async fn find_pay_once(
        &self,
        user: &UserId,
        key: &IdempotencyKey,
        now: u64,
    ) -> Result<Option<Session>, Failure> {
        let Some(seen) = self.get(items::pay_key_key(user, key)).await? else {
            return Ok(None);
        };
        let sid = SessionId::parse(get_s(&seen, "session")?)
            .map_err(|_| items::corrupt("pay record", "session"))?;
        self.session_once(sid, now).await
    }

    /// Register a machine: one conditional `PutItem`.
    pub(super) async fn register_once(
        &self,
        device: &DeviceRecord,
    ) -> Result<RegisterOutcome, Failure> {
        // The device and its fleet entry (docs/dynamodb.md "Fleet and spending"), together.
        let fleet = aws_sdk_dynamodb::types::Put::builder()
            .table_name(&self.table)
            .set_item(Some(items::fleet_item(device.id)))
            .build()
            .map_err(items::build_error)?;
        let actions = vec![
            items::put_new(&self.table, device_item(device))?,
            aws_sdk_dynamodb::types::TransactWriteItem::builder()
                .put(fleet)
                .build(),
        ];
        match self.transact(actions).await? {
            super::attempts::Tx::Done => Ok(RegisterOutcome::Created),
            super::attempts::Tx::Cancelled(reasons)
                if reasons
                    .first()
                    .is_some_and(|(code, _)| code == "ConditionalCheckFailed") =>
            {
                Ok(RegisterOutcome::Exists)
            }
            super::attempts::Tx::Cancelled(_) => Err(Failure::Contention(
                "registering the device lost a race; again".into(),
            )),
        }
    }
}
