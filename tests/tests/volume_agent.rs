//! The volume agent against the real restic binary and a local repository: backup and restore
//! of a fake kubelet tree, incremental backup of a recreated pod, refusal of bad paths,
//! cancel, concurrency, S3 (and retries while it is away), spans, and keeping the repository
//! password out of `ps`, logs and spans.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use stowage_e2e::{
    ServiceProcess,
    kubelet::{FakeKubelet, manifest, new_pod_uid, write_random_file, write_sample_tree},
    otlp::OtlpCollector,
    s3::S3Server,
    start_service,
};
use stowage_proto::v1::{
    AbandonRestoreRequest, AttachOperationRequest, BackupVolumeEvent, BackupVolumeRequest,
    BackupVolumeResult, CancelOperationRequest, GetAgentInfoRequest, PodVolumeRef,
    RepositoryAccess, RestoreVolumeEvent, RestoreVolumeRequest, RestoreVolumeResult, VolumeSource,
    backup_volume_event, restore_volume_event, volume_agent_client::VolumeAgentClient,
};
use tempfile::TempDir;
use tonic::{Code, Status, transport::Channel};

/// The body of a function that reads a backup's or restore's event stream up to its result and
/// returns the events before it with the result (or the stream's error); a stream that ends
/// without a result fails the test. The two streams' events are distinct types of the same
/// shape, so one macro reads both.
macro_rules! until_result {
    ($stream:expr, $events:ident, $what:literal) => {{
        let mut stream = $stream;
        let mut events = Vec::new();
        while let Some(event) = stream.message().await? {
            if let Some($events::Event::Result(result)) = &event.event {
                return Ok((events, result.clone()));
            }
            events.push(event);
        }
        panic!(
            "{} stream ended without a result; events: {events:?}",
            $what
        )
    }};
}

struct Setup {
    dir: TempDir,
    kubelet: FakeKubelet,
    repository: String,
    /// Extra environment restic needs for the repository (S3 credentials).
    repository_env: BTreeMap<String, String>,
    password: String,
    agent: ServiceProcess,
    client: VolumeAgentClient<Channel>,
    s3: Option<S3Server>,
}

impl Setup {
    /// An agent and a repository in a local directory.
    async fn new(max_concurrent: u32) -> Setup {
        Setup::start(max_concurrent, false, BTreeMap::new()).await
    }

    /// An agent and a repository in a bucket of a local S3-compatible server.
    async fn with_s3(max_concurrent: u32) -> Setup {
        Setup::start(max_concurrent, true, BTreeMap::new()).await
    }

    async fn start(max_concurrent: u32, on_s3: bool, agent_env: BTreeMap<String, String>) -> Setup {
        Setup::start_with(max_concurrent, on_s3, agent_env, |_| {
            PathBuf::from("restic")
        })
        .await
    }

    /// Like `start`, with the restic binary the agent runs chosen by `restic` given the
    /// test's temp dir (a wrapper that records each run, say).
    async fn start_with(
        max_concurrent: u32,
        on_s3: bool,
        agent_env: BTreeMap<String, String>,
        restic: impl FnOnce(&Path) -> PathBuf,
    ) -> Setup {
        let dir = tempfile::tempdir().expect("temp dir");
        let restic_binary = restic(dir.path());
        let kubelet = FakeKubelet::new(dir.path().join("pods"));
        let (s3, repository, repository_env) = if on_s3 {
            let logs = dir.path().join("s3-logs");
            std::fs::create_dir_all(&logs).expect("log dir");
            // Behind a gate, so a test can take the storage away and give it back.
            let s3 = S3Server::start(&logs, "stowage-agent").behind_gate();
            let url = format!("s3:{}/{}/backups/restic/shop", s3.endpoint, s3.bucket);
            let env = s3.env();
            (Some(s3), url, env)
        } else {
            let path = dir.path().join("storage/restic/shop");
            (None, path.display().to_string(), BTreeMap::new())
        };
        // Unique, so finding it anywhere means it leaked.
        let password = format!("pw-{}", new_pod_uid());
        let password_file = dir.path().join("password");
        std::fs::write(&password_file, &password).expect("writing the password file");
        let init = Command::new("restic")
            .args(["init", "--repo"])
            .arg(&repository)
            .arg("--password-file")
            .arg(&password_file)
            .envs(&repository_env)
            .output()
            .expect("running restic init");
        assert!(
            init.status.success(),
            "restic init: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        std::fs::remove_file(&password_file).expect("removing the password file");
        let logs = dir.path().join("logs");
        std::fs::create_dir_all(&logs).expect("log dir");
        let args: Vec<String> = vec![
            "--node-name".into(),
            "node-1".into(),
            "--pods-root".into(),
            kubelet.pods_root().display().to_string(),
            "--scratch-dir".into(),
            dir.path().join("scratch").display().to_string(),
            "--max-concurrent".into(),
            max_concurrent.to_string(),
            "--restic-binary".into(),
            restic_binary.display().to_string(),
        ];
        // Debug logging is the hardest case for keeping the password out of the log.
        let mut envs = BTreeMap::from([("STOWAGE_LOG_LEVEL".to_string(), "debug".to_string())]);
        envs.extend(agent_env);
        let agent = start_service(
            "stowage-volume-agent",
            "stowage.v1.VolumeAgent",
            &args,
            &envs,
            &logs,
        )
        .await;
        let client = VolumeAgentClient::connect(agent.url.clone())
            .await
            .expect("connecting to the agent");
        Setup {
            repository,
            repository_env,
            dir,
            kubelet,
            password,
            agent,
            client,
            s3,
        }
    }

    fn access(&self) -> RepositoryAccess {
        RepositoryAccess {
            url: self.repository.clone(),
            password: self.password.clone(),
            env: self.repository_env.clone().into_iter().collect(),
        }
    }

    fn backup_request(
        &self,
        operation: &str,
        volume: PodVolumeRef,
        identity: &str,
    ) -> BackupVolumeRequest {
        BackupVolumeRequest {
            operation_id: operation.into(),
            volume: Some(volume),
            repository: Some(self.access()),
            backup_name: "nightly".into(),
            backup_uid: "7d3c1e2a-0000-4000-8000-000000000001".into(),
            stable_identity: identity.into(),
            extra_tags: Default::default(),
            parent_snapshot_id: String::new(),
            ..Default::default()
        }
    }

    async fn backup(
        &self,
        request: BackupVolumeRequest,
    ) -> Result<(Vec<BackupVolumeEvent>, BackupVolumeResult), Status> {
        let stream = self
            .client
            .clone()
            .backup_volume(request)
            .await?
            .into_inner();
        until_result!(stream, backup_volume_event, "backup")
    }

    async fn restore(
        &self,
        operation: &str,
        volume: PodVolumeRef,
        snapshot_id: &str,
        restore_uid: &str,
    ) -> Result<(Vec<RestoreVolumeEvent>, RestoreVolumeResult), Status> {
        let request = RestoreVolumeRequest {
            operation_id: operation.into(),
            volume: Some(volume),
            repository: Some(self.access()),
            snapshot_id: snapshot_id.into(),
            restore_uid: restore_uid.into(),
            restore_name: "restore-1".into(),
            ..Default::default()
        };
        let stream = self
            .client
            .clone()
            .restore_volume(request)
            .await?
            .into_inner();
        until_result!(stream, restore_volume_event, "restore")
    }

    /// `restic snapshots --json` read with the test's own restic, not the agent's.
    fn snapshots(&self) -> Vec<serde_json::Value> {
        let password_file = self.dir.path().join("password-check");
        std::fs::write(&password_file, &self.password).expect("writing the password file");
        let output = Command::new("restic")
            .args([
                "snapshots",
                "--json",
                "--repo",
                &self.repository,
                "--password-file",
            ])
            .arg(&password_file)
            .envs(&self.repository_env)
            .output()
            .expect("running restic snapshots");
        std::fs::remove_file(&password_file).expect("removing the password file");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice::<Option<Vec<serde_json::Value>>>(&output.stdout)
            .expect("snapshots JSON")
            .unwrap_or_default()
    }

    /// Lock files in the (local) repository: restic removes its own when stopped gently.
    fn repository_locks(&self) -> usize {
        std::fs::read_dir(Path::new(&self.repository).join("locks"))
            .map(|entries| entries.count())
            .unwrap_or(0)
    }

    fn assert_password_not_in_log(&self) {
        let log = self.agent.process.log();
        assert!(!log.is_empty(), "the agent logged nothing");
        assert!(
            !log.contains(&self.password),
            "the password appears in the agent log"
        );
        if let Some(secret) = self.repository_env.get("AWS_SECRET_ACCESS_KEY") {
            assert!(
                !log.contains(secret.as_str()),
                "the S3 secret appears in the agent log"
            );
        }
    }
}

fn volume(
    pod_uid: &str,
    pod_name: &str,
    name: &str,
    source: VolumeSource,
    pv: &str,
) -> PodVolumeRef {
    PodVolumeRef {
        namespace: "shop".into(),
        pod_name: pod_name.into(),
        pod_uid: pod_uid.into(),
        volume_name: name.into(),
        source: source as i32,
        pv_name: pv.into(),
        pvc_name: if pv.is_empty() {
            String::new()
        } else {
            format!("{name}-{pod_name}")
        },
        pvc_uid: String::new(),
    }
}

/// Direct children of `parent` whose command name is `restic`, zombies included.
fn restic_children(parent: u32) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("reading /proc").flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid …`; comm may hold spaces, so split after the last `)`.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let comm = head.split_once('(').map(|(_, c)| c).unwrap_or("");
        let ppid = rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if comm == "restic" && ppid == Some(parent) {
            found.push(stat);
        }
    }
    found
}

fn ps_output() -> String {
    // `e` adds each process's environment, so a password in env would show too.
    let output = Command::new("ps")
        .args(["-e", "-ww", "-o", "pid,args"])
        .output()
        .expect("running ps");
    let with_env = Command::new("ps")
        .args(["eww", "-e"])
        .output()
        .expect("running ps e");
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&with_env.stdout)
    )
}

/// Runs the init container binary; `via_env` passes the paths as the orchestrator does, in
/// `STOWAGE_RESTORE_VOLUME_PATHS`, instead of as arguments.
fn run_restore_helper(
    restore_uid: &str,
    paths: &[&Path],
    timeout: u64,
    via_env: bool,
) -> std::process::Output {
    let mut command = Command::new(stowage_e2e::binary("stowage-restore-helper"));
    command.arg(restore_uid);
    if via_env {
        let joined: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        command.env("STOWAGE_RESTORE_VOLUME_PATHS", joined.join(","));
    } else {
        command.args(paths);
    }
    command.args(["--timeout", &timeout.to_string(), "--poll-millis", "50"]);
    command.output().expect("running the restore helper")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_and_restore_round_trip_keeps_content_mode_links_and_mtime() {
    let setup = Setup::new(2).await;
    let old_uid = new_pod_uid();
    let old_pod = setup.kubelet.pod(&old_uid);
    let sources: Vec<(PodVolumeRef, PathBuf)> = vec![
        (
            volume(&old_uid, "web-0", "cache", VolumeSource::EmptyDir, ""),
            old_pod.empty_dir("cache"),
        ),
        (
            volume(
                &old_uid,
                "web-0",
                "data",
                VolumeSource::PersistentVolumeClaim,
                "pv-local-1",
            ),
            old_pod.pv("kubernetes.io~local-volume", "pv-local-1"),
        ),
        (
            volume(
                &old_uid,
                "web-0",
                "db",
                VolumeSource::PersistentVolumeClaim,
                "pvc-0a1b2c",
            ),
            old_pod.csi_pv("pvc-0a1b2c"),
        ),
    ];
    let mut snapshots = Vec::new();
    let mut backed_up = Vec::new();
    for (index, (volume, dir)) in sources.iter().enumerate() {
        write_sample_tree(dir, &volume.volume_name);
        let request = setup.backup_request(
            &format!("backup-{index}"),
            volume.clone(),
            &format!("test/web/{}", volume.volume_name),
        );
        let (_, result) = setup.backup(request).await.expect("backup succeeds");
        assert!(!result.snapshot_id.is_empty());
        assert_eq!(result.parent_snapshot_id, "", "first backup has no parent");
        assert_eq!(
            result.files_new, 4,
            "regular files; the symlink is not counted: {result:?}"
        );
        assert_eq!(result.files_total, 4, "{result:?}");
        assert!(
            result.bytes_stored > 0,
            "what the repository stores for it: {result:?}"
        );
        assert_eq!(
            Path::new(&result.path),
            dir.canonicalize().unwrap(),
            "read from the volume dir (CSI: its mount subdir)"
        );
        backed_up.push((result.files_total, result.bytes_total));
        snapshots.push(result.snapshot_id);
    }

    // The snapshots carry our tags and Velero's.
    let listed = setup.snapshots();
    assert_eq!(listed.len(), 3);
    let db = listed
        .iter()
        // restic 0.18's backup summary names the full id.
        .find(|s| s["id"] == snapshots[2].as_str())
        .expect("the CSI snapshot is listed");
    let tags: Vec<&str> = db["tags"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t.as_str())
        .collect();
    for expected in [
        "backup=nightly",
        "ns=shop",
        "pod=web-0",
        &format!("pod-uid={old_uid}"),
        "volume=db",
        "stable-identity=test/web/db",
    ] {
        assert!(tags.contains(&expected), "{expected} missing from {tags:?}");
    }
    assert_eq!(db["hostname"], "node-1");

    // Restore into a new pod whose volumes kubelet has just created, empty.
    let new_uid = new_pod_uid();
    let new_pod = setup.kubelet.pod(&new_uid);
    let targets = [
        new_pod.empty_dir("cache"),
        new_pod.pv("kubernetes.io~local-volume", "pv-local-1"),
        new_pod.csi_pv("pvc-0a1b2c"),
    ];
    // A stale file at a restored path is overwritten.
    std::fs::write(
        targets[0].join("README.txt"),
        "stale content from the new pod",
    )
    .unwrap();
    let restore_uid = "5b6c7d8e-0000-4000-8000-000000000002";
    for (index, ((source_volume, source_dir), target)) in sources.iter().zip(&targets).enumerate() {
        let mut target_volume = source_volume.clone();
        target_volume.pod_uid = new_uid.clone();
        target_volume.pod_name = "web-0-restored".into();
        let (events, result) = setup
            .restore(
                &format!("restore-{index}"),
                target_volume,
                &snapshots[index],
                restore_uid,
            )
            .await
            .expect("restore succeeds");
        // Counted as the backup counted the same data: 4 regular files (restic's restore
        // would say 11, with the symlink and the 6 directories) and their bytes.
        let (files_backed_up, bytes_backed_up) = backed_up[index];
        assert_eq!(result.files_restored, files_backed_up, "{result:?}");
        assert_eq!(result.bytes_restored, bytes_backed_up, "{result:?}");
        assert!(result.bytes_restored > 4096);
        let last_progress = events.iter().rev().find_map(|e| match &e.event {
            Some(restore_volume_event::Event::Progress(p)) => Some(*p),
            _ => None,
        });
        let last_progress = last_progress.expect("restore reports progress");
        assert_eq!(last_progress.bytes_done, last_progress.bytes_total);
        assert_eq!(
            (last_progress.files_done, last_progress.files_total),
            (files_backed_up, files_backed_up)
        );
        assert_eq!(
            manifest(target, true),
            manifest(source_dir, true),
            "restored {} differs from its source",
            target.display()
        );
        assert!(target.join(".velero").join(restore_uid).is_file());
    }

    // The restore helper sees all three volumes done…
    let paths: Vec<&Path> = targets.iter().map(PathBuf::as_path).collect();
    let done = run_restore_helper(restore_uid, &paths, 10, true);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    // …and times out, naming it, on a volume that was not restored.
    let not_restored = new_pod.empty_dir("scratch");
    let waiting = run_restore_helper(restore_uid, &[&targets[0], &not_restored], 1, false);
    assert!(!waiting.status.success());
    let stderr = String::from_utf8_lossy(&waiting.stderr);
    assert!(
        stderr.contains("timed out") && stderr.contains(&not_restored.display().to_string()),
        "{stderr}"
    );

    // The other pod's volumes were not touched.
    assert_eq!(
        manifest(&sources[0].1, true),
        manifest(&targets[0], true),
        "source still equal to its restore"
    );
    setup.assert_password_not_in_log();
}

/// The restore helper as the init container runs it, left waiting in the background.
fn spawn_restore_helper(restore_uid: &str, paths: &[&Path]) -> std::process::Child {
    Command::new(stowage_e2e::binary("stowage-restore-helper"))
        .arg(restore_uid)
        .args(paths)
        // The bound of a broken test only: the helper must exit long before, on the marker.
        .args(["--timeout", "600", "--poll-millis", "50"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting the restore helper")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_or_failed_restores_make_the_waiting_helper_exit_naming_the_reason() {
    let setup = Setup::new(2).await;
    let restore_uid = "5e1f7a2b-0000-4000-8000-00000000abcd";
    let pod_uid = new_pod_uid();
    let pod = setup.kubelet.pod(&pod_uid);
    let data = pod.empty_dir("data");
    let logs = pod.empty_dir("logs");

    // The helper waits for both volumes: neither is restored yet.
    let helper = spawn_restore_helper(restore_uid, &[&data, &logs]);
    let reason = "snapshot 1a2b3c4d of volume logs is gone: forgotten by retention";
    let answer = setup
        .client
        .clone()
        .abandon_restore(AbandonRestoreRequest {
            volume: Some(volume(
                &pod_uid,
                "web-0",
                "logs",
                VolumeSource::EmptyDir,
                "",
            )),
            restore_uid: restore_uid.into(),
            reason: reason.into(),
        })
        .await
        .expect("AbandonRestore")
        .into_inner();
    assert!(answer.written, "the volume is on this node");
    let marker = logs.join(".velero").join(format!("{restore_uid}.failed"));
    assert_eq!(
        std::fs::read_to_string(&marker).expect("the failure marker"),
        format!("{reason}\n")
    );
    // The helper exits non-zero by itself (its timeout is ten minutes away), naming the
    // volume and the reason.
    let exited = tokio::task::spawn_blocking(move || helper.wait_with_output())
        .await
        .expect("waiting for the helper")
        .expect("the helper's output");
    let stderr = String::from_utf8_lossy(&exited.stderr);
    assert_eq!(exited.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(reason), "{stderr}");
    assert!(stderr.contains(&logs.display().to_string()), "{stderr}");
    assert!(!stderr.contains("timed out"), "{stderr}");

    // A pod that is not on this node: nothing written, nothing refused.
    let elsewhere = setup
        .client
        .clone()
        .abandon_restore(AbandonRestoreRequest {
            volume: Some(volume(
                &new_pod_uid(),
                "web-1",
                "logs",
                VolumeSource::EmptyDir,
                "",
            )),
            restore_uid: restore_uid.into(),
            reason: reason.into(),
        })
        .await
        .expect("AbandonRestore of another node's pod")
        .into_inner();
    assert!(!elsewhere.written);
    // A restore uid that is not one file name is refused, naming the field.
    let refused = setup
        .client
        .clone()
        .abandon_restore(AbandonRestoreRequest {
            volume: Some(volume(
                &pod_uid,
                "web-0",
                "logs",
                VolumeSource::EmptyDir,
                "",
            )),
            restore_uid: "../../etc".into(),
            reason: reason.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("restore uid"), "{refused:?}");

    // A RestoreVolume that fails (no such snapshot) leaves the marker too, with restic's
    // reason, and a helper started afterwards exits at once.
    let failed_uid = "5e1f7a2b-0000-4000-8000-00000000beef";
    let error = setup
        .restore(
            "restore-missing-snapshot",
            volume(&pod_uid, "web-0", "data", VolumeSource::EmptyDir, ""),
            "deadbeefdeadbeef",
            failed_uid,
        )
        .await
        .expect_err("the snapshot does not exist");
    let marker = data.join(".velero").join(format!("{failed_uid}.failed"));
    let written = std::fs::read_to_string(&marker).expect("the failure marker of a failed restore");
    assert!(
        written.starts_with("restoring the volume failed: "),
        "{written}"
    );
    assert!(written.contains("deadbeef"), "{written} / {error:?}");
    assert!(!data.join(".velero").join(failed_uid).exists());
    let late = run_restore_helper(failed_uid, &[&data], 600, false);
    let stderr = String::from_utf8_lossy(&late.stderr);
    assert_eq!(late.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("restoring the volume failed"), "{stderr}");
    setup.assert_password_not_in_log();
}

/// `restic` found on PATH, by absolute path: a wrapper must not depend on the environment
/// the agent gives restic.
fn real_restic() -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("restic"))
        .find(|path| path.is_file())
        .expect("restic is not on PATH: install it (scripts/install-deps)")
}

/// A restic wrapper in `dir` that appends each run's arguments as one line to `runs.log`
/// there, then runs the real restic with its stderr copied to `stderr.log` as it comes.
fn recording_restic(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let script = dir.join("recording-restic");
    let log = dir.join("runs.log");
    let stderr = dir.join("stderr.log");
    std::fs::write(
        &script,
        format!(
            "#!/bin/bash\necho \"$*\" >> '{}'\n'{}' \"$@\" 2> >(tee -a '{}' >&2)\n",
            log.display(),
            real_restic().display(),
            stderr.display()
        ),
    )
    .expect("writing the restic wrapper");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
        .expect("chmod the restic wrapper");
    script
}

fn restic_stderr(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
}

fn restic_runs(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("runs.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Bytes the file system really holds for `path` (its allocated blocks).
fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path).expect("stat").blocks() * 512
}

/// Whether two files hold the same bytes, read in chunks (they are too big to hold at once).
fn same_content(a: &Path, b: &Path) -> bool {
    use std::io::Read as _;
    let mut a = std::fs::File::open(a).expect("opening a file to compare");
    let mut b = std::fs::File::open(b).expect("opening a file to compare");
    let (mut chunk_a, mut chunk_b) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = a.read(&mut chunk_a).expect("reading");
        if n == 0 {
            return b.read(&mut chunk_b).expect("reading") == 0;
        }
        if b.read_exact(&mut chunk_b[..n]).is_err() || chunk_a[..n] != chunk_b[..n] {
            return false;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparse_file_restores_with_its_holes_in_one_restic_process() {
    use std::io::{Seek as _, SeekFrom, Write as _};
    const SIZE: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;
    let setup = Setup::start_with(1, false, BTreeMap::new(), recording_restic).await;
    let old_uid = new_pod_uid();
    let source = setup.kubelet.pod(&old_uid).empty_dir("disk");
    // A 1 GiB disk image holding 3 MiB of data, the rest holes.
    let image = source.join("disk.img");
    let data = source.join("data.bin");
    write_random_file(&data, 3 * MIB as usize, 7);
    let bytes = std::fs::read(&data).expect("reading the random data");
    std::fs::remove_file(&data).expect("removing the random data");
    {
        let mut file = std::fs::File::create(&image).expect("creating the image");
        file.write_all(&bytes[..MIB as usize]).expect("writing");
        file.seek(SeekFrom::Start(512 * MIB)).expect("seeking");
        file.write_all(&bytes[MIB as usize..]).expect("writing");
        file.set_len(SIZE).expect("set_len");
    }
    assert!(
        allocated(&image) < 64 * MIB,
        "the test's file system does not keep holes ({} bytes allocated), so it cannot show \
         a sparse restore",
        allocated(&image)
    );
    let volume_ref = volume(&old_uid, "vm-0", "disk", VolumeSource::EmptyDir, "");
    let (_, backup) = setup
        .backup(setup.backup_request("backup-sparse", volume_ref.clone(), "test/vm/disk"))
        .await
        .expect("backup succeeds");
    assert_eq!((backup.files_total, backup.bytes_total), (1, SIZE));

    let new_uid = new_pod_uid();
    let target = setup.kubelet.pod(&new_uid).empty_dir("disk");
    let mut target_ref = volume_ref.clone();
    target_ref.pod_uid = new_uid.clone();
    let runs_before = restic_runs(setup.dir.path()).len();
    let (events, result) = setup
        .restore(
            "restore-sparse",
            target_ref,
            &backup.snapshot_id,
            "5b6c7d8e-0000-4000-8000-000000000003",
        )
        .await
        .expect("restore succeeds");

    // One restic process, `restore --json --sparse`; no `restic stats` beside it.
    let runs = restic_runs(setup.dir.path());
    let restore_runs = &runs[runs_before..];
    assert_eq!(
        restore_runs.len(),
        1,
        "restic runs of the restore: {restore_runs:?}"
    );
    let words: Vec<&str> = restore_runs[0].split_whitespace().collect();
    for expected in ["restore", "--json", "--sparse", backup.snapshot_id.as_str()] {
        assert!(words.contains(&expected), "{expected} missing: {words:?}");
    }

    let restored = target.join("disk.img");
    assert_eq!(std::fs::metadata(&restored).expect("stat").len(), SIZE);
    assert!(
        allocated(&restored) < 64 * MIB,
        "restored with its holes: {} bytes allocated for a {SIZE}-byte file",
        allocated(&restored)
    );
    assert!(same_content(&image, &restored), "restored content differs");

    // Counted as the backup counted it.
    assert_eq!(
        (result.files_restored, result.bytes_restored),
        (backup.files_total, backup.bytes_total),
        "{result:?}"
    );
    let progress: Vec<_> = events
        .iter()
        .filter_map(|event| match &event.event {
            Some(restore_volume_event::Event::Progress(progress)) => Some(*progress),
            _ => None,
        })
        .collect();
    for step in &progress {
        // A total is either unknown (0) or restic's final one, never a running count.
        assert!(
            step.bytes_total == 0 || step.bytes_total == SIZE,
            "{progress:?}"
        );
        assert!(step.bytes_done <= SIZE, "{progress:?}");
    }
    let last = progress.last().expect("restore reports progress");
    assert_eq!((last.bytes_done, last.bytes_total), (SIZE, SIZE));
    assert_eq!((last.files_done, last.files_total), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_of_recreated_pod_is_incremental() {
    let setup = Setup::new(2).await;
    let first_uid = new_pod_uid();
    let first_pod = setup.kubelet.pod(&first_uid);
    let data = first_pod.csi_pv("pvc-77aa");
    for index in 0..20 {
        write_random_file(&data.join(format!("file-{index:02}.bin")), 64 * 1024, index);
    }
    let identity = "pvc-uid/6e1f0c2a-9b7d-4f5e-8a3c-2d1b0e9f8a7c";
    let (_, first) = setup
        .backup(setup.backup_request(
            "first",
            volume(
                &first_uid,
                "db-7f9c-abcde",
                "data",
                VolumeSource::PersistentVolumeClaim,
                "pvc-77aa",
            ),
            identity,
        ))
        .await
        .expect("first backup");
    assert_eq!(first.files_new, 20);

    // The pod is recreated by its controller: new name, new UID, the same PV mounted again
    // (moved, so the files keep their inodes as they would on the real volume).
    let second_uid = new_pod_uid();
    let second_pod = setup.kubelet.pod(&second_uid);
    let csi_dir = second_pod.dir.join("volumes/kubernetes.io~csi");
    std::fs::create_dir_all(&csi_dir).unwrap();
    std::fs::rename(
        first_pod.dir.join("volumes/kubernetes.io~csi/pvc-77aa"),
        csi_dir.join("pvc-77aa"),
    )
    .unwrap();
    let moved = csi_dir.join("pvc-77aa/mount");
    write_random_file(&moved.join("file-03.bin"), 64 * 1024, 999);

    let (_, second) = setup
        .backup(setup.backup_request(
            "second",
            volume(
                &second_uid,
                "db-7f9c-xyz12",
                "data",
                VolumeSource::PersistentVolumeClaim,
                "pvc-77aa",
            ),
            identity,
        ))
        .await
        .expect("second backup");
    assert_eq!(second.parent_snapshot_id, first.snapshot_id);
    assert_eq!(
        (
            second.files_new,
            second.files_changed,
            second.files_unmodified
        ),
        (0, 1, 19),
        "only the changed file is read: {second:?}"
    );
    assert!(
        second.bytes_added < 3 * 64 * 1024,
        "about one file's worth of new data, got {}",
        second.bytes_added
    );

    // Another identity on the same data starts its own chain.
    let (_, other) = setup
        .backup(setup.backup_request(
            "other",
            volume(
                &second_uid,
                "db-7f9c-xyz12",
                "data",
                VolumeSource::PersistentVolumeClaim,
                "pvc-77aa",
            ),
            "pvc-uid/another",
        ))
        .await
        .expect("backup under another identity");
    assert_eq!(other.parent_snapshot_id, "");
    setup.assert_password_not_in_log();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uids_and_path_traversal_are_refused_without_touching_anything() {
    let setup = Setup::new(2).await;
    let uid = new_pod_uid();
    let pod = setup.kubelet.pod(&uid);
    write_sample_tree(&pod.empty_dir("cache"), "cache");
    let outside = setup.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("host-secret"), b"not for backup").unwrap();
    std::os::unix::fs::symlink(
        &outside,
        pod.dir.join("volumes/kubernetes.io~empty-dir/evil"),
    )
    .unwrap();
    let before = manifest(setup.kubelet.pods_root(), true);

    let cases: Vec<(&str, PodVolumeRef)> = vec![
        (
            "uid with ..",
            volume("../../etc", "p", "cache", VolumeSource::EmptyDir, ""),
        ),
        (
            "uid not a uid",
            volume("not-a-uid", "p", "cache", VolumeSource::EmptyDir, ""),
        ),
        (
            "volume with ..",
            volume(&uid, "p", "..", VolumeSource::EmptyDir, ""),
        ),
        (
            "volume with /",
            volume(&uid, "p", "a/../../x", VolumeSource::EmptyDir, ""),
        ),
        (
            "volume with NUL",
            volume(&uid, "p", "cache\0x", VolumeSource::EmptyDir, ""),
        ),
        (
            "pv with ..",
            volume(
                &uid,
                "p",
                "data",
                VolumeSource::PersistentVolumeClaim,
                "../../../etc",
            ),
        ),
        (
            "symlink out of the pod",
            volume(&uid, "p", "evil", VolumeSource::EmptyDir, ""),
        ),
        (
            "hostPath",
            volume(&uid, "p", "host", VolumeSource::HostPath, ""),
        ),
        (
            "block",
            volume(&uid, "p", "raw", VolumeSource::Block, "pv-raw"),
        ),
    ];
    for (what, volume) in cases {
        let status = setup
            .backup(setup.backup_request("bad", volume.clone(), "x"))
            .await
            .expect_err(what);
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        let status = setup
            .restore("bad-restore", volume, "abcdef12", "r-1")
            .await
            .expect_err(what);
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
    }
    let status = setup
        .backup(setup.backup_request(
            "missing",
            volume(&uid, "p", "nope", VolumeSource::EmptyDir, ""),
            "x",
        ))
        .await
        .expect_err("a missing volume");
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains("nope"), "{}", status.message());

    assert_eq!(
        manifest(setup.kubelet.pods_root(), true),
        before,
        "nothing touched"
    );
    assert!(setup.snapshots().is_empty(), "nothing backed up");
}

/// Agent settings that make a 16 MiB backup last about 16 s whatever the CPU, so a cancel
/// always lands while restic runs.
fn upload_limit() -> BTreeMap<String, String> {
    BTreeMap::from([("STOWAGE_UPLOAD_LIMIT_KIB".to_string(), "1024".to_string())])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_mid_backup_kills_restic_and_queued_work_waits() {
    let setup = Setup::start(1, false, upload_limit()).await;
    let big_uid = new_pod_uid();
    let big = setup.kubelet.pod(&big_uid).empty_dir("bulk");
    // Incompressible and uploaded at 1 MiB/s: restic is still busy when the cancel arrives.
    write_random_file(&big.join("bulk.bin"), 16 << 20, 42);
    let small_uid = new_pod_uid();
    write_sample_tree(&setup.kubelet.pod(&small_uid).empty_dir("cache"), "small");

    let mut client = setup.client.clone();
    let mut big_stream = client
        .backup_volume(setup.backup_request(
            "big",
            volume(&big_uid, "bulk-0", "bulk", VolumeSource::EmptyDir, ""),
            "test/bulk",
        ))
        .await
        .expect("big backup accepted")
        .into_inner();
    // Wait until restic reports progress: it is running.
    loop {
        let event = big_stream
            .message()
            .await
            .expect("big backup streams")
            .expect("big backup still running");
        match event.event {
            Some(backup_volume_event::Event::Progress(_)) => break,
            Some(backup_volume_event::Event::Result(result)) => {
                panic!("finished before it could be cancelled: {result:?}")
            }
            _ => {}
        }
    }
    let agent_pid = setup.agent.process.pid();
    assert!(
        !restic_children(agent_pid).is_empty(),
        "restic runs as the agent's child"
    );
    let ps = ps_output();
    assert!(
        ps.contains("--limit-upload 1024"),
        "ps shows restic running with the agent's upload limit"
    );
    assert!(
        !ps.contains(&setup.password),
        "the password appears in ps output"
    );

    // One slot: a second backup queues.
    let mut queued_stream = client
        .backup_volume(setup.backup_request(
            "small",
            volume(&small_uid, "web-0", "cache", VolumeSource::EmptyDir, ""),
            "test/small",
        ))
        .await
        .expect("small backup accepted")
        .into_inner();
    let first = queued_stream.message().await.unwrap().unwrap();
    assert!(
        matches!(first.event, Some(backup_volume_event::Event::Queued(q)) if q.position == 1),
        "{first:?}"
    );
    let info = client
        .get_agent_info(GetAgentInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((info.running_operations, info.queued_operations), (1, 1));
    assert_eq!(info.max_concurrent_operations, 1);
    assert!(info.restic_version.starts_with("restic "), "{info:?}");

    // Cancel the queued one, then the running one.
    let cancelled = client
        .cancel_operation(CancelOperationRequest {
            operation_id: "small".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(cancelled.cancelled);
    let status = queued_stream
        .message()
        .await
        .expect_err("queued backup ends cancelled");
    assert_eq!(status.code(), Code::Cancelled);

    let cancelled = client
        .cancel_operation(CancelOperationRequest {
            operation_id: "big".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(cancelled.cancelled);
    let status = loop {
        match big_stream.message().await {
            Ok(Some(event)) => assert!(
                !matches!(event.event, Some(backup_volume_event::Event::Result(_))),
                "the backup finished instead of being cancelled"
            ),
            Ok(None) => panic!("stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::Cancelled, "{status:?}");
    // The stream ends only after restic was killed and reaped.
    assert_eq!(restic_children(agent_pid), Vec::<String>::new());
    let unknown = client
        .cancel_operation(CancelOperationRequest {
            operation_id: "big".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!unknown.cancelled, "a finished operation is gone");
    assert!(
        setup.snapshots().is_empty(),
        "the cancelled backup left no snapshot"
    );
    assert_eq!(
        setup.repository_locks(),
        0,
        "restic removed its lock when stopped"
    );

    // Nothing half-done trips the next run: the small volume backs up fine now.
    let (_, result) = setup
        .backup(setup.backup_request(
            "small-again",
            volume(&small_uid, "web-0", "cache", VolumeSource::EmptyDir, ""),
            "test/small",
        ))
        .await
        .expect("backup after a cancel");
    assert_eq!(result.files_new, 4);
    assert!(
        std::fs::read_dir(setup.dir.path().join("scratch"))
            .unwrap()
            .flatten()
            .all(|e| e.file_name() == "cache"),
        "no per-run password dirs left in scratch"
    );
    setup.assert_password_not_in_log();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_backups_into_one_repository_both_succeed() {
    // Upload-limited so both are certainly running at the same time.
    let setup = Setup::start(2, false, upload_limit()).await;
    let mut requests = Vec::new();
    for (index, name) in ["alpha", "beta"].iter().enumerate() {
        let uid = new_pod_uid();
        let dir = setup.kubelet.pod(&uid).empty_dir("data");
        write_random_file(&dir.join("payload.bin"), 4 << 20, index as u64 + 7);
        write_sample_tree(&dir, name);
        requests.push(setup.backup_request(
            name,
            volume(&uid, name, "data", VolumeSource::EmptyDir, ""),
            &format!("test/{name}/data"),
        ));
    }
    let beta = requests.pop().unwrap();
    let alpha = requests.pop().unwrap();
    let overlap = async {
        let mut client = setup.client.clone();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let info = client
                .get_agent_info(GetAgentInfoRequest {})
                .await
                .unwrap()
                .into_inner();
            if info.running_operations == 2 {
                return true;
            }
            if std::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let (alpha, beta, overlapped) = tokio::join!(setup.backup(alpha), setup.backup(beta), overlap);
    assert!(overlapped, "both backups ran at once");
    let (alpha_events, alpha) = alpha.expect("alpha backup");
    let (beta_events, beta) = beta.expect("beta backup");
    for events in [&alpha_events, &beta_events] {
        assert!(
            !events
                .iter()
                .any(|e| matches!(e.event, Some(backup_volume_event::Event::Queued(_)))),
            "two slots: nothing queues"
        );
    }
    assert_ne!(alpha.snapshot_id, beta.snapshot_id);
    assert_eq!((alpha.files_new, beta.files_new), (5, 5));
    assert_eq!(setup.snapshots().len(), 2);
    setup.assert_password_not_in_log();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repository_errors_map_to_status_codes() {
    let setup = Setup::new(2).await;
    let uid = new_pod_uid();
    let dir = setup.kubelet.pod(&uid).empty_dir("cache");
    write_sample_tree(&dir, "cache");
    let cache = volume(&uid, "web-0", "cache", VolumeSource::EmptyDir, "");

    let mut wrong_password = setup.backup_request("wrong", cache.clone(), "test/cache");
    if let Some(access) = wrong_password.repository.as_mut() {
        access.password = "not-the-password".into();
    }
    let status = setup
        .backup(wrong_password)
        .await
        .expect_err("wrong password");
    // Not PermissionDenied, which stowage keeps for callers whose identity is refused.
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");

    let mut missing = setup.backup_request("missing", cache.clone(), "test/cache");
    if let Some(access) = missing.repository.as_mut() {
        access.url = setup
            .dir
            .path()
            .join("storage/restic/nobody")
            .display()
            .to_string();
    }
    let status = setup.backup(missing).await.expect_err("missing repository");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("nobody"), "{}", status.message());

    let status = setup
        .restore("unknown-snapshot", cache.clone(), "deadbeef", "r-9")
        .await
        .expect_err("unknown snapshot");
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(
        !dir.join(".velero/r-9").exists(),
        "no done marker for a failed restore"
    );

    let mut no_password = setup.backup_request("no-password", cache, "test/cache");
    if let Some(access) = no_password.repository.as_mut() {
        access.password.clear();
    }
    let status = setup.backup(no_password).await.expect_err("empty password");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(setup.snapshots().is_empty());
    setup.assert_password_not_in_log();
}

/// Whether `pid` is still a live (not zombie) process.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Starts a backup of `volume` and returns its stream once restic reports progress.
async fn backup_until_running(
    setup: &Setup,
    operation: &str,
    volume: PodVolumeRef,
) -> tonic::Streaming<BackupVolumeEvent> {
    let mut stream = setup
        .client
        .clone()
        .backup_volume(setup.backup_request(operation, volume, "test/bulk"))
        .await
        .expect("backup accepted")
        .into_inner();
    loop {
        let event = stream
            .message()
            .await
            .expect("backup streams")
            .expect("backup still running");
        match event.event {
            Some(backup_volume_event::Event::Progress(_)) => return stream,
            Some(backup_volume_event::Event::Result(result)) => {
                panic!("finished before it could be stopped: {result:?}")
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_up_backup_runs_on_for_a_new_caller_then_is_killed_and_shutdown_kills_at_once() {
    let mut env = upload_limit();
    env.insert("STOWAGE_DETACH_GRACE_SECONDS".into(), "3".into());
    let mut setup = Setup::start(2, false, env).await;
    let uid = new_pod_uid();
    let big = setup.kubelet.pod(&uid).empty_dir("bulk");
    write_random_file(&big.join("bulk.bin"), 16 << 20, 43);
    let bulk = volume(&uid, "bulk-0", "bulk", VolumeSource::EmptyDir, "");
    let agent_pid = setup.agent.process.pid();

    // The caller goes away mid-backup: restic keeps running for the grace period, and a new
    // caller (an orchestrator taking over) attaches and is sent the latest progress first.
    let stream = backup_until_running(&setup, "hang-up", bulk.clone()).await;
    assert_eq!(restic_children(agent_pid).len(), 1);
    drop(stream);
    let mut attached = setup
        .client
        .clone()
        .attach_backup(AttachOperationRequest {
            operation_id: "hang-up".into(),
        })
        .await
        .expect("attach within the grace period")
        .into_inner();
    let first = attached
        .message()
        .await
        .expect("attached stream")
        .expect("an event");
    assert!(
        matches!(first.event, Some(backup_volume_event::Event::Progress(_))),
        "{first:?}"
    );
    assert_eq!(
        restic_children(agent_pid).len(),
        1,
        "the same restic runs on"
    );
    // Nobody attached for the grace period: the agent stops restic rather than run on for
    // nobody.
    drop(attached);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !restic_children(agent_pid).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "restic still running after the caller left: {:?}",
            restic_children(agent_pid)
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    assert_eq!(
        setup.repository_locks(),
        0,
        "restic removed its lock on hang-up"
    );

    // SIGTERM to the agent stops the restic it runs before it exits.
    let _stream = backup_until_running(&setup, "shutdown", bulk).await;
    let children = restic_children(agent_pid);
    assert_eq!(children.len(), 1, "{children:?}");
    let restic_pid: u32 = children[0]
        .split_whitespace()
        .next()
        .and_then(|pid| pid.parse().ok())
        .expect("pid in stat");
    setup.agent.process.stop(std::time::Duration::from_secs(20));
    let status = setup.agent.process.child.try_wait().expect("agent status");
    assert!(
        status.is_some_and(|s| s.success()),
        "agent exited cleanly on SIGTERM: {status:?}; log:\n{}",
        setup.agent.process.log()
    );
    assert!(!alive(restic_pid), "restic {restic_pid} outlived the agent");
    assert_eq!(
        setup.repository_locks(),
        0,
        "restic removed its lock on shutdown"
    );
    assert!(
        setup.snapshots().is_empty(),
        "no snapshot from stopped backups"
    );
    setup.assert_password_not_in_log();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_and_restore_through_s3_with_credentials_from_the_request() {
    let setup = Setup::with_s3(2).await;
    assert!(setup.s3.is_some());
    let old_uid = new_pod_uid();
    let source = setup.kubelet.pod(&old_uid).csi_pv("pvc-s3-1");
    write_sample_tree(&source, "s3");
    write_random_file(&source.join("payload.bin"), 2 << 20, 5);
    let data = volume(
        &old_uid,
        "db-0",
        "data",
        VolumeSource::PersistentVolumeClaim,
        "pvc-s3-1",
    );
    let (_, backup) = setup
        .backup(setup.backup_request("s3-backup", data.clone(), "pvc-uid/s3"))
        .await
        .expect("backup to S3");
    assert_eq!(backup.files_new, 5);
    assert!(backup.bytes_added > 2 << 20);
    assert_eq!(setup.snapshots().len(), 1, "the snapshot is in the bucket");

    let new_uid = new_pod_uid();
    let target = setup.kubelet.pod(&new_uid).csi_pv("pvc-s3-1");
    let mut restored = data;
    restored.pod_uid = new_uid;
    setup
        .restore("s3-restore", restored, &backup.snapshot_id, "r-s3")
        .await
        .expect("restore from S3");
    assert_eq!(manifest(&target, true), manifest(&source, true));
    assert!(target.join(".velero/r-s3").is_file());

    // Without the credentials restic cannot reach the bucket, so they did come from the request.
    let mut anonymous = setup.backup_request(
        "s3-anonymous",
        volume(
            &old_uid,
            "db-0",
            "data",
            VolumeSource::PersistentVolumeClaim,
            "pvc-s3-1",
        ),
        "pvc-uid/s3",
    );
    if let Some(access) = anonymous.repository.as_mut() {
        access.env.clear();
    }
    let status = setup.backup(anonymous).await.expect_err("no credentials");
    assert_ne!(status.code(), Code::Ok);
    setup.assert_password_not_in_log();
}

/// restic 0.17+ retries a failed storage request itself (for up to 15 minutes), so an outage
/// shorter than the agent's storage outage timeout is waited out inside the one restic process
/// of the restore, and the agent streams each of restic's retries as a `Retrying` event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_waits_out_a_storage_outage_shorter_than_the_retries_and_streams_each_retry() {
    // Set through the environment, as the DaemonSet would: far longer than the outage, so
    // restic's own retries wait it out.
    let env = BTreeMap::from([(
        "STOWAGE_STORAGE_OUTAGE_TIMEOUT".to_string(),
        "5m".to_string(),
    )]);
    let mut setup = Setup::start_with(1, true, env, recording_restic).await;
    let old_uid = new_pod_uid();
    let source = setup.kubelet.pod(&old_uid).csi_pv("pvc-blip");
    write_sample_tree(&source, "blip");
    let data = volume(
        &old_uid,
        "db-0",
        "data",
        VolumeSource::PersistentVolumeClaim,
        "pvc-blip",
    );
    let (_, backup) = setup
        .backup(setup.backup_request("blip-backup", data.clone(), "pvc-uid/blip"))
        .await
        .expect("backup to S3");

    let gate = setup.s3.as_mut().and_then(|s3| s3.gate.as_mut()).unwrap();
    gate.shut();
    let runs_before = restic_runs(setup.dir.path()).len();
    let new_uid = new_pod_uid();
    let target = setup.kubelet.pod(&new_uid).csi_pv("pvc-blip");
    let mut restored = data;
    restored.pod_uid = new_uid;
    let mut stream = setup
        .client
        .clone()
        .restore_volume(RestoreVolumeRequest {
            operation_id: "blip-restore".into(),
            volume: Some(restored),
            repository: Some(setup.access()),
            snapshot_id: backup.snapshot_id.clone(),
            restore_uid: "r-blip".into(),
            restore_name: "restore-1".into(),
            ..Default::default()
        })
        .await
        .expect("RestoreVolume")
        .into_inner();
    // The storage comes back once restic has said it failed to reach it and will try again.
    tokio::time::timeout(Duration::from_secs(120), async {
        while !restic_stderr(setup.dir.path()).contains("retrying after") {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("restic reports a failed storage request within two minutes");
    if let Some(gate) = setup.s3.as_mut().and_then(|s3| s3.gate.as_mut()) {
        gate.open();
    }
    let mut events = Vec::new();
    let result = tokio::time::timeout(Duration::from_secs(300), async {
        while let Some(event) = stream.message().await.expect("a restore event") {
            match event.event {
                Some(restore_volume_event::Event::Result(result)) => return result,
                other => events.push(other),
            }
        }
        panic!("the restore stream ended without a result");
    })
    .await
    .expect("the restore ends once the storage is back");
    assert_eq!(result.snapshot_id, backup.snapshot_id);
    assert_eq!(manifest(&target, true), manifest(&source, true));
    assert!(target.join(".velero/r-blip").is_file());
    let retries: Vec<&stowage_proto::v1::Retrying> = events
        .iter()
        .filter_map(|event| match event {
            Some(restore_volume_event::Event::Retrying(retrying)) => Some(retrying),
            _ => None,
        })
        .collect();
    let first = retries.first().expect("at least one retry was streamed");
    assert!(first.command == "restore", "{first:?}");
    // restic 0.18 retries the failed request itself; the agent numbers those retries and
    // restic sets no number of attempts.
    assert_eq!(
        (first.failed_attempt, first.max_attempts),
        (1, 0),
        "{first:?}"
    );
    assert!(first.delay_seconds > 0.0, "{first:?}");
    assert!(
        first.reason.contains("returned error") && first.reason.contains("127.0.0.1"),
        "the retry says why, in restic's words: {}",
        first.reason
    );
    let runs = restic_runs(setup.dir.path());
    assert_eq!(runs.len() - runs_before, 1, "{runs:?}");
    setup.assert_password_not_in_log();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_and_restic_spans_carry_what_operators_search_by_and_never_the_password() {
    let collector = OtlpCollector::start().await;
    let env = BTreeMap::from([
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_string(),
            collector.endpoint.clone(),
        ),
        // Export quickly so the test does not wait for the default batch delay.
        ("OTEL_BSP_SCHEDULE_DELAY".to_string(), "100".to_string()),
        // Velero's snapshot host, instead of the node name.
        ("STOWAGE_SNAPSHOT_HOST".to_string(), "velero".to_string()),
    ]);
    let setup = Setup::start(2, false, env).await;
    let uid = new_pod_uid();
    write_sample_tree(&setup.kubelet.pod(&uid).empty_dir("cache"), "traced");
    let (_, result) = setup
        .backup(setup.backup_request(
            "traced",
            volume(&uid, "web-0", "cache", VolumeSource::EmptyDir, ""),
            "test/web/cache",
        ))
        .await
        .expect("backup");

    let snapshots = setup.snapshots();
    assert_eq!(snapshots.len(), 1);
    assert_eq!(snapshots[0]["hostname"], "velero");

    let snapshot_id = result.snapshot_id.clone();
    let spans = collector
        .wait_for(Duration::from_secs(30), |spans| {
            spans.iter().any(|s| {
                s.name == "backup_volume" && s.attribute("snapshot_id") == Some(&snapshot_id)
            })
        })
        .await;
    let rpc = spans
        .iter()
        .find(|s| s.name == "backup_volume" && s.attribute("snapshot_id") == Some(&snapshot_id))
        .expect("the RPC span");
    assert_eq!(rpc.service_name, "stowage-volume-agent");
    for (key, value) in [
        ("namespace", "shop"),
        ("pod", "web-0"),
        ("volume", "cache"),
        ("backup", "nightly"),
        ("node", "node-1"),
        ("operation", "traced"),
    ] {
        assert_eq!(rpc.attribute(key), Some(value), "{key} on {rpc:?}");
    }
    assert!(rpc.attribute("bytes").is_some(), "{rpc:?}");
    let spans = collector
        .wait_for(Duration::from_secs(30), |spans| {
            spans
                .iter()
                .filter(|s| s.name == "restic" && s.trace_id == rpc.trace_id)
                .count()
                >= 2
        })
        .await;
    let restic_commands: Vec<&str> = spans
        .iter()
        .filter(|s| s.name == "restic" && s.trace_id == rpc.trace_id)
        .filter_map(|s| s.attribute("restic.command"))
        .collect();
    assert!(
        restic_commands.contains(&"snapshots") && restic_commands.contains(&"backup"),
        "parent lookup and backup each have a span: {restic_commands:?}"
    );
    let backup_span = spans
        .iter()
        .find(|s| s.name == "restic" && s.attribute("restic.command") == Some("backup"))
        .expect("restic backup span");
    assert_eq!(
        backup_span.attribute("restic.repository"),
        Some(setup.repository.as_str())
    );
    assert_eq!(backup_span.attribute("restic.exit_code"), Some("0"));
    for span in &spans {
        for (key, value) in &span.attributes {
            assert!(
                !value.contains(&setup.password),
                "password in {} attribute {key}",
                span.name
            );
        }
    }
    setup.assert_password_not_in_log();
}

/// Writes an executable shell script.
fn write_script(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text).expect("writing a script");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .expect("making the script executable");
}

/// The environments recorded by an environment-recording restic wrapper, one per run.
fn recorded_environments(dir: &Path) -> Vec<BTreeMap<String, String>> {
    std::fs::read_dir(dir)
        .expect("the recordings directory")
        .map(|entry| {
            let bytes = std::fs::read(entry.expect("a recording").path()).expect("a recording");
            bytes
                .split(|byte| *byte == 0)
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let text = String::from_utf8_lossy(pair);
                    let (name, value) = text.split_once('=').unwrap_or((&text, ""));
                    (name.to_string(), value.to_string())
                })
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_refuses_a_restic_older_than_0_17_naming_both_versions() {
    let dir = tempfile::tempdir().expect("temp dir");
    let stub = dir.path().join("old-restic");
    // Stands in for Debian 12's restic, whatever it is asked.
    write_script(
        &stub,
        "#!/bin/sh\necho 'restic 0.14.0 compiled with go1.19.8 on linux/amd64'\n",
    );
    let kubelet = FakeKubelet::new(dir.path().join("pods"));
    let args: Vec<String> = vec![
        "--listen".into(),
        format!("127.0.0.1:{}", stowage_e2e::free_port()),
        "--node-name".into(),
        "node-1".into(),
        "--pods-root".into(),
        kubelet.pods_root().display().to_string(),
        "--scratch-dir".into(),
        dir.path().join("scratch").display().to_string(),
        "--restic-binary".into(),
        stub.display().to_string(),
    ];
    let mut agent = stowage_e2e::TestProcess::start(
        "stowage-volume-agent",
        stowage_e2e::binary("stowage-volume-agent"),
        &args,
        &BTreeMap::new(),
        dir.path(),
    );
    // A deadline only so a hang fails instead of blocking the suite.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = agent.child.try_wait().expect("polling the agent") {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent kept running with restic 0.14; log:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let log = agent.log();
    assert!(!status.success(), "exited with {status}; log:\n{log}");
    assert!(
        log.contains("restic 0.14.0 is too old")
            && log.contains("needs restic 0.17.0 or newer")
            && log.contains(&stub.display().to_string()),
        "the message names the version found, the version needed and the binary:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restic_runs_under_the_memory_limit_without_stowage_settings_and_reports_its_peak_memory() {
    let wrapper_dir = tempfile::tempdir().expect("temp dir");
    let recordings = wrapper_dir.path().join("environments");
    std::fs::create_dir_all(&recordings).unwrap();
    let real = Command::new("sh")
        .args(["-c", "command -v restic"])
        .output()
        .expect("finding restic");
    let real = String::from_utf8_lossy(&real.stdout).trim().to_string();
    assert!(!real.is_empty(), "restic is not installed");
    // The agent runs `restic` from PATH: this one records the environment it was started
    // with (as /proc/<pid>/environ keeps it) and becomes the real restic, same pid.
    write_script(
        &wrapper_dir.path().join("restic"),
        &format!(
            "#!/bin/sh\ncat /proc/$$/environ > '{}/'$$\nexec '{real}' \"$@\"\n",
            recordings.display()
        ),
    );
    let secret = format!("stowage-secret-{}", new_pod_uid());
    let env = BTreeMap::from([
        (
            "PATH".to_string(),
            format!(
                "{}:{}",
                wrapper_dir.path().display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        ),
        (
            "STOWAGE_RESTIC_MEMORY_LIMIT".to_string(),
            "300MiB".to_string(),
        ),
        // Not a setting the agent reads: a secret of its environment restic must not see.
        ("STOWAGE_EXAMPLE_TOKEN".to_string(), secret.clone()),
    ]);
    let setup = Setup::start(1, false, env).await;
    let uid = new_pod_uid();
    let source = setup.kubelet.pod(&uid).empty_dir("data");
    write_random_file(&source.join("blob"), 4 << 20, 3);
    let data = volume(&uid, "app-0", "data", VolumeSource::EmptyDir, "");
    let (_, backup) = setup
        .backup(setup.backup_request("rss-backup", data, "pod/shop/app-0/data"))
        .await
        .expect("backup");
    // restic is a Go program of some ten MiB before it reads anything.
    assert!(
        backup.restic_peak_rss_bytes > 4 << 20 && backup.restic_peak_rss_bytes < 300 << 20,
        "{backup:?}"
    );
    let target_uid = new_pod_uid();
    setup.kubelet.pod(&target_uid).empty_dir("data");
    let target = volume(&target_uid, "app-0", "data", VolumeSource::EmptyDir, "");
    let (_, restore) = setup
        .restore("rss-restore", target, &backup.snapshot_id, "r-rss")
        .await
        .expect("restore");
    assert!(
        restore.restic_peak_rss_bytes > 4 << 20 && restore.restic_peak_rss_bytes < 300 << 20,
        "{restore:?}"
    );

    let environments = recorded_environments(&recordings);
    // `version` at start, then the backup's and the restore's commands.
    assert!(environments.len() >= 3, "{environments:?}");
    for environment in &environments {
        assert_eq!(
            environment.get("GOMEMLIMIT").map(String::as_str),
            Some("314572800"),
            "{environment:?}"
        );
        assert!(environment.contains_key("PATH"), "{environment:?}");
        for (name, value) in environment {
            assert!(
                !name.starts_with("STOWAGE_")
                    && !value.contains(&secret)
                    && !value.contains(&setup.password),
                "{name} reached restic: {environment:?}"
            );
        }
    }
    assert!(
        environments
            .iter()
            .any(|environment| environment.get("RESTIC_REPOSITORY") == Some(&setup.repository)),
        "the runs against the repository were recorded: {environments:?}"
    );
}

/// The agent backs up on top of the parent the request names, even when a later snapshot of the
/// identity exists, and falls back to restic's latest for the identity, saying why, when the
/// named one is not in the repository.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_requests_parent_is_used_and_a_missing_one_falls_back_to_the_latest() {
    let setup = Setup::new(2).await;
    let uid = new_pod_uid();
    let data = setup.kubelet.pod(&uid).empty_dir("cache");
    for index in 0..4 {
        write_random_file(&data.join(format!("file-{index}.bin")), 16 * 1024, index);
    }
    let identity = "StatefulSet/web/cache";
    let request = |operation: &str, parent: &str| {
        let mut request = setup.backup_request(
            operation,
            volume(&uid, "web-0", "cache", VolumeSource::EmptyDir, ""),
            identity,
        );
        request.parent_snapshot_id = parent.into();
        request
    };
    let (_, first) = setup.backup(request("first", "")).await.expect("first");
    assert!(
        first.parent_fallback_reason.contains("no parent"),
        "{first:?}"
    );
    let (_, second) = setup.backup(request("second", "")).await.expect("second");
    assert_eq!(second.parent_snapshot_id, first.snapshot_id);

    // Named explicitly, the older snapshot is the parent, not restic's latest.
    let (_, named) = setup
        .backup(request("named", &first.snapshot_id))
        .await
        .expect("backup on the named parent");
    assert_eq!(named.parent_snapshot_id, first.snapshot_id);
    assert_eq!(named.parent_fallback_reason, "", "{named:?}");
    assert_eq!(named.files_unmodified, 4, "{named:?}");

    // A well-formed id the repository never held: restic refuses it, the latest is used.
    let unknown = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let (_, fell_back) = setup
        .backup(request("fell-back", unknown))
        .await
        .expect("backup after the fallback");
    assert_eq!(fell_back.parent_snapshot_id, named.snapshot_id);
    assert_eq!(fell_back.files_unmodified, 4, "{fell_back:?}");
    assert!(
        fell_back.parent_fallback_reason.contains(unknown)
            && fell_back.parent_fallback_reason.contains("does not exist"),
        "{fell_back:?}"
    );
    let log = setup.agent.process.log();
    assert!(
        log.contains("the given parent snapshot is gone"),
        "the agent logs the fallback:\n{log}"
    );
    assert_eq!(setup.snapshots().len(), 4);
}
