//! Data-only restores and restores as of a time, with the real processes: the orchestrator
//! writes a backup's snapshot into the claim that exists now, through the running pod that
//! mounts it or through a restore pod it starts and deletes, with real restic doing `merge`,
//! `replace` and the as-of choice; bad volumes and targets are refused before anything runs.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams};
use stowage_e2e::{
    api::{Client, backup_to_end, namespace_spec, wait_restore},
    cli::stowage,
    kube::{Example, mark_pod_running, seed_example},
    kubelet::{manifest, write_sample_tree},
    stack::{Stack, StackOptions},
};
use stowage_proto::v1::{
    Backup, BackupPhase, CreateRestoreRequest, GetRestoreLogsRequest, ListRestoresRequest,
    OverwritePolicy, RestorePhase, RestoreSpec, VolumePhase,
};

/// The label a data-only restore puts on its restore pods (value: the restore's name).
const RESTORE_POD_LABEL: &str = "stowage.io/data-restore";

/// Velero's example in namespace `foo` on node-a, `annotation` naming the volumes to back up;
/// the PVC volume's directory (in the fake kubelet) holds the sample tree.
async fn example(stack: &Stack, annotation: &str) -> (Example, std::path::PathBuf) {
    let kube = stack.kube_client().await;
    let example = seed_example(&kube, "foo", "node-a", Some(annotation)).await;
    let pod = stack.kubelets["node-a"].pod(&example.pod_uid());
    let volume = pod.pv("kubernetes.io~local-volume", &example.pv_name());
    write_sample_tree(&volume, "pvc");
    std::fs::write(pod.empty_dir("emptydir-volume").join("cache"), "cached").unwrap();
    (example, volume)
}

async fn completed_backup(client: &mut Client, name: &str) -> Backup {
    let backup = backup_to_end(client, name, namespace_spec("foo")).await;
    let status = backup.status.clone().unwrap_or_default();
    assert_eq!(status.phase, BackupPhase::Completed as i32, "{status:#?}");
    backup
}

async fn restore(client: &mut Client, name: &str, spec: RestoreSpec) -> Result<(), tonic::Status> {
    client
        .create_restore(CreateRestoreRequest {
            name: name.into(),
            spec: Some(spec),
        })
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread")]
async fn replace_into_a_running_pod_leaves_the_volume_identical_to_the_snapshot() {
    let stack = Stack::start(StackOptions::default()).await;
    let (_example, volume) = example(&stack, "pvc-volume").await;
    std::fs::write(volume.join("scratch.tmp"), "in the snapshot").unwrap();
    let mut snapshot = manifest(&volume, false);
    let mut client = stack.client().await;
    completed_backup(&mut client, "before").await;

    // The application moves on: a file changed, files and a directory added, and a scratch
    // file the restore is told to leave alone.
    std::fs::write(volume.join("README.txt"), "changed since the backup\n").unwrap();
    std::fs::write(volume.join("added.txt"), "added since").unwrap();
    std::fs::create_dir_all(volume.join("data/new")).unwrap();
    std::fs::write(volume.join("data/new/file"), "added since").unwrap();
    std::fs::remove_file(volume.join("secret/key")).unwrap();
    std::fs::write(volume.join("scratch.tmp"), "written since").unwrap();

    // The CLI asks before writing under a running pod, naming it, and starts nothing.
    let output = stowage(
        &stack.orchestrator.url,
        &[
            "restore",
            "create",
            "--from-backup",
            "before",
            "--data-only",
        ],
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        stderr.contains("claim foo/sample-pvc is mounted by running pod foo/sample")
            && stderr.contains("--yes"),
        "{stderr}"
    );

    restore(
        &mut client,
        "back",
        RestoreSpec {
            backup_name: "before".into(),
            data_only: true,
            volumes: vec!["foo/sample/pvc-volume".into()],
            overwrite_policy: OverwritePolicy::Replace as i32,
            exclude_paths: vec!["*.tmp".into()],
            ..Default::default()
        },
    )
    .await
    .expect("CreateRestore");
    let restored = wait_restore(&mut client, "back").await;
    let status = restored.status.clone().unwrap();
    assert_eq!(
        status.phase,
        RestorePhase::Completed as i32,
        "{status:#?}\n{}",
        stack.orchestrator.process.log()
    );
    assert_eq!(status.volumes.len(), 1);
    let reference = status.volumes[0].volume.clone().unwrap();
    assert_eq!(
        (reference.pod_name.as_str(), reference.volume_name.as_str()),
        ("sample", "pvc-volume"),
        "restored through the running pod"
    );
    assert!(status.pods_created.is_empty());

    let mut after = manifest(&volume, false);
    assert_eq!(
        std::fs::read_to_string(volume.join("scratch.tmp")).unwrap(),
        "written since",
        "a path excluded from the restore is neither restored nor deleted"
    );
    snapshot.remove("scratch.tmp");
    after.remove("scratch.tmp");
    assert_eq!(after, snapshot, "the volume is the snapshot again");
    assert!(
        !volume.join(".velero").exists(),
        "a data-only restore leaves no done file in the application's volume"
    );
    let kube = stack.kube_client().await;
    let pods: Api<Pod> = Api::namespaced(kube, "foo");
    let names: Vec<String> = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|pod| pod.metadata.name)
        .collect();
    assert_eq!(names, ["sample"], "no pod made or removed");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unmounted_claim_is_restored_through_a_restore_pod_that_is_removed_afterwards() {
    let stack = Stack::start(StackOptions::default()).await;
    let (example, volume) = example(&stack, "pvc-volume").await;
    let snapshot = manifest(&volume, false);
    let mut client = stack.client().await;
    completed_backup(&mut client, "before").await;
    // The workload is scaled down: nothing mounts the claim any more.
    let kube = stack.kube_client().await;
    let pods: Api<Pod> = Api::namespaced(kube.clone(), "foo");
    pods.delete("sample", &DeleteParams::default())
        .await
        .expect("deleting the pod");

    // Nothing runs, so the CLI has nothing to ask.
    let output = stowage(
        &stack.orchestrator.url,
        &[
            "restore",
            "create",
            "back",
            "--from-backup",
            "before",
            "--data-only",
        ],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // Play scheduler and kubelet for the restore pod: its volume dir on node-a, Running.
    let selector = format!("{RESTORE_POD_LABEL}=back");
    let deadline = Instant::now() + Duration::from_secs(60);
    let pod = loop {
        let listed = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .unwrap();
        if let Some(pod) = listed.items.into_iter().next() {
            break pod;
        }
        assert!(Instant::now() < deadline, "no restore pod was created");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let name = pod.metadata.name.clone().unwrap();
    let spec = pod.spec.clone().unwrap();
    assert!(pod.metadata.owner_references.is_none(), "owned by nothing");
    assert_eq!(
        spec.volumes.unwrap()[0]
            .persistent_volume_claim
            .as_ref()
            .unwrap()
            .claim_name,
        "sample-pvc"
    );
    assert_eq!(
        spec.containers[0].args.as_ref().unwrap()[0],
        "--hold",
        "the helper image only holds the claim"
    );
    let target = stack.kubelets["node-a"]
        .pod(pod.metadata.uid.as_deref().unwrap())
        .pv("kubernetes.io~local-volume", &example.pv_name());
    mark_pod_running(&kube, "foo", &name, "node-a").await;

    let restored = wait_restore(&mut client, "back").await;
    let status = restored.status.clone().unwrap();
    assert_eq!(
        status.phase,
        RestorePhase::Completed as i32,
        "{status:#?}\n{}",
        stack.orchestrator.process.log()
    );
    assert_eq!(status.volumes[0].volume.as_ref().unwrap().pod_name, name);
    assert_eq!(manifest(&target, false), snapshot);
    assert!(
        pods.get_opt(&name).await.unwrap().is_none(),
        "the restore pod is deleted once its volume is restored"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn as_of_between_two_backups_restores_the_earlier_snapshot() {
    let stack = Stack::start(StackOptions::default()).await;
    let (_example, volume) = example(&stack, "pvc-volume").await;
    let first_tree = manifest(&volume, false);
    let mut client = stack.client().await;
    let first = completed_backup(&mut client, "first").await;
    let first_volume = first.status.clone().unwrap().volumes[0].clone();
    std::fs::write(volume.join("README.txt"), "the second version\n").unwrap();
    std::fs::write(volume.join("second.txt"), "only in the second backup").unwrap();
    let second = completed_backup(&mut client, "second").await;
    let second_volume = second.status.clone().unwrap().volumes[0].clone();
    assert_ne!(first_volume.snapshot_id, second_volume.snapshot_id);

    // The moment the first backup's volume finished: at or before it, only that snapshot.
    let finished = first_volume.finished.unwrap();
    let as_of = chrono::DateTime::from_timestamp(finished.seconds, finished.nanos as u32)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    let output = stowage(
        &stack.orchestrator.url,
        &[
            "restore",
            "create",
            "back",
            "--from-backup",
            "second",
            "--data-only",
            "--as-of",
            &as_of,
            "--overwrite-policy",
            "replace",
            "--yes",
            "--wait",
        ],
    );
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stderr),
        stack.orchestrator.process.log()
    );
    assert_eq!(
        manifest(&volume, false),
        first_tree,
        "the first backup's tree"
    );

    let restored = wait_restore(&mut client, "back").await;
    let status = restored.status.unwrap();
    assert_eq!(status.volumes[0].snapshot_id, first_volume.snapshot_id);
    let logs = client
        .get_restore_logs(GetRestoreLogsRequest {
            name: "back".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        logs.lines.iter().any(|line| line.message.contains(&format!(
            "snapshot {} of backup first",
            first_volume.snapshot_id
        ))),
        "the restore says where the snapshot came from: {:#?}",
        logs.lines
    );

    // Before the first backup there is nothing to restore: NotFound, naming the volume.
    let error = restore(
        &mut client,
        "too-early",
        RestoreSpec {
            backup_name: "second".into(),
            data_only: true,
            as_of: Some(stowage_proto::prost_types::Timestamp {
                seconds: finished.seconds - 3600,
                nanos: 0,
            }),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(error.code(), tonic::Code::NotFound, "{error:?}");
    assert!(
        error.message().contains("foo/sample/pvc-volume"),
        "{error:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_volumes_and_bad_targets_are_refused_and_change_nothing() {
    let stack = Stack::start(StackOptions::default()).await;
    let (_example, volume) = example(&stack, "pvc-volume,emptydir-volume").await;
    let mut client = stack.client().await;
    let backup = completed_backup(&mut client, "before").await;
    assert!(
        backup
            .status
            .unwrap()
            .volumes
            .iter()
            .all(|v| v.phase == VolumePhase::Completed as i32)
    );
    std::fs::write(volume.join("added.txt"), "added since").unwrap();
    let tree = manifest(&volume, false);

    let data_only = |volumes: &[&str], target: &str| RestoreSpec {
        backup_name: "before".into(),
        data_only: true,
        volumes: volumes.iter().map(|v| v.to_string()).collect(),
        target_pvc: target.into(),
        overwrite_policy: OverwritePolicy::Replace as i32,
        ..Default::default()
    };
    let cases = [
        (
            data_only(&["foo/sample/nope"], ""),
            tonic::Code::NotFound,
            "foo/sample/nope",
        ),
        (
            data_only(&["foo/sample/pvc-volume"], "foo/missing"),
            tonic::Code::NotFound,
            "foo/missing",
        ),
        (
            data_only(&[], "foo/sample-pvc"),
            tonic::Code::InvalidArgument,
            "foo/sample-pvc",
        ),
        (
            data_only(&["foo/sample/emptydir-volume"], ""),
            tonic::Code::InvalidArgument,
            "foo/sample/emptydir-volume",
        ),
        (
            data_only(&["sample/pvc-volume"], ""),
            tonic::Code::InvalidArgument,
            "sample/pvc-volume",
        ),
    ];
    for (spec, code, named) in cases {
        let error = restore(&mut client, "refused", spec.clone())
            .await
            .expect_err("refused");
        assert_eq!(error.code(), code, "{spec:?}: {error:?}");
        assert!(error.message().contains(named), "{spec:?}: {error:?}");
    }
    let restores = client
        .list_restores(ListRestoresRequest {})
        .await
        .unwrap()
        .into_inner()
        .restores;
    assert!(restores.is_empty(), "{restores:#?}");
    assert_eq!(manifest(&volume, false), tree, "the volume is untouched");
    let pods: Api<Pod> = Api::namespaced(stack.kube_client().await, "foo");
    assert_eq!(
        pods.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
}
