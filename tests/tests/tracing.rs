//! One call to the orchestrator becomes one trace across all three services: every service
//! exports its spans over OTLP, they share the trace id, and each server span's parent is a
//! span of the service that called it.

use std::{collections::BTreeMap, time::Duration};

use stowage_e2e::{
    kube::seed_example,
    otlp::OtlpCollector,
    stack::{Stack, StackOptions},
};
use stowage_proto::v1::{BackupSpec, CreateBackupRequest};

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
    let stack = Stack::start(StackOptions {
        env: telemetry_env(&collector),
        ..StackOptions::default()
    })
    .await;
    // A real backup: one annotated pod whose volume the agent backs up with restic.
    let kube = stack.kube_client().await;
    let example = seed_example(&kube, "foo", "node-a", Some("emptydir-volume")).await;
    let volume = stack.kubelets["node-a"]
        .pod(&example.pod_uid())
        .empty_dir("emptydir-volume");
    std::fs::write(volume.join("data.txt"), b"traced").unwrap();

    let mut client = stack.client().await;
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

    let services = [
        "stowage-orchestrator",
        "stowage-repo-manager",
        "stowage-volume-agent",
    ];
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
    let in_trace: Vec<_> = spans
        .iter()
        .filter(|span| span.trace_id == trace_id)
        .collect();

    // The orchestrator's server span is the root: the test client sent no trace context.
    let root = in_trace
        .iter()
        .find(|span| {
            span.service_name == "stowage-orchestrator"
                && span.name == "stowage.v1.Orchestrator/CreateBackup"
        })
        .expect("the orchestrator's CreateBackup span");
    assert!(
        root.parent_span_id.is_empty(),
        "CreateBackup is the root span"
    );
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

    // The orchestrator's span of the volume carries what an operator searches by.
    let spans = collector
        .wait_for(Duration::from_secs(30), |spans| {
            spans.iter().any(|span| {
                span.trace_id == trace_id
                    && span.service_name == "stowage-orchestrator"
                    && span.name == "backup_volume"
            })
        })
        .await;
    let volume_span = spans
        .iter()
        .find(|span| span.trace_id == trace_id && span.name == "backup_volume")
        .expect("the orchestrator's backup_volume span");
    for (key, value) in [
        ("backup", "traced"),
        ("namespace", "foo"),
        ("pod", "sample"),
        ("volume", "emptydir-volume"),
        ("node", "node-a"),
    ] {
        assert_eq!(volume_span.attribute(key), Some(value), "{key}");
    }
    let snapshot = volume_span.attribute("snapshot_id").unwrap_or_default();
    assert!(
        !snapshot.is_empty() && snapshot.chars().all(|c| c.is_ascii_hexdigit()),
        "snapshot id {snapshot:?}"
    );
    assert!(volume_span.attribute("bytes").is_some());
}
