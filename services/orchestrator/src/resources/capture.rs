//! One backup's resources, by Velero's rules (pkg/backup's item collector and backupper):
//!
//! - every namespaced resource the filter takes is listed in each included namespace (across
//!   the cluster when all namespaces are), page by page, with the backup's label selector;
//! - never taken: events (both groups), nodes, CSI nodes and volume attachments, CSI volume
//!   snapshots, every `velero.io` resource (the backup tool's own records, stowage's
//!   PodVolumeBackup/PodVolumeRestore/ResticRepository mirrors included), anything in
//!   stowage's own namespace, objects labelled `velero.io/exclude-from-backup=true` and
//!   objects being deleted;
//! - cluster-scoped objects, Velero's `--include-cluster-resources` left on auto: all of them
//!   when the backup covers every namespace; otherwise only what the namespaced ones need:
//!   their Namespace objects, the PersistentVolumes bound to their claims, and the
//!   CustomResourceDefinitions of the custom resources found — each only if the resource
//!   filter takes its resource;
//! - with a label selector and every namespace, a Namespace object is taken when its labels
//!   match or an object in it was taken (Velero's namespace tracker);
//! - the pods and claims of the backup's volumes (the runner's own manifests) replace the
//!   listed copies, so the tarball and the PodVolumeBackups describe the same pods.
//!
//! A resource that stopped being served since discovery (404) or whose aggregated API is down
//! (503) is left out with a warning, as a group discovery could not read is; any other failed
//! list fails the capture, naming the resource and namespace.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use stowage_velero_format::BackupResources;

use super::{
    api::{ApiResource, ResourceApi, ResourceError},
    filter::ResourceFilter,
};

/// Velero's label that keeps an object out of every backup.
pub const EXCLUDE_FROM_BACKUP: &str = "velero.io/exclude-from-backup";

const NAMESPACES: &str = "namespaces";
const PERSISTENT_VOLUMES: &str = "persistentvolumes";
const PERSISTENT_VOLUME_CLAIMS: &str = "persistentvolumeclaims";
const CRDS: &str = "customresourcedefinitions.apiextensions.k8s.io";

/// Resources no backup takes, whatever its filter says.
const NEVER: &[&str] = &[
    "events",
    "events.events.k8s.io",
    "nodes",
    "csinodes.storage.k8s.io",
    "volumeattachments.storage.k8s.io",
    "volumesnapshots.snapshot.storage.k8s.io",
    "volumesnapshotcontents.snapshot.storage.k8s.io",
    "componentstatuses",
];
/// The backup tool's group: Velero's records and stowage's mirrors of them.
const OWN_GROUP: &str = "velero.io";

fn never_taken(resource: &ApiResource) -> bool {
    resource.group == OWN_GROUP || NEVER.contains(&resource.group_resource().as_str())
}

/// What one backup asks for.
#[derive(Debug, Clone, Default)]
pub struct CaptureSpec {
    pub included_namespaces: Vec<String>,
    pub excluded_namespaces: Vec<String>,
    pub label_selector: BTreeMap<String, String>,
    pub include_resources: Vec<String>,
    pub exclude_resources: Vec<String>,
    /// The namespace stowage runs in, never backed up.
    pub own_namespace: String,
    /// Objects per list request (`limit`).
    pub page_size: u32,
}

/// The captured objects and what the backup's log should say about them.
#[derive(Debug, Default)]
pub struct Captured {
    pub resources: BackupResources,
    /// Resources that were not captured and why (an API group discovery could not read, an
    /// included namespace that does not exist).
    pub warnings: Vec<String>,
    /// `(group resource, namespace or "" for cluster-wide, objects, pages)` of each list that
    /// took more than one page, for the log.
    pub paginated: Vec<(String, String, usize, usize)>,
    /// List requests made.
    pub list_requests: usize,
}

struct Lister<'a, A> {
    api: &'a A,
    page_size: u32,
    requests: usize,
    paginated: Vec<(String, String, usize, usize)>,
}

impl<A: ResourceApi> Lister<'_, A> {
    /// Every object of `resource` in `namespace`, following continue tokens. A token that
    /// expires midway (410 Gone) restarts the list once from the first page, as client-go's
    /// pager falls back to a fresh list.
    async fn list_all(
        &mut self,
        resource: &ApiResource,
        namespace: Option<&str>,
        selector: &str,
    ) -> Result<Vec<Value>, ResourceError> {
        let mut restarted = false;
        'fresh: loop {
            let mut items = Vec::new();
            let mut token: Option<String> = None;
            let mut pages = 0;
            loop {
                let page = match self
                    .api
                    .list_page(
                        resource,
                        namespace,
                        selector,
                        self.page_size,
                        token.as_deref(),
                    )
                    .await
                {
                    Ok(page) => page,
                    Err(ResourceError::Expired { .. }) if token.is_some() && !restarted => {
                        restarted = true;
                        continue 'fresh;
                    }
                    Err(error) => return Err(error),
                };
                self.requests += 1;
                pages += 1;
                items.extend(page.items);
                match page.continue_token {
                    Some(next) => token = Some(next),
                    None => {
                        if pages > 1 {
                            self.paginated.push((
                                resource.group_resource(),
                                namespace.unwrap_or_default().to_string(),
                                items.len(),
                                pages,
                            ));
                        }
                        return Ok(items);
                    }
                }
            }
        }
    }
}

/// A list's objects, or none (and a warning) when the resource is not served now.
fn or_warn(
    listed: Result<Vec<Value>, ResourceError>,
    warnings: &mut Vec<String>,
) -> Result<Vec<Value>, ResourceError> {
    match listed {
        Err(error @ ResourceError::Unavailable { .. }) => {
            warnings.push(format!("{error}; it is not in the backup"));
            Ok(Vec::new())
        }
        other => other,
    }
}

fn name_of(object: &Value) -> Option<&str> {
    object.pointer("/metadata/name").and_then(Value::as_str)
}

fn namespace_of(object: &Value) -> Option<&str> {
    object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .filter(|ns| !ns.is_empty())
}

fn labels_of(object: &Value) -> BTreeMap<String, String> {
    object
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|labels| {
            labels
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// Objects Velero leaves out one by one: labelled out, or already being deleted.
fn left_out(object: &Value) -> bool {
    labels_of(object)
        .get(EXCLUDE_FROM_BACKUP)
        .map(String::as_str)
        == Some("true")
        || object
            .pointer("/metadata/deletionTimestamp")
            .is_some_and(|t| !t.is_null())
}

fn selector_text(labels: &BTreeMap<String, String>) -> String {
    crate::kube::label_selector(labels)
}

/// Captures the resources of the backup described by `spec`; `volume_manifests` are the pods
/// and claims of its volumes as the runner planned them.
pub async fn capture<A: ResourceApi>(
    api: &A,
    spec: &CaptureSpec,
    volume_manifests: &[Value],
) -> Result<Captured, ResourceError> {
    let discovered = api.discover().await?;
    let mut captured = Captured {
        resources: BackupResources::new(),
        ..Default::default()
    };
    for group in &discovered.failed_groups {
        captured.warnings.push(format!(
            "API group {group} could not be discovered; its resources are not in the backup"
        ));
    }
    let served = discovered.resources;
    let filter = ResourceFilter::new(&spec.include_resources, &spec.exclude_resources, &served);
    let selector = selector_text(&spec.label_selector);
    let every_namespace =
        spec.included_namespaces.is_empty() || spec.included_namespaces.iter().any(|ns| ns == "*");
    // Velero's auto rule for cluster-scoped resources looks at the user's namespace filter;
    // stowage's own namespace is left out of every backup and does not count.
    let whole_cluster = every_namespace && spec.excluded_namespaces.is_empty();
    let wanted_namespace = |namespace: &str| {
        namespace != spec.own_namespace
            && !spec.excluded_namespaces.iter().any(|ns| ns == namespace)
            && (every_namespace || spec.included_namespaces.iter().any(|ns| ns == namespace))
    };
    let mut lister = Lister {
        api,
        page_size: spec.page_size.max(1),
        requests: 0,
        paginated: Vec::new(),
    };
    let find = |group: &str, plural: &str| {
        served
            .iter()
            .find(|r| r.group == group && r.plural == plural)
    };

    // The namespaces themselves, listed whole: which exist, and their objects.
    let namespace_resource = find("", NAMESPACES).ok_or_else(|| ResourceError::Discovery {
        path: "/api/v1".to_string(),
        message: "the API server does not serve namespaces".to_string(),
    })?;
    let namespace_objects: BTreeMap<String, Value> = lister
        .list_all(namespace_resource, None, "")
        .await?
        .into_iter()
        .filter_map(|ns| Some((name_of(&ns)?.to_string(), ns)))
        .collect();
    let namespaces: Vec<String> = if every_namespace {
        namespace_objects
            .keys()
            .filter(|ns| wanted_namespace(ns))
            .cloned()
            .collect()
    } else {
        let mut namespaces = Vec::new();
        for namespace in spec
            .included_namespaces
            .iter()
            .filter(|ns| wanted_namespace(ns))
        {
            if namespace_objects.contains_key(namespace) {
                namespaces.push(namespace.clone());
            } else {
                captured.warnings.push(format!(
                    "namespace {namespace} is included but does not exist"
                ));
            }
        }
        namespaces
    };
    let mut tracked: BTreeSet<String> = if every_namespace && !selector.is_empty() {
        // Velero's namespace tracker: with a selector over every namespace, a namespace is
        // in the backup if its labels match, or (below) if an object in it was taken.
        namespaces
            .iter()
            .filter(|ns| {
                let labels = labels_of(&namespace_objects[*ns]);
                spec.label_selector
                    .iter()
                    .all(|(k, v)| labels.get(k) == Some(v))
            })
            .cloned()
            .collect()
    } else {
        namespaces.iter().cloned().collect()
    };

    // Every namespaced resource the filter takes.
    let mut found_resources: BTreeSet<String> = BTreeSet::new();
    for resource in served.iter().filter(|r| r.namespaced) {
        let group_resource = resource.group_resource();
        if never_taken(resource) || !filter.includes(&group_resource) {
            continue;
        }
        let items = if every_namespace {
            or_warn(
                lister.list_all(resource, None, &selector).await,
                &mut captured.warnings,
            )?
            .into_iter()
            .filter(|item| namespace_of(item).is_some_and(|ns| namespaces.iter().any(|n| n == ns)))
            .collect()
        } else {
            let mut items = Vec::new();
            for namespace in &namespaces {
                items.extend(or_warn(
                    lister.list_all(resource, Some(namespace), &selector).await,
                    &mut captured.warnings,
                )?);
            }
            items
        };
        for item in items.into_iter().filter(|item| !left_out(item)) {
            if let Some(namespace) = namespace_of(&item) {
                tracked.insert(namespace.to_string());
            }
            insert(&mut captured.resources, &group_resource, item)?;
            found_resources.insert(group_resource.clone());
        }
    }

    // The runner's own manifests of the volumes' pods and claims.
    for manifest in volume_manifests {
        captured
            .resources
            .insert_object(manifest.clone())
            .map_err(|error| ResourceError::BadObject {
                what: name_of(manifest).unwrap_or("<unnamed>").to_string(),
                reason: error.to_string(),
            })?;
        if let Some(namespace) = namespace_of(manifest) {
            tracked.insert(namespace.to_string());
        }
    }

    if filter.includes(NAMESPACES) {
        for namespace in &tracked {
            if let Some(object) = namespace_objects.get(namespace).filter(|ns| !left_out(ns)) {
                insert(&mut captured.resources, NAMESPACES, object.clone())?;
            }
        }
    }

    if whole_cluster {
        for resource in served.iter().filter(|r| !r.namespaced) {
            let group_resource = resource.group_resource();
            if resource.plural == NAMESPACES && resource.group.is_empty()
                || never_taken(resource)
                || !filter.includes(&group_resource)
            {
                continue;
            }
            let items = or_warn(
                lister.list_all(resource, None, &selector).await,
                &mut captured.warnings,
            )?;
            for item in items {
                if !left_out(&item) {
                    insert(&mut captured.resources, &group_resource, item)?;
                }
            }
        }
    }

    // The PersistentVolumes bound to the captured claims.
    if let Some(pv_resource) =
        find("", PERSISTENT_VOLUMES).filter(|_| filter.includes(PERSISTENT_VOLUMES))
    {
        let bound: BTreeSet<String> = captured
            .resources
            .of_resource(PERSISTENT_VOLUME_CLAIMS)
            .filter_map(|(_, claim)| {
                claim
                    .pointer("/spec/volumeName")?
                    .as_str()
                    .map(str::to_string)
            })
            .filter(|pv| !pv.is_empty())
            .collect();
        for pv in bound {
            if captured
                .resources
                .get(PERSISTENT_VOLUMES, None, &pv)
                .is_some()
            {
                continue;
            }
            if let Some(object) = api.get(pv_resource, None, &pv).await?
                && !left_out(&object)
            {
                insert(&mut captured.resources, PERSISTENT_VOLUMES, object)?;
            }
        }
    }

    // The definitions of the custom resources found: a CRD is named `<plural>.<group>`, the
    // group resource itself; a built-in resource has none.
    if let Some(crd_resource) =
        find("apiextensions.k8s.io", "customresourcedefinitions").filter(|_| filter.includes(CRDS))
    {
        for group_resource in found_resources.iter().filter(|gr| gr.contains('.')) {
            if captured.resources.get(CRDS, None, group_resource).is_some() {
                continue;
            }
            if let Some(object) = api.get(crd_resource, None, group_resource).await?
                && !left_out(&object)
            {
                insert(&mut captured.resources, CRDS, object)?;
            }
        }
    }

    captured.list_requests = lister.requests;
    captured.paginated = lister.paginated;
    Ok(captured)
}

fn insert(
    resources: &mut BackupResources,
    group_resource: &str,
    object: Value,
) -> Result<(), ResourceError> {
    let what = format!(
        "{group_resource} {}",
        name_of(&object).unwrap_or("<unnamed>")
    );
    resources
        .insert(group_resource, object)
        .map(|_| ())
        .map_err(|error| ResourceError::BadObject {
            what,
            reason: error.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::fake::FakeApi;
    use serde_json::json;

    fn spec(namespaces: &[&str]) -> CaptureSpec {
        CaptureSpec {
            included_namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
            own_namespace: "stowage".to_string(),
            page_size: 500,
            ..Default::default()
        }
    }

    /// `shop` with an application in it, `other` beside it, and stowage's own namespace.
    fn cluster() -> FakeApi {
        let mut api = FakeApi::cluster();
        for ns in ["shop", "other", "stowage"] {
            api.namespace(ns, json!({"team": ns}));
        }
        api.add(
            "deployments.apps",
            Some("shop"),
            "web",
            json!({"spec": {"replicas": 2}}),
        );
        api.add(
            "configmaps",
            Some("shop"),
            "settings",
            json!({"data": {"a": "b"}}),
        );
        api.add(
            "configmaps",
            Some("shop"),
            "scratch",
            json!({"metadata": {"labels": {EXCLUDE_FROM_BACKUP: "true"}}}),
        );
        api.add(
            "configmaps",
            Some("shop"),
            "going",
            json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}}),
        );
        api.add("secrets", Some("shop"), "token", json!({"data": {}}));
        api.add(
            "widgets.example.com",
            Some("shop"),
            "blue",
            json!({"spec": {}}),
        );
        api.add(
            "persistentvolumeclaims",
            Some("shop"),
            "data",
            json!({"spec": {"volumeName": "pv-1"}}),
        );
        api.add(
            "persistentvolumes",
            None,
            "pv-1",
            json!({"spec": {"claimRef": {"name": "data", "namespace": "shop"}}}),
        );
        api.add("persistentvolumes", None, "pv-2", json!({}));
        api.add("events", Some("shop"), "web.1", json!({}));
        api.add("events.events.k8s.io", Some("shop"), "web.2", json!({}));
        api.add("podvolumebackups.velero.io", Some("shop"), "pvb", json!({}));
        api.add("configmaps", Some("other"), "elsewhere", json!({}));
        api.add("configmaps", Some("stowage"), "restore-helper", json!({}));
        api.add("nodes", None, "node-1", json!({}));
        api.add("storageclasses.storage.k8s.io", None, "fast", json!({}));
        api.add(
            "customresourcedefinitions.apiextensions.k8s.io",
            None,
            "widgets.example.com",
            json!({}),
        );
        api.add(
            "customresourcedefinitions.apiextensions.k8s.io",
            None,
            "gadgets.example.com",
            json!({}),
        );
        api
    }

    fn keys(captured: &Captured) -> Vec<String> {
        captured
            .resources
            .objects
            .keys()
            .map(|key| match &key.namespace {
                Some(ns) => format!("{}/{ns}/{}", key.resource, key.name),
                None => format!("{}/{}", key.resource, key.name),
            })
            .collect()
    }

    #[tokio::test]
    async fn a_namespace_backup_takes_its_objects_and_the_cluster_objects_they_need() {
        let captured = capture(&cluster(), &spec(&["shop"]), &[]).await.unwrap();
        assert_eq!(
            keys(&captured),
            [
                "configmaps/shop/settings",
                "customresourcedefinitions.apiextensions.k8s.io/widgets.example.com",
                "deployments.apps/shop/web",
                "namespaces/shop",
                "persistentvolumeclaims/shop/data",
                "persistentvolumes/pv-1",
                "secrets/shop/token",
                "widgets.example.com/shop/blue",
            ]
        );
        assert!(captured.warnings.is_empty(), "{:?}", captured.warnings);
        // Objects keep everything the API server sent, their type included.
        let web = captured
            .resources
            .get("deployments.apps", Some("shop"), "web")
            .unwrap();
        assert_eq!(web["apiVersion"], "apps/v1");
        assert_eq!(web["kind"], "Deployment");
        assert_eq!(web["metadata"]["uid"], "uid-web");
        assert_eq!(web["spec"]["replicas"], 2);
    }

    #[tokio::test]
    async fn large_lists_are_read_page_by_page() {
        let mut api = cluster();
        for i in 0..7 {
            api.add("configmaps", Some("shop"), &format!("bulk-{i}"), json!({}));
        }
        let captured = capture(
            &api,
            &CaptureSpec {
                page_size: 3,
                ..spec(&["shop"])
            },
            &[],
        )
        .await
        .unwrap();
        for i in 0..7 {
            assert!(
                captured
                    .resources
                    .get("configmaps", Some("shop"), &format!("bulk-{i}"))
                    .is_some(),
                "bulk-{i} missing"
            );
        }
        // settings + 3 left out by the rules below + 7 = 10 configmaps: 4 pages of 3.
        assert!(
            captured
                .paginated
                .contains(&("configmaps".to_string(), "shop".to_string(), 10, 4)),
            "{:?}",
            captured.paginated
        );
        let lists = api.lists.lock().unwrap();
        let configmap_pages = lists
            .iter()
            .filter(|(gr, ns, _)| gr == "configmaps" && ns.as_deref() == Some("shop"))
            .count();
        assert_eq!(configmap_pages, 4);
    }

    #[tokio::test]
    async fn an_expired_continue_token_restarts_the_list_once() {
        let mut api = cluster();
        for i in 0..4 {
            api.add("secrets", Some("shop"), &format!("s-{i}"), json!({}));
        }
        api.expire_next_token();
        let captured = capture(
            &api,
            &CaptureSpec {
                page_size: 2,
                ..spec(&["shop"])
            },
            &[],
        )
        .await
        .unwrap();
        assert_eq!(captured.resources.of_resource("secrets").count(), 5);
        let lists = api.lists.lock().unwrap();
        // The first list that needed a second page (the three namespaces) met the expired
        // token and started over.
        let fresh_starts = lists
            .iter()
            .filter(|(gr, ns, token)| gr == "namespaces" && ns.is_none() && !token)
            .count();
        assert_eq!(fresh_starts, 2, "{lists:?}");
    }

    #[tokio::test]
    async fn a_token_that_keeps_expiring_fails_the_capture_naming_the_list() {
        let api = cluster();
        api.expire_next_token();
        api.expire_next_token();
        let error = capture(
            &api,
            &CaptureSpec {
                page_size: 1,
                ..spec(&["shop"])
            },
            &[],
        )
        .await
        .unwrap_err();
        assert!(matches!(error, ResourceError::Expired { .. }), "{error}");
        assert!(error.to_string().contains("listing namespaces"), "{error}");
    }

    #[tokio::test]
    async fn resource_filters_narrow_the_backup_velero_style() {
        let only = capture(
            &cluster(),
            &CaptureSpec {
                include_resources: vec![
                    "configmaps".to_string(),
                    "widgets.example.com".to_string(),
                ],
                ..spec(&["shop"])
            },
            &[],
        )
        .await
        .unwrap();
        // Namespaces, PVs and CRDs are resources too: not included, not taken.
        assert_eq!(
            keys(&only),
            ["configmaps/shop/settings", "widgets.example.com/shop/blue"]
        );

        let without = capture(
            &cluster(),
            &CaptureSpec {
                exclude_resources: vec!["secrets".to_string(), "pvc".to_string()],
                ..spec(&["shop"])
            },
            &[],
        )
        .await
        .unwrap();
        let keys = keys(&without);
        assert!(!keys.iter().any(|k| k.starts_with("secrets/")), "{keys:?}");
        // `pvc` is no short name the fake serves: it stays as written and excludes nothing.
        assert!(
            keys.contains(&"persistentvolumes/pv-1".to_string()),
            "{keys:?}"
        );
        assert!(
            keys.contains(&"deployments.apps/shop/web".to_string()),
            "{keys:?}"
        );
    }

    #[tokio::test]
    async fn a_whole_cluster_backup_takes_the_cluster_scoped_resources_too() {
        let captured = capture(&cluster(), &spec(&[]), &[]).await.unwrap();
        let keys = keys(&captured);
        for expected in [
            "configmaps/other/elsewhere",
            "namespaces/other",
            "namespaces/shop",
            "storageclasses.storage.k8s.io/fast",
            "persistentvolumes/pv-2",
            "customresourcedefinitions.apiextensions.k8s.io/gadgets.example.com",
        ] {
            assert!(
                keys.contains(&expected.to_string()),
                "{expected} missing: {keys:?}"
            );
        }
        for absent in [
            "nodes/",
            "events",
            "podvolumebackups",
            "/stowage",
            "namespaces/stowage",
        ] {
            assert!(
                !keys.iter().any(|k| k.contains(absent)),
                "{absent} taken: {keys:?}"
            );
        }
        // Excluding a namespace turns the cluster-scoped auto rule to "what is needed".
        let captured = capture(
            &cluster(),
            &CaptureSpec {
                excluded_namespaces: vec!["other".to_string()],
                ..spec(&[])
            },
            &[],
        )
        .await
        .unwrap();
        let keys = self::keys(&captured);
        assert!(
            !keys
                .iter()
                .any(|k| k.contains("storageclasses") || k.contains("pv-2") || k.contains("other")),
            "{keys:?}"
        );
        assert!(
            keys.contains(&"persistentvolumes/pv-1".to_string()),
            "{keys:?}"
        );
    }

    #[tokio::test]
    async fn with_a_selector_over_every_namespace_only_namespaces_with_objects_are_taken() {
        let mut api = cluster();
        api.add(
            "configmaps",
            Some("other"),
            "picked",
            json!({"metadata": {"labels": {"app": "x"}}}),
        );
        api.namespace("labelled", json!({"app": "x"}));
        api.namespace("empty", json!({}));
        let captured = capture(
            &api,
            &CaptureSpec {
                label_selector: BTreeMap::from([("app".to_string(), "x".to_string())]),
                ..spec(&[])
            },
            &[],
        )
        .await
        .unwrap();
        assert_eq!(
            keys(&captured),
            [
                "configmaps/other/picked",
                "namespaces/labelled",
                "namespaces/other"
            ]
        );
    }

    #[tokio::test]
    async fn the_runners_pod_manifests_replace_the_listed_pods() {
        let mut api = cluster();
        api.add(
            "pods",
            Some("shop"),
            "web-1",
            json!({"spec": {"nodeName": "listed"}}),
        );
        let planned = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-1", "namespace": "shop"}, "spec": {"nodeName": "planned"}});
        let captured = capture(&api, &spec(&["shop"]), &[planned]).await.unwrap();
        let pod = captured
            .resources
            .get("pods", Some("shop"), "web-1")
            .unwrap();
        assert_eq!(pod["spec"]["nodeName"], "planned");
    }

    #[tokio::test]
    async fn a_failed_list_fails_the_capture_and_a_missing_namespace_is_reported() {
        let mut api = cluster();
        api.failing = vec!["secrets".to_string()];
        let error = capture(&api, &spec(&["shop"]), &[]).await.unwrap_err();
        assert!(error.to_string().contains("secrets"), "{error}");

        let mut api = cluster();
        api.failed_groups = vec!["metrics.k8s.io/v1beta1: 503".to_string()];
        api.unavailable = vec!["widgets.example.com".to_string()];
        let captured = capture(&api, &spec(&["shop", "gone"]), &[]).await.unwrap();
        let warnings = captured.warnings.join("\n");
        assert!(warnings.contains("metrics.k8s.io/v1beta1"), "{warnings}");
        assert!(warnings.contains("namespace gone"), "{warnings}");
        assert!(
            warnings.contains("listing widgets.example.com"),
            "{warnings}"
        );
        // The rest of the namespace is still taken.
        assert!(
            captured
                .resources
                .get("configmaps", Some("shop"), "settings")
                .is_some()
        );
        assert_eq!(
            captured
                .resources
                .of_resource("widgets.example.com")
                .count(),
            0
        );
    }
}
