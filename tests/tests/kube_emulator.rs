//! The Kubernetes API emulator behaves as a kube client expects: uids, increasing
//! resourceVersions, label selectors, NotFound/AlreadyExists/Conflict reasons, replace (PUT),
//! watches, and discovery that `kubectl` understands.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api,
    api::{ListParams, PostParams, WatchEvent, WatchParams},
};
use serde_json::json;
use stowage_e2e::kube::{KubeEmulator, create, ensure_namespace};

fn config_map(name: &str, labels: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "foo", "labels": labels},
        "data": {"key": name},
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn emulator_answers_like_an_api_server() {
    let dir = tempfile::tempdir().unwrap();
    let emulator = KubeEmulator::start(dir.path()).await;
    let client = emulator.client().await;
    ensure_namespace(&client, "foo").await;
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
