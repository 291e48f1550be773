//! The HTTP front end: one axum router, proto3 JSON or `application/x-protobuf` bodies.
//!
//! The same router serves `blepay serve` and (through `lambda_http`) the Lambda functions.

use axum::Router;
use axum::body::Body;
use axum::extract::Query;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use blepay_core::UserId;
use blepay_proto::pb::v1 as pb;
use prost::Message;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::app::App;
use crate::auth;
use crate::error::{ApiError, ErrorCode};
use crate::operator::{Action, Operator};

/// Largest accepted request body (but the machine route's, [`MAX_DEVICE_BODY_BYTES`]).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Largest machine-route body: one frame (docs/protocol.md §3: anything over 1,024 bytes is
/// FRAME_INVALID). No more than this is read.
pub const MAX_DEVICE_BODY_BYTES: usize = blepay_proto::frame::MAX_FRAME_LEN;

/// The machine route: a raw frame in, a raw frame out.
pub const DEVICE_PATH: &str = "/v1/device";

pub const PROTOBUF: &str = "application/x-protobuf";
pub const OCTET_STREAM: &str = "application/octet-stream";

/// The phone, operator and machine routes (gRPC is added by [`crate::server::router`]).
pub fn routes(app: App) -> Router {
    routes_for(app, Surface::All).route("/openapi.json", get(openapi))
}

/// The OpenAPI 3.0 description of the HTTP API (docs/api.md), served at `GET /openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON)
}

/// A group of routes with one kind of caller: each Lambda function mounts only its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// `/v1/verify`, `/v1/pay`, `/v1/sessions/{id}`, `/v1/wallet` (a phone user).
    Phone,
    /// `/v1/ops/...` (an operator).
    Ops,
    /// `POST /v1/device` (a machine; each frame authenticates itself).
    Device,
    /// All of the above (`blepay serve`).
    All,
}

/// The machine listener's routes (`blepay serve --device-listen`): `POST /v1/device` and
/// nothing else (no health check, no phone or operator route: this listener is plain HTTP).
pub fn device_routes(app: App) -> Router {
    with_fallbacks(Router::new().route(DEVICE_PATH, post(device)), app)
}

/// The routes of one [`Surface`], plus `/healthz`; anything else is 404 NOT_FOUND.
pub fn routes_for(app: App, surface: Surface) -> Router {
    match surface {
        Surface::Phone => routes_with(app, phone_surface),
        Surface::Ops => routes_with(app, ops_surface),
        Surface::Device => routes_with(app, device_surface),
        Surface::All => routes_with(app, |r| device_surface(ops_surface(phone_surface(r)))),
    }
}

/// The routes of one surface, added to a router: what [`routes_for`] composes.
pub type SurfaceRoutes = fn(Router<App>) -> Router<App>;

/// `/healthz` and the routes `surface` adds, with the JSON fallbacks, on `app`. A binary that
/// serves one surface names only that surface's function, so the others' handlers are not
/// linked into it (the Lambda functions: docs/performance.md §4).
pub fn routes_with(app: App, surface: SurfaceRoutes) -> Router {
    with_fallbacks(
        surface(Router::new().route("/healthz", get(|| async { "ok" }))),
        app,
    )
}

/// [`Surface::Phone`]'s routes.
pub fn phone_surface(router: Router<App>) -> Router<App> {
    let router = router
        .route("/v1/verify", post(verify))
        .route("/v1/pay", post(pay))
        .route("/v1/sessions/{session_id}", get(user_session))
        .route("/v1/wallet", get(user_wallet))
        .merge(crate::reports::phone_routes());
    let router = crate::refunds::phone_routes(router);
    let router = crate::topups::phone_routes(router);
    crate::topups::webhook_routes(router)
}

/// [`Surface::Ops`]'s routes.
pub fn ops_surface(router: Router<App>) -> Router<App> {
    let router = router
        .route("/v1/ops/devices", post(register_device).get(list_devices))
        .route(
            "/v1/ops/devices/{device_id}",
            get(ops_device).patch(update_device),
        )
        .route(
            "/v1/ops/devices/{device_id}/decommission",
            post(decommission_device),
        )
        .route(
            "/v1/ops/wallets/{user_id}/spending-limit",
            put(set_spending_limit),
        )
        .route("/v1/ops/devices/{device_id}/revoke", post(revoke_device))
        .route(
            "/v1/ops/devices/{device_id}/rotate-key",
            post(rotate_device_key),
        )
        .route("/v1/ops/wallets/{user_id}/topup", post(top_up))
        .route("/v1/ops/wallets/{user_id}", get(ops_wallet))
        .route("/v1/ops/sessions/{session_id}", get(ops_session))
        .route(
            "/v1/ops/operators",
            post(create_operator).get(list_operators),
        )
        .route(
            "/v1/ops/operators/{operator_id}/revoke",
            post(revoke_operator),
        )
        .route("/v1/ops/audit", get(list_audit))
        .merge(crate::reports::ops_routes())
        .merge(crate::console::routes());
    let router = crate::refunds::ops_routes(router);
    crate::topups::ops_routes(router)
}

/// [`Surface::Device`]'s route.
pub fn device_surface(router: Router<App>) -> Router<App> {
    router.route(DEVICE_PATH, post(device))
}

/// `router` with the JSON 404 and 405 answers every listener gives, on `app`.
fn with_fallbacks(router: Router<App>, app: App) -> Router {
    router
        .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                ErrorCode::MethodNotAllowed,
                "method not allowed on this route",
            )
        })
        .with_state(app)
}

// ---------------------------------------------------------------------------------------------
// Body formats
// ---------------------------------------------------------------------------------------------

/// How a body is (or is to be) encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Protobuf,
}

impl Format {
    pub(crate) fn of_content_type(headers: &HeaderMap) -> Self {
        match headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
        {
            Some(ct) if ct.starts_with(PROTOBUF) => Self::Protobuf,
            _ => Self::Json,
        }
    }
    pub(crate) fn of_accept(headers: &HeaderMap) -> Self {
        match headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) {
            Some(a) if a.contains(PROTOBUF) => Self::Protobuf,
            _ => Self::Json,
        }
    }
}

/// Why a body could not be read.
enum BodyError {
    /// Longer than the limit.
    TooLarge,
    /// The connection failed, or the body timed out.
    Unreadable(String),
}

/// Read a body of at most `limit` bytes; no more than `limit` is read.
async fn read_limited(body: Body, limit: usize) -> Result<bytes::Bytes, BodyError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(<dyn std::error::Error + 'static>::is::<http_body_util::LengthLimitError>);
        if too_large {
            BodyError::TooLarge
        } else {
            BodyError::Unreadable(e.to_string())
        }
    })
}

/// Read a body of at most [`MAX_BODY_BYTES`].
pub(crate) async fn read_body(body: Body) -> Result<bytes::Bytes, ApiError> {
    read_limited(body, MAX_BODY_BYTES)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge => ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("body exceeds {MAX_BODY_BYTES} bytes"),
            ),
            BodyError::Unreadable(e) => ApiError::invalid(format!("cannot read body: {e}")),
        })
}

/// A request message decoded from JSON or protobuf; remembers the format to answer in.
#[derive(Debug)]
pub struct Wire<T>(pub T, pub Format);

impl<T, S> FromRequest<S> for Wire<T>
where
    T: Message + Default + DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let format = Format::of_content_type(req.headers());
        let bytes = read_body(req.into_body()).await?;
        let msg = match format {
            Format::Protobuf => T::decode(bytes)
                .map_err(|e| ApiError::invalid(format!("malformed protobuf: {e}")))?,
            Format::Json => serde_json::from_slice(&bytes)
                .map_err(|e| ApiError::invalid(format!("malformed JSON: {e}")))?,
        };
        Ok(Self(msg, format))
    }
}

/// An answer message, encoded as the request asked.
#[derive(Debug)]
pub struct Reply<T>(pub T, pub Format);

impl<T: Message + Serialize> IntoResponse for Reply<T> {
    fn into_response(self) -> Response {
        match self.1 {
            Format::Protobuf => {
                ([(header::CONTENT_TYPE, PROTOBUF)], self.0.encode_to_vec()).into_response()
            }
            Format::Json => match serde_json::to_vec(&self.0) {
                Ok(v) => ([(header::CONTENT_TYPE, "application/json")], v).into_response(),
                Err(e) => ApiError::new(ErrorCode::Internal, format!("cannot encode answer: {e}"))
                    .into_response(),
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Callers
// ---------------------------------------------------------------------------------------------

/// The authenticated phone user.
#[derive(Debug)]
pub struct PhoneUser(pub UserId);

/// A user already authenticated upstream (API Gateway's JWT authorizer): when present in the
/// request extensions, it is trusted instead of the `Authorization` header.
#[derive(Debug, Clone)]
pub struct AuthorizedUser(pub UserId);

fn authorization(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

impl FromRequestParts<App> for PhoneUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        if let Some(AuthorizedUser(u)) = parts.extensions.get::<AuthorizedUser>() {
            return Ok(Self(u.clone()));
        }
        auth::phone_user(app.config(), authorization(parts)).map(Self)
    }
}

/// An authenticated operator (who, with which role): what each ops handler authorizes against.
#[derive(Debug)]
pub struct OpsCaller(pub Operator);

/// An operator already authenticated upstream (API Gateway's IAM authorization of the ops
/// routes): when present in the request extensions, it is trusted instead of the ops token.
#[derive(Debug, Clone)]
pub struct AuthorizedOperator(pub Operator);

impl FromRequestParts<App> for OpsCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        if let Some(AuthorizedOperator(op)) = parts.extensions.get::<AuthorizedOperator>() {
            tracing::debug!(principal = %op.principal, "operator authorized upstream");
            return Ok(Self(op.clone()));
        }
        // The token's shape is checked first (no store read for garbage); an operator token
        // is then looked up, still before the body is read.
        app.authenticate_operator(authorization(parts))
            .await
            .map(Self)
    }
}

// ---------------------------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------------------------

async fn verify(
    State(app): State<App>,
    PhoneUser(_): PhoneUser,
    Wire(req, f): Wire<pb::VerifyRequest>,
) -> Result<Reply<pb::VerifyResponse>, ApiError> {
    Ok(Reply(app.verify(req).await?, f))
}

async fn pay(
    State(app): State<App>,
    PhoneUser(user): PhoneUser,
    Wire(req, f): Wire<pb::PayRequest>,
) -> Result<Reply<pb::PayResponse>, ApiError> {
    Ok(Reply(app.pay(&user, req).await?, f))
}

async fn user_session(
    State(app): State<App>,
    PhoneUser(user): PhoneUser,
    Path(session_id): Path<String>,
    headers: HeaderMap,
) -> Result<Reply<pb::Session>, ApiError> {
    Ok(Reply(
        app.user_session(&user, &session_id).await?,
        Format::of_accept(&headers),
    ))
}

async fn user_wallet(
    State(app): State<App>,
    PhoneUser(user): PhoneUser,
    headers: HeaderMap,
) -> Result<Reply<pb::Wallet>, ApiError> {
    Ok(Reply(app.wallet(&user).await?, Format::of_accept(&headers)))
}

async fn register_device(
    State(app): State<App>,
    OpsCaller(op): OpsCaller,
    Wire(req, f): Wire<pb::RegisterDeviceRequest>,
) -> Result<Reply<pb::RegisterDeviceResponse>, ApiError> {
    Ok(Reply(app.register_device(&op, req).await?, f))
}

async fn ops_device(
    State(app): State<App>,
    OpsCaller(op): OpsCaller,
    Path(device_id): Path<String>,
    headers: HeaderMap,
) -> Result<Reply<pb::Device>, ApiError> {
    Ok(Reply(
        app.ops_device(&op, &device_id).await?,
        Format::of_accept(&headers),
    ))
}

async fn list_devices(
    State(app): State<App>,
    OpsCaller(op): OpsCaller,
    query: Result<Query<crate::devices::ListDevicesQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Reply<pb::ListDevicesResponse>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid(format!("query: {e}")))?;
    let req = query.into_request()?;
    Ok(Reply(
        app.list_devices(&op, req).await?,
        Format::of_accept(&headers),
    ))
}

async fn update_device(
    State(app): State<App>,
    OpsCaller(op): OpsCaller,
    Path(device_id): Path<String>,
    Wire(body, f): Wire<pb::UpdateDeviceRequest>,
) -> Result<Reply<pb::Device>, ApiError> {
    // The path names the machine; a `deviceId` in the body, if any, is ignored.
    let req = pb::UpdateDeviceRequest { device_id, ..body };
    Ok(Reply(app.update_device(&op, req).await?, f))
}

async fn decommission_device(
    State(app): State<App>,
    OpsCaller(op): OpsCaller,
    Path(device_id): Path<String>,
    headers: HeaderMap,
) -> Result<Reply<pb::Device>, ApiError> {
    Ok(Reply(
        app.decommission_device(&op, &device_id).await?,
        Format::of_accept(&headers),
    ))
}

async fn set_spending_limit(
    State(app): State<App>,
    OpsCaller(op): OpsCaller,
    Path(user_id): Path<String>,
    Wire(body, f): Wire<pb::SetSpendingLimitRequest>,
) -> Result<Reply<pb::Wallet>, ApiError> {
    // The path names the user; a `userId` in the body, if any, is ignored.
    let req = pb::SetSpendingLimitRequest { user_id, ..body };
    Ok(Reply(app.set_spending_limit(&op, req).await?, f))
}

/// The path names the device; a body's `deviceId`, if any, must agree.
fn path_device(path: &str, body: &str) -> Result<String, ApiError> {
    if !body.is_empty() && !body.eq_ignore_ascii_case(path) {
        return Err(ApiError::invalid(
            "deviceId: the body names another device than the path",
        ));
    }
    Ok(path.to_owned())
}

async fn revoke_device(
    State(app): State<App>,
    OpsCaller(op): OpsCaller,
    Path(device_id): Path<String>,
    Wire(mut req, f): Wire<pb::RevokeDeviceRequest>,
) -> Result<Reply<pb::Device>, ApiError> {
    req.device_id = path_device(&device_id, &req.device_id)?;
    Ok(Reply(app.revoke_device(&op, req).await?, f))
}

async fn rotate_device_key(
    State(app): State<App>,
    OpsCaller(op): OpsCaller,
    Path(device_id): Path<String>,
    Wire(mut req, f): Wire<pb::RotateDeviceKeyRequest>,
) -> Result<Reply<pb::RotateDeviceKeyResponse>, ApiError> {
    req.device_id = path_device(&device_id, &req.device_id)?;
    Ok(Reply(app.rotate_device_key(&op, req).await?, f))
}

async fn top_up(
    State(app): State<App>,
    OpsCaller(op): OpsCaller,
    Path(user_id): Path<String>,
    Wire(body, f): Wire<pb::TopUpRequest>,
) -> Result<Reply<pb::Wallet>, ApiError> {
    // The path names the user; a `userId` in the body, if any, is ignored.
    let req = pb::TopUpRequest { user_id, ..body };
    Ok(Reply(app.top_up(&op, req).await?, f))
}

async fn ops_wallet(
    State(app): State<App>,
    OpsCaller(op): OpsCaller,
    Path(user_id): Path<String>,
    headers: HeaderMap,
) -> Result<Reply<pb::Wallet>, ApiError> {
    let user = App::parse_user(&user_id)?;
    app.authorize(&op, &Action::ReadMoney)?;
    Ok(Reply(app.wallet(&user).await?, Format::of_accept(&headers)))
}

async fn ops_session(
    State(app): State<App>,
    OpsCaller(op): OpsCaller,
    Path(session_id): Path<String>,
    headers: HeaderMap,
) -> Result<Reply<pb::Session>, ApiError> {
    Ok(Reply(
        app.ops_session(&op, &session_id).await?,
        Format::of_accept(&headers),
    ))
}

async fn create_operator(
    State(app): State<App>,
    OpsCaller(op): OpsCaller,
    Wire(req, f): Wire<pb::CreateOperatorRequest>,
) -> Result<Reply<pb::CreateOperatorResponse>, ApiError> {
    Ok(Reply(app.create_operator(&op, req).await?, f))
}

async fn list_operators(
    State(app): State<App>,
    OpsCaller(op): OpsCaller,
    headers: HeaderMap,
) -> Result<Reply<pb::ListOperatorsResponse>, ApiError> {
    Ok(Reply(
        app.list_operators(&op).await?,
        Format::of_accept(&headers),
    ))
}

async fn revoke_operator(
    State(app): State<App>,
    OpsCaller(op): OpsCaller,
    Path(operator_id): Path<String>,
    headers: HeaderMap,
) -> Result<Reply<pb::Operator>, ApiError> {
    // No body is needed; any sent is not read.
    Ok(Reply(
        app.revoke_operator(&op, &operator_id).await?,
        Format::of_accept(&headers),
    ))
}

async fn list_audit(
    State(app): State<App>,
    OpsCaller(op): OpsCaller,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Result<Reply<pb::ListAuditResponse>, ApiError> {
    app.authorize(&op, &Action::ReadAudit)?;
    let req = crate::operators::audit_query(uri.query())?;
    Ok(Reply(
        app.list_audit(&op, req).await?,
        Format::of_accept(&headers),
    ))
}

/// The machine link: the body is a raw request frame, the answer a raw response frame with only
/// `content-type: application/octet-stream` and `content-length` (the server adds no `date` on
/// this route: see `server.rs`, docs/api.md "The machine route's headers").
///
/// At most [`MAX_DEVICE_BODY_BYTES`] are read: a longer body is 400 FRAME_INVALID, like any frame
/// outside 29–1,024 bytes (docs/protocol.md §3), not the other routes' 413.
async fn device(State(app): State<App>, body: Body) -> Response {
    let bytes = match read_limited(body, MAX_DEVICE_BODY_BYTES).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            return ApiError::new(
                ErrorCode::FrameInvalid,
                format!("frame too large: at most {MAX_DEVICE_BODY_BYTES} bytes allowed"),
            )
            .into_response();
        }
        Err(BodyError::Unreadable(e)) => {
            return ApiError::invalid(format!("cannot read body: {e}")).into_response();
        }
    };
    match app.device_exchange(&bytes).await {
        Ok(answer) => {
            let status = answer.code.map_or(StatusCode::OK, ErrorCode::http_status);
            (status, [(header::CONTENT_TYPE, OCTET_STREAM)], answer.frame).into_response()
        }
        Err(e) => e.into_response(),
    }
}
