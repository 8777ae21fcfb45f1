//! Velero's exec hook annotations run through the Kubernetes API's pods/exec with kube's real
//! client, against the emulator: a pre-backup hook writes a dump into the directory that is the
//! pod's volume, and a failing hook reports its exit code and stderr.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use serde_json::json;
use stowage_e2e::kube::{EXEC_DIR_ANNOTATION, KubeEmulator, create, ensure_namespace};
use stowage_hooks::{
    DEFAULT_OUTPUT_LIMIT, HookResult, KubePodExec, OnError, backup_hooks, run_hook, target,
};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread")]
async fn annotated_hooks_run_in_the_pod_through_pods_exec() {
    let dir = tempfile::tempdir().unwrap();
    let emulator = KubeEmulator::start(dir.path()).await;
    let client = emulator.client().await;
    ensure_namespace(&client, "shop").await;
    let volume = dir.path().join("pvc-volume");
    std::fs::create_dir(&volume).unwrap();
    let pod: Pod = create(
        &client,
        Some("shop"),
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "db-0", "namespace": "shop",
                "annotations": {
                    EXEC_DIR_ANNOTATION: volume.display().to_string(),
                    "pre.hook.backup.velero.io/command":
                        r#"["/bin/sh", "-c", "echo 'COPY orders' > dump.sql && echo dumped"]"#,
                    "pre.hook.backup.velero.io/container": "postgres",
                    "post.hook.backup.velero.io/command":
                        r#"["/bin/sh", "-c", "echo 'role \"backup\" does not exist' >&2; exit 2"]"#,
                },
            },
            "spec": {"containers": [
                {"name": "metrics", "image": "exporter"},
                {"name": "postgres", "image": "postgres"},
            ]},
        }),
    )
    .await;
    let annotations: BTreeMap<String, String> =
        pod.metadata.annotations.clone().unwrap_or_default();
    let hooks = backup_hooks(&annotations).expect("valid hook annotations");
    let exec = KubePodExec::new(client.clone());
    let cancel = CancellationToken::new();

    let pre = hooks.pre.first().cloned().expect("a pre hook");
    let pre_target = target(&pod, &pre).unwrap();
    assert_eq!(pre_target.container, "postgres");
    let run = run_hook(&exec, pre_target, &pre, DEFAULT_OUTPUT_LIMIT, &cancel).await;
    assert_eq!(run.result, HookResult::Succeeded, "{}", run.reason());
    assert_eq!(run.stdout, "dumped\n");
    assert_eq!(
        std::fs::read_to_string(volume.join("dump.sql")).unwrap(),
        "COPY orders\n",
        "the hook wrote its dump into the pod's volume"
    );

    // No container named: the pod's first, as in Velero; the failure carries exit code and
    // stderr, and Velero's default on-error (Fail) fails the pod's volumes.
    let post = hooks.post.first().cloned().expect("a post hook");
    let post_target = target(&pod, &post).unwrap();
    assert_eq!(post_target.container, "metrics");
    let run = run_hook(&exec, post_target, &post, DEFAULT_OUTPUT_LIMIT, &cancel).await;
    assert_eq!(run.result, HookResult::Exited(2));
    assert_eq!(run.on_error, OnError::Fail);
    assert!(run.fails_pod());
    assert_eq!(run.stderr, "role \"backup\" does not exist\n");
    assert!(
        run.reason()
            .ends_with("exited with code 2: role \"backup\" does not exist"),
        "{}",
        run.reason()
    );

    // A hook past its timeout: the result says so, with what it printed before.
    let mut slow = pre.clone();
    slow.command = vec![
        "/bin/sh".into(),
        "-c".into(),
        "echo waiting; exec sleep 60".into(),
    ];
    slow.timeout = std::time::Duration::from_secs(3);
    let run = run_hook(
        &exec,
        target(&pod, &slow).unwrap(),
        &slow,
        DEFAULT_OUTPUT_LIMIT,
        &cancel,
    )
    .await;
    assert_eq!(
        run.result,
        HookResult::TimedOut(std::time::Duration::from_secs(3))
    );
    assert_eq!(run.stdout, "waiting\n");

    // The pod gone: the API server's refusal is the result.
    let mut gone = pre.clone();
    gone.container = Some("postgres".into());
    let mut missing_pod = target(&pod, &gone).unwrap();
    missing_pod.pod = "db-1".into();
    let run = run_hook(&exec, missing_pod, &gone, DEFAULT_OUTPUT_LIMIT, &cancel).await;
    assert!(
        matches!(
            &run.result,
            HookResult::Error(stowage_hooks::ExecError::Refused { code: 404, .. })
        ),
        "{:?}",
        run.result
    );
}
