//! The run engine end to end, with the real orchestrator, repo-manager, agent, restic and
//! restore helper: what backups and restores share since they run through one loop. A restore
//! holds a shared lease on its repository, so a prune asked for meanwhile waits for it; leases
//! are renewed and expire with a killed orchestrator; a restore survives an orchestrator crash
//! in the storage location and its pod's restore helper learns the outcome; a restic that
//! stops reporting progress fails its volume by the stall timeout; `stowage restore cancel`
//! stops a running restore and its restic. The run loop's rules themselves (limits, the end
//! rule, timeouts with paused time) are the orchestrator core's unit tests.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use stowage_e2e::{
    api::{self, Client, wait_backup_within, wait_restore},
    cli::stowage,
    kube::{mark_init_container_running, seed_example, wait_for_pod},
    kubelet::{Entry, manifest, write_random_file},
    processes::{self, KillOnDrop},
    restic::restic_wrapper,
    restore_helper,
    stack::{Stack, StackOptions, slow_restic},
};
use stowage_proto::v1::{
    AcquireLeaseRequest, BackupPhase, CreateBackupRequest, CreateRestoreRequest,
    GetRestoreLogsRequest, GetRestoreRequest, LeaseMode, MaintenanceKind, ReleaseLeaseRequest,
    Restore, RestorePhase, RestoreSpec, RunMaintenanceRequest, VolumePhase, WatchRestoreRequest,
    repo_manager_client::RepoManagerClient,
};

/// Longest a test waits for what the engine promises within a bounded time (a stalled volume
/// failed, a cancelled restic gone, a helper told); far below every default timeout.
const BOUNDED: Duration = Duration::from_secs(60);

/// Lease TTL given to the orchestrator (`STOWAGE_LEASE_TTL_SECONDS`); it renews every third.
const LEASE_TTL_SECONDS: u64 = 4;

/// Stall timeout given to the orchestrator (`STOWAGE_STALL_TIMEOUT_SECONDS`). The stall clock
/// runs from the volume's start, and before restic's first status line the agent's restic
/// opens the repository (its key derivation is CPU-bound) and may look up a parent: on a busy
/// machine that took longer than 5 s.
const STALL_TIMEOUT_SECONDS: u64 = 20;

/// Size of the file a restore reads through a download limit.
const RESTORED_BYTES: usize = 2 * 1024 * 1024;

/// The `restic` of every service of a [`RestoreStack`]: `restic restore` reads at most
/// `{rate}` KiB/s, so a restore runs long enough to act on while restic holds its lock, and
/// each restore and prune appends `<command> start` and `<command> end <status>` to `{events}`
/// (restic runs as the wrapper's child, so the end is seen).
const LOGGING_RESTIC: &str = r#"case " $* " in
  *" restore "*) command=restore; set -- --limit-download {rate} "$@" ;;
  *" prune "*) command=prune ;;
  *) exec restic "$@" ;;
esac
echo "$command start" >> '{events}'
restic "$@"
status=$?
echo "$command end $status" >> '{events}'
exit $status
"#;

/// The agent's `restic` in the stall test: `restic backup` uploads at 128 KiB/s and its output
/// stops after the first status line that reports bytes done; restic then blocks on the full
/// pipe, alive and silent. Every other command is plain restic.
const SILENT_AFTER_FIRST_PROGRESS: &str = r#"case " $* " in
  *" backup "*) ;;
  *) exec restic "$@" ;;
esac
restic --limit-upload 128 "$@" | awk '{ print; fflush() } /"message_type":"status"/ && /"bytes_done":[1-9]/ { system("sleep 3600") }'
"#;

/// A stack whose services run [`LOGGING_RESTIC`], with the example pod's emptyDir (2 MiB of
/// random data and a small file) backed up by backup `source`.
struct RestoreStack {
    stack: Stack,
    /// Holds the wrapper and its event log.
    wrapper_dir: tempfile::TempDir,
    /// The source volume's files, to compare a completed restore with.
    before: BTreeMap<String, Entry>,
    _cleanup: KillOnDrop,
}

impl RestoreStack {
    /// Restores read at `rate` KiB/s.
    async fn start(rate: u32) -> RestoreStack {
        let wrapper_dir = tempfile::tempdir().expect("a temp dir for the restic wrapper");
        let events = wrapper_dir.path().join("restic-events");
        let restic = restic_wrapper(
            wrapper_dir.path(),
            "logging-restic",
            &LOGGING_RESTIC
                .replace("{rate}", &rate.to_string())
                .replace("{events}", &events.display().to_string()),
        );
        let stack = Stack::start(StackOptions {
            agent_args: vec!["--restic-binary".into(), restic.display().to_string()],
            // The repo-manager's restic (prune) too.
            env: BTreeMap::from([(
                "STOWAGE_RESTIC_BINARY".to_string(),
                restic.display().to_string(),
            )]),
            ..StackOptions::default()
        })
        .await;
        let cleanup = KillOnDrop(wrapper_dir.path().display().to_string());
        let kube = stack.kube_client().await;
        let example = seed_example(&kube, "foo", "node-a", Some("emptydir-volume")).await;
        let volume = stack.kubelets["node-a"]
            .pod(&example.pod_uid())
            .empty_dir("emptydir-volume");
        write_random_file(&volume.join("data.bin"), RESTORED_BYTES, 14);
        std::fs::write(volume.join("note.txt"), b"restored through the run engine")
            .expect("seeding the emptyDir");
        let before = manifest(&volume, false);
        let mut client = stack.client().await;
        let backup = api::backup_to_end(&mut client, "source", api::namespace_spec("foo")).await;
        let status = backup.status.unwrap_or_default();
        assert_eq!(
            status.phase,
            BackupPhase::Completed as i32,
            "{status:#?}\norchestrator log:\n{}",
            stack.orchestrator.process.log()
        );
        RestoreStack {
            stack,
            wrapper_dir,
            before,
            _cleanup: cleanup,
        }
    }

    /// The restores' and prunes' starts and ends, in order.
    fn events(&self) -> Vec<String> {
        std::fs::read_to_string(self.wrapper_dir.path().join("restic-events"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The agent's scratch dir: its restic processes have it in their environment (cache).
    fn agent_marker(&self) -> String {
        self.stack
            .dir
            .path()
            .join("scratch")
            .join("agent-node-a")
            .display()
            .to_string()
    }

    /// Starts restore `name` of backup `source` into namespace `bar`, plays scheduler and
    /// kubelet for the recreated pod, and returns once the agent's `restic restore` runs:
    /// the restore and the new pod's volume directory.
    async fn start_restore(&self, client: &mut Client, name: &str) -> (Restore, PathBuf) {
        let restore = client
            .create_restore(CreateRestoreRequest {
                name: name.to_string(),
                spec: Some(RestoreSpec {
                    backup_name: "source".into(),
                    namespace_mapping: [("foo".to_string(), "bar".to_string())].into(),
                    ..Default::default()
                }),
            })
            .await
            .expect("CreateRestore")
            .into_inner();
        let kube = self.stack.kube_client().await;
        let pod = wait_for_pod(&kube, "bar", "sample", Duration::from_secs(30)).await;
        let volume = self.stack.kubelets["node-a"]
            .pod(pod.metadata.uid.as_deref().expect("a stored pod has a uid"))
            .empty_dir("emptydir-volume");
        mark_init_container_running(&kube, "bar", "sample", "node-a", "restore-wait").await;
        wait_until("the agent runs restic restore", || {
            self.events().iter().any(|event| event == "restore start")
        });
        (restore, volume)
    }
}

/// `<volume>/.velero/<uid>.failed`: why the volume will not be restored, for the helper.
fn failure_marker(volume: &Path, uid: &str) -> PathBuf {
    volume.join(".velero").join(format!("{uid}.failed"))
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + BOUNDED;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {BOUNDED:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

async fn repo_manager(stack: &Stack) -> RepoManagerClient<stowage_grpc::TracedChannel> {
    RepoManagerClient::new(
        stowage_grpc::connect(&stack.repo_manager.url)
            .await
            .expect("connecting to the repo-manager"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn prune_asked_for_during_a_restore_waits_for_it_and_both_succeed() {
    let setup = RestoreStack::start(256).await;
    let mut client = setup.stack.client().await;
    let (restore, volume) = setup
        .start_restore(&mut client, "restore-during-prune")
        .await;

    // Asked while restic restores: the prune's exclusive lease waits for the restore's
    // shared one.
    let mut maintainer = client.clone();
    let prune = tokio::spawn(async move {
        maintainer
            .maintain_repository(RunMaintenanceRequest {
                namespace: "foo".into(),
                kind: MaintenanceKind::Prune as i32,
            })
            .await
    });
    let restore = wait_restore(&mut client, &restore.name).await;
    let pruned = prune
        .await
        .expect("the prune task")
        .expect("MaintainRepository")
        .into_inner();

    let status = restore.status.unwrap_or_default();
    assert_eq!(
        status.phase,
        RestorePhase::Completed as i32,
        "{status:#?}\norchestrator log:\n{}",
        setup.stack.orchestrator.process.log()
    );
    assert_eq!(manifest(&volume, false), setup.before);
    assert!(pruned.succeeded, "the prune failed: {pruned:#?}");
    assert_eq!(
        setup.events(),
        [
            "restore start",
            "restore end 0",
            "prune start",
            "prune end 0"
        ],
        "the prune's restic ran only after the restore's ended"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn orchestrator_killed_mid_restore_shows_it_ended_from_the_bucket_and_the_helper_exits() {
    let mut setup = RestoreStack::start(64).await;
    let mut client = setup.stack.client().await;
    let (restore, volume) = setup.start_restore(&mut client, "interrupted").await;
    let helper_log = setup.wrapper_dir.path().join("restore-helper.log");
    let mut helper = restore_helper::start(&restore.uid, &volume, &helper_log);
    drop(client);

    let killed = Instant::now();
    setup.stack.restart_orchestrator().await;
    let exit = restore_helper::exit(&mut helper, killed + BOUNDED, &helper_log);
    let helper_output = std::fs::read_to_string(&helper_log).unwrap_or_default();

    let mut client = setup.stack.client().await;
    client
        .get_restore(GetRestoreRequest {
            name: "interrupted".into(),
        })
        .await
        .expect("the new orchestrator knows the restore");
    let ended = wait_restore(&mut client, "interrupted").await;
    let status = ended.status.clone().unwrap_or_default();
    assert_eq!(ended.uid, restore.uid);
    assert_eq!(
        ended.spec.as_ref().map(|spec| spec.backup_name.as_str()),
        Some("source")
    );
    assert_eq!(status.volumes.len(), 1, "{status:#?}");
    let volume_status = &status.volumes[0];
    eprintln!(
        "after the crash the restore ended {:?}, its volume {:?} ({}); the helper exited {exit}",
        RestorePhase::try_from(status.phase),
        VolumePhase::try_from(volume_status.phase),
        volume_status.error_message
    );
    match RestorePhase::try_from(status.phase) {
        // Resumed: the volume was restored after all and the helper let the pod start.
        Ok(RestorePhase::Completed) => {
            assert!(exit.success(), "{exit}: {helper_output}");
            assert_eq!(manifest(&volume, false), setup.before);
        }
        // Ended: the volume failed with a reason, which reached the helper.
        Ok(RestorePhase::Failed | RestorePhase::PartiallyFailed) => {
            assert_eq!(
                volume_status.phase,
                VolumePhase::Failed as i32,
                "{status:#?}"
            );
            assert!(
                !volume_status.error_message.is_empty(),
                "a failed volume names why: {status:#?}"
            );
            assert_eq!(exit.code(), Some(1), "{helper_output}");
            // The marker's reason may have been rewritten since the helper read it (the agent
            // writes one when its stream is cut, the new orchestrator another when it
            // abandons the volume), so the helper's log is only checked to say why it ended.
            let marker = failure_marker(&volume, &restore.uid);
            let reason = std::fs::read_to_string(&marker)
                .unwrap_or_else(|error| panic!("{}: {error}", marker.display()));
            assert!(!reason.trim().is_empty(), "{} is empty", marker.display());
            assert!(
                helper_output.contains("failed"),
                "the helper logs why it stopped waiting:\n{helper_output}"
            );
        }
        other => panic!(
            "the restore neither resumed nor ended ({other:?}): {status:#?}\norchestrator log:\n{}",
            setup.stack.orchestrator.process.log()
        ),
    }

    // The restore's record, results and logs are in the storage location, and its log from
    // before the crash is served by the new orchestrator (mirrors hold no logs).
    let dir = setup.stack.storage.join("restores/interrupted");
    for file in [
        "stowage-restore.json",
        "restore-interrupted-logs.gz",
        "restore-interrupted-results.gz",
    ] {
        assert!(
            dir.join(file).exists(),
            "{file} missing in {}",
            dir.display()
        );
    }
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("stowage-restore.json")).expect("reading the restore record"),
    )
    .expect("the restore record is JSON");
    assert!(
        record.to_string().contains(&restore.uid),
        "the record names the restore's uid: {record}"
    );
    let logs = client
        .get_restore_logs(GetRestoreLogsRequest {
            name: "interrupted".into(),
        })
        .await
        .expect("GetRestoreLogs")
        .into_inner();
    assert!(
        logs.lines
            .iter()
            .any(|line| line.message.contains("bar/sample")),
        "the log from before the crash names the recreated pod: {logs:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_orchestrators_leases_are_released_within_two_ttls_and_a_prune_runs() {
    let wrapper_dir = tempfile::tempdir().expect("a temp dir for the restic wrapper");
    let _cleanup = KillOnDrop(wrapper_dir.path().display().to_string());
    let restic = slow_restic(wrapper_dir.path(), 120);
    let mut stack = Stack::start(StackOptions {
        agent_args: vec!["--restic-binary".into(), restic.display().to_string()],
        env: BTreeMap::from([
            (
                "STOWAGE_LEASE_TTL_SECONDS".to_string(),
                LEASE_TTL_SECONDS.to_string(),
            ),
            // The repo-manager's restic is the plain one.
            ("STOWAGE_RESTIC_BINARY".to_string(), "restic".to_string()),
        ]),
        ..StackOptions::default()
    })
    .await;
    let kube = stack.kube_client().await;
    let example = seed_example(&kube, "foo", "node-a", Some("emptydir-volume")).await;
    let volume = stack.kubelets["node-a"]
        .pod(&example.pod_uid())
        .empty_dir("emptydir-volume");
    std::fs::write(volume.join("data.txt"), b"leased").expect("seeding the emptyDir");
    let mut client = stack.client().await;
    client
        .create_backup(CreateBackupRequest {
            name: "leased".into(),
            spec: Some(api::namespace_spec("foo")),
        })
        .await
        .expect("CreateBackup");
    wait_volume_in_progress(&mut client, "leased").await;
    let marker = wrapper_dir.path().display().to_string();
    wait_until("the agent runs the restic wrapper", || {
        !processes::mentioning(&marker).is_empty()
    });

    // Past two TTLs the backup's lease is still held: the orchestrator renews it.
    tokio::time::sleep(Duration::from_secs(2 * LEASE_TTL_SECONDS)).await;
    let mut repo_manager = repo_manager(&stack).await;
    let refused = repo_manager
        .acquire_lease(exclusive_lease(Duration::from_millis(500)))
        .await;
    assert!(
        refused.is_err(),
        "no shared lease was held (or kept) while the backup ran: {refused:?}\norchestrator log:\n{}",
        stack.orchestrator.process.log()
    );

    drop(client);
    stack.orchestrator.process.kill();
    // Granted once the killed orchestrator's lease expires unrenewed, within two TTLs.
    let granted = repo_manager
        .acquire_lease(exclusive_lease(Duration::from_secs(2 * LEASE_TTL_SECONDS)))
        .await
        .unwrap_or_else(|status| {
            panic!(
                "the killed orchestrator's lease is still held after two TTLs: {status}\nrepo-manager log:\n{}",
                stack.repo_manager.process.log()
            )
        })
        .into_inner();
    repo_manager
        .release_lease(ReleaseLeaseRequest {
            lease_id: granted.lease_id,
        })
        .await
        .expect("ReleaseLease");
    let pruned = repo_manager
        .run_maintenance(RunMaintenanceRequest {
            namespace: "foo".into(),
            kind: MaintenanceKind::Prune as i32,
        })
        .await
        .expect("RunMaintenance")
        .into_inner();
    assert!(pruned.succeeded, "the prune failed: {pruned:#?}");
}

/// An exclusive lease on `foo`'s repository, as maintenance takes it, waiting at most `wait`.
fn exclusive_lease(wait: Duration) -> AcquireLeaseRequest {
    AcquireLeaseRequest {
        namespace: "foo".into(),
        mode: LeaseMode::Exclusive as i32,
        holder: "e2e/lease-probe".into(),
        ttl: Some(stowage_proto::prost_types::Duration {
            seconds: 60,
            nanos: 0,
        }),
        wait_timeout: Some(stowage_proto::prost_types::Duration {
            seconds: wait.as_secs() as i64,
            nanos: wait.subsec_nanos() as i32,
        }),
    }
}

/// Waits until a volume of backup `name` is with its agent.
async fn wait_volume_in_progress(client: &mut Client, name: &str) {
    stowage_e2e::api::wait_volume_in(client, name, &[VolumePhase::InProgress], BOUNDED).await;
}

/// Bytes as the CLI prints them (`0 B`, `1.5 KiB`, `10.0 MiB`), as the stall message names
/// the last progress.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_restic_fails_its_volume_by_the_stall_timeout_naming_the_last_progress() {
    let wrapper_dir = tempfile::tempdir().expect("a temp dir for the restic wrapper");
    let _cleanup = KillOnDrop(wrapper_dir.path().display().to_string());
    let restic = restic_wrapper(
        wrapper_dir.path(),
        "silent-restic",
        SILENT_AFTER_FIRST_PROGRESS,
    );
    let stack = Stack::start(StackOptions {
        agent_args: vec!["--restic-binary".into(), restic.display().to_string()],
        env: BTreeMap::from([(
            "STOWAGE_STALL_TIMEOUT_SECONDS".to_string(),
            STALL_TIMEOUT_SECONDS.to_string(),
        )]),
        ..StackOptions::default()
    })
    .await;
    let kube = stack.kube_client().await;
    let example = seed_example(&kube, "foo", "node-a", Some("emptydir-volume")).await;
    let volume = stack.kubelets["node-a"]
        .pod(&example.pod_uid())
        .empty_dir("emptydir-volume");
    write_random_file(&volume.join("data.bin"), 4 * 1024 * 1024, 4);
    let mut client = stack.client().await;
    client
        .create_backup(CreateBackupRequest {
            name: "stalled".into(),
            spec: Some(api::namespace_spec("foo")),
        })
        .await
        .expect("CreateBackup");
    let backup = wait_backup_within(&mut client, "stalled", BOUNDED).await;

    let status = backup.status.unwrap_or_default();
    assert_eq!(
        status.phase,
        BackupPhase::Failed as i32,
        "{status:#?}\norchestrator log:\n{}",
        stack.orchestrator.process.log()
    );
    assert_eq!(status.volumes.len(), 1, "{status:#?}");
    let failed = &status.volumes[0];
    assert_eq!(failed.phase, VolumePhase::Failed as i32, "{failed:#?}");
    let message = &failed.error_message;
    let progress = failed.progress.unwrap_or_default();
    assert!(
        progress.bytes_done > 0,
        "restic reported bytes before it fell silent: {failed:#?}"
    );
    let last = if progress.bytes_total > 0 {
        format!(
            "{} of {}",
            human_bytes(progress.bytes_done),
            human_bytes(progress.bytes_total)
        )
    } else {
        format!(
            "{}, {} files",
            human_bytes(progress.bytes_done),
            progress.files_done
        )
    };
    assert_eq!(
        message,
        &format!("stalled: no progress for {STALL_TIMEOUT_SECONDS}s (last: {last})"),
        "{failed:#?}"
    );

    // The silent restic was killed, not left holding its lock.
    let scratch = stack.dir.path().join("scratch").join("agent-node-a");
    wait_until("the stalled restic is gone", || {
        processes::running_with_word(&scratch.display().to_string(), "backup").is_empty()
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_cancel_stops_the_running_restore_and_kills_its_restic() {
    let setup = RestoreStack::start(16).await;
    let mut client = setup.stack.client().await;
    let (restore, volume) = setup.start_restore(&mut client, "stopped").await;
    let agent = setup.agent_marker();
    assert!(
        !processes::running_with_word(&agent, "restore").is_empty(),
        "restic restore runs before the cancel"
    );
    let helper_log = setup.wrapper_dir.path().join("restore-helper.log");
    let mut helper = restore_helper::start(&restore.uid, &volume, &helper_log);

    let cancelled = stowage(
        &setup.stack.orchestrator.url,
        &["restore", "cancel", "stopped"],
    );
    assert!(
        cancelled.status.success(),
        "stowage restore cancel failed: {}{}",
        String::from_utf8_lossy(&cancelled.stdout),
        String::from_utf8_lossy(&cancelled.stderr)
    );

    let ended = wait_restore(&mut client, "stopped").await;
    let status = ended.status.unwrap_or_default();
    assert_eq!(
        status.phase,
        RestorePhase::Cancelled as i32,
        "{status:#?}\norchestrator log:\n{}",
        setup.stack.orchestrator.process.log()
    );
    assert_eq!(status.volumes.len(), 1, "{status:#?}");
    assert_eq!(
        status.volumes[0].phase,
        VolumePhase::Cancelled as i32,
        "{status:#?}"
    );
    wait_until("the cancelled restore's restic is gone", || {
        processes::running_with_word(&agent, "restore").is_empty()
    });
    // The pod's helper is told the volume will not come, and stops waiting.
    let exit = restore_helper::exit(&mut helper, Instant::now() + BOUNDED, &helper_log);
    assert_eq!(
        exit.code(),
        Some(1),
        "{}",
        std::fs::read_to_string(&helper_log).unwrap_or_default()
    );
    assert!(failure_marker(&volume, &restore.uid).exists());
    assert!(
        !volume.join(".velero").join(&restore.uid).exists(),
        "a cancelled volume has no done file"
    );

    // A later watch sees the final state at once.
    let mut stream = client
        .watch_restore(WatchRestoreRequest {
            name: "stopped".into(),
        })
        .await
        .expect("WatchRestore")
        .into_inner();
    let last = stream
        .message()
        .await
        .expect("a restore event")
        .and_then(|event| event.restore)
        .and_then(|restore| restore.status)
        .unwrap_or_default();
    assert_eq!(last.phase, RestorePhase::Cancelled as i32);
}
