//! An in-memory API server for the capture's tests: served resources, objects, pages cut at
//! `limit` with an opaque continue token, label selectors of `a=b` terms, and tokens that can
//! be made to expire once.

use std::{
    collections::BTreeMap,
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use serde_json::{Value, json};

use super::api::{ApiResource, Discovered, ListPage, ResourceApi, ResourceError};

#[derive(Default)]
pub struct FakeApi {
    pub resources: Vec<ApiResource>,
    pub failed_groups: Vec<String>,
    /// `(group resource, namespace or "", name)` → object.
    objects: BTreeMap<(String, String, String), Value>,
    /// Continue tokens the next use of which answers 410 Gone.
    expire_next_token: AtomicUsize,
    /// Every list request: `(group resource, namespace, had a token)`.
    pub lists: Mutex<Vec<(String, Option<String>, bool)>>,
    /// Resources whose list fails.
    pub failing: Vec<String>,
    /// Resources no longer served (their list answers 404).
    pub unavailable: Vec<String>,
}

pub fn resource(group: &str, plural: &str, kind: &str, namespaced: bool) -> ApiResource {
    ApiResource {
        group: group.to_string(),
        version: "v1".to_string(),
        plural: plural.to_string(),
        singular: kind.to_ascii_lowercase(),
        short_names: Vec::new(),
        kind: kind.to_string(),
        namespaced,
        verbs: vec!["list".to_string(), "get".to_string()],
    }
}

impl FakeApi {
    /// The resources a small cluster serves, a CRD's `widgets.example.com` among them.
    pub fn cluster() -> FakeApi {
        FakeApi {
            resources: vec![
                resource("", "namespaces", "Namespace", false),
                resource("", "pods", "Pod", true),
                resource("", "persistentvolumeclaims", "PersistentVolumeClaim", true),
                resource("", "persistentvolumes", "PersistentVolume", false),
                resource("", "configmaps", "ConfigMap", true),
                resource("", "secrets", "Secret", true),
                resource("", "events", "Event", true),
                resource("", "nodes", "Node", false),
                resource("apps", "deployments", "Deployment", true),
                resource("events.k8s.io", "events", "Event", true),
                resource("storage.k8s.io", "storageclasses", "StorageClass", false),
                resource(
                    "apiextensions.k8s.io",
                    "customresourcedefinitions",
                    "CustomResourceDefinition",
                    false,
                ),
                resource("velero.io", "podvolumebackups", "PodVolumeBackup", true),
                resource("example.com", "widgets", "Widget", true),
            ],
            ..Default::default()
        }
    }

    /// Adds an object of `group_resource` (which must be served).
    pub fn add(&mut self, group_resource: &str, namespace: Option<&str>, name: &str, extra: Value) {
        let resource = self
            .resources
            .iter()
            .find(|r| r.group_resource() == group_resource)
            .unwrap_or_else(|| panic!("{group_resource} is not served"))
            .clone();
        let mut object = json!({"metadata": {"name": name, "uid": format!("uid-{name}")}});
        if let Some(namespace) = namespace {
            object["metadata"]["namespace"] = json!(namespace);
        }
        merge(&mut object, extra);
        // Built-in list items come without their type, like the API server sends them; the
        // adapter fills it in (see kube.rs), so the fake does the same here.
        object["apiVersion"] = json!(resource.api_version());
        object["kind"] = json!(resource.kind);
        self.objects.insert(
            (
                group_resource.to_string(),
                namespace.unwrap_or_default().to_string(),
                name.to_string(),
            ),
            object,
        );
    }

    pub fn namespace(&mut self, name: &str, labels: Value) {
        self.add(
            "namespaces",
            None,
            name,
            json!({"metadata": {"labels": labels}}),
        );
    }

    pub fn expire_next_token(&self) {
        self.expire_next_token.fetch_add(1, Ordering::SeqCst);
    }
}

fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(into), Value::Object(from)) => {
            for (key, value) in from {
                merge(into.entry(key).or_insert(Value::Null), value);
            }
        }
        (into, from) => *into = from,
    }
}

fn matches(object: &Value, selector: &str) -> bool {
    selector.split(',').filter(|t| !t.is_empty()).all(|term| {
        let (key, value) = term.split_once('=').unwrap_or((term, ""));
        object
            .pointer("/metadata/labels")
            .and_then(|labels| labels.get(key))
            .and_then(Value::as_str)
            == Some(value)
    })
}

impl ResourceApi for FakeApi {
    async fn discover(&self) -> Result<Discovered, ResourceError> {
        Ok(Discovered {
            resources: self.resources.clone(),
            failed_groups: self.failed_groups.clone(),
        })
    }

    async fn list_page(
        &self,
        resource: &ApiResource,
        namespace: Option<&str>,
        label_selector: &str,
        limit: u32,
        continue_token: Option<&str>,
    ) -> Result<ListPage, ResourceError> {
        let group_resource = resource.group_resource();
        self.lists.lock().unwrap().push((
            group_resource.clone(),
            namespace.map(str::to_string),
            continue_token.is_some(),
        ));
        if self.failing.contains(&group_resource) {
            return Err(ResourceError::List {
                what: group_resource,
                message: "the server is currently unable to handle the request".to_string(),
            });
        }
        if self.unavailable.contains(&group_resource) {
            return Err(ResourceError::Unavailable {
                what: group_resource,
                message: "the server could not find the requested resource".to_string(),
            });
        }
        if continue_token.is_some()
            && self
                .expire_next_token
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            return Err(ResourceError::Expired {
                what: group_resource,
                message: "410 Gone".to_string(),
            });
        }
        // The token is the key of the last object of the previous page, hex-encoded so that
        // nothing can read meaning into it.
        let after: Option<String> = continue_token.map(|token| {
            let bytes: Vec<u8> = (0..token.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&token[i..i + 2], 16).unwrap())
                .collect();
            String::from_utf8(bytes).unwrap()
        });
        let selected: Vec<(String, &Value)> = self
            .objects
            .iter()
            .filter(|((gr, ns, _), _)| {
                *gr == group_resource && namespace.is_none_or(|wanted| wanted == ns)
            })
            .filter(|(_, object)| matches(object, label_selector))
            .map(|((_, ns, name), object)| (format!("{ns}/{name}"), object))
            .filter(|(key, _)| after.as_ref().is_none_or(|after| key > after))
            .collect();
        let limit = limit as usize;
        let page: Vec<Value> = selected
            .iter()
            .take(limit)
            .map(|(_, o)| (*o).clone())
            .collect();
        let continue_token = (selected.len() > limit).then(|| {
            selected[limit - 1]
                .0
                .bytes()
                .map(|b| format!("{b:02x}"))
                .collect()
        });
        Ok(ListPage {
            items: page,
            continue_token,
        })
    }

    async fn get(
        &self,
        resource: &ApiResource,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<Value>, ResourceError> {
        Ok(self
            .objects
            .get(&(
                resource.group_resource(),
                namespace.unwrap_or_default().to_string(),
                name.to_string(),
            ))
            .cloned())
    }
}
