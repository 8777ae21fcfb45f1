//! One call to the orchestrator becomes one trace across all three services: every service
//! exports its spans over OTLP, they share the trace id, and each server span's parent is a
//! span of the service that called it.

use std::{collections::BTreeMap, time::Duration};

use stowage_e2e::{otlp::OtlpCollector, start_service};
use stowage_proto::v1::{
    BackupSpec, CreateBackupRequest, orchestrator_client::OrchestratorClient,
};

fn telemetry_env(collector: &OtlpCollector) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_string(),
            collector.endpoint.clone(),
        ),
        // Export quickly so the test does not wait for the default 5 s batch delay.
        ("OTEL_BSP_SCHEDULE_DELAY".to_string(), "100".to_string()),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_backup_call_is_one_trace_across_all_services() {
    let collector = OtlpCollector::start().await;
    let env = telemetry_env(&collector);
    let scratch = tempfile::tempdir().unwrap();
    let logs = scratch.path();
    let storage = scratch.path().join("bucket");
    let pods_root = scratch.path().join("pods");
    let agent_scratch = scratch.path().join("agent-scratch");
    for dir in [&storage, &pods_root, &agent_scratch] {
        std::fs::create_dir_all(dir).unwrap();
    }

    let repo_manager = start_service(
        "stowage-repo-manager",
        "stowage.v1.RepoManager",
        &["--storage-url".into(), storage.display().to_string()],
        &env,
        logs,
    )
    .await;
    let agent = start_service(
        "stowage-volume-agent",
        "stowage.v1.VolumeAgent",
        &[
            "--node-name".into(),
            "node-a".into(),
            "--pods-root".into(),
            pods_root.display().to_string(),
            "--scratch-dir".into(),
            agent_scratch.display().to_string(),
        ],
        &env,
        logs,
    )
    .await;
    let orchestrator = start_service(
        "stowage-orchestrator",
        "stowage.v1.Orchestrator",
        &[
            "--repo-manager".into(),
            repo_manager.url.clone(),
            "--agent".into(),
            format!("node-a={}", agent.url),
        ],
        &env,
        logs,
    )
    .await;

    let mut client = OrchestratorClient::connect(orchestrator.url.clone())
        .await
        .unwrap();
    let backup = client
        .create_backup(CreateBackupRequest {
            name: "traced".into(),
            spec: Some(BackupSpec {
                included_namespaces: vec!["foo".into()],
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let trace_id = backup.status.unwrap_or_default().trace_id;
    assert_eq!(trace_id.len(), 32, "the backup reports its trace id");

    let services = ["stowage-orchestrator", "stowage-repo-manager", "stowage-volume-agent"];
    let spans = collector
        .wait_for(Duration::from_secs(20), |spans| {
            services.iter().all(|service| {
                spans.iter().any(|span| {
                    span.service_name == *service
                        && span.trace_id == trace_id
                        && span.name.starts_with("stowage.v1.")
                })
            })
        })
        .await;
    let in_trace: Vec<_> = spans.iter().filter(|span| span.trace_id == trace_id).collect();

    // The orchestrator's server span is the root: the test client sent no trace context.
    let root = in_trace
        .iter()
        .find(|span| span.service_name == "stowage-orchestrator" && span.name == "stowage.v1.Orchestrator/CreateBackup")
        .expect("the orchestrator's CreateBackup span");
    assert!(root.parent_span_id.is_empty(), "CreateBackup is the root span");
    assert_eq!(root.attribute("rpc.method"), Some("CreateBackup"));

    // Each callee's server span hangs under a span of the orchestrator.
    let orchestrator_span_ids: Vec<&str> = in_trace
        .iter()
        .filter(|span| span.service_name == "stowage-orchestrator")
        .map(|span| span.span_id.as_str())
        .collect();
    for (service, rpc) in [
        ("stowage-repo-manager", "stowage.v1.RepoManager/"),
        ("stowage-volume-agent", "stowage.v1.VolumeAgent/"),
    ] {
        let server_span = in_trace
            .iter()
            .find(|span| span.service_name == service && span.name.starts_with(rpc))
            .unwrap_or_else(|| panic!("a {rpc} server span from {service}"));
        assert!(
            orchestrator_span_ids.contains(&server_span.parent_span_id.as_str()),
            "{} ({service}) has parent {}, which is not an orchestrator span",
            server_span.name,
            server_span.parent_span_id
        );
    }
}
