//! An in-memory API server for the resource restore's tests: the rules a restore meets
//! (AlreadyExists on create, Conflict on a stale resourceVersion, new uids, CRDs served once
//! created and Established after a delay, namespaces Terminating until a given time with
//! creates in them Forbidden) and refusals to order.

use std::{
    collections::BTreeMap,
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use serde_json::{Value, json};
use tokio::time::Instant;

use super::api::{ObjectApi, ObjectError};
use crate::resources::{api::ApiResource, fake::resource};

type Key = (String, String, String);

#[derive(Default)]
pub struct State {
    pub served: Vec<ApiResource>,
    /// `(group resource, namespace or "", name)` → object.
    pub objects: BTreeMap<Key, Value>,
    next: u64,
    /// Every write in order: `create <path>`, `replace <path>`.
    pub writes: Vec<String>,
    /// Creates of these group resources are refused with this Status: `(code, reason, message)`.
    pub refuse: BTreeMap<String, (u16, String, String)>,
    /// Replaces of these group resources are refused with this Status.
    pub refuse_replace: BTreeMap<String, (u16, String, String)>,
    /// When each created CRD becomes Established, and the resource it then serves.
    established_at: BTreeMap<String, (Instant, ApiResource)>,
    /// Namespaces being deleted and when the namespace controller removes them (with their
    /// objects); `None`: never (a finalizer nobody removes).
    terminating: BTreeMap<String, Option<Instant>>,
}

pub struct FakeObjects {
    state: Mutex<State>,
    /// How long a created CRD takes to be Established.
    pub establish_after: Duration,
}

pub fn served() -> Vec<ApiResource> {
    let mut crds = resource(
        "apiextensions.k8s.io",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        false,
    );
    crds.short_names = vec!["crd".into()];
    vec![
        resource("", "namespaces", "Namespace", false),
        resource("", "pods", "Pod", true),
        resource("", "persistentvolumeclaims", "PersistentVolumeClaim", true),
        resource("", "persistentvolumes", "PersistentVolume", false),
        resource("", "configmaps", "ConfigMap", true),
        resource("", "secrets", "Secret", true),
        resource("", "serviceaccounts", "ServiceAccount", true),
        resource("", "services", "Service", true),
        resource("", "events", "Event", true),
        resource("apps", "deployments", "Deployment", true),
        resource("apps", "replicasets", "ReplicaSet", true),
        resource("apps", "statefulsets", "StatefulSet", true),
        resource(
            "rbac.authorization.k8s.io",
            "rolebindings",
            "RoleBinding",
            true,
        ),
        crds,
    ]
}

fn path(key: &Key) -> String {
    if key.1.is_empty() {
        format!("{}/{}", key.0, key.2)
    } else {
        format!("{}/{}/{}", key.0, key.1, key.2)
    }
}

impl FakeObjects {
    pub fn new() -> FakeObjects {
        FakeObjects {
            state: Mutex::new(State {
                served: served(),
                ..Default::default()
            }),
            establish_after: Duration::from_secs(3),
        }
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An object already in the cluster.
    pub fn add(&self, group_resource: &str, namespace: Option<&str>, object: Value) {
        let mut state = self.state();
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let key = (
            group_resource.to_string(),
            namespace.unwrap_or_default().to_string(),
            name,
        );
        let stored = state.store(key.clone(), object);
        state.objects.insert(key, stored);
    }

    pub fn object(
        &self,
        group_resource: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        self.state()
            .objects
            .get(&(
                group_resource.to_string(),
                namespace.unwrap_or_default().to_string(),
                name.to_string(),
            ))
            .cloned()
    }

    /// Deletes namespace `name` as the API server does: Terminating (deletionTimestamp, phase)
    /// until `gone_after` from now, then removed with everything in it; `None` keeps it
    /// Terminating for good.
    pub fn terminate(&self, name: &str, gone_after: Option<Duration>) {
        let mut state = self.state();
        let key = ("namespaces".to_string(), String::new(), name.to_string());
        if let Some(namespace) = state.objects.get_mut(&key) {
            namespace["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
            namespace["status"] = json!({"phase": "Terminating"});
        }
        state.terminating.insert(
            name.to_string(),
            gone_after.map(|after| Instant::now() + after),
        );
    }

    pub fn writes(&self) -> Vec<String> {
        self.state().writes.clone()
    }
}

impl State {
    /// Removes the Terminating namespaces whose time has come, with their objects.
    fn reap(&mut self) {
        let now = Instant::now();
        let gone: Vec<String> = self
            .terminating
            .iter()
            .filter(|(_, at)| at.is_some_and(|at| now >= at))
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            self.terminating.remove(&name);
            self.objects.retain(|key, _| {
                key.1 != name && *key != ("namespaces".to_string(), String::new(), name.clone())
            });
        }
    }

    /// Serves the resources of the CRDs Established by now.
    fn promote(&mut self) {
        let now = Instant::now();
        for (at, resource) in self.established_at.values() {
            if now >= *at && !self.served.contains(resource) {
                self.served.push(resource.clone());
            }
        }
    }

    /// The object with a new uid and resourceVersion, as the API server stores it.
    fn store(&mut self, key: Key, mut object: Value) -> Value {
        self.next += 1;
        let metadata = &mut object["metadata"];
        if metadata.get("uid").is_none() {
            metadata["uid"] = json!(format!("uid-{}-{}", key.2, self.next));
        }
        metadata["resourceVersion"] = json!(self.next.to_string());
        if !key.1.is_empty() {
            metadata["namespace"] = json!(key.1);
        }
        object
    }
}

fn refused(what: String, code: u16, reason: &str, message: String) -> ObjectError {
    ObjectError::Refused {
        what,
        code,
        reason: reason.to_string(),
        message,
    }
}

#[tonic::async_trait]
impl ObjectApi for FakeObjects {
    async fn served(&self) -> Result<Vec<ApiResource>, ObjectError> {
        let mut state = self.state();
        state.promote();
        Ok(state.served.clone())
    }

    async fn get(
        &self,
        resource: &ApiResource,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<Value>, ObjectError> {
        let mut state = self.state();
        state.reap();
        let key = (
            resource.group_resource(),
            namespace.unwrap_or_default().to_string(),
            name.to_string(),
        );
        let established = state
            .established_at
            .get(name)
            .is_some_and(|(at, _)| Instant::now() >= *at);
        let Some(object) = state.objects.get_mut(&key) else {
            return Ok(None);
        };
        if key.0 == "customresourcedefinitions.apiextensions.k8s.io" && established {
            object["status"] = json!({"conditions": [{"type": "Established", "status": "True"}]});
        }
        Ok(Some(object.clone()))
    }

    async fn create(
        &self,
        resource: &ApiResource,
        namespace: Option<&str>,
        object: &Value,
    ) -> Result<Value, ObjectError> {
        let mut state = self.state();
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let key = (
            resource.group_resource(),
            namespace.unwrap_or_default().to_string(),
            name.clone(),
        );
        if let Some((code, reason, message)) = state.refuse.get(&key.0).cloned() {
            return Err(refused(path(&key), code, &reason, message));
        }
        state.reap();
        if state.terminating.contains_key(&key.1) {
            // The NamespaceLifecycle admission plugin's answer.
            return Err(refused(
                path(&key),
                403,
                "Forbidden",
                format!(
                    "unable to create new content in namespace {} because it is being terminated",
                    key.1
                ),
            ));
        }
        state.promote();
        if !state.served.iter().any(|r| r.group_resource() == key.0) {
            return Err(refused(
                path(&key),
                404,
                "NotFound",
                "the server could not find the requested resource".into(),
            ));
        }
        if object.pointer("/metadata/uid").is_some()
            || object.pointer("/metadata/resourceVersion").is_some()
        {
            return Err(refused(
                path(&key),
                422,
                "Invalid",
                "metadata.uid and metadata.resourceVersion must not be set on create".into(),
            ));
        }
        if state.objects.contains_key(&key) {
            return Err(refused(
                path(&key),
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", resource.plural),
            ));
        }
        state.writes.push(format!("create {}", path(&key)));
        let stored = state.store(key.clone(), object.clone());
        state.objects.insert(key.clone(), stored.clone());
        if key.0 == "customresourcedefinitions.apiextensions.k8s.io" {
            let at = Instant::now() + self.establish_after;
            let group = object
                .pointer("/spec/group")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let plural = object
                .pointer("/spec/names/plural")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let kind = object
                .pointer("/spec/names/kind")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let namespaced =
                object.pointer("/spec/scope").and_then(Value::as_str) == Some("Namespaced");
            let served = resource_of(group, plural, kind, namespaced);
            state.established_at.insert(name, (at, served));
        }
        Ok(stored)
    }

    async fn replace(
        &self,
        resource: &ApiResource,
        namespace: Option<&str>,
        name: &str,
        object: &Value,
    ) -> Result<Value, ObjectError> {
        let mut state = self.state();
        let key = (
            resource.group_resource(),
            namespace.unwrap_or_default().to_string(),
            name.to_string(),
        );
        if let Some((code, reason, message)) = state.refuse_replace.get(&key.0).cloned() {
            return Err(refused(path(&key), code, &reason, message));
        }
        let Some(live) = state.objects.get(&key).cloned() else {
            return Err(refused(
                path(&key),
                404,
                "NotFound",
                format!("{name} not found"),
            ));
        };
        if object.pointer("/metadata/resourceVersion") != live.pointer("/metadata/resourceVersion")
        {
            return Err(refused(
                path(&key),
                409,
                "Conflict",
                "the object has been modified; please apply your changes to the latest version"
                    .into(),
            ));
        }
        state.writes.push(format!("replace {}", path(&key)));
        let mut object = object.clone();
        object["metadata"]["uid"] = live["metadata"]["uid"].clone();
        let stored = state.store(key.clone(), object);
        state.objects.insert(key, stored.clone());
        Ok(stored)
    }
}

fn resource_of(group: &str, plural: &str, kind: &str, namespaced: bool) -> ApiResource {
    resource(group, plural, kind, namespaced)
}
