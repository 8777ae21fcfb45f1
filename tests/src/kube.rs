//! The Kubernetes API for tests: starts `tests/support/kube_emulator.py` (kmock's emulator with
//! uids, resourceVersions, selectors, and an API server's validation of stowage's CRDs and core
//! objects added) on a free port, writes a kubeconfig for it, seeds objects, and plays kubelet:
//! marks pods scheduled and running and sets init-container states.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    apps::v1::{Deployment, ReplicaSet},
    core::v1::{Namespace, PersistentVolume, PersistentVolumeClaim, Pod},
};
use kube::{
    Api, Client, Config,
    api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use serde_json::json;

use crate::{TestProcess, free_port, workspace_root};

/// The pod annotation naming the directory the emulator runs the pod's `pods/exec` commands
/// in (a hook writes into it as into the container's filesystem); without it, commands run in
/// a directory of their own per pod.
pub const EXEC_DIR_ANNOTATION: &str = "kube-emulator.stowage.dev/exec-dir";

/// A running emulator and the kubeconfig that points at it.
pub struct KubeEmulator {
    pub process: TestProcess,
    /// `http://127.0.0.1:<port>`
    pub url: String,
    pub kubeconfig: PathBuf,
}

impl KubeEmulator {
    /// Starts the emulator with its log and kubeconfig in `dir`, and waits until it answers.
    pub async fn start(dir: &Path) -> KubeEmulator {
        KubeEmulator::start_with_args(dir, &[]).await
    }

    /// [`KubeEmulator::start`] with extra emulator flags (`--compaction-interval 0`).
    pub async fn start_with_args(dir: &Path, extra: &[&str]) -> KubeEmulator {
        let port = free_port();
        let script = workspace_root().join("tests/support/kube_emulator.py");
        let mut args = vec![
            "-u".to_string(),
            script.display().to_string(),
            "--port".to_string(),
            port.to_string(),
        ];
        args.extend(extra.iter().map(|arg| arg.to_string()));
        let mut process =
            TestProcess::start("kube-emulator", "python3", &args, &BTreeMap::new(), dir);
        let url = format!("http://127.0.0.1:{port}");
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: emulator\n  cluster:\n    server: {url}\nusers:\n- name: emulator\n  user: {{}}\ncontexts:\n- name: emulator\n  context:\n    cluster: emulator\n    user: emulator\ncurrent-context: emulator\n"
            ),
        )
        .expect("writing the kubeconfig");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = process.child.try_wait() {
                panic!(
                    "kube emulator exited with {status}; log:\n{}",
                    process.log()
                );
            }
            if process.log().contains("listening on") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "kube emulator did not start; log:\n{}",
                process.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        KubeEmulator {
            process,
            url,
            kubeconfig,
        }
    }

    /// `KUBECONFIG=<path>` for services that talk to the emulator.
    pub fn env(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(
            "KUBECONFIG".to_string(),
            self.kubeconfig.display().to_string(),
        )])
    }

    pub async fn client(&self) -> Client {
        // ring and aws-lc-rs are both linked into the tests; rustls needs one chosen.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig).expect("reading the kubeconfig");
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .expect("a client config from the kubeconfig");
        Client::try_from(config).expect("a kube client")
    }
}

/// Creates `object` (any kind) in the emulator and returns it as stored, with its uid.
pub async fn create<K>(client: &Client, namespace: Option<&str>, object: serde_json::Value) -> K
where
    K: kube::Resource<DynamicType = ()> + serde::de::DeserializeOwned,
{
    let resource = ApiResource::erase::<K>(&());
    let api: Api<DynamicObject> = match namespace {
        Some(namespace) => Api::namespaced_with(client.clone(), namespace, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    let object: DynamicObject = serde_json::from_value(object).expect("a valid object");
    let created = api
        .create(&PostParams::default(), &object)
        .await
        .expect("creating the object in the emulator");
    serde_json::from_value(serde_json::to_value(created).expect("serializable"))
        .expect("the stored object has the expected shape")
}

/// The objects of the seed's example, as the emulator stored them.
pub struct Example {
    pub namespace: String,
    pub pod: Pod,
    pub pvc: PersistentVolumeClaim,
    pub pv: PersistentVolume,
}

impl Example {
    pub fn pod_uid(&self) -> String {
        self.pod.metadata.uid.clone().unwrap_or_default()
    }
    pub fn pv_name(&self) -> String {
        self.pv.metadata.name.clone().unwrap_or_default()
    }
}

/// Seeds Velero's example: namespace `namespace` with pod `sample` on `node`, volumes
/// `pvc-volume` (PVC `sample-pvc` bound to PV `pv-<namespace>-sample`) and `emptydir-volume`,
/// annotated `backup.velero.io/backup-volumes: <annotation>`, owned by Deployment `sample`'s
/// ReplicaSet `sample-5d8f7b9c4d` (both created), and running.
pub async fn seed_example(
    client: &Client,
    namespace: &str,
    node: &str,
    annotation: Option<&str>,
) -> Example {
    ensure_namespace(client, namespace).await;
    let pv_name = format!("pv-{namespace}-sample");
    let pvc: PersistentVolumeClaim = create(
        client,
        Some(namespace),
        json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "sample-pvc", "namespace": namespace},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}},
                "storageClassName": "standard",
                "volumeName": pv_name,
            },
            "status": {"phase": "Bound"},
        }),
    )
    .await;
    let pv: PersistentVolume = create(
        client,
        None,
        json!({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": pv_name},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "standard",
                "hostPath": {"path": format!("/mnt/{pv_name}")},
                "claimRef": {
                    "kind": "PersistentVolumeClaim", "namespace": namespace,
                    "name": "sample-pvc", "uid": pvc.metadata.uid,
                },
            },
            "status": {"phase": "Bound"},
        }),
    )
    .await;
    // The pod's controllers exist with real uids, as in a cluster: the emulator's garbage
    // collector deletes a pod whose owner is missing.
    let replica_set =
        seed_controllers(client, namespace, "sample", json!({"app": "sample"}), 1).await;
    let mut annotations = serde_json::Map::new();
    if let Some(annotation) = annotation {
        annotations.insert(
            "backup.velero.io/backup-volumes".to_string(),
            json!(annotation),
        );
    }
    let _: Pod = create(
        client,
        Some(namespace),
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "sample", "namespace": namespace,
                "labels": {"app": "sample"},
                "annotations": annotations,
                "ownerReferences": [owner_reference(&replica_set)],
            },
            "spec": {
                "nodeName": node,
                "containers": [{
                    "name": "app", "image": "busybox",
                    "volumeMounts": [
                        {"name": "pvc-volume", "mountPath": "/data"},
                        {"name": "emptydir-volume", "mountPath": "/cache"},
                    ],
                }],
                "volumes": [
                    {"name": "pvc-volume", "persistentVolumeClaim": {"claimName": "sample-pvc"}},
                    {"name": "emptydir-volume", "emptyDir": {}},
                ],
            },
        }),
    )
    .await;
    let pod = mark_pod_running(client, namespace, "sample", node).await;
    Example {
        namespace: namespace.to_string(),
        pod,
        pvc,
        pv,
    }
}

/// The pod template hash of the ReplicaSets [`seed_controllers`] creates.
pub const POD_TEMPLATE_HASH: &str = "5d8f7b9c4d";

/// Creates Deployment `name` (`replicas` pods labelled `labels`) and its ReplicaSet
/// `<name>-5d8f7b9c4d` owned by it, as the Deployment controller would, and returns the
/// ReplicaSet; its pods are the caller's to create, owned by it ([`owner_reference`]).
pub async fn seed_controllers(
    client: &Client,
    namespace: &str,
    name: &str,
    labels: serde_json::Value,
    replicas: u32,
) -> ReplicaSet {
    let template = json!({
        "metadata": {"labels": labels},
        "spec": {"containers": [{"name": "app", "image": "busybox"}]},
    });
    let deployment: Deployment = create(
        client,
        Some(namespace),
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels}, "template": template},
        }),
    )
    .await;
    create(
        client,
        Some(namespace),
        json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {
                "name": format!("{name}-{POD_TEMPLATE_HASH}"), "namespace": namespace,
                "labels": labels,
                "ownerReferences": [owner_reference(&deployment)],
            },
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels}, "template": template},
        }),
    )
    .await
}

/// The controller ownerReference a controller sets on what it creates.
pub fn owner_reference<K>(owner: &K) -> serde_json::Value
where
    K: kube::Resource<DynamicType = ()>,
{
    json!({
        "apiVersion": K::api_version(&()), "kind": K::kind(&()),
        "name": owner.meta().name, "uid": owner.meta().uid,
        "controller": true, "blockOwnerDeletion": true,
    })
}

/// Creates namespace `name` unless it exists.
pub async fn ensure_namespace(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    if api
        .get_opt(name)
        .await
        .expect("reading a namespace")
        .is_none()
    {
        let _: Namespace = create(
            client,
            None,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
        )
        .await;
    }
}

/// Plays kubelet and scheduler: binds the pod to `node` and reports it Running.
pub async fn mark_pod_running(client: &Client, namespace: &str, name: &str, node: &str) -> Pod {
    patch_pod(
        client,
        namespace,
        name,
        json!({
            "spec": {"nodeName": node},
            "status": {
                "phase": "Running",
                "conditions": [{"type": "PodScheduled", "status": "True"}],
            },
        }),
    )
    .await
}

/// Plays kubelet for a recreated pod: scheduled on `node`, phase Pending, init container
/// `init_container` running (the state the restore helper is in while it waits).
pub async fn mark_init_container_running(
    client: &Client,
    namespace: &str,
    name: &str,
    node: &str,
    init_container: &str,
) -> Pod {
    patch_pod(
        client,
        namespace,
        name,
        json!({
            "spec": {"nodeName": node},
            "status": {
                "phase": "Pending",
                "conditions": [{"type": "PodScheduled", "status": "True"}],
                "initContainerStatuses": [{
                    "name": init_container, "image": "restore-helper", "imageID": "",
                    "ready": false, "restartCount": 0,
                    "state": {"running": {"startedAt": "2024-01-01T00:00:00Z"}},
                }],
            },
        }),
    )
    .await
}

/// Merge-patches pod `namespace/name` (spec and status alike: the emulator has one object).
pub async fn patch_pod(
    client: &Client,
    namespace: &str,
    name: &str,
    patch: serde_json::Value,
) -> Pod {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patching the pod")
}

/// Plays the provisioner: binds claim `name` of `claims` to persistent volume `pv`.
pub async fn bind_claim(claims: &Api<PersistentVolumeClaim>, name: &str, pv: &str) {
    claims
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"volumeName": pv}})),
        )
        .await
        .expect("binding the claim");
}

/// Waits up to `timeout` for pod `namespace/name` to exist, and returns it.
pub async fn wait_for_pod(client: &Client, namespace: &str, name: &str, timeout: Duration) -> Pod {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(pod) = api.get_opt(name).await.expect("reading a pod") {
            return pod;
        }
        assert!(
            Instant::now() < deadline,
            "pod {namespace}/{name} was not created within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits up to `timeout` until `name` is gone from `api` (the emulator's garbage collector and
/// namespace controller act a moment after the change that leaves an object behind).
pub async fn wait_deleted<K>(api: &Api<K>, name: &str, timeout: Duration)
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let deadline = Instant::now() + timeout;
    while api
        .get_opt(name)
        .await
        .expect("reading an object")
        .is_some()
    {
        assert!(
            Instant::now() < deadline,
            "{name} still exists after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Seeds pod `name` in `namespace` on `node`, running, with one emptyDir volume per entry of
/// `volumes`, all opted in to backup (`backup.velero.io/backup-volumes`), owned by a Deployment
/// `name` and its ReplicaSet (created here); returns the pod as stored (its uid names its fake
/// kubelet directory).
pub async fn seed_pod_with_empty_dirs(
    client: &Client,
    namespace: &str,
    name: &str,
    node: &str,
    volumes: &[String],
) -> Pod {
    ensure_namespace(client, namespace).await;
    let replica_set = seed_controllers(client, namespace, name, json!({"app": name}), 1).await;
    let _: Pod = create(
        client,
        Some(namespace),
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": name, "namespace": namespace,
                "labels": {"app": name},
                "annotations": {"backup.velero.io/backup-volumes": volumes.join(",")},
                "ownerReferences": [owner_reference(&replica_set)],
            },
            "spec": {
                "nodeName": node,
                "containers": [{
                    "name": "app", "image": "busybox",
                    "volumeMounts": volumes
                        .iter()
                        .map(|volume| json!({"name": volume, "mountPath": format!("/{volume}")}))
                        .collect::<Vec<_>>(),
                }],
                "volumes": volumes
                    .iter()
                    .map(|volume| json!({"name": volume, "emptyDir": {}}))
                    .collect::<Vec<_>>(),
            },
        }),
    )
    .await;
    mark_pod_running(client, namespace, name, node).await
}
