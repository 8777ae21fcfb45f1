//! `/metrics` of the real binaries, scraped over HTTP after real backups and restores: the
//! agent's operation counts by phase, durations, bytes, in-flight/queued gauges, and the gRPC
//! request counts by method and status code. Names as documented in docs/metrics.md.

use std::{collections::BTreeMap, time::Duration};

use stowage_e2e::agent::{AgentFixture, run_backup, run_restore, sample};
use stowage_proto::v1::{CancelOperationRequest, PodVolumeRef};
use tonic::Code;

const OPERATIONS: &str = "stowage_agent_pod_volume_operations_total";

fn grpc(method: &str, code: &str) -> String {
    format!(
        r#"stowage_grpc_server_requests_total{{grpc_service="stowage.v1.VolumeAgent",grpc_method="{method}",grpc_code="{code}"}}"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_metrics_count_backups_restores_bytes_and_grpc_calls() {
    let fixture = AgentFixture::start(&[], &BTreeMap::new(), None).await;
    let before = fixture.scrape().await;
    assert_eq!(
        sample(&before, "stowage_agent_operations_running"),
        Some(0.0),
        "gauges are exposed before any operation:\n{before}"
    );
    assert_eq!(
        sample(&before, "stowage_agent_backup_bytes_total"),
        Some(0.0)
    );

    let volume = fixture.pod_with_data("db-0", 300_000);
    let mut client = fixture.client(None).await.expect("connecting");
    let backup = run_backup(&mut client, fixture.backup_request("op-1", volume.clone()))
        .await
        .expect("backup");
    let mut bad = volume.clone();
    bad.pod_uid = "../etc".into();
    let refused = run_backup(&mut client, fixture.backup_request("op-2", bad))
        .await
        .expect_err("a bad pod uid is refused");
    assert_eq!(refused.code(), Code::InvalidArgument);

    let target_uid = stowage_e2e::kubelet::new_pod_uid();
    fixture.kubelet.pod(&target_uid).empty_dir("data");
    let target = PodVolumeRef {
        pod_uid: target_uid,
        pod_name: "db-0-restored".into(),
        ..volume.clone()
    };
    let restored = run_restore(
        &mut client,
        fixture.restore_request("op-3", target, &backup.snapshot_id),
    )
    .await
    .expect("restore");

    let text = fixture.scrape().await;
    let expect = |series: &str, value: f64| {
        assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
    };
    expect(
        &format!(r#"{OPERATIONS}{{operation="backup",phase="Completed"}}"#),
        1.0,
    );
    expect(
        &format!(r#"{OPERATIONS}{{operation="restore",phase="Completed"}}"#),
        1.0,
    );
    expect(
        r#"stowage_agent_pod_volume_operation_duration_seconds_count{operation="backup",phase="Completed"}"#,
        1.0,
    );
    // A request refused before it was accepted is not an operation.
    assert!(
        !text.contains(r#"operation="backup",phase="Failed""#),
        "{text}"
    );
    assert!(backup.bytes_total >= 300_000, "{backup:?}");
    expect(
        "stowage_agent_backup_bytes_total",
        backup.bytes_total as f64,
    );
    expect(
        "stowage_agent_backup_added_bytes_total",
        backup.bytes_added as f64,
    );
    expect(
        "stowage_agent_restore_bytes_total",
        restored.bytes_restored as f64,
    );
    expect("stowage_agent_operations_running", 0.0);
    expect("stowage_agent_operations_queued", 0.0);
    // Each operation's restic peak memory, as its result reports it.
    assert!(backup.restic_peak_rss_bytes > 0, "{backup:?}");
    expect(
        r#"stowage_agent_restic_peak_rss_bytes_count{operation="backup"}"#,
        1.0,
    );
    expect(
        r#"stowage_agent_restic_peak_rss_bytes_sum{operation="backup"}"#,
        backup.restic_peak_rss_bytes as f64,
    );
    expect(
        r#"stowage_agent_restic_peak_rss_bytes_sum{operation="restore"}"#,
        restored.restic_peak_rss_bytes as f64,
    );
    expect(&grpc("BackupVolume", "OK"), 1.0);
    expect(&grpc("BackupVolume", "InvalidArgument"), 1.0);
    expect(&grpc("RestoreVolume", "OK"), 1.0);
    assert!(
        text.contains(
            r#"stowage_grpc_server_request_duration_seconds_count{grpc_service="stowage.v1.VolumeAgent",grpc_method="BackupVolume",grpc_code="OK"} 1"#
        ),
        "{text}"
    );
}

/// Polls the agent's metrics until `series` has `value`.
async fn wait_for_sample(fixture: &AgentFixture, series: &str, value: f64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = fixture.scrape().await;
        if sample(&text, series) == Some(value) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{series} never became {value}; last scrape:\n{text}\nagent log:\n{}",
            fixture.agent.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_gauges_show_running_and_queued_operations_and_cancelled_ones_are_counted() {
    // One slot and a slow upload, so the first backup runs long enough for the second to queue.
    let args: Vec<String> = ["--max-concurrent", "1", "--upload-limit-kib", "256"]
        .map(String::from)
        .to_vec();
    let fixture = AgentFixture::start(&args, &BTreeMap::new(), None).await;
    let first = fixture.pod_with_data("db-0", 8 << 20);
    let second = fixture.pod_with_data("db-1", 1000);
    let client = fixture.client(None).await.expect("connecting");

    let mut first_client = client.clone();
    let first_request = fixture.backup_request("slow", first);
    let first_run = tokio::spawn(async move { run_backup(&mut first_client, first_request).await });
    wait_for_sample(&fixture, "stowage_agent_operations_running", 1.0).await;
    let mut second_client = client.clone();
    let second_request = fixture.backup_request("waiting", second);
    let second_run =
        tokio::spawn(async move { run_backup(&mut second_client, second_request).await });
    wait_for_sample(&fixture, "stowage_agent_operations_queued", 1.0).await;

    for id in ["waiting", "slow"] {
        let cancelled = client
            .clone()
            .cancel_operation(CancelOperationRequest {
                operation_id: id.into(),
            })
            .await
            .expect("cancel")
            .into_inner()
            .cancelled;
        assert!(cancelled, "{id} was known to the agent");
    }
    for run in [first_run, second_run] {
        let status = run
            .await
            .expect("backup task")
            .expect_err("cancelled backups fail");
        assert_eq!(status.code(), Code::Cancelled, "{status:?}");
    }
    wait_for_sample(
        &fixture,
        &format!(r#"{OPERATIONS}{{operation="backup",phase="Cancelled"}}"#),
        2.0,
    )
    .await;
    let text = fixture.scrape().await;
    assert_eq!(sample(&text, "stowage_agent_operations_running"), Some(0.0));
    assert_eq!(sample(&text, "stowage_agent_operations_queued"), Some(0.0));
    assert_eq!(sample(&text, "stowage_agent_backup_bytes_total"), Some(0.0));
    assert_eq!(
        sample(&text, &grpc("BackupVolume", "Cancelled")),
        Some(2.0),
        "{text}"
    );
}

/// The whole stack after one backup and one repository check: each service's `/metrics`
/// shows its part (orchestrator state, repositories and their maintenance, agent operations)
/// and its own gRPC requests.
#[tokio::test(flavor = "multi_thread")]
async fn every_service_serves_metrics_after_a_backup() {
    use stowage_e2e::{
        agent::scrape,
        free_port,
        kube::seed_example,
        kubelet::write_sample_tree,
        stack::{Stack, StackOptions},
    };
    use stowage_proto::v1::{BackupPhase, MaintenanceKind, RunMaintenanceRequest};

    let orchestrator_metrics = format!("127.0.0.1:{}", free_port());
    let agent_metrics = format!("127.0.0.1:{}", free_port());
    let repo_manager_metrics = format!("127.0.0.1:{}", free_port());
    let stack = Stack::start(StackOptions {
        orchestrator_args: vec!["--metrics-listen".into(), orchestrator_metrics.clone()],
        agent_args: vec!["--metrics-listen".into(), agent_metrics.clone()],
        // Flags win over the environment, so only the repo-manager takes this one.
        env: BTreeMap::from([(
            "STOWAGE_METRICS_LISTEN".to_string(),
            repo_manager_metrics.clone(),
        )]),
        ..Default::default()
    })
    .await;
    let kube = stack.kube_client().await;
    let example = seed_example(&kube, "foo", "node-a", Some("pvc-volume,emptydir-volume")).await;
    let pod = stack.kubelets["node-a"].pod(&example.pod_uid());
    write_sample_tree(
        &pod.pv("kubernetes.io~local-volume", &example.pv_name()),
        "pvc",
    );
    write_sample_tree(&pod.empty_dir("emptydir-volume"), "emptydir");

    let mut client = stack.client().await;
    let last = stowage_e2e::api::backup_to_end(
        &mut client,
        "nightly",
        stowage_e2e::api::namespace_spec("foo"),
    )
    .await;
    let phase = last.status.as_ref().map(|s| s.phase);
    assert_eq!(phase, Some(BackupPhase::Completed as i32));
    let check = client
        .maintain_repository(RunMaintenanceRequest {
            namespace: "foo".into(),
            kind: MaintenanceKind::Check as i32,
        })
        .await
        .expect("a repository check")
        .into_inner();
    assert!(check.succeeded, "{check:?}");

    let orchestrator = scrape(&orchestrator_metrics).await;
    for (series, value) in [
        (r#"stowage_orchestrator_backups{phase="Completed"}"#, 1.0),
        (r#"stowage_orchestrator_backups{phase="InProgress"}"#, 0.0),
        (
            r#"stowage_orchestrator_pod_volume_backups{phase="Completed"}"#,
            2.0,
        ),
        (
            r#"stowage_grpc_server_requests_total{grpc_service="stowage.v1.Orchestrator",grpc_method="CreateBackup",grpc_code="OK"}"#,
            1.0,
        ),
        (
            r#"stowage_grpc_server_requests_total{grpc_service="stowage.v1.Orchestrator",grpc_method="WatchBackup",grpc_code="OK"}"#,
            1.0,
        ),
    ] {
        assert_eq!(
            sample(&orchestrator, series),
            Some(value),
            "{series} in\n{orchestrator}"
        );
    }

    let repo_manager = scrape(&repo_manager_metrics).await;
    for (series, value) in [
        (r#"stowage_repositories{phase="Ready"}"#, 1.0),
        (
            r#"stowage_repository_maintenance_last_succeeded{namespace="foo",kind="check"}"#,
            1.0,
        ),
        (
            r#"stowage_grpc_server_requests_total{grpc_service="stowage.v1.RepoManager",grpc_method="RunMaintenance",grpc_code="OK"}"#,
            1.0,
        ),
    ] {
        assert_eq!(
            sample(&repo_manager, series),
            Some(value),
            "{series} in\n{repo_manager}"
        );
    }
    assert!(
        repo_manager.contains(r#"grpc_method="EnsureRepository",grpc_code="OK""#),
        "{repo_manager}"
    );

    let agent = scrape(&agent_metrics).await;
    assert_eq!(
        sample(
            &agent,
            &format!(r#"{OPERATIONS}{{operation="backup",phase="Completed"}}"#)
        ),
        Some(2.0),
        "{agent}"
    );
}
