//! Two orchestrators and two repo-managers elect one leader each through their Leases in the
//! Kubernetes API emulator: the leader reports its service SERVING and holds the Lease, the
//! standby is live (the process-wide health) but reports its service NOT_SERVING and answers
//! every call Unavailable naming the leader; killing a leader (SIGKILL) makes the standby lead
//! within the test's deadline, and a backup created through the new leaders completes.

use std::{collections::BTreeMap, path::Path, time::Duration};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use stowage_e2e::{
    TestProcess,
    api::{namespace_spec, wait_backup},
    binary, free_port, health_status,
    kube::{KubeEmulator, ensure_namespace, seed_example},
    kubelet::FakeKubelet,
    start_service,
};
use stowage_proto::v1::{
    BackupPhase, CreateBackupRequest, ListBackupsRequest, ListRepositoriesRequest,
    orchestrator_client::OrchestratorClient, repo_manager_client::RepoManagerClient,
};
use tokio::time::Instant;
use tonic_health::pb::health_check_response::ServingStatus;

/// How long a standby may take to lead once the leader is gone: the lease duration below (4 s)
/// and the election's retries, with room for a loaded machine.
const TAKEOVER_WITHIN: Duration = Duration::from_secs(20);

/// Short timings, so that a takeover takes seconds; their order is the one the flags require.
const ELECTION: [&str; 10] = [
    "--leader-elect",
    "true",
    "--leader-elect-lease-duration-seconds",
    "4",
    "--leader-elect-renew-deadline-seconds",
    "3",
    "--leader-elect-retry-period-seconds",
    "1",
    "--leader-elect-namespace",
    "stowage",
];

const MASTER_KEY: &str = "master-key-for-the-election-test";

struct Replica {
    identity: String,
    url: String,
    process: TestProcess,
}

fn start_replica(
    binary_name: &str,
    identity: &str,
    args: &[String],
    env: &BTreeMap<String, String>,
    logs: &Path,
) -> Replica {
    let port = free_port();
    let mut all = vec!["--listen".to_string(), format!("127.0.0.1:{port}")];
    all.extend(ELECTION.iter().map(|arg| arg.to_string()));
    all.extend(["--leader-elect-identity".to_string(), identity.to_string()]);
    all.extend_from_slice(args);
    Replica {
        identity: identity.to_string(),
        url: format!("http://127.0.0.1:{port}"),
        process: TestProcess::start(identity, binary(binary_name), &all, env, logs),
    }
}

fn logs_of(replicas: &[Replica]) -> String {
    replicas
        .iter()
        .map(|replica| format!("--- {}:\n{}", replica.identity, replica.process.log()))
        .collect()
}

/// Waits until exactly one of `replicas` (among those still running) reports `service`
/// SERVING while every other running one is live and reports it NOT_SERVING; returns the
/// leader's index. Panics after `within`, or when a replica exits.
async fn one_leader(
    replicas: &mut [Replica],
    alive: &[bool],
    service: &str,
    within: Duration,
) -> usize {
    let deadline = Instant::now() + within;
    let mut last = Vec::new();
    loop {
        last.clear();
        for (index, replica) in replicas.iter_mut().enumerate() {
            if !alive[index] {
                continue;
            }
            if let Ok(Some(status)) = replica.process.child.try_wait() {
                panic!(
                    "{} exited with {status}; log:\n{}",
                    replica.identity,
                    replica.process.log()
                );
            }
            let live = health_status(&replica.url, "").await;
            let ready = health_status(&replica.url, service).await;
            last.push((index, live, ready));
        }
        let serving: Vec<usize> = last
            .iter()
            .filter(|(_, _, ready)| *ready == Ok(ServingStatus::Serving))
            .map(|(index, _, _)| *index)
            .collect();
        let standbys_live_not_ready = last.iter().all(|(index, live, ready)| {
            serving.contains(index)
                || (*live == Ok(ServingStatus::Serving) && *ready == Ok(ServingStatus::NotServing))
        });
        if serving.len() == 1 && standbys_live_not_ready {
            return serving[0];
        }
        assert!(
            serving.len() <= 1,
            "two replicas ready at once: {last:?}\n{}",
            logs_of(replicas)
        );
        assert!(
            Instant::now() < deadline,
            "no single leader of {service} within {within:?}: {last:?}\n{}",
            logs_of(replicas)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn holder(kube: &kube::Client, lease: &str) -> Option<String> {
    Api::<Lease>::namespaced(kube.clone(), "stowage")
        .get(lease)
        .await
        .ok()?
        .spec?
        .holder_identity
}

/// The standby's refusal of `call` once it names `leader`: a standby looks at the Lease's
/// holder every retry period (1 s here), so the first refusals may not know it yet.
async fn refusal_naming<F, Fut, T>(leader: &str, mut call: F) -> tonic::Status
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    T: std::fmt::Debug,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = call().await.expect_err("a standby serves nothing");
        let named = status
            .metadata()
            .get(stowage_grpc::STANDBY_METADATA)
            .is_some_and(|value| value == leader);
        if named || Instant::now() >= deadline {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A standby's refusal: Unavailable, marked, naming the leader.
fn assert_refused_by_standby(status: &tonic::Status, leader: &str) {
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status
            .message()
            .contains(&format!("not the leader; {leader} leads")),
        "{status:?}"
    );
    assert_eq!(
        status
            .metadata()
            .get(stowage_grpc::STANDBY_METADATA)
            .map(|value| value.to_str().unwrap()),
        Some(leader),
        "{status:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_replica_of_each_service_leads_and_a_killed_leader_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let storage = dir.path().join("bucket");
    std::fs::create_dir_all(&storage).unwrap();
    let kube = KubeEmulator::start(&logs).await;
    let client = kube.client().await;
    ensure_namespace(&client, "stowage").await;
    let storage_url = format!("file://{}", storage.display());

    // The volume agent of node-a (no election: one per node).
    let kubelet = FakeKubelet::new(dir.path().join("nodes/node-a/pods"));
    let agent_scratch = dir.path().join("scratch/agent");
    std::fs::create_dir_all(&agent_scratch).unwrap();
    let agent = start_service(
        "stowage-volume-agent",
        "stowage.v1.VolumeAgent",
        &[
            "--node-name".into(),
            "node-a".into(),
            "--pods-root".into(),
            kubelet.pods_root().display().to_string(),
            "--scratch-dir".into(),
            agent_scratch.display().to_string(),
        ],
        &BTreeMap::new(),
        &logs,
    )
    .await;

    // Two repo-managers.
    let mut env = kube.env();
    env.insert("STOWAGE_MASTER_KEY".into(), MASTER_KEY.into());
    let mut repo_managers: Vec<Replica> = ["repo-manager-a", "repo-manager-b"]
        .iter()
        .map(|identity| {
            let scratch = dir.path().join("scratch").join(identity);
            std::fs::create_dir_all(&scratch).unwrap();
            start_replica(
                "stowage-repo-manager",
                identity,
                &[
                    "--storage-url".into(),
                    storage_url.clone(),
                    "--scratch-dir".into(),
                    scratch.display().to_string(),
                ],
                &env,
                &logs,
            )
        })
        .collect();
    let mut alive = vec![true, true];
    let leader = one_leader(
        &mut repo_managers,
        &alive,
        "stowage.v1.RepoManager",
        TAKEOVER_WITHIN,
    )
    .await;
    let standby = 1 - leader;
    let leader_name = repo_managers[leader].identity.clone();
    assert_eq!(
        holder(&client, "stowage-repo-manager").await.as_deref(),
        Some(leader_name.as_str()),
        "the ready replica holds the Lease"
    );
    let standby_repo_manager = RepoManagerClient::new(
        stowage_grpc::connect(&repo_managers[standby].url)
            .await
            .unwrap(),
    );
    let refused = refusal_naming(&leader_name, || {
        let mut client = standby_repo_manager.clone();
        async move {
            client
                .list_repositories(ListRepositoriesRequest::default())
                .await
        }
    })
    .await;
    assert_refused_by_standby(&refused, &leader_name);
    RepoManagerClient::new(
        stowage_grpc::connect(&repo_managers[leader].url)
            .await
            .unwrap(),
    )
    .list_repositories(ListRepositoriesRequest::default())
    .await
    .expect("the leader serves");

    // The leading repo-manager dies: the standby takes over.
    repo_managers[leader].process.kill();
    alive[leader] = false;
    let new_leader = one_leader(
        &mut repo_managers,
        &alive,
        "stowage.v1.RepoManager",
        TAKEOVER_WITHIN,
    )
    .await;
    assert_eq!(new_leader, standby);
    assert_eq!(
        holder(&client, "stowage-repo-manager").await.as_deref(),
        Some(repo_managers[standby].identity.as_str())
    );
    let repo_manager_url = repo_managers[standby].url.clone();

    // Two orchestrators, both calling the repo-manager that now leads.
    let mut orchestrators: Vec<Replica> = ["orchestrator-a", "orchestrator-b"]
        .iter()
        .map(|identity| {
            start_replica(
                "stowage-orchestrator",
                identity,
                &[
                    "--repo-manager".into(),
                    repo_manager_url.clone(),
                    "--agent".into(),
                    format!("node-a={}", agent.url),
                    "--storage-url".into(),
                    storage_url.clone(),
                    "--poll-interval-ms".into(),
                    "100".into(),
                ],
                &kube.env(),
                &logs,
            )
        })
        .collect();
    let mut alive = vec![true, true];
    let leader = one_leader(
        &mut orchestrators,
        &alive,
        "stowage.v1.Orchestrator",
        TAKEOVER_WITHIN,
    )
    .await;
    let standby = 1 - leader;
    let leader_name = orchestrators[leader].identity.clone();
    assert_eq!(
        holder(&client, "stowage-orchestrator").await.as_deref(),
        Some(leader_name.as_str())
    );
    let mut standby_client = OrchestratorClient::new(
        stowage_grpc::connect(&orchestrators[standby].url)
            .await
            .unwrap(),
    );
    let refused = refusal_naming(&leader_name, || {
        let mut client = standby_client.clone();
        async move {
            client
                .create_backup(CreateBackupRequest {
                    name: "refused".into(),
                    spec: Some(namespace_spec("foo")),
                })
                .await
        }
    })
    .await;
    assert_refused_by_standby(&refused, &leader_name);

    // The leading orchestrator dies: the standby takes over, and a backup created through it
    // completes (with the repo-manager that took over before).
    orchestrators[leader].process.kill();
    alive[leader] = false;
    let new_leader = one_leader(
        &mut orchestrators,
        &alive,
        "stowage.v1.Orchestrator",
        TAKEOVER_WITHIN,
    )
    .await;
    assert_eq!(new_leader, standby);
    let listed = standby_client
        .list_backups(ListBackupsRequest {})
        .await
        .expect("the new leader serves")
        .into_inner();
    assert!(
        listed.backups.iter().all(|backup| backup.name != "refused"),
        "the standby's refusal created nothing: {listed:?}"
    );

    let example = seed_example(&client, "foo", "node-a", Some("emptydir-volume")).await;
    let volume = kubelet.pod(&example.pod_uid()).empty_dir("emptydir-volume");
    std::fs::write(volume.join("data.txt"), b"after the takeover").unwrap();
    standby_client
        .create_backup(CreateBackupRequest {
            name: "after-takeover".into(),
            spec: Some(namespace_spec("foo")),
        })
        .await
        .expect("CreateBackup through the new leader");
    let backup = wait_backup(&mut standby_client, "after-takeover").await;
    let status = backup.status.unwrap_or_default();
    assert_eq!(
        status.phase,
        BackupPhase::Completed as i32,
        "{status:#?}\n{}\n{}",
        logs_of(&orchestrators),
        logs_of(&repo_managers)
    );
    assert_eq!(status.volumes.len(), 1, "{status:#?}");
}
