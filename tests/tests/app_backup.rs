//! Whole-application backup, the backup side: the backup's `<name>.tar.gz` in the bucket holds
//! every object of the included namespace under Velero's paths (format 1.1.0, with the
//! preferred-version copies), the cluster-scoped objects they need, and nothing Velero leaves
//! out; large namespaces are read page by page.

use std::{collections::BTreeMap, io::Read as _, sync::Arc};

use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{ConfigMap, Event, Secret, Service, ServiceAccount},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api,
    api::{ApiResource, DynamicObject, GroupVersionKind, PostParams},
};
use object_store::{
    ObjectStore, ObjectStoreExt, aws::AmazonS3Builder, path::Path as StorePath, prefix::PrefixStore,
};
use serde_json::{Value, json};
use stowage_e2e::{
    api::backup_to_end,
    kube::{create, ensure_namespace, seed_example},
    kubelet::write_sample_tree,
    s3::{ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY},
    stack::{Stack, StackOptions},
};
use stowage_proto::v1::{BackupPhase, BackupSpec, CreateBackupRequest};

/// Objects per list request the orchestrator is told to use: smaller than the namespace's
/// ConfigMaps, so that list is read in several pages.
const PAGE_SIZE: usize = 4;
const BULK_CONFIG_MAPS: usize = 9;

fn bucket(stack: &Stack) -> Arc<dyn ObjectStore> {
    let s3 = stack.s3.as_ref().expect("the stack runs with S3");
    let store = AmazonS3Builder::new()
        .with_endpoint(&s3.endpoint)
        .with_bucket_name(&s3.bucket)
        .with_region(REGION)
        .with_access_key_id(ACCESS_KEY_ID)
        .with_secret_access_key(SECRET_ACCESS_KEY)
        .with_allow_http(true)
        .with_virtual_hosted_style_request(false)
        .build()
        .expect("an S3 client for the test bucket");
    // The stack's storage URL is `s3://<bucket>/cluster-1`.
    Arc::new(PrefixStore::new(store, "cluster-1"))
}

async fn create_crd(client: &kube::Client, plural: &str, kind: &str) {
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.example.com")},
        "spec": {
            "group": "example.com",
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": kind.to_lowercase(), "kind": kind},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object",
                    "properties": {"spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}},
            }],
        },
    });
    let _: CustomResourceDefinition = create(client, None, crd).await;
}

/// The tarball's entries: path → content.
fn entries(tar_gz: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let tar = stowage_velero_format::codec::gunzip(tar_gz, "app.tar.gz").expect("a gzip stream");
    let mut archive = tar::Archive::new(tar.as_slice());
    let mut entries = BTreeMap::new();
    for entry in archive.entries().expect("a tar archive") {
        let mut entry = entry.expect("a tar entry");
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let mut content = Vec::new();
        entry.read_to_end(&mut content).unwrap();
        entries.insert(path, content);
    }
    entries
}

#[tokio::test(flavor = "multi_thread")]
async fn a_namespace_backup_holds_its_application_in_velero_format() {
    let stack = Stack::start(StackOptions {
        s3: true,
        orchestrator_args: vec!["--list-page-size".to_string(), PAGE_SIZE.to_string()],
        ..Default::default()
    })
    .await;
    let kube = stack.kube_client().await;
    let mut client = stack.client().await;

    // A bad resource entry is refused before anything runs, naming it.
    let refused = client
        .create_backup(CreateBackupRequest {
            name: "refused".into(),
            spec: Some(BackupSpec {
                included_namespaces: vec!["shop".into()],
                include_resources: vec!["configmaps".into(), "Deployments.apps".into()],
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("`Deployments.apps`"),
        "{refused:?}"
    );

    create_crd(&kube, "widgets", "Widget").await;
    create_crd(&kube, "gadgets", "Gadget").await;

    // `shop`: a pod with a backed-up emptyDir (and its claim and volume), and the application
    // around it.
    let example = seed_example(&kube, "shop", "node-a", Some("emptydir-volume")).await;
    let pod_dir = stack.kubelets["node-a"].pod(&example.pod_uid());
    write_sample_tree(&pod_dir.empty_dir("emptydir-volume"), "emptydir");
    let _: Deployment = create(
        &kube,
        Some("shop"),
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": "nginx"}]}}}}),
    )
    .await;
    let _: Service = create(
        &kube,
        Some("shop"),
        json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}),
    )
    .await;
    let _: ConfigMap = create(
        &kube,
        Some("shop"),
        json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "settings", "namespace": "shop"}, "data": {"color": "blue"}}),
    )
    .await;
    let _: Secret = create(
        &kube,
        Some("shop"),
        json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "token", "namespace": "shop"}, "data": {"token": "czNjcjN0"}}),
    )
    .await;
    let _: ServiceAccount = create(
        &kube,
        Some("shop"),
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": "app", "namespace": "shop"}}),
    )
    .await;
    let widgets = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("example.com", "v1", "Widget"),
        "widgets",
    );
    let widget: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "example.com/v1", "kind": "Widget",
        "metadata": {"name": "blue", "namespace": "shop"}, "spec": {"size": 3}}))
    .unwrap();
    Api::<DynamicObject>::namespaced_with(kube.clone(), "shop", &widgets)
        .create(&PostParams::default(), &widget)
        .await
        .expect("creating the custom resource");
    // What Velero leaves out: events, and objects labelled out of backups.
    let _: Event = create(
        &kube,
        Some("shop"),
        json!({"apiVersion": "v1", "kind": "Event",
            "metadata": {"name": "web.17a", "namespace": "shop"},
            "involvedObject": {"kind": "Deployment", "name": "web", "namespace": "shop"},
            "reason": "ScalingReplicaSet", "message": "Scaled up"}),
    )
    .await;
    let _: ConfigMap = create(
        &kube,
        Some("shop"),
        json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "scratch", "namespace": "shop",
                "labels": {"velero.io/exclude-from-backup": "true"}}}),
    )
    .await;
    // More ConfigMaps than one page holds.
    for i in 0..BULK_CONFIG_MAPS {
        let _: ConfigMap = create(
            &kube,
            Some("shop"),
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": format!("bulk-{i}"), "namespace": "shop"},
                "data": {"i": i.to_string()}}),
        )
        .await;
    }
    // An unrelated namespace.
    ensure_namespace(&kube, "other").await;
    let _: ConfigMap = create(
        &kube,
        Some("other"),
        json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "elsewhere", "namespace": "other"}}),
    )
    .await;

    let backup = backup_to_end(
        &mut client,
        "app",
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
    assert_eq!(status.volumes_completed, 1, "{status:#?}");

    let store = bucket(&stack);
    let tarball = store
        .get(&StorePath::from("backups/app/app.tar.gz"))
        .await
        .expect("the backup's tarball in the bucket")
        .bytes()
        .await
        .unwrap();
    let entries = entries(&tarball);
    let names: Vec<&String> = entries.keys().collect();
    assert_eq!(entries["metadata/version"], b"1.1.0\n");

    let pv = example.pv_name();
    let expected_namespaced = [
        ("deployments.apps", "web"),
        ("services", "web"),
        ("configmaps", "settings"),
        ("secrets", "token"),
        ("serviceaccounts", "app"),
        ("widgets.example.com", "blue"),
        ("pods", "sample"),
        ("persistentvolumeclaims", "sample-pvc"),
    ];
    for (resource, name) in expected_namespaced {
        for path in [
            format!("resources/{resource}/namespaces/shop/{name}.json"),
            format!("resources/{resource}/v1-preferredversion/namespaces/shop/{name}.json"),
        ] {
            assert!(
                entries.contains_key(&path),
                "{path} missing from {names:#?}"
            );
        }
    }
    for (resource, name) in [
        ("namespaces", "shop"),
        ("persistentvolumes", pv.as_str()),
        (
            "customresourcedefinitions.apiextensions.k8s.io",
            "widgets.example.com",
        ),
    ] {
        for path in [
            format!("resources/{resource}/cluster/{name}.json"),
            format!("resources/{resource}/v1-preferredversion/cluster/{name}.json"),
        ] {
            assert!(
                entries.contains_key(&path),
                "{path} missing from {names:#?}"
            );
        }
    }
    for i in 0..BULK_CONFIG_MAPS {
        let path = format!("resources/configmaps/namespaces/shop/bulk-{i}.json");
        assert!(
            entries.contains_key(&path),
            "{path} missing from {names:#?}"
        );
    }
    // Nothing Velero leaves out, nothing of the other namespace, no unused CRD, none of
    // stowage's own records.
    for path in entries.keys() {
        for absent in [
            "events",
            "scratch",
            "/other/",
            "namespaces/cluster/other",
            "gadgets",
            "velero.io",
            "/stowage/",
            "namespaces/cluster/stowage",
        ] {
            assert!(!path.contains(absent), "{path} is in the tarball");
        }
    }

    // The objects are the API server's, whole.
    let deployment: Value =
        serde_json::from_slice(&entries["resources/deployments.apps/namespaces/shop/web.json"])
            .unwrap();
    assert_eq!(deployment["apiVersion"], "apps/v1");
    assert_eq!(deployment["kind"], "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert!(deployment["metadata"]["uid"].is_string(), "{deployment}");
    let widget: Value =
        serde_json::from_slice(&entries["resources/widgets.example.com/namespaces/shop/blue.json"])
            .unwrap();
    assert_eq!(widget["spec"]["size"], 3);

    // stowage's reader opens the same tarball.
    let read = stowage_velero_format::store::read_resources(store.as_ref(), "app")
        .await
        .unwrap()
        .expect("the resources");
    assert_eq!(read.format_version.as_deref(), Some("1.1.0"));
    assert_eq!(
        read.get("configmaps", Some("shop"), "settings").unwrap()["data"]["color"],
        "blue"
    );

    // The ConfigMaps were read page by page: settings, scratch (listed, then left out) and the
    // bulk ones.
    let logs = stowage_velero_format::store::read_logs(store.as_ref(), "app")
        .await
        .unwrap()
        .expect("the backup's logs");
    let listed = BULK_CONFIG_MAPS + 2;
    let pages = listed.div_ceil(PAGE_SIZE);
    let expected = format!(
        "listed {listed} configmaps in namespace shop in {pages} pages of at most {PAGE_SIZE}"
    );
    assert!(
        logs.contains(&expected),
        "no `{expected}` in the logs:\n{logs}"
    );
}
