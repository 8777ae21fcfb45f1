//! Two orchestrators and two repo-managers elect one leader each through their Leases in the
//! Kubernetes API emulator: the leader reports its service SERVING and holds the Lease, the
//! standby is live (the process-wide health) but reports its service NOT_SERVING and answers
//! every call Unavailable naming the leader; killing a leader (SIGKILL) makes the standby lead
//! within the test's deadline, and a backup created through the new leaders completes; a paused
//! leader (SIGSTOP) is replaced too, and exits out of its leadership once continued; its Pod
//! keeps the leader label until the restarted container removes it.

use std::time::Duration;

use stowage_e2e::{
    api::{namespace_spec, wait_backup},
    ha::{HaStack, LOST_LEADERSHIP, ORCHESTRATOR_LEASE, REPO_MANAGER_LEASE, holder, leader_label},
    kube::seed_example,
};
use stowage_proto::v1::{
    BackupPhase, CreateBackupRequest, ListBackupsRequest, ListRepositoriesRequest,
    orchestrator_client::OrchestratorClient, repo_manager_client::RepoManagerClient,
};
use tokio::time::Instant;

/// How long a standby may take to lead once the leader is gone: the lease duration of the
/// harness's short timings (4 s) and the election's retries, with room for a loaded machine.
const TAKEOVER_WITHIN: Duration = Duration::from_secs(20);

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
    let mut stack = HaStack::start(Default::default()).await;
    let client = stack.kube_client().await;

    // The repo-managers: one leads and holds the Lease, the other refuses calls naming it.
    let leader = stack.repo_managers.one_leader(TAKEOVER_WITHIN).await;
    let standby = other(&stack.repo_managers.replicas, &leader);
    assert_eq!(
        holder(&client, REPO_MANAGER_LEASE).await.as_deref(),
        Some(leader.as_str()),
        "the ready replica holds the Lease"
    );
    let standby_repo_manager = RepoManagerClient::new(
        stowage_grpc::connect(&stack.repo_managers.get(&standby).url)
            .await
            .unwrap(),
    );
    let refused = refusal_naming(&leader, || {
        let mut client = standby_repo_manager.clone();
        async move {
            client
                .list_repositories(ListRepositoriesRequest::default())
                .await
        }
    })
    .await;
    assert_refused_by_standby(&refused, &leader);
    RepoManagerClient::new(
        stowage_grpc::connect(&stack.repo_managers.get(&leader).url)
            .await
            .unwrap(),
    )
    .list_repositories(ListRepositoriesRequest::default())
    .await
    .expect("the leader serves");

    // The leading repo-manager dies: the standby takes over.
    stack.repo_managers.get_mut(&leader).kill();
    let new_leader = stack.repo_managers.one_leader(TAKEOVER_WITHIN).await;
    assert_eq!(new_leader, standby);
    assert_eq!(
        holder(&client, REPO_MANAGER_LEASE).await.as_deref(),
        Some(standby.as_str())
    );

    // The orchestrators (calling the repo-managers through their Service): the same.
    let leader = stack.orchestrators.one_leader(TAKEOVER_WITHIN).await;
    let standby = other(&stack.orchestrators.replicas, &leader);
    assert_eq!(
        holder(&client, ORCHESTRATOR_LEASE).await.as_deref(),
        Some(leader.as_str())
    );
    let mut standby_client = OrchestratorClient::new(
        stowage_grpc::connect(&stack.orchestrators.get(&standby).url)
            .await
            .unwrap(),
    );
    let refused = refusal_naming(&leader, || {
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
    assert_refused_by_standby(&refused, &leader);

    // The leading orchestrator dies: the standby takes over, and a backup created through it
    // completes (with the repo-manager that took over before).
    stack.orchestrators.get_mut(&leader).kill();
    let new_leader = stack.orchestrators.one_leader(TAKEOVER_WITHIN).await;
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
    let volume = stack.kubelets["node-a"]
        .pod(&example.pod_uid())
        .empty_dir("emptydir-volume");
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
        "{status:#?}\n{}",
        stack.logs()
    );
    assert_eq!(status.volumes.len(), 1, "{status:#?}");
}

/// The identity of the replica other than `identity` (of two).
fn other(replicas: &[stowage_e2e::ha::Replica], identity: &str) -> String {
    replicas
        .iter()
        .find(|replica| replica.identity != identity)
        .expect("two replicas")
        .identity
        .clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_leader_is_replaced_and_exits_out_of_its_leadership_when_continued() {
    let mut stack = HaStack::start(Default::default()).await;
    let kube = stack.kube_client().await;
    for replicas in [&mut stack.orchestrators, &mut stack.repo_managers] {
        let leader = replicas.one_leader(TAKEOVER_WITHIN).await;
        assert_eq!(leader_label(&kube, &leader).await.as_deref(), Some("true"));
        // Paused (SIGSTOP), it renews nothing: the Lease expires and the standby takes it.
        replicas.get_mut(&leader).pause();
        let new_leader = replicas.one_leader(TAKEOVER_WITHIN).await;
        assert_ne!(new_leader, leader);
        // Continued, it finds its renew deadline long passed and exits, to stand by once
        // Kubernetes restarts it.
        replicas.get_mut(&leader).resume();
        let deadline = Instant::now() + TAKEOVER_WITHIN;
        let status = loop {
            if let Some(status) = replicas.get_mut(&leader).exited() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "{leader} did not exit once continued:\n{}",
                replicas.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(status.code(), Some(LOST_LEADERSHIP), "{}", replicas.logs());
        assert_eq!(replicas.one_leader(TAKEOVER_WITHIN).await, new_leader);
        // Its Pod still carries the leader label (it exited at once, writing nothing), but it
        // is not routed to: it is not ready. Restarted as Kubernetes restarts the container,
        // it removes the label before it stands by, so the Service keeps to the new leader.
        assert_eq!(
            leader_label(&kube, &leader).await.as_deref(),
            Some("true"),
            "the old leader's label is left behind"
        );
        replicas.get_mut(&leader).start();
        let deadline = Instant::now() + TAKEOVER_WITHIN;
        while leader_label(&kube, &leader).await.is_some() {
            assert!(
                Instant::now() < deadline,
                "{leader} restarted kept the leader label:\n{}",
                replicas.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(replicas.one_leader(TAKEOVER_WITHIN).await, new_leader);
        assert_eq!(
            leader_label(&kube, &new_leader).await.as_deref(),
            Some("true")
        );
    }
}
