//! The Kubernetes API emulator behaves as a kube client expects: uids, increasing
//! resourceVersions, label selectors, NotFound/AlreadyExists/Conflict reasons, replace (PUT),
//! watches, discovery that `kubectl` understands, and the rules a whole-application restore
//! meets: garbage collection, namespace deletion, Services' cluster IPs, CRDs established, and
//! what a create or an update may carry.

use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::{
    apps::v1::{Deployment, ReplicaSet},
    core::v1::{ConfigMap, Namespace, PersistentVolume, Pod, Service},
};
use kube::{
    Api,
    api::{DeleteParams, ListParams, PostParams, WatchEvent, WatchParams},
};
use serde_json::json;
use stowage_e2e::kube::{
    EXEC_DIR_ANNOTATION, KubeEmulator, create, ensure_namespace, owner_reference, seed_controllers,
    wait_deleted,
};

/// An emulator started with `args` in a directory of its own (returned, as it must outlive
/// the emulator), a client of it, and `namespace` created when one is named.
async fn started(
    args: &[&str],
    namespace: Option<&str>,
) -> (tempfile::TempDir, KubeEmulator, kube::Client) {
    let dir = tempfile::tempdir().unwrap();
    let emulator = KubeEmulator::start_with_args(dir.path(), args).await;
    let client = emulator.client().await;
    if let Some(namespace) = namespace {
        ensure_namespace(&client, namespace).await;
    }
    (dir, emulator, client)
}

fn config_map(name: &str, labels: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "foo", "labels": labels},
        "data": {"key": name},
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn emulator_answers_like_an_api_server() {
    let (_dir, emulator, client) = started(&[], Some("foo")).await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "foo");

    let a: ConfigMap = create(&client, Some("foo"), config_map("a", json!({"app": "x"}))).await;
    let b: ConfigMap = create(&client, Some("foo"), config_map("b", json!({"app": "y"}))).await;
    let (uid_a, uid_b) = (
        a.metadata.uid.clone().unwrap(),
        b.metadata.uid.clone().unwrap(),
    );
    assert_ne!(uid_a, uid_b);
    let version = |cm: &ConfigMap| -> u64 {
        cm.metadata
            .resource_version
            .as_deref()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(version(&b) > version(&a));
    assert!(a.metadata.creation_timestamp.is_some());

    // Label selectors filter lists.
    let selected = api
        .list(&ListParams::default().labels("app=x"))
        .await
        .unwrap();
    let names: Vec<_> = selected
        .items
        .iter()
        .map(|cm| cm.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, vec!["a".to_string()]);
    let selected = api
        .list(&ListParams::default().labels("app in (x,y),app!=y"))
        .await
        .unwrap();
    assert_eq!(selected.items.len(), 1);

    // Machine-readable reasons: get_opt sees absence, create sees a conflict.
    assert!(api.get_opt("missing").await.unwrap().is_none());
    let duplicate: ConfigMap = serde_json::from_value(config_map("a", json!({}))).unwrap();
    let error = api
        .create(&PostParams::default(), &duplicate)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, kube::Error::Api(status) if status.code == 409 && status.reason == "AlreadyExists"),
        "{error:?}"
    );

    // Replace keeps identity, bumps the version, and refuses a stale version.
    let mut changed = api.get("a").await.unwrap();
    changed.data = Some([("key".to_string(), "new".to_string())].into());
    let replaced = api
        .replace("a", &PostParams::default(), &changed)
        .await
        .unwrap();
    assert_eq!(replaced.metadata.uid.as_deref(), Some(uid_a.as_str()));
    assert!(version(&replaced) > version(&a));
    assert_eq!(replaced.data.unwrap()["key"], "new");
    let stale = api
        .replace("a", &PostParams::default(), &changed)
        .await
        .unwrap_err();
    assert!(
        matches!(&stale, kube::Error::Api(status) if status.code == 409 && status.reason == "Conflict"),
        "{stale:?}"
    );

    // Watches see existing objects, then changes, filtered by label.
    let mut events = api
        .watch(&WatchParams::default().labels("app=y"), "0")
        .await
        .unwrap()
        .boxed();
    let first = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(first, WatchEvent::Added(cm) if cm.metadata.name.as_deref() == Some("b")));
    let _: ConfigMap = create(&client, Some("foo"), config_map("c", json!({"app": "x"}))).await;
    let _: ConfigMap = create(&client, Some("foo"), config_map("d", json!({"app": "y"}))).await;
    let next = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(&next, WatchEvent::Added(cm) if cm.metadata.name.as_deref() == Some("d")),
        "{next:?}"
    );

    // Discovery is complete enough for kubectl.
    let kubectl = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&emulator.kubeconfig)
        .args([
            "get",
            "configmaps",
            "-n",
            "foo",
            "-l",
            "app=x",
            "-o",
            "name",
        ])
        .output()
        .expect("running kubectl");
    assert!(kubectl.status.success(), "{kubectl:?}");
    let listed = String::from_utf8_lossy(&kubectl.stdout);
    assert_eq!(
        listed.lines().collect::<Vec<_>>(),
        vec!["configmap/a", "configmap/c"]
    );
}

/// Sends `body` as `method path` and returns the HTTP status and the JSON answer, whatever the
/// status: the refusals' bodies are what these tests check.
async fn send(
    client: &kube::Client,
    method: &str,
    path: &str,
    content_type: &str,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    use http_body_util::BodyExt;
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", content_type)
        .body(kube::client::Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap();
    let response = client.send(request).await.expect("the emulator answers");
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("reading the answer")
        .to_bytes();
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|error| panic!("{error}: {}", String::from_utf8_lossy(&bytes)));
    (status, json)
}

const RESTORES: &str = "/apis/velero.io/v1/namespaces/stowage/podvolumerestores";

fn volume_restore(name: &str, spec: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "velero.io/v1", "kind": "PodVolumeRestore",
        "metadata": {"name": name, "namespace": "stowage"},
        "spec": spec,
        "status": {"phase": "New", "startTimestamp": null},
    })
}

/// The causes of a 422 as (field, reason, message) triples.
fn causes(answer: &serde_json::Value) -> Vec<(String, String, String)> {
    answer["details"]["causes"]
        .as_array()
        .unwrap_or_else(|| panic!("no causes in {answer}"))
        .iter()
        .map(|cause| {
            (
                cause["field"].as_str().unwrap().to_string(),
                cause["reason"].as_str().unwrap().to_string(),
                cause["message"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn emulator_refuses_custom_resources_their_crd_schema_rejects() {
    let (_dir, _emulator, client) = started(&[], Some("stowage")).await;
    let merge = "application/merge-patch+json";
    let plain = "application/json";

    // The shipped PodVolumeRestore CRD requires spec.repoIdentifier: the API server's very body.
    let (code, answer) = send(
        &client,
        "POST",
        RESTORES,
        plain,
        &volume_restore(
            "r1",
            json!({"pod": {"namespace": "foo", "name": "sample"}, "volume": "data", "snapshotID": "abc"}),
        ),
    )
    .await;
    assert_eq!(code, 422, "{answer}");
    assert_eq!(
        answer,
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "PodVolumeRestore.velero.io \"r1\" is invalid: spec.repoIdentifier: Required value",
            "reason": "Invalid",
            "details": {
                "name": "r1", "group": "velero.io", "kind": "PodVolumeRestore",
                "causes": [{"reason": "FieldValueRequired", "message": "Required value", "field": "spec.repoIdentifier"}],
            },
            "code": 422,
        })
    );

    // A wrong type, named with the type it has.
    let (code, answer) = send(
        &client,
        "POST",
        RESTORES,
        plain,
        &volume_restore(
            "r1",
            json!({"pod": {"name": "sample"}, "volume": 7, "repoIdentifier": "s3:x", "snapshotID": "abc"}),
        ),
    )
    .await;
    assert_eq!(code, 422, "{answer}");
    assert_eq!(
        causes(&answer),
        vec![(
            "spec.volume".to_string(),
            "FieldValueTypeInvalid".to_string(),
            "Invalid value: \"integer\": spec.volume in body must be of type string: \"integer\""
                .to_string()
        )]
    );
    assert_eq!(
        answer["message"],
        "PodVolumeRestore.velero.io \"r1\" is invalid: spec.volume: Invalid value: \"integer\": spec.volume in body must be of type string: \"integer\""
    );

    // A valid object passes; a field the schema does not name is pruned, not refused; a null
    // where the schema allows one stays.
    let (code, stored) = send(
        &client,
        "POST",
        RESTORES,
        plain,
        &volume_restore(
            "r1",
            json!({"pod": {"name": "sample", "color": "red"}, "volume": "data",
                   "repoIdentifier": "s3:x", "snapshotID": "abc", "unknown": 1}),
        ),
    )
    .await;
    assert!(code < 300, "{stored}");
    assert_eq!(
        stored["spec"],
        json!({"pod": {"name": "sample"}, "volume": "data", "repoIdentifier": "s3:x", "snapshotID": "abc"})
    );
    assert_eq!(
        stored["status"],
        json!({"phase": "New", "startTimestamp": null})
    );

    // A patch is judged by the object it makes: removing a required field is refused, and the
    // object stays as it was.
    let path = format!("{RESTORES}/r1");
    let (code, answer) = send(
        &client,
        "PATCH",
        &path,
        merge,
        &json!({"spec": {"repoIdentifier": null}}),
    )
    .await;
    assert_eq!(code, 422, "{answer}");
    assert_eq!(
        causes(&answer),
        vec![(
            "spec.repoIdentifier".to_string(),
            "FieldValueRequired".to_string(),
            "Required value".to_string()
        )]
    );
    let (code, answer) = send(
        &client,
        "PATCH",
        &path,
        merge,
        &json!({"status": {"progress": {"totalBytes": "many"}}}),
    )
    .await;
    assert_eq!(code, 422, "{answer}");
    assert_eq!(causes(&answer)[0].0, "status.progress.totalBytes");
    let (code, patched) = send(
        &client,
        "PATCH",
        &path,
        merge,
        &json!({"status": {"phase": "Completed", "extra": true}}),
    )
    .await;
    assert_eq!(code, 200, "{patched}");
    assert_eq!(patched["spec"]["repoIdentifier"], "s3:x");
    assert_eq!(
        patched["status"],
        json!({"phase": "Completed", "startTimestamp": null})
    );

    // So is a replace (PUT).
    let mut replacement = patched.clone();
    replacement["spec"]
        .as_object_mut()
        .unwrap()
        .remove("snapshotID");
    let (code, answer) = send(&client, "PUT", &path, plain, &replacement).await;
    assert_eq!(code, 422, "{answer}");
    assert_eq!(
        answer["message"],
        "PodVolumeRestore.velero.io \"r1\" is invalid: spec.snapshotID: Required value"
    );

    // A CRD created through the API is served and enforced: enums, nested arrays of objects,
    // and x-kubernetes-preserve-unknown-fields keeping what pruning would drop.
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com", "scope": "Namespaced",
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget", "listKind": "WidgetList"},
            "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {"spec": {
                    "type": "object", "required": ["size"],
                    "properties": {
                        "size": {"type": "integer"},
                        "color": {"type": "string", "enum": ["red", "blue"]},
                        "parts": {"type": "array", "items": {
                            "type": "object", "required": ["name"],
                            "properties": {"name": {"type": "string"}},
                        }},
                        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                    },
                }},
            }}}],
        },
    });
    let (code, answer) = send(
        &client,
        "POST",
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        plain,
        &crd,
    )
    .await;
    assert!(code < 300, "{answer}");
    let widgets = "/apis/example.com/v1/namespaces/stowage/widgets";
    let widget = |spec: serde_json::Value| {
        json!({"apiVersion": "example.com/v1", "kind": "Widget",
               "metadata": {"name": "w", "namespace": "stowage"}, "spec": spec})
    };
    let (code, answer) = send(
        &client,
        "POST",
        widgets,
        plain,
        &widget(json!({"size": 1, "color": "green", "parts": [{"name": "a"}, {}]})),
    )
    .await;
    assert_eq!(code, 422, "{answer}");
    assert_eq!(
        causes(&answer),
        vec![
            (
                "spec.color".to_string(),
                "FieldValueNotSupported".to_string(),
                "Unsupported value: \"green\": supported values: \"red\", \"blue\"".to_string()
            ),
            (
                "spec.parts[1].name".to_string(),
                "FieldValueRequired".to_string(),
                "Required value".to_string()
            ),
        ]
    );
    assert_eq!(
        answer["message"],
        "Widget.example.com \"w\" is invalid: [spec.color: Unsupported value: \"green\": supported values: \"red\", \"blue\", spec.parts[1].name: Required value]"
    );
    let (code, stored) = send(
        &client,
        "POST",
        widgets,
        plain,
        &widget(json!({"size": 1, "color": "red", "dropped": 1,
                       "free": {"anything": {"kept": [1, 2]}}})),
    )
    .await;
    assert!(code < 300, "{stored}");
    assert_eq!(
        stored["spec"],
        json!({"size": 1, "color": "red", "free": {"anything": {"kept": [1, 2]}}})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn emulator_refuses_core_objects_the_api_server_rejects() {
    let (_dir, _emulator, client) = started(&[], Some("foo")).await;
    let plain = "application/json";
    let pods = "/api/v1/namespaces/foo/pods";
    let claims = "/api/v1/namespaces/foo/persistentvolumeclaims";

    // A pod without containers, a container without an image, a name no DNS accepts.
    let (code, answer) = send(
        &client,
        "POST",
        pods,
        plain,
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "empty"}, "spec": {}}),
    )
    .await;
    assert_eq!(code, 422, "{answer}");
    assert_eq!(
        answer["message"],
        "Pod \"empty\" is invalid: spec.containers: Required value"
    );
    assert!(
        answer["details"].get("group").is_none(),
        "the core group has no name: {answer}"
    );
    let (code, answer) = send(
        &client,
        "POST",
        pods,
        plain,
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "Sample_1"},
                "spec": {"containers": [{"name": "app"}]}}),
    )
    .await;
    assert_eq!(code, 422, "{answer}");
    let fields: Vec<_> = causes(&answer).into_iter().map(|c| (c.0, c.1)).collect();
    assert_eq!(
        fields,
        vec![
            ("metadata.name".to_string(), "FieldValueInvalid".to_string()),
            (
                "spec.containers[0].image".to_string(),
                "FieldValueRequired".to_string()
            ),
        ]
    );
    assert!(
        causes(&answer)[0]
            .2
            .starts_with("Invalid value: \"Sample_1\": a lowercase RFC 1123 subdomain"),
        "{answer}"
    );

    // A claim without access modes or a size; an unknown volume mode.
    let (code, answer) = send(
        &client,
        "POST",
        claims,
        plain,
        &json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"}}),
    )
    .await;
    assert_eq!(code, 422, "{answer}");
    assert_eq!(
        answer["message"],
        "PersistentVolumeClaim \"data\" is invalid: [spec.accessModes: Required value: at least 1 access mode is required, spec.resources[storage]: Required value]"
    );
    let claim = |mode: &str| {
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
               "spec": {"accessModes": ["ReadWriteOnce"], "volumeMode": mode,
                        "resources": {"requests": {"storage": "1Gi"}}}})
    };
    let (code, answer) = send(&client, "POST", claims, plain, &claim("Raw")).await;
    assert_eq!(code, 422, "{answer}");
    assert_eq!(
        causes(&answer),
        vec![(
            "spec.volumeMode".to_string(),
            "FieldValueNotSupported".to_string(),
            "Unsupported value: \"Raw\": supported values: \"Block\", \"Filesystem\"".to_string()
        )]
    );

    // Valid ones pass, and a patch that breaks one is refused.
    let (code, answer) = send(&client, "POST", claims, plain, &claim("Block")).await;
    assert!(code < 300, "{answer}");
    let (code, answer) = send(
        &client,
        "POST",
        pods,
        plain,
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sample"},
                "spec": {"containers": [{"name": "app", "image": "busybox"}]}}),
    )
    .await;
    assert!(code < 300, "{answer}");
    let (code, answer) = send(
        &client,
        "PATCH",
        &format!("{pods}/sample"),
        "application/merge-patch+json",
        &json!({"spec": {"containers": [{"name": "app"}]}}),
    )
    .await;
    assert_eq!(code, 422, "{answer}");
    assert_eq!(
        answer["message"],
        "Pod \"sample\" is invalid: spec.containers[0].image: Required value"
    );
}

/// A CRD of `example.com` serving `v1beta1` and `v1` (the API server prefers `v1`).
fn two_version_crd() -> serde_json::Value {
    let version = |name: &str, storage: bool| {
        json!({"name": name, "served": true, "storage": storage,
            "schema": {"openAPIV3Schema": {"type": "object",
                "x-kubernetes-preserve-unknown-fields": true}}})
    };
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "gizmos.example.com"},
        "spec": {
            "group": "example.com", "scope": "Namespaced",
            "names": {"plural": "gizmos", "singular": "gizmo", "kind": "Gizmo", "shortNames": ["gz"]},
            "versions": [version("v1beta1", false), version("v1", true)],
        },
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn discovery_announces_every_served_resource_at_its_preferred_version() {
    let (_dir, _emulator, client) = started(&[], None).await;

    // Typed clients read `/api` (APIVersions needs serverAddressByClientCIDRs).
    let core = client.list_core_api_versions().await.expect("/api");
    assert_eq!(core.versions, ["v1"]);
    let core_resources = client.list_core_api_resources("v1").await.expect("/api/v1");
    let namespaced = |name: &str| {
        core_resources
            .resources
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("{name} not in /api/v1"))
            .namespaced
    };
    for name in [
        "pods",
        "configmaps",
        "secrets",
        "services",
        "serviceaccounts",
        "events",
        "persistentvolumeclaims",
    ] {
        assert!(namespaced(name), "{name}");
    }
    for name in ["namespaces", "persistentvolumes", "nodes"] {
        assert!(!namespaced(name), "{name}");
    }
    let pods = core_resources
        .resources
        .iter()
        .find(|r| r.name == "pods")
        .unwrap();
    assert_eq!(pods.short_names.as_deref(), Some(&["po".to_string()][..]));
    assert!(pods.verbs.contains(&"list".to_string()));

    let _: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition =
        create(&client, None, two_version_crd()).await;
    let groups = client.list_api_groups().await.expect("/apis");
    let group = |name: &str| {
        groups
            .groups
            .iter()
            .find(|g| g.name == name)
            .unwrap_or_else(|| panic!("group {name} not in /apis"))
            .clone()
    };
    for name in [
        "apps",
        "events.k8s.io",
        "rbac.authorization.k8s.io",
        "storage.k8s.io",
        "apiextensions.k8s.io",
        "velero.io",
    ] {
        assert_eq!(
            group(name).preferred_version.unwrap().version,
            "v1",
            "{name}"
        );
    }
    // A CRD's group: every served version, the highest-priority one first and preferred.
    let example = group("example.com");
    assert_eq!(
        example.preferred_version.unwrap().group_version,
        "example.com/v1"
    );
    let versions: Vec<_> = example
        .versions
        .iter()
        .map(|v| v.version.as_str())
        .collect();
    assert_eq!(versions, ["v1", "v1beta1"]);
    let served = client
        .list_api_group_resources("example.com/v1")
        .await
        .expect("/apis/example.com/v1");
    let gizmos = served
        .resources
        .iter()
        .find(|r| r.name == "gizmos")
        .expect("gizmos served");
    assert_eq!(gizmos.kind, "Gizmo");
    assert!(gizmos.namespaced);
    assert_eq!(gizmos.short_names.as_deref(), Some(&["gz".to_string()][..]));
    let apps = client.list_api_group_resources("apps/v1").await.unwrap();
    let names: Vec<_> = apps.resources.iter().map(|r| r.name.as_str()).collect();
    for name in ["deployments", "statefulsets", "replicasets", "daemonsets"] {
        assert!(names.contains(&name), "{name} not in {names:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn lists_are_paginated_with_limit_and_continue_like_the_api_server() {
    let (_dir, _emulator, client) = started(&[], Some("foo")).await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "foo");
    // Created out of order: the API server lists by key (namespace, name).
    for name in ["e", "b", "d", "a", "c"] {
        let labels = if name < "c" {
            json!({"half": "first"})
        } else {
            json!({})
        };
        let _: ConfigMap = create(&client, Some("foo"), config_map(name, labels)).await;
    }

    let first = api.list(&ListParams::default().limit(2)).await.unwrap();
    let names = |list: &kube::api::ObjectList<ConfigMap>| -> Vec<String> {
        list.items
            .iter()
            .map(|cm| cm.metadata.name.clone().unwrap())
            .collect()
    };
    assert_eq!(names(&first), ["a", "b"]);
    assert_eq!(first.metadata.remaining_item_count, Some(3));
    let token = first.metadata.continue_.clone().expect("a continue token");
    assert!(!token.contains("foo/"), "the token is opaque: {token}");
    let second = api
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(names(&second), ["c", "d"]);
    assert_eq!(second.metadata.remaining_item_count, Some(1));
    // Every page of one list reports the list's resourceVersion.
    assert_eq!(
        second.metadata.resource_version,
        first.metadata.resource_version
    );
    let last = api
        .list(
            &ListParams::default()
                .limit(2)
                .continue_token(second.metadata.continue_.as_deref().unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(names(&last), ["e"]);
    assert!(
        last.metadata
            .continue_
            .as_deref()
            .unwrap_or_default()
            .is_empty(),
        "{:?}",
        last.metadata
    );
    assert_eq!(last.metadata.remaining_item_count, None);

    // No limit: everything at once; a selector: no remainingItemCount, as the API server does.
    assert_eq!(
        names(&api.list(&ListParams::default()).await.unwrap()),
        ["a", "b", "c", "d", "e"]
    );
    let selected = api
        .list(&ListParams::default().labels("half=first").limit(1))
        .await
        .unwrap();
    assert_eq!(names(&selected), ["a"]);
    assert!(selected.metadata.continue_.is_some());
    assert_eq!(selected.metadata.remaining_item_count, None);

    // A token that is not one is a bad request.
    let error = api
        .list(&ListParams::default().limit(2).continue_token("not-a-token"))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, kube::Error::Api(status) if status.code == 400 && status.reason == "BadRequest" && status.message.contains("continue")),
        "{error:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_continue_token_older_than_the_last_compaction_is_gone() {
    // Compacting before every continued list: each token has expired when it is used.
    let (_dir, _emulator, client) = started(&["--compaction-interval", "0"], Some("foo")).await;
    for name in ["a", "b", "c"] {
        let _: ConfigMap = create(&client, Some("foo"), config_map(name, json!({}))).await;
    }
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "foo");
    let first = api.list(&ListParams::default().limit(1)).await.unwrap();
    let token = first.metadata.continue_.clone().expect("a continue token");
    let error = api
        .list(&ListParams::default().limit(1).continue_token(&token))
        .await
        .unwrap_err();
    let kube::Error::Api(status) = &error else {
        panic!("{error:?}");
    };
    assert_eq!(
        (status.code, status.reason.as_str()),
        (410, "Expired"),
        "{status:?}"
    );
    assert!(
        status.message.contains("continue parameter is too old"),
        "{status:?}"
    );
    // Starting the list over works.
    let again = api.list(&ListParams::default().limit(3)).await.unwrap();
    assert_eq!(again.items.len(), 3);
}

/// What one exec returned: stdout, stderr and the status channel's Status.
struct Exec {
    stdout: String,
    stderr: String,
    status: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Status>,
}

async fn exec(
    pods: &Api<k8s_openapi::api::core::v1::Pod>,
    pod: &str,
    container: Option<&str>,
    command: &[&str],
) -> Result<Exec, kube::Error> {
    use tokio::io::AsyncReadExt;
    let mut params = kube::api::AttachParams::default().stdout(true).stderr(true);
    if let Some(container) = container {
        params = params.container(container);
    }
    let mut attached = pods.exec(pod, command.to_vec(), &params).await?;
    let (mut stdout, mut stderr) = (String::new(), String::new());
    let mut out = attached.stdout().expect("stdout requested");
    let mut err = attached.stderr().expect("stderr requested");
    let status = attached.take_status().expect("a status future");
    let (read_out, read_err) = futures::join!(
        out.read_to_string(&mut stdout),
        err.read_to_string(&mut stderr)
    );
    read_out.expect("reading stdout");
    read_err.expect("reading stderr");
    let status = status.await;
    attached
        .join()
        .await
        .expect("the exec session ends cleanly");
    Ok(Exec {
        stdout,
        stderr,
        status,
    })
}

/// pods/exec over WebSocket with kube's own client: stdout and stderr channels, the exit code
/// in the status channel's Status, the command run in the directory the pod's annotation
/// names, and the API server's refusals as Status bodies.
#[tokio::test(flavor = "multi_thread")]
async fn emulator_serves_pods_exec_over_websocket() {
    let (dir, _emulator, client) = started(&[], Some("foo")).await;
    let volume = dir.path().join("volume");
    std::fs::create_dir(&volume).unwrap();
    let _: k8s_openapi::api::core::v1::Pod = create(
        &client,
        Some("foo"),
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "db", "namespace": "foo",
                "annotations": {EXEC_DIR_ANNOTATION: volume.display().to_string()},
            },
            "spec": {"containers": [
                {"name": "postgres", "image": "postgres"},
                {"name": "metrics", "image": "exporter"},
            ]},
        }),
    )
    .await;
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), "foo");

    let failed = exec(
        &pods,
        "db",
        Some("postgres"),
        &[
            "/bin/sh",
            "-c",
            "echo dumped > dump.sql; echo to-stdout; echo to-stderr >&2; echo $CONTAINER_NAME; exit 3",
        ],
    )
    .await
    .unwrap();
    assert_eq!(failed.stdout, "to-stdout\npostgres\n");
    assert_eq!(failed.stderr, "to-stderr\n");
    let status = failed.status.expect("a status on channel 3");
    assert_eq!(status.status.as_deref(), Some("Failure"));
    assert_eq!(status.reason.as_deref(), Some("NonZeroExitCode"));
    let cause = &status.details.unwrap().causes.unwrap()[0];
    assert_eq!(
        (cause.reason.as_deref(), cause.message.as_deref()),
        (Some("ExitCode"), Some("3"))
    );
    assert_eq!(
        std::fs::read_to_string(volume.join("dump.sql")).unwrap(),
        "dumped\n",
        "the command ran in the annotated directory"
    );

    let succeeded = exec(&pods, "db", Some("metrics"), &["true"]).await.unwrap();
    assert_eq!(
        succeeded.status.and_then(|s| s.status).as_deref(),
        Some("Success")
    );

    // A missing executable fails as a container runtime's does: exit code 127.
    let missing = exec(&pods, "db", Some("postgres"), &["no-such-binary"])
        .await
        .unwrap();
    assert!(
        missing.stderr.contains("executable file not found"),
        "{}",
        missing.stderr
    );
    let cause = &missing.status.unwrap().details.unwrap().causes.unwrap()[0];
    assert_eq!(cause.message.as_deref(), Some("127"));

    let refusal = |result: Result<Exec, kube::Error>| match result {
        Err(kube::Error::Api(status)) => (status.code, status.reason, status.message),
        Err(other) => panic!("not an API refusal: {other:?}"),
        Ok(_) => panic!("the exec was not refused"),
    };
    assert_eq!(
        refusal(exec(&pods, "nope", Some("postgres"), &["true"]).await),
        (
            404,
            "NotFound".to_string(),
            "pods \"nope\" not found".to_string()
        )
    );
    assert_eq!(
        refusal(exec(&pods, "db", Some("redis"), &["true"]).await),
        (
            400,
            "BadRequest".to_string(),
            "container redis is not valid for pod db".to_string()
        )
    );
    let (code, _, message) = refusal(exec(&pods, "db", None, &["true"]).await);
    assert_eq!(code, 400);
    assert_eq!(
        message,
        "a container name must be specified for pod db, choose one of: [postgres metrics]"
    );

    // A pod without the annotation runs in its own directory under the exec root.
    let _: k8s_openapi::api::core::v1::Pod = create(
        &client,
        Some("foo"),
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": "foo"},
            "spec": {"containers": [{"name": "nginx", "image": "nginx"}]},
        }),
    )
    .await;
    let pwd = exec(&pods, "web", None, &["pwd"]).await.unwrap();
    assert!(
        pwd.stdout.trim_end().ends_with("/foo/web"),
        "{}",
        pwd.stdout
    );

    // A completed pod refuses exec.
    stowage_e2e::kube::patch_pod(
        &client,
        "foo",
        "web",
        json!({"status": {"phase": "Succeeded"}}),
    )
    .await;
    let (code, _, message) = refusal(exec(&pods, "web", None, &["true"]).await);
    assert_eq!(code, 400);
    assert!(message.contains("completed pod"), "{message}");
}

/// Seconds the emulator's garbage collector and namespace controller wait in these tests.
const GC_DELAY: &str = "0.2";
/// How long a test waits for the controllers before it fails (never a claim about speed).
const SETTLE: Duration = Duration::from_secs(30);

fn pod_owned_by(name: &str, owners: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "foo", "ownerReferences": owners},
        "spec": {"containers": [{"name": "app", "image": "busybox"}]},
    })
}

fn owner_uids(pod: &Pod) -> Vec<String> {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .map(|owner| owner.uid.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_garbage_collector_deletes_objects_whose_owners_are_gone() {
    let (_dir, emulator, client) = started(&["--gc-delay-seconds", GC_DELAY], Some("foo")).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "foo");
    let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "foo");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "foo");

    let replica_set = seed_controllers(&client, "foo", "web", json!({"app": "web"}), 1).await;
    let rs_uid = replica_set.metadata.uid.clone().unwrap();
    let owned: Pod = create(
        &client,
        Some("foo"),
        pod_owned_by("owned", json!([owner_reference(&replica_set)])),
    )
    .await;
    // The ReplicaSet's name with another uid: an owner that was deleted and recreated.
    let mut stale = owner_reference(&replica_set);
    stale["uid"] = json!("00000000-0000-0000-0000-000000000001");
    let _: Pod = create(
        &client,
        Some("foo"),
        pod_owned_by("stale-owner", json!([stale.clone()])),
    )
    .await;
    // A live owner and a gone one: only the gone one's reference goes.
    let _: Pod = create(
        &client,
        Some("foo"),
        pod_owned_by(
            "two-owners",
            json!([owner_reference(&replica_set), {
            "apiVersion": "v1", "kind": "ConfigMap", "name": "gone",
            "uid": "00000000-0000-0000-0000-000000000002"}]),
        ),
    )
    .await;
    // A kind the server does not serve cannot be resolved: the collector leaves it alone.
    let _: Pod = create(
        &client,
        Some("foo"),
        pod_owned_by(
            "unknown-kind",
            json!([{
            "apiVersion": "example.com/v1", "kind": "Thing", "name": "t",
            "uid": "00000000-0000-0000-0000-000000000003", "controller": true}]),
        ),
    )
    .await;

    wait_deleted(&pods, "stale-owner", SETTLE).await;
    let deadline = Instant::now() + SETTLE;
    loop {
        let two = pods
            .get("two-owners")
            .await
            .expect("a pod with a live owner stays");
        if owner_uids(&two) == [rs_uid.clone()] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dangling owner stayed: {two:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Checked before the pods above (created first): a pod whose owner exists stays.
    let kept = pods
        .get("owned")
        .await
        .expect("a pod whose owner exists stays");
    assert_eq!(kept.metadata.uid, owned.metadata.uid);
    assert!(pods.get_opt("unknown-kind").await.unwrap().is_some());

    // Deleting the owner (background, the default) deletes what it owned, and only that.
    replica_sets
        .delete(
            &replica_set.metadata.name.clone().unwrap(),
            &DeleteParams::default(),
        )
        .await
        .unwrap();
    wait_deleted(&pods, "owned", SETTLE).await;
    wait_deleted(&pods, "two-owners", SETTLE).await;
    assert!(
        deployments.get_opt("web").await.unwrap().is_some(),
        "the owner's owner stays"
    );

    // Orphan: the dependents lose the reference at once and stay.
    let orphaning = seed_controllers(&client, "foo", "orphaning", json!({"app": "o"}), 1).await;
    let _: Pod = create(
        &client,
        Some("foo"),
        pod_owned_by("orphan", json!([owner_reference(&orphaning)])),
    )
    .await;
    replica_sets
        .delete(
            &orphaning.metadata.name.clone().unwrap(),
            &DeleteParams::orphan(),
        )
        .await
        .unwrap();
    let orphan = pods.get("orphan").await.unwrap();
    assert!(owner_uids(&orphan).is_empty(), "{orphan:?}");

    // Foreground: the owner stays, marked, until everything below it is gone.
    let deep = seed_controllers(&client, "foo", "deep", json!({"app": "d"}), 1).await;
    let _: Pod = create(
        &client,
        Some("foo"),
        pod_owned_by("deep-pod", json!([owner_reference(&deep)])),
    )
    .await;
    deployments
        .delete("deep", &DeleteParams::foreground())
        .await
        .unwrap();
    let marked = deployments
        .get("deep")
        .await
        .expect("kept while its dependents go");
    assert!(marked.metadata.deletion_timestamp.is_some(), "{marked:?}");
    assert_eq!(
        marked.metadata.finalizers.as_deref(),
        Some(&["foregroundDeletion".to_string()][..])
    );
    wait_deleted(&deployments, "deep", SETTLE).await;
    assert!(
        replica_sets
            .get_opt(&deep.metadata.name.clone().unwrap())
            .await
            .unwrap()
            .is_none()
    );
    assert!(pods.get_opt("deep-pod").await.unwrap().is_none());
    assert!(pods.get_opt("orphan").await.unwrap().is_some());
    assert!(
        emulator
            .process
            .log()
            .contains("gc: deleting pods foo/stale-owner")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_namespace_deletes_everything_in_it() {
    let (_dir, emulator, client) = started(&["--gc-delay-seconds", GC_DELAY], None).await;

    // A namespace must exist before anything is created in it.
    let (code, answer) = send(
        &client,
        "POST",
        "/api/v1/namespaces/shop/configmaps",
        "application/json",
        &config_map("early", json!({})),
    )
    .await;
    assert_eq!(code, 404, "{answer}");
    assert_eq!(answer["reason"], "NotFound", "{answer}");
    assert_eq!(
        answer["message"], "namespaces \"shop\" not found",
        "{answer}"
    );

    ensure_namespace(&client, "shop").await;
    ensure_namespace(&client, "other").await;
    for namespace in ["shop", "other"] {
        let mut object = config_map("settings", json!({}));
        object["metadata"]["namespace"] = json!(namespace);
        let _: ConfigMap = create(&client, Some(namespace), object).await;
    }
    let _: ReplicaSet = seed_controllers(&client, "shop", "web", json!({"app": "web"}), 1).await;
    let pv: PersistentVolume = create(
        &client,
        None,
        json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pv-shop"},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                "hostPath": {"path": "/mnt/pv-shop"},
                "claimRef": {"namespace": "shop", "name": "data"}}}),
    )
    .await;

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let answer = namespaces
        .delete("shop", &DeleteParams::default())
        .await
        .unwrap();
    let terminating = answer.left().expect("the namespace, being terminated");
    assert_eq!(
        terminating.status.and_then(|s| s.phase).as_deref(),
        Some("Terminating")
    );
    assert!(terminating.metadata.deletion_timestamp.is_some());
    // While it terminates, nothing new goes in and a second delete is a conflict.
    let (code, answer) = send(
        &client,
        "POST",
        "/api/v1/namespaces/shop/configmaps",
        "application/json",
        &config_map("late", json!({})),
    )
    .await;
    assert_eq!(code, 403, "{answer}");
    assert_eq!(answer["reason"], "Forbidden", "{answer}");
    assert_eq!(
        answer["details"]["causes"][0]["reason"], "NamespaceTerminating",
        "{answer}"
    );
    let again = namespaces
        .delete("shop", &DeleteParams::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&again, kube::Error::Api(status) if status.code == 409),
        "{again:?}"
    );

    wait_deleted(&namespaces, "shop", SETTLE).await;
    for (resource, path) in [
        ("configmaps", "/api/v1/namespaces/shop/configmaps"),
        ("deployments", "/apis/apps/v1/namespaces/shop/deployments"),
        ("replicasets", "/apis/apps/v1/namespaces/shop/replicasets"),
    ] {
        let (code, answer) = send(&client, "GET", path, "application/json", &json!(null)).await;
        assert_eq!(code, 200, "{answer}");
        assert_eq!(
            answer["items"],
            json!([]),
            "{resource} left in shop: {answer}"
        );
    }
    // Other namespaces and cluster-scoped objects are not the namespace's.
    let others: Api<ConfigMap> = Api::namespaced(client.clone(), "other");
    assert!(others.get_opt("settings").await.unwrap().is_some());
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let kept = volumes
        .get("pv-shop")
        .await
        .expect("the PV outlives the namespace");
    assert_eq!(kept.metadata.uid, pv.metadata.uid);
    // The name is free again, and the new namespace is empty.
    ensure_namespace(&client, "shop").await;
    let shop: Api<ConfigMap> = Api::namespaced(client.clone(), "shop");
    assert!(shop.get_opt("settings").await.unwrap().is_none());
    assert!(
        emulator
            .process
            .log()
            .contains("namespace shop: deleted with its content")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn creates_and_updates_follow_the_api_servers_rules() {
    let (_dir, _emulator, client) = started(&[], Some("foo")).await;

    // Services get addresses from the service range, each its own; headless stays so.
    let service = |name: &str, cluster_ip: Option<&str>| {
        let mut spec = json!({"selector": {"app": name}, "ports": [{"port": 80}]});
        if let Some(ip) = cluster_ip {
            spec["clusterIP"] = json!(ip);
        }
        json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "foo"}, "spec": spec})
    };
    let a: Service = create(&client, Some("foo"), service("a", None)).await;
    let b: Service = create(&client, Some("foo"), service("b", None)).await;
    let headless: Service = create(&client, Some("foo"), service("headless", Some("None"))).await;
    let ip = |s: &Service| s.spec.as_ref().unwrap().cluster_ip.clone().unwrap();
    for allocated in [&a, &b] {
        let address: std::net::Ipv4Addr = ip(allocated).parse().unwrap();
        // 10.96.0.0/12: 10.96.0.0 to 10.111.255.255.
        let [first, second, ..] = address.octets();
        assert!(first == 10 && (96..112).contains(&second), "{allocated:?}");
        assert_eq!(
            allocated.spec.as_ref().unwrap().cluster_ips.as_deref(),
            Some(&[ip(allocated)][..])
        );
    }
    assert_ne!(ip(&a), ip(&b));
    assert_eq!(ip(&headless), "None");
    let (code, answer) = send(
        &client,
        "POST",
        "/api/v1/namespaces/foo/services",
        "application/json",
        &service("c", Some(&ip(&a))),
    )
    .await;
    assert_eq!(code, 422, "{answer}");
    let refused = causes(&answer);
    assert_eq!(refused[0].0, "spec.clusterIPs", "{answer}");
    assert!(
        refused[0].2.contains("provided IP is already allocated"),
        "{answer}"
    );
    // An update that sends no address keeps the allocated one; one that changes it is refused.
    let services: Api<Service> = Api::namespaced(client.clone(), "foo");
    let mut without = services.get("a").await.unwrap();
    without.spec.as_mut().unwrap().cluster_ip = None;
    without.spec.as_mut().unwrap().cluster_ips = None;
    let kept = services
        .replace("a", &PostParams::default(), &without)
        .await
        .unwrap();
    assert_eq!(ip(&kept), ip(&a));
    let mut moved = kept.clone();
    moved.spec.as_mut().unwrap().cluster_ip = Some(ip(&b));
    moved.spec.as_mut().unwrap().cluster_ips = Some(vec![ip(&b)]);
    let error = services
        .replace("a", &PostParams::default(), &moved)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, kube::Error::Api(s) if s.code == 422),
        "{error:?}"
    );

    // A create carrying a resourceVersion is refused by storage (500, no reason), one carrying
    // a uid gets the server's own.
    let mut versioned = config_map("versioned", json!({}));
    versioned["metadata"]["resourceVersion"] = json!("12");
    let (code, answer) = send(
        &client,
        "POST",
        "/api/v1/namespaces/foo/configmaps",
        "application/json",
        &versioned,
    )
    .await;
    assert_eq!(code, 500, "{answer}");
    assert_eq!(
        answer["message"], "resourceVersion should not be set on objects to be created",
        "{answer}"
    );
    assert!(answer.get("reason").is_none(), "{answer}");
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), "foo");
    assert!(configmaps.get_opt("versioned").await.unwrap().is_none());
    let mut with_uid = config_map("with-uid", json!({}));
    with_uid["metadata"]["uid"] = json!("11111111-1111-1111-1111-111111111111");
    let stored: ConfigMap = create(&client, Some("foo"), with_uid).await;
    let uid = stored.metadata.uid.unwrap();
    assert_ne!(uid, "11111111-1111-1111-1111-111111111111");

    // Built-in objects take an update without a resourceVersion (unconditional)...
    let mut unconditional = configmaps.get("with-uid").await.unwrap();
    unconditional.metadata.resource_version = None;
    unconditional.data = Some([("k".to_string(), "v".to_string())].into());
    let updated = configmaps
        .replace("with-uid", &PostParams::default(), &unconditional)
        .await
        .unwrap();
    assert_eq!(updated.metadata.uid.as_deref(), Some(uid.as_str()));
    // ...custom resources do not.
    let _: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition =
        create(&client, None, two_version_crd()).await;
    let gizmo = json!({"apiVersion": "example.com/v1", "kind": "Gizmo",
        "metadata": {"name": "g", "namespace": "foo"}, "spec": {"size": 1}});
    let (code, answer) = send(
        &client,
        "POST",
        "/apis/example.com/v1/namespaces/foo/gizmos",
        "application/json",
        &gizmo,
    )
    .await;
    assert_eq!(code, 201, "{answer}");
    let (code, answer) = send(
        &client,
        "PUT",
        "/apis/example.com/v1/namespaces/foo/gizmos/g",
        "application/json",
        &gizmo,
    )
    .await;
    assert_eq!(code, 422, "{answer}");
    assert_eq!(causes(&answer)[0].0, "metadata.resourceVersion", "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crd_serves_its_resource_once_created_and_established() {
    let (_dir, _emulator, client) = started(&[], Some("foo")).await;
    let gizmo = json!({"apiVersion": "example.com/v1", "kind": "Gizmo",
        "metadata": {"name": "g", "namespace": "foo"}, "spec": {"size": 1}});
    let path = "/apis/example.com/v1/namespaces/foo/gizmos";

    // Before its CRD, the resource does not exist: every verb is 404 and nothing is stored.
    for (method, path) in [
        ("POST", path.to_string()),
        ("GET", path.to_string()),
        ("GET", format!("{path}/g")),
    ] {
        let (code, answer) = send(&client, method, &path, "application/json", &gizmo).await;
        assert_eq!(code, 404, "{method} {path}: {answer}");
        assert_eq!(answer["reason"], "NotFound", "{answer}");
    }

    let crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition =
        create(&client, None, two_version_crd()).await;
    let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
    for wanted in ["Established", "NamesAccepted"] {
        assert!(
            conditions
                .iter()
                .any(|c| c.type_ == wanted && c.status == "True"),
            "{wanted} not True in {conditions:?}"
        );
    }
    let (code, answer) = send(&client, "POST", path, "application/json", &gizmo).await;
    assert_eq!(code, 201, "{answer}");
    let (code, answer) = send(&client, "GET", path, "application/json", &json!(null)).await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["items"][0]["metadata"]["name"], "g", "{answer}");
    assert_eq!(answer["kind"], "GizmoList", "{answer}");
    // The CRDs the emulator starts with are Established too.
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    let shipped = crds.get("podvolumebackups.velero.io").await.unwrap();
    assert!(
        shipped
            .status
            .unwrap()
            .conditions
            .unwrap()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
    );
}

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/stowage/leases";
const APPLY: &str = "application/apply-patch+yaml";

fn lease(name: &str, spec: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name}, "spec": spec,
    })
}

/// What leader election relies on: Leases are served, and the API server's concurrency rules
/// hold for them (create of an existing one, a stale resourceVersion, and server-side apply
/// conflicts over a field another manager owns are all 409; a PUT without a resourceVersion is
/// an unconditional update).
#[tokio::test(flavor = "multi_thread")]
async fn leases_are_served_with_the_api_servers_concurrency_rules() {
    let (_dir, _emulator, client) = started(&[], Some("stowage")).await;
    let json = "application/json";
    let one = format!("{LEASES}/one");

    let (code, created) = send(&client, "POST", LEASES, json, &lease("one", json!({}))).await;
    assert!(code < 300, "{created}");
    let first_version = created["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, answer) = send(&client, "POST", LEASES, json, &lease("one", json!({}))).await;
    assert_eq!(
        (code, answer["reason"].as_str()),
        (409, Some("AlreadyExists")),
        "{answer}"
    );

    // An unconditional update (no resourceVersion) is allowed for Leases; it moves the version
    // on, so the version read before is stale from then on.
    let (code, answer) = send(
        &client,
        "PUT",
        &one,
        json,
        &lease(
            "one",
            json!({"holderIdentity": "x", "leaseDurationSeconds": 15}),
        ),
    )
    .await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["spec"]["holderIdentity"], "x");
    let mut stale = lease("one", json!({"holderIdentity": "y"}));
    stale["metadata"]["resourceVersion"] = json!(first_version);
    let (code, answer) = send(&client, "PUT", &one, json, &stale).await;
    assert_eq!(
        (code, answer["reason"].as_str()),
        (409, Some("Conflict")),
        "{answer}"
    );
    assert_eq!(answer["kind"], "Status", "{answer}");
    let (code, answer) = send(
        &client,
        "PATCH",
        &one,
        "application/merge-patch+json",
        &json!({"metadata": {"resourceVersion": first_version}, "spec": {"holderIdentity": "y"}}),
    )
    .await;
    assert_eq!(
        (code, answer["reason"].as_str()),
        (409, Some("Conflict")),
        "{answer}"
    );
    let api: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), "stowage");
    let kept = api.get("one").await.unwrap();
    assert_eq!(
        kept.spec.unwrap().holder_identity.as_deref(),
        Some("x"),
        "a refused write changed nothing"
    );

    // Server-side apply: the first manager to apply the holder owns it; another manager's
    // apply of a different holder is a conflict naming the field and its owner, and changes
    // nothing. The fields `x` wrote with the PUT were there before the first apply: their
    // owner is `before-first-apply`.
    let (code, answer) = send(
        &client,
        "PATCH",
        &format!("{LEASES}/two?fieldManager=a"),
        APPLY,
        &lease(
            "two",
            json!({"holderIdentity": "a", "leaseDurationSeconds": 15}),
        ),
    )
    .await;
    assert_eq!(code, 201, "an apply creates a missing object: {answer}");
    let (code, answer) = send(
        &client,
        "PATCH",
        &format!("{LEASES}/two?fieldManager=b"),
        APPLY,
        &lease(
            "two",
            json!({"holderIdentity": "b", "leaseDurationSeconds": 15}),
        ),
    )
    .await;
    assert_eq!(
        (code, answer["reason"].as_str()),
        (409, Some("Conflict")),
        "{answer}"
    );
    assert_eq!(
        answer["message"],
        "Apply failed with 1 conflict: conflict with \"a\": .spec.holderIdentity"
    );
    assert_eq!(
        answer["details"]["causes"][0]["reason"],
        "FieldManagerConflict"
    );
    let (code, answer) = send(
        &client,
        "PATCH",
        &format!("{one}?fieldManager=b"),
        APPLY,
        &lease("one", json!({"holderIdentity": "b"})),
    )
    .await;
    assert_eq!(code, 409, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("\"before-first-apply\" using update"),
        "{answer}"
    );
    // The same value is no conflict (both own it); a field someone clears is nobody's, so the
    // next apply takes it; `force=true` takes a field from its owner.
    let (code, answer) = send(
        &client,
        "PATCH",
        &format!("{LEASES}/two?fieldManager=b"),
        APPLY,
        &lease("two", json!({"leaseDurationSeconds": 15})),
    )
    .await;
    assert_eq!(code, 200, "{answer}");
    let (code, answer) = send(
        &client,
        "PATCH",
        &format!("{LEASES}/two?fieldManager=b"),
        "application/strategic-merge-patch+json",
        &json!({"spec": {"holderIdentity": null}}),
    )
    .await;
    assert_eq!(code, 200, "{answer}");
    let (code, answer) = send(
        &client,
        "PATCH",
        &format!("{LEASES}/two?fieldManager=c"),
        APPLY,
        &lease("two", json!({"holderIdentity": "c"})),
    )
    .await;
    assert_eq!(
        (code, &answer["spec"]["holderIdentity"]),
        (200, &json!("c")),
        "{answer}"
    );
    let (code, answer) = send(
        &client,
        "PATCH",
        &format!("{LEASES}/two?fieldManager=a&force=true"),
        APPLY,
        &lease(
            "two",
            json!({"holderIdentity": "a", "leaseDurationSeconds": 15}),
        ),
    )
    .await;
    assert_eq!(
        (code, &answer["spec"]["holderIdentity"]),
        (200, &json!("a")),
        "{answer}"
    );
    // An apply names its manager; a Lease's duration is positive.
    let (code, answer) = send(&client, "PATCH", &one, APPLY, &lease("one", json!({}))).await;
    assert_eq!(
        (code, answer["reason"].as_str()),
        (422, Some("Invalid")),
        "{answer}"
    );
    let (code, answer) = send(
        &client,
        "PUT",
        &one,
        json,
        &lease("one", json!({"leaseDurationSeconds": 0})),
    )
    .await;
    assert_eq!(code, 422, "{answer}");
    assert_eq!(
        answer["message"],
        "Lease.coordination.k8s.io \"one\" is invalid: spec.leaseDurationSeconds: Invalid value: 0: must be greater than 0"
    );
}
