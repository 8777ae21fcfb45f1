//! A new orchestrator takes over what the old one had in flight: running volumes of backups
//! and restores are re-attached on their agents (restic is not run again), and the fencing
//! rule keeps a stale leader's requests away from the agents. Real orchestrator, agent,
//! repo-manager, restic, restore helper and Kubernetes API emulator.

use std::time::Duration;

use stowage_e2e::{
    agent::wait_running_operations,
    api::{self, wait_backup, wait_restore},
    kube::{mark_init_container_running, seed_example, wait_for_pod},
    kubelet::{manifest, write_random_file},
    processes::KillOnDrop,
    restic::{RepositoryRestic, repository_access, restic_wrapper},
    restore_helper,
    stack::{Stack, StackOptions, stack_with_slow_backups},
};
use stowage_proto::v1::{
    AgentOperationKind, AgentOperationState, AttachOperationRequest, BackupPhase, BackupSpec,
    BackupVolumeRequest, CreateBackupRequest, CreateRestoreRequest, GetAgentInfoRequest,
    GetBackupRequest, GetRestoreLogsRequest, PodVolumeRef, RestorePhase, RestoreSpec, VolumePhase,
    WatchBackupRequest, volume_agent_client::VolumeAgentClient,
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
    wait_running_operations(&stack.agents["node-a"].url, None, 1, String::new).await;
    // The agent's restic keeps running through the orchestrator's death.
    stack.restart_orchestrator().await;
    let mut client = stack.client().await;
    let ended = wait_backup(&mut client, "nightly").await;
    let status = ended.status.clone().unwrap();
    assert_eq!(ended.uid, started.uid, "the same backup, not a new one");
    assert_eq!(status.phase, BackupPhase::Completed as i32, "{status:#?}");
    assert_eq!(status.volumes.len(), 1);
    assert!(!status.volumes[0].snapshot_id.is_empty());
    let log = stowage_e2e::api::backup_log(&mut client, "nightly").await;
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

/// The agent's `restic`: `restic restore` reads at most 64 KiB/s (a 2 MiB volume takes about
/// half a minute, long enough to kill the orchestrator meanwhile) and appends `restore start`
/// to `{events}` each time it runs; every other command is plain restic.
const SLOW_RESTORES: &str = r#"case " $* " in
  *" restore "*) echo "restore start" >> '{events}'; exec restic --limit-download 64 "$@" ;;
  *) exec restic "$@" ;;
esac
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_orchestrators_running_restore_is_reattached_and_its_helper_released() {
    restore_taken_over(false).await;
}

/// A rolling update stops the orchestrator with SIGTERM: the restore is handed over like a
/// backup (its volume keeps restoring on the agent, its helper is not told), not failed.
#[tokio::test(flavor = "multi_thread")]
async fn a_restore_handed_over_at_sigterm_is_reattached_and_its_helper_released() {
    restore_taken_over(true).await;
}

/// Starts a restore whose volume restores slowly, stops the orchestrator once the agent's
/// restic runs (SIGTERM when `graceful`, else SIGKILL), starts another, and checks that the
/// restore ends Completed by re-attaching to the running operation.
async fn restore_taken_over(graceful: bool) {
    let wrapper_dir = tempfile::tempdir().expect("a temp dir for the restic wrapper");
    let _cleanup = KillOnDrop(wrapper_dir.path().display().to_string());
    let events = wrapper_dir.path().join("restic-events");
    let restic = restic_wrapper(
        wrapper_dir.path(),
        "slow-restores",
        &SLOW_RESTORES.replace("{events}", &events.display().to_string()),
    );
    let mut stack = Stack::start(StackOptions {
        agent_args: vec!["--restic-binary".into(), restic.display().to_string()],
        ..StackOptions::default()
    })
    .await;
    let kube = stack.kube_client().await;
    let example = seed_example(&kube, "foo", "node-a", Some("emptydir-volume")).await;
    let source = stack.kubelets["node-a"]
        .pod(&example.pod_uid())
        .empty_dir("emptydir-volume");
    write_random_file(&source.join("data.bin"), 2 * 1024 * 1024, 20);
    std::fs::write(
        source.join("note.txt"),
        b"restored by the next orchestrator",
    )
    .expect("seeding the emptyDir");
    let before = manifest(&source, false);
    let mut client = stack.client().await;
    let backup = api::backup_to_end(&mut client, "source", api::namespace_spec("foo")).await;
    assert_eq!(
        backup.status.unwrap_or_default().phase,
        BackupPhase::Completed as i32
    );

    let restore = client
        .create_restore(CreateRestoreRequest {
            name: "moved".into(),
            spec: Some(RestoreSpec {
                backup_name: "source".into(),
                namespace_mapping: [("foo".to_string(), "bar".to_string())].into(),
                ..Default::default()
            }),
        })
        .await
        .expect("CreateRestore")
        .into_inner();
    // Scheduler and kubelet for the recreated pod: its restore helper runs and waits.
    let pod = wait_for_pod(&kube, "bar", "sample", Duration::from_secs(30)).await;
    let volume = stack.kubelets["node-a"]
        .pod(pod.metadata.uid.as_deref().expect("a stored pod has a uid"))
        .empty_dir("emptydir-volume");
    mark_init_container_running(&kube, "bar", "sample", "node-a", "restore-wait").await;
    let helper_log = wrapper_dir.path().join("restore-helper.log");
    let mut helper = restore_helper::start(&restore.uid, &volume, &helper_log);
    drop(client);
    // Killed once the agent's restic restores; it keeps restoring through the death.
    wait_running_operations(
        &stack.agents["node-a"].url,
        Some(AgentOperationKind::Restore),
        1,
        String::new,
    )
    .await;
    if graceful {
        stack.restart_orchestrator_gracefully().await;
    } else {
        stack.restart_orchestrator().await;
    }

    let mut client = stack.client().await;
    let ended = wait_restore(&mut client, "moved").await;
    let status = ended.status.clone().unwrap_or_default();
    assert_eq!(ended.uid, restore.uid, "the same restore, not a new one");
    assert_eq!(
        status.phase,
        RestorePhase::Completed as i32,
        "{status:#?}\norchestrator log:\n{}",
        stack.orchestrator.process.log()
    );
    assert_eq!(status.volumes.len(), 1, "{status:#?}");
    let exit = restore_helper::exit(
        &mut helper,
        std::time::Instant::now() + Duration::from_secs(60),
        &helper_log,
    );
    assert!(
        exit.success(),
        "the helper lets the pod start: {exit}\n{}",
        std::fs::read_to_string(&helper_log).unwrap_or_default()
    );
    assert_eq!(
        manifest(&volume, false),
        before,
        "the files came back as they were"
    );
    let log = client
        .get_restore_logs(GetRestoreLogsRequest {
            name: "moved".into(),
        })
        .await
        .expect("GetRestoreLogs")
        .into_inner()
        .lines
        .iter()
        .map(|line| line.message.clone())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(log.contains("taking it over"), "{log}");
    assert_eq!(
        log.contains("left running for the next leader to take over"),
        graceful,
        "only a stopped orchestrator says it hands over: {log}"
    );
    assert!(
        log.contains(
            "bar/sample volume emptydir-volume: re-attached to its operation on node node-a"
        ),
        "{log}"
    );
    assert!(!log.contains("running it again"), "{log}");
    assert_eq!(
        log.matches("restore ended").count(),
        1,
        "one run, one end: {log}"
    );
    let restores = std::fs::read_to_string(&events).unwrap_or_default();
    assert_eq!(
        restores
            .lines()
            .filter(|line| *line == "restore start")
            .count(),
        1,
        "restic restored the volume once"
    );
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
