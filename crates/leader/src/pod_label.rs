//! The leader's label on its own Pod (`stowage.io/leader: "true"`), which the services'
//! Kubernetes Services select: both replicas are ready (so rollouts and drains count the
//! standby as available), and the label is what routes callers to the leader only. A process
//! clears the label from its Pod when it starts (a container restarted after losing its Lease
//! still carries it), before it may lead, and sets it once it leads with its service open.
//! These are the replica's own writes about itself, so they go through the election's client,
//! not the fenced one: a leader must be able to label itself.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// The label the leader sets on its own Pod and the Services select.
pub const LEADER_LABEL: &str = "stowage.io/leader";

/// One replica's Pod, as its election labels it.
#[derive(Clone)]
pub struct PodLabel {
    pods: Api<Pod>,
    namespace: String,
    name: String,
    retry_period: Duration,
}

impl PodLabel {
    pub(crate) fn new(
        client: kube::Client,
        namespace: &str,
        name: &str,
        retry_period: Duration,
    ) -> PodLabel {
        PodLabel {
            pods: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            name: name.to_string(),
            retry_period,
        }
    }

    /// `namespace/name` of the Pod, as messages name it.
    pub fn pod(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Removes the label from this replica's Pod, retried every retry period until the API
    /// server accepts it (or answers that the Pod does not exist: then nothing carries the
    /// label). False when `stop` fires first.
    pub async fn clear(&self, stop: &CancellationToken) -> bool {
        // JSON merge patch: a null removes the key, and removing an absent one is no error.
        self.write(
            json!({"metadata": {"labels": {LEADER_LABEL: null}}}),
            true,
            stop,
        )
        .await
    }

    /// Sets the label on this replica's Pod, retried every retry period until the API server
    /// accepts it. False when `stop` fires first.
    pub async fn set(&self, stop: &CancellationToken) -> bool {
        self.write(
            json!({"metadata": {"labels": {LEADER_LABEL: "true"}}}),
            false,
            stop,
        )
        .await
    }

    async fn write(
        &self,
        patch: serde_json::Value,
        missing_is_done: bool,
        stop: &CancellationToken,
    ) -> bool {
        let pod = self.pod();
        let what = if missing_is_done {
            "removing the leader label from this replica's Pod"
        } else {
            "labelling this replica's Pod as the leader's"
        };
        let (params, patch) = (PatchParams::default(), Patch::Merge(&patch));
        loop {
            let written = tokio::select! {
                () = stop.cancelled() => return false,
                written = self.pods.patch(&self.name, &params, &patch) => written,
            };
            match written {
                Ok(_) => {
                    tracing::info!(pod = %pod, label = LEADER_LABEL, "{what}: done");
                    return true;
                }
                Err(kube::Error::Api(status)) if missing_is_done && status.code == 404 => {
                    tracing::warn!(
                        pod = %pod,
                        "{what}: no such Pod (POD_NAME and POD_NAMESPACE name this replica's \
                         Pod in the manifests), so none carries the label"
                    );
                    return true;
                }
                Err(error) => tracing::warn!(
                    pod = %pod,
                    %error,
                    retry_in = ?self.retry_period,
                    "{what} failed; retrying"
                ),
            }
            tokio::select! {
                () = stop.cancelled() => return false,
                () = tokio::time::sleep(self.retry_period) => {}
            }
        }
    }
}
