//! The fencing rule between real processes: a leader paused (SIGSTOP) through a takeover and
//! woken up (SIGCONT) after it writes nothing. For the orchestrator, the new leader takes the
//! running backup over to its end and the old one, woken up, leaves the backup's record and log
//! byte-identical, adds no snapshot and exits with code 3; for the repo-manager, the new leader
//! ends the interrupted prune and runs it again, and the old one's stale result is not written.
//! Two replicas of each service elect through their Leases in the Kubernetes API emulator.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use stowage_e2e::{
    TestProcess,
    api::{namespace_spec, wait_backup},
    binary, free_port, health_status,
    kube::{KubeEmulator, ensure_namespace, seed_example},
    kubelet::FakeKubelet,
    restic::{RepositoryRestic, restic_wrapper},
    stack::slow_restic,
    start_service,
};
use stowage_proto::v1::{
    AgentOperationState, BackupPhase, CreateBackupRequest, EnsureRepositoryRequest,
    GetAgentInfoRequest, GetBackupLogsRequest, GetRepositoryAccessRequest, MaintenanceKind,
    RunMaintenanceRequest, orchestrator_client::OrchestratorClient,
    repo_manager_client::RepoManagerClient, volume_agent_client::VolumeAgentClient,
};
use tokio::time::Instant;
use tonic_health::pb::health_check_response::ServingStatus;

/// Short timings, so that a takeover takes seconds: lease 4 s, renew deadline 3 s, retry 1 s.
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

/// How long a standby may take to lead once the leader stopped renewing: the lease duration
/// and the election's retries, with room for a loaded machine.
const TAKEOVER_WITHIN: Duration = Duration::from_secs(20);

const MASTER_KEY: &str = "master-key-for-the-fencing-test";

/// The exit code of a service that lost its leadership (`stowage_leader`).
const LOST_LEADERSHIP_EXIT_CODE: i32 = 3;

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

/// Waits until one of `replicas` whose `running` flag is set reports `service` SERVING;
/// returns its index. A paused replica is left out (it would not answer).
async fn leader_among(replicas: &mut [Replica], running: &[bool], service: &str) -> usize {
    let deadline = Instant::now() + TAKEOVER_WITHIN;
    loop {
        for (index, replica) in replicas.iter_mut().enumerate() {
            if !running[index] {
                continue;
            }
            if let Ok(Some(status)) = replica.process.child.try_wait() {
                panic!(
                    "{} exited with {status}; log:\n{}",
                    replica.identity,
                    replica.process.log()
                );
            }
            if health_status(&replica.url, service).await == Ok(ServingStatus::Serving) {
                return index;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no replica leads {service} within {TAKEOVER_WITHIN:?}\n{}",
            logs_of(replicas)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn logs_of(replicas: &[Replica]) -> String {
    replicas
        .iter()
        .map(|replica| format!("--- {}:\n{}", replica.identity, replica.process.log()))
        .collect()
}

/// Sends `signal` (`STOP`, `CONT`) to `process`.
fn signal(process: &TestProcess, signal: &str) {
    let status = Command::new("kill")
        .args([format!("-{signal}"), process.pid().to_string()])
        .status()
        .expect("running kill");
    assert!(status.success(), "kill -{signal} {}", process.pid());
}

/// Waits for a woken-up old leader to exit, and returns its exit code.
async fn exit_code(replica: &mut Replica) -> Option<i32> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = replica.process.child.try_wait().expect("try_wait") {
            return status.code();
        }
        assert!(
            Instant::now() < deadline,
            "{} is still running 20 s after it was woken up; log:\n{}",
            replica.identity,
            replica.process.log()
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
    let log = plain(&old.process.log());
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
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let storage = dir.path().join("bucket");
    std::fs::create_dir_all(&storage).unwrap();
    let storage_url = format!("file://{}", storage.display());
    let kube = KubeEmulator::start(&logs).await;
    let client = kube.client().await;
    ensure_namespace(&client, "stowage").await;

    // The volume's restic waits 15 s before it backs up: long enough to pause the leader and
    // let the standby take the running volume over.
    let kubelet = FakeKubelet::new(dir.path().join("nodes/node-a/pods"));
    let example = seed_example(&client, "foo", "node-a", Some("emptydir-volume")).await;
    let volume = kubelet.pod(&example.pod_uid()).empty_dir("emptydir-volume");
    std::fs::write(volume.join("data.txt"), b"written once").unwrap();
    let wrapper_dir = dir.path().join("wrapper");
    std::fs::create_dir_all(&wrapper_dir).unwrap();
    let restic = slow_restic(&wrapper_dir, 15);
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
            "--restic-binary".into(),
            restic.display().to_string(),
        ],
        &BTreeMap::new(),
        &logs,
    )
    .await;
    let repo_manager_scratch = dir.path().join("scratch/repo-manager");
    std::fs::create_dir_all(&repo_manager_scratch).unwrap();
    let repo_manager = start_service(
        "stowage-repo-manager",
        "stowage.v1.RepoManager",
        &[
            "--storage-url".into(),
            storage_url.clone(),
            "--scratch-dir".into(),
            repo_manager_scratch.display().to_string(),
        ],
        &BTreeMap::from([("STOWAGE_MASTER_KEY".to_string(), MASTER_KEY.to_string())]),
        &logs,
    )
    .await;

    // Housekeeping is put off, so that the new leader writes nothing of its own once the
    // backup has ended: any change in the bucket after that is the old leader's.
    let mut orchestrators: Vec<Replica> = ["orchestrator-a", "orchestrator-b"]
        .iter()
        .map(|identity| {
            start_replica(
                "stowage-orchestrator",
                identity,
                &[
                    "--repo-manager".into(),
                    repo_manager.url.clone(),
                    "--agent".into(),
                    format!("node-a={}", agent.url),
                    "--storage-url".into(),
                    storage_url.clone(),
                    "--poll-interval-ms".into(),
                    "100".into(),
                    "--housekeeping-interval-seconds".into(),
                    "3600".into(),
                ],
                &kube.env(),
                &logs,
            )
        })
        .collect();
    let mut running = vec![true, true];
    let old = leader_among(&mut orchestrators, &running, "stowage.v1.Orchestrator").await;
    let mut old_client = OrchestratorClient::new(
        stowage_grpc::connect(&orchestrators[old].url)
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
    let mut agent_client = VolumeAgentClient::new(stowage_grpc::connect(&agent.url).await.unwrap());
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let info = agent_client
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

    // The leader is paused with the volume running; the standby takes over.
    signal(&orchestrators[old].process, "STOP");
    running[old] = false;
    let new = leader_among(&mut orchestrators, &running, "stowage.v1.Orchestrator").await;
    assert_ne!(new, old);
    let mut new_client = OrchestratorClient::new(
        stowage_grpc::connect(&orchestrators[new].url)
            .await
            .unwrap(),
    );
    let ended = wait_backup(&mut new_client, "nightly").await;
    let status = ended.status.clone().unwrap_or_default();
    assert_eq!(
        status.phase,
        BackupPhase::Completed as i32,
        "{status:#?}\n{}",
        logs_of(&orchestrators)
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
    let backups = storage.join("backups");
    let records_before = files_under(&backups);
    assert!(
        records_before
            .keys()
            .any(|path| path.starts_with("nightly")),
        "the backup's record is in the bucket: {:?}",
        records_before.keys()
    );
    let access = RepoManagerClient::new(stowage_grpc::connect(&repo_manager.url).await.unwrap())
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
    signal(&orchestrators[old].process, "CONT");
    let code = exit_code(&mut orchestrators[old]).await;
    assert_eq!(
        code,
        Some(LOST_LEADERSHIP_EXIT_CODE),
        "{}",
        orchestrators[old].process.log()
    );
    assert_eq!(
        files_under(&backups),
        records_before,
        "the backup's record, log and resources are byte-identical after the old leader woke \
         up\n{}",
        orchestrators[old].process.log()
    );
    assert_eq!(
        repository.snapshot_ids(),
        snapshots_before,
        "no new snapshot"
    );
    assert_woke_up_stale(&orchestrators[old], "orchestrator");
    let old_term = led_in_term(&orchestrators[old].process.log()).unwrap();
    let new_term = led_in_term(&orchestrators[new].process.log())
        .unwrap_or_else(|| panic!("{}", orchestrators[new].process.log()));
    assert!(
        new_term > old_term,
        "the new leader's term {new_term} is newer than {old_term}"
    );
    // Whatever the old leader still sent the agent carried its older term, which the agent
    // refused: it had seen the new leader's when that re-attached.
    let agent_log = agent.process.log();
    if agent_log.contains(&format!("the request's leader term {old_term}")) {
        assert!(
            agent_log.contains(&format!("is older than term {new_term}")),
            "{agent_log}"
        );
    }
    let info = agent_client
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
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let storage = dir.path().join("bucket");
    std::fs::create_dir_all(&storage).unwrap();
    let storage_url = format!("file://{}", storage.display());
    let kube = KubeEmulator::start(&logs).await;
    ensure_namespace(&kube.client().await, "stowage").await;

    // The first prune waits 12 s before restic runs and marks its end; later ones run at once.
    let wrapper_dir = dir.path().join("wrapper");
    std::fs::create_dir_all(&wrapper_dir).unwrap();
    let first = wrapper_dir.join("first-prune");
    let restic = restic_wrapper(
        &wrapper_dir,
        "slow-first-prune",
        &format!(
            "case \" $* \" in *\" prune \"*)\n  if mkdir '{first}' 2>/dev/null; then\n    \
             sleep 12; restic \"$@\"; code=$?; touch '{first}/ended'; exit $code\n  fi;;\n\
             esac\nexec restic \"$@\"\n",
            first = first.display()
        ),
    );
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
                    "--restic-binary".into(),
                    restic.display().to_string(),
                    "--scheduler-tick".into(),
                    "1s".into(),
                ],
                &env,
                &logs,
            )
        })
        .collect();
    let mut running = vec![true, true];
    let old = leader_among(&mut repo_managers, &running, "stowage.v1.RepoManager").await;
    let mut old_client = RepoManagerClient::new(
        stowage_grpc::connect(&repo_managers[old].url)
            .await
            .unwrap(),
    );
    old_client
        .ensure_repository(EnsureRepositoryRequest {
            namespace: "foo".into(),
        })
        .await
        .expect("EnsureRepository");
    // The prune's caller stays away: the call ends when its repo-manager is paused or exits.
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
        logs_of(&repo_managers),
    )
    .await;

    // Paused in the middle of the prune; the standby takes over, ends the interrupted prune
    // and runs it again to its end.
    signal(&repo_managers[old].process, "STOP");
    running[old] = false;
    let new = leader_among(&mut repo_managers, &running, "stowage.v1.RepoManager").await;
    assert_ne!(new, old);
    wait_for(
        "the new leader runs the interrupted prune again",
        Duration::from_secs(30),
        || {
            let prune = &repository_record(&storage, "foo")["prune"];
            prune["running_since"].is_null() && prune["last_succeeded"] == true
        },
        logs_of(&repo_managers),
    )
    .await;
    // The old leader's restic (its child, which was not paused) finishes meanwhile.
    wait_for(
        "the paused repo-manager's restic ends",
        Duration::from_secs(30),
        || first.join("ended").exists(),
        logs_of(&repo_managers),
    )
    .await;
    let state = storage.join("stowage");
    let before = files_under(&state);

    signal(&repo_managers[old].process, "CONT");
    let code = exit_code(&mut repo_managers[old]).await;
    assert_eq!(
        code,
        Some(LOST_LEADERSHIP_EXIT_CODE),
        "{}",
        repo_managers[old].process.log()
    );
    assert_eq!(
        files_under(&state),
        before,
        "the repository records and keys are byte-identical after the old leader woke up\n{}",
        repo_managers[old].process.log()
    );
    assert_woke_up_stale(&repo_managers[old], "repo-manager");
    let answered = prune.await.expect("the prune call's task");
    assert!(
        answered.is_err(),
        "the old leader answered no prune result: {answered:?}"
    );

    // No stale lock is left, and the next prune runs.
    let mut new_client = RepoManagerClient::new(
        stowage_grpc::connect(&repo_managers[new].url)
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
