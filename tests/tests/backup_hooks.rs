//! A backup runs a pod's Velero backup hooks (its `pre.hook.backup.velero.io/*` and
//! `post.hook.backup.velero.io/*` annotations) through the Kubernetes API's pods/exec: the
//! emulator runs each command in the directory that is the pod's volume on the fake kubelet,
//! so a hook's files are the files the agent's real restic backs up.

use std::path::{Path, PathBuf};

use stowage_e2e::{
    api::{Client, backup_to_end, namespace_spec},
    kube::{EXEC_DIR_ANNOTATION, patch_pod, seed_example},
    restic::{CountingRestic, RepositoryRestic, repository_access},
    stack::{Stack, StackOptions},
};
use stowage_proto::v1::{BackupPhase, VolumePhase};

/// A stack whose agent runs restic through a wrapper that counts its commands (into
/// `<wrapper dir>/restic-runs`), and Velero's example pod in `shop` with its emptyDir volume
/// selected, annotated with `hooks(wrapper dir)` and with the volume's directory as the
/// emulator's exec directory.
async fn stack_with_hooked_pod(
    hooks: impl FnOnce(&Path) -> serde_json::Value,
) -> (Stack, CountingRestic, PathBuf, tempfile::TempDir) {
    let wrapper_dir = tempfile::tempdir().unwrap();
    let restic = CountingRestic::new(wrapper_dir.path());
    let stack = Stack::start(StackOptions {
        agent_args: vec!["--restic-binary".into(), restic.path()],
        ..StackOptions::default()
    })
    .await;
    let kube = stack.kube_client().await;
    let example = seed_example(&kube, "shop", "node-a", Some("emptydir-volume")).await;
    let volume_dir = stack.kubelets["node-a"]
        .pod(&example.pod_uid())
        .empty_dir("emptydir-volume");
    std::fs::write(volume_dir.join("orders.db"), b"orders").unwrap();
    let mut annotations = hooks(wrapper_dir.path());
    annotations[EXEC_DIR_ANNOTATION] = serde_json::json!(volume_dir.display().to_string());
    patch_pod(
        &kube,
        "shop",
        "sample",
        serde_json::json!({"metadata": {"annotations": annotations}}),
    )
    .await;
    // Whatever the agent ran while starting is not part of the backup.
    restic.take();
    (stack, restic, volume_dir, wrapper_dir)
}

async fn hook_log_lines(client: &mut Client, backup: &str) -> Vec<(String, String)> {
    stowage_e2e::api::backup_log_lines(client, backup, |message| {
        message.starts_with("pre-backup hook") || message.starts_with("post-backup hook")
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pre_hooks_dump_is_in_the_snapshot_and_the_post_hook_runs_after_restic() {
    let (stack, restic, volume_dir, _wrapper) = stack_with_hooked_pod(|wrapper_dir| {
        let runs = wrapper_dir.join("restic-runs");
        serde_json::json!({
            "pre.hook.backup.velero.io/command":
                r#"["/bin/sh", "-c", "echo 'COPY orders' > dump.sql && echo dumped"]"#,
            "pre.hook.backup.velero.io/on-error": "Fail",
            // The post hook copies the restic commands the agent ran so far into the volume:
            // a `backup` among them is restic having run before the post hook.
            "post.hook.backup.velero.io/command": serde_json::to_string(&[
                "/bin/sh", "-c", &format!("cp '{}' post-hook-marker", runs.display()),
            ]).unwrap(),
        })
    })
    .await;
    let mut client = stack.client().await;

    let backup = backup_to_end(&mut client, "with-hooks", namespace_spec("shop")).await;
    let status = backup.status.unwrap();
    assert_eq!(status.phase, BackupPhase::Completed as i32, "{status:#?}");
    assert_eq!(restic.take(), ["snapshots", "backup"]);

    // The pre hook's dump is part of the snapshot; the post hook's marker is not, and it
    // shows restic's backup had run when the post hook did.
    let repository = RepositoryRestic::new(&repository_access(&stack, "shop").await);
    let listed = repository.ok(&["ls", "--no-lock", &status.volumes[0].snapshot_id]);
    let files: Vec<&str> = listed
        .lines()
        .filter_map(|line| line.rsplit('/').next())
        .collect();
    assert!(files.contains(&"dump.sql"), "{listed}");
    assert!(files.contains(&"orders.db"), "{listed}");
    assert!(!files.contains(&"post-hook-marker"), "{listed}");
    let seen_by_post_hook = std::fs::read_to_string(volume_dir.join("post-hook-marker"))
        .expect("the post hook wrote its marker into the volume");
    assert_eq!(
        seen_by_post_hook.lines().collect::<Vec<_>>(),
        ["snapshots", "backup"]
    );

    let lines = hook_log_lines(&mut client, "with-hooks").await;
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0].0, "info");
    assert!(
        lines[0].1.starts_with(
            r#"pre-backup hook ["/bin/sh", "-c", "echo 'COPY orders' > dump.sql && echo dumped"] in shop/sample container app (on-error Fail) exited with code 0; stdout: "dumped""#
        ),
        "{lines:?}"
    );
    assert!(
        lines[1].1.starts_with("post-backup hook") && lines[1].1.contains("exited with code 0"),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pre_hook_failing_with_fail_fails_the_pods_volumes_and_runs_no_restic() {
    let (stack, restic, volume_dir, _wrapper) = stack_with_hooked_pod(|_| {
        serde_json::json!({
            "pre.hook.backup.velero.io/command":
                r#"["/bin/sh", "-c", "echo 'pg_dump: connection refused' >&2; exit 3"]"#,
            "pre.hook.backup.velero.io/on-error": "Fail",
            "post.hook.backup.velero.io/command":
                r#"["/bin/sh", "-c", "touch post-hook-marker"]"#,
        })
    })
    .await;
    let mut client = stack.client().await;

    let backup = backup_to_end(&mut client, "failing-hook", namespace_spec("shop")).await;
    let status = backup.status.unwrap();
    assert_eq!(status.phase, BackupPhase::Failed as i32, "{status:#?}");
    assert_eq!(status.volumes.len(), 1);
    let volume = &status.volumes[0];
    assert_eq!(volume.phase, VolumePhase::Failed as i32);
    assert_eq!(
        volume.error_message,
        r#"pre-backup hook ["/bin/sh", "-c", "echo 'pg_dump: connection refused' >&2; exit 3"] in shop/sample container app exited with code 3: pg_dump: connection refused"#
    );
    assert!(volume.snapshot_id.is_empty());
    assert!(
        !restic.take().iter().any(|command| command == "backup"),
        "restic backed the volume up after its pre hook failed"
    );
    assert!(
        !volume_dir.join("post-hook-marker").exists(),
        "the post hook ran after a pre hook that failed the pod"
    );
    let lines = hook_log_lines(&mut client, "failing-hook").await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0].0, "error");
    assert!(
        lines[0]
            .1
            .ends_with(r#"exited with code 3; stdout: ""; stderr: "pg_dump: connection refused""#),
        "{lines:?}"
    );
}
