//! Whole-application restore, end to end: namespace `shop` (a Deployment with two pods, a
//! StatefulSet with its claim, a Job, a Service, a ConfigMap, a Secret, a ServiceAccount with
//! its generated token Secret and its RoleBinding, a custom resource of a CRD) is backed up
//! once; then the namespace is deleted with everything in it and restored, restored again into
//! `shop-copy` beside it, and restored over an edited ConfigMap with each existing-resource
//! policy. The emulator collects garbage as a cluster does, so a pod whose ownerReferences name
//! a controller that was not restored (or an old uid) is deleted and fails the test; it refuses
//! a Job that keeps its old generated selector, as the API server does. A restic-era Velero
//! bucket's Deployment comes back as a Deployment.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    time::Duration,
};

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, ReplicaSet, StatefulSet},
        batch::v1::Job,
        core::v1::{
            ConfigMap, Namespace, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Service,
            ServiceAccount,
        },
        rbac::v1::RoleBinding,
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client,
    api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams},
};
use serde_json::json;
use stowage_e2e::{
    api::{backup_to_end, wait_restore},
    binary,
    kube::{
        create, ensure_namespace, mark_init_container_running, mark_pod_running, owner_reference,
        seed_controllers, wait_deleted, wait_for_pod,
    },
    kubelet::{Entry, manifest, write_sample_tree},
    stack::{Stack, StackOptions},
    velero_fixture::{self, FixtureLocation, VeleroEra},
};
use stowage_proto::v1::{
    BackupPhase, BackupSpec, CreateRestoreRequest, GetRestoreLogsRequest, LabelSelectorRequirement,
    ResourceOutcome, Restore, RestorePhase, RestoreSpec, RestoredResource,
};

const NODE: &str = "node-a";
const BACKUP: &str = "shop";
const HASH: &str = stowage_e2e::kube::POD_TEMPLATE_HASH;
const WEB_PODS: [&str; 2] = ["web-5d8f7b9c4d-aaaaa", "web-5d8f7b9c4d-bbbbb"];
const DB_POD: &str = "db-0";
const DB_CLAIM: &str = "data-db-0";
const HELPER: &str = "restore-wait";
const WAIT: Duration = Duration::from_secs(60);
const JOB: &str = "migrate";
/// The token Secret the tokens controller generated for ServiceAccount `app`.
const GENERATED_TOKEN: &str = "app-token-x7k2p";
/// What the PV controller, provisioner and scheduler wrote on the bound claim.
const BINDING_ANNOTATIONS: [&str; 5] = [
    "pv.kubernetes.io/bind-completed",
    "pv.kubernetes.io/bound-by-controller",
    "volume.kubernetes.io/storage-provisioner",
    "volume.beta.kubernetes.io/storage-provisioner",
    "volume.kubernetes.io/selected-node",
];

fn widgets() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("example.com", "v1", "Widget"),
        "widgets",
    )
}

/// Every namespaced object of the application: (Velero's resource name, API, object name).
fn application() -> Vec<(&'static str, ApiResource, String)> {
    vec![
        (
            "deployments.apps",
            ApiResource::erase::<Deployment>(&()),
            "web".into(),
        ),
        (
            "replicasets.apps",
            ApiResource::erase::<ReplicaSet>(&()),
            format!("web-{HASH}"),
        ),
        (
            "statefulsets.apps",
            ApiResource::erase::<StatefulSet>(&()),
            "db".into(),
        ),
        ("jobs.batch", ApiResource::erase::<Job>(&()), JOB.into()),
        ("services", ApiResource::erase::<Service>(&()), "web".into()),
        (
            "configmaps",
            ApiResource::erase::<ConfigMap>(&()),
            "settings".into(),
        ),
        ("secrets", ApiResource::erase::<Secret>(&()), "token".into()),
        (
            "serviceaccounts",
            ApiResource::erase::<ServiceAccount>(&()),
            "app".into(),
        ),
        (
            "rolebindings.rbac.authorization.k8s.io",
            ApiResource::erase::<RoleBinding>(&()),
            "app".into(),
        ),
        ("widgets.example.com", widgets(), "blue".into()),
        (
            "persistentvolumeclaims",
            ApiResource::erase::<PersistentVolumeClaim>(&()),
            DB_CLAIM.into(),
        ),
        ("pods", ApiResource::erase::<Pod>(&()), WEB_PODS[0].into()),
        ("pods", ApiResource::erase::<Pod>(&()), WEB_PODS[1].into()),
        ("pods", ApiResource::erase::<Pod>(&()), DB_POD.into()),
    ]
}

/// `namespace`'s application objects as they are now: (resource, name) -> object.
async fn objects(kube: &Client, namespace: &str) -> BTreeMap<(String, String), DynamicObject> {
    let mut found = BTreeMap::new();
    for (resource, api, name) in application() {
        let api: Api<DynamicObject> = Api::namespaced_with(kube.clone(), namespace, &api);
        let object = api
            .get_opt(&name)
            .await
            .expect("reading an object")
            .unwrap_or_else(|| panic!("{resource} {namespace}/{name} does not exist"));
        found.insert((resource.to_string(), name), object);
    }
    found
}

fn uid(object: &DynamicObject) -> String {
    object
        .metadata
        .uid
        .clone()
        .expect("a stored object has a uid")
}

/// The uids `object`'s ownerReferences name.
fn owner_uids(object: &DynamicObject) -> Vec<String> {
    object
        .metadata
        .owner_references
        .iter()
        .flatten()
        .map(|owner| owner.uid.clone())
        .collect()
}

/// The application's data as the backup saw it: (pod, volume) -> files.
type Volumes = BTreeMap<(String, String), BTreeMap<String, Entry>>;

fn pod_spec(
    labels: serde_json::Value,
    volumes: serde_json::Value,
    annotation: &str,
) -> serde_json::Value {
    json!({
        "metadata": {"labels": labels,
            "annotations": {"backup.velero.io/backup-volumes": annotation}},
        "spec": {
            "serviceAccountName": "app",
            "containers": [{"name": "app", "image": "busybox",
                "volumeMounts": [{"name": annotation, "mountPath": "/data"}]}],
            "volumes": volumes,
        },
    })
}

/// Creates pod `name` from `template`, owned by `owner`, running on the node.
async fn create_pod(
    kube: &Client,
    name: &str,
    template: &serde_json::Value,
    owner: serde_json::Value,
) -> Pod {
    let mut pod = template.clone();
    pod["apiVersion"] = json!("v1");
    pod["kind"] = json!("Pod");
    pod["metadata"]["name"] = json!(name);
    pod["metadata"]["namespace"] = json!("shop");
    pod["metadata"]["ownerReferences"] = json!([owner]);
    pod["spec"]["nodeName"] = json!(NODE);
    let _: Pod = create(kube, Some("shop"), pod).await;
    mark_pod_running(kube, "shop", name, NODE).await
}

/// Seeds `shop` and writes its volumes' files; returns them.
async fn seed_shop(stack: &Stack, kube: &Client) -> Volumes {
    let kubelet = &stack.kubelets[NODE];
    let mut volumes = Volumes::new();
    ensure_namespace(kube, "shop").await;
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}}}],
        },
    });
    let _: CustomResourceDefinition = create(kube, None, crd).await;

    // The Deployment, its ReplicaSet and two pods, each with an annotated emptyDir.
    let web_labels = json!({"app": "web", "pod-template-hash": HASH});
    let replica_set = seed_controllers(kube, "shop", "web", web_labels.clone(), 2).await;
    let web_template = pod_spec(
        web_labels,
        json!([{"name": "cache", "emptyDir": {}}]),
        "cache",
    );
    for (i, name) in WEB_PODS.iter().enumerate() {
        let pod = create_pod(kube, name, &web_template, owner_reference(&replica_set)).await;
        let dir = kubelet
            .pod(pod.metadata.uid.as_deref().unwrap())
            .empty_dir("cache");
        write_sample_tree(&dir, &format!("web-{i}"));
        volumes.insert((name.to_string(), "cache".into()), manifest(&dir, false));
    }

    // The StatefulSet, its claim (bound to a PV) and its pod with the annotated claim volume.
    let db_labels = json!({"app": "db"});
    let statefulset: StatefulSet = create(
        kube,
        Some("shop"),
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "db", "namespace": "shop"},
            "spec": {"serviceName": "db", "replicas": 1,
                "selector": {"matchLabels": db_labels},
                "template": pod_spec(db_labels.clone(), json!([]), "data"),
                "volumeClaimTemplates": [{"metadata": {"name": "data"},
                    "spec": {"accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": "1Gi"}}}}]}}),
    )
    .await;
    let pv_name = "pv-shop-data-db-0";
    let claim: PersistentVolumeClaim = create(
        kube,
        Some("shop"),
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": DB_CLAIM, "namespace": "shop", "labels": db_labels,
                "annotations": BINDING_ANNOTATIONS.iter()
                    .map(|key| (key.to_string(), json!(if key.ends_with("selected-node") { NODE } else { "yes" })))
                    .collect::<serde_json::Map<_, _>>()},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "standard",
                "resources": {"requests": {"storage": "1Gi"}}, "volumeName": pv_name},
            "status": {"phase": "Bound"}}),
    )
    .await;
    let _: PersistentVolume = create(
        kube,
        None,
        json!({"apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": pv_name},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                "storageClassName": "standard", "hostPath": {"path": format!("/mnt/{pv_name}")},
                "claimRef": {"kind": "PersistentVolumeClaim", "namespace": "shop",
                    "name": DB_CLAIM, "uid": claim.metadata.uid}},
            "status": {"phase": "Bound"}}),
    )
    .await;
    let db_template = pod_spec(
        db_labels,
        json!([{"name": "data", "persistentVolumeClaim": {"claimName": DB_CLAIM}}]),
        "data",
    );
    let pod = create_pod(kube, DB_POD, &db_template, owner_reference(&statefulset)).await;
    let dir = kubelet
        .pod(pod.metadata.uid.as_deref().unwrap())
        .pv("kubernetes.io~local-volume", pv_name);
    write_sample_tree(&dir, "db");
    volumes.insert((DB_POD.to_string(), "data".into()), manifest(&dir, false));

    // The rest of the application.
    let _: Service = create(
        kube,
        Some("shop"),
        json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}),
    )
    .await;
    let _: ConfigMap = create(
        kube,
        Some("shop"),
        json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "settings", "namespace": "shop"}, "data": {"color": "blue"}}),
    )
    .await;
    let _: Secret = create(
        kube,
        Some("shop"),
        json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "token", "namespace": "shop"}, "data": {"token": "czNjcjN0"}}),
    )
    .await;
    // The account as a cluster before 1.24 left it: with the token Secret its controller made.
    let account: ServiceAccount = create(
        kube,
        Some("shop"),
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": "app", "namespace": "shop"},
            "secrets": [{"name": GENERATED_TOKEN}]}),
    )
    .await;
    let _: Secret = create(
        kube,
        Some("shop"),
        json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
            "metadata": {"name": GENERATED_TOKEN, "namespace": "shop", "annotations": {
                "kubernetes.io/service-account.name": "app",
                "kubernetes.io/service-account.uid": account.metadata.uid}},
            "data": {"token": "dG9rZW4=", "ca.crt": "Y2E="}}),
    )
    .await;
    // A Job: the API server generates its selector and template labels from its uid.
    let job: Job = create(
        kube,
        Some("shop"),
        json!({"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": JOB, "namespace": "shop"},
            "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "migrate", "image": "busybox"}]}}}}),
    )
    .await;
    assert_eq!(
        job_uid_labels(&serde_json::to_value(&job).unwrap()),
        [(); 3].map(|()| job.metadata.uid.clone().unwrap()),
        "the emulator generates a Job's selector: {job:?}"
    );
    // As the API server does, it refuses a Job sent with another Job's generated selector: what
    // a restore that kept them verbatim would send.
    let mut verbatim = serde_json::to_value(&job).unwrap();
    verbatim["metadata"] = json!({"name": "migrate-again", "namespace": "shop"});
    verbatim.as_object_mut().unwrap().remove("status");
    let verbatim: DynamicObject = serde_json::from_value(verbatim).unwrap();
    let refused = Api::<DynamicObject>::namespaced_with(
        kube.clone(),
        "shop",
        &ApiResource::erase::<Job>(&()),
    )
    .create(&Default::default(), &verbatim)
    .await
    .unwrap_err();
    assert!(
        matches!(&refused, kube::Error::Api(status)
            if status.code == 422 && status.message.contains("`selector` not auto-generated")),
        "{refused:?}"
    );
    let _: RoleBinding = create(
        kube,
        Some("shop"),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "app", "namespace": "shop"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "ServiceAccount", "name": "app", "namespace": "shop"}]}),
    )
    .await;
    let widget: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "example.com/v1", "kind": "Widget",
        "metadata": {"name": "blue", "namespace": "shop"}, "spec": {"size": 3}}))
    .unwrap();
    Api::<DynamicObject>::namespaced_with(kube.clone(), "shop", &widgets())
        .create(&Default::default(), &widget)
        .await
        .expect("creating the custom resource");
    volumes
}

/// A Job's generated uid labels: `controller-uid` and `batch.kubernetes.io/controller-uid` of
/// its template, the selector's `batch.kubernetes.io/controller-uid`.
fn job_uid_labels(job: &serde_json::Value) -> [String; 3] {
    let text = |pointer: &str| {
        job.pointer(pointer)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    [
        text("/spec/template/metadata/labels/controller-uid"),
        text("/spec/template/metadata/labels/batch.kubernetes.io~1controller-uid"),
        text("/spec/selector/matchLabels/batch.kubernetes.io~1controller-uid"),
    ]
}

/// Seeds the unrelated namespace `other`; returns its objects' (name, uid, resourceVersion).
async fn seed_other(kube: &Client) -> Vec<(String, Option<String>, Option<String>)> {
    ensure_namespace(kube, "other").await;
    let _: ConfigMap = create(
        kube,
        Some("other"),
        json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "settings", "namespace": "other"}, "data": {"color": "green"}}),
    )
    .await;
    let _: ReplicaSet = seed_controllers(kube, "other", "web", json!({"app": "web"}), 1).await;
    other_state(kube).await
}

async fn other_state(kube: &Client) -> Vec<(String, Option<String>, Option<String>)> {
    let mut state = Vec::new();
    let settings = Api::<ConfigMap>::namespaced(kube.clone(), "other")
        .get("settings")
        .await
        .expect("other/settings");
    let web = Api::<Deployment>::namespaced(kube.clone(), "other")
        .get("web")
        .await
        .expect("other/web");
    for meta in [settings.metadata, web.metadata] {
        state.push((
            meta.name.unwrap_or_default(),
            meta.uid,
            meta.resource_version,
        ));
    }
    state
}

/// The restore's outcome for one object.
fn outcome<'a>(
    restore: &'a Restore,
    resource: &str,
    namespace: &str,
    name: &str,
) -> &'a RestoredResource {
    let status = restore.status.as_ref().expect("a restore status");
    status
        .resources
        .iter()
        .find(|r| r.resource == resource && r.namespace == namespace && r.name == name)
        .unwrap_or_else(|| {
            panic!(
                "no result for {resource} {namespace}/{name} in {:#?}",
                status.resources
            )
        })
}

/// Runs restore `name` of the backup into `target` (by `mapping`), plays scheduler,
/// provisioner and kubelet for the pods it recreates, and checks what every whole restore
/// must: completed, every object back with a new uid, the workloads owning their pods,
/// every volume identical, the helper first and released.
async fn restore_application(
    stack: &Stack,
    name: &str,
    target: &str,
    mapping: HashMap<String, String>,
    volumes: &Volumes,
    old_uids: &BTreeMap<(String, String), String>,
) -> Restore {
    let kube = stack.kube_client().await;
    let mut client = stack.client().await;
    let restore = client
        .create_restore(CreateRestoreRequest {
            name: name.into(),
            spec: Some(RestoreSpec {
                backup_name: BACKUP.into(),
                namespace_mapping: mapping,
                ..Default::default()
            }),
        })
        .await
        .expect("CreateRestore")
        .into_inner();

    let kubelet = &stack.kubelets[NODE];
    let mut restored_dirs: BTreeMap<(String, String), PathBuf> = BTreeMap::new();
    for pod_name in WEB_PODS.iter().chain([&DB_POD]) {
        let pod = wait_for_pod(&kube, target, pod_name, WAIT).await;
        let spec = pod.spec.clone().unwrap();
        assert!(spec.node_name.is_none(), "{pod:?}");
        // The helper runs first, so the app container starts only once it exits.
        let init = spec.init_containers.clone().unwrap_or_default();
        assert_eq!(
            init.first().map(|c| c.name.as_str()),
            Some(HELPER),
            "{pod:?}"
        );
        assert_eq!(
            init[0].args.clone().unwrap_or_default(),
            vec![restore.uid.clone()]
        );
        assert_eq!(spec.containers[0].name, "app", "{pod:?}");
        let pod_dir = kubelet.pod(pod.metadata.uid.as_deref().unwrap());
        if *pod_name == DB_POD {
            // Play the provisioner for the recreated claim when it comes back unbound.
            let claims: Api<PersistentVolumeClaim> = Api::namespaced(kube.clone(), target);
            let claim = claims.get(DB_CLAIM).await.expect("the claim is restored");
            let bound = claim.spec.as_ref().and_then(|s| s.volume_name.clone());
            let pv_name = match bound {
                Some(pv_name) => pv_name,
                None => {
                    let pv_name = format!("pv-{target}-{DB_CLAIM}-restored");
                    claims
                        .patch(
                            DB_CLAIM,
                            &PatchParams::default(),
                            &Patch::Merge(json!({"spec": {"volumeName": pv_name}})),
                        )
                        .await
                        .unwrap();
                    pv_name
                }
            };
            restored_dirs.insert(
                (pod_name.to_string(), "data".into()),
                pod_dir.pv("kubernetes.io~local-volume", &pv_name),
            );
        } else {
            restored_dirs.insert(
                (pod_name.to_string(), "cache".into()),
                pod_dir.empty_dir("cache"),
            );
        }
        mark_init_container_running(&kube, target, pod_name, NODE, HELPER).await;
    }

    let restore = wait_restore(&mut client, &restore.name).await;
    let status = restore.status.clone().unwrap();
    assert_eq!(
        status.phase,
        RestorePhase::Completed as i32,
        "{status:#?}\n{}",
        stack.orchestrator.process.log()
    );
    assert_eq!(status.volumes_completed, 3, "{status:#?}");
    let failed: Vec<_> = status
        .resources
        .iter()
        .filter(|r| r.outcome == ResourceOutcome::Failed as i32)
        .collect();
    assert!(failed.is_empty(), "objects failed: {failed:#?}");
    let mut created = status.pods_created.clone();
    created.sort();
    let mut expected = [WEB_PODS[0], WEB_PODS[1], DB_POD].map(|pod| format!("{target}/{pod}"));
    expected.sort();
    assert_eq!(created, expected);

    // Every object is back, as a new object, and each result says so.
    let restored = objects(&kube, target).await;
    for ((resource, object_name), object) in &restored {
        assert_ne!(
            Some(&uid(object)),
            old_uids.get(&(resource.clone(), object_name.clone())),
            "{resource} {target}/{object_name} has its old uid"
        );
        assert_eq!(
            outcome(&restore, resource, target, object_name).outcome,
            ResourceOutcome::Created as i32,
            "{resource} {target}/{object_name}"
        );
    }
    // What the API server generates or a controller wrote for the old objects is not carried
    // over: the Job's selector is its own new uid's, the account names no generated token,
    // whose Secret the restore leaves to the tokens controller, and the claim binds anew.
    let job = &restored[&("jobs.batch".to_string(), JOB.to_string())];
    assert_eq!(
        job_uid_labels(&serde_json::to_value(job).unwrap()),
        [uid(job), uid(job), uid(job)],
        "{job:?}"
    );
    let account = &restored[&("serviceaccounts".to_string(), "app".to_string())];
    assert!(
        account.data.get("secrets").is_none(),
        "the account still names its old token: {account:?}"
    );
    let token = outcome(&restore, "secrets", target, GENERATED_TOKEN);
    assert_eq!(token.outcome, ResourceOutcome::Skipped as i32, "{token:?}");
    assert!(
        Api::<Secret>::namespaced(kube.clone(), target)
            .get_opt(GENERATED_TOKEN)
            .await
            .unwrap()
            .is_none()
    );
    let claim = &restored[&("persistentvolumeclaims".to_string(), DB_CLAIM.to_string())];
    let annotations = claim.metadata.annotations.clone().unwrap_or_default();
    for key in BINDING_ANNOTATIONS {
        assert!(!annotations.contains_key(key), "{key} kept: {claim:?}");
    }

    // The workloads own their pods: the references name the restored controllers.
    let uid_of =
        |resource: &str, name: &str| uid(&restored[&(resource.to_string(), name.to_string())]);
    let replica_set = restored[&("replicasets.apps".to_string(), format!("web-{HASH}"))].clone();
    assert_eq!(
        owner_uids(&replica_set),
        [uid_of("deployments.apps", "web")]
    );
    for pod in WEB_PODS {
        assert_eq!(
            owner_uids(&restored[&("pods".to_string(), pod.to_string())]),
            [uid(&replica_set)],
            "{pod}"
        );
    }
    assert_eq!(
        owner_uids(&restored[&("pods".to_string(), DB_POD.to_string())]),
        [uid_of("statefulsets.apps", "db")]
    );

    // Every volume's files are what the backup saw; the helper finds each pod's done files and
    // releases it.
    for ((pod, volume), dir) in &restored_dirs {
        assert_eq!(
            &manifest(dir, false),
            &volumes[&(pod.clone(), volume.clone())],
            "{target}/{pod} {volume} differs from the backup"
        );
        let helper = std::process::Command::new(binary("stowage-restore-helper"))
            .arg(&restore.uid)
            .arg(dir)
            .args(["--timeout", "10", "--poll-millis", "50"])
            .output()
            .unwrap();
        assert!(helper.status.success(), "{target}/{pod}: {helper:?}");
    }
    restore
}

#[tokio::test(flavor = "multi_thread")]
async fn a_namespace_comes_back_whole_its_workloads_owning_their_pods() {
    let stack = Stack::start(StackOptions::default()).await;
    let kube = stack.kube_client().await;
    let mut client = stack.client().await;
    let volumes = seed_shop(&stack, &kube).await;
    let other = seed_other(&kube).await;
    let before = objects(&kube, "shop").await;
    let old_uids: BTreeMap<_, _> = before
        .iter()
        .map(|(key, object)| (key.clone(), uid(object)))
        .collect();

    let backup = backup_to_end(
        &mut client,
        BACKUP,
        BackupSpec {
            included_namespaces: vec!["shop".into()],
            ..Default::default()
        },
    )
    .await;
    let status = backup.status.clone().unwrap();
    assert_eq!(
        status.phase,
        BackupPhase::Completed as i32,
        "{status:#?}\n{}",
        stack.orchestrator.process.log()
    );
    assert_eq!(status.volumes_completed, 3, "{status:#?}");

    // Disaster: the namespace goes with everything in it, its PV and its data too.
    let namespaces: Api<Namespace> = Api::all(kube.clone());
    namespaces
        .delete("shop", &DeleteParams::default())
        .await
        .unwrap();
    wait_deleted(&namespaces, "shop", WAIT).await;
    let pvs: Api<PersistentVolume> = Api::all(kube.clone());
    pvs.delete("pv-shop-data-db-0", &DeleteParams::default())
        .await
        .unwrap();
    for pod in WEB_PODS.iter().chain([&DB_POD]) {
        let uid = uid(&before[&("pods".to_string(), pod.to_string())]);
        std::fs::remove_dir_all(stack.kubelets[NODE].pods_root().join(uid)).unwrap();
    }

    let restore = restore_application(
        &stack,
        "shop-back",
        "shop",
        HashMap::new(),
        &volumes,
        &old_uids,
    )
    .await;
    let back = objects(&kube, "shop").await;
    // The Service got an address of its own.
    let service: Service = serde_json::from_value(
        serde_json::to_value(&back[&("services".to_string(), "web".to_string())]).unwrap(),
    )
    .unwrap();
    let shop_ip = service.spec.unwrap().cluster_ip.unwrap();
    assert!(!shop_ip.is_empty() && shop_ip != "None");
    assert_eq!(
        outcome(&restore, "namespaces", "", "shop").outcome,
        ResourceOutcome::Created as i32
    );

    // The same backup into `shop-copy` beside it: its own objects, owned by its own controllers.
    let shop_uids: BTreeMap<_, _> = back
        .iter()
        .map(|(key, object)| (key.clone(), uid(object)))
        .collect();
    let mapping = HashMap::from([("shop".to_string(), "shop-copy".to_string())]);
    restore_application(
        &stack,
        "shop-copy",
        "shop-copy",
        mapping,
        &volumes,
        &shop_uids,
    )
    .await;
    let copy = objects(&kube, "shop-copy").await;
    let copy_service: Service = serde_json::from_value(
        serde_json::to_value(&copy[&("services".to_string(), "web".to_string())]).unwrap(),
    )
    .unwrap();
    assert_ne!(copy_service.spec.unwrap().cluster_ip.unwrap(), shop_ip);
    let still = objects(&kube, "shop").await;
    for (key, object) in &still {
        assert_eq!(
            Some(&uid(object)),
            shop_uids.get(key),
            "{key:?} in shop changed"
        );
    }

    // An edited ConfigMap: `none` leaves it and says so, `update` restores the backup's content.
    let settings: Api<ConfigMap> = Api::namespaced(kube.clone(), "shop");
    settings
        .patch(
            "settings",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"color": "red"}})),
        )
        .await
        .unwrap();
    for (policy, expected_color, expected_outcome) in [
        ("none", "red", ResourceOutcome::SkippedExists),
        ("update", "blue", ResourceOutcome::Updated),
    ] {
        let name = format!("settings-{policy}");
        client
            .create_restore(CreateRestoreRequest {
                name: name.clone(),
                spec: Some(RestoreSpec {
                    backup_name: BACKUP.into(),
                    include_resources: vec!["configmaps".into()],
                    existing_resource_policy: policy.into(),
                    ..Default::default()
                }),
            })
            .await
            .expect("CreateRestore");
        let restore = wait_restore(&mut client, &name).await;
        let status = restore.status.clone().unwrap();
        assert_eq!(status.phase, RestorePhase::Completed as i32, "{status:#?}");
        let result = outcome(&restore, "configmaps", "shop", "settings");
        assert_eq!(
            result.outcome, expected_outcome as i32,
            "{policy}: {result:?}"
        );
        let now = settings.get("settings").await.unwrap();
        assert_eq!(now.data.unwrap()["color"], expected_color, "{policy}");
        // The filter kept everything else out, and says so.
        assert!(
            status.resources.iter().all(|r| r.resource == "configmaps"
                || r.outcome == ResourceOutcome::Skipped as i32),
            "{policy}: {:#?}",
            status.resources
        );
    }

    // A set-based selector reaches the server whole: the claim labelled app=db is selected (and
    // exists), the StatefulSet without labels is left out, saying by which selector.
    client
        .create_restore(CreateRestoreRequest {
            name: "db-claims".into(),
            spec: Some(RestoreSpec {
                backup_name: BACKUP.into(),
                include_resources: vec![
                    "persistentvolumeclaims".into(),
                    "statefulsets.apps".into(),
                ],
                label_selector_expressions: vec![LabelSelectorRequirement {
                    key: "app".into(),
                    operator: "In".into(),
                    values: vec!["db".into(), "cache".into()],
                }],
                ..Default::default()
            }),
        })
        .await
        .expect("CreateRestore");
    let restore = wait_restore(&mut client, "db-claims").await;
    assert_eq!(
        outcome(&restore, "persistentvolumeclaims", "shop", DB_CLAIM).outcome,
        ResourceOutcome::SkippedExists as i32,
        "{restore:#?}"
    );
    let statefulset = outcome(&restore, "statefulsets.apps", "shop", "db");
    assert_eq!(statefulset.outcome, ResourceOutcome::Skipped as i32);
    assert!(
        statefulset.message.contains("app in (cache,db)"),
        "{statefulset:?}"
    );
    let refused = client
        .create_restore(CreateRestoreRequest {
            name: "bad-selector".into(),
            spec: Some(RestoreSpec {
                backup_name: BACKUP.into(),
                label_selector_expressions: vec![LabelSelectorRequirement {
                    key: "app".into(),
                    operator: "Above".into(),
                    values: vec!["1".into()],
                }],
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("Above"), "{refused:?}");

    // Nothing of the unrelated namespace was touched, and the collector deleted nothing the
    // restores made.
    assert_eq!(other_state(&kube).await, other);
    let log = stack.kube.process.log();
    assert!(
        !log.lines()
            .any(|line| line.starts_with("gc: deleting") && line.contains(" shop")),
        "the garbage collector deleted restored objects:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restic_era_velero_backups_deployment_comes_back_as_a_deployment() {
    let mut stack = Stack::start(StackOptions {
        // The bucket is read once, by the restarted orchestrator below, never half-written.
        orchestrator_args: vec!["--housekeeping-interval-seconds".into(), "3600".into()],
        ..StackOptions::default()
    })
    .await;
    let work = tempfile::tempdir().unwrap();
    let location = FixtureLocation::Local {
        root: stack.storage.clone(),
    };
    velero_fixture::generate(
        &location,
        work.path(),
        "velero-app",
        VeleroEra::FsBackupRestic,
    )
    .await
    .expect("writing the Velero fixture");
    stack.restart_orchestrator().await;
    let kube = stack.kube_client().await;
    let mut client = stack.client().await;

    // The controllers only: no pod, so no volume to play kubelet for.
    client
        .create_restore(CreateRestoreRequest {
            name: "velero-app".into(),
            spec: Some(RestoreSpec {
                backup_name: "velero-app".into(),
                included_namespaces: vec!["foo".into()],
                include_resources: vec!["deployments.apps".into(), "replicasets.apps".into()],
                ..Default::default()
            }),
        })
        .await
        .expect("CreateRestore of the Velero backup");
    let restore = wait_restore(&mut client, "velero-app").await;
    let status = restore.status.clone().unwrap();
    assert_eq!(
        status.phase,
        RestorePhase::Completed as i32,
        "{status:#?}\n{}",
        stack.orchestrator.process.log()
    );
    let deployment = Api::<Deployment>::namespaced(kube.clone(), "foo")
        .get("sample")
        .await
        .expect("the Velero backup's Deployment is restored");
    assert_eq!(deployment.spec.replicas, Some(1));
    assert_eq!(
        outcome(&restore, "deployments.apps", "foo", "sample").outcome,
        ResourceOutcome::Created as i32
    );
    let replica_set = Api::<ReplicaSet>::namespaced(kube.clone(), "foo")
        .get(&format!("sample-{HASH}"))
        .await
        .expect("the Velero backup's ReplicaSet is restored");
    let owners: Vec<_> = replica_set
        .metadata
        .owner_references
        .iter()
        .flatten()
        .map(|owner| owner.uid.clone())
        .collect();
    assert_eq!(owners, [deployment.metadata.uid.clone().unwrap()]);
    // The filter left the pods (and their volumes) out.
    assert!(status.pods_created.is_empty(), "{status:#?}");
    assert!(
        status
            .resources
            .iter()
            .filter(|r| r.resource == "pods")
            .all(|r| r.outcome == ResourceOutcome::Skipped as i32),
        "{:#?}",
        status.resources
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restore_into_a_namespace_still_terminating_waits_until_it_is_gone() {
    let stack = Stack::start(StackOptions::default()).await;
    let kube = stack.kube_client().await;
    let mut client = stack.client().await;
    ensure_namespace(&kube, "cart").await;
    let _: ConfigMap = create(
        &kube,
        Some("cart"),
        json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "settings", "namespace": "cart"}, "data": {"color": "blue"}}),
    )
    .await;
    let backup = backup_to_end(
        &mut client,
        "cart",
        BackupSpec {
            included_namespaces: vec!["cart".into()],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        backup.status.clone().unwrap().phase,
        BackupPhase::Completed as i32,
        "{backup:#?}"
    );

    // The namespace is deleted, and an object's finalizer keeps it Terminating.
    let _: ConfigMap = create(
        &kube,
        Some("cart"),
        json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "held", "namespace": "cart", "finalizers": ["example.com/hold"]}}),
    )
    .await;
    let namespaces: Api<Namespace> = Api::all(kube.clone());
    namespaces
        .delete("cart", &DeleteParams::default())
        .await
        .unwrap();
    client
        .create_restore(CreateRestoreRequest {
            name: "cart-back".into(),
            spec: Some(RestoreSpec {
                backup_name: "cart".into(),
                ..Default::default()
            }),
        })
        .await
        .expect("CreateRestore");

    // The restore says it waits (a restore that did not would have ended: the namespace
    // `already exists`, its ConfigMap refused with 403 Forbidden).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let lines = client
            .get_restore_logs(GetRestoreLogsRequest {
                name: "cart-back".into(),
            })
            .await
            .expect("GetRestoreLogs")
            .into_inner()
            .lines;
        if lines.iter().any(|line| {
            line.message
                .contains("namespace cart is being deleted (Terminating)")
        }) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the restore does not wait for the namespace: {lines:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The deletion ends once the finalizer is removed; then the restore goes on.
    Api::<ConfigMap>::namespaced(kube.clone(), "cart")
        .patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    let restore = wait_restore(&mut client, "cart-back").await;
    let status = restore.status.clone().unwrap();
    assert_eq!(status.phase, RestorePhase::Completed as i32, "{status:#?}");
    assert_eq!(
        outcome(&restore, "namespaces", "", "cart").outcome,
        ResourceOutcome::Created as i32,
        "{status:#?}"
    );
    assert_eq!(
        outcome(&restore, "configmaps", "cart", "settings").outcome,
        ResourceOutcome::Created as i32,
        "{status:#?}"
    );
    let namespace = namespaces.get("cart").await.unwrap();
    assert!(
        namespace.metadata.deletion_timestamp.is_none(),
        "{namespace:?}"
    );
    let settings = Api::<ConfigMap>::namespaced(kube.clone(), "cart")
        .get("settings")
        .await
        .unwrap();
    assert_eq!(settings.data.unwrap()["color"], "blue");
}
