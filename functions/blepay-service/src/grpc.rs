//! The gRPC front end (tonic): the same handlers as HTTP, the same error mapping.
//!
//! Every service has a decode limit sized to its messages ([`GrpcOptions`]; tonic's default is
//! 4 MiB for everything), and the phone and operator credentials are checked by interceptors on
//! the request's headers, before its body is read or decoded: an unauthenticated caller costs the
//! server one header block (issue 10, H1).

use blepay_core::UserId;
use blepay_proto::pb::v1 as pb;
use blepay_proto::pb::v1::device_service_server::{DeviceService, DeviceServiceServer};
use blepay_proto::pb::v1::ops_service_server::{OpsService, OpsServiceServer};
use blepay_proto::pb::v1::phone_service_server::{PhoneService, PhoneServiceServer};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::server::NamedService;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use crate::app::App;
use crate::auth;
use crate::error::ApiError;
use crate::limits::{DEFAULT_GRPC_MAX_MESSAGE_BYTES, DEVICE_GRPC_MAX_MESSAGE_BYTES};
use crate::operator::{Action, Operator};

/// What the gRPC services are built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcOptions {
    /// The largest request message of the phone, operator and reflection services
    /// (`BLEPAY_GRPC_MAX_MESSAGE_BYTES`); `DeviceService` takes one frame at most
    /// ([`DEVICE_GRPC_MAX_MESSAGE_BYTES`]).
    pub max_message_bytes: usize,
    /// Serve gRPC server reflection (`BLEPAY_GRPC_REFLECTION`; off by default: it hands anyone
    /// the full descriptor of `OpsService`).
    pub reflection: bool,
}

impl Default for GrpcOptions {
    fn default() -> Self {
        Self {
            max_message_bytes: DEFAULT_GRPC_MAX_MESSAGE_BYTES,
            reflection: false,
        }
    }
}

fn authorization<T>(req: &Request<T>) -> Option<&str> {
    req.metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
}

/// The phone user the interceptor authenticated, carried in the request's extensions.
#[derive(Debug, Clone)]
struct Caller(UserId);

/// The phone interceptor: a valid phone JWT, or UNAUTHENTICATED before the body is read.
fn phone_interceptor(app: App) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |mut req: Request<()>| {
        let user = auth::phone_user(app.config(), authorization(&req))?;
        req.extensions_mut().insert(Caller(user));
        Ok(req)
    }
}

/// The operator layer: the ops token or an operator's (looked up in the store, asynchronously),
/// or UNAUTHENTICATED, on the request's headers before its body is read or decoded. The
/// [`Operator`] goes into the request's extensions for [`operator`].
#[derive(Debug, Clone)]
pub struct OpsAuth<S> {
    inner: S,
    app: App,
}

impl<S: NamedService> NamedService for OpsAuth<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower::Service<http::Request<tonic::body::Body>> for OpsAuth<S>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<tonic::body::Body>) -> Self::Future {
        // The clone is the one polled ready (tower's rule for services moved into a future).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let app = self.app.clone();
        Box::pin(async move {
            let header = req
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            match app.authenticate_operator(header.as_deref()).await {
                Ok(op) => {
                    req.extensions_mut().insert(op);
                    inner.call(req).await
                }
                Err(e) => Ok(Status::from(e).into_http()),
            }
        })
    }
}

/// The user the phone interceptor put on `req` (a service reached without it refuses).
fn phone_user<T>(req: &Request<T>) -> Result<UserId, Status> {
    req.extensions()
        .get::<Caller>()
        .map(|c| c.0.clone())
        .ok_or_else(|| ApiError::unauthenticated("not authenticated").into())
}

/// The operator [`OpsAuth`] authenticated for `req`.
fn operator<T>(req: &Request<T>) -> Result<Operator, Status> {
    req.extensions()
        .get::<Operator>()
        .cloned()
        .ok_or_else(|| ApiError::unauthenticated("not authenticated").into())
}

fn reply<T>(r: Result<T, ApiError>) -> Result<Response<T>, Status> {
    r.map(Response::new).map_err(Status::from)
}

/// `blepay.v1.PhoneService`.
#[derive(Debug, Clone)]
pub struct Phone(pub App);

#[tonic::async_trait]
impl PhoneService for Phone {
    async fn verify(
        &self,
        req: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyResponse>, Status> {
        phone_user(&req)?;
        reply(self.0.verify(req.into_inner()).await)
    }

    async fn pay(&self, req: Request<pb::PayRequest>) -> Result<Response<pb::PayResponse>, Status> {
        let user = phone_user(&req)?;
        reply(self.0.pay(&user, req.into_inner()).await)
    }

    async fn get_session(
        &self,
        req: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        let user = phone_user(&req)?;
        reply(
            self.0
                .user_session(&user, &req.into_inner().session_id)
                .await,
        )
    }

    async fn get_wallet(
        &self,
        req: Request<pb::GetWalletRequest>,
    ) -> Result<Response<pb::Wallet>, Status> {
        let user = phone_user(&req)?;
        reply(self.0.wallet(&user).await)
    }

    async fn list_my_sessions(
        &self,
        req: Request<pb::ListMySessionsRequest>,
    ) -> Result<Response<pb::SessionList>, Status> {
        let user = phone_user(&req)?;
        reply(self.0.my_sessions(&user, req.into_inner()).await)
    }

    async fn get_my_ledger(
        &self,
        req: Request<pb::LedgerRequest>,
    ) -> Result<Response<pb::Statement>, Status> {
        let user = phone_user(&req)?;
        reply(self.0.my_ledger(&user, req.into_inner()).await)
    }

    async fn report_problem(
        &self,
        req: Request<pb::ReportProblemRequest>,
    ) -> Result<Response<pb::Problem>, Status> {
        let user = phone_user(&req)?;
        reply(self.0.report_problem(&user, req.into_inner()).await)
    }

    async fn start_top_up(
        &self,
        req: Request<pb::StartTopUpRequest>,
    ) -> Result<Response<pb::TopUp>, Status> {
        let user = phone_user(&req)?;
        reply(self.0.start_topup(&user, req.into_inner()).await)
    }

    async fn get_top_up(
        &self,
        req: Request<pb::GetTopUpRequest>,
    ) -> Result<Response<pb::TopUp>, Status> {
        let user = phone_user(&req)?;
        reply(self.0.get_topup(&user, req.into_inner()).await)
    }
}

/// `blepay.v1.OpsService`.
#[derive(Debug, Clone)]
pub struct Ops(pub App);

#[tonic::async_trait]
impl OpsService for Ops {
    async fn register_device(
        &self,
        req: Request<pb::RegisterDeviceRequest>,
    ) -> Result<Response<pb::RegisterDeviceResponse>, Status> {
        let op = operator(&req)?;
        reply(self.0.register_device(&op, req.into_inner()).await)
    }

    async fn top_up(&self, req: Request<pb::TopUpRequest>) -> Result<Response<pb::Wallet>, Status> {
        let op = operator(&req)?;
        reply(self.0.top_up(&op, req.into_inner()).await)
    }

    async fn get_wallet(
        &self,
        req: Request<pb::OpsGetWalletRequest>,
    ) -> Result<Response<pb::Wallet>, Status> {
        let op = operator(&req)?;
        let user = App::parse_user(&req.into_inner().user_id)?;
        self.0.authorize(&op, &Action::ReadMoney)?;
        reply(self.0.wallet(&user).await)
    }

    async fn get_session(
        &self,
        req: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        let op = operator(&req)?;
        reply(self.0.ops_session(&op, &req.into_inner().session_id).await)
    }

    async fn get_device(
        &self,
        req: Request<pb::GetDeviceRequest>,
    ) -> Result<Response<pb::Device>, Status> {
        let op = operator(&req)?;
        reply(self.0.ops_device(&op, &req.into_inner().device_id).await)
    }

    async fn create_operator(
        &self,
        req: Request<pb::CreateOperatorRequest>,
    ) -> Result<Response<pb::CreateOperatorResponse>, Status> {
        let op = operator(&req)?;
        reply(self.0.create_operator(&op, req.into_inner()).await)
    }

    async fn list_operators(
        &self,
        req: Request<pb::ListOperatorsRequest>,
    ) -> Result<Response<pb::ListOperatorsResponse>, Status> {
        let op = operator(&req)?;
        reply(self.0.list_operators(&op).await)
    }

    async fn revoke_operator(
        &self,
        req: Request<pb::RevokeOperatorRequest>,
    ) -> Result<Response<pb::Operator>, Status> {
        let op = operator(&req)?;
        reply(
            self.0
                .revoke_operator(&op, &req.into_inner().operator_id)
                .await,
        )
    }

    async fn list_devices(
        &self,
        req: Request<pb::ListDevicesRequest>,
    ) -> Result<Response<pb::ListDevicesResponse>, Status> {
        let op = operator(&req)?;
        reply(self.0.list_devices(&op, req.into_inner()).await)
    }

    async fn update_device(
        &self,
        req: Request<pb::UpdateDeviceRequest>,
    ) -> Result<Response<pb::Device>, Status> {
        let op = operator(&req)?;
        reply(self.0.update_device(&op, req.into_inner()).await)
    }

    async fn decommission_device(
        &self,
        req: Request<pb::DecommissionDeviceRequest>,
    ) -> Result<Response<pb::Device>, Status> {
        let op = operator(&req)?;
        reply(
            self.0
                .decommission_device(&op, &req.into_inner().device_id)
                .await,
        )
    }

    async fn list_audit(
        &self,
        req: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        let op = operator(&req)?;
        reply(self.0.list_audit(&op, req.into_inner()).await)
    }

    async fn set_spending_limit(
        &self,
        req: Request<pb::SetSpendingLimitRequest>,
    ) -> Result<Response<pb::Wallet>, Status> {
        let op = operator(&req)?;
        reply(self.0.set_spending_limit(&op, req.into_inner()).await)
    }

    async fn list_sessions(
        &self,
        req: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::SessionList>, Status> {
        let op = operator(&req)?;
        reply(self.0.list_sessions(&op, req.into_inner()).await)
    }

    async fn get_user_ledger(
        &self,
        req: Request<pb::OpsLedgerRequest>,
    ) -> Result<Response<pb::Statement>, Status> {
        let op = operator(&req)?;
        reply(self.0.user_ledger(&op, req.into_inner()).await)
    }

    async fn get_sales_report(
        &self,
        req: Request<pb::SalesReportRequest>,
    ) -> Result<Response<pb::SalesReport>, Status> {
        let op = operator(&req)?;
        reply(self.0.sales_report(&op, req.into_inner()).await)
    }

    async fn revoke_device(
        &self,
        req: Request<pb::RevokeDeviceRequest>,
    ) -> Result<Response<pb::Device>, Status> {
        let op = operator(&req)?;
        reply(self.0.revoke_device(&op, req.into_inner()).await)
    }

    async fn rotate_device_key(
        &self,
        req: Request<pb::RotateDeviceKeyRequest>,
    ) -> Result<Response<pb::RotateDeviceKeyResponse>, Status> {
        let op = operator(&req)?;
        reply(self.0.rotate_device_key(&op, req.into_inner()).await)
    }

    async fn refund_session(
        &self,
        req: Request<pb::RefundRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        let op = operator(&req)?;
        reply(self.0.refund_session(&op, req.into_inner()).await)
    }

    async fn close_session(
        &self,
        req: Request<pb::CloseSessionRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        let op = operator(&req)?;
        reply(self.0.close_session(&op, req.into_inner()).await)
    }

    async fn list_problems(
        &self,
        req: Request<pb::ListProblemsRequest>,
    ) -> Result<Response<pb::ProblemList>, Status> {
        let op = operator(&req)?;
        reply(self.0.list_problems(&op, req.into_inner()).await)
    }

    async fn dismiss_problem(
        &self,
        req: Request<pb::DismissProblemRequest>,
    ) -> Result<Response<pb::Problem>, Status> {
        let op = operator(&req)?;
        reply(self.0.dismiss_problem(&op, req.into_inner()).await)
    }

    async fn list_top_ups(
        &self,
        req: Request<pb::ListTopUpsRequest>,
    ) -> Result<Response<pb::TopUpList>, Status> {
        let op = operator(&req)?;
        reply(self.0.list_topups(&op, req.into_inner()).await)
    }

    async fn refund_top_up(
        &self,
        req: Request<pb::RefundTopUpRequest>,
    ) -> Result<Response<pb::TopUp>, Status> {
        let op = operator(&req)?;
        reply(self.0.refund_topup(&op, req.into_inner()).await)
    }
}

/// `blepay.v1.DeviceService`: the frame is the authentication, as over HTTP. An authenticated
/// refusal is an OK answer carrying a frame whose body names the error, exactly as over HTTP.
#[derive(Debug, Clone)]
pub struct Device(pub App);

#[tonic::async_trait]
impl DeviceService for Device {
    async fn exchange(
        &self,
        req: Request<pb::DeviceFrame>,
    ) -> Result<Response<pb::DeviceFrame>, Status> {
        let answer = self.0.device_exchange(&req.into_inner().frame).await?;
        Ok(Response::new(pb::DeviceFrame {
            frame: answer.frame,
        }))
    }
}

/// The three services, each with its decode limit, the phone and operator ones behind their
/// credential interceptors; plus reflection (v1 and v1alpha) when `options.reflection`.
///
/// # Errors
/// When the reflection descriptor set cannot be loaded.
pub fn routes(
    app: &App,
    options: GrpcOptions,
) -> Result<tonic::service::Routes, tonic_reflection::server::Error> {
    let limit = options.max_message_bytes;
    let phone = InterceptedService::new(
        PhoneServiceServer::new(Phone(app.clone())).max_decoding_message_size(limit),
        phone_interceptor(app.clone()),
    );
    let ops = OpsAuth {
        inner: OpsServiceServer::new(Ops(app.clone())).max_decoding_message_size(limit),
        app: app.clone(),
    };
    let device = DeviceServiceServer::new(Device(app.clone()))
        .max_decoding_message_size(DEVICE_GRPC_MAX_MESSAGE_BYTES);
    let mut routes = tonic::service::Routes::new(phone)
        .add_service(ops)
        .add_service(device);
    if options.reflection {
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(blepay_proto::FILE_DESCRIPTOR_SET)
            .build_v1()?
            .max_decoding_message_size(limit);
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(blepay_proto::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?
            .max_decoding_message_size(limit);
        routes = routes
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);
    }
    Ok(routes)
}
