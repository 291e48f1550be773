use blepay_e2e::spawn_app;
use tonic_reflection::pb::{v1, v1alpha};

async fn services_v1(address: &str) -> Vec<String> {
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
        .await
        .unwrap()
        .into_inner();
    let answer = inbound.message().await.unwrap().unwrap();
    match answer.message_response {
        Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(l)) => {
            l.service.into_iter().map(|s| s.name).collect()
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
async fn grpc_reflection_v1_lists_the_blepay_services() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let services = services_v1(&app.address).await;

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
    let app = spawn_app().await;

    // Act
    let services = services_v1alpha(&app.address).await;

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
