//! A new orchestrator takes over what the old one had in flight: running volumes are
//! re-attached on their agents (restic is not run again), and the fencing rule keeps a stale
//! leader's requests away from the agents. Real orchestrator, agent, repo-manager, restic and
//! Kubernetes API emulator.

use std::time::Duration;

use stowage_e2e::{
    api::wait_backup,
    restic::{RepositoryRestic, repository_access},
    stack::stack_with_slow_backups,
};
use stowage_proto::v1::{
    AgentOperationState, AttachOperationRequest, BackupPhase, BackupSpec, BackupVolumeRequest,
    CreateBackupRequest, GetAgentInfoRequest, GetBackupLogsRequest, GetBackupRequest, PodVolumeRef,
    VolumePhase, WatchBackupRequest, volume_agent_client::VolumeAgentClient,
};
use tonic::Code;

fn foo_spec() -> BackupSpec {
    BackupSpec {
        included_namespaces: vec!["foo".into()],
        ..Default::default()
    }
}

/// Creates the backup and returns once one of its volumes runs on its agent.
async fn start_and_wait_running(
    client: &mut stowage_e2e::api::Client,
    name: &str,
) -> stowage_proto::v1::Backup {
    client
        .create_backup(CreateBackupRequest {
            name: name.into(),
            spec: Some(foo_spec()),
        })
        .await
        .expect("CreateBackup");
    let mut stream = client
        .watch_backup(WatchBackupRequest { name: name.into() })
        .await
        .expect("WatchBackup")
        .into_inner();
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(event) = stream.message().await.expect("watch stream") {
            let backup = event.backup.expect("a backup");
            let status = backup.status.clone().unwrap_or_default();
            if status
                .volumes
                .iter()
                .any(|v| v.phase == VolumePhase::InProgress as i32)
            {
                return backup;
            }
        }
        panic!("the watch ended before a volume ran");
    })
    .await
    .expect("a volume starts within 60 s")
}

async fn backup_log(client: &mut stowage_e2e::api::Client, name: &str) -> String {
    client
        .get_backup_logs(GetBackupLogsRequest { name: name.into() })
        .await
        .expect("GetBackupLogs")
        .into_inner()
        .lines
        .iter()
        .map(|line| line.message.clone())
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_orchestrators_running_volume_is_reattached_by_the_next_not_run_again() {
    let (mut stack, _wrapper) = stack_with_slow_backups().await;
    let mut client = stack.client().await;
    let started = start_and_wait_running(&mut client, "nightly").await;
    drop(client);
    let mut agent = VolumeAgentClient::new(
        stowage_grpc::connect(&stack.agents["node-a"].url)
            .await
            .expect("connecting to the agent"),
    );
    // Killed only once the agent runs the operation: a volume the orchestrator has only sent
    // (InProgress in its memory, the request not yet at the agent) is rightly run afresh.
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let info = agent
                .get_agent_info(GetAgentInfoRequest {})
                .await
                .expect("GetAgentInfo")
                .into_inner();
            if info
                .operations
                .iter()
                .any(|op| op.state == AgentOperationState::Running as i32)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the agent runs the volume's restic");
    // The agent's restic keeps running through the orchestrator's death.
    stack.restart_orchestrator().await;
    let mut client = stack.client().await;
    let ended = wait_backup(&mut client, "nightly").await;
    let status = ended.status.clone().unwrap();
    assert_eq!(ended.uid, started.uid, "the same backup, not a new one");
    assert_eq!(status.phase, BackupPhase::Completed as i32, "{status:#?}");
    assert_eq!(status.volumes.len(), 1);
    assert!(!status.volumes[0].snapshot_id.is_empty());
    let log = backup_log(&mut client, "nightly").await;
    assert!(
        log.contains("re-attached to its operation on node node-a"),
        "{log}"
    );
    assert!(!log.contains("running it again"), "{log}");
    // One snapshot: restic ran once for the volume.
    let repository = RepositoryRestic::new(&repository_access(&stack, "foo").await);
    assert_eq!(
        repository.snapshot_ids(),
        vec![status.volumes[0].snapshot_id.clone()],
        "exactly the one snapshot the backup recorded"
    );
    // The agent still lists the ended operation, with its result, for a while.
    let info = agent
        .get_agent_info(GetAgentInfoRequest {})
        .await
        .expect("GetAgentInfo")
        .into_inner();
    let operation = info
        .operations
        .iter()
        .find(|op| op.uid == started.uid)
        .unwrap_or_else(|| panic!("the agent lists the operation: {:#?}", info.operations));
    assert_eq!(
        operation.state,
        AgentOperationState::Succeeded as i32,
        "{operation:#?}"
    );
    // `backup describe` reads GetBackup: one run, one record.
    let described = client
        .get_backup(GetBackupRequest {
            name: "nightly".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(described.status.unwrap().volumes.len(), 1);
}

/// `message` as a request from the leader of `term`.
fn with_term<T>(term: u64, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "stowage-leader-term",
        term.to_string().parse().expect("a header value"),
    );
    request
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_refuses_a_stale_leaders_requests_once_a_newer_leader_spoke() {
    let (stack, _wrapper) = stack_with_slow_backups().await;
    let mut agent = VolumeAgentClient::new(
        stowage_grpc::connect(&stack.agents["node-a"].url)
            .await
            .expect("connecting to the agent"),
    );
    // The newer leader's attach reaches the agent (which has no such operation).
    let error = agent
        .attach_backup(with_term(
            5,
            AttachOperationRequest {
                operation_id: "u1-0".into(),
            },
        ))
        .await
        .map(drop)
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound, "{error:?}");
    // The old leader, woken up, cannot start restic.
    let request = BackupVolumeRequest {
        operation_id: "u0-0".into(),
        volume: Some(PodVolumeRef {
            namespace: "foo".into(),
            pod_name: "p".into(),
            pod_uid: "00000000-0000-0000-0000-000000000000".into(),
            volume_name: "v".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let error = agent
        .backup_volume(with_term(4, request))
        .await
        .map(drop)
        .unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition, "{error:?}");
    assert!(
        error.message().contains("term 4") && error.message().contains("term 5"),
        "{}",
        error.message()
    );
}
