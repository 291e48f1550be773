//! The handlers: plain async functions over wire messages (`pb`), shared by the HTTP router, the
//! gRPC services and the Lambda functions. Each parses its input into domain types, asks the store,
//! and maps the outcome to an answer or an [`ApiError`].

use std::sync::Arc;

use blepay_core::{
    Amount, CloseReason, Currency, DeviceId, DeviceName, IdempotencyKey, KeyEpoch, KeyVersion,
    Session, SessionError, SessionId, SessionStatus, Slot, Tariff, Telemetry, UnitName, UserId,
    Wallet,
};
use blepay_proto::machine::{self, RefusalCode};
use blepay_proto::pb::v1 as pb;
use blepay_proto::{
    Advert, AdvertError, AdvertFlags, MasterKey, RequestFrame, derive_device_key, seal_response,
};
use blepay_store::{
    AdvertSignals, DeviceCall, DeviceCallOutcome, DeviceOp, DeviceOpResult, DeviceRecord,
    DeviceState, DeviceStatus, PayCommand, PayOutcome, RegisterOutcome, ResponseEncoder,
    SavedAnswer, Store, TopUpOutcome,
};
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::error::{ApiError, ErrorCode};
use crate::key_cache::{KeyCache, MachineKeys};
use crate::metrics::Metrics;
use crate::operator::{Action, ActionRecord, Operator};

/// Unix seconds, injectable for tests.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    })
}

/// How far (in 30 s slots) an advert's slot may be from the server's.
pub const SLOT_TOLERANCE: u32 = 1;

/// The service: configuration, store and clock. Cheap to clone.
#[derive(Clone)]
pub struct App {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    store: Arc<dyn Store>,
    clock: Clock,
    metrics: Metrics,
    keys: KeyCache,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// What answers a machine: an HTTP status and a body that is an authenticated frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceAnswer {
    pub code: Option<ErrorCode>,
    pub frame: Vec<u8>,
}

/// What one sweep did. Every session the clock closes is logged at INFO by the store that
/// committed the close ([`blepay_store::closed`]), whether the sweep met it or a read or write
/// found it overdue on the way (any operation that finds an overdue AUTHORIZED session, or a
/// machine request on a silent ACTIVE one, closes it first); those are not counted here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Swept {
    /// AUTHORIZED sessions past their start deadline, expired (holds released).
    pub expired: usize,
    /// ACTIVE sessions silent for the active timeout, settled at their last reported units.
    pub timed_out: usize,
}

impl Swept {
    pub const fn is_empty(&self) -> bool {
        self.expired == 0 && self.timed_out == 0
    }
}

impl App {
    pub fn new(config: Config, store: Arc<dyn Store>, clock: Clock) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                store,
                clock,
                metrics: Metrics::new(),
                keys: KeyCache::default(),
            }),
        }
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The process's metrics (`GET /metrics` on `blepay serve`).
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// Whether `op` may perform `action` (the table is [`crate::operator::Role::allows`]).
    ///
    /// # Errors
    /// FORBIDDEN, naming the role and the action; nothing was read or written.
    pub fn authorize(&self, op: &Operator, action: &Action) -> Result<(), ApiError> {
        if op.role.allows(action, self.config().support_refund_max) {
            Ok(())
        } else {
            tracing::warn!(principal = %op.principal, role = op.role.as_str(), ?action, "operator action forbidden");
            Err(ApiError::new(
                ErrorCode::Forbidden,
                format!("the {} role may not do this", op.role.as_str()),
            ))
        }
    }

    /// Record an operator action that changed something: a durable audit event in the store
    /// (`GET /v1/ops/audit`) and a structured log line (target `blepay::audit`). Called after
    /// the change succeeded, and again on a retry of it: an action with an idempotency key gets
    /// an event key derived from (principal, action, target, key), so a retry adds nothing, and
    /// an action whose record failed is recorded by its retry.
    ///
    /// # Errors
    /// RETRY_LATER / INTERNAL when the event could not be written.
    pub async fn record_action(&self, op: &Operator, rec: ActionRecord) -> Result<(), ApiError> {
        tracing::info!(
            target: "blepay::audit",
            principal = %op.principal,
            role = op.role.as_str(),
            action = rec.action,
            target_id = %rec.target,
            amount = rec.amount.map(Amount::minor),
            idempotency_key = rec.idempotency_key.as_deref(),
            "operator action"
        );
        self.write_audit_event(op, &rec).await
    }

    pub fn now(&self) -> u64 {
        (self.inner.clock)()
    }

    // ----------------------------------------------------------------------------------------
    // Phone
    // ----------------------------------------------------------------------------------------

    /// Verify an advert: who the machine is, its tariff and state (OFFLINE when the advert's
    /// link-down flag is set, FAULT when its fault flag is). No money moves.
    ///
    /// # Errors
    /// INVALID_ARGUMENT, ADVERT_INVALID, ADVERT_STALE, DEVICE_UNKNOWN, RETRY_LATER.
    pub async fn verify(&self, req: pb::VerifyRequest) -> Result<pb::VerifyResponse, ApiError> {
        let now = self.now();
        let (advert, status, _) = self.authentic_advert(&req.advert, now).await?;
        check_fresh(&advert, now)?;
        let state = status.state(now, self.config().offline_after_secs, signals(&advert));
        let d = &status.device;
        Ok(pb::VerifyResponse {
            device_id: d.id.to_string(),
            name: d.name.as_str().to_owned(),
            price_per_unit: d.tariff.price_per_unit.minor(),
            unit_name: d.tariff.unit_name.as_str().to_owned(),
            currency: d.tariff.currency.to_string(),
            state: device_state_pb(state) as i32,
            service_state: crate::devices::service_state_pb(d.service_state) as i32,
        })
    }

    /// Pay: hold `max_amount` and open a session the machine will be told about.
    ///
    /// # Errors
    /// INVALID_ARGUMENT, ADVERT_*, DEVICE_UNKNOWN/OFFLINE/FAULT/BUSY, TOO_MANY_UNSTARTED,
    /// RATE_LIMITED (with a retry-after), INSUFFICIENT_FUNDS, IDEMPOTENCY_KEY_REUSED,
    /// RETRY_LATER.
    pub async fn pay(
        &self,
        user: &UserId,
        req: pb::PayRequest,
    ) -> Result<pb::PayResponse, ApiError> {
        let now = self.now();
        let key = IdempotencyKey::parse(&req.idempotency_key)
            .map_err(|e| ApiError::invalid(format!("idempotencyKey: {e}")))?;
        let max_amount = Amount::positive(req.max_amount)
            .map_err(|e| ApiError::invalid(format!("maxAmount: {e}")))?;
        // The tag is checked under the keys the device accepts (its key epoch, a pending
        // rotation's; none once revoked), as the store last knew them (no read when it knows the
        // device: the store's pay conditions on the key state, so a stale answer is refused
        // there); DEVICE_UNKNOWN and a retired key version come before anything else too.
        let (advert, _, key_epoch) = self.authentic_advert_known(&req.advert, now).await?;
        let cmd = PayCommand {
            user: user.clone(),
            key,
            device: advert.device_id,
            slot: advert.slot,
            use_counter: advert.use_counter,
            max_amount,
            session_id: SessionId::from_bytes(rand::random()),
            now,
            start_timeout_secs: self.config().start_timeout_secs,
            offline_after_secs: self.config().offline_after_secs,
            signals: signals(&advert),
            limits: store_limits(self.config().pay_limits),
            daily_limit: self.config().pay_limits.daily_limit(),
            key_epoch,
        };
        if let Err(stale) = check_fresh(&advert, now) {
            // A retry of an earlier pay may carry the advert it was made with: answer it.
            return match self.inner.store.find_pay(user, &cmd.key, now).await? {
                Some(s) if cmd.is_retry_of(&s) => Ok(pay_response(&s)),
                _ => Err(stale),
            };
        }
        match self.inner.store.pay(&cmd).await? {
            PayOutcome::Created(s) => {
                tracing::info!(session = %s.id, device = %s.device_id, user = %s.user_id, hold = %s.hold, "session authorized");
                self.inner.metrics.session_opened();
                Ok(pay_response(&s))
            }
            PayOutcome::Replayed(s) => Ok(pay_response(&s)),
            PayOutcome::BelowUnitPrice { price, unit_name } => Err(ApiError::invalid(format!(
                "maxAmount {max_amount} is below the price of one {} ({price})",
                unit_name.as_str(),
            ))),
            PayOutcome::DeviceUnknown => Err(device_unknown(advert.device_id)),
            PayOutcome::DeviceOutOfService => Err(ApiError::new(
                ErrorCode::DeviceOutOfService,
                "the machine is out of service: it takes no payments",
            )),
            PayOutcome::SpendingLimit { limit, spent_today } => Err(ApiError::new(
                ErrorCode::SpendingLimit,
                format!(
                    "this pay would take today's spending ({spent_today} so far) above your daily limit of {limit}"
                ),
            )),
            PayOutcome::DeviceOffline => Err(ApiError::new(
                ErrorCode::DeviceOffline,
                "the machine is offline (not heard from recently, or its advert says its link is \
                 down): it could not start the session",
            )),
            PayOutcome::DeviceFault => Err(ApiError::new(
                ErrorCode::DeviceFault,
                "the machine reports a fault: it cannot serve a session",
            )),
            PayOutcome::DeviceBusy => Err(ApiError::new(
                ErrorCode::DeviceBusy,
                "the machine is serving another session",
            )),
            PayOutcome::AdvertUsed => Err(ApiError::new(
                ErrorCode::AdvertUsed,
                "this advert already paid for a session; scan the machine again",
            )),
            PayOutcome::InsufficientFunds { available } => Err(ApiError::new(
                ErrorCode::InsufficientFunds,
                format!("available balance {available} is below maxAmount {max_amount}"),
            )),
            PayOutcome::KeyReused => Err(key_reused()),
            PayOutcome::KeyRefused => Err(advert_not_authentic()),
            PayOutcome::TooManyUnstarted { max } => Err(ApiError::new(
                ErrorCode::TooManyUnstarted,
                format!(
                    "you already have {max} paid session(s) waiting for a machine's start button; \
                     start or let them expire first"
                ),
            )),
            PayOutcome::RateLimited { retry_after_secs } => Err(ApiError::new(
                ErrorCode::RateLimited,
                format!("too many sessions opened recently; retry in {retry_after_secs} s"),
            )
            .with_retry_after(retry_after_secs)),
        }
    }

    /// The caller's own session.
    ///
    /// # Errors
    /// INVALID_ARGUMENT, SESSION_NOT_FOUND (also for another user's session).
    pub async fn user_session(&self, user: &UserId, id: &str) -> Result<pb::Session, ApiError> {
        let s = self.session(id).await?;
        if &s.user_id != user {
            return Err(session_not_found());
        }
        Ok(session_pb(&s))
    }

    /// A wallet (the caller's, or any for operators).
    ///
    /// # Errors
    /// RETRY_LATER on storage trouble.
    pub async fn wallet(&self, user: &UserId) -> Result<pb::Wallet, ApiError> {
        let now = self.now();
        let w = self.inner.store.wallet(user, now).await?;
        let spending = self.inner.store.spending(user, now).await?;
        let mut out = self.wallet_pb(user, &w);
        self.spending_pb(&spending, &mut out);
        Ok(out)
    }

    // ----------------------------------------------------------------------------------------
    // Operator
    // ----------------------------------------------------------------------------------------

    /// Register a machine; answers its device key, to provision into it.
    ///
    /// # Errors
    /// INVALID_ARGUMENT, DEVICE_EXISTS.
    pub async fn register_device(
        &self,
        op: &Operator,
        req: pb::RegisterDeviceRequest,
    ) -> Result<pb::RegisterDeviceResponse, ApiError> {
        self.authorize(op, &Action::RegisterDevice)?;
        let id = DeviceId::parse(&req.device_id)
            .map_err(|e| ApiError::invalid(format!("deviceId: {e}")))?;
        let name =
            DeviceName::parse(&req.name).map_err(|e| ApiError::invalid(format!("name: {e}")))?;
        let price = Amount::positive(req.price_per_unit)
            .map_err(|e| ApiError::invalid(format!("pricePerUnit: {e}")))?;
        let unit_name = UnitName::parse(&req.unit_name)
            .map_err(|e| ApiError::invalid(format!("unitName: {e}")))?;
        let currency = Currency::parse(&req.currency)
            .map_err(|e| ApiError::invalid(format!("currency: {e}")))?;
        if currency != self.config().currency {
            return Err(ApiError::invalid(format!(
                "currency: this deployment's wallets hold {}, so tariffs must be in {}",
                self.config().currency,
                self.config().currency
            )));
        }
        let (key_version, master) = self.config().keyring.current();
        let record = DeviceRecord {
            id,
            name,
            tariff: Tariff {
                price_per_unit: price,
                unit_name,
                currency,
            },
            key_version,
            created_at: self.now(),
            service_state: blepay_store::ServiceState::InService,
            keys: blepay_store::DeviceKeys::default(),
        };
        match self
            .inner
            .store
            .register_device(&record, self.now())
            .await?
        {
            RegisterOutcome::Created => {
                self.record_action(
                    op,
                    ActionRecord {
                        action: "device.register",
                        target: id.to_string(),
                        amount: None,
                        idempotency_key: None,
                    },
                )
                .await?;
                Ok(pb::RegisterDeviceResponse {
                    device_id: id.to_string(),
                    key_version: u32::from(key_version.get()),
                    device_key: derive_device_key(master, key_version, id, KeyEpoch::FIRST)
                        .expose_hex(),
                    key_epoch: KeyEpoch::FIRST.get(),
                })
            }
            RegisterOutcome::Exists => Err(ApiError::new(
                ErrorCode::DeviceExists,
                format!("device {id} is already registered"),
            )),
        }
    }

    /// Credit a wallet, once per idempotency key.
    ///
    /// # Errors
    /// INVALID_ARGUMENT, IDEMPOTENCY_KEY_REUSED.
    pub async fn top_up(
        &self,
        op: &Operator,
        req: pb::TopUpRequest,
    ) -> Result<pb::Wallet, ApiError> {
        self.authorize(op, &Action::TopUp)?;
        let user =
            UserId::parse(&req.user_id).map_err(|e| ApiError::invalid(format!("userId: {e}")))?;
        let amount =
            Amount::positive(req.amount).map_err(|e| ApiError::invalid(format!("amount: {e}")))?;
        let key = IdempotencyKey::parse(&req.idempotency_key)
            .map_err(|e| ApiError::invalid(format!("idempotencyKey: {e}")))?;
        match self
            .inner
            .store
            .top_up(&user, amount, &key, &op.principal, self.now())
            .await?
        {
            TopUpOutcome::Credited(w) | TopUpOutcome::Replayed(w) => {
                self.record_action(
                    op,
                    ActionRecord {
                        action: "wallet.top_up",
                        target: user.to_string(),
                        amount: Some(amount),
                        idempotency_key: Some(key.to_string()),
                    },
                )
                .await?;
                let spending = self.inner.store.spending(&user, self.now()).await?;
                let mut out = self.wallet_pb(&user, &w);
                self.spending_pb(&spending, &mut out);
                Ok(out)
            }
            TopUpOutcome::KeyReused => Err(key_reused()),
            TopUpOutcome::LimitExceeded => Err(ApiError::invalid(format!(
                "amount: the wallet's lifetime total (all it was ever credited) would exceed the \
                 maximum of {} minor units",
                Amount::MAX
            ))),
        }
    }

    /// Any session, for operators.
    ///
    /// # Errors
    /// INVALID_ARGUMENT, SESSION_NOT_FOUND.
    pub async fn ops_session(&self, op: &Operator, id: &str) -> Result<pb::Session, ApiError> {
        self.authorize(op, &Action::ReadMoney)?;
        Ok(session_pb(&self.session(id).await?))
    }

    /// A machine as the operator sees it: tariff, state, last seen, open session, latest
    /// telemetry. Its state is what the server knows without an advert: OFFLINE when silent for
    /// `BLEPAY_OFFLINE_AFTER_SECS`, FAULT when its latest heartbeat reported fault codes.
    ///
    /// # Errors
    /// INVALID_ARGUMENT (not 16 hex characters), DEVICE_UNKNOWN, RETRY_LATER.
    pub async fn ops_device(&self, op: &Operator, id: &str) -> Result<pb::Device, ApiError> {
        self.authorize(op, &Action::ReadDevices)?;
        let id = DeviceId::parse(id).map_err(|e| ApiError::invalid(format!("deviceId: {e}")))?;
        let now = self.now();
        let status = self
            .inner
            .store
            .device_status(id, now)
            .await?
            .ok_or_else(|| device_unknown(id))?;
        // The latest heartbeat's fault codes are the machine's own word, as the advert's fault
        // flag is: the same rule decides (DeviceStatus::state, via `listed_state`).
        Ok(self.device_pb(&status, now))
    }

    /// Parse a user id from a path or request (operators name users).
    ///
    /// # Errors
    /// INVALID_ARGUMENT.
    pub fn parse_user(s: &str) -> Result<UserId, ApiError> {
        UserId::parse(s).map_err(|e| ApiError::invalid(format!("userId: {e}")))
    }

    // ----------------------------------------------------------------------------------------
    // Machine
    // ----------------------------------------------------------------------------------------

    /// One machine exchange: verify the frame, run the request once, answer with an authenticated
    /// frame. Unauthenticated failures are errors (the caller cannot be answered in a frame).
    ///
    /// A frame under a key version that is not the device's registered one (a retired master
    /// key, still in the keyring to verify adverts and frames of devices not yet re-keyed) is
    /// refused exactly as a forged one — same code, status and body, decided after the tag check
    /// — so the answer tells nothing about which devices exist or how they are keyed.
    ///
    /// An authenticated frame whose body does not decode is a FRAME_INVALID refusal that the
    /// store saves with its sequence number like any other (docs/protocol.md §3.3).
    ///
    /// # Errors
    /// FRAME_INVALID (unparseable frame), DEVICE_AUTH_FAILED (bad tag, a key version not in the
    /// keyring or not the device's registered one), DEVICE_UNKNOWN, RETRY_LATER.
    pub async fn device_exchange(&self, bytes: &[u8]) -> Result<DeviceAnswer, ApiError> {
        let frame = RequestFrame::parse(bytes)
            .map_err(|e| ApiError::new(ErrorCode::FrameInvalid, e.to_string()))?;
        let crate::device_keys::FrameKeys {
            key_epoch,
            key,
            key_update,
            wrapped,
        } = self.frame_keys(&frame).await.inspect_err(|e| {
            // A storage failure is logged where it is mapped (error.rs).
            if e.code != ErrorCode::RetryLater {
                tracing::info!(device = %frame.device_id(), code = e.code.as_str(), "machine request refused: not authenticated");
            }
        })?;
        let now = self.now();
        let tag = frame.tag();
        let seal = |body: &[u8]| seal_response(&key, &tag, frame.seq(), now, body);
        let refuse = |code: RefusalCode, message: String| DeviceAnswer {
            code: Some(ErrorCode::from(code)),
            frame: seal(&machine::Answer::refused(code, message).encode()),
        };
        // An undecodable body still runs through the store: its refusal is the saved answer.
        let op = decode_device_request(frame.body()).unwrap_or_else(DeviceOp::Invalid);
        let active_timeout = self.config().active_timeout_secs;
        let call = DeviceCall {
            device: frame.device_id(),
            key_version: frame.key_version(),
            key_epoch,
            key_update,
            seq: frame.seq(),
            digest: Sha256::digest(bytes).into(),
            op,
            now,
            active_timeout_secs: active_timeout,
        };
        // The store saves the sealed answer frame, so a byte-identical retry gets a byte-identical
        // answer (its server_time is the original one: docs/protocol.md §3.3).
        let (seq, enc_key) = (frame.seq(), key.clone());
        // The refusal code travels with the saved answer, so a retry gets the same HTTP status
        // without the service decoding its own frame.
        // What the answer the store saved says happened (the last encoding is the one saved: a
        // store may encode for an attempt it then re-runs): logged and counted once it is.
        let result = Arc::new(std::sync::Mutex::new(None::<DeviceOpResult>));
        let result_seen = Arc::clone(&result);
        let encoder: ResponseEncoder = Arc::new(move |r: &DeviceOpResult| {
            if let Ok(mut seen) = result_seen.lock() {
                *seen = Some(r.clone());
            }
            let answer = device_answer(r, active_timeout);
            SavedAnswer {
                frame: seal_response(
                    &enc_key,
                    &tag,
                    seq,
                    now,
                    &answer.encode_with(wrapped.as_ref()),
                ),
                code: answer.refusal().map(|f| f.code.as_str().to_owned()),
            }
        });
        let outcome = self.inner.store.device_call(&call, encoder).await?;
        if matches!(outcome, DeviceCallOutcome::Fresh(_)) {
            let saved = result.lock().ok().and_then(|mut r| r.take());
            if let Some(r) = saved {
                self.machine_result_logged(frame.device_id(), &r, now);
            }
        }
        match outcome {
            DeviceCallOutcome::Fresh(answer) | DeviceCallOutcome::Retry(answer) => {
                Ok(DeviceAnswer {
                    code: answer.code.as_deref().and_then(ErrorCode::parse),
                    frame: answer.frame,
                })
            }
            DeviceCallOutcome::Replayed { last_seq } => {
                tracing::info!(device = %frame.device_id(), seq = frame.seq(), last_seq, "machine request refused: sequence number replayed");
                Ok(refuse(
                    RefusalCode::SequenceReplayed,
                    format!(
                        "sequence number {} is not above the last accepted {last_seq}",
                        frame.seq()
                    ),
                ))
            }
            DeviceCallOutcome::DeviceUnknown => {
                tracing::info!(device = %frame.device_id(), "machine request refused: device not registered");
                Err(device_unknown(frame.device_id()))
            }
            DeviceCallOutcome::KeyVersionRefused => {
                tracing::warn!(
                    device = %frame.device_id(),
                    key_version = frame.key_version().get(),
                    "frame tagged under a key version the device is not registered with"
                );
                Err(frame_not_authentic())
            }
        }
    }

    /// Log (and count) what a fresh machine request did: every session transition and every
    /// refusal at INFO, with ids.
    fn machine_result_logged(&self, device: DeviceId, r: &DeviceOpResult, now: u64) {
        match r {
            DeviceOpResult::Started(s) if s.started_at == Some(now) => {
                tracing::info!(session = %s.id, device = %device, user = %s.user_id, hold = %s.hold, "session started");
            }
            DeviceOpResult::Started(s) => {
                tracing::info!(session = %s.id, device = %device, "press on a session already started: its terms again");
            }
            DeviceOpResult::Session(s)
                if s.status == SessionStatus::Settled
                    && s.closed_by == Some(CloseReason::Report)
                    && s.ended_at == Some(now) =>
            {
                tracing::info!(session = %s.id, device = %device, user = %s.user_id, units = s.units.get(), captured = %s.amount, released = %s.hold.checked_sub(s.amount).unwrap_or(Amount::ZERO), "session settled by its final report");
                self.metrics().session_settled_by_report();
            }
            DeviceOpResult::Session(s) => {
                tracing::info!(session = %s.id, device = %device, status = s.status.as_str(), units = s.units.get(), "session reported");
            }
            DeviceOpResult::NoSessionWaiting => {
                tracing::info!(device = %device, "press refused: no session waiting (pay in the app first)");
            }
            DeviceOpResult::SessionNotFound => {
                tracing::info!(device = %device, "machine request refused: no such session");
            }
            DeviceOpResult::Refused(e) => {
                tracing::info!(device = %device, error = %e, "machine request refused");
            }
            DeviceOpResult::FrameInvalid(m) => {
                tracing::info!(device = %device, error = %m, "machine request refused: undecodable body");
            }
            DeviceOpResult::Grants(_) | DeviceOpResult::Ack => {}
        }
    }

    /// One sweep: expire sessions whose start deadline passed, and settle ACTIVE sessions with
    /// no report for `BLEPAY_ACTIVE_TIMEOUT_SECS` at their last reported units.
    ///
    /// # Errors
    /// On storage failure (what was done before it stays done; the next sweep retries).
    pub async fn sweep(&self) -> Result<Swept, ApiError> {
        sweep(
            self.inner.store.as_ref(),
            self.now(),
            self.config().active_timeout_secs,
        )
        .await
        .map_err(ApiError::from)
    }

    // ----------------------------------------------------------------------------------------
    // Helpers
    // ----------------------------------------------------------------------------------------

    /// Parse an advert, read its device and check the tag under the key epochs the device
    /// accepts ([`blepay_store::DeviceKeys::accepted`]: none once revoked, so a revoked device's
    /// advert is answered exactly as a forged one). An unregistered device's advert is checked
    /// under epoch 0 (DEVICE_UNKNOWN only for a correctly tagged one); a retired key version is
    /// ADVERT_INVALID. Answers the advert, the device and the epoch its tag verified under.
    async fn authentic_advert(
        &self,
        bytes: &[u8],
        now: u64,
    ) -> Result<(Advert, DeviceStatus, KeyEpoch), ApiError> {
        self.authentic_advert_from(bytes, now, false).await
    }

    /// [`authentic_advert`](Self::authentic_advert) under the device as the store last knew it
    /// ([`Store::device_known`], for pay only: its write conditions on the key state); an advert
    /// that does not verify under that knowledge is checked again after a read.
    async fn authentic_advert_known(
        &self,
        bytes: &[u8],
        now: u64,
    ) -> Result<(Advert, DeviceStatus, KeyEpoch), ApiError> {
        match self.authentic_advert_from(bytes, now, true).await {
            Err(e) if e.code == ErrorCode::AdvertInvalid => {
                self.authentic_advert_from(bytes, now, false).await
            }
            other => other,
        }
    }

    async fn authentic_advert_from(
        &self,
        bytes: &[u8],
        now: u64,
        known: bool,
    ) -> Result<(Advert, DeviceStatus, KeyEpoch), ApiError> {
        let advert = Advert::parse(bytes).map_err(|e| match e {
            AdvertError::WrongLength { .. } => ApiError::invalid(format!("advert: {e}")),
            _ => ApiError::new(ErrorCode::AdvertInvalid, e.to_string()),
        })?;
        let master = self
            .config()
            .keyring
            .get(advert.key_version)
            .ok_or_else(|| ApiError::new(ErrorCode::AdvertInvalid, "unknown key version"))?;
        let store = &self.inner.store;
        let status = if known {
            store.device_known(advert.device_id, now).await?
        } else {
            store.device_status(advert.device_id, now).await?
        };
        let Some(status) = status else {
            // Unregistered: derived, not cached (key_cache.rs).
            let key = derive_device_key(
                master,
                advert.key_version,
                advert.device_id,
                KeyEpoch::FIRST,
            );
            return Err(if advert.verify(&key).is_ok() {
                device_unknown(advert.device_id)
            } else {
                advert_not_authentic()
            });
        };
        let accepted: Vec<KeyEpoch> = status.device.keys.accepted().collect();
        let epoch = self
            .device_keys(master, advert.key_version, advert.device_id, &accepted)
            .iter()
            .find(|(_, key)| advert.verify(key).is_ok())
            .map(|(epoch, _)| epoch)
            .ok_or_else(advert_not_authentic)?;
        if status.device.key_version != advert.key_version {
            return Err(ApiError::new(
                ErrorCode::AdvertInvalid,
                "advert signed with a retired key version",
            ));
        }
        Ok((advert, status, epoch))
    }

    /// The derived keys of `device`'s `accepted` epochs (cached: key_cache.rs).
    pub(crate) fn device_keys(
        &self,
        master: &MasterKey,
        version: KeyVersion,
        device: DeviceId,
        accepted: &[KeyEpoch],
    ) -> Arc<MachineKeys> {
        self.inner.keys.keys(master, version, device, accepted)
    }

    /// Drop `device`'s cached keys (revoked, rotated).
    pub(crate) fn forget_device_keys(&self, device: DeviceId) {
        self.inner.keys.forget(device);
    }

    async fn session(&self, id: &str) -> Result<Session, ApiError> {
        let id = SessionId::parse(id).map_err(|e| ApiError::invalid(format!("sessionId: {e}")))?;
        self.inner
            .store
            .session(id, self.now())
            .await?
            .ok_or_else(session_not_found)
    }

    pub(crate) fn wallet_pb(&self, user: &UserId, w: &Wallet) -> pb::Wallet {
        pb::Wallet {
            user_id: user.to_string(),
            available: w.available.minor(),
            held: w.held.minor(),
            spent: w.spent.minor(),
            currency: self.config().currency.to_string(),
            refunded: w.refunded.minor(),
            ..pb::Wallet::default()
        }
    }
}

/// One sweep on `store` at `now` (`blepay serve`'s background loop and the Lambda sweeper).
///
/// # Errors
/// The store's.
pub async fn sweep(
    store: &dyn Store,
    now: u64,
    active_timeout_secs: u64,
) -> Result<Swept, blepay_store::StoreError> {
    // Each closed session is logged by the store as it commits it (blepay_store::closed), as are
    // those a read or write met overdue on the way.
    let expired = store.expire_due(now).await?;
    let timed_out = store.time_out_active(now, active_timeout_secs).await?;
    Ok(Swept {
        expired: expired.len(),
        timed_out: timed_out.len(),
    })
}

/// What the verified advert says about the machine's link and health.
/// The store's view of the configured per-user pay limits.
fn store_limits(l: crate::config::PayLimits) -> blepay_store::PayLimits {
    blepay_store::PayLimits {
        max_unstarted_per_user: l.max_unstarted_per_user,
        rate_max: l.rate_max,
        rate_window_secs: l.rate_window_secs,
    }
}

fn signals(advert: &Advert) -> AdvertSignals {
    AdvertSignals {
        link_down: advert.flags.contains(AdvertFlags::LINK_DOWN),
        fault: advert.flags.contains(AdvertFlags::FAULT),
    }
}

fn check_fresh(advert: &Advert, now: u64) -> Result<(), ApiError> {
    let server = Slot::at(now);
    if advert.slot.is_within(server, SLOT_TOLERANCE) {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::AdvertStale,
            format!(
                "advert slot {} is not within {SLOT_TOLERANCE} of the server's {}",
                advert.slot.get(),
                server.get()
            ),
        ))
    }
}

/// The one answer to a frame that is not authentic for its device: a bad tag, a key version
/// outside the keyring, or one the device is not registered with are indistinguishable.
fn advert_not_authentic() -> ApiError {
    ApiError::new(ErrorCode::AdvertInvalid, "advert tag does not verify")
}

pub(crate) fn frame_not_authentic() -> ApiError {
    ApiError::new(ErrorCode::DeviceAuthFailed, "frame tag does not verify")
}

pub(crate) fn device_unknown(id: DeviceId) -> ApiError {
    ApiError::new(
        ErrorCode::DeviceUnknown,
        format!("device {id} is not registered"),
    )
}

pub(crate) fn session_not_found() -> ApiError {
    ApiError::new(ErrorCode::SessionNotFound, "no such session")
}

pub(crate) fn key_reused() -> ApiError {
    ApiError::new(
        ErrorCode::IdempotencyKeyReused,
        "this idempotency key was used for a different request",
    )
}

pub(crate) fn device_state_pb(s: DeviceState) -> pb::DeviceState {
    match s {
        DeviceState::Idle => pb::DeviceState::Idle,
        DeviceState::Busy => pb::DeviceState::Busy,
        DeviceState::Offline => pb::DeviceState::Offline,
        DeviceState::Fault => pb::DeviceState::Fault,
    }
}

pub(crate) fn session_status_pb(s: SessionStatus) -> pb::SessionStatus {
    match s {
        SessionStatus::Authorized => pb::SessionStatus::Authorized,
        SessionStatus::Active => pb::SessionStatus::Active,
        SessionStatus::Settled => pb::SessionStatus::Settled,
        SessionStatus::Expired => pb::SessionStatus::Expired,
    }
}

pub(crate) fn secs(t: u64) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}

fn pay_response(s: &Session) -> pb::PayResponse {
    pb::PayResponse {
        session_id: s.id.to_string(),
        status: session_status_pb(s.status) as i32,
        hold_amount: s.hold.minor(),
        device_id: s.device_id.to_string(),
        expires_at: secs(s.expires_at),
    }
}

/// A session as the API shows it.
pub fn session_pb(s: &Session) -> pb::Session {
    pb::Session {
        session_id: s.id.to_string(),
        status: session_status_pb(s.status) as i32,
        device_id: s.device_id.to_string(),
        user_id: s.user_id.to_string(),
        hold_amount: s.hold.minor(),
        units: s.units.get(),
        amount: s.amount.minor(),
        price_per_unit: s.tariff.price_per_unit.minor(),
        unit_name: s.tariff.unit_name.as_str().to_owned(),
        currency: s.tariff.currency.to_string(),
        created_at: secs(s.created_at),
        expires_at: secs(s.expires_at),
        started_at: s.started_at.map_or(0, secs),
        ended_at: s.ended_at.map_or(0, secs),
        use_counter: u32::from(s.use_counter.get()),
        closed_by: s
            .closed_by
            .map_or(pb::CloseReason::Unspecified, close_reason_pb) as i32,
        last_report_at: s.last_report_at.map_or(0, secs),
        late_report: s.late_report.as_ref().map(|l| pb::LateReport {
            units: l.units.get(),
            at: secs(l.at),
            charged: l.charged.minor(),
        }),
        refunded: s.refunded.minor(),
    }
}

pub(crate) fn telemetry_pb(t: &Telemetry) -> pb::Telemetry {
    pb::Telemetry {
        firmware_version: t.firmware_version.clone(),
        fault_codes: t.fault_codes.clone(),
        signal_quality: u32::from(t.signal_quality),
        uptime_secs: t.uptime_secs,
        boot_count: t.boot_count,
        outbox_depth: t.outbox_depth,
        lifetime_units: t.lifetime_units,
    }
}

fn close_reason_pb(r: CloseReason) -> pb::CloseReason {
    match r {
        CloseReason::Report => pb::CloseReason::Report,
        CloseReason::Timeout => pb::CloseReason::Timeout,
        CloseReason::Operator => pb::CloseReason::Operator,
    }
}

/// Decode a machine request body into a domain operation (the codec is
/// `blepay_proto::machine`; its error message goes into the refusal the machine gets).
fn decode_device_request(body: &[u8]) -> Result<DeviceOp, String> {
    match machine::Request::decode(body).map_err(|e| e.to_string())? {
        machine::Request::Press => Ok(DeviceOp::Press),
        machine::Request::Heartbeat(telemetry) => Ok(DeviceOp::Heartbeat(telemetry)),
        machine::Request::Poll => Ok(DeviceOp::Poll),
        machine::Request::Start { session } => Ok(DeviceOp::Start { session }),
        machine::Request::Report {
            session,
            units,
            last,
        } => Ok(DeviceOp::Report {
            session,
            units,
            last,
        }),
    }
}

/// The typed answer for a device operation's result. A press answer's grant carries the report
/// deadline (`active_timeout_secs` after the start: the server closes the session by timeout if no
/// report reaches it by then).
pub fn device_answer(r: &DeviceOpResult, active_timeout_secs: u64) -> machine::Answer {
    match r {
        DeviceOpResult::Started(s) => machine::Answer::Started(Ok(machine::Grant {
            session: s.id,
            hold: s.hold,
            price_per_unit: s.tariff.price_per_unit,
            // ACTIVE, so it has one; the start deadline only if the store answered otherwise.
            expires_at: s
                .report_deadline(active_timeout_secs)
                .unwrap_or(s.expires_at),
            use_counter: s.use_counter,
        })),
        DeviceOpResult::NoSessionWaiting => machine::Answer::refused(
            RefusalCode::NoSessionWaiting,
            "no session is waiting on this machine: pay in the app first",
        ),
        DeviceOpResult::Ack => machine::Answer::Ack,
        DeviceOpResult::Grants(sessions) => {
            machine::Answer::grants(sessions.iter().map(|s| machine::Grant {
                session: s.id,
                hold: s.hold,
                price_per_unit: s.tariff.price_per_unit,
                expires_at: s.expires_at,
                use_counter: s.use_counter,
            }))
        }
        DeviceOpResult::Session(s) => machine::Answer::Session {
            status: s.status.into(),
            amount: s.amount.minor(),
        },
        DeviceOpResult::SessionNotFound => machine::Answer::refused(
            RefusalCode::SessionNotFound,
            "no such session on this machine",
        ),
        DeviceOpResult::Refused(e) => {
            let code = match e {
                SessionError::Expired => RefusalCode::SessionExpired,
                SessionError::NotStartable(_) => RefusalCode::SessionNotStartable,
                SessionError::NotStarted => RefusalCode::SessionNotStarted,
                SessionError::ReportConflict => RefusalCode::ReportConflict,
            };
            machine::Answer::refused(code, e.to_string())
        }
        DeviceOpResult::FrameInvalid(reason) => {
            machine::Answer::refused(RefusalCode::FrameInvalid, reason.clone())
        }
    }
}
