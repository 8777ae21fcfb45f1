//! Failures a backup system meets in production, with real processes: a volume agent killed
//! mid-backup, the repo-manager killed during a prune, the object store going away for good or
//! for less than the agent's retries, restic missing, a repository key changed behind
//! stowage's back, a full scratch dir. Each test
//! checks what the user sees (a failed volume with a reason naming the cause, within a bounded
//! time) and that the next backup succeeds once the cause is gone. The orchestrator's own crash
//! and SIGTERM are covered in `orchestrator.rs`; docs/failures.md describes every case.

use std::{
    collections::BTreeMap,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use stowage_e2e::{
    api::{self, Client},
    kube::seed_example,
    kubelet::write_sample_tree,
    processes,
    restic::{RepositoryRestic, repository_access},
    s3::S3Gate,
    stack::{Stack, StackOptions, slow_restic},
};
use stowage_proto::v1::{
    Backup, BackupPhase, BackupSpec, BackupStatus, CreateBackupRequest, MaintenanceKind,
    RunMaintenanceRequest, VolumePhase, repo_manager_client::RepoManagerClient,
};

/// Longest a failed volume may take to be reported; far below any backup timeout.
const BOUNDED: Duration = Duration::from_secs(60);

fn foo_spec() -> BackupSpec {
    BackupSpec {
        included_namespaces: vec!["foo".into()],
        ..Default::default()
    }
}

/// Starts backup `name` and returns its last state once it ended, or panics after `BOUNDED`.
async fn backup_to_end(client: &mut Client, name: &str) -> BackupStatus {
    client
        .create_backup(CreateBackupRequest {
            name: name.to_string(),
            spec: Some(foo_spec()),
        })
        .await
        .expect("CreateBackup");
    wait_backup(client, name).await.status.unwrap_or_default()
}

async fn wait_backup(client: &mut Client, name: &str) -> Backup {
    api::wait_backup_within(client, name, BOUNDED).await
}

/// Waits until a volume of backup `name` is running on its agent.
async fn wait_in_progress(client: &mut Client, name: &str) {
    api::wait_volume_in(client, name, &[VolumePhase::InProgress], BOUNDED).await;
}

/// A stack on node-a with the example pod's emptyDir volume holding a small tree.
async fn stack_with_example(options: StackOptions) -> Stack {
    let stack = Stack::start(options).await;
    let kube = stack.kube_client().await;
    let example = seed_example(&kube, "foo", "node-a", Some("emptydir-volume")).await;
    let volume = stack.kubelets["node-a"]
        .pod(&example.pod_uid())
        .empty_dir("emptydir-volume");
    write_sample_tree(&volume, "faults");
    stack
}

fn assert_completed(status: &BackupStatus, stack: &Stack) {
    assert_eq!(
        status.phase,
        BackupPhase::Completed as i32,
        "{status:#?}\norchestrator log:\n{}",
        stack.orchestrator.process.log()
    );
}

/// The one volume of a failed backup; its message must name every one of `causes`.
fn assert_volume_failed_naming(status: &BackupStatus, causes: &[&str]) -> String {
    assert_eq!(status.phase, BackupPhase::Failed as i32, "{status:#?}");
    assert_eq!(status.volumes.len(), 1, "{status:#?}");
    let volume = &status.volumes[0];
    assert_eq!(volume.phase, VolumePhase::Failed as i32, "{volume:#?}");
    for cause in causes {
        assert!(
            volume.error_message.contains(cause),
            "the reason does not name {cause:?}: {}",
            volume.error_message
        );
    }
    eprintln!("the volume failed: {}", volume.error_message);
    volume.error_message.clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_agent_fails_its_volume_naming_the_node_and_a_restarted_agent_serves_the_next_backup()
 {
    let wrapper_dir = tempfile::tempdir().unwrap();
    let restic = slow_restic(wrapper_dir.path(), 30);
    let mut stack = stack_with_example(StackOptions {
        agent_args: vec!["--restic-binary".into(), restic.display().to_string()],
        ..StackOptions::default()
    })
    .await;
    let mut client = stack.client().await;
    client
        .create_backup(CreateBackupRequest {
            name: "orphaned".into(),
            spec: Some(foo_spec()),
        })
        .await
        .expect("CreateBackup");
    wait_in_progress(&mut client, "orphaned").await;
    // The volume is InProgress before the agent has the request; wait for its restic.
    let marker = wrapper_dir.path().display().to_string();
    wait_until("the agent runs restic", || {
        !processes::mentioning(&marker).is_empty()
    });

    stack.agents.get_mut("node-a").unwrap().process.kill();
    // In a pod the agent's restic dies with the container; here it has to be ended by hand
    // (the wrapper, its sleep and restic all have the agent's scratch dir as their cache).
    let scratch = stack.dir.path().join("scratch").join("agent-node-a");
    processes::kill(&processes::mentioning(&scratch.display().to_string()));
    let status = wait_backup(&mut client, "orphaned")
        .await
        .status
        .unwrap_or_default();
    let reason = assert_volume_failed_naming(&status, &["lost the connection", "node-a"]);
    assert!(
        !reason.contains("timed out"),
        "failed by the timeout, not by the agent's death: {reason}"
    );

    // The restarted agent's restic no longer waits.
    std::fs::write(&restic, "#!/bin/sh\nexec restic \"$@\"\n").unwrap();
    stack.start_agent_again("node-a").await;
    let status = backup_to_end(&mut client, "after-restart").await;
    assert_completed(&status, &stack);

    let restic = RepositoryRestic::new(&repository_access(&stack, "foo").await);
    let check = restic.ok(&["check"]);
    assert!(check.contains("no errors were found"), "{check}");
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_restic_binary_fails_the_volume_naming_the_binary() {
    let stack = stack_with_example(StackOptions {
        agent_args: vec!["--restic-binary".into(), "/nonexistent/restic".into()],
        ..StackOptions::default()
    })
    .await;
    let mut client = stack.client().await;
    let status = backup_to_end(&mut client, "no-restic").await;
    assert_volume_failed_naming(&status, &["node-a", "/nonexistent/restic", "not found"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn repository_key_changed_behind_stowage_fails_with_wrong_password() {
    let stack = stack_with_example(StackOptions::default()).await;
    let mut client = stack.client().await;
    let status = backup_to_end(&mut client, "before-the-change").await;
    assert_completed(&status, &stack);

    // Someone with the password adds a key of their own and removes stowage's.
    let restic = RepositoryRestic::new(&repository_access(&stack, "foo").await);
    let theirs = restic.dir.path().join("their-password");
    write_private(&theirs, "somebody-else's-password");
    let keys = restic.ok(&["key", "list", "--json"]);
    let keys: Vec<serde_json::Value> = serde_json::from_str(&keys).expect("restic key list");
    let ours = keys
        .iter()
        .find(|key| key["current"] == true)
        .and_then(|key| key["id"].as_str())
        .expect("the key in use")
        .to_string();
    restic.ok(&[
        "key",
        "add",
        "--new-password-file",
        &theirs.display().to_string(),
    ]);
    let output = Command::new("restic")
        .args(["key", "remove", &ours])
        .env("RESTIC_REPOSITORY", &restic.url)
        .env("RESTIC_PASSWORD_FILE", &theirs)
        .env("RESTIC_CACHE_DIR", restic.dir.path().join("cache"))
        .envs(&restic.env)
        .output()
        .expect("running restic key remove");
    assert!(output.status.success(), "{output:?}");

    let status = backup_to_end(&mut client, "after-the-change").await;
    assert_volume_failed_naming(&status, &["wrong password"]);
}

/// A tmpfs mounted over a directory for the test, unmounted when dropped.
struct Mounted(PathBuf);

impl Mounted {
    /// Mounts a tmpfs of `size` over `dir` and fills it; `None` when mounting is not allowed
    /// (not root).
    fn full_tmpfs(dir: &Path, size: &str) -> Option<Mounted> {
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .map(|status| status.success())
            .unwrap_or(false);
        if !mounted {
            return None;
        }
        let mounted = Mounted(dir.to_path_buf());
        // Fill it up; the write ends with "no space left on device".
        let mut filler = std::fs::File::create(dir.join("filler")).expect("a filler file");
        let block = vec![0u8; 64 * 1024];
        while std::io::Write::write_all(&mut filler, &block).is_ok() {}
        Some(mounted)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn full_scratch_dir_fails_the_volume_naming_no_space() {
    let stack = stack_with_example(StackOptions::default()).await;
    let scratch = stack.dir.path().join("scratch").join("agent-node-a");
    let Some(_full) = Mounted::full_tmpfs(&scratch, "1m") else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let mut client = stack.client().await;
    let status = backup_to_end(&mut client, "no-space").await;
    assert_volume_failed_naming(&status, &["node-a", "scratch", "No space left on device"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn repo_manager_killed_during_prune_recovers_its_lease_and_the_stale_lock() {
    // The repo-manager's restic reads at 1 KiB/s while pruning, so the prune holds restic's
    // exclusive lock long enough to be interrupted; the agent's restic is the plain one.
    let wrapper_dir = tempfile::tempdir().unwrap();
    let restic = wrapper_dir.path().join("slow-prune-restic");
    std::fs::write(
        &restic,
        "#!/bin/sh\ncase \" $* \" in *\" prune \"*) exec restic --limit-download 1 \"$@\";; esac\nexec restic \"$@\"\n",
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&restic, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut stack = stack_with_example(StackOptions {
        env: BTreeMap::from([
            (
                "STOWAGE_RESTIC_BINARY".to_string(),
                restic.display().to_string(),
            ),
            ("STOWAGE_STALE_LOCK_AGE".to_string(), "1s".to_string()),
        ]),
        agent_args: vec!["--restic-binary".into(), "restic".into()],
        ..StackOptions::default()
    })
    .await;
    let mut client = stack.client().await;
    let status = backup_to_end(&mut client, "before-prune").await;
    assert_completed(&status, &stack);
    let repository = RepositoryRestic::new(&repository_access(&stack, "foo").await);

    let mut repo_manager = RepoManagerClient::new(
        stowage_grpc::connect(&stack.repo_manager.url)
            .await
            .expect("connecting to the repo-manager"),
    );
    let prune = tokio::spawn(async move {
        repo_manager
            .run_maintenance(RunMaintenanceRequest {
                namespace: "foo".into(),
                kind: MaintenanceKind::Prune as i32,
            })
            .await
    });
    // The repo-manager's restic has the repo-manager's scratch dir as its cache.
    let marker = stack
        .dir
        .path()
        .join("scratch")
        .join("repo-manager")
        .display()
        .to_string();
    wait_until("the prune holds restic's lock", || {
        processes::mentioning(&marker).iter().any(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains("prune"))
        }) && !repository.locks().is_empty()
    });
    stack.repo_manager.process.kill();
    // In a pod its restic dies with it; here it is ended by hand, leaving its lock behind.
    processes::kill(&processes::mentioning(&marker));
    let answer = prune.await.expect("the prune task");
    assert!(answer.is_err(), "the killed prune answered {answer:?}");
    assert_eq!(
        repository.locks().len(),
        1,
        "a killed prune leaves restic's exclusive lock"
    );
    // Past the stale-lock age, so only the dead holder makes it stale.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    stack.start_repo_manager_again().await;
    let status = backup_to_end(&mut client, "after-prune").await;
    assert_completed(&status, &stack);
    assert!(
        repository.locks().is_empty(),
        "restic locks left: {:?}",
        repository.locks()
    );
    let check = repository.ok(&["check"]);
    assert!(check.contains("no errors were found"), "{check}");
}

/// Agent flags for `retries` quick retries (after 0.2 s, 0.4 s, …) of a restic command that
/// failed for a reason that may pass.
fn quick_retries(restic: &Path, retries: u32) -> Vec<String> {
    vec![
        "--restic-binary".into(),
        restic.display().to_string(),
        "--restic-retries".into(),
        retries.to_string(),
        "--restic-retry-delay-ms".into(),
        "200".into(),
    ]
}

/// What the agent logs before it runs a failed restic command again.
const RETRYING: &str = "restic failed for a reason that may pass, retrying";
/// What the agent logs for each retry restic 0.17+ makes itself while it keeps running.
const RESTIC_RETRYING: &str = "restic could not reach the storage, it retries";

/// The seconds an outage error says restic retried for (`… retried for 10.2s without …`).
fn retried_for(message: &str) -> f64 {
    let (_, after) = message
        .split_once("retried for ")
        .unwrap_or_else(|| panic!("the error names the wait: {message}"));
    let (seconds, _) = after
        .split_once("s without progress")
        .unwrap_or_else(|| panic!("the error names the wait: {message}"));
    seconds
        .parse()
        .unwrap_or_else(|_| panic!("`{seconds}` is no number of seconds: {message}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_server_gone_mid_backup_fails_the_volume_with_a_storage_error_and_a_later_backup_succeeds()
 {
    let wrapper_dir = tempfile::tempdir().unwrap();
    let restic = slow_restic(wrapper_dir.path(), 3);
    let mut stack = stack_with_example(StackOptions {
        s3: true,
        // restic 0.18 retries a failed storage request itself for up to 15 minutes; the agent
        // stops it after 10 s without progress. The agent's own retry is allowed, to show an
        // outage restic waited out is not run again.
        agent_args: quick_retries(&restic, 1),
        env: BTreeMap::from([(
            "STOWAGE_STORAGE_OUTAGE_TIMEOUT".to_string(),
            "10s".to_string(),
        )]),
        ..StackOptions::default()
    })
    .await;
    let mut client = stack.client().await;
    client
        .create_backup(CreateBackupRequest {
            name: "outage".into(),
            spec: Some(foo_spec()),
        })
        .await
        .expect("CreateBackup");
    wait_in_progress(&mut client, "outage").await;
    let marker = wrapper_dir.path().display().to_string();
    wait_until("the agent runs restic", || {
        !processes::mentioning(&marker).is_empty()
    });
    // The object store goes away while restic waits to start its backup, and stays away
    // past the outage timeout.
    stack.s3.as_mut().unwrap().process.kill();
    let killed = Instant::now();
    let status = wait_backup(&mut client, "outage")
        .await
        .status
        .unwrap_or_default();
    eprintln!(
        "the backup ended {:?} after the S3 server went away",
        killed.elapsed()
    );
    let message = assert_volume_failed_naming(
        &status,
        &[
            "node-a",
            "cannot be reached",
            "without progress",
            "connection refused",
        ],
    );
    let waited = retried_for(&message);
    assert!(
        waited >= 10.0,
        "stopped only after the outage timeout: {message}"
    );
    assert!(!message.contains("gave up after"), "{message}");
    let log = stack.agents["node-a"].process.log();
    assert!(
        log.matches(RESTIC_RETRYING).count() >= 1,
        "restic's retries are in the agent log:\n{log}"
    );
    assert_eq!(
        log.matches(RETRYING).count(),
        0,
        "the agent does not run again what restic waited out:\n{log}"
    );

    stack.start_s3_again();
    std::fs::write(&restic, "#!/bin/sh\nexec restic \"$@\"\n").unwrap();
    let status = backup_to_end(&mut client, "after-outage").await;
    assert_completed(&status, &stack);
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_server_away_for_less_than_the_retries_is_waited_out_and_the_volume_completes() {
    let wrapper_dir = tempfile::tempdir().unwrap();
    let restic = slow_restic(wrapper_dir.path(), 3);
    let mut stack = stack_with_example(StackOptions {
        s3: true,
        s3_gate: true,
        agent_args: quick_retries(&restic, 4),
        // Far longer than the outage: restic's own retries wait it out.
        env: BTreeMap::from([(
            "STOWAGE_STORAGE_OUTAGE_TIMEOUT".to_string(),
            "5m".to_string(),
        )]),
        ..StackOptions::default()
    })
    .await;
    let mut client = stack.client().await;
    let first = backup_to_end(&mut client, "before-blip").await;
    assert_completed(&first, &stack);
    client
        .create_backup(CreateBackupRequest {
            name: "blip".into(),
            spec: Some(foo_spec()),
        })
        .await
        .expect("CreateBackup");
    wait_in_progress(&mut client, "blip").await;
    let marker = wrapper_dir.path().display().to_string();
    // Only the wrapper of `restic backup` waits; cutting a `restic snapshots` already talking
    // to the storage would fail it with a broken transfer, not an unreachable storage.
    wait_until("the agent waits to run restic backup", || {
        processes::mentioning(&marker).iter().any(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains("backup"))
        })
    });
    // The storage goes away while restic waits to start, and comes back, with every object,
    // once restic has said it will retry: its next attempt finds it again.
    gate(&mut stack).shut();
    wait_until("restic retries", || {
        stack.agents["node-a"]
            .process
            .log()
            .contains(RESTIC_RETRYING)
    });
    gate(&mut stack).open();
    let status = wait_backup(&mut client, "blip")
        .await
        .status
        .unwrap_or_default();
    assert_completed(&status, &stack);
    let volume = &status.volumes[0];
    assert_eq!(
        volume.parent_snapshot_id, first.volumes[0].snapshot_id,
        "the retried backup is incremental on the one before the outage"
    );

    let agent_log = stack.agents["node-a"].process.log();
    let retry = agent_log
        .lines()
        .find(|line| line.contains(RESTIC_RETRYING))
        .expect("a retry in the agent log");
    assert!(
        retry.contains("connection refused"),
        "the retry names its reason: {retry}"
    );
    let orchestrator_log = stack.orchestrator.process.log();
    assert!(
        orchestrator_log.contains("the agent retries restic"),
        "the retry reached the orchestrator through the event stream:\n{orchestrator_log}"
    );
    let repository = RepositoryRestic::new(&repository_access(&stack, "foo").await);
    let check = repository.ok(&["check"]);
    assert!(check.contains("no errors were found"), "{check}");
}

fn gate(stack: &mut Stack) -> &mut S3Gate {
    stack
        .s3
        .as_mut()
        .and_then(|s3| s3.gate.as_mut())
        .expect("a stack with s3_gate: true")
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + BOUNDED;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {BOUNDED:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn write_private(path: &Path, text: &str) {
    use std::io::Write as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .expect("writing a password file");
}
