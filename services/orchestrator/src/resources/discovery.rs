//! Discovery documents into [`ApiResource`]s: each group at the version the API server prefers,
//! subresources (`pods/status`) and resources that cannot be listed left out, and a resource
//! served by two groups (Velero's "cohabiting" resources, `deployments` in `extensions` and
//! `apps`) kept once, in its current group.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{APIGroupList, APIResourceList};

use super::api::ApiResource;

/// Resources served under two groups; the second group of each pair is the one kept.
const COHABITING: &[(&str, &str, &str)] = &[
    ("deployments", "extensions", "apps"),
    ("daemonsets", "extensions", "apps"),
    ("replicasets", "extensions", "apps"),
    ("networkpolicies", "extensions", "networking.k8s.io"),
    ("events", "", "events.k8s.io"),
];

/// The resources of one APIResourceList (`/api/v1` or `/apis/<group>/<version>`).
pub fn resources_of(list: &APIResourceList, group: &str, version: &str) -> Vec<ApiResource> {
    list.resources
        .iter()
        // `pods/status`, `deployments/scale`: parts of an object, not objects.
        .filter(|resource| !resource.name.contains('/'))
        .map(|resource| ApiResource {
            group: group.to_string(),
            version: version.to_string(),
            plural: resource.name.clone(),
            singular: resource.singular_name.clone(),
            short_names: resource.short_names.clone().unwrap_or_default(),
            kind: resource.kind.clone(),
            namespaced: resource.namespaced,
            verbs: resource.verbs.clone(),
        })
        .collect()
}

/// `(group, preferred version)` of every group of an APIGroupList, in the API server's order
/// (which is its priority order). A group without a preferred version takes its first one.
pub fn preferred_versions(groups: &APIGroupList) -> Vec<(String, String)> {
    groups
        .groups
        .iter()
        .filter_map(|group| {
            let version = group
                .preferred_version
                .as_ref()
                .map(|preferred| preferred.version.clone())
                .or_else(|| group.versions.first().map(|v| v.version.clone()))?;
            Some((group.name.clone(), version))
        })
        .collect()
}

/// Drops the older copy of each cohabiting resource when both groups serve it, and every
/// resource that cannot be listed.
pub fn settle(resources: Vec<ApiResource>) -> Vec<ApiResource> {
    let served = |plural: &str, group: &str| {
        resources
            .iter()
            .any(|r| r.plural == plural && r.group == group)
    };
    let shadowed: Vec<(&str, &str)> = COHABITING
        .iter()
        .filter(|(plural, _, current)| served(plural, current))
        .map(|(plural, old, _)| (*plural, *old))
        .collect();
    resources
        .iter()
        .filter(|r| r.can("list"))
        .filter(|r| {
            !shadowed
                .iter()
                .any(|(plural, old)| r.plural == *plural && r.group == *old)
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn resource_list(value: serde_json::Value) -> APIResourceList {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn subresources_are_not_resources() {
        let list = resource_list(json!({
            "groupVersion": "v1",
            "resources": [
                {"name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod",
                 "verbs": ["get", "list"], "shortNames": ["po"]},
                {"name": "pods/status", "singularName": "", "namespaced": true, "kind": "Pod",
                 "verbs": ["get", "patch"]},
                {"name": "nodes", "singularName": "node", "namespaced": false, "kind": "Node",
                 "verbs": ["get", "list"]},
            ]
        }));
        let resources = resources_of(&list, "", "v1");
        let names: Vec<_> = resources.iter().map(|r| r.group_resource()).collect();
        assert_eq!(names, ["pods", "nodes"]);
        assert_eq!(resources[0].short_names, ["po"]);
        assert!(resources[0].namespaced && !resources[1].namespaced);
        assert_eq!(resources[0].api_version(), "v1");
    }

    #[test]
    fn each_group_is_read_at_its_preferred_version() {
        let groups: APIGroupList = serde_json::from_value(json!({
            "groups": [
                {"name": "apps", "versions": [{"groupVersion": "apps/v1", "version": "v1"}],
                 "preferredVersion": {"groupVersion": "apps/v1", "version": "v1"}},
                {"name": "example.com",
                 "versions": [{"groupVersion": "example.com/v1beta1", "version": "v1beta1"},
                              {"groupVersion": "example.com/v1", "version": "v1"}],
                 "preferredVersion": {"groupVersion": "example.com/v1", "version": "v1"}},
                {"name": "bare", "versions": [{"groupVersion": "bare/v2", "version": "v2"}]},
            ]
        }))
        .unwrap();
        assert_eq!(
            preferred_versions(&groups),
            [
                ("apps".to_string(), "v1".to_string()),
                ("example.com".to_string(), "v1".to_string()),
                ("bare".to_string(), "v2".to_string()),
            ]
        );
    }

    fn resource(group: &str, plural: &str, verbs: &[&str]) -> ApiResource {
        ApiResource {
            group: group.to_string(),
            version: "v1".to_string(),
            plural: plural.to_string(),
            singular: String::new(),
            short_names: Vec::new(),
            kind: String::new(),
            namespaced: true,
            verbs: verbs.iter().map(|v| v.to_string()).collect(),
        }
    }

    #[test]
    fn cohabiting_resources_are_kept_in_their_current_group_only() {
        let settled = settle(vec![
            resource("", "events", &["list"]),
            resource("extensions", "deployments", &["list"]),
            resource("apps", "deployments", &["list"]),
            resource("events.k8s.io", "events", &["list"]),
            resource("extensions", "ingresses", &["list"]),
            resource("", "bindings", &["create"]),
        ]);
        let names: Vec<_> = settled.iter().map(|r| r.group_resource()).collect();
        assert_eq!(
            names,
            [
                "deployments.apps",
                "events.events.k8s.io",
                "ingresses.extensions"
            ]
        );
        // Without the newer group the old one stays.
        let settled = settle(vec![resource("extensions", "deployments", &["list"])]);
        assert_eq!(settled.len(), 1);
    }

    #[test]
    fn collection_paths_follow_the_group_and_scope() {
        let pods = resource("", "pods", &["list"]);
        assert_eq!(pods.collection_path(Some("a")), "/api/v1/namespaces/a/pods");
        assert_eq!(pods.collection_path(None), "/api/v1/pods");
        let mut crds = resource(
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            &["list"],
        );
        crds.namespaced = false;
        assert_eq!(
            crds.collection_path(Some("a")),
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
        );
    }
}
