//! The fencing rule between real processes: a leader paused (SIGSTOP) through a takeover and
//! woken up (SIGCONT) after it writes nothing. For the orchestrator, the new leader takes the
//! running backup over to its end and the old one, woken up, leaves the backup's record and log
//! byte-identical, adds no snapshot, starts or cancels nothing on the agent and exits with
//! code 3; for the repo-manager, the new leader ends the interrupted prune and runs it again,
//! and the old one's stale result is not written. Two replicas of each service elect through
//! their Leases in the Kubernetes API emulator (the `ha` harness).
//!
//! A woken-up leader notices at once that its renew deadline has passed and exits; whether it
//! first tries a write (refused by the fence, naming its term) or a request to the agent
//! (refused by the agent) depends on which of its tasks runs first, so the tests check what
//! must hold either way: nothing in the bucket changed, and any refusal names the old term.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use stowage_e2e::{
    agent::wait_running_operations,
    api::{namespace_spec, wait_backup},
    ha::{HaOptions, HaStack, LOST_LEADERSHIP, Replica, Replicas},
    health_status,
    kube::seed_example,
    restic::{RepositoryRestic, restic_wrapper},
    stack::slow_restic,
};
use stowage_proto::v1::{
    AgentOperationState, BackupPhase, CreateBackupRequest, EnsureRepositoryRequest,
    GetAgentInfoRequest, GetBackupLogsRequest, GetRepositoryAccessRequest, MaintenanceKind,
    RunMaintenanceRequest, orchestrator_client::OrchestratorClient,
    repo_manager_client::RepoManagerClient, volume_agent_client::VolumeAgentClient,
};
use tokio::time::Instant;
use tonic_health::pb::health_check_response::ServingStatus;

/// How long a standby may take to lead once the leader stopped renewing: the lease duration
/// (4 s) and the election's retries, with room for a loaded machine.
const TAKEOVER_WITHIN: Duration = Duration::from_secs(20);

/// The leader of `replicas` (which all run), then the identity of the one other replica.
async fn leader_and_standby(replicas: &mut Replicas) -> (String, String) {
    let leader = replicas.one_leader(TAKEOVER_WITHIN).await;
    let standby = replicas
        .replicas
        .iter()
        .map(|replica| replica.identity.clone())
        .find(|identity| *identity != leader)
        .expect("two replicas");
    (leader, standby)
}

/// Waits until `replica` reports `service` SERVING (it leads). Only it is asked: a paused
/// replica would never answer.
async fn wait_leads(replica: &mut Replica, service: &str, logs: impl Fn() -> String) {
    let deadline = Instant::now() + TAKEOVER_WITHIN;
    loop {
        if let Some(status) = replica.exited() {
            panic!(
                "{} exited with {status}; log:\n{}",
                replica.identity,
                replica.log()
            );
        }
        if health_status(&replica.url, service).await == Ok(ServingStatus::Serving) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} does not lead {service} within {TAKEOVER_WITHIN:?}\n{}",
            replica.identity,
            logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for a woken-up old leader to exit, and returns its exit code.
async fn exit_code(replica: &mut Replica) -> Option<i32> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = replica.exited() {
            return status.code();
        }
        assert!(
            Instant::now() < deadline,
            "{} is still running 20 s after it was woken up; log:\n{}",
            replica.identity,
            replica.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every file under `root`, by its path relative to it, with its bytes.
fn files_under(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let bytes = std::fs::read(&path).expect("reading a stored file");
                files.insert(path.strip_prefix(root).unwrap().to_path_buf(), bytes);
            }
        }
    }
    files
}

/// `log` without its terminal colour sequences (`ESC [ … m`).
fn plain(log: &str) -> String {
    let mut text = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for skipped in chars.by_ref() {
                if skipped == 'm' {
                    break;
                }
            }
        } else {
            text.push(c);
        }
    }
    text
}

/// The term a replica's log says it led in (the election's `leading` line).
fn led_in_term(log: &str) -> Option<u64> {
    let log = plain(log);
    let line = log.lines().find(|line| line.contains(" leading "))?;
    let after = &line[line.find("term")? + "term".len()..];
    let digits: String = after
        .trim_start_matches(|c: char| !c.is_ascii_digit())
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The old leader's log after it woke up: it lost the leadership, and any write it tried was
/// refused naming its ended term.
fn assert_woke_up_stale(old: &Replica, service: &str) {
    let log = plain(&old.log());
    let term = led_in_term(&log).unwrap_or_else(|| panic!("no `leading` line:\n{log}"));
    assert!(log.contains("lost the leadership"), "{log}");
    if log.contains("not writing") || log.contains("not running") {
        assert!(
            log.contains(&format!("this {service}'s leader term {term} has ended")),
            "a refused write names the ended term {term}:\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_old_orchestrator_writes_nothing_after_the_takeover() {
    // The volume's restic waits 15 s before it backs up: long enough to pause the leader and
    // let the standby take the running volume over. Housekeeping is put off, so that the new
    // leader writes nothing of its own once the backup has ended: any change in the bucket
    // after that is the old leader's.
    let wrapper = tempfile::tempdir().unwrap();
    let restic = slow_restic(wrapper.path(), 15);
    let mut stack = HaStack::start(HaOptions {
        agent_args: vec!["--restic-binary".into(), restic.display().to_string()],
        orchestrator_args: vec!["--housekeeping-interval-seconds".into(), "3600".into()],
        ..HaOptions::default()
    })
    .await;
    let kube = stack.kube_client().await;
    let example = seed_example(&kube, "foo", "node-a", Some("emptydir-volume")).await;
    let volume = stack.kubelets["node-a"]
        .pod(&example.pod_uid())
        .empty_dir("emptydir-volume");
    std::fs::write(volume.join("data.txt"), b"written once").unwrap();

    let (old, new) = leader_and_standby(&mut stack.orchestrators).await;
    let mut old_client = OrchestratorClient::new(
        stowage_grpc::connect(&stack.orchestrators.get(&old).url)
            .await
            .unwrap(),
    );
    old_client
        .create_backup(CreateBackupRequest {
            name: "nightly".into(),
            spec: Some(namespace_spec("foo")),
        })
        .await
        .expect("CreateBackup");
    drop(old_client);
    let mut agent = VolumeAgentClient::new(
        stowage_grpc::connect(&stack.agents["node-a"].url)
            .await
            .unwrap(),
    );
    wait_running_operations(&stack.agents["node-a"].url, None, 1, || stack.logs()).await;

    // The leader is paused with the volume running; the standby takes over. The new leader is
    // called directly: the Services would ask the paused replica too.
    stack.orchestrators.get_mut(&old).pause();
    let logs = stack.orchestrators.logs();
    wait_leads(
        stack.orchestrators.get_mut(&new),
        "stowage.v1.Orchestrator",
        || logs.clone(),
    )
    .await;
    let mut new_client = OrchestratorClient::new(
        stowage_grpc::connect(&stack.orchestrators.get(&new).url)
            .await
            .unwrap(),
    );
    let ended = wait_backup(&mut new_client, "nightly").await;
    let status = ended.status.clone().unwrap_or_default();
    assert_eq!(
        status.phase,
        BackupPhase::Completed as i32,
        "{status:#?}\n{}",
        stack.orchestrators.logs()
    );
    let log = new_client
        .get_backup_logs(GetBackupLogsRequest {
            name: "nightly".into(),
        })
        .await
        .expect("GetBackupLogs")
        .into_inner()
        .lines
        .iter()
        .map(|line| line.message.clone())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        log.contains("re-attached to its operation on node node-a"),
        "{log}"
    );
    let backups = stack.storage.join("backups");
    let records_before = files_under(&backups);
    assert!(
        records_before
            .keys()
            .any(|path| path.starts_with("nightly")),
        "the backup's record is in the bucket: {:?}",
        records_before.keys()
    );
    let access = stack
        .repo_manager_client()
        .await
        .get_repository_access(GetRepositoryAccessRequest {
            namespace: "foo".into(),
        })
        .await
        .expect("GetRepositoryAccess")
        .into_inner();
    let repository = RepositoryRestic::new(&access);
    let snapshots_before = repository.snapshot_ids();
    assert_eq!(snapshots_before.len(), 1, "restic ran once for the volume");

    // The old leader wakes up: it writes nothing and exits.
    stack.orchestrators.get_mut(&old).resume();
    let code = exit_code(stack.orchestrators.get_mut(&old)).await;
    let old_log = stack.orchestrators.get(&old).log();
    assert_eq!(code, Some(LOST_LEADERSHIP), "{old_log}");
    assert_eq!(
        files_under(&backups),
        records_before,
        "the backup's record, log and resources are byte-identical after the old leader woke \
         up\n{old_log}"
    );
    assert_eq!(
        repository.snapshot_ids(),
        snapshots_before,
        "no new snapshot"
    );
    assert_woke_up_stale(stack.orchestrators.get(&old), "orchestrator");
    let old_term = led_in_term(&old_log).unwrap();
    let new_log = stack.orchestrators.get(&new).log();
    let new_term = led_in_term(&new_log).unwrap_or_else(|| panic!("{new_log}"));
    assert!(
        new_term > old_term,
        "the new leader's term {new_term} is newer than {old_term}"
    );
    // Whatever the old leader still sent the agent (a cancel, an attach) carried its older
    // term, which the agent refused: it had seen the new leader's when that re-attached.
    let agent_log = plain(&stack.agents["node-a"].process.log());
    if agent_log.contains(&format!("the request's leader term {old_term}")) {
        assert!(
            agent_log.contains(&format!("is older than term {new_term}")),
            "{agent_log}"
        );
    }
    let info = agent
        .get_agent_info(GetAgentInfoRequest {})
        .await
        .expect("GetAgentInfo")
        .into_inner();
    assert_eq!(
        info.operations.len(),
        1,
        "the old leader started no operation on the agent: {:#?}",
        info.operations
    );
    assert_eq!(
        info.operations[0].state,
        AgentOperationState::Succeeded as i32,
        "the old leader cancelled nothing: {:#?}",
        info.operations
    );
}

/// The repository record of `namespace` as the repo-manager stored it.
fn repository_record(storage: &Path, namespace: &str) -> serde_json::Value {
    let path = storage.join(format!("stowage/repositories/{namespace}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|error| {
        panic!("reading {}: {error}", path.display());
    });
    serde_json::from_str(&text).expect("a JSON repository record")
}

async fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool, logs: String) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what} within {within:?}\n{logs}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_old_repo_manager_writes_no_stale_prune_result() {
    // The first prune waits 12 s before restic runs and marks its end; later ones run at once.
    let wrapper = tempfile::tempdir().unwrap();
    let first = wrapper.path().join("first-prune");
    let restic = restic_wrapper(
        wrapper.path(),
        "slow-first-prune",
        &format!(
            "case \" $* \" in *\" prune \"*)\n  if mkdir '{first}' 2>/dev/null; then\n    \
             sleep 12; restic \"$@\"; code=$?; touch '{first}/ended'; exit $code\n  fi;;\n\
             esac\nexec restic \"$@\"\n",
            first = first.display()
        ),
    );
    let mut stack = HaStack::start(HaOptions {
        orchestrators: Vec::new(),
        repo_manager_args: vec![
            "--restic-binary".into(),
            restic.display().to_string(),
            "--scheduler-tick".into(),
            "1s".into(),
        ],
        ..HaOptions::default()
    })
    .await;
    let storage = stack.storage.clone();
    let (old, new) = leader_and_standby(&mut stack.repo_managers).await;
    let mut old_client = RepoManagerClient::new(
        stowage_grpc::connect(&stack.repo_managers.get(&old).url)
            .await
            .unwrap(),
    );
    old_client
        .ensure_repository(EnsureRepositoryRequest {
            namespace: "foo".into(),
        })
        .await
        .expect("EnsureRepository");
    // The prune's caller stays away: the call ends when its repo-manager exits.
    let prune = tokio::spawn(async move {
        old_client
            .run_maintenance(RunMaintenanceRequest {
                namespace: "foo".into(),
                kind: MaintenanceKind::Prune as i32,
            })
            .await
    });
    wait_for(
        "the prune runs",
        Duration::from_secs(30),
        || {
            first.exists()
                && !repository_record(&storage, "foo")["prune"]["running_since"].is_null()
        },
        stack.repo_managers.logs(),
    )
    .await;

    // Paused in the middle of the prune; the standby takes over, ends the interrupted prune
    // and runs it again to its end.
    stack.repo_managers.get_mut(&old).pause();
    let logs = stack.repo_managers.logs();
    wait_leads(
        stack.repo_managers.get_mut(&new),
        "stowage.v1.RepoManager",
        || logs.clone(),
    )
    .await;
    wait_for(
        "the new leader runs the interrupted prune again",
        Duration::from_secs(30),
        || {
            let prune = &repository_record(&storage, "foo")["prune"];
            prune["running_since"].is_null() && prune["last_succeeded"] == true
        },
        stack.repo_managers.logs(),
    )
    .await;
    // The old leader's restic (its child, which was not paused) finishes meanwhile.
    wait_for(
        "the paused repo-manager's restic ends",
        Duration::from_secs(30),
        || first.join("ended").exists(),
        stack.repo_managers.logs(),
    )
    .await;
    let state = storage.join("stowage");
    let before = files_under(&state);

    stack.repo_managers.get_mut(&old).resume();
    let code = exit_code(stack.repo_managers.get_mut(&old)).await;
    let old_log = stack.repo_managers.get(&old).log();
    assert_eq!(code, Some(LOST_LEADERSHIP), "{old_log}");
    assert_eq!(
        files_under(&state),
        before,
        "the repository records and keys are byte-identical after the old leader woke up\n\
         {old_log}"
    );
    assert_woke_up_stale(stack.repo_managers.get(&old), "repo-manager");
    let answered = prune.await.expect("the prune call's task");
    assert!(
        answered.is_err(),
        "the old leader answered no prune result: {answered:?}"
    );

    // No stale lock is left, and the next prune runs.
    let mut new_client = RepoManagerClient::new(
        stowage_grpc::connect(&stack.repo_managers.get(&new).url)
            .await
            .unwrap(),
    );
    let access = new_client
        .get_repository_access(GetRepositoryAccessRequest {
            namespace: "foo".into(),
        })
        .await
        .expect("GetRepositoryAccess")
        .into_inner();
    assert_eq!(RepositoryRestic::new(&access).locks(), Vec::<String>::new());
    let result = new_client
        .run_maintenance(RunMaintenanceRequest {
            namespace: "foo".into(),
            kind: MaintenanceKind::Prune as i32,
        })
        .await
        .expect("the next prune")
        .into_inner();
    assert!(result.succeeded, "{result:?}");
}
