//! Everything the orchestrator reads from or writes to the Kubernetes API: pods and their
//! volumes, PVC → PV, the agent DaemonSet's pods, objects a restore recreates, the
//! restore-helper ConfigMap, and the PodVolumeBackup/PodVolumeRestore mirrors.

pub mod agents;
pub mod mirror;

use std::collections::BTreeMap;

use ::kube::{
    Api, Client,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use k8s_openapi::api::{
    apps::v1::ReplicaSet,
    core::v1::{ConfigMap, Namespace, PersistentVolumeClaim, Pod},
};

use crate::error::{Error, Result};

/// A Kubernetes API client plus the namespace stowage itself runs in.
#[derive(Clone)]
pub struct Cluster {
    client: Client,
    stowage_namespace: String,
}

/// Renders `{a: b, c: d}` as the label selector `a=b,c=d`.
pub fn label_selector(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(",")
}

impl Cluster {
    pub fn new(client: Client, stowage_namespace: String) -> Cluster {
        Cluster {
            client,
            stowage_namespace,
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn stowage_namespace(&self) -> &str {
        &self.stowage_namespace
    }

    pub async fn namespaces(&self) -> Result<Vec<String>> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let list = api
            .list(&ListParams::default())
            .await
            .map_err(Error::kube("listing namespaces"))?;
        Ok(list
            .items
            .into_iter()
            .filter_map(|namespace| namespace.metadata.name)
            .collect())
    }

    /// Pods of `namespace` that carry every label in `labels`.
    pub async fn pods(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<Pod>> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let mut params = ListParams::default();
        if !labels.is_empty() {
            params = params.labels(&label_selector(labels));
        }
        let list = api
            .list(&params)
            .await
            .map_err(Error::kube(format!("listing pods in {namespace}")))?;
        // Filter again: the selector is a contract, and a lenient API server must not widen it.
        Ok(list
            .items
            .into_iter()
            .filter(|pod| {
                let pod_labels = pod.metadata.labels.clone().unwrap_or_default();
                labels
                    .iter()
                    .all(|(key, value)| pod_labels.get(key) == Some(value))
            })
            .collect())
    }

    pub async fn pod(&self, namespace: &str, name: &str) -> Result<Option<Pod>> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        api.get_opt(name)
            .await
            .map_err(Error::kube(format!("reading pod {namespace}/{name}")))
    }

    /// Every PersistentVolumeClaim of `namespace`.
    pub async fn pvcs(&self, namespace: &str) -> Result<Vec<PersistentVolumeClaim>> {
        let api: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), namespace);
        Ok(api
            .list(&ListParams::default())
            .await
            .map_err(Error::kube(format!("listing PVCs in {namespace}")))?
            .items)
    }

    pub async fn pvc(&self, namespace: &str, name: &str) -> Result<Option<PersistentVolumeClaim>> {
        let api: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), namespace);
        api.get_opt(name)
            .await
            .map_err(Error::kube(format!("reading PVC {namespace}/{name}")))
    }

    /// The Deployment that owns ReplicaSet `namespace/name`, if any.
    pub async fn replica_set_owner(&self, namespace: &str, name: &str) -> Result<Option<String>> {
        let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), namespace);
        let replica_set = api.get_opt(name).await.map_err(Error::kube(format!(
            "reading ReplicaSet {namespace}/{name}"
        )))?;
        Ok(replica_set.and_then(|rs| {
            rs.metadata
                .owner_references
                .unwrap_or_default()
                .into_iter()
                .find(|owner| owner.kind == "Deployment")
                .map(|owner| owner.name)
        }))
    }

    pub async fn create_pod(&self, namespace: &str, pod: &Pod) -> Result<Pod> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        api.create(&PostParams::default(), pod)
            .await
            .map_err(Error::kube(format!(
                "creating pod {namespace}/{}",
                pod.metadata.name.clone().unwrap_or_default()
            )))
    }

    /// Deletes pod `namespace/name` at once (no grace period: it only held a volume for a
    /// data-only restore); one already gone is not an error.
    pub async fn delete_pod(&self, namespace: &str, name: &str) -> Result<()> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        match api
            .delete(name, &DeleteParams::default().grace_period(0))
            .await
        {
            Ok(_) => Ok(()),
            Err(source) if is_not_found(&source) => Ok(()),
            Err(source) => Err(Error::Kube {
                action: format!("deleting pod {namespace}/{name}"),
                source,
            }),
        }
    }

    /// The restore-helper ConfigMap in the stowage namespace, found by Velero's labels.
    pub async fn restore_helper_config(&self) -> Result<BTreeMap<String, String>> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.stowage_namespace);
        let params = ListParams::default()
            .labels("velero.io/plugin-config,velero.io/restic=RestoreItemAction");
        let list = api
            .list(&params)
            .await
            .map_err(Error::kube("listing the restore-helper ConfigMap"))?;
        Ok(list
            .items
            .into_iter()
            .find(|config_map| {
                let labels = config_map.metadata.labels.clone().unwrap_or_default();
                labels.contains_key("velero.io/plugin-config")
                    && labels.get("velero.io/restic").map(String::as_str)
                        == Some("RestoreItemAction")
            })
            .and_then(|config_map| config_map.data)
            .unwrap_or_default())
    }

    /// Merge-patches `patch` into an object of `api`.
    pub async fn merge_patch<K>(
        api: &Api<K>,
        name: &str,
        patch: &serde_json::Value,
    ) -> Result<K, ::kube::Error>
    where
        K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
    }
}

pub fn is_conflict(error: &::kube::Error) -> bool {
    matches!(error, ::kube::Error::Api(status) if status.code == 409)
}

pub fn is_not_found(error: &::kube::Error) -> bool {
    matches!(error, ::kube::Error::Api(status) if status.code == 404)
}
