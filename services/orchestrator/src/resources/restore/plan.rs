//! The pure half of a resource restore: the order resources are restored in (Velero's default
//! restore priorities), what is never restored, and how one backed-up object becomes the object
//! sent to the API server (server-set fields and status stripped, the namespace mapping applied
//! to the object and to the references that carry a namespace, per-kind rules for Services,
//! PersistentVolumes, claims, pods and Jobs).

use std::collections::BTreeMap;

use serde_json::Value;

/// Velero's default restore priorities (`defaultRestorePriorities`): these first, in this
/// order; then every other resource alphabetically; then [`LOW_PRIORITIES`]. Pods come before
/// ReplicaSets and every other controller so a restored controller finds its pods there.
pub const HIGH_PRIORITIES: &[&str] = &[
    "customresourcedefinitions",
    "namespaces",
    "storageclasses",
    "volumesnapshotclass.snapshot.storage.k8s.io",
    "volumesnapshotcontents.snapshot.storage.k8s.io",
    "volumesnapshots.snapshot.storage.k8s.io",
    "datauploads.velero.io",
    "persistentvolumes",
    "persistentvolumeclaims",
    "serviceaccounts",
    "secrets",
    "configmaps",
    "limitranges",
    "pods",
    "replicasets.apps",
    "clusterclasses.cluster.x-k8s.io",
    "endpoints",
    "services",
];

/// Restored after everything else (Velero's `LowPriorities`).
pub const LOW_PRIORITIES: &[&str] = &[
    "clusterbootstraps.run.tanzu.vmware.com",
    "clusters.cluster.x-k8s.io",
    "clusterresourcesets.addons.cluster.x-k8s.io",
];

/// Resources a restore never creates, as Velero's `nonRestorableResources`: nodes and events
/// belong to the cluster that had them, the backup tool's own records are not application
/// state (and restoring them would start operations), and the node-level storage objects are
/// made by the kubelet and attach controllers.
pub const NON_RESTORABLE: &[&str] = &[
    "nodes",
    "events",
    "events.events.k8s.io",
    "backups.velero.io",
    "restores.velero.io",
    "resticrepositories.velero.io",
    "backuprepositories.velero.io",
    "podvolumebackups.velero.io",
    "podvolumerestores.velero.io",
    "datauploads.velero.io",
    "datadownloads.velero.io",
    "csinodes.storage.k8s.io",
    "volumeattachments.storage.k8s.io",
];

/// The group resources of `present` in restore order; `customresourcedefinitions` also matches
/// its group-qualified spelling, as the tarball names it (`…apiextensions.k8s.io`).
pub fn restore_order<'a>(present: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut present: Vec<&str> = present.into_iter().collect();
    present.sort_unstable();
    present.dedup();
    let rank = |resource: &str| -> (usize, usize) {
        let matches = |priority: &&str| resource == *priority || resource == qualified(priority);
        if let Some(index) = HIGH_PRIORITIES.iter().position(matches) {
            (0, index)
        } else if let Some(index) = LOW_PRIORITIES.iter().position(matches) {
            (2, index)
        } else {
            (1, 0)
        }
    };
    // A stable sort keeps the alphabetical order among the rest.
    present.sort_by_key(|resource| rank(resource));
    present.into_iter().map(str::to_string).collect()
}

/// The tarball's name of a priority Velero spells without its group.
fn qualified(priority: &str) -> String {
    match priority {
        "customresourcedefinitions" => format!("{priority}.apiextensions.k8s.io"),
        "storageclasses" => format!("{priority}.storage.k8s.io"),
        other => other.to_string(),
    }
}

/// The group part of a group resource (`apps` of `deployments.apps`, empty for the core group).
pub fn group_of(group_resource: &str) -> &str {
    group_resource
        .split_once('.')
        .map_or("", |(_, group)| group)
}

/// Why `object` of `resource` is never restored, if it is not.
pub fn never_restored(resource: &str, object: &Value) -> Option<String> {
    if NON_RESTORABLE.contains(&resource) {
        return Some(format!("{resource} are never restored"));
    }
    if resource == "secrets"
        && let Some(account) = generated_token_of(object)
    {
        return Some(format!(
            "the token Secret Kubernetes generated for ServiceAccount {account}: the tokens \
             controller makes the restored account its own"
        ));
    }
    if resource == "pods" {
        if annotation(object, "kubernetes.io/config.mirror").is_some() {
            return Some("a mirror pod: the kubelet of its node recreates it".to_string());
        }
        if let Some(phase @ ("Succeeded" | "Failed")) =
            object.pointer("/status/phase").and_then(Value::as_str)
        {
            return Some(format!("the pod had ended ({phase})"));
        }
    }
    None
}

/// The ServiceAccount whose auto-generated token `secret` is: a
/// `kubernetes.io/service-account-token` Secret named `<account>-token-…` (the tokens
/// controller's names, as Velero's secret action tells them from tokens made by hand).
fn generated_token_of(secret: &Value) -> Option<&str> {
    if secret.get("type").and_then(Value::as_str) != Some(SERVICE_ACCOUNT_TOKEN) {
        return None;
    }
    let account = annotation(secret, "kubernetes.io/service-account.name")?;
    let name = secret.pointer("/metadata/name").and_then(Value::as_str)?;
    name.starts_with(&format!("{account}-token-"))
        .then_some(account)
}

pub fn annotation<'a>(object: &'a Value, key: &str) -> Option<&'a str> {
    object
        .pointer("/metadata/annotations")
        .and_then(|annotations| annotations.get(key))
        .and_then(Value::as_str)
}

/// The owner with `controller: true` among the object's ownerReferences: `(kind, name, uid)`.
pub fn controller_of(object: &Value) -> Option<(String, String, String)> {
    owner_references(object)
        .into_iter()
        .find(|owner| owner.get("controller").and_then(Value::as_bool) == Some(true))
        .map(|owner| {
            let text = |key: &str| {
                owner
                    .get(key)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            (text("kind"), text("name"), text("uid"))
        })
}

pub fn owner_references(object: &Value) -> Vec<Value> {
    object
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// Metadata the API server sets and a create must not carry. ownerReferences go too: they name
/// the old owners' uids, and an object whose controller's uid does not exist is garbage
/// collected; the restore re-points them once the owners are back (see run.rs).
const SERVER_SET_METADATA: &[&str] = &[
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generation",
    "selfLink",
    "managedFields",
    "ownerReferences",
];

/// Claim annotations the PV controller, the provisioner and the scheduler set for a binding
/// that no longer exists (Velero's PVC action): kept, they tell the PV controller the claim is
/// bound already (a claim whose volume is gone turns Lost), name the provisioner and node of
/// the old provisioning, and a node that may not exist here.
const CLAIM_BINDING_ANNOTATIONS: &[&str] = &[
    "pv.kubernetes.io/bind-completed",
    "pv.kubernetes.io/bound-by-controller",
    "volume.kubernetes.io/storage-provisioner",
    "volume.beta.kubernetes.io/storage-provisioner",
    "volume.kubernetes.io/selected-node",
];

/// A PersistentVolume's annotations of the PV controller's binding (Velero's
/// `resetVolumeBindingInfo`): without them the restored volume and claim are bound anew.
const VOLUME_BINDING_ANNOTATIONS: &[&str] = &[
    "pv.kubernetes.io/bind-completed",
    "pv.kubernetes.io/bound-by-controller",
];

/// The Secret type of a ServiceAccount's legacy token.
const SERVICE_ACCOUNT_TOKEN: &str = "kubernetes.io/service-account-token";

/// What the namespace mapping and the restore's other objects decide for one object.
pub struct Context<'a> {
    pub namespace_mapping: &'a BTreeMap<String, String>,
    /// For a claim: whether this restore created the PersistentVolume it was bound to (then it
    /// keeps `spec.volumeName` and binds to it again; otherwise it is provisioned afresh).
    pub volume_restored: bool,
}

impl Context<'_> {
    pub fn map<'n>(&'n self, namespace: &'n str) -> &'n str {
        self.namespace_mapping
            .get(namespace)
            .map_or(namespace, String::as_str)
    }
}

/// The object as it is sent to the API server.
pub fn prepare(resource: &str, object: &Value, context: &Context) -> Value {
    let mut object = object.clone();
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        for field in SERVER_SET_METADATA {
            metadata.remove(*field);
        }
        if let Some(namespace) = metadata.get("namespace").and_then(Value::as_str) {
            let mapped = context.map(namespace).to_string();
            metadata.insert("namespace".into(), Value::String(mapped));
        }
        if resource == "namespaces"
            && let Some(name) = metadata.get("name").and_then(Value::as_str)
        {
            let mapped = context.map(name).to_string();
            metadata.insert("name".into(), Value::String(mapped));
        }
    }
    if let Some(object) = object.as_object_mut() {
        object.remove("status");
    }
    match resource {
        "services" => prepare_service(&mut object),
        "persistentvolumes" => prepare_volume(&mut object, context),
        "persistentvolumeclaims" => prepare_claim(&mut object, context),
        "pods" => prepare_pod(&mut object),
        "jobs.batch" => prepare_job(&mut object),
        "serviceaccounts" => prepare_service_account(&mut object),
        "secrets" => prepare_secret(&mut object),
        "rolebindings.rbac.authorization.k8s.io"
        | "clusterrolebindings.rbac.authorization.k8s.io" => map_subjects(&mut object, context),
        _ => {}
    }
    object
}

/// A Service gets fresh cluster IPs and node ports (the old ones may belong to another Service
/// now); a headless one stays headless.
fn prepare_service(object: &mut Value) {
    let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    if spec.get("clusterIP").and_then(Value::as_str) != Some("None") {
        spec.remove("clusterIP");
        spec.remove("clusterIPs");
    }
    spec.remove("healthCheckNodePort");
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for port in ports.iter_mut().filter_map(Value::as_object_mut) {
            port.remove("nodePort");
        }
    }
}

/// A PersistentVolume's claimRef points at the restored claim: mapped namespace, and no uid
/// or resourceVersion of the old claim, so the PV controller binds it to the new one.
fn prepare_volume(object: &mut Value, context: &Context) {
    remove_annotations(object, VOLUME_BINDING_ANNOTATIONS);
    if let Some(claim) = object
        .pointer_mut("/spec/claimRef")
        .and_then(Value::as_object_mut)
    {
        claim.remove("uid");
        claim.remove("resourceVersion");
        if let Some(namespace) = claim.get("namespace").and_then(Value::as_str) {
            let mapped = context.map(namespace).to_string();
            claim.insert("namespace".into(), Value::String(mapped));
        }
    }
}

fn remove_annotations(object: &mut Value, keys: &[&str]) {
    if let Some(annotations) = object
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
        for key in keys {
            annotations.remove(*key);
        }
    }
}

/// A claim is bound anew: the binding annotations go, and its `spec.volumeName` too unless
/// this restore created that volume (a claim naming a volume that does not exist stays
/// Pending; one whose data restic restores gets a freshly provisioned volume).
fn prepare_claim(object: &mut Value, context: &Context) {
    remove_annotations(object, CLAIM_BINDING_ANNOTATIONS);
    if !context.volume_restored
        && let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut)
    {
        spec.remove("volumeName");
    }
}

/// A pod is scheduled afresh (no node); its priority is computed again by the Priority
/// admission plugin (which refuses a pod whose `spec.priority` differs from what its class, or
/// the lack of one, gives); and the service-account token volumes the admission plugin added
/// (`kube-api-access-…`, or `<account>-token-…` naming a legacy token Secret that is not
/// restored) are added again by it, in containers and init containers alike.
fn prepare_pod(object: &mut Value) {
    let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    spec.remove("nodeName");
    spec.remove("priority");
    let account = spec
        .get("serviceAccountName")
        .or_else(|| spec.get("serviceAccount"))
        .and_then(Value::as_str)
        .filter(|name| !name.is_empty())
        .unwrap_or("default");
    let legacy_prefix = format!("{account}-token-");
    let token_volumes: Vec<String> = spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|volume| volume.get("name").and_then(Value::as_str))
        .filter(|name| name.starts_with("kube-api-access-") || name.starts_with(&legacy_prefix))
        .map(str::to_string)
        .collect();
    if token_volumes.is_empty() {
        return;
    }
    if let Some(volumes) = spec.get_mut("volumes").and_then(Value::as_array_mut) {
        volumes.retain(|volume| {
            !token_volumes
                .iter()
                .any(|name| volume.get("name").and_then(Value::as_str) == Some(name))
        });
    }
    for list in ["containers", "initContainers"] {
        let containers = spec.get_mut(list).and_then(Value::as_array_mut);
        for container in containers.into_iter().flatten() {
            if let Some(mounts) = container
                .get_mut("volumeMounts")
                .and_then(Value::as_array_mut)
            {
                mounts.retain(|mount| {
                    !token_volumes
                        .iter()
                        .any(|name| mount.get("name").and_then(Value::as_str) == Some(name))
                });
            }
        }
    }
}

/// A Job's selector and template carry the old Job's uid as `controller-uid`; the API server
/// generates them again for the new one, and refuses a create that keeps the old (`selector`
/// not auto-generated, template labels not the new uid). A Job with `spec.manualSelector`
/// chose its selector itself: the API server takes it as it is, and so does the restore.
fn prepare_job(object: &mut Value) {
    if object
        .pointer("/spec/manualSelector")
        .and_then(Value::as_bool)
        == Some(true)
    {
        return;
    }
    const UID_LABELS: &[&str] = &["controller-uid", "batch.kubernetes.io/controller-uid"];
    for pointer in [
        "/spec/selector/matchLabels",
        "/spec/template/metadata/labels",
    ] {
        if let Some(labels) = object.pointer_mut(pointer).and_then(Value::as_object_mut) {
            for label in UID_LABELS {
                labels.remove(*label);
            }
        }
    }
    let empty_selector = object
        .pointer("/spec/selector")
        .and_then(Value::as_object)
        .is_some_and(|selector| {
            selector
                .get("matchLabels")
                .and_then(Value::as_object)
                .is_some_and(|labels| labels.is_empty())
                && !selector.contains_key("matchExpressions")
        });
    if empty_selector && let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) {
        spec.remove("selector");
    }
}

/// A ServiceAccount loses its references to the token Secrets Kubernetes generated for it
/// (`<account>-token-…`, not restored: see [`never_restored`]); the tokens controller of a
/// cluster that still makes them adds a new one. Secrets it names by other names stay.
fn prepare_service_account(object: &mut Value) {
    let Some(name) = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .map(str::to_string)
    else {
        return;
    };
    let prefix = format!("{name}-token-");
    let Some(secrets) = object.get_mut("secrets").and_then(Value::as_array_mut) else {
        return;
    };
    secrets.retain(|secret| {
        !secret
            .get("name")
            .and_then(Value::as_str)
            .is_some_and(|secret| secret.starts_with(&prefix))
    });
    if secrets.is_empty()
        && let Some(object) = object.as_object_mut()
    {
        object.remove("secrets");
    }
}

/// A token Secret made by hand for a ServiceAccount (the generated ones are not restored) loses
/// the old account's uid and the token signed for it: the tokens controller fills them in for
/// the restored account, and deletes a token Secret whose uid names an account that is gone.
fn prepare_secret(object: &mut Value) {
    if object.get("type").and_then(Value::as_str) != Some(SERVICE_ACCOUNT_TOKEN) {
        return;
    }
    remove_annotations(object, &["kubernetes.io/service-account.uid"]);
    if let Some(data) = object.get_mut("data").and_then(Value::as_object_mut) {
        data.remove("token");
        data.remove("ca.crt");
    }
}

/// A (Cluster)RoleBinding's ServiceAccount subjects name their namespace: mapped with it.
fn map_subjects(object: &mut Value, context: &Context) {
    let subjects = object.get_mut("subjects").and_then(Value::as_array_mut);
    for subject in subjects.into_iter().flatten() {
        if subject.get("kind").and_then(Value::as_str) != Some("ServiceAccount") {
            continue;
        }
        if let Some(namespace) = subject.get("namespace").and_then(Value::as_str) {
            let mapped = context.map(namespace).to_string();
            subject["namespace"] = Value::String(mapped);
        }
    }
}

/// For an update: what the live object has that the API server set and a replace must keep
/// (its resourceVersion, its owners, a Service's allocated IPs and ports, a claim's volume).
pub fn carry_live_fields(resource: &str, prepared: &mut Value, live: &Value) {
    for field in ["resourceVersion", "ownerReferences"] {
        if let Some(value) = live.pointer(&format!("/metadata/{field}")) {
            prepared["metadata"][field] = value.clone();
        }
    }
    let copy = |prepared: &mut Value, pointer: &str, key: &str| {
        if let Some(value) = live.pointer(&format!("{pointer}/{key}"))
            && let Some(target) = prepared.pointer_mut(pointer).and_then(Value::as_object_mut)
        {
            target.insert(key.to_string(), value.clone());
        }
    };
    match resource {
        "services" => {
            copy(prepared, "/spec", "clusterIP");
            copy(prepared, "/spec", "clusterIPs");
            copy(prepared, "/spec", "healthCheckNodePort");
            let live_ports = live.pointer("/spec/ports").and_then(Value::as_array);
            let ports = prepared
                .pointer_mut("/spec/ports")
                .and_then(Value::as_array_mut);
            if let (Some(live_ports), Some(ports)) = (live_ports, ports) {
                for port in ports {
                    let same = live_ports.iter().find(|live| {
                        live.get("port") == port.get("port")
                            && live.get("protocol") == port.get("protocol")
                    });
                    if let Some(node_port) = same.and_then(|live| live.get("nodePort")) {
                        port["nodePort"] = node_port.clone();
                    }
                }
            }
        }
        "persistentvolumeclaims" => copy(prepared, "/spec", "volumeName"),
        "persistentvolumes" => copy(prepared, "/spec", "claimRef"),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mapping(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn resources_come_in_velero_s_priority_order_then_alphabetically() {
        let order = restore_order([
            "statefulsets.apps",
            "widgets.example.com",
            "services",
            "deployments.apps",
            "pods",
            "clusters.cluster.x-k8s.io",
            "replicasets.apps",
            "configmaps",
            "secrets",
            "serviceaccounts",
            "persistentvolumeclaims",
            "persistentvolumes",
            "namespaces",
            "customresourcedefinitions.apiextensions.k8s.io",
            "rolebindings.rbac.authorization.k8s.io",
            "storageclasses.storage.k8s.io",
            "limitranges",
        ]);
        assert_eq!(
            order,
            [
                "customresourcedefinitions.apiextensions.k8s.io",
                "namespaces",
                "storageclasses.storage.k8s.io",
                "persistentvolumes",
                "persistentvolumeclaims",
                "serviceaccounts",
                "secrets",
                "configmaps",
                "limitranges",
                "pods",
                "replicasets.apps",
                "services",
                "deployments.apps",
                "rolebindings.rbac.authorization.k8s.io",
                "statefulsets.apps",
                "widgets.example.com",
                "clusters.cluster.x-k8s.io",
            ]
        );
    }

    #[test]
    fn server_set_fields_and_status_are_stripped_and_the_namespace_mapped() {
        let object = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "cfg", "namespace": "shop", "uid": "u1",
                         "resourceVersion": "7", "creationTimestamp": "2026-01-01T00:00:00Z",
                         "generation": 3, "selfLink": "/x", "managedFields": [{}],
                         "deletionTimestamp": "2026-01-02T00:00:00Z",
                         "ownerReferences": [{"uid": "old"}],
                         "labels": {"app": "shop"}, "annotations": {"a": "b"},
                         "finalizers": ["keep.me"]},
            "data": {"k": "v"},
            "status": {"x": 1},
        });
        let mapping = mapping(&[("shop", "shop-copy")]);
        let context = Context {
            namespace_mapping: &mapping,
            volume_restored: false,
        };
        let prepared = prepare("configmaps", &object, &context);
        assert_eq!(
            prepared,
            json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "cfg", "namespace": "shop-copy",
                             "labels": {"app": "shop"}, "annotations": {"a": "b"},
                             "finalizers": ["keep.me"]},
                "data": {"k": "v"},
            })
        );
        let namespace = json!({"metadata": {"name": "shop", "uid": "n"}, "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}});
        let prepared = prepare("namespaces", &namespace, &context);
        assert_eq!(
            prepared,
            json!({"metadata": {"name": "shop-copy"}, "spec": {"finalizers": ["kubernetes"]}})
        );
    }

    #[test]
    fn services_get_fresh_cluster_ips_and_node_ports_unless_headless() {
        let none = BTreeMap::new();
        let context = Context {
            namespace_mapping: &none,
            volume_restored: false,
        };
        let service = json!({"metadata": {"name": "web", "namespace": "shop"},
            "spec": {"type": "NodePort", "clusterIP": "10.0.0.7", "clusterIPs": ["10.0.0.7"],
                     "ports": [{"port": 80, "nodePort": 30080}], "selector": {"app": "web"}}});
        let prepared = prepare("services", &service, &context);
        assert_eq!(
            prepared["spec"],
            json!({"type": "NodePort", "ports": [{"port": 80}], "selector": {"app": "web"}})
        );
        let headless = json!({"metadata": {"name": "db"},
            "spec": {"clusterIP": "None", "clusterIPs": ["None"]}});
        let prepared = prepare("services", &headless, &context);
        assert_eq!(prepared["spec"]["clusterIP"], "None");
        assert_eq!(prepared["spec"]["clusterIPs"], json!(["None"]));
    }

    #[test]
    fn a_volume_s_claim_ref_points_at_the_mapped_restored_claim() {
        let mapping = mapping(&[("shop", "shop-copy")]);
        let context = Context {
            namespace_mapping: &mapping,
            volume_restored: false,
        };
        let volume = json!({"metadata": {"name": "pv-1", "uid": "pv-uid"},
            "spec": {"claimRef": {"kind": "PersistentVolumeClaim", "namespace": "shop",
                                  "name": "data-db-0", "uid": "old-claim",
                                  "resourceVersion": "12", "apiVersion": "v1"},
                     "capacity": {"storage": "1Gi"}},
            "status": {"phase": "Bound"}});
        let prepared = prepare("persistentvolumes", &volume, &context);
        assert_eq!(
            prepared,
            json!({"metadata": {"name": "pv-1"},
                "spec": {"claimRef": {"kind": "PersistentVolumeClaim", "namespace": "shop-copy",
                                      "name": "data-db-0", "apiVersion": "v1"},
                         "capacity": {"storage": "1Gi"}}})
        );
    }

    #[test]
    fn a_claim_keeps_its_volume_only_when_that_volume_was_restored() {
        let none = BTreeMap::new();
        let claim = json!({"metadata": {"name": "data", "namespace": "shop", "annotations": {
                "pv.kubernetes.io/bind-completed": "yes",
                "pv.kubernetes.io/bound-by-controller": "yes",
                "volume.kubernetes.io/selected-node": "node-a", "team": "x"}},
            "spec": {"volumeName": "pv-1", "resources": {}}});
        let kept = prepare(
            "persistentvolumeclaims",
            &claim,
            &Context {
                namespace_mapping: &none,
                volume_restored: true,
            },
        );
        assert_eq!(kept["spec"]["volumeName"], "pv-1");
        assert_eq!(kept["metadata"]["annotations"], json!({"team": "x"}));
        let fresh = prepare(
            "persistentvolumeclaims",
            &claim,
            &Context {
                namespace_mapping: &none,
                volume_restored: false,
            },
        );
        assert!(fresh["spec"].get("volumeName").is_none());
    }

    #[test]
    fn role_binding_service_account_subjects_follow_the_mapping() {
        let mapping = mapping(&[("shop", "shop-copy")]);
        let context = Context {
            namespace_mapping: &mapping,
            volume_restored: false,
        };
        let binding = json!({"metadata": {"name": "b", "namespace": "shop"},
        "roleRef": {"kind": "Role", "name": "reader", "apiGroup": "rbac.authorization.k8s.io"},
        "subjects": [
            {"kind": "ServiceAccount", "name": "shop", "namespace": "shop"},
            {"kind": "ServiceAccount", "name": "mon", "namespace": "monitoring"},
            {"kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"},
        ]});
        let prepared = prepare("rolebindings.rbac.authorization.k8s.io", &binding, &context);
        assert_eq!(prepared["metadata"]["namespace"], "shop-copy");
        assert_eq!(prepared["subjects"][0]["namespace"], "shop-copy");
        assert_eq!(prepared["subjects"][1]["namespace"], "monitoring");
        assert!(prepared["subjects"][2].get("namespace").is_none());
    }

    #[test]
    fn pods_lose_their_node_token_volume_and_owners() {
        let none = BTreeMap::new();
        let context = Context {
            namespace_mapping: &none,
            volume_restored: false,
        };
        let pod = json!({"metadata": {"name": "web-1", "namespace": "shop",
                "ownerReferences": [{"kind": "ReplicaSet", "name": "web-abc", "uid": "rs", "controller": true}]},
            "spec": {"nodeName": "node-a", "priorityClassName": "high", "priority": 1000,
                "containers": [{"name": "app", "volumeMounts": [
                    {"name": "data", "mountPath": "/data"},
                    {"name": "kube-api-access-x1", "mountPath": "/var/run/secrets"}]}],
                "volumes": [{"name": "data", "emptyDir": {}},
                            {"name": "kube-api-access-x1", "projected": {}}]},
            "status": {"phase": "Running"}});
        let prepared = prepare("pods", &pod, &context);
        assert_eq!(
            prepared,
            json!({"metadata": {"name": "web-1", "namespace": "shop"},
                "spec": {"priorityClassName": "high",
                    "containers": [{"name": "app", "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                    "volumes": [{"name": "data", "emptyDir": {}}]}})
        );
    }

    #[test]
    fn jobs_lose_the_old_controller_uid() {
        let none = BTreeMap::new();
        let context = Context {
            namespace_mapping: &none,
            volume_restored: false,
        };
        let job = json!({"metadata": {"name": "j"},
            "spec": {"selector": {"matchLabels": {"controller-uid": "u"}},
                     "template": {"metadata": {"labels": {"controller-uid": "u",
                         "batch.kubernetes.io/controller-uid": "u", "job-name": "j"}}}}});
        let prepared = prepare("jobs.batch", &job, &context);
        assert!(prepared["spec"].get("selector").is_none());
        assert_eq!(
            prepared["spec"]["template"]["metadata"]["labels"],
            json!({"job-name": "j"})
        );
    }

    #[test]
    fn a_job_with_a_manual_selector_keeps_it() {
        let none = BTreeMap::new();
        let context = Context {
            namespace_mapping: &none,
            volume_restored: false,
        };
        let job = json!({"metadata": {"name": "j"},
            "spec": {"manualSelector": true,
                     "selector": {"matchLabels": {"controller-uid": "mine"}},
                     "template": {"metadata": {"labels": {"controller-uid": "mine"}}}}});
        assert_eq!(prepare("jobs.batch", &job, &context), job);
    }

    #[test]
    fn claims_and_volumes_lose_the_binding_annotations() {
        let none = BTreeMap::new();
        let context = Context {
            namespace_mapping: &none,
            volume_restored: false,
        };
        let claim = json!({"metadata": {"name": "data", "annotations": {
                "volume.kubernetes.io/storage-provisioner": "csi.example.com",
                "volume.beta.kubernetes.io/storage-provisioner": "csi.example.com",
                "volume.kubernetes.io/selected-node": "node-a",
                "pv.kubernetes.io/bind-completed": "yes", "team": "x"}},
            "spec": {"volumeName": "pv-1"}});
        let prepared = prepare("persistentvolumeclaims", &claim, &context);
        assert_eq!(prepared["metadata"]["annotations"], json!({"team": "x"}));
        let volume = json!({"metadata": {"name": "pv-1", "annotations": {
                "pv.kubernetes.io/bind-completed": "yes",
                "pv.kubernetes.io/bound-by-controller": "yes",
                "pv.kubernetes.io/provisioned-by": "csi.example.com"}},
            "spec": {"claimRef": {"name": "data", "namespace": "shop"}}});
        let prepared = prepare("persistentvolumes", &volume, &context);
        assert_eq!(
            prepared["metadata"]["annotations"],
            json!({"pv.kubernetes.io/provisioned-by": "csi.example.com"})
        );
    }

    #[test]
    fn service_accounts_lose_their_generated_token_secrets() {
        let none = BTreeMap::new();
        let context = Context {
            namespace_mapping: &none,
            volume_restored: false,
        };
        let account = json!({"metadata": {"name": "app", "namespace": "shop"},
            "secrets": [{"name": "app-token-x7k2p"}, {"name": "registry"}],
            "imagePullSecrets": [{"name": "registry"}]});
        let prepared = prepare("serviceaccounts", &account, &context);
        assert_eq!(prepared["secrets"], json!([{"name": "registry"}]));
        assert_eq!(prepared["imagePullSecrets"], json!([{"name": "registry"}]));
        let only_token = json!({"metadata": {"name": "app"},
            "secrets": [{"name": "app-token-x7k2p"}]});
        let prepared = prepare("serviceaccounts", &only_token, &context);
        assert!(prepared.get("secrets").is_none(), "{prepared}");
        // Another account's token is not this account's generated one.
        let other = json!({"metadata": {"name": "app"}, "secrets": [{"name": "web-token-1"}]});
        assert_eq!(
            prepare("serviceaccounts", &other, &context)["secrets"],
            json!([{"name": "web-token-1"}])
        );
    }

    #[test]
    fn generated_token_secrets_are_skipped_and_hand_made_ones_lose_the_old_token() {
        let generated = json!({"metadata": {"name": "app-token-x7k2p", "annotations": {
                "kubernetes.io/service-account.name": "app",
                "kubernetes.io/service-account.uid": "old"}},
            "type": "kubernetes.io/service-account-token",
            "data": {"token": "dG9r", "ca.crt": "Y2E=", "namespace": "c2hvcA=="}});
        let reason = never_restored("secrets", &generated).expect("skipped");
        assert!(reason.contains("ServiceAccount app"), "{reason}");
        let mut by_hand = generated.clone();
        by_hand["metadata"]["name"] = json!("app-long-lived");
        assert!(never_restored("secrets", &by_hand).is_none());
        let none = BTreeMap::new();
        let context = Context {
            namespace_mapping: &none,
            volume_restored: false,
        };
        let prepared = prepare("secrets", &by_hand, &context);
        assert_eq!(
            prepared["metadata"]["annotations"],
            json!({"kubernetes.io/service-account.name": "app"})
        );
        assert_eq!(prepared["data"], json!({"namespace": "c2hvcA=="}));
        let opaque = json!({"metadata": {"name": "app-token-1"}, "type": "Opaque",
            "data": {"token": "dG9r"}});
        assert!(never_restored("secrets", &opaque).is_none());
        assert_eq!(
            prepare("secrets", &opaque, &context)["data"]["token"],
            "dG9r"
        );
    }

    #[test]
    fn pods_lose_legacy_token_volumes_in_init_containers_too_and_any_priority() {
        let none = BTreeMap::new();
        let context = Context {
            namespace_mapping: &none,
            volume_restored: false,
        };
        let pod = json!({"metadata": {"name": "p"},
            "spec": {"serviceAccountName": "app", "priority": 0,
                "initContainers": [{"name": "init", "volumeMounts": [
                    {"name": "app-token-x7k2p", "mountPath": "/var/run/secrets"},
                    {"name": "data", "mountPath": "/data"}]}],
                "containers": [{"name": "main", "volumeMounts": [
                    {"name": "app-token-x7k2p", "mountPath": "/var/run/secrets"}]}],
                "volumes": [{"name": "app-token-x7k2p", "secret": {"secretName": "app-token-x7k2p"}},
                            {"name": "data", "emptyDir": {}}]}});
        let prepared = prepare("pods", &pod, &context);
        assert_eq!(
            prepared["spec"],
            json!({"serviceAccountName": "app",
                "initContainers": [{"name": "init", "volumeMounts": [
                    {"name": "data", "mountPath": "/data"}]}],
                "containers": [{"name": "main", "volumeMounts": []}],
                "volumes": [{"name": "data", "emptyDir": {}}]})
        );
        // Without an account the pod ran as `default`.
        let default = json!({"metadata": {"name": "p"}, "spec": {
            "containers": [{"name": "main"}],
            "volumes": [{"name": "default-token-abcde", "secret": {}}]}});
        assert_eq!(
            prepare("pods", &default, &context)["spec"]["volumes"],
            json!([])
        );
    }

    #[test]
    fn what_velero_never_restores_is_skipped_with_a_reason() {
        let any = json!({"metadata": {"name": "x"}});
        assert!(never_restored("nodes", &any).is_some());
        assert!(never_restored("events.events.k8s.io", &any).is_some());
        assert!(never_restored("podvolumebackups.velero.io", &any).is_some());
        assert!(never_restored("configmaps", &any).is_none());
        let mirror = json!({"metadata": {"annotations": {"kubernetes.io/config.mirror": "h"}}});
        assert!(never_restored("pods", &mirror).unwrap().contains("mirror"));
        let done = json!({"metadata": {}, "status": {"phase": "Succeeded"}});
        assert!(never_restored("pods", &done).unwrap().contains("Succeeded"));
        let running = json!({"metadata": {}, "status": {"phase": "Running"}});
        assert!(never_restored("pods", &running).is_none());
    }

    #[test]
    fn an_update_keeps_what_the_server_allocated() {
        let live = json!({"metadata": {"name": "web", "resourceVersion": "42",
                "ownerReferences": [{"uid": "live-owner"}]},
            "spec": {"clusterIP": "10.0.0.9", "clusterIPs": ["10.0.0.9"],
                     "ports": [{"port": 80, "protocol": "TCP", "nodePort": 31000}]}});
        let mut prepared = json!({"metadata": {"name": "web"},
            "spec": {"ports": [{"port": 80, "protocol": "TCP"}], "selector": {"app": "web"}}});
        carry_live_fields("services", &mut prepared, &live);
        assert_eq!(prepared["metadata"]["resourceVersion"], "42");
        assert_eq!(
            prepared["metadata"]["ownerReferences"][0]["uid"],
            "live-owner"
        );
        assert_eq!(prepared["spec"]["clusterIP"], "10.0.0.9");
        assert_eq!(prepared["spec"]["ports"][0]["nodePort"], 31000);
        assert_eq!(prepared["spec"]["selector"]["app"], "web");
    }
}
