//! The gRPC front end (tonic): the same handlers as HTTP, the same error mapping.

use blepay_core::UserId;
use blepay_proto::pb::v1 as pb;
use blepay_proto::pb::v1::device_service_server::{DeviceService, DeviceServiceServer};
use blepay_proto::pb::v1::ops_service_server::{OpsService, OpsServiceServer};
use blepay_proto::pb::v1::phone_service_server::{PhoneService, PhoneServiceServer};
use tonic::{Request, Response, Status};

use crate::app::App;
use crate::auth;
use crate::error::ApiError;

fn authorization<T>(req: &Request<T>) -> Option<&str> {
    req.metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
}

fn phone_user<T>(app: &App, req: &Request<T>) -> Result<UserId, Status> {
    Ok(auth::phone_user(app.config(), authorization(req))?)
}

fn operator<T>(app: &App, req: &Request<T>) -> Result<(), Status> {
    Ok(auth::ops(app.config(), authorization(req))?)
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
        phone_user(&self.0, &req)?;
        reply(self.0.verify(req.into_inner()).await)
    }

    async fn pay(&self, req: Request<pb::PayRequest>) -> Result<Response<pb::PayResponse>, Status> {
        let user = phone_user(&self.0, &req)?;
        reply(self.0.pay(&user, req.into_inner()).await)
    }

    async fn get_session(
        &self,
        req: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        let user = phone_user(&self.0, &req)?;
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
        let user = phone_user(&self.0, &req)?;
        reply(self.0.wallet(&user).await)
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
        operator(&self.0, &req)?;
        reply(self.0.register_device(req.into_inner()).await)
    }

    async fn top_up(&self, req: Request<pb::TopUpRequest>) -> Result<Response<pb::Wallet>, Status> {
        operator(&self.0, &req)?;
        reply(self.0.top_up(req.into_inner()).await)
    }

    async fn get_wallet(
        &self,
        req: Request<pb::OpsGetWalletRequest>,
    ) -> Result<Response<pb::Wallet>, Status> {
        operator(&self.0, &req)?;
        let user = App::parse_user(&req.into_inner().user_id)?;
        reply(self.0.wallet(&user).await)
    }

    async fn get_session(
        &self,
        req: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        operator(&self.0, &req)?;
        reply(self.0.ops_session(&req.into_inner().session_id).await)
    }

    async fn get_device(
        &self,
        req: Request<pb::GetDeviceRequest>,
    ) -> Result<Response<pb::Device>, Status> {
        operator(&self.0, &req)?;
        reply(self.0.ops_device(&req.into_inner().device_id).await)
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

/// The three services plus reflection (v1 and v1alpha), as tonic routes.
///
/// # Errors
/// When the reflection descriptor set cannot be loaded.
pub fn routes(app: &App) -> Result<tonic::service::Routes, tonic_reflection::server::Error> {
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(blepay_proto::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(blepay_proto::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    Ok(
        tonic::service::Routes::new(PhoneServiceServer::new(Phone(app.clone())))
            .add_service(OpsServiceServer::new(Ops(app.clone())))
            .add_service(DeviceServiceServer::new(Device(app.clone())))
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha),
    )
}
