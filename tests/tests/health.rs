//! Every binary answers the gRPC health service for its own service and lists its services
//! over server reflection, as `grpcurl list` would ask.

use std::collections::BTreeMap;

use stowage_e2e::start_service;
use tokio_stream::StreamExt;
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

async fn reflected_services(url: &str) -> Vec<String> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses
        .next()
        .await
        .expect("one reflection response")
        .unwrap();
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => list
            .service
            .into_iter()
            .map(|service| service.name)
            .collect(),
        other => panic!("unexpected reflection response {other:?}"),
    }
}

async fn assert_serves(binary: &str, service: &str, args: Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    // start_service waits for SERVING on `service` through the health API.
    let running = start_service(binary, service, &args, &BTreeMap::new(), dir.path()).await;
    let overall = stowage_e2e::health_status(&running.url, "").await.unwrap();
    assert_eq!(
        overall,
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    let services = reflected_services(&running.url).await;
    for expected in [service, "grpc.health.v1.Health"] {
        assert!(
            services.iter().any(|name| name == expected),
            "{binary} reflection lists {services:?}, missing {expected}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orchestrator_answers_health_and_reflection() {
    assert_serves(
        "stowage-orchestrator",
        "stowage.v1.Orchestrator",
        vec!["--repo-manager".into(), "http://127.0.0.1:9".into()],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repo_manager_answers_health_and_reflection() {
    let storage = tempfile::tempdir().unwrap();
    // Without Kubernetes the repo-manager starts only with a master key.
    let master_key = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(master_key.path(), "master-key-for-the-health-test").unwrap();
    assert_serves(
        "stowage-repo-manager",
        "stowage.v1.RepoManager",
        vec![
            "--storage-url".into(),
            storage.path().display().to_string(),
            "--master-key-file".into(),
            master_key.path().display().to_string(),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_agent_answers_health_and_reflection() {
    let dir = tempfile::tempdir().unwrap();
    assert_serves(
        "stowage-volume-agent",
        "stowage.v1.VolumeAgent",
        vec![
            "--node-name".into(),
            "node-a".into(),
            "--pods-root".into(),
            dir.path().display().to_string(),
            "--scratch-dir".into(),
            dir.path().display().to_string(),
        ],
    )
    .await;
}
