//! Every binary answers the gRPC health service for its own service and lists over server
//! reflection (v1 and v1alpha, as `grpcurl list` asks) the services it serves: its own API,
//! health and reflection, and no other process's API.

use std::collections::BTreeMap;

use stowage_e2e::start_service;
use tokio_stream::StreamExt;

/// The stowage APIs; each process serves exactly one.
const STOWAGE_SERVICES: [&str; 3] = [
    "stowage.v1.Orchestrator",
    "stowage.v1.RepoManager",
    "stowage.v1.VolumeAgent",
];

/// What every process serves beside its own API.
const COMMON: [&str; 3] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// `grpcurl list` over server reflection `$version`: `v1`, or `v1alpha`, which grpcurl and
/// older tools ask. The two versions' messages are distinct types of the same shape, so one
/// macro asks both.
macro_rules! reflected_services {
    ($version:ident, $channel:expr) => {{
        use tonic_reflection::pb::$version::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let version = stringify!($version);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut responses = ServerReflectionClient::new($channel)
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap_or_else(|status| panic!("reflection {version} is not served: {status}"))
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
                .collect::<Vec<String>>(),
            other => panic!("unexpected reflection {version} response {other:?}"),
        }
    }};
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
    let channel = tonic::transport::Endpoint::from_shared(running.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut expected: Vec<String> = COMMON
        .iter()
        .chain([&service])
        .map(|name| name.to_string())
        .collect();
    expected.sort();
    for (version, mut listed) in [
        ("v1", reflected_services!(v1, channel.clone())),
        ("v1alpha", reflected_services!(v1alpha, channel)),
    ] {
        listed.sort();
        // Exactly its own API, health and reflection: another process's API would answer
        // Unimplemented here.
        assert_eq!(
            listed, expected,
            "{binary} reflection {version} lists {listed:?}"
        );
        for other in STOWAGE_SERVICES.iter().filter(|other| **other != service) {
            assert!(
                !listed.iter().any(|name| name == other),
                "{binary} reflection {version} offers {other}, which it does not serve"
            );
        }
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
