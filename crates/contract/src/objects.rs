//! The `velero.io/v1` objects stowage mirrors into the cluster, typed to match the CRDs shipped
//! under `deploy/kustomize/base/crds` field for field: PodVolumeBackup and PodVolumeRestore (one
//! per pod volume of a backup or restore, written by the orchestrator) and ResticRepository (one
//! per namespace's repository, written by the repo-manager). The CRDs have no status
//! subresource, so spec and status travel together. A unit test validates a fully filled object
//! of each against its CRD's schema and fails when the CRD has a field the type lacks.

use std::collections::BTreeMap;

use k8s_openapi::{
    NamespaceResourceScope,
    api::core::v1::ObjectReference,
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
};
use serde::{Deserialize, Serialize};

use crate::phase::VolumePhase;

/// The API group and version of every Velero object.
pub const GROUP: &str = "velero.io";
pub const VERSION: &str = "v1";
pub const API_VERSION: &str = "velero.io/v1";
/// `spec.backupStorageLocation`: Velero's default location, the one stowage writes to.
pub const DEFAULT_STORAGE_LOCATION: &str = "default";
/// `spec.uploaderType`: restic, the only uploader stowage runs.
pub const UPLOADER_RESTIC: &str = "restic";
/// `spec.pod.kind`.
pub const POD_KIND: &str = "Pod";

/// Declares a Velero object kind: the struct (`apiVersion` and `kind` filled in when a document
/// lacks them, `metadata`, `spec`, `status`), its `KIND`, `PLURAL` and `new`, and the
/// `k8s_openapi` traits kube needs. The kind is the type's name. `$kind_default` is the path
/// serde calls for a missing `kind`, `"<Type>::kind"`: serde takes a path only as a string
/// literal, which a macro cannot build from the type's name.
macro_rules! velero_object {
    (
        $(#[$doc:meta])*
        $type:ident {
            plural: $plural:literal,
            kind_default: $kind_default:literal,
            spec: $spec:ty,
            status: $status:ty $(,)?
        }
    ) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        #[serde(rename_all = "camelCase")]
        pub struct $type {
            #[serde(default = "api_version")]
            pub api_version: String,
            #[serde(default = $kind_default)]
            pub kind: String,
            #[serde(default)]
            pub metadata: ObjectMeta,
            pub spec: $spec,
            #[serde(default)]
            pub status: $status,
        }

        impl $type {
            pub const KIND: &'static str = stringify!($type);
            pub const PLURAL: &'static str = $plural;

            fn kind() -> String {
                Self::KIND.to_string()
            }

            pub fn new(metadata: ObjectMeta, spec: $spec) -> $type {
                $type {
                    api_version: api_version(),
                    kind: Self::kind(),
                    metadata,
                    spec,
                    status: <$status>::default(),
                }
            }
        }

        impl k8s_openapi::Resource for $type {
            const API_VERSION: &'static str = API_VERSION;
            const GROUP: &'static str = GROUP;
            const KIND: &'static str = stringify!($type);
            const VERSION: &'static str = VERSION;
            const URL_PATH_SEGMENT: &'static str = $plural;
            type Scope = NamespaceResourceScope;
        }

        impl k8s_openapi::Metadata for $type {
            type Ty = ObjectMeta;

            fn metadata(&self) -> &ObjectMeta {
                &self.metadata
            }

            fn metadata_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

fn api_version() -> String {
    API_VERSION.to_string()
}

/// How far restic has come (`status.progress`, Velero's `PodVolumeOperationProgress`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    #[serde(default)]
    pub total_bytes: u64,
    #[serde(default)]
    pub bytes_done: u64,
}

/// A reference to the pod that mounts the volume, as Velero writes `spec.pod`.
pub fn pod_reference(namespace: &str, name: &str, uid: &str) -> ObjectReference {
    ObjectReference {
        kind: Some(POD_KIND.to_string()),
        namespace: Some(namespace.to_string()),
        name: Some(name.to_string()),
        uid: Some(uid.to_string()),
        ..Default::default()
    }
}

velero_object! {
    /// One pod volume backed up with restic as part of a backup.
    PodVolumeBackup {
        plural: "podvolumebackups",
        kind_default: "PodVolumeBackup::kind",
        spec: PodVolumeBackupSpec,
        status: PodVolumeBackupStatus,
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodVolumeBackupSpec {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub backup_storage_location: String,
    /// The node whose agent backs the volume up.
    pub node: String,
    pub pod: ObjectReference,
    /// The volume's name in the pod spec.
    pub volume: String,
    /// The restic repository URL, without credentials.
    pub repo_identifier: String,
    /// Velero's snapshot tags ([`crate::tags`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uploader_type: String,
    /// The patterns left out of the snapshot, relative to the volume root ([`crate::paths`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded_paths: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodVolumeBackupStatus {
    #[serde(default)]
    pub phase: VolumePhase,
    #[serde(default, rename = "snapshotID")]
    pub snapshot_id: String,
    /// The volume's directory on the node, as restic saw it.
    #[serde(default)]
    pub path: String,
    /// Why the volume failed, when it did.
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub progress: Progress,
    #[serde(default)]
    pub start_timestamp: Option<Time>,
    #[serde(default)]
    pub completion_timestamp: Option<Time>,
    /// The pod's backup hooks that ran around this volume, in order (a stowage addition).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<HookStatus>,
}

/// What one exec hook did (`status.hooks[]`): a pod's pre or post backup hook, or a restored
/// pod's post-restore hook.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HookStatus {
    /// `pre`, `post` or `post-restore`.
    pub phase: String,
    pub container: String,
    pub command: Vec<String>,
    pub succeeded: bool,
    /// -1 when the command did not run to an exit code.
    pub exit_code: i32,
    #[serde(default)]
    pub stdout: String,
    #[serde(default)]
    pub stderr: String,
    /// Why it failed; empty when it succeeded.
    #[serde(default)]
    pub error: String,
    #[serde(default)]
    pub start_timestamp: Option<Time>,
    #[serde(default)]
    pub completion_timestamp: Option<Time>,
}

velero_object! {
    /// One pod volume restored with restic as part of a restore.
    PodVolumeRestore {
        plural: "podvolumerestores",
        kind_default: "PodVolumeRestore::kind",
        spec: PodVolumeRestoreSpec,
        status: PodVolumeRestoreStatus,
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodVolumeRestoreSpec {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub backup_storage_location: String,
    /// The (recreated) pod that mounts the volume.
    pub pod: ObjectReference,
    pub volume: String,
    pub repo_identifier: String,
    #[serde(rename = "snapshotID")]
    pub snapshot_id: String,
    /// The namespace the volume was backed up from (differs under namespace mapping).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source_namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uploader_type: String,
    /// The patterns that were left out when the volume was backed up: a restore cannot bring
    /// those paths back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded_at_backup: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodVolumeRestoreStatus {
    #[serde(default)]
    pub phase: VolumePhase,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub progress: Progress,
    #[serde(default)]
    pub start_timestamp: Option<Time>,
    #[serde(default)]
    pub completion_timestamp: Option<Time>,
    /// The restore hooks that ran for this volume's pod (a stowage addition).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<HookStatus>,
}

velero_object! {
    /// The restic repository of one namespace.
    ResticRepository {
        plural: "resticrepositories",
        kind_default: "ResticRepository::kind",
        spec: ResticRepositorySpec,
        status: ResticRepositoryStatus,
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResticRepositorySpec {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub backup_storage_location: String,
    /// The namespace whose pod volumes the repository holds.
    pub volume_namespace: String,
    /// The restic repository URL, without credentials.
    pub restic_identifier: String,
    /// How often maintenance runs, as Go prints a duration (`168h0m0s`).
    pub maintenance_frequency: String,
}

/// Velero's `ResticRepositoryPhase`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RepositoryPhase {
    #[default]
    New,
    Ready,
    NotReady,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResticRepositoryStatus {
    #[serde(default)]
    pub phase: RepositoryPhase,
    #[serde(default)]
    pub message: String,
    /// The end of the last prune (Velero's "last maintenance").
    #[serde(default)]
    pub last_maintenance_time: Option<Time>,
}

/// Go's `time.Duration` text (`168h0m0s`), as Velero writes `maintenanceFrequency`.
pub fn go_duration(duration: std::time::Duration) -> String {
    let seconds = duration.as_secs();
    format!(
        "{}h{}m{}s",
        seconds / 3600,
        (seconds % 3600) / 60,
        seconds % 60
    )
}

#[cfg(test)]
mod tests;
