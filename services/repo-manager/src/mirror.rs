//! Mirrors each repository as a Velero `ResticRepository` (velero.io/v1) in the stowage
//! namespace, so `kubectl get resticrepositories` shows phase, message and last maintenance.
//! The repo-manager's own state stays in the storage location; this copy is for people and
//! tools, and a failure to write it never fails a call.

use std::time::Duration;

use kube::{
    Api,
    api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams},
};
use stowage_contract::{
    objects::{
        self, DEFAULT_STORAGE_LOCATION, RepositoryPhase, ResticRepository, ResticRepositorySpec,
        ResticRepositoryStatus,
    },
    tags::labels,
};

use crate::{
    error::RepoError,
    state::{Phase, RepositoryRecord},
};

#[derive(Clone)]
pub struct RepositoryMirror {
    api: Api<DynamicObject>,
}

/// `<namespace>-default`: one object per namespace and location, found again after restarts.
pub fn object_name(namespace: &str) -> String {
    format!("{namespace}-{DEFAULT_STORAGE_LOCATION}")
}

/// Go's `time.Duration` text (`168h0m0s`), as Velero writes `maintenanceFrequency`.
pub fn go_duration(duration: Duration) -> String {
    objects::go_duration(duration)
}

fn phase(phase: Phase) -> RepositoryPhase {
    match phase {
        Phase::Ready => RepositoryPhase::Ready,
        Phase::NotReady | Phase::Failed => RepositoryPhase::NotReady,
    }
}

fn time(
    time: chrono::DateTime<chrono::Utc>,
) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time> {
    let timestamp =
        k8s_openapi::jiff::Timestamp::new(time.timestamp(), time.timestamp_subsec_nanos() as i32)
            .ok()?;
    Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        timestamp,
    ))
}

/// The object for `record`: spec and status together (the CRD has no status subresource).
pub fn object(record: &RepositoryRecord, maintenance_frequency: Duration) -> serde_json::Value {
    let metadata = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        name: Some(object_name(&record.namespace)),
        labels: Some(
            [
                ("app.kubernetes.io/managed-by", "stowage"),
                (labels::VOLUME_NAMESPACE, record.namespace.as_str()),
                (labels::STORAGE_LOCATION, DEFAULT_STORAGE_LOCATION),
            ]
            .into_iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect(),
        ),
        ..Default::default()
    };
    let mut object = ResticRepository::new(
        metadata,
        ResticRepositorySpec {
            backup_storage_location: DEFAULT_STORAGE_LOCATION.to_string(),
            volume_namespace: record.namespace.clone(),
            restic_identifier: record.url.clone(),
            maintenance_frequency: go_duration(maintenance_frequency),
        },
    );
    object.status = ResticRepositoryStatus {
        phase: phase(record.phase),
        message: record.message.clone(),
        // Velero's "last maintenance" is the last prune.
        last_maintenance_time: record.prune.last_finished.and_then(time),
    };
    // Plain structs of strings and maps: serializing them cannot fail.
    serde_json::to_value(object).unwrap_or_default()
}

impl RepositoryMirror {
    pub fn new(client: kube::Client, stowage_namespace: &str) -> Self {
        let resource = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(objects::GROUP, objects::VERSION, ResticRepository::KIND),
            ResticRepository::PLURAL,
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
            "2026-01-02T00:01:00Z"
        );
    }
}
