//! The orchestrator end to end: the Kubernetes API emulator holds the pods, a fake kubelet tree
//! holds their volumes, and the real agent, repo-manager and restic do the work.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod};
use kube::{
    Api,
    api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams},
};
use serde_json::json;
use stowage_e2e::{
    api::{Client, backup_to_end, wait_backup, wait_restore},
    binary,
    kube::{
        bind_claim, create, mark_init_container_running, mark_pod_running, patch_pod, seed_example,
        wait_for_pod,
    },
    kubelet::{manifest, write_sample_tree},
    restic::{CountingRestic, RepositoryRestic, repository_access},
    stack::{Stack, StackOptions, slow_restic, stack_with_slow_backups},
};
use stowage_proto::v1::{
    BackupOrigin, BackupPhase, BackupSpec, CancelBackupRequest, CreateBackupRequest,
    CreateRestoreRequest, DeleteBackupRequest, GetBackupRequest, GetCoverageRequest,
    ListBackupsRequest, ListRestoresRequest, Restore, RestorePhase, RestoreSpec, SkipReason,
    VolumePhase, WatchBackupRequest,
};

fn pod_volume_backups(client: &kube::Client) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("velero.io", "v1", "PodVolumeBackup"),
        "podvolumebackups",
    );
    Api::namespaced_with(client.clone(), "stowage", &resource)
}

fn pod_volume_restores(client: &kube::Client) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("velero.io", "v1", "PodVolumeRestore"),
        "podvolumerestores",
    );
    Api::namespaced_with(client.clone(), "stowage", &resource)
}

fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

/// Starts restore `name` of backup `backup`, as it was accepted.
async fn restore_of(client: &mut Client, name: &str, backup: &str) -> Restore {
    client
        .create_restore(CreateRestoreRequest {
            name: name.into(),
            spec: Some(RestoreSpec {
                backup_name: backup.into(),
                ..Default::default()
            }),
        })
        .await
        .expect("CreateRestore")
        .into_inner()
}

/// The disaster a restore recovers from: pod `foo/sample` and its claim `sample-pvc` deleted.
/// Returns the claims of `foo`, for the test to play the provisioner.
async fn lose_sample_pod_and_claim(kube: &kube::Client) -> Api<PersistentVolumeClaim> {
    let pods: Api<Pod> = Api::namespaced(kube.clone(), "foo");
    pods.delete("sample", &DeleteParams::default())
        .await
        .unwrap();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(kube.clone(), "foo");
    claims
        .delete("sample-pvc", &DeleteParams::default())
        .await
        .unwrap();
    claims
}

fn foo_spec() -> BackupSpec {
    BackupSpec {
        included_namespaces: vec!["foo".into()],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn annotated_volumes_back_up_and_restore_identically() {
    let stack = Stack::start(StackOptions::default()).await;
    let kube = stack.kube_client().await;
    let example = seed_example(&kube, "foo", "node-a", Some("pvc-volume,emptydir-volume")).await;
    let kubelet = &stack.kubelets["node-a"];
    let pod_dir = kubelet.pod(&example.pod_uid());
    let pvc_dir = pod_dir.pv("kubernetes.io~local-volume", &example.pv_name());
    let empty_dir = pod_dir.empty_dir("emptydir-volume");
    write_sample_tree(&pvc_dir, "pvc");
    write_sample_tree(&empty_dir, "emptydir");
    let pvc_before = manifest(&pvc_dir, false);
    let empty_before = manifest(&empty_dir, false);

    let mut client = stack.client().await;
    let backup = backup_to_end(&mut client, "nightly", foo_spec()).await;
    let status = backup.status.clone().unwrap();
    assert_eq!(
        status.phase,
        BackupPhase::Completed as i32,
        "{status:#?}\n{}",
        stack.orchestrator.process.log()
    );
    assert_eq!(status.volumes.len(), 2);
    for volume in &status.volumes {
        assert_eq!(volume.phase, VolumePhase::Completed as i32, "{volume:?}");
        assert!(!volume.snapshot_id.is_empty());
    }
    let pvc_volume = status
        .volumes
        .iter()
        .find(|v| v.volume.as_ref().unwrap().volume_name == "pvc-volume")
        .unwrap();
    assert_eq!(
        pvc_volume.stable_identity,
        format!("pvc-uid/{}", example.pvc.metadata.uid.clone().unwrap())
    );
    let emptydir_volume = status
        .volumes
        .iter()
        .find(|v| v.volume.as_ref().unwrap().volume_name == "emptydir-volume")
        .unwrap();
    assert_eq!(
        emptydir_volume.stable_identity,
        "Deployment/sample/emptydir-volume"
    );

    // The bucket holds the backup's files.
    let dir = stack.storage.join("backups/nightly");
    for file in [
        "velero-backup.json",
        "nightly-podvolumebackups.json.gz",
        "nightly.tar.gz",
        "nightly-logs.gz",
    ] {
        assert!(
            dir.join(file).exists(),
            "{file} missing in {}",
            dir.display()
        );
    }

    // Velero's troubleshooting command works against the mirrors.
    let kubectl = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&stack.kube.kubeconfig)
        .args([
            "get",
            "podvolumebackups",
            "-n",
            "stowage",
            "-l",
            "velero.io/backup-name=nightly",
            "-o",
            "yaml",
        ])
        .output()
        .expect("running kubectl");
    let yaml = String::from_utf8_lossy(&kubectl.stdout);
    assert!(kubectl.status.success(), "{kubectl:?}");
    for volume in &status.volumes {
        assert!(yaml.contains(&volume.snapshot_id), "{yaml}");
    }

    // The PodVolumeBackups are mirrored, as `kubectl get podvolumebackups -l …` shows them.
    let mirrors = pod_volume_backups(&kube)
        .list(&ListParams::default().labels("velero.io/backup-name=nightly"))
        .await
        .unwrap();
    assert_eq!(mirrors.items.len(), 2);
    for mirror in &mirrors.items {
        assert_eq!(mirror.data["status"]["phase"], "Completed", "{mirror:?}");
        let snapshot = mirror.data["status"]["snapshotID"].as_str().unwrap();
        assert!(status.volumes.iter().any(|v| v.snapshot_id == snapshot));
    }

    // The backup's own log says what happened to each volume.
    let logs = stowage_e2e::api::backup_log_lines(&mut client, "nightly", |_| true).await;
    assert!(
        logs.iter()
            .any(|(_, message)| message.contains("foo/sample volume pvc-volume completed")),
        "{logs:#?}"
    );

    // The restore helper's image and resources come from Velero's plugin ConfigMap.
    let _: ConfigMap = stowage_e2e::kube::create(
        &kube,
        Some("stowage"),
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {
                "name": "restic-restore-action-config", "namespace": "stowage",
                "labels": {"velero.io/plugin-config": "", "velero.io/restic": "RestoreItemAction"},
            },
            "data": {"image": "registry.example/restore-helper", "cpuLimit": "0", "memRequest": "64Mi"},
        }),
    )
    .await;

    // Disaster: the pod, its claim and its data are gone.
    std::fs::remove_dir_all(&pod_dir.dir).unwrap();
    let claims = lose_sample_pod_and_claim(&kube).await;

    let restore = restore_of(&mut client, "nightly-restore", "nightly").await;

    // Play scheduler, provisioner and kubelet for the recreated pod.
    let pod = wait_for_pod(&kube, "foo", "sample", Duration::from_secs(30)).await;
    let spec = pod.spec.clone().unwrap();
    assert!(spec.node_name.is_none());
    let init = spec.init_containers.clone().unwrap();
    assert_eq!(init[0].name, "restore-wait");
    assert_eq!(init[0].args.clone().unwrap(), vec![restore.uid.clone()]);
    assert_eq!(
        init[0].image.as_deref(),
        Some(concat!(
            "registry.example/restore-helper:",
            env!("CARGO_PKG_VERSION")
        )),
        "an untagged ConfigMap image gets the release's tag, as the images are built"
    );
    let resources = init[0].resources.clone().unwrap();
    assert!(!resources.limits.unwrap_or_default().contains_key("cpu"));
    assert_eq!(resources.requests.unwrap_or_default()["memory"].0, "64Mi");
    let claim = claims.get("sample-pvc").await.unwrap();
    assert!(claim.spec.unwrap().volume_name.is_none());
    let new_pv = "pv-foo-sample-restored";
    bind_claim(&claims, "sample-pvc", new_pv).await;
    let new_uid = pod.metadata.uid.clone().unwrap();
    let new_pod_dir = kubelet.pod(&new_uid);
    let new_pvc_dir = new_pod_dir.pv("kubernetes.io~local-volume", new_pv);
    let new_empty_dir = new_pod_dir.empty_dir("emptydir-volume");
    mark_init_container_running(&kube, "foo", "sample", "node-a", "restore-wait").await;

    let restore = wait_restore(&mut client, &restore.name).await;
    let restore_status = restore.status.clone().unwrap();
    assert_eq!(
        restore_status.phase,
        RestorePhase::Completed as i32,
        "{restore_status:#?}\n{}",
        stack.orchestrator.process.log()
    );
    assert_eq!(restore_status.volumes_completed, 2);
    assert_eq!(restore_status.pods_created, vec!["foo/sample".to_string()]);
    assert_eq!(manifest(&new_pvc_dir, false), pvc_before);
    assert_eq!(manifest(&new_empty_dir, false), empty_before);
    for dir in [&new_pvc_dir, &new_empty_dir] {
        assert!(dir.join(".velero").join(&restore.uid).exists());
    }
    let restore_mirrors = pod_volume_restores(&kube)
        .list(&ListParams::default().labels("velero.io/restore-name=nightly-restore"))
        .await
        .unwrap();
    assert_eq!(restore_mirrors.items.len(), 2);
    for mirror in &restore_mirrors.items {
        assert_eq!(mirror.data["status"]["phase"], "Completed", "{mirror:?}");
        // Required by the CRD (the emulator, as an API server, refuses a mirror without it).
        assert!(
            mirror.data["spec"]["repoIdentifier"]
                .as_str()
                .is_some_and(|url| url.ends_with("/restic/foo")),
            "{mirror:?}"
        );
    }

    // The restore helper, run as the init container would, finds its done files and exits 0.
    let helper = std::process::Command::new(binary("stowage-restore-helper"))
        .arg(&restore.uid)
        .arg(format!(
            "{},{}",
            new_pvc_dir.display(),
            new_empty_dir.display()
        ))
        .args(["--timeout", "10", "--poll-millis", "50"])
        .output()
        .unwrap();
    assert!(helper.status.success(), "{helper:?}");
    // A clean run leaves nothing to warn about (a failed mirror write would be a warning)
    // but the restore's results: the pod's Deployment and ReplicaSet are still there, and an
    // object that exists is a restore warning, as in Velero.
    let log = stack.orchestrator.process.log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("WARN") || line.contains("ERROR"))
        .filter(|line| !line.contains("exists, left as it is"))
        .collect();
    assert!(warnings.is_empty(), "{warnings:#?}\n{log}");
    patch_pod(
        &kube,
        "foo",
        "sample",
        json!({"status": {"phase": "Running"}}),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_and_unknown_names_are_rejected() {
    let stack = Stack::start(StackOptions::default()).await;
    let mut client = stack.client().await;
    for name in ["", "Nightly", "a_b", "-x"] {
        let error = client
            .create_backup(CreateBackupRequest {
                name: name.into(),
                spec: Some(foo_spec()),
            })
            .await
            .unwrap_err();
        assert_eq!(
            error.code(),
            tonic::Code::InvalidArgument,
            "{name:?}: {error}"
        );
    }
    let error = client
        .get_backup(GetBackupRequest {
            name: "missing".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::NotFound);
    let error = client
        .create_restore(CreateRestoreRequest {
            name: String::new(),
            spec: Some(RestoreSpec {
                backup_name: "missing".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::NotFound);
    let error = client
        .delete_backup(DeleteBackupRequest {
            name: "missing".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread")]
async fn volumes_on_a_node_without_agent_fail_and_unsupported_types_are_skipped() {
    let stack = Stack::start(StackOptions::default()).await;
    let kube = stack.kube_client().await;
    stowage_e2e::kube::ensure_namespace(&kube, "bar").await;
    let _: Pod = stowage_e2e::kube::create(
        &kube,
        Some("bar"),
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "lonely", "namespace": "bar",
                "annotations": {"backup.velero.io/backup-volumes": "scratch,logs,token"},
            },
            "spec": {
                "nodeName": "node-b",
                "containers": [{"name": "app", "image": "busybox"}],
                "volumes": [
                    {"name": "scratch", "emptyDir": {}},
                    {"name": "logs", "hostPath": {"path": "/var/log"}},
                    {"name": "token", "projected": {"sources": []}},
                    {"name": "unlisted", "emptyDir": {}},
                ],
            },
            "status": {"phase": "Running"},
        }),
    )
    .await;
    let mut client = stack.client().await;
    let backup = backup_to_end(
        &mut client,
        "lonely",
        BackupSpec {
            included_namespaces: vec!["bar".into()],
            ..Default::default()
        },
    )
    .await;
    let status = backup.status.unwrap();
    assert_eq!(status.phase, BackupPhase::Failed as i32, "{status:#?}");
    assert_eq!(status.volumes.len(), 1);
    assert_eq!(status.volumes[0].phase, VolumePhase::Failed as i32);
    assert_eq!(status.volumes[0].error_message, "no agent on node node-b");
    let reason = |volume: &str| {
        status
            .skipped
            .iter()
            .find(|s| s.volume == volume)
            .map(|s| SkipReason::try_from(s.reason).unwrap())
    };
    assert_eq!(reason("logs"), Some(SkipReason::UnsupportedType));
    assert_eq!(reason("token"), Some(SkipReason::UnsupportedType));
    assert_eq!(reason("unlisted"), Some(SkipReason::NotAnnotated));
}

/// Starts backup `name` and waits until its volume is with the agent.
async fn start_and_wait_in_progress(client: &mut Client, name: &str, spec: BackupSpec) {
    client
        .create_backup(CreateBackupRequest {
            name: name.into(),
            spec: Some(spec),
        })
        .await
        .expect("CreateBackup");
    stowage_e2e::api::wait_volume_in(
        client,
        name,
        &[VolumePhase::InProgress, VolumePhase::Queued],
        Duration::from_secs(60),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_stops_the_running_volume() {
    let (stack, _wrapper) = stack_with_slow_backups().await;
    let mut client = stack.client().await;
    start_and_wait_in_progress(&mut client, "cancelled", foo_spec()).await;
    let refused = client
        .delete_backup(DeleteBackupRequest {
            name: "cancelled".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused}");
    client
        .cancel_backup(CancelBackupRequest {
            name: "cancelled".into(),
        })
        .await
        .expect("CancelBackup");
    let backup = wait_backup(&mut client, "cancelled").await;
    let status = backup.status.unwrap();
    assert_eq!(status.phase, BackupPhase::Cancelled as i32, "{status:#?}");
    assert_eq!(status.volumes[0].phase, VolumePhase::Cancelled as i32);
    // The record in the bucket says so too.
    let record =
        std::fs::read_to_string(stack.storage.join("backups/cancelled/velero-backup.json"))
            .unwrap();
    assert!(record.contains("\"Cancelled\""), "{record}");
}

#[tokio::test(flavor = "multi_thread")]
async fn restarted_orchestrator_takes_over_the_running_backup_and_lists_the_bucket() {
    let (mut stack, _wrapper) = stack_with_slow_backups().await;
    let mut client = stack.client().await;
    start_and_wait_in_progress(&mut client, "interrupted", foo_spec()).await;
    stack.restart_orchestrator().await;
    let mut client = stack.client().await;
    client
        .get_backup(GetBackupRequest {
            name: "interrupted".into(),
        })
        .await
        .expect("the new orchestrator knows the backup from the bucket");
    // It takes the backup over (tests/tests/takeover.rs checks how) and runs it to its end.
    let backup = wait_backup(&mut client, "interrupted").await;
    let status = backup.status.unwrap();
    assert_eq!(status.phase, BackupPhase::Completed as i32, "{status:#?}");
    assert_eq!(status.volumes.len(), 1);
    assert_eq!(status.volumes[0].phase, VolumePhase::Completed as i32);
    // Its PodVolumeBackup mirror shows the end too.
    let kube = stack.kube_client().await;
    let mirrors = pod_volume_backups(&kube)
        .list(&ListParams::default().labels("velero.io/backup-name=interrupted"))
        .await
        .unwrap();
    assert_eq!(mirrors.items.len(), 1);
    assert_eq!(mirrors.items[0].data["status"]["phase"], "Completed");
    let listed = client
        .list_backups(ListBackupsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.backups.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn opt_out_mode_takes_every_volume_but_the_excluded() {
    let stack = Stack::start(StackOptions::default()).await;
    let kube = stack.kube_client().await;
    let example = seed_example(&kube, "foo", "node-a", None).await;
    patch_pod(
        &kube,
        "foo",
        "sample",
        json!({"metadata": {"annotations": {"backup.velero.io/backup-volumes-excludes": "emptydir-volume"}}}),
    )
    .await;
    let pod_dir = stack.kubelets["node-a"].pod(&example.pod_uid());
    write_sample_tree(
        &pod_dir.pv("kubernetes.io~local-volume", &example.pv_name()),
        "pvc",
    );
    pod_dir.empty_dir("emptydir-volume");
    let mut client = stack.client().await;
    let backup = backup_to_end(
        &mut client,
        "opt-out",
        BackupSpec {
            default_volumes_to_fs_backup: true,
            ..foo_spec()
        },
    )
    .await;
    let status = backup.status.unwrap();
    assert_eq!(status.phase, BackupPhase::Completed as i32, "{status:#?}");
    let names: Vec<&str> = status
        .volumes
        .iter()
        .map(|v| v.volume.as_ref().unwrap().volume_name.as_str())
        .collect();
    assert_eq!(names, vec!["pvc-volume"]);
    let excluded = status
        .skipped
        .iter()
        .find(|s| s.volume == "emptydir-volume")
        .expect("the excluded volume is reported");
    assert_eq!(excluded.reason, SkipReason::Excluded as i32);
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_backup_forgets_its_snapshots_and_files() {
    let stack = Stack::start(StackOptions::default()).await;
    let kube = stack.kube_client().await;
    let example = seed_example(&kube, "foo", "node-a", Some("emptydir-volume")).await;
    let volume = stack.kubelets["node-a"]
        .pod(&example.pod_uid())
        .empty_dir("emptydir-volume");
    write_sample_tree(&volume, "emptydir");
    let mut client = stack.client().await;
    let backup = backup_to_end(&mut client, "doomed", foo_spec()).await;
    let status = backup.status.unwrap();
    assert_eq!(status.phase, BackupPhase::Completed as i32, "{status:#?}");
    let snapshot = status.volumes[0].snapshot_id.clone();
    assert!(!files_under(&stack.storage.join("backups/doomed")).is_empty());

    let deleted = client
        .delete_backup(DeleteBackupRequest {
            name: "doomed".into(),
        })
        .await
        .expect("DeleteBackup")
        .into_inner();
    assert!(
        deleted
            .forgotten_snapshot_ids
            .iter()
            .any(|id| snapshot.starts_with(id.as_str()) || id.starts_with(snapshot.as_str())),
        "{:?} does not name {snapshot}",
        deleted.forgotten_snapshot_ids
    );
    // A local store may keep the emptied directories; no file of the backup may remain.
    let left = files_under(&stack.storage.join("backups/doomed"));
    assert!(left.is_empty(), "{left:?}");
    let error = client
        .get_backup(GetBackupRequest {
            name: "doomed".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::NotFound);
    let mirrors = pod_volume_backups(&kube)
        .list(&ListParams::default().labels("velero.io/backup-name=doomed"))
        .await
        .unwrap();
    assert!(mirrors.items.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn namespace_mapping_restores_into_the_new_namespace() {
    let mut stack = Stack::start(StackOptions::default()).await;
    let kube = stack.kube_client().await;
    let example = seed_example(&kube, "foo", "node-a", Some("emptydir-volume")).await;
    let volume = stack.kubelets["node-a"]
        .pod(&example.pod_uid())
        .empty_dir("emptydir-volume");
    write_sample_tree(&volume, "emptydir");
    let before = manifest(&volume, false);
    let mut client = stack.client().await;
    let backup = backup_to_end(&mut client, "mapped", foo_spec()).await;
    assert_eq!(backup.status.unwrap().phase, BackupPhase::Completed as i32);
    let restore = client
        .create_restore(CreateRestoreRequest {
            name: String::new(),
            spec: Some(RestoreSpec {
                backup_name: "mapped".into(),
                namespace_mapping: [("foo".to_string(), "bar".to_string())].into(),
                ..Default::default()
            }),
        })
        .await
        .expect("CreateRestore")
        .into_inner();
    assert!(restore.name.starts_with("mapped-"), "{}", restore.name);
    let pod = wait_for_pod(&kube, "bar", "sample", Duration::from_secs(30)).await;
    let restored = stack.kubelets["node-a"]
        .pod(pod.metadata.uid.as_deref().unwrap())
        .empty_dir("emptydir-volume");
    mark_init_container_running(&kube, "bar", "sample", "node-a", "restore-wait").await;
    let restore = wait_restore(&mut client, &restore.name).await;
    let status = restore.status.unwrap();
    assert_eq!(status.phase, RestorePhase::Completed as i32, "{status:#?}");
    assert_eq!(status.volumes[0].source_namespace, "foo");
    assert_eq!(status.volumes[0].volume.as_ref().unwrap().namespace, "bar");
    assert_eq!(manifest(&restored, false), before);

    // A restarted orchestrator still answers for the restore, from its record in the storage
    // location.
    stack.restart_orchestrator().await;
    let mut client = stack.client().await;
    let restores = client
        .list_restores(ListRestoresRequest {})
        .await
        .unwrap()
        .into_inner()
        .restores;
    assert_eq!(restores.len(), 1);
    assert_eq!(restores[0].name, restore.name);
    assert_eq!(restores[0].uid, restore.uid);
    assert_eq!(restores[0].spec.as_ref().unwrap().backup_name, "mapped");
    let status = restores[0].status.clone().unwrap();
    assert_eq!(status.phase, RestorePhase::Completed as i32, "{status:#?}");
    assert_eq!(status.volumes[0].source_namespace, "foo");
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_are_found_through_their_daemonset_pods() {
    let mut stack = Stack::start(StackOptions::default()).await;
    let kube = stack.kube_client().await;
    // The agent DaemonSet's pod on node-a, as the API server would report it.
    let _: Pod = stowage_e2e::kube::create(
        &kube,
        Some("stowage"),
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "stowage-volume-agent-x1", "namespace": "stowage",
                "labels": {"app.kubernetes.io/name": "stowage-volume-agent"},
            },
            "spec": {"nodeName": "node-a", "containers": [{"name": "agent", "image": "agent"}]},
            "status": {"phase": "Running", "podIP": "127.0.0.1"},
        }),
    )
    .await;
    let agent_port = stack.agents["node-a"].port;
    stack.options.static_agents = false;
    stack.options.orchestrator_args = vec!["--agent-port".into(), agent_port.to_string()];
    stack.restart_orchestrator().await;

    let example = seed_example(&kube, "foo", "node-a", Some("emptydir-volume")).await;
    let volume = stack.kubelets["node-a"]
        .pod(&example.pod_uid())
        .empty_dir("emptydir-volume");
    std::fs::write(volume.join("data.txt"), b"found").unwrap();
    let mut client = stack.client().await;
    let backup = backup_to_end(&mut client, "discovered", foo_spec()).await;
    let status = backup.status.unwrap();
    assert_eq!(status.phase, BackupPhase::Completed as i32, "{status:#?}");

    // A node whose agent pod is missing fails its volumes at once, naming the node.
    patch_pod(
        &kube,
        "foo",
        "sample",
        json!({"spec": {"nodeName": "node-z"}}),
    )
    .await;
    let backup = backup_to_end(&mut client, "nowhere", foo_spec()).await;
    let status = backup.status.unwrap();
    assert_eq!(status.phase, BackupPhase::Failed as i32, "{status:#?}");
    assert_eq!(status.volumes[0].error_message, "no agent on node node-z");
}

#[tokio::test(flavor = "multi_thread")]
async fn coverage_reports_the_volumes_no_backup_takes() {
    let stack = Stack::start(StackOptions::default()).await;
    let kube = stack.kube_client().await;
    seed_example(&kube, "foo", "node-a", Some("pvc-volume")).await;
    let mut client = stack.client().await;
    let coverage = client
        .get_coverage(GetCoverageRequest {
            namespaces: vec!["foo".into()],
            default_volumes_to_fs_backup: false,
        })
        .await
        .expect("GetCoverage")
        .into_inner();
    assert_eq!((coverage.volumes_covered, coverage.volumes_total), (1, 2));
    assert_eq!(coverage.uncovered.len(), 1);
    assert_eq!(coverage.uncovered[0].volume, "emptydir-volume");
    assert_eq!(
        coverage.uncovered[0].reason,
        SkipReason::NotAnnotated as i32
    );
    let opt_out = client
        .get_coverage(GetCoverageRequest {
            namespaces: vec!["foo".into()],
            default_volumes_to_fs_backup: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((opt_out.volumes_covered, opt_out.volumes_total), (2, 2));
    assert!(opt_out.uncovered.is_empty());
}

/// Every claim of the namespace has a state in coverage, mounted or not; a block-mode claim is
/// neither covered nor a failed volume in a backup, but skipped with its reason.
#[tokio::test(flavor = "multi_thread")]
async fn coverage_lists_every_claim_and_backups_skip_block_mode_claims() {
    let stack = Stack::start(StackOptions::default()).await;
    let kube = stack.kube_client().await;
    let example = seed_example(&kube, "foo", "node-a", Some("pvc-volume")).await;
    let claim = |name: &str, extra: serde_json::Value| {
        let mut spec = json!({"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}});
        spec.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
               "metadata": {"name": name, "namespace": "foo"}, "spec": spec})
    };
    let _: PersistentVolumeClaim = create(
        &kube,
        Some("foo"),
        claim("orphan", json!({"volumeName": "pv-orphan"})),
    )
    .await;
    let _: PersistentVolumeClaim = create(&kube, Some("foo"), claim("pending", json!({}))).await;
    let _: PersistentVolumeClaim = create(
        &kube,
        Some("foo"),
        claim(
            "raw",
            json!({"volumeMode": "Block", "volumeName": "pv-raw"}),
        ),
    )
    .await;
    // A running pod that annotates its block device for backup.
    let _: Pod = create(
        &kube,
        Some("foo"),
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "vm", "namespace": "foo",
                         "annotations": {"backup.velero.io/backup-volumes": "disk"}},
            "spec": {
                "containers": [{"name": "vm", "image": "qemu",
                                "volumeDevices": [{"name": "disk", "devicePath": "/dev/xvda"}]}],
                "volumes": [{"name": "disk", "persistentVolumeClaim": {"claimName": "raw"}}],
            },
        }),
    )
    .await;
    mark_pod_running(&kube, "foo", "vm", "node-a").await;

    let mut client = stack.client().await;
    let coverage = client
        .get_coverage(GetCoverageRequest {
            namespaces: vec!["foo".into()],
            default_volumes_to_fs_backup: false,
        })
        .await
        .expect("GetCoverage")
        .into_inner();
    assert_eq!(
        (coverage.volumes_covered, coverage.volumes_total),
        (1, 3),
        "{coverage:#?}"
    );
    let claims: Vec<_> = coverage
        .claims
        .iter()
        .map(|claim| {
            (
                claim.namespace.as_str(),
                claim.claim.as_str(),
                claim.covered,
                claim.pod.as_str(),
                claim.volume.as_str(),
                SkipReason::try_from(claim.reason).unwrap(),
            )
        })
        .collect();
    assert_eq!(
        claims,
        vec![
            ("foo", "orphan", false, "", "", SkipReason::NotMounted),
            ("foo", "pending", false, "", "", SkipReason::PvcNotBound),
            ("foo", "raw", false, "vm", "disk", SkipReason::BlockMode),
            (
                "foo",
                "sample-pvc",
                true,
                "sample",
                "pvc-volume",
                SkipReason::Unspecified
            ),
        ]
    );
    let disk = coverage
        .uncovered
        .iter()
        .find(|skip| skip.pod == "vm")
        .expect("the block device is uncovered");
    assert_eq!(
        (disk.volume.as_str(), disk.reason),
        ("disk", SkipReason::BlockMode as i32)
    );

    // The backup takes the file-system claim and skips the block device with its reason.
    let pvc_dir = stack.kubelets["node-a"]
        .pod(&example.pod_uid())
        .pv("kubernetes.io~local-volume", &example.pv_name());
    write_sample_tree(&pvc_dir, "pvc");
    let backup = backup_to_end(&mut client, "with-block", foo_spec()).await;
    let status = backup.status.unwrap();
    assert_eq!(status.phase, BackupPhase::Completed as i32, "{status:#?}");
    assert_eq!(status.volumes.len(), 1, "{status:#?}");
    let skipped = status
        .skipped
        .iter()
        .find(|skip| skip.pod == "vm")
        .unwrap_or_else(|| panic!("the block device is not skipped: {status:#?}"));
    assert_eq!(
        (skipped.volume.as_str(), skipped.reason),
        ("disk", SkipReason::BlockMode as i32),
        "{}",
        skipped.detail
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_backups_are_listed_by_a_fresh_orchestrator_and_restore() {
    let mut stack = Stack::start(StackOptions {
        s3: true,
        ..StackOptions::default()
    })
    .await;
    let kube = stack.kube_client().await;
    let example = seed_example(&kube, "foo", "node-a", Some("pvc-volume,emptydir-volume")).await;
    let pod_dir = stack.kubelets["node-a"].pod(&example.pod_uid());
    let pvc_dir = pod_dir.pv("kubernetes.io~local-volume", &example.pv_name());
    let empty_dir = pod_dir.empty_dir("emptydir-volume");
    write_sample_tree(&pvc_dir, "pvc");
    write_sample_tree(&empty_dir, "emptydir");
    let pvc_before = manifest(&pvc_dir, false);
    let empty_before = manifest(&empty_dir, false);
    let mut client = stack.client().await;
    let backup = backup_to_end(&mut client, "offsite", foo_spec()).await;
    let status = backup.status.unwrap();
    assert_eq!(
        status.phase,
        BackupPhase::Completed as i32,
        "{status:#?}\n{}",
        stack.orchestrator.process.log()
    );
    let s3 = stack.s3.as_ref().unwrap();
    assert!(
        status.volumes[0].repository.starts_with(&format!(
            "s3:{}/stowage-e2e/cluster-1/restic/foo",
            s3.endpoint
        )),
        "{}",
        status.volumes[0].repository
    );

    // Disaster recovery: a new orchestrator knows the backup only from the bucket.
    stack.restart_orchestrator().await;
    let mut client = stack.client().await;
    let listed = client
        .list_backups(ListBackupsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.backups.len(), 1);
    let listed = &listed.backups[0];
    assert_eq!(listed.name, "offsite");
    assert_eq!(listed.uid, backup.uid);
    let listed_status = listed.status.clone().unwrap();
    assert_eq!(listed_status.phase, BackupPhase::Completed as i32);
    assert_eq!(listed_status.volumes.len(), 2);

    let claims = lose_sample_pod_and_claim(&kube).await;
    let restore = restore_of(&mut client, "offsite-back", "offsite").await;
    let pod = wait_for_pod(&kube, "foo", "sample", Duration::from_secs(30)).await;
    bind_claim(&claims, "sample-pvc", "pv-offsite").await;
    let new_pod_dir = stack.kubelets["node-a"].pod(pod.metadata.uid.as_deref().unwrap());
    let new_pvc_dir = new_pod_dir.pv("kubernetes.io~local-volume", "pv-offsite");
    let new_empty_dir = new_pod_dir.empty_dir("emptydir-volume");
    mark_init_container_running(&kube, "foo", "sample", "node-a", "restore-wait").await;
    let restore = wait_restore(&mut client, &restore.name).await;
    let restore_status = restore.status.unwrap();
    assert_eq!(
        restore_status.phase,
        RestorePhase::Completed as i32,
        "{restore_status:#?}"
    );
    assert_eq!(manifest(&new_pvc_dir, false), pvc_before);
    assert_eq!(manifest(&new_empty_dir, false), empty_before);
}

#[tokio::test(flavor = "multi_thread")]
async fn backup_of_recreated_pod_is_incremental() {
    let stack = Stack::start(StackOptions::default()).await;
    let kube = stack.kube_client().await;
    let example = seed_example(&kube, "foo", "node-a", Some("pvc-volume,emptydir-volume")).await;
    let kubelet = &stack.kubelets["node-a"];
    let pod_dir = kubelet.pod(&example.pod_uid());
    write_sample_tree(
        &pod_dir.pv("kubernetes.io~local-volume", &example.pv_name()),
        "pvc",
    );
    write_sample_tree(&pod_dir.empty_dir("emptydir-volume"), "emptydir");
    let mut client = stack.client().await;
    let first = backup_to_end(&mut client, "first", foo_spec()).await;
    let first = first.status.unwrap();
    assert_eq!(first.phase, BackupPhase::Completed as i32, "{first:#?}");

    // The Deployment replaces the pod: new uid, same claim, a fresh emptyDir with the same data.
    let pods: Api<Pod> = Api::namespaced(kube.clone(), "foo");
    pods.delete("sample", &DeleteParams::default())
        .await
        .unwrap();
    let mut manifest: serde_json::Value = serde_json::to_value(&example.pod).unwrap();
    for field in ["uid", "resourceVersion", "creationTimestamp"] {
        manifest["metadata"].as_object_mut().unwrap().remove(field);
    }
    let recreated: Pod = stowage_e2e::kube::create(&kube, Some("foo"), manifest).await;
    let new_dir = kubelet.pod(recreated.metadata.uid.as_deref().unwrap());
    write_sample_tree(
        &new_dir.pv("kubernetes.io~local-volume", &example.pv_name()),
        "pvc",
    );
    write_sample_tree(&new_dir.empty_dir("emptydir-volume"), "emptydir");
    stowage_e2e::kube::mark_pod_running(&kube, "foo", "sample", "node-a").await;

    let second = backup_to_end(&mut client, "second", foo_spec()).await;
    let second = second.status.unwrap();
    assert_eq!(second.phase, BackupPhase::Completed as i32, "{second:#?}");
    for volume in &second.volumes {
        let name = &volume.volume.as_ref().unwrap().volume_name;
        let earlier = first
            .volumes
            .iter()
            .find(|v| &v.volume.as_ref().unwrap().volume_name == name)
            .unwrap();
        assert_eq!(volume.stable_identity, earlier.stable_identity, "{name}");
        assert_eq!(
            volume.parent_snapshot_id, earlier.snapshot_id,
            "{name} was not backed up on top of the first backup"
        );
    }
}

/// The backup's log lines that mention the agent looking the parent up.
async fn parent_lookup_lines(client: &mut Client, backup: &str) -> Vec<(String, String)> {
    stowage_e2e::api::backup_log_lines(client, backup, |message| {
        message.contains("looked the parent snapshot up")
    })
    .await
}

/// The orchestrator names each volume's parent from its own records, so every backup after the
/// first runs one restic process (`backup --parent`). When that parent was forgotten behind
/// stowage's back, the agent looks the parent up, the backup completes on top of the snapshot
/// that remains, and the backup's log says why. A restarted orchestrator still knows the parent
/// from the backups in the storage location.
#[tokio::test(flavor = "multi_thread")]
async fn a_known_parent_takes_one_restic_process_and_a_forgotten_one_falls_back() {
    let wrapper_dir = tempfile::tempdir().unwrap();
    let restic = CountingRestic::new(wrapper_dir.path());
    let mut stack = Stack::start(StackOptions {
        agent_args: vec!["--restic-binary".into(), restic.path()],
        ..StackOptions::default()
    })
    .await;
    let kube = stack.kube_client().await;
    let example = seed_example(&kube, "foo", "node-a", Some("emptydir-volume")).await;
    let volume_dir = stack.kubelets["node-a"]
        .pod(&example.pod_uid())
        .empty_dir("emptydir-volume");
    write_sample_tree(&volume_dir, "emptydir");
    let mut client = stack.client().await;
    // Whatever the agent ran while starting is not part of any backup.
    restic.take();

    // No record names a parent yet: the agent looks one up (finds none) and says so.
    let first = backup_to_end(&mut client, "first", foo_spec()).await;
    let first = first.status.unwrap();
    assert_eq!(first.phase, BackupPhase::Completed as i32, "{first:#?}");
    assert_eq!(restic.take(), ["snapshots", "backup"]);
    let first_snapshot = first.volumes[0].snapshot_id.clone();
    assert_eq!(first.volumes[0].parent_snapshot_id, "");
    let lines = parent_lookup_lines(&mut client, "first").await;
    assert!(
        lines.len() == 1 && lines[0].0 == "info" && lines[0].1.contains("no parent"),
        "{lines:?}"
    );

    // The first backup is the parent, from the orchestrator's records: one restic process.
    std::fs::write(
        volume_dir.join("second.txt"),
        b"written before the second backup",
    )
    .unwrap();
    let second = backup_to_end(&mut client, "second", foo_spec()).await;
    let second = second.status.unwrap();
    assert_eq!(second.phase, BackupPhase::Completed as i32, "{second:#?}");
    assert_eq!(restic.take(), ["backup"], "a known parent needs no lookup");
    assert_eq!(second.volumes[0].parent_snapshot_id, first_snapshot);
    assert!(second.volumes[0].files_unmodified > 0, "{second:#?}");
    assert_eq!(second.volumes[0].files_new, 1, "{second:#?}");
    assert!(parent_lookup_lines(&mut client, "second").await.is_empty());
    let second_snapshot = second.volumes[0].snapshot_id.clone();

    // Somebody forgets the second snapshot behind stowage's back; its records still name it.
    let repository = RepositoryRestic::new(&repository_access(&stack, "foo").await);
    repository.ok(&["forget", &second_snapshot]);
    let left = repository.snapshot_ids();
    assert_eq!(left, [first_snapshot.as_str()], "the forget did not take");

    let third = backup_to_end(&mut client, "third", foo_spec()).await;
    let third = third.status.unwrap();
    assert_eq!(third.phase, BackupPhase::Completed as i32, "{third:#?}");
    assert_eq!(
        restic.take(),
        ["backup", "snapshots", "backup"],
        "the forgotten parent is refused by restic, then looked up"
    );
    assert_eq!(
        third.volumes[0].parent_snapshot_id, first_snapshot,
        "incremental from the snapshot that remains"
    );
    assert!(third.volumes[0].files_unmodified > 0, "{third:#?}");
    let lines = parent_lookup_lines(&mut client, "third").await;
    assert!(
        lines.len() == 1
            && lines[0].0 == "warning"
            && lines[0].1.contains(&second_snapshot)
            && lines[0].1.contains("does not exist"),
        "{lines:?}"
    );
    assert_eq!(repository.snapshot_ids().len(), 2);

    // A new orchestrator reads its records back from the storage location.
    stack.restart_orchestrator().await;
    let mut client = stack.client().await;
    restic.take();
    let fourth = backup_to_end(&mut client, "fourth", foo_spec()).await;
    let fourth = fourth.status.unwrap();
    assert_eq!(fourth.phase, BackupPhase::Completed as i32, "{fourth:#?}");
    assert_eq!(
        restic.take(),
        ["backup"],
        "the records in the bucket name the parent"
    );
    assert_eq!(
        fourth.volumes[0].parent_snapshot_id,
        third.volumes[0].snapshot_id
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_volume_at_a_time_runs_per_node_when_so_bounded() {
    let wrapper_dir = tempfile::tempdir().unwrap();
    let restic = slow_restic(wrapper_dir.path(), 1);
    let stack = Stack::start(StackOptions {
        agent_args: vec!["--restic-binary".into(), restic.display().to_string()],
        orchestrator_args: vec!["--max-parallel-per-node".into(), "1".into()],
        ..StackOptions::default()
    })
    .await;
    let kube = stack.kube_client().await;
    let example = seed_example(&kube, "foo", "node-a", Some("pvc-volume,emptydir-volume")).await;
    let pod_dir = stack.kubelets["node-a"].pod(&example.pod_uid());
    write_sample_tree(
        &pod_dir.pv("kubernetes.io~local-volume", &example.pv_name()),
        "pvc",
    );
    write_sample_tree(&pod_dir.empty_dir("emptydir-volume"), "emptydir");
    let mut client = stack.client().await;
    client
        .create_backup(CreateBackupRequest {
            name: "serial".into(),
            spec: Some(foo_spec()),
        })
        .await
        .unwrap();
    let mut stream = client
        .watch_backup(WatchBackupRequest {
            name: "serial".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut most_running = 0;
    let mut last = None;
    while let Some(event) = stream.message().await.unwrap() {
        let status = event.backup.unwrap().status.unwrap();
        let running = status
            .volumes
            .iter()
            .filter(|v| {
                v.phase == VolumePhase::InProgress as i32 || v.phase == VolumePhase::Queued as i32
            })
            .count();
        most_running = most_running.max(running);
        last = Some(status);
    }
    let last = last.unwrap();
    assert_eq!(last.phase, BackupPhase::Completed as i32, "{last:#?}");
    assert_eq!(last.volumes_completed, 2);
    assert_eq!(most_running, 1, "both volumes of node-a ran at once");
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_backups_are_deleted() {
    let stack = Stack::start(StackOptions {
        orchestrator_args: vec!["--housekeeping-interval-seconds".into(), "1".into()],
        ..StackOptions::default()
    })
    .await;
    let kube = stack.kube_client().await;
    let example = seed_example(&kube, "foo", "node-a", Some("emptydir-volume")).await;
    let volume = stack.kubelets["node-a"]
        .pod(&example.pod_uid())
        .empty_dir("emptydir-volume");
    std::fs::write(volume.join("data.txt"), b"short-lived").unwrap();
    let mut client = stack.client().await;
    let backup = backup_to_end(
        &mut client,
        "ephemeral",
        BackupSpec {
            ttl: Some(stowage_proto::prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
            ..foo_spec()
        },
    )
    .await;
    assert_eq!(backup.status.unwrap().phase, BackupPhase::Completed as i32);
    let gone = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let found = client
                .get_backup(GetBackupRequest {
                    name: "ephemeral".into(),
                })
                .await;
            if matches!(&found, Err(status) if status.code() == tonic::Code::NotFound) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(gone.is_ok(), "the expired backup is still listed");
    let left = files_under(&stack.storage.join("backups/ephemeral"));
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn velero_backups_written_later_are_listed_and_kept() {
    let stack = Stack::start(StackOptions {
        orchestrator_args: vec!["--housekeeping-interval-seconds".into(), "1".into()],
        ..StackOptions::default()
    })
    .await;
    let work = tempfile::tempdir().unwrap();
    stowage_e2e::velero_fixture::generate(
        &stowage_e2e::velero_fixture::FixtureLocation::Local {
            root: stack.storage.clone(),
        },
        work.path(),
        "velero-nightly",
        stowage_e2e::velero_fixture::VeleroEra::FsBackupRestic,
    )
    .await
    .unwrap();
    let mut client = stack.client().await;
    let listed = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let backups = client
                .list_backups(ListBackupsRequest {})
                .await
                .unwrap()
                .into_inner()
                .backups;
            if let Some(backup) = backups.into_iter().find(|b| b.name == "velero-nightly") {
                return backup;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the Velero backup is listed");
    assert_eq!(listed.origin, BackupOrigin::Velero as i32);
    let status = listed.status.unwrap();
    assert!(!status.volumes.is_empty(), "{status:#?}");
    assert!(status.volumes.iter().all(|v| !v.snapshot_id.is_empty()));
    assert_eq!(listed.unrestorable_reason, "", "the fixture is complete");
    let refused = client
        .delete_backup(DeleteBackupRequest {
            name: "velero-nightly".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        stack
            .storage
            .join("backups/velero-nightly/velero-backup.json")
            .exists()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn restoring_over_an_existing_pod_fails_its_volumes_with_why() {
    let stack = Stack::start(StackOptions::default()).await;
    let kube = stack.kube_client().await;
    let example = seed_example(&kube, "foo", "node-a", Some("emptydir-volume")).await;
    let volume = stack.kubelets["node-a"]
        .pod(&example.pod_uid())
        .empty_dir("emptydir-volume");
    std::fs::write(volume.join("data.txt"), b"still here").unwrap();
    let mut client = stack.client().await;
    let backup = backup_to_end(&mut client, "kept", foo_spec()).await;
    assert_eq!(backup.status.unwrap().phase, BackupPhase::Completed as i32);
    let restore = restore_of(&mut client, "over", "kept").await;
    let restore = wait_restore(&mut client, &restore.name).await;
    let status = restore.status.unwrap();
    assert_eq!(status.phase, RestorePhase::Failed as i32, "{status:#?}");
    assert!(status.pods_created.is_empty());
    assert_eq!(status.volumes.len(), 1);
    assert!(
        status.volumes[0].error_message.contains("already exists"),
        "{}",
        status.volumes[0].error_message
    );
}

/// A rolling update stops the orchestrator with SIGTERM: the backup is handed over, not failed
/// (its volume keeps running on the agent), and the next orchestrator ends it.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_mid_backup_hands_the_running_backup_to_the_next_orchestrator() {
    let (mut stack, _wrapper) = stack_with_slow_backups().await;
    let mut client = stack.client().await;
    start_and_wait_in_progress(&mut client, "rollout", foo_spec()).await;
    drop(client);
    stack.restart_orchestrator_gracefully().await;
    let mut client = stack.client().await;
    let backup = wait_backup(&mut client, "rollout").await;
    let status = backup.status.unwrap();
    assert_eq!(status.phase, BackupPhase::Completed as i32, "{status:#?}");
    let logs = stowage_e2e::api::backup_log_lines(&mut client, "rollout", |_| true)
        .await
        .into_iter()
        .map(|(_, message)| message)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(logs.contains("left running for the next leader"), "{logs}");
    assert!(logs.contains("re-attached"), "{logs}");
}

/// Every leaf of `value` as a path (`metadata.labels.velero.io/pvc-uid`, `spec.pod.uid`…): map
/// keys are part of the path, so a missing label, annotation or tag is a missing path.
fn leaf_paths(
    value: &serde_json::Value,
    prefix: &str,
    paths: &mut std::collections::BTreeSet<String>,
) {
    match value {
        serde_json::Value::Object(map) if !map.is_empty() => {
            for (key, child) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                leaf_paths(child, &path, paths);
            }
        }
        serde_json::Value::Array(items) if !items.is_empty() => {
            for item in items {
                leaf_paths(item, &format!("{prefix}[]"), paths);
            }
        }
        _ => {
            paths.insert(prefix.to_string());
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pod_volume_backups_file_holds_every_field_velero_writes() {
    use std::collections::BTreeSet;

    use stowage_e2e::velero_fixture::{self, FixtureLocation, VeleroEra};
    use stowage_velero_format::{self as format, PodVolumeBackupPhase, pod_volume_backup as pvb};

    let stack = Stack::start(StackOptions::default()).await;
    let kube = stack.kube_client().await;
    let example = seed_example(&kube, "foo", "node-a", Some("pvc-volume,emptydir-volume")).await;
    let pod_dir = stack.kubelets["node-a"].pod(&example.pod_uid());
    let pvc_dir = pod_dir.pv("kubernetes.io~local-volume", &example.pv_name());
    let empty_dir = pod_dir.empty_dir("emptydir-volume");
    write_sample_tree(&pvc_dir, "pvc");
    write_sample_tree(&empty_dir, "emptydir");
    let mut client = stack.client().await;
    let backup = backup_to_end(&mut client, "nightly", foo_spec()).await;
    let status = backup.status.clone().unwrap();
    assert_eq!(status.phase, BackupPhase::Completed as i32, "{status:#?}");

    // Parsed back from the bucket, as Velero (and stowage) read it.
    let written = std::fs::read(
        stack
            .storage
            .join("backups/nightly/nightly-podvolumebackups.json.gz"),
    )
    .expect("the backup's PodVolumeBackups file");
    let key = "backups/nightly/nightly-podvolumebackups.json.gz";
    let raw: Vec<serde_json::Value> =
        serde_json::from_slice(&format::codec::gunzip(&written, key).unwrap()).unwrap();
    let parsed: Vec<format::PodVolumeBackup> =
        format::codec::decode_json_gz(&written, key, "PodVolumeBackup list").unwrap();
    assert_eq!(parsed.len(), 2);

    // A Velero-written file of the same shape of pod: a PVC volume and an emptyDir volume.
    let fixture_dir = tempfile::tempdir().unwrap();
    let fixture = velero_fixture::generate(
        &FixtureLocation::Local {
            root: fixture_dir.path().join("location"),
        },
        &fixture_dir.path().join("work"),
        "velero-nightly",
        VeleroEra::FsBackupRestic,
    )
    .await
    .unwrap();
    let velero_written = std::fs::read(
        fixture_dir
            .path()
            .join("location")
            .join(format::layout::pod_volume_backups_key(&fixture.backup_name)),
    )
    .unwrap();
    let velero_raw: Vec<serde_json::Value> =
        serde_json::from_slice(&format::codec::gunzip(&velero_written, "velero-nightly").unwrap())
            .unwrap();

    for volume_name in ["pvc-volume", "emptydir-volume"] {
        let index = parsed
            .iter()
            .position(|p| p.spec.volume == volume_name)
            .unwrap_or_else(|| panic!("no PodVolumeBackup of {volume_name}"));
        let (ours, ours_raw) = (&parsed[index], &raw[index]);
        let velero_raw = velero_raw
            .iter()
            .find(|p| p["spec"]["pod"]["namespace"] == "foo" && p["spec"]["volume"] == volume_name)
            .unwrap();
        let velero: format::PodVolumeBackup = serde_json::from_value(velero_raw.clone()).unwrap();
        let volume = status
            .volumes
            .iter()
            .find(|v| v.volume.as_ref().unwrap().volume_name == volume_name)
            .unwrap();

        // Every field Velero wrote is there (labels, annotations and tags by key).
        let (mut ours_paths, mut velero_paths) = (BTreeSet::new(), BTreeSet::new());
        leaf_paths(ours_raw, "", &mut ours_paths);
        leaf_paths(velero_raw, "", &mut velero_paths);
        let missing: Vec<_> = velero_paths.difference(&ours_paths).collect();
        assert!(
            missing.is_empty(),
            "{volume_name}: fields Velero writes and stowage does not: {missing:?}\n{ours_raw:#}"
        );

        // Field by field, against Velero's record of the same kind of volume.
        assert_eq!(ours.api_version, velero.api_version);
        assert_eq!(ours.kind, velero.kind);
        assert_eq!(
            ours.metadata.namespace.as_deref(),
            Some("stowage"),
            "the server's namespace, as Velero's is `velero`"
        );
        assert!(
            ours.metadata
                .uid
                .as_deref()
                .is_some_and(|uid| uid.len() == 36)
        );
        assert_eq!(ours_raw["metadata"]["generateName"], "nightly-");
        assert_eq!(velero_raw["metadata"]["generateName"], "velero-nightly-");
        assert!(ours.metadata.name.starts_with("nightly-"));
        let owner = &ours_raw["metadata"]["ownerReferences"][0];
        let velero_owner = &velero_raw["metadata"]["ownerReferences"][0];
        for field in ["apiVersion", "kind", "controller"] {
            assert_eq!(
                owner[field], velero_owner[field],
                "ownerReferences[0].{field}"
            );
        }
        assert_eq!(owner["name"], "nightly");
        assert_eq!(owner["uid"], backup.uid.as_str());
        let label_keys =
            |p: &format::PodVolumeBackup| p.metadata.labels.keys().cloned().collect::<Vec<_>>();
        assert_eq!(label_keys(ours), label_keys(&velero));
        assert_eq!(ours.metadata.labels[pvb::BACKUP_NAME_LABEL], "nightly");
        assert_eq!(ours.metadata.labels[pvb::BACKUP_UID_LABEL], backup.uid);
        let annotation_keys = |p: &format::PodVolumeBackup| {
            p.metadata.annotations.keys().cloned().collect::<Vec<_>>()
        };
        assert_eq!(annotation_keys(ours), annotation_keys(&velero));
        let tag_keys =
            |p: &format::PodVolumeBackup| p.spec.tags.keys().cloned().collect::<Vec<_>>();
        assert_eq!(tag_keys(ours), tag_keys(&velero));
        assert_eq!(ours.spec.tags[pvb::tags::BACKUP], "nightly");
        assert_eq!(ours.spec.tags[pvb::tags::BACKUP_UID], backup.uid);
        assert_eq!(ours.spec.tags[pvb::tags::NAMESPACE], "foo");
        assert_eq!(ours.spec.tags[pvb::tags::POD], "sample");
        assert_eq!(ours.spec.tags[pvb::tags::POD_UID], example.pod_uid());
        assert_eq!(ours.spec.tags[pvb::tags::VOLUME], volume_name);
        assert_eq!(ours.spec.node, "node-a");
        assert_eq!(ours.spec.pod.kind, velero.spec.pod.kind);
        assert_eq!(
            (
                ours.spec.pod.namespace.as_str(),
                ours.spec.pod.name.as_str(),
                ours.spec.pod.uid.clone()
            ),
            ("foo", "sample", example.pod_uid())
        );
        assert_eq!(
            ours.spec.backup_storage_location,
            velero.spec.backup_storage_location
        );
        assert_eq!(ours.spec.repo_identifier, volume.repository);
        assert_eq!(ours.spec.uploader_type, velero.spec.uploader_type);
        assert_eq!(ours.status.phase, Some(PodVolumeBackupPhase::Completed));
        assert_eq!(ours.status.phase, velero.status.phase);
        assert_eq!(ours.snapshot_id(), Some(volume.snapshot_id.as_str()));
        assert!(
            ours.status.start_timestamp.is_some()
                && ours.status.start_timestamp <= ours.status.completion_timestamp
        );
        let progress = ours.status.progress.clone().unwrap();
        assert_eq!(progress.total_bytes, volume.progress.unwrap().bytes_total);
        assert!(progress.total_bytes > 0 && progress.bytes_done == progress.total_bytes);
        // status.path: the directory on the node restic read, as the agent resolved it.
        let dir = if volume_name == "pvc-volume" {
            &pvc_dir
        } else {
            &empty_dir
        };
        assert_eq!(
            std::fs::canonicalize(&ours.status.path).unwrap(),
            std::fs::canonicalize(dir).unwrap(),
            "{volume_name}: status.path"
        );
        if volume_name == "pvc-volume" {
            let pvc_uid = example.pvc.metadata.uid.clone().unwrap();
            // The cluster's mirror of the volume carries the same marks.
            let mirrors = pod_volume_backups(&kube)
                .list(&ListParams::default().labels(&format!("{}={pvc_uid}", pvb::PVC_UID_LABEL)))
                .await
                .unwrap();
            assert_eq!(
                mirrors.items.len(),
                1,
                "one mirror labelled with the PVC's uid"
            );
            let mirror = &mirrors.items[0].data;
            assert_eq!(mirror["spec"]["tags"]["pvc-uid"], pvc_uid.as_str());
            assert_eq!(mirror["status"]["path"], ours.status.path.as_str());
            assert_eq!(ours.metadata.labels[pvb::PVC_UID_LABEL], pvc_uid);
            assert_eq!(ours.spec.tags[pvb::tags::PVC_UID], pvc_uid);
            assert_eq!(
                ours.metadata.annotations[pvb::PVC_NAME_ANNOTATION],
                "sample-pvc"
            );
        } else {
            assert!(!ours.metadata.labels.contains_key(pvb::PVC_UID_LABEL));
        }
    }
}
