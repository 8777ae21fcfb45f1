//! Hooks beyond a pod's own backup annotations, with the real processes: a backup's spec hooks
//! (Velero's `spec.hooks.resources`, given to `stowage backup create --hooks-file`) run in the
//! pods they select by label; a restore adds a pod's `init.hook.restore.velero.io/*` container
//! after the restore helper and runs its `post.hook.restore.velero.io/*` command through
//! pods/exec once the volume is back and the container runs; every run is on the records
//! (`describe --details`, the bucket's record) and on the PodVolumeBackup/PodVolumeRestore
//! objects. The emulator runs each command in the directory that is the pod's volume on the
//! fake kubelet, so what a hook reads and writes is the volume's data.

use std::time::{Duration, Instant};

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use serde_json::json;
use stowage_e2e::{
    api::{Client, backup_to_end, namespace_spec, wait_backup, wait_restore},
    cli::stowage,
    kube::{
        EXEC_DIR_ANNOTATION, mark_init_container_running, patch_pod, seed_example, wait_for_pod,
    },
    restic::{RepositoryRestic, repository_access},
    stack::{Stack, StackOptions},
};
use stowage_proto::v1::{
    BackupPhase, BackupResourceHook, CreateBackupRequest, CreateRestoreRequest, ExecHook,
    GetBackupRequest, GetRestoreLogsRequest, GetRestoreRequest, RestorePhase, RestoreSpec,
    VolumePhase,
};

fn mirrors(client: &kube::Client, kind: &str, plural: &str) -> Api<DynamicObject> {
    let resource =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("velero.io", "v1", kind), plural);
    Api::namespaced_with(client.clone(), "stowage", &resource)
}

/// Velero's example pod in `shop` (labels `app: sample`) with its emptyDir volume selected
/// and holding `orders.db`, `annotations` added, and that volume as the emulator's exec
/// directory.
async fn stack_with_example(annotations: serde_json::Value) -> Stack {
    let stack = Stack::start(StackOptions::default()).await;
    let kube = stack.kube_client().await;
    let example = seed_example(&kube, "shop", "node-a", Some("emptydir-volume")).await;
    let volume_dir = stack.kubelets["node-a"]
        .pod(&example.pod_uid())
        .empty_dir("emptydir-volume");
    std::fs::write(volume_dir.join("orders.db"), b"42 orders").unwrap();
    let mut annotations = annotations;
    annotations[EXEC_DIR_ANNOTATION] = json!(volume_dir.display().to_string());
    patch_pod(
        &kube,
        "shop",
        "sample",
        json!({"metadata": {"annotations": annotations}}),
    )
    .await;
    stack
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spec_hook_selected_by_label_runs_and_its_result_is_on_the_records() {
    let stack = stack_with_example(json!({})).await;
    let kube = stack.kube_client().await;
    let mut client = stack.client().await;

    // A bad spec hook is refused when the backup is created, naming it.
    let refused = client
        .create_backup(CreateBackupRequest {
            name: "bad-hooks".into(),
            spec: Some(stowage_proto::v1::BackupSpec {
                hooks: vec![BackupResourceHook {
                    name: "dump".into(),
                    pre: vec![ExecHook {
                        command: vec!["true".into()],
                        on_error: "Sometimes".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..namespace_spec("shop")
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused
            .message()
            .contains("hooks[0] `dump`: pre[0]: onError `Sometimes`"),
        "{refused:?}"
    );

    // Two spec hooks: one selects the pod by its label, the other selects other pods.
    let hooks_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        hooks_file.path(),
        r#"
resources:
  - name: dump-orders
    includedNamespaces: [shop]
    labelSelector:
      matchLabels: {app: sample}
    pre:
      - exec:
          command: ["/bin/sh", "-c", "cp orders.db dump.sql && echo dumped"]
          onError: Fail
          timeout: 20s
  - name: other-app
    labelSelector:
      matchLabels: {app: other}
    pre:
      - exec:
          command: ["/bin/sh", "-c", "touch wrong-pod"]
"#,
    )
    .unwrap();
    let server = stack.orchestrator.url.clone();
    let created = stowage(
        &server,
        &[
            "backup",
            "create",
            "spec-hooks",
            "--include-namespaces",
            "shop",
            "--hooks-file",
            hooks_file.path().to_str().unwrap(),
        ],
    );
    assert!(created.status.success(), "{created:?}");
    let backup = wait_backup(&mut client, "spec-hooks").await;
    let status = backup.status.unwrap();
    assert_eq!(status.phase, BackupPhase::Completed as i32, "{status:#?}");

    // The selected hook's dump is in the snapshot; the other hook never ran.
    let volume = &status.volumes[0];
    let repository = RepositoryRestic::new(&repository_access(&stack, "shop").await);
    let listed = repository.ok(&["ls", "--no-lock", &volume.snapshot_id]);
    assert!(listed.lines().any(|l| l.ends_with("/dump.sql")), "{listed}");
    assert!(!listed.contains("wrong-pod"), "{listed}");

    // The run is on the volume's record, on its PodVolumeBackup object, and in describe.
    assert_eq!(volume.hooks.len(), 1, "{volume:#?}");
    let hook = &volume.hooks[0];
    assert_eq!(
        (hook.phase.as_str(), hook.container.as_str(), hook.exit_code),
        ("pre", "app", 0)
    );
    assert!(hook.succeeded);
    assert_eq!(hook.stdout, "dumped\n");
    assert_eq!(
        hook.command,
        ["/bin/sh", "-c", "cp orders.db dump.sql && echo dumped"]
    );
    let objects = mirrors(&kube, "PodVolumeBackup", "podvolumebackups")
        .list(&ListParams::default().labels("velero.io/backup-name=spec-hooks"))
        .await
        .unwrap();
    assert_eq!(objects.items.len(), 1);
    let mirrored = &objects.items[0].data["status"]["hooks"];
    assert_eq!(mirrored[0]["phase"], "pre", "{mirrored}");
    assert_eq!(mirrored[0]["succeeded"], true, "{mirrored}");
    assert_eq!(mirrored[0]["stdout"], "dumped\n", "{mirrored}");
    let described = stowage(&server, &["backup", "describe", "spec-hooks", "--details"]);
    let text = String::from_utf8_lossy(&described.stdout);
    assert!(
        text.contains(
            "Hooks:\n  shop/sample pre [\"/bin/sh\", \"-c\", \"cp orders.db dump.sql && echo dumped\"] in app: succeeded\n    stdout: dumped\n"
        ),
        "{described:?}"
    );

    // A restarted orchestrator reads the run back from the bucket's record.
    let mut stack = stack;
    stack.restart_orchestrator().await;
    let mut client = stack.client().await;
    let reread = client
        .get_backup(GetBackupRequest {
            name: "spec-hooks".into(),
        })
        .await
        .expect("GetBackup")
        .into_inner();
    assert_eq!(reread.status.unwrap().volumes[0].hooks[0], *hook);
}

/// Waits until `check` holds for restore `name`, or panics after 60s with its last state.
async fn restore_until(
    client: &mut Client,
    name: &str,
    check: impl Fn(&stowage_proto::v1::Restore) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let restore = client
            .get_restore(GetRestoreRequest { name: name.into() })
            .await
            .expect("GetRestore")
            .into_inner();
        if check(&restore) {
            return;
        }
        assert!(Instant::now() < deadline, "{restore:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Plays kubelet for restored pod `shop/sample` once its volumes are back: the helper is done
/// and container `app` runs.
async fn mark_app_running(kube: &kube::Client) {
    patch_pod(
        kube,
        "shop",
        "sample",
        json!({"status": {
            "phase": "Running",
            "initContainerStatuses": [{
                "name": "restore-wait", "image": "restore-helper", "imageID": "",
                "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "startedAt": "2026-01-01T00:00:00Z",
                                         "finishedAt": "2026-01-01T00:00:01Z"}},
            }],
            "containerStatuses": [{
                "name": "app", "image": "busybox", "imageID": "", "restartCount": 0,
                "ready": true,
                "state": {"running": {"startedAt": "2026-01-01T00:00:02Z"}},
            }],
        }}),
    )
    .await;
}

/// Backs up `shop` (its pod annotated with `annotations`), deletes the pod, and restores it
/// as far as the restored volume: returns the restore's name and the new volume's directory,
/// the recreated pod's exec directory pointed at it.
async fn restore_to_volume(
    stack: &Stack,
    client: &mut Client,
    restore_name: &str,
) -> (String, std::path::PathBuf) {
    let kube = stack.kube_client().await;
    let backup = backup_to_end(client, "before-restore", namespace_spec("shop")).await;
    assert_eq!(backup.status.unwrap().phase, BackupPhase::Completed as i32);
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(kube.clone(), "shop");
    pods.delete("sample", &Default::default()).await.unwrap();
    let restore = client
        .create_restore(CreateRestoreRequest {
            name: restore_name.into(),
            spec: Some(RestoreSpec {
                backup_name: "before-restore".into(),
                ..Default::default()
            }),
        })
        .await
        .expect("CreateRestore")
        .into_inner();
    let pod = wait_for_pod(&kube, "shop", "sample", Duration::from_secs(30)).await;
    let new_dir = stack.kubelets["node-a"]
        .pod(pod.metadata.uid.as_deref().unwrap())
        .empty_dir("emptydir-volume");
    std::fs::create_dir_all(&new_dir).unwrap();
    // The recreated pod's commands run in its own (restored) volume.
    patch_pod(
        &kube,
        "shop",
        "sample",
        json!({"metadata": {"annotations": {EXEC_DIR_ANNOTATION: new_dir.display().to_string()}}}),
    )
    .await;
    mark_init_container_running(&kube, "shop", "sample", "node-a", "restore-wait").await;
    restore_until(client, &restore.name, |restore| {
        restore.status.as_ref().is_some_and(|status| {
            !status.volumes.is_empty()
                && status
                    .volumes
                    .iter()
                    .all(|v| v.phase == VolumePhase::Completed as i32)
        })
    })
    .await;
    (restore.name, new_dir)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_post_restore_hook_runs_after_the_data_is_back_and_the_init_hook_follows_the_helper() {
    let stack = stack_with_example(json!({
        "post.hook.restore.velero.io/command":
            r#"["/bin/sh", "-c", "cat orders.db > post-restore-marker && echo checked"]"#,
        "post.hook.restore.velero.io/on-error": "Fail",
        "post.hook.restore.velero.io/wait-timeout": "2m",
        "init.hook.restore.velero.io/container-image": "busybox:1.36",
        "init.hook.restore.velero.io/container-name": "warm-cache",
        "init.hook.restore.velero.io/command": r#"["/bin/sh", "-c", "ls /cache"]"#,
    }))
    .await;
    let kube = stack.kube_client().await;
    let mut client = stack.client().await;

    let (name, new_dir) = restore_to_volume(&stack, &mut client, "with-hooks").await;
    // The init hook's container comes right after the restore helper.
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(kube.clone(), "shop");
    let pod = pods.get("sample").await.unwrap();
    let init: Vec<_> = pod.spec.as_ref().unwrap().init_containers.clone().unwrap();
    let names: Vec<&str> = init.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["restore-wait", "warm-cache"]);
    assert_eq!(init[1].image.as_deref(), Some("busybox:1.36"));
    assert_eq!(
        init[1].command.clone().unwrap(),
        ["/bin/sh", "-c", "ls /cache"]
    );

    // The data is back but the container does not run yet: no hook so far, the restore waits.
    assert!(new_dir.join("orders.db").exists());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !new_dir.join("post-restore-marker").exists(),
        "the post-restore hook ran before its container did"
    );
    let waiting = client
        .get_restore(GetRestoreRequest { name: name.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        waiting.status.unwrap().phase,
        RestorePhase::InProgress as i32
    );

    mark_app_running(&kube).await;
    let restore = wait_restore(&mut client, &name).await;
    let status = restore.status.unwrap();
    assert_eq!(status.phase, RestorePhase::Completed as i32, "{status:#?}");
    // What the hook read is the restored file's content.
    assert_eq!(
        std::fs::read_to_string(new_dir.join("post-restore-marker")).unwrap(),
        "42 orders"
    );
    let hook = &status.volumes[0].hooks[0];
    assert_eq!(
        (hook.phase.as_str(), hook.container.as_str(), hook.succeeded),
        ("post-restore", "app", true),
        "{hook:#?}"
    );
    assert_eq!(hook.stdout, "checked\n");
    let objects = mirrors(&kube, "PodVolumeRestore", "podvolumerestores")
        .list(&ListParams::default().labels(&format!("velero.io/restore-name={name}")))
        .await
        .unwrap();
    assert_eq!(objects.items.len(), 1);
    let mirrored = &objects.items[0].data["status"]["hooks"][0];
    assert_eq!(mirrored["phase"], "post-restore", "{mirrored}");
    assert_eq!(mirrored["exitCode"], 0, "{mirrored}");
    let logs = client
        .get_restore_logs(GetRestoreLogsRequest { name: name.clone() })
        .await
        .unwrap()
        .into_inner()
        .lines;
    assert!(
        logs.iter().any(|line| line.level == "info"
            && line.message.starts_with("post-restore hook [\"/bin/sh\"")
            && line.message.contains("exited with code 0")),
        "{logs:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_post_restore_hook_with_fail_fails_the_pods_volumes_with_its_stderr() {
    let stack = stack_with_example(json!({
        "post.hook.restore.velero.io/command":
            r#"["/bin/sh", "-c", "echo 'orders table missing' >&2; exit 4"]"#,
        "post.hook.restore.velero.io/on-error": "Fail",
    }))
    .await;
    let kube = stack.kube_client().await;
    let mut client = stack.client().await;
    let (name, _) = restore_to_volume(&stack, &mut client, "failing-hook").await;
    mark_app_running(&kube).await;
    let restore = wait_restore(&mut client, &name).await;
    let status = restore.status.unwrap();
    assert_eq!(status.phase, RestorePhase::Failed as i32, "{status:#?}");
    let volume = &status.volumes[0];
    assert_eq!(volume.phase, VolumePhase::Failed as i32);
    assert_eq!(
        volume.error_message,
        r#"post-restore hook ["/bin/sh", "-c", "echo 'orders table missing' >&2; exit 4"] in shop/sample container app exited with code 4: orders table missing"#
    );
    assert_eq!(volume.hooks[0].exit_code, 4);
    assert_eq!(volume.hooks[0].stderr, "orders table missing\n");
}
