//! The resource restore against the in-memory API server: order, adoption, mapping,
//! policies, filters, CRDs, and each object's result.

use std::{collections::BTreeMap, sync::Mutex, time::Duration};

use serde_json::{Value, json};
use stowage_velero_format::BackupResources;
use tokio_util::sync::CancellationToken;

use super::{fake::FakeObjects, *};

/// The `shop` application as a backup holds it: a Deployment with its ReplicaSet and two pods
/// with a restored volume each, a StatefulSet pod with a claim on a PV, a controller-owned pod
/// without volumes, a bare pod, a Service, a ConfigMap, a Secret, a ServiceAccount with its
/// RoleBinding, a CRD and one of its custom resources, and an event.
fn shop() -> BackupResources {
    let mut tarball = BackupResources::new();
    let mut add = |resource: &str, object: Value| {
        tarball.insert(resource, object).unwrap();
    };
    let meta = |name: &str, uid: &str| json!({"name": name, "namespace": "shop", "uid": uid, "resourceVersion": "5"});
    let owned = |name: &str, uid: &str, kind: &str, owner: &str, owner_uid: &str| {
        let mut metadata = meta(name, uid);
        metadata["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": kind, "name": owner,
            "uid": owner_uid, "controller": true, "blockOwnerDeletion": true}]);
        metadata
    };
    add(
        "namespaces",
        json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "shop", "uid": "ns-old", "labels": {"team": "a"}}, "status": {"phase": "Active"}}),
    );
    add(
        "customresourcedefinitions.apiextensions.k8s.io",
        json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com", "uid": "crd-old"},
        "spec": {"group": "example.com", "scope": "Namespaced",
                 "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                 "versions": [{"name": "v1", "served": true, "storage": true}]},
        "status": {"conditions": [{"type": "Established", "status": "True"}]}}),
    );
    add(
        "widgets.example.com",
        json!({"apiVersion": "example.com/v1", "kind": "Widget",
        "metadata": meta("gear", "w-old"), "spec": {"size": 3}}),
    );
    add(
        "persistentvolumes",
        json!({"apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": "pv-db-0", "uid": "pv-old"},
        "spec": {"capacity": {"storage": "1Gi"}, "hostPath": {"path": "/data/pv-db-0"},
                 "claimRef": {"kind": "PersistentVolumeClaim", "namespace": "shop", "name": "data-db-0",
                              "uid": "pvc-old", "resourceVersion": "9", "apiVersion": "v1"}},
        "status": {"phase": "Bound"}}),
    );
    add(
        "persistentvolumeclaims",
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": meta("data-db-0", "pvc-old"),
        "spec": {"volumeName": "pv-db-0", "resources": {"requests": {"storage": "1Gi"}}},
        "status": {"phase": "Bound"}}),
    );
    add(
        "configmaps",
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta("cfg", "cm-old"), "data": {"color": "blue"}}),
    );
    add(
        "secrets",
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": meta("creds", "s-old"), "data": {"pw": "eA=="}}),
    );
    add(
        "serviceaccounts",
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta("shop", "sa-old")}),
    );
    add(
        "rolebindings.rbac.authorization.k8s.io",
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": meta("shop-reads", "rb-old"),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"kind": "ServiceAccount", "name": "shop", "namespace": "shop"}]}),
    );
    add(
        "services",
        json!({"apiVersion": "v1", "kind": "Service", "metadata": meta("web", "svc-old"),
        "spec": {"clusterIP": "10.96.0.7", "clusterIPs": ["10.96.0.7"], "ports": [{"port": 80}], "selector": {"app": "web"}}}),
    );
    add(
        "deployments.apps",
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta("web", "deploy-old"),
        "spec": {"replicas": 2}, "status": {"readyReplicas": 2}}),
    );
    add(
        "replicasets.apps",
        json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": owned("web-7d9", "rs-old", "Deployment", "web", "deploy-old"), "spec": {"replicas": 2}}),
    );
    add(
        "statefulsets.apps",
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": meta("db", "sts-old"),
        "spec": {"replicas": 1}}),
    );
    let pod = |metadata: Value, volume: Value| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata,
        "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": "busybox"}], "volumes": [volume]},
        "status": {"phase": "Running"}})
    };
    let empty_dir = json!({"name": "cache", "emptyDir": {}});
    add(
        "pods",
        pod(
            owned("web-7d9-a", "pod-a", "ReplicaSet", "web-7d9", "rs-old"),
            empty_dir.clone(),
        ),
    );
    add(
        "pods",
        pod(
            owned("web-7d9-b", "pod-b", "ReplicaSet", "web-7d9", "rs-old"),
            empty_dir.clone(),
        ),
    );
    add(
        "pods",
        pod(
            owned("db-0", "pod-db", "StatefulSet", "db", "sts-old"),
            json!({"name": "data", "persistentVolumeClaim": {"claimName": "data-db-0"}}),
        ),
    );
    add(
        "pods",
        pod(
            owned("web-7d9-c", "pod-c", "ReplicaSet", "web-7d9", "rs-old"),
            json!({"name": "tmp", "emptyDir": {}}),
        ),
    );
    add(
        "pods",
        pod(
            meta("debug", "pod-debug"),
            json!({"name": "tmp", "emptyDir": {}}),
        ),
    );
    add(
        "events",
        json!({"apiVersion": "v1", "kind": "Event", "metadata": meta("web.1", "ev")}),
    );
    tarball
}

/// Pods with restored volumes: the three whose volumes `cache` and `data` were backed up.
fn dress(_namespace: &str, name: &str, pod: &mut Value) -> Option<Result<(), String>> {
    matches!(name, "web-7d9-a" | "web-7d9-b" | "db-0").then(|| {
        let init = json!([{"name": "restore-wait", "image": "helper"}]);
        pod["spec"]["initContainers"] = init;
        Ok(())
    })
}

fn options() -> Options {
    Options {
        included_namespaces: Vec::new(),
        namespace_mapping: BTreeMap::new(),
        include_resources: Vec::new(),
        exclude_resources: Vec::new(),
        label_selector: LabelSelector::default(),
        // The claim's data is not restic's here: its PV is restored and re-bound.
        restic_claims: Default::default(),
        policy: ExistingPolicy::None,
        crd_timeout: Duration::from_secs(60),
        namespace_timeout: Duration::from_secs(60),
        poll_interval: Duration::from_secs(1),
    }
}

struct Run {
    handled: Vec<Handled>,
    log: Vec<(String, String)>,
}

impl Run {
    fn outcome(&self, path: &str) -> (Outcome, String) {
        let handled = self
            .handled
            .iter()
            .find(|h| h.path() == path)
            .unwrap_or_else(|| panic!("{path} was not handled: {:#?}", self.handled));
        (handled.outcome, handled.message.clone())
    }
}

async fn restore(api: &FakeObjects, tarball: &BackupResources, options: &Options) -> Run {
    let log = Mutex::new(Vec::new());
    let handled = restore_resources(
        api,
        tarball,
        options,
        &dress,
        &|level: &str, line: String| log.lock().unwrap().push((level.to_string(), line)),
        &CancellationToken::new(),
    )
    .await
    .expect("the restore runs");
    Run {
        handled,
        log: log.into_inner().unwrap(),
    }
}

fn uid(object: &Option<Value>) -> String {
    object.as_ref().expect("restored")["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string()
}

fn owner_uids(object: &Option<Value>) -> Vec<String> {
    object.as_ref().expect("restored")["metadata"]["ownerReferences"]
        .as_array()
        .map(|owners| {
            owners
                .iter()
                .map(|o| o["uid"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(start_paused = true)]
async fn the_application_comes_back_in_order_and_its_workloads_own_their_pods() {
    let api = FakeObjects::new();
    let run = restore(&api, &shop(), &options()).await;
    let creates: Vec<String> = api
        .writes()
        .into_iter()
        .filter_map(|w| w.strip_prefix("create ").map(str::to_string))
        .collect();
    assert_eq!(
        creates,
        [
            "customresourcedefinitions.apiextensions.k8s.io/widgets.example.com",
            "namespaces/shop",
            "persistentvolumes/pv-db-0",
            "persistentvolumeclaims/shop/data-db-0",
            "serviceaccounts/shop/shop",
            "secrets/shop/creds",
            "configmaps/shop/cfg",
            "pods/shop/db-0",
            "pods/shop/debug",
            "pods/shop/web-7d9-a",
            "pods/shop/web-7d9-b",
            "replicasets.apps/shop/web-7d9",
            "services/shop/web",
            "deployments.apps/shop/web",
            "rolebindings.rbac.authorization.k8s.io/shop/shop-reads",
            "statefulsets.apps/shop/db",
            "widgets.example.com/shop/gear",
        ]
    );
    // Every object has a new uid; the pods point at the restored controllers' new uids.
    let rs = api.object("replicasets.apps", Some("shop"), "web-7d9");
    let deployment = api.object("deployments.apps", Some("shop"), "web");
    let sts = api.object("statefulsets.apps", Some("shop"), "db");
    assert_ne!(uid(&rs), "rs-old");
    for pod in ["web-7d9-a", "web-7d9-b"] {
        assert_eq!(
            owner_uids(&api.object("pods", Some("shop"), pod)),
            [uid(&rs)]
        );
    }
    assert_eq!(
        owner_uids(&api.object("pods", Some("shop"), "db-0")),
        [uid(&sts)]
    );
    assert_eq!(owner_uids(&rs), [uid(&deployment)]);
    assert!(owner_uids(&api.object("pods", Some("shop"), "debug")).is_empty());
    // The owner reference keeps everything but the uid.
    let pod = api.object("pods", Some("shop"), "web-7d9-a").unwrap();
    assert_eq!(pod["metadata"]["ownerReferences"][0]["name"], "web-7d9");
    assert_eq!(pod["metadata"]["ownerReferences"][0]["controller"], true);
    assert_eq!(pod["spec"]["initContainers"][0]["name"], "restore-wait");
    assert!(pod["spec"].get("nodeName").is_none());
    // The controller-owned pod without volumes is its controller's to make.
    let (outcome, message) = run.outcome("pods/shop/web-7d9-c");
    assert_eq!(outcome, Outcome::Skipped);
    assert!(message.contains("ReplicaSet web-7d9"), "{message}");
    assert!(api.object("pods", Some("shop"), "web-7d9-c").is_none());
    assert_eq!(run.outcome("events/shop/web.1").0, Outcome::Skipped);
    // Services get a fresh IP; the PV is re-bound to the restored claim, which keeps it.
    let service = api.object("services", Some("shop"), "web").unwrap();
    assert!(service["spec"].get("clusterIP").is_none());
    let pv = api.object("persistentvolumes", None, "pv-db-0").unwrap();
    assert_eq!(pv["spec"]["claimRef"]["name"], "data-db-0");
    assert!(pv["spec"]["claimRef"].get("uid").is_none());
    let claim = api
        .object("persistentvolumeclaims", Some("shop"), "data-db-0")
        .unwrap();
    assert_eq!(claim["spec"]["volumeName"], "pv-db-0");
    assert!(claim.get("status").is_none());
    // Pods with volumes are marked for the caller.
    let dressed: Vec<&str> = run
        .handled
        .iter()
        .filter(|h| h.has_volumes)
        .map(|h| h.name.as_str())
        .collect();
    assert_eq!(dressed, ["db-0", "web-7d9-a", "web-7d9-b"]);
    assert!(
        run.log.iter().any(|(_, line)| line
            .contains("pods/shop/web-7d9-a is owned by the restored ReplicaSet web-7d9")),
        "{:?}",
        run.log
    );
}

#[tokio::test(start_paused = true)]
async fn custom_resources_wait_for_their_crd_to_be_established() {
    let api = FakeObjects::new();
    // The fake serves the custom resource only once its CRD is Established; a restore that
    // did not wait would fail the Widget with 404.
    let run = restore(&api, &shop(), &options()).await;
    assert_eq!(
        run.outcome("widgets.example.com/shop/gear").0,
        Outcome::Created
    );
    assert_eq!(
        api.object("widgets.example.com", Some("shop"), "gear")
            .unwrap()["spec"]["size"],
        3
    );

    // A CRD that never becomes Established within the timeout: the custom resource fails
    // with the API server's reason instead of the restore hanging.
    let mut api = FakeObjects::new();
    api.establish_after = Duration::from_secs(3600);
    let run = restore(&api, &shop(), &options()).await;
    let (outcome, message) = run.outcome("widgets.example.com/shop/gear");
    assert_eq!(outcome, Outcome::Failed);
    assert!(
        message.contains("does not serve widgets.example.com"),
        "{message}"
    );
    assert!(
        run.log
            .iter()
            .any(|(level, line)| level == "warning" && line.contains("not Established"))
    );
}

#[tokio::test(start_paused = true)]
async fn a_mapped_restore_moves_the_namespace_and_the_references_that_name_it() {
    let api = FakeObjects::new();
    let mut options = options();
    options.namespace_mapping = BTreeMap::from([("shop".to_string(), "shop-copy".to_string())]);
    let run = restore(&api, &shop(), &options).await;
    assert_eq!(run.outcome("namespaces/shop-copy").0, Outcome::Created);
    assert_eq!(
        api.object("namespaces", None, "shop-copy").unwrap()["metadata"]["labels"]["team"],
        "a"
    );
    assert!(api.object("configmaps", Some("shop-copy"), "cfg").is_some());
    assert!(api.object("configmaps", Some("shop"), "cfg").is_none());
    let binding = api
        .object(
            "rolebindings.rbac.authorization.k8s.io",
            Some("shop-copy"),
            "shop-reads",
        )
        .unwrap();
    assert_eq!(binding["subjects"][0]["namespace"], "shop-copy");
    let pv = api.object("persistentvolumes", None, "pv-db-0").unwrap();
    assert_eq!(pv["spec"]["claimRef"]["namespace"], "shop-copy");
    let handled = run.handled.iter().find(|h| h.name == "cfg").unwrap();
    assert_eq!(handled.source_namespace.as_deref(), Some("shop"));
    assert_eq!(handled.namespace.as_deref(), Some("shop-copy"));
}

#[tokio::test(start_paused = true)]
async fn a_claim_whose_volume_exists_is_provisioned_afresh() {
    let api = FakeObjects::new();
    api.add(
        "persistentvolumes",
        None,
        json!({"metadata": {"name": "pv-db-0"}, "spec": {"claimRef": {"namespace": "shop", "name": "data-db-0", "uid": "pvc-old"}}}),
    );
    let run = restore(&api, &shop(), &options()).await;
    assert_eq!(
        run.outcome("persistentvolumes/pv-db-0").0,
        Outcome::SkippedExists
    );
    let claim = api
        .object("persistentvolumeclaims", Some("shop"), "data-db-0")
        .unwrap();
    assert!(claim["spec"].get("volumeName").is_none(), "{claim}");
}

#[tokio::test(start_paused = true)]
async fn a_claim_filled_by_restic_gets_a_fresh_volume_instead_of_its_old_pv() {
    let api = FakeObjects::new();
    let mut options = options();
    options.restic_claims = [("shop".to_string(), "data-db-0".to_string())].into();
    let run = restore(&api, &shop(), &options).await;
    let (outcome, message) = run.outcome("persistentvolumes/pv-db-0");
    assert_eq!(outcome, Outcome::Skipped);
    assert!(message.contains("restic"), "{message}");
    assert!(api.object("persistentvolumes", None, "pv-db-0").is_none());
    let claim = api
        .object("persistentvolumeclaims", Some("shop"), "data-db-0")
        .unwrap();
    assert!(claim["spec"].get("volumeName").is_none(), "{claim}");
}

#[tokio::test(start_paused = true)]
async fn existing_objects_are_left_or_updated_by_the_policy() {
    let edited =
        json!({"metadata": {"name": "cfg", "namespace": "shop"}, "data": {"color": "red"}});

    let api = FakeObjects::new();
    api.add("configmaps", Some("shop"), edited.clone());
    let run = restore(&api, &shop(), &options()).await;
    let (outcome, message) = run.outcome("configmaps/shop/cfg");
    assert_eq!(outcome, Outcome::SkippedExists);
    assert!(message.contains("`none`"), "{message}");
    assert_eq!(
        api.object("configmaps", Some("shop"), "cfg").unwrap()["data"]["color"],
        "red"
    );

    let api = FakeObjects::new();
    api.add("configmaps", Some("shop"), edited.clone());
    let live_uid = uid(&api.object("configmaps", Some("shop"), "cfg"));
    let mut update = options();
    update.policy = ExistingPolicy::Update;
    let run = restore(&api, &shop(), &update).await;
    assert_eq!(run.outcome("configmaps/shop/cfg").0, Outcome::Updated);
    let restored = api.object("configmaps", Some("shop"), "cfg");
    assert_eq!(restored.as_ref().unwrap()["data"]["color"], "blue");
    assert_eq!(uid(&restored), live_uid, "replaced in place, not recreated");

    // An update the API server refuses fails the object with its reason.
    let api = FakeObjects::new();
    api.add("configmaps", Some("shop"), edited);
    api.state().refuse_replace.insert(
        "configmaps".into(),
        (
            422,
            "Invalid".into(),
            "data: Forbidden: the map is immutable".into(),
        ),
    );
    let run = restore(&api, &shop(), &update).await;
    let (outcome, message) = run.outcome("configmaps/shop/cfg");
    assert_eq!(outcome, Outcome::Failed);
    assert!(
        message.contains("the map is immutable (422 Invalid)"),
        "{message}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_existing_owner_adopts_the_restored_dependents_with_its_live_uid() {
    let api = FakeObjects::new();
    api.add(
        "replicasets.apps",
        Some("shop"),
        json!({"metadata": {"name": "web-7d9", "uid": "live-rs"}}),
    );
    let run = restore(&api, &shop(), &options()).await;
    assert_eq!(
        run.outcome("replicasets.apps/shop/web-7d9").0,
        Outcome::SkippedExists
    );
    assert_eq!(
        owner_uids(&api.object("pods", Some("shop"), "web-7d9-a")),
        ["live-rs"]
    );
}

#[tokio::test(start_paused = true)]
async fn filters_pick_resources_and_labels_and_say_what_they_left_out() {
    let api = FakeObjects::new();
    let mut only = options();
    only.include_resources = vec!["configmaps".into(), "secret".into()];
    let run = restore(&api, &shop(), &only).await;
    assert_eq!(run.outcome("configmaps/shop/cfg").0, Outcome::Created);
    assert_eq!(run.outcome("secrets/shop/creds").0, Outcome::Created);
    let (outcome, message) = run.outcome("deployments.apps/shop/web");
    assert_eq!(outcome, Outcome::Skipped);
    assert!(message.contains("resource filter"), "{message}");
    // The namespace the objects need is still there, created bare.
    assert!(api.object("namespaces", None, "shop").is_some());
    assert!(
        api.object("deployments.apps", Some("shop"), "web")
            .is_none()
    );

    let api = FakeObjects::new();
    let mut except = options();
    except.exclude_resources = vec!["pods".into(), "*.example.com".into()];
    let run = restore(&api, &shop(), &except).await;
    assert_eq!(run.outcome("pods/shop/debug").0, Outcome::Skipped);
    assert_eq!(
        run.outcome("widgets.example.com/shop/gear").0,
        Outcome::Skipped
    );
    assert_eq!(run.outcome("services/shop/web").0, Outcome::Created);

    let api = FakeObjects::new();
    let mut tarball = shop();
    let key = tarball
        .objects
        .keys()
        .find(|k| k.name == "cfg")
        .cloned()
        .unwrap();
    tarball.objects.get_mut(&key).unwrap()["metadata"]["labels"] = json!({"app": "web"});
    let mut labelled = options();
    labelled.label_selector = LabelSelector {
        match_labels: BTreeMap::from([("app".to_string(), "web".to_string())]),
        expressions: vec![selector::Requirement {
            key: "tier".into(),
            operator: selector::Operator::NotIn,
            values: vec!["db".into()],
        }],
    };
    let run = restore(&api, &tarball, &labelled).await;
    assert_eq!(run.outcome("configmaps/shop/cfg").0, Outcome::Created);
    let (outcome, message) = run.outcome("secrets/shop/creds");
    assert_eq!(outcome, Outcome::Skipped);
    assert!(message.contains("app=web,tier notin (db)"), "{message}");

    // Objects of namespaces the restore does not include are not looked at.
    let api = FakeObjects::new();
    let mut elsewhere = options();
    elsewhere.included_namespaces = vec!["other".into()];
    let run = restore(&api, &shop(), &elsewhere).await;
    assert!(
        run.handled.iter().all(|h| h.namespace.is_none()),
        "{:#?}",
        run.handled
    );
    assert!(api.object("configmaps", Some("shop"), "cfg").is_none());
}

#[tokio::test(start_paused = true)]
async fn a_refused_object_fails_with_the_api_server_s_reason_and_the_rest_restores() {
    let api = FakeObjects::new();
    api.state().refuse.insert(
        "secrets".into(),
        (
            403,
            "Forbidden".into(),
            "secrets is forbidden: no create".into(),
        ),
    );
    let run = restore(&api, &shop(), &options()).await;
    let (outcome, message) = run.outcome("secrets/shop/creds");
    assert_eq!(outcome, Outcome::Failed);
    assert_eq!(message, "secrets is forbidden: no create (403 Forbidden)");
    assert_eq!(run.outcome("configmaps/shop/cfg").0, Outcome::Created);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_restore_stops_between_objects() {
    let api = FakeObjects::new();
    let cancel = CancellationToken::new();
    cancel.cancel();
    let handled = restore_resources(&api, &shop(), &options(), &dress, &|_: &str, _| {}, &cancel)
        .await
        .unwrap();
    assert!(handled.is_empty());
    assert!(api.writes().is_empty());
}

#[test]
fn the_existing_resource_policy_takes_velero_s_names_only() {
    assert_eq!(ExistingPolicy::parse("").unwrap(), ExistingPolicy::None);
    assert_eq!(ExistingPolicy::parse("none").unwrap(), ExistingPolicy::None);
    assert_eq!(
        ExistingPolicy::parse("update").unwrap(),
        ExistingPolicy::Update
    );
    let error = ExistingPolicy::parse("overwrite").unwrap_err().to_string();
    assert!(
        error.contains("overwrite") && error.contains("none"),
        "{error}"
    );
}

/// `shop` as it is while being deleted: the namespace and an object left in it.
fn terminating_shop(gone_after: Option<Duration>) -> FakeObjects {
    let api = FakeObjects::new();
    api.add(
        "namespaces",
        None,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}),
    );
    api.add(
        "configmaps",
        Some("shop"),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"},
            "data": {"color": "stale"}}),
    );
    api.terminate("shop", gone_after);
    api
}

#[tokio::test(start_paused = true)]
async fn a_restore_into_a_terminating_namespace_waits_until_it_is_gone() {
    let api = terminating_shop(Some(Duration::from_secs(25)));
    let run = restore(&api, &shop(), &options()).await;
    // Created anew, not found "already there" on its way out.
    assert_eq!(run.outcome("namespaces/shop").0, Outcome::Created);
    let namespace = api.object("namespaces", None, "shop").unwrap();
    assert!(namespace["metadata"].get("deletionTimestamp").is_none());
    assert_eq!(namespace["metadata"]["labels"]["team"], "a");
    assert_eq!(run.outcome("configmaps/shop/cfg").0, Outcome::Created);
    assert_eq!(
        api.object("configmaps", Some("shop"), "cfg").unwrap()["data"]["color"],
        "blue"
    );
    let failed: Vec<_> = run
        .handled
        .iter()
        .filter(|h| h.outcome == Outcome::Failed)
        .collect();
    assert!(failed.is_empty(), "{failed:#?}");
    // The wait shows in the restore's log as it goes.
    let lines: Vec<&str> = run.log.iter().map(|(_, line)| line.as_str()).collect();
    for expected in [
        "namespace shop is being deleted (Terminating); waiting up to 60s",
        "namespace shop is still Terminating after 10s",
        "namespace shop is still Terminating after 20s",
    ] {
        assert!(
            lines.iter().any(|line| line.contains(expected)),
            "{expected:?} not in {lines:#?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn objects_restored_into_a_terminating_namespace_without_its_object_wait_too() {
    let api = terminating_shop(Some(Duration::from_secs(5)));
    let mut options = options();
    options.include_resources = vec!["configmaps".into()];
    let run = restore(&api, &shop(), &options).await;
    assert_eq!(run.outcome("configmaps/shop/cfg").0, Outcome::Created);
    assert!(api.object("namespaces", None, "shop").is_some());
    assert!(
        run.log
            .iter()
            .any(|(_, line)| line == "namespaces/shop created for the restored objects"),
        "{:#?}",
        run.log
    );
}

#[tokio::test(start_paused = true)]
async fn a_namespace_terminating_past_the_bound_fails_its_objects_naming_it() {
    // A finalizer nobody removes: the namespace stays Terminating.
    let api = terminating_shop(None);
    let run = restore(&api, &shop(), &options()).await;
    for path in [
        "namespaces/shop",
        "configmaps/shop/cfg",
        "deployments.apps/shop/web",
        "pods/shop/db-0",
    ] {
        let (outcome, message) = run.outcome(path);
        assert_eq!(outcome, Outcome::Failed, "{path}");
        assert!(
            message.starts_with("namespace shop is still being deleted (Terminating) after 60s"),
            "{path}: {message}"
        );
    }
    // Nothing was written into it; what is not in it is restored.
    assert!(
        !api.writes().iter().any(|write| write.contains("/shop/")),
        "{:#?}",
        api.writes()
    );
    assert_eq!(
        run.outcome("customresourcedefinitions.apiextensions.k8s.io/widgets.example.com")
            .0,
        Outcome::Created
    );
    // Waited out once, not once per object.
    let waits = run
        .log
        .iter()
        .filter(|(_, line)| line.contains("waiting up to 60s"))
        .count();
    assert_eq!(waits, 1, "{:#?}", run.log);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_restore_stops_waiting_for_a_terminating_namespace() {
    let api = terminating_shop(None);
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    let (tarball, options) = (shop(), options());
    let log = |_: &str, _: String| {};
    let (handled, ()) = tokio::join!(
        restore_resources(&api, &tarball, &options, &dress, &log, &cancel),
        async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            stop.cancel();
        }
    );
    let handled = handled.expect("the restore runs");
    // The namespace is the last object looked at: the wait ended with the cancel, and the
    // restore stopped there.
    let last = handled.last().expect("objects handled");
    assert_eq!(last.path(), "namespaces/shop");
    assert_eq!(last.outcome, Outcome::Failed);
    assert!(
        last.message
            .contains("cancelled while namespace shop was Terminating"),
        "{last:?}"
    );
}
