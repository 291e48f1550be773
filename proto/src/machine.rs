//! The machine messages: what travels inside the authenticated frames of [`crate::frame`], typed,
//! in both directions. The machine encodes [`Request`]s and decodes [`Answer`]s; the server
//! decodes requests and encodes answers — with this one module, so the two sides cannot disagree
//! on a field, a code or a message.
//!
//! The bytes are the protobuf messages `blepay.v1.DeviceRequest` and `blepay.v1.DeviceResponse`
//! (`proto/blepay/v1/blepay.proto`, docs/protocol.md §3); [`Request::to_pb`] and
//! [`Answer::to_pb`] give the wire structs for anything that needs them (the JSON view of a
//! message, gRPC).
//!
//! Decoders are total: malformed bytes are an `Err` value, never a panic (property tests in
//! `tests/decoders.rs`). An answer is decoded knowing what it answers ([`RequestKind`]): a poll
//! answer carries grants, a start or report answer the session's status and amount, either may be
//! a [`Refusal`]. A press answer carries the started session's terms; a heartbeat answer nothing.

use alloc::string::String;
use alloc::vec::Vec;

use blepay_core::{
    Amount, SessionId, SessionStatus, Telemetry, TelemetryError, Units, UseCounter, units_for_hold,
};
use prost::Message;

use crate::pb::v1 as pb;

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// A machine request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// The user pressed start: start the session waiting on this machine, whatever it is. The
    /// answer is [`Answer::Started`] with its terms, or a refusal (`NO_SESSION_WAITING`,
    /// `SESSION_EXPIRED`).
    Press,
    /// The idle machine's rare sign of life, with its telemetry. The answer is [`Answer::Ack`].
    Heartbeat(Telemetry),
    /// Legacy: "anything for me?" — the answer lists the grants waiting for this machine. The
    /// firmware no longer polls; the server still answers.
    Poll,
    /// Legacy: the start button was pressed for `session` (learnt by polling).
    Start {
        /// The session to start.
        session: SessionId,
    },
    /// `units` dispensed so far (cumulative); `last` ends and settles the session.
    Report {
        /// The session.
        session: SessionId,
        /// Cumulative units.
        units: Units,
        /// The final report.
        last: bool,
    },
}

/// Which request an answer answers (it decides how the answer is read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// A press: the answer carries the started session's terms.
    Press,
    /// A heartbeat: the answer carries nothing but the server time.
    Heartbeat,
    /// A poll: the answer carries grants.
    Poll,
    /// A start: the answer carries the session's status.
    Start,
    /// A report: the answer carries the session's status and the captured amount.
    Report,
}

/// Why a request body does not decode. The messages are part of the answer the server seals
/// (`error_message`), so they are stable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Not a `DeviceRequest` protobuf message.
    #[error("request body: {0}")]
    Body(prost::DecodeError),
    /// A message with no operation set.
    #[error("request body names no operation")]
    NoOperation,
    /// A session id that is not 16 bytes.
    #[error("sessionId must be 16 bytes, got {len}")]
    SessionId {
        /// Its length.
        len: usize,
    },
    /// Telemetry outside its limits.
    #[error("telemetry: {0}")]
    Telemetry(TelemetryError),
}

fn telemetry_from(t: &pb::Telemetry) -> Result<Telemetry, RequestError> {
    let too_long = t.firmware_version.len() > blepay_core::telemetry::MAX_FIRMWARE_VERSION_LEN;
    if too_long {
        return Err(RequestError::Telemetry(TelemetryError::FirmwareVersion));
    }
    let telemetry = Telemetry {
        firmware_version: t.firmware_version.clone(),
        fault_codes: t.fault_codes.clone(),
        signal_quality: u8::try_from(t.signal_quality).unwrap_or(u8::MAX),
        uptime_secs: t.uptime_secs,
        boot_count: t.boot_count,
        outbox_depth: t.outbox_depth,
        lifetime_units: t.lifetime_units,
    };
    telemetry.validate().map_err(RequestError::Telemetry)?;
    Ok(telemetry)
}

fn telemetry_to(t: &Telemetry) -> pb::Telemetry {
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

fn session_id_from(bytes: &[u8]) -> Result<SessionId, RequestError> {
    <[u8; 16]>::try_from(bytes)
        .map(SessionId::from_bytes)
        .map_err(|_| RequestError::SessionId { len: bytes.len() })
}

impl Request {
    /// What kind of request this is.
    pub const fn kind(&self) -> RequestKind {
        match self {
            Self::Press => RequestKind::Press,
            Self::Heartbeat(_) => RequestKind::Heartbeat,
            Self::Poll => RequestKind::Poll,
            Self::Start { .. } => RequestKind::Start,
            Self::Report { .. } => RequestKind::Report,
        }
    }

    /// The wire message.
    pub fn to_pb(&self) -> pb::DeviceRequest {
        let kind = match self {
            Self::Press => pb::device_request::Kind::Press(pb::Press {}),
            Self::Heartbeat(t) => pb::device_request::Kind::Heartbeat(pb::Heartbeat {
                telemetry: Some(telemetry_to(t)),
            }),
            Self::Poll => pb::device_request::Kind::Poll(pb::Poll {}),
            &Self::Start { session } => pb::device_request::Kind::Start(pb::Start {
                session_id: session.to_bytes().to_vec(),
            }),
            &Self::Report {
                session,
                units,
                last,
            } => pb::device_request::Kind::Report(pb::Report {
                session_id: session.to_bytes().to_vec(),
                units: units.get(),
                r#final: last,
            }),
        };
        pb::DeviceRequest { kind: Some(kind) }
    }

    /// The request body bytes (what [`crate::seal_request`] seals).
    pub fn encode(&self) -> Vec<u8> {
        self.to_pb().encode_to_vec()
    }

    /// Read a wire message.
    ///
    /// # Errors
    /// No operation, or a session id that is not 16 bytes.
    pub fn from_pb(req: &pb::DeviceRequest) -> Result<Self, RequestError> {
        match &req.kind {
            Some(pb::device_request::Kind::Press(_)) => Ok(Self::Press),
            Some(pb::device_request::Kind::Heartbeat(h)) => Ok(Self::Heartbeat(
                h.telemetry
                    .as_ref()
                    .map(telemetry_from)
                    .transpose()?
                    .unwrap_or_default(),
            )),
            Some(pb::device_request::Kind::Poll(_)) => Ok(Self::Poll),
            Some(pb::device_request::Kind::Start(s)) => Ok(Self::Start {
                session: session_id_from(&s.session_id)?,
            }),
            Some(pb::device_request::Kind::Report(r)) => Ok(Self::Report {
                session: session_id_from(&r.session_id)?,
                units: Units::new(r.units),
                last: r.r#final,
            }),
            None => Err(RequestError::NoOperation),
        }
    }

    /// Decode request body bytes.
    ///
    /// # Errors
    /// See [`RequestError`].
    pub fn decode(body: &[u8]) -> Result<Self, RequestError> {
        let req = pb::DeviceRequest::decode(body).map_err(RequestError::Body)?;
        Self::from_pb(&req)
    }
}

// ---------------------------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------------------------

/// A session the server authorised on this machine, with its terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The session.
    pub session: SessionId,
    /// The amount held on the user's wallet: the cap.
    pub hold: Amount,
    /// Price of one unit.
    pub price_per_unit: Amount,
    /// Server unix time: in a poll answer, by which the start must reach the server; in a press
    /// answer, by which the next report must (else the server closes the session by timeout).
    pub expires_at: u64,
    /// The advert use counter the payment was made with.
    pub use_counter: UseCounter,
}

/// Why a grant on the wire is not usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    /// The session id is not 16 bytes.
    #[error("session id is not 16 bytes")]
    SessionId,
    /// Hold or price is not a positive amount, or the hold pays for no unit at all.
    #[error("hold or price is not usable")]
    Amounts,
    /// `expires_at` is negative.
    #[error("expiry is negative")]
    Expiry,
    /// A press answer that does not carry exactly one grant.
    #[error("a press answer carries exactly one grant")]
    Count,
}

impl Grant {
    /// How many whole units the hold pays for ([`units_for_hold`], the rule the server's
    /// `Tariff::units_for` uses). Dispensing stops there.
    pub fn max_units(&self) -> Units {
        units_for_hold(self.hold, self.price_per_unit)
    }

    /// The wire message.
    pub fn to_pb(&self) -> pb::Grant {
        pb::Grant {
            session_id: self.session.to_bytes().to_vec(),
            hold_amount: self.hold.minor(),
            price_per_unit: self.price_per_unit.minor(),
            expires_at: i64::try_from(self.expires_at).unwrap_or(i64::MAX),
            use_counter: u32::from(self.use_counter.get()),
        }
    }
}

impl TryFrom<&pb::Grant> for Grant {
    type Error = GrantError;

    fn try_from(g: &pb::Grant) -> Result<Self, GrantError> {
        let session =
            <[u8; 16]>::try_from(g.session_id.as_slice()).map_err(|_| GrantError::SessionId)?;
        let hold = Amount::positive(g.hold_amount).map_err(|_| GrantError::Amounts)?;
        let price_per_unit = Amount::positive(g.price_per_unit).map_err(|_| GrantError::Amounts)?;
        let expires_at = u64::try_from(g.expires_at).map_err(|_| GrantError::Expiry)?;
        let grant = Self {
            session: SessionId::from_bytes(session),
            hold,
            price_per_unit,
            expires_at,
            use_counter: UseCounter::new(u16::try_from(g.use_counter).unwrap_or(u16::MAX)),
        };
        if grant.max_units() == Units::ZERO {
            return Err(GrantError::Amounts);
        }
        Ok(grant)
    }
}

/// A session's status as an answer carries it: one of the core's statuses, or a value this
/// code does not know (0, `SESSION_STATUS_UNSPECIFIED`, or a newer one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// A status of the session state machine.
    Known(SessionStatus),
    /// `SESSION_STATUS_UNSPECIFIED` (0): no status.
    Unspecified,
    /// A value outside the v1 enum.
    Unknown(i32),
}

impl Status {
    /// Read the wire value.
    pub const fn from_wire(v: i32) -> Self {
        match v {
            0 => Self::Unspecified,
            1 => Self::Known(SessionStatus::Authorized),
            2 => Self::Known(SessionStatus::Active),
            3 => Self::Known(SessionStatus::Settled),
            4 => Self::Known(SessionStatus::Expired),
            other => Self::Unknown(other),
        }
    }

    /// The wire value.
    pub const fn wire(self) -> i32 {
        match self {
            Self::Unspecified => 0,
            Self::Known(SessionStatus::Authorized) => 1,
            Self::Known(SessionStatus::Active) => 2,
            Self::Known(SessionStatus::Settled) => 3,
            Self::Known(SessionStatus::Expired) => 4,
            Self::Unknown(v) => v,
        }
    }

    /// The enum value's name in the protocol (`ACTIVE`, `SESSION_STATUS_UNSPECIFIED`, …);
    /// `UNKNOWN` for a value outside the v1 enum.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Known(s) => s.as_str(),
            Self::Unspecified => "SESSION_STATUS_UNSPECIFIED",
            Self::Unknown(_) => "UNKNOWN",
        }
    }
}

impl From<SessionStatus> for Status {
    fn from(s: SessionStatus) -> Self {
        Self::Known(s)
    }
}

/// The codes a server refusal inside an answer frame carries (docs/protocol.md). The strings are
/// the protocol's; the server maps them to its own error codes in one place (the service's
/// `error.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalCode {
    /// The request body does not decode.
    FrameInvalid,
    /// The sequence number is not above the last accepted one (or reuses it with other bytes).
    SequenceReplayed,
    /// No such session on this machine.
    SessionNotFound,
    /// The session expired before the start.
    SessionExpired,
    /// The session cannot start (already settled, …).
    SessionNotStartable,
    /// A report for a session that was not started.
    SessionNotStarted,
    /// A report that contradicts an earlier one.
    ReportConflict,
    /// A press with no session waiting on this machine (the firmware shows "pay in the app
    /// first").
    NoSessionWaiting,
    /// A code this version does not know (a newer server): still a refusal.
    Unrecognized,
}

const REFUSAL_CODES: [RefusalCode; 8] = [
    RefusalCode::FrameInvalid,
    RefusalCode::SequenceReplayed,
    RefusalCode::SessionNotFound,
    RefusalCode::SessionExpired,
    RefusalCode::SessionNotStartable,
    RefusalCode::SessionNotStarted,
    RefusalCode::ReportConflict,
    RefusalCode::NoSessionWaiting,
];

impl RefusalCode {
    /// The code's string on the wire (`error_code`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::FrameInvalid => "FRAME_INVALID",
            Self::SequenceReplayed => "SEQUENCE_REPLAYED",
            Self::SessionNotFound => "SESSION_NOT_FOUND",
            Self::SessionExpired => "SESSION_EXPIRED",
            Self::SessionNotStartable => "SESSION_NOT_STARTABLE",
            Self::SessionNotStarted => "SESSION_NOT_STARTED",
            Self::ReportConflict => "REPORT_CONFLICT",
            Self::NoSessionWaiting => "NO_SESSION_WAITING",
            Self::Unrecognized => "UNRECOGNIZED",
        }
    }

    /// Read a non-empty `error_code`; a string this version does not know is
    /// [`RefusalCode::Unrecognized`].
    pub fn parse(s: &str) -> Self {
        REFUSAL_CODES
            .iter()
            .copied()
            .find(|c| c.as_str() == s)
            .unwrap_or(Self::Unrecognized)
    }
}

/// The server refused the request: a stable code and a message for humans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// What went wrong.
    pub code: RefusalCode,
    /// For humans (logs).
    pub message: String,
}

/// An answer to a machine request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The answer to a press: the session it started (now ACTIVE), with its terms — the valve
    /// may open on this answer alone. `expires_at` is the report deadline: the server closes the
    /// session by timeout if no report reaches it by then. An unusable grant is an `Err`.
    Started(Result<Grant, GrantError>),
    /// The answer to a heartbeat: nothing but the frame's server time.
    Ack,
    /// The answer to a poll: the sessions waiting for this machine's start, each read on its own
    /// (a grant that is not usable is an `Err`; the others still count).
    Grants(Vec<Result<Grant, GrantError>>),
    /// The answer to a start or report: the session after the request.
    Session {
        /// Its status (`ACTIVE` after a start, `SETTLED` after the final report).
        status: Status,
        /// The amount captured (final report; 0 otherwise).
        amount: i64,
    },
    /// The server refused the request.
    Refused(Refusal),
}

/// Why an answer body does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    /// Not a `DeviceResponse` protobuf message.
    #[error("answer body: {0}")]
    Body(prost::DecodeError),
}

impl Answer {
    /// A poll answer listing `grants`.
    pub fn grants(grants: impl IntoIterator<Item = Grant>) -> Self {
        Self::Grants(grants.into_iter().map(Ok).collect())
    }

    /// A refusal.
    pub fn refused(code: RefusalCode, message: impl Into<String>) -> Self {
        Self::Refused(Refusal {
            code,
            message: message.into(),
        })
    }

    /// The refusal, if the server refused.
    pub const fn refusal(&self) -> Option<&Refusal> {
        match self {
            Self::Refused(r) => Some(r),
            Self::Grants(_) | Self::Session { .. } | Self::Started(_) | Self::Ack => None,
        }
    }

    /// The status and amount of a start or report answer (`None` for any other answer).
    pub const fn session(&self) -> Option<(Status, i64)> {
        match self {
            Self::Session { status, amount } => Some((*status, *amount)),
            Self::Grants(_) | Self::Refused(_) | Self::Started(_) | Self::Ack => None,
        }
    }

    /// The usable grants of a poll answer, or the started one of a press answer (none for any
    /// other answer).
    pub fn usable_grants(&self) -> impl Iterator<Item = &Grant> {
        let grants = match self {
            Self::Grants(g) => g.as_slice(),
            Self::Started(g) => core::slice::from_ref(g),
            Self::Session { .. } | Self::Refused(_) | Self::Ack => &[],
        };
        grants.iter().filter_map(|g| g.as_ref().ok())
    }

    /// The wire message. Unusable grants (`Err`) are left out.
    pub fn to_pb(&self) -> pb::DeviceResponse {
        match self {
            Self::Started(grant) => pb::DeviceResponse {
                grants: grant.iter().map(Grant::to_pb).collect(),
                status: Status::Known(SessionStatus::Active).wire(),
                ..Default::default()
            },
            Self::Ack => pb::DeviceResponse::default(),
            Self::Grants(grants) => pb::DeviceResponse {
                grants: grants
                    .iter()
                    .filter_map(|g| g.as_ref().ok())
                    .map(Grant::to_pb)
                    .collect(),
                ..Default::default()
            },
            Self::Session { status, amount } => pb::DeviceResponse {
                status: status.wire(),
                amount: *amount,
                ..Default::default()
            },
            Self::Refused(r) => pb::DeviceResponse {
                error_code: r.code.as_str().into(),
                error_message: r.message.clone(),
                ..Default::default()
            },
        }
    }

    /// The answer body bytes (what [`crate::seal_response`] seals).
    pub fn encode(&self) -> Vec<u8> {
        self.to_pb().encode_to_vec()
    }

    /// Read a wire message answering a request of kind `to`: a non-empty `error_code` is a
    /// refusal; otherwise a poll answer is its grants, a start or report answer its status and
    /// amount (fields that do not belong to the kind are ignored).
    pub fn from_pb(to: RequestKind, r: &pb::DeviceResponse) -> Self {
        if !r.error_code.is_empty() {
            return Self::Refused(Refusal {
                code: RefusalCode::parse(&r.error_code),
                message: r.error_message.clone(),
            });
        }
        match to {
            RequestKind::Press => Self::Started(match r.grants.as_slice() {
                [one] => Grant::try_from(one),
                _ => Err(GrantError::Count),
            }),
            RequestKind::Heartbeat => Self::Ack,
            RequestKind::Poll => Self::Grants(r.grants.iter().map(Grant::try_from).collect()),
            RequestKind::Start | RequestKind::Report => Self::Session {
                status: Status::from_wire(r.status),
                amount: r.amount,
            },
        }
    }

    /// Decode answer body bytes (see [`Answer::from_pb`]).
    ///
    /// # Errors
    /// The bytes are not a `DeviceResponse` message.
    pub fn decode(to: RequestKind, body: &[u8]) -> Result<Self, AnswerError> {
        let r = pb::DeviceResponse::decode(body).map_err(AnswerError::Body)?;
        Ok(Self::from_pb(to, &r))
    }
}

/// A rotated device key carried in an answer (docs/protocol.md §1.1): the key of `epoch`,
/// wrapped under the key the answer frame is tagged with ([`crate::wrap_device_key`]).
#[derive(Clone, PartialEq, Eq)]
pub struct KeyUpdate {
    /// The new key's epoch.
    pub epoch: blepay_core::KeyEpoch,
    /// The new key XOR the wrap pad.
    pub wrapped: [u8; 32],
}

impl core::fmt::Debug for KeyUpdate {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("KeyUpdate")
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

/// Why an answer's key update is unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyUpdateError {
    /// The wrapped key is not 32 bytes.
    #[error("a wrapped key is 32 bytes, got {len}")]
    WrappedLength {
        /// The length that was sent.
        len: usize,
    },
    /// Epoch 0 is the first key; it is never delivered.
    #[error("a key update names epoch 0")]
    EpochZero,
}

impl KeyUpdate {
    /// The wire message.
    pub fn to_pb(&self) -> pb::KeyUpdate {
        pb::KeyUpdate {
            epoch: self.epoch.get(),
            wrapped_key: self.wrapped.to_vec(),
        }
    }

    /// Read the wire message.
    ///
    /// # Errors
    /// A wrapped key that is not 32 bytes, or epoch 0.
    pub fn from_pb(k: &pb::KeyUpdate) -> Result<Self, KeyUpdateError> {
        if k.epoch == 0 {
            return Err(KeyUpdateError::EpochZero);
        }
        let wrapped = <[u8; 32]>::try_from(k.wrapped_key.as_slice()).map_err(|_| {
            KeyUpdateError::WrappedLength {
                len: k.wrapped_key.len(),
            }
        })?;
        Ok(Self {
            epoch: blepay_core::KeyEpoch::new(k.epoch),
            wrapped,
        })
    }

    /// The key update an answer body carries, if any (`None` when the body does not decode or
    /// carries none).
    pub fn from_body(body: &[u8]) -> Option<Result<Self, KeyUpdateError>> {
        let r = pb::DeviceResponse::decode(body).ok()?;
        r.key_update.as_ref().map(Self::from_pb)
    }
}

impl Answer {
    /// The answer body bytes with a key update attached (only while a rotation is pending).
    pub fn encode_with(&self, key_update: Option<&KeyUpdate>) -> Vec<u8> {
        let mut pb = self.to_pb();
        pb.key_update = key_update.map(KeyUpdate::to_pb);
        pb.encode_to_vec()
    }
}
