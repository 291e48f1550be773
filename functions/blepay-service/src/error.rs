//! The one mapping from failures to what callers see: HTTP status + `{"code","message"}`, and the
//! gRPC status. Codes are stable; messages are for humans.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use blepay_proto::machine::RefusalCode;

/// A stable, documented error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    Unauthenticated,
    InvalidArgument,
    PayloadTooLarge,
    NotFound,
    MethodNotAllowed,
    AdvertInvalid,
    AdvertStale,
    AdvertUsed,
    DeviceUnknown,
    DeviceBusy,
    DeviceOffline,
    DeviceFault,
    DeviceExists,
    InsufficientFunds,
    SessionNotFound,
    IdempotencyKeyReused,
    /// The user already has as many AUTHORIZED (unstarted) sessions as allowed.
    TooManyUnstarted,
    /// The user opened too many sessions in the current rate window; comes with a retry-after.
    RateLimited,
    // machine link
    FrameInvalid,
    DeviceAuthFailed,
    SequenceReplayed,
    SessionExpired,
    SessionNotStartable,
    SessionNotStarted,
    ReportConflict,
    NoSessionWaiting,
    // the unexpected
    /// An operator whose role does not allow the action (403).
    Forbidden,
    /// A refund that would take a session's refunds past what it captured (409).
    RefundExceedsCapture,
    /// A session that is already closed cannot be closed by hand (409).
    SessionClosed,
    /// The machine is out of service (or decommissioned): verify shows it, pay is refused (409).
    DeviceOutOfService,
    /// The pay would take the user's holds plus captures of the day past the daily cap (402).
    SpendingLimit,
    /// No such open problem report (404).
    ProblemNotFound,
    /// No such operator (404).
    OperatorNotFound,
    /// The payment provider named is not configured on this deployment (400).
    ProviderUnavailable,
    /// A provider top-up below the deployment's minimum or above its maximum (400).
    TopUpAmountOutOfRange,
    /// The top-up would take the wallet's available balance past the deployment's wallet
    /// maximum (409).
    WalletLimit,
    /// No such provider top-up, or another user's (404).
    TopUpNotFound,
    /// A top-up refund above what is left to refund of it, or of a top-up never credited (409).
    RefundExceedsTopUp,
    /// The payment provider refused the request or could not be reached (502); nothing was
    /// charged by blepay. Retrying with the same idempotency key is safe.
    ProviderError,
    RetryLater,
    Internal,
}

impl ErrorCode {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Unauthenticated => "UNAUTHENTICATED",
            Self::InvalidArgument => "INVALID_ARGUMENT",
            Self::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Self::NotFound => "NOT_FOUND",
            Self::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            Self::AdvertInvalid => "ADVERT_INVALID",
            Self::AdvertStale => "ADVERT_STALE",
            Self::AdvertUsed => "ADVERT_USED",
            Self::DeviceUnknown => "DEVICE_UNKNOWN",
            Self::DeviceBusy => "DEVICE_BUSY",
            Self::DeviceOffline => "DEVICE_OFFLINE",
            Self::DeviceFault => "DEVICE_FAULT",
            Self::DeviceExists => "DEVICE_EXISTS",
            Self::InsufficientFunds => "INSUFFICIENT_FUNDS",
            Self::SessionNotFound => "SESSION_NOT_FOUND",
            Self::IdempotencyKeyReused => "IDEMPOTENCY_KEY_REUSED",
            Self::TooManyUnstarted => "TOO_MANY_UNSTARTED",
            Self::RateLimited => "RATE_LIMITED",
            Self::FrameInvalid => "FRAME_INVALID",
            Self::DeviceAuthFailed => "DEVICE_AUTH_FAILED",
            Self::SequenceReplayed => "SEQUENCE_REPLAYED",
            Self::SessionExpired => "SESSION_EXPIRED",
            Self::SessionNotStartable => "SESSION_NOT_STARTABLE",
            Self::SessionNotStarted => "SESSION_NOT_STARTED",
            Self::ReportConflict => "REPORT_CONFLICT",
            Self::NoSessionWaiting => "NO_SESSION_WAITING",
            Self::Forbidden => "FORBIDDEN",
            Self::RefundExceedsCapture => "REFUND_EXCEEDS_CAPTURE",
            Self::SessionClosed => "SESSION_CLOSED",
            Self::DeviceOutOfService => "DEVICE_OUT_OF_SERVICE",
            Self::SpendingLimit => "SPENDING_LIMIT",
            Self::ProblemNotFound => "PROBLEM_NOT_FOUND",
            Self::OperatorNotFound => "OPERATOR_NOT_FOUND",
            Self::ProviderUnavailable => "PROVIDER_UNAVAILABLE",
            Self::TopUpAmountOutOfRange => "TOPUP_AMOUNT_OUT_OF_RANGE",
            Self::WalletLimit => "WALLET_LIMIT",
            Self::TopUpNotFound => "TOPUP_NOT_FOUND",
            Self::RefundExceedsTopUp => "REFUND_EXCEEDS_TOPUP",
            Self::ProviderError => "PROVIDER_ERROR",
            Self::RetryLater => "RETRY_LATER",
            Self::Internal => "INTERNAL",
        }
    }

    /// Every code, in declaration order.
    pub fn all() -> &'static [Self] {
        &ALL
    }

    /// Parse a code written by [`ErrorCode::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        ALL.iter().copied().find(|c| c.as_str() == s)
    }

    pub const fn http_status(self) -> StatusCode {
        match self {
            Self::Unauthenticated | Self::DeviceAuthFailed => StatusCode::UNAUTHORIZED,
            Self::InvalidArgument
            | Self::FrameInvalid
            | Self::ProviderUnavailable
            | Self::TopUpAmountOutOfRange => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::NotFound
            | Self::DeviceUnknown
            | Self::SessionNotFound
            | Self::NoSessionWaiting
            | Self::ProblemNotFound
            | Self::OperatorNotFound
            | Self::TopUpNotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::AdvertInvalid | Self::AdvertStale | Self::Forbidden => StatusCode::FORBIDDEN,
            Self::AdvertUsed
            | Self::DeviceBusy
            | Self::DeviceOffline
            | Self::DeviceFault
            | Self::DeviceExists
            | Self::IdempotencyKeyReused
            | Self::TooManyUnstarted
            | Self::SequenceReplayed
            | Self::SessionExpired
            | Self::SessionNotStartable
            | Self::SessionNotStarted
            | Self::ReportConflict
            | Self::RefundExceedsCapture
            | Self::SessionClosed
            | Self::DeviceOutOfService
            | Self::WalletLimit
            | Self::RefundExceedsTopUp => StatusCode::CONFLICT,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::InsufficientFunds | Self::SpendingLimit => StatusCode::PAYMENT_REQUIRED,
            Self::ProviderError => StatusCode::BAD_GATEWAY,
            Self::RetryLater => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub const fn grpc_code(self) -> tonic::Code {
        use tonic::Code;
        match self {
            Self::Unauthenticated | Self::DeviceAuthFailed => Code::Unauthenticated,
            Self::InvalidArgument
            | Self::FrameInvalid
            | Self::PayloadTooLarge
            | Self::TopUpAmountOutOfRange => Code::InvalidArgument,
            Self::NotFound
            | Self::DeviceUnknown
            | Self::SessionNotFound
            | Self::NoSessionWaiting
            | Self::ProblemNotFound
            | Self::OperatorNotFound
            | Self::TopUpNotFound => Code::NotFound,
            Self::MethodNotAllowed => Code::Unimplemented,
            Self::AdvertInvalid | Self::AdvertStale | Self::Forbidden => Code::PermissionDenied,
            Self::DeviceExists => Code::AlreadyExists,
            Self::AdvertUsed
            | Self::DeviceBusy
            | Self::DeviceOffline
            | Self::DeviceFault
            | Self::IdempotencyKeyReused
            | Self::TooManyUnstarted
            | Self::SequenceReplayed
            | Self::SessionExpired
            | Self::SessionNotStartable
            | Self::SessionNotStarted
            | Self::ReportConflict
            | Self::InsufficientFunds
            | Self::RefundExceedsCapture
            | Self::SessionClosed
            | Self::DeviceOutOfService
            | Self::SpendingLimit
            | Self::ProviderUnavailable
            | Self::WalletLimit
            | Self::RefundExceedsTopUp => Code::FailedPrecondition,
            Self::RateLimited => Code::ResourceExhausted,
            Self::RetryLater | Self::ProviderError => Code::Unavailable,
            Self::Internal => Code::Internal,
        }
    }
}

const ALL: [ErrorCode; 41] = [
    ErrorCode::Unauthenticated,
    ErrorCode::InvalidArgument,
    ErrorCode::PayloadTooLarge,
    ErrorCode::NotFound,
    ErrorCode::MethodNotAllowed,
    ErrorCode::AdvertInvalid,
    ErrorCode::AdvertStale,
    ErrorCode::AdvertUsed,
    ErrorCode::DeviceUnknown,
    ErrorCode::DeviceBusy,
    ErrorCode::DeviceOffline,
    ErrorCode::DeviceFault,
    ErrorCode::DeviceExists,
    ErrorCode::InsufficientFunds,
    ErrorCode::SessionNotFound,
    ErrorCode::IdempotencyKeyReused,
    ErrorCode::TooManyUnstarted,
    ErrorCode::RateLimited,
    ErrorCode::FrameInvalid,
    ErrorCode::DeviceAuthFailed,
    ErrorCode::SequenceReplayed,
    ErrorCode::SessionExpired,
    ErrorCode::SessionNotStartable,
    ErrorCode::SessionNotStarted,
    ErrorCode::ReportConflict,
    ErrorCode::NoSessionWaiting,
    ErrorCode::Forbidden,
    ErrorCode::RefundExceedsCapture,
    ErrorCode::SessionClosed,
    ErrorCode::DeviceOutOfService,
    ErrorCode::SpendingLimit,
    ErrorCode::ProblemNotFound,
    ErrorCode::OperatorNotFound,
    ErrorCode::ProviderUnavailable,
    ErrorCode::TopUpAmountOutOfRange,
    ErrorCode::WalletLimit,
    ErrorCode::TopUpNotFound,
    ErrorCode::RefundExceedsTopUp,
    ErrorCode::ProviderError,
    ErrorCode::RetryLater,
    ErrorCode::Internal,
];

/// The refusal codes of the machine link (inside answer frames) are these error codes: one
/// mapping, so an answer's HTTP status mirrors its code.
impl From<RefusalCode> for ErrorCode {
    fn from(code: RefusalCode) -> Self {
        match code {
            RefusalCode::FrameInvalid => Self::FrameInvalid,
            RefusalCode::SequenceReplayed => Self::SequenceReplayed,
            RefusalCode::SessionNotFound => Self::SessionNotFound,
            RefusalCode::SessionExpired => Self::SessionExpired,
            RefusalCode::SessionNotStartable => Self::SessionNotStartable,
            RefusalCode::SessionNotStarted => Self::SessionNotStarted,
            RefusalCode::ReportConflict => Self::ReportConflict,
            RefusalCode::NoSessionWaiting => Self::NoSessionWaiting,
            // The server writes only the codes above.
            RefusalCode::Unrecognized => Self::Internal,
        }
    }
}

/// An error answer: a code and a human message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// When set, the answer says when to retry: HTTP `Retry-After: <secs>`, gRPC metadata
    /// `retry-after`.
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after_secs: None,
        }
    }
    /// This error, telling the caller to retry in `secs` seconds.
    #[must_use]
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthenticated, message)
    }
}

impl From<blepay_store::StoreError> for ApiError {
    fn from(e: blepay_store::StoreError) -> Self {
        if let blepay_store::StoreError::Unavailable(_) = e {
            tracing::warn!(error = %e, "storage unavailable");
            Self::new(
                ErrorCode::RetryLater,
                "storage is temporarily unavailable; retry later",
            )
        } else {
            tracing::error!(error = %e, "storage failure");
            Self::new(ErrorCode::Internal, "internal error")
        }
    }
}

#[derive(serde::Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            code: self.code.as_str(),
            message: &self.message,
        };
        let mut response = (self.code.http_status(), axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        let mut status = tonic::Status::new(e.code.grpc_code(), e.message);
        if let Ok(v) = e.code.as_str().parse() {
            status.metadata_mut().insert("x-blepay-code", v);
        }
        if let Some(secs) = e.retry_after_secs {
            if let Ok(v) = secs.to_string().parse() {
                status.metadata_mut().insert("retry-after", v);
            }
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_after_is_a_header_and_grpc_metadata() {
        let e = ApiError::new(ErrorCode::RateLimited, "slow down").with_retry_after(42);
        let http = e.clone().into_response();
        assert_eq!(http.status().as_u16(), 429);
        assert_eq!(http.headers()[axum::http::header::RETRY_AFTER], "42");
        let status = tonic::Status::from(e);
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(status.metadata().get("retry-after").unwrap(), "42");
        let no_retry = ApiError::new(ErrorCode::TooManyUnstarted, "wait").into_response();
        assert_eq!(no_retry.status().as_u16(), 409);
        assert!(
            no_retry
                .headers()
                .get(axum::http::header::RETRY_AFTER)
                .is_none()
        );
    }

    #[test]
    fn every_code_parses_back_from_its_name() {
        for c in ALL {
            assert_eq!(ErrorCode::parse(c.as_str()), Some(c));
        }
    }

    #[test]
    fn every_machine_refusal_code_is_the_error_code_of_the_same_name() {
        use RefusalCode as R;
        for code in [
            R::FrameInvalid,
            R::SequenceReplayed,
            R::SessionNotFound,
            R::SessionExpired,
            R::SessionNotStartable,
            R::SessionNotStarted,
            R::ReportConflict,
            R::NoSessionWaiting,
        ] {
            assert_eq!(ErrorCode::from(code).as_str(), code.as_str());
        }
    }

    #[test]
    fn the_issue_s_status_table_holds() {
        use ErrorCode as E;
        let table = [
            (E::Unauthenticated, 401),
            (E::InvalidArgument, 400),
            (E::PayloadTooLarge, 413),
            (E::AdvertInvalid, 403),
            (E::AdvertStale, 403),
            (E::AdvertUsed, 409),
            (E::DeviceUnknown, 404),
            (E::DeviceBusy, 409),
            (E::DeviceOffline, 409),
            (E::DeviceFault, 409),
            (E::NoSessionWaiting, 404),
            (E::InsufficientFunds, 402),
            (E::SessionNotFound, 404),
            (E::DeviceExists, 409),
            (E::TooManyUnstarted, 409),
            (E::RateLimited, 429),
            (E::RetryLater, 503),
        ];
        for (code, status) in table {
            assert_eq!(code.http_status().as_u16(), status, "{}", code.as_str());
        }
    }
}
