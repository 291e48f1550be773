//! gRPC server reflection: off by default (issue 10, L7: it describes the whole operator API to
//! anyone), on with `--grpc-reflection`.

use std::time::Duration;

use blepay::args::{ServeArgs, TransportArgs};
use blepay_e2e::spawn_app;
use tonic_reflection::pb::{v1, v1alpha};

/// The real server (`serve::bind` + `Bound::serve`) with `--grpc-reflection`; its address, and
/// what keeps it alive.
async fn spawn_with_reflection() -> (
    String,
    tempfile::TempDir,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let dir = tempfile::tempdir().unwrap();
    let args = ServeArgs {
        transport: TransportArgs {
            grpc_reflection: true,
            ..TransportArgs::default()
        },
        ..ServeArgs::local(dir.path().join("server"))
    };
    let bound = blepay::serve::bind(&args).await.unwrap();
    let port = bound.listener.local_addr().unwrap().port();
    let server = tokio::spawn(bound.serve(Duration::from_secs(3600), std::future::pending()));
    (format!("http://127.0.0.1:{port}"), dir, server)
}

async fn services_v1(address: &str) -> Vec<String> {
    try_services_v1(address).await.unwrap()
}

async fn try_services_v1(address: &str) -> Result<Vec<String>, tonic::Status> {
    let ch = tonic::transport::Endpoint::from_shared(address.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = v1::server_reflection_client::ServerReflectionClient::new(ch);
    let req = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut inbound = client
        .server_reflection_info(tokio_stream::once(req))
        .await?
        .into_inner();
    let answer = inbound.message().await?.unwrap();
    match answer.message_response {
        Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(l)) => {
            Ok(l.service.into_iter().map(|s| s.name).collect())
        }
        other => panic!("expected a service list, got {other:?}"),
    }
}

async fn services_v1alpha(address: &str) -> Vec<String> {
    let ch = tonic::transport::Endpoint::from_shared(address.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = v1alpha::server_reflection_client::ServerReflectionClient::new(ch);
    let req = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut inbound = client
        .server_reflection_info(tokio_stream::once(req))
        .await
        .unwrap()
        .into_inner();
    let answer = inbound.message().await.unwrap().unwrap();
    match answer.message_response {
        Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(l)) => {
            l.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("expected a service list, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_reflection_is_off_by_default() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let refused = try_services_v1(&app.address).await;

    // Assert
    assert_eq!(refused.unwrap_err().code(), tonic::Code::Unimplemented);
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_reflection_v1_lists_the_blepay_services() {
    // Arrange
    let (address, _dir, _server) = spawn_with_reflection().await;

    // Act
    let services = services_v1(&address).await;

    // Assert
    for s in [
        "blepay.v1.PhoneService",
        "blepay.v1.OpsService",
        "blepay.v1.DeviceService",
    ] {
        assert!(
            services.iter().any(|n| n == s),
            "{s} missing from {services:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_reflection_v1alpha_lists_the_blepay_services() {
    // Arrange
    let (address, _dir, _server) = spawn_with_reflection().await;

    // Act
    let services = services_v1alpha(&address).await;

    // Assert
    for s in [
        "blepay.v1.PhoneService",
        "blepay.v1.OpsService",
        "blepay.v1.DeviceService",
    ] {
        assert!(
            services.iter().any(|n| n == s),
            "{s} missing from {services:?}"
        );
    }
}
