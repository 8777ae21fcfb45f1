//! Mirrors each repository as a Velero `ResticRepository` (velero.io/v1) in the stowage
//! namespace, so `kubectl get resticrepositories` shows phase, message and last maintenance.
//! The repo-manager's own state stays in the storage location; this copy is for people and
//! tools, and a failure to write it never fails a call.

use std::time::Duration;

use kube::{
    Api,
    api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams},
};
use serde_json::json;

use crate::{
    error::RepoError,
    state::{Phase, RepositoryRecord},
};

/// The backup storage location name the mirrored objects carry (Velero's default).
const STORAGE_LOCATION: &str = "default";

#[derive(Clone)]
pub struct RepositoryMirror {
    api: Api<DynamicObject>,
}

/// `<namespace>-default`: one object per namespace and location, found again after restarts.
pub fn object_name(namespace: &str) -> String {
    format!("{namespace}-{STORAGE_LOCATION}")
}

/// Go's `time.Duration` text (`168h0m0s`), as Velero writes `maintenanceFrequency`.
pub fn go_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    format!(
        "{}h{}m{}s",
        seconds / 3600,
        (seconds % 3600) / 60,
        seconds % 60
    )
}

fn phase(phase: Phase) -> &'static str {
    match phase {
        Phase::Ready => "Ready",
        Phase::NotReady | Phase::Failed => "NotReady",
    }
}

/// The object for `record`: spec and status together (the CRD has no status subresource).
pub fn object(record: &RepositoryRecord, maintenance_frequency: Duration) -> serde_json::Value {
    json!({
        "apiVersion": "velero.io/v1",
        "kind": "ResticRepository",
        "metadata": {
            "name": object_name(&record.namespace),
            "labels": {
                "app.kubernetes.io/managed-by": "stowage",
                "velero.io/volume-namespace": record.namespace,
                "velero.io/storage-location": STORAGE_LOCATION,
            },
        },
        "spec": {
            "volumeNamespace": record.namespace,
            "backupStorageLocation": STORAGE_LOCATION,
            "resticIdentifier": record.url,
            "maintenanceFrequency": go_duration(maintenance_frequency),
        },
        "status": {
            "phase": phase(record.phase),
            "message": record.message,
            // Velero's "last maintenance" is the last prune.
            "lastMaintenanceTime": record.prune.last_finished.map(|time| time.to_rfc3339()),
        },
    })
}

impl RepositoryMirror {
    pub fn new(client: kube::Client, stowage_namespace: &str) -> Self {
        let resource = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("velero.io", "v1", "ResticRepository"),
            "resticrepositories",
        );
        RepositoryMirror {
            api: Api::namespaced_with(client, stowage_namespace, &resource),
        }
    }

    /// Creates or merge-patches the object for `record`.
    pub async fn write(
        &self,
        record: &RepositoryRecord,
        maintenance_frequency: Duration,
    ) -> Result<(), RepoError> {
        let name = object_name(&record.namespace);
        let body = object(record, maintenance_frequency);
        let kube_error = |source| RepoError::Kubernetes {
            name: format!("resticrepositories/{name}"),
            source,
        };
        if self.api.get_opt(&name).await.map_err(kube_error)?.is_none() {
            let object: DynamicObject =
                serde_json::from_value(body.clone()).map_err(|error| RepoError::Corrupt {
                    path: name.clone(),
                    reason: error.to_string(),
                })?;
            match self.api.create(&PostParams::default(), &object).await {
                Ok(_) => return Ok(()),
                // Created meanwhile: fall through to the patch.
                Err(kube::Error::Api(status)) if status.code == 409 => {}
                Err(error) => return Err(kube_error(error)),
            }
        }
        self.api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&body))
            .await
            .map_err(kube_error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::MaintenanceRecord;

    #[test]
    fn go_durations_match_velero_text() {
        assert_eq!(go_duration(Duration::from_secs(7 * 86_400)), "168h0m0s");
        assert_eq!(go_duration(Duration::from_secs(3_725)), "1h2m5s");
    }

    #[test]
    fn object_carries_spec_and_status() {
        let mut record = RepositoryRecord {
            namespace: "team-a".into(),
            url: "s3:http://h/b/restic/team-a".into(),
            phase: Phase::Failed,
            message: "wrong password".into(),
            created: "2026-01-01T00:00:00Z".parse().unwrap(),
            secret_name: String::new(),
            check: MaintenanceRecord::default(),
            prune: MaintenanceRecord::default(),
        };
        let value = object(&record, Duration::from_secs(3600));
        assert_eq!(value["metadata"]["name"], "team-a-default");
        assert_eq!(value["spec"]["maintenanceFrequency"], "1h0m0s");
        assert_eq!(
            value["spec"]["resticIdentifier"],
            "s3:http://h/b/restic/team-a"
        );
        assert_eq!(value["status"]["phase"], "NotReady");
        assert!(value["status"]["lastMaintenanceTime"].is_null());

        record.phase = Phase::Ready;
        record.prune.record(
            "2026-01-02T00:00:00Z".parse().unwrap(),
            "2026-01-02T00:01:00Z".parse().unwrap(),
            None,
        );
        let value = object(&record, Duration::from_secs(3600));
        assert_eq!(value["status"]["phase"], "Ready");
        assert_eq!(
            value["status"]["lastMaintenanceTime"],
            "2026-01-02T00:01:00+00:00"
        );
    }
}
